//! Guest stdout / stderr: kept in memory up to a cap, never blocking and
//! never failing the guest, then handed to the log after the task.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A byte sink that keeps the first `cap` bytes and counts the rest.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    pub dropped: u64,
    cap: usize,
}

impl CappedPipe {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                cap,
                ..Captured::default()
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        // A poisoned lock only means another writer panicked mid-append; the
        // buffer is still valid bytes, so keep going.
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.cap.saturating_sub(c.bytes.len());
        let kept = room.min(data.len());
        c.bytes.extend_from_slice(&data[..kept]);
        c.dropped += (data.len() - kept) as u64;
    }

    /// Take what was captured so far.
    pub fn take(&self) -> Captured {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Captured {
            bytes: std::mem::take(&mut c.bytes),
            dropped: std::mem::take(&mut c.dropped),
            cap: c.cap,
        }
    }
}

/// How much the guest may write per call; it never has to wait.
const WRITE_BUDGET: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Pull the message of a Rust panic out of captured stderr, if there is one:
/// `panicked at src/lib.rs:3:5: boom`.
pub(crate) fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut lines = text.lines();
    let at = lines.find_map(|l| l.split_once("panicked at ").map(|(_, rest)| rest))?;
    let location = at.trim_end_matches(':');
    let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note: ")).collect();
    Some(format!("panicked at {location}: {}", message.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_counts() {
        let p = CappedPipe::new(4);
        p.push(b"abc");
        p.push(b"def");
        let c = p.take();
        assert_eq!(c.bytes, b"abcd");
        assert_eq!(c.dropped, 2);
    }

    #[test]
    fn finds_panic_message() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:42:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "panicked at src/lib.rs:42:5: boom"
        );
        assert_eq!(panic_message(b"nothing here"), None);
    }
}
