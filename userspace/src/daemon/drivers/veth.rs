//! The `veth` driver, every network's today: a veth pair per endpoint, the container's side
//! created inside its namespace (or here, for an engine to move), the host side marked with the
//! endpoint's alias, carrying the datapath's TC program (a cls_bpf filter), with a /32 route and a
//! permanent neighbour entry; the datapath's maps (IFACES, ENDPOINTS, PORTS) say who sends on it
//! and where to deliver.
use std::{fs::File, net::IpAddr};

use anyhow::{Context, Result};
use datapath_common::{EndpointInfo, GATEWAY_MAC};

use super::{Kernel, NetworkDriver};
use crate::{
    daemon::{crash_point, endpoint_alias, endpoints::iface_info, in_netns, reconcile::endpoint_link, HOST_VETH_PREFIX},
    datapath::{datapath_ipv4, datapath_ipv6},
    netns::NetnsRef,
    plumbing::{self, LinkInfo, Netlink},
    state::{Endpoint, Network},
};

/// The container already has an interface with the name its new endpoint was to get.
#[derive(Debug)]
pub(in crate::daemon) struct InterfaceExists;

impl std::fmt::Display for InterfaceExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an interface of that name exists in the namespace")
    }
}

pub(in crate::daemon) fn host_veth_name(endpoint_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", &endpoint_id[..11])
}

fn endpoint_info(net: &Network, ep: &Endpoint, host_ifindex: u32) -> EndpointInfo {
    EndpointInfo { host_ifindex, network_id: net.datapath_id, mac: ep.mac, ..Default::default() }
}

/// IPv6 on an endpoint's host side: off on an IPv4-only network; on a dual-stack one on, but
/// with no address of its own (no link-local, hence no router or neighbour solicitations of its
/// own), no router advertisements taken (a container must not route the host), so that the
/// host takes the container's packets to the gateway and routes to the container over it
/// (forwarding: see [`Veth::program`]).
fn host_side_ipv6(ifname: &str, dual_stack: bool) -> Result<()> {
    if !dual_stack {
        plumbing::write_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1").ok();
        return Ok(());
    }
    for (key, value) in [("addr_gen_mode", "1"), ("accept_ra", "0"), ("accept_dad", "0"), ("disable_ipv6", "0")] {
        plumbing::write_sysctl(&format!("net/ipv6/conf/{ifname}/{key}"), value)?;
    }
    Ok(())
}

/// Lets an endpoint's host side `ifname` forward IPv6 (see [`Veth::program`]); again after a
/// rewrite of `net.ipv6.conf.all.forwarding` turned it off (see `uplinks::lo_forwards_ipv6`).
pub(in crate::daemon) fn forward_ipv6(ifname: &str) -> Result<()> {
    plumbing::write_sysctl(&format!("net/ipv6/conf/{ifname}/forwarding"), "1")?;
    // Linux 6.17 and later; before, what the datapath leaves to the host is forwarded only where
    // the host forwards IPv6 (net.ipv6.conf.all.forwarding).
    if let Err(e) = plumbing::write_sysctl(&format!("net/ipv6/conf/{ifname}/force_forwarding"), "1") {
        log::debug!("{ifname}: no force_forwarding ({e:#})");
    }
    Ok(())
}

/// The driver (no state of its own: the kernel and the state say everything). `mtu`: the
/// endpoints' (an overlay network's leaves room for the encapsulation); `None`: the kernel's.
pub(in crate::daemon) struct Veth {
    pub mtu: Option<u32>,
}

impl NetworkDriver for Veth {
    /// Makes the endpoint's veth pair, the container's side named `peer` inside `peer_netns` (or,
    /// without one, here, for an engine to move), marks the host side and programs the datapath
    /// for it. Returns the host side's index. On error the caller tears down whatever was made.
    async fn make(&self, mut k: Kernel<'_>, net: &Network, ep: &mut Endpoint, backend: bool, peer: &str, peer_netns: Option<&File>) -> Result<u32> {
        // A host side left by an earlier attachment of this endpoint whose removal failed: its
        // name is the one the new veth takes. Asked for by name: a dump of every interface costs
        // the kernel a search of every peer namespace per veth (45 ms at 1,000 endpoints).
        let same_name = k.netlink.link_by_name(&ep.host_interface).await?;
        if let Some(stale) = same_name.as_ref().and_then(|l| endpoint_link(std::slice::from_ref(l), ep)) {
            log::warn!("endpoint {}: removing {}, left by an earlier attachment", &ep.id[..12], stale.name);
            k.netlink.delete_link(stale.index).await?;
        }
        let index = k
            .netlink
            .create_veth(&ep.host_interface, GATEWAY_MAC, peer, ep.mac, peer_netns, self.mtu)
            .await
            .map_err(|e| if plumbing::errno(&e) == Some(libc::EEXIST) { e.context(InterfaceExists) } else { e })?;
        ep.host_ifindex = index;
        crash_point("veth-unlabelled");
        k.netlink.set_alias(index, &endpoint_alias(&ep.id)).await?;
        crash_point("veth");
        host_side_ipv6(&ep.host_interface, ep.address6.is_some())?;
        let host_side = LinkInfo { index, name: ep.host_interface.clone(), alias: Some(endpoint_alias(&ep.id)) };
        self.program(k.reborrow(), net, ep, backend, &host_side).await?;
        crash_point("programmed");
        Ok(index)
    }

    /// The host side of an endpoint whose veth `link` exists: maps, program, link up, route,
    /// neighbour. Idempotent (used by connect and by the reconciler).
    async fn program(&self, k: Kernel<'_>, net: &Network, ep: &Endpoint, backend: bool, link: &LinkInfo) -> Result<()> {
        // Maps before the program: the first packet must find its entries.
        k.datapath.set_iface(link.index, iface_info(net, ep, backend)?)?;
        for address in ep.addresses() {
            k.datapath.set_endpoint(address, endpoint_info(net, ep, link.index))?;
        }
        for port in &ep.ports {
            for (key, target) in ep.port_entries(port) {
                k.datapath.set_port(key, target)?;
            }
        }
        k.datapath.attach_endpoint(&link.name)?;
        k.netlink.set_up(link.index).await?;
        if let (Some(address4), Some(v4)) = (ep.address4, net.ipv4) {
            k.netlink.replace_host_route(address4, link.index, v4.gateway).await?;
            k.netlink.replace_neighbour(link.index, address4, ep.mac).await?;
        }
        if let (Some(address6), Some(v6)) = (ep.address6, net.ipv6) {
            // Forwarding on this interface only (the host's `all` setting, which would stop its
            // uplinks taking router advertisements, stays): the datapath's FIB lookups for a
            // container's IPv6 (NAT66) answer only where the packet's interface forwards, and
            // what the datapath leaves to the host (a packet too big for the uplink, a hop limit
            // running out, a network without masquerade) is forwarded or answered as IPv4's is.
            // Here, not at creation: endpoints of an older version get it.
            forward_ipv6(&link.name)?;
            k.netlink.replace_host_route(address6, link.index, v6.gateway).await?;
            k.netlink.replace_neighbour(link.index, address6, ep.mac).await?;
        }
        Ok(())
    }

    async fn configure_container(&self, k: Kernel<'_>, net: &Network, ep: &mut Endpoint, backend: bool, ns: &NetnsRef, default_route: bool) -> Result<()> {
        let ifname = ep.interface.clone();
        let ipv4 = ep.address4.zip(net.ipv4).map(|(ip, v4)| (ip, v4.subnet.prefix()));
        // An IPv6 default route from every network with IPv6 that is not internal, unless the
        // namespace has one already (IPv4's goes with `default_route`).
        let ipv6 = ep.address6.zip(net.ipv6).map(|(ip6, v6)| (ip6, v6.subnet.prefix(), (!net.internal).then_some(v6.gateway)));
        let gateway = net.ipv4.filter(|_| default_route).map(|v4| v4.gateway);
        ep.default_route =
            in_netns(ns.file.clone(), move || plumbing::configure_container_side(ifname, ipv4, ipv6, gateway))
                .await
                .context("configuring the container side")?;
        // GRO is on in the container's side now: XDP may deliver into it.
        ep.gro = true;
        k.datapath.set_iface(ep.host_ifindex, iface_info(net, ep, backend)?)?;
        Ok(())
    }

    /// Removes everything an endpoint has in the kernel; `link` is its host-side veth if that
    /// still exists. Idempotent; tolerates half-made endpoints; tries every step even when one
    /// fails, and reports all failures.
    async fn teardown(&self, k: Kernel<'_>, ep: &Endpoint, link: Option<&LinkInfo>, taken: &[IpAddr]) -> Result<()> {
        let mut errors: Vec<anyhow::Error> = Vec::new();
        // IFACES is keyed by the host veth's ifindex: take it from the veth, the record, or, when
        // the veth died with its namespace, from the endpoint's ENDPOINTS entry.
        let mut indexes: Vec<u32> = link.map(|l| l.index).into_iter().collect();
        if ep.host_ifindex != 0 {
            indexes.push(ep.host_ifindex);
        }
        match k.datapath.endpoint(ep.address()) {
            Ok(Some(info)) if info.mac == ep.mac => indexes.push(info.host_ifindex),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        indexes.sort_unstable();
        indexes.dedup();
        for &index in &indexes {
            match k.datapath.iface(index) {
                Ok(Some(info)) if info.ipv4 == datapath_ipv4(ep.address4) && info.ipv6 == datapath_ipv6(ep.address6) && info.mac == ep.mac => {
                    if let Err(e) = k.datapath.remove_iface(index) {
                        errors.push(e);
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        // Only the addresses no other endpoint holds (one may have been handed out again meanwhile).
        for address in ep.addresses().filter(|a| !taken.contains(a)) {
            if let Err(e) = k.datapath.remove_endpoint(address) {
                errors.push(e);
            }
        }
        for port in &ep.ports {
            for (key, target) in ep.port_entries(port) {
                if let Err(e) = k.datapath.remove_port_if(key, target) {
                    errors.push(e);
                }
            }
        }
        // Deleting the host side deletes the pair, its routes and neighbours, and the program's
        // filter with them: the container's packets never reach the host unchecked meanwhile.
        if let Some(link) = link {
            match k.netlink.delete_link(link.index).await {
                // Still there: it keeps its program (the next start removes it, unrecorded).
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => errors.push(e),
                _ => {}
            }
        }
        // Its connections, once nothing can add one: a later endpoint with the same address must
        // not inherit them (but an endpoint that holds the address already keeps its own).
        let untaken: Vec<IpAddr> = ep.addresses().filter(|a| !taken.contains(a)).collect();
        k.conntrack.forget_endpoint(&indexes, &untaken);
        match errors.len() {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!(errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "))),
        }
    }

    /// The host-side veth of `ep` as it is now (it may have been renamed): by its recorded index
    /// when that still carries the endpoint's mark, else by a search of every interface.
    async fn locate(&self, netlink: &Netlink, ep: &Endpoint) -> Result<Option<LinkInfo>> {
        if ep.host_ifindex != 0 {
            if let Some(link) = netlink.link_by_index(ep.host_ifindex).await? {
                if endpoint_link(std::slice::from_ref(&link), ep).is_some() {
                    return Ok(Some(link));
                }
            }
        }
        Ok(endpoint_link(&netlink.links().await?, ep).cloned())
    }
}
