//! Result records: what a worker writes back for each task, with an expiry.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle of a task, as Celery names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Unknown to the result store: not started yet, or its record expired.
    Pending,
    Started,
    /// Failed and scheduled to run again.
    Retry,
    Success,
    Failure,
    /// Not run: expired, or refused before running.
    Revoked,
}

impl TaskState {
    /// No further record will follow this one.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }
}

/// Why a task failed: the kind (`invalid-input`, `time-limit`, `trap`, …)
/// and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
}

/// The JSON record stored under `result:<id>`. `R` is how the result value
/// is held: parsed ([`Value`], for readers) or as raw JSON text
/// (`Box<RawValue>`, for the worker, which stores what the task returned
/// without parsing it into a tree and printing it again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord<R = Value> {
    pub id: String,
    pub task: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub retries: u32,
    /// Wall-clock run time of the last attempt, milliseconds.
    #[serde(default)]
    pub runtime_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub queue: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub submitted_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// For RETRY: when the next attempt is due, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
    /// The limits the task ran under: what it asked for, capped by the
    /// worker's ceilings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RecordLimits>,
    /// The workflow this task belongs to, and the task that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Whether the last attempt ran in a fresh instance (the default) or
    /// in one kept from earlier tasks of its component (opt-in reuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<bool>,
    /// For a reused instance: which of its tasks this was (2 for the second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_use: Option<u32>,
}

/// Effective limits of a run, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLimits {
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    pub fuel: u64,
    pub memory: u64,
}

impl<R: Serialize> ResultRecord<R> {
    pub fn to_json(&self) -> String {
        // A record holds only strings, numbers and JSON values.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The state of a stored record, without decoding all of it.
pub fn state_of(json: &str) -> Option<TaskState> {
    #[derive(Deserialize)]
    struct Only {
        state: TaskState,
    }
    serde_json::from_str::<Only>(json).ok().map(|o| o.state)
}
