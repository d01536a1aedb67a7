//! What no message, producer or component may do to a worker (issue 9),
//! each against a real Redis with real components: wedge it with a result
//! or a failure Redis refuses, raise limits past its ceilings, make it hold
//! unbounded data, run a task twice after an outage, strand a dead
//! worker's messages behind a backlog, or lose a waiter's result.

use std::time::{Duration, Instant};

use crate::support::{
    Fixture, Outcome, PrivateRedis, RunningWorker, finished, http_get, quick_config,
    request as req, wait_for,
};
use celeriac_broker::{Broker, Outgoing};
use celeriac_client::{self as client, ClientError, SubmitOptions};
use celeriac_protocol::MessageLimits;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_sandbox::Limits;
use serde_json::{Value, json};

async fn submit(b: &dyn Broker, task: &str, args: Value) -> String {
    crate::support::submit(b, task, args, &SubmitOptions::default()).await
}

/// The final record of task `id`, within `secs` seconds.
async fn wait(b: &dyn Broker, id: &str, secs: u64) -> ResultRecord {
    finished(b, id, Duration::from_secs(secs)).await
}

/// A raw message, as anyone who can write to Redis could enqueue it.
async fn raw(b: &dyn Broker, message: Value) {
    b.enqueue(&[Outgoing {
        queue: "default".into(),
        payload: message.to_string(),
        due_ms: None,
    }])
    .await
    .unwrap();
}

async fn digest_of(b: &dyn Broker, module: &str) -> String {
    b.get_module(module)
        .await
        .unwrap()
        .unwrap()
        .digest
        .to_string()
}

fn message(id: &str, task: &str, digest: &str, args: Value) -> Value {
    json!({"v": 1, "id": id, "task": task, "digest": digest, "queue": "default", "args": args})
}

/// A failure message Redis would refuse (90 MiB of control characters,
/// 540 MB as JSON) and a result over the worker's limit each fail alone,
/// with a one-line cause; the same worker then runs an ordinary task at
/// once, and a second worker handed the same message (requeued from the
/// dead-letter queue) does not wedge either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_results_and_failures_fail_alone() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let b = &f.broker;
    let mut config = quick_config("first");
    config.limits.memory = 512 << 20;
    let worker = f.worker(config.clone());

    let poison = submit(b.as_ref(), "misbehave.bloat", json!(["failure", 90])).await;
    let big = submit(b.as_ref(), "misbehave.bloat", json!(["result", 20])).await;
    let r = wait(b.as_ref(), &poison, 60).await;
    let e = r.error.unwrap();
    assert_eq!((r.state, e.kind.as_str()), (TaskState::Failure, "fatal"));
    assert!(e.message.len() < 9000, "{}", e.message.len());
    assert!(
        e.message.ends_with("bytes cut)"),
        "{}",
        &e.message[e.message.len() - 40..]
    );
    let r = wait(b.as_ref(), &big, 60).await;
    let e = r.error.unwrap();
    assert_eq!(e.kind, "result-too-large");
    assert_eq!(e.message, "result too large: 20.0 MiB, limit 16.0 MiB");

    // The same worker goes on at once.
    let started = Instant::now();
    let ok = submit(b.as_ref(), "math.add", json!([2, 3])).await;
    assert_eq!(wait(b.as_ref(), &ok, 10).await.result, Some(json!(5)));
    assert!(started.elapsed() < Duration::from_secs(10));
    worker.stop().await;

    // Both were dead-lettered with bounded reasons; a second worker given
    // the poison message again fails it the same way and goes on.
    let dead = b.dlq_list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|d| d.reason.len() < 9000 && d.payload.len() < 1000)
    );
    let letter = dead.iter().find(|d| d.payload.contains(&poison)).unwrap();
    assert!(b.dlq_requeue("default", &letter.id).await.unwrap());
    let second = f.worker(quick_config("second"));
    assert_eq!(
        wait(b.as_ref(), &poison, 60).await.state,
        TaskState::Failure
    );
    let ok = submit(b.as_ref(), "math.add", json!([4, 5])).await;
    assert_eq!(wait(b.as_ref(), &ok, 10).await.result, Some(json!(9)));
    second.stop().await;
}

/// Every number a producer picks is checked where it enters: the client
/// refuses it before sending, the CLI exits 2 with one line, and a worker
/// dead-letters a raw message carrying it as `invalid message: …`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_numbers_are_validated_everywhere() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;

    // Client library.
    let options = SubmitOptions {
        limits: MessageLimits {
            timeout_ms: Some(u64::MAX),
            ..MessageLimits::default()
        },
        ..SubmitOptions::default()
    };
    let err = client::submit(b.as_ref(), req("math.add", json!([1, 2])), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    let options = SubmitOptions {
        result_ttl: Some(Duration::from_secs(u64::MAX / 2)),
        ..SubmitOptions::default()
    };
    let err = client::submit(b.as_ref(), req("math.add", json!([1, 2])), &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid message: result_ttl"), "{err}");
    let huge = "x".repeat(17 << 20);
    let err = client::submit(
        b.as_ref(),
        req("math.add", json!([huge, 1])),
        &SubmitOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("message too large: 17.0 MiB, limit 16.0 MiB"),
        "{err}"
    );

    // CLI.
    for flags in [
        &["--result-ttl", "1000000000y"][..],
        &["--timeout", "100000000y"],
        &["--countdown", "1000000000y"],
        &["--expires", "400days"],
        &["--soft-timeout", "2s", "--timeout", "1s"],
        &["--memory", "2TiB"],
        &["--fuel", "0"],
        &["--max-retries", "4000000000"],
    ] {
        let mut args = vec!["submit", "math.add", "[1, 2]"];
        args.extend_from_slice(flags);
        let o = f.celeriac(&args);
        let err = o.stderr_text();
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        // (clap adds a `--help` hint to usage errors: the cause is line one)
        assert!(err.starts_with("error: "), "{flags:?}: {err}");
        // Each cause once, not repeated by the error's own source chain.
        let first = err.lines().next().unwrap_or_default();
        assert!(first.matches("out of range").count() <= 1, "{first}");
    }
    assert_eq!(b.queue_stats("default").await.unwrap().ready, 0);

    // Worker, for raw messages.
    let digest = digest_of(b.as_ref(), "math").await;
    let mut bad = Vec::new();
    for (i, (field, value)) in [
        ("result_ttl", json!(u64::MAX)),
        ("eta", json!(u64::MAX)),
        ("expires", json!(u64::MAX)),
        ("max_retries", json!(u32::MAX)),
        ("limits", json!({"timeout_ms": 0})),
        ("limits", json!({"memory": u64::MAX})),
        ("limits", json!({"fuel": 0})),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad-{i}");
        let mut m = message(&id, "math.add", &digest, json!([1, 2]));
        m[field] = value;
        raw(b.as_ref(), m).await;
        bad.push(id);
    }
    let worker = f.worker(quick_config("judge"));
    for id in &bad {
        let r = wait(b.as_ref(), id, 20).await;
        let e = r.error.unwrap();
        assert_eq!(r.state, TaskState::Failure);
        assert!(
            e.message.starts_with("invalid message: "),
            "{id}: {}",
            e.message
        );
    }
    let ok = submit(b.as_ref(), "math.add", json!([2, 2])).await;
    assert_eq!(wait(b.as_ref(), &ok, 10).await.result, Some(json!(4)));
    worker.stop().await;
    let dead = b.dlq_list("default", 100).await.unwrap();
    assert_eq!(dead.len(), bad.len());
    assert!(
        dead.iter()
            .all(|d| d.reason.starts_with("invalid message: "))
    );
}

/// The worker's limits are ceilings: a message asking for more memory,
/// fuel or time runs under the worker's, and the record says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_limits_are_ceilings() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let mut config = quick_config("strict");
    config.limits = Limits {
        timeout: Duration::from_secs(2),
        soft_timeout: None,
        fuel: 50_000_000,
        memory: 32 << 20,
    };
    let worker = f.worker(config);
    let greedy = SubmitOptions {
        limits: MessageLimits {
            timeout_ms: Some(3_600_000),
            soft_timeout_ms: None,
            fuel: Some(u64::MAX),
            memory: Some(100 << 30),
        },
        ..SubmitOptions::default()
    };
    let run = |task: &'static str, args: Value| {
        let (b, greedy) = (b.clone(), greedy.clone());
        async move {
            let id = client::submit(b.as_ref(), req(task, args), &greedy)
                .await
                .unwrap();
            wait(b.as_ref(), &id, 30).await
        }
    };
    let hog = run("misbehave.hog", json!([4])).await;
    assert_eq!(
        hog.error.unwrap().message,
        "memory limit exceeded (32.0 MiB)"
    );
    let limits = hog.limits.unwrap();
    assert_eq!(
        (limits.memory, limits.fuel, limits.timeout_ms),
        (32 << 20, 50_000_000, 2_000)
    );
    let spin = run("misbehave.spin", json!([])).await;
    assert_eq!(
        spin.error.unwrap().message,
        "fuel exhausted (50000000 units)"
    );
    // Asking for less is granted.
    let modest = SubmitOptions {
        limits: MessageLimits {
            fuel: Some(1_000_000),
            ..MessageLimits::default()
        },
        ..SubmitOptions::default()
    };
    let id = client::submit(b.as_ref(), req("misbehave.spin", json!([])), &modest)
        .await
        .unwrap();
    let r = wait(b.as_ref(), &id, 30).await;
    assert_eq!(r.limits.unwrap().fuel, 1_000_000);
    worker.stop().await;
}

/// A message over the size limit is dead-lettered without being parsed,
/// keeping only a prefix; a worker holds messages within a byte budget;
/// and through a flood of 1,000 oversized, malformed and valid messages
/// it keeps its memory bounded and gets every valid one right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_floods_stay_bounded() {
    let server = PrivateRedis::start();
    let f = Fixture::on(&server.url(), &["math"]).await;
    let b = &f.broker;
    let digest = digest_of(b.as_ref(), "math").await;

    let pad = "x".repeat(20 << 20);
    let mut valid = Vec::new();
    for i in 0..1000 {
        let m = match i % 50 {
            // 20 oversized (20 MiB each).
            0 => message(&format!("big-{i}"), "math.add", &digest, json!([pad, 1])),
            // 480 malformed in assorted ways.
            n if n % 2 == 1 => match i % 3 {
                0 => json!({"v": 1, "id": format!("m-{i}")}),
                1 => message(&format!("m-{i}"), "nodot", &digest, json!([])),
                _ => json!(format!("not a message {i}")),
            },
            // 500 valid.
            _ => {
                let id = format!("ok-{i}");
                valid.push((id.clone(), i));
                message(&id, "math.add", &digest, json!([i, 1]))
            }
        };
        raw(b.as_ref(), m).await;
    }
    drop(pad);
    let mut w = f.worker_process("flooded", &["--concurrency", "2"]);
    for (id, i) in &valid {
        let r = wait(b.as_ref(), id, 120).await;
        assert_eq!(r.result, Some(json!(i + 1)), "{id}");
    }
    wait_for(
        "all 500 dead letters",
        Duration::from_secs(60),
        async || {
            let dead = b.queue_stats("default").await.expect("queue stats").dead;
            if dead >= 500 { Ok(()) } else { Err(dead) }
        },
    )
    .await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("flooded worker peak RSS: {} MiB", hwm_kib / 1024);
    w.signal("-TERM");
    w.exit_within(Duration::from_secs(10)).await;
    let dead = b.dlq_list("default", 1000).await.unwrap();
    let big: Vec<_> = dead
        .iter()
        .filter(|d| d.reason.starts_with("message too large"))
        .collect();
    assert_eq!(big.len(), 20);
    assert_eq!(big[0].reason, "message too large: 20.0 MiB, limit 16.0 MiB");
    assert!(big.iter().all(|d| d.payload.len() <= 1024));
    // The bound the README states: the byte budget (64 MiB) and one
    // oversized message in transit, plus the runtime.
    assert!(hwm_kib < 256 * 1024, "worker peaked at {hwm_kib} KiB");
}

/// Redis down for longer than the visibility timeout, several times, while
/// workers are busy: every lease looks expired when it comes back, yet no
/// task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_longer_than_the_visibility_timeout_run_nothing_twice() {
    let persist = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut server = PrivateRedis::start_with(&persist);
    let f = Fixture::on(&server.url(), &["misbehave"]).await;
    let b = &f.broker;
    let workers: Vec<RunningWorker> = (0..3)
        .map(|i| {
            let mut c = quick_config(&format!("w{i}"));
            c.visibility_timeout = Duration::from_secs(2);
            f.worker(c)
        })
        .collect();
    let ids = client::submit_many(
        b.as_ref(),
        (0..240)
            .map(|_| req("misbehave.sleep", json!([60])))
            .collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    let results: Vec<String> = ids
        .iter()
        .map(|id| f.key(&format!("result:{id}")))
        .collect();
    let mut done = 0;
    for round in 1..=3 {
        // Workers busy (again, after the last outage): more tasks done
        // since then, unless all are.
        let what = format!("the workers to make progress before outage {round}");
        let before = done;
        done = wait_for(&what, Duration::from_secs(60), async || {
            // Just after a restart Redis answers LOADING: not yet, not a failure.
            let Ok(stored) = redis::cmd("MGET")
                .arg(&results)
                .query::<Vec<Option<String>>>(&mut f.redis())
            else {
                return None;
            };
            let now = stored.iter().flatten().count();
            (now > before || now == ids.len()).then_some(now)
        })
        .await;
        // Down for twice the visibility timeout.
        server = server.outage(Duration::from_secs(4), &persist);
    }
    for id in &ids {
        assert_eq!(wait(b.as_ref(), id, 120).await.state, TaskState::Success);
    }
    let mut runs = 0;
    for w in workers {
        runs += w.stop().await.processed;
    }
    assert_eq!(runs, ids.len() as u64, "some tasks ran more than once");
    drop(server);
}

/// A worker killed while holding messages: another worker, saturated with
/// a backlog, takes them over within about a visibility timeout and runs
/// them ahead of its backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_run_ahead_of_a_backlog() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let orphans = client::submit_many(
        b.as_ref(),
        (0..2)
            .map(|_| req("misbehave.sleep", json!([1500])))
            .collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    let mut doomed = f.worker_process(
        "doomed",
        &["--concurrency", "2", "--visibility-timeout", "2s"],
    );
    doomed.ready(b.as_ref()).await;
    wait_for(
        "the doomed worker to take its two tasks",
        Duration::from_secs(20),
        async || {
            let held = b
                .queue_stats("default")
                .await
                .expect("queue stats")
                .in_flight;
            if held >= 2 { Ok(()) } else { Err(held) }
        },
    )
    .await;
    doomed.signal("-KILL");
    doomed.exit_within(Duration::from_secs(5)).await;

    let backlog = client::submit_many(
        b.as_ref(),
        (0..80)
            .map(|_| req("misbehave.sleep", json!([300])))
            .collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    let mut config = quick_config("busy");
    config.visibility_timeout = Duration::from_secs(2);
    let worker = f.worker(config);
    for id in &orphans {
        let r = wait(b.as_ref(), id, 60).await;
        assert_eq!((r.state, r.worker.as_str()), (TaskState::Success, "busy"));
    }
    let mut backlog_done = 0;
    for id in &backlog {
        if client::result(b.as_ref(), id).await.unwrap().is_some() {
            backlog_done += 1;
        }
    }
    assert!(
        backlog_done < backlog.len() / 2,
        "orphans waited for the backlog ({backlog_done} of {} done first)",
        backlog.len()
    );
    for id in &backlog {
        wait(b.as_ref(), id, 60).await;
    }
    worker.stop().await;
}

/// SIGTERM: a worker stops taking over other workers' messages once it
/// is shutting down, hands back what it holds, and removes its consumer;
/// consumers of dead workers are removed once they hold nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_takes_nothing_over_and_consumers_are_removed() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let vt = ["--visibility-timeout", "3s"];
    let stream = f.key("queue:{default}");
    // The group's consumers: (name, messages held).
    let consumers = || -> Vec<(String, u64)> {
        let rows: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("workers")
            .query(&mut f.redis())
            .unwrap_or_default();
        rows.into_iter()
            .map(|r| {
                let field = |name: &str| {
                    let i = r.iter().position(
                        |v| matches!(v, redis::Value::BulkString(b) if b == name.as_bytes()),
                    )?;
                    r.get(i + 1).cloned()
                };
                let name = match field("name") {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    _ => String::new(),
                };
                let pending = match field("pending") {
                    Some(redis::Value::Int(n)) => n as u64,
                    _ => 0,
                };
                (name, pending)
            })
            .collect()
    };
    let holds_one = async |who: &str| {
        let what = format!("consumer {who} to hold its task");
        wait_for(&what, Duration::from_secs(20), async || {
            let all = consumers();
            if all.iter().any(|(n, pending)| n == who && *pending == 1) {
                Ok(())
            } else {
                Err(all)
            }
        })
        .await
    };

    // A dead worker holding a long task.
    let mut dead = f.worker_process("dead", &vt);
    dead.ready(b.as_ref()).await;
    let long = submit(b.as_ref(), "misbehave.sleep", json!([4000])).await;
    holds_one("dead").await;
    dead.signal("-KILL");
    dead.exit_within(Duration::from_secs(5)).await;

    // A worker shutting down (running a long task in its grace period)
    // while the orphan becomes claimable must not take it.
    let mut leaving = f.worker_process("leaving", &vt);
    leaving.ready(b.as_ref()).await;
    let its_own = submit(b.as_ref(), "misbehave.sleep", json!([4000])).await;
    holds_one("leaving").await;
    leaving.signal("-TERM");
    leaving.exit_within(Duration::from_secs(20)).await;
    assert_eq!(wait(b.as_ref(), &its_own, 5).await.worker, "leaving");
    let after = consumers();
    assert!(
        !after.iter().any(|(n, _)| n == "leaving"),
        "consumer not removed: {after:?}"
    );
    assert!(
        after.iter().any(|(n, p)| n == "dead" && *p == 1),
        "{after:?}"
    );

    // A live worker takes the orphan over and prunes the dead consumer.
    let mut live = f.worker_process("live", &vt);
    assert_eq!(wait(b.as_ref(), &long, 30).await.worker, "live");
    wait_for(
        "the dead consumer to be pruned",
        Duration::from_secs(20),
        async || {
            let all = consumers();
            if all.iter().any(|(n, _)| n == "dead") {
                Err(all)
            } else {
                Ok(())
            }
        },
    )
    .await;
    live.signal("-TERM");
    live.exit_within(Duration::from_secs(10)).await;
    assert!(consumers().is_empty(), "{:?}", consumers());
}

/// Waiters survive a Redis restart: `submit --wait` prints the task id at
/// once and the result once a worker runs it after the restart; a broker
/// that stays away past the deadline gets exit status 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_survive_a_redis_restart() {
    let persist = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = PrivateRedis::start_with(&persist);
    let f = Fixture::on(&server.url(), &["math"]).await;
    let b = &f.broker;
    let spawn = |args: &[&str]| f.cli().args(args).spawn();
    let submitter = spawn(&[
        "submit",
        "math.add",
        "[20, 22]",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    // The id is on the queue (and on stderr) before the restart.
    wait_for(
        "the submit to enqueue",
        Duration::from_secs(10),
        async || b.queue_stats("default").await.map(|s| s.ready).unwrap_or(0) > 0,
    )
    .await;
    let server = server.outage(Duration::from_secs(2), &persist);
    let _w = f.worker_process("after", &[]);
    let o = submitter
        .wait_with_output()
        .expect("wait for the submitter");
    let (out, err) = (o.stdout_text(), o.stderr_text());
    assert_eq!((o.status.code(), out.as_str()), (Some(0), "42\n"), "{err}");
    let id = err.lines().next().unwrap_or_default().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{err}");
    // `result --wait` across another restart, for a finished task.
    let waiter = spawn(&["result", &id, "--wait", "--wait-timeout", "30s"]);
    let server = server.outage(Duration::from_secs(1), &persist);
    let o = waiter.wait_with_output().expect("wait for the waiter");
    assert_eq!(o.status.code(), Some(0), "{}", o.stderr_text());
    drop(server);

    // Gone for good: its own exit status and message, after the deadline.
    let started = Instant::now();
    let o = spawn(&["result", "nope", "--wait", "--wait-timeout", "2s"])
        .wait_with_output()
        .expect("wait for the waiter");
    let err = o.stderr_text();
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.starts_with("error: broker unreachable: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A worker that cannot store results (Redis out of memory) for longer
/// than its visibility timeout stands down: it says so in its log and
/// metrics, stops renewing its leases so live workers can take its
/// messages, and resumes once writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_store_results_stands_down() {
    let server = PrivateRedis::start();
    let f = Fixture::on(&server.url(), &["misbehave"]).await;
    let b = &f.broker;
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = f.worker_process(
        "starved",
        &["--visibility-timeout", "2s", "--metrics", &addr],
    );
    w.ready(b.as_ref()).await;
    let id = submit(b.as_ref(), "misbehave.sleep", json!([1000])).await;
    wait_for("the task to start", Duration::from_secs(20), async || {
        b.queue_stats("default")
            .await
            .expect("queue stats")
            .in_flight
            > 0
    })
    .await;
    let mut admin = f.redis();
    let config = |conn: &mut redis::Connection, value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(value)
            .query(conn)
            .unwrap();
    };
    config(&mut admin, "1");
    // The task ends, its result cannot be stored: after the visibility
    // timeout the worker reports it and lets its lease lapse.
    let healthy = |v: u8| format!("celeriac_worker_healthy {v}");
    wait_for(
        "the worker to report itself unhealthy",
        Duration::from_secs(20),
        async || http_get(port, "/metrics").contains(&healthy(0)),
    )
    .await;
    let stream = f.key("queue:{default}");
    let idle_ms = |conn: &mut redis::Connection| -> u64 {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("workers")
            .arg("-")
            .arg("+")
            .arg(10)
            .query(conn)
            .expect("XPENDING");
        rows.first().map_or(0, |r| r.2)
    };
    // The behaviour under test is time passing without renewals: once it
    // reports the problem, the worker lets its lease lapse.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = idle_ms(&mut admin);
    assert!(idle > 2_500, "lease still renewed: idle {idle} ms");
    let log = w.log();
    assert!(log.contains("cannot store results for"), "{log}");

    // Memory back: the result is stored and the worker is healthy again.
    config(&mut admin, "0");
    assert_eq!(wait(b.as_ref(), &id, 30).await.state, TaskState::Success);
    wait_for(
        "the worker to be healthy again",
        Duration::from_secs(20),
        async || http_get(port, "/metrics").contains(&healthy(1)),
    )
    .await;
    drop(w);
    drop(server);
}

/// A write Redis refuses for good (here: someone made the dead-letter and
/// delayed keys the wrong type) fails only the completion that needs it,
/// which ends as a FAILURE naming the cause; the rest of the batch and
/// later tasks are stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_redis_refuses_fail_only_their_completion() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let b = &f.broker;
    let mut conn = f.redis();
    for key in ["dlq:{default}", "delayed:{default}"] {
        let _: () = redis::cmd("SET")
            .arg(f.key(key))
            .arg("not a stream")
            .query(&mut conn)
            .unwrap();
    }
    let worker = f.worker(quick_config("stubborn"));
    let fatal = submit(b.as_ref(), "misbehave.fatal", json!(["no"])).await;
    let flaky = submit(b.as_ref(), "misbehave.flaky", json!([5])).await;
    let ok: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(submit(b.as_ref(), "math.add", json!([i, 1])).await);
        }
        ids
    };
    for id in [&fatal, &flaky] {
        let r = wait(b.as_ref(), id, 30).await;
        let e = r.error.unwrap();
        assert_eq!(
            (r.state, e.kind.as_str()),
            (TaskState::Failure, "storage"),
            "{id}"
        );
        assert!(
            e.message.starts_with("could not store result: WRONGTYPE"),
            "{}",
            e.message
        );
    }
    for (i, id) in ok.iter().enumerate() {
        assert_eq!(wait(b.as_ref(), id, 30).await.result, Some(json!(i + 1)));
    }
    // Nothing left held: every completion ended one way or another.
    let (held, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(f.key("queue:{default}"))
        .arg("workers")
        .query(&mut conn)
        .unwrap();
    assert_eq!(held, 0);
    worker.stop().await;
}

/// Long tasks spread over the workers: a worker holds no more than it can
/// start until it has seen how long tasks take, and then only about 50 ms
/// of work per slot (with a fixed prefetch of 64, one of three workers took
/// 11 of 12 long tasks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tasks_spread_over_workers() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let ids = client::submit_many(
        b.as_ref(),
        (0..12)
            .map(|_| req("misbehave.sleep", json!([1500])))
            .collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    let workers: Vec<RunningWorker> = (0..3)
        .map(|i| f.worker(quick_config(&format!("w{i}"))))
        .collect();
    let mut per_worker = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        *per_worker
            .entry(wait(b.as_ref(), id, 60).await.worker)
            .or_default() += 1;
    }
    for w in workers {
        w.stop().await;
    }
    // Two slots each: four apiece when shared fairly; never most of them.
    assert!(per_worker.values().all(|&n| n <= 6), "{per_worker:?}");
    assert_eq!(per_worker.len(), 3, "{per_worker:?}");
}
