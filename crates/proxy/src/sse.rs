//! Streaming hygiene for server-sent events (`text/event-stream`), the
//! streamed answers of LLM APIs.
//!
//! - Every event stream goes out with `X-Accel-Buffering: no`, so a proxy in
//!   front of the gateway (nginx, many ingress controllers) does not hold
//!   events back; the gateway itself never buffers or compresses a body.
//! - With `routes[].sse_keepalive`, a pause longer than that (a reasoning
//!   model thinking for a minute) is filled with a `: keep-alive` comment, so
//!   load balancers with 60 s idle timeouts keep the connection. A comment is
//!   only ever inserted where an event has ended (after a blank line), never
//!   inside one, so clients parse exactly the upstream's events.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, UpstreamBody};

/// The comment sent during pauses: a comment line and the blank line that
/// ends it (a no-op for every SSE parser).
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Whether a response is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Marks an event stream as not to be buffered by proxies in front.
pub fn mark_unbuffered(headers: &mut HeaderMap) {
    headers.insert(
        http::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
}

/// An upstream event stream with keep-alive comments in long pauses.
pub struct KeepAliveBody {
    inner: UpstreamBody,
    every: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The last bytes sent, to see whether an event has just ended.
    tail: [u8; 4],
}

impl KeepAliveBody {
    /// Wraps `inner`, a comment after each `every` without a byte.
    pub fn new(inner: UpstreamBody, every: Duration) -> Self {
        KeepAliveBody {
            inner,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            // As if a blank line had just been sent: a comment may come first.
            tail: *b"\n\n\n\n",
        }
    }

    fn restart_timer(&mut self) {
        let deadline = tokio::time::Instant::now() + self.every;
        self.timer.as_mut().reset(deadline);
    }
}

impl Body for KeepAliveBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    push_tail(&mut this.tail, data);
                }
                this.restart_timer();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.restart_timer();
                    if ends_event(&this.tail) {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))));
                    }
                    // Mid-event: wait for the event to end; poll the new timer
                    // so the task wakes at its deadline.
                    let _ = this.timer.as_mut().poll(cx);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Comments may be added: no exact size.
        let mut hint = SizeHint::new();
        hint.set_lower(self.inner.size_hint().lower());
        hint
    }
}

/// Keeps the last four bytes sent.
fn push_tail(tail: &mut [u8; 4], data: &[u8]) {
    let n = data.len().min(4);
    for &b in &data[data.len() - n..] {
        tail.rotate_left(1);
        tail[3] = b;
    }
}

/// Whether bytes ending in `tail` end an event (a blank line: `\n\n`,
/// `\r\r`, or `\r\n\r\n`).
fn ends_event(tail: &[u8; 4]) -> bool {
    tail[2..] == *b"\n\n" || tail[2..] == *b"\r\r" || *tail == *b"\r\n\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(chunks: &[&str]) -> bool {
        let mut tail = *b"\n\n\n\n";
        for c in chunks {
            push_tail(&mut tail, c.as_bytes());
        }
        ends_event(&tail)
    }

    #[test]
    fn comments_go_only_where_an_event_ended() {
        assert!(after(&[]), "before the first byte");
        assert!(after(&["data: {\"n\":0}\n\n"]));
        assert!(after(&["data: a\r\n\r\n"]));
        assert!(after(&["data: a\r\r"]));
        assert!(!after(&["data: {\"n\":"]), "mid-line");
        assert!(
            !after(&["data: a\n"]),
            "an event of several lines may go on"
        );
        assert!(!after(&["data: a\r\n"]));
        // The blank line split across chunks, down to single bytes.
        assert!(after(&["data: a\n", "\n"]));
        assert!(after(&["data: a", "\r", "\n", "\r", "\n"]));
        assert!(!after(&["data: a\n\n", "data: b"]));
    }

    #[test]
    fn event_stream_content_types() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert!(is_event_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream"),
        );
        assert!(is_event_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_event_stream(&h));
        assert!(!is_event_stream(&HeaderMap::new()));
    }
}
