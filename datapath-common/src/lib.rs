//! Map keys, values and constants shared by the eBPF datapath and the userspace daemon.
//!
//! This is the one definition of every map layout. Every type is `#[repr(C)]`, has no implicit
//! padding (explicit `_pad` fields instead) and its size is asserted below, so the two sides can
//! never disagree silently. Addresses and ports are stored in network byte order, exactly as they
//! appear in packets, so the datapath compares them without swapping.
#![cfg_attr(not(test), no_std)]

/// Version of the map layouts below. Bump it with any change to a key, a value or a map's size:
/// the daemon pins maps per version, so it never reuses maps of another layout.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names: the names in the eBPF object, and the file names under the daemon's bpffs directory.
pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const IFACES: &str = "IFACES";
    pub const COUNTERS: &str = "COUNTERS";
    /// Every map the datapath pins, in a stable order.
    pub const ALL: [&str; 3] = [ENDPOINTS, IFACES, COUNTERS];
}

/// Program names in the eBPF object.
pub mod program_names {
    /// TC ingress on the host-side veth of every endpoint: traffic leaving a container.
    pub const FROM_CONTAINER: &str = "from_container";
}

/// Globals of the eBPF object that the daemon sets when it loads the program.
pub mod global_names {
    /// `u8`, non-zero: log every packet's outcome through aya-log (`bpfnet daemon --trace`).
    pub const TRACE: &str = "TRACE";
}

/// Default sizes; the daemon can override them when it creates the maps.
pub const MAX_ENDPOINTS: u32 = 65_536;

/// MAC address the host-side veth of every endpoint carries, and that the datapath answers ARP
/// with for a network's gateway. Every host-side veth gets the same one (as Calico does): they are
/// point-to-point links, so one address is unambiguous, and the datapath never needs a lookup to
/// know the gateway's MAC.
pub const GATEWAY_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// An IP address as a map key: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so IPv6 can later use
/// the same maps without a layout change. Stored as four words holding the address bytes in wire
/// order, so the datapath builds a key with four word stores (a byte array compiles to a memset
/// and byte copies in eBPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpKey {
    pub addr: [u32; 4],
}

impl IpKey {
    /// `octets` is the address as it appears on the wire (a.b.c.d).
    #[inline(always)]
    pub const fn from_ipv4_octets(octets: [u8; 4]) -> Self {
        Self { addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(octets)] }
    }

    /// The address bytes in wire order.
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, word) in self.addr.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        out
    }
}

/// Value of `ENDPOINTS` (keyed by the endpoint's [`IpKey`]): where to deliver a packet for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Host-side veth of the endpoint: the target of `bpf_redirect_peer`.
    pub host_ifindex: u32,
    /// Datapath network id (small integer chosen by the daemon); isolation compares these.
    pub network_id: u32,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Flags of [`IfaceInfo::flags`]: options of the network the interface belongs to.
pub mod iface_flags {
    /// `-o icc=false`: containers of the network may not talk to each other (the gateway is fine).
    pub const ICC_DISABLED: u32 = 1 << 0;
    /// `--internal`: nothing leaves the network but traffic to the gateway.
    pub const INTERNAL: u32 = 1 << 1;
}

/// Value of `IFACES` (keyed by the ifindex of an endpoint's host-side veth): who sends on it.
/// The network's options are copied in so that the hot path needs one lookup per side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceInfo {
    pub network_id: u32,
    /// The endpoint's IPv4 address (network order): anything else from it is spoofed.
    pub ipv4: [u8; 4],
    /// The network's gateway, owned by the host.
    pub gateway_ipv4: [u8; 4],
    /// [`iface_flags`].
    pub flags: u32,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Indexes into the per-CPU `COUNTERS` array: what the datapath did with each packet.
/// Names for display come from [`Counter::name`]; keep the two in step.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Delivered to another container with `bpf_redirect_peer`.
    Redirected = 0,
    /// Passed to the host stack (gateway, host addresses).
    ToHost = 1,
    /// ARP request answered by the datapath.
    ArpReplied = 2,
    /// Drop: packet too short or malformed headers.
    DropMalformed = 3,
    /// Drop: arrived on an interface the datapath does not know (being set up or torn down).
    DropUnknownIface = 4,
    /// Drop: source IP is not the sending endpoint's address.
    DropSpoofedSource = 5,
    /// Drop: destination is an endpoint of another network.
    DropIsolation = 6,
    /// Drop: network has `icc=false` and the destination is a container of the same network.
    DropIcc = 7,
    /// Drop: network is internal and the destination is outside it.
    DropInternal = 8,
    /// Drop: ARP request for an address that has no owner in the sender's network.
    DropArpUnknownTarget = 9,
    /// Drop: an ethertype the datapath does not forward (IPv6 for now).
    DropUnsupportedProtocol = 10,
    /// Drop: the redirect helper refused the packet (it only does for invalid flags). A packet for
    /// a target whose veth just vanished is dropped later by the kernel and not counted here.
    DropRedirectFailed = 11,
}

impl Counter {
    pub const COUNT: u32 = 12;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirected,
        Counter::ToHost,
        Counter::ArpReplied,
        Counter::DropMalformed,
        Counter::DropUnknownIface,
        Counter::DropSpoofedSource,
        Counter::DropIsolation,
        Counter::DropIcc,
        Counter::DropInternal,
        Counter::DropArpUnknownTarget,
        Counter::DropUnsupportedProtocol,
        Counter::DropRedirectFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::ToHost => "to_host",
            Counter::ArpReplied => "arp_replied",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropUnknownIface => "drop_unknown_iface",
            Counter::DropSpoofedSource => "drop_spoofed_source",
            Counter::DropIsolation => "drop_isolation",
            Counter::DropIcc => "drop_icc",
            Counter::DropInternal => "drop_internal",
            Counter::DropArpUnknownTarget => "drop_arp_unknown_target",
            Counter::DropUnsupportedProtocol => "drop_unsupported_protocol",
            Counter::DropRedirectFailed => "drop_redirect_failed",
        }
    }

    pub const fn is_drop(self) -> bool {
        !matches!(self, Counter::Redirected | Counter::ToHost | Counter::ArpReplied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_ipv4_mapped_in_wire_order() {
        let key = IpKey::from_ipv4_octets([10, 1, 2, 3]);
        assert_eq!(key.octets(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
    }

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "Counter::ALL is in index order");
        }
        assert!(Counter::DropIsolation.is_drop() && !Counter::Redirected.is_drop());
    }
}

// Layout asserts: a change here is a change of the pinned maps' format.
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 24);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are repr(C), Copy, without padding (asserted above) and valid for any bytes.
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IfaceInfo {}
}
