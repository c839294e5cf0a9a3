//! The first README command: `portcullis demo` on the repository's gateway.yaml
//! serves a token from its development authorization server and a streamed chat
//! completion through the gateway, and refuses without a token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

fn exchange(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn demo_serves_a_streamed_chat_completion() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("demo")
        .current_dir(&repo)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _demo = Demo(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", 8080)).is_err()
        || TcpStream::connect(("127.0.0.1", 9000)).is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the demo did not start (ports 8080 and 9000)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let body = "grant_type=client_credentials";
    let reply = exchange(
        9000,
        &format!(
            "POST /token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let json = reply.split_once("\r\n\r\n").unwrap().1;
    let token: serde_json::Value = serde_json::from_str(json).unwrap();
    let token = token["access_token"].as_str().unwrap();

    let chat = r#"{"model":"portcullis-demo-1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = exchange(
        8080,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{chat}",
            chat.len()
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("text/event-stream"), "{reply}");
    assert!(reply.contains("data: [DONE]"), "{reply}");
    assert!(
        reply.matches("data: {").count() > 3,
        "a stream of chunks: {reply}"
    );

    let reply = exchange(
        8080,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("\"reason\":\"token_missing\""), "{reply}");
}
