//! `celeriac serve` over real HTTP against a real Redis and a real worker:
//! every endpoint of the OpenAPI document refused without a token and
//! with a token lacking its scope; uploads (a tampered one refused),
//! submit, batch, workflows, results with a long poll, revoke, queues,
//! workers, history, dead letters (list, requeue, purge), events (recent
//! and Server-Sent Events); bad input as a 4xx with a one-line reason;
//! `--anonymous`, TLS, and `celeriac events`.

use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{Api, Fixture, ServeProcess, TestCa, wait_for};

/// A task's final record through the API's long poll.
async fn final_record(api: &Api, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..6 {
        let (status, r) = api.get(&format!("/api/v1/tasks/{id}?wait=20")).await;
        assert_eq!(status, 200, "{r}");
        if matches!(r["state"].as_str(), Some("SUCCESS" | "FAILURE" | "REVOKED")) {
            return r;
        }
        last = r;
    }
    panic!("task {id} did not finish: {last}");
}

fn assert_error(status: u16, body: &Value, want: u16, says: &str) {
    assert_eq!(status, want, "{body}");
    let e = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"));
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains(says), "`{e}` should say `{says}`");
}

/// A token made with `celeriac token add`, as an operator would.
fn token(f: &Fixture, server: &ServeProcess, name: &str, scope: &str) -> String {
    let out = f
        .cli()
        .arg("token")
        .arg("--state-dir")
        .arg(&server.state_dir)
        .args(["add", name, "--scope", scope])
        .output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A concrete path for a templated one of the OpenAPI document.
fn concrete(path: &str) -> String {
    path.replace("{id}", "0000")
        .replace("{root_id}", "0000")
        .replace("{queue}", "default")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_checks_its_token_and_scope() {
    let f = Fixture::new(&["math"]).await;
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let reader = token(&f, &server, "reader", "read");
    let doc: Value =
        serde_json::from_str(celeriac_server::api::OPENAPI).expect("the OpenAPI document");
    let (status, served) = server.api(None).get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(served, doc, "the server serves its document");

    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let scope = op["x-scope"].as_str().expect("x-scope on every operation");
            if scope == "none" {
                continue;
            }
            let method: reqwest::Method = method.to_uppercase().parse().expect("a method");
            let url = concrete(path);
            for (who, api) in [
                ("nobody", server.api(None)),
                ("a stranger", server.api(Some("cel_not-a-token"))),
            ] {
                let (status, body) = api.send(api.request(method.clone(), &url)).await;
                assert_eq!(status, 401, "{method} {url} by {who}: {body}");
            }
            if scope != "read" {
                let api = server.api(Some(&reader));
                let (status, body) = api.send(api.request(method.clone(), &url)).await;
                assert_error(status, &body, 403, &format!("lacks the `{scope}` scope"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} operations in the document");
    // A route the document does not describe is not there.
    let (status, body) = server.admin().get("/api/v1/nothing").await;
    assert_error(status, &body, 404, "no such endpoint");
    let (status, who) = server.api(Some(&reader)).get("/api/v1/whoami").await;
    assert_eq!(
        (status, who),
        (200, json!({"name": "reader", "scopes": ["read"]}))
    );
    // The token itself is never logged.
    assert!(!server.log().contains(&server.admin_token));
    assert!(!server.log().contains(&reader));
}

#[tokio::test(flavor = "multi_thread")]
async fn producers_upload_submit_and_read_results_over_http() {
    let f = Fixture::new(&["math"]).await;
    let _worker = f.worker_process("w-api", &[]);
    let trust = f.publisher.trust_dir();
    let server = ServeProcess::start(
        f.cli(),
        f.cache_dir(),
        &["--trust", trust.to_str().expect("a UTF-8 path")],
    )
    .await;
    let admin = server.admin();
    let submitter = server.api(Some(&token(&f, &server, "producer", "submit,read")));

    // Upload: a signed component goes in; tampered bytes do not.
    let path = f.publisher.signed_file("text");
    let bytes = std::fs::read(&path).expect("the component");
    let sig: Value = serde_json::from_slice(
        &std::fs::read(celeriac_signing::signature_path(&path)).expect("its signature"),
    )
    .expect("signature JSON");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let (status, body) = admin
        .post(
            "/api/v1/components",
            &json!({"component": b64(&tampered), "signature": sig}),
        )
        .await;
    assert_error(status, &body, 422, "refused");
    let (status, body) = submitter
        .post(
            "/api/v1/components",
            &json!({"component": b64(&bytes), "signature": sig}),
        )
        .await;
    assert_error(status, &body, 403, "lacks the `upload` scope");
    let (status, body) = admin
        .post(
            "/api/v1/components",
            &json!({"component": "%%%", "signature": sig}),
        )
        .await;
    assert_error(status, &body, 400, "not base64");
    let (status, up) = admin
        .post(
            "/api/v1/components",
            &json!({"component": b64(&bytes), "signature": sig}),
        )
        .await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["module"], "text");
    let (_, components) = submitter.get("/api/v1/components").await;
    let text = components
        .as_array()
        .and_then(|c| c.iter().find(|m| m["module"] == "text"))
        .unwrap_or_else(|| panic!("text listed: {components}"));
    assert_eq!(text["digest"], up["digest"]);
    assert!(text["signer"].as_str().is_some_and(|s| !s.is_empty()));

    // One task, then its result through the long poll.
    let (status, sent) = submitter
        .post(
            "/api/v1/tasks",
            &json!({"task": "math.add", "args": [2, 3]}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["id"].as_str().expect("an id").to_string();
    let record = final_record(&submitter, &id).await;
    assert_eq!(
        (record["state"].clone(), record["result"].clone()),
        (json!("SUCCESS"), json!(5))
    );
    assert_eq!(record["worker"], "w-api");
    // An unknown id is PENDING, as Celery answers.
    let (_, unknown) = submitter.get("/api/v1/tasks/no-such-task").await;
    assert_eq!(unknown["state"], "PENDING");

    // Bad input: a 4xx naming what was wrong, nothing queued.
    let bad: [(Value, u16, &str); 6] = [
        (
            json!({"task": "add", "args": [1]}),
            400,
            "must be `module.task`",
        ),
        (json!({"task": "nope.add"}), 404, "unknown module `nope`"),
        (
            json!({"task": "math.add", "bogus": 1}),
            400,
            "unknown field `bogus`",
        ),
        (
            json!({"task": "math.add", "queue": "no spaces"}),
            400,
            "queue name",
        ),
        (json!({"task": "math.add", "priority": 12}), 400, "priority"),
        (
            json!({"task": "math.add", "timeout": "soon"}),
            400,
            "timeout",
        ),
    ];
    for (body, want, says) in bad {
        let (status, answer) = submitter.post("/api/v1/tasks", &body).await;
        assert_error(status, &answer, want, says);
    }
    let raw = submitter
        .request(reqwest::Method::POST, "/api/v1/tasks")
        .header("content-type", "application/json")
        .body("{not json");
    let (status, answer) = submitter.send(raw).await;
    assert_error(status, &answer, 400, "invalid JSON body");
    let (status, answer) = submitter.get(&format!("/api/v1/tasks/{id}?wait=600")).await;
    assert_error(status, &answer, 400, "wait is at most 60");

    // A batch, all or nothing.
    let tasks: Vec<Value> = (0..3)
        .map(|i| json!({"task": "math.mul", "args": [i, 10]}))
        .collect();
    let (status, batch) = submitter
        .post("/api/v1/tasks/batch", &json!({"tasks": tasks}))
        .await;
    assert_eq!(status, 202, "{batch}");
    for (i, id) in batch["ids"].as_array().expect("ids").iter().enumerate() {
        let r = final_record(&submitter, id.as_str().expect("an id")).await;
        assert_eq!(r["result"], json!(i * 10));
    }
    let (status, answer) = submitter
        .post(
            "/api/v1/tasks/batch",
            &json!({"tasks": [{"task": "math.add"}, {"task": "x"}]}),
        )
        .await;
    assert_error(status, &answer, 400, "got `x`");

    // A workflow: a chain, its members readable by the root id.
    let chain =
        json!({"chain": [{"task": "math.add", "args": [2, 2]}, {"task": "math.add", "args": [4]}]});
    let (status, run) = submitter.post("/api/v1/workflows", &chain).await;
    assert_eq!(status, 202, "{run}");
    let done = final_record(&submitter, run["final_id"].as_str().expect("final id")).await;
    assert_eq!(done["result"], json!(8));
    let (status, flow) = submitter
        .get(&format!(
            "/api/v1/workflows/{}",
            run["root_id"].as_str().expect("root")
        ))
        .await;
    assert_eq!(status, 200, "{flow}");
    assert_eq!(flow["members"].as_array().map(Vec::len), Some(2), "{flow}");
    let (status, answer) = submitter
        .post("/api/v1/workflows", &json!({"chain": []}))
        .await;
    assert!((400..500).contains(&status), "{status} {answer}");
    let (status, _) = submitter.get("/api/v1/workflows/nope").await;
    assert_eq!(status, 404);

    // Revoke: a task waiting for its countdown never runs.
    let (_, later) = submitter
        .post(
            "/api/v1/tasks",
            &json!({"task": "math.add", "args": [1, 1], "countdown": "2s"}),
        )
        .await;
    let later = later["id"].as_str().expect("an id").to_string();
    let (status, revoked) = submitter
        .post(&format!("/api/v1/tasks/{later}/revoke"), &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], json!([later]));
    assert_eq!(final_record(&submitter, &later).await["state"], "REVOKED");

    // Queues, workers, history.
    let (_, queues) = submitter.get("/api/v1/queues").await;
    assert!(
        queues
            .as_array()
            .is_some_and(|q| q.iter().any(|q| q["queue"] == "default")),
        "{queues}"
    );
    let (_, workers) = submitter.get("/api/v1/workers").await;
    assert!(
        workers
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["id"] == "w-api")),
        "{workers}"
    );
    wait_for("a history sample", Duration::from_secs(10), async || {
        let (_, h) = submitter.get("/api/v1/history").await;
        h["samples"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;

    // Events: the task's life, newest last.
    let (_, events) = submitter
        .get(&format!("/api/v1/events/recent?task={id}"))
        .await;
    let kinds: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["sent", "received", "started", "succeeded"],
        "{events}"
    );
    let (status, answer) = submitter.get("/api/v1/events/recent?state=finished").await;
    assert_error(status, &answer, 400, "unknown event type `finished`");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_requeued_and_purged() {
    let f = Fixture::new(&["math"]).await;
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let admin = server.admin();
    let reader = server.api(Some(&token(&f, &server, "reader", "read")));
    // Two messages no worker can read, dead-lettered with their reason.
    let garbage: Vec<celeriac_broker::Outgoing> = (0..2)
        .map(|i| celeriac_broker::Outgoing {
            queue: "default".into(),
            payload: format!("not a message {i}"),
            due_ms: None,
        })
        .collect();
    f.broker.enqueue(&garbage).await.expect("enqueue");
    let _worker = f.worker_process("w-dlq", &[]);
    let letters = wait_for("two dead letters", Duration::from_secs(30), async || {
        let (_, l) = reader.get("/api/v1/dead-letters?queue=default").await;
        l.as_array().filter(|l| l.len() == 2).cloned()
    })
    .await;
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not valid JSON") || r.contains("malformed")),
        "{letters:?}"
    );
    let id = letters[0]["id"].as_str().expect("an id").to_string();
    let requeue = format!("/api/v1/dead-letters/default/{id}/requeue");
    let (status, answer) = reader.post(&requeue, &json!({})).await;
    assert_error(status, &answer, 403, "lacks the `admin` scope");
    let (status, answer) = admin.post(&requeue, &json!({})).await;
    assert_eq!((status, answer), (200, json!({"requeued": true})));
    let (status, answer) = admin.post(&requeue, &json!({})).await;
    assert_error(status, &answer, 404, "no dead letter");
    let (status, answer) = admin.get("/api/v1/dead-letters").await;
    assert_error(status, &answer, 400, "invalid query");
    // The requeued one comes back (still unreadable); then purge them all.
    wait_for(
        "the requeued letter to return",
        Duration::from_secs(30),
        async || {
            let (_, l) = reader.get("/api/v1/dead-letters?queue=default").await;
            l.as_array().is_some_and(|l| l.len() == 2)
        },
    )
    .await;
    let (status, purged) = admin.delete("/api/v1/dead-letters/default").await;
    assert_eq!((status, purged), (200, json!({"purged": 2})));
    let (_, left) = reader.get("/api/v1/dead-letters?queue=default").await;
    assert_eq!(left, json!([]));
}

/// The live stream: Server-Sent Events of a task from submit to success,
/// and `celeriac events` showing the same.
#[tokio::test(flavor = "multi_thread")]
async fn events_stream_live_over_sse_and_the_cli() {
    let f = Fixture::new(&["math"]).await;
    let _worker = f.worker_process("w-events", &[]);
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let admin = server.admin();
    let cli = f
        .cli()
        .args(["events", "--json", "--task", "math.mul", "--count", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn();
    let resp = admin
        .request(reqwest::Method::GET, "/api/v1/events?task=math.mul")
        .send()
        .await
        .expect("open the event stream");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    // Both listeners are attached before the task is sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, sent) = admin
        .post(
            "/api/v1/tasks",
            &json!({"task": "math.mul", "args": [6, 7]}),
        )
        .await;
    let id = sent["id"].as_str().expect("an id").to_string();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("stream")));
            if text.contains("event: succeeded") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(seen, Ok(true)), "no succeeded event in: {text}");
    for kind in ["sent", "received", "started", "succeeded"] {
        assert!(
            text.contains(&format!("event: {kind}\n")),
            "{kind} missing: {text}"
        );
    }
    assert!(text.contains(&id) && text.contains("\nid: "), "{text}");

    let out = tokio::task::spawn_blocking(move || cli.wait_with_output())
        .await
        .expect("join")
        .expect("celeriac events");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["sent", "received", "started", "succeeded"],
        "{lines:?}"
    );
    assert!(lines.iter().all(|e| e["task_id"] == json!(id)));
    assert!(lines[3]["runtime_ms"].is_number() && lines[3]["worker"] == "w-events");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_reads_only_and_tls_serves_https() {
    let f = Fixture::new(&["math"]).await;
    let open = ServeProcess::start(f.cli(), f.cache_dir(), &["--anonymous"]).await;
    let nobody = open.api(None);
    let (status, who) = nobody.get("/api/v1/whoami").await;
    assert_eq!((status, who["name"].clone()), (200, json!("anonymous")));
    assert_eq!(nobody.get("/api/v1/queues").await.0, 200);
    let (status, answer) = nobody
        .post("/api/v1/tasks", &json!({"task": "math.add"}))
        .await;
    assert_error(status, &answer, 403, "lacks the `submit` scope");
    // A token still counts for what it is.
    let (status, _) = open
        .admin()
        .post(
            "/api/v1/tasks",
            &json!({"task": "math.add", "args": [1, 2]}),
        )
        .await;
    assert_eq!(status, 202);

    let ca = TestCa::new();
    let tls = ServeProcess::start_with(
        f.cli(),
        f.cache_dir(),
        &[
            "--tls-cert",
            ca.cert().to_str().expect("path"),
            "--tls-key",
            ca.key().to_str().expect("path"),
        ],
        "https",
        Some(&ca.ca()),
    )
    .await;
    let secure = Api::new(&tls.base, Some(&tls.admin_token), Some(&ca.ca()));
    let (status, who) = secure.get("/api/v1/whoami").await;
    assert_eq!(
        (status, who["name"].clone()),
        (200, json!("admin")),
        "{}",
        tls.log()
    );
    // Plain HTTP on the TLS port gets nowhere.
    let plain = Api::new(
        &tls.base.replace("https", "http"),
        Some(&tls.admin_token),
        None,
    );
    assert_ne!(plain.get("/api/v1/whoami").await.0, 200);
}

/// A task that runs a while is shown started while it runs; a quick one's
/// events still arrive in order; a failure is followed by its dead letter.
#[tokio::test(flavor = "multi_thread")]
async fn events_show_long_tasks_live_and_failures_in_order() {
    let f = Fixture::new(&["misbehave"]).await;
    let _worker = f.worker_process("w-long", &[]);
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let api = server.admin();
    let kinds = async |id: &str| -> Vec<String> {
        let (_, events) = api.get(&format!("/api/v1/events/recent?task={id}")).await;
        events
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["type"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, sent) = api
        .post(
            "/api/v1/tasks",
            &json!({"task": "misbehave.sleep", "args": [3000]}),
        )
        .await;
    let id = sent["id"].as_str().expect("an id").to_string();
    wait_for(
        "started while it runs",
        Duration::from_secs(30),
        async || kinds(&id).await == ["sent", "received", "started"],
    )
    .await;
    assert_eq!(final_record(&api, &id).await["state"], "SUCCESS");
    assert_eq!(
        kinds(&id).await,
        ["sent", "received", "started", "succeeded"]
    );

    let (_, sent) = api
        .post(
            "/api/v1/tasks",
            &json!({"task": "misbehave.fatal", "args": ["no way"]}),
        )
        .await;
    let id = sent["id"].as_str().expect("an id").to_string();
    assert_eq!(final_record(&api, &id).await["state"], "FAILURE");
    assert_eq!(
        kinds(&id).await,
        ["sent", "received", "started", "failed", "dead-lettered"]
    );
    let (_, failed) = api
        .get(&format!("/api/v1/events/recent?task={id}&state=failed"))
        .await;
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no way")),
        "{failed}"
    );
}

/// A client that never finishes its request head is cut off (slow-header
/// attacks hold no connection for long).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new(&[]).await;
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let addr = server
        .base
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1");
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was still open after 30 s");
    // Others are served meanwhile and after.
    assert_eq!(server.admin().get("/api/v1/whoami").await.0, 200);
}
