//! Who the client is, network-wise: the peer address, or the address a trusted reverse proxy
//! reports in `X-Forwarded-For`. Believing that header from anyone else would let a client
//! choose its own address, and with it escape throttling or frame another client.

use std::net::IpAddr;

/// Networks whose peers are reverse proxies Tessera trusts (`server.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses addresses and CIDR networks (`10.0.0.0/8`, `::1`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut networks = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (address, prefix) = match entry.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (entry, None),
            };
            let address: IpAddr = address.parse().map_err(|_| format!("`{entry}` is not an IP address or network"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{entry}` has a bad prefix length"))?,
            };
            networks.push((address, prefix));
        }
        Ok(Self(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_opt(&self, address: Option<IpAddr>) -> bool {
        address.is_some_and(|a| self.contains(a))
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|(network, prefix)| match (canonical(*network), address) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *prefix),
            _ => false,
        })
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the
    /// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (each proxy
    /// appends the address it saw, so everything left of that could be forged by the client).
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if self.is_empty() || !self.contains(peer) {
            return Some(peer);
        }
        let Some(header) = forwarded_for else { return Some(peer) };
        let mut client = peer;
        for hop in header.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(address) => {
                    client = address;
                    if !self.contains(address) {
                        break;
                    }
                }
                // An unreadable hop ends what can be believed.
                Err(_) => break,
            }
        }
        Some(client)
    }
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

fn prefix_eq(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if network[..whole] != address[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        network[whole] & mask == address[whole] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]).unwrap();
        assert!(proxies.contains(ip("10.200.3.4")));
        assert!(!proxies.contains(ip("11.0.0.1")));
        assert!(proxies.contains(ip("192.168.1.7")));
        assert!(!proxies.contains(ip("192.168.1.8")));
        assert!(proxies.contains(ip("fd12::1")));
        assert!(proxies.contains(ip("::ffff:10.1.1.1")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.internal"]).is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(proxies.client(Some(ip("203.0.113.9")), Some("1.2.3.4")), Some(ip("203.0.113.9")));
        // Through a trusted proxy: the address it saw.
        assert_eq!(proxies.client(Some(ip("10.0.0.2")), Some("198.51.100.1")), Some(ip("198.51.100.1")));
        // A client-forged prefix is skipped: the right-most untrusted hop wins.
        assert_eq!(proxies.client(Some(ip("10.0.0.2")), Some("6.6.6.6, 198.51.100.1, 10.0.0.3")), Some(ip("198.51.100.1")));
        // Garbage ends the walk at the last address believed.
        assert_eq!(proxies.client(Some(ip("10.0.0.2")), Some("nonsense")), Some(ip("10.0.0.2")));
        // Several header lines are one list, and a client's garbage left of the proxy's hop
        // does not matter.
        assert_eq!(proxies.client(Some(ip("10.0.0.2")), Some("6.6.6.6\u{fffd}junk,198.51.100.9")), Some(ip("198.51.100.9")));
        // No proxies configured: the header never counts.
        assert_eq!(TrustedProxies::default().client(Some(ip("10.0.0.2")), Some("1.1.1.1")), Some(ip("10.0.0.2")));
    }
}
