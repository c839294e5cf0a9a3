//! The forward step: rewrite the path, remove hop-by-hop fields, set
//! `X-Forwarded-*`, inject the upstream credential and claim headers, send through
//! the pooled client, check the response's framing and status, and stream it back
//! (allowed upgrades passed through as tunnels). A body read whole beforehand
//! (model-aware routes) goes to each upstream of the route's chain in turn
//! while the one before falls back (connect failure, 429, 5xx), rewritten per
//! upstream when its `model_map` or `stream_usage` asks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_config::Rewrite;
use portcullis_policy::{Reason, Rejection, RequestedModel, VerifiedClaims};
use serde_json::Value;

use crate::ai_request::{Attempt, AttemptOutcome};
use crate::upstream::UpstreamPool;

use crate::body::{BodyFault, BodyFaultKind, ForwardBody, ProxyBody, UpstreamBody, streamed};
use crate::headers::{X_REQUEST_ID, remove_hop_by_hop, set_forwarded, upgrade_protocols};
use crate::runtime::CompiledRoute;

/// What the forward step needs besides the request.
pub struct ForwardContext<'a> {
    /// The matched route.
    pub route: &'a CompiledRoute,
    /// Verified claims, when the route is protected and the token passed.
    pub claims: Option<&'a VerifiedClaims>,
    /// The TCP peer's address, as a header value.
    pub peer: &'a HeaderValue,
    /// Whether the downstream connection is TLS.
    pub https: bool,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// Whether the request is an upgrade the route allows (checked by the
    /// pipeline); any other `Upgrade` is removed.
    pub upgrade: bool,
    /// The longest pause allowed in the request body.
    pub body_read_timeout: Duration,
    /// The request's W3C trace, when the gateway takes part in traces.
    pub trace: Option<&'a crate::tracecontext::TraceContext>,
    /// The body's model, when the route read it (a model-aware route).
    pub requested: Option<&'a RequestedModel>,
}

/// What the forward step brings back.
pub struct Forwarded {
    /// The upstream's response, its body streamed.
    pub response: Response<ProxyBody>,
    /// Time to the upstream's response head.
    pub latency: Duration,
    /// The request body's record (bytes forwarded, a fault), when it had one.
    pub request_body: Option<Arc<BodyFault>>,
    /// Every upstream tried (only when the route has fallback upstreams).
    pub attempts: Vec<Attempt>,
    /// The upstream that answered, when not the route's first.
    pub answered_by: Option<Arc<UpstreamPool>>,
}

/// A request body the forward step can stream upstream: a client's, or none
/// (`portcullis diagnose --send` sends the described request without one).
pub trait OutgoingBody: Sized {
    /// Whether it is known to be empty.
    fn is_empty_body(&self) -> bool;
    /// The body, when it was read whole beforehand.
    fn whole_bytes(&self) -> Option<&Bytes> {
        None
    }
    /// The body as streamed to the upstream, with its limits and fault record.
    fn into_forward_body(
        self,
        limit: u64,
        fault: Option<Arc<BodyFault>>,
        read_timeout: Duration,
    ) -> ForwardBody;
}

impl OutgoingBody for Incoming {
    fn is_empty_body(&self) -> bool {
        http_body::Body::is_end_stream(self)
    }

    fn into_forward_body(
        self,
        limit: u64,
        fault: Option<Arc<BodyFault>>,
        read_timeout: Duration,
    ) -> ForwardBody {
        ForwardBody::new(self, limit, fault, read_timeout)
    }
}

impl OutgoingBody for () {
    fn is_empty_body(&self) -> bool {
        true
    }

    fn into_forward_body(self, _: u64, _: Option<Arc<BodyFault>>, _: Duration) -> ForwardBody {
        ForwardBody::empty()
    }
}

/// Sends the request upstream (to each upstream of the route's chain in turn
/// while the one before falls back); returns the response and the latency.
pub async fn forward<B: OutgoingBody>(
    mut req: Request<B>,
    ctx: ForwardContext<'_>,
) -> Result<Forwarded, Rejection> {
    let route = ctx.route;
    let upgrade = ctx.upgrade;
    let requested_protocols = if upgrade {
        upgrade_protocols(req.headers()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    remove_hop_by_hop(&mut parts.headers, upgrade);
    let forward_token = route.protected().is_some_and(|p| p.forward_token);
    if !forward_token {
        parts.headers.remove(header::AUTHORIZATION);
    }
    set_forwarded(
        &mut parts.headers,
        ctx.peer,
        ctx.https,
        original_host.as_ref(),
    );
    parts.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some(trace) = ctx.trace {
        // The upstream's parent is the gateway's span; a tracestate goes on
        // only with the trace it belongs to.
        parts
            .headers
            .insert(&crate::tracecontext::TRACEPARENT, trace.traceparent());
        match &trace.tracestate {
            Some(state) => {
                parts
                    .headers
                    .insert(&crate::tracecontext::TRACESTATE, state.clone());
            }
            None if trace.client_tracestate => {
                parts.headers.remove(&crate::tracecontext::TRACESTATE);
            }
            None => {}
        }
    }
    if let (Some(p), Some(claims)) = (route.protected(), ctx.claims) {
        for (claim, name) in &p.claim_headers {
            if let Some(v) = claim_header_value(claims, claim) {
                parts.headers.insert(name.clone(), v);
            }
        }
    }
    let preserve_host = route.config.preserve_host;
    if preserve_host && let Some(h) = &original_host {
        parts.headers.insert(header::HOST, h.clone());
    }

    // A token accepted from the query is never forwarded.
    let strip_query =
        route.protected().is_some_and(|p| p.query_token) && parts.uri.query().is_some();
    parts.uri = if route.config.rewrite.is_none() && !strip_query {
        // The common case: the path goes upstream as it came, without a copy.
        let pq = std::mem::take(&mut parts.uri).into_parts().path_and_query;
        http::Uri::from(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")))
    } else {
        let query = match parts.uri.query() {
            Some(q) if strip_query => {
                Some(portcullis_policy::bearer::strip_query_token(q)).filter(|q| !q.is_empty())
            }
            q => q.map(str::to_owned),
        };
        let path_and_query = rewrite_path(
            parts.uri.path(),
            query.as_deref(),
            route.config.rewrite.as_ref(),
        );
        http::Uri::builder()
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| {
                Rejection::new(
                    Reason::RequestMalformed,
                    "the rewritten path is not a valid URI",
                )
            })?
    };

    let whole = body
        .whole_bytes()
        .cloned()
        .or_else(|| body.is_empty_body().then(Bytes::new));
    let sent = match (whole, ctx.requested) {
        // Read whole (a model-aware route, fallback upstreams): each upstream
        // of the chain in turn, each with its own body rewrite.
        (Some(whole), requested) if route.upstreams.len() > 1 || requested.is_some() => {
            send_along_chain(parts, &whole, requested, &ctx).await?
        }
        // Streamed: the route's one upstream.
        (_, _) => {
            // A body known to be empty cannot fail: no fault record to allocate.
            let fault = (!body.is_empty_body()).then(|| Arc::new(BodyFault::default()));
            let forward_body = body.into_forward_body(
                route.config.max_body_bytes,
                fault.clone(),
                ctx.body_read_timeout,
            );
            let (response, latency) =
                send_to(&route.upstream, parts, forward_body, None, &ctx).await?;
            Sent {
                response,
                latency,
                fault,
                upstream: Arc::clone(&route.upstream),
                attempts: Vec::new(),
            }
        }
    };
    let Sent {
        mut response,
        latency,
        fault,
        upstream,
        attempts,
    } = sent;
    check_response(&response, &requested_protocols, &upstream.config().name)?;
    let answered_by = (!Arc::ptr_eq(&upstream, &route.upstream)).then_some(upstream);

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(upstream),
                )
                .await;
            }
        });
        let (parts, body) = response.into_parts();
        return Ok(Forwarded {
            response: Response::from_parts(parts, streamed(body)),
            latency,
            request_body: fault,
            attempts,
            answered_by,
        });
    }
    remove_hop_by_hop(response.headers_mut(), false);
    let event_stream = crate::sse::is_event_stream(response.headers());
    if event_stream {
        crate::sse::mark_unbuffered(response.headers_mut());
    }
    let (parts, body) = response.into_parts();
    let body = match route.config.sse_keepalive {
        Some(every) if event_stream => {
            ProxyBody::KeepAlive(Box::new(crate::sse::KeepAliveBody::new(body, every)))
        }
        _ => streamed(body),
    };
    Ok(Forwarded {
        response: Response::from_parts(parts, body),
        latency,
        request_body: fault,
        attempts,
        answered_by,
    })
}

/// What sending brought back, before the response is checked.
struct Sent {
    response: Response<UpstreamBody>,
    latency: Duration,
    fault: Option<Arc<BodyFault>>,
    upstream: Arc<UpstreamPool>,
    attempts: Vec<Attempt>,
}

/// A body read whole, to each upstream of the route's chain in turn until one
/// answers with something other than 429/5xx or the chain ends (the last
/// upstream's answer, whatever it is, goes to the client). Nothing has reached
/// the client before the answer chosen here.
async fn send_along_chain(
    parts: http::request::Parts,
    whole: &Bytes,
    requested: Option<&RequestedModel>,
    ctx: &ForwardContext<'_>,
) -> Result<Sent, Rejection> {
    let chain = &ctx.route.upstreams;
    let mut attempts = Vec::with_capacity(chain.len());
    for (i, upstream) in chain.iter().enumerate() {
        let last = i + 1 == chain.len();
        let body = match requested {
            Some(requested) => crate::ai_request::rewrite_for(upstream.config(), whole, requested)?
                .unwrap_or_else(|| whole.clone()),
            None => whole.clone(),
        };
        let mut attempt_parts = clone_parts(&parts);
        attempt_parts.headers.remove(header::TRANSFER_ENCODING);
        if !body.is_empty() || attempt_parts.headers.contains_key(header::CONTENT_LENGTH) {
            attempt_parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let replay = Some(body.clone());
        let result = send_to(
            upstream,
            attempt_parts,
            ForwardBody::whole(body),
            replay,
            ctx,
        )
        .await;
        let outcome = match &result {
            Ok((response, _)) => AttemptOutcome::Status(response.status().as_u16()),
            Err(rejection) => AttemptOutcome::Failed(rejection.reason),
        };
        if chain.len() > 1 {
            attempts.push(Attempt {
                upstream: Arc::clone(upstream),
                outcome,
            });
            ctx.route
                .metrics
                .upstream_attempt(&upstream.config().name, &outcome.label());
        }
        if !last && outcome.falls_back() {
            if let Ok((response, _)) = result {
                // Its body is dropped unread: the connection is not reused.
                drop(response);
            }
            continue;
        }
        let (response, latency) = result?;
        return Ok(Sent {
            response,
            latency,
            fault: (!whole.is_empty()).then(|| Arc::new(BodyFault::read_whole(whole.len() as u64))),
            upstream: Arc::clone(upstream),
            attempts,
        });
    }
    Err(Rejection::new(
        Reason::UpstreamUnreachable,
        "the route has no upstream to send to",
    ))
}

/// A copy of a request head (for one attempt of a chain).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// One upstream: its credential, default headers and OAuth token, then the
/// exchange; a request refused with 401 after being sent with the upstream's
/// OAuth token is sent once more with a fresh token when it can be replayed
/// (no body, or `replay`: a body read whole).
async fn send_to(
    upstream: &Arc<UpstreamPool>,
    mut parts: http::request::Parts,
    body: ForwardBody,
    replay_body: Option<Bytes>,
    ctx: &ForwardContext<'_>,
) -> Result<(Response<UpstreamBody>, Duration), Rejection> {
    let route = ctx.route;
    let upstream_config = upstream.config();
    if let Some(cred) = &upstream_config.credential {
        parts
            .headers
            .insert(cred.header.clone(), cred.value.0.clone());
    }
    for (name, value) in &upstream_config.default_headers {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    // The upstream's own OAuth token: held, or fetched now when none is usable.
    let token = upstream.token();
    let sent_token = match token {
        Some(token) => {
            let value = token.header().await?;
            parts.headers.insert(header::AUTHORIZATION, value.clone());
            Some(value)
        }
        None => None,
    };
    parts.version = if upstream_config.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let fault = body.fault();
    let request = Request::from_parts(parts, body);
    let retry_after_send = upstream_config.retry_idempotent && is_idempotent(request.method());
    let timeout = route
        .config
        .timeout
        .unwrap_or(upstream_config.response_header_timeout);
    let preserve_host = route.config.preserve_host;
    // A request sent with the upstream's OAuth token can be sent again if the
    // upstream refuses the token (revoked, rotated): keep its head, when its
    // body can be sent again.
    let replayable = fault.is_none() || replay_body.is_some();
    let replay = (sent_token.is_some() && replayable && !ctx.upgrade).then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            request.version(),
            request.headers().clone(),
        )
    });
    let mut sent = upstream
        .send(request, timeout, retry_after_send, !preserve_host)
        .await;
    if let (
        Ok((response, _)),
        Some((method, uri, version, mut headers)),
        Some(token),
        Some(refused),
    ) = (&sent, replay, token, &sent_token)
        && response.status() == StatusCode::UNAUTHORIZED
    {
        let fresh = token.after_refusal(refused).await?;
        headers.insert(header::AUTHORIZATION, fresh);
        let body = match replay_body {
            Some(bytes) => ForwardBody::whole(bytes),
            None => ForwardBody::empty(),
        };
        let mut again = Request::new(body);
        *again.method_mut() = method;
        *again.uri_mut() = uri;
        *again.version_mut() = version;
        *again.headers_mut() = headers;
        sent = upstream
            .send(again, timeout, retry_after_send, !preserve_host)
            .await;
    }
    sent.map_err(|f| match fault.as_ref().and_then(|f| f.get()) {
        Some(kind) => body_rejection(kind, route.config.max_body_bytes, ctx.body_read_timeout),
        None => f.rejection,
    })
}

/// The client's own body fault, named as such (never blamed on the upstream).
pub fn body_rejection(kind: BodyFaultKind, limit: u64, read_timeout: Duration) -> Rejection {
    match kind {
        BodyFaultKind::TooLarge => Rejection::new(
            Reason::BodyTooLarge,
            format!("request body exceeds the route's limit of {limit} bytes"),
        ),
        BodyFaultKind::Malformed => Rejection::new(
            Reason::RequestMalformed,
            "the request body is malformed (bad chunked framing, or shorter than its Content-Length)",
        ),
        BodyFaultKind::TooSlow => Rejection::new(
            Reason::BodyTimeout,
            format!(
                "the request body paused for more than {:.1}s (limits.body_read_timeout)",
                read_timeout.as_secs_f64()
            ),
        ),
    }
}

/// Refuses an upstream response a client must not receive: a status outside
/// 100-599, a `101` that was not asked for (or to a protocol that was not
/// offered), or both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3:
/// a sign of response splitting; the length would not describe the re-framed body).
fn check_response(
    response: &Response<UpstreamBody>,
    requested: &[String],
    upstream: &str,
) -> Result<(), Rejection> {
    let status = response.status().as_u16();
    let refuse = |what: String| {
        Rejection::new(
            Reason::UpstreamProtocolError,
            format!("upstream {upstream} {what}"),
        )
    };
    if !(100..=599).contains(&status) {
        return Err(refuse(format!("answered with invalid status {status}")));
    }
    if status == 101 {
        let chosen = response
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        match chosen {
            _ if requested.is_empty() => {
                return Err(refuse(
                    "switched protocols (101) without being asked".to_owned(),
                ));
            }
            Some(p) if requested.contains(&p) => {}
            _ => {
                return Err(refuse(
                    "switched to a protocol the client did not ask for".to_owned(),
                ));
            }
        }
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(refuse(
            "sent both Content-Length and Transfer-Encoding (conflicting framing)".to_owned(),
        ));
    }
    Ok(())
}

/// Methods that may be retried after a reset when `retry.idempotent` is on (RFC 9110 §9.2.2).
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Applies a rewrite: strip a prefix, put another in its place.
pub fn rewrite_path(path: &str, query: Option<&str>, rewrite: Option<&Rewrite>) -> String {
    let mut out = match rewrite {
        Some(rw) => {
            let rest = path.strip_prefix(rw.strip_prefix.as_str()).unwrap_or(path);
            let joined = if rw.replace_prefix.is_empty() {
                rest.to_owned()
            } else if rest.is_empty() || rest.starts_with('/') || rw.replace_prefix.ends_with('/') {
                format!("{}{rest}", rw.replace_prefix)
            } else {
                format!("{}/{rest}", rw.replace_prefix)
            };
            if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
        None => path.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn claim_header_value(claims: &VerifiedClaims, claim: &str) -> Option<HeaderValue> {
    let text = match claims.claims.get(claim)? {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(strip: &str, replace: &str) -> Rewrite {
        Rewrite {
            strip_prefix: strip.into(),
            replace_prefix: replace.into(),
        }
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite_path("/openai/v1/models", Some("a=1"), Some(&rw("/openai", ""))),
            "/v1/models?a=1"
        );
        assert_eq!(rewrite_path("/openai", None, Some(&rw("/openai", ""))), "/");
        assert_eq!(
            rewrite_path("/api/x", None, Some(&rw("/api", "/v2"))),
            "/v2/x"
        );
        assert_eq!(
            rewrite_path("/other", None, Some(&rw("/api", "/v2"))),
            "/v2/other"
        );
        assert_eq!(rewrite_path("/a", None, None), "/a");
    }
}
