//! C tasks: wit-bindgen's C bindings + the SDK in guest-sdk/c, compiled with
//! clang against wasi-libc into a core module, then made a component with
//! the WASI preview1 adapter.

use std::path::{Path, PathBuf};
use std::process::Command;

use wit_component::ComponentEncoder;
use wit_parser::Resolve;

use crate::{BuildError, create_dir, io, wit, write, write_wit};

/// The contract and the C SDK travel inside the binary, so `celeriac
/// build` works on a C project anywhere.
const SDK_H: &str = include_str!("../../../guest-sdk/c/celeriac.h");
const SDK_C: &str = include_str!("../../../guest-sdk/c/celeriac.c");

/// Where Debian's wasi-libc lives (`/usr/lib/wasm32-wasi`,
/// `/usr/include/wasm32-wasi`); a wasi-sdk install can be named instead.
fn sysroot() -> PathBuf {
    std::env::var_os("CELERIAC_WASI_SYSROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr"))
}

const INSTALL_HINT: &str = "C tasks need clang, lld and wasi-libc; on Debian/Ubuntu: \
     apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32 \
     (or set CELERIAC_WASI_SYSROOT to a wasi-sdk sysroot and CC to its clang)";

pub(crate) fn build(dir: &Path, module: &str) -> Result<PathBuf, BuildError> {
    let cc = std::env::var("CC")
        .ok()
        .filter(|c| !c.is_empty() && c != "cc")
        .unwrap_or_else(|| "clang".into());
    let sysroot = sysroot();
    if Command::new(&cc).arg("--version").output().is_err() {
        return Err(BuildError::Toolchain(format!(
            "`{cc}` not found. {INSTALL_HINT}"
        )));
    }
    if !sysroot.join("lib/wasm32-wasi/libc.a").is_file() && !sysroot.join("lib/libc.a").is_file() {
        return Err(BuildError::Toolchain(format!(
            "wasi-libc not found under {}. {INSTALL_HINT}",
            sysroot.display()
        )));
    }

    let out = dir.join("target/celeriac");
    let gen_dir = out.join("gen");
    create_dir(&gen_dir)?;

    // Bindings for the world, generated fresh each build from the embedded WIT.
    let mut resolve = Resolve::default();
    const BINDINGS: &str = "generating C bindings";
    write_wit(&gen_dir.join("wit"))?;
    let (pkg, _) = resolve
        .push_dir(gen_dir.join("wit"))
        .map_err(wit(BINDINGS))?;
    let world = resolve
        .select_world(&[pkg], Some("task"))
        .map_err(wit(BINDINGS))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(wit(BINDINGS))?;
    for (name, contents) in files.iter() {
        write(&gen_dir.join(name), contents)?;
    }
    write(&gen_dir.join("celeriac.h"), SDK_H)?;
    write(&gen_dir.join("celeriac.c"), SDK_C)?;

    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(BuildError::Project(format!(
            "{} has no .c files",
            dir.display()
        )));
    }
    let core = out.join(format!("{module}.core.wasm"));
    let status = Command::new(&cc)
        .args([
            "--target=wasm32-wasi",
            "-O2",
            "-mexec-model=reactor",
            "-std=c11",
            "-Wall",
            "-Werror=implicit-function-declaration",
        ])
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg("-I")
        .arg(&gen_dir)
        .args(&sources)
        .arg(gen_dir.join("celeriac.c"))
        .arg(gen_dir.join("task.c"))
        .arg(gen_dir.join("task_component_type.o"))
        .arg("-o")
        .arg(&core)
        .status()
        .map_err(io(format!("running {cc}")))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "compiling {} failed (see the errors above)",
            dir.display()
        )));
    }

    let module_bytes = std::fs::read(&core).map_err(io(format!("reading {}", core.display())))?;
    const ENCODE: &str = "turning the core module into a component";
    let component = ComponentEncoder::default()
        .validate(true)
        .module(&module_bytes)
        .map_err(wit(ENCODE))?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .map_err(wit(ENCODE))?
        .encode()
        .map_err(wit(ENCODE))?;
    let wasm = out.join(format!("{module}.wasm"));
    write(&wasm, component)?;
    Ok(wasm)
}
