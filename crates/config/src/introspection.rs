//! `issuers.<name>.tokens` and `issuers.<name>.introspection`: which tokens an
//! issuer's routes accept (signed JWTs, opaque tokens asked about at the
//! authorization server's RFC 7662 endpoint, or both), and the introspection
//! client's settings with their defaults.

use std::time::Duration;

use portcullis_jwks::{ClientAuth, IntrospectionSettings};

use crate::compile::Ctx;
use crate::model::TokenKind;
use crate::raw::RawIntrospection;

/// The longest an inactive answer may be reused: a token the authorization
/// server has not seen yet (issued a moment after a first, failed check) must
/// not stay refused for long.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// Reads `tokens` (default `jwt`).
pub(crate) fn token_kind(path: &str, tokens: Option<&str>, ctx: &mut Ctx<'_>) -> TokenKind {
    match tokens {
        None | Some("jwt") => TokenKind::Jwt,
        Some("opaque") => TokenKind::Opaque,
        Some("auto") => TokenKind::Auto,
        Some(other) => {
            ctx.err(
                format!("{path}.tokens"),
                format!("{other:?} is not a token kind; use jwt, opaque or auto"),
            );
            TokenKind::Jwt
        }
    }
}

/// Compiles the `introspection` block of an issuer whose tokens are `kind`.
pub(crate) fn compile_introspection(
    path: &str,
    kind: TokenKind,
    raw: Option<RawIntrospection>,
    ctx: &mut Ctx<'_>,
) -> Option<IntrospectionSettings> {
    let path = format!("{path}.introspection");
    let raw = match (kind.introspects(), raw) {
        (false, None) => return None,
        (false, Some(_)) => {
            ctx.err(
                &path,
                "is set, but the issuer's tokens are jwt: set tokens: opaque (introspect every token) or auto (introspect what is not a JWT)",
            );
            return None;
        }
        (true, None) => {
            ctx.err(
                &path,
                format!(
                    "required with tokens: {}: name at least client_id and its credential",
                    kind.as_str()
                ),
            );
            return None;
        }
        (true, Some(raw)) => raw,
    };
    let client_id = match &raw.client_id {
        Some(id) => ctx.expand(&format!("{path}.client_id"), id)?,
        None => {
            ctx.err(
                format!("{path}.client_id"),
                "required: the gateway's client id at the authorization server",
            );
            return None;
        }
    };
    let auth = client_auth(&path, &raw, ctx)?;
    let mut settings = IntrospectionSettings::new(client_id, auth);
    if let Some(endpoint) = &raw.endpoint {
        settings.endpoint = Some(ctx.expand(&format!("{path}.endpoint"), endpoint)?);
    }
    settings.allow_http = raw.allow_http.unwrap_or(settings.allow_http);
    if let Some(endpoint) = &settings.endpoint {
        crate::compile::check_fetch_url(
            &format!("{path}.endpoint"),
            endpoint,
            settings.allow_http,
            ctx,
        );
    }
    let d = &settings;
    let connect_timeout = raw.connect_timeout.map_or(d.connect_timeout, |v| v.0);
    let timeout = raw.timeout.map_or(d.timeout, |v| v.0);
    let retries = raw.retries.unwrap_or(d.retries);
    let max_bytes = raw.max_response_size.map_or(d.max_bytes, |v| v.0 as usize);
    let cache_ttl = raw.cache_ttl.map_or(d.cache_ttl, |v| v.0);
    let negative_cache_ttl = raw.negative_cache_ttl.map_or(d.negative_cache_ttl, |v| v.0);
    let max_stale = raw.max_stale.map_or(d.max_stale, |v| v.0);
    let max_concurrent = raw.max_concurrent.unwrap_or(d.max_concurrent);
    if timeout.is_zero() || connect_timeout.is_zero() {
        ctx.err(&path, "timeout and connect_timeout must be above zero");
    }
    if retries > 5 {
        ctx.err(
            format!("{path}.retries"),
            "at most 5: a request waits for every retry",
        );
    }
    if max_bytes < 256 {
        ctx.err(
            format!("{path}.max_response_size"),
            "below 256 bytes no answer fits",
        );
    }
    if negative_cache_ttl > MAX_NEGATIVE_TTL {
        ctx.err(
            format!("{path}.negative_cache_ttl"),
            "at most 5m: a token refused once would stay refused after the authorization server accepts it",
        );
    }
    if max_concurrent == 0 {
        ctx.err(
            format!("{path}.max_concurrent"),
            "must be at least 1 (0 would refuse every token)",
        );
    }
    settings.connect_timeout = connect_timeout;
    settings.timeout = timeout;
    settings.retries = retries;
    settings.max_bytes = max_bytes;
    settings.cache_ttl = cache_ttl;
    settings.negative_cache_ttl = negative_cache_ttl;
    settings.max_stale = max_stale;
    settings.max_concurrent = max_concurrent;
    settings.ca_file = ctx.ca_file(&format!("{path}.ca_file"), raw.ca_file.as_deref());
    Some(settings)
}

/// The client-authentication members of a block (introspection, or an
/// upstream's `credential.oauth`).
pub(crate) struct ClientAuthFields<'a> {
    pub auth_method: Option<&'a str>,
    pub client_secret: Option<&'a str>,
    pub client_secret_file: Option<&'a str>,
    pub private_key_file: Option<&'a str>,
    pub private_key_id: Option<&'a str>,
    /// Whether `client_secret_json` is accepted (token endpoints, not
    /// introspection).
    pub json_allowed: bool,
}

/// `auth_method` and its credential.
fn client_auth(path: &str, raw: &RawIntrospection, ctx: &mut Ctx<'_>) -> Option<ClientAuth> {
    compile_client_auth(
        path,
        ClientAuthFields {
            auth_method: raw.auth_method.as_deref(),
            client_secret: raw.client_secret.as_deref(),
            client_secret_file: raw.client_secret_file.as_deref(),
            private_key_file: raw.private_key_file.as_deref(),
            private_key_id: raw.private_key_id.as_deref(),
            json_allowed: false,
        },
        ctx,
    )
}

/// Compiles `auth_method` (default `client_secret_basic`) and its credential.
pub(crate) fn compile_client_auth(
    path: &str,
    f: ClientAuthFields<'_>,
    ctx: &mut Ctx<'_>,
) -> Option<ClientAuth> {
    let method = f.auth_method.unwrap_or("client_secret_basic");
    let secret = match (f.client_secret, f.client_secret_file) {
        (Some(s), None) => Some(ctx.expand(&format!("{path}.client_secret"), s)?),
        (None, Some(file)) => Some(ctx.read_secret(&format!("{path}.client_secret_file"), file)?),
        (Some(_), Some(_)) => {
            ctx.err(path, "set client_secret or client_secret_file, not both");
            return None;
        }
        (None, None) => None,
    };
    let secret_methods: &[&str] = if f.json_allowed {
        &[
            "client_secret_basic",
            "client_secret_post",
            "client_secret_json",
        ]
    } else {
        &["client_secret_basic", "client_secret_post"]
    };
    match method {
        m if secret_methods.contains(&m) => {
            if f.private_key_file.is_some() {
                ctx.err(
                    format!("{path}.private_key_file"),
                    format!("is for auth_method: private_key_jwt, not {method}"),
                );
            }
            let Some(secret) = secret else {
                ctx.err(
                    path,
                    format!("auth_method {method} needs client_secret or client_secret_file"),
                );
                return None;
            };
            if secret.is_empty() {
                ctx.err(format!("{path}.client_secret"), "is empty");
            }
            Some(match method {
                "client_secret_basic" => ClientAuth::SecretBasic(secret),
                "client_secret_post" => ClientAuth::SecretPost(secret),
                _ => ClientAuth::SecretJson(secret),
            })
        }
        "private_key_jwt" => {
            if secret.is_some() {
                ctx.err(
                    path,
                    "private_key_jwt signs with private_key_file; remove client_secret",
                );
            }
            let Some(file) = f.private_key_file else {
                ctx.err(
                    format!("{path}.private_key_file"),
                    "required with auth_method: private_key_jwt (a PEM RSA, P-256 or Ed25519 private key)",
                );
                return None;
            };
            let (full, pem) = ctx.read_file(&format!("{path}.private_key_file"), file)?;
            if let Err(e) = portcullis_jwks::client_assertion::AssertionKey::from_pem(&pem, None) {
                ctx.err(
                    format!("{path}.private_key_file"),
                    format!("{}: {e}", full.display()),
                );
                return None;
            }
            Some(ClientAuth::PrivateKeyJwt {
                path: full,
                pem,
                kid: f.private_key_id.map(str::to_owned),
            })
        }
        other => {
            let mut all = secret_methods.to_vec();
            all.push("private_key_jwt");
            ctx.err(
                format!("{path}.auth_method"),
                format!("{other:?} is not supported; use {}", all.join(", ")),
            );
            None
        }
    }
}
