//! Bearer tokens with scopes. Only SHA-256 digests of tokens are stored
//! (`tokens.json`, mode 0600); a presented token is hashed and compared
//! with every stored digest in constant time. The first start creates an
//! admin token and writes it, alone, to `admin.token` (mode 0600).
//! Tokens are never logged: only their names are.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. `Admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read queues, workers, components, results, dead letters, events.
    Read,
    /// Submit tasks and workflows, revoke.
    Submit,
    /// Upload signed components.
    Upload,
    /// Requeue and purge dead letters; everything else.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Upload, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Upload => "upload",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AuthError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| AuthError::Scope(s.to_string()))
    }

    /// Scopes from a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, AuthError> {
        let mut out: Vec<Scope> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Scope::parse)
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(AuthError::Scope(s.to_string()));
        }
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown scope `{0}`: expected read, submit, upload or admin (comma-separated)")]
    Scope(String),
    #[error("token name `{0}` is invalid: use 1 to 64 letters, digits, `_`, `-` or `.`")]
    Name(String),
    #[error("a token named `{0}` exists already")]
    Exists(String),
    #[error("no token named `{0}`")]
    Unknown(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a token store: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            name: "anonymous".into(),
            scopes: vec![Scope::Read],
        }
    }

    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&needed)
    }
}

/// One stored token: its name, scopes and digest, never the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<StoredToken>,
}

/// The tokens of one server, kept in its state directory.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    tokens: Vec<StoredToken>,
    /// When the file was read: a change (`celeriac token add|remove`)
    /// is picked up by a running server at the next request.
    modified: Option<std::time::SystemTime>,
}

/// Name of the admin token created on the first start.
pub const FIRST_ADMIN: &str = "admin";

impl TokenStore {
    /// The store in `dir`; created with an admin token when there is none,
    /// in which case the path of the file holding that token is returned.
    pub fn open_or_init(dir: &Path) -> Result<(Self, Option<PathBuf>), AuthError> {
        let mut store = Self::open(dir)?;
        if !store.tokens.is_empty() {
            return Ok((store, None));
        }
        let token = store.add(FIRST_ADMIN, &[Scope::Admin])?;
        let path = dir.join("admin.token");
        write_private(&path, format!("{token}\n").as_bytes())?;
        Ok((store, Some(path)))
    }

    /// The store in `dir` (empty if it has no file yet).
    pub fn open(dir: &Path) -> Result<Self, AuthError> {
        let io = |source| AuthError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let path = dir.join("tokens.json");
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| AuthError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                file.tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(AuthError::Io { path, source }),
        };
        Ok(Self {
            path,
            tokens,
            modified,
        })
    }

    /// Whether the file changed since it was read.
    pub fn is_stale(&self) -> bool {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            != self.modified
    }

    /// Read the file again (after [`Self::is_stale`]); the old tokens stay
    /// if it cannot be read.
    pub fn reload(&mut self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        match Self::open(dir) {
            Ok(fresh) => *self = fresh,
            Err(e) => tracing::warn!(error = %e, "cannot reload tokens; keeping the ones loaded"),
        }
    }

    pub fn tokens(&self) -> &[StoredToken] {
        &self.tokens
    }

    /// Create a token; returns it (the only time it is seen).
    pub fn add(&mut self, name: &str, scopes: &[Scope]) -> Result<String, AuthError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(AuthError::Name(name.to_string()));
        }
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(AuthError::Exists(name.to_string()));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| AuthError::Random(e.to_string()))?;
        let token = format!("cel_{}", hex::encode(raw));
        self.tokens.push(StoredToken {
            name: name.to_string(),
            scopes: scopes.to_vec(),
            sha256: digest(&token),
            created_at: celeriac_protocol::now_ms(),
        });
        self.save()?;
        self.modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        Ok(token)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), AuthError> {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        if self.tokens.len() == before {
            return Err(AuthError::Unknown(name.to_string()));
        }
        self.save()
    }

    fn save(&self) -> Result<(), AuthError> {
        let json = serde_json::to_vec_pretty(&File {
            tokens: self.tokens.clone(),
        })
        .map_err(|e| AuthError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&self.path, &json)
    }

    /// Who holds `token`, if anyone. Every stored digest is compared, in
    /// constant time, whatever matches.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        let presented = Sha256::digest(token.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            let Ok(stored) = hex::decode(&t.sha256) else {
                continue;
            };
            if bool::from(stored.ct_eq(presented.as_slice())) {
                found = Some(Identity {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                });
            }
        }
        found
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Write a file only its owner can read, replacing it whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_creates_one_private_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let (store, created) = TokenStore::open_or_init(dir.path()).unwrap();
        let path = created.expect("an admin token on the first start");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stored = std::fs::metadata(dir.path().join("tokens.json")).unwrap();
        assert_eq!(stored.permissions().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let who = store.identify(token.trim()).unwrap();
        assert_eq!(who.name, "admin");
        assert!(who.allows(Scope::Upload));
        // Only the digest is stored.
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!file.contains(token.trim()));
        // The second start creates nothing.
        let (again, created) = TokenStore::open_or_init(dir.path()).unwrap();
        assert!(created.is_none());
        assert_eq!(again.tokens().len(), 1);
    }

    #[test]
    fn scopes_bound_what_a_token_may_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TokenStore::open(dir.path()).unwrap();
        let reader = store.add("dash", &[Scope::Read]).unwrap();
        let who = store.identify(&reader).unwrap();
        assert!(who.allows(Scope::Read) && !who.allows(Scope::Submit));
        assert!(store.identify("cel_0000").is_none());
        assert!(store.identify("").is_none());
        assert!(matches!(
            store.add("dash", &[Scope::Read]),
            Err(AuthError::Exists(_))
        ));
        assert!(matches!(
            store.add("no spaces", &[Scope::Read]),
            Err(AuthError::Name(_))
        ));
        store.remove("dash").unwrap();
        assert!(store.identify(&reader).is_none());
        assert!(
            TokenStore::open(dir.path())
                .unwrap()
                .identify(&reader)
                .is_none()
        );
    }

    #[test]
    fn scope_lists_parse_or_name_the_bad_one() {
        assert_eq!(
            Scope::parse_list("submit, read,read").unwrap(),
            [Scope::Read, Scope::Submit]
        );
        let e = Scope::parse_list("read,write").unwrap_err().to_string();
        assert!(e.contains("`write`"), "{e}");
        assert!(Scope::parse_list("").is_err());
    }
}
