//! Rewriting addresses and ports in place with the kernel's checksum helpers (at TC; XDP's
//! stand-ins are `packet`'s).
//!
//! The helpers, not hand-written arithmetic, because they know the skb's checksum state: a
//! container's TCP/UDP packet on a veth is usually CHECKSUM_PARTIAL (the L4 field holds only the
//! pseudo-header sum, finished by the device that sends it), a packet from a NIC may carry
//! CHECKSUM_COMPLETE; `bpf_l4_csum_replace` keeps each of them right. Headers built from
//! scratch (the refusals in `reject`) are summed here in full: `sum16` and `fold`.
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use datapath_common::conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    headers::{read_at, write_at, ICMP_CSUM_OFF, IPPROTO_ICMPV6, IPV6_HOP_LIMIT_OFF, IP_CSUM_OFF, IP_OFF, IP_TTL_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
    packet::Packet,
};

/// Where a protocol's L4 checksum sits and the flags its updates need: UDP's 0 means "no
/// checksum" and must stay 0 (BPF_F_MARK_MANGLED_0); ICMP's has no pseudo-header, ICMPv6's has.
#[inline(always)]
fn l4_csum(proto: u8) -> Option<(usize, u64, bool)> {
    match proto {
        IPPROTO_TCP => Some((TCP_CSUM_OFF, 0, true)),
        IPPROTO_UDP => Some((UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64, true)),
        IPPROTO_ICMP => Some((ICMP_CSUM_OFF, 0, false)),
        // ICMPv6's checksum covers a pseudo-header, as TCP's and UDP's.
        IPPROTO_ICMPV6 => Some((ICMP_CSUM_OFF, 0, true)),
        _ => None,
    }
}

/// Replaces the IPv4 address at `addr_off` (source or destination) with `new` (wire order),
/// updating the IP checksum and, unless the packet is a later fragment (`l4_off` is `None`), the
/// L4 checksum whose pseudo-header covers it. `addr_off` must be a constant offset: the address
/// is read and written by direct packet access (cheaper than the load/store helpers), which the
/// verifier only follows at constant offsets; fields at variable offsets (ports after an IP
/// header of any length) use the helpers.
#[inline(always)]
pub fn set_ipv4_addr(ctx: &impl Packet, addr_off: usize, new: u32, proto: u8, l4_off: Option<usize>) -> Result<(), i64> {
    let old: u32 = read_at(ctx, addr_off)?;
    if old == new {
        return Ok(());
    }
    if let (Some(l4_off), Some((csum_off, flags, true))) = (l4_off, l4_csum(proto)) {
        ctx.l4_csum_replace(l4_off + csum_off, old as u64, new as u64, flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
    }
    ctx.l3_csum_replace(IP_OFF + IP_CSUM_OFF, old as u64, new as u64, 4)?;
    write_at(ctx, addr_off, new)
}

/// As [`set_ipv4_addr`] for the IPv6 address (four wire-order words) at the constant
/// `addr_off`: IPv6 has no header checksum, so only the L4 checksum (its pseudo-header covers
/// the address, for ICMPv6 too) follows, word by word.
#[inline(always)]
pub fn set_ipv6_addr(ctx: &impl Packet, addr_off: usize, new: [u32; 4], proto: u8, l4_off: Option<usize>) -> Result<(), i64> {
    // Word by word: a 16-byte copy would compile to a byte loop.
    for (i, new) in new.into_iter().enumerate() {
        let old: u32 = read_at(ctx, addr_off + 4 * i)?;
        if old == new {
            continue;
        }
        if let (Some(l4_off), Some((csum_off, flags, true))) = (l4_off, l4_csum(proto)) {
            ctx.l4_csum_replace(l4_off + csum_off, old as u64, new as u64, flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
        }
        write_at(ctx, addr_off + 4 * i, new)?;
    }
    Ok(())
}

/// Replaces the 16-bit L4 field at `field_off` (a port, or an ICMP echo identifier) with `new`
/// (wire order), updating the L4 checksum.
#[inline(always)]
pub fn set_l4_u16(ctx: &impl Packet, field_off: usize, new: u16, proto: u8, l4_off: usize) -> Result<(), i64> {
    let old: u16 = ctx.load(field_off)?;
    if old == new {
        return Ok(());
    }
    if let Some((csum_off, flags, _)) = l4_csum(proto) {
        ctx.l4_csum_replace(l4_off + csum_off, old as u64, new as u64, flags | 2)?;
    }
    ctx.store(field_off, &new)
}

/// Decrements the TTL of a packet the datapath routes, as a router does. `false` when it would
/// reach zero: the caller hands the packet to the host stack, which answers "time exceeded".
#[inline(always)]
pub fn decrement_ttl(ctx: &impl Packet) -> bool {
    // The TTL shares its checksummed 16-bit word with the protocol.
    let Ok(old) = read_at::<[u8; 2]>(ctx, IP_OFF + IP_TTL_OFF) else { return false };
    if old[0] <= 1 {
        return false;
    }
    let new = [old[0] - 1, old[1]];
    let (old, new) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
    ctx.l3_csum_replace(IP_OFF + IP_CSUM_OFF, old as u64, new as u64, 2).is_ok()
        && write_at(ctx, IP_OFF + IP_TTL_OFF, new).is_ok()
}

/// As [`decrement_ttl`] for IPv6's hop limit (no header checksum).
#[inline(always)]
pub fn decrement_hop_limit(ctx: &impl Packet) -> bool {
    let Ok(old) = read_at::<u8>(ctx, IP_OFF + IPV6_HOP_LIMIT_OFF) else { return false };
    old > 1 && write_at(ctx, IP_OFF + IPV6_HOP_LIMIT_OFF, old - 1).is_ok()
}

/// For a header built from scratch (no field to update incrementally): the one's-complement
/// sum of `bytes` as 16-bit words in memory order (the checksum comes out in the same order,
/// so it is stored as it is).
#[inline(always)]
pub fn sum16<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The checksum of a [`sum16`] total (of up to 65,536 words).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// For XDP, which has no skb and so no checksum helpers that know its state: a running
/// RFC 1624 update of a checksum, `HC' = ~(~HC + ~m + m')`, over 16-bit words in memory order.
/// Exact only for a checksum the sender completed (a NIC's frames always are; `uplink_xdp`
/// passes on the ones left to offload).
#[derive(Clone, Copy)]
pub struct Incremental(u32);

impl Incremental {
    /// Starts from the checksum field as it is in the packet.
    #[inline(always)]
    pub fn of(check: u16) -> Self {
        Self(!check as u32)
    }

    /// `old` (an address, in memory order) becomes `new`.
    #[inline(always)]
    pub fn replace4(&mut self, old: u32, new: u32) {
        self.replace2(old as u16, new as u16);
        self.replace2((old >> 16) as u16, (new >> 16) as u16);
    }

    /// The 16-bit word `old` (memory order) becomes `new`.
    #[inline(always)]
    pub fn replace2(&mut self, old: u16, new: u16) {
        // At most a few dozen words are added: no overflow of the 32-bit sum.
        self.0 += (!old) as u32 + new as u32;
    }

    /// The checksum to write back.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        fold(self.0)
    }
}

/// The value a sender that leaves the TCP/UDP checksum to the hardware (CHECKSUM_PARTIAL, as a
/// veth with TX checksum offload) puts in the field: the folded pseudo-header sum, not complemented.
#[inline(always)]
pub fn offload_placeholder(saddr: [u8; 4], daddr: [u8; 4], proto: u8, l4_len: u16) -> u16 {
    let len = l4_len.to_be_bytes();
    !fold(sum16(&saddr) + sum16(&daddr) + sum16(&[0, proto]) + sum16(&len))
}
