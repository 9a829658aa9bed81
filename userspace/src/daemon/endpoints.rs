//! The endpoint lifecycle: connect (allocate an address, create the veth pair into the
//! namespace, program the datapath, configure the container side) and disconnect.
//!
//! A connect is write-ahead logged: its record goes into `State::connecting` before the first
//! kernel change and is replaced by the endpoint's record when everything is in place, so a crash
//! at any point leaves a record of what to remove (see `reconcile`).
use datapath_common::{iface_flags, EndpointInfo, IfaceInfo, GATEWAY_MAC};

use anyhow::{Context, Result};

use super::{crash_point, endpoint_alias, in_netns, reconcile::endpoint_link, Daemon, DaemonResult, Error, HOST_VETH_PREFIX};
use crate::{
    api, ids, ipam,
    netns::{self, NetnsRef},
    plumbing::{self, LinkInfo},
    ports::{self, PublishedPort},
    state::{Endpoint, Network},
};

/// The container already has an interface with the name its new endpoint was to get.
#[derive(Debug)]
struct InterfaceExists;

impl std::fmt::Display for InterfaceExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an interface of that name exists in the namespace")
    }
}

fn host_veth_name(endpoint_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", &endpoint_id[..11])
}

fn iface_info(net: &Network, ep: &Endpoint) -> IfaceInfo {
    let mut flags = 0;
    if !net.icc {
        flags |= iface_flags::ICC_DISABLED;
    }
    if net.internal {
        flags |= iface_flags::INTERNAL;
    }
    if net.masquerade && !net.internal {
        flags |= iface_flags::MASQUERADE;
    }
    IfaceInfo {
        network_id: net.datapath_id,
        ipv4: ep.ipv4.octets(),
        gateway_ipv4: net.gateway.octets(),
        flags,
        mac: ep.mac,
        _pad: [0; 2],
    }
}

fn endpoint_info(net: &Network, ep: &Endpoint, host_ifindex: u32) -> EndpointInfo {
    EndpointInfo { host_ifindex, network_id: net.datapath_id, mac: ep.mac, _pad: [0; 2] }
}

impl Daemon {
    /// Connects the namespace `ns` (resolved by the caller, before taking the daemon's lock).
    pub async fn connect(&mut self, network: &str, ns: NetnsRef, req: api::Connect) -> DaemonResult<api::EndpointCreated> {
        let net = self.network(network)?.clone();
        let own = netns::current().map_err(Error::internal)?;
        if (ns.dev, ns.inode) == own {
            return Err(Error::invalid(format!("{:?} is the daemon's own namespace, not a container's", req.netns)));
        }
        let in_ns: Vec<&Endpoint> = self.state.endpoints_in_netns(ns.dev, ns.inode).collect();
        if in_ns.iter().any(|e| e.network_id == net.id) {
            return Err(Error::conflict(format!("{} is already connected to network {network:?}", req.netns)));
        }
        for alias in &req.aliases {
            ipam::validate_name("alias", alias).map_err(Error::invalid)?;
        }
        let ports = self.check_ports(&net, &req.publish).await?;
        let ip = ipam::choose_address(&self.state, &net.id, req.ip.as_deref()).map_err(Error::refused)?;
        let interface = (0..).map(|n| format!("eth{n}")).find(|name| !in_ns.iter().any(|e| &e.interface == name)).unwrap();
        let wants_default_route = !net.internal && !in_ns.iter().any(|e| e.default_route);
        let id = ids::random_id();
        let mut ep = Endpoint {
            host_interface: host_veth_name(&id),
            host_ifindex: 0,
            id,
            network_id: net.id.clone(),
            container_id: in_ns.first().map(|e| e.container_id.clone()).unwrap_or_else(ids::random_id),
            container_name: req.netns.clone(),
            netns_path: ns.path.clone(),
            netns_dev: ns.dev,
            netns_inode: ns.inode,
            interface,
            ipv4: ip,
            mac: ipam::mac_for(ip),
            aliases: req.aliases.clone(),
            default_route: false,
            ports,
        };

        // Write ahead: from here on a crash leaves a record of what this connect made.
        self.state.connecting.push(ep.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.connecting.retain(|c| c.id != ep.id);
            return Err(Error::internal(e));
        }
        let applied = self.apply_endpoint(&net, &ns, &mut ep, wants_default_route).await;
        crash_point("configured");
        self.state.connecting.retain(|c| c.id != ep.id);
        if let Err(e) = applied {
            self.undo_connect(&ep).await;
            return Err(if e.downcast_ref::<InterfaceExists>().is_some() {
                Error::conflict(format!(
                    "cannot create {} in {}: an interface of that name exists there already",
                    ep.interface, req.netns
                ))
            } else {
                Error::internal(e)
            });
        }
        self.state.endpoints.push(ep.clone());
        if let Err(e) = self.commit() {
            self.state.endpoints.pop();
            self.undo_connect(&ep).await;
            return Err(Error::internal(e));
        }
        log::info!(
            "endpoint {} connected: {} {} {}/{} on network {} (host side {})",
            &ep.id[..12],
            ep.container_name,
            ep.interface,
            ep.ipv4,
            net.subnet.prefix(),
            net.name,
            ep.host_interface
        );
        Ok(api::EndpointCreated {
            endpoint_id: ep.id.clone(),
            network: net.name.clone(),
            interface: ep.interface.clone(),
            host_interface: ep.host_interface.clone(),
            ipv4_address: format!("{}/{}", ep.ipv4, net.subnet.prefix()),
            mac_address: ipam::format_mac(&ep.mac),
            ports: ep.ports.iter().map(|p| p.to_string()).collect(),
        })
    }

    /// Parses `-p` values and refuses what cannot be published: bad specs, a host address that
    /// is not the daemon's, a port another endpoint (or this request) already holds.
    async fn check_ports(&self, net: &Network, specs: &[String]) -> DaemonResult<Vec<PublishedPort>> {
        if specs.is_empty() {
            return Ok(vec![]);
        }
        if net.internal {
            return Err(Error::invalid(format!(
                "network {:?} is internal: nothing reaches its containers from outside, so they cannot publish ports",
                net.name
            )));
        }
        let local = self.netlink.host_addresses("").await.map_err(Error::internal)?;
        let mut ports: Vec<PublishedPort> = Vec::new();
        for spec in specs {
            let port = ports::parse(spec).map_err(Error::invalid)?;
            if let Some(ip) = port.host_ip {
                if !local.iter().any(|a| a.ip == ip) {
                    return Err(Error::invalid(format!(
                        "cannot publish {spec:?}: {ip} is not an address of the daemon's namespace"
                    )));
                }
            }
            if let Some(other) = ports.iter().find(|q| q.overlaps(&port)) {
                return Err(Error::invalid(format!("{spec:?} overlaps {other}, published by the same request")));
            }
            for ep in &self.state.endpoints {
                if let Some(held) = ep.ports.iter().find(|q| q.overlaps(&port)) {
                    let network = self.state.network_by_id(&ep.network_id).map_or("?", |n| n.name.as_str());
                    return Err(Error::conflict(format!(
                        "cannot publish {spec:?}: {held} is already published by {} (network {network:?}, endpoint {})",
                        ep.container_name,
                        &ep.id[..12]
                    )));
                }
            }
            ports.push(port);
        }
        Ok(ports)
    }

    /// Removes what a failed connect made and its write-ahead record. If that fails, the record
    /// stays on disk and the next start finishes the job.
    async fn undo_connect(&mut self, ep: &Endpoint) {
        let link = match self.netlink.links().await {
            Ok(links) => endpoint_link(&links, ep).cloned(),
            Err(e) => {
                log::warn!("undoing the connect of {}: {e:#}", ep.container_name);
                None
            }
        };
        match self.teardown_endpoint(ep, link.as_ref()).await {
            Ok(()) => {
                if let Err(e) = self.store.save(&self.state) {
                    log::warn!("undoing the connect of {}: {e:#} (finished at the next start)", ep.container_name);
                }
            }
            Err(e) => {
                log::warn!("undoing the connect of {}: {e:#} (finished at the next start)", ep.container_name);
                // Keep the write-ahead record, so every later save still says what to remove.
                self.state.connecting.push(ep.clone());
            }
        }
    }

    /// Creates the endpoint in the kernel. On error the caller tears down whatever was made.
    async fn apply_endpoint(&mut self, net: &Network, ns: &NetnsRef, ep: &mut Endpoint, wants_default_route: bool) -> Result<()> {
        let index = self
            .netlink
            .create_veth(&ep.host_interface, GATEWAY_MAC, &ep.interface, ep.mac, &ns.file)
            .await
            .map_err(|e| if plumbing::errno(&e) == Some(libc::EEXIST) { e.context(InterfaceExists) } else { e })?;
        ep.host_ifindex = index;
        crash_point("veth-unlabelled");
        self.netlink.set_alias(index, &endpoint_alias(&ep.id)).await?;
        crash_point("veth");
        plumbing::write_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", ep.host_interface), "1").ok();
        let host_side = LinkInfo { index, name: ep.host_interface.clone(), alias: Some(endpoint_alias(&ep.id)) };
        self.program_endpoint(net, ep, &host_side).await?;
        crash_point("programmed");
        let (ifname, ip, prefix) = (ep.interface.clone(), ep.ipv4, net.subnet.prefix());
        let gateway = wants_default_route.then_some(net.gateway);
        ep.default_route =
            in_netns(ns.file.clone(), move || plumbing::configure_container_side(ifname, ip, prefix, gateway))
                .await
                .context("configuring the container side")?;
        Ok(())
    }

    /// The host side of an endpoint whose veth `link` exists: maps, program, link up, route,
    /// neighbour. Idempotent (used by connect and by the reconciler).
    pub(super) async fn program_endpoint(&mut self, net: &Network, ep: &Endpoint, link: &LinkInfo) -> Result<()> {
        // Maps before the program: the first packet must find its entries.
        self.datapath.set_iface(link.index, iface_info(net, ep))?;
        self.datapath.set_endpoint(ep.ipv4, endpoint_info(net, ep, link.index))?;
        for port in &ep.ports {
            for (key, target) in port.entries(ep.ipv4) {
                self.datapath.set_port(key, target)?;
            }
        }
        self.datapath.attach(&ep.host_interface, &link.name)?;
        self.netlink.set_up(link.index).await?;
        self.netlink.replace_host_route(ep.ipv4, link.index, net.gateway).await?;
        self.netlink.replace_neighbour(link.index, ep.ipv4, ep.mac).await?;
        Ok(())
    }

    /// Removes everything an endpoint has in the kernel; `link` is its host-side veth if that
    /// still exists. Idempotent; tolerates half-made endpoints; tries every step even when one
    /// fails, and reports all failures.
    pub(super) async fn teardown_endpoint(&mut self, ep: &Endpoint, link: Option<&LinkInfo>) -> Result<()> {
        let mut errors: Vec<anyhow::Error> = Vec::new();
        // IFACES is keyed by the host veth's ifindex: take it from the veth, the record, or, when
        // the veth died with its namespace, from the endpoint's ENDPOINTS entry.
        let mut indexes: Vec<u32> = link.map(|l| l.index).into_iter().collect();
        if ep.host_ifindex != 0 {
            indexes.push(ep.host_ifindex);
        }
        match self.datapath.endpoint(ep.ipv4) {
            Ok(Some(info)) if info.mac == ep.mac => indexes.push(info.host_ifindex),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        indexes.sort_unstable();
        indexes.dedup();
        for &index in &indexes {
            match self.datapath.iface(index) {
                Ok(Some(info)) if info.ipv4 == ep.ipv4.octets() => {
                    if let Err(e) = self.datapath.remove_iface(index) {
                        errors.push(e);
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        // Only if no other endpoint holds the address (it may have been handed out again meanwhile).
        if !self.state.endpoints.iter().any(|o| o.id != ep.id && o.ipv4 == ep.ipv4) {
            if let Err(e) = self.datapath.remove_endpoint(ep.ipv4) {
                errors.push(e);
            }
        }
        if let Err(e) = self.datapath.detach(&ep.host_interface) {
            errors.push(e);
        }
        for port in &ep.ports {
            for (key, target) in port.entries(ep.ipv4) {
                if let Err(e) = self.datapath.remove_port_if(key, target) {
                    errors.push(e);
                }
            }
        }
        // Its connections: a later endpoint with the same address must not inherit them (but an
        // endpoint that holds the address already keeps its own).
        let addr = (!self.state.endpoints.iter().any(|o| o.id != ep.id && o.ipv4 == ep.ipv4)).then_some(ep.ipv4);
        self.conntrack.forget_endpoint(&indexes, addr);
        // Deleting the host side deletes the pair, its routes and neighbours, and the TCX link.
        if let Some(link) = link {
            match self.netlink.delete_link(link.index).await {
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => errors.push(e),
                _ => {}
            }
        }
        match errors.len() {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!(errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "))),
        }
    }

    /// The host-side veth of `ep` as it is now (it may have been renamed): by its recorded index
    /// when that still carries the endpoint's mark, else by a search of every interface.
    pub(super) async fn locate(&self, ep: &Endpoint) -> Result<Option<LinkInfo>> {
        if ep.host_ifindex != 0 {
            if let Some(link) = self.netlink.link_by_index(ep.host_ifindex).await? {
                if endpoint_link(std::slice::from_ref(&link), ep).is_some() {
                    return Ok(Some(link));
                }
            }
        }
        Ok(endpoint_link(&self.netlink.links().await?, ep).cloned())
    }

    /// Disconnects the namespace named `netns_arg` (`identity`: its (dev, inode), when the caller
    /// could resolve it) from `network`.
    pub async fn disconnect(&mut self, network: &str, netns_arg: &str, identity: Option<(u64, u64)>) -> DaemonResult<()> {
        let net = self.network(network)?.clone();
        let ep = self
            .state
            .endpoints_of(&net.id)
            .find(|e| Some((e.netns_dev, e.netns_inode)) == identity || e.container_name == netns_arg)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{netns_arg} is not connected to network {:?}", net.name)))?;
        let link = self.locate(&ep).await.unwrap_or_else(|e| {
            log::warn!("disconnecting {netns_arg}: {e:#}");
            None
        });
        if let Err(e) = self.teardown_endpoint(&ep, link.as_ref()).await {
            // Whatever is left carries the bpfnet alias: the next start removes it as unrecorded.
            log::warn!("disconnecting {netns_arg}: {e:#}");
        }
        self.state.endpoints.retain(|e| e.id != ep.id);
        if ep.default_route {
            self.move_default_route(&ep).await;
        }
        self.commit().map_err(Error::internal)?;
        log::info!("endpoint {} disconnected: {} {} {} from network {}", &ep.id[..12], ep.container_name, ep.interface, ep.ipv4, net.name);
        Ok(())
    }

    /// After the endpoint holding a namespace's default route left, route through another one.
    pub(super) async fn move_default_route(&mut self, gone: &Endpoint) {
        let next = self.state.endpoints.iter().position(|e| {
            e.netns_dev == gone.netns_dev
                && e.netns_inode == gone.netns_inode
                && self.state.network_by_id(&e.network_id).is_some_and(|n| !n.internal)
        });
        let Some(i) = next else { return };
        let gateway = self.state.network_by_id(&self.state.endpoints[i].network_id).unwrap().gateway;
        let path = self.state.endpoints[i].netns_path.display().to_string();
        // The path may now name another namespace: only the one the endpoints live in will do.
        let ns = match netns::resolve(&path) {
            Ok(ns) if (ns.dev, ns.inode) == (gone.netns_dev, gone.netns_inode) => ns,
            _ => return,
        };
        match in_netns(ns.file, move || plumbing::set_container_default_route(gateway)).await {
            Ok(set) => self.state.endpoints[i].default_route = set,
            Err(e) => log::warn!("could not move the default route of {}: {e:#}", gone.container_name),
        }
    }
}
