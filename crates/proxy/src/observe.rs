//! The observe step: one access-log line and the metrics of each request, from
//! what the other steps recorded in a [`Trace`]. Never the token; the subject only
//! as configured (hashed by default); the path without its query string.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request};
use portcullis_config::{GatewayConfig, SubjectLogging};
use portcullis_policy::verify::printable;
use portcullis_policy::{Reason, Rejection, VerifiedClaims};
use sha2::{Digest, Sha256};

use crate::decision::{DecisionTrace, Outcome, Step};
use crate::gateway::Gateway;
use crate::pipeline::{describe_client, millis};
use crate::runtime::{CompiledRoute, Runtime};

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
        }
    }
}

/// Index of a reason for per-route metric slots (0 `none`, 1 `public`).
fn reason_slot(r: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|x| *x == r)
        .map_or(0, |i| i + 2)
}

/// Records metrics and the access-log line.
pub fn record(
    gw: &Gateway,
    runtime: &Runtime,
    trace: &Trace,
    request_id: &HeaderValue,
    status: u16,
    elapsed: Duration,
) {
    let route_metrics = trace
        .route
        .as_ref()
        .map_or(&runtime.unmatched, |r| &r.metrics);
    route_metrics.request(&trace.method, status, elapsed.as_secs_f64());
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
    let config = &runtime.config;
    if config.logging.access_log {
        access_log(gw, config, trace, request_id, status, elapsed);
    }
    if let Some(rejection) = &trace.rejection {
        gw.keep_explained(explained_entry(
            config, trace, rejection, request_id, status,
        ));
    }
}

/// What the explain ring keeps of a refused (or report-only would-be refused)
/// request.
pub fn explained_entry(
    config: &GatewayConfig,
    trace: &Trace,
    rejection: &Rejection,
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
        outcome: if matches!(trace.decision, Decision::WouldDeny(_)) {
            "would_deny"
        } else {
            "deny"
        },
        steps: with_context_notes(trace, config),
        rejection: Some(Rejection {
            reason: rejection.reason,
            detail: crate::explain::cut(&rejection.detail, crate::explain::MAX_DETAIL_BYTES),
            required_scope: None,
        }),
    }
}

/// The trace with evidence for its passed steps, made now from what the trace
/// holds (route, client, verified claims), for traces that were not verbose:
/// a refusal is explained beyond its failing step at no cost to allowed requests.
fn with_context_notes(trace: &Trace, config: &GatewayConfig) -> DecisionTrace {
    let mut steps = trace.steps.clone();
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

fn access_log(
    _gw: &Gateway,
    config: &GatewayConfig,
    trace: &Trace,
    request_id: &HeaderValue,
    status: u16,
    elapsed: Duration,
) {
    let route = trace
        .route
        .as_ref()
        .map_or("unmatched", |r| r.config.name.as_str());
    let upstream = trace
        .route
        .as_ref()
        .map_or("-", |r| r.config.upstream.as_str());
    let outcome = match (trace.decision, &trace.rejection) {
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
    let detail = trace.rejection.as_ref().map_or("", |r| r.detail.as_str());
    let subject = logged_subject(config, trace).unwrap_or_else(|| "-".to_owned());
    tracing::info!(
        target: "portcullis::access",
        request_id = request_id.to_str().unwrap_or("-"),
        route,
        method = %trace.method,
        path = trace.path.as_ref().map_or("-", |p| p.path()),
        status,
        duration_ms = millis(elapsed),
        upstream,
        upstream_ms = trace.upstream_latency.map_or(-1.0, millis),
        outcome,
        reason,
        detail,
        client_ip = %describe_client(trace.client_ip),
        // As a string field, not `%` (Display): the text formatter writes string
        // fields quoted and escaped, so a crafted `sub` cannot forge a line.
        subject = subject.as_str(),
    );
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
