//! The one mapping of rejections to responses: status, RFC 6750 challenge and an
//! RFC 9457 `application/problem+json` body with the reason code and request id.
//!
//! The match on the challenge kind is exhaustive (see `Reason::challenge`), so a new
//! reason forces a decision here. Nothing of the token or of a secret is ever
//! written: the detail strings are built by the policy code from safe parts.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use portcullis_policy::{Challenge, Reason, Rejection};

use crate::body::{ProxyBody, full};

/// The realm in `WWW-Authenticate` challenges.
pub const REALM: &str = "portcullis";

/// Builds the response for a rejection.
pub fn respond(rejection: &Rejection, request_id: &str) -> Response<ProxyBody> {
    let reason = rejection.reason;
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "type": format!("https://portcullis.dev/problems/{}", reason.as_str()),
        "title": reason.title(),
        "status": status.as_u16(),
        "detail": rejection.detail,
        "reason": reason.as_str(),
        "request_id": request_id,
    });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(challenge) = challenge(rejection)
        && let Ok(v) = HeaderValue::from_str(&challenge)
    {
        headers.insert(header::WWW_AUTHENTICATE, v);
    }
    if matches!(
        reason,
        Reason::IdpUnavailable | Reason::Overloaded | Reason::RateLimitUnavailable
    ) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// The `WWW-Authenticate` value for a rejection (RFC 6750 §3), if any.
pub fn challenge(rejection: &Rejection) -> Option<String> {
    let realm = format!("Bearer realm=\"{REALM}\"");
    let describe = |code: &str| {
        format!(
            "{realm}, error=\"{code}\", error_description=\"{}\"",
            quote_safe(&format!("{}: {}", rejection.reason, rejection.detail))
        )
    };
    match rejection.reason.challenge() {
        Challenge::None => None,
        Challenge::Bare => Some(realm),
        Challenge::InvalidRequest => Some(describe("invalid_request")),
        Challenge::InvalidToken => Some(describe("invalid_token")),
        Challenge::InsufficientScope => {
            let mut c = describe("insufficient_scope");
            if let Some(scope) = &rejection.required_scope {
                c.push_str(&format!(", scope=\"{}\"", quote_safe(scope)));
            }
            Some(c)
        }
    }
}

/// RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E only.
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let missing = Rejection::new(Reason::TokenMissing, "no header");
        assert_eq!(challenge(&missing).unwrap(), "Bearer realm=\"portcullis\"");
        let expired = Rejection::new(Reason::TokenExpired, "token expired 3m12s ago");
        assert_eq!(
            challenge(&expired).unwrap(),
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"token_expired: token expired 3m12s ago\""
        );
        let scope = Rejection::new(Reason::ScopeInsufficient, "missing scope chat:write")
            .with_required_scope("chat:write");
        assert!(challenge(&scope).unwrap().ends_with("scope=\"chat:write\""));
        assert!(challenge(&Rejection::new(Reason::IpDenied, "x")).is_none());
        let weird = Rejection::new(Reason::TokenMalformed, "bad \"quote\" é");
        assert!(challenge(&weird).unwrap().contains("bad 'quote' ?"));
    }

    #[test]
    fn problem_body_and_status() {
        let r = respond(&Rejection::new(Reason::IdpUnavailable, "no keys"), "rid-1");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
