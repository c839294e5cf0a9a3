//! The demo upstream: an OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`,
//! Anthropic's `/v1/messages` in `anthropic.rs`, Gemini's
//! `/v1beta/models/{model}:generateContent` in `gemini.rs`,
//! with and without `stream: true`; a model named `…breaks-mid-stream` streams three
//! chunks and then breaks off, one named `…overloaded` is answered 429 and one named
//! `…unavailable` 503) plus test endpoints (matched on the last path
//! segment, so any prefix reaches them) that echo what arrived,
//! stream slowly, stall, abort mid-body, count uploads, reflect a body and upgrade connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::Request;
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use crate::serve::{DevBody, ServerHandle, bind_and_serve, full, json_response};

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Requests received.
    pub requests: AtomicUsize,
}

/// A running demo upstream.
pub struct DemoUpstream {
    /// The HTTP server.
    pub handle: ServerHandle,
    /// Its counters.
    pub stats: Arc<UpstreamStats>,
}

impl DemoUpstream {
    /// Starts on `addr`.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let stats = Arc::new(UpstreamStats::default());
        let s = Arc::clone(&stats);
        let handle = bind_and_serve(addr, move |req, peer| {
            s.requests.fetch_add(1, Ordering::SeqCst);
            route(req, peer)
        })
        .await?;
        Ok(DemoUpstream { handle, stats })
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        self.handle.url()
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn route(req: Request<Incoming>, peer: SocketAddr) -> hyper::Response<DevBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/models") => json_response(
            200,
            &json!({
                "object": "list",
                "data": [{"id": "portcullis-demo-1", "object": "model", "owned_by": "portcullis"}],
            }),
        ),
        (Method::POST, "/v1/chat/completions") => chat(req).await,
        (Method::POST, "/v1/messages") => match read_json(req).await {
            Ok(request) => crate::anthropic::messages(&request),
            Err(refusal) => refusal,
        },
        (Method::POST, p) if p.starts_with("/v1beta/models/") => {
            let path = p.to_owned();
            match read_json(req).await {
                Ok(request) => crate::gemini::generate(&path, &request).unwrap_or_else(|| {
                    json_response(404, &json!({"error": {"message": "no such method"}}))
                }),
                Err(refusal) => refusal,
            }
        }
        (_, p) if p.ends_with("/sse") => {
            let chunks = query_param(&req, "chunks").unwrap_or(5);
            let interval = query_param(&req, "interval_ms").unwrap_or(100);
            let events = (0..chunks)
                .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
                .collect();
            sse(events, Duration::from_millis(interval), true)
        }
        (_, p) if p.ends_with("/upload") => upload(req).await,
        (_, p) if p.ends_with("/reflect") => reflect(req).await,
        (_, p) if p.ends_with("/abort") => abort_mid_body(),
        (_, p) if p.ends_with("/upgrade") => upgrade(req),
        (_, p) if p.ends_with("/slow") => {
            let ms = query_param(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(200, &json!({"slept_ms": ms}))
        }
        (_, p) if p.contains("/status/") => {
            let code = p
                .rsplit('/')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            json_response(code, &json!({"status": code}))
        }
        _ => echo(req, peer).await,
    }
}

/// Echoes method, path, query, headers, peer and body size as JSON.
async fn echo(req: Request<Incoming>, peer: SocketAddr) -> hyper::Response<DevBody> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let (bytes, _) = count_body(req.into_body()).await;
    json_response(
        200,
        &json!({
            "method": method, "uri": uri, "version": version, "headers": headers,
            "peer": peer.to_string(), "body_bytes": bytes,
        }),
    )
}

async fn count_body(mut body: Incoming) -> (u64, u64) {
    let (mut total, mut largest) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            largest = largest.max(data.len() as u64);
        }
    }
    (total, largest)
}

async fn upload(req: Request<Incoming>) -> hyper::Response<DevBody> {
    let (total, largest) = count_body(req.into_body()).await;
    json_response(
        200,
        &json!({"received_bytes": total, "largest_chunk": largest}),
    )
}

/// Answers with the request body itself (at most 1 MiB), as bytes.
async fn reflect(req: Request<Incoming>) -> hyper::Response<DevBody> {
    match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => hyper::Response::new(full(b.to_bytes())),
        Err(_) => json_response(413, &json!({"error": {"message": "body too large"}})),
    }
}

/// A JSON request body (at most 1 MiB), or the error answer to send.
async fn read_json(req: Request<Incoming>) -> Result<Value, hyper::Response<DevBody>> {
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(json_response(
                413,
                &json!({"error": {"message": "body too large"}}),
            ));
        }
    };
    serde_json::from_slice::<Value>(&body).map_err(|_| {
        json_response(
            400,
            &json!({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}),
        )
    })
}

async fn chat(req: Request<Incoming>) -> hyper::Response<DevBody> {
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(413, &json!({"error": {"message": "body too large"}})),
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            400,
            &json!({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}),
        );
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("portcullis-demo-1")
        .to_owned();
    let prompt = request
        .pointer("/messages/0/content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Models named to fail, before any byte of an answer (for fallback tests
    // and the demo): `…overloaded` is rate limited, `…unavailable` down.
    if model.contains("overloaded") {
        let mut refused = json_response(
            429,
            &json!({"error": {"message": format!("{model} is overloaded: retry later"), "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}}),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return refused;
    }
    if model.contains("unavailable") {
        return json_response(
            503,
            &json!({"error": {"message": format!("{model} is unavailable"), "type": "server_error"}}),
        );
    }
    let reply = format!("Hello from the Portcullis demo upstream! You said: {prompt}");
    // Tokens counted as words, as a stand-in for a tokenizer.
    let usage = json!({
        "prompt_tokens": prompt.split_whitespace().count().max(1),
        "completion_tokens": reply.split_whitespace().count(),
        "total_tokens": prompt.split_whitespace().count().max(1) + reply.split_whitespace().count(),
    });
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let mut events: Vec<String> = reply
            .split_inclusive(' ')
            .map(|word| {
                let chunk = json!({
                    "id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}],
                });
                format!("data: {chunk}\n\n")
            })
            .collect();
        // A model named to break: three chunks, then the stream breaks off
        // (for tests and the demo of a mid-stream failure).
        if model.contains("breaks-mid-stream") {
            events.truncate(3);
            return sse_then(events, Duration::from_millis(50), false, true);
        }
        // OpenAI's stream_options.include_usage: a last chunk with the usage.
        if request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
            let chunk = json!({
                "id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": usage,
            });
            events.push(format!("data: {chunk}\n\n"));
        }
        events.push("data: [DONE]\n\n".to_owned());
        return sse(events, Duration::from_millis(50), false);
    }
    json_response(
        200,
        &json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }),
    )
}

/// A `text/event-stream` response sending `events` one by one, `interval` apart.
fn sse(
    events: Vec<String>,
    interval: Duration,
    first_immediately: bool,
) -> hyper::Response<DevBody> {
    sse_then(events, interval, first_immediately, false)
}

/// As [`sse`]; with `then_break`, the body fails after the last event instead
/// of ending (the connection is cut mid-stream).
pub(crate) fn sse_then(
    events: Vec<String>,
    interval: Duration,
    first_immediately: bool,
    then_break: bool,
) -> hyper::Response<DevBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 || !first_immediately {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(e)))).await.is_err() {
                return;
            }
        }
        if then_break {
            tokio::time::sleep(interval).await;
            let _ = tx
                .send(Err(std::io::Error::other("upstream broke off mid-stream")))
                .await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Sends the head and part of the body, then fails the body: the connection is cut.
fn abort_mid_body() -> hyper::Response<DevBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"partial "))))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tx
            .send(Err(std::io::Error::other("upstream aborted mid-body")))
            .await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
    r
}

/// Answers an `Upgrade: echo` request with 101 and echoes bytes on the raw stream.
fn upgrade(req: Request<Incoming>) -> hyper::Response<DevBody> {
    let wants = req.headers().get(header::UPGRADE).cloned();
    let Some(proto) = wants else {
        return json_response(426, &json!({"error": "upgrade required"}));
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = hyper::Response::new(full(Bytes::new()));
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(header::UPGRADE, proto);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r
}
