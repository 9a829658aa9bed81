//! The steps of the endpoint lifecycle a container engine drives when the engine, not bpfnet,
//! moves the interface into the container and configures it (Docker's remote network driver):
//! `attach_handover` makes the veth pair in the daemon's namespace and programs the datapath,
//! the engine moves the container's side into its sandbox; `publish` sets the published ports of
//! an attached endpoint (Docker's ProgramExternalConnectivity, which comes after the Join, only
//! for the endpoint that carries the container's default route) and `publish(id, [])` withdraws
//! them; `reclaim_address` frees an engine's stale endpoint whose address the engine hands out
//! again (Docker forgets endpoints when it is killed; its address management is authoritative).
use std::{net::IpAddr, path::PathBuf};

use super::{
    endpoints::{host_veth_name, Found},
    publish, Daemon, DaemonResult, Error,
};
use crate::{
    ports::{PortRequest, PublishedPort},
    state::{Endpoint, Frontend},
};

/// What an engine needs to finish an attach: the interface to move, and the route to give it.
#[derive(Debug, Clone)]
pub struct Handover {
    /// The container's side of the veth pair, in the daemon's namespace until the engine moves it.
    pub interface: String,
    /// The network's IPv4 gateway; `None` on an internal or IPv6-only network (no default route).
    pub gateway: Option<IpAddr>,
    /// The network's IPv6 gateway, on a network with IPv6 that is not internal.
    pub gateway6: Option<IpAddr>,
}

impl Handover {
    fn of(interface: String, net: &crate::state::Network) -> Self {
        let routed = !net.internal;
        let gateway = |side: Option<crate::state::Subnet>| side.filter(|_| routed).map(|side| side.gateway);
        Handover { interface, gateway: gateway(net.ipv4), gateway6: gateway(net.ipv6) }
    }
}

/// Name of the container's side of a handed-over veth while it is still in the daemon's
/// namespace ("bh" and the endpoint id's first hex digits).
fn handover_veth_name(endpoint_id: &str) -> String {
    format!("bh{}", &endpoint_id[..11])
}

impl Daemon {
    /// Attaches the allocation `id` for an engine that moves the interface itself into its
    /// sandbox `sandbox_path`. The interface is named `interface` in the record (the engine picks
    /// the final name). Idempotent for the same sandbox.
    pub async fn attach_handover(&mut self, id: &str, sandbox_path: &str, interface: &str) -> DaemonResult<Handover> {
        let allocation = match self.find_endpoint(id)? {
            Found::Attached(ep) if ep.netns_path.as_os_str() == sandbox_path => {
                let net = self.state.network_by_id(&ep.network_id).ok_or_else(|| Error::not_found("network gone"))?;
                return Ok(Handover::of(handover_veth_name(&ep.id), net));
            }
            Found::Attached(ep) => {
                return Err(Error::conflict(format!(
                    "endpoint {} is already attached to {}",
                    &ep.id[..12],
                    ep.netns_path.display()
                )))
            }
            Found::Allocated(a) => a.clone(),
        };
        let net = self.state.network_by_id(&allocation.network_id).cloned().ok_or_else(|| {
            Error::internal(anyhow::anyhow!("endpoint {} belongs to no network", &allocation.id[..12]))
        })?;
        // Docker makes the sandbox's namespace file after the Join (runc creates the namespace,
        // a hook binds it there): its identity is unknown, and (0, 0) matches no namespace.
        let (netns_dev, netns_inode) = (0, 0);
        let mut ep = Endpoint {
            host_interface: host_veth_name(&allocation.id),
            host_ifindex: 0,
            allocation,
            netns_path: PathBuf::from(sandbox_path),
            netns_dev,
            netns_inode,
            interface: interface.to_string(),
            // The engine sets the container's routes (from the gateway returned here).
            default_route: false,
            // GRO can be turned on only once the engine has brought the interface up: frames
            // from the uplink take the TC path into this endpoint.
            gro: false,
        };
        self.write_ahead(&ep)?;
        let peer = handover_veth_name(&ep.id);
        let made = self.make_programmed_veth(&net, &mut ep, &peer, None).await;
        self.state.connecting.retain(|c| c.id != ep.id);
        if let Err(e) = made {
            self.undo_connect(&ep).await;
            return Err(Error::internal(e));
        }
        self.commit_attached(&ep).await?;
        log::info!(
            "endpoint {} attached for {}: {} {} on network {} (host side {}, handed over as {peer})",
            &ep.id[..12],
            ep.frontend.name(),
            ep.container_name,
            super::views::addresses_of(&net, &ep),
            net.name,
            ep.host_interface
        );
        Ok(Handover::of(peer, &net))
    }

    /// Sets the published ports of the attached endpoint `id` to `requests` (each gets the first
    /// free host port of its range), replacing what it published before; `[]` withdraws them.
    /// Returns the publications as shown by `endpoint ls`.
    pub async fn publish(&mut self, id: &str, requests: &[PortRequest]) -> DaemonResult<Vec<String>> {
        let ep = match self.find_endpoint(id)? {
            Found::Attached(ep) => ep.clone(),
            Found::Allocated(a) => return Err(Error::conflict(format!("endpoint {} is not attached", &a.id[..12]))),
        };
        let net = self.state.network_by_id(&ep.network_id).cloned().ok_or_else(|| Error::not_found("network gone"))?;
        if !requests.is_empty() {
            publish::refuse_on_internal(&net, "its containers' ports")?;
        }
        let local = self.netlink.host_addresses("").await.map_err(Error::internal)?;
        // The endpoint's own publications do not count: they are being replaced.
        let mut holders = publish::Holders::of(&self.state, Some(&ep.id), self.nat_ports);
        let mut chosen: Vec<PublishedPort> = Vec::new();
        // Every-IPv6-address requests last, so that those a both-families one covers are skipped.
        let mut ordered: Vec<&PortRequest> = requests.iter().collect();
        ordered.sort_by_key(|r| r.host_ip.is_some_and(|ip| ip.is_ipv6() && ip.is_unspecified()));
        for request in ordered {
            if let Some(ip) = request.host_ip {
                // Docker asks for each family (`0.0.0.0` and `::`) whatever the network has: a
                // family the container has no address of has nothing to publish (as Docker's
                // own bridge does), and would only hold the port.
                if net.side_of(ip).is_none() {
                    log::debug!("endpoint {}: {ip} skipped, network {} has no {}", &ep.id[..12], net.name, if ip.is_ipv4() { "IPv4" } else { "IPv6" });
                    continue;
                }
                publish::check_host_address(Some(ip), &local, &ip.to_string())?;
            }
            // Docker may ask for `::` beside the same port on every address, which covers it.
            let covered = |p: &PublishedPort| {
                p.host_ip.is_none() && p.protocol == request.protocol && p.container_port == request.container_port
                    && (request.host_ports.0..=request.host_ports.1).contains(&p.host_port)
            };
            if request.host_ip.is_some_and(|ip| ip.is_ipv6() && ip.is_unspecified()) && chosen.iter().any(covered) {
                continue;
            }
            let mut refusal = None;
            let found = request.candidates().find(|port| match holders.holder(port) {
                Some(holder) => {
                    refusal = Some(holder.to_string());
                    false
                }
                None => true,
            });
            match found {
                Some(port) => {
                    holders.take(port, None);
                    chosen.push(port);
                }
                None => {
                    let (first, last) = request.host_ports;
                    let ports = if first == last { first.to_string() } else { format!("any of {first}-{last}") };
                    return Err(Error::conflict(format!(
                        "cannot publish host port {ports} ({}): {}",
                        request.protocol,
                        refusal.unwrap_or_default()
                    )));
                }
            }
        }
        // New entries first, then the old ones that are not kept: a port kept across the change
        // is never missing from the datapath.
        for port in &chosen {
            for (key, target) in ep.port_entries(port) {
                self.datapath.set_port(key, target).map_err(Error::internal)?;
            }
        }
        for port in ep.ports.iter().filter(|p| !chosen.contains(p)) {
            for (key, target) in ep.port_entries(port) {
                if let Err(e) = self.datapath.remove_port_if(key, target) {
                    log::warn!("withdrawing {port} of endpoint {}: {e:#}", &ep.id[..12]);
                }
            }
        }
        let shown: Vec<String> = chosen.iter().map(|p| p.to_string()).collect();
        if chosen == ep.ports {
            // Nothing changed, nothing to record (Docker calls this for a container's gateway
            // endpoint whether or not it publishes anything).
            return Ok(shown);
        }
        let before = self.state.clone();
        if let Some(stored) = self.state.endpoints.iter_mut().find(|e| e.id == ep.id) {
            stored.ports = chosen.clone();
        }
        if let Err(e) = self.commit() {
            self.state = before;
            return Err(Error::internal(e));
        }
        if !(chosen.is_empty() && ep.ports.is_empty()) {
            log::info!("endpoint {} ({}) publishes: [{}]", &ep.id[..12], ep.container_name, shown.join(", "));
        }
        Ok(shown)
    }

    /// Frees what `frontend` holds on `network` at `address` (an endpoint of the engine's that
    /// the engine forgot, since it gives the address out again). Nothing of another front-end's
    /// is touched: that is a real conflict, reported when the new endpoint is allocated.
    pub async fn reclaim_address(&mut self, network: &str, address: IpAddr, frontend: Frontend) -> DaemonResult<()> {
        let net = self.network(network)?.clone();
        let stale: Vec<String> = self
            .state
            .all_allocations()
            .filter(|a| a.network_id == net.id && a.addresses().any(|a| a == address) && a.frontend == frontend)
            .map(|a| a.id.clone())
            .collect();
        for id in stale {
            log::warn!(
                "endpoint {} ({address} on network {}): {} gives its address out again; freeing it",
                &id[..12],
                net.name,
                frontend.name()
            );
            self.release(&id).await?;
        }
        Ok(())
    }
}
