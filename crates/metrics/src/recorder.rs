//! Typed recorders with label handles resolved once per route / upstream / issuer,
//! so the request path never looks a label set up in a map.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use prometheus::{Histogram, IntCounter};

use crate::families::Families;

/// Methods with their own label; anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The outcomes of `portcullis_trace_spans_total`, exported from the start at 0.
const TRACE_SPAN_OUTCOMES: [&str; 3] = ["exported", "dropped", "failed"];
/// Room for the reason catalogue plus `none`.
const REASON_SLOTS: usize = 64;

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(status: u16) -> usize {
    ((status / 100).clamp(1, 5) - 1) as usize
}

/// The Prometheus exporter: every family plus resolved handles.
pub struct Metrics {
    families: Families,
    /// `hit`, `miss`, `eviction` of the token cache, resolved once.
    token_cache: [IntCounter; 3],
}

/// Handles of one route.
pub struct RouteMetrics {
    route: Arc<str>,
    families: Arc<Metrics>,
    requests: [OnceLock<IntCounter>; 40],
    duration: Histogram,
    decisions: Vec<OnceLock<IntCounter>>,
    would_deny: Vec<OnceLock<IntCounter>>,
    exchanges: [OnceLock<IntCounter>; 5],
    exchange_duration: Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    upstream_refusals: [OnceLock<IntCounter>; 2],
}

/// How an exchange ended: the `outcome` label of `portcullis_exchanges_total` and
/// the `stream` field of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// The whole response reached the client.
    Complete = 0,
    /// The client went away before the end.
    ClientAborted = 1,
    /// The upstream broke the response off mid-way.
    UpstreamAborted = 2,
    /// The gateway's shutdown grace ran out while it streamed.
    ShutdownCut = 3,
    /// The client's request body stalled past `limits.body_read_timeout`.
    Timeout = 4,
}

impl StreamOutcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Complete => "complete",
            StreamOutcome::ClientAborted => "client_aborted",
            StreamOutcome::UpstreamAborted => "upstream_aborted",
            StreamOutcome::ShutdownCut => "shutdown_cut",
            StreamOutcome::Timeout => "timeout",
        }
    }
}

/// Handles of one issuer.
pub struct IssuerMetrics {
    clock_offset: Histogram,
}

impl IssuerMetrics {
    /// The clock offset `now - iat` of a token of this issuer that was accepted.
    pub fn clock_offset(&self, seconds: f64) {
        self.clock_offset.observe(seconds);
    }
}

/// What an opaque-token lookup found, each a `result` label of
/// `portcullis_introspection_cache_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionCacheResult {
    /// A cached active answer.
    Hit = 0,
    /// A cached inactive answer.
    NegativeHit = 1,
    /// The endpoint was called.
    Miss = 2,
    /// Waited for the call another request made for the same token.
    Joined = 3,
    /// A cached answer past `cache_ttl` served within `max_stale`.
    StaleServed = 4,
}

/// Handles of one introspecting issuer.
pub struct IntrospectionMetrics {
    cache: [IntCounter; 5],
}

impl IntrospectionMetrics {
    /// One opaque-token lookup.
    pub fn cache(&self, result: IntrospectionCacheResult) {
        self.cache[result as usize].inc();
    }
}

/// Handles of one upstream.
pub struct UpstreamMetrics {
    upstream: Arc<str>,
    families: Arc<Metrics>,
    latency: Histogram,
    errors: [OnceLock<IntCounter>; 5],
}

/// Token-cache events, each a `result` label of `portcullis_token_cache_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCacheEvent {
    /// Served from the cache.
    Hit = 0,
    /// Verified anew.
    Miss = 1,
    /// Entries dropped to make room.
    Eviction = 2,
}

/// Kinds of upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP/TLS connect failed.
    Connect,
    /// No response head in time.
    Timeout,
    /// Connection reset or closed mid-exchange.
    Reset,
    /// Invalid HTTP from the upstream.
    Protocol,
    /// The response body broke off after its head (a stream cut mid-way).
    MidStream,
}

impl UpstreamErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::MidStream => "mid_stream",
        }
    }
}

impl Metrics {
    /// Creates the exporter with its own registry and sets `portcullis_build_info`.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let families = Families::new()?;
        families
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let token_cache =
            ["hit", "miss", "eviction"].map(|r| families.token_cache.with_label_values(&[r]));
        for outcome in TRACE_SPAN_OUTCOMES {
            families.trace_spans.with_label_values(&[outcome]);
        }
        Ok(Arc::new(Metrics {
            families,
            token_cache,
        }))
    }

    /// Spans of sampled requests: `exported`, `dropped` or `failed`.
    pub fn trace_spans(&self, outcome: &'static str, n: u64) {
        if TRACE_SPAN_OUTCOMES.contains(&outcome) {
            self.families
                .trace_spans
                .with_label_values(&[outcome])
                .inc_by(n);
        }
    }

    /// The families, for exporters and scrape-time gauges.
    pub fn families(&self) -> &Families {
        &self.families
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.families.registry.gather())
            .unwrap_or_else(|e| format!("# encoding error: {e}\n"))
    }

    /// Resolves the handles of a route (call when a config is compiled).
    pub fn route(self: &Arc<Self>, name: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            route: Arc::from(name),
            families: Arc::clone(self),
            requests: std::array::from_fn(|_| OnceLock::new()),
            duration: self.families.request_duration.with_label_values(&[name]),
            decisions: (0..REASON_SLOTS * 2).map(|_| OnceLock::new()).collect(),
            would_deny: (0..REASON_SLOTS).map(|_| OnceLock::new()).collect(),
            exchanges: std::array::from_fn(|_| OnceLock::new()),
            exchange_duration: self.families.exchange_duration.with_label_values(&[name]),
            request_bytes: self.families.request_body_bytes.with_label_values(&[name]),
            response_bytes: self.families.response_body_bytes.with_label_values(&[name]),
            upstream_refusals: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    /// Resolves the handles of an upstream.
    pub fn upstream(self: &Arc<Self>, name: &str) -> Arc<UpstreamMetrics> {
        Arc::new(UpstreamMetrics {
            upstream: Arc::from(name),
            families: Arc::clone(self),
            latency: self.families.upstream_latency.with_label_values(&[name]),
            errors: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    /// A token-cache event.
    pub fn token_cache(&self, event: TokenCacheEvent, n: u64) {
        self.token_cache[event as usize].inc_by(n);
    }

    /// Resolves the handles of an issuer, labelled with its `iss` value (call when
    /// a config is compiled).
    pub fn issuer(&self, issuer: &str) -> IssuerMetrics {
        IssuerMetrics {
            clock_offset: self.families.clock_offset.with_label_values(&[issuer]),
        }
    }

    /// Resolves the handles of an introspecting issuer (labelled with its `iss`).
    pub fn introspection(&self, issuer: &str) -> IntrospectionMetrics {
        IntrospectionMetrics {
            cache: crate::families::INTROSPECTION_CACHE_RESULTS.map(|result| {
                self.families
                    .introspection_cache
                    .with_label_values(&[issuer, result])
            }),
        }
    }

    /// A configuration load finished.
    pub fn config_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.families
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        if success {
            self.families.config_last_success.set(unix_now());
        }
        self.families.config_last_reload_ok.set(i64::from(success));
    }
}

/// Seconds since the Unix epoch as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RouteMetrics {
    /// The route label.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// One finished request.
    pub fn request(&self, method: &Method, status: u16, seconds: f64) {
        let (mi, ci) = (method_index(method), class_index(status));
        self.requests[mi * 5 + ci]
            .get_or_init(|| {
                self.families.families.requests.with_label_values(&[
                    &self.route,
                    METHODS[mi],
                    CLASSES[ci],
                ])
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// One authorization decision. `reason_index` is the reason's position in the
    /// catalogue (0 for `none` on allow).
    pub fn decision(&self, allowed: bool, reason_index: usize, reason: &'static str) {
        let slot = reason_index.min(REASON_SLOTS - 1) * 2 + usize::from(allowed);
        let outcome = if allowed { "allow" } else { "deny" };
        self.decisions[slot]
            .get_or_init(|| {
                self.families.families.auth_decisions.with_label_values(&[
                    &self.route,
                    outcome,
                    reason,
                ])
            })
            .inc();
    }

    /// An exchange ended: how, after how long, with how many body bytes each way.
    pub fn exchange(&self, outcome: StreamOutcome, seconds: f64, bytes_in: u64, bytes_out: u64) {
        self.exchanges[outcome as usize]
            .get_or_init(|| {
                self.families
                    .families
                    .exchanges
                    .with_label_values(&[&self.route, outcome.as_str()])
            })
            .inc();
        self.exchange_duration.observe(seconds);
        if bytes_in > 0 {
            self.request_bytes.inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.response_bytes.inc_by(bytes_out);
        }
    }

    /// One upstream of a route's fallback chain tried: its status or why it
    /// could not answer (a few bounded labels; off the cached path).
    pub fn upstream_attempt(&self, upstream: &str, outcome: &str) {
        self.families
            .families
            .upstream_attempts
            .with_label_values(&[&self.route, upstream, outcome])
            .inc();
    }

    /// The upstream itself answered 401 or 403.
    pub fn upstream_refused(&self, status: u16) {
        let (i, label) = if status == 401 {
            (0, "401")
        } else {
            (1, "403")
        };
        self.upstream_refusals[i]
            .get_or_init(|| {
                self.families
                    .families
                    .upstream_refusals
                    .with_label_values(&[&self.route, label])
            })
            .inc();
    }

    /// A report-only route let through a request enforcement would deny.
    pub fn would_deny(&self, reason_index: usize, reason: &'static str) {
        self.would_deny[reason_index.min(REASON_SLOTS - 1)]
            .get_or_init(|| {
                self.families
                    .families
                    .would_deny
                    .with_label_values(&[&self.route, reason])
            })
            .inc();
    }
}

impl UpstreamMetrics {
    /// The upstream label.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Time to response headers.
    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// A failure.
    pub fn error(&self, kind: UpstreamErrorKind) {
        let i = kind as usize;
        self.errors[i]
            .get_or_init(|| {
                self.families
                    .families
                    .upstream_errors
                    .with_label_values(&[&self.upstream, kind.as_str()])
            })
            .inc();
    }

    /// A fetch of the upstream's OAuth token ended with `outcome` (`ok` or
    /// the failure's kind); rare, so the label set is resolved each time.
    pub fn token_fetch(&self, outcome: &str) {
        self.families
            .families
            .upstream_token_fetches
            .with_label_values(&[&self.upstream, outcome])
            .inc();
    }
}
