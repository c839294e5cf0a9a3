//! An upstream's OAuth 2.0 client credentials token (`credential.oauth`): got
//! from the upstream's authorization server, held in memory, sent as
//! `Authorization: Bearer`, and renewed before it expires.
//!
//! - **Steady state never waits**: a background task renews the token at 80 %
//!   of its lifetime (with jittered backoff while the endpoint fails), so
//!   requests read the held token lock-free. Only a request that finds no
//!   usable token (the first, or after every renewal failed) waits, for one
//!   single-flight fetch shared by all such requests.
//! - **Never sent stale**: a token is not sent in its last `expiry_margin`.
//! - **Revoked upstream**: when the upstream answers 401 to a token, it is
//!   dropped (if still held) and the caller retries once with a fresh one.
//! - **Failures are named**: no token is `upstream_credential_unavailable`
//!   (502), with the layer (DNS, TCP, TLS, HTTP status, the AS's `error`,
//!   an unreadable answer) in the detail, `/readyz` and `diagnose`.
//!
//! The token never appears in a log line, a label or a body.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use portcullis_jwks::{OAuthCallError, TokenClient};
use portcullis_metrics::UpstreamMetrics;
use portcullis_policy::{Reason, Rejection};
use rand::Rng;

/// The token being sent.
struct Held {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// When it was received.
    received: Instant,
    /// The last instant it may be sent.
    usable_until: Instant,
    /// When the background task renews it.
    renew_at: Instant,
    /// Its lifetime as the endpoint gave it (or the default).
    lifetime: Duration,
}

/// How the token endpoint stands.
#[derive(Debug, Clone, Default)]
pub struct TokenHealth {
    /// The last failure, with its layer first; `None` after a success.
    pub last_error: Option<String>,
    /// Since when fetches fail.
    pub failing_since: Option<SystemTime>,
    /// Fetches that succeeded.
    pub fetched: u64,
}

/// The token of one upstream.
pub struct UpstreamToken {
    upstream: String,
    client: TokenClient,
    held: ArcSwapOption<Held>,
    flight: tokio::sync::Mutex<()>,
    health: ArcSwap<TokenHealth>,
    metrics: Arc<UpstreamMetrics>,
}

/// Attempts of one fetch a request waits for (a connect failure or a 5xx is
/// tried again after 100–200 ms, then 200–400 ms).
const FETCH_ATTEMPTS: u32 = 3;

impl UpstreamToken {
    /// A client for `upstream`'s token endpoint; nothing is fetched yet.
    pub fn new(upstream: &str, client: TokenClient, metrics: Arc<UpstreamMetrics>) -> Self {
        UpstreamToken {
            upstream: upstream.to_owned(),
            client,
            held: ArcSwapOption::empty(),
            flight: tokio::sync::Mutex::new(()),
            health: ArcSwap::from_pointee(TokenHealth::default()),
            metrics,
        }
    }

    /// The token endpoint's settings.
    pub fn settings(&self) -> &portcullis_jwks::ClientCredentialsSettings {
        self.client.settings()
    }

    /// How the token endpoint stands.
    pub fn health(&self) -> Arc<TokenHealth> {
        self.health.load_full()
    }

    /// The held token's age, when one is held.
    pub fn age(&self) -> Option<Duration> {
        self.held.load().as_ref().map(|h| h.received.elapsed())
    }

    /// The `Authorization` value to send: the held token when it is usable,
    /// else one fetched now (single flight).
    pub async fn header(&self) -> Result<HeaderValue, Rejection> {
        if let Some(held) = self.held.load().as_ref()
            && Instant::now() < held.usable_until
        {
            return Ok(held.header.clone());
        }
        self.fetch_shared(None).await
    }

    /// The upstream refused `rejected` (401): drop it if it is still held and
    /// get another (unless a concurrent request already did).
    pub async fn after_refusal(&self, rejected: &HeaderValue) -> Result<HeaderValue, Rejection> {
        self.fetch_shared(Some(rejected)).await
    }

    /// One fetch for every request that waits: whoever gets the lock first
    /// fetches; the others find its token held.
    async fn fetch_shared(&self, rejected: Option<&HeaderValue>) -> Result<HeaderValue, Rejection> {
        let _flight = self.flight.lock().await;
        if let Some(held) = self.held.load().as_ref()
            && Instant::now() < held.usable_until
            && rejected.is_none_or(|r| r != held.header)
        {
            return Ok(held.header.clone());
        }
        if rejected.is_some() {
            self.held.store(None);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_once().await {
                Ok(header) => return Ok(header),
                Err(e) if e.retryable() && attempt < FETCH_ATTEMPTS => {
                    tokio::time::sleep(pause(attempt, Duration::from_millis(100))).await;
                }
                Err(e) => {
                    return Err(Rejection::new(
                        Reason::UpstreamCredentialUnavailable,
                        format!(
                            "no token for upstream {} from its token endpoint ({}: {e})",
                            self.upstream,
                            e.layer()
                        ),
                    ));
                }
            }
        }
    }

    /// Asks the endpoint once; a token received is held at once.
    async fn fetch_once(&self) -> Result<HeaderValue, OAuthCallError> {
        let result = self.client.fetch().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics.token_fetch(outcome);
        let previous = self.health.load_full();
        match result {
            Ok(token) => {
                let mut header = HeaderValue::from_str(&format!("Bearer {}", token.access_token))
                    .map_err(|_| OAuthCallError::Answer {
                    url: self.client.settings().token_url.clone(),
                    why: "access_token cannot be sent in a header".to_owned(),
                })?;
                header.set_sensitive(true);
                let now = Instant::now();
                let margin = self.client.settings().expiry_margin.min(token.lifetime / 2);
                self.held.store(Some(Arc::new(Held {
                    header: header.clone(),
                    received: now,
                    usable_until: now + token.lifetime.saturating_sub(margin),
                    renew_at: now
                        + token
                            .lifetime
                            .mul_f64(0.8)
                            .min(token.lifetime.saturating_sub(margin)),
                    lifetime: token.lifetime,
                })));
                if previous.last_error.is_some() {
                    tracing::info!(
                        upstream = self.upstream.as_str(),
                        "upstream token endpoint answers again"
                    );
                }
                self.health.store(Arc::new(TokenHealth {
                    last_error: None,
                    failing_since: None,
                    fetched: previous.fetched + 1,
                }));
                Ok(header)
            }
            Err(e) => {
                if previous.last_error.is_none() {
                    tracing::warn!(
                        upstream = self.upstream.as_str(),
                        error = e.to_string().as_str(),
                        layer = e.layer(),
                        "upstream token fetch failed"
                    );
                }
                self.health.store(Arc::new(TokenHealth {
                    last_error: Some(format!("{}: {e}", e.layer())),
                    failing_since: previous.failing_since.or(Some(SystemTime::now())),
                    fetched: previous.fetched,
                }));
                Err(e)
            }
        }
    }

    /// Starts the background renewal: a first fetch now, then each token
    /// renewed at 80 % of its lifetime; after a failure, again after 1 s,
    /// 2 s, 4 s … (at most 60 s, with jitter). Ends when the upstream is
    /// dropped (a reload that changed it).
    pub fn spawn_renewal(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(this) = weak.upgrade() else { return };
                let wait = match this.held.load().as_ref() {
                    _ if failures > 0 => {
                        pause(failures, Duration::from_secs(1)).min(Duration::from_secs(60))
                    }
                    Some(h) => h.renew_at.saturating_duration_since(Instant::now()),
                    None => Duration::ZERO,
                };
                drop(this);
                tokio::time::sleep(wait).await;
                let Some(this) = weak.upgrade() else { return };
                let renewed = {
                    let _flight = this.flight.lock().await;
                    // A request may have fetched meanwhile.
                    let due = this
                        .held
                        .load()
                        .as_ref()
                        .is_none_or(|h| Instant::now() >= h.renew_at);
                    if due {
                        this.fetch_once().await.is_ok()
                    } else {
                        true
                    }
                };
                failures = if renewed {
                    0
                } else {
                    failures.saturating_add(1)
                };
            }
        });
    }

    /// One line for `/readyz`.
    pub fn describe(&self) -> String {
        let health = self.health();
        let held = self.held.load();
        let token = match held.as_ref() {
            Some(h) => {
                let left = h.usable_until.saturating_duration_since(Instant::now());
                format!(
                    "a token held, {} of its {} left",
                    portcullis_policy::time::human_duration(left.as_secs() as i64),
                    portcullis_policy::time::human_duration(h.lifetime.as_secs() as i64)
                )
            }
            None => "no token held".to_owned(),
        };
        match &health.last_error {
            None => format!("upstream {} token: {token}", self.upstream),
            Some(e) => format!(
                "upstream {} token: {token}; the token endpoint FAILS ({e}){}",
                self.upstream,
                if held.is_none() {
                    "; requests get 502 upstream_credential_unavailable"
                } else {
                    ""
                }
            ),
        }
    }
}

/// `base × 2^(attempt-1)`, plus up to as much again at random.
fn pause(attempt: u32, base: Duration) -> Duration {
    let step = base * (1u32 << attempt.saturating_sub(1).min(6));
    step + step.mul_f64(rand::rng().random::<f64>())
}
