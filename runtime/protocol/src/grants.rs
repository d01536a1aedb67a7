//! Capability grants: what a component may reach, as its signer requested
//! in the signed manifest (HTTP origins, configuration keys, key-value),
//! and whether one instance may serve several of its tasks (`reuse`).
//! A worker intersects them with its own policy; nothing here is granted
//! unless named. Pure data and matching, shared by the signer, the worker
//! and the sandbox.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest configuration key, and most keys / origins one manifest names.
pub const MAX_CONFIG_KEY: usize = 128;
pub const MAX_GRANT_ENTRIES: usize = 256;
/// Most tasks a signer may let one instance serve.
pub const MAX_REUSE: u32 = 1_000_000;

/// What a component's signer asked for. Empty: pure computation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Origins the component may send HTTP requests to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<OriginPattern>,
    /// Configuration keys the component may read (`wasi:config/store`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    /// Whether the component may use its module's key-value namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kv: bool,
    /// Tasks one instance may serve, one after another, where a worker's
    /// policy permits it (`worker --reuse`): state one task leaves in the
    /// instance is seen by the next. Absent: a fresh instance per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<u32>,
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.config.is_empty() && !self.kv && self.reuse.is_none()
    }

    /// Check what a signer asks for before it is signed (and what a
    /// manifest claims when it is read): bounded, well-formed keys.
    pub fn validate(&self) -> Result<(), GrantError> {
        if self.http.len() > MAX_GRANT_ENTRIES || self.config.len() > MAX_GRANT_ENTRIES {
            return Err(GrantError::TooMany(MAX_GRANT_ENTRIES));
        }
        for key in &self.config {
            validate_config_key(key)?;
        }
        match self.reuse {
            Some(n) if !(2..=MAX_REUSE).contains(&n) => Err(GrantError::Reuse(n)),
            _ => Ok(()),
        }
    }

    /// Whether some granted origin covers `scheme://host:port`.
    pub fn allows_http(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.http.iter().any(|p| p.matches(scheme, host, port))
    }

    pub fn allows_config(&self, key: &str) -> bool {
        self.config.iter().any(|k| k == key)
    }

    /// One line for `inspect`, `components` and logs: `http: …; config: …; kv`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let mut parts = Vec::new();
        if !self.http.is_empty() {
            let origins: Vec<String> = self.http.iter().map(ToString::to_string).collect();
            parts.push(format!("http {}", origins.join(" ")));
        }
        if !self.config.is_empty() {
            parts.push(format!("config {}", self.config.join(" ")));
        }
        if self.kv {
            parts.push("kv".into());
        }
        if let Some(n) = self.reuse {
            parts.push(format!("reuse {n}"));
        }
        parts.join("; ")
    }
}

/// Configuration keys: letters, digits, `_`, `-` and `.`, as environment
/// variables and dotted config names use them.
pub fn validate_config_key(key: &str) -> Result<(), GrantError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_CONFIG_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(GrantError::ConfigKey(
            key.chars().take(MAX_CONFIG_KEY).collect(),
        ))
    }
}

/// Why a grant or pattern is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "invalid origin `{pattern}`: {why} (expected SCHEME://HOST[:PORT], e.g. https://api.example.com, https://*.stripe.com:443 or http://127.0.0.1:*)"
    )]
    Origin { pattern: String, why: &'static str },
    #[error("invalid config key `{0}`: use 1-{MAX_CONFIG_KEY} letters, digits, `_`, `-` or `.`")]
    ConfigKey(String),
    #[error("too many grants: at most {0} origins and {0} config keys")]
    TooMany(usize),
    #[error("invalid reuse {0}: one instance may serve 2 to {MAX_REUSE} tasks")]
    Reuse(u32),
}

/// Which hosts an [`OriginPattern`] names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Any host (`*`).
    Any,
    /// Exactly this host (a DNS name in lower case, or an IP literal).
    Exact(String),
    /// Any subdomain of this one (`*.example.com`), not the domain itself.
    Subdomains(String),
}

/// An HTTP origin with optional wildcards: `https://api.example.com`,
/// `https://*.stripe.com:443`, `http://127.0.0.1:*`, `https://*`. No path:
/// grants are per origin, as browsers and Spin draw the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginPattern {
    /// `http` or `https`.
    pub scheme: String,
    pub host: HostPattern,
    /// `None` is any port (`:*`); an omitted port is the scheme's default.
    pub port: Option<u16>,
}

/// The port a scheme implies when a URL names none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl OriginPattern {
    /// Whether a request to `scheme://host:port` falls under this pattern.
    /// `host` may carry a trailing dot or upper case (both are normalised);
    /// an IPv6 literal comes with or without its brackets.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = normalize_host(host);
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| !sub.is_empty()),
        }
    }
}

/// Lower case, no trailing dot, no IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

impl FromStr for OriginPattern {
    type Err = GrantError;

    fn from_str(text: &str) -> Result<Self, GrantError> {
        let bad = |why| GrantError::Origin {
            pattern: text.chars().take(200).collect(),
            why,
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let Some(implied_port) = default_port(&scheme) else {
            return Err(bad("the scheme must be http or https"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "a grant names an origin, without path, query or user info",
            ));
        }
        // Split the port off, minding IPv6 literals' own colons.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside `[...]`"));
            }
            match after.strip_prefix(':') {
                Some(p) => (addr.to_string(), Some(p)),
                None if after.is_empty() => (addr.to_string(), None),
                None => return Err(bad("unexpected text after `]`")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => Some(implied_port),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1-65535 or `*`"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            let domain = normalize_host(domain);
            check_dns_name(&domain).map_err(bad)?;
            HostPattern::Subdomains(format!(".{domain}"))
        } else {
            let host = normalize_host(&host);
            if host.parse::<std::net::IpAddr>().is_err() {
                check_dns_name(&host).map_err(bad)?;
            }
            HostPattern::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("the host is empty or too long");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("the host must be a DNS name, an IP address, `*` or `*.DOMAIN`")
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(h) if h.contains(':') => write!(f, "[{h}]")?,
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::Subdomains(d) => write!(f, "*{d}")?,
        }
        match self.port {
            None => f.write_str(":*"),
            Some(p) if Some(p) == default_port(&self.scheme) => Ok(()),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

impl Serialize for OriginPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OriginPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OriginPattern {
        s.parse().unwrap()
    }

    #[test]
    fn exact_origins_match_scheme_host_and_default_port() {
        let api = p("https://API.example.com");
        assert!(api.matches("https", "api.example.com", 443));
        assert!(api.matches("https", "api.example.com.", 443));
        assert!(!api.matches("http", "api.example.com", 80));
        assert!(!api.matches("https", "api.example.com", 8443));
        assert!(!api.matches("https", "evil-api.example.com", 443));
        assert!(!api.matches("https", "api.example.com.evil.net", 443));
        assert_eq!(api.to_string(), "https://api.example.com");
    }

    #[test]
    fn wildcards_cover_subdomains_and_ports_only_where_written() {
        let stripe = p("https://*.stripe.com:443");
        assert!(stripe.matches("https", "api.stripe.com", 443));
        assert!(stripe.matches("https", "a.b.stripe.com", 443));
        assert!(!stripe.matches("https", "stripe.com", 443));
        assert!(!stripe.matches("https", "notstripe.com", 443));
        assert!(!stripe.matches("https", "api.stripe.com.evil.net", 443));
        assert_eq!(stripe.to_string(), "https://*.stripe.com");

        let local = p("http://127.0.0.1:*");
        assert!(local.matches("http", "127.0.0.1", 8080));
        assert!(!local.matches("http", "127.0.0.2", 8080));
        assert_eq!(local.to_string(), "http://127.0.0.1:*");

        let any = p("https://*");
        assert!(any.matches("https", "anything.example", 443));
        assert!(!any.matches("https", "anything.example", 444));
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_in_text_only() {
        let v6 = p("http://[::1]:8080");
        assert!(v6.matches("http", "[::1]", 8080));
        assert!(v6.matches("http", "::1", 8080));
        assert_eq!(v6.to_string(), "http://[::1]:8080");
    }

    #[test]
    fn malformed_origins_are_refused_with_the_reason() {
        for (bad, why) in [
            ("api.example.com", "no scheme"),
            ("ftp://x.example", "http or https"),
            ("https://x.example/path", "without path"),
            ("https://user@x.example", "without path"),
            ("https://x.example:0", "1-65535"),
            ("https://x.example:http", "1-65535"),
            ("https://bad_host!", "DNS name"),
            ("https://*.", "empty"),
            ("https://[::1", "unclosed"),
        ] {
            let e = bad.parse::<OriginPattern>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(bad.split('/').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn grants_round_trip_and_old_manifests_read_as_none() {
        let g = Grants {
            http: vec![p("https://*.stripe.com"), p("http://127.0.0.1:*")],
            config: vec!["api_token".into()],
            kv: true,
            reuse: Some(100),
        };
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"http":["https://*.stripe.com","http://127.0.0.1:*"],"config":["api_token"],"kv":true,"reuse":100}"#
        );
        assert_eq!(serde_json::from_str::<Grants>(&json).unwrap(), g);
        let none: Grants = serde_json::from_str("{}").unwrap();
        assert!(none.is_empty());
        assert_eq!(serde_json::to_string(&none).unwrap(), "{}");
        assert_eq!(none.summary(), "none");
        assert_eq!(
            g.summary(),
            "http https://*.stripe.com http://127.0.0.1:*; config api_token; kv; reuse 100"
        );
        assert!(serde_json::from_str::<Grants>(r#"{"http":["gopher://x"]}"#).is_err());
    }

    #[test]
    fn reuse_is_at_least_two_and_bounded() {
        let reuse = |n| Grants {
            reuse: Some(n),
            ..Grants::default()
        };
        assert!(reuse(2).validate().is_ok());
        assert!(reuse(MAX_REUSE).validate().is_ok());
        for bad in [0, 1, MAX_REUSE + 1] {
            let e = reuse(bad).validate().unwrap_err().to_string();
            assert!(e.contains(&format!("invalid reuse {bad}")), "{e}");
        }
        assert!(!reuse(2).is_empty());
    }

    #[test]
    fn config_keys_are_checked() {
        assert!(validate_config_key("stripe.api_key-2").is_ok());
        for bad in ["", "a b", "a=b", "ключ", &"k".repeat(MAX_CONFIG_KEY + 1)] {
            assert!(validate_config_key(bad).is_err(), "{bad}");
        }
        assert!(
            Grants {
                config: vec!["ok".into(), "not ok".into()],
                ..Grants::default()
            }
            .validate()
            .is_err()
        );
    }
}
