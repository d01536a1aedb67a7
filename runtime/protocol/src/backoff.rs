//! Retry delays: exponential, capped, with jitter (Celery's retry_backoff,
//! retry_backoff_max and retry_jitter).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry; doubles with each one.
    pub base: Duration,
    /// Ceiling on any one delay.
    pub max: Duration,
    /// Spread each delay uniformly over [delay/2, delay] so retries of a
    /// burst of failures do not all land at once.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl Backoff {
    /// Delay before retry number `retries + 1`.
    pub fn delay(&self, retries: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retries.min(20));
        let capped = exp.min(self.max);
        if self.jitter {
            let half = capped / 2;
            half + half.mul_f64(fastrand::f64())
        } else {
            capped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        let j = Backoff { jitter: true, ..b };
        for r in 0..12 {
            let d = j.delay(r);
            let full = b.delay(r);
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
