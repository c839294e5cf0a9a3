//! Attacks on the gateway's checks, tried the way a hostile client would: path
//! forms that a normalising upstream serves as another route's path, upgrade
//! tunnels, ambiguous authorities, forwarding headers with ports or garbage,
//! spoofed gateway-owned headers, broken and slow bodies, upstreams answering
//! what they should not, and connections that hold a slot without using it.
//! Each test owns its servers on 127.0.0.1:0 and is bounded in count and time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv, raw_exchange};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The issuer and upstream every configuration here uses.
const HEAD: &str = ISSUER_AND_UPSTREAM;

/// One public catch-all route to the upstream.
const OPEN_ROUTE: &str =
    "routes:\n  - { name: open, match: { path_prefix: / }, upstream: llm, public: true }\n";

/// A reply read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: String,
}

impl RawReply {
    fn parse(text: &str) -> RawReply {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        RawReply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_owned()
    }
}

/// One request on a fresh connection, written byte for byte.
async fn raw(addr: SocketAddr, request: &str) -> RawReply {
    RawReply::parse(&raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await)
}

/// `GET {target}` with a bearer token, written byte for byte.
async fn raw_get_with_token(addr: SocketAddr, target: &str, token: &str) -> RawReply {
    raw(
        addr,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Asserts a refusal's status and reason code.
#[track_caller]
fn assert_refused(reply: &RawReply, status: u16, reason: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.reason().as_str()),
        (status, reason),
        "{what}: {} {}",
        reply.head,
        reply.body
    );
}

fn metric(env: &TestEnv, line_start: &str) -> f64 {
    env.metric(line_start)
}

/// What an upstream that normalises as much as any real server does would serve
/// for the path it received: percent-decoding applied repeatedly (double
/// decoding), overlong UTF-8 dots and slashes, backslashes as slashes, `;`
/// parameters dropped, case folded, trailing dots and spaces dropped, empty
/// segments merged and dot segments resolved.
fn served_as(uri: &str) -> String {
    let mut path = uri.split('?').next().unwrap_or("").to_owned();
    for _ in 0..3 {
        let lower = path.to_ascii_lowercase();
        let lower = lower.replace("%c0%ae", ".").replace("%c0%af", "/");
        path = percent_decode_lossy(&lower);
    }
    let path = path.replace('\\', "/").to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        // `..` itself stays: only trailing dots after a name are dropped.
        let segment = if segment.bytes().all(|b| b == b'.') {
            segment
        } else {
            segment.trim_end_matches(['.', ' ', '\0'])
        };
        match segment {
            "" => {}
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_normalising_upstream_is_as_lenient_as_claimed() {
    for (received, served) in [
        ("//admin/x", "/admin/x"),
        ("/v1/..;/admin", "/admin"),
        ("/%252e%252e/admin", "/admin"),
        ("/x/%c0%ae%c0%ae/admin", "/admin"),
        ("/ADMIN.", "/admin"),
        ("/x\\..\\admin", "/admin"),
        ("/%61dmin?q", "/admin"),
    ] {
        assert_eq!(served_as(received), served, "{received}");
    }
}

/// No path form admitted under the catch-all's policy (a `chat:write` token) is
/// served by a normalising upstream as a path under `/admin` (which needs
/// `admin`): each is refused, or made canonical and then matched by the admin
/// route, whose policy refuses it.
#[tokio::test]
async fn no_path_form_reaches_another_routes_path() {
    let config = format!(
        "{HEAD}{}",
        r#"
routes:
  - name: admin
    match: { path_prefix: /admin, case_insensitive: true }
    upstream: llm
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: [admin] } }
  - name: catchall
    match: { path_prefix: / }
    upstream: llm
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: ["chat:write"] } }
"#
    );
    let env = TestEnv::start(&config).await;
    let token = env.token("chat:write", json!({}));
    let corpus = [
        "//admin/x",
        "///admin",
        "/./admin",
        "/x/../admin",
        "/v1/..;/admin",
        "/admin;x=1/",
        "/;/admin",
        "/x;/../admin",
        "/%61dmin/x",
        "/%41DMIN/x",
        "/%2561dmin",
        "/%252e%252e/admin",
        "/x/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/x/.%2e/admin",
        "/x%2f..%2fadmin",
        "/x%2F..%2Fadmin",
        "/%2fadmin",
        "/x%5c..%5cadmin",
        "/x/%c0%ae%c0%ae/admin",
        "/x/%c0%ae%c0%ae%c0%afadmin",
        "/ADMIN/x",
        "/Admin",
        "/aDmIn/x",
        "/admin./x",
        "/admin../x",
        "/admin%20/x",
        "/admin%2e/x",
        "/admin%00/x",
        "/admin%09",
        "/x/..%00/admin",
    ];
    let mut forwarded = 0;
    for path in corpus {
        let reply = raw_get_with_token(env.addr, path, &token).await;
        assert!(reply.status != 0, "{path}: no answer");
        if (200..300).contains(&reply.status) {
            forwarded += 1;
            let uri = reply.json()["uri"].as_str().unwrap_or("").to_owned();
            let served = served_as(&uri);
            assert!(
                !served.starts_with("/admin"),
                "{path} was admitted by the catch-all and reached the upstream as {uri:?}, served as {served:?}"
            );
        } else {
            assert!(
                [400, 403].contains(&reply.status),
                "{path}: {} {}",
                reply.status,
                reply.body
            );
        }
    }
    // The canonical forms of /admin are the admin route's, and refused there.
    for path in ["/%61dmin/x", "//admin/x", "/ADMIN/x"] {
        let reply = raw_get_with_token(env.addr, path, &token).await;
        assert_refused(&reply, 403, "scope_insufficient", path);
    }
    // Refusals name their rule.
    for (path, rule) in [
        ("/v1/..;/admin", "semicolon"),
        ("/%252e%252e/admin", "double_encoding"),
        ("/x/%c0%ae%c0%ae/admin", "invalid_utf8"),
        ("/x%2f..%2fadmin", "escaped_slash"),
        ("/admin./x", "trailing_dot_or_space"),
        ("/admin%00/x", "encoded_control"),
    ] {
        let reply = raw_get_with_token(env.addr, path, &token).await;
        assert_eq!(reply.reason(), "path_invalid", "{path}: {}", reply.body);
        assert!(
            reply.body.contains(&format!("rule {rule}")),
            "{path}: {}",
            reply.body
        );
    }
    assert_eq!(
        forwarded, 0,
        "every form in the corpus is refused or re-routed"
    );
    // What is matched is what the upstream receives: a canonicalised path goes
    // upstream in its canonical form.
    let reply = raw_get_with_token(env.addr, "/v1//chat/%63ompletions?a=%2F", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["uri"], "/v1/chat/completions?a=%2F");
}

const UPGRADES: &str = r#"
routes:
  - name: ws
    match: { path_prefix: /ws/ }
    upstream: llm
    public: true
    upgrades: [echo]
  - name: api
    match: { path_prefix: / }
    upstream: llm
    auth: { issuers: [dev], audiences: [portcullis-demo], scopes: { all_of: ["chat:write"] } }
"#;

/// Reads a response head off a stream that stays open.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response head in time")
            .expect("read");
        assert!(n > 0, "closed before a response head");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn upgrades_only_by_allow_list() {
    let env = TestEnv::start(&format!("{HEAD}{UPGRADES}")).await;
    let token = env.token("chat:write", json!({}));

    // A route that names no upgrade refuses one, before the upstream sees anything.
    for proto in ["echo", "websocket", "made-up/1"] {
        let reply = raw(
            env.addr,
            &format!("GET /v1/upgrade HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade, close\r\nUpgrade: {proto}\r\n\r\n"),
        )
        .await;
        assert_refused(&reply, 403, "upgrade_not_allowed", proto);
    }
    assert_eq!(
        env.upstream.requests(),
        0,
        "no refused upgrade reached the upstream"
    );

    // h2c is never relayed: the request is served as plain HTTP/1.1 and neither
    // Upgrade nor HTTP2-Settings reaches the upstream.
    let reply = raw(
        env.addr,
        &format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let headers = &reply.json()["headers"];
    assert!(headers.get("upgrade").is_none(), "{headers}");
    assert!(headers.get("http2-settings").is_none(), "{headers}");
    // Even on a route that allows upgrades.
    let reply = raw(
        env.addr,
        "GET /ws/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // An offer naming a protocol outside the list is refused whole.
    let reply = raw(
        env.addr,
        "GET /ws/upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: echo, websocket\r\n\r\n",
    )
    .await;
    assert_eq!(reply.reason(), "upgrade_not_allowed", "{}", reply.body);

    // CONNECT tunnels are never relayed.
    let reply = raw(
        env.addr,
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_refused(&reply, 403, "upgrade_not_allowed", "CONNECT");

    // An allowed protocol gets its tunnel.
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    s.write_all(
        b"GET /ws/upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"through the tunnel").await.unwrap();
    let mut echoed = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"through the tunnel");
    // Tunnel bytes that look exactly like hyper's bare refusal are the
    // tunnel's own: they pass unchanged (nothing is rewritten after a 101).
    let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 00:04:43 GMT\r\n\r\n";
    s.write_all(bare).await.unwrap();
    let mut echoed = vec![0u8; bare.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, bare.to_vec());
}

/// An upstream that reads one request head and answers with `response` as is.
async fn rogue_upstream(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn upstream_responses_that_must_not_reach_the_client() {
    for (response, what) in [
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            "switched protocols (101) without being asked",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "conflicting framing",
        ),
        (
            "HTTP/1.1 999 Nine\r\nContent-Length: 0\r\n\r\n",
            "invalid status 999",
        ),
    ] {
        let rogue = rogue_upstream(response).await;
        let config = format!(
            "{}{}",
            HEAD.replace("{UPSTREAM}", &rogue),
            "routes:\n  - { name: open, match: { path_prefix: / }, upstream: llm, public: true, upgrades: [echo] }\n"
        );
        let env = TestEnv::start(&config).await;
        let reply = raw(
            env.addr,
            "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_refused(&reply, 502, "upstream_protocol_error", what);
        assert!(reply.body.contains(what), "{what}: {}", reply.body);
    }
    // A 101 to a protocol the client did not offer.
    let rogue = rogue_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: other\r\n\r\n",
    )
    .await;
    let config = format!(
        "{}{}",
        HEAD.replace("{UPSTREAM}", &rogue),
        "routes:\n  - { name: open, match: { path_prefix: / }, upstream: llm, public: true, upgrades: [echo] }\n"
    );
    let env = TestEnv::start(&config).await;
    let reply = raw(
        env.addr,
        "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("did not ask for"), "{}", reply.body);
}

#[tokio::test]
async fn one_authority_per_request() {
    let config = format!(
        "{HEAD}{}",
        r#"
routes:
  - { name: tenant, match: { host: api.example.com, path_prefix: / }, upstream: llm, public: true }
  - { name: other, match: { path_prefix: / }, upstream: llm, public: true, rewrite: { replace_prefix: /other } }
"#
    );
    let env = TestEnv::start(&config).await;
    for (request, why) in [
        (
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
            "2 Host headers",
        ),
        (
            "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
            "no Host header",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: user@api.example.com\r\nConnection: close\r\n\r\n",
            "userinfo",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: api.example.com:99999\r\nConnection: close\r\n\r\n",
            "invalid port",
        ),
        (
            "GET http://api.example.com/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
            "different hosts",
        ),
    ] {
        let reply = raw(env.addr, request).await;
        if reply.reason() == "request_malformed" {
            // hyper's own parser refused it first: still a 400, still not forwarded.
            continue;
        }
        assert_refused(&reply, 400, "host_invalid", &format!("{request:?}"));
        assert!(reply.body.contains(why), "{request:?}: {}", reply.body);
    }
    assert_eq!(
        env.upstream.requests(),
        0,
        "no ambiguous request was forwarded"
    );
    // The absolute form's authority is what routes (it agrees with Host here).
    let reply = raw(
        env.addr,
        "GET http://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["uri"],
        "/x",
        "routed by the target's authority"
    );
    // HTTP/1.0 may omit Host.
    let reply = raw(env.addr, "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn forwarding_headers_fail_closed_behind_trusted_proxies() {
    let routes = r#"
routes:
  - name: partners
    match: { path_prefix: / }
    upstream: llm
    public: true
    ip: { allow: [203.0.113.0/24] }
"#;
    // The test client (127.0.0.1) is a trusted proxy, and sets X-Forwarded-For.
    let xff = TestEnv::start(&format!(
        "{HEAD}network: {{ trusted_proxies: [127.0.0.0/8] }}\n{routes}"
    ))
    .await;
    for (value, status) in [
        ("203.0.113.5", 200),
        ("203.0.113.5:5555", 200),
        ("198.51.100.7, 203.0.113.5:443", 200),
        ("198.51.100.7:5555", 403),
        ("203.0.113.5, 127.0.0.9:5555", 200),
        ("[2001:db8::1]:80", 403),
    ] {
        let reply = xff.get("/x", &[("x-forwarded-for", value)]).await;
        assert_eq!(reply.status.as_u16(), status, "{value}: {:?}", reply.body);
    }
    // Entries that cannot be parsed make the client unknown; the proxy's own
    // address (127.0.0.1, not on the allow list either way) never stands in.
    for value in ["junk", "203.0.113.5, junk", "unknown", "203.0.113.5:99999"] {
        let reply = xff.get("/x", &[("x-forwarded-for", value)]).await;
        assert_eq!(reply.reason(), "ip_denied", "{value}");
        assert!(
            reply.json()["detail"]
                .as_str()
                .unwrap()
                .contains("from the right is not an IP address"),
            "{value}: {:?}",
            reply.body
        );
    }

    // A proxy that sets Forwarded: a client's own X-Forwarded-For is not read.
    let fwd = TestEnv::start(&format!(
        "{HEAD}network: {{ trusted_proxies: [{{ cidr: 127.0.0.1, header: forwarded }}] }}\n{routes}"
    ))
    .await;
    let reply = fwd.get("/x", &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_eq!(
        reply.reason(),
        "ip_denied",
        "X-Forwarded-For is ignored behind a Forwarded proxy"
    );
    let reply = fwd
        .get(
            "/x",
            &[("forwarded", "for=\"203.0.113.5:4711\";proto=https")],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn gateway_owned_headers_are_stripped_on_every_route() {
    let config = format!(
        "{HEAD}{}",
        r#"
routes:
  - name: private
    match: { path_prefix: /private/ }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: [portcullis-demo]
      claim_headers: { sub: X-User-Subject }
  - { name: public, match: { path_prefix: / }, upstream: llm, public: true }
"#
    );
    let env = TestEnv::start(&config).await;
    let spoofed = [
        ("x-user-subject", "admin"),
        ("x_user_subject", "admin"),
        ("x-portcullis-subject", "admin"),
        ("x_portcullis_subject", "admin"),
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/private/admin"),
        ("x-rewrite-url", "/private/admin"),
        ("x-real-ip", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("x_forwarded_for", "10.0.0.1"),
    ];
    let reply = env.get("/public/x", &spoofed).await;
    assert_eq!(reply.status, 200);
    let headers = reply.json()["headers"].clone();
    for (name, _) in spoofed {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {headers}"
        );
    }
    // On the route that sets it, the header carries the verified claim only.
    let token = env.token("", json!({"sub": "alice"}));
    let auth = format!("Bearer {token}");
    let reply = env
        .get(
            "/private/x",
            &[
                ("authorization", &auth),
                ("x-user-subject", "admin"),
                ("x_user_subject", "admin"),
            ],
        )
        .await;
    assert_eq!(reply.json()["headers"]["x-user-subject"], json!(["alice"]));
    assert!(reply.json()["headers"].get("x_user_subject").is_none());
}

#[tokio::test]
async fn broken_and_slow_bodies_are_the_clients_fault() {
    let config = format!("{HEAD}limits: {{ body_read_timeout: 1s }}\n{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let reply = raw(
        env.addr,
        "POST /upload HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await;
    assert_refused(&reply, 400, "request_malformed", "malformed chunked body");

    // A body that stops arriving: half of it, then silence.
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let reply = RawReply::parse(&String::from_utf8_lossy(&out));
    assert_refused(&reply, 408, "body_timeout", "stalled body");

    let errors = env.metrics.render();
    assert!(
        !errors
            .lines()
            .any(|l| l.starts_with("portcullis_upstream_errors_total{") && !l.ends_with(" 0")),
        "a client's body fault was counted against the upstream:\n{errors}"
    );
}

/// Opens `n` connections that never send a byte.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}

/// Waits until the gateway closes `s` (EOF or reset), at most 20 s.
async fn closed_by_gateway(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_give_their_slot_back() {
    let config = format!(
        "{HEAD}limits: {{ first_byte_timeout: 1s, idle_timeout: 1s, max_connections: 20 }}\n{}",
        OPEN_ROUTE
    );
    let env = TestEnv::start(&config).await;
    // Twenty connections that never send a byte take every slot...
    let mut conns = silent(env.addr, 20).await;
    // ...until the gateway closes them.
    for c in &mut conns {
        assert!(
            closed_by_gateway(c).await,
            "a silent connection was never closed"
        );
    }
    assert_eq!(
        metric(
            &env,
            "portcullis_connections_closed_total{cause=\"first_byte_timeout\"}"
        ),
        20.0
    );
    // Then a real client gets in.
    let reply = env.get("/x", &[]).await;
    assert_eq!(reply.status, 200);

    // A keep-alive connection with no request in flight is closed too.
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        closed_by_gateway(&mut s).await,
        "an idle keep-alive connection was never closed"
    );
    assert!(
        metric(
            &env,
            "portcullis_connections_closed_total{cause=\"idle_timeout\"}"
        ) >= 1.0
    );

    // A stream that runs longer than the idle timeout is not cut.
    let reply = env.get("/sse?chunks=4&interval_ms=600", &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&reply.body)
            .matches("data:")
            .count(),
        4
    );
}

#[tokio::test]
async fn connections_per_client_address_are_capped() {
    let config = format!(
        "{HEAD}limits: {{ max_connections_per_ip: 2 }}\n{}",
        OPEN_ROUTE
    );
    let env = TestEnv::start(&config).await;
    let _held = silent(env.addr, 2).await;
    let mut third = TcpStream::connect(env.addr).await.unwrap();
    assert!(
        closed_by_gateway(&mut third).await,
        "a third connection from one address was kept"
    );
    // The metric is counted by the accept loop; wait for it rather than for time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &env,
        "portcullis_connections_closed_total{cause=\"per_ip_limit\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "per_ip_limit was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(_held);
}

#[tokio::test]
async fn idle_admin_connections_cannot_starve_the_traffic_listener() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let _held = silent(env.admin, portcullis_metrics::admin::ADMIN_MAX_CONNECTIONS).await;
    let mut extra = TcpStream::connect(env.admin).await.unwrap();
    assert!(
        closed_by_gateway(&mut extra).await,
        "the admin listener took one connection too many"
    );
    assert_eq!(
        env.get("/x", &[]).await.status,
        200,
        "traffic is still served"
    );
}

/// A minimal HTTP/2 client that writes frames byte by byte, for what a real
/// client library refuses to send: floods of resets and CONTINUATION frames, and
/// an `:authority` that disagrees with `host`.
mod h2raw {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK literal without indexing, name from the static table (index < 15).
    fn literal(index: u8, value: &str) -> Vec<u8> {
        assert!(value.len() < 127);
        let mut v = vec![index, value.len() as u8];
        v.extend_from_slice(value.as_bytes());
        v
    }

    /// HPACK literal without indexing, new name.
    pub fn literal_new(name: &str, value: &str) -> Vec<u8> {
        assert!(name.len() < 127 && value.len() < 127);
        let mut v = vec![0x00, name.len() as u8];
        v.extend_from_slice(name.as_bytes());
        v.push(value.len() as u8);
        v.extend_from_slice(value.as_bytes());
        v
    }

    /// `GET http://{authority}{path}` as an HPACK block.
    pub fn request(path: &str, authority: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        block.extend(literal(4, path));
        block.extend(literal(1, authority));
        block
    }

    /// Connects, exchanges the preface and SETTINGS (acknowledging the server's).
    pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let (kind, flags, _, _) = read_frame(&mut s, Duration::from_secs(10))
            .await
            .expect("the server's SETTINGS");
        assert_eq!((kind, flags & 1), (SETTINGS, 0));
        s.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
        s
    }

    /// One frame: (type, flags, stream, payload), or `None` at EOF, an error or
    /// the timeout.
    pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
        s: &mut R,
        timeout: Duration,
    ) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        tokio::time::timeout(timeout, s.read_exact(&mut head))
            .await
            .ok()?
            .ok()?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tokio::time::timeout(timeout, s.read_exact(&mut payload))
            .await
            .ok()?
            .ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// The first HPACK byte of the response heads of `n` streams (`0x88` is
    /// `:status 200` from the static table), by stream, within 10 s.
    pub async fn response_heads(s: &mut TcpStream, n: usize) -> Vec<(u32, u8)> {
        let mut heads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while heads.len() < n && Instant::now() < deadline {
            match read_frame(s, Duration::from_secs(10)).await {
                Some((HEADERS, _, stream, payload)) => heads.push((stream, payload[0])),
                Some(_) => {}
                None => break,
            }
        }
        heads.sort_unstable();
        heads
    }

    /// How the server ended the connection: its GOAWAY error code, or a close.
    pub struct Outcome {
        pub goaway: Option<u32>,
        pub closed: bool,
    }

    pub async fn read_until_goaway<R: tokio::io::AsyncRead + Unpin>(
        s: &mut R,
        within: Duration,
    ) -> Outcome {
        let deadline = Instant::now() + within;
        let mut out = Outcome {
            goaway: None,
            closed: false,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match read_frame(s, left).await {
                // Silence until the deadline is not a close.
                None if Instant::now() >= deadline => return out,
                None => {
                    out.closed = true;
                    return out;
                }
                Some((GOAWAY, _, _, payload)) if payload.len() >= 8 => {
                    out.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                    return out;
                }
                Some(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let mut s = h2raw::connect(env.addr).await;
    let mut block = h2raw::request("/x", "a.example");
    block.extend(h2raw::literal_new("host", "b.example"));
    s.write_all(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        1,
        &block,
    ))
    .await
    .unwrap();
    let mut agreeing = h2raw::request("/y", "a.example");
    agreeing.extend(h2raw::literal_new("host", "a.example"));
    s.write_all(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        3,
        &agreeing,
    ))
    .await
    .unwrap();
    let statuses = h2raw::response_heads(&mut s, 2).await;
    // HPACK static table: 0x8c is `:status 400`, 0x88 is `:status 200`.
    assert_eq!(
        statuses,
        [(1, 0x8c), (3, 0x88)],
        "disagreeing refused, agreeing served"
    );
    assert_eq!(env.upstream.requests(), 1);
}

#[tokio::test]
async fn http2_rapid_reset_flood_ends_the_connection() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let s = h2raw::connect(env.addr).await;
    let (mut reader, mut writer) = s.into_split();
    // 20,000 streams, each opened and cancelled at once (CVE-2023-44487).
    let flood = tokio::spawn(async move {
        let block = h2raw::request("/slow?ms=2000", "gw");
        let mut batch = Vec::new();
        for i in 0..20_000u32 {
            let id = 2 * i + 1;
            batch.extend(h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_STREAM | h2raw::END_HEADERS,
                id,
                &block,
            ));
            batch.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
            if batch.len() > 64 << 10 {
                if writer.write_all(&batch).await.is_err() {
                    return i;
                }
                batch.clear();
            }
        }
        let _ = writer.write_all(&batch).await;
        20_000
    });
    let outcome = h2raw::read_until_goaway(&mut reader, Duration::from_secs(30)).await;
    let sent = flood.await.unwrap();
    assert!(
        outcome.goaway.is_some() || outcome.closed,
        "the connection survived {sent} rapid resets"
    );
    if let Some(code) = outcome.goaway {
        assert_eq!(code, 0xb, "GOAWAY with ENHANCE_YOUR_CALM");
    }
    assert!(
        env.upstream.requests() < 20_000,
        "every reset stream reached the upstream"
    );
    assert_eq!(
        env.get("/x", &[]).await.status,
        200,
        "the gateway still serves"
    );
}

#[tokio::test]
async fn http2_continuation_flood_ends_the_connection() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let s = h2raw::connect(env.addr).await;
    let (mut reader, mut writer) = s.into_split();
    // One HEADERS frame without END_HEADERS, then CONTINUATION frames that never
    // end the block: 100,000 of them, 12 MB of header fields in all.
    let flood = tokio::spawn(async move {
        let first = h2raw::request("/x", "gw");
        if writer
            .write_all(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &first))
            .await
            .is_err()
        {
            return 0;
        }
        let field = h2raw::literal_new("x-fill", &"a".repeat(110));
        let one = h2raw::frame(h2raw::CONTINUATION, 0, 1, &field);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 500).collect();
        for i in 0..200 {
            if writer.write_all(&batch).await.is_err() {
                return i * 500;
            }
        }
        100_000
    });
    let outcome = h2raw::read_until_goaway(&mut reader, Duration::from_secs(30)).await;
    let sent = flood.await.unwrap();
    assert!(
        outcome.goaway.is_some() || outcome.closed,
        "the connection survived {sent} CONTINUATION frames"
    );
    assert_eq!(
        env.upstream.requests(),
        0,
        "the endless header block never became a request"
    );
    assert_eq!(
        env.get("/x", &[]).await.status,
        200,
        "the gateway still serves"
    );
}

#[tokio::test]
async fn http2_header_lists_refused_by_the_h2_layer_are_counted_and_logged() {
    // Heads over limits.max_header_bytes get the pipeline's own 431; a header
    // list over the h2 layer's bound (16 KiB here) is refused by h2 itself
    // with a bare 431, and must still leave a trace.
    let config = format!("{HEAD}limits: {{ max_header_bytes: 4KiB }}\n{OPEN_ROUTE}");
    let env = TestEnv::start(&config).await;
    let mut s = h2raw::connect(env.addr).await;
    let mut block = h2raw::request("/x", "gw");
    for _ in 0..130 {
        block.extend(h2raw::literal_new("x-f", &"a".repeat(100)));
    }
    s.write_all(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        1,
        &block,
    ))
    .await
    .unwrap();
    s.write_all(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        3,
        &h2raw::request("/y", "gw"),
    ))
    .await
    .unwrap();
    let answered = h2raw::response_heads(&mut s, 2).await;
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert_eq!(answered[1], (3, 0x88), "the next stream is served");
    assert_ne!(answered[0].1, 0x88, "the oversized stream is refused");
    assert_eq!(env.upstream.requests(), 1, "the oversized one went nowhere");
    drop(s);
    let metric = "portcullis_http2_streams_refused_total";
    for _ in 0..200 {
        if env.metric(metric) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(env.metric(metric), 1.0, "counted when the connection ended");
}

#[tokio::test]
async fn idle_http2_connections_are_closed_too() {
    let config = format!("{HEAD}limits: {{ idle_timeout: 1s }}\n{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let mut s = h2raw::connect(env.addr).await;
    s.write_all(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        1,
        &h2raw::request("/x", "gw"),
    ))
    .await
    .unwrap();
    let outcome = h2raw::read_until_goaway(&mut s, Duration::from_secs(20)).await;
    assert!(
        outcome.goaway == Some(0) || outcome.closed,
        "an idle HTTP/2 connection was kept open"
    );
    assert!(
        metric(
            &env,
            "portcullis_connections_closed_total{cause=\"idle_timeout\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn heads_the_parser_refuses_get_the_gateways_answer() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = "v".repeat(140 << 10);
    let long_target = format!("/{}", "a".repeat(70_000));
    // Each is refused by hyper's HTTP/1.1 parser before the pipeline sees it;
    // each must still get problem+json with its reason and a request id.
    let cases: [(String, u16, &str, &str); 5] = [
        (
            format!("GET /x HTTP/1.1\r\nHost: gw\r\n{many}\r\n"),
            431,
            "headers_too_large",
            "150 header fields",
        ),
        (
            format!("GET /x HTTP/1.1\r\nHost: gw\r\nx-big: {huge}\r\n\r\n"),
            431,
            "headers_too_large",
            "a 140 KiB head",
        ),
        (
            format!("GET {long_target} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            414,
            "uri_too_long",
            "a 70,000-byte target",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
                .to_owned(),
            400,
            "request_malformed",
            "two Content-Lengths",
        ),
        (
            "GE(T /x HTTP/1.1\r\nHost: gw\r\n\r\n".to_owned(),
            400,
            "request_malformed",
            "a bad method",
        ),
    ];
    for (request, status, reason, what) in &cases {
        let reply = raw(env.addr, request).await;
        assert_refused(&reply, *status, reason, what);
        let body = reply.json();
        let id = body["request_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(id.len(), 32, "{what}: {}", reply.body);
        assert!(
            reply.head.contains(&format!("x-request-id: {id}")),
            "{what}: the header and the body name one request id: {}",
            reply.head
        );
        assert!(reply.head.contains("connection: close"), "{what}");
        assert!(
            reply
                .head
                .contains("content-type: application/problem+json"),
            "{what}"
        );
        // Kept for `portcullis explain`, like any refusal.
        let kept = env.gateway.explain().find(&id);
        assert!(kept.is_some(), "{what}: not kept for explain");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &env,
        "portcullis_connections_closed_total{cause=\"malformed\"}",
    ) < cases.len() as f64
    {
        assert!(
            Instant::now() < deadline,
            "parser refusals were not counted as closed connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(
            &env,
            "portcullis_requests_total{method=\"other\",route=\"unmatched\",status_class=\"4xx\"}"
        ),
        cases.len() as f64,
        "each parser refusal is one refused request"
    );
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn a_refused_head_pipelined_behind_a_good_request_is_answered_after_it() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    // The upstream reflects the body: one that is byte for byte a bare hyper
    // refusal must reach the client unchanged (it is a response body, not a
    // refusal), and the malformed head behind it gets the gateway's answer.
    let bare = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 00:04:43 GMT\r\n\r\n";
    let request = format!(
        "POST /reflect HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{bare}\
         GET /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        bare.len()
    );
    let text = raw_exchange(env.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The gateway's answer, not the look-alike body before it.
    let ours = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json";
    let (first, second) = text.split_at(text.find(ours).unwrap_or(text.len()));
    assert!(
        first.ends_with(bare),
        "the reflected body reached the client unchanged: {text}"
    );
    assert!(
        second.contains("\"reason\":\"request_malformed\""),
        "the pipelined bad head was answered by the gateway: {text}"
    );
    assert_eq!(env.upstream.requests(), 1);
}

#[tokio::test]
async fn a_request_with_two_framings_is_not_smuggled() {
    let config = format!("{HEAD}{}", OPEN_ROUTE);
    let env = TestEnv::start(&config).await;
    // Content-Length and Transfer-Encoding together, the chunked body carrying a
    // second request: the upstream must see one request with one framing.
    let reply = raw(
        env.addr,
        "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         24\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n\r\n0\r\n\r\n",
    )
    .await;
    if reply.status == 200 {
        let headers = &reply.json()["headers"];
        assert!(
            !(headers.get("content-length").is_some()
                && headers.get("transfer-encoding").is_some()),
            "both framings reached the upstream: {headers}"
        );
    } else {
        assert_eq!(reply.status, 400, "{}", reply.head);
    }
    assert!(
        env.upstream.requests() <= 1,
        "a second request was smuggled through"
    );
}
