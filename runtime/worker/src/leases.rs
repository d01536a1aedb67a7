//! Deciding when another worker's message is abandoned, without trusting
//! the broker's idle counters across an outage.
//!
//! Redis measures a held message's idle time by its own clock, and keeps
//! counting while nobody can reach it: after an outage longer than the
//! visibility timeout every lease looks expired, including those of live
//! workers that simply could not renew. So a worker takes a message over
//! only after it has itself watched the lease go unrenewed for a window of
//! its own time, polling without a break; any failed poll or gap starts
//! the watch over. The claim then names the idle time the message must
//! still have (what was seen plus what has passed since), so a holder that
//! renewed at any moment in between keeps it: the check is atomic in
//! Redis (XCLAIM's min-idle).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use celeriac_broker::{Claim, Pending};

/// How long a lease is watched, and how.
#[derive(Debug, Clone, Copy)]
pub(super) struct Watch {
    /// Idle time from which a lease counts as abandoned.
    pub visibility_timeout: Duration,
    /// How long this worker must see it unrenewed before claiming.
    pub window: Duration,
    /// Longest gap between polls that still counts as watching.
    pub max_gap: Duration,
}

impl Watch {
    pub fn for_timeout(vt: Duration) -> Self {
        Self {
            visibility_timeout: vt,
            window: (vt / 2).max(Duration::from_millis(200)),
            max_gap: (vt / 2).max(Duration::from_millis(200)),
        }
    }

    /// Idle time from which the pending list is worth a look: a holder
    /// renews every third of the timeout, so half of it means at least one
    /// renewal was missed.
    pub fn suspect_after(&self) -> Duration {
        self.visibility_timeout / 2
    }
}

struct Seen {
    consumer: String,
    idle_ms: u64,
    at: Instant,
}

/// Watched leases of one queue.
pub(super) struct Orphans {
    watch: Watch,
    seen: HashMap<String, Seen>,
    last_poll: Option<Instant>,
}

impl Orphans {
    pub fn new(watch: Watch) -> Self {
        Self {
            watch,
            seen: HashMap::new(),
            last_poll: None,
        }
    }

    /// A poll failed (or was skipped): what was watched is no longer known
    /// to be unrenewed.
    pub fn forget(&mut self) {
        self.seen.clear();
        self.last_poll = None;
    }

    /// Idle time from which the pending list is worth a look.
    pub fn suspect_after(&self) -> Duration {
        self.watch.suspect_after()
    }

    /// The pending list (entries idle at least [`Watch::suspect_after`])
    /// as polled at `now`. Returns the messages to claim, each with the
    /// idle time it must still have.
    pub fn observe(&mut self, now: Instant, pending: &[Pending]) -> Vec<Claim> {
        let continuous = self
            .last_poll
            .is_some_and(|t| now.saturating_duration_since(t) <= self.watch.max_gap);
        if !continuous {
            self.seen.clear();
        }
        self.last_poll = Some(now);
        let vt_ms = self.watch.visibility_timeout.as_millis() as u64;
        // Clock jitter between our timer and Redis's: a lease renewed since
        // the first sighting is far younger than this allows.
        let slack_ms = (self.watch.window.as_millis() as u64 / 10).max(20);
        let mut claims = Vec::new();
        let mut still = HashMap::with_capacity(pending.len());
        for p in pending {
            let fresh = Seen {
                consumer: p.consumer.clone(),
                idle_ms: p.idle_ms,
                at: now,
            };
            let Some(first) = self.seen.remove(&p.id) else {
                still.insert(p.id.clone(), fresh);
                continue;
            };
            let watched = now.saturating_duration_since(first.at);
            let expected = first.idle_ms + watched.as_millis() as u64;
            let unrenewed = first.consumer == p.consumer && p.idle_ms + slack_ms >= expected;
            if !unrenewed {
                // Renewed or moved since: watch it afresh.
                still.insert(p.id.clone(), fresh);
            } else if watched >= self.watch.window && p.idle_ms >= vt_ms {
                claims.push(Claim {
                    id: p.id.clone(),
                    min_idle_ms: expected.saturating_sub(slack_ms).max(vt_ms),
                    deliveries: p.deliveries,
                });
            } else {
                still.insert(p.id.clone(), first);
            }
        }
        self.seen = still;
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, consumer: &str, idle_ms: u64) -> Pending {
        Pending {
            id: id.into(),
            consumer: consumer.into(),
            idle_ms,
            deliveries: 1,
        }
    }

    fn watch() -> Watch {
        Watch::for_timeout(Duration::from_secs(10))
    }

    #[test]
    fn claims_only_after_watching_a_full_window() {
        let mut o = Orphans::new(watch());
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        // Looks long dead by Redis's clock (e.g. just after an outage)...
        assert!(o.observe(t0, &[p("1", "a", 60_000)]).is_empty());
        assert!(o.observe(s(2_500), &[p("1", "a", 62_500)]).is_empty());
        // ...but is claimed only once we saw it unrenewed for 5 s ourselves.
        let claims = o.observe(s(5_000), &[p("1", "a", 65_000)]);
        assert_eq!(claims.len(), 1);
        assert_eq!((claims[0].id.as_str(), claims[0].deliveries), ("1", 1));
        // The claim demands (about) the idle time it must still have now.
        let min = claims[0].min_idle_ms;
        assert!((64_000..=65_000).contains(&min), "{claims:?}");
    }

    #[test]
    fn a_renewal_in_between_restarts_the_watch() {
        let mut o = Orphans::new(watch());
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        o.observe(t0, &[p("1", "a", 30_000)]);
        // The holder came back and renewed: idle is small again (it is
        // listed only because the poll asks for idle >= 5 s).
        assert!(o.observe(s(2_500), &[p("1", "a", 5_100)]).is_empty());
        assert!(o.observe(s(5_000), &[p("1", "a", 7_600)]).is_empty());
        assert_eq!(o.observe(s(7_600), &[p("1", "a", 10_200)]).len(), 1);
    }

    #[test]
    fn a_gap_or_failed_poll_restarts_the_watch() {
        let mut o = Orphans::new(watch());
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        o.observe(t0, &[p("1", "a", 30_000)]);
        // Polls 8 s apart: we did not watch in between (we may have been
        // cut off from Redis ourselves).
        assert!(o.observe(s(8_000), &[p("1", "a", 38_000)]).is_empty());
        o.forget();
        assert!(o.observe(s(10_000), &[p("1", "a", 40_000)]).is_empty());
        assert!(o.observe(s(12_500), &[p("1", "a", 42_500)]).is_empty());
        assert_eq!(o.observe(s(15_000), &[p("1", "a", 45_000)]).len(), 1);
    }

    #[test]
    fn not_before_the_visibility_timeout_and_not_if_taken_by_another() {
        let mut o = Orphans::new(watch());
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        o.observe(t0, &[p("1", "a", 5_000)]);
        assert!(o.observe(s(2_500), &[p("1", "a", 7_500)]).is_empty());
        // Watched long enough but idle still under the timeout: wait.
        assert!(o.observe(s(5_000), &[p("1", "b", 5_000)]).is_empty());
        assert!(o.observe(s(9_000), &[p("1", "b", 9_000)]).is_empty());
        assert_eq!(o.observe(s(11_000), &[p("1", "b", 11_000)]).len(), 1);
    }
}
