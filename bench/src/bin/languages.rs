//! The `text` module in every guest language: component size, first load
//! (compile cold, then from the compile cache) and warm per-task cost of
//! `text.word_count`.
//!
//!     bash tests/run.sh            # once: installs toolchains, builds every language
//!     cargo run --release -p celeriac-bench --bin languages
//!
//! Prints a Markdown table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use celeriac_bench::{Stats, fmt};
use celeriac_sandbox::{Limits, Origin, Sandbox, SandboxConfig, TaskCall};

const WARM_ITERATIONS: usize = 2_000;
const LOAD_ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let languages: [(&str, PathBuf); 4] = [
        ("Rust", root.join("target/wasm32-wasip2/release/text.wasm")),
        ("C", root.join("tasks/c-text/target/celeriac/c-text.wasm")),
        (
            "Python",
            root.join("tasks/python-text/target/celeriac/python-text.wasm"),
        ),
        (
            "JavaScript",
            root.join("tasks/js-text/target/celeriac/js-text.wasm"),
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("| language | size | compile (cold) | load from cache | warm word_count p50 | p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (language, path) in &languages {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(_) => {
                println!("| {language} | not built ({}) | | | | |", path.display());
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
        let dir = tempfile::tempdir()?;
        let sandbox = Sandbox::new(SandboxConfig {
            concurrency: 1,
            cache_dir: Some(dir.path().to_path_buf()),
            ..SandboxConfig::default()
        })?;
        let (component, _) = sandbox.load(&bytes)?;
        let call = TaskCall {
            id: "bench".into(),
            module: "text".into(),
            name: "word_count".into(),
            args: r#"["the quick brown fox jumps over the lazy dog"]"#.into(),
            kwargs: "{}".into(),
            ..TaskCall::default()
        };
        let limits = Limits::default();
        let warm = rt.block_on(async {
            let mut samples = Vec::with_capacity(WARM_ITERATIONS);
            for i in 0..WARM_ITERATIONS + 100 {
                let t = Instant::now();
                let r = sandbox.run(&component, &call, &limits).await;
                if i >= 100 {
                    samples.push(t.elapsed());
                }
                anyhow::ensure!(r.result.as_deref() == Ok("9"), "{language}: {:?}", r.result);
            }
            Ok(samples)
        })?;
        let (cold, cached, warm) = (Stats::of(cold), Stats::of(cached), Stats::of(warm));
        println!(
            "| {language} | {} KiB | {} | {} | {} | {} |",
            bytes.len() / 1024,
            fmt(cold.p50),
            fmt(cached.p50),
            fmt(warm.p50),
            fmt(warm.p99)
        );
    }
    Ok(())
}
