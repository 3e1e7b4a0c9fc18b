//! The load-balancing decisions: which VIP, which flow, which backend, which
//! NAT port. See docs/dataplane.md for the packet walk.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, programs::XdpContext};
use lb_ebpf::{
    hash::{flow_hash, nat_port_candidate},
    ring_hash, vip_filter_contains, CloseState, Config, Flow, FlowKey, NatEntry, NextHop, Reason,
    VipKey, VipValue, BACKEND_F_IN_USE, IPPROTO_TCP, NAT_PORT_PROBES, NO_BACKEND, SEED_NAT_PORT,
    VIP_F_RESET_EMPTY,
};

use super::{
    icmp,
    nat::{self, Direction},
    parse::{parse, NotTcp, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    reset, stats,
    table::{claim_nat, find_flow, find_nat, store_flow},
    BACKENDS, BACKEND_HOPS, CONFIG, RINGS, VIPS,
};

pub(super) type Verdict = (u32, Reason);

/// An unresolved next hop (`resolved_ns == 0`). The other fields are filled
/// from the packet rather than zeroed: they are never read while unresolved,
/// and constant zeroes would be merged by LLVM into a call to the eBPF
/// `memset`, an out-of-line byte loop.
#[inline(always)]
fn unresolved_hop(ctx: &XdpContext, pkt: &Packet) -> NextHop {
    // SAFETY: `eth` was bounds-checked by `parse`.
    let eth = unsafe { &*pkt.eth };
    let mut hop = NextHop {
        ifindex: ctx.ingress_ifindex() as u32,
        smac: [0; 6],
        dmac: [0; 6],
        resolved_ns: 0,
    };
    nat::copy_mac(&mut hop.smac, &eth.dst_addr);
    nat::copy_mac(&mut hop.dmac, &eth.src_addr);
    hop
}

#[inline(always)]
fn pass(reason: Reason) -> Verdict {
    (xdp_action::XDP_PASS, reason)
}

#[inline(always)]
fn drop(reason: Reason) -> Verdict {
    (xdp_action::XDP_DROP, reason)
}

/// Decides what happens to one packet.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Verdict {
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(NotTcp::NotIpv4) => return pass(Reason::PassNotIpv4),
        Err(NotTcp::OtherProto(other)) => return icmp::handle(ctx, &other),
        Err(NotTcp::Malformed) => return pass(Reason::PassMalformed),
        Err(NotTcp::LaterFragment) => return pass(Reason::PassFragment),
    };
    let Some(cfg) = CONFIG.get(0) else {
        return pass(Reason::PassNoVip);
    };
    if cfg.nat_addr_be == 0
        || cfg.ring_size == 0
        || cfg.ns_per_tick == 0
        || cfg.flow_buckets == 0
        || cfg.nat_buckets == 0
    {
        // Not configured yet: behave as if there were no VIPs.
        return pass(Reason::PassNoVip);
    }
    // SAFETY: `ip` and `tcp` were bounds-checked by `parse`.
    let (ip, tcp) = unsafe { (&*pkt.ip, &*pkt.tcp) };
    let key = FlowKey {
        src_addr_be: u32::from_ne_bytes(ip.src_addr),
        dst_addr_be: u32::from_ne_bytes(ip.dst_addr),
        src_port_be: u16::from_ne_bytes(tcp.source),
        dst_port_be: u16::from_ne_bytes(tcp.dest),
        proto: IPPROTO_TCP,
        _pad1: 0,
        _pad2: 0,
    };
    let to_nat_addr = key.dst_addr_be == cfg.nat_addr_be;
    if !to_nat_addr && !vip_filter_contains(&cfg.vip_filter, key.dst_addr_be) {
        return pass(Reason::PassNoVip);
    }
    let port = u16::from_be(key.dst_port_be);
    if to_nat_addr && port >= cfg.nat_port_min && port <= cfg.nat_port_max {
        if let Some(reason) = unforwardable(ctx, &pkt) {
            return drop(reason);
        }
        return reply(ctx, &pkt, cfg, &key);
    }
    // Established flows first: their entry says everything needed, so the
    // VIP table is consulted only for new connections (and for other traffic).
    let now = now(cfg);
    // A fresh SYN (no ACK) opens a connection: it is picked through the ring
    // without looking for a flow. A retransmitted SYN comes out the same (the
    // ring is deterministic and a client keeps its NAT port), and a SYN on an
    // old flow of the same tuple starts a new connection anyway.
    let fresh_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !fresh_syn {
        if let Some((p, f)) = find_flow(cfg, &key) {
            // SAFETY: `p` comes from a successful array lookup. Another CPU
            // may since have given the way to another flow: a write through
            // it then lands in that flow's entry, which costs at most one
            // packet's state (docs/dataplane.md, "Tables").
            if let Some(verdict) = established(ctx, &pkt, cfg, unsafe { &mut *p }, &f, now) {
                return verdict;
            }
        }
    }
    let vip_key = VipKey {
        addr_be: key.dst_addr_be,
        port_be: key.dst_port_be,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: VIPS is a preallocated hash map whose values lbd only replaces
    // whole; a torn read at worst picks the other (complete) ring slot.
    if let Some(vip) = unsafe { VIPS.get(vip_key) } {
        if let Some(reason) = unforwardable(ctx, &pkt) {
            return drop(reason);
        }
        return new_connection(ctx, &pkt, cfg, vip, &key, now);
    }
    if to_nat_addr {
        return pass(Reason::PassNatOtherPort);
    }
    pass(Reason::PassNoVip)
}

/// Packets addressed to us that we refuse to rewrite (docs/dataplane.md).
#[inline(always)]
fn unforwardable(ctx: &XdpContext, pkt: &Packet) -> Option<Reason> {
    if pkt.has_ip_options() {
        Some(Reason::DropIpOptions)
    } else if pkt.first_fragment {
        Some(Reason::DropFragment)
    } else if !pkt.lengths_consistent() {
        Some(Reason::DropMalformed)
    } else if pkt.truncated(ctx.data_end()) {
        Some(Reason::DropTruncated)
    } else {
        None
    }
}

/// The time in nanoseconds, to the kernel's tick (as
/// `bpf_ktime_get_coarse_ns`, without the cost of a helper call).
#[inline(always)]
pub(super) fn now(cfg: &Config) -> u64 {
    // SAFETY: a helper without arguments (inlined by the verifier).
    let ticks = unsafe { bpf_jiffies64() };
    ticks.wrapping_mul(cfg.ns_per_tick as u64)
}

#[inline(always)]
fn ttl_expires(pkt: &Packet) -> bool {
    // SAFETY: `ip` was bounds-checked by `parse`.
    unsafe { (*pkt.ip).ttl <= 1 }
}

#[inline(always)]
fn age(now: u64, last_seen: u64) -> u64 {
    now.saturating_sub(last_seen)
}

/// The flow (or NAT) entry is past its timeout (shared with lbd, which
/// counts live entries the same way).
#[inline(always)]
fn expired(cfg: &Config, close: &CloseState, last_seen: u64, now: u64) -> bool {
    lb_ebpf::entry_expired(cfg, close, last_seen, now)
}

/// A NAT port may go to a different client: its last flow has been quiet long
/// enough that the backend cannot still hold the old connection in TIME_WAIT.
#[inline(always)]
fn nat_port_free(cfg: &Config, e: &NatEntry, now: u64) -> bool {
    let mut hold = cfg.port_hold_ns;
    if !e.close.closed() && cfg.idle_timeout_ns > hold {
        hold = cfg.idle_timeout_ns;
    }
    age(now, e.last_seen_ns) > hold
}

/// What a packet's TCP flags say about closing: (FIN, RST).
#[inline(always)]
fn close_flags(tcp_flags: u8) -> (bool, bool) {
    (tcp_flags & TCP_FIN != 0, tcp_flags & TCP_RST != 0)
}

/// Records a FIN or RST with single-byte stores (never read-modify-write:
/// see `CloseState`).
#[inline(always)]
fn record_close(c: &mut CloseState, (fin, rst): (bool, bool), from_client: bool) {
    if fin {
        if from_client {
            c.fin_client = 1;
        } else {
            c.fin_backend = 1;
        }
    }
    if rst {
        c.rst = 1;
    }
}

/// A fresh close state for a new flow whose first packet says `close`.
#[inline(always)]
fn new_close(close: (bool, bool)) -> CloseState {
    let mut c = CloseState {
        fin_client: 0,
        fin_backend: 0,
        rst: 0,
        _pad: 0,
    };
    record_close(&mut c, close, true);
    c
}

/// The flow's backend is still configured for this VIP (not removed, and its
/// id not reused for another backend or another VIP).
#[inline(always)]
fn backend_live(f: &Flow) -> bool {
    match BACKENDS.get(f.backend_id) {
        Some(b) => {
            b.flags & BACKEND_F_IN_USE != 0
                && b.vip_id == f.vip_id
                && b.addr_be == f.backend_addr_be
                && b.port_be == f.backend_port_be
        }
        None => false,
    }
}

/// Client -> VIP on a known flow: `f` is a consistent copy of the entry,
/// `way` the entry itself (for its last-seen time and close state). `None`
/// if the flow cannot carry this packet (expired, or its backend is gone):
/// then it is handled as a new connection.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    way: &mut Flow,
    f: &Flow,
    now: u64,
) -> Option<Verdict> {
    let stale = expired(cfg, &f.close, f.last_seen_ns, now);
    if stale || !backend_live(f) {
        return None;
    }
    if let Some(reason) = unforwardable(ctx, pkt) {
        return Some(drop(reason));
    }
    if ttl_expires(pkt) {
        return Some(pass(Reason::PassTtl));
    }
    if f.last_seen_ns != now {
        way.last_seen_ns = now;
    }
    let close = close_flags(pkt.tcp_flags);
    if close.0 || close.1 {
        record_close(&mut way.close, close, true);
        mark_nat_closed(cfg, f, close);
    }
    stats::count_flow(
        f.vip_id,
        f.backend_id,
        (ctx.data_end() - ctx.data()) as u64,
        false,
    );
    nat::rewrite(
        pkt,
        cfg.nat_addr_be,
        f.backend_addr_be,
        f.nat_port_be,
        f.backend_port_be,
    );
    Some(forward(ctx, pkt, f.backend_id, now))
}

/// Sends a rewritten client packet toward its backend, through the next hop
/// its backend's flows share ([`BACKEND_HOPS`]), resolving it when stale.
#[inline(always)]
pub(super) fn forward(ctx: &XdpContext, pkt: &Packet, backend_id: u32, now: u64) -> Verdict {
    let mut own = unresolved_hop(ctx, pkt);
    let hop = match BACKEND_HOPS.get_ptr_mut(backend_id) {
        // SAFETY: the pointer comes from a successful array lookup. CPUs
        // racing to refresh it store equivalent hops.
        Some(h) => unsafe { &mut *h },
        // Not reached: backend ids are bounded by the same MAX_BACKENDS.
        None => &mut own,
    };
    nat::transmit(ctx, pkt, Direction::Forward, hop, now)
}

/// Client -> VIP, no usable flow: pick a backend and a NAT port.
#[inline(always)]
fn new_connection(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    vip: &VipValue,
    key: &FlowKey,
    now: u64,
) -> Verdict {
    if ttl_expires(pkt) {
        return pass(Reason::PassTtl);
    }
    let close = close_flags(pkt.tcp_flags);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let f = match new_flow_for(ctx, pkt, cfg, vip, key, now, close) {
        Ok(f) => f,
        Err(Reason::DropNoBackend) if vip.flags & VIP_F_RESET_EMPTY != 0 => {
            return reset::reset(ctx, pkt);
        }
        Err(reason) => return drop(reason),
    };
    stats::count_flow(vip.id, f.backend_id, bytes, true);
    nat::rewrite(
        pkt,
        cfg.nat_addr_be,
        f.backend_addr_be,
        f.nat_port_be,
        f.backend_port_be,
    );
    let verdict = forward(ctx, pkt, f.backend_id, now);
    // Without an entry (its way was being rewritten by another CPU: rare)
    // the flow's next packet finds its NAT entry and records it then.
    store_flow(cfg, key, f, |way| {
        expired(cfg, &way.close, way.last_seen_ns, now)
    });
    verdict
}

#[inline(always)]
fn mark_nat_closed(cfg: &Config, f: &Flow, close: (bool, bool)) {
    if let Some((p, e)) = find_nat(cfg, f.backend_addr_be, f.backend_port_be, f.nat_port_be) {
        // Only while the entry is this client's connection.
        if e.client_addr_be == f.key.src_addr_be && e.client_port_be == f.key.src_port_be {
            // SAFETY: the pointer comes from a successful array lookup.
            record_close(unsafe { &mut (*p).close }, close, true);
        }
    }
}

/// Picks a backend from the VIP's live ring and claims a NAT port (recording
/// the NAT entry); the caller stores the flow.
#[inline(always)]
fn new_flow_for(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    vip: &VipValue,
    key: &FlowKey,
    now: u64,
    close: (bool, bool),
) -> Result<Flow, Reason> {
    let h = ring_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        vip.flags,
    );
    let slot = (vip.id * 2 + (vip.ring_slot & 1)) * cfg.ring_size;
    // checked_rem: a plain `%` would keep a divide-by-zero panic path, which
    // the verifier rejects.
    let index = slot + h.checked_rem(cfg.ring_size).unwrap_or(0);
    let backend_id = match RINGS.get(index) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return Err(Reason::DropNoBackend),
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & BACKEND_F_IN_USE != 0 => b,
        _ => return Err(Reason::DropNoBackend),
    };
    let mut flow = Flow {
        gen: 0,
        vip_id: vip.id,
        key: *key,
        backend_addr_be: backend.addr_be,
        backend_port_be: backend.port_be,
        nat_port_be: 0,
        backend_id,
        close: new_close(close),
        last_seen_ns: now,
        created_ns: now,
        _spare: 0,
    };
    let entry = NatEntry {
        gen: 0,
        backend_addr_be: backend.addr_be,
        backend_port_be: backend.port_be,
        nat_port_be: 0,
        client_port_be: key.src_port_be,
        vip_port_be: key.dst_port_be,
        client_addr_be: key.src_addr_be,
        vip_addr_be: key.dst_addr_be,
        // Below MAX_BACKENDS and MAX_VIPS (array lookups above bound them).
        backend_id: backend_id as u16,
        vip_id: vip.id as u16,
        close: new_close(close),
        last_seen_ns: now,
        hop: unresolved_hop(ctx, pkt),
    };
    // A fresh SYN starts a connection. Anything else without a usable flow
    // entry may belong to a live connection whose flow entry was lost
    // (displaced, or the other load balancer of a pair handled it so far):
    // it must keep the NAT port the backend knows, if its entry is there.
    let fresh_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    flow.nat_port_be = claim_nat_port(cfg, key, entry, now, fresh_syn)?;
    Ok(flow)
}

/// The NAT entry `e` is for the same client and VIP as `entry`.
#[inline(always)]
fn same_client(e: &NatEntry, entry: &NatEntry) -> bool {
    e.client_addr_be == entry.client_addr_be
        && e.client_port_be == entry.client_port_be
        && e.vip_addr_be == entry.vip_addr_be
        && e.vip_port_be == entry.vip_port_be
}

/// Finds a NAT port for the flow toward its backend (`entry` says which)
/// and records `entry` for it. The first candidate is a hash of the
/// client's 5-tuple, so another load balancer with the same backends picks
/// the same port for the same flow; later candidates are independent
/// rehashes of it. A port is taken if unused, already this client's, or
/// idle past the hold time, and its bucket has room (docs/dataplane.md,
/// "Tables"); a packet that is not a fresh SYN first looks for this
/// client's own entry among all the candidates.
#[inline(always)]
fn claim_nat_port(
    cfg: &Config,
    key: &FlowKey,
    entry: NatEntry,
    now: u64,
    fresh_syn: bool,
) -> Result<u16, Reason> {
    let h = flow_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        key.proto,
        SEED_NAT_PORT,
    );
    let range = (cfg.nat_port_max as u32).saturating_sub(cfg.nat_port_min as u32) + 1;
    let mine = |e: &NatEntry| same_client(e, &entry);
    if !fresh_syn {
        // This client's own entry first, wherever it is among the candidates.
        let mut i = 0;
        while i < NAT_PORT_PROBES {
            let nat_port = nat_port_candidate(h, i, cfg.nat_port_min, range).to_be();
            if let Some((_, e)) =
                find_nat(cfg, entry.backend_addr_be, entry.backend_port_be, nat_port)
            {
                if mine(&e) {
                    let mut renewed = entry;
                    renewed.nat_port_be = nat_port;
                    // Keep what the connection has seen of closing.
                    renewed.close = e.close;
                    if claim_nat(cfg, renewed, mine, |_| false) {
                        return Ok(nat_port);
                    }
                }
            }
            i += 1;
        }
    }
    let free = |e: &NatEntry| nat_port_free(cfg, e, now);
    let mut i = 0;
    while i < NAT_PORT_PROBES {
        let nat_port = nat_port_candidate(h, i, cfg.nat_port_min, range).to_be();
        let mut claim = entry;
        claim.nat_port_be = nat_port;
        if claim_nat(cfg, claim, |e| mine(e) || free(e), free) {
            return Ok(nat_port);
        }
        i += 1;
    }
    Err(Reason::DropNatExhausted)
}

/// Backend -> NAT address: back to VIP -> client.
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet, cfg: &Config, key: &FlowKey) -> Verdict {
    let Some((p, e)) = find_nat(cfg, key.src_addr_be, key.src_port_be, key.dst_port_be) else {
        return drop(Reason::DropNatMiss);
    };
    let now = now(cfg);
    if expired(cfg, &e.close, e.last_seen_ns, now) {
        return drop(Reason::DropNatMiss);
    }
    if ttl_expires(pkt) {
        // Passing it would get the backend a RST from this host's stack.
        return drop(Reason::DropTtl);
    }
    // SAFETY: the pointer comes from a successful array lookup.
    let slot = unsafe { &mut *p };
    if e.last_seen_ns != now {
        slot.last_seen_ns = now;
    }
    let close = close_flags(pkt.tcp_flags);
    if close.0 || close.1 {
        record_close(&mut slot.close, close, false);
        let client = FlowKey {
            src_addr_be: e.client_addr_be,
            dst_addr_be: e.vip_addr_be,
            src_port_be: e.client_port_be,
            dst_port_be: e.vip_port_be,
            proto: IPPROTO_TCP,
            _pad1: 0,
            _pad2: 0,
        };
        if let Some((fp, f)) = find_flow(cfg, &client) {
            // Only if the client's flow is still this connection (it may
            // have been re-created toward another backend or NAT port).
            if f.nat_port_be == key.dst_port_be
                && f.backend_addr_be == key.src_addr_be
                && f.backend_port_be == key.src_port_be
            {
                // SAFETY: the pointer comes from a successful array lookup.
                record_close(unsafe { &mut (*fp).close }, close, false);
            }
        }
    }
    stats::count_flow(
        e.vip_id as u32,
        e.backend_id as u32,
        (ctx.data_end() - ctx.data()) as u64,
        false,
    );
    nat::rewrite(
        pkt,
        e.vip_addr_be,
        e.client_addr_be,
        e.vip_port_be,
        e.client_port_be,
    );
    nat::transmit(ctx, pkt, Direction::Reply, &mut slot.hop, now)
}
