//! `celeriac build DIR`: build a task project into a component and print
//! the .wasm path (the pipeline is `celeriac-build`).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The task project to build.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let wasm = celeriac_build::build(&args.dir)?;
    println!("{}", wasm.display());
    Ok(ExitCode::SUCCESS)
}
