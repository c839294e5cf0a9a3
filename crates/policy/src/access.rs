//! Route-level authorization of verified claims: audience, scopes, claim rules.

use serde_json::Value;

use crate::reason::{Reason, Rejection};
use crate::verify::{VerifiedClaims, printable};

/// How a claim rule compares the claim's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// The claim equals this value.
    Equals(Value),
    /// The claim equals one of these values.
    OneOf(Vec<Value>),
    /// The claim is an array (or space-delimited string) containing this value.
    Contains(Value),
}

/// One claim rule of a route: a (dotted) claim path and a check.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    /// Claim name, or a dotted path into nested objects (`realm_access.roles`).
    pub claim: String,
    /// The comparison.
    pub check: ClaimCheck,
}

/// What a route requires of a verified token.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// The token's `aud` must contain one of these. Never empty for a protected route.
    pub audiences: Vec<String>,
    /// Every one of these scopes is required.
    pub scopes_all_of: Vec<String>,
    /// At least one of these scopes is required (when non-empty).
    pub scopes_any_of: Vec<String>,
    /// Claim rules; all must hold.
    pub claims: Vec<ClaimRule>,
}

impl AccessRules {
    /// Checks audience, then scopes, then claim rules.
    pub fn check(&self, claims: &VerifiedClaims) -> Result<(), Rejection> {
        self.check_audience(claims)?;
        self.check_scopes(claims)?;
        self.check_claims(claims)
    }

    /// The token's audience must contain one the route accepts.
    pub fn check_audience(&self, claims: &VerifiedClaims) -> Result<(), Rejection> {
        if claims.audiences.iter().any(|a| self.audiences.contains(a)) {
            return Ok(());
        }
        let got = if claims.audiences.is_empty() {
            "no aud claim".to_owned()
        } else {
            format!(
                "aud {}",
                claims
                    .audiences
                    .iter()
                    .take(5)
                    .map(|a| printable(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Rejection::new(
            Reason::AudienceMismatch,
            format!(
                "token has {got}; this route accepts {}",
                self.audiences.join(", ")
            ),
        ))
    }

    /// Required scopes (`all_of`, then `any_of`). The challenge's `scope` names
    /// what the client still needs: the `all_of` scopes it lacks (plus the first
    /// `any_of` alternative when none of those is held either), or, when only the
    /// `any_of` choice is unmet, its alternatives. Never a scope the token has.
    pub fn check_scopes(&self, claims: &VerifiedClaims) -> Result<(), Rejection> {
        let has = |s: &String| claims.scopes.iter().any(|g| g == s);
        let missing: Vec<&str> = self
            .scopes_all_of
            .iter()
            .filter(|s| !has(s))
            .map(String::as_str)
            .collect();
        let any_met = self.scopes_any_of.is_empty() || self.scopes_any_of.iter().any(has);
        if !missing.is_empty() {
            let mut needed = missing.clone();
            if let Some(first) = self.scopes_any_of.first().filter(|_| !any_met) {
                needed.push(first);
            }
            return Err(Rejection::new(
                Reason::ScopeInsufficient,
                format!("missing scope {}", missing.join(" ")),
            )
            .with_required_scope(needed.join(" ")));
        }
        if !any_met {
            return Err(Rejection::new(
                Reason::ScopeInsufficient,
                format!("needs one of the scopes {}", self.scopes_any_of.join(" ")),
            )
            .with_required_scope(self.scopes_any_of.join(" ")));
        }
        Ok(())
    }

    /// Every claim rule must hold.
    pub fn check_claims(&self, claims: &VerifiedClaims) -> Result<(), Rejection> {
        for rule in &self.claims {
            let value = lookup(&claims.claims, &rule.claim);
            if !rule.holds(value) {
                return Err(Rejection::new(
                    Reason::ClaimMismatch,
                    format!("claim {} {}", rule.claim, rule.describe_failure(value)),
                ));
            }
        }
        Ok(())
    }
}

impl ClaimRule {
    /// Whether the rule holds for a claim value (`None` when the claim is absent).
    pub fn holds(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else { return false };
        match &self.check {
            ClaimCheck::Equals(want) => value == want,
            ClaimCheck::OneOf(options) => options.contains(value),
            ClaimCheck::Contains(want) => match value {
                Value::Array(items) => items.contains(want),
                Value::String(s) => want
                    .as_str()
                    .is_some_and(|w| s.split_ascii_whitespace().any(|p| p == w)),
                _ => false,
            },
        }
    }

    fn describe_failure(&self, value: Option<&Value>) -> String {
        let want = match &self.check {
            ClaimCheck::Equals(v) => format!("must equal {v}"),
            ClaimCheck::OneOf(v) => format!("must be one of {}", Value::Array(v.clone())),
            ClaimCheck::Contains(v) => format!("must contain {v}"),
        };
        match value {
            None => format!("is absent; it {want}"),
            Some(_) => format!("does not match: it {want}"),
        }
    }
}

/// Follows a dotted path into nested claim objects.
fn lookup<'a>(claims: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn claims(v: Value, scopes: &[&str], aud: &[&str]) -> VerifiedClaims {
        VerifiedClaims {
            issuer: Arc::from("i"),
            subject: None,
            audiences: aud.iter().map(|s| s.to_string()).collect(),
            expires_at: 0,
            not_before: None,
            issued_at: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: v.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn audience_and_scopes() {
        let rules = AccessRules {
            audiences: vec!["api".into()],
            scopes_all_of: vec!["read".into(), "write".into()],
            ..Default::default()
        };
        let ok = claims(json!({}), &["read", "write", "x"], &["other", "api"]);
        assert!(rules.check(&ok).is_ok());
        let wrong_aud = claims(json!({}), &["read", "write"], &["other"]);
        assert_eq!(
            rules.check(&wrong_aud).unwrap_err().reason,
            Reason::AudienceMismatch
        );
        let missing = claims(json!({}), &["read"], &["api"]);
        let err = rules.check(&missing).unwrap_err();
        assert_eq!(err.reason, Reason::ScopeInsufficient);
        assert_eq!(err.detail, "missing scope write");
        assert_eq!(
            err.required_scope.as_deref(),
            Some("write"),
            "only what is still missing"
        );
    }

    #[test]
    fn scope_hints_name_what_is_still_needed_for_each_shape() {
        let rules = AccessRules {
            audiences: vec!["api".into()],
            scopes_all_of: vec!["a".into()],
            scopes_any_of: vec!["b".into(), "c".into()],
            ..Default::default()
        };
        for (held, hint) in [
            (&["a"][..], Some("b c")),
            (&[][..], Some("a b")),
            (&["b"][..], Some("a")),
            (&["a", "c"][..], None),
        ] {
            let got = rules
                .check(&claims(json!({}), held, &["api"]))
                .err()
                .and_then(|e| e.required_scope);
            assert_eq!(got.as_deref(), hint, "holding {held:?}");
        }
        let any_only = AccessRules {
            audiences: vec!["api".into()],
            scopes_any_of: vec!["x".into(), "y".into()],
            ..Default::default()
        };
        let err = any_only
            .check(&claims(json!({}), &["z"], &["api"]))
            .unwrap_err();
        assert_eq!(err.required_scope.as_deref(), Some("x y"));
    }

    #[test]
    fn claim_rules() {
        let rules = AccessRules {
            audiences: vec!["api".into()],
            claims: vec![
                ClaimRule {
                    claim: "tenant".into(),
                    check: ClaimCheck::Equals(json!("acme")),
                },
                ClaimRule {
                    claim: "org.roles".into(),
                    check: ClaimCheck::Contains(json!("admin")),
                },
                ClaimRule {
                    claim: "tier".into(),
                    check: ClaimCheck::OneOf(vec![json!("gold"), json!(2)]),
                },
            ],
            ..Default::default()
        };
        let good = claims(
            json!({"tenant":"acme","org":{"roles":["admin"]},"tier":2}),
            &[],
            &["api"],
        );
        assert!(rules.check(&good).is_ok());
        let bad = claims(
            json!({"tenant":"acme","org":{"roles":["user"]},"tier":2}),
            &[],
            &["api"],
        );
        let err = rules.check(&bad).unwrap_err();
        assert_eq!(err.reason, Reason::ClaimMismatch);
        assert!(err.detail.contains("org.roles"));
        let absent = claims(
            json!({"org":{"roles":["admin"]},"tier":"gold"}),
            &[],
            &["api"],
        );
        assert!(rules.check(&absent).unwrap_err().detail.contains("absent"));
    }
}
