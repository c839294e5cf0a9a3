//! The metric families Portcullis exports, registered in a registry of its own.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Latency buckets for a proxy, 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Exchange buckets, 1 ms to 30 min: a whole exchange, a long stream included.
pub const EXCHANGE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// Clock-offset buckets (seconds, `now - iat`), negative values included.
pub const CLOCK_OFFSET_BUCKETS: &[f64] = &[
    -300.0, -60.0, -30.0, -10.0, -5.0, -1.0, 0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The outcomes of `portcullis_rate_limit_decisions_total`, in the order of
/// the per-route handles.
pub const RATE_LIMIT_OUTCOMES: [&str; 5] =
    ["allow", "limit", "would_limit", "table_full", "store_error"];

/// Token-count buckets of `gen_ai_client_token_usage`, as the GenAI semantic
/// conventions recommend (powers of 4 from 1 to 4^13).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Seconds-per-output-token buckets, as the GenAI semantic conventions recommend.
pub const PER_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// The results of `portcullis_introspection_cache_total`, in the order of
/// [`crate::IntrospectionCacheResult`].
pub const INTROSPECTION_CACHE_RESULTS: [&str; 5] =
    ["hit", "negative_hit", "miss", "joined", "stale_served"];

/// Every family, by name.
pub struct Families {
    /// The registry (not the global one).
    pub registry: Registry,
    /// `portcullis_requests_total{route,method,status_class}`.
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `portcullis_upstream_response_header_seconds{upstream}`.
    pub upstream_latency: HistogramVec,
    /// `portcullis_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `portcullis_auth_decisions_total{route,outcome,reason}`.
    pub auth_decisions: IntCounterVec,
    /// `portcullis_auth_would_deny_total{route,reason}` (report-only routes).
    pub would_deny: IntCounterVec,
    /// `portcullis_token_clock_offset_seconds{issuer}`.
    pub clock_offset: HistogramVec,
    /// `portcullis_token_cache_total{result}` (hit, miss, eviction).
    pub token_cache: IntCounterVec,
    /// `portcullis_jwks_fetches_total{issuer,outcome}`.
    pub jwks_fetches: IntCounterVec,
    /// `portcullis_jwks_fetch_duration_seconds{issuer}`.
    pub jwks_fetch_duration: HistogramVec,
    /// `portcullis_jwks_keys{issuer}`.
    pub jwks_keys: IntGaugeVec,
    /// `portcullis_jwks_last_success_timestamp_seconds{issuer}`.
    pub jwks_last_success: GaugeVec,
    /// `portcullis_jwks_key_age_seconds{issuer}`.
    pub jwks_key_age: GaugeVec,
    /// `portcullis_jwks_status{issuer,status}`: 1 for the current status.
    pub jwks_status: IntGaugeVec,
    /// `portcullis_jwks_skipped_keys_total{issuer}`.
    pub jwks_skipped: IntCounterVec,
    /// `portcullis_introspection_requests_total{issuer,outcome}`: calls to an
    /// introspection endpoint (active, inactive, or the failure's kind).
    pub introspection_requests: IntCounterVec,
    /// `portcullis_introspection_duration_seconds{issuer}`.
    pub introspection_duration: HistogramVec,
    /// `portcullis_introspection_cache_total{issuer,result}` (see
    /// [`INTROSPECTION_CACHE_RESULTS`]).
    pub introspection_cache: IntCounterVec,
    /// `portcullis_introspection_status{issuer,status}`: 1 for the current
    /// status (unknown, answering, failing), refreshed at scrape time.
    pub introspection_status: IntGaugeVec,
    /// `portcullis_introspection_last_success_timestamp_seconds{issuer}`.
    pub introspection_last_success: GaugeVec,
    /// `portcullis_upstream_token_fetches_total{upstream,outcome}`.
    pub upstream_token_fetches: IntCounterVec,
    /// `portcullis_upstream_token_age_seconds{upstream}`, refreshed at scrape time.
    pub upstream_token_age: GaugeVec,
    /// `portcullis_http2_streams_refused_total`: HTTP/2 streams clients
    /// opened that the HTTP/2 layer ended before the pipeline saw them.
    pub http2_streams_refused: IntCounter,
    /// `portcullis_token_budget_tokens_total{route,policy}`: tokens charged
    /// to token budgets.
    pub token_budget_tokens: IntCounterVec,
    /// `portcullis_token_budget_uncharged_total{route,policy}`: successful
    /// answers whose usage could not be read, so nothing was charged.
    pub token_budget_uncharged: IntCounterVec,
    /// `portcullis_upstream_attempts_total{route,upstream,outcome}`: each
    /// upstream a route with fallback upstreams tried, and what came of it.
    pub upstream_attempts: IntCounterVec,
    /// `gen_ai_client_token_usage{route,provider,gen_ai_token_type,request_model,response_model}`
    /// (OpenTelemetry GenAI semantic conventions, in Prometheus form).
    pub gen_ai_token_usage: HistogramVec,
    /// `gen_ai_server_request_duration_seconds{route,provider,request_model,response_model}`.
    pub gen_ai_request_duration: HistogramVec,
    /// `gen_ai_server_time_to_first_token_seconds{route,provider,request_model,response_model}`.
    pub gen_ai_time_to_first_token: HistogramVec,
    /// `gen_ai_server_time_per_output_token_seconds{route,provider,request_model,response_model}`.
    pub gen_ai_time_per_output_token: HistogramVec,
    /// `portcullis_config_reloads_total{outcome}`.
    pub config_reloads: IntCounterVec,
    /// `portcullis_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: Gauge,
    /// `portcullis_config_last_reload_successful`: 1 when the last load of the
    /// file (start, file change, SIGHUP or `POST /-/reload`) succeeded, else 0.
    pub config_last_reload_ok: IntGauge,
    /// `portcullis_token_cache_entries`, refreshed at scrape time.
    pub token_cache_entries: IntGauge,
    /// `portcullis_token_cache_bytes`, refreshed at scrape time.
    pub token_cache_bytes: IntGauge,
    /// `portcullis_open_connections`.
    pub open_connections: IntGauge,
    /// `portcullis_in_flight_requests`.
    pub in_flight: IntGauge,
    /// `portcullis_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `portcullis_rejected_connections_total` (over max_connections).
    pub rejected_connections: IntCounter,
    /// `portcullis_connections_closed_total{cause}`: connections the gateway
    /// closed for hygiene (see [`CONNECTION_CLOSE_CAUSES`]).
    pub connections_closed: IntCounterVec,
    /// `portcullis_exchanges_total{route,outcome}`.
    pub exchanges: IntCounterVec,
    /// `portcullis_exchange_duration_seconds{route}`.
    pub exchange_duration: HistogramVec,
    /// `portcullis_request_body_bytes_total{route}`.
    pub request_body_bytes: IntCounterVec,
    /// `portcullis_response_body_bytes_total{route}`.
    pub response_body_bytes: IntCounterVec,
    /// `portcullis_upstream_refusals_total{route,status}`.
    pub upstream_refusals: IntCounterVec,
    /// `portcullis_trace_spans_total{outcome}`.
    pub trace_spans: IntCounterVec,
    /// `portcullis_rate_limit_decisions_total{route,policy,outcome}` (see
    /// [`RATE_LIMIT_OUTCOMES`]).
    pub rate_limit_decisions: IntCounterVec,
    /// `portcullis_rate_limit_keys{policy}`: keys tracked, refreshed at scrape time.
    pub rate_limit_keys: IntGaugeVec,
    /// `portcullis_rate_limit_store_duration_seconds`: one call to the shared store.
    pub rate_limit_store_duration: Histogram,
    /// `portcullis_rate_limit_store_up`: 1 while the shared store answers.
    pub rate_limit_store_up: IntGauge,
    /// `portcullis_rate_limit_syncs_total{outcome}` (approximate consistency).
    pub rate_limit_syncs: IntCounterVec,
    /// The name of every registered family.
    pub names: Vec<String>,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn int_gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The causes of `portcullis_connections_closed_total`, each exported from the
/// start at 0: `first_byte_timeout` (a new connection sent nothing), `idle_timeout`
/// (no request in flight for `limits.idle_timeout`), `per_ip_limit` (the client
/// address had `limits.max_connections_per_ip` open), `malformed` (hyper refused
/// the request head or framing before the pipeline saw it), `admin_limit` (the
/// admin listener's own connection cap).
pub const CONNECTION_CLOSE_CAUSES: [&str; 5] = [
    "first_byte_timeout",
    "idle_timeout",
    "per_ip_limit",
    "malformed",
    "admin_limit",
];

impl Families {
    /// Creates and registers every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let open_connections = IntGauge::new(
            "portcullis_open_connections",
            "Open downstream connections.",
        )?;
        r.register(Box::new(open_connections.clone()))?;
        let in_flight =
            IntGauge::new("portcullis_in_flight_requests", "Requests being processed.")?;
        r.register(Box::new(in_flight.clone()))?;
        let rate_limit_store_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_rate_limit_store_duration_seconds",
                "One rate-limit check in the shared store (Redis), timeouts and errors included.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(rate_limit_store_duration.clone()))?;
        let rate_limit_store_up = IntGauge::new(
            "portcullis_rate_limit_store_up",
            "1 while the shared rate-limit store answers (or has not failed yet), 0 while its calls fail.",
        )?;
        rate_limit_store_up.set(1);
        r.register(Box::new(rate_limit_store_up.clone()))?;
        let token_cache_entries = IntGauge::new(
            "portcullis_token_cache_entries",
            "Verified tokens held by the token cache (read at scrape time).",
        )?;
        r.register(Box::new(token_cache_entries.clone()))?;
        let token_cache_bytes = IntGauge::new(
            "portcullis_token_cache_bytes",
            "Memory held by the token cache's entries, their real sizes counted (read at scrape time).",
        )?;
        r.register(Box::new(token_cache_bytes.clone()))?;
        let config_last_success = Gauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "Unix time of the last configuration load that succeeded.",
        )?;
        r.register(Box::new(config_last_success.clone()))?;
        let config_last_reload_ok = IntGauge::new(
            "portcullis_config_last_reload_successful",
            "1 when the last configuration load succeeded, 0 when the file on disk was refused.",
        )?;
        r.register(Box::new(config_last_reload_ok.clone()))?;
        let rejected_connections = IntCounter::new(
            "portcullis_rejected_connections_total",
            "Connections closed at accept because max_connections was reached.",
        )?;
        r.register(Box::new(rejected_connections.clone()))?;
        let mut names: Vec<String> = Vec::new();
        let fams = Families {
            names: Vec::new(),
            requests: counter(
                &r,
                "portcullis_requests_total",
                "Requests by route, method and status class.",
                &["route", "method", "status_class"],
            )?,
            request_duration: histogram(
                &r,
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by route.",
                &["route"],
                LATENCY_BUCKETS,
            )?,
            upstream_latency: histogram(
                &r,
                "portcullis_upstream_response_header_seconds",
                "Time for the upstream to send response headers.",
                &["upstream"],
                LATENCY_BUCKETS,
            )?,
            upstream_errors: counter(
                &r,
                "portcullis_upstream_errors_total",
                "Upstream failures by kind (connect, timeout, reset, protocol).",
                &["upstream", "kind"],
            )?,
            auth_decisions: counter(
                &r,
                "portcullis_auth_decisions_total",
                "Authorization decisions by route, outcome (allow, deny) and reason.",
                &["route", "outcome", "reason"],
            )?,
            would_deny: counter(
                &r,
                "portcullis_auth_would_deny_total",
                "Requests a report-only route let through that enforcement would deny.",
                &["route", "reason"],
            )?,
            clock_offset: histogram(
                &r,
                "portcullis_token_clock_offset_seconds",
                "now - iat of accepted tokens; negative means the issuer's clock is ahead.",
                &["issuer"],
                CLOCK_OFFSET_BUCKETS,
            )?,
            token_cache: counter(
                &r,
                "portcullis_token_cache_total",
                "Verified-token cache lookups and evictions.",
                &["result"],
            )?,
            jwks_fetches: counter(
                &r,
                "portcullis_jwks_fetches_total",
                "Key set fetches by issuer and outcome.",
                &["issuer", "outcome"],
            )?,
            jwks_fetch_duration: histogram(
                &r,
                "portcullis_jwks_fetch_duration_seconds",
                "Key set fetch duration.",
                &["issuer"],
                LATENCY_BUCKETS,
            )?,
            jwks_keys: int_gauge_vec(
                &r,
                "portcullis_jwks_keys",
                "Usable keys per issuer.",
                &["issuer"],
            )?,
            jwks_last_success: gauge_vec(
                &r,
                "portcullis_jwks_last_success_timestamp_seconds",
                "Unix time of the last successful key fetch.",
                &["issuer"],
            )?,
            jwks_key_age: gauge_vec(
                &r,
                "portcullis_jwks_key_age_seconds",
                "Age of the keys in use.",
                &["issuer"],
            )?,
            jwks_status: int_gauge_vec(
                &r,
                "portcullis_jwks_status",
                "1 for the issuer's current key status (fresh, stale, failed, pending).",
                &["issuer", "status"],
            )?,
            jwks_skipped: counter(
                &r,
                "portcullis_jwks_skipped_keys_total",
                "Keys skipped from a key set because they could not be used.",
                &["issuer"],
            )?,
            introspection_requests: counter(
                &r,
                "portcullis_introspection_requests_total",
                "Calls to an issuer's introspection endpoint (RFC 7662) by outcome: active, inactive, or why it gave no answer (connect_error, timeout, http_error, too_large, as_error, invalid_answer, busy, ...).",
                &["issuer", "outcome"],
            )?,
            introspection_duration: histogram(
                &r,
                "portcullis_introspection_duration_seconds",
                "Duration of introspection calls, retries included.",
                &["issuer"],
                LATENCY_BUCKETS,
            )?,
            introspection_cache: counter(
                &r,
                "portcullis_introspection_cache_total",
                "Opaque-token lookups by result: hit (a cached active answer), negative_hit (a cached inactive answer), miss (the endpoint was called), joined (waited for a call another request made for the same token), stale_served (a cached answer past cache_ttl served within max_stale because the endpoint failed).",
                &["issuer", "result"],
            )?,
            introspection_status: int_gauge_vec(
                &r,
                "portcullis_introspection_status",
                "1 for the issuer's introspection status: unknown (no call yet), answering, failing.",
                &["issuer", "status"],
            )?,
            introspection_last_success: gauge_vec(
                &r,
                "portcullis_introspection_last_success_timestamp_seconds",
                "Unix time of the last introspection call that got an answer.",
                &["issuer"],
            )?,
            upstream_token_fetches: counter(
                &r,
                "portcullis_upstream_token_fetches_total",
                "Fetches of upstreams' OAuth client credentials tokens by outcome: ok, or why none came (connect_error, timeout, http_error, too_large, as_error, invalid_answer, ...).",
                &["upstream", "outcome"],
            )?,
            upstream_token_age: gauge_vec(
                &r,
                "portcullis_upstream_token_age_seconds",
                "Age of the OAuth token the gateway sends to each upstream that takes one.",
                &["upstream"],
            )?,
            http2_streams_refused: {
                let c = IntCounter::new(
                    "portcullis_http2_streams_refused_total",
                    "HTTP/2 streams clients opened that the HTTP/2 layer ended before the pipeline saw them: a header list over twice limits.max_header_bytes (answered 431 by it), streams over the concurrency limit, or streams the client reset first. Counted when the connection ends.",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            token_budget_tokens: counter(
                &r,
                "portcullis_token_budget_tokens_total",
                "AI tokens (input and output) charged to token budgets (rate_limits policies with tokens:), as the upstream reported them.",
                &["route", "policy"],
            )?,
            token_budget_uncharged: counter(
                &r,
                "portcullis_token_budget_uncharged_total",
                "Successful answers on routes with a token budget whose usage could not be read (no usage reported, or the client left first): nothing was charged for them.",
                &["route", "policy"],
            )?,
            upstream_attempts: counter(
                &r,
                "portcullis_upstream_attempts_total",
                "Upstreams tried by routes with fallback upstreams, by outcome: the status it answered (200, 429, 503, ...) or why it could not (unreachable, credential, timeout, ...). A 429 or 5xx, unreachable or credential before the chain's last upstream means the next one was tried.",
                &["route", "upstream", "outcome"],
            )?,
            gen_ai_token_usage: histogram(
                &r,
                "gen_ai_client_token_usage",
                "Tokens per AI request by type (input, output), as the upstream counted them (OpenTelemetry GenAI semantic conventions).",
                &[
                    "route",
                    "provider",
                    "gen_ai_token_type",
                    "request_model",
                    "response_model",
                ],
                TOKEN_BUCKETS,
            )?,
            gen_ai_request_duration: histogram(
                &r,
                "gen_ai_server_request_duration_seconds",
                "Time from the request to the last byte of an AI upstream's answer.",
                &["route", "provider", "request_model", "response_model"],
                EXCHANGE_BUCKETS,
            )?,
            gen_ai_time_to_first_token: histogram(
                &r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from the request to the first byte of a streamed AI answer.",
                &["route", "provider", "request_model", "response_model"],
                LATENCY_BUCKETS,
            )?,
            gen_ai_time_per_output_token: histogram(
                &r,
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token after the first, of streamed AI answers.",
                &["route", "provider", "request_model", "response_model"],
                PER_TOKEN_BUCKETS,
            )?,
            config_reloads: counter(
                &r,
                "portcullis_config_reloads_total",
                "Configuration loads by outcome (success, failure).",
                &["outcome"],
            )?,
            connections_closed: counter(
                &r,
                "portcullis_connections_closed_total",
                "Connections the gateway closed for hygiene, by cause.",
                &["cause"],
            )?,
            exchanges: counter(
                &r,
                "portcullis_exchanges_total",
                "Exchanges by route and how they ended (complete, client_aborted, upstream_aborted, shutdown_cut, timeout), counted at their last byte.",
                &["route", "outcome"],
            )?,
            exchange_duration: histogram(
                &r,
                "portcullis_exchange_duration_seconds",
                "Time from request head to the response's last byte (a stream included), by route.",
                &["route"],
                EXCHANGE_BUCKETS,
            )?,
            request_body_bytes: counter(
                &r,
                "portcullis_request_body_bytes_total",
                "Request body bytes forwarded to upstreams, by route.",
                &["route"],
            )?,
            response_body_bytes: counter(
                &r,
                "portcullis_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                &["route"],
            )?,
            upstream_refusals: counter(
                &r,
                "portcullis_upstream_refusals_total",
                "Responses in which the upstream itself refused the request (401, 403): its decision, not the gateway's.",
                &["route", "status"],
            )?,
            trace_spans: counter(
                &r,
                "portcullis_trace_spans_total",
                "Spans of sampled requests by outcome: exported to the collector, dropped (the export queue was full), failed (the collector was down, slow or refused them).",
                &["outcome"],
            )?,
            rate_limit_decisions: counter(
                &r,
                "portcullis_rate_limit_decisions_total",
                "Rate-limit decisions by route, policy and outcome: allow, limit (refused, 429), would_limit (a report-only policy let it through), table_full (a new key refused because the policy tracks rate_limits.max_keys keys); store_error counts checks the shared store could not answer (also counted by the outcome on_store_error gave them).",
                &["route", "policy", "outcome"],
            )?,
            rate_limit_syncs: counter(
                &r,
                "portcullis_rate_limit_syncs_total",
                "Reconciliations of local rate-limit counts with the shared store (consistency: approximate), by outcome: ok, error.",
                &["outcome"],
            )?,
            rate_limit_keys: int_gauge_vec(
                &r,
                "portcullis_rate_limit_keys",
                "Keys a rate-limit policy tracks in this process.",
                &["policy"],
            )?,
            build_info: int_gauge_vec(
                &r,
                "portcullis_build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            )?,
            rate_limit_store_duration,
            rate_limit_store_up,
            config_last_success,
            config_last_reload_ok,
            token_cache_entries,
            token_cache_bytes,
            open_connections,
            in_flight,
            rejected_connections,
            registry: r,
        };
        for c in [
            &fams.requests as &dyn prometheus::core::Collector,
            &fams.request_duration,
            &fams.upstream_latency,
            &fams.upstream_errors,
            &fams.auth_decisions,
            &fams.would_deny,
            &fams.clock_offset,
            &fams.token_cache,
            &fams.jwks_fetches,
            &fams.jwks_fetch_duration,
            &fams.jwks_keys,
            &fams.jwks_last_success,
            &fams.jwks_key_age,
            &fams.jwks_status,
            &fams.jwks_skipped,
            &fams.introspection_requests,
            &fams.introspection_duration,
            &fams.introspection_cache,
            &fams.introspection_status,
            &fams.introspection_last_success,
            &fams.upstream_token_fetches,
            &fams.upstream_token_age,
            &fams.upstream_attempts,
            &fams.token_budget_tokens,
            &fams.token_budget_uncharged,
            &fams.http2_streams_refused,
            &fams.gen_ai_token_usage,
            &fams.gen_ai_request_duration,
            &fams.gen_ai_time_to_first_token,
            &fams.gen_ai_time_per_output_token,
            &fams.config_reloads,
            &fams.config_last_success,
            &fams.config_last_reload_ok,
            &fams.token_cache_entries,
            &fams.token_cache_bytes,
            &fams.open_connections,
            &fams.in_flight,
            &fams.build_info,
            &fams.rejected_connections,
            &fams.connections_closed,
            &fams.rate_limit_decisions,
            &fams.rate_limit_keys,
        ] {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
        }
        // Exported at 0 from the start, so `increase(...) > 0` sees the first one.
        for outcome in ["success", "failure"] {
            fams.config_reloads.with_label_values(&[outcome]);
        }
        for cause in CONNECTION_CLOSE_CAUSES {
            fams.connections_closed.with_label_values(&[cause]);
        }
        Ok(Families { names, ..fams })
    }
}
