//! Shared by the end-to-end tests: the example components, built once from
//! `tasks/` with the same toolchain users have.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is runtime/cli.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("runtime/cli sits two levels under the workspace root")
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

use celeriac_broker::registry::UploadOptions;
use celeriac_broker::{self, Broker};
use celeriac_protocol::Backoff;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{KeyPair, PublicKey, TrustStore, generate_keypair, sign_component};
use celeriac_worker::{Worker, WorkerConfig, WorkerSummary};
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
        celeriac_broker::connect(&redis_url(), &self.0)
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
            celeriac_broker::registry::upload(
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
        std::fs::write(celeriac_signing::signature_path(&path), sig.to_json()).unwrap();
        path
    }
}

/// A private prefix, a broker on it, and a publisher whose signed example
/// components (`modules`) are uploaded there: how most queue tests begin.
pub async fn fixture(modules: &[&str]) -> (Prefix, Arc<dyn Broker>, Publisher) {
    let prefix = Prefix::new();
    let broker = prefix.broker().await;
    let publisher = Publisher::new();
    publisher.upload(broker.as_ref(), modules).await;
    (prefix, broker, publisher)
}

/// Fetch up to `n` messages of any size.
pub fn fetch_limits(n: usize) -> celeriac_broker::FetchLimits {
    celeriac_broker::FetchLimits {
        max: n,
        max_bytes: usize::MAX,
        max_message_bytes: 64 << 20,
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

// ---------------------------------------------------------------------
// Separate processes: the `celeriac` CLI, worker processes, a private
// redis-server to break on purpose.

use std::process::{Child, Output, Stdio};
use std::time::Instant;

pub fn celeriac(broker: &str, prefix: &str, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(args)
        .env("CELERIAC_BROKER", broker)
        .env("CELERIAC_PREFIX", prefix)
        .env("CELERIAC_CACHE_DIR", cache)
        .env_remove("CELERIAC_TRUST")
        .output()
        .expect("run celeriac")
}

/// A `celeriac worker` process, killed on drop if still running.
pub struct WorkerProcess {
    pub child: Child,
    pub id: String,
}

impl WorkerProcess {
    pub fn start_env(
        broker: &str,
        prefix: &str,
        cache: &Path,
        trust: &Path,
        id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(cache.join(format!("{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_celeriac"))
            .args([
                "worker",
                "--trust",
                trust.to_str().unwrap(),
                "--id",
                id,
                "-v",
            ])
            .args(extra)
            .env("CELERIAC_BROKER", broker)
            .env("CELERIAC_PREFIX", prefix)
            .env("CELERIAC_CACHE_DIR", cache)
            .env("CELERIAC_LOG_FORMAT", "text")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start worker");
        Self {
            child,
            id: id.into(),
        }
    }

    pub fn start(
        broker: &str,
        prefix: &str,
        cache: &Path,
        trust: &Path,
        id: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_env(broker, prefix, cache, trust, id, extra, &[])
    }

    /// Wait until its heartbeat shows in the broker.
    pub async fn ready(&self, broker: &dyn Broker) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if broker
                .workers()
                .await
                .unwrap_or_default()
                .iter()
                .any(|w| w.id == self.id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker {} never sent a heartbeat", self.id);
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for exit, up to `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {limit:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A redis-server of the test's own on a free port, for breaking on purpose.
pub struct PrivateRedis {
    pub child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::on(free_port(), tempfile::tempdir().unwrap(), extra)
    }

    pub fn on(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(port, dir, &args)
    }

    /// TLS only (no plain port), clients not asked for certificates.
    pub fn on_tls(port: u16, cert: &str, key: &str, ca: &str) -> Self {
        let port_s = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(port, tempfile::tempdir().unwrap(), &args)
    }

    /// redis-server on 127.0.0.1 with no persistence unless `args` asks
    /// for it (later arguments win), its data in `dir`; returns once
    /// `port` accepts connections.
    fn spawn(port: u16, dir: tempfile::TempDir, args: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (tests/run.sh installs it)");
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it gracefully (its append-only file, if any, flushed), wait
    /// `down`, and start it again on the same port from the same data.
    pub fn outage(mut self, down: Duration, extra: &[&str]) -> Self {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::on(port, dir, extra)
    }

    /// Kill it hard and start a fresh one on the same port.
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        Self::on(port, dir, &[])
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
