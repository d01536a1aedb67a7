//! Per-task host state: what the guest's imports see and what the limits
//! track, including the host work (bytes moved by host calls) that the
//! sandbox charges to the task's fuel. A fresh one is built with every
//! fresh instance; an instance kept for its module's next task (opt-in
//! reuse) has every per-task part reset by [`HostState::begin`], so no
//! task inherits another's identity, deadlines, budgets or output.
//!
//! One module per capability the host offers a guest, each with its own
//! limits and tests:
//! - [`context`]: the contract's own imports: log, task info, should-stop,
//!   progress;
//! - [`http`]: outbound `wasi:http` under the signed grant and the
//!   worker's policy;
//! - [`config`]: `wasi:config/store`, the granted keys of the worker's
//!   configuration;
//! - [`kv`]: the module's key-value namespace;
//! - [`wasi`]: the WASI context guest toolchains import, granting nothing
//!   but metered randomness and captured output;
//! - [`output`]: stdout / stderr, capped and kept for the log;
//! - [`memory`]: the task's memory limit across all its memories.

pub(crate) mod config;
pub(crate) mod context;
pub(crate) mod http;
pub(crate) mod kv;
pub(crate) mod memory;
pub(crate) mod output;
pub(crate) mod wasi;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use celeriac_protocol::Grants;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;

use config::ConfigValues;
use http::{HttpShared, TaskHttp};
use kv::KeyValue;
pub(crate) use memory::MemoryLimiter;
use output::CappedPipe;

/// What a task may reach beyond computing: its signed grants and the
/// worker's means to serve them.
#[derive(Clone)]
pub(crate) struct Capabilities {
    pub grants: Arc<Grants>,
    pub http: Arc<HttpShared>,
    pub config: Arc<ConfigValues>,
    pub kv: Option<Arc<dyn KeyValue>>,
}

/// Everything one task's store holds.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: TaskHttp,
    caps: Capabilities,
    pub limiter: MemoryLimiter,
    pub task: TaskContext,
    pub stdout: CappedPipe,
    pub stderr: CappedPipe,
    log_budget: usize,
    log_cap: usize,
    logs_dropped: u64,
    logs_truncated: u64,
    pub progress: Option<(u64, u64)>,
    /// Bytes host calls produced or took for the guest since the last
    /// charge (random bytes, output, log lines); see [`HostState::take_host_work`].
    host_work: Arc<AtomicU64>,
    /// Host calls in progress (an import, and libcalls of wasm the host
    /// calls back into while serving it); host work is charged at zero.
    pub host_depth: u32,
}

/// The running task as the guest sees it through `context.info`.
pub(crate) struct TaskContext {
    pub id: String,
    pub module: String,
    pub name: String,
    pub retries: u32,
    pub max_retries: u32,
    pub soft_deadline: Option<Instant>,
    pub hard_deadline: Instant,
}

impl HostState {
    pub fn new(
        task: TaskContext,
        caps: Capabilities,
        memory_limit: u64,
        output_cap: usize,
        log_cap: usize,
    ) -> Self {
        let host_work = Arc::new(AtomicU64::new(0));
        let stdout = CappedPipe::new(output_cap, host_work.clone());
        let stderr = CappedPipe::new(output_cap, host_work.clone());
        let wasi = wasi::context(&stdout, &stderr, &host_work);
        let http = TaskHttp::new(
            caps.http.clone(),
            caps.grants.clone(),
            &task.id,
            task.hard_deadline,
            host_work.clone(),
        );
        Self {
            wasi,
            table: ResourceTable::new(),
            http,
            caps,
            limiter: MemoryLimiter::new(memory_limit),
            task,
            stdout,
            stderr,
            log_budget: log_cap,
            log_cap,
            logs_dropped: 0,
            logs_truncated: 0,
            progress: None,
            host_work,
            host_depth: 0,
        }
    }

    /// Make a kept instance's state the next task's: its context, HTTP
    /// state (id, deadline), memory limit and fresh budgets. What the
    /// guest holds in its own memory and resource handles (WASI streams
    /// its libc opened) stays: that is what reuse keeps.
    pub fn begin(&mut self, task: TaskContext, memory_limit: u64) {
        self.http = TaskHttp::new(
            self.caps.http.clone(),
            self.caps.grants.clone(),
            &task.id,
            task.hard_deadline,
            self.host_work.clone(),
        );
        self.task = task;
        self.limiter.begin(memory_limit);
        // Taken at the end of the last task; emptied again in case.
        drop(self.stdout.take());
        drop(self.stderr.take());
        self.log_budget = self.log_cap;
        self.logs_dropped = 0;
        self.logs_truncated = 0;
        self.progress = None;
        self.host_work.store(0, Ordering::Relaxed);
        self.host_depth = 0;
    }

    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped
    }

    pub fn logs_truncated(&self) -> u64 {
        self.logs_truncated
    }

    /// Count `bytes` moved by a host call as host work.
    pub fn charge(&self, bytes: usize) {
        self.host_work.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Host work done since the last call, in bytes, and reset the count.
    pub fn take_host_work(&self) -> u64 {
        self.host_work.swap(0, Ordering::Relaxed)
    }
}
