//! Shared helpers of the end-to-end tests: each test starts its own development
//! authorization server, demo upstream and gateway on 127.0.0.1:0, and talks
//! HTTP to them over real sockets.

// Test support: a panic here is how a test reports that its set-up failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
pub use portcullis_devkit::{AuthServer, DemoUpstream, JwksFault, SigningKey};
use portcullis_metrics::Metrics;
use portcullis_proxy::Gateway;
use serde_json::Value;
use tokio::sync::oneshot;

mod oidc_provider;
pub use oidc_provider::OidcProvider;

/// The listeners and the dev issuer every test configuration starts with.
macro_rules! listeners_and_issuer {
    () => {
        r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  dev:
    issuer: "{ISSUER}"
    jwks_uri: "{ISSUER}jwks"
    jwks: { min_refetch_interval: 0s, retries: 0, timeout: 2s }
"#
    };
}

/// A configuration template; `{ISSUER}` and `{UPSTREAM}` are filled in.
pub const BASE_CONFIG: &str = concat!(
    listeners_and_issuer!(),
    r#"upstreams:
  llm:
    targets: ["{UPSTREAM}"]
    response_header_timeout: 5s
    credential: { header: x-api-key, value: "sk-test-upstream-secret" }
routes:
  - name: chat
    match: { path_prefix: /v1/chat/ }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: [portcullis-demo]
      scopes: { all_of: [chat:write] }
      claim_headers: { sub: X-Portcullis-Subject, tenant: X-Tenant }
  - name: open
    match: { path_prefix: /public/ }
    upstream: llm
    public: true
"#
);

/// The head of a test configuration: listeners, the dev issuer `dev` and the
/// upstream `llm` (placeholders filled by [`render`]); tests add their routes.
pub const ISSUER_AND_UPSTREAM: &str = concat!(
    listeners_and_issuer!(),
    r#"upstreams:
  llm: { targets: ["{UPSTREAM}"], response_header_timeout: 10s }
"#
);

/// A gateway with its own authorization server and upstream.
pub struct TestEnv {
    /// The development authorization server.
    pub auth: AuthServer,
    /// The demo upstream.
    pub upstream: DemoUpstream,
    /// The gateway's address.
    pub addr: SocketAddr,
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// Resolves when the server loop has returned.
    pub stopped: Option<oneshot::Receiver<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// Reads a whole response.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The status and the `reason` of a problem+json body, to compare at once.
    pub fn refusal(&self) -> (u16, String) {
        (self.status.as_u16(), self.reason())
    }

    /// The `reason` of a problem+json body.
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Fills the template placeholders.
pub fn render(template: &str, auth: &AuthServer, upstream: &DemoUpstream) -> String {
    template
        .replace("{ISSUER}", auth.issuer())
        .replace("{UPSTREAM}", &upstream.url())
}

/// A development authorization server and a demo upstream, each on 127.0.0.1:0.
pub async fn dev_servers() -> (AuthServer, DemoUpstream) {
    let auth = AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("auth server");
    let upstream = DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("upstream");
    (auth, upstream)
}

impl TestEnv {
    /// Starts everything with `template`.
    pub async fn start(template: &str) -> TestEnv {
        let (auth, upstream) = dev_servers().await;
        let yaml = render(template, &auth, &upstream);
        Self::start_with(auth, upstream, &yaml).await
    }

    /// Starts a gateway on the configuration file at `path`, loaded as
    /// `portcullis run` loads it, with a reloader for that file.
    pub async fn start_file(
        auth: AuthServer,
        upstream: DemoUpstream,
        path: &Path,
    ) -> (TestEnv, portcullis_proxy::Reloader) {
        let config = portcullis_config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let env = Self::start_config(auth, upstream, config).await;
        let reloader =
            portcullis_proxy::Reloader::new(path.to_path_buf(), Arc::clone(&env.gateway));
        (env, reloader)
    }

    /// Starts a gateway for an already rendered configuration.
    pub async fn start_with(auth: AuthServer, upstream: DemoUpstream, yaml: &str) -> TestEnv {
        let config = portcullis_config::load_str(yaml, "test.yaml", Path::new("."), &|_| None)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Self::start_config(auth, upstream, config).await
    }

    /// Starts a gateway for a validated configuration.
    pub async fn start_config(
        auth: AuthServer,
        upstream: DemoUpstream,
        config: portcullis_config::GatewayConfig,
    ) -> TestEnv {
        let metrics = Metrics::new().expect("metrics");
        let gateway = Gateway::new(config, Arc::clone(&metrics)).expect("gateway");
        let tls = gateway
            .tls_acceptor()
            .map(|a| a.expect("TLS configuration"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let gw = Arc::clone(&gateway);
        tokio::spawn(async move {
            portcullis_proxy::serve(gw, listener, tls, async move {
                let _ = stop_rx.await;
            })
            .await;
            let _ = done_tx.send(());
        });
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        tokio::spawn(portcullis_metrics::serve_admin(
            admin_listener,
            gateway.admin_hooks(None),
            std::future::pending(),
        ));
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestEnv {
            auth,
            upstream,
            addr,
            gateway,
            metrics,
            admin,
            stop: Some(stop_tx),
            stopped: Some(done_rx),
            client,
        }
    }

    /// `http://addr` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// A token from the dev issuer with `scope` and extra claims (null removes one).
    pub fn token(&self, scope: &str, extra: Value) -> String {
        self.auth.mint(scope, extra).expect("mint")
    }

    /// Sends a request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("gateway answered in time")
            .expect("gateway answered");
        Reply::read(resp).await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin_request(Method::GET, path, &[]).await
    }

    /// A request with headers on the admin listener.
    pub async fn admin_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let resp = self.client.request(req).await.expect("admin answered");
        Reply::read(resp).await
    }

    /// GET with headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// The value of the first metric sample whose line starts with
    /// `line_start` (name and labels, labels in sorted order), 0 when absent.
    pub fn metric(&self, line_start: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Loads `template` (placeholders filled) and applies it as a reload does.
    pub fn apply_yaml(&self, template: &str) -> Result<portcullis_proxy::ApplyReport, String> {
        let yaml = render(template, &self.auth, &self.upstream);
        let config = portcullis_config::load_str(&yaml, "gateway.yaml", Path::new("."), &|_| None)
            .map_err(|e| e.to_string())?;
        self.gateway.apply(config)
    }

    /// GET with a bearer token.
    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.get(path, &[("authorization", &auth)]).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sends raw bytes on a fresh connection and returns what came back (until close
/// or `timeout`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `script` of `tests/third_party` with the interpreter of the SDK venv
/// that `scripts/test.sh` creates (`target/sdk-venv`: the official openai,
/// anthropic and mcp packages), off the runtime so the servers keep serving;
/// asserts it succeeded and returns its standard output.
pub async fn run_sdk_script(script: &str, args: &[&str]) -> String {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "the SDKs are not installed: run scripts/test.sh (target/sdk-venv)"
    );
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .args(args)
        .current_dir(root.join("tests/third_party"));
    let output = tokio::task::spawn_blocking(move || command.output().expect("run python"))
        .await
        .expect("python task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script}: {stdout}\n{stderr}");
    stdout
}
