//! Workers inside the test process: [`RunningWorker`] (a real
//! `celeriac_worker::Worker` on a real sandbox, stopped gracefully) and
//! [`quick_config`], settings that make failure paths quick to observe.
//! Worker processes are in `command.rs`.

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::Broker;
use celeriac_protocol::Backoff;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::TrustStore;
use celeriac_worker::{Worker, WorkerConfig, WorkerSummary};
use tokio_util::sync::CancellationToken;

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
    pub worker: Arc<Worker>,
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<WorkerSummary>,
    pub _cache: tempfile::TempDir,
}

impl RunningWorker {
    pub fn start(broker: Arc<dyn Broker>, trust: TrustStore, config: WorkerConfig) -> Self {
        Self::with_sandbox(broker, trust, config, SandboxConfig::default())
    }

    /// As [`RunningWorker::start`], with sandbox settings of the test's
    /// own (its concurrency and compile cache are the worker's).
    pub fn with_sandbox(
        broker: Arc<dyn Broker>,
        trust: TrustStore,
        config: WorkerConfig,
        sandbox: SandboxConfig,
    ) -> Self {
        let cache = tempfile::tempdir().expect("a compile cache directory for the worker");
        let sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                concurrency: config.concurrency,
                cache_dir: Some(cache.path().to_path_buf()),
                ..sandbox
            })
            .expect("a sandbox for the worker"),
        );
        let worker = Worker::new(broker, sandbox, trust, config);
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.clone().run(token.clone()));
        Self {
            worker,
            token,
            handle,
            _cache: cache,
        }
    }

    pub async fn stop(self) -> WorkerSummary {
        self.token.cancel();
        self.handle.await.expect("the worker task panicked")
    }
}
