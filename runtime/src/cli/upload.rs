use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::common::BrokerArgs;
use super::{exit, one_line, runtime};
use crate::registry::{RegistryError, upload};
use crate::signing::{SignatureFile, TrustStore, signature_path};

#[derive(clap::Args)]
pub struct Args {
    /// The component (.wasm) to upload.
    component: PathBuf,
    /// Signature file; defaults to COMPONENT.sig.
    #[arg(long)]
    sig: Option<PathBuf>,
    /// Directory of trusted public keys: only what they signed is accepted.
    #[arg(long, env = "CELERIAC_TRUST")]
    trust: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let sig_path = args
        .sig
        .clone()
        .unwrap_or_else(|| signature_path(&args.component));
    let sig_text = match std::fs::read(&sig_path) {
        Ok(t) => t,
        Err(_) => {
            eprintln!("refused: unsigned: no signature at {}", sig_path.display());
            return Ok(ExitCode::from(exit::UNTRUSTED));
        }
    };
    let trust = TrustStore::load(&args.trust)?;
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let sig = match SignatureFile::from_json(&sig_text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("refused: {}", one_line(&e.to_string()));
                return Ok(ExitCode::from(exit::UNTRUSTED));
            }
        };
        match upload(broker.as_ref(), &bytes, &sig, &trust).await {
            Ok(up) => {
                println!("{} {}", up.module, up.digest);
                if let Some(prev) = up.previous {
                    eprintln!(
                        "module `{}` moved from {prev}; messages pinning it still run",
                        up.module
                    );
                } else if !up.new_bytes {
                    eprintln!("already uploaded");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(RegistryError::Refused(e)) => {
                eprintln!("refused: {}", one_line(&e.to_string()));
                Ok(ExitCode::from(exit::UNTRUSTED))
            }
            Err(e) => Err(e.into()),
        }
    })
}
