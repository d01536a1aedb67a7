//! `celeriac demo`: the whole flow in one process on the in-memory broker,
//! so a new user sees it work before installing Redis.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime;
use celeriac_broker::registry::{UploadOptions, upload};
use celeriac_broker::{Broker, MemoryBroker};
use celeriac_client::{SubmitOptions, TaskRequest, submit_many};
use celeriac_protocol::record::TaskState;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{KeyPair, PublicKey, TrustStore, generate_keypair, sign_component};
use celeriac_worker::{Worker, WorkerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// How many tasks to submit.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// Worker slots.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Where the built example components (math.wasm, text.wasm) are;
    /// built from ./tasks when missing.
    #[arg(long, value_name = "DIR")]
    components: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (math, text) = example_components(args.components.as_deref())?;

    // A throwaway publisher key, trusted by this process only.
    let keys = tempfile::tempdir()?;
    let (secret, public, _) = generate_keypair(&keys.path().join("demo"))?;
    let key = KeyPair::load(&secret)?;
    let trust = TrustStore::from_keys([PublicKey::load(&public)?]);

    runtime()?.block_on(async move {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            concurrency: args.concurrency,
            ..SandboxConfig::default()
        })?);
        // Upload checks each component as the worker will load it.
        let check = |b: &[u8]| sandbox.check(b);
        for (path, module) in [(&math, "math"), (&text, "text")] {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let sig = sign_component(&bytes, &key, module)?;
            let up = upload(broker.as_ref(), &bytes, &sig, &trust, UploadOptions::new(&check)).await?;
            println!("uploaded {:<5} {}  ({} KiB, signed by a throwaway key)", up.module, up.digest, bytes.len() / 1024);
        }
        let worker = Worker::new(
            broker.clone(),
            sandbox,
            trust,
            WorkerConfig {
                concurrency: args.concurrency,
                ..WorkerConfig::default()
            },
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.clone().run(shutdown.clone()));

        let requests: Vec<TaskRequest> = (0..args.tasks).map(demo_task).collect();
        let kinds: Vec<String> = requests.iter().map(|r| r.task.clone()).collect();
        let started = Instant::now();
        let ids = submit_many(broker.as_ref(), requests, &SubmitOptions { max_retries: 0, ..SubmitOptions::default() }).await?;
        println!("submitted {} tasks to memory:// (math.add, math.fib, text.sha256, text.word_count, and some that fail)", ids.len());

        let bar = ProgressBar::new(ids.len() as u64);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        let records = celeriac_client::wait_all(broker.as_ref(), &ids, Duration::from_secs(120), |_, _| bar.inc(1)).await?;
        bar.finish();
        let elapsed = started.elapsed();
        shutdown.cancel();
        let _ = running.await;

        let done: Vec<_> = records.iter().flatten().collect();
        let ok = done.iter().filter(|r| r.state == TaskState::Success).count();
        let failed = done.iter().filter(|r| r.state == TaskState::Failure).count();
        println!();
        println!("{} tasks in {:.2}s: {} succeeded, {} failed, {} unfinished ({:.0} tasks/s)",
            ids.len(), elapsed.as_secs_f64(), ok, failed, ids.len() - done.len(), ids.len() as f64 / elapsed.as_secs_f64());
        println!();
        println!("some results:");
        for (i, r) in records.iter().enumerate().take(5).chain(records.iter().enumerate().filter(|(_, r)| r.as_ref().is_some_and(|r| r.state == TaskState::Failure)).take(1)) {
            if let Some(r) = r {
                let outcome = match (&r.result, &r.error) {
                    (Some(v), _) => v.to_string(),
                    (_, Some(e)) => format!("{:?}: {}", r.state, e.message),
                    _ => format!("{:?}", r.state),
                };
                let shown = if outcome.chars().count() > 70 { format!("{}…", outcome.chars().take(70).collect::<String>()) } else { outcome };
                println!("  {:<16} {:>8.3} ms  {}", kinds[i], r.runtime_ms, shown);
            }
        }
        println!();
        println!("next: `celeriac worker` on Redis, `celeriac submit math.add '[2, 3]' --wait` (see README)");
        Ok(if done.len() == ids.len() { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::TIMEOUT) })
    })
}

fn demo_task(i: usize) -> TaskRequest {
    let (task, args) = match i % 10 {
        0..=3 => ("math.add", json!([i, i])),
        4 => ("math.fib", json!([20 + (i % 5)])),
        5 | 6 => ("text.sha256", json!([format!("task {i}")])),
        7 | 8 => (
            "text.word_count",
            json!(["the quick brown fox jumps over the lazy dog"]),
        ),
        // One in ten fails on purpose, to show what failures look like.
        _ => ("math.div", json!([i, 0])),
    };
    TaskRequest {
        task: task.into(),
        args: args.as_array().cloned().unwrap_or_default(),
        kwargs: Default::default(),
    }
}

/// The example components: from `dir`, from the workspace's build output,
/// or built now from ./tasks.
fn example_components(dir: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/wasm32-wasip2/release"));
    let (math, text) = (dir.join("math.wasm"), dir.join("text.wasm"));
    if math.is_file() && text.is_file() {
        return Ok((math, text));
    }
    anyhow::ensure!(
        Path::new("tasks/math").is_dir(),
        "example components not found in {}: run the demo from the Celeriac checkout, or pass --components DIR",
        dir.display()
    );
    eprintln!("building the example tasks (first run only)…");
    let math = celeriac_build::build(&std::fs::canonicalize("tasks/math")?)?;
    let text = celeriac_build::build(&std::fs::canonicalize("tasks/text")?)?;
    Ok((math, text))
}
