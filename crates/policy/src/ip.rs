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
    /// A forwarding-header entry could not be parsed, so the client is unknown;
    /// `ip` is then the trusted hop that passed the entry on. `hop` counts entries
    /// from the right, starting at 1.
    Unparsable {
        /// The header the entry was in.
        header: ForwardingHeader,
        /// Its position from the right (1 is the last entry).
        hop: u16,
    },
}

/// The header a trusted proxy sets to name the client it forwards for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name as written in messages.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardingHeader::XForwardedFor => "X-Forwarded-For",
            ForwardingHeader::Forwarded => "Forwarded",
        }
    }
}

/// The resolved client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// The address policy decisions use.
    pub ip: IpAddr,
    /// Where it came from.
    pub source: IpSource,
}

impl IpRules {
    /// [`IpRules::check`] for a resolved client: a client whose address could not
    /// be read from a forwarding header is refused by any rule (fail closed),
    /// since it could be any address.
    pub fn check_client(&self, client: &ClientIp, scope: &str) -> Result<(), Rejection> {
        if let IpSource::Unparsable { header, hop } = client.source {
            if self.is_empty() {
                return Ok(());
            }
            return Err(Rejection::new(
                Reason::IpDenied,
                format!(
                    "client address unknown: {} entry {hop} from the right is not an IP address, \
                     so the {scope} IP rules cannot be applied",
                    header.name()
                ),
            ));
        }
        self.check(client.ip, scope)
    }
}

/// Resolves the client address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most entry of the header that proxy sets
/// (`X-Forwarded-For`, or `Forwarded` for the peers in `forwarded_proxies`) that
/// is not itself a trusted proxy. Entries may carry a port (`ip:port`,
/// `[v6]:port`) or quotes. An entry that still cannot be parsed makes the client
/// unknown ([`IpSource::Unparsable`]): nothing before it can be trusted, and the
/// proxy's own address must not stand in for the client.
pub fn resolve_client_ip<'a>(
    peer: IpAddr,
    x_forwarded_for: impl Iterator<Item = &'a [u8]>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    trusted: &CidrSet,
    forwarded_proxies: &CidrSet,
) -> ClientIp {
    let peer = normalise(peer);
    let untrusted_peer = ClientIp {
        ip: peer,
        source: IpSource::Peer,
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return untrusted_peer;
    }
    let header = if forwarded_proxies.contains(peer) {
        ForwardingHeader::Forwarded
    } else {
        ForwardingHeader::XForwardedFor
    };
    let entries: Vec<Option<IpAddr>> = match header {
        ForwardingHeader::XForwardedFor => x_forwarded_for
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|e| parse_node(trim(e)))
            .collect(),
        ForwardingHeader::Forwarded => forwarded
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(forwarded_for)
            .collect(),
    };
    let source = match header {
        ForwardingHeader::XForwardedFor => IpSource::XForwardedFor,
        ForwardingHeader::Forwarded => IpSource::Forwarded,
    };
    let mut client = untrusted_peer;
    for (i, entry) in entries.iter().rev().enumerate() {
        match entry {
            Some(ip) => {
                let ip = normalise(*ip);
                client = ClientIp { ip, source };
                if !trusted.contains(ip) {
                    break;
                }
            }
            None => {
                client.source = IpSource::Unparsable {
                    header,
                    hop: u16::try_from(i + 1).unwrap_or(u16::MAX),
                };
                break;
            }
        }
    }
    client
}

/// The `for=` node of one `Forwarded` element; `Some(None)` when it is there but
/// is not an address (`unknown`, an obfuscated `_id`, garbage).
fn forwarded_for(element: &[u8]) -> Option<Option<IpAddr>> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if !k.eq_ignore_ascii_case(b"for") {
            return None;
        }
        Some(parse_node(trim(&v[1..])))
    })
}

/// One node: `v4`, `v4:port`, `v6`, `[v6]`, `[v6]:port`, optionally in quotes.
fn parse_node(v: &[u8]) -> Option<IpAddr> {
    let v = v
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v);
    if let Some(rest) = v.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || is_port(after.strip_prefix(b":")?)) {
            return None;
        }
        return match parse_ip(&rest[..end])? {
            IpAddr::V6(a) => Some(IpAddr::V6(a)),
            IpAddr::V4(_) => None,
        };
    }
    if let Some(ip) = parse_ip(v) {
        return Some(ip);
    }
    // `v4:port` (a bare v6 has several colons and parsed above).
    let colon = v.iter().position(|&b| b == b':')?;
    let (host, port) = (&v[..colon], &v[colon + 1..]);
    match parse_ip(host)? {
        IpAddr::V4(a) if is_port(port) => Some(IpAddr::V4(a)),
        _ => None,
    }
}

fn is_port(p: &[u8]) -> bool {
    (1..=5).contains(&p.len())
        && p.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
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
        let forwarded_only = CidrSet::new(&nets(&["127.0.0.2/32"]));
        let xff = |v: &'static str| std::iter::once(v.as_bytes());
        let none = || std::iter::empty::<&[u8]>();
        let resolve = |peer: &str, x: &'static str, f: &'static str| {
            resolve_client_ip(
                ip(peer),
                xff(x).filter(|v| !v.is_empty()),
                xff(f).filter(|v| !v.is_empty()),
                &trusted,
                &forwarded_only,
            )
        };
        // untrusted peer: header ignored
        let c = resolve("203.0.113.9", "1.2.3.4", "");
        assert_eq!(
            c,
            ClientIp {
                ip: ip("203.0.113.9"),
                source: IpSource::Peer
            }
        );
        // trusted peer: right-most untrusted
        assert_eq!(
            resolve("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2", "").ip,
            ip("1.2.3.4")
        );
        // ports, brackets and quotes, as load balancers send them
        for (x, want) in [
            ("6.6.6.6, 1.2.3.4:5555", "1.2.3.4"),
            ("6.6.6.6, 127.0.0.9:5555", "6.6.6.6"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("\"1.2.3.4\"", "1.2.3.4"),
        ] {
            let c = resolve("127.0.0.1", x, "");
            assert_eq!((c.ip, c.source), (ip(want), IpSource::XForwardedFor), "{x}");
        }
        // an entry that cannot be parsed makes the client unknown, never the proxy
        for (x, hop) in [
            ("1.2.3.4, junk, 10.0.0.2", 2),
            ("unknown", 1),
            ("1.2.3.4:99999", 1),
            ("[1.2.3.4]:80", 1),
            ("1.2.3.4:80x", 1),
            ("10.0.0.3, ", 1),
        ] {
            let c = resolve("127.0.0.1", x, "");
            assert_eq!(
                c.source,
                IpSource::Unparsable {
                    header: ForwardingHeader::XForwardedFor,
                    hop
                },
                "{x}"
            );
            let rules = IpRules::new(&nets(&["0.0.0.0/0"]), &[]);
            let refusal = rules.check_client(&c, "route").unwrap_err();
            assert_eq!(refusal.reason, Reason::IpDenied);
            assert!(
                refusal
                    .detail
                    .contains(&format!("entry {hop} from the right")),
                "{refusal}"
            );
            assert!(
                IpRules::default().check_client(&c, "route").is_ok(),
                "no rule, no refusal"
            );
        }
        // a proxy that sets Forwarded: only Forwarded is read, a client's XFF is not
        let c = resolve(
            "127.0.0.2",
            "9.9.9.9",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        );
        assert_eq!(
            c,
            ClientIp {
                ip: ip("2001:db8::1"),
                source: IpSource::Forwarded
            }
        );
        let c = resolve("127.0.0.2", "9.9.9.9", "");
        assert_eq!(
            c.source,
            IpSource::Peer,
            "XFF is not read behind a Forwarded proxy"
        );
        let c = resolve("127.0.0.2", "", "for=_hidden");
        assert!(matches!(
            c.source,
            IpSource::Unparsable {
                header: ForwardingHeader::Forwarded,
                hop: 1
            }
        ));
        // and one that sets XFF: a client's Forwarded is not read
        let c = resolve("127.0.0.1", "", "for=9.9.9.9");
        assert_eq!(c.source, IpSource::Peer);
        let _ = none;
    }
}
