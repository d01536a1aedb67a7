//! Signature files and manifests: what a publisher signs and how it is
//! encoded (see the module docs of `signing` for the format).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use celeriac_protocol::grants::{GrantError, Grants};

use super::{Digest, KeyPair, key_id};

/// Format tag of signature files, also the domain-separation prefix of the
/// signed bytes so a Celeriac signature can never be replayed elsewhere.
pub const FORMAT: &str = "celeriac-signature/v1";

/// What the publisher vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Content digest of the component bytes.
    pub digest: Digest,
    /// Size of the component in bytes.
    pub size: u64,
    /// Module name the component serves tasks under (`math` in `math.add`).
    pub module: String,
    /// Name the publisher signed as (the key's file stem); informational:
    /// verifiers name signers by their own trust directory.
    pub signer: String,
    /// When it was signed, RFC 3339.
    pub signed_at: String,
    /// What the component may reach (HTTP origins, config keys, key-value):
    /// part of what is signed, so no one but the signer can widen it.
    /// Absent in manifests that grant nothing.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub grants: Grants,
}

impl Manifest {
    /// `signed_at` as a time; the registry orders versions of a module by it.
    pub fn signed_at_time(&self) -> Result<SystemTime, SignatureError> {
        humantime::parse_rfc3339_weak(&self.signed_at).map_err(|e| {
            SignatureError::Malformed(format!(
                "manifest signed_at `{}` is not an RFC 3339 time: {e}",
                self.signed_at
            ))
        })
    }
}

/// The on-disk (and on-wire) signature: see the module docs for the format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignatureFile {
    pub format: String,
    pub key_id: String,
    /// base64 of the manifest JSON: the exact bytes that were signed.
    pub payload: String,
    /// base64 of the ed25519 signature.
    pub signature: String,
}

/// A signature file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("invalid module name `{0}`: use letters, digits, `_` and `-`, starting with a letter")]
    BadModuleName(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// Where the signature of `component` lives by default: `COMPONENT.sig`.
pub fn signature_path(component: &Path) -> PathBuf {
    let mut name = component.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Module names become the prefix of task names (`math.add`) and Redis keys,
/// so keep them to a safe alphabet.
pub fn validate_module_name(name: &str) -> Result<(), SignatureError> {
    if celeriac_protocol::message::valid_module_name(name) {
        Ok(())
    } else {
        Err(SignatureError::BadModuleName(name.to_string()))
    }
}

/// Sign `bytes` as module `module` with `key`, dated now, granting nothing.
pub fn sign_component(
    bytes: &[u8],
    key: &KeyPair,
    module: &str,
) -> Result<SignatureFile, SignatureError> {
    sign_component_with(bytes, key, module, &Grants::default(), SystemTime::now())
}

/// Sign with an explicit `signed_at` (to the second): for reproducible
/// release pipelines, and for tests of version ordering, which registries
/// decide by `signed_at`.
pub fn sign_component_at(
    bytes: &[u8],
    key: &KeyPair,
    module: &str,
    signed_at: SystemTime,
) -> Result<SignatureFile, SignatureError> {
    sign_component_with(bytes, key, module, &Grants::default(), signed_at)
}

/// Sign `bytes` as module `module`, requesting `grants` (checked first).
pub fn sign_component_with(
    bytes: &[u8],
    key: &KeyPair,
    module: &str,
    grants: &Grants,
    signed_at: SystemTime,
) -> Result<SignatureFile, SignatureError> {
    validate_module_name(module)?;
    grants.validate()?;
    let manifest = Manifest {
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        module: module.to_string(),
        signer: key.name.clone(),
        signed_at: humantime::format_rfc3339_seconds(signed_at).to_string(),
        grants: grants.clone(),
    };
    let payload = serde_json::to_vec(&manifest)
        .map_err(|e| SignatureError::Malformed(format!("could not encode manifest: {e}")))?;
    let signature = key.signing.sign(&signed_message(&payload));
    Ok(SignatureFile {
        format: FORMAT.to_string(),
        key_id: key_id(&key.signing.verifying_key()),
        payload: B64.encode(&payload),
        signature: B64.encode(signature.to_bytes()),
    })
}

/// The bytes an ed25519 signature covers.
pub(crate) fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(FORMAT.len() + 1 + payload.len());
    msg.extend_from_slice(FORMAT.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(payload);
    msg
}

impl SignatureFile {
    /// Parse a signature file's JSON.
    pub fn from_json(text: &[u8]) -> Result<Self, SignatureError> {
        let sig: SignatureFile = serde_json::from_slice(text)
            .map_err(|e| SignatureError::Malformed(format!("not signature JSON: {e}")))?;
        if sig.format != FORMAT {
            return Err(SignatureError::Malformed(format!(
                "unsupported format `{}` (expected `{FORMAT}`)",
                sig.format
            )));
        }
        Ok(sig)
    }

    /// Pretty JSON for writing to disk.
    pub fn to_json(&self) -> String {
        // Serialising plain strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub(crate) fn payload_bytes(&self) -> Result<Vec<u8>, SignatureError> {
        B64.decode(self.payload.trim())
            .map_err(|e| SignatureError::Malformed(format!("payload is not base64: {e}")))
    }

    pub(crate) fn signature_bytes(&self) -> Result<ed25519_dalek::Signature, SignatureError> {
        let raw = B64
            .decode(self.signature.trim())
            .map_err(|e| SignatureError::Malformed(format!("signature is not base64: {e}")))?;
        ed25519_dalek::Signature::from_slice(&raw).map_err(|_| {
            SignatureError::Malformed(format!("signature must be 64 bytes, got {}", raw.len()))
        })
    }

    /// The manifest, decoded without checking the signature: only for
    /// display. Anything that acts on it must go through a `TrustStore`.
    pub fn unverified_manifest(&self) -> Result<Manifest, SignatureError> {
        serde_json::from_slice(&self.payload_bytes()?)
            .map_err(|e| SignatureError::Malformed(format!("manifest is not valid: {e}")))
    }
}
