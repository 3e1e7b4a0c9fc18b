//! The EC2 side of a pair, end to end: two real lbds against moto's EC2
//! server, each with its own IMDSv2 server following moto's state
//! (`lb_tests::pair::Pair::start_moto`). Reconcile after a partition and
//! after a flap, drift repaired, preflight failures reported at start, the
//! two-interface layout, route-table mode, Elastic-IP-only mode.
//!
//! Where moto is more lenient than EC2 the tests say so and read lbd's
//! requests from moto's recorder instead (docs/testing.md):
//! - moto keeps a reassigned private address on the old ENI too, and
//!   ignores AllowReassignment: the tests check that lbd asked with
//!   AllowReassignment=true, and drift is made with UnassignPrivateIpAddresses,
//!   which moto does apply;
//! - moto ignores AssociateAddress's PrivateIpAddress and reports the ENI's
//!   primary address: the tests check the PrivateIpAddress lbd sent, and
//!   that lbd reports the discrepancy instead of re-associating in a loop;
//! - moto carries out DryRun calls of CreateRoute/ReplaceRoute: the tests
//!   check that preflight (which dry-runs towards the current target)
//!   moved nothing.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    pair::{Moto, Pair, Side, EC2_RECONCILE_MS},
    wait_until,
};
use lb_user::api::Ec2Status;
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(30);
const TAKEOVER: Duration = Duration::from_secs(60);

fn ec2(pair: &Pair, side: usize) -> Option<Ec2Status> {
    pair.vrrp_status(side).ok().and_then(|v| v.ec2)
}

fn wait_ec2(pair: &Pair, side: usize, what: &str, f: impl Fn(&Ec2Status) -> bool) {
    wait_until(TAKEOVER, &format!("side {side}: {what}"), || {
        ec2(pair, side).is_some_and(|e| f(&e))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", ec2(pair, side), pair.diagnostics()));
}

fn where_(pair: &Pair, moto: &Moto) -> Value {
    pair.moto_ec2(moto, &["where", &moto.allocation]).unwrap()
}

fn eip_on(pair: &Pair, moto: &Moto, eni: &str) -> bool {
    where_(pair, moto)["eip_interface"] == eni
}

fn has(seen: &Value, eni: &str, a: Ipv4Addr) -> bool {
    seen["interfaces"][eni]
        .as_array()
        .is_some_and(|v| v.contains(&a.to_string().into()))
}

/// lbd's requests of `action` as moto recorded them, dry runs excluded.
fn requests(pair: &Pair, moto: &Moto, action: &str) -> Vec<Value> {
    all_requests(pair, moto, action)
        .into_iter()
        .filter(|r| r["DryRun"] != "true")
        .collect()
}

/// lbd's requests of `action`, dry runs included.
fn all_requests(pair: &Pair, moto: &Moto, action: &str) -> Vec<Value> {
    let all = pair.moto_ec2(moto, &["requests"]).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Action"] == action)
        .cloned()
        .collect()
}

/// Cuts (or restores) side `side`'s VRRP to its peer ([`Pair::cut_vrrp_from`]).
fn cut_vrrp_from(pair: &Pair, side: usize, cut: bool) {
    pair.cut_vrrp_from(side, cut).unwrap();
}

fn one_request_to(pair: &Pair, target: &str) -> bool {
    let Ok(mut c) = pair.spawn_client(&[
        "client",
        "--target",
        target,
        "--count",
        "1",
        "--concurrency",
        "1",
        "--timeout-ms",
        "1000",
    ]) else {
        return false;
    };
    matches!(c.wait_timeout(Duration::from_secs(10)), Ok(Some(_)))
        && lb_tests::try_parse_client_report(&c.stdout_so_far()).is_ok_and(|r| r.ok == 1)
}

fn start_pair(pair: &mut Pair, texts: [String; 2]) {
    pair.start_lbd_config(0, &texts[0]).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    pair.start_lbd_config(1, &texts[1]).unwrap();
    wait_until(ELECTION, "the backup to hear the master", || {
        pair.vrrp_status(1)
            .map(|v| v.master == Some(pair.lb_addr(0)) && v.state == "backup")
            .unwrap_or(false)
    })
    .unwrap();
}

#[test]
fn after_a_partition_or_a_flap_everything_ends_on_the_winner_and_drift_is_repaired() {
    let mut pair = Pair::for_test("ec2rec");
    let moto = pair.start_moto().unwrap();
    let (a, b) = (Side::new(150, 100), Side::new(100, 100));
    // Nothing names an ENI: both are found from instance metadata.
    let texts = [0, 1].map(|side| {
        pair.lbd_config_with(
            side,
            if side == 0 { &a } else { &b },
            &pair.ec2_table_with(&format!(
                "elastic_ip_allocation_id = \"{}\"",
                moto.allocation
            )),
        )
    });
    start_pair(&mut pair, texts);
    wait_ec2(&pair, 0, "the takeover done", |e| e.state == "done");
    for side in 0..2 {
        wait_ec2(&pair, side, "preflight passed", |e| e.preflight == "passed");
    }
    let e = ec2(&pair, 0).unwrap();
    assert_eq!(
        e.instance_id.as_deref(),
        Some(moto.instances[0].as_str()),
        "{e:?}"
    );
    assert_eq!(e.network_interface_id, moto.enis[0]);
    assert!(
        e.imds_ms.is_some(),
        "the moved addresses showed in IMDS: {e:?}"
    );
    assert!(
        e.preflight_checks
            .iter()
            .any(|c| c.name == "permission AssociateAddress" && c.detail.contains("DryRun")),
        "{e:?}"
    );
    // lbd spoke IMDSv2: a token first, every read with it, none refused.
    let log = moto.imds[0].stdout_so_far();
    assert!(log.contains("PUT /latest/api/token 200"), "{log}");
    assert!(
        log.contains("GET /latest/meta-data/instance-id 200"),
        "{log}"
    );
    assert!(!log.contains(" 401"), "{log}");
    wait_ec2(&pair, 1, "the backup's check", |e| e.reconcile == "clear");
    let seen = where_(&pair, &moto);
    assert_eq!(seen["eip_interface"], moto.enis[0].as_str(), "{seen}");
    for addr in [pair.vip(), pair.nat_source()] {
        assert!(has(&seen, &moto.enis[0], addr), "{addr} on side 0: {seen}");
    }

    // A partition of the VRRP path: both become master, side 1 moves
    // everything to itself.
    cut_vrrp_from(&pair, 0, true);
    cut_vrrp_from(&pair, 1, true);
    pair.wait_state(1, "master", ELECTION).unwrap();
    wait_ec2(&pair, 1, "side 1's takeover done", |e| e.state == "done");
    // Both are master now and each reconciles: the Elastic IP goes back
    // and forth, no faster than the hold-down allows.
    assert!(requests(&pair, &moto, "AssociateAddress")
        .iter()
        .any(|r| r["NetworkInterfaceId"] == moto.enis[1].as_str()));
    assert_eq!(pair.vrrp_status(0).unwrap().state, "master");
    std::thread::sleep(Duration::from_secs(4));
    let during = requests(&pair, &moto, "AssociateAddress").len();
    let assigns = requests(&pair, &moto, "AssignPrivateIpAddresses");
    assert!(
        assigns.iter().any(|r| r["NetworkInterfaceId"] == moto.enis[1].as_str()
            && r["AllowReassignment"] == "true"),
        "side 1 took the addresses with reassignment allowed (moto ignores it; EC2 needs it): {assigns:?}"
    );
    // Healed: side 1 steps down; side 0 hears its lower priority and
    // re-asserts: everything ends on side 0.
    let healed = Instant::now();
    cut_vrrp_from(&pair, 0, false);
    cut_vrrp_from(&pair, 1, false);
    pair.wait_state(1, "backup", ELECTION).unwrap();
    wait_until(TAKEOVER, "the Elastic IP back on side 0", || {
        eip_on(&pair, &moto, &moto.enis[0])
    })
    .unwrap();
    let took = healed.elapsed();
    eprintln!("after the partition healed, the Elastic IP was back on side 0 in {took:?}");
    eprintln!("during the partition: {during} AssociateAddress in all");
    assert!(
        took < Duration::from_millis(EC2_RECONCILE_MS) + Duration::from_secs(5),
        "within the reconcile interval ({EC2_RECONCILE_MS} ms) and a margin: {took:?}"
    );
    let assoc = requests(&pair, &moto, "AssociateAddress");
    let last = assoc.last().unwrap();
    assert_eq!(
        last["NetworkInterfaceId"],
        moto.enis[0].as_str(),
        "{assoc:?}"
    );
    assert_eq!(last["PrivateIpAddress"], pair.vip().to_string().as_str());
    assert_eq!(last["AllowReassociation"], "true");
    let seen = where_(&pair, &moto);
    for addr in [pair.vip(), pair.nat_source()] {
        // moto also keeps them on side 1's ENI (it never takes a reassigned
        // address off the old one); EC2 would show them on side 0 only.
        assert!(has(&seen, &moto.enis[0], addr), "{addr} on side 0: {seen}");
    }
    wait_ec2(&pair, 0, "side 0 held and repaired", |e| {
        e.reconcile == "held" && e.repairs >= 1 && e.drifts >= 1
    });
    // The backup no longer has the Elastic IP (its addresses it keeps in
    // moto's eyes, see above).
    wait_ec2(&pair, 1, "the backup's check", |e| {
        e.last_reconcile_unix.is_some() && !e.stranded.iter().any(|s| s.contains("Elastic IP"))
    });

    // A 0.4 s flap: side 1 stops hearing side 0 long enough to become
    // master for a moment (360 ms master-down at 100 ms adverts).
    let before = requests(&pair, &moto, "AssociateAddress").len();
    cut_vrrp_from(&pair, 0, true);
    std::thread::sleep(Duration::from_millis(450));
    cut_vrrp_from(&pair, 0, false);
    let flapped = Instant::now();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    std::thread::sleep(Duration::from_millis(EC2_RECONCILE_MS * 2));
    wait_until(TAKEOVER, "the Elastic IP on side 0 after the flap", || {
        eip_on(&pair, &moto, &moto.enis[0])
    })
    .unwrap();
    let assoc = requests(&pair, &moto, "AssociateAddress");
    eprintln!(
        "flap: {} AssociateAddress since, the last to {} ({:?} after the flap)",
        assoc.len() - before,
        assoc.last().unwrap()["NetworkInterfaceId"],
        flapped.elapsed()
    );
    assert_eq!(
        assoc.last().unwrap()["NetworkInterfaceId"],
        moto.enis[0].as_str(),
        "{assoc:?}"
    );
    assert_eq!(pair.vrrp_status(0).unwrap().state, "master");

    // Drift made by hand: the NAT source taken off side 0's ENI and the
    // Elastic IP moved to side 1's. Side 0's next reconcile repairs both.
    let repairs = ec2(&pair, 0).unwrap().repairs;
    let nat = pair.nat_source().to_string();
    pair.moto_ec2(&moto, &["unassign", &moto.enis[0], &nat])
        .unwrap();
    pair.moto_ec2(&moto, &["associate", &moto.allocation, &moto.enis[1]])
        .unwrap();
    let drifted = Instant::now();
    wait_until(TAKEOVER, "the drift repaired", || {
        let seen = where_(&pair, &moto);
        seen["eip_interface"] == moto.enis[0].as_str()
            && has(&seen, &moto.enis[0], pair.nat_source())
    })
    .unwrap();
    let took = drifted.elapsed();
    eprintln!("drift repaired in {took:?}");
    assert!(
        took < Duration::from_millis(EC2_RECONCILE_MS) * 2 + Duration::from_secs(10),
        "{took:?}"
    );
    wait_ec2(&pair, 0, "the repair counted", |e| e.repairs > repairs);
    let e = ec2(&pair, 0).unwrap();
    assert!(e.last_drift.is_some(), "{e:?}");
    let assigns = requests(&pair, &moto, "AssignPrivateIpAddresses");
    let last = assigns.last().unwrap();
    assert_eq!(
        last["NetworkInterfaceId"],
        moto.enis[0].as_str(),
        "{assigns:?}"
    );
    assert_eq!(
        last["PrivateIpAddress.1"],
        nat.as_str(),
        "only what differed: {assigns:?}"
    );
    assert!(last.get("PrivateIpAddress.2").is_none(), "{assigns:?}");
    let text = pair.lbctl_status(0).unwrap();
    assert!(
        text.contains("reconcile") && text.contains("repair(s)"),
        "{text}"
    );
}

#[test]
fn preflight_failures_are_reported_at_start() {
    let mut pair = Pair::for_test("ec2pre");
    let moto = pair.start_moto().unwrap();
    // 3 s adverts: alone, lbd stays backup for 10.8 s, long enough to read
    // its preflight before it becomes master.
    let a = Side::new(150, 3000);
    let alloc = format!("elastic_ip_allocation_id = \"{}\"", moto.allocation);
    let outside = format!("10.{}.2.50", pair.lb_addr(0).octets()[1]);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "an unknown ENI",
            format!("network_interface_id = \"eni-0123456789abcdef0\"\n{alloc}"),
            "network_interface_id",
            "is eni-0123456789abcdef0, but eth0",
        ),
        (
            "the other host's ENI",
            format!("network_interface_id = \"{}\"\n{alloc}", moto.enis[1]),
            "network_interface_id",
            "copied from the other host",
        ),
        (
            "an unknown Elastic IP",
            "elastic_ip_allocation_id = \"eipalloc-0123456789abcdef0\"".into(),
            "elastic_ip",
            "InvalidAllocationID.NotFound",
        ),
        (
            "an address outside the subnet",
            format!(
                "{alloc}\nprivate_addresses = [\"{}\", \"{}\", \"{outside}\"]",
                pair.vip(),
                pair.nat_source()
            ),
            "subnets",
            "outside",
        ),
        (
            "route-table mode with source/destination check on",
            format!(
                "mode = \"route_table\"\nroute_tables = [\"{}\"]",
                moto.route_table
            ),
            "network_interfaces",
            "source/destination check on",
        ),
    ];
    for (what, extra, check, needle) in cases {
        let text = pair.lbd_config_with(0, &a, &pair.ec2_table_with(&extra));
        pair.start_lbd_config(0, &text).unwrap();
        wait_ec2(&pair, 0, &format!("{what}: preflight failed"), |e| {
            e.preflight == "failed"
        });
        let e = ec2(&pair, 0).unwrap();
        let c = e
            .preflight_checks
            .iter()
            .find(|c| c.name == check)
            .unwrap_or_else(|| panic!("{what}: no {check} check: {e:?}"));
        assert!(!c.ok && c.detail.contains(needle), "{what}: {c:?}");
        if check == "elastic_ip" {
            assert!(c.detail.contains("request id"), "{c:?}");
        }
        let text = pair.lbctl_status(0).unwrap();
        assert!(
            text.contains("preflight failed") && text.contains(needle),
            "{what}: {text}"
        );
        // A host that could not take over advertises less and does not preempt.
        wait_until(ELECTION, "the priority lowered", || {
            pair.vrrp_status(0).is_ok_and(|v| {
                v.effective_priority == 100
                    && v.problems
                        .iter()
                        .any(|p| p.contains("EC2 preflight failed"))
            })
        })
        .unwrap();
        eprintln!("{what}: {}", c.detail);
        let lbd = pair.take_process(0).unwrap();
        assert!(lbd.stop().unwrap().success());
    }
    // And the good configuration passes.
    let text = pair.lbd_config_with(0, &a, &pair.ec2_table_with(&alloc));
    pair.start_lbd_config(0, &text).unwrap();
    wait_ec2(&pair, 0, "preflight passed", |e| e.preflight == "passed");
    assert_eq!(pair.vrrp_status(0).unwrap().effective_priority, 150);
}

#[test]
fn with_two_interfaces_each_address_moves_to_its_own_eni() {
    let mut pair = Pair::for_test("ec2two");
    let moto = pair.start_moto().unwrap();
    let net = pair.lb_addr(0).octets()[1];
    let nat1 = Ipv4Addr::new(10, net, 1, 101);
    let a = Side::new(150, 100);
    let text = |side: usize| {
        pair.lbd_config_with(
            side,
            &a,
            &pair.ec2_table_with(&format!(
                "elastic_ip_allocation_id = \"{}\"",
                moto.allocation
            )),
        )
        .replace(
            &format!("source = \"{}\"", pair.nat_source()),
            &format!("source = \"{nat1}\""),
        )
        .replace(
            &format!("\"{}\"]", pair.nat_source()),
            &format!("\"{nat1} dev eth1\"]"),
        )
    };
    let (t0, t1) = (text(0), text(1).replace("priority = 150", "priority = 100"));
    assert!(t0.contains(&format!("\"{nat1} dev eth1\"")), "{t0}");
    pair.start_lbd_config(0, &t0).unwrap();
    pair.wait_state(0, "master", ELECTION).unwrap();
    wait_ec2(&pair, 0, "the takeover done", |e| e.state == "done");
    let seen = where_(&pair, &moto);
    assert!(has(&seen, &moto.enis[0], pair.vip()), "{seen}");
    assert!(
        has(&seen, &moto.enis1[0], nat1),
        "{nat1} on eth1's ENI: {seen}"
    );
    assert!(!has(&seen, &moto.enis[0], nat1), "{seen}");
    assert_eq!(seen["eip_interface"], moto.enis[0].as_str());
    let e = ec2(&pair, 0).unwrap();
    assert_eq!(
        e.network_interfaces,
        vec![moto.enis[0].clone(), moto.enis1[0].clone()]
    );
    // Side 1 takes over when side 0 stops: to its own two ENIs.
    pair.start_lbd_config(1, &t1).unwrap();
    pair.wait_state(1, "backup", ELECTION).unwrap();
    let lbd = pair.take_process(0).unwrap();
    assert!(lbd.stop().unwrap().success());
    pair.wait_state(1, "master", ELECTION).unwrap();
    wait_ec2(&pair, 1, "the takeover done", |e| e.state == "done");
    let seen = where_(&pair, &moto);
    assert!(has(&seen, &moto.enis[1], pair.vip()), "{seen}");
    assert!(has(&seen, &moto.enis1[1], nat1), "{seen}");
    assert_eq!(seen["eip_interface"], moto.enis[1].as_str());
}

#[test]
fn route_table_mode_moves_the_routes_and_connections_survive() {
    let mut pair = Pair::for_test("ec2rt");
    let moto = pair.start_moto().unwrap();
    for eni in &moto.enis {
        pair.moto_ec2(&moto, &["source-dest-check", eni, "off"])
            .unwrap();
    }
    let (a, b) = (Side::new(150, 100), Side::new(100, 100));
    let extra = format!(
        "mode = \"route_table\"\nroute_tables = [\"{}\"]",
        moto.route_table
    );
    let texts = [
        pair.lbd_config_with(0, &a, &pair.ec2_table_with(&extra)),
        pair.lbd_config_with(1, &b, &pair.ec2_table_with(&extra)),
    ];
    start_pair(&mut pair, texts);
    wait_ec2(&pair, 0, "the takeover done", |e| e.state == "done");
    for side in 0..2 {
        wait_ec2(&pair, side, "preflight passed", |e| e.preflight == "passed");
    }
    let routes = |pair: &Pair| {
        pair.moto_ec2(&moto, &["routes", &moto.route_table])
            .unwrap()
    };
    let r = routes(&pair);
    for addr in [pair.vip(), pair.nat_source()] {
        assert_eq!(r[format!("{addr}/32")], moto.enis[0].as_str(), "{r}");
    }
    // The backup's preflight dry-ran ReplaceRoute towards the route's
    // current target: moto carried it out (it ignores DryRun for routes),
    // and still nothing moved.
    let replaces = all_requests(&pair, &moto, "ReplaceRoute");
    assert!(
        replaces
            .iter()
            .all(|q| q["NetworkInterfaceId"] == moto.enis[0].as_str()),
        "{replaces:?}"
    );
    assert!(
        replaces.iter().any(|q| q["DryRun"] == "true"),
        "{replaces:?}"
    );
    wait_until(ELECTION, "a request through the master", || {
        one_request_to(&pair, &pair.vip_target())
    })
    .unwrap();
    let secs = 8.0;
    let mut hold = pair
        .spawn_client(&[
            "hold",
            "--target",
            &pair.vip_target(),
            "--connections",
            "20",
            "--interval-ms",
            "100",
            "--duration-secs",
            &secs.to_string(),
        ])
        .unwrap();
    hold.wait_for_stdout("ready", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    pair.fail_link(0).unwrap();
    pair.wait_state(1, "master", ELECTION).unwrap();
    wait_ec2(&pair, 1, "the takeover done", |e| e.state == "done");
    let r = routes(&pair);
    for addr in [pair.vip(), pair.nat_source()] {
        assert_eq!(r[format!("{addr}/32")], moto.enis[1].as_str(), "{r}");
    }
    hold.wait_timeout(Duration::from_secs_f64(secs + 60.0))
        .unwrap()
        .expect("lb-testkit hold finishes");
    let out = hold.stdout_so_far();
    let report: Value = serde_json::from_str(out.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(report["survived"], 20, "connections carry on: {report}");
}

#[test]
fn elastic_ip_only_mode_moves_the_elastic_ip_and_nothing_else() {
    let mut pair = Pair::for_test("ec2eip");
    let moto = pair.start_moto().unwrap();
    let net = pair.lb_addr(0).octets()[1];
    // Each host's own VIP (and NAT source), a fixed secondary address that
    // never moves.
    let own = |side: usize| Ipv4Addr::new(10, net, 0, 121 + side as u8);
    for side in 0..2 {
        lb_tests::addr(pair.lb_ns(side), "eth0", &format!("{}/24", own(side))).unwrap();
        pair.moto_ec2(&moto, &["assign", &moto.enis[side], &own(side).to_string()])
            .unwrap();
    }
    let texts = [0, 1].map(|side| {
        let s = Side::new(if side == 0 { 150 } else { 100 }, 100);
        pair.lbd_config_with(
            side,
            &s,
            &pair.ec2_table_with(&format!(
                "mode = \"elastic_ip\"\nelastic_ip_allocation_id = \"{}\"",
                moto.allocation
            )),
        )
        .replace(
            &format!("\"{}\"", pair.vip()),
            &format!("\"{}\"", own(side)),
        )
        .replace(
            &format!("\"{}\"", pair.nat_source()),
            &format!("\"{}\"", own(side)),
        )
        .replace(
            &format!("addresses = [\"{}\", \"{}\"]\n", own(side), own(side)),
            "",
        )
    });
    assert!(!texts[0].contains("addresses = ["), "{}", texts[0]);
    // The test's own two assignments above.
    let assigned = requests(&pair, &moto, "AssignPrivateIpAddresses").len();
    start_pair(&mut pair, texts);
    wait_ec2(&pair, 0, "the takeover done", |e| e.state == "done");
    assert!(eip_on(&pair, &moto, &moto.enis[0]));
    let assoc = requests(&pair, &moto, "AssociateAddress");
    let last = assoc.last().unwrap();
    assert_eq!(
        last["PrivateIpAddress"],
        own(0).to_string().as_str(),
        "{assoc:?}"
    );
    // moto maps the Elastic IP to the ENI's primary address whatever was
    // asked: lbd says so once instead of re-associating in a loop.
    let e = ec2(&pair, 0).unwrap();
    assert!(
        e.warning
            .as_deref()
            .is_some_and(|w| w.contains(&own(0).to_string())),
        "{e:?}"
    );
    assert!(one_request_to(&pair, &format!("{}:80", own(0))));
    pair.fail_link(0).unwrap();
    pair.wait_state(1, "master", ELECTION).unwrap();
    wait_ec2(&pair, 1, "the takeover done", |e| e.state == "done");
    assert!(eip_on(&pair, &moto, &moto.enis[1]));
    let assoc = requests(&pair, &moto, "AssociateAddress");
    assert_eq!(
        assoc.last().unwrap()["PrivateIpAddress"],
        own(1).to_string().as_str()
    );
    assert!(
        one_request_to(&pair, &format!("{}:80", own(1))),
        "new connections work"
    );
    // Nothing else moved, and each host kept its own address.
    assert_eq!(
        requests(&pair, &moto, "AssignPrivateIpAddresses").len(),
        assigned
    );
    assert!(pair.holds(0, own(0)) && pair.holds(1, own(1)));
    assert!(!pair.holds(1, own(0)));
}
