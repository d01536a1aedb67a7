//! Brokers: where messages, components and results live. [`RedisBroker`]
//! is the real one; [`MemoryBroker`] serves single-process use (`memory://`).
//!
//! Delivery is at-least-once. A fetched message stays *held* by its
//! consumer until [`Broker::complete`] acknowledges it; a live worker keeps
//! renewing what it holds, and messages of a dead worker are reclaimed by
//! others once idle past the visibility timeout.

mod memory;
mod redis;
pub mod registry;
mod results_pubsub;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryBroker;
pub use self::redis::RedisBroker;

use celeriac_protocol::Digest;
use celeriac_protocol::text::prefix;
pub use celeriac_protocol::workflow::NewGroup;

/// Default broker URL when neither `--broker` nor `CELERIAC_BROKER` is set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// Default key prefix: several deployments can share one Redis.
pub const DEFAULT_PREFIX: &str = "celeriac:";

/// Broker failures. Connection problems are retried by callers with backoff.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
}

impl BrokerError {
    /// A short cause for records and logs: a Redis error as Redis put it
    /// (`WRONGTYPE …`, `OOM …`), anything else as displayed.
    pub fn cause(&self) -> String {
        match self {
            BrokerError::Redis(e) => match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                _ => e.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// Whether trying the same thing again later can succeed: the
    /// connection dropped or timed out, or Redis is loading, busy, out of
    /// memory or failing over. Anything else (a value too large, a wrong
    /// type, a bad argument, a script error) fails the same way every
    /// time, so retrying it would only wedge the caller.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || matches!(
                        e.code(),
                        Some(
                            "LOADING"
                                | "BUSY"
                                | "TRYAGAIN"
                                | "CLUSTERDOWN"
                                | "MASTERDOWN"
                                | "READONLY"
                                | "NOREPLICAS"
                                | "NOSCRIPT"
                                | "OOM"
                        )
                    )
            }
            BrokerError::Url { .. } | BrokerError::Corrupt(_) | BrokerError::Unsupported(_) => {
                false
            }
        }
    }
}

pub type BrokerResult<T> = Result<T, BrokerError>;

/// A stored component: its bytes and every signature it was uploaded
/// with, by `<key_id>:<module>` (see [`Broker::put_component`]).
#[derive(Debug, Clone, Default)]
pub struct StoredComponent {
    pub bytes: Vec<u8>,
    /// Signature file JSON by signing slot.
    pub signatures: std::collections::BTreeMap<String, String>,
}

/// Where a signature is kept among a component's signatures: one per
/// signing key and module, so a rotated key or a second module adds one
/// rather than being dropped, and re-signing replaces only its own.
pub fn signature_slot(key_id: &str, module: &str) -> String {
    format!("{key_id}:{module}")
}

/// What a module name points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub module: String,
    pub digest: Digest,
    pub signer: String,
    pub size: u64,
    /// Unix milliseconds.
    pub uploaded_at: u64,
    /// The signed manifest's `signed_at` (RFC 3339): uploads order a
    /// module's versions by it. Absent in records of older releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
    /// What the signed manifest of this version grants (shown by
    /// `celeriac components`; workers read it from the signature itself).
    #[serde(default, skip_serializing_if = "celeriac_protocol::Grants::is_empty")]
    pub grants: celeriac_protocol::Grants,
}

/// A message to put on a queue, now or at `due_ms`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub queue: String,
    pub payload: String,
    /// Unix milliseconds; `None` or past means ready now.
    pub due_ms: Option<u64>,
}

/// A message a consumer holds.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: String,
    /// Broker-assigned id of this copy of the message (a stream id in Redis).
    pub id: String,
    /// The message; only a prefix of it when it was over the fetch's
    /// `max_message_bytes` (then `size` is larger than its length). Shared,
    /// so completions that store it again do not copy it.
    pub payload: Arc<str>,
    /// Bytes of the whole message as stored.
    pub size: usize,
    /// How many times it has been handed out since it was last put on its
    /// queue (enqueued, retried or requeued), this time included.
    pub deliveries: u64,
}

impl Delivery {
    pub fn new(queue: &str, id: String, payload: String, deliveries: u64) -> Self {
        let size = payload.len();
        Self {
            queue: queue.to_string(),
            id,
            payload: payload.into(),
            size,
            deliveries,
        }
    }

    /// The payload was cut to a prefix because the message is over the
    /// size limit: it must not be parsed or run.
    pub fn is_oversize(&self) -> bool {
        self.size > self.payload.len()
    }

    /// As [`Delivery::new`], keeping at most `max` bytes of the payload
    /// (and the first [`OVERSIZE_PREFIX`] of a longer one).
    pub fn bounded(queue: &str, id: String, payload: String, deliveries: u64, max: usize) -> Self {
        if payload.len() <= max {
            return Self::new(queue, id, payload, deliveries);
        }
        let size = payload.len();
        let mut d = Self::new(
            queue,
            id,
            prefix(&payload, OVERSIZE_PREFIX).to_string(),
            deliveries,
        );
        d.size = size;
        d
    }
}

/// Bytes of an oversized message kept for its dead letter.
pub const OVERSIZE_PREFIX: usize = 1024;

/// How much one fetch may bring into the worker's memory.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Messages.
    pub max: usize,
    /// Bytes of messages in total; the first message is taken whatever its
    /// size (up to `max_message_bytes`), so a large one cannot stall.
    pub max_bytes: usize,
    /// A message over this size comes back as a prefix (see
    /// [`Delivery::is_oversize`]) without the rest of it being transferred.
    pub max_message_bytes: usize,
}

/// A message held by some consumer, as the pending list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub consumer: String,
    /// Milliseconds since it was delivered or its lease last renewed, by
    /// the broker's clock.
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// A message to take over: only if it is still idle for at least
/// `min_idle_ms` (its holder did not renew it since), having been delivered
/// `deliveries` times so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: String,
    pub min_idle_ms: u64,
    pub deliveries: u64,
}

/// What became of one completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Result written and message disposed of.
    Done,
    /// Another consumer holds the message now (its lease passed to a live
    /// worker): nothing was written.
    TakenOver,
    /// No consumer holds it any more (completed elsewhere, or lost by a
    /// Redis restart): the result was written, the message left alone.
    Gone,
}

/// How a held message leaves the consumer.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Done: drop it.
    Ack,
    /// Run again at `due_ms` as `payload` (the retry count bumped).
    Retry { payload: String, due_ms: u64 },
    /// Move the message as received to the dead-letter queue with the
    /// reason; `payload`, when set, is stored instead (a bounded stand-in
    /// for a message too large to keep).
    DeadLetter {
        reason: String,
        payload: Option<String>,
    },
    /// Hand the message back to the queue untouched (shutdown, not run).
    Requeue,
}

/// A result record to store.
#[derive(Debug, Clone)]
pub struct ResultWrite {
    pub task_id: String,
    pub json: String,
    pub ttl: Duration,
}

/// What became of an attempt to fire a periodic run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatFire {
    Fired,
    /// This run (or a later one) was fired already.
    AlreadyFired,
    /// The lease is no longer this process's: it fired nothing.
    Fenced,
}

/// Task (or workflow root) ids revoked together; with `terminate`,
/// running ones are stopped too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub ids: Vec<String>,
    #[serde(default)]
    pub terminate: bool,
}

/// Revocations as they are made (see [`Broker::watch_revokes`]).
pub struct RevokeWatch {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Keeps the subscription alive.
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl RevokeWatch {
    pub fn new(
        rx: tokio::sync::mpsc::UnboundedReceiver<String>,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Self { rx, _keep: keep }
    }

    /// The next revocation; `None` when the feed was lost (watch again,
    /// and read [`Broker::revoked`] for what was missed).
    pub async fn next(&mut self) -> Option<Revocation> {
        loop {
            let json = self.rx.recv().await?;
            if let Ok(r) = serde_json::from_str(&json) {
                return Some(r);
            }
        }
    }
}

/// A group member's outcome, reported once its chain is done.
#[derive(Debug, Clone)]
pub struct GroupReport {
    pub group: String,
    pub index: u32,
    /// The member's result (JSON), or why it failed (a
    /// `workflow::Failed` as JSON).
    pub outcome: Result<String, String>,
}

/// A message a completion launches (the next step of a chain, a link, a
/// group's members).
#[derive(Debug, Clone)]
pub struct Launched {
    pub task_id: String,
    pub message: Outgoing,
}

/// What a completion sets off besides its own result, in the same atomic
/// step as its ack: a worker that dies before leaves none of it done, and
/// since a message is acked once, it is done once. A task run twice (its
/// lease taken over while it still ran) launches its next steps from the
/// one completion that acks it; reports to a group count each member once
/// whatever happens.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// More records to store and announce (a group's result, the records
    /// of the steps a failure stops).
    pub records: Vec<ResultWrite>,
    /// Groups to create, before their members can report; a group that
    /// exists already is left as it is.
    pub groups: Vec<NewGroup>,
    pub launch: Vec<Launched>,
    /// Report to a group; the report that completes it (or its first
    /// failure) sends the group's join message, once.
    pub report: Option<GroupReport>,
    /// Release a unique-submission lock `(key, task id)`, if that task
    /// still holds it.
    pub release: Option<(String, String)>,
    /// Records where Celery's Redis result backend keeps them (Celery
    /// interop): stored and announced as Celery's backend does.
    pub celery_records: Vec<ResultWrite>,
    /// Messages for Celery queues (a Celery canvas' next steps).
    pub celery_sends: Vec<CelerySend>,
    /// Celery's `global_keyprefix` for the two above (empty: none).
    pub celery_prefix: String,
    /// Events (`celeriac_protocol::Event` JSON) to append to the event
    /// stream with the ack: what the completion did, recorded once.
    pub events: Vec<String>,
}

/// A Celery message to put on a Celery queue, as kombu's Redis transport
/// would (at the list for its priority).
#[derive(Debug, Clone)]
pub struct CelerySend {
    pub queue: String,
    /// kombu's priority: 0 (served first) to 9.
    pub priority: u8,
    /// The kombu envelope (JSON).
    pub envelope: String,
}

/// What one [`Broker::celery_ingest`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Messages moved onto Celeriac queues.
    pub moved: usize,
    /// Messages looked at and left for Celery (tasks this worker does not
    /// run, or envelopes it cannot read).
    pub left: usize,
    /// Enough messages wait on the Celeriac queues already: none moved.
    pub full: bool,
}

impl Effects {
    /// Nothing but events (or nothing at all): a completion the broker may
    /// take on its fast path.
    pub fn only_events(&self) -> bool {
        self.records.is_empty()
            && self.groups.is_empty()
            && self.launch.is_empty()
            && self.report.is_none()
            && self.release.is_none()
            && self.celery_records.is_empty()
            && self.celery_sends.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.only_events() && self.events.is_empty()
    }

    fn weight(&self) -> usize {
        self.records
            .iter()
            .map(|r| r.json.len() + 64)
            .sum::<usize>()
            + self.groups.iter().map(|g| g.join.len() + 64).sum::<usize>()
            + self
                .launch
                .iter()
                .map(|l| l.message.payload.len() + 64)
                .sum::<usize>()
            + self.report.as_ref().map_or(0, |r| match &r.outcome {
                Ok(j) | Err(j) => j.len() + 64,
            })
            + self
                .celery_records
                .iter()
                .map(|r| r.json.len() + 64)
                .sum::<usize>()
            + self
                .celery_sends
                .iter()
                .map(|m| m.envelope.len() + 64)
                .sum::<usize>()
            + self.events.iter().map(|e| e.len() + 16).sum::<usize>()
    }
}

/// What a group holds: its size, each member's result by index (as JSON)
/// once reported, and the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub size: u32,
    pub results: Vec<Option<String>>,
    pub failed: Option<String>,
}

/// The end of one delivery: an optional result written first, then the
/// message disposed of. Both take effect together, and only while the
/// consumer still holds the message.
#[derive(Debug, Clone)]
pub struct Completion {
    pub queue: String,
    pub delivery_id: String,
    /// The message as received (shared with the delivery, not copied).
    pub payload: Arc<str>,
    pub result: Option<ResultWrite>,
    pub disposition: Disposition,
    /// The caller confirmed its lease so recently that no other consumer
    /// can have taken the message over: the broker may skip checking.
    pub lease_fresh: bool,
    /// Applied with the ack, so only when [`Completed::Done`].
    pub effects: Effects,
}

impl Completion {
    /// Bytes this completion sends to the broker, roughly.
    pub fn weight(&self) -> usize {
        let result = self.result.as_ref().map_or(0, |r| r.json.len());
        let stored = match &self.disposition {
            Disposition::Ack => 0,
            Disposition::Retry { payload, .. } => payload.len(),
            Disposition::DeadLetter { reason, payload } => {
                reason.len() + payload.as_ref().map_or(self.payload.len(), String::len)
            }
            Disposition::Requeue => self.payload.len(),
        };
        result + stored + self.effects.weight() + 128
    }
}

/// A dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub queue: String,
    pub reason: String,
    pub payload: String,
    /// Unix milliseconds.
    pub at: u64,
}

/// Counts for one queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue: String,
    /// Waiting to be fetched.
    pub ready: u64,
    /// Waiting for their eta / countdown / retry backoff.
    pub delayed: u64,
    /// Held by workers.
    pub in_flight: u64,
    pub dead: u64,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub busy: u32,
    pub processed: u64,
    pub started_at: u64,
    pub seen_at: u64,
    /// Why the worker is not doing its job (e.g. it cannot store results),
    /// or `None` when it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short description for logs (never includes a password).
    fn describe(&self) -> String;

    // --- component store ---
    /// Store a component's bytes (once) and one signature of them in the
    /// slot [`signature_slot`]`(key_id, module)`, replacing only what that
    /// slot held; returns false if the bytes were already stored. Callers
    /// verify first: the store keeps what it is given.
    async fn put_component(
        &self,
        digest: &Digest,
        bytes: &[u8],
        key_id: &str,
        module: &str,
        signature: &str,
    ) -> BrokerResult<bool>;
    /// Every signature stored for a digest (signature file JSON), without
    /// its bytes, so they can be checked before the bytes are fetched;
    /// `None` when nothing is stored under the digest.
    async fn get_component_signatures(&self, digest: &Digest) -> BrokerResult<Option<Vec<String>>>;
    /// A component's bytes, unverified.
    async fn get_component_bytes(&self, digest: &Digest) -> BrokerResult<Option<Vec<u8>>>;
    /// Point a module name at a digest (keeping a history of past digests).
    async fn set_module(&self, info: &ModuleInfo) -> BrokerResult<()>;
    async fn get_module(&self, module: &str) -> BrokerResult<Option<ModuleInfo>>;
    async fn list_modules(&self) -> BrokerResult<Vec<ModuleInfo>>;

    // --- queues ---
    /// Enqueue messages, in one round trip where the broker allows.
    async fn enqueue(&self, messages: &[Outgoing]) -> BrokerResult<()>;
    /// As [`Broker::enqueue`], recording `events` (their `sent` events)
    /// first, so that no reader sees a task received before it was sent.
    async fn enqueue_noting(&self, messages: &[Outgoing], events: &[String]) -> BrokerResult<()> {
        self.emit(events).await?;
        self.enqueue(messages).await
    }
    /// Prepare queues for consuming (idempotent).
    async fn declare(&self, queues: &[String]) -> BrokerResult<()>;
    /// Take ready messages within `limits`, waiting up to `block` for the
    /// first.
    async fn fetch(
        &self,
        queues: &[String],
        consumer: &str,
        limits: FetchLimits,
        block: Duration,
    ) -> BrokerResult<Vec<Delivery>>;
    /// Move due delayed messages onto their queues; returns how many moved.
    async fn promote_due(&self, queues: &[String], now_ms: u64) -> BrokerResult<usize>;
    /// Renew the consumer's lease on these deliveries (queue, id), but only
    /// on those it still holds; returns the ones another consumer holds
    /// now (or nobody does).
    async fn renew(
        &self,
        consumer: &str,
        held: &[(String, String)],
    ) -> BrokerResult<Vec<(String, String)>>;
    /// Messages of `queue` held by consumers other than `consumer` and not
    /// renewed for at least `min_idle`, oldest first.
    async fn pending(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> BrokerResult<Vec<Pending>>;
    /// Take over messages, each only if it is still idle for its
    /// `min_idle_ms` (so a holder that renewed keeps it). Returns what was
    /// taken, payloads bounded by `max_message_bytes`.
    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        claims: &[Claim],
        max_message_bytes: usize,
    ) -> BrokerResult<Vec<Delivery>>;
    /// Finish deliveries: write results, then ack / retry / dead-letter /
    /// requeue. Each completion takes effect on its own: the outer error
    /// means the round trip failed (nothing known), an inner one that this
    /// completion failed (see [`BrokerError::is_transient`]).
    async fn complete(
        &self,
        consumer: &str,
        batch: &[Completion],
    ) -> BrokerResult<Vec<Result<Completed, BrokerError>>>;
    /// Remove consumers of `queue` that hold nothing and were idle for at
    /// least `min_idle` (`consumer`, when given, is removed at once if it
    /// holds nothing). Returns how many went.
    async fn prune_consumers(
        &self,
        queue: &str,
        min_idle: Duration,
        consumer: Option<&str>,
    ) -> BrokerResult<u64>;
    /// Whether the broker answers.
    async fn ping(&self) -> BrokerResult<()>;

    // --- results ---
    /// Store (and announce) a record outside a completion, e.g. STARTED.
    async fn set_result(&self, write: &ResultWrite) -> BrokerResult<()>;
    async fn get_result(&self, task_id: &str) -> BrokerResult<Option<String>>;
    /// Wait (push-based) until the record is final or `timeout` passes;
    /// returns the latest record seen.
    async fn wait_result(&self, task_id: &str, timeout: Duration) -> BrokerResult<Option<String>>;

    // --- workflows ---
    /// Apply effects outside a completion (a producer launching a
    /// workflow), atomically.
    async fn apply(&self, effects: &Effects) -> BrokerResult<()>;
    /// A group's state; `None` if it does not exist (or expired).
    async fn group(&self, id: &str) -> BrokerResult<Option<GroupState>>;
    /// Store a workflow's description under its root id.
    async fn put_workflow(&self, root_id: &str, json: &str, ttl: Duration) -> BrokerResult<()>;
    async fn get_workflow(&self, root_id: &str) -> BrokerResult<Option<String>>;
    /// Take the unique-submission lock `key` for `task_id` for `ttl`;
    /// `Some(holder)` when another task holds it.
    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<String>>;

    /// Reserve the next call of `task` under a limit of one call per
    /// `every`, shared by every worker: returns how long from now the
    /// reserved call may start (zero: now). A message that comes back at
    /// its reserved time (same `task_id`) finds its reservation and goes.
    async fn rate_acquire(
        &self,
        task: &str,
        task_id: &str,
        every: Duration,
    ) -> BrokerResult<Duration>;

    // --- revocation ---
    /// Revoke `ids` (tasks or workflow roots) for `ttl`: kept in the
    /// broker, so a worker started later honours them too, and announced
    /// to running workers.
    async fn revoke(&self, ids: &[String], ttl: Duration, terminate: bool) -> BrokerResult<()>;
    /// Every id revoked and not expired.
    async fn revoked(&self) -> BrokerResult<Vec<String>>;
    /// Revocations from now on.
    async fn watch_revokes(&self) -> BrokerResult<RevokeWatch>;

    // --- periodic schedules (`celeriac beat`) ---
    /// Take or renew the beat lease for `holder`; `Some(token)` while it
    /// holds it. A new lease gets a new, larger token.
    async fn beat_lease(&self, holder: &str, ttl: Duration) -> BrokerResult<Option<String>>;
    /// The last run fired of `entry` (Unix ms), or when tracking it began;
    /// `None` if no beat process has seen it yet.
    async fn beat_last(&self, entry: &str) -> BrokerResult<Option<u64>>;
    /// The last run fired of `entry` (Unix ms), starting its record at
    /// `now` if it has none (a new entry does not fire its past).
    async fn beat_start(&self, entry: &str, now: u64) -> BrokerResult<u64>;
    /// Record run `slot` of `entry` as fired and enqueue `message` (none:
    /// a skipped run), only while `token` is the lease's and the entry's
    /// last run is older than `slot`.
    async fn beat_fire(
        &self,
        token: &str,
        entry: &str,
        slot: u64,
        message: Option<&Outgoing>,
    ) -> BrokerResult<BeatFire>;

    // --- key-value state of task modules (each module its own namespace) ---
    async fn kv_get(&self, module: &str, key: &str) -> BrokerResult<Option<Vec<u8>>>;
    /// Store `value` (only if absent, with `only_if_absent`); true if stored.
    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BrokerResult<bool>;
    /// True if the key held a value.
    async fn kv_delete(&self, module: &str, key: &str) -> BrokerResult<bool>;
    /// Add `delta` atomically; `Ok(None)` if the value is not an integer
    /// or the sum overflows.
    async fn kv_increment(&self, module: &str, key: &str, delta: i64) -> BrokerResult<Option<i64>>;

    // --- dead letters ---
    async fn dlq_list(&self, queue: &str, limit: usize) -> BrokerResult<Vec<DeadLetter>>;
    /// Put a dead letter back on its queue; false if no such id.
    async fn dlq_requeue(&self, queue: &str, id: &str) -> BrokerResult<bool>;
    async fn dlq_purge(&self, queue: &str) -> BrokerResult<u64>;

    // --- Celery interop (Redis only) ---
    /// Move Celery messages for tasks this worker runs from kombu's lists
    /// of `queues` (every priority) onto the Celeriac queues of the same
    /// names, each in one atomic step, while fewer than `backlog` messages
    /// wait there unread. A task runs here if its Celery name is in
    /// `names`, or is `module.task` of a registered module; any other
    /// message is left where it is, in order, for Celery's workers.
    /// `key_prefix` is Celery's `global_keyprefix` (empty: none).
    async fn celery_ingest(
        &self,
        key_prefix: &str,
        queues: &[String],
        names: &[String],
        backlog: usize,
    ) -> BrokerResult<Ingested> {
        let _ = (key_prefix, queues, names, backlog);
        Err(celery_unsupported())
    }
    /// Wait up to `timeout` for a message on kombu's lists of `queues`,
    /// taking none.
    async fn celery_wait(
        &self,
        key_prefix: &str,
        queues: &[String],
        timeout: Duration,
    ) -> BrokerResult<()> {
        let _ = (key_prefix, queues, timeout);
        Err(celery_unsupported())
    }

    // --- monitoring ---
    /// Whether events are recorded (see [`BrokerOptions::events`]):
    /// producers and workers build none when they are not.
    fn events_enabled(&self) -> bool;
    /// Append events (`celeriac_protocol::Event` JSON) to the capped event
    /// stream; nothing when events are off.
    async fn emit(&self, events: &[String]) -> BrokerResult<()>;
    /// Events after the stream id `after` (`None`: only those to come), at
    /// most `max`, waiting up to `block` for the first: `(id, json)`.
    async fn read_events(
        &self,
        after: Option<&str>,
        max: usize,
        block: Duration,
    ) -> BrokerResult<Vec<(String, String)>>;
    /// The latest `max` events, oldest first.
    async fn recent_events(&self, max: usize) -> BrokerResult<Vec<(String, String)>>;

    async fn queues(&self) -> BrokerResult<Vec<String>>;
    async fn queue_stats(&self, queue: &str) -> BrokerResult<QueueStats>;
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()>;
    async fn forget_worker(&self, worker_id: &str) -> BrokerResult<()>;
    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>>;
}

fn celery_unsupported() -> BrokerError {
    BrokerError::Unsupported(
        "Celery queues live in Redis: consuming them needs a redis:// broker".into(),
    )
}

/// How a broker serves its consumers.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Waiting this long ranks a message one priority level higher, so
    /// that no level starves (see `RedisBroker`'s fetch).
    pub priority_aging: Duration,
    /// Record task and worker events (`celeriac events`, the console).
    pub events: bool,
    /// Events kept (approximately: trimmed as Redis' `MAXLEN ~`).
    pub events_kept: usize,
}

/// Events kept by default: minutes of a busy worker's history, a few MiB.
pub const DEFAULT_EVENTS_KEPT: usize = 100_000;

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            priority_aging: Duration::from_secs(1),
            events: true,
            events_kept: DEFAULT_EVENTS_KEPT,
        }
    }
}

/// Connect to the broker at `url`: `redis://…`, `rediss://…` or `memory://`.
pub async fn connect(url: &str, prefix: &str) -> BrokerResult<Arc<dyn Broker>> {
    connect_with(url, prefix, &BrokerOptions::default()).await
}

/// As [`connect`], with options.
pub async fn connect_with(
    url: &str,
    prefix: &str,
    options: &BrokerOptions,
) -> BrokerResult<Arc<dyn Broker>> {
    if url == "memory://" || url.starts_with("memory://") {
        return Ok(Arc::new(
            MemoryBroker::new().with_events(options.events, options.events_kept),
        ));
    }
    if url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://")
    {
        return Ok(Arc::new(
            RedisBroker::connect(url, prefix)
                .await?
                .with_priority_aging(options.priority_aging)
                .with_events(options.events, options.events_kept),
        ));
    }
    Err(BrokerError::Url {
        url: redact(url),
        reason: "expected redis://, rediss:// or memory://".into(),
    })
}

/// Connect as [`connect`] does, waiting out a broker that is down (a worker
/// started before Redis, or during a restart, simply begins once it
/// answers). A URL that can never work fails at once; `Ok(None)` when
/// `stop` is cancelled first.
pub async fn connect_with_retry(
    url: &str,
    prefix: &str,
    options: &BrokerOptions,
    stop: &tokio_util::sync::CancellationToken,
) -> BrokerResult<Option<Arc<dyn Broker>>> {
    let what = format!("broker {} unreachable", redact(url));
    retry::until_ok(
        &what,
        stop,
        |e| !matches!(e, BrokerError::Url { .. }),
        || connect_with(url, prefix, options),
    )
    .await
}

/// A URL with any password replaced by `***`, safe for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Where a dead letter of `queue` goes back: the priority level its
/// message asks for (level 0 if it cannot be read).
pub(crate) fn requeue_level(queue: &str, payload: &str) -> String {
    let priority = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("priority")?.as_u64())
        .filter(|p| *p <= u64::from(celeriac_protocol::bounds::MAX_PRIORITY))
        .unwrap_or(0);
    let base = celeriac_protocol::message::split_level(queue).0;
    celeriac_protocol::message::level_queue(base, priority as u8)
}

/// A dead letter put back on its queue starts over: retries reset to 0.
/// Payloads that are not messages (they were dead-lettered as malformed)
/// go back as they are, to be judged again.
pub(crate) fn reset_retries(payload: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut m)) if m.contains_key("retries") => {
            m.insert("retries".into(), 0.into());
            serde_json::Value::Object(m).to_string()
        }
        _ => payload.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, requeue_level};

    #[test]
    fn dead_letters_go_back_to_their_priority_level() {
        let msg = |p: &str| format!(r#"{{"v":1,"id":"a","priority":{p}}}"#);
        assert_eq!(requeue_level("q", &msg("9")), "q@9");
        assert_eq!(requeue_level("q@9", &msg("0")), "q");
        // Out of range or unreadable: level 0, to be judged again there.
        assert_eq!(requeue_level("q", &msg("12")), "q");
        assert_eq!(requeue_level("q", "not json"), "q");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://app:s3cret@h/1"), "rediss://app:***@h/1");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
