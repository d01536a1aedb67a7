//! The worker: pulls messages, runs the component each one pins, writes
//! the result and only then acknowledges (acks late).
//!
//! Tasks inside one worker process:
//! - the fetcher keeps up to `concurrency + prefetch` messages held and
//!   spawns one future per message; `concurrency` of them run at a time;
//! - the finisher writes results and acks in batches (one round trip for
//!   many tasks);
//! - the keeper renews the lease on everything held, promotes due delayed
//!   messages, reclaims messages of dead workers and sends heartbeats.

mod backoff;
mod components;
mod metrics;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use backoff::Backoff;
pub use metrics::install_prometheus;

use crate::broker::message::salvage_id;
use crate::broker::{
    Broker, Completion, Delivery, Disposition, ResultWrite, TaskMessage, WorkerInfo,
};
use crate::results::{ErrorInfo, ResultRecord, TaskState, now_ms};
use crate::sandbox::{Limits, Sandbox, TaskCall, TaskError};
use crate::signing::TrustStore;
use components::{ComponentCache, LoadError};

/// How a worker behaves; every field has a serviceable default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Messages held beyond those running, so the next task starts without
    /// a round trip.
    pub prefetch: u32,
    /// A held message not renewed for this long is handed to another worker.
    pub visibility_timeout: Duration,
    /// Deliveries after which a message that never completes is dead-lettered.
    pub max_deliveries: u64,
    /// Limits for messages that do not set their own.
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

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queues: vec!["default".into()],
            concurrency: 2,
            prefetch: 64,
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

pub struct Worker {
    broker: Arc<dyn Broker>,
    sandbox: Arc<Sandbox>,
    components: ComponentCache,
    config: WorkerConfig,
    /// (queue, delivery id) of every message this worker holds.
    held: Mutex<HashSet<(String, String)>>,
    busy: AtomicU32,
    processed: AtomicU64,
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
            config,
            held: Mutex::new(HashSet::new()),
            busy: AtomicU32::new(0),
            processed: AtomicU64::new(0),
            started_at: now_ms(),
            host: hostname(),
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consume until `shutdown` is cancelled, then stop taking work, let
    /// running tasks finish within the grace period, hand back the rest
    /// and flush every result.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> WorkerSummary {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
        let finisher = tokio::spawn(self.clone().finisher(done_rx));
        let (reclaimed_tx, mut reclaimed_rx) = mpsc::unbounded_channel::<Delivery>();
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(self.clone().keeper(keeper_stop.clone(), reclaimed_tx));

        let slots = Arc::new(Semaphore::new(self.config.concurrency as usize));
        let mut tasks = JoinSet::new();
        let tokens = Tokens {
            shutdown: shutdown.clone(),
            fetch_stopped: CancellationToken::new(),
            stop_running: CancellationToken::new(),
        };
        self.declare_with_retry(&shutdown).await;
        tracing::info!(worker = %self.config.id, queues = ?self.config.queues, concurrency = self.config.concurrency, broker = %self.broker.describe(), "worker started");

        let capacity = (self.config.concurrency + self.config.prefetch).max(1) as usize;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            while let Ok(d) = reclaimed_rx.try_recv() {
                self.spawn_delivery(&mut tasks, d, &slots, &tokens, &done_tx);
            }
            let room = capacity.saturating_sub(tasks.len());
            if room == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            // Not raced against shutdown: a read cancelled mid-flight would
            // leave its messages held by nobody until the visibility timeout.
            // It blocks for at most a second; what it brings after a
            // shutdown signal is handed straight back.
            match self
                .broker
                .fetch(
                    &self.config.queues,
                    &self.config.id,
                    room,
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(deliveries) => {
                    failures = 0;
                    for d in deliveries {
                        self.spawn_delivery(&mut tasks, d, &slots, &tokens, &done_tx);
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
        while let Ok(d) = reclaimed_rx.try_recv() {
            self.spawn_delivery(&mut tasks, d, &slots, &tokens, &done_tx);
        }
        tokens.fetch_stopped.cancel();

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
        drop(done_tx);
        let requeued = finisher.await.unwrap_or(0);
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
        slots: &Arc<Semaphore>,
        tokens: &Tokens,
        done: &mpsc::UnboundedSender<Completion>,
    ) {
        self.held()
            .insert((delivery.queue.clone(), delivery.id.clone()));
        let (this, slots, done) = (self.clone(), slots.clone(), done.clone());
        let (shutdown, fetch_stopped, stop_running) = (
            tokens.shutdown.clone(),
            tokens.fetch_stopped.clone(),
            tokens.stop_running.clone(),
        );
        tasks.spawn(async move {
            let permit = tokio::select! {
                p = slots.acquire_owned() => p.ok(),
                _ = shutdown.cancelled() => None,
            };
            let completion = match permit {
                Some(_permit) if !shutdown.is_cancelled() => {
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
            let _ = done.send(completion);
        });
    }

    /// Decide what becomes of one delivery. Never panics on input: every
    /// bad message ends as a dead letter with the reason.
    async fn process(&self, delivery: &Delivery) -> Completion {
        let msg = match TaskMessage::parse(&delivery.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(queue = %delivery.queue, error = %e, "dead-lettering malformed message");
                metrics::task_finished("?", "DEAD");
                let record = salvage_id(&delivery.payload).map(|id| ResultRecord {
                    id,
                    task: String::new(),
                    state: TaskState::Failure,
                    result: None,
                    error: Some(ErrorInfo {
                        kind: "malformed".into(),
                        message: e.to_string(),
                    }),
                    retries: 0,
                    runtime_ms: 0.0,
                    fuel: None,
                    worker: self.config.id.clone(),
                    queue: delivery.queue.clone(),
                    submitted_at: 0,
                    started_at: None,
                    finished_at: Some(now_ms()),
                    retry_at: None,
                });
                return Completion {
                    queue: delivery.queue.clone(),
                    delivery_id: delivery.id.clone(),
                    result: record.map(|r| self.result_write(&r, None)),
                    disposition: Disposition::DeadLetter {
                        reason: e.to_string(),
                        payload: delivery.payload.clone(),
                    },
                };
            }
        };
        let span =
            tracing::info_span!("task", task_id = %msg.id, task = %msg.task, retries = msg.retries);
        self.process_message(delivery, msg).instrument(span).await
    }

    async fn process_message(&self, delivery: &Delivery, msg: TaskMessage) -> Completion {
        let now = now_ms();
        let done = |record: Option<ResultRecord>, disposition: Disposition| Completion {
            queue: delivery.queue.clone(),
            delivery_id: delivery.id.clone(),
            result: record
                .filter(|_| !msg.ignore_result)
                .map(|r| self.result_write(&r, msg.result_ttl)),
            disposition,
        };
        // Only a dead letter keeps the message as received.
        let dead_letter = |reason: String| Disposition::DeadLetter {
            reason,
            payload: delivery.payload.clone(),
        };

        if delivery.deliveries > self.config.max_deliveries {
            let reason = format!(
                "delivered {} times without completing (worker crashes or kills?); max is {}",
                delivery.deliveries, self.config.max_deliveries
            );
            tracing::warn!(%reason, "dead-lettering poison message");
            metrics::task_finished(&msg.task, "DEAD");
            return done(
                Some(self.failure(&msg, "poison", &reason)),
                dead_letter(reason),
            );
        }
        if let Some(expires) = msg.expires
            && now > expires
        {
            let reason = format!("expired {} ms before it could run", now - expires);
            tracing::info!(%reason, "revoked");
            metrics::task_finished(&msg.task, "REVOKED");
            let mut record = self.failure(&msg, "expired", &reason);
            record.state = TaskState::Revoked;
            return done(Some(record), Disposition::Ack);
        }
        if let Some(eta) = msg.eta
            && eta > now + 5
        {
            // Early (a clock ahead of ours): wait in Redis, not here.
            return done(
                None,
                Disposition::Retry {
                    payload: delivery.payload.clone(),
                    due_ms: eta,
                },
            );
        }

        let (module, name) = match msg.split_task() {
            Ok(parts) => parts,
            Err(e) => {
                let reason = e.to_string();
                return done(
                    Some(self.failure(&msg, "malformed", &reason)),
                    dead_letter(reason),
                );
            }
        };
        let component = match self.components.get(&msg.digest).await {
            Ok(c) => c,
            Err(LoadError::Transient(e)) => {
                // The broker hiccuped: let another attempt (or worker) try.
                tracing::warn!(error = %e, "could not fetch component; requeueing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return requeue(delivery);
            }
            Err(LoadError::Refused(reason)) => {
                tracing::warn!(%reason, "dead-lettering: component refused");
                metrics::task_finished(&msg.task, "DEAD");
                return done(
                    Some(self.failure(&msg, "refused", &reason)),
                    dead_letter(reason),
                );
            }
        };
        if component.module != module {
            let reason = format!(
                "component {} is signed as module `{}`, but the message asks for `{}`",
                msg.digest, component.module, msg.task
            );
            return done(
                Some(self.failure(&msg, "refused", &reason)),
                dead_letter(reason),
            );
        }

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
        let limits = self.limits_for(&msg);
        let started_at = now_ms();
        if self.config.track_started && !msg.ignore_result {
            let started = ResultRecord {
                started_at: Some(started_at),
                finished_at: None,
                ..self.record(&msg, TaskState::Started)
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
        metrics::task_ran(&msg.task, report.elapsed, report.fuel_consumed);
        let mut record = ResultRecord {
            runtime_ms: report.elapsed.as_secs_f64() * 1e3,
            fuel: report.fuel_consumed,
            started_at: Some(started_at),
            ..self.record(&msg, TaskState::Success)
        };
        match report.result {
            Ok(json) => match serde_json::from_str::<Value>(&json) {
                Ok(value) => {
                    tracing::debug!(runtime = ?report.elapsed, "succeeded");
                    metrics::task_finished(&msg.task, "SUCCESS");
                    record.result = Some(value);
                    done(Some(record), Disposition::Ack)
                }
                Err(e) => {
                    let reason = format!("task returned invalid JSON: {e}");
                    record.state = TaskState::Failure;
                    record.error = Some(ErrorInfo {
                        kind: "fatal".into(),
                        message: reason.clone(),
                    });
                    metrics::task_finished(&msg.task, "FAILURE");
                    done(Some(record), dead_letter(reason))
                }
            },
            Err(TaskError::Host(reason)) => {
                // Not the task's fault (e.g. out of instance slots): try again.
                tracing::warn!(%reason, "host could not run task; requeueing");
                requeue(delivery)
            }
            Err(e) => {
                let (kind, retry_after) = error_kind(&e);
                record.error = Some(ErrorInfo {
                    kind: kind.into(),
                    message: e.to_string(),
                });
                if e.is_retryable() && msg.retries < msg.max_retries {
                    let delay =
                        retry_after.unwrap_or_else(|| self.config.backoff.delay(msg.retries));
                    let due_ms = now_ms() + delay.as_millis() as u64;
                    let mut next = msg.clone();
                    next.retries += 1;
                    next.eta = None;
                    record.state = TaskState::Retry;
                    record.retry_at = Some(due_ms);
                    tracing::info!(error = %e, retry_in = ?delay, "retrying");
                    metrics::task_finished(&msg.task, "RETRY");
                    done(
                        Some(record),
                        Disposition::Retry {
                            payload: next.to_json(),
                            due_ms,
                        },
                    )
                } else {
                    record.state = TaskState::Failure;
                    let reason = if e.is_retryable() {
                        format!("{e} (gave up after {} retries)", msg.retries)
                    } else {
                        e.to_string()
                    };
                    if let Some(err) = record.error.as_mut() {
                        err.message = reason.clone();
                    }
                    tracing::info!(error = %reason, "failed");
                    metrics::task_finished(&msg.task, "FAILURE");
                    done(Some(record), dead_letter(reason))
                }
            }
        }
    }

    fn limits_for(&self, msg: &TaskMessage) -> Limits {
        let d = &self.config.limits;
        let timeout = msg
            .limits
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.timeout);
        Limits {
            timeout,
            soft_timeout: msg
                .limits
                .soft_timeout_ms
                .map(Duration::from_millis)
                .or(d.soft_timeout)
                .filter(|s| *s < timeout),
            fuel: msg.limits.fuel.unwrap_or(d.fuel),
            memory: msg.limits.memory.unwrap_or(d.memory),
        }
    }

    /// The record of `msg` in `state`, stamped by this worker now.
    fn record(&self, msg: &TaskMessage, state: TaskState) -> ResultRecord {
        ResultRecord {
            id: msg.id.clone(),
            task: msg.task.clone(),
            state,
            result: None,
            error: None,
            retries: msg.retries,
            runtime_ms: 0.0,
            fuel: None,
            worker: self.config.id.clone(),
            queue: msg.queue.clone(),
            submitted_at: msg.submitted_at,
            started_at: None,
            finished_at: Some(now_ms()),
            retry_at: None,
        }
    }

    fn failure(&self, msg: &TaskMessage, kind: &str, message: &str) -> ResultRecord {
        ResultRecord {
            error: Some(ErrorInfo {
                kind: kind.into(),
                message: message.into(),
            }),
            ..self.record(msg, TaskState::Failure)
        }
    }

    fn result_write(&self, record: &ResultRecord, ttl_secs: Option<u64>) -> ResultWrite {
        ResultWrite {
            task_id: record.id.clone(),
            json: record.to_json(),
            ttl: ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(self.config.result_ttl),
        }
    }

    /// Writes results and disposes of messages in batches; retries forever
    /// on broker errors, so a result is never dropped while Redis is away.
    /// Returns how many messages were handed back.
    async fn finisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Completion>) -> u64 {
        const BATCH: usize = 512;
        let mut requeued = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let mut failures = 0;
            loop {
                match self.broker.complete(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        failures += 1;
                        let wait = reconnect_delay(failures);
                        tracing::warn!(error = %e, pending = batch.len(), retry_in = ?wait, "could not store results");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            let mut held = self.held();
            for c in batch.drain(..) {
                if matches!(c.disposition, Disposition::Requeue { .. }) {
                    requeued += 1;
                }
                held.remove(&(c.queue, c.delivery_id));
            }
        }
        requeued
    }

    /// Lease renewal, delayed-message promotion, reclaiming from dead
    /// workers, heartbeats and queue-depth metrics, each on its own clock.
    async fn keeper(
        self: Arc<Self>,
        stop: CancellationToken,
        reclaimed: mpsc::UnboundedSender<Delivery>,
    ) {
        let vt = self.config.visibility_timeout;
        let mut renew = tokio::time::interval((vt / 3).max(Duration::from_millis(50)));
        let mut promote = tokio::time::interval(Duration::from_millis(50));
        let mut reclaim = tokio::time::interval((vt / 2).max(Duration::from_millis(100)));
        let mut beat = tokio::time::interval(self.config.heartbeat);
        for t in [&mut renew, &mut promote, &mut reclaim, &mut beat] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = renew.tick() => {
                    let held: Vec<(String, String)> = self.held().iter().cloned().collect();
                    if let Err(e) = self.broker.renew(&self.config.id, &held).await {
                        tracing::warn!(error = %e, "lease renewal failed");
                    }
                }
                _ = promote.tick() => {
                    if let Err(e) = self.broker.promote_due(&self.config.queues, now_ms()).await {
                        tracing::debug!(error = %e, "promoting delayed messages failed");
                    }
                }
                _ = reclaim.tick() => self.reclaim(&reclaimed).await,
                _ = beat.tick() => {
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

    /// Take over messages whose holder stopped renewing them. They run here
    /// like fresh ones; the delivery count catches poison messages.
    async fn reclaim(&self, out: &mpsc::UnboundedSender<Delivery>) {
        let limit = (self.config.concurrency + self.config.prefetch).max(1) as usize;
        for q in &self.config.queues {
            let room = limit.saturating_sub(self.held().len());
            if room == 0 {
                return;
            }
            let reclaimed = match self
                .broker
                .reclaim(q, &self.config.id, self.config.visibility_timeout, room)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(queue = %q, error = %e, "reclaim failed");
                    continue;
                }
            };
            for d in reclaimed.deliveries {
                tracing::info!(queue = %q, delivery = %d.id, deliveries = d.deliveries, "reclaimed a message from an unresponsive worker");
                // Held from now on, so it is renewed while it waits for a slot.
                self.held().insert((d.queue.clone(), d.id.clone()));
                let _ = out.send(d);
            }
        }
    }
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
        result: None,
        disposition: Disposition::Requeue {
            payload: d.payload.clone(),
        },
    }
}

/// The `kind` stored in a failed record, and a retry delay the task asked for.
fn error_kind(e: &TaskError) -> (&'static str, Option<Duration>) {
    use crate::sandbox::FailureKind;
    match e {
        TaskError::Failed {
            kind, retry_after, ..
        } => (
            match kind {
                FailureKind::Retry => "retry",
                FailureKind::Fatal => "fatal",
                FailureKind::InvalidInput => "invalid-input",
            },
            *retry_after,
        ),
        TaskError::TimeLimit { .. } => ("time-limit", None),
        TaskError::FuelExhausted { .. } => ("fuel-exhausted", None),
        TaskError::MemoryLimit { .. } => ("memory-limit", None),
        TaskError::Trap(_) => ("trap", None),
        TaskError::Exited { .. } => ("exit", None),
        TaskError::Host(_) => ("host", None),
    }
}

/// 100 ms, 200 ms, … capped at 5 s, with jitter so a fleet of workers does
/// not reconnect in lockstep.
fn reconnect_delay(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    Duration::from_millis(base / 2 + fastrand::u64(..=base / 2))
}
