//! Header handling: hop-by-hop removal (RFC 9110 §7.6.1), request ids, client
//! copies of gateway-set headers, and `X-Forwarded-*`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `keep-alive`.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection`.
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `http2-settings`: part of the h2c upgrade (RFC 7540 §3.2), which is never relayed.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The fixed hop-by-hop fields, besides those `Connection` names.
const HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields: those `Connection` lists, then the fixed set, and
/// `Upgrade` unless the exchange is an upgrade being passed through.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fast path: most messages carry none of these; one pass over the names is
    // cheaper than a hash lookup per removal.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(&k))
    {
        return;
    }
    // Only names present are collected: `Connection: keep-alive` alone (the usual
    // case) allocates nothing.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| headers.contains_key(*name))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The protocols an `Upgrade` field offers (RFC 9110 §7.8), lower-cased, without
/// `h2c` (never relayed: RFC 9113 §3.1), or `None` when a value is not text.
pub fn upgrade_protocols(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::UPGRADE) {
        for p in v.to_str().ok()?.split(',') {
            let p = p.trim().to_ascii_lowercase();
            if !p.is_empty() && p != "h2c" && !p.starts_with("h2c/") {
                out.push(p);
            }
        }
    }
    Some(out)
}

/// Keeps a client-supplied request id when it is short and plain, else mints one.
pub fn accept_or_mint_request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    {
        return v.clone();
    }
    mint_request_id()
}

/// 128 random bits as 32 hex digits. The value is owned by a shared buffer, so
/// the copies for the upstream request and the response cost no allocation.
pub fn mint_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    hex_into(&n.to_be_bytes(), &mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Writes `bytes` as lower-case hex into `out`, two digits a byte; stops at the
/// shorter of the two.
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// Removes client copies of headers the gateway sets or an upstream might
/// believe: every `x-portcullis-*` and every claim header of any route, always;
/// from an untrusted peer also `X-Forwarded-*`, `Forwarded` and the
/// `strip_from_untrusted` list (method overrides, original-URL and client-address
/// headers). Each in its underscore form too (`X_Portcullis_Subject`), which
/// servers that map `_` to `-` (CGI, WSGI, some frameworks) read as the same field.
///
/// Returns the names removed (empty, and nothing allocated, when none was).
pub fn strip_spoofed(
    headers: &mut HeaderMap,
    owned: &[HeaderName],
    untrusted: Option<&[HeaderName]>,
) -> Vec<HeaderName> {
    let spoofable = |name: &str| {
        name.starts_with("x-portcullis-")
            || owned.iter().any(|h| h.as_str() == name)
            || untrusted.is_some_and(|list| {
                name == X_FORWARDED_FOR.as_str()
                    || name == X_FORWARDED_PROTO.as_str()
                    || name == X_FORWARDED_HOST.as_str()
                    || name == header::FORWARDED.as_str()
                    || list.iter().any(|h| h.as_str() == name)
            })
    };
    // Underscore forms are stripped from every peer: a proxy never sends them.
    let managed_underscore = |name: &str| {
        let dashed = name.replace('_', "-");
        dashed.starts_with("x-portcullis-")
            || owned.iter().any(|h| h.as_str() == dashed)
            || dashed.starts_with("x-forwarded-")
            || dashed == header::FORWARDED.as_str()
            || dashed == X_REQUEST_ID.as_str()
            || portcullis_config::DEFAULT_STRIP_FROM_UNTRUSTED.contains(&dashed.as_str())
            || untrusted.is_some_and(|list| list.iter().any(|h| h.as_str() == dashed))
    };
    let doomed = |k: &HeaderName| {
        let name = k.as_str();
        spoofable(name) || (name.contains('_') && managed_underscore(name))
    };
    // Fast path: one pass over the names, nothing allocated, when none is doomed.
    if !headers.keys().any(doomed) {
        return Vec::new();
    }
    let names: Vec<HeaderName> = headers.keys().filter(|k| doomed(k)).cloned().collect();
    for name in &names {
        headers.remove(name);
    }
    names
}

/// Appends the peer to `X-Forwarded-For` and sets `-Proto` / `-Host` when absent.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    https: bool,
    original_host: Option<&HeaderValue>,
) {
    // `peer` is the client address already as a value: no formatting per request
    // unless a prior chain must be extended.
    let xff = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) if !prior.trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + peer.len());
            joined.extend_from_slice(prior);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => Some(peer.clone()),
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = original_host
    {
        headers.insert(&X_FORWARDED_HOST, h.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(accept_or_mint_request_id(&h), "abc-123");
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_static("bad id with spaces"),
        );
        let minted = accept_or_mint_request_id(&h);
        assert_eq!(minted.len(), 32);
        assert!(
            minted
                .as_bytes()
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{minted:?}"
        );
        assert_ne!(mint_request_id(), mint_request_id());
    }

    #[test]
    fn spoofed_removed() {
        let owned = [HeaderName::from_static("x-tenant")];
        let untrusted = [HeaderName::from_static("x-http-method-override")];
        let spoofed = [
            ("x-portcullis-subject", "admin"),
            ("x-tenant", "evil"),
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("x_portcullis_subject", "admin"),
            ("x_tenant", "evil"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_http_method_override", "DELETE"),
            ("x_real_ip", "1.2.3.4"),
            ("x_request_id", "forged"),
        ];
        let mut h = HeaderMap::new();
        for (k, v) in spoofed {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("x_kept_too", HeaderValue::from_static("1"));
        strip_spoofed(&mut h, &owned, Some(&untrusted));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-kept", "x_kept_too"]);

        // From a trusted proxy, its forwarding headers and overrides stay; the
        // gateway's own headers and every underscore form still go.
        let mut h = HeaderMap::new();
        for (k, v) in spoofed {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_spoofed(&mut h, &owned, None);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["forwarded", "x-forwarded-for", "x-http-method-override"]
        );
    }

    #[test]
    fn upgrade_tokens_without_h2c() {
        let mut h = HeaderMap::new();
        h.insert(
            header::UPGRADE,
            HeaderValue::from_static("h2c, WebSocket, foo/2"),
        );
        assert_eq!(upgrade_protocols(&h).unwrap(), ["websocket", "foo/2"]);
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(upgrade_protocols(&h).unwrap().is_empty());
    }
}
