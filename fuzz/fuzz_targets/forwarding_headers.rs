//! Client-address resolution from X-Forwarded-For and Forwarded: never panics, and
//! the address it names is the peer or an address the headers carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{CidrSet, IpSource, resolve_client_ip};

fuzz_target!(|data: &[u8]| {
    let trusted = CidrSet::new(&[
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ]);
    let forwarded_only = CidrSet::new(&["127.0.0.2/32".parse().unwrap()]);
    let (selector, rest) = data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let peer = if selector & 1 == 0 {
        [127, 0, 0, 1]
    } else {
        [127, 0, 0, 2]
    };
    let mut parts = rest.split(|&b| b == b'\n');
    let xff: Vec<&[u8]> = parts.next().into_iter().collect();
    let fwd: Vec<&[u8]> = parts.collect();
    let client = resolve_client_ip(
        std::net::IpAddr::from(peer),
        xff.iter().copied(),
        fwd.iter().copied(),
        &trusted,
        &forwarded_only,
    );
    if client.source == IpSource::Peer {
        assert_eq!(client.ip, std::net::IpAddr::from(peer));
    }
});
