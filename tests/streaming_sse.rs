//! Streaming end to end: SSE events reach the client one by one while the upstream
//! is still producing, a 50 MB upload streams through without being held, and a
//! long stream drains to its end on graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_tests::TestEnv;

const CONFIG: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
limits: { shutdown_grace: 20s }
upstreams:
  llm: { targets: ["{UPSTREAM}"] }
routes:
  - { name: stream, match: { path_prefix: / }, upstream: llm, public: true, max_body: 100MiB }
"#;

async fn open_stream(env: &TestEnv, path: &str) -> hyper::body::Incoming {
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let resp = client.get(env.url(path).parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.into_body()
}

async fn next_data(body: &mut hyper::body::Incoming) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")?;
        let frame = frame.expect("stream intact");
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let env = TestEnv::start(CONFIG).await;
    let mut body = open_stream(&env, "/sse?chunks=5&interval_ms=200").await;
    // The first frame holds only the first event: the upstream has not produced the
    // others yet, so nothing was buffered until the end.
    let first = next_data(&mut body).await.unwrap();
    assert_eq!(first, "data: {\"n\":0}\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = next_data(&mut body).await {
        rest.push(chunk);
    }
    assert_eq!(
        rest.concat(),
        (1..5)
            .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
            .collect::<String>()
    );
}

#[tokio::test]
async fn chat_completion_stream_through_the_gateway() {
    let env = TestEnv::start(CONFIG).await;
    let reply = env
        .send(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn fifty_megabyte_upload_streams_through() {
    let env = TestEnv::start(CONFIG).await;
    const TOTAL: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(env.url("/upload"))
        .body(StreamBody::new(Box::pin(stream)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["received_bytes"], TOTAL as u64);
    assert!(
        v["largest_chunk"].as_u64().unwrap() <= 1 << 20,
        "frames were passed on, not gathered: {v}"
    );
}

#[tokio::test]
async fn graceful_shutdown_drains_a_long_stream() {
    let mut env = TestEnv::start(CONFIG).await;
    let mut body = open_stream(&env, "/sse?chunks=6&interval_ms=150").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "data: {\"n\":0}\n\n");
    env.shutdown();
    let mut got = 1;
    while let Some(chunk) = next_data(&mut body).await {
        got += chunk.matches("data:").count();
    }
    assert_eq!(
        got, 6,
        "the in-flight stream completed after shutdown began"
    );
    let stopped = env.stopped.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("server loop ended")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(env.addr).await.is_err(),
        "no longer accepting"
    );
}
