//! The shared rate-limit store: the GCRA state of every key in one Redis, so
//! that any number of replicas enforce one limit together.
//!
//! With `consistency: exact`, each check is one round trip: a server-side Lua script (run atomically by
//! Redis, with Redis's own clock, so replicas' clocks do not matter) reads the
//! key's theoretical arrival time, decides, and writes it back with an expiry
//! (a key is forgotten once its budget is full again). Every call is bounded by
//! `rate_limits.store_timeout`; a failure or a timeout is the caller's to handle
//! (`rate_limits.on_store_error`). Each worker thread keeps one multiplexed
//! connection (redis-rs's `ConnectionManager`, which reconnects by itself);
//! after a failed connect a thread waits [`RECONNECT_PAUSE`] before it tries
//! again, so a store that is down costs a request no connect attempt of its own.
//!
//! With `consistency: approximate`, no request waits on Redis: each replica
//! decides with its local table and notes the keys it checked; every
//! `sync_interval` one task adds each key's admitted requests to the shared
//! state (a pipelined script call per key) and merges the result back, so a
//! replica learns what the others spent on the keys it sees.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use portcullis_config::{Consistency, RateLimitPolicy, RedisStore};
use portcullis_metrics::Metrics;
use prometheus::{Histogram, IntCounter, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::rate_limit::{PolicyLimiter, Verdict};

/// How long a worker thread waits after a failed connect before it tries again.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// GCRA in one atomic step. KEYS[1]: the key; ARGV[1]: the emission interval
/// T in microseconds; ARGV[2]: the burst tolerance tau = (burst - 1) * T.
/// Returns {1, remaining} when allowed, {0, microseconds to wait} when not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
if tat - tau > now then
  return {0, math.ceil(tat - tau - now)}
end
local new_tat = tat + period
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tau + period - new_tat) / period)}
";

/// The same decision, read only: whether the next request of the key would
/// pass, and how many could pass at once now (`portcullis diagnose` against a
/// live gateway's Redis spends nothing).
const GCRA_PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
if tat - tau > now then
  return {0, math.ceil(tat - tau - now)}
end
return {1, math.floor((now + tau + period - tat) / period)}
";

/// Approximate consistency's sync: adds ARGV[2] requests of one replica to the
/// key (ARGV[1]: the emission interval in microseconds) and returns how long
/// the key's budget is spent from now, in microseconds, every replica's
/// requests included.
const GCRA_ADD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local new_tat = tat + n * period
if n > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return math.ceil(new_tat - now)
";

/// Every store ever built in this process gets its own number, so a worker's
/// cached connection belongs to exactly one store (a reload that changes the
/// store builds a new one).
static STORE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This worker thread's connection to each store it has used, with the
    /// store's liveness token: the connection of a store a reload replaced
    /// is dropped at this thread's next connect.
    static CONNECTIONS: RefCell<Vec<(u64, Weak<()>, Slot)>> = const { RefCell::new(Vec::new()) };
}

/// A worker's connection to one store, or when connecting last failed.
#[derive(Clone)]
enum Slot {
    Ready(ConnectionManager),
    FailedAt(Instant),
}

/// The shared store of a configuration.
pub struct SharedStore {
    /// Its settings.
    pub settings: RedisStore,
    id: u64,
    /// Alive as long as the store: workers' cached connections watch it.
    alive: Arc<()>,
    client: Result<redis::Client, String>,
    script: redis::Script,
    peek: redis::Script,
    add: redis::Script,
    /// The limiters an approximate store reconciles (registered by each
    /// configuration generation; dropped ones are pruned).
    limiters: Mutex<Vec<Weak<PolicyLimiter>>>,
    syncing: AtomicBool,
    syncs_ok: IntCounter,
    syncs_failed: IntCounter,
    up: AtomicBool,
    last_error: Mutex<Option<(Instant, String)>>,
    latency: Histogram,
    up_gauge: IntGauge,
}

impl SharedStore {
    /// A store for `settings`; nothing is connected until the first check.
    pub fn new(settings: RedisStore, metrics: &Metrics) -> Self {
        let client = connection_info(&settings).and_then(|info| {
            match &settings.ca_pem {
                Some(pem) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                ),
                None => redis::Client::open(info),
            }
            .map_err(|e| e.to_string())
        });
        let families = metrics.families();
        SharedStore {
            id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            client,
            script: redis::Script::new(GCRA),
            peek: redis::Script::new(GCRA_PEEK),
            add: redis::Script::new(GCRA_ADD),
            limiters: Mutex::new(Vec::new()),
            syncing: AtomicBool::new(false),
            syncs_ok: families.rate_limit_syncs.with_label_values(&["ok"]),
            syncs_failed: families.rate_limit_syncs.with_label_values(&["error"]),
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            latency: families.rate_limit_store_duration.clone(),
            up_gauge: families.rate_limit_store_up.clone(),
            settings,
        }
    }

    /// Whether the last call succeeded (or none has failed yet).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The `/readyz` line: the store, and its last error while it fails.
    pub fn describe(&self) -> String {
        let shown = &self.settings.shown;
        if self.is_up() {
            return format!("rate-limit store {shown}: up");
        }
        let last = self.last_error.lock().ok().and_then(|e| e.clone());
        match last {
            Some((at, why)) => format!(
                "rate-limit store {shown}: failing for {}s ({why}); checks follow on_store_error",
                at.elapsed().as_secs()
            ),
            None => format!("rate-limit store {shown}: failing"),
        }
    }

    /// Decides one request of `key` under `policy` in the store; `peek` only
    /// reads what it would decide.
    pub async fn check(
        &self,
        key: &str,
        policy: &RateLimitPolicy,
        peek: bool,
    ) -> Result<Verdict, String> {
        let started = Instant::now();
        let result = self.call(key, policy, peek).await;
        self.latency.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.note_success(),
            Err(why) => self.note_failure(why),
        }
        result
    }

    /// Charges `tokens` to a token budget's `key` in the store (after the
    /// answer); one script call bounded by `store_timeout`.
    pub async fn charge(
        &self,
        key: &str,
        policy: &RateLimitPolicy,
        tokens: u64,
    ) -> Result<(), String> {
        let result = async {
            let mut conn = self.connection().await?;
            let period_us = policy.window.as_secs_f64() * 1e6 / f64::from(policy.count.max(1));
            let mut invocation = self.add.key(key);
            invocation.arg(period_us).arg(tokens);
            match tokio::time::timeout(
                self.settings.timeout,
                invocation.invoke_async::<i64>(&mut conn),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("Redis error: {e}")),
                Err(_) => Err(format!(
                    "no answer within store_timeout ({} ms)",
                    self.settings.timeout.as_millis()
                )),
            }
        }
        .await;
        match &result {
            Ok(()) => self.note_success(),
            Err(why) => self.note_failure(why),
        }
        result
    }

    async fn call(
        &self,
        key: &str,
        policy: &RateLimitPolicy,
        peek: bool,
    ) -> Result<Verdict, String> {
        let mut conn = self.connection().await?;
        let period_us = policy.window.as_secs_f64() * 1e6 / f64::from(policy.count.max(1));
        let tau_us = period_us * f64::from(policy.burst.saturating_sub(1));
        let script = if peek { &self.peek } else { &self.script };
        let mut invocation = script.key(key);
        invocation.arg(period_us).arg(tau_us);
        let answer = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((1, remaining))) => Ok(Verdict::Allow {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            }),
            Ok(Ok((0, wait_us))) => Ok(Verdict::Limit {
                retry_after: Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0)),
            }),
            Ok(Ok((flag, _))) => Err(format!("the store answered {flag}, not 0 or 1")),
            Ok(Err(e)) => Err(format!("Redis error: {e}")),
            Err(_) => Err(format!(
                "no answer within store_timeout ({} ms)",
                self.settings.timeout.as_millis()
            )),
        }
    }

    /// Connects once in the background and says in the log whether the store
    /// answers; the gateway serves either way (checks follow
    /// `on_store_error` until it does).
    pub fn probe_in_background(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(self);
        drop(handle.spawn(async move {
            let shown = store.settings.shown.as_str();
            let answer = match store.connection().await {
                Ok(mut conn) => {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<String>(&mut conn);
                    match tokio::time::timeout(store.settings.timeout * 4, answer).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("Redis error: {e}")),
                        Err(_) => Err("no answer to PING in time".to_owned()),
                    }
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(()) => tracing::info!(store = shown, "rate-limit store answers"),
                Err(why) => {
                    store.note_failure(&why);
                    tracing::warn!(
                        store = shown,
                        error = why.as_str(),
                        on_store_error = ?store.settings.on_error,
                        consistency = ?store.settings.consistency,
                        "rate-limit store unreachable at start; serving anyway, checks follow on_store_error until it answers"
                    );
                }
            }
        }));
    }

    /// Adds `limiter` to those an approximate store reconciles.
    pub fn register(&self, limiter: &Arc<PolicyLimiter>) {
        if let Ok(mut list) = self.limiters.lock() {
            list.retain(|w| w.strong_count() > 0);
            if !list.iter().any(|w| w.as_ptr() == Arc::as_ptr(limiter)) {
                list.push(Arc::downgrade(limiter));
            }
        }
    }

    /// Starts reconciling every `sync_interval` on the current runtime (once;
    /// the task ends when the store is dropped).
    pub fn start_sync(self: &Arc<Self>) {
        let Consistency::Approximate { sync_interval } = self.settings.consistency else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        drop(handle.spawn(async move {
            let mut tick = tokio::time::interval(sync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.sync_once().await;
            }
        }));
    }

    /// One reconciliation: each limiter's keys seen since the last one go to
    /// the store with the requests admitted, and the store's state of each
    /// comes back into the local table. A failed sync puts the counts back
    /// for the next one; meanwhile each replica enforces alone.
    pub async fn sync_once(&self) {
        let limiters: Vec<Arc<PolicyLimiter>> = match self.limiters.lock() {
            Ok(list) => list.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for limiter in limiters {
            let pending = limiter.take_pending();
            if pending.is_empty() {
                continue;
            }
            match self.sync_limiter(&limiter, &pending).await {
                Ok(()) => {
                    self.syncs_ok.inc();
                    self.note_success();
                }
                Err(why) => {
                    self.syncs_failed.inc();
                    self.note_failure(&why);
                    for (hash, key, n) in pending {
                        limiter.restore_pending(hash, key, n);
                    }
                }
            }
        }
    }

    async fn sync_limiter(
        &self,
        limiter: &PolicyLimiter,
        pending: &[(u64, String, u32)],
    ) -> Result<(), String> {
        let mut conn = self.connection().await?;
        let policy = &limiter.policy;
        let period_us = policy.window.as_secs_f64() * 1e6 / f64::from(policy.count.max(1));
        let budget = self.settings.timeout * 4;
        let add = self.add.prepare_invoke();
        match tokio::time::timeout(budget, add.load_async(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("Redis error: {e}")),
            Err(_) => return Err("no answer to SCRIPT LOAD in time".to_owned()),
        }
        let invocations: Vec<redis::ScriptInvocation<'_>> = pending
            .iter()
            .map(|(_, key, n)| {
                let mut inv = self.add.key(key.as_str());
                inv.arg(period_us).arg(*n);
                inv
            })
            .collect();
        let mut pipe = redis::pipe();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let answer = tokio::time::timeout(budget, pipe.query_async::<Vec<i64>>(&mut conn)).await;
        let debts = match answer {
            Ok(Ok(d)) if d.len() == pending.len() => d,
            Ok(Ok(d)) => return Err(format!("{} answers to {} keys", d.len(), pending.len())),
            Ok(Err(e)) => return Err(format!("Redis error: {e}")),
            Err(_) => return Err("no answer to the sync in time".to_owned()),
        };
        for ((hash, _, _), debt) in pending.iter().zip(debts) {
            limiter.merge_debt(
                *hash,
                Duration::from_micros(u64::try_from(debt).unwrap_or(0)),
            );
        }
        Ok(())
    }

    fn note_success(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.up_gauge.set(1);
            tracing::info!(
                store = self.settings.shown.as_str(),
                "rate-limit store answers again"
            );
        }
    }

    fn note_failure(&self, why: &str) {
        let was_up = self.up.swap(false, Ordering::Relaxed);
        self.up_gauge.set(0);
        if let Ok(mut last) = self.last_error.lock() {
            let since = match (was_up, last.as_ref()) {
                (false, Some((at, _))) => *at,
                _ => Instant::now(),
            };
            *last = Some((since, why.to_owned()));
        }
        if was_up {
            tracing::warn!(
                store = self.settings.shown.as_str(),
                error = why,
                on_store_error = ?self.settings.on_error,
                "rate-limit store failing"
            );
        }
    }

    /// This worker thread's connection, made on first use.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let cached = CONNECTIONS.with(|c| {
            c.borrow()
                .iter()
                .find(|(id, _, _)| *id == self.id)
                .map(|(_, _, slot)| slot.clone())
        });
        match cached {
            Some(Slot::Ready(conn)) => return Ok(conn),
            Some(Slot::FailedAt(at)) if at.elapsed() < RECONNECT_PAUSE => {
                return Err("not connected (a connect failed less than a second ago)".to_owned());
            }
            _ => {}
        }
        let client = self.client.clone()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let made = tokio::time::timeout(
            self.settings.timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await;
        let (slot, result) = match made {
            Ok(Ok(conn)) => (Slot::Ready(conn.clone()), Ok(conn)),
            Ok(Err(e)) => (
                Slot::FailedAt(Instant::now()),
                Err(format!("cannot connect: {e}")),
            ),
            Err(_) => (
                Slot::FailedAt(Instant::now()),
                Err("cannot connect: timed out".to_owned()),
            ),
        };
        CONNECTIONS.with(|c| {
            let mut slots = c.borrow_mut();
            slots.retain(|(id, alive, _)| *id != self.id && alive.strong_count() > 0);
            slots.push((self.id, Arc::downgrade(&self.alive), slot));
        });
        result
    }
}

/// The connection settings: the URL, with the password from its own setting.
fn connection_info(settings: &RedisStore) -> Result<redis::ConnectionInfo, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(settings.url.0.as_str())
        .map_err(|e| format!("{}: {e}", settings.shown))?;
    Ok(match &settings.password {
        Some(p) => {
            let redis = info.redis_settings().clone().set_password(p.0.as_str());
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::{OnStoreError, Secret};

    fn settings(url: &str) -> RedisStore {
        RedisStore {
            url: Secret(url.to_owned()),
            shown: "redis://127.0.0.1:1".into(),
            password: Some(Secret("s3cret-pass".into())),
            timeout: Duration::from_millis(50),
            ca_pem: None,
            on_error: OnStoreError::Local,
            key_prefix: "t:".into(),
            consistency: portcullis_config::Consistency::Exact,
        }
    }

    #[test]
    fn the_password_setting_reaches_the_connection_and_no_message() {
        let info = connection_info(&settings("redis://127.0.0.1:1/2")).unwrap();
        assert_eq!(info.redis_settings().password(), Some("s3cret-pass"));
        let metrics = Metrics::new().unwrap();
        let store = SharedStore::new(settings("redis://127.0.0.1:1/2"), &metrics);
        store.note_failure("cannot connect");
        assert!(!store.describe().contains("s3cret"), "{}", store.describe());
        assert!(store.describe().contains("failing"), "{}", store.describe());
    }

    #[tokio::test]
    async fn a_store_that_refuses_connections_fails_fast_and_then_pauses() {
        let metrics = Metrics::new().unwrap();
        let store = SharedStore::new(settings("redis://127.0.0.1:1/0"), &metrics);
        let policy = RateLimitPolicy {
            name: "p".into(),
            count: 1,
            window: Duration::from_secs(1),
            burst: 1,
            key: Vec::new(),
            mode: portcullis_config::LimitMode::Enforce,
            unit: portcullis_config::LimitUnit::Requests,
        };
        let first = store.check("k", &policy, false).await.unwrap_err();
        assert!(first.contains("cannot connect"), "{first}");
        let second = store.check("k", &policy, false).await.unwrap_err();
        assert!(second.contains("less than a second ago"), "{second}");
        assert!(!store.is_up());
    }
}
