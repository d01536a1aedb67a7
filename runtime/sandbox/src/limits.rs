//! What one task may consume.

use std::time::Duration;

/// Per-task limits. Every one has a default, so a task that forgets to ask
/// still cannot run forever or take the host's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Hard wall-clock limit: the task is stopped when it passes.
    pub timeout: Duration,
    /// Soft limit: after it, `should-stop` returns true so the task can
    /// clean up and return.
    pub soft_timeout: Option<Duration>,
    /// Fuel (roughly, wasm instructions) the task may burn. Ignored by a
    /// sandbox built without fuel metering.
    pub fuel: u64,
    /// Total bytes of linear memory across all of the task's memories.
    pub memory: u64,
}

impl Limits {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    /// About a minute of tight guest CPU here: by default the wall-clock
    /// limit binds first, and fuel is the budget callers tighten.
    pub const DEFAULT_FUEL: u64 = 1_000_000_000_000;
    pub const DEFAULT_MEMORY: u64 = 256 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
            soft_timeout: None,
            fuel: Self::DEFAULT_FUEL,
            memory: Self::DEFAULT_MEMORY,
        }
    }
}

/// Fuel charged per byte a host call produces or takes for the guest:
/// random bytes drawn, bytes written to stdout / stderr, log lines. Wasm
/// fuel is about one unit per instruction, and moving a byte through the
/// host costs a few instructions' worth, so a guest that makes the host
/// work (64 MiB of random bytes in a loop) runs out of fuel like one that
/// does the work itself.
pub const HOST_FUEL_PER_BYTE: u64 = 1;
