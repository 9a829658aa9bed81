//! Neighbour discovery responder (RFC 4861), IPv6's ARP: with no bridge there is nobody to
//! flood a solicitation to, so the datapath answers for every address the sender may reach on
//! its network (the gateway, the network's containers and its services' VIPs) with an advertisement built in place
//! of the solicitation and sent back into the asking container.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use datapath_common::{Counter, IfaceInfo, IpKey, GATEWAY_MAC};

use crate::{
    checksum::{fold, sum16},
    counters::{count, drop_packet},
    headers::{ipv6_upper_layer, IPPROTO_ICMPV6, IPV6_HDR_LEN, IP_OFF},
    maps::ENDPOINTS,
};

pub const NEIGHBOUR_SOLICITATION: u8 = 135;

/// ICMPv6 types of the link's own control: router solicitation and advertisement, neighbour
/// solicitation and advertisement, redirect (RFC 4861), and their certification path messages
/// (RFC 3971). Only the datapath speaks for the link.
#[inline(always)]
pub fn is_link_control(icmp_type: u8) -> bool {
    matches!(icmp_type, 133..=137 | 148 | 149)
}
/// Why an IPv6 packet with next header `nexthdr` may not pass: ICMPv6 of the link's own control
/// (see [`is_link_control`]), also behind extension headers, or a chain the datapath cannot
/// walk. Only the datapath speaks for the link: such a message from a container (or from
/// another node's, through the tunnel) would tell others where an address is.
#[inline(always)]
pub fn link_control_refusal(ctx: &TcContext, nexthdr: u8) -> Option<Counter> {
    match ipv6_upper_layer(ctx, IP_OFF, nexthdr) {
        Some((IPPROTO_ICMPV6, l4_off)) if ctx.load::<u8>(l4_off).map_or(true, is_link_control) => Some(Counter::DropNdpForbidden),
        Some(_) => None,
        None => Some(Counter::DropMalformed),
    }
}
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Advertisement flags (first byte after the checksum): router, solicited, override.
const ROUTER: u8 = 0x80;
const SOLICITED: u8 = 0x40;
const OVERRIDE: u8 = 0x20;
const OPTION_TARGET_LINK_ADDRESS: u8 = 2;
/// Neighbour discovery comes from the link only: a router would have lowered it (RFC 4861 7.1.1).
const LINK_HOP_LIMIT: u8 = 255;
/// The ICMPv6 part of a solicitation or advertisement before its options: type, code, checksum,
/// flags or reserved, target.
const MESSAGE_LEN: usize = 24;
/// The advertisement's one option: the target's link-layer address.
const OPTION_LEN: usize = 8;
const ICMP_OFF: usize = IP_OFF + IPV6_HDR_LEN;

/// The link-local address (wire-order words) the kernel gives an interface of MAC `mac`
/// (modified EUI-64, RFC 4291 appendix A): the one link-local source a container may use.
#[inline(always)]
pub fn link_local_of(mac: &[u8; 6]) -> [u32; 4] {
    [
        u32::from_ne_bytes([0xfe, 0x80, 0, 0]),
        0,
        u32::from_ne_bytes([mac[0] ^ 0x02, mac[1], mac[2], 0xff]),
        u32::from_ne_bytes([0xfe, mac[3], mac[4], mac[5]]),
    ]
}

/// The one's-complement sum of an address's 16-bit words (memory order, as [`sum16`]).
#[inline(always)]
fn sum_address(a: &[u32; 4]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < 4 {
        sum += (a[i] & 0xffff) + (a[i] >> 16);
        i += 1;
    }
    sum
}

/// Answers the neighbour solicitation from `src` (the sender's own address or link-local,
/// checked by the caller) that arrived on `ifindex`, whose sender `iface` describes.
#[inline(always)]
pub fn answer(ctx: &TcContext, iface: &IfaceInfo, ifindex: u32, src: [u32; 4], hop_limit: u8) -> i32 {
    let Ok(head) = ctx.load::<[u8; 8]>(ICMP_OFF) else { return drop_packet(ctx, Counter::DropMalformed) };
    let Ok(target) = ctx.load::<[u32; 4]>(ICMP_OFF + 8) else { return drop_packet(ctx, Counter::DropMalformed) };
    if head[1] != 0 || hop_limit != LINK_HOP_LIMIT {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    // ::/8 holds the IPv4-mapped keys of IPv4 endpoints: never an IPv6 neighbour.
    if target[0].to_ne_bytes()[0] == 0 {
        return drop_packet(ctx, Counter::DropNdpUnknownTarget);
    }
    let (mac, flags) = if target == iface.gateway_ipv6 {
        (GATEWAY_MAC, ROUTER | SOLICITED | OVERRIDE)
    } else {
        // SAFETY: read-only lookup of a plain-old-data value.
        match unsafe { ENDPOINTS.get(&IpKey { addr: target }) } {
            // On another node too (an overlay network): answered here, nothing floods the tunnel.
            Some(ep) if ep.network_id == iface.network_id => (ep.mac, SOLICITED | OVERRIDE),
            // A service VIP of the network is the gateway's to answer (the datapath takes its
            // connections there), as ARP does for IPv4's.
            None if crate::lb::vip_network(&IpKey { addr: target }) == Some(iface.network_id) => (GATEWAY_MAC, SOLICITED | OVERRIDE),
            _ => return drop_packet(ctx, Counter::DropNdpUnknownTarget),
        }
    };
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else { return drop_packet(ctx, Counter::DropMalformed) };

    // From the target to the asker; the checksum over the pseudo-header (RFC 8200 8.1) and the
    // whole message.
    let len = (MESSAGE_LEN + OPTION_LEN) as u16;
    let l = len.to_be_bytes();
    let ip_head = [0x60, 0, 0, 0, l[0], l[1], IPPROTO_ICMPV6, LINK_HOP_LIMIT];
    let mut message_head = [NEIGHBOUR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0];
    let option = [OPTION_TARGET_LINK_ADDRESS, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
    let pseudo = sum_address(&target) + sum_address(&src) + sum16(&[0, 0, l[0], l[1], 0, 0, 0, IPPROTO_ICMPV6]);
    let csum = fold(pseudo + sum16(&message_head) + sum_address(&target) + sum16(&option)).to_ne_bytes();
    message_head[2] = csum[0];
    message_head[3] = csum[1];
    let eth = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];

    // SAFETY: helper on the program's own skb; packet pointers are not used after it.
    let resized = unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb as *mut _, (ICMP_OFF + len as usize) as u32, 0) };
    let written = resized == 0
        && ctx.store(0, &eth, 0).is_ok()
        && ctx.store(IP_OFF, &ip_head, 0).is_ok()
        && ctx.store(IP_OFF + 8, &target, 0).is_ok()
        && ctx.store(IP_OFF + 24, &src, 0).is_ok()
        && ctx.store(ICMP_OFF, &message_head, 0).is_ok()
        && ctx.store(ICMP_OFF + 8, &target, 0).is_ok()
        && ctx.store(ICMP_OFF + MESSAGE_LEN, &option, 0).is_ok();
    if !written {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    count(ctx, Counter::NdpReplied);
    // Out of the same host-side veth, i.e. back into the asking container.
    // SAFETY: helper call with plain integer arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
