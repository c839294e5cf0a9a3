//! The forward step: rewrite the path, remove hop-by-hop fields, set
//! `X-Forwarded-*`, inject the upstream credential and claim headers, send through
//! the pooled client, check the response's framing and status, and stream it back
//! (allowed upgrades passed through as tunnels).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_config::Rewrite;
use portcullis_policy::{Reason, Rejection, VerifiedClaims};
use serde_json::Value;

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
}

/// What the forward step brings back.
pub struct Forwarded {
    /// The upstream's response, its body streamed.
    pub response: Response<ProxyBody>,
    /// Time to the upstream's response head.
    pub latency: Duration,
    /// The request body's record (bytes forwarded, a fault), when it had one.
    pub request_body: Option<Arc<BodyFault>>,
}

/// A request body the forward step can stream upstream: a client's, or none
/// (`portcullis diagnose --send` sends the described request without one).
pub trait OutgoingBody: Sized {
    /// Whether it is known to be empty.
    fn is_empty_body(&self) -> bool;
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

/// Sends the request upstream; returns the response and the upstream latency.
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
    let upstream_config = route.upstream.config();
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
    let token = route.upstream.token();
    let sent_token = match token {
        Some(token) => {
            let value = token.header().await?;
            parts.headers.insert(header::AUTHORIZATION, value.clone());
            Some(value)
        }
        None => None,
    };
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
    parts.version = if upstream_config.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // A body known to be empty cannot fail: no fault record to allocate.
    let fault = (!body.is_empty_body()).then(|| Arc::new(BodyFault::default()));
    let body = body.into_forward_body(
        route.config.max_body_bytes,
        fault.clone(),
        ctx.body_read_timeout,
    );
    let request = Request::from_parts(parts, body);
    let retry_after_send = upstream_config.retry_idempotent && is_idempotent(request.method());
    let timeout = route
        .config
        .timeout
        .unwrap_or(upstream_config.response_header_timeout);
    // A bodiless request sent with the upstream's OAuth token can be sent again
    // if the upstream refuses the token (revoked, rotated): keep its head.
    let replay = (sent_token.is_some() && fault.is_none() && !upgrade).then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            request.version(),
            request.headers().clone(),
        )
    });
    let mut sent = route
        .upstream
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
        let mut again = Request::new(().into_forward_body(0, None, ctx.body_read_timeout));
        *again.method_mut() = method;
        *again.uri_mut() = uri;
        *again.version_mut() = version;
        *again.headers_mut() = headers;
        sent = route
            .upstream
            .send(again, timeout, retry_after_send, !preserve_host)
            .await;
    }
    let (mut response, latency) = match sent {
        Ok(r) => r,
        Err(f) => {
            return Err(match fault.as_ref().and_then(|f| f.get()) {
                Some(kind) => {
                    body_rejection(kind, route.config.max_body_bytes, ctx.body_read_timeout)
                }
                None => f.rejection,
            });
        }
    };
    check_response(
        &response,
        &requested_protocols,
        &route.upstream.config().name,
    )?;

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
    })
}

/// The client's own body fault, named as such (never blamed on the upstream).
fn body_rejection(kind: BodyFaultKind, limit: u64, read_timeout: Duration) -> Rejection {
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
