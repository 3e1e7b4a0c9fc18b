//! Packet tests: the real XDP program run by the kernel on crafted frames
//! through `BPF_PROG_TEST_RUN`, with its maps filled by the real control-plane
//! code. Each test runs in its own network namespace with veths, addresses and
//! static neighbours, so `bpf_fib_lookup` gives deterministic answers.
//!
//! Every case checks the verdict, the reason counter that moved (exactly one
//! per packet), and for rewritten packets the addresses, ports, MACs, TTL and
//! both checksums (verified by an independent routine in `lb_tests::packet`).

use std::{net::Ipv4Addr, thread, time::Duration};

use lb_ebpf::{FlowKey, Reason, IPPROTO_TCP};
use lb_tests::{
    packet::{
        mss_option, parse_tcp, Frame, Mac, Parsed, ACK, ETH_P_ARP, ETH_P_IPV6, FIN, PSH, RST, SYN,
    },
    xdp_fixture::*,
};
use lb_user::dataplane::{addr_be, Maps};

fn assert_rewritten(
    p: &Parsed,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    smac: Mac,
    dmac: Mac,
    ttl: u8,
) {
    assert_eq!((p.src, p.sport), src, "source");
    assert_eq!((p.dst, p.dport), dst, "destination");
    assert_eq!(p.src_mac, smac, "source MAC");
    assert_eq!(p.dst_mac, dmac, "destination MAC");
    assert_eq!(p.ttl, ttl, "TTL");
}

#[test]
fn syn_established_and_reply_are_rewritten_both_ways() {
    let fx = fixture("synest", |_| {});
    let client = (CLIENT, 40000);
    let vip = (WEB, 80);
    let backend = fx.expected_backend(0, client, vip);
    let nat_port = expected_nat_port(client, vip);

    // SYN: a new flow, redirected to the backend-side interface.
    let mut syn = Frame::tcp(client, vip, SYN);
    syn.seq = 777;
    let o = fx.run(&syn.build(), fx.lbt0);
    assert_eq!(
        (o.action, o.reason),
        (XDP_REDIRECT, Reason::RedirectForward)
    );
    let p = parse_tcp(&o.out);
    assert_rewritten(
        &p,
        (NAT, nat_port),
        backend,
        fx.mac1,
        backend_mac(backend.0),
        63,
    );
    assert_eq!((p.tcp_flags, p.seq), (SYN, 777));

    // Established packet with data: the same backend and NAT port.
    let mut data = Frame::tcp(client, vip, ACK | PSH);
    data.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let o = fx.run(&data.build(), fx.lbt0);
    assert_eq!(
        (o.action, o.reason),
        (XDP_REDIRECT, Reason::RedirectForward)
    );
    let p = parse_tcp(&o.out);
    assert_rewritten(
        &p,
        (NAT, nat_port),
        backend,
        fx.mac1,
        backend_mac(backend.0),
        63,
    );
    assert_eq!(p.payload, data.payload);

    // Reply from the backend to the NAT address: back to VIP -> client.
    let mut reply = Frame::tcp(backend, (NAT, nat_port), SYN | ACK);
    reply.payload = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    let o = fx.run(&reply.build(), fx.lbt1);
    assert_eq!((o.action, o.reason), (XDP_REDIRECT, Reason::RedirectReply));
    let p = parse_tcp(&o.out);
    assert_rewritten(&p, vip, client, fx.mac0, CLIENT_MAC, 63);
    assert_eq!(p.payload, reply.payload);

    // Counters: three packets for the VIP and its backend, one new flow.
    let v = &fx.balancer.vips()[0];
    let id = v
        .backends
        .iter()
        .find(|b| (b.address, b.port) == backend)
        .unwrap()
        .id;
    let vc = fx.dp.vip_counters(v.id).unwrap();
    let bc = fx.dp.backend_counters(id).unwrap();
    assert_eq!((vc.packets, vc.flows), (3, 1));
    assert_eq!((bc.packets, bc.flows), (3, 1));
    for other in v.backends.iter().filter(|b| b.id != id) {
        assert_eq!(fx.dp.backend_counters(other.id).unwrap().packets, 0);
    }

    // FIN both ways marks both table entries closed.
    fx.run(&Frame::tcp(client, vip, FIN | ACK).build(), fx.lbt0);
    fx.run(
        &Frame::tcp(backend, (NAT, nat_port), FIN | ACK).build(),
        fx.lbt1,
    );
    let key = client_key(client, vip);
    let flow = fx.dp.flow(&key).expect("flow entry");
    assert!(flow.close.closed(), "{:?}", flow.close);
    let nat_key = FlowKey {
        src_addr_be: addr_be(backend.0),
        dst_addr_be: addr_be(NAT),
        src_port_be: backend.1.to_be(),
        dst_port_be: nat_port.to_be(),
        proto: IPPROTO_TCP,
        _pad1: 0,
        _pad2: 0,
    };
    let nat = fx.dp.nat_entry(&nat_key).expect("NAT entry");
    assert!(nat.close.closed(), "{:?}", nat.close);
    assert_eq!(nat.client_addr_be, addr_be(CLIENT));
}

#[test]
fn a_new_syn_after_a_lost_fin_starts_a_new_connection() {
    // The client's and the backend's FINs can cross the load balancer on two
    // CPUs at once. Suppose the flow entry missed the backend's FIN while the
    // NAT entry got both, and the NAT entry then expired: a new connection
    // from the same client port must get a fresh NAT entry, or its SYN-ACK
    // would be dropped as a NAT miss and the client would never connect.
    let mut fx = fixture("lostfin", |c| c.closed_timeout_ns = 1_000_000);
    let client = (CLIENT, 49000);
    let vip = (WEB, 80);
    let backend = fx.expected_backend(0, client, vip);
    let nat_port = expected_nat_port(client, vip);
    fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    fx.run(
        &Frame::tcp(backend, (NAT, nat_port), SYN | ACK).build(),
        fx.lbt1,
    );
    fx.run(&Frame::tcp(client, vip, FIN | ACK).build(), fx.lbt0);
    fx.run(
        &Frame::tcp(backend, (NAT, nat_port), FIN | ACK).build(),
        fx.lbt1,
    );
    let key = client_key(client, vip);
    let mut flow = fx.dp.flow(&key).expect("flow entry");
    flow.close.fin_backend = 0; // the lost update
    fx.dp.put_flow(&key, &flow).unwrap();
    thread::sleep(Duration::from_millis(30)); // past closed_timeout (coarse clock)

    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    assert_eq!(
        parse_tcp(&o.out).sport,
        nat_port,
        "same client, same NAT port"
    );
    let o = fx.run(
        &Frame::tcp(backend, (NAT, nat_port), SYN | ACK).build(),
        fx.lbt1,
    );
    assert_eq!(
        (o.action, o.reason),
        (XDP_REDIRECT, Reason::RedirectReply),
        "the new connection's SYN-ACK gets through"
    );
    let flow = fx.dp.flow(&key).unwrap();
    assert!(!flow.close.closing(), "a fresh flow: {:?}", flow.close);
}

#[test]
fn a_retransmitted_syn_keeps_its_backend_and_nat_port() {
    // SYNs are picked through the ring without a flow lookup: a retransmit
    // must come out exactly as the first one did.
    let fx = fixture("resyn", |_| {});
    let client = (CLIENT, 49500);
    let vip = (WEB, 80);
    let first = parse_tcp(&fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0).out);
    let again = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    assert_eq!(again.reason, Reason::RedirectForward);
    let again = parse_tcp(&again.out);
    assert_eq!(
        (again.dst, again.dport, again.sport),
        (first.dst, first.dport, first.sport)
    );
    // The handshake then completes through the same entries.
    let o = fx.run(
        &Frame::tcp((first.dst, first.dport), (NAT, first.sport), SYN | ACK).build(),
        fx.lbt1,
    );
    assert_eq!(o.reason, Reason::RedirectReply);
    let o = fx.run(&Frame::tcp(client, vip, ACK).build(), fx.lbt0);
    assert_eq!(parse_tcp(&o.out).sport, first.sport);
    assert_eq!(fx.dp.nat_count(), 1, "one NAT entry for the connection");
}

#[test]
fn kernel_and_userspace_agree_on_every_backend_choice() {
    let fx = fixture("agree", |_| {});
    let vip = (WEB, 80);
    let mut seen = std::collections::HashSet::new();
    for port in 30000..30300u16 {
        let client = (CLIENT, port);
        let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
        assert_eq!(o.reason, Reason::RedirectForward);
        let p = parse_tcp(&o.out);
        let want = fx.expected_backend(0, client, vip);
        assert_eq!((p.dst, p.dport), want, "client port {port}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3, "all three backends were chosen");
}

#[test]
fn same_interface_uses_xdp_tx() {
    let fx = fixture("tx", |_| {});
    let client = (CLIENT, 41000);
    let vip = (LOCAL_VIP, 80);
    let backend = fx.expected_backend(1, client, vip);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_TX, Reason::TxForward));
    let p = parse_tcp(&o.out);
    let nat_port = expected_nat_port(client, vip);
    assert_rewritten(
        &p,
        (NAT, nat_port),
        backend,
        fx.mac0,
        backend_mac(backend.0),
        63,
    );
    let o = fx.run(
        &Frame::tcp(backend, (NAT, nat_port), SYN | ACK).build(),
        fx.lbt0,
    );
    assert_eq!((o.action, o.reason), (XDP_TX, Reason::TxReply));
    assert_rewritten(&parse_tcp(&o.out), vip, client, fx.mac0, CLIENT_MAC, 63);
}

#[test]
fn unknown_neighbour_hands_the_rewritten_packet_to_the_kernel() {
    let fx = fixture("noneigh", |_| {});
    let client = (CLIENT, 42000);
    let o = fx.run(&Frame::tcp(client, (NONEIGH_VIP, 80), SYN).build(), fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_PASS, Reason::PassNoNeigh));
    let p = parse_tcp(&o.out);
    // Rewritten (the kernel forwards it), TTL left for the kernel to decrement.
    assert_eq!((p.dst, p.dport), (Ipv4Addr::new(10, 1, 2, 99), 8080));
    assert_eq!(p.src, NAT);
    assert_eq!(p.ttl, 64);
}

#[test]
fn pass_and_drop_cases() {
    let fx = fixture("cases", |_| {});
    let vip = (WEB, 80);
    let client = (CLIENT, 43000);
    let syn = Frame::tcp(client, vip, SYN);

    struct Case {
        name: &'static str,
        frame: Vec<u8>,
        ingress: u32,
        action: u32,
        reason: Reason,
    }
    let case = |name, f: Frame, action, reason| Case {
        name,
        frame: f.build(),
        ingress: fx.lbt0,
        action,
        reason,
    };
    let mut cases = vec![
        case(
            "TCP to a non-VIP port",
            Frame::tcp(client, (WEB, 81), SYN),
            XDP_PASS,
            Reason::PassNoVip,
        ),
        case(
            "TCP to a non-VIP address",
            Frame::tcp(client, (Ipv4Addr::new(10, 1, 1, 1), 22), SYN),
            XDP_PASS,
            Reason::PassNoVip,
        ),
        case(
            "UDP to the VIP port",
            Frame {
                proto: 17,
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassNotTcp,
        ),
        case(
            "ARP",
            Frame {
                ether_type: ETH_P_ARP,
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassNotIpv4,
        ),
        case(
            "IPv6",
            Frame {
                ether_type: ETH_P_IPV6,
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassNotIpv4,
        ),
        case(
            "IHL 4",
            Frame {
                ihl_override: Some(4),
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassMalformed,
        ),
        case(
            "IPv4 options to the VIP",
            Frame {
                ip_options: vec![1, 1, 1, 1],
                ..syn.clone()
            },
            XDP_DROP,
            Reason::DropIpOptions,
        ),
        case(
            "IPv4 options to another port",
            Frame {
                ip_options: vec![1, 1, 1, 1, 1, 1, 1, 1],
                ..Frame::tcp(client, (WEB, 443), SYN)
            },
            XDP_PASS,
            Reason::PassNoVip,
        ),
        case(
            "first fragment to the VIP",
            Frame {
                frag: 0x2000,
                ..syn.clone()
            },
            XDP_DROP,
            Reason::DropFragment,
        ),
        case(
            "later fragment",
            Frame {
                frag: 0x0010,
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassFragment,
        ),
        case(
            "TTL 1",
            Frame {
                ttl: 1,
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassTtl,
        ),
        case(
            "total length shorter than the headers",
            Frame {
                tot_len_override: Some(30),
                ..syn.clone()
            },
            XDP_DROP,
            Reason::DropMalformed,
        ),
        case(
            "two VLAN tags",
            Frame {
                vlan: Some(10),
                inner_vlan: Some(20),
                ..syn.clone()
            },
            XDP_PASS,
            Reason::PassNotIpv4,
        ),
        case(
            "VIP without backends",
            Frame::tcp(client, (EMPTY_VIP, 80), SYN),
            XDP_DROP,
            Reason::DropNoBackend,
        ),
    ];
    cases.push(Case {
        name: "reply to the NAT address matching no flow",
        frame: Frame::tcp((Ipv4Addr::new(10, 1, 2, 11), 8080), (NAT, 20001), ACK).build(),
        ingress: fx.lbt1,
        action: XDP_DROP,
        reason: Reason::DropNatMiss,
    });
    cases.push(Case {
        name: "TCP to the NAT address outside the NAT range",
        frame: Frame::tcp((Ipv4Addr::new(10, 1, 2, 11), 5555), (NAT, 22), SYN).build(),
        ingress: fx.lbt1,
        action: XDP_PASS,
        reason: Reason::PassNatOtherPort,
    });
    for c in &cases {
        let o = fx.run(&c.frame, c.ingress);
        assert_eq!(
            (o.action, o.reason),
            (c.action, c.reason),
            "case: {}",
            c.name
        );
        if c.action == XDP_PASS {
            assert_eq!(
                o.out, c.frame,
                "case {}: a passed packet is untouched",
                c.name
            );
        }
    }
    // None of these created a flow.
    assert_eq!(fx.dp.flow_count(), 0);
}

#[test]
fn a_vip_without_backends_refuses_with_a_reset() {
    let fx = fixture("reset", |_| {});
    let client = (CLIENT, 48000);
    let vip = (RESET_VIP, 80);
    let mut syn = Frame::tcp(client, vip, SYN);
    syn.seq = 5000;
    syn.payload = vec![1, 2, 3]; // data on a SYN counts too
    let mut frame = syn.build();
    frame.extend_from_slice(&[0u8; 10]); // Ethernet padding beyond the IP packet
    let o = fx.run(&frame, fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_TX, Reason::TxReset));
    assert_eq!(o.out.len(), 14 + 20 + 20, "trimmed to the headers");
    let p = parse_tcp(&o.out);
    assert_eq!((p.src, p.sport), vip);
    assert_eq!((p.dst, p.dport), client);
    assert_eq!(p.tcp_flags, RST | ACK);
    assert_eq!(p.seq, 0);
    assert_eq!(
        u32::from_be_bytes(o.out[42..46].try_into().unwrap()),
        5000 + 3 + 1,
        "acknowledges the SYN and its data"
    );
    assert_eq!(
        (p.src_mac, p.dst_mac),
        ([0x02, 0, 0, 0, 0, 0xfe], [0x02, 0, 0, 0, 0, 0x01]),
        "MACs swapped"
    );
    // An ACK gets a bare RST carrying its acknowledgement number.
    let mut ack = Frame::tcp(client, vip, ACK);
    ack.ack = 777;
    let o = fx.run(&ack.build(), fx.lbt0);
    assert_eq!(o.reason, Reason::TxReset);
    let p = parse_tcp(&o.out);
    assert_eq!((p.tcp_flags, p.seq), (RST, 777));
    // Never a reset for a reset.
    let o = fx.run(&Frame::tcp(client, vip, RST).build(), fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_DROP, Reason::DropNoBackend));
    assert_eq!(fx.dp.flow_count(), 0);
}

#[test]
fn one_vlan_tag_is_kept() {
    let fx = fixture("vlan", |_| {});
    let client = (CLIENT, 44000);
    let vip = (WEB, 80);
    let f = Frame {
        vlan: Some(42),
        ..Frame::tcp(client, vip, SYN)
    };
    let o = fx.run(&f.build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let p = parse_tcp(&o.out);
    assert_eq!(p.vlan, Some(42));
    assert_eq!((p.dst, p.dport), fx.expected_backend(0, client, vip));
}

#[test]
fn truncation_at_every_header_byte_is_passed() {
    let fx = fixture("trunc", |_| {});
    let full = Frame::tcp((CLIENT, 45000), (WEB, 80), SYN).build();
    let vlan = Frame {
        vlan: Some(5),
        ..Frame::tcp((CLIENT, 45000), (WEB, 80), SYN)
    }
    .build();
    for frame in [&full, &vlan] {
        for len in 0..frame.len() {
            match fx.try_run(&frame[..len], fx.lbt0) {
                Ok(o) => {
                    assert_eq!(
                        (o.action, o.reason),
                        (XDP_PASS, Reason::PassMalformed),
                        "truncated to {len} bytes"
                    );
                    assert_eq!(o.out, &frame[..len]);
                }
                // The kernel itself refuses frames shorter than an Ethernet header.
                Err(e) => assert!(len < 14, "length {len}: {e}"),
            }
        }
    }
    assert_eq!(fx.dp.flow_count(), 0);
}

#[test]
fn a_nat_port_is_held_for_its_client_until_the_hold_expires() {
    // One NAT port only, so every flow to the backend competes for it.
    let fx = fixture("hold", |c| {
        c.nat_port_min = 20000;
        c.nat_port_max = 20000;
    });
    let vip = (SINGLE_VIP, 80);
    let backend = (Ipv4Addr::new(10, 1, 2, 11), 9090);
    let a = (CLIENT, 46000);
    let b = (CLIENT2, 46000);
    let o = fx.run(&Frame::tcp(a, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    assert_eq!(parse_tcp(&o.out).sport, 20000);
    // Another client cannot take the port while the flow is open...
    assert_eq!(
        fx.run(&Frame::tcp(b, vip, SYN).build(), fx.lbt0).reason,
        Reason::DropNatExhausted
    );
    // ...nor after it closed, while the backend may still hold it in TIME_WAIT.
    fx.run(&Frame::tcp(a, vip, FIN | ACK).build(), fx.lbt0);
    fx.run(
        &Frame::tcp(backend, (NAT, 20000), FIN | ACK).build(),
        fx.lbt1,
    );
    assert_eq!(
        fx.run(&Frame::tcp(b, vip, SYN).build(), fx.lbt0).reason,
        Reason::DropNatExhausted
    );
    // The same client reconnecting on the same tuple may reuse it.
    let o = fx.run(&Frame::tcp(a, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    assert_eq!(parse_tcp(&o.out).sport, 20000);
}

#[test]
fn a_closed_flows_port_is_reused_after_the_hold() {
    let fx = fixture("reuse", |c| {
        c.nat_port_min = 20000;
        c.nat_port_max = 20000;
        c.port_hold_ns = 1_000_000; // 1 ms
    });
    let vip = (SINGLE_VIP, 80);
    let backend = (Ipv4Addr::new(10, 1, 2, 11), 9090);
    let a = (CLIENT, 47000);
    let b = (CLIENT2, 47000);
    fx.run(&Frame::tcp(a, vip, SYN).build(), fx.lbt0);
    fx.run(&Frame::tcp(a, vip, RST).build(), fx.lbt0);
    // The coarse clock ticks every few ms.
    thread::sleep(Duration::from_millis(30));
    let o = fx.run(&Frame::tcp(b, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let p = parse_tcp(&o.out);
    assert_eq!((p.sport, (p.dst, p.dport)), (20000, backend));
    // Replies now go to the new owner.
    let o = fx.run(
        &Frame::tcp(backend, (NAT, 20000), SYN | ACK).build(),
        fx.lbt1,
    );
    assert_eq!((parse_tcp(&o.out).dst, parse_tcp(&o.out).dport), b);
}

/// A client whose flow to `vip` lands on 10.1.2.11:8080, and that backend.
fn client_on_first_backend(
    fx: &Fixture,
    vip: (Ipv4Addr, u16),
) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let backend = (Ipv4Addr::new(10, 1, 2, 11), 8080);
    let client = (30000..40000u16)
        .map(|p| (CLIENT, p))
        .find(|c| fx.expected_backend(0, *c, vip) == backend)
        .expect("a client port landing on the first backend");
    (client, backend)
}

#[test]
fn flows_of_a_removed_backend_move_at_their_next_packet() {
    let mut fx = fixture("remove", |_| {});
    let vip = (WEB, 80);
    let (client, victim) = client_on_first_backend(&fx, vip);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    assert_eq!((parse_tcp(&o.out).dst, parse_tcp(&o.out).dport), victim);

    let Fixture { dp, balancer, .. } = &mut fx;
    balancer
        .remove_backend(dp, "web", victim.0, victim.1)
        .unwrap();
    let o = fx.run(&Frame::tcp(client, vip, ACK).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let p = parse_tcp(&o.out);
    assert_ne!((p.dst, p.dport), victim, "moved off the removed backend");
    assert_eq!((p.dst, p.dport), fx.expected_backend(0, client, vip));

    // Re-adding restores the original choice for new flows.
    let Fixture { dp, balancer, .. } = &mut fx;
    balancer
        .add_backend(dp, "web", victim.0, victim.1, 1)
        .unwrap();
    let fresh = (client.0, client.1 + 1);
    let o = fx.run(&Frame::tcp(fresh, vip, SYN).build(), fx.lbt0);
    assert_eq!(
        (parse_tcp(&o.out).dst, parse_tcp(&o.out).dport),
        fx.expected_backend(0, fresh, vip)
    );
}

#[test]
fn entries_expire_on_the_real_clock() {
    // The program tells time from jiffies times lbd's ns-per-tick: a wrong
    // scale would expire entries far too early (or far too late).
    let fx = fixture("clock", |c| c.idle_timeout_ns = 1_000_000_000);
    let client = (CLIENT, 41000);
    let vip = (WEB, 80);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let p = parse_tcp(&o.out);
    let reply = Frame::tcp((p.dst, p.dport), (NAT, p.sport), SYN | ACK).build();
    // Well inside the idle timeout: the NAT entry is alive (and refreshed).
    thread::sleep(Duration::from_millis(300));
    assert_eq!(fx.run(&reply, fx.lbt1).reason, Reason::RedirectReply);
    // Well past it: gone.
    thread::sleep(Duration::from_millis(1_600));
    assert_eq!(fx.run(&reply, fx.lbt1).reason, Reason::DropNatMiss);
}

#[test]
fn a_data_plane_without_a_clock_passes_everything() {
    // `ns_per_tick == 0`: not configured yet, like an empty NAT address.
    let fx = fixture("noclock", |c| c.ns_per_tick = 0);
    let o = fx.run(
        &Frame::tcp((CLIENT, 41001), (WEB, 80), SYN).build(),
        fx.lbt0,
    );
    assert_eq!((o.action, o.reason), (XDP_PASS, Reason::PassNoVip));
}

#[test]
fn a_reply_whose_ttl_expires_is_dropped_not_passed() {
    // Passed, it would reach this host's own stack (the NAT address is ours),
    // which would answer the backend with a RST and kill the connection.
    let fx = fixture("replyttl", |_| {});
    let o = fx.run(
        &Frame::tcp((CLIENT, 41002), (WEB, 80), SYN).build(),
        fx.lbt0,
    );
    let p = parse_tcp(&o.out);
    let reply = Frame::tcp((p.dst, p.dport), (NAT, p.sport), SYN | ACK);
    let expiring = Frame {
        ttl: 1,
        ..reply.clone()
    };
    let o = fx.run(&expiring.build(), fx.lbt1);
    assert_eq!((o.action, o.reason), (XDP_DROP, Reason::DropTtl));
    // The connection is untouched: the next reply goes through.
    let o = fx.run(&reply.build(), fx.lbt1);
    assert_eq!(o.reason, Reason::RedirectReply);
}

#[test]
fn a_connection_without_its_flow_entry_keeps_its_nat_port() {
    // Two NAT ports toward SINGLE_VIP's one backend, and entries that go
    // stale (idle, free for others) after 20 ms: several ticks of the
    // program's clock (4 ms at HZ=250), so that B's entry is still held when
    // X's SYN comes however the two straddle a tick.
    let (min, max) = (20000u16, 20001u16);
    let fx = fixture("keepport", |c| {
        c.nat_port_min = min;
        c.nat_port_max = max;
        c.idle_timeout_ns = 20_000_000;
        c.port_hold_ns = 20_000_000;
    });
    let vip: (Ipv4Addr, u16) = (SINGLE_VIP, 80);
    let first_candidate = |client: (Ipv4Addr, u16)| {
        let h = lb_ebpf::hash::flow_hash(
            addr_be(client.0),
            addr_be(vip.0),
            client.1.to_be(),
            vip.1.to_be(),
            IPPROTO_TCP,
            lb_ebpf::SEED_NAT_PORT,
        );
        lb_ebpf::hash::nat_port_candidate(h, 0, min, u32::from(max - min) + 1)
    };
    let b = (CLIENT2, 47000);
    let p = first_candidate(b);
    // A client whose first candidate is the port B will hold.
    let x = (47001..48000)
        .map(|port| (CLIENT, port))
        .find(|&c| first_candidate(c) == p)
        .expect("a client port with the same first candidate");
    let o = fx.run(&Frame::tcp(b, vip, SYN).build(), fx.lbt0);
    assert_eq!(parse_tcp(&o.out).sport, p);
    let o = fx.run(&Frame::tcp(x, vip, SYN).build(), fx.lbt0);
    let q = parse_tcp(&o.out).sport;
    assert_ne!(q, p, "B holds X's first candidate");

    // Both go idle: X's flow entry expires, and B's port is free for anyone.
    thread::sleep(Duration::from_millis(100));
    // X's connection goes on: its next packet must keep the port the
    // backend knows, not move to the now free first candidate.
    let o = fx.run(&Frame::tcp(x, vip, ACK).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    assert_eq!(
        parse_tcp(&o.out).sport,
        q,
        "X's connection moved to another NAT port"
    );
    // A new connection from X's port may take the first free candidate.
    let o = fx.run(&Frame::tcp(x, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
}

#[test]
fn a_fin_from_an_old_connection_does_not_close_the_new_one() {
    let mut fx = fixture("oldfin", |_| {});
    let vip = (WEB, 80);
    let (client, victim) = client_on_first_backend(&fx, vip);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    let old_port = parse_tcp(&o.out).sport;
    // The backend leaves; the client's next packet makes a new flow elsewhere.
    let Fixture { dp, balancer, .. } = &mut fx;
    balancer
        .remove_backend(dp, "web", victim.0, victim.1)
        .unwrap();
    let o = fx.run(&Frame::tcp(client, vip, ACK).build(), fx.lbt0);
    assert_ne!((parse_tcp(&o.out).dst, parse_tcp(&o.out).dport), victim);
    // The old backend's FIN still finds its NAT entry...
    let o = fx.run(
        &Frame::tcp(victim, (NAT, old_port), FIN | ACK).build(),
        fx.lbt1,
    );
    assert_eq!(o.reason, Reason::RedirectReply);
    // ...but is not recorded in the client's flow, which is another
    // connection now.
    let key = client_key(client, vip);
    let flow = fx.dp.flow(&key).expect("the client's flow");
    assert_eq!(flow.close.fin_backend, 0, "{flow:?}");
}

/// The client-side flow key of `client` -> `vip`.
fn client_key(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16)) -> FlowKey {
    FlowKey {
        src_addr_be: addr_be(client.0),
        dst_addr_be: addr_be(vip.0),
        src_port_be: client.1.to_be(),
        dst_port_be: vip.1.to_be(),
        proto: IPPROTO_TCP,
        _pad1: 0,
        _pad2: 0,
    }
}

/// `n` of the client `ports` whose `bucket` is the same.
fn ports_sharing_a_bucket(
    n: usize,
    ports: impl Iterator<Item = u16>,
    bucket: impl Fn(u16) -> u32,
) -> Vec<u16> {
    let mut by_bucket: std::collections::HashMap<u32, Vec<u16>> = Default::default();
    for port in ports {
        let ports = by_bucket.entry(bucket(port)).or_default();
        ports.push(port);
        if ports.len() == n {
            return ports.clone();
        }
    }
    panic!("no bucket with {n} client ports");
}

#[test]
fn a_full_flow_bucket_gives_its_oldest_way_and_that_connection_goes_on() {
    // The flow table is a cache of ways: when a new flow finds its bucket
    // full, the way idle longest is taken. The connection that lost it must
    // not notice: its next packet finds its NAT entry (never displaced while
    // live) and goes on with the same backend and NAT port.
    let fx = fixture("fullflows", |_| {});
    let vip = (WEB, 80);
    let buckets = lb_ebpf::flow_slots_for(131_072) / lb_ebpf::FLOW_WAYS;
    let ways = lb_ebpf::FLOW_WAYS as usize;
    let ports = ports_sharing_a_bucket(ways + 1, 1024..=u16::MAX, |p| {
        lb_ebpf::flow_bucket(&client_key((CLIENT, p), vip), buckets)
    });
    let mut first = Vec::new();
    for &p in &ports[..ways] {
        let o = fx.run(&Frame::tcp((CLIENT, p), vip, SYN).build(), fx.lbt0);
        assert_eq!(o.reason, Reason::RedirectForward);
        let out = parse_tcp(&o.out);
        first.push((out.dst, out.dport, out.sport));
    }
    // A few ticks later all but the first are busy again.
    thread::sleep(Duration::from_millis(30));
    for &p in &ports[1..ways] {
        let o = fx.run(&Frame::tcp((CLIENT, p), vip, ACK).build(), fx.lbt0);
        assert_eq!(o.reason, Reason::RedirectForward);
    }
    let o = fx.run(
        &Frame::tcp((CLIENT, ports[ways]), vip, SYN).build(),
        fx.lbt0,
    );
    assert_eq!(o.reason, Reason::RedirectForward);
    assert!(
        fx.dp.flow(&client_key((CLIENT, ports[0]), vip)).is_none(),
        "the idlest way was given to the new flow"
    );
    for &p in &ports[1..] {
        assert!(fx.dp.flow(&client_key((CLIENT, p), vip)).is_some(), "{p}");
    }

    // The displaced connection: same backend, same NAT port, and its entry back.
    let o = fx.run(&Frame::tcp((CLIENT, ports[0]), vip, ACK).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let out = parse_tcp(&o.out);
    assert_eq!((out.dst, out.dport, out.sport), first[0]);
    let flow = fx
        .dp
        .flow(&client_key((CLIENT, ports[0]), vip))
        .expect("re-created");
    assert_eq!(flow.nat_port_be, first[0].2.to_be());
}

#[test]
fn a_nat_tuple_whose_bucket_is_full_is_passed_over_for_the_next_port() {
    // NAT entries are never displaced while they may be in use: a new flow
    // whose first candidate port lands in a bucket full of live entries
    // takes its second candidate, and the four connections keep theirs.
    let fx = fixture("fullnat", |_| {});
    let vip = (WEB, 80);
    let buckets = lb_ebpf::nat_slots_for(131_072) / lb_ebpf::NAT_WAYS;
    let ways = lb_ebpf::NAT_WAYS as usize;
    let pick = fx.backend_picker(0);
    let tuple = |p: u16| (pick((CLIENT, p), vip), expected_nat_port((CLIENT, p), vip));
    // Distinct backend-side tuples only: two clients whose first candidates
    // coincide would meet on the tuple itself, not just in its bucket.
    let mut seen = std::collections::HashSet::new();
    let distinct = (1024..=u16::MAX).filter(|&p| seen.insert(tuple(p)));
    let ports = ports_sharing_a_bucket(ways + 1, distinct, |p| {
        let (backend, nat_port) = tuple(p);
        lb_ebpf::nat_bucket(
            addr_be(backend.0),
            backend.1.to_be(),
            nat_port.to_be(),
            buckets,
        )
    });
    let mut held = Vec::new();
    for &p in &ports[..ways] {
        let o = fx.run(&Frame::tcp((CLIENT, p), vip, SYN).build(), fx.lbt0);
        let out = parse_tcp(&o.out);
        assert_eq!(
            out.sport,
            expected_nat_port((CLIENT, p), vip),
            "first candidate"
        );
        held.push(((out.dst, out.dport), out.sport, p));
    }
    let last = (CLIENT, ports[ways]);
    let o = fx.run(&Frame::tcp(last, vip, SYN).build(), fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    let h = lb_ebpf::hash::flow_hash(
        addr_be(last.0),
        addr_be(vip.0),
        last.1.to_be(),
        vip.1.to_be(),
        IPPROTO_TCP,
        lb_ebpf::SEED_NAT_PORT,
    );
    assert_eq!(
        parse_tcp(&o.out).sport,
        lb_ebpf::hash::nat_port_candidate(h, 1, 20000, 40000),
        "the second candidate"
    );
    // Every earlier connection's replies still reach their own client.
    for (backend, nat_port, client_port) in held {
        let o = fx.run(
            &Frame::tcp(backend, (NAT, nat_port), SYN | ACK).build(),
            fx.lbt1,
        );
        assert_eq!(o.reason, Reason::RedirectReply);
        let out = parse_tcp(&o.out);
        assert_eq!((out.dst, out.dport), (CLIENT, client_port));
    }
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for any
    // CPU number below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `BPF_PROG_TEST_RUN` of the program behind `prog` on `frame` arriving on
/// `ingress`, from any thread (aya's handles are not shared between
/// threads; a descriptor is). Returns the verdict and the frame after it.
fn test_run_raw(prog: &std::os::fd::OwnedFd, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md: data_end at 4, ingress_ifindex at 12.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_TEST_RUN attribute whose pointers
    // stay valid for the call; the size passed is its own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out)
}

#[test]
fn two_cpus_claiming_at_once_never_share_a_nat_tuple() {
    // The NAT table is written by the program itself: two CPUs claiming the
    // same (backend, NAT port) at the same instant must not both get it, or
    // one connection's replies would go to the other's client. Two threads,
    // pinned to two CPUs, run SYNs at the same moment against a four-port
    // range, round after round (a fresh range each round), and every tuple
    // forwarded must belong to one client only, the one its replies reach.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs to race on, found {cpus}"
    );
    let mut fx = fixture("race", |_| {});
    let vip = (WEB, 80);
    const ROUNDS: u16 = 500;
    const PER_THREAD: u16 = 24;
    let mut forwarded_total = 0;
    for round in 0..ROUNDS {
        let mut cfg = fx.dp.config().unwrap();
        cfg.nat_port_min = 20000 + round * 4;
        cfg.nat_port_max = cfg.nat_port_min + 3;
        fx.dp.set_config(&cfg).unwrap();
        let start = std::sync::Barrier::new(2);
        let dropped_before = fx.dp.reason_counters().unwrap()[Reason::DropNatExhausted as usize];
        let results: Vec<(u16, (u32, Vec<u8>))> = thread::scope(|s| {
            let workers: Vec<_> = (0..2u16)
                .map(|t| {
                    let start = &start;
                    let prog = {
                        use std::os::fd::AsFd;
                        let p = fx.dp.program_named(lb_ebpf::prog::LB);
                        p.fd().unwrap().as_fd().try_clone_to_owned().unwrap()
                    };
                    let (lbt0, netns) = (fx.lbt0, fx.netns_handle());
                    s.spawn(move || {
                        enter_handle(&netns);
                        pin_to_cpu(t as usize);
                        start.wait();
                        (0..PER_THREAD)
                            .map(|k| {
                                let port = 1024 + (round * 2 + t) * PER_THREAD + k;
                                let syn = Frame::tcp((CLIENT, port), vip, SYN).build();
                                (port, test_run_raw(&prog, &syn, lbt0))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let mut owner = std::collections::HashMap::new();
        let mut dropped = 0;
        for (client_port, (verdict, out)) in &results {
            match *verdict {
                XDP_REDIRECT => {
                    let out = parse_tcp(out);
                    let tuple = ((out.dst, out.dport), out.sport);
                    if let Some(other) = owner.insert(tuple, *client_port) {
                        panic!(
                            "round {round}: {tuple:?} given to clients {other} and {client_port}"
                        );
                    }
                }
                XDP_DROP => dropped += 1,
                v => panic!("round {round}: unexpected verdict {v}"),
            }
        }
        let dropped_after = fx.dp.reason_counters().unwrap()[Reason::DropNatExhausted as usize];
        assert_eq!(
            dropped_after.packets - dropped_before.packets,
            dropped,
            "round {round}: every drop is drop_nat_exhausted"
        );
        // Four ports toward each of three backends: all twelve tuples are
        // taken, and each answers for its own client.
        assert_eq!(owner.len(), 12, "round {round}");
        forwarded_total += owner.len();
        for ((backend, nat_port), client_port) in owner {
            let o = fx.run(
                &Frame::tcp(backend, (NAT, nat_port), SYN | ACK).build(),
                fx.lbt1,
            );
            assert_eq!(o.reason, Reason::RedirectReply);
            assert_eq!(parse_tcp(&o.out).dport, client_port, "round {round}");
        }
    }
    assert_eq!(forwarded_total, 12 * ROUNDS as usize);
}

/// Creates a map of the given kind and pins it at `path` (raw system calls:
/// aya creates maps only from an object).
fn pin_new_map(
    path: &std::path::Path,
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
    name: &str,
) {
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    #[repr(C)]
    #[derive(Default)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut attr = CreateAttr {
        map_type,
        key_size: key,
        value_size: value,
        max_entries: entries,
        ..Default::default()
    };
    attr.map_name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a valid BPF_MAP_CREATE attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const CreateAttr,
            std::mem::size_of::<CreateAttr>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = PinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a valid BPF_OBJ_PIN attribute; `c_path` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const PinAttr,
            std::mem::size_of::<PinAttr>() as u32,
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor created above (the pin keeps the map).
    unsafe { libc::close(fd as i32) };
}

#[test]
fn a_data_plane_pinned_with_the_old_lru_tables_is_refused_untouched() {
    // An lbd from before the array tables left its data plane pinned: the
    // new one must say so and change nothing, not adopt maps it would
    // misread.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}oldlru",
        lb_tests::netns::unique_prefix("oldlru")
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    const HASH: u32 = 1;
    const LRU_HASH: u32 = 9;
    pin_new_map(
        &dir.0.join(lb_ebpf::map::VIPS),
        HASH,
        8,
        16,
        1024,
        "LB_VIPS",
    );
    pin_new_map(
        &dir.0.join(lb_ebpf::map::FLOWS),
        LRU_HASH,
        16,
        56,
        1024,
        "LB_FLOWS",
    );
    pin_new_map(
        &dir.0.join(lb_ebpf::map::NAT),
        LRU_HASH,
        16,
        56,
        1024,
        "LB_NAT",
    );

    let cfg = lb_user::config::Config::from_toml_str(CONFIG).unwrap();
    let e = lb_user::dataplane::Dataplane::load(
        &object(),
        &lb_user::dataplane::load_options(&cfg),
        Some(&dir.0),
    )
    .err()
    .expect("adopted maps of the old layout");
    let e = format!("{e:#}");
    assert!(
        e.contains("older lbd") && e.contains("LB_FLOWS") && e.contains("rm -r"),
        "{e}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["LB_FLOWS", "LB_NAT", "LB_VIPS"], "pins touched");
}

#[test]
fn a_data_plane_pinned_with_an_older_config_layout_is_refused_untouched() {
    // An lbd from before the MSS clamp left its data plane pinned: its
    // LB_CONFIG holds 80-byte values, this program reads 88. Adopting it
    // would fail in the verifier with a dump; it must be refused with a
    // clear message, and nothing changed.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}oldcfg",
        lb_tests::netns::unique_prefix("oldcfg")
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let cfg = lb_user::config::Config::from_toml_str(CONFIG).unwrap();
    let opts = lb_user::dataplane::load_options(&cfg);
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    let tables = lb_ebpf::flow_slots_for(opts.max_flows);
    let rings = opts.max_vips * 2 * opts.ring_size;
    for (name, ty, key, value, entries) in [
        (lb_ebpf::map::VIPS, HASH, 8, 16, 64),
        (lb_ebpf::map::FLOWS, ARRAY, 4, 64, tables),
        (lb_ebpf::map::NAT, ARRAY, 4, 64, tables),
        (lb_ebpf::map::RINGS, ARRAY, 4, 4, rings),
        (lb_ebpf::map::CONFIG, ARRAY, 4, 80, 1),
    ] {
        pin_new_map(&dir.0.join(name), ty, key, value, entries, name);
    }
    let before: std::collections::BTreeSet<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    let e = lb_user::dataplane::Dataplane::load(&object(), &opts, Some(&dir.0))
        .err()
        .expect("adopted maps of another layout");
    let e = format!("{e:#}");
    assert!(
        e.contains("another version of lbd")
            && e.contains("LB_CONFIG holds 1 values of 80 bytes, this lbd's 1 of 88")
            && e.contains("rm -r"),
        "{e}"
    );
    let after: std::collections::BTreeSet<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(after, before, "pins touched");
}

/// The fields of an ICMP "fragmentation needed" frame that the program
/// rewrites, with every checksum verified.
#[derive(Debug, PartialEq, Eq)]
struct FragNeeded {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    mtu: u16,
    quoted_src: (Ipv4Addr, u16),
    quoted_dst: (Ipv4Addr, u16),
}

fn parse_frag_needed(frame: &[u8]) -> FragNeeded {
    use lb_tests::packet::checksum;
    let ip = &frame[14..34];
    assert_eq!(checksum(ip), 0, "outer IPv4 checksum");
    assert_eq!(ip[9], 1, "ICMP");
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let icmp = &frame[34..14 + tot_len];
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!((icmp[0], icmp[1]), (3, 4), "type and code");
    let quoted = &icmp[8..28];
    assert_eq!(checksum(quoted), 0, "quoted IPv4 checksum");
    let ports = &icmp[28..32];
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    FragNeeded {
        src: addr(&ip[12..16]),
        dst: addr(&ip[16..20]),
        ttl: ip[8],
        mtu: u16::from_be_bytes([icmp[6], icmp[7]]),
        quoted_src: (
            addr(&quoted[12..16]),
            u16::from_be_bytes([ports[0], ports[1]]),
        ),
        quoted_dst: (
            addr(&quoted[16..20]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
    }
}

#[test]
fn a_fragmentation_needed_for_a_reply_goes_to_its_backend_in_its_terms() {
    // A router toward the client could not forward one of the backend's
    // segments and tells the segment's source, the VIP. The backend must
    // hear of it (path MTU discovery), as if it had talked to the client
    // itself: from the NAT address, quoting backend -> NAT address:port.
    let fx = fixture("pmtu", |_| {});
    let client = (CLIENT, 41000);
    let vip = (WEB, 80);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    let syn = parse_tcp(&o.out);
    let (backend, nat_port) = ((syn.dst, syn.dport), syn.sport);

    let router = Ipv4Addr::new(10, 1, 1, 254);
    let mut reply = Frame::tcp(vip, client, ACK);
    reply.payload = vec![0x77; 1400];
    let icmp = Frame::icmp_frag_needed(router, WEB, &reply, 1400);
    let o = fx.run(&icmp.build(), fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_REDIRECT, Reason::RedirectIcmp));
    assert_eq!(
        parse_frag_needed(&o.out),
        FragNeeded {
            src: NAT,
            dst: backend.0,
            ttl: 63,
            mtu: 1400,
            quoted_src: backend,
            quoted_dst: (NAT, nat_port),
        }
    );
    assert_eq!(&o.out[6..12], &fx.mac1, "out of the backend-side interface");
    let id = fx.balancer.vips()[0]
        .backends
        .iter()
        .find(|b| (b.address, b.port) == backend)
        .unwrap()
        .id;
    assert_eq!(
        fx.dp.backend_counters(id).unwrap().packets,
        2,
        "SYN and ICMP"
    );

    // Not about one of our connections, or not a "fragmentation needed":
    // the kernel's, untouched.
    let stranger = Frame::tcp(vip, (CLIENT, 41001), ACK);
    let not_ours = Frame::icmp_frag_needed(router, WEB, &stranger, 1400);
    let other_source = Frame::icmp_frag_needed(
        router,
        WEB,
        &Frame::tcp((Ipv4Addr::new(10, 1, 1, 77), 80), client, ACK),
        1400,
    );
    let mut echo = Frame::icmp_frag_needed(router, WEB, &reply, 1400);
    echo.payload[0] = 8; // echo request (checksum left wrong: not looked at)
    let mut port_unreachable = Frame::icmp_frag_needed(router, WEB, &reply, 1400);
    port_unreachable.payload[1] = 3;
    for (what, frame) in [
        ("unknown connection", not_ours),
        ("quoting another source", other_source),
        ("echo request", echo),
        ("port unreachable", port_unreachable),
    ] {
        let bytes = frame.build();
        let o = fx.run(&bytes, fx.lbt0);
        assert_eq!(o.out, bytes, "{what}: changed");
        assert_eq!(
            (o.action, o.reason),
            (XDP_PASS, Reason::PassNotTcp),
            "{what}"
        );
    }
}

#[test]
fn expired_entries_are_not_counted_as_flows() {
    // lbd counts the flows it tracks by the program's own clock: an entry
    // past its timeout is no flow any more, though its way keeps it until
    // another flow needs the room.
    let fx = fixture("livecount", |c| c.closed_timeout_ns = 1_000_000);
    let vip = (WEB, 80);
    let (open, closing) = ((CLIENT, 42000), (CLIENT, 42001));
    let mut backend_side = Vec::new();
    for client in [open, closing] {
        let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
        let out = parse_tcp(&o.out);
        backend_side.push(((out.dst, out.dport), out.sport));
    }
    assert_eq!((fx.dp.flow_count(), fx.dp.nat_count()), (2, 2));
    let stamped = fx.dp.flow(&client_key(open, vip)).unwrap().last_seen_ns;
    assert!(
        fx.dp.now().unwrap() >= stamped,
        "lbd reads the program's clock"
    );

    // The second connection closes (FIN both ways) and outlives its 1 ms.
    let (backend, nat_port) = backend_side[1];
    fx.run(&Frame::tcp(closing, vip, FIN | ACK).build(), fx.lbt0);
    fx.run(
        &Frame::tcp(backend, (NAT, nat_port), FIN | ACK).build(),
        fx.lbt1,
    );
    thread::sleep(Duration::from_millis(30));
    assert_eq!((fx.dp.flow_count(), fx.dp.nat_count()), (1, 1));
    assert!(
        fx.dp.flow(&client_key(closing, vip)).is_some(),
        "its way still holds it"
    );
}

#[test]
fn a_fragmentation_needed_toward_a_backend_goes_to_its_client() {
    // The other way round: a router between the load balancer and the
    // backends cannot forward one of a client's segments and tells its
    // source, the NAT address. The client must hear of it as if it had
    // talked to the backend itself: from the VIP, quoting client -> VIP.
    let fx = fixture("pmtuback", |_| {});
    let client = (CLIENT, 41100);
    let vip = (WEB, 80);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    let syn = parse_tcp(&o.out);
    let (backend, nat_port) = ((syn.dst, syn.dport), syn.sport);

    let router = Ipv4Addr::new(10, 1, 2, 254);
    let mut data = Frame::tcp((NAT, nat_port), backend, ACK);
    data.payload = vec![0x55; 1400];
    let icmp = Frame::icmp_frag_needed(router, NAT, &data, 1300);
    let o = fx.run(&icmp.build(), fx.lbt1);
    assert_eq!((o.action, o.reason), (XDP_REDIRECT, Reason::RedirectIcmp));
    assert_eq!(
        parse_frag_needed(&o.out),
        FragNeeded {
            src: WEB,
            dst: CLIENT,
            ttl: 63,
            mtu: 1300,
            quoted_src: client,
            quoted_dst: vip,
        }
    );
    assert_eq!(&o.out[6..12], &fx.mac0, "out of the client-side interface");

    // About no connection of ours, or quoting another source: untouched.
    let stranger = Frame::tcp((NAT, nat_port.wrapping_add(1)), backend, ACK);
    let other_source = Frame::tcp((Ipv4Addr::new(10, 1, 2, 77), nat_port), backend, ACK);
    for (what, quoted) in [
        ("unknown tuple", stranger),
        ("another source", other_source),
    ] {
        let bytes = Frame::icmp_frag_needed(router, NAT, &quoted, 1300).build();
        let o = fx.run(&bytes, fx.lbt1);
        assert_eq!(o.out, bytes, "{what}: changed");
        assert_eq!(
            (o.action, o.reason),
            (XDP_PASS, Reason::PassNotTcp),
            "{what}"
        );
    }
}

#[test]
fn truncated_tcp_to_us_is_dropped_and_elsewhere_passed() {
    // A frame that ends before its IPv4 total length says, its TCP options
    // or data cut off, must not reach a backend or create state when it is
    // addressed to a VIP or the NAT range; elsewhere it is not ours to judge.
    let fx = fixture("truncated", |_| {});
    let vip = (WEB, 80);
    let client = (CLIENT, 43100);
    let options = [
        mss_option(1460),
        vec![4, 2],                          // SACK permitted
        vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 0], // timestamps
        vec![1, 3, 3, 7],                    // NOP, window scale 7
    ]
    .concat();
    let syn = Frame {
        tcp_options: options,
        ..Frame::tcp(client, vip, SYN)
    };
    let full = syn.build();
    let headers = 14 + 20 + 40; // data offset 10: 20 bytes of options
    assert_eq!(full.len(), headers);
    let cut = |frame: &[u8], len: usize| frame[..len].to_vec();
    // The same cut with the IPv4 total length (and checksum) made to match.
    let cut_consistently = |len: usize| {
        let mut f = Frame {
            tot_len_override: Some((len - 14) as u16),
            ..syn.clone()
        }
        .build();
        f.truncate(len);
        f
    };
    let mut data = Frame::tcp(client, vip, ACK | PSH);
    data.payload = vec![0x42; 100];
    let data = data.build();
    let reply = Frame::tcp((Ipv4Addr::new(10, 1, 2, 11), 8080), (NAT, 20001), ACK);
    let long_reply = Frame {
        payload: vec![7; 50],
        ..reply
    }
    .build();
    let elsewhere = Frame {
        tcp_options: syn.tcp_options.clone(),
        ..Frame::tcp(client, (Ipv4Addr::new(10, 1, 1, 1), 22), SYN)
    }
    .build();
    let other_port = Frame {
        tcp_options: syn.tcp_options.clone(),
        ..Frame::tcp(client, (WEB, 443), SYN)
    }
    .build();

    struct Case {
        name: &'static str,
        frame: Vec<u8>,
        ingress: u32,
        action: u32,
        reason: Reason,
    }
    let mut cases = Vec::new();
    for len in [14 + 20 + 21, 14 + 20 + 30, headers - 1] {
        cases.push(Case {
            name: "SYN to the VIP, options cut off (total length says more)",
            frame: cut(&full, len),
            ingress: fx.lbt0,
            action: XDP_DROP,
            reason: Reason::DropTruncated,
        });
        cases.push(Case {
            name: "SYN to the VIP, options cut off, total length matching the cut",
            frame: cut_consistently(len),
            ingress: fx.lbt0,
            action: XDP_DROP,
            reason: Reason::DropMalformed,
        });
    }
    cases.extend([
        Case {
            name: "SYN to the VIP, total length beyond a complete frame",
            frame: Frame {
                tot_len_override: Some(40 + 20 + 100),
                ..syn.clone()
            }
            .build(),
            ingress: fx.lbt0,
            action: XDP_DROP,
            reason: Reason::DropTruncated,
        },
        Case {
            name: "data to the VIP, payload cut off",
            frame: cut(&data, data.len() - 1),
            ingress: fx.lbt0,
            action: XDP_DROP,
            reason: Reason::DropTruncated,
        },
        Case {
            name: "reply to the NAT range, payload cut off",
            frame: cut(&long_reply, long_reply.len() - 10),
            ingress: fx.lbt1,
            action: XDP_DROP,
            reason: Reason::DropTruncated,
        },
        Case {
            name: "data offset 15 in a 20-byte header",
            frame: Frame {
                doff_override: Some(15),
                ..syn.clone()
            }
            .build(),
            ingress: fx.lbt0,
            action: XDP_DROP,
            reason: Reason::DropMalformed,
        },
        Case {
            name: "options cut off, to a non-VIP address",
            frame: cut(&elsewhere, elsewhere.len() - 5),
            ingress: fx.lbt0,
            action: XDP_PASS,
            reason: Reason::PassNoVip,
        },
        Case {
            name: "options cut off, to another port of the VIP's address",
            frame: cut(&other_port, other_port.len() - 5),
            ingress: fx.lbt0,
            action: XDP_PASS,
            reason: Reason::PassNoVip,
        },
    ]);
    for c in &cases {
        let o = fx.run(&c.frame, c.ingress);
        assert_eq!(
            (o.action, o.reason),
            (c.action, c.reason),
            "case: {} ({} bytes)",
            c.name,
            c.frame.len()
        );
        if c.action == XDP_PASS {
            assert_eq!(
                o.out, c.frame,
                "case {}: a passed packet is untouched",
                c.name
            );
        }
    }
    assert_eq!(
        (fx.dp.flow_count(), fx.dp.nat_count()),
        (0, 0),
        "a truncated packet created state"
    );

    // Ethernet padding after a complete packet is no truncation.
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 6]);
    let o = fx.run(&padded, fx.lbt0);
    assert_eq!(o.reason, Reason::RedirectForward);
    assert_eq!(fx.dp.flow_count(), 1);
}

/// An ICMP "fragmentation needed" from `from` about the segment the
/// backend sent `client` through `vip` (as the client would see it).
fn frag_needed_about_reply(
    from: Ipv4Addr,
    vip: (Ipv4Addr, u16),
    client: (Ipv4Addr, u16),
    mtu: u16,
) -> Vec<u8> {
    let mut reply = Frame::tcp(vip, client, ACK);
    reply.payload = vec![0x77; 1400];
    Frame::icmp_frag_needed(from, vip.0, &reply, mtu).build()
}

#[test]
fn a_forged_fragmentation_needed_cannot_shrink_the_shared_path() {
    // A client tells the VIP that "its" path needs MTU 552, about its own
    // connection. Relayed, the backend would send 512-byte segments to the
    // NAT address, and so to every client, for 10 minutes. Below
    // dataplane.pmtu_floor (1280) it is dropped; at the floor and above,
    // and toward clients whatever the MTU, messages go through.
    let fx = fixture("forged", |_| {});
    let vip = (WEB, 80);
    let client = (CLIENT, 41200);
    let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    let syn = parse_tcp(&o.out);
    let (backend, nat_port) = ((syn.dst, syn.dport), syn.sport);
    let router = Ipv4Addr::new(10, 1, 1, 254);

    for (from, mtu) in [(CLIENT, 552), (router, 552), (router, 1279), (CLIENT, 0)] {
        let o = fx.run(&frag_needed_about_reply(from, vip, client, mtu), fx.lbt0);
        assert_eq!(
            (o.action, o.reason),
            (XDP_DROP, Reason::DropIcmpMtu),
            "MTU {mtu} from {from}"
        );
    }
    for mtu in [1280, 1400] {
        let o = fx.run(&frag_needed_about_reply(router, vip, client, mtu), fx.lbt0);
        assert_eq!(
            (o.action, o.reason),
            (XDP_REDIRECT, Reason::RedirectIcmp),
            "MTU {mtu}"
        );
        let m = parse_frag_needed(&o.out);
        assert_eq!((m.dst, m.mtu), (backend.0, mtu));
    }
    // Not about one of our connections: the kernel's, as before, whatever
    // the MTU.
    let stranger = frag_needed_about_reply(CLIENT, vip, (CLIENT, 41201), 552);
    let o = fx.run(&stranger, fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_PASS, Reason::PassNotTcp));
    assert_eq!(o.out, stranger);

    // Toward the client (from the backend side), a small MTU concerns that
    // client alone: carried.
    let mut up = Frame::tcp((NAT, nat_port), backend, ACK);
    up.payload = vec![0x55; 1000];
    let msg = Frame::icmp_frag_needed(Ipv4Addr::new(10, 1, 2, 254), NAT, &up, 552);
    let o = fx.run(&msg.build(), fx.lbt1);
    assert_eq!((o.action, o.reason), (XDP_REDIRECT, Reason::RedirectIcmp));
    let m = parse_frag_needed(&o.out);
    assert_eq!((m.dst, m.mtu, m.quoted_src), (CLIENT, 552, client));
}

#[test]
fn the_pmtu_floor_is_configurable() {
    // 68, IPv4's minimum MTU, relays everything (the behaviour before the
    // floor existed).
    let fx = fixture("floor", |c| c.pmtu_floor = 68);
    let vip = (WEB, 80);
    let client = (CLIENT, 41300);
    fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
    let o = fx.run(&frag_needed_about_reply(CLIENT, vip, client, 552), fx.lbt0);
    assert_eq!((o.action, o.reason), (XDP_REDIRECT, Reason::RedirectIcmp));
    assert_eq!(parse_frag_needed(&o.out).mtu, 552);
}

/// A SYN from `client` to `vip` carrying `options`.
fn syn_with(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), options: Vec<u8>) -> Frame {
    Frame {
        tcp_options: options,
        ..Frame::tcp(client, vip, SYN)
    }
}

/// Runs `frame` and returns the verdict, the output's MSS and its options
/// (the output's checksums verified by `parse_tcp`).
fn mss_out(fx: &Fixture, frame: &Frame, ingress: u32) -> (Reason, Option<u16>, Vec<u8>) {
    let o = fx.run(&frame.build(), ingress);
    let p = parse_tcp(&o.out);
    assert_eq!(p.payload, frame.payload, "payload changed");
    (o.reason, p.mss(), p.options)
}

#[test]
fn syn_mss_is_clamped_to_the_interfaces_mtu() {
    let fx = fixture("mss", |_| {});
    let vip = (WEB, 80);
    let clamped = |fx: &Fixture| fx.event_count(lb_ebpf::Event::MssClamped);
    let mut port = 42100;
    let mut next = || {
        port += 1;
        (CLIENT, port)
    };

    // A VPC client's SYN (MTU 9001, MSS 8961): both interfaces have MTU 1500.
    let syn = syn_with(next(), vip, mss_option(8961));
    let (reason, mss, _) = mss_out(&fx, &syn, fx.lbt0);
    assert_eq!((reason, mss), (Reason::RedirectForward, Some(1460)));
    assert_eq!(clamped(&fx), 1);

    // The smaller of the two interfaces counts: egress, then ingress.
    fx.netns()
        .ip(&["link", "set", "lbt1", "mtu", "1400"])
        .unwrap();
    let (_, mss, _) = mss_out(&fx, &syn_with(next(), vip, mss_option(8961)), fx.lbt0);
    assert_eq!(mss, Some(1360), "egress MTU 1400");
    fx.netns()
        .ip(&["link", "set", "lbt0", "mtu", "1300"])
        .unwrap();
    let (_, mss, _) = mss_out(&fx, &syn_with(next(), vip, mss_option(8961)), fx.lbt0);
    assert_eq!(mss, Some(1260), "ingress MTU 1300");
    fx.netns()
        .ip(&["link", "set", "lbt0", "mtu", "1500"])
        .unwrap();
    fx.netns()
        .ip(&["link", "set", "lbt1", "mtu", "1500"])
        .unwrap();
    assert_eq!(clamped(&fx), 3);

    // Already small enough, or no MSS option at all: untouched.
    for options in [mss_option(1460), mss_option(536), vec![1, 3, 3, 7], vec![]] {
        let syn = syn_with(next(), vip, options.clone());
        let (_, _, out) = mss_out(&fx, &syn, fx.lbt0);
        let mut padded = options.clone();
        while padded.len() % 4 != 0 {
            padded.push(0);
        }
        assert_eq!(out, padded, "options {options:?} changed");
    }
    assert_eq!(clamped(&fx), 3, "nothing to clamp");

    // Options in odd places: the MSS after others, at even and odd
    // offsets, each checksum verified independently by parse_tcp.
    let sack = vec![4, 2];
    let ts = vec![8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
    let wscale = vec![3, 3, 7];
    for (what, options, at) in [
        (
            "after a NOP (odd offset)",
            [vec![1], mss_option(9000)].concat(),
            1,
        ),
        (
            "after three NOPs (odd offset)",
            [vec![1, 1, 1], mss_option(9000)].concat(),
            3,
        ),
        (
            "after SACK and timestamps",
            [sack.clone(), ts.clone(), mss_option(9000)].concat(),
            12,
        ),
        (
            "after window scale (odd offset)",
            [wscale.clone(), mss_option(9000), vec![1]].concat(),
            3,
        ),
        (
            "last of 40 bytes",
            [vec![1; 36], mss_option(9000)].concat(),
            36,
        ),
    ] {
        let syn = syn_with(next(), vip, options.clone());
        let (reason, mss, out) = mss_out(&fx, &syn, fx.lbt0);
        assert_eq!(
            (reason, mss),
            (Reason::RedirectForward, Some(1460)),
            "{what}"
        );
        let mut want = options.clone();
        want[at + 2..at + 4].copy_from_slice(&1460u16.to_be_bytes());
        assert_eq!(
            &out[..want.len()],
            &want[..],
            "{what}: other options changed"
        );
    }
    assert_eq!(clamped(&fx), 8);

    // Options that end the walk before the MSS: left alone.
    for (what, options) in [
        ("after EOL", [vec![0, 0], mss_option(9000)].concat()),
        (
            "after an option of length 0",
            [vec![5, 0], mss_option(9000)].concat(),
        ),
        ("an MSS option of length 3", vec![2, 3, 0x23, 0x28]),
    ] {
        let syn = syn_with(next(), vip, options.clone());
        let (reason, _, out) = mss_out(&fx, &syn, fx.lbt0);
        assert_eq!(reason, Reason::RedirectForward, "{what}");
        assert_eq!(&out[..options.len()], &options[..], "{what}: changed");
    }
    assert_eq!(clamped(&fx), 8, "nothing to clamp");
    // An MSS option before a bad one is found all the same.
    let syn = syn_with(
        next(),
        vip,
        [vec![1], mss_option(9000), vec![8, 40]].concat(),
    );
    let (_, mss, _) = mss_out(&fx, &syn, fx.lbt0);
    assert_eq!(mss, Some(1460));
    assert_eq!(clamped(&fx), 9);

    // Only SYNs: an ACK with an MSS-like option is left alone.
    let ack = Frame {
        tcp_options: mss_option(9000),
        ..Frame::tcp(next(), vip, ACK)
    };
    let (_, mss, _) = mss_out(&fx, &ack, fx.lbt0);
    assert_eq!(mss, Some(9000));

    // The backend's SYN-ACK, toward the client.
    let client = next();
    let o = fx.run(&syn_with(client, vip, mss_option(1460)).build(), fx.lbt0);
    let out = parse_tcp(&o.out);
    let synack = Frame {
        tcp_options: [mss_option(8960), vec![1, 3, 3, 7]].concat(),
        ..Frame::tcp((out.dst, out.dport), (NAT, out.sport), SYN | ACK)
    };
    let (reason, mss, _) = mss_out(&fx, &synack, fx.lbt1);
    assert_eq!((reason, mss), (Reason::RedirectReply, Some(1460)));
    assert_eq!(clamped(&fx), 10);

    // XDP_TX (one interface), and a next hop whose MAC is not known yet.
    let (reason, mss, _) = mss_out(
        &fx,
        &syn_with(next(), (LOCAL_VIP, 80), mss_option(8961)),
        fx.lbt0,
    );
    assert_eq!((reason, mss), (Reason::TxForward, Some(1460)));
    fx.netns()
        .ip(&["link", "set", "lbt1", "mtu", "1400"])
        .unwrap();
    let (reason, mss, _) = mss_out(
        &fx,
        &syn_with(next(), (NONEIGH_VIP, 80), mss_option(8961)),
        fx.lbt0,
    );
    assert_eq!(
        (reason, mss),
        (Reason::PassNoNeigh, Some(1360)),
        "the way out is known without its MAC"
    );
}

#[test]
fn the_mss_clamp_can_be_fixed_or_off() {
    let vip = (WEB, 80);
    let fx = fixture("mssfixed", |c| c.mss_clamp = 1200);
    let (_, mss, _) = mss_out(
        &fx,
        &syn_with((CLIENT, 42200), vip, mss_option(1460)),
        fx.lbt0,
    );
    assert_eq!(mss, Some(1200));
    let (_, mss, _) = mss_out(
        &fx,
        &syn_with((CLIENT, 42201), vip, mss_option(1100)),
        fx.lbt0,
    );
    assert_eq!(mss, Some(1100));
    drop(fx);
    let fx = fixture("mssoff", |c| c.mss_clamp = lb_ebpf::MSS_CLAMP_OFF);
    let (_, mss, _) = mss_out(
        &fx,
        &syn_with((CLIENT, 42202), vip, mss_option(8961)),
        fx.lbt0,
    );
    assert_eq!(mss, Some(8961));
    assert_eq!(fx.event_count(lb_ebpf::Event::MssClamped), 0);
}

#[test]
fn source_affinity_keeps_a_client_on_one_backend_and_spreads_clients() {
    let fx = fixture("sticky", |_| {});
    let vip = (STICKY_VIP, 80);
    let pick = fx.backend_picker(STICKY);

    // Many connections of one client: one backend, each its own NAT port
    // (the candidates are still a hash of the whole tuple).
    let mut backends = std::collections::HashSet::new();
    let mut nat_ports = std::collections::HashSet::new();
    for port in 50000..50040u16 {
        let client = (CLIENT, port);
        let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
        assert_eq!(o.reason, Reason::RedirectForward);
        let p = parse_tcp(&o.out);
        assert_eq!((p.dst, p.dport), pick(client, vip), "client port {port}");
        backends.insert((p.dst, p.dport));
        assert_eq!(p.sport, expected_nat_port(client, vip));
        nat_ports.insert(p.sport);
    }
    assert_eq!(backends.len(), 1, "one client, one backend: {backends:?}");
    assert!(nat_ports.len() >= 39, "NAT ports collide: {nat_ports:?}");

    // Many clients: spread over every backend, roughly evenly.
    let mut count = std::collections::HashMap::new();
    for i in 0..600u32 {
        let addr = Ipv4Addr::from(0x0a09_0000 + i * 7 + 1);
        let client = (addr, 40000 + (i % 1000) as u16);
        let o = fx.run(&Frame::tcp(client, vip, SYN).build(), fx.lbt0);
        let p = parse_tcp(&o.out);
        assert_eq!((p.dst, p.dport), pick(client, vip), "client {addr}");
        // Another connection of the same client lands on the same backend.
        let again = fx.run(&Frame::tcp((addr, 33333), vip, SYN).build(), fx.lbt0);
        let q = parse_tcp(&again.out);
        assert_eq!((q.dst, q.dport), (p.dst, p.dport), "client {addr}");
        *count.entry((p.dst, p.dport)).or_insert(0u32) += 1;
    }
    assert_eq!(count.len(), 3, "{count:?}");
    for (b, n) in &count {
        assert!(
            (120..=280).contains(n),
            "{b:?} got {n} of 600 clients: {count:?}"
        );
    }

    // The same client on the 5-tuple VIP with the same backends: spread.
    let web: std::collections::HashSet<_> = (50000..50040u16)
        .map(|port| {
            let o = fx.run(&Frame::tcp((CLIENT, port), (WEB, 80), SYN).build(), fx.lbt0);
            let p = parse_tcp(&o.out);
            (p.dst, p.dport)
        })
        .collect();
    assert_eq!(
        web.len(),
        3,
        "the 5-tuple VIP spreads one client's connections"
    );
}
