//! The endpoint lifecycle, in the steps front-ends drive: `allocate` (an address, a MAC, names and
//! published ports reserved on a network; no kernel change), `attach` (the veth pair into a
//! namespace under a given interface name, the datapath programmed, the container side
//! configured), `detach` (the kernel side removed, the allocation kept), `release` (the
//! allocation freed). `connect` is allocate + attach as one change and `disconnect` detach +
//! release; Docker's CreateEndpoint/Join/Leave/DeleteEndpoint and CNI's ADD/DEL map onto the
//! same steps.
//!
//! What an endpoint is in the kernel is its network's driver's business (`drivers`: today the
//! veth pair with the datapath's program); this file decides when, and keeps the state.
//!
//! An attach is write-ahead logged: its record goes into `State::connecting` before the first
//! kernel change and the endpoint's record replaces it when everything is in place, so a crash
//! at any point leaves a record of what to remove (see `reconcile`).
use datapath_common::{iface_flags, IfaceInfo};

use anyhow::Result;

use super::{crash_point, drivers::{self, NetworkDriver}, in_netns, publish, reconcile::endpoint_link, views, Daemon, DaemonResult, Error};
pub(super) use drivers::host_veth_name;
use crate::{
    api,
    datapath::{datapath_ipv4, datapath_ipv6},
    ids, ipam,
    netns::{self, NetnsRef},
    plumbing::{self, LinkInfo},
    ports::{self, PublishedPort},
    state::{Allocation, Endpoint, Frontend, Network},
};

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
    let (ipv6, gateway_ipv6) = (datapath_ipv6(ep.address6), datapath_ipv6(net.ipv6.map(|v6| v6.gateway)));
    Ok(IfaceInfo {
        network_id: net.datapath_id,
        ipv4: datapath_ipv4(ep.address4),
        gateway_ipv4: datapath_ipv4(net.ipv4.map(|v4| v4.gateway)),
        flags,
        mac: ep.mac,
        _pad: [0; 2],
        ipv6,
        gateway_ipv6,
    })
}

/// An endpoint found by id: attached to a namespace, or only allocated.
pub(super) enum Found<'a> {
    Attached(&'a Endpoint),
    Allocated(&'a Allocation),
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
            "endpoint {} allocated: {} {} on network {}",
            &allocation.id[..12],
            allocation.container_name,
            views::addresses_of(&net, &allocation),
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
        log::info!("endpoint {} detached: {} {} {}", &ep.id[..12], ep.container_name, ep.interface, ep.address());
        Ok(views::allocation_view(&self.state, &ep.allocation, None))
    }

    /// Frees the endpoint `id`: detached first if it is attached.
    pub async fn release(&mut self, id: &str) -> DaemonResult<()> {
        match self.find_endpoint(id)? {
            Found::Attached(ep) => {
                let ep = ep.clone();
                self.remove_endpoint(&ep, false).await?;
                log::info!("endpoint {} detached and released: {} {}", &ep.id[..12], ep.container_name, ep.address());
            }
            Found::Allocated(a) => {
                let a = a.clone();
                let before = self.state.clone();
                self.state.allocations.retain(|x| x.id != a.id);
                if let Err(e) = self.commit() {
                    self.state = before;
                    return Err(Error::internal(e));
                }
                log::info!("endpoint {} released: {} {}", &a.id[..12], a.container_name, a.address());
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
        let mut allocation = Allocation {
            id: id.unwrap_or_else(ids::random_id),
            network_id: net.id.clone(),
            container_id: ids::random_id(),
            container_name: name,
            address4: None,
            address6: None,
            mac: [0; 6],
            aliases: req.aliases,
            ports,
            kept_when_detached,
            frontend,
        };
        // An overlay network's address is the cluster's to give: claimed in etcd for this node.
        allocation.address4 = if net.driver.is_overlay() {
            let requested = overlay_requested_address(net, req.ip.as_deref(), req.ip6.as_deref(), ("--ip", "--ip6"))?;
            Some(self.claim_overlay_address(net, &allocation, requested.as_deref()).await?)
        } else {
            ipam::choose_address(&self.state, &net.id, req.ip.as_deref()).map_err(Error::refused)?
        };
        allocation.address6 = match (net.driver.is_overlay(), allocation.address4) {
            // An overlay network's IPv6 address pairs with the IPv4 one the cluster gave.
            (true, Some(address4)) => net.overlay_pair6(address4),
            _ => ipam::choose_address6(&self.state, &net.id, req.ip6.as_deref()).map_err(Error::refused)?,
        };
        allocation.mac = ipam::mac_for(allocation.address());
        Ok(allocation)
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
            return Err(if e.downcast_ref::<drivers::InterfaceExists>().is_some() {
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
            "endpoint {} {verb}: {} {} {} on network {} (host side {})",
            &ep.id[..12],
            ep.container_name,
            ep.interface,
            views::addresses_of(net, &ep),
            net.name,
            ep.host_interface
        );
        Ok(api::EndpointCreated {
            endpoint_id: ep.id.clone(),
            network: net.name.clone(),
            interface: ep.interface.clone(),
            host_interface: ep.host_interface.clone(),
            ipv4_address: views::address_of(net, ep.address4),
            ipv6_address: views::address_of(net, ep.address6),
            mac_address: ipam::format_mac(&ep.mac),
            ports: ep.ports.iter().flat_map(|p| p.shown(ep.address4.is_some(), ep.address6.is_some())).collect(),
            resolver: self.dns.then(|| net.gateway().to_string()),
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
        let mut holders = publish::Holders::of(&self.state, None, self.nat_ports);
        let mut ports: Vec<PublishedPort> = Vec::new();
        for spec in specs {
            let port = ports::parse(spec).map_err(Error::invalid)?;
            publish::refuse_family_without(net, &port, spec, "its containers")?;
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
    /// crash from then on leaves a record of what its attach made (in the store's write-ahead
    /// record, which the attach's commit folds into the state).
    pub(super) fn write_ahead(&mut self, ep: &Endpoint) -> DaemonResult<()> {
        self.state.connecting.push(ep.clone());
        if let Err(e) = self.store.write_ahead(&self.state.connecting) {
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
                if let Err(e) = self.store.commit(&self.state) {
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
        self.make_programmed_veth(net, ep, &interface, Some(&ns.file)).await?;
        let backend = self.backend_ids.serves(&ep.id);
        drivers::of(net).configure_container(self.kernel(), net, ep, backend, ns, wants_default_route).await
    }

    /// The driver's connection to the kernel for one call (see [`drivers`]).
    fn kernel(&mut self) -> drivers::Kernel<'_> {
        drivers::Kernel { netlink: &self.netlink, datapath: &mut self.datapath, conntrack: &mut self.conntrack }
    }

    /// Makes the endpoint's kernel side with its network's driver (the container's interface
    /// named `peer` inside `peer_netns`, or here for an engine to move); returns the host side's
    /// index. On error the caller tears down whatever was made.
    pub(super) async fn make_programmed_veth(&mut self, net: &Network, ep: &mut Endpoint, peer: &str, peer_netns: Option<&std::fs::File>) -> Result<u32> {
        let backend = self.backend_ids.serves(&ep.id);
        drivers::of(net).make(self.kernel(), net, ep, backend, peer, peer_netns).await
    }

    /// Programs the kernel side of an endpoint whose host side `link` exists (idempotent: connect
    /// and the reconciler).
    pub(super) async fn program_endpoint(&mut self, net: &Network, ep: &Endpoint, link: &LinkInfo) -> Result<()> {
        let backend = self.backend_ids.serves(&ep.id);
        drivers::of(net).program(self.kernel(), net, ep, backend, link).await
    }

    /// Removes everything an endpoint has in the kernel; `link` is its host side if that still
    /// exists. Idempotent; tries every step and reports every failure.
    pub(super) async fn teardown_endpoint(&mut self, ep: &Endpoint, link: Option<&LinkInfo>) -> Result<()> {
        // Only if no other endpoint holds the address (it may have been handed out again meanwhile).
        let others = self.state.endpoints.iter().filter(|o| o.id != ep.id);
        let held: std::collections::HashSet<std::net::IpAddr> = others.flat_map(|o| o.addresses()).collect();
        let taken: Vec<std::net::IpAddr> = ep.addresses().filter(|a| held.contains(a)).collect();
        drivers::of_endpoint(ep).teardown(self.kernel(), ep, link, &taken).await
    }

    /// The host side of `ep` as it is now (it may have been renamed).
    pub(super) async fn locate(&self, ep: &Endpoint) -> Result<Option<LinkInfo>> {
        drivers::of_endpoint(ep).locate(&self.netlink, ep).await
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
        log::info!("endpoint {} disconnected: {} {} {} from network {}", &ep.id[..12], ep.container_name, ep.interface, ep.address(), net.name);
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
        if ep.default_route || ep.address6.is_some() {
            self.move_default_route(ep).await;
        }
        if ep.default_route {
            // Which endpoint holds the namespace's default route is a note (the route itself is
            // in the namespace): not recording it loses nothing a restart needs.
            if let Err(e) = self.commit() {
                log::warn!("recording the default route of {}: {e:#}", ep.container_name);
            }
        }
        Ok(())
    }

    /// After an endpoint left its namespace, the default routes it carried go through another
    /// endpoint of a network that is not internal: IPv4's if it held it, IPv6's (gone with its
    /// interface) through another dual-stack one unless the namespace has one still.
    pub(super) async fn move_default_route(&mut self, gone: &Endpoint) {
        let state = &self.state;
        let routed = |e: &Endpoint| {
            (e.netns_dev, e.netns_inode) == (gone.netns_dev, gone.netns_inode)
                && state.network_by_id(&e.network_id).is_some_and(|n| !n.internal)
        };
        // (IPv4's through an endpoint with IPv4: not one of an IPv6-only network.)
        let next4 = if gone.default_route { state.endpoints.iter().position(|e| routed(e) && e.address4.is_some()) } else { None };
        let gateway4 = next4.and_then(|i| state.network_by_id(&state.endpoints[i].network_id)?.ipv4).map(|v4| v4.gateway);
        let gateway6 = match gone.address6 {
            Some(_) => state
                .endpoints
                .iter()
                .filter(|e| routed(e) && e.address6.is_some())
                .find_map(|e| state.network_by_id(&e.network_id)?.ipv6.map(|v6| v6.gateway)),
            None => None,
        };
        if gateway4.is_none() && gateway6.is_none() {
            return;
        }
        // The path may now name another namespace: only the one the endpoints live in will do.
        let ns = match netns::resolve(&gone.netns_path.display().to_string()) {
            Ok(ns) if (ns.dev, ns.inode) == (gone.netns_dev, gone.netns_inode) => ns,
            _ => return,
        };
        match in_netns(ns.file, move || plumbing::set_container_default_routes(gateway4, gateway6)).await {
            Ok(set) => {
                if let Some(i) = next4 {
                    self.state.endpoints[i].default_route = set;
                }
            }
            Err(e) => log::warn!("could not move the default route of {}: {e:#}", gone.container_name),
        }
    }
}

/// The IPv4 address to claim on overlay network `net` for `--ip`/`--ip6` (`flags`: their names,
/// `--vip`/`--vip6` for a service): an overlay network's IPv6 address pairs with its IPv4 one
/// (`ipam::paired_address6`), so the IPv6 one names the IPv4 address too; both given, they must
/// be a pair. Checked before anything is claimed.
pub(super) fn overlay_requested_address(net: &Network, ip: Option<&str>, ip6: Option<&str>, flags: (&str, &str)) -> DaemonResult<Option<String>> {
    let (f4, f6) = flags;
    let Some(text6) = ip6 else { return Ok(ip.map(str::to_string)) };
    let Some(v6) = net.ipv6 else {
        return Err(Error::invalid(format!("network {:?} has no IPv6 subnet: {f6} needs a network made with --ipv6 or an IPv6 --subnet", net.name)));
    };
    let address6: std::net::IpAddr = text6.parse().map_err(|_| Error::invalid(format!("invalid {f6} {text6:?}: not an IPv6 address")))?;
    let v4 = net.overlay_ipv4();
    let Some(address) = net.overlay_pair4(address6) else {
        return Err(Error::invalid(format!(
            "{f6} {text6}: on overlay network {:?} an IPv6 address pairs with an IPv4 one of {} (the same offset in {}), and {text6} has none",
            net.name, v4.subnet, v6.subnet
        )));
    };
    if let Some(text) = ip {
        if text.parse::<std::net::IpAddr>().ok() != Some(address) {
            return Err(Error::invalid(format!(
                "{f4} {text} {f6} {text6}: on overlay network {:?} the IPv6 address pairs with the IPv4 one: {text6} goes with {address}",
                net.name
            )));
        }
    }
    Ok(Some(address.to_string()))
}
