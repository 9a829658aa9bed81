//! Address management and validation of what users ask for: names, subnets, gateways, addresses.
//!
//! Addresses are `IpAddr`/`IpNetwork` throughout. A network has an IPv4 subnet (`parse_subnet`)
//! and may have an IPv6 one besides (`parse_subnet6`, dual stack).
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::state::State;

/// Docker's default address pools: 172.17-31.0.0/16, then 192.168.0.0/16 cut into /20s.
pub fn default_pool() -> impl Iterator<Item = IpNetwork> {
    let wide = (17u8..=31).map(|b| Ipv4Network::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap());
    let narrow = (0u8..16).map(|i| Ipv4Network::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).unwrap());
    wide.chain(narrow).map(IpNetwork::V4)
}

/// Ranges no container network may use.
const RESERVED: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local addresses"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "future use and broadcast"),
];

/// Whether two prefixes share an address (never across address families).
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The IPv6 address that goes with IPv4 address `v4` of subnet `subnet` in IPv6 subnet
/// `subnet6`: the same offset from the subnet's start (10.0.9.5 of 10.0.9.0/24 is fd00:9::5 of
/// fd00:9::/64). An overlay network's IPv6 addresses follow its IPv4 ones so: the cluster's
/// claim of the IPv4 address makes the IPv6 one unique too, and every node knows another's
/// endpoints' IPv6 addresses from the claims. `None` where the offset does not fit.
pub fn paired_address6(subnet: &IpNetwork, subnet6: &IpNetwork, v4: IpAddr) -> Option<IpAddr> {
    let (IpAddr::V4(v4), IpAddr::V4(start), IpAddr::V6(start6)) = (v4, subnet.network(), subnet6.network()) else { return None };
    let offset = u32::from(v4).checked_sub(u32::from(start))? as u128;
    let host_bits = 128 - subnet6.prefix() as u32;
    if host_bits < 128 && offset >> host_bits != 0 {
        return None;
    }
    Some(IpAddr::V6(std::net::Ipv6Addr::from(u128::from(start6) | offset)))
}

/// The IPv4 address of `subnet` that IPv6 address `v6` of `subnet6` pairs with (see
/// [`paired_address6`]); `None` where its offset is not one of `subnet`'s.
pub fn paired_address4(subnet: &IpNetwork, subnet6: &IpNetwork, v6: IpAddr) -> Option<IpAddr> {
    let (IpAddr::V6(v6), IpAddr::V4(start), IpAddr::V6(start6)) = (v6, subnet.network(), subnet6.network()) else { return None };
    if !subnet6.contains(IpAddr::V6(v6)) {
        return None;
    }
    let offset = u128::from(v6) - u128::from(start6);
    let host_bits = 32 - subnet.prefix() as u32;
    if offset >> host_bits != 0 {
        return None;
    }
    Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from(start) + offset as u32)))
}

/// Docker's rule for object names.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.is_empty() || !ok_first || !ok_rest || name.len() > 64 {
        bail!("invalid {what} name {name:?}: use 1-64 characters [a-zA-Z0-9_.-], starting with a letter or digit");
    }
    Ok(())
}

/// Linux's rule for interface names (what `attach --interface` may ask for).
pub fn validate_interface_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        bail!("invalid interface name {name:?}: use 1-15 printable characters without '/', ':' or spaces");
    }
    Ok(())
}

/// Parses and checks a user-given subnet.
pub fn parse_subnet(text: &str) -> Result<IpNetwork> {
    if text.contains(':') {
        bail!("invalid subnet {text:?}: expected an IPv4 CIDR here; an IPv6 subnet is the network's IPv6 --subnet (with an IPv4 one for dual stack, alone with --ipv4=false)");
    }
    let Ok(net) = text.parse::<Ipv4Network>() else {
        bail!("invalid subnet {text:?}: expected an IPv4 CIDR such as 10.10.0.0/24");
    };
    if !text.contains('/') {
        bail!("invalid subnet {text:?}: give a prefix length, e.g. {text}/24");
    }
    if net.ip() != net.network() {
        bail!("invalid subnet {text:?}: host bits are set; did you mean {}/{}?", net.network(), net.prefix());
    }
    if net.prefix() > 30 {
        bail!("invalid subnet {text:?}: too small, a network needs at least a /30 (a gateway and one container)");
    }
    if net.prefix() < 8 {
        bail!("invalid subnet {text:?}: too large, use a prefix of /8 or longer");
    }
    for (reserved, what) in RESERVED {
        let reserved: IpNetwork = reserved.parse().unwrap();
        if overlaps(&reserved, &IpNetwork::V4(net)) {
            bail!("invalid subnet {text:?}: it overlaps {reserved}, which is reserved for {what}");
        }
    }
    Ok(IpNetwork::V4(net))
}

/// Where `--ipv6` without an IPv6 subnet takes one: the /64s of this unique local /48
/// (RFC 4193), in order.
pub const DEFAULT_IPV6_POOL: &str = "fd62:7066::/48";

/// IPv6 ranges no container network may use.
const RESERVED_V6: [(&str, &str); 3] = [
    ("::/8", "the unspecified, loopback and IPv4-mapped addresses"),
    ("fe80::/10", "link-local addresses"),
    ("ff00::/8", "multicast"),
];

/// Parses and checks a user-given IPv6 subnet.
pub fn parse_subnet6(text: &str) -> Result<IpNetwork> {
    let Ok(net) = text.parse::<Ipv6Network>() else {
        bail!("invalid subnet {text:?}: expected an IPv6 CIDR such as fd00:1::/64");
    };
    if !text.contains('/') {
        bail!("invalid subnet {text:?}: give a prefix length, e.g. {text}/64");
    }
    if net.ip() != net.network() {
        bail!("invalid subnet {text:?}: host bits are set; did you mean {}/{}?", net.network(), net.prefix());
    }
    if net.prefix() > 120 {
        bail!("invalid subnet {text:?}: too small, use a prefix of /120 or shorter (/64 is usual)");
    }
    if net.prefix() < 16 {
        bail!("invalid subnet {text:?}: too large, use a prefix of /16 or longer");
    }
    for (reserved, what) in RESERVED_V6 {
        let reserved: IpNetwork = reserved.parse().unwrap();
        if overlaps(&reserved, &IpNetwork::V6(net)) {
            bail!("invalid subnet {text:?}: it overlaps {reserved}, which is reserved for {what}");
        }
    }
    Ok(IpNetwork::V6(net))
}

/// Picks the IPv6 subnet of a new dual-stack network: the user's (checked against every other
/// network's and the host's routes and addresses), or the first free /64 of `pool`.
pub fn choose_subnet6(state: &State, requested: Option<&str>, host: &HostNetworks, pool: &IpNetwork) -> Result<IpNetwork> {
    let taken = |c: &IpNetwork| state.networks.iter().filter_map(|n| n.ipv6).find(|v6| overlaps(&v6.subnet, c));
    match requested {
        Some(text) => {
            let net = parse_subnet6(text)?;
            if let Some(other) = state.networks.iter().find(|n| n.ipv6.is_some_and(|v6| overlaps(&v6.subnet, &net))) {
                let theirs = other.ipv6.map(|v6| v6.subnet.to_string()).unwrap_or_default();
                return Err(InUse(format!("subnet {net} overlaps with network {:?} ({theirs})", other.name)).into());
            }
            if let Some(why) = host_clash(&net, host) {
                return Err(InUse(why).into());
            }
            Ok(net)
        }
        None => {
            let IpNetwork::V6(pool) = pool else { bail!("the IPv6 pool {pool} is not IPv6") };
            let blocks = 1u128 << (64u8.saturating_sub(pool.prefix()).min(16));
            (0..blocks)
                .filter_map(|i| Ipv6Network::new((u128::from(pool.network()) + (i << 64)).into(), 64).ok().map(IpNetwork::V6))
                .find(|c| taken(c).is_none() && host_clash(c, host).is_none())
                .ok_or_else(|| anyhow::anyhow!("the IPv6 pool {pool} is exhausted: give an IPv6 --subnet"))
        }
    }
}

/// An address given for a network of subnet `net`: of the subnet's family.
pub fn parse_address(what: &str, text: &str, net: &IpNetwork) -> Result<IpAddr> {
    match (text.parse::<IpAddr>(), net) {
        (Ok(ip @ IpAddr::V4(_)), IpNetwork::V4(_)) | (Ok(ip @ IpAddr::V6(_)), IpNetwork::V6(_)) => Ok(ip),
        (Ok(ip), _) => bail!("invalid {what} {ip}: the subnet {net} is of the other address family"),
        (Err(_), IpNetwork::V4(_)) => bail!("invalid {what} {text:?}: expected an IPv4 address such as 10.10.0.5"),
        (Err(_), IpNetwork::V6(_)) => bail!("invalid {what} {text:?}: expected an IPv6 address such as fd00:1::5"),
    }
}

/// The subnet's broadcast address (IPv4 only: IPv6 has none).
pub fn broadcast(net: &IpNetwork) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(v4) => Some(IpAddr::V4(v4.broadcast())),
        IpNetwork::V6(_) => None,
    }
}

/// The address `offset` places after the start of `net` (`None` past its end).
pub fn nth_address(net: &IpNetwork, offset: u128) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(v4) => {
            let ip = u128::from(u32::from(v4.network())).checked_add(offset)?;
            let ip = IpAddr::V4(Ipv4Addr::from(u32::try_from(ip).ok()?));
            net.contains(ip).then_some(ip)
        }
        IpNetwork::V6(v6) => {
            let ip = IpAddr::V6(u128::from(v6.network()).checked_add(offset)?.into());
            net.contains(ip).then_some(ip)
        }
    }
}

/// An address a host may use in `net`: inside it, not its network or broadcast address.
pub fn check_host_address(what: &str, ip: IpAddr, net: &IpNetwork) -> Result<()> {
    if !net.contains(ip) {
        bail!("{what} {ip} is outside the subnet {net}");
    }
    if ip == net.network() || Some(ip) == broadcast(net) {
        bail!("{what} {ip} is the network or broadcast address of {net}");
    }
    Ok(())
}

/// An address one of the host's interfaces holds (up or down), which no container may be given.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAddress {
    pub ip: IpAddr,
    pub interface: String,
}

/// What a new network's subnet must stay clear of besides other networks: the prefixes the host
/// already routes, and the addresses its interfaces hold (a down interface has no route).
#[derive(Debug, Default)]
pub struct HostNetworks {
    pub routes: Vec<IpNetwork>,
    pub addresses: Vec<HostAddress>,
}

/// Why `net` cannot be used on this host, if it cannot.
fn host_clash(net: &IpNetwork, host: &HostNetworks) -> Option<String> {
    if let Some(a) = host.addresses.iter().find(|a| net.contains(a.ip)) {
        return Some(format!("subnet {net} contains {}, an address of the host's interface {}", a.ip, a.interface));
    }
    host.routes.iter().find(|r| overlaps(r, net)).map(|r| format!("subnet {net} overlaps with {r}, which the host already routes"))
}

/// Picks the subnet for a new network: the user's (checked against every other network and
/// against the host's routes and addresses, as Docker does), or the first free one of the default
/// pool. A clash with the host is a [`InUse`] conflict.
pub fn choose_subnet(state: &State, requested: Option<&str>, host: &HostNetworks) -> Result<IpNetwork> {
    match requested {
        Some(text) => {
            let net = parse_subnet(text)?;
            if let Some((other, theirs)) = state.networks.iter().find_map(|n| Some((n, n.ipv4.filter(|v4| overlaps(&v4.subnet, &net))?))) {
                return Err(InUse(format!("subnet {net} overlaps with network {:?} ({})", other.name, theirs.subnet)).into());
            }
            if let Some(why) = host_clash(&net, host) {
                return Err(InUse(why).into());
            }
            Ok(net)
        }
        None => default_pool()
            .find(|c| !state.networks.iter().filter_map(|n| n.ipv4).any(|v4| overlaps(&v4.subnet, c)) && host_clash(c, host).is_none())
            .ok_or_else(|| anyhow::anyhow!("the default address pool is exhausted: give --subnet")),
    }
}

/// What the request asks for is taken: a subnet another network, a host route or a host address
/// uses, an address another endpoint holds (a conflict, not bad input).
#[derive(Debug)]
pub struct InUse(pub String);

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InUse {}

/// The network's gateway: the user's, or the first host address.
pub fn choose_gateway(net: &IpNetwork, requested: Option<&str>) -> Result<IpAddr> {
    match requested {
        Some(text) => {
            let gw = parse_address("gateway", text, net)?;
            check_host_address("gateway", gw, net)?;
            Ok(gw)
        }
        None => nth_address(net, 1).ok_or_else(|| anyhow::anyhow!("subnet {net} has no room for a gateway")),
    }
}

/// Checks `--ip-range` against the network's `subnet`: a prefix inside it, with room for an
/// address to hand out.
pub fn parse_ip_range(text: &str, subnet: &IpNetwork) -> Result<IpNetwork> {
    let range: IpNetwork = text.parse().map_err(|_| anyhow::anyhow!("invalid --ip-range {text:?}: expected a prefix such as 10.0.9.128/25"))?;
    if range.is_ipv4() != subnet.is_ipv4() || range.prefix() < subnet.prefix() || !subnet.contains(range.network()) {
        bail!("--ip-range {text} is not inside the subnet {subnet}");
    }
    if range.network() != range.ip() {
        bail!("--ip-range {text} has host bits set; did you mean {}/{}?", range.network(), range.prefix());
    }
    Ok(range)
}

/// Picks an endpoint's IPv4 address: the user's (checked), or the lowest free one. Every
/// allocation of the network holds its address, attached or not, and every service its VIP.
/// `None` on an IPv6-only network (where asking for one is an error).
pub fn choose_address(state: &State, network_id: &str, requested: Option<&str>) -> Result<Option<IpAddr>> {
    take_from(AddressPool::new(state, network_id), requested, || {
        let name = state.network_by_id(network_id).map_or("", |n| n.name.as_str());
        format!("network {name:?} is IPv6-only: --ip needs an IPv4 subnet (use --ip6)")
    })
}

/// The address `requested` (or the lowest free one) of `pool`, the family's; without one, an
/// error (`refusal`) if an address was asked for, else none.
fn take_from(pool: Option<AddressPool>, requested: Option<&str>, refusal: impl FnOnce() -> String) -> Result<Option<IpAddr>> {
    match pool {
        Some(pool) => pool.take(requested).map(Some),
        None if requested.is_some() => bail!("{}", refusal()),
        None => Ok(None),
    }
}

/// The free addresses of one network in one address family, for handing out several (a batch
/// of service VIPs) with one look at what holds them.
pub struct AddressPool<'a> {
    /// The network's name, for messages.
    name: &'a str,
    subnet: IpNetwork,
    gateway: IpAddr,
    /// `--ip-range` (IPv4 only): where addresses are handed out from.
    range: Option<IpNetwork>,
    /// Address -> who holds it.
    held: std::collections::HashMap<IpAddr, String>,
    /// Offsets below this one are all taken (the lowest free address is searched from here).
    next: u128,
}

impl<'a> AddressPool<'a> {
    /// The network's IPv4 addresses (`None`: it is IPv6-only).
    pub fn new(state: &'a State, network_id: &str) -> Option<Self> {
        let net = state.network_by_id(network_id).expect("caller checked the network");
        let v4 = net.ipv4?;
        let mut held: std::collections::HashMap<IpAddr, String> =
            state.allocations_of(network_id).filter_map(|a| Some((a.address4?, a.container_name.clone()))).collect();
        for s in state.services.values().filter(|s| s.network_id == network_id) {
            held.extend(s.vip4.map(|vip| (vip, format!("service {}", s.name))));
        }
        Some(Self { name: &net.name, subnet: v4.subnet, gateway: v4.gateway, range: net.ip_range, held, next: 0 })
    }

    /// The network's IPv6 addresses (`None`: it has no IPv6 subnet).
    pub fn new6(state: &'a State, network_id: &str) -> Option<Self> {
        let net = state.network_by_id(network_id).expect("caller checked the network");
        let v6 = net.ipv6?;
        let mut held: std::collections::HashMap<IpAddr, String> =
            state.allocations_of(network_id).filter_map(|a| Some((a.address6?, a.container_name.clone()))).collect();
        for s in state.services.values().filter(|s| s.network_id == network_id) {
            held.extend(s.vip6.map(|vip6| (vip6, format!("service {}", s.name))));
        }
        Some(Self { name: &net.name, subnet: v6.subnet, gateway: v6.gateway, range: None, held, next: 0 })
    }

    /// The address asked for (checked), or the lowest free one; held from now on by `holder`.
    pub fn take_for(&mut self, requested: Option<&str>, holder: &str) -> Result<IpAddr> {
        let (subnet, name) = (self.subnet, self.name);
        let ip = match requested {
            Some(text) => {
                let ip = parse_address("address", text, &subnet)?;
                check_host_address("address", ip, &subnet)?;
                if ip == self.gateway {
                    bail!("address {ip} is the gateway of network {name:?}");
                }
                if let Some(holder) = self.held.get(&ip) {
                    let msg = format!("address {ip} is already in use in network {name:?} by {holder}");
                    return Err(InUse(msg).into());
                }
                ip
            }
            None => {
                // From the network's --ip-range, else the whole subnet (its first address is the
                // network's own, its last the broadcast: neither is handed out).
                let range = self.range.unwrap_or(subnet);
                let found = (self.next..)
                    .map_while(|offset| nth_address(&range, offset).map(|ip| (offset, ip)))
                    .filter(|(_, ip)| Some(*ip) != broadcast(&subnet) && *ip != subnet.network())
                    .find(|(_, ip)| *ip != self.gateway && !self.held.contains_key(ip));
                let (offset, ip) =
                    found.ok_or_else(|| anyhow::anyhow!("no free address left in network {name:?} ({range})"))?;
                self.next = offset + 1;
                ip
            }
        };
        self.held.insert(ip, holder.to_string());
        Ok(ip)
    }

    /// Marks `ip` as held by `holder` (an address another node holds).
    pub fn hold(&mut self, ip: IpAddr, holder: String) {
        self.held.insert(ip, holder);
    }

    fn take(mut self, requested: Option<&str>) -> Result<IpAddr> {
        self.take_for(requested, "")
    }
}

/// Picks an endpoint's IPv6 address on a dual-stack network: the user's (checked), or the
/// lowest free one. `None` on a network without IPv6 (where asking for one is an error).
pub fn choose_address6(state: &State, network_id: &str, requested: Option<&str>) -> Result<Option<IpAddr>> {
    take_from(AddressPool::new6(state, network_id), requested, || {
        let name = state.network_by_id(network_id).map_or("", |n| n.name.as_str());
        format!("network {name:?} has no IPv6 subnet: --ip6 needs a network made with --ipv6 or an IPv6 --subnet")
    })
}

/// Stable MAC for an address, as Docker does: 02:42 followed by the four address bytes (of an
/// IPv6 address, its last four).
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let b = v6.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A network's `-o` options, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkOptions {
    pub icc: bool,
    pub masquerade: bool,
}

/// Parses `-o` options. Known: `icc` and `masquerade` (or Docker's
/// `com.docker.network.bridge.enable_icc` and `com.docker.network.bridge.enable_ip_masquerade`).
pub fn parse_options(options: &std::collections::BTreeMap<String, String>) -> Result<NetworkOptions> {
    let mut parsed = NetworkOptions { icc: true, masquerade: true };
    for (key, value) in options {
        let flag = match key.as_str() {
            "icc" | "com.docker.network.bridge.enable_icc" => &mut parsed.icc,
            "masquerade" | "com.docker.network.bridge.enable_ip_masquerade" => &mut parsed.masquerade,
            _ => bail!("unknown network option {key:?}: supported options are icc=true|false and masquerade=true|false"),
        };
        *flag = match value.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => bail!("invalid value {value:?} for option {key}: expected true or false"),
        };
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{Allocation, Endpoint, Network, Subnet};

    #[test]
    fn an_overlay_networks_ipv6_address_pairs_with_its_ipv4_one() {
        let (v4, v6): (IpNetwork, IpNetwork) = ("10.0.9.0/24".parse().unwrap(), "fd00:9::/64".parse().unwrap());
        let pair = |ip: &str| paired_address6(&v4, &v6, ip.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(pair("10.0.9.5").as_deref(), Some("fd00:9::5"));
        assert_eq!(pair("10.0.9.255").as_deref(), Some("fd00:9::ff"));
        assert_eq!(pair("10.0.8.5"), None, "outside the subnet");
        // A /120 holds 256 addresses: a /16's offsets beyond do not fit.
        let (big, small): (IpNetwork, IpNetwork) = ("10.1.0.0/16".parse().unwrap(), "fd00:1::/120".parse().unwrap());
        assert_eq!(paired_address6(&big, &small, "10.1.0.200".parse().unwrap()).map(|a| a.to_string()).as_deref(), Some("fd00:1::c8"));
        assert_eq!(paired_address6(&big, &small, "10.1.1.0".parse().unwrap()), None);
        // And back.
        let back = |ip: &str| paired_address4(&v4, &v6, ip.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(back("fd00:9::5").as_deref(), Some("10.0.9.5"));
        assert_eq!(back("fd00:9::100"), None, "beyond the IPv4 subnet");
        assert_eq!(back("fd00:8::5"), None, "outside the IPv6 subnet");
    }

    fn state_with(subnet: &str) -> State {
        let subnet: IpNetwork = subnet.parse().unwrap();
        State {
            version: 1,
            networks: vec![Network {
                id: "n1".into(),
                name: "backend".into(),
                ipv4: Some(Subnet { subnet, gateway: nth_address(&subnet, 1).unwrap() }),
                internal: false,
                icc: true,
                masquerade: true,
                options: BTreeMap::new(),
                datapath_id: 1,
                created: String::new(),
                driver: Default::default(),
                ip_range: None,
                ipv6: None,
            }],
            endpoints: vec![],
            allocations: vec![],
            connecting: vec![],
            pools: vec![],
            docker_overlays: Default::default(),
            services: Default::default(),
            remote_endpoints: vec![],
        }
    }

    fn allocation(ip: &str) -> Allocation {
        Allocation {
            id: "e".into(),
            network_id: "n1".into(),
            container_id: "c".into(),
            container_name: "con".into(),
            address4: Some(ip.parse().unwrap()),
            address6: None,
            mac: [0; 6],
            aliases: vec![],
            ports: vec![],
            kept_when_detached: false,
            frontend: Default::default(),
        }
    }

    fn endpoint(ip: &str) -> Endpoint {
        Endpoint {
            allocation: allocation(ip),
            netns_path: "/run/netns/x".into(),
            netns_dev: 0,
            netns_inode: 0,
            interface: "eth0".into(),
            host_interface: "bnx".into(),
            host_ifindex: 0,
            default_route: true,
            gro: false,
        }
    }

    #[test]
    fn subnet_validation() {
        assert!(parse_subnet("10.0.0.0/24").is_ok());
        for (bad, why) in [
            ("10.0.0.1/24", "host bits"),
            ("10.0.0.0", "prefix length"),
            ("10.0.0.0/31", "too small"),
            ("10.0.0.0/33", "expected an IPv4 CIDR"),
            ("banana", "expected an IPv4 CIDR"),
            ("fd00::/64", "IPv6"),
            ("0.0.0.0/4", "too large"),
            ("127.0.0.0/16", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("224.0.0.0/8", "multicast"),
        ] {
            let err = parse_subnet(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn overlapping_subnet_is_refused_and_default_pool_skips_used() {
        let s = state_with("172.17.0.0/16");
        let err = choose_subnet(&s, Some("172.17.5.0/24"), &HostNetworks::default()).unwrap_err();
        assert!(err.downcast_ref::<InUse>().is_some(), "a typed conflict: {err}");
        assert!(err.to_string().contains("overlaps with network \"backend\""), "{err}");
        let err = choose_subnet(&s, Some("172.0.0.0/8"), &HostNetworks::default()).unwrap_err().to_string();
        assert!(err.contains("overlaps"), "{err}");
        assert_eq!(choose_subnet(&s, None, &HostNetworks::default()).unwrap().to_string(), "172.18.0.0/16");
    }

    #[test]
    fn subnets_the_host_already_routes_are_avoided() {
        let s = state_with("172.17.0.0/16");
        let host = HostNetworks {
            routes: vec!["172.18.0.0/16".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            addresses: vec![HostAddress { ip: "172.19.0.1".parse().unwrap(), interface: "vpn0".into() }],
        };
        assert_eq!(choose_subnet(&s, None, &host).unwrap().to_string(), "172.20.0.0/16", "skips routes and addresses");
        let err = choose_subnet(&s, Some("10.5.0.0/24"), &host).unwrap_err().to_string();
        assert!(err.contains("overlaps with 10.0.0.0/8, which the host already routes"), "{err}");
        let err = choose_subnet(&s, Some("172.19.0.0/24"), &host).unwrap_err().to_string();
        assert_eq!(err, "subnet 172.19.0.0/24 contains 172.19.0.1, an address of the host's interface vpn0");
    }

    #[test]
    fn gateway_rules() {
        let net: IpNetwork = "10.0.0.0/24".parse().unwrap();
        assert_eq!(choose_gateway(&net, None).unwrap(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(choose_gateway(&net, Some("10.0.0.254")).unwrap(), Ipv4Addr::new(10, 0, 0, 254));
        let err = choose_gateway(&net, Some("fd00::1")).unwrap_err().to_string();
        assert!(err.contains("other address family"), "{err}");
        let v6: IpNetwork = "fd00:1::/64".parse().unwrap();
        assert_eq!(choose_gateway(&v6, None).unwrap().to_string(), "fd00:1::1", "the allocator is not IPv4-bound");
        assert!(choose_gateway(&net, Some("10.0.1.1")).unwrap_err().to_string().contains("outside"));
        assert!(choose_gateway(&net, Some("10.0.0.255")).unwrap_err().to_string().contains("broadcast"));
        assert!(choose_gateway(&net, Some("10.0.0")).unwrap_err().to_string().contains("invalid gateway"));
    }

    #[test]
    fn address_allocation() {
        let mut s = state_with("10.0.0.0/30"); // .1 gateway, .2 the only host
        assert_eq!(choose_address(&s, "n1", None).unwrap().unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        s.endpoints.push(endpoint("10.0.0.2"));
        let err = choose_address(&s, "n1", None).unwrap_err().to_string();
        assert!(err.contains("no free address"), "{err}");
        let err = choose_address(&s, "n1", Some("10.0.0.2")).unwrap_err();
        assert!(err.downcast_ref::<InUse>().is_some(), "a typed conflict: {err}");
        assert!(err.to_string().contains("already in use"), "{err}");
        let err = choose_address(&s, "n1", Some("10.0.0.1")).unwrap_err().to_string();
        assert!(err.contains("gateway"), "{err}");
        let err = choose_address(&s, "n1", Some("10.9.0.1")).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
        let err = choose_address(&s, "n1", Some("fd00::2")).unwrap_err().to_string();
        assert!(err.contains("other address family"), "{err}");
    }

    #[test]
    fn ipv6_subnets_and_addresses() {
        for (text, expected) in [
            ("fd00:1::/121", "/120 or shorter"),
            ("fd00::/12", "too large"),
            ("fd00:1::1/64", "host bits"),
            ("fd00:1::", "prefix length"),
            ("10.0.0.0/24", "expected an IPv6 CIDR"),
            ("fe80::/64", "link-local"),
            ("ff02::/64", "multicast"),
            ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ] {
            let err = parse_subnet6(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let mut s = state_with("10.0.0.0/24");
        let pool: IpNetwork = DEFAULT_IPV6_POOL.parse().unwrap();
        let host = HostNetworks { routes: vec!["fd62:7066::/64".parse().unwrap()], addresses: vec![] };
        // The pool's first /64 the host routes already: the next one.
        let first = choose_subnet6(&s, None, &host, &pool).unwrap();
        assert_eq!(first.to_string(), "fd62:7066:0:1::/64");
        s.networks[0].ipv6 = Some(crate::state::Subnet { subnet: first, gateway: choose_gateway(&first, None).unwrap() });
        assert_eq!(choose_subnet6(&s, None, &host, &pool).unwrap().to_string(), "fd62:7066:0:2::/64");
        let err = choose_subnet6(&s, Some("fd62:7066:0:1:8000::/80"), &HostNetworks::default(), &pool).unwrap_err();
        assert!(err.downcast_ref::<InUse>().is_some() && err.to_string().contains("\"backend\""), "{err}");

        // Addresses: the lowest free after the gateway; asked-for ones checked like IPv4's.
        assert_eq!(choose_address6(&s, "n1", None).unwrap().unwrap().to_string(), "fd62:7066:0:1::2");
        let mut taken = endpoint("10.0.0.2");
        taken.allocation.address6 = Some("fd62:7066:0:1::2".parse().unwrap());
        s.endpoints.push(taken);
        assert_eq!(choose_address6(&s, "n1", None).unwrap().unwrap().to_string(), "fd62:7066:0:1::3");
        let err = choose_address6(&s, "n1", Some("fd62:7066:0:1::2")).unwrap_err();
        assert!(err.downcast_ref::<InUse>().is_some(), "{err}");
        for (asked, expected) in [("fd62:7066:0:1::1", "gateway"), ("fd00::5", "outside"), ("10.0.0.9", "other address family")] {
            let err = choose_address6(&s, "n1", Some(asked)).unwrap_err().to_string();
            assert!(err.contains(expected), "{asked}: {err}");
        }
        // A network without IPv6: none, and asking for one is an error.
        s.networks[0].ipv6 = None;
        assert_eq!(choose_address6(&s, "n1", None).unwrap(), None);
        assert!(choose_address6(&s, "n1", Some("fd00::5")).unwrap_err().to_string().contains("no IPv6 subnet"));
    }

    #[test]
    fn an_ip_range_bounds_what_is_handed_out_but_not_what_is_asked_for() {
        let subnet: IpNetwork = "10.0.0.0/24".parse().unwrap();
        let mut s = state_with("10.0.0.0/24");
        s.networks[0].ip_range = Some(parse_ip_range("10.0.0.252/30", &subnet).unwrap());
        // .252-.254 (.255 is the subnet's broadcast), then none left.
        assert_eq!(choose_address(&s, "n1", None).unwrap().unwrap(), Ipv4Addr::new(10, 0, 0, 252));
        for ip in ["10.0.0.252", "10.0.0.253", "10.0.0.254"] {
            s.endpoints.push(endpoint(ip));
        }
        let err = choose_address(&s, "n1", None).unwrap_err().to_string();
        assert!(err.contains("no free address left") && err.contains("10.0.0.252/30"), "{err}");
        assert_eq!(choose_address(&s, "n1", Some("10.0.0.7")).unwrap().unwrap(), Ipv4Addr::new(10, 0, 0, 7), "--ip anywhere in the subnet");
        for (bad, why) in [("10.1.0.0/25", "not inside"), ("10.0.0.0/16", "not inside"), ("10.0.0.1/25", "host bits"), ("x", "invalid")] {
            let err = parse_ip_range(bad, &subnet).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn unattached_allocations_hold_their_address() {
        let mut s = state_with("10.0.0.0/29"); // .1 gateway, .2-.6 hosts
        s.endpoints.push(endpoint("10.0.0.2"));
        s.allocations.push(allocation("10.0.0.3"));
        assert_eq!(choose_address(&s, "n1", None).unwrap().unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        let err = choose_address(&s, "n1", Some("10.0.0.3")).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
    }

    #[test]
    fn names_and_options() {
        assert!(validate_name("network", "front-end_1.x").is_ok());
        assert!(validate_name("network", "-x").is_err());
        assert!(validate_name("network", "a b").is_err());
        assert!(validate_name("network", "").is_err());
        assert!(validate_interface_name("eth1").is_ok());
        for bad in ["", "a/b", "eth0:1", "a b", "sixteen-chars-xx", ".."] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
        let mut o = BTreeMap::new();
        assert!(parse_options(&o).unwrap().icc);
        o.insert("icc".into(), "false".into());
        assert!(!parse_options(&o).unwrap().icc);
        assert!(parse_options(&o).unwrap().masquerade);
        o.insert("com.docker.network.bridge.enable_ip_masquerade".into(), "false".into());
        assert_eq!(parse_options(&o).unwrap(), NetworkOptions { icc: false, masquerade: false });
        o.insert("icc".into(), "maybe".into());
        assert!(parse_options(&o).is_err());
        let mut o = BTreeMap::new();
        o.insert("mtu".into(), "1400".into());
        assert!(parse_options(&o).unwrap_err().to_string().contains("unknown network option"));
    }

    #[test]
    fn mac_is_derived_from_ip() {
        assert_eq!(format_mac(&mac_for(IpAddr::from([172, 17, 0, 2]))), "02:42:ac:11:00:02");
    }
}
