//! One way to wait out a broker that does not answer: every loop that
//! reconnects, re-reads or re-sends (the worker's fetches and result
//! writes, connecting, declaring queues, waiting for a result) backs off by
//! the same policy, so a fleet recovering from a Redis restart neither
//! hammers it nor waits longer than it must.

use std::future::Future;
use std::time::Duration;

use celeriac_protocol::Backoff;
use tokio_util::sync::CancellationToken;

/// 100 ms doubling to 5 s, each delay spread over its upper half so
/// workers that lost Redis together do not come back in lockstep.
pub const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: true,
};

/// The consecutive failures of one loop, and how long to wait after each.
#[derive(Debug, Default)]
pub struct Reconnect {
    failures: u32,
}

impl Reconnect {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a failure; returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = RECONNECT.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// The broker answered: the next failure starts from the shortest delay.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// Run `op` until it succeeds or fails for good, waiting out failures that
/// `retry_if` calls passing (each logged at warn with `what`). `Ok(None)`
/// when `stop` is cancelled first.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    retry_if: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut reconnect = Reconnect::new();
    while !stop.is_cancelled() {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if retry_if(&e) => {
                let wait = reconnect.failed();
                tracing::warn!(error = %e, retry_in = ?wait, "{what}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_starts_over() {
        let mut r = Reconnect::new();
        let waits: Vec<Duration> = (0..8).map(|_| r.failed()).collect();
        assert!(waits[0] <= Duration::from_millis(100), "{waits:?}");
        assert!(waits[3] >= Duration::from_millis(400), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= RECONNECT.max), "{waits:?}");
        r.succeeded();
        assert!(r.failed() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_what_may_pass_and_gives_up_on_the_rest() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let got = until_ok(
            "flaky",
            &stop,
            |e: &&str| *e == "transient",
            || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err("transient") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(got, Ok(Some(4)));
        let got: Result<Option<()>, &str> = until_ok(
            "broken",
            &stop,
            |e: &&str| *e == "transient",
            || async { Err("fatal") },
        )
        .await;
        assert_eq!(got, Err("fatal"));
        stop.cancel();
        let got: Result<Option<()>, &str> = until_ok(
            "down",
            &stop,
            |_: &&str| true,
            || async { Err("transient") },
        )
        .await;
        assert_eq!(got, Ok(None));
    }
}
