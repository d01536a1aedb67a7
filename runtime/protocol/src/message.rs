//! The task message: the only thing that crosses the queue, as JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Digest;
use crate::workflow::{MapCall, Member, Node};

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
///
/// `args` and `kwargs` are kept as the JSON text the producer sent: a
/// worker hands them to the guest as text, so parsing them into values and
/// printing them again would be work for nothing (checked to be an array
/// and an object by [`TaskMessage::parse`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskMessage {
    pub v: u32,
    /// Task id (UUID), also the result key.
    pub id: String,
    /// `module.task`.
    pub task: String,
    /// The component the producer resolved: workers run exactly this.
    pub digest: Digest,
    /// A JSON array.
    #[serde(default = "empty_array")]
    pub args: Box<RawValue>,
    /// A JSON object.
    #[serde(default = "empty_object")]
    pub kwargs: Box<RawValue>,
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
    /// 0 (default) to 9, higher first within its queue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// The workflow this task belongs to (its own id for a lone task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// The task whose completion sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// What runs after this task, fed its result (see [`crate::workflow`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Node>,
    /// The group to report to once `chain` is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
    /// Run on success, fed the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Node>,
    /// Run on final failure, fed a [`crate::workflow::Failed`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_error: Vec<Node>,
    /// Call the task once per item instead of once with `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapCall>,
    /// Held while this task is queued or running (see `--unique-key`);
    /// released when it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn empty_array() -> Box<RawValue> {
    raw("[]")
}

fn empty_object() -> Box<RawValue> {
    raw("{}")
}

/// Raw JSON from text known to be valid.
fn raw(json: &'static str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap_or_else(|_| unreachable!("{json} is JSON"))
}

/// Bounds on what a producer may ask for. Anything past them is refused
/// where it enters: by the client at submit (exit 2 from the CLI) and by
/// the worker for raw messages (dead-lettered as `invalid message: …`).
pub mod bounds {
    /// Longest a result may be kept. Redis refuses expiries that overflow
    /// its clock, and a year of results is more than any Redis holds.
    pub const MAX_RESULT_TTL_SECS: u64 = 365 * 24 * 3600;
    /// Furthest in the future an eta, countdown or expiry may lie.
    pub const MAX_HORIZON_MS: u64 = 365 * 24 * 3600 * 1000;
    /// Longest hard time limit a message may ask for (workers cap it lower).
    pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
    /// Largest memory limit a message may ask for (workers cap it lower).
    pub const MAX_MEMORY: u64 = 1 << 40;
    pub const MAX_RETRIES: u32 = 10_000;
    /// Highest priority (0 is the default and the lowest).
    pub const MAX_PRIORITY: u8 = 9;
    /// Longest correlation id, unique key or group id.
    pub const MAX_ID_LEN: usize = 200;
    /// Largest message the client sends and, by default, a worker reads.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

    /// A result expiry in range, or why not.
    pub fn check_result_ttl(secs: u64) -> Result<(), String> {
        if secs == 0 || secs > MAX_RESULT_TTL_SECS {
            return Err(format!(
                "result_ttl {secs} s is out of range (1 s to 365 days)"
            ));
        }
        Ok(())
    }
}

impl MessageLimits {
    /// Each limit in range and the soft one under the hard one, or why not.
    /// Messages are checked with it, and so are the CLI's limit flags.
    pub fn check(&self) -> Result<(), String> {
        use bounds::{MAX_MEMORY, MAX_TIMEOUT_MS};
        if let Some(t) = self.timeout_ms
            && (t == 0 || t > MAX_TIMEOUT_MS)
        {
            return Err(format!("timeout {t} ms is out of range (1 ms to 7 days)"));
        }
        if let Some(s) = self.soft_timeout_ms {
            if s == 0 || s > MAX_TIMEOUT_MS {
                return Err(format!(
                    "soft_timeout {s} ms is out of range (1 ms to 7 days)"
                ));
            }
            if let Some(t) = self.timeout_ms
                && s >= t
            {
                return Err(format!(
                    "soft_timeout {s} ms must be shorter than timeout {t} ms"
                ));
            }
        }
        if self.fuel == Some(0) {
            return Err("fuel must be at least 1".into());
        }
        if let Some(m) = self.memory
            && (m == 0 || m > MAX_MEMORY)
        {
            return Err(format!(
                "memory {m} bytes is out of range (1 byte to 1 TiB)"
            ));
        }
        Ok(())
    }
}

/// A message that cannot be run, and why (goes to the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a message this worker can read at all.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed, but a field is out of range.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl TaskMessage {
    /// Decode a message from the queue and check every field a producer
    /// controls against [`bounds`], as of `now_ms`.
    pub fn parse(payload: &str, now_ms: u64) -> Result<Self, MessageError> {
        let msg: TaskMessage =
            serde_json::from_str(payload).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if msg.v != VERSION {
            return Err(MessageError::Malformed(format!(
                "unsupported message version {} (this worker reads {VERSION})",
                msg.v
            )));
        }
        if msg.id.is_empty() || msg.id.len() > 200 {
            return Err(MessageError::Malformed(
                "id must be 1..=200 characters".into(),
            ));
        }
        msg.split_task()?;
        msg.check_call_shape()?;
        msg.validate(now_ms)?;
        Ok(msg)
    }

    /// Check the numbers a producer picks: in range, and consistent with
    /// each other. The same check runs in the client before sending and in
    /// the worker on every message it reads.
    pub fn validate(&self, now_ms: u64) -> Result<(), MessageError> {
        use bounds::*;
        let invalid = |s: String| Err(MessageError::Invalid(s));
        let horizon = now_ms.saturating_add(MAX_HORIZON_MS);
        if let Some(ttl) = self.result_ttl {
            check_result_ttl(ttl).map_err(MessageError::Invalid)?;
        }
        if let Some(eta) = self.eta
            && eta > horizon
        {
            return invalid(format!("eta {eta} is more than 365 days ahead"));
        }
        if let Some(expires) = self.expires
            && expires > horizon
        {
            return invalid(format!("expires {expires} is more than 365 days ahead"));
        }
        self.limits.check().map_err(MessageError::Invalid)?;
        if self.priority > MAX_PRIORITY {
            return invalid(format!(
                "priority {} is out of range (0 to {MAX_PRIORITY})",
                self.priority
            ));
        }
        for (what, id) in [
            ("root_id", &self.root_id),
            ("parent_id", &self.parent_id),
            ("unique_key", &self.unique_key),
            (
                "member group",
                &self.member.as_ref().map(|m| m.group.clone()),
            ),
        ] {
            if let Some(id) = id
                && (id.is_empty() || id.len() > MAX_ID_LEN)
            {
                return invalid(format!("{what} must be 1..={MAX_ID_LEN} characters"));
            }
        }
        if let Some(map) = &self.map
            && !map.items.get().starts_with('[')
        {
            return invalid("map items must be a JSON array".into());
        }
        if self.max_retries > MAX_RETRIES {
            return invalid(format!(
                "max_retries {} is over the maximum of {MAX_RETRIES}",
                self.max_retries
            ));
        }
        Ok(())
    }

    /// `args` is a JSON array and `kwargs` an object (they arrive as raw
    /// text, so serde has not looked inside them).
    fn check_call_shape(&self) -> Result<(), MessageError> {
        let shape = |what: &str, raw: &RawValue, open: char, expected: &str| {
            if raw.get().starts_with(open) {
                Ok(())
            } else {
                Err(MessageError::Malformed(format!(
                    "{what} must be {expected}, got `{}`",
                    crate::text::clip(raw.get(), 64)
                )))
            }
        };
        shape("args", &self.args, '[', "a JSON array")?;
        shape("kwargs", &self.kwargs, '{', "a JSON object")
    }

    /// `(module, name)` of `module.task`.
    pub fn split_task(&self) -> Result<(&str, &str), MessageError> {
        self.task
            .rsplit_once('.')
            .filter(|(m, t)| !m.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                MessageError::Malformed(format!("task `{}` is not `module.task`", self.task))
            })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Module names prefix task names (`math` in `math.add`) and Redis keys:
/// a letter, then letters, digits, `_` and `-`, at most 64 in all.
pub fn valid_module_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

/// Queue names become Redis keys and hash tags: letters, digits, `_`, `-`
/// and `.`, 1 to 64 of them.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Where a message of `priority` waits within `queue`: the queue itself
/// for 0, `queue@p` above (a name no producer can give: queue names have
/// no `@`).
pub fn level_queue(queue: &str, priority: u8) -> String {
    if priority == 0 {
        queue.to_string()
    } else {
        format!("{queue}@{priority}")
    }
}

/// A level's queue and priority (see [`level_queue`]).
pub fn split_level(name: &str) -> (&str, u8) {
    match name.rsplit_once('@') {
        Some((q, p)) => (q, p.parse().unwrap_or(0)),
        None => (name, 0),
    }
}

/// Every level of `queue`, highest first: `q@9` … `q@1`, `q`.
pub fn levels(queue: &str) -> Vec<String> {
    (0..=bounds::MAX_PRIORITY)
        .rev()
        .map(|p| level_queue(queue, p))
        .collect()
}

/// A fresh task id (a random UUID).
pub fn new_task_id() -> String {
    uuid::Uuid::new_v4().to_string()
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
    fn module_names_are_a_safe_alphabet() {
        for ok in ["math", "py_reuse", "js-text", "a9", &"m".repeat(64)] {
            assert!(valid_module_name(ok), "{ok}");
        }
        for bad in ["", "9lives", "_x", "a b", "a.b", "ключ", &"m".repeat(65)] {
            assert!(!valid_module_name(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let parse = |s: &str| TaskMessage::parse(s, 1_000);
        assert!(parse("not json").is_err());
        assert!(parse("{}").is_err());
        let ok = serde_json::json!({
            "v": 1, "id": "a", "task": "math.add", "queue": "q",
            "digest": format!("sha256:{}", "0".repeat(64)), "args": [1, 2]
        });
        assert!(parse(&ok.to_string()).is_ok());
        let mut bad = ok.clone();
        bad["task"] = "add".into();
        assert!(
            parse(&bad.to_string())
                .unwrap_err()
                .to_string()
                .contains("module.task")
        );
        let mut bad = ok.clone();
        bad["digest"] = "md5:1".into();
        assert!(parse(&bad.to_string()).is_err());
        for (field, value, says) in [
            (
                "args",
                serde_json::json!({"a": 1}),
                "args must be a JSON array",
            ),
            ("args", Value::Null, "args must be a JSON array"),
            (
                "kwargs",
                serde_json::json!([1]),
                "kwargs must be a JSON object",
            ),
        ] {
            let mut bad = ok.clone();
            bad[field] = value;
            let err = parse(&bad.to_string()).unwrap_err();
            assert!(
                matches!(&err, MessageError::Malformed(m) if m.starts_with(says)),
                "{field}: {err}"
            );
        }
        // Absent ones are empty; raw text goes back out as it came.
        let mut bare = ok.clone();
        bare.as_object_mut().unwrap().remove("args");
        let m = parse(&bare.to_string()).unwrap();
        assert_eq!((m.args.get(), m.kwargs.get()), ("[]", "{}"));
        let m = parse(r#"{"v":1,"id":"a","task":"m.t","queue":"q","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","args":[1, {"x" : 2.50}]}"#).unwrap();
        assert_eq!(m.args.get(), r#"[1, {"x" : 2.50}]"#);
        assert!(m.to_json().contains(r#""args":[1, {"x" : 2.50}]"#));
        let mut bad = ok;
        bad["v"] = 9.into();
        assert!(
            parse(&bad.to_string())
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
    }

    #[test]
    fn refuses_every_out_of_range_number() {
        let ok = serde_json::json!({
            "v": 1, "id": "a", "task": "math.add", "queue": "q",
            "digest": format!("sha256:{}", "0".repeat(64)), "args": [1, 2],
            "result_ttl": 60, "eta": 2_000, "expires": 3_000, "max_retries": 3,
            "limits": {"timeout_ms": 1000, "soft_timeout_ms": 500, "fuel": 1, "memory": 1 << 20}
        });
        let now = 1_000;
        assert!(TaskMessage::parse(&ok.to_string(), now).is_ok());
        let year_ms = bounds::MAX_HORIZON_MS;
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/result_ttl", u64::MAX.into(), "result_ttl"),
            ("/result_ttl", 0.into(), "result_ttl"),
            ("/eta", (now + year_ms + 1).into(), "eta"),
            ("/expires", u64::MAX.into(), "expires"),
            ("/limits/timeout_ms", u64::MAX.into(), "timeout"),
            ("/limits/timeout_ms", 0.into(), "timeout"),
            (
                "/limits/soft_timeout_ms",
                1000.into(),
                "shorter than timeout",
            ),
            ("/limits/fuel", 0.into(), "fuel"),
            ("/limits/memory", u64::MAX.into(), "memory"),
            ("/max_retries", u32::MAX.into(), "max_retries"),
        ];
        for (path, value, named) in cases {
            let mut bad = ok.clone();
            *bad.pointer_mut(path).unwrap() = value;
            let err = TaskMessage::parse(&bad.to_string(), now).unwrap_err();
            assert!(matches!(err, MessageError::Invalid(_)), "{path}: {err}");
            let text = err.to_string();
            assert!(
                text.starts_with("invalid message: ") && text.contains(named),
                "{path}: {text}"
            );
        }
    }
}
