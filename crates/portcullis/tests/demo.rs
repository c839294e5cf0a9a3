//! The first README command: `portcullis demo` on the repository's gateway.yaml
//! serves a token from its development authorization server and a streamed chat
//! completion through the gateway, refuses without a token, prints a curl for a
//! model-routed call, routes by model (an alias, a fallback past a 429) and
//! logs each call's token usage.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
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
    let output = std::env::temp_dir().join(format!("portcullis-demo-{}.log", std::process::id()));
    let log = std::fs::File::create(&output).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("demo")
        .current_dir(&repo)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
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

    // Model routing: an alias, a fallback past the busy upstream's 429, and
    // a model no route serves.
    let call = |model: &str| {
        let chat =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        exchange(
            8080,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{chat}",
                chat.len()
            ),
        )
    };
    let reply = call("fast");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"model\":\"demo-small\""), "{reply}");
    let reply = call("smart");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"model\":\"portcullis-demo-1\""), "{reply}");
    let reply = call("gpt-4o");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.contains("\"reason\":\"model_not_allowed\""),
        "{reply}"
    );

    // The banner's curl for a model-routed call, and the usage in the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&output).unwrap();
        let logged = text.lines().any(|l| {
            l.contains("request_model=\"fast\"")
                && l.contains("model=\"demo-small\"")
                && l.contains("input_tokens=1")
                && l.contains("output_tokens=9")
        }) && text.lines().any(|l| {
            l.contains("request_model=\"smart\"") && l.contains("attempts=\"llm-busy:429 llm:200\"")
        });
        if logged {
            assert!(text.contains(r#"-d '{"model":"fast","#), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no usage in the access log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&output);
}
