//! What the gateway's calls to an authorization server share (introspection,
//! RFC 7662; client credentials, RFC 6749 §4.4): one pooled HTTPS client, a
//! POST with a total timeout and a cap on the answer, client authentication
//! with HTTP Basic, OAuth error answers (RFC 6749 §5.2) read into the failing
//! layer, and [`OAuthCallError`], whose layer `/readyz`, the metrics and
//! `diagnose` name.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_policy::verify::printable;

use crate::fetch::{FetchError, error_chain, read_limited};
use crate::tls::client_config;

/// Why a call to an authorization server gave no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OAuthCallError {
    /// DNS, TCP, TLS, a timeout, a bare HTTP error status, a too large answer,
    /// or the endpoint could not be discovered.
    #[error(transparent)]
    Transport(FetchError),
    /// The authorization server refused the call with an OAuth error (RFC 6749
    /// §5.2), e.g. `invalid_client` for wrong client credentials.
    #[error("{url} answered HTTP {status} with error {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The endpoint.
        url: String,
        /// The status.
        status: u16,
        /// The `error` member.
        error: String,
        /// The `error_description` member, shortened.
        description: Option<String>,
    },
    /// The answer is not what the protocol says it must be.
    #[error("{url}: {why}")]
    Answer {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// `max_concurrent` calls are in flight already.
    #[error("{limit} calls are in flight already (max_concurrent)")]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// The `private_key_jwt` assertion could not be made.
    #[error("client assertion: {0}")]
    Assertion(String),
}

impl OAuthCallError {
    /// The layer that failed: `DNS`, `TCP`, `TLS`, `timeout`, `HTTP`, `size`,
    /// `URL`, `document` (discovery), `AS error`, `answer`, `capacity`,
    /// `client assertion`.
    pub fn layer(&self) -> &'static str {
        match self {
            OAuthCallError::Transport(e) => e.layer(),
            OAuthCallError::Refused { .. } => "AS error",
            OAuthCallError::Answer { .. } => "answer",
            OAuthCallError::Busy { .. } => "capacity",
            OAuthCallError::Assertion(_) => "client assertion",
        }
    }

    /// A bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            OAuthCallError::Transport(e) => e.kind(),
            OAuthCallError::Refused { .. } => "as_error",
            OAuthCallError::Answer { .. } => "invalid_answer",
            OAuthCallError::Busy { .. } => "busy",
            OAuthCallError::Assertion(_) => "assertion_error",
        }
    }

    /// Whether another attempt may succeed: a connect failure or a 5xx answer.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            OAuthCallError::Transport(FetchError::Connect { .. })
                | OAuthCallError::Transport(FetchError::Status { status: 500.., .. })
        )
    }
}

/// One pooled HTTP(S) client for POSTs to an authorization server.
pub struct OAuthHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl OAuthHttp {
    /// Builds the client; `ca_file`, when set, is read now.
    pub fn new(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<Self, String> {
        let ca = match ca_file {
            Some(p) => {
                Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?)
            }
            None => None,
        };
        let tls = client_config(ca.as_deref()).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(OAuthHttp { client })
    }

    /// Sends `request` and reads the whole answer: at most `limit` bytes, all
    /// within `timeout`.
    pub async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
        url: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), FetchError> {
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
            let body = read_limited(response, url, limit).await?;
            Ok((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: url.to_owned(),
                secs: timeout.as_secs_f64(),
            }),
        }
    }
}

/// An OAuth error answer (`{"error": "…"}`), when the body is one.
pub fn oauth_error(url: &str, status: StatusCode, body: &[u8]) -> Option<OAuthCallError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    Some(OAuthCallError::Refused {
        url: url.to_owned(),
        status: status.as_u16(),
        error: printable(error),
        description: value
            .get("error_description")
            .and_then(serde_json::Value::as_str)
            .map(printable),
    })
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1
/// asks it of the Basic credentials' parts).
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `Authorization: Basic` value of `client_secret_basic`.
pub fn basic(client_id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
        assert_eq!(basic("a", "b"), "Basic YTpi");
    }

    #[test]
    fn oauth_errors_are_read_and_shortened() {
        let e = oauth_error(
            "https://as/introspect",
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        )
        .expect("an OAuth error");
        assert_eq!(e.layer(), "AS error");
        assert!(e.to_string().contains("invalid_client"), "{e}");
        assert!(oauth_error("u", StatusCode::BAD_GATEWAY, b"<html>").is_none());
    }

    #[test]
    fn only_connect_failures_and_5xx_are_retried() {
        let t = OAuthCallError::Transport;
        let connect = t(FetchError::Connect {
            url: "u".into(),
            why: "refused".into(),
        });
        assert!(connect.retryable());
        let status = |status| {
            t(FetchError::Status {
                url: "u".into(),
                status,
            })
        };
        assert!(status(503).retryable());
        assert!(!status(401).retryable());
        let timeout = t(FetchError::Timeout {
            url: "u".into(),
            secs: 2.0,
        });
        assert!(!timeout.retryable());
    }
}
