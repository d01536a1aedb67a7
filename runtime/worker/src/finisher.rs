//! Writing results and disposing of messages, in batches, with acks late:
//! a completion Redis refuses for good fails alone (replaced by a bounded
//! FAILURE), one that fails because Redis is away waits for it, and a
//! worker that cannot store results for a visibility timeout stands down
//! ([`StoreHealth`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_broker::retry::Reconnect;
use celeriac_broker::{BrokerError, Completed, Completion, Disposition, ResultWrite};
use celeriac_protocol::record::{ErrorInfo, ResultRecord, TaskState};
use celeriac_protocol::text::{clip, prefix};
use tokio::sync::mpsc;

use crate::{Worker, metrics};

impl Worker {
    /// Writes results and disposes of messages in batches (by count and by
    /// bytes). A failure Redis would repeat (value too large, wrong type, a
    /// bad argument) fails only the completion that caused it: it is
    /// replaced by a FAILURE naming the cause and a bounded dead letter,
    /// and the rest are written. Failures of the connection are retried
    /// until Redis is back, and only then; a completion that keeps failing
    /// while Redis answers counts as one Redis would repeat. Returns how
    /// many messages were handed back.
    pub(crate) async fn finisher(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Completion>,
    ) -> u64 {
        const BATCH: usize = 512;
        const BATCH_BYTES: usize = 32 << 20;
        let mut requeued = 0;
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut incoming = Vec::with_capacity(BATCH);
        let mut reconnect = Reconnect::new();
        loop {
            if queue.is_empty() {
                if rx.recv_many(&mut incoming, BATCH).await == 0 {
                    return requeued;
                }
            } else {
                while let Ok(c) = rx.try_recv() {
                    incoming.push(c);
                }
            }
            queue.extend(incoming.drain(..).map(|c| Pending {
                c,
                attempts: 0,
                fallback: 0,
            }));

            // After repeated failures, one at a time: finds the one at fault.
            let single = queue.front().is_some_and(|p| p.attempts >= 2);
            // The batch as the broker takes it, and what the finisher
            // knows of each (split so nothing is copied per round trip).
            let mut completions = Vec::new();
            let mut tries = Vec::new();
            let mut bytes = 0;
            while let Some(p) = queue.front() {
                let w = p.c.weight();
                if !completions.is_empty()
                    && (single || completions.len() >= BATCH || bytes + w > BATCH_BYTES)
                {
                    break;
                }
                bytes += w;
                if let Some(Pending {
                    mut c,
                    attempts,
                    fallback,
                }) = queue.pop_front()
                {
                    c.lease_fresh = self.lease_fresh(&c);
                    completions.push(c);
                    tries.push((attempts, fallback));
                }
            }
            let outcome = self.broker.complete(&self.config.id, &completions).await;
            let batch = completions
                .into_iter()
                .zip(tries)
                .map(|(c, (attempts, fallback))| Pending {
                    c,
                    attempts,
                    fallback,
                });
            match outcome {
                Ok(outcomes) => {
                    let mut retry = Vec::new();
                    let mut transient = None;
                    for (mut p, outcome) in batch.zip(outcomes) {
                        match outcome {
                            Ok(done) => {
                                if done == Completed::TakenOver {
                                    tracing::warn!(queue = %p.c.queue, delivery = %p.c.delivery_id, "lease lost to another worker: its run counts, this one is dropped");
                                }
                                if matches!(p.c.disposition, Disposition::Requeue) {
                                    requeued += 1;
                                }
                                self.release(&p.c);
                            }
                            Err(e) if e.is_transient() => {
                                transient = Some(clip(&e.cause(), 200));
                                p.attempts += 1;
                                retry.push(p);
                            }
                            Err(e) => retry.extend(self.fallback(p, &e.cause())),
                        }
                    }
                    for p in retry.into_iter().rev() {
                        queue.push_front(p);
                    }
                    match transient {
                        None => {
                            reconnect.succeeded();
                            self.store.ok();
                        }
                        // E.g. Redis out of memory: wait for it to recover.
                        Some(why) => {
                            self.store.failed(&why);
                            let wait = reconnect.failed();
                            tracing::warn!(error = %why, pending = queue.len(), retry_in = ?wait, "could not store results");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Err(e) => {
                    let wait = reconnect.failed();
                    let why = clip(&e.cause(), 200);
                    self.store.failed(&why);
                    // The connection failed under this batch while Redis
                    // answers otherwise: the batch is at fault (Redis drops
                    // a client that sends a value over its limits). A reply
                    // naming a condition of Redis's own (OOM, LOADING, …)
                    // blames nothing in the batch.
                    let server_condition =
                        matches!(&e, BrokerError::Redis(r) if r.code().is_some());
                    let answers = !server_condition && self.broker.ping().await.is_ok();
                    let mut batch: Vec<Pending> = batch.collect();
                    if answers {
                        for p in &mut batch {
                            p.attempts += 1;
                        }
                        if batch.len() == 1 && batch[0].attempts >= 3 {
                            let p = batch.remove(0);
                            if let Some(next) = self.fallback(
                                p,
                                &format!("{why} (after 3 attempts while Redis answers)"),
                            ) {
                                batch.push(next);
                            }
                        }
                    }
                    tracing::warn!(error = %why, pending = batch.len() + queue.len(), retry_in = ?wait, "could not store results");
                    for p in batch.into_iter().rev() {
                        queue.push_front(p);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The stand-in for a completion Redis refused for good: first a
    /// FAILURE naming the cause and a dead letter with a bounded payload,
    /// then (if even that is refused) the FAILURE alone, then nothing but
    /// the ack. `None` once there is nothing left to try (the message
    /// stays pending and comes back as poison).
    fn fallback(&self, p: Pending, cause: &str) -> Option<Pending> {
        let cause = clip(cause, 300);
        let c = &p.c;
        tracing::error!(queue = %c.queue, delivery = %c.delivery_id, %cause, stage = p.fallback, "result refused by Redis; storing a failure instead");
        metrics::store_refused();
        let record = c.result.as_ref().and_then(|r| {
            let mut rec: ResultRecord = serde_json::from_str(&r.json).ok()?;
            rec.state = TaskState::Failure;
            rec.result = None;
            rec.retry_at = None;
            rec.error = Some(ErrorInfo {
                kind: "storage".into(),
                message: format!("could not store result: {cause}"),
            });
            Some(ResultWrite {
                task_id: r.task_id.clone(),
                json: rec.to_json(),
                ttl: r.ttl.min(self.config.result_ttl),
            })
        });
        const KEEP: usize = 64 << 10;
        let disposition = match p.fallback {
            0 => Disposition::DeadLetter {
                reason: format!("could not store result: {cause}"),
                payload: (c.payload.len() > KEEP).then(|| prefix(&c.payload, KEEP).to_string()),
            },
            1 | 2 => Disposition::Ack,
            _ => {
                tracing::error!(queue = %c.queue, delivery = %c.delivery_id, "giving up on this completion; the message stays pending");
                self.release(c);
                return None;
            }
        };
        Some(Pending {
            c: Completion {
                result: if p.fallback < 2 { record } else { None },
                disposition,
                ..c.clone()
            },
            attempts: 0,
            fallback: p.fallback + 1,
        })
    }

    fn release(&self, c: &Completion) {
        self.held()
            .remove(&(c.queue.clone(), c.delivery_id.clone()));
    }
}

/// Results this worker could not store, since when and why.
#[derive(Default)]
pub(crate) struct StoreHealth {
    failing: Mutex<Option<(Instant, String)>>,
}

impl StoreHealth {
    pub fn failed(&self, why: &str) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some((Instant::now(), why.to_string()));
        }
    }

    pub fn ok(&self) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the worker should stand down: it has not been able to store
    /// results for longer than `limit`.
    pub fn problem(&self, limit: Duration) -> Option<String> {
        let f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let (since, why) = f.as_ref()?;
        let for_ = since.elapsed();
        (for_ > limit).then(|| format!("cannot store results for {}s: {why}", for_.as_secs()))
    }
}

/// A completion on its way to the broker.
struct Pending {
    c: Completion,
    /// Round trips that failed with it in the batch while Redis answered.
    attempts: u32,
    /// Which stand-in this is (0: the original).
    fallback: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_health_reports_only_long_failures() {
        let h = StoreHealth::default();
        assert_eq!(h.problem(Duration::ZERO), None);
        h.failed("OOM");
        assert!(h.problem(Duration::from_secs(60)).is_none());
        let p = h.problem(Duration::ZERO).unwrap();
        assert!(
            p.starts_with("cannot store results for") && p.ends_with("OOM"),
            "{p}"
        );
        h.ok();
        assert_eq!(h.problem(Duration::ZERO), None);
    }
}
