//! The routing mesh: services of the cluster. A service on an overlay network is defined once in
//! etcd (`SharedStore::create_service`, its VIP claimed there like an endpoint's address) and
//! made on every node that holds the network, as a local service marked `cluster`: the same VIP,
//! published on every node's addresses, balanced by Maglev over the same backends wherever they
//! live. A backend serves while its address is claimed (its endpoint lives), so every node builds
//! the same table from the same etcd view and a flow keeps its backend whichever node it lands
//! on; a node that dies takes its backends out of every table when its lease expires.
//!
//! The datapath carries a connection to a backend on another node through the tunnel; that node
//! delivers it untranslated (the backend sees the client's address) and sends the answers back
//! through the tunnel to the node the client reached, which restores its published address
//! (`MESH_BACKENDS` says what another node may send to a backend here).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use datapath_common::{IpKey, PortKey};

use super::{
    publish,
    services::{build_table, take_free, BackendArg, ServiceBasics},
    Daemon, DaemonResult, Error,
};
use crate::{
    api, ids,
    ports::{self, PublishedPort},
    state::{Backend, Network, Service},
    store::shared::{BackendRecord, ServiceRecord, SharedError},
};

/// Who holds each address of the overlay networks: (network id, address) -> (endpoint id,
/// container name, its node unless it is this one).
type Holders = HashMap<(String, IpAddr), (String, String, Option<String>)>;

/// Tries of a VIP that another node took meanwhile.
const VIP_TRIES: usize = 64;

/// `--publish` of a cluster service: `HOST_PORT` or `0.0.0.0:HOST_PORT` (every address of every
/// node: the routing mesh).
fn mesh_publish(spec: &str) -> DaemonResult<u16> {
    let port = spec.strip_prefix("0.0.0.0:").unwrap_or(spec);
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::invalid(format!(
            "--publish {spec:?}: a cluster service is published on every address of every node: give HOST_PORT (1-65535)"
        ))),
    }
}

/// The local publication of a cluster service's port.
fn publication(host_port: u16, port: u16, protocol: ports::Protocol) -> DaemonResult<PublishedPort> {
    ports::parse(&format!("{host_port}:{port}/{protocol}")).map_err(|e| Error::invalid(format!("--publish {host_port}: {e:#}")))
}

impl Daemon {
    /// `service create` on an overlay network: checked here, defined in etcd (which refuses a
    /// name or VIP taken on another node), then made here at once; other nodes make it when they
    /// see it.
    pub(super) async fn create_cluster_service(&mut self, req: &api::CreateService, args: &[BackendArg]) -> DaemonResult<()> {
        let store = self.overlay_store()?;
        let ServiceBasics { net, port, protocol, affinity_secs } = self.service_basics(req)?;
        let view_has = self.cluster_services().iter().any(|s| s.name == req.name);
        if self.state.services.contains_key(&req.name) || view_has {
            return Err(Error::conflict(format!("a service named {:?} exists already", req.name)));
        }
        let publish = match &req.publish {
            None => None,
            Some(spec) => {
                let host_port = mesh_publish(spec)?;
                if let Some(holder) = publish::Holders::of(&self.state, None, self.nat_ports).holder(&publication(host_port, port, protocol)?) {
                    return Err(holder.refusal(spec));
                }
                Some(host_port)
            }
        };
        let mut backends: Vec<BackendRecord> = Vec::new();
        for arg in args {
            let b = self.mesh_backend(&net, arg, port)?;
            if backends.contains(&b) {
                return Err(Error::conflict(format!("{} is given twice as a backend", arg.arg)));
            }
            backends.push(b);
        }
        let mut record = ServiceRecord {
            id: ids::random_id(),
            name: req.name.clone(),
            network_id: net.id.clone(),
            network: net.name.clone(),
            vip: IpAddr::from([0, 0, 0, 0]),
            port,
            protocol,
            publish,
            affinity_secs,
            backends,
            created: ids::now_rfc3339(),
        };
        // Its VIP6 pairs with its VIP (as every IPv6 address of an overlay network): --vip6 names
        // the VIP to claim.
        let requested = super::endpoints::overlay_requested_address(&net, req.vip.as_deref(), req.vip6.as_deref(), ("--vip", "--vip6"))?;
        let mut pool = self.cluster_pool(&net);
        let mut revision = None;
        for _ in 0..VIP_TRIES {
            record.vip = pool.take_for(requested.as_deref(), &format!("service {}", req.name)).map_err(Error::refused)?;
            match store.create_service(record.clone()).await {
                Ok(r) => {
                    revision = Some(r);
                    break;
                }
                // The VIP went to another node meanwhile: the next one.
                Err(SharedError::Conflict(held)) if requested.is_none() && !held.starts_with("a service named") => {
                    pool.hold(record.vip, held)
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(revision) = revision else {
            return Err(Error::conflict(format!("no free VIP could be claimed on overlay network {:?}", net.name)));
        };
        self.note_own_revision(revision);
        self.with_own_service(record.clone());
        self.apply_cluster_service(&record, &self.holders())?;
        self.program_mesh();
        Ok(())
    }

    /// `service rm` of a cluster service: removed from etcd, then here; other nodes follow.
    pub(super) async fn remove_cluster_service(&mut self, name: &str) -> DaemonResult<()> {
        let store = self.overlay_store()?;
        let revision = match store.remove_service(name.to_string()).await {
            Ok(revision) => revision,
            // Gone from etcd already (removed on another node): only the local copy is left.
            Err(SharedError::NotFound(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        self.note_own_revision(revision);
        self.forget_own_service(name);
        self.remove_local_service(name)?;
        self.program_mesh();
        Ok(())
    }

    /// `service add-backend` / `rm-backend` of a cluster service.
    pub(super) async fn change_cluster_backends(&mut self, name: &str, arg: &BackendArg, add: bool) -> DaemonResult<api::ServiceInspect> {
        let store = self.overlay_store()?;
        let svc = self.service(name)?.clone();
        let net = self.state.network_by_id(&svc.network_id).cloned().ok_or_else(|| Error::not_found("the service's network is gone"))?;
        let (add_list, remove_list) = if add {
            (vec![self.mesh_backend(&net, arg, svc.port)?], vec![])
        } else {
            (vec![], self.mesh_backends_named(&net, &svc, arg)?)
        };
        let (record, revision) = store.change_backends(name.to_string(), add_list, remove_list).await?;
        self.note_own_revision(revision);
        self.with_own_service(record.clone());
        self.apply_cluster_service(&record, &self.holders())?;
        self.program_mesh();
        self.inspect_service(name)
    }

    fn overlay_store(&self) -> DaemonResult<Arc<dyn crate::store::shared::SharedStore>> {
        Ok(self.overlay()?.store.clone())
    }

    /// The cluster's services as last read.
    fn cluster_services(&self) -> Vec<ServiceRecord> {
        self.overlay.as_ref().and_then(|o| o.view.as_ref()).map(|v| v.services.clone()).unwrap_or_default()
    }

    /// Puts this node's own change of `record` into the view at once (the watch brings it a
    /// moment later): a sync in between must not undo it.
    fn with_own_service(&mut self, record: ServiceRecord) {
        if let Some(view) = self.overlay.as_mut().and_then(|o| o.view.as_mut()) {
            view.services.retain(|s| s.name != record.name);
            view.services.push(record);
        }
    }

    fn forget_own_service(&mut self, name: &str) {
        if let Some(view) = self.overlay.as_mut().and_then(|o| o.view.as_mut()) {
            view.services.retain(|s| s.name != name);
        }
    }

    /// A backend given as a namespace of this node connected to `net`, or as the name, an alias
    /// or the address of an endpoint of `net` on any node; `[:PORT]` or the service's port.
    fn mesh_backend(&self, net: &Network, arg: &BackendArg, default_port: u16) -> DaemonResult<BackendRecord> {
        let port = arg.port.unwrap_or(default_port);
        if arg.unresolved.is_none() {
            // A namespace here: its endpoint on the network (namespaces of other hosts are not
            // seen here; one of that name without an endpoint falls through to the names).
            let ep = self.state.endpoints_in_netns(arg.dev, arg.inode).find(|e| e.network_id == net.id);
            if let Some(ep) = ep {
                return Ok(BackendRecord { address: ep.address(), port });
            }
        }
        let found = self.endpoints_named(net, &arg.netns);
        match found[..] {
            [address] => Ok(BackendRecord { address, port }),
            [] => Err(Error::not_found(format!(
                "backend {:?}: no namespace here connected to network {:?}, and no endpoint of it on any node has that name or address",
                arg.arg, net.name
            ))),
            _ => Err(Error::invalid(format!(
                "backend {:?}: several endpoints of network {:?} have that name; give the address",
                arg.arg, net.name
            ))),
        }
    }

    /// The backends of `svc` that `arg` names (with `:PORT`, only that port).
    fn mesh_backends_named(&self, net: &Network, svc: &Service, arg: &BackendArg) -> DaemonResult<Vec<BackendRecord>> {
        let mut addresses: Vec<IpAddr> = if arg.unresolved.is_none() {
            self.state.endpoints_in_netns(arg.dev, arg.inode).filter(|e| e.network_id == net.id).map(|e| e.address()).collect()
        } else {
            vec![]
        };
        if addresses.is_empty() {
            addresses = self.endpoints_named(net, &arg.netns);
        }
        let record = self.cluster_services().into_iter().find(|s| s.name == svc.name);
        let listed = record.map(|r| r.backends).unwrap_or_default();
        let named: Vec<BackendRecord> =
            listed.into_iter().filter(|b| addresses.contains(&b.address) && arg.port.is_none_or(|p| p == b.port)).collect();
        if named.is_empty() {
            return Err(Error::not_found(format!("{} is not a backend of service {:?}", arg.arg, svc.name)));
        }
        Ok(named)
    }

    /// Addresses of the endpoints of `net`, here and on other nodes, that `name` names (its
    /// name, an alias, or its address).
    fn endpoints_named(&self, net: &Network, name: &str) -> Vec<IpAddr> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            // An IPv6 address names the endpoint of the IPv4 address it pairs with (one that
            // pairs with none names nobody).
            return match ip {
                IpAddr::V4(_) => vec![ip],
                IpAddr::V6(_) => net.overlay_pair4(ip).into_iter().collect(),
            };
        }
        let mut found: Vec<IpAddr> = self
            .state
            .allocations_of(&net.id)
            .filter(|a| a.container_name == name || a.aliases.iter().any(|x| x == name))
            .map(|a| a.address())
            .collect();
        if let Some(view) = self.overlay.as_ref().and_then(|o| o.view.as_ref()) {
            let remote = view.endpoints.iter().filter(|e| e.network_id == net.id);
            found.extend(remote.filter(|e| e.container_name == name || e.aliases.iter().any(|x| x == name)).map(|e| e.address));
        }
        found.sort();
        found.dedup();
        found
    }

    /// Makes the cluster's services here as the view shows them: new ones made, changed ones
    /// changed, gone ones removed. Called with every view (and a node's own change).
    pub(super) fn sync_mesh(&mut self) {
        let records = self.cluster_services();
        let holders = self.holders();
        for record in &records {
            if let Err(e) = self.apply_cluster_service(record, &holders) {
                let what = format!("cluster service {}", record.name);
                self.overlay.as_mut().expect("overlay enabled").report_refused(&record.id, &what, &e);
            }
        }
        let gone: Vec<String> = self
            .state
            .services
            .values()
            .filter(|s| s.cluster && !records.iter().any(|r| r.id == s.id))
            .map(|s| s.name.clone())
            .collect();
        for name in gone {
            match self.remove_local_service(&name) {
                Ok(()) => log::info!("cluster service {name} removed from the cluster: removed here"),
                Err(e) => log::warn!("removing cluster service {name}: {e}"),
            }
        }
        self.program_mesh();
    }

    /// Who holds each address of the overlay networks: the claims etcd shows, and this node's
    /// allocations (they hold an address a moment before etcd shows their claim).
    fn holders(&self) -> Holders {
        let own = self.overlay.as_ref().map(|o| o.store.node().to_string()).unwrap_or_default();
        let mut held = HashMap::new();
        if let Some(view) = self.overlay.as_ref().and_then(|o| o.view.as_ref()) {
            for e in view.endpoints.iter().filter(|e| !e.is_reservation()) {
                let node = (e.node != own).then(|| e.node.clone());
                held.insert((e.network_id.clone(), e.address), (e.id.clone(), e.container_name.clone(), node));
            }
        }
        for net in self.state.networks.iter().filter(|n| n.driver.is_overlay()) {
            for a in self.state.allocations_of(&net.id) {
                held.insert((net.id.clone(), a.address()), (a.id.clone(), a.container_name.clone(), None));
            }
        }
        held
    }

    /// The backends of `record` that serve now: those whose address an endpoint holds, on this
    /// node or another (in the record's order, the same on every node).
    /// Each has the IPv6 address paired with its IPv4 one on a dual-stack network (`net`).
    fn serving_backends(record: &ServiceRecord, holders: &Holders, net: &Network) -> Vec<Backend> {
        record
            .backends
            .iter()
            .filter_map(|b| {
                let (endpoint_id, container_name, node) = holders.get(&(record.network_id.clone(), b.address))?.clone();
                let address6 = net.overlay_pair6(b.address);
                Some(Backend { endpoint_id, container_name, address4: Some(b.address), address6, port: b.port, datapath_id: 0, draining: false, node })
            })
            .collect()
    }

    /// Makes or changes the local copy of cluster service `record`.
    fn apply_cluster_service(&mut self, record: &ServiceRecord, holders: &Holders) -> DaemonResult<()> {
        let Some(net) = self.state.network_by_id(&record.network_id).cloned() else {
            // Not made here (refused, or not seen yet): nor are its services.
            return Ok(());
        };
        let mut backends = Self::serving_backends(record, holders, &net);
        // A service made by a version without VIP6s gets its own here.
        let vip6 = net.overlay_pair6(record.vip);
        let current = self.state.services.get(&record.name).cloned();
        match current {
            Some(local) if !local.cluster => Err(Error::conflict(format!("service {:?} of this node has that name", local.name))),
            Some(local) if local.id == record.id => {
                let same = |a: &Backend, b: &Backend| a.address4 == b.address4 && a.port == b.port;
                for b in &mut backends {
                    match local.backends.iter().find(|l| same(l, b)) {
                        Some(l) => b.datapath_id = l.datapath_id,
                        None => {
                            b.datapath_id = self.backend_ids.take().ok_or_else(|| {
                                Error::conflict(format!("the datapath holds {} backends (--max-backends)", self.lb.max_backends - 1))
                            })?
                        }
                    }
                }
                let unchanged = local.vip6 == vip6
                    && backends.len() == local.backends.len()
                    && backends.iter().zip(&local.backends).all(|(a, b)| a == b);
                if unchanged {
                    return Ok(());
                }
                let gone: Vec<Backend> = local.backends.iter().filter(|l| !backends.iter().any(|b| same(l, b))).cloned().collect();
                let new_ids: Vec<u32> =
                    backends.iter().filter(|b| !local.backends.iter().any(|l| same(l, b))).map(|b| b.datapath_id).collect();
                let svc = Service { backends, vip6, ..Service::clone(&local) };
                let gone_refs: Vec<&Backend> = gone.iter().collect();
                if let Err(e) = self.change_service(svc, &gone_refs) {
                    for id in new_ids {
                        self.backend_ids.release(id);
                    }
                    return Err(e);
                }
                log::info!("cluster service {}: {} backend(s) serving", record.name, self.state.services[&record.name].backends.len());
                Ok(())
            }
            Some(_) => {
                // Removed and made again under the same name meanwhile.
                self.remove_local_service(&record.name)?;
                self.install_cluster_service(record, &net, backends)
            }
            None => self.install_cluster_service(record, &net, backends),
        }
    }

    /// Makes cluster service `record` here with `backends` (their ids not taken yet).
    fn install_cluster_service(&mut self, record: &ServiceRecord, net: &Network, mut backends: Vec<Backend>) -> DaemonResult<()> {
        let publish = match record.publish {
            Some(host_port) => {
                let p = publication(host_port, record.port, record.protocol)?;
                if let Some(holder) = publish::Holders::of(&self.state, None, self.nat_ports).holder(&p) {
                    return Err(Error::conflict(format!("it cannot be published here: {holder}")));
                }
                Some(p)
            }
            None => None,
        };
        if let Some(holder) = self.state.all_allocations().find(|a| a.network_id == net.id && a.address4 == Some(record.vip)) {
            return Err(Error::conflict(format!("its VIP {} is {}'s address here", record.vip, holder.container_name)));
        }
        let mut used: HashSet<u32> = self.state.services.values().map(|s| s.datapath_id).collect();
        let datapath_id = take_free(&mut used, &mut 1, self.lb.max_services)
            .ok_or_else(|| Error::conflict(format!("the datapath holds {} services (--max-services)", self.lb.max_services)))?;
        let mut taken = Vec::new();
        for b in &mut backends {
            match self.backend_ids.take() {
                Some(id) => {
                    b.datapath_id = id;
                    taken.push(id);
                }
                None => {
                    for id in taken {
                        self.backend_ids.release(id);
                    }
                    return Err(Error::conflict(format!("the datapath holds {} backends (--max-backends)", self.lb.max_backends - 1)));
                }
            }
        }
        let svc = Service {
            id: record.id.clone(),
            name: record.name.clone(),
            network_id: record.network_id.clone(),
            vip4: Some(record.vip),
            // Its VIP6 (on a dual-stack network): the pair of its VIP, claimed with it.
            vip6: net.overlay_pair6(record.vip),
            port: record.port,
            protocol: record.protocol,
            publish,
            affinity_secs: record.affinity_secs,
            backends,
            datapath_id,
            created: record.created.clone(),
            cluster: true,
        };
        let written = build_table(&svc, self.lb.table_size)
            .and_then(|table| self.program_service(&svc, table))
            .and_then(|()| self.store.put_services(&[&svc]));
        if let Err(e) = written {
            self.unprogram_service(&svc);
            for id in taken {
                self.backend_ids.release(id);
            }
            return Err(Error::internal(e));
        }
        for b in &svc.backends {
            self.backend_ids.added(b);
        }
        let touched: Vec<String> = svc.backends.iter().map(|b| b.endpoint_id.clone()).collect();
        log::info!(
            "cluster service {} made here: {}:{}/{} on network {}, {} backend(s) serving{}",
            svc.name,
            svc.vip(),
            svc.port,
            svc.protocol,
            net.name,
            svc.backends.len(),
            svc.publish.map(|p| format!(", published {p}")).unwrap_or_default()
        );
        self.state.services.insert(svc.name.clone(), Arc::new(svc));
        self.mark_backends(&touched);
        self.compact_services();
        self.publish_state();
        Ok(())
    }

    /// Writes `MESH_BACKENDS`: the backends here of the cluster's services, which other nodes
    /// may send connections from outside to.
    pub(super) fn program_mesh(&mut self) {
        let mut here: HashMap<PortKey, u32> = HashMap::new();
        for svc in self.state.services.values().filter(|s| s.cluster) {
            for b in svc.backends.iter().filter(|b| b.node.is_none() && !b.draining) {
                // Each of its addresses: the routing mesh carries both families.
                for address in b.addresses() {
                    let key = PortKey { addr: IpKey::from(address), port: b.port.to_be(), proto: svc.protocol.number(), _pad: 0 };
                    here.insert(key, svc.datapath_id);
                }
            }
        }
        if let Err(e) = self.datapath.set_mesh_backends(&here) {
            log::error!("writing the routing mesh's backends: {e:#}");
        }
    }
}
