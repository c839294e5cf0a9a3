//! Criterion benches of the hot path: bearer extraction, a cached-key lookup,
//! verification with a pre-parsed key, CIDR rules and route matching at scale,
//! what a refused request's decision trace costs (kept in the explain ring),
//! and one local rate-limit check with a million keys tracked.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // bench set-up panics on failure

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_config::{PathMatch, RouteMatch};
use portcullis_devkit::SigningKey;
use portcullis_policy::{DEFAULT_ALGORITHMS, IpRules, IssuerRules, bearer, jws, verify::verify};
use portcullis_proxy::route_table::{Lookup, RouteTable};
use std::hint::black_box;

fn bench_bearer(c: &mut Criterion) {
    let header = format!("Bearer {}", "a".repeat(800));
    c.bench_function("bearer_extract_800B", |b| {
        b.iter(|| bearer::extract(std::iter::once(black_box(header.as_bytes())), 8192))
    });
}

fn bench_verify(c: &mut Criterion) {
    let rules = IssuerRules {
        issuer: "https://issuer.example/".into(),
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
        leeway_secs: 60,
        required_typ: None,
        scope_claim: None,
    };
    let now = portcullis_devkit::now_unix();
    let claims = serde_json::json!({"iss": rules.issuer, "aud": "api", "exp": now + 3600, "iat": now, "scope": "chat:write"});
    for (name, key) in [
        ("RS256", SigningKey::rsa("k").expect("rsa")),
        ("ES256", SigningKey::ec("k").expect("ec")),
        ("EdDSA", SigningKey::ed25519("k").expect("ed")),
    ] {
        let token = key.sign(&claims).expect("sign");
        let doc = serde_json::json!({ "keys": [key.public_jwk()] }).to_string();
        let cache = portcullis_jwks::KeyCache::new(
            rules.issuer.clone(),
            portcullis_jwks::KeySource::StaticJwks {
                path: "bench".into(),
                document: doc.into_bytes(),
            },
            portcullis_jwks::JwksSettings::default(),
            DEFAULT_ALGORITHMS.to_vec(),
            std::sync::Arc::new(portcullis_jwks::NoopObserver),
        )
        .expect("static keys");
        let snap = cache.usable_snapshot().expect("keys");
        c.bench_function(&format!("verify_uncached_{name}"), |b| {
            b.iter(|| {
                let t = jws::decode(black_box(&token)).expect("decode");
                verify(t, &rules, &snap, now).expect("verify")
            })
        });
        c.bench_function(&format!("cached_key_lookup_{name}"), |b| {
            b.iter(|| {
                cache
                    .usable_snapshot()
                    .map(|s| s.select(black_box(Some("k"))).is_some())
            })
        });
    }
}

fn bench_ip_rules(c: &mut Criterion) {
    for n in [1usize, 100, 10_000] {
        // Non-adjacent /25s: they stay n separate ranges after merging.
        let nets: Vec<ipnet::IpNet> = (0..n)
            .map(|i| {
                format!("10.{}.{}.0/25", (i / 256) % 256, i % 256)
                    .parse()
                    .expect("cidr")
            })
            .collect();
        let rules = IpRules::new(&[], &nets);
        let ip: std::net::IpAddr = "192.168.1.1".parse().expect("ip");
        c.bench_function(&format!("ip_rule_{n}_cidrs"), |b| {
            b.iter(|| rules.check(black_box(ip), "route"))
        });
    }
}

fn bench_routes(c: &mut Criterion) {
    for n in [10usize, 1_000, 10_000] {
        let routes = (0..n).map(|i| {
            (
                RouteMatch {
                    host: None,
                    path: PathMatch::Prefix(format!("/svc{i}/v1")),
                    methods: None,
                    case_insensitive: false,
                    models: None,
                },
                i,
            )
        });
        let table = RouteTable::new(routes);
        let path = format!("/svc{}/v1/chat/completions", n / 2);
        c.bench_function(&format!("route_match_{n}_routes"), |b| {
            b.iter(|| {
                matches!(
                    table.find(
                        black_box("api.example.com"),
                        black_box(&path),
                        &http::Method::POST,
                        None
                    ),
                    Lookup::Found(_)
                )
            })
        });
    }
}

fn bench_canonical_path(c: &mut Criterion) {
    use portcullis_policy::path::{PathRules, canonicalise};
    let rules = PathRules::default();
    // The common case (already canonical: a scan, no copy) and one that is
    // rewritten (an encoded unreserved character and a doubled slash).
    for (name, path) in [
        ("canonical_path_plain", "/v1/chat/completions"),
        ("canonical_path_rewritten", "/v1//chat/%63ompletions"),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| canonicalise(std::hint::black_box(path), &rules).is_ok())
        });
    }
}

/// A refused request's trace: the records of the steps it passed, the failure,
/// the entry (with evidence from the trace's context) kept in the ring.
fn bench_refusal_trace(c: &mut Criterion) {
    use portcullis_policy::{Reason, Rejection};
    use portcullis_proxy::decision::Step;
    use portcullis_proxy::explain::ExplainRing;
    use portcullis_proxy::observe::{Trace, explained_entry};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let yaml = r#"
listen: { address: "127.0.0.1:0" }
issuers:
  dev: { issuer: "http://127.0.0.1:9/", jwks_uri: "http://127.0.0.1:9/jwks" }
upstreams:
  llm: { targets: ["http://127.0.0.1:9"] }
routes:
  - name: chat
    match: { path_prefix: /v1/chat/ }
    upstream: llm
    auth: { issuers: [dev], audiences: [api], scopes: { all_of: [chat:write] } }
"#;
    let config =
        portcullis_config::load_str(yaml, "bench.yaml", std::path::Path::new("."), &|_| None)
            .unwrap();
    let metrics = portcullis_metrics::Metrics::new().unwrap();
    let observer: std::sync::Arc<dyn portcullis_jwks::JwksObserver> =
        std::sync::Arc::new(portcullis_jwks::NoopObserver);
    let runtime =
        portcullis_proxy::runtime::Runtime::build_with(config, None, &metrics, &observer, false)
            .unwrap();
    let Lookup::Found(route) = runtime
        .table
        .find("", "/v1/chat/x", &http::Method::GET, None)
    else {
        panic!("route")
    };
    let route = std::sync::Arc::clone(route);
    let ring = ExplainRing::new(1024);
    let request = http::Request::get("/v1/chat/x").body(()).unwrap();
    let id = portcullis_proxy::headers::mint_request_id();
    c.bench_function("refused_request_trace_kept", |b| {
        b.iter(|| {
            let mut trace = Trace::new(black_box(&request), false);
            trace.route = Some(std::sync::Arc::clone(&route));
            trace.client_ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
            for step in [
                Step::Request,
                Step::Canonical,
                Step::StripSpoofed,
                Step::Route,
                Step::Upgrade,
                Step::ClientIp,
            ] {
                trace.steps.pass(step);
            }
            trace
                .steps
                .fail(Step::AuthorizationHeader, Reason::TokenMissing);
            let rejection = Rejection::new(
                Reason::TokenMissing,
                "no Authorization header; send `Authorization: Bearer <token>`",
            );
            let steps = std::mem::take(&mut trace.steps);
            ring.record(explained_entry(
                &runtime.config,
                &trace,
                steps,
                Some(&rejection),
                &id,
                401,
            ));
        })
    });
}

/// One local rate-limit check (key hashing and the GCRA update) of one of a
/// million tracked client addresses.
fn bench_rate_limit(c: &mut Criterion) {
    use portcullis_config::{LimitMode, RateKeyPart, RateLimitPolicy};
    use portcullis_proxy::rate_limit::{LimitInput, PolicyLimiter};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    let policy = Arc::new(RateLimitPolicy {
        name: "per_ip".into(),
        count: 1_000_000,
        window: std::time::Duration::from_secs(1),
        burst: 1_000_000,
        key: vec![RateKeyPart::ClientIp],
        mode: LimitMode::Enforce,
        unit: portcullis_config::LimitUnit::Requests,
    });
    let limiter = Arc::new(PolicyLimiter::new(policy, 2_000_000));
    let headers = http::HeaderMap::new();
    let key_of = |n: u32| {
        limiter.key(&LimitInput {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(n))),
            route: "chat",
            claims: None,
            headers: &headers,
            model: None,
        })
    };
    let before = resident_bytes();
    for n in 0..1_000_000u32 {
        limiter.check(key_of(n));
    }
    assert_eq!(limiter.keys(), 1_000_000);
    // The memory a million keys take, for the README's figure.
    eprintln!(
        "rate limit: 1,000,000 keys grew the resident set by {:.1} MiB",
        (resident_bytes().saturating_sub(before)) as f64 / f64::from(1u32 << 20)
    );
    // Keys visited scattered over the million: each check is a cold lookup.
    let mut n = 0u32;
    c.bench_function("rate_limit_check_1M_keys", |b| {
        b.iter(|| {
            n = (n + 7919) % 1_000_000;
            black_box(limiter.check(key_of(black_box(n))))
        })
    });
    // The same table, with a thousand active clients among the million.
    let mut n = 0u32;
    c.bench_function("rate_limit_check_1M_keys_1k_active", |b| {
        b.iter(|| {
            n = (n + 7) % 1000;
            black_box(limiter.check(key_of(black_box(n))))
        })
    });
}

/// A cached token's lookup (SHA-256 of the token, then the map) among 100,000
/// cached tokens: a JWT's entry (checked against its issuer's key set) and an
/// introspected opaque token's (checked against its issuer's introspector).
fn bench_token_cache(c: &mut Criterion) {
    use portcullis_jwks::{ClientAuth, IntrospectionSettings, Introspector, KeyCache, KeySource};
    use portcullis_proxy::introspect::OpaqueTokens;
    use portcullis_proxy::token_cache::{Lookup, TokenCache, token_key};
    use std::sync::Arc;
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let observer: Arc<dyn portcullis_jwks::JwksObserver> = Arc::new(portcullis_jwks::NoopObserver);
    let keys = Arc::new(
        KeyCache::new(
            "https://issuer.test/".into(),
            KeySource::Secret(b"a bench secret of thirty-two bytes!".to_vec()),
            portcullis_jwks::JwksSettings::default(),
            vec![portcullis_policy::Algorithm::HS256],
            Arc::clone(&observer),
        )
        .unwrap(),
    );
    let metrics = portcullis_metrics::Metrics::new().unwrap();
    let opaque = Arc::new(OpaqueTokens::new(
        Introspector::new(
            "https://issuer.test/".into(),
            IntrospectionSettings::new("gw".into(), ClientAuth::SecretBasic("s".into())),
            observer,
        )
        .unwrap(),
        metrics.introspection("https://issuer.test/"),
    ));
    let claims = Arc::new(portcullis_policy::VerifiedClaims {
        issuer: Arc::from("https://issuer.test/"),
        subject: Some("user-1".into()),
        audiences: vec!["api".into()],
        expires_at: 4_102_444_800,
        not_before: None,
        issued_at: None,
        scopes: vec!["chat:write".into()],
        claims: serde_json::Map::new(),
    });
    let cache = TokenCache::new(true, 200_000, usize::MAX, Duration::from_secs(300));
    let generation = keys.state().generation;
    // A JWT of the size the load harness sends, and a 43-character opaque
    // token as oidc-provider issues them.
    let jwt = |i: usize| format!("eyJhbGciOiJSUzI1NiJ9.{}.{i:0>342}", "e".repeat(400));
    let opaque_token = |i: usize| format!("opaque-{i:0>36}");
    for i in 0..50_000 {
        cache.insert(
            token_key(&jwt(i)),
            Arc::clone(&claims),
            Arc::clone(&keys),
            generation,
            0,
        );
        cache.insert_introspected(
            token_key(&opaque_token(i)),
            Some(Arc::clone(&claims)),
            Arc::clone(&opaque),
            Duration::from_secs(300),
            Duration::ZERO,
            0,
        );
    }
    let (a_jwt, an_opaque) = (jwt(4_242), opaque_token(4_242));
    let current_keys = |_: &str| Some(Arc::clone(&keys));
    c.bench_function("token_cache_hit_jwt", |b| {
        b.iter(|| {
            let found = cache.get(&token_key(black_box(&a_jwt)), current_keys, None);
            assert!(matches!(found, Lookup::Hit(_)));
        })
    });
    c.bench_function("token_cache_hit_introspected", |b| {
        b.iter(|| {
            let found = cache.get(&token_key(black_box(&an_opaque)), |_| None, Some(&opaque));
            assert!(matches!(found, Lookup::Introspected(_)));
        })
    });
}

/// Token usage read from a streamed chat completion as it passes: 500 chunks
/// of an OpenAI stream (about 200 bytes each, split as a network would) and
/// the final usage chunk, against merely touching the same frames.
fn bench_usage_stream(c: &mut Criterion) {
    use bytes::Bytes;
    use portcullis_config::UsageDialect;
    use portcullis_proxy::usage::UsageReader;
    let mut text = String::new();
    for i in 0..500 {
        text.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    text.push_str("data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":812,\"completion_tokens\":500,\"total_tokens\":1312}}\n\ndata: [DONE]\n\n");
    // Frames of 300 bytes: events split across frames, as TCP delivers them.
    let frames: Vec<Bytes> = text
        .as_bytes()
        .chunks(300)
        .map(Bytes::copy_from_slice)
        .collect();
    c.bench_function("usage_stream_500_chunks", |b| {
        b.iter(|| {
            let mut reader =
                UsageReader::for_response(UsageDialect::OpenAi, Some("text/event-stream")).unwrap();
            for f in &frames {
                reader.feed(black_box(f));
            }
            let usage = reader.finish();
            assert_eq!(usage.output_tokens, Some(500));
        })
    });
    c.bench_function("stream_500_chunks_touched_only", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for f in &frames {
                total += black_box(f).len();
            }
            black_box(total)
        })
    });
}

/// The process's resident set, in bytes (Linux), 0 elsewhere.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

criterion_group!(
    benches,
    bench_token_cache,
    bench_usage_stream,
    bench_rate_limit,
    bench_refusal_trace,
    bench_bearer,
    bench_verify,
    bench_ip_rules,
    bench_routes,
    bench_canonical_path
);
criterion_main!(benches);
