//! Per-task host state: what the guest's imports see and what the limits
//! track. A fresh one is built for every task, so nothing leaks between tasks.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::celeriac::task::{context, types};
use super::output::CappedPipe;

/// Everything one task's store holds.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub task: TaskContext,
    pub stdout: CappedPipe,
    pub stderr: CappedPipe,
    log_budget: usize,
    logs_dropped: u64,
    pub progress: Option<(u64, u64)>,
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
    pub fn new(task: TaskContext, memory_limit: u64, output_cap: usize, log_cap: usize) -> Self {
        let stdout = CappedPipe::new(output_cap);
        let stderr = CappedPipe::new(output_cap);
        // WASI is linked only because guest toolchains import it; the
        // context grants nothing: no preopened directories, no environment,
        // no arguments, no sockets, no name lookups, stdin closed.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            task,
            stdout,
            stderr,
            log_budget: log_cap,
            logs_dropped: 0,
            progress: None,
        }
    }

    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl context::Host for HostState {
    fn log(&mut self, level: context::Level, message: String) {
        if message.len() > self.log_budget {
            self.logs_dropped += 1;
            return;
        }
        self.log_budget -= message.len();
        let id = self.task.id.as_str();
        // Guest lines go to their own target so operators can filter them.
        match level {
            context::Level::Trace => tracing::trace!(target: "guest", task_id = id, "{message}"),
            context::Level::Debug => tracing::debug!(target: "guest", task_id = id, "{message}"),
            context::Level::Info => tracing::info!(target: "guest", task_id = id, "{message}"),
            context::Level::Warn => tracing::warn!(target: "guest", task_id = id, "{message}"),
            context::Level::Error => tracing::error!(target: "guest", task_id = id, "{message}"),
        }
    }

    fn info(&mut self) -> context::TaskInfo {
        let now = Instant::now();
        let remaining = |t: Instant| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        };
        context::TaskInfo {
            id: self.task.id.clone(),
            module: self.task.module.clone(),
            name: self.task.name.clone(),
            retries: self.task.retries,
            max_retries: self.task.max_retries,
            soft_remaining_ms: self.task.soft_deadline.map(remaining),
            hard_remaining_ms: Some(remaining(self.task.hard_deadline)),
        }
    }

    fn should_stop(&mut self) -> bool {
        self.task.soft_deadline.is_some_and(|t| Instant::now() >= t)
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.progress = Some((done, total));
    }
}

/// Caps the task's linear memory in total, across every memory of every
/// core instance in the component (wasmtime's `StoreLimits` caps each
/// memory on its own, which a multi-memory guest could multiply).
pub(crate) struct MemoryLimiter {
    limit: u64,
    total: u64,
    pub peak: u64,
    last_grant: u64,
    /// Set once a grow was refused: a trap after this is reported as the
    /// memory limit, whatever instruction the guest died on.
    pub denied: bool,
}

/// Table elements one table may hold; tables are small host-side arrays,
/// so this only stops a guest from using them to eat host memory.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            total: 0,
            peak: 0,
            last_grant: 0,
            denied: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current) as u64;
        let total = self.total.saturating_add(grow);
        if total > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        self.last_grant = grow;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Granted by us but refused by the engine (e.g. past the pool's
        // per-memory ceiling): give the grant back.
        self.total = self.total.saturating_sub(self.last_grant);
        self.last_grant = 0;
        self.denied = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
