//! Pure, synchronous enforcement decisions for the Portcullis gateway.
//!
//! Given the request parts, the client address, a route's compiled rules and an
//! issuer's key snapshot, these functions return allow or a [`Rejection`] naming
//! its [`Reason`]. Nothing here opens a socket or awaits, so the proxy and the
//! `diagnose` command run exactly the same code, and it can be fuzzed and
//! benchmarked alone.

pub mod access;
pub mod authority;
pub mod bearer;
pub mod introspected;
pub mod ip;
pub mod jws;
pub mod keys;
pub mod models;
pub mod path;
pub mod reason;
pub mod time;
pub mod verify;

pub use access::{AccessRules, ClaimCheck, ClaimRule};
pub use introspected::{AnswerError, IntrospectionAnswer, check_introspected, parse_answer};
pub use ip::{
    CidrSet, ClientIp, ForwardingHeader, IpRules, IpSource, IpVerdict, resolve_client_ip,
};
pub use jsonwebtoken::Algorithm;
pub use jws::{JoseHeader, UnverifiedToken};
pub use keys::{Curve, KeyError, KeySnapshot, VerifyingKey};
pub use models::{ModelGrant, ModelPattern, RequestedModel, read_requested_model};
pub use reason::{Challenge, Reason, Rejection};
pub use verify::{DEFAULT_ALGORITHMS, IssuerRules, VerifiedClaims};
