//! Body types: what the gateway answers with, and the request body it forwards,
//! streamed with a size limit (never buffered).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(full) => full.is_end_stream(),
            ProxyBody::Upstream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(full) => full.size_hint(),
            ProxyBody::Upstream(incoming) => incoming.size_hint(),
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

/// The client's request body, streamed to the upstream frame by frame, failing
/// once more than `limit` bytes have passed.
pub struct ForwardBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    exceeded: Option<Arc<AtomicBool>>,
}

impl ForwardBody {
    /// Wraps a body; `exceeded`, when given, is set if the limit trips.
    pub fn new(inner: Incoming, limit: u64, exceeded: Option<Arc<AtomicBool>>) -> Self {
        ForwardBody {
            inner: Some(inner),
            limit,
            seen: 0,
            exceeded,
        }
    }

    /// A body with no bytes (for retries of bodiless requests).
    pub fn empty() -> Self {
        ForwardBody {
            inner: None,
            limit: 0,
            seen: 0,
            exceeded: None,
        }
    }

    /// Whether the body is known to be empty, so the request can be replayed.
    pub fn is_end_stream_hint(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        if let Some(flag) = &this.exceeded {
                            flag.store(true, Ordering::Release);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_end_stream_hint()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
