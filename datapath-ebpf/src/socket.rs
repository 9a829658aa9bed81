//! Host-local access to published ports: cgroup socket programs, attached at the cgroup root,
//! that act only on sockets of the daemon's network namespace. TC programs never see what the
//! host sends itself, so a process connecting to `127.0.0.1:8080` or to the uplink's address is
//! sent to the container when its socket connects (as Cilium's socket load balancer does):
//! `connect4` and `sendmsg4` rewrite the destination, `getpeername4` and `recvmsg4` show the
//! application the address it asked for. A host service listening on the address and port keeps
//! its clients (unless the publication wins over listeners), as the TC path decides.
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
    maps::{is_host_address, PORTS},
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
    if !ours(ctx) {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context's fields are readable and user_ip4/user_port writable in these hooks.
    let (addr, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return PROCEED;
    }
    let asked = IpKey::from_ipv4_word(addr);
    // SAFETY: read-only lookups of plain-old-data values, copied out.
    let published = match unsafe { PORTS.get(&PortKey { addr: asked, port, proto, _pad: 0 }) } {
        Some(t) => *t,
        None => match unsafe { PORTS.get(&PortKey::any_ipv4_address(port, proto)) } {
            Some(t) if is_host_address(&asked) => *t,
            _ => return PROCEED,
        },
    };
    // A host service listening there keeps its clients, as at TC (`nat::published_target`),
    // unless the publication wins over listeners; a VIP is no address of the host's.
    let listening = CtKey { saddr: IpKey::default(), daddr: asked, sport: 0, dport: port, proto, _pad: [0; 3] };
    if published.network == 0
        && published.flags & port_flags::OVER_HOST_LISTENERS == 0
        && conntrack::host_socket_owns(ctx, &listening, false, false)
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
    // SAFETY: as above.
    unsafe {
        (*sa).user_ip4 = target.addr.ipv4_word();
        (*sa).user_port = target.port as u32;
    }
    PROCEED
}

/// getpeername() and recvfrom(): the container shows as what the application asked for.
#[inline(always)]
pub fn from_published(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: as in `to_published`.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey { cookie, addr: IpKey::from_ipv4_word(addr), port, _pad: [0; 6] };
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    if let Some(asked) = unsafe { SOCK_REVNAT.get(&key) }.copied() {
        // SAFETY: as above.
        unsafe {
            (*sa).user_ip4 = asked.addr.ipv4_word();
            (*sa).user_port = asked.port as u32;
        }
    }
    PROCEED
}
