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

/// `portcullis validate`: exit 0 with warnings, or 1 with every error.
pub fn validate(path: &Path) -> ExitCode {
    match portcullis_config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {w}");
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

/// `portcullis run`.
pub fn main(path: &Path, watch: bool) -> anyhow::Result<()> {
    let config = portcullis_config::load(path).map_err(|e| anyhow!("{e}"))?;
    crate::logging::init(&config.logging);
    let runtime = build_runtime(config.workers)?;
    runtime.block_on(run(path.to_path_buf(), config, watch, shutdown_signal()))
}

/// A Tokio runtime with `workers` threads (default: one per core). With one
/// worker it is a `current_thread` runtime: no work-stealing scheduler to pay for,
/// which is what a gateway pinned to one core wants.
pub fn build_runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    path: PathBuf,
    config: GatewayConfig,
    watch: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(config = %path.display(), "effective configuration:\n{}", summarise(&config));
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let metrics = Metrics::new().map_err(|e| anyhow!("metrics: {e}"))?;
    let listen = config.listen.clone();
    let admin_addr = config.admin;
    let gateway = Gateway::new(config, Arc::clone(&metrics)).map_err(|e| anyhow!(e))?;
    let tls = listen
        .tls
        .as_ref()
        .map(portcullis_proxy::tls_acceptor)
        .transpose()
        .map_err(|e| anyhow!("TLS: {e}"))?;
    let listener = TcpListener::bind(listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", listen.address))?;
    let reloader = Reloader::new(path, Arc::clone(&gateway));
    let _watch = if watch {
        reloader
            .watch()
            .map_err(|e| tracing::warn!(error = %e, "file watch unavailable; reload with SIGHUP or POST /-/reload"))
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
        tracing::info!(%addr, "admin listener: /metrics /healthz /readyz POST /-/reload");
    }
    #[cfg(unix)]
    tokio::spawn(reloader.clone().reload_on_sighup());
    tracing::info!(address = %listen.address, tls = listen.tls.is_some(), "gateway listening");
    portcullis_proxy::serve(gateway, listener, tls, shutdown).await;
    let _ = admin_stop_tx.send(());
    tracing::info!("gateway stopped");
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
