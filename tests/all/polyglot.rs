//! Cross-language conformance: the `text` module written in Rust, C,
//! Python and JavaScript, each built with `celeriac build`, must answer one
//! table of cases identically, through `celeriac run` and through a worker
//! on Redis.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::support::{Fixture, Outcome, TestCommand, quick_config, workspace_root};
use celeriac_client::{self as client, SubmitOptions, TaskRequest};
use celeriac_protocol::record::TaskState;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Task directories under tasks/, one per language.
pub(crate) const LANGUAGES: &[(&str, &str)] = &[
    ("rust", "text"),
    ("c", "c-text"),
    ("python", "python-text"),
    ("javascript", "js-text"),
];

/// Build a language's text component with the real CLI, once per process.
pub(crate) fn component(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(dir) {
        return p.clone();
    }
    crate::support::component("text"); // the Rust build shares the workspace target dir
    // The guest toolchains are found as the developer set them up (the
    // Python one may be named by CELERIAC_COMPONENTIZE_PY, the C sysroot
    // by CELERIAC_WASI_SYSROOT): where the tools are, not how celeriac
    // behaves.
    let out = TestCommand::new()
        .inherit("CELERIAC_COMPONENTIZE_PY")
        .inherit("CELERIAC_WASI_SYSROOT")
        .arg("build")
        .arg(workspace_root().join("tasks").join(dir))
        .output();
    assert!(
        out.status.success(),
        "celeriac build tasks/{dir} failed:\n{}",
        out.stderr_text()
    );
    let path = PathBuf::from(out.stdout_text().trim());
    assert!(path.is_file(), "{} was not written", path.display());
    built.insert(dir.to_string(), path.clone());
    path
}

#[derive(Debug, Clone)]
enum Expect {
    Ok(Value),
    /// Failure kind and the exact message.
    Fail(&'static str, String),
    /// Failure kind and how the message starts (type errors are phrased
    /// by each language's decoder).
    FailStarting(&'static str, &'static str),
    /// Like `FailStarting`, and the whole message (kind included) is at most
    /// this many characters: a huge bad argument is quoted in part only.
    FailShort(&'static str, &'static str, usize),
}

/// How much of a bad argument every SDK quotes before `…`.
const QUOTED_CHARS: usize = 64;

struct Case {
    name: &'static str,
    task: &'static str,
    args: Value,
    kwargs: Value,
    expect: Expect,
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn cases(large: usize) -> Vec<Case> {
    let big = "word ".repeat(large / 5);
    let case = |name, task, args: Value, expect| Case {
        name,
        task,
        args,
        kwargs: json!({}),
        expect,
    };
    vec![
        case(
            "sha256",
            "sha256",
            json!(["hello"]),
            Expect::Ok(json!(sha_hex("hello"))),
        ),
        case(
            "word count",
            "word_count",
            json!(["the quick  brown\nfox\u{a0}jumps"]),
            Expect::Ok(json!(5)),
        ),
        case(
            "upper, unicode",
            "upper",
            json!(["straße café δ ж"]),
            Expect::Ok(json!("STRASSE CAFÉ Δ Ж")),
        ),
        case(
            "reverse by code point",
            "reverse",
            json!(["añb😀"]),
            Expect::Ok(json!("😀bña")),
        ),
        case(
            "stats, unicode",
            "stats",
            json!(["héllo wörld\nbye\n"]),
            Expect::Ok(json!({"bytes": 18, "chars": 16, "words": 3, "lines": 2})),
        ),
        case(
            "sha256, unicode",
            "sha256",
            json!(["日本語 🎉"]),
            Expect::Ok(json!(sha_hex("日本語 🎉"))),
        ),
        Case {
            name: "kwargs bind by name",
            task: "stats",
            args: json!([]),
            kwargs: json!({"text": "a\nb"}),
            expect: Expect::Ok(json!({"bytes": 3, "chars": 3, "words": 2, "lines": 2})),
        },
        case(
            "missing argument",
            "word_count",
            json!([]),
            Expect::Fail(
                "invalid-input",
                "word_count() missing required argument `text`".into(),
            ),
        ),
        case(
            "too many arguments",
            "upper",
            json!(["a", "b"]),
            Expect::Fail(
                "invalid-input",
                "upper() takes 1 positional argument but 2 were given".into(),
            ),
        ),
        Case {
            name: "unknown keyword",
            task: "upper",
            args: json!([]),
            kwargs: json!({"txt": "a"}),
            expect: Expect::Fail(
                "invalid-input",
                "upper() got an unexpected keyword argument `txt`".into(),
            ),
        },
        case(
            "wrong type",
            "sha256",
            json!([42]),
            Expect::FailStarting("invalid-input", "argument `text`:"),
        ),
        case(
            "retry failure",
            "eventually",
            json!(["later", 1]),
            Expect::Fail("retry", "not yet: attempt 1 of 2".into()),
        ),
        case(
            "fatal failure",
            "ascii",
            json!(["héllo"]),
            Expect::Fail("fatal", "not ASCII: `é` at character 1".into()),
        ),
        Case {
            name: "large unknown keyword is quoted in part",
            task: "upper",
            args: json!([]),
            kwargs: json!({ "k".repeat(large): "a" }),
            expect: Expect::Fail(
                "invalid-input",
                format!(
                    "upper() got an unexpected keyword argument `{}…`",
                    "k".repeat(QUOTED_CHARS)
                ),
            ),
        },
        case(
            "large argument of the wrong type is quoted in part",
            "eventually",
            json!(["text", "9".repeat(large)]),
            Expect::FailShort("invalid-input", "argument `after`:", 200),
        ),
        case(
            "large input, sha256",
            "sha256",
            json!([big]),
            Expect::Ok(json!(sha_hex(&big))),
        ),
        case(
            "large input, words",
            "word_count",
            json!([big]),
            Expect::Ok(json!(large / 5)),
        ),
    ]
}

/// Every language through `celeriac run`. Arguments travel on the command
/// line, so "large" here is 100 KiB (Linux caps one argument at 128 KiB).
#[test]
fn conformance_through_celeriac_run() {
    let cache = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (language, dir) in LANGUAGES {
        let wasm = component(dir);
        for case in cases(100 << 10) {
            let out = TestCommand::new()
                .cache(cache.path())
                .arg("run")
                .arg(&wasm)
                .arg(format!("text.{}", case.task))
                .arg(case.args.to_string())
                .arg("--kwargs")
                .arg(case.kwargs.to_string())
                .output();
            let stdout = out.stdout_text();
            let cause = out.cause();
            let cause = cause.as_str();
            let ok = match &case.expect {
                Expect::Ok(v) => {
                    out.status.success()
                        && serde_json::from_str::<Value>(stdout.trim()).ok().as_ref() == Some(v)
                }
                Expect::Fail(kind, msg) => {
                    out.status.code() == Some(1) && cause == format!("error: {kind}: {msg}")
                }
                Expect::FailStarting(kind, prefix) => {
                    out.status.code() == Some(1)
                        && cause.starts_with(&format!("error: {kind}: {prefix}"))
                }
                Expect::FailShort(kind, prefix, max) => {
                    out.status.code() == Some(1)
                        && cause.starts_with(&format!("error: {kind}: {prefix}"))
                        && cause.chars().count() <= "error: ".len() + max
                }
            };
            if !ok {
                failures.push(format!(
                    "{language} / {}: expected {:?}, got exit {:?} stdout {:?} stderr {:?}",
                    case.name,
                    case.expect,
                    out.status.code(),
                    truncate(&stdout),
                    truncate(cause)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every language through a worker on Redis, signed and uploaded like any
/// component; "large" is 1 MiB, and retry failures really retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_a_worker() {
    let mut failures = Vec::new();
    for (language, dir) in LANGUAGES {
        let wasm = component(dir);
        let f = Fixture::new(&[]).await;
        let b = &f.broker;
        let bytes = std::fs::read(&wasm).expect("read the built component");
        f.publisher.upload_bytes(b.as_ref(), &bytes, "text").await;
        let mut config = quick_config(&format!("{language}-worker"));
        config.limits.timeout = Duration::from_secs(30);
        let worker = f.worker(config);
        for case in cases(1 << 20) {
            // Retries are real here: `eventually` succeeds on its first retry.
            let max_retries = if case.task == "eventually" { 1 } else { 0 };
            let request = TaskRequest {
                task: format!("text.{}", case.task),
                args: case.args.as_array().cloned().unwrap_or_default(),
                kwargs: case.kwargs.as_object().cloned().unwrap_or_default(),
            };
            let options = SubmitOptions {
                max_retries,
                ..SubmitOptions::default()
            };
            let id = client::submit(b.as_ref(), request, &options).await.unwrap();
            let r = client::wait(b.as_ref(), &id, Duration::from_secs(60))
                .await
                .unwrap();
            let Some(r) = r else {
                failures.push(format!("{language} / {}: no result", case.name));
                continue;
            };
            let (kind, message) = r
                .error
                .as_ref()
                .map(|e| (e.kind.as_str(), e.message.as_str()))
                .unwrap_or_default();
            let ok = match &case.expect {
                // The retry case: through a worker it retries and succeeds.
                Expect::Fail("retry", _) if case.task == "eventually" => {
                    r.state == TaskState::Success
                        && r.retries == 1
                        && r.result == Some(json!("later"))
                }
                Expect::Ok(v) => r.state == TaskState::Success && r.result.as_ref() == Some(v),
                Expect::Fail(k, msg) => {
                    r.state == TaskState::Failure && kind == *k && message == format!("{k}: {msg}")
                }
                Expect::FailStarting(k, prefix) => {
                    r.state == TaskState::Failure
                        && kind == *k
                        && message.starts_with(&format!("{k}: {prefix}"))
                }
                Expect::FailShort(k, prefix, max) => {
                    r.state == TaskState::Failure
                        && kind == *k
                        && message.starts_with(&format!("{k}: {prefix}"))
                        && message.chars().count() <= *max
                }
            };
            if !ok {
                failures.push(format!(
                    "{language} / {}: expected {:?}, got {:?}",
                    case.name,
                    case.expect,
                    truncate(&format!("{r:?}"))
                ));
            }
        }
        worker.stop().await;
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}
