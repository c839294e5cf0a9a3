//! The verified-token cache: SHA-256 of the whole token -> what was decided
//! about it, so a token's signature is checked (or the authorization server
//! asked about it) once, not on every request.
//!
//! A JWT's entry is used only while the issuer's key set is the one it was
//! verified against (a rotation or removal invalidates it), until the token's
//! `exp` and at most `max_ttl`. An introspected token's entry (RFC 7662) is
//! used only by routes whose introspecting issuer made it, until its `exp` and
//! at most the issuer's `introspection.cache_ttl` (an `active: false` answer
//! for `negative_cache_ttl`); past that, an active answer may still serve for
//! `max_stale` while the authorization server cannot answer. `exp`/`nbf` are
//! checked on every use, and route rules (audience, scopes, claims, IP) are
//! always evaluated per request.
//!
//! The cache is bounded twice: in entries (`max_entries`) and in bytes
//! (`max_bytes`), each entry counted at its real size (the claims with every JSON
//! claim, the key and the map's own overhead), so a stream of large tokens cannot
//! take more memory than the bytes bound whatever their number.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use portcullis_jwks::KeyCache;
use portcullis_policy::VerifiedClaims;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::introspect::OpaqueTokens;

/// The cache key: SHA-256 of the whole token.
pub type TokenKey = [u8; 32];

/// Hashes a token.
pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// Who decided about a cached token, and so when the decision still holds.
enum Origin {
    /// Verified with this key cache's key set of this generation.
    Keys {
        keys: Arc<KeyCache>,
        generation: u64,
    },
    /// Answered by this issuer's introspection endpoint.
    Introspection(Arc<OpaqueTokens>),
}

struct Entry {
    /// The claims; `None` for an introspection answer of `active: false`.
    claims: Option<Arc<VerifiedClaims>>,
    origin: Origin,
    /// Until when the entry is used as is.
    valid_until: Instant,
    /// Until when an introspected entry may serve while the authorization
    /// server cannot answer (equal to `valid_until` otherwise).
    stale_until: Instant,
    /// When it was cached.
    cached_at: Instant,
    /// What the entry holds in memory, counted in [`TokenCache::bytes`].
    size: usize,
}

/// What a lookup found.
pub enum Lookup {
    /// A JWT's claims verified earlier with the issuer's current keys.
    Hit(Arc<VerifiedClaims>),
    /// An introspected token's claims, within their cache lifetime.
    Introspected(Arc<VerifiedClaims>),
    /// The authorization server said `active: false`, this long ago.
    Inactive(Duration),
    /// An introspected token's claims past their cache lifetime but within
    /// `max_stale`, cached this long ago: usable only if the authorization
    /// server cannot answer now.
    Stale(Arc<VerifiedClaims>, Duration),
    /// Nothing usable.
    Miss,
}

/// What an entry costs beyond its claims: the key, the entry itself and the
/// map's slot and shard bookkeeping.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<TokenKey>() + std::mem::size_of::<Entry>() + 16;

/// A bounded concurrent map of verified tokens.
pub struct TokenCache {
    map: DashMap<TokenKey, Entry, foldhash::fast::RandomState>,
    enabled: AtomicBool,
    max_entries: AtomicUsize,
    max_bytes: AtomicUsize,
    max_ttl_ms: AtomicU64,
    /// The sum of the entries' sizes.
    bytes: AtomicUsize,
}

/// What a lookup or insert did, for the hit/miss/eviction counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// Served from the cache.
    Hit,
    /// Not cached (or stale).
    Miss,
}

impl TokenCache {
    /// An empty cache.
    pub fn new(enabled: bool, max_entries: usize, max_bytes: usize, max_ttl: Duration) -> Self {
        TokenCache {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            enabled: AtomicBool::new(enabled),
            max_entries: AtomicUsize::new(max_entries),
            max_bytes: AtomicUsize::new(max_bytes),
            max_ttl_ms: AtomicU64::new(max_ttl.as_millis() as u64),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Applies new settings (on reload).
    pub fn configure(
        &self,
        enabled: bool,
        max_entries: usize,
        max_bytes: usize,
        max_ttl: Duration,
    ) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.max_entries.store(max_entries, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.max_ttl_ms
            .store(max_ttl.as_millis() as u64, Ordering::Relaxed);
        if !enabled {
            self.retain(|_| false);
        }
    }

    /// The bytes the entries hold (their counted sizes).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keeps the entries `keep` says yes to, keeping the byte count exact.
    fn retain(&self, mut keep: impl FnMut(&Entry) -> bool) {
        self.map.retain(|_, e| {
            let kept = keep(e);
            if !kept {
                self.bytes.fetch_sub(e.size, Ordering::Relaxed);
            }
            kept
        });
    }

    fn remove(&self, key: &TokenKey) {
        if let Some((_, e)) = self.map.remove(key) {
            self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        }
    }

    /// Whether verified tokens are cached at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What is cached for `key`, as far as this route may use it: a JWT's
    /// claims when they were verified by `keys` (the same issuer cache the
    /// route uses) against its current key set; an introspection answer when
    /// `introspector` (the route's introspecting issuer) made it; in both cases
    /// not past their cache lifetime.
    pub fn get(
        &self,
        key: &TokenKey,
        keys: impl Fn(&str) -> Option<Arc<KeyCache>>,
        introspector: Option<&Arc<OpaqueTokens>>,
    ) -> Lookup {
        if !self.enabled.load(Ordering::Relaxed) {
            return Lookup::Miss;
        }
        let now = Instant::now();
        let (claims, usable) = {
            let Some(e) = self.map.get(key) else {
                return Lookup::Miss;
            };
            let age = now.saturating_duration_since(e.cached_at);
            match &e.origin {
                Origin::Introspection(by) => {
                    if !introspector.is_some_and(|mine| Arc::ptr_eq(mine, by)) {
                        return Lookup::Miss;
                    }
                    return match &e.claims {
                        _ if now >= e.stale_until => Lookup::Miss,
                        Some(c) if now >= e.valid_until => Lookup::Stale(Arc::clone(c), age),
                        Some(c) => Lookup::Introspected(Arc::clone(c)),
                        None => Lookup::Inactive(age),
                    };
                }
                Origin::Keys {
                    keys: cache,
                    generation,
                } => {
                    let Some(claims) = &e.claims else {
                        return Lookup::Miss;
                    };
                    let Some(current) = keys(&claims.issuer) else {
                        return Lookup::Miss;
                    };
                    let usable = Arc::ptr_eq(&current, cache)
                        && current.state().generation == *generation
                        && now < e.valid_until;
                    (Arc::clone(claims), usable)
                }
            }
        };
        if !usable {
            self.remove(key);
            return Lookup::Miss;
        }
        Lookup::Hit(claims)
    }

    /// Caches verified claims; returns how many entries were evicted to make room.
    pub fn insert(
        &self,
        key: TokenKey,
        claims: Arc<VerifiedClaims>,
        keys: Arc<KeyCache>,
        generation: u64,
        now_unix: i64,
    ) -> u64 {
        if !self.enabled.load(Ordering::Relaxed) {
            return 0;
        }
        let until_exp =
            Duration::from_secs(claims.expires_at.saturating_sub(now_unix).max(0) as u64);
        let ttl = until_exp.min(Duration::from_millis(
            self.max_ttl_ms.load(Ordering::Relaxed),
        ));
        self.put(
            key,
            Some(claims),
            Origin::Keys { keys, generation },
            ttl,
            Duration::ZERO,
        )
    }

    /// Caches an introspection answer: `claims` for an active token (kept
    /// until its `exp` and at most `ttl`, then usable for `max_stale` more
    /// while the authorization server fails), `None` for an inactive one (kept
    /// `ttl`). Returns how many entries were evicted to make room.
    pub fn insert_introspected(
        &self,
        key: TokenKey,
        claims: Option<Arc<VerifiedClaims>>,
        by: Arc<OpaqueTokens>,
        ttl: Duration,
        max_stale: Duration,
        now_unix: i64,
    ) -> u64 {
        if !self.enabled.load(Ordering::Relaxed) {
            return 0;
        }
        let ttl = match &claims {
            Some(c) => ttl.min(Duration::from_secs(
                c.expires_at.saturating_sub(now_unix).max(0) as u64,
            )),
            None => ttl,
        };
        self.put(key, claims, Origin::Introspection(by), ttl, max_stale)
    }

    fn put(
        &self,
        key: TokenKey,
        claims: Option<Arc<VerifiedClaims>>,
        origin: Origin,
        ttl: Duration,
        max_stale: Duration,
    ) -> u64 {
        if ttl.is_zero() {
            return 0;
        }
        let max = self.max_entries.load(Ordering::Relaxed);
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let size = ENTRY_OVERHEAD + claims.as_ref().map_or(0, |c| c.approximate_size());
        if max == 0 || size > max_bytes {
            return 0;
        }
        let full = self.map.len() >= max || self.bytes() + size > max_bytes;
        // An `active: false` answer never makes room for itself: anyone can
        // send endless made-up tokens, and they must not evict the answers
        // of real ones.
        if full && claims.is_none() {
            return 0;
        }
        let evicted = if full {
            self.evict_batch(max, max_bytes, size)
        } else {
            0
        };
        let now = Instant::now();
        let valid_until = now + ttl;
        let entry = Entry {
            claims,
            origin,
            valid_until,
            stale_until: valid_until + max_stale,
            cached_at: now,
            size,
        };
        self.bytes.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = self.map.insert(key, entry) {
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
        }
        evicted
    }

    /// Makes room in a full cache: first every expired entry goes, then, if the
    /// cache is still full, each live entry with probability `(len - bound +
    /// batch) / len`, where the batch is 1/64 of the bound. That is uniform random eviction: a working
    /// set a little larger than the cache keeps most of its hits (an LRU or FIFO
    /// cache cycling through it would keep none), and no insert pays for dropping
    /// the whole cache. A pass visits every entry, once per batch of inserts, and
    /// only on the miss path, which has just paid for a signature verification.
    /// The same holds for the bytes bound: the share evicted is the larger of
    /// what the entry bound and what the bytes bound (with room for `incoming`
    /// bytes) call for.
    fn evict_batch(&self, max: usize, max_bytes: usize, incoming: usize) -> u64 {
        let before = self.map.len();
        let now = Instant::now();
        self.retain(|e| e.stale_until > now);
        let batch = (max / EVICTION_BATCH_DIVISOR).max(1);
        let byte_batch = (max_bytes / EVICTION_BATCH_DIVISOR).max(incoming);
        let mut rng = rand::rng();
        loop {
            let len = self.map.len();
            let bytes = self.bytes();
            if (len < max && bytes + incoming <= max_bytes) || len == 0 {
                break;
            }
            // Down to a batch below the bound: one pass, also after a reload
            // lowered the bound far below the entries held.
            let by_entries = (len + batch).saturating_sub(max) as f64 / len as f64;
            let by_bytes =
                (bytes + byte_batch).saturating_sub(max_bytes) as f64 / bytes.max(1) as f64;
            let share = by_entries.max(by_bytes).clamp(0.0, 1.0);
            self.retain(|_| !rng.random_bool(share));
        }
        before.saturating_sub(self.map.len()) as u64
    }
}

/// A full cache evicts about `max_entries / EVICTION_BATCH_DIVISOR` entries at a time.
const EVICTION_BATCH_DIVISOR: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_jwks::{JwksSettings, KeySource, NoopObserver};
    use portcullis_policy::Algorithm;

    const FAR_FUTURE: i64 = 4_102_444_800;

    fn issuer_keys() -> Arc<KeyCache> {
        let cache = KeyCache::new(
            "https://issuer.test/".to_owned(),
            KeySource::Secret(b"a test secret of thirty-two bytes".to_vec()),
            JwksSettings::default(),
            vec![Algorithm::HS256],
            Arc::new(NoopObserver),
        );
        Arc::new(cache.expect("a static secret always parses"))
    }

    fn claims(expires_at: i64) -> Arc<VerifiedClaims> {
        Arc::new(VerifiedClaims {
            issuer: Arc::from("https://issuer.test/"),
            subject: None,
            audiences: Vec::new(),
            expires_at,
            not_before: None,
            issued_at: None,
            scopes: Vec::new(),
            claims: serde_json::Map::new(),
        })
    }

    fn key(i: usize) -> TokenKey {
        token_key(&format!("token-{i}"))
    }

    /// Inserts `count` distinct tokens; returns the evictions the inserts reported.
    fn fill(cache: &TokenCache, keys: &Arc<KeyCache>, from: usize, count: usize) -> u64 {
        let generation = keys.state().generation;
        (from..from + count)
            .map(|i| cache.insert(key(i), claims(FAR_FUTURE), Arc::clone(keys), generation, 0))
            .sum()
    }

    fn hits(cache: &TokenCache, keys: &Arc<KeyCache>, range: std::ops::Range<usize>) -> usize {
        range
            .filter(|&i| {
                matches!(
                    cache.get(&key(i), |_| Some(Arc::clone(keys)), None),
                    Lookup::Hit(_)
                )
            })
            .count()
    }

    #[test]
    fn a_full_cache_evicts_a_small_batch_not_everything() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 1_000, usize::MAX, Duration::from_secs(300));
        assert_eq!(fill(&cache, &keys, 0, 1_000), 0);
        assert_eq!(cache.len(), 1_000);

        // About 1,000 / 64 = 15 random entries go; none, or more than 60, would
        // take a chance below one in a million.
        let evicted = fill(&cache, &keys, 1_000, 1);
        assert!((1..=60).contains(&evicted), "{evicted} evicted");
        assert_eq!(cache.len(), 1_000 - evicted as usize + 1);
        assert_eq!(
            hits(&cache, &keys, 1_000..1_001),
            1,
            "the new entry is cached"
        );
        let survivors = hits(&cache, &keys, 0..1_000);
        assert_eq!(survivors, 1_000 - evicted as usize);
    }

    #[test]
    fn the_bound_holds_under_churn_and_a_larger_working_set_keeps_most_hits() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 1_000, usize::MAX, Duration::from_secs(300));
        let mut evicted = 0;
        for pass in 0..5 {
            evicted += fill(&cache, &keys, 0, 1_100);
            assert!(cache.len() <= 1_000, "pass {pass}: {} entries", cache.len());
        }
        assert!(evicted > 0);
        // 1,100 tokens in turn through room for 1,000: random eviction keeps most
        // of them (clearing a full cache instead keeps about 500 here).
        let kept = hits(&cache, &keys, 0..1_100);
        assert!(kept >= 800, "only {kept} of 1,100 tokens still cached");
    }

    #[test]
    fn requests_cycling_through_more_tokens_than_fit_still_hit_mostly() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 1_000, usize::MAX, Duration::from_secs(300));
        let generation = keys.state().generation;
        let mut hit_count = 0;
        // Five passes of 1,100 requests, each token in turn, as a gateway would:
        // look up, and verify and insert on a miss. An LRU or FIFO cache would miss
        // every one of them after the first pass.
        for pass in 0..5 {
            for i in 0..1_100 {
                if matches!(
                    cache.get(&key(i), |_| Some(Arc::clone(&keys)), None),
                    Lookup::Hit(_)
                ) {
                    hit_count += usize::from(pass > 0);
                } else {
                    cache.insert(key(i), claims(FAR_FUTURE), Arc::clone(&keys), generation, 0);
                }
            }
        }
        let rate = hit_count as f64 / 4_400.0;
        assert!(rate > 0.6, "hit rate {rate:.3}");
    }

    #[test]
    fn a_full_cache_of_mostly_expired_entries_loses_only_expired_ones() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 128, usize::MAX, Duration::from_secs(300));
        let generation = keys.state().generation;
        fill(&cache, &keys, 0, 2);
        // 126 entries whose lifetime ends one second after insertion.
        for i in 2..128 {
            cache.insert(key(i), claims(1), Arc::clone(&keys), generation, 0);
        }
        assert_eq!(cache.len(), 128);
        std::thread::sleep(Duration::from_millis(1_100));
        let evicted = fill(&cache, &keys, 1_000, 1);
        assert_eq!(evicted, 126, "every expired entry, and only those");
        assert_eq!(hits(&cache, &keys, 0..2), 2, "no live entry was evicted");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_lowered_bound_is_reached_at_the_next_insert() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 10_000, usize::MAX, Duration::from_secs(300));
        fill(&cache, &keys, 0, 10_000);
        cache.configure(true, 1_000, usize::MAX, Duration::from_secs(300));
        let evicted = fill(&cache, &keys, 20_000, 1);
        assert!(cache.len() <= 1_000, "{} entries", cache.len());
        // About 985 stay (standard deviation 30); 800 or fewer would mean far
        // more was evicted than needed.
        assert!(cache.len() > 800, "only {} entries left", cache.len());
        assert_eq!(evicted as usize, 10_000 + 1 - cache.len());
    }

    #[test]
    fn a_zero_bound_caches_nothing() {
        let keys = issuer_keys();
        let cache = TokenCache::new(true, 0, usize::MAX, Duration::from_secs(300));
        assert_eq!(fill(&cache, &keys, 0, 10), 0);
        assert!(cache.is_empty());
    }

    /// Claims of about `kib` KiB (one large claim, as a big token would carry).
    fn large_claims(kib: usize) -> Arc<VerifiedClaims> {
        let mut c = (*claims(FAR_FUTURE)).clone();
        c.claims.insert(
            "groups".to_owned(),
            serde_json::Value::String("g".repeat(kib << 10)),
        );
        Arc::new(c)
    }

    #[test]
    fn the_bytes_bound_holds_whatever_the_entries_count() {
        let keys = issuer_keys();
        let generation = keys.state().generation;
        // Room for 100,000 entries but 1 MiB: 6 KiB tokens fit about 170 times.
        let cache = TokenCache::new(true, 100_000, 1 << 20, Duration::from_secs(300));
        for i in 0..2_000 {
            cache.insert(key(i), large_claims(6), Arc::clone(&keys), generation, 0);
            assert!(
                cache.bytes() <= 1 << 20,
                "insert {i}: {} bytes",
                cache.bytes()
            );
        }
        assert!(cache.len() > 100, "{} entries", cache.len());
        assert!(cache.len() < 175, "{} entries", cache.len());
        // The count is exact: it falls to zero when everything goes.
        cache.configure(false, 100_000, 1 << 20, Duration::from_secs(300));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn sizes_count_the_claims_and_replacements_are_not_counted_twice() {
        let small = claims(FAR_FUTURE).approximate_size();
        let large = large_claims(6).approximate_size();
        assert!(large >= small + 6 * 1024, "{small} -> {large}");
        let keys = issuer_keys();
        let generation = keys.state().generation;
        let cache = TokenCache::new(true, 10, usize::MAX, Duration::from_secs(300));
        cache.insert(key(1), large_claims(6), Arc::clone(&keys), generation, 0);
        let once = cache.bytes();
        cache.insert(key(1), large_claims(6), Arc::clone(&keys), generation, 0);
        assert_eq!(cache.bytes(), once, "the same key inserted twice");
        // An entry larger than the whole bound is not cached at all.
        let tiny = TokenCache::new(true, 10, 1024, Duration::from_secs(300));
        tiny.insert(key(2), large_claims(6), Arc::clone(&keys), generation, 0);
        assert!(tiny.is_empty());
    }

    fn opaque() -> Arc<OpaqueTokens> {
        let settings = portcullis_jwks::IntrospectionSettings::new(
            "gw".to_owned(),
            portcullis_jwks::ClientAuth::SecretBasic("s".to_owned()),
        );
        let client = portcullis_jwks::Introspector::new(
            "https://issuer.test/".to_owned(),
            settings,
            Arc::new(NoopObserver),
        )
        .expect("client");
        let metrics = portcullis_metrics::Metrics::new().expect("metrics");
        Arc::new(OpaqueTokens::new(
            client,
            metrics.introspection("https://issuer.test/"),
        ))
    }

    #[test]
    fn an_introspected_answer_serves_only_its_issuers_routes_then_goes_stale_then_away() {
        let cache = TokenCache::new(true, 100, usize::MAX, Duration::from_secs(300));
        let (mine, theirs) = (opaque(), opaque());
        let no_keys = |_: &str| None;
        cache.insert_introspected(
            key(1),
            Some(claims(FAR_FUTURE)),
            Arc::clone(&mine),
            Duration::from_millis(300),
            Duration::from_millis(300),
            0,
        );
        assert!(matches!(
            cache.get(&key(1), no_keys, Some(&mine)),
            Lookup::Introspected(_)
        ));
        assert!(
            matches!(cache.get(&key(1), no_keys, Some(&theirs)), Lookup::Miss),
            "another issuer's routes never use it"
        );
        assert!(
            matches!(cache.get(&key(1), no_keys, None), Lookup::Miss),
            "nor a route without an introspecting issuer"
        );
        std::thread::sleep(Duration::from_millis(350));
        assert!(
            matches!(cache.get(&key(1), no_keys, Some(&mine)), Lookup::Stale(..)),
            "past cache_ttl, within max_stale"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(
            cache.get(&key(1), no_keys, Some(&mine)),
            Lookup::Miss
        ));
    }

    #[test]
    fn an_inactive_answer_is_kept_for_its_ttl_and_an_active_one_never_past_exp() {
        let cache = TokenCache::new(true, 100, usize::MAX, Duration::from_secs(300));
        let mine = opaque();
        let no_keys = |_: &str| None;
        cache.insert_introspected(
            key(2),
            None,
            Arc::clone(&mine),
            Duration::from_millis(200),
            Duration::ZERO,
            0,
        );
        assert!(matches!(
            cache.get(&key(2), no_keys, Some(&mine)),
            Lookup::Inactive(_)
        ));
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(
            cache.get(&key(2), no_keys, Some(&mine)),
            Lookup::Miss
        ));
        // exp one second after "now": kept at most one second, not cache_ttl.
        cache.insert_introspected(
            key(3),
            Some(claims(1_001)),
            Arc::clone(&mine),
            Duration::from_secs(300),
            Duration::ZERO,
            1_000,
        );
        assert!(matches!(
            cache.get(&key(3), no_keys, Some(&mine)),
            Lookup::Introspected(_)
        ));
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(matches!(
            cache.get(&key(3), no_keys, Some(&mine)),
            Lookup::Miss
        ));
        // An already expired token is not cached at all.
        cache.insert_introspected(
            key(4),
            Some(claims(900)),
            Arc::clone(&mine),
            Duration::from_secs(300),
            Duration::from_secs(300),
            1_000,
        );
        assert!(matches!(
            cache.get(&key(4), no_keys, Some(&mine)),
            Lookup::Miss
        ));
    }

    #[test]
    fn made_up_tokens_never_evict_real_answers() {
        let cache = TokenCache::new(true, 100, usize::MAX, Duration::from_secs(300));
        let mine = opaque();
        for i in 0..100 {
            cache.insert_introspected(
                key(i),
                Some(claims(FAR_FUTURE)),
                Arc::clone(&mine),
                Duration::from_secs(300),
                Duration::ZERO,
                0,
            );
        }
        // A flood of inactive answers into a full cache: none is kept, none evicts.
        for i in 1_000..11_000 {
            let evicted = cache.insert_introspected(
                key(i),
                None,
                Arc::clone(&mine),
                Duration::from_secs(10),
                Duration::ZERO,
                0,
            );
            assert_eq!(evicted, 0);
        }
        let kept = (0..100)
            .filter(|&i| {
                matches!(
                    cache.get(&key(i), |_| None, Some(&mine)),
                    Lookup::Introspected(_)
                )
            })
            .count();
        assert_eq!(kept, 100);
    }
}
