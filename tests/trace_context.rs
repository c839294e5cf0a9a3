//! W3C trace context (#16): with `tracing.enabled`, a client's valid
//! `traceparent` is continued (the upstream sees the same trace with the
//! gateway's span as its parent), a malformed or unaccepted one starts a new
//! trace, and the trace id is kept with a refused request's explanation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_tests::{BASE_CONFIG, TestEnv};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn config(tracing: &str) -> String {
    BASE_CONFIG.replace(
        "logging: { access_log: false }",
        &format!("logging: {{ access_log: false }}\ntracing: {tracing}"),
    )
}

fn seen(reply: &portcullis_tests::Reply, name: &str) -> Vec<String> {
    reply.json()["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn parts(traceparent: &str) -> Vec<String> {
    traceparent.split('-').map(str::to_owned).collect()
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_the_gateway_as_parent() {
    let env = TestEnv::start(&config("{ enabled: true }")).await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let reply = env
        .get(
            "/public/echo",
            &[("traceparent", &sent), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let got = seen(&reply, "traceparent");
    assert_eq!(got.len(), 1, "{got:?}");
    let p = parts(&got[0]);
    assert_eq!(
        (p[0].as_str(), p[1].as_str(), p[3].as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(p[2], PARENT, "the upstream's parent is the gateway's span");
    assert_eq!(p[2].len(), 16);
    assert_eq!(seen(&reply, "tracestate"), vec!["congo=t61rcWkgMzE"]);

    // A refused request keeps its trace id with its explanation.
    let refused = env.get("/v1/chat/x", &[("traceparent", &sent)]).await;
    assert_eq!(refused.status, 401);
    let id = refused.header("x-request-id").unwrap();
    let doc: Value = env.admin_get(&format!("/debug/requests/{id}")).await.json();
    assert_eq!(doc["trace_id"], TRACE, "{doc}");
}

#[tokio::test]
async fn a_malformed_or_absent_traceparent_starts_a_new_trace() {
    let env = TestEnv::start(&config("{ enabled: true }")).await;
    for bad in [
        format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        format!("00-{}-{PARENT}-01", "0".repeat(32)),
        "garbage".to_owned(),
    ] {
        let reply = env
            .get(
                "/public/echo",
                &[("traceparent", &bad), ("tracestate", "a=b")],
            )
            .await;
        assert_eq!(
            reply.status, 200,
            "a bad traceparent never fails the request"
        );
        let got = seen(&reply, "traceparent");
        assert_eq!(got.len(), 1);
        let p = parts(&got[0]);
        assert_eq!(p.len(), 4, "{got:?}");
        assert_ne!(p[1].to_lowercase(), TRACE, "{bad}: a new trace");
        assert_ne!(p[1], "0".repeat(32));
        assert!(
            seen(&reply, "tracestate").is_empty(),
            "no tracestate without its trace"
        );
    }
    let reply = env.get("/public/echo", &[]).await;
    let p = parts(&seen(&reply, "traceparent")[0]);
    assert_eq!((p[0].as_str(), p[1].len(), p[2].len()), ("00", 32, 16));
}

#[tokio::test]
async fn only_trusted_proxies_continue_a_trace_when_so_configured() {
    // 127.0.0.1 (this test's client) is not a trusted proxy here.
    let env = TestEnv::start(&config(
        "{ enabled: true, accept_traceparent: trusted_proxies }",
    ))
    .await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let reply = env.get("/public/echo", &[("traceparent", &sent)]).await;
    let p = parts(&seen(&reply, "traceparent")[0]);
    assert_ne!(p[1], TRACE);
}

#[tokio::test]
async fn with_tracing_off_trace_headers_pass_through_untouched() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let reply = env.get("/public/echo", &[("traceparent", &sent)]).await;
    assert_eq!(seen(&reply, "traceparent"), vec![sent]);
}
