//! `celeriac dlq list|requeue|purge`: the dead letters of a queue.

use std::process::ExitCode;

use crate::common::{BrokerArgs, time};
use crate::{exit, runtime};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The queue whose dead letters to manage.
    #[arg(long, default_value = "default", global = true)]
    queue: String,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List dead letters with their reasons.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back on its queue (retries reset to 0).
    Requeue { id: String },
    /// Delete every dead letter of the queue.
    Purge,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        match args.action {
            Action::List { limit, json } => {
                let letters = broker.dlq_list(&args.queue, limit).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&letters)?);
                } else {
                    for d in letters {
                        let task = serde_json::from_str::<serde_json::Value>(&d.payload)
                            .ok()
                            .and_then(|v| {
                                Some(format!(
                                    "{} {}",
                                    v.get("task")?.as_str()?,
                                    v.get("id")?.as_str()?
                                ))
                            })
                            .unwrap_or_else(|| "(unreadable message)".into());
                        println!("{}  {}  {}  {}", d.id, time(d.at), task, d.reason);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Action::Requeue { id } => {
                if broker.dlq_requeue(&args.queue, &id).await? {
                    println!("requeued {id} on {}", args.queue);
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("error: no dead letter {id} in queue {}", args.queue);
                    Ok(ExitCode::from(exit::ERROR))
                }
            }
            Action::Purge => {
                let n = broker.dlq_purge(&args.queue).await?;
                println!("purged {n} dead letters from {}", args.queue);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
