//! Outbound HTTP (`wasi:http/outgoing-handler`), so each guest language's
//! own HTTP client works, under the component's signed grant and the
//! worker's policy. Every request, redirects included (wasi:http does not
//! follow them; a guest's client that does sends each hop through here),
//! is checked: origin against grant, allow and deny lists; each address
//! after DNS resolution; in-flight count, body sizes and a deadline inside
//! the task's hard limit. A refusal is a wasi:http error code for the guest
//! (never a trap) and a warning naming the cause, with the task id, in the
//! worker's log. Waiting on the network holds no thread and burns no fuel.

mod body;
mod client;
pub mod policy;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::uri::Scheme;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use celeriac_protocol::grants::{Grants, default_port};

use super::HostState;
use body::{IncomingBody, OutgoingBody};
use client::{AddressRefused, PooledClient};
use policy::{HttpPolicy, Refusal, check_address, check_origin};

/// Time left to the guest between a request cut at its task's deadline
/// and the hard limit, to handle the timeout and return.
const GUEST_MARGIN: std::time::Duration = std::time::Duration::from_millis(200);

/// What all tasks of one sandbox share: the policy and the pooled client,
/// built on first use (reading the host's certificates costs a few ms that
/// compute-only workers need not pay).
pub(crate) struct HttpShared {
    pub policy: HttpPolicy,
    client: OnceLock<Result<PooledClient, String>>,
}

impl HttpShared {
    pub fn new(policy: HttpPolicy) -> Self {
        Self {
            policy,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&PooledClient, String> {
        self.client
            .get_or_init(|| client::build(&self.policy).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// One task's view: its grant, its in-flight budget and its deadline.
pub(crate) struct TaskHttp {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

struct Hooks {
    shared: Arc<HttpShared>,
    grants: Arc<Grants>,
    task_id: String,
    in_flight: Arc<Semaphore>,
    hard_deadline: Instant,
    /// Body bytes sent and received count as host work (charged as fuel).
    host_work: Arc<AtomicU64>,
}

impl TaskHttp {
    pub fn new(
        shared: Arc<HttpShared>,
        grants: Arc<Grants>,
        task_id: &str,
        hard_deadline: Instant,
        host_work: Arc<AtomicU64>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(shared.policy.max_in_flight.max(1)));
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                shared,
                grants,
                task_id: task_id.to_string(),
                in_flight,
                hard_deadline,
                host_work,
            },
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        match self.admit(&request) {
            Ok(permit) => Box::new(self.send(request, options, permit)),
            Err(e) => {
                // Take what the guest writes and throw it away, so its
                // client sees the refusal as the response's error code
                // rather than as a broken body stream.
                let deadline = tokio::time::Instant::from_std(self.hard_deadline);
                let limit = self.shared.policy.max_request_bytes;
                tokio::spawn(body::discard(request.into_body(), limit, deadline));
                Box::new(std::future::ready(Err(e)))
            }
        }
    }
}

impl Hooks {
    /// The checks made before anything leaves the host, in the guest's
    /// call (so the log line carries the task's span).
    fn admit(
        &self,
        request: &http::Request<WasiBody>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let uri = request.uri();
        let url = clip_url(uri);
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            tracing::warn!(task_id = %self.task_id, url, "HTTP request refused: no scheme or host");
            return Err(Error::HttpRequestUriInvalid);
        };
        let port = uri.port_u16().or_else(|| default_port(scheme)).unwrap_or(0);
        let policy = &self.shared.policy;
        let refuse = |refusal: Refusal, code: Error| {
            tracing::warn!(task_id = %self.task_id, url, "HTTP request refused: {refusal}");
            code
        };
        check_origin(&self.grants, policy, scheme, host, port)
            .map_err(|r| refuse(r, Error::HttpRequestDenied))?;
        // hyper connects to IP literals without asking the resolver:
        // check them here.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse() {
            check_address(bare, ip, &policy.allow_private)
                .map_err(|r| refuse(r, Error::DestinationIpProhibited))?;
        }
        if declared_length(request.headers()).is_some_and(|n| n > policy.max_request_bytes) {
            tracing::warn!(task_id = %self.task_id, url, limit = policy.max_request_bytes,
                "HTTP request refused: body over the worker's cap (--http-max-request-size)");
            return Err(Error::HttpRequestBodySize(Some(policy.max_request_bytes)));
        }
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(task_id = %self.task_id, url, limit = policy.max_in_flight,
                "HTTP request refused: too many requests in flight for one task (--http-max-in-flight)");
            Error::ConnectionLimitReached
        })
    }

    /// Send through the pooled client under the request's deadline.
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl Future<Output = Sent> + Send + 'static {
        let shared = self.shared.clone();
        let task_id = self.task_id.clone();
        let policy = &shared.policy;
        // The policy's timeout, the guest's own (if shorter), and never
        // past the task's hard limit.
        let mut budget = policy.timeout;
        if let Some(t) = options.and_then(|o| o.first_byte_timeout) {
            budget = budget.min(t);
        }
        // Cut a little before the hard limit, so the guest gets the timeout
        // as an error it can handle rather than being killed mid-wait.
        let deadline = (Instant::now() + budget).min(
            self.hard_deadline
                .checked_sub(GUEST_MARGIN)
                .unwrap_or(self.hard_deadline),
        );
        let deadline = tokio::time::Instant::from_std(deadline);
        let max_request = policy.max_request_bytes;
        let max_response = policy.max_response_bytes;
        let url = clip_url(request.uri());
        let work = self.host_work.clone();
        async move {
            let _permit = permit;
            let client = shared.client().map_err(|e| {
                tracing::error!(task_id = %task_id, error = %e, "HTTP client could not be set up");
                Error::InternalError(Some(format!("host HTTP client unavailable: {e}")))
            })?;
            let request =
                request.map(|b| OutgoingBody::new(b, max_request, deadline, work.clone()));
            let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
                Err(_) => {
                    tracing::warn!(task_id = %task_id, url, "HTTP request timed out waiting for the response (--http-timeout or the task's time limit)");
                    return Err(Error::ConnectionReadTimeout);
                }
                Ok(Err(e)) => return Err(sent_error(&e, &task_id, &url)),
                Ok(Ok(r)) => r,
            };
            let declared = declared_length(response.headers());
            if declared.is_some_and(|n| n > max_response) {
                tracing::warn!(task_id = %task_id, url, limit = max_response, declared,
                    "HTTP response refused: body over the worker's cap (--http-max-response-size)");
                return Err(Error::HttpResponseBodySize(declared));
            }
            let response = response.map(|b| {
                IncomingBody::new(
                    b,
                    max_response,
                    deadline,
                    work.clone(),
                    (task_id.clone(), url.clone()),
                )
                .boxed_unsync()
            });
            let io: Box<dyn Future<Output = Result<(), Error>> + Send> =
                Box::new(std::future::ready(Ok(())));
            Ok((response, io))
        }
    }
}

/// The body length a request or response declares, if it declares one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The wasi:http code for a failed send, with the cause in the log.
fn sent_error(e: &hyper_util::client::legacy::Error, task_id: &str, url: &str) -> Error {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            // The resolver's refusal travels inside an io::Error, whose
            // source() skips it.
            if let Some(AddressRefused(refusal)) = io
                .get_ref()
                .and_then(|e| e.downcast_ref::<AddressRefused>())
            {
                tracing::warn!(task_id, url, "HTTP request refused: {refusal}");
                return Error::DestinationIpProhibited;
            }
            let code = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some(Error::ConnectionRefused),
                std::io::ErrorKind::TimedOut => Some(Error::ConnectionTimeout),
                _ => None,
            };
            if let Some(code) = code {
                tracing::warn!(task_id, url, error = %io, "HTTP request failed");
                return code;
            }
        }
        source = s.source();
    }
    let cause = error_chain(e);
    tracing::warn!(task_id, url, error = %cause, "HTTP request failed");
    if e.is_connect() {
        if cause.contains("dns error") || cause.contains("failed to lookup") {
            Error::DnsError {
                rcode: Some(cause),
                info_code: None,
            }
        } else {
            Error::InternalError(Some(cause))
        }
    } else {
        Error::HttpProtocolError
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The URL for a log line: no user info or query (either may carry
/// credentials), bounded.
fn clip_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme().unwrap_or(&Scheme::HTTPS);
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    let text = format!(
        "{scheme}://{}{port}{}",
        uri.host().unwrap_or(""),
        uri.path()
    );
    celeriac_protocol::text::clip(&text, 200)
}
