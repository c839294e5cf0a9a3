//! HTTP(S) fetching of discovery and JWKS documents: timeouts, a size cap,
//! scheme rules, and the cache lifetime the response asks for.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::settings::JwksSettings;
use crate::tls::client_config;

/// How a fetch failed, as a bounded metric label and a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not usable (scheme, plain http off loopback).
    #[error("refused URL {url}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// TCP connect failed or was refused.
    #[error("cannot connect to {url}: {why}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport's words.
        why: String,
    },
    /// No complete answer within the timeout.
    #[error("{url} did not answer within {secs:.1}s")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        secs: f64,
    },
    /// The server answered with a non-success status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body exceeded the size cap.
    #[error("{url} sent more than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// The document is not what was expected.
    #[error("{url}: {why}")]
    Invalid {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
}

impl FetchError {
    /// The layer the fetch failed at (`DNS`, `TCP`, `TLS`, `HTTP`, `timeout`,
    /// `size`, `document`, `URL`), from the transport's own words.
    pub fn layer(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "URL",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Status { .. } => "HTTP",
            FetchError::TooLarge { .. } => "size",
            FetchError::Invalid { .. } => "document",
            FetchError::Connect { why, .. } => connect_layer(why),
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "bad_url",
            FetchError::Connect { .. } => "connect_error",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Status { .. } => "http_error",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Invalid { .. } => "invalid_document",
        }
    }
}

/// A fetched document and the lifetime its response headers ask for.
#[derive(Debug)]
pub struct Fetched {
    /// The body.
    pub body: Bytes,
    /// From `Cache-Control: max-age` (or `Expires`), unclamped.
    pub max_age: Option<Duration>,
}

/// One HTTP client (with its connection pool) per issuer, built at start.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    settings: JwksSettings,
}

impl Fetcher {
    /// Builds the client. The CA file, when set, is read now.
    pub fn new(settings: JwksSettings) -> Result<Self, FetchError> {
        let ca = match &settings.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| FetchError::BadUrl {
                url: p.display().to_string(),
                why: format!("cannot read CA file: {e}"),
            })?),
            None => None,
        };
        let tls = client_config(ca.as_deref()).map_err(|e| FetchError::BadUrl {
            url: "(tls)".to_owned(),
            why: e.to_string(),
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Fetcher { client, settings })
    }

    /// GETs `url` with the configured timeout and size cap.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let uri = check_url(url, self.settings.allow_http)?;
        let request = http::Request::get(uri)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::BadUrl {
                url: url.to_owned(),
                why: e.to_string(),
            })?;
        let limit = self.settings.max_bytes;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Connect {
                    url: url.to_owned(),
                    why: error_chain(&e),
                })?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(FetchError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            let max_age = cache_lifetime(response.headers(), SystemTime::now());
            let body = read_limited(response, url, limit).await?;
            Ok(Fetched { body, max_age })
        };
        match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: url.to_owned(),
                secs: self.settings.timeout.as_secs_f64(),
            }),
        }
    }
}

/// A response's whole body, at most `limit` bytes: a declared
/// `Content-Length` over it is refused before reading, a body that grows
/// past it while read is cut off.
pub async fn read_limited(
    response: http::Response<hyper::body::Incoming>,
    url: &str,
    limit: usize,
) -> Result<Bytes, FetchError> {
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let collected = Limited::new(response.into_body(), limit).collect().await;
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(FetchError::Connect {
            url: url.to_owned(),
            why: format!("body: {e}"),
        }),
    }
}

/// https anywhere; plain http only to loopback unless `allow_http`.
pub fn check_url(url: &str, allow_http: bool) -> Result<Uri, FetchError> {
    let bad = |why: &str| FetchError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || allow_http {
                Ok(uri)
            } else {
                Err(bad(
                    "plain http is only allowed to loopback hosts (set allow_http)",
                ))
            }
        }
        _ => Err(bad("only http and https URLs are fetched")),
    }
}

/// `Cache-Control: max-age` (`no-store`/`no-cache` as zero), else `Expires`.
pub fn cache_lifetime(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',') {
            let directive = directive.trim();
            if directive.eq_ignore_ascii_case("no-store")
                || directive.eq_ignore_ascii_case("no-cache")
            {
                return Some(Duration::ZERO);
            }
            if let Some((k, v)) = directive.split_once('=')
                && k.trim().eq_ignore_ascii_case("max-age")
                && let Ok(secs) = v.trim().trim_matches('"').parse::<u64>()
            {
                return Some(Duration::from_secs(secs));
            }
        }
    }
    let expires = headers.get(header::EXPIRES)?.to_str().ok()?;
    let at = httpdate::parse_http_date(expires).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its sources, joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// DNS, TCP or TLS, from a connect error's text.
pub fn connect_layer(why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    if w.contains("dns") || w.contains("lookup") || w.contains("resolve") {
        "DNS"
    } else if w.contains("certificate")
        || w.contains("tls")
        || w.contains("handshake")
        || w.contains("alert")
    {
        "TLS"
    } else {
        "TCP"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn lifetimes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        assert_eq!(cache_lifetime(&h, now), Some(Duration::from_secs(300)));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(cache_lifetime(&h, now), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        h.insert(header::EXPIRES, HeaderValue::from_str(&later).unwrap());
        assert_eq!(cache_lifetime(&h, now), Some(Duration::from_secs(120)));
        assert_eq!(cache_lifetime(&HeaderMap::new(), now), None);
    }

    #[test]
    fn url_rules() {
        assert!(check_url("https://idp.example.com/jwks", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", false).is_ok());
        assert!(check_url("http://idp.example.com/jwks", false).is_err());
        assert!(check_url("http://idp.example.com/jwks", true).is_ok());
        assert!(check_url("file:///etc/passwd", true).is_err());
    }
}
