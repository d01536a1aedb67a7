//! In-process broker (`memory://`): the same semantics as Redis for one
//! process, with nothing to install. Used by `celeriac demo` and embedders.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    BeatFire, Broker, BrokerError, BrokerResult, Claim, Completed, Completion, DeadLetter,
    Delivery, Disposition, Effects, FetchLimits, GroupState, ModuleInfo, OVERSIZE_PREFIX, Outgoing,
    Pending, QueueStats, ResultWrite, Revocation, RevokeWatch, StoredComponent, WorkerInfo,
    signature_slot,
};
use celeriac_protocol::Digest;
use celeriac_protocol::event::position;
use celeriac_protocol::message::{levels, split_level};
use celeriac_protocol::{now_ms, record::state_of};

/// Dead letters kept per queue, oldest dropped first (as Redis' MAXLEN).
const DLQ_CAP: usize = 100_000;

#[derive(Default)]
pub struct MemoryBroker {
    state: Mutex<State>,
    /// Signalled when messages become ready.
    ready: Notify,
    /// Signalled when a result is written.
    results: Notify,
}

#[derive(Default)]
struct State {
    components: HashMap<Digest, StoredComponent>,
    modules: BTreeMap<String, ModuleInfo>,
    queues: BTreeMap<String, Queue>,
    results: HashMap<String, (String, Instant)>,
    workers: HashMap<String, (WorkerInfo, Instant)>,
    /// Key-value state by (module, key): the value and when it expires.
    kv: HashMap<(String, String), (Vec<u8>, Option<Instant>)>,
    groups: HashMap<String, Group>,
    workflows: HashMap<String, (String, Instant)>,
    /// Unique-submission keys: the holding task and when the hold ends.
    unique: HashMap<String, (String, Instant)>,
    /// Rate limits: when each task's next call may start; reserved starts
    /// by task id.
    rate_next: HashMap<String, Instant>,
    rate_slots: HashMap<String, Instant>,
    revoked: HashMap<String, Instant>,
    /// Beat: the lease (`holder:token`, until), the last token, and each
    /// entry's last run fired.
    beat_lease: Option<(String, Instant)>,
    beat_epoch: u64,
    beat_last: HashMap<String, u64>,
    revoke_watchers: Vec<tokio::sync::mpsc::UnboundedSender<String>>,
    seq: u64,
    /// Events by id (`<ms>-<seq>`, as a Redis stream's), the oldest dropped
    /// past `events_kept`; `None` when events are off.
    events: Option<VecDeque<(String, String)>>,
    events_kept: usize,
    event_seq: u64,
}

struct Group {
    size: u32,
    results: Vec<Option<String>>,
    failed: Option<String>,
    queue: String,
    join: String,
    expires: Instant,
}

impl State {
    /// The live value at (module, key), dropping it if it has expired.
    fn kv_live(&mut self, module: &str, key: &str) -> Option<&mut (Vec<u8>, Option<Instant>)> {
        let k = (module.to_string(), key.to_string());
        if self
            .kv
            .get(&k)
            .is_some_and(|(_, exp)| exp.is_some_and(|t| t <= Instant::now()))
        {
            self.kv.remove(&k);
        }
        self.kv.get_mut(&k)
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<(String, String, u64)>,
    held: HashMap<String, Held>,
    delayed: BTreeMap<(u64, u64), String>,
    dead: VecDeque<DeadLetter>,
    /// Consumers by name, with when each was last handed a message (as a
    /// Redis consumer group's members, for `prune_consumers`).
    consumers: HashMap<String, Instant>,
}

struct Held {
    consumer: String,
    /// The whole message, even when the consumer was handed a prefix: a
    /// consumer that takes it over may read more of it.
    payload: Arc<str>,
    deliveries: u64,
    renewed: Instant,
}

/// A delivery of `payload`, cut to a prefix when over `max` bytes (see
/// [`Delivery::is_oversize`]), sharing it otherwise.
fn deliver(queue: &str, id: &str, payload: &Arc<str>, deliveries: u64, max: usize) -> Delivery {
    if payload.len() <= max {
        return Delivery {
            queue: queue.to_string(),
            id: id.to_string(),
            payload: payload.clone(),
            size: payload.len(),
            deliveries,
        };
    }
    Delivery::bounded(queue, id.to_string(), payload.to_string(), deliveries, max)
}

/// `queues` (priority levels) in the order the Redis broker serves them:
/// by `level × aging + age of the oldest ready message`, so no level
/// starves (ids begin with the Unix ms they were made at).
fn by_rank<'a>(s: &mut State, queues: &'a [String]) -> Vec<&'a String> {
    let aging = crate::BrokerOptions::default().priority_aging.as_millis() as u64;
    let now = now_ms();
    let mut ranked: Vec<(u64, usize, &String)> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let born = s
                .existing(q)
                .and_then(|q| q.ready.front())
                .and_then(|(id, _, _)| id.split('-').next()?.parse::<u64>().ok())
                .unwrap_or(now);
            let level = u64::from(split_level(q).1);
            (level * aging + now.saturating_sub(born), i, q)
        })
        .collect();
    // Highest rank first; ties keep the given order.
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, q)| q).collect()
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default().with_events(true, crate::DEFAULT_EVENTS_KEPT)
    }

    /// Record events (or not), keeping the latest `kept`.
    pub fn with_events(self, on: bool, kept: usize) -> Self {
        {
            let mut st = self.lock();
            st.events = on.then(Default::default);
            st.events_kept = kept.max(1);
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn push_events(&mut self, events: &[String]) {
        let Some(log) = self.events.as_mut() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        // One entry for them all, as the Redis broker stores them.
        self.event_seq += 1;
        let id = format!("{}-{}", now_ms(), self.event_seq);
        log.push_back((id, celeriac_protocol::event::batch(events)));
        while log.len() > self.events_kept {
            log.pop_front();
        }
    }

    /// Events after `after` (by position: ids grow), at most `max`.
    fn events_after(&self, after: &str, max: usize) -> Vec<(String, String)> {
        let Some(log) = &self.events else {
            return Vec::new();
        };
        let after = position(after);
        log.iter()
            .filter(|(id, _)| position(id) > after)
            .take(max)
            .cloned()
            .collect()
    }

    /// As the Redis broker's `EFFECTS_LUA`; true if messages were added.
    fn apply(&mut self, e: &Effects) -> bool {
        let now = Instant::now();
        self.push_events(&e.events);
        for r in &e.records {
            self.results
                .insert(r.task_id.clone(), (r.json.clone(), now + r.ttl));
        }
        self.groups.retain(|_, g| g.expires > now);
        for g in &e.groups {
            self.groups.entry(g.id.clone()).or_insert_with(|| Group {
                size: g.size,
                results: vec![None; g.size as usize],
                failed: None,
                queue: g.queue.clone(),
                join: g.join.clone(),
                expires: now + Duration::from_secs(g.ttl),
            });
        }
        let mut added = !e.launch.is_empty();
        for l in &e.launch {
            self.put(&l.message);
        }
        if let Some(r) = &e.report {
            let fire = self.groups.get_mut(&r.group).and_then(|g| {
                let fire = match &r.outcome {
                    Ok(v) => {
                        let slot = g.results.get_mut(r.index as usize)?;
                        if slot.is_some() {
                            return None;
                        }
                        *slot = Some(v.clone());
                        g.failed.is_none() && g.results.iter().all(Option::is_some)
                    }
                    Err(f) => {
                        g.failed.is_none() && {
                            g.failed = Some(f.clone());
                            true
                        }
                    }
                };
                fire.then(|| (g.queue.clone(), g.join.clone()))
            });
            if let Some((queue, join)) = fire {
                self.push_ready(&queue, join, 0);
                added = true;
            }
        }
        if let Some((key, id)) = &e.release
            && self.unique.get(key).is_some_and(|(holder, _)| holder == id)
        {
            self.unique.remove(key);
        }
        added
    }

    fn put(&mut self, m: &Outgoing) {
        match m.due_ms.filter(|due| *due > now_ms()) {
            Some(due) => {
                self.seq += 1;
                let seq = self.seq;
                self.queue(&m.queue)
                    .delayed
                    .insert((due, seq), m.payload.clone());
            }
            None => self.push_ready(&m.queue, m.payload.clone(), 0),
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", now_ms(), self.seq)
    }

    /// The queue `name`, created if new: only for what makes a queue
    /// exist (enqueueing, declaring, fetching), as Redis lists it.
    fn queue(&mut self, name: &str) -> &mut Queue {
        self.queues.entry(name.to_string()).or_default()
    }

    /// The queue `name` if it exists; looking at one does not create it.
    fn existing(&mut self, name: &str) -> Option<&mut Queue> {
        self.queues.get_mut(name)
    }

    fn push_ready(&mut self, queue: &str, payload: String, deliveries: u64) {
        let id = self.next_id();
        self.queue(queue).ready.push_back((id, payload, deliveries));
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn describe(&self) -> String {
        "memory://".into()
    }

    async fn put_component(
        &self,
        digest: &Digest,
        bytes: &[u8],
        key_id: &str,
        module: &str,
        signature: &str,
    ) -> BrokerResult<bool> {
        let mut s = self.lock();
        let new = !s.components.contains_key(digest);
        let stored = s
            .components
            .entry(*digest)
            .or_insert_with(|| StoredComponent {
                bytes: bytes.to_vec(),
                ..StoredComponent::default()
            });
        stored
            .signatures
            .insert(signature_slot(key_id, module), signature.to_string());
        Ok(new)
    }

    async fn get_component_signatures(&self, digest: &Digest) -> BrokerResult<Option<Vec<String>>> {
        Ok(self
            .lock()
            .components
            .get(digest)
            .map(|c| c.signatures.values().cloned().collect()))
    }

    async fn get_component_bytes(&self, digest: &Digest) -> BrokerResult<Option<Vec<u8>>> {
        Ok(self.lock().components.get(digest).map(|c| c.bytes.clone()))
    }

    async fn set_module(&self, info: &ModuleInfo) -> BrokerResult<()> {
        self.lock()
            .modules
            .insert(info.module.clone(), info.clone());
        Ok(())
    }

    async fn get_module(&self, module: &str) -> BrokerResult<Option<ModuleInfo>> {
        Ok(self.lock().modules.get(module).cloned())
    }

    async fn list_modules(&self) -> BrokerResult<Vec<ModuleInfo>> {
        Ok(self.lock().modules.values().cloned().collect())
    }

    async fn enqueue(&self, messages: &[Outgoing]) -> BrokerResult<()> {
        let mut s = self.lock();
        for m in messages {
            s.put(m);
        }
        drop(s);
        self.ready.notify_waiters();
        Ok(())
    }

    async fn declare(&self, queues: &[String]) -> BrokerResult<()> {
        let mut s = self.lock();
        for q in queues {
            s.queue(q);
        }
        Ok(())
    }

    async fn fetch(
        &self,
        queues: &[String],
        consumer: &str,
        limits: FetchLimits,
        block: Duration,
    ) -> BrokerResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Register interest before looking, so a notify in between is not lost.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let mut out: Vec<Delivery> = Vec::new();
                let mut bytes = 0;
                for q in by_rank(&mut s, queues) {
                    let queue = s.queue(q);
                    while out.len() < limits.max.max(1) {
                        let Some((_, payload, _)) = queue.ready.front() else {
                            break;
                        };
                        // An oversized message costs only the prefix handed out.
                        let cost = if payload.len() > limits.max_message_bytes {
                            OVERSIZE_PREFIX.min(payload.len())
                        } else {
                            payload.len()
                        };
                        if !out.is_empty() && bytes + cost > limits.max_bytes {
                            break;
                        }
                        bytes += cost;
                        let Some((id, payload, deliveries)) = queue.ready.pop_front() else {
                            break;
                        };
                        let payload: Arc<str> = payload.into();
                        let d = deliver(q, &id, &payload, deliveries + 1, limits.max_message_bytes);
                        queue.held.insert(
                            id,
                            Held {
                                consumer: consumer.to_string(),
                                payload,
                                deliveries: deliveries + 1,
                                renewed: Instant::now(),
                            },
                        );
                        queue.consumers.insert(consumer.to_string(), Instant::now());
                        out.push(d);
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn promote_due(&self, queues: &[String], now: u64) -> BrokerResult<usize> {
        let mut s = self.lock();
        let mut moved = 0;
        for q in queues {
            let Some(queue) = s.existing(q) else {
                continue;
            };
            let later = queue.delayed.split_off(&(now + 1, 0));
            let due = std::mem::replace(&mut queue.delayed, later);
            for (_, payload) in due {
                s.push_ready(q, payload, 0);
                moved += 1;
            }
        }
        drop(s);
        if moved > 0 {
            self.ready.notify_waiters();
        }
        Ok(moved)
    }

    async fn renew(
        &self,
        consumer: &str,
        held: &[(String, String)],
    ) -> BrokerResult<Vec<(String, String)>> {
        let mut s = self.lock();
        let mut lost = Vec::new();
        for (q, id) in held {
            match s.existing(q).and_then(|queue| queue.held.get_mut(id)) {
                Some(h) if h.consumer == consumer => h.renewed = Instant::now(),
                _ => lost.push((q.clone(), id.clone())),
            }
        }
        Ok(lost)
    }

    async fn pending(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> BrokerResult<Vec<Pending>> {
        let mut s = self.lock();
        let Some(queue) = s.existing(queue) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Pending> = queue
            .held
            .iter()
            .filter(|(_, h)| h.consumer != consumer && h.renewed.elapsed() >= min_idle)
            .map(|(id, h)| Pending {
                id: id.clone(),
                consumer: h.consumer.clone(),
                idle_ms: h.renewed.elapsed().as_millis() as u64,
                deliveries: h.deliveries,
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.idle_ms));
        out.truncate(max);
        Ok(out)
    }

    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        claims: &[Claim],
        max_message_bytes: usize,
    ) -> BrokerResult<Vec<Delivery>> {
        let mut s = self.lock();
        let Some(q) = s.existing(queue) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for c in claims {
            if let Some(h) = q.held.get_mut(&c.id)
                && h.renewed.elapsed().as_millis() as u64 >= c.min_idle_ms
            {
                h.consumer = consumer.to_string();
                h.renewed = Instant::now();
                h.deliveries += 1;
                out.push(deliver(
                    queue,
                    &c.id,
                    &h.payload,
                    h.deliveries,
                    max_message_bytes,
                ));
            }
        }
        if !out.is_empty() {
            q.consumers.insert(consumer.to_string(), Instant::now());
        }
        Ok(out)
    }

    async fn prune_consumers(
        &self,
        queue: &str,
        min_idle: Duration,
        consumer: Option<&str>,
    ) -> BrokerResult<u64> {
        let mut s = self.lock();
        let Some(q) = s.existing(queue) else {
            return Ok(0);
        };
        let holding: std::collections::HashSet<&str> =
            q.held.values().map(|h| h.consumer.as_str()).collect();
        let gone: Vec<String> = q
            .consumers
            .iter()
            .filter(|(name, seen)| {
                !holding.contains(name.as_str())
                    && (consumer == Some(name.as_str()) || seen.elapsed() >= min_idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            q.consumers.remove(name);
        }
        Ok(gone.len() as u64)
    }

    async fn ping(&self) -> BrokerResult<()> {
        Ok(())
    }

    async fn complete(
        &self,
        consumer: &str,
        batch: &[Completion],
    ) -> BrokerResult<Vec<Result<Completed, BrokerError>>> {
        let now = now_ms();
        let mut s = self.lock();
        let mut wrote_result = false;
        let mut requeued = false;
        let mut outcomes = Vec::with_capacity(batch.len());
        for c in batch {
            let holder = s
                .existing(&c.queue)
                .and_then(|q| q.held.get(&c.delivery_id))
                .map(|h| h.consumer == consumer);
            if holder == Some(false) {
                outcomes.push(Ok(Completed::TakenOver));
                continue;
            }
            if let Some(r) = &c.result {
                s.results
                    .insert(r.task_id.clone(), (r.json.clone(), Instant::now() + r.ttl));
                wrote_result = true;
            }
            if s.existing(&c.queue)
                .and_then(|q| q.held.remove(&c.delivery_id))
                .is_none()
            {
                outcomes.push(Ok(Completed::Gone));
                continue;
            }
            outcomes.push(Ok(Completed::Done));
            if !c.effects.is_empty() {
                requeued |= s.apply(&c.effects);
                wrote_result |= !c.effects.records.is_empty();
            }
            match &c.disposition {
                Disposition::Ack => {}
                Disposition::Retry { payload, due_ms } => {
                    s.seq += 1;
                    let seq = s.seq;
                    s.queue(&c.queue)
                        .delayed
                        .insert((*due_ms, seq), payload.clone());
                }
                Disposition::DeadLetter { reason, payload } => {
                    let id = s.next_id();
                    // One dead-letter list per queue, whatever the level.
                    let base = split_level(&c.queue).0;
                    let dead = &mut s.queue(base).dead;
                    dead.push_back(DeadLetter {
                        id,
                        queue: base.to_string(),
                        reason: reason.clone(),
                        payload: payload.clone().unwrap_or_else(|| c.payload.to_string()),
                        at: now,
                    });
                    if dead.len() > DLQ_CAP {
                        dead.pop_front();
                    }
                }
                Disposition::Requeue => {
                    // Back on the queue as a new message, as Redis adds a
                    // new stream entry: its delivery count starts over.
                    s.push_ready(&c.queue, c.payload.to_string(), 0);
                    requeued = true;
                }
            }
        }
        drop(s);
        if wrote_result {
            self.results.notify_waiters();
        }
        if requeued {
            self.ready.notify_waiters();
        }
        Ok(outcomes)
    }

    async fn set_result(&self, write: &ResultWrite) -> BrokerResult<()> {
        self.lock().results.insert(
            write.task_id.clone(),
            (write.json.clone(), Instant::now() + write.ttl),
        );
        self.results.notify_waiters();
        Ok(())
    }

    async fn get_result(&self, task_id: &str) -> BrokerResult<Option<String>> {
        let mut s = self.lock();
        match s.results.get(task_id) {
            Some((json, expires)) if *expires > Instant::now() => Ok(Some(json.clone())),
            Some(_) => {
                s.results.remove(task_id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn apply(&self, effects: &Effects) -> BrokerResult<()> {
        let added = self.lock().apply(effects);
        if added {
            self.ready.notify_waiters();
        }
        if !effects.records.is_empty() {
            self.results.notify_waiters();
        }
        Ok(())
    }

    async fn group(&self, id: &str) -> BrokerResult<Option<GroupState>> {
        let s = self.lock();
        Ok(s.groups
            .get(id)
            .filter(|g| g.expires > Instant::now())
            .map(|g| GroupState {
                size: g.size,
                results: g.results.clone(),
                failed: g.failed.clone(),
            }))
    }

    async fn put_workflow(&self, root_id: &str, json: &str, ttl: Duration) -> BrokerResult<()> {
        self.lock().workflows.insert(
            root_id.to_string(),
            (json.to_string(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn get_workflow(&self, root_id: &str) -> BrokerResult<Option<String>> {
        Ok(self
            .lock()
            .workflows
            .get(root_id)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(j, _)| j.clone()))
    }

    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<String>> {
        let mut s = self.lock();
        let now = Instant::now();
        match s.unique.get(key) {
            Some((holder, until)) if *until > now => Ok(Some(holder.clone())),
            _ => {
                s.unique
                    .insert(key.to_string(), (task_id.to_string(), now + ttl));
                Ok(None)
            }
        }
    }

    async fn beat_lease(&self, holder: &str, ttl: Duration) -> BrokerResult<Option<String>> {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some((token, until)) = &s.beat_lease
            && *until > now
        {
            if token.rsplit_once(':').map(|(h, _)| h) == Some(holder) {
                let token = token.clone();
                s.beat_lease = Some((token.clone(), now + ttl));
                return Ok(Some(token));
            }
            return Ok(None);
        }
        s.beat_epoch += 1;
        let token = format!("{holder}:{}", s.beat_epoch);
        s.beat_lease = Some((token.clone(), now + ttl));
        Ok(Some(token))
    }

    async fn beat_last(&self, entry: &str) -> BrokerResult<Option<u64>> {
        Ok(self.lock().beat_last.get(entry).copied())
    }

    async fn beat_start(&self, entry: &str, now: u64) -> BrokerResult<u64> {
        Ok(*self
            .lock()
            .beat_last
            .entry(entry.to_string())
            .or_insert(now))
    }

    async fn beat_fire(
        &self,
        token: &str,
        entry: &str,
        slot: u64,
        message: Option<&Outgoing>,
    ) -> BrokerResult<BeatFire> {
        let mut s = self.lock();
        let held = s
            .beat_lease
            .as_ref()
            .is_some_and(|(t, until)| t == token && *until > Instant::now());
        if !held {
            return Ok(BeatFire::Fenced);
        }
        if s.beat_last.get(entry).is_some_and(|last| *last >= slot) {
            return Ok(BeatFire::AlreadyFired);
        }
        s.beat_last.insert(entry.to_string(), slot);
        if let Some(m) = message {
            s.put(m);
        }
        drop(s);
        self.ready.notify_waiters();
        Ok(BeatFire::Fired)
    }

    async fn revoke(&self, ids: &[String], ttl: Duration, terminate: bool) -> BrokerResult<()> {
        let mut s = self.lock();
        let until = Instant::now() + ttl;
        for id in ids {
            s.revoked.insert(id.clone(), until);
        }
        let note = serde_json::to_string(&Revocation {
            ids: ids.to_vec(),
            terminate,
        })
        .unwrap_or_default();
        s.revoke_watchers.retain(|tx| tx.send(note.clone()).is_ok());
        Ok(())
    }

    async fn revoked(&self) -> BrokerResult<Vec<String>> {
        let mut s = self.lock();
        let now = Instant::now();
        s.revoked.retain(|_, until| *until > now);
        Ok(s.revoked.keys().cloned().collect())
    }

    async fn watch_revokes(&self) -> BrokerResult<RevokeWatch> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().revoke_watchers.push(tx);
        Ok(RevokeWatch::new(rx, Box::new(())))
    }

    async fn rate_acquire(
        &self,
        task: &str,
        task_id: &str,
        every: Duration,
    ) -> BrokerResult<Duration> {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(at) = s.rate_slots.get(task_id).copied() {
            if at <= now + Duration::from_millis(2) {
                s.rate_slots.remove(task_id);
                return Ok(Duration::ZERO);
            }
            return Ok(at - now);
        }
        let start = s.rate_next.get(task).copied().unwrap_or(now).max(now);
        s.rate_next.insert(task.to_string(), start + every);
        if start <= now {
            return Ok(Duration::ZERO);
        }
        s.rate_slots.insert(task_id.to_string(), start);
        Ok(start - now)
    }

    async fn kv_get(&self, module: &str, key: &str) -> BrokerResult<Option<Vec<u8>>> {
        Ok(self.lock().kv_live(module, key).map(|(v, _)| v.clone()))
    }

    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BrokerResult<bool> {
        let mut s = self.lock();
        if only_if_absent && s.kv_live(module, key).is_some() {
            return Ok(false);
        }
        let expires = ttl.map(|t| Instant::now() + t);
        s.kv.insert(
            (module.to_string(), key.to_string()),
            (value.to_vec(), expires),
        );
        Ok(true)
    }

    async fn kv_delete(&self, module: &str, key: &str) -> BrokerResult<bool> {
        let mut s = self.lock();
        let live = s.kv_live(module, key).is_some();
        s.kv.remove(&(module.to_string(), key.to_string()));
        Ok(live)
    }

    async fn kv_increment(&self, module: &str, key: &str, delta: i64) -> BrokerResult<Option<i64>> {
        let mut s = self.lock();
        // As Redis INCRBY: a missing key counts as 0 and keeps no expiry;
        // an existing one keeps its expiry.
        let (current, expires) = match s.kv_live(module, key) {
            Some((v, exp)) => match std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
            {
                Some(n) => (n, *exp),
                None => return Ok(None),
            },
            None => (0, None),
        };
        let Some(next) = current.checked_add(delta) else {
            return Ok(None);
        };
        s.kv.insert(
            (module.to_string(), key.to_string()),
            (next.to_string().into_bytes(), expires),
        );
        Ok(Some(next))
    }

    async fn wait_result(&self, task_id: &str, timeout: Duration) -> BrokerResult<Option<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.results.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let latest = self.get_result(task_id).await?;
            if latest
                .as_deref()
                .and_then(state_of)
                .is_some_and(|s| s.is_final())
            {
                return Ok(latest);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get_result(task_id).await;
            }
        }
    }

    async fn dlq_list(&self, queue: &str, limit: usize) -> BrokerResult<Vec<DeadLetter>> {
        let mut s = self.lock();
        Ok(s.existing(queue)
            .map(|q| q.dead.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn dlq_requeue(&self, queue: &str, id: &str) -> BrokerResult<bool> {
        let mut s = self.lock();
        let Some(dead) = s.existing(queue).map(|q| &mut q.dead) else {
            return Ok(false);
        };
        let Some(pos) = dead.iter().position(|d| d.id == id) else {
            return Ok(false);
        };
        let letter = dead.remove(pos).map(|d| d.payload).unwrap_or_default();
        // The old FAILURE record would answer anyone waiting on the rerun.
        if let Some(task_id) = celeriac_protocol::message::salvage_id(&letter) {
            s.results.remove(&task_id);
        }
        s.push_ready(
            &super::requeue_level(queue, &letter),
            super::reset_retries(&letter),
            0,
        );
        drop(s);
        self.ready.notify_waiters();
        Ok(true)
    }

    async fn dlq_purge(&self, queue: &str) -> BrokerResult<u64> {
        let mut s = self.lock();
        let Some(q) = s.existing(queue) else {
            return Ok(0);
        };
        let n = q.dead.len() as u64;
        q.dead.clear();
        Ok(n)
    }

    fn events_enabled(&self) -> bool {
        self.lock().events.is_some()
    }

    async fn emit(&self, events: &[String]) -> BrokerResult<()> {
        self.lock().push_events(events);
        Ok(())
    }

    async fn read_events(
        &self,
        after: Option<&str>,
        max: usize,
        block: Duration,
    ) -> BrokerResult<Vec<(String, String)>> {
        let after = match after {
            Some(a) => a.to_string(),
            None => {
                let st = self.lock();
                let last = st.events.as_ref().and_then(|l| l.back());
                last.map_or_else(|| "0-0".to_string(), |(id, _)| id.clone())
            }
        };
        let until = Instant::now() + block;
        loop {
            let found = self.lock().events_after(&after, max.max(1));
            if !found.is_empty() || Instant::now() >= until {
                return Ok(found);
            }
            // In one process only (the embedded broker): a short poll is
            // as good as a wake-up.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn recent_events(&self, max: usize) -> BrokerResult<Vec<(String, String)>> {
        let st = self.lock();
        let Some(log) = &st.events else {
            return Ok(Vec::new());
        };
        Ok(log
            .iter()
            .skip(log.len().saturating_sub(max))
            .cloned()
            .collect())
    }

    async fn queues(&self) -> BrokerResult<Vec<String>> {
        // Levels (`q@9`) are part of their queue.
        let mut names: Vec<String> = self
            .lock()
            .queues
            .keys()
            .map(|q| split_level(q).0.to_string())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn queue_stats(&self, queue: &str) -> BrokerResult<QueueStats> {
        let mut s = self.lock();
        let base = split_level(queue).0;
        let mut stats = QueueStats {
            queue: base.to_string(),
            ..QueueStats::default()
        };
        for level in levels(base) {
            if let Some(q) = s.existing(&level) {
                stats.ready += q.ready.len() as u64;
                stats.delayed += q.delayed.len() as u64;
                stats.in_flight += q.held.len() as u64;
                stats.dead += q.dead.len() as u64;
            }
        }
        Ok(stats)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        self.lock()
            .workers
            .insert(worker.id.clone(), (worker.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn forget_worker(&self, worker_id: &str) -> BrokerResult<()> {
        self.lock().workers.remove(worker_id);
        Ok(())
    }

    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        let mut s = self.lock();
        let now = Instant::now();
        s.workers.retain(|_, (_, expires)| *expires > now);
        let mut out: Vec<WorkerInfo> = s.workers.values().map(|(w, _)| w.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
