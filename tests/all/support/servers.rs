//! Servers a test runs for itself: a private `redis-server` to break on
//! purpose ([`PrivateRedis`]), and the odd TCP helper ([`free_port`],
//! [`http_get`] for a worker's metrics endpoint).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait::wait_for_blocking;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The whole HTTP response (status line, headers, body) to `GET path`.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send the HTTP request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read the HTTP response");
    body
}

/// A redis-server of the test's own on a free port, for breaking on purpose.
pub struct PrivateRedis {
    pub child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("a data directory for redis-server")
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::on(free_port(), scratch(), extra)
    }

    pub fn on(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(port, dir, &args)
    }

    /// TLS only (no plain port), clients not asked for certificates.
    pub fn on_tls(port: u16, cert: &str, key: &str, ca: &str) -> Self {
        let port_s = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(port, scratch(), &args)
    }

    /// redis-server on 127.0.0.1 with no persistence unless `args` asks
    /// for it (later arguments win), its data in `dir`; returns once
    /// `port` accepts connections.
    fn spawn(port: u16, dir: tempfile::TempDir, args: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (tests/run.sh installs it)");
        let server = Self { child, port, dir };
        wait_for_blocking(
            &format!("redis-server to accept connections on port {port}"),
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it gracefully (its append-only file, if any, flushed), keep it
    /// down for `down` (the outage under test), and start it again on the
    /// same port from the same data.
    pub fn outage(mut self, down: Duration, extra: &[&str]) -> Self {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, scratch());
        Self::on(port, dir, extra)
    }

    /// Kill it hard and start a fresh one on the same port.
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, scratch());
        // Down for a moment, as a crashed server is: the outage under test.
        std::thread::sleep(Duration::from_millis(300));
        Self::on(port, dir, &[])
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
