//! ICMPv6 errors about masqueraded connections (RFC 4443: destination unreachable, packet too
//! big, time exceeded, parameter problem). An error from outside quotes the packet as it left
//! (from the uplink's address and port); translated back, the container's stack matches it to
//! its own connection: path-MTU discovery through NAT66 needs "packet too big" to arrive.
use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    ct_action, CtKey, IpKey,
};

use crate::{
    checksum::{decrement_hop_limit, set_ipv6_addr},
    conntrack,
    headers::{
        ICMPV6_ECHO_REQUEST, ICMP_CSUM_OFF, ICMP_ERROR_QUOTE_OFF, ICMP_ID_OFF, IPPROTO_ICMPV6, IPV6_DADDR_OFF, IPV6_HDR_LEN,
        IPV6_SADDR_OFF, IP_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    nat::{self, Translation6},
};

/// Offset of the next-header field in the IPv6 header.
const NEXT_HEADER_OFF: usize = 6;

/// ICMPv6 error types (1-4; informational messages are 128 and up).
#[inline(always)]
fn is_error(icmp_type: u8) -> bool {
    (1..=4).contains(&icmp_type)
}

/// An ICMPv6 error arriving from outside about a masqueraded packet of a container: its
/// destination and the quoted source address and port become the container's again, every
/// checksum that covers them following (the error's, over its pseudo-header and the quote; the
/// quoted packet's own, where the quote holds it). The translation to deliver it with, or `None`
/// when it is about no such connection (then the host's, untouched but for a hop-limit
/// decrement when the connection was found and the error was about to expire). Errors from
/// routers carry no extension headers before the ICMPv6 header, nor do quotes of what the
/// datapath sent.
#[inline(always)]
pub fn translate_error_from_uplink(ctx: &TcContext) -> Option<&'static Translation6> {
    let icmp = IP_OFF + IPV6_HDR_LEN;
    if ctx.load::<u8>(IP_OFF + NEXT_HEADER_OFF).ok()? != IPPROTO_ICMPV6 || !is_error(ctx.load::<u8>(icmp).ok()?) {
        return None;
    }
    let quote = icmp + ICMP_ERROR_QUOTE_OFF;
    let proto: u8 = ctx.load(quote + NEXT_HEADER_OFF).ok()?;
    let l4 = quote + IPV6_HDR_LEN;
    let head: [u16; 4] = ctx.load(l4).ok()?;
    // The quoted source port (an echo request's identifier) and the quoted checksum's place.
    let (sport, dport, sport_off, csum_off) = match proto {
        IPPROTO_TCP => (head[0], head[1], l4, l4 + TCP_CSUM_OFF),
        IPPROTO_UDP => (head[0], head[1], l4, l4 + UDP_CSUM_OFF),
        IPPROTO_ICMPV6 if head[0].to_ne_bytes()[0] == ICMPV6_ECHO_REQUEST => (head[2], 0, l4 + ICMP_ID_OFF, l4 + ICMP_CSUM_OFF),
        _ => return None,
    };
    // The quoted packet left; its answers' tuple is its own reversed.
    let key = CtKey {
        saddr: IpKey { addr: ctx.load(quote + IPV6_DADDR_OFF).ok()? },
        daddr: IpKey { addr: ctx.load(quote + IPV6_SADDR_OFF).ok()? },
        sport: dport,
        dport: sport,
        proto,
        _pad: [0; 3],
    };
    let t = nat::translation6_of(conntrack::get(&key)?)?;
    if t.ifindex == 0 || t.action & ct_action::REWRITE_DST == 0 || t.action & ct_action::TUNNEL != 0 || !decrement_hop_limit(ctx) {
        return None;
    }
    set_ipv6_addr(ctx, IP_OFF + IPV6_DADDR_OFF, t.dst, IPPROTO_ICMPV6, Some(icmp)).ok()?;
    let error_csum = icmp + ICMP_CSUM_OFF;
    // A quote cut before its checksum: only the error's own checksum follows.
    let old_inner: Option<u16> = ctx.load(csum_off).ok();
    for (i, new) in t.dst.into_iter().enumerate() {
        let off = quote + IPV6_SADDR_OFF + 4 * i;
        let old: u32 = ctx.load(off).ok()?;
        if old != new {
            ctx.store(off, &new, 0).ok()?;
            ctx.l4_csum_replace(error_csum, old as u64, new as u64, 4).ok()?;
            if old_inner.is_some() {
                ctx.l3_csum_replace(csum_off, old as u64, new as u64, 4).ok()?;
            }
        }
    }
    let old_port: u16 = ctx.load(sport_off).ok()?;
    ctx.store(sport_off, &t.dst_port, 0).ok()?;
    ctx.l4_csum_replace(error_csum, old_port as u64, t.dst_port as u64, 2).ok()?;
    if let Some(old_inner) = old_inner {
        ctx.l3_csum_replace(csum_off, old_port as u64, t.dst_port as u64, 2).ok()?;
        let new_inner: u16 = ctx.load(csum_off).ok()?;
        ctx.l4_csum_replace(error_csum, old_inner as u64, new_inner as u64, 2).ok()?;
    }
    Some(t)
}
