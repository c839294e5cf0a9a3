//! Per-issuer key source and cache/fetch settings, with their documented defaults.

use std::path::PathBuf;
use std::time::Duration;

/// Where an issuer's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OIDC discovery from the issuer URL (`/.well-known/openid-configuration`,
    /// then RFC 8414 `/.well-known/oauth-authorization-server`).
    Discovery,
    /// An explicit JWKS URL.
    JwksUri(String),
    /// A JWKS document read from a file at load time.
    StaticJwks {
        /// The file it came from.
        path: PathBuf,
        /// Its contents.
        document: Vec<u8>,
    },
    /// A PEM public key read from a file at load time.
    StaticPem {
        /// The file it came from.
        path: PathBuf,
        /// Its contents.
        pem: Vec<u8>,
    },
    /// A shared HMAC secret (HS256/384/512 only; no asymmetric keys).
    Secret(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Discovery => f.write_str("Discovery"),
            KeySource::JwksUri(u) => write!(f, "JwksUri({u})"),
            KeySource::StaticJwks { path, .. } => write!(f, "StaticJwks({})", path.display()),
            KeySource::StaticPem { path, .. } => write!(f, "StaticPem({})", path.display()),
            KeySource::Secret(_) => f.write_str("Secret(***)"),
        }
    }
}

impl KeySource {
    /// Whether keys are fetched over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self, KeySource::Discovery | KeySource::JwksUri(_))
    }
}

/// Cache and fetch settings of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// Lower clamp of the cache lifetime taken from `Cache-Control`/`Expires`.
    pub min_ttl: Duration,
    /// Upper clamp of the cache lifetime.
    pub max_ttl: Duration,
    /// Lifetime when the response gives none.
    pub default_ttl: Duration,
    /// How long the last good keys keep serving after refreshes start failing.
    pub max_stale: Duration,
    /// At most one refetch per this interval for unknown `kid`s.
    pub min_refetch_interval: Duration,
    /// How long a kid still unknown after a refetch is remembered as unknown.
    pub unknown_kid_ttl: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Total time for one HTTP exchange.
    pub timeout: Duration,
    /// Largest accepted document.
    pub max_bytes: usize,
    /// Retries after a failed fetch (exponential backoff with jitter).
    pub retries: u32,
    /// Allow plain http to non-loopback hosts.
    pub allow_http: bool,
    /// Accept symmetric `oct` keys from a remote JWKS.
    pub allow_symmetric_keys: bool,
    /// Extra CA bundle path (PEM) for the authorization server.
    pub ca_file: Option<PathBuf>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(3600),
            max_stale: Duration::from_secs(24 * 3600),
            min_refetch_interval: Duration::from_secs(30),
            unknown_kid_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_bytes: 1 << 20,
            retries: 2,
            allow_http: false,
            allow_symmetric_keys: false,
            ca_file: None,
        }
    }
}
