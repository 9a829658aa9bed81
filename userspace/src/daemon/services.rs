//! Services: a VIP and port on a network, optionally published on the host, spread over backends
//! (endpoints of that network) by Maglev consistent hashing in the datapath.
//!
//! A change validates everything first, then writes the datapath (backends, then the table, then
//! the service's header, so a packet never sees a table naming a backend not yet there), then
//! saves the service's own file; if a step fails, what was written is undone. Removing a backend
//! purges its UDP connections (a client's next datagram is balanced again instead of going to a
//! replica that is gone); TCP connections end on their own. `--drain` keeps all its connections
//! and removes the backend once none is left.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use datapath_common::{BackendInfo, IpKey, PortKey, PortTarget, ServiceInfo};

use super::{publish, Daemon, DaemonResult, Error};
use crate::{
    api, ids, ipam, maglev, netns,
    ports::{self, Protocol, PublishedPort},
    state::{Backend, Network, Service},
};

/// A backend as the user named it, its namespace resolved (before the daemon's lock).
#[derive(Debug, Clone)]
pub struct BackendArg {
    pub arg: String,
    pub netns: String,
    pub dev: u64,
    pub inode: u64,
    pub port: Option<u16>,
    /// Why `netns` names no namespace here: a local service refuses the backend with it; a
    /// cluster service looks for an endpoint of that name or address on any node.
    pub unresolved: Option<String>,
}

impl BackendArg {
    /// The namespace, or why there is none.
    pub(super) fn require_netns(&self) -> DaemonResult<(u64, u64)> {
        match &self.unresolved {
            Some(why) => Err(Error::not_found(why.clone())),
            None => Ok((self.dev, self.inode)),
        }
    }
}

/// Splits `NETNS[:PORT]` and resolves the namespace.
pub fn resolve_backends(args: &[String]) -> DaemonResult<Vec<BackendArg>> {
    BackendResolver::default().resolve(args)
}

/// Resolves backends, opening each namespace once however many backends name it (a batch of
/// 10,000 services over the same replicas names each 10,000 times).
#[derive(Default)]
pub struct BackendResolver {
    seen: HashMap<String, Result<(u64, u64), String>>,
}

impl BackendResolver {
    pub fn resolve(&mut self, args: &[String]) -> DaemonResult<Vec<BackendArg>> {
        args.iter().map(|arg| self.resolve_one(arg)).collect()
    }

    fn resolve_one(&mut self, arg: &str) -> DaemonResult<BackendArg> {
        let (netns, port) = match arg.rsplit_once(':') {
            Some((ns, port)) if !ns.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
                let port = match port.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(Error::invalid(format!("invalid port in backend {arg:?}: ports are 1-65535"))),
                };
                (ns, Some(port))
            }
            _ => (arg, None),
        };
        let found = self
            .seen
            .entry(netns.to_string())
            .or_insert_with(|| netns::resolve(netns).map(|ns| (ns.dev, ns.inode)).map_err(|e| format!("backend {arg:?}: {e:#}")))
            .clone();
        let ((dev, inode), unresolved) = match found {
            Ok(id) => (id, None),
            Err(why) => ((0, 0), Some(why)),
        };
        Ok(BackendArg { arg: arg.to_string(), netns: netns.to_string(), dev, inode, port, unresolved })
    }
}

/// `PORT[/tcp|/udp]`.
pub(super) fn parse_service_port(text: &str) -> DaemonResult<(u16, Protocol)> {
    let (port, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(Error::invalid(format!("unknown protocol {other:?} in --port {text:?}: expected tcp or udp"))),
        None => (text, Protocol::Tcp),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, protocol)),
        _ => Err(Error::invalid(format!("invalid --port {text:?}: expected PORT[/tcp|/udp] with a port 1-65535"))),
    }
}

/// `client-ip[:SECONDS]` (default 10800 s, kube-proxy's).
pub(super) fn parse_affinity(text: &str) -> DaemonResult<u64> {
    let bad = || Error::invalid(format!("invalid --affinity {text:?}: expected client-ip[:SECONDS], e.g. client-ip:600"));
    match text.split_once(':') {
        None if text == "client-ip" => Ok(10_800),
        Some(("client-ip", secs)) => match secs.parse::<u64>() {
            Ok(s) if (1..=86_400).contains(&s) => Ok(s),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// What every service request gives, checked: its network, port and protocol, affinity.
pub(super) struct ServiceBasics {
    pub net: Network,
    pub port: u16,
    pub protocol: Protocol,
    pub affinity_secs: Option<u64>,
}

/// A service's `--publish [HOST_IP:]HOST_PORT` of its `port`/`protocol`, within the publication
/// policy (`holders`: what is held, the batch's earlier services too).
fn service_publication(
    spec: &str,
    net: &Network,
    port: u16,
    protocol: Protocol,
    local: &[ipam::HostAddress],
    holders: &publish::Holders,
) -> DaemonResult<PublishedPort> {
    if spec.contains('/') {
        return Err(Error::invalid(format!(
            "--publish {spec:?}: give [HOST_IP:]HOST_PORT only; the protocol is the service's (--port {port}/{protocol})"
        )));
    }
    let full = format!("{spec}:{port}/{protocol}");
    let published = ports::parse(&full).map_err(|e| Error::invalid(format!("--publish {spec:?}: {e:#}")))?;
    if published.count != 1 {
        return Err(Error::invalid(format!("--publish {spec:?}: a service is published on one port")));
    }
    publish::refuse_family_without(net, &published, spec, "its services")?;
    publish::check_host_address(published.host_ip, local, spec)?;
    if let Some(holder) = holders.holder(&published) {
        return Err(holder.refusal(spec));
    }
    Ok(published)
}

/// The service's `PORTS` entries: its VIPs (reachable from its network and the host), and its
/// published host port (from anywhere; each family where the service has it).
fn port_entries(svc: &Service, net: &Network) -> Vec<(PortKey, PortTarget)> {
    let proto = svc.protocol.number();
    let mut entries: Vec<(PortKey, PortTarget)> = svc
        .vips()
        .map(|vip| {
            let key = PortKey { addr: IpKey::from(vip), port: svc.port.to_be(), proto, _pad: 0 };
            (key, PortTarget { service: svc.datapath_id, network: net.datapath_id, ..PortTarget::default() })
        })
        .collect();
    if let Some(p) = &svc.publish {
        for (key, _) in p.entries(svc.vip4, svc.vip6, false) {
            entries.push((key, PortTarget { service: svc.datapath_id, ..PortTarget::default() }));
        }
    }
    entries
}

/// The Maglev table of `svc` (backend datapath ids), over the backends that take new
/// connections, written into `out` (a zeroed table, which no backend id matches, for none).
fn build_table_into(svc: &Service, out: &mut [u32]) -> Result<()> {
    let active: Vec<&Backend> = svc.backends.iter().filter(|b| !b.draining).collect();
    if active.is_empty() {
        out.fill(0);
        return Ok(());
    }
    let names: Vec<String> = active.iter().map(|b| b.maglev_name()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    maglev::fill_table(&refs, out)?;
    for slot in out.iter_mut() {
        *slot = active[*slot as usize].datapath_id;
    }
    Ok(())
}

/// The size of `svc`'s table when tables hold at most `max` slots: by the backends that take
/// new connections (see [`maglev::table_size_for`]).
pub(super) fn table_size(svc: &Service, max: u32) -> u32 {
    maglev::table_size_for(svc.backends.iter().filter(|b| !b.draining).count(), max)
}

/// `svc`'s table (of [`table_size`] slots) when tables hold at most `max`.
pub(super) fn build_table(svc: &Service, max: u32) -> Result<Vec<u32>> {
    let mut out = vec![0; table_size(svc, max) as usize];
    build_table_into(svc, &mut out)?;
    Ok(out)
}

/// The lowest id from `*cursor` up to `max` (inclusive) not in `used`; taken (added to `used`)
/// and the cursor moved past it, so that a batch finds its ids in one pass.
pub(super) fn take_free(used: &mut HashSet<u32>, cursor: &mut u32, max: u32) -> Option<u32> {
    let id = (*cursor..=max).find(|id| !used.contains(id))?;
    used.insert(id);
    *cursor = id + 1;
    Some(id)
}

/// Which `BACKENDS` slots are taken and which endpoints serve some service, kept with every
/// change: at 100,000 backends, neither may cost a walk over every service per change.
pub(super) struct BackendIds {
    used: HashSet<u32>,
    /// Endpoint id -> how many service backends it is.
    per_endpoint: HashMap<String, u32>,
    /// Where the search for a free id starts (past the last one taken).
    hint: u32,
    max: u32,
}

impl BackendIds {
    /// What `state` holds; ids go from 1 to `max_backends - 1`.
    pub(super) fn of(state: &crate::state::State, max_backends: u32) -> Self {
        let mut ids = Self { used: HashSet::new(), per_endpoint: HashMap::new(), hint: 1, max: max_backends.saturating_sub(1) };
        for b in state.services.values().flat_map(|s| &s.backends) {
            ids.used.insert(b.datapath_id);
            ids.added(b);
        }
        ids
    }

    /// Whether endpoint `id` is a backend of some service (draining ones included: their
    /// connections still answer through a VIP).
    pub(super) fn serves(&self, endpoint_id: &str) -> bool {
        self.per_endpoint.contains_key(endpoint_id)
    }

    /// `b` (its id taken before) is now part of a service.
    pub(super) fn added(&mut self, b: &Backend) {
        *self.per_endpoint.entry(b.endpoint_id.clone()).or_insert(0) += 1;
    }

    /// `b` left its service: its id is free, its endpoint serves one service less.
    pub(super) fn removed(&mut self, b: &Backend) {
        self.release(b.datapath_id);
        if let Some(n) = self.per_endpoint.get_mut(&b.endpoint_id) {
            *n -= 1;
            if *n == 0 {
                self.per_endpoint.remove(&b.endpoint_id);
            }
        }
    }

    pub(super) fn take(&mut self) -> Option<u32> {
        let start = self.hint.clamp(1, self.max.max(1));
        let id = (start..=self.max).chain(1..start).find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        self.hint = id + 1;
        Some(id)
    }

    pub(super) fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// The tables of many services, built on every core straight into `slots` (the mapped
/// `MAGLEV`: service `s` owns `m` slots from `(s.datapath_id - 1) * m`, and its table fills the
/// first [`table_size`] of them). Only for services no packet uses yet, or whose table comes out
/// the same (a restart): a table rewritten in place may name, for a moment, backends whose
/// entries are not written yet.
fn write_tables(services: &[&Service], m: u32, slots: &mut [u32]) -> Result<()> {
    let ranges: Vec<std::ops::Range<usize>> = services
        .iter()
        .map(|s| {
            let start = (s.datapath_id as usize - 1) * m as usize;
            start..start + table_size(s, m) as usize
        })
        .collect();
    anyhow::ensure!(ranges.iter().all(|r| r.end <= slots.len()), "a service's table lies beyond the {} slots", slots.len());
    // Disjoint ranges (datapath ids are unique) of one slice, shared by the threads.
    struct Slots(*mut u32);
    // SAFETY: each thread writes only the ranges of its own services, which no other touches.
    unsafe impl Sync for Slots {}
    let base = Slots(slots.as_mut_ptr());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(services.len().max(1));
    let chunk = services.len().div_ceil(threads).max(1);
    let work: Vec<(&Service, std::ops::Range<usize>)> = services.iter().copied().zip(ranges).collect();
    std::thread::scope(|scope| {
        let base = &base;
        let handles: Vec<_> = work
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    for (svc, range) in part {
                        // SAFETY: in bounds (checked above) and disjoint from every other range.
                        let out = unsafe { std::slice::from_raw_parts_mut(base.0.add(range.start), range.len()) };
                        build_table_into(svc, out)?;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a Maglev table build panicked"))??;
        }
        Ok(())
    })
}

impl Daemon {
    /// Checks what every service request gives (name, network, port, affinity; a publication on
    /// an internal network), local or the cluster's.
    pub(super) fn service_basics(&self, req: &api::CreateService) -> DaemonResult<ServiceBasics> {
        ipam::validate_name("service name", &req.name).map_err(Error::invalid)?;
        let net = self.network(&req.network)?.clone();
        let (port, protocol) = parse_service_port(&req.port)?;
        let affinity_secs = req.affinity.as_deref().map(parse_affinity).transpose()?;
        if let (Some(vip), None) = (&req.vip, net.ipv4) {
            return Err(Error::invalid(format!("--vip {vip}: network {:?} is IPv6-only (give --vip6)", net.name)));
        }
        if req.publish.is_some() {
            publish::refuse_on_internal(&net, "its services")?;
        }
        if let (Some(vip6), None) = (&req.vip6, net.ipv6) {
            return Err(Error::invalid(format!("--vip6 {vip6}: network {:?} has no IPv6 subnet", net.name)));
        }
        Ok(ServiceBasics { net, port, protocol, affinity_secs })
    }

    pub(super) fn service(&self, name: &str) -> DaemonResult<&Arc<Service>> {
        self.state.services.get(name).ok_or_else(|| Error::not_found(format!("service {name:?} not found")))
    }

    /// Creates services as one change: all of them, or (on any error) none.
    pub async fn create_services(&mut self, reqs: Vec<(api::CreateService, Vec<BackendArg>)>) -> DaemonResult<api::ServicesCreated> {
        let on_overlay = |req: &api::CreateService| self.network(&req.network).is_ok_and(|n| n.driver.is_overlay());
        if reqs.iter().any(|(req, _)| on_overlay(req)) {
            let [(req, backends)] = &reqs[..] else {
                return Err(Error::invalid("services of overlay networks (the cluster's) are created one at a time, not in a batch"));
            };
            let started = Instant::now();
            self.create_cluster_service(req, backends).await?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            return Ok(api::ServicesCreated { created: 1, elapsed_ms, datapath_ms: elapsed_ms });
        }
        let result = self.try_create_services(reqs).await;
        if result.is_err() {
            // Backend ids taken by what was refused are free again.
            self.backend_ids = BackendIds::of(&self.state, self.lb.max_backends);
        }
        result
    }

    async fn try_create_services(&mut self, reqs: Vec<(api::CreateService, Vec<BackendArg>)>) -> DaemonResult<api::ServicesCreated> {
        let started = Instant::now();
        let mut made: Vec<Service> = Vec::with_capacity(reqs.len());
        let mut local = None;
        let mut used_ids: HashSet<u32> = self.state.services.values().map(|s| s.datapath_id).collect();
        let mut service_cursor = 1;
        let mut names: HashSet<&str> = HashSet::new();
        let state = self.state.clone();
        let mut pools: HashMap<String, Option<ipam::AddressPool>> = HashMap::new();
        let mut pools6: HashMap<String, Option<ipam::AddressPool>> = HashMap::new();
        // Indexed by port: a batch of 10,000 checks each one against a few entries, not against
        // every service (which took 0.4 s at that size).
        let mut holders = publish::Holders::of(&self.state, None, self.nat_ports);
        for (req, backends) in &reqs {
            let ServiceBasics { net, port, protocol, affinity_secs } = self.service_basics(req)?;
            if self.state.services.contains_key(&req.name) || !names.insert(&req.name) {
                return Err(Error::conflict(format!("a service named {:?} exists already", req.name)));
            }
            let publish = match &req.publish {
                None => None,
                Some(spec) => {
                    if local.is_none() {
                        local = Some(self.netlink.host_addresses("").await.map_err(Error::internal)?);
                    }
                    let published = service_publication(spec, &net, port, protocol, local.as_deref().unwrap_or_default(), &holders)?;
                    holders.take(published, Some(&req.name));
                    Some(published)
                }
            };
            // The VIP is held like an endpoint's address (one of a service made earlier in this
            // batch too).
            let holder = format!("service {}", req.name);
            // An IPv4 VIP on a network with IPv4, an IPv6 one on a network with IPv6.
            let pool4 = pools.entry(net.id.clone()).or_insert_with(|| ipam::AddressPool::new(&state, &net.id));
            let vip4 = pool4.as_mut().map(|pool| pool.take_for(req.vip.as_deref(), &holder)).transpose().map_err(Error::refused)?;
            let pool6 = pools6.entry(net.id.clone()).or_insert_with(|| ipam::AddressPool::new6(&state, &net.id));
            let vip6 = pool6.as_mut().map(|pool| pool.take_for(req.vip6.as_deref(), &holder)).transpose().map_err(Error::refused)?;
            let datapath_id = take_free(&mut used_ids, &mut service_cursor, self.lb.max_services).ok_or_else(|| {
                Error::conflict(format!("the datapath holds {} services (bpfnet daemon --max-services)", self.lb.max_services))
            })?;
            let mut svc = Service {
                id: ids::random_id(),
                name: req.name.clone(),
                network_id: net.id.clone(),
                vip4,
                vip6,
                port,
                protocol,
                publish,
                affinity_secs,
                backends: vec![],
                datapath_id,
                created: ids::now_rfc3339(),
                cluster: false,
            };
            for b in backends {
                let backend = self.new_backend(&svc, &net, b)?;
                svc.backends.push(backend);
            }
            made.push(svc);
        }
        let refs: Vec<&Service> = made.iter().collect();
        let validated = started.elapsed();
        // Straight into the datapath's tables: no packet uses them before the headers are written.
        write_tables(&refs, self.lb.table_size, self.datapath.maglev_slots()).map_err(Error::internal)?;
        let built = started.elapsed();
        let programming = Instant::now();
        let programmed = self.program_services(&refs, None);
        let datapath_ms = programming.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = programmed.and_then(|()| self.store.put_services(&refs)) {
            for svc in &made {
                self.unprogram_service(svc);
            }
            return Err(Error::internal(e));
        }
        let programmed = made.len();
        log::info!(
            "{programmed} services: validated in {validated:?}, tables built by {built:?}, datapath written and saved by {:?}",
            started.elapsed()
        );
        let mut backend_endpoints: Vec<String> = Vec::new();
        for b in made.iter().flat_map(|s| &s.backends) {
            self.backend_ids.added(b);
            backend_endpoints.push(b.endpoint_id.clone());
        }
        for svc in made {
            log::info!(
                "service {} created: {}:{}/{} on network {}, {} backend(s){}",
                svc.name,
                svc.vips().map(|v| if v.is_ipv6() { format!("[{v}]") } else { v.to_string() }).collect::<Vec<_>>().join(" and "),
                svc.port,
                svc.protocol,
                self.state.network_by_id(&svc.network_id).map_or("?", |n| n.name.as_str()),
                svc.backends.len(),
                svc.publish.map(|p| format!(", published {p}")).unwrap_or_default()
            );
            self.state.services.insert(svc.name.clone(), Arc::new(svc));
        }
        self.mark_backends(&backend_endpoints);
        self.compact_services();
        self.publish_state();
        Ok(api::ServicesCreated { created: programmed, elapsed_ms: started.elapsed().as_secs_f64() * 1e3, datapath_ms })
    }


    /// A backend of `svc` on `net` for the namespace `arg` names, with a free datapath id.
    fn new_backend(&mut self, svc: &Service, net: &Network, arg: &BackendArg) -> DaemonResult<Backend> {
        let (dev, inode) = arg.require_netns()?;
        let ep = self
            .state
            .endpoints_in_netns(dev, inode)
            .find(|e| e.network_id == net.id)
            .ok_or_else(|| Error::invalid(format!("backend {:?} is not connected to network {:?}", arg.netns, net.name)))?;
        let port = arg.port.unwrap_or(svc.port);
        if svc.backends.iter().any(|b| b.endpoint_id == ep.id && b.port == port) {
            return Err(Error::conflict(format!("{} is already a backend of service {:?}", arg.arg, svc.name)));
        }
        // A VIP's connections go to the backends' addresses of its family.
        let address_for = |vip: Option<std::net::IpAddr>, address: Option<std::net::IpAddr>, family: &str| match vip {
            Some(_) => address.map(Some).ok_or_else(|| Error::invalid(format!("backend {:?} has no {family} address on network {:?}", arg.netns, net.name))),
            None => Ok(None),
        };
        let address6 = address_for(svc.vip6, ep.address6, "IPv6")?;
        let address4 = address_for(svc.vip4, ep.address4, "IPv4")?;
        let (endpoint_id, container_name) = (ep.id.clone(), ep.container_name.clone());
        let id = self.backend_ids.take().ok_or_else(|| {
            Error::conflict(format!("the datapath holds {} backends (bpfnet daemon --max-backends)", self.lb.max_backends - 1))
        })?;
        Ok(Backend { endpoint_id, container_name, address4, address6, port, datapath_id: id, draining: false, node: None })
    }

    /// Writes a service into the datapath with its Maglev `table`: backends, then the table,
    /// then the service's header and its addresses.
    pub(super) fn program_service(&mut self, svc: &Service, table: Vec<u32>) -> Result<()> {
        self.program_services(&[svc], Some(vec![table]))
    }

    /// Writes services with their Maglev `tables` (in the same order; `None`: written already,
    /// see [`write_tables`]), each map in one batch: backends, then the tables, then the
    /// services' headers, ports and VIPs, so that no packet meets a header whose table or
    /// backends are not written yet.
    pub(super) fn program_services(&mut self, services: &[&Service], tables: Option<Vec<Vec<u32>>>) -> Result<()> {
        let m = self.lb.table_size;
        let mut backends = Vec::new();
        let mut headers = Vec::with_capacity(services.len());
        let mut ports = Vec::with_capacity(services.len());
        let mut vips = Vec::with_capacity(services.len());
        for (i, svc) in services.iter().enumerate() {
            let net = self.state.network_by_id(&svc.network_id).context("a service's network is gone")?;
            for b in &svc.backends {
                let info = if b.draining {
                    BackendInfo::default()
                } else {
                    BackendInfo {
                        addr: b.address4.map(IpKey::from).unwrap_or_default(),
                        port: b.port.to_be(),
                        _pad: 0,
                        service: svc.datapath_id,
                        addr6: b.address6.map(IpKey::from).unwrap_or_default(),
                    }
                };
                backends.push((b.datapath_id, info));
            }
            let base = (svc.datapath_id - 1) * m;
            let active = svc.backends.iter().filter(|b| !b.draining).count();
            let affinity_ns = svc.affinity_secs.map_or(0, |s| s * 1_000_000_000);
            let (size, active) = (maglev::table_size_for(active, m), active as u32);
            headers.push((svc.datapath_id, ServiceInfo { table_base: base, table_size: size, backends: active, _pad: 0, affinity_ns }));
            ports.extend(port_entries(svc, net));
            vips.extend(svc.vips().map(|vip| (IpKey::from(vip), net.datapath_id)));
            if let Some(tables) = &tables {
                self.datapath.write_maglev(base, &tables[i])?;
            }
        }
        self.datapath.set_services_batch(&backends, &headers, &ports, &vips)
    }

    /// Removes a service from the datapath (best effort: every step is tried).
    pub(super) fn unprogram_service(&mut self, svc: &Service) {
        let net = self.state.network_by_id(&svc.network_id).cloned();
        let mut result: Result<()> = Ok(());
        if let Some(net) = net {
            for (key, target) in port_entries(svc, &net) {
                result = result.and(self.datapath.remove_port_if(key, target));
            }
        }
        for vip in svc.vips() {
            result = result.and(self.datapath.remove_vip(vip));
        }
        result = result.and(self.datapath.set_service(svc.datapath_id, ServiceInfo::default()));
        for b in &svc.backends {
            result = result.and(self.datapath.set_backend(b.datapath_id, BackendInfo::default()));
        }
        if let Err(e) = result {
            log::warn!("removing service {} from the datapath: {e:#}", svc.name);
        }
    }

    /// Replaces service `name` with `new` (datapath, then its file), undoing the datapath on failure.
    pub(super) fn change_service(&mut self, new: Service, gone: &[&Backend]) -> DaemonResult<()> {
        let old = self.state.services.get(&new.name).cloned().expect("caller found it");
        let table = build_table(&new, self.lb.table_size).map_err(Error::internal)?;
        let applied = self.program_service(&new, table).and_then(|()| {
            for b in gone {
                self.datapath.set_backend(b.datapath_id, BackendInfo::default())?;
            }
            self.store.put_services(&[&new])
        });
        if let Err(e) = applied {
            // What the change added (a VIP6 a cluster service gains) goes; the rest is the old one's.
            if let Some(net) = self.state.network_by_id(&new.network_id).cloned() {
                let kept = port_entries(&old, &net);
                for (key, target) in port_entries(&new, &net).into_iter().filter(|e| !kept.contains(e)) {
                    let _ = self.datapath.remove_port_if(key, target);
                }
            }
            for vip in new.vips().filter(|v| !old.vips().any(|o| o == *v)) {
                let _ = self.datapath.remove_vip(vip);
            }
            let table = build_table(&old, self.lb.table_size).map_err(Error::internal)?;
            if let Err(undo) = self.program_service(&old, table) {
                log::error!("restoring service {} after a failed change: {undo:#}", old.name);
            }
            return Err(Error::internal(e));
        }
        let mut touched: Vec<String> = Vec::new();
        for b in new.backends.iter().filter(|b| !old.backends.iter().any(|o| o.datapath_id == b.datapath_id)) {
            self.backend_ids.added(b);
            touched.push(b.endpoint_id.clone());
        }
        for b in gone {
            self.backend_ids.removed(b);
            touched.push(b.endpoint_id.clone());
        }
        self.state.services.insert(new.name.clone(), Arc::new(new));
        self.mark_backends(&touched);
        self.compact_services();
        self.publish_state();
        Ok(())
    }

    pub async fn add_backend(&mut self, name: &str, arg: BackendArg) -> DaemonResult<api::ServiceInspect> {
        if self.service(name)?.cluster {
            return self.change_cluster_backends(name, &arg, true).await;
        }
        let mut svc = Service::clone(self.service(name)?);
        let net = self.state.network_by_id(&svc.network_id).cloned().expect("a service's network exists");
        let backend = self.new_backend(&svc, &net, &arg)?;
        let id = backend.datapath_id;
        log::info!("service {name}: backend {} ({}:{}) added", backend.container_name, backend.address(), backend.port);
        svc.backends.push(backend);
        if let Err(e) = self.change_service(svc, &[]) {
            self.backend_ids.release(id);
            return Err(e);
        }
        self.inspect_service(name)
    }

    pub async fn remove_backend(&mut self, name: &str, arg: BackendArg, drain: bool) -> DaemonResult<api::ServiceInspect> {
        if self.service(name)?.cluster {
            if drain {
                return Err(Error::invalid("--drain is not available for a cluster service's backends yet: remove it without"));
            }
            return self.change_cluster_backends(name, &arg, false).await;
        }
        let mut svc = Service::clone(self.service(name)?);
        let (dev, inode) = arg.require_netns()?;
        let ep_ids: HashSet<&str> = self.state.endpoints_in_netns(dev, inode).map(|e| e.id.as_str()).collect();
        let matches = |b: &Backend| ep_ids.contains(b.endpoint_id.as_str()) && arg.port.is_none_or(|p| p == b.port);
        if !svc.backends.iter().any(|b| matches(b)) {
            return Err(Error::not_found(format!("{} is not a backend of service {name:?}", arg.arg)));
        }
        let mut gone = Vec::new();
        if drain {
            for b in svc.backends.iter_mut().filter(|b| matches(b)) {
                b.draining = true;
            }
        } else {
            gone = svc.backends.iter().filter(|b| matches(b)).cloned().collect();
            svc.backends.retain(|b| !matches(b));
        }
        let gone_refs: Vec<&Backend> = gone.iter().collect();
        let udp = svc.protocol == Protocol::Udp;
        self.change_service(svc, &gone_refs)?;
        for b in &gone {
            // Only a UDP service has flows to purge (the walk of the table is not free).
            if udp {
                let purged: usize = b.addresses().map(|a| self.conntrack.forget_udp_flows_to(a, b.port)).sum();
                log::info!("service {name}: backend {} ({}:{}) removed; {purged} UDP flows purged", b.container_name, b.address(), b.port);
            } else {
                log::info!("service {name}: backend {} ({}:{}) removed", b.container_name, b.address(), b.port);
            }
        }
        if drain {
            log::info!("service {name}: draining {} (no new connections; removed when its connections end)", arg.arg);
        }
        self.inspect_service(name)
    }

    pub async fn remove_service(&mut self, name: &str) -> DaemonResult<()> {
        if self.service(name)?.cluster {
            return self.remove_cluster_service(name).await;
        }
        self.remove_local_service(name)
    }

    /// Removes service `name` from this node: its file, the datapath, the state.
    pub(super) fn remove_local_service(&mut self, name: &str) -> DaemonResult<()> {
        let svc = self.service(name)?.clone();
        self.store.remove_services(&[name]).map_err(Error::internal)?;
        self.unprogram_service(&svc);
        if svc.protocol == Protocol::Udp {
            for b in &svc.backends {
                for a in b.addresses() {
                    self.conntrack.forget_udp_flows_to(a, b.port);
                }
            }
        }
        self.state.services.remove(name);
        for b in &svc.backends {
            self.backend_ids.removed(b);
        }
        let touched: Vec<String> = svc.backends.iter().map(|b| b.endpoint_id.clone()).collect();
        self.mark_backends(&touched);
        self.compact_services();
        self.publish_state();
        log::info!("service {name} removed");
        Ok(())
    }

    /// Folds the service journal into a snapshot when it is due (a failure only costs disk).
    pub(super) fn compact_services(&mut self) {
        if let Err(e) = self.store.compact_services(&mut self.state.services.values().map(|s| s.as_ref())) {
            log::warn!("writing the services' snapshot: {e:#} (the journal keeps every change)");
        }
    }

    pub fn inspect_service(&self, name: &str) -> DaemonResult<api::ServiceInspect> {
        super::views::inspect_service(&self.state, name)
    }

    /// Backends whose endpoint is gone (detached, disconnected, its namespace deleted) leave
    /// their services. Called after such a change.
    pub(super) fn drop_backends_of(&mut self, endpoint_id: &str) {
        let affected: Vec<Service> = self
            .state
            .services
            .values()
            .filter(|s| s.backends.iter().any(|b| b.endpoint_id == endpoint_id))
            .map(|s| Service::clone(s))
            .collect();
        for mut svc in affected {
            let gone: Vec<Backend> = svc.backends.iter().filter(|b| b.endpoint_id == endpoint_id).cloned().collect();
            svc.backends.retain(|b| b.endpoint_id != endpoint_id);
            let name = svc.name.clone();
            let refs: Vec<&Backend> = gone.iter().collect();
            match self.change_service(svc, &refs) {
                Ok(()) => log::info!("service {name}: backend {} left with its endpoint", gone[0].container_name),
                Err(e) => log::error!("service {name}: removing the backend of a gone endpoint: {e}"),
            }
        }
    }

    /// Draining backends whose connections have all ended are removed. Run every few seconds.
    pub fn finish_drains(&mut self) {
        let draining: Vec<(String, Backend)> = self
            .state
            .services
            .values()
            .flat_map(|s| s.backends.iter().filter(|b| b.draining).map(|b| (s.name.clone(), b.clone())))
            .collect();
        if draining.is_empty() {
            return;
        }
        let busy = self.conntrack.service_backends_in_use();
        for (name, b) in draining {
            if b.addresses().any(|a| busy.contains(&(IpKey::from(a), b.port.to_be()))) {
                continue;
            }
            let Some(svc) = self.state.services.get(&name) else { continue };
            let mut svc = Service::clone(svc);
            svc.backends.retain(|x| x.datapath_id != b.datapath_id);
            match self.change_service(svc, &[&b]) {
                Ok(()) => log::info!("service {name}: drained backend {} ({}:{}) removed", b.container_name, b.address(), b.port),
                Err(e) => log::warn!("service {name}: removing drained backend {}: {e}", b.container_name),
            }
        }
    }

    /// Sets or clears the `SERVICE_BACKEND` flag of the attached endpoints `ids`.
    pub(super) fn mark_backends(&mut self, ids: &[String]) {
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let Some(ep) = self.state.endpoints.iter().find(|e| &e.id == id).cloned() else { continue };
            let Some(net) = self.state.network_by_id(&ep.network_id).cloned() else { continue };
            let serves = self.backend_ids.serves(&ep.id);
            if let Err(e) = super::endpoints::iface_info(&net, &ep, serves).and_then(|info| self.datapath.set_iface(ep.host_ifindex, info)) {
                log::warn!("endpoint {}: updating its backend flag: {e:#}", &ep.id[..12]);
            }
        }
    }

    /// Programs every service at start (after the endpoints); returns the `PORTS` keys they hold.
    pub(super) fn reconcile_services(&mut self) -> Result<HashSet<PortKey>> {
        let services: Vec<Arc<Service>> = self.state.services.values().cloned().collect();
        let mut keys = HashSet::new();
        let (mut vips, mut ids, mut backends) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut programmed = Vec::new();
        for svc in &services {
            let Some(net) = self.state.network_by_id(&svc.network_id) else {
                log::error!("service {}: its network is gone; not programmed", svc.name);
                continue;
            };
            let too_many = svc.backends.iter().any(|b| b.datapath_id >= self.lb.max_backends);
            if svc.datapath_id > self.lb.max_services || too_many {
                log::error!(
                    "service {}: the datapath holds {} services and {} backends now (--max-services, --max-backends); \
                     not programmed",
                    svc.name,
                    self.lb.max_services,
                    self.lb.max_backends - 1
                );
                continue;
            }
            keys.extend(port_entries(svc, net).into_iter().map(|(k, _)| k));
            vips.extend(svc.vips().map(IpKey::from));
            ids.insert(svc.datapath_id);
            backends.extend(svc.backends.iter().filter(|b| !b.draining).map(|b| b.datapath_id));
            programmed.push(svc.as_ref());
        }
        // In place: a restart's tables come out the same as those the packets use.
        write_tables(&programmed, self.lb.table_size, self.datapath.maglev_slots())?;
        self.program_services(&programmed, None)?;
        self.datapath.retain_services(&vips, &ids, &backends)?;
        Ok(keys)
    }
}

