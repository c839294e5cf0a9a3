//! Bearer extraction from Authorization values: never panics, and a token it
//! returns fits the size cap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Ok(token) = portcullis_policy::bearer::extract(values.iter().copied(), 8192) {
        assert!(token.len() <= 8192);
        assert!(!token.is_empty());
    }
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = portcullis_policy::bearer::extract_from_query(q, 8192);
        let _ = portcullis_policy::bearer::strip_query_token(q);
    }
});
