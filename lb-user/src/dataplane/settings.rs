//! The configuration as the kernel sees it: `LB_CONFIG`'s value, the VIP
//! address filter, the sizes the maps are loaded with, and what the tables
//! hold when an earlier lbd's data plane is adopted. Pure functions of the
//! configuration; no I/O.

use std::net::Ipv4Addr;

use lb_ebpf::{Backend, VipKey, VipValue};

use super::{addr_be, LoadOptions};
use crate::config::Config;

const NS_PER_SEC: u64 = 1_000_000_000;

/// The kernel's view of the global settings (`LB_CONFIG`), for a kernel
/// whose tick is `ns_per_tick` nanoseconds (`host::ns_per_tick`).
pub fn kernel_config(cfg: &Config, ns_per_tick: u32) -> lb_ebpf::Config {
    lb_ebpf::Config {
        nat_addr_be: addr_be(cfg.nat.source),
        nat_port_min: cfg.nat.port_min,
        nat_port_max: cfg.nat.port_max,
        ring_size: cfg.dataplane.ring_size,
        ns_per_tick,
        idle_timeout_ns: cfg.flows.idle_timeout_secs * NS_PER_SEC,
        closed_timeout_ns: cfg.flows.closed_timeout_secs * NS_PER_SEC,
        port_hold_ns: cfg.nat.port_hold_secs * NS_PER_SEC,
        vip_filter: vip_filter(cfg.vips.iter().map(|v| v.address)),
        flow_buckets: lb_ebpf::flow_slots_for(cfg.dataplane.max_flows) / lb_ebpf::FLOW_WAYS,
        nat_buckets: lb_ebpf::nat_slots_for(cfg.dataplane.max_flows) / lb_ebpf::NAT_WAYS,
        mss_clamp: cfg.dataplane.mss_clamp.kernel_value(),
        pmtu_floor: cfg.dataplane.pmtu_floor,
        _pad_mss: 0,
    }
}

/// The kernel's VIP address filter for a set of VIP addresses.
pub fn vip_filter(addresses: impl Iterator<Item = Ipv4Addr>) -> [u64; 4] {
    let mut filter = [0u64; 4];
    for a in addresses {
        let bit = lb_ebpf::vip_filter_bit(addr_be(a));
        filter[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    filter
}

/// The sizes the maps are loaded with.
pub fn load_options(cfg: &Config) -> LoadOptions {
    LoadOptions {
        ring_size: cfg.dataplane.ring_size,
        max_vips: cfg.dataplane.max_vips,
        max_flows: cfg.dataplane.max_flows,
    }
}

/// What the kernel tables hold, read back for adoption.
#[derive(Clone, Debug, Default)]
pub struct KernelState {
    pub vips: Vec<(VipKey, VipValue)>,
    /// Backend slots with `BACKEND_F_PRESENT`.
    pub backends: Vec<(u32, Backend)>,
}
