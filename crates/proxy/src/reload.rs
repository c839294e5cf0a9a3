//! Live configuration: reload on a file change (debounced; copes with editors'
//! write-then-rename and Kubernetes ConfigMap `..data` symlink swaps), on SIGHUP
//! and on `POST /-/reload`. A new file is validated fully beside the live one and
//! swapped in atomically, or refused with every problem while the old one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use portcullis_metrics::{BoxFuture, ReloadHook};
use sha2::{Digest, Sha256};

use crate::gateway::Gateway;

/// Quiet time after the last file event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads one configuration file into a gateway.
#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    /// SHA-256 of the text last applied or refused, so unchanged files are skipped.
    last_seen: Arc<Mutex<Option<[u8; 32]>>>,
}

impl Reloader {
    /// A reloader for `path`, whose current content is already live in `gateway`.
    pub fn new(path: PathBuf, gateway: Arc<Gateway>) -> Self {
        let digest = std::fs::read(&path).ok().map(|b| Sha256::digest(&b).into());
        Reloader {
            path,
            gateway,
            last_seen: Arc::new(Mutex::new(digest)),
        }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads, validates and applies the file. `Ok(summary)`, or `Err(every
    /// problem as file:line:column: path: message)` with the old configuration kept.
    pub fn reload(&self) -> Result<String, String> {
        if let Ok(bytes) = std::fs::read(&self.path)
            && let Ok(mut last) = self.last_seen.lock()
        {
            *last = Some(Sha256::digest(&bytes).into());
        }
        let metrics = Arc::clone(self.gateway.metrics());
        let config = match portcullis_config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(errors = %e, "configuration reload refused; the running configuration stays");
                return Err(e.to_string());
            }
        };
        let warnings = config.warnings.len();
        match self.gateway.apply(config) {
            Ok(report) => {
                for w in &report.not_applied {
                    tracing::warn!(setting = %w, "not applied by a reload");
                }
                let msg = format!(
                    "reloaded {}: key caches kept for [{}]; not applied: [{}]; {warnings} warnings",
                    self.path.display(),
                    report.issuers_kept.join(", "),
                    report.not_applied.join("; "),
                );
                tracing::info!("{msg}");
                Ok(msg)
            }
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                Err(e)
            }
        }
    }

    /// Reloads only when the file's content differs from what was last seen.
    pub fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let bytes = std::fs::read(&self.path).ok()?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if self
            .last_seen
            .lock()
            .ok()
            .is_some_and(|l| *l == Some(digest))
        {
            return None;
        }
        Some(self.reload())
    }

    /// The hook for `POST /-/reload` (runs the blocking file read off the runtime).
    pub fn hook(&self) -> ReloadHook {
        let r = self.clone();
        Arc::new(move || -> BoxFuture<Result<String, String>> {
            let r = r.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || r.reload())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            })
        })
    }

    /// Watches the file's folder (not the file: editors and Kubernetes replace it)
    /// and reloads after [`DEBOUNCE`] of quiet. The watch lasts as long as the
    /// returned guard.
    pub fn watch(&self) -> Result<WatchGuard, String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| format!("cannot watch {}: {e}", self.path.display()))?;
        let folder = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", folder.display()))?;
        let reloader = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: wait until the folder has been quiet for a while.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload_if_changed()).await;
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }

    /// Reloads on every SIGHUP until the process ends.
    #[cfg(unix)]
    pub async fn reload_on_sighup(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let r = self.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    }
}

/// Keeps a file watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
