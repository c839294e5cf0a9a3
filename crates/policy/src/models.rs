//! Models in AI requests: the `model` a JSON request body names (read strictly,
//! so the gateway and the upstream cannot disagree about it), model patterns
//! (`gpt-4o*`), and which models a token grants (`model:<name>` scopes or a
//! claim listing them).

use std::borrow::Cow;

use serde::Deserialize;

use crate::reason::{Reason, Rejection};
use crate::verify::VerifiedClaims;

/// The longest model name accepted (names are log fields and metric labels).
pub const MAX_MODEL_LEN: usize = 256;

/// What a model-aware route reads of a JSON request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedModel {
    /// The `model` member.
    pub model: String,
    /// The `stream` member (`false` when absent).
    pub stream: bool,
}

/// The members looked at; every other member is skipped, but the whole body
/// is still checked to be one valid JSON object.
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Reads the `model` of a JSON request body. The body must be exactly one
/// JSON object with a string `model`: not JSON, an array, a repeated member
/// (which parsers resolve differently: the first or the last), a non-string
/// or empty model, or one longer than [`MAX_MODEL_LEN`] are `request_malformed`.
pub fn read_requested_model(body: &[u8]) -> Result<RequestedModel, Rejection> {
    let malformed = |what: String| {
        Rejection::new(
            Reason::RequestMalformed,
            format!("the request body {what}; this route routes by the JSON body's model"),
        )
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(malformed("is not a JSON object".to_owned()));
    }
    let members: Members<'_> = serde_json::from_slice(body).map_err(|e| {
        let what = e.to_string();
        if what.starts_with("duplicate field") {
            malformed(format!("repeats a member ({what})"))
        } else if what.contains("invalid type") {
            malformed(format!("has a member of the wrong type ({what})"))
        } else {
            malformed(format!("is not valid JSON ({what})"))
        }
    })?;
    let model = match members.model {
        None => return Err(malformed("has no \"model\" member".to_owned())),
        Some(m) if m.is_empty() => return Err(malformed("has an empty \"model\"".to_owned())),
        Some(m) if m.len() > MAX_MODEL_LEN => {
            return Err(malformed(format!(
                "names a model longer than {MAX_MODEL_LEN} bytes"
            )));
        }
        Some(m) if m.chars().any(char::is_control) => {
            return Err(malformed(
                "names a model with control characters".to_owned(),
            ));
        }
        Some(m) => m.into_owned(),
    };
    Ok(RequestedModel {
        model,
        stream: members.stream.unwrap_or(false),
    })
}

/// A model pattern: a name, or a name with `*` standing for any run of
/// characters (`gpt-4o*`, `claude-*-latest`, `*`). Case-sensitive: model
/// names are, at every provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(String);

impl ModelPattern {
    /// The pattern `text`.
    pub fn new(text: impl Into<String>) -> Self {
        ModelPattern(text.into())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `model` matches.
    pub fn matches(&self, model: &str) -> bool {
        glob_matches(self.0.as_bytes(), model.as_bytes())
    }
}

/// `*`-only glob matching, linear in practice: on a mismatch it backtracks to
/// the last `*` only (enough for a pattern language without `?` or classes).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether any of `patterns` matches `model`.
pub fn any_matches(patterns: &[ModelPattern], model: &str) -> bool {
    patterns.iter().any(|p| p.matches(model))
}

/// Which models a token grants (`auth.models`): scopes `<scope_prefix><model>`
/// (or `<scope_prefix>*`), and/or a claim listing model names or patterns (a
/// JSON array of strings, or one space-separated string). Either grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelGrant {
    /// The scope prefix, e.g. `model:`.
    pub scope_prefix: Option<String>,
    /// The claim naming the models, e.g. `allowed_models`.
    pub claim: Option<String>,
}

impl ModelGrant {
    /// Whether the token `claims` may use `model`; `model_not_allowed`
    /// naming the model and what the token grants otherwise.
    pub fn check(&self, claims: &VerifiedClaims, model: &str) -> Result<(), Rejection> {
        let mut granted: Vec<String> = Vec::new();
        if let Some(prefix) = &self.scope_prefix {
            for scope in &claims.scopes {
                if let Some(name) = scope.strip_prefix(prefix.as_str()) {
                    if ModelPattern::new(name).matches(model) {
                        return Ok(());
                    }
                    granted.push(scope.clone());
                }
            }
        }
        if let Some(claim) = &self.claim {
            let names: Vec<&str> = match claims.claims.get(claim) {
                Some(serde_json::Value::String(s)) => s.split_ascii_whitespace().collect(),
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(serde_json::Value::as_str).collect()
                }
                _ => Vec::new(),
            };
            for name in names {
                if ModelPattern::new(name).matches(model) {
                    return Ok(());
                }
                granted.push(format!("{claim}: {name}"));
            }
        }
        let what = [
            self.scope_prefix
                .as_ref()
                .map(|p| format!("a scope {p}{model}")),
            self.claim
                .as_ref()
                .map(|c| format!("the claim {c} listing it")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" or ");
        let has = if granted.is_empty() {
            "no model at all".to_owned()
        } else {
            granted.join(", ")
        };
        Err(Rejection::new(
            Reason::ModelNotAllowed,
            format!(
                "model {model:?} is not granted to this token: it needs {what}; it grants {has}"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| ModelPattern::new(p).matches(t);
        assert!(m("gpt-4o", "gpt-4o"));
        assert!(!m("gpt-4o", "gpt-4o-mini"));
        assert!(m("gpt-4o*", "gpt-4o-mini"));
        assert!(m("gpt-4o*", "gpt-4o"));
        assert!(m("*", "anything"));
        assert!(m("claude-*-latest", "claude-3-5-haiku-latest"));
        assert!(!m("claude-*-latest", "claude-3-5-haiku"));
        assert!(m("*mini*", "gpt-4o-mini-2024"));
        assert!(!m("GPT-4o", "gpt-4o"));
        assert!(!m("gpt-4o", "gpt-4o "));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn reads_the_model_strictly() {
        let ok = read_requested_model(
            br#" {"messages":[{"model":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!(ok.model, "gpt-4o");
        assert!(ok.stream);
        let escaped = read_requested_model(br#"{"model":"gpt\u002d4o"}"#).unwrap();
        assert_eq!(escaped.model, "gpt-4o");
        for (body, says) in [
            (&br#"["gpt-4o", true]"#[..], "not a JSON object"),
            (br#"model=gpt-4o"#, "not a JSON object"),
            (br#"{"model":"a","model":"b"}"#, "repeats a member"),
            (br#"{"model":"a","mod\u0065l":"b"}"#, "repeats a member"),
            (br#"{"model":4}"#, "wrong type"),
            (br#"{"model":"gpt","stream":"yes"}"#, "wrong type"),
            (br#"{"messages":[]}"#, "no \"model\""),
            (br#"{"model":""}"#, "empty"),
            (br#"{"model":"a\nb"}"#, "control characters"),
            (br#"{"model":"gpt-4o"} {"model":"x"}"#, "not valid JSON"),
            (br#"{"model":"gpt-4o""#, "not valid JSON"),
            (b"", "not a JSON object"),
        ] {
            let e = read_requested_model(body).unwrap_err();
            assert_eq!(e.reason, Reason::RequestMalformed);
            assert!(e.detail.contains(says), "{body:?}: {}", e.detail);
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert!(read_requested_model(long.as_bytes()).is_err());
    }

    fn claims(scopes: &[&str], extra: serde_json::Value) -> VerifiedClaims {
        VerifiedClaims {
            issuer: "https://as".into(),
            subject: None,
            audiences: vec![],
            expires_at: 0,
            not_before: None,
            issued_at: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            claims: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn grants_by_scope_or_claim() {
        let grant = ModelGrant {
            scope_prefix: Some("model:".into()),
            claim: Some("models".into()),
        };
        let c = claims(&["chat", "model:gpt-4o"], serde_json::json!({}));
        assert!(grant.check(&c, "gpt-4o").is_ok());
        let e = grant.check(&c, "gpt-4o-mini").unwrap_err();
        assert_eq!(e.reason, Reason::ModelNotAllowed);
        assert!(e.detail.contains("\"gpt-4o-mini\""), "{}", e.detail);
        assert!(e.detail.contains("model:gpt-4o"), "{}", e.detail);
        let any = claims(&["model:*"], serde_json::json!({}));
        assert!(grant.check(&any, "o3").is_ok());
        let listed = claims(&[], serde_json::json!({"models": ["claude-*", "fast"]}));
        assert!(grant.check(&listed, "claude-haiku").is_ok());
        assert!(grant.check(&listed, "fast").is_ok());
        assert!(grant.check(&listed, "gpt-4o").is_err());
        let spaced = claims(&[], serde_json::json!({"models": "fast smart"}));
        assert!(grant.check(&spaced, "smart").is_ok());
        let none = claims(&["chat"], serde_json::json!({"models": 5}));
        assert!(
            grant
                .check(&none, "fast")
                .unwrap_err()
                .detail
                .contains("no model at all")
        );
    }
}
