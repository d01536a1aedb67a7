//! Write Celeriac tasks in Rust.
//!
//! A task is a plain typed function. The SDK decodes its arguments from the
//! JSON `args` array and `kwargs` object the host passes in, encodes the
//! return value as JSON, and maps errors onto the contract's failure kinds:
//!
//! ```no_run
//! use celeriac_sdk::{task, Error};
//!
//! #[task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! #[task]
//! fn div(a: f64, b: f64) -> Result<f64, Error> {
//!     if b == 0.0 {
//!         return Err(Error::invalid_input("division by zero"));
//!     }
//!     Ok(a / b)
//! }
//!
//! celeriac_sdk::export_tasks!(add, div);
//! # fn main() {}
//! ```
//!
//! Build with `celeriac build DIR` (a `wasm32-wasip2` release build of a
//! `cdylib` crate), then sign and run it with the `celeriac` CLI.
//!
//! Beyond computing, a task reaches what its signed manifest grants:
//! [`config`] values and secrets, its module's [`kv`] state, and outbound
//! HTTP through `wasi:http` with any wasi:http client; we use and test
//! [`wstd`](https://docs.rs/wstd) (`wstd::runtime::block_on` around
//! `wstd::http::Client`), the Bytecode Alliance's, as `tasks/web` shows.

// Lets generated code name `::celeriac_sdk` from inside this crate too.
extern crate self as celeriac_sdk;

pub mod config;
mod error;
mod input;
pub mod kv;

pub use celeriac_sdk_macros::{export_tasks, task};
pub use error::{Error, FailureKind, Result};

use __private::bindings::celeriac::task::context;

/// Log levels for [`log`].
pub use context::Level;

/// Identity and time budget of the running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Unique id of this invocation.
    pub id: String,
    /// Module name the component was signed as.
    pub module: String,
    /// Task name within the module.
    pub name: String,
    /// Retries so far (0 on the first attempt).
    pub retries: u32,
    /// Retries allowed before the task fails for good.
    pub max_retries: u32,
    /// Time left before the soft limit, if one is set.
    pub soft_remaining: Option<std::time::Duration>,
    /// Time left before the hard limit traps the task.
    pub hard_remaining: Option<std::time::Duration>,
}

/// The running task's identity, retry count and time budget.
pub fn task_info() -> TaskInfo {
    let info = context::info();
    TaskInfo {
        id: info.id,
        module: info.module,
        name: info.name,
        retries: info.retries,
        max_retries: info.max_retries,
        soft_remaining: info.soft_remaining_ms.map(std::time::Duration::from_millis),
        hard_remaining: info.hard_remaining_ms.map(std::time::Duration::from_millis),
    }
}

/// True once the soft time limit has passed: the task should clean up and
/// return soon, before the hard limit traps it.
pub fn should_stop() -> bool {
    context::should_stop()
}

/// Report progress (`done` out of `total`) to the host.
pub fn progress(done: u64, total: u64) {
    context::progress(done, total)
}

/// Write a line to the host's log, tagged with the task id.
pub fn log(level: Level, message: &str) {
    context::log(level, message)
}

/// Log at `trace` level with `format!` syntax.
#[macro_export]
macro_rules! trace { ($($t:tt)*) => { $crate::log($crate::Level::Trace, &::std::format!($($t)*)) } }
/// Log at `debug` level with `format!` syntax.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($t)*)) } }
/// Log at `info` level with `format!` syntax.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($t)*)) } }
/// Log at `warn` level with `format!` syntax.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($t)*)) } }
/// Log at `error` level with `format!` syntax.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($t)*)) } }

/// Support code for the macros; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::input::{Input, encode_output, encode_result};
    pub use wit_bindgen;

    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "celeriac:task/task",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "::celeriac_sdk::__private::bindings",
            runtime_path: "::celeriac_sdk::__private::wit_bindgen::rt",
            generate_all,
        });
    }

    pub use bindings::Guest;
    pub use bindings::celeriac::task::types::{Failure, FailureKind as WitFailureKind};

    /// The failure returned for a name the module does not serve.
    pub fn unknown_task(name: &str, known: &[&str]) -> Failure {
        Failure {
            kind: WitFailureKind::InvalidInput,
            message: format!(
                "unknown task `{}`; this module serves: {}",
                crate::input::bounded(name),
                known.join(", ")
            ),
            retry_after_ms: None,
        }
    }
}
