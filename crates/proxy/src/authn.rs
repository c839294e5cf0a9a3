//! The authenticate step: bearer extraction, the verified-token cache, and JWT
//! verification on the issuer's current key snapshot. The only step that may
//! await, and only when keys are missing (one single-flight refresh, then verify
//! again); in steady state it reads a snapshot lock-free.

use std::sync::Arc;

use http::HeaderMap;
use portcullis_jwks::KidLookup;
use portcullis_metrics::{Metrics, TokenCacheEvent};
use portcullis_policy::verify::{check_claims, check_header, printable, verify_signature};
use portcullis_policy::{Reason, Rejection, UnverifiedToken, VerifiedClaims, bearer, jws};

use crate::runtime::{CompiledRoute, IssuerRuntime};
use crate::token_cache::{TokenCache, token_key};

/// Verified claims and the issuer's leeway (for later time re-checks).
pub struct Authenticated {
    /// The claims.
    pub claims: Arc<VerifiedClaims>,
}

/// Authenticates a request for `route`.
pub async fn authenticate(
    route: &CompiledRoute,
    headers: &HeaderMap,
    query: Option<&str>,
    cache: &TokenCache,
    metrics: &Metrics,
    now: i64,
) -> Result<Authenticated, Rejection> {
    let token = extract_token(route, headers, query)?;
    // With the cache off there is nothing to hash for, and no hit or miss to count.
    let key = cache.is_enabled().then(|| token_key(token));
    if let Some(key) = &key
        && let Some(claims) = cache.get(key, |iss| {
            route.issuers.get(iss).map(|i| Arc::clone(&i.keys))
        })
    {
        metrics.token_cache(TokenCacheEvent::Hit, 1);
        let leeway = route
            .issuers
            .get(&*claims.issuer)
            .map_or(0, |i| i.config.rules.leeway_secs);
        claims.check_time(now, leeway)?;
        return Ok(Authenticated { claims });
    }
    if key.is_some() {
        metrics.token_cache(TokenCacheEvent::Miss, 1);
    }
    let unverified = jws::decode(token)?;
    let issuer = select_issuer(route, &unverified)?;
    if token.len() > issuer.config.max_token_bytes {
        return Err(Rejection::new(
            Reason::TokenTooLarge,
            format!(
                "token is {} bytes; issuer {} allows {}",
                token.len(),
                issuer.config.name,
                issuer.config.max_token_bytes
            ),
        ));
    }
    let (claims, generation) = verify_with_refresh(issuer, unverified, now).await?;
    let claims = Arc::new(claims);
    if let Some(iat) = claims.issued_at {
        issuer.metrics.clock_offset((now - iat) as f64);
    }
    // The entry records the key-set generation that verified it; a rotation makes
    // it stale.
    if let Some(key) = key {
        let evicted = cache.insert(
            key,
            Arc::clone(&claims),
            Arc::clone(&issuer.keys),
            generation,
            now,
        );
        if evicted > 0 {
            metrics.token_cache(TokenCacheEvent::Eviction, evicted);
        }
    }
    Ok(Authenticated { claims })
}

/// The bearer token: from the Authorization header, or, when the route enables it
/// and no header is sent, from `?access_token=` (RFC 6750 §2.3). Both at once is
/// `request_malformed` (§2: a client uses one method only).
fn extract_token<'a>(
    route: &CompiledRoute,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<&'a str, Rejection> {
    let query_enabled = route.protected().is_some_and(|p| p.query_token);
    let in_query = query
        .filter(|_| query_enabled)
        .and_then(|q| bearer::extract_from_query(q, route.max_token_bytes));
    let header_sent = headers.contains_key(http::header::AUTHORIZATION);
    match (in_query, header_sent) {
        (Some(_), true) => Err(Rejection::new(
            Reason::RequestMalformed,
            "token sent both in the Authorization header and the query",
        )),
        (Some(token), false) => token,
        (None, _) => {
            let values = headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .map(|v| v.as_bytes());
            bearer::extract(values, route.max_token_bytes)
        }
    }
}

/// The route's issuer for the token's `iss`: a map lookup, never a trial of each.
fn select_issuer<'a>(
    route: &'a CompiledRoute,
    token: &UnverifiedToken<'_>,
) -> Result<&'a Arc<IssuerRuntime>, Rejection> {
    let Some(iss) = token.issuer() else {
        return Err(Rejection::new(
            Reason::IssuerMismatch,
            "token has no iss claim",
        ));
    };
    route.issuers.get(iss).ok_or_else(|| {
        let mut accepted: Vec<&str> = route.issuers.keys().map(String::as_str).collect();
        accepted.sort_unstable();
        Rejection::new(
            Reason::IssuerMismatch,
            format!(
                "iss {} is not accepted on this route; accepted: {}",
                printable(iss),
                accepted.join(", ")
            ),
        )
    })
}

/// Verifies on the current snapshot; on a missing key set or an unknown kid, one
/// single-flight refresh, then once more. The signature is checked by reference
/// (a retry needs the token again), then the claims move into the result, never
/// copied. Returns the claims and the key-set generation that verified them.
pub async fn verify_with_refresh(
    issuer: &IssuerRuntime,
    token: UnverifiedToken<'_>,
    now: i64,
) -> Result<(VerifiedClaims, u64), Rejection> {
    let rules = &issuer.config.rules;
    // Header checks first, so `alg: none` or a foreign algorithm never costs a fetch.
    check_header(&token, rules)?;
    let kid = token.header.kid.as_deref();
    let state = match issuer.keys.usable_state() {
        Some(s) => s,
        None => {
            issuer.keys.refresh_for_kid(kid).await;
            issuer
                .keys
                .usable_state()
                .ok_or_else(|| idp_unavailable(issuer))?
        }
    };
    let signature = |snapshot: &portcullis_policy::KeySnapshot| {
        verify_signature(
            &token.header,
            token.signing_input,
            &token.signature,
            rules,
            snapshot,
        )
    };
    let generation = match signature(&state.snapshot) {
        Ok(()) => state.generation,
        Err(r) if r.reason == Reason::KeyUnknown => match issuer.keys.refresh_for_kid(kid).await {
            KidLookup::Found => {
                let fresh = issuer
                    .keys
                    .usable_state()
                    .ok_or_else(|| idp_unavailable(issuer))?;
                signature(&fresh.snapshot)?;
                fresh.generation
            }
            KidLookup::Unknown => return Err(r),
        },
        Err(r) => return Err(r),
    };
    Ok((check_claims(token.claims, rules, now)?, generation))
}

fn idp_unavailable(issuer: &IssuerRuntime) -> Rejection {
    let state = issuer.keys.state();
    let why = state
        .last_error
        .as_deref()
        .unwrap_or("no key set fetched yet");
    Rejection::new(
        Reason::IdpUnavailable,
        format!("no usable keys for issuer {}: {why}", issuer.config.name),
    )
}
