//! What an audit event may say: secrets are removed before anything is hashed or stored, and
//! emails and client addresses are masked when the tenant asks for it. The rules are applied
//! while an event is written as canonical JSON (`chain::canonical_json_redacted`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const SECRET_MARKERS: [&str; 8] = ["password", "secret", "token", "authorization", "api_key", "apikey", "credential", "private"];

#[derive(Debug, Clone, Copy, Default)]
pub struct MaskPolicy {
    pub emails: bool,
    pub client_addr: bool,
}

pub fn is_secret_key(key: &str) -> bool {
    let key = key.as_bytes();
    SECRET_MARKERS.iter().any(|m| key.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m.as_bytes())))
}

pub(crate) fn looks_like_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !s.contains(' '))
}

/// `alice@example.com` → `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// IPv4 keeps its /24, IPv6 its /48: `10.1.2.3` → `10.1.2.0`.
pub(crate) fn mask_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// The masked address as recorded.
pub fn mask_addr(addr: IpAddr) -> String {
    let mut out = Vec::with_capacity(24);
    write_addr(&mut out, addr, true);
    String::from_utf8(out).expect("an address is ASCII")
}

/// The address as recorded (masked if asked), unquoted, straight into `out`.
pub(crate) fn write_addr(out: &mut Vec<u8>, addr: IpAddr, mask: bool) {
    use std::io::Write;
    let written = match (mask_ip(addr), mask) {
        (_, false) => write!(out, "{addr}"),
        (IpAddr::V4(masked), true) => write!(out, "{masked}"),
        // Written out rather than displayed: `Ipv6Addr` would shorten `0:0:1::` to `::1:0:0:0:0:0`.
        (IpAddr::V6(masked), true) => {
            let s = masked.segments();
            write!(out, "{:x}:{:x}:{:x}::", s[0], s[1], s[2])
        }
    };
    written.expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked_to_their_network() {
        assert_eq!(mask_addr("10.1.2.3".parse().unwrap()), "10.1.2.0");
        assert_eq!(mask_addr("2001:db8:1:2::5".parse().unwrap()), "2001:db8:1::");
        assert_eq!(mask_addr("::1".parse().unwrap()), "0:0:0::");
        let masked = mask_ip("10.1.2.3".parse().unwrap());
        assert_eq!(
            (masked, mask_addr(masked)),
            ("10.1.2.0".parse().unwrap(), "10.1.2.0".to_owned()),
            "masking twice changes nothing"
        );
    }
}
