//! The `portcullis` binary itself: `validate` on good and broken files, and a
//! running gateway that reloads on SIGHUP, drains on SIGTERM and writes every
//! access log line before it exits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

#[test]
fn the_repository_gateway_yaml_validates() {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(repo_file("gateway.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK (5 routes, 1 issuers, 2 upstreams)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: routes[4] (health) is public"),
        "{stdout}"
    );
}

#[test]
fn validate_reports_every_error_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(repo_file("gateway.yaml"))
        .unwrap()
        .replace("upstream: llm\n    max_body", "upstream: lm\n    max_body")
        .replace("allow: [127.0.0.0/8", "allow: [127.0.0.1/8");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let file = path.display().to_string();
    assert!(
        lines[0].starts_with(&format!("{file}:"))
            && lines[0].contains(": network.allow[0]: 127.0.0.1/8 has host bits set"),
        "{stderr}"
    );
    assert!(
        lines[1].contains(": routes[1].upstream: unknown upstream \"lm\" (did you mean \"llm\"?)"),
        "{stderr}"
    );
    // file:line:column
    let parts: Vec<&str> = lines[1][file.len() + 1..].splitn(3, ':').collect();
    assert!(
        parts[0].parse::<usize>().is_ok() && parts[1].parse::<usize>().is_ok(),
        "{}",
        lines[1]
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over a fresh connection; returns the status and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(port: u16, admin: u16, upstream: u16, prefix: &str) -> String {
    format!(
        r#"
listen: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  u: {{ targets: ["http://127.0.0.1:{upstream}"] }}
routes:
  - {{ name: r, match: {{ path_prefix: /r/ }}, upstream: u, public: true, rewrite: {{ strip_prefix: /r, replace_prefix: {prefix} }} }}
"#
    )
}

/// A gateway.yaml in a temporary folder: `extra` top-level keys, then [`config`]
/// with fresh ports and an echo upstream of its own.
struct GatewayFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    port: u16,
    admin: u16,
    upstream: u16,
}

impl GatewayFile {
    fn new(extra: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = GatewayFile {
            path: dir.path().join("gateway.yaml"),
            _dir: dir,
            port: free_port(),
            admin: free_port(),
            upstream: echo_upstream(),
        };
        file.write(extra, prefix);
        file
    }

    /// Replaces the file's contents (the ports stay).
    fn write(&self, extra: &str, prefix: &str) {
        let yaml = format!(
            "{extra}{}",
            config(self.port, self.admin, self.upstream, prefix)
        );
        std::fs::write(&self.path, yaml).unwrap();
    }
}

/// Runs `portcullis run --no-watch` on `path` until `/r/x` on `port` answers 200.
fn start_gateway(path: &Path, port: u16) -> std::process::Child {
    start_gateway_logging_to(path, port, Stdio::null(), "warn")
}

/// As [`start_gateway`], with stderr going to `stderr` at log level `level`.
fn start_gateway_logging_to(
    path: &Path,
    port: u16,
    stderr: Stdio,
    level: &str,
) -> std::process::Child {
    let child = Command::new(BIN)
        .args(["run", "--no-watch", "--config"])
        .arg(path)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for("the gateway", || {
        get(port, "/r/x").is_some_and(|(s, _)| s == 200)
    });
    child
}

/// Sends `signal` (as `kill` names it, e.g. `-HUP`) to the child.
fn send_signal(child: &std::process::Child, signal: &str) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Sends SIGTERM and waits for the gateway to drain and exit 0.
fn terminate_and_expect_clean_exit(child: &mut std::process::Child) {
    send_signal(child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit 0 after draining: {status:?}");
}

/// Serves `HTTP/1.1 200` echoing the request line's path, on a thread.
fn echo_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{path}",
                    path.len()
                );
            });
        }
    });
    port
}

#[cfg(unix)]
#[test]
fn sighup_reloads_and_sigterm_drains() {
    let file = GatewayFile::new("", "/one");
    let (port, admin) = (file.port, file.admin);
    let mut child = start_gateway(&file.path, port);
    assert_eq!(get(port, "/r/x").unwrap().1, "/one/x");
    assert_eq!(get(admin, "/healthz").unwrap().0, 200);

    // Without the watch, an edit changes nothing until SIGHUP.
    file.write("", "/two");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(port, "/r/x").unwrap().1, "/one/x");
    send_signal(&child, "-HUP");
    wait_for("the SIGHUP reload", || {
        get(port, "/r/x").is_some_and(|(_, b)| b == "/two/x")
    });
    let metrics = get(admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("portcullis_config_reloads_total{outcome=\"success\"} 2"),
        "{metrics}"
    );

    terminate_and_expect_clean_exit(&mut child);
}

/// Sends one keep-alive request on `s`; the reply's status, or `None` if the
/// connection was closed instead.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> Option<u16> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).get(9..12)?.parse().ok()
}

#[cfg(target_os = "linux")]
#[test]
fn workers_serve_one_port_and_share_the_connection_limit() {
    let file = GatewayFile::new("workers: 4\nlimits: { max_connections: 3 }\n", "/w");
    let (port, admin) = (file.port, file.admin);
    let mut child = start_gateway(&file.path, port);
    // Four traffic threads, each with its own runtime and socket on the port.
    let workers = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("portcullis-work"))
        .count();
    assert_eq!(workers, 4);
    // Fresh connections land on the workers the kernel picks; all are served.
    for i in 0..40 {
        assert_eq!(get(port, &format!("/r/{i}")).unwrap().1, format!("/w/{i}"));
    }
    // The limit is one count for the whole process, whichever worker accepts:
    // three held connections fill it and a fourth is closed at accept.
    wait_for("the closed connections to be released", || {
        get(admin, "/metrics")
            .is_some_and(|(_, m)| m.lines().any(|l| l == "portcullis_open_connections 0"))
    });
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(keep_alive_get(s, "/r/held"), Some(200));
    }
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(keep_alive_get(&mut extra, "/r/extra"), None);
    drop(held);

    terminate_and_expect_clean_exit(&mut child);
}

#[test]
fn a_port_already_taken_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for workers in [1, 4] {
        let path = dir.path().join(format!("gateway-{workers}.yaml"));
        let yaml = format!(
            "workers: {workers}\n{}",
            config(port, free_port(), free_port(), "/x")
        );
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--no-watch", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "workers {workers}: started anyway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "workers {workers}: {stderr}"
        );
    }
}

/// The access log goes through a writer thread: every request still gets its line,
/// and the lines still queued are written out when SIGTERM ends the process.
#[cfg(unix)]
#[test]
fn every_request_gets_an_access_log_line_and_none_is_lost_at_exit() {
    let file = GatewayFile::new("logging: { format: json, access_log: true }\n", "/one");
    let port = file.port;
    let log_path = file.path.with_file_name("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = start_gateway_logging_to(&file.path, port, log_file.into(), "info");

    let (served, unrouted) = (200, 100);
    for i in 0..served {
        assert_eq!(get(port, &format!("/r/{i}")).unwrap().0, 200);
    }
    for _ in 0..unrouted {
        assert_eq!(get(port, "/elsewhere").unwrap().0, 404);
    }
    terminate_and_expect_clean_exit(&mut child);

    let text = std::fs::read_to_string(&log_path).unwrap();
    let access: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["target"] == "portcullis::access")
        .collect();
    let status_count = |status: u64| access.iter().filter(|v| v["status"] == status).count();
    // One 200 more: the request start_gateway waits on.
    assert_eq!(status_count(200), served + 1, "{text}");
    assert_eq!(status_count(404), unrouted, "{text}");
    assert_eq!(access.len(), served + 1 + unrouted);
    assert!(
        access
            .iter()
            .all(|v| v["request_id"].as_str().is_some_and(|id| id.len() > 8))
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("gateway stopped")),
        "{text}"
    );
}

/// `logging.subject: plain` in the text format: a `sub` claim crafted with a
/// newline, a forged access-log line and terminal escapes stays inside its one
/// field, quoted and escaped, on its own request's line.
#[cfg(unix)]
#[test]
fn a_crafted_subject_cannot_forge_a_text_access_log_line() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let auth = rt
        .block_on(portcullis_devkit::AuthServer::start(
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let (port, admin, upstream) = (free_port(), free_port(), echo_upstream());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let issuer = auth.issuer();
    std::fs::write(
        &path,
        format!(
            r#"
listen: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
logging: {{ format: text, access_log: true, subject: plain }}
network: {{ request_id: any }}
issuers:
  dev: {{ issuer: "{issuer}", jwks_uri: "{issuer}jwks" }}
upstreams:
  u: {{ targets: ["http://127.0.0.1:{upstream}"] }}
routes:
  - {{ name: r, match: {{ path_prefix: /r/ }}, upstream: u, public: true }}
  - {{ name: p, match: {{ path_prefix: /p/ }}, upstream: u, auth: {{ issuers: [dev], audiences: [portcullis-demo] }} }}
"#
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = start_gateway_logging_to(&path, port, log_file.into(), "info");

    let forged = "alice\n2026-12-01T00:00:00Z  INFO portcullis::access: request_id=\"forged\" route=\"admin\" status=200 subject=root\u{1b}[2K\r";
    let token = auth.mint("", serde_json::json!({ "sub": forged })).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /p/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nx-request-id: crafted-sub-1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    terminate_and_expect_clean_exit(&mut child);

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape reached the log:\n{text}"
    );
    assert!(
        !text.contains('\r'),
        "a raw carriage return reached the log"
    );
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("crafted-sub-1"))
        .collect();
    assert_eq!(ours.len(), 1, "{text}");
    assert!(ours[0].contains(r#"subject="alice\n2026"#), "{}", ours[0]);
    assert!(
        !text
            .lines()
            .any(|l| l.contains(r#"request_id="forged""#) && !l.contains("crafted-sub-1")),
        "a forged line stands on its own:\n{text}"
    );
    drop(rt);
}

/// What happened to one connection attempt during a drain.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// Answered; whether the response said `Connection: close`.
    Served { close: bool },
    /// Refused at connect (the listener is closed).
    Refused,
    /// Accepted but neither answered nor closed within 5 s: what must not happen.
    Hung,
}

fn attempt(port: u16, path: &str) -> Attempt {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Attempt::Refused;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
        return Attempt::Refused;
    }
    let mut buf = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&text).contains("\r\n\r\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Attempt::Refused,
            Err(_) => return Attempt::Hung,
        }
    }
    let text = String::from_utf8_lossy(&text).to_ascii_lowercase();
    if text.is_empty() {
        // Closed without an answer: the listener was closing as it accepted.
        return Attempt::Refused;
    }
    Attempt::Served {
        close: text.contains("connection: close"),
    }
}

/// SIGTERM: `/readyz` answers 503 at once, new connections are served (with
/// `Connection: close`) for `shutdown_delay`, then refused; none is left hanging.
#[cfg(unix)]
#[test]
fn a_drain_serves_or_refuses_new_connections_and_never_hangs_them() {
    // An upstream that accepts and never answers holds one request in flight, so
    // the process lives on after its listener closed (the grace period).
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap().port();
    let (port, admin, upstream) = (free_port(), free_port(), echo_upstream());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listen: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
limits: {{ shutdown_delay: 2s, shutdown_grace: 4s }}
upstreams:
  u: {{ targets: ["http://127.0.0.1:{upstream}"] }}
  hole: {{ targets: ["http://127.0.0.1:{hole}"], response_header_timeout: 60s }}
routes:
  - {{ name: r, match: {{ path_prefix: /r/ }}, upstream: u, public: true }}
  - {{ name: hold, match: {{ path_prefix: /hold/ }}, upstream: hole, public: true }}
"#
        ),
    )
    .unwrap();
    let mut child = start_gateway(&path, port);
    assert_eq!(get(admin, "/readyz").unwrap().0, 200);
    let held = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /hold/x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    });
    let _accepted = black_hole.accept().unwrap();
    send_signal(&child, "-TERM");
    wait_for("readiness to fail", || {
        get(admin, "/readyz").is_some_and(|(s, b)| s == 503 && b.contains("draining"))
    });
    let mut attempts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the gateway did not exit");
        let a = attempt(port, "/r/x");
        assert_ne!(
            a,
            Attempt::Hung,
            "a connection was left hanging during the drain"
        );
        attempts.push(a);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        attempts.contains(&Attempt::Served { close: true }),
        "served with Connection: close during shutdown_delay: {attempts:?}"
    );
    assert!(
        !attempts.contains(&Attempt::Served { close: false }),
        "a drained response kept its connection: {attempts:?}"
    );
    assert!(
        attempts.contains(&Attempt::Refused),
        "refused once the listener closed: {attempts:?}"
    );
    assert!(child.wait().unwrap().success());
    held.join().unwrap();
}

/// Runs `portcullis validate` on `text`; exit code and stderr lines with the
/// file name taken off (`line:column: path: message`).
fn validate_text(text: &str) -> (Option<i32>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let prefix = format!("{}:", path.display());
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_owned())
        .collect();
    (out.status.code(), lines)
}

/// Every structural mistake is reported in one run, each at its own line and
/// column with its own path; a tab is named; a missing file causes no cascade of
/// "unknown issuer"; a duplicate key is shown where it repeats.
#[test]
fn validate_is_exact_about_each_mistake() {
    let (code, lines) = validate_text(
        r#"listen: { address: "127.0.0.1:0" }
limits:
  header_read_timeout: 30
  max_body: 10 parsecs
upstreams:
  llm: { targets: [http://127.0.0.1:9] }
routes:
  - name: a
    match: { path_prefix: /a/ }
    upstream: llm
    timeout: 5
    public: true
  - name: b
    match: { pathprefix: /b/ }
    upstream: llm
    public: true
"#,
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        lines,
        [
            "3:3: limits.header_read_timeout: duration 30 needs a unit: ms, s, m, h or d (e.g. 30s)",
            "4:3: limits.max_body: unknown size unit \"parsecs\" in \"10 parsecs\"; use B, KiB, MiB, GiB, KB, MB or GB",
            "11:5: routes[0].timeout: duration 5 needs a unit: ms, s, m, h or d (e.g. 5s)",
            "14:14: routes[1].match.pathprefix: unknown key `pathprefix` (did you mean \"path_prefix\"?); known keys: host, path, path_prefix, methods, case_insensitive, models",
        ]
    );

    let (_, lines) = validate_text("listen:\n\taddress: \"127.0.0.1:0\"\n");
    assert_eq!(
        lines,
        ["2:1: a tab character: YAML indents with spaces only"]
    );

    let (_, lines) = validate_text(
        "issuers:\n  dev:\n    issuer: https://idp.example/\n    static_keys_file: /nonexistent/keys.json\nupstreams:\n  llm: { targets: [http://127.0.0.1:9] }\nroutes:\n  - name: a\n    upstream: llm\n    auth: { issuers: [dev], audiences: [x] }\n",
    );
    assert_eq!(
        lines.len(),
        1,
        "no cascade from the missing file: {lines:?}"
    );
    assert!(
        lines[0]
            .starts_with("4:5: issuers.dev.static_keys_file: cannot read /nonexistent/keys.json"),
        "{lines:?}"
    );

    let (_, lines) = validate_text(
        "upstreams:\n  llm: { targets: [http://127.0.0.1:9] }\n  llm: { targets: [http://127.0.0.1:8] }\nroutes:\n  - { name: a, upstream: llm, public: true }\n",
    );
    assert_eq!(
        lines,
        ["3:3: upstreams.llm: duplicate key `llm` (first at line 2); each key may appear once"]
    );
}

/// `validate --online` fetches each issuer's metadata and names an issuer string
/// that differs from the server's (here by a trailing slash) with the fix.
#[test]
fn validate_online_finds_an_issuer_spelled_differently_from_its_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let auth = rt
        .block_on(portcullis_devkit::AuthServer::start(
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let right = auth.issuer().to_owned();
    assert!(right.ends_with('/'));
    let wrong = right.trim_end_matches('/').to_owned();
    let config = |issuer: &str| {
        format!(
            "issuers:\n  dev: {{ issuer: \"{issuer}\", discovery: true }}\nupstreams:\n  u: {{ targets: [http://127.0.0.1:9] }}\nroutes:\n  - {{ name: a, upstream: u, auth: {{ issuers: [dev], audiences: [x] }} }}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    let run = |text: String| {
        std::fs::write(&path, text).unwrap();
        Command::new(BIN)
            .args(["validate", "--online", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run(config(&wrong));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("differ by a trailing slash"), "{stderr}");
    assert!(
        stderr.contains(&format!("Fix: issuer: {right:?}")),
        "{stderr}"
    );
    // Offline, the same file validates: only --online can see it.
    let offline = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(offline.status.code(), Some(0));
    let out = run(config(&right));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("matches its metadata"));
    drop(rt);
}

/// Runs `portcullis explain` with `args`: exit code and stdout.
fn explain(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("explain")
        .args(args)
        .env_remove("PORTCULLIS_ADMIN")
        .env_remove("PORTCULLIS_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_prints_a_refused_requests_trace_from_a_running_gateway() {
    let file = GatewayFile::new("", "/one");
    let token_file = file.path.with_file_name("admin-token");
    std::fs::write(&token_file, "fedcba9876543210fedcba9876543210\n").unwrap();
    let yaml = std::fs::read_to_string(&file.path).unwrap().replace(
        &format!("admin: {{ address: \"127.0.0.1:{}\" }}", file.admin),
        &format!(
            "admin: {{ address: \"127.0.0.1:{}\", token_file: admin-token }}",
            file.admin
        ),
    );
    assert!(yaml.contains("token_file"), "{yaml}");
    std::fs::write(&file.path, yaml).unwrap();
    let mut child = start_gateway(&file.path, file.port);

    let raw = {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", file.port)).unwrap();
        write!(
            s,
            "GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let id = raw
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_owned();
    let admin = format!("http://127.0.0.1:{}", file.admin);
    let token = token_file.display().to_string();

    let (code, text) = explain(&[&id, "--admin", &admin, "--token-file", &token]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("request {id}: GET /nowhere -> 404")),
        "{text}"
    );
    assert!(text.contains("✗ route"), "{text}");
    assert!(text.contains("route_not_found"), "{text}");

    let (code, json) = explain(&[&id, "--admin", &admin, "--token-file", &token, "--json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["reason"], "route_not_found");

    let (code, text) = explain(&["never-seen", "--admin", &admin, "--token-file", &token]);
    assert_eq!(code, 1, "not kept: {text}");
    let (code, _) = explain(&[&id, "--admin", &admin]);
    assert_eq!(code, 2, "the admin listener wants its token");
    terminate_and_expect_clean_exit(&mut child);
    let (code, _) = explain(&[&id, "--admin", &admin, "--token-file", &token]);
    assert_eq!(code, 2, "nobody listening");
}

/// The fields of one text log line after its `target: message` prefix, parsed
/// as logfmt: `key=value` or `key="quoted \" value"`; `None` when the rest of
/// the line is not logfmt.
fn logfmt_fields(line: &str) -> Option<Vec<(String, String)>> {
    let start = line.find(": ")? + 2;
    let rest = &line[start..];
    // The message is free text up to the first `key=`.
    let first = rest
        .char_indices()
        .find(|&(i, _)| {
            rest[i..].split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) && (i == 0 || rest.as_bytes()[i - 1] == b' ')
        })
        .map_or(rest.len(), |(i, _)| i);
    let mut fields = Vec::new();
    let mut chars = rest[first..].chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(fields);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(' ')) {
                return None;
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ' ' {
                    break;
                }
                if c == '"' || c == '=' {
                    return None;
                }
                value.push(c);
                chars.next();
            }
        }
        fields.push((key, value));
    }
}

#[test]
fn every_text_log_line_is_one_logfmt_record_and_access_lines_account_for_the_exchange() {
    let (port, admin, upstream) = (free_port(), free_port(), echo_upstream());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listen: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
logging: {{ format: text, access_log: true }}
upstreams:
  u: {{ targets: ["http://127.0.0.1:{upstream}"] }}
routes:
  - {{ name: r, match: {{ path_prefix: /r/ }}, upstream: u, public: true }}
"#
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = start_gateway_logging_to(&path, port, log_file.into(), "info");
    assert_eq!(get(port, "/r/ok").map(|(s, _)| s), Some(200));
    assert_eq!(get(port, "/nope%20with%22quote").map(|(s, _)| s), Some(404));
    terminate_and_expect_clean_exit(&mut child);

    let text = std::fs::read_to_string(&log_path).unwrap();
    let mut access = Vec::new();
    for line in text.lines() {
        assert!(
            line.starts_with("20") && line.as_bytes().get(10) == Some(&b'T'),
            "a line that is not a record of its own (a continuation):\n{line}\n--\n{text}"
        );
        let fields = logfmt_fields(line).unwrap_or_else(|| panic!("not logfmt: {line}"));
        if line.contains("portcullis::access") {
            access.push(fields);
        }
    }
    assert!(
        text.contains("effective configuration") && text.contains("setting=\"listen"),
        "the start-up summary, one record per setting:\n{text}"
    );
    let field = |f: &[(String, String)], k: &str| {
        f.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {f:?}"))
    };
    // The two exchanges of this test (the readiness probe's come first).
    let ok = access
        .iter()
        .find(|f| field(f, "path") == "/r/ok")
        .expect("the proxied request's line");
    assert_eq!(field(ok, "status"), "200");
    assert_eq!(field(ok, "stream"), "complete");
    assert_eq!(field(ok, "upstream_status"), "200");
    assert_eq!(field(ok, "refused_by"), "-");
    assert!(field(ok, "bytes_out").parse::<u64>().unwrap() > 0);
    for key in ["duration_ms", "ttfb_ms", "upstream_ms"] {
        let v = field(ok, key);
        let decimals = v.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            v.parse::<f64>().is_ok() && decimals <= 3,
            "{key}={v}: milliseconds to the microsecond"
        );
    }
    let refused = access
        .iter()
        .find(|f| field(f, "status") == "404")
        .expect("the refusal's line");
    assert_eq!(field(refused, "reason"), "route_not_found");
    assert_eq!(field(refused, "refused_by"), "gateway");
    assert_eq!(field(refused, "upstream_ms"), "-", "absent, not -1.0");
    assert_eq!(field(refused, "upstream_status"), "-");
    assert_eq!(field(refused, "path"), "/nope%20with%22quote");
}

/// A `redis-server` on a free port with its own folder, killed on drop; `None`
/// where the machine has none (outside CI).
struct RedisProcess {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RedisProcess {
    fn start() -> Option<RedisProcess> {
        let server = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(server) = server else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing in CI"
            );
            eprintln!("redis-server is not installed: skipped (scripts/test.sh installs it)");
            return None;
        };
        let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("redis-server", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(RedisProcess {
            port,
            child,
            _dir: dir,
        })
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every route limited to 10 requests an hour per route, in the store `store`.
fn shared_limit(store: &str, on_error: &str) -> String {
    format!(
        "rate_limits:\n  store: {store}\n  on_store_error: {on_error}\n  store_timeout: 200ms\n  default: [shared]\n  policies:\n    shared: {{ rate: 10/hour, key: [route] }}\n"
    )
}

#[test]
fn two_gateway_processes_sharing_one_redis_enforce_one_limit() {
    let Some(redis) = RedisProcess::start() else {
        return;
    };
    let extra = shared_limit(&format!("redis://127.0.0.1:{}/0", redis.port), "deny");
    let (a, b) = (
        GatewayFile::new(&extra, "/x"),
        GatewayFile::new(&extra, "/x"),
    );
    // Each start waits for one 200: two of the ten are spent here.
    let mut ga = start_gateway(&a.path, a.port);
    let mut gb = start_gateway(&b.path, b.port);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        for port in [a.port, b.port] {
            statuses.push(get(port, "/r/x").map_or(0, |(s, _)| s));
        }
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (passed, limited),
        (8, 12),
        "one limit of 10 for both: {statuses:?}"
    );
    terminate_and_expect_clean_exit(&mut ga);
    terminate_and_expect_clean_exit(&mut gb);
}

#[test]
fn an_unreachable_redis_at_start_is_logged_and_the_gateway_serves() {
    let closed = free_port();
    let extra = shared_limit(&format!("redis://127.0.0.1:{closed}/0"), "local");
    let file = GatewayFile::new(&extra, "/x");
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Serving at once: local limits while the store is away.
    let mut child = start_gateway_logging_to(&file.path, file.port, Stdio::from(log), "info");
    wait_for("the start-up warning", || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|t| t.contains("rate-limit store unreachable at start"))
    });
    let text = std::fs::read_to_string(&log_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("rate-limit store unreachable at start"))
        .unwrap();
    assert!(
        line.contains(&format!("redis://127.0.0.1:{closed}/0")),
        "{line}"
    );
    assert!(line.contains("on_store_error=Local"), "{line}");
    let statuses: Vec<u16> = (0..12)
        .map(|_| get(file.port, "/r/x").map_or(0, |(s, _)| s))
        .collect();
    // One 200 was spent by the start: 9 more, then local refusals.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    terminate_and_expect_clean_exit(&mut child);
}

/// `portcullis diagnose --json` on `path` for `/r/x`: exit code and document.
fn diagnose_r(path: &Path) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["diagnose", "--json", "--no-upstream", "--config"])
        .arg(path)
        .args(["--url", "http://t/r/x"])
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), doc)
}

#[test]
fn diagnose_reads_the_live_budget_in_redis_and_names_both_reasons() {
    let Some(redis) = RedisProcess::start() else {
        return;
    };
    let extra = shared_limit(&format!("redis://127.0.0.1:{}/0", redis.port), "deny");
    let file = GatewayFile::new(&extra, "/x");
    let mut gateway = start_gateway(&file.path, file.port);
    // The start spent one of ten; diagnose spends none.
    for _ in 0..3 {
        let (code, doc) = diagnose_r(&file.path);
        assert_eq!(code, 0, "{doc}");
        let evidence = doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "rate_limit")
            .map(|s| s["evidence"].to_string())
            .unwrap_or_default();
        assert!(evidence.contains("r=9"), "{evidence}");
    }
    for _ in 0..9 {
        assert_eq!(get(file.port, "/r/x").map(|(s, _)| s), Some(200));
    }
    let (code, doc) = diagnose_r(&file.path);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["reason"], "rate_limited", "{doc}");
    assert_eq!(doc["step"], "rate_limit", "{doc}");
    // The store gone, on_store_error: deny names the other reason.
    drop(redis);
    let (code, doc) = diagnose_r(&file.path);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["reason"], "rate_limit_unavailable", "{doc}");
    terminate_and_expect_clean_exit(&mut gateway);
}
