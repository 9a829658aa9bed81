//! Routed delivery: the kernel's FIB tells where a translated packet leaves and to which
//! neighbour, and the packet is redirected there without a pass through the host stack.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT},
    helpers::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};

use datapath_common::{conntrack::ROUTE_RECHECK_NS, route_flags, uplink_flags, Counter, CtEntry, UplinkInfo};

use crate::{
    conntrack::Flow,
    counters::{count, drop_packet},
    headers::{ptr_at, write_mac},
    maps::UPLINKS,
    packet::Packet,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the FIB sends a packet, when it leaves by an interface.
pub struct Route {
    pub ifindex: u32,
    /// The neighbour is resolved: `smac`/`dmac` are the MACs to write.
    resolved: bool,
    /// It leaves by a veth uplink (see [`uplink`]).
    pub veth: bool,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The uplink `route` leaves by, if it is one; notes in the route whether it is a veth.
#[inline(always)]
pub fn uplink(route: &mut Route) -> Option<&'static UplinkInfo> {
    // SAFETY: read-only lookup of a plain-old-data value.
    let uplink = unsafe { UPLINKS.get(&route.ifindex) }?;
    route.veth = uplink.flags & uplink_flags::VETH != 0;
    Some(uplink)
}

/// The coarse clock of cached routes: units of 2^20 ns.
#[inline(always)]
fn route_clock(now_ns: u64) -> u32 {
    (now_ns >> 20) as u32
}

/// Caches `route` in a connection's entry, when the neighbour was resolved (`now_ns`: the clock).
#[inline(always)]
pub fn cache(entry: &mut CtEntry, route: &Route, now_ns: u64) {
    if route.resolved {
        entry.route_ifindex = route.ifindex;
        entry.route_smac = route.smac;
        entry.route_dmac = route.dmac;
        entry.route_flags = if route.veth { route_flags::VETH } else { 0 };
        entry.route_checked = route_clock(now_ns);
    }
}

/// The route of a routed connection's packet: the one cached in its entry while it is fresh,
/// else the FIB's answer, cached when the neighbour was resolved.
#[inline(always)]
pub fn cached_lookup(ctx: &TcContext, flow: &Flow, entry: *mut CtEntry, now_ns: u64) -> Option<Route> {
    cached_or(entry, now_ns, || lookup(ctx, flow))
}

/// As [`cached_lookup`] for an IPv6 connection.
#[inline(always)]
pub fn cached_lookup_v6(ctx: &TcContext, flow: &Flow, entry: *mut CtEntry, now_ns: u64) -> Option<Route> {
    cached_or(entry, now_ns, || lookup_v6(ctx, flow))
}

/// As [`cached_lookup_v6`] for a packet the host sends as its own from `saddr` (the routing
/// mesh's answer, from a published address): entering by lo, which the daemon lets forward
/// IPv6, as the interface it arrived on (an uplink, the VXLAN device) does not.
#[inline(always)]
pub fn cached_lookup_v6_as_host(ctx: &TcContext, flow: &Flow, saddr: &[u32; 4], entry: *mut CtEntry, now_ns: u64) -> Option<Route> {
    let k = &flow.key;
    cached_or(entry, now_ns, || route_of(fib_from(ctx, LOOPBACK_IFINDEX, Addresses::V6(saddr, &k.daddr.addr), k.proto, k.sport, k.dport)?))
}

/// The loopback interface's index (always 1).
const LOOPBACK_IFINDEX: u32 = 1;

#[inline(always)]
fn cached_or(entry: *mut CtEntry, now_ns: u64, fresh: impl FnOnce() -> Option<Route>) -> Option<Route> {
    // SAFETY: a map value; concurrent refreshes write the same answer.
    let e = unsafe { &mut *entry };
    if let Some(route) = cached(e, now_ns) {
        return Some(route);
    }
    let mut route = fresh()?;
    uplink(&mut route);
    cache(e, &route, now_ns);
    Some(route)
}

/// The route cached in a connection's entry, while it is fresh.
#[inline(always)]
pub fn cached(e: &CtEntry, now_ns: u64) -> Option<Route> {
    let max_age = route_clock(ROUTE_RECHECK_NS);
    if e.route_ifindex != 0 && route_clock(now_ns).wrapping_sub(e.route_checked) < max_age {
        let veth = e.route_flags & route_flags::VETH != 0;
        return Some(Route { ifindex: e.route_ifindex, resolved: true, veth, smac: e.route_smac, dmac: e.route_dmac });
    }
    None
}

/// The FIB request and answer live here, not on the 512-byte stack.
#[map(name = "FIB_SCRATCH")]
static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Looks up the route of `flow`'s destination as the kernel would forward it, entering by the
/// interface the packet arrived on. `None` when the kernel would not forward it (a local
/// address, no route, forwarding off): the host stack then decides.
#[inline(always)]
pub fn lookup(ctx: &TcContext, flow: &Flow) -> Option<Route> {
    let k = &flow.key;
    route_of(fib_of(ctx, Addresses::V4(k.saddr.ipv4_word(), k.daddr.ipv4_word()), k.proto, k.sport, k.dport)?)
}

/// As [`lookup`] for an IPv6 flow.
#[inline(always)]
pub fn lookup_v6(ctx: &TcContext, flow: &Flow) -> Option<Route> {
    let k = &flow.key;
    route_of(fib_of(ctx, Addresses::V6(&k.saddr.addr, &k.daddr.addr), k.proto, k.sport, k.dport)?)
}

/// A FIB request's source and destination, wire-order words.
enum Addresses<'a> {
    V4(u32, u32),
    V6(&'a [u32; 4], &'a [u32; 4]),
}

/// A FIB answer as a route: the neighbour resolved or to be resolved by the kernel.
#[inline(always)]
fn route_of((rc, params): (i64, &'static bpf_fib_lookup)) -> Option<Route> {
    let resolved = rc == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if !resolved && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    Some(Route { ifindex: params.ifindex, resolved, veth: false, smac: params.smac, dmac: params.dmac })
}

/// The route of an IPv4 packet from `saddr` to `daddr` (wire-order words) as the kernel would
/// forward it, entering by the interface the packet arrived on: as [`lookup`], for a packet the
/// datapath makes (a tunnel's outer header).
#[inline(always)]
pub fn lookup_addrs(ctx: &TcContext, saddr: u32, daddr: u32, proto: u8) -> Option<Route> {
    route_of(fib_of(ctx, Addresses::V4(saddr, daddr), proto, 0, 0)?)
}

/// As [`lookup_addrs`] for IPv6 (`saddr`/`daddr` in wire-order words).
#[inline(always)]
pub fn lookup_addrs_v6(ctx: &TcContext, saddr: &[u32; 4], daddr: &[u32; 4], proto: u8) -> Option<Route> {
    route_of(fib_of(ctx, Addresses::V6(saddr, daddr), proto, 0, 0)?)
}

#[inline(always)]
fn fib_of(ctx: &TcContext, addresses: Addresses, proto: u8, sport: u16, dport: u16) -> Option<(i64, &'static bpf_fib_lookup)> {
    // SAFETY: `skb` points at the program's context for the whole run.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    fib_from(ctx, ingress, addresses, proto, sport, dport)
}

/// As [`fib_of`], entering by the interface `ingress`.
#[inline(always)]
fn fib_from(ctx: &TcContext, ingress: u32, addresses: Addresses, proto: u8, sport: u16, dport: u16) -> Option<(i64, &'static bpf_fib_lookup)> {
    let slot = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let params = unsafe { &mut *slot };
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request: plain integers.
    unsafe { crate::mem::zero(params) };
    params.l4_protocol = proto;
    params.sport = sport;
    params.dport = dport;
    // tot_len stays 0: no MTU check here, as a GSO super-packet is longer than any MTU; the
    // device segments it.
    params.ifindex = ingress;
    match addresses {
        Addresses::V4(saddr, daddr) => {
            params.family = AF_INET;
            params.__bindgen_anon_3.ipv4_src = saddr;
            params.__bindgen_anon_4.ipv4_dst = daddr;
        }
        Addresses::V6(saddr, daddr) => {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = *saddr;
            params.__bindgen_anon_4.ipv6_dst = *daddr;
        }
    }
    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(ctx.skb.skb as *mut _, params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    Some((rc, params))
}

/// Whether the packet fits the MTU of the interface `route` leaves by (a GSO packet: its
/// segments). One that does not is left to the host stack untranslated, which answers
/// "fragmentation needed" to the container (or fragments it) instead of it being lost.
#[inline(always)]
pub fn fits(ctx: &TcContext, route: &Route) -> bool {
    let mut mtu_len: u32 = 0;
    // SAFETY: helper on the program's own context with a valid out-parameter.
    let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, route.ifindex, &mut mtu_len, 0, 0) };
    rc == 0
}

/// Sends the packet out along `route`: with the neighbour's MAC when the FIB knew it, otherwise
/// through the kernel's neighbour resolution. `true` when the redirect was accepted.
#[inline(always)]
pub fn send(ctx: &TcContext, route: &Route) -> bool {
    let verdict = if route.resolved {
        let (Ok(()), Ok(())) = (store_mac(ctx, 0, &route.dmac), store_mac(ctx, 6, &route.smac)) else {
            return false;
        };
        // SAFETY: helper calls with plain integer arguments.
        if route.veth {
            // Transmitting on a veth means arriving at its peer: go there directly (we run at
            // ingress, where bpf_redirect_peer is allowed).
            unsafe { bpf_redirect_peer(route.ifindex, 0) }
        } else {
            unsafe { bpf_redirect(route.ifindex, 0) }
        }
    } else {
        // SAFETY: no parameters: the kernel finds the next hop from the packet's destination.
        unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    verdict == TC_ACT_REDIRECT as i64
}

/// Writes a MAC at `offset` with `write_mac` (a `[u8; 6]` copy would call a byte-loop subprogram).
#[inline(always)]
fn store_mac(ctx: &impl Packet, offset: usize, mac: &[u8; 6]) -> Result<(), i64> {
    let dst = ptr_at::<[u8; 6]>(ctx, offset).ok_or(-1i64)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe { write_mac(dst, mac) };
    Ok(())
}

/// Rewrites the Ethernet header of a packet delivered into a container: from the gateway to
/// the container's MAC.
#[inline(always)]
pub fn set_macs_for_container(ctx: &impl Packet, container_mac: &[u8; 6]) -> Result<(), i64> {
    store_mac(ctx, 0, container_mac)?;
    store_mac(ctx, 6, &datapath_common::GATEWAY_MAC)
}


/// Delivers an Ethernet frame as a bridge would, into the namespace of the endpoint whose
/// host-side veth is `ifindex`, addressed `dst` from `src`; counted as `counter`.
#[inline(always)]
pub fn into_container<P: Packet>(ctx: &P, eth: *mut crate::headers::EthHdr, dst: &[u8; 6], src: &[u8; 6], ifindex: u32, counter: Counter) -> P::Verdict {
    // SAFETY: `eth` was bounds-checked by `ptr_at` (by the caller).
    unsafe {
        write_mac(&raw mut (*eth).dst, dst);
        write_mac(&raw mut (*eth).src, src);
    }
    redirected(ctx, ctx.redirect_into_container(ifindex), counter)
}

/// The verdict of a redirect the kernel accepted (`Some`), counted as `counter`, or a drop.
#[inline(always)]
pub fn redirected<P: Packet>(ctx: &P, verdict: Option<P::Verdict>, counter: Counter) -> P::Verdict {
    match verdict {
        Some(verdict) => {
            count(ctx, counter);
            verdict
        }
        None => drop_packet(ctx, Counter::DropRedirectFailed),
    }
}
