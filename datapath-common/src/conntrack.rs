//! bpfnet's own connection tracking, which also holds every NAT translation: `CONNTRACK`
//! (established connections), `CT_PENDING` (new ones), `CT_QUOTA` (each endpoint's share of
//! `CONNTRACK`), and `FRAGMENTS`, the ports of fragmented datagrams.
//!
//! A tracked connection is a pair of entries, one per direction, each keyed by
//! the tuple exactly as the datapath sees packets of that direction arrive (before translation):
//! - the *original* entry, keyed by what the initiator sends, says how to rewrite its packets;
//! - the *reply* entry, keyed by what comes back, says how to rewrite replies and where the
//!   container that gets them lives.
//! So every packet of a known connection costs one lookup, whichever side it arrives on, and a
//! NAT source port is claimed by inserting the reply entry with `BPF_NOEXIST` (two containers
//! can never be given the same reply tuple). Each entry names its peer, which lets the datapath
//! share TCP state across directions and the daemon list, flush and expire whole pairs.
//!
//! A pair starts in `CT_PENDING`, an LRU: a flood of new connections (spoofed SYNs, datagrams
//! nobody answers) only ever evicts other new connections. Once *assured* (a TCP handshake whose
//! final ACK acknowledges the answer's sequence number; any answer for UDP and ICMP) it moves to
//! `CONNTRACK`, a plain hash the kernel never evicts from: only the daemon removes what expired.
//! Each endpoint (a container's host-side veth) may hold [`CtConfig::endpoint_max`] entries
//! there; beyond its share, or when `CONNTRACK` is full, an assured connection goes on working
//! from `CT_PENDING`, where it can be evicted. So an established connection survives floods from
//! outside and from any one container.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

/// Default size of `CONNTRACK` in entries (two per connection), as Cilium's CT tables.
pub const DEFAULT_CT_ENTRIES: u32 = 524_288;

/// Size of `CT_PENDING` for a `CONNTRACK` of `ct_entries`: a quarter of it (at least 64).
pub const fn pending_entries(ct_entries: u32) -> u32 {
    let quarter = ct_entries / 4;
    if quarter < 64 { 64 } else { quarter }
}

/// Default share of `CONNTRACK` one endpoint's connections may hold: a quarter of it.
pub const fn default_endpoint_max(ct_entries: u32) -> u32 {
    ct_entries / 4
}

/// The endpoint (host-side veth) whose share of `CONNTRACK` (`CT_QUOTA`) a connection counts
/// against, from the `ifindex` of its original and of its reply entry: the container its
/// original direction is delivered to (a published port's server), else the one its answers are
/// (a masquerading client); 0: none. The datapath counts by it, the daemon recounts by it.
pub const fn share_owner(original_ifindex: u32, reply_ifindex: u32) -> u32 {
    if original_ifindex != 0 { original_ifindex } else { reply_ifindex }
}

/// How far (in bytes of sequence space) a RST or FIN may lie from where its direction's stream
/// is: outside it, the segment passes on to the endpoint, which decides, but the tracked state is
/// not changed (a blind attacker must guess within 2 x this of 2^32 to end a connection's
/// tracking, as nf_conntrack's window check asks).
pub const TCP_TRACK_WINDOW: u32 = 1 << 20;
/// Size of `FRAGMENTS`: datagrams being fragmented at once.
pub const FRAGMENT_ENTRIES: u32 = 8_192;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A direction of a connection as the datapath sees it arrive. Ports are in network order; for
/// ICMP echo the identifier is the source "port" of requests and the destination "port" of
/// replies (the other port is 0), so the reply tuple is the request tuple reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct CtKey {
    pub saddr: IpKey,
    pub daddr: IpKey,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// The tuple of the other direction.
    pub const fn reversed(&self) -> Self {
        Self { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, proto: self.proto, _pad: [0; 3] }
    }
}

/// [`CtEntry::action`]: what to rewrite in packets matching the entry.
pub mod ct_action {
    /// Source address and port become `src`/`src_port` (masquerade, reverse DNAT).
    pub const REWRITE_SRC: u8 = 1 << 0;
    /// Destination address and port become `dst`/`dst_port` (reverse masquerade, DNAT).
    pub const REWRITE_DST: u8 = 1 << 1;
    /// The connection was made to a published port (shown by `conntrack ls`).
    pub const PUBLISHED: u8 = 1 << 2;
    /// The connection was made to a service (its VIP or its published port).
    pub const SERVICE: u8 = 1 << 3;
    /// Matching packets are delivered through the overlay: by the VXLAN device `ifindex`, to the
    /// node at `tunnel_underlay`, with VNI `tunnel_vni` (a service's backend on another node, or
    /// the answers of a connection another node balanced to a backend here).
    pub const TUNNEL: u8 = 1 << 4;
}

/// [`CtEntry::state`] bits, shared by both entries of a connection.
pub mod ct_state {
    /// The entry is the reply direction of its connection.
    pub const REPLY: u8 = 1 << 0;
    /// A packet came back: the connection is established (TCP) or answered.
    pub const SEEN_REPLY: u8 = 1 << 1;
    /// A RST, or a FIN from both directions, was seen: the connection is closing.
    pub const CLOSING: u8 = 1 << 2;
    /// This entry's direction sent a FIN (per direction, not shared).
    pub const FIN_SENT: u8 = 1 << 3;
    /// TCP: `tcp_seq_next` holds where this direction's stream is (per direction).
    pub const SEQ_KNOWN: u8 = 1 << 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct CtEntry {
    /// The source address written into matching packets (with `REWRITE_SRC`).
    pub src: IpKey,
    /// The destination address written into matching packets (with `REWRITE_DST`).
    pub dst: IpKey,
    /// The entry of the other direction.
    pub peer: CtKey,
    /// CLOCK_MONOTONIC deadline in ns: the daemon removes a pair once both entries are past it.
    pub expires_ns: u64,
    /// Packets and bytes seen in this direction (updated without atomics: approximate under
    /// concurrent use from several CPUs).
    pub packets: u64,
    pub bytes: u64,
    /// Host-side veth of the container that receives matching packets (0: routed out through
    /// the FIB to an uplink).
    pub ifindex: u32,
    /// The ports written with `src` and `dst` (network order).
    pub src_port: u16,
    pub dst_port: u16,
    /// MAC of the receiving container (when `ifindex` is set).
    pub mac: [u8; 6],
    /// [`ct_action`].
    pub action: u8,
    /// [`ct_state`].
    pub state: u8,
    /// For a routed entry (`ifindex` 0): where the FIB last sent it, so that the packets of an
    /// established connection skip the lookup; re-checked when older than
    /// [`ROUTE_RECHECK_NS`]. `route_ifindex` 0: not known yet.
    pub route_ifindex: u32,
    /// When the route was last looked up, in units of 2^20 ns (about 1 ms), wrapping.
    pub route_checked: u32,
    /// Next hop's MAC, then the egress interface's.
    pub route_dmac: [u8; 6],
    pub route_smac: [u8; 6],
    /// [`route_flags`] of the cached route.
    pub route_flags: u8,
    /// A connection across the overlay: the VXLAN id (24 bits, network order) and the underlay
    /// address of the node at the tunnel's other end (see [`ct_action::TUNNEL`]); zero otherwise.
    pub tunnel_vni: [u8; 3],
    /// TCP: the sequence number after the latest segment of this direction (its sequence number
    /// plus its length, SYN and FIN counting one). 0 before any segment of this direction.
    pub tcp_seq_next: u32,
    pub tunnel_underlay: [u8; 4],
}

/// [`CtEntry::route_flags`].
pub mod route_flags {
    /// The route leaves by a veth uplink: the packet is handed straight to its peer.
    pub const VETH: u8 = 1 << 0;
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 144);

/// How long a connection's cached route is trusted before the FIB is asked again (a route or
/// neighbour change reaches established connections within this time).
pub const ROUTE_RECHECK_NS: u64 = 1_000_000_000;

/// Lifetimes and the masquerade port range, fixed when the datapath is loaded
/// (`global_names::CT_CONFIG`); `bpfnet daemon --ct-timeout-*` and `--nat-ports` set them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct CtConfig {
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    pub icmp_ns: u64,
    /// Source ports (and ICMP identifiers) masquerade picks from, inclusive, host order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Entries of `CONNTRACK` the connections of one endpoint may hold (0: no limit).
    pub endpoint_max: u32,
}

const SECOND: u64 = 1_000_000_000;

impl CtConfig {
    /// Cilium's lifetimes: SYN 60 s, established 6 h, closing 10 s, UDP 60 s, ICMP 30 s. The
    /// ports sit above Linux's default ephemeral range (32768-60999), so a masqueraded
    /// connection never takes the tuple of one the host itself opens.
    pub const DEFAULT: Self = Self {
        tcp_syn_ns: 60 * SECOND,
        tcp_established_ns: 6 * 3600 * SECOND,
        tcp_closing_ns: 10 * SECOND,
        udp_ns: 60 * SECOND,
        icmp_ns: 30 * SECOND,
        nat_port_min: 61_000,
        nat_port_max: 65_535,
        endpoint_max: default_endpoint_max(DEFAULT_CT_ENTRIES),
    };
}

impl Default for CtConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A datagram being fragmented: only its first fragment carries the ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct FragKey {
    pub saddr: IpKey,
    pub daddr: IpKey,
    /// IPv4's identification field (network order), widened, or the identification of IPv6's
    /// fragment header (network order).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversing_swaps_both_sides() {
        let k = CtKey {
            saddr: IpKey::from_ipv4_octets([10, 0, 0, 2]),
            daddr: IpKey::from_ipv4_octets([192, 0, 2, 7]),
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let r = k.reversed();
        assert_eq!((r.saddr, r.daddr, r.sport, r.dport), (k.daddr, k.saddr, k.dport, k.sport));
        assert_eq!(r.reversed(), k);
    }
}
