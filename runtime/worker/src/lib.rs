//! The worker: pulls messages, runs the component each one pins, writes
//! the result and only then acknowledges (acks late).
//!
//! Tasks inside one worker process:
//! - the fetch loop (in [`Worker::run`]) keeps messages in hand, paced by
//!   count ([`pacing`]) and by bytes, and spawns one future per message;
//!   `concurrency` of them run at a time, taken-over ones first ([`slots`]);
//! - each message goes admit (size, parse, validation, poison, expiry,
//!   eta) -> resolve component -> run -> settle ([`settle`], pure);
//! - the finisher writes results and acks in batches, telling failures
//!   Redis will repeat from those that pass ([`Worker::finisher`]);
//! - the lease keeper renews what this worker holds, and only that;
//! - the keeper promotes due delayed messages, takes over messages of dead
//!   workers ([`leases`]), prunes their consumers and sends heartbeats.

mod components;
mod leases;
mod metrics;
mod pacing;
mod settle;
mod slots;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use metrics::install_prometheus;

use celeriac_broker::{
    Broker, BrokerError, Completed, Completion, Delivery, Disposition, FetchLimits, ResultWrite,
    WorkerInfo,
};
use celeriac_protocol::message::{TaskMessage, bounds, salvage_id};
use celeriac_protocol::record::{ErrorInfo, RecordLimits, ResultRecord, TaskState};
use celeriac_protocol::text::{clip, prefix};
use celeriac_protocol::units::format_size;
use celeriac_protocol::{Backoff, now_ms};
use celeriac_sandbox::{Limits, Sandbox, TaskCall};
use celeriac_signing::TrustStore;
use components::{ComponentCache, LoadError};
use leases::{Orphans, Watch};
use settle::{Rules, Verdict, refuse, settle};
use slots::{Lane, Slots};

/// How a worker behaves; every field has a serviceable default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Most messages held beyond those running. The worker holds fewer
    /// when tasks are long (see `pacing`): enough for about 50 ms of work
    /// per slot.
    pub prefetch: u32,
    /// Most bytes of messages held at once (running and waiting).
    pub prefetch_bytes: usize,
    /// Messages larger than this are dead-lettered unread (a prefix kept).
    pub max_message_bytes: usize,
    /// A result larger than this (as JSON) fails the task instead.
    pub max_result_bytes: usize,
    /// Failure messages and dead-letter reasons are cut to this.
    pub max_error_bytes: usize,
    /// A held message not renewed for this long is handed to another worker.
    pub visibility_timeout: Duration,
    /// Deliveries after which a message that never completes is dead-lettered.
    pub max_deliveries: u64,
    /// Limits for messages that set none, and ceilings for those that do:
    /// a message may ask for less, never more (more is cut to these).
    pub limits: Limits,
    pub result_ttl: Duration,
    pub backoff: Backoff,
    /// How long in-flight tasks may take to finish after a shutdown signal.
    pub grace: Duration,
    pub heartbeat: Duration,
    /// Write a STARTED record when a task starts (one more write per task,
    /// as Celery's task_track_started).
    pub track_started: bool,
}

impl WorkerConfig {
    pub const DEFAULT_PREFETCH: u32 = 64;
    pub const DEFAULT_PREFETCH_BYTES: usize = 64 << 20;
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 << 20;
    pub const DEFAULT_MAX_ERROR_BYTES: usize = 8 << 10;
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queues: vec!["default".into()],
            concurrency: 2,
            prefetch: Self::DEFAULT_PREFETCH,
            prefetch_bytes: Self::DEFAULT_PREFETCH_BYTES,
            max_message_bytes: bounds::DEFAULT_MAX_MESSAGE_BYTES,
            max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
            max_error_bytes: Self::DEFAULT_MAX_ERROR_BYTES,
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 5,
            limits: Limits::default(),
            result_ttl: Duration::from_secs(24 * 3600),
            backoff: Backoff::default(),
            grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            track_started: false,
        }
    }
}

/// `host-pid-xxxx`: unique per process, readable in `celeriac status`.
pub fn default_worker_id() -> String {
    format!(
        "{}-{}-{:04x}",
        hostname(),
        std::process::id(),
        fastrand::u16(..)
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Counters a finished worker reports.
#[derive(Debug, Default, Clone)]
pub struct WorkerSummary {
    pub processed: u64,
    pub requeued_on_shutdown: u64,
}

/// Results this worker could not store, since when and why.
#[derive(Default)]
struct StoreHealth {
    failing: Mutex<Option<(Instant, String)>>,
}

impl StoreHealth {
    fn failed(&self, why: &str) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some((Instant::now(), why.to_string()));
        }
    }

    fn ok(&self) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the worker should stand down: it has not been able to store
    /// results for longer than `limit`.
    fn problem(&self, limit: Duration) -> Option<String> {
        let f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let (since, why) = f.as_ref()?;
        let for_ = since.elapsed();
        (for_ > limit).then(|| format!("cannot store results for {}s: {why}", for_.as_secs()))
    }
}

pub struct Worker {
    broker: Arc<dyn Broker>,
    sandbox: Arc<Sandbox>,
    components: ComponentCache,
    config: WorkerConfig,
    rules: Rules,
    /// (queue, delivery id) of every message this worker holds, with when
    /// its lease was last confirmed (delivered, taken over or renewed).
    held: Mutex<HashMap<(String, String), Instant>>,
    /// Bytes of the messages held.
    held_bytes: AtomicUsize,
    busy: AtomicU32,
    processed: AtomicU64,
    mean_runtime: pacing::MeanRuntime,
    store: StoreHealth,
    started_at: u64,
    host: String,
}

impl Worker {
    pub fn new(
        broker: Arc<dyn Broker>,
        sandbox: Arc<Sandbox>,
        trust: TrustStore,
        config: WorkerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            components: ComponentCache::new(broker.clone(), sandbox.clone(), trust),
            broker,
            sandbox,
            rules: Rules {
                backoff: config.backoff,
                max_result_bytes: config.max_result_bytes,
                max_error_bytes: config.max_error_bytes,
            },
            config,
            held: Mutex::new(HashMap::new()),
            held_bytes: AtomicUsize::new(0),
            busy: AtomicU32::new(0),
            processed: AtomicU64::new(0),
            mean_runtime: Default::default(),
            store: StoreHealth::default(),
            started_at: now_ms(),
            host: hostname(),
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no other worker can have taken `c`'s message over: its lease
    /// was confirmed less than half a visibility timeout ago (a take-over
    /// needs it unrenewed for a whole one), leaving the other half for the
    /// write to reach Redis.
    fn lease_fresh(&self, c: &Completion) -> bool {
        self.problem().is_none()
            && self
                .held()
                .get(&(c.queue.clone(), c.delivery_id.clone()))
                .is_some_and(|t| t.elapsed() < self.config.visibility_timeout / 2)
    }

    /// Why this worker is standing down, if it is.
    fn problem(&self) -> Option<String> {
        self.store.problem(self.config.visibility_timeout)
    }

    /// Consume until `shutdown` is cancelled, then stop taking work, let
    /// running tasks finish within the grace period, hand back the rest
    /// and flush every result.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> WorkerSummary {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
        let finisher = tokio::spawn(self.clone().finisher(done_rx));
        let (reclaimed_tx, mut reclaimed_rx) = mpsc::unbounded_channel::<Delivery>();
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(self.clone().keeper(
            keeper_stop.clone(),
            shutdown.clone(),
            reclaimed_tx,
        ));
        let leases = tokio::spawn(self.clone().lease_keeper(keeper_stop.clone()));

        let slots = Slots::new(self.config.concurrency as usize);
        let mut tasks = JoinSet::new();
        let tokens = Tokens {
            shutdown: shutdown.clone(),
            fetch_stopped: CancellationToken::new(),
            stop_running: CancellationToken::new(),
        };
        self.declare_with_retry(&shutdown).await;
        tracing::info!(worker = %self.config.id, queues = ?self.config.queues, concurrency = self.config.concurrency, broker = %self.broker.describe(), "worker started");

        let concurrency = self.config.concurrency.max(1) as usize;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            while let Ok(d) = reclaimed_rx.try_recv() {
                self.spawn_delivery(&mut tasks, d, Lane::First, &slots, &tokens, &done_tx);
            }
            if let Some(problem) = self.problem() {
                // Results cannot be stored: take nothing more until they can.
                tracing::warn!(%problem, "not fetching");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let extra = pacing::prefetch(
                self.config.prefetch,
                self.config.concurrency,
                self.mean_runtime.get(),
            ) as usize;
            let room = (concurrency + extra).saturating_sub(tasks.len());
            let bytes_room = self
                .config
                .prefetch_bytes
                .saturating_sub(self.held_bytes.load(Ordering::Relaxed));
            if room == 0 || (bytes_room == 0 && !tasks.is_empty()) {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    d = reclaimed_rx.recv() => if let Some(d) = d {
                        self.spawn_delivery(&mut tasks, d, Lane::First, &slots, &tokens, &done_tx);
                    },
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let limits = FetchLimits {
                max: room,
                max_bytes: bytes_room.max(1),
                max_message_bytes: self.config.max_message_bytes,
            };
            // Not raced against shutdown: a read cancelled mid-flight would
            // leave its messages held by nobody until the visibility timeout.
            // It blocks for at most a second; what it brings after a
            // shutdown signal is handed straight back.
            match self
                .broker
                .fetch(
                    &self.config.queues,
                    &self.config.id,
                    limits,
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(deliveries) => {
                    failures = 0;
                    for d in deliveries {
                        self.spawn_delivery(&mut tasks, d, Lane::Normal, &slots, &tokens, &done_tx);
                    }
                }
                Err(e) => {
                    // Redis restarting or unreachable: back off and go on;
                    // the connection is re-established underneath.
                    failures += 1;
                    let wait = reconnect_delay(failures);
                    tracing::warn!(error = %e, retry_in = ?wait, "fetch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tokens.fetch_stopped.cancel();
        while let Ok(d) = reclaimed_rx.try_recv() {
            self.spawn_delivery(&mut tasks, d, Lane::First, &slots, &tokens, &done_tx);
        }

        // Shutdown: messages still waiting for a slot go back at once (they
        // see `shutdown`); running ones get the grace period.
        tracing::info!(running = self.busy.load(Ordering::Relaxed), grace = ?self.config.grace, "shutting down: finishing in-flight tasks");
        let graceful = tokio::time::timeout(self.config.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if graceful.is_err() {
            tracing::warn!("grace period over: handing unfinished tasks back to the queue");
            tokens.stop_running.cancel();
            while tasks.join_next().await.is_some() {}
        }
        keeper_stop.cancel();
        let _ = keeper.await;
        let _ = leases.await;
        // Anything taken over while shutting down goes straight back.
        while let Ok(d) = reclaimed_rx.try_recv() {
            self.spawn_delivery(&mut tasks, d, Lane::First, &slots, &tokens, &done_tx);
        }
        while tasks.join_next().await.is_some() {}
        drop(done_tx);
        let requeued = finisher.await.unwrap_or(0);
        for q in &self.config.queues {
            // Holding nothing now: this worker's consumer can go.
            if let Err(e) = self
                .broker
                .prune_consumers(q, Duration::MAX, Some(&self.config.id))
                .await
            {
                tracing::warn!(queue = %q, error = %e, "could not remove this worker's consumer");
            }
        }
        if let Err(e) = self.broker.forget_worker(&self.config.id).await {
            tracing::warn!(error = %e, "could not remove heartbeat");
        }
        WorkerSummary {
            processed: self.processed.load(Ordering::Relaxed),
            requeued_on_shutdown: requeued,
        }
    }

    async fn declare_with_retry(&self, shutdown: &CancellationToken) {
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            match self.broker.declare(&self.config.queues).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    let wait = reconnect_delay(failures);
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot declare queues");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    fn spawn_delivery(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        delivery: Delivery,
        lane: Lane,
        slots: &Slots,
        tokens: &Tokens,
        done: &mpsc::UnboundedSender<Completion>,
    ) {
        // Taken-over messages are already in (with the time of the claim).
        self.held()
            .entry((delivery.queue.clone(), delivery.id.clone()))
            .or_insert_with(Instant::now);
        let bytes = delivery.payload.len();
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        let (this, slots, done) = (self.clone(), slots.clone(), done.clone());
        let (shutdown, fetch_stopped, stop_running) = (
            tokens.shutdown.clone(),
            tokens.fetch_stopped.clone(),
            tokens.stop_running.clone(),
        );
        tasks.spawn(async move {
            let slot = tokio::select! {
                s = slots.acquire(lane) => Some(s),
                _ = shutdown.cancelled() => None,
            };
            let completion = match slot {
                Some(_slot) if !shutdown.is_cancelled() => {
                    this.busy.fetch_add(1, Ordering::Relaxed);
                    metrics::slots_busy(this.busy.load(Ordering::Relaxed));
                    let c = tokio::select! {
                        c = this.process(&delivery) => c,
                        _ = stop_running.cancelled() => requeue(&delivery),
                    };
                    this.busy.fetch_sub(1, Ordering::Relaxed);
                    metrics::slots_busy(this.busy.load(Ordering::Relaxed));
                    c
                }
                // Not started before the shutdown signal: hand it back, but
                // only once fetching has stopped, or the last read could
                // bring it straight back here.
                _ => {
                    fetch_stopped.cancelled().await;
                    requeue(&delivery)
                }
            };
            // Results and dead letters are bounded; the message itself is
            // released here (the completion shares it only if it stores it).
            this.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let _ = done.send(completion);
        });
    }

    /// Decide what becomes of one delivery. Never panics on input: every
    /// bad message ends as a dead letter with the reason.
    async fn process(&self, delivery: &Delivery) -> Completion {
        let now = now_ms();
        let finish = |verdict: Verdict, ttl: Option<u64>, ignore: bool, task: &str| {
            metrics::task_finished(task, verdict.label());
            Completion {
                queue: delivery.queue.clone(),
                delivery_id: delivery.id.clone(),
                payload: delivery.payload.clone(),
                result: verdict
                    .record
                    .filter(|_| !ignore)
                    .map(|r| self.result_write(&r, ttl)),
                disposition: verdict.disposition,
                lease_fresh: false,
            }
        };
        if delivery.is_oversize() {
            let reason = format!(
                "message too large: {}, limit {}",
                format_size(delivery.size as u64),
                format_size(self.config.max_message_bytes as u64)
            );
            tracing::warn!(queue = %delivery.queue, %reason, "dead-lettering unread message");
            // Only a prefix was read: the id may still be in it.
            let record = salvage_id_from_prefix(&delivery.payload)
                .map(|id| self.anonymous_record(id, &delivery.queue));
            return finish(self.refusal(record, "malformed", &reason), None, false, "?");
        }
        let msg = match TaskMessage::parse(&delivery.payload, now) {
            Ok(m) => m,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(queue = %delivery.queue, error = %clip(&reason, 200), "dead-lettering malformed message");
                let record = salvage_id(&delivery.payload)
                    .map(|id| self.anonymous_record(id, &delivery.queue));
                return finish(self.refusal(record, "malformed", &reason), None, false, "?");
            }
        };
        let span =
            tracing::info_span!("task", task_id = %msg.id, task = %msg.task, retries = msg.retries);
        let verdict = self
            .process_message(delivery, &msg, now)
            .instrument(span)
            .await;
        finish(verdict, msg.result_ttl, msg.ignore_result, &msg.task)
    }

    fn refusal(&self, record: Option<ResultRecord>, kind: &str, reason: &str) -> Verdict {
        match record {
            Some(r) => refuse(r, kind, reason, &self.rules),
            None => Verdict {
                record: None,
                disposition: Disposition::DeadLetter {
                    reason: clip(reason, self.config.max_error_bytes),
                    payload: None,
                },
            },
        }
    }

    /// admit -> resolve -> run -> settle.
    async fn process_message(&self, delivery: &Delivery, msg: &TaskMessage, now: u64) -> Verdict {
        // Admit.
        if delivery.deliveries > self.config.max_deliveries {
            let reason = format!(
                "delivered {} times without completing (worker crashes or kills?); max is {}",
                delivery.deliveries, self.config.max_deliveries
            );
            tracing::warn!(%reason, "dead-lettering poison message");
            return refuse(
                self.record(msg, TaskState::Failure),
                "poison",
                &reason,
                &self.rules,
            );
        }
        if let Some(expires) = msg.expires
            && now > expires
        {
            let reason = format!("expired {} ms before it could run", now - expires);
            tracing::info!(%reason, "revoked");
            let mut record = self.record(msg, TaskState::Revoked);
            record.error = Some(ErrorInfo {
                kind: "expired".into(),
                message: reason,
            });
            return Verdict {
                record: Some(record),
                disposition: Disposition::Ack,
            };
        }
        if let Some(eta) = msg.eta
            && eta > now + 5
        {
            // Early (a clock ahead of ours): wait in Redis, not here.
            return Verdict {
                record: None,
                disposition: Disposition::Retry {
                    payload: delivery.payload.to_string(),
                    due_ms: eta,
                },
            };
        }

        // Resolve.
        let (module, name) = match msg.split_task() {
            Ok(parts) => parts,
            Err(e) => {
                let reason = e.to_string();
                return refuse(
                    self.record(msg, TaskState::Failure),
                    "malformed",
                    &reason,
                    &self.rules,
                );
            }
        };
        // Only a component a trusted key signed as this module comes back.
        let component = match self.components.get(&msg.digest, module).await {
            Ok(c) => c,
            Err(LoadError::Transient(e)) => {
                // The broker hiccuped: let another attempt (or worker) try.
                tracing::warn!(error = %e, "could not fetch component; requeueing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Verdict {
                    record: None,
                    disposition: Disposition::Requeue,
                };
            }
            Err(LoadError::Refused(reason)) => {
                tracing::warn!(%reason, "dead-lettering: component refused");
                return refuse(
                    self.record(msg, TaskState::Failure),
                    "refused",
                    &reason,
                    &self.rules,
                );
            }
        };

        // Run.
        let call = TaskCall {
            id: msg.id.clone(),
            module: module.to_string(),
            name: name.to_string(),
            // Serialized in place: cloning the parsed arguments first cost a
            // deep copy of every payload.
            args: json_text(&msg.args),
            kwargs: json_text(&msg.kwargs),
            retries: msg.retries,
            max_retries: msg.max_retries,
        };
        let limits = effective_limits(&self.config.limits, msg);
        let started_at = now_ms();
        if self.config.track_started && !msg.ignore_result {
            let started = ResultRecord {
                started_at: Some(started_at),
                finished_at: None,
                ..self.record(msg, TaskState::Started)
            };
            if let Err(e) = self
                .broker
                .set_result(&self.result_write(&started, msg.result_ttl))
                .await
            {
                tracing::warn!(error = %e, "could not record STARTED");
            }
        }
        let report = self.sandbox.run(&component.loaded, &call, &limits).await;
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.mean_runtime.record(report.elapsed);
        metrics::task_ran(&msg.task, report.elapsed, report.fuel_consumed);

        // Settle.
        let record = ResultRecord {
            runtime_ms: report.elapsed.as_secs_f64() * 1e3,
            fuel: report.fuel_consumed,
            started_at: Some(started_at),
            limits: Some(RecordLimits {
                timeout_ms: limits.timeout.as_millis() as u64,
                soft_timeout_ms: limits.soft_timeout.map(|d| d.as_millis() as u64),
                fuel: limits.fuel,
                memory: limits.memory,
            }),
            ..self.record(msg, TaskState::Started)
        };
        let verdict = settle(msg, report.result, record, &self.rules, now_ms());
        if let Some(r) = &verdict.record {
            match (&r.state, &r.error) {
                (TaskState::Success, _) => tracing::debug!(runtime = ?report.elapsed, "succeeded"),
                (TaskState::Retry, Some(e)) => {
                    tracing::info!(error = %clip(&e.message, 500), retry_at = r.retry_at, "retrying")
                }
                (_, Some(e)) => tracing::info!(error = %clip(&e.message, 500), "failed"),
                _ => {}
            }
        }
        if matches!(verdict.disposition, Disposition::Requeue) {
            tracing::warn!("host could not run task; requeueing");
        }
        verdict
    }

    /// The record of `msg` in `state`, stamped by this worker now.
    fn record(&self, msg: &TaskMessage, state: TaskState) -> ResultRecord {
        ResultRecord {
            id: msg.id.clone(),
            task: msg.task.clone(),
            retries: msg.retries,
            queue: msg.queue.clone(),
            submitted_at: msg.submitted_at,
            state,
            ..self.anonymous_record(msg.id.clone(), &msg.queue)
        }
    }

    /// A record for a message that could not be read: only its id is known.
    fn anonymous_record(&self, id: String, queue: &str) -> ResultRecord {
        ResultRecord {
            id,
            task: String::new(),
            state: TaskState::Failure,
            result: None,
            error: None,
            retries: 0,
            runtime_ms: 0.0,
            fuel: None,
            worker: self.config.id.clone(),
            queue: queue.to_string(),
            submitted_at: 0,
            started_at: None,
            finished_at: Some(now_ms()),
            retry_at: None,
            limits: None,
        }
    }

    fn result_write(&self, record: &ResultRecord, ttl_secs: Option<u64>) -> ResultWrite {
        ResultWrite {
            task_id: record.id.clone(),
            json: record.to_json(),
            // Validated on parse; capped again so no record can ask Redis
            // for an expiry it refuses.
            ttl: ttl_secs
                .map(|s| Duration::from_secs(s.clamp(1, bounds::MAX_RESULT_TTL_SECS)))
                .unwrap_or(self.config.result_ttl),
        }
    }

    /// Writes results and disposes of messages in batches (by count and by
    /// bytes). A failure Redis would repeat (value too large, wrong type, a
    /// bad argument) fails only the completion that caused it: it is
    /// replaced by a FAILURE naming the cause and a bounded dead letter,
    /// and the rest are written. Failures of the connection are retried
    /// until Redis is back, and only then; a completion that keeps failing
    /// while Redis answers counts as one Redis would repeat. Returns how
    /// many messages were handed back.
    async fn finisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Completion>) -> u64 {
        const BATCH: usize = 512;
        const BATCH_BYTES: usize = 32 << 20;
        let mut requeued = 0;
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut incoming = Vec::with_capacity(BATCH);
        let mut failures = 0u32;
        loop {
            if queue.is_empty() {
                if rx.recv_many(&mut incoming, BATCH).await == 0 {
                    return requeued;
                }
            } else {
                while let Ok(c) = rx.try_recv() {
                    incoming.push(c);
                }
            }
            queue.extend(incoming.drain(..).map(|c| Pending {
                c,
                attempts: 0,
                fallback: 0,
            }));

            // After repeated failures, one at a time: finds the one at fault.
            let single = queue.front().is_some_and(|p| p.attempts >= 2);
            // The batch as the broker takes it, and what the finisher
            // knows of each (split so nothing is copied per round trip).
            let mut completions = Vec::new();
            let mut tries = Vec::new();
            let mut bytes = 0;
            while let Some(p) = queue.front() {
                let w = p.c.weight();
                if !completions.is_empty()
                    && (single || completions.len() >= BATCH || bytes + w > BATCH_BYTES)
                {
                    break;
                }
                bytes += w;
                if let Some(Pending {
                    mut c,
                    attempts,
                    fallback,
                }) = queue.pop_front()
                {
                    c.lease_fresh = self.lease_fresh(&c);
                    completions.push(c);
                    tries.push((attempts, fallback));
                }
            }
            let outcome = self.broker.complete(&self.config.id, &completions).await;
            let batch = completions
                .into_iter()
                .zip(tries)
                .map(|(c, (attempts, fallback))| Pending {
                    c,
                    attempts,
                    fallback,
                });
            match outcome {
                Ok(outcomes) => {
                    let mut retry = Vec::new();
                    let mut transient = None;
                    for (mut p, outcome) in batch.zip(outcomes) {
                        match outcome {
                            Ok(done) => {
                                if done == Completed::TakenOver {
                                    tracing::warn!(queue = %p.c.queue, delivery = %p.c.delivery_id, "lease lost to another worker: its run counts, this one is dropped");
                                }
                                if matches!(p.c.disposition, Disposition::Requeue) {
                                    requeued += 1;
                                }
                                self.release(&p.c);
                            }
                            Err(e) if e.is_transient() => {
                                transient = Some(clip(&e.cause(), 200));
                                p.attempts += 1;
                                retry.push(p);
                            }
                            Err(e) => retry.extend(self.fallback(p, &e.cause())),
                        }
                    }
                    for p in retry.into_iter().rev() {
                        queue.push_front(p);
                    }
                    match transient {
                        None => {
                            failures = 0;
                            self.store.ok();
                        }
                        // E.g. Redis out of memory: wait for it to recover.
                        Some(why) => {
                            failures += 1;
                            self.store.failed(&why);
                            let wait = reconnect_delay(failures);
                            tracing::warn!(error = %why, pending = queue.len(), retry_in = ?wait, "could not store results");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    let wait = reconnect_delay(failures);
                    let why = clip(&e.cause(), 200);
                    self.store.failed(&why);
                    // The connection failed under this batch while Redis
                    // answers otherwise: the batch is at fault (Redis drops
                    // a client that sends a value over its limits). A reply
                    // naming a condition of Redis's own (OOM, LOADING, …)
                    // blames nothing in the batch.
                    let server_condition =
                        matches!(&e, BrokerError::Redis(r) if r.code().is_some());
                    let answers = !server_condition && self.broker.ping().await.is_ok();
                    let mut batch: Vec<Pending> = batch.collect();
                    if answers {
                        for p in &mut batch {
                            p.attempts += 1;
                        }
                        if batch.len() == 1 && batch[0].attempts >= 3 {
                            let p = batch.remove(0);
                            if let Some(next) = self.fallback(
                                p,
                                &format!("{why} (after 3 attempts while Redis answers)"),
                            ) {
                                batch.push(next);
                            }
                        }
                    }
                    tracing::warn!(error = %why, pending = batch.len() + queue.len(), retry_in = ?wait, "could not store results");
                    for p in batch.into_iter().rev() {
                        queue.push_front(p);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The stand-in for a completion Redis refused for good: first a
    /// FAILURE naming the cause and a dead letter with a bounded payload,
    /// then (if even that is refused) the FAILURE alone, then nothing but
    /// the ack. `None` once there is nothing left to try (the message
    /// stays pending and comes back as poison).
    fn fallback(&self, p: Pending, cause: &str) -> Option<Pending> {
        let cause = clip(cause, 300);
        let c = &p.c;
        tracing::error!(queue = %c.queue, delivery = %c.delivery_id, %cause, stage = p.fallback, "result refused by Redis; storing a failure instead");
        metrics::store_refused();
        let record = c.result.as_ref().and_then(|r| {
            let mut rec: ResultRecord = serde_json::from_str(&r.json).ok()?;
            rec.state = TaskState::Failure;
            rec.result = None;
            rec.retry_at = None;
            rec.error = Some(ErrorInfo {
                kind: "storage".into(),
                message: format!("could not store result: {cause}"),
            });
            Some(ResultWrite {
                task_id: r.task_id.clone(),
                json: rec.to_json(),
                ttl: r.ttl.min(self.config.result_ttl),
            })
        });
        const KEEP: usize = 64 << 10;
        let disposition = match p.fallback {
            0 => Disposition::DeadLetter {
                reason: format!("could not store result: {cause}"),
                payload: (c.payload.len() > KEEP).then(|| prefix(&c.payload, KEEP).to_string()),
            },
            1 | 2 => Disposition::Ack,
            _ => {
                tracing::error!(queue = %c.queue, delivery = %c.delivery_id, "giving up on this completion; the message stays pending");
                self.release(c);
                return None;
            }
        };
        Some(Pending {
            c: Completion {
                result: if p.fallback < 2 { record } else { None },
                disposition,
                ..c.clone()
            },
            attempts: 0,
            fallback: p.fallback + 1,
        })
    }

    fn release(&self, c: &Completion) {
        self.held()
            .remove(&(c.queue.clone(), c.delivery_id.clone()));
    }

    /// Renews the leases on everything held, a third of the visibility
    /// timeout apart (sooner after a failure), unless the worker stands
    /// down: then its messages go to live workers.
    async fn lease_keeper(self: Arc<Self>, stop: CancellationToken) {
        let period = (self.config.visibility_timeout / 3).max(Duration::from_millis(50));
        loop {
            let mut wait = period;
            if let Some(problem) = self.problem() {
                tracing::warn!(%problem, "not renewing leases: other workers take over");
            } else {
                let held: Vec<(String, String)> = self.held().keys().cloned().collect();
                if !held.is_empty() {
                    let round = Instant::now();
                    match tokio::time::timeout(period, self.broker.renew(&self.config.id, &held))
                        .await
                    {
                        Ok(Ok(lost)) => {
                            let mut h = self.held();
                            if !lost.is_empty() {
                                tracing::warn!(lost = lost.len(), "leases lost to other workers");
                                metrics::leases_lost(lost.len());
                                for l in &lost {
                                    h.remove(l);
                                }
                            }
                            for key in &held {
                                if let Some(t) = h.get_mut(key) {
                                    *t = (*t).max(round);
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "lease renewal failed");
                            wait = Duration::from_millis(200).min(period);
                        }
                        Err(_) => {
                            tracing::warn!("lease renewal timed out");
                            wait = Duration::from_millis(200).min(period);
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delayed-message promotion, taking over from dead workers, pruning
    /// their consumers, heartbeats and queue-depth metrics, each on its own
    /// clock. Stops taking over work once `shutdown` is signalled.
    async fn keeper(
        self: Arc<Self>,
        stop: CancellationToken,
        shutdown: CancellationToken,
        reclaimed: mpsc::UnboundedSender<Delivery>,
    ) {
        let vt = self.config.visibility_timeout;
        let watch = Watch::for_timeout(vt);
        let mut orphans: HashMap<String, Orphans> = self
            .config
            .queues
            .iter()
            .map(|q| (q.clone(), Orphans::new(watch)))
            .collect();
        let mut promote = tokio::time::interval(Duration::from_millis(50));
        let mut reclaim = tokio::time::interval((vt / 4).max(Duration::from_millis(50)));
        let mut prune = tokio::time::interval(vt.max(Duration::from_secs(1)));
        let mut beat = tokio::time::interval(self.config.heartbeat);
        for t in [&mut promote, &mut reclaim, &mut prune, &mut beat] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let call_limit = (vt / 4).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = promote.tick() => {
                    if let Err(e) = self.broker.promote_due(&self.config.queues, now_ms()).await {
                        tracing::debug!(error = %e, "promoting delayed messages failed");
                    }
                }
                _ = reclaim.tick() => {
                    if shutdown.is_cancelled() {
                        continue;
                    }
                    for (q, watched) in orphans.iter_mut() {
                        let claimed_at = Instant::now();
                        let taken = tokio::time::timeout(call_limit, self.take_over(q, watched)).await;
                        match taken {
                            Ok(Ok(deliveries)) => {
                                for d in deliveries {
                                    tracing::info!(queue = %q, delivery = %d.id, deliveries = d.deliveries, "took over a message from an unresponsive worker");
                                    // Held from now on, so it is renewed while it waits for a slot.
                                    self.held()
                                        .insert((d.queue.clone(), d.id.clone()), claimed_at);
                                    let _ = reclaimed.send(d);
                                }
                            }
                            Ok(Err(e)) => {
                                watched.forget();
                                tracing::warn!(queue = %q, error = %e, "reclaim failed");
                            }
                            Err(_) => watched.forget(),
                        }
                    }
                }
                _ = prune.tick() => {
                    // Consumers of dead workers, once they hold nothing.
                    let idle = (vt * 2).max(Duration::from_secs(2));
                    for q in &self.config.queues {
                        match self.broker.prune_consumers(q, idle, None).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(queue = %q, removed = n, "removed consumers of gone workers"),
                            Err(e) => tracing::debug!(queue = %q, error = %e, "pruning consumers failed"),
                        }
                    }
                }
                _ = beat.tick() => {
                    let problem = self.problem();
                    metrics::healthy(problem.is_none());
                    let info = WorkerInfo {
                        id: self.config.id.clone(),
                        host: self.host.clone(),
                        pid: std::process::id(),
                        queues: self.config.queues.clone(),
                        concurrency: self.config.concurrency,
                        busy: self.busy.load(Ordering::Relaxed),
                        processed: self.processed.load(Ordering::Relaxed),
                        started_at: self.started_at,
                        seen_at: now_ms(),
                        problem,
                    };
                    if let Err(e) = self.broker.heartbeat(&info, self.config.heartbeat * 5).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    for q in &self.config.queues {
                        if let Ok(stats) = self.broker.queue_stats(q).await {
                            metrics::queue_depth(q, &stats);
                        }
                    }
                }
            }
        }
    }

    /// One look at `queue`'s pending list; claims what has been watched
    /// unrenewed long enough. Takes over even when this worker is busy:
    /// taken-over messages start ahead of fetched ones. Bounded per round
    /// by what the worker may hold.
    async fn take_over(
        &self,
        queue: &str,
        watched: &mut Orphans,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let limit = (self.config.concurrency + self.config.prefetch).max(1) as usize;
        let suspect = self
            .broker
            .pending(queue, &self.config.id, watched.suspect_after(), limit)
            .await?;
        let claims = watched.observe(Instant::now(), &suspect);
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.broker
            .claim(
                queue,
                &self.config.id,
                &claims,
                self.config.max_message_bytes,
            )
            .await
    }
}

/// A completion on its way to the broker.
struct Pending {
    c: Completion,
    /// Round trips that failed with it in the batch while Redis answered.
    attempts: u32,
    /// Which stand-in this is (0: the original).
    fallback: u8,
}

/// The limits a message runs under: what it asks for, never more than the
/// worker's (its defaults when it asks for nothing).
fn effective_limits(ceiling: &Limits, msg: &TaskMessage) -> Limits {
    let asked = &msg.limits;
    let timeout = asked
        .timeout_ms
        .map(Duration::from_millis)
        .map_or(ceiling.timeout, |t| t.min(ceiling.timeout));
    Limits {
        timeout,
        soft_timeout: asked
            .soft_timeout_ms
            .map(Duration::from_millis)
            .or(ceiling.soft_timeout)
            .filter(|s| *s < timeout),
        fuel: asked.fuel.map_or(ceiling.fuel, |f| f.min(ceiling.fuel)),
        memory: asked
            .memory
            .map_or(ceiling.memory, |m| m.min(ceiling.memory)),
    }
}

/// The `"id"` of a message of which only a prefix was read.
fn salvage_id_from_prefix(prefix: &str) -> Option<String> {
    let start = prefix.find("\"id\":\"")? + 6;
    let rest = &prefix[start..];
    let id = &rest[..rest.find('"')?];
    (!id.is_empty() && id.len() <= 200 && !id.contains('\\')).then(|| id.to_string())
}

/// The phases of a shutdown, as seen by each delivery's future.
struct Tokens {
    /// Signal received: start nothing new.
    shutdown: CancellationToken,
    /// The fetch loop has ended: unstarted messages may be handed back.
    fetch_stopped: CancellationToken,
    /// Grace period over: abandon running tasks and hand them back.
    stop_running: CancellationToken,
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    // JSON values in memory always serialize (their map keys are strings).
    serde_json::to_string(v).expect("a JSON value serializes")
}

fn requeue(d: &Delivery) -> Completion {
    Completion {
        queue: d.queue.clone(),
        delivery_id: d.id.clone(),
        payload: d.payload.clone(),
        result: None,
        disposition: Disposition::Requeue,
        lease_fresh: false,
    }
}

/// 100 ms, 200 ms, … capped at 5 s, with jitter so a fleet of workers does
/// not reconnect in lockstep.
fn reconnect_delay(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    Duration::from_millis(base / 2 + fastrand::u64(..=base / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::Digest;
    use celeriac_protocol::MessageLimits;

    fn msg(limits: MessageLimits) -> TaskMessage {
        TaskMessage {
            v: 1,
            id: "a".into(),
            task: "m.t".into(),
            digest: Digest::of(b""),
            args: vec![],
            kwargs: Default::default(),
            queue: "q".into(),
            retries: 0,
            max_retries: 0,
            eta: None,
            expires: None,
            limits,
            result_ttl: None,
            ignore_result: false,
            submitted_at: 0,
        }
    }

    #[test]
    fn worker_limits_are_ceilings() {
        let ceiling = Limits {
            timeout: Duration::from_secs(10),
            soft_timeout: Some(Duration::from_secs(5)),
            fuel: 1_000,
            memory: 1 << 30,
        };
        // Nothing asked: the worker's.
        assert_eq!(
            effective_limits(&ceiling, &msg(MessageLimits::default())),
            ceiling
        );
        // More asked: cut to the ceiling.
        let greedy = MessageLimits {
            timeout_ms: Some(3_600_000),
            soft_timeout_ms: Some(3_000_000),
            fuel: Some(u64::MAX),
            memory: Some(100 << 30),
        };
        let l = effective_limits(&ceiling, &msg(greedy));
        assert_eq!(
            (l.timeout, l.fuel, l.memory),
            (ceiling.timeout, 1_000, 1 << 30)
        );
        // A soft limit past the (cut) hard one is dropped.
        assert_eq!(l.soft_timeout, None);
        // Less asked: granted.
        let modest = MessageLimits {
            timeout_ms: Some(2_000),
            soft_timeout_ms: Some(1_000),
            fuel: Some(10),
            memory: Some(1 << 20),
        };
        let l = effective_limits(&ceiling, &msg(modest));
        assert_eq!(
            (l.timeout, l.soft_timeout, l.fuel, l.memory),
            (
                Duration::from_secs(2),
                Some(Duration::from_secs(1)),
                10,
                1 << 20
            )
        );
    }

    #[test]
    fn ids_are_salvaged_from_prefixes() {
        assert_eq!(
            salvage_id_from_prefix(r#"{"v":1,"id":"abc","task":"m.t","args":["xxxx"#).as_deref(),
            Some("abc")
        );
        assert_eq!(salvage_id_from_prefix(r#"{"v":1,"id":"ab"#), None);
        assert_eq!(salvage_id_from_prefix("junk"), None);
    }

    #[test]
    fn store_health_reports_only_long_failures() {
        let h = StoreHealth::default();
        assert_eq!(h.problem(Duration::ZERO), None);
        h.failed("OOM");
        assert!(h.problem(Duration::from_secs(60)).is_none());
        let p = h.problem(Duration::ZERO).unwrap();
        assert!(
            p.starts_with("cannot store results for") && p.ends_with("OOM"),
            "{p}"
        );
        h.ok();
        assert_eq!(h.problem(Duration::ZERO), None);
    }
}
