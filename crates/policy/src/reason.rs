//! The reason catalogue: one stable, machine-readable name per cause of rejection.
//!
//! The same code is the `reason` of the problem+json body, the `reason` label of
//! `portcullis_auth_decisions_total`, the access-log field and the failing line of
//! `portcullis diagnose`. Codes are never renamed once released.

use std::fmt;

/// Every cause for which Portcullis refuses a request.
///
/// Not `#[non_exhaustive]` on purpose: the one mapping to responses in the proxy
/// is an exhaustive `match`, so a new variant forces a decision there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No bearer token was presented (RFC 6750 §3.1: no error code).
    TokenMissing,
    /// The request itself is malformed: bad scheme syntax, two tokens, two headers.
    RequestMalformed,
    /// The token is not a well-formed compact JWS / JWT.
    TokenMalformed,
    /// The token exceeds the configured size cap.
    TokenTooLarge,
    /// The `alg` header is not on the issuer's allow-list.
    AlgorithmNotAllowed,
    /// No key of the issuer matches the token's `kid` / algorithm.
    KeyUnknown,
    /// The signature does not verify against the selected key.
    SignatureInvalid,
    /// `iss` is missing or names no configured issuer of this route.
    IssuerMismatch,
    /// `aud` does not contain an audience the route accepts.
    AudienceMismatch,
    /// `exp` is in the past (beyond the leeway).
    TokenExpired,
    /// `nbf` (or `iat`) is in the future (beyond the leeway).
    TokenNotYetValid,
    /// Required scopes are absent.
    ScopeInsufficient,
    /// A claim rule of the route does not hold.
    ClaimMismatch,
    /// The client IP is denied (or not allowed) by a network rule.
    IpDenied,
    /// The issuer has no usable keys and none are cached: the IdP is unreachable.
    IdpUnavailable,
    /// No route matches the request.
    RouteNotFound,
    /// A route matches the path but not the method.
    MethodNotAllowed,
    /// The request body exceeds the route's limit.
    BodyTooLarge,
    /// The request headers exceed the limit.
    HeadersTooLarge,
    /// No upstream target could be connected.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered with something that is not valid HTTP, or reset mid-way.
    UpstreamProtocolError,
    /// The gateway is shedding load or shutting down.
    Overloaded,
    /// The path has dot-segments or encoded separators, which upstreams may
    /// resolve differently from the route match (path confusion).
    PathInvalid,
    /// The request's authority is missing, repeated, malformed or ambiguous
    /// (RFC 9112 §3.2: `Host` must be there exactly once, agree with an
    /// absolute-form target, and carry no userinfo; HTTP/2 `:authority` and
    /// `host` must agree).
    HostInvalid,
    /// The request asks to switch protocols (`Upgrade`, `CONNECT`) in a way the
    /// route does not allow.
    UpgradeNotAllowed,
    /// The client sent its request body too slowly (a pause between two pieces
    /// longer than `limits.body_read_timeout`).
    BodyTimeout,
    /// A CORS preflight the route's `cors` policy does not allow (origin, method
    /// or request header), or a preflight to a route without one.
    CorsNotAllowed,
    /// The request target (path and query) is longer than the HTTP/1.1 parser
    /// accepts (65,534 bytes), refused before routing.
    UriTooLong,
    /// A rate-limit policy of the route refused the request: its key (client,
    /// address, route or header) is over the policy's rate.
    RateLimited,
    /// The shared rate-limit store (Redis) cannot answer and
    /// `rate_limits.on_store_error` is `deny`.
    RateLimitUnavailable,
    /// The authorization server's introspection endpoint (RFC 7662) answered
    /// `active: false` for an opaque token: revoked, expired, never issued, or
    /// not an access token.
    TokenInactive,
    /// The upstream's own credential (an OAuth client credentials token the
    /// gateway gets from the upstream's authorization server) cannot be had:
    /// its token endpoint fails or refuses.
    UpstreamCredentialUnavailable,
    /// The upstream broke off its response after its head (a stream cut
    /// mid-way): the client's stream was ended without its last chunk, so its
    /// SDK raises. Logged and counted; the status already sent stays.
    UpstreamStreamAborted,
    /// An AI request names a model this route does not serve (no route of
    /// its path matches the body's `model`), or one the token is not granted
    /// (`auth.models`).
    ModelNotAllowed,
    /// A token budget of the route (a `rate_limits` policy with `tokens:`)
    /// is spent for this key: the tokens its earlier answers used.
    TokenBudgetExhausted,
}

/// Which RFC 6750 challenge a reason calls for in `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No challenge header: the rejection is not about the token.
    None,
    /// `Bearer realm="…"` with no error code (no credentials were sent).
    Bare,
    /// `error="invalid_request"`.
    InvalidRequest,
    /// `error="invalid_token"`.
    InvalidToken,
    /// `error="insufficient_scope"`.
    InsufficientScope,
}

impl Reason {
    /// Every reason, in catalogue order (used by docs, metrics pre-registration and tests).
    pub const ALL: [Reason; 36] = [
        Reason::TokenMissing,
        Reason::RequestMalformed,
        Reason::TokenMalformed,
        Reason::TokenTooLarge,
        Reason::AlgorithmNotAllowed,
        Reason::KeyUnknown,
        Reason::SignatureInvalid,
        Reason::IssuerMismatch,
        Reason::AudienceMismatch,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::ScopeInsufficient,
        Reason::ClaimMismatch,
        Reason::IpDenied,
        Reason::IdpUnavailable,
        Reason::RouteNotFound,
        Reason::MethodNotAllowed,
        Reason::BodyTooLarge,
        Reason::HeadersTooLarge,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTimeout,
        Reason::UpstreamProtocolError,
        Reason::Overloaded,
        Reason::PathInvalid,
        Reason::HostInvalid,
        Reason::UpgradeNotAllowed,
        Reason::BodyTimeout,
        Reason::CorsNotAllowed,
        Reason::UriTooLong,
        Reason::RateLimited,
        Reason::RateLimitUnavailable,
        Reason::TokenInactive,
        Reason::UpstreamCredentialUnavailable,
        Reason::UpstreamStreamAborted,
        Reason::ModelNotAllowed,
        Reason::TokenBudgetExhausted,
    ];

    /// The stable snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::TokenMissing => "token_missing",
            Reason::RequestMalformed => "request_malformed",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenTooLarge => "token_too_large",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::KeyUnknown => "key_unknown",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::ScopeInsufficient => "scope_insufficient",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::IpDenied => "ip_denied",
            Reason::IdpUnavailable => "idp_unavailable",
            Reason::RouteNotFound => "route_not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::BodyTooLarge => "body_too_large",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamProtocolError => "upstream_protocol_error",
            Reason::Overloaded => "overloaded",
            Reason::PathInvalid => "path_invalid",
            Reason::HostInvalid => "host_invalid",
            Reason::UpgradeNotAllowed => "upgrade_not_allowed",
            Reason::BodyTimeout => "body_timeout",
            Reason::CorsNotAllowed => "cors_not_allowed",
            Reason::UriTooLong => "uri_too_long",
            Reason::RateLimited => "rate_limited",
            Reason::RateLimitUnavailable => "rate_limit_unavailable",
            Reason::TokenInactive => "token_inactive",
            Reason::UpstreamCredentialUnavailable => "upstream_credential_unavailable",
            Reason::UpstreamStreamAborted => "upstream_stream_aborted",
            Reason::ModelNotAllowed => "model_not_allowed",
            Reason::TokenBudgetExhausted => "token_budget_exhausted",
        }
    }

    /// The HTTP status code this reason is answered with.
    pub const fn status(self) -> u16 {
        match self {
            Reason::TokenMissing
            | Reason::TokenMalformed
            | Reason::TokenTooLarge
            | Reason::AlgorithmNotAllowed
            | Reason::KeyUnknown
            | Reason::SignatureInvalid
            | Reason::IssuerMismatch
            | Reason::AudienceMismatch
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenInactive => 401,
            Reason::RequestMalformed | Reason::PathInvalid | Reason::HostInvalid => 400,
            Reason::ScopeInsufficient
            | Reason::ClaimMismatch
            | Reason::IpDenied
            | Reason::UpgradeNotAllowed
            | Reason::CorsNotAllowed
            | Reason::ModelNotAllowed => 403,
            Reason::BodyTimeout => 408,
            Reason::IdpUnavailable | Reason::Overloaded | Reason::RateLimitUnavailable => 503,
            Reason::RouteNotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::BodyTooLarge => 413,
            Reason::HeadersTooLarge => 431,
            Reason::UriTooLong => 414,
            Reason::RateLimited | Reason::TokenBudgetExhausted => 429,
            Reason::UpstreamUnreachable
            | Reason::UpstreamProtocolError
            | Reason::UpstreamCredentialUnavailable
            | Reason::UpstreamStreamAborted => 502,
            Reason::UpstreamTimeout => 504,
        }
    }

    /// The RFC 6750 challenge that accompanies this reason.
    pub const fn challenge(self) -> Challenge {
        match self {
            Reason::TokenMissing => Challenge::Bare,
            Reason::RequestMalformed => Challenge::InvalidRequest,
            Reason::TokenMalformed
            | Reason::TokenTooLarge
            | Reason::AlgorithmNotAllowed
            | Reason::KeyUnknown
            | Reason::SignatureInvalid
            | Reason::IssuerMismatch
            | Reason::AudienceMismatch
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenInactive => Challenge::InvalidToken,
            Reason::ScopeInsufficient | Reason::ClaimMismatch => Challenge::InsufficientScope,
            Reason::IpDenied
            | Reason::IdpUnavailable
            | Reason::RouteNotFound
            | Reason::MethodNotAllowed
            | Reason::BodyTooLarge
            | Reason::HeadersTooLarge
            | Reason::UpstreamUnreachable
            | Reason::UpstreamTimeout
            | Reason::UpstreamProtocolError
            | Reason::Overloaded
            | Reason::PathInvalid
            | Reason::HostInvalid
            | Reason::UpgradeNotAllowed
            | Reason::BodyTimeout
            | Reason::CorsNotAllowed
            | Reason::UriTooLong
            | Reason::RateLimited
            | Reason::RateLimitUnavailable
            | Reason::UpstreamCredentialUnavailable
            | Reason::UpstreamStreamAborted
            | Reason::ModelNotAllowed
            | Reason::TokenBudgetExhausted => Challenge::None,
        }
    }

    /// A short human title for the problem+json `title` member.
    pub const fn title(self) -> &'static str {
        match self {
            Reason::TokenMissing => "Bearer token required",
            Reason::RequestMalformed => "Malformed request",
            Reason::TokenMalformed => "Malformed token",
            Reason::TokenTooLarge => "Token too large",
            Reason::AlgorithmNotAllowed => "Token algorithm not allowed",
            Reason::KeyUnknown => "Token signing key unknown",
            Reason::SignatureInvalid => "Token signature invalid",
            Reason::IssuerMismatch => "Token issuer not accepted",
            Reason::AudienceMismatch => "Token audience not accepted",
            Reason::TokenExpired => "Token expired",
            Reason::TokenNotYetValid => "Token not yet valid",
            Reason::ScopeInsufficient => "Insufficient scope",
            Reason::ClaimMismatch => "Token claims not accepted",
            Reason::IpDenied => "Client address not allowed",
            Reason::IdpUnavailable => "Authorization server unavailable",
            Reason::RouteNotFound => "No route",
            Reason::MethodNotAllowed => "Method not allowed",
            Reason::BodyTooLarge => "Request body too large",
            Reason::HeadersTooLarge => "Request headers too large",
            Reason::UpstreamUnreachable => "Upstream unreachable",
            Reason::UpstreamTimeout => "Upstream timeout",
            Reason::UpstreamProtocolError => "Upstream protocol error",
            Reason::Overloaded => "Gateway overloaded",
            Reason::PathInvalid => "Path not canonical",
            Reason::HostInvalid => "Host missing or ambiguous",
            Reason::UpgradeNotAllowed => "Protocol upgrade not allowed",
            Reason::BodyTimeout => "Request body too slow",
            Reason::CorsNotAllowed => "Cross-origin request not allowed",
            Reason::UriTooLong => "Request target too long",
            Reason::RateLimited => "Too many requests",
            Reason::RateLimitUnavailable => "Rate-limit store unavailable",
            Reason::TokenInactive => "Token not active",
            Reason::UpstreamCredentialUnavailable => "Upstream credential unavailable",
            Reason::UpstreamStreamAborted => "Upstream stream aborted",
            Reason::ModelNotAllowed => "Model not allowed",
            Reason::TokenBudgetExhausted => "Token budget exhausted",
        }
    }

    /// Whether the reason is an authorization decision (about the token or the
    /// client address), counted in `portcullis_auth_decisions_total`.
    pub const fn is_auth_decision(self) -> bool {
        matches!(
            self.challenge(),
            Challenge::Bare
                | Challenge::InvalidRequest
                | Challenge::InvalidToken
                | Challenge::InsufficientScope
        ) || matches!(self, Reason::IpDenied | Reason::IdpUnavailable)
    }

    /// What to do about this reason: the fix `diagnose`, `explain` and the
    /// troubleshooting table name.
    pub const fn fix(self) -> &'static str {
        match self {
            Reason::RouteNotFound => {
                "no route matches this host and path: check the routes' match blocks"
            }
            Reason::PathInvalid => {
                "send the path in canonical form: no `.`/`..` segments, no `\\`, `;`, `%2F`, double or invalid percent-encoding, no segment ending in `.` or space (the detail names the rule; see paths: in gateway.yaml)"
            }
            Reason::HostInvalid => {
                "send exactly one valid Host header (no userinfo) that agrees with an absolute request target or HTTP/2 :authority"
            }
            Reason::UpgradeNotAllowed => {
                "list the protocol in the route's upgrades (e.g. upgrades: [websocket]); h2c and CONNECT are never relayed"
            }
            Reason::CorsNotAllowed => {
                "add the page's origin (and the method and headers it sends) to the route's cors block"
            }
            Reason::BodyTimeout => {
                "the client paused its request body too long: send it without stalls, or raise limits.body_read_timeout"
            }
            Reason::MethodNotAllowed => {
                "add the method to the route's match.methods, or use an allowed one"
            }
            Reason::IpDenied => {
                "add the client's network to the allow list, remove it from the deny list, or list the proxy in network.trusted_proxies"
            }
            Reason::HeadersTooLarge => {
                "send fewer or smaller headers (at most 100 header fields over HTTP/1.1), or raise limits.max_header_bytes"
            }
            Reason::RateLimitUnavailable => {
                "the shared rate-limit store (Redis) failed or was slow: check it (/readyz names it), or set rate_limits.on_store_error to local"
            }
            Reason::RateLimited => {
                "slow down: retry after the Retry-After seconds; the detail names the policy (rate_limits.policies.<name>) and what it is kept per"
            }
            Reason::UriTooLong => {
                "shorten the URL (at most 65,534 bytes of path and query): move large parameters into the request body"
            }
            Reason::BodyTooLarge => "send a smaller body, or raise the route's max_body",
            Reason::Overloaded => {
                "the gateway sheds load above limits.max_in_flight: scale out or raise the limit"
            }
            Reason::TokenMissing => "send `Authorization: Bearer <access token>`",
            Reason::RequestMalformed => {
                "send exactly one Authorization header with exactly one token"
            }
            Reason::TokenTooLarge => "use a smaller token, or raise the issuer's max_token_size",
            Reason::TokenMalformed => {
                "the token is not a well-formed signed JWT (and no issuer of the route introspects opaque tokens): get a fresh one from the authorization server"
            }
            Reason::IssuerMismatch => {
                "use a token from an issuer this route accepts, or add the issuer to the route's auth.issuers"
            }
            Reason::AlgorithmNotAllowed => {
                "sign with an algorithm on the issuer's allow-list, or extend issuers.<name>.algorithms"
            }
            Reason::IdpUnavailable => {
                "the authorization server cannot be used (its keys cannot be fetched, or its introspection endpoint fails): check the failing layer (DNS, TCP, TLS, HTTP, AS error) that /readyz and the detail name"
            }
            Reason::TokenInactive => {
                "the authorization server says the token is not active (revoked, expired, unknown, or not an access token): get a new token"
            }
            Reason::KeyUnknown => {
                "the signing key is not in the issuer's key set: rotation not published yet, or a token from another environment"
            }
            Reason::SignatureInvalid => {
                "the token was altered or signed by another key with the same kid: get a fresh token"
            }
            Reason::AudienceMismatch => {
                "request a token for this API's audience, or add it to the route's auth.audiences"
            }
            Reason::TokenExpired => {
                "get a new token; if fresh tokens fail, compare the clocks of the authorization server and the gateway"
            }
            Reason::TokenNotYetValid => {
                "the authorization server's clock is ahead of the gateway's: fix the clocks or raise the issuer's leeway"
            }
            Reason::ScopeInsufficient => "request the missing scopes when getting the token",
            Reason::ClaimMismatch => "the token's claims do not satisfy the route's claim rules",
            Reason::UpstreamUnreachable => {
                "the upstream cannot be reached: check the target address, the service and TLS"
            }
            Reason::UpstreamTimeout => {
                "the upstream answers too slowly: check it, or raise the route's timeout"
            }
            Reason::UpstreamProtocolError => {
                "the upstream does not speak HTTP as expected: check the target's scheme and port"
            }
            Reason::UpstreamStreamAborted => {
                "the upstream broke off its response mid-way (crash, timeout, a reset between it and the gateway): check the upstream's logs at the request's time; the client's SDK saw an error, not a truncated answer"
            }
            Reason::TokenBudgetExhausted => {
                "the key's AI token budget is spent: retry after the Retry-After seconds, or raise the policy's tokens (the detail names the policy and what it is kept per)"
            }
            Reason::ModelNotAllowed => {
                "ask for a model the route serves (the detail lists them: the routes' match.models), or get a token granting it (the route's auth.models: a scope such as model:<name>, or the claim it names)"
            }
            Reason::UpstreamCredentialUnavailable => {
                "the gateway cannot get the upstream's token: check the token endpoint (the detail and /readyz name the failing layer: DNS, TCP, TLS, HTTP status, the AS's error such as invalid_client) and upstreams.<name>.credential.oauth"
            }
        }
    }

    /// Looks a code up by its stable name.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A per-request denial: the reason and a human detail that never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The catalogue reason.
    pub reason: Reason,
    /// A precise human-readable explanation (e.g. `token expired 3m12s ago`).
    pub detail: String,
    /// For `scope_insufficient`: the scopes the route requires, for the challenge.
    pub required_scope: Option<String>,
}

impl Rejection {
    /// A rejection with a detail message.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            required_scope: None,
        }
    }

    /// The same refusal told with no detail of the gateway's configuration (no
    /// URLs, accepted issuers or required claim values): the reason's title and a
    /// pointer to the log, where the full detail stays. The scope hint is kept, as
    /// RFC 6750 clients need it to ask for the right token.
    pub fn minimal(&self) -> Rejection {
        Rejection {
            reason: self.reason,
            detail: format!(
                "{}; the gateway's log has the details under this request_id",
                self.reason.title()
            ),
            required_scope: self.required_scope.clone(),
        }
    }

    /// Adds the scope list for an `insufficient_scope` challenge.
    pub fn with_required_scope(mut self, scope: impl Into<String>) -> Self {
        self.required_scope = Some(scope.into());
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {r}");
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
        }
    }

    #[test]
    fn token_problems_are_401_invalid_token() {
        assert_eq!(Reason::TokenExpired.status(), 401);
        assert_eq!(Reason::TokenExpired.challenge(), Challenge::InvalidToken);
        assert_eq!(Reason::TokenMissing.challenge(), Challenge::Bare);
        assert_eq!(Reason::ScopeInsufficient.status(), 403);
        assert_eq!(Reason::IpDenied.challenge(), Challenge::None);
        assert_eq!(Reason::IdpUnavailable.status(), 503);
    }

    #[test]
    fn auth_decisions_are_token_and_network_reasons() {
        for r in [
            Reason::TokenMissing,
            Reason::TokenExpired,
            Reason::ScopeInsufficient,
            Reason::IpDenied,
            Reason::IdpUnavailable,
        ] {
            assert!(r.is_auth_decision(), "{r}");
        }
        for r in [
            Reason::RouteNotFound,
            Reason::UpstreamTimeout,
            Reason::BodyTooLarge,
            Reason::Overloaded,
        ] {
            assert!(!r.is_auth_decision(), "{r}");
        }
    }
}
