//! How a worker behaves ([`WorkerConfig`]: every field has a serviceable
//! default) and what it reports when it stops.

use std::time::Duration;

use celeriac_protocol::Backoff;
use celeriac_protocol::bounds;
use celeriac_sandbox::Limits;

/// How a worker behaves; every field has a serviceable default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Most messages held beyond those running. The worker holds fewer
    /// when tasks are long (see `pacing`): enough for about 50 ms of work
    /// per slot.
    pub prefetch: u32,
    /// Most bytes of messages held at once (running and waiting).
    pub prefetch_bytes: usize,
    /// Messages larger than this are dead-lettered unread (a prefix kept).
    pub max_message_bytes: usize,
    /// A result larger than this (as JSON) fails the task instead.
    pub max_result_bytes: usize,
    /// Failure messages and dead-letter reasons are cut to this.
    pub max_error_bytes: usize,
    /// A held message not renewed for this long is handed to another worker.
    pub visibility_timeout: Duration,
    /// Deliveries after which a message that never completes is dead-lettered.
    pub max_deliveries: u64,
    /// Limits for messages that set none, and ceilings for those that do:
    /// a message may ask for less, never more (more is cut to these).
    pub limits: Limits,
    pub result_ttl: Duration,
    pub backoff: Backoff,
    /// How long in-flight tasks may take to finish after a shutdown signal.
    pub grace: Duration,
    pub heartbeat: Duration,
    /// Write a STARTED record when a task starts (one more write per task,
    /// as Celery's task_track_started).
    pub track_started: bool,
    /// Task name → least time between two of its calls, across every
    /// worker sharing the broker.
    pub rate_limits: std::collections::HashMap<String, Duration>,
    /// Celery queues to consume (Celery interop), and how their task names
    /// run here.
    pub celery: Option<crate::CeleryConfig>,
}

impl WorkerConfig {
    pub const DEFAULT_PREFETCH: u32 = 64;
    pub const DEFAULT_PREFETCH_BYTES: usize = 64 << 20;
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 << 20;
    pub const DEFAULT_MAX_ERROR_BYTES: usize = 8 << 10;
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queues: vec!["default".into()],
            concurrency: 2,
            prefetch: Self::DEFAULT_PREFETCH,
            prefetch_bytes: Self::DEFAULT_PREFETCH_BYTES,
            max_message_bytes: bounds::DEFAULT_MAX_MESSAGE_BYTES,
            max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
            max_error_bytes: Self::DEFAULT_MAX_ERROR_BYTES,
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 5,
            limits: Limits::default(),
            result_ttl: Duration::from_secs(24 * 3600),
            backoff: Backoff::default(),
            grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            track_started: false,
            rate_limits: Default::default(),
            celery: None,
        }
    }
}

/// `host-pid-xxxx`: unique per process, readable in `celeriac status`.
pub fn default_worker_id() -> String {
    format!(
        "{}-{}-{:04x}",
        hostname(),
        std::process::id(),
        fastrand::u16(..)
    )
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Counters a finished worker reports.
#[derive(Debug, Default, Clone)]
pub struct WorkerSummary {
    pub processed: u64,
    pub requeued_on_shutdown: u64,
}
