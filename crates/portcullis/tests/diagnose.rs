//! `portcullis diagnose` and `token inspect` through the real binary: one case per
//! reason code (the JSON names the step and the reason, exit 1), an allowed
//! request (exit 0), failing layers for an unreachable authorization server and
//! upstream, and no token signature in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::process::Command;

use portcullis_devkit::{AuthServer, DemoUpstream, SigningKey, b64, unsigned_token};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

struct Env {
    auth: AuthServer,
    down_iss: String,
    _upstream: DemoUpstream,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn garbage_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"SMTP 220 hello there\r\n\r\n").await;
            });
        }
    });
    port
}

async fn env() -> Env {
    let auth = AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let upstream = DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (dead, garbage) = (dead_port().await, garbage_server().await);
    let (iss, up) = (auth.issuer().to_owned(), upstream.url());
    let yaml = format!(
        r#"
limits: {{ max_header_bytes: 16KiB }}
issuers:
  dev: {{ issuer: "{iss}" }}
  down: {{ issuer: "http://127.0.0.1:{dead}/" }}
  http500: {{ issuer: "https://status.example/", jwks_uri: "{up}/status/500" }}
upstreams:
  llm: {{ targets: ["{up}"], health_path: /healthz }}
  dead: {{ targets: ["http://127.0.0.1:{dead}"] }}
  tls: {{ targets: ["https://127.0.0.1:{up_port}"] }}
  slow: {{ targets: ["{up}"], health_path: "/slow?ms=5000", response_header_timeout: 300ms }}
  garbage: {{ targets: ["http://127.0.0.1:{garbage}"], health_path: /x, response_header_timeout: 3s }}
  oauth: {{ targets: ["{up}"], credential: {{ oauth: {{ token_url: "http://127.0.0.1:{dead}/token", client_id: gw, client_secret: s }} }} }}
routes:
  - {{ name: chat, match: {{ path_prefix: /v1/ }}, upstream: llm, auth: {{ issuers: [dev], audiences: [portcullis-demo], scopes: {{ all_of: [chat:write] }} }} }}
  - {{ name: tenant, match: {{ path_prefix: /tenant/ }}, upstream: llm, auth: {{ issuers: [dev], audiences: [portcullis-demo], claims: [{{ claim: tenant, equals: acme }}] }} }}
  - {{ name: down, match: {{ path_prefix: /down/ }}, upstream: llm, auth: {{ issuers: [down], audiences: [portcullis-demo] }} }}
  - {{ name: http500, match: {{ path_prefix: /http500/ }}, upstream: llm, auth: {{ issuers: [http500], audiences: [portcullis-demo] }} }}
  - {{ name: postonly, match: {{ path: /post, methods: [POST] }}, upstream: llm, public: true }}
  - {{ name: guarded, match: {{ path_prefix: /guarded/ }}, upstream: llm, public: true, max_body: 1MiB, ip: {{ deny: [203.0.113.0/24] }} }}
  - {{ name: dead, match: {{ path_prefix: /dead/ }}, upstream: dead, public: true }}
  - {{ name: tls, match: {{ path_prefix: /tls/ }}, upstream: tls, public: true }}
  - {{ name: slow, match: {{ path_prefix: /slow/ }}, upstream: slow, public: true }}
  - {{ name: garbage, match: {{ path_prefix: /garbage/ }}, upstream: garbage, public: true }}
  - {{ name: oauth, match: {{ path_prefix: /oauth/ }}, upstream: oauth, public: true }}
  - {{ name: ai, match: {{ path: /ai/chat, models: ["demo-*"] }}, upstream: llm, auth: {{ issuers: [dev], audiences: [portcullis-demo], models: {{ scope_prefix: "model:" }} }} }}
"#,
        up_port = upstream.handle.addr.port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    Env {
        auth,
        down_iss: format!("http://127.0.0.1:{dead}/"),
        _upstream: upstream,
        _dir: dir,
        config,
    }
}

/// Runs the binary off the runtime (the servers keep serving meanwhile).
async fn diagnose(env: &Env, args: &[&str]) -> (i32, Value, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("diagnose")
        .arg("--config")
        .arg(&env.config)
        .arg("--json")
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (out.status.code().unwrap_or(-1), doc, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_names_its_step() {
    let env = env().await;
    let g = "http://gw.example";
    let token = |scope: &str, extra: Value| env.auth.mint(scope, extra).unwrap();
    let good = token("chat:write", json!({}));
    let claims = env.auth.claims("chat:write", json!({}));
    let stranger = SigningKey::rsa("stranger").unwrap().sign(&claims).unwrap();
    let impostor = SigningKey::rsa("dev-rsa-1").unwrap().sign(&claims).unwrap();
    let big_header = format!("X-Big: {}", "v".repeat(17_000));
    let expired = token("chat:write", json!({"exp": 1000}));
    let future = token("chat:write", json!({"nbf": 4_000_000_000u64}));
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        ("route_not_found", vec![format!("{g}/nowhere")], "route", ""),
        // The pipeline's own checks, reached by diagnose because it runs them.
        (
            "host_invalid",
            vec![
                format!("{g}/v1/x"),
                "-H".into(),
                "Host: other.example".into(),
            ],
            "canonical",
            "Host",
        ),
        (
            "upgrade_not_allowed",
            vec![
                format!("{g}/v1/x"),
                "-H".into(),
                "Connection: upgrade".into(),
                "-H".into(),
                "Upgrade: websocket".into(),
            ],
            "upgrade",
            "websocket",
        ),
        (
            "cors_not_allowed",
            vec![
                format!("{g}/v1/x"),
                "-X".into(),
                "OPTIONS".into(),
                "-H".into(),
                "Origin: https://page.example".into(),
                "-H".into(),
                "Access-Control-Request-Method: GET".into(),
            ],
            "cors",
            "",
        ),
        (
            "path_invalid",
            vec![format!("{g}/v1/../admin")],
            "canonical",
            "..",
        ),
        ("method_not_allowed", vec![format!("{g}/post")], "route", ""),
        (
            "ip_denied",
            vec![
                format!("{g}/guarded/x"),
                "--client-ip".into(),
                "203.0.113.5".into(),
            ],
            "client_ip",
            "DENIED by 203.0.113.0/24",
        ),
        (
            "headers_too_large",
            vec![format!("{g}/guarded/x"), "-H".into(), big_header],
            "request",
            "",
        ),
        // What hyper's HTTP/1.1 parser refuses before the pipeline runs.
        (
            "headers_too_large",
            std::iter::once(format!("{g}/guarded/x"))
                .chain((0..120).flat_map(|i| ["-H".to_owned(), format!("X-H{i}: v")]))
                .collect(),
            "request",
            "121 header fields",
        ),
        (
            "uri_too_long",
            vec![format!("{g}/guarded/{}", "a".repeat(70_000))],
            "request",
            "65,534",
        ),
        (
            "body_too_large",
            vec![
                format!("{g}/guarded/x"),
                "--content-length".into(),
                "2000000".into(),
            ],
            "request",
            "",
        ),
        (
            "token_missing",
            vec![format!("{g}/v1/x")],
            "authorization_header",
            "",
        ),
        (
            "request_malformed",
            vec![format!("{g}/v1/x"), "--token".into(), "a b".into()],
            "authorization_header",
            "",
        ),
        (
            "token_too_large",
            vec![format!("{g}/v1/x"), "--token".into(), "a".repeat(9000)],
            "authorization_header",
            "",
        ),
        (
            "token_malformed",
            vec![format!("{g}/v1/x"), "--token".into(), "abc.def".into()],
            "token_structure",
            "2 segments",
        ),
        (
            "issuer_mismatch",
            vec![
                format!("{g}/v1/x"),
                "--token".into(),
                token("chat:write", json!({"iss": "http://evil/"})),
            ],
            "issuer",
            "",
        ),
        (
            "algorithm_not_allowed",
            vec![
                format!("{g}/v1/x"),
                "--token".into(),
                unsigned_token(&claims),
            ],
            "token_header",
            "",
        ),
        (
            "idp_unavailable",
            vec![
                format!("{g}/down/x"),
                "--token".into(),
                token("", json!({"iss": env.down_iss})),
            ],
            "keys",
            "TCP layer",
        ),
        (
            "key_unknown",
            vec![format!("{g}/v1/x"), "--token".into(), stranger],
            "kid",
            "stranger",
        ),
        (
            "signature_invalid",
            vec![format!("{g}/v1/x"), "--token".into(), impostor],
            "signature",
            "",
        ),
        (
            "audience_mismatch",
            vec![
                format!("{g}/v1/x"),
                "--token".into(),
                token("chat:write", json!({"aud": "other"})),
            ],
            "audience",
            "",
        ),
        (
            "token_expired",
            vec![format!("{g}/v1/x"), "--token".into(), expired],
            "time",
            "expired",
        ),
        (
            "token_not_yet_valid",
            vec![format!("{g}/v1/x"), "--token".into(), future],
            "time",
            "",
        ),
        (
            "scope_insufficient",
            vec![
                format!("{g}/v1/x"),
                "--token".into(),
                token("chat:read", json!({})),
            ],
            "scopes",
            "missing scope chat:write",
        ),
        (
            "claim_mismatch",
            vec![
                format!("{g}/tenant/x"),
                "--token".into(),
                token("", json!({"tenant": "globex"})),
            ],
            "claims",
            "tenant",
        ),
        (
            "upstream_unreachable",
            vec![format!("{g}/dead/x")],
            "upstream",
            "TCP",
        ),
        (
            "upstream_timeout",
            vec![format!("{g}/slow/x")],
            "upstream",
            "",
        ),
        (
            "upstream_protocol_error",
            vec![format!("{g}/garbage/x")],
            "upstream",
            "",
        ),
    ];
    for (reason, mut args, step, needle) in cases {
        if reason == "method_not_allowed" {
            args.extend(["-X".to_owned(), "GET".to_owned()]);
        }
        let mut full = vec!["--url".to_owned()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, doc, stdout) = diagnose(&env, &refs).await;
        let reason_step = step;
        assert_eq!(code, 1, "{reason}: {stdout}");
        assert_eq!(doc["verdict"], "refused", "{reason}");
        assert_eq!(doc["reason"], reason, "{reason}: {stdout}");
        assert_eq!(doc["step"], reason_step, "{reason}");
        let failing: Vec<&Value> = doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["outcome"] == "fail")
            .collect();
        assert_eq!(failing.len(), 1, "{reason}: exactly one failing step");
        assert_eq!(failing[0]["step"], reason_step);
        assert!(failing[0]["fix"].as_str().is_some_and(|f| !f.is_empty()));
        assert!(
            failing[0]["evidence"].as_str().unwrap().contains(needle),
            "{reason}: {}",
            failing[0]["evidence"]
        );
    }
    let (code, doc, stdout) =
        diagnose(&env, &["--url", &format!("{g}/v1/x"), "--token", &good]).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(doc["verdict"], "allowed");
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] != "fail")
    );
    let signature = good.rsplit('.').next().unwrap();
    assert!(
        !stdout.contains(signature),
        "the token's signature must never be printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_layers_are_named() {
    let env = env().await;
    let tok = env.auth.mint("", json!({"iss": env.down_iss})).unwrap();
    let (_, doc, _) = diagnose(&env, &["--url", "http://g/down/x", "--token", &tok]).await;
    let ev = step(&doc, "keys");
    assert!(ev.contains("TCP layer") && ev.contains("refused"), "{ev}");

    let tok = env
        .auth
        .mint("", json!({"iss": "https://status.example/"}))
        .unwrap();
    let (_, doc, _) = diagnose(&env, &["--url", "http://g/http500/x", "--token", &tok]).await;
    let ev = step(&doc, "keys");
    assert!(ev.contains("HTTP layer") && ev.contains("500"), "{ev}");

    let (_, doc, _) = diagnose(&env, &["--url", "http://g/tls/x"]).await;
    assert!(
        step(&doc, "upstream").starts_with("TLS:"),
        "{}",
        step(&doc, "upstream")
    );
    let (_, doc, _) = diagnose(&env, &["--url", "http://g/dead/x"]).await;
    assert!(
        step(&doc, "upstream").contains("refused"),
        "{}",
        step(&doc, "upstream")
    );
    // The upstream's own token endpoint, named with its layer.
    let (code, doc, _) = diagnose(&env, &["--url", "http://g/oauth/x"]).await;
    assert_eq!(code, 1);
    assert_eq!(doc["reason"], "upstream_credential_unavailable", "{doc}");
    let ev = step(&doc, "upstream");
    assert!(ev.contains("TCP") && ev.contains("token endpoint"), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_routes_are_diagnosed_with_the_described_model() {
    let env = env().await;
    let token = env
        .auth
        .mint("chat:write model:demo-small", json!({}))
        .unwrap();
    let run = |model: Option<&'static str>| {
        let mut args = vec![
            "--url".to_owned(),
            "http://g/ai/chat".to_owned(),
            "-X".to_owned(),
            "POST".to_owned(),
            "--token".to_owned(),
            token.clone(),
            "--no-upstream".to_owned(),
        ];
        if let Some(m) = model {
            args.extend(["--model".to_owned(), m.to_owned()]);
        }
        args
    };
    let call = |args: Vec<String>| {
        let env = &env;
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            diagnose(env, &refs).await
        }
    };
    // Served by the route and granted to the token.
    let (code, doc, _) = call(run(Some("demo-small"))).await;
    assert_eq!(code, 0, "{doc}");
    assert!(
        step(&doc, "model").contains("\"demo-small\" is served by the route and granted"),
        "{doc}"
    );
    // Served, not granted: the model step names the grant.
    let (code, doc, _) = call(run(Some("demo-large"))).await;
    assert_eq!(code, 1);
    assert_eq!(doc["reason"], "model_not_allowed", "{doc}");
    assert!(step(&doc, "model").contains("model:demo-small"), "{doc}");
    // Not served by any route of the path: refused at the route step.
    let (code, doc, _) = call(run(Some("gpt-4o"))).await;
    assert_eq!(code, 1);
    assert_eq!(doc["reason"], "model_not_allowed", "{doc}");
    assert!(step(&doc, "route").contains("demo-*"), "{doc}");
    // No model described: the route cannot be chosen, and the output says how.
    let (code, doc, _) = call(run(None)).await;
    assert_eq!(code, 1);
    assert_eq!(doc["reason"], "request_malformed", "{doc}");
    assert!(doc.to_string().contains("--model"), "{doc}");
}

fn step(doc: &Value, name: &str) -> String {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap()["evidence"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchecked_inputs_exit_2_and_text_output_reads_well() {
    let env = env().await;
    let out = Command::new(BIN)
        .args([
            "diagnose",
            "--config",
            "/nonexistent.yaml",
            "--url",
            "http://g/",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let cfg = env.config.clone();
    let good = env.auth.mint("chat:write", json!({})).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("diagnose")
            .arg("--config")
            .arg(cfg)
            .args(["--url", "http://g/v1/x", "--token", &good])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("✓ signature"), "{text}");
    assert!(text.contains("verdict: ALLOWED"), "{text}");
}

#[test]
fn token_inspect_marks_unverified_and_hides_the_signature() {
    let claims = json!({"iss": "https://idp/", "exp": 4_000_000_000u64, "iat": 1_700_000_000, "scope": "a b"});
    let token = format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "k"}).to_string()),
        b64(claims.to_string()),
        b64("secret-signature-bytes")
    );
    let out = Command::new(BIN)
        .args(["token", "inspect", &token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("UNVERIFIED"), "{text}");
    assert!(text.contains("\"scope\": \"a b\""), "{text}");
    assert!(text.contains("time left"), "{text}");
    assert!(!text.contains(&b64("secret-signature-bytes")), "{text}");
    let out = Command::new(BIN)
        .args(["token", "inspect", "not-a-token"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_runs_the_forward_step_and_reports_the_upstreams_answer() {
    let env = env().await;
    let good = env.auth.mint("chat:write", json!({})).unwrap();
    let (code, doc, stdout) = diagnose(
        &env,
        &[
            "--url",
            "http://gw.example/v1/x",
            "--token",
            &good,
            "--send",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let upstream = step(&doc, "upstream");
    assert!(upstream.contains("upstream llm answered 200"), "{upstream}");
    assert!(!stdout.contains(good.rsplit('.').next().unwrap()));
    // The upstream's own refusal is a warning, not the gateway's decision.
    let (code, doc, _) = diagnose(
        &env,
        &[
            "--url",
            "http://gw.example/v1/status/401",
            "--token",
            &good,
            "--send",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(step(&doc, "upstream").contains("the upstream itself refused"));
    // An upstream that cannot be reached fails the step with its reason.
    let (code, doc, _) = diagnose(&env, &["--url", "http://gw.example/dead/x", "--send"]).await;
    assert_eq!(code, 1);
    assert_eq!(doc["reason"], "upstream_unreachable");
    assert_eq!(doc["step"], "upstream");
}
