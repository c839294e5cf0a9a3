//! Every exchange accounted for at its end. The response body the gateway hands
//! to hyper carries the request's account (its decision trace, timings, byte
//! counts); when the last byte has gone out, or the body is dropped before that,
//! the account is closed exactly once: the access-log line, the request and
//! exchange metrics and the explain ring are written then, with the whole
//! stream's duration, the time to first byte, the bytes each way and how the
//! stream ended ([`StreamOutcome`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use portcullis_metrics::{StreamOutcome, UpstreamErrorKind};
use portcullis_policy::{Reason, Rejection};

use crate::body::{BodyFaultKind, BoxError, ProxyBody};
use crate::decision::Step;
use crate::gateway::Gateway;
use crate::observe::Trace;
use crate::runtime::Runtime;
use crate::usage::{Usage, UsageReader};

/// What is known of an exchange when its response head is ready.
pub struct Account {
    /// The gateway (for the explain ring and whether it is draining).
    pub gw: Arc<Gateway>,
    /// The configuration generation the request was decided by.
    pub runtime: Arc<Runtime>,
    /// What the steps decided.
    pub trace: Trace,
    /// The request id.
    pub request_id: HeaderValue,
    /// The response status.
    pub status: u16,
    /// When the request head arrived.
    pub started: Instant,
    /// Time to the response head.
    pub head: Duration,
    /// Whether the response has a body to send (not for `HEAD`, 1xx, 204, 304).
    pub body_expected: bool,
    /// The token usage being read from an AI upstream's answer.
    pub usage_reader: Option<UsageReader>,
    /// What it found, at the end (and whether the answer was a stream).
    pub usage: Option<(bool, Usage)>,
}

/// What the end of an exchange adds to its [`Account`].
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    /// How it ended.
    pub outcome: StreamOutcome,
    /// Request head to last byte.
    pub total: Duration,
    /// Request head to the first body byte sent (the head, for a body-less
    /// response).
    pub first_byte: Duration,
    /// Request body bytes forwarded.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
}

/// The response body with its account, closed at its end.
pub struct ExchangeBody {
    inner: ProxyBody,
    account: Option<Box<Account>>,
    first_byte: Option<Duration>,
    bytes_out: u64,
}

impl ExchangeBody {
    /// `inner`, accounted for by `account` (boxed: hyper moves the body around,
    /// a pointer is cheaper to move than the trace).
    pub fn new(inner: ProxyBody, account: Account) -> Self {
        ExchangeBody {
            inner,
            account: Some(Box::new(account)),
            first_byte: None,
            bytes_out: 0,
        }
    }

    /// Closes the account once.
    fn close(&mut self, outcome: StreamOutcome) {
        let Some(account) = self.account.take() else {
            return;
        };
        let total = account.started.elapsed();
        let bytes_in = account.trace.request_body.as_ref().map_or(0, |b| b.bytes());
        let ending = Ending {
            outcome,
            total,
            first_byte: self.first_byte.unwrap_or(account.head),
            bytes_in,
            bytes_out: self.bytes_out,
        };
        let mut account = account;
        if let Some(reader) = account.usage_reader.take() {
            account.usage = Some((reader.is_stream(), reader.finish()));
        }
        // Token budgets are charged what the answer used, now that it is known.
        if let Some(note) = account.trace.rate_limit.as_mut()
            && !note.charges.is_empty()
        {
            let tokens = account.usage.as_ref().and_then(|(_, u)| u.total_tokens());
            let successful = (200..300).contains(&account.status);
            for charge in note.charges.drain(..) {
                charge.settle(tokens, successful);
            }
        }
        if outcome == StreamOutcome::UpstreamAborted {
            if let Some(route) = &account.trace.route {
                route.upstream.metrics().error(UpstreamErrorKind::MidStream);
            }
            // The status went out with the head; the access log, the explain
            // ring and the status page still say what happened to the stream.
            if account.trace.rejection.is_none() {
                account.trace.rejection = Some(Rejection::new(
                    Reason::UpstreamStreamAborted,
                    format!(
                        "the upstream broke off its response after {} bytes; the client's stream was ended without its last chunk, so the client sees an error",
                        self.bytes_out
                    ),
                ));
                account
                    .trace
                    .steps
                    .fail(Step::Upstream, Reason::UpstreamStreamAborted);
            }
        }
        crate::observe::record(account, &ending);
    }

    /// Why a body dropped before its end stopped.
    fn cut_short(&self) -> StreamOutcome {
        let Some(account) = &self.account else {
            return StreamOutcome::Complete;
        };
        let stalled = account
            .trace
            .request_body
            .as_ref()
            .and_then(|b| b.get())
            .is_some_and(|k| k == BodyFaultKind::TooSlow);
        if stalled {
            StreamOutcome::Timeout
        } else if account.gw.is_draining() {
            StreamOutcome::ShutdownCut
        } else {
            StreamOutcome::ClientAborted
        }
    }
}

impl Drop for ExchangeBody {
    fn drop(&mut self) {
        if self.account.is_none() {
            return;
        }
        let expected = self.account.as_ref().is_some_and(|a| a.body_expected);
        let outcome = if !expected || self.inner.is_end_stream() {
            StreamOutcome::Complete
        } else {
            self.cut_short()
        };
        self.close(outcome);
    }
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                    if let Some(reader) =
                        this.account.as_mut().and_then(|a| a.usage_reader.as_mut())
                    {
                        reader.feed(data);
                    }
                    if this.first_byte.is_none()
                        && let Some(a) = &this.account
                    {
                        this.first_byte = Some(a.started.elapsed());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.close(StreamOutcome::UpstreamAborted),
            Poll::Ready(None) => this.close(StreamOutcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
