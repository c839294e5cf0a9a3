//! The gateway's shared state: the live [`Runtime`] behind an `ArcSwap` (each
//! request keeps the generation it started with), the token cache, the in-flight
//! counter, and the bridge from JWKS events to metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portcullis_config::GatewayConfig;
use portcullis_jwks::{JwksObserver, KeyStatus};
use portcullis_metrics::{AdminAccess, AdminHooks, Explanation, Metrics, Readiness, ReloadHook};
use portcullis_policy::{Reason, Rejection};

use crate::explain::ExplainRing;
use crate::otel::SpanSink;
use crate::recent::RecentRefusals;
use crate::runtime::Runtime;
use crate::tls::CertStore;
use crate::token_cache::TokenCache;

/// Exports key-fetcher events as metrics.
pub struct MetricsObserver {
    metrics: Arc<Metrics>,
}

impl JwksObserver for MetricsObserver {
    fn fetched(&self, issuer: &str, outcome: &'static str, elapsed: Duration) {
        let f = self.metrics.families();
        f.jwks_fetches.with_label_values(&[issuer, outcome]).inc();
        f.jwks_fetch_duration
            .with_label_values(&[issuer])
            .observe(elapsed.as_secs_f64());
    }

    fn key_set(&self, issuer: &str, keys: usize, fetched_at: SystemTime) {
        let f = self.metrics.families();
        f.jwks_keys.with_label_values(&[issuer]).set(keys as i64);
        let at = fetched_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        f.jwks_last_success.with_label_values(&[issuer]).set(at);
    }

    fn skipped_key(&self, issuer: &str, _kid: &str, _reason: &str) {
        self.metrics
            .families()
            .jwks_skipped
            .with_label_values(&[issuer])
            .inc();
    }

    fn introspected(&self, issuer: &str, outcome: &'static str, elapsed: Duration) {
        let f = self.metrics.families();
        f.introspection_requests
            .with_label_values(&[issuer, outcome])
            .inc();
        f.introspection_duration
            .with_label_values(&[issuer])
            .observe(elapsed.as_secs_f64());
    }
}

/// What a configuration swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Issuers whose key caches were kept.
    pub issuers_kept: Vec<String>,
    /// Settings that cannot change without a restart and were left as they were.
    pub not_applied: Vec<String>,
    /// Whether a new TLS certificate was swapped in.
    pub tls_reloaded: bool,
}

/// Shared state of a running gateway.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    observer: Arc<dyn JwksObserver>,
    token_cache: TokenCache,
    in_flight: AtomicUsize,
    /// Set by SIGTERM: readiness fails at once, HTTP/1.1 responses carry
    /// `Connection: close`.
    draining: AtomicBool,
    /// Set the first time readiness passed: issuers marked
    /// `required_for_readiness` gate only the start, so a reload (a new issuer, a
    /// typo) never takes a serving replica out of its Service.
    ready_once: AtomicBool,
    /// When the configuration was last loaded or refused, and the problems of a
    /// refused load (cleared by the next good one).
    reload_error: Mutex<(SystemTime, Option<String>)>,
    /// Refusals of the last minutes by reason, for the status page.
    recent: RecentRefusals,
    /// The traffic listener's certificate, when it terminates TLS; swapped by
    /// reloads.
    tls: Option<Arc<CertStore>>,
    /// The decision traces of the last refused requests; replaced (emptied)
    /// when a reload changes its capacity.
    explain: ArcSwap<ExplainRing>,
    /// Where sampled requests' spans go (`tracing.otlp`), fixed at start.
    spans: Option<SpanSink>,
}

/// Holds an in-flight slot; released on drop.
pub struct InFlight<'a> {
    gw: &'a Gateway,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gw.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gw.metrics.families().in_flight.dec();
    }
}

impl Gateway {
    /// Builds the gateway from a validated configuration. Must run inside a Tokio
    /// runtime (key caches start their refreshers).
    pub fn new(config: GatewayConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let observer: Arc<dyn JwksObserver> = Arc::new(MetricsObserver {
            metrics: Arc::clone(&metrics),
        });
        let tc = config.token_cache;
        let explain = ExplainRing::new(config.admin_settings.explain_capacity);
        let spans = SpanSink::new(&config.tracing, &metrics)?;
        let tls = config
            .listen
            .tls
            .as_ref()
            .map(CertStore::new)
            .transpose()
            .map_err(|e| format!("listen.tls: {e}"))?;
        let runtime = Runtime::build(config, None, &metrics, &observer)?;
        metrics.config_reload(true);
        Ok(Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            token_cache: TokenCache::new(tc.enabled, tc.max_entries, tc.max_bytes, tc.max_ttl),
            metrics,
            observer,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            ready_once: AtomicBool::new(false),
            reload_error: Mutex::new((SystemTime::now(), None)),
            recent: RecentRefusals::default(),
            tls,
            explain: ArcSwap::from_pointee(explain),
            spans,
        }))
    }

    /// The span sink, when spans are exported.
    pub fn spans(&self) -> Option<&SpanSink> {
        self.spans.as_ref()
    }

    /// Exports the spans still queued, waiting at most `timeout` (at shutdown).
    pub fn flush_spans(&self, timeout: Duration) {
        if let Some(spans) = &self.spans {
            spans.shutdown(timeout);
        }
    }

    /// The explain ring.
    pub fn explain(&self) -> Arc<ExplainRing> {
        self.explain.load_full()
    }

    /// Keeps a decided request's trace in the explain ring.
    pub fn keep_explained(&self, entry: crate::explain::Entry) {
        self.explain.load().record(entry);
    }

    /// The live configuration generation.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The exporter.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The verified-token cache.
    pub fn token_cache(&self) -> &TokenCache {
        &self.token_cache
    }

    /// The traffic listener's TLS acceptor, presenting the current certificate at
    /// each handshake; `None` without TLS.
    pub fn tls_acceptor(&self) -> Option<Result<tokio_rustls::TlsAcceptor, String>> {
        self.tls.as_ref().map(CertStore::acceptor)
    }

    /// Starts draining (SIGTERM): `/readyz` answers 503 from now on and
    /// HTTP/1.1 responses carry `Connection: close`, while requests are still
    /// served until the listeners close.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Notes the outcome of a reload of the file on disk, for `/readyz`'s body.
    pub fn record_reload(&self, refused: Option<String>) {
        if let Ok(mut e) = self.reload_error.lock() {
            *e = (SystemTime::now(), refused);
        }
    }

    /// When the configuration file was last loaded, and the problems if that
    /// load was refused (the running configuration then is an older one).
    pub fn last_reload(&self) -> (SystemTime, Option<String>) {
        self.reload_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or((UNIX_EPOCH, None))
    }

    /// Counts a refusal for the status page.
    pub fn record_refusal(&self, reason: Reason) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.recent.record(reason, now);
    }

    /// Refusals of the last minutes by reason, most frequent first.
    pub fn recent_refusals(&self, unix_secs: u64) -> Vec<(Reason, u64)> {
        self.recent.counts(unix_secs)
    }

    /// Takes an in-flight slot, or refuses with `overloaded` past `max_in_flight`.
    pub fn admit(&self) -> Result<InFlight<'_>, Rejection> {
        let max = self.runtime.load().config.limits.max_in_flight;
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.families().in_flight.inc();
        let guard = InFlight { gw: self };
        if now > max {
            return Err(Rejection::new(
                Reason::Overloaded,
                format!("more than {max} requests in flight"),
            ));
        }
        Ok(guard)
    }

    /// Swaps in a new configuration. Requests in flight finish on the one they
    /// started with. Listener settings cannot change live: they are reported.
    pub fn apply(&self, config: GatewayConfig) -> Result<ApplyReport, String> {
        let old = self.runtime();
        let mut not_applied = Vec::new();
        if config.listen.address != old.config.listen.address {
            not_applied.push("listen.address: restart to change".to_owned());
        }
        if config.listen.tls.is_some() != self.tls.is_some() {
            not_applied.push("listen.tls (turning TLS on or off): restart to change".to_owned());
        }
        if config.admin != old.config.admin {
            not_applied.push("admin.address: restart to change".to_owned());
        }
        if config.tracing.otlp != old.config.tracing.otlp
            || config.tracing.service_name != old.config.tracing.service_name
            || (config.tracing.enabled
                && !old.config.tracing.enabled
                && config.tracing.otlp.is_some())
        {
            not_applied.push(
                "tracing.otlp, tracing.service_name: restart to change the span export".to_owned(),
            );
        }
        if config.workers != old.config.workers {
            not_applied.push("workers: restart to change".to_owned());
        }
        let tc = config.token_cache;
        let explain_capacity = config.admin_settings.explain_capacity;
        let new_tls = config.listen.tls.clone();
        let new = Runtime::build(config, Some(&old), &self.metrics, &self.observer)?;
        // The certificate last: a pair that does not parse or match refuses the
        // whole reload, and the old certificate and configuration stay.
        let mut tls_reloaded = false;
        if let (Some(store), Some(files)) = (&self.tls, &new_tls) {
            tls_reloaded = store
                .replace(files)
                .map_err(|e| format!("listen.tls: {e}; the old certificate stays"))?;
        }
        let issuers_kept = new
            .issuers
            .iter()
            .filter(|(name, rt)| old.issuers.get(*name).is_some_and(|o| Arc::ptr_eq(o, rt)))
            .map(|(name, _)| name.clone())
            .collect();
        self.token_cache
            .configure(tc.enabled, tc.max_entries, tc.max_bytes, tc.max_ttl);
        if explain_capacity != self.explain.load().capacity() {
            self.explain
                .store(Arc::new(ExplainRing::new(explain_capacity)));
        }
        self.runtime.store(Arc::new(new));
        self.metrics.config_reload(true);
        Ok(ApplyReport {
            issuers_kept,
            not_applied,
            tls_reloaded,
        })
    }

    /// Ready when every issuer has usable keys (fresh, or stale within `max_stale`).
    pub fn readiness(&self) -> Readiness {
        let rt = self.runtime();
        let draining = self.is_draining();
        let first_check = !self.ready_once.load(Ordering::Acquire);
        let mut ready = !draining;
        let mut checks = vec![format!(
            "config: {} ({} routes)",
            rt.config.source,
            rt.config.routes.len()
        )];
        if draining {
            checks.push("draining: shutting down (SIGTERM); not taking new traffic".to_owned());
        }
        if let Ok(e) = self.reload_error.lock()
            && let Some(e) = e.1.as_deref()
        {
            let first = e.lines().next().unwrap_or(e);
            checks.push(format!(
                "config on disk refused, the running one stays: {first}"
            ));
        }
        for (name, issuer) in &rt.issuers {
            // Introspection never makes a replica unready: while it fails,
            // cached answers serve and other tokens get 503 idp_unavailable.
            if let Some(opaque) = &issuer.opaque {
                checks.push(format!("issuer {name}: {}", opaque.describe()));
            }
            let Some(keys) = &issuer.keys else { continue };
            let status = keys.status();
            let usable = matches!(status, KeyStatus::Fresh | KeyStatus::Stale);
            let required = issuer.config.required_for_readiness;
            // A required issuer gates the start only; afterwards an issuer without
            // keys costs its own routes (503 idp_unavailable), not the replica.
            if required && first_check && !usable {
                ready = false;
            }
            let state = keys.state();
            let err = state
                .last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            let effect = match (usable, required && first_check) {
                (true, _) => "",
                (false, true) => "; required_for_readiness: not ready until it has keys",
                (false, false) => "; its routes answer 503 idp_unavailable",
            };
            checks.push(format!(
                "issuer {name}: {} with {} keys{err}{effect}",
                status.as_str(),
                state.snapshot.len()
            ));
        }
        // An upstream's token endpoint costs that upstream's routes (502
        // upstream_credential_unavailable), never the replica.
        for pool in rt.upstreams.values() {
            if let Some(token) = pool.token() {
                checks.push(token.describe());
            }
        }
        // The shared rate-limit store never makes a replica unready: while it
        // fails, every check follows on_store_error.
        if let Some(store) = &rt.rate_store {
            checks.push(store.describe());
        }
        if ready {
            self.ready_once.store(true, Ordering::Release);
        }
        Readiness { ready, checks }
    }

    /// The admin endpoints' view of this gateway, with an optional reload hook.
    pub fn admin_hooks(self: &Arc<Self>, reload: Option<ReloadHook>) -> AdminHooks {
        let (ready, scrape) = (Arc::clone(self), Arc::clone(self));
        let (access, explain, recent) = (Arc::clone(self), Arc::clone(self), Arc::clone(self));
        let page = Arc::clone(self);
        AdminHooks {
            metrics: Arc::clone(&self.metrics),
            readiness: Arc::new(move || ready.readiness()),
            before_scrape: Arc::new(move || scrape.update_scrape_gauges()),
            reload,
            access: Arc::new(move || {
                let settings = &access.runtime().config.admin_settings;
                AdminAccess {
                    token_digest: settings.token.as_ref().map(|d| d.0),
                    protect_metrics: settings.protect_metrics,
                }
            }),
            explain: Some(Arc::new(move |id: &str| {
                let ring = explain.explain();
                match ring.find(id) {
                    Some(entry) => Explanation::Found {
                        json: entry.to_json().to_string(),
                        text: entry.to_text(),
                        html: crate::status_page::explain_page(&entry),
                    },
                    None => Explanation::NotKept {
                        capacity: ring.capacity(),
                    },
                }
            })),
            recent: Some(Arc::new(move |n| {
                let list: Vec<serde_json::Value> = recent
                    .explain()
                    .recent(n)
                    .iter()
                    .map(|s| s.to_json())
                    .collect();
                serde_json::Value::Array(list).to_string()
            })),
            status_page: Some(Arc::new(move || crate::status_page::render(&page))),
        }
    }

    /// Refreshes gauges computed at scrape time (key age and status per issuer,
    /// token cache size).
    pub fn update_scrape_gauges(&self) {
        let rt = self.runtime();
        let f = self.metrics.families();
        f.token_cache_entries
            .set(i64::try_from(self.token_cache.len()).unwrap_or(i64::MAX));
        f.token_cache_bytes
            .set(i64::try_from(self.token_cache.bytes()).unwrap_or(i64::MAX));
        // Only the policies of the configuration in force: a removed one's
        // series goes with its limiter.
        f.rate_limit_keys.reset();
        for (name, limiter) in &rt.limiters {
            f.rate_limit_keys
                .with_label_values(&[name])
                .set(i64::try_from(limiter.keys()).unwrap_or(i64::MAX));
        }
        f.upstream_token_age.reset();
        for (name, pool) in &rt.upstreams {
            if let Some(age) = pool.token().and_then(|t| t.age()) {
                f.upstream_token_age
                    .with_label_values(&[name])
                    .set(age.as_secs_f64());
            }
        }
        let now = Instant::now();
        for issuer in rt.issuers.values() {
            let label = issuer.config.rules.issuer.as_str();
            if let Some(opaque) = &issuer.opaque {
                let current = opaque.status();
                for s in ["unknown", "answering", "failing"] {
                    f.introspection_status
                        .with_label_values(&[label, s])
                        .set(i64::from(s == current));
                }
                if let Some(at) = opaque.client.health().last_success {
                    let at = at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    f.introspection_last_success
                        .with_label_values(&[label])
                        .set(at);
                }
            }
            let Some(keys) = &issuer.keys else { continue };
            let state = keys.state();
            if let Some(age) = state.age(now) {
                f.jwks_key_age
                    .with_label_values(&[label])
                    .set(age.as_secs_f64());
            }
            let current = state.status(now, keys.settings().max_stale);
            for s in [
                KeyStatus::Pending,
                KeyStatus::Fresh,
                KeyStatus::Stale,
                KeyStatus::Failed,
            ] {
                f.jwks_status
                    .with_label_values(&[label, s.as_str()])
                    .set(i64::from(s == current));
            }
        }
    }
}
