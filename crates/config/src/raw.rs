//! Serde mirror of `gateway.yaml`: plain types, unknown keys refused.
//!
//! These types only describe the text. [`crate::compile`] turns them into the
//! validated model, resolving references and reporting every problem at once.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<RawListen>,
    pub admin: Option<RawAdmin>,
    pub workers: Option<usize>,
    pub limits: Option<RawLimits>,
    pub logging: Option<RawLogging>,
    pub network: Option<RawNetwork>,
    pub paths: Option<RawPaths>,
    pub responses: Option<RawResponses>,
    pub token_cache: Option<RawTokenCache>,
    pub tracing: Option<RawTracing>,
    pub rate_limits: Option<RawRateLimits>,
    #[serde(default)]
    pub issuers: BTreeMap<String, RawIssuer>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub enabled: Option<bool>,
    pub token_file: Option<String>,
    pub protect_metrics: Option<bool>,
    pub explain: Option<RawExplain>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExplain {
    pub capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<ByteSize>,
    pub max_body: Option<ByteSize>,
    pub header_read_timeout: Option<HumanDuration>,
    pub max_connections: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub shutdown_grace: Option<HumanDuration>,
    pub shutdown_delay: Option<HumanDuration>,
    pub first_byte_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub body_read_timeout: Option<HumanDuration>,
    pub max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
    pub subject: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    pub trusted_proxies: Vec<RawTrustedProxy>,
    pub strip_from_untrusted: Option<Vec<String>>,
    pub request_id: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A trusted proxy: a CIDR (which sets `X-Forwarded-For`), or
/// `{ cidr, header }` naming the header it sets.
#[derive(Debug)]
pub struct RawTrustedProxy {
    pub cidr: String,
    pub header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustedProxyMap {
    cidr: String,
    header: Option<String>,
}

impl<'de> Deserialize<'de> for RawTrustedProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawTrustedProxy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CIDR, or { cidr: ..., header: x-forwarded-for | forwarded }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTrustedProxy {
                    cidr: v.to_owned(),
                    header: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let m = RawTrustedProxyMap::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawTrustedProxy {
                    cidr: m.cidr,
                    header: m.header,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub enabled: Option<bool>,
    pub accept_traceparent: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub otlp: Option<RawOtlp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: Option<String>,
    pub timeout: Option<HumanDuration>,
    pub queue: Option<usize>,
    pub batch: Option<usize>,
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    pub detail: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub escaped_slashes: Option<String>,
    pub semicolons: Option<String>,
    pub empty_segments: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenCache {
    pub enabled: Option<bool>,
    pub max_entries: Option<usize>,
    pub max_bytes: Option<ByteSize>,
    pub max_ttl: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    pub discovery: Option<bool>,
    pub jwks_uri: Option<String>,
    pub static_keys_file: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<HumanDuration>,
    pub required_typ: Option<String>,
    pub scope_claim: Option<String>,
    pub max_token_size: Option<ByteSize>,
    pub jwks: Option<RawJwks>,
    pub required_for_readiness: Option<bool>,
    pub tokens: Option<String>,
    pub introspection: Option<RawIntrospection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub auth_method: Option<String>,
    pub private_key_file: Option<String>,
    pub private_key_id: Option<String>,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub retries: Option<u32>,
    pub max_response_size: Option<ByteSize>,
    pub allow_http: Option<bool>,
    pub ca_file: Option<String>,
    pub cache_ttl: Option<HumanDuration>,
    pub negative_cache_ttl: Option<HumanDuration>,
    pub max_stale: Option<HumanDuration>,
    pub max_concurrent: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    pub min_ttl: Option<HumanDuration>,
    pub max_ttl: Option<HumanDuration>,
    pub default_ttl: Option<HumanDuration>,
    pub max_stale: Option<HumanDuration>,
    pub min_refetch_interval: Option<HumanDuration>,
    pub unknown_kid_ttl: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub max_size: Option<ByteSize>,
    pub retries: Option<u32>,
    pub allow_http: Option<bool>,
    pub allow_symmetric_keys: Option<bool>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub targets: Vec<String>,
    pub connect_timeout: Option<HumanDuration>,
    pub response_header_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub http2: Option<bool>,
    pub ca_file: Option<String>,
    pub health: Option<RawHealth>,
    pub retry: Option<RawRetry>,
    pub credential: Option<RawCredential>,
    pub health_path: Option<String>,
    pub provider: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    pub stream_usage: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub max_failures: Option<u32>,
    pub cooldown: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub idempotent: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub header: Option<String>,
    pub value: Option<String>,
    pub value_file: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<String>,
    pub oauth: Option<RawUpstreamOAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamOAuth {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub auth_method: Option<String>,
    pub private_key_file: Option<String>,
    pub private_key_id: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub max_response_size: Option<ByteSize>,
    pub expiry_margin: Option<HumanDuration>,
    pub default_lifetime: Option<HumanDuration>,
    pub allow_http: Option<bool>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: String,
    pub rewrite: Option<RawRewrite>,
    pub preserve_host: Option<bool>,
    pub max_body: Option<ByteSize>,
    pub timeout: Option<HumanDuration>,
    pub public: Option<bool>,
    pub auth: Option<RawAuth>,
    pub ip: Option<RawIp>,
    pub upgrades: Option<Vec<String>>,
    pub cors: Option<RawCors>,
    pub rate_limits: Option<Vec<String>>,
    pub sse_keepalive: Option<HumanDuration>,
    #[serde(default)]
    pub fallback: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub store: Option<String>,
    pub store_password: Option<String>,
    pub store_password_file: Option<String>,
    pub store_timeout: Option<HumanDuration>,
    pub store_ca_file: Option<String>,
    pub on_store_error: Option<String>,
    pub consistency: Option<String>,
    pub sync_interval: Option<HumanDuration>,
    pub key_prefix: Option<String>,
    pub max_keys: Option<usize>,
    pub response_headers: Option<bool>,
    pub default: Option<Vec<String>>,
    #[serde(default)]
    pub policies: BTreeMap<String, RawRatePolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRatePolicy {
    pub rate: Option<String>,
    pub tokens: Option<String>,
    pub burst: Option<i64>,
    #[serde(default)]
    pub key: Vec<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Option<Vec<String>>,
    pub allowed_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub case_insensitive: Option<bool>,
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub strip_prefix: Option<String>,
    pub replace_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIp {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub scopes: Option<RawScopes>,
    #[serde(default)]
    pub claims: Vec<RawClaimRule>,
    pub mode: Option<String>,
    pub forward_token: Option<bool>,
    pub query_token: Option<bool>,
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    pub resource: Option<String>,
    pub models: Option<RawModelGrant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelGrant {
    pub scope_prefix: Option<String>,
    pub claim: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScopes {
    #[serde(default)]
    pub all_of: Vec<String>,
    #[serde(default)]
    pub any_of: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub claim: String,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub contains: Option<serde_json::Value>,
}
