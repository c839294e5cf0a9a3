//! The gateway as an OAuth 2.0 client of an upstream's authorization server:
//! the client credentials grant (RFC 6749 §4.4), for upstreams that want a
//! bearer token of their own (Azure OpenAI with Entra ID, internal APIs behind
//! another resource server).
//!
//! One call gets one token: `grant_type=client_credentials` with the
//! configured `scope`, `audience` (Auth0, Okta) and `resource` (RFC 8707),
//! authenticated with `client_secret_basic`, `client_secret_post`,
//! `client_secret_json` (the same members as a JSON body) or `private_key_jwt`
//! (RFC 7523). The answer (RFC 6749 §5.1) must carry a non-empty
//! `access_token` that fits in a header and a `token_type` of `Bearer`;
//! `expires_in` may be a number or a numeric string (as Entra ID's v1 endpoint
//! sends it), and when it is missing the configured default lifetime applies.
//! Caching, refresh ahead of expiry and single flight are the caller's.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use serde_json::Value;

use crate::client_assertion::AssertionKey;
use crate::fetch::{FetchError, check_url};
use crate::introspection::{ClientAuth, OAuthCallError};
use crate::oauth_http::{OAuthHttp, form_encode, oauth_error};

/// Client credentials settings of one upstream, with their documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentialsSettings {
    /// The token endpoint.
    pub token_url: String,
    /// The gateway's client id.
    pub client_id: String,
    /// How the gateway authenticates.
    pub auth: ClientAuth,
    /// `scope`, space-separated.
    pub scope: Option<String>,
    /// `audience` (a non-standard member Auth0 and Okta use).
    pub audience: Option<String>,
    /// `resource` (RFC 8707).
    pub resource: Option<String>,
    /// TCP + TLS connect timeout (2 s).
    pub connect_timeout: Duration,
    /// Total time of one call (5 s).
    pub timeout: Duration,
    /// Largest accepted answer (64 KiB).
    pub max_bytes: usize,
    /// A token is not sent in its last `expiry_margin` (30 s, at most half its
    /// lifetime): a request must not reach the upstream with a token that
    /// expires on the way.
    pub expiry_margin: Duration,
    /// The lifetime of a token whose answer has no `expires_in` (5 min).
    pub default_lifetime: Duration,
    /// Allow plain http to non-loopback hosts (false).
    pub allow_http: bool,
    /// Extra CA bundle (PEM) for the token endpoint.
    pub ca_file: Option<PathBuf>,
}

impl ClientCredentialsSettings {
    /// The defaults, for an endpoint, a client and its authentication.
    pub fn new(token_url: String, client_id: String, auth: ClientAuth) -> Self {
        ClientCredentialsSettings {
            token_url,
            client_id,
            auth,
            scope: None,
            audience: None,
            resource: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            max_bytes: 64 << 10,
            expiry_margin: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(300),
            allow_http: false,
            ca_file: None,
        }
    }
}

/// A token the endpoint issued.
#[derive(Clone)]
pub struct IssuedToken {
    /// The access token (a secret: never printed).
    pub access_token: String,
    /// Its lifetime from `expires_in`, or the default.
    pub lifetime: Duration,
    /// Whether the answer gave `expires_in`.
    pub lifetime_given: bool,
    /// When it was received.
    pub received_at: SystemTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"***")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The client of one token endpoint.
pub struct TokenClient {
    settings: ClientCredentialsSettings,
    http: OAuthHttp,
    assertion_key: Option<AssertionKey>,
}

impl TokenClient {
    /// Builds the client; the CA file and the assertion key are read now.
    pub fn new(settings: ClientCredentialsSettings) -> Result<Self, String> {
        check_url(&settings.token_url, settings.allow_http).map_err(|e| e.to_string())?;
        let http = OAuthHttp::new(settings.connect_timeout, settings.ca_file.as_deref())?;
        let assertion_key = match &settings.auth {
            ClientAuth::PrivateKeyJwt { pem, kid, path } => Some(
                AssertionKey::from_pem(pem, kid.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            _ => None,
        };
        Ok(TokenClient {
            settings,
            http,
            assertion_key,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ClientCredentialsSettings {
        &self.settings
    }

    /// Asks for a token, once (retries are the caller's).
    pub async fn fetch(&self) -> Result<IssuedToken, OAuthCallError> {
        let url = &self.settings.token_url;
        let request = self.request()?;
        let (status, body) = self
            .http
            .exchange(request, url, self.settings.max_bytes, self.settings.timeout)
            .await
            .map_err(OAuthCallError::Transport)?;
        if status != StatusCode::OK {
            return Err(oauth_error(url, status, &body).unwrap_or_else(|| {
                OAuthCallError::Transport(FetchError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                })
            }));
        }
        read_token(&body, self.settings.default_lifetime).map_err(|why| OAuthCallError::Answer {
            url: url.clone(),
            why,
        })
    }

    fn request(&self) -> Result<http::Request<Full<Bytes>>, OAuthCallError> {
        let s = &self.settings;
        let mut members: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
        for (name, value) in [
            ("scope", &s.scope),
            ("audience", &s.audience),
            ("resource", &s.resource),
        ] {
            if let Some(v) = value {
                members.push((name, v.clone()));
            }
        }
        let mut builder = http::Request::post(s.token_url.as_str())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        let mut json = false;
        match &s.auth {
            ClientAuth::SecretBasic(secret) => {
                builder = builder.header(
                    header::AUTHORIZATION,
                    crate::oauth_http::basic(&s.client_id, secret),
                );
            }
            ClientAuth::SecretPost(secret) => {
                members.push(("client_id", s.client_id.clone()));
                members.push(("client_secret", secret.clone()));
            }
            ClientAuth::SecretJson(secret) => {
                members.push(("client_id", s.client_id.clone()));
                members.push(("client_secret", secret.clone()));
                json = true;
            }
            ClientAuth::PrivateKeyJwt { .. } => {
                let key = self
                    .assertion_key
                    .as_ref()
                    .ok_or_else(|| OAuthCallError::Assertion("no key was loaded".to_owned()))?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                // RFC 7523 §3: the token endpoint is an audience every server takes.
                let assertion = key
                    .assertion(&s.client_id, &s.token_url, now)
                    .map_err(OAuthCallError::Assertion)?;
                members.push(("client_id", s.client_id.clone()));
                members.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                members.push(("client_assertion", assertion));
            }
        }
        let (content_type, body) = if json {
            let object: serde_json::Map<String, Value> = members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            ("application/json", Value::Object(object).to_string())
        } else {
            let body = members
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            ("application/x-www-form-urlencoded", body)
        };
        builder
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                OAuthCallError::Transport(FetchError::BadUrl {
                    url: s.token_url.clone(),
                    why: e.to_string(),
                })
            })
    }
}

/// Reads a token answer (RFC 6749 §5.1).
pub fn read_token(body: &[u8], default_lifetime: Duration) -> Result<IssuedToken, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let access_token = match value.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::String(_)) => return Err("access_token is empty".to_owned()),
        Some(_) => return Err("access_token is not a string".to_owned()),
        None => return Err("the answer has no access_token".to_owned()),
    };
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("access_token has characters a header cannot carry".to_owned());
    }
    match value.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => {
            return Err(format!(
                "token_type is {:?}: only Bearer tokens can be sent",
                portcullis_policy::verify::printable(t)
            ));
        }
        None => return Err("the answer has no token_type".to_owned()),
    }
    let expires_in = match value.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    if value.get("expires_in").is_some_and(|v| !v.is_null()) && expires_in.is_none() {
        return Err("expires_in is not a number of seconds".to_owned());
    }
    Ok(IssuedToken {
        access_token,
        lifetime: expires_in.map_or(default_lifetime, Duration::from_secs),
        lifetime_given: expires_in.is_some(),
        received_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(300);

    #[test]
    fn good_answers_give_a_token_and_its_lifetime() {
        let t = read_token(
            br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3600}"#,
            DEFAULT,
        )
        .unwrap();
        assert_eq!(t.access_token, "abc.def");
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        assert!(t.lifetime_given);
        // Entra ID v1 sends the number as a string; lowercase bearer is fine.
        let t = read_token(
            br#"{"access_token":"x","token_type":"bearer","expires_in":"599"}"#,
            DEFAULT,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(599));
        let t = read_token(br#"{"access_token":"x","token_type":"Bearer"}"#, DEFAULT).unwrap();
        assert_eq!((t.lifetime, t.lifetime_given), (DEFAULT, false));
        assert!(
            !format!("{t:?}").contains("\"x\""),
            "the token never prints"
        );
    }

    #[test]
    fn bad_answers_are_named() {
        for (body, why) in [
            (&b"<html>login</html>"[..], "not JSON"),
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (br#"{"access_token":"","token_type":"Bearer"}"#, "empty"),
            (
                br#"{"access_token":7,"token_type":"Bearer"}"#,
                "not a string",
            ),
            (br#"{"access_token":"a b","token_type":"Bearer"}"#, "header"),
            (
                br#"{"access_token":"a","token_type":"DPoP"}"#,
                "only Bearer",
            ),
            (br#"{"access_token":"a"}"#, "no token_type"),
            (
                br#"{"access_token":"a","token_type":"Bearer","expires_in":"soon"}"#,
                "expires_in",
            ),
        ] {
            let err = read_token(body, DEFAULT).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
