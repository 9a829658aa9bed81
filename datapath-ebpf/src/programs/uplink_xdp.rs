//! XDP at the uplinks (`bpfnet daemon --xdp native`, or `auto` on a driver that runs XDP before
//! the skb exists): the published path before the kernel allocates an skb. Replies to
//! masqueraded connections, packets of connections to published ports and services, and new
//! connections to them from outside are translated here by the same library code as
//! `programs::uplink` (parsing, conntrack, load balancing, rewrites, delivery, counting: all
//! written once over `packet::Packet`), and redirected to the container's host-side veth, which
//! hands the frame to the container side.
//!
//! Everything else passes on (`XDP_PASS`) to `from_uplink` at TC, which has the skb:
//! - anything but TCP and UDP over IPv4 over Ethernet; IP options; fragments; ICMP (errors are
//!   matched by the packet they quote, which needs variable offsets);
//! - a TCP/UDP checksum the sender left to offload (a veth peer with TX checksum offload puts
//!   only the pseudo-header's sum in the field): only the skb knows, and a frame redirected
//!   here reaches the container without that note, where it would fail verification;
//! - a TTL about to expire, a frame longer than a 1500-byte MTU;
//! - refusals of empty services (TC builds the reset), packets a host socket takes, flows
//!   conntrack does not know;
//! - delivery to an endpoint whose container side has no NAPI (see `iface_flags::XDP_DELIVERY`).
use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    ct_action, iface_flags, Counter,
};

use crate::{
    checksum::{decrement_ttl, offload_placeholder},
    conntrack::{self, now_ns, observe, Flow},
    counters::drop_packet,
    guard,
    headers::{ptr_at, read_at, EthHdr, Ipv4Hdr, ETH_HDR_LEN, ETH_P_IP, IPV4_MF, IPV4_OFFSET_MASK, IP_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
    lb::{self, Choice},
    maps::{ENDPOINTS, IFACES},
    nat::{self, Translation},
};

/// Frames longer than this pass on: a container's veth has a 1500-byte MTU, and the veth drops
/// a redirected frame that does not fit.
const MAX_FRAME: usize = ETH_HDR_LEN + 1500;
/// Ethernet pads shorter frames to this length (without the FCS).
const MIN_FRAME: usize = 60;
/// XDP takes IPv4 headers without options only: the L4 header is here.
const L4_OFF: usize = IP_OFF + 20;

/// Whether the frame holds at least `len` bytes and no more than `len` plus an Ethernet
/// minimum-size padding; by pointer comparisons only (subtracting packet pointers would need
/// CAP_PERFMON from the daemon).
#[inline(always)]
fn holds(ctx: &XdpContext, len: usize) -> bool {
    let (start, end) = crate::packet::Packet::bounds(ctx);
    start + len <= end && end <= start + len.max(MIN_FRAME)
}

/// The frame's length, if it is one XDP translates (the module's list says which pass on);
/// its tuple is then `conntrack::parse`'s, as at TC.
#[inline(always)]
fn takes(ctx: &XdpContext) -> Option<u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        return None;
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (version_ihl, frag_off, ttl, proto, tot_len, saddr, daddr) = unsafe {
        ((*ip).version_ihl, u16::from_be((*ip).frag_off), (*ip).ttl, (*ip).protocol, u16::from_be((*ip).tot_len), (*ip).saddr, (*ip).daddr)
    };
    if version_ihl != 0x45 || frag_off & (IPV4_MF | IPV4_OFFSET_MASK) != 0 || ttl <= 1 {
        return None;
    }
    let frame = IP_OFF + tot_len as usize;
    if frame > MAX_FRAME || !holds(ctx, frame) {
        return None;
    }
    let l4_len = tot_len.checked_sub(20)?;
    let csum_off = match proto {
        IPPROTO_TCP => TCP_CSUM_OFF,
        IPPROTO_UDP => UDP_CSUM_OFF,
        _ => return None,
    };
    let check: u16 = read_at(ctx, L4_OFF + csum_off).ok()?;
    let no_checksum = proto == IPPROTO_UDP && check == 0;
    if !no_checksum && check == offload_placeholder(saddr, daddr, proto, l4_len) {
        return None;
    }
    Some(frame as u32)
}

/// Whether XDP delivers into the container behind host-side veth `ifindex` (on this node).
#[inline(always)]
fn delivers(ifindex: u32) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { IFACES.get(&ifindex) }.is_some_and(|i| i.flags & iface_flags::XDP_DELIVERY != 0)
}

#[inline(always)]
pub fn from_uplink(ctx: &XdpContext) -> u32 {
    let Some(len) = takes(ctx) else { return XDP_PASS };
    let Some(flow) = conntrack::parse(ctx) else { return XDP_PASS };
    let now = now_ns();
    if let Some(tracked) = conntrack::lookup(&flow.key) {
        // SAFETY: a map value, copied before the packet is touched.
        let t = Translation::of(unsafe { &*tracked.entry });
        // As at TC: only entries that take packets from outside, and not the answers a socket
        // of the host owns; none through the tunnel (TC's).
        let here = t.action & ct_action::TUNNEL == 0 && delivers(t.ifindex);
        if !nat::from_outside(&flow.key.saddr, &t) || !here || nat::host_owns_answer(ctx, &flow, &t) {
            return XDP_PASS;
        }
        observe(tracked, &flow, len, now);
        return forward(ctx, &flow, &t, Counter::XdpNatIn);
    }
    // A VIP is reached from its network and the host only.
    let Some(target) = nat::published_target(ctx, &flow, false).filter(|t| t.network == 0) else { return XDP_PASS };
    // Only what XDP would publish is screened here (the host's own traffic passes on unchecked,
    // to TC, which screens it): what the guard refuses, TC drops and counts.
    if guard::uplink_refusal(flow.key.saddr.ipv4_word(), flow.key.daddr.ipv4_word()).is_some() {
        return XDP_PASS;
    }
    let Some(Choice::Backend(backend)) = lb::choose(&target, &flow.key, now) else { return XDP_PASS };
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&backend.addr) }).copied() else { return XDP_PASS };
    if server.is_remote() || !delivers(server.host_ifindex) {
        return XDP_PASS;
    }
    let service = target.service != 0;
    let action = if service { ct_action::SERVICE } else { ct_action::PUBLISHED };
    let t = match nat::track_published(ctx, &flow, &backend, &server, action, len) {
        Some(Ok(t)) => t,
        Some(Err(reason)) => return drop_packet(ctx, reason),
        None => return XDP_PASS,
    };
    forward(ctx, &flow, &t, if service { Counter::XdpServiceBalanced } else { Counter::XdpNatIn })
}

/// Translates the packet as `t` says, with the TTL down by one (a router's hop; `takes` let no
/// expiring one in), and redirects it into `t`'s container.
#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow, t: &Translation, counter: Counter) -> u32 {
    if !decrement_ttl(ctx) || nat::apply(ctx, flow, t).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    nat::deliver(ctx, t, counter)
}
