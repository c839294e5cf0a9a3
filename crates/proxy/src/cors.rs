//! CORS (the Fetch standard's CORS protocol) per route: browser apps such as chat
//! UIs call the gateway directly. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by the gateway itself, after the
//! IP rules and before authentication (a browser sends no token with it); other
//! responses to an allowed origin, refusals included (so the page can read the
//! problem+json), carry `Access-Control-Allow-Origin` and `Vary: Origin`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use portcullis_config::Cors;
use portcullis_policy::{Reason, Rejection};

use crate::body::{ProxyBody, empty};

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about, which is what routes it.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    let value = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(value.as_bytes()).ok()
}

/// Answers a preflight for a route with CORS `policy` (`None`: the route allows
/// no cross-origin request), or refuses it naming what is not allowed.
pub fn preflight(
    policy: Option<&Cors>,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, Rejection> {
    let refuse = |what: String| Rejection::new(Reason::CorsNotAllowed, what);
    let Some(cors) = policy else {
        return Err(refuse(
            "this route allows no cross-origin requests (routes[].cors)".to_owned(),
        ));
    };
    let origin = headers
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("null"));
    if !origin_allowed(cors, &origin) {
        return Err(refuse(format!(
            "origin {} is not in the route's cors.allowed_origins",
            String::from_utf8_lossy(origin.as_bytes())
        )));
    }
    let method = requested_method(headers)
        .ok_or_else(|| refuse("Access-Control-Request-Method is not a method".to_owned()))?;
    if !cors.methods.contains(&method) {
        return Err(refuse(format!(
            "method {method} is not in the route's cors.allowed_methods"
        )));
    }
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let text = requested.to_str().unwrap_or_default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !cors
                .headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                return Err(refuse(format!(
                    "request header {name} is not in the route's cors.allowed_headers"
                )));
            }
        }
    }
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    allow_origin(cors, origin, h);
    if let Some(v) = join(cors.methods.iter().map(Method::as_str)) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = join(cors.headers.iter().map(HeaderName::as_str)) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age.as_secs()),
    );
    Ok(response)
}

/// Adds the CORS headers of a response to a cross-origin request: nothing but
/// `Vary: Origin` for an origin that is not allowed.
pub fn decorate(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    if !origin_allowed(cors, origin) {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        return;
    }
    allow_origin(cors, origin.clone(), headers);
    if let Some(v) = join(cors.expose.iter().map(HeaderName::as_str)) {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

fn allow_origin(cors: &Cors, origin: HeaderValue, headers: &mut HeaderMap) {
    // A listed origin is echoed (with Vary, so caches keep one answer per origin);
    // `*` is sent as such, which browsers accept only without credentials.
    let value = if cors.any_origin && !cors.credentials {
        HeaderValue::from_static("*")
    } else {
        origin
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if cors.credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Whether `origin` may call the route (exact, case-insensitive match).
fn origin_allowed(cors: &Cors, origin: &HeaderValue) -> bool {
    if cors.any_origin {
        return true;
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    cors.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.collect::<Vec<_>>().join(", ");
    (!joined.is_empty())
        .then(|| HeaderValue::from_str(&joined).ok())
        .flatten()
}
