//! `portcullis diagnose`: the exact cause of a refusal, as an ordered checklist.
//!
//! It runs the gateway's own decision steps ([`portcullis_proxy::pipeline::decide`])
//! in a dry run on a described request, with a verbose decision trace and an
//! empty key cache (so the issuer's keys are fetched the way a fresh replica
//! fetches them), then probes the upstream instead of sending the request. A
//! step added to the pipeline appears here without a change to this file.

pub mod probe;
pub mod report;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Version, header};
use portcullis_config::GatewayConfig;
use portcullis_jwks::{JwksObserver, NoopObserver};
use portcullis_metrics::Metrics;
use portcullis_policy::Rejection;
use portcullis_proxy::ai_request::DescribedBody;
use portcullis_proxy::decision::Step;
use portcullis_proxy::forward::{ForwardContext, forward};
use portcullis_proxy::observe::Trace;
use portcullis_proxy::parser_refusal::http1_parser_check;
use portcullis_proxy::pipeline::{DecideContext, Decided, decide, unix_now};
use portcullis_proxy::runtime::{CompiledRoute, Runtime};
use portcullis_proxy::token_cache::TokenCache;

use crate::cli::DiagnoseArgs;
use report::Report;

/// Runs the command: exit 0 allowed, 1 refused, 2 could not be checked.
pub fn main(args: &DiagnoseArgs) -> ExitCode {
    match prepare(args) {
        Ok((config, token, uri)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return unchecked(args, &format!("cannot start a runtime: {e}")),
            };
            let report = match runtime.block_on(diagnose(args, config, token, uri)) {
                Ok(r) => r,
                Err(e) => return unchecked(args, &e),
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
                );
            } else {
                print!("{}", report.to_text());
            }
            if report.refusal().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => unchecked(args, &e),
    }
}

fn unchecked(args: &DiagnoseArgs, why: &str) -> ExitCode {
    if args.json {
        let doc = serde_json::json!({"verdict": "unchecked", "error": why, "url": args.url, "method": args.method});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        eprintln!("portcullis diagnose: could not check: {why}");
    }
    ExitCode::from(2)
}

/// The configuration, the token, and the URL (or, for a target longer than the
/// HTTP/1.1 parser accepts, that refusal).
type Prepared = (GatewayConfig, Option<String>, Result<http::Uri, Rejection>);

fn prepare(args: &DiagnoseArgs) -> Result<Prepared, String> {
    let config = portcullis_config::load(&args.config)
        .map_err(|e| format!("the configuration is invalid:\n{e}"))?;
    let token = match (&args.token, &args.token_file, &args.token_env) {
        (Some(t), _, _) => Some(t.clone()),
        (_, Some(f), _) => Some(read_token_file(f)?),
        (_, _, Some(var)) => {
            Some(std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?)
        }
        _ => None,
    };
    let token = token.map(|t| t.trim().to_owned());
    let target_bytes = described_target_bytes(&args.url);
    if let Err(refused) = http1_parser_check(0, target_bytes) {
        return Ok((config, token, Err(refused)));
    }
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", args.url))?;
    if uri.host().is_none() && uri.path().is_empty() {
        return Err(format!("{:?} has no path", args.url));
    }
    Ok((config, token, Ok(uri)))
}

/// The length of the request target (path and query) a described URL sends.
fn described_target_bytes(url: &str) -> usize {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let target = if url.contains("://") {
        after_scheme.find('/').map_or("", |i| &after_scheme[i..])
    } else {
        after_scheme
    };
    target.split('#').next().unwrap_or("").len()
}

fn read_token_file(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn diagnose(
    args: &DiagnoseArgs,
    config: GatewayConfig,
    token: Option<String>,
    uri: Result<http::Uri, Rejection>,
) -> Result<Report, String> {
    let method: Method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{:?} is not a method", args.method))?;
    let uri = match uri {
        Ok(uri) => uri,
        Err(refused) => return Ok(parser_refusal_report(&method, args, refused)),
    };
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let observer: Arc<dyn JwksObserver> = Arc::new(NoopObserver);
    // Keys are fetched by the pipeline itself, the way a gateway with an empty
    // cache does, so a failing fetch is explained by the gateway's own words.
    let runtime = Runtime::build_with(config, None, &metrics, &observer, false)?;
    let mut request = described_request(args, &method, &uri, token.as_deref())?;
    // No cache: every token is decoded and verified, every step shown.
    let token_cache = TokenCache::new(false, 0, 0, Duration::ZERO);
    let context = DecideContext {
        runtime: &runtime,
        token_cache: &token_cache,
        metrics: &metrics,
        peer: args.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        now: unix_now(),
        dry_run: true,
    };
    let mut trace = Trace::new(&request, true);
    // What hyper's HTTP/1.1 parser refuses never reaches the pipeline.
    if let Err(refused) = http1_parser_check(request.headers().len(), 0) {
        return Ok(parser_refusal_report(&method, args, refused));
    }
    match decide(&context, &mut request, &mut trace).await {
        Err(rejection) => trace.rejection = Some(rejection),
        Ok(Decided::Answered(_)) => trace.steps.skip(Step::Upstream, || {
            "the gateway answers this request itself (a CORS preflight)".to_owned()
        }),
        Ok(Decided::Forward { route, claims, .. }) if args.send => {
            send_step(
                &runtime,
                &route,
                claims.as_deref(),
                context.peer,
                request.map(|_| ()),
                &mut trace,
            )
            .await;
        }
        Ok(Decided::Forward { route, .. }) => {
            upstream_step(args, &route, &mut trace).await;
        }
    }
    Ok(Report::new(
        method.to_string(),
        args.url.clone(),
        &trace.steps,
        trace.rejection.as_ref(),
    ))
}

/// The report of a request the HTTP/1.1 parser refuses before any step runs.
fn parser_refusal_report(method: &Method, args: &DiagnoseArgs, refused: Rejection) -> Report {
    let mut steps = portcullis_proxy::decision::DecisionTrace::new(true);
    steps.fail(Step::Request, refused.reason);
    Report::new(
        method.to_string(),
        described_url(&args.url),
        &steps,
        Some(&refused),
    )
}

/// The URL as the report shows it: a very long one is cut.
fn described_url(url: &str) -> String {
    match url.char_indices().nth(200) {
        Some((i, _)) => format!("{}… ({} bytes)", &url[..i], url.len()),
        None => url.to_owned(),
    }
}

/// The upstream: probed (connect, TLS, health path) unless `--no-upstream`;
/// the described request itself is never sent.
async fn upstream_step(args: &DiagnoseArgs, route: &CompiledRoute, trace: &mut Trace) {
    let steps = &mut trace.steps;
    if args.no_upstream {
        steps.skip(Step::Upstream, || "not probed (--no-upstream)".to_owned());
        return;
    }
    // The upstream's own OAuth token first: without it nothing is forwarded.
    if let Some(token) = route.upstream.token() {
        match token.header().await {
            Ok(_) => steps.add_note(
                Step::Upstream,
                format!(
                    "credential.oauth: the token endpoint {} gave a token for client {}",
                    token.settings().token_url,
                    token.settings().client_id
                ),
            ),
            Err(refused) => {
                steps.fail(Step::Upstream, refused.reason);
                trace.rejection = Some(refused);
                return;
            }
        }
    }
    match probe::upstream(&route.upstream).await {
        Ok((evidence, true)) => steps.pass_with(Step::Upstream, || evidence),
        Ok((evidence, false)) => steps.warn(Step::Upstream, None, || {
            format!("{evidence}: the upstream reports itself unhealthy")
        }),
        Err((reason, evidence)) => {
            steps.fail(Step::Upstream, reason);
            // A report-only route's would-be refusal gives way to the real one.
            trace.rejection = Some(Rejection::new(reason, evidence));
        }
    }
}

/// `--send`: the described request goes through the gateway's own forward step
/// (without a body); the upstream's answer is reported, never printed.
async fn send_step(
    runtime: &Runtime,
    route: &CompiledRoute,
    claims: Option<&portcullis_policy::VerifiedClaims>,
    peer: IpAddr,
    request: Request<()>,
    trace: &mut Trace,
) {
    let peer = HeaderValue::from_str(&peer.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let request_id = portcullis_proxy::headers::mint_request_id();
    let ctx = ForwardContext {
        route,
        claims,
        peer: &peer,
        https: false,
        request_id: &request_id,
        upgrade: false,
        body_read_timeout: runtime.config.limits.body_read_timeout,
        trace: None,
        requested: None,
    };
    let started = std::time::Instant::now();
    match forward(request, ctx).await {
        Ok(forwarded) => {
            let status = forwarded.response.status().as_u16();
            let head = probe::ms(forwarded.latency);
            // Read (bounded) so the whole exchange is timed; the body is not shown.
            let body = http_body_util::Limited::new(forwarded.response.into_body(), 1 << 20);
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map_or(0, |b| b.to_bytes().len());
            let evidence = format!(
                "sent as request {}: upstream {} answered {status} (head in {head}, {bytes} body bytes in {})",
                request_id.to_str().unwrap_or("-"),
                route.config.upstream,
                probe::ms(started.elapsed())
            );
            let steps = &mut trace.steps;
            match status {
                401 | 403 => steps.warn(Step::Upstream, None, || {
                    format!("{evidence}: the upstream itself refused, not the gateway (its credential or its own rules)")
                }),
                500..=599 => steps.warn(Step::Upstream, None, || {
                    format!("{evidence}: the upstream failed")
                }),
                _ => steps.pass_with(Step::Upstream, || evidence),
            }
        }
        Err(rejection) => {
            trace.steps.fail(Step::Upstream, rejection.reason);
            trace.rejection = Some(rejection);
        }
    }
}

/// The request `diagnose` describes, as the gateway would receive it over
/// HTTP/1.1 (HTTP/1.0 when the URL names no host, so none is required).
fn described_request(
    args: &DiagnoseArgs,
    method: &Method,
    uri: &http::Uri,
    token: Option<&str>,
) -> Result<Request<DescribedBody>, String> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let target = if target.is_empty() {
        "/".to_owned()
    } else {
        target
    };
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(target.as_str())
        .version(if uri.authority().is_some() {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        });
    if let Some(authority) = uri.authority() {
        builder = builder.header(header::HOST, authority.as_str());
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("-H {h:?} is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("-H {h:?}: {:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("-H {h:?}: the value is not a header value"))?;
        builder = builder.header(name, value);
    }
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the token contains characters no header can carry".to_owned())?;
        builder = builder.header(header::AUTHORIZATION, value);
    }
    if let Some(list) = &args.forwarded_for {
        builder = builder.header("x-forwarded-for", list.as_str());
    }
    if let Some(len) = args.content_length {
        builder = builder.header(header::CONTENT_LENGTH, len);
    }
    builder
        .body(DescribedBody::for_model(args.model.as_deref()))
        .map_err(|e| format!("cannot build the request: {e}"))
}
