//! The console's recent past: every interval, each queue's depth and what
//! the events of that interval say about throughput and latency, kept for
//! half an hour in memory. [`Interval`] is the pure part.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_broker::{Broker, QueueStats};
use celeriac_protocol::{Event, EventKind, now_ms};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub const INTERVAL: Duration = Duration::from_secs(2);
/// Half an hour of samples.
const KEPT: usize = 900;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Depth {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: u64,
    pub queues: BTreeMap<String, Depth>,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub latency_ms: Option<Percentiles>,
    pub runtime_ms: Option<Percentiles>,
}

/// What the events of one interval add up to.
#[derive(Debug, Default)]
pub struct Interval {
    succeeded: u64,
    failed: u64,
    retried: u64,
    latency: Vec<f64>,
    runtime: Vec<f64>,
}

/// Samples kept for percentiles per interval at most.
const PER_INTERVAL: usize = 10_000;

impl Interval {
    pub fn add(&mut self, e: &Event) {
        match e.kind {
            EventKind::Succeeded => self.succeeded += 1,
            EventKind::Failed | EventKind::Rejected => self.failed += 1,
            EventKind::Retried => self.retried += 1,
            _ => return,
        }
        if self.latency.len() < PER_INTERVAL {
            if let Some(l) = e.latency_ms {
                self.latency.push(l);
            }
            if let Some(r) = e.runtime_ms {
                self.runtime.push(r);
            }
        }
    }

    pub fn finish(self, at: u64, queues: BTreeMap<String, Depth>) -> Sample {
        Sample {
            at,
            queues,
            succeeded: self.succeeded,
            failed: self.failed,
            retried: self.retried,
            latency_ms: percentiles(self.latency),
            runtime_ms: percentiles(self.runtime),
        }
    }
}

fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.5),
        p95: at(0.95),
    })
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn start(
        broker: Arc<dyn Broker>,
        live: &crate::live::Live,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let history = Arc::new(History::default());
        let mut rx = live.subscribe();
        let h = history.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut current = Interval::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = rx.recv() => match e {
                        Ok(e) => current.add(&e),
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    _ = tick.tick() => {
                        let queues = depths(broker.as_ref()).await;
                        let sample = std::mem::take(&mut current).finish(now_ms(), queues);
                        let mut s = h.samples.lock().unwrap_or_else(|p| p.into_inner());
                        s.push_back(sample);
                        while s.len() > KEPT {
                            s.pop_front();
                        }
                    }
                }
            }
        });
        history
    }

    pub fn samples(&self) -> Vec<Sample> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().cloned().collect()
    }
}

/// Every queue's depth now (none when the broker does not answer).
async fn depths(broker: &dyn Broker) -> BTreeMap<String, Depth> {
    let mut out = BTreeMap::new();
    let Ok(queues) = broker.queues().await else {
        return out;
    };
    for q in queues {
        if let Ok(QueueStats {
            ready,
            delayed,
            in_flight,
            dead,
            ..
        }) = broker.queue_stats(&q).await
        {
            out.insert(
                q,
                Depth {
                    ready,
                    delayed,
                    in_flight,
                    dead,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(kind: EventKind, latency: f64, runtime: f64) -> Event {
        Event {
            latency_ms: Some(latency),
            runtime_ms: Some(runtime),
            ..Event::new(kind, 0)
        }
    }

    #[test]
    fn an_interval_counts_outcomes_and_takes_percentiles() {
        let mut i = Interval::default();
        for n in 1..=100 {
            i.add(&done(EventKind::Succeeded, n as f64, n as f64 / 10.0));
        }
        i.add(&done(EventKind::Failed, 500.0, 1.0));
        i.add(&Event::new(EventKind::Retried, 0));
        i.add(&Event::new(EventKind::Started, 0));
        let s = i.finish(7, BTreeMap::new());
        assert_eq!((s.succeeded, s.failed, s.retried), (100, 1, 1));
        let l = s.latency_ms.unwrap();
        assert_eq!(l.p50, 51.0);
        assert_eq!(l.p95, 96.0);
        assert!(s.runtime_ms.unwrap().p95 < 10.0);
    }

    #[test]
    fn an_empty_interval_has_no_percentiles() {
        let s = Interval::default().finish(1, BTreeMap::new());
        assert!(s.latency_ms.is_none() && s.runtime_ms.is_none());
        assert_eq!(s.succeeded, 0);
    }
}
