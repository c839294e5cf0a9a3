//! Refusals of the last minutes by reason, for the status page: ten one-minute
//! buckets of per-reason counters, written with atomics only (a flood of
//! refusals never takes a lock) and read by summing the buckets still in the
//! window. A bucket is reused when its minute comes round again; an increment
//! racing that reset at the minute's turn may be lost, which a status page can
//! bear (`/metrics` has the exact counts).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use portcullis_policy::Reason;

/// Minutes the window covers.
pub const WINDOW_MINUTES: u64 = 10;

struct Bucket {
    /// The minute (Unix seconds / 60) this bucket counts; `u64::MAX` unused.
    minute: AtomicU64,
    counts: [AtomicU32; Reason::ALL.len()],
}

/// The window of recent refusals.
pub struct RecentRefusals {
    buckets: [Bucket; WINDOW_MINUTES as usize],
}

impl Default for RecentRefusals {
    fn default() -> Self {
        RecentRefusals {
            buckets: std::array::from_fn(|_| Bucket {
                minute: AtomicU64::new(u64::MAX),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }
}

impl std::fmt::Debug for RecentRefusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentRefusals")
    }
}

fn index(reason: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or_default()
}

impl RecentRefusals {
    /// Counts a refusal at `unix_secs`.
    pub fn record(&self, reason: Reason, unix_secs: u64) {
        let minute = unix_secs / 60;
        let bucket = &self.buckets[(minute % WINDOW_MINUTES) as usize];
        let seen = bucket.minute.load(Ordering::Acquire);
        if seen != minute
            && bucket
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &bucket.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        bucket.counts[index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// The refusals of the last [`WINDOW_MINUTES`] minutes up to `unix_secs`, by
    /// reason, most frequent first.
    pub fn counts(&self, unix_secs: u64) -> Vec<(Reason, u64)> {
        let now = unix_secs / 60;
        let mut totals = [0u64; Reason::ALL.len()];
        for b in &self.buckets {
            let minute = b.minute.load(Ordering::Acquire);
            if minute <= now && now - minute < WINDOW_MINUTES {
                for (t, c) in totals.iter_mut().zip(&b.counts) {
                    *t += u64::from(c.load(Ordering::Relaxed));
                }
            }
        }
        let mut out: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(totals)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cover_the_last_ten_minutes_only() {
        let recent = RecentRefusals::default();
        let t0 = 1_000_000 * 60;
        recent.record(Reason::TokenMissing, t0);
        recent.record(Reason::TokenMissing, t0 + 61);
        recent.record(Reason::ScopeInsufficient, t0 + 120);
        assert_eq!(
            recent.counts(t0 + 150),
            vec![(Reason::TokenMissing, 2), (Reason::ScopeInsufficient, 1)]
        );
        // Ten minutes on, the first minute has left the window.
        assert_eq!(
            recent.counts(t0 + 600),
            vec![(Reason::ScopeInsufficient, 1), (Reason::TokenMissing, 1)]
        );
        // Its bucket is reused, starting from zero.
        recent.record(Reason::IpDenied, t0 + 600);
        assert_eq!(recent.counts(t0 + 600)[0], (Reason::IpDenied, 1));
        assert!(recent.counts(t0 + 3600).is_empty());
    }
}
