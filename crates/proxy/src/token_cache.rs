//! The verified-token cache: SHA-256 of the whole token -> verified claims, so a
//! token's signature is checked once, not on every request.
//!
//! An entry is used only while the issuer's key set is the one it was verified
//! against (a rotation or removal invalidates it), until the token's `exp` and at
//! most `max_ttl`. `exp`/`nbf` are still checked on every use, and route rules
//! (audience, scopes, claims, IP) are always evaluated per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use portcullis_jwks::KeyCache;
use portcullis_policy::VerifiedClaims;
use sha2::{Digest, Sha256};

/// The cache key: SHA-256 of the whole token.
pub type TokenKey = [u8; 32];

/// Hashes a token.
pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    claims: Arc<VerifiedClaims>,
    keys: Arc<KeyCache>,
    generation: u64,
    valid_until: Instant,
}

/// A bounded concurrent map of verified tokens.
pub struct TokenCache {
    map: DashMap<TokenKey, Entry, foldhash::fast::RandomState>,
    enabled: AtomicBool,
    max_entries: AtomicUsize,
    max_ttl_ms: AtomicU64,
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
    pub fn new(enabled: bool, max_entries: usize, max_ttl: Duration) -> Self {
        TokenCache {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            enabled: AtomicBool::new(enabled),
            max_entries: AtomicUsize::new(max_entries),
            max_ttl_ms: AtomicU64::new(max_ttl.as_millis() as u64),
        }
    }

    /// Applies new settings (on reload).
    pub fn configure(&self, enabled: bool, max_entries: usize, max_ttl: Duration) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.max_entries.store(max_entries, Ordering::Relaxed);
        self.max_ttl_ms
            .store(max_ttl.as_millis() as u64, Ordering::Relaxed);
        if !enabled {
            self.map.clear();
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

    /// The claims for `key` when they were verified by `keys` (the same issuer
    /// cache the route uses) against its current key set, and are not past their
    /// cache lifetime.
    pub fn get(
        &self,
        key: &TokenKey,
        keys: impl Fn(&str) -> Option<Arc<KeyCache>>,
    ) -> Option<Arc<VerifiedClaims>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let (claims, cache, generation, valid_until) = {
            let e = self.map.get(key)?;
            (
                Arc::clone(&e.claims),
                Arc::clone(&e.keys),
                e.generation,
                e.valid_until,
            )
        };
        let current = keys(&claims.issuer)?;
        if !Arc::ptr_eq(&current, &cache)
            || current.state().generation != generation
            || Instant::now() >= valid_until
        {
            self.map.remove(key);
            return None;
        }
        Some(claims)
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
        if ttl.is_zero() {
            return 0;
        }
        let mut evicted = 0;
        let max = self.max_entries.load(Ordering::Relaxed);
        if self.map.len() >= max {
            let before = self.map.len();
            let now = Instant::now();
            self.map.retain(|_, e| e.valid_until > now);
            if self.map.len() >= max {
                self.map.clear();
            }
            evicted = (before - self.map.len()) as u64;
        }
        if max > 0 {
            self.map.insert(
                key,
                Entry {
                    claims,
                    keys,
                    generation,
                    valid_until: Instant::now() + ttl,
                },
            );
        }
        evicted
    }
}
