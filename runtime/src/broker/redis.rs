//! The Redis broker: a stream + consumer group per queue (at-least-once,
//! acks late), a sorted set per queue for delayed messages, a stream per
//! queue for dead letters, plain keys with expiry for results and pub/sub
//! to wake whoever waits on one.
//!
//! Keys (prefix `celeriac:` by default; `{q}` is a hash tag so a Redis
//! Cluster keeps each queue's keys in one slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `queue:{q}` | stream, group `workers` | ready and held messages (`m` field) |
//! | `delayed:{q}` | zset | messages by due time (Unix ms) |
//! | `dlq:{q}` | stream | dead letters: `m`, `reason`, `at` |
//! | `queues` | set | queue names |
//! | `result:<id>` | string, EX | result record JSON; also a pub/sub channel |
//! | `component:<digest>` | hash | `bytes`, `uploaded_at`, `sig` (the first signature, for older workers) |
//! | `component-sigs:<digest>` | hash | `<key_id>:<module>` -> signature JSON |
//! | `module:<name>` | string | current [`ModuleInfo`] JSON |
//! | `module-history:<name>` | list | digests the name pointed at, newest first |
//! | `modules` | set | module names |
//! | `worker:<id>` | string, EX | heartbeat JSON |
//! | `workers` | set | worker ids |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Pipeline, RedisError, Script, Value};
use tokio::sync::Mutex;

use super::results_pubsub::ResultChannels;
use super::{
    Broker, BrokerError, BrokerResult, Completion, DeadLetter, Delivery, Disposition, ModuleInfo,
    Outgoing, QueueStats, Reclaimed, ResultWrite, WorkerInfo, redact, signature_slot,
};
use crate::results::{now_ms, state_of};
use crate::signing::Digest;

const GROUP: &str = "workers";
/// Dead letters kept per queue (approximate trim, as Redis' `MAXLEN ~`).
const DLQ_CAP: u64 = 100_000;
/// Delayed messages moved per script call, bounding the time Redis is busy.
const PROMOTE_BATCH: u64 = 1_000;
/// How long a producer trusts the module → digest it last read. Resolving
/// on every submit was one of its two round trips (bench/compare,
/// latency); a digest at most this old pins the same code as a submit made
/// that much earlier. This process's own uploads are seen at once.
const MODULE_TTL: Duration = Duration::from_secs(1);

/// Moves due messages from `delayed:{q}` to `queue:{q}` atomically, so two
/// workers never move the same message twice.
const PROMOTE_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', m)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
"#;

pub struct RedisBroker {
    client: Client,
    /// Multiplexed connection for everything that does not block.
    conn: ConnectionManager,
    /// A second connection for blocking reads, which would otherwise stall
    /// every command queued behind them.
    blocking: Mutex<ConnectionManager>,
    /// Opened on the first wait for a result, replaced if it drops.
    results: Mutex<Option<Arc<ResultChannels>>>,
    /// Recently resolved modules (see [`MODULE_TTL`]).
    modules: std::sync::Mutex<HashMap<String, (Instant, ModuleInfo)>>,
    prefix: String,
    url: String,
    promote: Script,
}

impl RedisBroker {
    /// Connect to `url` (`redis://`, `rediss://`, with user and password in
    /// the URL when needed). Fails fast when Redis does not answer; once
    /// connected, dropped connections are re-established with backoff.
    pub async fn connect(url: &str, prefix: &str) -> BrokerResult<Self> {
        // rustls needs a process-wide crypto provider for rediss://. A second
        // install attempt fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url_err = |e: RedisError| BrokerError::Url {
            url: redact(url),
            reason: e.to_string(),
        };
        // A Redis behind a private CA: trust that CA (PEM file) instead of
        // the system roots.
        let client = match std::env::var_os("CELERIAC_REDIS_CA") {
            Some(ca) if url.starts_with("rediss://") => {
                let pem = std::fs::read(&ca).map_err(|e| BrokerError::Url {
                    url: redact(url),
                    reason: format!(
                        "CELERIAC_REDIS_CA {}: {e}",
                        std::path::Path::new(&ca).display()
                    ),
                })?;
                Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(url_err)?
            }
            _ => Client::open(url).map_err(url_err)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(5));
        let conn = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let blocking = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            client,
            conn,
            blocking: Mutex::new(blocking),
            results: Mutex::new(None),
            modules: Default::default(),
            prefix: prefix.to_string(),
            url: redact(url),
            promote: Script::new(PROMOTE_LUA),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn stream(&self, queue: &str) -> String {
        format!("{}queue:{{{queue}}}", self.prefix)
    }

    fn delayed(&self, queue: &str) -> String {
        format!("{}delayed:{{{queue}}}", self.prefix)
    }

    fn dlq(&self, queue: &str) -> String {
        format!("{}dlq:{{{queue}}}", self.prefix)
    }

    fn result_key(&self, id: &str) -> String {
        format!("{}result:{id}", self.prefix)
    }

    async fn result_channels(&self) -> BrokerResult<Arc<ResultChannels>> {
        let mut current = self.results.lock().await;
        match current.as_ref() {
            Some(c) if c.is_alive() => Ok(c.clone()),
            _ => {
                let c = ResultChannels::connect(&self.client).await?;
                *current = Some(c.clone());
                Ok(c)
            }
        }
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ModuleInfo)>> {
        // A plain cache: nothing a panic could leave half-updated.
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn create_group(&self, queue: &str) -> BrokerResult<()> {
        // From id 0, not `$`: messages submitted before any worker existed
        // must still be delivered.
        let r: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream(queue))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn add_disposal(&self, pipe: &mut Pipeline, c: &Completion) {
        let stream = self.stream(&c.queue);
        match &c.disposition {
            Disposition::Ack => {}
            Disposition::Retry { payload, due_ms } => {
                pipe.zadd(self.delayed(&c.queue), payload, *due_ms).ignore();
            }
            Disposition::DeadLetter { reason, payload } => {
                pipe.cmd("XADD")
                    .arg(self.dlq(&c.queue))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(DLQ_CAP)
                    .arg("*")
                    .arg("m")
                    .arg(payload)
                    .arg("reason")
                    .arg(reason)
                    .arg("at")
                    .arg(now_ms())
                    .ignore();
            }
            Disposition::Requeue { payload } => {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("m")
                    .arg(payload)
                    .ignore();
            }
        }
        // Acknowledge and delete together: the stream holds only what is
        // still to be done, so its length is the queue depth.
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&c.delivery_id)
            .ignore();
        pipe.cmd("XDEL").arg(&stream).arg(&c.delivery_id).ignore();
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn put_component(
        &self,
        digest: &Digest,
        bytes: &[u8],
        key_id: &str,
        module: &str,
        signature: &str,
    ) -> BrokerResult<bool> {
        let key = self.key(&format!("component:{digest}"));
        // One MULTI: the bytes never appear without a signature.
        let (new,): (bool,) = redis::pipe()
            .atomic()
            .hset_nx(&key, "bytes", bytes)
            .hset_nx(&key, "uploaded_at", now_ms())
            .ignore()
            // Workers of earlier releases read only this field.
            .hset_nx(&key, "sig", signature)
            .ignore()
            .hset(
                self.key(&format!("component-sigs:{digest}")),
                signature_slot(key_id, module),
                signature,
            )
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(new)
    }

    async fn get_component_signatures(&self, digest: &Digest) -> BrokerResult<Option<Vec<String>>> {
        // A separate key, so that checking signatures never touches (or
        // transfers) the bytes.
        let sigs: Vec<String> = self
            .conn()
            .hvals(self.key(&format!("component-sigs:{digest}")))
            .await?;
        if !sigs.is_empty() {
            return Ok(Some(sigs));
        }
        // Stored by an earlier release: one signature, beside the bytes.
        let legacy: Option<String> = self
            .conn()
            .hget(self.key(&format!("component:{digest}")), "sig")
            .await?;
        Ok(legacy.map(|s| vec![s]))
    }

    async fn get_component_bytes(&self, digest: &Digest) -> BrokerResult<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .hget(self.key(&format!("component:{digest}")), "bytes")
            .await?)
    }

    async fn set_module(&self, info: &ModuleInfo) -> BrokerResult<()> {
        let json = serde_json::to_string(info).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
        let history = self.key(&format!("module-history:{}", info.module));
        let _: () = redis::pipe()
            .atomic()
            .set(self.key(&format!("module:{}", info.module)), json)
            .ignore()
            .sadd(self.key("modules"), &info.module)
            .ignore()
            .lpush(&history, info.digest.to_string())
            .ignore()
            .ltrim(&history, 0, 99)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        self.lock_modules()
            .insert(info.module.clone(), (Instant::now(), info.clone()));
        Ok(())
    }

    async fn get_module(&self, module: &str) -> BrokerResult<Option<ModuleInfo>> {
        if let Some((at, info)) = self.lock_modules().get(module)
            && at.elapsed() < MODULE_TTL
        {
            return Ok(Some(info.clone()));
        }
        let json: Option<String> = self
            .conn()
            .get(self.key(&format!("module:{module}")))
            .await?;
        let info: Option<ModuleInfo> = json
            .map(|j| {
                serde_json::from_str(&j)
                    .map_err(|e| BrokerError::Corrupt(format!("module {module}: {e}")))
            })
            .transpose()?;
        let mut cache = self.lock_modules();
        match &info {
            Some(i) => cache.insert(module.to_string(), (Instant::now(), i.clone())),
            None => cache.remove(module),
        };
        Ok(info)
    }

    async fn list_modules(&self) -> BrokerResult<Vec<ModuleInfo>> {
        let mut names: Vec<String> = self.conn().smembers(self.key("modules")).await?;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(info) = self.get_module(&name).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn enqueue(&self, messages: &[Outgoing]) -> BrokerResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        let mut queues: Vec<&str> = Vec::new();
        for m in messages {
            match m.due_ms.filter(|due| *due > now) {
                // Delayed work waits in Redis, not in a worker's memory.
                Some(due) => {
                    pipe.zadd(self.delayed(&m.queue), &m.payload, due).ignore();
                }
                None => {
                    pipe.cmd("XADD")
                        .arg(self.stream(&m.queue))
                        .arg("*")
                        .arg("m")
                        .arg(&m.payload)
                        .ignore();
                }
            }
            if !queues.contains(&m.queue.as_str()) {
                queues.push(&m.queue);
            }
        }
        pipe.sadd(self.key("queues"), queues).ignore();
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn declare(&self, queues: &[String]) -> BrokerResult<()> {
        for q in queues {
            self.create_group(q).await?;
        }
        let _: () = self.conn().sadd(self.key("queues"), queues).await?;
        Ok(())
    }

    async fn fetch(
        &self,
        queues: &[String],
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> BrokerResult<Vec<Delivery>> {
        let keys: Vec<String> = queues.iter().map(|q| self.stream(q)).collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&keys);
        for _ in &keys {
            cmd.arg(">");
        }
        let reply: Result<Value, RedisError> = {
            let mut conn = self.blocking.lock().await;
            cmd.query_async(&mut *conn).await
        };
        let reply = match reply {
            Ok(v) => v,
            // The group vanished: Redis restarted without persistence, or
            // the stream was deleted. Recreate it and read on.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.declare(queues).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for (key, entries) in stream_entries(reply) {
            let queue = queues
                .iter()
                .zip(&keys)
                .find(|(_, k)| **k == key)
                .map(|(q, _)| q.clone())
                .unwrap_or_default();
            for (id, payload) in entries {
                out.push(Delivery {
                    queue: queue.clone(),
                    id,
                    payload: payload.unwrap_or_default(),
                    deliveries: 1,
                });
            }
        }
        Ok(out)
    }

    async fn promote_due(&self, queues: &[String], now: u64) -> BrokerResult<usize> {
        let mut moved = 0;
        let mut conn = self.conn();
        for q in queues {
            let n: usize = self
                .promote
                .key(self.delayed(q))
                .key(self.stream(q))
                .arg(now)
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            moved += n;
        }
        Ok(moved)
    }

    async fn renew(&self, consumer: &str, held: &[(String, String)]) -> BrokerResult<()> {
        if held.is_empty() {
            return Ok(());
        }
        // XCLAIM with min-idle 0 and JUSTID resets the idle time without
        // counting a delivery: the lease is renewed.
        let mut pipe = redis::pipe();
        for (queue, id) in held {
            pipe.cmd("XCLAIM")
                .arg(self.stream(queue))
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(id)
                .arg("JUSTID")
                .ignore();
        }
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn reclaim(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> BrokerResult<Reclaimed> {
        let stream = self.stream(queue);
        let idle = min_idle.as_millis() as u64;
        let pending: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(max.max(1))
            .query_async(&mut self.conn())
            .await;
        let pending = match pending {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Reclaimed::default()),
            Err(e) => return Err(e.into()),
        };
        // [id, consumer, idle ms, times delivered]
        let mut counts = Vec::new();
        if let Value::Array(rows) = pending {
            for row in rows {
                if let Value::Array(f) = row
                    && let (Some(id), Some(n)) =
                        (f.first().and_then(as_string), f.get(3).and_then(as_u64))
                {
                    counts.push((id, n));
                }
            }
        }
        if counts.is_empty() {
            return Ok(Reclaimed::default());
        }
        // The same min-idle on the claim: a holder that renewed in the
        // meantime keeps its message.
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(idle)
            .arg(counts.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
            .query_async(&mut self.conn())
            .await?;
        let mut out = Reclaimed::default();
        let mut ghosts = Vec::new();
        for (id, payload) in entries_of(claimed) {
            let previous = counts.iter().find(|(i, _)| *i == id).map_or(0, |(_, n)| *n);
            match payload {
                Some(payload) => out.deliveries.push(Delivery {
                    queue: queue.to_string(),
                    id,
                    payload,
                    deliveries: previous + 1,
                }),
                None => ghosts.push(id),
            }
        }
        if !ghosts.is_empty() {
            // Entries deleted while pending: nothing to run, just clear them.
            let _: () = redis::cmd("XACK")
                .arg(&stream)
                .arg(GROUP)
                .arg(ghosts)
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(out)
    }

    async fn complete(&self, batch: &[Completion]) -> BrokerResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // One MULTI/EXEC: results are written and messages disposed of
        // together, so no crash can ack a task whose result was not stored
        // or lose a retry between ack and reschedule.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in batch {
            if let Some(r) = &c.result {
                let key = self.result_key(&r.task_id);
                pipe.set_ex(&key, &r.json, r.ttl.as_secs().max(1)).ignore();
                pipe.publish(&key, &r.json).ignore();
            }
            self.add_disposal(&mut pipe, c);
        }
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn set_result(&self, write: &ResultWrite) -> BrokerResult<()> {
        let key = self.result_key(&write.task_id);
        let _: () = redis::pipe()
            .set_ex(&key, &write.json, write.ttl.as_secs().max(1))
            .ignore()
            .publish(&key, &write.json)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn get_result(&self, task_id: &str) -> BrokerResult<Option<String>> {
        Ok(self.conn().get(self.result_key(task_id)).await?)
    }

    async fn wait_result(&self, task_id: &str, timeout: Duration) -> BrokerResult<Option<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let key = self.result_key(task_id);
        let mut latest = None;
        // Subscribe first, then read: a result written in between is seen
        // by one or the other.
        while tokio::time::Instant::now() < deadline {
            let subscribed = tokio::time::timeout_at(deadline, async {
                self.result_channels()
                    .await?
                    .subscribe(&key)
                    .await
                    .map_err(BrokerError::from)
            });
            let mut sub = match subscribed.await {
                Ok(s) => s?,
                Err(_) => break,
            };
            let current: Option<String> = self.conn().get(&key).await?;
            if let Some(json) = current {
                if state_of(&json).is_some_and(|s| s.is_final()) {
                    return Ok(Some(json));
                }
                latest = Some(json);
            }
            loop {
                match tokio::time::timeout_at(deadline, sub.rx.recv()).await {
                    Ok(Some(json)) => {
                        let done = state_of(&json).is_some_and(|s| s.is_final());
                        latest = Some(json);
                        if done {
                            return Ok(latest);
                        }
                    }
                    // Connection lost: subscribe again on a new one.
                    Ok(None) => break,
                    Err(_) => return Ok(self.get_result(task_id).await?.or(latest)),
                }
            }
        }
        Ok(self.get_result(task_id).await?.or(latest))
    }

    async fn dlq_list(&self, queue: &str, limit: usize) -> BrokerResult<Vec<DeadLetter>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dlq(queue))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut self.conn())
            .await?;
        let mut out = Vec::new();
        for (id, fields) in entries_with_fields(reply) {
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
            out.push(DeadLetter {
                id,
                queue: queue.to_string(),
                reason: get("reason").unwrap_or_default(),
                payload: get("m").unwrap_or_default(),
                at: get("at").and_then(|a| a.parse().ok()).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn dlq_requeue(&self, queue: &str, id: &str) -> BrokerResult<bool> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dlq(queue))
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        let Some((_, fields)) = entries_with_fields(reply).into_iter().next() else {
            return Ok(false);
        };
        let payload = fields
            .into_iter()
            .find(|(f, _)| f == "m")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        // The old FAILURE record would answer anyone waiting on the rerun.
        if let Some(task_id) = super::message::salvage_id(&payload) {
            pipe.del(self.result_key(&task_id)).ignore();
        }
        let _: () = pipe
            .atomic()
            .cmd("XADD")
            .arg(self.stream(queue))
            .arg("*")
            .arg("m")
            .arg(super::reset_retries(&payload))
            .ignore()
            .cmd("XDEL")
            .arg(self.dlq(queue))
            .arg(id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(true)
    }

    async fn dlq_purge(&self, queue: &str) -> BrokerResult<u64> {
        let key = self.dlq(queue);
        let (n, _): (u64, ()) = redis::pipe()
            .atomic()
            .xlen(&key)
            .del(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(n)
    }

    async fn queues(&self) -> BrokerResult<Vec<String>> {
        let mut q: Vec<String> = self.conn().smembers(self.key("queues")).await?;
        q.sort();
        Ok(q)
    }

    async fn queue_stats(&self, queue: &str) -> BrokerResult<QueueStats> {
        let stream = self.stream(queue);
        let (len, delayed, dead): (u64, u64, u64) = redis::pipe()
            .xlen(&stream)
            .zcard(self.delayed(queue))
            .xlen(self.dlq(queue))
            .query_async(&mut self.conn())
            .await?;
        let pending: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .query_async(&mut self.conn())
            .await;
        let in_flight = match pending {
            Ok(Value::Array(v)) => v.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        Ok(QueueStats {
            queue: queue.to_string(),
            ready: len.saturating_sub(in_flight),
            delayed,
            in_flight,
            dead,
        })
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        let json =
            serde_json::to_string(worker).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
        let _: () = redis::pipe()
            .set_ex(
                self.key(&format!("worker:{}", worker.id)),
                json,
                ttl.as_secs().max(1),
            )
            .ignore()
            .sadd(self.key("workers"), &worker.id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn forget_worker(&self, worker_id: &str) -> BrokerResult<()> {
        let _: () = redis::pipe()
            .del(self.key(&format!("worker:{worker_id}")))
            .ignore()
            .srem(self.key("workers"), worker_id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        let ids: Vec<String> = self.conn().smembers(self.key("workers")).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("worker:{id}")))
            .collect();
        let beats: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, beat) in ids.iter().zip(beats) {
            match beat.and_then(|b| serde_json::from_str::<WorkerInfo>(&b).ok()) {
                Some(w) => out.push(w),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            // Heartbeats expired: those workers are gone.
            let _: () = self.conn().srem(self.key("workers"), gone).await?;
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        // Lossy: a payload that is not UTF-8 must still reach the worker
        // (and be dead-lettered as malformed), not vanish.
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// As [`as_string`], taking the bytes rather than copying them: message
/// payloads are up to megabytes, and the lossy path's byte-by-byte scan
/// was the worker's top symbol with 64 KiB payloads (bench/compare).
fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        other => as_string(&other),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

/// Stream entries as (id, field/value pairs); `None` fields for entries
/// that were deleted.
fn entries_with_fields(v: Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next().as_ref().and_then(as_string) else {
            continue;
        };
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = parts.next() {
            let mut kv = kv.into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(k), Some(v)) = (as_string(&k), into_string(v)) {
                    fields.push((k, v));
                }
            }
        }
        out.push((id, fields));
    }
    out
}

/// A stream entry's id and its `m` payload, if the entry still exists.
type Entry = (String, Option<String>);

/// Stream entries as (id, the `m` payload if the entry still exists).
fn entries_of(v: Value) -> Vec<Entry> {
    entries_with_fields(v)
        .into_iter()
        .map(|(id, fields)| {
            let payload = fields.into_iter().find(|(k, _)| k == "m").map(|(_, v)| v);
            (id, payload)
        })
        .collect()
}

/// XREADGROUP reply: per stream key, its entries. RESP2 gives an array of
/// [key, entries]; RESP3 a map.
fn stream_entries(v: Value) -> Vec<(String, Vec<Entry>)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    let key = kv.pop()?;
                    Some((key, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(kv) => kv,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, entries)| Some((as_string(&k)?, entries_of(entries))))
        .collect()
}
