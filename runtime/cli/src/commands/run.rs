//! `celeriac run`: one task of a local component in the sandbox, no
//! broker; prints the result or the one-line cause. A component verified
//! with `--trust` gets the grants its manifest signs (under the same
//! policy flags as a worker); an unverified one gets none.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::capabilities::PolicyArgs;
use crate::common::{LimitArgs, parse_call_json};
use crate::component_file::open;
use crate::{exit, one_line, runtime};
use celeriac_sandbox::{Sandbox, SandboxConfig, TaskCall};

#[derive(clap::Args)]
pub struct Args {
    /// The component (.wasm) to run.
    component: PathBuf,
    /// Task to run: `module.task` or just `task`.
    task: String,
    /// Positional arguments as a JSON array.
    #[arg(value_name = "ARGS_JSON", default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    kwargs: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Refuse to run unless a key in this directory signed the component.
    #[arg(long, value_name = "DIR", env = "CELERIAC_TRUST")]
    trust: Option<PathBuf>,
    /// Signature file; defaults to COMPONENT.sig.
    #[arg(long, value_name = "FILE")]
    sig: Option<PathBuf>,
    /// Task id shown to the task and in logs; defaults to a new UUID.
    #[arg(long)]
    id: Option<String>,
    /// What the task may reach over HTTP, and the configuration it may
    /// read, as for a worker.
    #[command(flatten)]
    policy: PolicyArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    parse_call_json(&args.args, &args.kwargs)?;
    let limits = args.limits.limits()?;

    let file = match open(&args.component, args.trust.as_deref(), args.sig.as_deref())? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let (prefix, name) = match args.task.rsplit_once('.') {
        Some((m, t)) => (Some(m), t),
        None => (None, args.task.as_str()),
    };
    // A signed component's module name is part of what was signed: asking
    // it for another module's task is a mistake worth stopping.
    if let (Some(prefix), Some(v)) = (prefix, &file.verified)
        && prefix != v.manifest.module
    {
        bail!(
            "{} is signed as module `{}`, not `{prefix}`",
            args.component.display(),
            v.manifest.module
        );
    }
    let module = prefix.map(str::to_string).unwrap_or(file.module);

    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        http: args.policy.http_policy()?,
        task_config: args.policy.task_config()?,
        ..SandboxConfig::default()
    })?;
    let grants = file
        .verified
        .as_ref()
        .map(|v| v.manifest.grants.clone())
        .unwrap_or_default();
    let (component, _) = sandbox
        .load(&file.bytes)
        .with_context(|| format!("loading {}", args.component.display()))?;
    let call = TaskCall {
        id: args
            .id
            .unwrap_or_else(celeriac_protocol::message::new_task_id),
        module,
        name: name.to_string(),
        args: args.args,
        kwargs: args.kwargs,
        retries: 0,
        max_retries: 0,
        grants: std::sync::Arc::new(grants),
    };
    let report = runtime()?.block_on(sandbox.run(&component, &call, &limits));
    tracing::info!(
        elapsed = ?report.elapsed,
        fuel = report.fuel_consumed,
        memory_peak = report.memory_peak,
        "task finished"
    );
    match report.result {
        Ok(json) => {
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            Ok(ExitCode::from(exit::TASK_FAILED))
        }
    }
}
