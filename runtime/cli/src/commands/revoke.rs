//! `celeriac revoke ID… [--terminate]`: tasks (or whole workflows, by
//! root id) that must not run; with `--terminate`, running ones stop too.

use std::process::ExitCode;
use std::time::Duration;

use crate::common::BrokerArgs;
use crate::runtime;
use celeriac_protocol::units::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// Task ids, or workflow root ids (revokes every task of the workflow
    /// that has not run yet).
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// Also stop the ones running now (recorded REVOKED).
    #[arg(long)]
    terminate: bool,
    /// How long the revocation is kept: a task queued or delayed longer
    /// than this runs after all.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "7d")]
    ttl: Duration,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.ttl < Duration::from_secs(1) {
        anyhow::bail!("--ttl must be at least 1s");
    }
    for id in &args.ids {
        if id.is_empty() || id.len() > celeriac_protocol::bounds::MAX_ID_LEN {
            anyhow::bail!("task id `{id}` must be 1 to 200 characters");
        }
    }
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        broker.revoke(&args.ids, args.ttl, args.terminate).await?;
        eprintln!(
            "revoked {} id(s) for {}{}",
            args.ids.len(),
            humantime::format_duration(args.ttl),
            if args.terminate {
                "; running ones are being stopped"
            } else {
                ""
            }
        );
        Ok(ExitCode::SUCCESS)
    })
}
