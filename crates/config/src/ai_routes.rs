//! The AI-routing parts of routes and upstreams: `match.models` (routing by
//! the JSON body's model), `auth.models` (models a token grants), an
//! upstream's `model_map` and `stream_usage`, and a route's `fallback`
//! upstreams. Each is checked here so a route can never reach an upstream it
//! was not meant to.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use portcullis_policy::models::MAX_MODEL_LEN;
use portcullis_policy::{ModelGrant, ModelPattern};

use crate::compile::{Ctx, did_you_mean};
use crate::model::{RateLimitPolicy, UpstreamConfig};
use crate::providers::{Provider, UsageDialect};
use crate::raw::RawModelGrant;

/// `match.models`: patterns of a route matched by model. Such a route takes
/// POST only: `methods` must be absent (it becomes `[POST]`) or exactly that.
pub(crate) fn compile_models(
    path: &str,
    models: Option<Vec<String>>,
    methods: &mut Option<Vec<Method>>,
    ctx: &mut Ctx<'_>,
) -> Option<Vec<ModelPattern>> {
    let models = models?;
    if models.is_empty() {
        ctx.err(
            format!("{path}.models"),
            "list at least one model (a name, or a pattern such as gpt-4o*), or leave models out",
        );
    }
    for (i, m) in models.iter().enumerate() {
        if !valid_model_name(m) {
            ctx.err(
                format!("{path}.models[{i}]"),
                format!(
                    "{m:?} is not a model name: 1 to {MAX_MODEL_LEN} characters, no spaces or control characters"
                ),
            );
        }
    }
    match methods {
        None => *methods = Some(vec![Method::POST]),
        Some(list) if list.as_slice() == [Method::POST] => {}
        Some(_) => ctx.err(
            format!("{path}.methods"),
            "a route matched by models takes POST requests only (the model is read from the JSON body): leave methods out or set [POST]",
        ),
    }
    Some(models.into_iter().map(ModelPattern::new).collect())
}

/// A model name or pattern as configured: what a request could carry.
fn valid_model_name(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MAX_MODEL_LEN
        && !m.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `auth.models`: which models a token must be granted.
pub(crate) fn compile_grant(
    path: &str,
    raw: Option<RawModelGrant>,
    ctx: &mut Ctx<'_>,
) -> Option<ModelGrant> {
    let raw = raw?;
    if raw.scope_prefix.is_none() && raw.claim.is_none() {
        ctx.err(
            path,
            "set scope_prefix (e.g. \"model:\") and/or claim (e.g. allowed_models)",
        );
    }
    if raw.scope_prefix.as_deref() == Some("") {
        ctx.err(
            format!("{path}.scope_prefix"),
            "an empty prefix would take every scope for a model name: use e.g. \"model:\"",
        );
    }
    if raw.claim.as_deref() == Some("") {
        ctx.err(format!("{path}.claim"), "name the claim");
    }
    Some(ModelGrant {
        scope_prefix: raw.scope_prefix,
        claim: raw.claim,
    })
}

/// An upstream's `model_map` and `stream_usage`.
pub(crate) fn compile_model_rewrites(
    path: &str,
    model_map: BTreeMap<String, String>,
    stream_usage: Option<bool>,
    provider: Option<Provider>,
    ctx: &mut Ctx<'_>,
) -> (BTreeMap<String, String>, bool) {
    for (from, to) in &model_map {
        for name in [from, to] {
            if !valid_model_name(name) || name.contains('*') {
                ctx.err(
                    format!("{path}.model_map"),
                    format!(
                        "{name:?} is not a model name (no patterns, spaces or control characters)"
                    ),
                );
            }
        }
    }
    let stream_usage = stream_usage.unwrap_or(false);
    if stream_usage && provider.map(Provider::dialect) != Some(UsageDialect::OpenAi) {
        ctx.err(
            format!("{path}.stream_usage"),
            "stream_options.include_usage is OpenAI's: set a provider of the OpenAI dialect (openai, azure_openai, mistral, openai_compatible); Anthropic and Gemini streams carry their usage anyway",
        );
    }
    (model_map, stream_usage)
}

/// A route's `fallback`: known upstreams, none twice, not the route's own,
/// and no tunnels (an upgrade cannot be sent twice).
pub(crate) fn compile_fallback(
    path: &str,
    primary: &str,
    fallback: Vec<String>,
    upgrades: &[String],
    upstreams: &BTreeMap<String, Arc<UpstreamConfig>>,
    ctx: &mut Ctx<'_>,
) -> Vec<String> {
    for (i, name) in fallback.iter().enumerate() {
        let at = format!("{path}.fallback[{i}]");
        if !upstreams.contains_key(name) && !ctx.broken.contains(&format!("upstreams.{name}")) {
            let hint = did_you_mean(name, upstreams.keys().map(String::as_str));
            ctx.err(at, format!("unknown upstream {name:?}{hint}"));
        } else if name == primary || fallback[..i].contains(name) {
            ctx.err(at, format!("upstream {name:?} is already in the chain"));
        }
    }
    if !fallback.is_empty() && !upgrades.is_empty() {
        ctx.err(
            format!("{path}.fallback"),
            "a route with upgrades cannot fall back: a tunnel cannot be sent twice",
        );
    }
    fallback
}

/// Token budgets (`tokens:` policies) are charged with the usage an AI
/// upstream reports, so a route naming one must reach an upstream with a
/// `provider`; `rate_limits.default` budgets are left off routes without one.
pub(crate) fn check_token_budgets<'a>(
    path: &str,
    policies: &mut Vec<Arc<RateLimitPolicy>>,
    explicit: bool,
    mut chain: impl Iterator<Item = &'a str>,
    upstreams: &BTreeMap<String, Arc<UpstreamConfig>>,
    ctx: &mut Ctx<'_>,
) {
    if !policies.iter().any(|p| p.counts_tokens()) {
        return;
    }
    let reports_usage = chain.all(|name| upstreams.get(name).is_some_and(|u| u.provider.is_some()));
    if reports_usage {
        return;
    }
    if explicit {
        for (i, p) in policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.counts_tokens())
        {
            ctx.err(
                format!("{path}[{i}]"),
                format!(
                    "policy {:?} is a token budget, charged with the token usage an AI upstream reports: every upstream of the route (and its fallback) needs a provider",
                    p.name
                ),
            );
        }
    } else {
        policies.retain(|p| !p.counts_tokens());
    }
}
