//! The `introspection` sub-step of `authenticate`: an opaque token (or a JWT
//! naming an issuer of opaque tokens) is asked about at the issuer's RFC 7662
//! endpoint, and the answer is held to the same rules as a verified JWT.
//!
//! - **Single flight**: concurrent requests with the same new token wait for
//!   one call; a burst of one token makes one call. A flight left by a
//!   cancelled request is taken over by a waiting one.
//! - **Cache**: an active answer is cached until `exp` and at most `cache_ttl`,
//!   an inactive one for `negative_cache_ttl`, in the verified-token cache
//!   (SHA-256 of the token, bounded in entries and bytes).
//! - **Outages**: an authorization server that cannot answer is
//!   `idp_unavailable` (503), never a 401; a cached active answer past
//!   `cache_ttl` keeps serving for `max_stale` while it fails.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use portcullis_jwks::{IntrospectionError, Introspector};
use portcullis_metrics::{IntrospectionCacheResult, IntrospectionMetrics};
use portcullis_policy::{
    IntrospectionAnswer, Reason, Rejection, VerifiedClaims, check_introspected,
};
use tokio::sync::OnceCell;

use crate::decision::{DecisionTrace, Step};
use crate::evidence;
use crate::runtime::IssuerRuntime;
use crate::token_cache::{Lookup, TokenCache, TokenKey};

/// What a flight decided about a token.
#[derive(Clone)]
enum Decided {
    /// Active, and its claims pass the registered-claim checks.
    Active(Arc<VerifiedClaims>),
    /// Refused: inactive, or claims that fail (expired, another issuer, …).
    Refused(Rejection),
    /// The authorization server gave no answer.
    Unavailable(IntrospectionError),
}

type Flight = Arc<OnceCell<Decided>>;

/// The opaque-token side of one issuer: its introspection client, the flights
/// in progress, and its metric handles.
pub struct OpaqueTokens {
    /// The client.
    pub client: Introspector,
    flights: DashMap<TokenKey, Flight, foldhash::fast::RandomState>,
    metrics: IntrospectionMetrics,
}

impl OpaqueTokens {
    /// Wraps a client.
    pub fn new(client: Introspector, metrics: IntrospectionMetrics) -> Self {
        OpaqueTokens {
            client,
            flights: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            metrics,
        }
    }

    /// Calls in progress (for tests and the status page).
    pub fn flights(&self) -> usize {
        self.flights.len()
    }

    /// `unknown` (no call yet), `answering` or `failing`.
    pub fn status(&self) -> &'static str {
        match self.client.health().answering {
            None => "unknown",
            Some(true) => "answering",
            Some(false) => "failing",
        }
    }

    /// One line for `/readyz` and the status page.
    pub fn describe(&self) -> String {
        let health = self.client.health();
        let endpoint = self
            .client
            .endpoint()
            .map_or("to be discovered".to_owned(), |u| u.to_string());
        let since = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.elapsed().ok())
                .map_or("-".to_owned(), |d| {
                    format!(
                        "{} ago",
                        portcullis_policy::time::human_duration(d.as_secs() as i64)
                    )
                })
        };
        match health.answering {
            None => format!("introspection at {endpoint}: no call yet"),
            Some(true) => format!(
                "introspection at {endpoint}: answering (last answer {})",
                since(health.last_success)
            ),
            Some(false) => format!(
                "introspection at {endpoint}: FAILING since {} ({}); tokens not cached answer 503 idp_unavailable",
                since(health.failing_since),
                health.last_error.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// Removes a flight from the map when its request is done, finished or
/// cancelled, unless another flight has replaced it.
struct FlightGuard<'a> {
    flights: &'a DashMap<TokenKey, Flight, foldhash::fast::RandomState>,
    key: TokenKey,
    flight: Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
    }
}

/// Decides about `token` at `issuer`'s introspection endpoint. `stale` is a
/// cached answer past its lifetime, served only if the endpoint fails.
#[allow(clippy::too_many_arguments)]
pub async fn introspect(
    issuer: &IssuerRuntime,
    opaque: &Arc<OpaqueTokens>,
    token: &str,
    key: TokenKey,
    stale: Option<(Arc<VerifiedClaims>, Duration)>,
    cache: &TokenCache,
    now: i64,
    trace: &mut DecisionTrace,
) -> Result<Arc<VerifiedClaims>, Rejection> {
    let flight = Arc::clone(opaque.flights.entry(key).or_default().value());
    let _guard = FlightGuard {
        flights: &opaque.flights,
        key,
        flight: Arc::clone(&flight),
    };
    let mut led = false;
    let began = trace.is_verbose().then(std::time::Instant::now);
    let decided = flight
        .get_or_init(|| {
            led = true;
            call(issuer, opaque, token, key, cache, now)
        })
        .await
        .clone();
    let result = if led { "miss" } else { "joined" };
    opaque.metrics.cache(if led {
        IntrospectionCacheResult::Miss
    } else {
        IntrospectionCacheResult::Joined
    });
    let waited = began.map(|b| b.elapsed());
    let settings = opaque.client.settings();
    match decided {
        Decided::Active(claims) => {
            trace.pass_with(Step::Introspection, || {
                format!(
                    "{} answered 200, active: true ({}); {}",
                    endpoint_text(opaque),
                    evidence::introspected(&claims),
                    how_decided(result, waited, settings.cache_ttl)
                )
            });
            trace.pass_with(Step::Time, || {
                evidence::time(&claims, now, issuer.config.rules.leeway_secs)
            });
            Ok(claims)
        }
        Decided::Refused(rejection) => {
            let step = match rejection.reason {
                Reason::IssuerMismatch => Step::Issuer,
                Reason::TokenExpired | Reason::TokenNotYetValid => Step::Time,
                _ => Step::Introspection,
            };
            if step != Step::Introspection {
                trace.pass_with(Step::Introspection, || {
                    format!(
                        "{}; active: true; {}",
                        endpoint_text(opaque),
                        how_decided(result, waited, settings.cache_ttl)
                    )
                });
            }
            trace.fail(step, rejection.reason);
            Err(rejection)
        }
        Decided::Unavailable(error) => {
            if let Some((claims, age)) = stale {
                opaque.metrics.cache(IntrospectionCacheResult::StaleServed);
                trace.pass_with(Step::Introspection, || {
                    format!(
                        "the authorization server gave no answer ({}: {error}); the answer cached {} ago (cache_ttl {}) serves within max_stale {}",
                        error.layer(),
                        portcullis_policy::time::human_duration(age.as_secs() as i64),
                        humantime(settings.cache_ttl),
                        humantime(settings.max_stale)
                    )
                });
                let leeway = issuer.config.rules.leeway_secs;
                trace.check(Step::Time, claims.check_time(now, leeway))?;
                trace.note(Step::Time, || evidence::time(&claims, now, leeway));
                return Ok(claims);
            }
            trace.fail(Step::Introspection, Reason::IdpUnavailable);
            Err(Rejection::new(
                Reason::IdpUnavailable,
                format!(
                    "introspection at issuer {} gave no answer ({}: {error})",
                    issuer.config.name,
                    error.layer()
                ),
            ))
        }
    }
}

/// The one call of a flight, and what it leaves in the cache.
async fn call(
    issuer: &IssuerRuntime,
    opaque: &Arc<OpaqueTokens>,
    token: &str,
    key: TokenKey,
    cache: &TokenCache,
    now: i64,
) -> Decided {
    // A flight that ended between this request's lookup and now left its
    // answer in the cache: no second call.
    match cache.get(&key, |_| None, Some(opaque)) {
        Lookup::Introspected(claims) => return Decided::Active(claims),
        Lookup::Inactive(_) => return Decided::Refused(inactive()),
        Lookup::Hit(_) | Lookup::Stale(..) | Lookup::Miss => {}
    }
    let settings = opaque.client.settings();
    match opaque.client.introspect(token).await {
        Ok(IntrospectionAnswer::Active(members)) => {
            match check_introspected(members, &issuer.config.rules, now) {
                Ok(claims) => {
                    let claims = Arc::new(claims);
                    cache.insert_introspected(
                        key,
                        Some(Arc::clone(&claims)),
                        Arc::clone(opaque),
                        settings.cache_ttl,
                        settings.max_stale,
                        now,
                    );
                    Decided::Active(claims)
                }
                Err(rejection) => Decided::Refused(rejection),
            }
        }
        Ok(IntrospectionAnswer::Inactive) => {
            cache.insert_introspected(
                key,
                None,
                Arc::clone(opaque),
                settings.negative_cache_ttl,
                Duration::ZERO,
                now,
            );
            Decided::Refused(inactive())
        }
        Err(e) => Decided::Unavailable(e),
    }
}

/// The refusal of a token the authorization server says is not active.
pub fn inactive() -> Rejection {
    Rejection::new(
        Reason::TokenInactive,
        "the authorization server says the token is not active (revoked, expired, unknown, or not for this gateway's client)",
    )
}

/// A cached inactive answer, as a refusal with its age.
pub fn inactive_cached(
    opaque: &OpaqueTokens,
    age: Duration,
    trace: &mut DecisionTrace,
) -> Rejection {
    opaque.metrics.cache(IntrospectionCacheResult::NegativeHit);
    let ttl = opaque.client.settings().negative_cache_ttl;
    trace.fail(Step::Introspection, Reason::TokenInactive);
    let mut r = inactive();
    r.detail.push_str(&format!(
        "; answered {} ago, kept for negative_cache_ttl {}",
        portcullis_policy::time::human_duration(age.as_secs() as i64),
        humantime(ttl)
    ));
    r
}

/// A cached active answer was used.
pub fn hit(opaque: &OpaqueTokens) {
    opaque.metrics.cache(IntrospectionCacheResult::Hit);
}

fn endpoint_text(opaque: &OpaqueTokens) -> String {
    match opaque.client.endpoint() {
        Some(url) => format!("POST {url}"),
        None => "the endpoint is not discovered yet".to_owned(),
    }
}

fn how_decided(result: &str, waited: Option<Duration>, ttl: Duration) -> String {
    let took = waited.map_or(String::new(), |w| {
        format!(" in {:.1} ms", w.as_secs_f64() * 1e3)
    });
    match result {
        "joined" => format!("joined the call another request made for this token{took}"),
        _ => format!(
            "asked now{took}, not cached before; the answer is reused for up to {}",
            humantime(ttl)
        ),
    }
}

fn humantime(d: Duration) -> String {
    portcullis_policy::time::human_duration(d.as_secs() as i64)
}
