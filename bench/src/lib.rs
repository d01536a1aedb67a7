//! Shared helpers for the benchmarks: example components, statistics, and
//! a local HTTP server that answers after a delay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use celeriac_broker::Broker;
use redis::Commands as _;

/// Build the example task components (release, wasm32-wasip2) and return
/// the directory holding them.
pub fn build_examples() -> anyhow::Result<PathBuf> {
    build_wasm(&["math", "text", "misbehave"])
}

/// Build these workspace task crates (release, wasm32-wasip2) and return
/// the directory holding their `.wasm` files.
pub fn build_wasm(packages: &[&str]) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("bench/ has no parent"))?
        .to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "building the task components {packages:?} failed"
    );
    Ok(root.join("target/wasm32-wasip2/release"))
}

/// Order statistics of a sample of durations.
pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
        let total: Duration = samples.iter().sum();
        Self {
            n,
            min: samples[0],
            p50: at(0.5),
            p99: at(0.99),
            mean: total / n as u32,
        }
    }
}

/// `12.3 µs`, `4.56 ms`, `1.23 s`.
pub fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Wait until `queue` holds nothing ready, delayed or in flight. A worker
/// acks in the same transaction as it stores the result, so a drained
/// queue means every result is written.
pub async fn wait_drained(
    broker: &dyn Broker,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = broker.queue_stats(queue).await?;
        if s.ready == 0 && s.in_flight == 0 && s.delayed == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "queue did not drain: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Delete every key under `prefix` (best effort: a benchmark cleaning up).
pub fn delete_prefix(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = match conn.scan_match(format!("{prefix}*")) {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for chunk in keys.chunks(1000) {
        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}

/// HTTP/1.1 with keep-alive on 127.0.0.1: every request waits `delay`,
/// then answers 200 `ok`. It runs on a runtime of its own (one thread), so
/// a benchmark's own runtime may block (compare.rs while driver.py runs
/// Celery) without stalling it. Counts requests and connections.
pub struct DelayServer {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl DelayServer {
    pub fn start(delay: Duration) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("io-server")
            .enable_all()
            .build()?;
        let listener = {
            let _in_rt = rt.enter();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            // Hundreds of clients may connect at once.
            socket.listen(4096)?
        };
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let accepted = connections.clone();
        rt.spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: let connections close.
                        eprintln!("io server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let count = count.clone();
                tokio::spawn(async move {
                    let answer = service_fn(move |_: Request<Incoming>| {
                        let count = count.clone();
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("text/plain"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    // A client closing its connection mid-way is no error here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        Ok(Self {
            rt: Some(rt),
            addr,
            served,
            connections,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for DelayServer {
    fn drop(&mut self) {
        // Dropping a runtime may block, which an async context forbids.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
