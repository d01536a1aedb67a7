//! Periodic tasks (`celeriac beat`): schedules (a crontab expression in
//! a time zone, or a fixed interval), which runs are due at a given time
//! (pure, [`due`]), and [`Beat`], which fires each due run exactly once
//! however many beat processes run:
//!
//! - one process at a time leads, holding a lease in the broker whose
//!   value carries a fencing token (a counter bumped at every new lease);
//! - a run is fired by one atomic broker step that checks the token is
//!   still the lease's and that the entry's last fired run is older than
//!   this one, then records the run and enqueues its task. A leader that
//!   stalled past its lease (a pause, a partition) is fenced out; a run is
//!   never fired twice, and a new leader carries on from the last run
//!   fired, so a restart or a take-over neither skips nor repeats one.
//! - runs late by at most `grace` fire, each one; older ones are *missed*
//!   and follow the entry's policy: `catch-up` (the default, as Celery
//!   beat) fires once for all of them, `skip` fires none.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use celeriac_broker::{BeatFire, Broker};
use celeriac_protocol::message::new_task_id;
use celeriac_protocol::now_ms;

use crate::workflow::{Defaults, TaskSpec};
use crate::{ClientError, outgoing, resolve, task_message};

/// When an entry runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A crontab expression (5 fields, or 6 with seconds first) read in
    /// a time zone.
    Cron {
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
        text: String,
    },
    /// Every so long, on multiples of the interval since the Unix epoch
    /// (so every process agrees on the runs).
    Every(Duration),
}

impl Schedule {
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Self, String> {
        let cron = croner::Cron::from_str(expr).map_err(|e| format!("cron `{expr}`: {e}"))?;
        let tz = match tz {
            None => chrono_tz::Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| format!("unknown time zone `{name}` (e.g. Europe/Paris, UTC)"))?,
        };
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz,
            text: expr.to_string(),
        })
    }

    /// The first run strictly after `after` (Unix ms).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        match self {
            Schedule::Every(every) => {
                let every = every.as_millis().max(1) as u64;
                Some((after / every + 1) * every)
            }
            Schedule::Cron { cron, tz, .. } => {
                let t = tz.from_utc_datetime(&utc(after)?.naive_utc());
                let next = cron.find_next_occurrence(&t, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The last run at or before `at`.
    fn last_at_or_before(&self, at: u64) -> Option<u64> {
        match self {
            Schedule::Every(every) => {
                let every = every.as_millis().max(1) as u64;
                Some(at / every * every)
            }
            Schedule::Cron { cron, tz, .. } => {
                let t = tz.from_utc_datetime(&utc(at)?.naive_utc());
                let prev = cron.find_previous_occurrence(&t, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron { text, tz, .. } => write!(f, "cron `{text}` ({tz})"),
            Schedule::Every(d) => {
                write!(f, "every {}", celeriac_protocol::units::format_duration(*d))
            }
        }
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// What happens to runs older than the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Fire once for all of them.
    CatchUp,
    /// Fire none; wait for the next.
    Skip,
}

/// One periodic task.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub schedule: Schedule,
    pub task: TaskSpec,
    pub missed: Missed,
}

impl Entry {
    /// An entry as the settings file gives it: the task's fields (`task`,
    /// `args`, `kwargs`, `queue`, `priority`, …) plus `cron` (with an
    /// optional `timezone`) or `every`, and `missed` (`catch-up` or `skip`).
    pub fn from_value(name: &str, v: &Value) -> Result<Self, String> {
        let at = format!("beat.{name}");
        let mut fields: Map<String, Value> = v
            .as_object()
            .ok_or_else(|| format!("{at}: expected a table"))?
            .clone();
        let text = |fields: &mut Map<String, Value>, key: &str| -> Result<Option<String>, String> {
            match fields.remove(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(format!("{at}: `{key}` must be a string, got {other}")),
            }
        };
        let cron = text(&mut fields, "cron")?;
        let every = text(&mut fields, "every")?;
        let tz = text(&mut fields, "timezone")?;
        let missed = match text(&mut fields, "missed")?.as_deref() {
            None | Some("catch-up") => Missed::CatchUp,
            Some("skip") => Missed::Skip,
            Some(other) => {
                return Err(format!(
                    "{at}: missed must be `catch-up` or `skip`, not `{other}`"
                ));
            }
        };
        let schedule = match (cron, every) {
            (Some(c), None) => {
                Schedule::cron(&c, tz.as_deref()).map_err(|e| format!("{at}: {e}"))?
            }
            (None, Some(e)) => {
                if tz.is_some() {
                    return Err(format!("{at}: `timezone` goes with `cron`, not `every`"));
                }
                let d = celeriac_protocol::units::parse_duration(&e)
                    .map_err(|e| format!("{at}: {e}"))?;
                if d < Duration::from_secs(1) {
                    return Err(format!("{at}: `every` must be at least 1s"));
                }
                Schedule::Every(d)
            }
            (Some(_), Some(_)) => return Err(format!("{at}: give `cron` or `every`, not both")),
            (None, None) => return Err(format!("{at}: needs `cron` or `every`")),
        };
        let task: TaskSpec =
            serde_json::from_value(Value::Object(fields)).map_err(|e| format!("{at}: {e}"))?;
        crate::split(&task.task).map_err(|e| format!("{at}: {e}"))?;
        Ok(Entry {
            name: name.to_string(),
            schedule,
            task,
            missed,
        })
    }
}

/// The runs of `schedule` due at `now` after `last` fired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The latest run more than `grace` late, if any were.
    pub missed: Option<u64>,
    /// Runs late by at most `grace`, oldest first.
    pub fire: Vec<u64>,
}

/// At most this many runs are fired in one pass (a 1 s schedule and a
/// long grace would otherwise let one pass fire without end).
const MAX_PER_PASS: usize = 1_000;

pub fn due(schedule: &Schedule, last: u64, now: u64, grace: Duration) -> Due {
    let cutoff = now.saturating_sub(grace.as_millis() as u64);
    let mut out = Due::default();
    let Some(first) = schedule.next_after(last) else {
        return out;
    };
    let mut next = Some(first);
    if first <= cutoff {
        out.missed = schedule.last_at_or_before(cutoff).filter(|m| *m > last);
        next = schedule.next_after(cutoff);
    }
    while let Some(t) = next {
        if t > now || out.fire.len() >= MAX_PER_PASS {
            break;
        }
        out.fire.push(t);
        next = schedule.next_after(t);
    }
    out
}

/// A beat process: its entries, its identity and how long it holds the lead.
pub struct Beat {
    pub entries: Vec<Entry>,
    /// Who this process is (host-pid-random), in the lease.
    pub holder: String,
    pub lease: Duration,
    pub grace: Duration,
    pub defaults: Defaults,
}

impl Beat {
    /// Lead when it can and fire what is due, until `stop`.
    pub async fn run(
        &self,
        broker: &dyn Broker,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ClientError> {
        let renew = self.lease / 3;
        let mut leading = false;
        while !stop.is_cancelled() {
            let mut sleep = renew;
            match broker.beat_lease(&self.holder, self.lease).await {
                Ok(Some(token)) => {
                    if !leading {
                        tracing::info!(holder = %self.holder, %token, "leading: firing due runs");
                        leading = true;
                    }
                    match self.pass(broker, &token).await {
                        Ok(Some(next)) => {
                            let wait = Duration::from_millis(next.saturating_sub(now_ms()));
                            sleep = sleep.min(wait);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "beat pass failed"),
                    }
                }
                Ok(None) => {
                    if leading {
                        tracing::warn!("lost the lead to another beat process");
                        leading = false;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the broker"),
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
                _ = stop.cancelled() => {}
            }
        }
        Ok(())
    }

    /// Fire every entry's due runs under `token`; returns the next run.
    async fn pass(&self, broker: &dyn Broker, token: &str) -> Result<Option<u64>, ClientError> {
        let mut soonest: Option<u64> = None;
        for e in &self.entries {
            let now = now_ms();
            let last = broker.beat_start(&e.name, now).await?;
            let due = due(&e.schedule, last, now, self.grace);
            let mut runs: Vec<(u64, bool)> = Vec::new();
            if let Some(m) = due.missed {
                runs.push((m, e.missed == Missed::CatchUp));
            }
            runs.extend(due.fire.iter().map(|t| (*t, true)));
            for (slot, send) in runs {
                let message = if send {
                    Some(self.message(broker, e).await?)
                } else {
                    None
                };
                match broker
                    .beat_fire(token, &e.name, slot, message.as_ref())
                    .await?
                {
                    BeatFire::Fired => {
                        let late = now_ms().saturating_sub(slot);
                        if send {
                            tracing::info!(entry = %e.name, task = %e.task.task, slot, late_ms = late, "fired");
                        } else {
                            tracing::info!(entry = %e.name, slot, "missed runs skipped");
                        }
                    }
                    BeatFire::AlreadyFired => {}
                    BeatFire::Fenced => {
                        tracing::warn!("fenced out: another beat process leads now");
                        return Ok(None);
                    }
                }
            }
            if let Some(n) = e.schedule.next_after(now) {
                soonest = Some(soonest.map_or(n, |s| s.min(n)));
            }
        }
        Ok(soonest)
    }

    async fn message(
        &self,
        broker: &dyn Broker,
        e: &Entry,
    ) -> Result<celeriac_broker::Outgoing, ClientError> {
        let modules = resolve(broker, std::iter::once(e.task.task.as_str())).await?;
        let digest = modules[crate::split(&e.task.task)?.0].digest;
        let options = e.task.options(&self.defaults, SystemTime::now());
        let msg = task_message(
            new_task_id(),
            e.task.task.clone(),
            digest,
            serde_json::value::to_raw_value(&e.task.args)?,
            serde_json::value::to_raw_value(&e.task.kwargs)?,
            &options,
            now_ms(),
        )?;
        outgoing(&msg)
    }
}

/// The next `n` runs of each entry after `now`, for `beat --list`.
pub fn upcoming(entries: &[Entry], now: u64, n: usize) -> BTreeMap<String, Vec<u64>> {
    entries
        .iter()
        .map(|e| {
            let mut runs = Vec::new();
            let mut t = now;
            while runs.len() < n {
                match e.schedule.next_after(t) {
                    Some(next) => {
                        runs.push(next);
                        t = next;
                    }
                    None => break,
                }
            }
            (e.name.clone(), runs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn cron_runs_in_their_time_zone() {
        // 09:00 in Paris on 2026-07-01 is 07:00 UTC (summer time).
        let s = Schedule::cron("0 9 * * *", Some("Europe/Paris")).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let next = s.next_after(start.timestamp_millis() as u64).unwrap();
        assert_eq!(
            utc(next).unwrap(),
            Utc.with_ymd_and_hms(2026, 7, 1, 7, 0, 0).unwrap()
        );
        // Six fields: seconds first.
        let s = Schedule::cron("*/10 * * * * *", None).unwrap();
        assert_eq!(s.next_after(5_000), Some(10_000));
        assert!(Schedule::cron("61 * * * *", None).is_err());
        assert!(Schedule::cron("* * * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn late_runs_fire_each_and_missed_ones_follow_the_policy() {
        let every = Schedule::Every(Duration::from_secs(60));
        let grace = Duration::from_secs(90);
        // On time: the run just due.
        assert_eq!(
            due(&every, 10 * MIN, 11 * MIN + 5, grace),
            Due {
                missed: None,
                fire: vec![11 * MIN]
            }
        );
        // Nothing new.
        assert_eq!(
            due(&every, 11 * MIN, 11 * MIN + 59_000, grace),
            Due::default()
        );
        // Down for a while: the runs within grace each fire, the older
        // ones collapse into one missed run.
        assert_eq!(
            due(&every, 10 * MIN, 20 * MIN + 1, grace),
            Due {
                missed: Some(18 * MIN),
                fire: vec![19 * MIN, 20 * MIN]
            }
        );
        // Exactly at the cutoff counts as missed, never twice.
        let d = due(&every, 10 * MIN, 12 * MIN + 30_000, grace);
        assert_eq!(
            d,
            Due {
                missed: Some(11 * MIN),
                fire: vec![12 * MIN]
            }
        );
    }

    #[test]
    fn entries_name_what_is_wrong() {
        let ok =
            serde_json::json!({"task": "math.add", "args": [1, 2], "every": "10s", "queue": "q"});
        let e = Entry::from_value("t", &ok).unwrap();
        assert!(matches!(e.schedule, Schedule::Every(d) if d == Duration::from_secs(10)));
        for (bad, says) in [
            (
                serde_json::json!({"task": "math.add"}),
                "needs `cron` or `every`",
            ),
            (
                serde_json::json!({"task": "math.add", "every": "1s", "cron": "* * * * *"}),
                "not both",
            ),
            (
                serde_json::json!({"task": "math.add", "every": "10ms"}),
                "at least 1s",
            ),
            (
                serde_json::json!({"task": "math.add", "cron": "* * * * *", "missed": "later"}),
                "missed must be",
            ),
            (
                serde_json::json!({"task": "add", "every": "1s"}),
                "module.task",
            ),
            (
                serde_json::json!({"task": "math.add", "every": "1s", "argz": []}),
                "unknown field `argz`",
            ),
        ] {
            let err = Entry::from_value("t", &bad).unwrap_err();
            assert!(err.starts_with("beat.t: ") && err.contains(says), "{err}");
        }
    }
}
