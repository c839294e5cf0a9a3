//! Path canonicalisation: never panics, and whatever it accepts is canonical:
//! a fixed point that starts with `/` and has no dot segment, backslash or `//`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::path::{EmptySegments, EscapedSlashes, PathRules, Semicolons, canonicalise};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let rules = PathRules {
        escaped_slashes: if flags & 1 == 0 {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        },
        semicolons: if flags & 2 == 0 {
            Semicolons::Reject
        } else {
            Semicolons::Keep
        },
        empty_segments: if flags & 4 == 0 {
            EmptySegments::Merge
        } else {
            EmptySegments::Reject
        },
    };
    if let Ok(canonical) = canonicalise(path, &rules) {
        assert!(canonical.starts_with('/'), "{path:?} -> {canonical:?}");
        assert!(!canonical.contains('\\'), "{path:?} -> {canonical:?}");
        assert!(!canonical[1..].contains("//"), "{path:?} -> {canonical:?}");
        for segment in canonical.split('/') {
            let name = segment.split(';').next().unwrap_or(segment);
            assert!(name != "." && name != "..", "{path:?} -> {canonical:?}");
        }
        let again = canonicalise(&canonical, &rules).expect("a canonical path is accepted");
        assert_eq!(again, canonical, "not a fixed point: {path:?}");
    }
});
