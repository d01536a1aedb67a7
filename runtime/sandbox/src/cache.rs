//! Compiled components on disk, keyed by content digest and by engine, so a
//! second process (or a restart) loads native code instead of compiling.
//!
//! Loading a cached artifact runs its machine code with no further check,
//! so the cache is trusted only as far as ssh trusts `~/.ssh`: the cache
//! root, the engine's directory and every file read must be owned by the
//! effective user and not writable by group or others. A directory that
//! fails this makes the sandbox refuse to start (one line naming the fix);
//! a file that fails it is never deserialized, only recompiled and replaced.
//!
//! The cache is bounded by size: after each store, the least recently used
//! artifacts (by modification time, which each load refreshes) go until
//! the rest fit in `max_bytes`.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use celeriac_protocol::Digest;

/// A cache location this process must not trust. The message is one line
/// and names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error(
        "compile cache {path} is writable by {who}: chmod 700 {path} (or set CELERIAC_CACHE_DIR)"
    )]
    Writable { path: PathBuf, who: &'static str },
    #[error(
        "compile cache {path} is owned by uid {owner}, not by this user (uid {me}): use a directory of your own (set CELERIAC_CACHE_DIR, or CELERIAC_CACHE_DIR= to disable the cache)"
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error("compile cache {path} is not a directory: remove it (or set CELERIAC_CACHE_DIR)")]
    NotADirectory { path: PathBuf },
    #[error("compile cache file {path} cannot be checked: {reason}")]
    Unchecked { path: PathBuf, reason: String },
}

/// Whether a cache entry with this owner and mode may be trusted by user
/// `me`: ours, and writable by nobody else.
fn check_private(path: &Path, owner: u32, mode: u32, me: u32) -> Result<(), CacheError> {
    if owner != me {
        return Err(CacheError::NotOwned {
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(CacheError::Writable {
        path: path.to_path_buf(),
        who,
    })
}

/// The effective user id: the one whose files we may trust.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_dir(path: &Path) -> Result<(), CacheError> {
    match fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(CacheError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Ok(m) => check_private(path, m.uid(), m.mode(), euid()),
        // Vanished after creation: treat as untrusted rather than guess.
        Err(_) => Err(CacheError::NotADirectory {
            path: path.to_path_buf(),
        }),
    }
}

/// A directory of `<digest>.cwasm` files for one engine configuration.
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// Bytes of artifacts kept at most.
    max_bytes: u64,
}

impl DiskCache {
    /// Open (creating, mode 0700) the cache for `engine` under `root`.
    /// `Ok(None)`, with a warning, when it cannot be created (a read-only
    /// home): the host then compiles every time. An error when it exists
    /// but is not private to this user: that is a misconfiguration or an
    /// attack, and silently compiling would hide it.
    pub fn open(root: &Path, engine: &Engine, max_bytes: u64) -> Result<Option<Self>, CacheError> {
        let dir = root.join(engine_key(engine));
        for d in [root, dir.as_path()] {
            if let Err(e) = fs::DirBuilder::new().recursive(true).mode(0o700).create(d) {
                tracing::warn!(dir = %d.display(), error = %e, "compile cache disabled: cannot create directory");
                return Ok(None);
            }
            check_dir(d)?;
        }
        Ok(Some(Self { dir, max_bytes }))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// The cached component, if present, private to us and loadable by
    /// this engine.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let bytes = match read_private(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                // Never deserialized; the recompiled artifact replaces it.
                tracing::warn!(path = %path.display(), error = %e, "ignoring untrusted cached component");
                return None;
            }
        };
        // SAFETY: the file is owned by this user and writable by nobody
        // else, in directories with the same property (checked in `open`
        // and `read_private`), so only this user's own `store` wrote it;
        // wasmtime checks it was produced by a compatible engine.
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
        self.evict(&path);
    }

    /// Delete the least recently used artifacts until the rest fit in
    /// `max_bytes`, never `keep` (the one just written).
    fn evict(&self, keep: &Path) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let artifacts: Vec<Artifact> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                // Not followed: a symlink is never ours to count or keep.
                let meta = e.path().symlink_metadata().ok()?;
                meta.is_file().then(|| Artifact {
                    path: e.path(),
                    size: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect();
        for path in to_evict(artifacts, self.max_bytes, keep) {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "evicted from the compile cache"),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "could not evict"),
            }
        }
    }
}

/// A cached artifact as eviction sees it.
#[derive(Debug, Clone)]
struct Artifact {
    path: PathBuf,
    size: u64,
    /// Last stored or loaded.
    used: SystemTime,
}

/// Which artifacts to delete so the rest fit in `max_bytes`: least recently
/// used first, never `keep`.
fn to_evict(mut artifacts: Vec<Artifact>, max_bytes: u64, keep: &Path) -> Vec<PathBuf> {
    let mut total: u64 = artifacts.iter().map(|a| a.size).sum();
    artifacts.sort_by_key(|a| a.used);
    let mut out = Vec::new();
    for a in artifacts {
        if total <= max_bytes {
            break;
        }
        if a.path != keep {
            total -= a.size;
            out.push(a.path);
        }
    }
    out
}

/// Read a cache file if it is a regular file of ours that nobody else can
/// write. The checks are made on the opened file (no symlinks followed), so
/// the file read is the file checked. A file read is marked used (its
/// modification time is eviction's clock). `Ok(None)`: not cached.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, CacheError> {
    let mut file: File = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A symlink (ELOOP) or anything else unreadable: not ours to trust.
        Err(e) => {
            return Err(CacheError::Unchecked {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let meta = file.metadata().map_err(|e| CacheError::Unchecked {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Ok(None);
    }
    check_private(path, meta.uid(), meta.mode(), euid())?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Read into memory rather than mmap the file: a mapped file that
    // someone truncates later takes the whole process down with SIGBUS.
    match file.read_to_end(&mut bytes) {
        Ok(_) => {
            // On the file checked (ours, so its owner may set its times).
            let _ = file.set_modified(SystemTime::now());
            Ok(Some(bytes))
        }
        Err(_) => Ok(None),
    }
}

/// Write via a temporary file (created 0600) and rename, so a concurrent
/// reader never sees half a file, and whatever was there is replaced.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A stable name for the engine's compatibility. wasmtime's precompile
/// compatibility hash covers the wasmtime version, the target, the compiler
/// flags, the enabled features and the tunables, which include every
/// sandbox setting that changes generated code (fuel metering, epoch
/// interruption, memory reservation); our crate version is added so a new
/// release never loads an older one's artifacts.
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
/// `CELERIAC_CACHE_DIR=` (set and empty) disables the disk cache.
pub fn default_cache_root() -> Option<PathBuf> {
    match std::env::var_os("CELERIAC_CACHE_DIR") {
        Some(dir) if dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(
            dirs::cache_dir()
                .map(|d| d.join("celeriac").join("compiled"))
                .unwrap_or_else(|| std::env::temp_dir().join("celeriac-compiled")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_private_entries_of_ours_are_trusted() {
        let p = Path::new("/c");
        assert_eq!(check_private(p, 7, 0o40700, 7), Ok(()));
        assert_eq!(check_private(p, 7, 0o100600, 7), Ok(()));
        assert_eq!(check_private(p, 7, 0o40755, 7), Ok(()));
        assert!(matches!(
            check_private(p, 8, 0o40700, 7),
            Err(CacheError::NotOwned {
                owner: 8,
                me: 7,
                ..
            })
        ));
        assert!(matches!(
            check_private(p, 7, 0o40770, 7),
            Err(CacheError::Writable { who: "group", .. })
        ));
        assert!(matches!(
            check_private(p, 7, 0o41777, 7),
            Err(CacheError::Writable {
                who: "group and others",
                ..
            })
        ));
        let e = check_private(Path::new("/x"), 7, 0o40707, 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compile cache /x is writable by others: chmod 700 /x (or set CELERIAC_CACHE_DIR)"
        );
        let e = check_private(Path::new("/x"), 8, 0o40700, 7)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CELERIAC_CACHE_DIR=") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn the_key_follows_settings_that_change_code() {
        let key =
            |slots, fuel| engine_key(&super::super::engine::build_engine(slots, fuel).unwrap());
        assert_eq!(key(1, true), key(1, true));
        assert_ne!(key(1, true), key(1, false));
    }

    #[test]
    fn open_refuses_a_shared_root_and_engine_dir() {
        let engine = super::super::engine::build_engine(1, true).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        assert!(DiskCache::open(&root, &engine, u64::MAX).unwrap().is_some());
        let engine_dir = root.join(engine_key(&engine));
        assert_eq!(
            fs::metadata(&engine_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&engine_dir, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            DiskCache::open(&root, &engine, u64::MAX),
            Err(CacheError::Writable { who: "group", .. })
        ));
        fs::set_permissions(&engine_dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            DiskCache::open(&root, &engine, u64::MAX),
            Err(CacheError::Writable {
                who: "group and others",
                ..
            })
        ));
        // A file where the root should be: no cache, nothing trusted.
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(DiskCache::open(&file, &engine, u64::MAX).unwrap().is_none());
    }

    #[test]
    fn symlinked_or_shared_files_are_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::write(&real, b"code").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&real).unwrap().as_deref(), Some(&b"code"[..]));
        assert_eq!(read_private(&tmp.path().join("absent")).unwrap(), None);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(read_private(&link).is_err());
        fs::set_permissions(&real, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            read_private(&real),
            Err(CacheError::Writable { .. })
        ));
    }

    #[test]
    fn eviction_drops_the_least_recently_used_until_the_rest_fit() {
        let t = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let a = |name: &str, size, used| Artifact {
            path: PathBuf::from(name),
            size,
            used: t(used),
        };
        let all = vec![a("new", 40, 30), a("old", 40, 10), a("mid", 40, 20)];
        // Fits: nothing goes.
        assert!(to_evict(all.clone(), 120, Path::new("new")).is_empty());
        // Oldest first, only as many as needed.
        assert_eq!(
            to_evict(all.clone(), 100, Path::new("new")),
            vec![PathBuf::from("old")]
        );
        assert_eq!(
            to_evict(all.clone(), 40, Path::new("new")),
            vec![PathBuf::from("old"), PathBuf::from("mid")]
        );
        // The one just stored stays even if it alone is over the bound.
        assert_eq!(to_evict(all, 0, Path::new("old")).len(), 2);
    }

    #[test]
    fn the_store_keeps_within_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("c");
        let engine = Engine::default();
        // The empty component, in binary (no `wat` feature here).
        let component = Component::new(&engine, b"\0asm\x0d\0\x01\0").unwrap();
        let size = component.serialize().unwrap().len() as u64;
        let cache = DiskCache::open(&root, &engine, size * 2).unwrap().unwrap();
        let digests: Vec<Digest> = (0u8..4).map(|n| Digest::of(&[n])).collect();
        for d in &digests[..2] {
            cache.store(d, &component);
        }
        // Used since: the second stored is now the least recent.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.load(&engine, &digests[0]).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.store(&digests[2], &component);
        let kept = |d: &Digest| cache.path(d).exists();
        assert!(kept(&digests[0]) && !kept(&digests[1]) && kept(&digests[2]));
        cache.store(&digests[3], &component);
        assert_eq!(digests.iter().filter(|d| kept(d)).count(), 2);
    }
}
