//! bpfnet datapath: TC programs that replace the Linux bridge under container networks.
//!
//! `from_container` runs at TC ingress (a direct-action filter) of the host-side veth of every
//! endpoint, i.e. on every packet a container sends. It answers ARP itself (there is no bridge to
//! flood), enforces isolation between networks and `icc=false`, delivers same-network traffic
//! straight into the receiving container's namespace with `bpf_redirect_peer`, masquerades traffic
//! to the outside (connection tracking and SNAT in BPF maps, then out of the uplink through the
//! FIB), and hands traffic for the host to the host stack.
//!
//! `from_uplink` runs at TC ingress of every uplink: replies to masqueraded connections, and ICMP
//! errors about them, are translated back and delivered straight into their container.
//!
//! `xdp_from_uplink` runs in XDP on every uplink where the driver runs XDP natively (`--xdp auto`): the
//! same published path as `from_uplink` before the kernel allocates an skb; what it cannot do it
//! passes on to `from_uplink`.
//!
//! `from_overlay` runs at TC ingress of the node's VXLAN device (clusters): packets from endpoints
//! on other nodes, checked against the tunnel they came by and delivered into their container.
//! Where the datapath does VXLAN itself, `from_uplink` takes the headers off and tail-calls
//! `from_underlay`, which does the same.
//!
//! `sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4` and `sock_getpeername4` (and their IPv6
//! twins) run at the cgroup root for sockets of the daemon's namespace only: a process of the
//! host reaching a published port.
//!
//! The program bodies are in `programs` (`container`, `uplink`, `uplink_xdp`, `overlay`), thin
//! compositions of one library module per concern, each owning its maps, written once for TC and
//! XDP over `packet::Packet` (packet access, checksum updates, verdicts, delivery): `headers` (layouts, offsets),
//! `checksum` (in-place rewrites), `mem` (zeroing without byte loops), `arp`, `overlay` (tunnel keys,
//! VNIs), `conntrack` (tuples, state, the connection tables), `nat` (translations, new connections' entries,
//! delivery), `lb` (service backends: Maglev, affinity), `guard` (martian, spoofed and
//! unsolicited packets), `reject` (refusing connections to empty services), `route` (FIB and
//! redirects), `socket` (the cgroup programs), `counters` and `trace`.
#![no_std]
#![no_main]

mod arp;
mod checksum;
mod conntrack;
mod counters;
mod guard;
mod headers;
mod icmpv6;
mod lb;
mod maps;
mod mem;
mod nat;
mod ndp;
mod overlay;
mod packet;
mod programs;
mod reject;
mod route;
mod socket;
mod trace;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    programs::container::from_container(&ctx)
}

/// Not attached: `from_container` tail-calls it with a container's IPv6 packet.
#[classifier]
pub fn from_container_v6(ctx: TcContext) -> i32 {
    programs::container_v6::from_container_v6(&ctx)
}

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    programs::uplink::from_uplink(&ctx)
}

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    programs::overlay::from_overlay(&ctx)
}

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    programs::overlay::from_underlay(&ctx)
}

#[xdp]
pub fn xdp_from_uplink(ctx: XdpContext) -> u32 {
    programs::uplink_xdp::from_uplink(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    socket::to_published(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    socket::to_published(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    socket::from_published(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    socket::from_published(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    socket::to_published_v6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    socket::to_published_v6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    socket::from_published_v6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    socket::from_published_v6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
