//! The worker's HTTP policy and the pure decisions made with it: may this
//! task send to this origin (its signed grant, intersected with the
//! worker's allow list, minus its deny list), and may the host connect to
//! this address (no private, loopback, link-local or metadata address the
//! policy does not name).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use celeriac_protocol::grants::{Grants, OriginPattern};
use ipnet::IpNet;

/// What a worker lets any task reach over HTTP, whatever its grant says.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Origins tasks may reach; empty: any origin a signed grant names.
    pub allow: Vec<OriginPattern>,
    /// Origins no task may reach, even when granted and allowed.
    pub deny: Vec<OriginPattern>,
    /// Non-public addresses (loopback, private, link-local, …) the policy
    /// names as reachable; every other such address is refused.
    pub allow_private: Vec<IpNet>,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest one request may take, headers and body; always also cut at
    /// the task's hard time limit.
    pub timeout: Duration,
    /// Largest response body a task may receive per request.
    pub max_response_bytes: u64,
    /// Largest request body a task may send per request.
    pub max_request_bytes: u64,
    /// Requests one task may have in flight at once.
    pub max_in_flight: usize,
    /// Keep idle connections for reuse across tasks. Off only to measure
    /// what pooling saves.
    pub pool: bool,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_private: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            max_request_bytes: 16 << 20,
            max_in_flight: 16,
            pool: true,
        }
    }
}

/// Why a request was refused before anything was sent. The Display form
/// is the one-line cause in the worker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The component's signed manifest does not grant the origin.
    NotGranted { origin: String, grants: String },
    /// The worker's `--allow-http` list does not include it.
    NotAllowed { origin: String },
    /// The worker's `--deny-http` list names it.
    Denied { origin: String, pattern: String },
    /// The host resolves (or is) an address the policy does not name.
    Address {
        host: String,
        ip: IpAddr,
        kind: &'static str,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGranted { origin, grants } => write!(
                f,
                "{origin} is outside the component's signed grant (http grants: {grants})"
            ),
            Self::NotAllowed { origin } => write!(
                f,
                "{origin} is granted but outside this worker's policy (--allow-http)"
            ),
            Self::Denied { origin, pattern } => write!(
                f,
                "{origin} is on this worker's deny list (--deny-http {pattern})"
            ),
            Self::Address { host, ip, kind } if host == &ip.to_string() => write!(
                f,
                "{ip} is a {kind} address, which this worker's policy does not allow (--allow-private)"
            ),
            Self::Address { host, ip, kind } => write!(
                f,
                "{host} resolves to {ip}, a {kind} address, which this worker's policy does not allow (--allow-private)"
            ),
        }
    }
}

/// May a task with `grants` send to `scheme://host:port` under `policy`?
pub fn check_origin(
    grants: &Grants,
    policy: &HttpPolicy,
    scheme: &str,
    host: &str,
    port: u16,
) -> Result<(), Refusal> {
    let origin = || format!("{scheme}://{}:{port}", display_host(host));
    if !grants.allows_http(scheme, host, port) {
        let granted: Vec<String> = grants.http.iter().map(ToString::to_string).collect();
        return Err(Refusal::NotGranted {
            origin: origin(),
            grants: if granted.is_empty() {
                "none".into()
            } else {
                granted.join(" ")
            },
        });
    }
    if !policy.allow.is_empty() && !policy.allow.iter().any(|p| p.matches(scheme, host, port)) {
        return Err(Refusal::NotAllowed { origin: origin() });
    }
    if let Some(p) = policy.deny.iter().find(|p| p.matches(scheme, host, port)) {
        return Err(Refusal::Denied {
            origin: origin(),
            pattern: p.to_string(),
        });
    }
    Ok(())
}

fn display_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// May the host connect to `ip` for `host`? Public addresses always; any
/// other only when the policy names it.
pub fn check_address(host: &str, ip: IpAddr, allow_private: &[IpNet]) -> Result<(), Refusal> {
    let Some(kind) = non_public(ip) else {
        return Ok(());
    };
    if allow_private.iter().any(|net| net.contains(&ip)) {
        return Ok(());
    }
    Err(Refusal::Address {
        host: host.to_string(),
        ip,
        kind,
    })
}

/// What kind of non-public address `ip` is, if it is one: the ranges a
/// request could use to reach the worker itself, its network or its
/// cloud's metadata service.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                // 169.254.0.0/16, where 169.254.169.254 serves cloud
                // credentials.
                Some("link-local (cloud metadata)")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("benchmarking")
            } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                Some("multicast or reserved")
            } else if v4.is_documentation() {
                Some("documentation")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            // An IPv4 address in IPv6 clothing is judged as IPv4.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_unique_local() {
                Some("private (unique local)")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else if first == 0x64 && v6.segments()[1] == 0xff9b {
                // NAT64 (64:ff9b::/96) embeds an IPv4 address.
                let [.., a, b, c, d] = v6.octets();
                non_public(IpAddr::V4([a, b, c, d].into())).map(|_| "NAT64 of a non-public")
            } else if first == 0x2001 && v6.segments()[1] == 0xdb8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(origins: &[&str]) -> Grants {
        Grants {
            http: origins.iter().map(|o| o.parse().unwrap()).collect(),
            ..Grants::default()
        }
    }

    fn policy(allow: &[&str], deny: &[&str]) -> HttpPolicy {
        HttpPolicy {
            allow: allow.iter().map(|o| o.parse().unwrap()).collect(),
            deny: deny.iter().map(|o| o.parse().unwrap()).collect(),
            ..HttpPolicy::default()
        }
    }

    #[test]
    fn a_request_needs_the_grant_the_allow_list_and_no_deny() {
        let g = grants(&["https://*.example.com", "https://api.other.net"]);
        let open = policy(&[], &[]);
        assert_eq!(
            check_origin(&g, &open, "https", "api.example.com", 443),
            Ok(())
        );
        let e = check_origin(&g, &open, "https", "evil.net", 443).unwrap_err();
        assert_eq!(
            e.to_string(),
            "https://evil.net:443 is outside the component's signed grant (http grants: https://*.example.com https://api.other.net)"
        );
        assert!(matches!(
            check_origin(&Grants::default(), &open, "https", "api.example.com", 443),
            Err(Refusal::NotGranted { grants, .. }) if grants == "none"
        ));

        // The worker narrows: only example.com's subdomains, minus one.
        let narrow = policy(&["https://*.example.com"], &["https://admin.example.com"]);
        assert_eq!(
            check_origin(&g, &narrow, "https", "api.example.com", 443),
            Ok(())
        );
        assert!(matches!(
            check_origin(&g, &narrow, "https", "api.other.net", 443),
            Err(Refusal::NotAllowed { .. })
        ));
        let e = check_origin(&g, &narrow, "https", "admin.example.com", 443).unwrap_err();
        assert!(
            e.to_string()
                .contains("deny list (--deny-http https://admin.example.com)")
        );

        // A worker's allow list never widens a grant.
        let wide = policy(&["https://*"], &[]);
        assert!(matches!(
            check_origin(&g, &wide, "https", "evil.net", 443),
            Err(Refusal::NotGranted { .. })
        ));
    }

    #[test]
    fn non_public_addresses_are_refused_unless_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast or reserved"),
            ("255.255.255.255", "multicast or reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private (unique local)"),
            ("fd12:3456::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a00:1", "NAT64 of a non-public"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(non_public(ip), Some(kind), "{ip}");
            assert!(check_address("h", ip, &[]).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "172.32.0.1", "8.8.8.8", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(non_public(ip), None, "{ip}");
            assert_eq!(check_address("h", ip, &[]), Ok(()));
        }
    }

    #[test]
    fn the_policy_names_the_private_addresses_it_allows() {
        let allow: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(check_address("localhost", ip("127.0.0.1"), &allow), Ok(()));
        assert_eq!(check_address("db", ip("10.9.9.9"), &allow), Ok(()));
        let e = check_address("localhost", ip("127.0.0.2"), &allow).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost resolves to 127.0.0.2, a loopback address, which this worker's policy does not allow (--allow-private)"
        );
        let e = check_address("169.254.169.254", ip("169.254.169.254"), &allow).unwrap_err();
        assert_eq!(
            e.to_string(),
            "169.254.169.254 is a link-local (cloud metadata) address, which this worker's policy does not allow (--allow-private)"
        );
    }
}
