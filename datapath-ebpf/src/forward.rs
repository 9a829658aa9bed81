//! Forwarding decisions for traffic leaving a container: ARP, isolation, delivery to a container
//! of the same network, and everything else to NAT or the host.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::bpf_redirect_peer,
    programs::TcContext,
};
use datapath_common::{iface_flags, Counter, IpKey};

use crate::{
    arp, guard,
    nat,
    counters::{count, drop_packet},
    maps::{ENDPOINTS, IFACES},
    headers::{ptr_at, write_mac, EthHdr, Ipv4Hdr, ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP},
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
        return nat::from_container(ctx, iface, ifindex, nat::Destination::Gateway);
    }

    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(dest) = (unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(daddr)) }) else {
        if iface.flags & iface_flags::INTERNAL != 0 {
            return nat::from_container(ctx, iface, ifindex, nat::Destination::Internal);
        }
        return nat::from_container(ctx, iface, ifindex, nat::Destination::Elsewhere);
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

    // Same network: deliver as a bridge would, with the receiver's MAC as destination (the sender
    // may have addressed the gateway), straight into the receiver's namespace.
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        write_mac(&raw mut (*eth).dst, &dest.mac);
        write_mac(&raw mut (*eth).src, &iface.mac);
    }
    // SAFETY: helper call with plain integer arguments.
    let verdict = unsafe { bpf_redirect_peer(dest.host_ifindex, 0) };
    if verdict == TC_ACT_REDIRECT as i64 {
        count(ctx, Counter::Redirected);
        verdict as i32
    } else {
        drop_packet(ctx, Counter::DropRedirectFailed)
    }
}
