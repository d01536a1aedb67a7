//! Flags shared by the subcommands that talk to a broker, and how task
//! outcomes are printed.

use std::sync::Arc;

use anyhow::Context;

use crate::broker::{self, Broker};
use crate::results::{ResultRecord, TaskState};

#[derive(clap::Args, Clone, Debug)]
pub struct BrokerArgs {
    /// Broker URL: redis://[user:password@]host:port[/db], rediss://… (TLS) or memory://
    #[arg(long, env = "CELERIAC_BROKER", default_value = broker::DEFAULT_URL, global = true)]
    pub broker: String,
    /// Prefix of every key, so several deployments can share one Redis.
    #[arg(long, env = "CELERIAC_PREFIX", default_value = broker::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
}

impl BrokerArgs {
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        broker::connect(&self.broker, &self.prefix)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the broker at {}",
                    broker::redact(&self.broker)
                )
            })
    }
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
            eprintln!("error: {prefix}{}", super::one_line(&message));
            super::exit::TASK_FAILED
        }
    }
}

/// Unix milliseconds as RFC 3339, for listings.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
