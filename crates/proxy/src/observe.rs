//! The observe step: one access-log line and the metrics of each request, from
//! what the other steps recorded in a [`Trace`]. Never the token; the subject only
//! as configured (hashed by default); the path without its query string.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request};
use portcullis_config::{GatewayConfig, LogFormat, SubjectLogging};
use portcullis_policy::verify::printable;
use portcullis_policy::{Reason, Rejection, VerifiedClaims};
use sha2::{Digest, Sha256};

use crate::body::BodyFault;
use crate::decision::{DecisionTrace, Outcome, Step};
use crate::exchange::{Account, Ending};
use crate::pipeline::describe_client;
use crate::runtime::CompiledRoute;
use portcullis_metrics::StreamOutcome;

/// The authorization outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Not reached (no route, network rule, or earlier failure).
    #[default]
    NotEvaluated,
    /// A public route.
    Public,
    /// Token valid and rules satisfied.
    Allowed,
    /// A report-only route let through a request enforcement would deny.
    WouldDeny(Reason),
}

/// What the steps learned about a request.
pub struct Trace {
    /// The method.
    pub method: Method,
    /// The path as the client sent it (a shared handle on the request's own
    /// bytes, not a copy); the log and the explain ring show it without the query.
    pub path: Option<http::uri::PathAndQuery>,
    /// The matched route.
    pub route: Option<Arc<CompiledRoute>>,
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// The authorization outcome.
    pub decision: Decision,
    /// The rejection, if the request was refused.
    pub rejection: Option<Rejection>,
    /// Time to upstream response headers.
    pub upstream_latency: Option<Duration>,
    /// The verified claims (shared, not copied), for the access log's subject.
    pub claims: Option<Arc<VerifiedClaims>>,
    /// For 405: the methods allowed.
    pub allow: Option<String>,
    /// What each step decided.
    pub steps: DecisionTrace,
    /// The upstream's response status, when it answered.
    pub upstream_status: Option<u16>,
    /// The request body's record (bytes forwarded, a fault), when forwarded.
    pub request_body: Option<Arc<BodyFault>>,
    /// The W3C trace the request belongs to (`tracing.enabled`).
    pub trace_context: Option<crate::tracecontext::TraceContext>,
    /// When its parts ran, for the spans of a sampled request.
    pub timings: Option<Box<crate::otel::Timings>>,
    /// What the rate-limit steps leave for the response and the log.
    pub rate_limit: Option<Box<crate::rate_limit::LimitNote>>,
    /// A model-aware route's model and the upstreams it tried.
    pub routing: Option<Box<crate::ai_request::RoutingNote>>,
}

impl Trace {
    /// Starts a trace for `req`; a `verbose` one keeps each step's evidence.
    pub fn new<B>(req: &Request<B>, verbose: bool) -> Self {
        Trace {
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            route: None,
            client_ip: None,
            decision: Decision::NotEvaluated,
            rejection: None,
            upstream_latency: None,
            claims: None,
            allow: None,
            steps: DecisionTrace::new(verbose),
            upstream_status: None,
            request_body: None,
            trace_context: None,
            timings: None,
            rate_limit: None,
            routing: None,
        }
    }

    /// Whether a step after authorization (a rate limit) refused a request
    /// whose token passed: the gateway refused it all the same.
    pub fn refused_after_authorization(&self) -> bool {
        matches!(self.decision, Decision::Allowed | Decision::Public)
            && self
                .rejection
                .as_ref()
                .is_some_and(|r| r.reason == Reason::RateLimited)
    }

    /// The upstream whose answer the client gets: a fallback upstream that
    /// answered, else the route's own.
    pub fn answering_upstream(&self) -> Option<&Arc<crate::upstream::UpstreamPool>> {
        self.routing
            .as_ref()
            .and_then(|n| n.answered_by.as_ref())
            .or_else(|| self.route.as_ref().map(|r| &r.upstream))
    }

    /// The upstream's own refusal (401 or 403) of a request the gateway let
    /// through, if that is how it answered.
    pub fn upstream_refused(&self) -> Option<u16> {
        self.upstream_status
            .filter(|s| matches!(s, 401 | 403) && self.rejection.is_none())
    }
}

/// Index of a reason for per-route metric slots (0 `none`, 1 `public`).
fn reason_slot(r: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|x| *x == r)
        .map_or(0, |i| i + 2)
}

/// Closes an exchange's account: the request and exchange metrics, the
/// access-log line and, for a refusal (the gateway's, a report-only route's
/// would-be one, or the upstream's own 401/403), the explain ring.
pub fn record(mut account: Box<Account>, ending: &Ending) {
    let (trace, runtime, status) = (&account.trace, &account.runtime, account.status);
    let route_metrics = trace
        .route
        .as_ref()
        .map_or(&runtime.unmatched, |r| &r.metrics);
    route_metrics.request(&trace.method, status, account.head.as_secs_f64());
    route_metrics.exchange(
        ending.outcome,
        ending.total.as_secs_f64(),
        ending.bytes_in,
        ending.bytes_out,
    );
    let rejected = trace.rejection.as_ref().map(|r| r.reason);
    match (trace.decision, rejected) {
        (Decision::Allowed, _) => route_metrics.decision(true, 0, "none"),
        (Decision::Public, _) => route_metrics.decision(true, 1, "public"),
        (Decision::WouldDeny(r), _) => route_metrics.would_deny(reason_slot(r), r.as_str()),
        (Decision::NotEvaluated, Some(r)) if r.is_auth_decision() => {
            route_metrics.decision(false, reason_slot(r), r.as_str())
        }
        (Decision::NotEvaluated, _) => {}
    }
    if let Some(s) = trace.upstream_refused() {
        route_metrics.upstream_refused(s);
    }
    if let (Some((streamed, usage)), Some(route)) = (&account.usage, &trace.route) {
        record_usage(account.gw.metrics(), route, trace, *streamed, usage, ending);
    }
    let config = &runtime.config;
    if config.logging.access_log {
        access_log(config, &account, ending);
    }
    if let (Decision::NotEvaluated, Some(r)) = (trace.decision, &trace.rejection) {
        account.gw.record_refusal(r.reason);
    } else if trace.refused_after_authorization() {
        account.gw.record_refusal(Reason::RateLimited);
    }
    let sampled = trace.trace_context.as_ref().is_some_and(|t| t.sampled());
    if sampled && let Some(spans) = account.gw.spans() {
        spans.record(&account, ending);
    }
    if trace.rejection.is_some() || trace.upstream_refused().is_some() || sampled {
        // The trace is done with: its records and notes move into the entry.
        let steps = std::mem::take(&mut account.trace.steps);
        let trace = &account.trace;
        account.gw.keep_explained(explained_entry(
            &runtime.config,
            trace,
            steps,
            trace.rejection.as_ref(),
            &account.request_id,
            status,
        ));
    }
}

/// An AI answer's token usage and timings, under the OpenTelemetry GenAI
/// metric names; the model labels bounded by the configuration (the
/// upstream's `models` list, the route's `match.models`, `model_map` names).
fn record_usage(
    metrics: &portcullis_metrics::Metrics,
    route: &CompiledRoute,
    trace: &Trace,
    streamed: bool,
    usage: &crate::usage::Usage,
    ending: &Ending,
) {
    let Some(answering) = trace.answering_upstream() else {
        return;
    };
    let upstream = answering.config();
    let Some(provider) = upstream.provider else {
        return;
    };
    let f = metrics.families();
    let model = upstream.model_label(usage.model.as_deref());
    let requested = request_model_label(route, upstream, trace);
    let labels = [
        route.config.name.as_str(),
        provider.as_str(),
        requested,
        model,
    ];
    for (kind, count) in [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
    ] {
        if let Some(n) = count {
            f.gen_ai_token_usage
                .with_label_values(&[labels[0], labels[1], kind, labels[2], labels[3]])
                .observe(n as f64);
        }
    }
    f.gen_ai_request_duration
        .with_label_values(&labels)
        .observe(ending.total.as_secs_f64());
    if streamed && ending.outcome == StreamOutcome::Complete {
        f.gen_ai_time_to_first_token
            .with_label_values(&labels)
            .observe(ending.first_byte.as_secs_f64());
        if let Some(out) = usage.output_tokens.filter(|n| *n > 1) {
            let generating = ending.total.saturating_sub(ending.first_byte);
            f.gen_ai_time_per_output_token
                .with_label_values(&labels)
                .observe(generating.as_secs_f64() / (out - 1) as f64);
        }
    }
}

/// The `request_model` label: the route's `match.models` pattern the model
/// matched, a `model_map` alias of the upstream, or the upstream's `models`
/// label; `unknown` when the body was not read.
fn request_model_label<'a>(
    route: &'a CompiledRoute,
    upstream: &'a portcullis_config::UpstreamConfig,
    trace: &Trace,
) -> &'a str {
    let Some(model) = trace
        .routing
        .as_ref()
        .and_then(|n| n.requested.as_ref())
        .map(|r| r.model.as_str())
    else {
        return "unknown";
    };
    if let Some(pattern) = route
        .config
        .matcher
        .models
        .iter()
        .flatten()
        .find(|p| p.matches(model))
    {
        return pattern.as_str();
    }
    if let Some((alias, _)) = upstream.model_map.get_key_value(model) {
        return alias.as_str();
    }
    upstream.model_label(Some(model))
}

/// What the explain ring keeps of a refused (or report-only would-be refused)
/// request.
pub fn explained_entry(
    config: &GatewayConfig,
    trace: &Trace,
    steps: DecisionTrace,
    rejection: Option<&Rejection>,
    request_id: &HeaderValue,
    status: u16,
) -> crate::explain::Entry {
    let path = trace.path.as_ref().map_or("-", |p| p.path());
    crate::explain::Entry {
        request_id: request_id.to_str().unwrap_or("-").into(),
        at: std::time::SystemTime::now(),
        method: trace.method.clone(),
        path: crate::explain::cut(path, crate::explain::MAX_PATH_BYTES).into(),
        status,
        route: trace.route.as_ref().map(|r| r.config.name.as_str().into()),
        client_ip: trace.client_ip,
        subject: logged_subject(config, trace).map(Into::into),
        outcome: match (trace.decision, rejection) {
            (Decision::WouldDeny(_), _) => "would_deny",
            (_, Some(r)) if r.reason == Reason::UpstreamStreamAborted => "upstream_aborted",
            (_, Some(_)) => "deny",
            (_, None) if trace.upstream_refused().is_some() => "upstream_refused",
            (_, None) => "allow",
        },
        trace_id: trace
            .trace_context
            .as_ref()
            .map(|t| t.trace_id_hex().into()),
        steps: with_context_notes(trace, steps, config),
        rejection: rejection.map(|r| Rejection {
            reason: r.reason,
            detail: crate::explain::cut(&r.detail, crate::explain::MAX_DETAIL_BYTES),
            required_scope: None,
        }),
    }
}

/// The trace with evidence for its passed steps, made now from what the trace
/// holds (route, client, verified claims), for traces that were not verbose:
/// a refusal is explained beyond its failing step at no cost to allowed requests.
fn with_context_notes(
    trace: &Trace,
    mut steps: DecisionTrace,
    config: &GatewayConfig,
) -> DecisionTrace {
    if steps.is_verbose() {
        return steps;
    }
    let passed = |steps: &DecisionTrace, step: Step| {
        steps
            .records()
            .iter()
            .any(|r| r.step == step && r.outcome == Outcome::Pass)
    };
    if let Some(route) = &trace.route {
        let c = &route.config;
        steps.add_note(
            Step::Route,
            format!(
                "route {} ({}) -> upstream {}",
                c.name,
                crate::evidence::describe_match(c),
                c.upstream
            ),
        );
    }
    if let (Some(ip), Some(route)) = (trace.client_ip, &trace.route)
        && passed(&steps, Step::ClientIp)
    {
        let verdicts = crate::evidence::ip_verdicts(
            ip,
            [
                ("global", &config.network.rules),
                ("route", &route.config.ip_rules),
            ],
        );
        steps.add_note(Step::ClientIp, format!("client {ip}{verdicts}"));
    }
    if let Some(status) = trace.upstream_refused() {
        steps.add_note(
            Step::Upstream,
            format!(
                "the upstream itself answered {status}: its decision, not the gateway's (a revoked or wrong upstream credential, or the upstream's own rules)"
            ),
        );
    }
    if let (Some(claims), Some(route)) = (&trace.claims, &trace.route) {
        steps.add_note(Step::Issuer, format!("iss {}", printable(&claims.issuer)));
        let leeway = route
            .issuers
            .get(&*claims.issuer)
            .map_or(0, |i| i.config.rules.leeway_secs);
        if passed(&steps, Step::Time) {
            steps.add_note(
                Step::Time,
                crate::evidence::time(claims, crate::pipeline::unix_now(), leeway),
            );
        }
        if let Some(protected) = route.protected() {
            let access = &protected.access;
            steps.add_note(
                Step::Audience,
                format!(
                    "aud {:?}; the route accepts {:?}",
                    claims.audiences, access.audiences
                ),
            );
            steps.add_note(
                Step::Scopes,
                format!(
                    "token has [{}]; route needs all of [{}] and one of [{}]",
                    claims.scopes.join(" "),
                    access.scopes_all_of.join(" "),
                    access.scopes_any_of.join(" ")
                ),
            );
        }
    }
    steps
}

/// The subject as configured for logs: hashed (default), plain, or not at all.
fn logged_subject(config: &GatewayConfig, trace: &Trace) -> Option<String> {
    let sub = trace.claims.as_ref().and_then(|c| c.subject.as_ref())?;
    match config.logging.subject {
        SubjectLogging::Plain => Some(sub.clone()),
        SubjectLogging::Hash => Some(hash_subject(sub)),
        SubjectLogging::Omit => None,
    }
}

/// The OAuth client the token was issued to (`client_id`, else `azp`), for
/// the access log: a client's name is not a secret, and an operator needs it
/// to say who spent what.
fn logged_client(trace: &Trace) -> Option<String> {
    let claims = &trace.claims.as_ref()?.claims;
    claims
        .get("client_id")
        .or_else(|| claims.get("azp"))
        .and_then(serde_json::Value::as_str)
        .map(|c| bounded(c).to_owned())
}

/// At most 128 bytes of an upstream's or a token's text, cut at a character
/// boundary (the log formatter quotes and escapes it).
fn bounded(s: &str) -> &str {
    if s.len() <= 128 {
        return s;
    }
    let mut end = 128;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn access_log(config: &GatewayConfig, account: &Account, ending: &Ending) {
    let trace = &account.trace;
    let route = trace
        .route
        .as_ref()
        .map_or("unmatched", |r| r.config.name.as_str());
    let upstream = trace
        .answering_upstream()
        .filter(|_| trace.upstream_latency.is_some())
        .map_or("-", |u| u.config().name.as_str());
    let routing = trace.routing.as_deref();
    let attempts = routing.and_then(crate::ai_request::RoutingNote::attempts_text);
    let request_model = routing
        .and_then(|n| n.requested.as_ref())
        .map(|r| r.model.as_str());
    let outcome = match (trace.decision, &trace.rejection) {
        _ if trace.refused_after_authorization() => "deny",
        (Decision::Allowed, _) => "allow",
        (Decision::Public, _) => "public",
        (Decision::WouldDeny(_), _) => "would_deny",
        (Decision::NotEvaluated, Some(_)) => "deny",
        (Decision::NotEvaluated, None) => "-",
    };
    let reason = match (trace.decision, &trace.rejection) {
        (Decision::WouldDeny(r), _) => r.as_str(),
        (_, Some(r)) => r.reason.as_str(),
        _ => "-",
    };
    // Who refused: the gateway (a reason above), the upstream itself (its own
    // 401/403, e.g. a revoked provider key), or nobody.
    let refused_by = match (&trace.rejection, trace.upstream_refused()) {
        (Some(_), _) if outcome == "deny" => "gateway",
        (_, Some(_)) => "upstream",
        _ => "-",
    };
    let detail = trace.rejection.as_ref().map_or("-", |r| r.detail.as_str());
    let subject = logged_subject(config, trace).unwrap_or_else(|| "-".to_owned());
    let request_id = account.request_id.to_str().unwrap_or("-");
    let path = trace.path.as_ref().map_or("-", |p| p.path());
    let client_ip = describe_client(trace.client_ip);
    let upstream_status = trace.upstream_status.map_or(0, u16::from);
    let trace_id = trace.trace_context.as_ref().map(|t| t.trace_id_hex());
    let rate_limit = trace
        .rate_limit
        .as_ref()
        .and_then(|n| n.policy.as_ref())
        .map_or("-", |p| p.name.as_str());
    let usage = account.usage.as_ref();
    let model = usage.and_then(|(_, u)| u.model.as_deref());
    let input_tokens = usage.and_then(|(_, u)| u.input_tokens);
    let output_tokens = usage.and_then(|(_, u)| u.output_tokens);
    let ttft = usage
        .filter(|(streamed, _)| *streamed)
        .map(|_| ending.first_byte);
    let client = logged_client(trace);
    // Strings are written as string fields (quoted and escaped by the text
    // formatter, so a crafted path or `sub` cannot forge a field or a line);
    // numbers are rounded to the microsecond; an absent value is `-`.
    match config.logging.format {
        LogFormat::Text => tracing::info!(
            target: "portcullis::access",
            request_id,
            route,
            method = trace.method.as_str(),
            path,
            status = account.status,
            outcome,
            reason,
            refused_by,
            detail,
            rate_limit,
            client_ip = client_ip.as_str(),
            subject = subject.as_str(),
            upstream,
            upstream_status = %Absent(trace.upstream_status),
            duration_ms = %Ms(Some(ending.total)),
            ttfb_ms = %Ms(Some(ending.first_byte)),
            upstream_ms = %Ms(trace.upstream_latency),
            bytes_in = ending.bytes_in,
            bytes_out = ending.bytes_out,
            stream = ending.outcome.as_str(),
            trace_id = trace_id.as_deref().unwrap_or("-"),
            client = client.as_deref().unwrap_or("-"),
            model = model.map_or("-", bounded),
            request_model = request_model.map_or("-", bounded),
            attempts = attempts.as_deref().unwrap_or("-"),
            input_tokens = %Absent(input_tokens),
            output_tokens = %Absent(output_tokens),
            ttft_ms = %Ms(ttft),
        ),
        LogFormat::Json => tracing::info!(
            target: "portcullis::access",
            request_id,
            route,
            method = trace.method.as_str(),
            path,
            status = account.status,
            outcome,
            reason,
            refused_by,
            detail,
            rate_limit = (rate_limit != "-").then_some(rate_limit),
            client_ip = client_ip.as_str(),
            subject = subject.as_str(),
            upstream,
            upstream_status = (upstream_status > 0).then_some(upstream_status),
            duration_ms = rounded_ms(ending.total),
            ttfb_ms = rounded_ms(ending.first_byte),
            upstream_ms = trace.upstream_latency.map(rounded_ms),
            bytes_in = ending.bytes_in,
            bytes_out = ending.bytes_out,
            stream = ending.outcome.as_str(),
            trace_id = trace_id.as_deref(),
            client = client.as_deref(),
            model = model.map(bounded),
            request_model = request_model.map(bounded),
            attempts = attempts.as_deref(),
            input_tokens,
            output_tokens,
            ttft_ms = ttft.map(rounded_ms),
        ),
    }
}

/// Milliseconds rounded to the microsecond (`12.345`, never `12.345000000000001`).
fn rounded_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A duration in milliseconds for the text log, `-` when absent.
struct Ms(Option<Duration>);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", rounded_ms(d)),
            None => f.write_str("-"),
        }
    }
}

/// A value for the text log, `-` when absent.
struct Absent<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Absent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `sha256:` and the first 16 hex digits of the subject's SHA-256.
pub fn hash_subject(subject: &str) -> String {
    let digest = Sha256::digest(subject.as_bytes());
    let mut hex = [0u8; 16];
    crate::headers::hex_into(&digest[..8], &mut hex);
    let mut out = String::with_capacity(7 + hex.len());
    out.push_str("sha256:");
    out.extend(hex.iter().map(|&b| char::from(b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_subject_is_the_first_16_hex_digits_of_its_sha256() {
        // `printf client-0 | sha256sum` starts with 16c2885525297d11.
        assert_eq!(hash_subject("client-0"), "sha256:16c2885525297d11");
        assert_eq!(hash_subject("client-0").len(), 23);
        assert_ne!(hash_subject("client-0"), hash_subject("client-1"));
    }
}
