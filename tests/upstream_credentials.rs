//! The upstream's own credential: provider presets (how an API key is sent,
//! default headers, default base URL) and OAuth 2.0 client credentials, the
//! gateway as a client of the upstream's authorization server.
//!
//! The OAuth tests chain two gateways: the one under test (A) gets tokens from
//! a real oidc-provider (npm) and sends them to gateway B, which is the
//! upstream's resource server: it introspects each token at the same
//! oidc-provider (no cache, so a revocation shows at once) and forwards to the
//! demo upstream, which echoes what it got.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use portcullis_tests::{ISSUER_AND_UPSTREAM, OidcProvider, TestEnv, dev_servers, render};

/// Gateway B: opaque tokens of oidc-provider for https://llm.test/, checked
/// on every request, and passed on to the echoing demo upstream.
const RESOURCE_SERVER: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  op:
    issuer: "{AS}"
    tokens: opaque
    introspection: { client_id: gateway, client_secret: gateway-secret, cache_ttl: 0s }
upstreams:
  llm: { targets: ["{UPSTREAM}"] }
routes:
  - name: llm
    match: { path_prefix: / }
    upstream: llm
    auth: { issuers: [op], audiences: ["https://llm.test/"], forward_token: true }
"#;

/// Gateway A: clients with dev-issuer JWTs; its upstream is B, reached with
/// a token of A's own (`{OAUTH}` is the credential.oauth block).
const GATEWAY: &str = r#"  b:
    targets: ["{B}"]
    credential:
      oauth: {OAUTH}
routes:
  - name: chat
    match: { path_prefix: /v1/ }
    upstream: b
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: [chat:write] } }
"#;

async fn resource_server(op: &OidcProvider) -> TestEnv {
    let (auth, upstream) = dev_servers().await;
    let yaml = render(RESOURCE_SERVER, &auth, &upstream).replace("{AS}", op.issuer());
    TestEnv::start_with(auth, upstream, &yaml).await
}

async fn gateway(b: &TestEnv, oauth: &str) -> TestEnv {
    let (auth, upstream) = dev_servers().await;
    let yaml = render(&format!("{ISSUER_AND_UPSTREAM}{GATEWAY}"), &auth, &upstream)
        .replace("{B}", &b.url(""))
        .replace("{OAUTH}", oauth);
    TestEnv::start_with(auth, upstream, &yaml).await
}

fn basic(op: &OidcProvider) -> String {
    format!(
        "{{ token_url: \"{}/token\", client_id: app, client_secret: app-secret, scope: chat:write, resource: \"https://llm.test/\" }}",
        op.issuer()
    )
}

/// The token B passed on to the demo upstream, as it echoed it.
fn upstream_saw(reply: &portcullis_tests::Reply) -> String {
    reply.json()["headers"]["authorization"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn fetches(env: &TestEnv, outcome: &str) -> f64 {
    env.metric(&format!(
        "portcullis_upstream_token_fetches_total{{outcome=\"{outcome}\",upstream=\"b\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gets_a_token_for_its_upstream_and_reuses_it() {
    let op = OidcProvider::start(None);
    let b = resource_server(&op).await;
    let a = gateway(&b, &basic(&op)).await;
    let client_token = a.token("chat:write", serde_json::json!({}));
    let first = a.get_with_token("/v1/echo", &client_token).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let sent = upstream_saw(&first);
    assert!(sent.starts_with("Bearer "), "{}", first.text());
    assert!(
        !sent.contains(&client_token),
        "the client's token never goes upstream"
    );
    for _ in 0..5 {
        let r = a.get_with_token("/v1/echo", &client_token).await;
        assert_eq!(upstream_saw(&r), sent, "the same token, reused");
    }
    assert_eq!(fetches(&a, "ok"), 1.0);
    a.gateway.update_scrape_gauges();
    assert!(
        a.metrics
            .render()
            .contains("portcullis_upstream_token_age_seconds{upstream=\"b\"}")
    );
    let ready = a.gateway.readiness();
    assert!(
        ready
            .checks
            .iter()
            .any(|c| c.contains("upstream b token: a token held")),
        "{:?}",
        ready.checks
    );
    // The token never shows in metrics or readiness.
    let token = sent.trim_start_matches("Bearer ");
    assert!(!a.metrics.render().contains(token));
    assert!(!ready.checks.join("\n").contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_upstream_refuses_is_replaced_and_the_request_sent_again() {
    let op = OidcProvider::start(None);
    let b = resource_server(&op).await;
    let a = gateway(&b, &basic(&op)).await;
    let client_token = a.token("chat:write", serde_json::json!({}));
    let first = a.get_with_token("/v1/echo", &client_token).await;
    let old = upstream_saw(&first);
    op.revoke(old.trim_start_matches("Bearer ")).await;

    // B now refuses the old token (401); A gets a new one and sends again.
    let r = a.get_with_token("/v1/echo", &client_token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let new = upstream_saw(&r);
    assert!(new.starts_with("Bearer ") && new != old, "{new} {old}");
    assert_eq!(fetches(&a, "ok"), 2.0);
    assert_eq!(
        b.metric("portcullis_auth_decisions_total{outcome=\"deny\",reason=\"token_inactive\",route=\"llm\"}"),
        1.0,
        "B refused the revoked token once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_fails_is_502_naming_the_layer() {
    let op = OidcProvider::start(None);
    let b = resource_server(&op).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (
            format!(
                "{{ token_url: \"http://127.0.0.1:{dead}/token\", client_id: app, client_secret: app-secret }}"
            ),
            "TCP",
        ),
        (
            format!(
                "{{ token_url: \"{}/token\", client_id: app, client_secret: wrong, resource: \"https://llm.test/\" }}",
                op.issuer()
            ),
            "invalid_client",
        ),
    ];
    for (oauth, layer) in cases {
        let a = gateway(&b, &oauth).await;
        let client_token = a.token("chat:write", serde_json::json!({}));
        let r = a.get_with_token("/v1/echo", &client_token).await;
        assert_eq!(
            r.refusal(),
            (502, "upstream_credential_unavailable".into()),
            "{}",
            r.text()
        );
        assert!(r.text().contains(layer), "{layer}: {}", r.text());
        assert!(!r.text().contains("app-secret") && !r.text().contains("wrong"));
        let ready = a.gateway.readiness();
        assert!(
            ready.ready,
            "a token endpoint never makes the replica unready"
        );
        assert!(
            ready
                .checks
                .iter()
                .any(|c| c.contains("upstream b token") && c.contains("FAILS")),
            "{:?}",
            ready.checks
        );
        assert_eq!(
            b.metric(
                "portcullis_requests_total{method=\"GET\",route=\"llm\",status_class=\"2xx\"}"
            ),
            0.0
        );
    }

    // An HTML page where the token should be.
    op.set_mode("token_html").await;
    let a = gateway(&b, &basic(&op)).await;
    let client_token = a.token("chat:write", serde_json::json!({}));
    let r = a.get_with_token("/v1/echo", &client_token).await;
    assert_eq!(r.refusal(), (502, "upstream_credential_unavailable".into()));
    assert!(r.text().contains("not JSON"), "{}", r.text());
    assert!(fetches(&a, "invalid_answer") >= 1.0);
    // Back to normal: the next request fetches and passes.
    op.set_mode("normal").await;
    assert_eq!(
        a.get_with_token("/v1/echo", &client_token).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_and_private_key_jwt_get_tokens_too() {
    let key = portcullis_tests::SigningKey::ec("agent-1").unwrap();
    let mut jwk = key.public_jwk();
    jwk["alg"] = "ES256".into();
    let op = OidcProvider::start(Some(&jwk));
    let b = resource_server(&op).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("agent.pem");
    std::fs::write(&pem, key.private_pem().unwrap()).unwrap();
    for oauth in [
        format!(
            "{{ token_url: \"{}/token\", client_id: app-post, client_secret: app-secret, auth_method: client_secret_post, resource: \"https://llm.test/\" }}",
            op.issuer()
        ),
        format!(
            "{{ token_url: \"{}/token\", client_id: agent-jwt, auth_method: private_key_jwt, private_key_file: \"{}\", resource: \"https://llm.test/\" }}",
            op.issuer(),
            pem.display()
        ),
    ] {
        let a = gateway(&b, &oauth).await;
        let client_token = a.token("chat:write", serde_json::json!({}));
        let r = a.get_with_token("/v1/echo", &client_token).await;
        assert_eq!(r.status, 200, "{oauth}: {}", r.text());
        assert!(upstream_saw(&r).starts_with("Bearer "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_renewed_in_the_background_before_it_expires() {
    let op = OidcProvider::start(None);
    let b = resource_server(&op).await;
    // https://short.test/ tokens live 2 s: renewed at 80 %, so a request
    // after 3 s finds a fresh one held (and never waits on the endpoint).
    let b_short = {
        let (auth, upstream) = dev_servers().await;
        let yaml = render(RESOURCE_SERVER, &auth, &upstream)
            .replace("{AS}", op.issuer())
            .replace("https://llm.test/", "https://short.test/");
        TestEnv::start_with(auth, upstream, &yaml).await
    };
    drop(b);
    let oauth = format!(
        "{{ token_url: \"{}/token\", client_id: app, client_secret: app-secret, resource: \"https://short.test/\", expiry_margin: 500ms }}",
        op.issuer()
    );
    let a = gateway(&b_short, &oauth).await;
    let client_token = a.token("chat:write", serde_json::json!({}));
    let first = upstream_saw(&a.get_with_token("/v1/echo", &client_token).await);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let fetched = fetches(&a, "ok");
    assert!(
        fetched >= 2.0,
        "renewed in the background: {fetched} fetches"
    );
    let r = a.get_with_token("/v1/echo", &client_token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(upstream_saw(&r), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_presets_send_the_key_the_providers_way() {
    let cases = [
        ("openai", "authorization", "Bearer sk-openai"),
        ("mistral", "authorization", "Bearer sk-openai"),
        ("openai_compatible", "authorization", "Bearer sk-openai"),
        ("azure_openai", "api-key", "sk-openai"),
        ("anthropic", "x-api-key", "sk-openai"),
        ("gemini", "x-goog-api-key", "sk-openai"),
    ];
    for (provider, header, value) in cases {
        let template = format!(
            r#"{ISSUER_AND_UPSTREAM}  ai:
    provider: {provider}
    targets: ["{{UPSTREAM}}"]
    credential: {{ api_key: sk-openai }}
routes:
  - name: ai
    match: {{ path_prefix: /ai/ }}
    upstream: ai
    auth: {{ issuers: [dev], audiences: [portcullis-demo] }}
"#
        );
        let env = TestEnv::start(&template).await;
        let token = env.token("", serde_json::json!({}));
        let r = env.get_with_token("/ai/echo", &token).await;
        assert_eq!(r.status, 200, "{provider}: {}", r.text());
        let headers = &r.json()["headers"];
        assert_eq!(headers[header][0], value, "{provider}: {headers}");
        if provider == "anthropic" {
            assert_eq!(headers["anthropic-version"][0], "2023-06-01");
            // A client's own version is kept.
            let r = env
                .get(
                    "/ai/echo",
                    &[
                        ("authorization", &format!("Bearer {token}")),
                        ("anthropic-version", "2024-01-01"),
                    ],
                )
                .await;
            assert_eq!(r.json()["headers"]["anthropic-version"][0], "2024-01-01");
        } else {
            assert!(headers.get("anthropic-version").is_none());
        }
    }
}
