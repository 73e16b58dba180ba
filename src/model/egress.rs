//! Where webhooks may be sent: the egress rules, applied to a URL when a subscription is
//! validated and to every resolved address before delivery connects (`deliver::egress`).
//!
//! Guarantees:
//! - by default only `https` URLs whose every connected address is public are reached: loopback,
//!   private (RFC 1918), link-local (including the 169.254.169.254 / fd00:ec2::254 cloud metadata
//!   endpoints), CGNAT, unique-local, unspecified, multicast, broadcast, reserved, documentation
//!   and benchmarking addresses are refused, also when written as IPv4-mapped, IPv4-compatible
//!   or NAT64 IPv6 addresses, and every IPv4-mapped, 6to4, Teredo and local-use NAT64 address;
//! - an IP-literal host is checked before any connection ([`EgressPolicy::check_url`]); a name
//!   is checked after resolution, by `deliver::egress::PolicyResolver`, which hands the
//!   connection pool (`deliver::connections`) only the allowed addresses: it connects to exactly
//!   what was checked, so a name that re-resolves to a private address (DNS rebinding) is still
//!   refused;
//! - `allow_private_networks = true` lifts the address checks; `allow_cidrs` lifts them for the
//!   listed networks only; `allow_http = true` permits plain `http`;
//! - error messages name the host, the reason and the setting that would allow it, and never
//!   contain userinfo, path or query (webhook URLs often carry their token in the path).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::Url;

const ALLOW_ADDR_HINT: &str =
    "set [delivery] allow_private_networks = true or add it to allow_cidrs";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("the webhook URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("the webhook URL has no host")]
    NoHost,
    #[error("{host}: scheme {scheme:?} is not supported; use https://")]
    Scheme { host: String, scheme: String },
    #[error("{host}: plain http is refused; use https or set [delivery] allow_http = true")]
    Http { host: String },
    #[error("{ip} is {reason}; {ALLOW_ADDR_HINT}")]
    Address { ip: IpAddr, reason: &'static str },
    #[error("{host}: {ip} is {reason}; {ALLOW_ADDR_HINT}")]
    HostAddress {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
    #[error(
        "{host} resolves only to refused addresses ({details}); set [delivery] \
         allow_private_networks = true or add them to allow_cidrs"
    )]
    AllRefused { host: String, details: String },
    #[error("{host}: DNS lookup failed: {reason}")]
    Dns { host: String, reason: String },
    #[error("{host}: DNS lookup returned no addresses")]
    NoAddresses { host: String },
}

impl EgressError {
    /// A DNS failure (the name did not resolve) rather than a refusal by the policy.
    pub fn is_dns(&self) -> bool {
        matches!(
            self,
            EgressError::Dns { .. } | EgressError::NoAddresses { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub allow_http: bool,
    pub allow_private_networks: bool,
    pub allow_cidrs: Vec<IpNet>,
}

/// The safe default: https only, public addresses only.
impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_http: false,
            allow_private_networks: false,
            allow_cidrs: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// Parses `url` and checks its scheme and, for an IP-literal host, its address.
    pub fn check_url(&self, url: &str) -> Result<Url, EgressError> {
        // url's own messages never echo the input, so they are safe to show.
        let parsed = Url::parse(url).map_err(|e| EgressError::InvalidUrl(e.to_string()))?;
        let host = host_label(&parsed).ok_or(EgressError::NoHost)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(EgressError::Http { host }),
            other => {
                return Err(EgressError::Scheme {
                    host,
                    scheme: other.to_string(),
                })
            }
        }
        if let Some(ip) = literal_ip(&parsed) {
            if let Err(reason) = self.classify(ip) {
                return Err(EgressError::HostAddress { host, ip, reason });
            }
        }
        Ok(parsed)
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        self.classify(ip)
            .map_err(|reason| EgressError::Address { ip, reason })
    }

    pub(crate) fn classify(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allow_private_networks {
            return Ok(());
        }
        let Some(reason) = refused_reason(ip) else {
            return Ok(());
        };
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        let listed = |a: IpAddr| self.allow_cidrs.iter().any(|n| n.contains(&a));
        if listed(ip) || embedded.is_some_and(listed) {
            return Ok(());
        }
        Err(reason)
    }
}

/// The host as an address when it is an IP literal. The URL parser has already normalised
/// every IPv4 spelling (decimal, hex, short forms) to dotted quads for http(s).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let h = url.host_str()?;
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// `host` or `host:port` of a URL, never userinfo, path or query.
pub fn host_label(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Why an address is not public, or None for a public one.
fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [169, 254, 169, 254] => "the cloud metadata address (link-local)",
        [0, ..] => "an unspecified (\"this network\") address",
        [127, ..] => "a loopback address",
        [10, ..] => "a private (RFC 1918) address",
        [172, b, ..] if (16..32).contains(&b) => "a private (RFC 1918) address",
        [192, 168, ..] => "a private (RFC 1918) address",
        [169, 254, ..] => "a link-local address",
        [100, b, ..] if (64..128).contains(&b) => "a carrier-grade NAT (100.64.0.0/10) address",
        [192, 0, 0, _] => "an IETF protocol assignment (192.0.0.0/24) address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        [198, b, ..] if b == 18 || b == 19 => "a benchmarking (198.18.0.0/15) address",
        [255, 255, 255, 255] => "the broadcast address",
        [a, ..] if (224..240).contains(&a) => "a multicast address",
        [a, ..] if a >= 240 => "a reserved (240.0.0.0/4) address",
        _ => return None,
    })
}

/// The IPv4 address carried inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
/// (::a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address: connecting to those reaches the IPv4 host.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s[..6] {
        // ::/96 minus :: and ::1, which have their own meaning.
        [0, 0, 0, 0, 0, 0] if s[6] != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0] => Some(tail),
        _ => None,
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that carry or tunnel to an IPv4 host walhook cannot see: a URL never needs them
    // (use the IPv4 address), and a resolver returning them may be steering around the checks.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).or(Some(
            "an IPv4-mapped (::ffff:0:0/96) address; use the IPv4 address",
        ));
    }
    match s {
        [0x2002, ..] => return Some("a 6to4 (2002::/16) address"),
        [0x2001, 0, ..] => return Some("a Teredo (2001::/32) address"),
        [0x64, 0xff9b, 1, ..] => return Some("a local-use NAT64 (64:ff9b:1::/48) address"),
        _ => {}
    }
    if let Some(v4) = embedded_v4(IpAddr::V6(ip)) {
        return v4_reason(v4);
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
        return Some("the cloud metadata address (unique-local)");
    }
    Some(match s[0] {
        a if a & 0xfe00 == 0xfc00 => "a unique-local (fc00::/7) address",
        a if a & 0xffc0 == 0xfe80 => "a link-local address",
        a if a & 0xffc0 == 0xfec0 => "a site-local (fec0::/10) address",
        a if a & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation (2001:db8::/32) address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only (100::/64) address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allow_http: false,
            allow_private_networks: false,
            allow_cidrs: Vec::new(),
        }
    }

    fn refused(ip: &str) -> bool {
        policy().check_ip(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn messages_name_reason_and_setting() {
        let e = policy().check_ip("127.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "127.0.0.1 is a loopback address; set [delivery] allow_private_networks = true or \
             add it to allow_cidrs"
        );
        let e = policy()
            .check_ip("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("cloud metadata"), "{e}");
    }

    #[test]
    fn allow_private_networks_and_cidrs() {
        let mut p = policy();
        p.allow_private_networks = true;
        assert!(p.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("::1".parse().unwrap()).is_ok());

        let mut p = policy();
        p.allow_cidrs = vec!["10.1.2.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(p.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("::ffff:10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("10.1.3.3".parse().unwrap()).is_err());
        assert!(p.check_ip("::1".parse().unwrap()).is_ok());
        assert!(p.check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn check_url_scheme_and_literals() {
        let p = policy();
        assert!(p.check_url("https://example.com/hook").is_ok());
        let e = p.check_url("http://example.com/hook").unwrap_err();
        assert_eq!(
            e.to_string(),
            "example.com: plain http is refused; use https or set [delivery] allow_http = true"
        );
        let e = p.check_url("ftp://example.com/").unwrap_err();
        assert!(e.to_string().contains("\"ftp\""), "{e}");
        assert!(matches!(
            p.check_url("not a url"),
            Err(EgressError::InvalidUrl(_))
        ));
        assert!(p.check_url("https://[::1]/").is_err());
        assert!(p.check_url("https://10.1.2.3/").is_err());
        // Decimal and hex spellings are normalised by the URL parser before the check.
        assert!(p.check_url("https://2130706433/").is_err());
        assert!(p.check_url("https://0x7f.1/").is_err());
        assert!(p.check_url("https://[::ffff:7f00:1]/").is_err());

        let mut p = policy();
        p.allow_http = true;
        assert!(p.check_url("http://example.com/").is_ok());
        assert!(p.check_url("http://127.0.0.1:8080/").is_err());
    }

    #[test]
    fn messages_never_show_credentials_or_path() {
        let p = policy();
        for url in [
            "http://user:hunter2@example.com/services/T0/B0/tokenXYZ?k=secretq",
            "https://user:hunter2@127.0.0.1:9/services/T0/B0/tokenXYZ?k=secretq",
            "gopher://user:hunter2@example.com/tokenXYZ",
        ] {
            let e = p.check_url(url).unwrap_err().to_string();
            for bad in ["hunter2", "user", "tokenXYZ", "secretq"] {
                assert!(!e.contains(bad), "{e:?} contains {bad}");
            }
        }
        let e = p
            .check_url("https://user:hunter2@127.0.0.1:9/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("127.0.0.1:9: 127.0.0.1 is a loopback address"),
            "{e}"
        );
    }
}
