//! Upstream keep-alive pooling end to end: connections are reused once a response
//! has been read, a response abandoned midway does not poison the pool, a pooled
//! connection the upstream closed is replaced without failing the request, and
//! idle connections are closed after `idle_timeout`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use portcullis_tests::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn config(target: &str, idle_timeout: &str) -> String {
    format!(
        r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
upstreams:
  u:
    targets: ["{target}"]
    idle_timeout: {idle_timeout}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u, public: true }}
"#
    )
}

fn peer_of(reply: &portcullis_tests::Reply) -> String {
    reply.json()["peer"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn connections_are_reused_after_whole_responses() {
    let env = TestEnv::start(&config("{UPSTREAM}", "90s")).await;
    let first = env.get("/echo", &[]).await;
    assert_eq!(first.status, 200);
    let peer = peer_of(&first);
    for _ in 0..20 {
        let reply = env.get("/echo", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            peer_of(&reply),
            peer,
            "a new upstream connection was opened"
        );
    }
    // A chunked (SSE) response read to its end gives its connection back too.
    let sse = env.get("/sse?chunks=3&interval_ms=1", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&sse.body).matches("data:").count(),
        3
    );
    let after = env.get("/echo", &[]).await;
    assert_eq!(peer_of(&after), peer);
}

#[tokio::test]
async fn a_response_abandoned_midway_does_not_poison_the_pool() {
    let env = TestEnv::start(&config("{UPSTREAM}", "90s")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..3 {
        let resp = client
            .get(env.url("/sse?chunks=100&interval_ms=20").parse().unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some());
        drop(body); // the client walks away mid-stream
    }
    for _ in 0..5 {
        let reply = env.get("/echo", &[]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
}

/// An HTTP/1.1 upstream that answers one request per connection with keep-alive
/// and then closes the connection after `close_after`, the way servers end idle
/// keep-alive connections. Reports each connection's end through `closed`.
async fn closing_upstream(
    close_after: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(serve_one_then_wait(stream, close_after, closed_tx));
        }
    });
    (addr, accepted, closed_rx)
}

async fn serve_one_then_wait(
    mut stream: TcpStream,
    close_after: Option<Duration>,
    closed: mpsc::UnboundedSender<()>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok")
        .await;
    match close_after {
        Some(delay) => tokio::time::sleep(delay).await,
        // Wait for the gateway to close its end.
        None => {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
    drop(stream);
    let _ = closed.send(());
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    let (addr, accepted, mut closed) = closing_upstream(Some(Duration::from_millis(20))).await;
    let env = TestEnv::start(&config(&format!("http://{addr}"), "90s")).await;
    for round in 1..=3 {
        let reply = env.get("/x", &[]).await;
        assert_eq!(reply.status, 200, "round {round}: {:?}", reply.body);
        assert_eq!(reply.body, "ok");
        // The upstream has dropped that connection before the next request.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("upstream closed its connection");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let (addr, accepted, mut closed) = closing_upstream(None).await;
    let env = TestEnv::start(&config(&format!("http://{addr}"), "200ms")).await;
    let reply = env.get("/x", &[]).await;
    assert_eq!(reply.status, 200);
    // The upstream never closes; the gateway must, once the connection idled.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the gateway closed the idle connection");
    let reply = env.get("/x", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
