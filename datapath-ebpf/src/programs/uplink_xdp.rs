//! XDP at the uplinks (`bpfnet daemon --xdp native`): the published path before the kernel
//! allocates an skb. Replies to masqueraded connections, packets of connections to published
//! ports and services, and new connections to them from outside are translated here with the
//! same conntrack, NAT and load-balancing decisions as `programs::uplink`, and redirected to the
//! container's host-side veth, which hands the frame to the container side.
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
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::bpf_redirect,
    programs::XdpContext,
};
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    ct_action, iface_flags, Counter, CtKey, IpKey, GATEWAY_MAC,
};

use crate::{
    checksum::{offload_placeholder, Incremental},
    conntrack::{self, now_ns, observe, Flow, Port},
    counters::bump,
    guard,
    headers::{write_mac, EthHdr, Ipv4Hdr, TcpHead, ETH_HDR_LEN, ETH_P_IP, IPV4_MF, IPV4_OFFSET_MASK, IP_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
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

/// A pointer to a `T` at `offset` in the frame, or `None` if the frame is too short (the same
/// opaque barrier on the context pointer as `headers::ptr_at`).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let md = core::hint::black_box(ctx.ctx);
    // SAFETY: `md` is the program's context, valid for the whole run.
    let (start, end) = unsafe { ((*md).data as usize, (*md).data_end as usize) };
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Whether the frame holds at least `len` bytes and no more than `len` plus an Ethernet
/// minimum-size padding; by pointer comparisons only (subtracting packet pointers would need
/// CAP_PERFMON from the daemon).
#[inline(always)]
fn holds(ctx: &XdpContext, len: usize) -> bool {
    let md = core::hint::black_box(ctx.ctx);
    // SAFETY: `md` is the program's context, valid for the whole run.
    let (start, end) = unsafe { ((*md).data as usize, (*md).data_end as usize) };
    start + len <= end && end <= start + len.max(MIN_FRAME)
}

/// A TCP or UDP packet XDP can translate: its flow and where the fields it rewrites are.
struct Packet {
    flow: Flow,
    ip: *mut Ipv4Hdr,
    ports: *mut [u16; 2],
    /// The L4 checksum; `None` for UDP without one (0), which stays without.
    l4_csum: Option<*mut u16>,
    len: u32,
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Packet> {
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
    let (csum_off, tcp) = match proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHead>(ctx, L4_OFF)?;
            // SAFETY: bounds-checked by `ptr_at`.
            (TCP_CSUM_OFF, Some(unsafe { tcp.read_unaligned() }))
        }
        IPPROTO_UDP => (UDP_CSUM_OFF, None),
        _ => return None,
    };
    let ports = ptr_at::<[u16; 2]>(ctx, L4_OFF)?;
    let csum = ptr_at::<u16>(ctx, L4_OFF + csum_off)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (check, [sport, dport]) = unsafe { (csum.read_unaligned(), ports.read_unaligned()) };
    let no_checksum = proto == IPPROTO_UDP && check == 0;
    if !no_checksum && check == offload_placeholder(saddr, daddr, proto, l4_len) {
        return None;
    }
    let key = CtKey { saddr: IpKey::from_ipv4_octets(saddr), daddr: IpKey::from_ipv4_octets(daddr), sport, dport, proto, _pad: [0; 3] };
    let mut flow = Flow::new(key, L4_OFF);
    if let Some(tcp) = tcp {
        flow.set_tcp(&tcp, l4_len as u32);
    }
    Some(Packet { flow, ip, ports, l4_csum: (!no_checksum).then_some(csum), len: frame as u32 })
}

/// Whether a frame redirected to host-side veth `ifindex` reaches its container.
#[inline(always)]
fn delivers(ifindex: u32) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { IFACES.get(&ifindex) }.is_some_and(|i| i.flags & iface_flags::XDP_DELIVERY != 0)
}

#[inline(always)]
pub fn from_uplink(ctx: &XdpContext) -> u32 {
    let Some(p) = parse(ctx) else { return XDP_PASS };
    let now = now_ns();
    if let Some(tracked) = conntrack::lookup(&p.flow.key) {
        // SAFETY: a map value, copied before the packet is touched.
        let t = Translation::of(unsafe { &*tracked.entry });
        // As at TC: only entries that take packets from outside, and not the answers a socket
        // of the host owns.
        if !nat::from_outside(&t) || !delivers(t.ifindex) || nat::host_owns_answer(ctx, &p.flow, &t) {
            return XDP_PASS;
        }
        observe(tracked, &p.flow, p.len, now);
        return deliver(ctx, &p, &t, Counter::XdpNatIn);
    }
    // A VIP is reached from its network and the host only.
    let Some(target) = nat::published_target(ctx, &p.flow, false).filter(|t| t.network == 0) else { return XDP_PASS };
    // Only what XDP would publish is screened here (the host's own traffic passes on unchecked,
    // to TC, which screens it): what the guard refuses, TC drops and counts.
    if guard::uplink_refusal(p.flow.key.saddr.ipv4_word(), p.flow.key.daddr.ipv4_word()).is_some() {
        return XDP_PASS;
    }
    let Some(Choice::Backend(backend)) = lb::choose(&target, &p.flow.key, now) else { return XDP_PASS };
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    let Some(server) = (unsafe { ENDPOINTS.get(&backend.addr) }).copied() else { return XDP_PASS };
    if !delivers(server.host_ifindex) {
        return XDP_PASS;
    }
    let Some(new) = conntrack::new_connection() else { return XDP_PASS };
    let service = target.service != 0;
    nat::published_connection(new, &p.flow, &backend, &server, if service { ct_action::SERVICE } else { ct_action::PUBLISHED });
    if let Err(reason) = conntrack::track(ctx, &p.flow, new, Port::Fixed, p.len) {
        bump(reason);
        return XDP_DROP;
    }
    let t = Translation::of(&new.original);
    deliver(ctx, &p, &t, if service { Counter::XdpServiceBalanced } else { Counter::XdpNatIn })
}

/// One side of a packet (its source or destination) becomes `new_addr`:`new_port`; the IP and L4
/// checksums (`csums`) follow (the L4 one covers the address through its pseudo-header).
#[inline(always)]
fn rewrite_side(addr: &mut [u8; 4], port: &mut u16, new_addr: u32, new_port: u16, csums: &mut (Incremental, Incremental)) {
    let old = u32::from_ne_bytes(*addr);
    csums.0.replace4(old, new_addr);
    csums.1.replace4(old, new_addr);
    csums.1.replace2(*port, new_port);
    *addr = new_addr.to_ne_bytes();
    *port = new_port;
}

/// Translates the packet as `t` says, with the TTL down by one (a router's hop), and redirects
/// it into `t`'s container.
#[inline(always)]
fn deliver(ctx: &XdpContext, p: &Packet, t: &Translation, counter: Counter) -> u32 {
    // SAFETY: `p`'s pointers were bounds-checked by `parse`, in this run, and the frame's bounds
    // do not change here.
    unsafe {
        let ip = p.ip;
        let mut csums = (Incremental::of((*ip).check), Incremental::of(p.l4_csum.map_or(0, |c| c.read_unaligned())));
        let [mut sport, mut dport] = p.ports.read_unaligned();
        if t.action & ct_action::REWRITE_SRC != 0 {
            rewrite_side(&mut (*ip).saddr, &mut sport, t.src, t.src_port, &mut csums);
        }
        if t.action & ct_action::REWRITE_DST != 0 {
            rewrite_side(&mut (*ip).daddr, &mut dport, t.dst, t.dst_port, &mut csums);
        }
        let (mut ip_csum, l4_csum) = csums;
        // The TTL shares its checksummed word with the protocol.
        let old_ttl = u16::from_ne_bytes([(*ip).ttl, (*ip).protocol]);
        (*ip).ttl -= 1;
        ip_csum.replace2(old_ttl, u16::from_ne_bytes([(*ip).ttl, (*ip).protocol]));
        (*ip).check = ip_csum.finish();
        p.ports.write_unaligned([sport, dport]);
        if let Some(csum) = p.l4_csum {
            let mut check = l4_csum.finish();
            if check == 0 && p.flow.key.proto == IPPROTO_UDP {
                // 0 would mean "no checksum" (RFC 768): the same sum is written as 0xffff.
                check = 0xffff;
            }
            csum.write_unaligned(check);
        }
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return XDP_DROP };
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        write_mac(&raw mut (*eth).dst, &t.mac);
        write_mac(&raw mut (*eth).src, &GATEWAY_MAC);
    }
    // SAFETY: helper call with plain integer arguments.
    let verdict = unsafe { bpf_redirect(t.ifindex, 0) } as u32;
    if verdict == XDP_REDIRECT {
        bump(counter);
        verdict
    } else {
        bump(Counter::DropRedirectFailed);
        XDP_DROP
    }
}
