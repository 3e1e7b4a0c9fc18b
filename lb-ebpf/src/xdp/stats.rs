//! Per-CPU counters: no atomics needed, userspace sums the CPUs.

use lb_ebpf::{Counters, Event, Reason};

use super::{BACKEND_STATS, EVENTS, REASONS, VIP_STATS};
use aya_ebpf::maps::PerCpuArray;

#[inline(always)]
fn bump(map: &PerCpuArray<Counters>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup and
        // only this CPU writes its slot.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.flows += 1;
        }
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    bump(&REASONS, reason as u32, bytes, false);
}

#[inline(always)]
pub fn count_flow(vip_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    bump(&VIP_STATS, vip_id, bytes, new_flow);
    bump(&BACKEND_STATS, backend_id, bytes, new_flow);
}

#[inline(always)]
pub fn count_event(event: Event) {
    if let Some(c) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: as in `bump`: this CPU's own slot.
        unsafe { *c += 1 };
    }
}
