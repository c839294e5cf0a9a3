//! The official MCP Python SDK through Portcullis: the SDK's own MCP server
//! (streamable HTTP) is the upstream, the SDK's OAuth client is the caller.
//! The client starts with no token; it must find the authorization server from
//! the gateway's 401 challenge and RFC 9728 resource metadata alone, get an
//! opaque token for the resource from oidc-provider, and call a tool; the
//! gateway introspects the token. The test passes only if the whole flow works.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis_tests::{OidcProvider, TestEnv, dev_servers};

fn third_party() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/third_party")
}

/// The Python of the venv scripts/test.sh installs the SDK into.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "the MCP SDK is not installed: run scripts/test.sh (it creates target/sdk-venv with mcp)"
    );
    python
}

/// The SDK's MCP server; it stops when its standard input closes.
struct McpServer {
    child: Child,
    port: u16,
}

impl Drop for McpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mcp_server() -> McpServer {
    let mut child = Command::new(python())
        .args(["mcp_flow.py", "server"])
        .current_dir(third_party())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line.strip_prefix("READY ") {
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the MCP server did not start");
    McpServer { child, port }
}

const TEMPLATE: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  op:
    issuer: "{AS}"
    tokens: opaque
    introspection: { client_id: gateway, client_secret: gateway-secret }
upstreams:
  mcp: { targets: ["http://127.0.0.1:{MCP}"], response_header_timeout: 30s }
routes:
  - name: mcp
    match: { path_prefix: /mcp }
    upstream: mcp
    auth:
      issuers: [op]
      audiences: ["{RESOURCE}"]
      resource: "{RESOURCE}"
      scopes: { all_of: [mcp] }
"#;

fn config(op: &OidcProvider, mcp: u16, resource: &str) -> portcullis_config::GatewayConfig {
    let yaml = TEMPLATE
        .replace("{AS}", op.issuer())
        .replace("{MCP}", &mcp.to_string())
        .replace("{RESOURCE}", resource);
    portcullis_config::load_str(&yaml, "gateway.yaml", Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_sdk_discovers_the_authorization_server_and_calls_a_tool_through_the_gateway() {
    let op = OidcProvider::start(None);
    let server = start_mcp_server();
    let (auth, upstream) = dev_servers().await;
    // The resource is the gateway's own URL, known once it listens: start,
    // then apply the configuration naming it, as a reload would.
    let env = TestEnv::start_config(
        auth,
        upstream,
        config(&op, server.port, "http://127.0.0.1:1/mcp"),
    )
    .await;
    let resource = format!("http://{}/mcp", env.addr);
    env.gateway
        .apply(config(&op, server.port, &resource))
        .unwrap();

    // Without a token, nothing reaches the MCP server.
    let r = env.get("/mcp", &[]).await;
    assert_eq!(r.refusal(), (401, "token_missing".into()));

    let output = tokio::task::spawn_blocking({
        let resource = resource.clone();
        let issuer = op.issuer().to_owned();
        move || {
            Command::new(python())
                .args(["mcp_flow.py", "client", &resource, &issuer])
                .current_dir(third_party())
                .output()
                .expect("python")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the MCP client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("RESULT 5"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("TOKEN_REQUESTS 1"),
        "one token, found through the challenge: {stdout}"
    );

    // The gateway refused the first, tokenless call with the challenge that
    // led the client on, and introspected the token it came back with.
    assert!(
        env.metric("portcullis_auth_decisions_total{outcome=\"deny\",reason=\"token_missing\",route=\"mcp\"}")
            >= 2.0
    );
    assert!(
        env.metric(
            "portcullis_auth_decisions_total{outcome=\"allow\",reason=\"none\",route=\"mcp\"}"
        ) >= 2.0,
        "initialize and the tool call passed the gateway"
    );
    assert_eq!(
        env.metric(&format!(
            "portcullis_introspection_requests_total{{issuer=\"{}\",outcome=\"active\"}}",
            op.issuer()
        )),
        1.0,
        "one introspection for the whole session"
    );
}
