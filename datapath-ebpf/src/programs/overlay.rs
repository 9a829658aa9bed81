//! What other nodes send to this one through the overlay: the `from_overlay` program (TC
//! ingress of the node's VXLAN device) and, where the datapath does VXLAN itself, the packets
//! `from_uplink` takes the VXLAN headers off (`arrived`, shared by both). Accepted only when everything agrees with what etcd says, the VNI being an overlay
//! network of this node in every case:
//! - between endpoints: the inner source is an endpoint of that network on the node that sent
//!   the packet (the outer source), the inner destination an endpoint of that network here;
//!   `icc=false` holds as on one host. Delivered like a packet between two local containers,
//!   straight into the receiver's namespace (the answer of a connection made through a service
//!   VIP to a backend there has the VIP restored first);
//! - routing mesh, from a client outside the cluster to a backend here of a cluster service, that
//!   the sending node (a live node of the cluster: `OVERLAY_PEERS`) took on its published port
//!   and balanced here: only to a backend address and port in `MESH_BACKENDS`, the connection
//!   tracked with the node it came through, so that the backend's answers go back through it
//!   (the backend sees the client's own address);
//! - the answers of such a connection this node balanced to a backend there: sent out to the
//!   client with this node's published address and port restored.
use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::IPPROTO_TCP,
    ct_action, ct_state, endpoint_flags, iface_flags, Counter, EndpointInfo, IpKey, PortKey, GATEWAY_MAC,
};

use crate::{
    checksum::{decrement_hop_limit, decrement_ttl},
    conntrack::{self, now_ns, observe, Port},
    counters::drop_packet,
    headers::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6},
    maps::{ENDPOINTS, IFACES},
    nat::{self, Translation},
    ndp,
    overlay::{self, network_of, tunnel_of, underlay_of, Tunnel},
    route,
};

#[inline(always)]
pub fn from_overlay(ctx: &TcContext) -> i32 {
    match tunnel_of(ctx.skb.skb) {
        Some(tunnel) => arrived(ctx, &tunnel),
        None => drop_packet(ctx, Counter::DropOverlayUnknownVni),
    }
}

/// The `from_underlay` program (tail-called by `from_uplink`): a packet whose VXLAN headers the
/// datapath took off.
#[inline(always)]
pub fn from_underlay(ctx: &TcContext) -> i32 {
    match overlay::handed_over() {
        Some(tunnel) => arrived(ctx, &tunnel),
        None => drop_packet(ctx, Counter::DropOverlayUnknownVni),
    }
}

/// A packet another node sent by `tunnel`, its VXLAN headers gone (taken off by the VXLAN
/// device, or by `from_uplink` where the datapath does VXLAN itself): checked and delivered.
#[inline(always)]
pub fn arrived(ctx: &TcContext, tunnel: &Tunnel) -> i32 {
    let tunnel = *tunnel;
    let Some(network_id) = network_of(tunnel.vni) else {
        return drop_packet(ctx, Counter::DropOverlayUnknownVni);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IPV6.to_be() {
        return arrived_v6(ctx, eth, &tunnel, network_id);
    }
    if ether_type != ETH_P_IP.to_be() {
        // ARP is answered on each node: none crosses the tunnel.
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    // SAFETY: read-only lookups of plain-old-data values, copied out.
    let dest = unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(daddr)) }.copied();
    let Some(sender) = (unsafe { ENDPOINTS.get(&IpKey::from_ipv4_octets(saddr)) }).copied() else {
        // Not an endpoint: only a mesh connection from outside, to a backend here.
        return match dest {
            Some(dest) if !dest.is_remote() && dest.network_id == network_id => match conntrack::parse(ctx) {
                Some(flow) => mesh_in(ctx, &tunnel, &dest, &flow),
                None => drop_packet(ctx, Counter::DropMalformed),
            },
            _ => drop_packet(ctx, Counter::DropOverlaySpoofed),
        };
    };
    let genuine = sender.is_remote() && sender.network_id == network_id && underlay_of(&sender) == tunnel.remote;
    if !genuine {
        return drop_packet(ctx, Counter::DropOverlaySpoofed);
    }
    let Some(dest) = dest else {
        // Beyond the network: the answer of a connection this node balanced to that backend.
        if sender.flags & endpoint_flags::SERVICE_BACKEND != 0 {
            return mesh_out(ctx, &tunnel);
        }
        return drop_packet(ctx, Counter::DropOverlayDestination);
    };
    if dest.is_remote() || dest.network_id != network_id {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    if sender.flags & endpoint_flags::SERVICE_BACKEND != 0 {
        if let Some(verdict) = nat::answer_via_vip(ctx) {
            return verdict;
        }
    }
    if icc_disabled(&dest) {
        return drop_packet(ctx, Counter::DropIcc);
    }
    route::into_container(ctx, eth, &dest.mac, &GATEWAY_MAC, dest.host_ifindex, Counter::FromOverlay)
}

/// An IPv6 packet another node sent by `tunnel` on overlay network `network_id`: only between
/// endpoints, checked as IPv4's (the inner source an endpoint of that network on the sending
/// node, the destination one of that network here, `icc`); neighbour discovery is answered on
/// each node and multicast goes nowhere: neither crosses the tunnel. A backend's answer to a
/// connection this node balanced to it through a service's VIP6 leaves here from the VIP6; the
/// routing mesh (from outside) as IPv4's.
#[inline(always)]
fn arrived_v6(ctx: &TcContext, eth: *mut EthHdr, tunnel: &Tunnel, network_id: u32) -> i32 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HDR_LEN) else {
        return drop_packet(ctx, Counter::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    // ::/8 holds IPv4's keys: an IPv6 packet naming one is no endpoint's.
    if saddr[0].to_ne_bytes()[0] == 0 || daddr[0].to_ne_bytes()[0] == 0 {
        return drop_packet(ctx, Counter::DropOverlaySpoofed);
    }
    // SAFETY: read-only lookups of plain-old-data values.
    let dest = unsafe { ENDPOINTS.get(&IpKey { addr: daddr }) };
    let Some(sender) = (unsafe { ENDPOINTS.get(&IpKey { addr: saddr }) }) else {
        // Not an endpoint: only a mesh connection from outside, to a backend here.
        return match dest {
            Some(dest) if !dest.is_remote() && dest.network_id == network_id => mesh_in_v6(ctx, tunnel, dest),
            _ => drop_packet(ctx, Counter::DropOverlaySpoofed),
        };
    };
    if !sender.is_remote() || sender.network_id != network_id || underlay_of(sender) != tunnel.remote {
        return drop_packet(ctx, Counter::DropOverlaySpoofed);
    }
    let Some(dest) = dest else {
        // Beyond the network: the answer of a connection this node balanced to that backend.
        if sender.flags & endpoint_flags::SERVICE_BACKEND != 0 {
            return mesh_out_v6(ctx, tunnel);
        }
        return drop_packet(ctx, Counter::DropOverlayDestination);
    };
    if dest.is_remote() || dest.network_id != network_id {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    // The link's control is each node's datapath's, as from a local container (the sending node
    // drops it too).
    // SAFETY: bounds-checked by `ptr_at`.
    if let Some(reason) = ndp::link_control_refusal(ctx, unsafe { (*ip).nexthdr }) {
        return drop_packet(ctx, reason);
    }
    if sender.flags & endpoint_flags::SERVICE_BACKEND != 0 {
        if let Some(verdict) = nat::answer_via_vip_v6(ctx) {
            return verdict;
        }
    }
    if icc_disabled(dest) {
        return drop_packet(ctx, Counter::DropIcc);
    }
    route::into_container(ctx, eth, &dest.mac, &GATEWAY_MAC, dest.host_ifindex, Counter::FromOverlay)
}

/// Whether `dest`'s network has `icc=false` here (checked at the receiver: across nodes as on one
/// host).
#[inline(always)]
fn icc_disabled(dest: &EndpointInfo) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { IFACES.get(&dest.host_ifindex) }.is_some_and(|i| i.flags & iface_flags::ICC_DISABLED != 0)
}

/// A packet from a client outside the cluster to `dest`, a backend here, through the node that
/// balanced it: a packet of a connection that node started here, or the first packet of a new
/// one to a backend port of a cluster service. Delivered untranslated (the backend sees the
/// client); the answers are tracked to go back through the same node. `flow`: the packet's, of
/// either family.
#[inline(always)]
fn mesh_in(ctx: &TcContext, tunnel: &Tunnel, dest: &EndpointInfo, flow: &conntrack::Flow) -> i32 {
    // Only a node hands over a client's connection: the outer source becomes where the answers
    // go, so a stranger's datagram could otherwise take a backend's answers for itself.
    if !overlay::is_peer(tunnel.remote) {
        return drop_packet(ctx, Counter::DropOverlayStranger);
    }
    let len = ctx.len();
    let came_by = tunnel.remote.to_be_bytes();
    let backend = PortKey { addr: flow.key.daddr, port: flow.key.dport, proto: flow.key.proto, _pad: 0 };
    let starts = flow.starts_connection() && overlay::is_mesh_backend(&backend);
    if let Some(tracked) = conntrack::lookup(&flow.key) {
        // SAFETY: a map value, read before any packet helper runs.
        let entry = unsafe { &mut *tracked.entry };
        let rewrites = ct_action::REWRITE_SRC | ct_action::REWRITE_DST | ct_action::TUNNEL;
        if entry.ifindex != dest.host_ifindex || entry.action & rewrites != 0 {
            return drop_packet(ctx, Counter::DropOverlaySpoofed);
        }
        if entry.tunnel_underlay != came_by {
            // Another node balanced the same tuple here: the client's traffic moved to it (a
            // datagram, or a new connection on the port of a closing one). Its answers go back
            // that way. Not an open TCP connection's: a SYN spoofed with the client's address
            // through another node would take its answers away (and a reset would follow).
            let open_tcp = flow.key.proto == IPPROTO_TCP && entry.state & (ct_state::CLOSING | ct_state::FIN_SENT) == 0;
            if !starts || open_tcp {
                return drop_packet(ctx, Counter::DropOverlaySpoofed);
            }
            let Some(reply) = conntrack::peer_of(tracked) else { return drop_packet(ctx, Counter::DropOverlaySpoofed) };
            // SAFETY: a map value; a concurrent packet of the same flow writes the same.
            unsafe {
                (*reply).tunnel_underlay = came_by;
                (*reply).tunnel_vni = overlay::vni_bytes(tunnel.vni);
            }
            entry.tunnel_underlay = came_by;
        }
        observe(tracked, flow, len, now_ns());
        // Untranslated: only its MACs and where it goes (the same for either family).
        return nat::deliver(ctx, &Translation::of(entry), Counter::MeshIn);
    }
    if !starts {
        return drop_packet(ctx, Counter::DropOverlaySpoofed);
    }
    let Some(new) = conntrack::new_connection() else { return drop_packet(ctx, Counter::DropCtInsertFailed) };
    new.original.action = ct_action::SERVICE;
    new.original.ifindex = dest.host_ifindex;
    new.original.mac = dest.mac;
    new.original.tunnel_underlay = came_by;
    new.reply.action = ct_action::SERVICE | ct_action::TUNNEL;
    // SAFETY: `skb` points at the program's context for the whole run.
    new.reply.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    new.reply.mac = GATEWAY_MAC;
    new.reply.tunnel_underlay = came_by;
    new.reply.tunnel_vni = overlay::vni_bytes(tunnel.vni);
    new.reply_key = flow.key.reversed();
    if let Err(reason) = conntrack::track(ctx, flow, new, Port::Fixed, len) {
        return drop_packet(ctx, reason);
    }
    nat::deliver(ctx, &Translation::of(&new.original), Counter::MeshIn)
}

/// A backend's answer, through the tunnel, to a client outside that this node balanced to it:
/// the published address and port restored, routed out as any answer of a published port.
#[inline(always)]
fn mesh_out(ctx: &TcContext, tunnel: &Tunnel) -> i32 {
    let Some(flow) = conntrack::parse(ctx) else { return drop_packet(ctx, Counter::DropMalformed) };
    let Some(tracked) = conntrack::lookup(&flow.key) else { return drop_packet(ctx, Counter::DropOverlayDestination) };
    // SAFETY: a map value, read before any packet helper runs.
    let entry = unsafe { &*tracked.entry };
    let translation = Translation::of(entry);
    let answer = ct_action::REWRITE_SRC | ct_action::SERVICE;
    if translation.action != answer || translation.ifindex != 0 || entry.tunnel_underlay != tunnel.remote.to_be_bytes() {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    let now = now_ns();
    // Never the host's to forward untranslated: what cannot leave here is dropped.
    let Some(route) = route::cached_lookup(ctx, &flow, tracked.entry, now) else {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    };
    if !route::fits(ctx, &route) || !decrement_ttl(ctx) {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    observe(tracked, &flow, ctx.len(), now);
    if nat::apply(ctx, &flow, &translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    nat::leave(ctx, &route, Counter::MeshOut)
}

/// [`mesh_in`] for an IPv6 packet.
#[inline(always)]
fn mesh_in_v6(ctx: &TcContext, tunnel: &Tunnel, dest: &EndpointInfo) -> i32 {
    match conntrack::parse_v6(ctx) {
        Some(flow) => mesh_in(ctx, tunnel, dest, flow),
        None => drop_packet(ctx, Counter::DropMalformed),
    }
}

/// As [`mesh_out`] for an IPv6 answer (its translation in per-CPU scratch, the hop limit down).
#[inline(always)]
fn mesh_out_v6(ctx: &TcContext, tunnel: &Tunnel) -> i32 {
    let Some(flow) = conntrack::parse_v6(ctx) else { return drop_packet(ctx, Counter::DropMalformed) };
    let Some(tracked) = conntrack::lookup(&flow.key) else { return drop_packet(ctx, Counter::DropOverlayDestination) };
    // SAFETY: a map value, read before any packet helper runs.
    let entry = unsafe { &*tracked.entry };
    let answer = ct_action::REWRITE_SRC | ct_action::SERVICE;
    if entry.action != answer || entry.ifindex != 0 || entry.tunnel_underlay != tunnel.remote.to_be_bytes() {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    let Some(translation) = nat::translation6_of(entry) else { return drop_packet(ctx, Counter::DropOverlayDestination) };
    let now = now_ns();
    // From the address it leaves with (a route may depend on it).
    let Some(route) = route::cached_lookup_v6_as_host(ctx, flow, &translation.src, tracked.entry, now) else {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    };
    if !route::fits(ctx, &route) || !decrement_hop_limit(ctx) {
        return drop_packet(ctx, Counter::DropOverlayDestination);
    }
    observe(tracked, flow, ctx.len(), now);
    if nat::apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    nat::leave(ctx, &route, Counter::MeshOut)
}
