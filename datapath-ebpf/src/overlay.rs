//! Overlay networks across the nodes of a cluster, over one VXLAN device per node in external
//! (`collect_md`) mode: a packet to an endpoint on another node leaves by that device with a
//! tunnel key (the network's VNI, the node's underlay address) set here; a packet arriving by it
//! carries the key it came with. Endpoints on other nodes are in `ENDPOINTS` like local ones, with
//! their node's underlay address and VNI (see `EndpointInfo`), so ARP, isolation and `icc` treat
//! them alike; this module owns `OVERLAY_VNIS` (VNI -> datapath network), `OVERLAY_PEERS` (the
//! other live nodes), the tunnel keys and the check of what arrives.
use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT,
    },
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use datapath_common::{
    conntrack::IPPROTO_UDP,
    Counter, EndpointInfo, PortKey, GATEWAY_MAC, MAX_MESH_BACKENDS, MAX_OVERLAY_NETWORKS, MAX_OVERLAY_PEERS, OVERLAY_NODE_ENTRIES, VXLAN_PORT,
};

use crate::{
    checksum,
    conntrack,
    counters::{bump, count, drop_packet},
    headers::{ptr_at, read_at, Ipv4Hdr, ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6, IPV4_MF, IPV4_OFFSET_MASK, IP_OFF},
    mem::zero,
    route,
};

/// This node's underlay address (network order) when the datapath encapsulates VXLAN itself
/// (see `encapsulate`); 0: the node's VXLAN device does it.
#[map(name = "OVERLAY_NODE")]
pub static OVERLAY_NODE: Array<u32> = Array::with_max_entries(OVERLAY_NODE_ENTRIES, 0);

/// This node's underlay address (network order), or 0 where its VXLAN device does VXLAN.
#[inline(always)]
fn local_underlay() -> u32 {
    OVERLAY_NODE.get(0).copied().unwrap_or(0)
}

/// What VXLAN adds in front of the inner IPv4 packet, after the outer Ethernet header: outer
/// IPv4 (20), UDP (8), VXLAN (8), inner Ethernet (14).
pub const VXLAN_HEADERS: usize = 50;
const OUTER_UDP_OFF: usize = IP_OFF + 20;
const VXLAN_OFF: usize = OUTER_UDP_OFF + 8;
/// VXLAN's flags: the VNI is valid.
const VXLAN_VNI_VALID: u8 = 0x08;
/// Source ports of the outer UDP header (as Linux's VXLAN: a hash of the inner flow, for ECMP).
const SOURCE_PORT_MIN: u32 = 49_152;

/// Entry 0: the `from_underlay` program, which `from_uplink` hands a packet whose VXLAN headers
/// it took off (a tail call: the checks and delivery of `arrived` get a stack of their own).
#[map(name = "OVERLAY_PROGS")]
static OVERLAY_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The tunnel of the packet handed over to `from_underlay` (same CPU, same packet).
#[map(name = "TUNNEL_SCRATCH")]
static TUNNEL_SCRATCH: PerCpuArray<Tunnel> = PerCpuArray::with_max_entries(1, 0);

/// The headers a packet gets, built here off the 512-byte stack.
#[map(name = "ENCAP_SCRATCH")]
static ENCAP_SCRATCH: PerCpuArray<[u8; VXLAN_HEADERS]> = PerCpuArray::with_max_entries(1, 0);

/// VNI -> the datapath network id of the overlay network with that VNI on this node.
#[map(name = "OVERLAY_VNIS")]
pub static OVERLAY_VNIS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_OVERLAY_NETWORKS, 0);

/// (backend address, port, protocol) of the backends on this node of the cluster's services ->
/// the service's datapath id: what another node may balance a connection from outside to
/// (routing mesh). Nothing else here is reachable through the tunnel from an address that is
/// not an endpoint.
#[map(name = "MESH_BACKENDS")]
pub static MESH_BACKENDS: HashMap<PortKey, u32> = HashMap::with_max_entries(MAX_MESH_BACKENDS, 0);

/// The underlay addresses (network order) of the cluster's other live nodes, as etcd lists them:
/// whoever else sends VXLAN here is a stranger. An endpoint's packets are checked against its
/// own node instead (`EndpointInfo::underlay`).
#[map(name = "OVERLAY_PEERS")]
static OVERLAY_PEERS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(MAX_OVERLAY_PEERS, 0);

/// The outer header's TTL (the underlay is routed).
const TUNNEL_TTL: u8 = 64;
const KEY_SIZE: u32 = core::mem::size_of::<bpf_tunnel_key>() as u32;

/// Sets the tunnel key that sends the packet to `dest`'s node. Not inlined: the 44-byte key takes
/// a frame of its own, beside `from_container`'s (near the 512-byte stack limit), and calls
/// nothing that adds to it.
#[inline(never)]
pub fn set_tunnel(skb: *mut __sk_buff, underlay: u32, vni: u32) -> bool {
    let mut slot = core::mem::MaybeUninit::<bpf_tunnel_key>::uninit();
    // SAFETY: plain data, every byte written by `zero` before it is read.
    let key = unsafe {
        zero(slot.assume_init_mut());
        slot.assume_init_mut()
    };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = underlay;
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: helper call with the program's context and a key on the stack.
    unsafe { bpf_skb_set_tunnel_key(skb, key, KEY_SIZE, 0) == 0 }
}

/// The tunnel a packet arrived by: its VNI and the sending node's underlay address (host order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tunnel {
    pub vni: u32,
    pub remote: u32,
}

#[inline(never)]
pub fn tunnel_of(skb: *mut __sk_buff) -> Option<Tunnel> {
    let mut slot = core::mem::MaybeUninit::<bpf_tunnel_key>::uninit();
    // SAFETY: plain data, every byte written by `zero` before it is read.
    let key = unsafe {
        zero(slot.assume_init_mut());
        slot.assume_init_mut()
    };
    // SAFETY: helper call with the program's context and a key on the stack.
    if unsafe { bpf_skb_get_tunnel_key(skb, key, KEY_SIZE, 0) } != 0 {
        return None;
    }
    // SAFETY: an IPv4 tunnel's key holds the IPv4 member.
    Some(Tunnel { vni: key.tunnel_id, remote: unsafe { key.__bindgen_anon_1.remote_ipv4 } })
}

/// Sends the frame to `mac` on the node and VNI of `tunnel` (`ifindex`: the node's VXLAN
/// device); counted as `counter` (and `to_overlay`). Encapsulated here and routed out when the
/// datapath does VXLAN itself, else through the device. One way out on failure, one traced count
/// on success: it is inlined on many paths of `from_container`, each tail costs the verifier.
#[inline(always)]
pub fn send(ctx: &TcContext, mac: &[u8; 6], ifindex: u32, tunnel: &Tunnel, counter: Counter) -> i32 {
    let local = local_underlay();
    let sent = if local != 0 { encapsulate(ctx, mac, tunnel, local) } else { through_device(ctx, mac, ifindex, tunnel) };
    if !sent {
        return drop_packet(ctx, Counter::DropRedirectFailed);
    }
    if counter != Counter::ToOverlay {
        bump(Counter::ToOverlay);
    }
    count(ctx, counter);
    TC_ACT_REDIRECT as i32
}

/// To `dest`, an endpoint of the sender's (overlay) network on another node: by the tunnel of
/// that node and the network's VNI.
#[inline(always)]
pub fn to_other_node(ctx: &TcContext, dest: &EndpointInfo) -> i32 {
    let tunnel = Tunnel { vni: dest.vni, remote: underlay_of(dest) };
    send(ctx, &dest.mac, dest.host_ifindex, &tunnel, Counter::ToOverlay)
}

/// Through the node's VXLAN device (external mode), with the tunnel key set.
#[inline(always)]
fn through_device(ctx: &TcContext, mac: &[u8; 6], ifindex: u32, tunnel: &Tunnel) -> bool {
    // SAFETY: helper call with plain integer arguments.
    route::set_macs_for_container(ctx, mac).is_ok()
        && set_tunnel(ctx.skb.skb, tunnel.remote, tunnel.vni)
        && unsafe { bpf_redirect(ifindex, 0) } == TC_ACT_REDIRECT as i64
}

/// Wraps the frame in VXLAN here (outer IPv4 from `local`, this node's underlay address, to the
/// tunnel's node; UDP to 4789; the VNI; an inner Ethernet header to `mac`) and sends it out
/// along the underlay's route: no VXLAN device, no pass through the host's IP stack. A GSO
/// packet stays one (the kernel segments it with its outer headers). Not inlined: its frame
/// (the header's checksum) stays off the callers' stack, and the verifier checks it once per
/// distinct state.
#[inline(never)]
fn encapsulate(ctx: &TcContext, mac: &[u8; 6], tunnel: &Tunnel, local: u32) -> bool {
    let inner_len = ctx.len().saturating_sub(ETH_HDR_LEN as u32);
    // The inner frame's own type (IPv4 or IPv6) goes in its new header.
    let Ok(inner_type) = ctx.load::<u16>(12) else { return false };
    // Entropy for the underlay's ECMP: the inner addresses (of IPv6's, their last words, where
    // the endpoints of a network differ).
    let (src_off, dst_off) = if inner_type == ETH_P_IPV6.to_be() { (IP_OFF + 20, IP_OFF + 36) } else { (IP_OFF + 12, IP_OFF + 16) };
    let (Ok(inner_src), Ok(inner_dst)) = (ctx.load::<u32>(src_off), ctx.load::<u32>(dst_off)) else { return false };
    let hash = datapath_common::services::flow_hash(inner_src, inner_dst, 0, 0, 0);
    let remote = tunnel.remote.to_be();
    let Some(h) = ENCAP_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let h = unsafe { &mut *h };
    let total = (inner_len as usize + VXLAN_HEADERS) as u16;
    let udp_len = total - 20;
    let sport = (SOURCE_PORT_MIN + hash % (65_536 - SOURCE_PORT_MIN)) as u16;
    let [l0, l1, l2, l3] = local.to_ne_bytes();
    let [r0, r1, r2, r3] = remote.to_ne_bytes();
    let [v1, v2, v3] = vni_bytes(tunnel.vni);
    let [t0, t1] = total.to_be_bytes();
    let [u0, u1] = udp_len.to_be_bytes();
    let [s0, s1] = sport.to_be_bytes();
    let [p0, p1] = VXLAN_PORT.to_be_bytes();
    let [e0, e1] = inner_type.to_ne_bytes();
    *h = [
        // Outer IPv4: version 4, 20 bytes, DF, TTL 64, UDP; checksum below.
        0x45, 0, t0, t1, 0, 0, 0x40, 0, TUNNEL_TTL, 17, 0, 0, l0, l1, l2, l3, r0, r1, r2, r3,
        // UDP (no checksum: allowed over IPv4, as Linux's VXLAN sends by default).
        s0, s1, p0, p1, u0, u1, 0, 0,
        // VXLAN: flags, reserved, VNI, reserved.
        VXLAN_VNI_VALID, 0, 0, 0, v1, v2, v3, 0,
        // Inner Ethernet: to the endpoint, from the gateway.
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], GATEWAY_MAC[0], GATEWAY_MAC[1], GATEWAY_MAC[2], GATEWAY_MAC[3],
        GATEWAY_MAC[4], GATEWAY_MAC[5], e0, e1,
    ];
    let Ok(ip) = <&[u8; 20]>::try_from(&h[..20]) else { return false };
    let [c0, c1] = checksum::fold(checksum::sum16(ip)).to_ne_bytes();
    h[10] = c0;
    h[11] = c1;
    // The inner Ethernet header's length goes in the flags' top byte (BPF_F_ADJ_ROOM_ENCAP_L2).
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
        as u64
        | (ETH_HDR_LEN as u64) << 56;
    if ctx.adjust_room(VXLAN_HEADERS as i32, BPF_ADJ_ROOM_MAC, flags).is_err() {
        return false;
    }
    if ctx.store(IP_OFF, h, 0).is_err() {
        return false;
    }
    // The outer Ethernet header is the frame's own: its type is the inner packet's (IPv6's
    // would announce an IPv4 header as IPv6).
    if inner_type != ETH_P_IP.to_be() && ctx.store(12, &ETH_P_IP.to_be(), 0).is_err() {
        return false;
    }
    let Some(mut route) = route::lookup_addrs(ctx, local, remote, 17) else { return false };
    route::uplink(&mut route);
    route::send(ctx, &route)
}

/// Whether a packet arriving on an uplink is VXLAN for this node's datapath to take apart
/// (IPv4 without options, UDP to 4789, to this node's underlay address).
#[inline(always)]
pub fn is_vxlan_here(ctx: &TcContext) -> bool {
    // Every packet of every uplink asks: nothing read where the datapath does no VXLAN, and the
    // outer header read directly, not by helper calls.
    let local = local_underlay();
    if local == 0 {
        return false;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, IP_OFF) else { return false };
    // SAFETY: bounds-checked by `ptr_at`.
    let (version_ihl, proto, daddr, frag_off) = unsafe { ((*ip).version_ihl, (*ip).protocol, (*ip).daddr, (*ip).frag_off) };
    // A fragment is the kernel's to reassemble (its VXLAN device then takes the datagram): a
    // later one's payload could pose as a UDP header to port 4789.
    version_ihl == 0x45
        && proto == IPPROTO_UDP
        && u16::from_be(frag_off) & (IPV4_MF | IPV4_OFFSET_MASK) == 0
        && u32::from_ne_bytes(daddr) == local
        && read_at::<u16>(ctx, OUTER_UDP_OFF + 2).ok() == Some(VXLAN_PORT.to_be())
}

/// Takes the VXLAN headers off a packet [`is_vxlan_here`] accepted: the tunnel it came by (its
/// VNI, the sending node's underlay address), the frame left with the inner packet behind the
/// outer Ethernet header. `None`: not VXLAN as expected (nothing changed).
#[inline(always)]
pub fn decapsulate(ctx: &TcContext) -> Option<Tunnel> {
    let flags: u8 = ctx.load(VXLAN_OFF).ok()?;
    let vni: [u8; 4] = ctx.load(VXLAN_OFF + 4).ok()?;
    let remote: u32 = ctx.load(IP_OFF + 12).ok()?;
    let inner_type: u16 = ctx.load(VXLAN_OFF + 8 + 12).ok()?;
    // The inner packet's family, for the kernel's view of the frame once the outer headers go.
    let inner_family = match inner_type {
        t if t == ETH_P_IP.to_be() => BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        t if t == ETH_P_IPV6.to_be() => BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
        _ => return None,
    };
    if flags & VXLAN_VNI_VALID == 0 {
        return None;
    }
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO | inner_family;
    ctx.adjust_room(-(VXLAN_HEADERS as i32), BPF_ADJ_ROOM_MAC, flags as u64).ok()?;
    // The outer Ethernet header stays: its type becomes the inner packet's.
    if inner_type != ETH_P_IP.to_be() {
        ctx.store(12, &inner_type, 0).ok()?;
    }
    Some(Tunnel { vni: vni_of([vni[0], vni[1], vni[2]]), remote: u32::from_be(remote) })
}

/// Hands a packet that came by `tunnel` (its VXLAN headers gone) to `from_underlay`; returns
/// only if that program is not there (the packet is then dropped and counted).
#[inline(always)]
pub fn hand_over(ctx: &TcContext, tunnel: Tunnel) -> i32 {
    if let Some(slot) = TUNNEL_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, read by the program tail-called next on this CPU.
        unsafe {
            *slot = tunnel;
            OVERLAY_PROGS.tail_call(ctx, 0);
        }
    }
    drop_packet(ctx, Counter::DropRedirectFailed)
}

/// The tunnel [`hand_over`] left for `from_underlay`.
#[inline(always)]
pub fn handed_over() -> Option<Tunnel> {
    TUNNEL_SCRATCH.get(0).copied()
}

/// A VNI as a connection entry keeps it (24 bits, network order), and back.
#[inline(always)]
pub fn vni_bytes(vni: u32) -> [u8; 3] {
    let b = vni.to_be_bytes();
    [b[1], b[2], b[3]]
}

#[inline(always)]
pub fn vni_of(bytes: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])
}

/// Whether `key` (destination address, port, protocol) is a backend here of a cluster service.
#[inline(always)]
pub fn is_mesh_backend(key: &PortKey) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { MESH_BACKENDS.get(key) }.is_some()
}

/// Whether `underlay` (host order, as [`Tunnel::remote`]) is another live node of the cluster.
#[inline(always)]
pub fn is_peer(underlay: u32) -> bool {
    is_peer_address(underlay.to_be_bytes())
}

/// Whether `octets` (network order) is another live node's underlay address.
#[inline(always)]
fn is_peer_address(octets: [u8; 4]) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { OVERLAY_PEERS.get(&octets) }.is_some()
}

/// Whether a container's `flow` is a datagram to another node's VXLAN port. Masquerade would
/// send it from this node's underlay address, which that node trusts as this node's tunnel
/// (a forged endpoint's packet, or a routing-mesh connection whose answers this node would be
/// sent): never sent. (A fragment after the first has its first's ports here.)
#[inline(always)]
pub fn is_datagram_to_peer_tunnel(flow: &conntrack::Flow) -> bool {
    flow.key.proto == IPPROTO_UDP
        && flow.key.dport == VXLAN_PORT.to_be()
        && flow.key.daddr.is_ipv4()
        && is_peer_address(flow.key.daddr.ipv4_word().to_ne_bytes())
}

/// The datapath network of `vni`, if this node holds that overlay network.
#[inline(always)]
pub fn network_of(vni: u32) -> Option<u32> {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { OVERLAY_VNIS.get(&vni) }.copied()
}

/// The node an endpoint lives on, as the tunnel key holds it (host order).
#[inline(always)]
pub fn underlay_of(ep: &EndpointInfo) -> u32 {
    u32::from_be_bytes(ep.underlay)
}
