//! Metrics end to end: real traffic of every outcome through a gateway, `/metrics`
//! scraped over HTTP and parsed with a Prometheus exposition parser; exact counter
//! moves, histogram counts, bounded labels, and `/readyz` following the keys.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use portcullis_tests::{AuthServer, BASE_CONFIG, DemoUpstream, JwksFault, TestEnv, render};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

async fn scrape(env: &TestEnv) -> Vec<Sample> {
    let reply = env.admin_get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines)
        .expect("valid exposition format")
        .samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
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

#[tokio::test]
async fn counters_move_exactly_per_reason() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let good = env.token("chat:write", json!({}));
    let weak = env.token("chat:read", json!({}));
    let expired = env.token("chat:write", json!({"exp": 1000}));
    for _ in 0..3 {
        assert_eq!(env.get_with_token("/v1/chat/x", &good).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(env.get("/v1/chat/x", &[]).await.status, 401);
    }
    assert_eq!(env.get_with_token("/v1/chat/x", &weak).await.status, 403);
    assert_eq!(env.get_with_token("/v1/chat/x", &expired).await.status, 401);
    assert_eq!(env.get("/public/x", &[]).await.status, 200);
    assert_eq!(env.get("/nowhere", &[]).await.status, 404);

    let s = scrape(&env).await;
    let decisions = "portcullis_auth_decisions_total";
    assert_eq!(
        value(
            &s,
            decisions,
            &[("route", "chat"), ("outcome", "allow"), ("reason", "none")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("route", "chat"),
                ("outcome", "deny"),
                ("reason", "token_missing")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("route", "chat"),
                ("outcome", "deny"),
                ("reason", "scope_insufficient")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("route", "chat"),
                ("outcome", "deny"),
                ("reason", "token_expired")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("route", "open"),
                ("outcome", "allow"),
                ("reason", "public")
            ]
        ),
        1.0
    );
    let requests = "portcullis_requests_total";
    assert_eq!(
        value(
            &s,
            requests,
            &[
                ("route", "chat"),
                ("status_class", "2xx"),
                ("method", "GET")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(&s, requests, &[("route", "chat"), ("status_class", "4xx")]),
        4.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[("route", "unmatched"), ("status_class", "4xx")]
        ),
        1.0
    );
    // Histograms counted every request of the route.
    assert_eq!(
        value(
            &s,
            "portcullis_request_duration_seconds_count",
            &[("route", "chat")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &s,
            "portcullis_upstream_response_header_seconds_count",
            &[("upstream", "llm")]
        ),
        4.0
    );
    // The good token was verified once and then served from the cache.
    assert_eq!(
        value(&s, "portcullis_token_cache_total", &[("result", "hit")]),
        2.0
    );
    // Cached: the good token and the one lacking the scope (its signature and
    // time are fine; scopes are a route rule, checked on every request). The
    // expired one is not.
    assert_eq!(value(&s, "portcullis_token_cache_entries", &[]), 2.0);
    assert_eq!(
        value(&s, "portcullis_jwks_fetches_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(value(&s, "portcullis_jwks_keys", &[]), 1.0);
    assert_eq!(
        value(&s, "portcullis_jwks_status", &[("status", "fresh")]),
        1.0
    );
    assert_eq!(
        value(&s, "portcullis_token_clock_offset_seconds_count", &[]),
        2.0,
        "two tokens were verified and accepted"
    );
    assert_eq!(value(&s, "portcullis_build_info", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "portcullis_config_reloads_total",
            &[("outcome", "success")]
        ),
        1.0
    );
}

#[tokio::test]
async fn label_sets_stay_bounded_under_random_paths() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let good = env.token("chat:write", json!({}));
    for i in 0..1000u32 {
        let path = format!("/random/{i:x}/{}", i.wrapping_mul(2_654_435_761));
        let reply = if i % 2 == 0 {
            env.get(&path, &[]).await
        } else {
            env.get_with_token(&format!("/v1/chat/{i}"), &good).await
        };
        assert!(reply.status == 404 || reply.status == 200);
    }
    let s = scrape(&env).await;
    let mut label_sets: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for sample in &s {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        label_sets
            .entry(sample.metric.clone())
            .or_default()
            .insert(labels.join(","));
        for (_, v) in sample.labels.iter() {
            assert!(!v.contains("/random/"), "a raw path became a label: {v}");
            assert!(!v.contains(&good[..20]), "a token became a label");
        }
    }
    let total: usize = label_sets.values().map(HashSet::len).sum();
    assert!(
        total < 200,
        "label sets must stay bounded, got {total}: {label_sets:?}"
    );
    assert_eq!(
        value(&s, "portcullis_requests_total", &[("route", "unmatched")]),
        500.0
    );
}

#[tokio::test]
async fn readyz_follows_the_authorization_server() {
    let auth = AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    auth.set_fault(JwksFault::Status(503));
    let upstream = DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A required issuer gates readiness until it first has keys.
    let yaml = render(
        &BASE_CONFIG.replace(
            "    jwks: { min_refetch_interval: 0s, retries: 0, timeout: 2s }",
            "    jwks: { min_refetch_interval: 0s, retries: 0, timeout: 2s }\n    required_for_readiness: true",
        ),
        &auth,
        &upstream,
    );
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    assert_eq!(env.admin_get("/healthz").await.status, 200);
    // Never answered yet: not ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = env.admin_get("/readyz").await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        if String::from_utf8_lossy(&r.body).contains("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "the first fetch never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = scrape(&env).await;
    assert!(
        value(
            &s,
            "portcullis_jwks_fetches_total",
            &[("outcome", "http_error")]
        ) >= 1.0
    );
    assert_eq!(
        value(&s, "portcullis_jwks_status", &[("status", "failed")]),
        1.0
    );
    // The authorization server comes back: the background refresher picks it up.
    env.auth.set_fault(JwksFault::None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = env.admin_get("/readyz").await;
        if r.status == 200 {
            assert!(String::from_utf8_lossy(&r.body).contains("fresh"));
            break;
        }
        assert!(Instant::now() < deadline, "readyz never flipped back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_disabled_token_cache_counts_nothing() {
    let config = BASE_CONFIG.replace(
        "logging: { access_log: false }",
        "logging: { access_log: false }\ntoken_cache: { enabled: false }",
    );
    let env = TestEnv::start(&config).await;
    let good = env.token("chat:write", json!({}));
    for _ in 0..3 {
        assert_eq!(env.get_with_token("/v1/chat/x", &good).await.status, 200);
    }
    let s = scrape(&env).await;
    assert_eq!(
        value(&s, "portcullis_token_cache_total", &[]),
        0.0,
        "no lookups, so no hits or misses"
    );
    assert_eq!(
        value(
            &s,
            "portcullis_auth_decisions_total",
            &[("outcome", "allow")]
        ),
        3.0
    );
}

/// One partner issuer whose keys cannot be fetched, added by a valid live reload,
/// costs its own routes (503 idp_unavailable) and shows in `/readyz`'s body, but
/// never takes the serving replica out of its Service. A refused reload shows as
/// `portcullis_config_last_reload_successful 0` and in `/readyz`'s body with its
/// position, and the failure counter exists at 0 from the start.
#[tokio::test]
async fn a_reload_with_an_unreachable_issuer_keeps_the_replica_ready() {
    let (auth, upstream) = portcullis_tests::dev_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let base = render(BASE_CONFIG, &auth, &upstream);
    std::fs::write(&path, &base).unwrap();
    let (env, reloader) = TestEnv::start_file(auth, upstream, &path).await;

    let s = scrape(&env).await;
    assert_eq!(
        value(
            &s,
            "portcullis_config_reloads_total",
            &[("outcome", "failure")]
        ),
        0.0
    );
    assert_eq!(
        value(&s, "portcullis_config_last_reload_successful", &[]),
        1.0
    );
    let good = env.token("chat:write", json!({}));
    assert_eq!(env.get_with_token("/v1/chat/x", &good).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.admin_get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A port nothing listens on: the partner's keys can never be fetched.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let with_partner = base
        .replace(
            "upstreams:",
            &format!(
                "  partner:\n    issuer: \"http://{dead}/\"\n    jwks_uri: \"http://{dead}/jwks\"\n    jwks: {{ min_refetch_interval: 0s, retries: 0, timeout: 1s, allow_http: true }}\nupstreams:"
            ),
        )
        .replace(
            "routes:",
            "routes:\n  - name: partner\n    match: { path_prefix: /partner/ }\n    upstream: llm\n    auth: { issuers: [partner], audiences: [portcullis-demo] }",
        );
    std::fs::write(&path, &with_partner).unwrap();
    reloader.reload().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = env.admin_get("/readyz").await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "one bad issuer took the replica out: {body}");
        if body.contains("issuer partner: failed") {
            assert!(
                body.contains("its routes answer 503 idp_unavailable"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the partner's failure never showed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.get_with_token("/v1/chat/x", &good).await.status,
        200,
        "other routes keep serving"
    );

    // A broken file: refused, the gauge says so, /readyz names the position.
    std::fs::write(&path, with_partner.replace("routes:", "routes: [")).unwrap();
    assert!(reloader.reload().is_err());
    let s = scrape(&env).await;
    assert_eq!(
        value(&s, "portcullis_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "portcullis_config_reloads_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
    let r = env.admin_get("/readyz").await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}");
    assert!(body.contains("config on disk refused"), "{body}");
    assert!(
        body.contains("gateway.yaml:"),
        "the position of the problem: {body}"
    );
    // Fixed again: the gauge and the body follow.
    std::fs::write(&path, &with_partner).unwrap();
    reloader.reload().unwrap();
    let s = scrape(&env).await;
    assert_eq!(
        value(&s, "portcullis_config_last_reload_successful", &[]),
        1.0
    );
    let body = String::from_utf8_lossy(&env.admin_get("/readyz").await.body).into_owned();
    assert!(!body.contains("config on disk refused"), "{body}");
}

#[tokio::test]
async fn admin_endpoints_answer_head() {
    let env = TestEnv::start(BASE_CONFIG).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let text = portcullis_tests::raw_exchange(
            env.admin,
            format!("HEAD {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
            "{path}: {text}"
        );
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
    }
}
