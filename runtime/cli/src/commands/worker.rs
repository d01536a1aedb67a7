//! `celeriac worker`: flags to a [`WorkerConfig`] and a sandbox, then run
//! until SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capabilities::PolicyArgs;
use crate::common::{BrokerArgs, LimitArgs};
use crate::settings::{CeleryTask, Settings, SettingsArgs};

use celeriac_client::validate_queue;
use celeriac_protocol::Backoff;
use celeriac_protocol::units::{parse_duration, parse_size};
use celeriac_sandbox::{Modules, ReusePolicy, Sandbox, SandboxConfig};
use celeriac_signing::TrustStore;
use celeriac_worker::{
    CeleryConfig, CeleryName, CeleryRouter, Worker, WorkerConfig, default_worker_id,
    install_prometheus, key_value,
};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of trusted public keys: only components they signed run.
    #[arg(long, env = "CELERIAC_TRUST")]
    trust: PathBuf,
    /// Queues to consume, comma-separated [default: default, unless Celery
    /// queues are given].
    #[arg(long, env = "CELERIAC_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Celery queues to consume as well (kombu's lists on the same Redis):
    /// tasks whose Celery name is `module.task` of an uploaded module, or
    /// mapped in the settings' [celery.tasks], run here; others stay for
    /// Celery's workers. Comma-separated; also [celery] queues.
    #[arg(
        long = "celery-queue",
        value_name = "QUEUE",
        env = "CELERIAC_CELERY_QUEUES",
        value_delimiter = ','
    )]
    celery_queues: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Most messages held beyond the running ones; fewer when tasks are
    /// long (about 50 ms of work per slot), none until the first finishes.
    #[arg(long, default_value_t = WorkerConfig::DEFAULT_PREFETCH)]
    prefetch: u32,
    /// Most bytes of messages held at once.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB")]
    prefetch_bytes: u64,
    /// Larger messages are dead-lettered unread.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    max_message_size: u64,
    /// A larger result (as JSON) fails the task instead of being stored.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    max_result_size: u64,
    /// Failure messages and dead-letter reasons are cut to this.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8KiB")]
    max_error_size: u64,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9187.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// A held message not renewed for this long goes to another worker.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s")]
    visibility_timeout: Duration,
    /// Deliveries after which a message that never completes is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u64,
    /// Time in-flight tasks get to finish after SIGTERM / Ctrl-C.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    grace: Duration,
    /// Result expiry when the message does not set one.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "24h")]
    result_ttl: Duration,
    /// Limits for tasks: the defaults, and ceilings no message can raise.
    #[command(flatten)]
    limits: LimitArgs,
    /// Delay before the first retry; doubles each time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "1s")]
    retry_backoff: Duration,
    /// Longest delay between retries.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10m")]
    retry_backoff_max: Duration,
    /// Use exact backoff delays instead of spreading them randomly.
    #[arg(long)]
    no_retry_jitter: bool,
    /// Record STARTED when a task starts (one more Redis write per task).
    #[arg(long)]
    track_started: bool,
    /// Compiled components kept in memory; the least recently used are
    /// dropped (and fetched, verified and loaded again when next needed).
    #[arg(long, value_name = "N", default_value_t = SandboxConfig::default().loaded_capacity)]
    max_components: usize,
    /// Size of the on-disk compile cache (CELERIAC_CACHE_DIR); the least
    /// recently used artifacts are evicted past it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "CELERIAC_CACHE_MAX_SIZE", default_value = "1GiB")]
    cache_max_size: u64,
    /// What tasks may reach over HTTP, and the configuration they may read.
    #[command(flatten)]
    policy: PolicyArgs,
    /// Modules whose instance may serve several tasks in a row, as a
    /// Celery pool process does, where their signature allows it too
    /// (`sign --reuse N`): comma-separated module names, or `*`. State a
    /// task leaves in the instance is seen by the module's next task.
    /// Default: none (a fresh instance for every task).
    #[arg(
        long,
        value_name = "MODULES",
        env = "CELERIAC_REUSE",
        default_value = ""
    )]
    reuse: Modules,
    /// Most tasks one instance serves before it is replaced, whatever its
    /// signature allows.
    #[arg(long, value_name = "N", default_value_t = ReusePolicy::DEFAULT_MAX_TASKS)]
    reuse_max_tasks: u32,
    /// An instance whose memory has grown past this is replaced after
    /// its task.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "128MiB")]
    reuse_max_memory: u64,
    /// Modules run without fuel metering (comma-separated, or `*`): their
    /// code runs 10-35 % faster, and only the time limit bounds their CPU.
    #[arg(
        long,
        value_name = "MODULES",
        env = "CELERIAC_NO_FUEL",
        default_value = ""
    )]
    no_fuel: Modules,
    /// Waiting this long ranks a message one priority level higher: a task
    /// runs before any task of a priority q levels higher that arrived more
    /// than q × this after it, so no priority starves.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, env = "CELERIAC_PRIORITY_AGING", default_value = "1s")]
    priority_aging: Duration,
    /// Worker id (default host-pid-random).
    #[arg(long)]
    id: Option<String>,
    /// Rate limits (and the settings file they may come from).
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.settings.load()?;
    let celery = celery_config(&args.celery_queues, &settings)?;
    if let Some(c) = &celery {
        // A Celery queue is consumed as the Celeriac queue of its name.
        for q in &c.queues {
            if !args.queues.contains(q) {
                args.queues.push(q.clone());
            }
        }
        if args.broker.broker.starts_with("memory://") {
            anyhow::bail!("Celery queues live in Redis: --celery-queue needs a redis:// broker");
        }
    } else if args.queues.is_empty() {
        args.queues.push("default".into());
    }
    for q in &args.queues {
        validate_queue(q)?;
    }
    if args.result_ttl.is_zero() {
        anyhow::bail!("--result-ttl must be at least 1s");
    }
    celeriac_protocol::message::bounds::check_result_ttl(args.result_ttl.as_secs().max(1))
        .map_err(anyhow::Error::msg)?;
    if args.visibility_timeout < Duration::from_secs(1) {
        anyhow::bail!("--visibility-timeout must be at least 1s");
    }
    let trust = TrustStore::load(&args.trust)?;
    let concurrency = args.concurrency.max(1);
    if args.max_components == 0 {
        anyhow::bail!("--max-components must be at least 1");
    }
    let task_config = args.policy.task_config()?;
    if !task_config.is_empty() {
        // Key names only: values may be secrets.
        let keys: Vec<&str> = task_config.keys().collect();
        tracing::info!(keys = %keys.join(" "), "task configuration loaded");
    }
    if !args.reuse.is_none() {
        tracing::info!(modules = %args.reuse, max_tasks = args.reuse_max_tasks,
            "instances of these modules serve several tasks where their signature allows it");
    }
    if !args.no_fuel.is_none() {
        tracing::info!(modules = %args.no_fuel, "running without fuel metering");
    }
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency,
        unmetered: args.no_fuel.clone(),
        reuse: ReusePolicy {
            modules: args.reuse.clone(),
            max_tasks: args.reuse_max_tasks,
            max_memory: args.reuse_max_memory,
        },
        loaded_capacity: args.max_components,
        cache_max_bytes: args.cache_max_size,
        http: args.policy.http_policy()?,
        task_config,
        ..SandboxConfig::default()
    })?;
    let config = WorkerConfig {
        id: args.id.clone().unwrap_or_else(default_worker_id),
        queues: args.queues.clone(),
        concurrency,
        prefetch: args.prefetch,
        prefetch_bytes: size_arg("--prefetch-bytes", args.prefetch_bytes, 1)?,
        max_message_bytes: size_arg("--max-message-size", args.max_message_size, 1024)?,
        max_result_bytes: size_arg("--max-result-size", args.max_result_size, 1024)?,
        max_error_bytes: size_arg("--max-error-size", args.max_error_size, 256)?,
        visibility_timeout: args.visibility_timeout,
        max_deliveries: args.max_deliveries.max(1),
        limits: args.limits.limits()?,
        result_ttl: args.result_ttl,
        backoff: Backoff {
            base: args.retry_backoff,
            max: args.retry_backoff_max,
            jitter: !args.no_retry_jitter,
        },
        grace: args.grace,
        heartbeat: Duration::from_secs(2),
        track_started: args.track_started,
        rate_limits: settings.rate_limits.into_iter().collect(),
        celery,
    };
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        if let Some(addr) = args.metrics {
            install_prometheus(addr)?;
            tracing::info!(%addr, "serving Prometheus metrics");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));

        // Wait for the broker rather than give up: a worker started before
        // Redis (or during a restart) simply begins once it answers.
        let options = celeriac_broker::BrokerOptions {
            priority_aging: args.priority_aging,
            ..args.broker.options()
        };
        let connected = celeriac_broker::connect_with_retry(
            &args.broker.broker,
            &args.broker.prefix,
            &options,
            &shutdown,
        )
        .await?;
        let Some(broker) = connected else {
            return Ok(ExitCode::SUCCESS);
        };
        // Tasks' key-value state lives beside the queue.
        let sandbox = Arc::new(sandbox.with_key_value(key_value(broker.clone())));
        let worker = Worker::new(broker, sandbox, trust, config);
        let summary = worker.run(shutdown).await;
        tracing::info!(
            processed = summary.processed,
            handed_back = summary.requeued_on_shutdown,
            "worker stopped"
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Celery interop from `--celery-queue` and the settings' `[celery]`;
/// `None` when neither names a queue.
fn celery_config(flags: &[String], settings: &Settings) -> anyhow::Result<Option<CeleryConfig>> {
    let section = settings.file.celery.as_ref();
    let mut queues: Vec<String> = flags.iter().map(|q| q.trim().to_string()).collect();
    for q in section.map(|s| s.queues.as_slice()).unwrap_or_default() {
        if !queues.contains(q) {
            queues.push(q.clone());
        }
    }
    if queues.is_empty() {
        if section.is_some_and(|s| !s.tasks.is_empty()) {
            anyhow::bail!("[celery] maps tasks but names no queue: add queues or --celery-queue");
        }
        return Ok(None);
    }
    let mut config = CeleryConfig {
        queues,
        ..CeleryConfig::default()
    };
    if let Some(s) = section {
        if let Some(e) = &s.result_expires {
            config.result_expires = parse_duration(e)
                .map_err(|err| anyhow::anyhow!("[celery] result_expires: {err}"))?;
            celeriac_protocol::message::bounds::check_result_ttl(config.result_expires.as_secs())
                .map_err(|err| anyhow::anyhow!("[celery] result_expires: {err}"))?;
        }
        if let Some(p) = &s.global_keyprefix {
            config.key_prefix = p.clone();
        }
        if let Some(n) = s.max_retries {
            config.max_retries = n.min(celeriac_protocol::bounds::MAX_RETRIES);
        }
        for (name, how) in &s.tasks {
            let (task, max_retries) = match how {
                CeleryTask::Task(t) => (t.clone(), None),
                CeleryTask::With(o) => (o.task.clone(), o.max_retries),
            };
            if !task
                .rsplit_once('.')
                .is_some_and(|(m, t)| !m.is_empty() && !t.is_empty())
            {
                anyhow::bail!("[celery.tasks] `{name}` = `{task}`: expected module.task");
            }
            config
                .names
                .insert(name.clone(), CeleryName { task, max_retries });
        }
    }
    let routes = settings.routes.clone();
    if !routes.is_empty() {
        config.router = Some(CeleryRouter(Arc::new(move |name: &str| {
            routes.queue_for(name).map(str::to_string)
        })));
    }
    Ok(Some(config))
}

/// A size flag within what Redis can store in one value (512 MiB) and at
/// least `min` bytes.
fn size_arg(flag: &str, value: u64, min: u64) -> anyhow::Result<usize> {
    const REDIS_MAX: u64 = 512 << 20;
    if value < min || value > REDIS_MAX {
        anyhow::bail!(
            "{flag} {} is out of range ({} to 512 MiB)",
            celeriac_protocol::units::format_size(value),
            celeriac_protocol::units::format_size(min)
        );
    }
    Ok(value as usize)
}

/// First SIGTERM / SIGINT: graceful shutdown. Second: quit now (held
/// messages go to other workers after the visibility timeout).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!(
        "shutdown requested: no new tasks; finishing in-flight ones (signal again to quit now)"
    );
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: quitting now");
    std::process::exit(130);
}
