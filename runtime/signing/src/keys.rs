//! Ed25519 key files: creating a pair (the private half 0600), loading them
//! (refusing a private key others can read), and key ids.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Problems reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ed25519 {what} key in PEM form: {reason}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("could not gather randomness for a new key: {0}")]
    Random(String),
    #[error("key name must be a plain file name, got `{0}`")]
    BadName(String),
    #[error(
        "{path}: private key is accessible by others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// A signing key and the name it signs as (its file stem).
pub struct KeyPair {
    pub name: String,
    pub signing: SigningKey,
}

/// A trusted public key and its local name (its file stem).
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub name: String,
    pub key: VerifyingKey,
}

/// Short stable id of a public key: the first 16 hex digits of the SHA-256
/// of its 32 raw bytes. Signature files carry it so a verifier can find the
/// right key without trying each one.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Create `PREFIX.key` (PKCS#8 PEM, mode 0600) and `PREFIX.pub` (SPKI PEM).
/// Both are standard formats, readable by `openssl pkey`.
pub fn generate_keypair(prefix: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| KeyError::BadName(prefix.display().to_string()))?;
    let secret_path = prefix.with_file_name(format!("{name}.key"));
    let public_path = prefix.with_file_name(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    if let Some(dir) = secret_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }

    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let signing = SigningKey::from_bytes(&seed);
    let secret_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Random(e.to_string()))?;

    // create_new + mode 0600 at open: the secret is never readable by others,
    // not even for an instant.
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(io(&secret_path))?;
    f.write_all(secret_pem.as_bytes())
        .map_err(io(&secret_path))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&public_path)
        .map_err(io(&public_path))?;
    f.write_all(public_pem.as_bytes())
        .map_err(io(&public_path))?;

    Ok((secret_path, public_path, key_id(&signing.verifying_key())))
}

impl KeyPair {
    /// Load a private key file written by `celeriac keygen` (or any PKCS#8
    /// ed25519 PEM). Like ssh, refuses a key that group or others may read
    /// or write: whoever could read it could sign as its owner.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(io)?.permissions().mode();
        if exposed(mode) {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let pem = fs::read_to_string(path).map_err(io)?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
            what: "private",
            reason: e.to_string(),
        })?;
        Ok(Self {
            name: stem(path),
            signing,
        })
    }
}

impl PublicKey {
    /// Load a public key file (SPKI PEM).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
            what: "public",
            reason: e.to_string(),
        })?;
        Ok(Self {
            name: stem(path),
            key,
        })
    }

    pub fn id(&self) -> String {
        key_id(&self.key)
    }
}

/// Whether a private key file's mode lets anyone but its owner at it.
fn exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_only_modes_are_private() {
        assert!(!exposed(0o100600));
        assert!(!exposed(0o400));
        assert!(exposed(0o640));
        assert!(exposed(0o604));
        assert!(exposed(0o666));
    }

    #[test]
    fn loading_an_exposed_key_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _, _) = generate_keypair(&dir.path().join("alice")).unwrap();
        assert!(KeyPair::load(&secret).is_ok());
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load(&secret).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("(mode 0644)"), "{msg}");
        assert!(
            msg.ends_with(&format!("run `chmod 600 {}`", secret.display())),
            "{msg}"
        );
    }
}
