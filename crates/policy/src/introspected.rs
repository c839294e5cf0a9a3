//! Reading an RFC 7662 token introspection answer: what the authorization
//! server said (`active`, and the token's claims), and the same registered-claim
//! checks a JWT gets (`iss`, `exp`, `nbf`, `iat`, `aud` shape), so an opaque
//! token is held to exactly the rules of a signed one.
//!
//! An answer that cannot be read as one (not a JSON object, no `active`, an
//! `active` that is not a JSON boolean) is the authorization server's fault, not
//! the token's: it is an [`AnswerError`], which the gateway answers with
//! `idp_unavailable` (503), never with a 401 that would tell the client its
//! token is bad, and never with a pass.

use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};
use crate::verify::{IssuerRules, VerifiedClaims, check_registered_claims, printable};

/// What the authorization server said of a token.
#[derive(Debug, Clone, PartialEq)]
pub enum IntrospectionAnswer {
    /// `active: true`, with the answer's other members (the token's claims).
    Active(Map<String, Value>),
    /// `active: false`: revoked, expired, unknown or not for this client.
    Inactive,
}

/// Why an answer is not a usable introspection answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnswerError(pub String);

/// Parses an introspection response body (RFC 7662 §2.2).
pub fn parse_answer(body: &[u8]) -> Result<IntrospectionAnswer, AnswerError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AnswerError(format!("the answer is not JSON ({e})")))?;
    let Value::Object(mut members) = value else {
        return Err(AnswerError("the answer is not a JSON object".to_owned()));
    };
    match members.remove("active") {
        Some(Value::Bool(true)) => Ok(IntrospectionAnswer::Active(members)),
        Some(Value::Bool(false)) => Ok(IntrospectionAnswer::Inactive),
        Some(other) => Err(AnswerError(format!(
            "\"active\" is {} rather than a JSON boolean",
            json_kind(&other)
        ))),
        None => Err(AnswerError(
            "the answer has no \"active\" member".to_owned(),
        )),
    }
}

/// The token types an introspection answer may name for a bearer access token.
const ACCESS_TOKEN_TYPES: [&str; 3] = [
    "bearer",
    "access_token",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// Checks the claims of an active token as a JWT's are checked: `iss` (when the
/// answer has one, it must be the issuer's; when not, the authorization server
/// that answered is the issuer), `exp` (optional here, RFC 7662 §2.2), `nbf`,
/// `iat`, the `aud` shape; then that it is a bearer access token: a
/// `token_type` or `token_use` naming another kind (a refresh token, a
/// sender-constrained `DPoP` token) or a `cnf` confirmation (which this gateway
/// cannot check) is `token_inactive`.
pub fn check_introspected(
    mut claims: Map<String, Value>,
    rules: &IssuerRules,
    now: i64,
) -> Result<VerifiedClaims, Rejection> {
    if !claims.contains_key("iss") {
        claims.insert("iss".to_owned(), Value::String(rules.issuer.clone()));
    }
    check_token_kind(&claims)?;
    check_registered_claims(claims, rules, now, false)
}

fn check_token_kind(claims: &Map<String, Value>) -> Result<(), Rejection> {
    let not_access = |what: String| {
        Rejection::new(
            Reason::TokenInactive,
            format!("the authorization server says {what}: not a bearer access token"),
        )
    };
    for member in ["token_type", "token_use"] {
        match claims.get(member) {
            None => {}
            Some(Value::String(kind)) => {
                let is_access = ACCESS_TOKEN_TYPES
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(kind));
                if !is_access {
                    return Err(not_access(format!("{member} {}", printable(kind))));
                }
            }
            Some(other) => {
                return Err(not_access(format!("{member} is {}", json_kind(other))));
            }
        }
    }
    if claims.contains_key("cnf") {
        return Err(not_access(
            "the token is sender-constrained (cnf): its proof of possession cannot be checked here"
                .to_owned(),
        ));
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::NO_EXPIRY;

    fn rules() -> IssuerRules {
        IssuerRules {
            issuer: "https://as.example/".to_owned(),
            algorithms: Vec::new(),
            leeway_secs: 30,
            required_typ: None,
            scope_claim: None,
        }
    }

    fn active(body: &str) -> Map<String, Value> {
        match parse_answer(body.as_bytes()) {
            Ok(IntrospectionAnswer::Active(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn unreadable_answers_are_errors_never_a_pass() {
        for body in [
            "",
            "not json",
            "[]",
            "\"active\"",
            "{}",
            r#"{"active":"true"}"#,
            r#"{"active":1}"#,
            r#"{"active":null}"#,
            r#"{"scope":"a","exp":1}"#,
        ] {
            assert!(parse_answer(body.as_bytes()).is_err(), "{body:?}");
        }
        assert_eq!(
            parse_answer(br#"{"active":false,"scope":"x"}"#),
            Ok(IntrospectionAnswer::Inactive)
        );
    }

    #[test]
    fn active_claims_get_the_jwt_checks() {
        let now = 1_000_000;
        let c = check_introspected(
            active(r#"{"active":true,"scope":"a b","aud":"api","sub":"u","exp":1000100}"#),
            &rules(),
            now,
        )
        .expect("valid");
        assert_eq!(&*c.issuer, "https://as.example/", "the answering AS");
        assert_eq!(c.scopes, vec!["a", "b"]);
        assert_eq!(c.audiences, vec!["api"]);
        assert_eq!(c.expires_at, 1_000_100);

        let no_exp = check_introspected(active(r#"{"active":true}"#), &rules(), now);
        assert_eq!(no_exp.expect("exp is optional").expires_at, NO_EXPIRY);

        let cases = [
            (
                r#"{"active":true,"iss":"https://other/"}"#,
                Reason::IssuerMismatch,
            ),
            (r#"{"active":true,"exp":999000}"#, Reason::TokenExpired),
            (r#"{"active":true,"nbf":1002000}"#, Reason::TokenNotYetValid),
            (r#"{"active":true,"exp":"soon"}"#, Reason::TokenMalformed),
            (r#"{"active":true,"aud":7}"#, Reason::TokenMalformed),
            (
                r#"{"active":true,"token_type":"refresh_token"}"#,
                Reason::TokenInactive,
            ),
            (
                r#"{"active":true,"token_use":"refresh_token"}"#,
                Reason::TokenInactive,
            ),
            (
                r#"{"active":true,"token_type":"DPoP","cnf":{"jkt":"x"}}"#,
                Reason::TokenInactive,
            ),
            (
                r#"{"active":true,"cnf":{"x5t#S256":"x"}}"#,
                Reason::TokenInactive,
            ),
            (r#"{"active":true,"token_type":5}"#, Reason::TokenInactive),
        ];
        for (body, want) in cases {
            let got = check_introspected(active(body), &rules(), now).map(|_| ());
            assert_eq!(got.map_err(|r| r.reason), Err(want), "{body}");
        }
        for kind in ["Bearer", "access_token", "BEARER"] {
            let body = format!(r#"{{"active":true,"token_type":"{kind}"}}"#);
            assert!(check_introspected(active(&body), &rules(), now).is_ok());
        }
    }
}
