use celeriac_bench::{Stats, fmt};
use redis::AsyncCommands;
use std::time::{Duration, Instant};
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut mux = client.get_multiplexed_async_connection().await?;
    let mut cm = redis::aio::ConnectionManager::new(client.clone()).await?;
    for (name, which) in [
        ("mux", 0),
        ("manager", 1),
        ("pubsub connect", 2),
        ("pubsub connect+sub+unsub", 3),
    ] {
        let mut s = Vec::new();
        for i in 0..2000 {
            let t = Instant::now();
            match which {
                0 => {
                    let _: Option<String> = mux.get("scratch:x").await?;
                }
                1 => {
                    let _: Option<String> = cm.get("scratch:x").await?;
                }
                2 => {
                    let _p = client.get_async_pubsub().await?;
                }
                _ => {
                    let mut p = client.get_async_pubsub().await?;
                    p.subscribe(format!("scratch:{i}")).await?;
                }
            }
            s.push(t.elapsed());
        }
        let st = Stats::of(s);
        println!("{name}: p50 {} p99 {}", fmt(st.p50), fmt(st.p99));
    }
    let _ = Duration::ZERO;
    Ok(())
}
