//! gateway.yaml parsing and validation: never panics; a refusal always names at
//! least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No environment and a base folder with nothing in it: file references fail
    // cleanly instead of reading the machine's files.
    let base = std::path::Path::new("/nonexistent-portcullis-fuzz");
    if let Err(e) = portcullis_config::load_str(text, "fuzz.yaml", base, &|_| None) {
        assert!(!e.problems.is_empty());
    }
});
