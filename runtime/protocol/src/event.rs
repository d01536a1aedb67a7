//! Events: one small JSON object per state change of a task or a worker,
//! appended to a capped stream for `celeriac events`, the HTTP API's
//! Server-Sent Events and the console. Observability only: nothing
//! decides anything from them, so they are bounded and may be turned off.

use serde::{Deserialize, Serialize};

use crate::text::clip;

/// Longest error text an event carries (the full one is in the record).
pub const MAX_EVENT_ERROR_BYTES: usize = 500;
/// Longest argument text an event carries.
pub const MAX_EVENT_ARGS_BYTES: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Put on a queue by a producer (or a workflow step launched).
    Sent,
    /// Taken by a worker and admitted.
    Received,
    /// Its run began.
    Started,
    Succeeded,
    /// Ran and failed for good (its message is dead-lettered too).
    Failed,
    /// Failed and will run again.
    Retried,
    /// Not run (revoked or expired), or stopped by a revoke.
    Revoked,
    /// Refused without running (malformed, untrusted, over limits).
    Rejected,
    /// Moved to its queue's dead-letter queue.
    DeadLettered,
    WorkerOnline,
    WorkerHeartbeat,
    WorkerOffline,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Sent,
        EventKind::Received,
        EventKind::Started,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Retried,
        EventKind::Revoked,
        EventKind::Rejected,
        EventKind::DeadLettered,
        EventKind::WorkerOnline,
        EventKind::WorkerHeartbeat,
        EventKind::WorkerOffline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sent => "sent",
            EventKind::Received => "received",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Retried => "retried",
            EventKind::Revoked => "revoked",
            EventKind::Rejected => "rejected",
            EventKind::DeadLettered => "dead-lettered",
            EventKind::WorkerOnline => "worker-online",
            EventKind::WorkerHeartbeat => "worker-heartbeat",
            EventKind::WorkerOffline => "worker-offline",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown event type `{s}`: expected one of {}",
                    names.join(", ")
                )
            })
    }

    pub fn is_worker(self) -> bool {
        matches!(
            self,
            EventKind::WorkerOnline | EventKind::WorkerHeartbeat | EventKind::WorkerOffline
        )
    }
}

/// One event. Fields that do not apply are absent from its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the stream (set when read back, never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Unix milliseconds.
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// `module.task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Sent and received: the arguments as JSON text, clipped to
    /// [`MAX_EVENT_ARGS_BYTES`] (as Celery's events carry a repr of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<String>,
    /// Why it failed, was refused or dead-lettered (one line, clipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// Submitted to finished (succeeded, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Worker events: slots in use, tasks run, slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl Event {
    /// An event with only its kind and time set.
    pub fn new(kind: EventKind, at: u64) -> Self {
        Self {
            id: None,
            kind,
            at,
            task_id: None,
            task: None,
            digest: None,
            queue: None,
            worker: None,
            runtime_ms: None,
            fuel: None,
            retries: None,
            args: None,
            kwargs: None,
            error: None,
            root_id: None,
            latency_ms: None,
            busy: None,
            processed: None,
            concurrency: None,
        }
    }

    /// An event about the task `msg` (its id, name, digest, queue,
    /// retries and workflow).
    pub fn of_task(kind: EventKind, msg: &crate::TaskMessage, now: u64) -> Self {
        Self {
            task_id: Some(msg.id.clone()),
            task: Some(msg.task.clone()),
            digest: Some(msg.digest.to_string()),
            queue: Some(msg.queue.clone()),
            retries: Some(msg.retries),
            root_id: msg.root_id.clone(),
            ..Self::new(kind, now)
        }
    }

    /// `msg` put on its queue.
    pub fn sent(msg: &crate::TaskMessage, now: u64) -> Self {
        Self::of_task(EventKind::Sent, msg, now).with_args(msg)
    }

    /// With `msg`'s arguments (clipped; kwargs only when there are some).
    pub fn with_args(mut self, msg: &crate::TaskMessage) -> Self {
        self.args = Some(clip(msg.args.get(), MAX_EVENT_ARGS_BYTES));
        let kwargs = msg.kwargs.get();
        if kwargs != "{}" {
            self.kwargs = Some(clip(kwargs, MAX_EVENT_ARGS_BYTES));
        }
        self
    }

    /// With an error, flattened to one line and clipped.
    pub fn with_error(mut self, error: &str) -> Self {
        let line = error.split_whitespace().collect::<Vec<_>>().join(" ");
        self.error = Some(clip(&line, MAX_EVENT_ERROR_BYTES));
        self
    }

    pub fn to_json(&self) -> String {
        // Strings and numbers only.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read one stored event; its stream id is set from `id`.
    pub fn from_stored(id: &str, json: &str) -> Result<Self, String> {
        let mut e: Event =
            serde_json::from_str(json).map_err(|e| format!("event {id} is not valid: {e}"))?;
        e.id = Some(id.to_string());
        Ok(e)
    }

    /// The events of one stream entry: one event, or a batch (a JSON
    /// array, see [`batch`]) whose events get ids `<entry id>.<index>`.
    /// An entry that does not read is skipped whole.
    pub fn decode_stored(id: &str, json: &str) -> Vec<Self> {
        if !json.trim_start().starts_with('[') {
            return Self::from_stored(id, json).into_iter().collect();
        }
        let Ok(events) = serde_json::from_str::<Vec<Event>>(json) else {
            return Vec::new();
        };
        events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.id = Some(format!("{id}.{i}"));
                e
            })
            .collect()
    }
}

/// Events (JSON objects) as one stream entry: recording a task's events,
/// or a batch's, costs one append instead of one per event.
pub fn batch(events: &[String]) -> String {
    match events {
        [one] => one.clone(),
        many => format!("[{}]", many.join(",")),
    }
}

/// Where an event id (`<ms>-<seq>` or `<ms>-<seq>.<index>`) sits in the
/// stream, for ordering; `(0, 0, 0)` for anything else.
pub fn position(id: &str) -> (u64, u64, u64) {
    let (entry, index) = id.split_once('.').unwrap_or((id, "0"));
    let (ms, seq) = entry.split_once('-').unwrap_or((entry, "0"));
    match (ms.parse(), seq.parse(), index.parse()) {
        (Ok(ms), Ok(seq), Ok(i)) => (ms, seq, i),
        _ => (0, 0, 0),
    }
}

/// The stream id just before the entry holding event `id`: reading after
/// it reads that entry again (for a reader resuming part way through it).
pub fn entry_before(id: &str) -> String {
    match position(id) {
        (0, 0, _) => "0-0".to_string(),
        (ms, 0, _) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq, _) => format!("{ms}-{}", seq - 1),
    }
}

impl Event {
    /// One line for a terminal: time, type, task, id and what applies.
    pub fn line(&self) -> String {
        let at = chrono::DateTime::from_timestamp_millis(self.at as i64)
            .map(|t| t.format("%H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let mut out = format!("{at} {:<16}", self.kind.as_str());
        let mut push = |k: &str, v: String| {
            out.push(' ');
            if !k.is_empty() {
                out.push_str(k);
                out.push('=');
            }
            out.push_str(&v);
        };
        if let Some(t) = &self.task {
            push("", t.clone());
        }
        if let Some(id) = &self.task_id {
            push("", id.clone());
        }
        if let Some(q) = &self.queue {
            push("queue", q.clone());
        }
        if let Some(w) = &self.worker {
            push("worker", w.clone());
        }
        if let Some(r) = self.retries.filter(|r| *r > 0) {
            push("retries", r.to_string());
        }
        if let Some(ms) = self.runtime_ms {
            push("runtime", format!("{ms:.2}ms"));
        }
        if let Some(f) = self.fuel {
            push("fuel", f.to_string());
        }
        if let (Some(b), Some(c)) = (self.busy, self.concurrency) {
            push("busy", format!("{b}/{c}"));
        }
        if let Some(p) = self.processed {
            push("processed", p.to_string());
        }
        if let Some(e) = &self.error {
            push("error", format!("{e:?}"));
        }
        out
    }
}

/// Which events to show: all given conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// A task id, a task name, or a module name (`math` matches `math.*`).
    pub task: Option<String>,
    /// Any of these types (empty: every type).
    pub kinds: Vec<EventKind>,
    pub queue: Option<String>,
    /// Leave out worker events (online, heartbeat, offline).
    pub tasks_only: bool,
}

impl EventFilter {
    /// Types from a comma-separated list (`failed,retried`).
    pub fn parse_kinds(list: &str) -> Result<Vec<EventKind>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(EventKind::parse)
            .collect()
    }

    pub fn matches(&self, e: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if self.tasks_only && e.kind.is_worker() {
            return false;
        }
        if let Some(q) = &self.queue
            && e.queue.as_deref() != Some(q)
        {
            return false;
        }
        if let Some(t) = &self.task {
            let name = e.task.as_deref().unwrap_or("");
            let module = name.rsplit_once('.').map_or("", |(m, _)| m);
            if e.task_id.as_deref() != Some(t) && name != t && module != t {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_event(kind: EventKind) -> Event {
        Event {
            task_id: Some("abc".into()),
            task: Some("math.add".into()),
            queue: Some("default".into()),
            ..Event::new(kind, 1_764_000_000_000)
        }
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let e = EventKind::parse("done").unwrap_err();
        assert!(e.contains("unknown event type `done`") && e.contains("dead-lettered"));
    }

    #[test]
    fn stored_events_leave_out_what_does_not_apply() {
        let e = task_event(EventKind::Succeeded);
        let json = e.to_json();
        assert!(!json.contains("null") && !json.contains("\"id\""), "{json}");
        let back = Event::from_stored("1-0", &json).unwrap();
        assert_eq!(back.id.as_deref(), Some("1-0"));
        assert_eq!(back.task_id, e.task_id);
        assert!(
            Event::from_stored("2-0", "{\"type\":\"nope\"}")
                .unwrap_err()
                .contains("event 2-0")
        );
    }

    #[test]
    fn errors_are_one_clipped_line() {
        let e = Event::new(EventKind::Failed, 0).with_error(&format!("a\nb {}", "x".repeat(900)));
        let err = e.error.unwrap();
        assert!(err.starts_with("a b ") && !err.contains('\n'));
        assert!(err.len() < MAX_EVENT_ERROR_BYTES + 40, "{}", err.len());
    }

    #[test]
    fn filters_by_task_id_name_module_type_and_queue() {
        let e = task_event(EventKind::Failed);
        let f = |task: Option<&str>, kinds: &str, queue: Option<&str>| EventFilter {
            task: task.map(str::to_string),
            kinds: EventFilter::parse_kinds(kinds).unwrap(),
            queue: queue.map(str::to_string),
            tasks_only: false,
        };
        assert!(f(None, "", None).matches(&e));
        assert!(f(Some("abc"), "", None).matches(&e));
        assert!(f(Some("math.add"), "", None).matches(&e));
        assert!(f(Some("math"), "", None).matches(&e));
        assert!(!f(Some("mat"), "", None).matches(&e));
        assert!(!f(Some("text.upper"), "", None).matches(&e));
        assert!(f(None, "failed, retried", None).matches(&e));
        assert!(!f(None, "succeeded", None).matches(&e));
        assert!(f(None, "", Some("default")).matches(&e));
        assert!(!f(None, "", Some("other")).matches(&e));
        let worker = Event::new(EventKind::WorkerHeartbeat, 0);
        assert!(!f(None, "", Some("default")).matches(&worker));
        assert!(
            !EventFilter {
                tasks_only: true,
                ..Default::default()
            }
            .matches(&worker)
        );
    }

    #[test]
    fn batches_are_one_entry_with_an_id_per_event() {
        let a = task_event(EventKind::Received).to_json();
        let b = task_event(EventKind::Succeeded).to_json();
        assert_eq!(batch(std::slice::from_ref(&a)), a);
        let both = batch(&[a, b]);
        let events = Event::decode_stored("5-1", &both);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].kind, EventKind::Succeeded);
        assert_eq!(events[0].id.as_deref(), Some("5-1.0"));
        assert_eq!(events[1].id.as_deref(), Some("5-1.1"));
        assert_eq!(Event::decode_stored("5-2", "[{\"type\":1}]"), vec![]);
        assert_eq!(
            Event::decode_stored("5-3", &task_event(EventKind::Sent).to_json()).len(),
            1
        );
    }

    #[test]
    fn positions_order_events_and_resume_an_entry() {
        assert!(position("1700-10") > position("1700-9"));
        assert!(position("1701-0") > position("1700-99.4"));
        assert!(position("1700-9.2") > position("1700-9.1"));
        assert!(position("1700-9") < position("1700-9.1"));
        assert_eq!(position("junk"), (0, 0, 0));
        assert_eq!(entry_before("1700-9.3"), "1700-8");
        assert_eq!(entry_before("1700-0"), format!("1699-{}", u64::MAX));
        assert_eq!(entry_before("junk"), "0-0");
    }

    #[test]
    fn a_line_names_what_happened() {
        let e = Event {
            runtime_ms: Some(1.5),
            fuel: Some(42),
            worker: Some("w1".into()),
            ..task_event(EventKind::Succeeded)
        };
        let line = e.line();
        assert!(line.contains("succeeded"), "{line}");
        for part in [
            "math.add",
            "abc",
            "queue=default",
            "worker=w1",
            "runtime=1.50ms",
            "fuel=42",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
    }
}
