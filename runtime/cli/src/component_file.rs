//! Reading a component file for the local subcommands, checking its
//! signature when a trust directory is given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::{exit, one_line};
use celeriac_signing::{SignatureFile, TrustStore, Verified, signature_path};

pub(crate) struct ComponentFile {
    pub bytes: Vec<u8>,
    /// Set when a trust directory was given and a trusted key signed it.
    pub verified: Option<Verified>,
    /// Module name: from the verified signature, else the file stem.
    pub module: String,
}

/// Open a component: `Ok(Err(code))` when it was refused, the reason
/// already printed on stderr.
pub(crate) fn open(
    path: &Path,
    trust: Option<&Path>,
    sig: Option<&Path>,
) -> anyhow::Result<Result<ComponentFile, ExitCode>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(trust_dir) = trust else {
        return Ok(Ok(ComponentFile {
            bytes,
            verified: None,
            module: stem,
        }));
    };
    let verified = TrustStore::load(trust_dir).and_then(|t| t.verify_file(path, &bytes, sig));
    match verified {
        Ok(v) => Ok(Ok(ComponentFile {
            bytes,
            module: v.manifest.module.clone(),
            verified: Some(v),
        })),
        Err(e) => {
            eprintln!("refused: {}", one_line(&e.to_string()));
            Ok(Err(ExitCode::from(exit::UNTRUSTED)))
        }
    }
}

/// The signature beside a component, read without trusting it (for display).
pub(crate) fn unverified_signature(
    path: &Path,
    sig: Option<&Path>,
) -> Option<(PathBuf, SignatureFile)> {
    let sig_path = sig
        .map(Path::to_path_buf)
        .unwrap_or_else(|| signature_path(path));
    let text = std::fs::read(&sig_path).ok()?;
    SignatureFile::from_json(&text).ok().map(|s| (sig_path, s))
}
