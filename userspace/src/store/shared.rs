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
}

/// What etcd holds of overlay networks and their endpoints, as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub networks: Vec<NetworkRecord>,
    pub endpoints: Vec<EndpointRecord>,
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
}
