//! Flags for capabilities: what a signer requests (`sign --allow-http
//! --config --kv`, into the signed manifest) and what a worker permits
//! (`worker --allow-http --deny-http --allow-private`, HTTP bounds, and
//! the configuration values tasks may read).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use celeriac_protocol::grants::{Grants, OriginPattern, validate_config_key};
use celeriac_protocol::units::{parse_duration, parse_size};
use celeriac_sandbox::{ConfigValues, HttpPolicy};

/// What a component asks to reach; signed with it.
#[derive(clap::Args)]
pub struct GrantArgs {
    /// Let the component send HTTP requests to this origin
    /// (SCHEME://HOST[:PORT]; `*.` and `:*` are wildcards, e.g.
    /// https://api.example.com or 'https://*.stripe.com'). Repeatable.
    #[arg(long = "allow-http", value_name = "ORIGIN")]
    http: Vec<OriginPattern>,
    /// Let the component read this configuration key (wasi:config) from
    /// the worker. Repeatable.
    #[arg(long = "config", value_name = "KEY", value_parser = config_key)]
    config: Vec<String>,
    /// Let the component keep state in its module's key-value namespace.
    #[arg(long)]
    kv: bool,
    /// Let one instance serve up to N tasks of this component, one after
    /// another, on workers whose policy allows it (`worker --reuse`): as
    /// a Celery pool process serves many tasks, state a task leaves in the
    /// instance (globals, caches) is seen by the next. Default: a fresh
    /// instance for every task.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=celeriac_protocol::grants::MAX_REUSE as i64))]
    reuse: Option<u32>,
}

impl GrantArgs {
    pub fn grants(&self) -> Grants {
        Grants {
            http: self.http.clone(),
            config: self.config.clone(),
            kv: self.kv,
            reuse: self.reuse,
        }
    }
}

fn config_key(text: &str) -> Result<String, String> {
    validate_config_key(text).map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

/// What this worker lets tasks reach, whatever their grants say.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Only these origins may be reached (default: any origin a signed
    /// grant names). Repeatable; same syntax as `sign --allow-http`.
    #[arg(long = "allow-http", value_name = "PATTERN")]
    allow_http: Vec<OriginPattern>,
    /// These origins may never be reached, even when granted. Repeatable.
    #[arg(long = "deny-http", value_name = "PATTERN")]
    deny_http: Vec<OriginPattern>,
    /// A non-public address (or CIDR range) tasks may reach: loopback,
    /// private, link-local and metadata addresses are refused after DNS
    /// resolution unless named here. Repeatable.
    #[arg(long = "allow-private", value_name = "ADDR[/BITS]", value_parser = ip_net)]
    allow_private: Vec<ipnet::IpNet>,
    /// Longest time one HTTP request may take (also cut at the task's time
    /// limit).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    http_timeout: Duration,
    /// Longest wait for an HTTP connection.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5s")]
    http_connect_timeout: Duration,
    /// Largest HTTP response body a task may receive.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    http_max_response_size: u64,
    /// Largest HTTP request body a task may send.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    http_max_request_size: u64,
    /// HTTP requests one task may have in flight.
    #[arg(long, value_name = "N", default_value_t = HttpPolicy::default().max_in_flight)]
    http_max_in_flight: usize,
    /// Configuration values for tasks, as KEY=VALUE lines (a .env file).
    /// Environment variables CELERIAC_TASK_CONFIG_<KEY> add to and
    /// override it. A task reads only the keys its manifest grants.
    #[arg(long, value_name = "FILE", env = "CELERIAC_TASK_CONFIG_FILE")]
    task_config: Option<PathBuf>,
}

/// Prefix of environment variables holding task configuration values.
pub const CONFIG_ENV_PREFIX: &str = "CELERIAC_TASK_CONFIG_";

impl PolicyArgs {
    pub fn http_policy(&self) -> anyhow::Result<HttpPolicy> {
        if self.http_max_in_flight == 0 {
            anyhow::bail!("--http-max-in-flight must be at least 1");
        }
        if self.http_timeout.is_zero() || self.http_connect_timeout.is_zero() {
            anyhow::bail!("--http-timeout and --http-connect-timeout must be above zero");
        }
        Ok(HttpPolicy {
            allow: self.allow_http.clone(),
            deny: self.deny_http.clone(),
            allow_private: self.allow_private.clone(),
            connect_timeout: self.http_connect_timeout,
            timeout: self.http_timeout,
            max_response_bytes: self.http_max_response_size,
            max_request_bytes: self.http_max_request_size,
            max_in_flight: self.http_max_in_flight,
            pool: true,
        })
    }

    /// The file's values, then the environment's over them.
    pub fn task_config(&self) -> anyhow::Result<ConfigValues> {
        let mut values = Vec::new();
        if let Some(path) = &self.task_config {
            let lines = dotenvy::from_path_iter(path)
                .with_context(|| format!("reading --task-config {}", path.display()))?;
            for line in lines {
                let (key, value) =
                    line.with_context(|| format!("parsing --task-config {}", path.display()))?;
                validate_config_key(&key)
                    .with_context(|| format!("in --task-config {}", path.display()))?;
                values.push((key, value));
            }
        }
        for (name, value) in std::env::vars_os() {
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_prefix(CONFIG_ENV_PREFIX))
            else {
                continue;
            };
            if key == "FILE" {
                continue;
            }
            validate_config_key(key)
                .with_context(|| format!("environment variable {CONFIG_ENV_PREFIX}{key}"))?;
            let value = value.into_string().map_err(|_| {
                anyhow::anyhow!("environment variable {CONFIG_ENV_PREFIX}{key} is not UTF-8")
            })?;
            values.push((key.to_string(), value));
        }
        Ok(ConfigValues::new(values))
    }
}

/// An address or a CIDR range; a bare address is a range of one.
fn ip_net(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| {
            format!(
                "`{text}` is not an IP address or CIDR range (e.g. 127.0.0.1, 10.0.0.0/8, fd00::/8)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_addresses_or_ranges() {
        assert_eq!(ip_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(ip_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(ip_net("::1").unwrap().to_string(), "::1/128");
        assert!(
            ip_net("localhost")
                .unwrap_err()
                .contains("`localhost` is not an IP address")
        );
    }
}
