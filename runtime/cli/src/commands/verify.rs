//! `celeriac verify`: check a component's signature against a trust
//! directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::{exit, one_line};
use celeriac_signing::TrustStore;

#[derive(clap::Args)]
pub struct Args {
    /// The component (.wasm) to check.
    component: PathBuf,
    /// Directory of trusted public keys (*.pub).
    #[arg(long, env = "CELERIAC_TRUST")]
    trust: PathBuf,
    /// Signature file; defaults to COMPONENT.sig.
    #[arg(long)]
    sig: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let verified = TrustStore::load(&args.trust)
        .and_then(|trust| trust.verify_file(&args.component, &bytes, args.sig.as_deref()));
    match verified {
        Ok(v) => {
            println!(
                "ok {} module={} signer={} key={} signed_at={}",
                v.digest, v.manifest.module, v.signer, v.key_id, v.manifest.signed_at
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("refused: {}", one_line(&e.to_string()));
            Ok(ExitCode::from(exit::UNTRUSTED))
        }
    }
}
