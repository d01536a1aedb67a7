//! `celeriac status`: queue depths (ready, delayed, in flight, dead) and
//! live workers with their health.

use std::process::ExitCode;

use serde_json::json;

use crate::common::BrokerArgs;
use crate::runtime;
use celeriac_protocol::now_ms;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let mut queues = Vec::new();
        for q in broker.queues().await? {
            queues.push(broker.queue_stats(&q).await?);
        }
        let workers = broker.workers().await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"queues": queues, "workers": workers}))?
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10}",
            "QUEUE", "READY", "DELAYED", "IN-FLIGHT", "DEAD"
        );
        for q in &queues {
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>10}",
                q.queue, q.ready, q.delayed, q.in_flight, q.dead
            );
        }
        println!();
        println!(
            "{:<36} {:<20} {:>6} {:>6} {:>10} {:>10}  HEALTH",
            "WORKER", "QUEUES", "SLOTS", "BUSY", "PROCESSED", "SEEN"
        );
        let now = now_ms();
        for w in &workers {
            println!(
                "{:<36} {:<20} {:>6} {:>6} {:>10} {:>9}s  {}",
                w.id,
                w.queues.join(","),
                w.concurrency,
                w.busy,
                w.processed,
                now.saturating_sub(w.seen_at) / 1000,
                w.problem.as_deref().unwrap_or("ok")
            );
        }
        if workers.is_empty() {
            println!("(no live workers)");
        }
        Ok(ExitCode::SUCCESS)
    })
}
