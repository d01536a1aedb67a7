//! Outbound HTTP from tasks, in process (no broker): what the host's
//! connection pool saves, and what a task waiting on the network costs.
//!
//!     cargo run --release -p celeriac-bench --bin http
//!
//! 1. `web.fetch_many(url, 10)`: ten sequential GETs to one local origin
//!    per task, 200 tasks, with the worker's pooled client and with
//!    pooling off (a new connection per request). Plain HTTP on loopback:
//!    the saving over TLS to a remote host is larger (a handshake and a
//!    round trip per request).
//! 2. Hundreds of tasks waiting at once: 500 `web.get` against a server
//!    answering after 2 s, all in flight together on one sandbox; the
//!    process's resident memory idle and at the peak, per waiting task.
//!
//! Prints Markdown tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_bench::{DelayServer, Stats, build_wasm, fmt};
use celeriac_sandbox::{HttpPolicy, Limits, Sandbox, SandboxConfig, TaskCall};
use celeriac_signing::Grants;

const POOL_TASKS: usize = 200;
const REQUESTS_PER_TASK: u32 = 10;
const WAITING: usize = 500;
const WAIT: Duration = Duration::from_secs(2);

fn sandbox(concurrency: u32, pool: bool) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        concurrency,
        cache_dir: None,
        http: HttpPolicy {
            allow_private: vec!["127.0.0.1/32".parse()?],
            pool,
            ..HttpPolicy::default()
        },
        ..SandboxConfig::default()
    })?)
}

fn call(name: &str, args: String, grants: &Arc<Grants>) -> TaskCall {
    TaskCall {
        id: "bench".into(),
        module: "web".into(),
        name: name.into(),
        args,
        kwargs: "{}".into(),
        grants: grants.clone(),
        ..TaskCall::default()
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let web = std::fs::read(build_wasm(&["web"])?.join("web.wasm"))?;
    let grants = Arc::new(Grants {
        http: vec!["http://127.0.0.1:*".parse()?],
        ..Grants::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let limits = Limits::default();

    println!(
        "| {REQUESTS_PER_TASK} sequential GETs per task | per task p50 | p99 | per request | connections for {} requests |",
        POOL_TASKS * REQUESTS_PER_TASK as usize
    );
    println!("|---|---|---|---|---|");
    for pool in [true, false] {
        let server = DelayServer::start(Duration::ZERO)?;
        let sandbox = sandbox(1, pool)?;
        let (component, _) = sandbox.load(&web)?;
        let fetch = call(
            "fetch_many",
            serde_json::json!([server.url(), REQUESTS_PER_TASK]).to_string(),
            &grants,
        );
        let samples = rt.block_on(async {
            for _ in 0..20 {
                let r = sandbox.run(&component, &fetch, &limits).await;
                anyhow::ensure!(r.result.is_ok(), "warm-up failed: {:?}", r.result);
            }
            let before = server.connections();
            let mut samples = Vec::with_capacity(POOL_TASKS);
            for _ in 0..POOL_TASKS {
                let t = Instant::now();
                let r = sandbox.run(&component, &fetch, &limits).await;
                samples.push(t.elapsed());
                anyhow::ensure!(r.result.is_ok(), "fetch_many failed: {:?}", r.result);
            }
            Ok((samples, server.connections() - before))
        })?;
        let (samples, connections) = samples;
        let stats = Stats::of(samples);
        println!(
            "| {} | {} | {} | {} | {connections} |",
            if pool {
                "pooled (default)"
            } else {
                "a connection per request"
            },
            fmt(stats.p50),
            fmt(stats.p99),
            fmt(stats.p50 / REQUESTS_PER_TASK),
        );
    }

    // Many tasks waiting on the network at once.
    let server = DelayServer::start(WAIT)?;
    let sandbox = Arc::new(sandbox(WAITING as u32, true)?);
    let (component, _) = sandbox.load(&web)?;
    let get = call(
        "get",
        serde_json::json!([server.url()]).to_string(),
        &grants,
    );
    let (idle, peak, elapsed) = rt.block_on(async {
        // One task first: the client, its TLS roots and the first instance.
        let r = sandbox.run(&component, &get, &limits).await;
        anyhow::ensure!(r.result.is_ok(), "warm-up failed: {:?}", r.result);
        let idle = rss_kib();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(WAITING);
        for _ in 0..WAITING {
            let (sandbox, component, get) = (sandbox.clone(), component.clone(), get.clone());
            let limits = limits.clone();
            tasks.push(tokio::spawn(async move {
                sandbox.run(&component, &get, &limits).await
            }));
        }
        let mut peak = idle;
        while started.elapsed() < WAIT {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in tasks {
            let r = t.await?;
            anyhow::ensure!(r.result.is_ok(), "a waiting task failed: {:?}", r.result);
        }
        Ok((idle, peak, started.elapsed()))
    })?;
    println!();
    println!(
        "| {WAITING} tasks waiting on a {} s response at once | |",
        WAIT.as_secs()
    );
    println!("|---|---|");
    println!("| all done in | {} |", fmt(elapsed));
    println!(
        "| process RSS idle → peak | {} → {} MiB |",
        idle / 1024,
        peak / 1024
    );
    println!(
        "| per waiting task | {} KiB |",
        (peak.saturating_sub(idle)) / WAITING as u64
    );
    Ok(())
}
