//! deploy/ matches the binary that really runs: every Kubernetes manifest validates
//! against the Kubernetes schemas offline (kubernetes-validate, installed by
//! scripts/test.sh), the ConfigMap's gateway.yaml passes the same validation as
//! `portcullis validate`, the probes, ports and scrape path point at endpoints a
//! running gateway serves, and the systemd unit verifies where systemd is present.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::{BASE_CONFIG, TestEnv};
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let tool = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/deploy-venv/bin/kubernetes-validate"));
    assert!(
        tool.exists(),
        "{} is missing: scripts/test.sh installs it",
        tool.display()
    );
    let out = Command::new(&tool)
        .arg("--strict")
        .args(manifests())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for kind in [
        "configmap",
        "deployment",
        "horizontalpodautoscaler",
        "networkpolicy",
        "poddisruptionbudget",
        "secret",
        "service",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{kind} was not validated:\n{text}"
        );
    }
    // No schema ships for these two custom kinds: check their shape here.
    let sm = yaml("deploy/kubernetes/servicemonitor.yaml");
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for file in manifests() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            name == "kustomization.yaml" || listed.contains(&name),
            "{name} is not in kustomization.yaml"
        );
    }
}

fn configmap_gateway_yaml() -> String {
    yaml("deploy/kubernetes/configmap.yaml")["data"]["gateway.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_configmap_gateway_yaml_validates() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("anthropic-api-key"), "sk-ant-test\n").unwrap();
    std::fs::write(
        secrets.path().join("admin-token"),
        "5f2b8e1c9a7d4e3f6b0a1c2d3e4f5a6b\n",
    )
    .unwrap();
    let dir = secrets.path().to_str().unwrap().to_owned();
    let env = move |name: &str| match name {
        "OPENAI_API_KEY" => Some("sk-test".to_owned()),
        "PORTCULLIS_SECRETS_DIR" => Some(dir.clone()),
        _ => None,
    };
    let config = portcullis_config::load_str(
        &configmap_gateway_yaml(),
        "configmap gateway.yaml",
        Path::new("."),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // The container ports are the ones the configuration listens on.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap() as u16
    };
    assert_eq!(config.listen.address.port(), port("http"));
    assert_eq!(config.admin.unwrap().port(), port("admin"));
    assert!(
        config.admin_settings.token.is_some(),
        "the admin port is reachable in the cluster, so it has a token"
    );
    // The grace period covers the whole drain: the delay, the grace, a margin.
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = config.limits.shutdown_delay.as_secs() + config.limits.shutdown_grace.as_secs();
    assert!(drain + 5 <= grace, "drain {drain}s + 5s margin > {grace}s");
    assert!(
        container.get("lifecycle").is_none(),
        "no preStop hook: the gateway's shutdown_delay does its work (and distroless has no sleep)"
    );
    assert!(
        container["resources"]["limits"]["cpu"].as_str().is_some(),
        "a CPU limit, which sets the worker count"
    );
    assert!(
        pod["topologySpreadConstraints"]
            .as_sequence()
            .is_some_and(|t| t.len() == 2)
    );
    // The Secret keys the Deployment reads exist.
    let secret = yaml("deploy/kubernetes/secret.yaml");
    let env_key = container["env"][0]["valueFrom"]["secretKeyRef"]["key"]
        .as_str()
        .unwrap();
    assert!(secret["stringData"].get(env_key).is_some());
    // Every file the configuration reads from the secrets folder is mounted.
    let items: Vec<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "secrets")
        .unwrap()["secret"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    for file in ["anthropic-api-key", "admin-token"] {
        assert!(items.contains(&file), "{file} is not mounted: {items:?}");
        assert!(
            secret["stringData"].get(file).is_some(),
            "{file} not in the Secret"
        );
    }
    // Applied unedited, the example Secret is refused, not silently used.
    let placeholder = secret["stringData"][env_key].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("anthropic-api-key"), "sk-ant-test\n").unwrap();
    let admin_placeholder = secret["stringData"]["admin-token"].as_str().unwrap();
    std::fs::write(dir.path().join("admin-token"), admin_placeholder).unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let unedited = move |name: &str| match name {
        "OPENAI_API_KEY" => Some(placeholder.clone()),
        "PORTCULLIS_SECRETS_DIR" => Some(dir.clone()),
        _ => None,
    };
    let err =
        portcullis_config::load_str(&configmap_gateway_yaml(), "cm", Path::new("."), &unedited)
            .unwrap_err()
            .to_string();
    assert!(err.contains("placeholder"), "{err}");
    assert!(
        err.contains("admin.token_file"),
        "the admin token placeholder is refused too: {err}"
    );
}

#[tokio::test]
async fn probes_and_scrape_path_are_served() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(container[probe]["httpGet"]["port"], "admin");
        let status = env.admin_get(path).await.status.as_u16();
        assert!(
            status == 200 || status == 503,
            "{probe} {path} answered {status}"
        );
    }
    let sm = yaml("deploy/kubernetes/servicemonitor.yaml");
    let path = sm["spec"]["endpoints"][0]["path"].as_str().unwrap();
    let reply = env.admin_get(path).await;
    assert_eq!(reply.status, 200);
    assert!(String::from_utf8_lossy(&reply.body).contains("portcullis_build_info"));
    let dockerfile = std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).unwrap();
    let url = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .nth(1)
        .unwrap();
    assert!(url.contains("http://127.0.0.1:9091/healthz"), "{url}");
    assert_eq!(env.admin_get("/healthz").await.status, 200);
}

#[test]
fn docker_default_config_validates() {
    let text = std::fs::read_to_string(root().join("deploy/docker/gateway.yaml")).unwrap();
    portcullis_config::load_str(&text, "deploy/docker/gateway.yaml", Path::new("."), &|_| {
        None
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn systemd_unit_verifies() {
    let unit = root().join("deploy/systemd/portcullis.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "TimeoutStopSec=40",
    ] {
        assert!(text.contains(needed), "{needed}");
    }
    // An empty assignment later in the unit would reset the capability again.
    assert!(
        !text
            .lines()
            .any(|l| l == "CapabilityBoundingSet=" || l == "AmbientCapabilities="),
        "the capability to bind port 443 is reset further down"
    );
    // systemd-analyze needs a running systemd to load units; where it is absent
    // (containers, CI sandboxes) the structural checks above are what runs.
    let booted = Path::new("/run/systemd/system").is_dir();
    if booted
        && let Ok(out) = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let real_problems: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/portcullis"))
            .collect();
        assert!(real_problems.is_empty(), "{stderr}");
    }
}
