//! Shared by the end-to-end tests: the example components, built once from
//! `tasks/` with the same toolchain users have.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// Path of the built example component `name` (math, text, misbehave).
/// The first call builds all of them (a no-op when they are up to date).
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "math", "-p", "text", "-p", "misbehave"])
            .status()
            .expect("run cargo to build the example tasks");
        assert!(
            status.success(),
            "building tasks/ failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
        );
        root.join("target/wasm32-wasip2/release")
    });
    dir.join(format!("{name}.wasm"))
}

pub fn read_component(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("read built component")
}
