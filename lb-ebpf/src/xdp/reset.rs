//! Refusing a connection: turning a packet to a VIP with no backend into a
//! TCP RST back to its sender (RFC 793, "Reset Generation").

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_ebpf::{csum::fold, Reason, IPPROTO_TCP};

use super::{
    nat::copy_mac,
    parse::{parse, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;

/// One's-complement sum of `n` big-endian 16-bit words at `p` (bounded loop).
///
/// # Safety
/// `p .. p + 2n` must be readable.
#[inline(always)]
unsafe fn sum_words(p: *const u8, n: usize, mut acc: u32) -> u32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees `2n` readable bytes.
        let w = unsafe { u16::from_be_bytes([*p.add(2 * i), *p.add(2 * i + 1)]) };
        acc += w as u32;
        i += 1;
    }
    acc
}

/// Answers `pkt` with a RST (never a RST to a RST). Returns the verdict.
#[inline(always)]
pub fn reset(ctx: &XdpContext, pkt: &Packet) -> (u32, Reason) {
    if pkt.tcp_flags & TCP_RST != 0 || pkt.has_ip_options() {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    }
    // SAFETY: `ip` and `tcp` were bounds-checked by `parse`.
    let (ip, tcp) = unsafe { (&*pkt.ip, &*pkt.tcp) };
    let payload = (u16::from_be_bytes(ip.tot_len) as u32)
        .saturating_sub(IP_LEN as u32 + tcp.doff() as u32 * 4);
    let seq = u32::from_be_bytes(tcp.seq);
    let ack = u32::from_be_bytes(tcp.ack_seq);
    let flags = pkt.tcp_flags;
    // What the RST says (RFC 793): if the packet acknowledged something, the
    // RST takes that sequence number; otherwise it acknowledges the packet.
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let mut len = payload;
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };

    // Trim the frame to exactly Ethernet (+VLAN) + IPv4 + TCP headers.
    let l3 = pkt.ip as usize - ctx.data();
    let want = l3 + IP_LEN + TCP_LEN;
    let have = ctx.data_end() - ctx.data();
    if have > want {
        // SAFETY: shrinking the tail of the packet this program owns.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((have - want) as i32)) } != 0 {
            return (xdp_action::XDP_DROP, Reason::DropNoBackend);
        }
    }
    // Pointers are invalid after adjust_tail: parse again.
    let Ok(pkt) = parse(ctx) else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    // SAFETY: all three headers were bounds-checked by `parse` just above.
    let (eth, ip, tcp) = unsafe { (&mut *pkt.eth, &mut *pkt.ip, &mut *pkt.tcp) };

    let (smac, dmac) = (eth.src_addr, eth.dst_addr);
    copy_mac(&mut eth.dst_addr, &smac);
    copy_mac(&mut eth.src_addr, &dmac);

    let (src, dst) = (ip.src_addr, ip.dst_addr);
    ip.src_addr = dst;
    ip.dst_addr = src;
    ip.vihl = 0x45;
    ip.tot_len = ((IP_LEN + TCP_LEN) as u16).to_be_bytes();
    ip.id = [0, 0];
    ip.frags = 0x4000u16.to_be_bytes(); // DF
    ip.ttl = 64;
    ip.proto = IPPROTO_TCP;
    ip.check = [0, 0];
    // SAFETY: `ip` points at IP_LEN bounds-checked bytes.
    let c = !fold(unsafe { sum_words(pkt.ip as *const u8, IP_LEN / 2, 0) });
    ip.check = c.to_be_bytes();

    let (sport, dport) = (tcp.source, tcp.dest);
    tcp.source = dport;
    tcp.dest = sport;
    tcp.seq = rst_seq.to_be_bytes();
    tcp.ack_seq = rst_ack.to_be_bytes();
    // Data offset 5 words, no options; then the flags byte.
    // SAFETY: bytes 12 and 13 lie inside the bounds-checked TCP header.
    unsafe {
        *(pkt.tcp as *mut u8).add(12) = 5 << 4;
        *(pkt.tcp as *mut u8).add(13) = rst_flags;
    }
    tcp.window = [0, 0];
    tcp.urg_ptr = [0, 0];
    tcp.check = [0, 0];
    let pseudo = (u16::from_be_bytes([dst[0], dst[1]]) as u32)
        + (u16::from_be_bytes([dst[2], dst[3]]) as u32)
        + (u16::from_be_bytes([src[0], src[1]]) as u32)
        + (u16::from_be_bytes([src[2], src[3]]) as u32)
        + IPPROTO_TCP as u32
        + TCP_LEN as u32;
    // SAFETY: `tcp` points at TCP_LEN bounds-checked bytes.
    let c = !fold(unsafe { sum_words(pkt.tcp as *const u8, TCP_LEN / 2, pseudo) });
    tcp.check = c.to_be_bytes();
    (xdp_action::XDP_TX, Reason::TxReset)
}
