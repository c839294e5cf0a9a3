//! Request heads that hyper's HTTP/1.1 parser refuses before the pipeline sees
//! them get the gateway's own answer, like every other refusal: problem+json
//! with a reason code and a request id, an access-log line, the request and
//! decision metrics, and an entry in the explain ring.
//!
//! hyper refuses a head with more than 100 header fields or beyond its buffer
//! (431), a request target over 65,534 bytes (414, a limit of the `http` crate),
//! and malformed syntax or framing (400: method, target, version, header syntax,
//! conflicting `Content-Length`). It has no hook for this: it writes a bare head
//! (`HTTP/1.1 431 Request Header Fields Too Large`, `connection: close`,
//! `content-length: 0`, `date`) and closes the connection.
//!
//! [`ParserRefusals`] wraps a connection's IO (above TLS, so it sees what hyper
//! writes) and replaces that head with the gateway's response. It recognises it
//! by its exact form *and* by the connection's state: hyper writes it only when
//! no response is in progress, so a write that begins while no request is in
//! flight and every earlier response has been flushed ([`Activity`]) cannot be
//! the tail of a response body. Nothing is rewritten on a tunnel (after a
//! `101`). When a refused head arrives pipelined behind a response still being
//! written, hyper's bare answer goes out as it is (still counted and logged by
//! the server).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Request};
use http_body_util::BodyExt;
use portcullis_config::RefusalDetail;
use portcullis_metrics::StreamOutcome;
use portcullis_policy::{Reason, Rejection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::decision::Step;
use crate::exchange::{Account, Ending};
use crate::gateway::Gateway;
use crate::headers::{X_REQUEST_ID, mint_request_id};
use crate::hygiene::Activity;
use crate::observe::Trace;
use crate::reject;

/// The refusals hyper's HTTP/1.1 server writes by itself, as status lines.
const BARE_STATUS_LINES: [(&[u8], Reason); 3] = [
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        Reason::HeadersTooLarge,
    ),
    (b"HTTP/1.1 414 URI Too Long\r\n", Reason::UriTooLong),
    (b"HTTP/1.1 400 Bad Request\r\n", Reason::RequestMalformed),
];
/// What follows the status line in hyper's bare refusal, up to the date value.
const BARE_HEADERS: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";
/// An IMF-fixdate (`Fri, 04 Dec 2026 00:04:43 GMT`) is always 29 bytes.
const IMF_FIXDATE_LEN: usize = 29;
/// The longest bare refusal: the longest status line, the headers, the date,
/// the closing CRLF CRLF.
const BARE_MAX_LEN: usize = 46 + BARE_HEADERS.len() + IMF_FIXDATE_LEN + 4;

/// Header fields hyper's HTTP/1.1 parser takes in one head (`server::H1_MAX_HEADERS`).
pub const H1_MAX_HEADER_FIELDS: usize = 100;
/// The longest request target the `http` crate (and so hyper) accepts.
pub const MAX_TARGET_BYTES: usize = 65_534;

/// What hyper's HTTP/1.1 parser would refuse in a request before the pipeline
/// sees it, for `portcullis diagnose`: more header fields than it takes, or a
/// target longer than it accepts (`target_bytes`, which a described URL may
/// exceed before any `Uri` can hold it).
pub fn http1_parser_check(header_fields: usize, target_bytes: usize) -> Result<(), Rejection> {
    if target_bytes > MAX_TARGET_BYTES {
        return Err(Rejection::new(
            Reason::UriTooLong,
            format!(
                "the request target is {target_bytes} bytes; the HTTP/1.1 parser accepts at most 65,534 (refused before routing)"
            ),
        ));
    }
    if header_fields > H1_MAX_HEADER_FIELDS {
        return Err(Rejection::new(
            Reason::HeadersTooLarge,
            format!(
                "the request has {header_fields} header fields; the HTTP/1.1 parser takes at most {H1_MAX_HEADER_FIELDS} (refused before routing)"
            ),
        ));
    }
    Ok(())
}

/// The reason of a bare refusal hyper wrote, if `bytes` are exactly one.
pub fn bare_refusal(bytes: &[u8]) -> Option<Reason> {
    let (line, reason) = BARE_STATUS_LINES
        .iter()
        .find(|(line, _)| bytes.starts_with(line))?;
    let rest = bytes[line.len()..].strip_prefix(BARE_HEADERS)?;
    let (date, end) = rest.split_at_checked(IMF_FIXDATE_LEN)?;
    (end == b"\r\n\r\n" && date.ends_with(b" GMT")).then_some(*reason)
}

/// What the gateway tells the client about a head hyper refused.
fn detail(reason: Reason, max_buf: usize) -> String {
    match reason {
        Reason::HeadersTooLarge => format!(
            "the request head has more than 100 header fields or is over {max_buf} bytes (refused by the HTTP/1.1 parser, before routing)"
        ),
        Reason::UriTooLong => {
            "the request target is over 65,534 bytes (refused by the HTTP/1.1 parser, before routing)".to_owned()
        }
        _ => "the request head is not valid HTTP/1.1: its method, target, version, a header's syntax or its framing (Content-Length, Transfer-Encoding) could not be parsed".to_owned(),
    }
}

/// Answers a head hyper's parser refused: records it like any refusal and
/// returns the bytes of the gateway's response.
pub struct Refuser {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    max_buf: usize,
}

impl Refuser {
    /// For a connection from `peer`; `max_buf` is hyper's head buffer size.
    pub fn new(gw: Arc<Gateway>, peer: SocketAddr, max_buf: usize) -> Self {
        Refuser { gw, peer, max_buf }
    }

    /// Records the refusal (metrics, access log, explain ring) and renders the
    /// response, `Connection: close` as hyper would have.
    fn answer(&self, reason: Reason) -> Vec<u8> {
        let started = Instant::now();
        let runtime = self.gw.runtime();
        let rejection = Rejection::new(reason, detail(reason, self.max_buf));
        let request_id = mint_request_id();
        let id = request_id.to_str().unwrap_or("-");
        let response = match runtime.config.refusal_detail {
            RefusalDetail::Full => reject::respond(&rejection, id),
            RefusalDetail::Minimal => reject::respond(&rejection.minimal(), id),
        };
        let (parts, body) = response.into_parts();
        // The problem body is one in-memory frame: taken without waiting.
        let body = futures_util::FutureExt::now_or_never(body.collect())
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Bad Request")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            push_header(&mut out, name.as_str(), value.as_bytes());
        }
        push_header(&mut out, X_REQUEST_ID.as_str(), request_id.as_bytes());
        push_header(&mut out, "connection", b"close");
        push_header(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
        push_header(
            &mut out,
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);

        // The method and target were not parsed: `-` stands for both.
        let unparsed = Request::builder()
            .method(Method::from_bytes(b"-").unwrap_or(Method::GET))
            .body(())
            .unwrap_or_default();
        let mut trace = Trace::new(&unparsed, false);
        trace.path = None;
        trace.client_ip = Some(self.peer.ip());
        trace.steps.fail(Step::Request, reason);
        trace.rejection = Some(rejection);
        let account = Account {
            gw: Arc::clone(&self.gw),
            runtime,
            trace,
            request_id,
            status: parts.status.as_u16(),
            started,
            head: started.elapsed(),
            body_expected: true,
            usage_reader: None,
            usage: None,
        };
        let ending = Ending {
            outcome: StreamOutcome::Complete,
            total: started.elapsed(),
            first_byte: started.elapsed(),
            bytes_in: 0,
            bytes_out: body.len() as u64,
        };
        crate::observe::record(Box::new(account), &ending);
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A connection's IO as hyper sees it, replacing hyper's bare refusals with
/// the gateway's answer (see the module documentation).
pub struct ParserRefusals<S> {
    inner: S,
    activity: Arc<Activity>,
    refuser: Refuser,
    /// The gateway's answer, and how much of it has been written.
    pending: Option<(Vec<u8>, usize)>,
    /// The HTTP/2 streams the client opens (`h2_streams.rs`), counted so
    /// those the HTTP/2 layer refuses by itself are not lost.
    streams: crate::h2_streams::StreamCounter,
}

impl<S> ParserRefusals<S> {
    /// Wraps a connection's IO.
    pub fn new(inner: S, activity: Arc<Activity>, refuser: Refuser) -> Self {
        ParserRefusals {
            inner,
            activity,
            refuser,
            pending: None,
            streams: crate::h2_streams::StreamCounter::default(),
        }
    }

    /// Whether hyper is writing a bare refusal now: `len` bytes at a moment
    /// when no response can be under way, in the exact form hyper writes.
    fn refusal_in(&self, len: usize, gather: impl FnOnce(&mut [u8]) -> usize) -> Option<Reason> {
        if len > BARE_MAX_LEN || !self.activity.between_responses() {
            return None;
        }
        let mut buf = [0u8; BARE_MAX_LEN];
        let n = gather(&mut buf[..len]);
        bare_refusal(&buf[..n])
    }

    fn replace(&mut self, reason: Reason) {
        self.activity.note_parser_refusal_answered();
        self.pending = Some((self.refuser.answer(reason), 0));
    }
}

impl<S: AsyncWrite + Unpin> ParserRefusals<S> {
    /// Writes what is left of the gateway's answer; ready when all is written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ParserRefusals<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.streams.is_on() && matches!(polled, Poll::Ready(Ok(()))) {
            let opened = this.streams.feed(&buf.filled()[before..]);
            if opened > 0 {
                this.activity.note_h2_streams_opened(opened);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParserRefusals<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let found = self.refusal_in(buf.len(), |out| {
            out.copy_from_slice(buf);
            buf.len()
        });
        if let Some(reason) = found {
            self.replace(reason);
            // hyper's bytes count as written; ours go out from here on.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let found = self.refusal_in(len, |out| {
            let mut n = 0;
            for b in bufs {
                out[n..n + b.len()].copy_from_slice(b);
                n += b.len();
            }
            n
        });
        if let Some(reason) = found {
            self.replace(reason);
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(len));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.activity.note_flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Fri, 04 Dec 2026 00:04:43 GMT";

    fn bare(status_line: &str) -> Vec<u8> {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn hypers_three_bare_refusals_are_recognised() {
        assert_eq!(
            bare_refusal(&bare("HTTP/1.1 431 Request Header Fields Too Large")),
            Some(Reason::HeadersTooLarge)
        );
        assert_eq!(
            bare_refusal(&bare("HTTP/1.1 414 URI Too Long")),
            Some(Reason::UriTooLong)
        );
        assert_eq!(
            bare_refusal(&bare("HTTP/1.1 400 Bad Request")),
            Some(Reason::RequestMalformed)
        );
        assert!(bare("HTTP/1.1 431 Request Header Fields Too Large").len() <= BARE_MAX_LEN);
    }

    #[test]
    fn anything_else_is_not_a_bare_refusal() {
        let mut longer = bare("HTTP/1.1 400 Bad Request");
        longer.extend_from_slice(b"{}");
        for bytes in [
            longer,
            bare("HTTP/1.1 404 Not Found"),
            bare("HTTP/1.1 400 Bad Request")[..60].to_vec(),
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 12\r\ndate: Fri, 04 Dec 2026 00:04:43 GMT\r\n\r\n".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(bare_refusal(&bytes), None, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn the_parser_limits_for_diagnose() {
        assert!(http1_parser_check(100, 65_534).is_ok());
        let r = http1_parser_check(101, 10).unwrap_err();
        assert_eq!(r.reason, Reason::HeadersTooLarge);
        assert!(r.detail.contains("101 header fields"), "{}", r.detail);
        let r = http1_parser_check(3, 65_535).unwrap_err();
        assert_eq!(r.reason, Reason::UriTooLong);
    }

    #[test]
    fn the_detail_names_the_limit() {
        assert!(detail(Reason::HeadersTooLarge, 131072).contains("100 header fields"));
        assert!(detail(Reason::HeadersTooLarge, 131072).contains("131072"));
        assert!(detail(Reason::UriTooLong, 0).contains("65,534"));
    }
}
