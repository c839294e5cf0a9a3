//! `rate_limits`: named request-rate policies, compiled and checked; and the
//! routes' references to them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::compile::{Ctx, did_you_mean};
use crate::model::{
    Consistency, LimitMode, LimitUnit, OnStoreError, RateKeyPart, RateLimitPolicy, RateLimits,
    RateStore, RedisStore, RouteAuth, Secret,
};
use crate::raw::{RawRateLimits, RawRatePolicy};
use crate::units::parse_duration;

/// Keys one policy tracks by default.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// The client claims a `client` key looks at, in order, by default.
pub const DEFAULT_CLIENT_CLAIMS: [&str; 3] = ["client_id", "azp", "sub"];

/// Compiles the `rate_limits` block; problems are reported at their paths.
pub(crate) fn compile_rate_limits(raw: RawRateLimits, ctx: &mut Ctx<'_>) -> RateLimits {
    let store = compile_store(&raw, ctx);
    let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if max_keys == 0 {
        ctx.err(
            "rate_limits.max_keys",
            "must be at least 1 (it bounds the memory each policy may take)",
        );
    }
    let mut policies = BTreeMap::new();
    for (name, rp) in raw.policies {
        let path = format!("rate_limits.policies.{name}");
        if let Some(p) = compile_policy(&path, &name, rp, ctx) {
            policies.insert(name, Arc::new(p));
        }
    }
    let default = raw
        .default
        .map(|names| resolve("rate_limits.default", &names, &policies, ctx))
        .unwrap_or_default();
    RateLimits {
        store,
        max_keys,
        response_headers: raw.response_headers.unwrap_or(false),
        default,
        policies,
    }
}

/// How often an approximate store reconciles by default.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The longest one call to the shared store may take by default.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

fn compile_store(raw: &RawRateLimits, ctx: &mut Ctx<'_>) -> RateStore {
    let url = match raw.store.as_deref() {
        None | Some("local") => {
            for (set, key) in [
                (raw.store_password.is_some(), "store_password"),
                (raw.store_password_file.is_some(), "store_password_file"),
                (raw.store_timeout.is_some(), "store_timeout"),
                (raw.store_ca_file.is_some(), "store_ca_file"),
                (raw.on_store_error.is_some(), "on_store_error"),
                (raw.consistency.is_some(), "consistency"),
                (raw.sync_interval.is_some(), "sync_interval"),
                (raw.key_prefix.is_some(), "key_prefix"),
            ] {
                if set {
                    ctx.err(
                        format!("rate_limits.{key}"),
                        "only means something with a shared store (store: redis://…)",
                    );
                }
            }
            return RateStore::Local;
        }
        Some(text) => match ctx.expand("rate_limits.store", text) {
            Some(url) => url,
            None => return RateStore::Local,
        },
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        ctx.err(
            "rate_limits.store",
            "is local or a redis:// / rediss:// URL (redis://host:6379/0)",
        );
        return RateStore::Local;
    };
    if scheme != "redis" && scheme != "rediss" {
        ctx.err(
            "rate_limits.store",
            format!("{scheme:?} is not a store: use local, redis:// or rediss:// (TLS)"),
        );
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let shown = format!("{scheme}://{host}");
    let password = match (&raw.store_password, &raw.store_password_file) {
        (Some(_), Some(_)) => {
            ctx.err(
                "rate_limits.store_password",
                "set store_password or store_password_file, not both",
            );
            None
        }
        (Some(p), None) => ctx.expand("rate_limits.store_password", p),
        (None, Some(f)) => ctx.read_secret("rate_limits.store_password_file", f),
        (None, None) => None,
    };
    let ca_pem = raw.store_ca_file.as_deref().and_then(|f| {
        let (_, bytes) = ctx.read_file("rate_limits.store_ca_file", f)?;
        if scheme != "rediss" {
            ctx.err(
                "rate_limits.store_ca_file",
                "only means something with a rediss:// (TLS) store",
            );
        }
        if !bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            ctx.err(
                "rate_limits.store_ca_file",
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            );
        }
        Some(bytes)
    });
    let timeout = raw.store_timeout.map_or(DEFAULT_STORE_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        ctx.err(
            "rate_limits.store_timeout",
            "must be longer than zero (every call to the store is bounded)",
        );
    }
    let on_error = match raw.on_store_error.as_deref() {
        None | Some("local") => OnStoreError::Local,
        Some("allow") => OnStoreError::Allow,
        Some("deny") => OnStoreError::Deny,
        Some(other) => {
            ctx.err(
                "rate_limits.on_store_error",
                format!("{other:?} is not local, allow or deny"),
            );
            OnStoreError::Local
        }
    };
    let sync_interval = raw.sync_interval.map_or(DEFAULT_SYNC_INTERVAL, |d| d.0);
    let consistency = match raw.consistency.as_deref() {
        None | Some("exact") => {
            if raw.sync_interval.is_some() {
                ctx.err(
                    "rate_limits.sync_interval",
                    "only means something with consistency: approximate",
                );
            }
            Consistency::Exact
        }
        Some("approximate") => {
            if sync_interval < Duration::from_millis(10) {
                ctx.err(
                    "rate_limits.sync_interval",
                    "must be at least 10ms (each sync is a round trip per key seen)",
                );
            }
            if on_error != OnStoreError::Local {
                ctx.err(
                    "rate_limits.on_store_error",
                    "with consistency: approximate no request waits on the store, so a failing store always means local limits: leave on_store_error out or set it to local",
                );
            }
            Consistency::Approximate { sync_interval }
        }
        Some(other) => {
            ctx.err(
                "rate_limits.consistency",
                format!("{other:?} is not exact or approximate"),
            );
            Consistency::Exact
        }
    };
    RateStore::Redis(RedisStore {
        url: Secret(url.clone()),
        shown,
        password: password.map(Secret),
        timeout,
        ca_pem,
        on_error,
        key_prefix: raw
            .key_prefix
            .clone()
            .unwrap_or_else(|| "portcullis:rl:".to_owned()),
        consistency,
    })
}

fn compile_policy(
    path: &str,
    name: &str,
    rp: RawRatePolicy,
    ctx: &mut Ctx<'_>,
) -> Option<RateLimitPolicy> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        ctx.err(
            path,
            "a policy name must be letters, digits, '-' or '_' (it is a metric label and a header token)",
        );
    }
    let (rate, unit) = match (&rp.rate, &rp.tokens) {
        (Some(rate), None) => (
            parse_rate(rate).map_err(|e| ctx.err(format!("{path}.rate"), e)),
            LimitUnit::Requests,
        ),
        (None, Some(tokens)) => (
            parse_rate(tokens).map_err(|e| ctx.err(format!("{path}.tokens"), e)),
            LimitUnit::Tokens,
        ),
        (Some(_), Some(_)) => {
            ctx.err(
                path,
                "set rate (requests per window) or tokens (AI tokens per window), not both",
            );
            (Err(()), LimitUnit::Requests)
        }
        (None, None) => {
            ctx.err(
                path,
                "set rate (requests per window, e.g. 600/min) or tokens (AI tokens per window, e.g. 100000/h)",
            );
            (Err(()), LimitUnit::Requests)
        }
    };
    let burst = match rp.burst {
        None => None,
        Some(b) if b >= 1 && b <= i64::from(u32::MAX) => u32::try_from(b).ok(),
        Some(b) => {
            ctx.err(
                format!("{path}.burst"),
                format!("{b} is not a positive number of requests"),
            );
            None
        }
    };
    if rp.key.is_empty() {
        ctx.err(
            format!("{path}.key"),
            "name what the limit is kept per: a list of ip, route, client, client:<claim>, header:<name> or model",
        );
    }
    let mut key = Vec::new();
    for (i, part) in rp.key.iter().enumerate() {
        match parse_key_part(part) {
            Ok(p) if key.contains(&p) => ctx.err(
                format!("{path}.key[{i}]"),
                format!("{part:?} is listed twice"),
            ),
            Ok(p) => key.push(p),
            Err(e) => ctx.err(format!("{path}.key[{i}]"), e),
        }
    }
    let mode = match rp.mode.as_deref() {
        None | Some("enforce") => LimitMode::Enforce,
        Some("report") => LimitMode::Report,
        Some(other) => {
            ctx.err(
                format!("{path}.mode"),
                format!("{other:?} is not enforce or report"),
            );
            LimitMode::Enforce
        }
    };
    let (count, window) = rate.ok()?;
    Some(RateLimitPolicy {
        name: name.to_owned(),
        count,
        window,
        burst: burst.unwrap_or(count),
        key,
        mode,
        unit,
    })
}

/// `100/s`, `600/min`, `10000/h`, `5/10s`, `1000/day`: requests per window.
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let usage = "write it as requests/window: 100/s, 600/min, 10000/h, 5/10s";
    let (count, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a rate; {usage}"))?;
    let count: i64 = count.trim().parse().map_err(|_| {
        format!(
            "{text:?}: {:?} is not a whole number; {usage}",
            count.trim()
        )
    })?;
    if count < 1 {
        return Err(format!(
            "{text:?}: the rate must allow at least 1 request (to refuse every request, use ip rules or remove the route)"
        ));
    }
    let count = u32::try_from(count).map_err(|_| format!("{text:?}: {count} is too large"))?;
    let window = match window.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => parse_duration(other).map_err(|e| format!("{text:?}: {e}"))?,
    };
    if window.is_zero() {
        return Err(format!("{text:?}: the window must be longer than zero"));
    }
    if window / count < Duration::from_nanos(1) {
        return Err(format!("{text:?} is faster than one request a nanosecond"));
    }
    Ok((count, window))
}

fn parse_key_part(text: &str) -> Result<RateKeyPart, String> {
    let kinds = "use ip, route, client, client:<claim>, header:<name> or model";
    match text.split_once(':') {
        None => match text {
            "ip" => Ok(RateKeyPart::ClientIp),
            "route" => Ok(RateKeyPart::Route),
            "model" => Ok(RateKeyPart::Model),
            "client" => Ok(RateKeyPart::Client {
                claims: DEFAULT_CLIENT_CLAIMS.map(str::to_owned).to_vec(),
            }),
            other => Err(format!("unknown key kind {other:?}; {kinds}")),
        },
        Some(("client", claim)) if !claim.is_empty() => Ok(RateKeyPart::Client {
            claims: vec![claim.to_owned()],
        }),
        Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
            .map(RateKeyPart::Header)
            .map_err(|_| format!("{name:?} is not a header name")),
        Some(_) => Err(format!("unknown key kind {text:?}; {kinds}")),
    }
}

/// Resolves a list of policy names written at `path`.
pub(crate) fn resolve(
    path: &str,
    names: &[String],
    policies: &BTreeMap<String, Arc<RateLimitPolicy>>,
    ctx: &mut Ctx<'_>,
) -> Vec<Arc<RateLimitPolicy>> {
    let mut out: Vec<Arc<RateLimitPolicy>> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match policies.get(name) {
            Some(p) if out.iter().any(|q| q.name == p.name) => {
                ctx.err(format!("{path}[{i}]"), format!("{name:?} is listed twice"))
            }
            Some(p) => out.push(Arc::clone(p)),
            None => {
                let hint = did_you_mean(name, policies.keys().map(String::as_str));
                ctx.err(
                    format!("{path}[{i}]"),
                    format!("unknown rate-limit policy {name:?}{hint}"),
                );
            }
        }
    }
    out
}

/// The policies of a route: its own list, or the defaults. A public route has
/// no verified client: a policy keyed by the client is an error when the route
/// names it, and is left out when it comes from the defaults.
pub(crate) fn route_policies(
    path: &str,
    own: Option<Vec<String>>,
    auth: &RouteAuth,
    limits: &RateLimits,
    ctx: &mut Ctx<'_>,
) -> Vec<Arc<RateLimitPolicy>> {
    let public = matches!(auth, RouteAuth::Public);
    match own {
        Some(names) => {
            let list = resolve(path, &names, &limits.policies, ctx);
            for (i, p) in list.iter().enumerate() {
                if public && p.needs_client() {
                    ctx.err(
                        format!("{path}[{i}]"),
                        format!(
                            "policy {:?} is kept per client, and a public route has no verified client; key it by ip or header instead",
                            p.name
                        ),
                    );
                }
            }
            list
        }
        None => limits
            .default
            .iter()
            .filter(|p| !(public && p.needs_client()))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(
            parse_rate("600/min").unwrap(),
            (600, Duration::from_secs(60))
        );
        assert_eq!(parse_rate("5/10s").unwrap(), (5, Duration::from_secs(10)));
        assert_eq!(
            parse_rate(" 7 / hour").unwrap(),
            (7, Duration::from_secs(3600))
        );
        assert_eq!(
            parse_rate("1/day").unwrap(),
            (1, Duration::from_secs(86_400))
        );
        for bad in [
            "0/s",
            "-5/s",
            "100",
            "x/s",
            "10/fortnight",
            "10/0s",
            "1.5/s",
            "",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_parts() {
        assert_eq!(parse_key_part("ip").unwrap(), RateKeyPart::ClientIp);
        assert_eq!(parse_key_part("route").unwrap(), RateKeyPart::Route);
        assert_eq!(
            parse_key_part("client:tenant").unwrap(),
            RateKeyPart::Client {
                claims: vec!["tenant".into()]
            }
        );
        assert_eq!(
            parse_key_part("header:X-Api-Key").unwrap(),
            RateKeyPart::Header(HeaderName::from_static("x-api-key"))
        );
        for bad in ["user", "header:", "header:bad name", "client:", "cookie:x"] {
            assert!(parse_key_part(bad).is_err(), "{bad:?}");
        }
    }
}
