//! A real third-party authorization server for the introspection tests:
//! oidc-provider (npm, installed by scripts/test.sh into tests/third_party),
//! started with Node.js on a free loopback port by `oidc_provider.mjs`. It
//! issues opaque access tokens (client credentials, resource indicators) and
//! serves RFC 7662 introspection and RFC 7009 revocation.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The running server; it exits when its standard input closes (or is killed).
pub struct OidcProvider {
    child: Option<Child>,
    issuer: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

impl OidcProvider {
    /// Starts it; `gateway_jwk`, when given, registers client `gateway-jwt`
    /// (private_key_jwt) with that public key.
    pub fn start(gateway_jwk: Option<&Value>) -> OidcProvider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/third_party");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix tests/third_party` (scripts/test.sh does)"
        );
        let mut command = Command::new("node");
        command
            .arg("oidc_provider.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(jwk) = gateway_jwk {
            command.env("GATEWAY_JWK", jwk.to_string());
        }
        let mut child = command.spawn().expect("node must be installed");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("oidc-provider did not start");
        OidcProvider {
            child: Some(child),
            issuer,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Its issuer identifier (`http://127.0.0.1:<port>`, no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Stops it for good (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn post(&self, path: &str, basic: &str, form: &str) -> (u16, Value) {
        use base64::Engine;
        let req = http::Request::post(format!("{}{path}", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(basic)
                ),
            )
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        let resp = self
            .client
            .request(req)
            .await
            .expect("oidc-provider answers");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// An opaque access token of client `app` for `resource` with `scope`.
    pub async fn token(&self, scope: &str, resource: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            urlencode(scope),
            urlencode(resource)
        );
        let (status, body) = self.post("/token", "app:app-secret", &form).await;
        assert_eq!(status, 200, "token request refused: {body}");
        let token = body["access_token"].as_str().expect("access_token");
        assert_eq!(
            token.split('.').count(),
            1,
            "oidc-provider must issue opaque tokens here"
        );
        token.to_owned()
    }

    /// Revokes a token at the revocation endpoint (RFC 7009), as client `app`.
    pub async fn revoke(&self, token: &str) {
        let form = format!("token={}&token_type_hint=access_token", urlencode(token));
        let (status, body) = self
            .post("/token/revocation", "app:app-secret", &form)
            .await;
        assert_eq!(status, 200, "revocation refused: {body}");
    }

    /// Introspection calls the server has received so far (counted by the
    /// server itself, not by the gateway).
    pub async fn introspection_calls(&self) -> u64 {
        let req = http::Request::get(format!("{}/__test/calls", self.issuer))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .client
            .request(req)
            .await
            .expect("oidc-provider answers");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["introspection"].as_u64().unwrap()
    }

    /// Makes the introspection endpoint misbehave (`normal` to stop).
    pub async fn set_mode(&self, mode: &str) {
        let req = http::Request::post(format!("{}/__test/mode?m={mode}", self.issuer))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .client
            .request(req)
            .await
            .expect("oidc-provider answers");
        assert_eq!(resp.status(), 200);
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
