//! The component store on top of a broker. Upload refuses what a worker
//! could not run (size, signature, the component itself) and silent
//! rollbacks, and keeps every valid signature a component arrives with;
//! fetching checks the signatures first (no bytes moved for a component
//! nobody trusted signed for the module asked), then the bytes' digest.
//!
//! The registry does not know wasmtime (the broker side must not depend on
//! it): whether bytes are a runnable component is a check the caller passes
//! in, built on the sandbox by `celeriac upload`.

use crate::{Broker, BrokerError, ModuleInfo};
use celeriac_protocol::now_ms;
use celeriac_protocol::units::format_size;
use celeriac_signing::{
    Digest, Manifest, SignatureError, SignatureFile, Signed, TrustStore, Verified, VerifyError,
};

/// Largest component `upload` accepts unless told otherwise. Components of
/// interpreters (Python, JavaScript) are tens of MiB; anything much larger
/// is more likely a mistake, and every worker fetches and compiles it.
pub const DEFAULT_MAX_COMPONENT_SIZE: usize = 64 << 20;

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
    #[error("component is {}, over the upload limit of {}", format_size(*size), format_size(*limit))]
    TooLarge { size: u64, limit: u64 },
    /// What the caller's component check said (the sandbox's own words).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "downgrade: module `{module}` is at {current}, signed {current_signed_at}; this component was signed earlier ({signed_at}): upload with --allow-downgrade to roll back"
    )]
    Downgrade {
        module: String,
        current: Digest,
        current_signed_at: String,
        signed_at: String,
    },
    #[error(
        "component {digest} is signed as module {}, but the message asks for `{asked}`",
        quoted(signed)
    )]
    WrongModule {
        digest: Digest,
        asked: String,
        signed: Vec<String>,
    },
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that bytes are a component a worker can run; the error is one
/// line naming why not.
pub type ComponentCheck<'a> = &'a (dyn Fn(&[u8]) -> Result<(), String> + Send + Sync);

/// How an upload is judged.
#[derive(Clone, Copy)]
pub struct UploadOptions<'a> {
    /// Whether a worker could run the bytes (`celeriac upload` compiles,
    /// links and checks the contract exactly as a worker does). CPU-heavy;
    /// called inline, after the cheap checks.
    pub check: ComponentCheck<'a>,
    /// Larger uploads are refused before anything else looks at them.
    pub max_size: usize,
    /// Move the module to a component signed before its current one.
    pub allow_downgrade: bool,
}

impl<'a> UploadOptions<'a> {
    /// The defaults: [`DEFAULT_MAX_COMPONENT_SIZE`], no downgrades.
    pub fn new(check: ComponentCheck<'a>) -> Self {
        Self {
            check,
            max_size: DEFAULT_MAX_COMPONENT_SIZE,
            allow_downgrade: false,
        }
    }
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
    /// True when it moved to a component signed before the previous one
    /// (only with `allow_downgrade`).
    pub downgraded: bool,
}

/// Check `bytes` (size, signature against `trust`, version order, whether
/// a worker could run them), store them with their signature, and point the
/// module name at them. Nothing is stored and the module does not move
/// unless every check passed. Re-uploading the same bytes adds the
/// signature (another key, another module) without moving anything; a new
/// version moves the name and leaves old digests runnable for messages
/// that pin them.
pub async fn upload(
    broker: &dyn Broker,
    bytes: &[u8],
    signature: &SignatureFile,
    trust: &TrustStore,
    options: UploadOptions<'_>,
) -> Result<Uploaded, RegistryError> {
    check_size(bytes.len(), options.max_size)?;
    let verified = trust.verify(bytes, signature)?;
    let module = verified.manifest.module.clone();
    let current = broker.get_module(&module).await?;
    let step = decide_move(
        current.as_ref(),
        &verified.manifest,
        options.allow_downgrade,
    )?;
    (options.check)(bytes).map_err(RegistryError::Invalid)?;
    let new_bytes = broker
        .put_component(
            &verified.digest,
            bytes,
            &verified.key_id,
            &module,
            &signature.to_json(),
        )
        .await?;
    let previous = current.as_ref().map(|m| m.digest);
    if step != Move::Stay {
        broker
            .set_module(&ModuleInfo {
                module: module.clone(),
                digest: verified.digest,
                signer: verified.signer.clone(),
                size: bytes.len() as u64,
                uploaded_at: now_ms(),
                signed_at: Some(verified.manifest.signed_at.clone()),
                grants: verified.manifest.grants.clone(),
            })
            .await?;
    }
    Ok(Uploaded {
        module,
        digest: verified.digest,
        signer: verified.signer,
        new_bytes,
        previous: previous.filter(|_| step != Move::Stay),
        downgraded: step == Move::Downgrade,
    })
}

fn check_size(size: usize, limit: usize) -> Result<(), RegistryError> {
    if size > limit {
        return Err(RegistryError::TooLarge {
            size: size as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// What an upload does to the module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Already points at these bytes.
    Stay,
    /// First version, or one signed no earlier than the current.
    Forward,
    /// To a version signed before the current one (allowed explicitly).
    Downgrade,
}

/// Versions of a module are ordered by when they were signed: moving to
/// one signed earlier than the current is a rollback, refused unless
/// allowed. A current record without `signed_at` (written by an earlier
/// release) cannot be compared and does not block.
fn decide_move(
    current: Option<&ModuleInfo>,
    new: &Manifest,
    allow_downgrade: bool,
) -> Result<Move, RegistryError> {
    let Some(current) = current else {
        return Ok(Move::Forward);
    };
    if current.digest == new.digest {
        return Ok(Move::Stay);
    }
    let new_at = new.signed_at_time()?;
    let current_at = current
        .signed_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    match current_at {
        Some(at) if new_at < at => {
            if allow_downgrade {
                Ok(Move::Downgrade)
            } else {
                Err(RegistryError::Downgrade {
                    module: current.module.clone(),
                    current: current.digest,
                    current_signed_at: current.signed_at.clone().unwrap_or_default(),
                    signed_at: new.signed_at.clone(),
                })
            }
        }
        _ => Ok(Move::Forward),
    }
}

/// Fetch a component by digest for a message of `module` and check it end
/// to end: a trusted key signed it as `module` (checked on the signatures
/// alone, before any bytes move), and the bytes hash to the digest asked
/// for.
pub async fn fetch_verified(
    broker: &dyn Broker,
    digest: &Digest,
    module: &str,
    trust: &TrustStore,
) -> Result<(Vec<u8>, Verified), RegistryError> {
    let signatures = broker
        .get_component_signatures(digest)
        .await?
        .ok_or(RegistryError::NotFound(*digest))?;
    let signed = pick_signature(&signatures, digest, module, trust)?;
    let bytes = broker
        .get_component_bytes(digest)
        .await?
        .ok_or(RegistryError::NotFound(*digest))?;
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(RegistryError::DigestMismatch {
            expected: *digest,
            actual,
        });
    }
    Ok((
        bytes,
        Verified {
            digest: actual,
            manifest: signed.manifest,
            signer: signed.signer,
            key_id: signed.key_id,
        },
    ))
}

/// The first stored signature that a trusted key made over a manifest
/// naming `digest` and `module`. When none does, the error of the one that
/// came closest: a trusted signature for another module says more than an
/// unknown key.
fn pick_signature(
    signatures: &[String],
    digest: &Digest,
    module: &str,
    trust: &TrustStore,
) -> Result<Signed, RegistryError> {
    let mut other_modules = Vec::new();
    let mut best: Option<(u8, RegistryError)> = None;
    let mut keep = |rank: u8, e: RegistryError| {
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, e));
        }
    };
    for text in signatures {
        let signed = SignatureFile::from_json(text.as_bytes())
            .map_err(VerifyError::from)
            .and_then(|sig| trust.verify_signature(&sig));
        let signed = match signed {
            Ok(s) => s,
            Err(e) => {
                let rank = match e {
                    VerifyError::BadSignature { .. } => 2,
                    VerifyError::UnknownKey { .. } => 1,
                    _ => 0,
                };
                keep(rank, e.into());
                continue;
            }
        };
        if signed.manifest.digest != *digest {
            keep(
                3,
                VerifyError::Tampered {
                    actual: *digest,
                    signed: signed.manifest.digest,
                    signer: signed.signer,
                }
                .into(),
            );
        } else if signed.manifest.module != module {
            other_modules.push(signed.manifest.module);
        } else {
            return Ok(signed);
        }
    }
    if !other_modules.is_empty() {
        other_modules.sort();
        other_modules.dedup();
        return Err(RegistryError::WrongModule {
            digest: *digest,
            asked: module.to_string(),
            signed: other_modules,
        });
    }
    Err(best.map_or(RegistryError::NotFound(*digest), |(_, e)| e))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::MemoryBroker;
    use celeriac_signing::{KeyPair, PublicKey, generate_keypair, sign_component_at};

    fn keypair(dir: &std::path::Path, name: &str) -> (KeyPair, PublicKey) {
        let (secret, public, _) = generate_keypair(&dir.join(name)).unwrap();
        (
            KeyPair::load(&secret).unwrap(),
            PublicKey::load(&public).unwrap(),
        )
    }

    fn at(secs: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn manifest(digest: Digest, signed_at: &str) -> Manifest {
        Manifest {
            digest,
            size: 1,
            module: "math".into(),
            signer: "alice".into(),
            signed_at: signed_at.into(),
            grants: Default::default(),
        }
    }

    fn info(digest: Digest, signed_at: Option<&str>) -> ModuleInfo {
        ModuleInfo {
            module: "math".into(),
            digest,
            signer: "alice".into(),
            size: 1,
            uploaded_at: 0,
            signed_at: signed_at.map(str::to_string),
            grants: Default::default(),
        }
    }

    #[test]
    fn versions_move_forward_only_unless_allowed() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let old = "2027-01-15T08:00:00Z";
        let new = "2027-01-15T08:00:01Z";
        let m = |d, t| manifest(d, t);
        assert_eq!(decide_move(None, &m(a, old), false).unwrap(), Move::Forward);
        let cur = info(a, Some(new));
        assert_eq!(
            decide_move(Some(&cur), &m(a, old), false).unwrap(),
            Move::Stay
        );
        assert!(matches!(
            decide_move(Some(&cur), &m(b, old), false),
            Err(RegistryError::Downgrade { .. })
        ));
        assert_eq!(
            decide_move(Some(&cur), &m(b, old), true).unwrap(),
            Move::Downgrade
        );
        // Same second counts as not earlier; later moves forward.
        assert_eq!(
            decide_move(Some(&cur), &m(b, new), false).unwrap(),
            Move::Forward
        );
        let older = info(a, Some(old));
        assert_eq!(
            decide_move(Some(&older), &m(b, new), false).unwrap(),
            Move::Forward
        );
        // A record of an earlier release has no time to compare with.
        assert_eq!(
            decide_move(Some(&info(a, None)), &m(b, old), false).unwrap(),
            Move::Forward
        );
        // A signed manifest whose time cannot be read is refused, not guessed.
        assert!(decide_move(Some(&cur), &m(b, "soon"), false).is_err());
        let e = decide_move(Some(&cur), &m(b, old), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-downgrade") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn size_is_checked_against_the_limit() {
        assert!(check_size(10, 10).is_ok());
        let e = check_size(65 << 20, DEFAULT_MAX_COMPONENT_SIZE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "component is 65.0 MiB, over the upload limit of 64.0 MiB"
        );
    }

    #[tokio::test]
    async fn refused_uploads_store_nothing_and_move_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let trust = TrustStore::from_keys([alice_pub]);
        let broker = MemoryBroker::new();
        let ok: ComponentCheck = &|_| Ok(());
        let v1 = b"version one".to_vec();
        let sig1 = sign_component_at(&v1, &alice, "math", at(10)).unwrap();
        let up = upload(&broker, &v1, &sig1, &trust, UploadOptions::new(ok))
            .await
            .unwrap();
        assert!(up.new_bytes && up.previous.is_none());

        let calls = std::sync::atomic::AtomicUsize::new(0);
        let refuse = |_: &[u8]| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("not a valid component: junk".to_string())
        };
        let junk = b"junk".to_vec();
        let sig = sign_component_at(&junk, &alice, "math", at(20)).unwrap();
        let e = upload(&broker, &junk, &sig, &trust, UploadOptions::new(&refuse))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "not a valid component: junk");
        // Too large: refused before the (heavy) check runs.
        let options = UploadOptions {
            max_size: 3,
            ..UploadOptions::new(&refuse)
        };
        assert!(matches!(
            upload(&broker, &junk, &sig, &trust, options).await,
            Err(RegistryError::TooLarge { size: 4, limit: 3 })
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            broker
                .get_component_signatures(&Digest::of(&junk))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            broker.get_module("math").await.unwrap().unwrap().digest,
            up.digest
        );
    }

    #[tokio::test]
    async fn every_signature_is_kept_and_one_that_fits_is_picked() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = keypair(dir.path(), "alice");
        let (bob, bob_pub) = keypair(dir.path(), "bob");
        let both = TrustStore::from_keys([alice_pub.clone(), bob_pub.clone()]);
        let broker = MemoryBroker::new();
        let ok: ComponentCheck = &|_| Ok(());
        let bytes = b"component".to_vec();
        let digest = Digest::of(&bytes);
        for (key, module) in [(&alice, "math"), (&bob, "math"), (&alice, "calc")] {
            let sig = sign_component_at(&bytes, key, module, at(1)).unwrap();
            upload(&broker, &bytes, &sig, &both, UploadOptions::new(ok))
                .await
                .unwrap();
        }
        let sigs = broker
            .get_component_signatures(&digest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sigs.len(), 3);

        let only_bob = TrustStore::from_keys([bob_pub]);
        let (_, v) = fetch_verified(&broker, &digest, "math", &only_bob)
            .await
            .unwrap();
        assert_eq!(v.signer, "bob");
        let only_alice = TrustStore::from_keys([alice_pub]);
        let (_, v) = fetch_verified(&broker, &digest, "calc", &only_alice)
            .await
            .unwrap();
        assert_eq!(
            (v.signer.as_str(), v.manifest.module.as_str()),
            ("alice", "calc")
        );
        // Bob never signed it as calc, and nobody as text.
        let e = pick_signature(&sigs, &digest, "calc", &only_bob).unwrap_err();
        assert!(matches!(e, RegistryError::WrongModule { .. }), "{e}");
        let e = pick_signature(&sigs, &digest, "text", &both)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "component {digest} is signed as module `calc`, `math`, but the message asks for `text`"
            )
        );
        // Signatures of other bytes, filed under this digest, are tampering.
        let other = sign_component_at(b"other", &alice, "math", at(1))
            .unwrap()
            .to_json();
        let e = pick_signature(&[other], &digest, "math", &both).unwrap_err();
        assert!(e.to_string().starts_with("refused: tampered"), "{e}");
        let e = pick_signature(&["{}".into()], &digest, "math", &both).unwrap_err();
        assert!(
            e.to_string().starts_with("refused: malformed signature"),
            "{e}"
        );
    }
}
