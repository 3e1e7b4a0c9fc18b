//! The contract between lb's XDP program and its userspace (`lb-user`).
//!
//! Everything both sides must agree on lives here and nowhere else: map names
//! and capacities, the `#[repr(C)]` layout of map keys and values, the drop and
//! pass reasons, and the pure helpers (flow hash, checksum arithmetic) that
//! userspace uses to predict what the kernel does. Byte order is part of each
//! field's name: `_be` fields hold network byte order exactly as on the wire.
//!
//! The crate is `no_std` so the XDP program can use it; the `user` feature adds
//! `aya::Pod` impls for userspace.
#![no_std]

pub mod csum;
pub mod hash;

/// Map names (at most 15 bytes: the kernel's `BPF_OBJ_NAME_LEN - 1`).
pub mod map {
    /// `HASH` [`super::VipKey`] -> [`super::VipValue`]. Writer: lbd. Reader:
    /// XDP (new connections), lbd (adopting a running data plane).
    pub const VIPS: &str = "LB_VIPS";
    /// `ARRAY` backend id -> [`super::Backend`]. Writer: lbd. Reader: XDP,
    /// lbd (adopting a running data plane).
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// `ARRAY` (`BPF_F_MMAPABLE`) of backend ids: two ring slots of
    /// `ring_size` entries per VIP. Writer: lbd, through a shared mapping.
    /// Reader: XDP.
    pub const RINGS: &str = "LB_RINGS";
    /// `ARRAY` (`BPF_F_MMAPABLE`) of [`super::Flow`]: the flow table, a
    /// set-associative cache of client-side 5-tuples, [`super::FLOW_WAYS`]
    /// ways per bucket ([`super::flow_bucket`]). Writer: XDP. Reader: XDP,
    /// lbd (occupancy, through a shared mapping).
    pub const FLOWS: &str = "LB_FLOWS";
    /// `ARRAY` (`BPF_F_MMAPABLE`) of [`super::NatEntry`]: the NAT table,
    /// [`super::NAT_WAYS`] ways per bucket ([`super::nat_bucket`]). Writer:
    /// XDP. Reader: XDP, lbd.
    pub const NAT: &str = "LB_NAT";
    /// `ARRAY[1]` [`super::Config`]. Writer: lbd. Reader: XDP.
    pub const CONFIG: &str = "LB_CONFIG";
    /// `DEVMAP_HASH` ifindex -> ifindex, the interfaces `XDP_REDIRECT` may use.
    /// Writer: lbd. Reader: XDP.
    pub const TX_PORTS: &str = "LB_TX_PORTS";
    /// `PERCPU_ARRAY` VIP id -> [`super::Counters`]. Writer: XDP. Reader: lbd.
    pub const VIP_STATS: &str = "LB_VIP_STATS";
    /// `PERCPU_ARRAY` backend id -> [`super::Counters`]. Writer: XDP. Reader: lbd.
    pub const BACKEND_STATS: &str = "LB_BE_STATS";
    /// `PERCPU_ARRAY` [`super::Reason`] -> [`super::Counters`]. Writer: XDP. Reader: lbd.
    pub const REASONS: &str = "LB_REASONS";
    /// `ARRAY` backend id -> [`super::NextHop`]: the resolved next hop toward
    /// each backend, shared by its new flows. Writer: XDP. Reader: XDP.
    pub const BACKEND_HOPS: &str = "LB_BE_HOPS";
    /// `PERCPU_ARRAY` [`super::Event`] -> `u64`: how often something
    /// happened to a packet besides its verdict (an MSS clamped, ...).
    /// Writer: XDP. Reader: lbd.
    pub const EVENTS: &str = "LB_EVENTS";

    /// Every map, in the order they are pinned.
    pub const ALL: [&str; 12] = [
        VIPS,
        BACKENDS,
        RINGS,
        FLOWS,
        NAT,
        CONFIG,
        TX_PORTS,
        VIP_STATS,
        BACKEND_STATS,
        REASONS,
        BACKEND_HOPS,
        EVENTS,
    ];
}

/// Program names in the object.
pub mod prog {
    /// The load balancer.
    pub const LB: &str = "lb_xdp";
    /// Passes every packet. Attach it to the far end of a veth so that frames
    /// sent there with `XDP_TX`/`XDP_REDIRECT` are delivered (test topologies).
    pub const PASS: &str = "lb_xdp_pass";
    /// Benchmark reference: parse, swap MACs, `XDP_TX` (never attached by lbd).
    pub const FLOOR: &str = "lb_xdp_floor";
    /// The program's clock, for lbd: run with `BPF_PROG_TEST_RUN`, it writes
    /// the time the tables' entries are stamped with (`jiffies` ×
    /// `ns_per_tick`) into the first 8 bytes of the frame, in native byte
    /// order (never attached).
    pub const CLOCK: &str = "lb_xdp_clock";

    /// Every program in the object.
    pub const ALL: [&str; 4] = [LB, PASS, FLOOR, CLOCK];
}

/// Ways per bucket of the flow table: a new flow takes a free way of its
/// bucket, or else the one idle longest.
pub const FLOW_WAYS: u32 = 4;

/// Ways per bucket of the NAT table: a NAT entry takes a free way of its
/// tuple's bucket; a tuple whose bucket is full of live entries is not
/// used (the flow tries its next candidate port).
pub const NAT_WAYS: u32 = 4;

/// Slots of the flow table for `dataplane.max_flows` flows: the next power
/// of two, doubled, so that at full load a bucket is half used on average
/// and a new flow rarely has to displace a live one.
pub const fn flow_slots_for(max_flows: u32) -> u32 {
    table_slots_for(max_flows)
}

/// Slots of the NAT table for `dataplane.max_flows` flows, sized like the
/// flow table. A NAT entry is never displaced while its connection may be
/// alive: a new flow whose candidate port's bucket is full tries its next
/// candidate port instead, and the margin keeps that rare.
pub const fn nat_slots_for(max_flows: u32) -> u32 {
    table_slots_for(max_flows)
}

const fn table_slots_for(max_flows: u32) -> u32 {
    let n = if max_flows < FLOW_WAYS {
        FLOW_WAYS
    } else {
        max_flows
    };
    match n.checked_next_power_of_two() {
        Some(p) if p <= u32::MAX / 2 => p * 2,
        _ => 1 << 31,
    }
}

/// The flow table bucket of a client-side tuple, for a table of `buckets`
/// buckets (a power of two): its ways are slots `bucket * FLOW_WAYS ..`.
#[inline(always)]
pub const fn flow_bucket(key: &FlowKey, buckets: u32) -> u32 {
    hash::flow_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        key.proto,
        SEED_FLOW_TABLE,
    ) & buckets.wrapping_sub(1)
}

/// The NAT table bucket of a backend-side tuple (backend address and port,
/// NAT port), for a table of `buckets` buckets (a power of two): its ways
/// are slots `bucket * NAT_WAYS ..`.
#[inline(always)]
pub const fn nat_bucket(
    backend_addr_be: u32,
    backend_port_be: u16,
    nat_port_be: u16,
    buckets: u32,
) -> u32 {
    hash::flow_hash(
        backend_addr_be,
        0,
        backend_port_be,
        nat_port_be,
        IPPROTO_TCP,
        SEED_NAT_TABLE,
    ) & buckets.wrapping_sub(1)
}

/// Capacities compiled into the object. At load time lbd sizes the flow
/// and NAT tables ([`flow_slots_for`] and [`nat_slots_for`]
/// `dataplane.max_flows`) and the ring array
/// (`dataplane.max_vips * 2 * ring_size`).
pub const MAX_VIPS: u32 = 64;
pub const MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_RING_SIZE: u32 = 65_537;
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
pub const MAX_TX_PORTS: u32 = 64;

/// Ring entry meaning "no backend" (an empty ring).
pub const NO_BACKEND: u32 = u32::MAX;

/// How many NAT ports a new flow tries before giving up
/// ([`Reason::DropNatExhausted`]).
pub const NAT_PORT_PROBES: u32 = 16;

/// Seeds of the two flow hashes. Fixed so that every load balancer computes the
/// same backend and NAT port for the same flow (failover survival).
pub const SEED_RING: u32 = 0x6c62_7269; // "lbri"
pub const SEED_NAT_PORT: u32 = 0x6c62_6e70; // "lbnp"
/// Seeds of the table indexes (local to one load balancer).
pub const SEED_FLOW_TABLE: u32 = 0x6c62_6674; // "lbft"
pub const SEED_NAT_TABLE: u32 = 0x6c62_6e74; // "lbnt"

pub const IPPROTO_TCP: u8 = 6;

/// Key of [`map::VIPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`map::VIPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipValue {
    /// Index into the stats array and the ring array.
    pub id: u32,
    /// Which of the VIP's two ring slots is live (0 or 1). Userspace fills
    /// the other slot and then flips this, so a packet never sees a half-written ring.
    pub ring_slot: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Value of [`map::BACKENDS`]. Together with [`map::VIPS`] it records the
/// whole backend set, so a restarted lbd can adopt the running state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    /// Maglev weight (1..=65535), for adoption by a restarted lbd.
    pub weight: u16,
    pub vip_id: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
}

/// Flows pinned to the backend keep going to it. Without it (backend removed
/// or down) they are re-hashed onto the VIP's ring at their next packet. The
/// only flag the XDP program reads.
pub const BACKEND_F_IN_USE: u32 = 1;
/// Drained by the operator: out of the ring (no new flows), flows kept.
pub const BACKEND_F_DRAINED: u32 = 2;
/// Health checks say down: out of the ring, flows move.
pub const BACKEND_F_DOWN: u32 = 4;
/// The slot holds a configured backend (whatever its state).
pub const BACKEND_F_PRESENT: u32 = 8;

/// VIP flag: with no backend in the ring, answer new connections with a TCP
/// RST instead of dropping them.
pub const VIP_F_RESET_EMPTY: u32 = 1;
/// VIP flag: source affinity. A new connection's backend is picked by a hash
/// of the client's address alone (see [`ring_hash`]), so every connection
/// from one client address goes to the same backend while the ring stays.
pub const VIP_F_HASH_SOURCE: u32 = 2;

/// The hash that picks a new connection's entry in its VIP's ring: of the
/// whole 5-tuple, or with `VIP_F_HASH_SOURCE` of the client address with the
/// VIP's address and port (the same for every connection to the VIP) and
/// client port 0. The XDP program and userspace (tests predicting the
/// backend) call this one function. The NAT port candidates are a hash of
/// the whole tuple either way.
#[inline(always)]
pub const fn ring_hash(
    src_addr_be: u32,
    dst_addr_be: u32,
    src_port_be: u16,
    dst_port_be: u16,
    vip_flags: u32,
) -> u32 {
    let sport = if vip_flags & VIP_F_HASH_SOURCE != 0 {
        0
    } else {
        src_port_be
    };
    hash::flow_hash(
        src_addr_be,
        dst_addr_be,
        sport,
        dst_port_be,
        IPPROTO_TCP,
        SEED_RING,
    )
}

/// A TCP/IPv4 5-tuple. The key of a [`Flow`]: client -> VIP as the client
/// sent it. Also the form in which lbd's tools name a NAT entry: backend ->
/// NAT address as the backend replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    // Two fields, not `[u8; 3]`: the eBPF backend zeroes arrays with an
    // out-of-line byte loop, scalar fields with plain stores.
    pub _pad1: u8,
    pub _pad2: u16,
}

/// A next hop resolved by `bpf_fib_lookup`, cached so that most packets skip
/// the lookup: per backend ([`map::BACKEND_HOPS`]) toward backends, per
/// NAT entry toward clients. Re-resolved once older than
/// [`NEXT_HOP_TTL_NS`]; `resolved_ns == 0` means not resolved yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub resolved_ns: u64,
}

/// How long a cached next hop is trusted: a neighbour's new MAC (or a route
/// change) reaches established flows within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// One way of the flow table ([`map::FLOWS`]): a client's connection
/// through a VIP. One cache line (64 bytes; the kernel page-aligns a
/// memory-mappable array, so every way starts a line). A way is free when empty (all zero) or
/// expired; see docs/dataplane.md, "Tables", for how `gen` keeps readers
/// from using a way another CPU is rewriting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Even when stable, odd while a writer fills the way.
    pub gen: u32,
    /// The VIP the flow belongs to: established packets are forwarded from
    /// the flow entry alone, without looking the VIP up.
    pub vip_id: u32,
    pub key: FlowKey,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub nat_port_be: u16,
    pub backend_id: u32,
    /// Also recorded in the flow's [`NatEntry`].
    pub close: CloseState,
    /// Time of the last packet (see [`Config::ns_per_tick`]).
    pub last_seen_ns: u64,
    /// When the flow's first packet was seen (for display).
    pub created_ns: u64,
    pub _spare: u64,
}

/// One slot of the NAT table ([`map::NAT`]): how to turn a backend's reply
/// to the NAT address back into VIP -> client. Keyed by the backend's
/// address and port and the NAT port, which pick its bucket
/// ([`nat_bucket`]). One cache line, like a [`Flow`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    /// Even when stable, odd while a writer fills the slot.
    pub gen: u32,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub nat_port_be: u16,
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub client_addr_be: u32,
    pub vip_addr_be: u32,
    /// Below [`MAX_BACKENDS`] and [`MAX_VIPS`], so 16 bits each.
    pub backend_id: u16,
    pub vip_id: u16,
    pub close: CloseState,
    pub last_seen_ns: u64,
    /// Toward the client.
    pub hop: NextHop,
}

/// How far a flow's TCP connection has got toward closing. Each fact is its
/// own byte, only ever set to 1 with a plain store: the client's FIN and the
/// backend's FIN often cross the load balancer at the same moment on two
/// CPUs, and a read-modify-write of shared bits would lose one of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CloseState {
    /// The client sent a FIN.
    pub fin_client: u8,
    /// The backend sent a FIN.
    pub fin_backend: u8,
    /// Either side sent a RST.
    pub rst: u8,
    pub _pad: u8,
}

impl CloseState {
    /// The connection has ended (both FINs, or a RST).
    pub const fn closed(&self) -> bool {
        self.rst != 0 || (self.fin_client != 0 && self.fin_backend != 0)
    }

    /// Either side has begun to close it (a FIN or a RST seen).
    pub const fn closing(&self) -> bool {
        self.rst != 0 || self.fin_client != 0 || self.fin_backend != 0
    }
}

/// Value of [`map::CONFIG`] (a single entry). A zero `nat_addr_be` means "not
/// configured": the program then passes everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Source address of NATed packets to backends (network order).
    pub nat_addr_be: u32,
    /// NAT port range, host order, inclusive.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub ring_size: u32,
    /// Nanoseconds per kernel tick (10^9 / `CONFIG_HZ`). The program tells
    /// time as `bpf_jiffies64() * ns_per_tick`: the verifier turns that
    /// helper into a plain load, where `bpf_ktime_get_coarse_ns` (same
    /// resolution, one tick) costs a function call on every packet. 0 means
    /// not configured.
    pub ns_per_tick: u32,
    /// A flow with no packet for this long is forgotten.
    pub idle_timeout_ns: u64,
    /// A closed flow (FIN both ways or RST) is forgotten after this long.
    pub closed_timeout_ns: u64,
    /// A NAT port (per backend) is not given to another client until this long
    /// after its last packet, so a backend still in TIME_WAIT on that tuple never
    /// sees a SYN from a stranger (TCP PAWS).
    pub port_hold_ns: u64,
    /// A 256-bit filter of VIP addresses ([`vip_filter_bit`]): a packet whose
    /// destination's bit is clear is no VIP's, and passes without a lookup.
    pub vip_filter: [u64; 4],
    /// Buckets of the flow table ([`flow_slots_for`] / [`FLOW_WAYS`]) and
    /// of the NAT table ([`nat_slots_for`] / [`NAT_WAYS`]), powers of two,
    /// as allocated at load time. 0 means not configured.
    pub flow_buckets: u32,
    pub nat_buckets: u32,
    /// The MSS clamp of SYNs and SYN-ACKs: [`MSS_CLAMP_OFF`],
    /// [`MSS_CLAMP_AUTO`] (the MTU of the interfaces the packet crosses,
    /// less 40), or the largest MSS let through.
    pub mss_clamp: u16,
    /// The smallest next-hop MTU of a client-side ICMP "fragmentation
    /// needed" carried to a backend (lower ones are dropped,
    /// [`Reason::DropIcmpMtu`]); 0: no floor.
    pub pmtu_floor: u16,
    pub _pad_mss: u32,
}

/// [`Config::mss_clamp`]: MSS options are left alone.
pub const MSS_CLAMP_OFF: u16 = 0;
/// [`Config::mss_clamp`]: clamp to the smaller MTU of the ingress and egress
/// interfaces, less 40 (IPv4 and TCP headers without options).
pub const MSS_CLAMP_AUTO: u16 = u16::MAX;

/// A flow or NAT entry last seen at `last_seen_ns` is past its timeout at
/// `now` (both in the program's time, [`Config::ns_per_tick`]): the closed
/// timeout once its connection has closed, the idle timeout before.
#[inline(always)]
pub const fn entry_expired(cfg: &Config, close: &CloseState, last_seen_ns: u64, now: u64) -> bool {
    let limit = if close.closed() {
        cfg.closed_timeout_ns
    } else {
        cfg.idle_timeout_ns
    };
    now.saturating_sub(last_seen_ns) > limit
}

/// The bit of `addr_be` in [`Config::vip_filter`] (0..=255).
#[inline(always)]
pub const fn vip_filter_bit(addr_be: u32) -> u32 {
    let a = u32::from_be(addr_be);
    (a ^ (a >> 8) ^ (a >> 16) ^ (a >> 24)) & 0xff
}

/// Whether `addr_be` may be a VIP address according to `filter`.
#[inline(always)]
pub const fn vip_filter_contains(filter: &[u64; 4], addr_be: u32) -> bool {
    let bit = vip_filter_bit(addr_be);
    (filter[(bit >> 6) as usize & 3] >> (bit & 63)) & 1 != 0
}

/// Packet and byte counters, one per CPU in the per-CPU arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows created (VIP and backend stats only).
    pub flows: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.flows += other.flows;
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $val:expr, $label:expr;)*) => {
        /// What the program did with a packet, and why. Every packet is counted
        /// under exactly one reason in [`map::REASONS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name = $val,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Stable snake_case name used in metrics, `lbctl` and docs.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// Client -> VIP packet rewritten and sent back out of its interface.
    TxForward = 0, "tx_forward";
    /// Client -> VIP packet rewritten and redirected to another interface.
    RedirectForward = 1, "redirect_forward";
    /// Backend reply rewritten and sent back out of its interface.
    TxReply = 2, "tx_reply";
    /// Backend reply rewritten and redirected to another interface.
    RedirectReply = 3, "redirect_reply";
    /// Rewritten, but the next hop's MAC is unknown: handed to the kernel to
    /// resolve it and forward.
    PassNoNeigh = 4, "pass_no_neigh";
    /// Rewritten, but no route (or the route is not a plain forward): handed to the kernel.
    PassFibOther = 5, "pass_fib_other";
    /// Not IPv4 (ARP, IPv6, ...).
    PassNotIpv4 = 6, "pass_not_ipv4";
    /// IPv4 but not TCP (but for an ICMP "fragmentation needed" about one
    /// of the load balancer's connections: `TxIcmp`, `RedirectIcmp`).
    PassNotTcp = 7, "pass_not_tcp";
    /// TCP to an address/port that is neither a VIP nor the NAT address.
    PassNoVip = 8, "pass_no_vip";
    /// Truncated Ethernet/VLAN/IPv4/TCP header, or IPv4 version/IHL invalid:
    /// not ours to judge.
    PassMalformed = 9, "pass_malformed";
    /// A non-first IPv4 fragment (no ports to match on).
    PassFragment = 10, "pass_fragment";
    /// A client's packet to a VIP whose TTL would expire: the kernel sends
    /// the ICMP time exceeded.
    PassTtl = 11, "pass_ttl";
    /// TCP to the NAT address outside the NAT port range.
    PassNatOtherPort = 12, "pass_nat_other_port";
    /// A VIP or NAT packet whose lengths don't add up (TCP data offset < 5, or
    /// IPv4 total length shorter than the headers).
    DropMalformed = 13, "drop_malformed";
    /// A VIP packet carrying IPv4 options (not forwarded, see docs/dataplane.md).
    DropIpOptions = 14, "drop_ip_options";
    /// The first fragment of a fragmented VIP packet.
    DropFragment = 15, "drop_fragment";
    /// The VIP's ring is empty.
    DropNoBackend = 16, "drop_no_backend";
    /// Every NAT port probed for a new flow was in use or held.
    DropNatExhausted = 17, "drop_nat_exhausted";
    /// A packet to the NAT address and port range that matches no flow.
    DropNatMiss = 18, "drop_nat_miss";
    /// No longer produced: table writes cannot fail since the tables became
    /// arrays. Kept so that numbers and labels stay stable.
    DropMapUpdate = 19, "drop_map_update";
    /// `bpf_redirect_map` refused the egress interface.
    DropRedirect = 20, "drop_redirect";
    /// The VIP's ring is empty and it is set to refuse: a TCP RST was sent back.
    TxReset = 21, "tx_reset";
    /// A backend's reply with TTL 1 or less. Not passed: the NAT address is
    /// the host's own, so the kernel would deliver it locally, find no
    /// socket, and answer with a RST that kills the connection.
    DropTtl = 22, "drop_ttl";
    /// An ICMP "fragmentation needed" about one of the load balancer's
    /// connections, rewritten for the other end, backend or client (see
    /// docs/dataplane.md), and sent back out of its interface.
    TxIcmp = 23, "tx_icmp";
    /// The same, redirected to another interface.
    RedirectIcmp = 24, "redirect_icmp";
    /// A VIP or NAT packet whose frame ends before its IPv4 total length
    /// says: TCP options or data cut off.
    DropTruncated = 25, "drop_truncated";
    /// A client-side ICMP "fragmentation needed" about one of the load
    /// balancer's connections whose next-hop MTU is below
    /// [`Config::pmtu_floor`]: relayed, it would lower the backend's path
    /// MTU toward the NAT address, which every client shares.
    DropIcmpMtu = 26, "drop_icmp_mtu";
}

pub const REASON_COUNT: u32 = 27;

impl Reason {
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropMalformed
                | Reason::DropIpOptions
                | Reason::DropFragment
                | Reason::DropNoBackend
                | Reason::DropNatExhausted
                | Reason::DropNatMiss
                | Reason::DropMapUpdate
                | Reason::DropRedirect
                | Reason::DropTtl
                | Reason::DropTruncated
                | Reason::DropIcmpMtu
        )
    }
}

macro_rules! events {
    ($($(#[$doc:meta])* $name:ident = $val:expr, $label:expr;)*) => {
        /// Something the program did to a packet besides its verdict,
        /// counted in [`map::EVENTS`] (a packet may have several, or none).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Event {
            $($(#[$doc])* $name = $val,)*
        }

        impl Event {
            pub const ALL: &'static [Event] = &[$(Event::$name,)*];

            /// Stable snake_case name used in metrics, `lbctl` and docs.
            pub const fn label(self) -> &'static str {
                match self { $(Event::$name => $label,)* }
            }
        }
    };
}

events! {
    /// A SYN or SYN-ACK whose MSS option was lowered to the clamp
    /// ([`Config::mss_clamp`]).
    MssClamped = 0, "mss_clamped";
}

pub const EVENT_COUNT: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers with
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::CloseState {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 8);
        assert_eq!(size_of::<VipValue>(), 16);
        assert_eq!(size_of::<Backend>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NextHop>(), 24);
        assert_eq!(size_of::<Flow>(), 64);
        assert_eq!(align_of::<Flow>(), 8);
        assert_eq!(size_of::<NatEntry>(), 64);
        assert_eq!(core::mem::offset_of!(Flow, key), 8);
        assert_eq!(core::mem::offset_of!(NatEntry, last_seen_ns), 32);
        assert_eq!(core::mem::offset_of!(NatEntry, hop), 40);
        assert_eq!(size_of::<Config>(), 88);
        assert_eq!(size_of::<Counters>(), 24);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in map::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
        for name in prog::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn reasons_are_dense_and_labelled() {
        assert_eq!(Reason::ALL.len() as u32, REASON_COUNT);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert!(!r.label().is_empty());
        }
        for r in Reason::ALL {
            assert_eq!(r.is_drop(), r.label().starts_with("drop_"), "{r:?}");
        }
    }

    #[test]
    fn events_are_dense_and_labelled() {
        assert_eq!(Event::ALL.len() as u32, EVENT_COUNT);
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as u32, i as u32);
            assert!(!e.label().is_empty());
        }
    }

    #[test]
    fn source_affinity_ignores_the_client_port_only() {
        let h = |src: u32, sport: u16, flags| {
            ring_hash(
                src.to_be(),
                0x0a00_0064u32.to_be(),
                sport.to_be(),
                80u16.to_be(),
                flags,
            )
        };
        // The 5-tuple hash is the flow hash with the ring's seed.
        assert_eq!(
            h(0x0a00_0001, 40000, 0),
            hash::flow_hash(
                0x0a00_0001u32.to_be(),
                0x0a00_0064u32.to_be(),
                40000u16.to_be(),
                80u16.to_be(),
                IPPROTO_TCP,
                SEED_RING
            )
        );
        assert_ne!(h(0x0a00_0001, 40000, 0), h(0x0a00_0001, 40001, 0));
        let s = VIP_F_HASH_SOURCE | VIP_F_RESET_EMPTY;
        assert_eq!(h(0x0a00_0001, 40000, s), h(0x0a00_0001, 40001, s));
        assert_ne!(h(0x0a00_0001, 40000, s), h(0x0a00_0002, 40000, s));
    }

    #[test]
    fn the_vip_filter_has_no_false_negatives() {
        let mut filter = [0u64; 4];
        let vips = [0x0a00_0064u32, 0xc0a8_0101, 0x0101_0101];
        for v in vips {
            let bit = vip_filter_bit(v.to_be());
            filter[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for v in vips {
            assert!(vip_filter_contains(&filter, v.to_be()));
        }
        // Neighbours of a VIP address land on other bits.
        assert!(!vip_filter_contains(&filter, 0x0a00_0065u32.to_be()));
        assert!(!vip_filter_contains(&[0; 4], 0x0a00_0064u32.to_be()));
    }

    #[test]
    fn tables_are_powers_of_two_with_room_to_spare() {
        assert_eq!(flow_slots_for(1024), 2048);
        assert_eq!(flow_slots_for(1025), 4096);
        assert_eq!(flow_slots_for(131_072), 262_144);
        assert_eq!(nat_slots_for(262_144), 524_288);
        assert_eq!(flow_slots_for(16_777_216), 33_554_432);
        assert_eq!(flow_slots_for(0), 8);
        assert_eq!(flow_slots_for(u32::MAX), 1 << 31);
        for n in [1024, 5000, 1 << 20] {
            assert_eq!(flow_slots_for(n) % FLOW_WAYS, 0);
            assert_eq!(nat_slots_for(n) % NAT_WAYS, 0);
        }
    }

    #[test]
    fn table_indexes_stay_in_range_and_spread() {
        let mut seen = [0u32; 64];
        for port in 0..4096u16 {
            let key = FlowKey {
                src_addr_be: 0x0a00_0001u32.to_be(),
                dst_addr_be: 0x0a00_0064u32.to_be(),
                src_port_be: port.to_be(),
                dst_port_be: 80u16.to_be(),
                proto: IPPROTO_TCP,
                _pad1: 0,
                _pad2: 0,
            };
            let b = flow_bucket(&key, 64);
            assert!(b < 64);
            seen[b as usize] += 1;
            let n = nat_bucket(0x0a00_0001u32.to_be(), 80u16.to_be(), port.to_be(), 64);
            assert!(n < 64);
        }
        // 64 per bucket on average: none empty, none hot.
        assert!(seen.iter().all(|&c| c > 32 && c < 112), "{seen:?}");
    }

    #[test]
    fn closed_needs_both_fins_or_a_reset() {
        let c = |fin_client, fin_backend, rst| CloseState {
            fin_client,
            fin_backend,
            rst,
            _pad: 0,
        };
        assert!(!c(0, 0, 0).closed() && !c(0, 0, 0).closing());
        assert!(!c(1, 0, 0).closed() && c(1, 0, 0).closing());
        assert!(!c(0, 1, 0).closed() && c(0, 1, 0).closing());
        assert!(c(1, 1, 0).closed());
        assert!(c(0, 0, 1).closed());
    }
}
