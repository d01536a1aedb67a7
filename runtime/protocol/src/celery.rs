//! Celery's wire formats, so unchanged Celery producers drive Celeriac
//! workers: reading a message of Celery's protocol v2 as kombu's Redis
//! transport stores it (a JSON envelope whose base64 body is
//! `[args, kwargs, embed]`), writing the records of Celery's Redis result
//! backend that `AsyncResult.get()` reads, and sending a canvas' next
//! step as a Celery message. Pure: the broker owns every Redis key.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::bounds::{MAX_HORIZON_MS, MAX_ID_LEN, MAX_RETRIES, MAX_TIMEOUT_MS};
use crate::record::TaskState;
use crate::{Digest, MessageError, MessageLimits, TaskMessage};

/// Celery's `Task.max_retries` default: a task that asks for a retry runs
/// at most this many more times unless the name's mapping says otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Whether `payload` is a kombu envelope (a Celery message) rather than a
/// Celeriac one: its first key is `body` (kombu writes `body` first;
/// Celeriac messages have no such field).
pub fn is_envelope(payload: &str) -> bool {
    payload
        .trim_start()
        .strip_prefix('{')
        .is_some_and(|rest| rest.trim_start().starts_with("\"body\""))
}

/// A Celery message's canvas: what runs after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// `link`: run on success with the result.
    pub callbacks: Vec<Value>,
    /// `link_error`: run on failure with the failed task's id.
    pub errbacks: Vec<Value>,
    /// The rest of a `chain`, last to run first (Celery's order).
    pub chain: Vec<Value>,
    /// The body of a chord this task is a header member of.
    pub chord: Option<Value>,
}

/// A Celery task message, read and checked.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub id: String,
    /// The Celery task name (`headers.task`).
    pub name: String,
    pub args: Box<RawValue>,
    pub kwargs: Box<RawValue>,
    pub retries: u32,
    /// Unix milliseconds.
    pub eta: Option<u64>,
    pub expires: Option<u64>,
    /// `timelimit`: hard and soft, milliseconds.
    pub time_limit_ms: Option<u64>,
    pub soft_time_limit_ms: Option<u64>,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub ignore_result: bool,
    /// kombu's priority, 0 (served first) to 9.
    pub priority: u8,
    pub reply_to: Option<String>,
    pub embed: Embed,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    headers: Headers,
    #[serde(default)]
    properties: Properties,
}

#[derive(Deserialize)]
struct Headers {
    task: String,
    id: String,
    #[serde(default)]
    eta: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    timelimit: Option<(Option<f64>, Option<f64>)>,
    #[serde(default)]
    root_id: Option<String>,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    ignore_result: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Properties {
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    body_encoding: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawEmbed {
    #[serde(default)]
    callbacks: Option<Vec<Value>>,
    #[serde(default)]
    errbacks: Option<Vec<Value>>,
    #[serde(default)]
    chain: Option<Vec<Value>>,
    #[serde(default)]
    chord: Option<Value>,
}

impl Inbound {
    /// Read a kombu envelope at `now_ms`, checking what a producer controls
    /// against the same bounds as Celeriac's own messages.
    pub fn parse(payload: &str, now_ms: u64) -> Result<Self, MessageError> {
        let malformed = |what: String| MessageError::Malformed(format!("Celery message: {what}"));
        let invalid = |what: String| MessageError::Invalid(format!("Celery message: {what}"));
        let env: Envelope = serde_json::from_str(payload).map_err(|e| malformed(e.to_string()))?;
        let h = env.headers;
        if h.id.is_empty() || h.id.len() > MAX_ID_LEN {
            return Err(invalid(format!("id must be 1 to {MAX_ID_LEN} bytes")));
        }
        if h.task.is_empty() || h.task.len() > MAX_ID_LEN {
            return Err(invalid(format!(
                "task name must be 1 to {MAX_ID_LEN} bytes"
            )));
        }
        for (what, id) in [
            ("root_id", &h.root_id),
            ("parent_id", &h.parent_id),
            ("group", &h.group),
        ] {
            if id.as_ref().is_some_and(|i| i.len() > MAX_ID_LEN) {
                return Err(invalid(format!("{what} is longer than {MAX_ID_LEN} bytes")));
            }
        }
        match env.content_type.as_deref() {
            Some("application/json") => {}
            other => {
                return Err(invalid(format!(
                    "content type {} is not application/json: Celeriac reads only JSON \
                     (set task_serializer = \"json\")",
                    other.unwrap_or("(none)")
                )));
            }
        }
        let body: Cow<str> = match env.properties.body_encoding.as_deref() {
            Some("base64") => {
                let bytes = BASE64
                    .decode(env.body.as_bytes())
                    .map_err(|e| malformed(format!("body is not base64: {e}")))?;
                Cow::Owned(
                    String::from_utf8(bytes).map_err(|_| malformed("body is not UTF-8".into()))?,
                )
            }
            None | Some("utf-8") => env.body,
            Some(other) => return Err(invalid(format!("body encoding {other} is not base64"))),
        };
        let (args, kwargs, embed): (Box<RawValue>, Box<RawValue>, Option<RawEmbed>) =
            serde_json::from_str(&body)
                .map_err(|e| malformed(format!("body is not [args, kwargs, embed]: {e}")))?;
        if !args.get().starts_with('[') {
            return Err(invalid("args must be a JSON array".into()));
        }
        if !kwargs.get().starts_with('{') {
            return Err(invalid("kwargs must be a JSON object".into()));
        }
        let retries = h.retries.unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(invalid(format!("retries {retries} is over {MAX_RETRIES}")));
        }
        let time = |what: &str, s: &Option<String>| -> Result<Option<u64>, MessageError> {
            let Some(s) = s else { return Ok(None) };
            let at = parse_time(s)
                .ok_or_else(|| invalid(format!("{what} `{s}` is not an ISO 8601 time")))?;
            if at > now_ms.saturating_add(MAX_HORIZON_MS) {
                return Err(invalid(format!("{what} is more than a year ahead")));
            }
            Ok(Some(at))
        };
        let eta = time("eta", &h.eta)?;
        let expires = time("expires", &h.expires)?;
        let (hard, soft) = h.timelimit.unwrap_or((None, None));
        let limit = |what: &str, secs: Option<f64>| -> Result<Option<u64>, MessageError> {
            match secs {
                None => Ok(None),
                Some(s) if s > 0.0 && s * 1e3 <= MAX_TIMEOUT_MS as f64 => {
                    Ok(Some(((s * 1e3).ceil() as u64).max(1)))
                }
                Some(s) => Err(invalid(format!(
                    "{what} {s} s is out of range (up to 7 days)"
                ))),
            }
        };
        let embed = embed.unwrap_or_default();
        Ok(Inbound {
            id: h.id,
            name: h.task,
            args,
            kwargs,
            retries,
            eta,
            expires,
            time_limit_ms: limit("time_limit", hard)?,
            soft_time_limit_ms: limit("soft_time_limit", soft)?,
            root_id: h.root_id,
            parent_id: h.parent_id,
            group: h.group,
            ignore_result: h.ignore_result.unwrap_or(false),
            priority: env.properties.priority.unwrap_or(0).clamp(0, 9) as u8,
            reply_to: env.properties.reply_to,
            embed: Embed {
                callbacks: embed.callbacks.unwrap_or_default(),
                errbacks: embed.errbacks.unwrap_or_default(),
                chain: embed.chain.unwrap_or_default(),
                chord: embed.chord.filter(|c| !c.is_null()),
            },
        })
    }

    /// The Celeriac message to run: `task` (`module.task`) of `digest`.
    /// Celery's priorities run the other way (0 first), so kombu's 0 is
    /// Celeriac's 9. A soft limit at or over the hard one is dropped (it
    /// could never fire first).
    pub fn to_message(
        &self,
        task: String,
        digest: Digest,
        queue: &str,
        max_retries: u32,
        result_ttl: Option<u64>,
    ) -> TaskMessage {
        let soft = self
            .soft_time_limit_ms
            .filter(|s| self.time_limit_ms.is_none_or(|h| *s < h));
        TaskMessage {
            v: crate::message::VERSION,
            id: self.id.clone(),
            task,
            digest,
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            queue: queue.to_string(),
            retries: self.retries,
            max_retries: max_retries.max(self.retries),
            eta: self.eta,
            expires: self.expires,
            limits: MessageLimits {
                timeout_ms: self.time_limit_ms,
                soft_timeout_ms: soft,
                ..Default::default()
            },
            result_ttl,
            ignore_result: self.ignore_result,
            submitted_at: 0,
            priority: 9 - self.priority.min(9),
            root_id: self.root_id.clone().filter(|i| !i.is_empty()),
            parent_id: self.parent_id.clone().filter(|i| !i.is_empty()),
            chain: Vec::new(),
            member: None,
            link: Vec::new(),
            link_error: Vec::new(),
            map: None,
            unique_key: None,
        }
    }
}

/// The envelope as Celery re-sends a task to retry it: `retries` one more,
/// due at `eta_ms`, a new delivery tag; everything else as it came.
pub fn retry_envelope(payload: &str, retries: u32, eta_ms: u64) -> Result<String, String> {
    let mut env: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let headers = env
        .get_mut("headers")
        .and_then(Value::as_object_mut)
        .ok_or("no headers")?;
    headers.insert("retries".into(), retries.into());
    headers.insert("eta".into(), format_time(eta_ms).into());
    if let Some(p) = env.get_mut("properties").and_then(Value::as_object_mut) {
        p.insert(
            "delivery_tag".into(),
            uuid::Uuid::new_v4().to_string().into(),
        );
    }
    Ok(env.to_string())
}

/// An ISO 8601 time as Celery writes `eta` and `expires` (with an offset,
/// or naive meaning UTC), in Unix milliseconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let ms = match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.timestamp_millis(),
        Err(_) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc()
            .timestamp_millis(),
    };
    u64::try_from(ms).ok()
}

/// Unix milliseconds as Celery writes times (`isoformat()` of an aware
/// UTC datetime).
pub fn format_time(ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// Celery's name for a state.
pub fn status(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "PENDING",
        TaskState::Started => "STARTED",
        TaskState::Retry => "RETRY",
        TaskState::Success => "SUCCESS",
        TaskState::Failure => "FAILURE",
        TaskState::Revoked => "REVOKED",
    }
}

/// The exception a failure of `kind` is raised as on the Python side.
/// Celery's own classes where one means the same thing; otherwise a class
/// named after the kind, which Celery creates on the fly (its module,
/// `celeriac`, is not importable, so nothing of the producer's is named).
pub fn exception(kind: &str, message: &str) -> Value {
    let (exc_type, module) = match kind {
        "time-limit" => ("TimeLimitExceeded".to_string(), "celery.exceptions"),
        "revoked" | "expired" => ("TaskRevokedError".to_string(), "celery.exceptions"),
        other => {
            let mut name: String = other
                .split(['-', '_'])
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            if name.is_empty() {
                name = "Task".into();
            }
            (format!("{name}Error"), "celeriac")
        }
    };
    json!({"exc_type": exc_type, "exc_message": [message], "exc_module": module})
}

/// What a Celery result record says.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    pub task_id: &'a str,
    pub state: TaskState,
    /// The result as JSON text, or an [`exception`].
    pub result: Cow<'a, str>,
    pub traceback: Option<&'a str>,
    pub group_id: Option<&'a str>,
    pub parent_id: Option<&'a str>,
}

impl Meta<'_> {
    /// The record as Celery's Redis backend stores it under
    /// `celery-task-meta-<id>` (and publishes on that channel).
    pub fn to_json(&self, now_ms: u64) -> String {
        let done = matches!(
            self.state,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        );
        let mut out = String::with_capacity(self.result.len() + 200);
        out.push_str("{\"status\":");
        out.push_str(&json_string(status(self.state)));
        // The task's JSON text as it came: never parsed and printed again.
        out.push_str(",\"result\":");
        out.push_str(&self.result);
        out.push_str(",\"traceback\":");
        out.push_str(&self.traceback.map_or("null".into(), json_string));
        out.push_str(",\"children\":[],\"date_done\":");
        if done {
            out.push_str(&json_string(&format_time(now_ms)));
        } else {
            out.push_str("null");
        }
        for (key, v) in [("group_id", self.group_id), ("parent_id", self.parent_id)] {
            if let Some(v) = v {
                out.push_str(&format!(",\"{key}\":{}", json_string(v)));
            }
        }
        out.push_str(",\"task_id\":");
        out.push_str(&json_string(self.task_id));
        out.push('}');
        out
    }
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// A Celery message to send: a canvas step this worker sets off.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub task_id: String,
    pub name: String,
    /// The queue the signature names, if it names one.
    pub queue: Option<String>,
    /// kombu's priority (0 first).
    pub priority: u8,
    pub envelope: String,
}

/// What every step sent by one completion shares.
#[derive(Debug, Clone)]
pub struct Sender<'a> {
    /// The task that finished (the new steps' parent).
    pub parent_id: &'a str,
    pub root_id: &'a str,
    pub reply_to: Option<&'a str>,
    pub priority: u8,
    /// `celeriac@host` (Celery's `origin` header).
    pub origin: &'a str,
    pub now_ms: u64,
}

/// The task id a signature will run as, if it fixed one.
pub fn signature_id(sig: &Value) -> Option<&str> {
    sig.get("options")?.get("task_id")?.as_str()
}

impl Sender<'_> {
    /// `sig` applied as Celery's `apply_async` would: `first` (the
    /// parent's result, or the failed task's id) before its own arguments
    /// unless it is immutable, `chain` the rest of a chain to carry on.
    pub fn send(
        &self,
        sig: &Value,
        first: Option<Value>,
        chain: &[Value],
    ) -> Result<Outbound, String> {
        let obj = sig.as_object().ok_or("a signature must be a JSON object")?;
        let name = obj
            .get("task")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= MAX_ID_LEN)
            .ok_or("a signature needs a task name")?;
        if let Some(kind) = obj.get("subtask_type").and_then(Value::as_str) {
            return Err(format!(
                "`{name}` is a {kind}: Celeriac workers carry on with plain task signatures only"
            ));
        }
        let empty = Map::new();
        let options = obj
            .get("options")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let text = |k: &str| options.get(k).and_then(Value::as_str);
        let task_id = text("task_id")
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        let mut args = match obj.get("args") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(format!("`{name}`'s args are not a list")),
        };
        let immutable = obj
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(first) = first.filter(|_| !immutable) {
            args.insert(0, first);
        }
        let kwargs = match obj.get("kwargs") {
            Some(Value::Object(k)) => Value::Object(k.clone()),
            None | Some(Value::Null) => json!({}),
            Some(_) => return Err(format!("`{name}`'s kwargs are not a mapping")),
        };
        let listed = |k: &str| match options.get(k) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::Array(a)) => Value::Array(a.clone()),
            Some(one) => Value::Array(vec![one.clone()]),
        };
        let embed = json!({
            "callbacks": listed("link"),
            "errbacks": listed("link_error"),
            "chain": if chain.is_empty() { Value::Null } else { Value::Array(chain.to_vec()) },
            "chord": options.get("chord").cloned().unwrap_or(Value::Null),
        });
        let secs = |k: &str| options.get(k).and_then(Value::as_f64);
        let at = |secs: f64| format_time(self.now_ms.saturating_add((secs.max(0.0) * 1e3) as u64));
        let eta = text("eta")
            .map(str::to_string)
            .or_else(|| secs("countdown").map(at));
        let expires = match options.get("expires") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => n.as_f64().map(at),
            _ => None,
        };
        let priority = options
            .get("priority")
            .and_then(Value::as_i64)
            .map_or(self.priority, |p| p.clamp(0, 9) as u8);
        let queue = text("queue").map(str::to_string);
        let body = json!([args, kwargs, embed]).to_string();
        let headers = json!({
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": null,
            "eta": eta,
            "expires": expires,
            "group": text("group_id"),
            "group_index": options.get("group_index").cloned().unwrap_or(Value::Null),
            "retries": 0,
            "timelimit": [secs("time_limit"), secs("soft_time_limit")],
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "argsrepr": Value::Array(args).to_string(),
            "kwargsrepr": kwargs.to_string(),
            "origin": self.origin,
            "ignore_result": options.get("ignore_result").and_then(Value::as_bool).unwrap_or(false),
            "replaced_task_nesting": 0,
            "stamped_headers": null,
            "stamps": {},
        });
        let envelope = json!({
            "body": BASE64.encode(body.as_bytes()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": text("reply_to").or(self.reply_to),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue.as_deref().unwrap_or("")},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": uuid::Uuid::new_v4().to_string(),
            },
        });
        Ok(Outbound {
            task_id,
            name: name.to_string(),
            queue,
            priority,
            envelope: envelope.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as Celery 5.7 sends `send_task('math.add', (2, 3),
    /// countdown=10, expires=60, time_limit=5, soft_time_limit=3,
    /// priority=4, ignore_result=True)` (captured from its producer).
    fn sent() -> String {
        let body =
            r#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        json!({
            "body": BASE64.encode(body),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": "math.add", "id": "d0e0b09b", "shadow": null,
                "eta": "2026-12-02T19:29:11.673637+00:00",
                "expires": "2026-12-02T19:30:01.673637+00:00",
                "group": null, "group_index": null, "retries": 0, "timelimit": [5, 3],
                "root_id": "d0e0b09b", "parent_id": null, "argsrepr": "(2, 3)",
                "kwargsrepr": "{}", "origin": "gen8054@vm", "ignore_result": true,
                "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
            },
            "properties": {
                "correlation_id": "d0e0b09b", "reply_to": "b0e27cc6", "delivery_mode": 2,
                "expiration": "60000",
                "delivery_info": {"exchange": "", "routing_key": "peekq"},
                "priority": 4, "body_encoding": "base64", "delivery_tag": "e8fb14bb"
            }
        })
        .to_string()
    }

    const NOW: u64 = 1_796_239_741_000; // 2026-12-02T19:29:01Z

    #[test]
    fn reads_what_celery_sends() {
        let raw = sent();
        assert!(is_envelope(&raw));
        assert!(!is_envelope(r#"{"v":1,"id":"x"}"#));
        let m = Inbound::parse(&raw, NOW).unwrap();
        assert_eq!((m.id.as_str(), m.name.as_str()), ("d0e0b09b", "math.add"));
        assert_eq!((m.args.get(), m.kwargs.get()), ("[2, 3]", "{}"));
        assert_eq!(m.eta, Some(1_796_239_751_673));
        assert_eq!(m.expires, Some(1_796_239_801_673));
        assert_eq!(
            (m.time_limit_ms, m.soft_time_limit_ms),
            (Some(5_000), Some(3_000))
        );
        assert!(m.ignore_result);
        assert_eq!(m.priority, 4);
        assert_eq!(m.embed, Embed::default());

        let digest = Digest::of(b"x");
        let t = m.to_message("math.add".into(), digest, "peekq", 3, Some(60));
        assert_eq!((t.priority, t.max_retries, t.retries), (5, 3, 0));
        assert_eq!(t.limits.timeout_ms, Some(5_000));
        assert_eq!(t.limits.soft_timeout_ms, Some(3_000));
        t.limits.check().unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_run_with_the_reason() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_str(&sent()).unwrap();
            f(&mut v);
            Inbound::parse(&v.to_string(), NOW).unwrap_err().to_string()
        };
        let e = with(&|v| v["content-type"] = "application/x-python-serialize".into());
        assert!(e.contains("Celeriac reads only JSON"), "{e}");
        let e = with(&|v| v["body"] = "%%%".into());
        assert!(e.contains("body is not base64"), "{e}");
        let e = with(&|v| v["headers"]["eta"] = "soon".into());
        assert!(e.contains("eta `soon` is not an ISO 8601 time"), "{e}");
        let e = with(&|v| v["headers"]["timelimit"] = json!([-1, null]));
        assert!(e.contains("time_limit -1 s is out of range"), "{e}");
        let e = with(&|v| v["headers"]["id"] = "x".repeat(300).into());
        assert!(e.contains("id must be 1 to 200 bytes"), "{e}");
        let e = with(&|v| {
            v["body"] = BASE64.encode(r#"[{"a":1}, {}, null]"#).into();
        });
        assert!(e.contains("args must be a JSON array"), "{e}");
        let e = Inbound::parse("{\"body\": 1}", NOW)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("malformed message: Celery message: "), "{e}");
    }

    #[test]
    fn times_round_trip_in_celerys_format() {
        assert_eq!(
            format_time(1_796_239_751_673),
            "2026-12-02T19:29:11.673000+00:00"
        );
        assert_eq!(
            parse_time("2026-12-02T19:29:11.673000+00:00"),
            Some(1_796_239_751_673)
        );
        // Naive times (Celery with enable_utc off) are read as UTC.
        assert_eq!(
            parse_time("2026-12-02T19:29:11.673"),
            Some(1_796_239_751_673)
        );
        assert_eq!(
            parse_time("2026-12-02T20:29:11+01:00"),
            Some(1_796_239_751_000)
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn a_retry_is_resent_with_one_more_retry_and_its_eta() {
        let again = retry_envelope(&sent(), 1, 1_796_239_751_673).unwrap();
        let m = Inbound::parse(&again, NOW).unwrap();
        assert_eq!((m.retries, m.eta), (1, Some(1_796_239_751_673)));
        assert_eq!(m.args.get(), "[2, 3]");
    }

    #[test]
    fn records_are_what_the_redis_backend_writes() {
        let meta = Meta {
            task_id: "t1",
            state: TaskState::Success,
            result: Cow::Borrowed("5"),
            traceback: None,
            group_id: Some("g"),
            parent_id: None,
        };
        let v: Value = serde_json::from_str(&meta.to_json(NOW)).unwrap();
        assert_eq!(
            v,
            json!({"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
                   "date_done": "2026-12-02T19:29:01.000000+00:00", "group_id": "g",
                   "task_id": "t1"})
        );
        let retry = Meta {
            state: TaskState::Retry,
            ..meta
        };
        let v: Value = serde_json::from_str(&retry.to_json(NOW)).unwrap();
        assert_eq!(v["date_done"], Value::Null);

        assert_eq!(
            exception("fuel-exhausted", "out of fuel"),
            json!({"exc_type": "FuelExhaustedError", "exc_message": ["out of fuel"], "exc_module": "celeriac"})
        );
        assert_eq!(
            exception("time-limit", "x")["exc_module"],
            "celery.exceptions"
        );
    }

    #[test]
    fn the_next_step_is_sent_as_apply_async_would() {
        let sender = Sender {
            parent_id: "p",
            root_id: "r",
            reply_to: Some("reply"),
            priority: 0,
            origin: "celeriac@h",
            now_ms: NOW,
        };
        let next = json!({"task": "math.add", "args": [4], "kwargs": {},
            "options": {"task_id": "n1", "link_error": {"task": "math.fatal", "args": ["x"]}, "countdown": 2},
            "subtask_type": null, "immutable": false});
        let rest = vec![json!({"task": "math.mul", "args": [3]})];
        let out = sender.send(&next, Some(json!(4)), &rest).unwrap();
        assert_eq!(
            (out.task_id.as_str(), out.name.as_str(), out.queue),
            ("n1", "math.add", None)
        );
        let m = Inbound::parse(&out.envelope, NOW).unwrap();
        assert_eq!((m.id.as_str(), m.args.get()), ("n1", "[4,4]"));
        assert_eq!(
            (m.parent_id.as_deref(), m.root_id.as_deref()),
            (Some("p"), Some("r"))
        );
        assert_eq!(m.eta, Some(NOW + 2_000));
        assert_eq!(m.embed.chain, rest);
        assert_eq!(m.embed.errbacks[0]["task"], "math.fatal");
        assert_eq!(m.reply_to.as_deref(), Some("reply"));

        // Immutable signatures keep their own arguments; canvas types other
        // than a plain task are refused with the reason.
        let frozen = json!({"task": "math.add", "args": [1, 2], "immutable": true});
        let m = Inbound::parse(
            &sender.send(&frozen, Some(json!(4)), &[]).unwrap().envelope,
            NOW,
        )
        .unwrap();
        assert_eq!(m.args.get(), "[1,2]");
        let group = json!({"task": "celery.group", "subtask_type": "group"});
        assert!(
            sender
                .send(&group, None, &[])
                .unwrap_err()
                .contains("is a group")
        );
    }
}
