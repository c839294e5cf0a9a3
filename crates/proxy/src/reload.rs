//! Live configuration: reload on a file change (debounced; copes with editors'
//! write-then-rename and Kubernetes ConfigMap `..data` symlink swaps), on SIGHUP
//! and on `POST /-/reload`. A new file is validated fully beside the live one and
//! swapped in atomically, or refused with every problem while the old one stays.
//!
//! Only events that name the configuration file itself, a file it reads (`*_file`
//! secrets, the TLS certificate and key, static keys, CA bundles), or the `..data`
//! link a Kubernetes volume swaps count: a log file or an editor's swap file
//! written next to them is ignored, and a change is applied at most
//! [`MAX_DELAY`] after it happened even while relevant events keep coming. A
//! reload happens when the configuration or any file it reads changed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use portcullis_metrics::{BoxFuture, ReloadHook};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::gateway::Gateway;

/// Quiet time after the last relevant file event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The longest a reload waits after the first relevant event of a burst, however
/// many follow.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The name Kubernetes gives the symlink it swaps when a ConfigMap or Secret
/// volume is updated (`file -> ..data/file`, `..data -> ..<timestamp>`).
const KUBERNETES_DATA_LINK: &str = "..data";

/// Reloads one configuration file into a gateway.
#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    /// Fingerprint of the configuration and the files it reads as last applied
    /// or refused, so an event that changed nothing is skipped.
    last_seen: Arc<Mutex<Option<[u8; 32]>>>,
}

impl Reloader {
    /// A reloader for `path`, whose current content is already live in `gateway`.
    pub fn new(path: PathBuf, gateway: Arc<Gateway>) -> Self {
        let reloader = Reloader {
            path,
            gateway,
            last_seen: Arc::new(Mutex::new(None)),
        };
        reloader.remember();
        reloader
    }

    /// SHA-256 over the configuration's text and every file the live
    /// configuration read (path and content; a missing file counts as such).
    fn fingerprint(&self) -> Option<[u8; 32]> {
        let mut hash = Sha256::new();
        hash.update(std::fs::read(&self.path).ok()?);
        for file in &self.gateway.runtime().config.files {
            hash.update(file.as_os_str().as_encoded_bytes());
            match std::fs::read(file) {
                Ok(bytes) => hash.update(Sha256::digest(bytes)),
                Err(_) => hash.update(b"\0missing"),
            }
        }
        Some(hash.finalize().into())
    }

    /// Notes what is on disk now as seen.
    fn remember(&self) {
        let now = self.fingerprint();
        if let Ok(mut last) = self.last_seen.lock() {
            *last = now;
        }
    }

    /// The files the live configuration depends on: itself and what it reads.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.gateway.runtime().config.files.iter().cloned());
        files
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads, validates and applies the file. `Ok(summary)`, or `Err(every
    /// problem as file:line:column: path: message)` with the old configuration kept.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.load_and_apply();
        // After the apply: the files the new configuration reads are what counts.
        self.remember();
        result
    }

    fn load_and_apply(&self) -> Result<String, String> {
        let metrics = Arc::clone(self.gateway.metrics());
        let config = match portcullis_config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(
                    errors = e.to_string().as_str(),
                    "configuration reload refused; the running configuration stays"
                );
                self.gateway.record_reload(Some(e.to_string()));
                return Err(e.to_string());
            }
        };
        let warnings = config.warnings.len();
        match self.gateway.apply(config) {
            Ok(report) => {
                self.gateway.record_reload(None);
                for w in &report.not_applied {
                    tracing::warn!(setting = w.as_str(), "not applied by a reload");
                }
                let msg = format!(
                    "reloaded {}: key caches kept for [{}]; TLS certificate {}; not applied: [{}]; {warnings} warnings",
                    self.path.display(),
                    report.issuers_kept.join(", "),
                    if report.tls_reloaded {
                        "replaced"
                    } else {
                        "unchanged"
                    },
                    report.not_applied.join("; "),
                );
                tracing::info!(summary = msg.as_str(), "configuration reloaded");
                Ok(msg)
            }
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(
                    error = e.as_str(),
                    "configuration reload refused; the running configuration stays"
                );
                self.gateway.record_reload(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Reloads only when the configuration or a file it reads differs from what
    /// was last seen.
    pub fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let now = self.fingerprint()?;
        if self.last_seen.lock().ok().is_some_and(|l| *l == Some(now)) {
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
    /// and reloads once the events that concern the file have been quiet for
    /// [`DEBOUNCE`], or [`MAX_DELAY`] after the first of them at the latest. The
    /// watch lasts as long as the returned guard.
    pub fn watch(&self) -> Result<WatchGuard, String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let files = self.watched_files();
        let names = Arc::new(Mutex::new(watched_names(&files)));
        let seen_names = Arc::clone(&names);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && seen_names
                        .lock()
                        .is_ok_and(|names| concerns(&event, &names))
                {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| format!("cannot watch {}: {e}", self.path.display()))?;
        let mut folders: Vec<&Path> = Vec::new();
        for file in &files {
            let folder = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        }
        for folder in folders {
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", folder.display()))?;
        }
        let reloader = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                if !settle(&mut rx, DEBOUNCE, MAX_DELAY).await {
                    return;
                }
                let r = reloader.clone();
                let files = tokio::task::spawn_blocking(move || {
                    r.reload_if_changed();
                    r.watched_files()
                })
                .await;
                // A reload may name other files (in the folders already watched).
                if let (Ok(files), Ok(mut names)) = (files, names.lock()) {
                    *names = watched_names(&files);
                }
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

/// The file names in the watched folders whose events concern `files`: their
/// own names and the Kubernetes `..data` link.
fn watched_names(files: &[PathBuf]) -> Vec<OsString> {
    let mut names = vec![OsString::from(KUBERNETES_DATA_LINK)];
    for name in files.iter().filter_map(|f| f.file_name()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Whether a file event may have changed one of the watched files: it names one
/// of them (a write, a create, a rename onto it or away from it, a removal), and
/// is not a mere open or read (the reload's own read of the file is one).
fn concerns(event: &notify::Event, names: &[OsString]) -> bool {
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    changes
        && event
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .any(|name| names.iter().any(|n| n == name))
}

/// After a first event: waits until no event has come for `quiet`, or until
/// `max_delay` has passed since it was called, whichever is first. `false` when
/// the channel closed (the watcher is gone).
async fn settle(rx: &mut UnboundedReceiver<()>, quiet: Duration, max_delay: Duration) -> bool {
    let deadline = Instant::now() + max_delay;
    loop {
        let until = (Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => {}
            Ok(Some(())) | Err(_) => return true,
            Ok(None) => return false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_events_naming_the_file_or_the_data_link_count() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        let names = watched_names(&[
            PathBuf::from("/etc/portcullis/gateway.yaml"),
            PathBuf::from("/etc/portcullis/secrets/openai-api-key"),
        ]);
        let modify = EventKind::Modify(ModifyKind::Any);
        for (kind, path, counts) in [
            (modify, "/etc/portcullis/gateway.yaml", true),
            (modify, "/etc/portcullis/portcullis.log", false),
            (modify, "/etc/portcullis/.gateway.yaml.swp", false),
            (modify, "/etc/portcullis/gateway.yaml~", false),
            (modify, "/etc/portcullis/secrets/openai-api-key", true),
            (modify, "/etc/portcullis/secrets/anthropic-api-key", false),
            (
                EventKind::Create(CreateKind::File),
                "/etc/portcullis/gateway.yaml",
                true,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/portcullis/gateway.yaml",
                true,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/portcullis/..data",
                true,
            ),
            (
                EventKind::Create(CreateKind::Folder),
                "/etc/portcullis/..2026_12_01_21_00_00.123",
                false,
            ),
            (
                EventKind::Remove(RemoveKind::File),
                "/etc/portcullis/gateway.yaml",
                true,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/portcullis/gateway.yaml",
                true,
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/etc/portcullis/gateway.yaml",
                false,
            ),
        ] {
            assert_eq!(
                concerns(&event(kind, path), &names),
                counts,
                "{kind:?} {path}"
            );
        }
        let rename = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(PathBuf::from("/etc/portcullis/gateway.yaml.tmp"))
            .add_path(PathBuf::from("/etc/portcullis/gateway.yaml"));
        assert!(
            concerns(&rename, &names),
            "an editor's rename onto the file"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_burst_settles_after_the_debounce() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        tx.send(()).unwrap();
        assert!(settle(&mut rx, DEBOUNCE, MAX_DELAY).await);
        assert_eq!(start.elapsed(), DEBOUNCE);
    }

    #[tokio::test(start_paused = true)]
    async fn events_that_never_stop_still_settle_within_the_bound() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sender = tokio::spawn(async move {
            // An event every 50 ms, forever: each comes before the 200 ms quiet time.
            while tx.send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        assert!(settle(&mut rx, DEBOUNCE, MAX_DELAY).await);
        assert_eq!(start.elapsed(), MAX_DELAY);
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_watch() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        drop(tx);
        assert!(!settle(&mut rx, DEBOUNCE, MAX_DELAY).await);
    }
}
