//! Refusing a new connection to a service without backends, as kube-proxy's REJECT does: a TCP
//! SYN is answered with a reset, a UDP datagram with ICMP port unreachable, both built in place
//! from the packet and sent back out of the interface it came in by (IPv6: a reset, or ICMPv6
//! port unreachable). The client learns at once (ECONNREFUSED) instead of retrying into a
//! silent drop.
use aya_ebpf::{helpers::bpf_redirect, macros::map, maps::PerCpuArray, programs::TcContext};
use datapath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    Counter,
};

use crate::{
    checksum::{fold, sum16},
    conntrack::Flow,
    counters::{count, drop_packet},
    headers::{ICMP_DEST_UNREACH, IPPROTO_ICMPV6, IPV6_HDR_LEN, IP_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const IPV4_HDR: usize = 20;
const TCP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const ICMP_HDR: usize = 8;
const L4_OFF: usize = IP_OFF + IPV4_HDR;
const ICMP_PORT_UNREACH: u8 = 3;
const TTL: u8 = 64;

/// Answers the first packet of `flow` with a refusal, back where it came from.
#[inline(always)]
pub fn refuse(ctx: &TcContext, flow: &Flow) -> i32 {
    let built = match flow.key.proto {
        IPPROTO_TCP => tcp_reset(ctx, flow),
        IPPROTO_UDP => port_unreachable(ctx, flow),
        _ => None,
    };
    send_back(ctx, built)
}

/// The refusal built in place (`Some`) goes back out of the interface the packet came in by.
#[inline(always)]
fn send_back(ctx: &TcContext, built: Option<()>) -> i32 {
    if built.is_none() || swap_macs(ctx).is_none() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    count(ctx, Counter::ServiceRejected);
    // SAFETY: `skb` points at the program's context for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Out of the interface it came in by: into the container, or out of the uplink.
    // SAFETY: helper call with plain integer arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Option<()> {
    let macs: [u8; 12] = ctx.load(0).ok()?;
    let swapped = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
    ctx.store(0, &swapped, 0).ok()
}

/// The original IPv4 header, which must have no options (the answer is built at fixed offsets).
#[inline(always)]
fn original_ip(ctx: &TcContext, flow: &Flow) -> Option<[u8; IPV4_HDR]> {
    if flow.l4_off as usize != L4_OFF || flow.later_fragment {
        return None;
    }
    ctx.load(IP_OFF).ok()
}

/// A fresh IPv4 header from `src` to `dst` (wire order) with its checksum.
#[inline(always)]
fn ip_header(src: [u8; 4], dst: [u8; 4], proto: u8, total_len: u16) -> [u8; IPV4_HDR] {
    let len = total_len.to_be_bytes();
    let mut h = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, TTL, proto, 0, 0, src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let csum = fold(sum16(&h)).to_ne_bytes();
    h[10] = csum[0];
    h[11] = csum[1];
    h
}

/// A reset for a TCP segment (RFC 9293 3.10.7.1): to a segment with ACK, RST from its
/// acknowledgment number; otherwise RST+ACK acknowledging everything it occupied.
#[inline(always)]
fn tcp_reset(ctx: &TcContext, flow: &Flow) -> Option<()> {
    let ip = original_ip(ctx, flow)?;
    let tcp: [u8; TCP_HDR] = ctx.load(L4_OFF).ok()?;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    let header = IPV4_HDR as u32 + ((tcp[12] >> 4) as u32) * 4;
    let flags = tcp[13];
    let occupied = total.saturating_sub(header) + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let (rst_seq, rst_ack, rst_flags) =
        if flags & TCP_ACK != 0 { (ack, 0, TCP_RST) } else { (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK) };
    let (src, dst) = ([ip[16], ip[17], ip[18], ip[19]], [ip[12], ip[13], ip[14], ip[15]]);
    let s = rst_seq.to_be_bytes();
    let a = rst_ack.to_be_bytes();
    let mut rst = [
        tcp[2], tcp[3], tcp[0], tcp[1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3], 0x50, rst_flags, 0, 0, 0, 0, 0, 0,
    ];
    let pseudo = [src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, IPPROTO_TCP, 0, TCP_HDR as u8];
    let csum = fold(sum16(&pseudo) + sum16(&rst)).to_ne_bytes();
    rst[16] = csum[0];
    rst[17] = csum[1];
    resize(ctx, L4_OFF + TCP_HDR)?;
    ctx.store(IP_OFF, &ip_header(src, dst, IPPROTO_TCP, (IPV4_HDR + TCP_HDR) as u16), 0).ok()?;
    ctx.store(L4_OFF, &rst, 0).ok()
}

/// ICMP port unreachable for a UDP datagram, quoting its IP header and the first 8 bytes of
/// its payload (the UDP header), as RFC 792 asks.
#[inline(always)]
fn port_unreachable(ctx: &TcContext, flow: &Flow) -> Option<()> {
    let ip = original_ip(ctx, flow)?;
    let udp: [u8; UDP_HDR] = ctx.load(L4_OFF).ok()?;
    let (src, dst) = ([ip[16], ip[17], ip[18], ip[19]], [ip[12], ip[13], ip[14], ip[15]]);
    let mut icmp = [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let csum = fold(sum16(&icmp) + sum16(&ip) + sum16(&udp)).to_ne_bytes();
    icmp[2] = csum[0];
    icmp[3] = csum[1];
    let quote_off = L4_OFF + ICMP_HDR;
    resize(ctx, quote_off + IPV4_HDR + UDP_HDR)?;
    let total = (IPV4_HDR + ICMP_HDR + IPV4_HDR + UDP_HDR) as u16;
    ctx.store(IP_OFF, &ip_header(src, dst, IPPROTO_ICMP, total), 0).ok()?;
    ctx.store(L4_OFF, &icmp, 0).ok()?;
    ctx.store(quote_off, &ip, 0).ok()?;
    ctx.store(quote_off + IPV4_HDR, &udp, 0).ok()
}

const L4_OFF6: usize = IP_OFF + IPV6_HDR_LEN;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
/// Where an IPv6 refusal is built in [`REFUSAL6`]: a reset's original headers at 0, the answer
/// (IPv6 header and L4) from [`ANSWER`]. An ICMPv6 error's quote is loaded straight into its
/// place in the answer.
const ANSWER: usize = 64;
const RESET6_LEN: usize = IPV6_HDR_LEN + TCP_HDR;
const QUOTE6_LEN: usize = IPV6_HDR_LEN + UDP_HDR;
const UNREACH6_LEN: usize = IPV6_HDR_LEN + ICMP_HDR + QUOTE6_LEN;
const SCRATCH6_LEN: usize = ANSWER + UNREACH6_LEN;

/// Per-CPU room where an IPv6 refusal is built: its headers do not fit on the stack beside the
/// uplink program's frame.
#[map(name = "REFUSAL6")]
static REFUSAL6: PerCpuArray<[u8; SCRATCH6_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The packet's first `LEN` bytes from its IPv6 header into `b` at `at` (`None`: it is
/// shorter). The helper itself, with a constant length: `load_bytes` would clamp it.
#[inline(always)]
fn load_headers<const LEN: usize>(ctx: &TcContext, b: &mut [u8; SCRATCH6_LEN], at: usize) -> Option<()> {
    if at + LEN > SCRATCH6_LEN {
        return None;
    }
    // SAFETY: `at + LEN` is within `b` (checked above).
    let r = unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb as *const _, IP_OFF as u32, b.as_mut_ptr().add(at).cast(), LEN as u32) };
    (r == 0).then_some(())
}

/// The one's-complement sum of `b[at..at + LEN]` (`LEN` a multiple of 4), by the kernel's
/// `bpf_csum_diff`: byte loops would spill every byte to the stack.
#[inline(always)]
fn sum_of<const LEN: usize>(b: &mut [u8; SCRATCH6_LEN], at: usize) -> u64 {
    if at + LEN > SCRATCH6_LEN {
        return 0;
    }
    // SAFETY: `at + LEN` is within `b` (checked above); nothing is written.
    let sum = unsafe { aya_ebpf::helpers::bpf_csum_diff(core::ptr::null_mut(), 0, b.as_mut_ptr().add(at).cast(), LEN as u32, 0) };
    sum as u32 as u64
}

/// Writes the answer's IPv6 header at [`ANSWER`]: `len` bytes of `proto`, from `src` to `dst`
/// (offsets in `b` of the original's addresses, swapped); returns the sum of its pseudo-header
/// (RFC 8200 8.1).
#[inline(always)]
fn answer_header_v6(b: &mut [u8; SCRATCH6_LEN], src: usize, dst: usize, proto: u8, len: u16) -> u64 {
    let l = len.to_be_bytes();
    let head = [0x60, 0, 0, 0, l[0], l[1], proto, TTL];
    if src + 16 > SCRATCH6_LEN || dst + 16 > SCRATCH6_LEN {
        return 0;
    }
    // SAFETY: all within `b` (checked above); the ranges do not overlap the answer's header.
    unsafe {
        let p = b.as_mut_ptr();
        core::ptr::copy_nonoverlapping(head.as_ptr(), p.add(ANSWER), 8);
        core::ptr::copy_nonoverlapping(p.add(src), p.add(ANSWER + 8), 16);
        core::ptr::copy_nonoverlapping(p.add(dst), p.add(ANSWER + 24), 16);
    }
    sum_of::<32>(b, ANSWER + 8) + sum16(&[0, 0, l[0], l[1], 0, 0, 0, proto]) as u64
}

/// `sum` folded to the 16-bit one's-complement checksum, stored at `b[at]`.
#[inline(always)]
fn set_checksum(b: &mut [u8; SCRATCH6_LEN], at: usize, sum: u64) {
    // Down to 32 bits; `fold` takes it on to 16.
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let csum = fold(sum as u32).to_ne_bytes();
    if at + 2 <= SCRATCH6_LEN {
        b[at] = csum[0];
        b[at + 1] = csum[1];
    }
}

/// As [`refuse`] for an IPv6 flow (a first packet right behind the IPv6 header: one behind
/// extension headers is dropped instead), built in [`REFUSAL6`]. A function of its own in the
/// object (not inlined), which IPv4's programs do not carry.
#[inline(never)]
pub fn refuse_v6(ctx: &TcContext, flow: &Flow) -> i32 {
    let built = if flow.l4_off as usize != L4_OFF6 || flow.later_fragment {
        None
    } else {
        match flow.key.proto {
            IPPROTO_TCP => tcp_reset_v6(ctx),
            IPPROTO_UDP => port_unreachable_v6(ctx),
            _ => None,
        }
    };
    send_back(ctx, built)
}

/// As [`tcp_reset`] over IPv6.
#[inline(always)]
fn tcp_reset_v6(ctx: &TcContext) -> Option<()> {
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let b = unsafe { &mut *REFUSAL6.get_ptr_mut(0)? };
    load_headers::<RESET6_LEN>(ctx, b, 0)?;
    let tcp = IPV6_HDR_LEN;
    let payload = u16::from_be_bytes([b[4], b[5]]) as u32;
    let header = ((b[tcp + 12] >> 4) as u32) * 4;
    let flags = b[tcp + 13];
    let occupied = payload.saturating_sub(header) + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    let seq = u32::from_be_bytes([b[tcp + 4], b[tcp + 5], b[tcp + 6], b[tcp + 7]]);
    let ack = u32::from_be_bytes([b[tcp + 8], b[tcp + 9], b[tcp + 10], b[tcp + 11]]);
    let (rst_seq, rst_ack, rst_flags) =
        if flags & TCP_ACK != 0 { (ack, 0, TCP_RST) } else { (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK) };
    let s = rst_seq.to_be_bytes();
    let a = rst_ack.to_be_bytes();
    let rst = [
        b[tcp + 2], b[tcp + 3], b[tcp], b[tcp + 1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3], 0x50, rst_flags, 0, 0, 0, 0, 0, 0,
    ];
    let at = ANSWER + IPV6_HDR_LEN;
    // SAFETY: `at + TCP_HDR` is within `b` (constants).
    unsafe { core::ptr::copy_nonoverlapping(rst.as_ptr(), b.as_mut_ptr().add(at), TCP_HDR) };
    let pseudo = answer_header_v6(b, 24, 8, IPPROTO_TCP, TCP_HDR as u16);
    let sum = pseudo + sum_of::<TCP_HDR>(b, at);
    set_checksum(b, at + 16, sum);
    resize(ctx, IP_OFF + RESET6_LEN)?;
    // SAFETY: in bounds of the slot (`ANSWER + RESET6_LEN` <= its length).
    let answer = unsafe { &*(b.as_ptr().add(ANSWER) as *const [u8; RESET6_LEN]) };
    ctx.store(IP_OFF, answer, 0).ok()
}

/// ICMPv6 port unreachable (RFC 4443 3.1) for a UDP datagram, quoting its IPv6 header and UDP
/// header: what the client's stack needs to find its socket.
#[inline(always)]
fn port_unreachable_v6(ctx: &TcContext) -> Option<()> {
    // SAFETY: as in `tcp_reset_v6`.
    let b = unsafe { &mut *REFUSAL6.get_ptr_mut(0)? };
    let icmp = ANSWER + IPV6_HDR_LEN;
    let quote = icmp + ICMP_HDR;
    load_headers::<QUOTE6_LEN>(ctx, b, quote)?;
    let head = [ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    // SAFETY: `icmp + ICMP_HDR` is within `b` (constants).
    unsafe { core::ptr::copy_nonoverlapping(head.as_ptr(), b.as_mut_ptr().add(icmp), ICMP_HDR) };
    let pseudo = answer_header_v6(b, quote + 24, quote + 8, IPPROTO_ICMPV6, (UNREACH6_LEN - IPV6_HDR_LEN) as u16);
    let sum = pseudo + sum_of::<{ ICMP_HDR + QUOTE6_LEN }>(b, icmp);
    set_checksum(b, icmp + 2, sum);
    resize(ctx, IP_OFF + UNREACH6_LEN)?;
    // SAFETY: in bounds of the slot (`ANSWER + UNREACH6_LEN` is its length).
    let answer = unsafe { &*(b.as_ptr().add(ANSWER) as *const [u8; UNREACH6_LEN]) };
    ctx.store(IP_OFF, answer, 0).ok()
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Option<()> {
    // SAFETY: helper on the program's own skb; packet pointers are not used after it.
    let r = unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb as *mut _, len as u32, 0) };
    (r == 0).then_some(())
}
