//! `IFACES`: ifindex of an endpoint's host-side veth -> who sends on it.
use bytemuck::{Pod, Zeroable};

/// MAC address the host-side veth of every endpoint carries, and that the datapath answers ARP
/// with for a network's gateway. Every host-side veth gets the same one (as Calico does): they are
/// point-to-point links, so one address is unambiguous, and the datapath never needs a lookup to
/// know the gateway's MAC.
pub const GATEWAY_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// Flags of [`IfaceInfo::flags`]: options of the network the interface belongs to.
pub mod iface_flags {
    /// `-o icc=false`: containers of the network may not talk to each other (the gateway is fine).
    pub const ICC_DISABLED: u32 = 1 << 0;
    /// `--internal`: nothing leaves the network but traffic to the gateway.
    pub const INTERNAL: u32 = 1 << 1;
    /// Traffic to the outside leaves with the uplink's address (`-o masquerade=false` clears it).
    pub const MASQUERADE: u32 = 1 << 2;
    /// The endpoint is a backend of a service its network's containers reach by VIP: its packets
    /// to them may be answers that must leave with the VIP as their source (a conntrack lookup).
    pub const SERVICE_BACKEND: u32 = 1 << 3;
    /// The container's side of the veth has GRO on, hence NAPI: a frame redirected in XDP to
    /// this veth reaches the container (without NAPI on the receiving side the kernel drops it).
    pub const XDP_DELIVERY: u32 = 1 << 4;
}

/// The network's options are copied in so that the hot path needs one lookup per side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct IfaceInfo {
    pub network_id: u32,
    /// The endpoint's IPv4 address (network order): anything else from it is spoofed. All zero
    /// on an IPv6-only network: then nothing of IPv4 (ARP included) from it is taken.
    pub ipv4: [u8; 4],
    /// The network's gateway, owned by the host.
    pub gateway_ipv4: [u8; 4],
    /// [`iface_flags`].
    pub flags: u32,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The endpoint's IPv6 address (wire order), all zero if it has none: its packets from
    /// anything else but its link-local address (from `mac`) are spoofed.
    pub ipv6: [u32; 4],
    /// The network's IPv6 gateway (wire order), owned by the host; zero without IPv6.
    pub gateway_ipv6: [u32; 4],
}

impl IfaceInfo {
    /// The endpoint has an IPv4 address (its network is not IPv6-only).
    #[inline(always)]
    pub fn has_ipv4(&self) -> bool {
        self.ipv4 != [0; 4]
    }

    /// The endpoint has an IPv6 address.
    #[inline(always)]
    pub fn has_ipv6(&self) -> bool {
        self.ipv6[0] | self.ipv6[1] | self.ipv6[2] | self.ipv6[3] != 0
    }
}

const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 56);
