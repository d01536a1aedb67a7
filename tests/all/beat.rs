//! `celeriac beat` against a real Redis: several beat processes fire each
//! run exactly once, also when the leader is killed and when one restarts;
//! `--list` shows the schedule.

use std::process::Child;
use std::time::Duration;

use redis::Commands;

use crate::support::Fixture;
use crate::support::wait::wait_for;

const SETTINGS: &str = r#"
[beat.tick]
task = "math.add"
args = [1, 2]
every = "1s"
queue = "ticks"

[beat.nightly]
task = "math.mul"
args = [6, 7]
cron = "0 3 * * *"
timezone = "Europe/Paris"
missed = "skip"
"#;

fn beat(f: &Fixture, settings: &std::path::Path, id: &str) -> Child {
    let log = std::fs::File::create(f.cache_dir().join(format!("{id}.log"))).unwrap();
    f.cli()
        .args([
            "beat",
            "--config",
            settings.to_str().unwrap(),
            "--id",
            id,
            "--lease",
            "1s",
            "-v",
        ])
        .stderr(log)
        .spawn()
}

/// The last run fired and the messages sent, read together.
fn fired(f: &Fixture) -> (u64, u64) {
    let mut c = f.redis();
    let (last, sent): (Option<u64>, u64) = redis::pipe()
        .atomic()
        .get(f.key("beat:last:tick"))
        .xlen(f.key("queue:{ticks}"))
        .query(&mut c)
        .unwrap();
    (last.unwrap_or(0), sent)
}

fn leader(f: &Fixture) -> Option<String> {
    let lease: Option<String> = f.redis().get(f.key("beat:lease")).unwrap();
    lease.and_then(|l| l.rsplit_once(':').map(|(h, _)| h.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn beats_fire_each_run_once_through_kills_and_restarts() {
    let f = Fixture::new(&["math"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("celeriac.toml");
    std::fs::write(&settings, SETTINGS).unwrap();
    let mut a = beat(&f, &settings, "beat-a");
    let mut b = beat(&f, &settings, "beat-b");
    wait_for("a first run", Duration::from_secs(15), async || {
        fired(&f).1 >= 1
    })
    .await;
    let (l0, c0) = fired(&f);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Kill the leader; the other takes over within the lease.
    let lead = leader(&f).expect("someone leads");
    let (killed, other) = if lead == "beat-a" {
        (&mut a, "beat-b")
    } else {
        (&mut b, "beat-a")
    };
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_for(
        "the other beat to lead",
        Duration::from_secs(10),
        async || leader(&f).as_deref() == Some(other),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Start the killed one again: still one fire per run.
    let again = beat(
        &f,
        &settings,
        if other == "beat-a" {
            "beat-b"
        } else {
            "beat-a"
        },
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (l1, c1) = fired(&f);
    let runs = (l1 - l0) / 1_000;
    assert!(runs >= 5, "only {runs} runs in about 7 s");
    assert_eq!(
        c1 - c0,
        runs,
        "messages sent for runs {l0}..={l1}: one each, none skipped"
    );
    for mut p in [a, b, again] {
        let _ = p.kill();
        let _ = p.wait();
    }
    // Each message is a real task for the worker.
    let payloads: Vec<redis::Value> = f
        .redis()
        .xrange_count(f.key("queue:{ticks}"), "-", "+", 1)
        .unwrap();
    assert!(!payloads.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_schedules_and_next_runs() {
    let f = Fixture::new(&["math"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("celeriac.toml");
    std::fs::write(&settings, SETTINGS).unwrap();
    let out = f.celeriac(&["beat", "--list", "--config", settings.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tick") && text.contains("math.add"), "{text}");
    // 03:00 in Paris is 01:00 or 02:00 UTC.
    assert!(
        text.contains("Europe/Paris") && text.contains("missed: skip"),
        "{text}"
    );
    assert!(
        text.contains("T01:00:00Z") || text.contains("T02:00:00Z"),
        "{text}"
    );
    // A broken entry names itself.
    std::fs::write(
        &settings,
        "[beat.bad]\ntask = \"math.add\"\ncron = \"99 * * * *\"\n",
    )
    .unwrap();
    let out = f.celeriac(&["beat", "--list", "--config", settings.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("beat.bad: cron `99 * * * *`"));
}
