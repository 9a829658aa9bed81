//! ARP responder: with no bridge there is nobody to flood a request to, so the datapath answers
//! for every address the sender may reach on its network (the gateway, the network's
//! containers and its services' VIPs) by turning the request into a reply in place and sending it back out.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use datapath_common::{Counter, IfaceInfo, IpKey, GATEWAY_MAC};

use crate::{
    counters::{count, drop_packet, to_host},
    maps::ENDPOINTS,
    headers::{ptr_at, ArpHdr, EthHdr, ETH_HDR_LEN, ETH_P_IP},
};

const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;
const ARP_HTYPE_ETHERNET: u16 = 1;

#[inline(always)]
pub fn handle(ctx: &TcContext, eth: *mut EthHdr, iface: &IfaceInfo, ifindex: u32) -> i32 {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: `arp` and `eth` were bounds-checked against the packet by `ptr_at`.
    let arp = unsafe { &mut *arp };
    let eth = unsafe { &mut *eth };
    if arp.htype != ARP_HTYPE_ETHERNET.to_be()
        || arp.ptype != ETH_P_IP.to_be()
        || arp.hlen != 6
        || arp.plen != 4
    {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    if arp.op != ARP_OP_REQUEST.to_be() {
        // Replies (to the host's own requests) and anything else go to the host.
        return to_host(ctx);
    }
    if arp.spa != iface.ipv4 {
        return drop_packet(ctx, Counter::DropSpoofedSource);
    }

    let target = arp.tpa;
    let answer_mac = if target == iface.gateway_ipv4 {
        GATEWAY_MAC
    } else {
        // SAFETY: read-only lookup of a plain-old-data value.
        match unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(target)) } {
            Some(ep) if ep.network_id == iface.network_id => ep.mac,
            // A service VIP of the network: the datapath takes its packets, like the gateway's.
            _ if crate::lb::vip_network(&IpKey::from_ipv4_octets(target)) == Some(iface.network_id) => GATEWAY_MAC,
            _ => return drop_packet(ctx, Counter::DropArpUnknownTarget),
        }
    };

    // Request -> reply, in place: the asker becomes the target, the answer the sender.
    eth.dst = eth.src;
    eth.src = answer_mac;
    arp.op = ARP_OP_REPLY.to_be();
    arp.tha = arp.sha;
    arp.tpa = arp.spa;
    arp.sha = answer_mac;
    arp.spa = target;

    count(ctx, Counter::ArpReplied);
    // Out of the same host-side veth, i.e. back into the asking container.
    // SAFETY: helper call with plain integer arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
