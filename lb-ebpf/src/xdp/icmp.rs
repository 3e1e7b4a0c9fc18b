//! ICMP "fragmentation needed" for the load balancer's connections (path MTU
//! discovery through the NAT).
//!
//! A router that cannot forward a segment (too big, DF set) answers the
//! segment's source: the VIP for a backend's segment toward a client, the
//! NAT address for a client's segment toward a backend. The host has no
//! socket for either, so without this the sender would never learn the
//! smaller MTU and would resend the same segment until the connection died
//! (a PMTU black hole). The message is turned into what the sender would
//! have received had it talked to the other end itself, and sent to it.

use aya_ebpf::programs::XdpContext;
use lb_ebpf::{
    csum::{replace16, replace32},
    entry_expired, vip_filter_contains, FlowKey, Reason, IPPROTO_TCP,
};
use network_types::ip::Ipv4Hdr;

use super::{
    lb::{forward, now, Verdict},
    nat::{self, Direction},
    parse::{ptr_at, OtherIp, Packet},
    stats,
    table::{find_flow, find_nat},
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

/// The quoted segment of a "fragmentation needed": where its fields are,
/// and what they hold.
struct Quoted {
    icmp: *mut u8,
    inner: *mut u8,
    ports: *mut u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

impl Quoted {
    /// Makes the quoted segment `src:sport -> dst:dport` instead, updating
    /// its IPv4 checksum and the ICMP checksum (which covers it). The quoted
    /// TCP checksum is left: receivers of ICMP do not check it.
    #[inline(always)]
    fn rewrite(&self, src: u32, dst: u32, sport: u16, dport: u16) {
        // SAFETY: offsets inside the bytes `handle` bounds-checked.
        let (icmp_csum, inner_csum) = unsafe { (self.icmp.add(2), self.inner.add(10)) };
        let mut c = read16(icmp_csum);
        let old_inner_csum = read16(inner_csum);
        let mut ic = old_inner_csum;
        ic = replace32(ic, self.src, src);
        ic = replace32(ic, self.dst, dst);
        c = replace32(c, self.src, src);
        c = replace32(c, self.dst, dst);
        c = replace16(c, self.sport, sport);
        c = replace16(c, self.dport, dport);
        c = replace16(c, old_inner_csum, ic);
        // SAFETY: as above.
        unsafe {
            write32(self.inner.add(12), src);
            write32(self.inner.add(16), dst);
            write16(inner_csum, ic);
            write16(self.ports, sport);
            write16(self.ports.add(2), dport);
        }
        write16(icmp_csum, c);
    }
}

/// Readdresses the ICMP message itself, updating the IPv4 checksum.
#[inline(always)]
fn readdress(ip: &mut Ipv4Hdr, src: u32, dst: u32) {
    let (old_src, old_dst) = (
        u32::from_ne_bytes(ip.src_addr),
        u32::from_ne_bytes(ip.dst_addr),
    );
    let mut c = u16::from_ne_bytes(ip.check);
    c = replace32(c, old_src, src);
    c = replace32(c, old_dst, dst);
    ip.check = c.to_ne_bytes();
    ip.src_addr = src.to_ne_bytes();
    ip.dst_addr = dst.to_ne_bytes();
}

/// An IPv4 packet that is not TCP. A "fragmentation needed" about one of
/// the load balancer's connections is carried to the other end, in that
/// end's terms: to the backend when it names a VIP (a router toward the
/// client refused a backend's segment), to the client when it names the
/// NAT address (a router toward a backend refused a client's segment).
/// Everything else passes.
#[inline(always)]
pub fn handle(ctx: &XdpContext, other: &OtherIp) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return pass();
    };
    if cfg.nat_addr_be == 0 || cfg.ns_per_tick == 0 || cfg.flow_buckets == 0 || cfg.nat_buckets == 0
    {
        return pass();
    }
    // SAFETY: `ip` was bounds-checked by `parse`.
    let ip = unsafe { &mut *other.ip };
    let to = u32::from_ne_bytes(ip.dst_addr);
    let to_nat = to == cfg.nat_addr_be;
    if ip.proto != IPPROTO_ICMP
        || !(to_nat || vip_filter_contains(&cfg.vip_filter, to))
        || ip.vihl != 0x45
        || u16::from_be_bytes(ip.frags) & 0x3fff != 0
        || ip.ttl <= 1
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
    // The message as the IPv4 header says, all in the frame and long enough
    // for what is read of it: a cut one is not carried on (the receiver
    // would discard it anyway).
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < Ipv4Hdr::LEN + ICMP_HDR_LEN + Ipv4Hdr::LEN + 8
        || other.ip as usize + tot_len > ctx.data_end()
    {
        return pass();
    }
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
    let q = unsafe {
        Quoted {
            icmp,
            inner,
            ports,
            src: read32(inner.add(12)),
            dst: read32(inner.add(16)),
            sport: read16(ports),
            dport: read16(ports.add(2)),
        }
    };
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
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let now = now(cfg);
    let (action, reason) = if to_nat {
        // The quoted segment went NAT address -> backend: one of a client's.
        if q.src != cfg.nat_addr_be {
            return pass();
        }
        let Some((slot, e)) = find_nat(cfg, q.dst, q.dport, q.sport) else {
            return pass();
        };
        if entry_expired(cfg, &e.close, e.last_seen_ns, now) {
            return pass();
        }
        // As the client sent it: client:port -> VIP:port; from the VIP.
        q.rewrite(
            e.client_addr_be,
            e.vip_addr_be,
            e.client_port_be,
            e.vip_port_be,
        );
        readdress(ip, e.vip_addr_be, e.client_addr_be);
        stats::count_flow(e.vip_id as u32, e.backend_id as u32, bytes, false);
        // SAFETY: from a successful array lookup; its hop leads to the client.
        nat::transmit(
            ctx,
            &pkt,
            Direction::Reply,
            unsafe { &mut (*slot).hop },
            now,
        )
    } else {
        // The quoted segment went VIP -> client: one of a backend's.
        if q.src != to {
            return pass();
        }
        let key = FlowKey {
            src_addr_be: q.dst,
            dst_addr_be: q.src,
            src_port_be: q.dport,
            dst_port_be: q.sport,
            proto: IPPROTO_TCP,
            _pad1: 0,
            _pad2: 0,
        };
        let Some((_, f)) = find_flow(cfg, &key) else {
            return pass();
        };
        // The backend would lower its path MTU toward the NAT address,
        // which every client shares, for as long as it keeps it (Linux: 10
        // minutes): not below the floor (docs/dataplane.md, "Whose
        // fragmentation needed is relayed").
        // SAFETY: the next-hop MTU lies in the checked ICMP header.
        let mtu = u16::from_be(read16(unsafe { icmp.add(6) }));
        if mtu < cfg.pmtu_floor {
            return (
                aya_ebpf::bindings::xdp_action::XDP_DROP,
                Reason::DropIcmpMtu,
            );
        }
        // As the backend sent it: backend:port -> NAT address:port; from
        // the NAT address, which is what EC2's source check accepts.
        q.rewrite(
            f.backend_addr_be,
            cfg.nat_addr_be,
            f.backend_port_be,
            f.nat_port_be,
        );
        readdress(ip, cfg.nat_addr_be, f.backend_addr_be);
        stats::count_flow(f.vip_id, f.backend_id, bytes, false);
        forward(ctx, &pkt, f.backend_id, now)
    };
    let reason = match reason {
        Reason::TxForward | Reason::TxReply => Reason::TxIcmp,
        Reason::RedirectForward | Reason::RedirectReply => Reason::RedirectIcmp,
        r => r,
    };
    (action, reason)
}
