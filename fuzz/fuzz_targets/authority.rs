//! Host / absolute-form / :authority resolution: never panics, and an accepted
//! authority is one of the values it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::authority::{Framing, resolve};

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let framing = match selector % 3 {
        0 => Framing::Http10,
        1 => Framing::Http11,
        _ => Framing::Http2,
    };
    let mut parts = rest.split(|&b| b == b'\n');
    let target = parts
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| !t.is_empty());
    let hosts: Vec<&[u8]> = parts.take(3).collect();
    if let Ok(authority) = resolve(&hosts, target, framing) {
        assert!(hosts.len() <= 1);
        assert!(!authority.contains('@'));
        assert!(
            authority.is_empty()
                || Some(authority) == target
                || hosts.first().is_some_and(|h| *h == authority.as_bytes())
        );
    }
});
