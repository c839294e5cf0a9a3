//! Keep-alive connections to one upstream target.
//!
//! HTTP/1.1 connections carry one request at a time. A connection leaves the pool
//! for a request and comes back when the response body has been read to its end
//! (see [`Checkin`]); a body dropped early closes it instead. Idle connections are
//! kept in one short list per worker thread (sharded by a thread-local index), so
//! workers do not contend, and the most recently used connection is reused first.
//! HTTP/2 connections are shared by every request.
//!
//! Connections idle longer than the upstream's `idle_timeout` are dropped when a
//! request finds them and by a sweep that runs while the pool has idle entries.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hyper::client::conn::{http1, http2};

use crate::body::ForwardBody;

/// An idle HTTP/1.1 connection and when it was last used.
struct Idle {
    sender: http1::SendRequest<ForwardBody>,
    since: Instant,
}

/// The idle lists and the shared HTTP/2 connection of one target.
struct Shared {
    shards: Box<[Mutex<Vec<Idle>>]>,
    max_idle_per_shard: usize,
    idle_timeout: Duration,
    /// Read lock-free by every request to an HTTP/2 upstream.
    http2: ArcSwapOption<http2::SendRequest<ForwardBody>>,
    /// Held by the one request that dials the shared HTTP/2 connection.
    dialing_http2: tokio::sync::Mutex<()>,
    /// A dial meant for HTTP/2 got HTTP/1.1 (ALPN): dial without taking turns.
    http1_only: AtomicBool,
    sweeping: AtomicBool,
}

/// The connection pool of one target.
#[derive(Clone)]
pub struct TargetPool {
    shared: Arc<Shared>,
}

/// A connection lent to one request; give it back with [`Checkin::give_back`]
/// once the response has been read completely.
pub struct Checkin {
    sender: http1::SendRequest<ForwardBody>,
    pool: Weak<Shared>,
}

impl Checkin {
    /// Returns the connection to its pool (unless it has closed meanwhile).
    pub fn give_back(self) {
        if let Some(shared) = self.pool.upgrade() {
            shared.put(self.sender);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a Vec or Option half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This thread's shard index, assigned on first use.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % shards.max(1)
}

impl TargetPool {
    /// An empty pool keeping at most `max_idle` idle connections for `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        TargetPool {
            shared: Arc::new(Shared {
                shards: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
                max_idle_per_shard: max_idle.div_ceil(shards).max(1),
                idle_timeout,
                http2: ArcSwapOption::empty(),
                dialing_http2: tokio::sync::Mutex::new(()),
                http1_only: AtomicBool::new(false),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// The most recently used idle HTTP/1.1 connection still open and idle for
    /// less than the idle timeout at `now`, if any.
    pub fn take_http1(&self, now: Instant) -> Option<http1::SendRequest<ForwardBody>> {
        let shard = &self.shared.shards[shard_index(self.shared.shards.len())];
        let mut idle = lock(shard);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed()
                && now.duration_since(entry.since) < self.shared.idle_timeout
            {
                return Some(entry.sender);
            }
        }
        None
    }

    /// The shared HTTP/2 connection, if one is open.
    pub fn take_http2(&self) -> Option<http2::SendRequest<ForwardBody>> {
        let shared = self.shared.http2.load();
        match shared.as_deref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => None,
        }
    }

    /// Waits for the turn to dial the shared HTTP/2 connection, so that requests
    /// arriving together open one connection rather than one each; `None` once the
    /// target has shown it answers HTTP/1.1 only.
    pub async fn http2_dial_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.shared.http1_only.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.shared.dialing_http2.lock().await)
    }

    /// Records that a dial meant for HTTP/2 got HTTP/1.1.
    pub fn note_http1_only(&self) {
        self.shared.http1_only.store(true, Ordering::Relaxed);
    }

    /// Makes an HTTP/2 connection the shared one.
    pub fn share_http2(&self, sender: http2::SendRequest<ForwardBody>) {
        self.shared.http2.store(Some(Arc::new(sender)));
    }

    /// Lends an HTTP/1.1 connection to a request.
    pub fn lend(&self, sender: http1::SendRequest<ForwardBody>) -> Checkin {
        Checkin {
            sender,
            pool: Arc::downgrade(&self.shared),
        }
    }
}

impl Shared {
    fn put(self: &Arc<Self>, sender: http1::SendRequest<ForwardBody>) {
        if sender.is_closed() {
            return;
        }
        let shard = &self.shards[shard_index(self.shards.len())];
        {
            let mut idle = lock(shard);
            if idle.len() >= self.max_idle_per_shard {
                return;
            }
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        self.start_sweep();
    }

    /// Starts the idle sweep unless it is running; it stops when nothing is idle.
    fn start_sweep(self: &Arc<Self>) {
        // Read first: the common case (already sweeping) writes nothing shared.
        if self.sweeping.load(Ordering::Acquire) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.sweep() == 0 {
                    shared.sweeping.store(false, Ordering::Release);
                    // A connection put back between the sweep and the flag store
                    // restarts the sweep itself.
                    if shared.idle_total() == 0 || shared.sweeping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    /// Drops expired and closed idle connections; returns how many remain.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|shard| {
                let mut idle = lock(shard);
                idle.retain(|e| {
                    !e.sender.is_closed() && now.duration_since(e.since) < self.idle_timeout
                });
                idle.len()
            })
            .sum()
    }

    fn idle_total(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}
