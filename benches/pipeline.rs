//! The whole request path in one process: a client, the gateway and the devkit
//! upstream over loopback sockets: a cached-token request, the same with the token
//! cache off (RS256 verified every time), and a rejected request.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // bench set-up panics on failure

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use portcullis_tests::{BASE_CONFIG, TestEnv};
use serde_json::json;

fn bench_pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(TestEnv::start(&BASE_CONFIG.replace("[chat:write]", "[]")));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let uri: http::Uri = env.url("/v1/chat/x").parse().unwrap();
    let cached = format!("Bearer {}", env.token("chat:write", json!({})));
    let send = |auth: String| {
        let req = http::Request::get(uri.clone())
            .header("authorization", auth)
            .body(Empty::new())
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await.unwrap();
            status
        }
    };
    c.bench_function("pipeline_cached_token", |b| {
        b.iter(|| rt.block_on(send(black_box(cached.clone()))))
    });
    let nocache = rt.block_on(TestEnv::start(
        &BASE_CONFIG.replace("[chat:write]", "[]").replace(
            "logging: { access_log: false }",
            "logging: { access_log: false }\ntoken_cache: { enabled: false }",
        ),
    ));
    let nocache_uri: http::Uri = nocache.url("/v1/chat/x").parse().unwrap();
    let nocache_auth = format!("Bearer {}", nocache.token("chat:write", json!({})));
    c.bench_function("pipeline_token_cache_off_rs256", |b| {
        b.iter(|| {
            let req = http::Request::get(nocache_uri.clone())
                .header("authorization", nocache_auth.clone())
                .body(Empty::new())
                .unwrap();
            rt.block_on(async { client.request(req).await.unwrap().status() })
        })
    });
    c.bench_function("pipeline_rejected_missing_token", |b| {
        b.iter(|| {
            let req = http::Request::get(uri.clone()).body(Empty::new()).unwrap();
            rt.block_on(async { client.request(req).await.unwrap().status() })
        })
    });
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
