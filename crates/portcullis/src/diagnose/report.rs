//! The diagnose report: the pipeline's decision trace of a described request as
//! an ordered checklist, printed for people (✓ ✗ ! ·) or as a stable JSON
//! document for scripts. The steps and their order are the pipeline's own
//! ([`Step::ALL`]); nothing here lists them.

use portcullis_policy::{Reason, Rejection};
use portcullis_proxy::decision::{DecisionTrace, Explained, Outcome, Step};
use serde_json::{Value, json};

/// The whole report: the request described and the pipeline's own trace of it.
#[derive(Debug, Default)]
pub struct Report {
    /// The request checked.
    pub method: String,
    /// The URL checked.
    pub url: String,
    /// Every step of the pipeline, in its order, as the trace explains it.
    pub steps: Vec<Explained>,
}

impl Report {
    /// The report of a dry run's trace.
    pub fn new(
        method: String,
        url: String,
        trace: &DecisionTrace,
        rejection: Option<&Rejection>,
    ) -> Self {
        Report {
            method,
            url,
            steps: trace.explain(rejection),
        }
    }

    /// The refusal: the failing step and its reason, if any step failed.
    pub fn refusal(&self) -> Option<(Step, Reason)> {
        self.steps.iter().find_map(|s| match s.outcome {
            Outcome::Fail(r) => Some((s.step, r)),
            _ => None,
        })
    }

    /// Human text: one line per step, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!("portcullis diagnose: {} {}\n\n", self.method, self.url);
        for s in &self.steps {
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
        match self.refusal() {
            None => out.push_str("\nverdict: ALLOWED — the gateway would forward this request\n"),
            Some((step, r)) => out.push_str(&format!(
                "\nverdict: REFUSED — {} {} at step {}\n",
                r.status(),
                r.as_str(),
                step.name()
            )),
        }
        out
    }

    /// The stable JSON document.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
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
            .collect();
        let refusal = self.refusal();
        json!({
            "method": self.method,
            "url": self.url,
            "verdict": if refusal.is_some() { "refused" } else { "allowed" },
            "reason": refusal.map(|(_, r)| r.as_str()),
            "status": refusal.map(|(_, r)| r.status()),
            "step": refusal.map(|(s, _)| s.name()),
            "steps": steps,
        })
    }
}
