//! Compiled components on disk, keyed by content digest and by engine, so a
//! second process (or a restart) loads native code instead of compiling.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::signing::Digest;

/// A directory of `<digest>.cwasm` files for one engine configuration.
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Open (creating, mode 0700) the cache for `engine` under `root`.
    /// Returns `None` with a warning when the directory cannot be used
    /// safely: the host then compiles every time rather than trusting it.
    pub fn open(root: &Path, engine: &Engine) -> Option<Self> {
        let dir = root.join(engine_key(engine));
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "compile cache disabled: cannot create directory");
            return None;
        }
        // Loading a cached artifact runs its machine code, so the directory
        // must be ours alone: anyone who can write there could run code as us.
        match fs::metadata(&dir) {
            Ok(m) if m.mode() & 0o022 == 0 => Some(Self { dir }),
            Ok(_) => {
                tracing::warn!(dir = %dir.display(), "compile cache disabled: directory is writable by group or others");
                None
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "compile cache disabled");
                None
            }
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// The cached component, if present and loadable by this engine.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        // Read into memory rather than mmap the file: a mapped file that
        // someone truncates later takes the whole process down with SIGBUS.
        let bytes = fs::read(&path).ok()?;
        // SAFETY: the file was written by `store` below into a directory
        // that only this user can write (checked in `open`), and wasmtime
        // checks the artifact was produced by a compatible engine.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached component");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Save a compiled component. Failures only cost a recompile later.
    pub fn store(&self, digest: &Digest, component: &Component) {
        let path = self.path(digest);
        let result = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_atomic(&self.dir, &path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not write compile cache");
        }
    }
}

/// Write via a temporary file and rename, so a concurrent reader never sees
/// half a file.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A stable name for the engine's compatibility: wasmtime version, target
/// and every setting that changes generated code.
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Default cache root: `$CELERIAC_CACHE_DIR`, else the user cache dir.
pub fn default_cache_root() -> PathBuf {
    std::env::var_os("CELERIAC_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("celeriac").join("compiled")))
        .unwrap_or_else(|| std::env::temp_dir().join("celeriac-compiled"))
}
