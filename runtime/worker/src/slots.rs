//! Task slots with two lanes: messages taken over from dead workers start
//! before freshly fetched ones, so orphans do not wait behind a backlog.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Which lane a waiting message is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Reclaimed from a dead worker: has waited a visibility timeout already.
    First,
    Normal,
}

/// `n` slots handed out first to the `First` lane, each lane in order.
#[derive(Clone)]
pub(super) struct Slots {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    free: usize,
    first: VecDeque<oneshot::Sender<()>>,
    normal: VecDeque<oneshot::Sender<()>>,
}

/// A held slot; given back (to the next waiter) when dropped.
pub(super) struct Slot {
    slots: Slots,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Slots {
    pub fn new(n: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                free: n,
                first: VecDeque::new(),
                normal: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters and queues: consistent at every step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot. Cancel-safe: a waiter dropped before it is served
    /// passes its turn on.
    pub async fn acquire(&self, lane: Lane) -> Slot {
        let rx = {
            let mut inner = self.lock();
            if inner.free > 0 {
                inner.free -= 1;
                return Slot {
                    slots: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            match lane {
                Lane::First => inner.first.push_back(tx),
                Lane::Normal => inner.normal.push_back(tx),
            }
            rx
        };
        // The sender is only dropped unsent by `release` skipping a closed
        // receiver, which cannot be this live one; treat it as granted.
        let _ = rx.await;
        Slot {
            slots: self.clone(),
        }
    }

    fn release(&self) {
        let mut inner = self.lock();
        loop {
            let next = inner.first.pop_front().or_else(|| inner.normal.pop_front());
            match next {
                // Handed straight to the waiter: `free` stays as it is.
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    inner.free += 1;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_lane_goes_ahead_and_cancelled_waiters_pass_their_turn() {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Normal).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, lane) in [
            ("n1", Lane::Normal),
            ("n2", Lane::Normal),
            ("f1", Lane::First),
        ] {
            let (slots, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(lane).await;
                order.lock().unwrap().push(name);
            }));
            tokio::task::yield_now().await;
        }
        // A waiter that gives up must not swallow a slot.
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            slots.acquire(Lane::First),
        )
        .await;
        assert!(gave_up.is_err());
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["f1", "n1", "n2"]);
        // Everything given back: one slot free again.
        let _again = slots.acquire(Lane::Normal).await;
    }
}
