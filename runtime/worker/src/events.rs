//! The events a worker records: what became of each delivery ([`outcome`],
//! pure, written in the same atomic step as the ack, after its received
//! and started events unless the task ran long enough to show those
//! live, see [`LIVE_AFTER`]), and the worker's own, which the [`Emitter`]
//! sends in batches off the tasks' path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use celeriac_broker::{Broker, Disposition, Effects, WorkerInfo};
use celeriac_protocol::message::TaskMessage;
use celeriac_protocol::record::TaskState;
use celeriac_protocol::{Event, EventKind};
use tokio::sync::mpsc;

use crate::settle::Verdict;

/// A task still running after this has its received and started events
/// recorded at once; a quicker one's ride with its outcome, in order.
pub(crate) const LIVE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Events waiting to be sent at most: past this (Redis unreachable) new
/// ones are dropped and counted, never queued without bound.
const BACKLOG: usize = 10_000;
/// Events sent in one round trip at most.
const BATCH: usize = 512;

/// An event about `msg`, by this worker.
pub(crate) fn about(kind: EventKind, msg: &TaskMessage, worker: &str, now: u64) -> Event {
    Event {
        worker: Some(worker.to_string()),
        ..Event::of_task(kind, msg, now)
    }
}

/// What became of a delivery, as events: none for one handed back or
/// waiting for its eta; a failure or refusal that dead-letters the
/// message is followed by `dead-lettered` with the reason.
pub(crate) fn outcome(
    msg: Option<&TaskMessage>,
    verdict: &Verdict,
    queue: &str,
    worker: &str,
    now: u64,
) -> Vec<Event> {
    let base = |kind| match msg {
        Some(m) => about(kind, m, worker, now),
        None => Event {
            task_id: verdict.record.as_ref().map(|r| r.id.clone()),
            queue: Some(queue.to_string()),
            worker: Some(worker.to_string()),
            ..Event::new(kind, now)
        },
    };
    let mut out = Vec::new();
    if let Some(r) = &verdict.record {
        let kind = match r.state {
            TaskState::Success => EventKind::Succeeded,
            TaskState::Retry => EventKind::Retried,
            TaskState::Revoked => EventKind::Revoked,
            // Ran and failed, or was refused before it could run.
            TaskState::Failure if r.started_at.is_some() => EventKind::Failed,
            TaskState::Failure => EventKind::Rejected,
            TaskState::Pending | TaskState::Started => return out,
        };
        let mut e = base(kind);
        if r.started_at.is_some() {
            e.runtime_ms = Some(r.runtime_ms);
            e.fuel = r.fuel;
        }
        if matches!(kind, EventKind::Succeeded | EventKind::Failed)
            && let Some(m) = msg
        {
            e.latency_ms = Some(now.saturating_sub(m.submitted_at) as f64);
        }
        if let Some(err) = &r.error {
            e = e.with_error(&format!("{}: {}", err.kind, err.message));
        }
        out.push(e);
    }
    if let Disposition::DeadLetter { reason, .. } = &verdict.disposition {
        if verdict.record.is_none() {
            out.push(base(EventKind::Rejected).with_error(reason));
        }
        out.push(base(EventKind::DeadLettered).with_error(reason));
    }
    out
}

/// `sent` for each task a completion launches (a chain's next step, a
/// link); a group's join message is not a task and has none.
pub(crate) fn launched(effects: &Effects, now: u64) -> Vec<String> {
    effects
        .launch
        .iter()
        .filter_map(|l| TaskMessage::parse(&l.message.payload, now).ok())
        .map(|m| Event::sent(&m, now).to_json())
        .collect()
}

/// A worker's own event (online, heartbeat, offline).
pub(crate) fn of_worker(kind: EventKind, info: &WorkerInfo, now: u64) -> Event {
    Event {
        worker: Some(info.id.clone()),
        busy: Some(info.busy),
        processed: Some(info.processed),
        concurrency: Some(info.concurrency),
        ..Event::new(kind, now)
    }
}

/// Sends events in batches from a task of its own, so that no task waits
/// on them; bounded, and silent (but counted) when Redis is away.
#[derive(Default)]
pub(crate) struct Emitter {
    tx: std::sync::Mutex<Option<mpsc::Sender<String>>>,
    dropped: AtomicU64,
}

impl Emitter {
    /// Start sending; returns the sender's task, which ends after [`Self::close`].
    pub fn start(&self, broker: Arc<dyn Broker>) -> Option<tokio::task::JoinHandle<()>> {
        if !broker.events_enabled() {
            return None;
        }
        let (tx, rx) = mpsc::channel(BACKLOG);
        *self.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Some(tokio::spawn(flush(broker, rx)))
    }

    pub fn send(&self, event: &Event) {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref()
            && tx.try_send(event.to_json()).is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "event backlog full: dropping events");
            }
        }
    }

    /// Stop taking events; the sender's task sends what it has and ends.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

async fn flush(broker: Arc<dyn Broker>, mut rx: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = broker.emit(&batch).await {
            tracing::debug!(error = %e, lost = batch.len(), "could not record events");
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::tests::{config, msg};

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn each_fate_has_its_events() {
        let m = msg(0, 3);
        let cfg = config();
        let ok = crate::settle::tests::settle(&m, Ok("5".into()), 1_000);
        let e = outcome(Some(&m), &ok, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Succeeded]);
        assert_eq!(e[0].task_id.as_deref(), Some(m.id.as_str()));
        assert_eq!(e[0].worker.as_deref(), Some("w1"));
        assert!(e[0].runtime_ms.is_some() && e[0].latency_ms.is_some());

        let retry = crate::settle::tests::settle(
            &m,
            Err(crate::settle::tests::failed(
                celeriac_sandbox::FailureKind::Retry,
                "flaky",
            )),
            1_000,
        );
        let e = outcome(Some(&m), &retry, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Retried]);
        assert!(e[0].error.as_deref().unwrap().contains("flaky"));

        let fatal = crate::settle::tests::settle(
            &m,
            Err(crate::settle::tests::failed(
                celeriac_sandbox::FailureKind::Fatal,
                "bad input\nsecond line",
            )),
            1_000,
        );
        let e = outcome(Some(&m), &fatal, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Failed, EventKind::DeadLettered]);
        assert!(!e[0].error.as_deref().unwrap().contains('\n'));

        let revoked = crate::settle::revoked(&m, "revoked before it ran", &cfg, 1_000);
        let e = outcome(Some(&m), &revoked, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Revoked]);
        assert!(e[0].runtime_ms.is_none());

        let refused = crate::settle::refuse(
            crate::settle::record(&m, TaskState::Failure, &cfg, 1_000),
            "untrusted",
            "no trusted key signed it",
            &cfg,
        );
        let e = outcome(Some(&m), &refused, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Rejected, EventKind::DeadLettered]);

        let unread = crate::settle::refuse_unread(None, "malformed", "not JSON", &cfg);
        let e = outcome(None, &unread, "default", "w1", 1_000);
        assert_eq!(kinds(&e), [EventKind::Rejected, EventKind::DeadLettered]);
        assert_eq!(e[1].queue.as_deref(), Some("default"));

        let early = crate::settle::delayed(&m, 5_000);
        assert!(outcome(Some(&m), &early, "default", "w1", 1_000).is_empty());
    }
}
