//! ICMP "fragmentation needed" for a VIP's connections (path MTU discovery).
//!
//! A router between the load balancer and a client that cannot forward one
//! of the backend's segments (too big, DF set) answers the source of that
//! segment: the VIP. The host has no socket for it, so without this the
//! backend would never learn the smaller MTU and would resend the same
//! segment until the connection died (a PMTU black hole). The message is
//! turned into what the backend would have received had it talked to the
//! client itself: sent to the backend, from the NAT address, quoting the
//! segment as the backend sent it (backend -> NAT address:port).

use aya_ebpf::programs::XdpContext;
use lb_ebpf::{
    csum::{replace16, replace32},
    vip_filter_contains, FlowKey, Reason, IPPROTO_TCP,
};
use network_types::ip::Ipv4Hdr;

use super::{
    lb::{forward, now, Verdict},
    parse::{ptr_at, OtherIp, Packet},
    stats,
    table::find_flow,
    CONFIG,
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMP header: type, code, checksum, unused, next-hop MTU.
const ICMP_HDR_LEN: usize = 8;

#[inline(always)]
fn pass() -> Verdict {
    (aya_ebpf::bindings::xdp_action::XDP_PASS, Reason::PassNotTcp)
}

#[inline(always)]
fn read32(p: *const u8) -> u32 {
    // SAFETY: callers pass pointers bounds-checked for 4 bytes.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

#[inline(always)]
fn read16(p: *const u8) -> u16 {
    // SAFETY: callers pass pointers bounds-checked for 2 bytes.
    unsafe { core::ptr::read_unaligned(p as *const u16) }
}

#[inline(always)]
fn write32(p: *mut u8, v: u32) {
    // SAFETY: callers pass pointers bounds-checked for 4 bytes.
    unsafe { core::ptr::write_unaligned(p as *mut u32, v) }
}

#[inline(always)]
fn write16(p: *mut u8, v: u16) {
    // SAFETY: callers pass pointers bounds-checked for 2 bytes.
    unsafe { core::ptr::write_unaligned(p as *mut u16, v) }
}

/// An IPv4 packet that is not TCP: a "fragmentation needed" about one of a
/// VIP's connections goes to its backend; everything else passes.
#[inline(always)]
pub fn handle(ctx: &XdpContext, other: &OtherIp) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return pass();
    };
    if cfg.nat_addr_be == 0 || cfg.ns_per_tick == 0 || cfg.flow_buckets == 0 {
        return pass();
    }
    // SAFETY: `ip` was bounds-checked by `parse`.
    let ip = unsafe { &mut *other.ip };
    let vip_addr = u32::from_ne_bytes(ip.dst_addr);
    if ip.proto != IPPROTO_ICMP
        || !vip_filter_contains(&cfg.vip_filter, vip_addr)
        || ip.vihl != 0x45
        || u16::from_be_bytes(ip.frags) & 0x3fff != 0
    {
        return pass();
    }
    // The ICMP header, the quoted IPv4 header (no options) and the first 8
    // bytes of the quoted TCP header (its ports), all in the frame.
    let icmp_at = other.l3 + Ipv4Hdr::LEN;
    let Some(icmp) = ptr_at::<[u8; ICMP_HDR_LEN + Ipv4Hdr::LEN + 8]>(ctx, icmp_at) else {
        return pass();
    };
    let icmp = icmp as *mut u8;
    // SAFETY: all of the offsets below lie inside the 36 bytes checked above.
    let (kind, code, inner_vihl, inner_proto) = unsafe {
        (
            *icmp,
            *icmp.add(1),
            *icmp.add(ICMP_HDR_LEN),
            *icmp.add(ICMP_HDR_LEN + 9),
        )
    };
    if kind != ICMP_DEST_UNREACH || code != ICMP_FRAG_NEEDED {
        return pass();
    }
    if inner_vihl != 0x45 || inner_proto != IPPROTO_TCP {
        return pass();
    }
    // SAFETY: as above.
    let (inner, ports) = unsafe {
        (
            icmp.add(ICMP_HDR_LEN),
            icmp.add(ICMP_HDR_LEN + Ipv4Hdr::LEN),
        )
    };
    // SAFETY: as above (addresses at 12 and 16 of the quoted header).
    let (q_src, q_dst) = unsafe { (read32(inner.add(12)), read32(inner.add(16))) };
    // SAFETY: as above.
    let (q_sport, q_dport) = unsafe { (read16(ports), read16(ports.add(2))) };
    // The quoted segment went VIP -> client: it must name this VIP.
    if q_src != vip_addr {
        return pass();
    }
    let key = FlowKey {
        src_addr_be: q_dst,
        dst_addr_be: q_src,
        src_port_be: q_dport,
        dst_port_be: q_sport,
        proto: IPPROTO_TCP,
        _pad1: 0,
        _pad2: 0,
    };
    let Some((_, f)) = find_flow(cfg, &key) else {
        return pass();
    };
    if ip.ttl <= 1 {
        return pass();
    }

    // The quoted segment, as the backend sent it: backend:port -> NAT:port.
    // SAFETY: offsets as above.
    let icmp_csum = unsafe { icmp.add(2) };
    let inner_csum = unsafe { inner.add(10) };
    let mut c = read16(icmp_csum);
    let old_inner_csum = read16(inner_csum);
    let mut ic = old_inner_csum;
    ic = replace32(ic, q_src, f.backend_addr_be);
    ic = replace32(ic, q_dst, cfg.nat_addr_be);
    c = replace32(c, q_src, f.backend_addr_be);
    c = replace32(c, q_dst, cfg.nat_addr_be);
    c = replace16(c, q_sport, f.backend_port_be);
    c = replace16(c, q_dport, f.nat_port_be);
    c = replace16(c, old_inner_csum, ic);
    // SAFETY: offsets as above.
    unsafe {
        write32(inner.add(12), f.backend_addr_be);
        write32(inner.add(16), cfg.nat_addr_be);
        write16(inner_csum, ic);
        write16(ports, f.backend_port_be);
        write16(ports.add(2), f.nat_port_be);
    }
    write16(icmp_csum, c);

    // The message itself: NAT address -> backend.
    let old_src = u32::from_ne_bytes(ip.src_addr);
    let mut c = u16::from_ne_bytes(ip.check);
    c = replace32(c, old_src, cfg.nat_addr_be);
    c = replace32(c, vip_addr, f.backend_addr_be);
    ip.check = c.to_ne_bytes();
    ip.src_addr = cfg.nat_addr_be.to_ne_bytes();
    ip.dst_addr = f.backend_addr_be.to_ne_bytes();

    stats::count_flow(
        f.vip_id,
        f.backend_id,
        (ctx.data_end() - ctx.data()) as u64,
        false,
    );
    // `transmit` takes the ports for a route lookup from `tcp`: the quoted
    // ones, which lie inside the checked bytes (only the first 4 are read).
    let pkt = Packet {
        eth: other.eth,
        ip: other.ip,
        tcp: ports as *mut _,
        ip_hdr_len: Ipv4Hdr::LEN,
        first_fragment: false,
        tcp_flags: 0,
    };
    let now = now(cfg);
    let (action, reason) = forward(ctx, &pkt, f.backend_id, now);
    let reason = match reason {
        Reason::TxForward => Reason::TxIcmp,
        Reason::RedirectForward => Reason::RedirectIcmp,
        r => r,
    };
    (action, reason)
}
