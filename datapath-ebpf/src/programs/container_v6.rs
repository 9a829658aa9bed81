//! The `from_container_v6` program: a container's IPv6 packets, tail-called by `from_container`
//! (a program of its own: the verifier's budget and the 512-byte stack are each program's).
//! Neighbour discovery answered, the source checked, delivery to a container of the same
//! network (isolation, `icc` and `--internal` as for IPv4); beyond the network masquerade
//! (NAT66), services through their IPv6 VIP, published ports through host addresses (hairpin),
//! or the host's.
use aya_ebpf::programs::TcContext;
use datapath_common::{ct_action, iface_flags, Counter, CtKey, IfaceInfo, IpKey};

use crate::{
    checksum::decrement_hop_limit,
    conntrack::{self, now_ns, observe, Port},
    counters::{drop_packet, to_host},
    icmpv6,
    headers::{ptr_at, EthHdr, Ipv6Hdr, ETH_HDR_LEN, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPV6_HDR_LEN},
    lb::{self, Choice},
    maps::{ENDPOINTS, IFACES},
    nat::{self, apply, send_out},
    ndp, overlay, reject, route,
};

#[inline(always)]
pub fn from_container_v6(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points at the program's context for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(iface) = (unsafe { IFACES.get(&ifindex) }) else {
        return drop_packet(ctx, Counter::DropUnknownIface);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    ipv6_packet(ctx, eth, iface, ifindex)
}

/// A container's IPv6 packet: neighbour discovery answered, the source checked, delivery to a
/// container of the same network (isolation, `icc` and `--internal` as for IPv4); what leaves
/// the network is masqueraded ([`beyond_network_v6`]), or the host's, except from an internal
/// network. Same-network delivery is a bridge's: the hop limit stays.
#[inline(always)]
fn ipv6_packet(ctx: &TcContext, eth: *mut EthHdr, iface: &IfaceInfo, ifindex: u32) -> i32 {
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
    if let Some(reason) = ndp::link_control_refusal(ctx, nexthdr) {
        return drop_packet(ctx, reason);
    }
    // The gateway: the host, or a published port through the gateway's address, or the answer
    // to a container that reached this one through a published port.
    let gateway = daddr == iface.gateway_ipv6;
    // SAFETY: read-only lookup of a plain-old-data value.
    let dest = if gateway { None } else { unsafe { ENDPOINTS.get(&IpKey { addr: daddr }) } };
    // One call, inlined once: two would double the verifier's work on the NAT paths.
    let Some(dest) = dest else {
        return beyond_network_v6(ctx, iface, ifindex, gateway);
    };
    if dest.network_id != iface.network_id {
        return drop_packet(ctx, Counter::DropIsolation);
    }
    if iface.flags & iface_flags::SERVICE_BACKEND != 0 {
        if let Some(verdict) = nat::answer_via_vip_v6(ctx) {
            return verdict;
        }
    }
    if iface.flags & iface_flags::ICC_DISABLED != 0 {
        return drop_packet(ctx, Counter::DropIcc);
    }
    if dest.is_remote() {
        return overlay::to_other_node(ctx, dest);
    }
    route::into_container(ctx, eth, &dest.mac, &iface.mac, dest.host_ifindex, Counter::Redirected)
}

/// A container's IPv6 packet to an address beyond its network, or to its gateway (`gateway`):
/// part of a tracked connection (masquerade, through a VIP, the answers of a published port's,
/// hairpin), or a new connection to a service VIP of its network or to a port published on a
/// host address (hairpin, as for IPv4), or a new one to where the kernel would route it out of
/// an uplink with an IPv6 address, masqueraded to that address (NAT66, as Docker's ip6tables
/// rules), where the network has masquerade; else the host's. From an `--internal` network
/// only its gateway and its services' VIPs are reachable. TCP, UDP and echo requests start a
/// masqueraded connection (a datagram's first fragment too); later fragments (which belong to
/// their first's connection), echo replies, other ICMPv6 and other protocols are the host's.
#[inline(always)]
fn beyond_network_v6(ctx: &TcContext, iface: &IfaceInfo, ifindex: u32, gateway: bool) -> i32 {
    let internal = iface.flags & iface_flags::INTERNAL != 0;
    let elsewhere_from_internal = internal && !gateway;
    // Not a flow conntrack follows: an ICMPv6 error about a translated connection, or the host's.
    let Some(flow) = conntrack::parse_v6(ctx) else {
        if elsewhere_from_internal {
            return drop_packet(ctx, Counter::DropInternal);
        }
        return icmpv6::error_from_container(ctx);
    };
    let len = ctx.len();
    let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
    if let Some(tracked) = conntrack::lookup(&flow.key) {
        // SAFETY: a map value, read before any packet helper runs.
        let Some(translation) = nat::translation6_of(unsafe { &*tracked.entry }) else { return to_host(ctx) };
        let now = now_ns();
        if translation.ifindex != 0 {
            // Into a container: between two containers through a published port, one host hop
            // (as for IPv4); through a VIP of the sender's network (only the destination
            // rewritten), none.
            let hop = translation.action & both == both;
            if hop && !decrement_hop_limit(ctx) {
                return drop_packet(ctx, Counter::DropTtlExpired);
            }
            observe(tracked, flow, len, now);
            if apply(ctx, flow, translation).is_err() {
                return drop_packet(ctx, Counter::DropMalformed);
            }
            return nat::deliver_anywhere(ctx, translation, if hop { Counter::Hairpin } else { Counter::ViaVip });
        }
        // Routed out with a new source: masquerade, or the answers of a published port (the
        // host address the client used).
        if elsewhere_from_internal {
            return drop_packet(ctx, Counter::DropInternal);
        }
        if translation.action & both != ct_action::REWRITE_SRC {
            return to_host(ctx);
        }
        if translation.action == ct_action::REWRITE_SRC && !conntrack::ensure_reply(tracked, flow, ifindex, iface.mac) {
            return drop_packet(ctx, Counter::DropCtReplyLost);
        }
        let Some(route) = route::cached_lookup_v6(ctx, flow, tracked.entry, now) else { return to_host(ctx) };
        if !route::fits(ctx, &route) || !decrement_hop_limit(ctx) {
            return to_host(ctx);
        }
        observe(tracked, flow, len, now);
        return send_out(ctx, flow, translation, &route);
    }
    if let Some(target) = nat::published_target_v6(ctx, flow, gateway) {
        let vip = target.network != 0;
        if vip && target.network != iface.network_id {
            // Another network's service: isolated like its containers.
            return drop_packet(ctx, Counter::DropIsolation);
        }
        // An internal network reaches no published port, through its gateway neither.
        if internal && !vip {
            return drop_packet(ctx, Counter::DropInternal);
        }
        let action = if target.service != 0 { ct_action::SERVICE } else { ct_action::PUBLISHED };
        return match lb::choose(target, &flow.key, now_ns()) {
            Some(Choice::Backend(backend)) if vip && backend.addr != flow.key.saddr => {
                if iface.flags & iface_flags::ICC_DISABLED != 0 {
                    return drop_packet(ctx, Counter::DropIcc);
                }
                nat::via_vip_v6(ctx, flow, iface, ifindex, &backend, len)
            }
            // Through a host address, or a backend reaching its own service: from the gateway's
            // address, so that the answers come back through the datapath.
            Some(Choice::Backend(backend)) => nat::hairpin_v6(ctx, flow, iface, ifindex, &backend, action, len),
            Some(Choice::Refuse) => reject::refuse_v6(ctx, flow),
            None if elsewhere_from_internal => drop_packet(ctx, Counter::DropInternal),
            None => to_host(ctx),
        };
    }
    if elsewhere_from_internal {
        return drop_packet(ctx, Counter::DropInternal);
    }
    // As for IPv4, any TCP segment (a connection picked up mid-stream too), UDP, echo requests.
    // A later fragment belongs to its first one's connection: it starts none.
    let starts = !flow.later_fragment && (flow.key.proto != IPPROTO_ICMPV6 || flow.icmp_type == ICMPV6_ECHO_REQUEST);
    if gateway || iface.flags & iface_flags::MASQUERADE == 0 || !starts {
        return to_host(ctx);
    }
    let Some(mut route) = route::lookup_v6(ctx, flow) else { return to_host(ctx) };
    let Some(uplink) = route::uplink(&mut route) else { return to_host(ctx) };
    if uplink.addr6 == IpKey::default() || !route::fits(ctx, &route) || !decrement_hop_limit(ctx) {
        return to_host(ctx);
    }
    let Some(new) = conntrack::new_connection() else { return to_host(ctx) };
    new.original.action = ct_action::REWRITE_SRC;
    // Read once: a concurrent update of the uplink must not split the two.
    new.original.src = uplink.addr6;
    conntrack::masquerade_reply(&mut new.reply, flow, ifindex, iface.mac);
    new.reply_key = CtKey { saddr: flow.key.daddr, daddr: new.original.src, ..flow.key.reversed() };
    route::cache(&mut new.original, &route, now_ns());
    let port = Port::Allocate { preferred: flow.key.sport, ipv6: true };
    if let Err(reason) = conntrack::track(ctx, flow, new, port, len) {
        return drop_packet(ctx, reason);
    }
    let Some(translation) = nat::translation6_of(&new.original) else { return to_host(ctx) };
    send_out(ctx, flow, translation, &route)
}
