mod c;
mod js;
mod python;

/// The task contract, carried inside the binary so `celeriac build` works
/// on a project anywhere.
const WIT: &str = include_str!("../../../../wit/task.wit");

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// The task project to build.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

/// The wasm target every Rust task is built for: it emits a component
/// directly, with no adapter step.
const RUST_TARGET: &str = "wasm32-wasip2";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("no such directory: {}", args.dir.display()))?;
    let module = dir
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .unwrap_or_else(|| "task".into());
    let wasm = match detect(&dir) {
        Some(Language::Rust) => build_rust(&dir)?,
        Some(Language::C) => c::build(&dir, &module)?,
        Some(Language::Python) => python::build(&dir, &module)?,
        Some(Language::JavaScript) => js::build(&dir, &module)?,
        None => bail!(
            "don't know how to build {}: expected a Rust crate (Cargo.toml), Python (app.py), \
             JavaScript (package.json + app.js) or C sources (*.c)",
            dir.display()
        ),
    };
    println!("{}", wasm.display());
    Ok(ExitCode::SUCCESS)
}

/// Languages `celeriac build` knows, told apart by the files in DIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Rust,
    Python,
    JavaScript,
    C,
}

fn detect(dir: &Path) -> Option<Language> {
    if dir.join("Cargo.toml").is_file() {
        return Some(Language::Rust);
    }
    if dir.join("package.json").is_file() {
        return Some(Language::JavaScript);
    }
    if dir.join("app.py").is_file() {
        return Some(Language::Python);
    }
    let has = |ext: &str| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == ext))
            })
            .unwrap_or(false)
    };
    if has("c") {
        return Some(Language::C);
    }
    None
}

/// Build the Rust task crate in `dir`; returns the component's path.
pub(crate) fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    check_rust_target()?;
    let manifest = dir.join("Cargo.toml");
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            RUST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        // From DIR, so the project's own .cargo/config.toml applies.
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not run cargo; install Rust from https://rustup.rs")?;

    // cargo reports each artifact as a JSON line; take this package's wasm.
    let mut wasm = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo output")?;
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact"
                || !same_file(msg["manifest_path"].as_str(), &manifest)
            {
                continue;
            }
            let is_cdylib = msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
            if !is_cdylib {
                continue;
            }
            if let Some(files) = msg["filenames"].as_array() {
                wasm = files
                    .iter()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from);
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "cargo build failed for {} (see the errors above)",
            dir.display()
        );
    }
    wasm.with_context(|| {
        format!(
            "{} built no component: a task crate needs `[lib] crate-type = [\"cdylib\"]` in Cargo.toml",
            dir.display()
        )
    })
}

/// Fail early, and say how to fix it, when the wasm target is missing.
fn check_rust_target() -> anyhow::Result<()> {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", RUST_TARGET])
        .output()
        .context("could not run rustc; install Rust from https://rustup.rs")?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        bail!(
            "the Rust target {RUST_TARGET} is not installed; run: rustup target add {RUST_TARGET}"
        );
    }
    Ok(())
}

fn same_file(reported: Option<&str>, expected: &Path) -> bool {
    reported
        .map(|r| Path::new(r).canonicalize().ok().as_deref() == Some(expected))
        .unwrap_or(false)
}
