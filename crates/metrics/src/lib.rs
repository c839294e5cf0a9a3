//! The Prometheus exporter of Portcullis: a registry of its own, typed recorders
//! whose label handles are resolved once per route, upstream and issuer, and the
//! admin listener (`/metrics`, `/healthz`, `/readyz`, `POST /-/reload`).
//!
//! Labels are bounded: route and upstream names from the configuration, reason
//! codes from the catalogue, never paths, tokens, subjects or addresses.

pub mod admin;
pub mod families;
pub mod recorder;

pub use admin::{
    AdminAccess, AdminHooks, BoxFuture, ExplainHook, Explanation, Readiness, ReloadHook,
    serve_admin,
};
pub use families::Families;
pub use recorder::{
    IntrospectionCacheResult, IntrospectionMetrics, IssuerMetrics, Metrics, RouteMetrics,
    StreamOutcome, TokenCacheEvent, UpstreamErrorKind, UpstreamMetrics, unix_now,
};
