//! bpfnet datapath: TC programs that replace the Linux bridge under container networks.
//!
//! `from_container` runs at TC ingress (TCX) of the host-side veth of every endpoint, i.e. on every
//! packet a container sends. It answers ARP itself (there is no bridge to flood), enforces isolation
//! between networks and `icc=false`, delivers same-network traffic straight into the receiving
//! container's namespace with `bpf_redirect_peer`, and hands traffic for the host to the host stack.
#![no_std]
#![no_main]

mod arp;
mod counters;
mod forward;
mod maps;
mod packet;
mod trace;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    forward::from_container(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
