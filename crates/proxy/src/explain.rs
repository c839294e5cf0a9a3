//! Explain by request id: the decision traces of the last N refused requests
//! (and report-only would-be refusals) in a bounded ring, served by the admin
//! listener at `GET /debug/requests/{id}` and printed by `portcullis explain`.
//!
//! The ring is a fixed array of slots written round-robin through one atomic
//! cursor: recording takes no lock, so a flood of refusals never queues behind
//! a reader, and the newest N entries win. Lookup scans the slots (admin path).
//! Each entry is bounded: the path and the detail are cut to fixed lengths, the
//! trace holds at most one record per step and verbose notes only for sampled
//! requests, so an entry takes at most [`MAX_ENTRY_BYTES`] whatever the client
//! sent. Nothing secret is kept: no token, no signature, no credential, the
//! subject as the access log writes it (hashed by default).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use portcullis_policy::{Reason, Rejection};
use serde_json::{Value, json};

use crate::decision::{DecisionTrace, Explained, Outcome, Step};

/// The most a kept path takes (longer ones are cut, marked with `…`).
pub const MAX_PATH_BYTES: usize = 256;
/// The most a kept refusal detail (or one evidence note) takes.
pub const MAX_DETAIL_BYTES: usize = 512;
/// The most verbose notes one entry keeps.
pub const MAX_NOTES: usize = 24;
/// An upper bound of one entry's memory: the fixed part, the path, the detail
/// and the notes at their limits would exceed it only for sampled verbose
/// traces, whose notes are cut to fit.
pub const MAX_ENTRY_BYTES: usize = 2048;

/// What is kept of one request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The request id the client was given.
    pub request_id: Box<str>,
    /// When it was decided.
    pub at: SystemTime,
    /// The method.
    pub method: http::Method,
    /// The path, without the query, cut to [`MAX_PATH_BYTES`].
    pub path: Box<str>,
    /// The response status.
    pub status: u16,
    /// The matched route, if any.
    pub route: Option<Box<str>>,
    /// The client address the rules saw.
    pub client_ip: Option<IpAddr>,
    /// The subject as the access log writes it (hashed by default), when the
    /// token was verified before the refusal.
    pub subject: Option<Box<str>>,
    /// `deny`, `would_deny` (report-only), `upstream_refused` (the upstream's
    /// own 401/403) or `allow` (sampled).
    pub outcome: &'static str,
    /// The W3C trace id, when the gateway takes part in traces.
    pub trace_id: Option<Box<str>>,
    /// The steps' records (and notes when the trace was verbose).
    pub steps: DecisionTrace,
    /// The refusal, its detail cut to [`MAX_DETAIL_BYTES`].
    pub rejection: Option<Rejection>,
}

impl Entry {
    /// An estimate of the entry's memory, in bytes.
    pub fn approximate_size(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.request_id.len()
            + self.path.len()
            + self.route.as_ref().map_or(0, |r| r.len())
            + self.subject.as_ref().map_or(0, |s| s.len())
            + self.rejection.as_ref().map_or(0, |r| r.detail.len())
            + self
                .steps
                .notes()
                .iter()
                .map(|(_, n)| n.len() + 32)
                .sum::<usize>()
            + self.steps.records().len() * 4
    }

    /// The refusal: its step and reason.
    pub fn refusal(&self) -> Option<(Step, Reason)> {
        self.steps.failure()
    }

    /// The steps as explained to a person.
    pub fn explained(&self) -> Vec<Explained> {
        self.steps.explain(self.rejection.as_ref())
    }

    /// The JSON document of `GET /debug/requests/{id}`.
    pub fn to_json(&self) -> Value {
        let refusal = self.refusal();
        let reason = refusal
            .map(|(_, r)| r)
            .or_else(|| self.rejection.as_ref().map(|r| r.reason));
        json!({
            "request_id": &*self.request_id,
            "time": unix_seconds(self.at),
            "method": self.method.as_str(),
            "path": &*self.path,
            "status": self.status,
            "route": self.route.as_deref(),
            "client_ip": self.client_ip.map(|ip| ip.to_string()),
            "subject": self.subject.as_deref(),
            "outcome": self.outcome,
            "trace_id": self.trace_id.as_deref(),
            "reason": reason.map(Reason::as_str),
            "step": refusal.map(|(s, _)| s.name()),
            "fix": reason.map(Reason::fix),
            "detail": self.rejection.as_ref().map(|r| r.detail.as_str()),
            "steps": steps_json(&self.explained()),
        })
    }

    /// The text of `portcullis explain`.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "request {}: {} {} -> {} ({}) at {}\n",
            self.request_id,
            self.method,
            self.path,
            self.status,
            self.outcome,
            rfc3339(self.at)
        );
        out.push_str(&format!(
            "route {}; client {}; subject {}; trace {}\n\n",
            self.route.as_deref().unwrap_or("-"),
            self.client_ip.map_or("-".to_owned(), |ip| ip.to_string()),
            self.subject.as_deref().unwrap_or("-"),
            self.trace_id.as_deref().unwrap_or("-")
        ));
        out.push_str(&steps_text(&self.explained()));
        if let Some(r) = &self.rejection {
            let at = self.refusal().map_or("-", |(s, _)| s.name());
            out.push_str(&format!(
                "\n{}: {} {} at step {at}\n",
                if self.outcome == "would_deny" {
                    "report-only, enforcement would refuse"
                } else {
                    "refused"
                },
                r.reason.status(),
                r.reason.as_str()
            ));
        }
        out
    }
}

/// The checklist lines (`✓ route  route chat …`), shared by `diagnose`.
pub fn steps_text(steps: &[Explained]) -> String {
    let mut out = String::new();
    for s in steps {
        let mark = match s.outcome {
            Outcome::Pass => "✓",
            Outcome::Fail(_) => "✗",
            Outcome::Warn(_) => "!",
            Outcome::Skip => "·",
        };
        out.push_str(&format!("{mark} {:<21} {}\n", s.step.name(), s.evidence));
        match s.outcome {
            Outcome::Fail(r) => out.push_str(&format!(
                "  {:<21} reason {} (HTTP {}); fix: {}\n",
                "",
                r.as_str(),
                r.status(),
                r.fix()
            )),
            Outcome::Warn(Some(r)) => out.push_str(&format!(
                "  {:<21} report-only: enforcement would refuse with {} (HTTP {}); fix: {}\n",
                "",
                r.as_str(),
                r.status(),
                r.fix()
            )),
            _ => {}
        }
    }
    out
}

/// The checklist as JSON (`step`, `outcome`, `evidence`, `reason`, `fix`),
/// shared by `diagnose`.
pub fn steps_json(steps: &[Explained]) -> Vec<Value> {
    steps
        .iter()
        .map(|s| {
            let reason = s.outcome.reason();
            json!({
                "step": s.step.name(),
                "outcome": s.outcome.as_str(),
                "evidence": s.evidence,
                "reason": reason.map(Reason::as_str),
                "fix": reason.map(Reason::fix),
            })
        })
        .collect()
}

/// A summary line of a kept entry, for listings and the status page.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The request id.
    pub request_id: Box<str>,
    /// When.
    pub at: SystemTime,
    /// The route, if any.
    pub route: Option<Box<str>>,
    /// The method and path.
    pub target: String,
    /// The status.
    pub status: u16,
    /// The reason, if refused.
    pub reason: Option<Reason>,
    /// `deny`, `would_deny` or `allow`.
    pub outcome: &'static str,
}

impl Summary {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "request_id": &*self.request_id,
            "time": unix_seconds(self.at),
            "route": self.route.as_deref(),
            "target": self.target,
            "status": self.status,
            "reason": self.reason.map(Reason::as_str),
            "outcome": self.outcome,
        })
    }
}

/// The ring of kept entries.
pub struct ExplainRing {
    slots: Box<[ArcSwapOption<Entry>]>,
    cursor: AtomicUsize,
}

impl std::fmt::Debug for ExplainRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainRing")
            .field("capacity", &self.slots.len())
            .finish()
    }
}

impl ExplainRing {
    /// A ring of `capacity` entries (0: keeps nothing).
    pub fn new(capacity: usize) -> Self {
        ExplainRing {
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// How many entries it keeps.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keeps `entry`, replacing the oldest when full.
    pub fn record(&self, mut entry: Entry) {
        if self.slots.is_empty() {
            return;
        }
        bound(&mut entry);
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].store(Some(Arc::new(entry)));
    }

    /// The entry of `request_id`, if still kept.
    pub fn find(&self, request_id: &str) -> Option<Arc<Entry>> {
        self.slots
            .iter()
            .filter_map(|s| s.load_full())
            .find(|e| &*e.request_id == request_id)
    }

    /// The newest `n` entries, newest first.
    pub fn recent(&self, n: usize) -> Vec<Summary> {
        let len = self.slots.len();
        let end = self.cursor.load(Ordering::Relaxed);
        (0..len.min(end).min(n))
            .filter_map(|back| {
                let i = (end - 1 - back) % len;
                self.slots[i].load_full()
            })
            .map(|e| Summary {
                request_id: e.request_id.clone(),
                at: e.at,
                route: e.route.clone(),
                target: format!("{} {}", e.method, e.path),
                status: e.status,
                reason: e
                    .refusal()
                    .map(|(_, r)| r)
                    .or_else(|| e.rejection.as_ref().map(|r| r.reason)),
                outcome: e.outcome,
            })
            .collect()
    }

    /// Entries recorded since start (kept or since replaced).
    pub fn recorded(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }
}

/// Cuts what a client controls to the entry limits.
fn bound(entry: &mut Entry) {
    if entry.path.len() > MAX_PATH_BYTES {
        entry.path = cut(&entry.path, MAX_PATH_BYTES).into();
    }
    if let Some(r) = &mut entry.rejection
        && r.detail.len() > MAX_DETAIL_BYTES
    {
        r.detail = cut(&r.detail, MAX_DETAIL_BYTES);
    }
    entry.steps.bound_notes(MAX_NOTES, MAX_DETAIL_BYTES);
    while entry.approximate_size() > MAX_ENTRY_BYTES && entry.steps.drop_last_note() {}
}

/// `text` cut to at most `max` bytes on a character boundary, ending in `…`.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

pub use portcullis_metrics::admin::is_request_id;

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// `2026-12-02T10:11:12Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, detail: &str) -> Entry {
        let mut steps = DecisionTrace::new(false);
        steps.pass(Step::Route);
        steps.fail(Step::AuthorizationHeader, Reason::TokenMissing);
        Entry {
            request_id: id.into(),
            at: UNIX_EPOCH,
            method: http::Method::GET,
            path: "/v1/x".into(),
            status: 401,
            route: Some("chat".into()),
            client_ip: None,
            subject: None,
            outcome: "deny",
            trace_id: None,
            steps,
            rejection: Some(Rejection::new(Reason::TokenMissing, detail)),
        }
    }

    #[test]
    fn the_newest_entries_win_and_older_ones_are_forgotten() {
        let ring = ExplainRing::new(3);
        for i in 0..5 {
            ring.record(entry(&format!("id-{i}"), "no token"));
        }
        assert!(ring.find("id-0").is_none());
        assert!(ring.find("id-1").is_none());
        assert!(ring.find("id-4").is_some());
        let recent: Vec<_> = ring.recent(10).into_iter().map(|s| s.request_id).collect();
        assert_eq!(
            recent,
            ["id-4", "id-3", "id-2"].map(Box::<str>::from).to_vec()
        );
        assert_eq!(ring.recorded(), 5);
    }

    #[test]
    fn a_ring_of_zero_keeps_nothing() {
        let ring = ExplainRing::new(0);
        ring.record(entry("a", "x"));
        assert!(ring.find("a").is_none());
        assert!(ring.recent(5).is_empty());
    }

    #[test]
    fn an_entry_stays_within_its_bound_whatever_the_client_sent() {
        let ring = ExplainRing::new(1);
        let mut e = entry("big", &"d".repeat(100_000));
        e.path = "/é".repeat(10_000).into();
        ring.record(e);
        let kept = ring.find("big").unwrap();
        assert!(kept.path.len() <= MAX_PATH_BYTES);
        assert!(kept.rejection.as_ref().unwrap().detail.len() <= MAX_DETAIL_BYTES);
        assert!(kept.approximate_size() <= MAX_ENTRY_BYTES);
        assert!(kept.path.ends_with('…'));
    }

    #[test]
    fn a_typical_entry_is_well_under_its_bound() {
        let e = entry(
            "4f0c2a9e1b7d4c3a8e6f5d4c3b2a1908",
            "no Authorization header",
        );
        let size = e.approximate_size();
        println!(
            "typical entry: {size} bytes (fixed part {})",
            std::mem::size_of::<Entry>()
        );
        assert!(size < MAX_ENTRY_BYTES / 2, "{size}");
    }

    #[test]
    fn request_ids_are_checked_for_shape() {
        assert!(is_request_id("4f0c2a9e1b7d4c3a8e6f5d4c3b2a1908"));
        assert!(!is_request_id(""));
        assert!(!is_request_id("a b"));
        assert!(!is_request_id("../etc"));
        assert!(!is_request_id(&"a".repeat(129)));
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_206_272);
        assert_eq!(rfc3339(t), "2026-12-02T10:11:12Z");
    }
}
