//! OpenTelemetry export (#16) to a real OTLP/HTTP receiver on 127.0.0.1 that
//! decodes the protobuf (`opentelemetry-proto`): span names, kinds, parent
//! links and attributes, the `traceparent` the upstream received, and a
//! collector that is down, failing or slow costing spans (counted), never
//! requests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use portcullis_tests::{BASE_CONFIG, TestEnv};
use prost::Message;
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Fail,
    Slow(Duration),
}

/// A minimal OTLP/HTTP traces receiver: decodes every request it is sent.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&got);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let decoded =
                                ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                            store.lock().unwrap().push(decoded);
                            let status = match answer {
                                Answer::Ok => 200,
                                Answer::Fail => 500,
                                Answer::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                            };
                            let mut r = http::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            r.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, got }
    }

    fn spans(&self) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| r.attributes.iter())
            .filter(|a| a.key == "service.name")
            .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

fn config(endpoint: &str, extra: &str) -> String {
    BASE_CONFIG.replace(
        "logging: { access_log: false }",
        &format!(
            "logging: {{ access_log: false }}\ntracing: {{ enabled: true, sample_ratio: 1.0, otlp: {{ endpoint: \"{endpoint}\", interval: 100ms{extra} }} }}"
        ),
    )
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spans_counted(env: &TestEnv, outcome: &str) -> f64 {
    let prefix = format!("portcullis_trace_spans_total{{outcome=\"{outcome}\"}} ");
    env.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_otlp_receiver_with_parent_links_and_attributes() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = TestEnv::start(&config(&format!("http://{}/v1/traces", receiver.addr), "")).await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let token = env.token("chat:write", json!({}));
    let auth = format!("Bearer {token}");
    let ok = env
        .get(
            "/v1/chat/echo",
            &[("authorization", &auth), ("traceparent", &sent)],
        )
        .await;
    assert_eq!(ok.status, 200);
    let upstream_saw = ok.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let request_id = ok.header("x-request-id").unwrap();
    let again = env
        .get(
            "/v1/chat/echo",
            &[("authorization", &auth), ("traceparent", &sent)],
        )
        .await;
    let again_id = again.header("x-request-id").unwrap();
    let refused = env.get("/v1/chat/echo", &[("traceparent", &sent)]).await;
    assert_eq!(refused.status, 401);
    let refused_id = refused.header("x-request-id").unwrap();

    eventually("eight spans", || receiver.spans().len() >= 8).await;
    let spans = receiver.spans();
    assert!(receiver.service_names().iter().all(|s| s == "portcullis"));
    let root = spans
        .iter()
        .find(|s| attr(s, "portcullis.request_id").as_deref() == Some(request_id.as_str()))
        .expect("the allowed request's span");
    assert_eq!(root.name, "GET chat");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(hex(&root.trace_id), TRACE, "the client's trace continued");
    assert_eq!(
        hex(&root.parent_span_id),
        PARENT,
        "the client's span is the parent"
    );
    assert_eq!(attr(root, "http.route").as_deref(), Some("chat"));
    assert_eq!(
        attr(root, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(root, "portcullis.stream").as_deref(), Some("complete"));
    let steps = attr(root, "portcullis.steps").unwrap();
    assert!(
        steps.contains("route=pass") && steps.contains("signature=pass"),
        "every step's outcome: {steps}"
    );
    assert!(root.events.is_empty(), "no failing step, no event");
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let auth_span = children
        .iter()
        .find(|s| s.name == "portcullis.authenticate")
        .expect("an authentication span under the request");
    assert_eq!(hex(&auth_span.trace_id), TRACE);
    assert_eq!(
        attr(auth_span, "portcullis.token_cache_hit").as_deref(),
        Some("false"),
        "the first use of the token is verified"
    );
    let again_root = spans
        .iter()
        .find(|s| attr(s, "portcullis.request_id").as_deref() == Some(again_id.as_str()))
        .expect("the second request's span");
    let again_auth = spans
        .iter()
        .find(|s| s.parent_span_id == again_root.span_id && s.name == "portcullis.authenticate")
        .expect("its authentication span");
    assert_eq!(
        attr(again_auth, "portcullis.token_cache_hit").as_deref(),
        Some("true"),
        "the second is served from the token cache"
    );
    let upstream = children
        .iter()
        .find(|s| s.name == "portcullis.upstream")
        .expect("an upstream span under the request");
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(
        attr(upstream, "http.response.status_code").as_deref(),
        Some("200")
    );
    // The upstream's parent is the gateway's upstream span.
    let p: Vec<&str> = upstream_saw.split('-').collect();
    assert_eq!(p[1], TRACE);
    assert_eq!(p[2], hex(&upstream.span_id), "{upstream_saw}");

    let refusal = spans
        .iter()
        .find(|s| attr(s, "portcullis.request_id").as_deref() == Some(refused_id.as_str()))
        .expect("the refused request's span");
    assert_eq!(
        attr(refusal, "portcullis.reason").as_deref(),
        Some("token_missing")
    );
    assert_eq!(
        attr(refusal, "portcullis.step").as_deref(),
        Some("authorization_header")
    );
    assert_eq!(refusal.status.as_ref().unwrap().code, 2, "status error");
    assert!(
        refusal
            .events
            .iter()
            .any(|e| e.name == "authorization_header"
                && e.attributes.iter().any(|a| a.key == "portcullis.outcome"))
    );
    let text = format!("{spans:?}");
    assert!(!text.contains(&token), "no token in a span");
    eventually("exports counted", || spans_counted(&env, "exported") >= 5.0).await;
    assert_eq!(spans_counted(&env, "dropped"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_failing_costs_spans_not_requests() {
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let failing = Receiver::start(Answer::Fail).await;
    for endpoint in [
        format!("http://{dead_addr}/v1/traces"),
        format!("http://{}/v1/traces", failing.addr),
    ] {
        let env = TestEnv::start(&config(&endpoint, ", timeout: 1s")).await;
        for _ in 0..5 {
            assert_eq!(env.get("/public/x", &[]).await.status, 200, "{endpoint}");
        }
        eventually("failed exports counted", || {
            spans_counted(&env, "failed") >= 1.0
        })
        .await;
        assert_eq!(spans_counted(&env, "exported"), 0.0, "{endpoint}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let slow = Receiver::start(Answer::Slow(Duration::from_secs(3))).await;
    let env = TestEnv::start(&config(
        &format!("http://{}/v1/traces", slow.addr),
        ", queue: 2, batch: 1, timeout: 5s",
    ))
    .await;
    for _ in 0..30 {
        assert_eq!(env.get("/public/x", &[]).await.status, 200);
    }
    eventually("dropped spans counted", || {
        spans_counted(&env, "dropped") >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_make_no_spans() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = TestEnv::start(
        &config(&format!("http://{}/v1/traces", receiver.addr), "")
            .replace("sample_ratio: 1.0", "sample_ratio: 0.0"),
    )
    .await;
    let unsampled = format!("00-{}-{PARENT}-00", "a".repeat(32));
    for headers in [vec![], vec![("traceparent", unsampled.as_str())]] {
        assert_eq!(env.get("/public/x", &headers).await.status, 200);
    }
    // A sampled parent is honoured even at ratio 0: its spans arrive, the
    // others never did.
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        env.get("/public/x", &[("traceparent", sampled.as_str())])
            .await
            .status,
        200
    );
    eventually("the sampled request's span", || {
        !receiver.spans().is_empty()
    })
    .await;
    let gw = Arc::clone(&env.gateway);
    tokio::task::spawn_blocking(move || gw.flush_spans(Duration::from_secs(2)))
        .await
        .unwrap();
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE),
        "only the sampled trace: {} spans",
        spans.len()
    );
    assert_eq!(
        spans.len(),
        2,
        "its request and upstream spans, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_fetch_the_request_waited_for_is_a_span_under_authentication() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = TestEnv::start(&config(&format!("http://{}/v1/traces", receiver.addr), "")).await;
    // A token signed by a key the issuer does not publish: the gateway fetches
    // the key set again for its kid, and still does not find it.
    let claims = env.auth.claims("chat:write", json!({}));
    let stranger = portcullis_tests::SigningKey::rsa("stranger")
        .unwrap()
        .sign(&claims)
        .unwrap();
    let auth = format!("Bearer {stranger}");
    let reply = env.get("/v1/chat/echo", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.reason(), "key_unknown");
    eventually("the refusal's spans", || {
        receiver
            .spans()
            .iter()
            .any(|s| s.name == "portcullis.key_fetch")
    })
    .await;
    let spans = receiver.spans();
    let fetch = spans
        .iter()
        .find(|s| s.name == "portcullis.key_fetch")
        .unwrap();
    let authn = spans
        .iter()
        .find(|s| s.name == "portcullis.authenticate")
        .unwrap();
    assert_eq!(fetch.parent_span_id, authn.span_id, "under authentication");
    assert_eq!(
        attr(fetch, "portcullis.key_found").as_deref(),
        Some("false")
    );
    assert_eq!(
        attr(authn, "portcullis.reason").as_deref(),
        Some("key_unknown")
    );
    let root = spans.iter().find(|s| s.name == "GET chat").unwrap();
    assert_eq!(authn.parent_span_id, root.span_id);
}
