//! Making the kernel match the stored state: at start-up (after a crash at any point), while
//! running (endpoints whose namespace has gone), and for `bpfnet daemon --cleanup`.
use std::{
    collections::HashSet,
    path::Path,
};

use anyhow::{bail, Context, Result};
use datapath_common::IpKey;
use tokio::sync::Mutex;

use super::{endpoint_alias, Config, Daemon, Published, GATEWAY_DEVICE, GATEWAY_LABEL, HOST_VETH_ALIAS};
use crate::{
    bpffs,
    plumbing::{self, LinkInfo, Netlink},
    state::{Endpoint, Store},
};

/// Endpoints removed per hold of the daemon's lock when many namespaces vanish at once, so that
/// changes waiting behind the collector wait for one small batch, not for all of them.
const GC_BATCH: usize = 16;

/// The host-side veth of `ep` among `links`: the interface carrying the endpoint's alias (its
/// identity, kept through renames), or the interface at the recorded index still bearing the
/// recorded name (someone changed the alias), or, for a connect a crash interrupted before the
/// alias was set, the unmarked interface with the name it was created under.
pub(super) fn endpoint_link<'a>(links: &'a [LinkInfo], ep: &Endpoint) -> Option<&'a LinkInfo> {
    let alias = endpoint_alias(&ep.id);
    links
        .iter()
        .find(|l| l.alias.as_deref() == Some(alias.as_str()))
        .or_else(|| links.iter().find(|l| ep.host_ifindex != 0 && l.index == ep.host_ifindex && l.name == ep.host_interface))
        .or_else(|| links.iter().find(|l| l.alias.is_none() && l.name == ep.host_interface))
}

/// Called when there is no state file: if bpfnet's datapath is still in place (marked veths,
/// gateway addresses, attached programs), the state was lost, not never made. Starting empty
/// would remove every container's network, so refuse and say how to proceed.
pub(super) async fn refuse_if_datapath_exists(netlink: &Netlink, lo: u32, bpffs_root: &Path, state_file: &Path) -> Result<()> {
    let veths = netlink
        .links()
        .await?
        .into_iter()
        .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(HOST_VETH_ALIAS)))
        .count();
    let gateways = netlink.labelled_addresses(lo, GATEWAY_LABEL).await?.len();
    let programs = std::fs::read_dir(bpffs::links_dir(bpffs_root)).map(|d| d.count()).unwrap_or(0);
    if veths + gateways + programs > 0 {
        bail!(
            "the state file {} is missing, but bpfnet's datapath is still in place here ({veths} endpoint \
             interfaces, {gateways} gateway addresses, {programs} attached programs); starting without the \
             state would tear every container's network down, so the daemon does not start. Containers keep \
             forwarding meanwhile. Put the state file back and start again, or remove everything bpfnet made \
             with `bpfnet daemon --cleanup` (same --netns, --state-dir and --bpffs) and start afresh",
            state_file.display()
        );
    }
    Ok(())
}

impl Daemon {
    /// Makes the kernel match the desired state. Idempotent: safe after a crash at any point.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        for net in self.state.networks.clone() {
            if let Some(v4) = net.ipv4 {
                self.netlink.add_labelled_local_address(self.gateway_ifindex, v4.gateway, GATEWAY_LABEL).await?;
            }
            // Without its IPv6 gateway (IPv6 turned off here since) a dual-stack network still
            // serves IPv4, an IPv6-only one nothing (said loudly; the other networks go on).
            if let Some(v6) = net.ipv6 {
                if let Err(e) = self.netlink.add_labelled_local_address(self.gateway_ifindex, v6.gateway, GATEWAY_LABEL).await {
                    let e = e.context(format!("network {}: its IPv6 gateway {} (is IPv6 off on lo?)", net.name, v6.gateway));
                    if net.ipv4.is_none() {
                        log::error!("{e:#}: the IPv6-only network is cut off until its gateway can be added (at the next start)");
                    } else {
                        log::warn!("{e:#}");
                    }
                }
            }
        }
        // Gateways of networks that no longer exist (a crash between saving and removing).
        for ip in self.netlink.labelled_addresses(self.gateway_ifindex, GATEWAY_LABEL).await? {
            if !self.state.networks.iter().any(|n| n.gateways().any(|g| g == ip)) {
                log::info!("removing gateway address {ip}, which no network has");
                self.netlink.delete_addresses(self.gateway_ifindex, Some(ip), Some(GATEWAY_LABEL)).await?;
            }
        }

        // Connects a crash interrupted: remove whatever they made (the veth pair, with its
        // container side; the datapath entries go with the retain below).
        let links = self.netlink.links().await?;
        for ep in std::mem::take(&mut self.state.connecting) {
            log::info!("removing what an interrupted connect of {} ({}) left", ep.container_name, &ep.id[..12]);
            if let Some(link) = endpoint_link(&links, &ep) {
                match self.netlink.delete_link(link.index).await {
                    Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => return Err(e),
                    _ => {}
                }
            }
        }

        // Allocations whose network no longer exists (a state written before `network rm`
        // refused them) hold nothing: forget them.
        let networks: HashSet<String> = self.state.networks.iter().map(|n| n.id.clone()).collect();
        self.state.allocations.retain(|a| {
            let keep = networks.contains(&a.network_id);
            if !keep {
                log::warn!("forgetting allocated endpoint {} ({}): its network is gone", &a.id[..12], a.container_name);
            }
            keep
        });

        let links = self.netlink.links().await?;
        let gone: Vec<String> =
            self.state.endpoints.iter().filter(|ep| endpoint_link(&links, ep).is_none()).map(|ep| ep.id.clone()).collect();
        self.remove_gone_endpoints(&gone).await?;

        let recorded: HashSet<String> = self.state.endpoints.iter().map(|e| endpoint_alias(&e.id)).collect();
        for name in remove_unrecorded_veths(&self.netlink, &recorded).await? {
            log::info!("removed {name}, an endpoint interface with no record (left by a crash)");
        }

        let links = self.netlink.links().await?;
        let mut unprogrammed = HashSet::new();
        let mut desired_endpoints = HashSet::new();
        let mut desired_ifaces = HashSet::new();
        let mut desired_ports = HashSet::new();
        for i in 0..self.state.endpoints.len() {
            let ep = self.state.endpoints[i].clone();
            let net = self.state.network_by_id(&ep.network_id).context("endpoint of a missing network")?.clone();
            let Some(link) = endpoint_link(&links, &ep).cloned() else { continue };
            if link.index != ep.host_ifindex {
                self.state.endpoints[i].host_ifindex = link.index;
            }
            if link.name != ep.host_interface {
                log::info!("endpoint {} ({}): its host side {} is now named {}", &ep.id[..12], ep.container_name, ep.host_interface, link.name);
            }
            desired_endpoints.extend(ep.addresses().map(IpKey::from));
            desired_ifaces.insert(link.index);
            desired_ports.extend(ep.ports.iter().flat_map(|p| ep.port_entries(p)).map(|(key, _)| key));
            // One broken endpoint must not keep the daemon (and every other endpoint) down.
            if let Err(e) = self.program_endpoint(&net, &ep, &link).await {
                log::error!("could not restore endpoint {} ({}): {e:#}", &ep.id[..12], ep.container_name);
                unprogrammed.insert(ep.host_interface.clone());
            }
        }
        desired_ports.extend(self.reconcile_services()?);
        self.datapath.retain(&desired_endpoints, &desired_ifaces, &desired_ports)?;
        // An older bpfnet's TCX links, now that every endpoint has its filter (an endpoint that
        // could not get one keeps its link, and with it a program).
        let forgotten = self.datapath.forget_endpoint_links(&unprogrammed)?;
        if forgotten > 0 {
            log::info!("removed {forgotten} endpoint TCX links an older bpfnet pinned (endpoints run their program as a filter now)");
        }
        self.commit()
    }

    /// Removes the endpoints `ids` whose host-side veth has gone (their namespace was deleted,
    /// and the kernel destroyed the pair with it). Ids no longer in the state are skipped. An
    /// endpoint a front-end allocated keeps its allocation until the front-end releases it.
    pub(super) async fn remove_gone_endpoints(&mut self, ids: &[String]) -> Result<()> {
        let candidates: Vec<Endpoint> = self.state.endpoints.iter().filter(|e| ids.contains(&e.id)).cloned().collect();
        let mut gone = Vec::new();
        for ep in candidates {
            // Looked for again under the lock: since the caller's dump the endpoint may have
            // been detached and attached again, with a new veth.
            if self.locate(&ep).await?.is_none() {
                gone.push(ep);
            }
        }
        for ep in &gone {
            log::info!(
                "endpoint {} ({} {} {}): its namespace is gone; removing it",
                &ep.id[..12],
                ep.container_name,
                ep.interface,
                ep.address()
            );
            self.drop_backends_of(&ep.id);
            if let Err(e) = self.teardown_endpoint(ep, None).await {
                log::warn!("cleaning up endpoint {}: {e:#}", &ep.id[..12]);
            }
            self.state.endpoints.retain(|e| e.id != ep.id);
            if ep.kept_when_detached {
                self.state.allocations.push(ep.allocation.clone());
            }
            if ep.default_route || ep.address6.is_some() {
                self.move_default_route(ep).await;
            }
        }
        if !gone.is_empty() {
            self.commit()?;
        }
        Ok(())
    }
}

/// One round of the collector: finds endpoints whose veth has gone without holding the daemon's
/// lock (a dump of the interfaces, compared with the last committed state), then removes them in
/// small batches, taking the lock for each. Returns how many were removed.
pub async fn collect_gone_endpoints(daemon: &Mutex<Daemon>, published: &Published, netlink: &Netlink) -> Result<usize> {
    // The state before the dump: an endpoint committed by then had its veth by then, so one
    // missing from the dump is gone for good (veths do not come back; a renamed one keeps its
    // alias). An endpoint disconnected meanwhile is skipped by `remove_gone_endpoints`.
    let committed = published.get();
    if committed.endpoints.is_empty() {
        return Ok(0);
    }
    let links = netlink.links().await?;
    let gone: Vec<String> =
        committed.endpoints.iter().filter(|ep| endpoint_link(&links, ep).is_none()).map(|ep| ep.id.clone()).collect();
    for batch in gone.chunks(GC_BATCH) {
        daemon.lock().await.remove_gone_endpoints(batch).await?;
    }
    Ok(gone.len())
}

/// `bpfnet daemon --cleanup`: removes everything bpfnet created (veths, gateway addresses, state);
/// the caller removes the pins.
pub async fn cleanup(config: &Config) -> Result<()> {
    let store = Store::new(&config.state_dir)?;
    // A damaged file must not stop the cleanup it recommends: what it cannot say, the aliases do.
    let state = store.load().unwrap_or_else(|e| {
        log::warn!("{e:#}; removing what the kernel shows instead");
        None
    });
    let state = state.unwrap_or_default();
    let netlink = Netlink::connect()?;
    let links = netlink.links().await?;
    // Recorded endpoints and interrupted connects (which may not carry the alias yet).
    for ep in state.endpoints.iter().chain(&state.connecting) {
        if let Some(link) = endpoint_link(&links, ep) {
            match netlink.delete_link(link.index).await {
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => return Err(e),
                _ => {}
            }
        }
    }
    // Also endpoint interfaces the state never recorded.
    remove_unrecorded_veths(&netlink, &HashSet::new()).await?;
    if let Some(lo) = netlink.link_index(GATEWAY_DEVICE).await? {
        netlink.delete_addresses(lo, None, Some(GATEWAY_LABEL)).await?;
    }
    netlink.delete_link_by_name(super::overlay::VXLAN_DEVICE).await?;
    crate::store::Store::remove_all(&mut crate::store::FileStore::open(&config.state_dir)?)?;
    Ok(())
}

/// Deletes host-side veths carrying bpfnet's alias that is not in `recorded`; returns their names.
async fn remove_unrecorded_veths(netlink: &Netlink, recorded: &HashSet<String>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for link in netlink.links().await? {
        let Some(alias) = &link.alias else { continue };
        if alias.starts_with(HOST_VETH_ALIAS) && !recorded.contains(alias) {
            match netlink.delete_link(link.index).await {
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => return Err(e),
                _ => removed.push(link.name),
            }
        }
    }
    Ok(removed)
}
