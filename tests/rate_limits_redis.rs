//! Rate limits shared through a real `redis-server` (Debian's package, started
//! here on a free port with its own folder, stopped by the test): two gateways
//! enforce one limit together; Redis stopped mid-test gives each
//! `on_store_error` behaviour (local: no failed request); Redis restarted is
//! used again without a restart of the gateway; a server answering garbage is a
//! store error, never a pass. Outside CI a machine without `redis-server`
//! skips them with a message; in CI (`CI` set) that is a failure, and
//! `scripts/test.sh` installs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{ISSUER_AND_UPSTREAM, TestEnv};
use tokio::io::AsyncWriteExt;

/// A `redis-server` of the test's own.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port; `None` when the machine has no redis-server.
    fn start() -> Option<Redis> {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.resume().then_some(redis)
    }

    /// One serving TLS only, with a certificate for 127.0.0.1 from a private
    /// CA; returns the CA's PEM file too.
    fn start_tls() -> Option<(Redis, PathBuf)> {
        let mut redis = Redis {
            port: StdListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        let ca = tls_files(redis.dir.path());
        let d = redis.dir.path();
        let tls = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            redis.port.to_string(),
            "--tls-cert-file".to_owned(),
            d.join("cert.pem").display().to_string(),
            "--tls-key-file".to_owned(),
            d.join("key.pem").display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            ca.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        redis.launch(&tls).then_some((redis, ca))
    }

    /// (Re)starts the server on the same port and waits until it answers.
    fn resume(&mut self) -> bool {
        let plain = ["--port".to_owned(), self.port.to_string()];
        self.launch(&plain)
    }

    fn launch(&mut self, listen: &[String]) -> bool {
        let Some(server) = redis_server() else {
            return false;
        };
        let child = Command::new(server)
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on {}", self.port);
    }

    /// Stops the server (the data goes with it: nothing is saved).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for 127.0.0.1 (`cert.pem`, `key.pem`) in
/// `dir`; returns the CA's PEM file.
fn tls_files(dir: &std::path::Path) -> PathBuf {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    ca_file
}

fn redis_server() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

macro_rules! redis_or_skip {
    () => {
        match Redis::start() {
            Some(r) => r,
            // CI installs it (scripts/test.sh): there a missing server fails.
            None if std::env::var_os("CI").is_some() => panic!("redis-server is missing in CI"),
            None => {
                eprintln!("redis-server is not installed: skipped (scripts/test.sh installs it)");
                return;
            }
        }
    };
}

/// One public route limited to 10 requests an hour per route, in `store`.
fn config(store: &str, on_error: &str) -> String {
    format!(
        "{ISSUER_AND_UPSTREAM}
rate_limits:
  store: \"{store}\"
  store_timeout: 200ms
  on_store_error: {on_error}
  policies:
    shared: {{ rate: 10/hour, key: [route] }}
routes:
  - {{ name: open, match: {{ path_prefix: /public/ }}, upstream: llm, public: true, rate_limits: [shared] }}
"
    )
}

async fn statuses(env: &TestEnv, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(env.get("/public/x", &[]).await.status.as_u16());
    }
    out
}

fn count(list: &[u16], status: u16) -> usize {
    list.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn two_gateways_sharing_one_redis_enforce_one_limit() {
    let redis = redis_or_skip!();
    let yaml = config(&redis.url(), "deny");
    // Two gateways with nothing in common but the Redis.
    let (a, b) = (TestEnv::start(&yaml).await, TestEnv::start(&yaml).await);
    let mut all = Vec::new();
    for _ in 0..12 {
        all.extend(statuses(&a, 1).await);
        all.extend(statuses(&b, 1).await);
    }
    assert_eq!(count(&all, 200), 10, "one limit of 10 for both: {all:?}");
    assert_eq!(count(&all, 429), 14, "{all:?}");
    assert_eq!(
        a.upstream.requests() + b.upstream.requests(),
        10,
        "refused requests were not forwarded"
    );
    let r = b.get("/public/x", &[]).await;
    assert_eq!(r.reason(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert!(
        a.gateway
            .readiness()
            .checks
            .iter()
            .any(|c| c == &format!("rate-limit store redis://127.0.0.1:{}/0: up", redis.port)),
        "{:?}",
        a.gateway.readiness().checks
    );
}

#[tokio::test]
async fn redis_stopped_mid_test_falls_back_to_local_limits_then_recovers() {
    let mut redis = redis_or_skip!();
    let env = TestEnv::start(&config(&redis.url(), "local")).await;
    assert_eq!(statuses(&env, 3).await, [200, 200, 200]);
    redis.stop();
    // on_store_error: local — no request fails for the store; the replica
    // enforces the limit alone with its own counters (a fresh budget of 10).
    let during = statuses(&env, 12).await;
    assert_eq!(count(&during, 200), 10, "{during:?}");
    assert_eq!(count(&during, 429), 2, "{during:?}");
    assert!(
        !during.contains(&503) && !during.contains(&502),
        "{during:?}"
    );
    assert_eq!(
        env.metric("portcullis_rate_limit_store_up "),
        0.0,
        "the store is reported down"
    );
    assert!(
        env.metric(
            "portcullis_rate_limit_decisions_total{outcome=\"store_error\",policy=\"shared\",route=\"open\"}"
        ) >= 12.0
    );
    let line = env
        .gateway
        .readiness()
        .checks
        .into_iter()
        .find(|c| c.starts_with("rate-limit store"))
        .unwrap();
    assert!(line.contains("failing"), "{line}");
    assert!(
        env.gateway.readiness().ready,
        "a failing store never makes the replica unready"
    );

    // Back (empty: nothing was saved): used again without a restart.
    assert!(redis.resume());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = env.get("/public/x", &[]).await.status.as_u16();
        if status == 200 && env.metric("portcullis_rate_limit_store_up ") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the store was not used again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn on_store_error_deny_refuses_and_allow_lets_through() {
    let mut redis = redis_or_skip!();
    redis.stop();
    let deny = TestEnv::start(&config(&redis.url(), "deny")).await;
    let r = deny.get("/public/x", &[]).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.reason(), "rate_limit_unavailable");
    assert!(r.header("retry-after").is_some());
    assert!(
        !r.json()["detail"].as_str().unwrap().contains("redis://:"),
        "no secret in the detail"
    );
    assert_eq!(deny.upstream.requests(), 0);

    let allow = TestEnv::start(&config(&redis.url(), "allow")).await;
    let all = statuses(&allow, 15).await;
    assert!(
        all.iter().all(|s| *s == 200),
        "allow passes everything: {all:?}"
    );
}

#[tokio::test]
async fn a_store_that_answers_garbage_is_a_store_error_never_a_pass() {
    // Not Redis: a server that answers every connection with bytes that are no
    // RESP reply.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n<html>").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let env = TestEnv::start(&config(&format!("redis://127.0.0.1:{port}/0"), "deny")).await;
    for _ in 0..3 {
        let r = env.get("/public/x", &[]).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.reason(), "rate_limit_unavailable");
    }
    assert_eq!(env.upstream.requests(), 0);
}

#[tokio::test]
async fn a_dry_run_reads_the_live_budget_and_spends_none_of_it() {
    use portcullis_proxy::decision::Step;
    use portcullis_proxy::observe::Trace;
    use portcullis_proxy::pipeline::{DecideContext, decide, unix_now};
    use portcullis_proxy::token_cache::TokenCache;

    let redis = redis_or_skip!();
    let env = TestEnv::start(&config(&redis.url(), "deny")).await;
    assert_eq!(statuses(&env, 3).await, [200, 200, 200]);
    // What `portcullis diagnose` does: the pipeline's own steps, dry.
    let runtime = env.gateway.runtime();
    let no_cache = TokenCache::new(false, 0, 0, Duration::ZERO);
    let context = DecideContext {
        runtime: &runtime,
        token_cache: &no_cache,
        metrics: &env.metrics,
        peer: "127.0.0.1".parse().unwrap(),
        now: unix_now(),
        dry_run: true,
    };
    for _ in 0..5 {
        let mut req = http::Request::get("/public/x")
            .header("host", "gw")
            .body(())
            .unwrap();
        let mut trace = Trace::new(&req, true);
        assert!(decide(&context, &mut req, &mut trace).await.is_ok());
        let evidence = trace
            .steps
            .notes()
            .iter()
            .find(|(step, _)| *step == Step::RateLimit)
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        assert!(
            evidence.contains("\"shared\";r=7;"),
            "the live budget, 7 of 10 left: {evidence}"
        );
    }
    // Nothing was spent: 7 more pass, the next is refused.
    let rest = statuses(&env, 8).await;
    assert_eq!(rest, [200, 200, 200, 200, 200, 200, 200, 429]);
}

/// `config` with `consistency: approximate` and a short sync interval.
fn approximate(store: &str) -> String {
    config(store, "local").replace(
        "  on_store_error: local\n",
        "  on_store_error: local\n  consistency: approximate\n  sync_interval: 100ms\n",
    )
}

async fn wait_for_sync(env: &TestEnv, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.metric("portcullis_rate_limit_syncs_total{outcome=\"ok\"}") < at_least {
        assert!(Instant::now() < deadline, "no sync with the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn approximate_replicas_learn_what_the_others_spent_at_each_sync() {
    let redis = redis_or_skip!();
    let yaml = approximate(&redis.url());
    let (a, b) = (TestEnv::start(&yaml).await, TestEnv::start(&yaml).await);
    // A decides alone, without waiting on Redis: its own budget of 10.
    let first = statuses(&a, 12).await;
    assert_eq!(count(&first, 200), 10, "{first:?}");
    wait_for_sync(&a, 1.0).await;
    // B decides on its own budget until its syncs bring A's spending: it is
    // refused within a few sync intervals, having admitted at most one burst
    // (the documented overshoot).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut admitted_by_b = 0;
    loop {
        match statuses(&b, 1).await[..] {
            [200] => admitted_by_b += 1,
            [429] => break,
            ref other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "B never learned what A spent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admitted_by_b < 10,
        "B learned before spending a budget of its own ({admitted_by_b})"
    );
    let admitted = count(&first, 200) + admitted_by_b;
    assert!(
        admitted <= 10 + 10,
        "within the bound: the limit plus one burst per other replica ({admitted})"
    );
    assert_eq!(statuses(&b, 2).await, [429, 429], "and stays refused");
}

#[tokio::test]
async fn approximate_mode_with_redis_down_keeps_local_limits_and_catches_up() {
    let mut redis = redis_or_skip!();
    let env = TestEnv::start(&approximate(&redis.url())).await;
    redis.stop();
    let during = statuses(&env, 12).await;
    assert_eq!(count(&during, 200), 10, "local limits hold: {during:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.metric("portcullis_rate_limit_syncs_total{outcome=\"error\"}") < 1.0 {
        assert!(Instant::now() < deadline, "a failed sync is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.metric("portcullis_rate_limit_store_up "), 0.0);
    // Back: the counts kept through the outage reach the store.
    assert!(redis.resume());
    wait_for_sync(&env, 1.0).await;
    assert_eq!(env.metric("portcullis_rate_limit_store_up "), 1.0);
}

#[tokio::test]
async fn a_tls_redis_is_shared_and_its_certificate_checked() {
    let Some((redis, ca)) = Redis::start_tls() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing in CI"
        );
        eprintln!("redis-server is not installed: skipped");
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let trusted = config(&url, "deny").replace(
        "  store_timeout: 200ms\n",
        &format!(
            "  store_timeout: 500ms\n  store_ca_file: \"{}\"\n",
            ca.display()
        ),
    );
    let env = TestEnv::start(&trusted).await;
    let all = statuses(&env, 12).await;
    assert_eq!(count(&all, 200), 10, "decided in the TLS Redis: {all:?}");
    assert_eq!(count(&all, 429), 2, "{all:?}");
    // Without the CA the server's certificate is not trusted: a store error.
    let untrusted = TestEnv::start(&config(&url, "deny")).await;
    let r = untrusted.get("/public/x", &[]).await;
    assert_eq!(r.reason(), "rate_limit_unavailable", "{:?}", r.body);
}

#[tokio::test]
async fn a_reload_that_changes_the_store_uses_the_new_one() {
    let redis = redis_or_skip!();
    let yaml = config(&redis.url(), "deny");
    let env = TestEnv::start(&yaml).await;
    let first = statuses(&env, 11).await;
    assert_eq!(count(&first, 429), 1, "{first:?}");
    // Another key prefix: another store, fresh keys in it.
    let moved = yaml.replace(
        "  on_store_error: deny\n",
        "  on_store_error: deny\n  key_prefix: \"other:\"\n",
    );
    env.apply_yaml(&moved).unwrap();
    let after = statuses(&env, 11).await;
    assert_eq!(count(&after, 200), 10, "{after:?}");
    assert_eq!(count(&after, 429), 1, "{after:?}");
}

/// One Redis command over RESP, its raw answer (for a test to watch the store).
fn redis_command(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits until the only key in the store holds something other than `old`.
fn stored_value_changes(port: u16, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = redis_command(port, &["KEYS", "portcullis:rl:*"]);
        if let Some(key) = keys.lines().find(|l| l.starts_with("portcullis:rl:")) {
            let value = redis_command(port, &["GET", key]);
            if value != old {
                return value;
            }
        }
        assert!(Instant::now() < deadline, "the charge never reached Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_token_budget_in_redis_is_spent_across_gateways() {
    let redis = redis_or_skip!();
    let yaml = format!(
        "{ISSUER_AND_UPSTREAM}  ai: {{ provider: openai_compatible, targets: [\"{{UPSTREAM}}\"] }}
rate_limits:
  store: \"{}\"
  store_timeout: 200ms
  on_store_error: deny
  policies:
    budget: {{ tokens: 20/hour, key: [route] }}
routes:
  - {{ name: chat, match: {{ path: /v1/chat/completions, models: [\"demo-*\"] }}, upstream: ai, public: true, rate_limits: [budget] }}
",
        redis.url()
    );
    let (a, b) = (TestEnv::start(&yaml).await, TestEnv::start(&yaml).await);
    async fn call(env: &TestEnv) -> portcullis_tests::Reply {
        let body = r#"{"model":"demo-small","messages":[{"role":"user","content":"hi"}]}"#;
        env.send(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }
    // 10 tokens on each gateway, charged in the one store.
    assert_eq!(call(&a).await.status, 200);
    let first = tokio::task::spawn_blocking({
        let port = redis.port;
        move || stored_value_changes(port, "")
    })
    .await
    .unwrap();
    assert_eq!(call(&b).await.status, 200);
    tokio::task::spawn_blocking({
        let port = redis.port;
        move || stored_value_changes(port, &first)
    })
    .await
    .unwrap();
    // Spent for both.
    for env in [&a, &b] {
        let r = call(env).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.reason(), "token_budget_exhausted");
    }
    assert_eq!(a.upstream.requests() + b.upstream.requests(), 2);
}
