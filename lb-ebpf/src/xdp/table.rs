//! The flow and NAT tables: plain arrays this program manages itself.
//!
//! A kernel hash map costs a new connection a locked, out-of-line update per
//! table (measured at 170–200 ns each on the development VM even with every
//! line in cache); a slot in an array costs a few stores. The price is doing
//! here what the kernel did there:
//!
//! - **Placement.** A flow lives in one of the [`FLOW_WAYS`] ways of its
//!   bucket: the way already holding its tuple, else a free one, else the
//!   one idle longest. A NAT entry lives in a free way of its tuple's
//!   bucket and is never displaced while it may be in use: as the NAT port
//!   is ours to choose, a claim whose bucket is full simply tries the flow's
//!   next candidate port.
//! - **Concurrent writers.** A writer turns the entry's `gen` from the even
//!   value it saw when it chose the way to odd with a compare-and-swap, so
//!   of two CPUs claiming one entry only one writes it, and nobody writes
//!   over an entry filled since they looked; the other moves on (another
//!   candidate port, or no flow entry: the packet is forwarded all the
//!   same). A NAT writer then checks the bucket's other ways for its tuple,
//!   and withdraws if another CPU put it there at the same moment.
//! - **Readers.** A reader copies the entry between two reads of `gen` and
//!   discards the copy if `gen` changed or was odd, so it never acts on half
//!   of one connection and half of another.
//! - **Order.** Ways are taken in order, and `gen` is 0 only in a way never
//!   written, so every scan stops at the first such way.
//!
//! docs/dataplane.md ("Tables") has the whole argument.

use core::sync::atomic::{compiler_fence, Ordering};

use lb_ebpf::{flow_bucket, nat_bucket, Config, Flow, FlowKey, NatEntry, FLOW_WAYS, NAT_WAYS};

use aya_ebpf::maps::Array;

use super::{FLOWS, NAT};

/// Compare-and-swap of a `u32` in map memory: stores `new` if it holds
/// `old`, returns what it held. A full barrier on every architecture the
/// kernel JITs eBPF for.
#[inline(always)]
fn cas(word: *mut u32, old: u32, new: u32) -> u32 {
    let mut r0 = old as u64;
    // SAFETY: `word` points into a map value (checked by the verifier, which
    // also checks the alignment); BPF_CMPXCHG compares with and returns in r0.
    unsafe {
        core::arch::asm!(
            "w0 = cmpxchg32_32(r1 + 0, w0, w2)",
            in("r1") word,
            in("r2") new as u64,
            inout("r0") r0,
        );
    }
    r0 as u32
}

#[inline(always)]
fn read_gen(word: *const u32) -> u32 {
    // SAFETY: a plain aligned load from map memory.
    unsafe { core::ptr::read_volatile(word) }
}

/// Takes an entry for writing, provided it is still as the caller saw it
/// (generation `seen`): `Some(odd gen)` if this CPU now holds it. Without
/// the `seen` condition, a CPU that chose a free way could overwrite another
/// CPU's entry written there since.
#[inline(always)]
fn begin_write(word: *mut u32, seen: u32) -> Option<u32> {
    if seen & 1 != 0 || cas(word, seen, seen.wrapping_add(1)) != seen {
        return None;
    }
    Some(seen.wrapping_add(1))
}

/// Releases an entry taken with `begin_write`, after its body is written;
/// returns its new generation. That is never 0 again, even when the count
/// wraps: 0 marks a way never written, after which a scan stops.
#[inline(always)]
fn end_write(word: *mut u32, odd: u32) -> u32 {
    let next = match odd.wrapping_add(1) {
        0 => 2,
        n => n,
    };
    // A CAS rather than a store: it orders the body's stores before the
    // release on weakly ordered CPUs too.
    cas(word, odd, next);
    next
}

/// A consistent copy of the entry at `p` (whose first field is its `gen`),
/// or `None` while a writer holds it.
#[inline(always)]
fn snapshot<T: Copy>(p: *const T) -> Option<T> {
    let word = p as *const u32;
    let g = read_gen(word);
    if g & 1 != 0 {
        return None;
    }
    compiler_fence(Ordering::Acquire);
    // SAFETY: `p` comes from a successful array lookup.
    let copy = unsafe { *p };
    compiler_fence(Ordering::Acquire);
    if read_gen(word) != g {
        return None;
    }
    Some(copy)
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    a.src_addr_be == b.src_addr_be
        && a.dst_addr_be == b.dst_addr_be
        && a.src_port_be == b.src_port_be
        && a.dst_port_be == b.dst_port_be
        && a.proto == b.proto
}

/// The entry among the `ways` ways of `table` from `base` that `matches`:
/// a pointer for updating it in place, and a consistent copy to decide
/// with. Every entry type of the tables starts with its `gen`.
#[inline(always)]
fn find_in<T: Copy>(
    table: &Array<T>,
    base: u32,
    ways: u32,
    matches: impl Fn(&T) -> bool,
) -> Option<(*mut T, T)> {
    let mut w = 0;
    while w < ways {
        let p = table.get_ptr_mut(base + w)?;
        if read_gen(p as *const u32) == 0 {
            // Never written: nor is any way after it.
            return None;
        }
        // SAFETY: from a successful array lookup.
        if matches(unsafe { &*p }) {
            return snapshot(p).filter(|e| matches(e)).map(|e| (p, e));
        }
        w += 1;
    }
    None
}

/// The flow entry of a client-side tuple (see [`find_in`]).
#[inline(always)]
pub fn find_flow(cfg: &Config, key: &FlowKey) -> Option<(*mut Flow, Flow)> {
    let base = flow_bucket(key, cfg.flow_buckets) * FLOW_WAYS;
    find_in(&FLOWS, base, FLOW_WAYS, |f| same_key(&f.key, key))
}

/// Records `flow` for `key` in its bucket. `free` says whether a way's
/// current occupant may be replaced without cost (empty or expired). Returns
/// false if the chosen way was being written by another CPU: the flow then
/// has no entry, and its next packet finds its NAT entry instead.
#[inline(always)]
pub fn store_flow(
    cfg: &Config,
    key: &FlowKey,
    mut flow: Flow,
    free: impl Fn(&Flow) -> bool,
) -> bool {
    let base = flow_bucket(key, cfg.flow_buckets) * FLOW_WAYS;
    // Each choice with the generation its way had when its fields were
    // read (scalars: an array here would be zeroed with a `memset` call).
    let (mut own, mut own_gen) = (FLOW_WAYS, 0);
    let (mut first_free, mut free_gen) = (FLOW_WAYS, 0);
    let (mut oldest, mut oldest_gen) = (0, 0);
    let mut oldest_seen = u64::MAX;
    let mut w = 0;
    while w < FLOW_WAYS {
        let Some(p) = FLOWS.get_ptr(base + w) else {
            return false;
        };
        // SAFETY: from a successful array lookup; `gen` is its first field.
        let g = read_gen(unsafe { &(*p).gen });
        if g == 0 {
            // Never written, nor is any way after it: the key is not here.
            if first_free == FLOW_WAYS {
                (first_free, free_gen) = (w, 0);
            }
            break;
        }
        compiler_fence(Ordering::Acquire);
        // SAFETY: as above. Fields may be mid-rewrite by another CPU: they
        // only steer the choice; the CAS from the generation read first
        // decides.
        let way = unsafe { &*p };
        if same_key(&way.key, key) {
            (own, own_gen) = (w, g);
            break;
        }
        if first_free == FLOW_WAYS && free(way) {
            (first_free, free_gen) = (w, g);
        }
        if way.last_seen_ns < oldest_seen {
            oldest_seen = way.last_seen_ns;
            (oldest, oldest_gen) = (w, g);
        }
        w += 1;
    }
    let (way, seen) = if own < FLOW_WAYS {
        (own, own_gen)
    } else if first_free < FLOW_WAYS {
        (first_free, free_gen)
    } else {
        (oldest, oldest_gen)
    };
    let Some(p) = FLOWS.get_ptr_mut(base + way) else {
        return false;
    };
    // SAFETY: from a successful array lookup; `gen` is its first field.
    let word = unsafe { &mut (*p).gen as *mut u32 };
    let Some(odd) = begin_write(word, seen) else {
        return false;
    };
    flow.gen = odd;
    flow.key = *key;
    // SAFETY: this CPU holds the way (odd `gen`); readers skip it meanwhile.
    unsafe { *p = flow };
    end_write(word, odd);
    true
}

/// The NAT entry `e` is for this backend-side tuple.
#[inline(always)]
fn holds(e: &NatEntry, backend_addr_be: u32, backend_port_be: u16, nat_port_be: u16) -> bool {
    e.backend_addr_be == backend_addr_be
        && e.backend_port_be == backend_port_be
        && e.nat_port_be == nat_port_be
}

/// The NAT entry of a backend-side tuple: a reply's source address and
/// port, and its destination port (see [`find_in`]).
#[inline(always)]
pub fn find_nat(
    cfg: &Config,
    backend_addr_be: u32,
    backend_port_be: u16,
    nat_port_be: u16,
) -> Option<(*mut NatEntry, NatEntry)> {
    let (a, p, n) = (backend_addr_be, backend_port_be, nat_port_be);
    let base = nat_bucket(a, p, n, cfg.nat_buckets) * NAT_WAYS;
    find_in(&NAT, base, NAT_WAYS, |e| holds(e, a, p, n))
}

/// Records `entry` for its tuple (backend address and port, NAT port),
/// unless the tuple is taken. `reuse` says whether the tuple's current
/// entry may be replaced (it is this client's, or idle past the hold time);
/// `free` whether a way holding another tuple may be given to it (empty, or
/// idle past the hold time). False: use another NAT port.
#[inline(always)]
pub fn claim_nat(
    cfg: &Config,
    entry: NatEntry,
    reuse: impl Fn(&NatEntry) -> bool,
    free: impl Fn(&NatEntry) -> bool,
) -> bool {
    let (a, p, n) = (
        entry.backend_addr_be,
        entry.backend_port_be,
        entry.nat_port_be,
    );
    let base = nat_bucket(a, p, n, cfg.nat_buckets) * NAT_WAYS;
    let mut first_free = NAT_WAYS;
    let mut free_gen = 0;
    let mut w = 0;
    while w < NAT_WAYS {
        let Some(slot) = NAT.get_ptr_mut(base + w) else {
            return false;
        };
        // SAFETY: from a successful array lookup; `gen` is its first field.
        let g = read_gen(unsafe { &(*slot).gen });
        if g & 1 != 0 {
            // Being written: it may be this very tuple, claimed by another
            // CPU. Leave the port to it.
            return false;
        }
        if g == 0 {
            // Never written, nor is any way after it: the tuple is not here.
            if first_free == NAT_WAYS {
                (first_free, free_gen) = (w, 0);
            }
            break;
        }
        compiler_fence(Ordering::Acquire);
        // SAFETY: as above. Fields may be mid-rewrite: they only steer the
        // choice; the CAS from `g` and the check after writing decide.
        let e = unsafe { &*slot };
        if holds(e, a, p, n) {
            // The tuple's own way: replace it, or give up on this port.
            return match snapshot(slot) {
                Some(e) if holds(&e, a, p, n) && reuse(&e) => {
                    write_nat(slot, entry, e.gen).is_some()
                }
                _ => false,
            };
        }
        if first_free == NAT_WAYS && free(e) {
            first_free = w;
            free_gen = g;
        }
        w += 1;
    }
    if first_free == NAT_WAYS {
        // A bucket full of live entries: this tuple cannot be recorded.
        return false;
    }
    let Some(slot) = NAT.get_ptr_mut(base + first_free) else {
        return false;
    };
    let Some(written) = write_nat(slot, entry, free_gen) else {
        return false;
    };
    // Another CPU may have put the same tuple in another way of the bucket
    // at the same moment (for another client). Each writer checks the other
    // ways after its own write, with a full barrier in between (the CAS), so
    // at least one of the two sees the other and withdraws.
    let mut w = 0;
    while w < NAT_WAYS {
        if w != first_free {
            let Some(other) = NAT.get_ptr(base + w) else {
                break;
            };
            // SAFETY: from a successful array lookup; `gen` is its first field.
            if read_gen(unsafe { &(*other).gen }) == 0 {
                // Never written yet, nor is any way after it: a writer that
                // takes it later checks our way after its own write.
                break;
            }
            // SAFETY: as above.
            if holds(unsafe { &*other }, a, p, n) {
                withdraw(slot, written);
                return false;
            }
        }
        w += 1;
    }
    true
}

/// Empties a NAT way this CPU just wrote, leaving it at generation
/// `written` (see [`claim_nat`]).
#[inline(always)]
fn withdraw(slot: *mut NatEntry, written: u32) {
    // SAFETY: from a successful array lookup; `gen` is its first field.
    let word = unsafe { &mut (*slot).gen as *mut u32 };
    if let Some(odd) = begin_write(word, written) {
        // SAFETY: this CPU holds the way (odd `gen`).
        unsafe {
            (*slot).backend_addr_be = 0;
            (*slot).last_seen_ns = 0;
        }
        end_write(word, odd);
    }
}

/// Writes `entry` into the way at `slot` if it is still at generation
/// `seen` (nobody wrote it since the caller looked). Returns the way's new
/// generation.
#[inline(always)]
fn write_nat(slot: *mut NatEntry, mut entry: NatEntry, seen: u32) -> Option<u32> {
    // SAFETY: from a successful array lookup; `gen` is its first field.
    let word = unsafe { &mut (*slot).gen as *mut u32 };
    let odd = begin_write(word, seen)?;
    entry.gen = odd;
    // SAFETY: this CPU holds the way (odd `gen`); readers skip it meanwhile.
    unsafe { *slot = entry };
    Some(end_write(word, odd))
}
