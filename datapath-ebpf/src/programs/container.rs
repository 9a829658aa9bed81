//! The `from_container` program (TC ingress of every endpoint's host-side veth): the packets a
//! container sends (IPv6 in `container_v6`, tail-called). ARP, anti-spoofing, isolation and delivery to a container of the same
//! network here; a destination beyond the network (the gateway, a VIP, a published port through
//! a host address, the outside) by connection tracking and NAT (`nat`, `conntrack`, `lb`,
//! `route`), or the host's.
use aya_ebpf::{macros::map, maps::ProgramArray, programs::TcContext};
use datapath_common::{
    conntrack::IPPROTO_ICMP,
    ct_action, iface_flags, Counter, CtKey, IfaceInfo, IpKey,
};

use crate::{
    arp,
    checksum::decrement_ttl,
    conntrack::{self, now_ns, observe, Port},
    counters::{drop_packet, to_host},
    guard,
    headers::{ptr_at, EthHdr, Ipv4Hdr, ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_ECHO_REQUEST},
    lb::{self, Choice},
    maps::{ENDPOINTS, IFACES},
    overlay,
    nat::{self, apply, deliver_anywhere, hairpin, icmp_error_from_container, published_target, send_out, via_vip, Translation},
    reject, route,
};

/// The programs `from_container` hands a packet to: `container_v6::from_container_v6` in
/// [`FROM_CONTAINER_V6_SLOT`] (the daemon fills it at load).
#[map(name = "CONTAINER_PROGS")]
static CONTAINER_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
const FROM_CONTAINER_V6_SLOT: u32 = 0;

#[inline(always)]
pub fn from_container(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points at the program's context for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(iface) = (unsafe { IFACES.get(&ifindex) }) else {
        return drop_packet(ctx, Counter::DropUnknownIface);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IPV6.to_be() {
        // IPv6 is a program of its own (`container_v6`), with a verifier budget and a stack of
        // its own: IPv4's paths take all of this one's.
        // SAFETY: the tail call replaces this program run; it returns only if the slot is empty.
        unsafe { CONTAINER_PROGS.tail_call(ctx, FROM_CONTAINER_V6_SLOT) };
        return drop_packet(ctx, Counter::DropRedirectFailed);
    }
    // An endpoint of an IPv6-only network has no IPv4 address to send from (its IFACES entry's
    // is all zero, which the source check below would let through).
    if !iface.has_ipv4() {
        return drop_packet(ctx, Counter::DropUnsupportedProtocol);
    }
    if ether_type == ETH_P_ARP.to_be() {
        return arp::handle(ctx, eth, iface, ifindex);
    }
    if ether_type != ETH_P_IP.to_be() {
        return drop_packet(ctx, Counter::DropUnsupportedProtocol);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    if saddr != iface.ipv4 {
        return drop_packet(ctx, Counter::DropSpoofedSource);
    }
    if guard::martian_destination(u32::from_ne_bytes(daddr)) {
        return drop_packet(ctx, Counter::DropMartian);
    }
    if daddr == iface.gateway_ipv4 {
        // The host, or a published port through the gateway's address, or the answer to a
        // container that reached this one through a published port.
        return beyond_network(ctx, iface, ifindex, Destination::Gateway);
    }

    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(dest) = (unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(daddr)) }) else {
        if iface.flags & iface_flags::INTERNAL != 0 {
            return beyond_network(ctx, iface, ifindex, Destination::Internal);
        }
        return beyond_network(ctx, iface, ifindex, Destination::Elsewhere);
    };
    if dest.network_id != iface.network_id {
        return drop_packet(ctx, Counter::DropIsolation);
    }
    if iface.flags & iface_flags::SERVICE_BACKEND != 0 {
        if let Some(verdict) = nat::answer_via_vip(ctx) {
            return verdict;
        }
    }
    if iface.flags & iface_flags::ICC_DISABLED != 0 {
        return drop_packet(ctx, Counter::DropIcc);
    }

    if dest.is_remote() {
        return overlay::to_other_node(ctx, dest);
    }

    // Same network: deliver as a bridge would, with the receiver's MAC as destination (the sender
    // may have addressed the gateway), straight into the receiver's namespace.
    route::into_container(ctx, eth, &dest.mac, &iface.mac, dest.host_ifindex, Counter::Redirected)
}

/// Where a container's packet that is not for a container of its network is going.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Its network's gateway (the host).
    Gateway,
    /// Any other address: the host's, a service VIP, or outside.
    Elsewhere,
    /// Any other address, from an `--internal` network: only its services' VIPs (and connections
    /// made to them) are reachable.
    Internal,
}

/// A container's packet whose destination is not on its network: part of a tracked connection,
/// or a new connection to a published port through a host address (hairpin), or a new one to the
/// outside (masquerade, where the network has it), or the host's.
#[inline(always)]
fn beyond_network(ctx: &TcContext, iface: &IfaceInfo, ifindex: u32, dest: Destination) -> i32 {
    // From an internal network, only what is translated below leaves for another address than
    // the gateway: what the host would forward (an untracked fragment, ICMP other than echo,
    // an ICMP error) is dropped.
    let Some(flow) = conntrack::parse(ctx) else { return untranslated(ctx, dest) };
    if dest == Destination::Internal && flow.key.proto == IPPROTO_ICMP && flow.icmp_type != ICMP_ECHO_REQUEST {
        return drop_packet(ctx, Counter::DropInternal);
    }
    if overlay::is_datagram_to_peer_tunnel(&flow) {
        return drop_packet(ctx, Counter::DropForgedTunnel);
    }
    if flow.is_icmp_error() {
        return icmp_error_from_container(ctx, &flow);
    }
    if flow.is_icmp_non_echo() {
        return to_host(ctx);
    }
    let len = ctx.len();
    if let Some(tracked) = conntrack::lookup(&flow.key) {
        // SAFETY: a map value, read before any packet helper runs.
        let translation = Translation::of(unsafe { &*tracked.entry });
        let now = now_ns();
        if translation.ifindex != 0 {
            // Between two containers through a published port: one host hop (a router's: the
            // TTL goes down by one), no routing. Expired there, it is dropped: the host, its
            // destination, would answer it (a reset), not say "time exceeded". Through a VIP of
            // the sender's own network (only the destination rewritten) there is no hop.
            let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
            if translation.action & both == both && !decrement_ttl(ctx) {
                return drop_packet(ctx, Counter::DropTtlExpired);
            }
            observe(tracked, &flow, len, now);
            if apply(ctx, &flow, &translation).is_err() {
                return drop_packet(ctx, Counter::DropMalformed);
            }
            let counter = if translation.action & ct_action::SERVICE != 0 { Counter::ViaVip } else { Counter::Hairpin };
            return deliver_anywhere(ctx, &translation, counter);
        }
        if dest == Destination::Internal {
            return drop_packet(ctx, Counter::DropInternal);
        }
        if translation.action == ct_action::REWRITE_SRC && !conntrack::ensure_reply(tracked, &flow, ifindex, iface.mac) {
            return drop_packet(ctx, Counter::DropCtReplyLost);
        }
        let Some(route) = route::cached_lookup(ctx, &flow, tracked.entry, now) else { return to_host(ctx) };
        if !route::fits(ctx, &route) || !decrement_ttl(ctx) {
            return to_host(ctx);
        }
        observe(tracked, &flow, len, now);
        return send_out(ctx, &flow, &translation, &route);
    }
    if let Some(target) = published_target(ctx, &flow, dest == Destination::Gateway) {
        let vip = target.network != 0;
        if vip && target.network != iface.network_id {
            // Another network's service: isolated like its containers.
            return drop_packet(ctx, Counter::DropIsolation);
        }
        // An internal network reaches no published port, through its gateway neither.
        if iface.flags & iface_flags::INTERNAL != 0 && !vip {
            return drop_packet(ctx, Counter::DropInternal);
        }
        let action = if target.service != 0 { ct_action::SERVICE } else { ct_action::PUBLISHED };
        return match lb::choose(&target, &flow.key, now_ns()) {
            Some(Choice::Backend(backend)) if vip && backend.addr != flow.key.saddr => {
                if iface.flags & iface_flags::ICC_DISABLED != 0 {
                    return drop_packet(ctx, Counter::DropIcc);
                }
                via_vip(ctx, &flow, iface, ifindex, &backend, len)
            }
            // Through a host address, or a backend reaching its own service: from the gateway's
            // address, so that the answers come back through the datapath.
            Some(Choice::Backend(backend)) => hairpin(ctx, &flow, iface, ifindex, &backend, action, len),
            Some(Choice::Refuse) => reject::refuse(ctx, &flow),
            None => untranslated(ctx, dest),
        };
    }
    if dest == Destination::Internal {
        return drop_packet(ctx, Counter::DropInternal);
    }
    // Only echo requests start an ICMP connection; a later fragment belongs to its first.
    if dest == Destination::Gateway
        || iface.flags & iface_flags::MASQUERADE == 0
        || flow.later_fragment
        || flow.key.proto == IPPROTO_ICMP && flow.icmp_type != ICMP_ECHO_REQUEST
    {
        return to_host(ctx);
    }
    // Masquerade only what the kernel would route out of an uplink; the rest is the host's.
    let Some(mut route) = route::lookup(ctx, &flow) else { return to_host(ctx) };
    let Some(uplink) = route::uplink(&mut route) else { return to_host(ctx) };
    if !route::fits(ctx, &route) || !decrement_ttl(ctx) {
        return to_host(ctx);
    }
    let Some(new) = conntrack::new_connection() else { return to_host(ctx) };
    new.original.action = ct_action::REWRITE_SRC;
    new.original.src = uplink.addr;
    conntrack::masquerade_reply(&mut new.reply, &flow, ifindex, iface.mac);
    new.reply_key = CtKey { saddr: flow.key.daddr, daddr: uplink.addr, ..flow.key.reversed() };
    route::cache(&mut new.original, &route, now_ns());
    // Keep the container's port (an echo's identifier) where it is free.
    let port = Port::Allocate { preferred: flow.key.sport, ipv6: false };
    if let Err(reason) = conntrack::track(ctx, &flow, new, port, len) {
        return drop_packet(ctx, reason);
    }
    send_out(ctx, &flow, &Translation::of(&new.original), &route)
}

/// A container's packet the datapath does not translate: the host's, except from an internal
/// network to anywhere but its gateway (the host would forward it).
#[inline(always)]
fn untranslated(ctx: &TcContext, dest: Destination) -> i32 {
    if dest == Destination::Internal {
        return drop_packet(ctx, Counter::DropInternal);
    }
    to_host(ctx)
}
