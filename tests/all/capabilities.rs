//! Capabilities under signed grants, end to end: `celeriac worker`
//! processes on the test Redis run the `web` module (tasks/web) against a
//! local HTTP server. A granted request works; one outside the grant,
//! outside the worker's policy, to a private address reached by name or by
//! redirect, too slow or too large fails with its own cause, in the task's
//! error and in the worker's log beside the task id. Configuration and
//! key-value stay within what each module was granted, and a secret never
//! reaches a log, a result or a dead letter.

use std::time::Duration;

use celeriac_client::SubmitOptions;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_protocol::{Grants, MessageLimits};
use serde_json::{Value, json};

use crate::support::{
    Fixture, Outcome, TestServer, WorkerProcess, finished, read_component, submit,
};

const SECRET: &str = "s3cr3t-token-5f0c9a";
const WAIT: Duration = Duration::from_secs(60);

fn grants(http: &[&str], config: &[&str], kv: bool) -> Grants {
    Grants {
        http: http.iter().map(|o| o.parse().expect("an origin")).collect(),
        config: config.iter().map(|k| k.to_string()).collect(),
        kv,
        reuse: None,
    }
}

/// Upload tasks/web as `module` with `grants`.
async fn upload_web(f: &Fixture, module: &str, grants: &Grants) {
    f.publisher
        .upload_granting(f.broker.as_ref(), &read_component("web"), module, grants)
        .await;
}

/// Run `task(args)` once (no retries) and wait for its record.
async fn run(f: &Fixture, queue: &str, task: &str, args: Value) -> ResultRecord {
    run_with(f, queue, task, args, MessageLimits::default()).await
}

async fn run_with(
    f: &Fixture,
    queue: &str,
    task: &str,
    args: Value,
    limits: MessageLimits,
) -> ResultRecord {
    let options = SubmitOptions {
        queue: queue.into(),
        max_retries: 0,
        limits,
        ..SubmitOptions::default()
    };
    let id = submit(f.broker.as_ref(), task, args, &options).await;
    finished(f.broker.as_ref(), &id, WAIT).await
}

fn failure(r: &ResultRecord) -> String {
    assert_eq!(r.state, TaskState::Failure, "expected a failure: {r:?}");
    r.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// The worker's log lines that mention task `id`.
fn logged_for(worker: &WorkerProcess, id: &str) -> String {
    worker
        .log()
        .lines()
        .filter(|l| l.contains(id))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn http_requests_go_through_only_within_grant_and_policy() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    // The signer asks for the test server by address and by name, and for
    // an outside host; this worker allows only 127.0.0.1, and names it as
    // a private address it may reach.
    let g = grants(
        &[
            "http://127.0.0.1:*",
            "http://127.0.0.2:*",
            "http://localhost:*",
            "http://example.com",
        ],
        &[],
        false,
    );
    upload_web(&f, "web", &g).await;
    let worker = f.worker_process(
        "w-http",
        &[
            "--queues",
            "http",
            "--allow-http",
            "http://127.0.0.1:*",
            "--allow-http",
            "http://127.0.0.2:*",
            "--allow-private",
            "127.0.0.1",
            "--http-max-response-size",
            "64KiB",
            "--http-timeout",
            "20s",
        ],
    );
    worker.ready(f.broker.as_ref()).await;

    // Granted, allowed: works, and the answer comes back.
    let ok = run(&f, "http", "web.get", json!([server.url("/hello")])).await;
    assert_eq!(ok.state, TaskState::Success, "{ok:?}");
    let body = ok.result.clone().unwrap();
    assert_eq!(body["status"], 200);
    assert_eq!(body["body"], "hello from the test server");

    // Outside the signed grant: refused before anything is sent.
    let before = server.requests();
    let r = run(&f, "http", "web.get", json!(["http://203.0.113.7:8080/x"])).await;
    assert!(failure(&r).contains("HttpRequestDenied"), "{r:?}");
    assert!(
        logged_for(&worker, &r.id).contains(
            "HTTP request refused: http://203.0.113.7:8080 is outside the component's signed grant"
        ),
        "{}",
        worker.log()
    );

    // Granted but outside this worker's policy (--allow-http).
    let r = run(
        &f,
        "http",
        "web.get",
        json!([format!("http://localhost:{}/hello", server.port())]),
    )
    .await;
    assert!(failure(&r).contains("HttpRequestDenied"), "{r:?}");
    assert!(
        logged_for(&worker, &r.id).contains("is granted but outside this worker's policy"),
        "{}",
        worker.log()
    );

    // A redirect to an address the policy does not name (another loopback
    // address): the guest follows it, the host refuses the hop.
    let to = format!("http://127.0.0.2:{}/hello", server.port());
    let r = run(
        &f,
        "http",
        "web.get",
        json!([server.url(&format!("/redirect?to={to}")), true]),
    )
    .await;
    assert!(failure(&r).contains("DestinationIpProhibited"), "{r:?}");
    assert!(
        logged_for(&worker, &r.id)
            .contains("127.0.0.2 is a loopback address, which this worker's policy does not allow"),
        "{}",
        worker.log()
    );
    // A redirect out of the grant is refused too.
    let r = run(
        &f,
        "http",
        "web.get",
        json!([server.url("/redirect?to=http://evil.example/steal"), true]),
    )
    .await;
    assert!(failure(&r).contains("HttpRequestDenied"), "{r:?}");
    assert_eq!(
        server.requests(),
        before + 2,
        "only the two redirecting requests reached the server"
    );

    // A response over the worker's cap, declared up front or streamed.
    let r = run(
        &f,
        "http",
        "web.get",
        json!([server.url("/big?bytes=200000")]),
    )
    .await;
    assert!(failure(&r).contains("HttpResponseBodySize"), "{r:?}");
    assert!(
        logged_for(&worker, &r.id).contains("body over the worker's cap"),
        "{}",
        worker.log()
    );
    let r = run(
        &f,
        "http",
        "web.get",
        json!([server.url("/stream?bytes=200000")]),
    )
    .await;
    assert!(
        failure(&r).contains("body size exceeds limit: 65536 bytes"),
        "{r:?}"
    );
    assert!(
        logged_for(&worker, &r.id).contains("body over the worker's cap"),
        "{}",
        worker.log()
    );

    // A server slower than the task's time limit: the request is cut
    // inside the limit and the guest sees a timeout, not a kill.
    let r = run_with(
        &f,
        "http",
        "web.get",
        json!([server.url("/slow?ms=5000")]),
        MessageLimits {
            timeout_ms: Some(1500),
            ..MessageLimits::default()
        },
    )
    .await;
    let cause = failure(&r);
    assert!(cause.contains("ConnectionReadTimeout"), "{r:?}");
    assert!(
        logged_for(&worker, &r.id).contains("timed out"),
        "{}",
        worker.log()
    );
}

#[tokio::test]
async fn private_addresses_reached_by_name_are_refused_after_resolution() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    upload_web(
        &f,
        "web",
        &grants(&["http://localhost:*", "http://127.0.0.1:*"], &[], false),
    )
    .await;
    // No --allow-private: loopback is off limits however it is named.
    let worker = f.worker_process("w-dns", &["--queues", "dns"]);
    worker.ready(f.broker.as_ref()).await;

    let r = run(
        &f,
        "dns",
        "web.get",
        json!([format!("http://localhost:{}/hello", server.port())]),
    )
    .await;
    assert!(failure(&r).contains("DestinationIpProhibited"), "{r:?}");
    let log = logged_for(&worker, &r.id);
    assert!(log.contains("localhost resolves to"), "{log}");
    assert!(
        log.contains("a loopback address, which this worker's policy does not allow"),
        "{log}"
    );
    let r = run(&f, "dns", "web.get", json!([server.url("/hello")])).await;
    assert!(failure(&r).contains("DestinationIpProhibited"), "{r:?}");
    assert_eq!(server.requests(), 0, "nothing reached the server");
}

#[tokio::test]
async fn config_and_key_value_stay_within_each_modules_grant() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    let config_file = f.cache_dir().join("task.env");
    std::fs::write(&config_file, "region=eu-west-1\nother_secret=do-not-read\n").unwrap();
    // `web` may read api_token and region and keep state; `web2` (the same
    // code) only keeps state; `bare` has no grant at all.
    let http = ["http://127.0.0.1:*"];
    upload_web(&f, "web", &grants(&http, &["api_token", "region"], true)).await;
    upload_web(&f, "web2", &grants(&http, &[], true)).await;
    upload_web(&f, "bare", &Grants::default()).await;
    let mut command = f.cli();
    command.env("CELERIAC_TASK_CONFIG_api_token", SECRET);
    let worker = WorkerProcess::start(
        command,
        &f.publisher.trust_dir(),
        "w-state",
        f.cache_dir(),
        &[
            "--queues",
            "state",
            "--allow-private",
            "127.0.0.1",
            "--task-config",
            config_file.to_str().unwrap(),
        ],
    );
    worker.ready(f.broker.as_ref()).await;

    // The secret is used (the server checks it) and stays inside.
    let r = run(&f, "state", "web.authorized", json!([server.url("/auth")])).await;
    assert_eq!(r.result, Some(json!({"status": 200})), "{r:?}");
    let r = run(&f, "state", "web.config_has", json!(["region"])).await;
    assert_eq!(r.result, Some(json!(true)), "{r:?}");
    // A key the worker has but the manifest does not grant.
    let r = run(&f, "state", "web.config_has", json!(["other_secret"])).await;
    assert!(
        failure(&r).contains("config key `other_secret` is not granted to module `web`"),
        "{r:?}"
    );
    let r = run(&f, "state", "web2.config_has", json!(["api_token"])).await;
    assert!(
        failure(&r).contains("not granted to module `web2`"),
        "{r:?}"
    );
    // web2 cannot use the secret either: its request goes out without it.
    let r = run(&f, "state", "web2.authorized", json!([server.url("/auth")])).await;
    assert!(failure(&r).contains("not granted"), "{r:?}");

    // Each module counts in its own namespace.
    for expected in [1, 2] {
        let r = run(&f, "state", "web.counter", json!(["hits"])).await;
        assert_eq!(r.result, Some(json!(expected)), "{r:?}");
    }
    let r = run(&f, "state", "web2.counter", json!(["hits"])).await;
    assert_eq!(r.result, Some(json!(1)), "{r:?}");
    let mut redis = f.redis();
    let stored: Option<String> = redis::cmd("GET")
        .arg(f.key("kv:web:hits"))
        .query(&mut redis)
        .unwrap();
    assert_eq!(stored.as_deref(), Some("2"));
    let r = run(&f, "state", "bare.counter", json!(["hits"])).await;
    assert!(
        failure(&r).contains("key-value is not granted to module `bare`"),
        "{r:?}"
    );

    // Nothing the worker wrote holds the secret: its log, the result
    // records, the dead letters.
    assert!(
        !worker.log().contains(SECRET),
        "the secret reached the worker log"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", f.prefix()))
        .query(&mut redis)
        .unwrap();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut redis).unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(SECRET),
            "the secret is stored under {key}"
        );
    }
}

#[tokio::test]
async fn webhooks_are_delivered_once_per_key_through_retries() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    upload_web(&f, "web", &grants(&["http://127.0.0.1:*"], &[], true)).await;
    let worker = f.worker_process(
        "w-hook",
        &[
            "--queues",
            "hook",
            "--allow-private",
            "127.0.0.1",
            "--retry-backoff",
            "100ms",
        ],
    );
    worker.ready(f.broker.as_ref()).await;
    let options = SubmitOptions {
        queue: "hook".into(),
        max_retries: 5,
        ..SubmitOptions::default()
    };
    // The receiver fails twice (503), then takes it: two retries, one
    // delivery.
    let url = server.url("/webhook?fail=2");
    let payload = json!({"order": 42});
    let id = submit(
        f.broker.as_ref(),
        "web.webhook",
        json!([url, payload, "order-42"]),
        &options,
    )
    .await;
    let r = finished(f.broker.as_ref(), &id, WAIT).await;
    assert_eq!(r.state, TaskState::Success, "{r:?}");
    assert_eq!(r.retries, 2);
    assert_eq!(r.result, Some(json!({"delivered": true, "status": 200})));
    // The same key again: not sent again.
    let id = submit(
        f.broker.as_ref(),
        "web.webhook",
        json!([url, payload, "order-42"]),
        &options,
    )
    .await;
    let r = finished(f.broker.as_ref(), &id, WAIT).await;
    assert_eq!(
        r.result.as_ref().map(|v| v["duplicate"].clone()),
        Some(json!(true)),
        "{r:?}"
    );
    let (attempts, delivered) = server.webhook("order-42");
    assert_eq!(
        (attempts, delivered),
        (3, vec![r#"{"order":42}"#.to_string()])
    );
}

#[tokio::test]
async fn one_worker_pools_connections_and_stores_references() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    upload_web(&f, "web", &grants(&["http://127.0.0.1:*"], &[], true)).await;
    let worker = f.worker_process(
        "w-pool",
        &["--queues", "pool", "--allow-private", "127.0.0.1"],
    );
    worker.ready(f.broker.as_ref()).await;

    // Ten sequential requests in one task, then ten more in another task:
    // one connection serves them all.
    for _ in 0..2 {
        let r = run(
            &f,
            "pool",
            "web.fetch_many",
            json!([server.url("/hello"), 10]),
        )
        .await;
        assert_eq!(r.result, Some(json!(2000)), "{r:?}");
    }
    assert_eq!(server.requests(), 20);
    assert_eq!(
        server.connections(),
        1,
        "the host's pool reuses one connection"
    );

    // Fetch, transform, store the body, return a reference to it.
    let r = run(
        &f,
        "pool",
        "web.fetch_store",
        json!([server.url("/big?bytes=3000")]),
    )
    .await;
    let result = r.result.clone().unwrap();
    assert_eq!(result["bytes"], 3000, "{r:?}");
    let reference = result["ref"]
        .as_str()
        .unwrap()
        .strip_prefix("kv:")
        .unwrap()
        .to_string();
    let r = run(&f, "pool", "web.kv_read", json!([reference])).await;
    assert_eq!(r.result, Some(json!("x".repeat(3000))));
}

#[tokio::test]
async fn hundreds_of_waiting_tasks_share_one_worker_and_burn_no_fuel_waiting() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    upload_web(&f, "web", &grants(&["http://127.0.0.1:*"], &[], false)).await;
    let worker = f.worker_process(
        "w-io",
        &[
            "--queues",
            "io",
            "--concurrency",
            "300",
            "--allow-private",
            "127.0.0.1",
        ],
    );
    worker.ready(f.broker.as_ref()).await;
    let options = SubmitOptions {
        queue: "io".into(),
        max_retries: 0,
        ..SubmitOptions::default()
    };
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(
            submit(
                f.broker.as_ref(),
                "web.get",
                json!([server.url("/slow?ms=2000")]),
                &options,
            )
            .await,
        );
    }
    let mut fuel = Vec::new();
    for id in &ids {
        let r = finished(f.broker.as_ref(), id, WAIT).await;
        assert_eq!(
            r.state,
            TaskState::Success,
            "{r:?}\n{}",
            logged_for(&worker, id)
        );
        fuel.push(r.fuel.unwrap_or(0));
    }
    // A task that waits 2 s burns what one that does not wait burns.
    let quick = run(&f, "io", "web.get", json!([server.url("/hello")])).await;
    let quick_fuel = quick.fuel.unwrap_or(0) as f64;
    let slowest = *fuel.iter().max().unwrap() as f64;
    assert!(quick_fuel > 0.0);
    assert!(
        slowest < quick_fuel * 1.5,
        "waiting burned fuel: {slowest} vs {quick_fuel}"
    );
}

#[test]
fn grants_are_signed_shown_and_checked_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let f = crate::support::Publisher::new();
    let wasm = dir.path().join("web.wasm");
    std::fs::write(&wasm, read_component("web")).unwrap();
    let key = f.dir.path().join("keys/alice.key");
    let out = crate::support::TestCommand::new()
        .args(["sign"])
        .arg(&wasm)
        .arg("--key")
        .arg(&key)
        .args([
            "--allow-http",
            "https://api.example.com",
            "--allow-http",
            "https://*.stripe.com:443",
        ])
        .args(["--config", "api_token", "--kv"])
        .output();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains(
            "granting http https://api.example.com https://*.stripe.com; config api_token; kv"
        ),
        "{}",
        out.stdout_text()
    );
    let out = crate::support::TestCommand::new()
        .arg("inspect")
        .arg(&wasm)
        .arg("--trust")
        .arg(f.trust_dir())
        .output();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains(
            "grants:    http https://api.example.com https://*.stripe.com; config api_token; kv"
        ),
        "{}",
        out.stdout_text()
    );

    // A malformed grant is refused, naming what is wrong.
    let out = crate::support::TestCommand::new()
        .arg("sign")
        .arg(&wasm)
        .arg("--key")
        .arg(&key)
        .args(["--allow-http", "https://api.example.com/v1/charges"])
        .output();
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("invalid origin `https://api.example.com/v1/charges`: a grant names an origin, without path"),
        "{}",
        out.stderr_text()
    );
}

/// The polyglot table's capability cases: the `text` module in each SDK's
/// language, built with `celeriac build`, keeps a counter, reads a granted
/// configuration key and no other, and (Rust through `web`, Python, JS)
/// makes a granted HTTP request; a request outside the grant fails and is
/// logged with the task id.
#[tokio::test]
async fn every_sdk_reaches_what_its_grant_allows_and_nothing_else() {
    let server = TestServer::start(SECRET).await;
    let f = Fixture::new(&[]).await;
    let g = grants(&["http://127.0.0.1:*"], &["region"], true);
    for (lang, dir) in crate::polyglot::LANGUAGES {
        let bytes = std::fs::read(crate::polyglot::component(dir)).unwrap();
        f.publisher
            .upload_granting(f.broker.as_ref(), &bytes, lang, &g)
            .await;
    }
    upload_web(&f, "web", &g).await;
    let config_file = f.cache_dir().join("task.env");
    std::fs::write(&config_file, "region=eu-west-1\nsecret=hidden\n").unwrap();
    let worker = f.worker_process(
        "w-sdk",
        &[
            "--queues",
            "sdk",
            "--allow-private",
            "127.0.0.1",
            "--task-config",
            config_file.to_str().unwrap(),
        ],
    );
    worker.ready(f.broker.as_ref()).await;

    for (lang, _) in crate::polyglot::LANGUAGES {
        let task = |name: &str| format!("{lang}.{name}");
        for expected in [1, 2] {
            let r = run(&f, "sdk", &task("counter"), json!(["n"])).await;
            assert_eq!(r.result, Some(json!(expected)), "{lang}: {r:?}");
        }
        let r = run(&f, "sdk", &task("config_has"), json!(["region"])).await;
        assert_eq!(r.result, Some(json!(true)), "{lang}: {r:?}");
        let r = run(&f, "sdk", &task("config_has"), json!(["secret"])).await;
        assert!(
            failure(&r).contains(&format!(
                "config key `secret` is not granted to module `{lang}`"
            )),
            "{lang}: {r:?}"
        );
        if *lang == "c" {
            continue; // HTTP from C: see the README
        }
        let get = if *lang == "rust" {
            "web.get".to_string()
        } else {
            task("get")
        };
        let r = run(&f, "sdk", &get, json!([server.url("/hello")])).await;
        assert_eq!(
            r.state,
            TaskState::Success,
            "{lang}: {r:?}\n{}",
            logged_for(&worker, &r.id)
        );
        let result = r.result.unwrap();
        assert_eq!(result["status"], 200, "{lang}");
        assert_eq!(result["body"], "hello from the test server", "{lang}");
        let r = run(&f, "sdk", &get, json!(["http://203.0.113.7:8080/x"])).await;
        assert_eq!(r.state, TaskState::Failure, "{lang}: {r:?}");
        assert!(
            logged_for(&worker, &r.id).contains("outside the component's signed grant"),
            "{lang}: {}",
            worker.log()
        );
    }
}

/// HTTPS is the host's: rustls with the host's root certificates. A worker
/// that trusts the test CA (through `SSL_CERT_FILE`, which the host's
/// certificate loader honours) gets the answer; one that does not refuses
/// the server's certificate, and says so in its log.
#[tokio::test]
async fn https_goes_through_the_hosts_tls_and_its_roots() {
    let ca = crate::support::TestCa::new();
    let server = TestServer::start_tls(SECRET, &ca).await;
    let f = Fixture::new(&[]).await;
    upload_web(&f, "web", &grants(&["https://127.0.0.1:*"], &[], false)).await;
    let policy = ["--allow-private", "127.0.0.1"];
    let mut trusting = f.cli();
    trusting.env("SSL_CERT_FILE", ca.ca());
    let trusting = WorkerProcess::start(
        trusting,
        &f.publisher.trust_dir(),
        "w-tls",
        f.cache_dir(),
        &[&["--queues", "tls"][..], &policy].concat(),
    );
    trusting.ready(f.broker.as_ref()).await;
    let r = run(&f, "tls", "web.get", json!([server.url("/hello")])).await;
    assert_eq!(
        r.state,
        TaskState::Success,
        "{r:?}\n{}",
        logged_for(&trusting, &r.id)
    );
    assert_eq!(r.result.unwrap()["body"], "hello from the test server");

    // The same request from a worker whose roots do not hold the test CA.
    let mut stranger = f.cli();
    stranger.env("SSL_CERT_FILE", "/nonexistent/ca.pem");
    let stranger = WorkerProcess::start(
        stranger,
        &f.publisher.trust_dir(),
        "w-notls",
        f.cache_dir(),
        &[&["--queues", "notls"][..], &policy].concat(),
    );
    stranger.ready(f.broker.as_ref()).await;
    let r = run(&f, "notls", "web.get", json!([server.url("/hello")])).await;
    assert_eq!(r.state, TaskState::Failure, "{r:?}");
    let log = logged_for(&stranger, &r.id);
    assert!(
        log.contains("HTTP request failed") && log.contains("certificate"),
        "{}",
        stranger.log()
    );
}
