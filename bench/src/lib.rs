//! Shared helpers for the benchmarks: example components and statistics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use celeriac_broker::Broker;
use redis::Commands as _;

/// Build the example task components (release, wasm32-wasip2) and return
/// the directory holding them.
pub fn build_examples() -> anyhow::Result<PathBuf> {
    build_wasm(&["math", "text", "misbehave"])
}

/// Build these workspace task crates (release, wasm32-wasip2) and return
/// the directory holding their `.wasm` files.
pub fn build_wasm(packages: &[&str]) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("bench/ has no parent"))?
        .to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "building the task components {packages:?} failed"
    );
    Ok(root.join("target/wasm32-wasip2/release"))
}

/// Order statistics of a sample of durations.
pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
        let total: Duration = samples.iter().sum();
        Self {
            n,
            min: samples[0],
            p50: at(0.5),
            p99: at(0.99),
            mean: total / n as u32,
        }
    }
}

/// `12.3 µs`, `4.56 ms`, `1.23 s`.
pub fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Wait until `queue` holds nothing ready, delayed or in flight. A worker
/// acks in the same transaction as it stores the result, so a drained
/// queue means every result is written.
pub async fn wait_drained(
    broker: &dyn Broker,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = broker.queue_stats(queue).await?;
        if s.ready == 0 && s.in_flight == 0 && s.delayed == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "queue did not drain: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Delete every key under `prefix` (best effort: a benchmark cleaning up).
pub fn delete_prefix(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = match conn.scan_match(format!("{prefix}*")) {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for chunk in keys.chunks(1000) {
        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}
