//! OAuth 2.0 Protected Resource Metadata (RFC 9728) end to end: the gateway
//! serves a route's resource metadata at the well-known path derived from the
//! resource, names it in every Bearer challenge of that route (and in no
//! other), and the document says exactly what the route enforces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv};
use serde_json::json;

const ROUTES: &str = r#"
routes:
  - name: mcp
    match: { path_prefix: /mcp }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: ["http://gw.test/mcp"]
      resource: "http://gw.test/mcp"
      scopes: { all_of: [mcp:tools] }
  - name: chat
    match: { path_prefix: /v1/ }
    upstream: llm
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: [chat:write] } }
"#;

const METADATA_URL: &str = "http://gw.test/.well-known/oauth-protected-resource/mcp";

fn config() -> String {
    format!("{ISSUER_AND_UPSTREAM}{ROUTES}")
}

#[tokio::test]
async fn the_metadata_says_what_the_route_enforces() {
    let env = TestEnv::start(&config()).await;
    let r = env
        .get("/.well-known/oauth-protected-resource/mcp", &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        r.json(),
        json!({
            "resource": "http://gw.test/mcp",
            "authorization_servers": [env.auth.issuer()],
            "scopes_supported": ["mcp:tools"],
            "bearer_methods_supported": ["header"],
        })
    );
    assert_eq!(env.upstream.requests(), 0, "answered by the gateway");
    // Only where RFC 9728 puts it: the root document is another resource's.
    let r = env.get("/.well-known/oauth-protected-resource", &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn every_challenge_of_the_route_names_the_metadata_and_no_other_does() {
    let env = TestEnv::start(&config()).await;
    // 401 without a token.
    let r = env.get("/mcp", &[]).await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"portcullis\"")
            && challenge.ends_with(&format!("resource_metadata=\"{METADATA_URL}\"")),
        "{challenge}"
    );
    // 401 invalid_token.
    let expired = env.token(
        "mcp:tools",
        json!({"aud": "http://gw.test/mcp", "exp": 1000}),
    );
    let r = env.get_with_token("/mcp", &expired).await;
    assert_eq!(r.reason(), "token_expired");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains(&format!("resource_metadata=\"{METADATA_URL}\""))
    );
    // 403 insufficient_scope.
    let weak = env.token("other", json!({"aud": "http://gw.test/mcp"}));
    let r = env.get_with_token("/mcp", &weak).await;
    assert_eq!(r.status, 403);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    // A token for the resource passes.
    let good = env.token("mcp:tools", json!({"aud": "http://gw.test/mcp"}));
    assert_eq!(env.get_with_token("/mcp", &good).await.status, 200);
    // Another route names no metadata.
    let r = env.get("/v1/chat", &[]).await;
    assert_eq!(r.status, 401);
    assert!(
        !r.header("www-authenticate")
            .unwrap()
            .contains("resource_metadata")
    );
}

#[tokio::test]
async fn the_global_network_rules_apply_to_the_metadata_too() {
    let denied = config().replace(
        "logging: { access_log: false }\n",
        "logging: { access_log: false }\nnetwork: { deny: [127.0.0.0/8] }\n",
    );
    let env = TestEnv::start(&denied).await;
    let r = env
        .get("/.well-known/oauth-protected-resource/mcp", &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "ip_denied");
}

#[tokio::test]
async fn diagnose_names_the_metadata_a_refusal_points_to() {
    use portcullis_proxy::decision::Step;
    use portcullis_proxy::observe::Trace;
    use portcullis_proxy::pipeline::{DecideContext, decide, unix_now};
    use portcullis_proxy::token_cache::TokenCache;
    use std::time::Duration;

    let env = TestEnv::start(&config()).await;
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
    let mut req = http::Request::get("/mcp")
        .header("host", "gw.test")
        .body(())
        .unwrap();
    let mut trace = Trace::new(&req, true);
    let Err(refused) = decide(&context, &mut req, &mut trace).await else {
        panic!("a request without a token was let through");
    };
    assert_eq!(refused.reason.as_str(), "token_missing");
    let route_notes: Vec<&String> = trace
        .steps
        .notes()
        .iter()
        .filter(|(s, _)| *s == Step::Route)
        .map(|(_, e)| e)
        .collect();
    assert!(
        route_notes.iter().any(|e| e.contains(METADATA_URL)),
        "{route_notes:?}"
    );
}
