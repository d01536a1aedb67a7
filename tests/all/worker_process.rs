//! The real `celeriac` binary in separate processes against a real Redis:
//! the upload / submit / worker / result flow, SIGKILL during a batch,
//! SIGTERM with work in flight, a Redis restart, and the no-Redis demo.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use crate::support::{
    Fixture, Outcome, PrivateRedis, TestCommand, WorkerProcess, component, free_port, http_get,
    wait_for, workspace_root,
};
use celeriac_client::{self as client, SubmitOptions, TaskRequest};
use celeriac_protocol::record::TaskState;
use serde_json::json;

fn stdout(o: &Output) -> String {
    o.stdout_text()
}

fn stderr(o: &Output) -> String {
    o.stderr_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_submit_worker_result_across_processes() {
    let f = Fixture::new(&[]).await;
    let publisher = &f.publisher;
    let run = |args: &[&str]| f.celeriac(args);
    let trust = publisher.trust_dir();
    let trust_s = trust.to_str().unwrap();

    let math = publisher.signed_file("math");
    let math_s = math.to_str().unwrap();
    let up = run(&["upload", math_s, "--trust", trust_s]);
    assert!(up.status.success(), "{}", stderr(&up));
    let line = stdout(&up);
    assert!(
        line.starts_with("math sha256:") && line.trim().len() == "math sha256:".len() + 64,
        "{line}"
    );
    let again = run(&["upload", math_s, "--trust", trust_s]);
    assert_eq!(stdout(&again), line);
    // Unsigned: refused, nothing stored.
    let bare = publisher.dir.path().join("bare.wasm");
    std::fs::copy(&math, &bare).unwrap();
    let o = run(&["upload", bare.to_str().unwrap(), "--trust", trust_s]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("refused: unsigned"),
        "{}",
        stderr(&o)
    );

    let listed = stdout(&run(&["components"]));
    assert!(
        listed.contains("math") && listed.contains(line.split_whitespace().nth(1).unwrap()),
        "{listed}"
    );

    // Unknown module: clear error, nothing enqueued.
    let o = run(&["submit", "nosuch.add", "[1, 2]"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown module `nosuch`"),
        "{}",
        stderr(&o)
    );

    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let worker = f.worker_process("proc-w1", &["--metrics", &metrics_addr]);
    let broker = &f.broker;
    worker.ready(broker.as_ref()).await;

    let o = run(&["submit", "math.add", "[2, 3]", "--wait"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "5\n"),
        "{}",
        stderr(&o)
    );
    let o = run(&["submit", "math.add", "[2]", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    // The task id first (as soon as it is queued), then the cause.
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(uuid::Uuid::parse_str(lines[0]).is_ok(), "{err}");
    assert_eq!(
        lines[1],
        "error: invalid-input: add() missing required argument `b`"
    );

    let o = run(&["submit", "math.mul", "[6]", "--kwargs", r#"{"b": 7}"#]);
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 36, "not a task id: {id}");
    let o = run(&["result", &id, "--wait", "--wait-timeout", "20s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (record["state"].as_str(), &record["result"]),
        (Some("SUCCESS"), &json!(42))
    );
    assert_eq!(record["worker"], "proc-w1");
    let o = run(&["result", "no-such-id"]);
    assert!(stdout(&o).contains("PENDING"));

    // Prometheus metrics: tasks by state and name, runtime histogram, queue depth.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains(r#"celeriac_tasks_total{task="math.add",state="SUCCESS"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"celeriac_tasks_total{task="math.add",state="FAILURE"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("celeriac_task_runtime_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("celeriac_worker_slots_busy"), "{metrics}");

    let status = stdout(&run(&["status"]));
    assert!(
        status.contains("default") && status.contains("proc-w1"),
        "{status}"
    );
    let dead = stdout(&run(&["dlq", "list"]));
    assert!(
        dead.contains("math.add") && dead.contains("missing required argument"),
        "{dead}"
    );
    let purged = stdout(&run(&["dlq", "purge"]));
    assert_eq!(purged.trim(), "purged 1 dead letters from default");

    // SIGTERM: a clean, prompt exit and the heartbeat removed.
    let mut worker = worker;
    worker.signal("-TERM");
    let status = worker.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert!(broker.workers().await.unwrap().is_empty());
}

/// Two workers share a batch of 1,000 tasks; one is SIGKILLed mid-batch;
/// every task still ends with a SUCCESS result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_batch_loses_nothing() {
    let f = Fixture::new(&["math"]).await;
    let broker = &f.broker;

    let opts = [
        "--concurrency",
        "2",
        "--prefetch",
        "32",
        "--visibility-timeout",
        "2s",
    ];
    let mut a = f.worker_process("victim", &opts);
    let b = f.worker_process("survivor", &opts);
    a.ready(broker.as_ref()).await;
    b.ready(broker.as_ref()).await;

    // Half of them CPU-bound (fib 30, a few ms each) so the kill lands mid-batch.
    let requests: Vec<TaskRequest> = (0..1000)
        .map(|i| TaskRequest {
            task: if i % 2 == 0 {
                "math.fib".into()
            } else {
                "math.add".into()
            },
            args: if i % 2 == 0 {
                vec![json!(30)]
            } else {
                vec![json!(i), json!(1)]
            },
            kwargs: Default::default(),
        })
        .collect();
    let ids = client::submit_many(broker.as_ref(), requests, &SubmitOptions::default())
        .await
        .unwrap();

    // Kill the victim as soon as it has finished some of the work.
    wait_for(
        "the victim to finish 10 tasks",
        Duration::from_secs(60),
        async || {
            let mut by_victim = 0;
            for id in &ids[..200] {
                let r = client::result(broker.as_ref(), id)
                    .await
                    .expect("read a record");
                if r.is_some_and(|r| r.worker == "victim") {
                    by_victim += 1;
                    if by_victim >= 10 {
                        return Ok(());
                    }
                }
            }
            Err(format!("{by_victim} by the victim"))
        },
    )
    .await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let mut finished_at_kill = 0;
    for id in &ids {
        if client::result(broker.as_ref(), id).await.unwrap().is_some() {
            finished_at_kill += 1;
        }
    }
    assert!(
        finished_at_kill < 1000,
        "the kill came after the batch was done"
    );
    eprintln!("killed the victim with {finished_at_kill}/1000 tasks finished");

    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = client::wait(broker.as_ref(), id, Duration::from_secs(60))
            .await
            .unwrap();
        let r = r.unwrap_or_else(|| panic!("task {i} ({id}) has no result"));
        assert_eq!(r.state, TaskState::Success, "task {i}: {r:?}");
        let expected = if i % 2 == 0 {
            json!(832040)
        } else {
            json!(i + 1)
        };
        assert_eq!(r.result, Some(expected), "task {i}");
        *by_worker.entry(r.worker).or_default() += 1;
    }
    assert!(
        by_worker.get("victim").copied().unwrap_or(0) > 0,
        "{by_worker:?}"
    );
    assert!(
        by_worker.get("survivor").copied().unwrap_or(0) > 0,
        "{by_worker:?}"
    );
    let stats = broker.queue_stats("default").await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.dead),
        (0, 0, 0),
        "{stats:?}"
    );
    drop(b);
}

/// SIGTERM while a task runs: it finishes, its result is stored, the
/// process exits 0; a second signal is not needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work() {
    let f = Fixture::new(&["misbehave"]).await;
    let broker = &f.broker;
    let mut w = f.worker_process("term", &["--concurrency", "1"]);
    w.ready(broker.as_ref()).await;
    let req = |ms: u64| TaskRequest {
        task: "misbehave.sleep".into(),
        args: vec![json!(ms)],
        kwargs: Default::default(),
    };
    let ids = client::submit_many(
        broker.as_ref(),
        vec![req(3000), req(10)],
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    // Wait until the first task is running.
    wait_for(
        "the first task to start",
        Duration::from_secs(20),
        async || {
            let workers = broker.workers().await.expect("list workers");
            workers.iter().any(|x| x.busy > 0)
        },
    )
    .await;
    w.signal("-TERM");
    let status = w.exit_within(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    let first = client::result(broker.as_ref(), &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.state, first.result),
        (TaskState::Success, Some(json!(3000)))
    );
    // The one it had not started is back on the queue, not lost.
    assert!(
        client::result(broker.as_ref(), &ids[1])
            .await
            .unwrap()
            .is_none()
    );
    let stats = broker.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (1, 0), "{stats:?}");
}

/// Redis restarts (losing everything, as a cache-only Redis does): the
/// worker reconnects with backoff and goes on consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_redis_restart() {
    let server = PrivateRedis::start();
    let f = Fixture::on(&server.url(), &["math"]).await;
    let broker = &f.broker;
    let w = f.worker_process("phoenix", &[]);
    w.ready(broker.as_ref()).await;

    let add = |a: i64| TaskRequest {
        task: "math.add".into(),
        args: vec![json!(a), json!(1)],
        kwargs: Default::default(),
    };
    let id = client::submit(broker.as_ref(), add(1), &SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client::wait(broker.as_ref(), &id, Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap()
            .result,
        Some(json!(2))
    );

    let server = server.restart();
    // Everything was lost with the old server: upload again, then submit.
    let broker = celeriac_broker::connect(f.url(), f.prefix())
        .await
        .expect("connect to the restarted Redis");
    f.publisher.upload(broker.as_ref(), &["math"]).await;
    let id = client::submit(broker.as_ref(), add(41), &SubmitOptions::default())
        .await
        .unwrap();
    let r = client::wait(broker.as_ref(), &id, Duration::from_secs(30))
        .await
        .unwrap();
    let r = r.unwrap_or_else(|| panic!("no result after the restart; worker log:\n{}", w.log()));
    assert_eq!(
        (r.state, r.result, r.worker.as_str()),
        (TaskState::Success, Some(json!(42)), "phoenix")
    );
    drop(w);
    drop(server);
}

/// `celeriac demo` runs the whole flow in one process, with no Redis.
#[test]
fn demo_needs_no_redis() {
    let cache = tempfile::tempdir().expect("a cache directory");
    component("math");
    let o = TestCommand::new()
        .current_dir(&workspace_root())
        .args(["demo", "--tasks", "300"])
        .broker("redis://127.0.0.1:1")
        .cache(cache.path())
        .output();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("300 tasks in"), "{out}");
    assert!(
        out.contains("270 succeeded, 30 failed, 0 unfinished"),
        "{out}"
    );
}

/// Passwords in the URL authenticate, and never show in errors or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_urls_authenticate_and_stay_secret() {
    let server = PrivateRedis::start_with(&["--requirepass", "s3cret-pass"]);
    let good = format!("redis://:s3cret-pass@127.0.0.1:{}", server.port);
    let bad = format!("redis://:wrong-pass@127.0.0.1:{}", server.port);
    let f = Fixture::on(&good, &[]).await;
    let broker = &f.broker;
    assert!(broker.queues().await.unwrap().is_empty());
    assert!(
        !broker.describe().contains("s3cret"),
        "{}",
        broker.describe()
    );

    let celeriac = |url: &str, args: &[&str]| f.cli().broker(url).args(args).output();
    let o = celeriac(&bad, &["status"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cannot reach the broker at redis://:***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("wrong-pass"), "{err}");
    let o = celeriac(&good, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `rediss://`: TLS to a Redis whose certificate a private CA signed
/// (trusted through CELERIAC_REDIS_CA), the full flow across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_with_a_private_ca() {
    let certs = crate::support::TestCa::new();
    let d = certs.dir();
    let port = free_port();
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let server = PrivateRedis::on_tls(
        port,
        &path("server.pem"),
        &path("server.key"),
        &path("ca.pem"),
    );
    let url = format!("rediss://localhost:{port}");
    let ca = path("ca.pem");
    // Everything over TLS goes through the real binary, with the CA in its
    // environment (this process's environment is left alone).
    let cache = tempfile::tempdir().expect("a cache directory");
    let tls = || {
        let mut command = TestCommand::new();
        command
            .broker(&url)
            .prefix("tls:")
            .cache(cache.path())
            .env("CELERIAC_REDIS_CA", &ca);
        command
    };
    let celeriac_tls = |args: &[&str]| tls().args(args).output();
    let publisher = crate::support::Publisher::new();
    let math = publisher.signed_file("math");
    let trust = publisher.trust_dir();
    let o = celeriac_tls(&[
        "upload",
        math.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut w = WorkerProcess::start(tls(), &trust, "tls-w", cache.path(), &[]);
    let o = celeriac_tls(&[
        "submit",
        "math.add",
        "[40, 2]",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "42\n"),
        "{}",
        stderr(&o)
    );

    // Without the CA the certificate is refused, with a clear error.
    let o = TestCommand::new().broker(&url).arg("status").output();
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stderr(&o).contains("cannot reach the broker at rediss://localhost"),
        "{}",
        stderr(&o)
    );
    w.signal("-TERM");
    w.exit_within(Duration::from_secs(10)).await;
    drop(server);
}
