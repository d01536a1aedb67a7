//! The worker's background duties: renewing the leases on what it holds
//! (and only that), promoting due delayed messages, taking over messages
//! of dead workers ([`crate::leases`]), pruning their consumers, heartbeats
//! and queue-depth metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_broker::{BrokerError, Delivery};
use celeriac_protocol::now_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::leases::{Orphans, Watch};
use crate::{Worker, events, metrics};
use celeriac_protocol::EventKind;

impl Worker {
    /// Renews the leases on everything held, a third of the visibility
    /// timeout apart (sooner after a failure), unless the worker stands
    /// down: then its messages go to live workers.
    pub(crate) async fn lease_keeper(self: Arc<Self>, stop: CancellationToken) {
        let period = (self.config.visibility_timeout / 3).max(Duration::from_millis(50));
        loop {
            let mut wait = period;
            if let Some(problem) = self.problem() {
                tracing::warn!(%problem, "not renewing leases: other workers take over");
            } else {
                let held: Vec<(String, String)> = self.held().keys().cloned().collect();
                if !held.is_empty() {
                    let round = Instant::now();
                    match tokio::time::timeout(period, self.broker.renew(&self.config.id, &held))
                        .await
                    {
                        Ok(Ok(lost)) => {
                            let mut h = self.held();
                            if !lost.is_empty() {
                                tracing::warn!(lost = lost.len(), "leases lost to other workers");
                                metrics::leases_lost(lost.len());
                                for l in &lost {
                                    h.remove(l);
                                }
                            }
                            for key in &held {
                                if let Some(t) = h.get_mut(key) {
                                    *t = (*t).max(round);
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "lease renewal failed");
                            wait = Duration::from_millis(200).min(period);
                        }
                        Err(_) => {
                            tracing::warn!("lease renewal timed out");
                            wait = Duration::from_millis(200).min(period);
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delayed-message promotion, taking over from dead workers, pruning
    /// their consumers, heartbeats and queue-depth metrics, each on its own
    /// clock. Stops taking over work once `shutdown` is signalled.
    pub(crate) async fn keeper(
        self: Arc<Self>,
        stop: CancellationToken,
        shutdown: CancellationToken,
        reclaimed: mpsc::UnboundedSender<Delivery>,
    ) {
        let vt = self.config.visibility_timeout;
        let watch = Watch::for_timeout(vt);
        let mut orphans: HashMap<String, Orphans> = self
            .levels
            .iter()
            .map(|q| (q.clone(), Orphans::new(watch)))
            .collect();
        let mut promote = tokio::time::interval(Duration::from_millis(50));
        let mut reclaim = tokio::time::interval((vt / 4).max(Duration::from_millis(50)));
        let mut prune = tokio::time::interval(vt.max(Duration::from_secs(1)));
        let mut beat = tokio::time::interval(self.config.heartbeat);
        // The first beat says the worker came online.
        let mut online = false;
        for t in [&mut promote, &mut reclaim, &mut prune, &mut beat] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let call_limit = (vt / 4).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = promote.tick() => {
                    if let Err(e) = self.broker.promote_due(&self.levels, now_ms()).await {
                        tracing::debug!(error = %e, "promoting delayed messages failed");
                    }
                }
                _ = reclaim.tick() => {
                    if shutdown.is_cancelled() {
                        continue;
                    }
                    for (q, watched) in orphans.iter_mut() {
                        let claimed_at = Instant::now();
                        let taken = tokio::time::timeout(call_limit, self.take_over(q, watched)).await;
                        match taken {
                            Ok(Ok(deliveries)) => {
                                for d in deliveries {
                                    tracing::info!(queue = %q, delivery = %d.id, deliveries = d.deliveries, "took over a message from an unresponsive worker");
                                    // Held from now on, so it is renewed while it waits for a slot.
                                    self.held()
                                        .insert((d.queue.clone(), d.id.clone()), claimed_at);
                                    let _ = reclaimed.send(d);
                                }
                            }
                            Ok(Err(e)) => {
                                watched.forget();
                                tracing::warn!(queue = %q, error = %e, "reclaim failed");
                            }
                            Err(_) => watched.forget(),
                        }
                    }
                }
                _ = prune.tick() => {
                    // Consumers of dead workers, once they hold nothing.
                    let idle = (vt * 2).max(Duration::from_secs(2));
                    for q in &self.levels {
                        match self.broker.prune_consumers(q, idle, None).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(queue = %q, removed = n, "removed consumers of gone workers"),
                            Err(e) => tracing::debug!(queue = %q, error = %e, "pruning consumers failed"),
                        }
                    }
                }
                _ = beat.tick() => {
                    let info = self.info();
                    metrics::healthy(info.problem.is_none());
                    if let Err(e) = self.broker.heartbeat(&info, self.config.heartbeat * 5).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    let kind = if online { EventKind::WorkerHeartbeat } else { EventKind::WorkerOnline };
                    online = true;
                    self.events.send(&events::of_worker(kind, &info, info.seen_at));
                    for q in &self.config.queues {
                        if let Ok(stats) = self.broker.queue_stats(q).await {
                            metrics::queue_depth(q, &stats);
                        }
                    }
                }
            }
        }
    }

    /// One look at `queue`'s pending list; claims what has been watched
    /// unrenewed long enough. Takes over even when this worker is busy:
    /// taken-over messages start ahead of fetched ones. Bounded per round
    /// by what the worker may hold.
    async fn take_over(
        &self,
        queue: &str,
        watched: &mut Orphans,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let limit = (self.config.concurrency + self.config.prefetch).max(1) as usize;
        let suspect = self
            .broker
            .pending(queue, &self.config.id, watched.suspect_after(), limit)
            .await?;
        let claims = watched.observe(Instant::now(), &suspect);
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.broker
            .claim(
                queue,
                &self.config.id,
                &claims,
                self.config.max_message_bytes,
            )
            .await
    }
}
