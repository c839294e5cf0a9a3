//! Non-fatal findings `portcullis validate` prints: a route that can never match,
//! public routes, allow lists that deny covers, upstreams no route uses.

use std::collections::HashSet;

use crate::model::{GatewayConfig, RouteAuth, RouteMatch};
use portcullis_policy::IpRules;

/// Every warning for a compiled configuration.
pub fn warnings(config: &GatewayConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(addr) = config.admin
        && !addr.ip().is_loopback()
        && config.admin_settings.token.is_none()
    {
        out.push(format!(
            "admin.address {addr} is reachable beyond loopback and admin.token_file is not set: anyone who reaches it can reload the configuration and read /debug/requests"
        ));
    }
    for (j, later) in config.routes.iter().enumerate() {
        if let Some(earlier) = config.routes[..j]
            .iter()
            .find(|e| covers(&e.matcher, &later.matcher))
        {
            out.push(format!(
                "routes[{j}] ({}) can never match: routes {:?} has the same host and path and takes all its methods",
                later.name, earlier.name
            ));
        }
        if matches!(later.auth, RouteAuth::Public) {
            out.push(format!(
                "routes[{j}] ({}) is public: requests pass without a token",
                later.name
            ));
            if later.upstream_chain().any(|name| {
                config
                    .upstreams
                    .get(name)
                    .is_some_and(|u| u.credential.is_some() || u.oauth.is_some())
            }) {
                out.push(format!(
                    "routes[{j}] ({}) is public but its upstream {:?} injects a credential: anonymous callers spend it",
                    later.name, later.upstream
                ));
            }
        }
        if let Some(rw) = &later.rewrite
            && !rw.strip_prefix.is_empty()
            && !rw.strip_prefix.ends_with('/')
            && let crate::model::PathMatch::Prefix(p) = &later.matcher.path
            && p.starts_with(rw.strip_prefix.as_str())
            && p.len() > rw.strip_prefix.len()
            && !p[rw.strip_prefix.len()..].starts_with('/')
        {
            out.push(format!(
                "routes[{j}] ({}): rewrite.strip_prefix {:?} ends inside a path segment of {p:?}; the upstream gets a path cut mid-name",
                later.name, rw.strip_prefix
            ));
        }
        if later.rate_limits.iter().any(|p| p.counts_tokens()) {
            for name in later.upstream_chain() {
                let Some(u) = config.upstreams.get(name) else {
                    continue;
                };
                if !u.stream_usage
                    && u.provider.map(crate::providers::Provider::dialect)
                        == Some(crate::providers::UsageDialect::OpenAi)
                {
                    out.push(format!(
                        "routes[{j}] ({}) has a token budget, but its upstream {name:?} does not set stream_usage: a streamed answer whose client did not ask for stream_options.include_usage reports no usage and is not charged",
                        later.name
                    ));
                }
            }
        }
        if deny_covers_allow(&later.ip_rules) {
            out.push(format!("routes[{j}] ({}): the ip deny list covers the whole allow list; no client can pass", later.name));
        }
    }
    if deny_covers_allow(&config.network.rules) {
        out.push(
            "network: the deny list covers the whole allow list; no client can pass".to_owned(),
        );
    }
    let used: HashSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.upstream_chain())
        .collect();
    for name in config.upstreams.keys() {
        if !used.contains(name.as_str()) {
            out.push(format!("upstreams.{name} is not used by any route"));
        }
    }
    out
}

/// Whether `a` matches every request `b` matches, with the same specificity (so
/// the earlier of the two always wins).
fn covers(a: &RouteMatch, b: &RouteMatch) -> bool {
    a.host == b.host
        && a.path == b.path
        && match (&a.methods, &b.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
        }
        && match (&a.models, &b.models) {
            // A route matched by model takes only its models: it covers a
            // later one only when that one lists nothing it does not.
            (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
            (Some(_), None) => false,
            (None, _) => true,
        }
}

fn deny_covers_allow(rules: &IpRules) -> bool {
    !rules.allow.is_empty()
        && rules
            .allow
            .nets()
            .iter()
            .all(|a| rules.deny.nets().iter().any(|d| d.contains(a)))
}
