//! OAuth 2.0 Protected Resource Metadata (RFC 9728): for every route that
//! names its resource (`auth.resource`), the gateway serves the resource's
//! metadata at `/.well-known/oauth-protected-resource[/path]` and names that
//! URL in every Bearer challenge it sends for the route (§5.1
//! `resource_metadata`), so a client (an MCP client, for one) finds the
//! authorization server from a 401 alone. The document is derived from the
//! routes' own configuration (issuers, scopes, bearer methods), so it cannot
//! drift from what the gateway enforces.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use portcullis_config::{GatewayConfig, RouteAuth};

use crate::body::{ProxyBody, full};

/// The metadata documents of `config`, by path: one per resource, gathering
/// every route that is that resource.
pub fn documents(config: &GatewayConfig) -> BTreeMap<String, Bytes> {
    struct Gathered<'a> {
        resource: &'a str,
        servers: Vec<&'a str>,
        scopes: Vec<&'a str>,
        query: bool,
    }
    let mut by_path: BTreeMap<&str, Gathered<'_>> = BTreeMap::new();
    for route in &config.routes {
        let RouteAuth::Protected(p) = &route.auth else {
            continue;
        };
        let Some(r) = &p.resource else { continue };
        let g = by_path.entry(&r.metadata_path).or_insert(Gathered {
            resource: &r.resource,
            servers: Vec::new(),
            scopes: Vec::new(),
            query: false,
        });
        g.servers.extend(p.issuers.keys().map(String::as_str));
        g.scopes
            .extend(p.access.scopes_all_of.iter().map(String::as_str));
        g.scopes
            .extend(p.access.scopes_any_of.iter().map(String::as_str));
        g.query |= p.query_token;
    }
    by_path
        .into_iter()
        .map(|(path, mut g)| {
            g.servers.sort_unstable();
            g.servers.dedup();
            g.scopes.sort_unstable();
            g.scopes.dedup();
            let methods: &[&str] = if g.query {
                &["header", "query"]
            } else {
                &["header"]
            };
            let doc = serde_json::json!({
                "resource": g.resource,
                "authorization_servers": g.servers,
                "scopes_supported": g.scopes,
                "bearer_methods_supported": methods,
            });
            (path.to_owned(), Bytes::from(doc.to_string()))
        })
        .collect()
}

/// The metadata response: JSON any origin may read (it is public), cached for
/// five minutes.
pub fn respond(document: &Bytes, head_only: bool) -> Response<ProxyBody> {
    let body = if head_only {
        Bytes::new()
    } else {
        document.clone()
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if head_only {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(document.len()));
    }
    response
}

/// Adds `resource_metadata="<url>"` to a Bearer challenge (RFC 9728 §5.1).
pub fn announce(headers: &mut http::HeaderMap, metadata_url: &str) {
    let Some(challenge) = headers.get(header::WWW_AUTHENTICATE) else {
        return;
    };
    let Ok(text) = challenge.to_str() else { return };
    if !text.starts_with("Bearer") {
        return;
    }
    let with = format!("{text}, resource_metadata=\"{metadata_url}\"");
    if let Ok(v) = HeaderValue::from_str(&with) {
        headers.insert(header::WWW_AUTHENTICATE, v);
    }
}
