//! `celeriac components`: the uploaded modules, their digests, signers,
//! sizes, upload times and grants.

use std::process::ExitCode;

use crate::common::{BrokerArgs, time};
use crate::runtime;
use celeriac_protocol::units::format_size;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let modules = broker.list_modules().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&modules)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<16} {:<73} {:<12} {:>10}  {:<20} GRANTS",
            "MODULE", "DIGEST", "SIGNER", "SIZE", "UPLOADED"
        );
        for m in modules {
            println!(
                "{:<16} {:<73} {:<12} {:>10}  {:<20} {}",
                m.module,
                m.digest.to_string(),
                m.signer,
                format_size(m.size),
                time(m.uploaded_at),
                m.grants.summary()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
