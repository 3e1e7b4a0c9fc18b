//! The MSS clamp: a SYN or SYN-ACK the program sends on has its MSS option
//! lowered to what the interfaces it crosses can carry.
//!
//! Why: on EC2, ENA with an XDP program drops frames above its XDP limit
//! (MTU 3498) in the driver, before any program runs, and no ICMP tells the
//! sender. Clients in the VPC default to MTU 9001 and advertise MSS 8961, so
//! without the clamp their peer's first full-size segment vanishes, and so
//! does every retransmission of it. With the clamp both ends agree on
//! segments that fit from the start. See docs/dataplane.md, "MSS clamp".

use aya_ebpf::{helpers::bpf_check_mtu, programs::XdpContext};
use lb_ebpf::{csum::replace16_at, Event, MSS_CLAMP_AUTO, MSS_CLAMP_OFF};

use super::{parse::Packet, stats, CONFIG};

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOLEN_MSS: usize = 4;
/// The TCP header without options.
const TCP_HDR_LEN: usize = 20;
/// The longest TCP header (data offset 15).
const TCP_HDR_MAX: usize = 60;
/// IPv4 and TCP headers without options: MTU - 40 is the MSS that fits.
const HEADERS: u32 = 40;
/// The largest MSS an MTU can give (an MSS of 65535 would be read as "no
/// limit" by nobody, but keep clear of the sentinels).
const MSS_MAX: u32 = 65_495;

/// The MTU of the interface `ifindex` (0: the one the packet arrived on), or
/// `None` if the kernel does not know it.
#[inline(always)]
fn mtu_of(ctx: &XdpContext, ifindex: u32) -> Option<u32> {
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` is a valid u32 the helper writes the device MTU into;
    // with `mtu_len` 0 in, it checks the frame's own length (ignored).
    let rc = unsafe { bpf_check_mtu(ctx.ctx as *mut _, ifindex, &mut mtu, 0, 0) };
    if rc < 0 || mtu == 0 {
        None
    } else {
        Some(mtu)
    }
}

/// The largest MSS the clamp lets through for a packet leaving by `egress`
/// (an ifindex; 0 when the kernel will route it), or `None` for no clamp.
#[inline(always)]
fn limit(ctx: &XdpContext, egress: u32) -> Option<u16> {
    let cfg = CONFIG.get(0)?;
    let clamp = cfg.mss_clamp;
    if clamp == MSS_CLAMP_OFF {
        return None;
    }
    if clamp != MSS_CLAMP_AUTO {
        return Some(clamp);
    }
    let mut mtu = mtu_of(ctx, 0)?;
    if egress != 0 && egress != ctx.ingress_ifindex() as u32 {
        if let Some(out) = mtu_of(ctx, egress) {
            if out < mtu {
                mtu = out;
            }
        }
    }
    if mtu <= HEADERS {
        return None;
    }
    let mss = mtu - HEADERS;
    Some(if mss > MSS_MAX { MSS_MAX } else { mss } as u16)
}

/// Lowers the MSS option of `pkt` (a SYN or SYN-ACK, rewritten and about to
/// leave by `egress`) to the clamp, updating the TCP checksum. The options
/// are walked as TCP does: EOL ends them, NOP is one byte, every other
/// option gives its length; anything that does not add up ends the walk
/// with the packet left as it is. A SYN without an MSS option is left
/// alone too: its peer assumes 536.
#[inline(always)]
pub fn clamp(ctx: &XdpContext, pkt: &Packet, egress: u32) {
    let tcp = pkt.tcp as usize;
    // SAFETY: `tcp` was bounds-checked by `parse` for the 20-byte header.
    let end = unsafe { (*pkt.tcp).doff() } as usize * 4;
    let data_end = ctx.data_end();
    let mut off = TCP_HDR_LEN;
    // Every round moves on by at least one byte, and ends the walk at the
    // longest header's end: the verifier sees a bounded loop. (No separate
    // round counter: its value would differ on every path, and the
    // verifier could then never prune one path's state by another's.)
    loop {
        if off >= TCP_HDR_MAX || off >= end || tcp + off + 1 > data_end {
            return;
        }
        // SAFETY: bounds-checked just above.
        let kind = unsafe { *((tcp + off) as *const u8) };
        if kind == TCPOPT_EOL {
            return;
        }
        if kind == TCPOPT_NOP {
            off += 1;
            continue;
        }
        if off + 2 > end || tcp + off + 2 > data_end {
            return;
        }
        // SAFETY: bounds-checked just above.
        let len = unsafe { *((tcp + off + 1) as *const u8) } as usize;
        if len < 2 {
            return;
        }
        if kind == TCPOPT_MSS {
            if len != TCPOLEN_MSS || off + TCPOLEN_MSS > end || tcp + off + TCPOLEN_MSS > data_end {
                return;
            }
            let at = (tcp + off + 2) as *mut u16;
            // SAFETY: the option's 4 bytes are bounds-checked just above.
            let old = unsafe { core::ptr::read_unaligned(at) };
            // The limit only now: a SYN without an MSS option costs no
            // helper call.
            let Some(max) = limit(ctx, egress) else {
                return;
            };
            if u16::from_be(old) <= max {
                return;
            }
            let new = max.to_be();
            // SAFETY: as above; the checksum lies in the checked header.
            unsafe {
                core::ptr::write_unaligned(at, new);
                let check = &mut (*pkt.tcp).check;
                let c = u16::from_ne_bytes(*check);
                // The value starts at `off + 2` of the header: odd when
                // the option does.
                *check = replace16_at(c, old, new, off & 1 == 1).to_ne_bytes();
            }
            stats::count_event(Event::MssClamped);
            return;
        }
        off += len;
    }
}
