//! One view of a packet for the TC and the XDP programs (as Cilium's `ctx`): the library
//! modules (`headers`, `checksum`, `conntrack`, `nat`, `route`, `counters`, `trace`) are written
//! once against [`Packet`], and each program kind supplies its packet access, checksum updates,
//! verdicts and delivery into a container.
//!
//! TC has the skb: the kernel's helpers load, store and update checksums knowing its checksum
//! state (a veth's CHECKSUM_PARTIAL, a NIC's CHECKSUM_COMPLETE). XDP has the frame only: loads
//! and stores are direct, and checksums are updated by RFC 1624 arithmetic, exact for the complete checksums XDP takes (`programs::uplink_xdp` passes on the
//! ones a sender left to offload).
use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
        BPF_F_MARK_MANGLED_0, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{bpf_redirect, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
    EbpfContext,
};

use crate::{checksum::Incremental, headers::ptr_at};

/// A packet as the library modules see it, in a TC or an XDP program.
pub trait Packet: EbpfContext {
    /// The program's return value.
    type Verdict: Copy;
    /// On to the host's network stack (TC: the skb goes on; XDP: to TC).
    const PASS: Self::Verdict;
    const DROP: Self::Verdict;

    /// Where the packet's bytes start and end, for direct packet access (`headers::ptr_at`).
    fn bounds(&self) -> (usize, usize);

    /// The interface the packet arrived on.
    fn ifindex(&self) -> u32;

    /// Reads a `T` at `offset`, which may be a variable one (after an IP header of any length).
    fn load<T>(&self, offset: usize) -> Result<T, i64>;

    /// Writes `value` at `offset`, as [`Packet::load`]; checksums are the caller's.
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64>;

    /// `bpf_l3_csum_replace`: the checksum at `offset` follows a field of `size` (2 or 4) bytes
    /// going from `from` to `to` (memory order).
    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, size: u64) -> Result<(), i64>;

    /// `bpf_l4_csum_replace`: as [`Packet::l3_csum_replace`], `flags` holding the size and
    /// `BPF_F_PSEUDO_HDR` (the field is in the pseudo-header) and `BPF_F_MARK_MANGLED_0` (UDP: a
    /// 0 checksum, "none", stays 0, and a sum of 0 is written as 0xffff).
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Result<(), i64>;

    /// Into the container whose host-side veth is `ifindex`: the verdict that does it, or
    /// `None` if the kernel refused the redirect.
    fn redirect_into_container(&self, ifindex: u32) -> Option<Self::Verdict>;
}

impl Packet for TcContext {
    type Verdict = i32;
    const PASS: i32 = TC_ACT_OK as i32;
    const DROP: i32 = TC_ACT_SHOT as i32;

    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // Through an opaque barrier: otherwise LLVM may compute `skb + 80` (the `data_end`
        // field) once, keep it in a register or on the stack, and load through it later, which
        // the verifier refuses ("dereference of modified ctx ptr").
        let skb = core::hint::black_box(self.skb.skb);
        // SAFETY: `skb` is the program's context, valid for the whole run.
        unsafe { ((*skb).data as usize, (*skb).data_end as usize) }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as in `bounds`.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        TcContext::load(self, offset)
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64> {
        TcContext::store(self, offset, value, 0)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        TcContext::l3_csum_replace(self, offset, from, to, size)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        TcContext::l4_csum_replace(self, offset, from, to, flags)
    }

    #[inline(always)]
    fn redirect_into_container(&self, ifindex: u32) -> Option<i32> {
        // At TC ingress straight into the peer, the container side: no second pass through
        // the host-side veth's backlog.
        // SAFETY: helper call with plain integer arguments.
        let verdict = unsafe { bpf_redirect_peer(ifindex, 0) };
        (verdict == TC_ACT_REDIRECT as i64).then_some(verdict as i32)
    }
}

impl Packet for XdpContext {
    type Verdict = u32;
    const PASS: u32 = XDP_PASS;
    const DROP: u32 = XDP_DROP;

    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // The same barrier as TC's.
        let md = core::hint::black_box(self.ctx);
        // SAFETY: `md` is the program's context, valid for the whole run.
        unsafe { ((*md).data as usize, (*md).data_end as usize) }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as in `bounds`.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    // Direct packet access, also at variable offsets (an L4 header after an IP header of any
    // length): the offsets XDP's callers pass are bounded, which the verifier follows, and a
    // load or store costs no helper call.
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        let p = ptr_at::<T>(self, offset).ok_or(-1i64)?;
        // SAFETY: bounds-checked by `ptr_at`.
        Ok(unsafe { p.read_unaligned() })
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64> {
        let p = ptr_at::<T>(self, offset).ok_or(-1i64)?;
        // SAFETY: bounds-checked by `ptr_at`; a bitwise copy of plain data (one store, where
        // a byte copy would call `memcpy`).
        unsafe { p.write_unaligned(core::ptr::read(value)) };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        let check: u16 = self.load(offset)?;
        self.store(offset, &replaced(check, from, to, size))
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        let check: u16 = self.load(offset)?;
        let mangled_0 = flags & BPF_F_MARK_MANGLED_0 as u64 != 0;
        if mangled_0 && check == 0 {
            return Ok(());
        }
        // The pseudo-header flag changes nothing here: XDP's checksums are complete.
        let mut new = replaced(check, from, to, flags & 0xf);
        if mangled_0 && new == 0 {
            new = 0xffff;
        }
        self.store(offset, &new)
    }

    #[inline(always)]
    fn redirect_into_container(&self, ifindex: u32) -> Option<u32> {
        // XDP cannot redirect into a peer: out of the host-side veth, which hands the frame to
        // the container side (`iface_flags::XDP_DELIVERY` says where that works).
        // SAFETY: helper call with plain integer arguments.
        let verdict = unsafe { bpf_redirect(ifindex, 0) } as u32;
        (verdict == XDP_REDIRECT).then_some(verdict)
    }
}

/// `check` after a field of `size` bytes went from `from` to `to` (memory order).
#[inline(always)]
fn replaced(check: u16, from: u64, to: u64, size: u64) -> u16 {
    let mut sum = Incremental::of(check);
    if size == 4 {
        sum.replace4(from as u32, to as u32);
    } else {
        sum.replace2(from as u16, to as u16);
    }
    sum.finish()
}
