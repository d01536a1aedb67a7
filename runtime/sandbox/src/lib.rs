//! The sandbox: runs one task of a component in a fresh wasmtime store under
//! fuel, wall-clock (epoch) and memory limits, and names why a task failed
//! in one line. Where both the component's signer and the host's policy
//! allow it, an instance serves several tasks of its component and module
//! one after another ([`ReusePolicy`], kept in `warm`).
//!
//! One [`Sandbox`] per host: it owns the engines (pooling allocator, epoch
//! interruption; one meters fuel, one does not, for the modules the policy
//! runs unmetered), the linker (WASI with nothing granted, the
//! `celeriac:task` imports, and the capabilities a signed grant can open:
//! `wasi:http`, `wasi:config`, key-value), the pooled HTTP client, the
//! on-disk compile cache and an LRU of ready-to-instantiate components.

mod bindings;
mod cache;
mod engine;
mod host;
mod limits;
mod outcome;
mod policy;
mod warm;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{CallHook, Engine, Store, StoreContextMut, Trap, UpdateDeadline};

pub use cache::{CacheError, default_cache_root};
pub use engine::EPOCH_TICK;
pub use host::config::ConfigValues;
pub use host::http::policy::{self as http_policy, HttpPolicy};
pub use host::kv::{KeyValue, KvError};
pub use limits::{HOST_FUEL_PER_BYTE, Limits};
pub use outcome::{FailureKind, TaskCall, TaskError, TaskReport};
pub use policy::{Modules, ReusePolicy};

use bindings::{Task, TaskPre};
use cache::DiskCache;
use engine::EpochTicker;
use host::http::HttpShared;
use host::{Capabilities, HostState, TaskContext};
use warm::{Idle, Warm};

use celeriac_protocol::Digest;

/// The contract version this host implements.
pub const CONTRACT: &str = "celeriac:task@0.1.0";

/// How a sandbox is set up; fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Tasks that may run at once; sizes the instance pool.
    pub concurrency: u32,
    /// Modules run without fuel metering: their code runs 10-35 % faster,
    /// and only the wall-clock limit bounds their CPU (and host work is
    /// not charged). Every other module meters fuel.
    pub unmetered: Modules,
    /// Which modules may keep an instance for several tasks, when their
    /// signer allows it too.
    pub reuse: ReusePolicy,
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of compiled components the disk cache keeps at most; the
    /// least recently used go first.
    pub cache_max_bytes: u64,
    /// Compiled components kept in memory.
    pub loaded_capacity: usize,
    /// Bytes of stdout and of stderr kept per task.
    pub output_cap: usize,
    /// Bytes of log messages a task may emit.
    pub log_cap: usize,
    /// What tasks may reach over HTTP, whatever their grants say.
    pub http: HttpPolicy,
    /// Configuration values tasks may read by granted key.
    pub task_config: ConfigValues,
}

impl SandboxConfig {
    /// A Python or JavaScript component compiles to tens of MiB, a Rust
    /// one to about one: room for dozens of modules and their versions.
    pub const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            unmetered: Modules::None,
            reuse: ReusePolicy::default(),
            cache_dir: default_cache_root(),
            cache_max_bytes: Self::DEFAULT_CACHE_MAX_BYTES,
            loaded_capacity: 64,
            output_cap: 64 << 10,
            log_cap: 256 << 10,
            http: HttpPolicy::default(),
            task_config: ConfigValues::default(),
        }
    }
}

/// Why a component could not be made runnable.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not set up the wasm engine: {0}")]
    Engine(String),
    #[error("not a valid component: {0}")]
    Compile(String),
    #[error("component cannot run here: {0}")]
    Link(String),
    #[error("component does not implement {CONTRACT}: {0}")]
    Contract(String),
    /// The compile cache is not private to this user (see `cache`).
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

/// Where a loaded component came from: shows what the caches saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Already in this process.
    Memory,
    /// Native code from the on-disk compile cache.
    DiskCache,
    /// Compiled from the wasm bytes just now.
    Compiled,
}

/// A component ready to instantiate: compiled (for the metered or the
/// unmetered engine), linked and type-checked against the contract.
pub struct LoadedComponent {
    pub digest: Digest,
    /// Compiled with fuel metering.
    pub metered: bool,
    component: Component,
    pre: TaskPre<HostState>,
}

impl LoadedComponent {
    /// Names of everything the component imports (interfaces and functions).
    pub fn imports(&self) -> Vec<String> {
        let ty = self.component.component_type();
        ty.imports(self.component.engine())
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Names of everything the component exports.
    pub fn exports(&self) -> Vec<String> {
        let ty = self.component.component_type();
        ty.exports(self.component.engine())
            .map(|(name, _)| name.to_string())
            .collect()
    }
}

/// One engine and what is bound to it: fuel metering is compiled into the
/// code, so metered and unmetered modules need an engine each.
struct Flavor {
    engine: Engine,
    linker: Linker<HostState>,
    disk: Option<DiskCache>,
}

impl Flavor {
    fn new(config: &SandboxConfig, slots: u32, fuel: bool) -> Result<Self, SandboxError> {
        let engine =
            engine::build_engine(slots, fuel).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        Task::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        // Each engine's artifacts go to their own directory (keyed by the
        // engine's configuration).
        let disk = match config.cache_dir.as_deref() {
            Some(root) => DiskCache::open(root, &engine, config.cache_max_bytes)?,
            None => None,
        };
        Ok(Self {
            engine,
            linker,
            disk,
        })
    }
}

/// Runs tasks. Cheap to share: wrap it in an `Arc`.
pub struct Sandbox {
    /// Absent when every module runs unmetered.
    metered: Option<Flavor>,
    /// Present when some module runs unmetered.
    unmetered: Option<Flavor>,
    config: SandboxConfig,
    loaded: Mutex<LruCache<(Digest, bool), Arc<LoadedComponent>>>,
    /// Instances kept for their module's next task.
    idle: Idle,
    http: Arc<HttpShared>,
    task_config: Arc<ConfigValues>,
    kv: Option<Arc<dyn KeyValue>>,
    _ticker: EpochTicker,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let concurrency = config.concurrency.max(1);
        // A kept instance holds a pool slot: room for one per running task
        // (up to MAX_IDLE), so idle ones never starve a fresh one.
        let idle_cap = if config.reuse.modules.is_none() {
            0
        } else {
            concurrency.min(MAX_IDLE)
        };
        let slots = concurrency + idle_cap;
        let metered = (config.unmetered != Modules::All)
            .then(|| Flavor::new(&config, slots, true))
            .transpose()?;
        let unmetered = (!config.unmetered.is_none())
            .then(|| Flavor::new(&config, slots, false))
            .transpose()?;
        let engines = [&metered, &unmetered]
            .into_iter()
            .flatten()
            .map(|f| f.engine.clone())
            .collect();
        let capacity =
            NonZeroUsize::new(config.loaded_capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            _ticker: EpochTicker::start(engines),
            metered,
            unmetered,
            loaded: Mutex::new(LruCache::new(capacity)),
            idle: Idle::new(idle_cap as usize),
            http: Arc::new(HttpShared::new(config.http.clone())),
            task_config: Arc::new(config.task_config.clone()),
            kv: None,
            config,
        })
    }

    /// Serve the `kv` interface from `store` (the worker's broker). Without
    /// one, key-value calls fail as unavailable.
    pub fn with_key_value(mut self, store: Arc<dyn KeyValue>) -> Self {
        self.kv = Some(store);
        self
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Make `bytes` runnable as the host runs most modules (metered,
    /// unless the policy runs every module unmetered). See [`Self::load_as`].
    pub fn load(&self, bytes: &[u8]) -> Result<(Arc<LoadedComponent>, Origin), SandboxError> {
        self.load_flavor(bytes, self.metered.is_some())
    }

    /// Make `bytes` runnable as module `module`: metered or not, as the
    /// policy says for that module. From memory, the disk cache or by
    /// compiling (in that order). Compiling is CPU-heavy: call from a
    /// blocking context.
    pub fn load_as(
        &self,
        bytes: &[u8],
        module: &str,
    ) -> Result<(Arc<LoadedComponent>, Origin), SandboxError> {
        self.load_flavor(bytes, !self.config.unmetered.contains(module))
    }

    fn load_flavor(
        &self,
        bytes: &[u8],
        metered: bool,
    ) -> Result<(Arc<LoadedComponent>, Origin), SandboxError> {
        let digest = Digest::of(bytes);
        if let Some(hit) = self.lock_loaded().get(&(digest, metered)) {
            return Ok((hit.clone(), Origin::Memory));
        }
        let flavor = self.flavor(metered)?;
        let (component, origin) = match flavor
            .disk
            .as_ref()
            .and_then(|d| d.load(&flavor.engine, &digest))
        {
            Some(c) => (c, Origin::DiskCache),
            None => {
                let c = Component::from_binary(&flavor.engine, bytes)
                    .map_err(|e| SandboxError::Compile(chain_line(&e)))?;
                if let Some(disk) = &flavor.disk {
                    disk.store(&digest, &c);
                }
                (c, Origin::Compiled)
            }
        };
        let instance_pre = flavor
            .linker
            .instantiate_pre(&component)
            .map_err(|e| SandboxError::Link(chain_line(&e)))?;
        let pre = TaskPre::new(instance_pre).map_err(|e| SandboxError::Contract(chain_line(&e)))?;
        release_freed_heap();
        let loaded = Arc::new(LoadedComponent {
            digest,
            metered,
            component,
            pre,
        });
        let evicted = self.lock_loaded().push((digest, metered), loaded.clone());
        if let Some(((gone, _), _)) = evicted.filter(|(key, _)| *key != (digest, metered)) {
            // Its kept instances would hold the unloaded code alive.
            self.idle.forget(&gone);
        }
        Ok((loaded, origin))
    }

    fn flavor(&self, metered: bool) -> Result<&Flavor, SandboxError> {
        let flavor = if metered {
            &self.metered
        } else {
            &self.unmetered
        };
        flavor.as_ref().ok_or_else(|| {
            SandboxError::Engine(format!(
                "no {} engine on this host",
                if metered { "metered" } else { "unmetered" }
            ))
        })
    }

    /// Whether `bytes` are a component this host can run (compiled, linked
    /// against what the host offers, checked against the contract): the
    /// check an upload makes, so whatever uploads also runs. The error is
    /// one line naming why not.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        self.load(bytes)
            .map(|_| ())
            .map_err(|e| one_line(&e.to_string()))
    }

    fn lock_loaded(
        &self,
    ) -> std::sync::MutexGuard<'_, LruCache<(Digest, bool), Arc<LoadedComponent>>> {
        // The cache holds no invariants a panic could break mid-update.
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the tasks a component serves (runs its `tasks` export).
    pub async fn tasks(&self, component: &LoadedComponent) -> Result<Vec<String>, TaskError> {
        let limits = Limits {
            timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let call = TaskCall {
            id: "tasks".into(),
            name: "tasks".into(),
            ..TaskCall::default()
        };
        match self
            .execute(component, &call, &limits, Action::ListTasks)
            .await
            .0
        {
            Ok(Output::Tasks(names)) => Ok(names),
            Ok(Output::Json(_)) => Err(TaskError::Host("unexpected output from `tasks`".into())),
            Err(e) => Err(e),
        }
    }

    /// Run one task in a fresh store and report what happened. Never
    /// panics on guest behaviour: every way a guest can fail is a
    /// [`TaskError`].
    pub async fn run(
        &self,
        component: &LoadedComponent,
        call: &TaskCall,
        limits: &Limits,
    ) -> TaskReport {
        let span = tracing::info_span!("task", task_id = %call.id, task = %format_args!("{}.{}", call.module, call.name));
        let started = Instant::now();
        let (result, stats) = self
            .execute(component, call, limits, Action::Call)
            .instrument(span)
            .await;
        let result = match result {
            Ok(Output::Json(json)) => Ok(json),
            Ok(Output::Tasks(_)) => Err(TaskError::Host("unexpected output from `call`".into())),
            Err(e) => Err(e),
        };
        TaskReport {
            result,
            elapsed: started.elapsed(),
            fuel_consumed: stats.fuel_consumed,
            memory_peak: stats.memory_peak,
            progress: stats.progress,
            instance_use: stats.instance_use,
        }
    }

    /// Instantiate `component` in a fresh, limited store (or take a kept
    /// instance of it, where reuse is allowed), perform `action` and
    /// classify every failure. An instance is kept only after a clean
    /// success within its allowance and memory bound; any failure, trap,
    /// limit, timeout or revoke (this future dropped) throws it away.
    async fn execute(
        &self,
        component: &LoadedComponent,
        call: &TaskCall,
        limits: &Limits,
        action: Action,
    ) -> (Result<Output, TaskError>, RunStats) {
        let now = Instant::now();
        let hard_deadline = now + limits.timeout;
        let context = TaskContext {
            id: call.id.clone(),
            module: call.module.clone(),
            name: call.name.clone(),
            retries: call.retries,
            max_retries: call.max_retries,
            soft_deadline: limits.soft_timeout.map(|d| now + d),
            hard_deadline,
        };
        let allowance = match action {
            Action::Call => self.config.reuse.allowance(&call.module, &call.grants),
            Action::ListTasks => None,
        };
        let idle = allowance.and_then(|_| self.idle.take(&component.digest, &call.module));
        let (mut store, instance, uses) = match idle {
            Some(Warm {
                instance: (mut store, task),
                uses,
                ..
            }) => {
                store.data_mut().begin(context, limits.memory);
                (store, Some(task), uses)
            }
            None => (
                new_store(
                    component,
                    self.capabilities(call),
                    context,
                    limits,
                    &self.config,
                ),
                None,
                0,
            ),
        };
        if component.metered {
            // Only fails when fuel metering is off, which was just checked.
            let _ = store.set_fuel(limits.fuel);
        }
        store.set_epoch_deadline(1);

        // Epochs only interrupt wasm code; the timeout also bounds time the
        // guest spends blocked in host calls (a WASI sleep, a poll).
        let outcome = {
            let store_ref = &mut store;
            let run = async move {
                let task = match instance {
                    Some(task) => task,
                    None => component.pre.instantiate_async(&mut *store_ref).await?,
                };
                let output = match action {
                    Action::ListTasks => Ok(Output::Tasks(task.call_tasks(&mut *store_ref).await?)),
                    Action::Call => task
                        .call_call(&mut *store_ref, &call.name, &call.args, &call.kwargs)
                        .await?
                        .map(Output::Json)
                        .map_err(failure),
                };
                wasmtime::Result::Ok((task, output))
            };
            tokio::time::timeout_at(
                tokio::time::Instant::from_std(hard_deadline + EPOCH_TICK),
                run,
            )
            .await
        };

        let fuel_consumed = if component.metered {
            store
                .get_fuel()
                .ok()
                .map(|left| limits.fuel.saturating_sub(left))
        } else {
            None
        };
        let state = store.data();
        let stderr = state.stderr.take();
        let stdout = state.stdout.take();
        let (result, instance) = match outcome {
            Err(_elapsed) => (
                Err(TaskError::TimeLimit {
                    limit: limits.timeout,
                }),
                None,
            ),
            Ok(Ok((task, r))) => (r, Some(task)),
            Ok(Err(e)) => (
                Err(classify(&e, state, limits, &stderr, fuel_consumed)),
                None,
            ),
        };
        emit_output("stdout", &call.id, &stdout);
        emit_output("stderr", &call.id, &stderr);
        if state.logs_dropped() > 0 {
            tracing::warn!(task_id = %call.id, dropped = state.logs_dropped(), "task exceeded its log budget; lines dropped");
        }
        if state.logs_truncated() > 0 {
            tracing::warn!(task_id = %call.id, truncated = state.logs_truncated(), "task logged lines over the per-line cap; they were cut");
        }
        let uses = uses + 1;
        let stats = RunStats {
            fuel_consumed,
            memory_peak: state.limiter.peak,
            progress: state.progress,
            instance_use: uses,
        };
        let keep = match (allowance, instance, &result) {
            (Some(allowance), Some(task), Ok(_)) if !state.limiter.denied => {
                let memory = state.limiter.total();
                ReusePolicy::keeps(allowance, uses, memory, self.config.reuse.max_memory)
                    .then_some(task)
            }
            _ => None,
        };
        if let Some(task) = keep {
            self.idle.put(Warm::new(
                (store, task),
                uses,
                component.digest,
                &call.module,
            ));
        }
        (result, stats)
    }

    fn capabilities(&self, call: &TaskCall) -> Capabilities {
        Capabilities {
            grants: call.grants.clone(),
            http: self.http.clone(),
            config: self.task_config.clone(),
            kv: self.kv.clone(),
        }
    }
}

/// Most idle kept instances a sandbox holds: each holds a pool slot,
/// which reserves address space.
const MAX_IDLE: u32 = 64;

/// A new store for one task of `component`, under `limits`: fuel metering
/// (with host work charged) when the component is metered, and the epoch
/// callback that enforces the hard limit.
fn new_store(
    component: &LoadedComponent,
    caps: Capabilities,
    context: TaskContext,
    limits: &Limits,
    config: &SandboxConfig,
) -> Store<HostState> {
    let state = HostState::new(
        context,
        caps,
        limits.memory,
        config.output_cap,
        config.log_cap,
    );
    let mut store = Store::new(component.component.engine(), state);
    store.limiter(|s| &mut s.limiter);
    if component.metered {
        // Work done inside host calls burns no wasm fuel; charge it as
        // each host call returns, so a guest cannot loop on a cheap call
        // that makes the host do a lot (64 MiB of random bytes).
        store.call_hook(|mut ctx, hook| match hook {
            CallHook::CallingHost => {
                ctx.data_mut().host_depth += 1;
                Ok(())
            }
            CallHook::ReturningFromHost => {
                let state = ctx.data_mut();
                state.host_depth = state.host_depth.saturating_sub(1);
                if state.host_depth == 0 {
                    charge_host_work(ctx)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        });
    }
    // Every tick: trap if past the hard limit, else yield so other tasks on
    // this thread get to run. The deadline is read from the state, so a
    // kept instance's next task brings its own.
    store.epoch_deadline_callback(move |ctx| {
        if Instant::now() >= ctx.data().task.hard_deadline {
            Err(wasmtime::Error::new(HardLimit))
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

#[derive(Clone, Copy)]
enum Action {
    ListTasks,
    Call,
}

enum Output {
    Tasks(Vec<String>),
    Json(String),
}

fn failure(f: bindings::Failure) -> TaskError {
    TaskError::Failed {
        kind: match f.kind {
            bindings::celeriac::task::types::FailureKind::Retry => FailureKind::Retry,
            bindings::celeriac::task::types::FailureKind::Fatal => FailureKind::Fatal,
            bindings::celeriac::task::types::FailureKind::InvalidInput => FailureKind::InvalidInput,
        },
        message: f.message,
        retry_after: f.retry_after_ms.map(Duration::from_millis),
    }
}

struct RunStats {
    fuel_consumed: Option<u64>,
    memory_peak: u64,
    progress: Option<(u64, u64)>,
    instance_use: u32,
}

/// Charge the host work done since the last charge to the store's fuel, at
/// [`HOST_FUEL_PER_BYTE`]; out of fuel here is out of fuel like in wasm.
///
/// Only call it when the outermost host call returns (the import the guest
/// called): compiled wasm reloads its fuel counter after calling an import,
/// but not after a libcall (`memory.grow` in the guest's allocator while
/// the host hands it a list), so a charge made inside one would be lost.
fn charge_host_work(mut ctx: StoreContextMut<'_, HostState>) -> wasmtime::Result<()> {
    let work = ctx.data().take_host_work();
    if work == 0 {
        return Ok(());
    }
    let cost = work.saturating_mul(HOST_FUEL_PER_BYTE);
    let left = ctx.get_fuel()?;
    match left.checked_sub(cost) {
        Some(rest) => ctx.set_fuel(rest),
        None => {
            ctx.set_fuel(0)?;
            Err(wasmtime::Error::new(Trap::OutOfFuel))
        }
    }
}

/// Raised by the epoch callback when the hard time limit has passed.
#[derive(Debug, thiserror::Error)]
#[error("hard time limit exceeded")]
struct HardLimit;

/// Name the cause of a wasmtime error the way users think of it.
fn classify(
    e: &wasmtime::Error,
    state: &HostState,
    limits: &Limits,
    stderr: &host::output::Captured,
    fuel_consumed: Option<u64>,
) -> TaskError {
    if e.downcast_ref::<HardLimit>().is_some() {
        return TaskError::TimeLimit {
            limit: limits.timeout,
        };
    }
    // A refused grow usually surfaces as a guest abort (`unreachable`) or a
    // failed instantiation; either way the memory limit is the cause.
    if state.limiter.denied {
        return TaskError::MemoryLimit {
            limit: limits.memory,
        };
    }
    classify_error(e, limits, fuel_consumed, || {
        host::output::panic_message(stderr)
    })
}

/// [`classify`] once the host's own findings (time, memory) are ruled out.
/// `guest_said` reads the guest's panic message, if any, from its stderr.
fn classify_error(
    e: &wasmtime::Error,
    limits: &Limits,
    fuel_consumed: Option<u64>,
    guest_said: impl FnOnce() -> Option<String>,
) -> TaskError {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return TaskError::Exited { status: exit.0 };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TaskError::FuelExhausted {
            fuel: fuel_consumed.unwrap_or(limits.fuel),
        },
        Some(Trap::Interrupt) => TaskError::TimeLimit {
            limit: limits.timeout,
        },
        Some(trap) => {
            let what = match trap {
                Trap::StackOverflow => "stack overflow".to_string(),
                Trap::UnreachableCodeReached => "unreachable instruction executed".to_string(),
                Trap::MemoryOutOfBounds => "out-of-bounds memory access".to_string(),
                Trap::IntegerDivisionByZero => "integer division by zero".to_string(),
                other => host::output::quote(&other.to_string()),
            };
            // Anything on stderr is the guest's word (a guest can print a
            // fake panic line): quoted as such, after the host's finding.
            match guest_said() {
                Some(said) => TaskError::Trap(format!("{what} (guest stderr: {said})")),
                None => TaskError::Trap(what),
            }
        }
        None => match e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            Some(p) => TaskError::Busy(format!("host is out of instance slots: {p}")),
            // An error from the host, not a trap: a host call over a host
            // limit, or a result the host cannot take (lifting it failed).
            // The same call would fail the same way again.
            None => TaskError::Host(format!("host refused the task: {}", error_line(e))),
        },
    }
}

/// A load error with its whole cause chain, as one line (wasmparser and
/// the linker put the useful part in the middle of a multi-line text).
fn chain_line(e: &wasmtime::Error) -> String {
    let text = e
        .chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    one_line(&text)
}

/// `text` with every run of whitespace (newlines included) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The root cause of a wasmtime error as one bounded line, without the
/// wasm backtrace wasmtime attaches as context.
fn error_line(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    host::output::quote(root.lines().find(|l| !l.trim().is_empty()).unwrap_or(&root))
}

/// Hand captured guest output to the log, line by line: the head, a note
/// of what was dropped, then the tail.
fn emit_output(stream: &str, task_id: &str, captured: &host::output::Captured) {
    for line in String::from_utf8_lossy(&captured.bytes).lines() {
        tracing::info!(target: "guest", task_id, stream, "{line}");
    }
    if captured.dropped > 0 {
        tracing::warn!(target: "guest", task_id, stream, dropped_bytes = captured.dropped, "guest output over the cap was dropped");
    }
    for line in String::from_utf8_lossy(&captured.tail).lines() {
        tracing::info!(target: "guest", task_id, stream, "{line}");
    }
}

/// Compiling a large component (CPython, SpiderMonkey) allocates hundreds
/// of MiB across the threads' malloc arenas; glibc keeps what is freed, so
/// a worker that had compiled Python held ~250 MiB more RSS for good
/// (bench/compare, same-code). Hand it back to the kernel.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(e: wasmtime::Error, guest_said: Option<&str>) -> TaskError {
        let said = guest_said.map(str::to_string);
        classify_error(&e, &Limits::default(), Some(7), || said)
    }

    #[test]
    fn exits_and_host_refusals_are_final_and_one_line() {
        let e = classified(wasmtime::Error::new(wasmtime_wasi::I32Exit(3)), None);
        assert_eq!(e, TaskError::Exited { status: 3 });
        assert!(!e.is_retryable());

        // As wasmtime raises it: a root cause under a multi-line context.
        let e = wasmtime::Error::msg("string pointer/length out of bounds of memory").context(
            "error while executing at wasm backtrace:\n    0: 0x1234 - foo\n    1: 0x5678 - bar",
        );
        let e = classified(e, Some("panicked at src/lib.rs:1:1: nope"));
        assert_eq!(
            e,
            TaskError::Host(
                "host refused the task: string pointer/length out of bounds of memory".into()
            )
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn guest_stderr_is_quoted_as_the_guests() {
        let trap = || wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert_eq!(
            classified(trap(), None),
            TaskError::Trap("unreachable instruction executed".into())
        );
        let e = classified(trap(), Some("panicked at src/host.rs:1:1: forged"));
        assert_eq!(
            e.to_string(),
            "trap: unreachable instruction executed (guest stderr: panicked at src/host.rs:1:1: forged)"
        );
        assert!(e.is_retryable());
        assert_eq!(
            classified(wasmtime::Error::new(Trap::OutOfFuel), None),
            TaskError::FuelExhausted { fuel: 7 }
        );
    }
}
