//! Overlay networks on this node (clusters): the VXLAN device, the networks the cluster defines
//! made local (each node keeps a copy in its own state, with its gateway here, so that masquerade,
//! `-p`, DNS and every local path work for them as for a local network), the endpoints of other
//! nodes programmed into the datapath, and this node's claims of addresses kept equal to its
//! allocations. The cluster is reached only through [`SharedStore`]; what it holds arrives as a
//! [`ClusterView`] (see `sync_cluster`).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use anyhow::{Context, Result};
use datapath_common::{endpoint_flags, EndpointInfo, IpKey};

use super::{Daemon, DaemonResult, Error};
use crate::{
    ipam,
    state::{Allocation, Driver, Network, RemoteEndpoint, Subnet},
    store::shared::{ClusterView, EndpointRecord, NetworkRecord, SharedError, SharedStore, RESERVATION_PREFIX},
};

/// The node's VXLAN device (external mode: one for every overlay network).
pub const VXLAN_DEVICE: &str = "bpfnet-vxlan";
/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// What the encapsulation takes: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const ENCAPSULATION: u32 = 50;
/// Tries of an address claim that lost to another node.
const CLAIM_TRIES: usize = 256;

/// This node's side of the cluster's overlay networks.
pub(super) struct OverlayNode {
    pub(super) store: Arc<dyn SharedStore>,
    vxlan_ifindex: u32,
    /// Endpoints' MTU on overlay networks.
    mtu: u32,
    /// The cluster as last read.
    pub(super) view: Option<ClusterView>,
    /// Overlay networks and cluster services this node cannot take (a local network or service
    /// has the name, the subnet or the port), reported once each (by id).
    pub(super) refused: BTreeSet<String>,
    /// The store's revision of this node's last own change of a network: an older view does not
    /// show it yet (it would undo a creation or bring back a removal) and is passed over.
    own_revision: i64,
}

impl OverlayNode {
    /// Logs once (per id) that the cluster's `what` cannot be made on this node, and why.
    pub(super) fn report_refused(&mut self, id: &str, what: &str, why: &Error) {
        if self.refused.insert(id.to_string()) {
            log::error!("{what} is not available on this node: {why}");
        }
    }

    fn remote_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        let node = self.store.node().to_string();
        self.view.iter().flat_map(|v| v.endpoints.iter()).filter(move |e| e.network_id == network_id && e.node != node)
    }
}

fn record_of(net: &Network, vni: u32) -> NetworkRecord {
    NetworkRecord {
        id: net.id.clone(),
        name: net.name.clone(),
        subnet: net.overlay_ipv4().subnet,
        gateway: net.overlay_ipv4().gateway,
        internal: net.internal,
        icc: net.icc,
        masquerade: net.masquerade,
        options: net.options.clone(),
        vni,
        created: net.created.clone(),
        ip_range: net.ip_range,
        ipv6: net.ipv6,
    }
}

impl Daemon {
    /// Makes this node ready for overlay networks: the VXLAN device (its MTU, and that of overlay
    /// endpoints, `mtu` or else the uplink's less the encapsulation) with `from_overlay` on it.
    pub async fn enable_overlay(&mut self, store: Arc<dyn SharedStore>, mtu: Option<u32>, encap_in_datapath: bool) -> Result<()> {
        let mtu = match mtu {
            Some(mtu) => mtu,
            None => {
                let uplink_mtu = match self.uplinks.first() {
                    Some(u) => self.netlink.link_mtu(u.index).await?.unwrap_or(1500),
                    None => 1500,
                };
                uplink_mtu.saturating_sub(ENCAPSULATION).max(576)
            }
        };
        let vxlan_ifindex = self.netlink.ensure_vxlan(VXLAN_DEVICE, VXLAN_PORT, mtu).await?;
        crate::plumbing::write_sysctl(&format!("net/ipv6/conf/{VXLAN_DEVICE}/disable_ipv6"), "1").ok();
        self.datapath.attach_overlay(VXLAN_DEVICE).context("attaching the overlay program")?;
        // VXLAN in the datapath needs an IPv4 underlay address of this node's own.
        let native = match store.underlay() {
            IpAddr::V4(v4) if encap_in_datapath => Some(v4),
            _ => None,
        };
        self.datapath.set_overlay_node(native)?;
        let who = if native.is_some() { "the datapath (TC)" } else { VXLAN_DEVICE };
        log::info!(
            "overlay networks: VXLAN (UDP {VXLAN_PORT}) by {who}, endpoint MTU {mtu}, underlay {}; {VXLAN_DEVICE} receives from \
             nodes that use their device",
            store.underlay()
        );
        self.overlay = Some(OverlayNode { store, vxlan_ifindex, mtu, view: None, refused: BTreeSet::new(), own_revision: 0 });
        Ok(())
    }

    pub(super) fn overlay(&self) -> DaemonResult<&OverlayNode> {
        self.overlay.as_ref().ok_or_else(|| {
            Error::invalid("overlay networks need a cluster: start the daemon with --cluster ETCD_URL[,...] --node NAME")
        })
    }

    /// `network create --driver overlay`: defined in etcd first (which refuses a name or subnet
    /// another node's overlay network has), then made here; other nodes make it when they see it.
    pub(super) async fn create_overlay_network(&mut self, mut net: Network) -> DaemonResult<Network> {
        let overlay = self.overlay()?;
        let (store, mtu) = (overlay.store.clone(), overlay.mtu);
        let (vni, revision) = store.create_network(record_of(&net, 0)).await?;
        self.note_own_revision(revision);
        net.driver = Driver::Overlay { vni, mtu };
        if let Err(e) = self.install_network(&net).await {
            if let Err(undo) = store.remove_network(net.name.clone(), net.id.clone()).await {
                log::warn!("overlay network {}: could not be made here ({e}) nor removed from the cluster: {undo}", net.name);
            }
            return Err(e);
        }
        self.program_overlay().map_err(Error::internal)?;
        Ok(net)
    }

    /// `network rm` of an overlay network: refused while any node has endpoints on it, else
    /// removed from etcd (other nodes forget it when they see that).
    pub(super) async fn remove_overlay_network(&mut self, net: &Network) -> DaemonResult<()> {
        let store = self.overlay()?.store.clone();
        let revision = store.remove_network(net.name.clone(), net.id.clone()).await?;
        self.note_own_revision(revision);
        Ok(())
    }

    pub(super) fn note_own_revision(&mut self, revision: i64) {
        if let Some(overlay) = self.overlay.as_mut() {
            overlay.own_revision = overlay.own_revision.max(revision);
        }
    }

    /// The address of a new allocation on overlay network `net`: the one asked for or the lowest
    /// free one, claimed in etcd for this node (an address another node claimed meanwhile is
    /// skipped; one asked for is refused, naming its node).
    pub(super) async fn claim_overlay_address(&self, net: &Network, allocation: &Allocation, requested: Option<&str>) -> DaemonResult<IpAddr> {
        let overlay = self.overlay()?;
        let mut pool = self.cluster_pool(net);
        for _ in 0..CLAIM_TRIES {
            let address = pool.take_for(requested, &allocation.container_name).map_err(Error::refused)?;
            let record = self.endpoint_record(net, &Allocation { address4: Some(address), mac: ipam::mac_for(address), ..allocation.clone() });
            match overlay.store.claim(record).await {
                Ok(()) => return Ok(address),
                Err(SharedError::Conflict(held)) if requested.is_none() => pool.hold(address, held),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::conflict(format!("no free address could be claimed on overlay network {:?}: other nodes took them first", net.name)))
    }

    /// The free addresses of overlay network `net` as the cluster sees them: this node's
    /// allocations and services, other nodes' claims (their endpoints and reservations), and the
    /// cluster's service VIPs.
    pub(super) fn cluster_pool<'a>(&'a self, net: &Network) -> ipam::AddressPool<'a> {
        let mut pool = ipam::AddressPool::new(&self.state, &net.id).expect("an overlay network has an IPv4 subnet");
        if let Some(overlay) = self.overlay.as_ref() {
            for remote in overlay.remote_of(&net.id) {
                pool.hold(remote.address, format!("{} on node {}", remote.container_name, remote.node));
            }
            for s in overlay.view.iter().flat_map(|v| &v.services).filter(|s| s.network_id == net.id) {
                pool.hold(s.vip, format!("service {}", s.name));
            }
        }
        pool
    }

    /// Makes Docker's network `docker_id` stand for overlay network `overlay` on this node:
    /// Docker's pool must be the overlay network's own subnet, given out by bpfnet's IPAM (the
    /// cluster's addresses are claimed in etcd; Docker's own IPAM knows only this node).
    pub fn bind_docker_overlay(&mut self, docker_id: &str, overlay: &str, pool: &str, gateway: Option<&str>, from_bpfnet_ipam: bool) -> DaemonResult<()> {
        let net = self.network(overlay)?.clone();
        if !net.driver.is_overlay() {
            return Err(Error::invalid(format!("network {overlay:?} is not an overlay network (bpfnet.overlay names one of the cluster's)")));
        }
        if pool != net.overlay_ipv4().subnet.to_string() || !from_bpfnet_ipam {
            return Err(Error::invalid(format!(
                "a Docker network for overlay network {overlay:?} takes its addresses from the cluster: create it with \
                 --ipam-driver bpfnet --subnet {}",
                net.overlay_ipv4().subnet
            )));
        }
        if let Some(gw) = gateway {
            if gw != net.overlay_ipv4().gateway.to_string() {
                return Err(Error::invalid(format!("overlay network {overlay:?} has gateway {}, not {gw}", net.overlay_ipv4().gateway)));
            }
        }
        if let Some((other, _)) = self.state.docker_overlays.iter().find(|(_, id)| **id == net.id) {
            return Err(Error::conflict(format!("Docker network {} stands for overlay network {overlay:?} already", &other[..other.len().min(12)])));
        }
        self.state.docker_overlays.insert(docker_id.to_string(), net.id.clone());
        if let Err(e) = self.commit() {
            self.state.docker_overlays.remove(docker_id);
            return Err(Error::internal(e));
        }
        log::info!("docker: network {} stands for overlay network {} here", &docker_id[..docker_id.len().min(12)], net.name);
        Ok(())
    }

    /// The bpfnet network of Docker's network `docker_id`: the overlay network it stands for, or
    /// the one made for it.
    pub fn docker_network(&self, docker_id: &str) -> String {
        match self.state.docker_overlays.get(docker_id).and_then(|id| self.state.network_by_id(id)) {
            Some(net) => net.name.clone(),
            None => crate::docker::network_name(docker_id),
        }
    }

    /// Forgets that Docker's network `docker_id` stands for an overlay network; `false` if it
    /// did not (it is a network of its own).
    pub fn unbind_docker_network(&mut self, docker_id: &str) -> DaemonResult<bool> {
        if self.state.docker_overlays.remove(docker_id).is_none() {
            return Ok(false);
        }
        self.commit().map_err(Error::internal)?;
        Ok(true)
    }

    /// The addresses Docker's IPAM gave out of pools that are overlay networks' subnets, with
    /// the id of their reservation.
    fn docker_reservations(&self) -> Vec<(IpAddr, String)> {
        let overlays: Vec<&Network> = self.state.networks.iter().filter(|n| n.driver.is_overlay()).collect();
        self.state
            .pools
            .iter()
            .filter(|p| overlays.iter().any(|n| n.overlay_ipv4().subnet == p.subnet))
            .flat_map(|p| p.addresses.iter().copied())
            .filter(|a| !overlays.iter().any(|n| n.overlay_ipv4().gateway == *a))
            .map(|a| (a, format!("{RESERVATION_PREFIX}{a}")))
            .collect()
    }

    fn reservation_record(&self, net: &Network, address: IpAddr) -> EndpointRecord {
        let store = &self.overlay.as_ref().expect("overlay enabled").store;
        EndpointRecord {
            id: format!("{RESERVATION_PREFIX}{address}"),
            network_id: net.id.clone(),
            network: net.name.clone(),
            address,
            mac: ipam::mac_for(address),
            node: store.node().to_string(),
            underlay: store.underlay(),
            container_name: "reserved-by-docker-ipam".into(),
            aliases: vec![],
            service: false,
        }
    }

    /// An address of overlay network `net` for Docker's IPAM (`requested`, or the lowest free
    /// one but `held`), claimed in etcd for this node before Docker has it: two nodes asked at
    /// the same moment never get the same one.
    pub(super) async fn reserve_overlay_address(&self, net: &Network, requested: Option<IpAddr>, held: &[IpAddr]) -> DaemonResult<IpAddr> {
        let store = self.overlay()?.store.clone();
        let mut pool = self.cluster_pool(net);
        for address in held {
            pool.hold(*address, "an address Docker holds".into());
        }
        let requested_text = requested.map(|a| a.to_string());
        for _ in 0..CLAIM_TRIES {
            let address = pool.take_for(requested_text.as_deref(), "Docker's IPAM").map_err(Error::refused)?;
            match store.claim(self.reservation_record(net, address)).await {
                Ok(()) => return Ok(address),
                Err(SharedError::Conflict(other)) if requested.is_none() => pool.hold(address, other),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::conflict(format!("no free address could be claimed on overlay network {:?}: other nodes took them first", net.name)))
    }

    fn endpoint_record(&self, net: &Network, a: &Allocation) -> EndpointRecord {
        let store = &self.overlay.as_ref().expect("overlay enabled").store;
        EndpointRecord {
            id: a.id.clone(),
            network_id: net.id.clone(),
            network: net.name.clone(),
            address: a.address(),
            mac: a.mac,
            node: store.node().to_string(),
            underlay: store.underlay(),
            container_name: a.container_name.clone(),
            aliases: a.aliases.clone(),
            service: false,
        }
    }

    /// Brings this node in line with the cluster as `view` shows it: the overlay networks it
    /// defines made (or forgotten) here, other nodes' endpoints in the datapath, this node's
    /// claims equal to its allocations.
    pub async fn sync_cluster(&mut self, view: ClusterView) {
        let Some(overlay) = self.overlay.as_mut() else { return };
        if view.revision < overlay.own_revision {
            // Older than a change this node made: the next view shows it.
            return;
        }
        overlay.view = Some(view.clone());
        for record in &view.networks {
            if self.state.network_by_id(&record.id).is_some() {
                continue;
            }
            if let Err(e) = self.adopt_network(record).await {
                let what = format!("overlay network {}", record.name);
                self.overlay.as_mut().expect("overlay enabled").report_refused(&record.id, &what, &e);
            }
        }
        let gone: Vec<Network> = self
            .state
            .networks
            .iter()
            .filter(|n| n.driver.is_overlay() && !view.networks.iter().any(|r| r.id == n.id))
            .cloned()
            .collect();
        for net in gone {
            if self.state.allocations_of(&net.id).next().is_some() {
                log::warn!("overlay network {} is gone from the cluster but has endpoints here: kept until they leave", net.name);
                continue;
            }
            log::info!("overlay network {} removed from the cluster: forgotten here", net.name);
            if let Err(e) = self.forget_network(&net).await {
                log::warn!("forgetting overlay network {}: {e}", net.name);
            }
        }
        if let Err(e) = self.program_overlay() {
            log::error!("programming overlay endpoints: {e:#}");
        }
        self.sync_mesh();
        self.reconcile_claims().await;
    }

    /// Makes the cluster's overlay network `record` here, unless a local network has its name or
    /// an overlapping subnet.
    async fn adopt_network(&mut self, record: &NetworkRecord) -> DaemonResult<()> {
        if let Some(local) = self.state.network_by_name(&record.name) {
            return Err(Error::conflict(format!("network {:?} of this node has that name", local.name)));
        }
        let overlapping = |subnet: &ipnetwork::IpNetwork| self.state.networks.iter().find_map(|n| Some((n, n.subnets().find(|s| ipam::overlaps(s, subnet))?)));
        if let Some((local, theirs)) = overlapping(&record.subnet) {
            return Err(Error::conflict(format!("its subnet {} overlaps {theirs} of network {:?} here", record.subnet, local.name)));
        }
        if let Some(v6) = record.ipv6 {
            if let Some(local) = self.state.networks.iter().find(|n| n.ipv6.is_some_and(|l| ipam::overlaps(&l.subnet, &v6.subnet))) {
                return Err(Error::conflict(format!("its IPv6 subnet {} overlaps network {:?} here", v6.subnet, local.name)));
            }
        }
        let mtu = self.overlay.as_ref().expect("overlay enabled").mtu;
        let net = Network {
            id: record.id.clone(),
            name: record.name.clone(),
            ipv4: Some(Subnet { subnet: record.subnet, gateway: record.gateway }),
            internal: record.internal,
            icc: record.icc,
            masquerade: record.masquerade,
            options: record.options.clone(),
            datapath_id: self.state.free_datapath_id(),
            created: record.created.clone(),
            driver: Driver::Overlay { vni: record.vni, mtu },
            ip_range: record.ip_range,
            ipv6: record.ipv6,
        };
        self.install_network(&net).await?;
        log::info!("overlay network {} (VNI {}) made here: subnet {}, gateway {}", net.name, record.vni, net.overlay_ipv4().subnet, net.overlay_ipv4().gateway);
        Ok(())
    }

    /// Writes `OVERLAY_VNIS`, the other live nodes (`OVERLAY_PEERS`) and the endpoints of other
    /// nodes on the overlay networks here, and gives their names to the resolvers
    /// (`State::remote_endpoints`).
    pub(super) fn program_overlay(&mut self) -> Result<()> {
        let Some(overlay) = self.overlay.as_ref() else { return Ok(()) };
        let mut vnis = Vec::new();
        let mut remote: HashMap<IpKey, EndpointInfo> = HashMap::new();
        let mut names = Vec::new();
        // Other nodes' endpoints that back a cluster service: their answers to connections
        // balanced here are translated back here.
        let backends: HashSet<(&str, IpAddr)> = overlay
            .view
            .iter()
            .flat_map(|v| &v.services)
            .flat_map(|s| s.backends.iter().map(move |b| (s.network_id.as_str(), b.address)))
            .collect();
        for net in &self.state.networks {
            let Driver::Overlay { vni, .. } = net.driver else { continue };
            vnis.push((vni, net.datapath_id));
            for e in overlay.remote_of(&net.id).filter(|e| !e.is_reservation()) {
                let address6 = net.overlay_pair6(e.address);
                names.push(RemoteEndpoint {
                    network_id: e.network_id.clone(),
                    address: e.address,
                    address6,
                    container_name: e.container_name.clone(),
                    aliases: e.aliases.clone(),
                    node: e.node.clone(),
                });
                let IpAddr::V4(underlay) = e.underlay else { continue };
                let info = EndpointInfo {
                    host_ifindex: overlay.vxlan_ifindex,
                    network_id: net.datapath_id,
                    mac: e.mac,
                    flags: if backends.contains(&(net.id.as_str(), e.address)) { endpoint_flags::SERVICE_BACKEND } else { 0 },
                    _pad: 0,
                    underlay: underlay.octets(),
                    vni,
                };
                remote.insert(IpKey::from(e.address), info);
                if let Some(address6) = address6 {
                    remote.insert(IpKey::from(address6), info);
                }
            }
        }
        // The other live nodes: the only senders of the routing mesh's connections. (The
        // underlay is IPv4.)
        let peers: HashSet<std::net::Ipv4Addr> = overlay
            .view
            .iter()
            .flat_map(|v| &v.nodes)
            .filter(|(name, _)| name.as_str() != overlay.store.node())
            .filter_map(|(_, underlay)| match underlay {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        if names != self.state.remote_endpoints {
            self.state.remote_endpoints = names;
            self.publish_state();
        }
        self.datapath.set_overlay_peers(&peers)?;
        self.datapath.set_overlay_vnis(&vnis)?;
        self.datapath.set_remote_endpoints(&remote)
    }

    /// Makes this node's claims in etcd equal to its allocations on overlay networks: claims
    /// what is missing (after a restart, or a lease lost while etcd was out of reach) and gives
    /// back what no allocation holds any more (a disconnect, a failed connect). Run when the
    /// cluster changes and every few seconds.
    pub async fn reconcile_claims(&mut self) {
        let Some(overlay) = self.overlay.as_ref() else { return };
        let Some(view) = overlay.view.as_ref() else { return };
        let store = overlay.store.clone();
        // Run under the daemon's lock: while etcd is out of reach (every request could wait for
        // its time limit) it waits for etcd to answer the keep-alives again, not the API.
        if !store.reachable() {
            return;
        }
        // A claim, as (network id, address, endpoint id).
        let claimed: HashSet<(&str, IpAddr, &str)> = view
            .endpoints
            .iter()
            .filter(|e| e.node == store.node())
            .map(|e| (e.network_id.as_str(), e.address, e.id.as_str()))
            .collect();
        let mut held = HashSet::new();
        let mut wanted = Vec::new();
        let reserved = self.docker_reservations();
        for net in self.state.networks.iter().filter(|n| n.driver.is_overlay()) {
            for a in self.state.allocations_of(&net.id) {
                held.insert((net.id.as_str(), a.address(), a.id.as_str()));
                if !claimed.contains(&(net.id.as_str(), a.address(), a.id.as_str())) {
                    wanted.push(self.endpoint_record(net, a));
                }
            }
            // Addresses Docker's IPAM gave out here for endpoints Docker has not made yet.
            for (address, id) in reserved.iter().filter(|(a, _)| net.overlay_ipv4().subnet.contains(*a)) {
                if self.state.allocations_of(&net.id).any(|a| a.address() == *address) {
                    continue;
                }
                held.insert((net.id.as_str(), *address, id.as_str()));
                if !claimed.contains(&(net.id.as_str(), *address, id.as_str())) {
                    wanted.push(self.reservation_record(net, *address));
                }
            }
        }
        let stale: Vec<(String, IpAddr, String)> = claimed
            .difference(&held)
            .map(|(network_id, address, id)| (network_id.to_string(), *address, id.to_string()))
            .collect();
        for record in wanted {
            if let Err(e) = store.claim(record.clone()).await {
                log::warn!("claiming {} of {} on overlay network {}: {e}", record.address, record.container_name, record.network);
            }
        }
        for (network_id, address, id) in stale {
            if let Err(e) = store.release(network_id, address, id).await {
                log::warn!("giving back overlay address {address}: {e}");
            }
        }
    }
}
