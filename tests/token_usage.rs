//! Token usage accounting: the input and output tokens an AI upstream counted,
//! read from its JSON answers and its event streams as they pass (nothing
//! held back), exported under the OpenTelemetry GenAI metric names with the
//! model label bounded by the upstream's `models` list.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use http::Method;
use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv};

fn config() -> String {
    format!(
        r#"{ISSUER_AND_UPSTREAM}  ai:
    provider: openai_compatible
    targets: ["{{UPSTREAM}}"]
    models: [demo-small]
routes:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    upstream: ai
    auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }} }}
  - name: plain
    match: {{ path_prefix: /plain/ }}
    upstream: llm
    rewrite: {{ strip_prefix: /plain }}
    auth: {{ issuers: [dev], audiences: [portcullis-demo] }}
"#
    )
}

/// The count and sum of `gen_ai_client_token_usage` for one series.
fn tokens(env: &TestEnv, kind: &str, model: &str) -> (f64, f64) {
    let labels = format!(
        "{{gen_ai_token_type=\"{kind}\",provider=\"openai_compatible\",request_model=\"unknown\",response_model=\"{model}\",route=\"chat\"}}"
    );
    (
        env.metric(&format!("gen_ai_client_token_usage_count{labels}")),
        env.metric(&format!("gen_ai_client_token_usage_sum{labels}")),
    )
}

async fn chat(env: &TestEnv, path: &str, token: &str, body: serde_json::Value) -> String {
    let r = env
        .send(
            Method::POST,
            path,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_read_from_answers_and_streams_without_changing_them() {
    let env = TestEnv::start(&config()).await;
    let token = env.token("chat:write", serde_json::json!({}));
    let prompt = serde_json::json!([{"role": "user", "content": "three words here"}]);

    // A JSON answer: 3 prompt words, 11 reply words (the demo counts words).
    let answer = chat(
        &env,
        "/v1/chat/completions",
        &token,
        serde_json::json!({"model": "demo-small", "messages": prompt}),
    )
    .await;
    assert!(
        answer.contains("\"completion_tokens\":11"),
        "unchanged: {answer}"
    );
    assert_eq!(tokens(&env, "input", "demo-small"), (1.0, 3.0));
    assert_eq!(tokens(&env, "output", "demo-small"), (1.0, 11.0));

    // A stream with stream_options.include_usage: the last chunk's usage.
    let streamed = chat(
        &env,
        "/v1/chat/completions",
        &token,
        serde_json::json!({"model": "demo-small", "messages": prompt, "stream": true,
                           "stream_options": {"include_usage": true}}),
    )
    .await;
    assert!(
        streamed.ends_with("data: [DONE]\n\n"),
        "unchanged: {streamed}"
    );
    assert_eq!(tokens(&env, "input", "demo-small"), (2.0, 6.0));
    assert_eq!(tokens(&env, "output", "demo-small"), (2.0, 22.0));
    let ttft = "gen_ai_server_time_to_first_token_seconds_count{provider=\"openai_compatible\",request_model=\"unknown\",response_model=\"demo-small\",route=\"chat\"}";
    assert_eq!(env.metric(ttft), 1.0, "time to first token of the stream");
    let per_token = "gen_ai_server_time_per_output_token_seconds_count{provider=\"openai_compatible\",request_model=\"unknown\",response_model=\"demo-small\",route=\"chat\"}";
    assert_eq!(env.metric(per_token), 1.0);

    // A model not listed counts as `other`: the label set stays bounded.
    chat(
        &env,
        "/v1/chat/completions",
        &token,
        serde_json::json!({"model": "some-new-model-2027", "messages": prompt}),
    )
    .await;
    assert_eq!(tokens(&env, "output", "other"), (1.0, 11.0));
    assert!(!env.metrics.render().contains("some-new-model-2027"));

    // A stream without usage (not asked for): the duration, no token counts.
    chat(
        &env,
        "/v1/chat/completions",
        &token,
        serde_json::json!({"model": "demo-small", "messages": prompt, "stream": true}),
    )
    .await;
    assert_eq!(tokens(&env, "output", "demo-small"), (2.0, 22.0));
    let duration = "gen_ai_server_request_duration_seconds_count{provider=\"openai_compatible\",request_model=\"unknown\",response_model=\"demo-small\",route=\"chat\"}";
    assert_eq!(env.metric(duration), 3.0);

    // An upstream without a provider is not read at all.
    chat(
        &env,
        "/plain/v1/chat/completions",
        &token,
        serde_json::json!({"model": "demo-small", "messages": prompt}),
    )
    .await;
    assert_eq!(env.metric(duration), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_through_a_preset_upstream_with_its_usage_counted() {
    let template = format!(
        r#"{ISSUER_AND_UPSTREAM}  claude:
    provider: anthropic
    targets: ["{{UPSTREAM}}"]
    credential: {{ api_key: sk-ant-demo }}
    models: [claude-demo]
routes:
  - name: claude
    match: {{ path_prefix: /anthropic/ }}
    upstream: claude
    rewrite: {{ strip_prefix: /anthropic }}
    auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }} }}
"#
    );
    let env = TestEnv::start(&template).await;
    let token = env.token("chat:write", serde_json::json!({}));
    let base = env.url("/anthropic");
    let stdout = portcullis_tests::run_sdk_script("anthropic_sdk.py", &[&base, &token]).await;
    let reply = "Hello from the Portcullis demo upstream! You said: hi";
    assert!(stdout.contains(&format!("PLAIN 1 9 {reply}")), "{stdout}");
    assert!(stdout.contains(&format!("STREAM 1 9 {reply}")), "{stdout}");
    assert!(stdout.contains("BROKEN "), "{stdout}");

    // The gateway read the same usage the SDK did: two answers, one stream.
    let labels = |kind: &str| {
        format!(
            "{{gen_ai_token_type=\"{kind}\",provider=\"anthropic\",request_model=\"unknown\",response_model=\"claude-demo\",route=\"claude\"}}"
        )
    };
    assert_eq!(
        env.metric(&format!(
            "gen_ai_client_token_usage_count{}",
            labels("input")
        )),
        2.0
    );
    assert_eq!(
        env.metric(&format!(
            "gen_ai_client_token_usage_sum{}",
            labels("output")
        )),
        18.0
    );
    assert_eq!(
        env.metric("gen_ai_server_time_to_first_token_seconds_count{provider=\"anthropic\",request_model=\"unknown\",response_model=\"claude-demo\",route=\"claude\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_answers_and_streams_are_counted_and_get_the_key_gemini_takes() {
    let template = format!(
        r#"{ISSUER_AND_UPSTREAM}  gemini:
    provider: gemini
    targets: ["{{UPSTREAM}}"]
    credential: {{ api_key: gm-demo-key }}
    models: [gemini-2.0-flash]
routes:
  - name: gemini
    match: {{ path_prefix: /v1beta/ }}
    upstream: gemini
    auth: {{ issuers: [dev], audiences: [portcullis-demo] }}
"#
    );
    let env = TestEnv::start(&template).await;
    let token = env.token("", serde_json::json!({}));
    let body =
        serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "two words"}]}]});
    let answer = chat(
        &env,
        "/v1beta/models/gemini-2.0-flash:generateContent",
        &token,
        body.clone(),
    )
    .await;
    assert!(answer.contains("\"candidatesTokenCount\":10"), "{answer}");
    let streamed = chat(
        &env,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        &token,
        body,
    )
    .await;
    assert_eq!(streamed.matches("data: ").count(), 10, "{streamed}");
    let labels = |kind: &str| {
        format!(
            "{{gen_ai_token_type=\"{kind}\",provider=\"gemini\",request_model=\"unknown\",response_model=\"gemini-2.0-flash\",route=\"gemini\"}}"
        )
    };
    // Two answers, 2 prompt and 10 output tokens each: a stream's cumulative
    // counts are taken from its last chunk, not added up.
    assert_eq!(
        env.metric(&format!("gen_ai_client_token_usage_sum{}", labels("input"))),
        4.0
    );
    assert_eq!(
        env.metric(&format!(
            "gen_ai_client_token_usage_sum{}",
            labels("output")
        )),
        20.0
    );
    // The key went the Gemini way (the echo shows what the upstream got).
    let echoed = env.get_with_token("/v1beta/echo", &token).await;
    assert_eq!(echoed.json()["headers"]["x-goog-api-key"][0], "gm-demo-key");
}
