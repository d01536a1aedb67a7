//! Components a worker has fetched, verified and compiled, by digest. Each
//! digest is fetched and compiled once however many tasks ask at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::broker::Broker;
use crate::registry::{RegistryError, fetch_verified};
use crate::sandbox::{LoadedComponent, Sandbox};
use crate::signing::{Digest, TrustStore};

/// A component ready to run, with the module name its signature vouches for.
pub(super) struct Ready {
    pub loaded: Arc<LoadedComponent>,
    pub module: String,
}

pub(super) enum LoadError {
    /// Worth trying again later (the broker was unreachable).
    Transient(String),
    /// Will never run: missing, tampered, untrusted or not a valid component.
    Refused(String),
}

pub(super) struct ComponentCache {
    broker: Arc<dyn Broker>,
    sandbox: Arc<Sandbox>,
    trust: TrustStore,
    cells: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Ready>>>>>,
}

impl ComponentCache {
    pub fn new(broker: Arc<dyn Broker>, sandbox: Arc<Sandbox>, trust: TrustStore) -> Self {
        Self {
            broker,
            sandbox,
            trust,
            cells: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, digest: &Digest) -> Result<Arc<Ready>, LoadError> {
        let cell = self
            .cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*digest)
            .or_default()
            .clone();
        // A failed init leaves the cell empty, so the next task tries again.
        cell.get_or_try_init(|| self.load(digest)).await.cloned()
    }

    async fn load(&self, digest: &Digest) -> Result<Arc<Ready>, LoadError> {
        let (bytes, verified) =
            match fetch_verified(self.broker.as_ref(), digest, &self.trust).await {
                Ok(v) => v,
                Err(RegistryError::Broker(e)) => return Err(LoadError::Transient(e.to_string())),
                Err(e) => return Err(LoadError::Refused(format!("component {digest}: {e}"))),
            };
        let sandbox = self.sandbox.clone();
        // Compiling is CPU-heavy: keep it off the async threads.
        let loaded = tokio::task::spawn_blocking(move || sandbox.load(&bytes))
            .await
            .map_err(|e| LoadError::Transient(format!("compile task failed: {e}")))?
            .map_err(|e| LoadError::Refused(format!("component {digest}: {e}")))?;
        tracing::info!(%digest, module = %verified.manifest.module, signer = %verified.signer, origin = ?loaded.1, "component ready");
        Ok(Arc::new(Ready {
            loaded: loaded.0,
            module: verified.manifest.module,
        }))
    }
}
