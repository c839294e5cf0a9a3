//! The request pipeline: every step, in order, in this one file.
//!
//! ```text
//! request_id     accept or mint x-request-id
//! observe        access log + metrics, reading the reason the response carries
//! rescue         the one mapping of rejections to responses (reject.rs)
//! limits         in-flight cap, header size, declared body size
//! canonical      one authority (Host / absolute form / :authority agree) and one
//!                canonical path: what is matched is what the upstream receives
//! client_ip      peer address + the forwarding header its proxy sets, trusted hops
//!                removed from the right; an unparsable hop makes the client unknown
//! strip_spoofed  drop client copies of gateway-owned headers (all routes' claim
//!                headers, x-portcullis-*, underscore forms) and, from untrusted
//!                peers, forwarding and override headers
//! route          match against this request's RouteTable snapshot (routes matched by
//!                model: the JSON body read once, strictly, and its model picks the route)
//! upgrade        an Upgrade only for a protocol the route allows; h2c never; no CONNECT
//! ip_filter      global then route allow/deny CIDRs; deny wins; before any crypto
//! cors           a preflight answered here, before authentication (the browser
//!                sends no token with it); other responses decorated in `handle`
//! authenticate   bearer -> verified-token cache -> JWT verification -> claims
//! authorize      audience, required scopes and claim rules
//! model          a model-aware route's body read whole, its model granted to the token
//! rate_limit     the other rate-limit policies and token budgets
//! forward        hop-by-hop removal, credential injection, claim headers, model_map,
//!                pooled client, fallback upstreams before the first byte
//! ```
//!
//! Steps are plain functions called in sequence rather than a stack of generic
//! tower layers: the order is the same, visible in [`decide`], and the hot path
//! pays for no boxing between steps. Each step records its outcome in the
//! request's decision trace ([`crate::decision`]); `portcullis diagnose` runs
//! [`decide`] itself on a described request, so it explains exactly these steps.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use portcullis_config::{AuthMode, RefusalDetail, RequestIdSource, TraceparentSource};
use portcullis_metrics::Metrics;
use portcullis_policy::authority::{self, Framing};
use portcullis_policy::ip::IpSource;
use portcullis_policy::path::PathRules;
use portcullis_policy::{Reason, Rejection, VerifiedClaims, resolve_client_ip};

use crate::ai_request::{BodyNeed, ClientBody, ReadableBody};
use crate::authn::authenticate;
use crate::body::ProxyBody;
use crate::decision::Step;
use crate::evidence;
use crate::exchange::{Account, ExchangeBody};
use crate::forward::{ForwardContext, forward};
use crate::gateway::Gateway;
use crate::headers::{
    X_FORWARDED_FOR, X_REQUEST_ID, accept_or_mint_request_id, is_upgrade_request, mint_request_id,
    strip_spoofed, upgrade_protocols,
};
use crate::observe::{Decision, Trace};
use crate::reject;
use crate::route_table::{Lookup, normalise_host};
use crate::runtime::{CompiledRoute, Runtime};
use crate::token_cache::TokenCache;
use crate::tracecontext::TraceContext;

/// The downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub https: bool,
    /// The peer's address as a header value for `X-Forwarded-For`, made once per
    /// connection rather than once per request.
    pub peer_value: HeaderValue,
}

impl ConnInfo {
    /// The connection from `peer`.
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        let peer_value = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            https,
            peer_value,
        }
    }
}

/// Handles one request through every step; never fails.
pub async fn handle(
    gw: &Arc<Gateway>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ExchangeBody> {
    let started = Instant::now();
    let version = req.version();
    let is_head = req.method() == http::Method::HEAD;
    // Kept for the CORS headers of the response, whatever answers it (a
    // preflight's own answer has them, its refusal must not).
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|_| !crate::cors::is_preflight(req.method(), req.headers()))
        .cloned();
    // request_id: a trusted proxy's (or, if configured, any client's) when plain,
    // else minted.
    let runtime = gw.runtime();
    let network = &runtime.config.network;
    let accept_id = match network.request_id {
        RequestIdSource::Any => true,
        RequestIdSource::TrustedProxies => network.trusted_proxies.contains(conn.peer.ip()),
    };
    let request_id = if accept_id {
        accept_or_mint_request_id(req.headers())
    } else {
        mint_request_id()
    };
    // W3C trace context: continued from an accepted traceparent, else new.
    let tracing = &runtime.config.tracing;
    let trace_context = tracing.enabled.then(|| {
        let accept = match tracing.accept {
            TraceparentSource::Any => true,
            TraceparentSource::TrustedProxies => network.trusted_proxies.contains(conn.peer.ip()),
        };
        TraceContext::from_headers(req.headers(), accept, tracing.sample_ratio)
    });
    // observe: what the access log and metrics need, read before the request
    // moves; a sampled request keeps every step's evidence and its timings.
    let sampled = trace_context.as_ref().is_some_and(|t| t.sampled());
    let mut trace = Trace::new(&req, sampled);
    trace.trace_context = trace_context;
    if sampled {
        trace.timings = Some(Box::default());
    }
    // limits (in-flight): shed load before doing any work.
    let admitted = gw.admit();
    let result = match &admitted {
        Ok(_) => decide_and_forward(gw, &runtime, conn, req, &request_id, &mut trace).await,
        Err(rejection) => {
            trace.steps.fail(Step::Request, rejection.reason);
            Err(rejection.clone())
        }
    };
    // rescue: the one place rejections become responses.
    let mut response = match result {
        Ok(response) => response,
        Err(rejection) => {
            let id = request_id.to_str().unwrap_or("-");
            let mut r = match runtime.config.refusal_detail {
                RefusalDetail::Full => reject::respond(&rejection, id),
                RefusalDetail::Minimal => reject::respond(&rejection.minimal(), id),
            };
            if let Some(allow) = trace.allow.take()
                && let Ok(v) = HeaderValue::from_str(&allow)
            {
                r.headers_mut().insert(header::ALLOW, v);
            }
            trace.rejection = Some(rejection);
            r
        }
    };
    if let Some(note) = &trace.rate_limit {
        note.apply(response.headers_mut());
    }
    // The gateway's own refusals name the resource's metadata; an upstream's
    // own challenge is passed on as it is.
    if let Some(resource) = trace
        .route
        .as_ref()
        .filter(|_| trace.rejection.is_some())
        .and_then(|r| r.protected())
        .and_then(|p| p.resource.as_ref())
    {
        crate::resource_metadata::announce(response.headers_mut(), &resource.metadata_url);
    }
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, request_id.clone());
    if let (Some(origin), Some(route)) = (&origin, &trace.route)
        && let Some(cors) = &route.config.cors
        && !response
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        crate::cors::decorate(cors, origin, response.headers_mut());
    }
    if gw.is_draining()
        && version < Version::HTTP_2
        && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
    {
        // Draining: the client reconnects elsewhere for its next request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    drop(admitted);
    // observe: written when the last byte has gone out (exchange.rs).
    let status = response.status();
    let body_expected = !is_head
        && !status.is_informational()
        && status != http::StatusCode::NO_CONTENT
        && status != http::StatusCode::NOT_MODIFIED;
    // An AI upstream's successful answer: its token usage is read as it passes.
    let usage_reader = trace
        .answering_upstream()
        .and_then(|u| u.config().provider)
        .filter(|_| body_expected && status.is_success() && trace.upstream_status.is_some())
        .and_then(|provider| {
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            crate::usage::UsageReader::for_response(provider.dialect(), content_type)
        });
    let account = Account {
        gw: Arc::clone(gw),
        runtime,
        trace,
        request_id,
        status: status.as_u16(),
        started,
        head: started.elapsed(),
        body_expected,
        usage_reader,
        usage: None,
    };
    response.map(|body| ExchangeBody::new(body, account))
}

/// The decision steps, then the forward step for a request they let through.
async fn decide_and_forward(
    gw: &Arc<Gateway>,
    runtime: &Runtime,
    conn: ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, Rejection> {
    let mut req = req.map(ClientBody::Streaming);
    let context = DecideContext {
        runtime,
        token_cache: gw.token_cache(),
        metrics: gw.metrics(),
        peer: conn.peer.ip(),
        now: unix_now(),
        dry_run: false,
    };
    let (route, claims, upgrade) = match decide(&context, &mut req, trace).await? {
        Decided::Answered(response) => return Ok(response),
        Decided::Forward {
            route,
            claims,
            upgrade,
        } => (route, claims, upgrade),
    };
    // forward
    let ctx = ForwardContext {
        route: &route,
        claims: claims.as_deref(),
        peer: &conn.peer_value,
        https: conn.https,
        request_id,
        upgrade,
        body_read_timeout: runtime.config.limits.body_read_timeout,
        trace: trace.trace_context.as_ref(),
        requested: trace.routing.as_ref().and_then(|n| n.requested.as_ref()),
    };
    let began = trace.timings.is_some().then(Instant::now);
    let forwarded = forward(req, ctx).await;
    if let (Some(t), Some(began)) = (trace.timings.as_mut(), began) {
        t.upstream = Some((began, Instant::now()));
    }
    match forwarded {
        Ok(forwarded) => {
            let (response, latency) = (forwarded.response, forwarded.latency);
            let status = response.status().as_u16();
            trace.upstream_latency = Some(latency);
            trace.upstream_status = Some(status);
            trace.request_body = forwarded.request_body;
            let answered_by = forwarded.answered_by.clone();
            let mut tried = String::new();
            if !forwarded.attempts.is_empty() || forwarded.answered_by.is_some() {
                let note = trace.routing.get_or_insert_with(Box::default);
                note.attempts = forwarded.attempts;
                note.answered_by = forwarded.answered_by;
                if let Some(t) = note.attempts_text() {
                    tried = format!(" (tried {t})");
                }
            }
            let answered = answered_by
                .as_ref()
                .map_or(route.config.upstream.as_str(), |u| u.config().name.as_str());
            let evidence = || {
                format!(
                    "upstream {answered} answered {status} in {:.1} ms{tried}",
                    millis(latency)
                )
            };
            if matches!(status, 401 | 403) {
                // The upstream's own refusal, marked so nobody takes it for the
                // gateway's decision.
                trace.steps.warn(Step::Upstream, None, || {
                    format!(
                        "{}: the upstream itself refused, not the gateway",
                        evidence()
                    )
                });
            } else {
                trace.steps.pass_with(Step::Upstream, evidence);
            }
            Ok(response)
        }
        Err(rejection) => {
            trace
                .steps
                .fail(forward_step(rejection.reason), rejection.reason);
            Err(rejection)
        }
    }
}

/// Where a failure of the forward step belongs: the client's own body (too
/// large, too slow, malformed) is the request's fault, anything else the
/// upstream's.
fn forward_step(reason: Reason) -> Step {
    match reason {
        Reason::BodyTooLarge | Reason::BodyTimeout | Reason::RequestMalformed => Step::Request,
        _ => Step::Upstream,
    }
}

/// What the decision steps read besides the request.
pub struct DecideContext<'a> {
    /// The configuration generation the request is decided by.
    pub runtime: &'a Runtime,
    /// The verified-token cache (a disabled one for dry runs).
    pub token_cache: &'a TokenCache,
    /// Where cache and clock metrics go.
    pub metrics: &'a Metrics,
    /// The TCP peer's address.
    pub peer: IpAddr,
    /// Now, in Unix seconds.
    pub now: i64,
    /// A dry run (`diagnose`): rate limits kept in a shared store are only
    /// read, never spent.
    pub dry_run: bool,
}

/// What the decision steps concluded for a request they did not refuse.
pub enum Decided {
    /// Forward it to the route's upstream.
    Forward {
        /// The matched route.
        route: Arc<CompiledRoute>,
        /// The verified claims (protected routes whose token passed).
        claims: Option<Arc<VerifiedClaims>>,
        /// Whether it is an upgrade the route allows.
        upgrade: bool,
    },
    /// Answered by the gateway itself (a CORS preflight).
    Answered(Response<ProxyBody>),
}

/// Every step before forwarding, in order, each recording itself in `trace`.
/// Generic over the body, which only a model-aware route reads (whole, once):
/// the gateway runs it on live requests, `portcullis diagnose` on a described
/// one (a dry run).
pub async fn decide<B: ReadableBody>(
    ctx: &DecideContext<'_>,
    req: &mut Request<B>,
    trace: &mut Trace,
) -> Result<Decided, Rejection> {
    let runtime = ctx.runtime;
    let config = &runtime.config;
    let steps = &mut trace.steps;
    // limits: header size (hyper's own buffer is set above this, so we answer first).
    let head = steps.check(
        Step::Request,
        check_header_size(req, config.limits.max_header_bytes),
    )?;

    // canonical: no tunnels by CONNECT; one authority and one path, before
    // anything reads them.
    if req.method() == http::Method::CONNECT {
        steps.fail(Step::Canonical, Reason::UpgradeNotAllowed);
        return Err(Rejection::new(
            Reason::UpgradeNotAllowed,
            "CONNECT tunnels are not relayed",
        ));
    }
    let authority = steps.check(Step::Canonical, canonical_authority(req))?;
    let original_path = steps.is_verbose().then(|| req.uri().path().to_owned());
    steps.check(Step::Canonical, canonicalise_path(req, &config.paths))?;
    steps.note(Step::Canonical, || {
        let path = req.uri().path();
        let host = authority.as_str();
        match original_path.as_deref() {
            Some(p) if p != path => format!("authority {host:?}; path {p} canonicalised to {path}"),
            _ => format!("authority {host:?}; path {path} is canonical"),
        }
    });

    // client_ip: the peer, or past trusted proxies (checked against the
    // network rules once the route is known).
    let peer = ctx.peer;
    let network = &config.network;
    let client = resolve_client_ip(
        peer,
        req.headers()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes),
        req.headers()
            .get_all(header::FORWARDED)
            .iter()
            .map(HeaderValue::as_bytes),
        &network.trusted_proxies,
        &network.forwarded_proxies,
    );
    trace.client_ip = Some(client.ip);
    let peer_trusted = network.trusted_proxies.contains(peer);
    let steps = &mut trace.steps;
    let forwarded_for = steps.is_verbose().then(|| {
        let list: Vec<&str> = req
            .headers()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        list.join(", ")
    });

    // strip_spoofed: gateway-owned headers always, forwarding and override
    // headers from untrusted peers.
    let removed = strip_spoofed(
        req.headers_mut(),
        &runtime.owned_headers,
        (!peer_trusted).then_some(network.strip_from_untrusted.as_slice()),
    );
    steps.pass_with(Step::StripSpoofed, || {
        if removed.is_empty() {
            "no gateway-owned or forwarding header to remove".to_owned()
        } else {
            let names: Vec<&str> = removed.iter().map(http::HeaderName::as_str).collect();
            format!("removed the client's {}", names.join(", "))
        }
    });

    // resource metadata (RFC 9728): public documents the gateway answers
    // itself, to clients the global network rules let in.
    if matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && let Some(doc) = runtime.resource_metadata.get(req.uri().path())
    {
        steps.check(
            Step::ClientIp,
            network.rules.check_client(&client, "global"),
        )?;
        trace.decision = Decision::Public;
        trace.steps.pass_with(Step::Route, || {
            "protected resource metadata (RFC 9728), answered by the gateway".to_owned()
        });
        let head_only = req.method() == http::Method::HEAD;
        return Ok(Decided::Answered(crate::resource_metadata::respond(
            doc, head_only,
        )));
    }

    // route: the canonical authority and path; a CORS preflight is routed by
    // the method it asks about.
    let host = normalise_host(authority.as_str());
    let preflight = crate::cors::is_preflight(req.method(), req.headers());
    let lookup_method = if preflight {
        crate::cors::requested_method(req.headers()).unwrap_or(http::Method::OPTIONS)
    } else {
        req.method().clone()
    };
    let mut lookup = runtime
        .table
        .find(&host, req.uri().path(), &lookup_method, None);
    if preflight && let Lookup::NeedsModel(candidates) = &lookup {
        // A CORS preflight has no body: the first route of the group answers
        // it (the browser's request itself is then routed by its model).
        if let Some(first) = candidates.first() {
            lookup = Lookup::Found(first);
        }
    }
    // The body's length, when it was read to choose among routes matched by
    // model (within the largest limit of the group).
    let mut group_body_len = None;
    if let Lookup::NeedsModel(candidates) = &lookup {
        // Routes matched by the body's model: the body is read (within the
        // largest limit of the candidates), after the global network rules.
        let limit = candidates
            .iter()
            .map(|r| r.config.max_body_bytes)
            .max()
            .unwrap_or(config.limits.max_body_bytes);
        trace.steps.check(
            Step::ClientIp,
            network.rules.check_client(&client, "global"),
        )?;
        let requested = read_model(req, limit, config.limits.body_read_timeout, trace).await?;
        lookup = match requested {
            Some((len, model)) => {
                group_body_len = Some(len);
                runtime
                    .table
                    .find(&host, req.uri().path(), &lookup_method, Some(model))
            }
            None => {
                trace.steps.fail(Step::Route, Reason::RequestMalformed);
                return Err(Rejection::new(
                    Reason::RequestMalformed,
                    "the route is chosen by the JSON body's model, and the request describes none (diagnose: pass --model)",
                ));
            }
        };
    }
    let route = match lookup {
        Lookup::Found(route) => Arc::clone(route),
        Lookup::MethodNotAllowed(methods) => {
            let list: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
            trace.allow = Some(list.join(", "));
            trace.steps.fail(Step::Route, Reason::MethodNotAllowed);
            return Err(Rejection::new(
                Reason::MethodNotAllowed,
                format!(
                    "{} is not allowed here; allowed: {}",
                    req.method(),
                    list.join(", ")
                ),
            ));
        }
        Lookup::NotFound => {
            trace.steps.fail(Step::Route, Reason::RouteNotFound);
            trace.steps.note(Step::Route, || {
                evidence::near_misses(&config.routes, "", &host, req.uri().path(), &lookup_method)
            });
            return Err(Rejection::new(
                Reason::RouteNotFound,
                format!("no route for {} {}", req.method(), req.uri().path()),
            ));
        }
        Lookup::ModelNotServed(patterns) => {
            trace.steps.fail(Step::Route, Reason::ModelNotAllowed);
            let model = requested_model(trace).unwrap_or("-");
            return Err(Rejection::new(
                Reason::ModelNotAllowed,
                format!(
                    "model {model:?} is not served at {}: its routes serve {}",
                    req.uri().path(),
                    patterns.join(", ")
                ),
            ));
        }
        Lookup::NeedsModel(_) => {
            trace.steps.fail(Step::Route, Reason::RequestMalformed);
            return Err(Rejection::new(
                Reason::RequestMalformed,
                "the route is chosen by the JSON body's model, which could not be read",
            ));
        }
    };
    trace.route = Some(Arc::clone(&route));
    // A body read within the group's largest limit is held to the chosen
    // route's own.
    if let Some(len) = group_body_len.filter(|len| *len > route.config.max_body_bytes) {
        trace.steps.fail(Step::Request, Reason::BodyTooLarge);
        return Err(Rejection::new(
            Reason::BodyTooLarge,
            format!(
                "request body of {len} bytes exceeds the route's limit of {}",
                route.config.max_body_bytes
            ),
        ));
    }
    let steps = &mut trace.steps;
    steps.pass_with(Step::Route, || {
        evidence::route_found(
            &config.routes,
            &route.config,
            &host,
            req.uri().path(),
            &lookup_method,
        )
    });
    if let Some(resource) = route.protected().and_then(|p| p.resource.as_ref()) {
        steps.note(Step::Route, || {
            format!(
                "the route is the protected resource {}: its refusals point clients at {}",
                resource.resource, resource.metadata_url
            )
        });
    }

    // upgrade: a tunnel is authorized once, at its handshake, so only protocols
    // the route names may be asked for.
    let upgrade = steps.check(Step::Upgrade, check_upgrade(req, &route.config.upgrades))?;
    steps.note(Step::Upgrade, || {
        if upgrade {
            "an upgrade to a protocol the route lists".to_owned()
        } else {
            "not an upgrade".to_owned()
        }
    });

    // limits: a declared body larger than the route allows is refused up front.
    let limits = &config.limits;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > route.config.max_body_bytes
    {
        steps.fail(Step::Request, Reason::BodyTooLarge);
        return Err(Rejection::new(
            Reason::BodyTooLarge,
            format!(
                "request body of {len} bytes exceeds the route's limit of {}",
                route.config.max_body_bytes
            ),
        ));
    }
    steps.note(Step::Request, || {
        format!(
            "head {head} bytes (limit {}); body limit {} bytes; in-flight limit {}",
            limits.max_header_bytes, route.config.max_body_bytes, limits.max_in_flight
        )
    });

    // ip_filter: cheapest check first, before any crypto.
    steps.note(Step::ClientIp, || {
        evidence::client_ip(
            peer,
            peer_trusted,
            forwarded_for.as_deref().filter(|l| !l.is_empty()),
            &client,
            [
                ("global", &network.rules),
                ("route", &route.config.ip_rules),
            ],
        )
    });
    steps.check(
        Step::ClientIp,
        network.rules.check_client(&client, "global"),
    )?;
    steps.check(
        Step::ClientIp,
        route.config.ip_rules.check_client(&client, "route"),
    )?;

    // cors: a preflight is answered here, before any token is looked for.
    if preflight {
        trace.decision = Decision::Public;
        let answer = trace.steps.check(
            Step::Cors,
            crate::cors::preflight(route.config.cors.as_ref(), req.headers()),
        )?;
        return Ok(Decided::Answered(answer));
    }

    // ip_rate_limit: policies kept per address, before any token is looked
    // at, so a flood of forged tokens buys no signature check.
    let client_ip = match client.source {
        IpSource::Unparsable { .. } => None,
        _ => Some(client.ip),
    };
    rate_limits(
        ctx,
        Step::IpRateLimit,
        &route,
        client_ip,
        None,
        req.headers(),
        trace,
    )
    .await?;

    // authenticate + authorize
    let claims = match route.protected() {
        None => {
            trace.decision = Decision::Public;
            trace.steps.skip(Step::AuthorizationHeader, || {
                "the route is public: no token is checked".to_owned()
            });
            None
        }
        Some(protected) => {
            let began = trace.timings.is_some().then(Instant::now);
            let verdict =
                authenticate_and_authorize(ctx, &route, req.headers(), req.uri().query(), trace)
                    .await;
            if let (Some(t), Some(began)) = (trace.timings.as_mut(), began) {
                t.auth = Some((began, Instant::now()));
            }
            match (verdict, protected.mode) {
                (Ok(claims), _) => {
                    trace.decision = Decision::Allowed;
                    trace.claims = Some(Arc::clone(&claims));
                    Some(claims)
                }
                (Err(rejection), AuthMode::Enforce) => return Err(rejection),
                (Err(rejection), AuthMode::Report) => {
                    tracing::warn!(
                        route = route.config.name.as_str(),
                        reason = rejection.reason.as_str(),
                        detail = rejection.detail.as_str(),
                        "report-only route: would deny"
                    );
                    trace.steps.demote_failure();
                    trace.decision = Decision::WouldDeny(rejection.reason);
                    trace.rejection = Some(rejection);
                    None
                }
            }
        }
    };
    // model: the body read for a model-aware route (after authorization, so
    // only an authorized client makes the gateway hold a body, unless the
    // route itself is chosen by model), and the model granted to the token.
    model_step(ctx, &route, req, claims.as_deref(), trace).await?;
    // rate_limit: the other policies, now that the client is known.
    rate_limits(
        ctx,
        Step::RateLimit,
        &route,
        client_ip,
        claims.as_deref(),
        req.headers(),
        trace,
    )
    .await?;
    Ok(Decided::Forward {
        route,
        claims,
        upgrade,
    })
}

/// The body's model (read whole, strictly) for a route that needs it, noted
/// in the trace; `None` when the request describes no body (a dry run).
async fn read_model<'t, B: ReadableBody>(
    req: &mut Request<B>,
    limit: u64,
    read_timeout: Duration,
    trace: &'t mut Trace,
) -> Result<Option<(u64, &'t str)>, Rejection> {
    let Some(body) = read_body(req, limit, read_timeout, trace).await? else {
        return Ok(None);
    };
    let requested = trace
        .steps
        .check(Step::Model, portcullis_policy::read_requested_model(&body))?;
    let note = trace.routing.get_or_insert_with(Box::default);
    note.requested = Some(requested);
    Ok(note
        .requested
        .as_ref()
        .map(|r| (body.len() as u64, r.model.as_str())))
}

/// The request body read whole (kept for forwarding), a failure recorded at
/// the `request` step; `None` when there is none to read (a dry run).
async fn read_body<B: ReadableBody>(
    req: &mut Request<B>,
    limit: u64,
    read_timeout: Duration,
    trace: &mut Trace,
) -> Result<Option<bytes::Bytes>, Rejection> {
    req.body_mut()
        .read_whole(limit, read_timeout)
        .await
        .inspect_err(|rejection| trace.steps.fail(Step::Request, rejection.reason))
}

/// The model a request's body named, once read.
fn requested_model(trace: &Trace) -> Option<&str> {
    trace
        .routing
        .as_ref()
        .and_then(|n| n.requested.as_ref())
        .map(|r| r.model.as_str())
}

/// model: a route that needs its body has it read whole (and its model read
/// strictly when it is model-aware), within the route's `max_body`; the model
/// must then be granted to the token (`auth.models`).
async fn model_step<B: ReadableBody>(
    ctx: &DecideContext<'_>,
    route: &CompiledRoute,
    req: &mut Request<B>,
    claims: Option<&VerifiedClaims>,
    trace: &mut Trace,
) -> Result<(), Rejection> {
    let limits = &ctx.runtime.config.limits;
    let max = route.config.max_body_bytes;
    match route.body_need {
        BodyNeed::Stream => return Ok(()),
        BodyNeed::Whole => {
            read_body(req, max, limits.body_read_timeout, trace).await?;
            trace.steps.skip(Step::Model, || {
                "the body is read whole to be sent again to a fallback upstream; its model is not looked at".to_owned()
            });
            return Ok(());
        }
        BodyNeed::Model => {}
    }
    if requested_model(trace).is_none()
        && read_model(req, max, limits.body_read_timeout, trace)
            .await?
            .is_none()
    {
        trace.steps.skip(Step::Model, || {
            "the route reads the JSON body's model; the request describes none (diagnose: pass --model)".to_owned()
        });
        return Ok(());
    }
    let model = requested_model(trace).unwrap_or_default().to_owned();
    match (route.protected().and_then(|p| p.models.as_ref()), claims) {
        (Some(grant), Some(claims)) => {
            trace
                .steps
                .check(Step::Model, grant.check(claims, &model))?;
            trace.steps.note(Step::Model, || {
                format!("model {model:?} is served by the route and granted to the token")
            });
        }
        _ => trace.steps.pass_with(Step::Model, || {
            format!("model {model:?} is served by the route")
        }),
    }
    Ok(())
}

/// The route's rate-limit policies of one step (nothing at all for a route
/// without any, so it pays nothing).
async fn rate_limits(
    ctx: &DecideContext<'_>,
    step: Step,
    route: &CompiledRoute,
    client_ip: Option<std::net::IpAddr>,
    claims: Option<&VerifiedClaims>,
    headers: &http::HeaderMap,
    trace: &mut Trace,
) -> Result<(), Rejection> {
    if route.rate_limits.is_empty() {
        if trace.steps.is_verbose() {
            trace
                .steps
                .skip(step, || "the route has no rate-limit policy".to_owned());
        }
        return Ok(());
    }
    let input = crate::rate_limit::LimitInput {
        client_ip,
        route: &route.config.name,
        claims,
        headers,
        model: trace
            .routing
            .as_ref()
            .and_then(|n| n.requested.as_ref())
            .map(|r| r.model.as_str()),
    };
    crate::rate_limit::check(
        step,
        &route.rate_limits,
        &input,
        ctx.runtime.config.rate_limits.response_headers,
        ctx.dry_run,
        &mut trace.steps,
        &mut trace.rate_limit,
    )
    .await
}

/// authenticate (bearer, cache, verification) then authorize (audience, scopes,
/// claim rules), each sub-step recorded.
async fn authenticate_and_authorize(
    ctx: &DecideContext<'_>,
    route: &CompiledRoute,
    headers: &http::HeaderMap,
    query: Option<&str>,
    trace: &mut Trace,
) -> Result<Arc<VerifiedClaims>, Rejection> {
    let steps = &mut trace.steps;
    let auth = authenticate(
        route,
        headers,
        query,
        ctx.token_cache,
        ctx.metrics,
        ctx.now,
        steps,
    )
    .await?;
    let claims = auth.claims;
    // A report-only refusal after verification still names whose token it was.
    trace.claims = Some(Arc::clone(&claims));
    let steps = &mut trace.steps;
    let Some(protected) = route.protected() else {
        return Ok(claims);
    };
    let access = &protected.access;
    steps.check(Step::Audience, access.check_audience(&claims))?;
    steps.note(Step::Audience, || {
        format!(
            "iss matches; aud {:?} includes one of {:?}",
            claims.audiences, access.audiences
        )
    });
    steps.note(Step::Scopes, || {
        format!(
            "token has [{}]; route needs all of [{}] and one of [{}]",
            claims.scopes.join(" "),
            access.scopes_all_of.join(" "),
            access.scopes_any_of.join(" ")
        )
    });
    steps.check(Step::Scopes, access.check_scopes(&claims))?;
    steps.check(Step::Claims, access.check_claims(&claims))?;
    steps.note(Step::Claims, || {
        format!("{} claim rule(s) hold", access.claims.len())
    });
    Ok(claims)
}

/// The head's size, or `headers_too_large`.
fn check_header_size<B>(req: &Request<B>, max: usize) -> Result<usize, Rejection> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().authority().map_or(0, |a| a.as_str().len())
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if size > max {
        return Err(Rejection::new(
            Reason::HeadersTooLarge,
            format!("request head is {size} bytes; the limit is {max}"),
        ));
    }
    Ok(size)
}

/// The request's one authority (RFC 9112 §3.2, RFC 9113 §8.3.1), held as a
/// cheap clone of the header value or target authority (no copy of the text) so
/// the request can be changed afterwards; `host_invalid` when it is missing,
/// repeated or ambiguous.
fn canonical_authority<B>(req: &Request<B>) -> Result<Authority, Rejection> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let (first, second) = (values.next(), values.next());
    let hosts: [&[u8]; 2] = [
        first.map_or(&[][..], HeaderValue::as_bytes),
        second.map_or(&[][..], HeaderValue::as_bytes),
    ];
    let count = usize::from(first.is_some()) + usize::from(second.is_some()) + values.count();
    let framing = match req.version() {
        Version::HTTP_09 | Version::HTTP_10 => Framing::Http10,
        Version::HTTP_11 => Framing::Http11,
        _ => Framing::Http2,
    };
    let target = req.uri().authority();
    if count > 2 {
        return Err(Rejection::new(
            Reason::HostInvalid,
            format!("{count} Host headers; exactly one is allowed (RFC 9112 §3.2)"),
        ));
    }
    authority::resolve(&hosts[..count], target.map(|a| a.as_str()), framing)?;
    Ok(match (target, first) {
        (Some(t), _) => Authority::Target(t.clone()),
        (None, Some(h)) => Authority::Host(h.clone()),
        (None, None) => Authority::None,
    })
}

/// Where a request's one authority was read from.
enum Authority {
    /// The absolute-form target or HTTP/2 `:authority`.
    Target(http::uri::Authority),
    /// The `Host` header.
    Host(HeaderValue),
    /// None (HTTP/1.0 without `Host`).
    None,
}

impl Authority {
    fn as_str(&self) -> &str {
        match self {
            Authority::Target(a) => a.as_str(),
            // Checked by `authority::resolve` to be ASCII.
            Authority::Host(h) => h.to_str().unwrap_or_default(),
            Authority::None => "",
        }
    }
}

/// Replaces the request's path with its canonical form (the query is kept as it
/// is), or refuses it with the rule it breaks.
fn canonicalise_path<B>(req: &mut Request<B>, rules: &PathRules) -> Result<(), Rejection> {
    let canonical = match portcullis_policy::path::canonicalise(req.uri().path(), rules)? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(p) => p,
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| {
        Rejection::new(Reason::PathInvalid, "the canonical path is not a valid URI")
    })?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| {
        Rejection::new(Reason::PathInvalid, "the canonical path is not a valid URI")
    })?;
    Ok(())
}

/// Decides a protocol switch: an `Upgrade` offering only `h2c` is ignored (RFC
/// 9113 §3.1: served as plain HTTP/1.1); any other upgrade needs every protocol
/// it offers on the route's `upgrades` list. `true` when the request is an
/// upgrade to pass through.
fn check_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Result<bool, Rejection> {
    if !is_upgrade_request(req.headers()) {
        return Ok(false);
    }
    let offered = upgrade_protocols(req.headers()).ok_or_else(|| {
        Rejection::new(Reason::RequestMalformed, "the Upgrade header is not text")
    })?;
    if offered.is_empty() {
        return Ok(false);
    }
    if let Some(refused) = offered.iter().find(|p| !allowed.contains(p)) {
        let detail = if allowed.is_empty() {
            format!(
                "upgrade to {refused:?} refused: this route allows no protocol upgrade (routes[].upgrades)"
            )
        } else {
            format!(
                "upgrade to {refused:?} refused: this route allows only {}",
                allowed.join(", ")
            )
        };
        return Err(Rejection::new(Reason::UpgradeNotAllowed, detail));
    }
    Ok(true)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The client address recorded for a request, for tests and logs.
pub fn describe_client(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// Converts a duration to milliseconds for logs.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
