//! Who the client is on the network. One forwarding header (`X-Forwarded-For` or
//! `Forwarded: for=`, as configured) is believed, and only when the connection comes from a
//! trusted proxy; then the chain is walked from the right and the first address that is not
//! a trusted proxy is the client.

use crate::config::ClientIpHeader;
use ipnet::{IpNet, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

pub use crate::config::DEFAULT_IPV6_PREFIX;

/// The network a client is counted as, by address-based limits and throttles: an IPv4
/// address as it is, an IPv6 address by its leading `ipv6_prefix` bits. Displays as
/// `203.0.113.9` or `2001:db8:1:2::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNetwork {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 network (host bits zeroed).
    V6(Ipv6Net),
}

impl ClientNetwork {
    /// The network of `ip`; a prefix above 128 counts as 128 (one address).
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientNetwork::V4(v4),
            IpAddr::V6(v6) => {
                // A prefix of at most 128 is always accepted; 128 is the whole address.
                let net = Ipv6Net::new(v6, ipv6_prefix.min(128)).unwrap_or_else(|_| v6.into());
                ClientNetwork::V6(net.trunc())
            }
        }
    }
}

impl fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientNetwork::V4(v4) => v4.fmt(f),
            ClientNetwork::V6(net) => net.fmt(f),
        }
    }
}

/// The configured trusted proxy networks, and the header they set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Proxies in `nets`, believed for `header` only.
    pub fn new(nets: Vec<IpNet>, header: ClientIpHeader) -> Self {
        TrustedProxies { nets, header }
    }

    /// The header these proxies are believed for.
    pub fn header(&self) -> ClientIpHeader {
        self.header
    }

    /// `true` when `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let chain: Vec<&str> = match self.header {
            ClientIpHeader::XForwardedFor => headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .collect(),
            ClientIpHeader::Forwarded => headers
                .get_all("forwarded")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect(),
        };
        let mut leftmost = peer;
        for hop in chain.iter().rev() {
            // An unparsable hop ends what we can believe: the last address we trusted stands.
            let Some(ip) = parse_hop(hop) else {
                return leftmost;
            };
            if !self.trusts(ip) {
                return ip;
            }
            leftmost = ip;
        }
        leftmost
    }
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> http::HeaderMap {
        let mut r = http::HeaderMap::new();
        for (k, v) in headers {
            r.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    fn trusted_for(header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies::new(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            header,
        )
    }

    fn trusted() -> TrustedProxies {
        trusted_for(ClientIpHeader::XForwardedFor)
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_prefix_and_ipv4_ones_are_not() {
        let of = |ip: &str, prefix| ClientNetwork::of(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(of("203.0.113.9", 64), "203.0.113.9");
        assert_eq!(of("::ffff:203.0.113.9", 64), "203.0.113.9");
        assert_eq!(of("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            of("2001:db8:1:2:aaaa::1", 64),
            of("2001:db8:1:2:ffff:ffff:ffff:ffff", 64)
        );
        assert_ne!(of("2001:db8:1:2::1", 64), of("2001:db8:1:3::1", 64));
        assert_eq!(of("2001:db8:1:2::1", 48), "2001:db8:1::/48");
        assert_eq!(of("2001:db8::1", 128), "2001:db8::1/128");
        assert_eq!(of("2001:db8::1", 200), "2001:db8::1/128");
        assert_eq!(of("::1", 0), "::/0");
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = trusted().client_ip(
            "203.0.113.5".parse().unwrap(),
            &req(&[("x-forwarded-for", "1.1.1.1")]),
        );
        assert_eq!(ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let r = req(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        let ip = trusted().client_ip("10.0.0.1".parse().unwrap(), &r);
        assert_eq!(
            ip,
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "6.6.6.6 is client-supplied and not believed"
        );
    }

    #[test]
    fn forwarded_header_and_ipv6_are_understood() {
        let r = req(&[(
            "forwarded",
            "for=198.51.100.9;proto=https, for=\"[2001:db8::5]:443\"",
        )]);
        let forwarded = trusted_for(ClientIpHeader::Forwarded);
        let ip = forwarded.client_ip("::ffff:10.0.0.1".parse().unwrap(), &r);
        assert_eq!(ip, "198.51.100.9".parse::<IpAddr>().unwrap());
        // Only the configured header is believed.
        let ip = trusted().client_ip("10.0.0.1".parse().unwrap(), &r);
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        let xff = req(&[("x-forwarded-for", "6.6.6.6")]);
        let ip = forwarded.client_ip("10.0.0.1".parse().unwrap(), &xff);
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        let r = req(&[("x-forwarded-for", "2001:db9::1")]);
        let ip = trusted().client_ip("2001:db8::2".parse().unwrap(), &r);
        assert_eq!(ip, "2001:db9::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn all_trusted_chain_yields_the_leftmost() {
        let r = req(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(
            trusted().client_ip("10.0.0.1".parse().unwrap(), &r),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        let r = req(&[("x-forwarded-for", "garbage, 10.8.8.8")]);
        assert_eq!(
            trusted().client_ip("10.0.0.1".parse().unwrap(), &r),
            "10.8.8.8".parse::<IpAddr>().unwrap()
        );
    }
}
