//! Overlay networks across the nodes of a cluster, over one VXLAN device per node in external
//! (`collect_md`) mode: a packet to an endpoint on another node leaves by that device with a
//! tunnel key (the network's VNI, the node's underlay address) set here; a packet arriving by it
//! carries the key it came with. Endpoints on other nodes are in `ENDPOINTS` like local ones, with
//! their node's underlay address and VNI (see `EndpointInfo`), so ARP, isolation and `icc` treat
//! them alike; this module owns `OVERLAY_VNIS` (VNI -> datapath network), the tunnel keys and the
//! check of what arrives.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key},
    helpers::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::map,
    maps::HashMap,
};
use datapath_common::{EndpointInfo, MAX_OVERLAY_NETWORKS};

use crate::mem::zero;

/// VNI -> the datapath network id of the overlay network with that VNI on this node.
#[map(name = "OVERLAY_VNIS")]
pub static OVERLAY_VNIS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_OVERLAY_NETWORKS, 0);

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
