//! NAT on bpfnet's own connection tracking, as a library for the programs (`programs::*`):
//! translations and their rewrites, the entries of new connections (masquerade's reply, a
//! published port's, hairpin, through a VIP), where a new connection to a published port goes,
//! delivery into a container and out of an uplink, and ICMP errors about tracked connections.
use aya_ebpf::{bindings::TC_ACT_REDIRECT, macros::map, maps::PerCpuArray, programs::TcContext, EbpfContext};
use datapath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ct_action, iface_flags, port_flags, Counter, CtEntry, CtKey, EndpointInfo, IfaceInfo, IpKey, PortKey, PortTarget,
};

use crate::{
    checksum::{decrement_hop_limit, decrement_ttl, set_ipv4_addr, set_ipv6_addr, set_l4_u16},
    conntrack::{self, now_ns, observe, Flow, Port},
    counters::{drop_packet, to_host},
    headers::{
        ICMP_CSUM_OFF, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ERROR_QUOTE_OFF, ICMP_ID_OFF, IPPROTO_ICMPV6, IPV6_DADDR_OFF, IPV6_SADDR_OFF,
        IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, UDP_CSUM_OFF,
    },
    maps::{is_host_address_of, ENDPOINTS, IFACES, PORTS},
    overlay,
    packet::Packet,
    route,
};

/// An address family as translations carry its addresses: IPv4 as one wire-order word, IPv6 as
/// four. What differs between the families is written here once; the rest of NAT is generic.
pub trait Address: Copy {
    const IPV6: bool;
    /// The address of a map key (an IPv4 key is IPv4-mapped).
    fn of_key(key: &IpKey) -> Self;
    /// Writes `new` as the packet's source (or destination) address, with every checksum that
    /// covers it (`l4_off`: `None` for a later fragment, which has no L4 header).
    fn write(ctx: &impl Packet, source: bool, new: Self, proto: u8, l4_off: Option<usize>) -> Result<(), i64>;
}

impl Address for u32 {
    const IPV6: bool = false;
    #[inline(always)]
    fn of_key(key: &IpKey) -> Self {
        key.ipv4_word()
    }

    #[inline(always)]
    fn write(ctx: &impl Packet, source: bool, new: Self, proto: u8, l4_off: Option<usize>) -> Result<(), i64> {
        set_ipv4_addr(ctx, IP_OFF + if source { IP_SADDR_OFF } else { IP_DADDR_OFF }, new, proto, l4_off)
    }
}

impl Address for [u32; 4] {
    const IPV6: bool = true;
    #[inline(always)]
    fn of_key(key: &IpKey) -> Self {
        key.addr
    }

    #[inline(always)]
    fn write(ctx: &impl Packet, source: bool, new: Self, proto: u8, l4_off: Option<usize>) -> Result<(), i64> {
        set_ipv6_addr(ctx, IP_OFF + if source { IPV6_SADDR_OFF } else { IPV6_DADDR_OFF }, new, proto, l4_off)
    }
}

/// What the packets of one direction of a connection need from its entry, copied out of the map
/// before the packet helpers run (a concurrent update must not change it half-way): for IPv4
/// 24 bytes on the 512-byte stack, where the whole entry would take 136.
#[derive(Clone, Copy)]
pub struct Translated<A: Address> {
    pub action: u8,
    /// Addresses in wire order, ports in network order.
    pub src: A,
    pub dst: A,
    pub src_port: u16,
    pub dst_port: u16,
    /// Where the packet is delivered: the container's host-side veth (0: routed) and MAC; with
    /// `ct_action::TUNNEL`, the VXLAN device, and the node (host order) and VNI it goes to.
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub tunnel: overlay::Tunnel,
}

/// An IPv4 connection's translation.
pub type Translation = Translated<u32>;
/// An IPv6 connection's translation.
pub type Translation6 = Translated<[u32; 4]>;

impl<A: Address> Translated<A> {
    #[inline(always)]
    pub fn of(entry: &CtEntry) -> Self {
        Self {
            action: entry.action,
            src: A::of_key(&entry.src),
            dst: A::of_key(&entry.dst),
            src_port: entry.src_port,
            dst_port: entry.dst_port,
            ifindex: entry.ifindex,
            mac: entry.mac,
            tunnel: overlay::Tunnel { vni: overlay::vni_of(entry.tunnel_vni), remote: u32::from_be_bytes(entry.tunnel_underlay) },
        }
    }
}

/// Per-CPU room for an IPv6 connection's [`Translation6`] (internal: not pinned): the container
/// program's stack is at its 512-byte limit with IPv4's paths.
#[map(name = "TRANSLATION6")]
static TRANSLATION6: PerCpuArray<Translation6> = PerCpuArray::with_max_entries(1, 0);

/// `entry`'s translation, copied into this CPU's [`TRANSLATION6`] (valid until the program
/// returns).
#[inline(always)]
pub fn translation6_of(entry: &CtEntry) -> Option<&'static Translation6> {
    let slot = TRANSLATION6.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let slot = unsafe { &mut *slot };
    *slot = Translation6::of(entry);
    Some(slot)
}

/// Makes `original` deliver through the tunnel when `server` lives on another node (a
/// service's backend there); the answers come back from that node (`reply`'s tunnel end).
#[inline(always)]
fn through_tunnel_if_remote(original: &mut CtEntry, reply: &mut CtEntry, server: &EndpointInfo) {
    if server.is_remote() {
        original.action |= ct_action::TUNNEL;
        original.tunnel_underlay = server.underlay;
        original.tunnel_vni = overlay::vni_bytes(server.vni);
        reply.tunnel_underlay = server.underlay;
    }
}

/// Writes the translation into the packet of `flow`.
#[inline(always)]
pub fn apply<A: Address>(ctx: &impl Packet, flow: &Flow, t: &Translated<A>) -> Result<(), i64> {
    let proto = flow.key.proto;
    let l4_off = if flow.later_fragment { None } else { Some(flow.l4_off as usize) };
    if t.action & ct_action::REWRITE_SRC != 0 {
        A::write(ctx, true, t.src, proto, l4_off)?;
        set_port(ctx, proto, l4_off, true, t.src_port)?;
    }
    if t.action & ct_action::REWRITE_DST != 0 {
        A::write(ctx, false, t.dst, proto, l4_off)?;
        set_port(ctx, proto, l4_off, false, t.dst_port)?;
    }
    Ok(())
}

#[inline(always)]
fn set_port(ctx: &impl Packet, proto: u8, l4_off: Option<usize>, source: bool, port: u16) -> Result<(), i64> {
    let Some(l4_off) = l4_off else { return Ok(()) };
    let field = match proto {
        IPPROTO_TCP | IPPROTO_UDP => l4_off + if source { 0 } else { 2 },
        // Echo requests carry the identifier as their source "port", replies as their
        // destination: either way it is the same field.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => l4_off + ICMP_ID_OFF,
        _ => return Ok(()),
    };
    set_l4_u16(ctx, field, port, proto, l4_off)
}

/// The container a new connection to a published port goes to: the port published on the exact
/// address, or on every address when the destination is one of the host's (`local`: known to be).
/// `ctx`: the TC or XDP program's.
#[inline(always)]
pub fn published_target<C: EbpfContext>(ctx: &C, flow: &Flow, local: bool) -> Option<PortTarget> {
    published_target_of::<C, false>(ctx, flow, local).copied()
}

/// As [`published_target`] for an IPv6 flow: ports published on IPv6 host addresses. The
/// entry itself, read in place (the container program's stack has no room for a copy).
#[inline(always)]
pub fn published_target_v6<C: EbpfContext>(ctx: &C, flow: &Flow, local: bool) -> Option<&'static PortTarget> {
    published_target_of::<C, true>(ctx, flow, local)
}

#[inline(always)]
fn published_target_of<C: EbpfContext, const V6: bool>(ctx: &C, flow: &Flow, local: bool) -> Option<&'static PortTarget> {
    if !flow.starts_connection() {
        return None;
    }
    let exact = PortKey { addr: flow.key.daddr, port: flow.key.dport, proto: flow.key.proto, _pad: 0 };
    // SAFETY: read-only lookups of plain-old-data values, copied out.
    let target = match unsafe { PORTS.get(&exact) } {
        Some(target) => target,
        None => {
            let target = unsafe { PORTS.get(&PortKey::any_address(flow.key.dport, flow.key.proto, V6)) }?;
            // Every address of the host, as Docker's `--dst-type LOCAL`: not broadcast or multicast.
            let first = flow.key.daddr.addr[if V6 { 0 } else { 3 }].to_ne_bytes()[0];
            let group = if V6 { first == 0xff } else { first >= 224 };
            if group || !(local || is_host_address_of(&flow.key.daddr, V6)) {
                return None;
            }
            target
        }
    };
    // A packet a socket of the host takes (the answer to a connection the host made from a port
    // that happens to be published, or a host service on it unless the publication wins over
    // listeners) stays the host's. A VIP is no address of the host's.
    let connected_only = target.flags & port_flags::OVER_HOST_LISTENERS != 0;
    if target.network == 0 && conntrack::host_socket_owns(ctx, &flow.key, connected_only, V6) {
        return None;
    }
    Some(target)
}

/// A hairpin connection's port on the gateway's address, a host address: always one of the NAT
/// range, never the client's own (masquerade's preference). The client's port comes from the
/// same ephemeral range as the host's own connections, which the datapath does not see: a host
/// connection from the gateway to the server on a port a hairpin entry holds (live, or closed
/// and not yet expired) would have its answers taken into the hairpin's client.
const HAIRPIN_PORT: Port = Port::Allocate { preferred: 0, ipv6: false };
const HAIRPIN_PORT6: Port = Port::Allocate { preferred: 0, ipv6: true };

/// A container's packet to a VIP or a published port that cannot be translated after all (its
/// backend just left, no scratch space): the host's, but never from an internal network, whose
/// packets the host would forward.
#[inline(always)]
fn untranslatable(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    if iface.flags & iface_flags::INTERNAL != 0 {
        return drop_packet(ctx, Counter::DropInternal);
    }
    to_host(ctx)
}

/// A container reaching a published port through a host address: translated to the publishing
/// container, and from the address of that container's gateway, so that its answers come back
/// through the datapath (a container reaching its own port, too).
#[inline(always)]
pub fn hairpin(ctx: &TcContext, flow: &Flow, iface: &IfaceInfo, ifindex: u32, target: &PortTarget, action: u8, len: u32) -> i32 {
    // SAFETY: read-only lookups of plain-old-data values, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&target.addr) }).copied() else { return untranslatable(ctx, iface) };
    let Some(server_iface) = (unsafe { IFACES.get(&server.host_ifindex) }).copied() else { return untranslatable(ctx, iface) };
    if !decrement_ttl(ctx) {
        return drop_packet(ctx, Counter::DropTtlExpired);
    }
    let gateway = IpKey::from_ipv4_octets(server_iface.gateway_ipv4);
    let Some(new) = conntrack::new_connection() else { return untranslatable(ctx, iface) };
    hairpin_connection(new, flow, iface, ifindex, target, &server, gateway, action);
    if let Err(reason) = conntrack::track(ctx, flow, new, HAIRPIN_PORT, len) {
        return drop_packet(ctx, reason);
    }
    let translation = Translation::of(&new.original);
    if apply(ctx, flow, &translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver(ctx, &translation, if action == ct_action::SERVICE { Counter::ServiceBalanced } else { Counter::Hairpin })
}

/// As [`hairpin`] for IPv6: to the publishing container's (or the service backend's) IPv6
/// address, from its network's IPv6 gateway.
#[inline(always)]
pub fn hairpin_v6(ctx: &TcContext, flow: &Flow, iface: &IfaceInfo, ifindex: u32, target: &PortTarget, action: u8, len: u32) -> i32 {
    // SAFETY: read-only lookups of plain-old-data values, read in place (the container
    // program's stack has no room for copies of the entries).
    let Some(server) = (unsafe { ENDPOINTS.get(&target.addr) }) else { return untranslatable(ctx, iface) };
    let Some(gateway) = (unsafe { IFACES.get(&server.host_ifindex) }).map(|i| IpKey { addr: i.gateway_ipv6 }) else { return untranslatable(ctx, iface) };
    if server.is_remote() {
        return untranslatable(ctx, iface);
    }
    if !decrement_hop_limit(ctx) {
        return drop_packet(ctx, Counter::DropTtlExpired);
    }
    let Some(new) = conntrack::new_connection() else { return untranslatable(ctx, iface) };
    hairpin_connection(new, flow, iface, ifindex, target, server, gateway, action);
    if let Err(reason) = conntrack::track(ctx, flow, new, HAIRPIN_PORT6, len) {
        return drop_packet(ctx, reason);
    }
    let Some(translation) = translation6_of(&new.original) else { return untranslatable(ctx, iface) };
    if apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver(ctx, translation, if action == ct_action::SERVICE { Counter::ServiceBalanced } else { Counter::Hairpin })
}

/// The entries of a hairpin connection (see [`hairpin`]): both addresses rewritten each way,
/// delivered into the server and back into the client (`iface`, behind `ifindex`); the answers'
/// tuple from the server to `gateway`, at a port allocated by `conntrack::track`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn hairpin_connection(new: &mut conntrack::NewConnection, flow: &Flow, iface: &IfaceInfo, ifindex: u32, target: &PortTarget, server: &EndpointInfo, gateway: IpKey, action: u8) {
    let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST | action;
    new.original.action = both;
    new.original.src = gateway;
    new.original.dst = target.addr;
    new.original.dst_port = target.port;
    new.original.ifindex = server.host_ifindex;
    new.original.mac = server.mac;
    new.reply.action = both;
    new.reply.src = flow.key.daddr;
    new.reply.src_port = flow.key.dport;
    new.reply.dst = flow.key.saddr;
    new.reply.dst_port = flow.key.sport;
    new.reply.ifindex = ifindex;
    new.reply.mac = iface.mac;
    new.reply_key = CtKey { saddr: target.addr, daddr: gateway, sport: target.port, dport: 0, proto: flow.key.proto, _pad: [0; 3] };
}

/// A container reaching a service VIP of its own network: only the destination becomes the
/// backend, which sees the client's real address. Its answers are matched by the reply entry
/// (see [`answer_via_vip`]) and leave with the VIP as their source.
#[inline(always)]
pub fn via_vip(ctx: &TcContext, flow: &Flow, iface: &IfaceInfo, ifindex: u32, backend: &PortTarget, len: u32) -> i32 {
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&backend.addr) }).copied() else { return untranslatable(ctx, iface) };
    let Some(new) = conntrack::new_connection() else { return untranslatable(ctx, iface) };
    via_vip_connection(new, flow, iface, ifindex, backend, &server);
    if let Err(reason) = conntrack::track(ctx, flow, new, Port::Fixed, len) {
        return drop_packet(ctx, reason);
    }
    let translation = Translation::of(&new.original);
    if apply(ctx, flow, &translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver_anywhere(ctx, &translation, Counter::ServiceBalanced)
}

/// As [`via_vip`] for IPv6: to the backend's IPv6 address, on this node or (a service of the
/// cluster) through the tunnel to another.
#[inline(always)]
pub fn via_vip_v6(ctx: &TcContext, flow: &Flow, iface: &IfaceInfo, ifindex: u32, backend: &PortTarget, len: u32) -> i32 {
    // SAFETY: read-only lookup of a plain-old-data value, read in place (see `hairpin_v6`).
    let Some(server) = (unsafe { ENDPOINTS.get(&backend.addr) }) else { return untranslatable(ctx, iface) };
    let Some(new) = conntrack::new_connection() else { return untranslatable(ctx, iface) };
    via_vip_connection(new, flow, iface, ifindex, backend, server);
    if let Err(reason) = conntrack::track(ctx, flow, new, Port::Fixed, len) {
        return drop_packet(ctx, reason);
    }
    let Some(translation) = translation6_of(&new.original) else { return untranslatable(ctx, iface) };
    if apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    deliver_anywhere(ctx, translation, Counter::ServiceBalanced)
}

/// The entries of a connection through a VIP (see [`via_vip`]): the client's packets to the
/// backend (`server` behind it), the backend's answers from the VIP back into the client
/// (`iface`, behind `ifindex`).
#[inline(always)]
fn via_vip_connection(new: &mut conntrack::NewConnection, flow: &Flow, iface: &IfaceInfo, ifindex: u32, backend: &PortTarget, server: &EndpointInfo) {
    new.original.action = ct_action::REWRITE_DST | ct_action::SERVICE;
    new.original.dst = backend.addr;
    new.original.dst_port = backend.port;
    new.original.ifindex = server.host_ifindex;
    new.original.mac = server.mac;
    new.reply.action = ct_action::REWRITE_SRC | ct_action::SERVICE;
    new.reply.src = flow.key.daddr;
    new.reply.src_port = flow.key.dport;
    new.reply.ifindex = ifindex;
    new.reply.mac = iface.mac;
    new.reply_key =
        CtKey { saddr: backend.addr, daddr: flow.key.saddr, sport: backend.port, dport: flow.key.sport, proto: flow.key.proto, _pad: [0; 3] };
    through_tunnel_if_remote(&mut new.original, &mut new.reply, server);
}

/// Whether `entry` is the backend's side of a connection a container of its network made
/// through a VIP (its answers leave with the VIP as their source).
#[inline(always)]
fn answers_via_vip(entry: &CtEntry) -> bool {
    entry.action == ct_action::REWRITE_SRC | ct_action::SERVICE && entry.ifindex != 0
}

/// A backend's packet to a container of its network: the answer of a connection that container
/// made through a VIP leaves with the VIP as its source (`Some`: handled); anything else is
/// ordinary traffic between two containers (`None`).
#[inline(always)]
pub fn answer_via_vip(ctx: &TcContext) -> Option<i32> {
    let flow = conntrack::parse(ctx)?;
    let tracked = conntrack::lookup(&flow.key)?;
    // SAFETY: a map value, read before any packet helper runs.
    let entry = unsafe { &*tracked.entry };
    if !answers_via_vip(entry) {
        return None;
    }
    let translation = Translation::of(entry);
    observe(tracked, &flow, ctx.len(), now_ns());
    if apply(ctx, &flow, &translation).is_err() {
        return Some(drop_packet(ctx, Counter::DropMalformed));
    }
    Some(deliver(ctx, &translation, Counter::ViaVip))
}

/// As [`answer_via_vip`] for a backend's IPv6 packet.
#[inline(always)]
pub fn answer_via_vip_v6(ctx: &TcContext) -> Option<i32> {
    let flow = conntrack::parse_v6(ctx)?;
    let tracked = conntrack::lookup(&flow.key)?;
    // SAFETY: a map value, read before any packet helper runs.
    let entry = unsafe { &*tracked.entry };
    if !answers_via_vip(entry) {
        return None;
    }
    let translation = translation6_of(entry)?;
    observe(tracked, flow, ctx.len(), now_ns());
    if apply(ctx, flow, translation).is_err() {
        return Some(drop_packet(ctx, Counter::DropMalformed));
    }
    Some(deliver(ctx, translation, Counter::ViaVip))
}

#[inline(always)]
pub fn send_out<A: Address>(ctx: &TcContext, flow: &Flow, translation: &Translated<A>, route: &route::Route) -> i32 {
    if apply(ctx, flow, translation).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    leave(ctx, route, Counter::NatOut)
}

/// Out along `route`, counted as `counter`.
#[inline(always)]
pub fn leave(ctx: &TcContext, route: &route::Route, counter: Counter) -> i32 {
    route::redirected(ctx, route::send(ctx, route).then_some(TC_ACT_REDIRECT as i32), counter)
}

/// The entries of a new connection from outside to `target` (a container's published port or a
/// service's backend, `server`): the client's packets go to the container
/// with only their destination rewritten; the answers leave with the address and port the
/// client used. `action`: `PUBLISHED` or `SERVICE`.
#[inline(always)]
fn published_connection(new: &mut conntrack::NewConnection, flow: &Flow, target: &PortTarget, server: &EndpointInfo, action: u8) {
    new.original.action = ct_action::REWRITE_DST | action;
    new.original.dst = target.addr;
    new.original.dst_port = target.port;
    new.original.ifindex = server.host_ifindex;
    new.original.mac = server.mac;
    new.reply.action = ct_action::REWRITE_SRC | action;
    new.reply.src = flow.key.daddr;
    new.reply.src_port = flow.key.dport;
    new.reply_key = CtKey { saddr: target.addr, daddr: flow.key.saddr, sport: target.port, dport: flow.key.sport, proto: flow.key.proto, _pad: [0; 3] };
    through_tunnel_if_remote(&mut new.original, &mut new.reply, server);
}

/// Tracks a new connection from outside to `target` (see [`published_connection`]): the
/// translation of its first packet; `Some(Err)`: refused by conntrack, with the reason to
/// count; `None`: no scratch space (the packet goes on untranslated).
#[inline(always)]
pub fn track_published(ctx: &impl Packet, flow: &Flow, target: &PortTarget, server: &EndpointInfo, action: u8, len: u32) -> Option<Result<Translation, Counter>> {
    Some(track_published_entry(ctx, flow, target, server, action, len)?.map(Translation::of))
}

/// As [`track_published`] for IPv6 (the translation in this CPU's [`TRANSLATION6`]).
#[inline(always)]
pub fn track_published_v6(ctx: &impl Packet, flow: &Flow, target: &PortTarget, server: &EndpointInfo, action: u8, len: u32) -> Option<Result<&'static Translation6, Counter>> {
    match track_published_entry(ctx, flow, target, server, action, len)? {
        Ok(original) => translation6_of(original).map(Ok),
        Err(reason) => Some(Err(reason)),
    }
}

/// The original entry of a new connection to a published port, tracked; see [`track_published`].
#[inline(always)]
fn track_published_entry(ctx: &impl Packet, flow: &Flow, target: &PortTarget, server: &EndpointInfo, action: u8, len: u32) -> Option<Result<&'static CtEntry, Counter>> {
    let new = conntrack::new_connection()?;
    published_connection(new, flow, target, server, action);
    Some(conntrack::track(ctx, flow, new, Port::Fixed, len).map(|()| &new.original))
}

/// Whether a packet from outside with source `source` may match an entry with `translation`:
/// only the answers of a masqueraded connection and the packets of a connection to a published
/// port or service, which deliver into a container with only their destination rewritten. A
/// hairpin entry (both sides rewritten) or the answer of a connection through a VIP (the
/// source) is matched from containers only; so is a container's own connection through a VIP
/// (a service's entry, whose client, the source, is a container): a packet from outside that
/// forges such a tuple is not delivered.
#[inline(always)]
pub fn from_outside<A: Address>(source: &IpKey, translation: &Translated<A>) -> bool {
    let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
    if translation.ifindex == 0 || translation.action & both != ct_action::REWRITE_DST {
        return false;
    }
    // SAFETY: read-only lookup; paid by service connections only.
    translation.action & ct_action::SERVICE == 0 || unsafe { ENDPOINTS.get(source) }.is_none()
}

/// Whether the answer of a masqueraded UDP flow belongs to a socket of the host bound to that
/// port after the container took it (a host process binding it, or the host's resolver sending
/// from it to the same server). The host keeps it: a container must not take the answers to the
/// host's queries. Only masquerade answers over UDP pay the lookup. TCP needs none: a host
/// connection on the tuple of a container's live one cannot be set up at all (the server sees
/// one connection), and a TCP_RR answer path is measurably slower with a lookup per packet.
/// `ctx`: TC's or XDP's.
#[inline(always)]
pub fn host_owns_answer<C: EbpfContext, A: Address>(ctx: &C, flow: &Flow, translation: &Translated<A>) -> bool {
    translation.action == ct_action::REWRITE_DST && flow.key.proto == IPPROTO_UDP && conntrack::host_socket_owns(ctx, &flow.key, false, A::IPV6)
}

/// As [`deliver`], or through the tunnel for a container on another node (a service's backend
/// there, or the client of a connection another node balanced here). Only where such a
/// connection can be: each branch more costs the verifier a path through every caller.
#[inline(always)]
pub fn deliver_anywhere<A: Address>(ctx: &TcContext, t: &Translated<A>, counter: Counter) -> i32 {
    if t.action & ct_action::TUNNEL != 0 {
        return overlay::send(ctx, &t.mac, t.ifindex, &t.tunnel, counter);
    }
    deliver(ctx, t, counter)
}

/// Into the container of `translation` (on this node), as its gateway would send it.
#[inline(always)]
pub fn deliver<P: Packet, A: Address>(ctx: &P, translation: &Translated<A>, counter: Counter) -> P::Verdict {
    if route::set_macs_for_container(ctx, &translation.mac).is_err() {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    route::redirected(ctx, ctx.redirect_into_container(translation.ifindex), counter)
}

/// The packet an ICMP error quotes (after the error's own 8 bytes): its IP header and the first
/// 8 bytes of its L4 header, as far as the datapath needs them.
struct Quote {
    /// Where the quoted IP header starts.
    ip: usize,
    proto: u8,
    src: u32,
    dst: u32,
    /// The quoted source and destination ports (an echo's identifier as the source of a request
    /// and the destination of a reply, as in `conntrack::parse`).
    sport: u16,
    dport: u16,
    /// Where the quoted ports sit (for ICMP: both are the identifier's offset).
    sport_off: usize,
    dport_off: usize,
    /// The quoted L4 checksum, when the quote holds one that covers what is rewritten: UDP's
    /// (address and port; 0 means none), ICMP's (the identifier). TCP's lies past the 8 bytes.
    l4_csum_off: Option<usize>,
}

impl Quote {
    /// The tuple of the quoted connection's other direction (how its answers arrive).
    #[inline(always)]
    fn reversed_key(&self) -> CtKey {
        CtKey {
            saddr: IpKey::from_ipv4_word(self.dst),
            daddr: IpKey::from_ipv4_word(self.src),
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

#[inline(always)]
fn quote_of(ctx: &TcContext, flow: &Flow) -> Option<Quote> {
    if flow.later_fragment {
        return None;
    }
    let ip = flow.l4_off as usize + ICMP_ERROR_QUOTE_OFF;
    let version_ihl: u8 = ctx.load(ip).ok()?;
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let proto: u8 = ctx.load(ip + 9).ok()?;
    let src: u32 = ctx.load(ip + IP_SADDR_OFF).ok()?;
    let dst: u32 = ctx.load(ip + IP_DADDR_OFF).ok()?;
    let l4 = ip + ihl * 4;
    // All 8 quoted bytes of the L4 header, read at once: nothing is rewritten before the whole
    // quote is known to be readable (a failure half-way would leave a half-translated packet).
    let head: [u8; 8] = ctx.load(l4).ok()?;
    let u16_at = |i: usize| u16::from_ne_bytes([head[i], head[i + 1]]);
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let l4_csum_off = (proto == IPPROTO_UDP).then_some(l4 + UDP_CSUM_OFF);
            Some(Quote { ip, proto, src, dst, sport: u16_at(0), dport: u16_at(2), sport_off: l4, dport_off: l4 + 2, l4_csum_off })
        }
        IPPROTO_ICMP => {
            let id = u16_at(ICMP_ID_OFF);
            let (sport, dport) = match head[0] {
                ICMP_ECHO_REQUEST => (id, 0),
                ICMP_ECHO_REPLY => (0, id),
                _ => return None,
            };
            let id_off = l4 + ICMP_ID_OFF;
            Some(Quote { ip, proto, src, dst, sport, dport, sport_off: id_off, dport_off: id_off, l4_csum_off: Some(l4 + ICMP_CSUM_OFF) })
        }
        _ => None,
    }
}

/// Rewrites one side of the quoted packet: the address at `addr_off` in its IP header (source
/// or destination) becomes `new_addr`, the port at `port_off` `new_port`. Every checksum that
/// covers them stays exact: the quoted IP header's, a quoted UDP or ICMP checksum, and the
/// error's own ICMP checksum, which covers all the quoted bytes (it has no pseudo-header).
#[inline(always)]
fn rewrite_quote(ctx: &TcContext, flow: &Flow, q: &Quote, addr_off: usize, new_addr: u32, port_off: usize, new_port: u16) -> Option<()> {
    let icmp_csum = flow.l4_off as usize + ICMP_CSUM_OFF;
    let old_addr: u32 = ctx.load(q.ip + addr_off).ok()?;
    let old_port: u16 = ctx.load(port_off).ok()?;
    // The quoted IP header's checksum: plain arithmetic on the field (the l3 helper), which the
    // ICMP checksum then follows.
    let old_ip_csum: u16 = ctx.load(q.ip + IP_CSUM_OFF).ok()?;
    ctx.l3_csum_replace(q.ip + IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4).ok()?;
    let new_ip_csum: u16 = ctx.load(q.ip + IP_CSUM_OFF).ok()?;
    ctx.store(q.ip + addr_off, &new_addr, 0).ok()?;
    ctx.l4_csum_replace(icmp_csum, old_addr as u64, new_addr as u64, 4).ok()?;
    ctx.l4_csum_replace(icmp_csum, old_ip_csum as u64, new_ip_csum as u64, 2).ok()?;
    ctx.store(port_off, &new_port, 0).ok()?;
    ctx.l4_csum_replace(icmp_csum, old_port as u64, new_port as u64, 2).ok()?;
    if let Some(csum_off) = q.l4_csum_off {
        let old_l4_csum: u16 = ctx.load(csum_off).ok()?;
        // UDP without a checksum (0) stays without.
        if old_l4_csum != 0 || q.proto == IPPROTO_ICMP {
            if q.proto == IPPROTO_UDP {
                // UDP's pseudo-header covers the address.
                ctx.l3_csum_replace(csum_off, old_addr as u64, new_addr as u64, 4).ok()?;
            }
            ctx.l3_csum_replace(csum_off, old_port as u64, new_port as u64, 2).ok()?;
            let mut new_l4_csum: u16 = ctx.load(csum_off).ok()?;
            if q.proto == IPPROTO_UDP && new_l4_csum == 0 {
                // 0 would mean "no checksum" (RFC 768): the same sum is written as 0xffff.
                new_l4_csum = 0xffff;
                ctx.store(csum_off, &new_l4_csum, 0).ok()?;
            }
            ctx.l4_csum_replace(icmp_csum, old_l4_csum as u64, new_l4_csum as u64, 2).ok()?;
        }
    }
    Some(())
}

#[inline(always)]
pub fn translate_icmp_error(ctx: &TcContext, flow: &Flow) -> Option<Translation> {
    let q = quote_of(ctx, flow)?;
    // The quoted packet left the host; a reply to it would be its tuple reversed.
    let reversed = q.reversed_key();
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let translation = Translation::of(conntrack::get(&reversed)?);
    // Only about connections packets from outside may take (a forged quote of a hairpin
    // connection, or of a container's own through a VIP, is no error from outside). An error
    // about a connection through the tunnel stays the host's: the node beyond it could not tell
    // it from a forged one.
    let tunnelled = translation.action & ct_action::TUNNEL != 0;
    if !from_outside(&reversed.saddr, &translation) || tunnelled || !decrement_ttl(ctx) {
        return None;
    }
    // The outer destination: the IP checksum only (ICMP's checksum has no pseudo-header).
    set_ipv4_addr(ctx, IP_OFF + IP_DADDR_OFF, translation.dst, IPPROTO_ICMP, None).ok()?;
    // The quoted source: the container's address and port (or echo identifier).
    rewrite_quote(ctx, flow, &q, IP_SADDR_OFF, translation.dst, q.sport_off, translation.dst_port)?;
    Some(translation)
}

/// An ICMP error a container sends about a packet it received through NAT: "port unreachable"
/// for a datagram to a published UDP port nobody listens on, or for an answer to a masqueraded
/// connection whose socket is gone. It quotes that packet as the container got it; the
/// container's own packets of that connection (the quote reversed) have an entry that says how
/// they leave. The error leaves the same way, from the address the other side talks to, and
/// quoting what that side sent, so its stack matches it ("connection refused").
#[inline(always)]
pub fn icmp_error_from_container(ctx: &TcContext, flow: &Flow) -> i32 {
    let Some(q) = quote_of(ctx, flow) else { return to_host(ctx) };
    let key = q.reversed_key();
    // Only about the sender's own connections (its source address was checked: a container
    // must not speak for another one's), and only to whoever sent the quoted packet.
    if key.saddr != flow.key.saddr || key.daddr != flow.key.daddr {
        return to_host(ctx);
    }
    let Some(entry) = conntrack::get(&key) else { return to_host(ctx) };
    // A map value, read before any packet helper runs.
    let translation = Translation::of(entry);
    // Only a connection whose packets from the container are routed out with a new source
    // (masquerade, the answers of a published port); hairpin errors stay the host's.
    let both = ct_action::REWRITE_SRC | ct_action::REWRITE_DST;
    if translation.ifindex != 0 || translation.action & both != ct_action::REWRITE_SRC {
        return to_host(ctx);
    }
    // The connection's cached route, read only (the entry's route is its own packets' to
    // refresh); else the FIB's answer for the error, which must leave by an uplink.
    let route = match route::cached(entry, now_ns()) {
        Some(route) => route,
        None => {
            let Some(mut route) = route::lookup(ctx, flow) else { return to_host(ctx) };
            if route::uplink(&mut route).is_none() {
                return to_host(ctx);
            }
            route
        }
    };
    if !decrement_ttl(ctx) {
        return to_host(ctx);
    }
    let translated = set_ipv4_addr(ctx, IP_OFF + IP_SADDR_OFF, translation.src, IPPROTO_ICMP, None).is_ok()
        && rewrite_quote(ctx, flow, &q, IP_DADDR_OFF, translation.src, q.dport_off, translation.src_port).is_some();
    if !translated {
        return drop_packet(ctx, Counter::DropMalformed);
    }
    leave(ctx, &route, Counter::NatIcmpError)
}
