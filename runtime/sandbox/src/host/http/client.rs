//! The one HTTP client of a sandbox, shared by all its tasks: a hyper
//! connection pool (kept-alive connections and TLS sessions reused across
//! tasks, so task authors get pooling by doing nothing), TLS by rustls with
//! the host's root certificates, and a resolver that checks every address
//! a name resolves to against the policy before anything connects. A
//! pooled connection was checked when it was made; a new one resolves and
//! checks again, so DNS rebinding gains nothing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;

use super::body::OutgoingBody;
use super::policy::{HttpPolicy, Refusal, check_address};

pub(crate) type PooledClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, OutgoingBody>;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per origin.
const IDLE_PER_HOST: usize = 64;

/// Build the client for `policy`.
pub(crate) fn build(policy: &HttpPolicy) -> Result<PooledClient, rustls::Error> {
    let mut http = HttpConnector::new_with_resolver(CheckedResolver {
        allow_private: policy.allow_private.clone().into(),
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(policy.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(if policy.pool { IDLE_PER_HOST } else { 0 })
        .build(https))
}

/// rustls (ring) with the host's root certificates: the system store, so
/// an operator's own CA is honoured.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not read some of the host's root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no root certificates found on this host: HTTPS requests from tasks will fail certificate checks"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A name resolution the policy refused, carried through hyper's error
/// chain so the sender can tell it from a network failure.
#[derive(Debug)]
pub(crate) struct AddressRefused(pub Refusal);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AddressRefused {}

/// Resolves with the system resolver, then refuses the name if any address
/// is non-public and not named by the policy (an answer mixing public and
/// private addresses is how rebinding attacks start).
#[derive(Clone)]
pub(crate) struct CheckedResolver {
    allow_private: Arc<[IpNet]>,
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let allow = self.allow_private.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                check_address(&host, addr.ip(), &allow).map_err(|r| {
                    io::Error::new(io::ErrorKind::PermissionDenied, AddressRefused(r))
                })?;
            }
            Ok(addrs.into_iter())
        })
    }
}
