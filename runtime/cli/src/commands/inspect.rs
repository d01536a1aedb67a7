//! `celeriac inspect`: what a component is, serves, imports and who signed
//! it; why it cannot load, in one line.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::component_file::{open, unverified_signature};
use crate::{one_line, runtime};
use celeriac_protocol::units::format_size;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::Digest;

#[derive(clap::Args)]
pub struct Args {
    /// The component (.wasm) to inspect.
    component: PathBuf,
    /// Also verify the signature against this trust directory.
    #[arg(long, value_name = "DIR")]
    trust: Option<PathBuf>,
    /// Signature file; defaults to COMPONENT.sig.
    #[arg(long, value_name = "FILE")]
    sig: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = match open(&args.component, args.trust.as_deref(), args.sig.as_deref())? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let digest = Digest::of(&file.bytes);
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        ..SandboxConfig::default()
    })?;
    // Inspecting a component that cannot load is useful too: report why.
    let (tasks, imports, exports, load_error) = match sandbox.load(&file.bytes) {
        Ok((c, _)) => {
            let tasks = runtime()?.block_on(sandbox.tasks(&c));
            match tasks {
                Ok(t) => (t, c.imports(), c.exports(), None),
                Err(e) => (
                    vec![],
                    c.imports(),
                    c.exports(),
                    Some(one_line(&e.to_string())),
                ),
            }
        }
        Err(e) => (vec![], vec![], vec![], Some(one_line(&e.to_string()))),
    };

    let signature = match (
        &file.verified,
        unverified_signature(&args.component, args.sig.as_deref()),
    ) {
        (Some(v), _) => json!({
            "verified": true,
            "signer": v.signer,
            "key_id": v.key_id,
            "module": v.manifest.module,
            "signed_at": v.manifest.signed_at,
            "grants": v.manifest.grants,
        }),
        (None, Some((path, sig))) => match sig.unverified_manifest() {
            Ok(m) => json!({
                "verified": false,
                "file": path,
                "signer": m.signer,
                "key_id": sig.key_id,
                "module": m.module,
                "signed_at": m.signed_at,
                "grants": m.grants,
                "matches_bytes": m.digest == digest,
            }),
            Err(e) => json!({ "verified": false, "file": path, "error": e.to_string() }),
        },
        (None, None) => serde_json::Value::Null,
    };

    if args.json {
        let doc = json!({
            "file": args.component,
            "digest": digest.to_string(),
            "size": file.bytes.len(),
            "module": file.module,
            "tasks": tasks,
            "imports": imports,
            "exports": exports,
            "signature": signature,
            "error": load_error,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("file:      {}", args.component.display());
        println!("digest:    {digest}");
        println!(
            "size:      {} bytes ({})",
            file.bytes.len(),
            format_size(file.bytes.len() as u64)
        );
        println!("module:    {}", file.module);
        println!("tasks:     {}", tasks.join(", "));
        println!("exports:   {}", exports.join(", "));
        println!("imports:");
        for i in &imports {
            println!("  {i}");
        }
        match &signature {
            serde_json::Value::Null => println!("signature: none (unsigned)"),
            s if s["verified"] == true => println!(
                "signature: verified, signed by {} (key {}) at {}",
                s["signer"].as_str().unwrap_or("?"),
                s["key_id"].as_str().unwrap_or("?"),
                s["signed_at"].as_str().unwrap_or("?")
            ),
            s if s.get("error").is_some() => println!("signature: unreadable: {}", s["error"]),
            s => println!(
                "signature: claims signer {} (key {}) at {}{}; not verified (pass --trust DIR)",
                s["signer"].as_str().unwrap_or("?"),
                s["key_id"].as_str().unwrap_or("?"),
                s["signed_at"].as_str().unwrap_or("?"),
                if s["matches_bytes"] == false {
                    ", DIGEST DOES NOT MATCH these bytes"
                } else {
                    ""
                }
            ),
        }
        if let Some(grants) = signature.get("grants") {
            // From the signed manifest; unverified unless --trust says so.
            let grants: celeriac_protocol::Grants =
                serde_json::from_value(grants.clone()).unwrap_or_default();
            println!("grants:    {}", grants.summary());
        }
        if let Some(e) = &load_error {
            println!("error:     {e}");
        }
    }
    Ok(if load_error.is_some() {
        ExitCode::from(crate::exit::ERROR)
    } else {
        ExitCode::SUCCESS
    })
}
