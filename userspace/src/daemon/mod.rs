//! The daemon's operations, one file per concern: `networks` (create, remove), `endpoints`
//! (the endpoint lifecycle: allocate, attach, detach, release; connect and disconnect), `engine`
//! (the attach and publishing steps of engines that move interfaces themselves, Docker's),
//! `pools` (address pools for Docker's IPAM protocol), `reconcile` (start-up, crash recovery, removing
//! endpoints whose namespace has gone, `--cleanup`), `views` (what reads show). Every change is
//! validated against the desired state, applied to the kernel (plumbing + datapath), persisted,
//! and undone if any step fails; [`Error`] says what went wrong in the user's terms.
//!
//! Changes are serialized by the caller (one `Daemon` behind a lock); reads never take that lock:
//! they are served from [`Published`], the last committed state.
mod drivers;
mod endpoints;
mod engine;
mod mesh;
mod error;
mod networks;
mod overlay;
mod pools;
mod publish;
mod reconcile;
mod services;
mod uplinks;
pub mod views;

use std::{
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, Result};

pub use engine::Handover;
pub use overlay::VXLAN_DEVICE;
pub use error::{Error, Result as DaemonResult};
pub use reconcile::{cleanup, collect_gone_endpoints};
pub use services::{resolve_backends, BackendArg, BackendResolver};
pub use uplinks::XdpSetting;

use crate::{
    api,
    conntrack::Conntrack,
    datapath::{Datapath, LoadOptions},
    plumbing::Netlink,
    state::State,
    store::{FileStore, Store},
};

/// Every network's gateway address is a /32 on the loopback device of the daemon's namespace,
/// labelled so that it is recognisable (this kernel has no dummy driver, and lo needs none).
pub const GATEWAY_DEVICE: &str = "lo";
pub const GATEWAY_LABEL: &str = "lo:bpfnet";
/// Prefix of host-side veth names (followed by the endpoint id's first hex digits).
pub const HOST_VETH_PREFIX: &str = "bn";
/// Interface alias of every host-side veth (followed by the endpoint id): the endpoint's identity
/// in the kernel, which survives a rename of the interface.
pub const HOST_VETH_ALIAS: &str = "bpfnet:";

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    /// What is fixed when the datapath loads: `--trace`, the connection table's size and
    /// lifetimes, the masquerade port range.
    pub datapath: LoadOptions,
    /// `--uplink`: interfaces traffic to the outside leaves by. Empty: the interface(s) of the
    /// namespace's default route.
    pub uplinks: Vec<String>,
    /// `--xdp`: whether the uplinks run the XDP program.
    pub xdp: XdpSetting,
    /// `--cgroup-root`: where the socket programs attach. `None`: the cgroup v2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// `--docker-plugin`: the folder where the Docker plugin's socket is served.
    pub docker_plugin: Option<PathBuf>,
    /// `--dns`, `--dns-upstream`: the embedded resolvers.
    pub dns: crate::dns::DnsConfig,
    /// `--metrics`: where Prometheus metrics are served (`None`: nowhere).
    pub metrics: Option<std::net::SocketAddr>,
    /// `--cluster`, `--node`: the cluster this daemon is a node of (`None`: a single host).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

pub use crate::snapshot::Published;

/// Test hook: `BPFNET_TEST_CRASH_AFTER=<point>` makes the daemon die at that point, so tests can
/// check that every crash point is recovered. Connect: `veth-unlabelled` (the veth pair exists,
/// unmarked), `veth` (marked), `programmed` (maps, program, routes in place), `configured` (the
/// container side too, nothing committed). Network create: `gateway-added`; remove:
/// `network-forgotten` (committed, gateway address still there).
fn crash_point(name: &str) {
    if std::env::var("BPFNET_TEST_CRASH_AFTER").is_ok_and(|v| v == name) {
        log::error!("BPFNET_TEST_CRASH_AFTER={name}: aborting");
        std::process::abort();
    }
}

/// What the service tables hold, as loaded (a pinned table keeps the size it was made with).
#[derive(Debug, Clone, Copy)]
struct LbLimits {
    max_services: u32,
    max_backends: u32,
    table_size: u32,
}

pub struct Daemon {
    state: State,
    /// Where every change is recorded before it is acknowledged.
    store: Box<dyn Store>,
    lb: LbLimits,
    backend_ids: services::BackendIds,
    datapath: Datapath,
    netlink: Netlink,
    gateway_ifindex: u32,
    published: Published,
    conntrack: Conntrack,
    uplinks: Vec<uplinks::Found>,
    /// Networks have a DNS resolver on their gateway (`--dns`).
    dns: bool,
    /// The masquerade's port range (`--nat-ports`), which no publication may overlap.
    nat_ports: (u16, u16),
    /// Overlay networks (a cluster node's): `None` on a single host.
    overlay: Option<overlay::OverlayNode>,
}

/// The alias that marks the host-side veth of endpoint `id`.
pub fn endpoint_alias(id: &str) -> String {
    format!("{HOST_VETH_ALIAS}{id}")
}

/// Runs container-side netlink work in the namespace `ns`, off the async worker threads.
async fn in_netns<T, F, Fut>(ns: Arc<std::fs::File>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    tokio::task::spawn_blocking(move || crate::netns::run_in(ns, f)).await?
}

impl Daemon {
    /// Opens the stored state and the pinned datapath, then reconciles the kernel with the state.
    /// Refuses to start when the state file is missing but the kernel still holds bpfnet's
    /// endpoints: starting empty would tear every container's network down.
    pub async fn start(config: &Config) -> Result<Self> {
        let began = std::time::Instant::now();
        let mut store: Box<dyn Store> = Box::new(FileStore::open(&config.state_dir)?);
        let netlink = Netlink::connect()?;
        let gateway_ifindex = netlink.link_index(GATEWAY_DEVICE).await?.context("no loopback device")?;
        let mut found_uplinks = uplinks::find(&netlink, &config.uplinks).await?;
        let state = match store.load()? {
            Some(state) => state,
            None => {
                let location = PathBuf::from(store.location());
                reconcile::refuse_if_datapath_exists(&netlink, gateway_ifindex, &config.bpffs, &location).await?;
                // From now on the state exists: a missing one always means a lost one.
                store.commit(&State::empty())?;
                store.load()?.context("the state just recorded cannot be read back")?
            }
        };
        let state_read = began.elapsed();
        let mut datapath = Datapath::load_pinned(&config.bpffs, &config.datapath)?;
        let loaded = began.elapsed();
        let (max_services, max_backends, slots) = datapath.service_capacity()?;
        let table_size = config.datapath.maglev_table_size;
        let lb = LbLimits { max_services: max_services.min(slots / table_size), max_backends, table_size };
        if (lb.max_services, lb.max_backends) != (config.datapath.max_services, config.datapath.max_backends) {
            log::warn!(
                "the pinned service tables hold {} services and {} backends (with {table_size}-slot Maglev tables), not \
                 the {} and {} asked for: tables keep their size while connections use them (`bpfnet daemon --cleanup` \
                 starts afresh)",
                lb.max_services,
                lb.max_backends,
                config.datapath.max_services,
                config.datapath.max_backends
            );
        }
        let conntrack = Conntrack::open(&config.bpffs)?;
        let ct_entries = conntrack.max_entries();
        if ct_entries != config.datapath.ct_entries {
            log::warn!(
                "the pinned connection table holds {ct_entries} entries, not the {} asked for: a table keeps \
                 its size while connections live in it (`bpfnet daemon --cleanup` starts afresh)",
                config.datapath.ct_entries
            );
        }
        if config.datapath.trace {
            datapath.forward_trace()?;
            log::warn!("datapath trace on: one log line per packet (for debugging; it costs throughput)");
        }
        netlink.set_up(gateway_ifindex).await?;
        let published = Published::default();
        published.set(state.clone());
        uplinks::attach(&mut datapath, &mut found_uplinks, config.xdp)?;
        let uplinks = found_uplinks;
        match config.cgroup_root.clone().or_else(crate::netns::cgroup2_root) {
            Some(root) => {
                datapath.attach_sockets(&root)?;
                log::info!("socket programs attached at {} (acting on this namespace's sockets only)", root.display());
            }
            None => log::warn!(
                "no cgroup v2 hierarchy is mounted: processes of this namespace cannot reach published ports \
                 (containers and the outside can); mount one or name it with --cgroup-root"
            ),
        }
        let backend_ids = services::BackendIds::of(&state, lb.max_backends);
        let mut daemon = Self {
            state,
            store,
            lb,
            backend_ids,
            datapath,
            netlink,
            gateway_ifindex,
            published,
            conntrack,
            uplinks,
            dns: config.dns.enabled,
            nat_ports: (config.datapath.ct_config.nat_port_min, config.datapath.ct_config.nat_port_max),
            overlay: None,
        };
        let attached = began.elapsed();
        uplinks::lo_forwards_ipv6();
        daemon.reconcile().await?;
        daemon.refresh_host_addresses().await?;
        log::info!(
            "started: state read in {} ms, programs loaded ({}) by {} ms, attached by {} ms, reconciled by {} ms",
            state_read.as_millis(),
            if daemon.datapath.programs_reused() { "the TC programs taken from the last start's pins" } else { "verified" },
            loaded.as_millis(),
            attached.as_millis(),
            began.elapsed().as_millis()
        );
        Ok(daemon)
    }

    /// Tells the socket programs the namespace's addresses (where a port published on every
    /// address answers). Run at start and when a network's gateway comes or goes.
    async fn refresh_host_addresses(&mut self) -> Result<()> {
        let addrs: Vec<std::net::IpAddr> = self.netlink.host_addresses("").await?.into_iter().map(|a| a.ip).collect();
        self.datapath.set_host_addrs(&addrs)
    }

    /// The interfaces masquerade leaves by.
    pub fn uplinks(&self) -> Vec<api::Uplink> {
        uplinks::views(&self.uplinks)
    }

    /// Follows the namespace's addresses: an uplink's new address for masquerade, and where a port
    /// published on every address answers. Run every few seconds by the server.
    pub async fn refresh_addresses(&mut self) -> Result<()> {
        uplinks::refresh(&self.netlink, &mut self.datapath, &mut self.uplinks).await?;
        if uplinks::lo_forwards_ipv6() == Some(true) {
            self.forward_ipv6_again();
        }
        self.refresh_host_addresses().await
    }

    /// Lets every IPv6 endpoint's host side forward IPv6 again, after a rewrite of
    /// `net.ipv6.conf.all.forwarding` turned it off (see `uplinks::lo_forwards_ipv6`): without
    /// it their NAT66 and published IPv6 ports stop.
    fn forward_ipv6_again(&self) {
        let mut restored = 0;
        for ep in self.state.endpoints.iter().filter(|e| e.address6.is_some()) {
            match drivers::forward_ipv6(&ep.host_interface) {
                Ok(()) => restored += 1,
                Err(e) => log::warn!("endpoint {} ({}): {e:#}", &ep.id[..12], ep.container_name),
            }
        }
        log::warn!(
            "IPv6 forwarding was turned off on this namespace's interfaces (net.ipv6.conf.all.forwarding rewritten?): \
             turned on again on lo and on {restored} endpoint(s)"
        );
    }

    /// The handle readers use to see the last committed state.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// Persists the state and shows it to readers.
    fn commit(&mut self) -> Result<()> {
        self.store.commit(&self.state)?;
        self.publish_state();
        Ok(())
    }

    /// Shows the state to readers (services are persisted by themselves).
    fn publish_state(&mut self) {
        self.published.set(self.state.clone());
    }
}
