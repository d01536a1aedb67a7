//! How a host's wasmtime engines are configured (one metered, one not,
//! as its policy needs), and the ticker that gives epoch interruption its
//! wall-clock meaning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of time limits and of the
/// yields that keep one busy guest from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-component ceilings for the instance pool. Generous enough for
/// interpreters compiled to components (Python, JavaScript), which carry
/// several core instances and memories.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
const MAX_TABLES_PER_COMPONENT: u32 = 32;

pub(crate) fn build_engine(slots: u32, fuel: bool) -> wasmtime::Result<Engine> {
    let slots = slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MAX_MEMORIES_PER_COMPONENT)
        .total_tables(slots * MAX_TABLES_PER_COMPONENT)
        .total_stacks(slots)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        // Resetting the low part of a slot with memset is cheaper than
        // madvise + TLB shootdown + page faults on the next task. 512 KiB
        // covers the shadow stack (256 KiB, see .cargo/config.toml) and the
        // data of a small Rust task: bench/ measured 33 µs -> 11 µs per
        // warm task. Kept per slot, so it shrinks for workers with hundreds
        // of (mostly waiting, I/O-bound) slots: see keep_resident.
        .linear_memory_keep_resident(keep_resident(slots))
        .table_keep_resident(64 << 10)
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), a slot is reset
        // by finding the pages a task dirtied instead of resetting whole
        // regions: the next task of an interpreter (10-13 MiB image)
        // faults fewer pages back in. bench/ measured Python -15..-25 %,
        // JavaScript -30..-45 % per fresh task.
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(fuel)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Memory all pool slots together keep resident between tasks.
const KEEP_RESIDENT_BUDGET: usize = 16 << 20;

/// Bytes of linear memory one slot keeps resident between tasks: 512 KiB
/// up to 32 slots, then a share of [`KEEP_RESIDENT_BUDGET`] (at least
/// 64 KiB), page-aligned. A worker with `--concurrency 300` of I/O tasks
/// would otherwise hold 150 MiB of memory its tasks no longer use.
fn keep_resident(slots: u32) -> usize {
    (KEEP_RESIDENT_BUDGET / slots.max(1) as usize).clamp(64 << 10, 512 << 10) & !0xfff
}

/// Advances the engines' epochs every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A plain thread, not a tokio task: ticks must keep coming even when
        // every runtime worker is busy running guests.
        let spawned = thread::Builder::new()
            .name("celeriac-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the epoch ticker: time limits will not fire");
        }
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_slots_keep_512_kib_many_share_a_budget() {
        assert_eq!(keep_resident(1), 512 << 10);
        assert_eq!(keep_resident(32), 512 << 10);
        assert_eq!(keep_resident(100), 160 << 10);
        assert_eq!(keep_resident(300), 64 << 10);
        assert_eq!(keep_resident(10_000), 64 << 10);
        assert_eq!(keep_resident(0), 512 << 10);
    }
}
