//! Overlay networks across the nodes of a cluster, over one VXLAN device per node in external
//! (`collect_md`) mode: a packet to an endpoint on another node leaves by that device with a
//! tunnel key (the network's VNI, the node's underlay address) set here; a packet arriving by it
//! carries the key it came with. Endpoints on other nodes are in `ENDPOINTS` like local ones, with
//! their node's underlay address and VNI (see `EndpointInfo`), so ARP, isolation and `icc` treat
//! them alike; this module owns `OVERLAY_VNIS` (VNI -> datapath network), the tunnel keys and the
//! check of what arrives.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use datapath_common::{Counter, EndpointInfo, PortKey, GATEWAY_MAC, MAX_MESH_BACKENDS, MAX_OVERLAY_NETWORKS};

use crate::{
    counters::{bump, count, drop_packet},
    headers::{ptr_at, write_mac, EthHdr},
    mem::zero,
};

/// VNI -> the datapath network id of the overlay network with that VNI on this node.
#[map(name = "OVERLAY_VNIS")]
pub static OVERLAY_VNIS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_OVERLAY_NETWORKS, 0);

/// (backend address, port, protocol) of the backends on this node of the cluster's services ->
/// the service's datapath id: what another node may balance a connection from outside to
/// (routing mesh). Nothing else here is reachable through the tunnel from an address that is
/// not an endpoint.
#[map(name = "MESH_BACKENDS")]
pub static MESH_BACKENDS: HashMap<PortKey, u32> = HashMap::with_max_entries(MAX_MESH_BACKENDS, 0);

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

/// Sends the frame to `mac` on the node and VNI of `tunnel` through the VXLAN device `ifindex`;
/// counted as `counter` (and `to_overlay`). One way out on failure, one traced count on
/// success: it is inlined on many paths of `from_container`, each tail costs the verifier.
#[inline(always)]
pub fn send(ctx: &TcContext, mac: &[u8; 6], ifindex: u32, tunnel: &Tunnel, counter: Counter) -> i32 {
    let sent = match ptr_at::<EthHdr>(ctx, 0) {
        Some(eth) => {
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe {
                write_mac(&raw mut (*eth).dst, mac);
                write_mac(&raw mut (*eth).src, &GATEWAY_MAC);
            }
            // SAFETY: helper call with plain integer arguments.
            set_tunnel(ctx.skb.skb, tunnel.remote, tunnel.vni) && unsafe { bpf_redirect(ifindex, 0) } == TC_ACT_REDIRECT as i64
        }
        None => false,
    };
    if !sent {
        return drop_packet(ctx, Counter::DropRedirectFailed);
    }
    if counter != Counter::ToOverlay {
        bump(Counter::ToOverlay);
    }
    count(ctx, counter);
    TC_ACT_REDIRECT as i32
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
