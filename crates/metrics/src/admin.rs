//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, `POST /-/reload`,
//! and the explain endpoints `GET /debug/requests[/{request_id}]`. It is separate
//! from the traffic listener and binds to loopback by default. With
//! `admin.token_file` set, everything but the probes (and `/metrics`, unless
//! `admin.protect_metrics`) needs that token, as `Authorization: Bearer <token>`
//! or as the password of HTTP Basic (so a browser can open the pages).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::recorder::Metrics;

/// Whether the gateway is ready, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready to serve.
    pub ready: bool,
    /// One line per check (`issuer dev: fresh`).
    pub checks: Vec<String>,
}

/// A boxed future, for the reload hook.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Reloads the configuration: `Ok(summary)` or `Err(every problem)`.
pub type ReloadHook = Arc<dyn Fn() -> BoxFuture<Result<String, String>> + Send + Sync>;

/// Who may use the admin endpoints: read for every request, since a reload can
/// change it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// The SHA-256 of the admin token; `None`: no authentication.
    pub token_digest: Option<[u8; 32]>,
    /// Whether `/metrics` needs the token too.
    pub protect_metrics: bool,
}

/// What the explain hook found for a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// The trace, as JSON and as text.
    Found {
        /// The JSON document.
        json: String,
        /// The checklist text.
        text: String,
        /// The trace as a page (linked from the status page).
        html: String,
    },
    /// Not kept: allowed, never seen, or older than the ring holds.
    NotKept {
        /// How many refused requests the ring keeps.
        capacity: usize,
    },
}

/// Explains a request by id.
pub type ExplainHook = Arc<dyn Fn(&str) -> Explanation + Send + Sync>;

/// What the admin endpoints consult.
#[derive(Clone)]
pub struct AdminHooks {
    /// The exporter.
    pub metrics: Arc<Metrics>,
    /// Computes readiness and refreshes scrape-time gauges.
    pub readiness: Arc<dyn Fn() -> Readiness + Send + Sync>,
    /// Called before each scrape to refresh gauges computed on demand.
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
    /// Reloads the configuration; `Ok(summary)` or `Err(errors)`.
    pub reload: Option<ReloadHook>,
    /// Who may use the endpoints.
    pub access: Arc<dyn Fn() -> AdminAccess + Send + Sync>,
    /// Explains a kept request by id.
    pub explain: Option<ExplainHook>,
    /// The newest kept requests, newest first, as a JSON array.
    pub recent: Option<Arc<dyn Fn(usize) -> String + Send + Sync>>,
    /// The status page (`GET /`), HTML.
    pub status_page: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// The headers of every admin HTML page: no script may run, nothing is cached.
const HTML_HEADERS: [(&str, &str); 5] = [
    ("content-type", "text/html; charset=utf-8"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
];

/// `text` with `& < > " '` escaped for HTML text and attribute values (the one
/// escape of every admin page).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    for (name, value) in HTML_HEADERS {
        r.headers_mut().insert(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        );
    }
    r
}

/// Paths open without the admin token: the probes a kubelet or load balancer
/// sends without credentials.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Whether `req` may use its path under `access`.
fn authorized(req: &http::Request<Incoming>, access: &AdminAccess) -> bool {
    let Some(expected) = &access.token_digest else {
        return true;
    };
    let path = req.uri().path();
    if OPEN_PATHS.contains(&path) || (path == "/metrics" && !access.protect_metrics) {
        return true;
    }
    req.headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(presented_token)
        .any(|token| same_digest(&sha256(token.as_bytes()), expected))
}

/// The token of `Bearer <token>`, or the password of `Basic base64(user:password)`.
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Compares two digests in constant time (the digest already hides the
/// token's length).
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint needs the admin token (admin.token_file): send `Authorization: Bearer <token>`\n".into(),
        "text/plain; charset=utf-8",
    );
    let headers = r.headers_mut();
    headers.append(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
    );
    headers.append(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"portcullis-admin\", charset=\"UTF-8\""),
    );
    r
}

/// `GET /debug/requests/{id}`: JSON, or text for `?format=text` or an
/// `Accept` that prefers `text/plain`.
fn explain_response(
    req: &http::Request<Incoming>,
    id: &str,
    hooks: &AdminHooks,
) -> Response<Full<Bytes>> {
    let json_type = "application/json";
    let Some(explain) = &hooks.explain else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "explain is not available\n".into(),
            "text/plain; charset=utf-8",
        );
    };
    if !is_request_id(id) {
        let body = serde_json::json!({
            "error": "malformed_request_id",
            "message": "a request id is 1 to 128 characters of A-Z a-z 0-9 - _ . : (the x-request-id of the response, or request_id of its body)",
        });
        return text(StatusCode::BAD_REQUEST, body.to_string() + "\n", json_type);
    }
    let format = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("format=")));
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start();
    let wants_text =
        format == Some("text") || (format.is_none() && accept.starts_with("text/plain"));
    let wants_html =
        format == Some("html") || (format.is_none() && accept.starts_with("text/html"));
    match explain(id) {
        Explanation::Found {
            json,
            text: body,
            html: page,
        } => {
            if wants_html {
                html(StatusCode::OK, page)
            } else if wants_text {
                text(StatusCode::OK, body, "text/plain; charset=utf-8")
            } else {
                text(StatusCode::OK, json + "\n", json_type)
            }
        }
        Explanation::NotKept { capacity } => {
            let message = if capacity == 0 {
                "explain is off: admin.explain.capacity is 0, so no trace is kept".to_owned()
            } else {
                format!(
                    "no trace is kept for request {id}: it was allowed (allowed requests are not kept), was decided by another replica, or is older than the last {capacity} refusals"
                )
            };
            if wants_html {
                let escaped = escape_html(&message);
                return html(
                    StatusCode::NOT_FOUND,
                    format!(
                        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>not kept</title></head><body><p><a href=\"/\">← status</a></p><p>{escaped}</p></body></html>\n"
                    ),
                );
            }
            if wants_text {
                return text(
                    StatusCode::NOT_FOUND,
                    message + "\n",
                    "text/plain; charset=utf-8",
                );
            }
            let body =
                serde_json::json!({"error": "not_kept", "request_id": id, "message": message});
            text(StatusCode::NOT_FOUND, body.to_string() + "\n", json_type)
        }
    }
}

/// Whether `id` is shaped like a request id (what `x-request-id` accepts).
pub fn is_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(req: http::Request<Incoming>, hooks: AdminHooks) -> Response<Full<Bytes>> {
    // HEAD is GET without the body (hyper leaves the body out): load balancers
    // and uptime checks probe with it.
    let method = if req.method() == Method::HEAD {
        &Method::GET
    } else {
        req.method()
    };
    if !authorized(&req, &(hooks.access)()) {
        return unauthorized();
    }
    let path = req.uri().path();
    if method == Method::GET
        && let Some(id) = path.strip_prefix("/debug/requests/")
    {
        return explain_response(&req, id, &hooks);
    }
    match (method, path) {
        (&Method::GET, "/") => match &hooks.status_page {
            Some(page) => html(StatusCode::OK, page()),
            None => text(
                StatusCode::NOT_FOUND,
                "no status page here: /metrics /healthz /readyz\n".into(),
                "text/plain; charset=utf-8",
            ),
        },
        (&Method::GET, "/debug/requests") => match &hooks.recent {
            Some(recent) => text(StatusCode::OK, recent(100) + "\n", "application/json"),
            None => text(
                StatusCode::NOT_IMPLEMENTED,
                "explain is not available\n".into(),
                "text/plain; charset=utf-8",
            ),
        },
        (&Method::GET, "/metrics") => {
            (hooks.before_scrape)();
            text(
                StatusCode::OK,
                hooks.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (&Method::GET, "/healthz") => {
            text(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8")
        }
        (&Method::GET, "/readyz") => {
            let r = (hooks.readiness)();
            let status = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = if r.ready {
                "ready\n".to_owned()
            } else {
                "not ready\n".to_owned()
            };
            for c in r.checks {
                body.push_str(&c);
                body.push('\n');
            }
            text(status, body, "text/plain; charset=utf-8")
        }
        (&Method::POST, "/-/reload") => match &hooks.reload {
            Some(reload) => match reload().await {
                Ok(summary) => text(StatusCode::OK, summary + "\n", "text/plain; charset=utf-8"),
                Err(errors) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    errors + "\n",
                    "text/plain; charset=utf-8",
                ),
            },
            None => text(
                StatusCode::NOT_IMPLEMENTED,
                "reload is not available\n".into(),
                "text/plain; charset=utf-8",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics /healthz /readyz /debug/requests/{request_id} POST /-/reload\n"
                .into(),
            "text/plain; charset=utf-8",
        ),
    }
}

/// Admin connections open at once; more are closed at accept, so idle admin
/// connections can never take the file descriptors the traffic listener needs.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The longest an admin connection lives: its requests are short (a scrape, a
/// probe, a reload), so one that lasts longer is closed whatever it is doing.
pub const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The time an admin client has to send a request head.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    hooks: AdminHooks,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            hooks
                .metrics
                .families()
                .connections_closed
                .with_label_values(&["admin_limit"])
                .inc();
            drop(stream);
            continue;
        };
        let hooks = hooks.clone();
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let hooks = hooks.clone();
                async move { Ok::<_, Infallible>(handle(req, hooks).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}
