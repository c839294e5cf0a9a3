//! Evidence texts of a verbose decision trace: what a step looked at, in words a
//! person can act on. Only called when the trace is verbose (`diagnose`, sampled
//! requests), never on the plain hot path. Nothing here prints a token, a
//! signature or a credential.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use portcullis_config::{HostMatch, PathMatch, RouteConfig};
use portcullis_jwks::KeyCache;
use portcullis_policy::time::human_duration;
use portcullis_policy::verify::{NO_EXPIRY, printable};
use portcullis_policy::{ClientIp, IpRules, IpSource, IpVerdict, UnverifiedToken, VerifiedClaims};

use crate::route_table::normalise_host;
use crate::runtime::IssuerRuntime;

/// `host h, path prefix /p, methods GET,POST`.
pub fn describe_match(c: &RouteConfig) -> String {
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

/// The matched route and the routes that nearly matched.
pub fn route_found(
    routes: &[Arc<RouteConfig>],
    c: &RouteConfig,
    host: &str,
    path: &str,
    method: &Method,
) -> String {
    format!(
        "route {} ({}) -> upstream {}{}",
        c.name,
        describe_match(c),
        c.upstream,
        near_misses(routes, &c.name, host, path, method)
    )
}

/// Routes that nearly matched, and why they did not (`chosen` empty: none matched).
pub fn near_misses(
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
        format!("near misses: {}", out.join("; "))
    } else {
        format!("; also considered: {}", out.join("; "))
    }
}

/// How the client address was found, and what each rule set said of it.
pub fn client_ip(
    peer: IpAddr,
    peer_trusted: bool,
    forwarded_for: Option<&str>,
    client: &ClientIp,
    rules: [(&str, &IpRules); 2],
) -> String {
    let how = match (forwarded_for, peer_trusted) {
        (None, _) => format!("peer {peer}, no X-Forwarded-For"),
        (Some(list), false) => {
            format!("peer {peer} is not a trusted proxy, so X-Forwarded-For {list:?} is ignored")
        }
        (Some(list), true) => format!(
            "peer {peer} is a trusted proxy; X-Forwarded-For {list:?} read right to left past trusted proxies"
        ),
    };
    let mut evidence = format!("{how} -> client {}", client.ip);
    if let IpSource::Unparsable { header, hop } = &client.source {
        evidence.push_str(&format!(
            " (the {header:?} hop {hop} from the right is unparsable: the client is unknown)"
        ));
    }
    evidence.push_str(&ip_verdicts(client.ip, rules));
    evidence
}

/// What each rule set says of `ip` (`; global: allowed by 10.0.0.0/8; route: …`).
pub fn ip_verdicts(ip: IpAddr, rules: [(&str, &IpRules); 2]) -> String {
    let mut out = String::new();
    for (scope, rules) in rules {
        let said = match rules.verdict(ip) {
            IpVerdict::Allowed(None) => format!("; {scope}: no allow list, not denied"),
            IpVerdict::Allowed(Some(net)) => format!("; {scope}: allowed by {net}"),
            IpVerdict::Denied(net) => format!("; {scope}: DENIED by {net}"),
            IpVerdict::NotAllowed => {
                format!("; {scope}: not in the allow list {:?}", rules.allow.nets())
            }
        };
        out.push_str(&said);
    }
    out
}

/// The claim names of a decoded (not yet verified) token; never their values.
pub fn token_structure(token: &UnverifiedToken<'_>) -> String {
    let mut names: Vec<&str> = token.claims.keys().map(String::as_str).collect();
    names.sort_unstable();
    format!(
        "3 base64url segments, JSON header and claims ({})",
        names.join(", ")
    )
}

/// The JOSE header as checked against the issuer's allow-list.
pub fn token_header(token: &UnverifiedToken<'_>, issuer: &IssuerRuntime) -> String {
    let h = &token.header;
    format!(
        "alg {} allowed ({:?}); kid {}; typ {}",
        h.alg,
        issuer.config.rules.algorithms,
        h.kid.as_deref().map_or("-".to_owned(), printable),
        h.typ.as_deref().map_or("-".to_owned(), printable)
    )
}

/// The issuer's key set: where it comes from, how old it is, which keys it holds.
pub fn keys(issuer: &IssuerRuntime, keys: &KeyCache) -> String {
    let state = keys.state();
    let age = state
        .age(Instant::now())
        .map_or("not fetched".to_owned(), |a| {
            format!("fetched {} ago", human_duration(a.as_secs() as i64))
        });
    let skipped = if state.skipped.is_empty() {
        String::new()
    } else {
        format!(" ({} skipped)", state.skipped.len())
    };
    format!(
        "{:?}, {age}; {} usable key(s){skipped}: [{}]",
        issuer.config.source,
        state.snapshot.len(),
        state.snapshot.kids().collect::<Vec<_>>().join(", ")
    )
}

/// The key the token's `kid` selects.
pub fn kid(token: &UnverifiedToken<'_>, keys: &KeyCache) -> String {
    let kid = token.header.kid.as_deref();
    match keys.state().snapshot.select(kid) {
        Some(key) => format!(
            "key {} ({}) present",
            key.kid().map_or("(single key)".to_owned(), printable),
            key.kty()
        ),
        None => "no key selected".to_owned(),
    }
}

/// What an introspection answer said, never the claims' values: the
/// subject's presence, the audiences, the scopes and the claim names.
pub fn introspected(c: &VerifiedClaims) -> String {
    let mut names: Vec<&str> = c.claims.keys().map(String::as_str).collect();
    names.sort_unstable();
    format!(
        "aud [{}]; scope [{}]; claims ({})",
        c.audiences
            .iter()
            .map(|a| printable(a))
            .collect::<Vec<_>>()
            .join(", "),
        c.scopes
            .iter()
            .map(|a| printable(a))
            .collect::<Vec<_>>()
            .join(" "),
        names.join(", ")
    )
}

/// The times of verified claims against now and the leeway.
pub fn time(c: &VerifiedClaims, now: i64, leeway: i64) -> String {
    let mut parts = Vec::new();
    if let Some(iat) = c.issued_at {
        parts.push(format!("issued {} ago", human_duration(now - iat)));
    }
    if let Some(nbf) = c.not_before {
        parts.push(format!("valid since {} ago", human_duration(now - nbf)));
    }
    if c.expires_at == NO_EXPIRY {
        parts.push("no exp (the introspection answer gave none)".to_owned());
    } else if c.expires_at >= now {
        parts.push(format!("expires in {}", human_duration(c.expires_at - now)));
    } else {
        parts.push(format!(
            "expired {} ago, within the leeway",
            human_duration(now - c.expires_at)
        ));
    }
    format!("{} (leeway {leeway}s)", parts.join("; "))
}
