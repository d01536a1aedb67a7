//! Trust stores: the public keys a host trusts, and verification of a
//! signature (and of component bytes) against them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::Verifier;

use super::signature::signed_message;
use super::{Digest, KeyError, Manifest, PublicKey, SignatureError, SignatureFile};

/// The public keys a host trusts: every `*.pub` file in a directory.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    keys: HashMap<String, PublicKey>,
    dir: PathBuf,
}

/// A manifest a trusted key signed: the bytes it names are not checked yet
/// (see [`TrustStore::verify_signature`]).
#[derive(Clone, Debug)]
pub struct Signed {
    pub manifest: Manifest,
    /// The trusted key's local name (its file stem in the trust directory).
    pub signer: String,
    pub key_id: String,
}

/// A component whose bytes a trusted key signed.
#[derive(Clone, Debug)]
pub struct Verified {
    pub digest: Digest,
    pub manifest: Manifest,
    /// The trusted key's local name (its file stem in the trust directory).
    pub signer: String,
    pub key_id: String,
}

/// Why a component was refused. Each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("unsigned: no signature at {0}")]
    Unsigned(PathBuf),
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error(
        "unknown key: signed by key {key_id} (claims to be `{claimed_signer}`), which is not in the trust directory {trust_dir}"
    )]
    UnknownKey {
        key_id: String,
        claimed_signer: String,
        trust_dir: PathBuf,
    },
    #[error("bad signature: the signature does not match its manifest (key {key_id}, `{signer}`)")]
    BadSignature { key_id: String, signer: String },
    #[error("tampered: component bytes hash to {actual} but {signer} signed {signed}")]
    Tampered {
        actual: Digest,
        signed: Digest,
        signer: String,
    },
    #[error("trust directory {path}: {reason}")]
    TrustDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<SignatureError> for VerifyError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Malformed(m) => VerifyError::Malformed(m),
            other => VerifyError::Malformed(other.to_string()),
        }
    }
}

impl TrustStore {
    /// Load every `*.pub` in `dir`. An empty directory is an error: a host
    /// that trusts nobody can run nothing, which is never what was meant.
    pub fn load(dir: &Path) -> Result<Self, VerifyError> {
        let trust_err = |reason: String| VerifyError::TrustDir {
            path: dir.to_path_buf(),
            reason,
        };
        let entries = fs::read_dir(dir).map_err(|e| trust_err(e.to_string()))?;
        let mut keys = HashMap::new();
        for entry in entries {
            let path = entry.map_err(|e| trust_err(e.to_string()))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let key = PublicKey::load(&path)?;
                keys.insert(key.id(), key);
            }
        }
        if keys.is_empty() {
            return Err(trust_err("holds no public keys (*.pub)".into()));
        }
        Ok(Self {
            keys,
            dir: dir.to_path_buf(),
        })
    }

    /// A store holding exactly these keys (for embedding and tests).
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.id(), k)).collect(),
            dir: PathBuf::from("<memory>"),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check that a trusted key signed exactly `bytes`.
    pub fn verify(&self, bytes: &[u8], sig: &SignatureFile) -> Result<Verified, VerifyError> {
        let signed = self.verify_signature(sig)?;
        let actual = Digest::of(bytes);
        if actual != signed.manifest.digest {
            return Err(VerifyError::Tampered {
                actual,
                signed: signed.manifest.digest,
                signer: signed.signer,
            });
        }
        Ok(Verified {
            digest: actual,
            manifest: signed.manifest,
            signer: signed.signer,
            key_id: signed.key_id,
        })
    }

    /// Check the signature alone: its key is trusted and it is valid over
    /// its manifest. Cheap (no component bytes needed), so a worker can
    /// refuse a component before fetching megabytes of it; the caller must
    /// still check that the bytes hash to `manifest.digest`.
    pub fn verify_signature(&self, sig: &SignatureFile) -> Result<Signed, VerifyError> {
        let key = self.keys.get(&sig.key_id);
        let payload = sig.payload_bytes()?;
        let Some(key) = key else {
            let claimed_signer = sig
                .unverified_manifest()
                .map(|m| m.signer)
                .unwrap_or_else(|_| "?".into());
            return Err(VerifyError::UnknownKey {
                key_id: sig.key_id.clone(),
                claimed_signer,
                trust_dir: self.dir.clone(),
            });
        };
        let signature = sig.signature_bytes()?;
        key.key
            .verify(&signed_message(&payload), &signature)
            .map_err(|_| VerifyError::BadSignature {
                key_id: sig.key_id.clone(),
                signer: key.name.clone(),
            })?;
        // Only now is the manifest trustworthy.
        let manifest: Manifest = serde_json::from_slice(&payload)
            .map_err(|e| VerifyError::Malformed(format!("manifest is not valid: {e}")))?;
        manifest
            .grants
            .validate()
            .map_err(|e| VerifyError::Malformed(format!("manifest grants are not valid: {e}")))?;
        Ok(Signed {
            manifest,
            signer: key.name.clone(),
            key_id: sig.key_id.clone(),
        })
    }

    /// Verify a component file against its signature file (`COMPONENT.sig`
    /// unless `sig_path` is given).
    pub fn verify_file(
        &self,
        component: &Path,
        bytes: &[u8],
        sig_path: Option<&Path>,
    ) -> Result<Verified, VerifyError> {
        let sig_path = sig_path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| super::signature_path(component));
        let text = match fs::read(&sig_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VerifyError::Unsigned(sig_path));
            }
            Err(e) => {
                return Err(VerifyError::Malformed(format!(
                    "{}: {e}",
                    sig_path.display()
                )));
            }
        };
        let sig = SignatureFile::from_json(&text)?;
        self.verify(bytes, &sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyPair, generate_keypair, sign_component};

    fn keypair(dir: &Path, name: &str) -> (KeyPair, PublicKey) {
        let (secret, public, _) = generate_keypair(&dir.join(name)).unwrap();
        (
            KeyPair::load(&secret).unwrap(),
            PublicKey::load(&public).unwrap(),
        )
    }

    #[test]
    fn verifies_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let (mallory, _) = keypair(dir.path(), "mallory");
        let trust = TrustStore::from_keys([alice_pub]);
        let bytes = b"\0asm component bytes".to_vec();

        let sig = sign_component(&bytes, &alice, "math").unwrap();
        let ok = trust.verify(&bytes, &sig).unwrap();
        assert_eq!(ok.manifest.module, "math");
        assert_eq!(ok.signer, "alice");
        assert_eq!(ok.digest, Digest::of(&bytes));

        let mut changed = bytes.clone();
        changed[3] ^= 1;
        assert!(matches!(
            trust.verify(&changed, &sig),
            Err(VerifyError::Tampered { .. })
        ));

        let foreign = sign_component(&bytes, &mallory, "math").unwrap();
        assert!(matches!(
            trust.verify(&bytes, &foreign),
            Err(VerifyError::UnknownKey { .. })
        ));

        // A manifest swapped under a valid signature is caught by the signature.
        let mut forged = sig.clone();
        forged.payload = foreign.payload.clone();
        assert!(matches!(
            trust.verify(&bytes, &forged),
            Err(VerifyError::BadSignature { .. })
        ));

        let mut garbled = sig.clone();
        garbled.signature = "not base64!".into();
        assert!(matches!(
            trust.verify(&bytes, &garbled),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn a_signature_is_checked_without_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let (mallory, _) = keypair(dir.path(), "mallory");
        let trust = TrustStore::from_keys([alice_pub]);
        let bytes = b"\0asm some component".to_vec();
        let sig = sign_component(&bytes, &alice, "math").unwrap();
        let signed = trust.verify_signature(&sig).unwrap();
        assert_eq!(signed.manifest.digest, Digest::of(&bytes));
        assert_eq!(
            (signed.signer.as_str(), signed.manifest.module.as_str()),
            ("alice", "math")
        );
        assert!(matches!(
            trust.verify_signature(&sign_component(&bytes, &mallory, "math").unwrap()),
            Err(VerifyError::UnknownKey { .. })
        ));
        let mut forged = sig.clone();
        forged.payload = sign_component(b"other", &alice, "math").unwrap().payload;
        assert!(matches!(
            trust.verify_signature(&forged),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn signed_at_is_explicit_and_parsed_back() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let trust = TrustStore::from_keys([alice_pub]);
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let sig = crate::sign_component_at(b"x", &alice, "math", at).unwrap();
        let m = trust.verify(b"x", &sig).unwrap().manifest;
        assert_eq!(m.signed_at, "2027-01-15T08:00:00Z");
        assert_eq!(m.signed_at_time().unwrap(), at);
        let odd = Manifest {
            signed_at: "yesterday".into(),
            ..m
        };
        assert!(odd.signed_at_time().is_err());
    }

    #[test]
    fn key_files_are_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, _, _) = generate_keypair(&dir.path().join("k")).unwrap();
        let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            generate_keypair(&dir.path().join("k")),
            Err(KeyError::Exists(_))
        ));
    }

    #[test]
    fn grants_are_signed_and_cannot_be_widened() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let trust = TrustStore::from_keys([alice_pub]);
        let grants = crate::Grants {
            http: vec!["https://api.example.com".parse().unwrap()],
            config: vec!["token".into()],
            kv: true,
            reuse: Some(10),
        };
        let sig =
            crate::sign_component_with(b"x", &alice, "web", &grants, std::time::SystemTime::now())
                .unwrap();
        assert_eq!(trust.verify(b"x", &sig).unwrap().manifest.grants, grants);

        // Someone with write access to the store widens the grant: the
        // payload no longer matches the signature.
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = String::from_utf8(b64.decode(&sig.payload).unwrap()).unwrap();
        for widened in [
            payload.replace("https://api.example.com", "https://*"),
            payload.replace(r#""reuse":10"#, r#""reuse":1000000"#),
        ] {
            assert_ne!(payload, widened);
            let forged = SignatureFile {
                payload: b64.encode(widened),
                ..sig.clone()
            };
            assert!(matches!(
                trust.verify(b"x", &forged),
                Err(VerifyError::BadSignature { .. })
            ));
        }

        // A signer cannot ask for malformed grants.
        let bad = crate::Grants {
            config: vec!["a b".into()],
            ..Default::default()
        };
        let e = crate::sign_component_with(b"x", &alice, "web", &bad, std::time::SystemTime::now())
            .unwrap_err();
        assert!(e.to_string().contains("invalid config key `a b`"), "{e}");
    }
}
