//! The diagnose report: the pipeline's decision trace of a described request as
//! an ordered checklist, printed for people (✓ ✗ ! ·) or as a stable JSON
//! document for scripts. The steps and their order are the pipeline's own
//! ([`Step::ALL`]); nothing here lists them.

use portcullis_policy::{Reason, Rejection};
use portcullis_proxy::decision::{DecisionTrace, Explained, Outcome, Step};
use portcullis_proxy::explain;
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
        out.push_str(&explain::steps_text(&self.steps));
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
        let steps = explain::steps_json(&self.steps);
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
