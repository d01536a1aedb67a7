//! The sandbox's key-value capability served by the worker's broker: each
//! module's keys in its own namespace of the same Redis (or memory) the
//! queue uses, so every worker of a deployment sees the same state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_broker::Broker;
use celeriac_sandbox::{KeyValue, KvError};

/// Key-value for tasks, in `broker`.
pub fn key_value(broker: Arc<dyn Broker>) -> Arc<dyn KeyValue> {
    Arc::new(BrokerKv(broker))
}

struct BrokerKv(Arc<dyn Broker>);

fn unavailable(e: celeriac_broker::BrokerError) -> KvError {
    KvError::Unavailable(e.cause())
}

#[async_trait]
impl KeyValue for BrokerKv {
    async fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.0.kv_get(module, key).await.map_err(unavailable)
    }

    async fn set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<bool, KvError> {
        self.0
            .kv_set(module, key, value, ttl, only_if_absent)
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, module: &str, key: &str) -> Result<bool, KvError> {
        self.0.kv_delete(module, key).await.map_err(unavailable)
    }

    async fn increment(&self, module: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        self.0
            .kv_increment(module, key, delta)
            .await
            .map_err(unavailable)?
            .ok_or(KvError::NotAnInteger)
    }
}
