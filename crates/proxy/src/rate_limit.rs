//! The rate-limit steps: each policy a route names is kept per key (client
//! address, route, verified client, a header, or a combination) by GCRA, the
//! generic cell rate algorithm (`governor`), in a per-process table bounded in
//! keys.
//!
//! A policy of `count` requests per `window` with a `burst` lets one request
//! through every `window / count` in the long run and at most `burst` back to
//! back. Policies kept per address (and not per client) run at
//! [`Step::IpRateLimit`], before any token is looked at; the others at
//! [`Step::RateLimit`], after authorization
//! ([`RateLimitPolicy::before_authentication`]). Every policy must pass.
//!
//! The table of a policy holds at most `rate_limits.max_keys` keys (a 16-byte
//! entry each, 18 to 37 bytes with the hash table's slack). Keys whose state is back to fresh are forgotten by a sweep
//! (at most once a minute when a new key arrives, once a second when the table is full,
//! off the request path when a runtime is there); a new key that finds the
//! table full of live keys is refused (`table_full`, fail closed).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};
use portcullis_config::{Consistency, LimitMode, OnStoreError, RateKeyPart, RateLimitPolicy};
use portcullis_metrics::Metrics;
use portcullis_metrics::families::RATE_LIMIT_OUTCOMES;
use portcullis_policy::{Reason, Rejection, VerifiedClaims};
use prometheus::IntCounter;

use crate::decision::{DecisionTrace, Step};
use crate::rate_store::SharedStore;

/// How often idle keys are swept at most, while the table has room.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often idle keys are swept at most, while the table is full.
const SWEEP_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

/// One policy's keys and their GCRA state (theoretical arrival times).
#[derive(Default)]
pub struct KeyTable {
    map: DashMap<u64, Nanos, foldhash::fast::RandomState>,
    len: AtomicUsize,
}

/// The table as `governor` sees it (shared with the limiter that owns it).
struct SharedTable(Arc<KeyTable>);

impl StateStore for SharedTable {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        match self.0.map.entry(*key) {
            Entry::Occupied(mut e) => {
                let (t, tat) = f(Some(*e.get()))?;
                *e.get_mut() = tat;
                Ok(t)
            }
            Entry::Vacant(v) => {
                let (t, tat) = f(None)?;
                v.insert(tat);
                self.0.len.fetch_add(1, Ordering::Relaxed);
                Ok(t)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for SharedTable {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.map.retain(|_, tat| *tat >= drop_below);
        self.0.len.store(self.0.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One policy's limiter: kept across reloads while the policy and the table
/// bound are unchanged, so a reload does not reset anyone's budget.
pub struct PolicyLimiter {
    /// The policy.
    pub policy: Arc<RateLimitPolicy>,
    /// Keys it may track.
    pub max_keys: usize,
    table: Arc<KeyTable>,
    limiter: RateLimiter<u64, SharedTable, MonotonicClock, StateInformationMiddleware>,
    clock: MonotonicClock,
    hasher: foldhash::fast::RandomState,
    started: Instant,
    last_sweep_ms: AtomicU64,
    fingerprint: String,
    /// With an approximate shared store: the keys checked since the last
    /// sync, with their key in the store and the requests admitted.
    pending: DashMap<u64, (String, u32), foldhash::fast::RandomState>,
}

/// What a policy decided for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit; `remaining` more may come at once.
    Allow {
        /// Requests the key may still send back to back.
        remaining: u32,
    },
    /// Over the limit; the next request is allowed after `retry_after`.
    Limit {
        /// How long until one more request is allowed.
        retry_after: Duration,
    },
    /// A new key, and the table is full of live keys.
    TableFull,
}

impl PolicyLimiter {
    /// A limiter for `policy`, tracking at most `max_keys` keys.
    pub fn new(policy: Arc<RateLimitPolicy>, max_keys: usize) -> Self {
        let table = Arc::new(KeyTable::default());
        let emission = policy.window / policy.count.max(1);
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(emission.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = MonotonicClock;
        let limiter: RateLimiter<u64, SharedTable, MonotonicClock, NoOpMiddleware<Instant>> =
            RateLimiter::new(quota, SharedTable(Arc::clone(&table)), MonotonicClock);
        let limiter = limiter.with_middleware::<StateInformationMiddleware>();
        PolicyLimiter {
            max_keys,
            table,
            limiter,
            clock,
            hasher: foldhash::fast::RandomState::default(),
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
            fingerprint: fingerprint(&policy),
            pending: DashMap::default(),
            policy,
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.table.len.load(Ordering::Relaxed)
    }

    /// Decides one request of `key`.
    pub fn check(self: &Arc<Self>, key: u64) -> Verdict {
        let keys = self.keys();
        if keys >= self.max_keys && !self.table.map.contains_key(&key) {
            self.sweep_if_due(SWEEP_WHEN_FULL_EVERY);
            return Verdict::TableFull;
        }
        let verdict = match self.limiter.check_key(&key) {
            Ok(snapshot) => Verdict::Allow {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limit {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        };
        // Only a new key can make a sweep worth it: a known key's check reads
        // no clock but the GCRA's own.
        if self.keys() > keys {
            self.sweep_if_due(SWEEP_EVERY);
        }
        verdict
    }

    /// Forgets keys whose state is back to fresh, if the last sweep is older
    /// than `every`: on a blocking thread when a runtime is there, since a
    /// sweep walks the whole table.
    fn sweep_if_due(self: &Arc<Self>, every: Duration) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every_ms
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let me = Arc::clone(self);
                drop(handle.spawn_blocking(move || me.sweep()));
            }
            Err(_) => self.sweep(),
        }
    }

    /// Notes a key checked locally, for the next sync with an approximate
    /// store: `admitted` requests to add there (0 still brings the key's
    /// shared state back). The store key is made once per key and sync.
    pub fn note_for_sync(&self, key: u64, admitted: u32, shared_key: impl FnOnce() -> String) {
        let mut entry = self.pending.entry(key).or_insert_with(|| (shared_key(), 0));
        entry.1 = entry.1.saturating_add(admitted);
    }

    /// Puts back the counts of a sync that failed, for the next one.
    pub fn restore_pending(&self, key: u64, shared_key: String, admitted: u32) {
        let mut entry = self.pending.entry(key).or_insert_with(|| (shared_key, 0));
        entry.1 += admitted;
    }

    /// Takes the keys noted since the last sync.
    pub fn take_pending(&self) -> Vec<(u64, String, u32)> {
        let keys: Vec<u64> = self.pending.iter().map(|e| *e.key()).collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|(k, (key, n))| (k, key, n)))
            .collect()
    }

    /// Merges what the shared store says of a key: its budget is spent until
    /// `debt` from now (every replica's requests included). The local state
    /// only ever moves later, so this replica's own requests are not lost.
    pub fn merge_debt(&self, key: u64, debt: Duration) {
        let now = Nanos::from(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let shared = now + Nanos::from(debt);
        if let Some(mut tat) = self.table.map.get_mut(&key) {
            if shared > *tat {
                *tat = shared;
            }
            return;
        }
        if self.keys() < self.max_keys {
            self.table.map.insert(key, shared);
            self.table.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A token budget's admission of one request of `key`: allowed while the
    /// key has at least one token left (its state is read, not changed: the
    /// request is charged when its answer's usage is known, [`Self::charge`]).
    pub fn admit_tokens(self: &Arc<Self>, key: u64) -> Verdict {
        let now = self.now();
        let tat = self.table.map.get(&key).map(|t| u64::from(*t));
        if tat.is_none() && self.keys() >= self.max_keys {
            self.sweep_if_due(SWEEP_WHEN_FULL_EVERY);
            return Verdict::TableFull;
        }
        let (period, tau) = self.period_and_tau();
        let tat = tat.unwrap_or(now).max(now);
        if tat.saturating_sub(tau) > now {
            return Verdict::Limit {
                retry_after: Duration::from_nanos(tat - tau - now),
            };
        }
        let left = (now + tau + period).saturating_sub(tat) / period.max(1);
        Verdict::Allow {
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
        }
    }

    /// Charges `tokens` to `key` (a token budget, after the answer): its
    /// state moves `tokens` emission intervals later, past the budget if the
    /// answer used more than was left (the key then waits that debt off).
    pub fn charge(self: &Arc<Self>, key: u64, tokens: u64) {
        let (period, _) = self.period_and_tau();
        let now = self.now();
        let cost = period.saturating_mul(tokens);
        match self.table.map.entry(key) {
            Entry::Occupied(mut e) => {
                let tat = u64::from(*e.get()).max(now);
                *e.get_mut() = Nanos::from(tat.saturating_add(cost));
            }
            Entry::Vacant(v) => {
                v.insert(Nanos::from(now.saturating_add(cost)));
                self.table.len.fetch_add(1, Ordering::Relaxed);
                self.sweep_if_due(SWEEP_EVERY);
            }
        }
    }

    /// Now, in nanoseconds since the limiter began (the table's time base).
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The emission interval and the burst tolerance, in nanoseconds.
    fn period_and_tau(&self) -> (u64, u64) {
        let period = u64::try_from((self.policy.window / self.policy.count.max(1)).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let tau = period.saturating_mul(u64::from(self.policy.burst.saturating_sub(1)));
        (period, tau)
    }

    /// Forgets every key whose state is back to fresh, now.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        if self.keys() < self.table.map.capacity() / 4 {
            self.limiter.shrink_to_fit();
        }
    }

    /// The key of a request under this policy in the local table: a hash of
    /// its parts, seeded at random per process (never kept in clear, so a
    /// table holds no client id or header value).
    pub fn key(&self, input: &LimitInput<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        feed_key(&self.policy, input, |bytes| h.write(bytes));
        h.finish()
    }

    /// The key of a request under this policy in the shared store, the same
    /// on every replica: `<prefix><policy>:<settings>:<SHA-256 of the parts>`.
    /// The settings' fingerprint makes a changed policy start afresh there
    /// too; SHA-256 keeps the key free of client values and of collisions a
    /// client could steer.
    pub fn shared_key(&self, prefix: &str, input: &LimitInput<'_>) -> String {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        feed_key(&self.policy, input, |bytes| digest.update(bytes));
        let parts = digest.finalize();
        let mut hex = [0u8; 32];
        crate::headers::hex_into(&parts[..16], &mut hex);
        let mut key = String::with_capacity(prefix.len() + self.policy.name.len() + 52);
        key.push_str(prefix);
        key.push_str(&self.policy.name);
        key.push(':');
        key.push_str(&self.fingerprint);
        key.push(':');
        key.extend(hex.iter().map(|&b| char::from(b)));
        key
    }
}

/// Writes the parts of a request's key under `policy`, each tagged and
/// delimited so that no two different sets of parts write the same bytes.
fn feed_key(policy: &RateLimitPolicy, input: &LimitInput<'_>, mut write: impl FnMut(&[u8])) {
    for part in &policy.key {
        match part {
            RateKeyPart::ClientIp => {
                write(&[1]);
                match input.client_ip {
                    Some(IpAddr::V4(v4)) => write(&v4.octets()),
                    Some(IpAddr::V6(v6)) => write(&v6.octets()),
                    None => write(&[0]),
                }
            }
            RateKeyPart::Route => {
                write(&[2]);
                write(input.route.as_bytes());
                write(&[0xff]);
            }
            RateKeyPart::Client { claims } => {
                write(&[3]);
                if let Some(c) = input.claims {
                    write(c.issuer.as_bytes());
                    write(&[0xff]);
                    match client_value(c, claims) {
                        Some(v) => write(v.as_bytes()),
                        None => write(&[0]),
                    }
                }
                write(&[0xff]);
            }
            RateKeyPart::Header(name) => {
                write(&[4]);
                // Every value of the header, in order: a second copy cannot
                // pick another key's budget.
                for v in input.headers.get_all(name) {
                    write(v.as_bytes());
                    write(&[0xff]);
                }
                write(&[0xfe]);
            }
            RateKeyPart::Model => {
                write(&[5]);
                if let Some(model) = input.model {
                    write(model.as_bytes());
                }
                write(&[0xff]);
            }
        }
    }
}

/// Eight hex digits naming a policy's settings (rate, burst, key).
fn fingerprint(policy: &RateLimitPolicy) -> String {
    use sha2::Digest;
    let text = format!(
        "{}/{}ns/{}/{:?}{}",
        policy.count,
        policy.window.as_nanos(),
        policy.burst,
        policy.key,
        if policy.counts_tokens() {
            "/tokens"
        } else {
            ""
        }
    );
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut hex = [0u8; 8];
    crate::headers::hex_into(&digest[..4], &mut hex);
    hex.iter().map(|&b| char::from(b)).collect()
}

/// The client named by the first of `claims` the token carries (a string, or
/// a number written out).
fn client_value(claims: &VerifiedClaims, names: &[String]) -> Option<String> {
    names.iter().find_map(|n| match claims.claims.get(n)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(x) => Some(x.to_string()),
        _ => None,
    })
}

/// What keys are made of.
pub struct LimitInput<'a> {
    /// The resolved client address (`None`: unknown, one shared key).
    pub client_ip: Option<IpAddr>,
    /// The route's name.
    pub route: &'a str,
    /// The verified claims (after authentication, protected routes).
    pub claims: Option<&'a VerifiedClaims>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The JSON body's model, when the route read it.
    pub model: Option<&'a str>,
}

/// A route's policy with its metric handles, resolved when a configuration
/// is compiled.
pub struct RouteLimit {
    /// The limiter (shared by every route that names the policy): the
    /// decision itself with the local store, the fallback with a shared one
    /// and `on_store_error: local`.
    pub limiter: Arc<PolicyLimiter>,
    /// The shared store, when `rate_limits.store` names one.
    pub store: Option<Arc<SharedStore>>,
    /// `portcullis_rate_limit_decisions_total{route,policy,outcome}` in the
    /// order of `RATE_LIMIT_OUTCOMES`.
    outcomes: [IntCounter; 5],
    /// A token budget's `portcullis_token_budget_tokens_total` and
    /// `portcullis_token_budget_uncharged_total` of the route.
    budget_counters: Option<(IntCounter, IntCounter)>,
}

impl RouteLimit {
    /// Resolves the handles of `limiter` on `route`.
    pub fn new(
        limiter: Arc<PolicyLimiter>,
        store: Option<Arc<SharedStore>>,
        route: &str,
        metrics: &Metrics,
    ) -> Self {
        let policy = limiter.policy.name.clone();
        let family = &metrics.families().rate_limit_decisions;
        let outcomes = RATE_LIMIT_OUTCOMES.map(|o| family.with_label_values(&[route, &policy, o]));
        let budget_counters = limiter.policy.counts_tokens().then(|| {
            let f = metrics.families();
            (
                f.token_budget_tokens.with_label_values(&[route, &policy]),
                f.token_budget_uncharged
                    .with_label_values(&[route, &policy]),
            )
        });
        RouteLimit {
            limiter,
            store,
            outcomes,
            budget_counters,
        }
    }

    /// The decision for one request: in the shared store when there is one
    /// (and, when it fails, as `on_store_error` says), else locally. `None`
    /// for `on_store_error: allow` (no budget is known).
    async fn decide(
        &self,
        input: &LimitInput<'_>,
        dry_run: bool,
    ) -> Result<Option<Verdict>, Rejection> {
        let local = || {
            let key = self.limiter.key(input);
            if self.limiter.policy.counts_tokens() {
                self.limiter.admit_tokens(key)
            } else {
                self.limiter.check(key)
            }
        };
        let Some(store) = &self.store else {
            return Ok(Some(local()));
        };
        if let Consistency::Approximate { .. } = store.settings.consistency {
            // Decided here; the store hears of it at the next sync.
            let hash = self.limiter.key(input);
            if self.limiter.policy.counts_tokens() {
                // Charged (and noted for the sync) when the answer ends.
                return Ok(Some(self.limiter.admit_tokens(hash)));
            }
            let verdict = self.limiter.check(hash);
            let admitted = matches!(verdict, Verdict::Allow { .. });
            self.limiter.note_for_sync(hash, u32::from(admitted), || {
                self.limiter.shared_key(&store.settings.key_prefix, input)
            });
            return Ok(Some(verdict));
        }
        let key = self.limiter.shared_key(&store.settings.key_prefix, input);
        // A token budget's admission only reads: the charge comes later.
        let peek = dry_run || self.limiter.policy.counts_tokens();
        match store.check(&key, &self.limiter.policy, peek).await {
            Ok(verdict) => Ok(Some(verdict)),
            Err(why) => {
                self.outcomes[4].inc();
                match store.settings.on_error {
                    OnStoreError::Local => Ok(Some(local())),
                    OnStoreError::Allow => Ok(None),
                    OnStoreError::Deny => Err(Rejection::new(
                        Reason::RateLimitUnavailable,
                        format!(
                            "{} cannot be checked: the shared store {} failed ({why}) and on_store_error is deny",
                            describe(&self.limiter.policy),
                            store.settings.shown
                        ),
                    )),
                }
            }
        }
    }
}

/// What the rate-limit steps leave for the response: the header fields (when
/// a policy refused, or `rate_limits.response_headers` is on) and the policy
/// that refused or, report-only, would have.
#[derive(Debug, Default)]
pub struct LimitNote {
    /// The policy that refused (or would have): the access log's `rate_limit`.
    pub policy: Option<Arc<RateLimitPolicy>>,
    /// `RateLimit-Policy` items (draft-ietf-httpapi-ratelimit-headers).
    pub policy_items: Vec<String>,
    /// `RateLimit` items.
    pub state_items: Vec<String>,
    /// `Retry-After`, in whole seconds, for a refusal.
    pub retry_after: Option<u64>,
    /// Token budgets the request was admitted by, charged when its answer's
    /// usage is known.
    pub charges: Vec<Charge>,
}

/// A token budget's charge for one admitted request, settled when the
/// answer has ended and its usage is known.
pub struct Charge {
    limiter: Arc<PolicyLimiter>,
    store: Option<Arc<SharedStore>>,
    key: u64,
    shared_key: Option<String>,
    tokens: IntCounter,
    uncharged: IntCounter,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("policy", &self.limiter.policy.name)
            .finish_non_exhaustive()
    }
}

impl Charge {
    /// Charges the answer's `tokens` (input and output together) to the
    /// budget: locally at once, in a shared store by a task of its own (the
    /// response is not held for it). `None` (the usage could not be read) of
    /// a successful answer is counted as uncharged.
    pub fn settle(self, tokens: Option<u64>, successful: bool) {
        let Some(n) = tokens else {
            if successful {
                self.uncharged.inc();
            }
            return;
        };
        self.tokens.inc_by(n);
        if n == 0 {
            return;
        }
        self.limiter.charge(self.key, n);
        let (Some(store), Some(shared_key)) = (self.store, self.shared_key) else {
            return;
        };
        if let Consistency::Approximate { .. } = store.settings.consistency {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            self.limiter.note_for_sync(self.key, n, || shared_key);
            return;
        }
        let policy = Arc::clone(&self.limiter.policy);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn(async move {
                if let Err(why) = store.charge(&shared_key, &policy, n).await {
                    tracing::warn!(
                        policy = policy.name.as_str(),
                        error = why.as_str(),
                        "token budget charge not recorded in the shared store"
                    );
                }
            }));
        }
    }
}

impl LimitNote {
    /// Writes the header fields into a response's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.policy_items.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.policy_items.join(", "))
        {
            headers.insert("ratelimit-policy", v);
        }
        if !self.state_items.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.state_items.join(", "))
        {
            headers.insert("ratelimit", v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
}

/// Runs the policies of `limits` that belong to `step` (per address before
/// authentication, the rest after it), recording each in `steps`; a
/// `dry_run` only reads a shared store's budgets. A refusal
/// of an enforced policy is returned; report-only policies only count and
/// warn. `note` gets the header fields when `headers_always` is on or a
/// policy refused.
pub async fn check(
    step: Step,
    limits: &[RouteLimit],
    input: &LimitInput<'_>,
    headers_always: bool,
    dry_run: bool,
    steps: &mut DecisionTrace,
    note: &mut Option<Box<LimitNote>>,
) -> Result<(), Rejection> {
    let mut checked = false;
    for limit in limits {
        let policy = &limit.limiter.policy;
        if policy.before_authentication() != (step == Step::IpRateLimit) {
            continue;
        }
        checked = true;
        let verdict = match limit.decide(input, dry_run).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                limit.outcomes[0].inc();
                steps.warn(step, None, || {
                    format!(
                        "{}: the shared store failed; on_store_error: allow let it through",
                        describe(policy)
                    )
                });
                continue;
            }
            Err(rejection) => {
                steps.fail(step, rejection.reason);
                note.get_or_insert_with(Box::default).policy = Some(Arc::clone(policy));
                return Err(rejection);
            }
        };
        let over = !matches!(verdict, Verdict::Allow { .. });
        let report = policy.mode == LimitMode::Report;
        if let Some((tokens, uncharged)) = &limit.budget_counters
            && (!over || report)
            && !dry_run
        {
            let n = note.get_or_insert_with(Box::default);
            n.charges.push(Charge {
                limiter: Arc::clone(&limit.limiter),
                store: limit.store.clone(),
                key: limit.limiter.key(input),
                shared_key: limit
                    .store
                    .as_ref()
                    .map(|s| limit.limiter.shared_key(&s.settings.key_prefix, input)),
                tokens: tokens.clone(),
                uncharged: uncharged.clone(),
            });
        }
        let outcome = match (verdict, report) {
            (Verdict::Allow { .. }, _) => 0,
            (_, true) => 2,
            (Verdict::Limit { .. }, false) => 1,
            (Verdict::TableFull, false) => 3,
        };
        limit.outcomes[outcome].inc();
        if headers_always || (over && !report) {
            let n = note.get_or_insert_with(Box::default);
            n.policy_items.push(policy_item(policy));
            n.state_items.push(state_item(policy, verdict));
        }
        if !over {
            steps.pass_with(step, || {
                format!(
                    "{}: under the limit ({})",
                    describe(policy),
                    state_item(policy, verdict)
                )
            });
            continue;
        }
        let detail = refusal_detail(policy, verdict);
        let n = note.get_or_insert_with(Box::default);
        n.policy = Some(Arc::clone(policy));
        let reason = if policy.counts_tokens() {
            Reason::TokenBudgetExhausted
        } else {
            Reason::RateLimited
        };
        if report {
            steps.warn(step, Some(reason), || {
                format!("report-only: would refuse: {detail}")
            });
            continue;
        }
        n.retry_after = Some(match verdict {
            Verdict::Limit { retry_after } => ceil_secs(retry_after),
            _ => 1,
        });
        steps.fail(step, reason);
        return Err(Rejection::new(reason, detail));
    }
    if !checked {
        steps.skip(step, || {
            "no rate-limit policy of the route applies here".to_owned()
        });
    }
    Ok(())
}

/// `per_client (600 per 60s, burst 600, kept per client)`.
pub fn describe(policy: &RateLimitPolicy) -> String {
    if policy.counts_tokens() {
        return format!(
            "token budget {} ({} tokens per {}, kept per {})",
            policy.name,
            policy.count,
            seconds(policy.window),
            policy.key_kinds()
        );
    }
    format!(
        "policy {} ({} per {}, burst {}, kept per {})",
        policy.name,
        policy.count,
        seconds(policy.window),
        policy.burst,
        policy.key_kinds()
    )
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s}s")
    } else {
        format!("{:.3}s", s)
    }
}

fn refusal_detail(policy: &RateLimitPolicy, verdict: Verdict) -> String {
    match verdict {
        Verdict::Limit { retry_after } => format!(
            "{} is exhausted for this {}; retry in {}",
            describe(policy),
            policy.key_kinds(),
            seconds(Duration::from_millis(
                u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)
            ))
        ),
        _ => format!(
            "{}: the gateway tracks as many keys as it may (rate_limits.max_keys) and none is idle; new keys are refused until some are",
            describe(policy)
        ),
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`, `t=`).
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// `"per_client";q=600;w=60` (RateLimit-Policy).
fn policy_item(policy: &RateLimitPolicy) -> String {
    format!(
        "\"{}\";q={};w={}",
        policy.name,
        policy.burst,
        policy.window.as_secs().max(1)
    )
}

/// `"per_client";r=12;t=3` (RateLimit: remaining, seconds to full).
fn state_item(policy: &RateLimitPolicy, verdict: Verdict) -> String {
    let emission = policy.window.as_secs_f64() / f64::from(policy.count.max(1));
    let (remaining, reset) = match verdict {
        Verdict::Allow { remaining } => (
            remaining,
            (f64::from(policy.burst.saturating_sub(remaining)) * emission).ceil() as u64,
        ),
        Verdict::Limit { retry_after } => (0, ceil_secs(retry_after)),
        Verdict::TableFull => (0, 1),
    };
    format!("\"{}\";r={remaining};t={reset}", policy.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: &str, burst: u32, key: Vec<RateKeyPart>) -> Arc<RateLimitPolicy> {
        let (count, window) = portcullis_config::rate_limits::parse_rate(rate).unwrap();
        Arc::new(RateLimitPolicy {
            name: "p".into(),
            count,
            window,
            burst,
            key,
            mode: LimitMode::Enforce,
            unit: portcullis_config::LimitUnit::Requests,
        })
    }

    fn input<'a>(ip: &str, headers: &'a HeaderMap) -> LimitInput<'a> {
        LimitInput {
            client_ip: Some(ip.parse().unwrap()),
            route: "r",
            claims: None,
            headers,
            model: None,
        }
    }

    #[test]
    fn a_token_budget_admits_while_a_token_is_left_and_charges_into_debt() {
        let mut p = (*policy("10/hour", 10, vec![RateKeyPart::Route])).clone();
        p.unit = portcullis_config::LimitUnit::Tokens;
        let limiter = Arc::new(PolicyLimiter::new(Arc::new(p), 100));
        let key = 7;
        assert_eq!(limiter.admit_tokens(key), Verdict::Allow { remaining: 10 });
        // Admission reads only: nothing is spent until the charge.
        assert_eq!(limiter.admit_tokens(key), Verdict::Allow { remaining: 10 });
        limiter.charge(key, 6);
        assert!(matches!(
            limiter.admit_tokens(key),
            Verdict::Allow { remaining: 4 }
        ));
        // Beyond what is left: admitted once more, then in debt.
        limiter.charge(key, 6);
        match limiter.admit_tokens(key) {
            // 2 tokens of debt and one to spend: 3 × 360 s.
            Verdict::Limit { retry_after } => {
                assert!(retry_after > Duration::from_secs(1070), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(1080), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_burst_then_refusals_with_a_retry_time() {
        let limiter = Arc::new(PolicyLimiter::new(
            policy("10/min", 3, vec![RateKeyPart::ClientIp]),
            100,
        ));
        let headers = HeaderMap::new();
        let key = limiter.key(&input("192.0.2.1", &headers));
        for left in [2, 1, 0] {
            assert_eq!(limiter.check(key), Verdict::Allow { remaining: left });
        }
        match limiter.check(key) {
            Verdict::Limit { retry_after } => {
                assert!(retry_after <= Duration::from_secs(6), "{retry_after:?}");
                assert!(retry_after > Duration::from_secs(5), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        // Another address has its own budget.
        let other = limiter.key(&input("192.0.2.2", &headers));
        assert_ne!(key, other);
        assert_eq!(limiter.check(other), Verdict::Allow { remaining: 2 });
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_forgets_idle_ones() {
        // 1000 a second: a key is fresh again a millisecond after its request.
        let limiter = Arc::new(PolicyLimiter::new(
            policy("1000/s", 1, vec![RateKeyPart::ClientIp]),
            2,
        ));
        let headers = HeaderMap::new();
        let keys: Vec<u64> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|ip| limiter.key(&input(ip, &headers)))
            .collect();
        assert!(matches!(limiter.check(keys[0]), Verdict::Allow { .. }));
        assert!(matches!(limiter.check(keys[1]), Verdict::Allow { .. }));
        assert_eq!(limiter.check(keys[2]), Verdict::TableFull);
        assert_eq!(limiter.keys(), 2);
        std::thread::sleep(Duration::from_millis(5));
        limiter.sweep();
        assert_eq!(limiter.keys(), 0, "idle keys are forgotten");
        assert!(matches!(limiter.check(keys[2]), Verdict::Allow { .. }));
    }

    #[test]
    fn header_keys_take_every_value_and_absent_ones_share() {
        let limiter = PolicyLimiter::new(
            policy(
                "1/s",
                1,
                vec![RateKeyPart::Header("x-api-key".parse().unwrap())],
            ),
            10,
        );
        let mut one = HeaderMap::new();
        one.append("x-api-key", HeaderValue::from_static("a"));
        let mut two = one.clone();
        two.append("x-api-key", HeaderValue::from_static("b"));
        let (none_a, none_b) = (HeaderMap::new(), HeaderMap::new());
        let k = |h: &HeaderMap| limiter.key(&input("192.0.2.1", h));
        assert_ne!(k(&one), k(&two));
        assert_eq!(k(&none_a), k(&none_b));
        assert_ne!(k(&one), k(&none_a));
    }

    #[test]
    fn retry_times_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_secs(6)), 6);
        assert_eq!(ceil_secs(Duration::from_millis(5001)), 6);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }

    #[test]
    fn header_items() {
        let p = policy("600/min", 600, vec![RateKeyPart::Route]);
        assert_eq!(policy_item(&p), "\"p\";q=600;w=60");
        assert_eq!(
            state_item(&p, Verdict::Allow { remaining: 598 }),
            "\"p\";r=598;t=1"
        );
        assert_eq!(
            state_item(
                &p,
                Verdict::Limit {
                    retry_after: Duration::from_millis(2500)
                }
            ),
            "\"p\";r=0;t=3"
        );
    }
}
