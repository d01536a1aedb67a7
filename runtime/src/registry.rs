//! The component store on top of a broker: upload verifies before storing;
//! fetching verifies again, by digest and signature, before anything runs.

use crate::broker::{Broker, BrokerError, ModuleInfo};
use crate::results::now_ms;
use crate::signing::{Digest, SignatureError, SignatureFile, TrustStore, Verified, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("refused: {0}")]
    Refused(#[from] VerifyError),
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("component {0} is not in the store (upload it first)")]
    NotFound(Digest),
    #[error("stored bytes of {expected} hash to {actual}: the store is corrupt")]
    DigestMismatch { expected: Digest, actual: Digest },
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub module: String,
    pub digest: Digest,
    pub signer: String,
    /// False when these exact bytes were already stored.
    pub new_bytes: bool,
    /// The digest the module name pointed at before, if it moved.
    pub previous: Option<Digest>,
}

/// Verify `bytes` against `signature` and the trust store, store both under
/// the digest, and point the module name at it. Re-uploading the same
/// bytes is a no-op; a new version moves the name and leaves old digests
/// runnable for messages that pin them.
pub async fn upload(
    broker: &dyn Broker,
    bytes: &[u8],
    signature: &SignatureFile,
    trust: &TrustStore,
) -> Result<Uploaded, RegistryError> {
    let verified = trust.verify(bytes, signature)?;
    let new_bytes = broker
        .put_component(&verified.digest, bytes, &signature.to_json())
        .await?;
    let current = broker.get_module(&verified.manifest.module).await?;
    let previous = current
        .as_ref()
        .map(|m| m.digest)
        .filter(|d| *d != verified.digest);
    if current.is_none() || previous.is_some() {
        broker
            .set_module(&ModuleInfo {
                module: verified.manifest.module.clone(),
                digest: verified.digest,
                signer: verified.signer.clone(),
                size: bytes.len() as u64,
                uploaded_at: now_ms(),
            })
            .await?;
    }
    Ok(Uploaded {
        module: verified.manifest.module,
        digest: verified.digest,
        signer: verified.signer,
        new_bytes,
        previous,
    })
}

/// Fetch a component by digest and check it end to end: the bytes hash to
/// the digest asked for, and a trusted key signed exactly them.
pub async fn fetch_verified(
    broker: &dyn Broker,
    digest: &Digest,
    trust: &TrustStore,
) -> Result<(Vec<u8>, Verified), RegistryError> {
    let stored = broker
        .get_component(digest)
        .await?
        .ok_or(RegistryError::NotFound(*digest))?;
    let actual = Digest::of(&stored.bytes);
    if actual != *digest {
        return Err(RegistryError::DigestMismatch {
            expected: *digest,
            actual,
        });
    }
    let signature = SignatureFile::from_json(stored.signature.as_bytes())?;
    let verified = trust.verify(&stored.bytes, &signature)?;
    Ok((stored.bytes, verified))
}
