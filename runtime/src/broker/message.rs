//! The task message: the only thing that crosses the queue, as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::signing::Digest;

/// Current message format version.
pub const VERSION: u32 = 1;

/// Per-message limits; unset fields take the worker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// One task invocation on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub v: u32,
    /// Task id (UUID), also the result key.
    pub id: String,
    /// `module.task`.
    pub task: String,
    /// The component the producer resolved: workers run exactly this.
    pub digest: Digest,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    pub queue: String,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub max_retries: u32,
    /// Do not run before this Unix millisecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    /// Do not run after this Unix millisecond: record REVOKED instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default)]
    pub limits: MessageLimits,
    /// Result expiry, seconds; the worker default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ttl: Option<u64>,
    #[serde(default)]
    pub ignore_result: bool,
    /// Unix milliseconds.
    #[serde(default)]
    pub submitted_at: u64,
}

/// A message that cannot be run, and why (goes to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct MalformedMessage(pub String);

impl TaskMessage {
    /// Decode and validate a message from the queue.
    pub fn parse(payload: &str) -> Result<Self, MalformedMessage> {
        let msg: TaskMessage =
            serde_json::from_str(payload).map_err(|e| MalformedMessage(e.to_string()))?;
        if msg.v != VERSION {
            return Err(MalformedMessage(format!(
                "unsupported message version {} (this worker reads {VERSION})",
                msg.v
            )));
        }
        if msg.id.is_empty() || msg.id.len() > 200 {
            return Err(MalformedMessage("id must be 1..=200 characters".into()));
        }
        msg.split_task()?;
        Ok(msg)
    }

    /// `(module, name)` of `module.task`.
    pub fn split_task(&self) -> Result<(&str, &str), MalformedMessage> {
        self.task
            .rsplit_once('.')
            .filter(|(m, t)| !m.is_empty() && !t.is_empty())
            .ok_or_else(|| MalformedMessage(format!("task `{}` is not `module.task`", self.task)))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The id of a payload that failed to parse, if it has one: lets a
/// dead-lettered message still get a FAILURE record.
pub fn salvage_id(payload: &str) -> Option<String> {
    let v: Value = serde_json::from_str(payload).ok()?;
    v.get("id")?
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_it_cannot_run() {
        assert!(TaskMessage::parse("not json").is_err());
        assert!(TaskMessage::parse("{}").is_err());
        let ok = serde_json::json!({
            "v": 1, "id": "a", "task": "math.add", "queue": "q",
            "digest": format!("sha256:{}", "0".repeat(64)), "args": [1, 2]
        });
        assert!(TaskMessage::parse(&ok.to_string()).is_ok());
        let mut bad = ok.clone();
        bad["task"] = "add".into();
        assert!(
            TaskMessage::parse(&bad.to_string())
                .unwrap_err()
                .0
                .contains("module.task")
        );
        let mut bad = ok.clone();
        bad["digest"] = "md5:1".into();
        assert!(TaskMessage::parse(&bad.to_string()).is_err());
        let mut bad = ok;
        bad["v"] = 9.into();
        assert!(
            TaskMessage::parse(&bad.to_string())
                .unwrap_err()
                .0
                .contains("version 9")
        );
    }
}
