//! The deploy/ files speak about the gateway that really runs: every metric an
//! alert rule or a dashboard panel names is one the exporter registers.

use std::collections::BTreeSet;
use std::path::Path;

#[allow(clippy::unwrap_used, clippy::expect_used)]
fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// Every `portcullis_*` metric name in a text, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric()) && base != "portcullis_" {
            out.insert(base.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn exported() -> BTreeSet<String> {
    let metrics = portcullis_metrics::Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    metrics.families().names.iter().cloned().collect()
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let text = read("deploy/prometheus/alerts.yml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    assert!(doc["groups"].as_sequence().is_some_and(|g| !g.is_empty()));
    let names = metric_names(&text);
    assert!(names.len() >= 8, "{names:?}");
    let exported = exported();
    let missing: Vec<_> = names.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "alerts.yml names metrics the exporter does not have: {missing:?}"
    );
}

#[test]
fn dashboard_names_only_exported_metrics() {
    let text = read("deploy/grafana/portcullis-dashboard.json");
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboard: {e}"));
    assert!(doc["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let names = metric_names(&text);
    let exported = exported();
    let missing: Vec<_> = names.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the exporter does not have: {missing:?}"
    );
    // And the dashboard covers the families operators need first.
    for needed in [
        "portcullis_auth_decisions_total",
        "portcullis_jwks_status",
        "portcullis_requests_total",
    ] {
        assert!(names.contains(needed), "{needed}");
    }
}

#[test]
fn the_check_itself_catches_a_wrong_name() {
    let names =
        metric_names("rate(portcullis_auth_decision_total[5m]) + portcullis_requests_total_bucket");
    assert!(
        names
            .difference(&exported())
            .any(|n| n == "portcullis_auth_decision_total")
    );
    assert!(names.contains("portcullis_requests_total"));
}

/// `promtool check rules` and `promtool test rules` (Debian's `prometheus`
/// package, installed by scripts/test.sh): the rules parse, and each alert
/// fires and resolves as `alerts.test.yml` says.
#[test]
fn alert_rules_pass_promtool() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("promtool is missing ({e}): scripts/test.sh installs it"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
