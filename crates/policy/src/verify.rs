//! JWT verification against an issuer's key snapshot (RFC 7519, RFC 9068).
//!
//! Order matters and is fixed: algorithm allow-list, critical headers, `typ`, key
//! selection, signature, then the registered claims (`iss`, `exp`, `nbf`, `iat`).
//! Nothing is trusted before the signature verifies, except what is needed to
//! choose the key; audience, scopes and claim rules are route-level checks
//! ([`crate::access`]).

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::jws::{JoseHeader, UnverifiedToken};
use crate::keys::KeySnapshot;
use crate::reason::{Reason, Rejection};
use crate::time::human_duration;

/// The algorithms accepted when an issuer does not configure its own list.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// What one issuer's tokens must satisfy, compiled from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRules {
    /// The exact `iss` value.
    pub issuer: String,
    /// The algorithm allow-list; `none` can never be in it.
    pub algorithms: Vec<Algorithm>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: i64,
    /// When set, the header `typ` must equal it (e.g. `at+jwt`, RFC 9068 §2.1).
    pub required_typ: Option<String>,
    /// The claim that carries scopes; `None` reads `scope`, then `scp`.
    pub scope_claim: Option<String>,
}

/// Claims of a token whose signature and time window were verified.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    /// `iss`.
    pub issuer: Arc<str>,
    /// `sub`, when present and a string.
    pub subject: Option<String>,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `exp`, unix seconds.
    pub expires_at: i64,
    /// `nbf`, unix seconds.
    pub not_before: Option<i64>,
    /// `iat`, unix seconds.
    pub issued_at: Option<i64>,
    /// Scopes granted by the token.
    pub scopes: Vec<String>,
    /// All claims, for claim rules and claim headers.
    pub claims: Map<String, Value>,
}

impl VerifiedClaims {
    /// The memory these claims hold, in bytes: the struct, its strings and lists,
    /// and every JSON claim (counted with its map-entry overhead), so a cache of
    /// them can be bounded in bytes rather than in entries.
    pub fn approximate_size(&self) -> usize {
        let strings = |v: &[String]| {
            v.iter()
                .map(|s| std::mem::size_of::<String>() + s.capacity())
                .sum::<usize>()
        };
        std::mem::size_of::<Self>()
            + self.issuer.len()
            + self.subject.as_ref().map_or(0, String::capacity)
            + strings(&self.audiences)
            + strings(&self.scopes)
            + self
                .claims
                .iter()
                .map(|(k, v)| MAP_ENTRY_OVERHEAD + k.capacity() + json_size(v))
                .sum::<usize>()
    }

    /// Re-checks the time window at `now`, for claims served from a cache.
    pub fn check_time(&self, now: i64, leeway_secs: i64) -> Result<(), Rejection> {
        check_exp(self.expires_at, now, leeway_secs)?;
        if let Some(nbf) = self.not_before {
            check_nbf(nbf, now, leeway_secs)?;
        }
        Ok(())
    }
}

/// Maps a JOSE `alg` name to an algorithm Portcullis knows. `none` and unknown
/// names map to `None`.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Verifies the header, the signature and the registered time claims of `token`.
/// Consumes the token: its claims move into the result, they are not copied.
pub fn verify(
    token: UnverifiedToken<'_>,
    rules: &IssuerRules,
    keys: &KeySnapshot,
    now: i64,
) -> Result<VerifiedClaims, Rejection> {
    verify_signature(
        &token.header,
        token.signing_input,
        &token.signature,
        rules,
        keys,
    )?;
    check_claims(token.claims, rules, now)
}

/// The JWS layer: header checks, key selection and the signature itself. Used by
/// [`verify`] and, alone, by the Wycheproof JWS conformance tests.
pub fn verify_signature(
    header: &JoseHeader,
    signing_input: &str,
    signature: &[u8],
    rules: &IssuerRules,
    keys: &KeySnapshot,
) -> Result<(), Rejection> {
    let alg = check_jose_header(header, rules)?;
    let kid = header.kid.as_deref();
    let Some(key) = keys.select(kid) else {
        return Err(key_unknown(kid, keys));
    };
    let key_name = || printable(key.kid().unwrap_or("(no kid)"));
    if !key.supports(alg) {
        return Err(Rejection::new(
            Reason::KeyUnknown,
            format!("key {} cannot verify {}", key_name(), header.alg),
        ));
    }
    if !key.verify(alg, signing_input.as_bytes(), signature) {
        return Err(Rejection::new(
            Reason::SignatureInvalid,
            format!(
                "signature does not verify with key {} ({})",
                key_name(),
                header.alg
            ),
        ));
    }
    Ok(())
}

/// The header checks that precede key selection: allow-list, `crit`, `typ`.
pub fn check_header(
    token: &UnverifiedToken<'_>,
    rules: &IssuerRules,
) -> Result<Algorithm, Rejection> {
    check_jose_header(&token.header, rules)
}

/// [`check_header`] on a bare JOSE header.
pub fn check_jose_header(header: &JoseHeader, rules: &IssuerRules) -> Result<Algorithm, Rejection> {
    let alg = parse_algorithm(&header.alg)
        .filter(|a| rules.algorithms.contains(a))
        .ok_or_else(|| {
            Rejection::new(
                Reason::AlgorithmNotAllowed,
                format!(
                    "alg {} is not allowed for issuer {}; allowed: {}",
                    printable(&header.alg),
                    rules.issuer,
                    rules
                        .algorithms
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    if header.crit.is_some() {
        return Err(Rejection::new(
            Reason::TokenMalformed,
            "header has crit extensions, and Portcullis understands none (RFC 7515 §4.1.11)",
        ));
    }
    if let Some(want) = &rules.required_typ {
        let got = header.typ.as_deref().unwrap_or("");
        let got = got.strip_prefix("application/").unwrap_or(got);
        if !got.eq_ignore_ascii_case(want) {
            return Err(Rejection::new(
                Reason::TokenMalformed,
                format!(
                    "header typ is {:?}; this issuer requires {want}",
                    printable(got)
                ),
            ));
        }
    }
    Ok(alg)
}

fn key_unknown(kid: Option<&str>, keys: &KeySnapshot) -> Rejection {
    let detail = match kid {
        Some(kid) => format!(
            "no key with kid {} among the issuer's {} key(s)",
            printable(kid),
            keys.len()
        ),
        None => format!(
            "token has no kid and the issuer has {} keys, so none can be chosen",
            keys.len()
        ),
    };
    Rejection::new(Reason::KeyUnknown, detail)
}

/// The registered claims (`iss`, `exp`, `nbf`, `iat`, `aud` shape) of a token
/// whose signature verified. Takes the claims by value: they become the result's.
pub fn check_claims(
    claims: Map<String, Value>,
    rules: &IssuerRules,
    now: i64,
) -> Result<VerifiedClaims, Rejection> {
    check_registered_claims(claims, rules, now, true)
}

/// `exp` of claims that carry none: an introspection answer may leave it out
/// (RFC 7662 §2.2), and then only the cache lifetime bounds reuse.
pub const NO_EXPIRY: i64 = i64::MAX;

/// [`check_claims`], with `exp` optional when `exp_required` is false (an
/// introspection answer's claims; a missing `exp` is then [`NO_EXPIRY`]).
pub fn check_registered_claims(
    claims: Map<String, Value>,
    rules: &IssuerRules,
    now: i64,
    exp_required: bool,
) -> Result<VerifiedClaims, Rejection> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != rules.issuer {
        return Err(Rejection::new(
            Reason::IssuerMismatch,
            format!("iss {} is not {}", printable(iss), rules.issuer),
        ));
    }
    let leeway = rules.leeway_secs;
    let exp = match claims.get("exp") {
        None if !exp_required => NO_EXPIRY,
        None => {
            return Err(Rejection::new(
                Reason::TokenMalformed,
                "token has no exp claim; an expiry is required",
            ));
        }
        Some(v) => numeric_date(v, "exp")?,
    };
    let nbf = claims
        .get("nbf")
        .map(|v| numeric_date(v, "nbf"))
        .transpose()?;
    let iat = claims
        .get("iat")
        .map(|v| numeric_date(v, "iat"))
        .transpose()?;
    check_exp(exp, now, leeway)?;
    if let Some(nbf) = nbf {
        check_nbf(nbf, now, leeway)?;
    }
    if let Some(iat) = iat
        && iat > now + leeway
    {
        return Err(Rejection::new(
            Reason::TokenNotYetValid,
            format!(
                "token issued {} in the future (clock skew beyond the {leeway}s leeway?)",
                human_duration(iat - now)
            ),
        ));
    }
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    Rejection::new(Reason::TokenMalformed, "aud array holds a non-string")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Rejection::new(
                Reason::TokenMalformed,
                "aud is neither a string nor an array",
            ));
        }
    };
    Ok(VerifiedClaims {
        issuer: Arc::from(iss),
        subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        audiences,
        expires_at: exp,
        not_before: nbf,
        issued_at: iat,
        scopes: read_scopes(&claims, rules.scope_claim.as_deref()),
        claims,
    })
}

fn check_exp(exp: i64, now: i64, leeway: i64) -> Result<(), Rejection> {
    if now >= exp.saturating_add(leeway) {
        return Err(Rejection::new(
            Reason::TokenExpired,
            format!("token expired {} ago", human_duration(now - exp)),
        ));
    }
    Ok(())
}

fn check_nbf(nbf: i64, now: i64, leeway: i64) -> Result<(), Rejection> {
    if nbf > now.saturating_add(leeway) {
        return Err(Rejection::new(
            Reason::TokenNotYetValid,
            format!(
                "token is not valid for another {}",
                human_duration(nbf - now)
            ),
        ));
    }
    Ok(())
}

/// RFC 7519 §2 NumericDate: a JSON number of seconds, fractions allowed.
fn numeric_date(v: &Value, name: &str) -> Result<i64, Rejection> {
    let n = v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.floor() as i64)
    });
    n.ok_or_else(|| {
        Rejection::new(
            Reason::TokenMalformed,
            format!("{name} is not a NumericDate (a number of seconds)"),
        )
    })
}

/// Scopes from the configured claim, or from `scope` (space-delimited) then `scp`
/// (array or string).
pub fn read_scopes(claims: &Map<String, Value>, claim: Option<&str>) -> Vec<String> {
    let names: &[&str] = match claim {
        Some(c) => &[c][..],
        None => &["scope", "scp"],
    };
    let Some(value) = names.iter().find_map(|n| claims.get(*n)) else {
        return Vec::new();
    };
    match value {
        Value::String(s) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Renders untrusted text for a message: printable ASCII only, at most 64 chars.
pub fn printable(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 64 {
        format!("\"{cleaned}…\"")
    } else {
        format!("\"{cleaned}\"")
    }
}

/// What a `serde_json::Map` entry costs beyond its key and value (node and index
/// bookkeeping of the B-tree it is kept in, rounded up).
const MAP_ENTRY_OVERHEAD: usize = 48;

/// The memory one JSON value holds, itself included.
fn json_size(v: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match v {
            Value::String(s) => s.capacity(),
            Value::Array(items) => items.iter().map(json_size).sum(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| MAP_ENTRY_OVERHEAD + k.capacity() + json_size(v))
                .sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}
