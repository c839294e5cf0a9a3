//! One configuration generation, compiled for the request path: the route table,
//! issuer key caches, upstream pools and metric handles. Immutable once built; a
//! reload builds a new one beside it, reusing the caches and pools of issuers and
//! upstreams whose settings did not change.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use http::HeaderName;
use portcullis_config::{
    GatewayConfig, IssuerConfig, ProtectedRoute, RateStore, RouteAuth, RouteConfig,
};
use portcullis_jwks::{Introspector, JwksObserver, KeyCache};
use portcullis_metrics::{IssuerMetrics, Metrics, RouteMetrics};

use crate::ai_request::BodyNeed;
use crate::introspect::OpaqueTokens;
use crate::rate_limit::{PolicyLimiter, RouteLimit};
use crate::rate_store::SharedStore;
use crate::route_table::RouteTable;
use crate::upstream::UpstreamPool;

/// An issuer, its key cache and its introspection client.
pub struct IssuerRuntime {
    /// Its configuration.
    pub config: Arc<IssuerConfig>,
    /// Its keys; `None` for an issuer of opaque tokens only.
    pub keys: Option<Arc<KeyCache>>,
    /// Its introspection client (`tokens: opaque` or `auto`).
    pub opaque: Option<Arc<OpaqueTokens>>,
    /// Its metric handles, resolved once.
    pub metrics: IssuerMetrics,
}

/// A route ready for the request path.
pub struct CompiledRoute {
    /// Its configuration.
    pub config: Arc<RouteConfig>,
    /// Its metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// Its upstream.
    pub upstream: Arc<UpstreamPool>,
    /// Its upstream and `fallback` upstreams, in the order they are tried
    /// (the first is `upstream`).
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// How much of the request body it reads before forwarding.
    pub body_need: BodyNeed,
    /// Accepted issuers by `iss`.
    pub issuers: HashMap<String, Arc<IssuerRuntime>>,
    /// The largest token any accepted issuer takes.
    pub max_token_bytes: usize,
    /// Its rate-limit policies, with their metric handles.
    pub rate_limits: Vec<RouteLimit>,
    /// The one issuer of the route that introspects opaque tokens, if any.
    pub introspecting: Option<Arc<IssuerRuntime>>,
}

impl CompiledRoute {
    /// The protection settings, `None` for a public route.
    pub fn protected(&self) -> Option<&ProtectedRoute> {
        match &self.config.auth {
            RouteAuth::Public => None,
            RouteAuth::Protected(p) => Some(p),
        }
    }
}

/// A compiled configuration generation.
pub struct Runtime {
    /// The validated configuration.
    pub config: Arc<GatewayConfig>,
    /// The route matcher.
    pub table: RouteTable<Arc<CompiledRoute>>,
    /// Issuers by name.
    pub issuers: BTreeMap<String, Arc<IssuerRuntime>>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
    /// Metric handles for requests no route matches.
    pub unmatched: Arc<RouteMetrics>,
    /// Headers the gateway sets on some route (every route's claim headers):
    /// a client's copy is stripped on every route, so no route, public ones
    /// included, can carry a forged one to an upstream that another route feeds.
    pub owned_headers: Vec<HeaderName>,
    /// A limiter per rate-limit policy, by name.
    pub limiters: BTreeMap<String, Arc<PolicyLimiter>>,
    /// The shared rate-limit store, when one is configured.
    pub rate_store: Option<Arc<SharedStore>>,
    /// Protected resource metadata documents (RFC 9728) by path.
    pub resource_metadata: BTreeMap<String, bytes::Bytes>,
}

impl Runtime {
    /// Compiles `config`, reusing issuer caches and upstream pools of `previous`
    /// whose settings are unchanged. New key caches get a background refresher.
    pub fn build(
        config: GatewayConfig,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
        observer: &Arc<dyn JwksObserver>,
    ) -> Result<Runtime, String> {
        Self::build_with(config, previous, metrics, observer, true)
    }

    /// As [`Runtime::build`]; `refresh_in_background: false` leaves key fetching
    /// to the caller (the `diagnose` command fetches once, explicitly).
    pub fn build_with(
        config: GatewayConfig,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
        observer: &Arc<dyn JwksObserver>,
        refresh_in_background: bool,
    ) -> Result<Runtime, String> {
        let mut issuers = BTreeMap::new();
        for (name, ic) in &config.issuers {
            let reused = previous
                .and_then(|p| p.issuers.get(name))
                .filter(|old| *old.config == **ic)
                .cloned();
            let runtime = match reused {
                Some(r) => r,
                None => Arc::new(issuer_runtime(
                    name,
                    ic,
                    metrics,
                    observer,
                    refresh_in_background,
                )?),
            };
            issuers.insert(name.clone(), runtime);
        }
        let mut upstreams = BTreeMap::new();
        for (name, uc) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| **old.config() == **uc)
                .cloned();
            let pool = match reused {
                Some(p) => p,
                None => {
                    let pool = Arc::new(
                        UpstreamPool::new(Arc::clone(uc), metrics.upstream(name))
                            .map_err(|e| format!("upstreams.{name}: {e}"))?,
                    );
                    if refresh_in_background && let Some(token) = pool.token() {
                        token.spawn_renewal();
                    }
                    pool
                }
            };
            upstreams.insert(name.clone(), pool);
        }
        // A policy whose settings did not change keeps its limiter, and so
        // every key's budget; a changed or new one starts afresh.
        let max_keys = config.rate_limits.max_keys;
        let limiters: BTreeMap<String, Arc<PolicyLimiter>> = config
            .rate_limits
            .policies
            .iter()
            .map(|(name, policy)| {
                let reused = previous
                    .and_then(|p| p.limiters.get(name))
                    .filter(|old| *old.policy == **policy && old.max_keys == max_keys)
                    .cloned();
                let limiter = reused
                    .unwrap_or_else(|| Arc::new(PolicyLimiter::new(Arc::clone(policy), max_keys)));
                (name.clone(), limiter)
            })
            .collect();
        let rate_store = match &config.rate_limits.store {
            RateStore::Local => None,
            RateStore::Redis(settings) => Some(
                match previous
                    .and_then(|p| p.rate_store.as_ref())
                    .filter(|old| old.settings == *settings)
                {
                    Some(kept) => Arc::clone(kept),
                    None => {
                        let store = Arc::new(SharedStore::new(settings.clone(), metrics));
                        if refresh_in_background {
                            store.probe_in_background();
                        }
                        store
                    }
                },
            ),
        };
        if let Some(store) = &rate_store {
            for limiter in limiters.values() {
                store.register(limiter);
            }
            if refresh_in_background {
                store.start_sync();
            }
        }
        let mut compiled = Vec::with_capacity(config.routes.len());
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        for rc in &config.routes {
            let chain = rc
                .upstream_chain()
                .map(|name| {
                    upstreams
                        .get(name)
                        .cloned()
                        .ok_or_else(|| format!("route {}: unknown upstream {name}", rc.name))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let upstream = Arc::clone(&chain[0]);
            let body_need = body_need(rc, &chain);
            let (route_issuers, max_token_bytes) = match &rc.auth {
                RouteAuth::Public => (HashMap::new(), 8 << 10),
                RouteAuth::Protected(p) => {
                    // By issuer name: two issuer entries may share an `iss` with
                    // different rules, each route using its own.
                    let map: HashMap<String, Arc<IssuerRuntime>> = p
                        .issuers
                        .iter()
                        .filter_map(|(iss, ic)| {
                            issuers.get(&ic.name).map(|r| (iss.clone(), Arc::clone(r)))
                        })
                        .collect();
                    let max = map
                        .values()
                        .map(|i| i.config.max_token_bytes)
                        .max()
                        .unwrap_or(8 << 10);
                    for (_, header) in &p.claim_headers {
                        if !owned_headers.contains(header) {
                            owned_headers.push(header.clone());
                        }
                    }
                    (map, max)
                }
            };
            let rate_limits = rc
                .rate_limits
                .iter()
                .filter_map(|p| limiters.get(&p.name))
                .map(|l| RouteLimit::new(Arc::clone(l), rate_store.clone(), &rc.name, metrics))
                .collect();
            let route = CompiledRoute {
                config: Arc::clone(rc),
                metrics: metrics.route(&rc.name),
                upstream,
                upstreams: chain,
                body_need,
                max_token_bytes,
                introspecting: route_issuers.values().find(|i| i.opaque.is_some()).cloned(),
                issuers: route_issuers,
                rate_limits,
            };
            compiled.push((rc.matcher.clone(), Arc::new(route)));
        }
        Ok(Runtime {
            table: RouteTable::new(compiled),
            unmatched: metrics.route("unmatched"),
            owned_headers,
            limiters,
            rate_store,
            resource_metadata: crate::resource_metadata::documents(&config),
            config: Arc::new(config),
            issuers,
            upstreams,
        })
    }
}

/// What a route reads of its request bodies: the model when it routes or
/// authorizes by it or an upstream rewrites it; the bytes when it may send
/// them twice (fallback); else nothing (streamed).
fn body_need(rc: &RouteConfig, chain: &[Arc<UpstreamPool>]) -> BodyNeed {
    let grants_models = match &rc.auth {
        RouteAuth::Protected(p) => p.models.is_some(),
        RouteAuth::Public => false,
    };
    let keyed_by_model = rc
        .rate_limits
        .iter()
        .any(|p| p.key.contains(&portcullis_config::RateKeyPart::Model));
    if rc.matcher.models.is_some()
        || grants_models
        || keyed_by_model
        || chain.iter().any(|u| u.config().rewrites_body())
    {
        BodyNeed::Model
    } else if chain.len() > 1 {
        BodyNeed::Whole
    } else {
        BodyNeed::Stream
    }
}

/// Builds an issuer's key cache (with its background refresher, unless
/// `refresh_in_background` is off) and its introspection client.
fn issuer_runtime(
    name: &str,
    ic: &Arc<IssuerConfig>,
    metrics: &Arc<Metrics>,
    observer: &Arc<dyn JwksObserver>,
    refresh_in_background: bool,
) -> Result<IssuerRuntime, String> {
    let keys = match &ic.source {
        Some(source) => {
            let keys = KeyCache::new(
                ic.rules.issuer.clone(),
                source.clone(),
                ic.jwks.clone(),
                ic.rules.algorithms.clone(),
                Arc::clone(observer),
            )
            .map_err(|e| format!("issuers.{name}: {e}"))?;
            let keys = Arc::new(keys);
            if refresh_in_background {
                keys.spawn_refresher();
            }
            Some(keys)
        }
        None => None,
    };
    let opaque = match &ic.introspection {
        Some(settings) => {
            let client = Introspector::new(
                ic.rules.issuer.clone(),
                settings.clone(),
                Arc::clone(observer),
            )
            .map_err(|e| format!("issuers.{name}.introspection: {e}"))?;
            Some(Arc::new(OpaqueTokens::new(
                client,
                metrics.introspection(&ic.rules.issuer),
            )))
        }
        None => None,
    };
    Ok(IssuerRuntime {
        config: Arc::clone(ic),
        keys,
        opaque,
        metrics: metrics.issuer(&ic.rules.issuer),
    })
}
