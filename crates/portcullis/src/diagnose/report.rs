//! The diagnose report: an ordered checklist, printed for people (✓ ✗ ·) or as a
//! stable JSON document for scripts.

use portcullis_policy::Reason;
use serde_json::{Value, json};

/// The steps, in the order the gateway takes them. Names are stable (JSON `step`).
pub const STEPS: [&str; 15] = [
    "route",
    "client_ip",
    "request",
    "authorization_header",
    "token_structure",
    "issuer",
    "token_header",
    "keys",
    "kid",
    "signature",
    "audience",
    "time",
    "scopes",
    "claims",
    "upstream",
];

/// The one step at which each reason fails. Exhaustive on purpose.
pub fn step_for(reason: Reason) -> &'static str {
    match reason {
        Reason::RouteNotFound
        | Reason::MethodNotAllowed
        | Reason::PathInvalid
        | Reason::HostInvalid
        | Reason::UpgradeNotAllowed
        | Reason::CorsNotAllowed => "route",
        Reason::IpDenied => "client_ip",
        Reason::HeadersTooLarge
        | Reason::BodyTooLarge
        | Reason::BodyTimeout
        | Reason::Overloaded => "request",
        Reason::TokenMissing | Reason::RequestMalformed | Reason::TokenTooLarge => {
            "authorization_header"
        }
        Reason::TokenMalformed => "token_structure",
        Reason::IssuerMismatch => "issuer",
        Reason::AlgorithmNotAllowed => "token_header",
        Reason::IdpUnavailable => "keys",
        Reason::KeyUnknown => "kid",
        Reason::SignatureInvalid => "signature",
        Reason::AudienceMismatch => "audience",
        Reason::TokenExpired | Reason::TokenNotYetValid => "time",
        Reason::ScopeInsufficient => "scopes",
        Reason::ClaimMismatch => "claims",
        Reason::UpstreamUnreachable | Reason::UpstreamTimeout | Reason::UpstreamProtocolError => {
            "upstream"
        }
    }
}

/// What to do about a reason.
pub fn fix_for(reason: Reason) -> &'static str {
    match reason {
        Reason::RouteNotFound => {
            "no route matches this host and path: check the routes' match blocks"
        }
        Reason::PathInvalid => {
            "send the path in canonical form: no `.`/`..` segments, no `\\`, `;`, `%2F`, double or invalid percent-encoding, no segment ending in `.` or space (the detail names the rule; see paths: in gateway.yaml)"
        }
        Reason::HostInvalid => {
            "send exactly one valid Host header (no userinfo) that agrees with an absolute request target or HTTP/2 :authority"
        }
        Reason::UpgradeNotAllowed => {
            "list the protocol in the route's upgrades (e.g. upgrades: [websocket]); h2c and CONNECT are never relayed"
        }
        Reason::CorsNotAllowed => {
            "add the page's origin (and the method and headers it sends) to the route's cors block"
        }
        Reason::BodyTimeout => {
            "the client paused its request body too long: send it without stalls, or raise limits.body_read_timeout"
        }
        Reason::MethodNotAllowed => {
            "add the method to the route's match.methods, or use an allowed one"
        }
        Reason::IpDenied => {
            "add the client's network to the allow list, remove it from the deny list, or list the proxy in network.trusted_proxies"
        }
        Reason::HeadersTooLarge => {
            "send fewer or smaller headers, or raise limits.max_header_bytes"
        }
        Reason::BodyTooLarge => "send a smaller body, or raise the route's max_body",
        Reason::Overloaded => {
            "the gateway sheds load above limits.max_in_flight: scale out or raise the limit"
        }
        Reason::TokenMissing => "send `Authorization: Bearer <access token>`",
        Reason::RequestMalformed => "send exactly one Authorization header with exactly one token",
        Reason::TokenTooLarge => "use a smaller token, or raise the issuer's max_token_size",
        Reason::TokenMalformed => {
            "the token is not a well-formed signed JWT: get a fresh one from the authorization server"
        }
        Reason::IssuerMismatch => {
            "use a token from an issuer this route accepts, or add the issuer to the route's auth.issuers"
        }
        Reason::AlgorithmNotAllowed => {
            "sign with an algorithm on the issuer's allow-list, or extend issuers.<name>.algorithms"
        }
        Reason::IdpUnavailable => {
            "the authorization server's keys cannot be fetched: check the failing layer (DNS, TCP, TLS, HTTP)"
        }
        Reason::KeyUnknown => {
            "the signing key is not in the issuer's key set: rotation not published yet, or a token from another environment"
        }
        Reason::SignatureInvalid => {
            "the token was altered or signed by another key with the same kid: get a fresh token"
        }
        Reason::AudienceMismatch => {
            "request a token for this API's audience, or add it to the route's auth.audiences"
        }
        Reason::TokenExpired => {
            "get a new token; if fresh tokens fail, compare the clocks of the authorization server and the gateway"
        }
        Reason::TokenNotYetValid => {
            "the authorization server's clock is ahead of the gateway's: fix the clocks or raise the issuer's leeway"
        }
        Reason::ScopeInsufficient => "request the missing scopes when getting the token",
        Reason::ClaimMismatch => "the token's claims do not satisfy the route's claim rules",
        Reason::UpstreamUnreachable => {
            "the upstream cannot be reached: check the target address, the service and TLS"
        }
        Reason::UpstreamTimeout => {
            "the upstream answers too slowly: check it, or raise the route's timeout"
        }
        Reason::UpstreamProtocolError => {
            "the upstream does not speak HTTP as expected: check the target's scheme and port"
        }
    }
}

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Checked and fine.
    Pass,
    /// Checked and failing: the request is refused here.
    Fail,
    /// Checked; not a refusal but worth knowing.
    Warn,
    /// Not checked (not applicable, or an earlier step failed).
    Skip,
}

/// One line of the checklist.
#[derive(Debug, Clone)]
pub struct Step {
    /// Stable step name.
    pub name: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
    /// What was seen.
    pub evidence: String,
    /// The reason when failing.
    pub reason: Option<Reason>,
}

/// The whole report.
#[derive(Debug, Default)]
pub struct Report {
    /// The request checked.
    pub method: String,
    /// The URL checked.
    pub url: String,
    /// Steps in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// Records a passing step.
    pub fn pass(&mut self, name: &'static str, evidence: impl Into<String>) {
        self.push(name, Outcome::Pass, evidence, None);
    }

    /// Records a warning.
    pub fn warn(&mut self, name: &'static str, evidence: impl Into<String>) {
        self.push(name, Outcome::Warn, evidence, None);
    }

    /// Records a skipped step.
    pub fn skip(&mut self, name: &'static str, evidence: impl Into<String>) {
        self.push(name, Outcome::Skip, evidence, None);
    }

    /// Records the failing step of `reason`.
    pub fn fail(&mut self, reason: Reason, evidence: impl Into<String>) {
        self.push(step_for(reason), Outcome::Fail, evidence, Some(reason));
    }

    fn push(
        &mut self,
        name: &'static str,
        outcome: Outcome,
        evidence: impl Into<String>,
        reason: Option<Reason>,
    ) {
        self.steps.push(Step {
            name,
            outcome,
            evidence: evidence.into(),
            reason,
        });
    }

    /// The refusal, if any step failed.
    pub fn refusal(&self) -> Option<Reason> {
        self.steps.iter().find_map(|s| s.reason)
    }

    /// Steps in the canonical order (the last record of a step wins, so a later
    /// finding can overturn an early pass), every step not recorded shown skipped.
    pub fn ordered(&self) -> Vec<Step> {
        STEPS
            .iter()
            .map(|name| {
                self.steps
                    .iter()
                    .rev()
                    .find(|s| s.name == *name)
                    .cloned()
                    .unwrap_or(Step {
                        name,
                        outcome: Outcome::Skip,
                        evidence: "not checked: an earlier step failed".to_owned(),
                        reason: None,
                    })
            })
            .collect()
    }

    /// Human text: one line per step, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!("portcullis diagnose: {} {}\n\n", self.method, self.url);
        for s in self.ordered() {
            let mark = match s.outcome {
                Outcome::Pass => "✓",
                Outcome::Fail => "✗",
                Outcome::Warn => "!",
                Outcome::Skip => "·",
            };
            out.push_str(&format!("{mark} {:<21} {}\n", s.name, s.evidence));
            if let Some(r) = s.reason {
                out.push_str(&format!(
                    "  {:<21} reason {} (HTTP {}); fix: {}\n",
                    "",
                    r.as_str(),
                    r.status(),
                    fix_for(r)
                ));
            }
        }
        match self.refusal() {
            None => out.push_str("\nverdict: ALLOWED — the gateway would forward this request\n"),
            Some(r) => out.push_str(&format!(
                "\nverdict: REFUSED — {} {} at step {}\n",
                r.status(),
                r.as_str(),
                step_for(r)
            )),
        }
        out
    }

    /// The stable JSON document.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .ordered()
            .iter()
            .map(|s| {
                json!({
                    "step": s.name,
                    "outcome": match s.outcome { Outcome::Pass => "pass", Outcome::Fail => "fail", Outcome::Warn => "warn", Outcome::Skip => "skip" },
                    "evidence": s.evidence,
                    "reason": s.reason.map(Reason::as_str),
                    "fix": s.reason.map(fix_for),
                })
            })
            .collect();
        let refusal = self.refusal();
        json!({
            "method": self.method,
            "url": self.url,
            "verdict": if refusal.is_some() { "refused" } else { "allowed" },
            "reason": refusal.map(Reason::as_str),
            "status": refusal.map(Reason::status),
            "step": refusal.map(step_for),
            "steps": steps,
        })
    }
}
