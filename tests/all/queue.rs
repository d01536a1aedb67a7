//! The queue against a real Redis (and the in-memory broker where the same
//! semantics apply): acks late, leases, delays, retries, dead letters,
//! expiry. In-process workers; see worker_process.rs for separate processes.

use std::time::{Duration, Instant, SystemTime};

use crate::support::{
    Fixture, Publisher, RunningWorker, fetch_limits, finished, quick_config, reached,
    request as req, submit, upload_options, wait_for,
};
use celeriac_broker::{Broker, Claim, Outgoing};
use celeriac_client::{self as client, SubmitOptions};
use celeriac_protocol::MessageLimits;
use celeriac_protocol::now_ms;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_sandbox::SandboxConfig;
use serde_json::json;

/// The final record of task `id`, within 30 s.
async fn wait(b: &dyn Broker, id: &str) -> ResultRecord {
    finished(b, id, Duration::from_secs(30)).await
}

/// The core flow on both brokers: submit, run, result; a typed failure
/// (no retry) and a retried one.
async fn core_flow(f: Fixture) {
    let b = &f.broker;
    let worker = f.worker(quick_config("core"));
    let opts = SubmitOptions::default();

    let id = submit(b.as_ref(), "math.add", json!([2, 3]), &opts).await;
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(
        (r.state, r.result.clone()),
        (TaskState::Success, Some(json!(5))),
        "{r:?}"
    );
    assert_eq!(r.worker, "core");
    assert!(r.finished_at.unwrap() >= r.submitted_at);

    // invalid-input and fatal failures are not retried, and are dead-lettered.
    let id = submit(b.as_ref(), "math.add", json!([2]), &opts).await;
    let r = wait(b.as_ref(), &id).await;
    assert_eq!((r.state, r.retries), (TaskState::Failure, 0));
    let e = r.error.unwrap();
    assert_eq!(e.kind, "invalid-input");
    assert_eq!(
        e.message,
        "invalid-input: add() missing required argument `b`"
    );
    let id = submit(b.as_ref(), "misbehave.fatal", json!(["nope"]), &opts).await;
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(
        (r.state, r.retries, r.error.unwrap().kind.as_str()),
        (TaskState::Failure, 0, "fatal")
    );

    // A retry failure retries with backoff until it succeeds.
    let id = submit(b.as_ref(), "misbehave.flaky", json!([2]), &opts).await;
    let r = wait(b.as_ref(), &id).await;
    assert_eq!((r.state, r.retries), (TaskState::Success, 2), "{r:?}");
    assert_eq!(r.result, Some(json!({"retries": 2})));

    let dead = b.dlq_list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_flow_on_redis() {
    core_flow(Fixture::new(&["math", "misbehave"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_flow_in_memory() {
    core_flow(Fixture::in_memory(&["math", "misbehave"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_module_enqueues_nothing() {
    let f = Fixture::new(&[]).await;
    let b = &f.broker;
    let err = client::submit(
        b.as_ref(),
        req("nosuch.add", json!([1, 2])),
        &SubmitOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with("unknown module `nosuch`"),
        "{err}"
    );
    assert!(b.queues().await.unwrap().is_empty());
}

/// Retries and traps retry with backoff until max retries, then FAILURE;
/// a task waiting out its backoff does not hold a worker slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_without_blocking_slots() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let b = &f.broker;
    let mut config = quick_config("retrier");
    config.concurrency = 1;
    config.backoff.base = Duration::from_millis(400);
    config.backoff.max = Duration::from_secs(2);
    config.backoff.jitter = false;
    let worker = f.worker(config);

    let opts = SubmitOptions {
        max_retries: 2,
        ..SubmitOptions::default()
    };
    let t = Instant::now();
    let flaky = submit(b.as_ref(), "misbehave.flaky", json!([5]), &opts).await;
    // Once it has failed once, show the single slot is free.
    reached(b.as_ref(), &flaky, TaskState::Retry).await;
    let add = submit(b.as_ref(), "math.add", json!([1, 1]), &opts).await;
    let r = wait(b.as_ref(), &add).await;
    assert_eq!(r.state, TaskState::Success);
    let mid = client::result(b.as_ref(), &flaky).await.unwrap().unwrap();
    assert_eq!(mid.state, TaskState::Retry, "{mid:?}");
    assert!(mid.retry_at.is_some());

    let r = wait(b.as_ref(), &flaky).await;
    // Delays of 400 ms then 800 ms: exponential, no jitter.
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "retried too early: {:?}",
        t.elapsed()
    );
    assert_eq!((r.state, r.retries), (TaskState::Failure, 2), "{r:?}");
    assert!(
        r.error
            .unwrap()
            .message
            .ends_with("(gave up after 2 retries)")
    );

    // A trap (panic) is retried too.
    let id = submit(
        b.as_ref(),
        "misbehave.panic",
        json!(["again"]),
        &SubmitOptions {
            max_retries: 1,
            ..opts.clone()
        },
    )
    .await;
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(
        (r.state, r.retries, r.error.as_ref().unwrap().kind.as_str()),
        (TaskState::Failure, 1, "trap"),
        "{r:?}"
    );

    // Limits are not retried.
    let limited = SubmitOptions {
        limits: MessageLimits {
            timeout_ms: Some(200),
            ..Default::default()
        },
        ..opts
    };
    let id = submit(b.as_ref(), "misbehave.spin", json!([]), &limited).await;
    let r = wait(b.as_ref(), &id).await;
    let e = r.error.unwrap();
    assert_eq!(
        (r.state, r.retries, e.kind.as_str()),
        (TaskState::Failure, 0, "time-limit")
    );
    assert_eq!(e.message, "time limit exceeded (200.0ms)");
    worker.stop().await;
}

/// Countdown and eta wait in Redis (not in a worker) and run no earlier
/// than asked; a worker restart in between neither loses nor duplicates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_waits_in_redis_and_survives_restarts() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;

    let eta = SystemTime::now() + Duration::from_millis(1500);
    let eta_ms = celeriac_protocol::clock::unix_ms(eta);
    let opts = SubmitOptions {
        eta: Some(eta),
        ..SubmitOptions::default()
    };
    let id = submit(b.as_ref(), "math.mul", json!([6, 7]), &opts).await;
    let stats = b.queue_stats("default").await.unwrap();
    assert_eq!((stats.delayed, stats.ready), (1, 0));

    // A worker comes and goes before the task is due: it has been running
    // (its keeper promoting what is due) for a heartbeat interval, i.e.
    // its heartbeat has been renewed once.
    let first = f.worker(quick_config("early"));
    let beat = async || {
        let workers = b.workers().await.expect("list workers");
        workers.iter().find(|w| w.id == "early").map(|w| w.seen_at)
    };
    let since = wait_for("worker early's heartbeat", Duration::from_secs(10), beat).await;
    wait_for(
        "worker early's second heartbeat",
        Duration::from_secs(10),
        async || beat().await.filter(|&at| at > since),
    )
    .await;
    let summary = first.stop().await;
    assert_eq!(summary.processed, 0);
    assert_eq!(b.queue_stats("default").await.unwrap().delayed, 1);

    let second = f.worker(quick_config("late"));
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(
        (r.state, r.result.clone()),
        (TaskState::Success, Some(json!(42)))
    );
    assert!(
        r.started_at.unwrap() >= eta_ms,
        "ran {} ms early",
        eta_ms - r.started_at.unwrap()
    );
    let summary = second.stop().await;
    assert_eq!(summary.processed, 1);
    let stats = b.queue_stats("default").await.unwrap();
    assert_eq!((stats.delayed, stats.ready, stats.in_flight), (0, 0, 0));
}

/// An expired task is not run and is recorded as REVOKED with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tasks_are_revoked() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;
    let opts = SubmitOptions {
        expires: Some(SystemTime::now() + Duration::from_millis(100)),
        ..SubmitOptions::default()
    };
    let id = submit(b.as_ref(), "math.add", json!([1, 2]), &opts).await;
    // The behaviour under test: the expiry passes before any worker runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = f.worker(quick_config("w"));
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(r.state, TaskState::Revoked);
    assert!(r.result.is_none());
    assert!(r.error.unwrap().message.starts_with("expired "));
    assert_eq!(worker.stop().await.processed, 0);
}

/// A task that outlives the visibility timeout keeps its lease: a second
/// idle worker never gets it, and it runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_for_long_tasks() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let config = |id: &str| {
        let mut c = quick_config(id);
        c.visibility_timeout = Duration::from_millis(600);
        c
    };
    let mut tracking = config("a");
    tracking.track_started = true;
    let a = f.worker(tracking);
    let id = submit(
        b.as_ref(),
        "misbehave.sleep",
        json!([2500]),
        &SubmitOptions::default(),
    )
    .await;
    let running = reached(b.as_ref(), &id, TaskState::Started).await;
    assert_eq!(running.worker, "a");
    let other = f.worker(config("b"));
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(
        (r.state, r.result.clone()),
        (TaskState::Success, Some(json!(2500)))
    );
    let (sa, sb) = (a.stop().await, other.stop().await);
    assert_eq!(
        sa.processed + sb.processed,
        1,
        "ran {} + {} times",
        sa.processed,
        sb.processed
    );
    assert_eq!(r.worker, "a");
}

/// A consumer that takes messages and dies (never acks, never renews):
/// another worker reclaims them after the visibility timeout and completes
/// them; one delivered too often goes to the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_messages_are_reclaimed_and_poison_is_dead_lettered() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;
    b.declare(&["default".into()]).await.unwrap();
    let ids = client::submit_many(
        b.as_ref(),
        (0..5).map(|i| req("math.add", json!([i, 100]))).collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    // The "crashed" consumer takes all five.
    let taken = b
        .fetch(
            &["default".into()],
            "crashed",
            fetch_limits(10),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 5);
    assert_eq!(b.queue_stats("default").await.unwrap().in_flight, 5);

    let mut config = quick_config("rescuer");
    config.visibility_timeout = Duration::from_millis(500);
    let worker = f.worker(config);
    for (i, id) in ids.iter().enumerate() {
        let r = wait(b.as_ref(), id).await;
        assert_eq!(r.result, Some(json!(i as i64 + 100)));
        assert_eq!(r.worker, "rescuer");
    }
    worker.stop().await;

    // Poison: a message whose consumers keep dying is dead-lettered once it
    // has been delivered more than max_deliveries times.
    let id = submit(
        b.as_ref(),
        "math.add",
        json!([1, 1]),
        &SubmitOptions::default(),
    )
    .await;
    for _ in 0..2 {
        let got = b
            .fetch(
                &["default".into()],
                "crashed",
                fetch_limits(1),
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        if got.is_empty() {
            // Delivered again to the same consumer (as a restarted worker
            // with the same id would take it).
            let pending = b
                .pending("default", "other", Duration::ZERO, 1)
                .await
                .unwrap();
            let claims = vec![Claim {
                id: pending[0].id.clone(),
                min_idle_ms: 0,
                deliveries: pending[0].deliveries,
            }];
            let again = b
                .claim("default", "crashed", &claims, 1 << 20)
                .await
                .unwrap();
            assert_eq!(again.len(), 1);
        }
    }
    // The behaviour under test: the holder's lease (a 500 ms visibility
    // timeout) lapses before the judge starts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut config = quick_config("judge");
    config.visibility_timeout = Duration::from_millis(500);
    config.max_deliveries = 2;
    let worker = f.worker(config);
    let r = wait(b.as_ref(), &id).await;
    assert_eq!(r.state, TaskState::Failure);
    assert_eq!(r.error.as_ref().unwrap().kind, "poison");
    let dead = b.dlq_list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .starts_with("delivered 3 times without completing"),
        "{}",
        dead[0].reason
    );
    assert_eq!(worker.stop().await.processed, 0);
}

/// Malformed messages and components that fail verification go to the
/// dead-letter queue with the reason; the worker keeps going; dead letters
/// can be listed, requeued and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_the_reason() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;

    // Signed by a key the worker does not trust (uploaded through a
    // registry that does).
    let stranger = Publisher::new();
    stranger.upload(b.as_ref(), &["text"]).await;

    let worker = f.worker(quick_config("strict"));
    let zeros = "0".repeat(64);
    let future = format!(
        r#"{{"v": 99, "id": "x2", "task": "math.add", "queue": "default", "digest": "sha256:{zeros}"}}"#
    );
    let junk = [
        "not json at all",
        r#"{"v": 1, "id": "x1"}"#,
        future.as_str(),
    ];
    b.enqueue(
        &junk
            .iter()
            .map(|j| Outgoing {
                queue: "default".into(),
                payload: j.to_string(),
                due_ms: None,
            })
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let untrusted = submit(
        b.as_ref(),
        "text.upper",
        json!(["hi"]),
        &SubmitOptions::default(),
    )
    .await;
    let r = wait(b.as_ref(), &untrusted).await;
    assert_eq!(r.state, TaskState::Failure);
    let msg = r.error.unwrap().message;
    assert!(msg.contains("refused: unknown key"), "{msg}");

    // Tampered bytes in the store: caught by the digest check.
    let math_digest = b.get_module("math").await.unwrap().unwrap().digest;
    let mut conn = f.redis();
    let _: () = redis::cmd("HSET")
        .arg(f.key(&format!("component:{math_digest}")))
        .arg("bytes")
        .arg(b"\0asm tampered".as_slice())
        .query(&mut conn)
        .unwrap();
    // A fresh worker (empty component cache) sees the tampered store.
    worker.stop().await;
    let worker = f.worker(quick_config("strict2"));
    let tampered = submit(
        b.as_ref(),
        "math.add",
        json!([1, 2]),
        &SubmitOptions::default(),
    )
    .await;
    let r = wait(b.as_ref(), &tampered).await;
    let msg = r.error.unwrap().message;
    assert!(msg.contains("the store is corrupt"), "{msg}");

    // The worker is still alive and well, and has dead-lettered the three
    // malformed messages besides these two.
    wait_for("five dead letters", Duration::from_secs(20), async || {
        let dead = b.dlq_list("default", 10).await.expect("list dead letters");
        if dead.len() >= 5 {
            Ok(())
        } else {
            Err(dead.len())
        }
    })
    .await;
    let dead = b.dlq_list("default", 10).await.unwrap();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 5, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("malformed message: "))
            .count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported message version 99")),
        "{reasons:?}"
    );
    // A malformed message with an id still gets a FAILURE record.
    let r = client::result(b.as_ref(), "x1").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.error.unwrap().kind.as_str()),
        (TaskState::Failure, "malformed")
    );

    // Requeue the untrusted one after trusting its key: it now runs.
    worker.stop().await;
    let both = celeriac_signing::TrustStore::from_keys(
        [f.publisher.public_key(), stranger.public_key()]
            .iter()
            .map(|p| celeriac_signing::PublicKey::load(p).unwrap()),
    );
    let worker = RunningWorker::start(b.clone(), both, quick_config("lenient"));
    let letter = dead
        .iter()
        .find(|d| d.payload.contains(&untrusted))
        .unwrap();
    assert!(b.dlq_requeue("default", &letter.id).await.unwrap());
    let r = wait(b.as_ref(), &untrusted).await;
    assert_eq!((r.state, r.result), (TaskState::Success, Some(json!("HI"))));
    assert!(!b.dlq_requeue("default", &letter.id).await.unwrap());
    assert_eq!(b.dlq_purge("default").await.unwrap(), 4);
    assert!(b.dlq_list("default", 10).await.unwrap().is_empty());
    worker.stop().await;
}

/// Results expire; ignore_result stores none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_and_can_be_ignored() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;
    let worker = f.worker(quick_config("w"));
    let short = SubmitOptions {
        result_ttl: Some(Duration::from_secs(1)),
        ..SubmitOptions::default()
    };
    let id = submit(b.as_ref(), "math.add", json!([1, 2]), &short).await;
    assert_eq!(wait(b.as_ref(), &id).await.state, TaskState::Success);
    let ignored = submit(
        b.as_ref(),
        "math.add",
        json!([3, 4]),
        &SubmitOptions {
            ignore_result: true,
            ..SubmitOptions::default()
        },
    )
    .await;
    let after = submit(
        b.as_ref(),
        "math.add",
        json!([5, 6]),
        &SubmitOptions::default(),
    )
    .await;
    assert_eq!(wait(b.as_ref(), &after).await.result, Some(json!(11)));
    assert!(
        client::result(b.as_ref(), &ignored)
            .await
            .unwrap()
            .is_none()
    );
    // The behaviour under test: the 1 s TTL passes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        client::result(b.as_ref(), &id).await.unwrap().is_none(),
        "result outlived its expiry"
    );
    worker.stop().await;
}

/// Uploading the same bytes twice is a no-op; a new version moves the name
/// while messages pinned to the old digest still run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_move_the_name_and_old_digests_stay_runnable() {
    let f = Fixture::new(&[]).await;
    let (b, publisher) = (&f.broker, &f.publisher);
    let v1 = crate::support::read_component("math");
    let sig1 = celeriac_signing::sign_component(&v1, &publisher.key, "math").unwrap();
    let up = celeriac_broker::registry::upload(
        b.as_ref(),
        &v1,
        &sig1,
        &publisher.trust,
        upload_options(),
    )
    .await
    .unwrap();
    assert!(up.new_bytes && up.previous.is_none());
    let again = celeriac_broker::registry::upload(
        b.as_ref(),
        &v1,
        &sig1,
        &publisher.trust,
        upload_options(),
    )
    .await
    .unwrap();
    assert!(!again.new_bytes && again.previous.is_none());

    // "v2": the text component signed as module math, so its digest differs.
    let pinned = submit(
        b.as_ref(),
        "math.add",
        json!([20, 22]),
        &SubmitOptions::default(),
    )
    .await;
    let v2 = crate::support::read_component("text");
    let sig2 = celeriac_signing::sign_component(&v2, &publisher.key, "math").unwrap();
    let up2 = celeriac_broker::registry::upload(
        b.as_ref(),
        &v2,
        &sig2,
        &publisher.trust,
        upload_options(),
    )
    .await
    .unwrap();
    assert_eq!(up2.previous, Some(up.digest));
    assert_eq!(
        b.get_module("math").await.unwrap().unwrap().digest,
        up2.digest
    );

    let worker = f.worker(quick_config("w"));
    // The message submitted before the move runs v1, exactly as resolved.
    assert_eq!(wait(b.as_ref(), &pinned).await.result, Some(json!(42)));
    let moved = submit(
        b.as_ref(),
        "math.upper",
        json!(["v2"]),
        &SubmitOptions::default(),
    )
    .await;
    assert_eq!(wait(b.as_ref(), &moved).await.result, Some(json!("V2")));
    worker.stop().await;
    let modules = b.list_modules().await.unwrap();
    assert_eq!(modules.len(), 1);
    assert!(now_ms() >= modules[0].uploaded_at);
}

/// A worker asked to stop finishes its running task, hands back what it
/// had prefetched, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_back_unstarted_work() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = &f.broker;
    let mut config = quick_config("stopper");
    config.concurrency = 1;
    config.track_started = true;
    let worker = f.worker(config);
    // Short tasks first: a worker prefetches only once it has seen tasks
    // finish quickly.
    let warmup = client::submit_many(
        b.as_ref(),
        (0..5).map(|_| req("misbehave.sleep", json!([1]))).collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    for id in &warmup {
        wait(b.as_ref(), id).await;
    }
    let ids = client::submit_many(
        b.as_ref(),
        (0..3)
            .map(|_| req("misbehave.sleep", json!([700])))
            .collect(),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    // Stop once one of them is running (whichever got the slot).
    wait_for(
        "one of the three to start",
        Duration::from_secs(20),
        async || {
            for id in &ids {
                let r = client::result(b.as_ref(), id).await.expect("read a record");
                if r.is_some_and(|r| r.state == TaskState::Started) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    let summary = worker.stop().await;
    assert_eq!(summary.processed, 6);
    assert_eq!(summary.requeued_on_shutdown, 2);
    // Whichever of the three got the slot finished; the other two wait.
    let mut finished = 0;
    for id in &ids {
        if let Some(r) = client::result(b.as_ref(), id).await.unwrap() {
            assert_eq!(r.state, TaskState::Success);
            finished += 1;
        }
    }
    assert_eq!(finished, 1);
    let stats = b.queue_stats("default").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (2, 0), "{stats:?}");

    let worker = f.worker(quick_config("next"));
    for id in &ids {
        assert_eq!(wait(b.as_ref(), id).await.state, TaskState::Success);
    }
    worker.stop().await;
}

/// Waiters share one subscriber connection per broker: many at once, two
/// on the same task, each gets its own result, and every channel is
/// unsubscribed once nobody waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waits_share_one_subscriber() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;
    let worker = f.worker(quick_config("waits"));
    // Due shortly, so every waiter is subscribed before any result exists.
    let opts = SubmitOptions {
        eta: Some(SystemTime::now() + Duration::from_millis(500)),
        ..SubmitOptions::default()
    };
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(submit(b.as_ref(), "math.add", json!([i, 1000]), &opts).await);
    }
    let mut waits = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().chain(&ids[..1]).enumerate() {
        let (b, id) = (b.clone(), id.clone());
        waits.spawn(async move { (i % 40, wait(b.as_ref(), &id).await) });
    }
    let mut seen = 0;
    while let Some(joined) = waits.join_next().await {
        let (i, r) = joined.unwrap();
        assert_eq!(
            (r.state, r.result),
            (TaskState::Success, Some(json!(i + 1000)))
        );
        seen += 1;
    }
    assert_eq!(seen, 41);

    let mut redis = f.redis();
    let channels: Vec<String> = ids
        .iter()
        .map(|id| f.key(&format!("result:{id}")))
        .collect();
    wait_for(
        "every result channel to be unsubscribed",
        Duration::from_secs(5),
        async || {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channels)
                .query(&mut redis)
                .expect("PUBSUB NUMSUB");
            let still: Vec<_> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
            if still.is_empty() { Ok(()) } else { Err(still) }
        },
    )
    .await;
    worker.stop().await;
}

/// `submit_and_wait` subscribes while it enqueues: it returns the result,
/// and a submit that fails returns its error at once, not after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_returns_the_result_or_the_submit_error() {
    let f = Fixture::new(&["math"]).await;
    let b = &f.broker;
    let worker = f.worker(quick_config("call"));
    let opts = SubmitOptions::default();
    for i in 0..20 {
        let (id, r) = client::submit_and_wait(
            b.as_ref(),
            req("math.add", json!([i, 1])),
            &opts,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let r = r.unwrap();
        assert_eq!((r.id.as_str(), r.state), (id.as_str(), TaskState::Success));
        assert_eq!(r.result, Some(json!(i + 1)));
    }

    let started = Instant::now();
    let err = client::submit_and_wait(
        b.as_ref(),
        req("nosuch.add", json!([1, 2])),
        &opts,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("unknown module `nosuch`"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited out the timeout"
    );
    worker.stop().await;
}

/// A worker keeps at most the sandbox's `loaded_capacity` compiled
/// components: others are dropped, and fetched, verified and loaded again
/// when a message asks for them, so every task still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_kept_are_bounded() {
    let f = Fixture::new(&["math", "text"]).await;
    let b = &f.broker;
    let w = RunningWorker::with_sandbox(
        b.clone(),
        f.publisher.trust.clone(),
        quick_config("bounded"),
        SandboxConfig {
            loaded_capacity: 1,
            ..SandboxConfig::default()
        },
    );
    let opts = SubmitOptions::default();
    for (task, args, expected) in [
        ("math.add", json!([2, 3]), json!(5)),
        ("text.word_count", json!(["a b c"]), json!(3)),
        ("math.add", json!([1, 1]), json!(2)),
        ("text.word_count", json!(["x"]), json!(1)),
    ] {
        let id = submit(b.as_ref(), task, args, &opts).await;
        let r = wait(b.as_ref(), &id).await;
        assert_eq!(
            (r.state, r.result),
            (TaskState::Success, Some(expected)),
            "{task}"
        );
        let kept = w.worker.cached_components();
        assert!(kept <= 1, "{kept} components kept, bound 1");
    }
    w.stop().await;
}
