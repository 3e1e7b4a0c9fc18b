//! High availability end to end: two real lbds (or lbd and keepalived) on
//! one bridge, speaking unicast VRRPv3, with a client and three backends
//! (`lb_tests::pair`). Needs root and the binaries built by `cargo xtask
//! build`; a missing binary fails the test, it never skips.

use std::time::{Duration, Instant};

use lb_tests::{
    pair::{Moto, Pair, Side},
    wait_until, Child,
};

const ELECTION: Duration = Duration::from_secs(30);

/// Opens `connections` connections through the VIP with `lb-testkit hold`,
/// each exchanging a line every 100 ms for `secs`, and waits until all are
/// open. See [`finish_hold`].
fn start_hold(pair: &Pair, connections: u32, secs: f64) -> Child {
    let mut hold = pair
        .spawn_client(&[
            "hold",
            "--target",
            &pair.vip_target(),
            "--connections",
            &connections.to_string(),
            "--interval-ms",
            "100",
            "--duration-secs",
            &secs.to_string(),
        ])
        .unwrap();
    hold.wait_for_stdout("ready", Duration::from_secs(30))
        .unwrap();
    hold
}

/// Runs an `lb-testkit hold` to completion and returns (survived, report).
fn finish_hold(mut hold: Child, secs: f64) -> (u64, serde_json::Value) {
    hold.wait_timeout(Duration::from_secs_f64(secs + 60.0))
        .expect("waiting for lb-testkit hold")
        .expect("lb-testkit hold did not finish");
    let out = hold.stdout_so_far();
    let json = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from lb-testkit hold: {out}{}",
                hold.stderr_so_far()
            )
        });
    (json["survived"].as_u64().unwrap_or(0), json)
}

/// Starts lbd on side 0, waits for it to be master, starts side 1 and waits
/// until it hears side 0.
fn start_master_then_backup(pair: &mut Pair, a: &Side, b: &Side) {
    pair.start_lbd(0, a).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.start_lbd(1, b).unwrap();
    wait_until(ELECTION, "the backup to hear the master", || {
        pair.vrrp_status(1)
            .map(|v| v.master == Some(pair.lb_addr(0)))
            .unwrap_or(false)
    })
    .unwrap();
}

/// One `ID` exchange through the VIP from the client; the backend's name.
fn one_request(pair: &Pair) -> Option<String> {
    let target = pair.vip_target();
    let mut c = pair
        .spawn_client(&[
            "client",
            "--target",
            &target,
            "--count",
            "1",
            "--concurrency",
            "1",
            "--timeout-ms",
            "1000",
        ])
        .ok()?;
    c.wait_timeout(Duration::from_secs(10)).ok()??;
    let r = lb_tests::try_parse_client_report(&c.stdout_so_far()).ok()?;
    (r.ok == 1).then(|| r.by_backend.keys().next().cloned())?
}

#[test]
fn the_backup_takes_over_on_link_loss_and_open_connections_carry_on() {
    let mut pair = Pair::for_test("hafail");
    let (a, b) = (Side::new(150, 100), Side::new(100, 100));
    pair.start_lbd(0, &a).unwrap();
    pair.start_lbd(1, &b).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    for addr in pair.floating(&a) {
        assert!(pair.holds(0, addr), "the master holds {addr}");
        assert!(!pair.holds(1, addr), "the backup does not hold {addr}");
    }
    let backup = pair.vrrp_status(1).unwrap();
    assert_eq!(backup.master, Some(pair.lb_addr(0)));
    assert!(backup.adverts_received > 0 && backup.adverts_invalid == 0);
    let text = pair.lbctl_status(0).unwrap();
    assert!(text.contains("vrrp        MASTER"), "{text}");
    wait_until(ELECTION, "a request through the master", || {
        one_request(&pair).is_some()
    })
    .unwrap();
    // Both build the same ring (what lets a flow keep its backend), and say so.
    wait_until(ELECTION, "both sides to build the same ring", || {
        match (pair.vips(0), pair.vips(1)) {
            (Ok(a), Ok(b)) => {
                a[0].healthy_backends == 3
                    && b[0].healthy_backends == 3
                    && a[0].ring_digest == b[0].ring_digest
            }
            _ => false,
        }
    })
    .unwrap();

    // Connections through the master, exchanging a line every 100 ms.
    let secs = 8.0;
    let hold = start_hold(&pair, 30, secs);
    std::thread::sleep(Duration::from_secs(1));
    pair.fail_link(0).unwrap();
    let failed = Instant::now();
    pair.wait_state(1, "master", ELECTION).unwrap();
    eprintln!(
        "side 1 is master {:?} after the link went down",
        failed.elapsed()
    );
    for addr in pair.floating(&b) {
        assert!(pair.holds(1, addr), "the new master holds {addr}");
    }
    let (survived, report) = finish_hold(hold, secs);
    assert_eq!(
        survived, 30,
        "every open connection carries on through the new master: {report}"
    );
    // New connections too.
    assert!(one_request(&pair).is_some());
    let status = pair.vrrp_status(1).unwrap();
    assert_eq!(status.transitions, 1);
    assert!(status.holding);
}

#[test]
fn a_clean_stop_hands_the_addresses_over_without_waiting_for_the_timer() {
    let mut pair = Pair::for_test("hastop");
    // A slow interval: 3 intervals + skew = 10.8 s for a silent master,
    // against 1.8 s of skew after an advertisement of priority 0.
    let (a, b) = (Side::new(150, 3000), Side::new(100, 3000));
    start_master_then_backup(&mut pair, &a, &b);
    let lbd = pair.take_process(0).unwrap();
    let stopped = Instant::now();
    let status = lbd.stop().unwrap();
    assert!(status.success(), "lbd stops cleanly: {status}");
    for addr in pair.floating(&a) {
        assert!(!pair.holds(0, addr), "the old master removed {addr}");
    }
    assert!(!pair.pin_path(0).exists(), "and its data plane");
    pair.wait_state(1, "master", Duration::from_secs(7))
        .expect("the backup takes over well before the master-down interval (10.8 s)");
    eprintln!("taken over {:?} after the stop", stopped.elapsed());
    assert!(one_request(&pair).is_some());
}

#[test]
fn lbd_and_keepalived_accept_each_other_as_peers() {
    let mut pair = Pair::for_test("haka");
    // keepalived is master: lbd must hear it and stay backup.
    let (ka, lb) = (Side::new(150, 100), Side::new(100, 100));
    pair.start_keepalived(0, &ka).unwrap();
    wait_until(ELECTION, "keepalived to take the VIP", || {
        pair.holds(0, pair.vip())
    })
    .unwrap();
    pair.start_lbd(1, &lb).unwrap();
    wait_until(ELECTION, "lbd to hear keepalived", || {
        pair.vrrp_status(1)
            .map(|v| v.master == Some(pair.lb_addr(0)) && v.adverts_received >= 10)
            .unwrap_or(false)
    })
    .unwrap();
    let v = pair.vrrp_status(1).unwrap();
    assert_eq!(v.state, "backup", "{v:?}");
    assert_eq!(v.adverts_invalid, 0, "{v:?}");
    assert!(!pair.holds(1, pair.vip()));
    // keepalived's host loses its link: lbd takes over.
    pair.fail_link(0).unwrap();
    pair.wait_state(1, "master", ELECTION).unwrap();
    assert!(pair.holds(1, pair.vip()));
    assert!(one_request(&pair).is_some(), "lbd serves the VIP");
    drop(pair);

    // Now lbd is master and a fresh keepalived with a lower priority joins:
    // it must hear lbd and not take the VIP.
    let mut pair = Pair::for_test("haka2");
    let (lb, ka) = (Side::new(150, 100), Side::new(100, 100));
    pair.start_lbd(0, &lb).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.start_keepalived(1, &ka).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let log = pair.process(1).unwrap().output_so_far();
    assert!(log.contains("Entering BACKUP STATE"), "{log}");
    assert!(
        !log.contains("Entering MASTER STATE"),
        "keepalived took over: {log}"
    );
    assert!(!pair.holds(1, pair.vip()));
    // lbd stops cleanly (priority 0): keepalived takes over.
    let lbd = pair.take_process(0).unwrap();
    assert!(lbd.stop().unwrap().success());
    wait_until(ELECTION, "keepalived to take the VIP", || {
        pair.holds(1, pair.vip())
    })
    .unwrap();
}

#[test]
fn a_reload_moves_the_floating_addresses_and_refuses_other_vrrp_changes() {
    let mut pair = Pair::for_test("hareload");
    let mut a = Side::new(150, 100);
    a.float_nat = false;
    pair.start_lbd(0, &a).unwrap();
    // No peer answers: master after the master-down interval.
    pair.wait_state(0, "master", ELECTION).unwrap();
    assert!(pair.holds(0, pair.vip()));
    assert!(!pair.holds(0, pair.nat_source()));
    // Float the NAT source too.
    a.float_nat = true;
    pair.write_config(0, &pair.lbd_config(0, &a)).unwrap();
    pair.process(0).unwrap().signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the NAT source to float", || {
        pair.holds(0, pair.nat_source())
    })
    .unwrap();
    assert_eq!(
        pair.vrrp_status(0).unwrap().addresses,
        vec![pair.vip(), pair.nat_source()]
    );
    // An address that lives on another interface ("ADDRESS dev IFNAME").
    pair.lb_ns(0)
        .ip(&[
            "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
        ])
        .unwrap();
    for ifname in ["eth9", "eth9p"] {
        pair.lb_ns(0).ip(&["link", "set", ifname, "up"]).unwrap();
    }
    let extra = std::net::Ipv4Addr::new(192, 0, 2, 9);
    let text = pair.lbd_config(0, &a).replace(
        "addresses = [",
        &format!("addresses = [\"{extra} dev eth9\", "),
    );
    pair.write_config(0, &text).unwrap();
    pair.process(0).unwrap().signal(libc::SIGHUP);
    let on_eth9 = || {
        pair.lb_ns(0)
            .ip(&["-br", "-4", "addr", "show", "dev", "eth9"])
            .map(|o| o.contains(&format!("{extra}/32")))
            .unwrap_or(false)
    };
    wait_until(Duration::from_secs(20), "the address on eth9", on_eth9).unwrap();
    assert!(!pair.holds(0, extra), "not on eth0");
    assert!(pair
        .lbctl_status(0)
        .unwrap()
        .contains(&format!("{extra} on eth9")));
    // A new priority needs a restart: refused, nothing changes.
    let mut higher = a.clone();
    higher.priority = 200;
    pair.write_config(0, &pair.lbd_config(0, &higher)).unwrap();
    let status_before = pair.status(0).unwrap();
    pair.process(0).unwrap().signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the reload to be refused", || {
        pair.status(0)
            .map(|s| s.reload_failures > status_before.reload_failures)
            .unwrap_or(false)
    })
    .unwrap();
    let s = pair.status(0).unwrap();
    assert!(
        s.last_reload_error
            .as_deref()
            .is_some_and(|e| e.contains("[vrrp] changed")),
        "{s:?}"
    );
    assert_eq!(s.vrrp.unwrap().priority, 150);
    assert!(pair.holds(0, pair.nat_source()));
}

/// Waits for side `side`'s EC2 takeover to complete, then checks with moto
/// that the Elastic IP and the floating addresses are on its interface.
fn assert_moved_to(pair: &Pair, moto: &Moto, side: usize) {
    let (eni, allocation) = (moto.enis[side].as_str(), moto.allocation.as_str());
    wait_until(
        Duration::from_secs(60),
        &format!("the EC2 takeover of side {side}"),
        || {
            pair.vrrp_status(side)
                .ok()
                .and_then(|v| v.ec2)
                .is_some_and(|e| e.state == "done")
        },
    )
    .unwrap();
    let seen = pair.moto_ec2(moto, &["where", allocation]).unwrap();
    assert_eq!(seen["eip_interface"], eni, "{seen}");
    for addr in [pair.vip(), pair.nat_source()] {
        assert!(
            seen["interfaces"][eni]
                .as_array()
                .unwrap()
                .contains(&addr.to_string().into()),
            "{addr} moved to side {side}'s interface: {seen}"
        );
    }
}

#[test]
fn on_ec2_the_new_master_moves_the_elastic_ip_retrying_until_the_api_answers() {
    let mut pair = Pair::for_test("haec2");
    let moto = pair.start_moto().unwrap();
    let service = pair.service_addr();
    pair.set_lbd_env(&[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]);

    // The API is out of reach when side 0 becomes master: its attempts fail,
    // are reported, and are retried until the API answers.
    pair.switch_ns()
        .ip(&["addr", "del", &format!("{service}/24"), "dev", "br0"])
        .unwrap();
    let (a, b) = (Side::new(150, 100), Side::new(100, 100));
    let text = pair.lbd_config_with(0, &a, &pair.ec2_table(&moto, 0));
    pair.start_lbd_config(0, &text).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    wait_until(Duration::from_secs(60), "a failed EC2 attempt", || {
        pair.vrrp_status(0)
            .ok()
            .and_then(|v| v.ec2)
            .is_some_and(|e| e.failures >= 1 && e.state == "retrying" && e.last_error.is_some())
    })
    .unwrap();
    let shown = pair.lbctl_status(0).unwrap();
    assert!(
        shown.contains("retrying") && shown.contains("last error"),
        "{shown}"
    );
    pair.switch_ns()
        .ip(&["addr", "add", &format!("{service}/24"), "dev", "br0"])
        .unwrap();
    assert_moved_to(&pair, &moto, 0);

    // Side 1 takes over when side 0's link fails, and moves them again.
    let text = pair.lbd_config_with(1, &b, &pair.ec2_table(&moto, 1));
    pair.start_lbd_config(1, &text).unwrap();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    assert_eq!(pair.vrrp_status(1).unwrap().ec2.unwrap().state, "idle");
    pair.fail_link(0).unwrap();
    pair.wait_state(1, "master", ELECTION).unwrap();
    assert_moved_to(&pair, &moto, 1);
    let e = pair.vrrp_status(1).unwrap().ec2.unwrap();
    assert_eq!((e.takeovers, e.failures), (1, 0), "{e:?}");
    assert!(e.public_ip.is_some());
    assert!(one_request(&pair).is_some(), "traffic flows through side 1");
}

#[test]
fn a_master_that_loses_its_backends_hands_over_and_takes_back_when_they_return() {
    let mut pair = Pair::for_test("hatrack");
    let (a, b) = (Side::new(150, 100), Side::new(120, 100));
    pair.start_lbd(0, &a).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.start_lbd(1, &b).unwrap();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    wait_until(ELECTION, "side 0 at full priority", || {
        pair.vrrp_status(0)
            .map(|v| v.effective_priority == 150)
            .unwrap_or(false)
    })
    .unwrap();

    // Side 0 can no longer reach any backend: its health checks fail, its
    // priority drops by track_weight (50) below side 1's, and side 1 preempts.
    let routes: Vec<String> = (0..3)
        .map(|i| format!("{}/32", pair.backend_addr(i)))
        .collect();
    for r in &routes {
        pair.lb_ns(0).ip(&["route", "add", "blackhole", r]).unwrap();
    }
    pair.wait_state(1, "master", ELECTION).unwrap();
    pair.wait_state(0, "backup", ELECTION).unwrap();
    let v = pair.vrrp_status(0).unwrap();
    assert_eq!(v.effective_priority, 100, "{v:?}");
    assert_eq!(v.problems, vec!["VIP web has no backend taking new flows"]);
    let text = pair.lbctl_status(0).unwrap();
    assert!(text.contains("lowered from 150"), "{text}");
    assert!(one_request(&pair).is_some(), "side 1 serves");

    // Routes back: side 0's backends come up, its priority returns, and it
    // preempts side 1 again.
    for r in &routes {
        pair.lb_ns(0).ip(&["route", "del", "blackhole", r]).unwrap();
    }
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    assert_eq!(pair.vrrp_status(0).unwrap().effective_priority, 150);
    assert!(one_request(&pair).is_some(), "side 0 serves again");
}

#[test]
fn a_master_restarted_with_sigquit_keeps_the_addresses_and_its_connections() {
    let mut pair = Pair::for_test("harestart");
    // 2 s adverts: the peer would take over 7.2 s after the last one.
    let (a, b) = (Side::new(150, 2000), Side::new(100, 2000));
    start_master_then_backup(&mut pair, &a, &b);
    wait_until(ELECTION, "a request through the master", || {
        one_request(&pair).is_some()
    })
    .unwrap();
    let secs = 8.0;
    let hold = start_hold(&pair, 20, secs);

    let mut old = pair.take_process(0).unwrap();
    old.signal(libc::SIGQUIT);
    let status = old
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("lbd exits on SIGQUIT");
    assert!(status.success(), "{status}");
    for addr in pair.floating(&a) {
        assert!(pair.holds(0, addr), "{addr} stays while lbd is away");
    }
    let text = pair.lbd_config(0, &a);
    pair.start_lbd_config(0, &text).unwrap();
    let v = pair.vrrp_status(0).unwrap();
    pair.wait_state(0, "master", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}: {v:?}"));
    let (survived, report) = finish_hold(hold, secs);
    assert_eq!(survived, 20, "connections carry on: {report}");
    let peer = pair.vrrp_status(1).unwrap();
    assert_eq!(
        (peer.state.as_str(), peer.transitions),
        ("backup", 0),
        "the peer never took over: {peer:?}"
    );
    assert!(pair.status(0).unwrap().adopted);
}

#[test]
fn a_vrrp_version_2_peer_is_refused_with_a_reason() {
    let mut pair = Pair::for_test("hav2");
    let mut ka = Side::new(150, 100);
    ka.keepalived_version = 2;
    pair.start_keepalived(0, &ka).unwrap();
    pair.start_lbd(1, &Side::new(100, 100)).unwrap();
    wait_until(ELECTION, "lbd to refuse keepalived's adverts", || {
        pair.vrrp_status(1)
            .map(|v| v.adverts_invalid >= 1)
            .unwrap_or(false)
    })
    .unwrap();
    let v = pair.vrrp_status(1).unwrap();
    assert_eq!(v.adverts_received, 0, "{v:?}");
    let problem = v.last_problem.unwrap_or_default();
    assert!(
        problem.contains("VRRP version 2") && problem.contains("vrrp_version 3"),
        "{problem}"
    );
    let text = pair.lbctl_status(1).unwrap();
    assert!(
        text.contains("refused") && text.contains("version 2"),
        "{text}"
    );
}

#[test]
fn the_pair_sandbox_fails_over_back_and_forth_without_losing_a_connection() {
    let bin_dir = lb_tests::topology::default_bin_dir();
    let sandbox = bin_dir.join("lb-sandbox");
    assert!(sandbox.is_file(), "{} is missing", sandbox.display());
    let _ = lb_tests::topology::Binaries::from_env();
    let bin_dir = bin_dir.display().to_string();
    let mut child = Child::spawn(
        &sandbox.display().to_string(),
        &[
            "--bin-dir",
            &bin_dir,
            "--pair",
            "--duration",
            "16",
            "--failover-every",
            "5",
        ],
    )
    .expect("start lb-sandbox --pair");
    let status = child
        .wait_timeout(Duration::from_secs(180))
        .expect("wait for lb-sandbox")
        .unwrap_or_else(|| panic!("lb-sandbox still running:\n{}", child.output_so_far()));
    let out = child.stdout_so_far();
    eprintln!("{}", child.output_so_far());
    assert!(status.success(), "lb-sandbox exited with {status}");
    assert!(out.contains("lb2 is master"), "no takeover seen");
    assert!(out.contains("bringing lb1's link back up"), "no repair");
    assert!(
        out.contains(r#""survived":20"#),
        "the held connections did not all survive"
    );
    assert!(out.contains("cleaned up"));
    for suffix in ["c", "l1", "l2", "s"] {
        assert!(!lb_tests::netns_exists(&format!("lbhasb{suffix}")));
    }
    assert!(!std::path::Path::new("/sys/fs/bpf/lb-lbhasb-1").exists());
}

#[test]
fn a_vrrp_interface_that_is_not_there_stops_lbd_before_it_touches_anything() {
    let mut pair = Pair::for_test("habad");
    let text = pair.lbd_config(0, &Side::new(150, 100)).replace(
        "[vrrp]\ninterface = \"eth0\"",
        "[vrrp]\ninterface = \"eth7\"",
    );
    assert!(text.contains("interface = \"eth7\""));
    let e = pair.start_lbd_config(0, &text).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("exited") && e.contains("vrrp.interface: there is no interface \"eth7\""),
        "{e}"
    );
    assert!(!pair.pin_path(0).exists(), "no data plane left behind");
    assert!(!pair.holds(0, pair.vip()));
    let reserved = pair
        .lb_ns(0)
        .exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])
        .unwrap();
    assert_eq!(reserved.trim(), "", "no ports reserved");
}

#[test]
fn a_flood_of_refused_vrrp_packets_is_counted_but_barely_logged() {
    let mut pair = Pair::for_test("haflood");
    pair.start_lbd(0, &Side::new(100, 100)).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    // Spoofed sources off the segment must reach lbd's raw socket.
    let lb = pair.lb_ns(0);
    for key in ["all", "default", "eth0"] {
        lb.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")
            .unwrap();
    }
    let before = pair.vrrp_status(0).unwrap();
    let to = pair.lb_addr(0).to_string();
    let base = pair.client_addr().octets();
    let from_base = format!("{}.{}.100.0", base[0], base[1]);
    let mut flood = pair
        .spawn_client(&[
            "vrrp-flood",
            "--to",
            &to,
            "--from-base",
            &from_base,
            "--sources",
            "2000",
            "--count",
            "20000",
        ])
        .unwrap();
    flood
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the flood ends");
    eprintln!("  flood: {}", flood.stdout_so_far().trim());
    // Counted, every one that arrived, by reason.
    wait_until(Duration::from_secs(10), "refusals counted", || {
        pair.vrrp_status(0)
            .map(|v| v.adverts_invalid >= before.adverts_invalid + 1000)
            .unwrap_or(false)
    })
    .unwrap();
    // Past the log window, the owed summary lines are out too.
    std::thread::sleep(Duration::from_secs(11));
    let v = pair.vrrp_status(0).unwrap();
    eprintln!("  refused: {:?} ({} in all)", v.refused, v.adverts_invalid);
    for reason in ["not_peer", "ttl"] {
        assert!(v.refused.get(reason).copied().unwrap_or(0) > 100, "{v:?}");
    }
    assert_eq!(
        v.refused.values().sum::<u64>(),
        v.adverts_invalid,
        "every refusal counted under its reason"
    );
    assert_eq!(v.state, "master", "the flood changed nothing: {v:?}");
    let out = pair.process(0).unwrap().output_so_far();
    let lines = out.lines().filter(|l| l.contains("vrrp: refused")).count();
    eprintln!("  log lines about refusals: {lines}");
    assert!(
        (2..=40).contains(&lines),
        "{lines} lines about refused packets (at most 16 sources, each with one summary, and \
         one summary for the rest, per reason)"
    );
}

/// The gratuitous ARP a new master sends, as its link sees it: a broadcast
/// ARP request from the interface's MAC that names the floating address as
/// both sender and target (lbd's `Announcer`, on a veth pair).
#[test]
fn a_gratuitous_arp_is_a_broadcast_request_naming_the_address_twice() {
    use lb_user::vrrp::link::{Announcer, Interface};
    use socket2::{Domain, Protocol, Socket, Type};
    use std::{io::Read, net::Ipv4Addr};

    let ns = lb_tests::Netns::new(&format!("{}g", lb_tests::unique_prefix("garp"))).unwrap();
    lb_tests::veth(&ns, "ga", &ns, "gb").unwrap();
    let ns_file = std::fs::File::open(ns.path()).unwrap();
    let (mac, frame) = std::thread::spawn(move || {
        lb_tests::xdp_fixture::enter_handle(&ns_file);
        // Every ARP frame in the namespace (only the veth pair carries any).
        let capture = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(0x0806u16.to_be()))),
        )
        .unwrap();
        capture
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let ga = Interface::lookup("ga").unwrap();
        Announcer::new(&ga)
            .unwrap()
            .announce(Ipv4Addr::new(10, 0, 0, 100))
            .unwrap();
        let mut frame = vec![0u8; 128];
        let n = (&capture).read(&mut frame).expect("an ARP frame");
        frame.truncate(n);
        (ga.mac, frame)
    })
    .join()
    .unwrap();
    assert!(frame.len() >= 14 + 28, "{frame:?}");
    assert_eq!(frame[0..6], [0xff; 6], "to the broadcast address");
    assert_eq!(frame[6..12], mac, "from the interface's MAC");
    assert_eq!(frame[12..14], [0x08, 0x06], "ARP");
    let arp = &frame[14..];
    assert_eq!(arp[..8], [0, 1, 8, 0, 6, 4, 0, 1], "Ethernet/IPv4 request");
    assert_eq!(arp[8..14], mac);
    assert_eq!(arp[14..18], [10, 0, 0, 100]);
    assert_eq!(arp[24..28], [10, 0, 0, 100]);
}
