//! How many messages a worker holds beyond those running: enough to keep
//! its slots busy between fetches when tasks are short, none when they are
//! long (Celery's advice for long tasks is a prefetch of one per slot: a
//! worker that holds twelve 12-second tasks starves its peers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time of work a worker keeps in hand, per slot, beyond what runs.
const HOLD: Duration = Duration::from_millis(50);

/// Messages to hold beyond the `concurrency` running ones: as many as
/// take about [`HOLD`] per slot at the mean task time seen, at most `max`.
/// Before any task finished, none: a new worker must not grab a backlog of
/// long tasks before it knows they are long.
pub(super) fn prefetch(max: u32, concurrency: u32, mean: Option<Duration>) -> u32 {
    let Some(mean) = mean else { return 0 };
    let per_slot = HOLD.as_nanos() / mean.as_nanos().max(1);
    let want = per_slot.saturating_mul(u128::from(concurrency));
    u32::try_from(want).unwrap_or(u32::MAX).min(max)
}

/// A moving average of task run time (exponential, weight 1/8), shared by
/// the tasks that report into it.
#[derive(Default)]
pub(super) struct MeanRuntime {
    /// Microseconds; 0 until the first report.
    micros: AtomicU64,
}

impl MeanRuntime {
    pub fn record(&self, took: Duration) {
        let sample = (took.as_micros() as u64).max(1);
        // Lost updates between racing tasks only skip a sample.
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.micros.store(new.max(1), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_more_for_short_tasks_and_none_for_long_ones() {
        let ms = Duration::from_millis;
        assert_eq!(prefetch(64, 2, None), 0);
        assert_eq!(prefetch(64, 2, Some(Duration::from_micros(20))), 64);
        assert_eq!(prefetch(64, 2, Some(ms(10))), 10);
        assert_eq!(prefetch(64, 2, Some(ms(100))), 0);
        assert_eq!(prefetch(64, 2, Some(Duration::from_secs(12))), 0);
        assert_eq!(prefetch(4, 8, Some(ms(1))), 4);
    }

    #[test]
    fn mean_follows_recent_tasks() {
        let m = MeanRuntime::default();
        assert_eq!(m.get(), None);
        m.record(Duration::from_secs(12));
        assert_eq!(m.get(), Some(Duration::from_secs(12)));
        for _ in 0..100 {
            m.record(Duration::from_micros(10));
        }
        assert!(m.get().unwrap() < Duration::from_millis(1));
    }
}
