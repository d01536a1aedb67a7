//! The worker: pulls messages, runs the component each one pins, writes
//! the result and only then acknowledges (acks late).
//!
//! Tasks inside one worker process:
//! - the fetch loop (in [`Worker::run`]) keeps messages in hand, paced by
//!   count ([`pacing`]) and by bytes, and spawns one future per message;
//!   `concurrency` of them run at a time, taken-over ones first ([`slots`]);
//! - each message goes admit ([`admit`]: size, parse, validation, poison,
//!   expiry, eta) -> resolve the component ([`components`]) -> run (the
//!   sandbox) -> settle ([`settle`]); admit and settle are pure functions
//!   of the message, what happened and the [`WorkerConfig`];
//! - the finisher writes results and acks in batches, telling failures
//!   Redis will repeat from those that pass ([`finisher`]);
//! - the lease keeper renews what this worker holds, and only that; the
//!   keeper promotes due delayed messages, takes over messages of dead
//!   workers ([`leases`]), prunes their consumers and sends heartbeats
//!   ([`keeper`]).

mod admit;
mod celery;
mod components;
mod config;
mod events;
mod finisher;
mod flow;
mod keeper;
mod kv;
mod leases;
mod metrics;
mod pacing;
mod revocations;
mod settle;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use celery::{CeleryConfig, CeleryName, CeleryRouter};
use config::hostname;
pub use config::{WorkerConfig, WorkerSummary, default_worker_id};
pub use kv::key_value;
pub use metrics::{MetricsError, install_prometheus};

use admit::{Admission, Admitted, Turned, admit};
use celeriac_broker::retry::{Reconnect, until_ok};
use celeriac_broker::{Broker, Completion, Delivery, Disposition, FetchLimits};
use celeriac_protocol::EventKind;
use celeriac_protocol::now_ms;
use celeriac_protocol::record::TaskState;
use celeriac_protocol::text::clip;
use celeriac_protocol::workflow::JoinMessage;
use celeriac_sandbox::{Sandbox, TaskCall};
use celeriac_signing::TrustStore;
use components::{ComponentCache, LoadError};
use finisher::StoreHealth;
use settle::{Ran, Verdict};
use slots::{Lane, Slots};

pub struct Worker {
    broker: Arc<dyn Broker>,
    sandbox: Arc<Sandbox>,
    components: ComponentCache,
    config: WorkerConfig,
    /// (queue, delivery id) of every message this worker holds, with when
    /// its lease was last confirmed (delivered, taken over or renewed).
    held: Mutex<HashMap<(String, String), Instant>>,
    /// Bytes of the messages held.
    held_bytes: AtomicUsize,
    busy: AtomicU32,
    processed: AtomicU64,
    mean_runtime: pacing::MeanRuntime,
    store: StoreHealth,
    /// Every priority level of every queue consumed, highest first.
    levels: Vec<String>,
    revocations: Arc<revocations::Revocations>,
    started_at: u64,
    host: String,
    events: events::Emitter,
}

impl Worker {
    pub fn new(
        broker: Arc<dyn Broker>,
        sandbox: Arc<Sandbox>,
        trust: TrustStore,
        config: WorkerConfig,
    ) -> Arc<Self> {
        let levels = config
            .queues
            .iter()
            .flat_map(|q| celeriac_protocol::message::levels(q))
            .collect();
        Arc::new(Self {
            components: ComponentCache::new(broker.clone(), sandbox.clone(), trust),
            broker,
            sandbox,
            config,
            held: Mutex::new(HashMap::new()),
            held_bytes: AtomicUsize::new(0),
            busy: AtomicU32::new(0),
            processed: AtomicU64::new(0),
            mean_runtime: Default::default(),
            store: StoreHealth::default(),
            levels,
            revocations: Default::default(),
            started_at: now_ms(),
            host: hostname(),
            events: Default::default(),
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Tasks run so far (each call of a map counted once per message).
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Components this worker keeps compiled (at most the sandbox's
    /// `loaded_capacity`).
    pub fn cached_components(&self) -> usize {
        self.components.len()
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
        let emitter = self.events.start(self.broker.clone());
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
        // Revocations before the first fetch: a revoked task in the queue
        // must not slip through while they load.
        let _ = until_ok(
            "cannot read revocations",
            &shutdown,
            |_| true,
            || self.revocations.load(self.broker.as_ref()),
        )
        .await;
        let revokes = tokio::spawn(
            self.revocations
                .clone()
                .keep(self.broker.clone(), keeper_stop.clone()),
        );
        // Celery messages are taken only while this worker takes work.
        let ingress = tokio::spawn(self.clone().celery_ingress(shutdown.clone()));
        tracing::info!(worker = %self.config.id, queues = ?self.config.queues, concurrency = self.config.concurrency, broker = %self.broker.describe(), "worker started");

        let concurrency = self.config.concurrency.max(1) as usize;
        let mut reconnect = Reconnect::new();
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
                    &self.levels,
                    &self.config.id,
                    limits,
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(deliveries) => {
                    reconnect.succeeded();
                    for d in deliveries {
                        self.spawn_delivery(&mut tasks, d, Lane::Normal, &slots, &tokens, &done_tx);
                    }
                }
                Err(e) => {
                    // Redis restarting or unreachable: back off and go on;
                    // the connection is re-established underneath.
                    let wait = reconnect.failed();
                    tracing::warn!(error = %e, retry_in = ?wait, "fetch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tokens.fetch_stopped.cancel();
        let _ = ingress.await;
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
        let _ = revokes.await;
        // Anything taken over while shutting down goes straight back.
        while let Ok(d) = reclaimed_rx.try_recv() {
            self.spawn_delivery(&mut tasks, d, Lane::First, &slots, &tokens, &done_tx);
        }
        while tasks.join_next().await.is_some() {}
        drop(done_tx);
        let requeued = finisher.await.unwrap_or(0);
        for q in &self.levels {
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
        let offline = events::of_worker(EventKind::WorkerOffline, &self.info(), now_ms());
        self.events.send(&offline);
        self.events.close();
        if let Some(emitter) = emitter {
            let _ = emitter.await;
        }
        WorkerSummary {
            processed: self.processed.load(Ordering::Relaxed),
            requeued_on_shutdown: requeued,
        }
    }

    async fn declare_with_retry(&self, shutdown: &CancellationToken) {
        // Every error is waited out: only a shutdown ends the wait.
        let _ = until_ok(
            "cannot declare queues",
            shutdown,
            |_| true,
            || self.broker.declare(&self.levels),
        )
        .await;
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
                        _ = stop_running.cancelled() => settle::requeue(&delivery),
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
                    settle::requeue(&delivery)
                }
            };
            // Results and dead letters are bounded; the message itself is
            // released here (the completion shares it only if it stores it).
            this.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let _ = done.send(completion);
        });
    }

    /// admit -> resolve -> run -> settle. Never panics on input: every bad
    /// message ends as a dead letter with the reason.
    async fn process(&self, delivery: &Delivery) -> Completion {
        let now = now_ms();
        let events_on = self.broker.events_enabled();
        // Received and started, recorded with the outcome (so in order)
        // unless the task runs long enough to show them live first.
        let mut early: Vec<celeriac_protocol::Event> = Vec::new();
        let (admission, celery) =
            if celery::is_envelope(&delivery.payload) && !delivery.is_oversize() {
                self.admit_celery(delivery, now).await
            } else {
                (admit(delivery, &self.config, now), None)
            };
        let (msg, verdict) = match admission {
            Admission::Run(task) if self.revocations.is_revoked(&task.msg) => {
                let _span = task_span(&task.msg).entered();
                tracing::info!("revoked: not run");
                let verdict =
                    settle::revoked(&task.msg, "revoked before it ran", &self.config, now_ms());
                (Some(task.msg), verdict)
            }
            Admission::Run(task) => {
                if events_on {
                    let received =
                        events::about(EventKind::Received, &task.msg, &self.config.id, now);
                    early.push(received.with_args(&task.msg));
                }
                let span = task_span(&task.msg);
                let verdict = self
                    .resolve_and_run(&task, celery.as_deref(), &mut early)
                    .instrument(span)
                    .await;
                (Some(task.msg), verdict)
            }
            Admission::Join(join) => {
                let span = tracing::info_span!("join", group = %join.join, root_id = join.root_id.as_deref());
                return self.join(delivery, &join).instrument(span).await;
            }
            Admission::Turned {
                why,
                reason,
                msg,
                verdict,
            } => {
                log_turned(why, &reason, msg.as_deref(), &delivery.queue);
                (msg.map(|m| *m), verdict)
            }
        };
        let task = msg.as_ref().map_or("?", |m| m.task.as_str());
        metrics::task_finished(task, verdict.label());
        let events_on = self.broker.events_enabled();
        let mut recorded: Vec<String> = if events_on {
            let now = now_ms();
            let outcome = events::outcome(
                msg.as_ref(),
                &verdict,
                &delivery.queue,
                &self.config.id,
                now,
            );
            early.iter().chain(&outcome).map(|e| e.to_json()).collect()
        } else {
            Vec::new()
        };
        let mut completion = if let Some(inbound) = celery {
            let origin = format!("celeriac@{}", self.host);
            celery::completion(delivery, verdict, &inbound, &self.config, &origin, now_ms())
        } else {
            let effects = msg.as_ref().map_or_else(Default::default, |m| {
                flow::after_task(m, &verdict, &self.config, now_ms())
            });
            settle::completion(delivery, verdict, msg.as_ref(), &self.config, effects)
        };
        if events_on {
            recorded.extend(events::launched(&completion.effects, now_ms()));
        }
        // Recorded only if the ack is: a completion that loses its lease
        // leaves no event of a fate that did not happen.
        completion.effects.events = recorded;
        completion
    }

    /// This worker as its heartbeat shows it.
    fn info(&self) -> celeriac_broker::WorkerInfo {
        celeriac_broker::WorkerInfo {
            id: self.config.id.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            queues: self.config.queues.clone(),
            concurrency: self.config.concurrency,
            busy: self.busy.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            started_at: self.started_at,
            seen_at: now_ms(),
            problem: self.problem(),
        }
    }

    /// A group's join: read what its members reported and carry the
    /// workflow on (see `flow`), atomically with the ack.
    async fn join(&self, delivery: &Delivery, join: &JoinMessage) -> Completion {
        let group = match self.broker.group(&join.join).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the group; requeueing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return settle::requeue(delivery);
            }
        };
        let effects = flow::after_join(join, group.as_ref(), &self.config, now_ms());
        tracing::info!(launched = effects.launch.len(), "group joined");
        settle::acked_with(delivery, effects)
    }

    async fn resolve_and_run(
        &self,
        task: &Admitted,
        celery: Option<&celeriac_protocol::celery::Inbound>,
        early: &mut Vec<celeriac_protocol::Event>,
    ) -> Verdict {
        let msg = &task.msg;
        // Only a component a trusted key signed as this module comes back.
        let component = match self.components.get(&msg.digest, task.module()).await {
            Ok(c) => c,
            Err(e) => {
                match &e {
                    LoadError::Transient(why) => {
                        tracing::warn!(error = %why, "could not fetch component; requeueing");
                        // Not straight back: the broker is struggling.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    LoadError::Refused(reason) => {
                        tracing::warn!(%reason, "dead-lettering: component refused");
                    }
                }
                return settle::unresolved(msg, &e, &self.config, now_ms());
            }
        };

        if let Some(every) = self.config.rate_limits.get(&msg.task) {
            // Over the limit: back to the broker until its reserved turn,
            // holding no slot meanwhile. Checked last before the run, so
            // that time spent loading the component cannot bunch starts.
            match self.broker.rate_acquire(&msg.task, &msg.id, *every).await {
                Ok(wait) if wait > Duration::from_millis(2) => {
                    tracing::debug!(?wait, "rate limited");
                    return settle::delayed(msg, now_ms() + celeriac_protocol::clock::millis(wait));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not check the rate limit; requeueing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return settle::unresolved(
                        msg,
                        &LoadError::Transient(e.to_string()),
                        &self.config,
                        now_ms(),
                    );
                }
            }
        }
        let call = TaskCall {
            id: msg.id.clone(),
            module: task.module().to_string(),
            name: task.name().to_string(),
            // The producer's JSON text, as it came.
            args: msg.args.get().to_string(),
            kwargs: msg.kwargs.get().to_string(),
            retries: msg.retries,
            max_retries: msg.max_retries,
            grants: component.grants.clone(),
        };
        let limits = settle::effective_limits(&self.config.limits, msg);
        let started_at = now_ms();
        if self.config.track_started && !msg.ignore_result {
            let stored = match celery {
                // Where Celery's backend keeps it, as its task_track_started.
                Some(inbound) => {
                    let started = celery::started(inbound, &self.config, started_at);
                    self.broker.apply(&started).await
                }
                None => {
                    let started = settle::Record {
                        started_at: Some(started_at),
                        finished_at: None,
                        ..settle::record(msg, TaskState::Started, &self.config, started_at)
                    };
                    let write = settle::result_write(&started, msg.result_ttl, &self.config);
                    self.broker.set_result(&write).await
                }
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not record STARTED");
            }
        }
        if self.broker.events_enabled() {
            early.push(events::about(
                EventKind::Started,
                msg,
                &self.config.id,
                started_at,
            ));
        }
        let running = self.revocations.start(msg);
        let run = async {
            match &msg.map {
                None => self.sandbox.run(&component.loaded, &call, &limits).await,
                Some(map) => map_calls(&self.sandbox, &component.loaded, call, map, &limits).await,
            }
        };
        // A terminating revoke drops the run: the guest yields at every
        // epoch tick, so it stops within one, its store torn down whole.
        let report = {
            tokio::pin!(run);
            let live_after = tokio::time::sleep(events::LIVE_AFTER);
            tokio::pin!(live_after);
            loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = running.stop.cancelled() => {
                        self.processed.fetch_add(1, Ordering::Relaxed);
                        return settle::revoked(msg, "terminated by revoke while running", &self.config, now_ms());
                    }
                    // Still running: show it received and started now, before
                    // its outcome can be recorded.
                    _ = &mut live_after, if !early.is_empty() => {
                        let json: Vec<String> = early.drain(..).map(|e| e.to_json()).collect();
                        let sent = tokio::time::timeout(Duration::from_millis(500), self.broker.emit(&json));
                        if !matches!(sent.await, Ok(Ok(()))) {
                            tracing::debug!("could not record the started event");
                        }
                    }
                }
            }
        };
        drop(running);
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.mean_runtime.record(report.elapsed);
        metrics::task_ran(&msg.task, report.elapsed, report.fuel_consumed);

        let ran = Ran {
            outcome: report.result,
            elapsed: report.elapsed,
            fuel: report.fuel_consumed,
            limits,
            started_at,
            instance_use: report.instance_use,
        };
        let verdict = settle::ran(msg, ran, &self.config, now_ms());
        log_settled(&verdict, report.elapsed);
        verdict
    }
}

/// A task's span: its id, name and place in its workflow on every line.
fn task_span(m: &celeriac_protocol::TaskMessage) -> tracing::Span {
    tracing::info_span!("task", task_id = %m.id, task = %m.task, retries = m.retries,
        root_id = m.root_id.as_deref(), parent_id = m.parent_id.as_deref())
}

/// A map / starmap message: the task once per item, each in a fresh
/// instance under the message's limits; the result is the list of
/// results, or the first failure (naming its item).
async fn map_calls(
    sandbox: &Sandbox,
    component: &celeriac_sandbox::LoadedComponent,
    mut call: TaskCall,
    map: &celeriac_protocol::workflow::MapCall,
    limits: &celeriac_sandbox::Limits,
) -> celeriac_sandbox::TaskReport {
    let started = Instant::now();
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_str(map.items.get()) {
        Ok(items) => items,
        Err(e) => {
            let e = celeriac_sandbox::TaskError::Failed {
                kind: celeriac_sandbox::FailureKind::InvalidInput,
                message: format!("map items are not a JSON array: {e}"),
                retry_after: None,
            };
            return celeriac_sandbox::TaskReport::of(Err(e), Duration::ZERO, None);
        }
    };
    let mut results = Vec::with_capacity(items.len());
    let mut fuel = 0u64;
    let mut first_use = 0;
    for (i, item) in items.iter().enumerate() {
        call.args = if map.star {
            item.get().to_string()
        } else {
            format!("[{}]", item.get())
        };
        let mut report = sandbox.run(component, &call, limits).await;
        fuel = fuel.saturating_add(report.fuel_consumed.unwrap_or(0));
        if i == 0 {
            first_use = report.instance_use;
        }
        match report.result {
            Ok(json) => results.push(json),
            Err(e) => {
                report.result = Err(e.in_item(i));
                report.elapsed = started.elapsed();
                return report;
            }
        }
    }
    // Whether the map started in a fresh instance (later items may reuse it).
    celeriac_sandbox::TaskReport {
        instance_use: first_use,
        ..celeriac_sandbox::TaskReport::of(
            Ok(format!("[{}]", results.join(","))),
            started.elapsed(),
            Some(fuel),
        )
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

/// Log a delivery settled without running, in its task's span when it has one.
fn log_turned(
    why: Turned,
    reason: &str,
    msg: Option<&celeriac_protocol::TaskMessage>,
    queue: &str,
) {
    let span = msg.map(task_span);
    let _entered = span.as_ref().map(|s| s.enter());
    match why {
        Turned::Oversize => tracing::warn!(%queue, %reason, "dead-lettering unread message"),
        Turned::Malformed => {
            tracing::warn!(%queue, error = %clip(reason, 200), "dead-lettering malformed message")
        }
        Turned::Poison => tracing::warn!(%reason, "dead-lettering poison message"),
        Turned::Expired => tracing::info!(%reason, "revoked"),
        Turned::Early => tracing::debug!(%reason, "early: back to wait for its eta"),
        Turned::Unavailable => tracing::warn!(%reason, "requeueing: cannot read what it needs"),
    }
}

/// Log what became of a task that ran.
fn log_settled(verdict: &Verdict, elapsed: Duration) {
    if let Some(r) = &verdict.record {
        match (&r.state, &r.error) {
            (TaskState::Success, _) => tracing::debug!(runtime = ?elapsed, "succeeded"),
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
}
