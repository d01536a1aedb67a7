//! `celeriac submit`: queue one task with its options; prints its id, or
//! with `--wait` its result. `--batch FILE` queues many (JSON lines) in one
//! round trip and prints their ids.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::common::{BrokerArgs, parse_call_json, print_outcome};
use crate::settings::SettingsArgs;
use crate::{exit, runtime};
use celeriac_client::workflow::{Defaults, TaskSpec};
use celeriac_client::{
    ClientError, SubmitOptions, TaskRequest, Unique, submit, submit_and_wait_with, submit_batch,
};
use celeriac_protocol::MessageLimits;
use celeriac_protocol::clock::millis;
use celeriac_protocol::units::{parse_duration, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Task to run: `module.task`.
    #[arg(required_unless_present = "batch")]
    task: Option<String>,
    /// Positional arguments as a JSON array.
    #[arg(value_name = "ARGS_JSON", default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    kwargs: String,
    /// Queue many tasks from FILE (`-` for stdin), one JSON object per
    /// line: {"task": "math.add", "args": [1, 2]} plus any of kwargs,
    /// queue, priority, countdown, expires, max_retries, timeout,
    /// soft_timeout, fuel, memory, result_ttl. Flags give the defaults.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["task", "wait", "unique_key"])]
    batch: Option<String>,
    /// Queue to put it on (default: the first matching route, else `default`).
    #[arg(long)]
    queue: Option<String>,
    /// 0 (default) to 9; higher runs first within its queue.
    #[arg(long, value_name = "0-9", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: u8,
    /// Drop this submission if a task submitted with the same key is still
    /// queued or running (prints that task's id instead).
    #[arg(long, value_name = "KEY")]
    unique_key: Option<String>,
    /// Longest the key is held, should its task never finish.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "1h", requires = "unique_key")]
    unique_for: Duration,
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
    settings: SettingsArgs,
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
    let settings = args.settings.load()?;
    let now = SystemTime::now();
    let countdown = args
        .countdown
        .map(|d| from_now(now, d, "--countdown"))
        .transpose()?;
    if let Some(key) = &args.unique_key
        && (key.is_empty() || key.len() > celeriac_protocol::bounds::MAX_ID_LEN)
    {
        anyhow::bail!("--unique-key must be 1 to 200 characters");
    }
    let options = SubmitOptions {
        queue: args.queue.clone().unwrap_or_else(|| "default".into()),
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
        priority: args.priority,
        unique: args.unique_key.clone().map(|key| Unique {
            key,
            ttl: args.unique_for,
        }),
    };
    // An explicit --queue wins; otherwise the routes decide.
    let defaults = Defaults {
        options,
        routes: if args.queue.is_some() {
            Default::default()
        } else {
            settings.routes
        },
    };
    if let Some(file) = &args.batch {
        return batch(&args, file, &defaults, now);
    }
    let task = args.task.clone().unwrap_or_default();
    let (positional, kwargs) = parse_call_json(&args.args, &args.kwargs)?;
    let mut options = defaults.options.clone();
    if let Some(q) = defaults.routes.queue_for(&task) {
        options.queue = q.to_string();
    }
    let request = TaskRequest {
        task,
        args: positional,
        kwargs,
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        if !args.wait {
            match submit(broker.as_ref(), request, &options).await {
                Ok(id) => println!("{id}"),
                Err(ClientError::Duplicate { key, holder }) => {
                    eprintln!("duplicate: task {holder} holds unique key `{key}`; not queued");
                    println!("{holder}");
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        // The id goes to stderr at once: if the wait fails, the caller can
        // still fetch the result later with `celeriac result ID`.
        let waited = submit_and_wait_with(
            broker.as_ref(),
            request,
            &options,
            args.wait_timeout,
            |id| eprintln!("{id}"),
        )
        .await;
        let (id, record) = match waited {
            Ok(done) => done,
            // A duplicate: the answer is the holder's.
            Err(ClientError::Duplicate { key, holder }) => {
                eprintln!("duplicate: task {holder} holds unique key `{key}`; waiting for it");
                let record =
                    celeriac_client::wait(broker.as_ref(), &holder, args.wait_timeout).await?;
                (holder, record)
            }
            Err(e) => return Err(e.into()),
        };
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

/// `--batch FILE`: every line checked, then one round trip.
fn batch(
    args: &Args,
    file: &str,
    defaults: &Defaults,
    now: SystemTime,
) -> anyhow::Result<ExitCode> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let spec = TaskSpec::parse_line(line).map_err(|e| {
            anyhow::anyhow!(
                "{file}:{}: {}",
                n + 1,
                e.to_string().trim_start_matches("workflow: ")
            )
        })?;
        requests.push((spec.request(), spec.options(defaults, now)));
    }
    if requests.is_empty() {
        anyhow::bail!("{file}: no tasks (one JSON object per line)");
    }
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        for id in submit_batch(broker.as_ref(), requests).await? {
            println!("{id}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
