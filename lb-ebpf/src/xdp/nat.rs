//! Rewriting addresses and ports with incremental checksum updates, and
//! sending the result toward its next hop.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_ebpf::{
    csum::{replace16, replace32},
    NextHop, Reason, IPPROTO_TCP, NEXT_HOP_TTL_NS,
};

use super::{
    mss,
    parse::{Packet, TCP_SYN},
    TX_PORTS,
};

const AF_INET: u8 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> backend.
    Forward,
    /// Backend -> client.
    Reply,
}

/// Rewrites the IPv4 addresses and TCP ports, updating both checksums.
#[inline(always)]
pub fn rewrite(pkt: &Packet, src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16) {
    // SAFETY: `ip` and `tcp` were bounds-checked by `parse`, and point into
    // the packet, which this program owns for the duration of the call.
    let (ip, tcp) = unsafe { (&mut *pkt.ip, &mut *pkt.tcp) };
    let old_src = u32::from_ne_bytes(ip.src_addr);
    let old_dst = u32::from_ne_bytes(ip.dst_addr);
    let old_sport = u16::from_ne_bytes(tcp.source);
    let old_dport = u16::from_ne_bytes(tcp.dest);

    let mut c = u16::from_ne_bytes(ip.check);
    c = replace32(c, old_src, src_be);
    c = replace32(c, old_dst, dst_be);
    ip.check = c.to_ne_bytes();

    // The TCP checksum covers the pseudo-header addresses and the ports.
    let mut c = u16::from_ne_bytes(tcp.check);
    c = replace32(c, old_src, src_be);
    c = replace32(c, old_dst, dst_be);
    c = replace16(c, old_sport, sport_be);
    c = replace16(c, old_dport, dport_be);
    tcp.check = c.to_ne_bytes();

    ip.src_addr = src_be.to_ne_bytes();
    ip.dst_addr = dst_be.to_ne_bytes();
    tcp.source = sport_be.to_ne_bytes();
    tcp.dest = dport_be.to_ne_bytes();
}

#[inline(always)]
fn decrement_ttl(pkt: &Packet) {
    // SAFETY: `ip` was bounds-checked by `parse`.
    let ip = unsafe { &mut *pkt.ip };
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = replace16(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
}

/// Copies a MAC address as one 4-byte and one 2-byte store (a plain array
/// assignment into packet memory becomes a call to the eBPF `memmove` loop).
#[inline(always)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: both arrays are 6 bytes long; the accesses are unaligned-safe.
    unsafe {
        core::ptr::write_unaligned(d as *mut u32, core::ptr::read_unaligned(s as *const u32));
        core::ptr::write_unaligned(
            d.add(4) as *mut u16,
            core::ptr::read_unaligned(s.add(4) as *const u16),
        );
    }
}

/// Resolves the next hop of the rewritten packet with `bpf_fib_lookup`.
#[inline(always)]
fn resolve(ctx: &XdpContext, pkt: &Packet, hop: &mut NextHop, now: u64) -> Result<(), Reason> {
    // SAFETY: `ip` was bounds-checked by `parse`. Of `tcp` only the ports
    // are read, through the raw pointer: an ICMP message's quoted segment
    // (see `icmp`) has only its first 8 bytes in the frame.
    let ip = unsafe { &*pkt.ip };
    let (sport, dport) = unsafe {
        (
            core::ptr::addr_of!((*pkt.tcp).source).read_unaligned(),
            core::ptr::addr_of!((*pkt.tcp).dest).read_unaligned(),
        )
    };
    // Zeroed word by word with volatile stores: LLVM would otherwise merge the
    // zeroing into a call to the eBPF `memset`, an out-of-line byte loop.
    let mut words = core::mem::MaybeUninit::<[u64; 8]>::uninit();
    let p = words.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < 8 {
        // SAFETY: `i < 8` keeps the store inside `words`.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    const _: () = assert!(core::mem::size_of::<FibParams>() <= 64);
    // SAFETY: `words` is 64 zeroed, 8-aligned bytes, enough for a
    // bpf_fib_lookup (checked above), and all-zero is a valid value of it.
    let fib = unsafe { &mut *(p as *mut FibParams) };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_TCP;
    fib.sport = u16::from_ne_bytes(sport);
    fib.dport = u16::from_ne_bytes(dport);
    fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The way out is known, only its MAC is not (the MSS clamp uses
        // the interface; the hop stays unresolved).
        hop.ifindex = fib.ifindex;
        return Err(Reason::PassNoNeigh);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Reason::PassFibOther);
    }
    hop.ifindex = fib.ifindex;
    copy_mac(&mut hop.smac, &fib.smac);
    copy_mac(&mut hop.dmac, &fib.dmac);
    hop.resolved_ns = if now == 0 { 1 } else { now };
    Ok(())
}

/// Sends the rewritten packet to its next hop, resolving it first if `hop`
/// is unresolved or older than `NEXT_HOP_TTL_NS`: `XDP_TX` out of the
/// interface it came in on, `XDP_REDIRECT` to another one, or to the kernel
/// when the route or the neighbour is not ready. A SYN or SYN-ACK has its
/// MSS clamped to the interfaces it crosses on the way (`mss`).
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    pkt: &Packet,
    dir: Direction,
    hop: &mut NextHop,
    now: u64,
) -> (u32, Reason) {
    let verdict = send(ctx, pkt, dir, hop, now);
    if pkt.tcp_flags & TCP_SYN != 0 && verdict.1 != Reason::DropRedirect {
        // The way out: the hop's interface, also when only its MAC is
        // missing; unknown (the ingress alone counts) when the kernel
        // routes the packet some other way.
        let egress = if verdict.1 == Reason::PassFibOther {
            0
        } else {
            hop.ifindex
        };
        mss::clamp(ctx, pkt, egress);
    }
    verdict
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    dir: Direction,
    hop: &mut NextHop,
    now: u64,
) -> (u32, Reason) {
    if hop.resolved_ns == 0 || now.saturating_sub(hop.resolved_ns) > NEXT_HOP_TTL_NS {
        if let Err(reason) = resolve(ctx, pkt, hop, now) {
            hop.resolved_ns = 0;
            return (xdp_action::XDP_PASS, reason);
        }
    }
    decrement_ttl(pkt);
    // SAFETY: `eth` was bounds-checked by `parse`.
    let eth = unsafe { &mut *pkt.eth };
    copy_mac(&mut eth.dst_addr, &hop.dmac);
    copy_mac(&mut eth.src_addr, &hop.smac);
    let forward = dir == Direction::Forward;
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        let reason = if forward {
            Reason::TxForward
        } else {
            Reason::TxReply
        };
        return (xdp_action::XDP_TX, reason);
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => {
            let reason = if forward {
                Reason::RedirectForward
            } else {
                Reason::RedirectReply
            };
            (action, reason)
        }
        Err(_) => {
            // A route out of an interface lbd is not attached to: a
            // configuration problem, reported (the counter says how often).
            aya_log_ebpf::warn!(
                ctx,
                "XDP_REDIRECT to ifindex {} refused: not in LB_TX_PORTS",
                hop.ifindex
            );
            (xdp_action::XDP_DROP, Reason::DropRedirect)
        }
    }
}
