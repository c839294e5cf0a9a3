//! Streaming hygiene for AI upstreams: server-sent events are never buffered
//! (`X-Accel-Buffering: no`), keep-alive comments fill long pauses only between
//! events, and an upstream that breaks off mid-stream ends the client's stream
//! so that the official OpenAI Python SDK raises (never a truncated answer
//! presented as complete), logged with reason `upstream_stream_aborted`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use http_body_util::BodyExt;
use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv};

fn config(keepalive: &str) -> String {
    format!(
        r#"{ISSUER_AND_UPSTREAM}routes:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    upstream: llm
    sse_keepalive: {keepalive}
    auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_comments_fill_long_pauses_only_between_events() {
    let env = TestEnv::start(&config("300ms")).await;
    let token = env.token("chat:write", serde_json::json!({}));
    // Three events 1.2 s apart: each pause is four keep-alive periods long.
    let req = http::Request::get(env.url("/v1/x/sse?chunks=3&interval_ms=1200"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-accel-buffering").unwrap(),
        "no",
        "an event stream tells proxies in front not to buffer it"
    );
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
    let events: Vec<&&str> = blocks.iter().filter(|b| b.starts_with("data: ")).collect();
    let keepalives = blocks.iter().filter(|b| **b == ": keep-alive").count();
    assert_eq!(events.len(), 3, "{text:?}");
    assert!(keepalives >= 2, "pauses were filled: {text:?}");
    assert_eq!(
        events.len() + keepalives,
        blocks.len(),
        "every block is a whole event or a whole comment, never a comment inside an event: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keepalive_the_stream_is_passed_byte_for_byte() {
    let env = TestEnv::start(&config("0s")).await;
    let token = env.token("chat:write", serde_json::json!({}));
    let r = env
        .get_with_token("/v1/x/sse?chunks=2&interval_ms=400", &token)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "data: {\"n\":0}\n\ndata: {\"n\":1}\n\n");
    assert_eq!(r.header("x-accel-buffering").as_deref(), Some("no"));
    // Other content types are left alone.
    let r = env.get_with_token("/v1/x/echo", &token).await;
    assert!(r.header("x-accel-buffering").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_streams_through_and_raises_on_a_broken_stream() {
    let env = TestEnv::start(&config("0s")).await;
    let token = env.token("chat:write", serde_json::json!({}));
    let base = env.url("/v1");
    let stdout = portcullis_tests::run_sdk_script("ai_sdks.py", &[&base, &token]).await;
    assert!(
        stdout.contains("PLAIN Hello from the Portcullis demo upstream! You said: hi"),
        "{stdout}"
    );
    assert!(
        stdout.contains("STREAM 9 Hello from the Portcullis demo upstream! You said: hi"),
        "{stdout}"
    );
    assert!(stdout.contains("BROKEN "), "{stdout}");

    // The broken stream is on record with its own reason.
    assert_eq!(
        env.metric("portcullis_exchanges_total{outcome=\"upstream_aborted\",route=\"chat\"}"),
        1.0
    );
    let recent = env.admin_get("/debug/requests?n=5").await;
    assert!(
        recent.text().contains("upstream_stream_aborted"),
        "{}",
        recent.text()
    );
}
