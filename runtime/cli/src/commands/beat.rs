//! `celeriac beat`: fire the periodic tasks of the settings file's
//! `[beat.NAME]` tables; any number may run, exactly one fires each run.
//! `--list` shows the schedules and their next runs.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::common::{BrokerArgs, time};
use crate::runtime;
use crate::settings::SettingsArgs;
use celeriac_client::SubmitOptions;
use celeriac_client::beat::{Beat, Entry, Missed, upcoming};
use celeriac_client::workflow::Defaults;
use celeriac_protocol::units::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// Show each entry's schedule and next runs, and exit.
    #[arg(long)]
    list: bool,
    /// This process's name in the lease (default host-pid-random).
    #[arg(long)]
    id: Option<String>,
    /// How long the lead lasts without renewal: after a leader dies,
    /// another takes over within this (renewed every third of it).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "3s", env = "CELERIAC_BEAT_LEASE")]
    lease: Duration,
    /// A run late by more than this is missed (then an entry's `missed`
    /// policy applies: catch-up fires once, skip fires none).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10s", env = "CELERIAC_BEAT_GRACE")]
    grace: Duration,
    /// Queue for entries that name none and match no route.
    #[arg(long, default_value = "default")]
    queue: String,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.settings.load()?;
    let mut entries = Vec::new();
    for (name, table) in &settings.file.beat {
        let value = serde_json::to_value(table)?;
        entries.push(Entry::from_value(name, &value).map_err(anyhow::Error::msg)?);
    }
    if entries.is_empty() {
        let file = settings
            .path
            .as_ref()
            .map_or("no settings file".to_string(), |p| p.display().to_string());
        anyhow::bail!("no periodic tasks: add [beat.NAME] tables to celeriac.toml ({file})");
    }
    if args.lease < Duration::from_millis(300) {
        anyhow::bail!("--lease must be at least 300ms");
    }
    celeriac_client::validate_queue(&args.queue)?;
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        if args.list {
            let now = celeriac_protocol::now_ms();
            let next = upcoming(&entries, now, 3);
            for e in &entries {
                let last = broker
                    .beat_last(&e.name)
                    .await?
                    .map_or_else(|| "never (not yet tracked)".to_string(), time);
                let runs: Vec<String> = next[&e.name].iter().map(|t| time(*t)).collect();
                println!(
                    "{:<20} {:<24} {}  missed: {}\n{:<20} last run {}; next {}",
                    e.name,
                    e.task.task,
                    e.schedule,
                    if e.missed == Missed::Skip {
                        "skip"
                    } else {
                        "catch-up"
                    },
                    "",
                    last,
                    runs.join(", ")
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let beat = Beat {
            entries,
            holder: args
                .id
                .clone()
                .unwrap_or_else(celeriac_worker::default_worker_id),
            lease: args.lease,
            grace: args.grace,
            defaults: Defaults {
                options: SubmitOptions {
                    queue: args.queue.clone(),
                    ..SubmitOptions::default()
                },
                routes: settings.routes,
            },
        };
        tracing::info!(holder = %beat.holder, entries = beat.entries.len(), "beat started");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal as on};
            if let (Ok(mut term), Ok(mut int)) =
                (on(SignalKind::terminate()), on(SignalKind::interrupt()))
            {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            signal.cancel();
        });
        beat.run(broker.as_ref(), &stop).await?;
        tracing::info!("beat stopped");
        Ok(ExitCode::SUCCESS)
    })
}
