//! What becomes of a task once it has run: the record to store and what to
//! do with the message. Pure: no broker, no clock beyond the `now` given,
//! so every disposition is unit-tested.
//!
//! Everything a task can make the worker store is bounded here: the result
//! (`max_result_bytes`), the failure message and the dead-letter reason
//! (`max_error_bytes`). Over the limit is a FAILURE with a one-line cause,
//! never a write Redis refuses.

use std::time::Duration;

use serde_json::Value;

use celeriac_broker::Disposition;
use celeriac_protocol::Backoff;
use celeriac_protocol::message::TaskMessage;
use celeriac_protocol::record::{ErrorInfo, ResultRecord, TaskState};
use celeriac_protocol::text::clip;
use celeriac_protocol::units::format_size;
use celeriac_sandbox::{FailureKind, TaskError};

/// The worker settings settling depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    pub backoff: Backoff,
    pub max_result_bytes: usize,
    pub max_error_bytes: usize,
}

/// A settled task: the record to store (if any) and the message's fate.
#[derive(Debug)]
pub(super) struct Verdict {
    pub record: Option<ResultRecord>,
    pub disposition: Disposition,
}

impl Verdict {
    /// The state to count in metrics.
    pub fn label(&self) -> &'static str {
        match (&self.record, &self.disposition) {
            (_, Disposition::Requeue) => "REQUEUED",
            (Some(r), _) => match r.state {
                TaskState::Success => "SUCCESS",
                TaskState::Retry => "RETRY",
                TaskState::Revoked => "REVOKED",
                _ => "FAILURE",
            },
            (None, Disposition::DeadLetter { .. }) => "DEAD",
            (None, _) => "SUCCESS",
        }
    }
}

/// A task that will not run: FAILURE (kind, reason) and a dead letter.
pub(super) fn refuse(mut record: ResultRecord, kind: &str, reason: &str, rules: &Rules) -> Verdict {
    let reason = clip(reason, rules.max_error_bytes);
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

/// Settle a task that ran. `record` is its record so far (runtime, fuel,
/// limits filled in); `now_ms` dates a retry.
pub(super) fn settle(
    msg: &TaskMessage,
    outcome: Result<String, TaskError>,
    mut record: ResultRecord,
    rules: &Rules,
    now_ms: u64,
) -> Verdict {
    let json = match outcome {
        Ok(json) => json,
        // Not the task's doing (out of instance slots): try again.
        Err(TaskError::Busy(_)) => {
            return Verdict {
                record: None,
                disposition: Disposition::Requeue,
            };
        }
        Err(e) => return settle_failure(msg, &e, record, rules, now_ms),
    };
    if json.len() > rules.max_result_bytes {
        let reason = format!(
            "result too large: {}, limit {}",
            format_size(json.len() as u64),
            format_size(rules.max_result_bytes as u64)
        );
        return refuse(record, "result-too-large", &reason, rules);
    }
    match serde_json::from_str::<Value>(&json) {
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
            rules,
        ),
    }
}

fn settle_failure(
    msg: &TaskMessage,
    e: &TaskError,
    mut record: ResultRecord,
    rules: &Rules,
    now_ms: u64,
) -> Verdict {
    let (kind, retry_after) = error_kind(e);
    if e.is_retryable() && msg.retries < msg.max_retries {
        let delay = retry_after
            .unwrap_or_else(|| rules.backoff.delay(msg.retries))
            .min(rules.backoff.max.max(Duration::from_secs(1)));
        let due_ms = now_ms.saturating_add(delay.as_millis() as u64);
        let mut next = msg.clone();
        next.retries += 1;
        next.eta = None;
        record.state = TaskState::Retry;
        record.retry_at = Some(due_ms);
        record.error = Some(ErrorInfo {
            kind: kind.into(),
            message: clip(&e.to_string(), rules.max_error_bytes),
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
    refuse(record, kind, &reason, rules)
}

/// The `kind` stored in a failed record, and a retry delay the task asked for.
pub(super) fn error_kind(e: &TaskError) -> (&'static str, Option<Duration>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::Digest;
    use celeriac_protocol::MessageLimits;

    fn msg(retries: u32, max_retries: u32) -> TaskMessage {
        TaskMessage {
            v: 1,
            id: "t1".into(),
            task: "m.t".into(),
            digest: Digest::of(b"x"),
            args: vec![],
            kwargs: Default::default(),
            queue: "q".into(),
            retries,
            max_retries,
            eta: Some(5),
            expires: None,
            limits: MessageLimits::default(),
            result_ttl: None,
            ignore_result: false,
            submitted_at: 0,
        }
    }

    fn record() -> ResultRecord {
        ResultRecord {
            id: "t1".into(),
            task: "m.t".into(),
            state: TaskState::Started,
            result: None,
            error: None,
            retries: 0,
            runtime_ms: 1.0,
            fuel: None,
            worker: "w".into(),
            queue: "q".into(),
            submitted_at: 0,
            started_at: None,
            finished_at: None,
            retry_at: None,
            limits: None,
        }
    }

    fn rules() -> Rules {
        Rules {
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: false,
            },
            max_result_bytes: 100,
            max_error_bytes: 40,
        }
    }

    fn failed(kind: FailureKind, message: &str) -> TaskError {
        TaskError::Failed {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn dead_reason(v: &Verdict) -> &str {
        match &v.disposition {
            Disposition::DeadLetter { reason, .. } => reason,
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    #[test]
    fn success_stores_the_value_and_acks() {
        let v = settle(&msg(0, 3), Ok("[1,2]".into()), record(), &rules(), 0);
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.state, TaskState::Success);
        assert_eq!(r.result, Some(serde_json::json!([1, 2])));
        assert!(matches!(v.disposition, Disposition::Ack));
        assert_eq!(v.label(), "SUCCESS");
    }

    #[test]
    fn results_over_the_limit_fail_with_a_one_line_cause() {
        let big = format!("\"{}\"", "x".repeat(200));
        let v = settle(&msg(0, 3), Ok(big), record(), &rules(), 0);
        let e = v.record.as_ref().unwrap().error.clone().unwrap();
        assert_eq!(e.kind, "result-too-large");
        assert_eq!(e.message, "result too large: 202 B, limit 100 B");
        assert_eq!(dead_reason(&v), e.message);
    }

    #[test]
    fn invalid_json_is_fatal() {
        let v = settle(&msg(0, 3), Ok("{nope".into()), record(), &rules(), 0);
        let e = v.record.unwrap().error.unwrap();
        assert_eq!(e.kind, "fatal");
        assert!(e.message.starts_with("task returned invalid JSON"));
    }

    #[test]
    fn retry_failures_back_off_then_give_up() {
        let e = failed(FailureKind::Retry, "busy");
        let v = settle(&msg(1, 3), Err(e.clone()), record(), &rules(), 1_000);
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.state, TaskState::Retry);
        // base 1 s doubled once, no jitter.
        assert_eq!(r.retry_at, Some(3_000));
        let Disposition::Retry { payload, due_ms } = &v.disposition else {
            panic!("{:?}", v.disposition)
        };
        assert_eq!(*due_ms, 3_000);
        let next = TaskMessage::parse(payload, 0).unwrap();
        assert_eq!((next.retries, next.eta), (2, None));

        let last = settle(&msg(3, 3), Err(e), record(), &rules(), 0);
        assert_eq!(last.record.as_ref().unwrap().state, TaskState::Failure);
        assert_eq!(dead_reason(&last), "retry: busy (gave up after 3 retries)");
    }

    #[test]
    fn a_delay_the_task_asks_for_wins_but_is_capped() {
        let e = TaskError::Failed {
            kind: FailureKind::Retry,
            message: "later".into(),
            retry_after: Some(Duration::from_secs(3600)),
        };
        let v = settle(&msg(0, 3), Err(e), record(), &rules(), 0);
        assert_eq!(v.record.unwrap().retry_at, Some(60_000));
    }

    #[test]
    fn traps_retry_limits_and_fatal_do_not() {
        let trap = TaskError::Trap("unreachable".into());
        let v = settle(&msg(0, 1), Err(trap), record(), &rules(), 0);
        assert!(matches!(v.disposition, Disposition::Retry { .. }));
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
            let v = settle(&msg(0, 3), Err(e), record(), &rules(), 0);
            assert_eq!(
                v.record.as_ref().unwrap().error.as_ref().unwrap().kind,
                kind
            );
            assert_eq!(v.label(), "FAILURE");
            dead_reason(&v);
        }
    }

    #[test]
    fn host_trouble_hands_the_message_back_without_a_record() {
        let v = settle(
            &msg(0, 3),
            Err(TaskError::Busy("out of slots".into())),
            record(),
            &rules(),
            0,
        );
        assert!(v.record.is_none());
        assert!(matches!(v.disposition, Disposition::Requeue));
    }

    #[test]
    fn long_failure_messages_are_clipped_everywhere() {
        let huge = "\u{1}".repeat(10_000);
        let v = settle(
            &msg(0, 0),
            Err(failed(FailureKind::Fatal, &huge)),
            record(),
            &rules(),
            0,
        );
        let e = v.record.as_ref().unwrap().error.clone().unwrap();
        assert!(e.message.len() < 80, "{}", e.message.len());
        assert!(e.message.ends_with("bytes cut)"));
        assert_eq!(dead_reason(&v), e.message);
        // Clipping never splits a character.
        assert_eq!(clip("ééé", 3), "é… (4 bytes cut)");
    }
}
