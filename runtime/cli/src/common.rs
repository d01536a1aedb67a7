//! Flags shared by the subcommands that talk to a broker, and how task
//! outcomes are printed.

use std::sync::Arc;

use anyhow::Context;

use std::time::Duration;

use celeriac_broker::Broker;
use celeriac_protocol::MessageLimits;
use celeriac_protocol::clock::millis;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_protocol::units::{parse_duration, parse_size};
use celeriac_sandbox::Limits;

/// Per-task limits, for `run` and as the worker's defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Hard wall-clock limit.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Soft limit: after it the task's `should-stop` check returns true.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub soft_timeout: Option<Duration>,
    /// Fuel budget (about one unit per wasm instruction).
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_FUEL)]
    pub fuel: u64,
    /// Memory limit for the task as a whole.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    pub memory: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        // The bounds every message is held to.
        MessageLimits {
            timeout_ms: Some(millis(self.timeout)),
            soft_timeout_ms: self.soft_timeout.map(millis),
            fuel: Some(self.fuel),
            memory: Some(self.memory),
        }
        .check()
        .map_err(anyhow::Error::msg)?;
        Ok(Limits {
            timeout: self.timeout,
            soft_timeout: self.soft_timeout,
            fuel: self.fuel,
            memory: self.memory,
        })
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct BrokerArgs {
    /// Broker URL: redis://[user:password@]host:port[/db], rediss://… (TLS) or memory://
    #[arg(long, env = "CELERIAC_BROKER", default_value = celeriac_broker::DEFAULT_URL, global = true)]
    pub broker: String,
    /// Prefix of every key, so several deployments can share one Redis.
    #[arg(long, env = "CELERIAC_PREFIX", default_value = celeriac_broker::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
    /// Record task and worker events (`celeriac events`, the console):
    /// `on` or `off`.
    #[arg(long, env = "CELERIAC_EVENTS", default_value = "on", value_parser = parse_switch, global = true)]
    pub events: bool,
    /// Events kept in Redis (approximately; the oldest are trimmed).
    #[arg(long, env = "CELERIAC_EVENTS_KEPT", value_name = "N", default_value_t = celeriac_broker::DEFAULT_EVENTS_KEPT, global = true)]
    pub events_kept: usize,
}

fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got `{s}`")),
    }
}

impl BrokerArgs {
    /// How to serve, from these flags (the rest as defaults).
    pub fn options(&self) -> celeriac_broker::BrokerOptions {
        celeriac_broker::BrokerOptions {
            events: self.events,
            events_kept: self.events_kept,
            ..Default::default()
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        celeriac_broker::connect_with(&self.broker, &self.prefix, &self.options())
            .await
            .with_context(|| {
                format!(
                    "cannot reach the broker at {}",
                    celeriac_broker::redact(&self.broker)
                )
            })
    }
}

/// Read ARGS_JSON and --kwargs as given on the command line: a JSON array
/// and a JSON object, with a message naming the flag when they are not.
pub fn parse_call_json(
    args: &str,
    kwargs: &str,
) -> anyhow::Result<(
    Vec<serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
)> {
    use anyhow::Context;
    use serde_json::Value;
    const ARRAY: &str = "a JSON array, e.g. '[2, 3]'";
    const OBJECT: &str = "a JSON object, e.g. '{\"b\": 3}'";
    let positional: Value = serde_json::from_str(args)
        .with_context(|| format!("ARGS_JSON is not valid JSON: expected {ARRAY}"))?;
    let Value::Array(positional) = positional else {
        anyhow::bail!("ARGS_JSON must be {ARRAY}");
    };
    let named: Value = serde_json::from_str(kwargs)
        .with_context(|| format!("--kwargs is not valid JSON: expected {OBJECT}"))?;
    let Value::Object(named) = named else {
        anyhow::bail!("--kwargs must be {OBJECT}");
    };
    Ok((positional, named))
}

/// Print a final record the way `celeriac run` prints an outcome: the JSON
/// result on stdout, or one line naming the cause on stderr. Returns the
/// exit code.
pub fn print_outcome(record: &ResultRecord) -> u8 {
    match record.state {
        TaskState::Success => {
            let value = record.result.clone().unwrap_or(serde_json::Value::Null);
            println!("{value}");
            0
        }
        state => {
            let message = record
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| format!("{state:?}"));
            let prefix = if state == TaskState::Revoked {
                "revoked: "
            } else {
                ""
            };
            eprintln!("error: {prefix}{}", crate::one_line(&message));
            crate::exit::TASK_FAILED
        }
    }
}

/// Unix milliseconds as RFC 3339, for listings.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
