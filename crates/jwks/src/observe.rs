//! The observer interface through which the fetcher reports, so that the metrics
//! crate can export fetch outcomes, key counts and staleness without this crate
//! depending on it.

use std::time::{Duration, SystemTime};

/// Receives fetcher events. Implementations must be cheap and must not block.
pub trait JwksObserver: Send + Sync + 'static {
    /// A fetch finished with `outcome` (`ok` or a [`crate::FetchError::kind`]).
    fn fetched(&self, issuer: &str, outcome: &'static str, elapsed: Duration);
    /// A new key set is live.
    fn key_set(&self, issuer: &str, keys: usize, fetched_at: SystemTime);
    /// A key of a document was skipped.
    fn skipped_key(&self, issuer: &str, kid: &str, reason: &str);
    /// An introspection call finished with `outcome` (`active`, `inactive` or
    /// an [`crate::IntrospectionError::kind`]).
    fn introspected(&self, issuer: &str, outcome: &'static str, elapsed: Duration) {
        let _ = (issuer, outcome, elapsed);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl JwksObserver for NoopObserver {
    fn fetched(&self, _: &str, _: &'static str, _: Duration) {}
    fn key_set(&self, _: &str, _: usize, _: SystemTime) {}
    fn skipped_key(&self, _: &str, _: &str, _: &str) {}
}
