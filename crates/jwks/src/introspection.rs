//! The RFC 7662 token introspection client of one issuer: it asks the
//! authorization server whether an opaque token is active, authenticating as a
//! client (`client_secret_basic`, `client_secret_post` or `private_key_jwt`).
//!
//! Bounded everywhere: a connect and a total timeout per attempt, a bounded
//! number of retries (after connect failures and 5xx answers only, with jittered
//! backoff), a cap on the answer's size, and at most `max_concurrent` calls in
//! flight (beyond it a call fails at once as `busy`, so a flood of made-up
//! tokens cannot queue up work against the authorization server). The endpoint
//! comes from the configuration or from the issuer's metadata document
//! (`introspection_endpoint`, RFC 8414), discovered once and kept.
//!
//! Every call reports to the observer (outcome and duration) and updates the
//! issuer's [`IntrospectionHealth`], which `/readyz`, the metrics and
//! `diagnose` read: the layer that failed (DNS, TCP, TLS, HTTP status, the
//! authorization server's own `error`, an unreadable answer) and since when.
//! The token never appears in an error, a log line or a label.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_policy::verify::printable;
use portcullis_policy::{IntrospectionAnswer, parse_answer};
use rand::Rng;

use crate::client_assertion::AssertionKey;
use crate::discovery::discover_introspection_endpoint;
use crate::fetch::{FetchError, Fetcher, check_url, error_chain};
use crate::observe::JwksObserver;
use crate::settings::JwksSettings;
use crate::tls::client_config;

/// How the gateway authenticates to the introspection endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret
    /// (RFC 6749 §2.3.1).
    SecretBasic(String),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    SecretPost(String),
    /// `private_key_jwt` (RFC 7523): a JWT signed with the gateway's key.
    PrivateKeyJwt {
        /// The PEM file it came from.
        path: PathBuf,
        /// Its contents.
        pem: Vec<u8>,
        /// The `kid` to put in the assertion's header.
        kid: Option<String>,
    },
}

impl ClientAuth {
    /// The method's registered name.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::PrivateKeyJwt { path, .. } => {
                write!(f, "private_key_jwt({})", path.display())
            }
            other => write!(f, "{}(***)", other.name()),
        }
    }
}

/// The introspection settings of one issuer, with their documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionSettings {
    /// The endpoint; `None`: the issuer metadata's `introspection_endpoint`.
    pub endpoint: Option<String>,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// How the gateway authenticates.
    pub auth: ClientAuth,
    /// TCP + TLS connect timeout (1 s).
    pub connect_timeout: Duration,
    /// Total time of one attempt (2 s).
    pub timeout: Duration,
    /// Further attempts after a connect failure or a 5xx answer (1).
    pub retries: u32,
    /// Largest accepted answer (64 KiB).
    pub max_bytes: usize,
    /// Allow plain http to non-loopback hosts (false).
    pub allow_http: bool,
    /// Extra CA bundle (PEM) for the endpoint.
    pub ca_file: Option<PathBuf>,
    /// How long an active answer is reused, at most (5 min; never past `exp`).
    pub cache_ttl: Duration,
    /// How long an inactive answer is reused (10 s).
    pub negative_cache_ttl: Duration,
    /// How long an active answer past `cache_ttl` keeps serving while the
    /// authorization server cannot answer (0: not at all).
    pub max_stale: Duration,
    /// Calls in flight at once, at most (100).
    pub max_concurrent: usize,
}

impl IntrospectionSettings {
    /// The defaults, for a client and its authentication.
    pub fn new(client_id: String, auth: ClientAuth) -> Self {
        IntrospectionSettings {
            endpoint: None,
            client_id,
            auth,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 1,
            max_bytes: 64 << 10,
            allow_http: false,
            ca_file: None,
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(10),
            max_stale: Duration::ZERO,
            max_concurrent: 100,
        }
    }
}

/// Why an introspection call gave no answer about the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntrospectionError {
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
    /// The answer is not a usable introspection answer.
    #[error("{url}: {why}")]
    Answer {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// `max_concurrent` calls are in flight already.
    #[error("{limit} introspection calls are in flight already (introspection.max_concurrent)")]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// The `private_key_jwt` assertion could not be made.
    #[error("client assertion: {0}")]
    Assertion(String),
}

impl IntrospectionError {
    /// The layer that failed: `DNS`, `TCP`, `TLS`, `timeout`, `HTTP`, `size`,
    /// `URL`, `document` (discovery), `AS error`, `answer`, `capacity`,
    /// `client assertion`.
    pub fn layer(&self) -> &'static str {
        match self {
            IntrospectionError::Transport(e) => e.layer(),
            IntrospectionError::Refused { .. } => "AS error",
            IntrospectionError::Answer { .. } => "answer",
            IntrospectionError::Busy { .. } => "capacity",
            IntrospectionError::Assertion(_) => "client assertion",
        }
    }

    /// A bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            IntrospectionError::Transport(e) => e.kind(),
            IntrospectionError::Refused { .. } => "as_error",
            IntrospectionError::Answer { .. } => "invalid_answer",
            IntrospectionError::Busy { .. } => "busy",
            IntrospectionError::Assertion(_) => "assertion_error",
        }
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            IntrospectionError::Transport(FetchError::Connect { .. })
                | IntrospectionError::Transport(FetchError::Status { status: 500.., .. })
        )
    }
}

/// How an issuer's introspection stands, for `/readyz`, metrics and `diagnose`.
#[derive(Debug, Clone, Default)]
pub struct IntrospectionHealth {
    /// `None` before the first call; then whether the last call got an answer.
    pub answering: Option<bool>,
    /// The last failure, with its layer first (`TCP: cannot connect …`).
    pub last_error: Option<String>,
    /// Since when the calls fail (the first failure of the current run).
    pub failing_since: Option<SystemTime>,
    /// The last call that got an answer.
    pub last_success: Option<SystemTime>,
}

/// The introspection client of one issuer.
pub struct Introspector {
    issuer: String,
    settings: IntrospectionSettings,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    metadata: Fetcher,
    endpoint: ArcSwapOption<String>,
    discovery: tokio::sync::Mutex<Option<(Instant, IntrospectionError)>>,
    assertion_key: Option<AssertionKey>,
    permits: tokio::sync::Semaphore,
    health: ArcSwap<IntrospectionHealth>,
    observer: Arc<dyn JwksObserver>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer)
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

/// A failed discovery is not retried sooner than this: while the authorization
/// server is down, requests fail at once instead of each trying again.
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Introspector {
    /// Builds the client; the CA file and the assertion key are read now.
    pub fn new(
        issuer: String,
        settings: IntrospectionSettings,
        observer: Arc<dyn JwksObserver>,
    ) -> Result<Self, String> {
        let ca = match &settings.ca_file {
            Some(p) => {
                Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?)
            }
            None => None,
        };
        let tls = client_config(ca.as_deref()).map_err(|e| e.to_string())?;
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
        let metadata = Fetcher::new(JwksSettings {
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            allow_http: settings.allow_http,
            ca_file: settings.ca_file.clone(),
            ..JwksSettings::default()
        })
        .map_err(|e| e.to_string())?;
        let assertion_key = match &settings.auth {
            ClientAuth::PrivateKeyJwt { pem, kid, path } => Some(
                AssertionKey::from_pem(pem, kid.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            _ => None,
        };
        if let Some(url) = &settings.endpoint {
            check_url(url, settings.allow_http).map_err(|e| e.to_string())?;
        }
        Ok(Introspector {
            endpoint: ArcSwapOption::from(settings.endpoint.clone().map(Arc::new)),
            permits: tokio::sync::Semaphore::new(settings.max_concurrent),
            issuer,
            settings,
            client,
            metadata,
            discovery: tokio::sync::Mutex::new(None),
            assertion_key,
            health: ArcSwap::from_pointee(IntrospectionHealth::default()),
            observer,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &IntrospectionSettings {
        &self.settings
    }

    /// The endpoint, once configured or discovered.
    pub fn endpoint(&self) -> Option<Arc<String>> {
        self.endpoint.load_full()
    }

    /// How the calls stand.
    pub fn health(&self) -> Arc<IntrospectionHealth> {
        self.health.load_full()
    }

    /// Asks the authorization server about `token`. Never waits for a permit:
    /// with `max_concurrent` calls in flight it fails at once.
    pub async fn introspect(&self, token: &str) -> Result<IntrospectionAnswer, IntrospectionError> {
        let Ok(_permit) = self.permits.try_acquire() else {
            let e = IntrospectionError::Busy {
                limit: self.settings.max_concurrent,
            };
            self.observer
                .introspected(&self.issuer, e.kind(), Duration::ZERO);
            return Err(e);
        };
        let began = Instant::now();
        let result = self.call_with_retries(token).await;
        let outcome = match &result {
            Ok(IntrospectionAnswer::Active(_)) => "active",
            Ok(IntrospectionAnswer::Inactive) => "inactive",
            Err(e) => e.kind(),
        };
        self.observer
            .introspected(&self.issuer, outcome, began.elapsed());
        self.record(result.as_ref().err());
        result
    }

    async fn call_with_retries(
        &self,
        token: &str,
    ) -> Result<IntrospectionAnswer, IntrospectionError> {
        let endpoint = self.resolve_endpoint().await?;
        let mut attempt = 0;
        loop {
            match self.call(&endpoint, token).await {
                Err(e) if e.retryable() && attempt < self.settings.retries => {
                    attempt += 1;
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
                result => return result,
            }
        }
    }

    /// The configured or discovered endpoint; one discovery at a time, and a
    /// failed one is answered from memory for [`DISCOVERY_RETRY_AFTER`].
    async fn resolve_endpoint(&self) -> Result<Arc<String>, IntrospectionError> {
        if let Some(url) = self.endpoint.load_full() {
            return Ok(url);
        }
        let mut memo = self.discovery.lock().await;
        if let Some(url) = self.endpoint.load_full() {
            return Ok(url);
        }
        if let Some((at, e)) = memo.as_ref()
            && at.elapsed() < DISCOVERY_RETRY_AFTER
        {
            return Err(e.clone());
        }
        match discover_introspection_endpoint(&self.metadata, &self.issuer).await {
            Ok(url) => {
                check_url(&url, self.settings.allow_http).map_err(IntrospectionError::Transport)?;
                let url = Arc::new(url);
                self.endpoint.store(Some(Arc::clone(&url)));
                *memo = None;
                Ok(url)
            }
            Err(e) => {
                let e = IntrospectionError::Transport(e);
                *memo = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn call(
        &self,
        endpoint: &str,
        token: &str,
    ) -> Result<IntrospectionAnswer, IntrospectionError> {
        let request = self.request(endpoint, token)?;
        let limit = self.settings.max_bytes;
        let transport = |e: FetchError| IntrospectionError::Transport(e);
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                transport(FetchError::Connect {
                    url: endpoint.to_owned(),
                    why: error_chain(&e),
                })
            })?;
            let status = response.status();
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            if declared.is_some_and(|len| len > limit) {
                return Err(transport(FetchError::TooLarge {
                    url: endpoint.to_owned(),
                    limit,
                }));
            }
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    transport(if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge {
                            url: endpoint.to_owned(),
                            limit,
                        }
                    } else {
                        FetchError::Connect {
                            url: endpoint.to_owned(),
                            why: format!("body: {e}"),
                        }
                    })
                })?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(transport(FetchError::Timeout {
                    url: endpoint.to_owned(),
                    secs: self.settings.timeout.as_secs_f64(),
                }));
            }
        };
        if status == StatusCode::OK {
            return parse_answer(&body).map_err(|e| IntrospectionError::Answer {
                url: endpoint.to_owned(),
                why: e.0,
            });
        }
        Err(oauth_error(endpoint, status, &body).unwrap_or_else(|| {
            transport(FetchError::Status {
                url: endpoint.to_owned(),
                status: status.as_u16(),
            })
        }))
    }

    /// The POST: the token with `token_type_hint=access_token`, and the
    /// client's authentication.
    fn request(
        &self,
        endpoint: &str,
        token: &str,
    ) -> Result<http::Request<Full<Bytes>>, IntrospectionError> {
        let uri =
            check_url(endpoint, self.settings.allow_http).map_err(IntrospectionError::Transport)?;
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        let client_id = &self.settings.client_id;
        let mut builder = http::Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        match &self.settings.auth {
            ClientAuth::SecretBasic(secret) => {
                let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                builder = builder.header(header::AUTHORIZATION, value);
            }
            ClientAuth::SecretPost(secret) => {
                form.append_pair("client_id", client_id)
                    .append_pair("client_secret", secret);
            }
            ClientAuth::PrivateKeyJwt { .. } => {
                let key = self
                    .assertion_key
                    .as_ref()
                    .ok_or_else(|| IntrospectionError::Assertion("no key was loaded".to_owned()))?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let assertion = key
                    .assertion(client_id, &self.issuer, now)
                    .map_err(IntrospectionError::Assertion)?;
                form.append_pair("client_id", client_id)
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", &assertion);
            }
        }
        builder
            .body(Full::new(Bytes::from(form.finish())))
            .map_err(|e| {
                IntrospectionError::Transport(FetchError::BadUrl {
                    url: endpoint.to_owned(),
                    why: e.to_string(),
                })
            })
    }

    fn record(&self, error: Option<&IntrospectionError>) {
        let now = SystemTime::now();
        let previous = self.health.load();
        let next = match error {
            // A full house says nothing about the authorization server.
            Some(IntrospectionError::Busy { .. }) => return,
            None => IntrospectionHealth {
                answering: Some(true),
                last_error: None,
                failing_since: None,
                last_success: Some(now),
            },
            Some(e) => IntrospectionHealth {
                answering: Some(false),
                last_error: Some(format!("{}: {e}", e.layer())),
                failing_since: previous.failing_since.or(Some(now)),
                last_success: previous.last_success,
            },
        };
        // One line when calls start failing and one when they recover, not
        // one per request: an outage under load must not flood the log.
        match (previous.answering, next.answering) {
            (Some(false), Some(false)) => {}
            (_, Some(false)) => tracing::warn!(
                issuer = self.issuer.as_str(),
                error = next.last_error.as_deref().unwrap_or(""),
                "introspection calls fail: tokens not cached get 503 idp_unavailable"
            ),
            (Some(false), Some(true)) => tracing::info!(
                issuer = self.issuer.as_str(),
                "introspection calls answer again"
            ),
            _ => {}
        }
        self.health.store(Arc::new(next));
    }
}

/// An OAuth error answer (`{"error": "…"}`), when the body is one.
fn oauth_error(url: &str, status: StatusCode, body: &[u8]) -> Option<IntrospectionError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    Some(IntrospectionError::Refused {
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
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// 50–100 ms, then 100–200 ms, …: short, as a request waits for it.
fn retry_pause(attempt: u32) -> Duration {
    let base = 50u64 << attempt.saturating_sub(1).min(4);
    Duration::from_millis(base + rand::rng().random_range(0..=base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }

    #[test]
    fn secrets_never_print() {
        let auth = ClientAuth::SecretBasic("hunter2".to_owned());
        assert!(!format!("{auth:?}").contains("hunter2"));
        let settings = IntrospectionSettings::new("gw".into(), auth);
        assert!(!format!("{settings:?}").contains("hunter2"));
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
        let t = |e| IntrospectionError::Transport(e);
        assert!(
            t(FetchError::Connect {
                url: "u".into(),
                why: "refused".into()
            })
            .retryable()
        );
        assert!(
            t(FetchError::Status {
                url: "u".into(),
                status: 503
            })
            .retryable()
        );
        assert!(
            !t(FetchError::Status {
                url: "u".into(),
                status: 401
            })
            .retryable()
        );
        assert!(
            !t(FetchError::Timeout {
                url: "u".into(),
                secs: 2.0
            })
            .retryable()
        );
    }
}
