//! `celeriac workflow FILE`: run a chain, group, chord, map or any nesting
//! of them described in JSON or TOML; prints its root id, or with `--wait`
//! its final result.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::common::{BrokerArgs, print_outcome};
use crate::settings::SettingsArgs;
use crate::{exit, runtime};
use celeriac_client::SubmitOptions;
use celeriac_client::workflow::{Defaults, Spec, run as launch};
use celeriac_protocol::units::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// Workflow file: .toml is read as TOML, anything else as JSON; `-`
    /// reads JSON from stdin. See the README's Workflows section.
    file: String,
    /// Wait for the final result and print it as `submit --wait` does
    /// (the root id goes to stderr).
    #[arg(long)]
    wait: bool,
    /// How long to wait.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s", requires = "wait")]
    wait_timeout: Duration,
    /// Queue for tasks that name none and match no route.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Priority for tasks that set none.
    #[arg(long, value_name = "0-9", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: u8,
    /// Retries for tasks that set none.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_retries: u32,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.settings.load()?;
    let text = if args.file == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file))?
    };
    let spec = Spec::parse(&text, args.file.ends_with(".toml"))?;
    celeriac_client::validate_queue(&args.queue)?;
    let defaults = Defaults {
        options: SubmitOptions {
            queue: args.queue.clone(),
            priority: args.priority,
            max_retries: args.max_retries,
            ..SubmitOptions::default()
        },
        routes: settings.routes,
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let running = launch(broker.as_ref(), &spec, &defaults).await?;
        if !args.wait {
            println!("{}", running.root_id);
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{}", running.root_id);
        let record =
            celeriac_client::wait(broker.as_ref(), &running.final_id, args.wait_timeout).await?;
        match record {
            Some(r) if r.state.is_final() => Ok(ExitCode::from(print_outcome(&r))),
            _ => {
                eprintln!(
                    "error: no result within {} (celeriac result {} shows its progress)",
                    humantime::format_duration(args.wait_timeout),
                    running.root_id
                );
                Ok(ExitCode::from(exit::TIMEOUT))
            }
        }
    })
}
