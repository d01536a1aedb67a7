//! Controlling what runs, and when: priorities (and that no level
//! starves), rate limits shared by workers, revocation (queued, delayed,
//! running, whole workflows, across a worker restart), unique submission,
//! routing from `celeriac.toml` and batch submission.

use std::time::{Duration, Instant};

use celeriac_client::workflow::{self, Defaults, Spec, TaskSpec};
use celeriac_client::{self as client, ClientError, SubmitOptions, Unique};
use celeriac_protocol::record::TaskState;
use serde_json::json;

use crate::support::Fixture;
use crate::support::tasks::{finished, reached, submit};
use crate::support::worker::quick_config;

fn on(queue: &str, priority: u8) -> SubmitOptions {
    SubmitOptions {
        queue: queue.into(),
        priority,
        ..SubmitOptions::default()
    }
}

#[tokio::test]
async fn higher_priorities_run_first() {
    let f = Fixture::new(&["math"]).await;
    let b = f.broker.as_ref();
    let mut low = Vec::new();
    let mut high = Vec::new();
    for i in 0..5 {
        low.push(submit(b, "math.add", json!([i, 0]), &on("prio", 0)).await);
    }
    for i in 0..5 {
        high.push(submit(b, "math.add", json!([i, 100]), &on("prio", 9)).await);
    }
    let mid = submit(b, "math.add", json!([0, 50]), &on("prio", 5)).await;
    let _w = f.worker(celeriac_worker::WorkerConfig {
        queues: vec!["prio".into()],
        concurrency: 1,
        prefetch: 0,
        ..quick_config("prio")
    });
    let mut started = Vec::new();
    for ids in [&high, &vec![mid], &low] {
        let mut at = Vec::new();
        for id in ids {
            at.push(
                finished(b, id, Duration::from_secs(20))
                    .await
                    .started_at
                    .unwrap(),
            );
        }
        started.push(at);
    }
    // One at a time: every 9 before the 5, the 5 before every 0 (to the
    // millisecond the records keep), each level in submission order.
    let (h, m, l) = (&started[0], started[1][0], &started[2]);
    assert!(
        h.iter().all(|&t| t <= m) && l.iter().all(|&t| t >= m),
        "{started:?}"
    );
    assert!(h.is_sorted() && l.is_sorted(), "{started:?}");
    // The queue is listed once, whatever its levels.
    let queues = b.queues().await.unwrap();
    assert_eq!(queues.iter().filter(|q| q.starts_with("prio")).count(), 1);
}

/// The stated guarantee: waiting `priority_aging` ranks a message one
/// level higher, so a priority-0 task runs before any priority-9 task
/// that arrived more than 9 × the aging after it, however many keep coming.
#[tokio::test(flavor = "multi_thread")]
async fn a_low_priority_task_still_runs_under_a_flood_of_high_ones() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let b = f.broker.clone();
    let aging = Duration::from_millis(200);
    let options = celeriac_broker::BrokerOptions {
        priority_aging: aging,
        ..Default::default()
    };
    let consumer = celeriac_broker::connect_with(f.url(), f.prefix(), &options)
        .await
        .unwrap();
    let _w = crate::support::worker::RunningWorker::start(
        consumer,
        f.publisher.trust.clone(),
        celeriac_worker::WorkerConfig {
            queues: vec!["flood".into()],
            concurrency: 1,
            prefetch: 0,
            ..quick_config("flood")
        },
    );
    // 40 high-priority tasks a second against a capacity of about 20.
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            while !stop.is_cancelled() && sent.len() < 2_000 {
                let id = submit(b.as_ref(), "misbehave.sleep", json!([50]), &on("flood", 9)).await;
                sent.push((celeriac_protocol::now_ms(), id));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let low = submit(b.as_ref(), "math.add", json!([1, 1]), &on("flood", 0)).await;
    let r = finished(b.as_ref(), &low, Duration::from_secs(60)).await;
    let backlog = b.queue_stats("flood").await.unwrap().ready;
    stop.cancel();
    let sent = flood.await.unwrap();
    assert_eq!(r.state, TaskState::Success);
    let (born, ran) = (r.submitted_at, r.started_at.unwrap());
    assert!(
        backlog > 20,
        "the flood was still queued ({backlog} waiting) when the low task ran"
    );
    // Nothing that arrived 9 levels of aging after it (plus a fetch's
    // worth of slack) ran before it.
    let bound = born + 9 * aging.as_millis() as u64 + 300;
    for (at, id) in sent.iter().filter(|(at, _)| *at > bound) {
        if let Some(h) = client::result(b.as_ref(), id).await.unwrap()
            && let Some(started) = h.started_at
        {
            assert!(
                started >= ran,
                "task sent at {at} ran at {started}, before the low one ({ran})"
            );
        }
    }
    eprintln!("priority 0 waited {} ms behind the flood", ran - born);
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_workers() {
    let f = Fixture::new(&["math"]).await;
    let b = f.broker.as_ref();
    let limited = || celeriac_worker::WorkerConfig {
        queues: vec!["rated".into()],
        concurrency: 4,
        rate_limits: [("math.add".to_string(), Duration::from_millis(100))].into(),
        ..quick_config("rated")
    };
    let mut ids = Vec::new();
    for i in 0..70 {
        ids.push(submit(b, "math.add", json!([i, 1]), &on("rated", 0)).await);
    }
    let _w1 = f.worker(celeriac_worker::WorkerConfig {
        id: "rated-1".into(),
        ..limited()
    });
    let _w2 = f.worker(celeriac_worker::WorkerConfig {
        id: "rated-2".into(),
        ..limited()
    });
    let mut starts = Vec::new();
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        let r = finished(b, id, Duration::from_secs(30)).await;
        assert_eq!(r.state, TaskState::Success);
        workers.insert(r.worker.clone());
        starts.push(r.started_at.unwrap());
    }
    starts.sort();
    assert_eq!(workers.len(), 2, "both workers took part");
    // 10/s over 5 seconds: 50 starts, within 10 %. The broker reserves each
    // start 100 ms after the one before, checked just before the run (so a
    // component loading for the first task cannot bunch the next ones);
    // a start can be late on a busy machine, never early.
    let t0 = starts[0];
    let in_window = starts.iter().filter(|&&s| s < t0 + 5_000).count();
    assert!(
        (45..=55).contains(&in_window),
        "{in_window} starts in 5 s under a 10/s limit"
    );
    // Never more than 50 starts in any 5 s, minus 10 %: no burst anywhere.
    for w in starts.windows(51) {
        assert!(
            w[50] - w[0] >= 4_500,
            "51 starts within {} ms under a 10/s limit",
            w[50] - w[0]
        );
    }
}

#[tokio::test]
async fn revoked_tasks_never_run_even_after_a_worker_restart() {
    let f = Fixture::new(&["math"]).await;
    let b = f.broker.as_ref();
    // Revoked while queued, before any worker existed.
    let queued = submit(b, "math.add", json!([1, 1]), &on("rev", 0)).await;
    let delayed = submit(
        b,
        "math.add",
        json!([2, 2]),
        &SubmitOptions {
            eta: Some(std::time::SystemTime::now() + Duration::from_millis(800)),
            ..on("rev", 0)
        },
    )
    .await;
    let kept = submit(b, "math.add", json!([3, 3]), &on("rev", 0)).await;
    let out = f.celeriac(&["revoke", &queued, &delayed]);
    assert!(out.status.success(), "{out:?}");
    let w = f.worker(celeriac_worker::WorkerConfig {
        queues: vec!["rev".into()],
        ..quick_config("rev")
    });
    for id in [&queued, &delayed] {
        let r = finished(b, id, Duration::from_secs(30)).await;
        assert_eq!(r.state, TaskState::Revoked, "{r:?}");
        assert_eq!(r.error.unwrap().kind, "revoked");
    }
    assert_eq!(
        finished(b, &kept, Duration::from_secs(30)).await.result,
        Some(json!(6))
    );
    assert_eq!(w.worker.processed(), 1, "only the task not revoked ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_stops_a_running_task_at_once() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = f.broker.as_ref();
    let _w = f.worker(celeriac_worker::WorkerConfig {
        queues: vec!["term".into()],
        track_started: true,
        limits: celeriac_sandbox::Limits {
            timeout: Duration::from_secs(60),
            fuel: u64::MAX / 2,
            ..Default::default()
        },
        ..quick_config("term")
    });
    // One spinning in wasm, one blocked in a host call (a sleep).
    for (task, args) in [
        ("misbehave.spin", json!([])),
        ("misbehave.sleep", json!([60_000])),
    ] {
        let id = submit(b, task, args, &on("term", 0)).await;
        reached(b, &id, TaskState::Started).await;
        let asked = Instant::now();
        let out = f.celeriac(&["revoke", "--terminate", &id]);
        assert!(out.status.success(), "{out:?}");
        let r = finished(b, &id, Duration::from_secs(30)).await;
        let took = asked.elapsed();
        assert_eq!(r.state, TaskState::Revoked, "{task}: {r:?}");
        assert!(r.error.unwrap().message.contains("terminated"));
        eprintln!("{task}: REVOKED {took:?} after the revoke was sent");
    }
}

#[tokio::test]
async fn revoking_a_workflow_revokes_what_has_not_run() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let b = f.broker.as_ref();
    let _w = f.worker(celeriac_worker::WorkerConfig {
        track_started: true,
        ..quick_config("rev-wf")
    });
    let spec = Spec::chain([
        Spec::task(TaskSpec::new("misbehave.sleep").args([json!(600)])),
        Spec::task(TaskSpec::new("math.add").args([json!(1)])),
        Spec::task(TaskSpec::new("math.add").args([json!(1)])),
    ]);
    let run = workflow::run(b, &spec, &Defaults::default()).await.unwrap();
    let status = workflow::status(b, &run.root_id).await.unwrap().unwrap();
    reached(b, &status.members[0].id, TaskState::Started).await;
    b.revoke(
        std::slice::from_ref(&run.root_id),
        Duration::from_secs(60),
        false,
    )
    .await
    .unwrap();
    // The running step finishes; the next is revoked, and so is the end.
    let first = finished(b, &status.members[0].id, Duration::from_secs(30)).await;
    assert_eq!(first.state, TaskState::Success);
    for m in &status.members[1..] {
        let r = finished(b, &m.id, Duration::from_secs(30)).await;
        assert_eq!(r.state, TaskState::Revoked, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unique_key_drops_duplicates_while_the_first_is_queued_or_running() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = f.broker.as_ref();
    let unique = SubmitOptions {
        queue: "uniq".into(),
        unique: Some(Unique {
            key: "nightly-report".into(),
            ttl: Duration::from_secs(60),
        }),
        ..SubmitOptions::default()
    };
    let first = submit(b, "misbehave.sleep", json!([300]), &unique).await;
    let dup = client::submit(
        b,
        crate::support::tasks::request("misbehave.sleep", json!([1])),
        &unique,
    )
    .await;
    match dup {
        Err(ClientError::Duplicate { holder, .. }) => assert_eq!(holder, first),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // From the CLI: the holder's id, and nothing queued.
    let out = f.celeriac(&[
        "submit",
        "misbehave.sleep",
        "[1]",
        "--queue",
        "uniq",
        "--unique-key",
        "nightly-report",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), first);
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate"));
    assert_eq!(b.queue_stats("uniq").await.unwrap().ready, 1);
    // A duplicate that waits gets the holder's result.
    let waiter = {
        let mut cli = f.cli();
        cli.args([
            "submit",
            "misbehave.sleep",
            "[1]",
            "--queue",
            "uniq",
            "--unique-key",
            "nightly-report",
            "--wait",
        ]);
        tokio::task::spawn_blocking(move || cli.output())
    };
    // Once it has finished, the key is free.
    let _w = f.worker(celeriac_worker::WorkerConfig {
        queues: vec!["uniq".into()],
        ..quick_config("uniq")
    });
    finished(b, &first, Duration::from_secs(30)).await;
    let out = waiter.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300");
    let again = submit(b, "misbehave.sleep", json!([1]), &unique).await;
    assert_ne!(again, first);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_from_the_settings_file_and_batches_from_a_file() {
    let f = Fixture::new(&["math", "text"]).await;
    let b = f.broker.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("celeriac.toml");
    std::fs::write(
        &settings,
        "[routes]\n\"math.fib\" = \"cpu\"\n\"math.*\" = \"arith\"\n",
    )
    .unwrap();
    let _w = f.worker(celeriac_worker::WorkerConfig {
        queues: vec!["arith".into(), "cpu".into(), "words".into()],
        ..quick_config("routed")
    });
    let config = settings.to_str().unwrap();
    let id = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let add = id(f.celeriac(&["submit", "math.add", "[1, 2]", "--config", config]));
    let fib = id(f.celeriac(&["submit", "math.fib", "[10]", "--config", config]));
    // A --route flag comes before the file's.
    let upper = id(f.celeriac(&[
        "submit",
        "text.upper",
        "[\"a\"]",
        "--config",
        config,
        "--route",
        "text.*=words",
    ]));
    for (task, queue) in [(&add, "arith"), (&fib, "cpu"), (&upper, "words")] {
        let r = finished(b, task, Duration::from_secs(30)).await;
        assert_eq!(r.queue, queue, "{r:?}");
    }
    // A batch: one line per task, routed the same way, in one command.
    let lines = dir.path().join("batch.jsonl");
    std::fs::write(
        &lines,
        "{\"task\": \"math.add\", \"args\": [1, 1]}\n\n{\"task\": \"math.mul\", \"args\": [3, 3], \"priority\": 7}\n{\"task\": \"text.upper\", \"args\": [\"x\"], \"queue\": \"words\"}\n",
    )
    .unwrap();
    let out = f.celeriac(&[
        "submit",
        "--batch",
        lines.to_str().unwrap(),
        "--config",
        config,
    ]);
    let ids: Vec<String> = id(out).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 3);
    let mut results = Vec::new();
    for i in &ids {
        results.push(
            finished(b, i, Duration::from_secs(30))
                .await
                .result
                .unwrap(),
        );
    }
    assert_eq!(results, [json!(2), json!(9), json!("X")]);
    // A bad line names its place and sends nothing.
    std::fs::write(
        &lines,
        "{\"task\": \"math.add\"}\n{\"task\": \"math.add\", \"argz\": []}\n",
    )
    .unwrap();
    let out = f.celeriac(&["submit", "--batch", lines.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("batch.jsonl:2:") && err.contains("argz"),
        "{err}"
    );
}
