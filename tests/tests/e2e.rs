//! End-to-end tests: the real `lbd`, its XDP program attached natively to
//! veths, between a client namespace and three backend namespaces (see
//! `lb_tests::topology`). Needs root, and the binaries and XDP object built by
//! `cargo xtask build` (found through `$LB_BIN_DIR` and `$LB_EBPF_OBJECT`);
//! a missing binary fails the test, it never skips.
//!
//! Every test builds its own topology, so they may run in parallel, but the
//! load and timing tests are meant for `--test-threads=1`.

use std::{collections::BTreeMap, path::Path, time::Duration};

use lb_tests::{
    harness::{
        assert_all_ok, assert_cleaned_up, assert_data_plane_removed, finish_transfer, Timing,
    },
    netns_exists,
    topology::{default_bin_dir, Topology, BACKENDS, BACKEND_PORT, VIP_NAME},
    wait_until, Child, ClientReport,
};
use lb_user::api::VipStatus;

/// Asserts that backend `i` answered a share of `r.ok` within `tolerance`
/// (relative) of `expected[i]`.
fn assert_shares(topo: &Topology, r: &ClientReport, expected: [f64; BACKENDS], tolerance: f64) {
    for (i, want) in expected.iter().enumerate() {
        let name = topo.backend_name(i);
        let got = r.by_backend.get(&name).copied().unwrap_or(0) as f64 / r.ok as f64;
        let err = (got - want).abs() / want;
        eprintln!(
            "  {name}: share {got:.4}, expected {want:.4} (off by {:.1}%)",
            err * 100.0
        );
        assert!(
            err <= tolerance,
            "{name} got {got:.4} of the connections, expected {want:.4} ± {:.0}%: {r:?}",
            tolerance * 100.0
        );
    }
}

/// The VIP `web` from a status list.
fn web(vips: &[VipStatus]) -> &VipStatus {
    vips.iter()
        .find(|v| v.name == VIP_NAME)
        .unwrap_or_else(|| panic!("no VIP {VIP_NAME} in {vips:?}"))
}

/// Bytes per backend (indexed like the topology's backends) from `lbctl --json`.
fn backend_bytes(topo: &Topology) -> [u64; BACKENDS] {
    let vips = topo.lbctl_backends();
    let mut out = [0; BACKENDS];
    for b in &web(&vips).backends {
        let i = topo
            .backend_index(b.address)
            .unwrap_or_else(|| panic!("unknown backend {b:?}"));
        out[i] = b.bytes;
    }
    out
}

/// The data rows of `lbctl backends` (table), by backend `ADDR:PORT`.
fn table_rows(table: &str) -> BTreeMap<String, Vec<String>> {
    table
        .lines()
        .filter_map(|l| {
            let cols: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            (cols.len() == 6 && cols[0].ends_with(&format!(":{BACKEND_PORT}")))
                .then(|| (cols[0].clone(), cols))
        })
        .collect()
}

#[test]
fn short_connections_all_complete() {
    let test = "short_connections_all_complete";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let r = topo.client(&["--count", "1000", "--concurrency", "16"]);
        eprintln!("  client: {r:?}");
        assert_all_ok(&topo, &r, 1000);
        assert_eq!(
            r.by_backend.len(),
            BACKENDS,
            "not every backend answered: {r:?}"
        );
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn equal_weights_share_evenly() {
    let test = "equal_weights_share_evenly";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 1, 1]);
    let r = topo.client(&["--count", "3000", "--concurrency", "16"]);
    eprintln!("  client: {r:?}");
    assert_all_ok(&topo, &r, 3000);
    assert_shares(&topo, &r, [1.0 / 3.0; 3], 0.15);
}

#[test]
fn weights_are_proportional() {
    let test = "weights_are_proportional";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 2, 3]);
    let r = topo.client(&["--count", "3000", "--concurrency", "16"]);
    eprintln!("  client: {r:?}");
    assert_all_ok(&topo, &r, 3000);
    assert_shares(&topo, &r, [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0], 0.15);
    // lbd's own counters agree with what the client saw.
    let vips = topo.lbctl_backends();
    for b in &web(&vips).backends {
        let i = topo.backend_index(b.address).expect("known backend");
        assert_eq!(b.weight, i as u32 + 1, "{b:?}");
        let seen = r
            .by_backend
            .get(&topo.backend_name(i))
            .copied()
            .unwrap_or(0);
        assert_eq!(b.flows, seen, "lbd's flow count of {b:?} vs the client's");
    }
}

#[test]
fn long_transfer_survives_backend_churn() {
    let test = "long_transfer_survives_backend_churn";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 1, 1]);

    // About 5 s: 610 chunks of 64 KiB, 8 ms apart.
    const BYTES: u64 = 40_000_000;
    let target = topo.vip_target();
    let bytes = BYTES.to_string();
    let mut transfer = topo
        .spawn_testkit_in_client(&[
            "transfer",
            "--target",
            &target,
            "--bytes",
            &bytes,
            "--chunk",
            "65536",
            "--pace-ms",
            "8",
        ])
        .expect("start the transfer");
    std::thread::sleep(Duration::from_millis(1000));
    let a = backend_bytes(&topo);
    std::thread::sleep(Duration::from_millis(500));
    let b = backend_bytes(&topo);
    let growth: Vec<u64> = (0..BACKENDS).map(|i| b[i] - a[i]).collect();
    let carrier = (0..BACKENDS)
        .max_by_key(|&i| growth[i])
        .expect("three backends");
    eprintln!(
        "  byte growth per backend over 0.5 s: {growth:?}; carrier b{}",
        carrier + 1
    );
    assert!(
        growth[carrier] > 1_000_000,
        "the transfer does not seem to be flowing: {growth:?}\n{}",
        transfer.output_so_far()
    );
    assert!(
        transfer.is_running(),
        "transfer ended early: {}",
        transfer.output_so_far()
    );

    // Take another backend out, use the VIP, put it back.
    let other = (carrier + 1) % BACKENDS;
    let other_target = topo.backend_target(other);
    let out = topo.lbctl(&["backends", "remove", VIP_NAME, &other_target]);
    eprintln!("  removed {other_target}: {}", out.trim());
    let vips = topo.lbctl_backends();
    assert_eq!(web(&vips).backends.len(), BACKENDS - 1, "{vips:?}");

    let r = topo.client(&["--count", "300", "--concurrency", "8"]);
    eprintln!("  client while {other_target} is out: {r:?}");
    assert_all_ok(&topo, &r, 300);
    assert!(
        !r.by_backend.contains_key(&topo.backend_name(other)),
        "the removed backend still got connections: {r:?}"
    );

    let out = topo.lbctl(&["backends", "add", VIP_NAME, &other_target]);
    eprintln!("  re-added {other_target}: {}", out.trim());
    // A new backend is down until its first health check passes.
    topo.wait_backends_up(Duration::from_secs(20))
        .expect("the re-added backend comes up");
    assert!(
        transfer.is_running(),
        "the transfer ended before the churn was over (make it longer): {}",
        transfer.output_so_far()
    );
    let r = topo.client(&["--count", "300", "--concurrency", "8"]);
    assert_all_ok(&topo, &r, 300);
    assert!(
        r.by_backend.contains_key(&topo.backend_name(other)),
        "the re-added backend got no connections: {r:?}"
    );

    finish_transfer(transfer, BYTES, Duration::from_secs(120));

    let table = topo.lbctl(&["backends"]);
    eprintln!("{table}");
    let rows = table_rows(&table);
    for i in 0..BACKENDS {
        assert!(rows.contains_key(&topo.backend_target(i)), "{table}");
    }
}

#[test]
fn no_syn_retransmit_stalls_at_2000_per_second() {
    let test = "no_syn_retransmit_stalls_at_2000_per_second";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 1, 1]);
    let r = topo.client(&[
        "--rate",
        "2000",
        "--duration-secs",
        "10",
        "--count",
        "20000",
        "--concurrency",
        "64",
        "--timeout-ms",
        "5000",
    ]);
    eprintln!("  client: {r:?}");
    let stats = topo.lbctl(&["stats"]);
    eprintln!("{stats}");
    // The rate itself is the client's job; on a busy 2-core machine it may
    // fall somewhat short. What matters is that it was high and nothing stalled.
    assert!(r.attempted >= 15_000, "the client could not keep up: {r:?}");
    assert_eq!(r.failed, 0, "failed connections: {r:?}");
    assert_eq!(
        r.slow_connects, 0,
        "connects that needed a SYN retransmit: {r:?}"
    );
    assert_eq!(
        topo.reason_packets("drop_nat_exhausted").expect("stats"),
        0,
        "{stats}"
    );
}

#[test]
fn stopping_lbd_stops_forwarding_and_cleans_up() {
    let test = "stopping_lbd_stops_forwarding_and_cleans_up";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let sysctls = |topo: &Topology| -> Vec<String> {
            let mut v = vec![topo.lb_reserved_ports().expect("reserved ports")];
            for ifname in ["eth0", "eth1"] {
                for key in ["forwarding", "accept_local"] {
                    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
                    let value = topo.lb_ns().exec(&["cat", &path]).expect("sysctl");
                    v.push(format!("{ifname}/{key}={}", value.trim()));
                }
            }
            v
        };
        // The admin's own reservations, one overlapping the NAT range
        // (20000-59999): they must be exactly as they were after lbd.
        topo.lb_ns()
            .sysctl("net.ipv4.ip_local_reserved_ports", "8080,19000-20500")
            .expect("reserve ports");
        let before = sysctls(&topo);
        assert_eq!(before[0], "8080,19000-20500");
        topo.start_lbd([1, 1, 1]);
        let during = sysctls(&topo);
        eprintln!("  sysctls before: {before:?}; while lbd runs: {during:?}");
        assert_eq!(during[0], "8080,19000-59999", "{during:?}");
        assert!(
            during.iter().any(|s| s == "eth0/forwarding=1"),
            "{during:?}"
        );
        for ifname in ["eth0", "eth1"] {
            assert!(
                topo.lb_xdp_attached(ifname).expect("ip link"),
                "no XDP on {ifname}"
            );
        }
        assert!(topo.pin_path().is_dir());

        let r = topo.client(&["--count", "100", "--concurrency", "4"]);
        assert_all_ok(&topo, &r, 100);

        // An idle control connection (an lbctl, a monitoring script) must not
        // keep lbd from stopping cleanly.
        let idle = std::os::unix::net::UnixStream::connect(topo.socket_path())
            .expect("connecting to the control socket");
        let lbd = topo.take_lbd().expect("lbd");
        let status = lbd.stop().expect("lbd stops on SIGTERM");
        drop(idle);
        assert!(status.success(), "lbd exited with {status}");

        assert_data_plane_removed(&topo);
        assert_eq!(sysctls(&topo), before, "sysctls were not restored");

        // The VIP is still an address of the load balancer, which has no
        // listener on port 80: connections are refused (or time out).
        let r = topo.client(&["--count", "5", "--concurrency", "1", "--timeout-ms", "2000"]);
        eprintln!("  client after lbd stopped: {r:?}");
        assert_eq!((r.attempted, r.ok, r.failed), (5, 0, 5), "{r:?}");
        for kind in r.errors.keys() {
            assert!(
                kind == "connect_refused" || kind == "connect_timeout",
                "unexpected failure {kind}: {r:?}"
            );
        }
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn lbctl_reports_counters() {
    let test = "lbctl_reports_counters";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 1, 1]);
    let r = topo.client(&["--count", "300", "--concurrency", "8"]);
    assert_all_ok(&topo, &r, 300);

    let table = topo.lbctl(&["backends"]);
    eprintln!("{table}");
    let header = format!("VIP {VIP_NAME} {}/tcp", topo.vip_target());
    assert!(table.contains(&header), "no line {header:?} in\n{table}");
    let rows = table_rows(&table);
    assert_eq!(rows.len(), BACKENDS, "{table}");
    for i in 0..BACKENDS {
        let row = rows
            .get(&topo.backend_target(i))
            .unwrap_or_else(|| panic!("no row for {}:\n{table}", topo.backend_target(i)));
        // BACKEND WEIGHT STATE PACKETS BYTES FLOWS
        assert_eq!(row[1], "1", "{row:?}");
        assert_eq!(row[2], "up", "{row:?}");
        for col in [3, 4, 5] {
            assert_ne!(row[col], "0", "zero counter in {row:?}");
        }
    }

    let out = topo.lbctl(&["--json", "backends"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("lbctl --json is JSON");
    assert_eq!(json["ok"], true, "{json}");
    let vips: Vec<VipStatus> =
        serde_json::from_value(json["result"].clone()).expect("a list of VIPs");
    let v = web(&vips);
    assert_eq!(v.flows, 300, "{v:?}");
    assert_eq!(
        v.backends.iter().map(|b| b.flows).sum::<u64>(),
        300,
        "{v:?}"
    );

    let out = topo
        .lbctl_output(&["backends", "remove", VIP_NAME, "10.9.9.9:1"])
        .expect("run lbctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "removing an unknown backend succeeded"
    );
    assert!(stderr.contains("not_found"), "stderr: {stderr}");
    assert!(stderr.contains("10.9.9.9:1"), "stderr: {stderr}");
    // Nothing changed.
    assert_eq!(web(&topo.lbctl_backends()).backends.len(), BACKENDS);

    let stats = topo.lbctl(&["stats"]);
    eprintln!("{stats}");
    let reasons: BTreeMap<&str, &str> = stats
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 3).then(|| (cols[0], cols[1]))
        })
        .collect();
    for reason in [
        "tx_forward",
        "tx_reply",
        "redirect_forward",
        "redirect_reply",
        "drop_nat_miss",
    ] {
        assert!(reasons.contains_key(reason), "no {reason} in\n{stats}");
    }
    // Client and backends sit behind different interfaces: both directions
    // are redirected.
    for reason in ["redirect_forward", "redirect_reply"] {
        assert_ne!(reasons[reason], "0", "{reason} is zero:\n{stats}");
    }
    assert!(stats.contains("flows "), "{stats}");
}

#[test]
fn lbd_check_rejects_bad_config() {
    let test = "lbd_check_rejects_bad_config";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let lbd = topo.binaries().lbd.clone();
        let good_text = topo.lbd_config([1, 1, 1]);
        let good = topo.write_file("good.toml", &good_text).expect("write");
        let out = std::process::Command::new(&lbd)
            .arg("--check")
            .arg("--config")
            .arg(&good)
            .output()
            .expect("run lbd --check");
        assert!(out.status.success(), "lbd --check on a good file: {out:?}");

        let bad_addr = topo.backend_addr(0).to_string();
        assert!(good_text.contains(&format!("address = \"{bad_addr}\"")));
        let bad_text = good_text.replacen(
            &format!("address = \"{bad_addr}\""),
            "address = \"10.0.0.300\"",
            1,
        );
        let bad = topo.write_file("bad.toml", &bad_text).expect("write");
        let out = std::process::Command::new(&lbd)
            .arg("--check")
            .arg("--config")
            .arg(&bad)
            .output()
            .expect("run lbd --check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "lbd --check on a bad file: {out:?}"
        );
        assert!(
            stderr.contains("vip[0].backend[0].address"),
            "stderr: {stderr}"
        );
        assert!(stderr.contains("10.0.0.300"), "stderr: {stderr}");

        let nothing_left = |topo: &Topology, what: &str| {
            for ifname in ["eth0", "eth1"] {
                assert!(
                    !topo.lb_xdp_attached(ifname).expect("ip link"),
                    "{what}: XDP attached to {ifname}"
                );
            }
            assert!(!topo.pin_path().exists(), "{what}: pin dir exists");
            assert!(!topo.socket_path().exists(), "{what}: socket exists");
            assert_eq!(topo.lb_reserved_ports().expect("sysctl"), "", "{what}");
        };
        let run = |topo: &mut Topology, config: &Path| -> (std::process::ExitStatus, Child) {
            let mut child = topo.spawn_lbd(config).expect("spawn lbd");
            let status = child
                .wait_timeout(Duration::from_secs(30))
                .expect("wait")
                .unwrap_or_else(|| panic!("lbd kept running: {}", child.output_so_far()));
            (status, child)
        };

        // Running (not checking) the bad file fails the same way, before
        // touching anything.
        let (status, child) = run(&mut topo, &bad);
        eprintln!(
            "  lbd with a bad address: {status}\n{}",
            child.output_so_far()
        );
        assert!(!status.success(), "lbd ran with a bad config");
        assert!(
            child.stderr_so_far().contains("vip[0].backend[0].address"),
            "{}",
            child.output_so_far()
        );
        nothing_left(&topo, "bad address");

        // Valid files that fail at start-up are rolled back completely: pins,
        // socket and sysctls are undone. First an interface that does not
        // exist (caught while applying host settings).
        let missing_if = good_text.replace(
            "interfaces = [\"eth0\", \"eth1\"]",
            "interfaces = [\"eth0\", \"nosuch0\"]",
        );
        let path = topo
            .write_file("missing-if.toml", &missing_if)
            .expect("write");
        let (status, child) = run(&mut topo, &path);
        eprintln!(
            "  lbd with a missing interface: {status}\n{}",
            child.output_so_far()
        );
        assert!(!status.success(), "lbd ran without its interface");
        assert!(
            child.stderr_so_far().contains("nosuch0"),
            "{}",
            child.output_so_far()
        );
        nothing_left(&topo, "missing interface");

        // Then an interface without native XDP (lo), listed after eth0: lbd
        // has attached to eth0 when the second attach fails, and must
        // detach again.
        let no_native = good_text.replace(
            "interfaces = [\"eth0\", \"eth1\"]",
            "interfaces = [\"eth0\", \"lo\"]",
        );
        let path = topo
            .write_file("no-native.toml", &no_native)
            .expect("write");
        let (status, child) = run(&mut topo, &path);
        eprintln!(
            "  lbd with lo in native mode: {status}\n{}",
            child.output_so_far()
        );
        assert!(!status.success(), "lbd attached natively to lo?");
        assert!(
            child.stderr_so_far().contains("native mode to lo"),
            "{}",
            child.output_so_far()
        );
        nothing_left(&topo, "failed attach");
        for key in ["forwarding", "accept_local"] {
            let path = format!("/proc/sys/net/ipv4/conf/lo/{key}");
            let value = topo.lb_ns().exec(&["cat", &path]).expect("sysctl");
            assert_eq!(value.trim(), "0", "lo/{key} was not restored");
        }
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn sandbox_shows_balanced_traffic() {
    let _t = Timing::start("sandbox_shows_balanced_traffic");
    let bin_dir = default_bin_dir();
    let sandbox = bin_dir.join("lb-sandbox");
    assert!(
        sandbox.is_file(),
        "{} is missing: run `cargo xtask build`",
        sandbox.display()
    );
    // Also fails fast if lbd & co. are missing.
    let _ = lb_tests::topology::Binaries::from_env();
    let bin_dir = bin_dir.display().to_string();
    let mut child = Child::spawn(
        &sandbox.display().to_string(),
        &["--bin-dir", &bin_dir, "--duration", "6"],
    )
    .expect("start lb-sandbox");
    let status = child
        .wait_timeout(Duration::from_secs(180))
        .expect("wait for lb-sandbox")
        .unwrap_or_else(|| {
            panic!(
                "lb-sandbox still running after 180 s:\n{}",
                child.output_so_far()
            )
        });
    let out = child.stdout_so_far();
    eprintln!("{}", child.output_so_far());
    assert!(status.success(), "lb-sandbox exited with {status}");
    for name in ["b1", "b2", "b3"] {
        // Rows: NAME BACKEND WEIGHT PACKETS BYTES FLOWS FLOWS/S
        let flows = out
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() == 7 && cols[0] == name).then(|| cols[5].parse::<u64>().ok())?
            })
            .max();
        assert!(
            flows.is_some_and(|f| f > 0),
            "no row for {name} with flows in the sandbox output"
        );
    }
    assert!(out.contains("cleaned up"), "no cleanup message");
    wait_until(Duration::from_secs(5), "sandbox namespaces to go", || {
        !netns_exists("lbsbxc") && !netns_exists("lbsbxl")
    })
    .expect("namespaces removed");
    assert_cleaned_up("lbsbx");
    assert!(!Path::new("/sys/fs/bpf/lb-lbsbx").exists());
}

/// A host one router further away: namespace `name` behind `router`, on
/// `10.{n}.{subnet}.0/24` (the router .1, the host .2), whose route through
/// the router has a locked MTU of 1400, so the router refuses larger DF
/// packets toward it with ICMP "fragmentation needed". `via` reaches the
/// router from the load balancer namespace.
fn host_behind_small_mtu(
    topo: &Topology,
    name: &str,
    router: &lb_tests::Netns,
    subnet: u8,
    via: &str,
) -> lb_tests::Netns {
    use lb_tests::netns::{addr, disable_offloads, route, veth};
    let n = topo.net();
    let host = lb_tests::Netns::new(&format!("{}{name}", topo.prefix())).expect("namespace");
    veth(&host, "eth0", router, "far0").expect("veth");
    addr(&host, "eth0", &format!("10.{n}.{subnet}.2/24")).expect("addr");
    addr(router, "far0", &format!("10.{n}.{subnet}.1/24")).expect("addr");
    route(&host, &["default", "via", &format!("10.{n}.{subnet}.1")]).expect("route");
    disable_offloads(&host, "eth0").expect("offloads");
    router
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("forwarding");
    let net = format!("10.{n}.{subnet}.0/24");
    router
        .ip(&[
            "route", "replace", &net, "dev", "far0", "mtu", "lock", "1400",
        ])
        .expect("route with a locked MTU");
    route(topo.lb_ns(), &[&net, "via", via]).expect("route from the load balancer");
    host
}

/// ICMP messages lbd carried across the NAT (`tx_icmp` + `redirect_icmp`).
fn icmp_carried(topo: &Topology) -> u64 {
    let stats = topo.lbctl(&["stats"]);
    eprintln!("{stats}");
    stats
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 3 && cols[0].ends_with("_icmp")).then(|| cols[1].parse::<u64>().ok())
        })
        .flatten()
        .sum()
}

#[test]
fn a_smaller_mtu_toward_the_client_is_learned_by_the_backend() {
    // Path MTU discovery through the NAT. The client sits one router further
    // away (the client namespace forwards for it), and the router's route to
    // it has a locked MTU of 1400, so the backend's full-size segments
    // (1500 bytes, DF) cannot pass: the router answers each with an ICMP
    // "fragmentation needed" to their source, the VIP. Unless lbd carries
    // that to the backend, the backend never learns, resends the same
    // segments and the echo transfer stalls.
    let test = "a_smaller_mtu_toward_the_client_is_learned_by_the_backend";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    topo.start_lbd([1, 1, 1]);

    let n = topo.net();
    let far = host_behind_small_mtu(&topo, "f", topo.client_ns(), 9, &format!("10.{n}.1.2"));

    const BYTES: u64 = 4_000_000;
    let testkit = topo.binaries().testkit.display().to_string();
    let target = topo.vip_target();
    let bytes = BYTES.to_string();
    let transfer = far
        .spawn_net(
            &[&testkit, "transfer", "--target", &target, "--bytes", &bytes],
            true,
        )
        .expect("start the transfer");
    finish_transfer(transfer, BYTES, Duration::from_secs(60));
    assert!(icmp_carried(&topo) > 0, "no ICMP was carried to a backend");
}

#[test]
fn a_smaller_mtu_toward_a_backend_is_learned_by_the_client() {
    // The other direction. A backend sits one router further away (backend
    // 1's namespace forwards for it, with a locked MTU of 1400 on the way),
    // so the client's full-size segments cannot reach it: the router answers
    // each with a "fragmentation needed" to their source, the NAT address.
    // lbd must carry that to the client (from the VIP, quoting client ->
    // VIP), or the client's upload stalls.
    let test = "a_smaller_mtu_toward_a_backend_is_learned_by_the_client";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    let n = topo.net();
    let router_addr = topo.backend_addr(0).to_string();
    let far = host_behind_small_mtu(&topo, "f", topo.backend_ns(0), 8, &router_addr);
    let testkit = topo.binaries().testkit.display().to_string();
    let mut server = far
        .spawn_net(
            &[
                &testkit,
                "serve",
                "--listen",
                "0.0.0.0:8080",
                "--name",
                "far",
            ],
            true,
        )
        .expect("far backend");
    server
        .wait_for_stdout("ready", Duration::from_secs(10))
        .expect("far backend ready");

    let config = format!(
        "{}\n[[vip]]\nname = \"far\"\naddress = \"{}\"\nport = 81\nprotocol = \"tcp\"\n  \
         [vip.health]\n  kind = \"none\"\n\n  [[vip.backend]]\n  address = \"10.{n}.8.2\"\n  \
         port = 8080\n  weight = 1\n",
        topo.lbd_config([1, 1, 1]),
        topo.vip()
    );
    topo.try_start_lbd_config(&config)
        .unwrap_or_else(|e| panic!("{e:#}"));

    const BYTES: u64 = 4_000_000;
    let target = format!("{}:81", topo.vip());
    let bytes = BYTES.to_string();
    let transfer = topo
        .spawn_testkit_in_client(&["transfer", "--target", &target, "--bytes", &bytes])
        .expect("start the transfer");
    finish_transfer(transfer, BYTES, Duration::from_secs(60));
    assert!(icmp_carried(&topo) > 0, "no ICMP was carried to a client");
    drop(server);
}

/// Counts of the event `event` in `lbctl stats` (its `EVENT COUNT` rows).
fn event_count(topo: &Topology, event: &str) -> u64 {
    let stats = topo.stats().expect("stats");
    stats
        .events
        .iter()
        .find(|e| e.event == event)
        .map(|e| e.count)
        .unwrap_or_else(|| panic!("no event {event:?} in {stats:?}"))
}

#[test]
fn a_jumbo_client_through_a_smaller_xdp_interface_needs_the_mss_clamp() {
    // EC2 in small: a client and backends at MTU 9000 (a VPC's 9001), and
    // a load balancer whose interfaces take at most 3498 (ENA's XDP limit).
    // The bridges in front of the load balancer drop larger frames without
    // a word, as ENA's driver does: no ICMP, no path MTU discovery. Without
    // the clamp the client and backend agree on MSS 8960 and the first
    // full-size segment vanishes, every time; with it they agree on 3458.
    //
    //   J (eth0 9000) -- [bridge in the client namespace] -- lb eth0 (3498)
    //   lb eth1 (3498) -- [bridge in the switch namespace] -- b1..b3 (9000)
    let test = "a_jumbo_client_through_a_smaller_xdp_interface_needs_the_mss_clamp";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    let n = topo.net();
    let set_mtu = |ns: &lb_tests::Netns, ifname: &str, mtu: u32| {
        ns.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])
            .unwrap_or_else(|e| panic!("{ifname} mtu {mtu}: {e:#}"));
    };
    // The load balancer's links at ENA's limit, both ends of each veth.
    set_mtu(topo.lb_ns(), "eth0", 3498);
    set_mtu(topo.client_ns(), "eth0", 3498);
    set_mtu(topo.lb_ns(), "eth1", 3498);
    set_mtu(topo.switch_ns(), "lb", 3498);
    // Jumbo backends.
    for i in 0..BACKENDS {
        set_mtu(topo.backend_ns(i), "eth0", 9000);
        set_mtu(topo.switch_ns(), &topo.backend_name(i), 9000);
    }
    // A jumbo client J, bridged onto the load balancer's client-side link.
    let jumbo = lb_tests::Netns::new(&format!("{}j", topo.prefix())).expect("namespace");
    lb_tests::netns::veth(&jumbo, "eth0", topo.client_ns(), "jp").expect("veth");
    set_mtu(&jumbo, "eth0", 9000);
    set_mtu(topo.client_ns(), "jp", 9000);
    let c = topo.client_ns();
    c.ip(&["link", "add", "br0", "type", "bridge"])
        .expect("bridge");
    c.ip(&["addr", "flush", "dev", "eth0"]).expect("flush");
    for port in ["eth0", "jp"] {
        c.ip(&["link", "set", port, "master", "br0"]).expect("port");
    }
    c.ip(&["link", "set", "br0", "up"]).expect("bridge up");
    lb_tests::netns::addr(&jumbo, "eth0", &format!("10.{n}.1.3/24")).expect("addr");
    lb_tests::netns::route(&jumbo, &["default", "via", &format!("10.{n}.1.1")]).expect("route");
    lb_tests::netns::disable_offloads(&jumbo, "eth0").expect("offloads");

    let config = topo.lbd_config([1, 1, 1]).replace(
        "xdp_mode = \"native\"\n",
        "xdp_mode = \"native\"\nmss_clamp = \"off\"\n",
    );
    assert!(config.contains("mss_clamp = \"off\""), "{config}");
    topo.try_start_lbd_config(&config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    topo.wait_backends_up(Duration::from_secs(30))
        .expect("backends up");

    const BYTES: u64 = 16 * 1024 * 1024;
    let testkit = topo.binaries().testkit.display().to_string();
    let target = topo.vip_target();
    let bytes = BYTES.to_string();
    let transfer = |timeout_ms: &str| {
        jumbo
            .spawn_net(
                &[
                    &testkit,
                    "transfer",
                    "--target",
                    &target,
                    "--bytes",
                    &bytes,
                    "--timeout-ms",
                    timeout_ms,
                ],
                true,
            )
            .expect("start the transfer")
    };

    // Without the clamp: the black hole the clamp is for.
    let mut t = transfer("3000");
    let status = t
        .wait_timeout(Duration::from_secs(60))
        .expect("wait")
        .unwrap_or_else(|| panic!("transfer still running: {}", t.output_so_far()));
    eprintln!(
        "  without the clamp: {status}: {}",
        t.output_so_far().trim()
    );
    assert!(
        !status.success(),
        "16 MB went through without the clamp: the test does not show what it should"
    );
    assert_eq!(event_count(&topo, "mss_clamped"), 0);

    // With it ("auto", the default), reloaded: intact.
    let clamped = config.replace("mss_clamp = \"off\"\n", "");
    topo.write_file("lb.toml", &clamped).expect("write");
    let out = topo.lbctl(&["reload"]);
    eprintln!("  lbctl reload: {}", out.trim());
    finish_transfer(transfer("10000"), BYTES, Duration::from_secs(120));
    // The client's SYN and the backend's SYN-ACK.
    assert!(
        event_count(&topo, "mss_clamped") >= 2,
        "{}",
        topo.lbctl(&["stats"])
    );
    drop(jumbo);
}

#[test]
fn source_affinity_keeps_each_client_on_one_backend() {
    // A second VIP on port 81 with hash = "source" over the same three
    // backends. Each of 16 client addresses opens 8 connections: all of a
    // client's land on one backend, and the clients spread over several.
    let test = "source_affinity_keeps_each_client_on_one_backend";
    let _t = Timing::start(test);
    let mut topo = Topology::for_test(test);
    let n = topo.net();
    let mut config = topo.lbd_config([1, 1, 1]);
    config.push_str(&format!(
        "\n[[vip]]\nname = \"sticky\"\naddress = \"{}\"\nport = 81\nhash = \"source\"\n  \
         [vip.health]\n  kind = \"none\"\n",
        topo.vip()
    ));
    for i in 0..BACKENDS {
        config.push_str(&format!(
            "\n  [[vip.backend]]\n  address = \"{}\"\n  port = {BACKEND_PORT}\n",
            topo.backend_addr(i)
        ));
    }
    topo.try_start_lbd_config(&config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    topo.wait_backends_up(Duration::from_secs(30))
        .expect("backends up");

    let testkit = topo.binaries().testkit.display().to_string();
    let sticky = format!("{}:81", topo.vip());
    let client = topo.client_ns();
    let mut per_client = BTreeMap::new();
    for host in 20..36u8 {
        let source = format!("10.{n}.1.{host}");
        client
            .ip(&["addr", "add", &format!("{source}/24"), "dev", "eth0"])
            .expect("address");
        // The preferred source of a route to the VIP (more specific than
        // the subnet's, which the VIP is in) picks the client address.
        client
            .ip(&[
                "route",
                "replace",
                &format!("{}/32", topo.vip()),
                "dev",
                "eth0",
                "src",
                &source,
            ])
            .expect("route");
        let out = client
            .exec(&[
                &testkit,
                "client",
                "--target",
                &sticky,
                "--count",
                "8",
                "--concurrency",
                "2",
            ])
            .expect("client");
        let r = lb_tests::try_parse_client_report(&out).expect("a client report");
        assert_eq!((r.attempted, r.ok), (8, 8), "{source}: {r:?}");
        assert_eq!(
            r.by_backend.len(),
            1,
            "{source}'s connections went to several backends: {r:?}"
        );
        per_client.insert(source, r.by_backend.keys().next().cloned().unwrap());
    }
    eprintln!("  backend per client: {per_client:?}");
    let used: std::collections::BTreeSet<_> = per_client.values().collect();
    assert!(
        used.len() >= 2,
        "16 clients all on one backend: {per_client:?}"
    );

    // The 5-tuple VIP spreads one client's connections.
    let r = topo.client(&["--count", "30", "--concurrency", "2"]);
    assert_all_ok(&topo, &r, 30);
    assert!(r.by_backend.len() >= 2, "{r:?}");
}
