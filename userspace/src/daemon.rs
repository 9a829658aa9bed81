//! The daemon's operations: validate a request against the desired state, apply it to the kernel
//! (plumbing + datapath), persist, and undo everything if any step fails. At start-up it
//! reconciles the kernel with the stored state; while running it removes endpoints whose namespace
//! has gone.
use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use datapath_common::{iface_flags, EndpointInfo, IfaceInfo, GATEWAY_MAC};

use crate::{
    api,
    datapath::{ipv4_key, Datapath},
    ids, ipam, netns,
    plumbing::{self, Netlink},
    state::{Endpoint, Network, State, Store},
};

/// Every network's gateway address is a /32 on the loopback device of the daemon's namespace,
/// labelled so that it is recognisable (this kernel has no dummy driver, and lo needs none).
pub const GATEWAY_DEVICE: &str = "lo";
pub const GATEWAY_LABEL: &str = "lo:bpfnet";
/// Prefix of host-side veth names (followed by the endpoint id's first hex digits).
pub const HOST_VETH_PREFIX: &str = "bn";
/// Interface alias of every host-side veth (followed by the endpoint id): how the reconciler
/// recognises a veth bpfnet made but never recorded (a crash in the middle of a connect).
pub const HOST_VETH_ALIAS: &str = "bpfnet:";

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
}

/// An error for the API: an HTTP status and a message for the user.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(e: impl std::fmt::Display) -> Self {
        Self { status: 400, message: e.to_string() }
    }
    pub fn not_found(e: impl std::fmt::Display) -> Self {
        Self { status: 404, message: e.to_string() }
    }
    pub fn conflict(e: impl std::fmt::Display) -> Self {
        Self { status: 409, message: e.to_string() }
    }
    pub fn internal(e: anyhow::Error) -> Self {
        Self { status: 500, message: format!("{e:#}") }
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// The container already has an interface with the name its new endpoint was to get.
#[derive(Debug)]
struct InterfaceExists;

impl std::fmt::Display for InterfaceExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an interface of that name exists in the namespace")
    }
}

/// Test hook: `BPFNET_TEST_CRASH_AFTER=veth` makes the daemon die right after creating an
/// endpoint's veth, so tests can check that the next start cleans up what a crash leaves.
fn crash_point(name: &str) {
    if std::env::var("BPFNET_TEST_CRASH_AFTER").is_ok_and(|v| v == name) {
        eprintln!("bpfnet: BPFNET_TEST_CRASH_AFTER={name}: aborting");
        std::process::abort();
    }
}

pub struct Daemon {
    state: State,
    store: Store,
    datapath: Datapath,
    netlink: Netlink,
    gateway_ifindex: u32,
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

/// Runs container-side netlink work in the endpoint's namespace, off the async worker threads.
async fn in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || netns::run_in(&path, f)).await?
}

impl Daemon {
    /// Opens the stored state and the pinned datapath, then reconciles the kernel with the state.
    pub async fn start(config: &Config) -> Result<Self> {
        let store = Store::new(&config.state_dir)?;
        let state = store.load()?;
        let datapath = Datapath::load_pinned(&config.bpffs)?;
        let netlink = Netlink::connect()?;
        let gateway_ifindex = netlink.link_index(GATEWAY_DEVICE).await?.context("no loopback device")?;
        netlink.set_up(gateway_ifindex).await?;
        let mut daemon = Self { state, store, datapath, netlink, gateway_ifindex };
        daemon.reconcile().await?;
        Ok(daemon)
    }

    /// Makes the kernel match the desired state. Idempotent: safe after a crash at any point.
    pub async fn reconcile(&mut self) -> Result<()> {
        for net in self.state.networks.clone() {
            self.netlink.add_labelled_local_address(self.gateway_ifindex, net.gateway, GATEWAY_LABEL).await?;
        }
        // Gateways of networks that no longer exist (a crash between saving and removing).
        for ip in self.netlink.labelled_addresses(self.gateway_ifindex, GATEWAY_LABEL).await? {
            if !self.state.networks.iter().any(|n| n.gateway == ip) {
                self.netlink.delete_addresses(self.gateway_ifindex, Some(ip), Some(GATEWAY_LABEL)).await?;
            }
        }
        self.collect_gone_endpoints().await?;
        let recorded: HashSet<String> = self.state.endpoints.iter().map(|e| e.host_interface.clone()).collect();
        for name in remove_unrecorded_veths(&self.netlink, &recorded).await? {
            eprintln!("bpfnet: removed {name}, an endpoint interface with no record (left by a crash)");
            self.datapath.detach(&name)?;
        }

        let mut desired_endpoints = HashSet::new();
        let mut desired_ifaces = HashSet::new();
        for ep in self.state.endpoints.clone() {
            let net = self.state.network_by_id(&ep.network_id).context("endpoint of a missing network")?.clone();
            let Some(index) = self.netlink.link_index(&ep.host_interface).await? else { continue };
            desired_endpoints.insert(ipv4_key(ep.ipv4));
            desired_ifaces.insert(index);
            // One broken endpoint must not keep the daemon (and every other endpoint) down.
            if let Err(e) = self.program_endpoint(&net, &ep, index).await {
                eprintln!("bpfnet: could not restore endpoint {} ({}): {e:#}", &ep.id[..12], ep.container_name);
            }
        }
        self.datapath.retain(&desired_endpoints, &desired_ifaces)?;
        let wanted: HashSet<&str> = self.state.endpoints.iter().map(|e| e.host_interface.as_str()).collect();
        for ifname in self.datapath.pinned_links() {
            if !wanted.contains(ifname.as_str()) {
                self.datapath.detach(&ifname)?;
            }
        }
        Ok(())
    }

    /// Removes endpoints whose namespace has gone (a container that exited). The kernel destroys a
    /// veth pair with the namespace of either end, so a missing host-side veth is the sign; the
    /// namespace's name is not (a namespace lives on without its name while a process holds it).
    pub async fn collect_gone_endpoints(&mut self) -> Result<Vec<String>> {
        // One dump per round, not a request per endpoint: every recorded veth carries the alias.
        let present: HashSet<String> =
            self.netlink.links_with_alias_prefix(HOST_VETH_ALIAS).await?.into_iter().map(|(_, name)| name).collect();
        let gone: Vec<Endpoint> =
            self.state.endpoints.iter().filter(|ep| !present.contains(&ep.host_interface)).cloned().collect();
        for ep in &gone {
            eprintln!("bpfnet: namespace of endpoint {} ({} on {}) is gone; removing it", &ep.id[..12], ep.container_name, ep.interface);
            if let Err(e) = self.teardown_endpoint(ep).await {
                eprintln!("bpfnet: cleaning up endpoint {}: {e:#}", &ep.id[..12]);
            }
            self.state.endpoints.retain(|e| e.id != ep.id);
            if ep.default_route {
                self.move_default_route(ep).await;
            }
        }
        if !gone.is_empty() {
            self.store.save(&self.state)?;
        }
        Ok(gone.into_iter().map(|e| e.id).collect())
    }

    // ---- networks ----

    pub async fn create_network(&mut self, req: api::CreateNetwork) -> ApiResult<api::NetworkInspect> {
        ipam::validate_name("network", &req.name).map_err(ApiError::bad_request)?;
        if self.state.network_by_name(&req.name).is_some() {
            return Err(ApiError::conflict(format!("network with name {:?} already exists", req.name)));
        }
        let ours: Vec<Ipv4Addr> = self.state.endpoints.iter().map(|e| e.ipv4).collect();
        let routes = self.netlink.routed_prefixes(&ours).await.map_err(ApiError::internal)?;
        let subnet = ipam::choose_subnet(&self.state, req.subnet.as_deref(), &routes).map_err(ApiError::bad_request)?;
        let gateway = ipam::choose_gateway(&subnet, req.gateway.as_deref()).map_err(ApiError::bad_request)?;
        let icc = ipam::parse_options(&req.options).map_err(ApiError::bad_request)?;
        let net = Network {
            id: ids::random_id(),
            name: req.name,
            subnet,
            gateway,
            internal: req.internal,
            icc,
            options: req.options,
            datapath_id: self.state.free_datapath_id(),
            created: ids::now_rfc3339(),
        };

        self.netlink.add_labelled_local_address(self.gateway_ifindex, gateway, GATEWAY_LABEL).await.map_err(ApiError::internal)?;
        self.state.networks.push(net.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.networks.pop();
            self.netlink.delete_addresses(self.gateway_ifindex, Some(gateway), Some(GATEWAY_LABEL)).await.ok();
            return Err(ApiError::internal(e));
        }
        Ok(self.inspect_network(&net))
    }

    pub async fn remove_network(&mut self, name: &str) -> ApiResult<()> {
        let net = self.network(name)?.clone();
        let users: Vec<&str> = self.state.endpoints_of(&net.id).map(|e| e.container_name.as_str()).collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "network {name:?} has active endpoints ({}): disconnect them first",
                users.join(", ")
            )));
        }
        let before = self.state.clone();
        self.state.networks.retain(|n| n.id != net.id);
        if let Err(e) = self.store.save(&self.state) {
            self.state = before;
            return Err(ApiError::internal(e));
        }
        // Committed: a failure from here on is the reconciler's to finish, not the user's error.
        if let Err(e) = self.netlink.delete_addresses(self.gateway_ifindex, Some(net.gateway), Some(GATEWAY_LABEL)).await {
            eprintln!("bpfnet: removing gateway {} of network {name}: {e:#}", net.gateway);
        }
        Ok(())
    }

    fn network(&self, name: &str) -> ApiResult<&Network> {
        self.state.network_by_name(name).ok_or_else(|| ApiError::not_found(format!("network {name:?} not found")))
    }

    pub fn list_networks(&self) -> Vec<api::NetworkSummary> {
        self.state
            .networks
            .iter()
            .map(|n| api::NetworkSummary {
                id: n.id.clone(),
                name: n.name.clone(),
                driver: "bpfnet".into(),
                subnet: n.subnet.to_string(),
                gateway: n.gateway.to_string(),
                internal: n.internal,
                icc: n.icc,
                endpoints: self.state.endpoints_of(&n.id).count(),
            })
            .collect()
    }

    pub fn inspect(&self, name: &str) -> ApiResult<api::NetworkInspect> {
        Ok(self.inspect_network(self.network(name)?))
    }

    fn inspect_network(&self, net: &Network) -> api::NetworkInspect {
        let containers = self
            .state
            .endpoints_of(&net.id)
            .map(|e| {
                (e.container_id.clone(), api::ContainerEndpoint {
                    name: e.container_name.clone(),
                    endpoint_id: e.id.clone(),
                    mac_address: ipam::format_mac(&e.mac),
                    ipv4_address: format!("{}/{}", e.ipv4, net.subnet.prefix()),
                    ipv6_address: String::new(),
                    interface: e.interface.clone(),
                    host_interface: e.host_interface.clone(),
                    netns: e.netns_path.display().to_string(),
                    aliases: e.aliases.clone(),
                })
            })
            .collect();
        api::NetworkInspect {
            name: net.name.clone(),
            id: net.id.clone(),
            created: net.created.clone(),
            scope: "local".into(),
            driver: "bpfnet".into(),
            enable_ipv6: false,
            ipam: api::Ipam {
                driver: "default".into(),
                options: BTreeMap::new(),
                config: vec![api::IpamConfig { subnet: net.subnet.to_string(), gateway: net.gateway.to_string() }],
            },
            internal: net.internal,
            attachable: true,
            containers,
            options: net.options.clone(),
            labels: BTreeMap::new(),
        }
    }

    // ---- endpoints ----

    pub async fn connect(&mut self, network: &str, req: api::Connect) -> ApiResult<api::EndpointCreated> {
        let net = self.network(network)?.clone();
        let ns = netns::resolve(&req.netns).map_err(ApiError::bad_request)?;
        let own = netns::current().map_err(ApiError::internal)?;
        if (ns.dev, ns.inode) == own {
            return Err(ApiError::bad_request(format!("{:?} is the daemon's own namespace, not a container's", req.netns)));
        }
        let in_ns: Vec<&Endpoint> = self.state.endpoints_in_netns(ns.dev, ns.inode).collect();
        if in_ns.iter().any(|e| e.network_id == net.id) {
            return Err(ApiError::conflict(format!("{} is already connected to network {network:?}", req.netns)));
        }
        for alias in &req.aliases {
            ipam::validate_name("alias", alias).map_err(ApiError::bad_request)?;
        }
        let ip = ipam::choose_address(&self.state, &net.id, req.ip.as_deref()).map_err(|e| {
            if e.downcast_ref::<ipam::AddressInUse>().is_some() { ApiError::conflict(e) } else { ApiError::bad_request(e) }
        })?;
        let interface = (0..)
            .map(|n| format!("eth{n}"))
            .find(|name| !in_ns.iter().any(|e| &e.interface == name))
            .unwrap();
        let wants_default_route = !net.internal && !in_ns.iter().any(|e| e.default_route);
        let id = ids::random_id();
        let mut ep = Endpoint {
            host_interface: host_veth_name(&id),
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
        };

        match self.apply_endpoint(&net, &mut ep, wants_default_route).await {
            Ok(()) => {}
            Err(e) => {
                if let Err(undo) = self.teardown_endpoint(&ep).await {
                    eprintln!("bpfnet: undoing the failed connect of {}: {undo:#}", req.netns);
                }
                return Err(if e.downcast_ref::<InterfaceExists>().is_some() {
                    ApiError::conflict(format!(
                        "cannot create {} in {}: an interface of that name exists there already",
                        ep.interface, req.netns
                    ))
                } else {
                    ApiError::internal(e)
                });
            }
        }
        self.state.endpoints.push(ep.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.endpoints.pop();
            if let Err(undo) = self.teardown_endpoint(&ep).await {
                eprintln!("bpfnet: undoing the unsaved connect of {}: {undo:#}", req.netns);
            }
            return Err(ApiError::internal(e));
        }
        Ok(api::EndpointCreated {
            endpoint_id: ep.id.clone(),
            network: net.name.clone(),
            interface: ep.interface.clone(),
            host_interface: ep.host_interface.clone(),
            ipv4_address: format!("{}/{}", ep.ipv4, net.subnet.prefix()),
            mac_address: ipam::format_mac(&ep.mac),
        })
    }

    /// Creates the endpoint in the kernel. On error the caller tears down whatever was made.
    async fn apply_endpoint(&mut self, net: &Network, ep: &mut Endpoint, wants_default_route: bool) -> Result<()> {
        let netns_file = File::open(&ep.netns_path)?;
        let index = self
            .netlink
            .create_veth(
                &ep.host_interface,
                &format!("{HOST_VETH_ALIAS}{}", ep.id),
                GATEWAY_MAC,
                &ep.interface,
                ep.mac,
                &netns_file,
            )
            .await
            .map_err(|e| if plumbing::errno(&e) == Some(libc::EEXIST) { e.context(InterfaceExists) } else { e })?;
        crash_point("veth");
        plumbing::write_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", ep.host_interface), "1").ok();
        self.program_endpoint(net, ep, index).await?;
        let (ifname, ip, prefix) = (ep.interface.clone(), ep.ipv4, net.subnet.prefix());
        let gateway = wants_default_route.then_some(net.gateway);
        ep.default_route = in_netns(&ep.netns_path, move || plumbing::configure_container_side(ifname, ip, prefix, gateway))
            .await
            .context("configuring the container side")?;
        Ok(())
    }

    /// The host side of an endpoint whose veth exists: maps, program, link up, route, neighbour.
    /// Idempotent (used by connect and by the reconciler).
    async fn program_endpoint(&mut self, net: &Network, ep: &Endpoint, index: u32) -> Result<()> {
        // Maps before the program: the first packet must find its entries.
        self.datapath.set_iface(index, iface_info(net, ep))?;
        self.datapath.set_endpoint(ep.ipv4, endpoint_info(net, ep, index))?;
        self.datapath.attach(&ep.host_interface)?;
        self.netlink.set_up(index).await?;
        self.netlink.replace_host_route(ep.ipv4, index, net.gateway).await?;
        self.netlink.replace_neighbour(index, ep.ipv4, ep.mac).await?;
        Ok(())
    }

    /// Removes everything an endpoint has in the kernel. Idempotent; tolerates half-made endpoints;
    /// tries every step even when one fails, and reports all failures.
    async fn teardown_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let mut errors: Vec<anyhow::Error> = Vec::new();
        // IFACES is keyed by the host veth's ifindex: take it from the veth, or, when the veth died
        // with its namespace, from the endpoint's ENDPOINTS entry.
        let mut indexes = Vec::new();
        match self.netlink.link_index(&ep.host_interface).await {
            Ok(found) => indexes.extend(found),
            Err(e) => errors.push(e),
        }
        match self.datapath.endpoint(ep.ipv4) {
            Ok(Some(info)) if info.mac == ep.mac => indexes.push(info.host_ifindex),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        for index in indexes {
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
        // Deleting the host side deletes the pair, its routes and neighbours, and the TCX link.
        if let Err(e) = self.netlink.delete_link_by_name(&ep.host_interface).await {
            errors.push(e);
        }
        match errors.len() {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!(errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "))),
        }
    }

    pub async fn disconnect(&mut self, network: &str, req: api::Disconnect) -> ApiResult<()> {
        let net = self.network(network)?.clone();
        let ep = self.find_endpoint(&net, &req.netns)?;
        if let Err(e) = self.teardown_endpoint(&ep).await {
            // Whatever is left carries the bpfnet alias: the next start removes it as unrecorded.
            eprintln!("bpfnet: disconnecting {}: {e:#}", req.netns);
        }
        self.state.endpoints.retain(|e| e.id != ep.id);
        if ep.default_route {
            self.move_default_route(&ep).await;
        }
        self.store.save(&self.state).map_err(ApiError::internal)
    }

    /// Finds the endpoint of `netns` (as the user names it, or however it was named at connect).
    fn find_endpoint(&self, net: &Network, netns_arg: &str) -> ApiResult<Endpoint> {
        let identity = netns::resolve(netns_arg).ok().map(|n| (n.dev, n.inode));
        self.state
            .endpoints_of(&net.id)
            .find(|e| Some((e.netns_dev, e.netns_inode)) == identity || e.container_name == netns_arg)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("{netns_arg} is not connected to network {:?}", net.name)))
    }

    /// After the endpoint holding a namespace's default route left, route through another one.
    async fn move_default_route(&mut self, gone: &Endpoint) {
        let next = self.state.endpoints.iter().position(|e| {
            e.netns_dev == gone.netns_dev
                && e.netns_inode == gone.netns_inode
                && self.state.network_by_id(&e.network_id).is_some_and(|n| !n.internal)
        });
        let Some(i) = next else { return };
        let gateway = self.state.network_by_id(&self.state.endpoints[i].network_id).unwrap().gateway;
        let path = self.state.endpoints[i].netns_path.clone();
        match in_netns(&path, move || plumbing::set_container_default_route(gateway)).await {
            Ok(set) => self.state.endpoints[i].default_route = set,
            Err(e) => eprintln!("bpfnet: could not move the default route of {}: {e:#}", gone.container_name),
        }
    }

    pub fn stats(&mut self) -> ApiResult<api::Stats> {
        let counters = self.datapath.counters().map_err(ApiError::internal)?;
        Ok(api::Stats {
            counters: counters
                .into_iter()
                .map(|(c, packets)| api::CounterValue { name: c.name().into(), drop: c.is_drop(), packets })
                .collect(),
            networks: self.state.networks.len(),
            endpoints: self.state.endpoints.len(),
        })
    }
}

/// `bpfnet daemon --cleanup`: removes everything bpfnet created (veths, gateway device, pins, state).
pub async fn cleanup(config: &Config) -> Result<()> {
    let store = Store::new(&config.state_dir)?;
    let state = store.load().unwrap_or_default();
    let netlink = Netlink::connect()?;
    for ep in &state.endpoints {
        netlink.delete_link_by_name(&ep.host_interface).await?;
    }
    // Also endpoint interfaces the state never recorded (a crash in the middle of a connect).
    remove_unrecorded_veths(&netlink, &HashSet::new()).await?;
    if let Some(lo) = netlink.link_index(GATEWAY_DEVICE).await? {
        netlink.delete_addresses(lo, None, Some(GATEWAY_LABEL)).await?;
    }
    store.remove()?;
    std::fs::remove_file(&config.socket).ok();
    Ok(())
}

/// Deletes host-side veths carrying bpfnet's alias whose name is not in `recorded`; returns their names.
async fn remove_unrecorded_veths(netlink: &Netlink, recorded: &HashSet<String>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (index, name) in netlink.links_with_alias_prefix(HOST_VETH_ALIAS).await? {
        if !recorded.contains(&name) {
            match netlink.delete_link(index).await {
                Err(e) if plumbing::errno(&e) != Some(libc::ENODEV) => return Err(e),
                _ => removed.push(name),
            }
        }
    }
    Ok(removed)
}
