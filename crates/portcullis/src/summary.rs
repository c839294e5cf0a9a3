//! The effective configuration in one start-up summary, secrets masked, so a
//! setting that silently did nothing cannot hide.

use portcullis_config::{GatewayConfig, HostMatch, PathMatch, RouteAuth};

/// Multi-line human summary of what the gateway will do.
pub fn summarise(c: &GatewayConfig) -> String {
    let mut out = Vec::new();
    let tls = if c.listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    out.push(format!(
        "listen {tls}://{}  admin {}",
        c.listen.address,
        c.admin.map_or("off".into(), |a| a.to_string())
    ));
    out.push(format!(
        "limits: header {} B, body {} B, header timeout {:?}, {} connections, {} in flight, shutdown grace {:?}",
        c.limits.max_header_bytes, c.limits.max_body_bytes, c.limits.header_read_timeout, c.limits.max_connections,
        c.limits.max_in_flight, c.limits.shutdown_grace
    ));
    out.push(format!(
        "network: {} trusted proxies, {} allow, {} deny",
        c.network.trusted_proxies.nets().len(),
        c.network.rules.allow.nets().len(),
        c.network.rules.deny.nets().len()
    ));
    out.push(format!(
        "token cache: {} (max {} entries, ttl {:?})",
        if c.token_cache.enabled { "on" } else { "off" },
        c.token_cache.max_entries,
        c.token_cache.max_ttl
    ));
    for (name, i) in &c.issuers {
        if let Some(source) = &i.source {
            out.push(format!(
                "issuer {name}: {} keys from {source:?}, algorithms {:?}, leeway {}s, max_stale {:?}",
                i.rules.issuer, i.rules.algorithms, i.rules.leeway_secs, i.jwks.max_stale
            ));
        }
        if let Some(x) = &i.introspection {
            out.push(format!(
                "issuer {name}: {} tokens: {}, introspected at {} as client {} ({}), cache_ttl {:?}, negative_cache_ttl {:?}, max_stale {:?}",
                i.rules.issuer,
                i.tokens.as_str(),
                x.endpoint.as_deref().unwrap_or("the discovered introspection_endpoint"),
                x.client_id,
                x.auth.name(),
                x.cache_ttl,
                x.negative_cache_ttl,
                x.max_stale
            ));
        }
    }
    for (name, u) in &c.upstreams {
        let targets: Vec<String> = u
            .targets
            .iter()
            .map(|t| format!("{}://{}{}", t.scheme(), t.authority, t.base_path))
            .collect();
        let cred = u
            .credential
            .as_ref()
            .map_or("none".to_owned(), |c| format!("{}: ***", c.header));
        out.push(format!(
            "upstream {name}: {} (credential {cred}, connect {:?}, response {:?})",
            targets.join(", "),
            u.connect_timeout,
            u.response_header_timeout
        ));
    }
    for r in &c.routes {
        let host = match &r.matcher.host {
            None => "*".to_owned(),
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Suffix(s)) => format!("*{s}"),
        };
        let path = match &r.matcher.path {
            PathMatch::Exact(p) => format!("= {p}"),
            PathMatch::Prefix(p) => format!("{p}*"),
        };
        let methods = r.matcher.methods.as_ref().map_or("any".to_owned(), |m| {
            m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        });
        let auth = match &r.auth {
            RouteAuth::Public => "PUBLIC".to_owned(),
            RouteAuth::Protected(p) => format!(
                "{:?} issuers [{}] aud [{}] scopes all_of [{}] any_of [{}] {} claim rules",
                p.mode,
                p.issuers.keys().cloned().collect::<Vec<_>>().join(", "),
                p.access.audiences.join(", "),
                p.access.scopes_all_of.join(" "),
                p.access.scopes_any_of.join(" "),
                p.access.claims.len()
            ),
        };
        let models = r.matcher.models.as_ref().map_or(String::new(), |m| {
            let names: Vec<&str> = m.iter().map(|p| p.as_str()).collect();
            format!(" models [{}]", names.join(", "))
        });
        let chain = r.upstream_chain().collect::<Vec<_>>().join(" then ");
        out.push(format!(
            "route {}: {host} {path} [{methods}]{models} -> {chain}; {auth}",
            r.name
        ));
    }
    out.join("\n")
}
