//! The `celeriac` binary: everything lives in [`celeriac::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    celeriac::cli::main()
}
