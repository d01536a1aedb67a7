//! `celeriac serve`: the HTTP API and the web console. Authentication is
//! on by default: the first start creates an admin token and says where it
//! is (never the token itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::common::BrokerArgs;
use crate::runtime;
use celeriac_broker::registry::DEFAULT_MAX_COMPONENT_SIZE;
use celeriac_protocol::units::{format_size, parse_size};
use celeriac_server::{ServeConfig, Server};
use celeriac_signing::TrustStore;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "CELERIAC_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Where tokens are kept (created 0700; files 0600).
    #[arg(long, env = "CELERIAC_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Let requests without a token read (queues, results, events); never
    /// submit, upload or manage.
    #[arg(long)]
    anonymous: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Trusted signers: uploads through the API must be signed by one
    /// (uploads are refused without it).
    #[arg(long, env = "CELERIAC_TRUST")]
    trust: Option<PathBuf>,
    /// Refuse components larger than this.
    #[arg(long, value_name = "SIZE", default_value_t = format_size(DEFAULT_MAX_COMPONENT_SIZE as u64))]
    max_size: String,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// The state directory: the flag, else `$XDG_STATE_HOME/celeriac`, else
/// `~/.local/state/celeriac`.
pub fn state_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("celeriac"));
    }
    let home = std::env::var_os("HOME").context("no --state-dir given and HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/state/celeriac"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let max_upload = usize::try_from(parse_size(&args.max_size)?).unwrap_or(usize::MAX);
    let trust = args.trust.as_deref().map(TrustStore::load).transpose()?;
    let config = ServeConfig {
        listen: args.listen,
        state_dir: state_dir(args.state_dir)?,
        anonymous: args.anonymous,
        tls: args.tls_cert.zip(args.tls_key),
        trust,
        max_upload,
    };
    runtime()?.block_on(async {
        let broker = args.broker.connect().await?;
        let shutdown = CancellationToken::new();
        let server = Server::bind(broker, config, shutdown.clone()).await?;
        if let Some(path) = &server.admin_token_file {
            eprintln!(
                "created an admin token: {} (mode 0600); send it as `Authorization: Bearer <token>`",
                path.display()
            );
        }
        let addr = server.local_addr()?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        eprintln!("serving the API on {scheme}://{addr}/api/v1 and the console on {scheme}://{addr}/console/");
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        });
        let term = CancellationToken::new();
        tokio::spawn(watch_term(term.clone()));
        tokio::select! {
            r = server.run() => r?,
            _ = term.cancelled() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn watch_term(term: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut s) = signal(SignalKind::terminate()) {
        s.recv().await;
        term.cancel();
    }
}
