//! Per-CPU packet counters, read and summed by `bpfnet stats`.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use datapath_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts a drop reason and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop_packet(reason: Counter) -> i32 {
    count(reason);
    TC_ACT_SHOT as i32
}

/// Hands the packet to the host's network stack.
#[inline(always)]
pub fn to_host() -> i32 {
    count(Counter::ToHost);
    TC_ACT_OK as i32
}
