//! `upstreams.<name>.provider` and the upstream's credential: provider presets
//! for AI/LLM services (default base URL, how an API key is sent, default
//! headers, the usage dialect, a health path for `diagnose`), and the three
//! kinds of credential: a fixed header (`header` + `value`), a provider API key
//! (`api_key`, sent the provider's way), or an OAuth 2.0 client credentials
//! token (`oauth`, RFC 6749 §4.4) that the gateway gets and renews itself.

use http::{HeaderName, HeaderValue};
use portcullis_jwks::ClientCredentialsSettings;

use crate::compile::{Ctx, check_fetch_url};
use crate::introspection::{ClientAuthFields, compile_client_auth};
use crate::model::{Credential, Secret};
use crate::raw::{RawCredential, RawUpstreamOAuth};

/// An AI/LLM provider whose conventions an upstream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI (`Authorization: Bearer`).
    OpenAi,
    /// Azure OpenAI (`api-key`, or an Entra ID bearer token from `oauth`).
    AzureOpenAi,
    /// Anthropic (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// Google Gemini (`x-goog-api-key`).
    Gemini,
    /// Mistral (`Authorization: Bearer`).
    Mistral,
    /// Any OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp).
    OpenAiCompatible,
}

/// How a provider's responses report token usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageDialect {
    /// `usage.prompt_tokens` / `completion_tokens` (OpenAI, Azure, Mistral, compatible servers).
    OpenAi,
    /// `message_start` / `message_delta` usage (Anthropic Messages).
    Anthropic,
    /// `usageMetadata` (Gemini).
    Gemini,
}

impl Provider {
    /// Every provider, in the order the README lists them.
    pub const ALL: [Provider; 6] = [
        Provider::OpenAi,
        Provider::AzureOpenAi,
        Provider::Anthropic,
        Provider::Gemini,
        Provider::Mistral,
        Provider::OpenAiCompatible,
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::AzureOpenAi => "azure_openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Mistral => "mistral",
            Provider::OpenAiCompatible => "openai_compatible",
        }
    }

    /// Looks a provider up by its spelling.
    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The base URL used when `targets` is not set; `None`: targets required.
    pub fn default_target(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => Some("https://api.openai.com"),
            Provider::Anthropic => Some("https://api.anthropic.com"),
            Provider::Gemini => Some("https://generativelanguage.googleapis.com"),
            Provider::Mistral => Some("https://api.mistral.ai"),
            Provider::AzureOpenAi | Provider::OpenAiCompatible => None,
        }
    }

    /// The header an API key goes in, and whether it is sent as `Bearer <key>`.
    pub fn api_key_header(self) -> (&'static str, bool) {
        match self {
            Provider::OpenAi | Provider::Mistral | Provider::OpenAiCompatible => {
                ("authorization", true)
            }
            Provider::AzureOpenAi => ("api-key", false),
            Provider::Anthropic => ("x-api-key", false),
            Provider::Gemini => ("x-goog-api-key", false),
        }
    }

    /// Headers set on every request that does not carry them already.
    pub fn default_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Provider::Anthropic => &[("anthropic-version", "2023-06-01")],
            _ => &[],
        }
    }

    /// The path `diagnose` probes when `health_path` is not set.
    pub fn health_path(self) -> &'static str {
        match self {
            Provider::Gemini => "/v1beta/models",
            Provider::AzureOpenAi => "/openai/models?api-version=2024-10-21",
            _ => "/v1/models",
        }
    }

    /// How its responses report token usage.
    pub fn dialect(self) -> UsageDialect {
        match self {
            Provider::Anthropic => UsageDialect::Anthropic,
            Provider::Gemini => UsageDialect::Gemini,
            _ => UsageDialect::OpenAi,
        }
    }
}

/// Reads `provider`.
pub(crate) fn provider(path: &str, name: Option<&str>, ctx: &mut Ctx<'_>) -> Option<Provider> {
    let name = name?;
    let found = Provider::from_name(name);
    if found.is_none() {
        let names: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        ctx.err(
            format!("{path}.provider"),
            format!(
                "{name:?} is not a provider; use one of {}",
                names.join(", ")
            ),
        );
    }
    found
}

/// The headers a provider sets when the client did not.
pub(crate) fn default_headers(provider: Option<Provider>) -> Vec<(HeaderName, HeaderValue)> {
    provider
        .map(|p| {
            p.default_headers()
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A compiled `credential`: a fixed header, or an OAuth client.
pub(crate) enum CompiledCredential {
    Static(Credential),
    OAuth(Box<ClientCredentialsSettings>),
}

/// Compiles `credential` for an upstream of `provider`.
pub(crate) fn compile_credential(
    path: &str,
    rc: RawCredential,
    provider: Option<Provider>,
    ctx: &mut Ctx<'_>,
) -> Option<CompiledCredential> {
    let kinds = [
        rc.value.is_some() || rc.value_file.is_some(),
        rc.api_key.is_some() || rc.api_key_file.is_some(),
        rc.oauth.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        ctx.err(
            path,
            "set exactly one of value/value_file (a header of your own), api_key/api_key_file (with a provider) or oauth (client credentials)",
        );
        return None;
    }
    if let Some(oauth) = rc.oauth {
        if let Some(h) = &rc.header
            && !h.eq_ignore_ascii_case("authorization")
        {
            ctx.err(
                format!("{path}.header"),
                "an oauth token is sent as Authorization: Bearer; remove header",
            );
        }
        return compile_oauth(&format!("{path}.oauth"), oauth, ctx)
            .map(|s| CompiledCredential::OAuth(Box::new(s)));
    }
    let (header, value) = if rc.api_key.is_some() || rc.api_key_file.is_some() {
        let Some(provider) = provider else {
            ctx.err(
                path,
                "api_key needs a provider (which says how the key is sent); without one, set header and value",
            );
            return None;
        };
        let key = secret(path, "api_key", rc.api_key, rc.api_key_file, ctx)?;
        let (default_header, bearer) = provider.api_key_header();
        let header = rc.header.unwrap_or_else(|| default_header.to_owned());
        let value = if bearer { format!("Bearer {key}") } else { key };
        (header, value)
    } else {
        let Some(header) = rc.header else {
            ctx.err(
                format!("{path}.header"),
                "required with value/value_file: the header the value goes in",
            );
            return None;
        };
        (header, secret(path, "value", rc.value, rc.value_file, ctx)?)
    };
    let header = match HeaderName::try_from(header.as_str()) {
        Ok(h) => h,
        Err(_) => {
            ctx.err(
                format!("{path}.header"),
                format!("{header:?} is not a valid header name"),
            );
            return None;
        }
    };
    match HeaderValue::try_from(value) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Some(CompiledCredential::Static(Credential {
                header,
                value: Secret(v),
            }))
        }
        Err(_) => {
            ctx.err(
                path,
                "the value is not a valid header value (control characters?)",
            );
            None
        }
    }
}

/// `NAME` or `NAME_file`, checked against the example placeholders.
fn secret(
    path: &str,
    name: &str,
    value: Option<String>,
    file: Option<String>,
    ctx: &mut Ctx<'_>,
) -> Option<String> {
    let value = match (value, file) {
        (Some(v), None) => ctx.expand(&format!("{path}.{name}"), &v)?,
        (None, Some(f)) => ctx.read_secret(&format!("{path}.{name}_file"), &f)?,
        _ => {
            ctx.err(path, format!("set exactly one of {name} or {name}_file"));
            return None;
        }
    };
    if let Some(word) = crate::compile::placeholder(&value) {
        ctx.err(
            path,
            format!(
                "the credential still holds the example placeholder {word:?} (a Secret applied unedited?): set the real value"
            ),
        );
        return None;
    }
    Some(value)
}

fn compile_oauth(
    path: &str,
    raw: RawUpstreamOAuth,
    ctx: &mut Ctx<'_>,
) -> Option<ClientCredentialsSettings> {
    let token_url = ctx.expand(&format!("{path}.token_url"), &raw.token_url)?;
    let client_id = ctx.expand(&format!("{path}.client_id"), &raw.client_id)?;
    let auth = compile_client_auth(
        path,
        ClientAuthFields {
            auth_method: raw.auth_method.as_deref(),
            client_secret: raw.client_secret.as_deref(),
            client_secret_file: raw.client_secret_file.as_deref(),
            private_key_file: raw.private_key_file.as_deref(),
            private_key_id: raw.private_key_id.as_deref(),
            json_allowed: true,
        },
        ctx,
    )?;
    let mut s = ClientCredentialsSettings::new(token_url, client_id, auth);
    s.allow_http = raw.allow_http.unwrap_or(false);
    check_fetch_url(
        &format!("{path}.token_url"),
        &s.token_url,
        s.allow_http,
        ctx,
    );
    s.scope = raw.scope;
    s.audience = raw.audience;
    s.resource = raw.resource;
    s.connect_timeout = raw.connect_timeout.map_or(s.connect_timeout, |d| d.0);
    s.timeout = raw.timeout.map_or(s.timeout, |d| d.0);
    s.max_bytes = raw.max_response_size.map_or(s.max_bytes, |b| b.0 as usize);
    s.expiry_margin = raw.expiry_margin.map_or(s.expiry_margin, |d| d.0);
    s.default_lifetime = raw.default_lifetime.map_or(s.default_lifetime, |d| d.0);
    if s.timeout.is_zero() || s.connect_timeout.is_zero() {
        ctx.err(path, "timeout and connect_timeout must be above zero");
    }
    if s.default_lifetime < std::time::Duration::from_secs(10) {
        ctx.err(
            format!("{path}.default_lifetime"),
            "at least 10s: a shorter lifetime would fetch a token for nearly every request",
        );
    }
    s.ca_file = ctx.ca_file(&format!("{path}.ca_file"), raw.ca_file.as_deref());
    Some(s)
}
