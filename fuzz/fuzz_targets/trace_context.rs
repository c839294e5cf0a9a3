//! W3C `traceparent` / `tracestate` from a client: never panics; a continued
//! trace is exactly the one sent (its trace id, lowercase hex, non-zero), a
//! passed-on `tracestate` stays within its bound, and what goes upstream is
//! always a valid version-00 `traceparent`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis_proxy::tracecontext::{MAX_TRACESTATE_BYTES, TRACEPARENT, TRACESTATE, TraceContext};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == b'\n');
    let traceparent = parts.next().unwrap_or_default();
    let tracestate = parts.next();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(traceparent) {
        headers.insert(&TRACEPARENT, v);
    }
    if let Some(ts) = tracestate
        && let Ok(v) = HeaderValue::from_bytes(ts)
    {
        headers.insert(&TRACESTATE, v);
    }
    let t = TraceContext::from_headers(&headers, true, 0.5);
    assert_ne!(t.trace_id, [0; 16]);
    assert_ne!(t.upstream_span_id, [0; 8]);
    if t.parent_id.is_some() {
        assert_eq!(&traceparent[3..35], t.trace_id_hex().as_bytes());
        assert_ne!(t.parent_id, Some([0; 8]));
    } else {
        assert!(t.tracestate.is_none());
    }
    if let Some(ts) = &t.tracestate {
        assert!(ts.len() <= MAX_TRACESTATE_BYTES);
    }
    let sent = t.traceparent();
    let sent = sent.to_str().expect("ASCII");
    assert_eq!(sent.len(), 55);
    assert!(sent.starts_with("00-"));
    assert!(
        sent.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    // What the gateway sends is itself accepted as a continued trace.
    let mut again = HeaderMap::new();
    again.insert(&TRACEPARENT, HeaderValue::from_str(sent).expect("header value"));
    let next = TraceContext::from_headers(&again, true, 0.0);
    assert_eq!(next.trace_id, t.trace_id);
    assert_eq!(next.parent_id, Some(t.upstream_span_id));
});
