//! Clusters (`bpfnet daemon --cluster ETCD_URL,... --node NAME`): several hosts, each running its
//! own daemon, that share what must be shared through **etcd**, an existing distributed store,
//! never one of our own. Without `--cluster` none of this runs and nothing needs etcd.
//!
//! - `keys`: the layout of bpfnet's keys in etcd, in one place.
//! - `etcd`: the client as bpfnet uses it (time limits, no answer without a leader, retries on
//!   another member) and how its errors read.
//! - `membership`: the node's registration under a lease, kept alive; `node ls`, `node rm`.
//! - `overlay`: overlay networks and their addresses' claims (`crate::store::shared::SharedStore`
//!   over etcd), and the watch that brings every change to every node.
//!
//! What is reachable from where: the daemon talks to the etcd members it is given (TCP 2379);
//! other nodes never talk to a daemon, only to etcd.
mod etcd;
mod keys;
mod membership;
mod overlay;
mod services;

use std::{net::IpAddr, time::Duration};

pub use membership::Membership;

/// `--cluster`, `--node`, `--underlay-address`, `--cluster-lease-ttl`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://10.0.0.1:2379`).
    pub etcd: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Where other nodes reach this one. `None`: the uplink's address.
    pub underlay: Option<IpAddr>,
    /// How long the node's records outlive its daemon: long enough for a restart, short enough
    /// that a dead node's endpoints leave the other nodes soon.
    pub lease_ttl: Duration,
    /// Endpoints' MTU on overlay networks. `None`: the uplink's less the encapsulation (50).
    pub overlay_mtu: Option<u32>,
    /// The datapath wraps and unwraps VXLAN itself (`--overlay-encap datapath`), rather than the
    /// node's VXLAN device.
    pub encap_in_datapath: bool,
}

/// Default `--cluster-lease-ttl`: a daemon restarted by its service manager is back well within
/// it, so its endpoints never leave the other nodes' maps.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The shortest lease etcd 3.4 grants with its default timings (1.5 election timeouts, rounded up
/// to 2 s; it raises shorter ones silently): a shorter setting would only pretend to be short.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
