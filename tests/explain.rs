//! Explain by request id (#16): a refused request's decision trace is kept in a
//! bounded ring and served by the admin listener at `/debug/requests/{id}`, with
//! nothing secret in it; the admin listener's optional token protects it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use http::Method;
use portcullis_tests::{BASE_CONFIG, TestEnv};
use serde_json::{Value, json};

const ROUTE_NAMES: [&str; 24] = [
    "request",
    "canonical",
    "strip_spoofed",
    "route",
    "upgrade",
    "client_ip",
    "cors",
    "ip_rate_limit",
    "authorization_header",
    "token_cache",
    "token_structure",
    "issuer",
    "introspection",
    "token_header",
    "keys",
    "kid",
    "signature",
    "time",
    "audience",
    "scopes",
    "claims",
    "model",
    "rate_limit",
    "upstream",
];

fn with_explain(capacity: usize) -> String {
    BASE_CONFIG.replace(
        "admin: { enabled: false }",
        &format!("admin: {{ enabled: false, explain: {{ capacity: {capacity} }} }}"),
    ) + r#"  - name: shadow
    match: { path_prefix: /shadow/ }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: [portcullis-demo]
      scopes: { all_of: [admin] }
      mode: report
"#
}

async fn explain(env: &TestEnv, id: &str) -> (u16, Value) {
    let reply = env.admin_get(&format!("/debug/requests/{id}")).await;
    (reply.status.as_u16(), reply.json())
}

fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {doc}"))
}

#[tokio::test]
async fn a_refusal_is_explained_by_its_request_id_without_a_secret() {
    let env = TestEnv::start(&with_explain(64)).await;
    let expired = env.token("chat:write", json!({"exp": 1000}));
    let reply = env.get_with_token("/v1/chat/x?q=1", &expired).await;
    assert_eq!(reply.status, 401);
    let id = reply.header("x-request-id").unwrap();
    assert_eq!(reply.json()["request_id"], id.as_str());

    let (status, doc) = explain(&env, &id).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["reason"], "token_expired");
    assert_eq!(doc["step"], "time");
    assert_eq!(doc["status"], 401);
    assert_eq!(doc["route"], "chat");
    assert_eq!(doc["method"], "GET");
    assert_eq!(doc["path"], "/v1/chat/x", "the query is not kept");
    assert_eq!(doc["outcome"], "deny");
    assert_eq!(doc["client_ip"], "127.0.0.1");
    assert!(doc["fix"].as_str().unwrap().contains("new token"));
    let names: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(names, ROUTE_NAMES, "every pipeline step, in order");
    assert_eq!(step(&doc, "route")["outcome"], "pass");
    assert_eq!(step(&doc, "signature")["outcome"], "pass");
    assert_eq!(step(&doc, "time")["outcome"], "fail");
    assert!(
        step(&doc, "time")["evidence"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{doc}"
    );
    assert_eq!(step(&doc, "audience")["outcome"], "skip");
    let text = doc.to_string();
    let signature = expired.rsplit('.').next().unwrap();
    assert!(!text.contains(&expired) && !text.contains(signature));
    assert!(!text.contains("sk-test-upstream-secret"));

    // The same as text, for people.
    let reply = env
        .admin_get(&format!("/debug/requests/{id}?format=text"))
        .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(text.contains("✗ time"), "{text}");
    assert!(
        text.contains("refused: 401 token_expired at step time"),
        "{text}"
    );
    assert!(!text.contains(signature));

    // A refusal after verification names the subject, hashed as in the log.
    let reply = env
        .get_with_token("/v1/chat/x", &env.token("chat:read", json!({})))
        .await;
    assert_eq!(reply.status, 403);
    let (_, doc) = explain(&env, &reply.header("x-request-id").unwrap()).await;
    assert_eq!(doc["reason"], "scope_insufficient");
    let subject = doc["subject"].as_str().unwrap();
    assert!(subject.starts_with("sha256:"), "{subject}");
    assert!(!doc.to_string().contains("demo-client"), "{doc}");

    // The listing shows the newest first.
    let list = env.admin_get("/debug/requests").await.json();
    assert_eq!(list[0]["reason"], "scope_insufficient");
    assert_eq!(list[1]["request_id"], id.as_str());
}

#[tokio::test]
async fn allowed_unknown_and_malformed_ids_get_clear_answers() {
    let env = TestEnv::start(&with_explain(64)).await;
    let ok = env
        .get_with_token("/v1/chat/x", &env.token("chat:write", json!({})))
        .await;
    assert_eq!(ok.status, 200);
    let (status, doc) = explain(&env, &ok.header("x-request-id").unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(doc["error"], "not_kept");
    assert!(
        doc["message"].as_str().unwrap().contains("allowed"),
        "{doc}"
    );
    let (status, doc) = explain(&env, "no-such-request").await;
    assert_eq!(status, 404, "{doc}");
    for bad in ["a%20b", "..%2Fx", &"x".repeat(129)] {
        let (status, doc) = explain(&env, bad).await;
        assert_eq!(status, 400, "{bad}: {doc}");
        assert_eq!(doc["error"], "malformed_request_id");
    }
}

#[tokio::test]
async fn a_flood_of_refusals_keeps_the_newest_within_the_bound() {
    let env = TestEnv::start(&with_explain(4)).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let reply = env.get("/v1/chat/x", &[]).await;
        assert_eq!(reply.status, 401);
        ids.push(reply.header("x-request-id").unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let (status, _) = explain(&env, id).await;
        assert_eq!(status, if i >= 6 { 200 } else { 404 }, "request {i}");
    }
    // A path the client made huge is kept cut to its bound.
    let long = format!("/v1/chat/{}", "a".repeat(30_000));
    let reply = env.get(&long, &[]).await;
    assert_eq!(reply.status, 401);
    let (_, doc) = explain(&env, &reply.header("x-request-id").unwrap()).await;
    let path = doc["path"].as_str().unwrap();
    assert!(path.len() <= 256 && path.ends_with('…'), "{}", path.len());
}

#[tokio::test]
async fn capacity_zero_keeps_nothing_and_says_so() {
    let env = TestEnv::start(&with_explain(0)).await;
    let reply = env.get("/v1/chat/x", &[]).await;
    let (status, doc) = explain(&env, &reply.header("x-request-id").unwrap()).await;
    assert_eq!(status, 404);
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("admin.explain.capacity is 0"),
        "{doc}"
    );
}

#[tokio::test]
async fn a_report_only_refusal_is_kept_as_would_deny() {
    let env = TestEnv::start(&with_explain(8)).await;
    let reply = env
        .get_with_token("/shadow/x", &env.token("chat:write", json!({})))
        .await;
    assert_eq!(reply.status, 200, "report-only forwards");
    let (status, doc) = explain(&env, &reply.header("x-request-id").unwrap()).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["outcome"], "would_deny");
    assert_eq!(doc["reason"], "scope_insufficient");
    assert_eq!(step(&doc, "scopes")["outcome"], "warn");
    assert_eq!(step(&doc, "upstream")["outcome"], "pass");
}

#[tokio::test]
async fn the_admin_token_protects_explain_and_reload_but_not_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let config = |protect: bool| {
        with_explain(8).replace(
            "explain: {",
            &format!(
                "token_file: {:?}, protect_metrics: {protect}, explain: {{",
                file.display().to_string()
            ),
        )
    };
    let env = TestEnv::start(&config(false)).await;
    let refused = env.get("/v1/chat/x", &[]).await;
    let path = format!(
        "/debug/requests/{}",
        refused.header("x-request-id").unwrap()
    );
    let basic = |password: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"))
        )
    };
    let bearer = format!("Bearer {token}");
    for (headers, want) in [
        (vec![], 401),
        (
            vec![("authorization", "Bearer wrong-token-wrong-token")],
            401,
        ),
        (vec![("authorization", "Basic !!!")], 401),
        (vec![("authorization", bearer.as_str())], 200),
        (vec![("authorization", basic(token).leak() as &str)], 200),
        (vec![("authorization", basic("not-it").leak() as &str)], 401),
    ] {
        let reply = env.admin_request(Method::GET, &path, &headers).await;
        assert_eq!(reply.status, want, "{headers:?}");
        if want == 401 {
            let challenges: Vec<_> = reply
                .headers
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert!(challenges.iter().any(|c| c.starts_with("Bearer")));
            assert!(challenges.iter().any(|c| c.starts_with("Basic")));
            assert!(!String::from_utf8_lossy(&reply.body).contains(token));
        }
    }
    let reload = env.admin_request(Method::POST, "/-/reload", &[]).await;
    assert_eq!(reload.status, 401, "reload needs the token");
    assert_eq!(
        env.admin_request(Method::GET, "/debug/requests", &[])
            .await
            .status,
        401
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        let reply = env.admin_get(open).await;
        assert_ne!(
            reply.status, 401,
            "{open} stays open for probes and scrapes"
        );
    }
    drop(env);

    let env = TestEnv::start(&config(true)).await;
    assert_eq!(env.admin_get("/metrics").await.status, 401);
    let reply = env
        .admin_request(Method::GET, "/metrics", &[("authorization", &bearer)])
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(env.admin_get("/healthz").await.status, 200);
}
