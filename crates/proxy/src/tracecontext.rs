//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): a client's
//! `traceparent` (and `tracestate`) continued when it is well formed and from a
//! source `tracing.accept_traceparent` allows, a new trace started otherwise; the
//! upstream receives the gateway's own span as the parent. A malformed
//! `traceparent` is never an error: it is ignored and a new trace begins (spec
//! §3.2.2.2: a vendor must not fail the request).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header (a static name: looking a `&str` up parses it).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The longest `tracestate` passed on (the spec asks vendors to carry at least
/// 512 characters); a longer one is dropped rather than cut mid-entry.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// The trace a request belongs to, and the gateway's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The client's span that called the gateway, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// The gateway's client span of the upstream exchange: the upstream's parent.
    pub upstream_span_id: [u8; 8],
    /// The trace flags (bit 0: sampled), continued from the parent.
    pub flags: u8,
    /// The client's `tracestate`, passed on with a continued trace.
    pub tracestate: Option<HeaderValue>,
    /// Why a `traceparent` that was sent was not continued, if it was not.
    pub ignored: Option<&'static str>,
    /// Whether the client sent a `tracestate` (removed when not passed on).
    pub client_tracestate: bool,
}

impl TraceContext {
    /// The trace of a request with `headers`; `accept` says whether the sender
    /// may continue a trace. A continued trace keeps its parent's sampling
    /// decision; a new one is sampled with probability `sample_ratio`.
    pub fn from_headers(headers: &HeaderMap, accept: bool, sample_ratio: f64) -> TraceContext {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let (first, second) = (values.next(), values.next());
        let parsed = match (first, second) {
            (None, _) => Err(None),
            (Some(_), _) if !accept => Err(Some("not from a trusted proxy")),
            (Some(_), Some(_)) => Err(Some("more than one traceparent header")),
            (Some(v), None) => parse_traceparent(v.as_bytes()).map_err(Some),
        };
        let client_tracestate = headers.contains_key(&TRACESTATE);
        match parsed {
            Ok((trace_id, parent_id, flags)) => {
                let tracestate = tracestate(headers);
                let (span_id, upstream_span_id) = new_span_ids();
                TraceContext {
                    trace_id,
                    parent_id: Some(parent_id),
                    span_id,
                    upstream_span_id,
                    flags,
                    tracestate,
                    ignored: None,
                    client_tracestate,
                }
            }
            Err(ignored) => {
                let (span_id, upstream_span_id) = new_span_ids();
                TraceContext {
                    trace_id: new_trace_id(),
                    parent_id: None,
                    span_id,
                    upstream_span_id,
                    flags: u8::from(sample_ratio > 0.0 && draw_f64() < sample_ratio),
                    tracestate: None,
                    ignored,
                    client_tracestate,
                }
            }
        }
    }

    /// `traceparent` for the upstream: this trace, the gateway's upstream
    /// (client) span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        crate::headers::hex_into(&self.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        crate::headers::hex_into(&self.upstream_span_id, &mut buf[36..52]);
        buf[52] = b'-';
        crate::headers::hex_into(&[self.flags], &mut buf[53..55]);
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as 32 lowercase hex digits (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        let mut buf = [0u8; 32];
        crate::headers::hex_into(&self.trace_id, &mut buf);
        buf.iter().map(|&b| char::from(b)).collect()
    }

    /// Whether the trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, per §3.2.2. Version `00` is
/// exactly 55 bytes; a later version (not `ff`) may append `-…`, read as `00`.
fn parse_traceparent(v: &[u8]) -> Result<([u8; 16], [u8; 8], u8), &'static str> {
    if v.len() < 55 {
        return Err("traceparent is too short");
    }
    let version = hex_byte(&v[0..2]).ok_or("traceparent version is not hex")?;
    if version == 0xff {
        return Err("traceparent version ff is invalid");
    }
    if (version == 0 && v.len() != 55) || (version != 0 && v.len() > 55 && v[55] != b'-') {
        return Err("traceparent has the wrong length");
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err("traceparent fields are not separated by dashes");
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i]).ok_or("trace-id is not lowercase hex")?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i]).ok_or("parent-id is not lowercase hex")?;
    }
    let flags = hex_byte(&v[53..55]).ok_or("trace-flags are not hex")?;
    if trace_id == [0; 16] {
        return Err("trace-id is all zeros");
    }
    if parent_id == [0; 8] {
        return Err("parent-id is all zeros");
    }
    Ok((trace_id, parent_id, flags))
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// The client's `tracestate`, when one short enough was sent (several header
/// lines are one list, RFC 9110 §5.3; joined they must fit the bound).
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    match values.next() {
        None if first.len() <= MAX_TRACESTATE_BYTES => Some(first.clone()),
        None => None,
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.extend_from_slice(b",");
                joined.extend_from_slice(v.as_bytes());
                if joined.len() > MAX_TRACESTATE_BYTES {
                    return None;
                }
            }
            HeaderValue::from_bytes(&joined).ok()
        }
    }
}

thread_local! {
    /// Ids need to be unique and unguessable enough, not secret: a fast
    /// generator per thread, seeded from the OS-seeded one (as the
    /// OpenTelemetry SDK's own id generator does).
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_rng(&mut rand::rng()));
}

fn draw_u128() -> u128 {
    IDS.with(|r| rand::Rng::random(&mut *r.borrow_mut()))
}

fn draw_f64() -> f64 {
    IDS.with(|r| rand::Rng::random(&mut *r.borrow_mut()))
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = draw_u128();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Two non-zero span ids from one draw of the thread's generator.
fn new_span_ids() -> ([u8; 8], [u8; 8]) {
    loop {
        let draw = draw_u128();
        let (a, b) = ((draw >> 64) as u64, draw as u64);
        if a != 0 && b != 0 {
            return (a.to_be_bytes(), b.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_the_gateway_as_the_new_parent() {
        let t = TraceContext::from_headers(
            &headers(&[
                (TRACEPARENT.as_str(), GOOD),
                (TRACESTATE.as_str(), "congo=t61rcWkgMzE"),
            ]),
            true,
            0.0,
        );
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(t.sampled());
        assert_eq!(t.tracestate.as_ref().unwrap(), "congo=t61rcWkgMzE");
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "the gateway's own span");
        assert!(parse_traceparent(out.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_or_unaccepted_traceparents_start_a_new_trace() {
        for (bad, why) in [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                "too short",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lowercase",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "length",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "dashes",
            ),
        ] {
            let t = TraceContext::from_headers(
                &headers(&[(TRACEPARENT.as_str(), bad), (TRACESTATE.as_str(), "a=b")]),
                true,
                0.0,
            );
            assert_eq!(t.parent_id, None, "{bad}");
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(
                t.tracestate.is_none(),
                "no tracestate without its traceparent"
            );
            assert!(t.ignored.unwrap().contains(why), "{bad}: {:?}", t.ignored);
            assert!(!t.sampled());
        }
        let twice = TraceContext::from_headers(
            &headers(&[(TRACEPARENT.as_str(), GOOD), (TRACEPARENT.as_str(), GOOD)]),
            true,
            0.0,
        );
        assert_eq!(twice.parent_id, None);
        let untrusted =
            TraceContext::from_headers(&headers(&[(TRACEPARENT.as_str(), GOOD)]), false, 0.0);
        assert_eq!(untrusted.parent_id, None);
        assert_eq!(untrusted.ignored, Some("not from a trusted proxy"));
        // A later version with more fields is read as version 00.
        let future = format!("01-{}-extra", &GOOD[3..]);
        let t = TraceContext::from_headers(&headers(&[(TRACEPARENT.as_str(), &future)]), true, 0.0);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn new_traces_are_sampled_by_the_ratio_and_continued_ones_by_their_parent() {
        let all = TraceContext::from_headers(&HeaderMap::new(), true, 1.0);
        assert!(all.sampled());
        let none = TraceContext::from_headers(&HeaderMap::new(), true, 0.0);
        assert!(!none.sampled());
        let unsampled_parent = GOOD.replace("-01", "-00");
        let t = TraceContext::from_headers(
            &headers(&[(TRACEPARENT.as_str(), &unsampled_parent)]),
            true,
            1.0,
        );
        assert!(!t.sampled(), "the parent decided");
        let t = TraceContext::from_headers(&headers(&[(TRACEPARENT.as_str(), GOOD)]), true, 0.0);
        assert!(t.sampled(), "the parent decided");
    }

    #[test]
    fn an_oversized_tracestate_is_dropped_and_split_ones_are_joined() {
        let long = format!("a={}", "x".repeat(600));
        let t = TraceContext::from_headers(
            &headers(&[(TRACEPARENT.as_str(), GOOD), (TRACESTATE.as_str(), &long)]),
            true,
            0.0,
        );
        assert!(t.tracestate.is_none());
        let t = TraceContext::from_headers(
            &headers(&[
                (TRACEPARENT.as_str(), GOOD),
                (TRACESTATE.as_str(), "a=1"),
                (TRACESTATE.as_str(), "b=2"),
            ]),
            true,
            0.0,
        );
        assert_eq!(t.tracestate.unwrap(), "a=1,b=2");
        let fresh = TraceContext::from_headers(&HeaderMap::new(), true, 0.0);
        assert_eq!(fresh.ignored, None);
        assert_eq!(fresh.trace_id_hex().len(), 32);
    }
}
