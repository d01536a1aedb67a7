//! The `celeriac` binary: parses the command line, sets up logging, runs
//! one verb (`commands/<verb>.rs`) and turns its outcome into an exit
//! code. Verbs parse and print; what they do lives in the library crates.

mod capabilities;
mod commands;
mod common;
mod component_file;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use commands::*;
use tracing_subscriber::EnvFilter;

/// Exit codes shared by every subcommand.
pub mod exit {
    /// The task ran and failed (failure, limit or trap).
    pub const TASK_FAILED: u8 = 1;
    /// Bad usage or input, or a component that cannot be loaded.
    pub const ERROR: u8 = 2;
    /// Refused: unsigned, tampered, or signed by an untrusted key.
    pub const UNTRUSTED: u8 = 3;
    /// Waited for a result that did not come in time.
    pub const TIMEOUT: u8 = 4;
    /// The broker could not be reached (and, when waiting, stayed so until
    /// the deadline).
    pub const UNREACHABLE: u8 = 5;
    /// Stdout was closed early (`celeriac … | head`): what a process
    /// killed by SIGPIPE reports, as `cat` would.
    pub const BROKEN_PIPE: u8 = 141;
}

#[derive(Parser)]
#[command(name = "celeriac", version, about = "Sandboxed WebAssembly task runner", long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug); CELERIAC_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CELERIAC_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Build the task project in DIR into a component; prints the .wasm path.
    Build(build::Args),
    /// Create an ed25519 key pair: NAME.key (private) and NAME.pub.
    Keygen(keygen::Args),
    /// Sign a component: writes COMPONENT.sig.
    Sign(sign::Args),
    /// Check a component's signature against a trust directory.
    Verify(verify::Args),
    /// Run one task of a component locally, with no broker.
    Run(run::Args),
    /// Show what a component is, serves, imports and who signed it.
    Inspect(inspect::Args),
    /// See the whole flow in one process with no Redis: build, sign, upload,
    /// work and report.
    Demo(demo::Args),
    /// Verify a signed component and store it in the broker under its module name.
    Upload(upload::Args),
    /// List uploaded modules and the digests they point at.
    Components(components::Args),
    /// Queue a task; prints its id (or, with --wait, its result).
    Submit(submit::Args),
    /// Run a workflow (chain, group, chord, map, …) from a JSON or TOML file; prints its id.
    Workflow(workflow::Args),
    /// Consume queues and run tasks.
    Worker(Box<worker::Args>),
    /// Show a task's result record (or a workflow's state by its root id).
    Result(result::Args),
    /// Stop tasks or workflows from running (--terminate: running ones too).
    Revoke(revoke::Args),
    /// Fire periodic tasks from celeriac.toml (any number of beat processes; one fires each run).
    Beat(beat::Args),
    /// Queue depths and live workers.
    Status(status::Args),
    /// Manage dead letters: list, requeue, purge.
    Dlq(dlq::Args),
    /// Follow task and worker events live (filters by task, type, queue; --json).
    Events(events::Args),
    /// Serve the HTTP API and the web console (bearer tokens; TLS with --tls-cert).
    Serve(serve::Args),
    /// Manage the API's tokens: add (with scopes), list, remove.
    Token(token::Args),
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let result = match cli.command {
        Command::Build(a) => build::run(a),
        Command::Keygen(a) => keygen::run(a),
        Command::Sign(a) => sign::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Run(a) => run::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Upload(a) => upload::run(a),
        Command::Components(a) => components::run(a),
        Command::Submit(a) => submit::run(a),
        Command::Workflow(a) => workflow::run(a),
        Command::Revoke(a) => revoke::run(a),
        Command::Beat(a) => beat::run(a),
        Command::Worker(a) => worker::run(*a),
        Command::Result(a) => result::run(a),
        Command::Status(a) => status::run(a),
        Command::Dlq(a) => dlq::run(a),
        Command::Events(a) => events::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Token(a) => token::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if broker_unreachable(&e) => {
            eprintln!("error: broker unreachable: {}", error_line(&e));
            ExitCode::from(exit::UNREACHABLE)
        }
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::BROKEN_PIPE),
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(exit::ERROR)
        }
    }
}

/// `println!` panics when stdout is a pipe its reader closed ("failed
/// printing to stdout: Broken pipe"). Rust ignores SIGPIPE, and restoring
/// it would also kill verbs writing to a Redis connection that dropped, so
/// every verb's stdout writes end here instead: exit quietly.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if is_stdout_broken_pipe_panic(message) {
            std::process::exit(exit::BROKEN_PIPE.into());
        }
        default(info)
    }));
}

/// The message std's `print!` family panics with on a closed stdout.
fn is_stdout_broken_pipe_panic(message: &str) -> bool {
    // EPIPE is 32 on every Unix Celeriac builds for.
    message.starts_with("failed printing to stdout") && message.ends_with("(os error 32)")
}

/// A verb that writes with `?` gets the broken pipe as an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("CELERIAC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether `e` comes from a broker that did not answer (as opposed to bad
/// input or a refusal).
fn broker_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let broker = cause
            .downcast_ref::<celeriac_broker::BrokerError>()
            .or_else(
                || match cause.downcast_ref::<celeriac_client::ClientError>() {
                    Some(celeriac_client::ClientError::Broker(b)) => Some(b),
                    _ => None,
                },
            );
        broker.is_some_and(|b| b.is_transient())
    })
}

/// An error and its causes on one line, each cause once: errors that
/// display their source too (redis', thiserror's `{0}` wrappers) would
/// otherwise repeat it.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = one_line(&cause.to_string());
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Errors and causes are printed on one line so scripts can grep them.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A tokio runtime for subcommands that run guests.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_closed_stdout() {
        let io = std::io::Error::from_raw_os_error(32);
        assert!(is_stdout_broken_pipe_panic(&format!(
            "failed printing to stdout: {io}"
        )));
        assert!(!is_stdout_broken_pipe_panic("index out of bounds"));
        assert!(!is_stdout_broken_pipe_panic(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        let e = anyhow::Error::from(io).context("writing the listing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("nope")));
    }

    #[test]
    fn error_lines_name_each_cause_once() {
        let io = std::io::Error::other("Connection refused");
        let e = anyhow::Error::new(io)
            .context("redis: Connection refused")
            .context("cannot reach the broker");
        assert_eq!(
            error_line(&e),
            "cannot reach the broker: redis: Connection refused"
        );
    }

    #[test]
    fn one_line_flattens() {
        assert_eq!(one_line("a\n\nCaused by:\n    b"), "a Caused by: b");
    }
}
