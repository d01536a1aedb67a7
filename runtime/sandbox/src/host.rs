//! Per-task host state: what the guest's imports see and what the limits
//! track, including the host work (bytes moved by host calls) that the
//! sandbox charges to the task's fuel. A fresh one is built for every task,
//! so nothing leaks between tasks.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::celeriac::task::{context, types};
use super::output::CappedPipe;

/// Longest guest log line kept, in bytes; longer ones are cut (with a
/// marker) so one call cannot spend the whole per-task log budget.
pub(crate) const LOG_LINE_CAP: usize = 8 << 10;

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
    pub fn new(task: TaskContext, memory_limit: u64, output_cap: usize, log_cap: usize) -> Self {
        let host_work = Arc::new(AtomicU64::new(0));
        let stdout = CappedPipe::new(output_cap, host_work.clone());
        let stderr = CappedPipe::new(output_cap, host_work.clone());
        // WASI is linked only because guest toolchains import it; the
        // context grants nothing: no preopened directories, no environment,
        // no arguments, no sockets, no name lookups, stdin closed.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .secure_random(MeteredRng::new(host_work.clone()))
            .insecure_random(MeteredRng::new(host_work.clone()))
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
            logs_truncated: 0,
            progress: None,
            host_work,
            host_depth: 0,
        }
    }

    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped
    }

    pub fn logs_truncated(&self) -> u64 {
        self.logs_truncated
    }

    /// Host work done since the last call, in bytes, and reset the count.
    pub fn take_host_work(&self) -> u64 {
        self.host_work.swap(0, Ordering::Relaxed)
    }
}

/// The WASI random generators, counting what they hand out into the task's
/// host work. wasmtime-wasi draws one `u32` per byte of `get-random-bytes`,
/// so each draw counts as the one byte it becomes.
struct MeteredRng {
    inner: Box<dyn wasmtime_wasi::Rng + Send>,
    host_work: Arc<AtomicU64>,
}

impl MeteredRng {
    fn new(host_work: Arc<AtomicU64>) -> Self {
        Self {
            inner: wasmtime_wasi::thread_rng(),
            host_work,
        }
    }

    fn count(&self, bytes: usize) {
        self.host_work.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl rand_core::TryRng for MeteredRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.count(1);
        Ok(self.inner.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.count(8);
        Ok(self.inner.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.count(dst.len());
        self.inner.fill_bytes(dst);
        Ok(())
    }
}

/// Cut a guest log line to [`LOG_LINE_CAP`] bytes (on a character
/// boundary), saying how much was cut.
fn cap_log_line(mut message: String) -> (String, bool) {
    if message.len() <= LOG_LINE_CAP {
        return (message, false);
    }
    let mut end = LOG_LINE_CAP;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let cut = message.len() - end;
    message.truncate(end);
    message.push_str(&format!(" … [{cut} more bytes truncated]"));
    (message, true)
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
        // The whole line crossed into the host, kept or not: charge it.
        self.host_work
            .fetch_add(message.len() as u64, Ordering::Relaxed);
        let (message, truncated) = cap_log_line(message);
        if message.len() > self.log_budget {
            self.logs_dropped += 1;
            return;
        }
        self.log_budget -= message.len();
        self.logs_truncated += u64::from(truncated);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_with_a_marker() {
        let (line, cut) = cap_log_line("short".into());
        assert_eq!((line.as_str(), cut), ("short", false));
        let (line, cut) = cap_log_line("é".repeat(LOG_LINE_CAP));
        assert!(cut);
        assert!(line.starts_with("éé"));
        assert!(
            line.ends_with(&format!(" … [{} more bytes truncated]", LOG_LINE_CAP)),
            "{}",
            &line[line.len() - 40..]
        );
        assert!(line.len() < LOG_LINE_CAP + 64);
    }

    #[test]
    fn random_bytes_count_as_host_work() {
        use rand_core::Rng;
        let work = Arc::new(AtomicU64::new(0));
        let mut rng = MeteredRng::new(work.clone());
        let mut buf = [0u8; 100];
        rng.fill_bytes(&mut buf);
        rng.next_u64();
        rng.next_u32();
        assert_eq!(work.load(Ordering::Relaxed), 109);
    }
}
