//! Per-CPU packet counters, read and summed by `bpfnet stats`. Every packet is counted exactly
//! once, with the outcome that decided its fate: that is also where the opt-in trace records it.
use datapath_common::Counter;

use crate::{maps::COUNTERS, packet::Packet, trace};

#[inline(always)]
pub fn count(ctx: &impl Packet, counter: Counter) {
    bump(counter);
    if trace::enabled() {
        trace::outcome(ctx, counter);
    }
}

/// Counts without tracing: for what is not a packet's fate (a connection evicted, a drop the
/// caller counts itself).
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts a drop reason and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop_packet<P: Packet>(ctx: &P, reason: Counter) -> P::Verdict {
    count(ctx, reason);
    P::DROP
}

/// Hands the packet to the host's network stack.
#[inline(always)]
pub fn to_host<P: Packet>(ctx: &P) -> P::Verdict {
    count(ctx, Counter::ToHost);
    P::PASS
}
