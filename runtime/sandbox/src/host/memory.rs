//! The task's memory limit, in total across every memory of every core
//! instance in the component, and a bound on table sizes.

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
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            total: 0,
            peak: 0,
            last_grant: 0,
            denied: false,
        }
    }

    /// A kept instance starts its next task: its memory stays counted, the
    /// new task's limit applies to what it grows, and its peak starts at
    /// what it holds.
    pub fn begin(&mut self, limit: u64) {
        self.limit = limit;
        self.peak = self.total;
        self.last_grant = 0;
        self.denied = false;
    }

    /// Bytes of linear memory the instance holds now.
    pub fn total(&self) -> u64 {
        self.total
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
