//! End-to-end queue figures through a real Redis with one worker
//! (concurrency 2): throughput of 20,000 `math.add` tasks submitted in
//! bulk, and submit -> result latency of tasks sent one at a time; with
//! events recorded (the default) and without, interleaved, to show what
//! events cost.
//!
//!     cargo run --release -p celeriac-bench --bin queue
//!
//! Uses `CELERIAC_BENCH_REDIS` (default redis://127.0.0.1:6379) under a
//! private key prefix per run, deleted afterwards. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_bench::{Stats, build_examples, delete_prefix, fmt, wait_drained};
use celeriac_broker as broker;
use celeriac_broker::registry::UploadOptions;
use celeriac_client::{self as client, SubmitOptions, TaskRequest};
use celeriac_protocol::record::TaskState;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{KeyPair, PublicKey, TrustStore, generate_keypair, sign_component};
use celeriac_worker::{Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const THROUGHPUT_TASKS: usize = 20_000;
const SUBMIT_CHUNK: usize = 1_000;
const LATENCY_TASKS: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let dir = build_examples()?;
    let url =
        std::env::var("CELERIAC_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "| events | throughput, {THROUGHPUT_TASKS} × math.add, 1 worker × 2 slots | bulk submit (chunks of {SUBMIT_CHUNK}) | total | latency submit→result p50 ({LATENCY_TASKS} sequential) | p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    // Interleaved, so that a noisy moment hits both.
    for (round, events) in [true, false, true, false].into_iter().enumerate() {
        let prefix = format!("bench-{}-{round}:", std::process::id());
        let result = rt.block_on(run(&dir, &url, &prefix, events));
        delete_prefix(&url, &prefix);
        result?;
    }
    println!();
    println!(
        "Redis {}; {} cores; producer and worker in one process",
        url,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

async fn run(dir: &std::path::Path, url: &str, prefix: &str, events: bool) -> anyhow::Result<()> {
    let options = broker::BrokerOptions {
        events,
        ..Default::default()
    };
    let broker = broker::connect_with(url, prefix, &options).await?;
    let keys = tempfile::tempdir()?;
    let (secret, public, _) = generate_keypair(&keys.path().join("bench"))?;
    let key = KeyPair::load(&secret)?;
    let trust = TrustStore::from_keys([PublicKey::load(&public)?]);
    let math = std::fs::read(dir.join("math.wasm"))?;
    let sig = sign_component(&math, &key, "math")?;
    let cache = tempfile::tempdir()?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        concurrency: 2,
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    })?);
    // Upload checks the component as the worker will load it.
    let check = |b: &[u8]| sandbox.check(b);
    celeriac_broker::registry::upload(
        broker.as_ref(),
        &math,
        &sig,
        &trust,
        UploadOptions::new(&check),
    )
    .await?;
    let worker = Worker::new(
        broker.clone(),
        sandbox,
        trust,
        WorkerConfig {
            concurrency: 2,
            prefetch: 512,
            ..WorkerConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    // Warm up: compile, connect, fill caches.
    let opts = SubmitOptions::default();
    let id = client::submit(broker.as_ref(), add(0), &opts).await?;
    client::wait(broker.as_ref(), &id, Duration::from_secs(30)).await?;

    // Throughput: bulk submit, then wait until every task is acked (acks
    // happen in the same transaction as the result write).
    let started = Instant::now();
    let mut ids = Vec::with_capacity(THROUGHPUT_TASKS);
    for chunk in 0..THROUGHPUT_TASKS / SUBMIT_CHUNK {
        let batch = (0..SUBMIT_CHUNK)
            .map(|i| add((chunk * SUBMIT_CHUNK + i) as i64))
            .collect();
        ids.extend(client::submit_many(broker.as_ref(), batch, &opts).await?);
    }
    let submitted = started.elapsed();
    wait_drained(broker.as_ref(), "default", Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    // Every one of them has its right result (checked outside the timing).
    for (i, id) in ids.iter().enumerate() {
        let r = client::result(broker.as_ref(), id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("task {i}: no result"))?;
        anyhow::ensure!(
            r.state == TaskState::Success && r.result == Some(json!(2 * i as i64)),
            "task {i}: {r:?}"
        );
    }

    // Latency at low load: one task at a time, submit -> result.
    let mut latencies = Vec::with_capacity(LATENCY_TASKS);
    for i in 0..LATENCY_TASKS {
        let t = Instant::now();
        let (_, r) = client::submit_and_wait(
            broker.as_ref(),
            add(i as i64),
            &opts,
            Duration::from_secs(10),
        )
        .await?;
        latencies.push(t.elapsed());
        anyhow::ensure!(
            r.is_some_and(|r| r.state == TaskState::Success),
            "task {i} failed"
        );
    }
    stop.cancel();
    let _ = running.await;

    let lat = Stats::of(latencies);
    println!(
        "| {} | {:.0} tasks/s | {} | {} | {} | {} |",
        if events { "on" } else { "off" },
        THROUGHPUT_TASKS as f64 / elapsed.as_secs_f64(),
        fmt(submitted),
        fmt(elapsed),
        fmt(lat.p50),
        fmt(lat.p99)
    );
    Ok(())
}

fn add(i: i64) -> TaskRequest {
    TaskRequest {
        task: "math.add".into(),
        args: vec![json!(i), json!(i)],
        kwargs: Default::default(),
    }
}
