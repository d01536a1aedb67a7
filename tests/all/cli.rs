//! The `celeriac` binary as users drive it: build, keygen, sign, verify,
//! run and inspect, with exit codes and one-line causes.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tempfile::TempDir;

use crate::support::{Outcome, TestCommand, component, workspace_root};

/// A scratch directory with its own compile cache, so tests do not touch
/// the user's.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a scratch directory"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `celeriac` with this scratch directory's compile cache.
    fn command(&self) -> TestCommand {
        let mut command = TestCommand::new();
        command.cache(&self.path("cache"));
        command
    }

    fn celeriac(&self, args: &[&str]) -> Output {
        self.command().args(args).output()
    }

    /// Copy a built example component in, under `file_name`.
    fn component(&self, example: &str, file_name: &str) -> String {
        let dest = self.path(file_name);
        std::fs::copy(component(example), &dest).expect("copy the example component");
        dest.to_string_lossy().into_owned()
    }
}

/// The exit code of a run that exited (not killed by a signal).
fn code(o: &Output) -> i32 {
    o.code().expect("exited normally")
}

#[test]
fn build_then_run_prints_the_result() {
    let s = Scratch::new();
    component("math"); // make sure nothing else is compiling it concurrently
    let math_dir = workspace_root().join("tasks/math");
    let built = s.celeriac(&["build", math_dir.to_str().unwrap()]);
    assert_eq!(code(&built), 0, "{}", built.stderr_text());
    let wasm = built.stdout_text().trim().to_string();
    assert!(
        wasm.ends_with("math.wasm") && Path::new(&wasm).is_file(),
        "{wasm}"
    );

    let ran = s.celeriac(&["run", &wasm, "math.add", "[2, 3]"]);
    assert_eq!(code(&ran), 0, "{}", ran.stderr_text());
    assert_eq!(ran.stdout_text(), "5\n");
    // The bare task name works too, and kwargs bind by name.
    let ran = s.celeriac(&["run", &wasm, "mul", "[6]", "--kwargs", r#"{"b": 7}"#]);
    assert_eq!(ran.stdout_text(), "42\n");
}

#[test]
fn build_explains_what_it_cannot_build() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("empty")).unwrap();
    let o = s.celeriac(&["build", s.path("empty").to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        o.cause().contains("don't know how to build"),
        "{}",
        o.cause()
    );
}

#[test]
fn run_names_each_cause_in_one_line() {
    let s = Scratch::new();
    let m = s.component("misbehave", "misbehave.wasm");
    let math = s.component("math", "math.wasm");
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", &math, "math.add", "[2]"],
            "error: invalid-input: add() missing required argument `b`",
        ),
        (
            &["run", &m, "misbehave.fatal", r#"["no way"]"#],
            "error: fatal: no way",
        ),
        (
            &["run", &m, "misbehave.flaky", "[1]"],
            "error: retry: not yet: attempt 1 of 2",
        ),
        (
            &["run", &m, "misbehave.spin", "--timeout", "500ms"],
            "error: time limit exceeded (500.0ms)",
        ),
        (
            &["run", &m, "misbehave.spin", "--fuel", "1000000"],
            "error: fuel exhausted (1000000 units)",
        ),
        (
            &["run", &m, "misbehave.hog", "--memory", "64MiB"],
            "error: memory limit exceeded (64.0 MiB)",
        ),
        (
            &["run", &m, "misbehave.recurse"],
            "error: trap: stack overflow",
        ),
        (
            &["run", &m, "misbehave.exit", "[3]"],
            "error: task exited with status 3",
        ),
        (
            &[
                "run",
                &m,
                "misbehave.crash",
                r#"["thread 'main' panicked at src/host.rs:1:1:\nhost says no\n", 1]"#,
            ],
            "error: trap: unreachable instruction executed (guest stderr: panicked at src/host.rs:1:1: host says no)",
        ),
        (
            &[
                "run",
                &m,
                "misbehave.host_work",
                r#"["random", 1048576]"#,
                "--fuel",
                "10000000",
            ],
            "error: fuel exhausted (10000000 units)",
        ),
    ];
    for (args, expected) in cases {
        let o = s.celeriac(args);
        assert_eq!(code(&o), 1, "{args:?}: {}", o.stderr_text());
        assert_eq!(&o.cause(), expected, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?} printed a result");
    }
    let o = s.celeriac(&["run", &m, "misbehave.panic", r#"["oh no"]"#]);
    assert_eq!(code(&o), 1);
    assert!(
        o.cause().starts_with(
            "error: trap: unreachable instruction executed (guest stderr: panicked at "
        ),
        "{}",
        o.cause()
    );
    assert!(o.cause().ends_with(": oh no)"), "{}", o.cause());
    // The whole of stderr is that one line: no wasm backtrace.
    assert_eq!(o.stderr_text().lines().count(), 1);
}

/// `celeriac … | head`: a closed stdout ends the command quietly, with the
/// status of a process killed by SIGPIPE, instead of a panic (exit 101).
#[test]
fn closed_stdout_exits_quietly() {
    let s = Scratch::new();
    let text = s.component("text", "text.wasm");
    // A result larger than a pipe's buffer (64 KiB; one argument may be
    // up to 128 KiB), so writing it hits the closed pipe whenever the
    // reader goes away.
    let big = serde_json::json!(["a".repeat(100 << 10)]).to_string();
    for args in [
        vec!["run", text.as_str(), "text.upper", big.as_str()],
        vec!["inspect", text.as_str(), "--json"],
    ] {
        let mut child = s.command().args(&args).spawn();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let o = child.wait_with_output().unwrap();
        let stderr = o.stderr_text();
        assert_eq!(o.status.code(), Some(141), "{}: {stderr}", args[0]);
        assert!(stderr.is_empty(), "{}: {stderr}", args[0]);
    }
}

/// What cannot be loaded is said in one line, also by `inspect`.
#[test]
fn inspect_of_junk_says_why_in_one_line() {
    let s = Scratch::new();
    let junk = s.path("junk.wasm");
    std::fs::write(&junk, b"definitely not a component").unwrap();
    let o = s.celeriac(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let out = o.stdout_text();
    let error = out.lines().last().unwrap_or_default();
    assert!(
        error.starts_with("error:     not a valid component: "),
        "{out}"
    );
    // Every line is a `field: value` line of the report (or an import).
    for line in out.lines() {
        assert!(
            line.starts_with("  ") || line.split_once(':').is_some_and(|(k, _)| !k.contains(' ')),
            "stray line {line:?} in:\n{out}"
        );
    }
    let o = s.celeriac(&["inspect", junk.to_str().unwrap(), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!doc["error"].as_str().unwrap().contains('\n'), "{doc}");
}

#[test]
fn run_rejects_bad_flags_before_running() {
    let s = Scratch::new();
    let math = s.component("math", "math.wasm");
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", &math, "add", "[2, 3"],
            "ARGS_JSON is not valid JSON",
        ),
        (
            &["run", &math, "add", r#"{"a": 1}"#],
            "ARGS_JSON must be a JSON array",
        ),
        (
            &["run", &math, "add", "[1, 2]", "--timeout", "soon"],
            "invalid duration `soon`",
        ),
        (
            &["run", &math, "add", "[1, 2]", "--memory", "lots"],
            "invalid size `lots`",
        ),
    ];
    for (args, expected) in cases {
        let o = s.celeriac(args);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(
            o.stderr_text().contains(expected),
            "{args:?}: {}",
            o.cause()
        );
    }
}

#[test]
fn signing_verification_and_trust() {
    let s = Scratch::new();
    let trust = s.path("trust");
    std::fs::create_dir_all(&trust).unwrap();
    let trust = trust.to_str().unwrap().to_string();
    let keys = s.path("keys");

    // alice is trusted (her .pub is in the trust dir); mallory is not.
    let o = s.celeriac(&["keygen", "--out", keys.join("alice").to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", o.cause());
    std::fs::copy(keys.join("alice.pub"), s.path("trust/alice.pub")).unwrap();
    let o = s.celeriac(&["keygen", "--out", keys.join("mallory").to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    let again = s.celeriac(&["keygen", "--out", keys.join("alice").to_str().unwrap()]);
    assert_ne!(code(&again), 0, "keygen must not overwrite a key");
    let alice_key = keys.join("alice.key");
    let alice_key = alice_key.to_str().unwrap();

    // Signed by alice: verifies, runs under --trust, and inspect says so.
    let math = s.component("math", "math.wasm");
    let o = s.celeriac(&["sign", &math, "--key", alice_key]);
    assert_eq!(code(&o), 0, "{}", o.cause());
    assert!(Path::new(&format!("{math}.sig")).is_file());
    let o = s.celeriac(&["verify", &math, "--trust", &trust]);
    assert_eq!(code(&o), 0, "{}", o.cause());
    let line = o.stdout_text();
    let digest = format!("sha256:{}", sha256_hex(&std::fs::read(&math).unwrap()));
    assert!(
        line.starts_with(&format!("ok {digest} module=math signer=alice ")),
        "{line}"
    );
    let o = s.celeriac(&["run", &math, "math.add", "[2, 3]", "--trust", &trust]);
    assert_eq!(
        (code(&o), o.stdout_text().as_str()),
        (0, "5\n"),
        "{}",
        o.cause()
    );
    let o = s.celeriac(&["inspect", &math, "--trust", &trust]);
    let text = o.stdout_text();
    assert!(text.contains(&format!("digest:    {digest}")), "{text}");
    assert!(
        text.contains("tasks:     add, mul, div, sum, fib"),
        "{text}"
    );
    assert!(
        text.contains("signature: verified, signed by alice"),
        "{text}"
    );
    assert!(text.contains("  celeriac:task/types@0.1.0"), "{text}");

    // A signed component may not be asked for another module's tasks.
    let o = s.celeriac(&["run", &math, "text.add", "[2, 3]", "--trust", &trust]);
    assert_eq!(code(&o), 2);
    assert!(
        o.cause().contains("signed as module `math`, not `text`"),
        "{}",
        o.cause()
    );

    // One byte changed: refused by verify and by run --trust, which runs nothing.
    let tampered = s.path("tampered.wasm");
    let mut bytes = std::fs::read(&math).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&tampered, &bytes).unwrap();
    std::fs::copy(format!("{math}.sig"), s.path("tampered.wasm.sig")).unwrap();
    let tampered = tampered.to_str().unwrap();
    let o = s.celeriac(&["verify", tampered, "--trust", &trust]);
    assert_eq!(code(&o), 3);
    assert!(
        o.cause()
            .starts_with("refused: tampered: component bytes hash to sha256:"),
        "{}",
        o.cause()
    );
    let o = s.celeriac(&["run", tampered, "math.add", "[2, 3]", "--trust", &trust]);
    assert_eq!(code(&o), 3);
    assert!(o.cause().starts_with("refused: tampered"), "{}", o.cause());
    assert!(o.stdout.is_empty());

    // Signed by a key outside the trust directory.
    let foreign = s.component("math", "foreign.wasm");
    let o = s.celeriac(&[
        "sign",
        &foreign,
        "--key",
        keys.join("mallory.key").to_str().unwrap(),
        "--name",
        "math",
    ]);
    assert_eq!(code(&o), 0);
    for cmd in [
        vec!["verify", &foreign, "--trust", &trust],
        vec!["run", &foreign, "math.add", "[2, 3]", "--trust", &trust],
    ] {
        let o = s.celeriac(&cmd);
        assert_eq!(code(&o), 3, "{cmd:?}");
        assert!(
            o.cause()
                .starts_with("refused: unknown key: signed by key "),
            "{}",
            o.cause()
        );
        assert!(
            o.cause().contains("claims to be `mallory`"),
            "{}",
            o.cause()
        );
    }

    // Unsigned, and a signature file that is not one.
    let unsigned = s.component("math", "unsigned.wasm");
    let o = s.celeriac(&["verify", &unsigned, "--trust", &trust]);
    assert_eq!(code(&o), 3);
    assert!(
        o.cause().starts_with("refused: unsigned: no signature at "),
        "{}",
        o.cause()
    );
    std::fs::write(format!("{unsigned}.sig"), "{\"format\": 7}").unwrap();
    let o = s.celeriac(&["verify", &unsigned, "--trust", &trust]);
    assert_eq!(code(&o), 3);
    assert!(
        o.cause().starts_with("refused: malformed signature: "),
        "{}",
        o.cause()
    );

    // A private key others can read is refused, naming the fix, as ssh does.
    std::fs::set_permissions(
        keys.join("alice.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let o = s.celeriac(&["sign", &math, "--key", alice_key]);
    assert_eq!(code(&o), 2);
    assert_eq!(
        o.cause(),
        format!(
            "error: {alice_key}: private key is accessible by others (mode 0666); run `chmod 600 {alice_key}`"
        )
    );
    assert_eq!(o.stderr_text().lines().count(), 1);

    // A trust directory without keys is an error, not "trust nothing quietly".
    std::fs::create_dir_all(s.path("no-keys")).unwrap();
    let o = s.celeriac(&[
        "verify",
        &math,
        "--trust",
        s.path("no-keys").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3);
    assert!(o.cause().contains("holds no public keys"), "{}", o.cause());
}

#[test]
fn inspect_unsigned_component() {
    let s = Scratch::new();
    let text = s.component("text", "text.wasm");
    let o = s.celeriac(&["inspect", &text, "--json"]);
    assert_eq!(code(&o), 0, "{}", o.cause());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["module"], "text");
    assert_eq!(
        doc["tasks"],
        serde_json::json!([
            "sha256",
            "word_count",
            "upper",
            "reverse",
            "stats",
            "eventually",
            "ascii",
            "config_has",
            "counter"
        ])
    );
    assert_eq!(doc["signature"], serde_json::Value::Null);
    assert_eq!(
        doc["size"].as_u64().unwrap(),
        std::fs::read(&text).unwrap().len() as u64
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The test checks the CLI's digest against an independent computation.
    let out = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
