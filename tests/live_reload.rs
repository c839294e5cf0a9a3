//! Live configuration end to end: gateway.yaml rewritten many times, valid and
//! invalid, under a steady stream of requests and an open SSE stream, through an
//! editor-style write-then-rename and through a Kubernetes-style `..data` swap.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use portcullis_proxy::Reloader;
use portcullis_tests::{TestEnv, dev_servers};
use serde_json::json;

fn version(i: usize, issuer: &str, upstream: &str) -> String {
    format!(
        r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
issuers:
  dev: {{ issuer: "{issuer}", jwks_uri: "{issuer}jwks" }}
upstreams:
  llm: {{ targets: ["{upstream}"] }}
routes:
  - name: versioned
    match: {{ path_prefix: /r/ }}
    upstream: llm
    rewrite: {{ strip_prefix: /r, replace_prefix: /v{i} }}
    public: true
  - name: protected
    match: {{ path_prefix: /p/ }}
    upstream: llm
    auth: {{ issuers: [dev], audiences: [portcullis-demo] }}
"#
    )
}

/// Broken edits, each with a piece of the message it must be refused with.
fn broken(i: usize, good: &str) -> (String, &'static str) {
    match i % 4 {
        0 => ("routes: [\n  - name: x\n".to_owned(), "gateway.yaml:"),
        1 => (good.replace("upstream: llm\n    rewrite", "upstream: lmm\n    rewrite"), "unknown upstream \"lmm\""),
        2 => (good.replace("routes:", "network:\n  allow: [10.0.0.0/33]\nroutes:"), "network.allow[0]"),
        _ => (
            good.replace(
                "llm: { targets: [",
                "llm: { credential: { header: x-api-key, value: \"${PORTCULLIS_TEST_UNSET_VARIABLE}\" }, targets: [",
            ),
            "environment variable PORTCULLIS_TEST_UNSET_VARIABLE is not set",
        ),
    }
}

/// Replaces a file the way editors do: write a temporary file, rename over.
fn write_then_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn reloads(env: &TestEnv, outcome: &str) -> u64 {
    let text = env.metrics.render();
    let needle = format!("portcullis_config_reloads_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle)?.parse().ok())
        .unwrap_or(0)
}

struct Scenario {
    env: Arc<TestEnv>,
    reloader: Reloader,
    _watch: portcullis_proxy::reload::WatchGuard,
}

async fn start(dir: &Path, config_path: PathBuf, write: impl Fn(&str)) -> Scenario {
    let (auth, upstream) = dev_servers().await;
    write(&version(0, auth.issuer(), &upstream.url()));
    let (env, reloader) = TestEnv::start_file(auth, upstream, &config_path).await;
    let env = Arc::new(env);
    let watch = reloader.watch().unwrap();
    let _ = dir;
    Scenario {
        env,
        reloader,
        _watch: watch,
    }
}

async fn run_edits(s: &Scenario, write: impl Fn(&str)) {
    let env = &s.env;
    let (issuer, up) = (env.auth.issuer().to_owned(), env.upstream.url());
    // Warm the issuer's key cache.
    let token = env.token("", json!({}));
    assert_eq!(env.get_with_token("/p/x", &token).await.status, 200);
    let jwks_before = env.auth.jwks_hits();

    // An SSE stream open across every reload.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let stream_resp = client
        .get(env.url("/r/sse?chunks=30&interval_ms=100").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stream_resp.status(), 200);
    let stream = tokio::spawn(async move {
        stream_resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
    });

    // Steady traffic.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (env, stop) = (Arc::clone(env), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(env.get("/r/x", &[]).await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };

    for i in 1..=8 {
        let good = version(i, &issuer, &up);
        let failures = reloads(env, "failure");
        write(&good);
        let want = format!("/v{i}/x");
        until(&format!("version {i} live"), async || {
            env.get("/r/x", &[]).await.json()["uri"] == want.as_str()
        })
        .await;

        let (bad, message) = broken(i, &good);
        write(&bad);
        until(&format!("broken edit {i} refused"), async || {
            reloads(env, "failure") > failures
        })
        .await;
        let refused = s.reloader.reload().unwrap_err();
        assert!(refused.contains(message), "edit {i}: {refused}");
        assert!(!refused.contains("sk-"), "no secret in messages");
        assert_eq!(
            env.get("/r/x", &[]).await.json()["uri"],
            want.as_str(),
            "the old config stays after a broken edit"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(
        statuses.len() > 20,
        "steady traffic ran: {}",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed during reloads: {statuses:?}"
    );
    let body = stream
        .await
        .unwrap()
        .expect("the stream completed across reloads");
    assert_eq!(String::from_utf8_lossy(&body).matches("data:").count(), 30);
    assert_eq!(
        env.auth.jwks_hits(),
        jwks_before,
        "an unchanged issuer keeps its key cache"
    );
    assert_eq!(env.get_with_token("/p/x", &token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_reloads_valid_edits_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let write = |text: &str| write_then_rename(&path, text);
    let s = start(dir.path(), path.clone(), write).await;
    run_edits(&s, write).await;
}

/// Kubernetes mounts a ConfigMap as `gateway.yaml -> ..data/gateway.yaml` with
/// `..data -> ..<timestamp>`; an update writes a new timestamped folder and swaps
/// the `..data` link atomically.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let write = |text: &str| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let data = root.join(format!("..2026_11_29_{n:04}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("gateway.yaml"), text).unwrap();
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(data.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        if n == 0 {
            symlink("..data/gateway.yaml", root.join("gateway.yaml")).unwrap();
        }
    };
    let s = start(dir.path(), root.join("gateway.yaml"), write).await;
    run_edits(&s, write).await;
}

/// A log file (or an editor's swap file, or a sidecar) written continuously next
/// to gateway.yaml must not postpone reloads: only events that name the
/// configuration file count, and a reload is never put off past a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sibling_file_does_not_starve_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let s = start(dir.path(), path.clone(), |text| {
        std::fs::write(&path, text).unwrap()
    })
    .await;
    let env = &s.env;
    let (issuer, up) = (env.auth.issuer().to_owned(), env.upstream.url());

    // The sibling: appended to every 10 ms, far more often than the debounce's
    // quiet time, for as long as the test runs (a plain thread, stopped when the
    // guard drops, so a failing assertion cannot leave it running).
    let sibling = BusySibling::start(dir.path().join("portcullis.log"));

    for i in 1..=5 {
        // Plain in-place writes, as an operator's `cat > gateway.yaml` would.
        std::fs::write(&path, version(i, &issuer, &up)).unwrap();
        let want = format!("/v{i}/x");
        until(
            &format!("edit {i} live while the sibling is written"),
            async || env.get("/r/x", &[]).await.json()["uri"] == want.as_str(),
        )
        .await;
    }
    let lines = sibling.stop();
    assert!(
        lines > 50,
        "the sibling was written throughout: {lines} lines"
    );
    assert_eq!(reloads(env, "failure"), 0, "no edit was read half-written");
}

/// A file appended to every 10 ms by a thread of its own until stopped or dropped.
struct BusySibling {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl BusySibling {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).unwrap();
            let mut lines = 0u64;
            while !flag.load(Ordering::Relaxed) {
                writeln!(f, "access line {lines}").unwrap();
                f.flush().unwrap();
                lines += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            lines
        });
        BusySibling {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer; the number of lines it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for BusySibling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A rotated `*_file` secret (here the upstream credential, replaced the way a
/// Kubernetes Secret volume does it) is used without a restart or an explicit
/// reload: the file is watched like the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_is_used_without_a_reload() {
    let (auth, upstream) = dev_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    write_then_rename(&secrets.join("api-key"), "sk-first\n");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listen: {{ address: "127.0.0.1:0" }}
admin: {{ enabled: false }}
logging: {{ access_log: false }}
upstreams:
  llm:
    targets: ["{}"]
    credential: {{ header: x-api-key, value_file: "{}" }}
routes:
  - {{ name: open, match: {{ path_prefix: / }}, upstream: llm, public: true }}
"#,
            upstream.url(),
            secrets.join("api-key").display()
        ),
    )
    .unwrap();
    let (env, reloader) = TestEnv::start_file(auth, upstream, &path).await;
    let _watch = reloader.watch().unwrap();
    let key = async || env.get("/x", &[]).await.json()["headers"]["x-api-key"][0].clone();
    assert_eq!(key().await, "sk-first");
    for next in ["sk-second", "sk-third"] {
        write_then_rename(&secrets.join("api-key"), &format!("{next}\n"));
        until(&format!("{next} in use"), async || key().await == next).await;
    }
}
