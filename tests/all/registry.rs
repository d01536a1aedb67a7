//! The component store and the compile cache as an attacker meets them:
//! uploads a worker could not run, rollbacks, rotated keys, components
//! nobody trusted signed, and compiled code planted in a cache directory.
//! Real Redis, real components from `tasks/`, the real `celeriac` binary.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{
    Fixture, Outcome, Prefix, Publisher, RunningWorker, TestCommand, finished, quick_config,
    read_component, redis_url, request, upload_options, worker_check,
};
use celeriac_broker::registry::{self as registry, RegistryError, UploadOptions};
use celeriac_broker::{Broker, ModuleInfo};
use celeriac_client::{self as client, SubmitOptions};
use celeriac_protocol::record::TaskState;
use celeriac_sandbox::{Origin, Sandbox, SandboxConfig};
use celeriac_signing::{
    Digest, KeyPair, PublicKey, SignatureFile, TrustStore, generate_keypair, sign_component_at,
    signature_path,
};
use serde_json::{Value, json};

/// A fixed signing time plus `secs`, so version order is explicit.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn options() -> UploadOptions<'static> {
    upload_options()
}

fn sign(p: &Publisher, bytes: &[u8], module: &str, secs: u64) -> SignatureFile {
    sign_component_at(bytes, &p.key, module, at(secs)).unwrap()
}

async fn run_task(
    b: &dyn Broker,
    task: &str,
    args: Value,
) -> celeriac_protocol::record::ResultRecord {
    let id = crate::support::submit(b, task, args, &SubmitOptions::default()).await;
    finished(b, &id, Duration::from_secs(30)).await
}

/// `bytes` with every occurrence of `from` replaced by `to` (same length,
/// so the component's structure stays valid).
fn patched(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = bytes.to_vec();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "{} not found", String::from_utf8_lossy(from));
    out
}

fn key_pair(dir: &Path, name: &str) -> (KeyPair, PublicKey) {
    let (secret, public, _) = generate_keypair(&dir.join(name)).unwrap();
    (
        KeyPair::load(&secret).unwrap(),
        PublicKey::load(&public).unwrap(),
    )
}

/// `celeriac ARGS…` on the test Redis (the prefix is a flag of the
/// command line here, not an environment setting), with compile cache
/// `cache`.
fn celeriac(args: &[&str], cache: &Path) -> Output {
    TestCommand::new()
        .cache(cache)
        .broker(&redis_url())
        .args(args)
        .output()
}

fn stderr(o: &Output) -> String {
    o.stderr_text()
}

// ---------------------------------------------------------------------
// Upload checks the component as a worker would.

/// A core module, an empty file, a component importing what no host
/// offers, one built for another contract version and one over the size
/// limit: each is refused with the sandbox's own reason, nothing is stored
/// and the module keeps pointing at its good version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_refuses_what_a_worker_could_not_run() {
    let f = Fixture::new(&[]).await;
    let (b, publisher) = (&f.broker, &f.publisher);
    let math = read_component("math");
    let good = registry::upload(
        b.as_ref(),
        &math,
        &sign(publisher, &math, "math", 0),
        &publisher.trust,
        options(),
    )
    .await
    .unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a valid component",
        ),
        ("empty file", Vec::new(), "not a valid component"),
        (
            "unknown import",
            patched(&math, "wasi:cli/environment@", "wasi:cli/envirxnment@"),
            "component cannot run here",
        ),
        (
            "another contract version",
            patched(
                &read_component("text"),
                "celeriac:task/context@0.1.0",
                "celeriac:task/context@0.2.0",
            ),
            "celeriac:task/context@0.2.0",
        ),
        (
            "over the size limit",
            vec![0u8; registry::DEFAULT_MAX_COMPONENT_SIZE + 1],
            "over the upload limit of 64.0 MiB",
        ),
    ];
    for (what, bytes, reason) in cases {
        // Signed later than the good version, so only the check stops it.
        let sig = sign(publisher, &bytes, "math", 10);
        let e = registry::upload(b.as_ref(), &bytes, &sig, &publisher.trust, options())
            .await
            .expect_err(what)
            .to_string();
        assert!(e.contains(reason), "{what}: {e}");
        assert!(!e.contains('\n'), "{what}: {e}");
        if bytes.len() <= registry::DEFAULT_MAX_COMPONENT_SIZE {
            // The same words a worker (and `celeriac run`) would use.
            assert_eq!(e, worker_check(&bytes).unwrap_err(), "{what}");
        }
        let digest = Digest::of(&bytes);
        assert!(
            b.get_component_signatures(&digest).await.unwrap().is_none(),
            "{what}: stored"
        );
        assert!(
            b.get_component_bytes(&digest).await.unwrap().is_none(),
            "{what}: stored"
        );
        assert_eq!(
            b.get_module("math").await.unwrap().unwrap().digest,
            good.digest,
            "{what}: the module moved"
        );
    }
}

/// Through the binary: the refusal is one line naming the file and the
/// cause, exit 2, as `celeriac run` reports the same component; a file
/// over `--max-size` is refused before it is read.
#[test]
fn celeriac_upload_reports_refusals_in_one_line() {
    let p = Prefix::new();
    let publisher = Publisher::new();
    let dir = publisher.dir.path();
    let cache = dir.join("cache");
    let trust = publisher.trust_dir();
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(
        signature_path(&junk),
        sign(&publisher, b"\0asm\x01\0\0\0", "math", 0).to_json(),
    )
    .unwrap();
    let (junk_s, trust_s) = (junk.to_str().unwrap(), trust.to_str().unwrap());

    let up = celeriac(
        &["upload", junk_s, "--trust", trust_s, "--prefix", p.name()],
        &cache,
    );
    assert_eq!(up.status.code(), Some(2), "{}", stderr(&up));
    let line = stderr(&up);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("error: {junk_s}: not a valid component: ")),
        "{line}"
    );
    let ran = celeriac(&["run", junk_s, "math.add", "[1, 2]"], &cache);
    let cause = line.split_once(": not a valid component: ").unwrap().1;
    assert!(stderr(&ran).contains(cause.trim()), "{}", stderr(&ran));

    let big = dir.join("big.wasm");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    let up = celeriac(
        &[
            "upload",
            big.to_str().unwrap(),
            "--trust",
            trust_s,
            "--prefix",
            p.name(),
            "--max-size",
            "1MiB",
        ],
        &cache,
    );
    assert_eq!(up.status.code(), Some(2), "{}", stderr(&up));
    assert_eq!(
        stderr(&up).trim(),
        format!(
            "error: {}: component is 2.0 MiB, over the upload limit of 1.0 MiB (--max-size)",
            big.display()
        )
    );

    let listed = celeriac(&["components", "--json", "--prefix", p.name()], &cache);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
}

// ---------------------------------------------------------------------
// Rollbacks are explicit.

/// A component signed before the module's current one is refused unless
/// the upload allows a downgrade; then the module moves back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_is_refused_unless_a_downgrade_is_allowed() {
    let f = Fixture::new(&[]).await;
    let (b, publisher) = (&f.broker, &f.publisher);
    // "v2": the text component signed as module math, a day later.
    let (v1, v2) = (read_component("math"), read_component("text"));
    let (sig1, sig2) = (
        sign(publisher, &v1, "math", 0),
        sign(publisher, &v2, "math", 86_400),
    );
    let trust = &publisher.trust;
    registry::upload(b.as_ref(), &v2, &sig2, trust, options())
        .await
        .unwrap();
    let e = registry::upload(b.as_ref(), &v1, &sig1, trust, options())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Downgrade { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.starts_with("downgrade: module `math` is at ")
            && e.contains("--allow-downgrade")
            && !e.contains('\n'),
        "{e}"
    );
    let current = b.get_module("math").await.unwrap().unwrap();
    assert_eq!(current.digest, Digest::of(&v2));
    assert_eq!(current.signed_at.as_deref(), Some("2027-01-16T08:00:00Z"));

    let allowed = UploadOptions {
        allow_downgrade: true,
        ..options()
    };
    let up = registry::upload(b.as_ref(), &v1, &sig1, trust, allowed)
        .await
        .unwrap();
    assert!(up.downgraded && up.previous == Some(Digest::of(&v2)));
    assert_eq!(
        b.get_module("math").await.unwrap().unwrap().digest,
        Digest::of(&v1)
    );

    // The same through the binary: refused, then allowed with the flag.
    let cli = Fixture::new(&[]).await;
    let files = cli.publisher.dir.path();
    let cache = cli.cache_dir();
    let trust_dir = cli.publisher.trust_dir();
    for (name, bytes, secs) in [("new", &v2, 86_400), ("old", &v1, 0)] {
        let path = files.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(
            signature_path(&path),
            sign(&cli.publisher, bytes, "math", secs).to_json(),
        )
        .unwrap();
    }
    let upload = |name: &str, extra: &[&str]| {
        let path = files.join(format!("{name}.wasm"));
        let mut args = vec![
            "upload",
            path.to_str().unwrap(),
            "--trust",
            trust_dir.to_str().unwrap(),
            "--prefix",
            cli.prefix(),
        ];
        args.extend_from_slice(extra);
        celeriac(&args, cache)
    };
    assert_eq!(upload("new", &[]).status.code(), Some(0));
    let refused = upload("old", &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("was signed earlier"),
        "{}",
        stderr(&refused)
    );
    let rolled = upload("old", &["--allow-downgrade"]);
    assert_eq!(rolled.status.code(), Some(0), "{}", stderr(&rolled));
    assert!(
        stderr(&rolled).contains("rolled back from"),
        "{}",
        stderr(&rolled)
    );
}

// ---------------------------------------------------------------------
// Every signature is kept.

/// The same bytes uploaded again signed by a new key (rotation) and as a
/// second module: a worker trusting only the new key runs it, and so does
/// one asked for the second module; the first signature still serves
/// workers that trust the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_and_second_modules_keep_their_signatures() {
    let f = Fixture::new(&[]).await;
    let (b, alice) = (&f.broker, &f.publisher);
    let keys = tempfile::tempdir().unwrap();
    let (bob, bob_pub) = key_pair(keys.path(), "bob");
    let alice_pub = PublicKey::load(&alice.public_key()).unwrap();
    let uploader = TrustStore::from_keys([alice_pub, bob_pub.clone()]);
    let math = read_component("math");
    let digest = Digest::of(&math);

    let first = registry::upload(
        b.as_ref(),
        &math,
        &sign(alice, &math, "math", 0),
        &uploader,
        options(),
    )
    .await
    .unwrap();
    assert!(first.new_bytes);
    let rotated = sign_component_at(&math, &bob, "math", at(1)).unwrap();
    let again = registry::upload(b.as_ref(), &math, &rotated, &uploader, options())
        .await
        .unwrap();
    assert!(!again.new_bytes && again.previous.is_none());
    registry::upload(
        b.as_ref(),
        &math,
        &sign(alice, &math, "calc", 2),
        &uploader,
        options(),
    )
    .await
    .unwrap();
    assert_eq!(
        b.get_component_signatures(&digest)
            .await
            .unwrap()
            .unwrap()
            .len(),
        3
    );
    let modules: Vec<String> = b
        .list_modules()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.module)
        .collect();
    assert_eq!(modules, ["calc", "math"]);

    // Bob's workers: the rotated signature names math, nothing names calc
    // for bob.
    let w = RunningWorker::start(
        b.clone(),
        TrustStore::from_keys([bob_pub]),
        quick_config("bob"),
    );
    let r = run_task(b.as_ref(), "math.add", json!([2, 3])).await;
    assert_eq!((r.state, r.result), (TaskState::Success, Some(json!(5))));
    let r = run_task(b.as_ref(), "calc.add", json!([2, 3])).await;
    assert_eq!(r.state, TaskState::Failure);
    let msg = r.error.unwrap().message;
    assert!(
        msg.contains("is signed as module `math`, but the message asks for `calc`"),
        "{msg}"
    );
    w.stop().await;

    // Alice's workers run both modules.
    let w = f.worker(quick_config("alice"));
    for task in ["math.add", "calc.add"] {
        let r = run_task(b.as_ref(), task, json!([20, 22])).await;
        assert_eq!(r.result, Some(json!(42)), "{task}: {r:?}");
    }
    w.stop().await;
}

// ---------------------------------------------------------------------
// Refused components cost no transfer.

/// Seconds since Redis last read or wrote `key` (OBJECT IDLETIME does not
/// itself count as an access).
fn idle_seconds(f: &Fixture, key: &str) -> u64 {
    redis::cmd("OBJECT")
        .arg("IDLETIME")
        .arg(key)
        .query(&mut f.redis())
        .expect("OBJECT IDLETIME")
}

/// 8 MiB of junk in the store with a signature by a key the worker does
/// not trust, and 40 messages pinning it: every one is dead-lettered
/// naming the unknown key, and the bytes are never read (the signatures
/// are checked first, from a key of their own). A second batch does not
/// even read the signatures again: the refusal is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_components_are_refused_without_fetching_them() {
    let f = Fixture::new(&[]).await;
    let b = &f.broker;
    let stranger = Publisher::new();
    let junk: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&junk);
    let sig = sign(&stranger, &junk, "math", 0).to_json();
    // Planted as anyone who can write to Redis could: in the layout of
    // this release and of the previous one (signature beside the bytes).
    let (bytes_key, sigs_key) = (
        f.key(&format!("component:{digest}")),
        f.key(&format!("component-sigs:{digest}")),
    );
    let mut conn = f.redis();
    let key_id = &SignatureFile::from_json(sig.as_bytes()).unwrap().key_id;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(&bytes_key)
        .arg("bytes")
        .arg(&junk)
        .arg("sig")
        .arg(&sig)
        .ignore()
        .cmd("HSET")
        .arg(&sigs_key)
        .arg(format!("{key_id}:math"))
        .arg(&sig)
        .ignore()
        .query(&mut conn)
        .unwrap();
    b.set_module(&ModuleInfo {
        module: "math".into(),
        digest,
        signer: "stranger".into(),
        size: junk.len() as u64,
        uploaded_at: 0,
        signed_at: None,
        grants: Default::default(),
    })
    .await
    .unwrap();
    // The behaviour under test is time passing unread: let the idle
    // clocks (1 s resolution) move past any access above.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let w = f.worker(quick_config("w"));
    let submit_batch = |n: usize| {
        let b = b.clone();
        async move {
            let requests = (0..n).map(|i| request("math.add", json!([i, 1]))).collect();
            let ids = client::submit_many(b.as_ref(), requests, &SubmitOptions::default())
                .await
                .unwrap();
            for id in ids {
                let r = finished(b.as_ref(), &id, Duration::from_secs(30)).await;
                assert_eq!(r.state, TaskState::Failure);
                let msg = r.error.unwrap().message;
                assert!(msg.contains("refused: unknown key"), "{msg}");
            }
        }
    };
    submit_batch(40).await;
    assert!(
        idle_seconds(&f, &bytes_key) >= 2,
        "the refused component's bytes were read"
    );
    // Again time passing unread, now for the signatures.
    tokio::time::sleep(Duration::from_secs(3)).await;
    submit_batch(10).await;
    assert!(
        idle_seconds(&f, &sigs_key) >= 2,
        "a remembered refusal read the signatures again"
    );
    assert_eq!(b.dlq_list("default", 100).await.unwrap().len(), 50);
    w.stop().await;
}

// ---------------------------------------------------------------------
// The compile cache trusts only what is private to this user.

fn sandbox_on(cache: &Path) -> Result<Sandbox, celeriac_sandbox::SandboxError> {
    Sandbox::new(SandboxConfig {
        concurrency: 1,
        cache_dir: Some(cache.to_path_buf()),
        ..SandboxConfig::default()
    })
}

/// The files under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn am_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

/// A cache root or engine directory that others can write to (or that
/// another user owns) stops the sandbox with one line naming the fix;
/// through the binary, `run` exits 2 with that line, and
/// `CELERIAC_CACHE_DIR=` runs without a cache.
#[test]
fn a_cache_directory_others_can_write_stops_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    drop(sandbox_on(&root).unwrap());
    let engine_dir = std::fs::read_dir(&root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = sandbox_on(&root).err().expect("refused").to_string();
    let r = root.display();
    assert_eq!(
        e,
        format!(
            "compile cache {r} is writable by group and others: chmod 700 {r} (or set CELERIAC_CACHE_DIR)"
        )
    );
    let math = crate::support::component("math");
    let run = |cache: &Path| {
        celeriac(
            &["run", math.to_str().unwrap(), "math.add", "[2, 3]"],
            cache,
        )
    };
    let o = run(&root);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), format!("error: {e}\n"));
    let o = run(Path::new(""));
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim()),
        (Some(0), "5"),
        "{}",
        stderr(&o)
    );

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&engine_dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = sandbox_on(&root).err().expect("refused").to_string();
    assert!(e.contains("is writable by group: chmod 700"), "{e}");
    std::fs::set_permissions(&engine_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(sandbox_on(&root).is_ok());

    if !am_root() {
        eprintln!("not root: cannot give the cache to another user; ownership is unit-tested");
        return;
    }
    std::os::unix::fs::chown(&engine_dir, Some(65534), Some(65534)).unwrap();
    let e = sandbox_on(&root).err().expect("refused").to_string();
    assert!(
        e.contains("is owned by uid 65534, not by this user (uid 0)"),
        "{e}"
    );
}

/// Compiled `text` planted in the cache under the digest of `math`: once
/// writable by others, once owned by another user. Loading `math` never
/// runs the planted code: it compiles `math` and replaces the file with a
/// private one of its own.
#[tokio::test]
async fn a_planted_compiled_artifact_is_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (math, text) = (read_component("math"), read_component("text"));
    // The attacker's artifact: text, compiled by an identical engine.
    let donor = tmp.path().join("donor");
    let sandbox = sandbox_on(&donor).unwrap();
    assert_eq!(sandbox.load(&text).unwrap().1, Origin::Compiled);
    drop(sandbox);
    let planted_code = std::fs::read(&files(&donor)[0]).unwrap();

    let root = tmp.path().join("cache");
    drop(sandbox_on(&root).unwrap());
    let engine_dir = std::fs::read_dir(&root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let target = engine_dir.join(format!("{}.cwasm", Digest::of(&math).hex()));

    let mut ways = vec!["writable by others"];
    if am_root() {
        ways.push("owned by another user");
    } else {
        eprintln!("not root: the other-owner case is unit-tested only");
    }
    for how in ways {
        std::fs::write(&target, &planted_code).unwrap();
        let mode = if how == "writable by others" {
            0o666
        } else {
            0o644
        };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
        if how == "owned by another user" {
            std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
        }
        let sandbox = sandbox_on(&root).unwrap();
        let (loaded, origin) = sandbox.load(&math).unwrap();
        assert_eq!(origin, Origin::Compiled, "{how}: planted code was loaded");
        let tasks = sandbox.tasks(&loaded).await.unwrap();
        assert!(tasks.contains(&"add".to_string()), "{how}: {tasks:?}");
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (std::fs::metadata(&root).unwrap().uid(), 0o600),
            "{how}: the planted file was not replaced"
        );
        // Our own artifact is used from then on.
        assert_eq!(
            sandbox_on(&root).unwrap().load(&math).unwrap().1,
            Origin::DiskCache
        );
    }
}
