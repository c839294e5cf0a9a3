//! The decision trace: every pipeline step records here what it decided and, when
//! the trace is verbose, what it looked at. The access log, the metrics,
//! `portcullis diagnose`, the explain ring and the status page all read this one
//! structure, so a step added to the pipeline is explained everywhere by recording
//! itself here; nothing else lists the steps.
//!
//! Cost: a record is three bytes in a fixed inline array (no allocation);
//! evidence text is only built when the trace is verbose (`diagnose`, a sampled
//! request), and a failing step's evidence is the rejection's own detail, which
//! exists anyway.

use portcullis_policy::{Reason, Rejection};

/// A step of the pipeline, as it is named in `diagnose`, explain and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The request's size: the head first of all, the declared body once the
    /// route is known, and the in-flight cap.
    Request,
    /// One authority and one canonical path; no CONNECT tunnels.
    Canonical,
    /// Client copies of gateway-owned and forwarding headers removed.
    StripSpoofed,
    /// Host, path and method matched to a route.
    Route,
    /// A protocol upgrade only to a protocol the route lists.
    Upgrade,
    /// The client address (past trusted proxies) against the global and route
    /// network rules.
    ClientIp,
    /// A CORS preflight answered, or refused, before any token is looked for.
    Cors,
    /// Rate-limit policies kept per client address (without the client):
    /// before any token is looked at, so a flood of forged tokens costs no
    /// signature check.
    IpRateLimit,
    /// Exactly one bearer token, within the size limit.
    AuthorizationHeader,
    /// The verified-token cache: a hit skips decoding and the signature.
    TokenCache,
    /// Three base64url segments with a JSON header and claims.
    TokenStructure,
    /// The token's `iss` selects one of the route's issuers (an opaque token:
    /// the route's issuer of opaque tokens).
    Issuer,
    /// An opaque token asked about at the issuer's introspection endpoint
    /// (RFC 7662): active, and a bearer access token.
    Introspection,
    /// The JOSE header: algorithm on the allow-list, `kid`, `typ`.
    TokenHeader,
    /// The issuer's key set is available.
    Keys,
    /// The token's `kid` is in the key set.
    Kid,
    /// The signature verifies.
    Signature,
    /// `exp`, `nbf` and `iat` within the leeway.
    Time,
    /// `aud` includes an audience the route accepts.
    Audience,
    /// The route's required scopes are granted.
    Scopes,
    /// The route's claim rules hold.
    Claims,
    /// The JSON body's model: read (a model-aware route), served by the
    /// route, and granted to the token (`auth.models`).
    Model,
    /// The route's other rate-limit policies (per client, route or header).
    RateLimit,
    /// The upstream exchange.
    Upstream,
}

impl Step {
    /// Every step, in the order the pipeline takes them (the head-size part of
    /// `request` is checked before `canonical`, its body part after `upgrade`;
    /// it is listed once, first).
    pub const ALL: [Step; 24] = [
        Step::Request,
        Step::Canonical,
        Step::StripSpoofed,
        Step::Route,
        Step::Upgrade,
        Step::ClientIp,
        Step::Cors,
        Step::IpRateLimit,
        Step::AuthorizationHeader,
        Step::TokenCache,
        Step::TokenStructure,
        Step::Issuer,
        Step::Introspection,
        Step::TokenHeader,
        Step::Keys,
        Step::Kid,
        Step::Signature,
        Step::Time,
        Step::Audience,
        Step::Scopes,
        Step::Claims,
        Step::Model,
        Step::RateLimit,
        Step::Upstream,
    ];

    /// The stable name (`step` in JSON, the explain endpoint and span events).
    pub const fn name(self) -> &'static str {
        match self {
            Step::Request => "request",
            Step::Canonical => "canonical",
            Step::StripSpoofed => "strip_spoofed",
            Step::Route => "route",
            Step::Upgrade => "upgrade",
            Step::ClientIp => "client_ip",
            Step::Cors => "cors",
            Step::IpRateLimit => "ip_rate_limit",
            Step::AuthorizationHeader => "authorization_header",
            Step::TokenCache => "token_cache",
            Step::TokenStructure => "token_structure",
            Step::Issuer => "issuer",
            Step::Introspection => "introspection",
            Step::TokenHeader => "token_header",
            Step::Keys => "keys",
            Step::Kid => "kid",
            Step::Signature => "signature",
            Step::Time => "time",
            Step::Audience => "audience",
            Step::Scopes => "scopes",
            Step::Claims => "claims",
            Step::Model => "model",
            Step::RateLimit => "rate_limit",
            Step::Upstream => "upstream",
        }
    }

    /// Looks a step up by its stable name.
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Checked and fine.
    Pass,
    /// Checked and failing: the request is refused here.
    Fail(Reason),
    /// Checked; not a refusal but worth knowing (a report-only route's would-be
    /// refusal carries its reason).
    Warn(Option<Reason>),
    /// Not checked (not applicable to this request).
    Skip,
}

impl Outcome {
    /// `pass`, `fail`, `warn` or `skip`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Warn(_) => "warn",
            Outcome::Skip => "skip",
        }
    }

    /// The reason a failing or warning step carries.
    pub const fn reason(self) -> Option<Reason> {
        match self {
            Outcome::Fail(r) => Some(r),
            Outcome::Warn(r) => r,
            Outcome::Pass | Outcome::Skip => None,
        }
    }
}

/// One step's record: three bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The step.
    pub step: Step,
    /// What it decided.
    pub outcome: Outcome,
}

/// The most records one request makes: every step once, a few twice (the
/// head and body checks of `request`, a key refetch); more are not kept.
pub const MAX_RECORDS: usize = 32;

/// The records of one request, in the order the steps ran: a fixed inline
/// array (96 bytes), so recording is a bounds check and a store.
#[derive(Debug, Clone)]
pub struct DecisionTrace {
    verbose: bool,
    len: u8,
    records: [Record; MAX_RECORDS],
    notes: Vec<(Step, String)>,
    /// A key fetch this request waited for (kept by verbose traces only).
    pub key_fetch: Option<KeyFetch>,
}

/// A key-set fetch a request waited for: when, for which issuer, and whether
/// the key it looked for was then found.
#[derive(Debug, Clone)]
pub struct KeyFetch {
    /// When the fetch began.
    pub began: std::time::Instant,
    /// When it ended.
    pub ended: std::time::Instant,
    /// The issuer whose keys were fetched.
    pub issuer: std::sync::Arc<portcullis_config::IssuerConfig>,
    /// Whether the key was found afterwards.
    pub found: bool,
}

impl Default for DecisionTrace {
    fn default() -> Self {
        DecisionTrace::new(false)
    }
}

const EMPTY: Record = Record {
    step: Step::Request,
    outcome: Outcome::Skip,
};

impl DecisionTrace {
    /// An empty trace; `verbose` ones also keep each step's evidence text.
    pub fn new(verbose: bool) -> Self {
        DecisionTrace {
            verbose,
            len: 0,
            records: [EMPTY; MAX_RECORDS],
            key_fetch: None,
            notes: Vec::new(),
        }
    }

    /// Whether evidence text is kept.
    #[inline]
    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    #[inline(always)]
    fn push(&mut self, step: Step, outcome: Outcome) {
        if let Some(slot) = self.records.get_mut(usize::from(self.len)) {
            *slot = Record { step, outcome };
            self.len += 1;
        }
    }

    /// Records a passing step.
    #[inline]
    pub fn pass(&mut self, step: Step) {
        self.push(step, Outcome::Pass);
    }

    /// Records a passing step and, when verbose, what it saw.
    #[inline]
    pub fn pass_with(&mut self, step: Step, evidence: impl FnOnce() -> String) {
        self.pass(step);
        self.note(step, evidence);
    }

    /// Records a skipped step and, when verbose, why.
    #[inline]
    pub fn skip(&mut self, step: Step, why: impl FnOnce() -> String) {
        self.push(step, Outcome::Skip);
        self.note(step, why);
    }

    /// Records a warning and, when verbose, what it is about.
    pub fn warn(&mut self, step: Step, reason: Option<Reason>, evidence: impl FnOnce() -> String) {
        self.push(step, Outcome::Warn(reason));
        self.note(step, evidence);
    }

    /// Records a failing step; its evidence is the rejection's detail.
    #[inline]
    pub fn fail(&mut self, step: Step, reason: Reason) {
        self.push(step, Outcome::Fail(reason));
    }

    /// Adds evidence to a step, verbose or not (for what is known only later,
    /// off the hot path).
    pub fn add_note(&mut self, step: Step, evidence: String) {
        self.notes.push((step, evidence));
    }

    /// Whether `step` has evidence text.
    pub fn has_note(&self, step: Step) -> bool {
        self.notes.iter().any(|(s, _)| *s == step)
    }

    /// Adds evidence to a step when verbose; `evidence` is not called otherwise.
    #[inline]
    pub fn note(&mut self, step: Step, evidence: impl FnOnce() -> String) {
        if self.verbose {
            self.notes.push((step, evidence()));
        }
    }

    /// Records `result` as the outcome of `step` and hands it back.
    #[inline(always)]
    pub fn check<T>(&mut self, step: Step, result: Result<T, Rejection>) -> Result<T, Rejection> {
        match &result {
            Ok(_) => self.pass(step),
            Err(r) => self.fail(step, r.reason),
        }
        result
    }

    /// As [`DecisionTrace::check`], the step chosen by the failure's reason (for
    /// policy functions that check several things at once).
    pub fn check_by<T>(
        &mut self,
        pass: Step,
        step_of: impl Fn(Reason) -> Step,
        result: Result<T, Rejection>,
    ) -> Result<T, Rejection> {
        match &result {
            Ok(_) => self.pass(pass),
            Err(r) => self.fail(step_of(r.reason), r.reason),
        }
        result
    }

    /// The failing step and its reason, if any.
    pub fn failure(&self) -> Option<(Step, Reason)> {
        self.records().iter().rev().find_map(|r| match r.outcome {
            Outcome::Fail(reason) => Some((r.step, reason)),
            _ => None,
        })
    }

    /// Turns the failure into a warning: a report-only route lets the request
    /// through and says what enforcement would have refused.
    pub fn demote_failure(&mut self) {
        let len = usize::from(self.len);
        if let Some(r) = self.records[..len]
            .iter_mut()
            .rev()
            .find(|r| matches!(r.outcome, Outcome::Fail(_)))
        {
            r.outcome = Outcome::Warn(r.outcome.reason());
        }
    }

    /// Keeps at most `max_notes` notes of at most `max_len` bytes each.
    pub fn bound_notes(&mut self, max_notes: usize, max_len: usize) {
        self.notes.truncate(max_notes);
        for (_, note) in &mut self.notes {
            if note.len() > max_len {
                *note = crate::explain::cut(note, max_len);
            }
        }
    }

    /// Drops the last note; `false` when there was none.
    pub fn drop_last_note(&mut self) -> bool {
        self.notes.pop().is_some()
    }

    /// The records, in the order the steps ran.
    pub fn records(&self) -> &[Record] {
        &self.records[..usize::from(self.len)]
    }

    /// The evidence notes, in the order they were made.
    pub fn notes(&self) -> &[(Step, String)] {
        &self.notes
    }

    /// Every step of [`Step::ALL`] with its outcome and evidence: the last record
    /// of a step wins (a later finding overturns an early pass); a failing step's
    /// evidence ends with `rejection`'s detail; a step never recorded is shown
    /// skipped, saying why.
    pub fn explain(&self, rejection: Option<&Rejection>) -> Vec<Explained> {
        let failure = self.failure();
        Step::ALL
            .iter()
            .map(|&step| {
                let outcome = self
                    .records()
                    .iter()
                    .rev()
                    .find(|r| r.step == step)
                    .map(|r| r.outcome);
                let mut parts: Vec<&str> = self
                    .notes
                    .iter()
                    .filter(|(s, _)| *s == step)
                    .map(|(_, n)| n.as_str())
                    .collect();
                let refused_for = outcome.and_then(Outcome::reason);
                if let Some(r) = rejection.filter(|r| refused_for == Some(r.reason)) {
                    parts.push(&r.detail);
                }
                let (outcome, evidence) = match outcome {
                    Some(o) if parts.is_empty() => (o, default_evidence(o).to_owned()),
                    Some(o) => (o, parts.join("; ")),
                    None => (
                        Outcome::Skip,
                        match failure {
                            Some((at, _)) if position(at) < position(step) => {
                                format!("not checked: refused at step {}", at.name())
                            }
                            _ => "not applicable to this request".to_owned(),
                        },
                    ),
                };
                Explained {
                    step,
                    outcome,
                    evidence,
                }
            })
            .collect()
    }
}

fn position(step: Step) -> usize {
    Step::ALL
        .iter()
        .position(|s| *s == step)
        .unwrap_or(usize::MAX)
}

fn default_evidence(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "passed",
        Outcome::Fail(_) => "failed",
        Outcome::Warn(_) => "warning",
        Outcome::Skip => "not checked",
    }
}

/// One step as explained to a person or a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// The step.
    pub step: Step,
    /// What it decided.
    pub outcome: Outcome,
    /// What it looked at, or why it was not checked.
    pub evidence: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_unique_and_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::from_name(step.name()), Some(step));
        }
        let mut names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Step::ALL.len());
    }

    #[test]
    fn a_quiet_trace_keeps_no_text_and_a_failure_explains_itself_by_its_detail() {
        let mut trace = DecisionTrace::new(false);
        trace.pass_with(Step::Route, || unreachable!("not verbose"));
        let rejection = Rejection::new(Reason::TokenMissing, "no Authorization header");
        let _ = trace.check::<()>(Step::AuthorizationHeader, Err(rejection.clone()));
        assert!(trace.notes().is_empty());
        assert_eq!(
            trace.failure(),
            Some((Step::AuthorizationHeader, Reason::TokenMissing))
        );
        let explained = trace.explain(Some(&rejection));
        let header = explained
            .iter()
            .find(|e| e.step == Step::AuthorizationHeader)
            .unwrap();
        assert_eq!(header.outcome, Outcome::Fail(Reason::TokenMissing));
        assert_eq!(header.evidence, "no Authorization header");
        let later = explained.iter().find(|e| e.step == Step::Upstream).unwrap();
        assert_eq!(later.outcome, Outcome::Skip);
        assert!(later.evidence.contains("authorization_header"));
        assert_eq!(explained.len(), Step::ALL.len());
    }

    #[test]
    fn the_last_record_of_a_step_wins_and_a_demoted_failure_is_a_warning() {
        let mut trace = DecisionTrace::new(true);
        trace.pass_with(Step::Request, || "head 120 bytes".into());
        trace.fail(Step::Request, Reason::BodyTooLarge);
        let rejection = Rejection::new(Reason::BodyTooLarge, "body of 9 bytes");
        let explained = trace.explain(Some(&rejection));
        assert_eq!(explained[0].outcome, Outcome::Fail(Reason::BodyTooLarge));
        assert_eq!(explained[0].evidence, "head 120 bytes; body of 9 bytes");
        trace.demote_failure();
        assert_eq!(trace.failure(), None);
        let explained = trace.explain(Some(&rejection));
        assert_eq!(
            explained[0].outcome,
            Outcome::Warn(Some(Reason::BodyTooLarge))
        );
    }
}
