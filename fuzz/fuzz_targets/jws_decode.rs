//! Compact JWS decoding (header and claims, before any signature check): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = portcullis_policy::jws::split(token);
        let _ = portcullis_policy::jws::decode(token);
    }
});
