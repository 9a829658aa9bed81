//! Where bpfnet keeps things in etcd. Every key starts with [`ROOT`] (the layout's version, so that
//! a later layout can live beside this one during an upgrade); values are JSON.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `nodes/NODE` | [`NodeRecord`]: the node as it registered, renewed with its lease | none: stays until `node rm` |
//! | `alive/NODE` | [`NodeRecord`] | the node's: gone when the node's lease expires |
//! | `networks/NAME` | `NetworkRecord`: an overlay network | none |
//! | `networks-epoch` | empty; changed with every network change (creations compare it) | none |
//! | `endpoints/NETWORK_ID/ADDRESS` | `EndpointRecord`: the address's claim by a node's endpoint | the node's |
//! | `endpoints/NETWORK_ID/VIP` | `EndpointRecord` with `service` set: a cluster service's VIP | none |
//! | `services/NAME` | `ServiceRecord`: a service of the cluster (routing mesh) | none |
use serde::{Deserialize, Serialize};

pub const ROOT: &str = "/bpfnet/v1/";

pub fn nodes() -> String {
    format!("{ROOT}nodes/")
}
pub fn node(name: &str) -> String {
    format!("{ROOT}nodes/{name}")
}
pub fn alive_nodes() -> String {
    format!("{ROOT}alive/")
}
pub fn alive(name: &str) -> String {
    format!("{ROOT}alive/{name}")
}
pub fn networks() -> String {
    format!("{ROOT}networks/")
}
pub fn network(name: &str) -> String {
    format!("{ROOT}networks/{name}")
}
pub fn networks_epoch() -> String {
    format!("{ROOT}networks-epoch")
}
pub fn endpoints() -> String {
    format!("{ROOT}endpoints/")
}
pub fn network_endpoints(network_id: &str) -> String {
    format!("{ROOT}endpoints/{network_id}/")
}
pub fn endpoint(network_id: &str, address: std::net::IpAddr) -> String {
    format!("{ROOT}endpoints/{network_id}/{address}")
}

pub fn services() -> String {
    format!("{ROOT}services/")
}
pub fn service(name: &str) -> String {
    format!("{ROOT}services/{name}")
}

/// The last path segment of `key` under `prefix`.
pub fn name_under<'a>(key: &'a [u8], prefix: &str) -> Option<&'a str> {
    std::str::from_utf8(key).ok()?.strip_prefix(prefix).filter(|n| !n.is_empty() && !n.contains('/'))
}

/// A node as it registered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    /// Where its tunnels end.
    pub underlay: std::net::IpAddr,
    /// bpfnet's version on it.
    pub version: String,
    /// When it last renewed its lease, seconds since the Unix epoch.
    pub last_seen: u64,
}

impl NodeRecord {
    /// This node's record as of now.
    pub fn now(name: &str, underlay: std::net::IpAddr) -> Self {
        Self { name: name.into(), underlay, version: env!("CARGO_PKG_VERSION").into(), last_seen: unix_now() }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_node() {
        assert_eq!(node("n1"), "/bpfnet/v1/nodes/n1");
        assert_eq!(name_under(node("n1").as_bytes(), &nodes()), Some("n1"));
        assert_eq!(name_under(b"/bpfnet/v1/nodes/", &nodes()), None);
        assert_eq!(name_under(b"/bpfnet/v1/nodes/a/b", &nodes()), None);
        assert_eq!(endpoint("abc", "10.0.9.2".parse().unwrap()), "/bpfnet/v1/endpoints/abc/10.0.9.2");
        assert!(endpoint("abc", "10.0.9.2".parse().unwrap()).starts_with(&network_endpoints("abc")));
        assert!(!networks_epoch().starts_with(&networks()));
    }
}
