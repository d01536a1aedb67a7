//! `celeriac build`: turns a task project in Rust, Python, JavaScript or C
//! into a component, with toolchains from the package registries only.
//! The language is told by what the directory holds; each has a module.

mod c;
mod js;
mod python;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The task contract and the WASI packages it names (path under `wit/`,
/// text), carried inside the binary so `celeriac build` works on a project
/// anywhere.
const WIT_FILES: &[(&str, &str)] = &[
    ("task.wit", include_str!("../../../wit/task.wit")),
    (
        "deps/config/store.wit",
        include_str!("../../../wit/deps/config/store.wit"),
    ),
    (
        "deps/config/world.wit",
        include_str!("../../../wit/deps/config/world.wit"),
    ),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    (
        "deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

/// Write the contract (task.wit and its deps) into `dir`.
fn write_wit(dir: &Path) -> Result<(), BuildError> {
    for (rel, text) in WIT_FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        write(&path, text)?;
    }
    Ok(())
}

/// The wasm target every Rust task is built for: it emits a component
/// directly, with no adapter step.
const RUST_TARGET: &str = "wasm32-wasip2";

/// Why a project did not build. Each message is one line naming the cause
/// and, for a missing toolchain, how to install it; a compiler's own
/// errors were already shown on stderr.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no such directory: {0}")]
    NoDirectory(PathBuf),
    #[error(
        "don't know how to build {0}: expected a Rust crate (Cargo.toml), Python (app.py), \
         JavaScript (package.json + app.js) or C sources (*.c)"
    )]
    UnknownProject(PathBuf),
    /// A toolchain is not installed; the message says how to install it.
    #[error("{0}")]
    Toolchain(String),
    /// The project is not laid out as its language's build expects.
    #[error("{0}")]
    Project(String),
    /// The compiler or packager ran and failed (its output is above).
    #[error("{0}")]
    Failed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The WIT tooling (bindings, component encoding) refused.
    #[error("{context}: {message}")]
    Wit { context: String, message: String },
}

/// An I/O failure, with what was being done.
fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// A WIT tooling failure, with what was being done.
fn wit<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> BuildError + '_ {
    move |e| BuildError::Wit {
        context: context.to_string(),
        message: format!("{e:#}"),
    }
}

/// A tool's run that failed is shown (its stdout and stderr, on stderr)
/// and becomes [`BuildError::Failed`] with `what` failed.
fn succeeded(
    output: &std::process::Output,
    what: impl FnOnce() -> String,
) -> Result<(), BuildError> {
    if output.status.success() {
        return Ok(());
    }
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Err(BuildError::Failed(what()))
}

/// Write a generated file, naming it if that fails.
fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), BuildError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))
}

/// Create a directory and its parents, naming it if that fails.
fn create_dir(path: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))
}

/// Build the task project in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    let dir = dir
        .canonicalize()
        .map_err(|_| BuildError::NoDirectory(dir.to_path_buf()))?;
    let module = module_name(&dir);
    match detect(&dir) {
        Some(Language::Rust) => build_rust(&dir),
        Some(Language::C) => c::build(&dir, &module),
        Some(Language::Python) => python::build(&dir, &module),
        Some(Language::JavaScript) => js::build(&dir, &module),
        None => Err(BuildError::UnknownProject(dir)),
    }
}

/// The module name a project builds: its directory's name, with anything
/// but letters, digits, `-` and `_` made `_`.
pub fn module_name(dir: &Path) -> String {
    dir.file_name()
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
        .unwrap_or_else(|| "task".into())
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
fn build_rust(dir: &Path) -> Result<PathBuf, BuildError> {
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
        .map_err(|_| {
            BuildError::Toolchain("could not run cargo; install Rust from https://rustup.rs".into())
        })?;

    // cargo reports each artifact as a JSON line; take this package's wasm.
    let mut wasm = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(io("reading cargo output"))?;
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
    let status = child.wait().map_err(io("waiting for cargo"))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "cargo build failed for {} (see the errors above)",
            dir.display()
        )));
    }
    wasm.ok_or_else(|| {
        BuildError::Project(format!(
            "{} built no component: a task crate needs `[lib] crate-type = [\"cdylib\"]` in Cargo.toml",
            dir.display()
        ))
    })
}

/// Fail early, and say how to fix it, when the wasm target is missing.
fn check_rust_target() -> Result<(), BuildError> {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", RUST_TARGET])
        .output()
        .map_err(|_| {
            BuildError::Toolchain("could not run rustc; install Rust from https://rustup.rs".into())
        })?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        return Err(BuildError::Toolchain(format!(
            "the Rust target {RUST_TARGET} is not installed; run: rustup target add {RUST_TARGET}"
        )));
    }
    Ok(())
}

fn same_file(reported: Option<&str>, expected: &Path) -> bool {
    reported
        .map(|r| Path::new(r).canonicalize().ok().as_deref() == Some(expected))
        .unwrap_or(false)
}
