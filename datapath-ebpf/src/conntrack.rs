//! Connection tracking: the tuple of a packet, the `CONNTRACK` and `FRAGMENTS` maps, state and
//! lifetimes, and creating a connection's pair of entries (see `datapath_common::conntrack`).
use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, BPF_F_CURRENT_NETNS, BPF_NOEXIST, BPF_TCP_LISTEN},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
    EbpfContext, Global,
};
use datapath_common::{
    conntrack::{DEFAULT_CT_ENTRIES, FRAGMENT_ENTRIES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ct_action, ct_state, Counter, CtConfig, CtEntry, CtKey, FragKey, FragPorts, IpKey,
};

use crate::headers::{
    ptr_at, Ipv4Hdr, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, ICMP_ECHO_REQUEST, ICMP_ID_OFF, IPV4_MF, IPV4_OFFSET_MASK, IP_OFF, TCP_ACK,
    TCP_FIN, TCP_FLAGS_OFF, TCP_RST, TCP_SYN,
};

/// Both directions of every tracked connection. The daemon sizes it (`--ct-max`).
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(DEFAULT_CT_ENTRIES, 0);

/// First fragment's ports, for the later fragments of the same datagram (which carry none).
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

/// A new connection's two entries are built here, not on the 512-byte stack.
pub struct NewConnection {
    pub original: CtEntry,
    pub reply: CtEntry,
    pub reply_key: CtKey,
}

/// Per-CPU scratch space for [`NewConnection`] (internal: not pinned, not read by the daemon).
#[map(name = "CT_SCRATCH")]
static CT_SCRATCH: PerCpuArray<NewConnection> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch [`NewConnection`], zeroed.
#[inline(always)]
pub fn new_connection() -> Option<&'static mut NewConnection> {
    let slot = CT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let slot = unsafe { &mut *slot };
    // SAFETY: connection entries are plain data (`Pod`).
    unsafe {
        crate::mem::zero(&mut slot.original);
        crate::mem::zero(&mut slot.reply);
    }
    Some(slot)
}

/// The socket lookup's tuple (internal scratch space, off the stack).
#[map(name = "SOCK_TUPLE")]
static SOCK_TUPLE: PerCpuArray<bpf_sock_tuple> = PerCpuArray::with_max_entries(1, 0);

/// Named by `datapath_common::global_names::CT_CONFIG`; set by the daemon at load.
#[unsafe(no_mangle)]
static CT_CONFIG: Global<CtConfig> = Global::new(CtConfig::DEFAULT);

/// How many random masquerade ports are tried before giving up on a new connection.
const NAT_PORT_TRIES: u32 = 16;
const EEXIST: i32 = 17;

/// What the datapath knows of an IPv4 packet's connection.
pub struct Flow {
    /// The tuple as the packet arrived.
    pub key: CtKey,
    /// Where the L4 header starts.
    pub l4_off: usize,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// The ICMP type (0 for other protocols).
    pub icmp_type: u8,
    /// A fragment after the first: no L4 header, ports taken from `FRAGMENTS`.
    pub later_fragment: bool,
}

impl Flow {
    /// ICMP other than echo, which has no tuple of its own.
    #[inline(always)]
    pub fn is_icmp_non_echo(&self) -> bool {
        self.key.proto == IPPROTO_ICMP && self.icmp_type != ICMP_ECHO_REQUEST && self.icmp_type != ICMP_ECHO_REPLY
    }

    /// An ICMP error, matched by the packet it quotes.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.key.proto == IPPROTO_ICMP
            && matches!(self.icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
    }
}

/// Reads the tuple of the IPv4 packet in `ctx`. `None` for a header the datapath cannot track:
/// a malformed one, or a later fragment of a datagram whose first fragment it did not see.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Flow> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (version_ihl, frag_off, id, proto, saddr, daddr) =
        unsafe { ((*ip).version_ihl, u16::from_be((*ip).frag_off), (*ip).id, (*ip).protocol, (*ip).saddr, (*ip).daddr) };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let mut flow = Flow {
        key: CtKey {
            saddr: IpKey::from_ipv4_octets(saddr),
            daddr: IpKey::from_ipv4_octets(daddr),
            sport: 0,
            dport: 0,
            proto,
            _pad: [0; 3],
        },
        l4_off: IP_OFF + ihl * 4,
        tcp_flags: 0,
        icmp_type: 0,
        later_fragment: false,
    };
    let fragment = FragKey { saddr: flow.key.saddr, daddr: flow.key.daddr, id: id as u32, proto, _pad: [0; 3] };
    if frag_off & IPV4_OFFSET_MASK != 0 {
        // SAFETY: read-only lookup of a plain-old-data value.
        let ports = unsafe { FRAGMENTS.get(&fragment) }?;
        flow.key.sport = ports.sport;
        flow.key.dport = ports.dport;
        flow.later_fragment = true;
        return Some(flow);
    }
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(flow.l4_off).ok()?;
            flow.key.sport = ports[0];
            flow.key.dport = ports[1];
            if proto == IPPROTO_TCP {
                flow.tcp_flags = ctx.load(flow.l4_off + TCP_FLAGS_OFF).ok()?;
            }
        }
        IPPROTO_ICMP => {
            flow.icmp_type = ctx.load(flow.l4_off).ok()?;
            if flow.icmp_type == ICMP_ECHO_REQUEST {
                flow.key.sport = ctx.load(flow.l4_off + ICMP_ID_OFF).ok()?;
            } else if flow.icmp_type == ICMP_ECHO_REPLY {
                flow.key.dport = ctx.load(flow.l4_off + ICMP_ID_OFF).ok()?;
            }
        }
        _ => {}
    }
    if frag_off & IPV4_MF != 0 {
        let ports = FragPorts { sport: flow.key.sport, dport: flow.key.dport };
        // A full table only costs the later fragments of this datagram their translation.
        let _ = FRAGMENTS.insert(&fragment, &ports, 0);
    }
    Some(flow)
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn lifetime(config: &CtConfig, proto: u8, state: u8) -> u64 {
    match proto {
        IPPROTO_TCP if state & ct_state::CLOSING != 0 => config.tcp_closing_ns,
        IPPROTO_TCP if state & ct_state::SEEN_REPLY != 0 => config.tcp_established_ns,
        IPPROTO_TCP => config.tcp_syn_ns,
        IPPROTO_UDP => config.udp_ns,
        _ => config.icmp_ns,
    }
}

/// Accounts a packet that matched `entry`: counters, state, lifetime, and the peer's state and
/// lifetime when the connection's shared state changed (first reply, both FINs, RST, a reused
/// tuple). FINs are per direction: a half-closed connection keeps the established lifetime.
#[inline(always)]
pub fn observe(entry: *mut CtEntry, flow: &Flow, len: u32, now: u64) {
    const SHARED: u8 = ct_state::SEEN_REPLY | ct_state::CLOSING;
    let config = CT_CONFIG.load();
    // SAFETY: `entry` points at a map value; concurrent updates only blur the statistics.
    let e = unsafe { &mut *entry };
    let old = e.state;
    let mut state = old;
    let mut reopened = false;
    if flow.key.proto == IPPROTO_TCP {
        if flow.tcp_flags & TCP_RST != 0 {
            state |= ct_state::CLOSING;
        } else if flow.tcp_flags & TCP_FIN != 0 {
            state |= ct_state::FIN_SENT;
            let peer_key = e.peer;
            // SAFETY: read-only look at the peer's state.
            if unsafe { CONNTRACK.get(&peer_key) }.is_some_and(|p| p.state & ct_state::FIN_SENT != 0) {
                state |= ct_state::CLOSING;
            }
        } else if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && state & (ct_state::CLOSING | ct_state::FIN_SENT) != 0
        {
            // A new connection on the tuple of one that is closing starts afresh.
            state &= ct_state::REPLY;
            reopened = true;
        }
    }
    if state & ct_state::REPLY != 0 {
        state |= ct_state::SEEN_REPLY;
    }
    e.state = state;
    e.expires_ns = now + lifetime(&config, flow.key.proto, state);
    e.packets += 1;
    e.bytes += len as u64;
    if reopened || (old ^ state) & SHARED != 0 {
        let peer_key = e.peer;
        if let Some(peer) = CONNTRACK.get_ptr_mut(&peer_key) {
            // SAFETY: as above.
            let peer = unsafe { &mut *peer };
            let own = if reopened { ct_state::REPLY } else { ct_state::REPLY | ct_state::FIN_SENT };
            peer.state = (peer.state & own) | (state & SHARED);
            peer.expires_ns = now + lifetime(&config, flow.key.proto, peer.state);
        }
    }
}

/// The reply entry of a masqueraded connection: answers go back to the container that sent
/// `flow` (behind the host-side veth `ifindex`, with `mac`), at its own address and port.
#[inline(always)]
pub fn masquerade_reply(reply: &mut CtEntry, flow: &Flow, ifindex: u32, mac: [u8; 6]) {
    reply.action = ct_action::REWRITE_DST;
    reply.dst = flow.key.saddr;
    reply.dst_port = flow.key.sport;
    reply.ifindex = ifindex;
    reply.mac = mac;
}

/// For a masquerading original entry: whether its reply entry is still this connection's. The
/// LRU may have evicted it under pressure; it is put back (the port is still this connection's
/// to use), unless another connection claimed that reply tuple meanwhile: then `false`, as the
/// answers would reach the other container.
#[inline(always)]
pub fn ensure_reply(original: &CtEntry, flow: &Flow, ifindex: u32, mac: [u8; 6]) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    if let Some(reply) = unsafe { CONNTRACK.get(&original.peer) } {
        return reply.peer == flow.key;
    }
    let Some(new) = new_connection() else { return false };
    masquerade_reply(&mut new.reply, flow, ifindex, mac);
    new.reply.peer = flow.key;
    new.reply.state = ct_state::REPLY | (original.state & (ct_state::SEEN_REPLY | ct_state::CLOSING));
    new.reply.expires_ns = original.expires_ns;
    CONNTRACK.insert(&original.peer, &new.reply, BPF_NOEXIST as u64).is_ok()
}

/// Whether a socket of the host would take packets of `key` (a reply tuple: from the server to the
/// host's address and port): a port the host itself uses there is no port for NAT. `ctx`: a TC
/// or an XDP program's context (the socket lookups serve both). `connected_only`: only a
/// connected socket counts (one of the host's own flows), not a listener or an unconnected UDP
/// socket.
#[inline(always)]
pub fn host_socket_owns<C: EbpfContext>(ctx: &C, key: &CtKey, connected_only: bool) -> bool {
    let Some(slot) = SOCK_TUPLE.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let tuple = unsafe { &mut *slot };
    // SAFETY: writing the IPv4 member of the union.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = key.saddr.ipv4_word();
        t.daddr = key.daddr.ipv4_word();
        t.sport = key.sport;
        t.dport = key.dport;
    }
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let ctx_ptr = ctx.as_ptr();
    // SAFETY: helpers with a valid tuple of the given size; a found socket is released at once.
    unsafe {
        // Each kind reads its own field: the verifier refuses one load instruction on the two
        // pointer types (sock_common, sock) the two lookups return.
        let (sk, owns) = match key.proto {
            IPPROTO_TCP => {
                let sk = bpf_skc_lookup_tcp(ctx_ptr, tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
                if sk.is_null() {
                    return false;
                }
                (sk, !connected_only || (*sk).state != BPF_TCP_LISTEN)
            }
            IPPROTO_UDP => {
                let sk = bpf_sk_lookup_udp(ctx_ptr, tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
                if sk.is_null() {
                    return false;
                }
                // An unconnected UDP socket has no peer port.
                (sk, !connected_only || (*sk).dst_port != 0)
            }
            _ => return false,
        };
        bpf_sk_release(sk as *mut core::ffi::c_void);
        owns
    }
}

/// How the reply tuple's destination port of a new connection is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// As given in the reply key (no translation of the port).
    Fixed,
    /// The port translated to: `preferred` (network order) if it is free, as iptables keeps a
    /// connection's source port when it can (a client that reuses its ports then reuses its
    /// translations), else one drawn from the masquerade range. A port is free when no tracked
    /// connection and no socket of the host has the reply tuple.
    Allocate { preferred: u16 },
}

/// Tracks a new connection whose first packet is `flow`: `new.original` rewrites the
/// initiator's packets, `new.reply` (keyed by `new.reply_key`) the answers. With
/// [`Port::Allocate`], the original entry writes the chosen port as the new source port.
#[inline(always)]
pub fn track<C: EbpfContext>(ctx: &C, flow: &Flow, new: &mut NewConnection, port: Port, len: u32) -> Result<(), Counter> {
    let config = CT_CONFIG.load();
    let expires = now_ns() + lifetime(&config, flow.key.proto, 0);
    new.reply.peer = flow.key;
    new.reply.state = ct_state::REPLY;
    new.reply.expires_ns = expires;
    if let Port::Allocate { preferred } = port {
        let span = (config.nat_port_max as u32).saturating_sub(config.nat_port_min as u32) + 1;
        let mut claimed = false;
        for attempt in 0..NAT_PORT_TRIES {
            let candidate = if attempt == 0 && preferred != 0 {
                preferred
            } else {
                // SAFETY: helper without arguments.
                ((config.nat_port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16).to_be()
            };
            new.reply_key.dport = candidate;
            if host_socket_owns(ctx, &new.reply_key, false) {
                continue;
            }
            match CONNTRACK.insert(&new.reply_key, &new.reply, BPF_NOEXIST as u64) {
                Ok(()) => {
                    claimed = true;
                    break;
                }
                Err(e) if e as i32 == -EEXIST => continue,
                Err(_) => return Err(Counter::DropCtInsertFailed),
            }
        }
        if !claimed {
            return Err(Counter::DropNatNoPort);
        }
        new.original.src_port = new.reply_key.dport;
    } else if CONNTRACK.insert(&new.reply_key, &new.reply, 0).is_err() {
        return Err(Counter::DropCtInsertFailed);
    }
    new.original.peer = new.reply_key;
    new.original.state = 0;
    new.original.expires_ns = expires;
    new.original.packets = 1;
    new.original.bytes = len as u64;
    if CONNTRACK.insert(&flow.key, &new.original, 0).is_err() {
        let _ = CONNTRACK.remove(&new.reply_key);
        return Err(Counter::DropCtInsertFailed);
    }
    Ok(())
}
