//! Client address resolution and CIDR allow/deny rules.
//!
//! [`CidrSet`] merges networks into sorted, disjoint intervals, so a lookup is one
//! binary search whatever the number of CIDRs. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) are normalised to IPv4 everywhere.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::reason::{Reason, Rejection};

/// A set of networks with logarithmic membership tests.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    nets: Vec<IpNet>,
}

impl CidrSet {
    /// Builds the set from networks (any order, overlaps allowed).
    pub fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match normalise_net(*net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        CidrSet {
            v4: merge(v4),
            v6: merge(v6),
            nets: nets.to_vec(),
        }
    }

    /// Whether `ip` falls in any network of the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match normalise(ip) {
            IpAddr::V4(a) => hit(&self.v4, u32::from(a)),
            IpAddr::V6(a) => hit(&self.v6, u128::from(a)),
        }
    }

    /// The first configured network that contains `ip`, for explanations (linear).
    pub fn matching(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = normalise(ip);
        self.nets
            .iter()
            .copied()
            .find(|n| normalise_net(*n).contains(&ip))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks as configured.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.succ() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn hit<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let idx = ranges.partition_point(|&(start, _)| start <= x);
    idx > 0 && ranges[idx - 1].1 >= x
}

mod num_like {
    /// Saturating successor, for merging adjacent ranges.
    pub trait Succ {
        fn succ(self) -> Self;
    }
    impl Succ for u32 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// Maps an IPv4-mapped IPv6 address to IPv4.
pub fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn normalise_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.network().to_ipv4_mapped()
        && n.prefix_len() >= 96
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    net
}

/// Allow and deny lists. Deny wins; an empty allow list allows every address.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    /// Allowed networks (empty: all).
    pub allow: CidrSet,
    /// Denied networks.
    pub deny: CidrSet,
}

/// Which rule decided about an address, for logs and `diagnose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpVerdict {
    /// No list applies, or the allow list contains the address.
    Allowed(Option<IpNet>),
    /// The deny list contains the address (this network).
    Denied(IpNet),
    /// The allow list is non-empty and does not contain the address.
    NotAllowed,
}

impl IpRules {
    /// Builds rules from allow and deny networks.
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        IpRules {
            allow: CidrSet::new(allow),
            deny: CidrSet::new(deny),
        }
    }

    /// Whether there is any rule at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The hot-path check: deny wins, then the allow list if any.
    pub fn check(&self, ip: IpAddr, scope: &str) -> Result<(), Rejection> {
        if self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip)) {
            return Err(self.explain_rejection(ip, scope));
        }
        Ok(())
    }

    /// Names the rule that decides about `ip`.
    pub fn verdict(&self, ip: IpAddr) -> IpVerdict {
        if let Some(net) = self.deny.matching(ip) {
            return IpVerdict::Denied(net);
        }
        if self.allow.is_empty() {
            return IpVerdict::Allowed(None);
        }
        match self.allow.matching(ip) {
            Some(net) => IpVerdict::Allowed(Some(net)),
            None => IpVerdict::NotAllowed,
        }
    }

    fn explain_rejection(&self, ip: IpAddr, scope: &str) -> Rejection {
        let ip = normalise(ip);
        let detail = match self.verdict(ip) {
            IpVerdict::Denied(net) => format!("client {ip} is in the {scope} deny list ({net})"),
            _ => format!("client {ip} is not in the {scope} allow list"),
        };
        Rejection::new(Reason::IpDenied, detail)
    }
}

/// Where the client address was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    /// The TCP peer (untrusted peer, or no forwarding header).
    Peer,
    /// `X-Forwarded-For`, read from the right past trusted proxies.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=`.
    Forwarded,
}

/// The resolved client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// The address policy decisions use.
    pub ip: IpAddr,
    /// Where it came from.
    pub source: IpSource,
}

/// Resolves the client address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` (else `Forwarded: for=`) entry that
/// is not a trusted proxy. An unparsable entry stops the walk: the hop that
/// appended it is then the client, since nothing before it can be trusted.
pub fn resolve_client_ip<'a>(
    peer: IpAddr,
    x_forwarded_for: impl Iterator<Item = &'a [u8]>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    trusted: &CidrSet,
) -> ClientIp {
    let peer = normalise(peer);
    let untrusted_peer = ClientIp {
        ip: peer,
        source: IpSource::Peer,
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return untrusted_peer;
    }
    let xff: Vec<&[u8]> = x_forwarded_for.collect();
    let (entries, source): (Vec<Option<IpAddr>>, IpSource) = if !xff.is_empty() {
        let list = xff
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|e| parse_ip(trim(e)))
            .collect();
        (list, IpSource::XForwardedFor)
    } else {
        let list: Vec<Option<IpAddr>> = forwarded
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(forwarded_for)
            .collect();
        if list.is_empty() {
            return untrusted_peer;
        }
        (list, IpSource::Forwarded)
    };
    let mut client = untrusted_peer;
    for entry in entries.iter().rev() {
        match entry {
            Some(ip) => {
                let ip = normalise(*ip);
                client = ClientIp { ip, source };
                if !trusted.contains(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

fn forwarded_for(element: &[u8]) -> Option<Option<IpAddr>> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if !k.eq_ignore_ascii_case(b"for") {
            return None;
        }
        let v = trim(&v[1..]);
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        // [v6]:port, [v6], v4:port, v4
        let host = if let Some(rest) = v.strip_prefix(b"[") {
            &rest[..rest.iter().position(|&b| b == b']').unwrap_or(rest.len())]
        } else {
            &v[..v.iter().position(|&b| b == b':').unwrap_or(v.len())]
        };
        Some(parse_ip(host))
    })
}

fn parse_ip(s: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_set_merges_and_finds() {
        let set = CidrSet::new(&nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.168.1.0/24",
            "192.168.2.0/24",
            "2001:db8::/32",
        ]));
        assert!(set.contains(ip("10.255.255.255")));
        assert!(set.contains(ip("192.168.2.7")));
        assert!(!set.contains(ip("192.168.3.1")));
        assert!(!set.contains(ip("9.255.255.255")));
        assert!(set.contains(ip("2001:db8::1")));
        assert!(set.contains(ip("::ffff:10.0.0.1")));
        assert!(!set.contains(ip("2001:db9::1")));
        assert_eq!(set.v4.len(), 2);
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = IpRules::new(&nets(&["10.0.0.0/8"]), &nets(&["10.9.0.0/16"]));
        assert!(rules.check(ip("10.1.1.1"), "route").is_ok());
        assert_eq!(
            rules.verdict(ip("10.9.1.1")),
            IpVerdict::Denied("10.9.0.0/16".parse().unwrap())
        );
        assert!(rules.check(ip("10.9.1.1"), "route").is_err());
        assert_eq!(rules.verdict(ip("11.0.0.1")), IpVerdict::NotAllowed);
        let mapped = IpRules::new(&nets(&["::ffff:10.0.0.0/104"]), &[]);
        assert!(mapped.check(ip("10.2.3.4"), "route").is_ok());
    }

    #[test]
    fn client_ip_resolution() {
        let trusted = CidrSet::new(&nets(&["127.0.0.0/8", "10.0.0.0/8"]));
        let xff = |v: &'static str| std::iter::once(v.as_bytes());
        let none = || std::iter::empty::<&[u8]>();
        // untrusted peer: header ignored
        let c = resolve_client_ip(ip("203.0.113.9"), xff("1.2.3.4"), none(), &trusted);
        assert_eq!(
            c,
            ClientIp {
                ip: ip("203.0.113.9"),
                source: IpSource::Peer
            }
        );
        // trusted peer: right-most untrusted
        let c = resolve_client_ip(
            ip("127.0.0.1"),
            xff("6.6.6.6, 1.2.3.4, 10.0.0.2"),
            none(),
            &trusted,
        );
        assert_eq!(c.ip, ip("1.2.3.4"));
        // garbage stops the walk at the last trusted hop
        let c = resolve_client_ip(
            ip("127.0.0.1"),
            xff("1.2.3.4, junk, 10.0.0.2"),
            none(),
            &trusted,
        );
        assert_eq!(c.ip, ip("10.0.0.2"));
        // Forwarded
        let fwd = std::iter::once(&b"for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""[..]);
        let c = resolve_client_ip(ip("127.0.0.1"), none(), fwd, &trusted);
        assert_eq!(
            c,
            ClientIp {
                ip: ip("2001:db8::1"),
                source: IpSource::Forwarded
            }
        );
    }
}
