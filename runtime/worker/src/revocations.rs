//! Revoked task and workflow ids, mirrored from the broker: loaded before
//! the first fetch, kept current by the broker's announcements (and
//! reloaded whenever that feed drops, and every half minute to let expired
//! ones go), plus the running tasks a terminating revoke stops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use celeriac_broker::{Broker, BrokerResult, Revocation};
use celeriac_protocol::TaskMessage;

/// How often the whole set is read again.
const RELOAD: Duration = Duration::from_secs(30);

struct RunningTask {
    id: String,
    root: Option<String>,
    stop: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Revocations {
    ids: RwLock<HashSet<String>>,
    /// Running tasks by a unique slot number.
    running: Mutex<HashMap<u64, RunningTask>>,
    next: std::sync::atomic::AtomicU64,
}

/// A running task's registration; its token fires if it is revoked with
/// `terminate`. Unregisters on drop.
pub(crate) struct Running<'a> {
    owner: &'a Revocations,
    slot: u64,
    pub stop: CancellationToken,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.owner.running).remove(&self.slot);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: nothing a panic could leave half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revocations {
    /// The message, or the workflow it belongs to, was revoked.
    pub fn is_revoked(&self, msg: &TaskMessage) -> bool {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        !ids.is_empty()
            && (ids.contains(&msg.id) || msg.root_id.as_ref().is_some_and(|r| ids.contains(r)))
    }

    pub fn start(&self, msg: &TaskMessage) -> Running<'_> {
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = CancellationToken::new();
        lock(&self.running).insert(
            slot,
            RunningTask {
                id: msg.id.clone(),
                root: msg.root_id.clone(),
                stop: stop.clone(),
            },
        );
        Running {
            owner: self,
            slot,
            stop,
        }
    }

    fn apply(&self, r: &Revocation) {
        {
            let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
            ids.extend(r.ids.iter().cloned());
        }
        if r.terminate {
            for t in lock(&self.running).values() {
                if r.ids
                    .iter()
                    .any(|x| *x == t.id || Some(x) == t.root.as_ref())
                {
                    tracing::info!(task_id = %t.id, "terminating: revoked");
                    t.stop.cancel();
                }
            }
        }
    }

    /// Replace the set with the broker's.
    pub async fn load(&self, broker: &dyn Broker) -> BrokerResult<()> {
        let ids: HashSet<String> = broker.revoked().await?.into_iter().collect();
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) = ids;
        Ok(())
    }

    /// Follow the broker's announcements until `stop`.
    pub async fn keep(self: Arc<Self>, broker: Arc<dyn Broker>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            // Watch first, then read: a revoke in between is in one or both.
            let watch = broker.watch_revokes().await;
            if let Err(e) = self.load(broker.as_ref()).await {
                tracing::debug!(error = %e, "could not read revocations");
            }
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "could not watch revocations");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            let reload = tokio::time::sleep(RELOAD);
            tokio::pin!(reload);
            loop {
                tokio::select! {
                    r = watch.next() => match r {
                        Some(r) => self.apply(&r),
                        None => break,
                    },
                    _ = &mut reload => break,
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
