//! The cached JWKS fetcher of Portcullis, and its other client of the
//! authorization server: RFC 7662 token introspection ([`Introspector`]).
//!
//! One [`KeyCache`] per issuer publishes an immutable [`KeySnapshot`] through an
//! `ArcSwap`, so every request reads keys lock-free. A background task refreshes
//! the set before it expires; an unknown `kid` triggers at most one single-flight
//! refetch per `min_refetch_interval`; when the authorization server fails, the last
//! good keys keep serving up to `max_stale`.
//!
//! [`KeySnapshot`]: portcullis_policy::KeySnapshot

pub mod cache;
pub mod client_assertion;
pub mod client_credentials;
pub mod discovery;
pub mod fetch;
pub mod introspection;
pub mod oauth_http;
pub mod observe;
pub mod parse;
pub mod settings;
pub mod tls;

pub use cache::{KeyCache, KeyState, KeyStatus, KidLookup};
pub use client_credentials::{ClientCredentialsSettings, IssuedToken, TokenClient};
pub use fetch::{FetchError, Fetcher};
pub use introspection::{
    ClientAuth, IntrospectionError, IntrospectionHealth, IntrospectionSettings, Introspector,
};
pub use oauth_http::OAuthCallError;
pub use observe::{JwksObserver, NoopObserver};
pub use parse::{DocumentError, SkippedKey};
pub use settings::{JwksSettings, KeySource};

/// Why a key cache could not be created.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Fetch(FetchError),
    /// A static key document is unusable.
    #[error(transparent)]
    Document(DocumentError),
}
