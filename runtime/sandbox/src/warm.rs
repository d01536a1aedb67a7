//! Idle instances, each keyed by the component digest *and* the module it
//! was signed as, so an instance never serves another component or another
//! module's tasks: spares (instantiated ahead of need, never used: as fresh
//! as one made on arrival) and instances kept for their module's next task
//! (opt-in reuse). Bounded: the least recently returned go first.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use wasmtime::Store;

use celeriac_protocol::Digest;

use crate::bindings::Task;
use crate::host::HostState;

/// An instance that served `uses` tasks cleanly (0: a spare) and may
/// serve another.
pub(crate) struct Warm {
    pub store: Store<HostState>,
    pub task: Task,
    pub uses: u32,
    digest: Digest,
    module: String,
}

impl Warm {
    pub fn new(
        store: Store<HostState>,
        task: Task,
        uses: u32,
        digest: Digest,
        module: &str,
    ) -> Self {
        Self {
            store,
            task,
            uses,
            digest,
            module: module.to_string(),
        }
    }
}

/// Idle instances, at most `cap` (each holds a pool slot and its memory),
/// and the keys whose spare is being made.
pub(crate) struct Idle {
    cap: usize,
    list: Mutex<VecDeque<Warm>>,
    preparing: Mutex<HashSet<(Digest, String)>>,
}

impl Idle {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            list: Mutex::new(VecDeque::new()),
            preparing: Mutex::new(HashSet::new()),
        }
    }

    /// An idle instance of `digest` signed as `module`, taken out (one task
    /// at a time per instance): with `reuse`, the most recently returned
    /// used one if any, else a spare; without, only a spare.
    pub fn take(&self, digest: &Digest, module: &str, reuse: bool) -> Option<Warm> {
        let mut list = self.lock();
        let of_key = |w: &Warm| w.digest == *digest && w.module == module;
        let used = || list.iter().rposition(|w| of_key(w) && w.uses > 0);
        let at = match reuse.then(used).flatten() {
            Some(at) => at,
            None => list.iter().rposition(|w| of_key(w) && w.uses == 0)?,
        };
        list.remove(at)
    }

    /// Whether a spare of `digest` as `module` should be made now: none is
    /// idle or being made, and there is room. Marks it as being made.
    pub fn start_spare(&self, digest: &Digest, module: &str) -> bool {
        if self.cap == 0 {
            return false;
        }
        let (has_spare, full) = {
            let list = self.lock();
            let has = list
                .iter()
                .any(|w| w.digest == *digest && w.module == module && w.uses == 0);
            (has, list.len() >= self.cap)
        };
        !has_spare && !full && self.lock_preparing().insert((*digest, module.to_string()))
    }

    /// The spare of `digest` as `module` is made (or failed).
    pub fn end_spare(&self, digest: &Digest, module: &str) {
        self.lock_preparing().remove(&(*digest, module.to_string()));
    }

    /// Keep `warm` for its module's next task. Past the cap, a kept
    /// instance displaces the oldest spare, else the least recently
    /// returned kept one; a spare is only kept where there is room (it is
    /// made ahead of need; a kept instance holds a module's warm state).
    /// What goes is dropped outside the lock: tearing down an
    /// interpreter's instance takes a fraction of a millisecond.
    pub fn put(&self, warm: Warm) {
        let evicted = {
            let mut list = self.lock();
            if list.len() < self.cap {
                list.push_back(warm);
                None
            } else if warm.uses == 0 || self.cap == 0 {
                Some(warm)
            } else {
                let at = list.iter().position(|w| w.uses == 0).unwrap_or(0);
                let gone = list.remove(at);
                list.push_back(warm);
                gone
            }
        };
        drop(evicted);
    }

    /// Drop every idle instance of `digest` (its component was unloaded).
    pub fn forget(&self, digest: &Digest) {
        let gone: VecDeque<Warm> = {
            let mut list = self.lock();
            let (gone, kept) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|w| w.digest == *digest);
            *list = kept;
            gone
        };
        drop(gone);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        // A plain list: nothing a panic could leave half-updated.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_preparing(&self) -> std::sync::MutexGuard<'_, HashSet<(Digest, String)>> {
        self.preparing.lock().unwrap_or_else(|p| p.into_inner())
    }
}
