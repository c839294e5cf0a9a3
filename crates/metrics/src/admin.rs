//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, and `POST /-/reload`.
//! It is separate from the traffic listener and binds to loopback by default.

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
    match (method, req.uri().path()) {
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
            "not found: /metrics /healthz /readyz POST /-/reload\n".into(),
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
