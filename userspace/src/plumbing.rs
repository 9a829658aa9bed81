//! Kernel network objects through rtnetlink: veth pairs, the gateway device, addresses, routes and
//! neighbours. Every call is idempotent where the kernel allows (`replace`), so the reconciler can
//! run it again.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressProtocol},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteAddress, RouteAttribute, RouteScope},
    },
    Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

/// A netlink connection bound to the namespace of the thread that opened it.
pub struct Netlink {
    handle: Handle,
}

/// The errno of a netlink error, if it is one.
pub fn errno(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|e| match e.downcast_ref::<rtnetlink::Error>() {
        Some(rtnetlink::Error::NetlinkError(msg)) => msg.code.map(|c| -c.get()),
        _ => None,
    })
}

impl Netlink {
    /// Must be called inside a tokio runtime: the connection task is spawned on it.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_by_name(name).await?.map(|l| l.index))
    }

    /// Every interface of the namespace, in one dump.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        while let Some(msg) = links.try_next().await.context("listing interfaces")? {
            found.push(LinkInfo::from(&msg));
        }
        Ok(found)
    }

    /// The interface named `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        self.one_link(self.handle.link().get().match_name(name.to_string()), name).await
    }

    /// The interface with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        self.one_link(self.handle.link().get().match_index(index), index).await
    }

    /// The interface `request` asks for (named `what` in errors); none when the kernel says so.
    async fn one_link(&self, request: rtnetlink::LinkGetRequest, what: impl std::fmt::Display) -> Result<Option<LinkInfo>> {
        match request.execute().try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkInfo::from)),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if errno(&e) == Some(libc::ENODEV) { Ok(None) } else { Err(e.context(format!("looking up interface {what}"))) }
            }
        }
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace `peer_netns` (so it
    /// never exists in the host's namespace under a temporary name) or, without one, here too
    /// (for an engine that moves it itself), each with its MAC. Returns the host side's index.
    pub async fn create_veth(
        &self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_netns: Option<&File>,
        mtu: Option<u32>,
    ) -> Result<u32> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).address(peer_mac.to_vec());
        if let Some(ns) = peer_netns {
            peer_msg = peer_msg.setns_by_fd(ns.as_raw_fd());
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let peer_msg = peer_msg.build();
        let mut msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .address(host_mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        let msg = msg.build();
        self.handle.link().add(msg).execute().await.with_context(|| format!("creating veth pair {host} / {peer}"))?;
        self.link_index(host).await?.with_context(|| format!("veth {host} vanished after creation"))
    }

    /// The node's VXLAN device for overlay networks, in external (`collect_md`) mode: one device for
    /// every VNI, the tunnel key set per packet by the datapath; no learning (etcd says where
    /// endpoints are). Made if missing, with `mtu`, and set up. Returns its index.
    pub async fn ensure_vxlan(&self, name: &str, port: u16, mtu: u32) -> Result<u32> {
        let index = match self.link_index(name).await? {
            Some(index) => index,
            None => {
                let msg = LinkMessageBuilder::<rtnetlink::LinkVxlan>::new(name)
                    .port(port)
                    .collect_metadata(true)
                    .learning(false)
                    .udp_csum(true)
                    .mtu(mtu)
                    .build();
                self.handle.link().add(msg).execute().await.with_context(|| format!("creating the VXLAN device {name}"))?;
                self.link_index(name).await?.with_context(|| format!("{name} vanished after creation"))?
            }
        };
        self.handle.link().set(LinkUnspec::new_with_index(index).mtu(mtu).up().build()).execute().await
            .with_context(|| format!("setting {name} up with MTU {mtu}"))?;
        Ok(index)
    }

    /// The MTU of interface `index`.
    pub async fn link_mtu(&self, index: u32) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        while let Some(msg) = links.try_next().await.with_context(|| format!("reading interface {index}"))? {
            for attr in msg.attributes {
                if let LinkAttribute::Mtu(mtu) = attr {
                    return Ok(Some(mtu));
                }
            }
        }
        Ok(None)
    }

    /// Sets the interface alias (`ip link set ... alias`). The kernel ignores IFLA_IFALIAS when it
    /// creates a link, so marking a new link is a second request.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.handle.link().set(LinkUnspec::new_with_index(index).alias(alias).build()).execute().await
            .with_context(|| format!("marking interface {index} with alias {alias}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await
            .with_context(|| format!("setting interface {index} up"))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle.link().del(index).execute().await.with_context(|| format!("deleting interface {index}"))
    }

    /// Deletes the interface `name` if it exists.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<()> {
        if let Some(index) = self.link_index(name).await? {
            match self.delete_link(index).await {
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Adds `ip/prefix`; an IPv6 address without duplicate address detection (the datapath
    /// answers for every address of the link, and IPAM made it unique), usable at once.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.with_context(|| format!("adding address {ip}/{prefix}"))
    }

    /// Adds `ip/32` (`/128`) to `lo` marked as bpfnet's, so the address is local to the host and
    /// recognisable as bpfnet's in `ip addr` and when sweeping: an IPv4 address carries `label`
    /// (e.g. `lo:bpfnet`), an IPv6 one (IPv6 has no labels) the address protocol
    /// [`OWN_ADDRESS_PROTOCOL`].
    pub async fn add_labelled_local_address(&self, lo_index: u32, ip: IpAddr, label: &str) -> Result<()> {
        let mut req = self.handle.address().add(lo_index, ip, full_prefix(ip)).replace();
        let attributes = &mut req.message_mut().attributes;
        match ip {
            IpAddr::V4(_) => attributes.push(AddressAttribute::Label(label.to_string())),
            IpAddr::V6(_) => {
                attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(OWN_ADDRESS_PROTOCOL)));
                attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        req.execute().await.with_context(|| format!("adding gateway address {ip}"))
    }

    /// Addresses of interface `index` that are `ip` (if given) and carry `label` (if given; an
    /// IPv6 address matches by [`OWN_ADDRESS_PROTOCOL`] instead).
    async fn matching_addresses(&self, index: u32, ip: Option<IpAddr>, label: Option<&str>) -> Result<Vec<AddressMessage>> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        let mut found = Vec::new();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let ip_ok = ip.is_none_or(|ip| address_of(&msg) == Some(ip));
            let label_ok = label.is_none_or(|l| is_labelled(&msg, l));
            if ip_ok && label_ok {
                found.push(msg);
            }
        }
        Ok(found)
    }

    /// Every address of every interface (up or down) except those labelled `except_label`,
    /// with the interface (label) that holds it.
    pub async fn host_addresses(&self, except_label: &str) -> Result<Vec<crate::ipam::HostAddress>> {
        let mut addrs = self.handle.address().get().execute();
        let mut found = Vec::new();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let label = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Label(l) => Some(l.clone()),
                _ => None,
            });
            let ours = is_labelled(&msg, except_label);
            let label = label.unwrap_or_else(|| format!("#{}", msg.header.index));
            if let (Some(ip), false) = (address_of(&msg), ours) {
                found.push(crate::ipam::HostAddress { ip, interface: label });
            }
        }
        Ok(found)
    }

    /// Addresses of interface `index` that carry `label`.
    pub async fn labelled_addresses(&self, index: u32, label: &str) -> Result<Vec<IpAddr>> {
        Ok(self.matching_addresses(index, None, Some(label)).await?.iter().filter_map(address_of).collect())
    }

    /// Deletes addresses of interface `index` that are `ip` (if given) and carry `label` (if given).
    pub async fn delete_addresses(&self, index: u32, ip: Option<IpAddr>, label: Option<&str>) -> Result<()> {
        for msg in self.matching_addresses(index, ip, label).await? {
            self.handle.address().del(msg).execute().await.context("deleting an address")?;
        }
        Ok(())
    }

    /// `ip route replace IP/32 dev INDEX scope link src GATEWAY`: how the host reaches an endpoint;
    /// the host speaks to it from its network's gateway address.
    pub async fn replace_host_route(&self, ip: IpAddr, index: u32, gateway: IpAddr) -> Result<()> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, full_prefix(ip))?
            .pref_source(gateway)?
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.handle.route().add(msg).replace().execute().await.with_context(|| format!("adding route to {ip}"))
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`: the host never needs to ARP.
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle.neighbours().add(index, ip).link_layer_address(&mac)
            .state(NeighbourState::Permanent).replace().execute().await
            .with_context(|| format!("adding neighbour entry for {ip}"))
    }

    /// Adds a default route via `gateway`. Returns false if the namespace already has one.
    pub async fn add_default_route(&self, gateway: IpAddr) -> Result<bool> {
        // The empty destination (0.0.0.0/0 or ::/0) sets the family the gateway is checked against.
        let any = if gateway.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let msg = RouteMessageBuilder::<IpAddr>::new().destination_prefix(any, 0)?.gateway(gateway)?.build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if errno(&e) == Some(libc::EEXIST) { Ok(false) } else { Err(e.context(format!("adding default route via {gateway}"))) }
            }
        }
    }
}

impl Netlink {
    /// Interfaces of the main table's IPv4 default routes: where traffic to the outside leaves.
    pub async fn default_route_interfaces(&self) -> Result<Vec<u32>> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        let mut found = Vec::new();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            if msg.header.table != libc::RT_TABLE_MAIN || msg.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &msg.attributes {
                if let RouteAttribute::Oif(index) = a {
                    if !found.contains(index) {
                        found.push(*index);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Whether interface `index` is a veth.
    pub async fn is_veth(&self, index: u32) -> Result<bool> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(msg) = links.try_next().await.context("looking up an interface")? else { return Ok(false) };
        Ok(msg.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => {
                infos.iter().any(|i| matches!(i, rtnetlink::packet_route::link::LinkInfo::Kind(InfoKind::Veth)))
            }
            _ => false,
        }))
    }

    /// The IPv4 addresses of interface `index`, primary first.
    pub async fn interface_ipv4(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let addresses = self.matching_addresses(index, None, None).await?;
        Ok(addresses.iter().filter_map(address_of).filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }).collect())
    }

    /// The IPv6 addresses of interface `index` that masquerade may use, best first: global scope,
    /// not link-local, not tentative, deprecated, failed duplicate address detection or temporary
    /// (privacy addresses change); global unicast before unique local (fc00::/7).
    pub async fn interface_ipv6(&self, index: u32) -> Result<Vec<Ipv6Addr>> {
        let addresses = self.matching_addresses(index, None, None).await?;
        // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit (an IPv6 address is never secondary).
        let unusable = AddressFlags::Tentative | AddressFlags::Deprecated | AddressFlags::Dadfailed | AddressFlags::Secondary;
        let mut found: Vec<Ipv6Addr> = addresses
            .iter()
            .filter(|m| m.header.scope == rtnetlink::packet_route::address::AddressScope::Universe)
            .filter(|m| {
                !m.attributes.iter().any(|a| matches!(a, AddressAttribute::Flags(f) if f.intersects(unusable)))
            })
            .filter_map(address_of)
            .filter_map(|a| match a {
                IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(v6),
                _ => None,
            })
            .collect();
        found.sort_by_key(|a| a.is_unique_local());
        Ok(found)
    }

    /// Destinations of the main routing table's routes (both families), except default routes and
    /// the host routes bpfnet adds for its own endpoints (`ours`): what a new subnet must not
    /// overlap.
    pub async fn routed_prefixes(&self, ours: &[IpAddr]) -> Result<Vec<ipnetwork::IpNetwork>> {
        let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        let mut found = Vec::new();
        for dump in dumps {
            let mut routes = self.handle.route().get(dump).execute();
            while let Some(msg) = routes.try_next().await.context("listing routes")? {
                let prefix = msg.header.destination_prefix_length;
                if msg.header.table != libc::RT_TABLE_MAIN || prefix == 0 {
                    continue;
                }
                let dest = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                let Some(dest) = dest else { continue };
                if prefix == full_prefix(dest) && ours.contains(&dest) {
                    continue;
                }
                if let Ok(net) = ipnetwork::IpNetwork::new(dest, prefix) {
                    found.push(net);
                }
            }
        }
        Ok(found)
    }
}

/// What the daemon needs to know of an interface.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
}

impl From<&LinkMessage> for LinkInfo {
    fn from(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo { index: msg.header.index, name: String::new(), alias: None };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::IfAlias(x) => info.alias = Some(x.clone()),
                _ => {}
            }
        }
        info
    }
}

/// The address protocol (`IFA_PROTO`, `ip addr ... proto 0xbf`) that marks bpfnet's IPv6
/// gateway addresses, as the label `lo:bpfnet` marks its IPv4 ones.
pub const OWN_ADDRESS_PROTOCOL: u8 = 0xbf;

/// Whether the address carries `label`, or, for IPv6, bpfnet's [`OWN_ADDRESS_PROTOCOL`].
fn is_labelled(msg: &AddressMessage, label: &str) -> bool {
    msg.attributes.iter().any(|a| match a {
        AddressAttribute::Label(x) => x == label,
        AddressAttribute::Protocol(AddressProtocol::Other(p)) => *p == OWN_ADDRESS_PROTOCOL && !label.is_empty(),
        _ => false,
    })
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// The prefix length of a single address: 32 or 128.
pub fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).with_context(|| format!("setting sysctl {path}"))
}

/// Configures the container's side of an endpoint: `ipv4` (address and prefix) where the network
/// has IPv4, `ipv6` (address, prefix, and the gateway of a default route unless the namespace
/// has one) where it has IPv6. Runs inside the container's namespace. Returns whether the
/// (IPv4) default route now goes through this endpoint.
pub async fn configure_container_side(
    ifname: String,
    ipv4: Option<(IpAddr, u8)>,
    ipv6: Option<(IpAddr, u8, Option<IpAddr>)>,
    default_gateway: Option<IpAddr>,
) -> Result<bool> {
    let nl = Netlink::connect()?;
    let index = nl.link_index(&ifname).await?.with_context(|| format!("{ifname} missing in the namespace"))?;
    match ipv6 {
        // No IPv6 on an endpoint of an IPv4-only network: its packets would only be dropped.
        None => write_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1").ok(),
        // Static: no router advertisements taken, no duplicate address detection (the datapath
        // answers neighbour solicitations, IPAM made the addresses unique), the link-local
        // address from the MAC (modified EUI-64, which the datapath's anti-spoofing expects).
        Some(_) => {
            for (key, value) in [("accept_ra", "0"), ("accept_dad", "0"), ("addr_gen_mode", "0"), ("disable_ipv6", "0")] {
                write_sysctl(&format!("net/ipv6/conf/{ifname}/{key}"), value)?;
            }
            Some(())
        }
    };
    if let Some((ip, prefix)) = ipv4 {
        nl.add_address(index, ip, prefix).await?;
    }
    if let Some((ip6, prefix6, _)) = ipv6 {
        nl.add_address(index, ip6, prefix6).await?;
    }
    nl.set_up(index).await?;
    // Once up: GRO turned on while the veth is down enables NAPI at open, but the kernel (6.18)
    // then does not mark the peer as a target of XDP redirects.
    enable_gro(&ifname)?;
    if let Some(lo) = nl.link_index("lo").await? {
        nl.set_up(lo).await?;
    }
    let default_route = match default_gateway {
        Some(gw) => nl.add_default_route(gw).await?,
        None => false,
    };
    // An IPv6 default route, unless the namespace has one already.
    if let Some((_, _, Some(gateway6))) = ipv6 {
        nl.add_default_route(gateway6).await?;
    }
    Ok(default_route)
}

/// Turns GRO on for interface `ifname` (ethtool's `gro on`, through the ioctl: no netlink
/// family for features here). On a veth it also turns on NAPI, which a frame redirected to the
/// peer in XDP needs to be received (otherwise the kernel drops it); and the container's stack
/// gets fewer, larger packets from the host.
pub fn enable_gro(ifname: &str) -> Result<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: 1 };
    // SAFETY: an all-zero ifreq is valid; the name is copied in with its terminating zero
    // (names are at most 15 bytes, checked), and the union carries a pointer to `value`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(ifname.len() < req.ifr_name.len(), "interface name {ifname} is too long");
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: a datagram socket for the ioctl, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(fd >= 0, "opening a socket for ethtool: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new socket we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("turning GRO on for {ifname}"));
    }
    Ok(())
}

/// Points the namespace's default routes at `gateway` and `gateway6` (when the endpoint that
/// had them leaves); an IPv6 one the namespace has already stays. Returns whether the IPv4 one
/// was set.
pub async fn set_container_default_routes(gateway: Option<IpAddr>, gateway6: Option<IpAddr>) -> Result<bool> {
    let nl = Netlink::connect()?;
    if let Some(gateway6) = gateway6 {
        nl.add_default_route(gateway6).await?;
    }
    match gateway {
        Some(gateway) => nl.add_default_route(gateway).await,
        None => Ok(false),
    }
}
