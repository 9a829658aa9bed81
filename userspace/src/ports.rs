//! Published ports: parsing `-p [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]`,
//! refusing clashes, and the `PORTS` entries a publication becomes.
use std::{fmt, net::{IpAddr, Ipv4Addr}};

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
    /// The one host address it is published on; `None`: every address of the daemon's namespace.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub count: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |start: u16| if self.count > 1 { format!("{start}-{}", start + (self.count - 1)) } else { start.to_string() };
        let ip = self.host_ip.map_or("0.0.0.0".to_string(), |ip| ip.to_string());
        write!(f, "{ip}:{}->{}/{}", range(self.host_port), range(self.container_port), self.protocol)
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
    let usage = "expected [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp], e.g. 8080:80";
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => bail!("unknown protocol {other:?} in {spec:?}: expected tcp or udp"),
        None => (spec, Protocol::Tcp),
    };
    if ports.starts_with('[') {
        bail!("invalid port publication {spec:?}: IPv6 host addresses are not supported yet");
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match parts[..] {
        [host, container] => (None, host, container),
        [ip, host, container] => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| anyhow::anyhow!("invalid host address {ip:?} in {spec:?}: {usage}"))?;
            (if ip.is_unspecified() { None } else { Some(IpAddr::V4(ip)) }, host, container)
        }
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
    /// Whether the two publications would claim a common (address, port, protocol).
    pub fn overlaps(&self, other: &PublishedPort) -> bool {
        let same_address = self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip;
        let (a, b) = (self.host_port as u32, other.host_port as u32);
        same_address
            && self.protocol == other.protocol
            && a < b + other.count as u32
            && b < a + self.count as u32
    }

    /// The `PORTS` entries of this publication for the container at `container`;
    /// `over_host_listeners`: see `port_flags::OVER_HOST_LISTENERS`.
    pub fn entries(&self, container: IpAddr, over_host_listeners: bool) -> Vec<(PortKey, PortTarget)> {
        let flags = if over_host_listeners { port_flags::OVER_HOST_LISTENERS } else { 0 };
        let addr = self.host_ip.map_or(IpKey { addr: [0; 4] }, IpKey::from);
        (0..self.count)
            .map(|i| {
                let key = PortKey { addr, port: (self.host_port + i).to_be(), proto: self.protocol.number(), _pad: 0 };
                let target = PortTarget { addr: IpKey::from(container), port: (self.container_port + i).to_be(), flags, ..PortTarget::default() };
                (key, target)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(p, PublishedPort { host_ip: None, host_port: 8080, container_port: 80, count: 1, protocol: Protocol::Tcp });
        let p = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!((p.host_ip, p.protocol), (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), Protocol::Udp));
        let p = parse("9000-9002:7000-7002/tcp").unwrap();
        assert_eq!((p.host_port, p.container_port, p.count), (9000, 7000, 3));
        assert_eq!(p.to_string(), "0.0.0.0:9000-9002->7000-7002/tcp");
        assert_eq!(parse("0.0.0.0:80:80").unwrap().host_ip, None);
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
            ("[::1]:8080:80", "IPv6 host addresses are not supported yet"),
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
    }
}
