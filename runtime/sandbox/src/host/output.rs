//! Guest stdout / stderr: kept in memory (the head up to a cap, and the
//! last few KiB), never blocking and never failing the guest, then handed
//! to the log after the task. Also how a crash cause is read from stderr:
//! quoted as the guest's own words, never as the host's finding.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept from the end of a stream that overflowed its cap: a panic
/// message comes last, so a chatty guest must not push it out.
pub(crate) const TAIL_CAP: usize = 4 << 10;

/// Longest guest-reported text quoted in a cause, in characters.
pub(crate) const QUOTE_CAP: usize = 300;

/// A byte sink that keeps the first `cap` bytes and the last [`TAIL_CAP`]
/// of the rest, and counts what it dropped. Every byte written is also
/// added to `host_work`, which the sandbox charges to the task's fuel.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    inner: Arc<Mutex<Captured>>,
    host_work: Arc<AtomicU64>,
}

#[derive(Default)]
pub(crate) struct Captured {
    /// The first `cap` bytes.
    pub bytes: Vec<u8>,
    /// Bytes past the head that were not kept.
    pub dropped: u64,
    /// The last bytes past the head (at most [`TAIL_CAP`]); empty unless the
    /// head overflowed.
    pub tail: Vec<u8>,
    cap: usize,
}

impl CappedPipe {
    pub fn new(cap: usize, host_work: Arc<AtomicU64>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                cap,
                ..Captured::default()
            })),
            host_work,
        }
    }

    fn push(&self, data: &[u8]) {
        self.host_work
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // A poisoned lock only means another writer panicked mid-append; the
        // buffer is still valid bytes, so keep going.
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.cap.saturating_sub(c.bytes.len());
        let kept = room.min(data.len());
        c.bytes.extend_from_slice(&data[..kept]);
        let rest = &data[kept..];
        if rest.is_empty() {
            return;
        }
        // The tail holds the newest TAIL_CAP bytes past the head; what it
        // lets go of counts as dropped.
        let rest = &rest[rest.len().saturating_sub(TAIL_CAP)..];
        let skipped = (data.len() - kept - rest.len()) as u64;
        c.tail.extend_from_slice(rest);
        let over = c.tail.len().saturating_sub(TAIL_CAP);
        c.tail.drain(..over);
        c.dropped += skipped + over as u64;
    }

    /// Take what was captured so far.
    pub fn take(&self) -> Captured {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Captured {
            bytes: std::mem::take(&mut c.bytes),
            dropped: std::mem::take(&mut c.dropped),
            tail: std::mem::take(&mut c.tail),
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

/// The last Rust panic message in captured stderr, if there is one, as one
/// bounded line: `panicked at src/lib.rs:3:5: boom`. The tail is searched
/// first: it holds the newest output. This is the guest's own text (any
/// guest can print such a line), so callers must present it as such.
pub(crate) fn panic_message(captured: &Captured) -> Option<String> {
    [&captured.tail, &captured.bytes]
        .into_iter()
        .find_map(|part| last_panic(part))
}

fn last_panic(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let (i, at) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| l.split_once("panicked at ").map(|(_, rest)| (i, rest)))?;
    let location = at.trim_end_matches(':');
    let message: Vec<&str> = lines[i + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.starts_with("note: ") && !l.contains("panicked at "))
        .collect();
    Some(quote(&format!(
        "panicked at {location}: {}",
        message.join(" ")
    )))
}

/// Guest text made fit for a one-line cause: control characters and runs
/// of whitespace become one space, and it is cut to [`QUOTE_CAP`]
/// characters, marked with `…`.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars >= QUOTE_CAP {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe(cap: usize) -> CappedPipe {
        CappedPipe::new(cap, Arc::new(AtomicU64::new(0)))
    }

    #[test]
    fn caps_and_counts() {
        let p = pipe(4);
        p.push(b"abc");
        p.push(b"def");
        let c = p.take();
        assert_eq!(c.bytes, b"abcd");
        assert_eq!(c.tail, b"ef");
        assert_eq!(c.dropped, 0);
        assert_eq!(p.host_work.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn keeps_the_tail_of_a_long_stream() {
        let p = pipe(4);
        p.push(b"head");
        for _ in 0..100 {
            p.push(&[b'x'; 1000]);
        }
        p.push(b"the end");
        let c = p.take();
        assert_eq!(c.bytes, b"head");
        assert_eq!(c.tail.len(), TAIL_CAP);
        assert!(c.tail.ends_with(b"xthe end"));
        assert_eq!(c.dropped, 100_000 + 7 - TAIL_CAP as u64);
        // One write larger than the tail keeps its own end.
        let p = pipe(0);
        let mut big = vec![b'y'; 3 * TAIL_CAP];
        big.extend_from_slice(b"!");
        p.push(&big);
        let c = p.take();
        assert_eq!(c.tail.len(), TAIL_CAP);
        assert_eq!(c.tail.last(), Some(&b'!'));
        assert_eq!(c.dropped, 2 * TAIL_CAP as u64 + 1);
    }

    fn captured(head: &[u8], tail: &[u8]) -> Captured {
        Captured {
            bytes: head.to_vec(),
            tail: tail.to_vec(),
            ..Captured::default()
        }
    }

    #[test]
    fn finds_panic_message() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:42:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(&captured(stderr, b"")).unwrap(),
            "panicked at src/lib.rs:42:5: boom"
        );
        assert_eq!(panic_message(&captured(b"nothing here", b"")), None);
    }

    #[test]
    fn the_newest_panic_wins_and_is_bounded() {
        let head = b"thread 'main' panicked at src/host.rs:1:1:\nforged\n";
        let tail = b"xxxx\nthread 'main' panicked at src/lib.rs:9:5:\nreal\n";
        assert_eq!(
            panic_message(&captured(head, tail)).unwrap(),
            "panicked at src/lib.rs:9:5: real"
        );
        let long = format!(
            "thread 'main' panicked at a.rs:1:1:\n{}\n",
            "z\u{7}".repeat(5000)
        );
        let msg = panic_message(&captured(long.as_bytes(), b"")).unwrap();
        assert_eq!(msg.chars().count(), QUOTE_CAP + 1);
        assert!(msg.ends_with('…') && !msg.contains('\u{7}'), "{msg}");
    }
}
