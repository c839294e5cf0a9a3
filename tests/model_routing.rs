//! Model routing and fallback: routes chosen by the JSON body's model (read
//! strictly, never passed on to a catch-all when no route of the path serves
//! it), models granted by the token, model aliases rewritten per upstream,
//! usage asked for on streams, and fallback across upstreams before the first
//! byte of an answer (connect failure, 429, 5xx), never after it. Two real
//! demo upstreams, the real gateway, and the official OpenAI Python SDK.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use http::Method;
use portcullis_tests::{DemoUpstream, ISSUER_AND_UPSTREAM, TestEnv, dev_servers, render};
use serde_json::json;

const AUTH: &str =
    "{ issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: [chat:write] } }";

fn config(second: &str, closed_port: u16) -> String {
    format!(
        r#"{ISSUER_AND_UPSTREAM}  primary:
    provider: openai_compatible
    targets: ["{{UPSTREAM}}"]
    models: [demo-small]
    model_map: {{ fast: demo-small }}
    stream_usage: true
  second:
    provider: openai_compatible
    targets: ["{second}"]
    models: [demo-large]
  down:
    provider: openai_compatible
    targets: ["http://127.0.0.1:{closed_port}"]
    connect_timeout: 1s
    model_map: {{ smart: demo-small }}
  busy:
    provider: openai_compatible
    targets: ["{second}"]
    model_map: {{ smart: demo-overloaded }}
  spare:
    provider: openai_compatible
    targets: ["{{UPSTREAM}}"]
    model_map: {{ smart: demo-spare }}
routes:
  - name: chat-small
    match: {{ path: /v1/chat/completions, models: ["demo-small*", fast] }}
    upstream: primary
    max_body: 4KiB
    auth: {AUTH}
    cors: {{ allowed_origins: ["https://chat.example.com"] }}
  - name: chat-large
    match: {{ path: /v1/chat/completions, models: [demo-large] }}
    upstream: second
    auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }}, models: {{ scope_prefix: "model:" }} }}
  - name: chat-smart
    match: {{ path: /v1/chat/completions, models: [smart, demo-breaks-mid-stream] }}
    upstream: down
    fallback: [busy, spare]
    auth: {AUTH}
  - name: chat-doomed
    match: {{ path: /v1/chat/completions, models: [demo-unavailable] }}
    upstream: down
    fallback: [second]
    auth: {AUTH}
  - name: catch-all
    match: {{ path_prefix: / }}
    upstream: llm
    public: true
"#
    )
}

struct Setup {
    env: TestEnv,
    second: DemoUpstream,
}

async fn setup() -> Setup {
    let second = DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (auth, upstream) = dev_servers().await;
    let yaml = render(&config(&second.url(), closed_port), &auth, &upstream);
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    Setup { env, second }
}

async fn post(env: &TestEnv, token: &str, body: &str) -> portcullis_tests::Reply {
    env.send(
        Method::POST,
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    )
    .await
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_model_chooses_the_route_and_the_upstream_gets_its_own_name() {
    let Setup { env, second } = setup().await;
    let token = env.token("chat:write", json!({}));

    // demo-small* -> primary (the first demo upstream).
    let r = post(&env, &token, &chat("demo-small-2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "demo-small-2");
    assert_eq!((env.upstream.requests(), second.requests()), (1, 0));

    // The alias `fast` reaches the upstream as demo-small (model_map).
    let r = post(&env, &token, &chat("fast")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "demo-small");
    assert_eq!(
        env.metric(
            "gen_ai_client_token_usage_count{gen_ai_token_type=\"output\",provider=\"openai_compatible\",request_model=\"fast\",response_model=\"demo-small\",route=\"chat-small\"}"
        ),
        1.0
    );

    // demo-large -> the second upstream, with a token granted the model.
    let granted = env.token("chat:write model:demo-large", json!({}));
    let r = post(&env, &granted, &chat("demo-large")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((env.upstream.requests(), second.requests()), (2, 1));

    // The same model without the grant: refused, naming model and grant.
    let other = env.token("chat:write model:demo-small", json!({}));
    let r = post(&env, &other, &chat("demo-large")).await;
    assert_eq!(r.refusal().0, 403, "{}", r.text());
    assert_eq!(r.reason(), "model_not_allowed");
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("\"demo-large\"") && detail.contains("model:demo-small"),
        "{detail}"
    );
    assert_eq!((env.upstream.requests(), second.requests()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_route_serves_is_refused_never_passed_to_the_catch_all() {
    let Setup { env, second } = setup().await;
    let token = env.token("chat:write", json!({}));
    for model in [
        "gpt-4o",
        "fast ",
        " fast",
        "DEMO-SMALL",
        "fast\u{200b}",
        "*",
    ] {
        let r = post(&env, &token, &chat(model)).await;
        assert_eq!(r.status, 403, "{model:?}: {}", r.text());
        assert_eq!(r.reason(), "model_not_allowed", "{model:?}");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("demo-small*, fast"), "{detail}");
    }
    // Bodies whose model cannot be read the one way the upstream would read it.
    for body in [
        "not json".to_owned(),
        r#"["demo-small"]"#.to_owned(),
        r#"{"model":"gpt-4o","model":"demo-small"}"#.to_owned(),
        r#"{"model":"gpt-4o","mod\u0065l":"demo-small"}"#.to_owned(),
        r#"{"model":7}"#.to_owned(),
        r#"{"messages":[]}"#.to_owned(),
        r#"{"model":"demo-small"} trailing"#.to_owned(),
        String::new(),
    ] {
        let r = post(&env, &token, &body).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
        assert_eq!(r.reason(), "request_malformed", "{body:?}");
    }
    // The largest route's limit bounds the read; the chosen route's its body.
    let long =
        json!({"model": "demo-small", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = post(&env, &token, &long.to_string()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.reason(), "body_too_large");
    // Nothing reached either upstream, nor the catch-all's.
    assert_eq!((env.upstream.requests(), second.requests()), (0, 0));
    // Other methods on the path go their usual way (no model read).
    let r = env.get("/v1/chat/completions", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.requests(), 1);
    // A browser's CORS preflight has no body to route by: the group's first
    // route answers it, and nothing is read or forwarded.
    let r = env
        .send(
            Method::OPTIONS,
            "/v1/chat/completions",
            &[
                ("origin", "https://chat.example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            String::new(),
        )
        .await;
    assert!(r.status.is_success(), "{}: {}", r.status, r.text());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://chat.example.com")
    );
    assert_eq!(env.upstream.requests(), 1);
    // And the token is checked before a route that is not chosen by model
    // reads anything: a missing token on a model route is refused as such.
    let r = env
        .send(Method::POST, "/v1/chat/completions", &[], chat("fast"))
        .await;
    assert_eq!(r.reason(), "token_missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_tries_the_next_upstream_before_the_first_byte_only() {
    let Setup { env, second } = setup().await;
    let token = env.token("chat:write", json!({}));

    // down (connect refused) -> busy (429) -> spare (200, as demo-spare).
    let r = post(&env, &token, &chat("smart")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "demo-spare");
    let attempts = |upstream: &str, outcome: &str| {
        env.metric(&format!(
            "portcullis_upstream_attempts_total{{outcome=\"{outcome}\",route=\"chat-smart\",upstream=\"{upstream}\"}}"
        ))
    };
    assert_eq!(attempts("down", "unreachable"), 1.0);
    assert_eq!(attempts("busy", "429"), 1.0);
    assert_eq!(attempts("spare", "200"), 1.0);
    assert_eq!((env.upstream.requests(), second.requests()), (1, 1));

    // The last upstream's answer, whatever it is, is the client's.
    let r = env
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {token}"))],
            chat("demo-unavailable"),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("demo-unavailable is unavailable"),
        "{}",
        r.text()
    );
    assert_eq!(
        env.metric("portcullis_upstream_attempts_total{outcome=\"503\",route=\"chat-doomed\",upstream=\"second\"}"),
        1.0
    );

    // A stream that breaks after its first bytes is not sent anywhere else.
    let before = (env.upstream.requests(), second.requests());
    let body = json!({"model": "demo-breaks-mid-stream", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = env
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {token}"))],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (env.upstream.requests(), second.requests()),
        (before.0, before.1 + 1),
        "the spare upstream must not be asked after the first byte"
    );
    assert_eq!(
        env.metric("portcullis_exchanges_total{outcome=\"upstream_aborted\",route=\"chat-smart\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_uses_aliases_streams_with_usage_and_is_refused_clearly() {
    let Setup {
        env,
        second: _second,
    } = setup().await;
    let token = env.token("chat:write", json!({}));
    let base = env.url("/v1");
    let stdout = portcullis_tests::run_sdk_script("model_routing.py", &[&base, &token]).await;
    assert!(stdout.contains("ALIAS demo-small\n"), "{stdout}");
    // The gateway asked for the stream's usage (stream_usage): the SDK got it.
    assert!(stdout.contains("STREAM demo-small 9\n"), "{stdout}");
    assert!(
        stdout.contains("REFUSED 403 PermissionDeniedError"),
        "{stdout}"
    );
    assert!(stdout.contains("FALLBACK demo-spare"), "{stdout}");
    // The streamed usage was counted under the alias.
    assert_eq!(
        env.metric(
            "gen_ai_server_time_to_first_token_seconds_count{provider=\"openai_compatible\",request_model=\"fast\",response_model=\"demo-small\",route=\"chat-small\"}"
        ),
        1.0
    );
}
