//! `celeriac serve`: the HTTP API (JSON, described by the OpenAPI document
//! it serves) and the web console, over one broker.
//!
//! - [`auth`]: bearer tokens with scopes, stored as digests; every API
//!   route needs one scope, checked by a layer on its group of routes;
//! - [`api`]: the handlers, thin calls into `celeriac-client` and the
//!   broker with the CLI's validation and limits;
//! - [`live`]: one tail of the event stream shared by every Server-Sent
//!   Events client and by [`history`] (queue depths, throughput and
//!   latency sampled over the last half hour, for the console's charts);
//! - [`console`]: the page and its scripts, embedded in the binary;
//! - [`error`]: every failure as a status and a one-line JSON error.

pub mod api;
pub mod auth;
pub mod console;
pub mod error;
pub mod history;
pub mod live;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use celeriac_broker::Broker;
use celeriac_sandbox::Sandbox;
use celeriac_signing::TrustStore;
use tokio_util::sync::CancellationToken;

pub use auth::{Identity, Scope, TokenStore};
use error::ApiError;

/// How the server runs.
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Tokens (`tokens.json`) and the first admin token live here.
    pub state_dir: PathBuf,
    /// Requests without a token may read (never submit, upload or manage).
    pub anonymous: bool,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Trusted signers for uploads; uploads are refused without.
    pub trust: Option<TrustStore>,
    /// Largest component accepted.
    pub max_upload: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
pub struct AppState {
    pub broker: Arc<dyn Broker>,
    pub tokens: RwLock<TokenStore>,
    pub anonymous: bool,
    pub trust: Option<TrustStore>,
    /// Checks uploads as a worker would load them.
    pub sandbox: Arc<Sandbox>,
    pub max_upload: usize,
    pub live: live::Live,
    pub history: Arc<history::History>,
    pub shutdown: CancellationToken,
}

pub type Shared = Arc<AppState>;

/// The server, bound and ready: [`Server::run`] serves until `shutdown`.
pub struct Server {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    state: Shared,
    /// Set when the first start created the admin token.
    pub admin_token_file: Option<PathBuf>,
}

impl Server {
    pub async fn bind(
        broker: Arc<dyn Broker>,
        config: ServeConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, ServeError> {
        let (tokens, admin_token_file) = TokenStore::open_or_init(&config.state_dir)?;
        let tls = config
            .tls
            .as_ref()
            .map(|(cert, key)| tls_acceptor(cert, key))
            .transpose()?;
        let sandbox = Sandbox::new(celeriac_sandbox::SandboxConfig {
            concurrency: 1,
            ..Default::default()
        })
        .map_err(|e| ServeError::Sandbox(e.to_string()))?;
        let live = live::Live::start(broker.clone(), shutdown.clone());
        let history = history::History::start(broker.clone(), &live, shutdown.clone());
        let state = Arc::new(AppState {
            broker,
            tokens: RwLock::new(tokens),
            anonymous: config.anonymous,
            trust: config.trust,
            sandbox: Arc::new(sandbox),
            max_upload: config.max_upload,
            live,
            history,
            shutdown,
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        Ok(Server {
            listener,
            tls,
            router: router(state.clone()),
            state,
            admin_token_file,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serve until shutdown; open event streams end with it.
    pub async fn run(self) -> Result<(), ServeError> {
        let shutdown = self.state.shutdown.clone();
        serve_connections(self.listener, self.tls, self.router, shutdown).await;
        Ok(())
    }
}

/// Every route: the API by scope, the OpenAPI document, the console.
pub fn router(state: Shared) -> Router {
    let scoped = |scope: Scope, routes: Router<Shared>| {
        routes.route_layer(middleware::from_fn_with_state(
            (state.clone(), scope),
            require,
        ))
    };
    let api = Router::new()
        .merge(scoped(Scope::Read, api::read_routes()))
        .merge(scoped(Scope::Submit, api::submit_routes()))
        .merge(scoped(Scope::Upload, api::upload_routes()))
        .merge(scoped(Scope::Admin, api::admin_routes()))
        .route("/api/v1/openapi.json", axum::routing::get(api::openapi))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            // A component as base64 in JSON, with room for its signature.
            state.max_upload / 3 * 4 + 64 * 1024,
        ))
        .with_state(state);
    Router::new().merge(console::routes()).merge(api).layer(
        // Nothing here is for other sites to frame or sniff.
        axum::middleware::map_response(|mut r: Response| async move {
            let h = r.headers_mut();
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::X_FRAME_OPTIONS,
                header::HeaderValue::from_static("DENY"),
            );
            r
        }),
    )
}

/// The scope layer: who is asking (a bearer token, or anonymous when
/// allowed), and whether they may.
async fn require(
    State((state, scope)): State<(Shared, Scope)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let who = identify(&state, req.headers())?;
    if !who.allows(scope) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "token `{}` lacks the `{scope}` scope this needs (it has: {})",
                who.name,
                who.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    req.extensions_mut().insert(who);
    Ok(next.run(req).await)
}

fn identify(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Identity, ApiError> {
    let unauthorized = |m: &str| ApiError::new(axum::http::StatusCode::UNAUTHORIZED, m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        if state.anonymous {
            return Ok(Identity::anonymous());
        }
        return Err(unauthorized(
            "authentication required: send `Authorization: Bearer <token>`",
        ));
    };
    // The scheme is case-insensitive (RFC 9110).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let stale = state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_stale();
    if stale {
        state
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .reload();
    }
    let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
    tokens
        .identify(token)
        .ok_or_else(|| unauthorized("unknown token"))
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Connections served at once at most; past it, accepting waits.
const MAX_CONNECTIONS: usize = 4096;
/// A client must send its request head within this (slow-header attacks).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Each connection (after its TLS handshake, with HTTPS) served by hyper
/// with the router, within [`MAX_CONNECTIONS`] and [`HEADER_TIMEOUT`].
/// On shutdown: accept no more, let requests in flight finish (event
/// streams end at once), then stop.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let (tls, router, shutdown) = (tls.clone(), router.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(router);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = async {
                match tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        finish(conn, &shutdown).await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                        let Ok(Ok(stream)) = handshake.await else {
                            return;
                        };
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        finish(conn, &shutdown).await
                    }
                }
            };
            served.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Serve one connection to its end, or shut it down gracefully.
async fn finish<I>(
    conn: hyper::server::conn::http1::Connection<
        I,
        hyper_util::service::TowerToHyperService<Router>,
    >,
    shutdown: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
