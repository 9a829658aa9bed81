//! The store a cluster's nodes share (etcd, see `crate::cluster`), behind one trait so that the
//! core never reaches etcd itself: overlay networks are defined there once, and every address of
//! an overlay network is claimed there by the node that uses it, so no two nodes ever hand out
//! the same one. What the nodes hold comes back to each daemon as a [`ClusterView`].
use std::{collections::BTreeMap, fmt, net::IpAddr};

use futures::future::BoxFuture;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// An overlay network as the cluster defines it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
    pub internal: bool,
    pub icc: bool,
    pub masquerade: bool,
    pub options: BTreeMap<String, String>,
    /// Its VXLAN id, unique in the cluster.
    pub vni: u32,
    pub created: String,
    /// `--ip-range`: where addresses are handed out from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNetwork>,
    /// Its IPv6 subnet and gateway (dual stack): endpoints' IPv6 addresses pair with their
    /// IPv4 ones (`ipam::paired_address6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<crate::state::Subnet>,
}

/// An address of an overlay network claimed by a node for one of its endpoints (it lives as long
/// as the node's lease).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    pub network: String,
    pub address: IpAddr,
    pub mac: [u8; 6],
    /// The node it lives on, and where that node's tunnels end.
    pub node: String,
    pub underlay: IpAddr,
    pub container_name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The claim is a cluster service's VIP (`container_name` names the service; no node, no
    /// lease: it lives as long as the service). Such claims are not endpoints: they come back in
    /// [`ClusterView::services`], not in [`ClusterView::endpoints`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
}

/// The id of a claim that holds an address for an endpoint not made yet (Docker's IPAM gives
/// out the address before Docker makes the endpoint): `reserved-ADDRESS`. The endpoint's own
/// claim takes its place.
pub const RESERVATION_PREFIX: &str = "reserved-";

impl EndpointRecord {
    pub fn is_reservation(&self) -> bool {
        self.id.starts_with(RESERVATION_PREFIX)
    }
}

/// A service of the cluster (routing mesh): defined once, made on every node that holds its
/// overlay network, published there on every address, balanced over its backends wherever they
/// live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub id: String,
    pub name: String,
    pub network_id: String,
    pub network: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: crate::ports::Protocol,
    /// The host port it is published on, on every node (all their addresses).
    pub publish: Option<u16>,
    pub affinity_secs: Option<u64>,
    /// Addresses on the network and ports; a backend serves while its address is claimed (its
    /// endpoint lives, on whichever node).
    pub backends: Vec<BackendRecord>,
    pub created: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct BackendRecord {
    pub address: IpAddr,
    pub port: u16,
}

/// What etcd holds of overlay networks and their endpoints, as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub networks: Vec<NetworkRecord>,
    pub endpoints: Vec<EndpointRecord>,
    pub services: Vec<ServiceRecord>,
    /// The live nodes (those whose lease holds), by name: where their tunnels end.
    pub nodes: BTreeMap<String, IpAddr>,
    /// The store's revision this view shows (a view older than a change of this node's own does
    /// not show that change yet).
    pub revision: i64,
}

/// Why the shared store refused or failed a change, in the user's terms.
#[derive(Debug)]
pub enum SharedError {
    /// What was asked for clashes with what another node holds.
    Conflict(String),
    NotFound(String),
    /// etcd is out of reach (or this node is not registered yet): try again later.
    Unavailable(String),
    Failed(anyhow::Error),
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict(m) | Self::NotFound(m) | Self::Unavailable(m) => f.write_str(m),
            Self::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

pub type SharedResult<T> = Result<T, SharedError>;

/// The cluster's store, as the core uses it.
pub trait SharedStore: Send + Sync {
    /// This node's name and underlay address.
    fn node(&self) -> &str;
    fn underlay(&self) -> IpAddr;
    /// Whether the store answered its last request (background work waits while it does not).
    fn reachable(&self) -> bool;
    /// Defines `network` (its `vni` is chosen here) unless its name is taken or its subnet
    /// overlaps another overlay network's. Returns the VNI and the store's revision of the change.
    fn create_network(&self, network: NetworkRecord) -> BoxFuture<'_, SharedResult<(u32, i64)>>;
    /// Removes the network `name` (id `id`), refused while any node holds an address on it.
    /// Returns the store's revision of the change.
    fn remove_network(&self, name: String, id: String) -> BoxFuture<'_, SharedResult<i64>>;
    /// Claims `endpoint.address` for this node's endpoint (again, after a restart: a claim of the
    /// same endpoint is no clash).
    fn claim(&self, endpoint: EndpointRecord) -> BoxFuture<'_, SharedResult<()>>;
    /// Gives back the address of this node's endpoint `endpoint_id`.
    fn release(&self, network_id: String, address: IpAddr, endpoint_id: String) -> BoxFuture<'_, SharedResult<()>>;
    /// Defines `service` and claims its VIP, unless the name or the VIP is taken. Returns the
    /// store's revision of the change.
    fn create_service(&self, service: ServiceRecord) -> BoxFuture<'_, SharedResult<i64>>;
    /// Removes service `name` and gives back its VIP. Returns the store's revision.
    fn remove_service(&self, name: String) -> BoxFuture<'_, SharedResult<i64>>;
    /// Adds `add` to and removes `remove` from the backends of service `name`, as one change
    /// against the service as stored (another node's change meanwhile is kept). Returns the
    /// service as changed and the store's revision.
    fn change_backends(
        &self,
        name: String,
        add: Vec<BackendRecord>,
        remove: Vec<BackendRecord>,
    ) -> BoxFuture<'_, SharedResult<(ServiceRecord, i64)>>;
}
