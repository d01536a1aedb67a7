//! `celeriac token`: the API's bearer tokens: add (printed once, stored
//! as a digest), list, remove.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::common::time;
use celeriac_server::{Scope, TokenStore};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// Where tokens are kept (as `celeriac serve --state-dir`).
    #[arg(long, env = "CELERIAC_STATE_DIR", value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Create a token; prints it (the only time it is shown).
    Add {
        name: String,
        /// Comma-separated: read, submit, upload, admin (admin: all).
        #[arg(long, value_parser = Scope::parse_list)]
        scope: std::vec::Vec<Scope>,
    },
    /// List tokens by name with their scopes.
    List,
    /// Remove a token (a running server stops accepting it at once).
    Remove { name: String },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = super::serve::state_dir(args.state_dir)?;
    let mut store = TokenStore::open(&dir)?;
    match args.action {
        Action::Add { name, scope } => {
            let token = store.add(&name, &scope)?;
            println!("{token}");
        }
        Action::List => {
            println!("{:<24} {:<28} CREATED", "NAME", "SCOPES");
            for t in store.tokens() {
                let scopes: Vec<_> = t.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<24} {:<28} {}",
                    t.name,
                    scopes.join(","),
                    time(t.created_at)
                );
            }
        }
        Action::Remove { name } => store.remove(&name)?,
    }
    Ok(ExitCode::SUCCESS)
}
