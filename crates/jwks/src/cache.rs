//! The per-issuer key cache: lock-free reads, background refresh ahead of expiry,
//! single-flight refetch for unknown `kid`s, stale keys through outages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use portcullis_policy::{Algorithm, KeySnapshot};
use rand::Rng;

use crate::discovery::discover;
use crate::fetch::{FetchError, Fetcher};
use crate::observe::JwksObserver;
use crate::parse::{DocumentError, ParsedKeys, SkippedKey, parse_jwks, parse_pem};
use crate::settings::{JwksSettings, KeySource};

/// Where an issuer's keys stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Never fetched yet.
    Pending,
    /// Keys within their cache lifetime.
    Fresh,
    /// Keys past their lifetime but within `max_stale`: still served.
    Stale,
    /// No usable keys: never fetched successfully, or stale beyond `max_stale`.
    Failed,
}

impl KeyStatus {
    /// Lower-case name for metrics, logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Pending => "pending",
            KeyStatus::Fresh => "fresh",
            KeyStatus::Stale => "stale",
            KeyStatus::Failed => "failed",
        }
    }
}

/// One published state of an issuer's keys. Immutable; replaced as a whole.
#[derive(Debug)]
pub struct KeyState {
    /// The keys.
    pub snapshot: Arc<KeySnapshot>,
    /// When the keys were fetched (wall clock).
    pub fetched_at: Option<SystemTime>,
    /// When the keys were fetched (monotonic).
    pub fetched_instant: Option<Instant>,
    /// When the keys' cache lifetime ends (`None`: never, for static keys).
    pub expires_at: Option<Instant>,
    /// The last fetch error, cleared by a success.
    pub last_error: Option<String>,
    /// Keys skipped in the last good document.
    pub skipped: Vec<SkippedKey>,
    /// Incremented when the key set's content changes (rotation).
    pub generation: u64,
    /// Whether any fetch was attempted.
    pub attempted: bool,
}

impl KeyState {
    /// The status at `now`.
    pub fn status(&self, now: Instant, max_stale: Duration) -> KeyStatus {
        if self.snapshot.is_empty() {
            return if self.attempted {
                KeyStatus::Failed
            } else {
                KeyStatus::Pending
            };
        }
        match self.expires_at {
            None => KeyStatus::Fresh,
            Some(exp) if now < exp => KeyStatus::Fresh,
            Some(exp) if now < exp + max_stale => KeyStatus::Stale,
            Some(_) => KeyStatus::Failed,
        }
    }

    /// Age of the keys.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.fetched_instant
            .map(|t| now.saturating_duration_since(t))
    }
}

/// What a refetch for an unknown kid found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KidLookup {
    /// The kid is now known (after a fetch by this or a concurrent caller).
    Found,
    /// Still unknown (fetch done, rate limited, or remembered as unknown).
    Unknown,
}

/// The cache of one issuer's keys.
pub struct KeyCache {
    issuer: String,
    source: KeySource,
    settings: JwksSettings,
    algorithms: Vec<Algorithm>,
    state: ArcSwap<KeyState>,
    fetcher: Option<Fetcher>,
    observer: Arc<dyn JwksObserver>,
    flight: tokio::sync::Mutex<()>,
    attempts: AtomicU64,
    last_attempt: Mutex<Option<Instant>>,
    consecutive_failures: AtomicU64,
    discovered_jwks_uri: ArcSwap<Option<String>>,
    unknown_kids: DashMap<String, Instant>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish()
    }
}

/// Most unknown kids remembered per issuer; past it the memory is cleared.
const MAX_UNKNOWN_KIDS: usize = 10_000;

impl KeyCache {
    /// Creates the cache. Static sources are parsed now; remote ones start
    /// `Pending` until [`KeyCache::refresh`] or the refresher runs.
    pub fn new(
        issuer: String,
        source: KeySource,
        settings: JwksSettings,
        algorithms: Vec<Algorithm>,
        observer: Arc<dyn JwksObserver>,
    ) -> Result<Self, crate::JwksError> {
        let (fetcher, initial) = match &source {
            KeySource::Discovery | KeySource::JwksUri(_) => (
                Some(Fetcher::new(settings.clone()).map_err(crate::JwksError::Fetch)?),
                ParsedKeys::default(),
            ),
            KeySource::StaticJwks { document, .. } => (
                None,
                parse_jwks(document, &algorithms, true).map_err(crate::JwksError::Document)?,
            ),
            KeySource::StaticPem { pem, .. } => (
                None,
                parse_pem(pem, &algorithms).map_err(crate::JwksError::Document)?,
            ),
            KeySource::Secret(secret) => {
                let key = portcullis_policy::VerifyingKey::hmac(None, None, secret, &algorithms)
                    .map_err(|e| {
                        crate::JwksError::Document(DocumentError::Invalid(e.to_string()))
                    })?;
                (
                    None,
                    ParsedKeys {
                        keys: vec![key],
                        skipped: Vec::new(),
                    },
                )
            }
        };
        let is_static = fetcher.is_none();
        for s in &initial.skipped {
            observer.skipped_key(&issuer, &s.kid, &s.reason);
        }
        let count = initial.keys.len();
        let state = KeyState {
            snapshot: Arc::new(KeySnapshot::new(initial.keys)),
            fetched_at: is_static.then(SystemTime::now),
            fetched_instant: is_static.then(Instant::now),
            expires_at: None,
            last_error: None,
            skipped: initial.skipped,
            generation: 1,
            attempted: is_static,
        };
        if is_static {
            observer.key_set(&issuer, count, SystemTime::now());
        }
        Ok(KeyCache {
            issuer,
            source,
            settings,
            algorithms,
            state: ArcSwap::from_pointee(state),
            fetcher,
            observer,
            flight: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            consecutive_failures: AtomicU64::new(0),
            discovered_jwks_uri: ArcSwap::from_pointee(None),
            unknown_kids: DashMap::new(),
        })
    }

    /// The issuer this cache serves.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key source.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The settings.
    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// The current state (lock-free).
    pub fn state(&self) -> Arc<KeyState> {
        self.state.load_full()
    }

    /// The keys to verify with now, or `None` when there are no usable keys
    /// (never fetched, or stale beyond `max_stale`): the caller answers
    /// `idp_unavailable`. Lock-free.
    pub fn usable_snapshot(&self) -> Option<Arc<KeySnapshot>> {
        self.usable_state().map(|s| Arc::clone(&s.snapshot))
    }

    /// The whole state when its keys are usable: the snapshot together with the
    /// generation it belongs to. Lock-free.
    pub fn usable_state(&self) -> Option<Arc<KeyState>> {
        let state = self.state.load_full();
        match state.status(Instant::now(), self.settings.max_stale) {
            KeyStatus::Fresh | KeyStatus::Stale => Some(state),
            KeyStatus::Pending | KeyStatus::Failed => None,
        }
    }

    /// The status now.
    pub fn status(&self) -> KeyStatus {
        self.state
            .load()
            .status(Instant::now(), self.settings.max_stale)
    }

    /// How many fetch attempts were made (each HTTP exchange for the key set).
    pub fn fetch_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    /// Refreshes the key set now, with retries, sharing one flight with any
    /// concurrent refresh. Static sources do nothing.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        if self.fetcher.is_none() {
            return Ok(());
        }
        let seen = self.fetch_attempts();
        let _flight = self.flight.lock().await;
        if self.fetch_attempts() != seen && self.state.load().last_error.is_none() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            match self.fetch_once().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= self.settings.retries => return Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Called when a token names a kid the snapshot lacks. At most one fetch per
    /// `min_refetch_interval`; concurrent callers share it; a kid still unknown
    /// afterwards is remembered for `unknown_kid_ttl`.
    pub async fn refresh_for_kid(&self, kid: Option<&str>) -> KidLookup {
        if self.fetcher.is_none() {
            return KidLookup::Unknown;
        }
        if self.remembered_unknown(kid) {
            return KidLookup::Unknown;
        }
        let seen_attempts = self.fetch_attempts();
        let _flight = self.flight.lock().await;
        // A flight that finished while we waited has already answered for this kid.
        if self.remembered_unknown(kid) {
            return KidLookup::Unknown;
        }
        if self.fetch_attempts() == seen_attempts && !self.rate_limited() {
            let _ = self.fetch_once().await;
        }
        if self.state.load().snapshot.select(kid).is_some() {
            return KidLookup::Found;
        }
        if let Some(k) = kid {
            if self.unknown_kids.len() >= MAX_UNKNOWN_KIDS {
                self.unknown_kids.clear();
            }
            self.unknown_kids.insert(k.to_owned(), Instant::now());
        }
        KidLookup::Unknown
    }

    fn remembered_unknown(&self, kid: Option<&str>) -> bool {
        kid.and_then(|k| {
            self.unknown_kids
                .get(k)
                .map(|seen| seen.elapsed() < self.settings.unknown_kid_ttl)
        })
        .unwrap_or(false)
    }

    fn rate_limited(&self) -> bool {
        let last = self.last_attempt.lock().map(|g| *g).unwrap_or(None);
        last.is_some_and(|t| t.elapsed() < self.settings.min_refetch_interval)
    }

    /// One fetch: discovery when needed, then the JWKS. Publishes a new state on
    /// success; on failure keeps the keys and records the error.
    async fn fetch_once(&self) -> Result<(), FetchError> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        if let Ok(mut g) = self.last_attempt.lock() {
            *g = Some(Instant::now());
        }
        let started = Instant::now();
        let result = self.fetch_keys(fetcher).await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.observer
            .fetched(&self.issuer, outcome, started.elapsed());
        match result {
            Ok((parsed, max_age)) => {
                self.publish(parsed, max_age);
                self.consecutive_failures.store(0, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    issuer = self.issuer.as_str(),
                    error = e.to_string().as_str(),
                    "key set fetch failed; keeping the last good keys"
                );
                if matches!(self.source, KeySource::Discovery) {
                    self.discovered_jwks_uri.store(Arc::new(None));
                }
                self.consecutive_failures.fetch_add(1, Ordering::AcqRel);
                let old = self.state.load_full();
                self.state.store(Arc::new(KeyState {
                    snapshot: Arc::clone(&old.snapshot),
                    fetched_at: old.fetched_at,
                    fetched_instant: old.fetched_instant,
                    expires_at: old.expires_at,
                    last_error: Some(format!("{} layer: {e}", e.layer())),
                    skipped: old.skipped.clone(),
                    generation: old.generation,
                    attempted: true,
                }));
                Err(e)
            }
        }
    }

    async fn fetch_keys(
        &self,
        fetcher: &Fetcher,
    ) -> Result<(ParsedKeys, Option<Duration>), FetchError> {
        let url = match &self.source {
            KeySource::JwksUri(u) => u.clone(),
            _ => match self.discovered_jwks_uri.load().as_ref() {
                Some(u) => u.clone(),
                None => {
                    let u = discover(fetcher, &self.issuer).await?;
                    self.discovered_jwks_uri.store(Arc::new(Some(u.clone())));
                    u
                }
            },
        };
        let fetched = fetcher.get(&url).await?;
        let parsed = parse_jwks(
            &fetched.body,
            &self.algorithms,
            self.settings.allow_symmetric_keys,
        )
        .map_err(|e| FetchError::Invalid {
            url: url.clone(),
            why: e.to_string(),
        })?;
        Ok((parsed, fetched.max_age))
    }

    fn publish(&self, parsed: ParsedKeys, max_age: Option<Duration>) {
        for s in &parsed.skipped {
            tracing::warn!(
                issuer = self.issuer.as_str(),
                kid = s.kid.as_str(),
                reason = s.reason.as_str(),
                "skipped a key of the key set"
            );
            self.observer.skipped_key(&self.issuer, &s.kid, &s.reason);
        }
        let ttl = max_age
            .unwrap_or(self.settings.default_ttl)
            .clamp(self.settings.min_ttl, self.settings.max_ttl);
        let now = Instant::now();
        let snapshot = KeySnapshot::new(parsed.keys);
        let old = self.state.load_full();
        let generation =
            if old.snapshot.fingerprint() == snapshot.fingerprint() && !old.snapshot.is_empty() {
                old.generation
            } else {
                old.generation + 1
            };
        let count = snapshot.len();
        if generation != old.generation {
            self.unknown_kids.clear();
        }
        self.state.store(Arc::new(KeyState {
            snapshot: Arc::new(snapshot),
            fetched_at: Some(SystemTime::now()),
            fetched_instant: Some(now),
            expires_at: Some(now + ttl),
            last_error: None,
            skipped: parsed.skipped,
            generation,
            attempted: true,
        }));
        self.observer
            .key_set(&self.issuer, count, SystemTime::now());
    }

    /// How long the refresher sleeps before the next refresh: at 80% of the
    /// lifetime when keys are good; with backoff after failures.
    pub fn next_refresh_delay(&self) -> Duration {
        let state = self.state.load();
        let failures = self.consecutive_failures.load(Ordering::Acquire);
        if !state.attempted {
            return Duration::ZERO;
        }
        if failures > 0 || state.snapshot.is_empty() {
            let exp = failures.min(6) as u32;
            let base = Duration::from_secs(1u64 << exp).min(Duration::from_secs(60));
            return jitter(
                base.max(
                    self.settings
                        .min_refetch_interval
                        .min(Duration::from_secs(5)),
                ),
            );
        }
        match (state.expires_at, state.fetched_instant) {
            (Some(exp), Some(at)) => {
                let lifetime = exp.saturating_duration_since(at);
                let refresh_at = at + lifetime.mul_f64(0.8);
                refresh_at.saturating_duration_since(Instant::now())
            }
            _ => Duration::from_secs(3600),
        }
    }

    /// Spawns the background refresher. It stops when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.fetcher.as_ref()?;
        let weak: Weak<KeyCache> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                let Some(delay) = weak.upgrade().map(|c| c.next_refresh_delay()) else {
                    return;
                };
                tokio::time::sleep(delay).await;
                let Some(cache) = weak.upgrade() else { return };
                let _ = cache.refresh().await;
            }
        }))
    }
}

fn backoff(attempt: u32) -> Duration {
    jitter(Duration::from_millis(200u64 << attempt.min(6)))
}

/// Adds up to 50% random jitter.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(1.0..1.5);
    d.mul_f64(factor)
}
