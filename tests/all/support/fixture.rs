//! [`Fixture`]: how a queue test begins. A broker on a key prefix of the
//! test's own (on the shared test Redis, another Redis, or in memory), a
//! publisher whose signed example components are uploaded there, and a
//! directory for the compile cache and logs of the processes it starts.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use celeriac_broker::{Broker, MemoryBroker};
use celeriac_worker::WorkerConfig;

use super::command::{TestCommand, WorkerProcess};
use super::components::Publisher;
use super::keys::{Prefix, redis_connection, redis_url};
use super::worker::RunningWorker;

pub struct Fixture {
    pub broker: Arc<dyn Broker>,
    pub publisher: Publisher,
    /// Compile cache and logs of the processes the test starts.
    pub cache: tempfile::TempDir,
    /// `None` in memory.
    prefix: Option<Prefix>,
}

impl Fixture {
    /// On the shared test Redis, with `modules` (example components)
    /// uploaded.
    pub async fn new(modules: &[&str]) -> Self {
        Self::on(&redis_url(), modules).await
    }

    /// On the Redis at `url` (e.g. a [`super::PrivateRedis`]).
    pub async fn on(url: &str, modules: &[&str]) -> Self {
        let prefix = Prefix::on(url);
        let broker = prefix.broker().await;
        Self::with(broker, Some(prefix), modules).await
    }

    /// On a [`MemoryBroker`] of its own.
    pub async fn in_memory(modules: &[&str]) -> Self {
        Self::with(Arc::new(MemoryBroker::new()), None, modules).await
    }

    async fn with(broker: Arc<dyn Broker>, prefix: Option<Prefix>, modules: &[&str]) -> Self {
        let publisher = Publisher::new();
        publisher.upload(broker.as_ref(), modules).await;
        Self {
            broker,
            publisher,
            cache: tempfile::tempdir().expect("a cache directory for the test's processes"),
            prefix,
        }
    }

    fn redis_prefix(&self) -> &Prefix {
        self.prefix
            .as_ref()
            .expect("this needs a fixture on Redis, not in memory")
    }

    /// The key prefix, e.g. `ctest-0123456789ab:`.
    pub fn prefix(&self) -> &str {
        self.redis_prefix().name()
    }

    /// The Redis URL the broker talks to.
    pub fn url(&self) -> &str {
        self.redis_prefix().url()
    }

    /// A Redis key of this test: the prefix and `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }

    /// A plain connection to this test's Redis.
    pub fn redis(&self) -> redis::Connection {
        redis_connection(self.url())
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// An in-process worker trusting the publisher.
    pub fn worker(&self, config: WorkerConfig) -> RunningWorker {
        RunningWorker::start(self.broker.clone(), self.publisher.trust.clone(), config)
    }

    /// The `celeriac` binary on this test's broker, prefix and cache.
    pub fn cli(&self) -> TestCommand {
        let mut command = TestCommand::new();
        command
            .broker(self.url())
            .prefix(self.prefix())
            .cache(self.cache_dir());
        command
    }

    /// Run `celeriac ARGS…` on this test's broker to the end.
    pub fn celeriac(&self, args: &[&str]) -> Output {
        self.cli().args(args).output()
    }

    /// A `celeriac worker` process on this test's broker, trusting the
    /// publisher.
    pub fn worker_process(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start(
            self.cli(),
            &self.publisher.trust_dir(),
            id,
            self.cache_dir(),
            extra,
        )
    }
}
