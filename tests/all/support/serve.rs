//! A `celeriac serve` process on a test's broker ([`ServeProcess`]), with
//! its admin token read from where the first start wrote it, and an HTTP
//! client that answers `(status, JSON)` ([`Api`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::command::TestCommand;
use super::servers::free_port;
use super::wait::wait_for;

pub struct ServeProcess {
    pub child: Child,
    pub base: String,
    pub state_dir: PathBuf,
    pub admin_token: String,
    log: PathBuf,
}

impl ServeProcess {
    /// `celeriac serve` from `command` (broker, prefix) with a fresh state
    /// directory under `dir`, waiting until it answers.
    pub async fn start(command: TestCommand, dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(command, dir, extra, "http", None).await
    }

    /// As [`ServeProcess::start`]; `scheme` https with `ca` to trust.
    pub async fn start_with(
        mut command: TestCommand,
        dir: &Path,
        extra: &[&str],
        scheme: &str,
        ca: Option<&Path>,
    ) -> Self {
        let port = free_port();
        let state_dir = dir.join(format!("serve-{port}"));
        let log = dir.join(format!("serve-{port}.log"));
        let file = std::fs::File::create(&log).expect("create the server's log");
        let child = command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn();
        let base = format!("{scheme}://localhost:{port}");
        let api = Api::new(&base, None, ca);
        wait_for(
            "the API server to answer",
            Duration::from_secs(30),
            async || api.get("/api/v1/openapi.json").await.0 == 200,
        )
        .await;
        let admin_token = std::fs::read_to_string(state_dir.join("admin.token"))
            .expect("the first start writes admin.token")
            .trim()
            .to_string();
        Self {
            child,
            base,
            state_dir,
            admin_token,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client holding `token` (`None`: no Authorization header).
    pub fn api(&self, token: Option<&str>) -> Api {
        Api::new(&self.base, token, None)
    }

    pub fn admin(&self) -> Api {
        self.api(Some(&self.admin_token.clone()))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>, ca: Option<&Path>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .use_rustls_tls();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("read the CA");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM CA"));
        }
        Self {
            client: b.build().expect("an HTTP client"),
            base: base.to_string(),
            token: token.map(str::to_string),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Send and read `(status, JSON body)`; a body that is not JSON is
    /// returned as a JSON string; a connection failure is status 0.
    pub async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value) {
        let Ok(resp) = r.send().await else {
            return (0, Value::Null);
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }
}
