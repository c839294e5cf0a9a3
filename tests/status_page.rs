//! The admin status page (#16) in a real browser: Debian's chromium, headless,
//! driven by playwright-core (`tests/third_party/status_page.mjs`), loads the
//! page with the admin token while traffic flows, and this test checks what it
//! shows against `/metrics`, follows a trace link, and keeps screenshots under
//! `target/screenshots/` for humans to look at. The page must carry no script,
//! and markup from a refused configuration must show as text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_tests::{BASE_CONFIG, TestEnv, dev_servers, render};
use prometheus_parse::{Scrape, Value};
use serde_json::{Value as Json, json};

const ADMIN_TOKEN: &str = "7d1c0a9b8e6f4d3c2b1a0f9e8d7c6b5a";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn denials(env: &TestEnv, reason: &str) -> f64 {
    let text = env.metrics.render();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
        .iter()
        .filter(|s| {
            s.metric == "portcullis_auth_decisions_total"
                && s.labels.get("outcome") == Some("deny")
                && s.labels.get("reason") == Some(reason)
        })
        .map(|s| match &s.value {
            Value::Counter(v) => *v,
            _ => 0.0,
        })
        .sum()
}

fn write_config(dir: &Path, yaml: &str) {
    std::fs::write(dir.join("gateway.yaml"), yaml).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_metrics_say_and_links_to_traces_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
    let (auth, upstream) = dev_servers().await;
    let good = render(
        &BASE_CONFIG.replace(
            "admin: { enabled: false }",
            "admin: { enabled: false, token_file: admin-token, explain: { capacity: 64 } }",
        ),
        &auth,
        &upstream,
    );
    write_config(dir.path(), &good);
    let (env, reloader) =
        TestEnv::start_file(auth, upstream, &dir.path().join("gateway.yaml")).await;

    // Refusals of three reasons, and allowed requests.
    for _ in 0..3 {
        assert_eq!(env.get("/v1/chat/x", &[]).await.status, 401);
    }
    let narrow = env.token("chat:read", json!({}));
    for _ in 0..2 {
        assert_eq!(env.get_with_token("/v1/chat/x", &narrow).await.status, 403);
    }
    let last = env.get("/nowhere", &[]).await;
    assert_eq!(last.status, 404);
    let last_id = last.header("x-request-id").unwrap();

    // A configuration on disk that is refused, carrying markup in its text.
    write_config(
        dir.path(),
        &format!("{good}\n\"<script>alert(1)</script>\": 1\n"),
    );
    let refused = reloader.reload().unwrap_err();
    assert!(refused.contains("<script>"), "{refused}");

    // Traffic while the browser looks.
    let env = Arc::new(env);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (env, stop) = (Arc::clone(&env), Arc::clone(&stop));
        let token = env.token("chat:write", json!({}));
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) && sent < 5_000 {
                assert_eq!(env.get_with_token("/v1/chat/x", &token).await.status, 200);
                sent += 1;
            }
            sent
        })
    };

    let shots = repo().join("target").join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = repo().join("tests/third_party/status_page.mjs");
    let admin = format!("http://{}", env.admin);
    // Playwright's own timeouts (30 s an action) bound the run.
    let shots_dir = shots.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .args([admin.as_str(), ADMIN_TOKEN])
            .arg(&shots_dir)
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run finished in time")
        .unwrap()
        .expect("node runs (scripts/test.sh installs it, playwright-core and chromium)");
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    assert!(sent > 0, "traffic flowed while the page was loaded");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status_page.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_str(stdout.trim()).expect("one JSON report");

    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["anonymousStatus"], 401, "the page needs the token");
    assert!(
        report["csp"]
            .as_str()
            .unwrap()
            .contains("default-src 'none'"),
        "{report}"
    );
    assert_eq!(report["scriptElements"], 0, "no script on the page");
    assert_eq!(report["dialogs"], 0, "nothing ran");
    assert_eq!(report["consoleErrors"], json!([]), "{report}");
    assert!(
        report["narrowOverflow"].as_i64().unwrap() <= 0,
        "no sideways scrolling on a phone: {report}"
    );

    // The counts shown are the counts /metrics has.
    let shown = |reason: &str| {
        report["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == reason)
            .map_or(0.0, |r| r["count"].as_f64().unwrap())
    };
    for reason in ["token_missing", "scope_insufficient"] {
        assert!(shown(reason) > 0.0, "{reason} shown: {report}");
        assert_eq!(shown(reason), denials(&env, reason), "{reason}");
    }
    assert_eq!(shown("route_not_found"), 1.0);
    assert_eq!(shown("token_missing"), 3.0);

    // The refused reload is shown, its markup as text.
    assert_eq!(report["reload"]["result"], "refused", "{report}");
    assert!(
        report["reload"]["text"]
            .as_str()
            .unwrap()
            .contains("<script>alert(1)</script>"),
        "{report}"
    );
    assert!(
        report["issuers"][0].as_str().unwrap().contains("fresh"),
        "{report}"
    );

    // The newest refused request links to its trace.
    assert_eq!(report["recent"][0], last_id.as_str());
    assert_eq!(report["followedId"], last_id.as_str());
    assert_eq!(
        report["tracePath"],
        format!("/debug/requests/{last_id}").as_str()
    );
    assert_eq!(report["traceVerdict"], "route_not_found");
    let steps = report["traceSteps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["step"] == "route" && s["outcome"] == "fail"),
        "{report}"
    );
    for shot in [
        "status-page.png",
        "status-page-narrow.png",
        "status-page-trace.png",
    ] {
        let bytes = std::fs::metadata(shots.join(shot)).unwrap().len();
        assert!(bytes > 1000, "{shot} saved");
    }
}
