use std::process::ExitCode;

fn main() -> ExitCode {
    celeriac::cli::main()
}
