//! The first step of every delivery: whether it may run now. Pure, like
//! `settle`: a message too large to read, malformed or out of range,
//! delivered too often (poison), expired, or early comes out settled, with
//! the reason; anything else comes out as a message to run.

use celeriac_broker::{Delivery, Disposition};
use celeriac_protocol::message::{TaskMessage, salvage_id};
use celeriac_protocol::record::{ErrorInfo, TaskState};
use celeriac_protocol::units::format_size;
use celeriac_protocol::workflow::{JoinMessage, is_join};

use crate::WorkerConfig;
use crate::settle::{Verdict, anonymous_record, record, refuse, refuse_unread};

/// A message that may run, with `module.task` split.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub msg: TaskMessage,
    /// Where the `.` between module and task name is.
    dot: usize,
}

impl Admitted {
    pub fn module(&self) -> &str {
        &self.msg.task[..self.dot]
    }

    pub fn name(&self) -> &str {
        &self.msg.task[self.dot + 1..]
    }
}

/// Why a delivery was settled without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turned {
    /// Larger than `max_message_bytes`: only a prefix was read.
    Oversize,
    /// Not a message, or a field out of range.
    Malformed,
    /// Delivered more than `max_deliveries` times without completing.
    Poison,
    /// Past its `expires`: REVOKED.
    Expired,
    /// Its eta is ahead (a producer clock ahead of ours): back to wait in
    /// the broker.
    Early,
    /// What it needs could not be read (the broker hiccuped): handed back.
    Unavailable,
}

#[derive(Debug)]
pub(crate) enum Admission {
    Run(Admitted),
    /// A group's join (see `flow`).
    Join(JoinMessage),
    Turned {
        why: Turned,
        /// One line for the log.
        reason: String,
        /// The message, when it could be read.
        msg: Option<Box<TaskMessage>>,
        verdict: Verdict,
    },
}

/// Judge `delivery` at `now` (Unix milliseconds).
pub(crate) fn admit(delivery: &Delivery, config: &WorkerConfig, now: u64) -> Admission {
    let unread = |why, reason: String, id: Option<String>| {
        let record = id.map(|id| anonymous_record(id, &delivery.queue, config, now));
        Admission::Turned {
            why,
            verdict: refuse_unread(record, "malformed", &reason, config),
            reason,
            msg: None,
        }
    };
    if delivery.is_oversize() {
        let reason = format!(
            "message too large: {}, limit {}",
            format_size(delivery.size as u64),
            format_size(config.max_message_bytes as u64)
        );
        // Only a prefix was read: the id may still be in it.
        return unread(
            Turned::Oversize,
            reason,
            salvage_id_from_prefix(&delivery.payload),
        );
    }
    if is_join(&delivery.payload) {
        return match JoinMessage::parse(&delivery.payload) {
            Ok(j) => Admission::Join(j),
            Err(e) => unread(Turned::Malformed, e.to_string(), None),
        };
    }
    match TaskMessage::parse(&delivery.payload, now) {
        Ok(msg) => admit_message(delivery, msg, config, now),
        Err(e) => unread(
            Turned::Malformed,
            e.to_string(),
            salvage_id(&delivery.payload),
        ),
    }
}

/// Judge a message read from `delivery`: a Celeriac one, or a Celery one
/// translated (see `celery`).
pub(crate) fn admit_message(
    delivery: &Delivery,
    msg: TaskMessage,
    config: &WorkerConfig,
    now: u64,
) -> Admission {
    let dot = match msg.split_task() {
        Ok((module, _)) => module.len(),
        Err(e) => {
            let reason = e.to_string();
            return Admission::Turned {
                why: Turned::Malformed,
                verdict: refuse(
                    record(&msg, TaskState::Failure, config, now),
                    "malformed",
                    &reason,
                    config,
                ),
                reason,
                msg: Some(Box::new(msg)),
            };
        }
    };
    let turned = |why, reason: String, verdict: Verdict, msg: TaskMessage| Admission::Turned {
        why,
        reason,
        msg: Some(Box::new(msg)),
        verdict,
    };
    if delivery.deliveries > config.max_deliveries {
        let reason = format!(
            "delivered {} times without completing (worker crashes or kills?); max is {}",
            delivery.deliveries, config.max_deliveries
        );
        let verdict = refuse(
            record(&msg, TaskState::Failure, config, now),
            "poison",
            &reason,
            config,
        );
        return turned(Turned::Poison, reason, verdict, msg);
    }
    if let Some(expires) = msg.expires
        && now > expires
    {
        let reason = format!("expired {} ms before it could run", now - expires);
        let mut record = record(&msg, TaskState::Revoked, config, now);
        record.error = Some(ErrorInfo {
            kind: "expired".into(),
            message: reason.clone(),
        });
        let verdict = Verdict {
            record: Some(record),
            disposition: Disposition::Ack,
        };
        return turned(Turned::Expired, reason, verdict, msg);
    }
    // A few milliseconds early is on time: not worth a round trip.
    if let Some(eta) = msg.eta
        && eta > now.saturating_add(5)
    {
        let verdict = Verdict {
            record: None,
            disposition: Disposition::Retry {
                payload: delivery.payload.to_string(),
                due_ms: eta,
            },
        };
        let reason = format!("{} ms early", eta - now);
        return turned(Turned::Early, reason, verdict, msg);
    }
    Admission::Run(Admitted { msg, dot })
}

/// The `"id"` of a message of which only a prefix was read.
fn salvage_id_from_prefix(prefix: &str) -> Option<String> {
    let start = prefix.find("\"id\":\"")? + 6;
    let rest = &prefix[start..];
    let id = &rest[..rest.find('"')?];
    (!id.is_empty() && id.len() <= 200 && !id.contains('\\')).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::tests::{dead_reason, msg};

    fn config() -> WorkerConfig {
        WorkerConfig {
            id: "w".into(),
            ..WorkerConfig::default()
        }
    }

    fn deliver(payload: String, deliveries: u64) -> Delivery {
        Delivery::new("q", "1-0".into(), payload, deliveries)
    }

    fn turned(a: Admission) -> (Turned, String, Option<Box<TaskMessage>>, Verdict) {
        match a {
            Admission::Turned {
                why,
                reason,
                msg,
                verdict,
            } => (why, reason, msg, verdict),
            Admission::Run(m) => panic!("admitted {}", m.msg.id),
            Admission::Join(j) => panic!("join {}", j.join),
        }
    }

    #[test]
    fn a_good_message_runs_with_its_task_split() {
        let mut m = msg(0, 3);
        m.eta = None;
        m.task = "my.pkg.add".into();
        let Admission::Run(a) = admit(&deliver(m.to_json(), 1), &config(), 1_000) else {
            panic!("not admitted")
        };
        assert_eq!((a.module(), a.name()), ("my.pkg", "add"));
        // A message whose eta has come (or is a few ms ahead) runs.
        m.eta = Some(1_004);
        assert!(matches!(
            admit(&deliver(m.to_json(), 1), &config(), 1_000),
            Admission::Run(_)
        ));
    }

    #[test]
    fn malformed_messages_are_dead_lettered_with_a_failure_when_they_have_an_id() {
        let (why, reason, m, v) = turned(admit(&deliver("not json".into(), 1), &config(), 0));
        assert_eq!(why, Turned::Malformed);
        assert!(m.is_none() && v.record.is_none());
        assert!(reason.starts_with("malformed message: "), "{reason}");
        assert_eq!(dead_reason(&v), reason);
        assert_eq!(v.label(), "DEAD");

        // Out of range, but its id is readable: the producer gets a FAILURE.
        let mut bad = serde_json::from_str::<serde_json::Value>(&msg(0, 3).to_json()).unwrap();
        bad["max_retries"] = u32::MAX.into();
        let (why, reason, _, v) = turned(admit(&deliver(bad.to_string(), 1), &config(), 0));
        assert_eq!(why, Turned::Malformed);
        assert!(
            reason.starts_with("invalid message: max_retries"),
            "{reason}"
        );
        let r = v.record.as_ref().expect("a FAILURE for the salvaged id");
        assert_eq!((r.id.as_str(), r.state), ("t1", TaskState::Failure));
        assert_eq!(r.error.as_ref().unwrap().kind, "malformed");
    }

    #[test]
    fn oversize_messages_are_refused_unread() {
        let mut m = msg(0, 3);
        m.args = serde_json::value::to_raw_value(&["x".repeat(4096)]).unwrap();
        let d = Delivery::bounded("q", "1-0".into(), m.to_json(), 1, 2048);
        assert!(d.is_oversize());
        let (why, reason, m, v) = turned(admit(&d, &config(), 0));
        assert_eq!(why, Turned::Oversize);
        assert!(m.is_none());
        assert!(reason.starts_with("message too large: "), "{reason}");
        // The id came first in the prefix that was kept.
        assert_eq!(v.record.as_ref().map(|r| r.id.as_str()), Some("t1"));
        assert_eq!(dead_reason(&v), reason);
    }

    #[test]
    fn poison_is_a_failure_after_max_deliveries() {
        let cfg = config();
        let payload = msg(0, 3).to_json();
        let ok = admit(&deliver(payload.clone(), cfg.max_deliveries), &cfg, 10);
        assert!(matches!(ok, Admission::Run(_)));
        let (why, reason, m, v) =
            turned(admit(&deliver(payload, cfg.max_deliveries + 1), &cfg, 10));
        assert_eq!(why, Turned::Poison);
        assert_eq!(m.unwrap().id, "t1");
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.error.as_ref().unwrap().kind, "poison");
        assert!(reason.starts_with("delivered 6 times"), "{reason}");
        assert_eq!(dead_reason(&v), reason);
    }

    #[test]
    fn expired_messages_are_revoked_and_acked() {
        let mut m = msg(0, 3);
        m.expires = Some(1_000);
        let (why, reason, _, v) = turned(admit(&deliver(m.to_json(), 1), &config(), 1_500));
        assert_eq!(why, Turned::Expired);
        assert_eq!(reason, "expired 500 ms before it could run");
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.state, TaskState::Revoked);
        assert_eq!(r.error.as_ref().unwrap().kind, "expired");
        assert!(matches!(v.disposition, Disposition::Ack));
        assert_eq!(v.label(), "REVOKED");
    }

    #[test]
    fn early_messages_go_back_to_wait_unchanged() {
        let mut m = msg(0, 3);
        m.eta = Some(5_000);
        let payload = m.to_json();
        let (why, _, _, v) = turned(admit(&deliver(payload.clone(), 1), &config(), 1_000));
        assert_eq!(why, Turned::Early);
        assert!(v.record.is_none());
        let Disposition::Retry {
            payload: again,
            due_ms,
        } = &v.disposition
        else {
            panic!("{:?}", v.disposition)
        };
        assert_eq!((again, *due_ms), (&payload, 5_000));
        assert_eq!(v.label(), "DELAYED");
    }

    #[test]
    fn ids_are_salvaged_from_prefixes() {
        assert_eq!(
            salvage_id_from_prefix(r#"{"v":1,"id":"abc","task":"m.t","args":["xxxx"#).as_deref(),
            Some("abc")
        );
        assert_eq!(salvage_id_from_prefix(r#"{"v":1,"id":"ab"#), None);
        assert_eq!(salvage_id_from_prefix("junk"), None);
    }
}
