//! Body types: what the gateway answers with, and the request body it forwards,
//! streamed with a size limit (never buffered).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::pool::Checkin;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of the gateway: an upstream's body streamed through, or a
/// complete body of the gateway's own (rejections). An enum rather than a boxed
/// trait object, so a proxied response costs no allocation for its body.
pub enum ProxyBody {
    /// Bytes the gateway wrote itself.
    Full(Full<Bytes>),
    /// An upstream event stream with keep-alive comments in long pauses.
    KeepAlive(Box<crate::sse::KeepAliveBody>),
    /// The upstream's body, frame by frame.
    Upstream(UpstreamBody),
}

/// An upstream response body; once read to its end, the connection it came on
/// goes back to the pool. Dropped before its end, the connection is closed.
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    finished: bool,
}

impl UpstreamBody {
    /// Wraps a response body; `checkin` returns its connection when it is read.
    pub fn new(inner: Incoming, checkin: Option<Checkin>) -> Self {
        UpstreamBody {
            inner,
            checkin,
            finished: false,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if (self.finished || self.inner.is_end_stream())
            && let Some(checkin) = self.checkin.take()
        {
            checkin.give_back();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body.
pub fn full(bytes: Bytes) -> ProxyBody {
    ProxyBody::Full(Full::new(bytes))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// An upstream response body, streamed.
pub fn streamed(body: UpstreamBody) -> ProxyBody {
    ProxyBody::Upstream(body)
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ProxyBody::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Upstream(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            ProxyBody::KeepAlive(sse) => Pin::new(sse.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(full) => full.is_end_stream(),
            ProxyBody::Upstream(incoming) => incoming.is_end_stream(),
            ProxyBody::KeepAlive(sse) => sse.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(full) => full.size_hint(),
            ProxyBody::Upstream(incoming) => incoming.size_hint(),
            ProxyBody::KeepAlive(sse) => sse.size_hint(),
        }
    }
}

/// The request body was larger than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// The client paused its request body for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
pub struct BodyTooSlow(pub Duration);

/// What went wrong with a client's request body (the client's fault, never the
/// upstream's) and how many of its bytes were forwarded. Shared between the body
/// (which sets it), the forward step (which names the cause instead of blaming
/// the upstream) and the exchange's account (bytes in, a stall ending a stream).
#[derive(Debug, Default)]
pub struct BodyFault {
    fault: AtomicU8,
    bytes: AtomicU64,
}

/// The kinds of [`BodyFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFaultKind {
    /// More bytes than the route's `max_body`.
    TooLarge,
    /// Broken framing: a malformed chunk, a body shorter than its
    /// `Content-Length`, a connection closed mid-body.
    Malformed,
    /// A pause longer than `limits.body_read_timeout`.
    TooSlow,
}

impl BodyFault {
    /// The record of a body read whole beforehand: `bytes` long, no fault.
    pub fn read_whole(bytes: u64) -> Self {
        BodyFault {
            fault: AtomicU8::new(0),
            bytes: AtomicU64::new(bytes),
        }
    }

    fn set(&self, kind: BodyFaultKind) {
        let code = match kind {
            BodyFaultKind::TooLarge => 1,
            BodyFaultKind::Malformed => 2,
            BodyFaultKind::TooSlow => 3,
        };
        // The first fault is the cause; what follows is its consequence.
        let _ = self
            .fault
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Body bytes forwarded so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The fault, if the body had one.
    pub fn get(&self) -> Option<BodyFaultKind> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(BodyFaultKind::TooLarge),
            2 => Some(BodyFaultKind::Malformed),
            3 => Some(BodyFaultKind::TooSlow),
            _ => None,
        }
    }
}

/// The client's request body, streamed to the upstream frame by frame, failing
/// once more than `limit` bytes have passed, or when the client pauses longer
/// than the read timeout; every failure is recorded in its [`BodyFault`].
pub struct ForwardBody {
    inner: Option<Incoming>,
    /// A body read whole beforehand (a model-aware route), sent as one frame.
    whole: Option<Bytes>,
    limit: u64,
    seen: u64,
    fault: Option<Arc<BodyFault>>,
    read_timeout: Duration,
    /// Armed at the first poll that finds no data, re-armed after each frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ForwardBody {
    /// Wraps a body; `fault`, when given, records why it failed.
    pub fn new(
        inner: Incoming,
        limit: u64,
        fault: Option<Arc<BodyFault>>,
        read_timeout: Duration,
    ) -> Self {
        ForwardBody {
            inner: Some(inner),
            whole: None,
            limit,
            seen: 0,
            fault,
            read_timeout,
            timer: None,
        }
    }

    /// A body with no bytes (for retries of bodiless requests).
    pub fn empty() -> Self {
        ForwardBody {
            inner: None,
            whole: None,
            limit: 0,
            seen: 0,
            fault: None,
            read_timeout: Duration::MAX,
            timer: None,
        }
    }

    /// A body already read whole, sent as one frame.
    pub fn whole(bytes: Bytes) -> Self {
        let mut body = ForwardBody::empty();
        body.whole = (!bytes.is_empty()).then_some(bytes);
        body
    }

    /// Whether the body is known to be empty, so the request can be replayed.
    pub fn is_end_stream_hint(&self) -> bool {
        self.whole.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    /// The fault record shared with the forward step.
    pub fn fault(&self) -> Option<Arc<BodyFault>> {
        self.fault.clone()
    }

    fn fail(&self, kind: BodyFaultKind) {
        if let Some(f) = &self.fault {
            f.set(kind);
        }
    }

    /// Polls the read timer; ready when the client has been silent too long.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.read_timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx)
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(whole) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(f) = &this.fault {
                        f.bytes.store(this.seen, Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        this.fail(BodyFaultKind::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                if let Some(timer) = this.timer.as_mut() {
                    let deadline = tokio::time::Instant::now() + this.read_timeout;
                    timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(BodyFaultKind::Malformed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.poll_timer(cx) {
                Poll::Ready(()) => {
                    this.fail(BodyFaultKind::TooSlow);
                    this.inner = None;
                    Poll::Ready(Some(Err(Box::new(BodyTooSlow(this.read_timeout)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_end_stream_hint()
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(whole) = &self.whole {
            return SizeHint::with_exact(whole.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
