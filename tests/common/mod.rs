//! Shared by the end-to-end tests: the example components, built once from
//! `tasks/` with the same toolchain users have.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// Path of the built example component `name` (math, text, misbehave).
/// The first call builds all of them (a no-op when they are up to date).
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "math", "-p", "text", "-p", "misbehave"])
            .status()
            .expect("run cargo to build the example tasks");
        assert!(
            status.success(),
            "building tasks/ failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
        );
        root.join("target/wasm32-wasip2/release")
    });
    dir.join(format!("{name}.wasm"))
}

pub fn read_component(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("read built component")
}

// ---------------------------------------------------------------------
// Queue tests: a real Redis, a private key prefix per test, real signed
// components.

use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{self, Broker};
use celeriac::registry::UploadOptions;
use celeriac::sandbox::{Sandbox, SandboxConfig};
use celeriac::signing::{KeyPair, PublicKey, TrustStore, generate_keypair, sign_component};
use celeriac::worker::{Backoff, Worker, WorkerConfig, WorkerSummary};
use tokio_util::sync::CancellationToken;

/// The Redis the tests use: `CELERIAC_TEST_REDIS`, else the local default.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix of this test's own; its keys are deleted when dropped.
/// Tests never FLUSHALL a shared Redis.
pub struct Prefix(pub String);

impl Prefix {
    pub fn new() -> Self {
        Prefix(format!(
            "ctest-{}:",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }

    pub async fn broker(&self) -> Arc<dyn Broker> {
        broker::connect(&redis_url(), &self.0)
            .await
            .expect("connect to the test Redis")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A publisher key, a trust directory holding its public half, and the
/// example components signed with it.
pub struct Publisher {
    pub dir: tempfile::TempDir,
    pub key: KeyPair,
    pub trust: TrustStore,
}

impl Publisher {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("trust")).unwrap();
        let (secret, public, _) = generate_keypair(&dir.path().join("keys/alice")).unwrap();
        std::fs::copy(&public, dir.path().join("trust/alice.pub")).unwrap();
        let key = KeyPair::load(&secret).unwrap();
        let trust = TrustStore::from_keys([PublicKey::load(&public).unwrap()]);
        Self { dir, key, trust }
    }

    pub fn trust_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("trust")
    }

    /// Sign and upload example components as their own module names.
    pub async fn upload(&self, broker: &dyn Broker, examples: &[&str]) {
        for name in examples {
            let bytes = read_component(name);
            let sig = sign_component(&bytes, &self.key, name).unwrap();
            celeriac::registry::upload(
                broker,
                &bytes,
                &sig,
                &self.trust,
                UploadOptions::new(&worker_check),
            )
            .await
            .unwrap();
        }
    }

    /// Write `name.wasm` and its signature into the publisher's directory
    /// (for the CLI), returning the component path.
    pub fn signed_file(&self, name: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("{name}.wasm"));
        let bytes = read_component(name);
        std::fs::write(&path, &bytes).unwrap();
        let sig = sign_component(&bytes, &self.key, name).unwrap();
        std::fs::write(celeriac::signing::signature_path(&path), sig.to_json()).unwrap();
        path
    }
}

/// The upload check `celeriac upload` makes: load the component as a
/// worker would (compile, link, contract). One sandbox per test binary, so
/// each component compiles once.
pub fn worker_check(bytes: &[u8]) -> Result<(), String> {
    static CHECKER: OnceLock<Sandbox> = OnceLock::new();
    let sandbox = CHECKER.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            concurrency: 1,
            cache_dir: None,
            ..SandboxConfig::default()
        })
        .expect("a sandbox for upload checks")
    });
    sandbox.load(bytes).map(|_| ()).map_err(|e| e.to_string())
}

/// Worker settings that make failure paths quick to observe.
pub fn quick_config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        concurrency: 2,
        prefetch: 8,
        visibility_timeout: Duration::from_secs(5),
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            jitter: true,
        },
        grace: Duration::from_secs(10),
        heartbeat: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

/// An in-process worker, stopped (gracefully) by `stop`.
pub struct RunningWorker {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<WorkerSummary>,
    pub _cache: tempfile::TempDir,
}

impl RunningWorker {
    pub fn start(broker: Arc<dyn Broker>, trust: TrustStore, config: WorkerConfig) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                concurrency: config.concurrency,
                cache_dir: Some(cache.path().to_path_buf()),
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        let worker = Worker::new(broker, sandbox, trust, config);
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        Self {
            token,
            handle,
            _cache: cache,
        }
    }

    pub async fn stop(self) -> WorkerSummary {
        self.token.cancel();
        self.handle.await.unwrap()
    }
}
