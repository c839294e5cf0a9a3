//! The traffic listener: accept loop, optional TLS termination (ALPN h2 and
//! http/1.1), HTTP/1.1 and HTTP/2 auto-detection (h2c prior knowledge included),
//! connection limits (total and per client address), connection hygiene
//! (first-byte, header and idle timeouts: `hygiene.rs`), HTTP/2 abuse limits, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::gateway::Gateway;
use crate::hygiene::{Activity, PerIpConnections, Tracked, Watched, watchdog};
use crate::parser_refusal::{ParserRefusals, Refuser};
use crate::pipeline::{ConnInfo, handle};

/// HTTP/2 streams one connection may have open at once.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may open and reset before the gateway accepted them
/// (CVE-2023-44487, "rapid reset"); past it the connection gets GOAWAY.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
/// HTTP/2 streams the gateway may reset for a client's protocol errors before it
/// closes the connection.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Header fields hyper accepts in one HTTP/1.1 request head: its default, kept
/// on purpose. A larger value makes hyper allocate that many slots on the heap for
/// every request (measured: +5 µs CPU per request at 1,000), and no real client
/// sends more; beyond it, hyper's refusal is answered by `parser_refusal.rs`.
pub const H1_MAX_HEADERS: usize = crate::parser_refusal::H1_MAX_HEADER_FIELDS;

/// Listening sockets for `workers` workers on one address. Several get
/// `SO_REUSEPORT`, so the kernel spreads connections over them; a single one does
/// not, so that a second process on the same port fails to start instead of
/// silently sharing it. Port 0 is resolved by the first socket and shared by the
/// rest. Sockets are non-blocking, ready for Tokio.
pub fn bind_workers(
    address: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let share = workers > 1;
    let first = bind_listener(address, share)?;
    let address = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers.max(1) {
        listeners.push(bind_listener(address, share)?);
    }
    Ok(listeners)
}

fn bind_listener(address: SocketAddr, share: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if share {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// hyper's HTTP/1.1 head buffer (and HTTP/2 header list) size: larger than our
/// limit, so an oversized head reaches the pipeline and its 431 names the limit;
/// beyond it, hyper's own refusal is answered by `parser_refusal.rs`.
fn head_buffer_bytes(limits: &Limits) -> usize {
    (limits.max_header_bytes * 2).max(16 << 10)
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let buf = head_buffer_bytes(limits);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(buf)
        .keep_alive(true);
    // HTTP/2: the header list (HPACK-decoded, CONTINUATION frames included) is
    // bounded like an HTTP/1.1 head; streams, resets and PING liveness bounded.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(buf as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves traffic on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests (streams included) finish for up to the configured
/// grace period, and returns.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = connection_slots(&gateway);
    serve_worker(gateway, listener, tls, slots, shutdown).await;
}

/// The connection limits every worker shares: `limits.max_connections` in all,
/// and `limits.max_connections_per_ip` per client address.
pub struct ConnectionSlots {
    total: Arc<Semaphore>,
    per_ip: Arc<PerIpConnections>,
}

/// The connection limits, to share among workers.
pub fn connection_slots(gateway: &Gateway) -> Arc<ConnectionSlots> {
    Arc::new(ConnectionSlots {
        total: Arc::new(Semaphore::new(
            gateway.runtime().config.limits.max_connections,
        )),
        per_ip: Arc::new(PerIpConnections::default()),
    })
}

/// [`serve`] for one of several workers, each with its own listener on the same
/// address; `slots` are the connection limits they share.
pub async fn serve_worker(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    slots: Arc<ConnectionSlots>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = gateway.runtime().config.limits.clone();
    let builder = Arc::new(http_builder(&limits));
    let (stop_tx, stop_rx) = watch::channel(Phase::Serving);
    let tracker = tokio_util_tracker::Tracker::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = e.to_string().as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots.total).try_acquire_owned() else {
            gateway.metrics().families().rejected_connections.inc();
            drop(stream);
            continue;
        };
        let ip_slot = if limits.max_connections_per_ip > 0 {
            match slots
                .per_ip
                .acquire(peer.ip(), limits.max_connections_per_ip)
            {
                Some(slot) => Some(slot),
                None => {
                    closed(&gateway, "per_ip_limit");
                    drop(stream);
                    continue;
                }
            }
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let token = tracker.enter();
        let limits = limits.clone();
        tokio::spawn(async move {
            gw.metrics().families().open_connections.inc();
            serve_connection(&gw, &builder, stream, peer, tls, stop, &limits).await;
            gw.metrics().families().open_connections.dec();
            drop((permit, ip_slot, token));
        });
    }
    // Closed now, not when the last connection ends: a new connection is refused
    // at once instead of waiting in the kernel's queue until the process exits.
    drop(listener);
    let _ = stop_tx.send(Phase::Draining);
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = limits.shutdown_grace.as_secs_f64(),
            "shutdown grace period over; closing remaining connections"
        );
        // Cut what is left, here rather than by the process exit, so each cut
        // exchange is closed (counted `shutdown_cut`, logged) while the log
        // writer still runs.
        let _ = stop_tx.send(Phase::Cut);
        let _ = tokio::time::timeout(CUT_WAIT, tracker.wait_idle()).await;
    }
}

/// Where a shutdown is, as the connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Serving.
    Serving,
    /// Finishing in-flight requests and streams (`limits.shutdown_grace`).
    Draining,
    /// The grace is over: connections still open are dropped.
    Cut,
}

/// How long the cut connections get to be dropped and accounted for.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Counts a connection the gateway closed, by cause.
fn closed(gw: &Gateway, cause: &str) {
    gw.metrics()
        .families()
        .connections_closed
        .with_label_values(&[cause])
        .inc();
}

async fn serve_connection(
    gw: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<Phase>,
    limits: &Limits,
) {
    let activity = Activity::new();
    let stream = Watched::new(stream, Arc::clone(&activity));
    // Above TLS: what hyper writes in plain text.
    fn refusals<S>(
        gw: &Arc<Gateway>,
        peer: SocketAddr,
        limits: &Limits,
        activity: &Arc<Activity>,
        io: S,
    ) -> TokioIo<ParserRefusals<S>> {
        let refuser = Refuser::new(Arc::clone(gw), peer, head_buffer_bytes(limits));
        TokioIo::new(ParserRefusals::new(io, Arc::clone(activity), refuser))
    }
    match tls {
        None => {
            drive(
                gw,
                builder,
                refusals(gw, peer, limits, &activity, stream),
                ConnInfo::new(peer, false),
                stop,
                activity,
                limits,
            )
            .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    drive(
                        gw,
                        builder,
                        refusals(gw, peer, limits, &activity, tls_stream),
                        ConnInfo::new(peer, true),
                        stop,
                        activity,
                        limits,
                    )
                    .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = e.to_string().as_str(), "TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I>(
    gw: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    info: ConnInfo,
    mut stop: watch::Receiver<Phase>,
    activity: Arc<Activity>,
    limits: &Limits,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let gateway = Arc::clone(gw);
    let peer = info.peer;
    let requests = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let gw = Arc::clone(&gateway);
        let info = info.clone();
        let guard = requests.request_started();
        // Boxed: hyper moves the service future into its dispatcher, and moving a
        // pointer is cheaper than moving the whole request state machine.
        Box::pin(async move {
            let response = handle(&gw, info, req).await;
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                guard.note_upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        })
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // Whatever way it ends: HTTP/2 streams the h2 layer ended before the
    // pipeline saw them (a header list over its limit, the stream limit) are
    // logged and counted, never lost.
    let _report = StreamReport {
        gw: Arc::clone(gw),
        peer,
        activity: Arc::clone(&activity),
    };
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                note_connection_error(gw, peer, e.as_ref(), activity.parser_refusal_answered());
            }
        }
        cause = watchdog(&activity, limits.first_byte_timeout, limits.idle_timeout) => {
            closed(gw, cause.as_str());
            tracing::debug!(%peer, cause = cause.as_str(), "closing an unused connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
        }
        () = async { let _ = stop.wait_for(|p| *p >= Phase::Draining).await; } => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.wait_for(|p| *p == Phase::Cut) => {}
            }
        }
    }
}

/// Reports, when dropped (the connection's end), the HTTP/2 streams of the
/// connection that never reached the pipeline.
struct StreamReport {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Drop for StreamReport {
    fn drop(&mut self) {
        let refused = self.activity.h2_streams_not_dispatched();
        if refused == 0 {
            return;
        }
        self.gw
            .metrics()
            .families()
            .http2_streams_refused
            .inc_by(refused);
        tracing::warn!(
            peer = %self.peer,
            streams = refused,
            "HTTP/2 streams ended by the protocol layer before the pipeline saw them: a header list over twice limits.max_header_bytes (answered 431 by it), streams over the concurrency limit (refused), or streams the client reset first"
        );
    }
}

/// A connection that hyper ended with an error: a request head or framing it
/// refused before the pipeline saw it (over its limits, malformed) is counted and
/// logged, so probing leaves a trace; a client that went away is not news. A
/// refusal the gateway answered itself (`answered`) already has its access-log
/// line, request id and metrics.
fn note_connection_error(
    gw: &Gateway,
    peer: SocketAddr,
    e: &(dyn std::error::Error + 'static),
    answered: bool,
) {
    let hyper_error = e.downcast_ref::<hyper::Error>();
    let parse =
        hyper_error.is_some_and(|h| h.is_parse() || h.is_parse_too_large() || h.is_parse_status());
    if parse {
        closed(gw, "malformed");
        let error = e.to_string();
        // hyper names no "URI too long" kind publicly; its message does.
        let reason = match hyper_error {
            Some(h) if h.is_parse_too_large() => "headers_too_large",
            _ if error.contains("URI too long") => "uri_too_long",
            _ => "request_malformed",
        };
        if answered {
            tracing::debug!(%peer, reason, error = error.as_str(), "request refused by the HTTP parser");
        } else {
            tracing::info!(%peer, reason, error = error.as_str(), "request refused by the HTTP parser");
        }
    } else {
        tracing::debug!(%peer, error = e.to_string().as_str(), "connection ended with an error");
    }
}

/// A counter of live connections that can be awaited until zero.
mod tokio_util_tracker {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Tracker {
        inner: Arc<(AtomicUsize, Notify)>,
    }

    pub struct Token {
        inner: Arc<(AtomicUsize, Notify)>,
    }

    impl Tracker {
        pub fn enter(&self) -> Token {
            self.inner.0.fetch_add(1, Ordering::AcqRel);
            Token {
                inner: Arc::clone(&self.inner),
            }
        }

        pub async fn wait_idle(&self) {
            loop {
                let notified = self.inner.1.notified();
                if self.inner.0.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        }
    }

    impl Drop for Token {
        fn drop(&mut self) {
            if self.inner.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.inner.1.notify_waiters();
            }
        }
    }
}
