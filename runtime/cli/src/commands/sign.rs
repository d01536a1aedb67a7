//! `celeriac sign`: sign a component with a private key, with the
//! capabilities it requests, writing COMPONENT.sig.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::capabilities::GrantArgs;
use celeriac_signing::{KeyPair, sign_component_with, signature_path};

#[derive(clap::Args)]
pub struct Args {
    /// The component (.wasm) to sign.
    component: PathBuf,
    /// Private key file written by `celeriac keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Module name its tasks are served under; defaults to the file stem.
    #[arg(long)]
    name: Option<String>,
    /// Where to write the signature; defaults to COMPONENT.sig.
    #[arg(long)]
    out: Option<PathBuf>,
    /// What the component may reach, signed with it.
    #[command(flatten)]
    grants: GrantArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let key = KeyPair::load(&args.key)?;
    let module = match args.name {
        Some(n) => n,
        None => args
            .component
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("cannot derive a module name from the file name; pass --name")?,
    };
    let grants = args.grants.grants();
    let sig = sign_component_with(&bytes, &key, &module, &grants, std::time::SystemTime::now())?;
    let manifest = sig.unverified_manifest()?;
    let out = args.out.unwrap_or_else(|| signature_path(&args.component));
    std::fs::write(&out, sig.to_json() + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "signed {} as module `{}` ({}) by {} (key id {}), granting {}: {}",
        args.component.display(),
        manifest.module,
        manifest.digest,
        key.name,
        sig.key_id,
        manifest.grants.summary(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
