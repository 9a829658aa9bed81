//! Refusing a new connection to a service without backends, as kube-proxy's REJECT does: a TCP
//! SYN is answered with a reset, a UDP datagram with ICMP port unreachable, both built in place
//! from the packet and sent back out of the interface it came in by. The client learns at once
//! (ECONNREFUSED) instead of retrying into a silent drop.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use datapath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    Counter,
};

use crate::{
    checksum::{fold, sum16},
    conntrack::Flow,
    counters::{count, drop_packet},
    headers::{ICMP_DEST_UNREACH, IP_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
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

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Option<()> {
    // SAFETY: helper on the program's own skb; packet pointers are not used after it.
    let r = unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb as *mut _, len as u32, 0) };
    (r == 0).then_some(())
}
