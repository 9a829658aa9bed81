//! The `from_overlay` program (TC ingress of the node's VXLAN device): packets that endpoints on
//! other nodes send to endpoints here. Accepted only when everything agrees with what etcd says:
//! the VNI is an overlay network of this node, the inner source is an endpoint of that network
//! on the node that sent the packet (the outer source), the inner destination an endpoint of that
//! network here; `icc=false` holds as on one host. Then delivered like a packet between two
//! local containers, straight into the receiver's namespace.
use aya_ebpf::programs::TcContext;
use datapath_common::{iface_flags, Counter, IpKey, GATEWAY_MAC};

use crate::{
    counters::drop_packet,
    headers::{ptr_at, EthHdr, Ipv4Hdr, ETH_HDR_LEN, ETH_P_IP},
    maps::{ENDPOINTS, IFACES},
    overlay::{network_of, tunnel_of, underlay_of},
    route,
};

#[inline(always)]
pub fn from_overlay(ctx: &TcContext) -> i32 {
    let Some(tunnel) = tunnel_of(ctx.skb.skb) else {
        return drop_packet(ctx, Counter::DropOverlayUnknownVni);
    };
    let Some(network_id) = network_of(tunnel.vni) else {
        return drop_packet(ctx, Counter::DropOverlayUnknownVni);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        // ARP is answered on each node: none crosses the tunnel.
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    // SAFETY: read-only lookup of a plain-old-data value.
    let sender = unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(saddr)) };
    let genuine = sender.is_some_and(|s| s.is_remote() && s.network_id == network_id && underlay_of(s) == tunnel.remote);
    if !genuine {
        return drop_packet(ctx, Counter::DropOverlaySpoofed);
    }
    // SAFETY: read-only lookup of a plain-old-data value.
    let Some(dest) = (unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(daddr)) }) else {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    };
    if dest.is_remote() || dest.network_id != network_id {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    // SAFETY: read-only lookup of a plain-old-data value.
    let icc_off = unsafe { IFACES.get(&dest.host_ifindex) }.is_some_and(|i| i.flags & iface_flags::ICC_DISABLED != 0);
    if icc_off {
        return drop_packet(ctx, Counter::DropIcc);
    }
    route::into_container(ctx, eth, &dest.mac, &GATEWAY_MAC, dest.host_ifindex, Counter::FromOverlay)
}
