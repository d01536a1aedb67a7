//! Producing tasks: resolve `module.task` to the module's current digest,
//! pin it in a message, enqueue; and wait for results.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::value::to_raw_value;
use serde_json::{Map, Value};

use celeriac_broker::{Broker, BrokerError, ModuleInfo, Outgoing};
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
    let requests = requests.into_iter().map(|r| (new_task_id(), r)).collect();
    enqueue(broker, requests, options).await
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
            enqueue(broker, vec![(id.clone(), request)], options).await?;
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
    requests: Vec<(String, TaskRequest)>,
    options: &SubmitOptions,
) -> Result<Vec<String>, ClientError> {
    validate_queue(&options.queue)?;
    let mut modules: HashMap<String, ModuleInfo> = HashMap::new();
    for (_, r) in &requests {
        let (module, _) = split(&r.task)?;
        if !modules.contains_key(module) {
            let info = broker
                .get_module(module)
                .await?
                .ok_or_else(|| ClientError::UnknownModule(module.to_string()))?;
            modules.insert(module.to_string(), info);
        }
    }
    let now = now_ms();
    let eta = options.eta.map(unix_ms);
    let mut ids = Vec::with_capacity(requests.len());
    let mut out = Vec::with_capacity(requests.len());
    for (id, r) in requests {
        let (module, _) = split(&r.task)?;
        let digest = modules[module].digest;
        let msg = TaskMessage {
            v: message::VERSION,
            id: id.clone(),
            task: r.task,
            digest,
            args: to_raw_value(&r.args)?,
            kwargs: to_raw_value(&r.kwargs)?,
            queue: options.queue.clone(),
            retries: 0,
            max_retries: options.max_retries,
            eta,
            expires: options.expires.map(unix_ms),
            limits: options.limits.clone(),
            result_ttl: options.result_ttl.map(|d| d.as_secs().max(1)),
            ignore_result: options.ignore_result,
            submitted_at: now,
        };
        // The same checks a worker makes: refused here, not dead-lettered there.
        msg.validate(now)?;
        let payload = msg.to_json();
        if payload.len() > message::bounds::DEFAULT_MAX_MESSAGE_BYTES {
            return Err(ClientError::TooLarge(payload.len()));
        }
        out.push(Outgoing {
            queue: options.queue.clone(),
            payload,
            due_ms: eta,
        });
        ids.push(id);
    }
    broker.enqueue(&out).await?;
    Ok(ids)
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

fn split(task: &str) -> Result<(&str, &str), ClientError> {
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
