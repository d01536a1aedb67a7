//! What the test modules share, one file per concern: brokers and key
//! prefixes (`keys`), the example components and their publisher
//! (`components`), the per-test [`Fixture`], the `celeriac` binary
//! (`command`), in-process workers (`worker`), tasks and their records
//! (`tasks`), private servers (`servers`), a local HTTP(S) server for
//! tasks to call (`http_server`), a private CA for TLS (`certs`), `celeriac serve` and its HTTP client (`serve`) and waiting for a state (`wait`). Everything is
//! re-exported here.

pub mod certs;
pub mod command;
pub mod components;
pub mod fixture;
pub mod http_server;
pub mod keys;
pub mod serve;
pub mod servers;
pub mod tasks;
pub mod wait;
pub mod worker;

pub use certs::TestCa;
pub use command::{Outcome, TestCommand, WorkerProcess};
pub use components::{
    Publisher, component, read_component, upload_options, worker_check, workspace_root,
};
pub use fixture::Fixture;
pub use http_server::TestServer;
pub use keys::{Prefix, redis_url};
pub use serve::{Api, ServeProcess};
pub use servers::{PrivateRedis, free_port, http_get};
pub use tasks::{fetch_limits, finished, reached, request, submit};
pub use wait::wait_for;
pub use worker::{RunningWorker, quick_config};
