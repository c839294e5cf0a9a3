//! OpenTelemetry span export: sampled requests become spans (the request, with
//! child spans for authentication and the upstream exchange, and the decision
//! trace's steps as events), built once the exchange has ended from what the
//! request recorded, and handed to the SDK's `BatchSpanProcessor`, which
//! exports them with `opentelemetry-otlp` over HTTP/protobuf.
//!
//! Nothing of this runs on the request path beyond a few timestamps of sampled
//! requests: spans are assembled at the exchange's end, and queued without
//! waiting. The queue is bounded ([`SpanSink`] counts what waits): a span that
//! finds it full is dropped and counted, so a slow, failing or absent collector
//! costs spans, never requests. The exporter's HTTP requests run on the
//! gateway's Tokio runtime (the SDK's export thread awaits them).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks,
    SpanProcessor,
};
use portcullis_config::TracingConfig;
use portcullis_metrics::Metrics;

use crate::decision::Outcome;
use crate::exchange::{Account, Ending};

/// When the parts of a sampled request ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Authentication and authorization.
    pub auth: Option<(Instant, Instant)>,
    /// The upstream exchange, to its response head.
    pub upstream: Option<(Instant, Instant)>,
}

/// Where sampled spans go: the SDK's batch processor behind a bounded,
/// counted queue.
pub struct SpanSink {
    processor: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanSink")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl SpanSink {
    /// The sink for `config`, or `None` when no collector is configured. Must
    /// run inside a Tokio runtime (the exporter's requests run on it).
    pub fn new(config: &TracingConfig, metrics: &Arc<Metrics>) -> Result<Option<SpanSink>, String> {
        let Some(otlp) = config.otlp.as_ref().filter(|_| config.enabled) else {
            return Ok(None);
        };
        let client = OtlpHttpClient {
            handle: tokio::runtime::Handle::try_current()
                .map_err(|_| "span export needs a Tokio runtime".to_owned())?,
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: otlp.timeout,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(otlp.endpoint.clone())
            .with_timeout(otlp.timeout)
            .build()
            .map_err(|e| format!("tracing.otlp: {e}"))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let counting = CountingExporter {
            inner: exporter,
            queued: Arc::clone(&queued),
            metrics: Arc::clone(metrics),
        };
        // The SDK's own queue is larger than ours, so it never drops silently:
        // the bound is kept (and counted) here.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(otlp.queue + otlp.batch)
            .with_max_export_batch_size(otlp.batch)
            .with_scheduled_delay(otlp.interval)
            .build();
        let mut processor = BatchSpanProcessor::builder(counting)
            .with_batch_config(batch)
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Some(SpanSink {
            processor,
            queued,
            capacity: otlp.queue,
            metrics: Arc::clone(metrics),
            scope: InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))
    }

    /// Queues a span, or drops and counts it when the queue is full.
    fn offer(&self, span: SpanData) {
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.trace_spans("dropped", 1);
            return;
        }
        self.processor.on_end(span);
    }

    /// Exports what is queued (at shutdown), waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        let _ = self.processor.shutdown_with_timeout(timeout);
    }

    /// Turns a sampled exchange into spans and queues them.
    pub fn record(&self, account: &Account, ending: &Ending) {
        let trace = &account.trace;
        let Some(tc) = &trace.trace_context else {
            return;
        };
        let wall_start = SystemTime::now()
            .checked_sub(account.started.elapsed())
            .unwrap_or_else(SystemTime::now);
        let at = |i: Instant| {
            wall_start
                .checked_add(i.saturating_duration_since(account.started))
                .unwrap_or(wall_start)
        };
        let trace_id = TraceId::from_bytes(tc.trace_id);
        let flags = TraceFlags::new(tc.flags | 1);
        let context = |span: [u8; 8]| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(span),
                flags,
                false,
                TraceState::NONE,
            )
        };
        let route = trace
            .route
            .as_ref()
            .map_or("unmatched", |r| r.config.name.as_str());
        let refusal = trace.steps.failure();
        let reason = trace.rejection.as_ref().map(|r| r.reason.as_str());
        let mut attributes = vec![
            KeyValue::new("http.request.method", trace.method.as_str().to_owned()),
            KeyValue::new(
                "url.path",
                trace.path.as_ref().map_or("-", |p| p.path()).to_owned(),
            ),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(account.status)),
            KeyValue::new(
                "portcullis.request_id",
                account.request_id.to_str().unwrap_or("-").to_owned(),
            ),
            KeyValue::new("portcullis.stream", ending.outcome.as_str()),
            KeyValue::new("portcullis.bytes_in", ending.bytes_in as i64),
            KeyValue::new("portcullis.bytes_out", ending.bytes_out as i64),
        ];
        if let Some(ip) = trace.client_ip {
            attributes.push(KeyValue::new("client.address", ip.to_string()));
        }
        if let Some(reason) = reason {
            attributes.push(KeyValue::new("portcullis.reason", reason));
        }
        if let Some((step, _)) = refusal {
            attributes.push(KeyValue::new("portcullis.step", step.name()));
        }
        let status = match (refusal, account.status) {
            (Some((_, reason)), _) => Status::error(reason.as_str()),
            (None, s) if s >= 500 => Status::error(format!("HTTP {s}")),
            _ => Status::Unset,
        };
        // Every step's outcome in one attribute (`route=pass scopes=fail …`); a
        // failing or warning step also as an event with its evidence. The full
        // evidence of every step is in the explain ring, by request id.
        let mut summary = String::with_capacity(256);
        let mut events = SpanEvents::default();
        for explained in trace.steps.explain(trace.rejection.as_ref()) {
            if explained.outcome == Outcome::Skip {
                continue;
            }
            if !summary.is_empty() {
                summary.push(' ');
            }
            summary.push_str(explained.step.name());
            summary.push('=');
            summary.push_str(explained.outcome.as_str());
            if matches!(explained.outcome, Outcome::Pass) {
                continue;
            }
            let mut attrs = vec![
                KeyValue::new("portcullis.outcome", explained.outcome.as_str()),
                KeyValue::new("portcullis.evidence", explained.evidence),
            ];
            if let Some(r) = explained.outcome.reason() {
                attrs.push(KeyValue::new("portcullis.reason", r.as_str()));
            }
            events.events.push(opentelemetry::trace::Event::new(
                explained.step.name(),
                wall_start,
                attrs,
                0,
            ));
        }
        attributes.push(KeyValue::new("portcullis.steps", summary));
        let end = wall_start + ending.total;
        let root = SpanData {
            span_context: context(tc.span_id),
            parent_span_id: tc.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: tc.parent_id.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{} {route}", trace.method)),
            start_time: wall_start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        };
        let child = |name: &'static str,
                     kind: SpanKind,
                     parent: [u8; 8],
                     id: [u8; 8],
                     (s, e): (Instant, Instant),
                     attributes: Vec<KeyValue>,
                     status: Status| SpanData {
            span_context: context(id),
            parent_span_id: SpanId::from_bytes(parent),
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: at(s),
            end_time: at(e),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        };
        let timings = trace.timings.as_deref().copied().unwrap_or_default();
        if let Some(window) = timings.auth {
            let mut attrs = Vec::new();
            if let Some(claims) = &trace.claims {
                attrs.push(KeyValue::new(
                    "portcullis.issuer",
                    claims.issuer.to_string(),
                ));
            }
            // A cache hit passes `token_cache` and skips decoding: no
            // `token_structure` record.
            let records = trace.steps.records();
            let cached = records
                .iter()
                .any(|r| r.step == crate::decision::Step::TokenCache && r.outcome == Outcome::Pass)
                && !records
                    .iter()
                    .any(|r| r.step == crate::decision::Step::TokenStructure);
            attrs.push(KeyValue::new("portcullis.token_cache_hit", cached));
            let auth_status = match refusal {
                Some((step, reason)) if step_is_auth(step) => {
                    attrs.push(KeyValue::new("portcullis.reason", reason.as_str()));
                    Status::error(reason.as_str())
                }
                _ => Status::Unset,
            };
            let auth_span = new_span_id();
            if let Some(fetch) = &trace.steps.key_fetch {
                let attrs = vec![
                    KeyValue::new("portcullis.issuer", fetch.issuer.rules.issuer.clone()),
                    KeyValue::new("portcullis.key_found", fetch.found),
                ];
                let status = if fetch.found {
                    Status::Unset
                } else {
                    Status::error("the key was not in the fetched key set")
                };
                self.offer(child(
                    "portcullis.key_fetch",
                    SpanKind::Client,
                    auth_span,
                    new_span_id(),
                    (fetch.began, fetch.ended),
                    attrs,
                    status,
                ));
            }
            self.offer(child(
                "portcullis.authenticate",
                SpanKind::Internal,
                tc.span_id,
                auth_span,
                window,
                attrs,
                auth_status,
            ));
        }
        if let (Some(window), Some(route)) = (timings.upstream, &trace.route) {
            let mut attrs = vec![KeyValue::new(
                "portcullis.upstream",
                route.config.upstream.clone(),
            )];
            if let Some(s) = trace.upstream_status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(target) = route.upstream.config().targets.first() {
                attrs.push(KeyValue::new(
                    "server.address",
                    target.authority.host().to_owned(),
                ));
            }
            let upstream_status = match trace.upstream_status {
                Some(s) if s >= 500 => Status::error(format!("HTTP {s}")),
                None => Status::error(reason.unwrap_or("no response")),
                _ => Status::Unset,
            };
            self.offer(child(
                "portcullis.upstream",
                SpanKind::Client,
                tc.span_id,
                tc.upstream_span_id,
                window,
                attrs,
                upstream_status,
            ));
        }
        self.offer(root);
    }
}

fn step_is_auth(step: crate::decision::Step) -> bool {
    use crate::decision::Step;
    let position = |s: Step| Step::ALL.iter().position(|x| *x == s);
    position(step) >= position(Step::AuthorizationHeader)
        && position(step) <= position(Step::Claims)
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The OTLP exporter, counting what it exported and what failed, and freeing
/// the queue's places.
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CountingExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingExporter").finish()
    }
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => self.metrics.trace_spans("exported", n as u64),
            Err(e) => {
                self.metrics.trace_spans("failed", n as u64);
                tracing::warn!(
                    error = e.to_string().as_str(),
                    spans = n,
                    "span export failed; the spans are dropped"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: the gateway's own hyper client, its requests
/// run on the gateway's runtime and awaited from the SDK's export thread.
#[derive(Debug, Clone)]
struct OtlpHttpClient {
    handle: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.handle.spawn(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(body));
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                // A collector's answer is small; a huge one is cut, not buffered.
                let body = http_body_util::Limited::new(body, 64 * 1024)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
            }
        });
        let response = task
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)??;
        if !response.status().is_success() {
            return Err(format!("the collector answered HTTP {}", response.status()).into());
        }
        Ok(response)
    }
}
