//! The API's handlers, grouped by the scope their routes need. Each one
//! parses and bounds its input, calls `celeriac-client` or the broker as
//! the CLI verb of the same name does, and answers JSON.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use celeriac_broker::registry::{UploadOptions, upload};
use celeriac_client::events::Tail;
use celeriac_client::workflow::{self, Defaults, Spec, TaskSpec};
use celeriac_protocol::{Event, EventFilter};
use celeriac_signing::SignatureFile;
use futures_util::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::Shared;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};
use celeriac_protocol::event::position;

/// The OpenAPI document, as served.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Tasks in one batch at most.
pub const MAX_BATCH: usize = 10_000;
/// Longest long-poll for a result.
pub const MAX_WAIT_SECS: u64 = 60;
/// Events replayed to a new stream at most.
pub const MAX_REPLAY: usize = 1_000;
/// Longest id accepted in a path (task ids are UUIDs; roots too).
const MAX_ID: usize = 200;
/// How long a revocation is kept (as `celeriac revoke`'s default).
const REVOKE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn read_routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/components", get(list_components))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/workflows/{root_id}", get(get_workflow))
        .route("/api/v1/queues", get(list_queues))
        .route("/api/v1/workers", get(list_workers))
        .route("/api/v1/history", get(history))
        .route("/api/v1/dead-letters", get(list_dead_letters))
        .route("/api/v1/events", get(stream_events))
        .route("/api/v1/events/recent", get(recent_events))
}

pub fn submit_routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/tasks", post(submit_task))
        .route("/api/v1/tasks/batch", post(submit_batch))
        .route("/api/v1/tasks/{id}/revoke", post(revoke))
        .route("/api/v1/workflows", post(run_workflow))
}

pub fn upload_routes() -> Router<Shared> {
    Router::new().route("/api/v1/components", post(upload_component))
}

pub fn admin_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/api/v1/dead-letters/{queue}/{id}/requeue",
            post(requeue_dead_letter),
        )
        .route("/api/v1/dead-letters/{queue}", delete(purge_dead_letters))
}

/// A JSON body whose rejection is an [`ApiError`] (one line, 4xx).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// Query parameters whose rejection is an [`ApiError`].
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Params(v))
    }
}

fn check_id(what: &str, id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_ID} printable characters"
        )));
    }
    Ok(())
}

fn check_queue(queue: &str) -> ApiResult<()> {
    celeriac_client::validate_queue(queue).map_err(ApiError::from)
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: see /api/v1/openapi.json")
}

async fn whoami(Extension(who): Extension<Identity>) -> Json<Identity> {
    Json(who)
}

async fn list_components(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.broker.list_modules().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    /// The component's bytes, base64.
    component: String,
    /// The signature file's JSON.
    signature: Value,
    #[serde(default)]
    allow_downgrade: bool,
}

async fn upload_component(
    State(s): State<Shared>,
    Extension(who): Extension<Identity>,
    Body(body): Body<UploadBody>,
) -> ApiResult<Response> {
    let Some(trust) = s.trust.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "uploads are off: the server was started without --trust",
        ));
    };
    // Checked before decoding, so a huge body is never expanded.
    if body.component.len() / 4 * 3 > s.max_upload + 3 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "component is over the upload limit of {}",
                celeriac_protocol::units::format_size(s.max_upload as u64)
            ),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.component.trim())
        .map_err(|e| ApiError::bad_request(format!("component is not base64: {e}")))?;
    let sig_text = serde_json::to_vec(&body.signature)
        .map_err(|e| ApiError::bad_request(format!("signature: {e}")))?;
    let sig = SignatureFile::from_json(&sig_text)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}")))?;
    let sandbox = s.sandbox.clone();
    // Compiling takes a CPU for a while: off the threads serving requests.
    let check = move |b: &[u8]| tokio::task::block_in_place(|| sandbox.check(b));
    let options = UploadOptions {
        max_size: s.max_upload,
        allow_downgrade: body.allow_downgrade,
        ..UploadOptions::new(&check)
    };
    let up = upload(s.broker.as_ref(), &bytes, &sig, trust, options).await?;
    tracing::info!(module = %up.module, digest = %up.digest, by = %who.name, "component uploaded");
    let status = if up.new_bytes || up.previous.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "module": up.module,
            "digest": up.digest.to_string(),
            "signer": up.signer,
            "previous": up.previous.map(|d| d.to_string()),
            "new_bytes": up.new_bytes,
            "downgraded": up.downgraded,
        })),
    )
        .into_response())
}

/// A task's options as the CLI's batch lines give them.
fn options(spec: &TaskSpec) -> ApiResult<celeriac_client::SubmitOptions> {
    if let Some(q) = &spec.queue {
        check_queue(q)?;
    }
    Ok(spec.options(&Defaults::default(), SystemTime::now()))
}

async fn submit_task(
    State(s): State<Shared>,
    Body(spec): Body<TaskSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let opts = options(&spec)?;
    let id = celeriac_client::submit(s.broker.as_ref(), spec.request(), &opts).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    tasks: Vec<TaskSpec>,
}

async fn submit_batch(
    State(s): State<Shared>,
    Body(batch): Body<Batch>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} tasks, got {}",
            batch.tasks.len()
        )));
    }
    let mut requests = Vec::with_capacity(batch.tasks.len());
    for (i, t) in batch.tasks.iter().enumerate() {
        let o = options(t)
            .map_err(|e| ApiError::new(e.status, format!("tasks[{i}]: {}", e.message)))?;
        requests.push((t.request(), o));
    }
    let ids = celeriac_client::submit_batch(s.broker.as_ref(), requests).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "ids": ids }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<u64>,
}

async fn get_task(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Params(q): Params<WaitQuery>,
) -> ApiResult<Json<Value>> {
    check_id("task id", &id)?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait is at most {MAX_WAIT_SECS} seconds, got {wait}"
        )));
    }
    let record = if wait == 0 {
        celeriac_client::result(s.broker.as_ref(), &id).await?
    } else {
        let waited = celeriac_client::wait(s.broker.as_ref(), &id, Duration::from_secs(wait));
        tokio::select! {
            r = waited => r?,
            // A server shutting down answers what it has now.
            _ = s.shutdown.cancelled() => celeriac_client::result(s.broker.as_ref(), &id).await?,
        }
    };
    Ok(Json(match record {
        Some(r) => json!(r),
        None => json!({ "id": id, "state": "PENDING" }),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    terminate: bool,
}

async fn revoke(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    check_id("task id", &id)?;
    // The body is optional: none means do not terminate.
    let terminate = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let b: RevokeBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        b.terminate
    };
    s.broker
        .revoke(std::slice::from_ref(&id), REVOKE_TTL, terminate)
        .await?;
    Ok(Json(json!({ "revoked": [id], "terminate": terminate })))
}

async fn run_workflow(
    State(s): State<Shared>,
    Body(v): Body<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let spec = Spec::parse(&v.to_string(), false)?;
    let run = workflow::run(s.broker.as_ref(), &spec, &Defaults::default()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "root_id": run.root_id, "final_id": run.final_id })),
    ))
}

async fn get_workflow(State(s): State<Shared>, Path(root): Path<String>) -> ApiResult<Json<Value>> {
    check_id("workflow id", &root)?;
    match workflow::status(s.broker.as_ref(), &root).await? {
        Some(status) => Ok(Json(json!(status))),
        None => Err(ApiError::not_found(format!("no workflow {root}"))),
    }
}

async fn list_queues(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for q in s.broker.queues().await? {
        out.push(s.broker.queue_stats(&q).await?);
    }
    Ok(Json(json!(out)))
}

async fn list_workers(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.broker.workers().await?)))
}

async fn history(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "interval_ms": crate::history::INTERVAL.as_millis() as u64,
        "samples": s.history.samples(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    queue: String,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_dead_letters(
    State(s): State<Shared>,
    Params(q): Params<DeadLetterQuery>,
) -> ApiResult<Json<Value>> {
    check_queue(&q.queue)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let mut letters = s.broker.dlq_list(&q.queue, limit).await?;
    letters.reverse();
    Ok(Json(json!(letters)))
}

async fn requeue_dead_letter(
    State(s): State<Shared>,
    Path((queue, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_queue(&queue)?;
    check_id("dead letter id", &id)?;
    if s.broker.dlq_requeue(&queue, &id).await? {
        Ok(Json(json!({ "requeued": true })))
    } else {
        Err(ApiError::not_found(format!(
            "no dead letter {id} in queue `{queue}`"
        )))
    }
}

async fn purge_dead_letters(
    State(s): State<Shared>,
    Path(queue): Path<String>,
) -> ApiResult<Json<Value>> {
    check_queue(&queue)?;
    let n = s.broker.dlq_purge(&queue).await?;
    Ok(Json(json!({ "purged": n })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    last: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

impl EventQuery {
    fn filter(&self) -> ApiResult<EventFilter> {
        let kinds = match &self.state {
            Some(s) => EventFilter::parse_kinds(s).map_err(ApiError::bad_request)?,
            None => Vec::new(),
        };
        Ok(EventFilter {
            task: self.task.clone().filter(|t| !t.is_empty()),
            kinds,
            queue: self.queue.clone().filter(|q| !q.is_empty()),
            tasks_only: false,
        })
    }
}

async fn recent_events(
    State(s): State<Shared>,
    Params(q): Params<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let filter = q.filter()?;
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_REPLAY);
    let (events, _) = Tail::start(s.broker.as_ref(), limit, &filter).await?;
    Ok(Json(events))
}

/// Server-Sent Events: the matching events as they happen, after the
/// latest `last` (or those after `Last-Event-ID`, for a client resuming).
async fn stream_events(
    State(s): State<Shared>,
    headers: HeaderMap,
    Params(q): Params<EventQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<axum::response::sse::Event, Infallible>>>> {
    let filter = q.filter()?;
    let last = q.last.unwrap_or(0);
    if last > MAX_REPLAY {
        return Err(ApiError::bad_request(format!(
            "last is at most {MAX_REPLAY}, got {last}"
        )));
    }
    // Subscribed before the replay is read, so nothing falls between.
    let rx = s.live.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() < 64);
    let replay: Vec<Event> = match resume {
        Some(id) => {
            let mut tail = Tail::after(id);
            tail.next(s.broker.as_ref(), &filter, Duration::ZERO)
                .await?
        }
        None => Tail::start(s.broker.as_ref(), last, &filter).await?.0,
    };
    let seen = replay
        .last()
        .and_then(|e| e.id.as_deref())
        .or(resume)
        .map(position)
        .unwrap_or((0, 0, 0));
    let state = Streaming {
        replay: replay.into(),
        rx,
        filter,
        seen,
        shutdown: s.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let e = st.next().await?;
        Some((Ok(e), st))
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keepalive"),
    ))
}

struct Streaming {
    replay: VecDeque<Event>,
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    filter: EventFilter,
    /// Events up to this id were sent (from the replay): skip them live.
    seen: (u64, u64, u64),
    shutdown: tokio_util::sync::CancellationToken,
}

impl Streaming {
    async fn next(&mut self) -> Option<axum::response::sse::Event> {
        if let Some(e) = self.replay.pop_front() {
            return Some(sse(&e));
        }
        loop {
            let got = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.shutdown.cancelled() => return None,
            };
            match got {
                Ok(e) => {
                    let id = e.id.as_deref().map(position).unwrap_or((0, 0, 0));
                    if id <= self.seen || !self.filter.matches(&e) {
                        continue;
                    }
                    return Some(sse(&e));
                }
                Err(RecvError::Lagged(n)) => {
                    return Some(
                        axum::response::sse::Event::default().comment(format!("lagged {n}")),
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn sse(e: &Event) -> axum::response::sse::Event {
    let mut out = axum::response::sse::Event::default()
        .event(e.kind.as_str())
        .data(e.to_json());
    if let Some(id) = &e.id {
        out = out.id(id);
    }
    out
}
