//! The admin listener's status page (`GET /`): a small read-only HTML page with
//! no external assets and no script (it refreshes itself with a meta refresh), so
//! it works offline and behind strict proxies, and stays readable on a narrow
//! screen. It shows the last configuration load, refusals of the last minutes by
//! reason, the most recent refused requests (each linking to its trace), routes,
//! issuers with key status and age, and upstream target health.
//!
//! Everything shown that a client or a file could have written (paths, request
//! ids, errors) is HTML-escaped, and the page is served with a
//! `Content-Security-Policy` that allows no script at all: a refused request
//! crafted to carry markup can neither run nor restyle the page an operator looks
//! at with the admin token in their browser.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use portcullis_config::{RouteAuth, RouteConfig};
use portcullis_policy::time::human_duration;

use crate::decision::Outcome;
use crate::evidence::describe_match;
use crate::explain::{Entry, rfc3339};
use crate::gateway::Gateway;
use crate::recent::WINDOW_MINUTES;

/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;padding:1rem;color:#1b1b1b;background:#fafafa}\
h1{font-size:1.3rem;margin:0 0 .3rem}h2{font-size:1.05rem;margin:1.4rem 0 .4rem}\
section{max-width:72rem}.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e3e3;vertical-align:top}\
th{font-weight:600;background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code,.mono{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.3rem 0}p,td{overflow-wrap:anywhere}\
.ok{color:#0a6b2d}.bad{color:#a4141b}.warn{color:#8a5a00}.muted{color:#666}\
@media (max-width:40rem){body{padding:.5rem}th,td{padding:.25rem .3rem}.wide{display:none}}";

pub use portcullis_metrics::admin::escape_html as escape;

fn head(out: &mut String, title: &str, refresh: bool) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    );
    if refresh {
        let _ = write!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
        );
    }
    let _ = write!(
        out,
        "<title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    );
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The status page of `gw` now.
pub fn render(gw: &Gateway) -> String {
    let rt = gw.runtime();
    let config = &rt.config;
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, "Portcullis status", true);
    let _ = write!(
        out,
        "<header><h1>Portcullis</h1><p class=\"muted\">version {} · configuration <code>{}</code> · \
         {} routes · refreshed {} (every {REFRESH_SECONDS} s)</p>",
        env!("CARGO_PKG_VERSION"),
        escape(&config.source),
        config.routes.len(),
        rfc3339(SystemTime::now()),
    );
    // The last load of the configuration file.
    let (loaded_at, refused) = gw.last_reload();
    match refused {
        None => {
            let _ = write!(
                out,
                "<p id=\"reload\" data-result=\"ok\"><span class=\"ok\">✓</span> configuration loaded at {}</p>",
                rfc3339(loaded_at)
            );
        }
        Some(errors) => {
            let _ = write!(
                out,
                "<p id=\"reload\" data-result=\"refused\"><span class=\"bad\">✗</span> the configuration on disk was refused at {}; \
                 the running one (loaded before) stays:</p><pre class=\"mono bad\">{}</pre>",
                rfc3339(loaded_at),
                escape(&errors)
            );
        }
    }
    if gw.is_draining() {
        out.push_str("<p class=\"warn\">draining: shutting down, not taking new traffic</p>");
    }
    out.push_str("</header>");
    refusals(&mut out, gw);
    recent_requests(&mut out, gw);
    routes(&mut out, &config.routes);
    issuers(&mut out, gw);
    upstreams(&mut out, gw);
    out.push_str("</body></html>\n");
    out
}

fn refusals(out: &mut String, gw: &Gateway) {
    let counts = gw.recent_refusals(unix_secs());
    let _ = write!(
        out,
        "<section id=\"refusals\"><h2>Refusals, last {WINDOW_MINUTES} minutes</h2>"
    );
    if counts.is_empty() {
        out.push_str("<p class=\"muted\">none</p></section>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>reason</th><th>status</th><th class=\"n\">count</th><th class=\"wide\">fix</th></tr></thead><tbody>",
    );
    for (reason, n) in counts {
        let _ = write!(
            out,
            "<tr data-reason=\"{r}\" data-count=\"{n}\"><td><code>{r}</code></td><td>{}</td><td class=\"n\">{n}</td><td class=\"wide\">{}</td></tr>",
            reason.status(),
            escape(reason.fix()),
            r = reason.as_str(),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn recent_requests(out: &mut String, gw: &Gateway) {
    let recent = gw.explain().recent(20);
    out.push_str("<section id=\"recent\"><h2>Recent refused requests</h2>");
    if recent.is_empty() {
        let capacity = gw.explain().capacity();
        if capacity == 0 {
            out.push_str("<p class=\"muted\">none kept: admin.explain.capacity is 0</p></section>");
        } else {
            out.push_str("<p class=\"muted\">none</p></section>");
        }
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>time</th><th>request</th><th>route</th><th class=\"wide\">target</th><th>status</th><th>reason</th></tr></thead><tbody>",
    );
    for s in recent {
        let id = escape(&s.request_id);
        let reason = s
            .reason
            .map_or_else(|| s.outcome.to_owned(), |r| r.as_str().to_owned());
        let _ = write!(
            out,
            "<tr data-request-id=\"{id}\"><td class=\"mono\">{}</td><td><a class=\"mono\" href=\"/debug/requests/{id}?format=html\">{id}</a></td>\
             <td>{}</td><td class=\"wide mono\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            rfc3339(s.at),
            escape(s.route.as_deref().unwrap_or("-")),
            escape(&s.target),
            s.status,
            escape(&reason),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn routes(out: &mut String, routes: &[std::sync::Arc<RouteConfig>]) {
    out.push_str(
        "<section id=\"routes\"><h2>Routes</h2><div class=\"scroll\"><table><thead><tr><th>route</th><th>match</th><th>upstream</th><th>access</th></tr></thead><tbody>",
    );
    for r in routes {
        let access = match &r.auth {
            RouteAuth::Public => "public".to_owned(),
            RouteAuth::Protected(p) => {
                let mut issuers: Vec<&str> = p.issuers.values().map(|i| i.name.as_str()).collect();
                issuers.sort_unstable();
                issuers.dedup();
                format!(
                    "{:?}; issuers {}; scopes {}",
                    p.mode,
                    issuers.join(", "),
                    p.access.scopes_all_of.join(" ")
                )
            }
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&describe_match(r)),
            escape(&r.upstream),
            escape(&access)
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn issuers(out: &mut String, gw: &Gateway) {
    let rt = gw.runtime();
    out.push_str(
        "<section id=\"issuers\"><h2>Issuers</h2><div class=\"scroll\"><table><thead><tr><th>issuer</th><th>keys</th><th class=\"n\">usable</th><th>age</th><th class=\"wide\">last error</th></tr></thead><tbody>",
    );
    let now = Instant::now();
    for (name, issuer) in &rt.issuers {
        if let Some(opaque) = &issuer.opaque {
            let class = match opaque.status() {
                "answering" => "ok",
                "unknown" => "warn",
                _ => "bad",
            };
            let health = opaque.client.health();
            let _ = write!(
                out,
                "<tr data-issuer=\"{n}\" data-introspection=\"{}\"><td><code>{n}</code><br><span class=\"muted mono\">{}</span></td><td class=\"{class}\">introspection: {}</td><td class=\"n\">-</td><td>-</td><td class=\"wide mono\">{}</td></tr>",
                opaque.status(),
                escape(&issuer.config.rules.issuer),
                opaque.status(),
                escape(health.last_error.as_deref().unwrap_or("-")),
                n = escape(name),
            );
        }
        let Some(keys) = &issuer.keys else { continue };
        let state = keys.state();
        let status = keys.status();
        let class = match status.as_str() {
            "fresh" => "ok",
            "stale" | "pending" => "warn",
            _ => "bad",
        };
        let age = state
            .age(now)
            .map_or("-".to_owned(), |a| human_duration(a.as_secs() as i64));
        let _ = write!(
            out,
            "<tr data-issuer=\"{n}\"><td><code>{n}</code><br><span class=\"muted mono\">{}</span></td><td class=\"{class}\">{}</td><td class=\"n\">{}</td><td>{age}</td><td class=\"wide mono\">{}</td></tr>",
            escape(&issuer.config.rules.issuer),
            status.as_str(),
            state.snapshot.len(),
            escape(state.last_error.as_deref().unwrap_or("-")),
            n = escape(name),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn upstreams(out: &mut String, gw: &Gateway) {
    let rt = gw.runtime();
    out.push_str(
        "<section id=\"upstreams\"><h2>Upstream targets</h2><div class=\"scroll\"><table><thead><tr><th>upstream</th><th>target</th><th>state</th><th class=\"n\">recent connect failures</th></tr></thead><tbody>",
    );
    for (name, pool) in &rt.upstreams {
        for t in pool.target_health() {
            let state = if t.set_aside_for.is_zero() {
                "<span class=\"ok\">in rotation</span>".to_owned()
            } else {
                format!(
                    "<span class=\"bad\">set aside for {}</span>",
                    human_duration(t.set_aside_for.as_secs() as i64)
                )
            };
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"mono\">{}{}</td><td>{state}</td><td class=\"n\">{}</td></tr>",
                escape(name),
                if t.https { "https://" } else { "http://" },
                escape(&t.target),
                t.failures
            );
        }
    }
    out.push_str("</tbody></table></div></section>");
}

/// A kept request's trace as a page (the status page links here).
pub fn explain_page(entry: &Entry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out, &format!("request {}", entry.request_id), false);
    let _ = write!(
        out,
        "<p><a href=\"/\">← status</a></p><h1 class=\"mono\">request {}</h1>\
         <p><code>{} {}</code> → {} ({}) at {}<br>route {} · client {} · subject <code>{}</code></p>",
        escape(&entry.request_id),
        escape(entry.method.as_str()),
        escape(&entry.path),
        entry.status,
        escape(entry.outcome),
        rfc3339(entry.at),
        escape(entry.route.as_deref().unwrap_or("-")),
        entry
            .client_ip
            .map_or("-".to_owned(), |ip| escape(&ip.to_string())),
        escape(entry.subject.as_deref().unwrap_or("-")),
    );
    if let Some(r) = &entry.rejection {
        let _ = write!(
            out,
            "<p id=\"verdict\" data-reason=\"{}\"><span class=\"bad\">✗</span> {} <code>{}</code>: {}<br><b>fix:</b> {}</p>",
            r.reason.as_str(),
            r.reason.status(),
            r.reason.as_str(),
            escape(&r.detail),
            escape(r.reason.fix())
        );
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th></th><th>step</th><th>evidence</th></tr></thead><tbody>",
    );
    for s in entry.explained() {
        let (mark, class) = match s.outcome {
            Outcome::Pass => ("✓", "ok"),
            Outcome::Fail(_) => ("✗", "bad"),
            Outcome::Warn(_) => ("!", "warn"),
            Outcome::Skip => ("·", "muted"),
        };
        let _ = write!(
            out,
            "<tr data-step=\"{}\" data-outcome=\"{}\"><td class=\"{class}\">{mark}</td><td><code>{}</code></td><td>{}</td></tr>",
            s.step.name(),
            s.outcome.as_str(),
            s.step.name(),
            escape(&s.evidence)
        );
    }
    out.push_str("</tbody></table></div></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
