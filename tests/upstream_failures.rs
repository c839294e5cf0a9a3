//! Upstream failures end to end: down, slow, closing mid-response, speaking
//! garbage, and passive health with retries on connect failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use http_body_util::BodyExt;
use portcullis_tests::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn dead_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn config(targets: &str) -> String {
    format!(
        r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
upstreams:
  u:
    targets: [{targets}]
    connect_timeout: 1s
    health: {{ max_failures: 1, cooldown: 60s }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u, public: true, timeout: 300ms }}
"#
    )
}

#[tokio::test]
async fn upstream_down_is_502_unreachable() {
    let env = TestEnv::start(&config(&format!("\"{}\"", dead_port().await))).await;
    let reply = env.get("/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.reason(), "upstream_unreachable");
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("cannot connect")
    );
}

#[tokio::test]
async fn slow_upstream_is_504_timeout() {
    let env = TestEnv::start(&config("\"{UPSTREAM}\"")).await;
    let reply = env.get("/slow?ms=3000", &[]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.reason(), "upstream_timeout");
}

#[tokio::test]
async fn upstream_closing_mid_response_cuts_the_client_off() {
    let env = TestEnv::start(&config("\"{UPSTREAM}\"")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(env.url("/abort").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the head was already on its way");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap();
    assert!(
        body.is_err(),
        "the client must see an incomplete body, not a clean end"
    );
}

#[tokio::test]
async fn garbage_from_upstream_is_502_protocol_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"SMTP 220 hello there\r\n\r\n").await;
        }
    });
    let env = TestEnv::start(&config(&format!("\"http://{addr}\""))).await;
    let reply = env.get("/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.reason(), "upstream_protocol_error");
}

#[tokio::test]
async fn dead_target_set_aside_and_requests_retried() {
    let env = TestEnv::start(&config(&format!(
        "\"{}\", \"{{UPSTREAM}}\"",
        dead_port().await
    )))
    .await;
    for i in 0..6 {
        let reply = env.get("/x", &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.json());
    }
    let text = env.metrics.render();
    let connect_errors: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("portcullis_upstream_errors_total") && l.contains("kind=\"connect\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(
        connect_errors, 1.0,
        "after one failure the dead target is set aside:\n{text}"
    );
}
