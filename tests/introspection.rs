//! Opaque access tokens by introspection (RFC 7662), end to end against a real
//! third-party authorization server: oidc-provider (npm) issues opaque tokens,
//! introspects and revokes them; the gateway asks it about each new token and
//! enforces the route's rules on the answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::sync::Arc;
use std::time::Duration;

use portcullis_tests::{OidcProvider, TestEnv, dev_servers, render};

/// Listeners, the opaque-token issuer `op` (its introspection block is
/// `{INTROSPECTION}`), the dev JWT issuer and the upstream; routes: /v1/chat/
/// (chat:write) and /admin/ (admin), both for the audience https://api.test/.
const TEMPLATE: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  op:
    issuer: "{AS}"
    tokens: {TOKENS}
    introspection: {INTROSPECTION}
  dev:
    issuer: "{ISSUER}"
    jwks_uri: "{ISSUER}jwks"
upstreams:
  llm: { targets: ["{UPSTREAM}"], response_header_timeout: 10s }
routes:
  - name: chat
    match: { path_prefix: /v1/chat/ }
    upstream: llm
    auth:
      issuers: [op, dev]
      audiences: ["https://api.test/", "https://short.test/", portcullis-demo]
      scopes: { all_of: [chat:write] }
      claim_headers: { client_id: X-Client }
  - name: admin
    match: { path_prefix: /admin/ }
    upstream: llm
    auth:
      issuers: [op]
      audiences: ["https://api.test/"]
      scopes: { all_of: [admin] }
"#;

const BASIC: &str =
    "{ client_id: gateway, client_secret: gateway-secret, timeout: 1s, retries: 0 }";

async fn gateway(op: &OidcProvider, introspection: &str) -> TestEnv {
    gateway_with(op, "opaque", introspection).await
}

async fn gateway_with(op: &OidcProvider, tokens: &str, introspection: &str) -> TestEnv {
    let (auth, upstream) = dev_servers().await;
    let yaml = render(TEMPLATE, &auth, &upstream)
        .replace("{AS}", op.issuer())
        .replace("{TOKENS}", tokens)
        .replace("{INTROSPECTION}", introspection);
    TestEnv::start_with(auth, upstream, &yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_tokens_pass_with_every_route_rule_applied() {
    let op = OidcProvider::start(None);
    let env = gateway(&op, BASIC).await;

    let chat = op.token("chat:write", "https://api.test/").await;
    let r = env.get_with_token("/v1/chat/echo", &chat).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-client"][0],
        "app",
        "claim headers come from the introspection answer: {}",
        r.text()
    );
    let calls = op.introspection_calls().await;
    assert_eq!(calls, 1);
    // Cached: the authorization server is not asked again.
    for _ in 0..5 {
        assert_eq!(env.get_with_token("/v1/chat/x", &chat).await.status, 200);
    }
    assert_eq!(op.introspection_calls().await, calls);
    assert_eq!(
        env.metric(&format!(
            "portcullis_introspection_cache_total{{issuer=\"{}\",result=\"hit\"}}",
            op.issuer()
        )),
        5.0
    );
    assert_eq!(
        env.metric(&format!(
            "portcullis_introspection_requests_total{{issuer=\"{}\",outcome=\"active\"}}",
            op.issuer()
        )),
        1.0
    );

    // The scope check: chat:write does not open /admin/.
    let r = env.get_with_token("/admin/x", &chat).await;
    assert_eq!(r.refusal(), (403, "scope_insufficient".into()));

    // The audience check: a token for another resource.
    let other = op.token("chat:write admin", "https://other.test/").await;
    let r = env.get_with_token("/admin/x", &other).await;
    assert_eq!(r.refusal(), (401, "audience_mismatch".into()));
    let r = env.get_with_token("/v1/chat/x", &other).await;
    assert_eq!(r.refusal(), (401, "audience_mismatch".into()));

    let admin = op.token("admin", "https://api.test/").await;
    assert_eq!(env.get_with_token("/admin/x", &admin).await.status, 200);

    // A made-up opaque token: inactive; asked once, then the negative answer
    // is cached.
    let before = op.introspection_calls().await;
    for _ in 0..3 {
        let r = env
            .get_with_token("/v1/chat/x", "made-up-opaque-token-0123456789")
            .await;
        assert_eq!(r.refusal(), (401, "token_inactive".into()));
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    assert_eq!(op.introspection_calls().await, before + 1);
    assert!(
        !env.metrics.render().contains("made-up-opaque-token"),
        "a token never reaches a metric"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stop_at_the_next_cache_expiry() {
    let op = OidcProvider::start(None);
    // No cache: a revocation takes effect at the next request.
    let uncached = gateway(
        &op,
        "{ client_id: gateway, client_secret: gateway-secret, cache_ttl: 0s }",
    )
    .await;
    let cached = gateway(
        &op,
        "{ client_id: gateway, client_secret: gateway-secret, cache_ttl: 1s }",
    )
    .await;
    let token = op.token("chat:write", "https://api.test/").await;
    assert_eq!(
        uncached.get_with_token("/v1/chat/x", &token).await.status,
        200
    );
    assert_eq!(
        cached.get_with_token("/v1/chat/x", &token).await.status,
        200
    );

    op.revoke(&token).await;
    let r = uncached.get_with_token("/v1/chat/x", &token).await;
    assert_eq!(r.refusal(), (401, "token_inactive".into()), "{}", r.text());

    // The cached answer ends after cache_ttl; then the revocation is seen.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let r = cached.get_with_token("/v1/chat/x", &token).await;
    assert_eq!(r.refusal(), (401, "token_inactive".into()), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_even_while_cached() {
    let op = OidcProvider::start(None);
    let env = gateway(&op, BASIC).await;
    // oidc-provider gives https://short.test/ tokens two seconds.
    let token = op.token("chat:write", "https://short.test/").await;
    assert_eq!(env.get_with_token("/v1/chat/x", &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let r = env.get_with_token("/v1/chat/x", &token).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        ["token_inactive", "token_expired"].contains(&r.reason().as_str()),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_server_outage_is_503_and_cached_answers_serve_through_max_stale() {
    let mut op = OidcProvider::start(None);
    let stale_ok = gateway(
        &op,
        "{ client_id: gateway, client_secret: gateway-secret, cache_ttl: 1s, max_stale: 1h, retries: 0 }",
    )
    .await;
    let no_stale = gateway(
        &op,
        "{ client_id: gateway, client_secret: gateway-secret, cache_ttl: 1s, retries: 0 }",
    )
    .await;
    let seen = op.token("chat:write", "https://api.test/").await;
    let unseen = op.token("chat:write", "https://api.test/").await;
    assert_eq!(
        stale_ok.get_with_token("/v1/chat/x", &seen).await.status,
        200
    );
    assert_eq!(
        no_stale.get_with_token("/v1/chat/x", &seen).await.status,
        200
    );

    op.stop();
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    // Past cache_ttl, within max_stale: served, and counted.
    let r = stale_ok.get_with_token("/v1/chat/x", &seen).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        stale_ok.metric(&format!(
            "portcullis_introspection_cache_total{{issuer=\"{}\",result=\"stale_served\"}}",
            op.issuer()
        )),
        1.0
    );
    // Never a 401 that would tell the client its token is bad.
    for (env, token) in [
        (&stale_ok, &unseen),
        (&no_stale, &seen),
        (&no_stale, &unseen),
    ] {
        let r = env.get_with_token("/v1/chat/x", token).await;
        assert_eq!(r.refusal(), (503, "idp_unavailable".into()), "{}", r.text());
        assert!(r.header("retry-after").is_some());
        assert!(r.text().contains("TCP"), "the layer is named: {}", r.text());
    }
    let ready = stale_ok.gateway.readiness();
    assert!(
        ready.ready,
        "an introspection outage never makes the replica unready"
    );
    let line = ready
        .checks
        .iter()
        .find(|c| c.contains("introspection"))
        .expect("a readiness line for the issuer");
    assert!(line.contains("FAILING") && line.contains("TCP"), "{line}");
    stale_ok.gateway.update_scrape_gauges();
    assert_eq!(
        stale_ok.metric(&format!(
            "portcullis_introspection_status{{issuer=\"{}\",status=\"failing\"}}",
            op.issuer()
        )),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_one_new_token_makes_one_introspection_call() {
    let op = OidcProvider::start(None);
    let env = Arc::new(gateway(&op, BASIC).await);
    for round in 0..3 {
        let token = Arc::new(op.token("chat:write", "https://api.test/").await);
        let before = op.introspection_calls().await;
        let requests: Vec<_> = (0..100)
            .map(|_| {
                let (env, token) = (Arc::clone(&env), Arc::clone(&token));
                tokio::spawn(async move { env.get_with_token("/v1/chat/x", &token).await.status })
            })
            .collect();
        for r in requests {
            assert_eq!(r.await.unwrap(), 200);
        }
        assert_eq!(
            op.introspection_calls().await,
            before + 1,
            "round {round}: 100 concurrent requests, one call"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_answers_are_idp_unavailable_never_a_pass() {
    let op = OidcProvider::start(None);
    let env = gateway(
        &op,
        "{ client_id: gateway, client_secret: gateway-secret, timeout: 500ms, retries: 0, max_response_size: 64KiB }",
    )
    .await;
    let cases = [
        ("http500", "HTTP"),
        ("not_json", "answer"),
        ("no_active", "answer"),
        ("active_string", "answer"),
        ("huge", "size"),
        ("slow", "timeout"),
    ];
    for (mode, layer) in cases {
        op.set_mode(mode).await;
        let token = op.token("chat:write admin", "https://api.test/").await;
        let r = env.get_with_token("/v1/chat/x", &token).await;
        assert_eq!(
            r.refusal(),
            (503, "idp_unavailable".into()),
            "{mode}: {}",
            r.text()
        );
        assert!(
            r.text().contains(layer),
            "{mode}: names {layer}: {}",
            r.text()
        );
        // Not cached: the next request asks again, and passes once the
        // answers are good.
        op.set_mode("normal").await;
        assert_eq!(
            env.get_with_token("/v1/chat/x", &token).await.status,
            200,
            "{mode}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tokens_are_refused_before_any_call() {
    let op = OidcProvider::start(None);
    let env = gateway(&op, BASIC).await;
    let before = op.introspection_calls().await;
    for size in [8 * 1024 + 1, 16 * 1024] {
        let token = "a".repeat(size);
        let r = env.get_with_token("/v1/chat/x", &token).await;
        assert_eq!(r.refusal(), (401, "token_too_large".into()), "{size}");
    }
    assert_eq!(op.introspection_calls().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_authentication_method_works_and_a_wrong_secret_is_named() {
    let key = portcullis_tests::SigningKey::ec("gw-1").unwrap();
    let mut jwk = key.public_jwk();
    jwk["alg"] = "ES256".into();
    let op = OidcProvider::start(Some(&jwk));
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("gateway-key.pem");
    std::fs::write(&pem, key.private_pem().unwrap()).unwrap();

    let methods = [
        "{ client_id: gateway, client_secret: gateway-secret, auth_method: client_secret_basic }"
            .to_owned(),
        "{ client_id: gateway-post, client_secret: gateway-secret, auth_method: client_secret_post }"
            .to_owned(),
        format!(
            "{{ client_id: gateway-jwt, auth_method: private_key_jwt, private_key_file: \"{}\", private_key_id: gw-1 }}",
            pem.display()
        ),
    ];
    for introspection in &methods {
        let env = gateway(&op, introspection).await;
        let token = op.token("chat:write", "https://api.test/").await;
        let r = env.get_with_token("/v1/chat/x", &token).await;
        assert_eq!(r.status, 200, "{introspection}: {}", r.text());
    }

    let env = gateway(
        &op,
        "{ client_id: gateway, client_secret: wrong-secret, retries: 0 }",
    )
    .await;
    let token = op.token("chat:write", "https://api.test/").await;
    let r = env.get_with_token("/v1/chat/x", &token).await;
    assert_eq!(r.refusal(), (503, "idp_unavailable".into()));
    assert!(
        r.text().contains("AS error") && r.text().contains("invalid_client"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("wrong-secret"), "the secret never shows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_verified_locally_and_never_sent_to_introspection() {
    let op = OidcProvider::start(None);
    let env = gateway_with(&op, "auto", BASIC).await;
    let before = op.introspection_calls().await;
    // A JWT of the dev issuer: verified with its keys.
    let jwt = env.token("chat:write", serde_json::json!({}));
    assert_eq!(env.get_with_token("/v1/chat/x", &jwt).await.status, 200);
    // A JWT of an issuer the route does not accept: refused, not sent out.
    let foreign = portcullis_tests::SigningKey::rsa("x")
        .unwrap()
        .sign(&serde_json::json!({
            "iss": "https://evil.example/", "aud": "https://api.test/",
            "exp": portcullis_devkit::now_unix() + 60, "scope": "chat:write"
        }))
        .unwrap();
    let r = env.get_with_token("/v1/chat/x", &foreign).await;
    assert_eq!(r.refusal(), (401, "issuer_mismatch".into()));
    // A JWT naming the auto issuer is verified with its keys (oidc-provider's
    // JWKS), so a forged one fails its signature without any call.
    let forged = portcullis_tests::SigningKey::rsa("x")
        .unwrap()
        .sign(&serde_json::json!({
            "iss": op.issuer(), "aud": "https://api.test/",
            "exp": portcullis_devkit::now_unix() + 60, "scope": "chat:write"
        }))
        .unwrap();
    let r = env.get_with_token("/v1/chat/x", &forged).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        op.introspection_calls().await,
        before,
        "no JWT was sent out"
    );
    // An opaque token goes to introspection.
    let opaque = op.token("chat:write", "https://api.test/").await;
    assert_eq!(env.get_with_token("/v1/chat/x", &opaque).await.status, 200);
    assert_eq!(op.introspection_calls().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_endpoint_and_a_route_without_an_introspecting_issuer() {
    let op = OidcProvider::start(None);
    let env = gateway(
        &op,
        &format!(
            "{{ endpoint: \"{}/token/introspection\", client_id: gateway, client_secret: gateway-secret }}",
            op.issuer()
        ),
    )
    .await;
    let token = op.token("chat:write", "https://api.test/").await;
    assert_eq!(env.get_with_token("/v1/chat/x", &token).await.status, 200);

    // A route whose issuers all take JWTs: an opaque token is malformed there.
    let (auth, upstream) = dev_servers().await;
    let jwt_only = TestEnv::start(portcullis_tests::BASE_CONFIG).await;
    drop((auth, upstream));
    let r = jwt_only.get_with_token("/v1/chat/x", &token).await;
    assert_eq!(r.refusal(), (401, "token_malformed".into()));
}

/// What `portcullis diagnose` shows: the pipeline's own steps in a dry run with
/// a verbose trace and no cache.
async fn dry_run(env: &TestEnv, token: &str) -> (Option<String>, Vec<(String, String, String)>) {
    use portcullis_proxy::decision::Step;
    use portcullis_proxy::observe::Trace;
    use portcullis_proxy::pipeline::{DecideContext, decide, unix_now};
    use portcullis_proxy::token_cache::TokenCache;

    let runtime = env.gateway.runtime();
    let no_cache = TokenCache::new(false, 0, 0, Duration::ZERO);
    let context = DecideContext {
        runtime: &runtime,
        token_cache: &no_cache,
        metrics: &env.metrics,
        peer: "127.0.0.1".parse().unwrap(),
        now: unix_now(),
        dry_run: true,
    };
    let mut req = http::Request::get("/v1/chat/x")
        .header("host", "gw.test")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let mut trace = Trace::new(&req, true);
    let rejection = decide(&context, &mut req, &mut trace).await.err();
    let refused = rejection
        .as_ref()
        .map(|r| format!("{}: {}", r.reason, r.detail));
    let steps = trace
        .steps
        .explain(rejection.as_ref())
        .into_iter()
        .filter(|e| {
            [
                Step::TokenStructure,
                Step::Issuer,
                Step::Introspection,
                Step::Signature,
            ]
            .contains(&e.step)
        })
        .map(|e| {
            (
                e.step.name().to_owned(),
                e.outcome.as_str().to_owned(),
                e.evidence,
            )
        })
        .collect();
    (refused, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_shows_the_introspection_step_with_its_evidence() {
    let mut op = OidcProvider::start(None);
    let env = gateway(&op, BASIC).await;
    let token = op.token("chat:write", "https://api.test/").await;

    let (refused, steps) = dry_run(&env, &token).await;
    assert_eq!(refused, None, "{steps:?}");
    let show = format!("{steps:?}");
    let find = |name: &str| steps.iter().find(|s| s.0 == name).unwrap().clone();
    assert!(find("token_structure").2.contains("opaque"), "{show}");
    assert!(find("issuer").2.contains("op"), "{show}");
    let (_, outcome, evidence) = find("introspection");
    assert_eq!(outcome, "pass", "{show}");
    for needle in [
        &format!("POST {}/token/introspection", op.issuer()),
        "active: true",
        "aud [\"https://api.test/\"]",
        "scope [\"chat:write\"]",
        "asked now",
    ] {
        assert!(evidence.contains(needle), "{needle:?} in {evidence}");
    }
    assert_eq!(find("signature").1, "skip", "{show}");
    assert!(!show.contains(&token), "the token never shows");

    let (refused, steps) = dry_run(&env, "not-a-token-the-server-knows").await;
    assert!(refused.unwrap().starts_with("token_inactive"), "{steps:?}");
    let (_, outcome, _) = steps
        .iter()
        .find(|s| s.0 == "introspection")
        .unwrap()
        .clone();
    assert_eq!(outcome, "fail");

    op.stop();
    let (refused, steps) = dry_run(&env, &token).await;
    let refused = refused.unwrap();
    assert!(
        refused.starts_with("idp_unavailable") && refused.contains("TCP"),
        "{refused} {steps:?}"
    );
}
