//! Unit tests of loading and validating configuration text.

use super::*;
use std::path::PathBuf;

const GOOD: &str = r#"
listen:
  address: 127.0.0.1:0
issuers:
  dev:
    issuer: http://127.0.0.1:9000/
upstreams:
  llm:
    targets: [http://127.0.0.1:9001]
    credential:
      header: authorization
      value: "Bearer ${API_KEY}"
routes:
  - name: chat
    match: { path_prefix: /v1/ }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: [api]
      scopes: { all_of: [chat:write] }
      claim_headers: { sub: X-Portcullis-Subject }
  - name: health
    match: { path: /healthz, methods: [GET] }
    upstream: llm
    public: true
"#;

fn env(name: &str) -> Option<String> {
    (name == "API_KEY").then(|| "sk-live-123".to_owned())
}

fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
    load_str(text, "gateway.yaml", &PathBuf::from("."), &env)
}

#[test]
fn good_config_compiles() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.routes.len(), 2);
    let RouteAuth::Protected(p) = &c.routes[0].auth else {
        panic!("protected")
    };
    assert!(p.issuers.contains_key("http://127.0.0.1:9000/"));
    let cred = c.upstreams["llm"].credential.as_ref().unwrap();
    assert_eq!(cred.value.0, "Bearer sk-live-123");
    assert!(
        !format!("{c:?}").contains("sk-live-123"),
        "secret leaked into Debug"
    );
    assert!(c.warnings.iter().any(|w| w.contains("public")));
}

#[test]
fn errors_have_file_line_column_and_path() {
    let bad = GOOD.replace("upstream: llm\n    auth", "upstream: opena\n    auth");
    let err = load(&bad).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("gateway.yaml:16:5: routes[0].upstream: unknown upstream \"opena\""),
        "{text}"
    );
}

#[test]
fn unknown_key_suggests() {
    let bad = GOOD.replace("upstream: llm\n    public", "upstrem: llm\n    public");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("unknown key `upstrem` (did you mean \"upstream\"?)"),
        "{err}"
    );
    assert!(
        err.contains("gateway.yaml:24:5: routes[1].upstrem"),
        "{err}"
    );
}

#[test]
fn all_problems_reported_at_once() {
    let bad = GOOD
        .replace("audiences: [api]", "audiences: []")
        .replace("issuers: [dev]", "issuers: [dve]")
        .replace("${API_KEY}", "${MISSING_KEY}");
    let err = load(&bad).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(text.contains("environment variable MISSING_KEY is not set"));
    assert!(text.contains("unknown issuer \"dve\" (did you mean \"dev\"?)"));
    assert!(text.contains("audiences: required"));
}

#[test]
fn route_without_auth_fails_closed() {
    let bad = GOOD.replace("    public: true\n", "");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("routes[1]: has no auth block and is not marked public"),
        "{err}"
    );
}

#[test]
fn rejects_alg_none_and_hmac_next_to_keys() {
    let bad = GOOD.replace(
        "issuer: http://127.0.0.1:9000/",
        "issuer: http://127.0.0.1:9000/\n    algorithms: [none, HS256]",
    );
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("alg none is never allowed"), "{err}");
    assert!(err.contains("HS256 needs a shared secret issuer"), "{err}");
}

#[test]
fn bad_cidr_and_units() {
    let bad = GOOD.replace(
        "listen:\n",
        "network:\n  allow: [10.0.0.1/8, nonsense]\nlimits:\n  max_body: 10 parsecs\nlisten:\n",
    );
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown size unit"), "{err}");
    let bad = GOOD.replace(
        "listen:\n",
        "network:\n  allow: [10.0.0.1/8, nonsense]\nlisten:\n",
    );
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("network.allow[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
        "{err}"
    );
    assert!(err.contains("network.allow[1]"), "{err}");
}

#[test]
fn plain_http_jwks_refused_off_loopback() {
    let bad = GOOD.replace("http://127.0.0.1:9000/", "http://idp.example.com/");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("plain http to a non-loopback host"), "{err}");
}

#[test]
fn bad_yaml_is_located() {
    let err = load("routes: [\n  - name: a\n").unwrap_err();
    assert!(err.problems[0].line.is_some(), "{err}");
}

#[test]
fn validate_warnings() {
    let text = GOOD.replace("  - name: health", "  - name: chat-again\n    match: { path_prefix: /v1/, methods: [POST] }\n    upstream: llm\n    public: true\n  - name: health")
        .replace("upstreams:\n", "upstreams:\n  unused:\n    targets: [http://127.0.0.1:1]\n")
        .replace("    public: true\n\"", "    public: true\n    ip: { allow: [10.1.0.0/16], deny: [10.0.0.0/8] }\n\"");
    let text = format!("{text}    ip: {{ allow: [10.1.0.0/16], deny: [10.0.0.0/8] }}\n");
    let c = load(&text).unwrap();
    let all = c.warnings.join("\n");
    assert!(
        all.contains("routes[1] (chat-again) can never match: routes \"chat\""),
        "{all}"
    );
    assert!(all.contains("routes[2] (health) is public"), "{all}");
    assert!(
        all.contains("routes[2] (health): the ip deny list covers the whole allow list"),
        "{all}"
    );
    assert!(
        all.contains("upstreams.unused is not used by any route"),
        "{all}"
    );
}

#[test]
fn a_route_cannot_accept_two_issuers_with_one_iss() {
    let text = GOOD
        .replace(
            "issuers:\n  dev:\n",
            "issuers:\n  dev2:\n    issuer: http://127.0.0.1:9000/\n  dev:\n",
        )
        .replace("issuers: [dev]", "issuers: [dev, dev2]");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("share the iss"), "{err}");
}

#[test]
fn hardening_settings_have_safe_defaults() {
    let c = load(GOOD).unwrap();
    use portcullis_policy::path::{EmptySegments, EscapedSlashes, Semicolons};
    assert_eq!(c.paths.escaped_slashes, EscapedSlashes::Reject);
    assert_eq!(c.paths.semicolons, Semicolons::Reject);
    assert_eq!(c.paths.empty_segments, EmptySegments::Merge);
    assert!(
        c.routes.iter().all(|r| r.upgrades.is_empty()),
        "no upgrade unless listed"
    );
    assert_eq!(c.limits.first_byte_timeout, c.limits.header_read_timeout);
    assert_eq!(c.limits.idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(
        c.limits.body_read_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(c.limits.max_connections_per_ip, 0);
    assert!(
        c.network
            .strip_from_untrusted
            .iter()
            .any(|h| h == "x-http-method-override")
    );
}

#[test]
fn hardening_settings_are_validated() {
    let text = GOOD
        .replace(
            "routes:\n",
            "paths: { semicolons: allow, escaped_slashes: keep }\n\
             network:\n  trusted_proxies: [10.0.0.0/8, { cidr: 192.0.2.0/24, header: forwarded }, { cidr: 198.51.100.0/24, header: x-real-ip }]\n  strip_from_untrusted: [\"bad header\"]\n\
             limits: { idle_timeout: 0s }\n\
             routes:\n",
        )
        .replace(
            "match: { path_prefix: /v1/ }",
            "match: { path_prefix: /v1//x }\n    upgrades: [websocket, h2c, \"bad proto\"]",
        );
    let err = load(&text).unwrap_err().to_string();
    for needle in [
        "paths.semicolons: \"allow\" is not a choice",
        "network.trusted_proxies[2].header: \"x-real-ip\" is not a forwarding header",
        "network.strip_from_untrusted[0]",
        "limits.idle_timeout: must be more than 0",
        "routes[0].match.path: \"/v1//x\" is not in canonical form; requests are matched as \"/v1/x\"",
        "routes[0].upgrades[1]: h2c upgrades are never relayed",
        "routes[0].upgrades[2]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let ok = GOOD.replace(
        "routes:\n",
        "network:\n  trusted_proxies: [{ cidr: 192.0.2.0/24, header: forwarded }, 10.0.0.0/8]\nroutes:\n",
    );
    let c = load(&ok).unwrap();
    assert!(
        c.network
            .forwarded_proxies
            .contains("192.0.2.7".parse().unwrap())
    );
    assert!(
        !c.network
            .forwarded_proxies
            .contains("10.0.0.7".parse().unwrap())
    );
    assert!(
        c.network
            .trusted_proxies
            .contains("10.0.0.7".parse().unwrap())
    );
}

#[test]
fn a_placeholder_credential_is_refused() {
    let env = |name: &str| (name == "API_KEY").then(|| "replace-me".to_owned());
    let err = load_str(GOOD, "gateway.yaml", &PathBuf::from("."), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstreams.llm.credential: the credential still holds the example placeholder \"replace-me\""),
        "{err}"
    );
    assert!(
        !err.contains("Bearer"),
        "the value itself is not echoed: {err}"
    );
}

#[test]
fn lints_for_a_public_route_spending_a_credential_and_a_mid_segment_strip() {
    let text = GOOD
        .replace(
            "  - name: health\n    match: { path: /healthz, methods: [GET] }",
            "  - name: health\n    match: { path: /healthz, methods: [GET] }\n    rewrite: { strip_prefix: /heal }",
        );
    let c = load(&text).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains(
            "routes[1] (health) is public but its upstream \"llm\" injects a credential"
        )),
        "{:?}",
        c.warnings
    );
    let text = GOOD.replace(
        "match: { path_prefix: /v1/ }",
        "match: { path_prefix: /v1/chat }\n    rewrite: { strip_prefix: /v1/ch }",
    );
    let c = load(&text).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("rewrite.strip_prefix \"/v1/ch\" ends inside a path segment")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn cors_policies_are_validated() {
    let with = |cors: &str| {
        GOOD.replace(
            "      claim_headers: { sub: X-Portcullis-Subject }",
            &format!("      claim_headers: {{ sub: X-Portcullis-Subject }}\n    cors: {cors}"),
        )
    };
    let c = load(&with(
        "{ allowed_origins: [\"https://Chat.Example.com/\"] }",
    ))
    .unwrap();
    let cors = c.routes[0].cors.as_ref().unwrap();
    assert_eq!(cors.origins, ["https://chat.example.com"]);
    assert_eq!(cors.max_age, std::time::Duration::from_secs(600));
    assert!(!cors.credentials);
    let err = load(&with(
        "{ allowed_origins: [\"*\", \"chat.example.com\", \"https://a.example/path\"], allow_credentials: true, allowed_methods: [\"GE T\"] }",
    ))
    .unwrap_err()
    .to_string();
    for needle in [
        "routes[0].cors.allow_credentials: cannot go with allowed_origins \"*\"",
        "routes[0].cors.allowed_origins[1]: \"chat.example.com\" is not an origin",
        "routes[0].cors.allowed_origins[2]",
        "routes[0].cors.allowed_methods[0]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn admin_settings_have_defaults_and_refuse_a_short_token_or_a_huge_ring() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.admin_settings.explain_capacity, DEFAULT_EXPLAIN_CAPACITY);
    assert!(c.admin_settings.token.is_none());
    assert!(!c.admin_settings.protect_metrics);

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let long = dir.path().join("long");
    std::fs::write(&long, "0123456789abcdef0123456789abcdef\n").unwrap();
    let with_admin = |admin: &str| GOOD.replace("listen:", &format!("admin: {admin}\nlisten:"));

    let e = load(&with_admin(&format!(
        "{{ token_file: {:?} }}",
        short.display().to_string()
    )))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("admin.token_file") && e.contains("at least 16"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the token is never printed: {e}");

    let c = load(&with_admin(&format!(
        "{{ token_file: {:?}, protect_metrics: true, explain: {{ capacity: 0 }} }}",
        long.display().to_string()
    )))
    .unwrap();
    assert!(c.admin_settings.token.is_some());
    assert!(c.admin_settings.protect_metrics);
    assert_eq!(c.admin_settings.explain_capacity, 0);
    assert!(!format!("{c:?}").contains("0123456789abcdef"));
    assert!(c.files.contains(&long), "the token file is watched");

    let e = load(&with_admin("{ explain: { capacity: 1000000 } }"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.explain.capacity") && e.contains("100000"),
        "{e}"
    );
}

#[test]
fn an_admin_listener_beyond_loopback_without_a_token_is_warned_about() {
    let c =
        load(&GOOD.replace("listen:", "admin: { address: \"0.0.0.0:9091\" }\nlisten:")).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("admin.token_file is not set")),
        "{:?}",
        c.warnings
    );
    let c = load(GOOD).unwrap();
    assert!(!c.warnings.iter().any(|w| w.contains("admin.token_file")));
}

/// `GOOD` with a `rate_limits` block and per-route references.
fn with_limits(limits: &str, chat: &str, health: &str) -> String {
    let mut text = format!("{limits}\n{GOOD}");
    text = text.replace(
        "      claim_headers: { sub: X-Portcullis-Subject }\n",
        &format!("      claim_headers: {{ sub: X-Portcullis-Subject }}\n    rate_limits: {chat}\n"),
    );
    text.replace(
        "    public: true\n",
        &format!("    public: true\n    rate_limits: {health}\n"),
    )
}

#[test]
fn rate_limit_policies_compile_with_their_defaults() {
    let text = with_limits(
        "rate_limits:\n  default: [per_ip]\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }\n    per_client: { rate: 600/min, burst: 50, key: [client, route] }\n    per_key: { rate: 5/10s, key: [\"header:X-Api-Key\"], mode: report }",
        "[per_client, per_ip]",
        "[per_key]",
    );
    let c = load(&text).unwrap();
    let rl = &c.rate_limits;
    assert_eq!(rl.max_keys, 1_000_000);
    assert!(!rl.response_headers);
    assert_eq!(rl.default.len(), 1);
    let per_ip = &rl.policies["per_ip"];
    assert_eq!(
        (per_ip.count, per_ip.burst),
        (100, 100),
        "burst defaults to the count"
    );
    assert_eq!(per_ip.window, std::time::Duration::from_secs(1));
    let per_client = &rl.policies["per_client"];
    assert_eq!(per_client.burst, 50);
    assert!(per_client.needs_client());
    assert!(per_ip.before_authentication());
    assert!(!per_client.before_authentication());
    assert!(
        !rl.policies["per_key"].before_authentication(),
        "a header key is checked after authorization: refused tokens spend none of it"
    );
    assert_eq!(per_client.key_kinds(), "client+route");
    assert_eq!(rl.policies["per_key"].mode, LimitMode::Report);
    let names = |i: usize| -> Vec<String> {
        c.routes[i]
            .rate_limits
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(names(0), ["per_client", "per_ip"]);
    assert_eq!(names(1), ["per_key"]);
    // Without its own list a route takes the defaults; [] opts out.
    let text = with_limits(
        "rate_limits:\n  default: [per_ip, per_client]\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }\n    per_client: { rate: 600/min, key: [client] }",
        "[]",
        "[per_ip]",
    )
    .replace("    rate_limits: [per_ip]\n", "");
    let c = load(&text).unwrap();
    assert!(c.routes[0].rate_limits.is_empty(), "[] opts out");
    let public: Vec<&str> = c.routes[1]
        .rate_limits
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        public,
        ["per_ip"],
        "a public route leaves out per-client defaults"
    );
}

#[test]
fn bad_rate_limits_are_errors_at_their_paths() {
    let text = with_limits(
        "rate_limits:\n  store: mongodb://127.0.0.1:6379\n  max_keys: 0\n  default: [nope]\n  policies:\n    zero: { rate: 0/s, key: [ip] }\n    negative: { rate: 10/s, burst: -1, key: [ip] }\n    kinds: { rate: 10/s, key: [user] }\n    nokey: { rate: 10/s }\n    per_client: { rate: 10/s, key: [client] }",
        "[per_clint]",
        "[per_client]",
    );
    let err = load(&text).unwrap_err().to_string();
    for expected in [
        "rate_limits.store: \"mongodb\" is not a store",
        "rate_limits.max_keys",
        "rate_limits.default[0]: unknown rate-limit policy \"nope\"",
        "rate_limits.policies.zero.rate",
        "rate_limits.policies.negative.burst",
        "rate_limits.policies.kinds.key[0]: unknown key kind \"user\"",
        "rate_limits.policies.nokey.key",
        "routes[0].rate_limits[0]: unknown rate-limit policy \"per_clint\"",
        "did you mean \"per_client\"",
        "routes[1].rate_limits[0]: policy \"per_client\" is kept per client",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_redis_store_compiles_without_showing_its_secret() {
    let dir = tempfile_dir();
    let pass = dir.join("redis-pass");
    std::fs::write(&pass, "from-a-file\n").unwrap();
    let text = with_limits(
        &format!(
            "rate_limits:\n  store: redis://:in-url-secret@127.0.0.1:6379/2\n  store_password_file: {}\n  store_timeout: 20ms\n  on_store_error: deny\n  key_prefix: \"gw:\"\n  policies:\n    per_ip: {{ rate: 100/s, key: [ip] }}",
            pass.display()
        ),
        "[per_ip]",
        "[per_ip]",
    );
    let c = load(&text).unwrap();
    let RateStore::Redis(store) = &c.rate_limits.store else {
        panic!("a redis store")
    };
    assert_eq!(store.shown, "redis://127.0.0.1:6379/2");
    assert_eq!(store.password.as_ref().unwrap().0, "from-a-file");
    assert_eq!(store.timeout, std::time::Duration::from_millis(20));
    assert_eq!(store.on_error, OnStoreError::Deny);
    assert_eq!(store.key_prefix, "gw:");
    assert_eq!(store.consistency, Consistency::Exact);
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("in-url-secret") && !debug.contains("from-a-file"),
        "{debug}"
    );
    assert!(c.files.contains(&pass), "the password file is watched");
    // Store settings without a store, and a consistency not built yet.
    let text = with_limits(
        "rate_limits:\n  on_store_error: allow\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }",
        "[per_ip]",
        "[per_ip]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("rate_limits.on_store_error: only means something with a shared store"),
        "{err}"
    );
    let text = with_limits(
        "rate_limits:\n  store: redis://127.0.0.1:6379\n  consistency: approximate\n  store_timeout: 0s\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }",
        "[per_ip]",
        "[per_ip]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("rate_limits.store_timeout: must be longer than zero"),
        "{err}"
    );
    let text = with_limits(
        "rate_limits:\n  store: redis://127.0.0.1:6379\n  consistency: approximate\n  sync_interval: 1ms\n  on_store_error: deny\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }",
        "[per_ip]",
        "[per_ip]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("rate_limits.sync_interval: must be at least 10ms"),
        "{err}"
    );
    let not_pem = tempfile_dir().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let text = with_limits(
        &format!(
            "rate_limits:\n  store: redis://127.0.0.1:6379\n  store_ca_file: {}\n  policies:\n    per_ip: {{ rate: 100/s, key: [ip] }}",
            not_pem.display()
        ),
        "[per_ip]",
        "[per_ip]",
    );
    let err2 = load(&text).unwrap_err().to_string();
    assert!(
        err2.contains("store_ca_file: only means something with a rediss://"),
        "{err2}"
    );
    assert!(
        err2.contains("store_ca_file: holds no PEM certificate"),
        "{err2}"
    );
    assert!(
        err.contains("rate_limits.on_store_error: with consistency: approximate"),
        "{err}"
    );
    let text = with_limits(
        "rate_limits:\n  store: redis://127.0.0.1:6379\n  consistency: approximate\n  sync_interval: 250ms\n  policies:\n    per_ip: { rate: 100/s, key: [ip] }",
        "[per_ip]",
        "[per_ip]",
    );
    let c = load(&text).unwrap();
    let RateStore::Redis(store) = &c.rate_limits.store else {
        panic!("a redis store")
    };
    assert_eq!(
        store.consistency,
        Consistency::Approximate {
            sync_interval: std::time::Duration::from_millis(250)
        }
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_protected_resource_must_be_an_audience_and_own_its_metadata_path() {
    let one = GOOD.replace(
        "      audiences: [api]\n",
        "      audiences: [api, \"https://api.example.com/v1\"]\n      resource: \"https://api.example.com/v1\"\n",
    );
    let c = load(&one).unwrap();
    let RouteAuth::Protected(p) = &c.routes[0].auth else {
        panic!("protected")
    };
    let r = p.resource.as_ref().unwrap();
    assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource/v1");
    let not_audience = GOOD.replace(
        "      audiences: [api]\n",
        "      audiences: [api]\n      resource: \"https://api.example.com/v1\"\n",
    );
    let err = load(&not_audience).unwrap_err().to_string();
    assert!(
        err.contains("routes[0].auth.resource: \"https://api.example.com/v1\" is not one of the route's audiences"),
        "{err}"
    );
    let clash = format!(
        "{one}  - name: other\n    match: {{ path_prefix: /other/ }}\n    upstream: llm\n    auth: {{ issuers: [dev], audiences: [\"https://other.example.com/v1\"], resource: \"https://other.example.com/v1\" }}\n"
    );
    let err = load(&clash).unwrap_err().to_string();
    assert!(
        err.contains("routes[2].auth.resource")
            && err.contains(
                "would both have their metadata at /.well-known/oauth-protected-resource/v1"
            ),
        "{err}"
    );
}

/// GOOD with the issuer `dev` replaced by `issuer_block`, a second issuer
/// `other`, and the chat route accepting `issuers`.
fn with_issuers(issuer_block: &str, issuers: &str) -> String {
    GOOD.replace(
        "  dev:\n    issuer: http://127.0.0.1:9000/\n",
        &format!("{issuer_block}  other:\n    issuer: http://127.0.0.1:9002/\n    tokens: opaque\n    introspection: {{ client_id: gw, client_secret: s }}\n"),
    )
    .replace("issuers: [dev]", &format!("issuers: {issuers}"))
}

#[test]
fn an_opaque_issuer_compiles_with_its_introspection_defaults() {
    let text = with_issuers(
        "  dev:\n    issuer: http://127.0.0.1:9000/\n    tokens: opaque\n    introspection:\n      client_id: portcullis\n      client_secret: ${API_KEY}\n      auth_method: client_secret_post\n",
        "[dev]",
    );
    let c = load(&text).unwrap();
    let dev = &c.issuers["dev"];
    assert_eq!(dev.tokens, TokenKind::Opaque);
    assert!(dev.source.is_none(), "an opaque issuer fetches no keys");
    let x = dev.introspection.as_ref().unwrap();
    assert_eq!(x.client_id, "portcullis");
    assert_eq!(x.auth.name(), "client_secret_post");
    assert_eq!(x.endpoint, None, "discovered");
    assert_eq!(x.cache_ttl, std::time::Duration::from_secs(300));
    assert_eq!(x.negative_cache_ttl, std::time::Duration::from_secs(10));
    assert_eq!(x.max_stale, std::time::Duration::ZERO);
    assert_eq!(
        (x.retries, x.max_concurrent, x.max_bytes),
        (1, 100, 64 << 10)
    );
    assert!(
        !format!("{c:?}").contains("sk-live-123"),
        "the client secret leaked into Debug"
    );
    // auto keeps its key source.
    let auto = with_issuers(
        "  dev:\n    issuer: http://127.0.0.1:9000/\n    tokens: auto\n    introspection: { client_id: gw, client_secret: s }\n",
        "[dev]",
    );
    let c = load(&auto).unwrap();
    assert!(c.issuers["dev"].source.is_some());
}

#[test]
fn bad_introspection_settings_are_errors_at_their_paths() {
    let cases = [
        (
            "    tokens: opake\n",
            "issuers.dev.tokens: \"opake\" is not a token kind",
        ),
        (
            "    tokens: opaque\n",
            "issuers.dev.introspection: required with tokens: opaque",
        ),
        (
            "    introspection: { client_id: gw, client_secret: s }\n",
            "issuers.dev.introspection: is set, but the issuer's tokens are jwt",
        ),
        (
            "    tokens: opaque\n    jwks_uri: http://127.0.0.1:9000/jwks\n    introspection: { client_id: gw, client_secret: s }\n",
            "tokens: opaque fetches no keys",
        ),
        (
            "    tokens: opaque\n    introspection: { client_secret: s }\n",
            "issuers.dev.introspection.client_id: required",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw }\n",
            "auth_method client_secret_basic needs client_secret",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, client_secret: s, auth_method: tls_client_auth }\n",
            "issuers.dev.introspection.auth_method: \"tls_client_auth\" is not supported",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, auth_method: private_key_jwt }\n",
            "issuers.dev.introspection.private_key_file: required",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, auth_method: private_key_jwt, private_key_file: /nonexistent.pem }\n",
            "issuers.dev.introspection.private_key_file",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, client_secret: s, negative_cache_ttl: 1h }\n",
            "issuers.dev.introspection.negative_cache_ttl: at most 5m",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, client_secret: s, max_concurrent: 0 }\n",
            "issuers.dev.introspection.max_concurrent",
        ),
        (
            "    tokens: opaque\n    introspection: { client_id: gw, client_secret: s, endpoint: \"http://as.example.com/introspect\" }\n",
            "issuers.dev.introspection.endpoint: http://as.example.com/introspect is plain http",
        ),
    ];
    for (block, expected) in cases {
        let text = with_issuers(
            &format!("  dev:\n    issuer: http://127.0.0.1:9000/\n{block}"),
            "[dev]",
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_route_takes_at_most_one_issuer_of_opaque_tokens() {
    let text = with_issuers(
        "  dev:\n    issuer: http://127.0.0.1:9000/\n    tokens: auto\n    introspection: { client_id: gw, client_secret: s }\n",
        "[dev, other]",
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("routes[0].auth.issuers: issuers dev, other all introspect opaque tokens"),
        "{err}"
    );
    // One opaque issuer beside a JWT issuer is fine.
    let text = with_issuers(
        "  dev:\n    issuer: http://127.0.0.1:9000/\n",
        "[dev, other]",
    );
    load(&text).unwrap();
}

/// GOOD with the upstream `llm` replaced by `upstream` (its lines under `llm:`).
fn with_upstream(upstream: &str) -> String {
    GOOD.replace(
        "  llm:\n    targets: [http://127.0.0.1:9001]\n    credential:\n      header: authorization\n      value: \"Bearer ${API_KEY}\"\n",
        &format!("  llm:\n{upstream}"),
    )
}

#[test]
fn provider_presets_fill_the_target_the_key_header_and_the_health_path() {
    let c = load(&with_upstream(
        "    provider: anthropic\n    credential: { api_key: \"${API_KEY}\" }\n",
    ))
    .unwrap();
    let u = &c.upstreams["llm"];
    assert_eq!(u.provider, Some(Provider::Anthropic));
    assert_eq!(u.targets[0].authority.as_str(), "api.anthropic.com");
    let cred = u.credential.as_ref().unwrap();
    assert_eq!(cred.header.as_str(), "x-api-key");
    assert_eq!(cred.value.0, "sk-live-123");
    assert_eq!(u.default_headers[0].0.as_str(), "anthropic-version");
    assert_eq!(u.health_path.as_deref(), Some("/v1/models"));
    assert_eq!(u.provider.unwrap().dialect(), UsageDialect::Anthropic);
    let c = load(&with_upstream(
        "    provider: openai\n    credential: { api_key: \"${API_KEY}\" }\n",
    ))
    .unwrap();
    assert_eq!(
        c.upstreams["llm"].credential.as_ref().unwrap().value.0,
        "Bearer sk-live-123"
    );
}

#[test]
fn bad_provider_and_credential_settings_are_errors_at_their_paths() {
    let cases = [
        (
            "    provider: openia\n    targets: [http://127.0.0.1:1]\n",
            "upstreams.llm.provider: \"openia\" is not a provider",
        ),
        (
            "    provider: azure_openai\n    credential: { api_key: k }\n",
            "provider azure_openai has no default",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { api_key: k }\n",
            "api_key needs a provider",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { header: x, value: v, api_key: k }\n",
            "set exactly one of value/value_file",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { value: v }\n",
            "upstreams.llm.credential.header: required",
        ),
        (
            "    provider: openai\n    credential: { api_key: replace-me }\n",
            "example placeholder",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { oauth: { token_url: \"http://as.example.com/token\", client_id: gw, client_secret: s } }\n",
            "upstreams.llm.credential.oauth.token_url: http://as.example.com/token is plain http",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { oauth: { token_url: \"https://as/token\", client_id: gw } }\n",
            "auth_method client_secret_basic needs client_secret",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    credential: { oauth: { token_url: \"https://as/token\", client_id: gw, client_secret: s, default_lifetime: 1s } }\n",
            "upstreams.llm.credential.oauth.default_lifetime",
        ),
    ];
    for (upstream, expected) in cases {
        let err = load(&with_upstream(upstream)).unwrap_err().to_string();
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // The client's token and the upstream's own cannot both go in Authorization.
    let text = with_upstream(
        "    targets: [http://127.0.0.1:1]\n    credential: { oauth: { token_url: \"https://as/token\", client_id: gw, client_secret: s, auth_method: client_secret_json } }\n",
    )
    .replace("claim_headers: { sub: X-Portcullis-Subject }", "forward_token: true");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("routes[0].auth.forward_token"), "{err}");
}

const AI: &str = r#"
listen:
  address: 127.0.0.1:0
issuers:
  dev:
    issuer: http://127.0.0.1:9000/
upstreams:
  a: { provider: openai_compatible, targets: [http://127.0.0.1:9001], model_map: { fast: demo-small }, stream_usage: true }
  b: { provider: openai_compatible, targets: [http://127.0.0.1:9002] }
routes:
  - name: chat
    match: { path: /v1/chat/completions, models: [fast, "demo-*"] }
    upstream: a
    fallback: [b]
    auth: { issuers: [dev], audiences: [api], models: { scope_prefix: "model:" } }
"#;

#[test]
fn ai_routing_settings_compile() {
    let c = load(AI).unwrap();
    let route = &c.routes[0];
    assert_eq!(route.matcher.methods, Some(vec![http::Method::POST]));
    assert_eq!(route.matcher.models.as_ref().map(Vec::len), Some(2));
    assert_eq!(route.upstream_chain().collect::<Vec<_>>(), ["a", "b"]);
    let RouteAuth::Protected(p) = &route.auth else {
        panic!("protected")
    };
    assert_eq!(
        p.models.as_ref().and_then(|m| m.scope_prefix.as_deref()),
        Some("model:")
    );
    assert!(c.upstreams["a"].rewrites_body());
    assert!(!c.upstreams["b"].rewrites_body());
}

#[test]
fn ai_routing_mistakes_are_named() {
    for (from, to, says) in [
        (
            "models: [fast, \"demo-*\"] }",
            "models: [fast], methods: [GET] }",
            "POST requests only",
        ),
        (
            "models: [fast, \"demo-*\"] }",
            "models: [] }",
            "at least one model",
        ),
        (
            "models: [fast, \"demo-*\"] }",
            "models: [\"fast \"] }",
            "not a model name",
        ),
        ("fallback: [b]", "fallback: [c]", "unknown upstream \"c\""),
        ("fallback: [b]", "fallback: [a]", "already in the chain"),
        ("fallback: [b]", "fallback: [b, b]", "already in the chain"),
        (
            "fallback: [b]",
            "fallback: [b]\n    upgrades: [websocket]",
            "cannot fall back",
        ),
        (
            "models: { scope_prefix: \"model:\" }",
            "models: {}",
            "set scope_prefix",
        ),
        (
            "models: { scope_prefix: \"model:\" }",
            "models: { scope_prefix: \"\" }",
            "empty prefix",
        ),
        (
            "model_map: { fast: demo-small }",
            "model_map: { fast: \"demo-*\" }",
            "not a model name",
        ),
        (
            "b: { provider: openai_compatible, targets: [http://127.0.0.1:9002] }",
            "b: { provider: anthropic, targets: [http://127.0.0.1:9002], stream_usage: true }",
            "OpenAI",
        ),
    ] {
        refused(AI, from, to, says);
    }
}

/// `base` with `from` replaced by `to` is refused with an error saying `says`.
fn refused(base: &str, from: &str, to: &str, says: &str) {
    let text = base.replace(from, to);
    assert_ne!(text, base, "{from} is not in the configuration");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains(says), "{to}: {e}");
}

/// The AI configuration with a token budget kept per `key` on its route.
fn with_budget(key: &str) -> String {
    AI.replace(
        "routes:",
        &format!(
            "rate_limits:\n  policies:\n    budget: {{ tokens: 100000/h, key: {key} }}\nroutes:"
        ),
    ) + "    rate_limits: [budget]\n"
}

#[test]
fn token_budgets_compile_and_their_mistakes_are_named() {
    let with_budget = with_budget("[client, model]");
    let c = load(&with_budget).unwrap();
    let policy = &c.routes[0].rate_limits[0];
    assert!(policy.counts_tokens());
    assert!(!policy.before_authentication());
    assert_eq!(policy.key_kinds(), "client+model");
    for (from, to, says) in [
        (
            "{ tokens: 100000/h,",
            "{ tokens: 100000/h, rate: 10/s,",
            "not both",
        ),
        ("{ tokens: 100000/h,", "{", "set rate"),
        ("{ tokens: 100000/h,", "{ tokens: lots,", "is not a rate"),
        (
            "key: [client, model]",
            "key: [client, modle]",
            "unknown key kind",
        ),
        (
            "b: { provider: openai_compatible, targets: [http://127.0.0.1:9002] }",
            "b: { targets: [http://127.0.0.1:9002] }",
            "needs a provider",
        ),
    ] {
        refused(&with_budget, from, to, says);
    }
}

#[test]
fn a_token_budget_on_an_openai_upstream_without_stream_usage_is_warned_about() {
    let c = load(&with_budget("[client]")).unwrap();
    // a sets stream_usage; its fallback b does not.
    let warned: Vec<&String> = c
        .warnings
        .iter()
        .filter(|w| w.contains("does not set stream_usage"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", c.warnings);
    assert!(warned[0].contains("\"b\""), "{warned:?}");
}
