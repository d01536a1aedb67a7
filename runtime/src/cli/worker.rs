use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::common::{BrokerArgs, LimitArgs};
use crate::broker;
use crate::client::validate_queue;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::signing::TrustStore;
use crate::units::parse_duration;
use crate::worker::{Backoff, Worker, WorkerConfig, default_worker_id, install_prometheus};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of trusted public keys: only components they signed run.
    #[arg(long, env = "CELERIAC_TRUST")]
    trust: PathBuf,
    /// Queues to consume, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    queues: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Messages held beyond the running ones.
    #[arg(long, default_value_t = 64)]
    prefetch: u32,
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
    /// Default limits for tasks whose messages set none.
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
    /// Worker id (default host-pid-random).
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    for q in &args.queues {
        validate_queue(q)?;
    }
    let trust = TrustStore::load(&args.trust)?;
    let concurrency = args.concurrency.max(1);
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        concurrency,
        ..SandboxConfig::default()
    })?);
    let config = WorkerConfig {
        id: args.id.clone().unwrap_or_else(default_worker_id),
        queues: args.queues.clone(),
        concurrency,
        prefetch: args.prefetch,
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
    };
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        if let Some(addr) = args.metrics {
            install_prometheus(addr)?;
            tracing::info!(%addr, "serving Prometheus metrics");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));

        // Wait for the broker rather than give up: a worker started before
        // Redis (or during a restart) should simply begin once it answers.
        let mut attempt = 0u32;
        let broker = loop {
            match broker::connect(&args.broker.broker, &args.broker.prefix).await {
                Ok(b) => break b,
                Err(e @ broker::BrokerError::Url { .. }) => return Err(e.into()),
                Err(e) => {
                    attempt += 1;
                    let wait = Duration::from_millis((200 * u64::from(attempt)).min(5_000));
                    tracing::warn!(broker = %broker::redact(&args.broker.broker), error = %e, retry_in = ?wait, "broker unreachable");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                    }
                }
            }
        };
        let worker = Worker::new(broker, sandbox, trust, config);
        let summary = worker.run(shutdown).await;
        tracing::info!(processed = summary.processed, handed_back = summary.requeued_on_shutdown, "worker stopped");
        Ok(ExitCode::SUCCESS)
    })
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
