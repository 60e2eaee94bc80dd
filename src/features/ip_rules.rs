//! `ip_rules`: which client addresses a route serves. `deny` wins; when `allow` is not
//! empty, only the addresses it lists pass. Checked on the client address as the
//! trusted-proxy logic resolved it (`src/auth/client_ip.rs`), an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) counting as its IPv4 address, before identification; a refusal is a
//! 403 `ip_denied` that does not say which list refused.
//!
//! Each list is compiled once per config snapshot into sorted, merged, non-overlapping
//! address ranges (the networks aggregated by `ipnet`), so a lookup is a binary search:
//! thousands of prefixes cost a dozen comparisons.

use crate::pipeline::{Answer, Facts, Hooks, Refusal, Step};
use crate::problems::Problems;
use ipnet::{IpNet, Ipv4Net};
use pingora::proxy::Session;
use serde::Deserialize;
use std::net::IpAddr;

/// The `ip_rules:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpRules {
    /// Addresses or networks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`) that alone may
    /// pass; empty or absent: every address not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses or networks that never pass, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A route's compiled address rules.
#[derive(Debug, Clone, PartialEq)]
pub struct IpRules {
    /// `None`: no allow list, every address not denied passes.
    allow: Option<Ranges>,
    deny: Ranges,
}

/// A set of addresses as ascending, disjoint inclusive ranges.
#[derive(Debug, Clone, PartialEq)]
struct Ranges {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl Ranges {
    /// The union of `nets`: `ipnet` aggregates them into the fewest disjoint networks, in
    /// ascending order, whose first and last addresses are the ranges.
    fn new(nets: Vec<IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => v4.push((n.network().to_bits(), n.broadcast().to_bits())),
                IpNet::V6(n) => v6.push((n.network().to_bits(), n.broadcast().to_bits())),
            }
        }
        Ranges {
            v4: v4.into_boxed_slice(),
            v6: v6.into_boxed_slice(),
        }
    }

    /// Whether `ip` (canonical: IPv4-mapped addresses already IPv4) is in the set.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => within(&self.v4, v4.to_bits()),
            IpAddr::V6(v6) => within(&self.v6, v6.to_bits()),
        }
    }
}

/// Whether `x` falls in one of the ascending, disjoint inclusive `ranges`.
fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The ranges starting at or before `x`; only the last of them can hold it.
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && ranges[after - 1].1 >= x
}

/// Validates the section at `place`.
pub fn validate(raw: RawIpRules, place: &str, p: &mut Problems) -> Option<IpRules> {
    if raw.allow.is_empty() && raw.deny.is_empty() {
        p.push(
            place,
            "list addresses in allow, deny or both (or `false` to switch the server-wide default off)",
        );
        return None;
    }
    let allow = networks(&raw.allow, &format!("{place}.allow"), p);
    let deny = networks(&raw.deny, &format!("{place}.deny"), p);
    let (allow, deny) = (allow?, deny?);
    Some(IpRules {
        allow: (!allow.is_empty()).then(|| Ranges::new(allow)),
        deny: Ranges::new(deny),
    })
}

/// The networks of `entries`; `None` when one is bad, each problem reported at `place[i]`.
fn networks(entries: &[String], place: &str, p: &mut Problems) -> Option<Vec<IpNet>> {
    let mut nets = Some(Vec::with_capacity(entries.len()));
    for (i, entry) in entries.iter().enumerate() {
        match (network(entry), nets.as_mut()) {
            (Ok(net), Some(nets)) => nets.push(net),
            (Ok(_), None) => {}
            (Err(why), _) => {
                p.push(format!("{place}[{i}]"), why);
                nets = None;
            }
        }
    }
    nets
}

/// One entry: a CIDR network without host bits, or a single address. An IPv4-mapped IPv6
/// network (`::ffff:10.0.0.0/104`) is read as the IPv4 network it maps.
fn network(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    let net = match entry.parse::<IpNet>() {
        Ok(net) => {
            if net.trunc() != net {
                return Err(format!(
                    "{entry:?} has host bits set: write {} (or a single address)",
                    net.trunc()
                ));
            }
            net
        }
        Err(_) => match entry.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{entry:?} is not an IP address or a CIDR network (10.0.0.0/8, 2001:db8::/32)"
                ))
            }
        },
    };
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    })
}

impl IpRules {
    /// Whether a client at `ip` may use the route.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|allow| allow.contains(ip))
    }

    /// Whether a request whose client address is unknown may pass: only when there is no
    /// allow list. (On a TCP listener the peer's address is always known.)
    fn admits_unknown(&self) -> bool {
        self.allow.is_none()
    }
}

impl Step for IpRules {
    fn name(&self) -> &'static str {
        "ip_rules"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::default()
        }
    }

    fn request(&self, _session: &mut Session, facts: &Facts) -> Result<(), Answer> {
        let admitted = facts
            .client_ip
            .map_or_else(|| self.admits_unknown(), |ip| self.admits(ip));
        if admitted {
            return Ok(());
        }
        Err(Answer::Refuse(Refusal {
            status: 403,
            code: "ip_denied",
            message: "requests from this address are not allowed on this route".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> IpRules {
        let raw: RawIpRules = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let rules = validate(raw, "routes[0].ip_rules", &mut p);
        assert!(p.is_empty(), "{:?}", p.into_vec());
        rules.unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_an_allow_list_admits_only_its_addresses() {
        let r = rules("{allow: [10.0.0.0/8, '2001:db8::/32'], deny: [10.1.0.0/16, 10.2.3.4]}");
        assert!(r.admits(ip("10.9.9.9")));
        assert!(!r.admits(ip("10.1.2.3")));
        assert!(!r.admits(ip("10.2.3.4")));
        assert!(r.admits(ip("10.2.3.5")));
        assert!(!r.admits(ip("192.0.2.1")));
        assert!(r.admits(ip("2001:db8:ffff::1")));
        assert!(!r.admits(ip("2001:db9::1")));
        let deny_only = rules("{deny: [127.0.0.1/32]}");
        assert!(!deny_only.admits(ip("127.0.0.1")));
        assert!(deny_only.admits(ip("127.0.0.2")));
        assert!(deny_only.admits(ip("::1")));
        assert!(deny_only.admits_unknown());
        assert!(!r.admits_unknown());
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4_on_both_sides() {
        let r = rules("{allow: [10.0.0.0/8, '::ffff:192.0.2.0/120']}");
        assert!(r.admits(ip("::ffff:10.1.2.3")));
        assert!(r.admits(ip("192.0.2.200")));
        assert!(r.admits(ip("::ffff:192.0.2.1")));
        assert!(!r.admits(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn ranges_are_merged_and_searched_at_their_edges() {
        let r = rules(
            "{deny: [10.0.0.0/24, 10.0.1.0/24, 10.0.0.128/25, 0.0.0.0/1, 255.255.255.255, '::/0']}",
        );
        // 10.0.0.0/24 and 10.0.1.0/24 touch: one range; the /25 lies inside; 0.0.0.0/1
        // holds them all.
        assert_eq!(
            r.deny.v4.as_ref(),
            &[(0, u32::MAX >> 1), (u32::MAX, u32::MAX)]
        );
        assert_eq!(r.deny.v6.as_ref(), &[(0, u128::MAX)]);
        assert!(!r.admits(ip("127.255.255.255")));
        assert!(r.admits(ip("128.0.0.0")));
        assert!(r.admits(ip("255.255.255.254")));
        assert!(!r.admits(ip("255.255.255.255")));
        assert!(!r.admits(ip("2001:db8::1")));
        let sparse = rules("{allow: [10.0.0.0/24, 10.0.2.0/24, 10.0.4.7]}");
        assert_eq!(sparse.allow.as_ref().unwrap().v4.len(), 3);
        for (addr, admitted) in [
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.0.0.255", true),
            ("10.0.1.0", false),
            ("10.0.2.128", true),
            ("10.0.4.6", false),
            ("10.0.4.7", true),
            ("10.0.4.8", false),
        ] {
            assert_eq!(sparse.admits(ip(addr)), admitted, "{addr}");
        }
    }

    #[test]
    fn bad_entries_and_empty_sections_are_refused_with_their_place() {
        let mut p = Problems::default();
        assert!(validate(RawIpRules::default(), "defaults.ip_rules", &mut p).is_none());
        let raw: RawIpRules = serde_yaml::from_str(
            "{allow: [10.0.0.0/8, 'not an address'], deny: [1.2.3.4, 5.6.7.8, 10.0.0.1/8, '10.0.0.0/33']}",
        )
        .unwrap();
        assert!(validate(raw, "routes[1].ip_rules", &mut p).is_none());
        let problems = p.into_vec();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("defaults.ip_rules: "),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("routes[1].ip_rules.allow[1]: \"not an address\" is not"),
            "{problems:?}"
        );
        assert_eq!(
            problems[2],
            "routes[1].ip_rules.deny[2]: \"10.0.0.1/8\" has host bits set: write 10.0.0.0/8 \
             (or a single address)"
        );
        assert!(
            problems[3].starts_with("routes[1].ip_rules.deny[3]: "),
            "{problems:?}"
        );
    }
}
