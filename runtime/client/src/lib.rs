//! Producing tasks: resolve `module.task` to the module's current digest,
//! pin it in a message, enqueue; and wait for results.
//!
//! - [`submit`], [`submit_many`] (one round trip for a batch with shared
//!   options), [`submit_batch`] (each task its own options), then
//!   [`wait`], [`wait_all`] or [`submit_and_wait`];
//! - [`workflow`]: chains, groups, chords, map / starmap / chunks, links,
//!   built in Rust or read from JSON / TOML, launched atomically;
//! - [`routing`]: task names or globs to queues;
//! - [`events`]: following the event stream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), celeriac_client::ClientError> {
//! use celeriac_client::workflow::{Spec, TaskSpec, Defaults};
//! use celeriac_client::{SubmitOptions, TaskRequest};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let broker = celeriac_broker::connect("redis://127.0.0.1:6379", "celeriac:").await?;
//! // One task.
//! let id = celeriac_client::submit(
//!     broker.as_ref(),
//!     TaskRequest::new("math.add", [json!(2), json!(3)]),
//!     &SubmitOptions::default(),
//! ).await?;
//! let record = celeriac_client::wait(broker.as_ref(), &id, Duration::from_secs(10)).await?;
//! // A chord: ten additions in parallel, then their sum, exactly once.
//! let header = (0..10).map(|i| Spec::task(TaskSpec::new("math.add").args([json!(i), json!(i)])));
//! let chord = Spec::chord(header, Spec::task(TaskSpec::new("math.sum")));
//! let run = celeriac_client::workflow::run(broker.as_ref(), &chord, &Defaults::default()).await?;
//! let sum = celeriac_client::wait(broker.as_ref(), &run.final_id, Duration::from_secs(10)).await?;
//! # let _ = (record, sum); Ok(()) }
//! ```

pub mod beat;
pub mod events;
pub mod routing;
pub mod workflow;

pub use routing::Routes;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::value::to_raw_value;
use serde_json::{Map, Value};

use celeriac_broker::{Broker, BrokerError, ModuleInfo, Outgoing};
use celeriac_protocol::Event;
use celeriac_protocol::message::{self, MessageError, MessageLimits, TaskMessage, new_task_id};
use celeriac_protocol::record::ResultRecord;
use celeriac_protocol::units::format_size;
use celeriac_protocol::{clock::unix_ms, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("task must be `module.task`, got `{0}`")]
    TaskName(String),
    #[error(
        "unknown module `{0}`: upload a component signed as `{0}` first (celeriac components lists what is there)"
    )]
    UnknownModule(String),
    #[error("queue name `{0}` is invalid: use letters, digits, `_`, `-` and `.`, at most 64")]
    QueueName(String),
    /// A number out of range (the message's `invalid message: …`).
    #[error("{0}")]
    Invalid(#[from] MessageError),
    #[error("message too large: {size}, limit {limit} (store large inputs elsewhere and pass a reference)", size = format_size(*.0 as u64), limit = format_size(message::bounds::DEFAULT_MAX_MESSAGE_BYTES as u64))]
    TooLarge(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("stored result is not a valid record: {0}")]
    CorruptResult(String),
    /// Arguments that do not serialize as JSON (a map with non-string keys).
    #[error("arguments are not JSON: {0}")]
    Arguments(#[from] serde_json::Error),
    /// `--unique-key` held by a task still queued or running.
    #[error("duplicate: unique key `{key}` is held by task {holder}")]
    Duplicate { key: String, holder: String },
    #[error("{0}")]
    Route(String),
    /// A workflow that cannot be built, naming where (`chord.header[2]: …`).
    #[error("workflow: {0}")]
    Workflow(String),
}

/// How to run a submitted task. Unset limits take the worker's defaults.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub queue: String,
    /// Run no earlier than this.
    pub eta: Option<SystemTime>,
    /// Do not run after this: record REVOKED instead.
    pub expires: Option<SystemTime>,
    pub max_retries: u32,
    pub limits: MessageLimits,
    pub result_ttl: Option<Duration>,
    pub ignore_result: bool,
    /// 0 (default) to 9, higher first.
    pub priority: u8,
    /// Drop the submission if a task holding the same key is still queued
    /// or running.
    pub unique: Option<Unique>,
}

/// A unique-submission key, held from submit until the task finishes, or
/// at most `ttl` (so a lost task cannot hold it forever).
#[derive(Debug, Clone)]
pub struct Unique {
    pub key: String,
    pub ttl: Duration,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            eta: None,
            expires: None,
            max_retries: 3,
            limits: MessageLimits::default(),
            result_ttl: None,
            ignore_result: false,
            priority: 0,
            unique: None,
        }
    }
}

/// One task to submit.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

impl TaskRequest {
    pub fn new(task: impl Into<String>, args: impl IntoIterator<Item = Value>) -> Self {
        Self {
            task: task.into(),
            args: args.into_iter().collect(),
            kwargs: Map::new(),
        }
    }
}

/// Submit one task; returns its id. Nothing is enqueued if the module is
/// unknown.
pub async fn submit(
    broker: &dyn Broker,
    request: TaskRequest,
    options: &SubmitOptions,
) -> Result<String, ClientError> {
    let mut ids = submit_many(broker, vec![request], options).await?;
    Ok(ids.pop().unwrap_or_default())
}

/// Submit many tasks in one round trip; returns their ids in order. Each
/// module is resolved once; an unknown one fails the whole batch before
/// anything is enqueued.
pub async fn submit_many(
    broker: &dyn Broker,
    requests: Vec<TaskRequest>,
    options: &SubmitOptions,
) -> Result<Vec<String>, ClientError> {
    let requests = requests
        .into_iter()
        .map(|r| (new_task_id(), r, options.clone()))
        .collect();
    enqueue(broker, requests).await
}

/// Submit tasks each with its own options in one round trip; returns
/// their ids in order. Every task is checked before anything is enqueued.
pub async fn submit_batch(
    broker: &dyn Broker,
    requests: Vec<(TaskRequest, SubmitOptions)>,
) -> Result<Vec<String>, ClientError> {
    let requests = requests
        .into_iter()
        .map(|(r, o)| (new_task_id(), r, o))
        .collect();
    enqueue(broker, requests).await
}

/// Submit one task and wait for its final record (or `timeout`): the
/// result subscription is made while the message is enqueued rather than
/// after, which takes a round trip off every call. Returns the task id and
/// the latest record seen.
pub async fn submit_and_wait(
    broker: &dyn Broker,
    request: TaskRequest,
    options: &SubmitOptions,
    timeout: Duration,
) -> Result<(String, Option<ResultRecord>), ClientError> {
    submit_and_wait_with(broker, request, options, timeout, |_| {}).await
}

/// As [`submit_and_wait`], calling `enqueued` with the task id as soon as
/// the message is on the queue (so a caller can report it even if the
/// wait fails).
pub async fn submit_and_wait_with(
    broker: &dyn Broker,
    request: TaskRequest,
    options: &SubmitOptions,
    timeout: Duration,
    enqueued: impl FnOnce(&str) + Send,
) -> Result<(String, Option<ResultRecord>), ClientError> {
    let id = new_task_id();
    // Waiting subscribes, then reads the record, then listens: whichever
    // order the worker and the subscription happen in, the result is seen.
    // A failed submit drops the wait at once.
    let (_, json) = futures_util::future::try_join(
        async {
            enqueue(broker, vec![(id.clone(), request, options.clone())]).await?;
            enqueued(&id);
            Ok(())
        },
        async {
            broker
                .wait_result(&id, timeout)
                .await
                .map_err(ClientError::from)
        },
    )
    .await?;
    let record = json.map(|j| parse_record(&j)).transpose()?;
    Ok((id, record))
}

async fn enqueue(
    broker: &dyn Broker,
    requests: Vec<(String, TaskRequest, SubmitOptions)>,
) -> Result<Vec<String>, ClientError> {
    let modules = resolve(broker, requests.iter().map(|(_, r, _)| r.task.as_str())).await?;
    let now = now_ms();
    let mut ids = Vec::with_capacity(requests.len());
    let mut out = Vec::with_capacity(requests.len());
    let mut locks = Vec::new();
    let mut sent = Vec::new();
    for (id, r, options) in requests {
        let digest = modules[split(&r.task)?.0].digest;
        let msg = task_message(
            id.clone(),
            r.task,
            digest,
            to_raw_value(&r.args)?,
            to_raw_value(&r.kwargs)?,
            &options,
            now,
        )?;
        if let Some(u) = &options.unique {
            locks.push((u.clone(), id.clone()));
        }
        out.push(outgoing(&msg)?);
        if broker.events_enabled() {
            sent.push(Event::sent(&msg, now).to_json());
        }
        ids.push(id);
    }
    // Locks last, once everything else is known good: a refused batch
    // holds no key.
    for (u, id) in &locks {
        if let Some(holder) = broker.claim_unique(&u.key, id, u.ttl).await? {
            return Err(ClientError::Duplicate {
                key: u.key.clone(),
                holder,
            });
        }
    }
    broker.enqueue_noting(&out, &sent).await?;
    Ok(ids)
}

/// Each module's current version, fetched once per module; an unknown one
/// is an error before anything is sent.
pub(crate) async fn resolve<'a>(
    broker: &dyn Broker,
    tasks: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, ModuleInfo>, ClientError> {
    let mut modules: HashMap<String, ModuleInfo> = HashMap::new();
    for task in tasks {
        let (module, _) = split(task)?;
        if !modules.contains_key(module) {
            let info = broker
                .get_module(module)
                .await?
                .ok_or_else(|| ClientError::UnknownModule(module.to_string()))?;
            modules.insert(module.to_string(), info);
        }
    }
    Ok(modules)
}

/// The message for one task, checked as a worker will check it.
pub(crate) fn task_message(
    id: String,
    task: String,
    digest: celeriac_protocol::Digest,
    args: Box<serde_json::value::RawValue>,
    kwargs: Box<serde_json::value::RawValue>,
    options: &SubmitOptions,
    now: u64,
) -> Result<TaskMessage, ClientError> {
    validate_queue(&options.queue)?;
    let msg = TaskMessage {
        v: message::VERSION,
        id,
        task,
        digest,
        args,
        kwargs,
        queue: options.queue.clone(),
        retries: 0,
        max_retries: options.max_retries,
        eta: options.eta.map(unix_ms),
        expires: options.expires.map(unix_ms),
        limits: options.limits.clone(),
        result_ttl: options.result_ttl.map(|d| d.as_secs().max(1)),
        ignore_result: options.ignore_result,
        submitted_at: now,
        priority: options.priority,
        root_id: None,
        parent_id: None,
        chain: Vec::new(),
        member: None,
        link: Vec::new(),
        link_error: Vec::new(),
        map: None,
        unique_key: options.unique.as_ref().map(|u| u.key.clone()),
    };
    // The same checks a worker makes: refused here, not dead-lettered there.
    msg.validate(now)?;
    Ok(msg)
}

/// The message on its way to its queue, within the size a worker reads.
pub(crate) fn outgoing(msg: &TaskMessage) -> Result<Outgoing, ClientError> {
    let payload = msg.to_json();
    if payload.len() > message::bounds::DEFAULT_MAX_MESSAGE_BYTES {
        return Err(ClientError::TooLarge(payload.len()));
    }
    Ok(Outgoing {
        queue: message::level_queue(&msg.queue, msg.priority),
        payload,
        due_ms: msg.eta,
    })
}

/// The stored record of a task, if any.
pub async fn result(broker: &dyn Broker, id: &str) -> Result<Option<ResultRecord>, ClientError> {
    broker
        .get_result(id)
        .await?
        .map(|j| parse_record(&j))
        .transpose()
}

/// Wait until the task's record is final (SUCCESS, FAILURE, REVOKED) or
/// `timeout` passes; returns the latest record seen.
pub async fn wait(
    broker: &dyn Broker,
    id: &str,
    timeout: Duration,
) -> Result<Option<ResultRecord>, ClientError> {
    broker
        .wait_result(id, timeout)
        .await?
        .map(|j| parse_record(&j))
        .transpose()
}

/// Wait until every task in `ids` has a final record or `timeout` passes;
/// returns the records in the order of `ids` (`None` for those unfinished),
/// calling `on_final` with the index of each as it finishes (progress bars).
/// Polls the store, a round trip per unfinished task per pass, so it suits
/// batches (the demo, scripts) rather than one latency-critical task (use
/// [`wait`] for that: it is pushed the result).
pub async fn wait_all(
    broker: &dyn Broker,
    ids: &[String],
    timeout: Duration,
    mut on_final: impl FnMut(usize, &ResultRecord),
) -> Result<Vec<Option<ResultRecord>>, ClientError> {
    const PASS_GAP: Duration = Duration::from_millis(20);
    let deadline = std::time::Instant::now() + timeout;
    let mut records = vec![None; ids.len()];
    let mut pending: Vec<usize> = (0..ids.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::with_capacity(pending.len());
        for i in pending {
            match result(broker, &ids[i]).await? {
                Some(r) if r.state.is_final() => {
                    on_final(i, &r);
                    records[i] = Some(r);
                }
                _ => still.push(i),
            }
        }
        pending = still;
        if pending.is_empty() || std::time::Instant::now() + PASS_GAP >= deadline {
            break;
        }
        tokio::time::sleep(PASS_GAP).await;
    }
    Ok(records)
}

fn parse_record(json: &str) -> Result<ResultRecord, ClientError> {
    serde_json::from_str(json).map_err(|e| ClientError::CorruptResult(e.to_string()))
}

pub(crate) fn split(task: &str) -> Result<(&str, &str), ClientError> {
    task.rsplit_once('.')
        .filter(|(m, t)| !m.is_empty() && !t.is_empty())
        .ok_or_else(|| ClientError::TaskName(task.to_string()))
}

/// A queue name a producer may use (see [`message::valid_queue_name`]).
pub fn validate_queue(name: &str) -> Result<(), ClientError> {
    if message::valid_queue_name(name) {
        Ok(())
    } else {
        Err(ClientError::QueueName(name.to_string()))
    }
}
