//! Upstream pools: keep-alive connections per target (see `pool.rs`), round-robin
//! over the targets, passive health (a target failing `max_failures` connects in a
//! row is set aside for `cooldown`), timeouts, and retries only where safe.
//!
//! Requests go straight to hyper's connection handles from the request's own task:
//! no client-wide pool lock, no extra task per request to return a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use portcullis_config::{Target, UpstreamConfig};
use portcullis_jwks::fetch::error_chain;
use portcullis_metrics::{UpstreamErrorKind, UpstreamMetrics};
use portcullis_policy::{Reason, Rejection};

use crate::body::{ForwardBody, UpstreamBody};
use crate::connect::{ConnectError, Dialer, Sender};
use crate::pool::{Checkin, TargetPool};
use crate::upstream_token::UpstreamToken;

/// Idle keep-alive connections kept per target at most.
const MAX_IDLE_PER_TARGET: usize = 1024;

/// Why a request to an upstream failed.
#[derive(Debug)]
pub struct UpstreamFailure {
    /// The reason it maps to.
    pub rejection: Rejection,
    /// The metric kind.
    pub kind: UpstreamErrorKind,
}

struct TargetState {
    target: Target,
    /// The `Host` value for this target, built once.
    host: Option<http::HeaderValue>,
    /// The scheme, built once.
    scheme: http::uri::Scheme,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the target is set aside.
    sidelined_until: AtomicU64,
    /// Its keep-alive connections.
    pool: TargetPool,
}

/// One upstream target's health, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    /// `host:port`.
    pub target: String,
    /// Whether it is reached over TLS.
    pub https: bool,
    /// How much longer it is set aside (zero: in rotation).
    pub set_aside_for: Duration,
    /// Connect failures since its last success.
    pub failures: u32,
}

/// How one exchange with a target failed.
enum ExchangeError {
    /// No connection could be opened; nothing was sent.
    Connect(ConnectError),
    /// The request was (or may have been) sent and failed.
    Failed(hyper::Error),
}

/// One upstream's client, targets and health.
pub struct UpstreamPool {
    config: Arc<UpstreamConfig>,
    dialer: Dialer,
    targets: Vec<TargetState>,
    next: AtomicUsize,
    epoch: Instant,
    metrics: Arc<UpstreamMetrics>,
    token: Option<Arc<UpstreamToken>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.config.name)
            .finish()
    }
}

impl UpstreamPool {
    /// Builds the client for an upstream.
    pub fn new(config: Arc<UpstreamConfig>, metrics: Arc<UpstreamMetrics>) -> Result<Self, String> {
        let tls = portcullis_jwks::tls::client_config(config.ca_pem.as_deref())
            .map_err(|e| e.to_string())?;
        let dialer = Dialer::new(tls, config.http2, config.connect_timeout);
        let targets = config
            .targets
            .iter()
            .map(|t| TargetState {
                host: http::HeaderValue::from_str(t.authority.as_str()).ok(),
                scheme: if t.https {
                    http::uri::Scheme::HTTPS
                } else {
                    http::uri::Scheme::HTTP
                },
                target: t.clone(),
                failures: AtomicU32::new(0),
                sidelined_until: AtomicU64::new(0),
                pool: TargetPool::new(MAX_IDLE_PER_TARGET, config.idle_timeout),
            })
            .collect();
        let token = match &config.oauth {
            Some(settings) => {
                let client = portcullis_jwks::TokenClient::new(settings.clone())
                    .map_err(|e| format!("credential.oauth: {e}"))?;
                Some(Arc::new(UpstreamToken::new(
                    &config.name,
                    client,
                    Arc::clone(&metrics),
                )))
            }
            None => None,
        };
        Ok(UpstreamPool {
            config,
            dialer,
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            metrics,
            token,
        })
    }

    /// The upstream's OAuth token, when its credential is `oauth`.
    pub fn token(&self) -> Option<&Arc<UpstreamToken>> {
        self.token.as_ref()
    }

    /// The configuration this pool was built from.
    pub fn config(&self) -> &Arc<UpstreamConfig> {
        &self.config
    }

    /// The upstream's metric handles.
    pub fn metrics(&self) -> &Arc<UpstreamMetrics> {
        &self.metrics
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next target round-robin, skipping those set aside; if all are set aside,
    /// the next one anyway (better a try than a certain failure).
    pub fn pick(&self) -> usize {
        let n = self.targets.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.targets
                    .get(i)
                    .is_some_and(|t| t.sidelined_until.load(Ordering::Relaxed) <= now)
            })
            .unwrap_or(start % n)
    }

    /// Each target's health now: its address, whether it is set aside after
    /// repeated connect failures, and the failures counted since its last success.
    pub fn target_health(&self) -> Vec<TargetHealth> {
        let now = self.now_ms();
        self.targets
            .iter()
            .map(|t| TargetHealth {
                target: t.target.authority.to_string(),
                https: t.target.https,
                set_aside_for: Duration::from_millis(
                    t.sidelined_until
                        .load(Ordering::Relaxed)
                        .saturating_sub(now),
                ),
                failures: t.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The target at `index`.
    pub fn target(&self, index: usize) -> Option<&Target> {
        self.targets.get(index).map(|t| &t.target)
    }

    fn record_connect_failure(&self, index: usize) {
        if let Some(t) = self.targets.get(index) {
            let failures = t.failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= self.config.max_failures {
                let until = self.now_ms() + self.config.cooldown.as_millis() as u64;
                t.sidelined_until.store(until, Ordering::Release);
                t.failures.store(0, Ordering::Release);
                tracing::warn!(upstream = %self.config.name, target = %t.target.authority, cooldown_s = self.config.cooldown.as_secs_f64(), "target set aside after repeated connect failures");
            }
        }
    }

    fn record_success(&self, index: usize) {
        if let Some(t) = self.targets.get(index)
            && t.failures.load(Ordering::Relaxed) != 0
        {
            t.failures.store(0, Ordering::Release);
        }
    }

    /// Sends a request whose URI path-and-query is already final; the scheme and
    /// authority are filled per target. A request without a body is retried on
    /// another target after a connect failure (nothing was sent), and, when
    /// `retry_after_send` is set (idempotent method, `retry.idempotent: true`),
    /// after a reset too. A streamed body cannot be replayed, so it is never retried.
    /// A pooled connection found closed before the request was written is simply
    /// replaced; that is not a retry.
    pub async fn send(
        &self,
        mut request: Request<ForwardBody>,
        timeout: Duration,
        retry_after_send: bool,
        set_host: bool,
    ) -> Result<(Response<UpstreamBody>, Duration), UpstreamFailure> {
        // A retry goes to another target, so with one target there is none.
        let attempts = if self.targets.len() > 1 {
            self.config.attempts.max(1)
        } else {
            1
        };
        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // A fault of the client's body is the client's: named as such by the
        // forward step, and never counted against the upstream.
        let body_fault = request.body().fault();
        let client_fault = || body_fault.as_ref().is_some_and(|f| f.get().is_some());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let index = self.pick();
            let Some(state) = self.targets.get(index) else {
                return Err(unreachable_failure("the upstream has no targets"));
            };
            let target = &state.target;
            *request.uri_mut() = if target.base_path.is_empty() {
                Uri::from(path_and_query.clone())
            } else {
                format!("{}{}", target.base_path, path_and_query)
                    .parse()
                    .map_err(|_| unreachable_failure("cannot build the upstream URI"))?
            };
            if let Some(host) = &state.host
                && (set_host || !request.headers().contains_key(http::header::HOST))
            {
                request
                    .headers_mut()
                    .insert(http::header::HOST, host.clone());
            }
            // The request is consumed by the exchange; keep what a retry needs, only
            // when a retry can happen (a bodiless request, another target).
            let retry_copy = (attempt < attempts && request.body().is_end_stream_hint())
                .then(|| clone_head(&request));
            let started = Instant::now();
            let result =
                tokio::time::timeout(timeout, self.exchange(state, request, started)).await;
            let elapsed = started.elapsed();
            let failure = match result {
                Ok(Ok(response)) => {
                    self.record_success(index);
                    self.metrics.latency(elapsed.as_secs_f64());
                    return Ok((response, elapsed));
                }
                Err(_) | Ok(Err(_)) if client_fault() => {
                    return Err(UpstreamFailure {
                        rejection: Rejection::new(
                            Reason::RequestMalformed,
                            "the client's request body failed",
                        ),
                        kind: UpstreamErrorKind::Protocol,
                    });
                }
                Err(_) => {
                    self.metrics.error(UpstreamErrorKind::Timeout);
                    return Err(UpstreamFailure {
                        rejection: Rejection::new(
                            Reason::UpstreamTimeout,
                            format!(
                                "upstream {} sent no response headers within {:.1}s",
                                self.config.name,
                                timeout.as_secs_f64()
                            ),
                        ),
                        kind: UpstreamErrorKind::Timeout,
                    });
                }
                Ok(Err(e)) => classify(&e, &self.config.name, target.authority.as_str()),
            };
            self.metrics.error(failure.kind);
            if failure.kind == UpstreamErrorKind::Connect {
                self.record_connect_failure(index);
            }
            match retry_copy {
                Some(copy)
                    if failure.kind == UpstreamErrorKind::Connect
                        || (retry_after_send && failure.kind == UpstreamErrorKind::Reset) =>
                {
                    request = copy
                }
                _ => return Err(failure),
            }
        }
    }

    /// One request to one target: on a pooled connection when one is open, else on
    /// a new one. Absolute-form URIs are only used for HTTP/2.
    async fn exchange(
        &self,
        state: &TargetState,
        mut request: Request<ForwardBody>,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, ExchangeError> {
        while let Some(mut sender) = state.pool.take_http1(now) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(with_checkin(response, &state.pool, sender)),
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: try the next connection.
                    Some(unsent) => request = unsent,
                    None => return Err(ExchangeError::Failed(e.into_error())),
                },
            }
        }
        // HTTP/2: one shared connection. If there is none, one request dials it
        // while the others wait for their turn and then find it.
        let mut dial_turn = None;
        if self.config.http2 {
            loop {
                if let Some(mut sender) = state.pool.take_http2() {
                    set_absolute(&mut request, state);
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok(response.map(|b| UpstreamBody::new(b, None))),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) => request = unsent,
                            None => return Err(ExchangeError::Failed(e.into_error())),
                        },
                    }
                }
                if dial_turn.is_some() {
                    break;
                }
                match state.pool.http2_dial_turn().await {
                    Some(turn) => dial_turn = Some(turn),
                    None => break,
                }
            }
        }
        // Boxed: the dial (DNS, TCP, TLS) is the rare path and its state is large;
        // inline it would be carried, and moved, by every request.
        match Box::pin(self.dialer.dial(&state.target))
            .await
            .map_err(ExchangeError::Connect)?
        {
            Sender::Http1(mut sender) => {
                if self.config.http2 {
                    state.pool.note_http1_only();
                }
                drop(dial_turn);
                set_origin_form(&mut request);
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(ExchangeError::Failed)?;
                Ok(with_checkin(response, &state.pool, sender))
            }
            Sender::Http2(mut sender) => {
                state.pool.share_http2(sender.clone());
                drop(dial_turn);
                set_absolute(&mut request, state);
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(ExchangeError::Failed)?;
                Ok(response.map(|b| UpstreamBody::new(b, None)))
            }
        }
    }
}

/// Attaches the connection's return to the pool to the response body; an upgraded
/// connection (101) belongs to the tunnel and never returns.
fn with_checkin(
    response: Response<Incoming>,
    pool: &TargetPool,
    sender: hyper::client::conn::http1::SendRequest<ForwardBody>,
) -> Response<UpstreamBody> {
    let checkin: Option<Checkin> =
        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| pool.lend(sender));
    response.map(|b| UpstreamBody::new(b, checkin))
}

/// HTTP/2 carries the scheme and authority as pseudo-headers, from the URI, and
/// the host as `:authority` rather than `Host` (RFC 9113 §8.3.1): the `Host` the
/// request would have had (the target's, or the client's with `preserve_host`)
/// becomes `:authority`, so the two can never disagree.
fn set_absolute(request: &mut Request<ForwardBody>, state: &TargetState) {
    // Idempotent: on a second call (a retry) the host is already in the URI.
    let authority = request
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok())
        .or_else(|| request.uri().authority().cloned())
        .unwrap_or_else(|| state.target.authority.clone());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(state.scheme.clone());
    parts.authority = Some(authority);
    parts.path_and_query = request.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Undoes [`set_absolute`] for a request that ends up on HTTP/1.1 after all (an
/// HTTP/2 connection lost before it was sent, then ALPN chose HTTP/1.1).
fn set_origin_form(request: &mut Request<ForwardBody>) {
    let Some(authority) = request.uri().authority().cloned() else {
        return;
    };
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path_and_query);
}

/// Copies a bodiless request's head for a retry.
fn clone_head(req: &Request<ForwardBody>) -> Request<ForwardBody> {
    let mut copy = Request::new(ForwardBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn unreachable_failure(detail: &str) -> UpstreamFailure {
    UpstreamFailure {
        rejection: Rejection::new(Reason::UpstreamUnreachable, detail),
        kind: UpstreamErrorKind::Connect,
    }
}

fn classify(e: &ExchangeError, upstream: &str, target: &str) -> UpstreamFailure {
    let e = match e {
        ExchangeError::Connect(e) => {
            return UpstreamFailure {
                rejection: Rejection::new(
                    Reason::UpstreamUnreachable,
                    format!("cannot connect to upstream {upstream} ({target}): {e}"),
                ),
                kind: UpstreamErrorKind::Connect,
            };
        }
        ExchangeError::Failed(e) => e,
    };
    let chain = error_chain(e);
    let reset = e.is_incomplete_message()
        || e.is_closed()
        || e.is_canceled()
        || chain.contains("reset")
        || chain.contains("closed")
        || chain.contains("broken pipe");
    let kind = if reset {
        UpstreamErrorKind::Reset
    } else {
        UpstreamErrorKind::Protocol
    };
    UpstreamFailure {
        rejection: Rejection::new(
            Reason::UpstreamProtocolError,
            format!("upstream {upstream} ({target}) failed: {chain}"),
        ),
        kind,
    }
}
