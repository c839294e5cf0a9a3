//! The cached JWKS fetcher of Portcullis.
//!
//! One [`KeyCache`] per issuer publishes an immutable [`KeySnapshot`] through an
//! `ArcSwap`, so every request reads keys lock-free. A background task refreshes
//! the set before it expires; an unknown `kid` triggers at most one single-flight
//! refetch per `min_refetch_interval`; when the authorization server fails, the last
//! good keys keep serving up to `max_stale`.
//!
//! [`KeySnapshot`]: portcullis_policy::KeySnapshot

pub mod settings;

pub use settings::{JwksSettings, KeySource};
