//! One authority per request: the host the route table matches is the host the
//! upstream is told about, whichever of `Host`, an absolute-form target or the
//! HTTP/2 `:authority` carried it.
//!
//! Rules (RFC 9112 §3.2, RFC 9113 §8.3.1), each refusal `host_invalid`:
//! - at most one `Host` field, and on HTTP/1.1 exactly one;
//! - a valid `host[:port]`: a DNS name (letters, digits, `-`, `.`, `_`), an IPv4
//!   address or a bracketed IPv6 literal, no userinfo (`user@host`), a port of at
//!   most 65535;
//! - an absolute-form target's authority (`GET http://a/ HTTP/1.1`), or the HTTP/2
//!   `:authority`, wins, and a `Host` sent beside it must name the same host and
//!   port (compared without regard to ASCII case).

use crate::reason::{Reason, Rejection};

/// The protocol a request came in on, as far as authority rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP/1.0 (and 0.9): `Host` optional.
    Http10,
    /// HTTP/1.1: `Host` required.
    Http11,
    /// HTTP/2 or HTTP/3: `:authority` (in the target) or `host`.
    Http2,
}

/// The request's one authority (`host[:port]`, as sent), or why there is none.
/// `hosts` are the `Host` field values; `target` is the request target's
/// authority (absolute form, or HTTP/2 `:authority`). An empty string means a
/// request with no authority at all (HTTP/1.0 without `Host`).
pub fn resolve<'a>(
    hosts: &[&'a [u8]],
    target: Option<&'a str>,
    framing: Framing,
) -> Result<&'a str, Rejection> {
    let host = match hosts {
        [] => None,
        [one] => Some(
            std::str::from_utf8(one)
                .map_err(|_| refuse("the Host header is not ASCII".to_owned()))?,
        ),
        _ => {
            return Err(refuse(format!(
                "{} Host headers; exactly one is allowed (RFC 9112 §3.2)",
                hosts.len()
            )));
        }
    };
    if let Some(h) = host {
        check(h, "Host header")?;
    }
    if let Some(t) = target {
        check(t, "request target's authority")?;
    }
    match (target, host) {
        (Some(t), Some(h)) if !same_authority(t, h) => Err(refuse(match framing {
            Framing::Http2 => "the :authority and the host header name different hosts".to_owned(),
            _ => "the absolute request target and the Host header name different hosts".to_owned(),
        })),
        (_, None) if framing == Framing::Http11 => Err(refuse(
            "no Host header; HTTP/1.1 requires one (RFC 9112 §3.2)".to_owned(),
        )),
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Ok(""),
    }
}

/// Checks `host[:port]`.
fn check(authority: &str, what: &str) -> Result<(), Rejection> {
    if authority.contains('@') {
        return Err(refuse(format!("the {what} has userinfo (`user@host`)")));
    }
    let (host, port) = split(authority);
    let valid_host = if let Some(literal) = host.strip_prefix('[') {
        literal
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !valid_host {
        return Err(refuse(format!(
            "the {what} is not a valid host (a DNS name, an IPv4 address or a bracketed IPv6 literal)"
        )));
    }
    if let Some(port) = port
        && !(port.is_empty() || (port.len() <= 5 && port.parse::<u16>().is_ok()))
    {
        return Err(refuse(format!("the {what} has an invalid port")));
    }
    Ok(())
}

/// `host` and `port` of `host[:port]` (`[v6]:port` included).
fn split(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let rest = &authority[end + 1..];
                (
                    &authority[..=end],
                    rest.strip_prefix(':')
                        .or(Some(rest).filter(|r| !r.is_empty())),
                )
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    }
}

fn same_authority(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn refuse(detail: String) -> Rejection {
    Rejection::new(Reason::HostInvalid, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_valid_authority() {
        let ok = |hosts: &[&str], target: Option<&str>, framing| {
            let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
            resolve(&hosts, target, framing).map(str::to_owned)
        };
        use Framing::*;
        assert_eq!(
            ok(&["api.example.com"], None, Http11).unwrap(),
            "api.example.com"
        );
        assert_eq!(
            ok(&["api.example.com:8443"], None, Http11).unwrap(),
            "api.example.com:8443"
        );
        assert_eq!(ok(&["[::1]:80"], None, Http11).unwrap(), "[::1]:80");
        assert_eq!(ok(&["127.0.0.1"], None, Http11).unwrap(), "127.0.0.1");
        assert_eq!(ok(&[], None, Http10).unwrap(), "");
        assert_eq!(ok(&[], Some("a.example"), Http2).unwrap(), "a.example");
        assert_eq!(
            ok(&["A.example"], Some("a.example"), Http2).unwrap(),
            "a.example"
        );
        assert_eq!(
            ok(&["a.example"], Some("a.example"), Http11).unwrap(),
            "a.example",
            "absolute form agreeing with Host"
        );
        assert!(
            ok(&[], Some("a.example"), Http11).is_err(),
            "HTTP/1.1 needs Host"
        );
        for (hosts, target, framing, why) in [
            (&["a", "b"][..], None, Http11, "2 Host headers"),
            (&["a", "a"][..], None, Http11, "2 Host headers"),
            (&[][..], None, Http11, "no Host header"),
            (&["user@a.example"][..], None, Http11, "userinfo"),
            (&["a.example:99999"][..], None, Http11, "invalid port"),
            (&["a.example:8x"][..], None, Http11, "invalid port"),
            (&["a b"][..], None, Http11, "not a valid host"),
            (&["a/b"][..], None, Http11, "not a valid host"),
            (&[""][..], None, Http11, "not a valid host"),
            (&["[::1"][..], None, Http11, "not a valid host"),
            (
                &["b.example"][..],
                Some("a.example"),
                Http11,
                "different hosts",
            ),
            (
                &["a.example:81"][..],
                Some("a.example"),
                Http11,
                "different hosts",
            ),
            (
                &["b.example"][..],
                Some("a.example"),
                Http2,
                ":authority and the host",
            ),
        ] {
            let err = ok(hosts, target, framing).unwrap_err();
            assert_eq!(err.reason, Reason::HostInvalid);
            assert!(
                err.detail.contains(why),
                "{hosts:?} {target:?}: {}",
                err.detail
            );
        }
    }
}
