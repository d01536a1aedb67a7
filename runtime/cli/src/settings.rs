//! `celeriac.toml`: routes, rate limits and periodic schedules, read by
//! `submit`, `workflow`, `worker` and `beat`. Routes and rate limits are
//! also flags and environment variables, which come before the file's.
//!
//! ```toml
//! [routes]               # first match wins: specific patterns first
//! "math.fib" = "cpu"
//! "math.*" = "math"
//!
//! [rate_limits]          # across all workers together
//! "web.fetch" = "10/s"
//!
//! [beat.report]          # see `celeriac beat`
//! task = "text.upper"
//! args = ["hello"]
//! cron = "0 */5 * * * *"
//!
//! [celery]               # see `celeriac worker --celery-queue`
//! queues = ["celery"]
//! result_expires = "1d"
//! global_keyprefix = "app:"   # Celery's transport option, if set
//! [celery.tasks]         # Celery names that are not `module.task`
//! "myapp.tasks.add" = "math.add"
//! "myapp.tasks.fetch" = { task = "web.fetch", max_retries = 5 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use celeriac_client::Routes;
use celeriac_protocol::units::parse_rate;

/// Where settings come from.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SettingsArgs {
    /// Settings file (routes, rate limits, schedules); ./celeriac.toml when present.
    #[arg(long, env = "CELERIAC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Send tasks matching PATTERN (a name or glob) to QUEUE, before the
    /// file's routes; repeatable, comma-separated in CELERIAC_ROUTES.
    #[arg(
        long = "route",
        value_name = "PATTERN=QUEUE",
        env = "CELERIAC_ROUTES",
        value_delimiter = ','
    )]
    pub routes: Vec<String>,
    /// Limit TASK to RATE calls (10/s, 100/m, 5/h) across all workers;
    /// repeatable, comma-separated in CELERIAC_RATE_LIMITS.
    #[arg(
        long = "rate-limit",
        value_name = "TASK=RATE",
        env = "CELERIAC_RATE_LIMITS",
        value_delimiter = ','
    )]
    pub rate_limits: Vec<String>,
}

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Pattern → queue, in file order.
    #[serde(default)]
    pub routes: toml::Table,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, String>,
    /// Periodic tasks by name (read by `celeriac beat`).
    #[serde(default)]
    pub beat: BTreeMap<String, toml::Table>,
    /// Celery queues a worker consumes (read by `celeriac worker`).
    #[serde(default)]
    pub celery: Option<CelerySection>,
}

/// `[celery]`: Celery interop for workers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CelerySection {
    /// kombu queues to consume, besides `--celery-queue`.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Celery's `result_expires` (e.g. "1d").
    #[serde(default)]
    pub result_expires: Option<String>,
    /// Celery's `max_retries` for names that do not set one.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Celery's `global_keyprefix` transport option, if it sets one.
    #[serde(default)]
    pub global_keyprefix: Option<String>,
    /// Celery name → `module.task`, or `{ task, max_retries }`.
    #[serde(default)]
    pub tasks: BTreeMap<String, CeleryTask>,
}

/// How one Celery name runs.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CeleryTask {
    Task(String),
    With(CeleryTaskOptions),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeleryTaskOptions {
    pub task: String,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Settings from flags, environment and file together.
#[derive(Debug, Default)]
pub struct Settings {
    pub routes: Routes,
    /// Task name → least time between two of its calls.
    pub rate_limits: BTreeMap<String, Duration>,
    pub file: File,
    /// The file read, if any.
    pub path: Option<PathBuf>,
}

impl SettingsArgs {
    pub fn load(&self) -> anyhow::Result<Settings> {
        let default = Path::new("celeriac.toml");
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None if default.is_file() => Some(default.to_path_buf()),
            None => None,
        };
        let file: File = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read settings file {}", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), one_line(e.message())))?
            }
            None => File::default(),
        };
        let at = |what: &str| match &path {
            Some(p) => format!("{} [{what}]", p.display()),
            None => what.to_string(),
        };
        let mut rules: Vec<(String, String)> = Vec::new();
        for r in &self.routes {
            let (p, q) = r
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--route `{r}`: expected PATTERN=QUEUE"))?;
            rules.push((p.trim().to_string(), q.trim().to_string()));
        }
        for (p, q) in &file.routes {
            let q = q
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{}: `{p}` must name a queue", at("routes")))?;
            rules.push((p.clone(), q.to_string()));
        }
        let routes = Routes::new(rules)?;
        let mut rate_limits = BTreeMap::new();
        for (task, rate) in &file.rate_limits {
            let every = parse_rate(rate)
                .map_err(|e| anyhow::anyhow!("{}: {task}: {e}", at("rate_limits")))?;
            rate_limits.insert(task.clone(), every);
        }
        for r in &self.rate_limits {
            let (task, rate) = r
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--rate-limit `{r}`: expected TASK=RATE"))?;
            let every =
                parse_rate(rate).map_err(|e| anyhow::anyhow!("--rate-limit {task}: {e}"))?;
            rate_limits.insert(task.trim().to_string(), every);
        }
        Ok(Settings {
            routes,
            rate_limits,
            file,
            path,
        })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
