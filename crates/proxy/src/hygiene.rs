//! Connection hygiene: a connection must earn its file descriptor. A new
//! connection that sends nothing is closed after `limits.first_byte_timeout`; one
//! with no request in flight for `limits.idle_timeout` is closed (HTTP/1.1
//! keep-alive and HTTP/2 alike: HTTP/2 PINGs do not count as use); one client
//! address may hold at most `limits.max_connections_per_ip` connections.
//!
//! Each connection carries one [`Activity`]: its IO sets the first-byte flag, each
//! request marks its start and (when its response body is dropped, the stream
//! included) its end, and [`watchdog`] sleeps until the connection is due.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What one connection has been doing.
pub struct Activity {
    started: Instant,
    first_byte: AtomicBool,
    /// Milliseconds after `started` of the last request's end.
    last_event_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// A response was started and not yet seen fully flushed to the client
    /// (set when a request starts, cleared by [`Activity::note_flushed`]).
    response_unflushed: AtomicBool,
    /// The connection became a tunnel (a `101` was answered).
    upgraded: AtomicBool,
    /// hyper's parser refused a request head and the gateway answered it
    /// (`parser_refusal.rs`).
    parser_refusal_answered: AtomicBool,
    /// Requests handed to the pipeline.
    dispatched: AtomicU64,
    /// HTTP/2 streams the client opened (`h2_streams.rs`).
    h2_streams_opened: AtomicU64,
}

/// Why the watchdog closed a connection (the `cause` label of
/// `portcullis_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleCause {
    /// Nothing was received within `first_byte_timeout`.
    FirstByte,
    /// No request was in flight for `idle_timeout`.
    Idle,
}

impl IdleCause {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdleCause::FirstByte => "first_byte_timeout",
            IdleCause::Idle => "idle_timeout",
        }
    }
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            first_byte: AtomicBool::new(false),
            last_event_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            response_unflushed: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            parser_refusal_answered: AtomicBool::new(false),
            dispatched: AtomicU64::new(0),
            h2_streams_opened: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request began; the returned guard ends it when dropped. Only its end
    /// is timed: while it runs, the watchdog sees it in flight.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        self.response_unflushed.store(true, Ordering::Release);
        RequestGuard {
            activity: Arc::clone(self),
        }
    }
}

impl Activity {
    /// The connection's IO was flushed: with no request in flight, every byte of
    /// every response so far has been handed to the socket (hyper writes a
    /// response's last bytes before it flushes, and drops its body before that).
    pub fn note_flushed(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.response_unflushed.store(false, Ordering::Release);
        }
    }

    /// Whether a write now can only come from hyper itself, not from a
    /// response: nothing in flight, every response flushed, no tunnel.
    pub fn between_responses(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.response_unflushed.load(Ordering::Acquire)
            && !self.upgraded.load(Ordering::Acquire)
    }

    /// Notes that the gateway answered a head hyper's parser refused.
    pub fn note_parser_refusal_answered(&self) {
        self.parser_refusal_answered.store(true, Ordering::Release);
    }

    /// Whether the gateway answered (and logged) a head hyper's parser refused.
    pub fn parser_refusal_answered(&self) -> bool {
        self.parser_refusal_answered.load(Ordering::Acquire)
    }

    /// Notes HTTP/2 streams the client opened.
    pub fn note_h2_streams_opened(&self, n: u64) {
        self.h2_streams_opened.fetch_add(n, Ordering::Relaxed);
    }

    /// HTTP/2 streams the client opened that never reached the pipeline (at
    /// the connection's end: refused or ended by the HTTP/2 layer itself).
    pub fn h2_streams_not_dispatched(&self) -> u64 {
        self.h2_streams_opened
            .load(Ordering::Relaxed)
            .saturating_sub(self.dispatched.load(Ordering::Relaxed))
    }
}

/// Marks a request as in flight until dropped (with its response body).
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl RequestGuard {
    /// The request was answered `101`: what follows on the connection is a
    /// tunnel.
    pub fn note_upgraded(&self) {
        self.activity.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.last_event_ms.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when the connection should be closed for want of use.
pub async fn watchdog(activity: &Activity, first_byte: Duration, idle: Duration) -> IdleCause {
    tokio::time::sleep_until(activity.started + first_byte).await;
    if !activity.first_byte.load(Ordering::Acquire)
        && activity.in_flight.load(Ordering::Acquire) == 0
    {
        return IdleCause::FirstByte;
    }
    loop {
        let last = activity.last_event_ms.load(Ordering::Acquire);
        tokio::time::sleep_until(activity.started + Duration::from_millis(last) + idle).await;
        if activity.in_flight.load(Ordering::Acquire) > 0 {
            // A request (or a long stream) is running: look again an idle period on.
            tokio::time::sleep(idle).await;
            continue;
        }
        if activity.last_event_ms.load(Ordering::Acquire) == last {
            return IdleCause::Idle;
        }
    }
}

/// A response body that keeps its request counted as in flight until it is
/// dropped: sent to its end, or abandoned when the connection closes.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's IO, noting its first byte in its [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    seen_first_byte: bool,
}

impl<S> Watched<S> {
    /// Wraps a stream.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            seen_first_byte: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.seen_first_byte && buf.filled().len() > before {
            self.seen_first_byte = true;
            self.activity.first_byte.store(true, Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connections per client address, shared by every worker.
#[derive(Default)]
pub struct PerIpConnections {
    open: DashMap<IpAddr, u32, foldhash::fast::RandomState>,
}

/// Holds one connection's place in [`PerIpConnections`] until dropped.
pub struct IpSlot {
    table: Arc<PerIpConnections>,
    ip: IpAddr,
}

impl PerIpConnections {
    /// Takes a place for `ip`, or `None` when it already holds `max` connections.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let mut count = self.open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Addresses currently holding a connection.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no address holds a connection.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // Forget the address at its last connection, so the table stays as small
        // as the set of clients connected now.
        self.table.open.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_due_at_the_first_byte_timeout() {
        let a = Activity::new();
        let start = Instant::now();
        let cause = watchdog(&a, Duration::from_secs(10), Duration::from_secs(60)).await;
        assert_eq!(cause, IdleCause::FirstByte);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_keeps_the_connection_and_idleness_counts_from_its_end() {
        let a = Activity::new();
        a.first_byte.store(true, Ordering::Release);
        let guard = a.request_started();
        let start = Instant::now();
        let ends = tokio::spawn(async move {
            // A stream that runs for five idle periods.
            tokio::time::sleep(Duration::from_secs(300)).await;
            drop(guard);
        });
        let cause = watchdog(&a, Duration::from_secs(10), Duration::from_secs(60)).await;
        ends.await.unwrap();
        assert_eq!(cause, IdleCause::Idle);
        let closed = start.elapsed();
        assert!(closed >= Duration::from_secs(360), "{closed:?}");
        assert!(closed <= Duration::from_secs(420), "{closed:?}");
    }

    #[tokio::test]
    async fn per_ip_slots_are_bounded_and_forgotten() {
        let table = Arc::new(PerIpConnections::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = table.acquire(ip, 2).unwrap();
        let b = table.acquire(ip, 2).unwrap();
        assert!(table.acquire(ip, 2).is_none());
        assert!(table.acquire("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        let c = table.acquire(ip, 2).unwrap();
        drop((b, c));
        assert!(
            table.is_empty(),
            "an address with no connection is forgotten"
        );
    }
}
