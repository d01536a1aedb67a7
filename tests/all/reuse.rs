//! Instance reuse and fuel-off, end to end on Redis: a worker keeps an
//! instance for its module's next task only when the signed manifest
//! (`reuse`) and the worker's policy both allow it, never across digests or
//! modules, and throws it away after its allowance, a failure, a trap, any
//! limit, or memory past its bound. A task counting its calls in a global
//! (`calls`, in Rust, Python and JavaScript) shows which instance ran it;
//! the result record says whether it was fresh.

use std::time::{Duration, SystemTime};

use celeriac_client::SubmitOptions;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_protocol::{Grants, MessageLimits};
use celeriac_sandbox::{Limits, Modules, ReusePolicy, Sandbox, SandboxConfig, TaskCall, TaskError};
use celeriac_signing::sign_component_with;
use serde_json::{Value, json};

use crate::support::{
    Fixture, Outcome, Publisher, RunningWorker, TestCommand, finished, quick_config,
    read_component, submit, upload_options,
};

const WAIT: Duration = Duration::from_secs(60);

fn reuse(n: u32) -> Grants {
    Grants {
        reuse: Some(n),
        ..Grants::default()
    }
}

fn modules(list: &str) -> Modules {
    list.parse().expect("a module list")
}

/// Sign `bytes` as `module` (signed at `at`, so versions order as the test
/// means) and upload them.
async fn upload_at(f: &Fixture, bytes: &[u8], module: &str, grants: &Grants, at: SystemTime) {
    let sig = sign_component_with(bytes, &f.publisher.key, module, grants, at)
        .expect("sign the component");
    celeriac_broker::registry::upload(
        f.broker.as_ref(),
        bytes,
        &sig,
        &f.publisher.trust,
        upload_options(),
    )
    .await
    .unwrap_or_else(|e| panic!("upload {module}: {e}"));
}

/// An in-process worker on `concurrency` slots whose sandbox reuses
/// instances of `reuse_modules`, up to 100 tasks, 16 MiB.
fn worker(f: &Fixture, concurrency: u32, reuse_modules: &str) -> RunningWorker {
    let mut config = quick_config("reuse-worker");
    config.concurrency = concurrency;
    RunningWorker::with_sandbox(
        f.broker.clone(),
        f.publisher.trust.clone(),
        config,
        SandboxConfig {
            reuse: ReusePolicy {
                modules: modules(reuse_modules),
                max_tasks: 100,
                max_memory: 16 << 20,
            },
            ..SandboxConfig::default()
        },
    )
}

/// Run `task(args)` under `limits`, once, and wait for its record.
async fn run(f: &Fixture, task: &str, args: Value, limits: MessageLimits) -> ResultRecord {
    let options = SubmitOptions {
        max_retries: 0,
        limits,
        ..SubmitOptions::default()
    };
    let id = submit(f.broker.as_ref(), task, args, &options).await;
    finished(f.broker.as_ref(), &id, WAIT).await
}

/// `module.calls` once: what the instance's counter says, checked against
/// what the record says about the instance.
async fn calls(f: &Fixture, module: &str) -> u64 {
    let r = run(
        f,
        &format!("{module}.calls"),
        json!([]),
        MessageLimits::default(),
    )
    .await;
    assert_eq!(r.state, TaskState::Success, "{r:?}");
    let n = r.result.as_ref().and_then(Value::as_u64).expect("a count");
    assert_eq!(r.fresh, Some(n == 1), "{module}: count {n}, record {r:?}");
    assert_eq!(
        r.instance_use.map(u64::from),
        (n > 1).then_some(n),
        "{module}: {r:?}"
    );
    n
}

async fn counts(f: &Fixture, module: &str, times: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(times);
    for _ in 0..times {
        out.push(calls(f, module).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_its_allowance_then_a_fresh_one_starts() {
    let f = Fixture::new(&[]).await;
    let bytes = read_component("misbehave");
    f.publisher
        .upload_granting(f.broker.as_ref(), &bytes, "misbehave", &reuse(3))
        .await;
    let w = worker(&f, 1, "misbehave");
    assert_eq!(counts(&f, "misbehave", 7).await, [1, 2, 3, 1, 2, 3, 1]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_needs_both_the_signature_and_the_worker() {
    let f = Fixture::new(&[]).await;
    let bytes = read_component("misbehave");
    // Signed without reuse, on a worker that would allow it.
    f.publisher
        .upload_bytes(f.broker.as_ref(), &bytes, "plain")
        .await;
    // Signed with reuse, on a worker that does not list the module.
    f.publisher
        .upload_granting(f.broker.as_ref(), &bytes, "unlisted", &reuse(10))
        .await;
    let w = worker(&f, 1, "plain,other");
    assert_eq!(counts(&f, "plain", 3).await, [1, 1, 1]);
    assert_eq!(counts(&f, "unlisted", 3).await, [1, 1, 1]);
    w.stop().await;

    // The default worker policy reuses nothing, whatever is signed.
    let mut config = quick_config("default-worker");
    config.concurrency = 1;
    let w = f.worker(config);
    assert_eq!(counts(&f, "unlisted", 2).await, [1, 1]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_never_crosses_modules_or_digests() {
    let f = Fixture::new(&[]).await;
    let bytes = read_component("misbehave");
    let t0 = SystemTime::now() - Duration::from_secs(60);
    // The same bytes signed as two modules: one digest, two instances.
    upload_at(&f, &bytes, "left", &reuse(50), t0).await;
    upload_at(&f, &bytes, "right", &reuse(50), t0).await;
    // Three slots: room for three idle instances (the least recently
    // returned would go first).
    let w = worker(&f, 3, "*");
    let mut seen = Vec::new();
    for module in ["left", "right", "left", "right", "left"] {
        seen.push(calls(&f, module).await);
    }
    assert_eq!(seen, [1, 1, 2, 2, 3]);

    // A new version of `left` (other bytes: a custom section added) gets
    // its own instance; the old version's is never handed to it.
    let newer = with_custom_section(&bytes, "celeriac-test", b"v2");
    assert_ne!(
        celeriac_protocol::Digest::of(&newer),
        celeriac_protocol::Digest::of(&bytes)
    );
    upload_at(&f, &newer, "left", &reuse(50), t0 + Duration::from_secs(10)).await;
    assert_eq!(counts(&f, "left", 2).await, [1, 2]);
    assert_eq!(calls(&f, "right").await, 3);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_thrown_away_after_a_failure_a_trap_a_limit_or_growth() {
    let f = Fixture::new(&[]).await;
    let bytes = read_component("misbehave");
    f.publisher
        .upload_granting(f.broker.as_ref(), &bytes, "misbehave", &reuse(100))
        .await;
    let w = worker(&f, 1, "misbehave");
    let none = MessageLimits::default;
    let cases: Vec<(&str, Value, MessageLimits, &str)> = vec![
        ("fatal", json!(["no"]), none(), "fatal"),
        ("panic", json!([]), none(), "trap"),
        (
            "spin",
            json!([]),
            MessageLimits {
                timeout_ms: Some(300),
                ..none()
            },
            "time-limit",
        ),
        (
            "spin",
            json!([]),
            MessageLimits {
                fuel: Some(5_000_000),
                ..none()
            },
            "fuel-exhausted",
        ),
        (
            "hog",
            json!([1]),
            MessageLimits {
                memory: Some(8 << 20),
                ..none()
            },
            "memory-limit",
        ),
    ];
    assert_eq!(counts(&f, "misbehave", 2).await, [1, 2]);
    for (task, args, limits, kind) in cases {
        let r = run(&f, &format!("misbehave.{task}"), args, limits).await;
        assert_eq!(r.state, TaskState::Failure, "{task}: {r:?}");
        let error = r.error.expect("an error");
        assert_eq!(error.kind, kind, "{task}: {error:?}");
        // A fresh instance, kept again for the next case.
        assert_eq!(counts(&f, "misbehave", 2).await, [1, 2], "after {task}");
    }
    // A clean task that leaves the instance past the worker's 16 MiB
    // bound: its result stands, its instance goes.
    let r = run(&f, "misbehave.keep", json!([24]), MessageLimits::default()).await;
    assert_eq!(r.result, Some(json!(24)), "{r:?}");
    assert_eq!(
        calls(&f, "misbehave").await,
        1,
        "after growing past the bound"
    );
    // Under the bound, it is kept with what it holds.
    let r = run(&f, "misbehave.keep", json!([2]), MessageLimits::default()).await;
    assert_eq!(r.result, Some(json!(2)), "{r:?}");
    let r = run(&f, "misbehave.keep", json!([2]), MessageLimits::default()).await;
    assert_eq!(r.result, Some(json!(4)), "kept state: {r:?}");
    w.stop().await;
}

/// Interpreters keep their globals too: Python's and JavaScript's `calls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_instances_are_reused_within_their_allowance() {
    for dir in ["python-text", "js-text"] {
        let f = Fixture::new(&[]).await;
        let bytes = std::fs::read(crate::polyglot::component(dir)).expect("a built component");
        f.publisher
            .upload_granting(f.broker.as_ref(), &bytes, "text", &reuse(3))
            .await;
        let w = worker(&f, 1, "text");
        assert_eq!(counts(&f, "text", 4).await, [1, 2, 3, 1], "{dir}");
        let r = run(
            &f,
            "text.word_count",
            json!(["one two three"]),
            MessageLimits::default(),
        )
        .await;
        assert_eq!(r.result, Some(json!(3)), "{dir}: {r:?}");
        w.stop().await;
    }
}

/// `celeriac sign --reuse` and `worker --reuse` / `--no-fuel` refuse
/// what they cannot honour, naming it.
#[test]
fn the_cli_names_bad_reuse_and_fuel_settings() {
    let publisher = Publisher::new();
    let component = publisher.signed_file("misbehave");
    let key = publisher.dir.path().join("keys/alice.key");
    let path = component.to_string_lossy().into_owned();
    let key = key.to_string_lossy().into_owned();
    let celeriac = |args: &[&str]| TestCommand::new().args(args).output();
    let out = celeriac(&["sign", &path, "--key", &key, "--reuse", "1"]);
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("--reuse"),
        "{}",
        out.stderr_text()
    );
    let out = celeriac(&["sign", &path, "--key", &key, "--reuse", "500"]);
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("reuse 500"),
        "{}",
        out.stdout_text()
    );
    for flag in ["--reuse", "--no-fuel"] {
        let out = celeriac(&["worker", flag, "text,9lives"]);
        assert!(!out.status.success());
        assert!(
            out.stderr_text().contains("`9lives` is not a module name"),
            "{flag}: {}",
            out.stderr_text()
        );
    }
}

/// Fuel off by policy: the module's code runs unmetered (no fuel in the
/// report), others stay metered, and the wall-clock limit still stops a
/// task that never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_modules_are_bound_by_the_clock_alone() {
    let dir = tempfile::tempdir().expect("a cache dir");
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 2,
        unmetered: modules("fast"),
        cache_dir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .expect("a sandbox");
    let bytes = read_component("misbehave");
    let (fast, _) = sandbox.load_as(&bytes, "fast").expect("load unmetered");
    let (metered, _) = sandbox.load_as(&bytes, "misbehave").expect("load metered");
    assert!(!fast.metered && metered.metered);
    let call = |module: &str, name: &str| TaskCall {
        id: format!("{module}-{name}"),
        module: module.into(),
        name: name.into(),
        args: "[]".into(),
        kwargs: "{}".into(),
        ..TaskCall::default()
    };
    let r = sandbox
        .run(&fast, &call("fast", "calls"), &Limits::default())
        .await;
    assert_eq!((r.result.as_deref(), r.fuel_consumed), (Ok("1"), None));
    let r = sandbox
        .run(&metered, &call("misbehave", "calls"), &Limits::default())
        .await;
    assert_eq!(r.result.as_deref(), Ok("1"));
    assert!(r.fuel_consumed.is_some_and(|f| f > 0), "{r:?}");
    // A fuel budget means nothing unmetered: the time limit stops it.
    let limits = Limits {
        timeout: Duration::from_millis(300),
        fuel: 1_000,
        ..Limits::default()
    };
    let r = sandbox.run(&fast, &call("fast", "spin"), &limits).await;
    assert!(
        matches!(r.result, Err(TaskError::TimeLimit { .. })),
        "{r:?}"
    );
}

/// `bytes` with a custom section appended: a valid component with
/// another digest.
fn with_custom_section(bytes: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = leb128(name.len());
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut out = bytes.to_vec();
    out.push(0);
    out.extend(leb128(payload.len()));
    out.extend(payload);
    out
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
