//! Where tests keep their data in Redis: the shared test Redis
//! ([`redis_url`]) and a key prefix of each test's own ([`Prefix`]), whose
//! keys are deleted (found by `SCAN`, never `KEYS`) when the test ends.
//! Tests never FLUSHALL a shared Redis.

use std::sync::Arc;

use celeriac_broker::Broker;

/// The Redis the tests use: `CELERIAC_TEST_REDIS`, else the local default.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A plain connection to the Redis at `url`, for looking under the broker
/// (or planting what an attacker would).
pub fn redis_connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("connect to the test Redis at {url}: {e}"))
}

/// Keys deleted per `DEL` when cleaning up, and asked for per `SCAN` step.
const CLEANUP_BATCH: usize = 1000;

/// A key prefix of this test's own on one Redis; its keys are deleted
/// when dropped.
pub struct Prefix {
    name: String,
    url: String,
}

impl Prefix {
    /// A fresh prefix on the shared test Redis.
    pub fn new() -> Self {
        Self::on(&redis_url())
    }

    /// A fresh prefix on the Redis at `url`.
    pub fn on(url: &str) -> Self {
        Prefix {
            name: format!(
                "ctest-{}:",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            url: url.to_string(),
        }
    }

    /// The prefix itself, e.g. `ctest-0123456789ab:`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A broker on this prefix.
    pub async fn broker(&self) -> Arc<dyn Broker> {
        celeriac_broker::connect(&self.url, &self.name)
            .await
            .unwrap_or_else(|e| panic!("connect a broker to {}: {e}", self.url))
    }
}

impl Drop for Prefix {
    /// Best effort: a Redis that is gone (a private one already stopped)
    /// has nothing left to clean.
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let pattern = format!("{}*", self.name);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(CLEANUP_BATCH)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}
