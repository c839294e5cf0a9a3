//! The authenticate step: bearer extraction, the verified-token cache, and JWT
//! verification on the issuer's current key snapshot. The only step that may
//! await, and only when keys are missing (one single-flight refresh, then verify
//! again); in steady state it reads a snapshot lock-free. Each sub-step records
//! itself in the decision trace (`authorization_header` … `time`).

use std::sync::Arc;

use http::HeaderMap;
use portcullis_jwks::{KeyCache, KidLookup};
use portcullis_metrics::{Metrics, TokenCacheEvent};
use portcullis_policy::verify::{check_claims, check_header, printable, verify_signature};
use portcullis_policy::{Reason, Rejection, UnverifiedToken, VerifiedClaims, bearer, jws};

use crate::decision::{DecisionTrace, KeyFetch, Step};
use crate::evidence;
use crate::runtime::{CompiledRoute, IssuerRuntime};
use crate::token_cache::{Lookup, TokenCache, TokenKey, token_key};

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
    let introspector = route.introspecting.as_ref().and_then(|i| i.opaque.as_ref());
    let mut stale = None;
    if let Some(key) = &key {
        let lookup = cache.get(
            key,
            |iss| route.issuers.get(iss).and_then(|i| i.keys.clone()),
            introspector,
        );
        match lookup {
            Lookup::Hit(claims) => return cached(route, claims, metrics, now, trace),
            Lookup::Introspected(claims) => {
                if let Some(opaque) = introspector {
                    crate::introspect::hit(opaque);
                }
                trace.pass_with(Step::TokenCache, || {
                    "hit: the authorization server said active, and the answer is within its cache lifetime".to_owned()
                });
                return cached_times(route, claims, now, trace, metrics);
            }
            Lookup::Inactive(age) => {
                metrics.token_cache(TokenCacheEvent::Hit, 1);
                trace.pass_with(Step::TokenCache, || {
                    "hit: the authorization server said inactive".to_owned()
                });
                let opaque = introspector.ok_or_else(crate::introspect::inactive)?;
                return Err(crate::introspect::inactive_cached(opaque, age, trace));
            }
            Lookup::Stale(claims, age) => stale = Some((claims, age)),
            Lookup::Miss => {}
        }
        metrics.token_cache(TokenCacheEvent::Miss, 1);
        trace.pass_with(Step::TokenCache, || {
            "miss: the token is verified".to_owned()
        });
    } else {
        trace.skip(Step::TokenCache, || "the token cache is off".to_owned());
    }
    let unverified = match jws::decode(token) {
        Ok(unverified) => unverified,
        // Not a compact JWS: an opaque token, for the route's introspecting
        // issuer if it has one.
        Err(rejection) => {
            let Some(issuer) = &route.introspecting else {
                trace.fail(Step::TokenStructure, rejection.reason);
                return Err(rejection);
            };
            trace.pass_with(Step::TokenStructure, || {
                "not a compact JWS: an opaque token".to_owned()
            });
            trace.pass_with(Step::Issuer, || {
                format!(
                    "issuer {} introspects this route's opaque tokens (tokens: {})",
                    issuer.config.name,
                    issuer.config.tokens.as_str()
                )
            });
            return introspected(issuer, token, key, stale, cache, now, trace).await;
        }
    };
    trace.pass(Step::TokenStructure);
    trace.note(Step::TokenStructure, || {
        evidence::token_structure(&unverified)
    });
    let issuer = trace.check(Step::Issuer, select_issuer(route, &unverified))?;
    trace.note(Step::Issuer, || {
        format!(
            "iss {} is issuer {} (tokens: {}; keys: {:?})",
            unverified.issuer().map_or("-".to_owned(), printable),
            issuer.config.name,
            issuer.config.tokens.as_str(),
            issuer.config.source
        )
    });
    // A JWT naming an issuer of opaque tokens only goes to that issuer's
    // introspection endpoint; any other JWT is verified here, never sent out.
    let Some(keys) = &issuer.keys else {
        return introspected(issuer, token, key, stale, cache, now, trace).await;
    };
    check_size(issuer, token, trace)?;
    if issuer.opaque.is_some() {
        trace.skip(Step::Introspection, || {
            "a JWT of an issuer with tokens: auto: verified with its keys, never sent out"
                .to_owned()
        });
    }
    let (claims, generation) = verify_with_refresh(issuer, keys, unverified, now, trace).await?;
    let claims = Arc::new(claims);
    if let Some(iat) = claims.issued_at {
        issuer.metrics.clock_offset((now - iat) as f64);
    }
    // The entry records the key-set generation that verified it; a rotation makes
    // it stale.
    if let Some(key) = key {
        let evicted = cache.insert(key, Arc::clone(&claims), Arc::clone(keys), generation, now);
        if evicted > 0 {
            metrics.token_cache(TokenCacheEvent::Eviction, evicted);
        }
    }
    Ok(Authenticated { claims })
}

/// A token-cache hit: only the times are checked again.
fn cached(
    route: &CompiledRoute,
    claims: Arc<VerifiedClaims>,
    metrics: &Metrics,
    now: i64,
    trace: &mut DecisionTrace,
) -> Result<Authenticated, Rejection> {
    trace.pass_with(Step::TokenCache, || {
        "hit: verified earlier with the issuer's current keys, so decoding and the signature are skipped".to_owned()
    });
    cached_times(route, claims, now, trace, metrics)
}

/// The time checks of cached claims, counted as a cache hit.
fn cached_times(
    route: &CompiledRoute,
    claims: Arc<VerifiedClaims>,
    now: i64,
    trace: &mut DecisionTrace,
    metrics: &Metrics,
) -> Result<Authenticated, Rejection> {
    metrics.token_cache(TokenCacheEvent::Hit, 1);
    let leeway = route
        .issuers
        .get(&*claims.issuer)
        .map_or(0, |i| i.config.rules.leeway_secs);
    trace.check(Step::Time, claims.check_time(now, leeway))?;
    trace.note(Step::Time, || evidence::time(&claims, now, leeway));
    Ok(Authenticated { claims })
}

/// The issuer's size cap, checked before any verification or network call.
fn check_size(
    issuer: &IssuerRuntime,
    token: &str,
    trace: &mut DecisionTrace,
) -> Result<(), Rejection> {
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
    Ok(())
}

/// An opaque token (or a JWT naming an issuer of opaque tokens only): the
/// size cap, then the issuer's introspection endpoint.
async fn introspected(
    issuer: &IssuerRuntime,
    token: &str,
    key: Option<TokenKey>,
    stale: Option<(Arc<VerifiedClaims>, std::time::Duration)>,
    cache: &TokenCache,
    now: i64,
    trace: &mut DecisionTrace,
) -> Result<Authenticated, Rejection> {
    check_size(issuer, token, trace)?;
    let Some(opaque) = &issuer.opaque else {
        trace.fail(Step::Introspection, Reason::TokenMalformed);
        return Err(Rejection::new(
            Reason::TokenMalformed,
            format!(
                "issuer {} verifies JWTs only (tokens: jwt)",
                issuer.config.name
            ),
        ));
    };
    for step in [Step::TokenHeader, Step::Keys, Step::Kid, Step::Signature] {
        trace.skip(step, || {
            "an introspected token: the authorization server vouches for it, there is no signature to check".to_owned()
        });
    }
    let key = key.unwrap_or_else(|| token_key(token));
    let claims =
        crate::introspect::introspect(issuer, opaque, token, key, stale, cache, now, trace).await?;
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
    keys: &KeyCache,
    token: UnverifiedToken<'_>,
    now: i64,
    trace: &mut DecisionTrace,
) -> Result<(VerifiedClaims, u64), Rejection> {
    let rules = &issuer.config.rules;
    // Header checks first, so `alg: none` or a foreign algorithm never costs a fetch.
    trace.check(Step::TokenHeader, check_header(&token, rules))?;
    trace.note(Step::TokenHeader, || evidence::token_header(&token, issuer));
    let kid = token.header.kid.as_deref();
    let state = match keys.usable_state() {
        Some(s) => s,
        None => {
            timed_refresh(issuer, keys, kid, trace).await;
            trace.note(Step::Keys, || {
                "no usable keys were cached: fetched them for this request".to_owned()
            });
            match keys.usable_state() {
                Some(state) => state,
                None => {
                    trace.fail(Step::Keys, Reason::IdpUnavailable);
                    return Err(idp_unavailable(issuer, keys));
                }
            }
        }
    };
    trace.pass_with(Step::Keys, || evidence::keys(issuer, keys));
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
        Err(r) if r.reason == Reason::KeyUnknown => match timed_refresh(issuer, keys, kid, trace)
            .await
        {
            KidLookup::Found => {
                trace.note(Step::Kid, || {
                    "the kid was unknown: the key set was fetched again and now has it".to_owned()
                });
                let Some(fresh) = keys.usable_state() else {
                    trace.fail(Step::Keys, Reason::IdpUnavailable);
                    return Err(idp_unavailable(issuer, keys));
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
    trace.note(Step::Kid, || evidence::kid(&token, keys));
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
    keys: &KeyCache,
    kid: Option<&str>,
    trace: &mut DecisionTrace,
) -> KidLookup {
    let began = trace.is_verbose().then(std::time::Instant::now);
    let found = keys.refresh_for_kid(kid).await;
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

fn idp_unavailable(issuer: &IssuerRuntime, keys: &KeyCache) -> Rejection {
    let state = keys.state();
    let why = state
        .last_error
        .as_deref()
        .unwrap_or("no key set fetched yet");
    Rejection::new(
        Reason::IdpUnavailable,
        format!("no usable keys for issuer {}: {why}", issuer.config.name),
    )
}
