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
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use portcullis_policy::{IntrospectionAnswer, parse_answer};
use rand::Rng;

use crate::client_assertion::AssertionKey;
use crate::discovery::discover_introspection_endpoint;
use crate::fetch::{FetchError, Fetcher, check_url};
pub use crate::oauth_http::OAuthCallError;
use crate::oauth_http::{OAuthHttp, basic, oauth_error};
use crate::observe::JwksObserver;
use crate::settings::JwksSettings;

/// How the gateway authenticates to the introspection endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret
    /// (RFC 6749 §2.3.1).
    SecretBasic(String),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    SecretPost(String),
    /// `client_secret_json`: the same members in a JSON body (token endpoints
    /// that take JSON, such as Auth0's; not for introspection).
    SecretJson(String),
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
            ClientAuth::SecretJson(_) => "client_secret_json",
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
pub type IntrospectionError = OAuthCallError;

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
    http: OAuthHttp,
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
        let http = OAuthHttp::new(settings.connect_timeout, settings.ca_file.as_deref())?;
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
            http,
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
        let (status, body) = self
            .http
            .exchange(
                request,
                endpoint,
                self.settings.max_bytes,
                self.settings.timeout,
            )
            .await
            .map_err(IntrospectionError::Transport)?;
        if status == StatusCode::OK {
            return parse_answer(&body).map_err(|e| IntrospectionError::Answer {
                url: endpoint.to_owned(),
                why: e.0,
            });
        }
        Err(oauth_error(endpoint, status, &body).unwrap_or_else(|| {
            IntrospectionError::Transport(FetchError::Status {
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
                builder = builder.header(header::AUTHORIZATION, basic(client_id, secret));
            }
            // Introspection endpoints take form bodies: the configuration
            // refuses client_secret_json here, and the members go in the form.
            ClientAuth::SecretPost(secret) | ClientAuth::SecretJson(secret) => {
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

/// 50–100 ms, then 100–200 ms, …: short, as a request waits for it.
fn retry_pause(attempt: u32) -> Duration {
    let base = 50u64 << attempt.saturating_sub(1).min(4);
    Duration::from_millis(base + rand::rng().random_range(0..=base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let auth = ClientAuth::SecretBasic("hunter2".to_owned());
        assert!(!format!("{auth:?}").contains("hunter2"));
        let settings = IntrospectionSettings::new("gw".into(), auth);
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
