//! Size limits and slow clients: oversized heads (431), bodies over the route limit
//! (413, declared or streamed), and the header read timeout against slowloris.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use portcullis_tests::{TestEnv, raw_exchange};

const CONFIG: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
limits: { max_header_bytes: 8KiB, header_read_timeout: 500ms }
upstreams:
  llm: { targets: ["{UPSTREAM}"] }
routes:
  - { name: small, match: { path_prefix: / }, upstream: llm, public: true, max_body: 1MiB }
"#;

#[tokio::test]
async fn oversized_headers_are_431() {
    let env = TestEnv::start(CONFIG).await;
    let big = "v".repeat(10 * 1024);
    let reply = env.get("/x", &[("x-big", &big)]).await;
    assert_eq!(reply.status, 431);
    assert_eq!(reply.reason(), "headers_too_large");
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_and_not_forwarded() {
    let env = TestEnv::start(CONFIG).await;
    let reply = env
        .send(http::Method::POST, "/upload", &[], vec![0u8; 2 << 20])
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.reason(), "body_too_large");
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    let env = TestEnv::start(CONFIG).await;
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..40)
        .map(|_| Ok(Frame::data(Bytes::from(vec![1u8; 64 * 1024]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(env.url("/upload")).body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .unwrap();
    // The gateway may answer before the client finished sending; either way the
    // client learns 413 or sees the connection refused mid-upload, never a 200.
    if let Ok(resp) = resp {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("body_too_large"));
    }
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let env = TestEnv::start(CONFIG).await;
    // Half a request head, then silence: the server must close within its timeout.
    let reply = raw_exchange(
        env.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_secs(15),
    )
    .await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert_eq!(env.upstream.requests(), 0);
}
