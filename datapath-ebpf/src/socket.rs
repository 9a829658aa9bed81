//! Host-local access to published ports: cgroup socket programs, attached at the cgroup root,
//! that act only on sockets of the daemon's network namespace. TC programs never see what the
//! host sends itself, so a process connecting to `127.0.0.1:8080` or to the uplink's address is
//! sent to the container when its socket connects (as Cilium's socket load balancer does):
//! `connect4`/`connect6` and `sendmsg4`/`sendmsg6` rewrite the destination,
//! `getpeername4`/`getpeername6` and `recvmsg4`/`recvmsg6` show the application the address it
//! asked for (`[::1]:8080` and the host's IPv6 addresses lead to the container's IPv6 address).
//! A host service listening on the address and port keeps its clients (unless the publication
//! wins over listeners), as the TC path decides.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::map,
    maps::LruHashMap,
    programs::SockAddrContext,
    Global,
};
use datapath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    sockets::SOCK_REVNAT_ENTRIES,
    port_flags, CtKey, IpKey, PortKey, SockRevKey, SockRevValue,
};

use crate::{
    conntrack::{self, now_ns},
    lb::{self, Choice},
    maps::{is_host_address_of, PORTS},
};

/// (socket, container address and port) -> what the application asked for.
#[map(name = "SOCK_REVNAT")]
static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::with_max_entries(SOCK_REVNAT_ENTRIES, 0);

/// Named by `datapath_common::global_names::NETNS_COOKIE`; set by the daemon at load.
#[unsafe(no_mangle)]
static NETNS_COOKIE: Global<u64> = Global::new(0);

/// The socket call goes on (translated or not).
const PROCEED: i32 = 1;
/// The socket call fails with the error set by `bpf_set_retval`.
const FAIL: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let cookie = NETNS_COOKIE.load();
    // SAFETY: helper on the program's own context.
    cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == cookie
}

/// connect() and sendto(): a published port of the host becomes its container, a service (its
/// VIP or published port) one of its backends, chosen per socket; a service without backends
/// refuses (ECONNREFUSED).
#[inline(always)]
pub fn to_published(ctx: &SockAddrContext) -> i32 {
    to_published_of::<false>(ctx)
}

/// As [`to_published`] for IPv6 sockets (`connect6`, `sendmsg6`).
#[inline(always)]
pub fn to_published_v6(ctx: &SockAddrContext) -> i32 {
    to_published_of::<true>(ctx)
}

/// The address the socket call names, of the hook's family.
#[inline(always)]
fn user_address<const V6: bool>(ctx: &SockAddrContext) -> IpKey {
    let sa = ctx.sock_addr;
    // SAFETY: the context's address fields are readable in these hooks, word by word.
    unsafe {
        if V6 {
            IpKey { addr: [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]] }
        } else {
            IpKey::from_ipv4_word((*sa).user_ip4)
        }
    }
}

/// Makes the socket call name `addr` and `port` (network order) instead.
#[inline(always)]
fn set_user_address<const V6: bool>(ctx: &SockAddrContext, addr: &IpKey, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the address and port are writable in these hooks, word by word.
    unsafe {
        if V6 {
            for i in 0..4 {
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], addr.addr[i]);
            }
        } else {
            (*sa).user_ip4 = addr.ipv4_word();
        }
        (*sa).user_port = port as u32;
    }
}

#[inline(always)]
fn to_published_of<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context's fields are readable in these hooks.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return PROCEED;
    }
    let asked = user_address::<V6>(ctx);
    // An IPv6 socket may name an IPv4 address, IPv4-mapped (::ffff:127.0.0.1): IPv4's ports.
    let ipv6 = V6 && !asked.is_ipv4();
    // SAFETY: read-only lookups of plain-old-data values, copied out.
    let published = match unsafe { PORTS.get(&PortKey { addr: asked, port, proto, _pad: 0 }) } {
        Some(t) => *t,
        None => match unsafe { PORTS.get(&PortKey::any_address(port, proto, ipv6)) } {
            Some(t) if is_host_address_of(&asked, ipv6) => *t,
            _ => return PROCEED,
        },
    };
    // A host service listening there keeps its clients, as at TC (`nat::published_target`),
    // unless the publication wins over listeners; a VIP is no address of the host's.
    let listening = CtKey { saddr: IpKey::default(), daddr: asked, sport: 0, dport: port, proto, _pad: [0; 3] };
    if published.network == 0
        && published.flags & port_flags::OVER_HOST_LISTENERS == 0
        && conntrack::host_socket_owns_for_socket_program(ctx, &listening, false, ipv6)
    {
        return PROCEED;
    }
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // The host is one client (affinity keeps it on one backend); each socket is a flow, its
    // cookie standing in for the source port it has not chosen yet.
    let flow = CtKey {
        saddr: IpKey::default(),
        daddr: asked,
        sport: cookie as u16,
        dport: (cookie >> 16) as u16 ^ port,
        proto,
        _pad: [0; 3],
    };
    let target = match lb::choose(&published, &flow, now_ns()) {
        Some(Choice::Backend(target)) => target,
        Some(Choice::Refuse) => {
            // SAFETY: helper on the program's own context.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return FAIL;
        }
        None => return PROCEED,
    };
    let key = SockRevKey { cookie, addr: target.addr, port: target.port, _pad: [0; 6] };
    let _ = SOCK_REVNAT.insert(&key, &SockRevValue { addr: asked, port, _pad: [0; 2] }, 0);
    set_user_address::<V6>(ctx, &target.addr, target.port);
    PROCEED
}

/// getpeername() and recvfrom(): the container shows as what the application asked for.
#[inline(always)]
pub fn from_published(ctx: &SockAddrContext) -> i32 {
    from_published_of::<false>(ctx)
}

/// As [`from_published`] for IPv6 sockets (`getpeername6`, `recvmsg6`).
#[inline(always)]
pub fn from_published_v6(ctx: &SockAddrContext) -> i32 {
    from_published_of::<true>(ctx)
}

#[inline(always)]
fn from_published_of<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return PROCEED;
    }
    // SAFETY: as in `to_published`.
    let port = unsafe { (*ctx.sock_addr).user_port as u16 };
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey { cookie, addr: user_address::<V6>(ctx), port, _pad: [0; 6] };
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    if let Some(asked) = unsafe { SOCK_REVNAT.get(&key) }.copied() {
        set_user_address::<V6>(ctx, &asked.addr, asked.port);
    }
    PROCEED
}
