//! JWKS documents (RFC 7517) and PEM files into verification keys.
//!
//! A key that cannot be used is skipped and reported; it never spoils the set.
//! Keys marked `use: enc` are skipped, `alg` is honoured when present, and symmetric
//! `oct` keys from a remote document are refused unless explicitly enabled.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_policy::{Algorithm, Curve, VerifyingKey, verify::parse_algorithm};
use serde_json::Value;

/// A key left out of the set, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, or `#index` when it has none.
    pub kid: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The usable keys of a document and the ones skipped.
#[derive(Debug, Default)]
pub struct ParsedKeys {
    /// Usable keys.
    pub keys: Vec<VerifyingKey>,
    /// Keys that were skipped, with the reason.
    pub skipped: Vec<SkippedKey>,
}

/// Why a whole document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWKS document: {0}")]
    Invalid(String),
    /// A valid document with no usable key.
    #[error("the key set has no usable key ({0})")]
    Empty(String),
}

/// Parses a JWKS document into keys usable with `allowed` algorithms.
pub fn parse_jwks(
    bytes: &[u8],
    allowed: &[Algorithm],
    allow_symmetric: bool,
) -> Result<ParsedKeys, DocumentError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| DocumentError::Invalid(format!("JSON error: {e}")))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| DocumentError::Invalid("no \"keys\" array".to_owned()))?;
    let mut out = ParsedKeys::default();
    for (i, jwk) in keys.iter().enumerate() {
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        match parse_jwk(jwk, kid, allowed, allow_symmetric) {
            Ok(key) => out.keys.push(key),
            Err(reason) => out.skipped.push(SkippedKey { kid: label, reason }),
        }
    }
    if out.keys.is_empty() {
        let why = if out.skipped.is_empty() {
            "the keys array is empty".to_owned()
        } else {
            out.skipped
                .iter()
                .map(|s| format!("{}: {}", s.kid, s.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(DocumentError::Empty(why));
    }
    Ok(out)
}

fn parse_jwk(
    jwk: &Value,
    kid: Option<String>,
    allowed: &[Algorithm],
    allow_symmetric: bool,
) -> Result<VerifyingKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        let v = field(name).ok_or_else(|| format!("missing {name}"))?;
        URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|_| format!("{name} is not base64url"))
    };
    if let Some(u) = field("use")
        && u != "sig"
    {
        return Err(format!("use is {u:?}, not sig"));
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Err("key_ops does not include verify".to_owned());
    }
    let alg = match field("alg") {
        None => None,
        Some(a) => Some(parse_algorithm(a).ok_or_else(|| format!("alg {a:?} is not supported"))?),
    };
    let kty = field("kty").ok_or("missing kty")?;
    let key = match kty {
        "RSA" => {
            let n = b64("n")?;
            if n.iter().skip_while(|b| **b == 0).count() < 256 {
                return Err("RSA modulus shorter than 2048 bits".to_owned());
            }
            VerifyingKey::rsa(kid, alg, &n, &b64("e")?, allowed)
        }
        "EC" => {
            let curve = match field("crv") {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                other => return Err(format!("curve {other:?} is not supported")),
            };
            VerifyingKey::ec(kid, alg, curve, &b64("x")?, &b64("y")?, allowed)
        }
        "OKP" => match field("crv") {
            Some("Ed25519") => VerifyingKey::ed25519(kid, alg, &b64("x")?, allowed),
            other => return Err(format!("OKP curve {other:?} is not supported")),
        },
        "oct" if allow_symmetric => VerifyingKey::hmac(kid, alg, &b64("k")?, allowed),
        "oct" => {
            return Err(
                "symmetric oct keys are refused from a JWKS (allow_symmetric_keys is off)"
                    .to_owned(),
            );
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    key.map_err(|e| e.to_string())
}

/// Parses every `PUBLIC KEY` / `RSA PUBLIC KEY` block of a PEM file. Keys have no
/// kid; a file with one key verifies tokens without a kid.
pub fn parse_pem(text: &[u8], allowed: &[Algorithm]) -> Result<ParsedKeys, DocumentError> {
    let text = String::from_utf8_lossy(text);
    let mut out = ParsedKeys::default();
    let mut rest = text.as_ref();
    let mut index = 0;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else {
            return Err(DocumentError::Invalid(format!(
                "PEM block {label} is not terminated"
            )));
        };
        let body: String = body_start[..body_end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        rest = &body_start[body_end + end_marker.len()..];
        let label_kid = format!("pem#{index}");
        index += 1;
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            out.skipped.push(SkippedKey {
                kid: label_kid,
                reason: format!("PEM block {label} is not a public key"),
            });
            continue;
        }
        let der = match STANDARD.decode(body) {
            Ok(d) => d,
            Err(_) => {
                out.skipped.push(SkippedKey {
                    kid: label_kid,
                    reason: "PEM body is not base64".into(),
                });
                continue;
            }
        };
        match VerifyingKey::from_public_key_der(None, &der, allowed) {
            Ok(k) => out.keys.push(k),
            Err(e) => out.skipped.push(SkippedKey {
                kid: label_kid,
                reason: e.to_string(),
            }),
        }
    }
    if out.keys.is_empty() {
        return Err(DocumentError::Empty(
            "no usable public key in the PEM file".to_owned(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::DEFAULT_ALGORITHMS;

    #[test]
    fn bad_documents() {
        assert!(matches!(
            parse_jwks(b"{", &DEFAULT_ALGORITHMS, false),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(
            parse_jwks(b"{\"k\":1}", &DEFAULT_ALGORITHMS, false),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(
            parse_jwks(b"{\"keys\":[]}", &DEFAULT_ALGORITHMS, false),
            Err(DocumentError::Empty(_))
        ));
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_set() {
        let x = URL_SAFE_NO_PAD.encode([9u8; 32]);
        let doc = format!(
            r#"{{"keys":[
              {{"kty":"OKP","crv":"Ed25519","kid":"good","x":"{x}"}},
              {{"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"}},
              {{"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"{x}"}},
              {{"kty":"oct","kid":"sym","k":"{x}"}},
              {{"kty":"EC","crv":"P-521","kid":"p521","x":"AA","y":"AA"}},
              {{"kty":"OKP","crv":"Ed25519","kid":"wrongalg","alg":"ES256","x":"{x}"}}
            ]}}"#
        );
        let parsed = parse_jwks(doc.as_bytes(), &DEFAULT_ALGORITHMS, false).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].kid(), Some("good"));
        let skipped: Vec<&str> = parsed.skipped.iter().map(|s| s.kid.as_str()).collect();
        assert_eq!(skipped, ["short", "enc", "sym", "p521", "wrongalg"]);
        assert!(parsed.skipped[2].reason.contains("symmetric"));
    }
}
