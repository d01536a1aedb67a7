//! What a task asks for and what became of it.

use std::fmt;
use std::time::Duration;

use celeriac_protocol::units::{format_duration, format_size};

/// One invocation of a task.
#[derive(Debug, Clone, Default)]
pub struct TaskCall {
    /// Unique id of this invocation; on every log line and span.
    pub id: String,
    /// Module the component serves (`math`).
    pub module: String,
    /// Task name within the module (`add`).
    pub name: String,
    /// JSON array.
    pub args: String,
    /// JSON object.
    pub kwargs: String,
    pub retries: u32,
    pub max_retries: u32,
    /// What the component's signed manifest grants (HTTP, config, kv,
    /// reuse).
    pub grants: std::sync::Arc<celeriac_protocol::Grants>,
}

/// Failure kinds a task reports itself (the WIT `failure-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    Retry,
    Fatal,
    InvalidInput,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Retry => "retry",
            FailureKind::Fatal => "fatal",
            FailureKind::InvalidInput => "invalid-input",
        })
    }
}

/// Why a task did not produce a result. The Display form is the one-line
/// cause users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task returned a failure.
    #[error("{kind}: {message}")]
    Failed {
        kind: FailureKind,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("time limit exceeded ({})", format_duration(*limit))]
    TimeLimit { limit: Duration },
    #[error("fuel exhausted ({fuel} units)")]
    FuelExhausted { fuel: u64 },
    #[error("memory limit exceeded ({})", format_size(*limit))]
    MemoryLimit { limit: u64 },
    /// The guest trapped: panic, unreachable, stack overflow, bad memory
    /// access. One line; text the guest printed is quoted as its own
    /// (`… (guest stderr: …)`), never presented as the host's finding.
    #[error("trap: {0}")]
    Trap(String),
    /// The guest called WASI `exit` instead of returning a result.
    #[error("task exited with status {status}")]
    Exited { status: i32 },
    /// The component could not be run (missing task, bad component), or
    /// the host refused what the guest did in a way that would happen again
    /// (a result it cannot take, a host call over a host limit). One line.
    #[error("{0}")]
    Host(String),
    /// The host has no room to run it now (out of instance slots): not the
    /// task's doing, so a worker hands the message back to run later.
    #[error("{0}")]
    Busy(String),
}

impl TaskError {
    /// Whether the runtime may retry: explicit retry requests and traps
    /// (which are often transient, e.g. a resource spike). Limits, fatal and
    /// invalid-input failures, exits and host refusals would end the same
    /// way again and are not retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TaskError::Failed {
                kind: FailureKind::Retry,
                ..
            } | TaskError::Trap(_)
        )
    }

    /// The same failure, said to be of item `i` of a map call.
    pub fn in_item(self, i: usize) -> Self {
        match self {
            TaskError::Failed {
                kind,
                message,
                retry_after,
            } => TaskError::Failed {
                kind,
                message: format!("item {i}: {message}"),
                retry_after,
            },
            TaskError::Trap(m) => TaskError::Trap(format!("item {i}: {m}")),
            TaskError::Host(m) => TaskError::Host(format!("item {i}: {m}")),
            other => other,
        }
    }
}

/// The outcome of one task run, with what it cost.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// JSON result text, or why there is none.
    pub result: Result<String, TaskError>,
    /// Wall-clock time from store creation to return.
    pub elapsed: Duration,
    /// Fuel burned, when the sandbox meters fuel.
    pub fuel_consumed: Option<u64>,
    /// Peak total linear memory, bytes.
    pub memory_peak: u64,
    /// Last progress the task reported.
    pub progress: Option<(u64, u64)>,
    /// Which task this was for its instance: 1 for a fresh instance, n for
    /// the n-th task a reused one served; 0 when nothing ran.
    pub instance_use: u32,
}

impl TaskReport {
    /// A report of what did not run in the sandbox (or runs of it summed).
    pub fn of(result: Result<String, TaskError>, elapsed: Duration, fuel: Option<u64>) -> Self {
        Self {
            result,
            elapsed,
            fuel_consumed: fuel,
            memory_peak: 0,
            progress: None,
            instance_use: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried() {
        let retry = TaskError::Failed {
            kind: FailureKind::Retry,
            message: "later".into(),
            retry_after: None,
        };
        assert!(retry.is_retryable());
        assert!(TaskError::Trap("stack overflow".into()).is_retryable());
        let exited = TaskError::Exited { status: 3 };
        assert!(!exited.is_retryable());
        assert_eq!(exited.to_string(), "task exited with status 3");
        assert!(!TaskError::Host("host refused the result".into()).is_retryable());
        assert!(!TaskError::FuelExhausted { fuel: 1 }.is_retryable());
    }
}
