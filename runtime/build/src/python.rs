//! Python tasks: componentize-py (from PyPI) turns the author's `app.py`,
//! the SDK in guest-sdk/python and CPython into one component, with the
//! interpreter snapshotted after import so tasks do not pay start-up.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, io, succeeded, write, write_wit};

const SDK: &str = include_str!("../../../guest-sdk/python/celeriac.py");
/// The componentize-py release the SDK is tested with.
pub(crate) const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

pub(crate) fn build(dir: &Path, module: &str) -> Result<PathBuf, BuildError> {
    let tool =
        std::env::var("CELERIAC_COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
    if Command::new(&tool).arg("--version").output().is_err() {
        return Err(BuildError::Toolchain(format!(
            "Python tasks need componentize-py (`{tool}` not found); install it with: python3 -m pip install {COMPONENTIZE_PY}"
        )));
    }
    let out = dir.join("target/celeriac");
    let gen_dir = out.join("python");
    if gen_dir.exists() {
        std::fs::remove_dir_all(&gen_dir).map_err(io(format!("cleaning {}", gen_dir.display())))?;
    }
    write_wit(&gen_dir.join("wit"))?;
    write(&gen_dir.join("celeriac.py"), SDK)?;
    // componentize-py wants a module exposing the world's class; the author
    // only writes app.py, so the entry module is generated here.
    write(
        &gen_dir.join("celeriac_entry.py"),
        "import app  # registers the @task functions, once, at build time\nfrom celeriac import WitWorld\n",
    )?;
    let wasm = out.join(format!("{module}.wasm"));
    let output = Command::new(&tool)
        .arg("-d")
        .arg(gen_dir.join("wit"))
        // The world with wasi:http, whose bindings the SDK's `http` helper
        // uses. Both packages name an interface `types`: keep ours as
        // `types`, theirs as `http_types`.
        .args(["-w", "task-with-http"])
        .args(["--import-interface-name", "celeriac:task/types@0.1.0=types"])
        .args([
            "--import-interface-name",
            "wasi:http/types@0.2.12=http_types",
        ])
        .args(["componentize", "celeriac_entry", "-p"])
        .arg(&gen_dir)
        .arg("-p")
        .arg(dir)
        .arg("-o")
        .arg(&wasm)
        .output()
        .map_err(io(format!("running {tool}")))?;
    // The tool's own words, then one line naming what failed.
    succeeded(&output, || {
        format!("componentize-py failed for {} (see above)", dir.display())
    })?;
    Ok(wasm)
}
