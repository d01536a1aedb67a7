//! [`TestServer`]: a local HTTP (or HTTPS, with a [`TestCa`]'s
//! certificate) server the capability tests point tasks at (no outside
//! network), counting the connections it accepts and the requests it
//! serves. Routes:
//!
//! - `/hello`: 200 `hello from the test server`
//! - `/slow?ms=N`: 200 after N ms
//! - `/big?bytes=N`: N bytes, with a content-length; `/stream?bytes=N`:
//!   the same, chunked (no length up front)
//! - `/redirect?to=URL`: 302 to URL
//! - `/auth`: 200 if `Authorization: Bearer <token>` matches, else 401
//! - `/webhook?fail=N`: 503 for the first N requests with one
//!   idempotency key, then 200; every delivery is recorded

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::certs::TestCa;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Webhook requests by idempotency key: (attempts, bodies accepted).
    pub webhooks: Mutex<HashMap<String, (u64, Vec<String>)>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
    scheme: &'static str,
}

impl TestServer {
    /// Serve HTTP on 127.0.0.1 (a free port); `/auth` expects `token`.
    pub async fn start(token: &str) -> Self {
        Self::serve(token, None).await
    }

    /// Serve HTTPS with `ca`'s server certificate.
    pub async fn start_tls(token: &str, ca: &TestCa) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(ca.cert())
            .expect("read the server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse the server certificate");
        let key = PrivateKeyDer::from_pem_file(ca.key()).expect("read the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a TLS server configuration");
        Self::serve(
            token,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(token: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test HTTP server");
        let addr = listener.local_addr().expect("its address");
        let counters = Arc::new(Counters::default());
        let state = (counters.clone(), Arc::<str>::from(token));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                state.0.connections.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(req, &state.0, &state.1).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        // A client that refuses our certificate ends here.
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        Self {
            addr,
            counters,
            task,
            scheme,
        }
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// (attempts, accepted bodies) for a webhook key.
    pub fn webhook(&self, key: &str) -> (u64, Vec<String>) {
        let hooks = self.counters.webhooks.lock().unwrap();
        hooks.get(key).cloned().unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp
}

async fn route(req: Request<Incoming>, counters: &Counters, token: &str) -> Response<Body> {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let number = |name| {
        query(&req, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match req.uri().path() {
        "/hello" => full(200, "hello from the test server"),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms"))).await;
            full(200, "slow hello")
        }
        "/big" => full(200, vec![b'x'; number("bytes") as usize]),
        "/stream" => {
            let chunks = (number("bytes") as usize).div_ceil(8192);
            let stream = futures_util::stream::iter(
                (0..chunks)
                    .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 8192])))),
            );
            Response::new(StreamBody::new(stream).boxed())
        }
        "/redirect" => {
            let to = query(&req, "to").unwrap_or_default();
            let mut resp = full(302, "");
            resp.headers_mut()
                .insert("location", to.parse().expect("a redirect target"));
            resp
        }
        "/auth" => {
            let expected = format!("Bearer {token}");
            let ok = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if ok {
                full(200, "authorized")
            } else {
                full(401, "who are you?")
            }
        }
        "/webhook" => {
            let fail = number("fail");
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut hooks = counters.webhooks.lock().unwrap();
            let entry = hooks.entry(key).or_default();
            entry.0 += 1;
            if entry.0 <= fail {
                full(503, "try again later")
            } else {
                entry.1.push(String::from_utf8_lossy(&body).into_owned());
                full(200, "received")
            }
        }
        _ => full(404, "no such route"),
    }
}
