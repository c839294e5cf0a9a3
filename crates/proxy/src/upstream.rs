//! Upstream pools: one pooled keep-alive client per upstream, round-robin over its
//! targets, passive health (a target failing `max_failures` connects in a row is
//! set aside for `cooldown`), timeouts, and retries only where safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{Target, UpstreamConfig};
use portcullis_jwks::fetch::error_chain;
use portcullis_metrics::{UpstreamErrorKind, UpstreamMetrics};
use portcullis_policy::{Reason, Rejection};

use crate::body::ForwardBody;

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
}

/// One upstream's client, targets and health.
pub struct UpstreamPool {
    config: Arc<UpstreamConfig>,
    client: Client<HttpsConnector<HttpConnector>, ForwardBody>,
    targets: Vec<TargetState>,
    next: AtomicUsize,
    epoch: Instant,
    metrics: Arc<UpstreamMetrics>,
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = if config.http2 {
            builder.enable_http1().enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let mut cb = Client::builder(TokioExecutor::new());
        cb.pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.http2 && config.targets.iter().all(|t| !t.https) {
            cb.http2_only(true);
        }
        let client = cb.build(https);
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
            })
            .collect();
        Ok(UpstreamPool {
            config,
            client,
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            metrics,
        })
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
    pub async fn send(
        &self,
        mut request: Request<ForwardBody>,
        timeout: Duration,
        retry_after_send: bool,
        set_host: bool,
    ) -> Result<(Response<Incoming>, Duration), UpstreamFailure> {
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let index = self.pick();
            let Some(state) = self.targets.get(index) else {
                return Err(unreachable_failure("the upstream has no targets"));
            };
            let target = &state.target;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(state.scheme.clone());
            parts.authority = Some(target.authority.clone());
            parts.path_and_query = Some(if target.base_path.is_empty() {
                path_and_query.clone()
            } else {
                format!("{}{}", target.base_path, path_and_query)
                    .parse()
                    .map_err(|_| unreachable_failure("cannot build the upstream URI"))?
            });
            *request.uri_mut() = Uri::from_parts(parts)
                .map_err(|e| unreachable_failure(&format!("cannot build the upstream URI: {e}")))?;
            if set_host && let Some(host) = &state.host {
                request
                    .headers_mut()
                    .insert(http::header::HOST, host.clone());
            }
            // The request is consumed by the client; keep what a retry needs, only
            // when a retry can happen (a bodiless request, another target).
            let retry_copy = (attempt < attempts && request.body().is_end_stream_hint())
                .then(|| clone_head(&request));
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, self.client.request(request)).await;
            let elapsed = started.elapsed();
            let error = match result {
                Ok(Ok(response)) => {
                    self.record_success(index);
                    self.metrics.latency(elapsed.as_secs_f64());
                    return Ok((response, elapsed));
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
                Ok(Err(e)) => e,
            };
            let failure = classify(&error, &self.config.name, target.authority.as_str());
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

fn classify(
    e: &hyper_util::client::legacy::Error,
    upstream: &str,
    target: &str,
) -> UpstreamFailure {
    let chain = error_chain(e);
    if e.is_connect() {
        return UpstreamFailure {
            rejection: Rejection::new(
                Reason::UpstreamUnreachable,
                format!("cannot connect to upstream {upstream} ({target}): {chain}"),
            ),
            kind: UpstreamErrorKind::Connect,
        };
    }
    let reset = chain.contains("reset")
        || chain.contains("closed")
        || chain.contains("incomplete")
        || chain.contains("broken pipe");
    let (kind, reason) = if reset {
        (UpstreamErrorKind::Reset, Reason::UpstreamProtocolError)
    } else {
        (UpstreamErrorKind::Protocol, Reason::UpstreamProtocolError)
    };
    UpstreamFailure {
        rejection: Rejection::new(
            reason,
            format!("upstream {upstream} ({target}) failed: {chain}"),
        ),
        kind,
    }
}
