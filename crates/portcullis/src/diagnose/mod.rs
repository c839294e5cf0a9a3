//! `portcullis diagnose`: the exact cause of a refusal, as an ordered checklist.
//!
//! It runs the proxy's own code (route table, client-IP resolution, IP rules,
//! bearer extraction, JWS decoding, header checks, verification and access rules)
//! on a described request, fetches the issuer's keys and probes the upstream, and
//! says at which step the gateway would refuse, with the evidence and the fix.

pub mod probe;
pub mod report;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use portcullis_config::{GatewayConfig, HostMatch, PathMatch, RouteConfig};
use portcullis_jwks::{Fetcher, JwksObserver, KeySource, NoopObserver};
use portcullis_metrics::Metrics;
use portcullis_policy::time::human_duration;
use portcullis_policy::verify::{check_claims, check_header, printable, verify_signature};
use portcullis_policy::{IpVerdict, Reason, UnverifiedToken, bearer, jws, resolve_client_ip};
use portcullis_proxy::route_table::{Lookup, normalise_host};
use portcullis_proxy::runtime::{CompiledRoute, IssuerRuntime, Runtime};

use crate::cli::DiagnoseArgs;
use report::Report;

/// Runs the command: exit 0 allowed, 1 refused, 2 could not be checked.
pub fn main(args: &DiagnoseArgs) -> ExitCode {
    match prepare(args) {
        Ok((config, token, uri)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return unchecked(args, &format!("cannot start a runtime: {e}")),
            };
            let report = match runtime.block_on(diagnose(args, config, token, uri)) {
                Ok(r) => r,
                Err(e) => return unchecked(args, &e),
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
                );
            } else {
                print!("{}", report.to_text());
            }
            if report.refusal().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => unchecked(args, &e),
    }
}

fn unchecked(args: &DiagnoseArgs, why: &str) -> ExitCode {
    if args.json {
        let doc = serde_json::json!({"verdict": "unchecked", "error": why, "url": args.url, "method": args.method});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        eprintln!("portcullis diagnose: could not check: {why}");
    }
    ExitCode::from(2)
}

fn prepare(args: &DiagnoseArgs) -> Result<(GatewayConfig, Option<String>, http::Uri), String> {
    let config = portcullis_config::load(&args.config)
        .map_err(|e| format!("the configuration is invalid:\n{e}"))?;
    let token = match (&args.token, &args.token_file, &args.token_env) {
        (Some(t), _, _) => Some(t.clone()),
        (_, Some(f), _) => Some(read_token_file(f)?),
        (_, _, Some(var)) => {
            Some(std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?)
        }
        _ => None,
    };
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", args.url))?;
    if uri.host().is_none() && uri.path().is_empty() {
        return Err(format!("{:?} has no path", args.url));
    }
    Ok((config, token.map(|t| t.trim().to_owned()), uri))
}

fn read_token_file(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn diagnose(
    args: &DiagnoseArgs,
    config: GatewayConfig,
    token: Option<String>,
    uri: http::Uri,
) -> Result<Report, String> {
    let method: Method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{:?} is not a method", args.method))?;
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let observer: Arc<dyn JwksObserver> = Arc::new(NoopObserver);
    let rt = Runtime::build_with(config, None, &metrics, &observer, false)?;
    let mut report = Report {
        method: method.to_string(),
        url: args.url.clone(),
        steps: Vec::new(),
    };

    // route
    let host = uri.authority().map_or("", |a| a.as_str()).to_owned();
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let canonical = match portcullis_policy::path::canonicalise(path, &rt.config.paths) {
        Ok(c) => c.into_owned(),
        Err(r) => {
            report.fail(r.reason, format!("{path}: {}", r.detail));
            return Ok(report);
        }
    };
    let path = canonical.as_str();
    let route = match rt.table.find(&normalise_host(&host), path, &method) {
        Lookup::Found(route) => {
            let c = &route.config;
            let near = near_misses(&rt.config.routes, &c.name, &host, path, &method);
            report.pass(
                "route",
                format!(
                    "route {} ({}) -> upstream {}{near}",
                    c.name,
                    describe_match(c),
                    c.upstream
                ),
            );
            Arc::clone(route)
        }
        Lookup::MethodNotAllowed(methods) => {
            let list: Vec<&str> = methods.iter().map(Method::as_str).collect();
            report.fail(
                Reason::MethodNotAllowed,
                format!(
                    "{path} matches, but {method} is not among {}",
                    list.join(", ")
                ),
            );
            return Ok(report);
        }
        Lookup::NotFound => {
            let near = near_misses(&rt.config.routes, "", &host, path, &method);
            report.fail(
                Reason::RouteNotFound,
                format!("no route matches host {host:?} path {path}{near}"),
            );
            return Ok(report);
        }
    };

    // client_ip
    if !client_ip_step(&mut report, args, &rt, &route) {
        return Ok(report);
    }

    // request
    let head_bytes = head_size(&method, &uri, token.as_deref(), &args.headers);
    let limits = &rt.config.limits;
    if head_bytes > limits.max_header_bytes {
        report.fail(
            Reason::HeadersTooLarge,
            format!(
                "request head is about {head_bytes} bytes; the limit is {}",
                limits.max_header_bytes
            ),
        );
        return Ok(report);
    }
    if let Some(len) = args.content_length
        && len > route.config.max_body_bytes
    {
        report.fail(
            Reason::BodyTooLarge,
            format!(
                "body of {len} bytes; the route allows {}",
                route.config.max_body_bytes
            ),
        );
        return Ok(report);
    }
    report.pass(
        "request",
        format!(
            "head about {head_bytes} bytes (limit {}); body limit {} bytes; in-flight limit {} (overload is a runtime condition)",
            limits.max_header_bytes, route.config.max_body_bytes, limits.max_in_flight
        ),
    );

    if route.protected().is_none() {
        let token_steps = report::STEPS
            .iter()
            .skip_while(|s| **s != "authorization_header")
            .take_while(|s| **s != "upstream");
        for step in token_steps {
            report.skip(step, "the route is public: no token is checked");
        }
    } else if !token_steps(&mut report, &route, token.as_deref(), args).await {
        return Ok(report);
    }

    // upstream
    if args.no_upstream {
        report.skip("upstream", "not probed (--no-upstream)");
    } else {
        match probe::upstream(&route.upstream).await {
            Ok((evidence, true)) => report.pass("upstream", evidence),
            Ok((evidence, false)) => report.warn(
                "upstream",
                format!("{evidence}: the upstream reports itself unhealthy"),
            ),
            Err((reason, evidence)) => report.fail(reason, evidence),
        }
    }
    Ok(report)
}

fn client_ip_step(
    report: &mut Report,
    args: &DiagnoseArgs,
    rt: &Runtime,
    route: &CompiledRoute,
) -> bool {
    let peer: IpAddr = args.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let trusted = &rt.config.network.trusted_proxies;
    let xff = args.forwarded_for.as_deref();
    let client = resolve_client_ip(
        peer,
        xff.map(str::as_bytes).into_iter(),
        std::iter::empty(),
        trusted,
        &rt.config.network.forwarded_proxies,
    );
    let peer_trusted = !trusted.is_empty() && trusted.contains(peer);
    let how = match (xff, peer_trusted) {
        (None, _) => format!("peer {peer}, no X-Forwarded-For"),
        (Some(list), false) => {
            format!("peer {peer} is not a trusted proxy, so X-Forwarded-For {list:?} is ignored")
        }
        (Some(list), true) => format!(
            "peer {peer} is a trusted proxy; X-Forwarded-For {list:?} read right to left past trusted proxies"
        ),
    };
    let mut evidence = format!("{how} -> client {}", client.ip);
    for (scope, rules) in [
        ("global", &rt.config.network.rules),
        ("route", &route.config.ip_rules),
    ] {
        let verdict = rules.verdict(client.ip);
        let said = match &verdict {
            IpVerdict::Allowed(None) => format!("; {scope}: no allow list, not denied"),
            IpVerdict::Allowed(Some(net)) => format!("; {scope}: allowed by {net}"),
            IpVerdict::Denied(net) => format!("; {scope}: DENIED by {net}"),
            IpVerdict::NotAllowed => {
                format!("; {scope}: not in the allow list {:?}", rules.allow.nets())
            }
        };
        evidence.push_str(&said);
        if let Err(refusal) = rules.check_client(&client, scope) {
            if matches!(
                client.source,
                portcullis_policy::IpSource::Unparsable { .. }
            ) {
                evidence.push_str("; ");
                evidence.push_str(&refusal.detail);
            }
            report.fail(Reason::IpDenied, evidence);
            return false;
        }
    }
    report.pass("client_ip", evidence);
    true
}

/// The token steps; false when one failed.
async fn token_steps(
    report: &mut Report,
    route: &CompiledRoute,
    token: Option<&str>,
    args: &DiagnoseArgs,
) -> bool {
    let mut values: Vec<String> = args
        .headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned())
        .collect();
    if let Some(t) = token {
        values.push(format!("Bearer {t}"));
    }
    let token = match bearer::extract(values.iter().map(|v| v.as_bytes()), route.max_token_bytes) {
        Ok(t) => t,
        Err(r) => {
            report.fail(r.reason, r.detail);
            return false;
        }
    };
    report.pass(
        "authorization_header",
        format!(
            "one Bearer token of {} bytes (limit {})",
            token.len(),
            route.max_token_bytes
        ),
    );
    let decoded = match jws::decode(token) {
        Ok(t) => t,
        Err(r) => {
            report.fail(r.reason, r.detail);
            return false;
        }
    };
    let mut names: Vec<&str> = decoded.claims.keys().map(String::as_str).collect();
    names.sort_unstable();
    report.pass(
        "token_structure",
        format!(
            "3 base64url segments, JSON header and claims ({})",
            names.join(", ")
        ),
    );
    let Some(issuer) = select_issuer(report, route, &decoded) else {
        return false;
    };
    if token.len() > issuer.config.max_token_bytes {
        report.fail(
            Reason::TokenTooLarge,
            format!(
                "{} bytes; issuer {} allows {}",
                token.len(),
                issuer.config.name,
                issuer.config.max_token_bytes
            ),
        );
        return false;
    }
    let rules = &issuer.config.rules;
    if let Err(r) = check_header(&decoded, rules) {
        report.fail(r.reason, r.detail);
        return false;
    }
    let h = &decoded.header;
    report.pass(
        "token_header",
        format!(
            "alg {} allowed ({:?}); kid {}; typ {}",
            h.alg,
            rules.algorithms,
            h.kid.as_deref().map_or("-".to_owned(), printable),
            h.typ.as_deref().map_or("-".to_owned(), printable)
        ),
    );
    if !keys_step(report, issuer).await {
        return false;
    }
    let Some(state) = issuer.keys.usable_state() else {
        report.fail(Reason::IdpUnavailable, "no usable keys");
        return false;
    };
    let kid = h.kid.as_deref();
    match state.snapshot.select(kid) {
        Some(key) => {
            let age = state
                .age(Instant::now())
                .map_or("-".to_owned(), |a| human_duration(a.as_secs() as i64));
            report.pass(
                "kid",
                format!(
                    "key {} ({}) present; keys fetched {age} ago",
                    key.kid().unwrap_or("(single key)"),
                    key.kty()
                ),
            );
        }
        None => {
            let kids: Vec<&str> = state.snapshot.kids().collect();
            report.fail(
                Reason::KeyUnknown,
                format!(
                    "kid {} is not among the issuer's keys [{}]",
                    kid.map_or("(none)".to_owned(), printable),
                    kids.join(", ")
                ),
            );
            return false;
        }
    }
    let now = portcullis_devkit::now_unix();
    if let Err(r) = verify_signature(
        h,
        decoded.signing_input,
        &decoded.signature,
        rules,
        &state.snapshot,
    ) {
        report.fail(r.reason, r.detail);
        return false;
    }
    report.pass(
        "signature",
        format!(
            "{} signature verifies with key {}",
            h.alg,
            kid.unwrap_or("(single key)")
        ),
    );
    let claims = match check_claims(decoded.claims.clone(), rules, now) {
        Ok(c) => c,
        Err(r) => {
            report.fail(r.reason, r.detail);
            return false;
        }
    };
    let Some(protected) = route.protected() else {
        return true;
    };
    let access = &protected.access;
    match access.check_audience(&claims) {
        Ok(()) => report.pass(
            "audience",
            format!(
                "iss matches; aud {:?} includes one of {:?}",
                claims.audiences, access.audiences
            ),
        ),
        Err(r) => {
            report.fail(r.reason, r.detail);
            return false;
        }
    }
    report.pass("time", time_evidence(&claims, now, rules.leeway_secs));
    let scope_evidence = format!(
        "token has [{}]; route needs all of [{}] and one of [{}]",
        claims.scopes.join(" "),
        access.scopes_all_of.join(" "),
        access.scopes_any_of.join(" ")
    );
    match access.check_scopes(&claims) {
        Ok(()) => report.pass("scopes", scope_evidence),
        Err(r) => {
            report.fail(r.reason, format!("{scope_evidence}; {}", r.detail));
            return false;
        }
    }
    match access.check_claims(&claims) {
        Ok(()) => report.pass(
            "claims",
            format!("{} claim rule(s) hold", access.claims.len()),
        ),
        Err(r) => {
            report.fail(r.reason, r.detail);
            return false;
        }
    }
    true
}

fn select_issuer<'a>(
    report: &mut Report,
    route: &'a CompiledRoute,
    token: &UnverifiedToken<'_>,
) -> Option<&'a Arc<IssuerRuntime>> {
    let mut accepted: Vec<&str> = route.issuers.keys().map(String::as_str).collect();
    accepted.sort_unstable();
    let Some(iss) = token.issuer() else {
        report.fail(Reason::IssuerMismatch, "the token has no iss claim");
        return None;
    };
    match route.issuers.get(iss) {
        Some(i) => {
            report.pass(
                "issuer",
                format!(
                    "iss {} is issuer {} (keys: {:?})",
                    printable(iss),
                    i.config.name,
                    i.config.source
                ),
            );
            Some(i)
        }
        None => {
            report.fail(
                Reason::IssuerMismatch,
                format!(
                    "iss {} is not accepted here; accepted: {}",
                    printable(iss),
                    accepted.join(", ")
                ),
            );
            None
        }
    }
}

/// Discovery and the key set, with timings and the failing layer.
async fn keys_step(report: &mut Report, issuer: &IssuerRuntime) -> bool {
    let cfg = &issuer.config;
    let mut evidence = Vec::new();
    if cfg.source.is_remote() {
        let Ok(fetcher) = Fetcher::new(cfg.jwks.clone()) else {
            report.fail(
                Reason::IdpUnavailable,
                "cannot build an HTTP client for the issuer",
            );
            return false;
        };
        let jwks_url = match &cfg.source {
            KeySource::JwksUri(u) => {
                evidence.push(format!("jwks_uri {u} configured"));
                u.clone()
            }
            _ => {
                let url = portcullis_jwks::discovery::metadata_urls(&cfg.rules.issuer).remove(0);
                let started = Instant::now();
                match portcullis_jwks::discovery::discover(&fetcher, &cfg.rules.issuer).await {
                    Ok(u) => {
                        evidence.push(format!(
                            "discovery {url} -> jwks_uri {u} in {}",
                            probe::ms(started.elapsed())
                        ));
                        u
                    }
                    Err(e) => {
                        report.fail(
                            Reason::IdpUnavailable,
                            format!(
                                "discovery failed at the {} layer after {}: {e}",
                                probe::layer_of(&e),
                                probe::ms(started.elapsed())
                            ),
                        );
                        return false;
                    }
                }
            }
        };
        let (result, took) = probe::timed_get(&fetcher, &jwks_url).await;
        if let Err(e) = result {
            report.fail(
                Reason::IdpUnavailable,
                format!(
                    "{}; key set fetch failed at the {} layer after {}: {e}",
                    evidence.join("; "),
                    probe::layer_of(&e),
                    probe::ms(took)
                ),
            );
            return false;
        }
        evidence.push(format!("GET {jwks_url} -> 200 in {}", probe::ms(took)));
        if let Err(e) = issuer.keys.refresh().await {
            report.fail(
                Reason::IdpUnavailable,
                format!("{}; the key set is unusable: {e}", evidence.join("; ")),
            );
            return false;
        }
    } else {
        evidence.push(format!("static keys: {:?}", cfg.source));
    }
    let state = issuer.keys.state();
    let skipped = if state.skipped.is_empty() {
        String::new()
    } else {
        format!(" ({} skipped)", state.skipped.len())
    };
    evidence.push(format!(
        "{} usable key(s){skipped}: [{}]",
        state.snapshot.len(),
        state.snapshot.kids().collect::<Vec<_>>().join(", ")
    ));
    report.pass("keys", evidence.join("; "));
    true
}

fn time_evidence(c: &portcullis_policy::VerifiedClaims, now: i64, leeway: i64) -> String {
    let mut parts = Vec::new();
    if let Some(iat) = c.issued_at {
        parts.push(format!("issued {} ago", human_duration(now - iat)));
    }
    if let Some(nbf) = c.not_before {
        parts.push(format!("valid since {} ago", human_duration(now - nbf)));
    }
    if c.expires_at >= now {
        parts.push(format!("expires in {}", human_duration(c.expires_at - now)));
    } else {
        parts.push(format!(
            "expired {} ago, within the leeway",
            human_duration(now - c.expires_at)
        ));
    }
    format!("{} (leeway {leeway}s)", parts.join("; "))
}

fn head_size(method: &Method, uri: &http::Uri, token: Option<&str>, headers: &[String]) -> usize {
    method.as_str().len()
        + uri.to_string().len()
        + 12
        + token.map_or(0, |t| t.len() + 23)
        + headers.iter().map(|h| h.len() + 2).sum::<usize>()
}

fn describe_match(c: &RouteConfig) -> String {
    let host = match &c.matcher.host {
        None => String::new(),
        Some(HostMatch::Exact(h)) => format!("host {h}, "),
        Some(HostMatch::Suffix(s)) => format!("host *{s}, "),
    };
    let path = match &c.matcher.path {
        PathMatch::Exact(p) => format!("path {p}"),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
    };
    let methods = c.matcher.methods.as_ref().map_or(String::new(), |m| {
        format!(
            ", methods {}",
            m.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
        )
    });
    format!("{host}{path}{methods}")
}

/// Routes that nearly matched, and why they did not.
fn near_misses(
    routes: &[Arc<RouteConfig>],
    chosen: &str,
    host: &str,
    path: &str,
    method: &Method,
) -> String {
    let host = normalise_host(host);
    let mut out = Vec::new();
    for r in routes.iter().filter(|r| r.name != chosen) {
        let path_ok = match &r.matcher.path {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        };
        let host_ok = match &r.matcher.host {
            None => true,
            Some(HostMatch::Exact(h)) => *h == host,
            Some(HostMatch::Suffix(s)) => host.ends_with(s.as_str()),
        };
        let method_ok = r
            .matcher
            .methods
            .as_ref()
            .is_none_or(|m| m.contains(method));
        let why = match (path_ok, host_ok, method_ok) {
            (true, false, _) => "host differs",
            (true, true, false) => "method not listed",
            _ => continue,
        };
        out.push(format!("{} ({}): {why}", r.name, describe_match(r)));
    }
    if out.is_empty() {
        String::new()
    } else if chosen.is_empty() {
        format!("; near misses: {}", out.join("; "))
    } else {
        format!("; also considered: {}", out.join("; "))
    }
}
