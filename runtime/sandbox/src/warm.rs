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

/// An instance's store and its exports.
pub(crate) type Instance = (Store<HostState>, Task);

/// An idle `T` (an [`Instance`]) that served `uses` tasks cleanly (0: a
/// spare) and may serve another.
pub(crate) struct Warm<T = Instance> {
    pub instance: T,
    pub uses: u32,
    digest: Digest,
    module: String,
}

impl<T> Warm<T> {
    pub fn new(instance: T, uses: u32, digest: Digest, module: &str) -> Self {
        Self {
            instance,
            uses,
            digest,
            module: module.to_string(),
        }
    }
}

/// Idle instances, at most `cap` (each holds a pool slot and its memory),
/// and the keys whose spare is being made.
pub(crate) struct Idle<T = Instance> {
    cap: usize,
    list: Mutex<VecDeque<Warm<T>>>,
    preparing: Mutex<HashSet<(Digest, String)>>,
}

impl<T> Idle<T> {
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
    pub fn take(&self, digest: &Digest, module: &str, reuse: bool) -> Option<Warm<T>> {
        let mut list = self.lock();
        let of_key = |w: &Warm<T>| w.digest == *digest && w.module == module;
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
    pub fn put(&self, warm: Warm<T>) {
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
        let gone: VecDeque<Warm<T>> = {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm<T>>> {
        // A plain list: nothing a panic could leave half-updated.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_preparing(&self) -> std::sync::MutexGuard<'_, HashSet<(Digest, String)>> {
        self.preparing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    /// Instance `id` of component `n` as `module`, after `uses` tasks.
    fn warm(id: u32, n: u8, module: &str, uses: u32) -> Warm<u32> {
        Warm::new(id, uses, digest(n), module)
    }

    fn ids(idle: &Idle<u32>) -> Vec<u32> {
        idle.lock().iter().map(|w| w.instance).collect()
    }

    #[test]
    fn an_instance_goes_only_to_its_digest_and_module() {
        let idle = Idle::new(8);
        idle.put(warm(1, 1, "a", 1));
        idle.put(warm(2, 1, "b", 1));
        idle.put(warm(3, 2, "a", 1));
        assert!(idle.take(&digest(3), "a", true).is_none());
        assert!(idle.take(&digest(1), "c", true).is_none());
        assert_eq!(idle.take(&digest(1), "b", true).map(|w| w.instance), Some(2));
        assert_eq!(idle.take(&digest(2), "a", true).map(|w| w.instance), Some(3));
        assert_eq!(idle.take(&digest(1), "a", true).map(|w| w.instance), Some(1));
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn without_reuse_only_spares_are_taken_and_with_it_used_ones_first() {
        let idle = Idle::new(8);
        idle.put(warm(1, 1, "a", 0));
        idle.put(warm(2, 1, "a", 3));
        // A task not allowed reuse never gets an instance that ran a task.
        assert_eq!(idle.take(&digest(1), "a", false).map(|w| w.instance), Some(1));
        assert!(idle.take(&digest(1), "a", false).is_none());
        idle.put(warm(3, 1, "a", 0));
        assert_eq!(idle.take(&digest(1), "a", true).map(|w| w.instance), Some(2));
        assert_eq!(idle.take(&digest(1), "a", true).map(|w| w.instance), Some(3));
    }

    #[test]
    fn past_the_cap_kept_ones_displace_spares_then_the_oldest() {
        let idle = Idle::new(3);
        idle.put(warm(1, 1, "a", 2));
        idle.put(warm(2, 2, "a", 0));
        idle.put(warm(3, 3, "a", 1));
        // Full: a spare is not kept...
        idle.put(warm(4, 4, "a", 0));
        assert_eq!(ids(&idle), [1, 2, 3]);
        // ...a kept one displaces the spare, then the least recently returned.
        idle.put(warm(5, 5, "a", 1));
        assert_eq!(ids(&idle), [1, 3, 5]);
        idle.put(warm(6, 6, "a", 1));
        assert_eq!(ids(&idle), [3, 5, 6]);
        // Nothing is kept without room for it.
        let none = Idle::new(0);
        none.put(warm(1, 1, "a", 1));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn one_spare_at_a_time_per_key_and_only_with_room() {
        let idle: Idle<u32> = Idle::new(2);
        assert!(idle.start_spare(&digest(1), "a"));
        // Being made: not twice.
        assert!(!idle.start_spare(&digest(1), "a"));
        assert!(idle.start_spare(&digest(1), "b"));
        idle.end_spare(&digest(1), "a");
        idle.put(warm(1, 1, "a", 0));
        // Idle already: not another.
        assert!(!idle.start_spare(&digest(1), "a"));
        idle.put(warm(2, 2, "a", 1));
        // Full.
        assert!(!idle.start_spare(&digest(3), "a"));
        assert!(!Idle::<u32>::new(0).start_spare(&digest(1), "a"));
    }

    #[test]
    fn forgetting_a_digest_drops_its_instances() {
        let idle = Idle::new(4);
        idle.put(warm(1, 1, "a", 1));
        idle.put(warm(2, 2, "a", 1));
        idle.put(warm(3, 1, "b", 0));
        idle.forget(&digest(1));
        assert_eq!(ids(&idle), [2]);
    }
}
