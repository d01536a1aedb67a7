//! Starting the `celeriac` binary. Every test that runs it goes through
//! [`TestCommand`], which starts it with a clean environment: no
//! `CELERIAC_*` setting (nor `RUST_LOG`) of the developer's shell leaks in,
//! only what the test sets. [`WorkerProcess`] (a background `celeriac
//! worker`) is built on it; [`Outcome`] reads what a finished run printed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use celeriac_broker::Broker;

use super::wait::wait_for;

/// Whether an inherited environment variable could change what the
/// binary does, and so must not reach it unless a test sets it.
fn is_setting(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("CELERIAC_") || name == "RUST_LOG"
}

/// The `celeriac` binary with a clean environment (see the module docs),
/// stdin closed, stdout and stderr captured unless redirected.
pub struct TestCommand {
    cmd: Command,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
}

impl TestCommand {
    pub fn new() -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_celeriac"));
        for (name, _) in std::env::vars_os().filter(|(name, _)| is_setting(name)) {
            cmd.env_remove(name);
        }
        cmd.stdin(Stdio::null());
        Self {
            cmd,
            stdout: None,
            stderr: None,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<S: AsRef<OsStr>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.cmd.args(args);
        self
    }

    /// Set one variable (any `CELERIAC_*` setting the test needs).
    pub fn env(&mut self, name: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(name, value);
        self
    }

    /// Pass one variable of the test's own environment through, if set:
    /// for settings that say where the developer's tools are, not how
    /// celeriac behaves.
    pub fn inherit(&mut self, name: &str) -> &mut Self {
        if let Some(value) = std::env::var_os(name) {
            self.cmd.env(name, value);
        }
        self
    }

    /// `CELERIAC_BROKER`.
    pub fn broker(&mut self, url: &str) -> &mut Self {
        self.env("CELERIAC_BROKER", url)
    }

    /// `CELERIAC_PREFIX`.
    pub fn prefix(&mut self, prefix: &str) -> &mut Self {
        self.env("CELERIAC_PREFIX", prefix)
    }

    /// `CELERIAC_CACHE_DIR`: the compile cache (the test's own, never the
    /// user's).
    pub fn cache(&mut self, dir: &Path) -> &mut Self {
        self.env("CELERIAC_CACHE_DIR", dir)
    }

    pub fn current_dir(&mut self, dir: &Path) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn stdout(&mut self, to: impl Into<Stdio>) -> &mut Self {
        self.stdout = Some(to.into());
        self
    }

    pub fn stderr(&mut self, to: impl Into<Stdio>) -> &mut Self {
        self.stderr = Some(to.into());
        self
    }

    /// Start it; stdout and stderr are pipes unless redirected.
    pub fn spawn(&mut self) -> Child {
        self.cmd
            .stdout(self.stdout.take().unwrap_or_else(Stdio::piped))
            .stderr(self.stderr.take().unwrap_or_else(Stdio::piped));
        self.cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.cmd))
    }

    /// Run it to the end and return what it printed.
    pub fn output(&mut self) -> Output {
        self.spawn()
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {:?}: {e}", self.cmd))
    }

    /// The variables set for (or removed from) the child, for tests of
    /// this helper.
    pub fn environment(&self) -> Vec<(OsString, Option<OsString>)> {
        self.cmd
            .get_envs()
            .map(|(k, v)| (k.to_os_string(), v.map(OsStr::to_os_string)))
            .collect()
    }
}

/// What a finished run printed, as text.
pub trait Outcome {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    /// The exit code; `None` if a signal ended it.
    fn code(&self) -> Option<i32>;
    /// The cause line: the last line on stderr.
    fn cause(&self) -> String;
}

impl Outcome for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn cause(&self) -> String {
        self.stderr_text()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }
}

/// A `celeriac worker` process, killed on drop if still running.
pub struct WorkerProcess {
    pub child: Child,
    pub id: String,
    log: PathBuf,
}

impl WorkerProcess {
    /// `celeriac worker --trust TRUST --id ID -v EXTRA…` from `command`
    /// (which names the broker, prefix and cache), with text logs on
    /// stderr written to `<log_dir>/<id>.log`.
    pub fn start(
        mut command: TestCommand,
        trust: &Path,
        id: &str,
        log_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let log = log_dir.join(format!("{id}.log"));
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = command
            .arg("worker")
            .arg("--trust")
            .arg(trust)
            .args(["--id", id, "-v"])
            .args(extra)
            .env("CELERIAC_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn();
        Self {
            child,
            id: id.into(),
            log,
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its heartbeat shows in the broker.
    pub async fn ready(&self, broker: &dyn Broker) {
        let what = format!("a heartbeat from worker {}", self.id);
        wait_for(&what, Duration::from_secs(30), async || {
            let workers = broker.workers().await.unwrap_or_default();
            workers.iter().any(|w| w.id == self.id)
        })
        .await;
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {} failed", self.child.id());
    }

    /// Wait for it to exit, up to `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let what = format!("worker {} to exit", self.id);
        let child = &mut self.child;
        wait_for(&what, limit, async || {
            child.try_wait().expect("poll the worker process")
        })
        .await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
