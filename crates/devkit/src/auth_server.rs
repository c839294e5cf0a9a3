//! The development authorization server: OIDC discovery, JWKS, and `POST /token`
//! with the client_credentials grant, issuing RS256 JWT access tokens with `scope`.
//!
//! Tests steer it through [`AuthControl`]: rotate keys, fail or slow the JWKS
//! endpoint, serve garbage, lie about the issuer, and count every fetch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http::Method;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::keys::{SignError, SigningKey, now_unix};
use crate::serve::{DevBody, ServerHandle, full, json_response};

/// The demo client id.
pub const DEMO_CLIENT_ID: &str = "demo-client";
/// The demo client secret (development only).
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";
/// The audience of issued tokens.
pub const DEMO_AUDIENCE: &str = "portcullis-demo";

/// How the JWKS endpoint misbehaves, for outage tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksFault {
    /// Serve the keys.
    None,
    /// Answer this status.
    Status(u16),
    /// Answer 200 with this body.
    Body(String),
    /// Answer after this delay.
    Delay(Duration),
}

/// Shared, steerable state of a running authorization server.
pub struct AuthControl {
    /// Keys published in the JWKS; the first signs new tokens.
    pub keys: Mutex<Vec<Arc<SigningKey>>>,
    /// The JWKS endpoint's fault.
    pub fault: Mutex<JwksFault>,
    /// `Cache-Control: max-age` of the JWKS response.
    pub max_age: AtomicU64,
    /// When set, discovery advertises this issuer instead of the real one.
    pub issuer_override: Mutex<Option<String>>,
    /// When false, the OIDC discovery document answers 404 (only RFC 8414 metadata).
    pub oidc_discovery: std::sync::atomic::AtomicBool,
    /// JWKS requests served.
    pub jwks_hits: AtomicUsize,
    /// Discovery requests served.
    pub discovery_hits: AtomicUsize,
    /// Tokens issued.
    pub tokens_issued: AtomicUsize,
    /// Token lifetime in seconds.
    pub token_ttl: AtomicU64,
    /// Allowed scopes for the demo client.
    pub client_scopes: Mutex<Vec<String>>,
}

/// A running development authorization server.
pub struct AuthServer {
    /// The HTTP server.
    pub handle: ServerHandle,
    /// Its steering state.
    pub control: Arc<AuthControl>,
    issuer: String,
}

impl AuthServer {
    /// Starts on `addr` (use `127.0.0.1:0` for tests) with one fresh RS256 key.
    pub async fn start(addr: SocketAddr) -> Result<Self, SignError> {
        let key = Arc::new(SigningKey::rsa("dev-rsa-1")?);
        let control = Arc::new(AuthControl {
            keys: Mutex::new(vec![key]),
            fault: Mutex::new(JwksFault::None),
            max_age: AtomicU64::new(300),
            issuer_override: Mutex::new(None),
            oidc_discovery: std::sync::atomic::AtomicBool::new(true),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            token_ttl: AtomicU64::new(3600),
            client_scopes: Mutex::new(vec![
                "chat:read".into(),
                "chat:write".into(),
                "models:read".into(),
            ]),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| SignError(e.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(|e| SignError(e.to_string()))?;
        let issuer = format!("http://{bound}/");
        let ctl = Arc::clone(&control);
        let iss = issuer.clone();
        let handle = crate::serve::serve(listener, move |req, _peer| {
            let ctl = Arc::clone(&ctl);
            let iss = iss.clone();
            async move { handle(req, &ctl, &iss).await }
        })
        .map_err(|e| SignError(e.to_string()))?;
        Ok(AuthServer {
            handle,
            control,
            issuer,
        })
    }

    /// The issuer identifier (`http://127.0.0.1:PORT/`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}jwks", self.issuer)
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        let keys = self.control.keys.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&keys[0])
    }

    /// Standard claims for a token of this issuer, with `extra` merged in.
    pub fn claims(&self, scope: &str, extra: Value) -> Value {
        let now = now_unix();
        let mut c = json!({
            "iss": self.issuer, "sub": DEMO_CLIENT_ID, "aud": DEMO_AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 3600, "scope": scope,
            "client_id": DEMO_CLIENT_ID, "jti": format!("{:x}", rand_u64()),
        });
        if let (Some(obj), Value::Object(more)) = (c.as_object_mut(), extra) {
            for (k, v) in more {
                if v.is_null() {
                    obj.remove(&k);
                } else {
                    obj.insert(k, v);
                }
            }
        }
        c
    }

    /// Signs a token with the current signing key.
    pub fn mint(&self, scope: &str, extra: Value) -> Result<String, SignError> {
        self.signing_key().sign(&self.claims(scope, extra))
    }

    /// Rotation: publishes `key` first (it signs new tokens), keeping the others.
    pub fn rotate_in(&self, key: SigningKey) {
        let mut keys = self.control.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(0, Arc::new(key));
    }

    /// Removes the key with `kid` from the JWKS.
    pub fn remove_key(&self, kid: &str) {
        let mut keys = self.control.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|k| k.kid() != kid);
    }

    /// Sets the JWKS endpoint's fault.
    pub fn set_fault(&self, fault: JwksFault) {
        *self.control.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// JWKS requests served so far.
    pub fn jwks_hits(&self) -> usize {
        self.control.jwks_hits.load(Ordering::SeqCst)
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

async fn handle(
    req: Request<Incoming>,
    ctl: &AuthControl,
    issuer: &str,
) -> hyper::Response<DevBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration")
            if !ctl.oidc_discovery.load(Ordering::SeqCst) =>
        {
            json_response(404, &json!({"error": "not_found"}))
        }
        // RFC 8414 §3: for an issuer without a path, the metadata sits at the root.
        (
            Method::GET,
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server",
        ) => {
            ctl.discovery_hits.fetch_add(1, Ordering::SeqCst);
            metadata(ctl, issuer)
        }
        (Method::GET, "/jwks") => jwks(ctl).await,
        (Method::POST, "/token") => token(req, ctl, issuer).await,
        _ => json_response(404, &json!({"error": "not_found"})),
    }
}

fn metadata(ctl: &AuthControl, issuer: &str) -> hyper::Response<DevBody> {
    let advertised = ctl
        .issuer_override
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| issuer.to_owned());
    json_response(
        200,
        &json!({
            "issuer": advertised,
            "jwks_uri": format!("{issuer}jwks"),
            "token_endpoint": format!("{issuer}token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }),
    )
}

async fn jwks(ctl: &AuthControl) -> hyper::Response<DevBody> {
    ctl.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let fault = ctl.fault.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match fault {
        JwksFault::Status(s) => return json_response(s, &json!({"error": "injected"})),
        JwksFault::Body(b) => {
            let mut r = hyper::Response::new(full(b));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        JwksFault::Delay(d) => tokio::time::sleep(d).await,
        JwksFault::None => {}
    }
    let keys: Vec<Value> = ctl
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|k| k.public_jwk())
        .collect();
    let mut r = json_response(200, &json!({ "keys": keys }));
    let cc = format!("public, max-age={}", ctl.max_age.load(Ordering::SeqCst));
    if let Ok(v) = http::HeaderValue::from_str(&cc) {
        r.headers_mut().insert(http::header::CACHE_CONTROL, v);
    }
    r
}

fn oauth_error(status: u16, code: &str, description: &str) -> hyper::Response<DevBody> {
    json_response(
        status,
        &json!({"error": code, "error_description": description}),
    )
}

async fn token(
    req: Request<Incoming>,
    ctl: &AuthControl,
    issuer: &str,
) -> hyper::Response<DevBody> {
    let basic = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
    else {
        return oauth_error(400, "invalid_request", "unreadable body");
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((i, s)) => (Some(i.to_owned()), Some(s.to_owned())),
        None => (get("client_id"), get("client_secret")),
    };
    if get("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    if id.as_deref() != Some(DEMO_CLIENT_ID) || secret.as_deref() != Some(DEMO_CLIENT_SECRET) {
        return oauth_error(401, "invalid_client", "unknown client or wrong secret");
    }
    let allowed = ctl
        .client_scopes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let scope = match get("scope") {
        Some(s) => {
            if let Some(bad) = s
                .split_whitespace()
                .find(|w| !allowed.iter().any(|a| a == w))
            {
                return oauth_error(
                    400,
                    "invalid_scope",
                    &format!("scope {bad} is not granted to this client"),
                );
            }
            s
        }
        None => allowed.join(" "),
    };
    let key = {
        let keys = ctl.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.first().cloned()
    };
    let Some(key) = key else {
        return oauth_error(500, "server_error", "no signing key");
    };
    let now = now_unix();
    let ttl = ctl.token_ttl.load(Ordering::SeqCst) as i64;
    let audience = get("audience").unwrap_or_else(|| DEMO_AUDIENCE.to_owned());
    let claims = json!({
        "iss": issuer, "sub": DEMO_CLIENT_ID, "aud": audience, "iat": now, "nbf": now,
        "exp": now + ttl, "scope": scope, "client_id": DEMO_CLIENT_ID, "jti": format!("{:x}", rand_u64()),
    });
    let header = json!({"alg": key.alg(), "kid": key.kid(), "typ": "at+jwt"});
    match key.sign_with_header(&header, &claims) {
        Ok(token) => {
            ctl.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let mut r = json_response(
                200,
                &json!({
                    "access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": scope,
                }),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => oauth_error(500, "server_error", &e.to_string()),
    }
}
