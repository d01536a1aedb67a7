//! `celeriac events`: the live stream of task and worker events, as
//! `celery events` shows it; filtered by task, type and queue, as lines or
//! JSON (one event per line).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::common::BrokerArgs;
use crate::runtime;
use celeriac_broker::retry::Reconnect;
use celeriac_client::events::Tail;
use celeriac_protocol::{Event, EventFilter};

#[derive(clap::Args)]
pub struct Args {
    /// Only this task: an id, a task name (`math.add`) or a module (`math`).
    #[arg(long)]
    task: Option<String>,
    /// Only these types, comma-separated: sent, received, started,
    /// succeeded, failed, retried, revoked, rejected, dead-lettered,
    /// worker-online, worker-heartbeat, worker-offline.
    #[arg(long, value_name = "TYPES", value_parser = EventFilter::parse_kinds)]
    state: Option<Vec<celeriac_protocol::EventKind>>,
    /// Only events of this queue (leaves out worker events).
    #[arg(long)]
    queue: Option<String>,
    /// Leave out worker heartbeats, online and offline.
    #[arg(long)]
    tasks_only: bool,
    /// Show the latest N matching events first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    last: usize,
    /// Stop after N events (counting those of --last).
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Print the --last events and stop instead of following.
    #[arg(long)]
    no_follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let filter = EventFilter {
        task: args.task.clone(),
        kinds: args.state.clone().unwrap_or_default(),
        queue: args.queue.clone(),
        tasks_only: args.tasks_only,
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        if !broker.events_enabled() {
            anyhow::bail!("events are off (CELERIAC_EVENTS=off): nothing to show");
        }
        let mut out = std::io::stdout().lock();
        let mut left = args.count.unwrap_or(usize::MAX);
        let (replayed, mut tail) = Tail::start(broker.as_ref(), args.last, &filter).await?;
        left = print(&mut out, &replayed, args.json, left)?;
        if args.no_follow || left == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        let mut reconnect = Reconnect::new();
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            let read = tokio::select! {
                r = tail.next(broker.as_ref(), &filter, Duration::from_secs(5)) => r,
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            };
            match read {
                Ok(events) => {
                    reconnect.succeeded();
                    left = print(&mut out, &events, args.json, left)?;
                    if left == 0 {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                Err(e) => {
                    let wait = reconnect.failed();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read events");
                    eprintln!("events: {e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    })
}

/// Print up to `left` events; returns how many more may be printed.
fn print(
    out: &mut impl Write,
    events: &[Event],
    json: bool,
    mut left: usize,
) -> anyhow::Result<usize> {
    for e in events {
        if left == 0 {
            break;
        }
        if json {
            writeln!(out, "{}", e.to_json())?;
        } else {
            writeln!(out, "{}", e.line())?;
        }
        left -= 1;
    }
    out.flush()?;
    Ok(left)
}
