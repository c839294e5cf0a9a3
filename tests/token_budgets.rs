//! Token budgets: a `rate_limits` policy with `tokens:` admits a request while
//! its key has budget left and charges the tokens the answer used (input and
//! output, as the upstream reported them) when the answer ends. The demo
//! upstream counts words: "hi" costs 1 input and 9 output tokens, 10 a call.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use http::Method;
use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv};
use serde_json::json;

fn config(budget: &str, key: &str) -> String {
    format!(
        r#"{ISSUER_AND_UPSTREAM}  ai:
    provider: openai_compatible
    targets: ["{{UPSTREAM}}"]
    stream_usage: true
rate_limits:
  response_headers: true
  policies:
    tokens_per_client: {{ tokens: {budget}, key: {key} }}
routes:
  - name: chat
    match: {{ path: /v1/chat/completions, models: ["demo-*"] }}
    upstream: ai
    auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }} }}
    rate_limits: [tokens_per_client]
"#
    )
}

async fn chat(env: &TestEnv, token: &str, model: &str, stream: bool) -> portcullis_tests::Reply {
    env.send(
        Method::POST,
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await
}

fn charged(env: &TestEnv) -> f64 {
    env.metric("portcullis_token_budget_tokens_total{policy=\"tokens_per_client\",route=\"chat\"}")
}

/// Waits until `tokens` have been charged: a charge is made when the
/// exchange closes, just after the client has the answer's last byte.
async fn charged_by_now(env: &TestEnv, tokens: f64) {
    for _ in 0..100 {
        if charged(env) >= tokens {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(charged(env), tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_admits_while_tokens_remain_and_charges_what_answers_used() {
    let env = TestEnv::start(&config("20/hour", "[client]")).await;
    let alice = env.token("chat:write", json!({"client_id": "alice"}));
    let bob = env.token("chat:write", json!({"client_id": "bob"}));

    // 20 tokens: two calls of 10 (one plain, one streamed: the gateway asks
    // for the stream's usage), then the budget is spent.
    let r = chat(&env, &alice, "demo-small", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    charged_by_now(&env, 10.0).await;
    let r = chat(&env, &alice, "demo-small", true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"usage\""),
        "usage asked for: {}",
        r.text()
    );
    charged_by_now(&env, 20.0).await;
    let r = chat(&env, &alice, "demo-small", false).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.reason(), "token_budget_exhausted");
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("token budget tokens_per_client (20 tokens per 3600s, kept per client)"),
        "{detail}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(
        env.upstream.requests(),
        2,
        "the refused call was not forwarded"
    );

    // Another client has its own budget.
    let r = chat(&env, &bob, "demo-small", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.metric("portcullis_rate_limit_decisions_total{outcome=\"limit\",policy=\"tokens_per_client\",route=\"chat\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overshoot_is_at_most_one_answer_and_is_paid_off_afterwards() {
    // 15 tokens: the first call (10) leaves 5, so the second is admitted and
    // overshoots by 5; the third waits until the debt and one token are back.
    let env = TestEnv::start(&config("15/hour", "[client]")).await;
    let token = env.token("chat:write", json!({"client_id": "carol"}));
    assert_eq!(chat(&env, &token, "demo-small", false).await.status, 200);
    charged_by_now(&env, 10.0).await;
    assert_eq!(chat(&env, &token, "demo-small", false).await.status, 200);
    charged_by_now(&env, 20.0).await;
    let r = chat(&env, &token, "demo-small", false).await;
    assert_eq!(r.reason(), "token_budget_exhausted");
    // 6 tokens short at 240 s a token (15 an hour): about 24 minutes.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1200..=1441).contains(&retry), "{retry}");
    charged_by_now(&env, 20.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_kept_per_client_and_model_spends_each_model_apart() {
    let env = TestEnv::start(&config("10/hour", "[client, model]")).await;
    let token = env.token("chat:write", json!({"client_id": "dave"}));
    assert_eq!(chat(&env, &token, "demo-small", false).await.status, 200);
    charged_by_now(&env, 10.0).await;
    let r = chat(&env, &token, "demo-small", false).await;
    assert_eq!(r.reason(), "token_budget_exhausted");
    let r = chat(&env, &token, "demo-large", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    charged_by_now(&env, 20.0).await;
    assert_eq!(
        chat(&env, &token, "demo-large", false).await.reason(),
        "token_budget_exhausted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_usage_or_refused_upstream_are_not_charged() {
    let env = TestEnv::start(&config("20/hour", "[client]")).await;
    let token = env.token("chat:write", json!({"client_id": "erin"}));
    // The upstream refuses (429) before any answer: nothing is charged, and
    // nothing counted as uncharged either.
    let r = chat(&env, &token, "demo-overloaded", false).await;
    assert_eq!(r.status, 429);
    assert_eq!(charged(&env), 0.0);
    // A stream broken before its usage: successful status, usage unknown.
    let r = chat(&env, &token, "demo-breaks-mid-stream", true).await;
    assert_eq!(r.status, 200);
    let uncharged =
        "portcullis_token_budget_uncharged_total{policy=\"tokens_per_client\",route=\"chat\"}";
    for _ in 0..100 {
        if env.metric(uncharged) >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(env.metric(uncharged), 1.0);
    assert_eq!(charged(&env), 0.0);
    // The budget is whole.
    assert_eq!(chat(&env, &token, "demo-small", false).await.status, 200);
    charged_by_now(&env, 10.0).await;
    assert_eq!(chat(&env, &token, "demo-small", false).await.status, 200);
    charged_by_now(&env, 20.0).await;
    assert_eq!(
        chat(&env, &token, "demo-small", false).await.reason(),
        "token_budget_exhausted"
    );
}
