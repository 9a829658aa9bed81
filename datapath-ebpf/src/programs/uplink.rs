//! The `from_uplink` program (TC ingress of every uplink, behind `xdp_from_uplink`): answers of
//! masqueraded connections and packets of connections to published ports and services are
//! translated and delivered straight into their container, ICMP errors about them likewise; what
//! the guard refuses is dropped and counted; the rest is the host's.

use aya_ebpf::programs::TcContext;
use datapath_common::{ct_action, Counter, PortTarget};

use crate::{
    checksum::{decrement_hop_limit, decrement_ttl},
    conntrack::{self, now_ns, observe, Flow},
    counters::{count, drop_packet},
    guard,
    icmpv6,
    headers::{ETH_P_IP, ETH_P_IPV6, IPV6_SADDR_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF},
    lb::{self, Choice},
    maps::ENDPOINTS,
    overlay,
    nat::{self, apply, deliver, deliver_anywhere, from_outside, host_owns_answer, published_target, published_target_v6, track_published, track_published_v6, translate_icmp_error, Translation},
    reject,
};

/// A packet arriving on an uplink: a reply of a tracked connection, or a packet of a connection
/// to a published port, is translated and delivered straight into its container; an ICMP error
/// about a tracked connection likewise; the rest is the host's.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> i32 {
    // Over Ethernet only (an uplink without an Ethernet header is not supported yet).
    let ether_type = ctx.load::<u16>(12).ok();
    if ether_type == Some(ETH_P_IPV6.to_be()) {
        return from_uplink_v6(ctx);
    }
    if ether_type != Some(ETH_P_IP.to_be()) {
        return count_uplink_to_host(ctx);
    }
    // Another node's overlay traffic, where the datapath does VXLAN itself.
    if overlay::is_vxlan_here(ctx) {
        return match overlay::decapsulate(ctx) {
            Some(tunnel) => overlay::hand_over(ctx, tunnel),
            None => drop_packet(ctx, Counter::DropMalformed),
        };
    }
    let Some(flow) = conntrack::parse(ctx) else { return screened_to_host(ctx) };
    if flow.is_icmp_error() {
        return icmp_error_from_uplink(ctx, &flow);
    }
    let len = ctx.len();
    let Some(tracked) = conntrack::lookup(&flow.key) else {
        if let Some(reason) = guard::uplink_refusal(flow.key.saddr.ipv4_word(), flow.key.daddr.ipv4_word()) {
            return drop_packet(ctx, reason);
        }
        // A VIP is reached from its network and the host only.
        let Some(target) = published_target(ctx, &flow, false).filter(|t| t.network == 0) else {
            return count_uplink_to_host(ctx);
        };
        let action = if target.service != 0 { ct_action::SERVICE } else { ct_action::PUBLISHED };
        return match lb::choose(&target, &flow.key, now_ns()) {
            Some(Choice::Backend(backend)) => publish(ctx, &flow, &backend, action, len),
            Some(Choice::Refuse) => reject::refuse(ctx, &flow),
            None => count_uplink_to_host(ctx),
        };
    };
    // SAFETY: a map value, read before any packet helper runs.
    let translation = Translation::of(unsafe { &*tracked.entry });
    if !from_outside(&flow.key.saddr, &translation) {
        return screened_to_host(ctx);
    }
    if host_owns_answer(ctx, &flow, &translation) {
        return count_uplink_to_host(ctx);
    }
    if !decrement_ttl(ctx) {
        // Untranslated, the host would answer it (a reset): the connection is not the host's.
        return drop_packet(ctx, Counter::DropTtlExpired);
    }
    observe(tracked, &flow, len, now_ns());
    if apply(ctx, &flow, &translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver_anywhere(ctx, &translation, Counter::NatIn)
}

/// An IPv6 packet arriving on an uplink: the answer of a masqueraded connection, a packet of a
/// connection to a port published on an IPv6 address, or an ICMPv6 error about either, is
/// translated and delivered into its container; the rest is screened
/// ([`guard::uplink_refusal_v6`]) and the host's.
#[inline(always)]
fn from_uplink_v6(ctx: &TcContext) -> i32 {
    let Some(flow) = conntrack::parse_v6(ctx) else {
        // An ICMPv6 error (or what is not tracked), screened first as any packet from outside.
        if let Some(reason) = refusal_v6(ctx) {
            return drop_packet(ctx, reason);
        }
        return match icmpv6::translate_error_from_uplink(ctx) {
            Some(translation) => deliver(ctx, translation, Counter::NatIcmpError),
            None => count_uplink_to_host(ctx),
        };
    };
    let Some(tracked) = conntrack::lookup(&flow.key) else {
        // Screened first, as for IPv4: a spoofed or martian source opens no connection either.
        if let Some(reason) = guard::uplink_refusal_v6(flow.key.saddr.addr, flow.key.daddr.addr) {
            return drop_packet(ctx, reason);
        }
        // A new connection to a port (a container's or a service's) published on an IPv6
        // address of the host; a VIP is reached from its network and the host only.
        let Some(target) = published_target_v6(ctx, flow, false).filter(|t| t.network == 0) else {
            return count_uplink_to_host(ctx);
        };
        let action = if target.service != 0 { ct_action::SERVICE } else { ct_action::PUBLISHED };
        return match lb::choose(target, &flow.key, now_ns()) {
            Some(Choice::Backend(backend)) => publish_v6(ctx, flow, &backend, action),
            Some(Choice::Refuse) => reject::refuse_v6(ctx, flow),
            None => count_uplink_to_host(ctx),
        };
    };
    // SAFETY: a map value, read before any packet helper runs.
    let Some(translation) = nat::translation6_of(unsafe { &*tracked.entry }) else { return screened_to_host_v6(ctx) };
    if !from_outside(&flow.key.saddr, translation) {
        return screened_to_host_v6(ctx);
    }
    if host_owns_answer(ctx, flow, translation) {
        return count_uplink_to_host(ctx);
    }
    if !decrement_hop_limit(ctx) {
        return drop_packet(ctx, Counter::DropTtlExpired);
    }
    observe(tracked, flow, ctx.len(), now_ns());
    if apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver_anywhere(ctx, translation, Counter::NatIn)
}

/// A new IPv6 connection from outside to a published port: to the container's (or the
/// service backend's) IPv6 address, keeping the client's (as [`publish`]).
#[inline(always)]
fn publish_v6(ctx: &TcContext, flow: &Flow, target: &PortTarget, action: u8) -> i32 {
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&target.addr) }).copied() else { return screened_to_host_v6(ctx) };
    if !decrement_hop_limit(ctx) {
        return screened_to_host_v6(ctx);
    }
    let translation = match track_published_v6(ctx, flow, target, &server, action, ctx.len()) {
        Some(Ok(translation)) => translation,
        Some(Err(reason)) => return drop_packet(ctx, reason),
        None => return count_uplink_to_host(ctx),
    };
    if apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    // A cluster service's backend may be on another node (the routing mesh).
    deliver_anywhere(ctx, translation, if action == ct_action::SERVICE { Counter::ServiceBalanced } else { Counter::NatIn })
}

/// An IPv6 packet from an uplink that nothing translates: the host's, unless
/// [`guard::uplink_refusal_v6`] refuses it.
#[inline(always)]
fn screened_to_host_v6(ctx: &TcContext) -> i32 {
    if let Some(reason) = refusal_v6(ctx) {
        return drop_packet(ctx, reason);
    }
    count_uplink_to_host(ctx)
}

/// [`guard::uplink_refusal_v6`] of the packet's (outer) addresses.
#[inline(always)]
fn refusal_v6(ctx: &TcContext) -> Option<Counter> {
    let [saddr, daddr] = ctx.load::<[[u32; 4]; 2]>(IP_OFF + IPV6_SADDR_OFF).ok()?;
    guard::uplink_refusal_v6(saddr, daddr)
}

/// A new connection from outside to a published port: to the container, keeping the client's
/// address (no proxy, no source NAT); the answers leave with the host address the client used.
#[inline(always)]
fn publish(ctx: &TcContext, flow: &Flow, target: &PortTarget, action: u8, len: u32) -> i32 {
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&target.addr) }).copied() else { return count_uplink_to_host(ctx) };
    if !decrement_ttl(ctx) {
        return count_uplink_to_host(ctx);
    }
    let translation = match track_published(ctx, flow, target, &server, action, len) {
        Some(Ok(translation)) => translation,
        Some(Err(reason)) => return drop_packet(ctx, reason),
        None => return count_uplink_to_host(ctx),
    };
    if apply(ctx, flow, &translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver_anywhere(ctx, &translation, if action == ct_action::SERVICE { Counter::ServiceBalanced } else { Counter::NatIn })
}

/// A packet from an uplink that nothing translates: the host's, unless [`guard::uplink_refusal`]
/// refuses it.
#[inline(always)]
fn screened_to_host(ctx: &TcContext) -> i32 {
    match refusal(ctx) {
        Some(reason) => drop_packet(ctx, reason),
        None => count_uplink_to_host(ctx),
    }
}

/// [`guard::uplink_refusal`] of the packet's (outer) addresses.
#[inline(always)]
fn refusal(ctx: &TcContext) -> Option<Counter> {
    let (Ok(saddr), Ok(daddr)) = (ctx.load::<u32>(IP_OFF + IP_SADDR_OFF), ctx.load::<u32>(IP_OFF + IP_DADDR_OFF)) else { return None };
    guard::uplink_refusal(saddr, daddr)
}

#[inline(always)]
fn count_uplink_to_host(ctx: &TcContext) -> i32 {
    count(ctx, Counter::UplinkToHost);
    aya_ebpf::bindings::TC_ACT_OK as i32
}

/// An ICMP error (unreachable, fragmentation needed, time exceeded) quotes the packet that
/// caused it: a masqueraded packet, with the uplink's address and port as its source. The reply
/// entry of that connection says whose it is; the error's destination and the quoted source
/// are translated back, so the container's stack sees an error about its own packet (path-MTU
/// discovery, "connection refused").
#[inline(always)]
fn icmp_error_from_uplink(ctx: &TcContext, flow: &Flow) -> i32 {
    // Screened as any packet from outside: a container's or the host's address is no source.
    if let Some(reason) = refusal(ctx) {
        return drop_packet(ctx, reason);
    }
    match translate_icmp_error(ctx, flow) {
        Some(translation) => deliver(ctx, &translation, Counter::NatIcmpError),
        None => count_uplink_to_host(ctx),
    }
}
