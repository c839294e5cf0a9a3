//! End to end against a real third-party authorization server: oauth2-mock-server
//! (npm, installed by scripts/test.sh into tests/third_party) issues
//! client_credentials tokens; the gateway discovers its keys and enforces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_tests::{AuthServer, DemoUpstream, TestEnv};

/// The running Node.js server; it exits when its standard input closes.
struct ThirdPartyIdp {
    child: Child,
    issuer: String,
}

impl Drop for ThirdPartyIdp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_idp() -> ThirdPartyIdp {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/third_party");
    assert!(
        dir.join("node_modules/oauth2-mock-server").is_dir(),
        "oauth2-mock-server is not installed: run `npm ci --prefix tests/third_party` (scripts/test.sh does)"
    );
    let mut child = Command::new("node")
        .arg("idp.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed");
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
        .expect("oauth2-mock-server did not start");
    ThirdPartyIdp { child, issuer }
}

async fn client_credentials(issuer: &str, scope: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("{issuer}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .body(Full::new(Bytes::from(format!(
            "grant_type=client_credentials&scope={scope}"
        ))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_third_party_authorization_server() {
    let idp = start_idp();
    let auth = AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let upstream = DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let yaml = format!(
        r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
issuers:
  mock: {{ issuer: "{issuer}", discovery: true, algorithms: [RS256] }}
upstreams:
  llm: {{ targets: ["{up}"] }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    upstream: llm
    auth: {{ issuers: [mock], audiences: [portcullis-e2e], scopes: {{ all_of: [chat:write] }} }}
"#,
        issuer = idp.issuer,
        up = upstream.url()
    );
    let env = TestEnv::start_with(auth, upstream, &yaml).await;

    let token = client_credentials(&idp.issuer, "chat:write").await;
    let reply = env.get_with_token("/v1/chat/completions", &token).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());

    let weak = client_credentials(&idp.issuer, "chat:read").await;
    let reply = env.get_with_token("/v1/x", &weak).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason().as_str()),
        (403, "scope_insufficient")
    );

    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // Flip the first signature character (never the last, whose spare bits matter).
    let first = if parts[2].starts_with('A') { "B" } else { "A" };
    parts[2].replace_range(0..1, first);
    let reply = env.get_with_token("/v1/x", &parts.join(".")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason().as_str()),
        (401, "signature_invalid")
    );
    assert_eq!(
        env.upstream.requests(),
        1,
        "only the valid request reached the upstream"
    );
}
