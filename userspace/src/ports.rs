//! Published ports: parsing `-p [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]`
//! (an IPv6 host address in brackets, as Docker's `-p [::1]:8080:80`), refusing clashes, and the
//! `PORTS` entries a publication becomes.
use std::{fmt, net::IpAddr};

use anyhow::{bail, Result};
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    port_flags, IpKey, PortKey, PortTarget,
};
use serde::{Deserialize, Serialize};


#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One `-p`: `count` consecutive host ports from `host_port` to as many container ports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishedPort {
    /// The host address it is published on: `None`, every address of the daemon's namespace,
    /// IPv4 and IPv6 (Docker's `-p 8080:80`; IPv6 where the container has an IPv6 address);
    /// `0.0.0.0` or `::`, every address of that family; any other, that one address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub count: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |start: u16| if self.count > 1 { format!("{start}-{}", start + (self.count - 1)) } else { start.to_string() };
        let ip = match self.host_ip {
            None => "0.0.0.0".to_string(),
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
        };
        write!(f, "{ip}:{}->{}/{}", range(self.host_port), range(self.container_port), self.protocol)
    }
}

impl PublishedPort {
    /// How it shows in listings, as `docker ps` shows ports: a publication on every address of
    /// both families (no host address) once per family the target has an address of (`ipv4`,
    /// `ipv6`), one on a host address as [`Display`](fmt::Display).
    pub fn shown(&self, ipv4: bool, ipv6: bool) -> Vec<String> {
        match self.host_ip {
            Some(_) => vec![self.to_string()],
            None => {
                let any6 = PublishedPort { host_ip: Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)), ..*self };
                [(ipv4, self.to_string()), (ipv6, any6.to_string())].into_iter().filter(|(shown, _)| *shown).map(|(_, form)| form).collect()
            }
        }
    }
}

/// A port a container engine asks to publish where any host port of a range will do (Docker's
/// `-p 8000-8010:80`, or `-p 80`, which leaves the choice to the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRequest {
    pub host_ip: Option<IpAddr>,
    /// First and last acceptable host port.
    pub host_ports: (u16, u16),
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Host ports chosen for a request that names none: Linux's default ephemeral range, as Docker's
/// own port allocator uses.
pub const DYNAMIC_PORTS: (u16, u16) = (32768, 60999);

impl PortRequest {
    /// The publications this request may become, in order of preference.
    pub fn candidates(&self) -> impl Iterator<Item = PublishedPort> + '_ {
        (self.host_ports.0..=self.host_ports.1).map(|host_port| PublishedPort {
            host_ip: self.host_ip,
            host_port,
            container_port: self.container_port,
            count: 1,
            protocol: self.protocol,
        })
    }
}

fn parse_port(text: &str, spec: &str) -> Result<u16> {
    match text.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => bail!("invalid port {text:?} in {spec:?}: ports are 1-65535"),
    }
}

/// `START[-END]` -> (start, count).
fn parse_range(text: &str, spec: &str) -> Result<(u16, u16)> {
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (parse_port(a, spec)?, parse_port(b, spec)?),
        None => {
            let p = parse_port(text, spec)?;
            (p, p)
        }
    };
    if end < start {
        bail!("invalid port range {text:?} in {spec:?}: it ends before it starts");
    }
    Ok((start, end - start + 1))
}

/// Parses one `-p` value.
pub fn parse(spec: &str) -> Result<PublishedPort> {
    let usage = "expected [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp], e.g. 8080:80 or [::1]:8080:80";
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => bail!("unknown protocol {other:?} in {spec:?}: expected tcp or udp"),
        None => (spec, Protocol::Tcp),
    };
    // An IPv6 address in brackets, then the ports.
    let (bracketed, ports) = match ports.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((ip, ports)) => (Some(ip), ports),
            None => bail!("invalid port publication {spec:?}: {usage}"),
        },
        None => (None, ports),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match (bracketed, &parts[..]) {
        (None, [host, container]) => (None, *host, *container),
        (None, [ip, host, container]) => match ip.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => (Some(ip), *host, *container),
            _ => bail!("invalid host address {ip:?} in {spec:?}: {usage}"),
        },
        (Some(ip), [host, container]) => match ip.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => (Some(ip), *host, *container),
            _ => bail!("invalid IPv6 host address {ip:?} in {spec:?}: {usage}"),
        },
        _ => bail!("invalid port publication {spec:?}: {usage}"),
    };
    let (host_port, host_count) = parse_range(host, spec)?;
    let (container_port, container_count) = parse_range(container, spec)?;
    if host_count != container_count {
        bail!(
            "invalid port publication {spec:?}: {host_count} host ports but {container_count} container ports \
             (ranges must have the same length)"
        );
    }
    Ok(PublishedPort { host_ip, host_port, container_port, count: host_count, protocol })
}

impl PublishedPort {
    /// Whether it is published on IPv4 and on IPv6 addresses.
    pub fn families(&self) -> (bool, bool) {
        match self.host_ip {
            None => (true, true),
            Some(ip) => (ip.is_ipv4(), ip.is_ipv6()),
        }
    }

    /// Whether the two publications would claim a common (address, port, protocol).
    pub fn overlaps(&self, other: &PublishedPort) -> bool {
        let same_address = match (self.host_ip, other.host_ip) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified())),
        };
        let (a, b) = (self.host_port as u32, other.host_port as u32);
        same_address
            && self.protocol == other.protocol
            && a < b + other.count as u32
            && b < a + self.count as u32
    }

    /// The `PORTS` entries of this publication for the container at `container` (IPv4) and
    /// `container6` (its IPv6 address, if it has one): each family's host addresses lead to the
    /// container's address of that family; IPv6 host addresses lead nowhere for a container
    /// without one (none is written). `over_host_listeners`: see
    /// `port_flags::OVER_HOST_LISTENERS`.
    pub fn entries(&self, container: Option<IpAddr>, container6: Option<IpAddr>, over_host_listeners: bool) -> Vec<(PortKey, PortTarget)> {
        let flags = if over_host_listeners { port_flags::OVER_HOST_LISTENERS } else { 0 };
        let proto = self.protocol.number();
        let (v4, v6) = self.families();
        let mut out = Vec::new();
        let mut add = |host: Option<IpAddr>, ipv6: bool, to: IpAddr| {
            for i in 0..self.count {
                let port = (self.host_port + i).to_be();
                let key = match host.filter(|ip| !ip.is_unspecified()) {
                    Some(ip) => PortKey { addr: IpKey::from(ip), port, proto, _pad: 0 },
                    None => PortKey::any_address(port, proto, ipv6),
                };
                let target = PortTarget { addr: IpKey::from(to), port: (self.container_port + i).to_be(), flags, ..PortTarget::default() };
                out.push((key, target));
            }
        };
        if let (true, Some(container)) = (v4, container) {
            add(self.host_ip, false, container);
        }
        if let (true, Some(container6)) = (v6, container6) {
            add(self.host_ip, true, container6);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_show_once_each_where_the_target_has_ipv6() {
        let p = parse("8080:80").unwrap();
        assert_eq!(p.shown(true, true), ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]);
        assert_eq!(p.shown(true, false), ["0.0.0.0:8080->80/tcp"]);
        assert_eq!(p.shown(false, true), ["[::]:8080->80/tcp"], "an IPv6-only target");
        assert_eq!(parse("0.0.0.0:8080:80").unwrap().shown(true, true), ["0.0.0.0:8080->80/tcp"]);
        assert_eq!(parse("[::]:8080:80").unwrap().shown(true, true), ["[::]:8080->80/tcp"]);
    }

    #[test]
    fn parses_docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(p, PublishedPort { host_ip: None, host_port: 8080, container_port: 80, count: 1, protocol: Protocol::Tcp });
        let p = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!((p.host_ip, p.protocol), (Some("127.0.0.1".parse().unwrap()), Protocol::Udp));
        let p = parse("9000-9002:7000-7002/tcp").unwrap();
        assert_eq!((p.host_port, p.container_port, p.count), (9000, 7000, 3));
        assert_eq!(p.to_string(), "0.0.0.0:9000-9002->7000-7002/tcp");
        // A family's every address, as Docker's forms.
        assert_eq!(parse("0.0.0.0:80:80").unwrap().families(), (true, false));
        assert_eq!(parse("[::]:80:80").unwrap().families(), (false, true));
        assert_eq!(parse("80:80").unwrap().families(), (true, true));
        let p = parse("[2001:db8::1]:8080:80/udp").unwrap();
        assert_eq!((p.host_ip, p.protocol), (Some("2001:db8::1".parse().unwrap()), Protocol::Udp));
        assert_eq!(p.to_string(), "[2001:db8::1]:8080->80/udp");
    }

    #[test]
    fn refuses_bad_specs_with_clear_errors() {
        for (spec, says) in [
            ("0:80", "ports are 1-65535"),
            ("8080:70000", "ports are 1-65535"),
            ("8080-8081:80-82", "2 host ports but 3 container ports"),
            ("8080:80/sctp", "unknown protocol \"sctp\""),
            ("80", "expected [HOST_IP:]HOST_PORT"),
            ("1.2.3:80:80", "invalid host address"),
            ("90-80:90-80", "ends before it starts"),
            ("a:80", "invalid port \"a\""),
            ("[::1]8080:80", "invalid port publication"),
            ("[10.0.0.1]:8080:80", "invalid IPv6 host address"),
            ("::1:8080:80", "invalid port publication"),
            ("fd00::1:8080:80", "invalid port publication"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn overlap_takes_addresses_ranges_and_protocols_into_account() {
        let any = parse("8080-8082:80-82").unwrap();
        assert!(any.overlaps(&parse("8082:1").unwrap()));
        assert!(any.overlaps(&parse("10.0.0.1:8081:1").unwrap()), "every address includes this one");
        assert!(!any.overlaps(&parse("8083:1").unwrap()));
        assert!(!any.overlaps(&parse("8080:80/udp").unwrap()));
        assert!(!parse("10.0.0.1:8080:80").unwrap().overlaps(&parse("10.0.0.2:8080:80").unwrap()));
        // Every address of a family: that family's addresses only.
        let v4 = parse("0.0.0.0:8080:80").unwrap();
        let v6 = parse("[::]:8080:80").unwrap();
        assert!(!v4.overlaps(&v6), "Docker publishes -p 8080:80 as both");
        assert!(v4.overlaps(&parse("10.0.0.1:8080:1").unwrap()) && !v4.overlaps(&parse("[fd00::1]:8080:1").unwrap()));
        assert!(v6.overlaps(&parse("[fd00::1]:8080:1").unwrap()) && v6.overlaps(&any));
    }

    #[test]
    fn entries_lead_each_family_to_the_containers_address_of_that_family() {
        let (c4, c6): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap());
        let targets = |spec: &str, c6: Option<IpAddr>| -> Vec<(IpKey, IpKey)> {
            parse(spec).unwrap().entries(Some(c4), c6, false).iter().map(|(k, t)| (k.addr, t.addr)).collect()
        };
        let any4 = PortKey::any_ipv4_address(0, 0).addr;
        let any6 = PortKey::any_ipv6_address(0, 0).addr;
        assert_eq!(targets("8080:80", Some(c6)), vec![(any4, IpKey::from(c4)), (any6, IpKey::from(c6))]);
        assert_eq!(targets("8080:80", None), vec![(any4, IpKey::from(c4))], "no IPv6 for a container without");
        assert_eq!(targets("0.0.0.0:8080:80", Some(c6)), vec![(any4, IpKey::from(c4))]);
        assert_eq!(targets("[::]:8080:80", Some(c6)), vec![(any6, IpKey::from(c6))]);
        assert_eq!(targets("[::]:8080:80", None), vec![]);
        let host6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(targets("[2001:db8::1]:8080:80", Some(c6)), vec![(IpKey::from(host6), IpKey::from(c6))]);
        assert_ne!(any4, any6, "the two families' every-address keys differ");
    }
}
