//! `celeriac submit`: queue one task with its options; prints its id, or
//! with `--wait` its result.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::common::{BrokerArgs, parse_call_json, print_outcome};
use crate::{exit, runtime};
use celeriac_client::{SubmitOptions, TaskRequest, submit, submit_and_wait_with};
use celeriac_protocol::MessageLimits;
use celeriac_protocol::clock::millis;
use celeriac_protocol::units::{parse_duration, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Task to run: `module.task`.
    task: String,
    /// Positional arguments as a JSON array.
    #[arg(value_name = "ARGS_JSON", default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    kwargs: String,
    /// Queue to put it on.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Run no earlier than this long from now.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, conflicts_with = "eta")]
    countdown: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2026-11-24T18:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    eta: Option<SystemTime>,
    /// Do not run if it cannot start within this long: recorded as REVOKED.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Retries allowed for retry failures and traps.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_retries: u32,
    /// Hard time limit (worker default if unset).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Soft time limit.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    soft_timeout: Option<Duration>,
    /// Fuel budget.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Memory limit for the task as a whole.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// How long the result is kept (worker default 24h).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    result_ttl: Option<Duration>,
    /// Store no result.
    #[arg(long, conflicts_with = "wait")]
    ignore_result: bool,
    /// Wait for the result and print it as `celeriac run` does.
    #[arg(long)]
    wait: bool,
    /// How long to wait.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s", requires = "wait")]
    wait_timeout: Duration,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("invalid time `{s}`: {e} (example: 2026-11-24T18:00:00Z)"))
}

/// `now + d`, refusing a duration so long the clock cannot hold it.
fn from_now(now: SystemTime, d: Duration, flag: &str) -> anyhow::Result<SystemTime> {
    now.checked_add(d)
        .ok_or_else(|| anyhow::anyhow!("{flag} is out of range: more than 365 days ahead"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (positional, kwargs) = parse_call_json(&args.args, &args.kwargs)?;
    let now = SystemTime::now();
    let countdown = args
        .countdown
        .map(|d| from_now(now, d, "--countdown"))
        .transpose()?;
    let options = SubmitOptions {
        queue: args.queue.clone(),
        eta: args.eta.or(countdown),
        expires: args
            .expires
            .map(|d| from_now(now, d, "--expires"))
            .transpose()?,
        max_retries: args.max_retries,
        limits: MessageLimits {
            timeout_ms: args.timeout.map(millis),
            soft_timeout_ms: args.soft_timeout.map(millis),
            fuel: args.fuel,
            memory: args.memory,
        },
        result_ttl: args.result_ttl,
        ignore_result: args.ignore_result,
    };
    let request = TaskRequest {
        task: args.task.clone(),
        args: positional,
        kwargs,
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        if !args.wait {
            let id = submit(broker.as_ref(), request, &options).await?;
            println!("{id}");
            return Ok(ExitCode::SUCCESS);
        }
        // The id goes to stderr at once: if the wait fails, the caller can
        // still fetch the result later with `celeriac result ID`.
        let (id, record) = submit_and_wait_with(
            broker.as_ref(),
            request,
            &options,
            args.wait_timeout,
            |id| eprintln!("{id}"),
        )
        .await?;
        match record {
            Some(record) if record.state.is_final() => Ok(ExitCode::from(print_outcome(&record))),
            other => {
                let state = other.map_or("PENDING".to_string(), |r| {
                    format!("{:?}", r.state).to_uppercase()
                });
                eprintln!(
                    "error: no result within {} (task {id} is {state})",
                    humantime::format_duration(args.wait_timeout)
                );
                Ok(ExitCode::from(exit::TIMEOUT))
            }
        }
    })
}
