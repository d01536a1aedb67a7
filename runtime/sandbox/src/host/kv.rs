//! Key-value state (`celeriac:task/kv`), scoped to the module: the host
//! prefixes every key with the module the component was signed as, so no
//! key a guest names can reach another module's. Needs the `kv` grant.
//! The store itself is the worker's (Redis or memory, through the broker):
//! this module holds the bounds and the checks.

use std::time::Duration;

use async_trait::async_trait;

use super::HostState;
use crate::bindings::celeriac::task::kv;

/// Longest key, value and time to live a task may use.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A key-value store with namespaces. Each call names the module; the
/// store keeps modules' keys apart.
#[async_trait]
pub trait KeyValue: Send + Sync {
    async fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Store `value`; with `only_if_absent`, only when `key` holds nothing.
    /// True if it was stored.
    async fn set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<bool, KvError>;
    async fn delete(&self, module: &str, key: &str) -> Result<bool, KvError>;
    async fn increment(&self, module: &str, key: &str, delta: i64) -> Result<i64, KvError>;
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    #[error("the value at this key is not an integer, or the increment overflows")]
    NotAnInteger,
}

fn to_wit(e: KvError) -> kv::Error {
    match e {
        KvError::Unavailable(m) => kv::Error::Unavailable(m),
        KvError::NotAnInteger => kv::Error::Invalid(KvError::NotAnInteger.to_string()),
    }
}

impl HostState {
    /// The module's namespace, if the grant and the host allow key-value.
    fn kv_access(&self, op: &str) -> Result<(std::sync::Arc<dyn KeyValue>, String), kv::Error> {
        if !self.caps.grants.kv {
            tracing::warn!(task_id = %self.task.id, op, "key-value call refused: not granted");
            return Err(kv::Error::Denied(format!(
                "key-value is not granted to module `{}` (sign it with --kv)",
                self.task.module
            )));
        }
        match &self.caps.kv {
            Some(store) => Ok((store.clone(), self.task.module.clone())),
            None => Err(kv::Error::Unavailable(
                "this host has no key-value store".into(),
            )),
        }
    }
}

fn check_key(key: &str) -> Result<(), kv::Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(kv::Error::Invalid(format!(
            "keys are 1-{MAX_KEY_BYTES} bytes (this one is {})",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8], ttl_ms: Option<u64>) -> Result<Option<Duration>, kv::Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(kv::Error::Invalid(format!(
            "values are at most {MAX_VALUE_BYTES} bytes (this one is {}): store large data elsewhere and keep a reference",
            value.len()
        )));
    }
    match ttl_ms.map(Duration::from_millis) {
        Some(t) if t.is_zero() || t > MAX_TTL => Err(kv::Error::Invalid(format!(
            "a time to live is 1 ms to {} days",
            MAX_TTL.as_secs() / 86_400
        ))),
        ttl => Ok(ttl),
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        check_key(&key)?;
        let (store, module) = self.kv_access("get")?;
        self.charge(key.len());
        let value = store.get(&module, &key).await.map_err(to_wit)?;
        self.charge(value.as_ref().map_or(0, Vec::len));
        // Whoever can write to Redis can put anything there: hand the
        // guest no more than it could have stored itself.
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(kv::Error::Invalid(format!(
                "the value at this key is over {MAX_VALUE_BYTES} bytes (not written through key-value)"
            )));
        }
        Ok(value)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::Error> {
        check_key(&key)?;
        let ttl = check_value(&value, ttl_ms)?;
        let (store, module) = self.kv_access("set")?;
        self.charge(key.len() + value.len());
        store
            .set(&module, &key, &value, ttl, false)
            .await
            .map(|_| ())
            .map_err(to_wit)
    }

    async fn set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, kv::Error> {
        check_key(&key)?;
        let ttl = check_value(&value, ttl_ms)?;
        let (store, module) = self.kv_access("set-if-absent")?;
        self.charge(key.len() + value.len());
        store
            .set(&module, &key, &value, ttl, true)
            .await
            .map_err(to_wit)
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::Error> {
        check_key(&key)?;
        let (store, module) = self.kv_access("delete")?;
        self.charge(key.len());
        store.delete(&module, &key).await.map_err(to_wit)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv::Error> {
        check_key(&key)?;
        let (store, module) = self.kv_access("increment")?;
        self.charge(key.len());
        store.increment(&module, &key, delta).await.map_err(to_wit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_ttls_are_bounded() {
        assert!(check_key("idem:42").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(matches!(check_value(b"v", None), Ok(None)));
        assert!(matches!(
            check_value(b"v", Some(1500)),
            Ok(Some(d)) if d == Duration::from_millis(1500)
        ));
        assert!(check_value(b"v", Some(0)).is_err());
        assert!(check_value(b"v", Some(MAX_TTL.as_millis() as u64 + 1)).is_err());
        let e = check_value(&vec![0; MAX_VALUE_BYTES + 1], None).unwrap_err();
        assert!(matches!(e, kv::Error::Invalid(m) if m.contains("keep a reference")));
    }
}
