//! Bodies under the policy's bounds: a request body may not grow past its
//! cap, and a response body is cut at its cap and at the request's
//! deadline (which is never past the task's hard time limit), each with
//! its own wasi:http error code for the guest and a log line naming it.
//! Every byte either way counts as host work, charged to the task's fuel.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::WasiBody;

/// What the guest sends, capped at `limit` bytes. hyper drops a body it
/// will not send (a GET's, whose length it does not know) as soon as it
/// has sent the head: what the guest still writes is then read and thrown
/// away until `deadline`, so the guest sees the response, not a broken
/// stream.
pub(crate) struct OutgoingBody {
    inner: Option<WasiBody>,
    sent: u64,
    limit: u64,
    ended: bool,
    deadline: Instant,
    host_work: Arc<AtomicU64>,
}

impl OutgoingBody {
    pub fn new(inner: WasiBody, limit: u64, deadline: Instant, host_work: Arc<AtomicU64>) -> Self {
        Self {
            inner: Some(inner),
            sent: 0,
            limit,
            ended: false,
            deadline,
            host_work,
        }
    }
}

impl Drop for OutgoingBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let (Some(inner), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(discard(
                inner,
                self.limit.saturating_sub(self.sent),
                self.deadline,
            ));
        }
    }
}

/// Read a body to its end (at most `limit` bytes, until `deadline`),
/// throwing it away.
pub(crate) async fn discard(mut body: WasiBody, limit: u64, deadline: Instant) {
    use http_body_util::BodyExt;
    let mut seen = 0u64;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

impl Body for OutgoingBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            None => this.ended = true,
            Some(Ok(f)) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                this.host_work.fetch_add(n, Ordering::Relaxed);
                this.sent += n;
                if this.sent > this.limit {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(this.limit)))));
                }
            }
            Some(Err(_)) => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

/// What the server answers, cut at `limit` bytes and at `deadline`.
pub(crate) struct IncomingBody {
    inner: Incoming,
    received: u64,
    limit: u64,
    deadline: Pin<Box<Sleep>>,
    host_work: Arc<AtomicU64>,
    /// Task id and URL for the log line when a bound cuts the body.
    task_id: String,
    url: String,
}

impl IncomingBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        deadline: Instant,
        host_work: Arc<AtomicU64>,
        (task_id, url): (String, String),
    ) -> Self {
        Self {
            inner,
            received: 0,
            limit,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            host_work,
            task_id,
            url,
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.host_work.fetch_add(n, Ordering::Relaxed);
                this.received += n;
                if this.received > this.limit {
                    tracing::warn!(task_id = %this.task_id, url = %this.url, limit = this.limit,
                        "HTTP response body over the worker's cap (--http-max-response-size): cut");
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.limit)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                tracing::warn!(task_id = %this.task_id, url = %this.url,
                    "HTTP response body still arriving at the request's deadline: cut");
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
