//! ICMPv6 errors about translated connections (RFC 4443: destination unreachable, packet too
//! big, time exceeded, parameter problem), both ways, as `nat` translates ICMP's:
//! - from outside, about a masqueraded packet of a container: the error quotes the packet as it
//!   left (from the uplink's address and port); translated back, the container's stack matches
//!   it to its own connection (path-MTU discovery through NAT66 needs "packet too big");
//! - from a container, about a packet it received through NAT66 or a published port ("port
//!   unreachable" for a datagram nobody listens for): it leaves from the address the other side
//!   talks to, quoting what that side sent.
//!
//! Errors carry no extension headers before the ICMPv6 header here, nor do quotes of what the
//! datapath translated (routers send them so; a container's own stack too).
use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    ct_action, Counter, CtKey, IpKey,
};

use crate::{
    checksum::{decrement_hop_limit, set_ipv6_addr},
    conntrack,
    counters::{drop_packet, to_host},
    headers::{
        ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMP_CSUM_OFF, ICMP_ERROR_QUOTE_OFF, ICMP_ID_OFF, IPPROTO_ICMPV6, IPV6_DADDR_OFF,
        IPV6_HDR_LEN, IPV6_SADDR_OFF, IP_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    nat::{self, Translation6},
    route,
};

/// Offset of the next-header field in the IPv6 header.
const NEXT_HEADER_OFF: usize = 6;
/// Where the error's ICMPv6 header starts.
const ICMP: usize = IP_OFF + IPV6_HDR_LEN;
/// Where the quoted packet's IPv6 header starts.
const QUOTE: usize = ICMP + ICMP_ERROR_QUOTE_OFF;

/// ICMPv6 error types (1-4; informational messages are 128 and up).
#[inline(always)]
fn is_error(icmp_type: u8) -> bool {
    (1..=4).contains(&icmp_type)
}

/// The packet an ICMPv6 error quotes, as far as translating it needs.
struct Quote {
    /// The tuple of the quoted connection's other direction (how its answers travel).
    reversed: CtKey,
    /// Where the quoted ports sit (an echo's identifier: the source of a request, the
    /// destination of a reply) and the quoted checksum.
    sport_off: usize,
    dport_off: usize,
    csum_off: usize,
}

/// The quote of the ICMPv6 error in `ctx`, if it is one about TCP, UDP or echo.
#[inline(always)]
fn quote_of(ctx: &TcContext) -> Option<Quote> {
    if ctx.load::<u8>(IP_OFF + NEXT_HEADER_OFF).ok()? != IPPROTO_ICMPV6 || !is_error(ctx.load::<u8>(ICMP).ok()?) {
        return None;
    }
    if ctx.load::<u8>(QUOTE).ok()? >> 4 != 6 {
        return None;
    }
    let proto: u8 = ctx.load(QUOTE + NEXT_HEADER_OFF).ok()?;
    let l4 = QUOTE + IPV6_HDR_LEN;
    let head: [u16; 4] = ctx.load(l4).ok()?;
    let (sport, dport, sport_off, dport_off, csum_off) = match proto {
        IPPROTO_TCP => (head[0], head[1], l4, l4 + 2, l4 + TCP_CSUM_OFF),
        IPPROTO_UDP => (head[0], head[1], l4, l4 + 2, l4 + UDP_CSUM_OFF),
        IPPROTO_ICMPV6 => {
            let id = l4 + ICMP_ID_OFF;
            match head[0].to_ne_bytes()[0] {
                ICMPV6_ECHO_REQUEST => (head[2], 0, id, id, l4 + ICMP_CSUM_OFF),
                ICMPV6_ECHO_REPLY => (0, head[2], id, id, l4 + ICMP_CSUM_OFF),
                _ => return None,
            }
        }
        _ => return None,
    };
    let reversed = CtKey {
        saddr: IpKey { addr: ctx.load(QUOTE + IPV6_DADDR_OFF).ok()? },
        daddr: IpKey { addr: ctx.load(QUOTE + IPV6_SADDR_OFF).ok()? },
        sport: dport,
        dport: sport,
        proto,
        _pad: [0; 3],
    };
    // An IPv4-mapped address would name IPv4's connections.
    if reversed.saddr.is_ipv4() || reversed.daddr.is_ipv4() {
        return None;
    }
    Some(Quote { reversed, sport_off, dport_off, csum_off })
}

/// Rewrites one side of the quoted packet (`source`, or its destination): its address becomes
/// `addr`, its port `port`; the quoted packet's own checksum (where the quote holds it) and the
/// error's follow (the quote is plain data to the error's checksum).
#[inline(always)]
fn rewrite_quote(ctx: &TcContext, q: &Quote, source: bool, addr: &[u32; 4], port: u16) -> Option<()> {
    let error_csum = ICMP + ICMP_CSUM_OFF;
    let addr_off = QUOTE + if source { IPV6_SADDR_OFF } else { IPV6_DADDR_OFF };
    let port_off = if source { q.sport_off } else { q.dport_off };
    // A quote cut before its checksum: only the error's own checksum follows.
    let old_inner: Option<u16> = ctx.load(q.csum_off).ok();
    for (i, new) in addr.iter().copied().enumerate() {
        let off = addr_off + 4 * i;
        let old: u32 = ctx.load(off).ok()?;
        if old != new {
            ctx.store(off, &new, 0).ok()?;
            ctx.l4_csum_replace(error_csum, old as u64, new as u64, 4).ok()?;
            if old_inner.is_some() {
                ctx.l3_csum_replace(q.csum_off, old as u64, new as u64, 4).ok()?;
            }
        }
    }
    let old_port: u16 = ctx.load(port_off).ok()?;
    ctx.store(port_off, &port, 0).ok()?;
    ctx.l4_csum_replace(error_csum, old_port as u64, port as u64, 2).ok()?;
    if let Some(old_inner) = old_inner {
        ctx.l3_csum_replace(q.csum_off, old_port as u64, port as u64, 2).ok()?;
        let new_inner: u16 = ctx.load(q.csum_off).ok()?;
        ctx.l4_csum_replace(error_csum, old_inner as u64, new_inner as u64, 2).ok()?;
    }
    Some(())
}

/// An ICMPv6 error arriving from outside about a masqueraded packet of a container: its
/// destination and the quoted source address and port become the container's again. The
/// translation to deliver it with, or `None` when it is about no such connection (then the
/// host's, untouched but for a hop-limit decrement when the connection was found and the error
/// was about to expire).
#[inline(always)]
pub fn translate_error_from_uplink(ctx: &TcContext) -> Option<&'static Translation6> {
    let q = quote_of(ctx)?;
    // The quoted packet left; its answers' tuple is its own reversed.
    let t = nat::translation6_of(conntrack::get(&q.reversed)?)?;
    // Only the connections packets from outside may take (`nat::from_outside`): not a hairpin
    // connection between containers, whose tuple a forged quote could name.
    if !nat::from_outside(&q.reversed.saddr, t) || t.action & ct_action::TUNNEL != 0 || !decrement_hop_limit(ctx) {
        return None;
    }
    set_ipv6_addr(ctx, IP_OFF + IPV6_DADDR_OFF, t.dst, IPPROTO_ICMPV6, Some(ICMP)).ok()?;
    rewrite_quote(ctx, &q, true, &t.dst, t.dst_port)?;
    Some(t)
}

/// An ICMPv6 error a container sends about a packet it received through NAT66 or a published
/// port (the quote's tuple reversed is the container's own direction of that connection, whose
/// entry says how it leaves): it leaves the same way, from the address the other side talks to
/// and quoting what that side sent. Only about the sender's own connections (its source was
/// checked) and only to whoever sent the quoted packet; anything else is the host's.
#[inline(always)]
pub fn error_from_container(ctx: &TcContext) -> i32 {
    let Some(q) = quote_of(ctx) else { return to_host(ctx) };
    let (Ok(src), Ok(dst)) = (ctx.load::<[u32; 4]>(IP_OFF + IPV6_SADDR_OFF), ctx.load::<[u32; 4]>(IP_OFF + IPV6_DADDR_OFF)) else {
        return to_host(ctx);
    };
    if q.reversed.saddr.addr != src || q.reversed.daddr.addr != dst {
        return to_host(ctx);
    }
    let Some(entry) = conntrack::get(&q.reversed) else { return to_host(ctx) };
    let Some(t) = nat::translation6_of(entry) else { return to_host(ctx) };
    // Only a connection whose packets from the container are routed out with a new source.
    let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
    if t.ifindex != 0 || t.action & both != ct_action::REWRITE_SRC {
        return to_host(ctx);
    }
    // The connection's cached route, read only; else the FIB's, which must leave by an uplink.
    let route = match route::cached(entry, conntrack::now_ns()) {
        Some(route) => route,
        None => {
            let Some(mut route) = route::lookup_addrs_v6(ctx, &src, &dst, IPPROTO_ICMPV6) else { return to_host(ctx) };
            if route::uplink(&mut route).is_none() {
                return to_host(ctx);
            }
            route
        }
    };
    if !decrement_hop_limit(ctx) {
        return to_host(ctx);
    }
    let translated = set_ipv6_addr(ctx, IP_OFF + IPV6_SADDR_OFF, t.src, IPPROTO_ICMPV6, Some(ICMP)).is_ok()
        && rewrite_quote(ctx, &q, false, &t.src, t.src_port).is_some();
    if !translated {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    nat::leave(ctx, &route, Counter::NatIcmpError)
}
