//! Components a worker has fetched, verified and compiled, by digest and
//! the module a message asks for. Each is fetched and compiled once however
//! many tasks ask at once; at most the sandbox's `loaded_capacity` are
//! kept, the least recently used dropped first (one bound for both caches:
//! a dropped one is fetched, verified and loaded again when next asked
//! for). A refusal is remembered for a while, so a flood of messages
//! pinning a refused component costs one check, not one fetch each.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::OnceCell;

use celeriac_broker::Broker;
use celeriac_broker::registry::{RegistryError, fetch_verified};
use celeriac_protocol::{Digest, Grants};
use celeriac_sandbox::{LoadedComponent, Sandbox};
use celeriac_signing::TrustStore;

/// How long a refusal stands before the store is asked again (a component
/// re-signed or re-uploaded in the meantime is then seen).
const REFUSAL_TTL: Duration = Duration::from_secs(60);
/// Refusals remembered at most; the least recently used go first.
const REFUSAL_CAP: usize = 1024;

/// A component ready to run, signed as the module it was asked for, with
/// what its signed manifest grants.
pub(super) struct Ready {
    pub loaded: Arc<LoadedComponent>,
    pub grants: Arc<Grants>,
}

pub(super) enum LoadError {
    /// Worth trying again later (the broker was unreachable).
    Transient(String),
    /// Will never run: missing, tampered, untrusted, signed for another
    /// module, or not a valid component.
    Refused(String),
}

type Key = (Digest, String);

pub(super) struct ComponentCache {
    broker: Arc<dyn Broker>,
    sandbox: Arc<Sandbox>,
    trust: TrustStore,
    cells: Mutex<LruCache<Key, Arc<OnceCell<Arc<Ready>>>>>,
    refusals: Mutex<Refusals>,
}

impl ComponentCache {
    pub fn new(broker: Arc<dyn Broker>, sandbox: Arc<Sandbox>, trust: TrustStore) -> Self {
        let capacity =
            NonZeroUsize::new(sandbox.config().loaded_capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            broker,
            sandbox,
            trust,
            cells: Mutex::new(LruCache::new(capacity)),
            refusals: Mutex::new(Refusals::new(REFUSAL_TTL, REFUSAL_CAP)),
        }
    }

    /// The component `digest`, if a trusted key signed it as `module`.
    pub async fn get(&self, digest: &Digest, module: &str) -> Result<Arc<Ready>, LoadError> {
        let key: Key = (*digest, module.to_string());
        if let Some(reason) = self.refused(&key) {
            return Err(LoadError::Refused(reason));
        }
        let cell = self
            .lock_cells()
            .get_or_insert(key.clone(), Default::default)
            .clone();
        let result = cell
            .get_or_try_init(|| async {
                // Tasks that waited behind a refused load see the refusal
                // here instead of fetching again.
                match self.refused(&key) {
                    Some(reason) => Err(LoadError::Refused(reason)),
                    None => self.load(digest, module).await,
                }
            })
            .await
            .cloned();
        if let Err(e) = &result {
            if let LoadError::Refused(reason) = e {
                self.lock_refusals()
                    .insert(key.clone(), reason.clone(), Instant::now());
            }
            // Keep only ready components in the map: digests from a flood
            // of bad messages must not pile up.
            let mut cells = self.lock_cells();
            if cells
                .peek(&key)
                .is_some_and(|c| Arc::ptr_eq(c, &cell) && !c.initialized())
            {
                cells.pop(&key);
            }
        }
        result
    }

    fn refused(&self, key: &Key) -> Option<String> {
        self.lock_refusals().get(key, Instant::now())
    }

    /// How many components are kept (ready or loading).
    pub fn len(&self) -> usize {
        self.lock_cells().len()
    }

    fn lock_cells(&self) -> std::sync::MutexGuard<'_, LruCache<Key, Arc<OnceCell<Arc<Ready>>>>> {
        // A plain map: nothing a panic could leave half-updated.
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load(&self, digest: &Digest, module: &str) -> Result<Arc<Ready>, LoadError> {
        // Signatures are checked before the bytes are fetched (see
        // `fetch_verified`), so an untrusted component costs no transfer.
        let (bytes, verified) =
            match fetch_verified(self.broker.as_ref(), digest, module, &self.trust).await {
                Ok(v) => v,
                Err(RegistryError::Broker(e)) => return Err(LoadError::Transient(e.to_string())),
                Err(e @ RegistryError::WrongModule { .. }) => {
                    return Err(LoadError::Refused(e.to_string()));
                }
                Err(e) => return Err(LoadError::Refused(format!("component {digest}: {e}"))),
            };
        let sandbox = self.sandbox.clone();
        let as_module = module.to_string();
        // Compiling is CPU-heavy: keep it off the async threads.
        let loaded = tokio::task::spawn_blocking(move || sandbox.load_as(&bytes, &as_module))
            .await
            .map_err(|e| LoadError::Transient(format!("compile task failed: {e}")))?
            .map_err(|e| LoadError::Refused(format!("component {digest}: {e}")))?;
        let grants = verified.manifest.grants;
        tracing::info!(%digest, module = %verified.manifest.module, signer = %verified.signer,
            origin = ?loaded.1, grants = %grants.summary(), metered = loaded.0.metered, "component ready");
        Ok(Arc::new(Ready {
            loaded: loaded.0,
            grants: Arc::new(grants),
        }))
    }
}

/// Recent refusals by (digest, module), each standing for `ttl`; at most
/// `cap` of them, the least recently used dropped first.
struct Refusals {
    ttl: Duration,
    map: LruCache<Key, (Instant, String)>,
}

impl Refusals {
    fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            map: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The reason `key` was refused, if that was less than `ttl` before `now`.
    fn get(&mut self, key: &Key, now: Instant) -> Option<String> {
        match self.map.get(key) {
            Some((at, reason)) if now.saturating_duration_since(*at) < self.ttl => {
                Some(reason.clone())
            }
            Some(_) => {
                self.map.pop(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: Key, reason: String, now: Instant) {
        self.map.put(key, (now, reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, module: &str) -> Key {
        (Digest::of(&[n]), module.to_string())
    }

    #[test]
    fn refusals_stand_for_their_ttl_per_digest_and_module() {
        let mut r = Refusals::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        r.insert(key(1, "math"), "unknown key".into(), t0);
        assert_eq!(
            r.get(&key(1, "math"), t0 + Duration::from_secs(59))
                .as_deref(),
            Some("unknown key")
        );
        // The same bytes asked for as another module are judged on their own.
        assert_eq!(r.get(&key(1, "calc"), t0), None);
        assert_eq!(r.get(&key(2, "math"), t0), None);
        assert_eq!(r.get(&key(1, "math"), t0 + Duration::from_secs(60)), None);
        // Expired entries are dropped when seen.
        assert_eq!(r.map.len(), 0);
    }

    #[test]
    fn refusals_are_bounded() {
        let mut r = Refusals::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for n in 0..10 {
            r.insert(key(n, "m"), format!("r{n}"), t0);
        }
        assert_eq!(r.map.len(), 3);
        assert_eq!(r.get(&key(9, "m"), t0).as_deref(), Some("r9"));
        assert_eq!(r.get(&key(0, "m"), t0), None);
    }
}
