//! Structural decoding of a compact JWS (RFC 7515 §7.1) carrying JWT claims.
//!
//! Nothing here is trusted: it splits the three segments, base64url-decodes them and
//! parses the JOSE header and the claims as JSON objects, so that the verifier can
//! pick the issuer and the key. Header parameters that point at keys (`jku`, `x5u`,
//! `jwk`, `x5c`) are deliberately not read: keys only ever come from configuration.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};

/// The JOSE header members the verifier uses.
#[derive(Debug, Clone, Deserialize)]
pub struct JoseHeader {
    /// The signature algorithm, as written.
    pub alg: String,
    /// The key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The media type (`at+jwt` for RFC 9068 access tokens).
    #[serde(default)]
    pub typ: Option<String>,
    /// Critical extensions (RFC 7515 §4.1.11): none are understood, so any is refused.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedToken<'a> {
    /// The decoded JOSE header.
    pub header: JoseHeader,
    /// The claims object.
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the signed bytes.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl UnverifiedToken<'_> {
    /// The `iss` claim when it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// A compact JWS split and decoded, payload not interpreted.
#[derive(Debug, Clone)]
pub struct JwsParts<'a> {
    /// The decoded JOSE header.
    pub header: JoseHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the signed bytes.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Splits a compact JWS (RFC 7515 §7.1) into its three strictly base64url-decoded
/// segments and parses the header. Every failure is `token_malformed` with a detail
/// naming the exact structural fault.
pub fn split(token: &str) -> Result<JwsParts<'_>, Rejection> {
    let segments = token.split('.').count();
    if segments != 3 {
        let hint = if segments == 5 {
            " (5 segments is an encrypted JWE, which Portcullis does not accept)"
        } else {
            ""
        };
        return Err(malformed(format!(
            "token has {segments} segments; a signed JWT has 3{hint}"
        )));
    }
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("token has fewer than 3 segments"));
    };
    if h.is_empty() {
        return Err(malformed("header segment is empty"));
    }
    let header_bytes = b64(h, "header")?;
    let payload = b64(p, "payload")?;
    let signature = b64(s, "signature")?;
    let header: JoseHeader = serde_json::from_slice(&header_bytes).map_err(|e| {
        malformed(format!(
            "header is not a JSON object with a string alg: {e}"
        ))
    })?;
    Ok(JwsParts {
        header,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Splits a compact JWS and parses its payload as a JWT claims object.
pub fn decode(token: &str) -> Result<UnverifiedToken<'_>, Rejection> {
    let parts = split(token)?;
    let claims: Map<String, Value> = match serde_json::from_slice::<Value>(&parts.payload) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(malformed("payload is JSON but not an object")),
        Err(e) => return Err(malformed(format!("payload is not JSON: {e}"))),
    };
    Ok(UnverifiedToken {
        header: parts.header,
        claims,
        signing_input: parts.signing_input,
        signature: parts.signature,
    })
}

fn b64(segment: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(format!("{what} segment is not unpadded base64url")))
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::TokenMalformed, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn structural_faults() {
        let h = enc(r#"{"alg":"RS256"}"#);
        let p = enc(r#"{"iss":"x"}"#);
        let cases = [
            ("a.b".to_owned(), "2 segments"),
            ("a.b.c.d.e".to_owned(), "JWE"),
            (format!("{h}.{p}.***"), "signature segment"),
            (format!("{h}.{p}=.c2ln"), "payload segment"),
            (format!("{}.{p}.c2ln", enc("[1]")), "header is not"),
            (format!("{h}.{}.c2ln", enc("[1]")), "not an object"),
            (format!("{h}.{}.c2ln", enc("{")), "not JSON"),
        ];
        for (token, needle) in cases {
            let err = decode(&token).unwrap_err();
            assert_eq!(err.reason, Reason::TokenMalformed);
            assert!(err.detail.contains(needle), "{token}: {}", err.detail);
        }
    }

    #[test]
    fn decodes_valid_structure() {
        let token = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","kid":"k1","jku":"https://evil"}"#),
            enc(r#"{"iss":"https://idp"}"#),
            enc("sig")
        );
        let t = decode(&token).unwrap();
        assert_eq!(t.header.kid.as_deref(), Some("k1"));
        assert_eq!(t.issuer(), Some("https://idp"));
        assert_eq!(t.signature, b"sig");
        assert!(token.starts_with(t.signing_input));
    }
}
