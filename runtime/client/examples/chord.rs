//! A chord from Rust: ten additions in parallel, then their sum, called
//! once with the ordered results; then a chain. Needs a Redis and the
//! `math` module uploaded (see the README), and a worker:
//!
//!     cargo run -p celeriac-client --example chord
//!
//! `CELERIAC_BROKER` and `CELERIAC_PREFIX` say where, as for the CLI.

use std::time::Duration;

use celeriac_client::workflow::{self, Defaults, Spec, TaskSpec};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CELERIAC_BROKER").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("CELERIAC_PREFIX").unwrap_or_else(|_| "celeriac:".into());
    let broker = celeriac_broker::connect(&url, &prefix).await?;

    let add = |a: i64, b: i64| Spec::task(TaskSpec::new("math.add").args([json!(a), json!(b)]));
    let chord = Spec::chord(
        (0..10).map(|i| add(i, i)),
        Spec::task(TaskSpec::new("math.sum")),
    );
    let run = workflow::run(broker.as_ref(), &chord, &Defaults::default()).await?;
    let sum =
        celeriac_client::wait(broker.as_ref(), &run.final_id, Duration::from_secs(30)).await?;
    println!("chord {}: {:?}", run.root_id, sum.and_then(|r| r.result));

    // (2 + 2) * 4, each result the next one's first argument.
    let chain = Spec::chain([
        add(2, 2),
        Spec::task(TaskSpec::new("math.mul").args([json!(4)])),
    ]);
    let run = workflow::run(broker.as_ref(), &chain, &Defaults::default()).await?;
    let product =
        celeriac_client::wait(broker.as_ref(), &run.final_id, Duration::from_secs(30)).await?;
    println!(
        "chain {}: {:?}",
        run.root_id,
        product.and_then(|r| r.result)
    );
    Ok(())
}
