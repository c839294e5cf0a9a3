//! Turns the serde mirror into the validated model, collecting every problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use portcullis_jwks::{JwksSettings, KeySource};
use portcullis_policy::path::{EmptySegments, EscapedSlashes, PathRules, Semicolons};
use portcullis_policy::verify::parse_algorithm;
use portcullis_policy::{
    AccessRules, Algorithm, CidrSet, ClaimCheck, ClaimRule, DEFAULT_ALGORITHMS, IpRules,
    IssuerRules,
};
use sha2::Digest;

use crate::interpolate::{expand, read_secret_file, resolve_path};
use crate::model::*;
use crate::raw::*;

/// Default traffic listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9091";

/// Headers the gateway itself sets; a client copy is always stripped, and a claim
/// header may not take one of these names.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "forwarded",
    "connection",
    "content-length",
    "transfer-encoding",
];

pub(crate) struct Ctx<'a> {
    pub problems: Vec<(String, String)>,
    pub base: PathBuf,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Every file the configuration read (secrets, certificates, keys, CAs).
    pub files: Vec<PathBuf>,
    /// Issuers and upstreams (`issuers.dev`) that exist but failed to compile:
    /// their own problems are reported, references to them are not again.
    pub broken: HashSet<String>,
}

impl Ctx<'_> {
    pub(crate) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.problems.push((path.into(), msg.into()));
    }

    pub(crate) fn expand(&mut self, path: &str, text: &str) -> Option<String> {
        match expand(text, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    /// Reads a secret file (`*_file`), noting it among the files watched.
    pub(crate) fn read_secret(&mut self, path: &str, file: &str) -> Option<String> {
        let file = self.expand(path, file)?;
        let full = resolve_path(&self.base, &file);
        self.files.push(full.clone());
        match read_secret_file(&full) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    /// A `ca_file` setting: resolved against the configuration's folder and
    /// checked to be readable now (an error at `path` otherwise).
    pub(crate) fn ca_file(&mut self, path: &str, file: Option<&str>) -> Option<PathBuf> {
        let full = resolve_path(&self.base, file?);
        if let Err(e) = std::fs::metadata(&full) {
            self.err(path, format!("cannot read {}: {e}", full.display()));
        }
        Some(full)
    }

    pub(crate) fn read_file(&mut self, path: &str, file: &str) -> Option<(PathBuf, Vec<u8>)> {
        let file = self.expand(path, file)?;
        let full = resolve_path(&self.base, &file);
        self.files.push(full.clone());
        match std::fs::read(&full) {
            Ok(bytes) => Some((full, bytes)),
            Err(e) => {
                self.err(path, format!("cannot read {}: {e}", full.display()));
                None
            }
        }
    }

    fn nets(&mut self, path: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_net(s) {
                Ok(n) => out.push(n),
                Err(e) => self.err(format!("{path}[{i}]"), e),
            }
        }
        out
    }
}

/// One of a fixed set of words: `options` pairs each word with its value, the
/// first being the default when the key is absent; anything else is a problem
/// at `path` that lists the choices.
fn choice<T: Copy>(ctx: &mut Ctx<'_>, path: &str, value: Option<&str>, options: &[(&str, T)]) -> T {
    let default = options[0].1;
    let Some(word) = value else {
        return default;
    };
    if let Some((_, v)) = options.iter().find(|(w, _)| *w == word) {
        return *v;
    }
    let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
    let list = match words.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    ctx.err(path, format!("{word:?} is not a choice; use {list}"));
    default
}

/// Parses a CIDR, or a bare address as a /32 or /128.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        if n.trunc() != n {
            return Err(format!(
                "{s} has host bits set; did you mean {}?",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
}

pub(crate) fn compile(raw: RawConfig, ctx: &mut Ctx<'_>, source: &str) -> Option<GatewayConfig> {
    let listen = compile_listen(raw.listen.unwrap_or_default(), ctx);
    let raw_tracing = raw.tracing.unwrap_or_default();
    let sample_ratio = raw_tracing.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
    if !(0.0..=1.0).contains(&sample_ratio) {
        ctx.err(
            "tracing.sample_ratio",
            format!(
                "{sample_ratio} is not between 0 and 1 (0.01 samples one new trace in a hundred)"
            ),
        );
    }
    let otlp = raw_tracing.otlp.and_then(|o| compile_otlp(o, ctx));
    let tracing = TracingConfig {
        sample_ratio,
        service_name: raw_tracing
            .service_name
            .unwrap_or_else(|| "portcullis".to_owned()),
        otlp,
        enabled: raw_tracing.enabled.unwrap_or(false),
        accept: choice(
            ctx,
            "tracing.accept_traceparent",
            raw_tracing.accept_traceparent.as_deref(),
            &[
                ("any", TraceparentSource::Any),
                ("trusted_proxies", TraceparentSource::TrustedProxies),
            ],
        ),
    };
    let raw_admin = raw.admin.unwrap_or_default();
    let admin_settings = compile_admin_settings(&raw_admin, ctx);
    let admin = compile_admin(raw_admin, ctx);
    let limits = compile_limits(raw.limits.unwrap_or_default(), ctx);
    let logging = compile_logging(raw.logging.unwrap_or_default(), ctx);
    let network = compile_network(raw.network.unwrap_or_default(), ctx);
    let paths = compile_paths(raw.paths.unwrap_or_default(), ctx);
    let refusal_detail = choice(
        ctx,
        "responses.detail",
        raw.responses.unwrap_or_default().detail.as_deref(),
        &[
            ("full", RefusalDetail::Full),
            ("minimal", RefusalDetail::Minimal),
        ],
    );
    let tc = raw.token_cache.unwrap_or_default();
    let token_cache = TokenCacheConfig {
        enabled: tc.enabled.unwrap_or(true),
        max_entries: tc.max_entries.unwrap_or(100_000),
        max_bytes: tc
            .max_bytes
            .map_or(64 << 20, |b| usize::try_from(b.0).unwrap_or(usize::MAX)),
        max_ttl: tc.max_ttl.map_or(Duration::from_secs(300), |d| d.0),
    };
    let rate_limits =
        crate::rate_limits::compile_rate_limits(raw.rate_limits.unwrap_or_default(), ctx);
    if raw.workers == Some(0) {
        ctx.err(
            "workers",
            "must be at least 1 (leave it out for one per core)",
        );
    }
    let mut issuers = BTreeMap::new();
    for (name, ri) in raw.issuers {
        match compile_issuer(&name, ri, ctx) {
            Some(ic) => {
                issuers.insert(name, Arc::new(ic));
            }
            None => {
                ctx.broken.insert(format!("issuers.{name}"));
            }
        }
    }
    let mut upstreams = BTreeMap::new();
    for (name, ru) in raw.upstreams {
        match compile_upstream(&name, ru, ctx) {
            Some(uc) => {
                upstreams.insert(name, Arc::new(uc));
            }
            None => {
                ctx.broken.insert(format!("upstreams.{name}"));
            }
        }
    }
    if raw.routes.is_empty() {
        ctx.err(
            "routes",
            "no routes: the gateway would answer every request with 404",
        );
    }
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    for (i, rr) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(rr.name.clone()) {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate route name {:?}", rr.name),
            );
        }
        let context = RouteContext {
            issuers: &issuers,
            upstreams: &upstreams,
            limits: &limits,
            paths: &paths,
            rate_limits: &rate_limits,
        };
        if let Some(rc) = compile_route(&path, rr, &context, ctx) {
            routes.push(Arc::new(rc));
        }
    }
    // One resource per metadata path: two routes may be the same resource,
    // not two resources at one address.
    let mut resources: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, rc) in routes.iter().enumerate() {
        if let RouteAuth::Protected(p) = &rc.auth
            && let Some(r) = &p.resource
            && let Some(other) = resources.insert(&r.metadata_path, &r.resource)
            && other != r.resource
        {
            ctx.err(
                format!("routes[{i}].auth.resource"),
                format!(
                    "{:?} and {other:?} would both have their metadata at {}",
                    r.resource, r.metadata_path
                ),
            );
        }
    }
    if !ctx.problems.is_empty() {
        return None;
    }
    let mut config = GatewayConfig {
        source: source.to_owned(),
        listen: listen?,
        admin: admin?,
        admin_settings: admin_settings?,
        tracing,
        workers: raw.workers,
        limits,
        logging,
        network,
        paths,
        refusal_detail,
        token_cache,
        rate_limits,
        issuers,
        upstreams,
        routes,
        warnings: Vec::new(),
        files: std::mem::take(&mut ctx.files),
    };
    config.warnings = crate::lint::warnings(&config);
    Some(config)
}

fn compile_listen(rl: RawListen, ctx: &mut Ctx<'_>) -> Option<ListenConfig> {
    let addr = rl.address.as_deref().unwrap_or(DEFAULT_LISTEN);
    let address = parse_addr(ctx, "listen.address", addr);
    let tls = rl.tls.and_then(|t| {
        let (cert_file, cert_pem) = ctx.read_file("listen.tls.cert_file", &t.cert_file)?;
        let (key_file, key_pem) = ctx.read_file("listen.tls.key_file", &t.key_file)?;
        if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
            ctx.err(
                "listen.tls.cert_file",
                format!("{} holds no PEM certificate", cert_file.display()),
            );
        }
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            ctx.err(
                "listen.tls.key_file",
                format!("{} holds no PEM private key", key_file.display()),
            );
        }
        Some(TlsFiles {
            cert_file,
            key_file,
            cert_pem,
            key_pem: Secret(key_pem),
        })
    });
    Some(ListenConfig {
        address: address?,
        tls,
    })
}

fn compile_admin(ra: RawAdmin, ctx: &mut Ctx<'_>) -> Option<Option<SocketAddr>> {
    if ra.enabled == Some(false) {
        return Some(None);
    }
    let addr = ra.address.as_deref().unwrap_or(DEFAULT_ADMIN);
    parse_addr(ctx, "admin.address", addr).map(Some)
}

fn compile_otlp(o: RawOtlp, ctx: &mut Ctx<'_>) -> Option<OtlpConfig> {
    let Some(endpoint) = o.endpoint else {
        ctx.err(
            "tracing.otlp.endpoint",
            "set the collector's traces URL, e.g. http://otel-collector:4318/v1/traces",
        );
        return None;
    };
    let endpoint = ctx.expand("tracing.otlp.endpoint", &endpoint)?;
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        ctx.err(
            "tracing.otlp.endpoint",
            format!("{endpoint:?} is not a URL"),
        );
        return None;
    };
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        ctx.err(
            "tracing.otlp.endpoint",
            format!("{endpoint:?}: spans are exported over plain http:// to a collector on a trusted network (e.g. a sidecar or node agent)"),
        );
        return None;
    }
    let queue = o.queue.unwrap_or(DEFAULT_OTLP_QUEUE);
    let batch = o.batch.unwrap_or(DEFAULT_OTLP_BATCH);
    if queue == 0 || batch == 0 || batch > queue {
        ctx.err(
            "tracing.otlp",
            format!("queue ({queue}) and batch ({batch}) must be above 0, batch at most queue"),
        );
        return None;
    }
    Some(OtlpConfig {
        endpoint,
        timeout: o.timeout.map_or(Duration::from_secs(5), |d| d.0),
        queue,
        batch,
        interval: o.interval.map_or(Duration::from_secs(1), |d| d.0),
    })
}

/// The shortest admin token accepted: a guessable one protects nothing.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

fn compile_admin_settings(ra: &RawAdmin, ctx: &mut Ctx<'_>) -> Option<AdminSettings> {
    let token = match &ra.token_file {
        None => None,
        Some(file) => {
            let token = ctx.read_secret("admin.token_file", file)?;
            let token = token.trim();
            if let Some(word) = placeholder(token) {
                ctx.err(
                    "admin.token_file",
                    format!(
                        "the admin token is still the placeholder {word:?} of an example file: put a random one there (e.g. `openssl rand -hex 32`)"
                    ),
                );
                return None;
            }
            if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                ctx.err(
                    "admin.token_file",
                    format!(
                        "the admin token is {} characters; use at least {MIN_ADMIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)",
                        token.chars().count()
                    ),
                );
                return None;
            }
            Some(SecretDigest(sha2::Sha256::digest(token.as_bytes()).into()))
        }
    };
    let explain_capacity = ra
        .explain
        .as_ref()
        .and_then(|e| e.capacity)
        .unwrap_or(DEFAULT_EXPLAIN_CAPACITY);
    if explain_capacity > MAX_EXPLAIN_CAPACITY {
        ctx.err(
            "admin.explain.capacity",
            format!(
                "{explain_capacity} is above the limit of {MAX_EXPLAIN_CAPACITY} (each entry takes up to 2 KiB)"
            ),
        );
        return None;
    }
    Some(AdminSettings {
        token,
        protect_metrics: ra.protect_metrics.unwrap_or(false),
        explain_capacity,
    })
}

fn parse_addr(ctx: &mut Ctx<'_>, path: &str, text: &str) -> Option<SocketAddr> {
    let text = ctx.expand(path, text)?;
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(
                path,
                format!("{text:?} is not an address:port (e.g. 127.0.0.1:8080 or [::]:8443)"),
            );
            None
        }
    }
}

fn compile_limits(rl: RawLimits, ctx: &mut Ctx<'_>) -> Limits {
    let header_read_timeout = rl
        .header_read_timeout
        .map_or(Duration::from_secs(10), |d| d.0);
    let limits = Limits {
        max_header_bytes: rl.max_header_bytes.map_or(64 << 10, |s| s.0 as usize),
        max_body_bytes: rl.max_body.map_or(10 << 20, |s| s.0),
        header_read_timeout,
        max_connections: rl.max_connections.unwrap_or(10_000),
        max_in_flight: rl.max_in_flight.unwrap_or(10_000),
        shutdown_grace: rl.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        shutdown_delay: rl.shutdown_delay.map_or(Duration::from_secs(5), |d| d.0),
        first_byte_timeout: rl.first_byte_timeout.map_or(header_read_timeout, |d| d.0),
        idle_timeout: rl.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
        body_read_timeout: rl
            .body_read_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        max_connections_per_ip: rl.max_connections_per_ip.unwrap_or(0),
    };
    for (field, value) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("first_byte_timeout", limits.first_byte_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("body_read_timeout", limits.body_read_timeout),
    ] {
        if value.is_zero() {
            ctx.err(
                format!("limits.{field}"),
                "must be more than 0 (a connection could otherwise be held open for ever)",
            );
        }
    }
    limits
}

fn compile_paths(rp: RawPaths, ctx: &mut Ctx<'_>) -> PathRules {
    PathRules {
        escaped_slashes: choice(
            ctx,
            "paths.escaped_slashes",
            rp.escaped_slashes.as_deref(),
            &[
                ("reject", EscapedSlashes::Reject),
                ("keep", EscapedSlashes::Keep),
            ],
        ),
        semicolons: choice(
            ctx,
            "paths.semicolons",
            rp.semicolons.as_deref(),
            &[("reject", Semicolons::Reject), ("keep", Semicolons::Keep)],
        ),
        empty_segments: choice(
            ctx,
            "paths.empty_segments",
            rp.empty_segments.as_deref(),
            &[
                ("merge", EmptySegments::Merge),
                ("reject", EmptySegments::Reject),
            ],
        ),
    }
}

fn compile_logging(rl: RawLogging, ctx: &mut Ctx<'_>) -> Logging {
    let format = match rl.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            ctx.err(
                "logging.format",
                format!("{other:?} is not a format; use text or json"),
            );
            LogFormat::Text
        }
    };
    let subject = choice(
        ctx,
        "logging.subject",
        rl.subject.as_deref(),
        &[
            ("hash", SubjectLogging::Hash),
            ("omit", SubjectLogging::Omit),
            ("plain", SubjectLogging::Plain),
        ],
    );
    Logging {
        level: rl.level.unwrap_or_else(|| "info".to_owned()),
        format,
        access_log: rl.access_log.unwrap_or(true),
        subject,
    }
}

fn compile_network(rn: RawNetwork, ctx: &mut Ctx<'_>) -> Network {
    let mut trusted = Vec::new();
    let mut forwarded = Vec::new();
    for (i, proxy) in rn.trusted_proxies.iter().enumerate() {
        let path = format!("network.trusted_proxies[{i}]");
        let net = match parse_net(&proxy.cidr) {
            Ok(n) => n,
            Err(e) => {
                ctx.err(path, e);
                continue;
            }
        };
        trusted.push(net);
        match proxy
            .header
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("x-forwarded-for") => {}
            Some("forwarded") => forwarded.push(net),
            Some(other) => ctx.err(
                format!("{path}.header"),
                format!("{other:?} is not a forwarding header; use x-forwarded-for or forwarded"),
            ),
        }
    }
    let allow = ctx.nets("network.allow", &rn.allow);
    let deny = ctx.nets("network.deny", &rn.deny);
    let strip_from_untrusted = match rn.strip_from_untrusted {
        None => DEFAULT_STRIP_FROM_UNTRUSTED
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    ctx.err(
                        format!("network.strip_from_untrusted[{i}]"),
                        format!("{h:?} is not a header name"),
                    );
                    None
                }
            })
            .collect(),
    };
    let request_id = choice(
        ctx,
        "network.request_id",
        rn.request_id.as_deref(),
        &[
            ("trusted_proxies", RequestIdSource::TrustedProxies),
            ("any", RequestIdSource::Any),
        ],
    );
    Network {
        trusted_proxies: CidrSet::new(&trusted),
        forwarded_proxies: CidrSet::new(&forwarded),
        rules: IpRules::new(&allow, &deny),
        strip_from_untrusted,
        request_id,
    }
}

fn compile_issuer(name: &str, ri: RawIssuer, ctx: &mut Ctx<'_>) -> Option<IssuerConfig> {
    let path = format!("issuers.{name}");
    let issuer = ctx.expand(&format!("{path}.issuer"), &ri.issuer)?;
    if issuer.is_empty() {
        ctx.err(format!("{path}.issuer"), "must not be empty");
    }
    let secret = match (&ri.secret, &ri.secret_file) {
        (Some(s), None) => ctx
            .expand(&format!("{path}.secret"), s)
            .map(String::into_bytes),
        (None, Some(f)) => ctx
            .read_secret(&format!("{path}.secret_file"), f)
            .map(String::into_bytes),
        (Some(_), Some(_)) => {
            ctx.err(&path, "set secret or secret_file, not both");
            None
        }
        (None, None) => None,
    };
    let tokens = crate::introspection::token_kind(&path, ri.tokens.as_deref(), ctx);
    let introspection =
        crate::introspection::compile_introspection(&path, tokens, ri.introspection, ctx);
    let sources = [
        ri.discovery == Some(true),
        ri.jwks_uri.is_some(),
        ri.static_keys_file.is_some(),
        secret.is_some() || ri.secret.is_some() || ri.secret_file.is_some(),
    ];
    let n_sources = sources.iter().filter(|s| **s).count();
    if n_sources > 1 {
        ctx.err(
            &path,
            "choose one key source: discovery, jwks_uri, static_keys_file or secret",
        );
        return None;
    }
    if tokens == TokenKind::Opaque && n_sources > 0 {
        ctx.err(
            &path,
            "tokens: opaque fetches no keys: remove discovery, jwks_uri, static_keys_file and secret (or use tokens: auto to also verify JWTs)",
        );
        return None;
    }
    let source = if tokens == TokenKind::Opaque {
        None
    } else if let Some(uri) = &ri.jwks_uri {
        Some(KeySource::JwksUri(
            ctx.expand(&format!("{path}.jwks_uri"), uri)?,
        ))
    } else if let Some(file) = &ri.static_keys_file {
        let (p, bytes) = ctx.read_file(&format!("{path}.static_keys_file"), file)?;
        Some(if String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
            KeySource::StaticPem {
                path: p,
                pem: bytes,
            }
        } else {
            KeySource::StaticJwks {
                path: p,
                document: bytes,
            }
        })
    } else if let Some(s) = secret {
        Some(KeySource::Secret(s))
    } else if n_sources == 0 && ri.discovery == Some(false) {
        ctx.err(
            &path,
            "discovery is off and no jwks_uri, static_keys_file or secret is set",
        );
        return None;
    } else {
        Some(KeySource::Discovery)
    };
    let is_secret = matches!(source, Some(KeySource::Secret(_)));
    let algorithms = compile_algorithms(&path, ri.algorithms.as_deref(), is_secret, ctx);
    let d = JwksSettings::default();
    let rj = ri.jwks.unwrap_or_default();
    let jwks = JwksSettings {
        min_ttl: rj.min_ttl.map_or(d.min_ttl, |v| v.0),
        max_ttl: rj.max_ttl.map_or(d.max_ttl, |v| v.0),
        default_ttl: rj.default_ttl.map_or(d.default_ttl, |v| v.0),
        max_stale: rj.max_stale.map_or(d.max_stale, |v| v.0),
        min_refetch_interval: rj
            .min_refetch_interval
            .map_or(d.min_refetch_interval, |v| v.0),
        unknown_kid_ttl: rj.unknown_kid_ttl.map_or(d.unknown_kid_ttl, |v| v.0),
        connect_timeout: rj.connect_timeout.map_or(d.connect_timeout, |v| v.0),
        timeout: rj.timeout.map_or(d.timeout, |v| v.0),
        max_bytes: rj.max_size.map_or(d.max_bytes, |v| v.0 as usize),
        retries: rj.retries.unwrap_or(d.retries),
        allow_http: rj.allow_http.unwrap_or(d.allow_http),
        allow_symmetric_keys: rj.allow_symmetric_keys.unwrap_or(d.allow_symmetric_keys),
        ca_file: ctx.ca_file(&format!("{path}.jwks.ca_file"), rj.ca_file.as_deref()),
    };
    if jwks.min_ttl > jwks.max_ttl {
        ctx.err(format!("{path}.jwks.min_ttl"), "is larger than max_ttl");
    }
    if let Some(source) = source.as_ref().filter(|s| s.is_remote()) {
        let url = match source {
            KeySource::JwksUri(u) => u.clone(),
            _ => issuer.clone(),
        };
        check_fetch_url(
            &format!(
                "{path}.{}",
                if ri.jwks_uri.is_some() {
                    "jwks_uri"
                } else {
                    "issuer"
                }
            ),
            &url,
            jwks.allow_http,
            ctx,
        );
    }
    Some(IssuerConfig {
        name: name.to_owned(),
        rules: IssuerRules {
            issuer,
            algorithms,
            leeway_secs: ri.leeway.map_or(60, |d| d.0.as_secs() as i64),
            required_typ: ri.required_typ,
            scope_claim: ri.scope_claim,
        },
        source,
        tokens,
        introspection,
        jwks,
        max_token_bytes: ri.max_token_size.map_or(8 << 10, |s| s.0 as usize),
        required_for_readiness: ri.required_for_readiness.unwrap_or(false),
    })
}

pub(crate) fn check_fetch_url(path: &str, url: &str, allow_http: bool, ctx: &mut Ctx<'_>) {
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") => {}
        Ok(u) if u.scheme_str() == Some("http") => {
            let host = u.host().unwrap_or("");
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && !allow_http {
                ctx.err(path, format!("{url} is plain http to a non-loopback host; use https or set jwks.allow_http: true"));
            }
        }
        _ => ctx.err(path, format!("{url:?} is not an http(s) URL")),
    }
}

fn compile_algorithms(
    path: &str,
    list: Option<&[String]>,
    is_secret: bool,
    ctx: &mut Ctx<'_>,
) -> Vec<Algorithm> {
    let Some(list) = list else {
        return if is_secret {
            vec![Algorithm::HS256]
        } else {
            DEFAULT_ALGORITHMS.to_vec()
        };
    };
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let p = format!("{path}.algorithms[{i}]");
        match parse_algorithm(name) {
            None if name.eq_ignore_ascii_case("none") => ctx.err(p, "alg none is never allowed"),
            None => ctx.err(p, format!("{name:?} is not a supported algorithm (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)")),
            Some(a @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) if !is_secret => {
                ctx.err(p, format!("{a:?} needs a shared secret issuer; HMAC next to public keys allows algorithm confusion"));
            }
            Some(a) if is_secret && !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                ctx.err(p, format!("{a:?} is asymmetric; an issuer with a secret takes HS256/384/512 only"));
            }
            Some(a) => out.push(a),
        }
    }
    if list.is_empty() {
        ctx.err(
            path.to_owned() + ".algorithms",
            "is empty: no token could ever verify",
        );
    }
    out
}

fn compile_upstream(name: &str, ru: RawUpstream, ctx: &mut Ctx<'_>) -> Option<UpstreamConfig> {
    let path = format!("upstreams.{name}");
    let provider = crate::providers::provider(&path, ru.provider.as_deref(), ctx);
    let listed = if ru.targets.is_empty() {
        match provider.and_then(|p| p.default_target()) {
            Some(default) => vec![default.to_owned()],
            None => {
                let why = match provider {
                    Some(p) => format!(
                        "needs at least one target URL (provider {} has no default)",
                        p.as_str()
                    ),
                    None => "needs at least one target URL".to_owned(),
                };
                ctx.err(format!("{path}.targets"), why);
                Vec::new()
            }
        }
    } else {
        ru.targets.clone()
    };
    let mut targets = Vec::new();
    for (i, t) in listed.iter().enumerate() {
        let p = format!("{path}.targets[{i}]");
        let Some(t) = ctx.expand(&p, t) else { continue };
        match parse_target(&t) {
            Ok(target) => targets.push(target),
            Err(e) => ctx.err(p, e),
        }
    }
    let ca_pem = ru
        .ca_file
        .as_deref()
        .and_then(|f| ctx.read_file(&format!("{path}.ca_file"), f))
        .map(|(_, b)| b);
    let (credential, oauth) = match ru.credential.and_then(|c| {
        crate::providers::compile_credential(&format!("{path}.credential"), c, provider, ctx)
    }) {
        Some(crate::providers::CompiledCredential::Static(c)) => (Some(c), None),
        Some(crate::providers::CompiledCredential::OAuth(o)) => (None, Some(*o)),
        None => (None, None),
    };
    let health = ru.health.unwrap_or_default();
    let retry = ru.retry.unwrap_or_default();
    let (model_map, stream_usage) = crate::ai_routes::compile_model_rewrites(
        &path,
        ru.model_map,
        ru.stream_usage,
        provider,
        ctx,
    );
    Some(UpstreamConfig {
        name: name.to_owned(),
        targets,
        connect_timeout: ru.connect_timeout.map_or(Duration::from_secs(3), |d| d.0),
        response_header_timeout: ru
            .response_header_timeout
            .map_or(Duration::from_secs(60), |d| d.0),
        idle_timeout: ru.idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
        http2: ru.http2.unwrap_or(false),
        ca_pem,
        max_failures: health.max_failures.unwrap_or(3).max(1),
        cooldown: health.cooldown.map_or(Duration::from_secs(10), |d| d.0),
        attempts: retry.attempts.unwrap_or(2).clamp(1, 10),
        retry_idempotent: retry.idempotent.unwrap_or(false),
        credential,
        oauth,
        default_headers: crate::providers::default_headers(provider),
        provider,
        health_path: ru
            .health_path
            .or_else(|| provider.map(|p| p.health_path().to_owned())),
        models: ru.models,
        model_map,
        stream_usage,
    })
}

/// Splits a target URL into scheme, authority and base path.
pub fn parse_target(t: &str) -> Result<Target, String> {
    let uri: http::Uri = t.parse().map_err(|_| format!("{t:?} is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{t:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{t:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("target URLs may not carry credentials; use credential: instead".to_owned());
    }
    if uri.query().is_some() {
        return Err(format!("{t:?} may not have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Target {
        https,
        authority,
        base_path,
    })
}

/// Words that example files put where a secret goes; a credential holding one
/// was applied unedited, and would fail every upstream request with a 401.
const PLACEHOLDERS: [&str; 5] = [
    "replace-me",
    "replace_me",
    "changeme",
    "change-me",
    "your-api-key",
];

/// The placeholder `value` holds, if any (case-insensitive).
pub(crate) fn placeholder(value: &str) -> Option<&'static str> {
    let lower = value.to_ascii_lowercase();
    PLACEHOLDERS.into_iter().find(|p| lower.contains(p))
}

/// What a route may refer to.
struct RouteContext<'a> {
    issuers: &'a BTreeMap<String, Arc<IssuerConfig>>,
    upstreams: &'a BTreeMap<String, Arc<UpstreamConfig>>,
    limits: &'a Limits,
    paths: &'a PathRules,
    rate_limits: &'a RateLimits,
}

fn compile_route(
    path: &str,
    rr: RawRoute,
    context: &RouteContext<'_>,
    ctx: &mut Ctx<'_>,
) -> Option<RouteConfig> {
    let RouteContext {
        issuers,
        upstreams,
        limits,
        paths,
        rate_limits,
    } = *context;
    if rr.name.is_empty()
        || !rr
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        ctx.err(
            format!("{path}.name"),
            "must be non-empty letters, digits, '-', '_' or '.' (it is a metric label)",
        );
    }
    if rr.name == "unmatched" {
        ctx.err(
            format!("{path}.name"),
            "\"unmatched\" is reserved for requests no route matches",
        );
    }
    if !upstreams.contains_key(&rr.upstream)
        && !ctx.broken.contains(&format!("upstreams.{}", rr.upstream))
    {
        let hint = did_you_mean(&rr.upstream, upstreams.keys().map(String::as_str));
        ctx.err(
            format!("{path}.upstream"),
            format!("unknown upstream {:?}{hint}", rr.upstream),
        );
    }
    let matcher = compile_match(&format!("{path}.match"), rr.matcher, paths, ctx);
    let upgrades = compile_upgrades(&format!("{path}.upgrades"), rr.upgrades, ctx);
    let cors = rr
        .cors
        .map(|c| compile_cors(&format!("{path}.cors"), c, ctx));
    let rewrite = rr.rewrite.map(|rw| {
        let strip = rw.strip_prefix.unwrap_or_default();
        let replace = rw.replace_prefix.unwrap_or_default();
        if strip.is_empty() && replace.is_empty() {
            ctx.err(
                format!("{path}.rewrite"),
                "set strip_prefix and/or replace_prefix",
            );
        }
        if !replace.is_empty() && !replace.starts_with('/') {
            ctx.err(
                format!("{path}.rewrite.replace_prefix"),
                "must start with /",
            );
        }
        Rewrite {
            strip_prefix: strip,
            replace_prefix: replace,
        }
    });
    let ip = rr.ip.unwrap_or_default();
    let allow = ctx.nets(&format!("{path}.ip.allow"), &ip.allow);
    let deny = ctx.nets(&format!("{path}.ip.deny"), &ip.deny);
    let auth = match (rr.public, rr.auth) {
        (Some(true), None) => RouteAuth::Public,
        (Some(true), Some(_)) => {
            ctx.err(
                format!("{path}.public"),
                "a public route cannot also have an auth block",
            );
            RouteAuth::Public
        }
        (_, Some(ra)) => RouteAuth::Protected(Box::new(compile_auth(
            &format!("{path}.auth"),
            ra,
            issuers,
            ctx,
        )?)),
        (_, None) => {
            ctx.err(
                path,
                "has no auth block and is not marked public: true (routes fail closed)",
            );
            return None;
        }
    };
    if let RouteAuth::Protected(p) = &auth
        && p.forward_token
        && upstreams
            .get(&rr.upstream)
            .is_some_and(|u| u.oauth.is_some())
    {
        ctx.err(
            format!("{path}.auth.forward_token"),
            format!(
                "upstream {:?} gets its own OAuth token in Authorization (credential.oauth): the client's token cannot go there too",
                rr.upstream
            ),
        );
    }
    let explicit_limits = rr.rate_limits.is_some();
    let mut rate_limits = crate::rate_limits::route_policies(
        &format!("{path}.rate_limits"),
        rr.rate_limits,
        &auth,
        rate_limits,
        ctx,
    );
    let fallback = crate::ai_routes::compile_fallback(
        path,
        &rr.upstream,
        rr.fallback,
        &upgrades,
        upstreams,
        ctx,
    );
    crate::ai_routes::check_token_budgets(
        &format!("{path}.rate_limits"),
        &mut rate_limits,
        explicit_limits,
        std::iter::once(rr.upstream.as_str()).chain(fallback.iter().map(String::as_str)),
        upstreams,
        ctx,
    );
    Some(RouteConfig {
        name: rr.name,
        matcher: matcher?,
        upstream: rr.upstream,
        rewrite,
        preserve_host: rr.preserve_host.unwrap_or(false),
        max_body_bytes: rr.max_body.map_or(limits.max_body_bytes, |s| s.0),
        timeout: rr.timeout.map(|d| d.0),
        sse_keepalive: rr.sse_keepalive.map(|d| d.0).filter(|d| !d.is_zero()),
        ip_rules: IpRules::new(&allow, &deny),
        auth,
        upgrades,
        cors,
        rate_limits,
        fallback,
    })
}

fn compile_cors(path: &str, rc: RawCors, ctx: &mut Ctx<'_>) -> Cors {
    let mut origins = Vec::new();
    let mut any_origin = false;
    if rc.allowed_origins.is_empty() {
        ctx.err(
            format!("{path}.allowed_origins"),
            "list the origins allowed (e.g. https://chat.example.com), or \"*\"",
        );
    }
    for (i, o) in rc.allowed_origins.iter().enumerate() {
        if o == "*" {
            any_origin = true;
            continue;
        }
        let lower = o.trim_end_matches('/').to_ascii_lowercase();
        let valid = lower.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.path_and_query()
                    .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        });
        if valid {
            origins.push(lower);
        } else {
            ctx.err(
                format!("{path}.allowed_origins[{i}]"),
                format!("{o:?} is not an origin: scheme://host[:port], without a path"),
            );
        }
    }
    let credentials = rc.allow_credentials.unwrap_or(false);
    if credentials && any_origin {
        ctx.err(
            format!("{path}.allow_credentials"),
            "cannot go with allowed_origins \"*\": browsers refuse credentials for a wildcard origin; list the origins",
        );
    }
    let methods = rc
        .allowed_methods
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()])
        .iter()
        .enumerate()
        .filter_map(
            |(i, m)| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    ctx.err(
                        format!("{path}.allowed_methods[{i}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                    None
                }
            },
        )
        .collect();
    let mut names = |key: &str, list: Option<Vec<String>>, default: &[&str]| -> Vec<HeaderName> {
        list.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    ctx.err(
                        format!("{path}.{key}[{i}]"),
                        format!("{h:?} is not a header name"),
                    );
                    None
                }
            })
            .collect()
    };
    let headers = names(
        "allowed_headers",
        rc.allowed_headers,
        &["authorization", "content-type"],
    );
    let expose = names("expose_headers", rc.expose_headers, &["x-request-id"]);
    Cors {
        origins,
        any_origin,
        methods,
        headers,
        expose,
        credentials,
        max_age: rc.max_age.map_or(Duration::from_secs(600), |d| d.0),
    }
}

/// `upgrades: [websocket, …]`: lower-case protocol tokens (RFC 9110 §7.8); `h2c`
/// is never allowed (RFC 9113 §3.1 dropped the HTTP/2 upgrade).
fn compile_upgrades(path: &str, list: Option<Vec<String>>, ctx: &mut Ctx<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().into_iter().enumerate() {
        let p = p.to_ascii_lowercase();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b);
        if p.is_empty() || !p.bytes().all(token) {
            ctx.err(
                format!("{path}[{i}]"),
                format!("{p:?} is not a protocol name"),
            );
        } else if p == "h2c" || p.starts_with("h2c/") {
            ctx.err(
                format!("{path}[{i}]"),
                "h2c upgrades are never relayed: RFC 9113 dropped them, and a tunnel to an \
                 HTTP/2 upstream would carry requests the gateway never checks",
            );
        } else if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn compile_match(
    path: &str,
    rm: RawMatch,
    paths: &PathRules,
    ctx: &mut Ctx<'_>,
) -> Option<RouteMatch> {
    let host = rm.host.map(|h| {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                HostMatch::Suffix(format!(".{rest}"))
            }
            _ if h.contains('*') || h.is_empty() => {
                ctx.err(
                    format!("{path}.host"),
                    "wildcards are only allowed as a leading *. (e.g. *.example.com)",
                );
                HostMatch::Exact(h)
            }
            _ => HostMatch::Exact(h),
        }
    });
    let path_match = match (rm.path, rm.path_prefix) {
        (Some(p), None) => PathMatch::Exact(p),
        (None, Some(p)) => PathMatch::Prefix(p),
        (None, None) => PathMatch::Prefix("/".to_owned()),
        (Some(_), Some(_)) => {
            ctx.err(path, "set path or path_prefix, not both");
            return None;
        }
    };
    let case_insensitive = rm.case_insensitive.unwrap_or(false);
    let path_match = match path_match {
        PathMatch::Exact(p) if case_insensitive => PathMatch::Exact(p.to_ascii_lowercase()),
        PathMatch::Prefix(p) if case_insensitive => PathMatch::Prefix(p.to_ascii_lowercase()),
        other => other,
    };
    let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path_match;
    if !p.starts_with('/') {
        ctx.err(format!("{path}.path"), format!("{p:?} must start with /"));
    } else {
        // Requests are matched in canonical form, so a route written otherwise
        // could never match.
        match portcullis_policy::path::canonicalise(p, paths) {
            Ok(c) if c == p.as_str() => {}
            Ok(c) => ctx.err(
                format!("{path}.path"),
                format!("{p:?} is not in canonical form; requests are matched as {c:?}"),
            ),
            Err(r) => ctx.err(
                format!("{path}.path"),
                format!("{p:?} can never match: {}", r.detail),
            ),
        }
    }
    let mut methods = rm.methods.map(|list| {
        list.iter()
            .enumerate()
            .filter_map(
                |(i, m)| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        ctx.err(
                            format!("{path}.methods[{i}]"),
                            format!("{m:?} is not an HTTP method"),
                        );
                        None
                    }
                },
            )
            .collect()
    });
    let models = crate::ai_routes::compile_models(path, rm.models, &mut methods, ctx);
    Some(RouteMatch {
        host,
        path: path_match,
        methods,
        case_insensitive,
        models,
    })
}

fn compile_auth(
    path: &str,
    ra: RawAuth,
    issuers: &BTreeMap<String, Arc<IssuerConfig>>,
    ctx: &mut Ctx<'_>,
) -> Option<ProtectedRoute> {
    if ra.issuers.is_empty() {
        ctx.err(format!("{path}.issuers"), "name at least one issuer");
    }
    let mut by_iss = BTreeMap::new();
    for (i, name) in ra.issuers.iter().enumerate() {
        match issuers.get(name) {
            Some(ic) => {
                if let Some(other) = by_iss.insert(ic.rules.issuer.clone(), Arc::clone(ic)) {
                    ctx.err(
                        format!("{path}.issuers[{i}]"),
                        format!("issuers {:?} and {name:?} share the iss {:?}; a route can accept only one of them", other.name, ic.rules.issuer),
                    );
                }
            }
            // Reported at the issuer already: no cascade.
            None if ctx.broken.contains(&format!("issuers.{name}")) => {}
            None => {
                let hint = did_you_mean(name, issuers.keys().map(String::as_str));
                ctx.err(
                    format!("{path}.issuers[{i}]"),
                    format!("unknown issuer {name:?}{hint}"),
                );
            }
        }
    }
    let introspecting: Vec<&str> = by_iss
        .values()
        .filter(|ic| ic.tokens.introspects())
        .map(|ic| ic.name.as_str())
        .collect();
    if introspecting.len() > 1 {
        ctx.err(
            format!("{path}.issuers"),
            format!(
                "issuers {} all introspect opaque tokens; a route can have one: an opaque token names no issuer, and sending it to several authorization servers would hand it to each",
                introspecting.join(", ")
            ),
        );
    }
    if ra.audiences.is_empty() {
        ctx.err(
            format!("{path}.audiences"),
            "required: without an audience, a token minted for another API would pass",
        );
    }
    let scopes = ra.scopes.unwrap_or_default();
    let mut claims = Vec::new();
    for (i, rc) in ra.claims.into_iter().enumerate() {
        let check = match (rc.equals, rc.one_of, rc.contains) {
            (Some(v), None, None) => ClaimCheck::Equals(v),
            (None, Some(v), None) => ClaimCheck::OneOf(v),
            (None, None, Some(v)) => ClaimCheck::Contains(v),
            _ => {
                ctx.err(
                    format!("{path}.claims[{i}]"),
                    "set exactly one of equals, one_of or contains",
                );
                continue;
            }
        };
        claims.push(ClaimRule {
            claim: rc.claim,
            check,
        });
    }
    let mode = match ra.mode.as_deref() {
        None | Some("enforce") => AuthMode::Enforce,
        Some("report") => AuthMode::Report,
        Some(other) => {
            ctx.err(
                format!("{path}.mode"),
                format!("{other:?} is not a mode; use enforce or report"),
            );
            AuthMode::Enforce
        }
    };
    let mut claim_headers = Vec::new();
    for (claim, header) in ra.claim_headers {
        let p = format!("{path}.claim_headers.{claim}");
        match HeaderName::try_from(header.as_str()) {
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                ctx.err(p, format!("{h} is set by the gateway itself"));
            }
            Ok(h) => claim_headers.push((claim, h)),
            Err(_) => ctx.err(p, format!("{header:?} is not a valid header name")),
        }
    }
    let resource = ra.resource.as_deref().and_then(|r| {
        let rpath = format!("{path}.resource");
        match crate::resource::protected_resource(r) {
            Ok(pr) => {
                if !ra.audiences.iter().any(|a| a == &pr.resource) {
                    ctx.err(
                        rpath,
                        format!(
                            "{:?} is not one of the route's audiences: tokens issued for this resource would be refused (add it to audiences)",
                            pr.resource
                        ),
                    );
                }
                Some(pr)
            }
            Err(e) => {
                ctx.err(rpath, e);
                None
            }
        }
    });
    let models = crate::ai_routes::compile_grant(&format!("{path}.models"), ra.models, ctx);
    Some(ProtectedRoute {
        resource,
        issuers: by_iss,
        access: AccessRules {
            audiences: ra.audiences,
            scopes_all_of: scopes.all_of,
            scopes_any_of: scopes.any_of,
            claims,
        },
        mode,
        forward_token: ra.forward_token.unwrap_or(false),
        query_token: ra.query_token.unwrap_or(false),
        claim_headers,
        models,
    })
}

/// ` (did you mean "x"?)` when a candidate is close, else empty.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// The folder relative paths in a config resolve against.
pub fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}
