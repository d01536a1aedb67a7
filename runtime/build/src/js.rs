//! JavaScript tasks: esbuild bundles the author's `app.js` (with its npm
//! dependencies) and the SDK in guest-sdk/js; componentize-js (from npm)
//! snapshots it into a StarlingMonkey component.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, io, succeeded, write, write_wit};

const SDK: &str = include_str!("../../../guest-sdk/js/celeriac.js");
const BUILD_SCRIPT: &str = include_str!("../../../guest-sdk/js/build.mjs");

pub(crate) fn build(dir: &Path, module: &str) -> Result<PathBuf, BuildError> {
    if Command::new("node").arg("--version").output().is_err() {
        return Err(BuildError::Toolchain(
            "JavaScript tasks need Node.js 18+ and npm; install them (e.g. apt-get install nodejs npm)"
                .into(),
        ));
    }
    if !dir
        .join("node_modules/@bytecodealliance/componentize-js")
        .is_dir()
        || !dir.join("node_modules/esbuild").is_dir()
    {
        return Err(BuildError::Toolchain(format!(
            "JavaScript tasks need @bytecodealliance/componentize-js and esbuild: run `npm install` in {} \
             (list them as devDependencies, as tasks/js-text/package.json does)",
            dir.display()
        )));
    }
    let entry = dir.join("app.js");
    if !entry.is_file() {
        return Err(BuildError::Project(format!(
            "{} has no app.js: a JavaScript task module starts there",
            dir.display()
        )));
    }
    // The script and SDK go inside DIR so Node finds DIR/node_modules.
    let out = dir.join("target/celeriac");
    let js_dir = out.join("js");
    write_wit(&js_dir.join("wit"))?;
    write(&js_dir.join("celeriac.js"), SDK)?;
    write(&js_dir.join("build.mjs"), BUILD_SCRIPT)?;
    let wasm = out.join(format!("{module}.wasm"));
    let output = Command::new("node")
        .arg(js_dir.join("build.mjs"))
        .arg(&entry)
        .arg("-o")
        .arg(&wasm)
        .arg("--wit")
        .arg(js_dir.join("wit"))
        .output()
        .map_err(io("running node"))?;
    // The tool's own words, then one line naming what failed.
    succeeded(&output, || {
        format!("building {} failed (see above)", dir.display())
    })?;
    Ok(wasm)
}
