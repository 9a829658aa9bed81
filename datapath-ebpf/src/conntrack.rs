//! Connection tracking: the tuple of a packet, the connection tables (`CONNTRACK`,
//! `CT_PENDING`, `CT_QUOTA`) and `FRAGMENTS`, state, sequence windows and lifetimes, creating a
//! connection's pair of entries and moving it to the established table once assured (see
//! `datapath_common::conntrack`).
use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS, BPF_NOEXIST, BPF_TCP_LISTEN},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    EbpfContext, Global,
};
use datapath_common::{
    conntrack::{pending_entries, share_owner, DEFAULT_CT_ENTRIES, FRAGMENT_ENTRIES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_TRACK_WINDOW},
    ct_action, ct_state, Counter, CtConfig, CtEntry, CtKey, FragKey, FragPorts, IpKey, PortKey, MAX_ENDPOINTS,
};

use crate::{
    counters::bump,
    headers::{
        ipv6_tracked_upper_layer, ptr_at, Ipv4Hdr, Ipv6Hdr, TcpHead, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPV6_HDR_LEN, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, ICMP_ECHO_REQUEST, ICMP_ID_OFF, IPV4_MF,
        IPV4_OFFSET_MASK, IP_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    maps::PORTS,
    packet::Packet,
};

/// Both directions of every established (assured) connection: a plain hash, which the kernel
/// never evicts from; the daemon removes what expired. The daemon sizes it (`--ct-max`).
#[map(name = "CONNTRACK")]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(DEFAULT_CT_ENTRIES, 0);

/// New connections until they are assured (and assured ones that found no room in `CONNTRACK`):
/// an LRU, so a flood of new connections evicts new connections only. Sized with `CONNTRACK`.
#[map(name = "CT_PENDING")]
pub static CT_PENDING: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(pending_entries(DEFAULT_CT_ENTRIES), 0);

/// An endpoint's host-side veth -> the entries its connections hold in `CONNTRACK` (whose
/// connection it is: `share_owner`). Counted up here without atomics (bpfel has none: a rare lost
/// update lets one connection more in); the daemon recounts it whenever it expires connections.
#[map(name = "CT_QUOTA")]
pub static CT_QUOTA: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// First fragment's ports, for the later fragments of the same datagram (which carry none).
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

/// Which table an entry is in. Both entries of a connection are always in the same one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    Pending,
}

impl Table {
    #[inline(always)]
    fn get(self, key: &CtKey) -> Option<&'static CtEntry> {
        // SAFETY: read-only lookups of plain-old-data values.
        unsafe {
            match self {
                Table::Established => CONNTRACK.get(key),
                Table::Pending => CT_PENDING.get(key),
            }
        }
    }

    #[inline(always)]
    fn get_ptr_mut(self, key: &CtKey) -> Option<*mut CtEntry> {
        match self {
            Table::Established => CONNTRACK.get_ptr_mut(key),
            Table::Pending => CT_PENDING.get_ptr_mut(key),
        }
    }

    #[inline(always)]
    fn insert(self, key: &CtKey, value: &CtEntry, flags: u64) -> Result<(), i64> {
        match self {
            Table::Established => CONNTRACK.insert(key, value, flags).map_err(|e| e as i64),
            Table::Pending => CT_PENDING.insert(key, value, flags).map_err(|e| e as i64),
        }
    }
}

/// The entry a packet's tuple matched, and its table.
#[derive(Clone, Copy)]
pub struct Tracked {
    pub entry: *mut CtEntry,
    pub table: Table,
}

/// The entry of `key`: established connections first (the packets of most), then new ones.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<Tracked> {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        return Some(Tracked { entry, table: Table::Established });
    }
    let entry = CT_PENDING.get_ptr_mut(key)?;
    Some(Tracked { entry, table: Table::Pending })
}

/// The entry of the other direction of `t`'s connection (in the same table).
#[inline(always)]
pub fn peer_of(t: Tracked) -> Option<*mut CtEntry> {
    // SAFETY: a map value; `peer` is written once, when the connection is tracked.
    let peer = unsafe { (*t.entry).peer };
    t.table.get_ptr_mut(&peer)
}

/// As [`lookup`], read only.
#[inline(always)]
pub fn get(key: &CtKey) -> Option<&'static CtEntry> {
    Table::Established.get(key).or_else(|| Table::Pending.get(key))
}

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

/// The socket lookup's tuple (internal scratch space, off the stack): entry 0 for the TC and
/// XDP programs (softirq), entry 1 for the socket programs, which run in a process's context,
/// where a softirq on the same CPU may run the others between the tuple's writing and its
/// lookup.
#[map(name = "SOCK_TUPLE")]
static SOCK_TUPLE: PerCpuArray<bpf_sock_tuple> = PerCpuArray::with_max_entries(2, 0);
const PACKET_PROGRAM_SLOT: u32 = 0;
const SOCKET_PROGRAM_SLOT: u32 = 1;

/// Named by `datapath_common::global_names::CT_CONFIG`; set by the daemon at load.
#[unsafe(no_mangle)]
static CT_CONFIG: Global<CtConfig> = Global::new(CtConfig::DEFAULT);

/// One field of `CT_CONFIG`, read alone: `Global::load` copies all 48 bytes onto a stack that is
/// near its 512-byte limit.
macro_rules! ct_config {
    ($field:ident) => {
        // SAFETY: `Global` is a transparent wrapper of an initialized `CtConfig`; the read is
        // volatile, as `Global::load`'s, so that it reads what the loader wrote there.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*(core::ptr::addr_of!(CT_CONFIG) as *const CtConfig)).$field)) }
    };
}

/// How many random masquerade ports are tried before giving up on a new connection.
const NAT_PORT_TRIES: u32 = 16;
const EEXIST: i32 = 17;

/// What the datapath knows of an IP packet's connection.
pub struct Flow {
    /// The tuple as the packet arrived.
    pub key: CtKey,
    /// Where the L4 header starts (a u32, not a usize: the flow lives on a crowded stack).
    pub l4_off: u32,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// TCP: the segment's acknowledgment number and the sequence number after it (host order;
    /// 0 for other protocols).
    pub tcp_ack: u32,
    pub tcp_seq_end: u32,
    /// The ICMP type (0 for other protocols).
    pub icmp_type: u8,
    /// A fragment after the first: no L4 header, ports taken from `FRAGMENTS`.
    pub later_fragment: bool,
}

impl Flow {
    /// Whether this packet may start a connection (to a published port, a service, a backend
    /// of the routing mesh): TCP or UDP, not a later fragment, for TCP a SYN without ACK.
    #[inline(always)]
    pub fn starts_connection(&self) -> bool {
        match self.key.proto {
            IPPROTO_TCP => !self.later_fragment && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            IPPROTO_UDP => !self.later_fragment,
            _ => false,
        }
    }

    /// The flow of `key` whose L4 header starts at `l4_off`, before its L4 fields are read.
    #[inline(always)]
    pub fn new(key: CtKey, l4_off: usize) -> Self {
        Self { key, l4_off: l4_off as u32, tcp_flags: 0, tcp_ack: 0, tcp_seq_end: 0, icmp_type: 0, later_fragment: false }
    }

    /// Takes the TCP header's flags and sequence numbers (`l4_len`: the IP payload's length).
    #[inline(always)]
    pub fn set_tcp(&mut self, tcp: &TcpHead, l4_len: u32) {
        self.tcp_flags = tcp.flags;
        self.tcp_ack = u32::from_be(tcp.ack);
        self.tcp_seq_end = tcp.seq_end(l4_len);
    }

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

/// Reads the tuple of the IPv4 packet in `ctx` (TC's or XDP's). `None` for a header the datapath cannot track:
/// a malformed one, or a later fragment of a datagram whose first fragment it did not see.
#[inline(always)]
pub fn parse(ctx: &impl Packet) -> Option<Flow> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (version_ihl, frag_off, id, proto, tot_len, saddr, daddr) = unsafe {
        ((*ip).version_ihl, u16::from_be((*ip).frag_off), (*ip).id, (*ip).protocol, u16::from_be((*ip).tot_len), (*ip).saddr, (*ip).daddr)
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let key = CtKey { saddr: IpKey::from_ipv4_octets(saddr), daddr: IpKey::from_ipv4_octets(daddr), sport: 0, dport: 0, proto, _pad: [0; 3] };
    let mut flow = Flow::new(key, IP_OFF + ihl * 4);
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
        IPPROTO_TCP => {
            let tcp: TcpHead = ctx.load(flow.l4_off as usize).ok()?;
            flow.key.sport = tcp.ports[0];
            flow.key.dport = tcp.ports[1];
            flow.set_tcp(&tcp, (tot_len as u32).saturating_sub(ihl as u32 * 4));
        }
        IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(flow.l4_off as usize).ok()?;
            flow.key.sport = ports[0];
            flow.key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            flow.icmp_type = ctx.load(flow.l4_off as usize).ok()?;
            if flow.icmp_type == ICMP_ECHO_REQUEST {
                flow.key.sport = ctx.load(flow.l4_off as usize + ICMP_ID_OFF).ok()?;
            } else if flow.icmp_type == ICMP_ECHO_REPLY {
                flow.key.dport = ctx.load(flow.l4_off as usize + ICMP_ID_OFF).ok()?;
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

/// Per-CPU room for an IPv6 packet's [`Flow`] (internal: not pinned, not read by the daemon):
/// the container program's stack is at its 512-byte limit with IPv4's paths.
#[map(name = "FLOW6_SCRATCH")]
static FLOW6_SCRATCH: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

/// Reads the tuple of the IPv6 packet in `ctx`: TCP, UDP or ICMPv6 echo (the identifier as
/// the port, as for IPv4), behind at most the extension headers `headers` walks; a fragment
/// after the first takes the ports its first one left in `FRAGMENTS`, as for IPv4. `None` for
/// a later fragment whose first was not seen, a chain too long, a truncated header, another
/// protocol, or an IPv4-mapped address (which would name IPv4's connections). The flow is this
/// CPU's [`FLOW6_SCRATCH`], valid until the program returns. A function of its own (not
/// inlined): inlined into the overlay program beside its other paths, LLVM spilled a map pointer
/// as 32 bits into the fragment key, which the verifier refuses ("invalid size of register
/// spill").
#[inline(never)]
pub fn parse_v6(ctx: &impl Packet) -> Option<&'static Flow> {
    let slot = FLOW6_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let flow = unsafe { &mut *slot };
    // Field by field, into the slot: a whole `Flow` built first would take the stack's room.
    let ip = ptr_at::<Ipv6Hdr>(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (nexthdr, payload_len) = unsafe {
        flow.key.saddr.addr = (*ip).saddr;
        flow.key.daddr.addr = (*ip).daddr;
        ((*ip).nexthdr, u16::from_be((*ip).payload_len))
    };
    // An IPv4-mapped address would name IPv4's connections, ports and endpoints.
    if flow.key.saddr.is_ipv4() || flow.key.daddr.is_ipv4() {
        return None;
    }
    let upper = ipv6_tracked_upper_layer(ctx, IP_OFF, nexthdr)?;
    let (proto, l4_off) = (upper.proto, upper.off);
    flow.key.proto = proto;
    flow.key._pad = [0; 3];
    flow.key.sport = 0;
    flow.key.dport = 0;
    flow.l4_off = l4_off as u32;
    flow.tcp_flags = 0;
    flow.tcp_ack = 0;
    flow.tcp_seq_end = 0;
    flow.icmp_type = 0;
    flow.later_fragment = upper.later;
    if upper.later {
        if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
            return None;
        }
        let fragment = FragKey { saddr: flow.key.saddr, daddr: flow.key.daddr, id: upper.fragment_id?, proto, _pad: [0; 3] };
        // SAFETY: read-only lookup of a plain-old-data value.
        let ports = unsafe { FRAGMENTS.get(&fragment) }?;
        flow.key.sport = ports.sport;
        flow.key.dport = ports.dport;
        return Some(flow);
    }
    match proto {
        IPPROTO_TCP => {
            let tcp: TcpHead = ctx.load(l4_off).ok()?;
            flow.key.sport = tcp.ports[0];
            flow.key.dport = tcp.ports[1];
            // The payload length counts the extension headers too.
            let l4_len = (payload_len as u32).saturating_sub((l4_off - IP_OFF - IPV6_HDR_LEN) as u32);
            flow.set_tcp(&tcp, l4_len);
        }
        IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(l4_off).ok()?;
            flow.key.sport = ports[0];
            flow.key.dport = ports[1];
        }
        IPPROTO_ICMPV6 => {
            flow.icmp_type = ctx.load(l4_off).ok()?;
            let id = ctx.load(l4_off + ICMP_ID_OFF).ok()?;
            match flow.icmp_type {
                ICMPV6_ECHO_REQUEST => flow.key.sport = id,
                ICMPV6_ECHO_REPLY => flow.key.dport = id,
                _ => return None,
            }
        }
        _ => return None,
    }
    if let Some(id) = upper.fragment_id {
        let fragment = FragKey { saddr: flow.key.saddr, daddr: flow.key.daddr, id, proto, _pad: [0; 3] };
        // A full table only costs the later fragments of this datagram their translation.
        let _ = FRAGMENTS.insert(&fragment, &FragPorts { sport: flow.key.sport, dport: flow.key.dport }, 0);
    }
    Some(flow)
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn lifetime(proto: u8, state: u8) -> u64 {
    match proto {
        IPPROTO_TCP if state & ct_state::CLOSING != 0 => ct_config!(tcp_closing_ns),
        IPPROTO_TCP if state & ct_state::SEEN_REPLY != 0 => ct_config!(tcp_established_ns),
        IPPROTO_TCP => ct_config!(tcp_syn_ns),
        IPPROTO_UDP => ct_config!(udp_ns),
        _ => ct_config!(icmp_ns),
    }
}

/// Whether `value` lies within [`TCP_TRACK_WINDOW`] of `mark` in sequence space, either side.
#[inline(always)]
fn near(value: u32, mark: u32) -> bool {
    value.wrapping_sub(mark).wrapping_add(TCP_TRACK_WINDOW) <= 2 * TCP_TRACK_WINDOW
}

/// Whether a RST or FIN of `flow` (matching `e`, in `table`) belongs to its connection's stream:
/// its sequence number near where its direction's stream is, or, for the first segment of a
/// direction (a reset answering a SYN), acknowledging what the other side sent.
#[inline(always)]
fn in_window(table: Table, e: &CtEntry, flow: &Flow) -> bool {
    if e.state & ct_state::SEQ_KNOWN != 0 {
        // The segment's end stands for its start: a RST carries no data, a FIN's is within the window.
        return near(flow.tcp_seq_end, e.tcp_seq_next);
    }
    if flow.tcp_flags & TCP_ACK == 0 {
        return false;
    }
    // The peer's key is read in place (a map value is a valid key argument): the stack is short.
    match table.get(&e.peer) {
        Some(peer) if peer.state & ct_state::SEQ_KNOWN != 0 => near(flow.tcp_ack, peer.tcp_seq_next),
        _ => true,
    }
}

/// Whether an ACK of `flow` acknowledges what the other side of `e`'s connection sent (at most
/// a window behind where its stream is): the handshake's last step, which a blind spoofer of
/// the first one cannot take.
#[inline(always)]
fn acknowledges_peer(table: Table, e: &CtEntry, flow: &Flow) -> bool {
    table
        .get(&e.peer)
        .is_some_and(|peer| peer.state & ct_state::SEQ_KNOWN != 0 && peer.tcp_seq_next.wrapping_sub(flow.tcp_ack) <= TCP_TRACK_WINDOW)
}

/// Accounts a packet that matched `t`: counters, state, lifetime, and the peer's state and
/// lifetime when the connection's shared state changed (first reply, both FINs, RST, a reused
/// tuple). FINs are per direction: a half-closed connection keeps the established lifetime. A
/// RST or FIN outside the stream's window changes nothing but the counters. A new connection
/// that becomes assured moves to the established table.
#[inline(always)]
pub fn observe(t: Tracked, flow: &Flow, len: u32, now: u64) {
    const SHARED: u8 = ct_state::SEEN_REPLY | ct_state::CLOSING;
    // SAFETY: `entry` points at a map value; concurrent updates only blur the statistics.
    let e = unsafe { &mut *t.entry };
    e.packets += 1;
    e.bytes += len as u64;
    let old = e.state;
    let mut state = old;
    let mut reopened = false;
    let mut assured = false;
    if flow.key.proto == IPPROTO_TCP {
        let flags = flow.tcp_flags;
        if flags & (TCP_RST | TCP_FIN) != 0 && !in_window(t.table, e, flow) {
            bump(Counter::CtOutOfWindow);
            return;
        }
        if flags & TCP_RST != 0 {
            state |= ct_state::CLOSING;
        } else if flags & TCP_FIN != 0 {
            state |= ct_state::FIN_SENT;
            if t.table.get(&e.peer).is_some_and(|p| p.state & ct_state::FIN_SENT != 0) {
                state |= ct_state::CLOSING;
            }
        } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN && state & (ct_state::CLOSING | ct_state::FIN_SENT) != 0 {
            // A new connection on the tuple of one that is closing starts afresh.
            state &= ct_state::REPLY;
            reopened = true;
        } else if t.table == Table::Pending && flags & (TCP_SYN | TCP_ACK) == TCP_ACK && old & (ct_state::REPLY | ct_state::SEEN_REPLY) == ct_state::SEEN_REPLY {
            assured = acknowledges_peer(t.table, e, flow);
        }
        if state & ct_state::SEQ_KNOWN == 0 || (flow.tcp_seq_end.wrapping_sub(e.tcp_seq_next) as i32) > 0 {
            e.tcp_seq_next = flow.tcp_seq_end;
        }
        state |= ct_state::SEQ_KNOWN;
    }
    if state & ct_state::REPLY != 0 {
        state |= ct_state::SEEN_REPLY;
    }
    // UDP and ICMP: an answer assures the flow.
    if flow.key.proto != IPPROTO_TCP {
        assured = t.table == Table::Pending && state & ct_state::SEEN_REPLY != 0;
    }
    e.state = state;
    e.expires_ns = now + lifetime(flow.key.proto, state);
    if reopened || (old ^ state) & SHARED != 0 {
        let peer_key = e.peer;
        if let Some(peer) = t.table.get_ptr_mut(&peer_key) {
            // SAFETY: as above.
            let peer = unsafe { &mut *peer };
            let own = if reopened { ct_state::REPLY } else { ct_state::REPLY | ct_state::FIN_SENT | ct_state::SEQ_KNOWN };
            peer.state = (peer.state & own) | (state & SHARED);
            peer.expires_ns = now + lifetime(flow.key.proto, peer.state);
        }
    }
    if assured {
        promote(e, &flow.key);
    }
}

/// Moves the assured connection of `e` (keyed `key`, in `CT_PENDING`) to `CONNTRACK`, within its
/// endpoint's share and the table's room; else it goes on working from `CT_PENDING`. Not
/// inlined: a frame of its own, off the programs' (which are near the 512-byte stack limit).
#[inline(never)]
fn promote(e: &CtEntry, key: &CtKey) {
    let Some(peer) = Table::Pending.get(&e.peer) else { return };
    let (original, reply) = if e.state & ct_state::REPLY == 0 { (e, peer) } else { (peer, e) };
    let owner = share_owner(original.ifindex, reply.ifindex);
    let endpoint_max: u32 = ct_config!(endpoint_max);
    if owner != 0 && endpoint_max != 0 {
        // SAFETY: read-only lookup of a plain-old-data value.
        let held = unsafe { CT_QUOTA.get(&owner) }.copied().unwrap_or(0);
        if held.saturating_add(2) > endpoint_max {
            bump(Counter::CtEndpointShareFull);
            return;
        }
    }
    match CONNTRACK.insert(&e.peer, peer, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU moved it at this very moment (or another connection holds that tuple).
        Err(err) if err as i32 == -EEXIST => return,
        Err(_) => {
            bump(Counter::CtEstablishedFull);
            return;
        }
    }
    if CONNTRACK.insert(key, e, 0).is_err() {
        let _ = CONNTRACK.remove(&e.peer);
        bump(Counter::CtEstablishedFull);
        return;
    }
    if owner != 0 {
        match CT_QUOTA.get_ptr_mut(&owner) {
            // SAFETY: a map value; a concurrent update may be lost (see `CT_QUOTA`).
            Some(held) => unsafe { *held += 2 },
            None => {
                let _ = CT_QUOTA.insert(&owner, &2, BPF_NOEXIST as u64);
            }
        }
    }
    // The peer first: `e` is the other entry's memory.
    let _ = CT_PENDING.remove(&e.peer);
    let _ = CT_PENDING.remove(key);
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
pub fn ensure_reply(t: Tracked, flow: &Flow, ifindex: u32, mac: [u8; 6]) -> bool {
    // SAFETY: a map value, read only.
    let original = unsafe { &*t.entry };
    if let Some(reply) = get(&original.peer) {
        return reply.peer == flow.key;
    }
    let Some(new) = new_connection() else { return false };
    masquerade_reply(&mut new.reply, flow, ifindex, mac);
    new.reply.peer = flow.key;
    new.reply.state = ct_state::REPLY | (original.state & (ct_state::SEEN_REPLY | ct_state::CLOSING));
    new.reply.expires_ns = original.expires_ns;
    t.table.insert(&original.peer, &new.reply, BPF_NOEXIST as u64).is_ok()
}

/// Whether a socket of the host would take packets of `key` (a reply tuple: from the server to the
/// host's address and port): a port the host itself uses there is no port for NAT. `ctx`: a TC
/// or an XDP program's context (the socket lookups serve both). `connected_only`: only a
/// connected socket counts (one of the host's own flows), not a listener or an unconnected UDP
/// socket. `ipv6`: the key's family, a constant at each call (a branch on the key itself would
/// double the paths the verifier walks through every caller).
#[inline(always)]
pub fn host_socket_owns<C: EbpfContext>(ctx: &C, key: &CtKey, connected_only: bool, ipv6: bool) -> bool {
    socket_lookup(ctx, key, connected_only, ipv6, PACKET_PROGRAM_SLOT)
}

/// [`host_socket_owns`] for a socket program (its own scratch slot: see [`SOCK_TUPLE`]).
#[inline(always)]
pub fn host_socket_owns_for_socket_program<C: EbpfContext>(ctx: &C, key: &CtKey, connected_only: bool, ipv6: bool) -> bool {
    socket_lookup(ctx, key, connected_only, ipv6, SOCKET_PROGRAM_SLOT)
}

#[inline(always)]
fn socket_lookup<C: EbpfContext>(ctx: &C, key: &CtKey, connected_only: bool, ipv6: bool, slot: u32) -> bool {
    let Some(slot) = SOCK_TUPLE.get_ptr_mut(slot) else { return false };
    // SAFETY: a per-CPU slot: only this program run, on this CPU, uses it until it returns.
    let tuple = unsafe { &mut *slot };
    let size = if !ipv6 {
        // SAFETY: writing the IPv4 member of the union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = key.saddr.ipv4_word();
            t.daddr = key.daddr.ipv4_word();
            t.sport = key.sport;
            t.dport = key.dport;
        }
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32
    } else {
        // SAFETY: writing the IPv6 member of the union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = key.saddr.addr;
            t.daddr = key.daddr.addr;
            t.sport = key.sport;
            t.dport = key.dport;
        }
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32
    };
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
    /// connection and no socket of the host has the reply tuple; `preferred` also only if it is
    /// not published on the address (the daemon refuses publications in the masquerade range,
    /// so a port drawn from it never is). A well-known source port (below 16384) to an
    /// ephemeral one (32768 and above) is never kept, as Linux's NAT does since CVE-2021-3773:
    /// it would shadow a connection the peer makes to that port of the host. `ipv6`: the
    /// connection's family.
    Allocate { preferred: u16, ipv6: bool },
}

/// Whether the reply tuple `key`'s destination (the host's address and port) is a published
/// port: a masqueraded connection there would take the peer's connections to it (the tracked
/// connection is looked up first). Not inlined: its two keys would take room on
/// `from_container`'s stack, near the 512-byte limit.
#[inline(never)]
fn is_published(key: &CtKey, ipv6: bool) -> bool {
    let exact = PortKey { addr: key.daddr, port: key.dport, proto: key.proto, _pad: 0 };
    // SAFETY: read-only lookups.
    unsafe { PORTS.get(&exact).is_some() || PORTS.get(&PortKey::any_address(key.dport, key.proto, ipv6)).is_some() }
}

/// Tracks a new connection whose first packet is `flow`, in `CT_PENDING` until it is assured
/// (see [`observe`]): `new.original` rewrites the
/// initiator's packets, `new.reply` (keyed by `new.reply_key`) the answers. With
/// [`Port::Allocate`], the original entry writes the chosen port as the new source port.
#[inline(always)]
pub fn track<C: EbpfContext>(ctx: &C, flow: &Flow, new: &mut NewConnection, port: Port, len: u32) -> Result<(), Counter> {
    let expires = now_ns() + lifetime(flow.key.proto, 0);
    new.reply.peer = flow.key;
    new.reply.state = ct_state::REPLY;
    new.reply.expires_ns = expires;
    if let Port::Allocate { preferred, ipv6 } = port {
        let (port_min, port_max): (u16, u16) = (ct_config!(nat_port_min), ct_config!(nat_port_max));
        let span = (port_max as u32).saturating_sub(port_min as u32) + 1;
        let mut claimed = false;
        let ports = flow.key.proto == IPPROTO_TCP || flow.key.proto == IPPROTO_UDP;
        let shadows = ports && u16::from_be(flow.key.sport) < 16_384 && u16::from_be(flow.key.dport) >= 32_768;
        new.reply_key.dport = preferred;
        let keep = preferred != 0 && !shadows && !(ports && is_published(&new.reply_key, ipv6));
        for attempt in 0..NAT_PORT_TRIES {
            let candidate = if attempt == 0 && keep {
                preferred
            } else {
                // SAFETY: helper without arguments.
                ((port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16).to_be()
            };
            new.reply_key.dport = candidate;
            // SAFETY: read-only lookup.
            if unsafe { CONNTRACK.get(&new.reply_key) }.is_some() || host_socket_owns(ctx, &new.reply_key, false, ipv6) {
                continue;
            }
            match CT_PENDING.insert(&new.reply_key, &new.reply, BPF_NOEXIST as u64) {
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
    } else {
        // The answers' tuple may be a connection the container made itself (its own source
        // port to this very peer): a packet spoofed from that peer must not take it over. Linux
        // refuses such a clash too.
        // SAFETY: read-only lookups.
        let own = |e: Option<&CtEntry>| e.is_some_and(|e| e.state & ct_state::REPLY == 0);
        if own(unsafe { CONNTRACK.get(&new.reply_key) }) || own(unsafe { CT_PENDING.get(&new.reply_key) }) {
            return Err(Counter::DropCtTupleTaken);
        }
        // Else the answers' tuple of a connection that came another way before (through
        // another node of a cluster, say) and is over: the client reuses its tuple only then.
        // Its established entry would shadow the new one (looked up first); it goes (the
        // daemon's recount corrects the endpoint's share).
        let _ = CONNTRACK.remove(&new.reply_key);
        if CT_PENDING.insert(&new.reply_key, &new.reply, 0).is_err() {
            return Err(Counter::DropCtInsertFailed);
        }
    }
    new.original.peer = new.reply_key;
    new.original.state = 0;
    if flow.key.proto == IPPROTO_TCP {
        new.original.state = ct_state::SEQ_KNOWN;
        new.original.tcp_seq_next = flow.tcp_seq_end;
    }
    new.original.expires_ns = expires;
    new.original.packets = 1;
    new.original.bytes = len as u64;
    if CT_PENDING.insert(&flow.key, &new.original, 0).is_err() {
        let _ = CT_PENDING.remove(&new.reply_key);
        return Err(Counter::DropCtInsertFailed);
    }
    Ok(())
}
