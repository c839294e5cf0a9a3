//! Transport end to end: TLS termination with ALPN (h2 and http/1.1), HTTP/2 with
//! prior knowledge (h2c), an https upstream trusted through a private CA spoken to
//! over HTTP/2, and the connection limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_tests::{AuthServer, DemoUpstream, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A private CA and a server certificate for localhost / 127.0.0.1, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
    }
}

async fn servers() -> (AuthServer, DemoUpstream) {
    portcullis_tests::dev_servers().await
}

fn public_config(extra_listen: &str, target: &str, upstream_extra: &str) -> String {
    format!(
        r#"
listen: {{ address: "127.0.0.1:0"{extra_listen} }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
upstreams:
  u: {{ targets: ["{target}"]{upstream_extra} }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u, public: true }}
"#
    )
}

async fn tls_gateway(pki: &Pki) -> TestEnv {
    let (auth, upstream) = servers().await;
    let d = pki.dir.path().display();
    let tls = format!(", tls: {{ cert_file: \"{d}/cert.pem\", key_file: \"{d}/key.pem\" }}");
    let yaml = public_config(&tls, &upstream.url(), "");
    TestEnv::start_with(auth, upstream, &yaml).await
}

fn tls_client(
    pki: &Pki,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
> {
    let tls = portcullis_jwks::tls::client_config(Some(pki.ca_pem.as_bytes())).unwrap();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2);
    b.build(connector)
}

#[tokio::test]
async fn tls_termination_negotiates_h2_and_http1() {
    let pki = pki();
    let env = tls_gateway(&pki).await;
    let url: http::Uri = format!("https://localhost:{}/hello", env.addr.port())
        .parse()
        .unwrap();
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let resp = tls_client(&pki, h2).get(url.clone()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version, "ALPN h2={h2}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    }
}

/// Over TLS too, a head hyper's parser refuses (more than 100 header fields)
/// gets the gateway's problem+json with its reason and request id.
#[tokio::test]
async fn a_head_the_parser_refuses_over_tls_gets_the_gateways_answer() {
    let pki = pki();
    let env = tls_gateway(&pki).await;
    let mut config = portcullis_jwks::tls::client_config(Some(pki.ca_pem.as_bytes())).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    tls.write_all(format!("GET /x HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    assert!(
        reply.contains("\"reason\":\"headers_too_large\""),
        "{reply}"
    );
    assert!(reply.contains("x-request-id: "), "{reply}");
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let (auth, upstream) = servers().await;
    let yaml = public_config("", &upstream.url(), "");
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(true);
    let client = b.build_http::<Empty<Bytes>>();
    let resp = client.get(env.url("/x").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echo["headers"]["host"][0]
            .as_str()
            .map(|h| h.starts_with("127.0.0.1:")),
        Some(true),
        "Host set from the target"
    );
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_over_http2() {
    let pki = pki();
    let inner = tls_gateway(&pki).await;
    let (auth, upstream) = servers().await;
    let ca = pki.dir.path().join("ca.pem");
    let target = format!("https://localhost:{}", inner.addr.port());
    let yaml = public_config(
        "",
        &target,
        &format!(", http2: true, ca_file: \"{}\"", ca.display()),
    );
    let outer = TestEnv::start_with(auth, upstream, &yaml).await;
    let reply = outer.get("/through/two/gateways", &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["uri"], "/through/two/gateways");
    assert_eq!(inner.upstream.requests(), 1);

    // Without the private CA the certificate is refused: 502, nothing forwarded.
    let (auth, upstream) = servers().await;
    let yaml = public_config("", &target, ", http2: true");
    let untrusting = TestEnv::start_with(auth, upstream, &yaml).await;
    let reply = untrusting.get("/x", &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason().as_str()),
        (502, "upstream_unreachable")
    );
    assert_eq!(inner.upstream.requests(), 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let (auth, upstream) = servers().await;
    let yaml = public_config("", &upstream.url(), "")
        .replace("admin:", "limits: { max_connections: 1 }\nadmin:");
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    let mut first = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    first
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The first connection stays open; a second one is closed at once.
    let mut second = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let _ = second
        .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the second connection got an answer: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        env.metrics
            .render()
            .contains("portcullis_rejected_connections_total 1")
    );
    drop(first);
}

#[tokio::test]
async fn http2_upstream_gets_the_host_as_authority_only() {
    // h2c by prior knowledge to the demo upstream; with and without preserve_host.
    for (preserve, expected_authority) in [(true, Some("api.example.test")), (false, None)] {
        let (auth, upstream) = servers().await;
        let target = upstream.url();
        let yaml = format!(
            r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
upstreams:
  u: {{ targets: ["{target}"], http2: true }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u, public: true, preserve_host: {preserve} }}
"#
        );
        let env = TestEnv::start_with(auth, upstream, &yaml).await;
        let reply = env.get("/h2/x", &[("host", "api.example.test")]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let echo = reply.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        // RFC 9113 §8.3.1: the host travels as :authority, never also as Host.
        assert!(echo["headers"].get("host").is_none(), "{echo}");
        let uri: http::Uri = echo["uri"].as_str().unwrap().parse().unwrap();
        let authority = uri.authority().unwrap().as_str().to_owned();
        let target_authority = target.trim_start_matches("http://");
        assert_eq!(
            authority,
            expected_authority.unwrap_or(target_authority),
            "preserve_host: {preserve}"
        );
        assert_eq!(uri.path(), "/h2/x");
    }
}

#[tokio::test]
async fn concurrent_first_requests_share_one_http2_connection() {
    let (auth, upstream) = servers().await;
    let yaml =
        public_config("", "{UPSTREAM}", ", http2: true").replace("{UPSTREAM}", &upstream.url());
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    // All arrive before any connection exists; one dials, the others wait for it.
    let paths: Vec<String> = (0..20).map(|i| format!("/c/{i}")).collect();
    let replies = futures_util::future::join_all(paths.iter().map(|p| env.get(p, &[]))).await;
    let mut peers = std::collections::BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["version"], "HTTP/2.0");
        peers.insert(reply.json()["peer"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        peers.len(),
        1,
        "one upstream connection expected: {peers:?}"
    );
}

/// Whether a fresh TLS connection trusting only `pki`'s CA gets an answer.
async fn trusted_by(pki: &Pki, port: u16) -> bool {
    let url: http::Uri = format!("https://localhost:{port}/x").parse().unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tls_client(pki, false).get(url)).await,
        Ok(Ok(r)) if r.status() == 200
    )
}

/// A renewed certificate (files replaced, as cert-manager or a Kubernetes Secret
/// update does) is presented to new connections without a restart; a broken one
/// is refused and the last good one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_picked_up_and_broken_ones_refused() {
    let (old, renewed) = (pki(), pki());
    let dir = tempfile::tempdir().unwrap();
    let install = |from: &Pki| {
        for name in ["key.pem", "cert.pem"] {
            let tmp = dir.path().join(format!(".{name}.tmp"));
            std::fs::copy(from.dir.path().join(name), &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
    };
    install(&old);
    let (auth, upstream) = servers().await;
    let d = dir.path().display();
    let tls = format!(", tls: {{ cert_file: \"{d}/cert.pem\", key_file: \"{d}/key.pem\" }}");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, public_config(&tls, &upstream.url(), "")).unwrap();
    let (env, reloader) = TestEnv::start_file(auth, upstream, &path).await;
    let _watch = reloader.watch().unwrap();
    let port = env.addr.port();
    assert!(trusted_by(&old, port).await);
    assert!(!trusted_by(&renewed, port).await);

    install(&renewed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !trusted_by(&renewed, port).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!trusted_by(&old, port).await, "the old certificate is gone");

    // A broken certificate: refused, the renewed one stays.
    let failures = || {
        env.metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("portcullis_config_reloads_total{outcome=\"failure\"} ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let before = failures();
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while failures() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken certificate was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = reloader.reload().unwrap_err();
    assert!(refused.contains("cert.pem"), "{refused}");
    assert!(
        trusted_by(&renewed, port).await,
        "the last good certificate keeps serving"
    );
}
