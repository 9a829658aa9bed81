//! Per-CPU packet counters, read and summed by `bpfnet stats`. Every packet is counted exactly
//! once, with the outcome that decided its fate: that is also where the opt-in trace records it.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use datapath_common::Counter;

use crate::{maps::COUNTERS, trace};

#[inline(always)]
pub fn count(ctx: &TcContext, counter: Counter) {
    bump(counter);
    if trace::enabled() {
        trace::outcome(ctx, counter);
    }
}

/// Counts a packet without tracing it (XDP: the trace reads packets through the TC context).
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts a drop reason and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop_packet(ctx: &TcContext, reason: Counter) -> i32 {
    count(ctx, reason);
    TC_ACT_SHOT as i32
}

/// Hands the packet to the host's network stack.
#[inline(always)]
pub fn to_host(ctx: &TcContext) -> i32 {
    count(ctx, Counter::ToHost);
    TC_ACT_OK as i32
}
