//! The authenticate step: bearer extraction, the verified-token cache, and JWT
//! verification on the issuer's current key snapshot. The only step that may
//! await, and only when keys are missing (one single-flight refresh, then verify
//! again); in steady state it reads a snapshot lock-free. Each sub-step records
//! itself in the decision trace (`authorization_header` … `time`).

use std::sync::Arc;

use http::HeaderMap;
use portcullis_jwks::KidLookup;
use portcullis_metrics::{Metrics, TokenCacheEvent};
use portcullis_policy::verify::{check_claims, check_header, printable, verify_signature};
use portcullis_policy::{Reason, Rejection, UnverifiedToken, VerifiedClaims, bearer, jws};

use crate::decision::{DecisionTrace, KeyFetch, Step};
use crate::evidence;
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
    trace: &mut DecisionTrace,
) -> Result<Authenticated, Rejection> {
    let token = trace.check(
        Step::AuthorizationHeader,
        extract_token(route, headers, query),
    )?;
    trace.note(Step::AuthorizationHeader, || {
        format!(
            "one Bearer token of {} bytes (limit {})",
            token.len(),
            route.max_token_bytes
        )
    });
    // With the cache off there is nothing to hash for, and no hit or miss to count.
    let key = cache.is_enabled().then(|| token_key(token));
    if let Some(key) = &key
        && let Some(claims) = cache.get(key, |iss| {
            route.issuers.get(iss).map(|i| Arc::clone(&i.keys))
        })
    {
        metrics.token_cache(TokenCacheEvent::Hit, 1);
        trace.pass_with(Step::TokenCache, || {
            "hit: verified earlier with the issuer's current keys, so decoding and the signature are skipped".to_owned()
        });
        let leeway = route
            .issuers
            .get(&*claims.issuer)
            .map_or(0, |i| i.config.rules.leeway_secs);
        trace.check(Step::Time, claims.check_time(now, leeway))?;
        trace.note(Step::Time, || evidence::time(&claims, now, leeway));
        return Ok(Authenticated { claims });
    }
    if key.is_some() {
        metrics.token_cache(TokenCacheEvent::Miss, 1);
        trace.pass_with(Step::TokenCache, || {
            "miss: the token is verified".to_owned()
        });
    } else {
        trace.skip(Step::TokenCache, || "the token cache is off".to_owned());
    }
    let unverified = trace.check(Step::TokenStructure, jws::decode(token))?;
    trace.note(Step::TokenStructure, || {
        evidence::token_structure(&unverified)
    });
    let issuer = trace.check(Step::Issuer, select_issuer(route, &unverified))?;
    trace.note(Step::Issuer, || {
        format!(
            "iss {} is issuer {} (keys: {:?})",
            unverified.issuer().map_or("-".to_owned(), printable),
            issuer.config.name,
            issuer.config.source
        )
    });
    if token.len() > issuer.config.max_token_bytes {
        trace.fail(Step::AuthorizationHeader, Reason::TokenTooLarge);
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
    let (claims, generation) = verify_with_refresh(issuer, unverified, now, trace).await?;
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
    trace: &mut DecisionTrace,
) -> Result<(VerifiedClaims, u64), Rejection> {
    let rules = &issuer.config.rules;
    // Header checks first, so `alg: none` or a foreign algorithm never costs a fetch.
    trace.check(Step::TokenHeader, check_header(&token, rules))?;
    trace.note(Step::TokenHeader, || evidence::token_header(&token, issuer));
    let kid = token.header.kid.as_deref();
    let state = match issuer.keys.usable_state() {
        Some(s) => s,
        None => {
            timed_refresh(issuer, kid, trace).await;
            trace.note(Step::Keys, || {
                "no usable keys were cached: fetched them for this request".to_owned()
            });
            match issuer.keys.usable_state() {
                Some(state) => state,
                None => {
                    trace.fail(Step::Keys, Reason::IdpUnavailable);
                    return Err(idp_unavailable(issuer));
                }
            }
        }
    };
    trace.pass_with(Step::Keys, || evidence::keys(issuer));
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
        Err(r) if r.reason == Reason::KeyUnknown => match timed_refresh(issuer, kid, trace).await {
            KidLookup::Found => {
                trace.note(Step::Kid, || {
                    "the kid was unknown: the key set was fetched again and now has it".to_owned()
                });
                let Some(fresh) = issuer.keys.usable_state() else {
                    trace.fail(Step::Keys, Reason::IdpUnavailable);
                    return Err(idp_unavailable(issuer));
                };
                if let Err(r) = signature(&fresh.snapshot) {
                    trace.fail(signature_step(r.reason), r.reason);
                    return Err(r);
                }
                fresh.generation
            }
            KidLookup::Unknown => {
                trace.fail(Step::Kid, r.reason);
                return Err(r);
            }
        },
        Err(r) => {
            trace.fail(signature_step(r.reason), r.reason);
            return Err(r);
        }
    };
    trace.pass(Step::Kid);
    trace.pass(Step::Signature);
    trace.note(Step::Kid, || evidence::kid(&token, issuer));
    trace.note(Step::Signature, || {
        format!(
            "{} signature verifies with key {}",
            token.header.alg,
            kid.map_or("(single key)".to_owned(), printable)
        )
    });
    let claims = trace.check_by(
        Step::Time,
        claims_step,
        check_claims(token.claims, rules, now),
    )?;
    trace.note(Step::Time, || {
        evidence::time(&claims, now, rules.leeway_secs)
    });
    Ok((claims, generation))
}

/// The key refetch of an unknown kid or a missing key set; a verbose trace
/// (diagnose, a sampled request) records when it ran, for its span.
async fn timed_refresh(
    issuer: &IssuerRuntime,
    kid: Option<&str>,
    trace: &mut DecisionTrace,
) -> KidLookup {
    let began = trace.is_verbose().then(std::time::Instant::now);
    let found = issuer.keys.refresh_for_kid(kid).await;
    if let Some(began) = began {
        trace.key_fetch = Some(KeyFetch {
            began,
            ended: std::time::Instant::now(),
            issuer: Arc::clone(&issuer.config),
            found: found == KidLookup::Found,
        });
    }
    found
}

/// Where a signature check's failure belongs.
fn signature_step(reason: Reason) -> Step {
    match reason {
        Reason::KeyUnknown => Step::Kid,
        Reason::AlgorithmNotAllowed => Step::TokenHeader,
        _ => Step::Signature,
    }
}

/// Where a claims check's failure belongs (it checks `iss` again, the claim
/// types and the times).
fn claims_step(reason: Reason) -> Step {
    match reason {
        Reason::IssuerMismatch => Step::Issuer,
        Reason::TokenMalformed => Step::TokenStructure,
        _ => Step::Time,
    }
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
