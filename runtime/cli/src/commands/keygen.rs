//! `celeriac keygen`: a new ed25519 key pair, NAME.key (0600) and NAME.pub.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use celeriac_signing::generate_keypair;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the keys: DIR/NAME gives DIR/NAME.key and DIR/NAME.pub.
    /// NAME is the signer name recorded in signatures.
    #[arg(long, value_name = "DIR/NAME")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (secret, public, id) =
        generate_keypair(&args.out).with_context(|| format!("keygen {}", args.out.display()))?;
    println!(
        "private key: {} (mode 0600; keep it secret)",
        secret.display()
    );
    println!(
        "public key:  {} (key id {id}; copy it into workers' trust directory)",
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}
