//! The endpoint lifecycle, in the steps front-ends drive: `allocate` (an address, a MAC, names and
//! published ports reserved on a network; no kernel change), `attach` (the veth pair into a
//! namespace under a given interface name, the datapath programmed, the container side
//! configured), `detach` (the kernel side removed, the allocation kept), `release` (the
//! allocation freed). `connect` is allocate + attach as one change and `disconnect` detach +
//! release; Docker's CreateEndpoint/Join/Leave/DeleteEndpoint and CNI's ADD/DEL map onto the
//! same steps.
//!
//! An attach is write-ahead logged: its record goes into `State::connecting` before the first
//! kernel change and the endpoint's record replaces it when everything is in place, so a crash
//! at any point leaves a record of what to remove (see `reconcile`).
use datapath_common::{iface_flags, EndpointInfo, IfaceInfo, GATEWAY_MAC};

use anyhow::{Context, Result};

use super::{crash_point, endpoint_alias, in_netns, publish, reconcile::endpoint_link, views, Daemon, DaemonResult, Error, HOST_VETH_PREFIX};
use crate::{
    api,
    datapath::datapath_ipv4,
    ids, ipam,
    netns::{self, NetnsRef},
    plumbing::{self, LinkInfo},
    ports::{self, PublishedPort},
    state::{Allocation, Endpoint, Frontend, Network},
};

/// The container already has an interface with the name its new endpoint was to get.
#[derive(Debug)]
struct InterfaceExists;

impl std::fmt::Display for InterfaceExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an interface of that name exists in the namespace")
    }
}

pub(super) fn host_veth_name(endpoint_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", &endpoint_id[..11])
}

/// What the datapath knows of the sender on an endpoint's host-side veth; `backend`: the
/// endpoint serves some service.
pub(super) fn iface_info(net: &Network, ep: &Endpoint, backend: bool) -> Result<IfaceInfo> {
    let mut flags = 0;
    if backend {
        flags |= iface_flags::SERVICE_BACKEND;
    }
    if !net.icc {
        flags |= iface_flags::ICC_DISABLED;
    }
    if net.internal {
        flags |= iface_flags::INTERNAL;
    }
    if net.masquerade && !net.internal {
        flags |= iface_flags::MASQUERADE;
    }
    if ep.gro {
        flags |= iface_flags::XDP_DELIVERY;
    }
    Ok(IfaceInfo {
        network_id: net.datapath_id,
        ipv4: datapath_ipv4(ep.address)?,
        gateway_ipv4: datapath_ipv4(net.gateway)?,
        flags,
        mac: ep.mac,
        _pad: [0; 2],
    })
}

/// An endpoint found by id: attached to a namespace, or only allocated.
pub(super) enum Found<'a> {
    Attached(&'a Endpoint),
    Allocated(&'a Allocation),
}

fn endpoint_info(net: &Network, ep: &Endpoint, host_ifindex: u32) -> EndpointInfo {
    EndpointInfo { host_ifindex, network_id: net.datapath_id, mac: ep.mac, _pad: [0; 2] }
}

impl Daemon {
    /// Connects the namespace `ns` (resolved by the caller, before taking the daemon's lock):
    /// allocate + attach, as one change; if the attach fails nothing is left, not even the
    /// allocation.
    pub async fn connect(&mut self, network: &str, ns: NetnsRef, req: api::Connect) -> DaemonResult<api::EndpointCreated> {
        let net = self.network(network)?.clone();
        self.check_namespace(&net, &ns, &req.netns)?;
        let allocation = self.new_allocation(&net, req.netns.clone(), req.spec, Frontend::Api, None, false).await?;
        self.attach_allocation(&net, allocation, &ns, &req.netns, None, "connected").await
    }

    /// Reserves an address (and the published ports) on `network` for a container that a
    /// front-end attaches later. Persisted; nothing in the kernel changes.
    pub async fn allocate(&mut self, network: &str, name: String, spec: api::EndpointSpec) -> DaemonResult<api::EndpointView> {
        self.allocate_for(network, name, spec, Frontend::Api, None).await
    }

    /// [`Self::allocate`] for a front-end, under the id the front-end gave it (Docker's endpoint
    /// id) or a new one.
    pub async fn allocate_for(
        &mut self,
        network: &str,
        name: String,
        spec: api::EndpointSpec,
        frontend: Frontend,
        id: Option<String>,
    ) -> DaemonResult<api::EndpointView> {
        let net = self.network(network)?.clone();
        ipam::validate_name("container", &name).map_err(Error::invalid)?;
        if let Some(id) = &id {
            if id.len() < 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::invalid(format!("endpoint id {id:?} is not hexadecimal of at least 12 digits")));
            }
            if self.state.all_allocations().any(|a| &a.id == id) {
                return Err(Error::conflict(format!("endpoint {} exists already", &id[..12])));
            }
        }
        let allocation = self.new_allocation(&net, name, spec, frontend, id, true).await?;
        self.state.allocations.push(allocation.clone());
        if let Err(e) = self.commit() {
            self.state.allocations.pop();
            return Err(Error::internal(e));
        }
        log::info!(
            "endpoint {} allocated: {} {}/{} on network {}",
            &allocation.id[..12],
            allocation.container_name,
            allocation.address,
            net.subnet.prefix(),
            net.name
        );
        Ok(views::allocation_view(&self.state, &allocation, None))
    }

    /// Attaches the allocation `id` (or a unique prefix of it) to the namespace `ns`, as
    /// `interface` (default: the first free ethN).
    pub async fn attach(&mut self, id: &str, ns: NetnsRef, req: api::Attach) -> DaemonResult<api::EndpointCreated> {
        let allocation = match self.find_endpoint(id)? {
            Found::Attached(ep) => {
                return Err(Error::conflict(format!(
                    "endpoint {} is already attached to {} as {}",
                    &ep.id[..12],
                    ep.netns_path.display(),
                    ep.interface
                )))
            }
            Found::Allocated(a) => a.clone(),
        };
        if let Some(name) = &req.interface {
            ipam::validate_interface_name(name).map_err(Error::invalid)?;
        }
        let net = self.state.network_by_id(&allocation.network_id).cloned().ok_or_else(|| {
            Error::internal(anyhow::anyhow!("endpoint {} belongs to no network", &allocation.id[..12]))
        })?;
        self.check_namespace(&net, &ns, &req.netns)?;
        self.attach_allocation(&net, allocation, &ns, &req.netns, req.interface, "attached").await
    }

    /// Removes the kernel side of the attached endpoint `id`; its allocation stays.
    pub async fn detach(&mut self, id: &str) -> DaemonResult<api::EndpointView> {
        let ep = match self.find_endpoint(id)? {
            Found::Attached(ep) => ep.clone(),
            Found::Allocated(a) => return Err(Error::conflict(format!("endpoint {} is not attached", &a.id[..12]))),
        };
        self.remove_endpoint(&ep, true).await?;
        log::info!("endpoint {} detached: {} {} {}", &ep.id[..12], ep.container_name, ep.interface, ep.address);
        Ok(views::allocation_view(&self.state, &ep.allocation, None))
    }

    /// Frees the endpoint `id`: detached first if it is attached.
    pub async fn release(&mut self, id: &str) -> DaemonResult<()> {
        match self.find_endpoint(id)? {
            Found::Attached(ep) => {
                let ep = ep.clone();
                self.remove_endpoint(&ep, false).await?;
                log::info!("endpoint {} detached and released: {} {}", &ep.id[..12], ep.container_name, ep.address);
            }
            Found::Allocated(a) => {
                let a = a.clone();
                let before = self.state.clone();
                self.state.allocations.retain(|x| x.id != a.id);
                if let Err(e) = self.commit() {
                    self.state = before;
                    return Err(Error::internal(e));
                }
                log::info!("endpoint {} released: {} {}", &a.id[..12], a.container_name, a.address);
            }
        }
        Ok(())
    }

    /// The endpoint whose id is `id` or starts with it.
    pub(super) fn find_endpoint(&self, id: &str) -> DaemonResult<Found<'_>> {
        let attached = self.state.endpoints.iter().map(|e| (e.id.as_str(), Found::Attached(e)));
        let allocated = self.state.allocations.iter().map(|a| (a.id.as_str(), Found::Allocated(a)));
        views::endpoint_by_id(id, attached.chain(allocated))
    }

    /// Refuses a namespace that cannot take an endpoint of `net`: the daemon's own, or one
    /// connected to `net` already.
    fn check_namespace(&self, net: &Network, ns: &NetnsRef, netns_arg: &str) -> DaemonResult<()> {
        let own = netns::current().map_err(Error::internal)?;
        if (ns.dev, ns.inode) == own {
            return Err(Error::invalid(format!("{netns_arg:?} is the daemon's own namespace, not a container's")));
        }
        if self.state.endpoints_in_netns(ns.dev, ns.inode).any(|e| e.network_id == net.id) {
            return Err(Error::conflict(format!("{netns_arg} is already connected to network {:?}", net.name)));
        }
        Ok(())
    }

    /// A new allocation on `net`, checked against every other (address, ports), not yet stored.
    /// `id`: the front-end's id for it (else a new one). Only endpoints of bpfnet's `connect` are
    /// freed with their namespace; those of `allocate` are kept until the front-end releases them.
    async fn new_allocation(
        &self,
        net: &Network,
        name: String,
        req: api::EndpointSpec,
        frontend: Frontend,
        id: Option<String>,
        kept_when_detached: bool,
    ) -> DaemonResult<Allocation> {
        for alias in &req.aliases {
            ipam::validate_name("alias", alias).map_err(Error::invalid)?;
        }
        let ports = self.check_ports(net, &req.publish).await?;
        let address = ipam::choose_address(&self.state, &net.id, req.ip.as_deref()).map_err(Error::refused)?;
        Ok(Allocation {
            id: id.unwrap_or_else(ids::random_id),
            network_id: net.id.clone(),
            container_id: ids::random_id(),
            container_name: name,
            address,
            mac: ipam::mac_for(address),
            aliases: req.aliases,
            ports,
            kept_when_detached,
            frontend,
        })
    }

    /// Attaches `allocation` (stored in `State::allocations` or not yet stored) to `ns`. On
    /// success the endpoint replaces the stored allocation; on failure nothing of the attach
    /// remains and a stored allocation stays as it was.
    async fn attach_allocation(
        &mut self,
        net: &Network,
        mut allocation: Allocation,
        ns: &NetnsRef,
        netns_arg: &str,
        interface: Option<String>,
        verb: &str,
    ) -> DaemonResult<api::EndpointCreated> {
        let in_ns: Vec<&Endpoint> = self.state.endpoints_in_netns(ns.dev, ns.inode).collect();
        let interface = match interface {
            Some(name) if in_ns.iter().any(|e| e.interface == name) => {
                return Err(Error::conflict(format!("{netns_arg} already has an endpoint named {name}")));
            }
            Some(name) => name,
            None => (0..).map(|n| format!("eth{n}")).find(|name| !in_ns.iter().any(|e| &e.interface == name)).unwrap(),
        };
        let wants_default_route = !net.internal && !in_ns.iter().any(|e| e.default_route);
        // Endpoints of one namespace share its container id.
        if let Some(other) = in_ns.first() {
            allocation.container_id = other.container_id.clone();
        }
        let mut ep = Endpoint {
            host_interface: host_veth_name(&allocation.id),
            host_ifindex: 0,
            allocation,
            netns_path: ns.path.clone(),
            netns_dev: ns.dev,
            netns_inode: ns.inode,
            interface,
            default_route: false,
            gro: false,
        };

        self.write_ahead(&ep)?;
        let applied = self.apply_endpoint(net, ns, &mut ep, wants_default_route).await;
        crash_point("configured");
        self.state.connecting.retain(|c| c.id != ep.id);
        if let Err(e) = applied {
            self.undo_connect(&ep).await;
            return Err(if e.downcast_ref::<InterfaceExists>().is_some() {
                Error::conflict(format!(
                    "cannot create {} in {netns_arg}: an interface of that name exists there already",
                    ep.interface
                ))
            } else {
                Error::internal(e)
            });
        }
        self.commit_attached(&ep).await?;
        log::info!(
            "endpoint {} {verb}: {} {} {}/{} on network {} (host side {})",
            &ep.id[..12],
            ep.container_name,
            ep.interface,
            ep.address,
            net.subnet.prefix(),
            net.name,
            ep.host_interface
        );
        Ok(api::EndpointCreated {
            endpoint_id: ep.id.clone(),
            network: net.name.clone(),
            interface: ep.interface.clone(),
            host_interface: ep.host_interface.clone(),
            ipv4_address: format!("{}/{}", ep.address, net.subnet.prefix()),
            mac_address: ipam::format_mac(&ep.mac),
            ports: ep.ports.iter().map(|p| p.to_string()).collect(),
            resolver: self.dns.then(|| net.gateway.to_string()),
        })
    }

    /// Parses `-p` values and refuses what cannot be published: bad specs, a host address that
    /// is not the daemon's, a port another endpoint (or this request) already holds.
    async fn check_ports(&self, net: &Network, specs: &[String]) -> DaemonResult<Vec<PublishedPort>> {
        if specs.is_empty() {
            return Ok(vec![]);
        }
        publish::refuse_on_internal(net, "its containers' ports")?;
        let local = self.netlink.host_addresses("").await.map_err(Error::internal)?;
        let mut holders = publish::Holders::of(&self.state, None);
        let mut ports: Vec<PublishedPort> = Vec::new();
        for spec in specs {
            let port = ports::parse(spec).map_err(Error::invalid)?;
            publish::check_host_address(port.host_ip, &local, spec)?;
            if let Some(holder) = holders.holder(&port) {
                return Err(holder.refusal(spec));
            }
            holders.take(port, None);
            ports.push(port);
        }
        Ok(ports)
    }

    /// Write ahead: records `ep` in `State::connecting` before its first kernel change, so that a
    /// crash from then on leaves a record of what its attach made.
    pub(super) fn write_ahead(&mut self, ep: &Endpoint) -> DaemonResult<()> {
        self.state.connecting.push(ep.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.connecting.retain(|c| c.id != ep.id);
            return Err(Error::internal(e));
        }
        Ok(())
    }

    /// Commits the attached endpoint `ep` in place of its allocation; if that fails, undoes the
    /// attach (the allocation stays as it was).
    pub(super) async fn commit_attached(&mut self, ep: &Endpoint) -> DaemonResult<()> {
        let before = self.state.clone();
        self.state.allocations.retain(|a| a.id != ep.id);
        self.state.endpoints.push(ep.clone());
        if let Err(e) = self.commit() {
            self.state = before;
            self.undo_connect(ep).await;
            return Err(Error::internal(e));
        }
        Ok(())
    }

    /// Removes what a failed connect made and its write-ahead record. If that fails, the record
    /// stays on disk and the next start finishes the job.
    pub(super) async fn undo_connect(&mut self, ep: &Endpoint) {
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
        let interface = ep.interface.clone();
        let index = self.make_programmed_veth(net, ep, &interface, Some(&ns.file)).await?;
        let (ifname, ip, prefix) = (ep.interface.clone(), ep.address, net.subnet.prefix());
        let gateway = wants_default_route.then_some(net.gateway);
        ep.default_route =
            in_netns(ns.file.clone(), move || plumbing::configure_container_side(ifname, ip, prefix, gateway))
                .await
                .context("configuring the container side")?;
        // GRO is on in the container's side now: XDP may deliver into it.
        ep.gro = true;
        self.datapath.set_iface(index, iface_info(net, ep, self.backend_ids.serves(&ep.id))?)?;
        Ok(())
    }

    /// Makes the endpoint's veth pair, the container's side named `peer` inside `peer_netns` (or,
    /// without one, here, for an engine to move), marks the host side and programs the datapath
    /// for it. Returns the host side's index. On error the caller tears down whatever was made.
    pub(super) async fn make_programmed_veth(
        &mut self,
        net: &Network,
        ep: &mut Endpoint,
        peer: &str,
        peer_netns: Option<&std::fs::File>,
    ) -> Result<u32> {
        // A host side left by an earlier attachment of this endpoint whose removal failed: its
        // name is the one the new veth takes.
        if let Some(stale) = endpoint_link(&self.netlink.links().await?, ep) {
            log::warn!("endpoint {}: removing {}, left by an earlier attachment", &ep.id[..12], stale.name);
            self.netlink.delete_link(stale.index).await?;
        }
        let index = self
            .netlink
            .create_veth(&ep.host_interface, GATEWAY_MAC, peer, ep.mac, peer_netns)
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
        Ok(index)
    }

    /// The host side of an endpoint whose veth `link` exists: maps, program, link up, route,
    /// neighbour. Idempotent (used by connect and by the reconciler).
    pub(super) async fn program_endpoint(&mut self, net: &Network, ep: &Endpoint, link: &LinkInfo) -> Result<()> {
        // Maps before the program: the first packet must find its entries.
        self.datapath.set_iface(link.index, iface_info(net, ep, self.backend_ids.serves(&ep.id))?)?;
        self.datapath.set_endpoint(ep.address, endpoint_info(net, ep, link.index))?;
        for port in &ep.ports {
            for (key, target) in ep.port_entries(port) {
                self.datapath.set_port(key, target)?;
            }
        }
        self.datapath.attach(&ep.host_interface, &link.name)?;
        self.netlink.set_up(link.index).await?;
        self.netlink.replace_host_route(ep.address, link.index, net.gateway).await?;
        self.netlink.replace_neighbour(link.index, ep.address, ep.mac).await?;
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
        match self.datapath.endpoint(ep.address) {
            Ok(Some(info)) if info.mac == ep.mac => indexes.push(info.host_ifindex),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        indexes.sort_unstable();
        indexes.dedup();
        for &index in &indexes {
            match self.datapath.iface(index) {
                Ok(Some(info)) if Some(info.ipv4) == datapath_ipv4(ep.address).ok() => {
                    if let Err(e) = self.datapath.remove_iface(index) {
                        errors.push(e);
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        // Only if no other endpoint holds the address (it may have been handed out again meanwhile).
        let address_taken = self.state.endpoints.iter().any(|o| o.id != ep.id && o.address == ep.address);
        if !address_taken {
            if let Err(e) = self.datapath.remove_endpoint(ep.address) {
                errors.push(e);
            }
        }
        for port in &ep.ports {
            for (key, target) in ep.port_entries(port) {
                if let Err(e) = self.datapath.remove_port_if(key, target) {
                    errors.push(e);
                }
            }
        }
        // Deleting the host side deletes the pair, its routes and neighbours, and the TCX link.
        // Only then is the link's pin removed: unpinned first, the veth would pass the
        // container's packets to the host unchecked (spoofed ones too) until it is gone.
        let mut gone = true;
        if let Some(link) = link {
            match self.netlink.delete_link(link.index).await {
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => {
                    errors.push(e);
                    // Still there: it keeps its program (the next start removes it, unrecorded).
                    gone = false;
                }
                _ => {}
            }
        }
        if gone {
            if let Err(e) = self.datapath.detach(&ep.host_interface) {
                errors.push(e);
            }
        }
        // Its connections, once nothing can add one: a later endpoint with the same address must
        // not inherit them (but an endpoint that holds the address already keeps its own).
        let addr = (!address_taken).then_some(ep.address);
        self.conntrack.forget_endpoint(&indexes, addr);
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
    /// could resolve it) from `network`: detach + release.
    pub async fn disconnect(&mut self, network: &str, netns_arg: &str, identity: Option<(u64, u64)>) -> DaemonResult<()> {
        let net = self.network(network)?.clone();
        let ep = self
            .state
            .endpoints_of(&net.id)
            .find(|e| {
                // By name only what `connect` made: a front-end's endpoint has a container name
                // of the front-end's, not a namespace's.
                Some((e.netns_dev, e.netns_inode)) == identity || (!e.kept_when_detached && e.container_name == netns_arg)
            })
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{netns_arg} is not connected to network {:?}", net.name)))?;
        self.remove_endpoint(&ep, false).await?;
        log::info!("endpoint {} disconnected: {} {} {} from network {}", &ep.id[..12], ep.container_name, ep.interface, ep.address, net.name);
        Ok(())
    }

    /// Removes the attached endpoint `ep` from the kernel and the state; `keep_allocation`: its
    /// allocation stays (detach), else it is freed too.
    ///
    /// Recorded first: a removal the state directory cannot take (a full disk) is refused and
    /// nothing of the endpoint is touched, so what the daemon acknowledged is what a restart
    /// brings back. Once recorded, the kernel side goes; what a failure leaves of it carries the
    /// bpfnet alias, and the next start removes it as unrecorded.
    pub(super) async fn remove_endpoint(&mut self, ep: &Endpoint, keep_allocation: bool) -> DaemonResult<()> {
        let before = self.state.clone();
        self.state.endpoints.retain(|e| e.id != ep.id);
        if keep_allocation {
            self.state.allocations.push(ep.allocation.clone());
        }
        if let Err(e) = self.commit() {
            self.state = before;
            return Err(Error::internal(e.context(format!("recording the removal of endpoint {} (nothing was removed)", &ep.id[..12]))));
        }
        // No new connection is sent to it from now on.
        self.drop_backends_of(&ep.id);
        let link = self.locate(ep).await.unwrap_or_else(|e| {
            log::warn!("removing endpoint {} of {}: {e:#}", &ep.id[..12], ep.container_name);
            None
        });
        if let Err(e) = self.teardown_endpoint(ep, link.as_ref()).await {
            log::warn!("removing endpoint {} of {}: {e:#}", &ep.id[..12], ep.container_name);
        }
        if ep.default_route {
            self.move_default_route(ep).await;
            // Which endpoint holds the namespace's default route is a note (the route itself is
            // in the namespace): not recording it loses nothing a restart needs.
            if let Err(e) = self.commit() {
                log::warn!("recording the default route of {}: {e:#}", ep.container_name);
            }
        }
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
