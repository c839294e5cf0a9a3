//! Every exchange accounted for at its end (#16): a stream that completes, one
//! the client walks away from, one the upstream breaks off, one the shutdown
//! grace cuts, and the upstream's own refusal, each counted by how it ended,
//! with the bytes each way, through a real gateway and upstream over sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::{Duration, Instant};

use http::Method;
use portcullis_tests::{BASE_CONFIG, TestEnv};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn metric(env: &TestEnv, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = env.metrics.render();
    let samples = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples;
    samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

fn outcome(env: &TestEnv, route: &str, outcome: &str) -> f64 {
    metric(
        env,
        "portcullis_exchanges_total",
        &[("route", route), ("outcome", outcome)],
    )
}

/// Waits (bounded) until `cond` holds: an exchange is closed when its body is
/// dropped, which follows the client's own view of the end by a moment.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_complete_stream_is_counted_at_its_last_byte_with_its_bytes() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let reply = env.get("/public/sse?chunks=3&interval_ms=10", &[]).await;
    assert_eq!(reply.status, 200);
    let sent = reply.body.len() as f64;
    assert!(sent > 0.0);
    eventually("the exchange to close", || {
        outcome(&env, "open", "complete") == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &env,
            "portcullis_response_body_bytes_total",
            &[("route", "open")]
        ),
        sent
    );
    assert_eq!(
        metric(
            &env,
            "portcullis_exchange_duration_seconds",
            &[("route", "open")]
        ),
        1.0,
        "one exchange observed"
    );
    assert_eq!(outcome(&env, "open", "client_aborted"), 0.0);

    // Request body bytes are counted as forwarded.
    let reply = env
        .send(Method::POST, "/public/upload", &[], vec![7u8; 10_000])
        .await;
    assert_eq!(reply.status, 200);
    eventually("the upload to close", || {
        outcome(&env, "open", "complete") == 2.0
    })
    .await;
    assert_eq!(
        metric(
            &env,
            "portcullis_request_body_bytes_total",
            &[("route", "open")]
        ),
        10_000.0
    );

    // Responses without a body (HEAD, 204) are complete, not abandoned.
    let reply = env.send(Method::HEAD, "/public/x", &[], Vec::new()).await;
    assert_eq!(reply.status, 200);
    let reply = env.get("/public/status/204", &[]).await;
    assert_eq!(reply.status, 204);
    eventually("body-less exchanges to close", || {
        outcome(&env, "open", "complete") == 4.0
    })
    .await;
    assert_eq!(outcome(&env, "open", "client_aborted"), 0.0);
}

#[tokio::test]
async fn a_client_that_walks_away_mid_stream_is_counted_as_client_aborted() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"GET /public/sse?chunks=200&interval_ms=50 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("data:") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream started");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    eventually("the abandoned stream to be counted", || {
        outcome(&env, "open", "client_aborted") == 1.0
    })
    .await;
    assert_eq!(outcome(&env, "open", "complete"), 0.0);
    assert!(
        metric(
            &env,
            "portcullis_response_body_bytes_total",
            &[("route", "open")]
        ) > 0.0
    );
}

#[tokio::test]
async fn an_upstream_that_breaks_off_mid_body_is_counted_and_not_called_complete() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"GET /public/abort HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("partial"), "{text}");
    eventually("the broken stream to be counted", || {
        outcome(&env, "open", "upstream_aborted") == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &env,
            "portcullis_upstream_errors_total",
            &[("upstream", "llm"), ("kind", "mid_stream")]
        ),
        1.0
    );
    assert_eq!(outcome(&env, "open", "complete"), 0.0);
}

#[tokio::test]
async fn the_shutdown_grace_cutting_a_stream_is_counted_as_shutdown_cut() {
    let mut env = TestEnv::start(&BASE_CONFIG.replace(
        "logging: { access_log: false }",
        "logging: { access_log: false }\nlimits: { shutdown_grace: 1s }",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"GET /public/sse?chunks=400&interval_ms=50 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    env.gateway.begin_drain();
    env.shutdown();
    let stopped = env.stopped.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("the server stopped after its grace")
        .unwrap();
    eventually("the cut stream to be counted", || {
        outcome(&env, "open", "shutdown_cut") == 1.0
    })
    .await;
    assert_eq!(outcome(&env, "open", "client_aborted"), 0.0);
}

#[tokio::test]
async fn the_upstreams_own_refusal_is_marked_as_the_upstreams() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let reply = env.get("/public/status/401", &[]).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .is_none_or(|c| !c.contains("portcullis")),
        "the gateway did not answer this 401"
    );
    let id = reply.header("x-request-id").unwrap();
    eventually("the exchange to close", || {
        outcome(&env, "open", "complete") == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &env,
            "portcullis_upstream_refusals_total",
            &[("route", "open"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &env,
            "portcullis_auth_decisions_total",
            &[("route", "open"), ("outcome", "deny")]
        ),
        0.0,
        "not counted as a gateway refusal"
    );
    let doc = env.admin_get(&format!("/debug/requests/{id}")).await.json();
    assert_eq!(doc["outcome"], "upstream_refused", "{doc}");
    assert_eq!(doc["reason"], serde_json::Value::Null);
    let upstream = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "upstream")
        .unwrap();
    assert_eq!(upstream["outcome"], "warn");
    assert!(
        upstream["evidence"]
            .as_str()
            .unwrap()
            .contains("the upstream itself answered 401"),
        "{upstream}"
    );
}
