//! `portcullis run` and `validate`: load the configuration, start the gateway and
//! admin listeners, reload on SIGHUP or `POST /-/reload`, drain on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use portcullis_config::GatewayConfig;
use portcullis_metrics::{Metrics, serve_admin};
use portcullis_proxy::{Gateway, Reloader};
use tokio::net::TcpListener;

use crate::summary::summarise;

/// `portcullis validate`: exit 0 with warnings, or 1 with every error. With
/// `online`, each issuer's metadata is fetched and its `issuer` compared.
pub fn validate(path: &Path, online: bool) -> ExitCode {
    match portcullis_config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {w}");
            }
            if online && !check_issuers_online(path, &config) {
                return ExitCode::from(1);
            }
            println!(
                "{}: OK ({} routes, {} issuers, {} upstreams)",
                path.display(),
                config.routes.len(),
                config.issuers.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Fetches every issuer's metadata document and compares the `issuer` it
/// publishes with the configured one; `false` after any mismatch or failure,
/// each printed with its fix.
fn check_issuers_online(path: &Path, config: &GatewayConfig) -> bool {
    let Ok(runtime) = build_runtime() else {
        eprintln!("{}: cannot start the runtime for --online", path.display());
        return false;
    };
    let mut ok = true;
    for (name, issuer) in &config.issuers {
        let configured = &issuer.rules.issuer;
        let at = format!("{}: issuers.{name}.issuer", path.display());
        let Ok(fetcher) = portcullis_jwks::Fetcher::new(issuer.jwks.clone()) else {
            eprintln!("{at}: cannot build an HTTP client for {configured:?}");
            ok = false;
            continue;
        };
        let published = runtime.block_on(portcullis_jwks::discovery::published_issuer(
            &fetcher, configured,
        ));
        match published {
            Ok(Some((found, _))) if found == *configured => {
                println!("issuers.{name}: {configured:?} matches its metadata");
            }
            Ok(Some((found, url))) => {
                let why = if found.trim_end_matches('/') == configured.trim_end_matches('/') {
                    "they differ by a trailing slash, which counts: tokens carry the server's spelling and would all be refused as issuer_mismatch"
                } else {
                    "tokens carry the server's spelling and would all be refused as issuer_mismatch"
                };
                eprintln!(
                    "{at}: {configured:?}, but the metadata at {url} says {found:?}; {why}. Fix: issuer: {found:?}"
                );
                ok = false;
            }
            Ok(None) => println!(
                "issuers.{name}: no metadata document published; the issuer string cannot be checked online"
            ),
            Err(e) => {
                eprintln!(
                    "{at}: metadata of {configured:?} could not be fetched (at the {} layer): {e}",
                    e.layer()
                );
                ok = false;
            }
        }
    }
    ok
}

/// `portcullis run`.
pub fn main(path: &Path, watch: bool) -> anyhow::Result<()> {
    let config = portcullis_config::load(path).map_err(|e| anyhow!("{e}"))?;
    let _log_writer = crate::logging::init(&config.logging);
    let runtime = build_runtime()?;
    runtime.block_on(run(path.to_path_buf(), config, watch, shutdown_signal()))
}

/// The main thread's runtime: the admin listener, reloads and key refreshes, and
/// the traffic too when there is one worker. Traffic workers are threads of their
/// own, each with a single-threaded runtime (see [`serve_on_workers`]): no
/// work-stealing scheduler and no cross-core task hand-offs on the request path.
pub fn build_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")
}

/// `workers`, or one per core.
pub fn worker_count(configured: Option<usize>) -> usize {
    configured
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    path: PathBuf,
    config: GatewayConfig,
    watch: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // One record per line of the summary: every log line stays one record.
    let file = path.display().to_string();
    for line in summarise(&config).lines() {
        tracing::info!(
            config = file.as_str(),
            setting = line,
            "effective configuration"
        );
    }
    for w in &config.warnings {
        tracing::warn!(
            config = file.as_str(),
            warning = w.as_str(),
            "configuration warning"
        );
    }
    let metrics = Metrics::new().map_err(|e| anyhow!("metrics: {e}"))?;
    let workers = worker_count(config.workers);
    let listen = config.listen.clone();
    let admin_addr = config.admin;
    let shutdown_delay = config.limits.shutdown_delay;
    let gateway = Gateway::new(config, Arc::clone(&metrics)).map_err(|e| anyhow!(e))?;
    let tls = gateway
        .tls_acceptor()
        .transpose()
        .map_err(|e| anyhow!("TLS: {e}"))?;
    // Bound before anything else starts, so a taken port fails the start at once.
    let listeners = portcullis_proxy::bind_workers(listen.address, workers)
        .with_context(|| format!("cannot listen on {}", listen.address))?;
    let reloader = Reloader::new(path, Arc::clone(&gateway));
    let _watch = if watch {
        reloader
            .watch()
            .map_err(|e| {
                tracing::warn!(
                    error = e.to_string().as_str(),
                    "file watch unavailable; reload with SIGHUP or POST /-/reload"
                )
            })
            .ok()
    } else {
        None
    };
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = admin_addr {
        let admin = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on admin address {addr}"))?;
        let hooks = gateway.admin_hooks(Some(reloader.hook()));
        tokio::spawn(serve_admin(admin, hooks, async move {
            let _ = admin_stop_rx.await;
        }));
        tracing::info!(%addr, "admin listener: /metrics /healthz /readyz /debug/requests POST /-/reload");
    }
    #[cfg(unix)]
    tokio::spawn(reloader.clone().reload_on_sighup());
    tracing::info!(address = %listen.address, tls = listen.tls.is_some(), workers, "gateway listening");
    // A drain load balancers understand: /readyz fails at once, the listeners
    // keep serving for shutdown_delay (endpoints are removed meanwhile), then
    // close, so a late connection is refused rather than left hanging.
    let draining = Arc::clone(&gateway);
    let shutdown = async move {
        shutdown.await;
        draining.begin_drain();
        tracing::info!(
            delay_s = shutdown_delay.as_secs_f64(),
            "draining: /readyz answers 503; accepting for limits.shutdown_delay, then closing the listeners"
        );
        tokio::time::sleep(shutdown_delay).await;
    };
    let flushing = Arc::clone(&gateway);
    let served = if workers == 1 {
        serve_here(gateway, listeners, tls, shutdown).await
    } else {
        serve_on_workers(gateway, listeners, tls, shutdown).await
    };
    // The spans still queued go out (off this thread: their export runs on it).
    let _ = tokio::task::spawn_blocking(move || flushing.flush_spans(SPAN_FLUSH)).await;
    let _ = admin_stop_tx.send(());
    served?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The longest the exit waits for queued spans to be exported.
const SPAN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// One worker: traffic on this thread's runtime.
async fn serve_here(
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = listeners
        .into_iter()
        .next()
        .context("no listening socket")?;
    let listener = TcpListener::from_std(listener).context("cannot use the listening socket")?;
    portcullis_proxy::serve(gateway, listener, tls, shutdown).await;
    Ok(())
}

/// One thread per listener, each with a single-threaded runtime serving its own
/// `SO_REUSEPORT` socket; the connection limit and everything in the gateway
/// (routes, key caches, token cache, upstream pools) are shared. On `shutdown`
/// every worker drains, and this returns once all have.
pub async fn serve_on_workers(
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let slots = portcullis_proxy::connection_slots(&gateway);
    // Dropping the sender (an early return) stops the workers already started.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut finished = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a worker runtime")?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let gateway = Arc::clone(&gateway);
        let tls = tls.clone();
        let slots = Arc::clone(&slots);
        let mut stop = stop_rx.clone();
        std::thread::Builder::new()
            .name(format!("portcullis-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            portcullis_proxy::serve_worker(gateway, listener, tls, slots, stopped)
                                .await;
                        }
                        Err(e) => {
                            tracing::error!(
                                worker = index,
                                error = e.to_string().as_str(),
                                "worker cannot use its listening socket"
                            )
                        }
                    }
                });
                let _ = done_tx.send(());
            })
            .context("cannot start a worker thread")?;
        finished.push(done_rx);
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for done in finished {
        let _ = done.await;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
