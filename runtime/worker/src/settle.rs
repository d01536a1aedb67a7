//! What becomes of a delivery: the record to store and the message's fate.
//! Pure: it reads the message, what happened to it and the worker's
//! configuration, with no broker and no clock beyond the `now` given, so
//! every disposition is unit-tested here.
//!
//! Everything a task can make the worker store is bounded here: the result
//! (`max_result_bytes`), the failure message and the dead-letter reason
//! (`max_error_bytes`). Over the limit is a FAILURE with a one-line cause,
//! never a write Redis refuses.

use std::time::Duration;

use celeriac_broker::{Completion, Delivery, Disposition, Effects, ResultWrite};
use celeriac_protocol::bounds::MAX_RESULT_TTL_SECS;
use celeriac_protocol::clock::millis;
use celeriac_protocol::message::TaskMessage;
use celeriac_protocol::record::{ErrorInfo, RecordLimits, ResultRecord, TaskState};
use celeriac_protocol::text::clip;
use celeriac_protocol::units::format_size;
use celeriac_sandbox::{FailureKind, Limits, TaskError};
use serde_json::value::RawValue;

use crate::WorkerConfig;
use crate::components::LoadError;

/// A record as the worker writes it: the result is the task's JSON text,
/// checked but never parsed into a tree.
pub(crate) type Record = ResultRecord<Box<RawValue>>;

/// A settled delivery: the record to store (if any) and the message's fate.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub record: Option<Record>,
    pub disposition: Disposition,
}

impl Verdict {
    /// The outcome to count in metrics.
    pub fn label(&self) -> &'static str {
        match (&self.record, &self.disposition) {
            (_, Disposition::Requeue) => "REQUEUED",
            // Early (its eta not reached): back to wait in the broker.
            (None, Disposition::Retry { .. }) => "DELAYED",
            (Some(r), _) => match r.state {
                TaskState::Success => "SUCCESS",
                TaskState::Retry => "RETRY",
                TaskState::Revoked => "REVOKED",
                _ => "FAILURE",
            },
            (None, Disposition::DeadLetter { .. }) => "DEAD",
            // A task whose record is not kept (ignore_result) that succeeded.
            (None, Disposition::Ack) => "SUCCESS",
        }
    }

    fn requeue() -> Self {
        Verdict {
            record: None,
            disposition: Disposition::Requeue,
        }
    }
}

/// The record of `msg` in `state`, stamped by this worker at `now`.
pub(crate) fn record(
    msg: &TaskMessage,
    state: TaskState,
    config: &WorkerConfig,
    now: u64,
) -> Record {
    ResultRecord {
        task: msg.task.clone(),
        retries: msg.retries,
        submitted_at: msg.submitted_at,
        state,
        root_id: msg.root_id.clone(),
        parent_id: msg.parent_id.clone(),
        ..anonymous_record(msg.id.clone(), &msg.queue, config, now)
    }
}

/// A record for a message that could not be read: only its id is known.
pub(crate) fn anonymous_record(id: String, queue: &str, config: &WorkerConfig, now: u64) -> Record {
    ResultRecord {
        id,
        task: String::new(),
        state: TaskState::Failure,
        result: None,
        error: None,
        retries: 0,
        runtime_ms: 0.0,
        fuel: None,
        worker: config.id.clone(),
        queue: queue.to_string(),
        submitted_at: 0,
        started_at: None,
        finished_at: Some(now),
        retry_at: None,
        limits: None,
        root_id: None,
        parent_id: None,
        fresh: None,
        instance_use: None,
    }
}

/// A task that will not run: FAILURE (kind, reason) and a dead letter.
pub(crate) fn refuse(
    mut record: Record,
    kind: &str,
    reason: &str,
    config: &WorkerConfig,
) -> Verdict {
    let reason = clip(reason, config.max_error_bytes);
    record.state = TaskState::Failure;
    record.error = Some(ErrorInfo {
        kind: kind.into(),
        message: reason.clone(),
    });
    Verdict {
        record: Some(record),
        disposition: Disposition::DeadLetter {
            reason,
            payload: None,
        },
    }
}

/// As [`refuse`], for a message that may not even have an id to record.
pub(crate) fn refuse_unread(
    record: Option<Record>,
    kind: &str,
    reason: &str,
    config: &WorkerConfig,
) -> Verdict {
    match record {
        Some(r) => refuse(r, kind, reason, config),
        None => Verdict {
            record: None,
            disposition: Disposition::DeadLetter {
                reason: clip(reason, config.max_error_bytes),
                payload: None,
            },
        },
    }
}

/// The limits a message runs under: what it asks for, never more than the
/// worker's (its defaults when it asks for nothing).
pub(crate) fn effective_limits(ceiling: &Limits, msg: &TaskMessage) -> Limits {
    let asked = &msg.limits;
    let timeout = asked
        .timeout_ms
        .map(Duration::from_millis)
        .map_or(ceiling.timeout, |t| t.min(ceiling.timeout));
    Limits {
        timeout,
        soft_timeout: asked
            .soft_timeout_ms
            .map(Duration::from_millis)
            .or(ceiling.soft_timeout)
            .filter(|s| *s < timeout),
        fuel: asked.fuel.map_or(ceiling.fuel, |f| f.min(ceiling.fuel)),
        memory: asked
            .memory
            .map_or(ceiling.memory, |m| m.min(ceiling.memory)),
    }
}

/// Revoked (before it ran, or stopped while running): REVOKED, acked.
pub(crate) fn revoked(msg: &TaskMessage, why: &str, config: &WorkerConfig, now: u64) -> Verdict {
    let mut record = record(msg, TaskState::Revoked, config, now);
    record.error = Some(ErrorInfo {
        kind: "revoked".into(),
        message: why.into(),
    });
    Verdict {
        record: Some(record),
        disposition: Disposition::Ack,
    }
}

/// Not yet (a rate limit): back to wait in the broker until `due_ms`,
/// unchanged, with no record.
pub(crate) fn delayed(msg: &TaskMessage, due_ms: u64) -> Verdict {
    Verdict {
        record: None,
        disposition: Disposition::Retry {
            payload: msg.to_json(),
            due_ms,
        },
    }
}

/// The component a message pins could not be had.
pub(crate) fn unresolved(
    msg: &TaskMessage,
    error: &LoadError,
    config: &WorkerConfig,
    now: u64,
) -> Verdict {
    match error {
        // The broker hiccuped: let another attempt (or worker) try.
        LoadError::Transient(_) => Verdict::requeue(),
        // Missing, tampered, untrusted, signed for another module, or not
        // a component: it never will run.
        LoadError::Refused(reason) => refuse(
            record(msg, TaskState::Failure, config, now),
            "refused",
            reason,
            config,
        ),
    }
}

/// What a run of the task gave.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The task's JSON result, or why there is none.
    pub outcome: Result<String, TaskError>,
    pub elapsed: Duration,
    pub fuel: Option<u64>,
    /// The limits it ran under.
    pub limits: Limits,
    /// Unix milliseconds.
    pub started_at: u64,
    /// 1: a fresh instance; n: the n-th task of a reused one; 0: none ran.
    pub instance_use: u32,
}

/// Settle a task that ran; `now` dates the record and a retry.
pub(crate) fn ran(msg: &TaskMessage, run: Ran, config: &WorkerConfig, now: u64) -> Verdict {
    let mut record = Record {
        runtime_ms: run.elapsed.as_secs_f64() * 1e3,
        fuel: run.fuel,
        started_at: Some(run.started_at),
        limits: Some(RecordLimits {
            timeout_ms: millis(run.limits.timeout),
            soft_timeout_ms: run.limits.soft_timeout.map(millis),
            fuel: run.limits.fuel,
            memory: run.limits.memory,
        }),
        fresh: (run.instance_use > 0).then_some(run.instance_use == 1),
        instance_use: (run.instance_use > 1).then_some(run.instance_use),
        ..record(msg, TaskState::Started, config, now)
    };
    let json = match run.outcome {
        Ok(json) => json,
        // Not the task's doing (out of instance slots): try again.
        Err(TaskError::Busy(_)) => return Verdict::requeue(),
        Err(e) => return failed(msg, &e, record, config, now),
    };
    if json.len() > config.max_result_bytes {
        let reason = format!(
            "result too large: {}, limit {}",
            format_size(json.len() as u64),
            format_size(config.max_result_bytes as u64)
        );
        return refuse(record, "result-too-large", &reason, config);
    }
    // Checked to be one JSON value, and kept as the text it is.
    match RawValue::from_string(json) {
        Ok(value) => {
            record.state = TaskState::Success;
            record.result = Some(value);
            Verdict {
                record: Some(record),
                disposition: Disposition::Ack,
            }
        }
        Err(e) => refuse(
            record,
            "fatal",
            &format!("task returned invalid JSON: {e}"),
            config,
        ),
    }
}

fn failed(
    msg: &TaskMessage,
    e: &TaskError,
    mut record: Record,
    config: &WorkerConfig,
    now: u64,
) -> Verdict {
    let (kind, retry_after) = error_kind(e);
    if e.is_retryable() && msg.retries < msg.max_retries {
        let backoff = config.backoff;
        let delay = retry_after
            .unwrap_or_else(|| backoff.delay(msg.retries))
            .min(backoff.max.max(Duration::from_secs(1)));
        let due_ms = now.saturating_add(millis(delay));
        let mut next = msg.clone();
        next.retries += 1;
        next.eta = None;
        record.state = TaskState::Retry;
        record.retry_at = Some(due_ms);
        record.error = Some(ErrorInfo {
            kind: kind.into(),
            message: clip(&e.to_string(), config.max_error_bytes),
        });
        return Verdict {
            record: Some(record),
            disposition: Disposition::Retry {
                payload: next.to_json(),
                due_ms,
            },
        };
    }
    let reason = if e.is_retryable() {
        format!("{e} (gave up after {} retries)", msg.retries)
    } else {
        e.to_string()
    };
    refuse(record, kind, &reason, config)
}

/// The `kind` stored in a failed record, and a retry delay the task asked for.
pub(crate) fn error_kind(e: &TaskError) -> (&'static str, Option<Duration>) {
    match e {
        TaskError::Failed {
            kind, retry_after, ..
        } => (
            match kind {
                FailureKind::Retry => "retry",
                FailureKind::Fatal => "fatal",
                FailureKind::InvalidInput => "invalid-input",
            },
            *retry_after,
        ),
        TaskError::TimeLimit { .. } => ("time-limit", None),
        TaskError::FuelExhausted { .. } => ("fuel-exhausted", None),
        TaskError::MemoryLimit { .. } => ("memory-limit", None),
        TaskError::Trap(_) => ("trap", None),
        TaskError::Exited { .. } => ("exit", None),
        TaskError::Host(_) => ("host", None),
        TaskError::Busy(_) => ("busy", None),
    }
}

/// A record to store, with its expiry: the message's, else the worker's.
pub(crate) fn result_write<R: serde::Serialize>(
    record: &ResultRecord<R>,
    ttl_secs: Option<u64>,
    config: &WorkerConfig,
) -> ResultWrite {
    ResultWrite {
        task_id: record.id.clone(),
        json: record.to_json(),
        // Validated on parse; capped again so no record can ask Redis for
        // an expiry it refuses.
        ttl: ttl_secs
            .map(|s| Duration::from_secs(s.clamp(1, MAX_RESULT_TTL_SECS)))
            .unwrap_or(config.result_ttl),
    }
}

/// The completion to hand the broker for `delivery`: the verdict's record
/// (unless the message asked for none) and its disposition. `msg` is the
/// message as read, when it could be.
pub(crate) fn completion(
    delivery: &Delivery,
    verdict: Verdict,
    msg: Option<&TaskMessage>,
    config: &WorkerConfig,
    effects: Effects,
) -> Completion {
    let (ttl, ignore) = msg.map_or((None, false), |m| (m.result_ttl, m.ignore_result));
    let result = verdict
        .record
        .filter(|_| !ignore)
        .map(|r| result_write(&r, ttl, config));
    let mut c = of_delivery(delivery, result, verdict.disposition);
    c.effects = effects;
    c
}

/// Done with no record of its own, setting off `effects` (a group's join).
pub(crate) fn acked_with(delivery: &Delivery, effects: Effects) -> Completion {
    with_effects(delivery, Disposition::Ack, effects)
}

/// Disposed of as `disposition`, with no Celeriac record, setting off
/// `effects` (a Celery message's completion).
pub(crate) fn with_effects(
    delivery: &Delivery,
    disposition: Disposition,
    effects: Effects,
) -> Completion {
    let mut c = of_delivery(delivery, None, disposition);
    c.effects = effects;
    c
}

/// Hand a delivery back untouched (shutdown, or not started in time).
pub(crate) fn requeue(delivery: &Delivery) -> Completion {
    of_delivery(delivery, None, Disposition::Requeue)
}

fn of_delivery(
    delivery: &Delivery,
    result: Option<ResultWrite>,
    disposition: Disposition,
) -> Completion {
    Completion {
        queue: delivery.queue.clone(),
        delivery_id: delivery.id.clone(),
        payload: delivery.payload.clone(),
        result,
        disposition,
        lease_fresh: false,
        effects: Effects::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use celeriac_protocol::{Backoff, Digest, MessageLimits};

    pub(crate) fn msg(retries: u32, max_retries: u32) -> TaskMessage {
        let json = serde_json::json!({
            "v": 1, "id": "t1", "task": "m.t", "digest": Digest::of(b"x"),
            "args": [1, 2], "queue": "q", "retries": retries,
            "max_retries": max_retries, "eta": 5, "submitted_at": 0,
        });
        TaskMessage::parse(&json.to_string(), 0).expect("a valid message")
    }

    pub(crate) fn config() -> WorkerConfig {
        WorkerConfig {
            id: "w".into(),
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: false,
            },
            max_result_bytes: 100,
            max_error_bytes: 40,
            result_ttl: Duration::from_secs(3600),
            ..WorkerConfig::default()
        }
    }

    fn run(outcome: Result<String, TaskError>) -> Ran {
        Ran {
            outcome,
            elapsed: Duration::from_millis(2),
            fuel: Some(77),
            limits: Limits {
                timeout: Duration::from_secs(5),
                soft_timeout: Some(Duration::from_secs(1)),
                fuel: 1_000,
                memory: 1 << 20,
            },
            started_at: 10,
            instance_use: 1,
        }
    }

    pub(crate) fn settle(
        msg: &TaskMessage,
        outcome: Result<String, TaskError>,
        now: u64,
    ) -> Verdict {
        ran(msg, run(outcome), &config(), now)
    }

    pub(crate) fn failed(kind: FailureKind, message: &str) -> TaskError {
        TaskError::Failed {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn error(v: &Verdict) -> ErrorInfo {
        v.record
            .as_ref()
            .and_then(|r| r.error.clone())
            .expect("a record with an error")
    }

    pub(crate) fn dead_reason(v: &Verdict) -> &str {
        match &v.disposition {
            Disposition::DeadLetter { reason, .. } => reason,
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    fn delivery() -> Delivery {
        Delivery::new("q", "1-0".into(), msg(0, 3).to_json(), 1)
    }

    #[test]
    fn success_stores_the_value_as_returned_and_acks() {
        let v = settle(&msg(0, 3), Ok("[1, 2]".into()), 50);
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.state, TaskState::Success);
        assert_eq!(r.result.as_ref().map(|j| j.get()), Some("[1, 2]"));
        assert_eq!(
            (r.runtime_ms, r.fuel, r.started_at),
            (2.0, Some(77), Some(10))
        );
        assert_eq!((r.finished_at, r.worker.as_str()), (Some(50), "w"));
        let limits = r.limits.as_ref().unwrap();
        assert_eq!(
            (limits.timeout_ms, limits.soft_timeout_ms, limits.fuel),
            (5_000, Some(1_000), 1_000)
        );
        assert!(matches!(v.disposition, Disposition::Ack));
        assert_eq!(v.label(), "SUCCESS");
        // Readers see the same record with the value parsed.
        let back: ResultRecord = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back.result, Some(serde_json::json!([1, 2])));
        assert_eq!((r.fresh, r.instance_use), (Some(true), None));
    }

    #[test]
    fn the_record_says_whether_the_instance_was_fresh() {
        let reused = Ran {
            instance_use: 3,
            ..run(Ok("1".into()))
        };
        let v = ran(&msg(0, 3), reused, &config(), 50);
        let r = v.record.as_ref().unwrap();
        assert_eq!((r.fresh, r.instance_use), (Some(false), Some(3)));
        let json = r.to_json();
        assert!(json.contains(r#""fresh":false,"instance_use":3"#), "{json}");
        // Nothing ran (refused before the sandbox): neither is claimed.
        let none = Ran {
            instance_use: 0,
            ..run(Err(failed(FailureKind::Fatal, "no")))
        };
        let r = ran(&msg(0, 0), none, &config(), 50).record.unwrap();
        assert_eq!((r.fresh, r.instance_use), (None, None));
    }

    #[test]
    fn results_over_the_limit_fail_with_a_one_line_cause() {
        let big = format!("\"{}\"", "x".repeat(200));
        let v = settle(&msg(0, 3), Ok(big), 0);
        let e = error(&v);
        assert_eq!(e.kind, "result-too-large");
        assert_eq!(e.message, "result too large: 202 B, limit 100 B");
        assert_eq!(dead_reason(&v), e.message);
    }

    #[test]
    fn invalid_json_is_fatal() {
        for bad in ["{nope", "1 2", ""] {
            let v = settle(&msg(0, 3), Ok(bad.into()), 0);
            let e = error(&v);
            assert_eq!(e.kind, "fatal", "{bad}");
            assert!(e.message.starts_with("task returned invalid JSON"), "{bad}");
            dead_reason(&v);
        }
    }

    #[test]
    fn retry_failures_back_off_then_give_up() {
        let e = failed(FailureKind::Retry, "busy");
        let v = settle(&msg(1, 3), Err(e.clone()), 1_000);
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.state, TaskState::Retry);
        // base 1 s doubled once, no jitter.
        assert_eq!(r.retry_at, Some(3_000));
        assert_eq!(error(&v).kind, "retry");
        assert_eq!(v.label(), "RETRY");
        let Disposition::Retry { payload, due_ms } = &v.disposition else {
            panic!("{:?}", v.disposition)
        };
        assert_eq!(*due_ms, 3_000);
        let next = TaskMessage::parse(payload, 0).unwrap();
        assert_eq!((next.retries, next.eta), (2, None));
        // Arguments go on as they came.
        assert_eq!(next.args.get(), "[1,2]");

        // The last retry: a FAILURE that says it gave up, dead-lettered.
        let last = settle(&msg(3, 3), Err(e), 0);
        assert_eq!(last.record.as_ref().unwrap().state, TaskState::Failure);
        assert_eq!(dead_reason(&last), "retry: busy (gave up after 3 retries)");
        assert_eq!(last.label(), "FAILURE");
    }

    #[test]
    fn a_delay_the_task_asks_for_wins_but_is_capped() {
        let asked = |secs| TaskError::Failed {
            kind: FailureKind::Retry,
            message: "later".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        let v = settle(&msg(0, 3), Err(asked(7)), 0);
        assert_eq!(v.record.unwrap().retry_at, Some(7_000));
        let v = settle(&msg(0, 3), Err(asked(3600)), 0);
        assert_eq!(v.record.unwrap().retry_at, Some(60_000));
    }

    #[test]
    fn traps_retry_limits_and_fatal_failures_do_not() {
        let trap = TaskError::Trap("unreachable".into());
        let v = settle(&msg(0, 1), Err(trap), 0);
        assert!(matches!(v.disposition, Disposition::Retry { .. }));
        assert_eq!(error(&v).kind, "trap");
        for (e, kind) in [
            (failed(FailureKind::Fatal, "no"), "fatal"),
            (failed(FailureKind::InvalidInput, "bad"), "invalid-input"),
            (
                TaskError::TimeLimit {
                    limit: Duration::from_secs(1),
                },
                "time-limit",
            ),
            (TaskError::FuelExhausted { fuel: 5 }, "fuel-exhausted"),
            (TaskError::MemoryLimit { limit: 1 << 20 }, "memory-limit"),
            (TaskError::Exited { status: 3 }, "exit"),
            (
                TaskError::Host("host refused the task: too big".into()),
                "host",
            ),
        ] {
            let v = settle(&msg(0, 3), Err(e.clone()), 0);
            assert_eq!(error(&v).kind, kind);
            assert_eq!(error(&v).message, e.to_string());
            assert_eq!(v.label(), "FAILURE");
            assert_eq!(dead_reason(&v), e.to_string());
        }
    }

    #[test]
    fn host_trouble_hands_the_message_back_without_a_record() {
        let v = settle(&msg(0, 3), Err(TaskError::Busy("out of slots".into())), 0);
        assert!(v.record.is_none());
        assert!(matches!(v.disposition, Disposition::Requeue));
        assert_eq!(v.label(), "REQUEUED");
    }

    #[test]
    fn long_failure_messages_are_clipped_everywhere() {
        let huge = "\u{1}".repeat(10_000);
        let v = settle(&msg(0, 0), Err(failed(FailureKind::Fatal, &huge)), 0);
        let e = error(&v);
        assert!(e.message.len() < 80, "{}", e.message.len());
        assert!(e.message.ends_with("bytes cut)"));
        assert_eq!(dead_reason(&v), e.message);
    }

    #[test]
    fn components_that_cannot_be_had() {
        // A broker hiccup: back to the queue, nothing recorded.
        let v = unresolved(
            &msg(0, 3),
            &LoadError::Transient("connection reset".into()),
            &config(),
            0,
        );
        assert!(v.record.is_none());
        assert!(matches!(v.disposition, Disposition::Requeue));
        // A refusal (unsigned, untrusted, tampered, wrong module): final.
        let why = "signed by an unknown key";
        let v = unresolved(&msg(0, 3), &LoadError::Refused(why.into()), &config(), 9);
        let e = error(&v);
        assert_eq!((e.kind.as_str(), e.message.as_str()), ("refused", why));
        assert_eq!(v.record.as_ref().unwrap().state, TaskState::Failure);
        assert_eq!(v.record.as_ref().unwrap().finished_at, Some(9));
        assert_eq!(dead_reason(&v), why);
    }

    #[test]
    fn worker_limits_are_ceilings() {
        let ceiling = Limits {
            timeout: Duration::from_secs(10),
            soft_timeout: Some(Duration::from_secs(5)),
            fuel: 1_000,
            memory: 1 << 30,
        };
        let with = |limits: MessageLimits| TaskMessage {
            limits,
            ..msg(0, 0)
        };
        // Nothing asked: the worker's.
        assert_eq!(
            effective_limits(&ceiling, &with(MessageLimits::default())),
            ceiling
        );
        // More asked: cut to the ceiling.
        let greedy = MessageLimits {
            timeout_ms: Some(3_600_000),
            soft_timeout_ms: Some(3_000_000),
            fuel: Some(u64::MAX),
            memory: Some(100 << 30),
        };
        let l = effective_limits(&ceiling, &with(greedy));
        assert_eq!(
            (l.timeout, l.fuel, l.memory),
            (ceiling.timeout, 1_000, 1 << 30)
        );
        // A soft limit past the (cut) hard one is dropped.
        assert_eq!(l.soft_timeout, None);
        // Less asked: granted.
        let modest = MessageLimits {
            timeout_ms: Some(2_000),
            soft_timeout_ms: Some(1_000),
            fuel: Some(10),
            memory: Some(1 << 20),
        };
        let l = effective_limits(&ceiling, &with(modest));
        assert_eq!(
            (l.timeout, l.soft_timeout, l.fuel, l.memory),
            (
                Duration::from_secs(2),
                Some(Duration::from_secs(1)),
                10,
                1 << 20
            )
        );
    }

    #[test]
    fn completions_carry_the_record_unless_ignored() {
        let d = delivery();
        let v = settle(&msg(0, 3), Ok("5".into()), 0);
        let c = completion(&d, v, Some(&msg(0, 3)), &config(), Effects::default());
        let w = c.result.expect("a result to write");
        assert_eq!(
            (w.task_id.as_str(), w.ttl),
            ("t1", Duration::from_secs(3600))
        );
        assert!(w.json.contains(r#""result":5"#), "{}", w.json);
        assert_eq!((c.queue.as_str(), c.delivery_id.as_str()), ("q", "1-0"));
        assert!(std::sync::Arc::ptr_eq(&c.payload, &d.payload));

        // The message's own expiry wins, capped to what Redis takes.
        let mut m = msg(0, 3);
        m.result_ttl = Some(60);
        let c = completion(
            &d,
            settle(&m, Ok("5".into()), 0),
            Some(&m),
            &config(),
            Effects::default(),
        );
        assert_eq!(c.result.unwrap().ttl, Duration::from_secs(60));
        m.result_ttl = Some(u64::MAX);
        let c = completion(
            &d,
            settle(&m, Ok("5".into()), 0),
            Some(&m),
            &config(),
            Effects::default(),
        );
        assert_eq!(
            c.result.unwrap().ttl,
            Duration::from_secs(MAX_RESULT_TTL_SECS)
        );

        // ignore_result: the message is disposed of, nothing is written.
        m.ignore_result = true;
        let failure = settle(&m, Err(failed(FailureKind::Fatal, "no")), 0);
        let c = completion(&d, failure, Some(&m), &config(), Effects::default());
        assert!(c.result.is_none());
        assert!(matches!(c.disposition, Disposition::DeadLetter { .. }));

        let c = requeue(&d);
        assert!(c.result.is_none() && matches!(c.disposition, Disposition::Requeue));
    }
}
