//! The `text` module in every guest language: component size, first load
//! (compile cold, then from the compile cache), the warm per-task cost of
//! `text.word_count` in a fresh instance and in a reused one (signed
//! `reuse`, host policy allowing it), and `fib(27)` with and without fuel
//! metering.
//!
//!     bash tests/run.sh            # once: installs toolchains, builds every language
//!     cargo run --release -p celeriac-bench --bin languages
//!
//! Prints two Markdown tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_bench::{Stats, fmt};
use celeriac_protocol::Grants;
use celeriac_sandbox::{Limits, Modules, Origin, ReusePolicy, Sandbox, SandboxConfig, TaskCall};

const WARM_ITERATIONS: usize = 2_000;
const LOAD_ROUNDS: usize = 3;
const FIB_N: u32 = 27;
const FIB_ROUNDS: usize = 5;

struct Language {
    name: &'static str,
    /// The `text` component.
    text: PathBuf,
    /// A component with `fib` as `module.fib`, if the language has one.
    fib: Option<(PathBuf, &'static str)>,
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let python = root.join("tasks/python-text/target/celeriac/python-text.wasm");
    let js = root.join("tasks/js-text/target/celeriac/js-text.wasm");
    let languages = [
        Language {
            name: "Rust",
            text: root.join("target/wasm32-wasip2/release/text.wasm"),
            fib: Some((root.join("target/wasm32-wasip2/release/math.wasm"), "math")),
        },
        Language {
            name: "C",
            text: root.join("tasks/c-text/target/celeriac/c-text.wasm"),
            fib: None,
        },
        Language {
            name: "Python",
            text: python.clone(),
            fib: Some((python, "text")),
        },
        Language {
            name: "JavaScript",
            text: js.clone(),
            fib: Some((js, "text")),
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut fib_rows = Vec::new();
    println!(
        "| language | size | compile (cold) | load from cache | word_count, fresh instance p50 | p99 | reused instance p50 | p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for language in &languages {
        let name = language.name;
        let bytes = match std::fs::read(&language.text) {
            Ok(b) => b,
            Err(_) => {
                println!(
                    "| {name} | not built ({}) | | | | | | |",
                    language.text.display()
                );
                continue;
            }
        };
        let (mut cold, mut cached) = (Vec::new(), Vec::new());
        for _ in 0..LOAD_ROUNDS {
            let dir = tempfile::tempdir()?;
            let config = SandboxConfig {
                concurrency: 1,
                cache_dir: Some(dir.path().to_path_buf()),
                ..SandboxConfig::default()
            };
            let t = Instant::now();
            let (_, origin) = Sandbox::new(config.clone())?.load(&bytes)?;
            cold.push(t.elapsed());
            anyhow::ensure!(origin == Origin::Compiled);
            let second = Sandbox::new(config)?;
            let t = Instant::now();
            let (_, origin) = second.load(&bytes)?;
            cached.push(t.elapsed());
            anyhow::ensure!(origin == Origin::DiskCache);
        }
        let fresh = rt.block_on(word_counts(&bytes, name, false))?;
        let reused = rt.block_on(word_counts(&bytes, name, true))?;
        let (cold, cached) = (Stats::of(cold), Stats::of(cached));
        println!(
            "| {name} | {} KiB | {} | {} | {} | {} | {} | {} |",
            bytes.len() / 1024,
            fmt(cold.p50),
            fmt(cached.p50),
            fmt(fresh.p50),
            fmt(fresh.p99),
            fmt(reused.p50),
            fmt(reused.p99),
        );
        if let Some((path, module)) = &language.fib {
            let bytes = std::fs::read(path)?;
            let metered = rt.block_on(fib(&bytes, module, true))?;
            let unmetered = rt.block_on(fib(&bytes, module, false))?;
            fib_rows.push((name, metered, unmetered));
        }
    }
    println!();
    println!(
        "| language | fib({FIB_N}), fuel metered (median of {FIB_ROUNDS}) | fuel off | time saved |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (name, metered, unmetered) in fib_rows {
        let saved = 1.0 - unmetered.as_secs_f64() / metered.as_secs_f64();
        println!(
            "| {name} | {} | {} | {:.0} % |",
            fmt(metered),
            fmt(unmetered),
            saved * 100.0
        );
    }
    Ok(())
}

/// `text.word_count` of one sentence, `WARM_ITERATIONS` times after 100
/// to warm up, in a fresh instance each time or in one kept instance.
async fn word_counts(bytes: &[u8], language: &str, reuse: bool) -> anyhow::Result<Stats> {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        cache_dir: Some(dir.path().to_path_buf()),
        reuse: ReusePolicy {
            modules: if reuse { Modules::All } else { Modules::None },
            max_tasks: u32::MAX,
            ..ReusePolicy::default()
        },
        ..SandboxConfig::default()
    })?;
    let (component, _) = sandbox.load(bytes)?;
    let call = TaskCall {
        id: "bench".into(),
        module: "text".into(),
        name: "word_count".into(),
        args: r#"["the quick brown fox jumps over the lazy dog"]"#.into(),
        kwargs: "{}".into(),
        grants: Arc::new(Grants {
            reuse: Some(celeriac_protocol::grants::MAX_REUSE),
            ..Grants::default()
        }),
        ..TaskCall::default()
    };
    let limits = Limits::default();
    let mut samples = Vec::with_capacity(WARM_ITERATIONS);
    for i in 0..WARM_ITERATIONS + 100 {
        let t = Instant::now();
        let r = sandbox.run(&component, &call, &limits).await;
        if i >= 100 {
            samples.push(t.elapsed());
        }
        anyhow::ensure!(r.result.as_deref() == Ok("9"), "{language}: {:?}", r.result);
        anyhow::ensure!(
            (r.instance_use > 1) == (reuse && i > 0),
            "{language}: instance use {} at {i}",
            r.instance_use
        );
    }
    Ok(Stats::of(samples))
}

/// Median time of `module.fib(FIB_N)` in a fresh instance, with fuel
/// metering or without.
async fn fib(bytes: &[u8], module: &str, metered: bool) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        cache_dir: Some(dir.path().to_path_buf()),
        unmetered: if metered { Modules::None } else { Modules::All },
        ..SandboxConfig::default()
    })?;
    let (component, _) = sandbox.load(bytes)?;
    let call = TaskCall {
        id: "fib".into(),
        module: module.into(),
        name: "fib".into(),
        args: format!("[{FIB_N}]"),
        kwargs: "{}".into(),
        ..TaskCall::default()
    };
    let mut times = Vec::with_capacity(FIB_ROUNDS);
    for _ in 0..FIB_ROUNDS + 1 {
        let t = Instant::now();
        let r = sandbox.run(&component, &call, &Limits::default()).await;
        times.push(t.elapsed());
        anyhow::ensure!(r.result.as_deref() == Ok("196418"), "fib: {:?}", r.result);
    }
    // The first run warms caches; the rest are measured.
    times.remove(0);
    times.sort();
    Ok(times[times.len() / 2])
}
