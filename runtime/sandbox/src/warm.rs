//! Instances kept between tasks (opt-in reuse), each keyed by the
//! component digest *and* the module it was signed as, so an instance never
//! serves another component or another module's tasks. Bounded: the least
//! recently returned go first.

use std::collections::VecDeque;
use std::sync::Mutex;

use wasmtime::Store;

use celeriac_protocol::Digest;

use crate::bindings::Task;
use crate::host::HostState;

/// An instance's store and its exports.
pub(crate) type Instance = (Store<HostState>, Task);

/// An idle `T` (an [`Instance`]) that served `uses` tasks cleanly and may
/// serve another.
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

/// Idle instances, at most `cap` (each holds a pool slot and its memory).
pub(crate) struct Idle<T = Instance> {
    cap: usize,
    list: Mutex<VecDeque<Warm<T>>>,
}

impl<T> Idle<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            list: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently returned idle instance of `digest` signed as
    /// `module`, taken out (one task at a time per instance).
    pub fn take(&self, digest: &Digest, module: &str) -> Option<Warm<T>> {
        let mut list = self.lock();
        let at = list
            .iter()
            .rposition(|w| w.digest == *digest && w.module == module)?;
        list.remove(at)
    }

    /// Keep `warm` for its module's next task; past the cap the least
    /// recently returned goes (dropped outside the lock: tearing down an
    /// interpreter's instance takes a fraction of a millisecond).
    pub fn put(&self, warm: Warm<T>) {
        if self.cap == 0 {
            return;
        }
        let evicted = {
            let mut list = self.lock();
            list.push_back(warm);
            if list.len() > self.cap {
                list.pop_front()
            } else {
                None
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm<T>>> {
        // A plain list: nothing a panic could leave half-updated.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
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
        assert!(idle.take(&digest(3), "a").is_none());
        assert!(idle.take(&digest(1), "c").is_none());
        assert_eq!(idle.take(&digest(1), "b").map(|w| w.instance), Some(2));
        assert_eq!(idle.take(&digest(2), "a").map(|w| w.instance), Some(3));
        assert_eq!(idle.take(&digest(1), "a").map(|w| w.instance), Some(1));
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn the_most_recently_returned_is_taken_and_the_oldest_goes_past_the_cap() {
        let idle = Idle::new(3);
        idle.put(warm(1, 1, "a", 2));
        idle.put(warm(2, 1, "a", 5));
        assert_eq!(
            idle.take(&digest(1), "a").map(|w| (w.instance, w.uses)),
            Some((2, 5))
        );
        idle.put(warm(2, 1, "a", 6));
        idle.put(warm(3, 2, "a", 1));
        idle.put(warm(4, 3, "a", 1));
        assert_eq!(ids(&idle), [2, 3, 4]);
        // Nothing is kept without room for it.
        let none = Idle::new(0);
        none.put(warm(1, 1, "a", 1));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn forgetting_a_digest_drops_its_instances() {
        let idle = Idle::new(4);
        idle.put(warm(1, 1, "a", 1));
        idle.put(warm(2, 2, "a", 1));
        idle.put(warm(3, 1, "b", 1));
        idle.forget(&digest(1));
        assert_eq!(ids(&idle), [2]);
    }
}
