//! bpfnet datapath: TC programs that replace the Linux bridge under container networks.
//!
//! `from_container` runs at TC ingress (TCX) of the host-side veth of every endpoint, i.e. on every
//! packet a container sends. It answers ARP itself (there is no bridge to flood), enforces isolation
//! between networks and `icc=false`, delivers same-network traffic straight into the receiving
//! container's namespace with `bpf_redirect_peer`, masquerades traffic to the outside (connection
//! tracking and SNAT in BPF maps, then out of the uplink through the FIB), and hands traffic for the
//! host to the host stack.
//!
//! `from_uplink` runs at TC ingress of every uplink: replies to masqueraded connections, and ICMP
//! errors about them, are translated back and delivered straight into their container.
//!
//! One module per concern: `headers` (layouts, offsets), `checksum` (in-place rewrites), `arp`,
//! `conntrack` (tuples, state, the CT maps), `nat`, `route` (FIB and redirects), `forward`
//! (container-side decisions), `counters` and `trace`.
#![no_std]
#![no_main]

mod arp;
mod checksum;
mod conntrack;
mod counters;
mod forward;
mod headers;
mod maps;
mod nat;
mod route;
mod trace;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    forward::from_container(&ctx)
}

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    nat::from_uplink(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
