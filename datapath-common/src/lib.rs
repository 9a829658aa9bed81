//! Map keys, values and constants shared by the eBPF datapath and the userspace daemon.
//!
//! This is the one definition of every map layout, one module per map family: [`ip`] (address
//! keys), [`endpoints`] (where to deliver), [`ifaces`] (who sends on a host-side veth),
//! [`uplinks`] (where traffic leaves the host), [`ports`] (published ports), [`services`] (load balancing), [`sockets`] (host-local access to them), [`conntrack`] (connections and their NAT),
//! [`counters`] (what happened to packets), and [`names`] (how maps, programs and globals are
//! called). Every key and value is `#[repr(C)]` and derives `bytemuck::Pod`, which refuses to
//! compile a layout with implicit padding; sizes are asserted too, so the two sides can never
//! disagree silently. Addresses and ports are stored in network byte order, exactly as they
//! appear in packets, so the datapath compares them without swapping.
#![cfg_attr(not(test), no_std)]

pub mod conntrack;
pub mod counters;
pub mod endpoints;
pub mod ifaces;
pub mod ip;
pub mod names;
pub mod ports;
pub mod services;
pub mod sockets;
pub mod uplinks;

pub use conntrack::{ct_action, ct_state, route_flags, CtConfig, CtEntry, CtKey, FragKey, FragPorts};
pub use counters::Counter;
pub use endpoints::{endpoint_flags, EndpointInfo, MAX_ENDPOINTS, MAX_MESH_BACKENDS, MAX_OVERLAY_NETWORKS, MAX_OVERLAY_PEERS, OVERLAY_NODE_ENTRIES, VXLAN_PORT};
pub use ifaces::{iface_flags, IfaceInfo, GATEWAY_MAC};
pub use ip::IpKey;
pub use names::{global_names, map_names, program_names};
pub use ports::{port_flags, PortKey, PortTarget, MAX_PUBLISHED_PORTS};
pub use services::{AffinityKey, AffinityValue, BackendInfo, MaglevPair, ServiceInfo};
pub use sockets::{SockRevKey, SockRevValue};
pub use uplinks::{uplink_flags, UplinkInfo, MAX_UPLINKS};

/// Version of the map layouts. Bump it with any change to a key, a value or a map's size: the
/// daemon pins maps per version, so it never reuses maps of another layout.
pub const LAYOUT_VERSION: u32 = 13;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: each derives bytemuck::Pod (repr(C), no padding, every bit pattern valid), which is
    // what aya::Pod asks for.
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for UplinkInfo {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtConfig {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortTarget {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
}
