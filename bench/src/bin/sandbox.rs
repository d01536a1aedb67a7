//! Sandbox costs: a warm `math.add` (fresh store + instantiate + call +
//! drop) with and without fuel metering, and loading a component from the
//! on-disk compile cache versus compiling it cold.
//!
//!     cargo run --release -p celeriac-bench --bin sandbox
//!
//! Prints a Markdown table. `sandbox warm` or `sandbox load` runs one half
//! (handy under a profiler).

use std::time::Instant;

use celeriac_bench::{Stats, build_examples, fmt};
use celeriac_sandbox::{Limits, Modules, Origin, Sandbox, SandboxConfig, TaskCall};

const WARM_ITERATIONS: usize = 20_000;
const LOAD_ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let dir = build_examples()?;
    let math = std::fs::read(dir.join("math.wasm"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let only = std::env::args().nth(1);
    let (warm, load) = match only.as_deref() {
        None => (true, true),
        Some("warm") => (true, false),
        Some("load") => (false, true),
        Some(other) => anyhow::bail!("unknown part `{other}`: expected warm or load"),
    };
    let mut rows: Vec<(String, Stats)> = Vec::new();
    for fuel in [true, false].into_iter().filter(|_| warm) {
        let cache = tempfile::tempdir()?;
        let sandbox = Sandbox::new(SandboxConfig {
            concurrency: 1,
            unmetered: if fuel { Modules::None } else { Modules::All },
            cache_dir: Some(cache.path().to_path_buf()),
            ..SandboxConfig::default()
        })?;
        let (component, _) = sandbox.load(&math)?;
        let call = TaskCall {
            id: "bench".into(),
            module: "math".into(),
            name: "add".into(),
            args: "[2, 3]".into(),
            kwargs: "{}".into(),
            ..TaskCall::default()
        };
        let limits = Limits::default();
        let samples = rt.block_on(async {
            // Warm up the pool slots and caches before measuring.
            for _ in 0..1_000 {
                let r = sandbox.run(&component, &call, &limits).await;
                assert_eq!(r.result.as_deref(), Ok("5"));
            }
            let mut samples = Vec::with_capacity(WARM_ITERATIONS);
            for _ in 0..WARM_ITERATIONS {
                let t = Instant::now();
                let r = sandbox.run(&component, &call, &limits).await;
                samples.push(t.elapsed());
                assert_eq!(r.result.as_deref(), Ok("5"));
            }
            samples
        });
        let label = if fuel {
            "warm math.add, fuel on"
        } else {
            "warm math.add, fuel off"
        };
        rows.push((label.into(), Stats::of(samples)));
    }

    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..LOAD_ROUNDS * usize::from(load) {
        let cache = tempfile::tempdir()?;
        let config = SandboxConfig {
            concurrency: 1,
            cache_dir: Some(cache.path().to_path_buf()),
            ..SandboxConfig::default()
        };
        // Each load in a new sandbox, as a new process would.
        let first = Sandbox::new(config.clone())?;
        let t = Instant::now();
        let (_, origin) = first.load(&math)?;
        cold.push(t.elapsed());
        assert_eq!(origin, Origin::Compiled);
        let second = Sandbox::new(config)?;
        let t = Instant::now();
        let (_, origin) = second.load(&math)?;
        cached.push(t.elapsed());
        assert_eq!(origin, Origin::DiskCache);
    }
    if load {
        rows.push(("load math: compile cold".into(), Stats::of(cold)));
        rows.push(("load math: from disk cache".into(), Stats::of(cached)));
    }

    println!("| measurement | n | p50 | p99 | mean | min |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (label, s) in &rows {
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            s.n,
            fmt(s.p50),
            fmt(s.p99),
            fmt(s.mean),
            fmt(s.min)
        );
    }
    println!();
    println!(
        "math.wasm: {} bytes; {} cores; one task at a time",
        math.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}
