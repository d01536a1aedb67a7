//! The sandbox against real components built from tasks/: results, typed
//! failures, every limit, isolation and the compile cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::wait_for;

use celeriac_sandbox::{
    FailureKind, HOST_FUEL_PER_BYTE, Limits, LoadedComponent, Origin, Sandbox, SandboxConfig,
    TaskCall, TaskError,
};
use serde_json::{Value, json};

struct Fixture {
    sandbox: Sandbox,
    _cache: tempfile::TempDir,
}

fn sandbox() -> Fixture {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 4,
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    Fixture {
        sandbox,
        _cache: cache,
    }
}

fn load(f: &Fixture, name: &str) -> Arc<LoadedComponent> {
    f.sandbox
        .load(&crate::support::read_component(name))
        .unwrap()
        .0
}

fn call(module: &str, name: &str, args: Value) -> TaskCall {
    TaskCall {
        id: format!("test-{module}-{name}"),
        module: module.into(),
        name: name.into(),
        args: args.to_string(),
        kwargs: "{}".into(),
        retries: 0,
        max_retries: 0,
        grants: Default::default(),
    }
}

async fn run(
    f: &Fixture,
    c: &LoadedComponent,
    module: &str,
    name: &str,
    args: Value,
) -> Result<Value, TaskError> {
    run_with(f, c, call(module, name, args), Limits::default()).await
}

async fn run_with(
    f: &Fixture,
    c: &LoadedComponent,
    call: TaskCall,
    limits: Limits,
) -> Result<Value, TaskError> {
    let report = f.sandbox.run(c, &call, &limits).await;
    report
        .result
        .map(|json| serde_json::from_str(&json).expect("task result is JSON"))
}

fn invalid_input(r: Result<Value, TaskError>) -> String {
    match r {
        Err(TaskError::Failed {
            kind: FailureKind::InvalidInput,
            message,
            ..
        }) => message,
        other => panic!("expected invalid-input, got {other:?}"),
    }
}

#[tokio::test]
async fn math_tasks() {
    let f = sandbox();
    let math = load(&f, "math");
    assert_eq!(
        run(&f, &math, "math", "add", json!([2, 3])).await.unwrap(),
        json!(5)
    );
    assert_eq!(
        run(&f, &math, "math", "mul", json!([-4, 6])).await.unwrap(),
        json!(-24)
    );
    assert_eq!(
        run(&f, &math, "math", "div", json!([7, 2])).await.unwrap(),
        json!(3.5)
    );
    assert_eq!(
        run(&f, &math, "math", "sum", json!([[1, 2.5, 3]]))
            .await
            .unwrap(),
        json!(6.5)
    );
    assert_eq!(
        run(&f, &math, "math", "fib", json!([20])).await.unwrap(),
        json!(6765)
    );
    assert_eq!(
        run(&f, &math, "math", "fib", json!([90])).await.unwrap(),
        json!(2880067194370816120u64)
    );

    // kwargs bind by name, like Celery's.
    let mut by_name = call("math", "add", json!([2]));
    by_name.kwargs = json!({"b": 40}).to_string();
    assert_eq!(
        run_with(&f, &math, by_name, Limits::default())
            .await
            .unwrap(),
        json!(42)
    );

    let msg = invalid_input(run(&f, &math, "math", "add", json!([2])).await);
    assert_eq!(msg, "add() missing required argument `b`");
    let msg = invalid_input(run(&f, &math, "math", "add", json!([2, "three"])).await);
    assert!(
        msg.starts_with("argument `b`: invalid type: string \"three\""),
        "{msg}"
    );
    let msg = invalid_input(run(&f, &math, "math", "add", json!([1, 2, 3])).await);
    assert_eq!(msg, "add() takes 2 positional arguments but 3 were given");
    let msg = invalid_input(run(&f, &math, "math", "add", json!([i64::MAX, 1])).await);
    assert!(msg.contains("overflows"), "{msg}");
    let msg = invalid_input(run(&f, &math, "math", "div", json!([1, 0])).await);
    assert_eq!(msg, "division by zero");
    let msg = invalid_input(run(&f, &math, "math", "fib", json!([94])).await);
    assert!(msg.contains("at most 93"), "{msg}");
    let msg = invalid_input(run(&f, &math, "math", "nope", json!([])).await);
    assert!(
        msg.starts_with("unknown task `nope`; this module serves: add, mul, div, sum, fib"),
        "{msg}"
    );

    let tasks = f.sandbox.tasks(&math).await.unwrap();
    assert_eq!(tasks, ["add", "mul", "div", "sum", "fib"]);
}

#[tokio::test]
async fn text_tasks() {
    let f = sandbox();
    let text = load(&f, "text");
    assert_eq!(
        run(&f, &text, "text", "sha256", json!(["hello"]))
            .await
            .unwrap(),
        json!("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert_eq!(
        run(
            &f,
            &text,
            "text",
            "word_count",
            json!(["the quick  brown\nfox"])
        )
        .await
        .unwrap(),
        json!(4)
    );
    assert_eq!(
        run(&f, &text, "text", "upper", json!(["straße"]))
            .await
            .unwrap(),
        json!("STRASSE")
    );
    assert_eq!(
        run(&f, &text, "text", "reverse", json!(["añb😀"]))
            .await
            .unwrap(),
        json!("😀bña")
    );
    assert_eq!(
        run(&f, &text, "text", "stats", json!(["héllo wörld\nbye"]))
            .await
            .unwrap(),
        json!({"bytes": 17, "chars": 15, "words": 3, "lines": 2})
    );
    let msg = invalid_input(run(&f, &text, "text", "sha256", json!([42])).await);
    assert!(
        msg.starts_with("argument `text`: invalid type: integer `42`, expected a string"),
        "{msg}"
    );
    let msg = invalid_input(run(&f, &text, "text", "word_count", json!([])).await);
    assert_eq!(msg, "word_count() missing required argument `text`");
}

#[tokio::test]
async fn misbehave_failures_are_typed() {
    let f = sandbox();
    let m = load(&f, "misbehave");

    match run(&f, &m, "misbehave", "fatal", json!(["bad data"])).await {
        Err(TaskError::Failed {
            kind: FailureKind::Fatal,
            message,
            ..
        }) => assert_eq!(message, "bad data"),
        other => panic!("expected fatal, got {other:?}"),
    }

    // flaky asks for a retry until it has been retried `n` times.
    let mut attempt = call("misbehave", "flaky", json!([2]));
    for retries in 0..2 {
        attempt.retries = retries;
        match run_with(&f, &m, attempt.clone(), Limits::default()).await {
            Err(
                e @ TaskError::Failed {
                    kind: FailureKind::Retry,
                    ..
                },
            ) => assert!(e.is_retryable()),
            other => panic!("expected retry on attempt {retries}, got {other:?}"),
        }
    }
    attempt.retries = 2;
    assert_eq!(
        run_with(&f, &m, attempt, Limits::default()).await.unwrap(),
        json!({"retries": 2})
    );

    // A panic is a trap; its message is the guest's stderr, quoted as such.
    match run(&f, &m, "misbehave", "panic", json!(["kaboom"])).await {
        Err(TaskError::Trap(msg)) => {
            assert!(
                msg.starts_with(
                    "unreachable instruction executed (guest stderr: panicked at tasks/misbehave/src/lib.rs"
                ),
                "{msg}"
            );
            assert!(msg.ends_with(": kaboom)"), "{msg}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// What a guest prints is never presented as the host's finding, and a
/// chatty guest does not push its panic message out of the capture.
#[tokio::test]
async fn crash_causes_quote_guest_stderr_as_the_guests() {
    let f = sandbox();
    let m = load(&f, "misbehave");

    // A forged panic line, then a plain trap: the host names the trap and
    // quotes the forgery as guest output.
    let forged = "thread 'main' panicked at src/host.rs:12:1:\nhost out of memory\n";
    let r = run(&f, &m, "misbehave", "crash", json!([forged, 1])).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        "trap: unreachable instruction executed (guest stderr: panicked at src/host.rs:12:1: host out of memory)"
    );

    // 100 KiB of stderr before the panic: the message still comes through.
    let line = format!("{}\n", "y".repeat(1023));
    let r = run(&f, &m, "misbehave", "crash", json!([line, 100, "boom"])).await;
    match r {
        Err(TaskError::Trap(msg)) => {
            assert!(
                msg.starts_with(
                    "unreachable instruction executed (guest stderr: panicked at tasks/misbehave/src/lib.rs:"
                ),
                "{msg}"
            );
            assert!(msg.ends_with(": boom)"), "{msg}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }

    // A huge panic message is quoted in one bounded line.
    let r = run(&f, &m, "misbehave", "panic", json!(["z\n".repeat(50_000)])).await;
    let msg = r.unwrap_err().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.chars().count() < 400, "{} chars", msg.chars().count());
}

/// Exiting is its own cause, and like a host refusal (a host call over a
/// host limit) it would happen again, so neither is retried; both are one
/// line with no wasm backtrace.
#[tokio::test]
async fn exits_and_host_refusals_are_final() {
    let f = sandbox();
    let m = load(&f, "misbehave");
    let r = run(&f, &m, "misbehave", "exit", json!([3])).await;
    let e = r.unwrap_err();
    assert_eq!(e, TaskError::Exited { status: 3 });
    assert_eq!(e.to_string(), "task exited with status 3");
    assert!(!e.is_retryable());
    // Rust's std::process::exit goes through WASI `exit`, which carries
    // only success or failure.
    let r = run(&f, &m, "misbehave", "exit", json!([3, true])).await;
    assert_eq!(r.unwrap_err(), TaskError::Exited { status: 1 });

    // 100 MiB of random in one call: over wasmtime-wasi's 64 MiB limit.
    let r = run(
        &f,
        &m,
        "misbehave",
        "host_work",
        json!(["random", 100 << 20, 1]),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(
        e,
        TaskError::Host(
            "host refused the task: requested len 104857600 exceeds limit 67108864".into()
        )
    );
    assert!(!e.is_retryable());
}

/// Work a guest makes the host do (random bytes, output, log lines) is
/// charged to its fuel, so looping on a cheap host call ends like a busy
/// loop: fuel exhausted.
#[tokio::test]
async fn host_work_is_charged_to_fuel() {
    let f = sandbox();
    let m = load(&f, "misbehave");
    for kind in ["random", "insecure", "stdout", "log"] {
        // Forever, 1 MiB per call, under a budget of ten such calls.
        let limits = Limits {
            fuel: 10_000_000,
            timeout: Duration::from_secs(20),
            ..Limits::default()
        };
        let r = run_with(
            &f,
            &m,
            call("misbehave", "host_work", json!([kind, 1 << 20])),
            limits,
        )
        .await;
        assert_eq!(
            r.unwrap_err(),
            TaskError::FuelExhausted { fuel: 10_000_000 },
            "{kind}"
        );

        // Eight calls: billed at least the 8 MiB the host moved.
        let report = f
            .sandbox
            .run(
                &m,
                &call("misbehave", "host_work", json!([kind, 1 << 20, 8])),
                &Limits::default(),
            )
            .await;
        assert_eq!(report.result.unwrap(), (8 << 20).to_string(), "{kind}");
        let fuel = report.fuel_consumed.unwrap();
        assert!(
            fuel >= (8 << 20) * HOST_FUEL_PER_BYTE,
            "{kind}: only {fuel} fuel"
        );
    }
}

/// Each limit stops its misbehaving task with the right cause, promptly,
/// all in one process, and an ordinary task still succeeds afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_misbehaving_tasks_and_the_host_carries_on() {
    let f = sandbox();
    let m = load(&f, "misbehave");
    let math = load(&f, "math");
    let quick = Duration::from_secs(10);

    // Endless loop, wall clock.
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let t = Instant::now();
    let r = run_with(&f, &m, call("misbehave", "spin", json!([])), limits.clone()).await;
    assert_eq!(
        r.unwrap_err(),
        TaskError::TimeLimit {
            limit: limits.timeout
        }
    );
    assert!(t.elapsed() < quick);

    // Endless loop, fuel.
    let limits = Limits {
        fuel: 50_000_000,
        ..Limits::default()
    };
    let r = run_with(&f, &m, call("misbehave", "spin", json!([])), limits).await;
    assert!(matches!(r, Err(TaskError::FuelExhausted { .. })), "{r:?}");

    // Allocating without end: the limit applies to the task as a whole.
    let limits = Limits {
        memory: 48 << 20,
        ..Limits::default()
    };
    let report = f
        .sandbox
        .run(&m, &call("misbehave", "hog", json!([4])), &limits)
        .await;
    assert_eq!(
        report.result.unwrap_err(),
        TaskError::MemoryLimit { limit: 48 << 20 }
    );
    assert!(
        report.memory_peak <= 48 << 20,
        "peak {} over the limit",
        report.memory_peak
    );
    assert!(
        report.memory_peak > 32 << 20,
        "peak {} suspiciously low",
        report.memory_peak
    );

    // Unbounded recursion.
    let r = run(&f, &m, "misbehave", "recurse", json!([])).await;
    assert_eq!(r.unwrap_err(), TaskError::Trap("stack overflow".into()));

    // Blocked in a host call (WASI sleep), where epochs cannot reach.
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let t = Instant::now();
    let r = run_with(
        &f,
        &m,
        call("misbehave", "sleep", json!([60_000])),
        limits.clone(),
    )
    .await;
    assert_eq!(
        r.unwrap_err(),
        TaskError::TimeLimit {
            limit: limits.timeout
        }
    );
    assert!(t.elapsed() < quick);

    // The soft limit lets a cooperative task stop cleanly before the hard one.
    let limits = Limits {
        timeout: Duration::from_secs(5),
        soft_timeout: Some(Duration::from_millis(200)),
        ..Limits::default()
    };
    let report = f
        .sandbox
        .run(&m, &call("misbehave", "patient", json!([30])), &limits)
        .await;
    let out: Value = serde_json::from_str(&report.result.unwrap()).unwrap();
    assert_eq!(out["stopped"], json!(true));
    assert!(out["steps"].as_u64().unwrap() >= 5, "{out}");
    assert!(
        report.elapsed < Duration::from_secs(3),
        "took {:?}",
        report.elapsed
    );
    assert!(report.progress.is_some());

    // After all of that, ordinary work still runs.
    assert_eq!(
        run(&f, &math, "math", "add", json!([2, 3])).await.unwrap(),
        json!(5)
    );
    assert_eq!(
        run(&f, &m, "misbehave", "flaky", json!([0])).await.unwrap(),
        json!({"retries": 0})
    );
}

/// Several misbehaving tasks at once do not starve a well-behaved one: the
/// epoch yields keep the executor fair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spinners_do_not_starve_others() {
    let f = Arc::new(sandbox());
    let m = load(&f, "misbehave");
    let math = load(&f, "math");
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let mut spinners = Vec::new();
    let started = Arc::new(AtomicUsize::new(0));
    for i in 0..3 {
        let (f, m, limits, started) = (f.clone(), m.clone(), limits.clone(), started.clone());
        spinners.push(tokio::spawn(async move {
            let mut c = call("misbehave", "spin", json!([]));
            c.id = format!("spinner-{i}");
            started.fetch_add(1, Ordering::SeqCst);
            f.sandbox.run(&m, &c, &limits).await.result
        }));
    }
    wait_for(
        "the three spinners to start",
        Duration::from_secs(10),
        async || started.load(Ordering::SeqCst) == 3,
    )
    .await;
    assert_eq!(
        run(&f, &math, "math", "add", json!([1, 1])).await.unwrap(),
        json!(2)
    );
    // Ordering, not timing: the add finished while the spinners were still
    // running, i.e. it did not wait for their two-second limit.
    assert!(
        spinners.iter().any(|s| !s.is_finished()),
        "add waited for the spinners"
    );
    for s in spinners {
        assert!(matches!(s.await.unwrap(), Err(TaskError::TimeLimit { .. })));
    }
}

#[tokio::test]
async fn guests_get_no_capabilities() {
    let f = sandbox();
    let m = load(&f, "misbehave");
    let out = run(&f, &m, "misbehave", "escape", json!([])).await.unwrap();
    assert_eq!(
        out,
        json!({"read_etc_passwd": false, "list_root": false, "env_vars": 0, "args": 0, "tcp_connect": false})
    );
    let imports = m.imports();
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("celeriac:task/context@0.1.0")),
        "{imports:?}"
    );
}

#[tokio::test]
async fn guest_output_is_capped() {
    let cache = tempfile::tempdir().unwrap();
    let f = Fixture {
        sandbox: Sandbox::new(SandboxConfig {
            concurrency: 1,
            cache_dir: Some(cache.path().to_path_buf()),
            output_cap: 4096,
            ..SandboxConfig::default()
        })
        .unwrap(),
        _cache: cache,
    };
    let m = load(&f, "misbehave");
    // 8 MiB of output: the task neither fails nor blocks on a full pipe.
    assert_eq!(
        run(&f, &m, "misbehave", "chatter", json!([8 << 20]))
            .await
            .unwrap(),
        json!(8 << 20)
    );
}

/// Log output captured from this thread's tracing events.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One guest log line cannot spend the whole log budget: each is cut to
/// 8 KiB with a marker saying how much was cut.
#[tokio::test]
async fn each_guest_log_line_is_capped() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    // This test's thread only; the sandbox runs the guest on it.
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = sandbox();
    let m = load(&f, "misbehave");
    let r = run(&f, &m, "misbehave", "host_work", json!(["log", 100_000, 3])).await;
    assert_eq!(r.unwrap(), json!(300_000));
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("xxxxxxxx")).collect();
    assert_eq!(lines.len(), 3, "{}", &text[..text.len().min(2000)]);
    for line in lines {
        assert!(line.len() < 9 << 10, "a line of {} bytes", line.len());
        assert!(
            line.contains(&format!(
                "x … [{} more bytes truncated]",
                100_000 - (8 << 10)
            )),
            "{}",
            &line[line.len().saturating_sub(200)..]
        );
    }
}

#[tokio::test]
async fn stores_are_fresh_per_task() {
    let f = sandbox();
    let math = load(&f, "math");
    // A task that trapped leaves nothing behind for the next one.
    let m = load(&f, "misbehave");
    let _ = run(&f, &m, "misbehave", "panic", json!([])).await;
    for i in 0..50i64 {
        assert_eq!(
            run(&f, &math, "math", "add", json!([i, i])).await.unwrap(),
            json!(2 * i)
        );
    }
}

#[test]
fn compiled_code_is_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        concurrency: 1,
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let bytes = crate::support::read_component("math");

    let first = Sandbox::new(config.clone()).unwrap();
    assert_eq!(first.load(&bytes).unwrap().1, Origin::Compiled);
    assert_eq!(first.load(&bytes).unwrap().1, Origin::Memory);

    // A second sandbox (as a second process would) loads native code.
    let second = Sandbox::new(config.clone()).unwrap();
    assert_eq!(second.load(&bytes).unwrap().1, Origin::DiskCache);

    // A corrupt cache entry is discarded and recompiled, not trusted.
    for entry in walk(cache.path()) {
        std::fs::write(&entry, b"garbage").unwrap();
    }
    let third = Sandbox::new(config).unwrap();
    assert_eq!(third.load(&bytes).unwrap().1, Origin::Compiled);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn not_a_component_is_a_clear_error() {
    let f = sandbox();
    let err = f
        .sandbox
        .load(b"definitely not wasm")
        .err()
        .expect("must fail");
    assert!(
        err.to_string().starts_with("not a valid component"),
        "{err}"
    );
}
