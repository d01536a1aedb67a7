//! `celeriac upload`: refuse what a worker would refuse (size, signature,
//! the component itself, checked by loading it as a worker does) and
//! silent rollbacks, then store it and point its module at it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::common::BrokerArgs;
use crate::{exit, one_line, runtime};
use celeriac_broker::registry::{DEFAULT_MAX_COMPONENT_SIZE, RegistryError, UploadOptions, upload};
use celeriac_protocol::units::{format_size, parse_size};
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{SignatureFile, TrustStore, signature_path};

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
    /// Refuse components larger than this.
    #[arg(long, value_name = "SIZE", default_value_t = format_size(DEFAULT_MAX_COMPONENT_SIZE as u64))]
    max_size: String,
    /// Move the module to a component signed before its current one (a
    /// rollback); refused without this flag.
    #[arg(long)]
    allow_downgrade: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let max_size = usize::try_from(parse_size(&args.max_size)?).unwrap_or(usize::MAX);
    // Checked before reading, so a huge file is never loaded.
    let len = std::fs::metadata(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?
        .len();
    if len > max_size as u64 {
        eprintln!(
            "error: {}: component is {}, over the upload limit of {} (--max-size)",
            args.component.display(),
            format_size(len),
            format_size(max_size as u64)
        );
        return Ok(ExitCode::from(exit::ERROR));
    }
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
    // The worker's own loading path (compile, link against what the host
    // offers, contract check), so whatever uploads also runs.
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        ..SandboxConfig::default()
    })?;
    let check = |bytes: &[u8]| sandbox.check(bytes);
    let options = UploadOptions {
        max_size,
        allow_downgrade: args.allow_downgrade,
        ..UploadOptions::new(&check)
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let sig = match SignatureFile::from_json(&sig_text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("refused: {}", one_line(&e.to_string()));
                return Ok(ExitCode::from(exit::UNTRUSTED));
            }
        };
        match upload(broker.as_ref(), &bytes, &sig, &trust, options).await {
            Ok(up) => {
                println!("{} {}", up.module, up.digest);
                match (up.previous, up.downgraded) {
                    (Some(prev), true) => eprintln!(
                        "module `{}` rolled back from {prev}; messages pinning it still run",
                        up.module
                    ),
                    (Some(prev), false) => eprintln!(
                        "module `{}` moved from {prev}; messages pinning it still run",
                        up.module
                    ),
                    (None, _) if !up.new_bytes => eprintln!("already uploaded"),
                    (None, _) => {}
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(RegistryError::Refused(e)) => {
                eprintln!("refused: {}", one_line(&e.to_string()));
                Ok(ExitCode::from(exit::UNTRUSTED))
            }
            Err(
                e @ (RegistryError::Invalid(_)
                | RegistryError::TooLarge { .. }
                | RegistryError::Downgrade { .. }
                | RegistryError::Signature(_)),
            ) => {
                eprintln!(
                    "error: {}: {}",
                    args.component.display(),
                    one_line(&e.to_string())
                );
                Ok(ExitCode::from(exit::ERROR))
            }
            Err(e) => Err(e.into()),
        }
    })
}
