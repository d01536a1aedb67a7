//! `celeriac result ID [--wait]`: a task's result record as JSON, or for
//! a workflow's root id its state, final result and every member's.

use std::process::ExitCode;
use std::time::Duration;

use crate::common::BrokerArgs;
use crate::{exit, runtime};
use celeriac_client::{result, wait, workflow};
use celeriac_protocol::units::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// Task id printed by `celeriac submit`.
    id: String,
    /// Wait until the task has finished.
    #[arg(long)]
    wait: bool,
    /// How long to wait.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s", requires = "wait")]
    wait_timeout: Duration,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        if let Some(status) = workflow::status(broker.as_ref(), &args.id).await? {
            let status = if args.wait && !status.state.is_final() {
                wait(broker.as_ref(), &status.final_id, args.wait_timeout).await?;
                workflow::status(broker.as_ref(), &args.id)
                    .await?
                    .unwrap_or(status)
            } else {
                status
            };
            println!("{}", serde_json::to_string_pretty(&status)?);
            if args.wait && !status.state.is_final() {
                eprintln!(
                    "error: workflow {} not finished within {}",
                    args.id,
                    humantime::format_duration(args.wait_timeout)
                );
                return Ok(ExitCode::from(exit::TIMEOUT));
            }
            return Ok(ExitCode::SUCCESS);
        }
        let record = if args.wait {
            wait(broker.as_ref(), &args.id, args.wait_timeout).await?
        } else {
            result(broker.as_ref(), &args.id).await?
        };
        // Celery's answer too: unknown ids are PENDING.
        let (text, finished) = match &record {
            Some(r) => (serde_json::to_string_pretty(r)?, r.state.is_final()),
            None => (
                serde_json::json!({"id": args.id, "state": "PENDING"}).to_string(),
                false,
            ),
        };
        println!("{text}");
        if args.wait && !finished {
            eprintln!(
                "error: task {} not finished within {}",
                args.id,
                humantime::format_duration(args.wait_timeout)
            );
            return Ok(ExitCode::from(exit::TIMEOUT));
        }
        Ok(ExitCode::SUCCESS)
    })
}
