//! Fuzz-style property tests of the XDP program: valid frames of every kind
//! the program handles (SYNs with options, established data, replies, ICMP
//! "fragmentation needed" both ways, other TCP, UDP) and random bytes, with
//! random byte flips, truncations, extensions, flags and options, run through
//! `BPF_PROG_TEST_RUN` against the real program and maps. Every frame must:
//!
//! - never be `XDP_ABORTED`, and move exactly one reason counter by itself
//!   (both checked by [`Fixture::try_run`]);
//! - come out untouched when passed without rewriting;
//! - when rewritten (sent on, or handed to the kernel after the rewrite),
//!   carry an IPv4 total length that fits the frame, an IPv4 header checksum
//!   and a TCP (or ICMP) checksum that are valid exactly when they were
//!   valid in the input (incremental updates neither break nor launder a
//!   checksum), and go only to a configured backend (from the NAT address)
//!   or to a client whose connection the program forwarded before (from a
//!   VIP); a RST goes back to the sender with fresh, valid checksums.
//!
//! The number of cases per test is proptest's (256, or `PROPTEST_CASES`):
//! `cargo xtask fuzz --cases 100000` runs them (and the other `fuzz_`
//! tests) deeper.
//! State carries over from case to case (flows and NAT entries made by one
//! case meet the next), as it does in a running load balancer.

use std::{
    cell::RefCell,
    collections::HashSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_ebpf::Reason;
use lb_tests::{
    packet::{checksum, l4_checksum, mss_option, parse_tcp, Frame, ACK, ETH_P_8021Q, PSH, SYN},
    xdp_fixture::*,
};
use proptest::{
    collection::vec,
    option,
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

/// proptest's configuration (`PROPTEST_CASES` and the like are honoured),
/// without regression files written into the source tree.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

type Endpoint = (Ipv4Addr, u16);

/// One connection set up before fuzzing.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client: Endpoint,
    vip: Endpoint,
    backend: Endpoint,
    nat_port: u16,
}

/// The fixture, and what it may legitimately send where.
struct World {
    fx: Fixture,
    /// Every configured backend (address, port).
    backends: HashSet<Endpoint>,
    /// Every VIP (address, port).
    vips: HashSet<Endpoint>,
    /// Clients whose packets the program forwarded (so it may have NAT
    /// entries sending replies to them).
    clients: RefCell<HashSet<Endpoint>>,
    conns: Vec<Conn>,
    /// Frames run, and of those rewritten, for the summary.
    runs: AtomicU64,
    rewritten: AtomicU64,
}

impl World {
    fn new(test: &str) -> World {
        let fx = fixture(test, |_| {});
        let mut backends = HashSet::new();
        let mut vips = HashSet::new();
        for v in fx.balancer.vips() {
            vips.insert((v.address, v.port));
            for b in &v.backends {
                backends.insert((b.address, b.port));
            }
        }
        let mut clients = HashSet::new();
        let mut conns = Vec::new();
        for (i, vip) in [(WEB, 80), (LOCAL_VIP, 80), (STICKY_VIP, 80), (WEB, 80)]
            .into_iter()
            .enumerate()
        {
            let client = (CLIENT, 45000 + i as u16);
            let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
            assert!(
                matches!(o.reason, Reason::RedirectForward | Reason::TxForward),
                "{:?}",
                o.reason
            );
            let p = parse_tcp(&o.out);
            conns.push(Conn {
                client,
                vip,
                backend: (p.dst, p.dport),
                nat_port: p.sport,
            });
            clients.insert(client);
        }
        World {
            fx,
            backends,
            vips,
            clients: RefCell::new(clients),
            conns,
            runs: AtomicU64::new(0),
            rewritten: AtomicU64::new(0),
        }
    }

    fn conn(&self, i: usize) -> Conn {
        self.conns[i % self.conns.len()]
    }

    /// The interface a frame to `dst` arrives on: the backend side for the
    /// NAT address and the backends' subnet, else the client side.
    fn ingress(&self, frame: &[u8]) -> u32 {
        match ipv4_at(frame) {
            Some(l3) if frame.len() >= l3 + 20 && frame[l3 + 16..l3 + 19] == [10, 1, 2] => {
                self.fx.lbt1
            }
            _ => self.fx.lbt0,
        }
    }

    /// Runs `frame` and checks every property; `Err` describes a violation.
    fn check(&self, frame: &[u8]) -> Result<(), TestCaseError> {
        let ingress = self.ingress(frame);
        let o = match self.fx.try_run(frame, ingress) {
            Ok(o) => o,
            // The kernel refuses frames shorter than an Ethernet header.
            Err(_) if frame.len() < 14 => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("test run failed: {e}"))),
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let rewritten = matches!(o.action, XDP_TX | XDP_REDIRECT)
            || matches!(o.reason, Reason::PassNoNeigh | Reason::PassFibOther);
        let expected_action = match o.reason.label().split('_').next() {
            Some("tx") => XDP_TX,
            Some("redirect") => XDP_REDIRECT,
            Some("pass") => XDP_PASS,
            Some("drop") => XDP_DROP,
            _ => unreachable!(),
        };
        prop_assert_eq!(o.action, expected_action, "verdict of {:?}", o.reason);
        if !rewritten {
            if o.action == XDP_PASS {
                prop_assert_eq!(
                    &o.out,
                    &frame.to_vec(),
                    "passed ({:?}) but changed",
                    o.reason
                );
            }
            return Ok(());
        }
        self.rewritten.fetch_add(1, Ordering::Relaxed);
        let l3 = ipv4_at(&o.out).ok_or_else(|| TestCaseError::fail("rewritten: not IPv4"))?;
        let out = &o.out;
        let tot_len = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) as usize;
        prop_assert!(
            l3 + tot_len <= out.len(),
            "total length {} beyond a frame of {} ({:?})",
            tot_len,
            out.len(),
            o.reason
        );
        let src = addr(&out[l3 + 12..]);
        let dst = addr(&out[l3 + 16..]);
        if o.reason == Reason::TxReset {
            let p = parse_tcp(out);
            let sender = sender(frame).expect("a reset answers a TCP frame");
            prop_assert_eq!((p.dst, p.dport), sender, "a RST goes back to its sender");
            return Ok(());
        }
        let (ip_in, l4_in) = checksums(frame);
        let (ip_out, l4_out) = checksums(out);
        prop_assert_eq!(
            ip_out,
            ip_in,
            "IPv4 checksum validity changed ({:?})",
            o.reason
        );
        prop_assert_eq!(
            l4_out,
            l4_in,
            "L4 checksum validity changed ({:?})",
            o.reason
        );
        let proto = out[l3 + 9];
        let ports = l3 + (out[l3] & 0x0f) as usize * 4;
        match proto {
            6 => {
                let sport = u16::from_be_bytes([out[ports], out[ports + 1]]);
                let dport = u16::from_be_bytes([out[ports + 2], out[ports + 3]]);
                if src == NAT {
                    prop_assert!(
                        self.backends.contains(&(dst, dport)),
                        "forwarded to {}:{}, not a backend",
                        dst,
                        dport
                    );
                    let client = sender(frame).expect("forwarded TCP");
                    self.clients.borrow_mut().insert(client);
                } else {
                    prop_assert!(
                        self.vips.contains(&(src, sport)),
                        "a reply from {}:{}, not a VIP",
                        src,
                        sport
                    );
                    prop_assert!(
                        self.clients.borrow().contains(&(dst, dport)),
                        "a reply to {}:{}, not a client",
                        dst,
                        dport
                    );
                }
            }
            1 => {
                prop_assert!(
                    matches!(o.reason, Reason::TxIcmp | Reason::RedirectIcmp)
                        || matches!(o.reason, Reason::PassNoNeigh | Reason::PassFibOther),
                    "ICMP under {:?}",
                    o.reason
                );
                if src == NAT {
                    prop_assert!(
                        self.backends.iter().any(|b| b.0 == dst),
                        "ICMP to {}, not a backend",
                        dst
                    );
                } else {
                    prop_assert!(
                        self.vips.iter().any(|v| v.0 == src),
                        "ICMP from {}, not a VIP",
                        src
                    );
                    prop_assert!(
                        self.clients.borrow().iter().any(|c| c.0 == dst),
                        "ICMP to {}, not a client",
                        dst
                    );
                }
            }
            p => return Err(TestCaseError::fail(format!("rewritten protocol {p}"))),
        }
        Ok(())
    }

    fn summary(&self, test: &str) {
        eprintln!(
            "{test}: {} frames, {} rewritten",
            self.runs.load(Ordering::Relaxed),
            self.rewritten.load(Ordering::Relaxed)
        );
    }
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Offset of the IPv4 header (after at most one VLAN tag), if the frame
/// says IPv4 and is long enough for the tag.
fn ipv4_at(f: &[u8]) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut l3 = 14;
    if et == ETH_P_8021Q {
        if f.len() < 18 {
            return None;
        }
        et = u16::from_be_bytes([f[16], f[17]]);
        l3 = 18;
    }
    (et == 0x0800).then_some(l3)
}

/// The IPv4 header's bounds and the L4 segment per the total length, if
/// they lie in the frame.
fn layout(f: &[u8]) -> Option<(usize, usize, usize)> {
    let l3 = ipv4_at(f)?;
    if f.len() < l3 + 20 {
        return None;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
    if ihl < 20 || tot_len < ihl || l3 + tot_len > f.len() {
        return None;
    }
    Some((l3, ihl, tot_len))
}

/// Whether the IPv4 header checksum and the TCP or ICMP checksum hold
/// (`None` where there is nothing to check).
fn checksums(f: &[u8]) -> (Option<bool>, Option<bool>) {
    let Some((l3, ihl, tot_len)) = layout(f) else {
        return (None, None);
    };
    let ip = Some(checksum(&f[l3..l3 + ihl]) == 0);
    let seg = &f[l3 + ihl..l3 + tot_len];
    let l4 = match f[l3 + 9] {
        6 if seg.len() >= 20 => {
            Some(l4_checksum(addr(&f[l3 + 12..]), addr(&f[l3 + 16..]), 6, seg) == 0)
        }
        1 if !seg.is_empty() => Some(checksum(seg) == 0),
        _ => None,
    };
    (ip, l4)
}

/// Recomputes the IPv4, TCP and ICMP checksums where the frame has them,
/// so that a mutated frame can get past checksum-shy paths too.
fn fix_checksums(f: &mut [u8]) {
    let Some((l3, ihl, tot_len)) = layout(f) else {
        return;
    };
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let (src, dst) = (addr(&f[l3 + 12..]), addr(&f[l3 + 16..]));
    let seg = l3 + ihl..l3 + tot_len;
    match f[l3 + 9] {
        6 if seg.len() >= 20 => {
            let at = seg.start + 16;
            f[at..at + 2].copy_from_slice(&[0, 0]);
            let c = l4_checksum(src, dst, 6, &f[seg.clone()]);
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        1 if seg.len() >= 4 => {
            let at = seg.start + 2;
            f[at..at + 2].copy_from_slice(&[0, 0]);
            let c = checksum(&f[seg.clone()]);
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

/// Source address and port of a TCP frame.
fn sender(f: &[u8]) -> Option<Endpoint> {
    let (l3, ihl, _) = layout(f).or_else(|| {
        let l3 = ipv4_at(f)?;
        Some((l3, (f.get(l3)? & 0x0f) as usize * 4, 0))
    })?;
    let p = l3 + ihl;
    Some((
        addr(f.get(l3 + 12..l3 + 16)?),
        u16::from_be_bytes([*f.get(p)?, *f.get(p + 1)?]),
    ))
}

/// How a valid frame is mutated.
#[derive(Clone, Debug)]
struct Mutation {
    /// `(position, xor)`: positions are taken modulo the frame length.
    flips: Vec<(usize, u8)>,
    /// Cut the frame to this many bytes (modulo its length + 1).
    cut: Option<usize>,
    /// Bytes appended (Ethernet padding, or garbage).
    extend: Vec<u8>,
    /// Recompute the checksums after the flips.
    fix: bool,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        vec((any::<usize>(), 1u8..=255), 0..4),
        option::weighted(0.25, any::<usize>()),
        option::weighted(0.2, vec(any::<u8>(), 1..24)),
        any::<bool>(),
    )
        .prop_map(|(flips, cut, extend, fix)| Mutation {
            flips,
            cut,
            extend: extend.unwrap_or_default(),
            fix,
        })
}

impl Mutation {
    fn apply(&self, mut f: Vec<u8>) -> Vec<u8> {
        let n = f.len();
        for &(at, x) in &self.flips {
            f[at % n] ^= x;
        }
        if self.fix {
            fix_checksums(&mut f);
        }
        f.extend_from_slice(&self.extend);
        if let Some(cut) = self.cut {
            f.truncate(cut % (f.len() + 1));
        }
        f
    }
}

/// What varies in a valid TCP frame before it is mutated.
#[derive(Clone, Debug)]
struct Tcp {
    flags: u8,
    options: Vec<u8>,
    payload: usize,
    ttl: u8,
    vlan: bool,
}

fn tcp_fields() -> impl Strategy<Value = Tcp> {
    let options = prop_oneof![
        Just(Vec::new()),
        (any::<u16>(), vec(any::<u8>(), 0..8))
            .prop_map(|(mss, rest)| [mss_option(mss), rest].concat()),
        vec(any::<u8>(), 0..=40),
        vec(prop_oneof![Just(1u8), Just(0u8), Just(2), Just(4)], 0..=40),
    ];
    (
        prop_oneof![Just(SYN), Just(ACK), Just(ACK | PSH), any::<u8>()],
        options,
        0usize..48,
        prop_oneof![Just(64u8), any::<u8>()],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(flags, options, payload, ttl, vlan)| Tcp {
            flags,
            options: options.into_iter().take(40).collect(),
            payload,
            ttl,
            vlan,
        })
}

impl Tcp {
    fn frame(&self, src: Endpoint, dst: Endpoint) -> Frame {
        let mut f = Frame::tcp(src, dst, self.flags);
        f.tcp_options = self.options.clone();
        f.payload = (0..self.payload).map(|i| i as u8).collect();
        f.ttl = self.ttl;
        f.vlan = self.vlan.then_some(7);
        f
    }
}

fn run(test: &str, strategy: impl Strategy<Value = Vec<u8>>) {
    let world = World::new(test);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |frame| world.check(&frame));
    world.summary(test);
    if let Err(e) = result {
        panic!("{test}: {e}");
    }
}

/// New connections: SYNs (and whatever flags) to every VIP, and to
/// addresses and ports that are not VIPs, from a small pool of clients so
/// that later cases meet the flows earlier ones made.
#[test]
fn fuzz_new_connections() {
    let vips = [
        (WEB, 80),
        (LOCAL_VIP, 80),
        (NONEIGH_VIP, 80),
        (EMPTY_VIP, 80),
        (RESET_VIP, 80),
        (STICKY_VIP, 80),
        (WEB, 81),
        (NAT, 22),
        (Ipv4Addr::new(10, 1, 1, 1), 80),
    ];
    let strategy = (
        0..vips.len(),
        0u8..4,
        40000u16..40064,
        tcp_fields(),
        mutation(),
    )
        .prop_map(move |(v, c, port, tcp, m)| {
            let client = (Ipv4Addr::new(10, 1, 1, 2 + c), port);
            m.apply(tcp.frame(client, vips[v]).build())
        });
    run("fuzz_new_connections", strategy);
}

/// Established connections: the client's data and the backend's replies
/// (to the NAT address and port of a live connection, or a neighbouring
/// port).
#[test]
fn fuzz_established_and_replies() {
    let world_conns = 4usize;
    let strategy = (
        0..world_conns,
        any::<bool>(),
        prop_oneof![Just(0u16), 0u16..3],
        tcp_fields(),
        mutation(),
    );
    let world = World::new("fuzz_established_and_replies");
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(i, reply, nudge, tcp, m)| {
        let c = world.conn(i);
        let frame = if reply {
            tcp.frame(c.backend, (NAT, c.nat_port.wrapping_add(nudge)))
        } else {
            tcp.frame(c.client, c.vip)
        };
        world.check(&m.apply(frame.build()))
    });
    world.summary("fuzz_established_and_replies");
    if let Err(e) = result {
        panic!("fuzz_established_and_replies: {e}");
    }
}

/// ICMP "fragmentation needed" both ways, about live connections and
/// others, with any MTU, and other ICMP types.
#[test]
fn fuzz_icmp() {
    let strategy = (
        0usize..4,
        any::<bool>(),
        any::<u16>(),
        prop_oneof![Just((3u8, 4u8)), (any::<u8>(), any::<u8>())],
        0u16..2,
        mutation(),
    );
    let world = World::new("fuzz_icmp");
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(i, to_nat, mtu, (kind, code), nudge, m)| {
        let c = world.conn(i);
        let mut f = if to_nat {
            let mut seg = Frame::tcp((NAT, c.nat_port.wrapping_add(nudge)), c.backend, ACK);
            seg.payload = vec![0x55; 1400];
            Frame::icmp_frag_needed(Ipv4Addr::new(10, 1, 2, 254), NAT, &seg, mtu)
        } else {
            let mut seg = Frame::tcp(c.vip, (c.client.0, c.client.1.wrapping_add(nudge)), ACK);
            seg.payload = vec![0x77; 1400];
            Frame::icmp_frag_needed(Ipv4Addr::new(10, 1, 1, 254), c.vip.0, &seg, mtu)
        };
        f.payload[0] = kind;
        f.payload[1] = code;
        let mut frame = f.build();
        fix_checksums(&mut frame);
        world.check(&m.apply(frame))
    });
    world.summary("fuzz_icmp");
    if let Err(e) = result {
        panic!("fuzz_icmp: {e}");
    }
}

/// Random bytes behind an Ethernet header that says IPv4 (or something
/// else), addressed anywhere: the parser must hold.
#[test]
fn fuzz_random_frames() {
    let strategy = (
        prop_oneof![Just(0x0800u16), Just(0x8100), any::<u16>()],
        vec(any::<u8>(), 0..160),
        prop_oneof![
            Just(None),
            Just(Some(WEB)),
            Just(Some(NAT)),
            Just(Some(STICKY_VIP))
        ],
        any::<bool>(),
    )
        .prop_map(|(et, body, dst, fix)| {
            let mut f = vec![0x02, 0, 0, 0, 0, 0xfe, 0x02, 0, 0, 0, 0, 0x01];
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&body);
            // Point a plausible IPv4 header at one of ours.
            if let (Some(dst), Some(l3)) = (dst, ipv4_at(&f)) {
                if f.len() >= l3 + 20 {
                    f[l3] = 0x45;
                    f[l3 + 16..l3 + 20].copy_from_slice(&dst.octets());
                }
            }
            if fix {
                fix_checksums(&mut f);
            }
            f
        });
    run("fuzz_random_frames", strategy);
}
