//! Header layouts, field offsets and bounds-checked access to packet bytes (direct packet access,
//! TC and XDP alike).
use crate::packet::Packet;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}
pub const ETH_HDR_LEN: usize = core::mem::size_of::<EthHdr>();

/// ARP for Ethernet/IPv4 (RFC 826). Addresses are byte arrays so the struct has no padding.
#[repr(C)]
pub struct ArpHdr {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The fixed part of an IPv4 header.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The IPv6 header (RFC 8200). Addresses are four words in wire order, as [`datapath_common::IpKey`]
/// holds them, so a key is built with four word copies.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}
pub const IPV6_HDR_LEN: usize = core::mem::size_of::<Ipv6Hdr>();
pub const IPPROTO_ICMPV6: u8 = 58;
/// Offsets inside the IPv6 header.
pub const IPV6_HOP_LIMIT_OFF: usize = 7;
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// IPv6 extension headers that may stand before the upper-layer header (RFC 8200 4.1).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
/// How many extension headers are walked; a packet with more is not looked into.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;

/// The upper-layer protocol of the IPv6 packet whose header starts at `ip_off` (next header
/// `next`) and where its header starts, past hop-by-hop, routing, destination options and
/// fragment headers: `Some((IPV6_FRAGMENT, _))` for a fragment after the first (no upper-layer
/// header in it), `None` for a chain longer than [`IPV6_MAX_EXTENSION_HEADERS`], cut short, or
/// with two fragment headers.
#[inline(always)]
pub fn ipv6_upper_layer(ctx: &impl Packet, ip_off: usize, next: u8) -> Option<(u8, usize)> {
    let upper = ipv6_tracked_upper_layer(ctx, ip_off, next)?;
    Some(if upper.later { (IPV6_FRAGMENT, upper.off - 8) } else { (upper.proto, upper.off) })
}

/// Where the upper layer of an IPv6 packet connection tracking follows lies (see
/// [`ipv6_tracked_upper_layer`]).
#[derive(Clone, Copy)]
pub struct Ipv6Upper {
    /// The upper-layer protocol (a later fragment's as its fragment header names it).
    pub proto: u8,
    /// Where its header starts (in a later fragment: where the fragment's data starts).
    pub off: usize,
    /// The fragment header's identification (wire order), for a fragment of a datagram that
    /// has others (an atomic fragment, first and last, is a whole datagram: `None`).
    pub fragment_id: Option<u32>,
    /// A fragment after the first: no upper-layer header in it.
    pub later: bool,
}

/// As [`ipv6_upper_layer`], for connection tracking, which follows fragments: the first one's
/// ports serve the later ones (see `conntrack::parse_v6`). `None` also for a second fragment
/// header.
#[inline(always)]
pub fn ipv6_tracked_upper_layer(ctx: &impl Packet, ip_off: usize, mut next: u8) -> Option<Ipv6Upper> {
    let mut off = ip_off + IPV6_HDR_LEN;
    let mut fragment_id = None;
    let mut fragmented = false;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                let [following, len]: [u8; 2] = ctx.load(off).ok()?;
                next = following;
                off += (len as usize + 1) * 8;
            }
            IPV6_FRAGMENT if fragmented => return None,
            IPV6_FRAGMENT => {
                // Next header, reserved, offset (13 bits) and flags (M: more fragments), id.
                let h: [u8; 8] = ctx.load(off).ok()?;
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
                off += 8;
                fragmented = true;
                if offset_flags & !0x7 != 0 {
                    return Some(Ipv6Upper { proto: h[0], off, fragment_id: Some(id), later: true });
                }
                if offset_flags & 1 != 0 {
                    fragment_id = Some(id);
                }
                next = h[0];
            }
            upper => return Some(Ipv6Upper { proto: upper, off, fragment_id, later: false }),
        }
    }
    None
}

/// Where the IPv4 header starts (after an untagged Ethernet header) and its fields' offsets.
pub const IP_OFF: usize = ETH_HDR_LEN;
pub const IP_TTL_OFF: usize = 8;
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
/// `frag_off` bits (host order): more fragments follow; the fragment's offset.
pub const IPV4_MF: u16 = 0x2000;
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Offsets inside the L4 headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
pub const ICMP_ID_OFF: usize = 4;
/// An ICMP error quotes the offending packet's IP header after its own 8 bytes.
pub const ICMP_ERROR_QUOTE_OFF: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The first 16 bytes of a TCP header: what connection tracking reads, in one load.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHead {
    /// Source and destination port, network order.
    pub ports: [u16; 2],
    /// Network order.
    pub seq: u32,
    pub ack: u32,
    /// Header length in 32-bit words, in the high nibble.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
}

impl TcpHead {
    /// The sequence number after this segment (host order): its own, plus its payload (the IP
    /// payload of `l4_len` bytes after the TCP header), plus one for a SYN and one for a FIN.
    #[inline(always)]
    pub fn seq_end(&self, l4_len: u32) -> u32 {
        let header = ((self.doff >> 4) as u32) * 4;
        let flags = (self.flags & TCP_SYN != 0) as u32 + (self.flags & TCP_FIN != 0) as u32;
        u32::from_be(self.seq).wrapping_add(l4_len.saturating_sub(header)).wrapping_add(flags)
    }
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// A pointer to a `T` at `offset` in the packet, or `None` if the packet is too short.
///
/// For a 1-byte `T` the end of the access is kept opaque: LLVM turns `p + 1 > end` into
/// `p >= end`, from which the verifier learns no range for `p` (at a variable offset, XDP's
/// loads, the access is then refused).
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Option<*mut T> {
    let (start, end) = ctx.bounds();
    let p = start + offset;
    let mut last = p + core::mem::size_of::<T>();
    if core::mem::size_of::<T>() == 1 {
        last = core::hint::black_box(last);
    }
    (last <= end).then_some(p as *mut T)
}

/// Writes a MAC address into packet memory as one 4-byte and one 2-byte store (a `[u8; 6]`
/// assignment compiles to a call into a byte-copy subprogram).
///
/// # Safety
/// `dst` must point at 6 writable bytes inside the packet (bounds-checked by the caller).
#[inline(always)]
pub unsafe fn write_mac(dst: *mut [u8; 6], mac: &[u8; 6]) {
    let d = dst as *mut u8;
    unsafe {
        (d as *mut u32).write_unaligned(u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]));
        (d.add(4) as *mut u16).write_unaligned(u16::from_ne_bytes([mac[4], mac[5]]));
    }
}

/// Reads a `T` at `offset` in the packet by direct packet access (no helper call).
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &impl Packet, offset: usize) -> Result<T, i64> {
    let p = ptr_at::<T>(ctx, offset).ok_or(-1i64)?;
    // SAFETY: bounds-checked by `ptr_at`.
    Ok(unsafe { p.read_unaligned() })
}

/// Writes a `T` at `offset` in the packet by direct packet access (no helper call). Checksums
/// are the caller's (see `checksum`).
#[inline(always)]
pub fn write_at<T: Copy>(ctx: &impl Packet, offset: usize, value: T) -> Result<(), i64> {
    let p = ptr_at::<T>(ctx, offset).ok_or(-1i64)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe { p.write_unaligned(value) };
    Ok(())
}
