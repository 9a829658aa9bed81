//! The daemon's desired state: networks and endpoints, persisted atomically as JSON in
//! `state.json`; services in a snapshot and a journal of changes (see [`ServiceStore`]: a change
//! to one of 10,000 services appends a line, it does not rewrite them all).
use std::{
    collections::BTreeMap,
    sync::Arc,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
/// Write-ahead records of attaches under way (see [`Store::write_ahead`]).
const WRITE_AHEAD_FILE: &str = "connecting.json";
/// 2: allocations (endpoints not attached), addresses under "address" (1 had "ipv4"). 3: a
/// network's IPv4 side and an endpoint's IPv4 address may be absent (IPv6-only networks), which
/// a reader of 2 would take for damage. Older files are read and rewritten as 3.
const FORMAT_VERSION: u32 = 3;
const OLDEST_READABLE: u32 = 1;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// The network's IPv4 side (stored flat as `subnet` and `gateway`); none on an IPv6-only
    /// network (`--ipv4=false`).
    #[serde(flatten)]
    pub ipv4: Option<Subnet>,
    pub internal: bool,
    /// Containers of the network may talk to each other (`-o icc=false` turns it off).
    pub icc: bool,
    /// Traffic to the outside leaves with the uplink's address (`-o masquerade=false` turns it off).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// The options as the user gave them, shown by inspect.
    pub options: BTreeMap<String, String>,
    /// Small integer the datapath compares for isolation.
    pub datapath_id: u32,
    pub created: String,
    /// What kind of network: this host's alone, or an overlay across a cluster's nodes.
    #[serde(default)]
    pub driver: Driver,
    /// `--ip-range`: where addresses are handed out from (the whole subnet if none); `--ip`
    /// may still ask for any address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNetwork>,
    /// The network's IPv6 side (dual stack or IPv6-only), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Subnet>,
}

impl Network {
    /// Its gateway addresses (the host's): IPv4's and IPv6's, where it has them.
    pub fn gateways(&self) -> impl Iterator<Item = IpAddr> {
        self.ipv4.map(|v4| v4.gateway).into_iter().chain(self.ipv6.map(|v6| v6.gateway))
    }

    /// Its subnets: IPv4's and IPv6's, where it has them.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> {
        self.ipv4.map(|v4| v4.subnet).into_iter().chain(self.ipv6.map(|v6| v6.subnet))
    }

    /// Its first gateway (IPv4's, else IPv6's).
    pub fn gateway(&self) -> IpAddr {
        self.gateways().next().expect("a network has a gateway")
    }

    /// The IPv4 side of an overlay network, which every one has: its IPv6 addresses pair with
    /// IPv4 ones the cluster claims (creation refuses an IPv6-only overlay network, and the
    /// cluster's record of one always holds an IPv4 subnet).
    pub fn overlay_ipv4(&self) -> Subnet {
        self.ipv4.expect("an overlay network has an IPv4 subnet")
    }

    /// The IPv6 address paired with IPv4 address `v4` of an overlay network (see
    /// `ipam::paired_address6`): every IPv6 address of one is; `None` without IPv6.
    pub fn overlay_pair6(&self, v4: IpAddr) -> Option<IpAddr> {
        let (v4_side, v6_side) = (self.ipv4?, self.ipv6?);
        crate::ipam::paired_address6(&v4_side.subnet, &v6_side.subnet, v4)
    }

    /// The IPv4 address of an overlay network that IPv6 address `v6` pairs with (see
    /// `ipam::paired_address4`); `None` where it pairs with none.
    pub fn overlay_pair4(&self, v6: IpAddr) -> Option<IpAddr> {
        let (v4_side, v6_side) = (self.ipv4?, self.ipv6?);
        crate::ipam::paired_address4(&v4_side.subnet, &v6_side.subnet, v6)
    }

    /// Its side of `address`'s family.
    pub fn side_of(&self, address: IpAddr) -> Option<Subnet> {
        if address.is_ipv4() { self.ipv4 } else { self.ipv6 }
    }
}

/// A subnet of a network and its gateway (owned by the host).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subnet {
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
}

/// The kind of a network.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Driver {
    /// This host's alone (`bpfnet` in listings).
    #[default]
    Local,
    /// Spans the nodes of the cluster (defined in etcd, which is its record; this is a node's
    /// copy): endpoints on other nodes are reached through VXLAN with id `vni`; endpoints here
    /// get `mtu`, which leaves room for the encapsulation.
    Overlay { vni: u32, mtu: u32 },
}

impl Driver {
    /// The name listings show (`DRIVER`).
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Local => "bpfnet",
            Driver::Overlay { .. } => "overlay",
        }
    }

    pub fn is_overlay(&self) -> bool {
        matches!(self, Driver::Overlay { .. })
    }
}

/// What an endpoint holds on its network whether or not it is attached: identity, address, MAC,
/// names and published ports. `allocate` makes one before any kernel change (Docker's
/// CreateEndpoint comes before its Join, CNI's ADD does both); `attach` turns it into an
/// [`Endpoint`], `detach` back into an allocation, `release` frees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Allocation {
    pub id: String,
    pub network_id: String,
    /// Stable id of the namespace ("container"); shared by its endpoints.
    pub container_id: String,
    /// The container as the user named it (the namespace's name, path or PID for `connect`).
    pub container_name: String,
    /// The IPv4 address, on a network with an IPv4 subnet (all but IPv6-only ones).
    #[serde(rename = "address", alias = "ipv4", default, skip_serializing_if = "Option::is_none")]
    pub address4: Option<IpAddr>,
    /// The IPv6 address, on a network with an IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<IpAddr>,
    pub mac: [u8; 6],
    pub aliases: Vec<String>,
    /// Published ports (`-p`): reserved by the allocation, in the datapath while attached.
    #[serde(default)]
    pub ports: Vec<crate::ports::PublishedPort>,
    /// Made by `allocate` (a front-end's step) rather than `connect`: a detach, also the one that
    /// follows its namespace's removal, keeps it until the front-end releases it.
    #[serde(default)]
    pub kept_when_detached: bool,
    /// Which front-end made it (shown by `endpoint ls`; Docker's endpoints are Docker's to free).
    #[serde(default)]
    pub frontend: Frontend,
}

/// The front-end that drives an endpoint's lifecycle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Frontend {
    /// bpfnet's own CLI or API (`network connect`, `endpoint create`).
    #[default]
    Api,
    /// Docker's remote network driver protocol.
    Docker,
    /// The CNI plugin.
    Cni,
}

impl Frontend {
    /// The front-end named `name` (`api`, `docker`, `cni`).
    pub fn parse(name: &str) -> Option<Self> {
        [Frontend::Api, Frontend::Docker, Frontend::Cni].into_iter().find(|f| f.name() == name)
    }

    /// Whether the runtime behind this front-end holds its containers' host ports open as
    /// reservations (Podman's conmon does, under CNI): their publications must win over host
    /// listeners, as the iptables DNAT of CNI's portmap plugin would.
    pub fn holds_port_reservations(self) -> bool {
        self == Frontend::Cni
    }

    pub fn name(self) -> &'static str {
        match self {
            Frontend::Api => "api",
            Frontend::Docker => "docker",
            Frontend::Cni => "cni",
        }
    }
}

/// An allocation attached to a namespace: its veth pair exists and the datapath delivers to it.
/// Reads of the allocation's fields go through `Deref` (`endpoint.address`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    #[serde(flatten)]
    pub allocation: Allocation,
    pub netns_path: PathBuf,
    /// (st_dev, st_ino) of the namespace: tells a gone or replaced namespace from a live one.
    pub netns_dev: u64,
    pub netns_inode: u64,
    /// Interface name inside the namespace (eth0, eth1, ... in join order, or the name asked for).
    pub interface: String,
    /// Host-side veth, where the datapath program is attached, as it was named at creation (also
    /// the name of its pinned link). The kernel may rename it; the veth is found by its alias
    /// `bpfnet:<id>` or by `host_ifindex`, which do not change.
    pub host_interface: String,
    /// Interface index of the host-side veth (0 in records written before it was kept).
    #[serde(default)]
    pub host_ifindex: u32,
    /// The namespace's default route goes through this endpoint's gateway.
    pub default_route: bool,
    /// GRO (hence NAPI) is on in the container's side: XDP at the uplinks may deliver into it.
    /// False in records written before bpfnet turned it on: those take the TC path.
    #[serde(default)]
    pub gro: bool,
}

impl Allocation {
    /// Its addresses: IPv4's and IPv6's, where it has them.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.address4.into_iter().chain(self.address6)
    }

    /// Its first address (IPv4's, else IPv6's): the one listings and messages name it by.
    pub fn address(&self) -> IpAddr {
        self.addresses().next().expect("an endpoint has an address")
    }

    /// The `PORTS` entries of its publication `port`: whether they win over host listeners
    /// depends on its front-end (see [`Frontend::holds_port_reservations`]).
    pub fn port_entries(&self, port: &crate::ports::PublishedPort) -> Vec<(datapath_common::PortKey, datapath_common::PortTarget)> {
        port.entries(self.address4, self.address6, self.frontend.holds_port_reservations())
    }
}

impl std::ops::Deref for Endpoint {
    type Target = Allocation;
    fn deref(&self) -> &Allocation {
        &self.allocation
    }
}

impl std::ops::DerefMut for Endpoint {
    fn deref_mut(&mut self) -> &mut Allocation {
        &mut self.allocation
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct State {
    pub version: u32,
    pub networks: Vec<Network>,
    /// Attached endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Allocations not attached to a namespace (made by `allocate`, or detached).
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// Write-ahead records of endpoints being connected: saved before the first kernel change and
    /// replaced by the endpoint's record when the connect completes. One still here at start-up
    /// is a connect a crash interrupted; the reconciler removes whatever it had made.
    #[serde(default)]
    pub connecting: Vec<Endpoint>,
    /// Address pools handed to Docker's IPAM driver protocol (`--ipam-driver bpfnet`): reserved
    /// before Docker creates the network on them, with the addresses Docker took.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Docker networks (by Docker's id) that stand for an overlay network of the cluster (by
    /// bpfnet's id) on this node: `docker network create -d bpfnet -o bpfnet.overlay=NAME`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub docker_overlays: std::collections::BTreeMap<String, String>,
    /// Services by name, stored apart (see [`ServiceStore`]). A persistent map: publishing the
    /// state after a change shares it with the published copy instead of copying 10,000 entries.
    #[serde(skip)]
    pub services: Services,
    /// Endpoints of other nodes on this node's overlay networks, as etcd holds them (not stored:
    /// read again from etcd at start): names resolve across nodes.
    #[serde(skip)]
    pub remote_endpoints: Vec<RemoteEndpoint>,
}

/// An endpoint of another node on an overlay network.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEndpoint {
    pub network_id: String,
    pub address: IpAddr,
    /// Its IPv6 address, on a dual-stack overlay network (see `ipam::paired_address6`).
    pub address6: Option<IpAddr>,
    pub container_name: String,
    pub aliases: Vec<String>,
    pub node: String,
}

impl RemoteEndpoint {
    /// Its addresses: IPv4, and IPv6 where it has one.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(self.address).chain(self.address6)
    }
}

/// A subnet reserved for Docker's IPAM, and the addresses given out of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pool {
    pub subnet: IpNetwork,
    pub addresses: Vec<IpAddr>,
    /// `--ip-range`: where addresses are handed out from (the whole subnet if none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNetwork>,
}

/// Services by name, in name order.
pub type Services = imbl::OrdMap<String, Arc<Service>>;

/// A virtual address and port on a network, spread over backends (`bpfnet service create`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub network_id: String,
    /// Its IPv4 VIP, on a network with IPv4 (all but IPv6-only ones).
    #[serde(rename = "vip", default, skip_serializing_if = "Option::is_none")]
    pub vip4: Option<IpAddr>,
    /// Its IPv6 VIP, on a network with IPv6 (IPv6 clients reach the backends' IPv6 addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<IpAddr>,
    pub port: u16,
    pub protocol: crate::ports::Protocol,
    /// The host port it is published on (`--publish`): `container_port` is the service port.
    pub publish: Option<crate::ports::PublishedPort>,
    /// Client-IP affinity timeout in seconds (`--affinity client-ip[:SECONDS]`).
    pub affinity_secs: Option<u64>,
    pub backends: Vec<Backend>,
    /// Index in the datapath's `SERVICES` (from 1); its Maglev table is the `datapath_id - 1`th.
    pub datapath_id: u32,
    pub created: String,
    /// A service of the cluster (routing mesh): defined in etcd, made here from it, its backends
    /// on any node (see `daemon::mesh`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Backend {
    /// The endpoint (on the service's network) that serves.
    pub endpoint_id: String,
    pub container_name: String,
    /// Its IPv4 address, where the service has an IPv4 VIP.
    #[serde(rename = "address", default, skip_serializing_if = "Option::is_none")]
    pub address4: Option<IpAddr>,
    /// Its IPv6 address, where the service has an IPv6 VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<IpAddr>,
    pub port: u16,
    /// Index in the datapath's `BACKENDS` (from 1).
    pub datapath_id: u32,
    /// `rm-backend --drain`: no new connections; removed once its connections have ended.
    #[serde(default)]
    pub draining: bool,
    /// The node it lives on, for a backend of a cluster service on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Backend {
    /// What Maglev hashes: the same backend gets the same slots on every restart (and both
    /// families the same table).
    pub fn maglev_name(&self) -> String {
        format!("{}:{}", self.address(), self.port)
    }

    /// Its addresses: IPv4's and IPv6's, where it has them.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.address4.into_iter().chain(self.address6)
    }

    /// Its first address (IPv4's, else IPv6's), which messages and Maglev name it by.
    pub fn address(&self) -> IpAddr {
        self.addresses().next().expect("a backend has an address")
    }
}

impl Service {
    /// Its VIPs: IPv4's and IPv6's, where it has them.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> {
        self.vip4.into_iter().chain(self.vip6)
    }

    /// Its first VIP (IPv4's, else IPv6's).
    pub fn vip(&self) -> IpAddr {
        self.vips().next().expect("a service has a VIP")
    }
}

/// Where services live on disk: a snapshot (`services.json`) and a journal of the changes made
/// since (`services.journal`, one JSON line each: a service as it now is, or the name of one
/// removed), which a change appends to and flushes. So a change to one of 10,000 services
/// writes one line, a batch writes all its lines with one flush, and a crash leaves the
/// snapshot plus a journal whose last line at worst is torn (dropped when read back). When the
/// journal outgrows the snapshot, the whole set is written as the new snapshot and the journal
/// starts afresh.
pub struct ServiceStore {
    dir: PathBuf,
    journal: Option<fs::File>,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change<S> {
    Put(S),
    Delete(String),
}

const SNAPSHOT_FILE: &str = "services.json";
const JOURNAL_FILE: &str = "services.journal";
/// The journal is folded into the snapshot once it is larger than this and than the snapshot.
const COMPACT_AFTER: u64 = 1 << 20;

impl ServiceStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.to_path_buf(), journal: None, journal_bytes: 0, snapshot_bytes: 0 }
    }

    /// The services stored: the snapshot with the journal replayed on it.
    pub fn load(&mut self) -> Result<Services> {
        let mut services = Services::new();
        let snapshot = self.dir.join(SNAPSHOT_FILE);
        match fs::read(&snapshot) {
            Ok(bytes) => {
                self.snapshot_bytes = bytes.len() as u64;
                let list: Vec<Service> = serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is damaged; restore it from a backup, or remove it and create the services again", snapshot.display())
                })?;
                services.extend(list.into_iter().map(|s| (s.name.clone(), Arc::new(s))));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", snapshot.display())),
        }
        let path = self.dir.join(JOURNAL_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut good = 0;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let change = (line.ends_with(b"\n")).then(|| serde_json::from_slice::<Change<Service>>(line).ok()).flatten();
            match change {
                Some(Change::Put(s)) => {
                    services.insert(s.name.clone(), Arc::new(s));
                }
                Some(Change::Delete(name)) => {
                    services.remove(&name);
                }
                None if good + line.len() == text.len() => {
                    log::warn!("{}: dropping a torn last change (the daemon stopped while writing it)", path.display());
                    break;
                }
                None => anyhow::bail!("{} is damaged at byte {good}; restore it from a backup", path.display()),
            }
            good += line.len();
        }
        let journal = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).with_context(|| format!("opening {}", path.display()))?;
        journal.set_len(good as u64)?;
        self.journal = Some(journal);
        self.journal_bytes = good as u64;
        Ok(services)
    }

    fn append(&mut self, changes: &[Change<&Service>]) -> Result<()> {
        let mut bytes = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut bytes, change)?;
            bytes.push(b'\n');
        }
        let journal = self.journal.as_mut().context("the service journal is not open (load it first)")?;
        if let Err(e) = journal.write_all(&bytes).and_then(|()| journal.sync_data()) {
            // A torn record must not stay behind a change that was refused: back to the last
            // whole one.
            let _ = journal.set_len(self.journal_bytes).and_then(|()| journal.sync_data());
            return Err(e).context("appending to the service journal");
        }
        self.journal_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Stores `services` as they now are (new or changed), with one flush.
    pub fn save(&mut self, services: &[&Service]) -> Result<()> {
        self.append(&services.iter().map(|s| Change::Put(*s)).collect::<Vec<_>>())
    }

    pub fn remove(&mut self, names: &[&str]) -> Result<()> {
        self.append(&names.iter().map(|n| Change::Delete(n.to_string())).collect::<Vec<_>>())
    }

    /// Folds the journal into a new snapshot of `all` once it is due (see [`COMPACT_AFTER`]).
    /// A failure leaves the old snapshot and the journal, which still say everything.
    pub fn compact_if_due<'a>(&mut self, all: impl Iterator<Item = &'a Service>) -> Result<()> {
        if self.journal_bytes < COMPACT_AFTER.max(self.snapshot_bytes) {
            return Ok(());
        }
        let list: Vec<&Service> = all.collect();
        let bytes = serde_json::to_vec(&list)?;
        write_atomically(&self.dir, SNAPSHOT_FILE, &bytes)?;
        // A crash before the truncation replays changes the snapshot holds already: harmless.
        let journal = self.journal.as_mut().context("the service journal is not open")?;
        journal.set_len(0)?;
        journal.sync_all()?;
        self.journal_bytes = 0;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Removes the service files (`--cleanup`).
    pub fn remove_all(&self) -> Result<()> {
        for name in [SNAPSHOT_FILE, JOURNAL_FILE] {
            remove_if_present(&self.dir.join(name))?;
        }
        Ok(())
    }
}

impl State {
    pub fn empty() -> Self {
        Self { version: FORMAT_VERSION, ..Self::default() }
    }

    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn network_by_id(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.id == id)
    }

    pub fn endpoints_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| e.network_id == network_id)
    }

    /// Every allocation of a network, attached or not: what holds its addresses.
    pub fn allocations_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.all_allocations().filter(move |a| a.network_id == network_id)
    }

    /// Every allocation, attached or not: what holds addresses and published ports.
    pub fn all_allocations(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.endpoints.iter().map(|e| &e.allocation).chain(&self.allocations)
    }

    pub fn endpoints_in_netns(&self, dev: u64, inode: u64) -> impl Iterator<Item = &Endpoint> + '_ {
        self.endpoints
            .iter()
            .filter(move |e| e.netns_dev == dev && e.netns_inode == inode)
    }

    /// The lowest datapath id no network uses (0 is never used).
    pub fn free_datapath_id(&self) -> u32 {
        (1..).find(|id| !self.networks.iter().any(|n| n.datapath_id == *id)).unwrap()
    }
}

/// Where the state lives on disk.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Result<Self> {
        make_private_dir(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The stored state, or `None` when there is no state file.
    pub fn load(&self) -> Result<Option<State>> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => {
                let mut state: State = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is damaged; restore it from a backup, or remove everything bpfnet made with \
                         `bpfnet daemon --cleanup` and start afresh",
                        path.display()
                    )
                })?;
                anyhow::ensure!(
                    (OLDEST_READABLE..=FORMAT_VERSION).contains(&state.version),
                    "{} has format version {}, this bpfnet reads {OLDEST_READABLE} to {FORMAT_VERSION}",
                    path.display(),
                    state.version
                );
                // A network with neither side, an endpoint with no address: a record cut short
                // (a flattened IPv4 side that does not parse reads as none).
                let damaged = |what: String| anyhow::anyhow!("{} is damaged: {what}; restore it from a backup, or start afresh with `bpfnet daemon --cleanup`", path.display());
                if let Some(net) = state.networks.iter().find(|n| n.ipv4.is_none() && n.ipv6.is_none()) {
                    return Err(damaged(format!("network {:?} has no subnet", net.name)));
                }
                for ep in self.load_write_ahead() {
                    if !state.endpoints.iter().chain(&state.connecting).any(|e| e.id == ep.id) {
                        state.connecting.push(ep);
                    }
                }
                let mut allocations = state.endpoints.iter().chain(&state.connecting).map(|e| &e.allocation).chain(&state.allocations);
                if let Some(a) = allocations.find(|a| a.address4.is_none() && a.address6.is_none()) {
                    return Err(damaged(format!("endpoint {} has no address", a.id)));
                }
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state so that a crash leaves either the old or the new file, never a mix.
    pub fn save(&self, state: &State) -> Result<()> {
        let mut state = state.clone();
        state.version = FORMAT_VERSION;
        write_atomically(&self.dir, STATE_FILE, &serde_json::to_vec_pretty(&state)?)
    }

    /// Records `connecting` (`State::connecting`: the attaches under way) before an attach's
    /// first kernel change, in a file of its own and without waiting for the disk: what these
    /// records are for (veths, filters, map entries left by a crash in the middle of an attach)
    /// does not outlive a power loss either, and a daemon's crash cannot lose a written file. The
    /// next [`Store::save`] makes the state file say what they said (an attach finished or
    /// undone, or its record kept in `State::connecting`) and removes this file.
    pub fn write_ahead(&self, connecting: &[Endpoint]) -> Result<()> {
        replace_file(&self.dir, WRITE_AHEAD_FILE, &serde_json::to_vec(connecting)?, Durability::CrashOnly)
    }

    /// Removes the write-ahead file: the state file, just saved, holds what it said.
    pub fn forget_write_ahead(&self) -> Result<()> {
        remove_if_present(&self.dir.join(WRITE_AHEAD_FILE))
    }

    /// The write-ahead file's records; a damaged file (the daemon's crash while it was replaced
    /// cannot make one, a disk's failure can) is reported and read as none: bpfnet's aliased
    /// veths without a record are removed at start all the same.
    fn load_write_ahead(&self) -> Vec<Endpoint> {
        let path = self.dir.join(WRITE_AHEAD_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("{} is damaged ({e}): its records of interrupted connects are not read", path.display());
                vec![]
            }),
            Err(_) => vec![],
        }
    }

    pub fn remove(&self) -> Result<()> {
        self.forget_write_ahead()?;
        remove_if_present(&self.path())
    }
}

/// Writes `dir/name` so that a crash leaves either the old or the new file, never a mix: a
/// temporary file, fsynced, renamed over the old one, then the directory fsynced.
/// A failed write (a full disk) leaves no temporary file behind. Files are root's only (0600):
/// they name every container, network and address.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace_file(dir, name, bytes, Durability::PowerLoss)
}

/// What a replaced file must survive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// A power loss: the file and the directory are fsynced.
    PowerLoss,
    /// The daemon's crash only (what the file accounts for does not outlive a power loss): no
    /// fsync, the kernel's page cache keeps it.
    CrashOnly,
}

/// Replaces `dir/name` with `bytes` by a temporary file renamed over it (see
/// [`write_atomically`]), as durable as `durability` says.
fn replace_file(dir: &Path, name: &str, bytes: &[u8], durability: Durability) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        if durability == Durability::PowerLoss {
            file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if durability == Durability::PowerLoss {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` if missing and makes it root's only (0700): the state names every container.
pub fn make_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: FORMAT_VERSION,
            networks: vec![Network {
                id: "n1".into(),
                name: "backend".into(),
                ipv4: Some(Subnet { subnet: "10.1.0.0/24".parse().unwrap(), gateway: "10.1.0.1".parse().unwrap() }),
                internal: false,
                icc: true,
                masquerade: true,
                options: BTreeMap::new(),
                datapath_id: 1,
                created: "2026-01-01T00:00:00Z".into(),
                driver: Driver::Local,
                ip_range: None,
                ipv6: None,
            }],
            endpoints: vec![],
            allocations: vec![],
            connecting: vec![],
            pools: vec![],
            docker_overlays: Default::default(),
            services: Services::new(),
            remote_endpoints: vec![],
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("bpfnet-state-test-{}", std::process::id()));
        let store = Store::new(&dir).unwrap();
        assert_eq!(store.load().unwrap(), None, "no file is told apart from an empty state");
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        fs::write(store.path(), b"{\"version\": 1, \"networks\": [").unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("is damaged") && err.contains("--cleanup"), "{err}");
        assert!(!dir.join("state.json.tmp").exists(), "temporary file renamed away");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_ahead_records_are_read_back_until_the_state_says_what_they_said() {
        let dir = std::env::temp_dir().join(format!("bpfnet-write-ahead-test-{}", std::process::id()));
        let store = Store::new(&dir).unwrap();
        let ep: Endpoint = serde_json::from_str(
            r#"{"id": "e1", "network_id": "n1", "container_id": "c1", "container_name": "con1",
            "netns_path": "/run/netns/con1", "netns_dev": 4, "netns_inode": 4026532000,
            "interface": "eth0", "host_interface": "bne1", "host_ifindex": 7, "ipv4": "10.1.0.2",
            "mac": [2, 66, 10, 1, 0, 2], "aliases": [], "default_route": true, "ports": []}"#,
        )
        .unwrap();
        store.save(&sample()).unwrap();
        // An attach under way (the daemon crashed in it): its record comes back with the state.
        store.write_ahead(std::slice::from_ref(&ep)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().connecting, vec![ep.clone()]);
        // The attach finished and saved, the file not removed yet: the endpoint is no leftover.
        let mut attached = sample();
        attached.endpoints.push(ep.clone());
        store.save(&attached).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!((loaded.endpoints.len(), loaded.connecting.len()), (1, 0));
        // Folded into the state, and gone.
        store.forget_write_ahead().unwrap();
        assert!(!dir.join(WRITE_AHEAD_FILE).exists());
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        // A damaged file is read as no record; the state still loads.
        fs::write(dir.join(WRITE_AHEAD_FILE), b"[{\"id\": ").unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        store.remove().unwrap();
        assert!(!dir.join(WRITE_AHEAD_FILE).exists() && !store.path().exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_written_before_the_lifecycle_split_still_load() {
        // An endpoint as state.json held it before addresses became `IpAddr` and allocations
        // were split from attachments: one flat record, the address under "ipv4".
        let old = r#"{"version": 1, "networks": [], "connecting": [], "endpoints": [{
            "id": "e1", "network_id": "n1", "container_id": "c1", "container_name": "con1",
            "netns_path": "/run/netns/con1", "netns_dev": 4, "netns_inode": 4026532000,
            "interface": "eth0", "host_interface": "bne1", "host_ifindex": 7, "ipv4": "10.1.0.2",
            "mac": [2, 66, 10, 1, 0, 2], "aliases": ["db"], "default_route": true, "ports": []}]}"#;
        let state: State = serde_json::from_str(old).unwrap();
        let ep = &state.endpoints[0];
        assert_eq!(ep.address4, Some("10.1.0.2".parse::<IpAddr>().unwrap()));
        assert_eq!((ep.interface.as_str(), ep.host_ifindex, ep.aliases.as_slice()), ("eth0", 7, &["db".to_string()][..]));
        assert!(!ep.kept_when_detached && state.allocations.is_empty());
        // And what is written now reads back the same, still flat.
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains(r#""address":"10.1.0.2""#) && text.contains(r#""netns_inode":4026532000"#), "{text}");
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), state);
    }

    #[test]
    fn an_ipv6_only_network_and_endpoint_round_trip_and_older_records_keep_their_ipv4() {
        // Written before IPv6-only networks: the IPv4 side flat, always there.
        let old = r#"{"version": 2, "networks": [{"id": "n1", "name": "web", "subnet": "10.1.0.0/24",
            "gateway": "10.1.0.1", "internal": false, "icc": true, "options": {}, "datapath_id": 1,
            "created": ""}], "endpoints": []}"#;
        let state: State = serde_json::from_str(old).unwrap();
        let v4 = Subnet { subnet: "10.1.0.0/24".parse().unwrap(), gateway: "10.1.0.1".parse().unwrap() };
        assert_eq!((state.networks[0].ipv4, state.networks[0].ipv6), (Some(v4), None));
        let mut state = sample();
        let v6 = Subnet { subnet: "fd00:6::/64".parse().unwrap(), gateway: "fd00:6::1".parse().unwrap() };
        state.networks[0].ipv4 = None;
        state.networks[0].ipv6 = Some(v6);
        state.allocations.push(Allocation {
            id: "e1".into(),
            network_id: "n1".into(),
            container_id: "c1".into(),
            container_name: "con1".into(),
            address4: None,
            address6: Some("fd00:6::2".parse().unwrap()),
            mac: [2, 0x42, 0, 0, 0, 2],
            aliases: vec![],
            ports: vec![],
            kept_when_detached: false,
            frontend: Frontend::Api,
        });
        let text = serde_json::to_string(&state).unwrap();
        assert!(!text.contains(r#""subnet":"10"#) && !text.contains(r#""address":"#), "no IPv4 written: {text}");
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        let net = &back.networks[0];
        assert_eq!((net.subnets().next(), net.gateway()), (Some(v6.subnet), v6.gateway), "the first side is IPv6's");
        assert_eq!(back.allocations[0].address().to_string(), "fd00:6::2");
        // An IPv4 side cut short (no gateway) on a network without IPv6: damage, said so.
        let dir = std::env::temp_dir().join(format!("bpfnet-state-v6only-test-{}", std::process::id()));
        let store = Store::new(&dir).unwrap();
        fs::write(store.path(), old.replace(r#""gateway": "10.1.0.1", "#, "")).unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("is damaged: network \"web\" has no subnet"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn service(name: &str, backends: usize) -> Service {
        Service {
            id: format!("id-{name}"),
            name: name.into(),
            network_id: "n1".into(),
            vip4: Some("10.1.0.100".parse().unwrap()),
            vip6: None,
            port: 80,
            protocol: crate::ports::Protocol::Tcp,
            publish: None,
            affinity_secs: None,
            backends: (0..backends)
                .map(|i| Backend {
                    endpoint_id: format!("e{i}"),
                    container_name: format!("web{i}"),
                    address4: Some(format!("10.1.0.{}", i + 2).parse().unwrap()),
                    address6: None,
                    port: 80,
                    datapath_id: i as u32 + 1,
                    draining: false,
                    node: None,
                })
                .collect(),
            datapath_id: 1,
            created: String::new(),
            cluster: false,
        }
    }

    #[test]
    fn services_survive_in_snapshot_and_journal_and_a_torn_last_line_is_dropped() {
        let dir = std::env::temp_dir().join(format!("bpfnet-services-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut store = ServiceStore::new(&dir);
        assert!(store.load().unwrap().is_empty());
        let (a, b) = (service("a", 2), service("b", 3));
        store.save(&[&a, &b]).unwrap();
        let mut a2 = a.clone();
        a2.backends.pop();
        store.save(&[&a2]).unwrap();
        store.remove(&["b"]).unwrap();
        // A change cut short by a crash: half a line at the end.
        fs::OpenOptions::new().append(true).open(dir.join(JOURNAL_FILE)).unwrap().write_all(b"{\"put\":{\"id\":").unwrap();
        let mut store = ServiceStore::new(&dir);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(*loaded["a"], a2, "the last change of each service wins");
        // The torn line is gone, so the next change is read back too.
        let c = service("c", 1);
        store.save(&[&c]).unwrap();
        assert_eq!(ServiceStore::new(&dir).load().unwrap().len(), 2);
        // Compaction: everything in the snapshot, the journal empty, the same set read back.
        let many: Vec<Service> = (0..1000).map(|i| service(&format!("s{i}"), 10)).collect();
        store.save(&many.iter().collect::<Vec<_>>()).unwrap();
        let all = ServiceStore::new(&dir).load().unwrap();
        store.compact_if_due(all.values().map(|s| s.as_ref())).unwrap();
        assert_eq!(fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len(), 0, "journal folded into the snapshot");
        assert_eq!(ServiceStore::new(&dir).load().unwrap(), all);
        // A damaged line in the middle is an error, not silently skipped.
        fs::write(dir.join(JOURNAL_FILE), b"{\"delete\":\"a\"}\ngarbage\n{\"delete\":\"c\"}\n").unwrap();
        let err = format!("{:#}", ServiceStore::new(&dir).load().unwrap_err());
        assert!(err.contains("is damaged"), "{err}");
        store.remove_all().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn free_datapath_id_skips_used() {
        let mut s = sample();
        assert_eq!(s.free_datapath_id(), 2);
        s.networks[0].datapath_id = 2;
        assert_eq!(s.free_datapath_id(), 1);
    }
}
