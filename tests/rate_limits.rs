//! Rate limits end to end (local store): a burst then 429 `rate_limited` with
//! `Retry-After` and the RateLimit header fields; limits kept per address run
//! before any token is looked at (a flood of forged tokens is refused by the
//! limit, not verified); per-client limits follow the verified client across
//! tokens; report-only policies forward and count; a reload keeps the budgets
//! of unchanged policies. Each test owns its servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_tests::{ISSUER_AND_UPSTREAM, Reply, TestEnv};
use serde_json::json;

/// Two routes: a public one and a protected one.
const ROUTES: &str = r#"
routes:
  - name: open
    match: { path_prefix: /public/ }
    upstream: llm
    public: true
    rate_limits: [per_ip]
  - name: chat
    match: { path_prefix: /v1/ }
    upstream: llm
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: [chat:write] } }
    rate_limits: [per_ip, per_client]
"#;

fn config(limits: &str) -> String {
    format!("{ISSUER_AND_UPSTREAM}{limits}{ROUTES}")
}

/// A budget far from both limits: refusals in these tests come from the
/// burst, never from refill during the test (one request a minute or slower).
const LIMITS: &str = r#"
rate_limits:
  policies:
    per_ip: { rate: 3/min, key: [ip] }
    per_client: { rate: 2/hour, key: [client] }
"#;

fn metric(env: &TestEnv, line_start: &str) -> f64 {
    env.metric(line_start)
}

#[track_caller]
fn assert_rate_limited(reply: &Reply, policy: &str, key: &str) {
    assert_eq!(reply.status, 429, "{:?}", reply.body);
    assert_eq!(reply.reason(), "rate_limited");
    let detail = reply.json()["detail"].as_str().unwrap_or("").to_owned();
    assert!(
        detail.contains(&format!("policy {policy} "))
            && detail.contains(&format!("kept per {key}")),
        "the detail names the policy and the key kind: {detail}"
    );
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert!(
        reply
            .header("ratelimit-policy")
            .unwrap()
            .starts_with(&format!("\"{policy}\";q=")),
        "{:?}",
        reply.headers
    );
    assert!(
        reply
            .header("ratelimit")
            .unwrap()
            .starts_with(&format!("\"{policy}\";r=0;t=")),
        "{:?}",
        reply.headers
    );
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after_and_ratelimit_fields() {
    let env = TestEnv::start(&config(LIMITS)).await;
    for i in 0..3 {
        let r = env.get("/public/x", &[]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert!(
            r.header("ratelimit").is_none(),
            "successes carry no fields unless response_headers is on"
        );
    }
    let r = env.get("/public/x", &[]).await;
    assert_rate_limited(&r, "per_ip", "ip");
    // Kept for `portcullis explain`, failing at the ip_rate_limit step.
    let id = r.header("x-request-id").unwrap();
    let kept = env.gateway.explain().find(&id).expect("kept for explain");
    assert_eq!(
        kept.refusal()
            .map(|(step, reason)| (step.name(), reason.as_str())),
        Some(("ip_rate_limit", "rate_limited"))
    );
    assert_eq!(
        env.upstream.requests(),
        3,
        "the refused request was not forwarded"
    );
    assert_eq!(
        metric(
            &env,
            "portcullis_rate_limit_decisions_total{outcome=\"limit\",policy=\"per_ip\",route=\"open\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &env,
            "portcullis_rate_limit_decisions_total{outcome=\"allow\",policy=\"per_ip\",route=\"open\"}"
        ),
        3.0
    );
    env.gateway.update_scrape_gauges();
    assert_eq!(
        metric(&env, "portcullis_rate_limit_keys{policy=\"per_ip\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_limit_per_address_refuses_forged_tokens_before_verifying_them() {
    let env = TestEnv::start(&config(LIMITS)).await;
    // Correctly shaped tokens with a signature that does not verify: each one
    // the gateway checks costs a signature verification.
    let forged = |i: u32| {
        let good = env.token("chat:write", json!({"jti": format!("f{i}")}));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let mut reasons = Vec::new();
    for i in 0..10 {
        let r = env.get_with_token("/v1/chat/completions", &forged(i)).await;
        reasons.push(r.reason());
    }
    assert!(
        reasons[..3].iter().all(|r| r != "rate_limited"),
        "{reasons:?}"
    );
    assert!(
        reasons[3..].iter().all(|r| r == "rate_limited"),
        "past the address's budget, no token is verified: {reasons:?}"
    );
    let verified = metric(
        &env,
        "portcullis_auth_decisions_total{outcome=\"deny\",reason=\"signature_invalid\",route=\"chat\"}",
    ) + metric(
        &env,
        "portcullis_auth_decisions_total{outcome=\"deny\",reason=\"token_malformed\",route=\"chat\"}",
    );
    assert_eq!(verified, 3.0, "only the first three tokens were looked at");
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn a_limit_per_client_follows_the_client_across_tokens() {
    let limits = r#"
rate_limits:
  policies:
    per_ip: { rate: 1000/min, key: [ip] }
    per_client: { rate: 2/hour, key: [client] }
"#;
    let env = TestEnv::start(&config(limits)).await;
    let token = |client: &str| env.token("chat:write", json!({"client_id": client}));
    // Client a: two fresh tokens share one budget of two.
    for _ in 0..2 {
        let r = env
            .get_with_token("/v1/chat/completions", &token("a"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = env
        .get_with_token("/v1/chat/completions", &token("a"))
        .await;
    assert_rate_limited(&r, "per_client", "client");
    // Client b has its own.
    let r = env
        .get_with_token("/v1/chat/completions", &token("b"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn report_only_policies_forward_and_count() {
    let limits = r#"
rate_limits:
  response_headers: true
  policies:
    per_ip: { rate: 1/hour, key: [ip], mode: report }
    per_client: { rate: 100/min, key: [client] }
"#;
    let env = TestEnv::start(&config(limits)).await;
    for _ in 0..3 {
        let r = env.get("/public/x", &[]).await;
        assert_eq!(r.status, 200);
        // response_headers: successes carry the fields too.
        assert!(
            r.header("ratelimit-policy")
                .is_some_and(|v| v.starts_with("\"per_ip\";q=1;w=3600")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(env.upstream.requests(), 3);
    assert_eq!(
        metric(
            &env,
            "portcullis_rate_limit_decisions_total{outcome=\"would_limit\",policy=\"per_ip\",route=\"open\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn a_reload_keeps_the_budgets_of_unchanged_policies() {
    let env = TestEnv::start(&config(LIMITS)).await;
    for _ in 0..3 {
        assert_eq!(env.get("/public/x", &[]).await.status, 200);
    }
    assert_eq!(env.get("/public/x", &[]).await.status, 429);
    // per_client changes; per_ip does not: its budget stays spent.
    let changed = LIMITS.replace("per_client: { rate: 2/hour", "per_client: { rate: 5/hour");
    env.apply_yaml(&config(&changed)).unwrap();
    assert_eq!(env.get("/public/x", &[]).await.status, 429);
    // A changed per_ip rate starts it afresh.
    let changed = LIMITS.replace("per_ip: { rate: 3/min", "per_ip: { rate: 4/min");
    env.apply_yaml(&config(&changed)).unwrap();
    assert_eq!(env.get("/public/x", &[]).await.status, 200);
}
