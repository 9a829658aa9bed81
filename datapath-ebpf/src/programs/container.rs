//! The `from_container` program (TC ingress of every endpoint's host-side veth): the packets a
//! container sends. ARP, anti-spoofing, isolation and delivery to a container of the same
//! network here; a destination beyond the network (the gateway, a VIP, a published port through
//! a host address, the outside) by connection tracking and NAT (`nat`, `conntrack`, `lb`,
//! `route`), or the host's.
use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::IPPROTO_ICMP,
    ct_action, iface_flags, Counter, CtKey, EndpointInfo, IfaceInfo, IpKey,
};

use crate::{
    arp,
    ndp,
    checksum::{decrement_hop_limit, decrement_ttl},
    conntrack::{self, now_ns, observe, Port},
    counters::{drop_packet, to_host},
    guard,
    headers::{ipv6_upper_layer, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REQUEST, IPPROTO_ICMPV6, IPV6_HDR_LEN},
    lb::{self, Choice},
    maps::{ENDPOINTS, IFACES},
    overlay,
    nat::{self, apply, deliver_anywhere, hairpin, icmp_error_from_container, published_target, send_out, via_vip, Translation},
    reject, route,
};

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
    if ether_type == ETH_P_ARP.to_be() {
        return arp::handle(ctx, eth, iface, ifindex);
    }
    if ether_type == ETH_P_IPV6.to_be() {
        return from_container_v6(ctx, eth, iface, ifindex);
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
        return to_other_node(ctx, dest);
    }

    // Same network: deliver as a bridge would, with the receiver's MAC as destination (the sender
    // may have addressed the gateway), straight into the receiver's namespace.
    route::into_container(ctx, eth, &dest.mac, &iface.mac, dest.host_ifindex, Counter::Redirected)
}

/// A container's IPv6 packet: neighbour discovery answered, the source checked, delivery to a
/// container of the same network (isolation, `icc` and `--internal` as for IPv4); what leaves
/// the network is masqueraded ([`beyond_network_v6`]), or the host's, except from an internal
/// network. Same-network delivery is a bridge's: the hop limit stays.
#[inline(always)]
fn from_container_v6(ctx: &TcContext, eth: *mut EthHdr, iface: &IfaceInfo, ifindex: u32) -> i32 {
    if !iface.has_ipv6() {
        return drop_packet(ctx, Counter::DropUnsupportedProtocol);
    }
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr, nexthdr, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).nexthdr, (*ip).hop_limit) };
    let own = saddr == iface.ipv6;
    if nexthdr == IPPROTO_ICMPV6 && ctx.load::<u8>(ETH_HDR_LEN + IPV6_HDR_LEN).ok() == Some(ndp::NEIGHBOUR_SOLICITATION) {
        // Neighbour discovery may come from the sender's link-local address too.
        if own || saddr == ndp::link_local_of(&iface.mac) {
            return ndp::answer(ctx, iface, ifindex, saddr, hop_limit);
        }
        // Duplicate address detection (from ::) goes unanswered: the address is unique.
        let reason = if saddr == [0; 4] { Counter::DropIpv6Multicast } else { Counter::DropSpoofedSource };
        return drop_packet(ctx, reason);
    }
    // ff00::/8: router solicitations, MLD reports, anything a bridge would flood.
    if daddr[0].to_ne_bytes()[0] == 0xff {
        return drop_packet(ctx, Counter::DropIpv6Multicast);
    }
    if !own {
        return drop_packet(ctx, Counter::DropSpoofedSource);
    }
    // ::/8 (unspecified, loopback, IPv4-mapped and -compatible): never a container's destination
    // (and the IPv4-mapped keys are IPv4 endpoints').
    if daddr[0].to_ne_bytes()[0] == 0 {
        return drop_packet(ctx, Counter::DropMartian);
    }
    // The link's control is the datapath's: an advertisement, a redirect or a router's message
    // from a container (also behind extension headers) would tell others where an address is.
    match ipv6_upper_layer(ctx, ETH_HDR_LEN, nexthdr) {
        Some((IPPROTO_ICMPV6, l4_off)) if ctx.load::<u8>(l4_off).map_or(true, ndp::is_link_control) => {
            return drop_packet(ctx, Counter::DropNdpForbidden);
        }
        Some(_) => {}
        None => return drop_packet(ctx, Counter::DropMalformed),
    }
    if daddr == iface.gateway_ipv6 {
        return to_host(ctx);
    }
    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(dest) = (unsafe { ENDPOINTS.get(&IpKey { addr: daddr }) }) else {
        if iface.flags & iface_flags::INTERNAL != 0 {
            return drop_packet(ctx, Counter::DropInternal);
        }
        return beyond_network_v6(ctx, iface, ifindex);
    };
    if dest.network_id != iface.network_id {
        return drop_packet(ctx, Counter::DropIsolation);
    }
    if iface.flags & iface_flags::ICC_DISABLED != 0 {
        return drop_packet(ctx, Counter::DropIcc);
    }
    if dest.is_remote() {
        // Overlay networks carry IPv4 only for now.
        return drop_packet(ctx, Counter::DropUnsupportedProtocol);
    }
    route::into_container(ctx, eth, &dest.mac, &iface.mac, dest.host_ifindex, Counter::Redirected)
}

/// A container's IPv6 packet to an address beyond its network (not its gateway): part of a
/// masqueraded connection or the answer of a published port's, or a new one to where the kernel would route it out of an uplink
/// with an IPv6 address, masqueraded to that address (NAT66, as Docker's ip6tables rules),
/// where the network has masquerade; else the host's. TCP, UDP and echo requests start a
/// connection; fragments, echo replies, other ICMPv6 and other protocols are the host's.
#[inline(always)]
fn beyond_network_v6(ctx: &TcContext, iface: &IfaceInfo, ifindex: u32) -> i32 {
    let Some(flow) = conntrack::parse_v6(ctx) else { return to_host(ctx) };
    let len = ctx.len();
    if let Some(tracked) = conntrack::lookup(&flow.key) {
        // SAFETY: a map value, read before any packet helper runs.
        let Some(translation) = nat::translation6_of(unsafe { &*tracked.entry }) else { return to_host(ctx) };
        // Routed out with a new source: masquerade, or the answers of a published port (the
        // host address the client used). The one kind of IPv6 connection a container has yet.
        let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
        if translation.ifindex != 0 || translation.action & both != ct_action::REWRITE_SRC {
            return to_host(ctx);
        }
        if translation.action == ct_action::REWRITE_SRC && !conntrack::ensure_reply(tracked, flow, ifindex, iface.mac) {
            return drop_packet(ctx, Counter::DropCtReplyLost);
        }
        let now = now_ns();
        let Some(route) = route::cached_lookup_v6(ctx, flow, tracked.entry, now) else { return to_host(ctx) };
        if !route::fits(ctx, &route) || !decrement_hop_limit(ctx) {
            return to_host(ctx);
        }
        observe(tracked, flow, len, now);
        return send_out(ctx, flow, translation, &route);
    }
    // As for IPv4, any TCP segment (a connection picked up mid-stream too), UDP, echo requests.
    let starts = flow.key.proto != IPPROTO_ICMPV6 || flow.icmp_type == ICMPV6_ECHO_REQUEST;
    if iface.flags & iface_flags::MASQUERADE == 0 || !starts {
        return to_host(ctx);
    }
    let Some(mut route) = route::lookup_v6(ctx, flow) else { return to_host(ctx) };
    let Some(uplink) = route::uplink(&mut route) else { return to_host(ctx) };
    if uplink.addr6 == IpKey::default() || !route::fits(ctx, &route) || !decrement_hop_limit(ctx) {
        return to_host(ctx);
    }
    let Some(new) = conntrack::new_connection() else { return to_host(ctx) };
    new.original.action = ct_action::REWRITE_SRC;
    new.original.src = uplink.addr6;
    conntrack::masquerade_reply(&mut new.reply, flow, ifindex, iface.mac);
    new.reply_key = CtKey { saddr: flow.key.daddr, daddr: uplink.addr6, ..flow.key.reversed() };
    route::cache(&mut new.original, &route, now_ns());
    let port = Port::Allocate { preferred: flow.key.sport, ipv6: true };
    if let Err(reason) = conntrack::track(ctx, flow, new, port, len) {
        return drop_packet(ctx, reason);
    }
    let Some(translation) = nat::translation6_of(&new.original) else { return to_host(ctx) };
    send_out(ctx, flow, translation, &route)
}

/// To an endpoint of the network on another node: through the VXLAN device, with the tunnel key
/// of the endpoint's node and network.
#[inline(always)]
fn to_other_node(ctx: &TcContext, dest: &EndpointInfo) -> i32 {
    let tunnel = overlay::Tunnel { vni: dest.vni, remote: overlay::underlay_of(dest) };
    overlay::send(ctx, &dest.mac, dest.host_ifindex, &tunnel, Counter::ToOverlay)
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
