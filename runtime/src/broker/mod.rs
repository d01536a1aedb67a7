//! Brokers: where messages, components and results live. [`RedisBroker`]
//! is the real one; [`MemoryBroker`] serves single-process use (`memory://`).
//!
//! Delivery is at-least-once. A fetched message stays *held* by its
//! consumer until [`Broker::complete`] acknowledges it; a live worker keeps
//! renewing what it holds, and messages of a dead worker are reclaimed by
//! others once idle past the visibility timeout.

mod memory;
pub mod message;
mod redis;
mod results_pubsub;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryBroker;
pub use self::redis::RedisBroker;
pub use message::{MessageLimits, TaskMessage};

use crate::signing::Digest;

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
    pub payload: String,
    /// How many times it has been handed out, this time included.
    pub deliveries: u64,
}

/// How a held message leaves the consumer.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Done: drop it.
    Ack,
    /// Run again at `due_ms` as `payload` (the retry count bumped).
    Retry { payload: String, due_ms: u64 },
    /// Move `payload` (the message as received) to the dead-letter queue
    /// with the reason.
    DeadLetter { reason: String, payload: String },
    /// Hand `payload` back to the queue untouched (shutdown, not run).
    Requeue { payload: String },
}

/// A result record to store.
#[derive(Debug, Clone)]
pub struct ResultWrite {
    pub task_id: String,
    pub json: String,
    pub ttl: Duration,
}

/// The end of one delivery: an optional result written first, then the
/// message disposed of. Both take effect together. Only the dispositions
/// that re-store the message carry it: copying every payload into every
/// completion cost a 64 KiB copy per task in bench/compare's payload run.
#[derive(Debug, Clone)]
pub struct Completion {
    pub queue: String,
    pub delivery_id: String,
    pub result: Option<ResultWrite>,
    pub disposition: Disposition,
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
}

/// Messages reclaimed from dead consumers.
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Now held by the reclaiming consumer.
    pub deliveries: Vec<Delivery>,
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
    /// Prepare queues for consuming (idempotent).
    async fn declare(&self, queues: &[String]) -> BrokerResult<()>;
    /// Take up to `max` ready messages, waiting up to `block` for the first.
    async fn fetch(
        &self,
        queues: &[String],
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> BrokerResult<Vec<Delivery>>;
    /// Move due delayed messages onto their queues; returns how many moved.
    async fn promote_due(&self, queues: &[String], now_ms: u64) -> BrokerResult<usize>;
    /// Renew the consumer's hold on these deliveries (queue, id).
    async fn renew(&self, consumer: &str, held: &[(String, String)]) -> BrokerResult<()>;
    /// Take over messages held longer than `min_idle` without renewal.
    async fn reclaim(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> BrokerResult<Reclaimed>;
    /// Finish deliveries: write results, then ack / retry / dead-letter / requeue.
    async fn complete(&self, batch: &[Completion]) -> BrokerResult<()>;

    // --- results ---
    /// Store (and announce) a record outside a completion, e.g. STARTED.
    async fn set_result(&self, write: &ResultWrite) -> BrokerResult<()>;
    async fn get_result(&self, task_id: &str) -> BrokerResult<Option<String>>;
    /// Wait (push-based) until the record is final or `timeout` passes;
    /// returns the latest record seen.
    async fn wait_result(&self, task_id: &str, timeout: Duration) -> BrokerResult<Option<String>>;

    // --- dead letters ---
    async fn dlq_list(&self, queue: &str, limit: usize) -> BrokerResult<Vec<DeadLetter>>;
    /// Put a dead letter back on its queue; false if no such id.
    async fn dlq_requeue(&self, queue: &str, id: &str) -> BrokerResult<bool>;
    async fn dlq_purge(&self, queue: &str) -> BrokerResult<u64>;

    // --- monitoring ---
    async fn queues(&self) -> BrokerResult<Vec<String>>;
    async fn queue_stats(&self, queue: &str) -> BrokerResult<QueueStats>;
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()>;
    async fn forget_worker(&self, worker_id: &str) -> BrokerResult<()>;
    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>>;
}

/// Connect to the broker at `url`: `redis://…`, `rediss://…` or `memory://`.
pub async fn connect(url: &str, prefix: &str) -> BrokerResult<Arc<dyn Broker>> {
    if url == "memory://" || url.starts_with("memory://") {
        return Ok(Arc::new(MemoryBroker::new()));
    }
    if url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://")
    {
        return Ok(Arc::new(RedisBroker::connect(url, prefix).await?));
    }
    Err(BrokerError::Url {
        url: redact(url),
        reason: "expected redis://, rediss:// or memory://".into(),
    })
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
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://app:s3cret@h/1"), "rediss://app:***@h/1");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
