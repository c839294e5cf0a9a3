//! Proxy semantics end to end: routing precedence, rewrites, hop-by-hop removal,
//! X-Forwarded-*, request ids, Host handling, credential injection, claim headers
//! and spoofed-header stripping, and client IP rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_tests::{TestEnv, raw_exchange};
use serde_json::{Value, json};
use std::time::Duration;

const ROUTING: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
upstreams:
  a: { targets: ["{UPSTREAM}/a"] }
  b: { targets: ["{UPSTREAM}/b"] }
  c: { targets: ["{UPSTREAM}/c"] }
  d: { targets: ["{UPSTREAM}/d"] }
  e: { targets: ["{UPSTREAM}/e"] }
  f: { targets: ["{UPSTREAM}"] }
routes:
  - { name: root, match: { path_prefix: / }, upstream: a, public: true, upgrades: [echo] }
  - { name: v1, match: { path_prefix: /v1 }, upstream: b, public: true }
  - { name: exact, match: { path: /v1/exact }, upstream: c, public: true }
  - { name: posts, match: { path_prefix: /v1/, methods: [POST] }, upstream: d, public: true }
  - { name: host, match: { host: "*.example.com", path_prefix: / }, upstream: e, public: true }
  - name: rewrite
    match: { path_prefix: /openai/ }
    upstream: f
    rewrite: { strip_prefix: /openai, replace_prefix: /api }
    public: true
  - name: keephost
    match: { path_prefix: /keep/ }
    upstream: f
    preserve_host: true
    public: true
  - { name: onlyput, match: { path: /put-only, methods: [PUT] }, upstream: f, public: true }
"#;

fn uri_of(reply: &portcullis_tests::Reply) -> String {
    reply.json()["uri"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn routing_precedence_and_rewrite() {
    let env = TestEnv::start(ROUTING).await;
    let table: &[(&str, &str, Option<&str>, &str)] = &[
        ("GET", "/v1/exact", None, "/c/v1/exact"),
        ("GET", "/v1/other", None, "/b/v1/other"),
        ("POST", "/v1/other", None, "/d/v1/other"),
        ("GET", "/v1", None, "/b/v1"),
        ("GET", "/v1x", None, "/a/v1x"),
        ("GET", "/v1/exact", Some("api.example.com"), "/e/v1/exact"),
        ("GET", "/x?q=1&r=2", None, "/a/x?q=1&r=2"),
        (
            "GET",
            "/openai/v1/models?limit=2",
            None,
            "/api/v1/models?limit=2",
        ),
    ];
    for (method, path, host, want) in table {
        let headers: Vec<(&str, &str)> = host.map(|h| vec![("host", h)]).unwrap_or_default();
        let reply = env.send(method.parse().unwrap(), path, &headers, "").await;
        assert_eq!(reply.status, 200, "{method} {path}");
        assert_eq!(uri_of(&reply), *want, "{method} {path} host {host:?}");
    }
    let reply = env.get("/put-only", &[]).await;
    assert_eq!(
        reply.status, 200,
        "falls through to the / prefix route for GET"
    );
}

#[tokio::test]
async fn non_canonical_paths_are_refused_before_routing() {
    let env = TestEnv::start(ROUTING).await;
    for path in [
        "/v1/../openai/x",
        "/v1/%2e%2e/openai/x",
        "/v1/%2F..%2Fopenai",
        "/v1/./exact",
        "/v1\\..\\x",
    ] {
        let reply = env.get(path, &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason().as_str()),
            (400, "path_invalid"),
            "{path}"
        );
        assert!(reply.header("www-authenticate").is_none());
    }
    assert_eq!(env.upstream.requests(), 0, "nothing reached the upstream");
    assert_eq!(
        env.get("/v1/a.b/..c", &[]).await.status,
        200,
        "dots inside names are fine"
    );
}

#[tokio::test]
async fn method_not_allowed_and_not_found() {
    let env = TestEnv::start(&ROUTING.replace(
        "  - { name: root, match: { path_prefix: / }, upstream: a, public: true, upgrades: [echo] }\n",
        "",
    ))
    .await;
    let reply = env.get("/put-only", &[]).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.reason(), "method_not_allowed");
    assert_eq!(reply.header("allow").as_deref(), Some("PUT"));
    let reply = env.get("/nowhere", &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason().as_str()),
        (404, "route_not_found")
    );
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn headers_toward_the_upstream() {
    let env = TestEnv::start(ROUTING).await;
    let reply = env
        .get(
            "/keep/x",
            &[
                ("host", "client.example.org"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret hop"),
                ("te", "trailers"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("x-portcullis-subject", "admin"),
                ("x-request-id", "client-chosen-id-42"),
                ("x-custom", "kept"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    // From a peer that is not a trusted proxy, a client's id is replaced.
    let minted = reply.header("x-request-id").unwrap();
    assert_ne!(minted, "client-chosen-id-42");
    assert_eq!(minted.len(), 32);
    let h = &reply.json()["headers"];
    let one = |name: &str| h[name][0].as_str().map(str::to_owned);
    for gone in [
        "x-hop",
        "te",
        "keep-alive",
        "proxy-authorization",
        "x-portcullis-subject",
    ] {
        assert!(
            h.get(gone).is_none(),
            "{gone} must not reach the upstream: {h}"
        );
    }
    assert_eq!(one("x-custom").as_deref(), Some("kept"));
    assert_eq!(
        one("host").as_deref(),
        Some("client.example.org"),
        "preserve_host"
    );
    assert_eq!(
        one("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "an untrusted client's XFF is replaced"
    );
    assert_eq!(one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        one("x-forwarded-host").as_deref(),
        Some("client.example.org")
    );
    assert_eq!(one("x-request-id").as_deref(), Some(minted.as_str()));

    let reply = env
        .get(
            "/x",
            &[("host", "client.example.org"), ("x-request-id", "bad id!")],
        )
        .await;
    let h = &reply.json()["headers"];
    assert_eq!(
        h["host"][0].as_str(),
        Some(env.upstream.handle.addr.to_string().as_str()),
        "Host rewritten to the upstream's"
    );
    let minted = reply.header("x-request-id").unwrap();
    assert_eq!(minted.len(), 32, "a malformed client id is replaced");
    assert_eq!(h["x-request-id"][0].as_str(), Some(minted.as_str()));

    // `network.request_id: any` keeps a client's plain id.
    let env = TestEnv::start(&ROUTING.replace(
        "logging: { access_log: false }",
        "logging: { access_log: false }\nnetwork: { request_id: any }",
    ))
    .await;
    let reply = env
        .get("/x", &[("x-request-id", "client-chosen-id-42")])
        .await;
    assert_eq!(
        reply.header("x-request-id").as_deref(),
        Some("client-chosen-id-42")
    );
    assert_eq!(
        reply.json()["headers"]["x-request-id"][0],
        "client-chosen-id-42"
    );
}

const TRUSTED: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
network:
  trusted_proxies: [127.0.0.1/32]
  deny: [192.0.2.0/24]
issuers:
  dev: { issuer: "{ISSUER}", jwks_uri: "{ISSUER}jwks" }
upstreams:
  llm:
    targets: ["{UPSTREAM}"]
    credential: { header: authorization, value: "Bearer sk-upstream-key" }
routes:
  - name: chat
    match: { path_prefix: /v1/ }
    upstream: llm
    ip: { allow: [198.51.100.0/24, "2001:db8::/32"], deny: [198.51.100.66/32, "2001:db8:bad::/48"] }
    auth:
      issuers: [dev]
      audiences: [portcullis-demo]
      claim_headers: { sub: X-Portcullis-Subject, tenant: X-Tenant }
"#;

#[tokio::test]
async fn credential_injection_and_claim_headers_with_spoofs_stripped() {
    let env = TestEnv::start(TRUSTED).await;
    let token = env.token("chat:write", json!({"tenant": "acme"}));
    let auth = format!("Bearer {token}");
    let reply = env
        .get(
            "/v1/x",
            &[
                ("authorization", &auth),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-portcullis-subject", "spoofed"),
                ("x-tenant", "spoofed-tenant"),
                ("x-request-id", "from-the-proxy-7"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let h = &reply.json()["headers"];
    assert_eq!(
        reply.header("x-request-id").as_deref(),
        Some("from-the-proxy-7"),
        "a trusted proxy's request id is kept"
    );
    assert_eq!(
        h["authorization"],
        json!(["Bearer sk-upstream-key"]),
        "the client's token is replaced by the upstream credential"
    );
    assert_eq!(h["x-portcullis-subject"], json!(["demo-client"]));
    assert_eq!(h["x-tenant"], json!(["acme"]));
    assert_eq!(
        h["x-forwarded-for"],
        json!(["198.51.100.7, 127.0.0.1"]),
        "a trusted proxy's XFF is kept and extended"
    );

    // A token without the claim: the spoofed header must not survive either.
    let token = env.token("chat:write", json!({}));
    let auth = format!("Bearer {token}");
    let reply = env
        .get(
            "/v1/x",
            &[
                ("authorization", &auth),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-tenant", "spoofed"),
            ],
        )
        .await;
    assert!(reply.json()["headers"].get("x-tenant").is_none());
}

#[tokio::test]
async fn client_ip_rules_through_a_trusted_proxy() {
    let env = TestEnv::start(TRUSTED).await;
    let token = env.token("chat:write", json!({}));
    let auth = format!("Bearer {token}");
    let table: &[(&str, u16, &str)] = &[
        ("198.51.100.7", 200, ""),
        ("198.51.100.66", 403, "ip_denied"),
        ("203.0.113.1", 403, "ip_denied"),
        ("192.0.2.10", 403, "ip_denied"),
        ("2001:db8::1", 200, ""),
        ("2001:db8:bad::1", 403, "ip_denied"),
        ("::ffff:198.51.100.7", 200, ""),
        ("203.0.113.9, 198.51.100.7", 200, ""),
    ];
    for (xff, status, reason) in table {
        let before = env.upstream.requests();
        let reply = env
            .get(
                "/v1/x",
                &[("authorization", &auth), ("x-forwarded-for", xff)],
            )
            .await;
        assert_eq!(
            reply.status.as_u16(),
            *status,
            "XFF {xff}: {:?}",
            reply.json()
        );
        assert_eq!(reply.reason(), *reason, "XFF {xff}");
        if *status == 403 {
            assert!(reply.header("www-authenticate").is_none());
            assert_eq!(env.upstream.requests(), before);
        }
    }
    // The network rule is checked before the token.
    let reply = env
        .get("/v1/x", &[("x-forwarded-for", "203.0.113.1")])
        .await;
    assert_eq!(reply.reason(), "ip_denied");
    let detail = reply.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("203.0.113.1"), "{detail}");
}

#[tokio::test]
async fn xff_from_an_untrusted_peer_is_ignored() {
    let env =
        TestEnv::start(&TRUSTED.replace("trusted_proxies: [127.0.0.1/32]", "trusted_proxies: []"))
            .await;
    let token = env.token("chat:write", json!({}));
    let auth = format!("Bearer {token}");
    let reply = env
        .get(
            "/v1/x",
            &[
                ("authorization", &auth),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        .await;
    assert_eq!(
        reply.status, 403,
        "the peer 127.0.0.1 is not in the allow list, whatever XFF claims"
    );
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
}

#[tokio::test]
async fn malformed_http_gets_400_and_nothing_is_forwarded() {
    let env = TestEnv::start(ROUTING).await;
    let reply = raw_exchange(
        env.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = raw_exchange(env.addr, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 400") || reply.is_empty(),
        "{reply}"
    );
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start(ROUTING).await;
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    let _: Value = Value::Null;
}
