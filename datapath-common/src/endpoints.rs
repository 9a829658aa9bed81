//! `ENDPOINTS`: endpoint address ([`crate::IpKey`]) -> where to deliver a packet for it.
use bytemuck::{Pod, Zeroable};

/// Default size of the endpoint maps; the daemon can override it when it creates them.
pub const MAX_ENDPOINTS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct EndpointInfo {
    /// Host-side veth of the endpoint: the target of `bpf_redirect_peer`. For an endpoint on
    /// another node (`underlay` set): the VXLAN device its packets are sent by.
    pub host_ifindex: u32,
    /// Datapath network id (small integer chosen by the daemon); isolation compares these.
    pub network_id: u32,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    /// [`endpoint_flags`].
    pub flags: u8,
    pub _pad: u8,
    /// Zero for an endpoint of this node; else the underlay address (network order) of the
    /// node the endpoint lives on, where its packets are tunnelled to.
    pub underlay: [u8; 4],
    /// The overlay network's VXLAN id, for an endpoint on another node.
    pub vni: u32,
}

impl EndpointInfo {
    /// The endpoint lives on another node (its packets go through the tunnel).
    pub fn is_remote(&self) -> bool {
        self.underlay != [0; 4]
    }
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);

/// [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// An endpoint on another node that is a backend of a service of the cluster: its answers
    /// to connections this node balanced to it are translated back here.
    pub const SERVICE_BACKEND: u8 = 1 << 0;
}

/// Backends on this node of the cluster's services (`MESH_BACKENDS`), which other nodes balance
/// connections from outside to.
pub const MAX_MESH_BACKENDS: u32 = 65_536;

/// The other live nodes of the cluster (`OVERLAY_PEERS`: underlay address, network order -> 1),
/// the only senders a routing-mesh packet is taken from.
pub const MAX_OVERLAY_PEERS: u32 = 4096;

/// `OVERLAY_NODE`: one entry, this node's underlay address (network order) when the datapath
/// encapsulates and decapsulates VXLAN itself (0: it leaves that to the node's VXLAN device).
pub const OVERLAY_NODE_ENTRIES: u32 = 1;
/// VXLAN's UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Overlay networks a node holds (`OVERLAY_VNIS`: VXLAN id -> datapath network id).
pub const MAX_OVERLAY_NETWORKS: u32 = 4096;
