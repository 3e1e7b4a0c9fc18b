//! The XDP program: entry points and maps. One concern per file:
//! `parse` (headers, strict bounds checks), `lb` (VIP, flow and ring lookups,
//! NAT port choice), `table` (the flow and NAT tables), `nat` (rewrites,
//! checksums, next hop and transmit), `mss` (the MSS clamp), `icmp` (path
//! MTU discovery through the NAT), `reset` (RSTs), `stats` (counters).

mod icmp;
mod lb;
mod mss;
mod nat;
mod parse;
mod reset;
mod stats;
mod table;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_ebpf::{
    Backend, Config, Counters, Flow, NatEntry, NextHop, VipKey, VipValue, DEFAULT_MAX_FLOWS,
    DEFAULT_RING_SIZE, EVENT_COUNT, MAX_BACKENDS, MAX_TX_PORTS, MAX_VIPS, REASON_COUNT,
};

// Map names are spelled out because the attribute needs a literal; they must
// equal `lb_ebpf::map::*`, which the packet tests check against the object.

/// VIP (address, port, protocol) -> id and live ring slot. lbd writes, XDP reads.
#[map(name = "LB_VIPS")]
static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Backend id -> address, port, owning VIP, flags. lbd writes, XDP reads.
#[map(name = "LB_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Maglev rings: `(vip_id * 2 + slot) * ring_size + i` -> backend id. lbd
/// writes (and resizes at load time), XDP reads. Memory-mappable, so lbd
/// writes a whole ring with one copy instead of a system call per entry.
#[map(name = "LB_RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(16 * 2 * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

/// The flow table: client-side 5-tuple -> chosen backend and NAT port, in
/// buckets of `FLOW_WAYS` ways (`table`). XDP writes and reads; lbd counts.
#[map(name = "LB_FLOWS")]
static FLOWS: Array<Flow> = Array::with_max_entries(DEFAULT_MAX_FLOWS * 2, BPF_F_MMAPABLE);

/// The NAT table: backend-side tuple (backend, NAT port) -> client and VIP,
/// one slot per tuple (`table`). XDP writes and reads; lbd counts.
#[map(name = "LB_NAT")]
static NAT: Array<NatEntry> = Array::with_max_entries(DEFAULT_MAX_FLOWS * 2, BPF_F_MMAPABLE);

/// Global settings (one entry). lbd writes, XDP reads.
#[map(name = "LB_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Interfaces that `XDP_REDIRECT` may send to (ifindex -> ifindex). lbd writes.
#[map(name = "LB_TX_PORTS")]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Per VIP id counters. XDP writes, lbd reads.
#[map(name = "LB_VIP_STATS")]
static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per backend id counters. XDP writes, lbd reads.
#[map(name = "LB_BE_STATS")]
static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per verdict reason counters. XDP writes, lbd reads.
#[map(name = "LB_REASONS")]
static REASONS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Per event counters (`lb_ebpf::Event`). XDP writes, lbd reads.
#[map(name = "LB_EVENTS")]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);

/// Backend id -> next hop toward it, shared by the backend's new flows so a
/// SYN needs no `bpf_fib_lookup` either. XDP writes and reads.
#[map(name = "LB_BE_HOPS")]
static BACKEND_HOPS: Array<NextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The load balancer. Inlined into the entry point the macro wraps it in:
/// left to itself LLVM may make it a function of its own, and every packet
/// would pay for a call and a return.
#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // The length as received: a reset trims the frame.
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = lb::handle(&ctx);
    stats::count_reason(reason, len);
    action
}

/// Passes every packet. For the far end of a veth, so that frames sent into
/// it with XDP_TX / XDP_REDIRECT are delivered.
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The benchmark floor: parse Ethernet and IPv4, swap the MACs, `XDP_TX`.
/// Not attached by lbd; `cargo xtask bench` measures it to give the cost of
/// the load balancer as a ratio to the least any forwarding program does.
#[xdp]
pub fn lb_xdp_floor(ctx: XdpContext) -> u32 {
    use network_types::{eth::EthHdr, ip::Ipv4Hdr};
    let Some(eth) = parse::ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    if parse::ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN).is_none() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: `eth` is bounds-checked just above.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    xdp_action::XDP_TX
}

/// lbd's clock (`lb_ebpf::prog::CLOCK`): the tables' time, written into the
/// first 8 bytes of the frame it is test-run on. Never attached.
#[xdp]
pub fn lb_xdp_clock(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(p) = parse::ptr_at::<[u8; 8]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `p` is bounds-checked for 8 bytes just above.
    unsafe { core::ptr::write_unaligned(p as *mut u64, lb::now(cfg)) };
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
