//! The validated, immutable configuration the gateway runs on.
//!
//! Built only by [`crate::compile`]; every reference is resolved, every CIDR parsed,
//! every secret interpolated. Secrets print as `***` in `Debug`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use portcullis_jwks::{ClientCredentialsSettings, IntrospectionSettings, JwksSettings, KeySource};

pub use crate::providers::{Provider, UsageDialect};
use portcullis_policy::path::PathRules;
use portcullis_policy::{AccessRules, CidrSet, IpRules, IssuerRules, ModelGrant, ModelPattern};

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was read from (for messages).
    pub source: String,
    /// The traffic listener.
    pub listen: ListenConfig,
    /// The admin listener (metrics, health, reload), if enabled.
    pub admin: Option<SocketAddr>,
    /// Who may use the admin endpoints, and what they keep.
    pub admin_settings: AdminSettings,
    /// Runtime worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// Size limits, timeouts, lifecycle.
    pub limits: Limits,
    /// Log level, format and access-log options.
    pub logging: Logging,
    /// Global client-address handling.
    pub network: Network,
    /// How request paths are made canonical before routing.
    pub paths: PathRules,
    /// How much a refusal's body and challenge tell the client.
    pub refusal_detail: RefusalDetail,
    /// The verified-token cache.
    pub token_cache: TokenCacheConfig,
    /// W3C trace context.
    pub tracing: TracingConfig,
    /// Request-rate policies (`rate_limits`).
    pub rate_limits: RateLimits,
    /// Issuers by name.
    pub issuers: BTreeMap<String, Arc<IssuerConfig>>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<UpstreamConfig>>,
    /// Routes, in the order they were written.
    pub routes: Vec<Arc<RouteConfig>>,
    /// Non-fatal findings (shadowed routes, unused upstreams, public routes…).
    pub warnings: Vec<String>,
    /// Every file the configuration read besides itself (`*_file` secrets, TLS
    /// certificate and key, static keys, CA bundles): watched like the
    /// configuration, so a rotated secret or a renewed certificate is picked up.
    pub files: Vec<PathBuf>,
}

/// W3C trace context (`traceparent`, `tracestate`) and span export.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TracingConfig {
    /// Whether the gateway takes part in traces (`tracing.enabled`); off, the
    /// client's trace headers pass through like any other header.
    pub enabled: bool,
    /// Whose `traceparent` continues a trace (`tracing.accept_traceparent`).
    pub accept: TraceparentSource,
    /// The share of new traces sampled (`tracing.sample_ratio`, 0 to 1); a
    /// continued trace keeps its parent's decision.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Where sampled spans are exported, when set.
    pub otlp: Option<OtlpConfig>,
}

/// OTLP/HTTP (protobuf) span export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's traces URL (`http://host:4318/v1/traces`).
    pub endpoint: String,
    /// The longest one export may take.
    pub timeout: Duration,
    /// Spans that may wait for export; more are dropped and counted.
    pub queue: usize,
    /// Spans sent in one export.
    pub batch: usize,
    /// The longest a span waits before its batch is sent.
    pub interval: Duration,
}

/// Spans waiting for export by default.
pub const DEFAULT_OTLP_QUEUE: usize = 2048;
/// Spans per export by default.
pub const DEFAULT_OTLP_BATCH: usize = 512;
/// The default share of new traces sampled.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// Whose `traceparent` the gateway continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceparentSource {
    /// Any client's (default): a trace begun by a browser or a service goes on.
    #[default]
    Any,
    /// Only a trusted proxy's (`network.trusted_proxies`); others start anew.
    TrustedProxies,
}

/// The admin listener's access control and its explain ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// The admin bearer token (`admin.token_file`), kept only as its digest;
    /// `None`: no authentication.
    pub token: Option<SecretDigest>,
    /// Whether `/metrics` needs the token too (`admin.protect_metrics`).
    pub protect_metrics: bool,
    /// Refused requests whose decision traces are kept for
    /// `/debug/requests/{id}` (`admin.explain.capacity`); 0 keeps none.
    pub explain_capacity: usize,
}

/// Refused requests kept for explain by default.
pub const DEFAULT_EXPLAIN_CAPACITY: usize = 1024;
/// The largest `admin.explain.capacity` (at most 2 KiB an entry: 200 MiB).
pub const MAX_EXPLAIN_CAPACITY: usize = 100_000;

/// The SHA-256 of a secret: enough to check a presented copy, never printable
/// back into the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest(pub [u8; 32]);

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(redacted)")
    }
}

/// Where the gateway accepts traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Address and port.
    pub address: SocketAddr,
    /// TLS termination, when configured.
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS termination (already read and checked at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain path.
    pub cert_file: PathBuf,
    /// Private key path.
    pub key_file: PathBuf,
    /// Certificate chain PEM.
    pub cert_pem: Vec<u8>,
    /// Private key PEM.
    pub key_pem: Secret<Vec<u8>>,
}

/// Limits and lifecycle settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum total size of the request head.
    pub max_header_bytes: usize,
    /// Default maximum request body (a route may override).
    pub max_body_bytes: u64,
    /// Time allowed to receive the request head (slowloris defence).
    pub header_read_timeout: Duration,
    /// Maximum simultaneous downstream connections.
    pub max_connections: usize,
    /// Maximum requests in flight before shedding with 503.
    pub max_in_flight: usize,
    /// How long in-flight requests may run after the listeners closed.
    pub shutdown_grace: Duration,
    /// How long the listeners keep accepting after SIGTERM, with `/readyz`
    /// already failing, so load balancers take the replica out first.
    pub shutdown_delay: Duration,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// How long a connection with no request in flight may stay open (HTTP/1.1
    /// keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// The longest pause allowed between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// Simultaneous connections from one client address (0: no limit).
    pub max_connections_per_ip: usize,
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// `tracing` filter directive, e.g. `info`.
    pub level: String,
    /// Text or JSON.
    pub format: LogFormat,
    /// Whether to write one access-log line per request.
    pub access_log: bool,
    /// How the token subject appears in the access log.
    pub subject: SubjectLogging,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether and how the `sub` claim is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectLogging {
    /// Not logged.
    Omit,
    /// A SHA-256 prefix of the subject (default).
    Hash,
    /// The subject as is.
    Plain,
}

/// Global client-address handling.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Peers whose forwarding header is believed (all of them, whatever header).
    pub trusted_proxies: CidrSet,
    /// The trusted proxies that set `Forwarded` (RFC 7239) rather than
    /// `X-Forwarded-For`.
    pub forwarded_proxies: CidrSet,
    /// Global allow/deny, checked before a route's own.
    pub rules: IpRules,
    /// Headers removed from requests of untrusted peers (method overrides,
    /// original-URL and client-address headers an upstream might believe).
    pub strip_from_untrusted: Vec<HeaderName>,
    /// Whose `x-request-id` is kept (else one is minted).
    pub request_id: RequestIdSource,
}

/// How much a refusal tells the client (`responses.detail`); the access log
/// always has the full detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefusalDetail {
    /// The precise cause, e.g. which issuer was expected.
    #[default]
    Full,
    /// The reason code and its title only: no internal URLs, accepted issuers or
    /// required claim values.
    Minimal,
}

/// Whose `x-request-id` the gateway keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestIdSource {
    /// Only a trusted proxy's (a client could otherwise pick ids that collide
    /// with, or impersonate, other requests' in logs and traces).
    #[default]
    TrustedProxies,
    /// Any client's.
    Any,
}

/// The headers [`Network::strip_from_untrusted`] holds when not configured.
pub const DEFAULT_STRIP_FROM_UNTRUSTED: [&str; 16] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// The verified-token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// Whether verified tokens are cached.
    pub enabled: bool,
    /// Maximum cached tokens.
    pub max_entries: usize,
    /// Maximum memory the cached tokens may hold, their real sizes counted.
    pub max_bytes: usize,
    /// Upper bound on how long a verified token is reused.
    pub max_ttl: Duration,
}

/// One issuer: how its tokens are checked and where its keys come from.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// The name routes use.
    pub name: String,
    /// Token rules (exact issuer, algorithms, leeway, typ, scope claim).
    pub rules: IssuerRules,
    /// Where keys come from; `None` for an issuer of opaque tokens only.
    pub source: Option<KeySource>,
    /// Which tokens of this issuer are accepted: signed JWTs, opaque tokens
    /// (introspected), or both.
    pub tokens: TokenKind,
    /// The introspection client's settings (`tokens: opaque` or `auto`).
    pub introspection: Option<IntrospectionSettings>,
    /// Cache and fetch settings.
    pub jwks: JwksSettings,
    /// Largest accepted token.
    pub max_token_bytes: usize,
    /// Whether `/readyz` waits for this issuer's keys before the replica first
    /// reports ready (a start-up gate; never withdrawn afterwards).
    pub required_for_readiness: bool,
}

/// The kinds of access token an issuer's routes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Signed JWTs, verified locally with the issuer's keys (the default).
    Jwt,
    /// Opaque tokens, asked about at the introspection endpoint (RFC 7662);
    /// no keys are fetched.
    Opaque,
    /// Both: a compact JWS is verified locally, anything else introspected.
    Auto,
}

impl TokenKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Jwt => "jwt",
            TokenKind::Opaque => "opaque",
            TokenKind::Auto => "auto",
        }
    }

    /// Whether tokens are introspected.
    pub fn introspects(self) -> bool {
        matches!(self, TokenKind::Opaque | TokenKind::Auto)
    }
}

/// One upstream service.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The name routes use.
    pub name: String,
    /// Targets, tried round-robin.
    pub targets: Vec<Target>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time for the upstream to send its response head.
    pub response_header_timeout: Duration,
    /// How long pooled connections stay idle.
    pub idle_timeout: Duration,
    /// Speak HTTP/2 to this upstream.
    pub http2: bool,
    /// Extra CA bundle (PEM) for https targets.
    pub ca_pem: Option<Vec<u8>>,
    /// Passive health: failures in a row before a target is set aside.
    pub max_failures: u32,
    /// Passive health: how long a failing target is set aside.
    pub cooldown: Duration,
    /// Attempts per bodiless request across targets after connect failures (1 = no retry).
    pub attempts: u32,
    /// Whether idempotent bodiless requests may also be retried after a reset.
    pub retry_idempotent: bool,
    /// A credential injected into every forwarded request.
    pub credential: Option<Credential>,
    /// An OAuth client credentials token sent as `Authorization: Bearer`
    /// (`credential.oauth`), got and renewed by the gateway.
    pub oauth: Option<ClientCredentialsSettings>,
    /// The AI/LLM provider whose conventions it follows.
    pub provider: Option<Provider>,
    /// Headers set on each request that lacks them (a provider's, such as
    /// `anthropic-version`).
    pub default_headers: Vec<(HeaderName, HeaderValue)>,
    /// A path `diagnose` probes.
    pub health_path: Option<String>,
    /// The models this upstream serves, as metric labels: a response's model
    /// is counted under the first entry it equals (or, for an entry ending in
    /// `*`, starts with, labelled without the `*`); any other as `other`.
    pub models: Vec<String>,
    /// Model names rewritten in request bodies sent to this upstream
    /// (`model_map`: an alias such as `fast` to the provider's name).
    pub model_map: BTreeMap<String, String>,
    /// Ask an OpenAI-dialect upstream for the usage of streamed answers
    /// (`stream_options.include_usage`) when the client did not.
    pub stream_usage: bool,
}

impl UpstreamConfig {
    /// Whether requests to this upstream have their body rewritten (a model
    /// alias, usage asked for), so must be read whole first.
    pub fn rewrites_body(&self) -> bool {
        !self.model_map.is_empty() || self.stream_usage
    }

    /// The bounded metric label of a response's model.
    pub fn model_label(&self, model: Option<&str>) -> &str {
        let Some(model) = model else { return "unknown" };
        for listed in &self.models {
            match listed.strip_suffix('*') {
                Some(prefix) if model.starts_with(prefix) => return prefix,
                None if listed == model => return listed,
                _ => {}
            }
        }
        "other"
    }
}

/// One upstream target URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub https: bool,
    /// `host:port` authority.
    pub authority: http::uri::Authority,
    /// Path prefix prepended to forwarded paths (without trailing slash), may be empty.
    pub base_path: String,
}

impl Target {
    /// The scheme as a string.
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// A header set on every request to an upstream, e.g. a provider API key.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    /// The header name.
    pub header: HeaderName,
    /// The value, marked sensitive.
    pub value: Secret<HeaderValue>,
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The route's name (a metric label).
    pub name: String,
    /// What it matches.
    pub matcher: RouteMatch,
    /// The upstream it forwards to.
    pub upstream: String,
    /// Path rewrite.
    pub rewrite: Option<Rewrite>,
    /// Keep the client's Host header.
    pub preserve_host: bool,
    /// Maximum request body.
    pub max_body_bytes: u64,
    /// Upstream response-header timeout for this route.
    pub timeout: Option<Duration>,
    /// In a server-sent event stream, a `: keep-alive` comment after this
    /// long without a byte, between events only; `None`: never.
    pub sse_keepalive: Option<Duration>,
    /// The route's own allow/deny lists.
    pub ip_rules: IpRules,
    /// Authentication and authorization.
    pub auth: RouteAuth,
    /// Protocols a client may upgrade to on this route (lower-case `Upgrade`
    /// tokens such as `websocket`); empty: none.
    pub upgrades: Vec<String>,
    /// Cross-origin requests from browsers, when allowed.
    pub cors: Option<Cors>,
    /// The rate-limit policies that apply to the route (its own
    /// `rate_limits`, else `rate_limits.default`), all of which must pass.
    pub rate_limits: Vec<Arc<RateLimitPolicy>>,
    /// Upstreams tried in order after `upstream` when it cannot be connected
    /// or answers 429 or 5xx, before any byte of its answer reaches the client.
    pub fallback: Vec<String>,
}

impl RouteConfig {
    /// Every upstream of the route in the order they are tried.
    pub fn upstream_chain(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.upstream.as_str()).chain(self.fallback.iter().map(String::as_str))
    }
}

/// `rate_limits`: named request-rate policies and how they are kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimits {
    /// Where the counters live (`store`).
    pub store: RateStore,
    /// Keys one policy tracks at most (`max_keys`); past it, after idle keys
    /// are forgotten, a new key is refused (`rate_limited`, fail closed).
    pub max_keys: usize,
    /// Whether allowed responses carry `RateLimit-Policy` / `RateLimit` too
    /// (`response_headers`); refusals always do.
    pub response_headers: bool,
    /// The policies of routes that name none (`default`).
    pub default: Vec<Arc<RateLimitPolicy>>,
    /// Every policy by name.
    pub policies: BTreeMap<String, Arc<RateLimitPolicy>>,
}

/// Where rate-limit counters live.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RateStore {
    /// In each process: every replica enforces each limit alone.
    #[default]
    Local,
    /// In one Redis shared by every replica.
    Redis(RedisStore),
}

/// A shared Redis store for rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisStore {
    /// `redis://` or `rediss://` (TLS) URL, with any password in it.
    pub url: Secret<String>,
    /// The URL without its userinfo, for logs and `/readyz`.
    pub shown: String,
    /// The password (`store_password` / `store_password_file`), if not in the URL.
    pub password: Option<Secret<String>>,
    /// The longest one call may take (`store_timeout`).
    pub timeout: Duration,
    /// CA certificates (PEM) a `rediss://` server must chain to
    /// (`store_ca_file`); without it, the web PKI roots and the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// What a check does when Redis fails or is slow (`on_store_error`).
    pub on_error: OnStoreError,
    /// Prefix of every key the gateway writes (`key_prefix`).
    pub key_prefix: String,
    /// Where each check is decided (`consistency`).
    pub consistency: Consistency,
}

/// How a shared store takes part in each check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Every check is decided in the store: one round trip.
    Exact,
    /// Each replica decides locally and reconciles the keys it saw with the
    /// store every `sync_interval`.
    Approximate {
        /// How often the counts go to the store and its state comes back.
        sync_interval: Duration,
    },
}

/// What a rate-limit check does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Each replica enforces the limit alone, with its local counters.
    #[default]
    Local,
    /// The request passes (counted `store_error`).
    Allow,
    /// The request is refused: 503 `rate_limit_unavailable`.
    Deny,
}

/// One rate-limit policy: `count` requests per `window`, at most `burst` at
/// once, per key (GCRA: one request every `window / count` in the long run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Its name (a metric label, and the `RateLimit-Policy` item).
    pub name: String,
    /// Requests allowed per window.
    pub count: u32,
    /// The window.
    pub window: Duration,
    /// Requests that may come back to back (defaults to `count`).
    pub burst: u32,
    /// What the limit is kept per: the parts of the key, in order.
    pub key: Vec<RateKeyPart>,
    /// Enforce, or only count what would be limited.
    pub mode: LimitMode,
    /// What the policy counts: requests (`rate`), or AI tokens (`tokens`).
    pub unit: LimitUnit,
}

/// What a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitUnit {
    /// Requests (`rate: 600/min`), charged when admitted.
    #[default]
    Requests,
    /// AI tokens (`tokens: 100000/h`): a request is admitted while the key
    /// has budget left, and charged the tokens its answer used when it ends.
    Tokens,
}

impl RateLimitPolicy {
    /// Whether the policy is checked before authentication: its key has the
    /// client address and not the verified client, so a flood of forged
    /// tokens from one address is refused before any of them is verified.
    /// Every other policy is checked after authorization, so requests refused
    /// for their token spend no per-route, per-header or per-client budget.
    pub fn before_authentication(&self) -> bool {
        self.unit == LimitUnit::Requests
            && self.key.contains(&RateKeyPart::ClientIp)
            && !self.needs_client()
            && !self.key.contains(&RateKeyPart::Model)
    }

    /// Whether the policy is a token budget.
    pub fn counts_tokens(&self) -> bool {
        self.unit == LimitUnit::Tokens
    }

    /// Whether the key includes the verified client.
    pub fn needs_client(&self) -> bool {
        self.key
            .iter()
            .any(|p| matches!(p, RateKeyPart::Client { .. }))
    }

    /// The key kinds as the detail and `diagnose` name them (`ip+route`).
    pub fn key_kinds(&self) -> String {
        let kinds: Vec<&str> = self.key.iter().map(RateKeyPart::kind).collect();
        kinds.join("+")
    }
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKeyPart {
    /// The resolved client address (trusted proxies applied), as the IP rules
    /// see it.
    ClientIp,
    /// The route.
    Route,
    /// The token's client: the first of `claims` the token carries, with its
    /// issuer (`client`, or `client:<claim>`).
    Client {
        /// Claims looked at, in order (`client_id`, `azp`, `sub` by default).
        claims: Vec<String>,
    },
    /// A request header's value (`header:<name>`); absent, all such requests
    /// share one key.
    Header(HeaderName),
    /// The model the JSON body asks for (`model`; the route reads it).
    Model,
}

impl RateKeyPart {
    /// `ip`, `route`, `client`, `header` or `model`.
    pub const fn kind(&self) -> &'static str {
        match self {
            RateKeyPart::ClientIp => "ip",
            RateKeyPart::Route => "route",
            RateKeyPart::Client { .. } => "client",
            RateKeyPart::Header(_) => "header",
            RateKeyPart::Model => "model",
        }
    }
}

/// Whether a policy refuses, or only counts what it would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitMode {
    /// Over the limit: 429 `rate_limited`.
    #[default]
    Enforce,
    /// Over the limit: counted (`would_limit`) and forwarded.
    Report,
}

/// A route's CORS policy (the Fetch standard's CORS protocol): preflights are
/// answered by the gateway, responses to allowed origins carry the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins, lower-case `scheme://host[:port]`.
    pub origins: Vec<String>,
    /// `*` was listed: any origin (never with credentials).
    pub any_origin: bool,
    /// Methods a cross-origin request may use.
    pub methods: Vec<Method>,
    /// Request headers a cross-origin request may send (lower-case).
    pub headers: Vec<HeaderName>,
    /// Response headers scripts may read.
    pub expose: Vec<HeaderName>,
    /// Whether credentials (cookies, client certificates) may be sent.
    pub credentials: bool,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Duration,
}

/// What a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Host match, if any.
    pub host: Option<HostMatch>,
    /// Path match.
    pub path: PathMatch,
    /// Allowed methods (`None`: any).
    pub methods: Option<Vec<Method>>,
    /// Match the path without regard to ASCII case (for upstreams that serve
    /// `/ADMIN` as `/admin`).
    pub case_insensitive: bool,
    /// Match only POST requests whose JSON body's `model` matches one of
    /// these (`match.models`); `None`: any request, the body unread.
    pub models: Option<Vec<ModelPattern>>,
}

/// A host match (lower-case, port ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any single-or-multi label subdomain.
    Suffix(String),
}

/// A path match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this, at a segment boundary when it ends without `/`.
    Prefix(String),
}

/// A path rewrite: strip a prefix and put another in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// Removed from the start of the path.
    pub strip_prefix: String,
    /// Put in its place (may be empty).
    pub replace_prefix: String,
}

/// Whether and how a route is protected.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// `public: true`: no token required.
    Public,
    /// Tokens required.
    Protected(Box<ProtectedRoute>),
}

/// Token requirements of a protected route.
#[derive(Debug, Clone)]
pub struct ProtectedRoute {
    /// Accepted issuers by their `iss` value (looked up, not tried in turn).
    pub issuers: BTreeMap<String, Arc<IssuerConfig>>,
    /// Audience, scopes and claim rules.
    pub access: AccessRules,
    /// Enforce, or only report would-deny decisions.
    pub mode: AuthMode,
    /// Forward the client's Authorization header to the upstream.
    pub forward_token: bool,
    /// Accept `?access_token=` (RFC 6750 §2.3) when no Authorization header is sent.
    pub query_token: bool,
    /// Claims copied into request headers (claim name, header).
    pub claim_headers: Vec<(String, HeaderName)>,
    /// The protected resource the route is (`auth.resource`, RFC 9728): its
    /// metadata is served and named in every Bearer challenge.
    pub resource: Option<ProtectedResource>,
    /// The models a token must be granted to ask for (`auth.models`).
    pub models: Option<ModelGrant>,
}

/// A protected resource (RFC 9728) and where its metadata is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    /// The resource identifier: an absolute `http(s)` URL without fragment,
    /// also one of the route's audiences.
    pub resource: String,
    /// The metadata's path on the gateway (RFC 9728 §3.1): the well-known
    /// prefix inserted before the resource's path.
    pub metadata_path: String,
    /// The metadata's absolute URL, for `resource_metadata=` in challenges.
    pub metadata_url: String,
}

/// Enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Reject failing requests.
    Enforce,
    /// Let them through; log and count a would-deny.
    Report,
}
