//! End-to-end tests of the control plane: health checks (TCP, HTTP,
//! unreachable), run-time changes with `lbctl` under traffic, every `lbctl`
//! command and its errors, reloads (valid, invalid, needing a restart),
//! hitless restarts after SIGKILL and SIGQUIT, the metrics endpoint, and what
//! an empty VIP does with new connections.
//!
//! Like `e2e.rs`, these run the real `lbd`, `lbctl` and `lb-testkit` in the
//! namespaces of `lb_tests::topology`. They need root and the binaries and XDP
//! object built by `cargo xtask build` (through `$LB_BIN_DIR` and
//! `$LB_EBPF_OBJECT`); a missing binary fails the test, it never skips.

use std::{
    collections::BTreeMap,
    fs,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    harness::{
        assert_all_ok, assert_cleaned_up, assert_data_plane_removed, finish_transfer, Timing,
    },
    topology::{Topology, BACKENDS, BACKEND_PORT, HEALTH_INTERVAL_MS, VIP_NAME, VIP_PORT},
    try_parse_client_report, wait_until, Child, ClientReport,
};
use lb_user::api::{DaemonStatus, ReasonCount, Stats, VipStatus};

/// The health check of the topology's main VIP: `fall` (2) failures at
/// [`HEALTH_INTERVAL_MS`] take a backend down, one success brings it up.
/// A state change is expected well within this (several × fall × interval,
/// with room for a busy machine).
const TRANSITION_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics endpoint inside the load balancer namespace (the default
/// `metrics.listen`).
const METRICS_URL: &str = "http://127.0.0.1:9650/metrics";

// ---------------------------------------------------------------------------
// Helpers

/// A VIP from a status list, by name.
fn vip<'a>(vips: &'a [VipStatus], name: &str) -> &'a VipStatus {
    vips.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VIP {name} in {vips:?}"))
}

/// Backend `i`'s state (`up`, `down`, `drained`) in VIP `name`, from
/// `lbctl --json backends` (None if it is not a backend of the VIP).
fn state_in(topo: &Topology, vips: &[VipStatus], name: &str, i: usize) -> Option<String> {
    vip(vips, name)
        .backends
        .iter()
        .find(|b| b.address == topo.backend_addr(i) && b.port == BACKEND_PORT)
        .map(|b| b.state.to_string())
}

/// Polls `lbctl --json backends` until backend `i` of VIP `name` is in
/// `state`; returns how long that took. Panics after `timeout`, showing the
/// last answer.
fn wait_state(topo: &Topology, name: &str, i: usize, state: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    let result = wait_until(timeout, &format!("b{} to be {state}", i + 1), || {
        let vips = topo.lbctl_backends();
        last = format!("{vips:?}");
        state_in(topo, &vips, name, i).as_deref() == Some(state)
    });
    if let Err(e) = result {
        panic!("{e:#}; last lbctl --json backends: {last}");
    }
    let took = start.elapsed();
    eprintln!("  b{} is {state} after {} ms", i + 1, took.as_millis());
    took
}

/// Connections of `r` answered by backend `i`.
fn answered_by(topo: &Topology, r: &ClientReport, i: usize) -> u64 {
    r.by_backend
        .get(&topo.backend_name(i))
        .copied()
        .unwrap_or(0)
}

/// `lb-testkit client --target TARGET args...` in the client namespace.
fn client_at(topo: &Topology, target: &str, args: &[&str]) -> ClientReport {
    let testkit = topo.binaries().testkit.display().to_string();
    let mut full = vec![
        "netns",
        "exec",
        topo.client_ns().name(),
        testkit.as_str(),
        "client",
        "--target",
        target,
    ];
    full.extend_from_slice(args);
    let out = lb_tests::run("ip", &full).unwrap_or_else(|e| panic!("{e:#}"));
    try_parse_client_report(&out).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts `lb-testkit client` against the VIP in the background.
fn spawn_client(topo: &Topology, args: &[&str]) -> Child {
    let target = topo.vip_target();
    let mut full = vec!["client", "--target", target.as_str()];
    full.extend_from_slice(args);
    topo.spawn_testkit_in_client(&full)
        .expect("start a background client")
}

/// Waits for a background client and returns its report.
fn finish_client(mut child: Child, timeout: Duration) -> ClientReport {
    let status = child
        .wait_timeout(timeout)
        .expect("wait for the client")
        .unwrap_or_else(|| {
            panic!(
                "client still running after {timeout:?}: {}",
                child.output_so_far()
            )
        });
    assert!(
        status.success(),
        "client exited with {status}: {}",
        child.output_so_far()
    );
    try_parse_client_report(&child.stdout_so_far()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts a paced `lb-testkit transfer` of `bytes` to the VIP.
fn spawn_transfer(topo: &Topology, bytes: u64, pace_ms: u64, seed: u64) -> Child {
    let target = topo.vip_target();
    topo.spawn_testkit_in_client(&[
        "transfer",
        "--target",
        &target,
        "--bytes",
        &bytes.to_string(),
        "--chunk",
        "65536",
        "--pace-ms",
        &pace_ms.to_string(),
        "--seed",
        &seed.to_string(),
    ])
    .expect("start a transfer")
}

/// A per-backend counter of the main VIP (indexed like the topology's
/// backends; 0 for a backend the VIP does not have).
fn backend_counter(
    topo: &Topology,
    f: impl Fn(&lb_user::api::BackendStatus) -> u64,
) -> [u64; BACKENDS] {
    let vips = topo.backend_status().expect("backend status");
    let mut out = [0; BACKENDS];
    for b in &vip(&vips, VIP_NAME).backends {
        let i = topo
            .backend_index(b.address)
            .unwrap_or_else(|| panic!("unknown backend {b:?}"));
        out[i] = f(b);
    }
    out
}

/// The backend (index) carrying a long transfer: the one whose byte counter
/// grows most over half a second.
fn transfer_carrier(topo: &Topology) -> usize {
    let a = backend_counter(topo, |b| b.bytes);
    thread::sleep(Duration::from_millis(500));
    let b = backend_counter(topo, |b| b.bytes);
    let growth: Vec<u64> = (0..BACKENDS).map(|i| b[i] - a[i]).collect();
    let carrier = (0..BACKENDS).max_by_key(|&i| growth[i]).expect("backends");
    eprintln!(
        "  byte growth per backend over 0.5 s: {growth:?}; carrier b{}",
        carrier + 1
    );
    assert!(
        growth[carrier] > 500_000,
        "the transfer does not seem to be flowing: {growth:?}"
    );
    carrier
}

/// Runs `lbctl --json ARGS`, asserts it succeeded, and returns `result`.
fn lbctl_json(topo: &Topology, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = topo.lbctl(&full);
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("lbctl {} is not JSON ({e}): {out}", full.join(" ")));
    assert_eq!(v["ok"], true, "lbctl {}: {v}", full.join(" "));
    assert_eq!(v["version"], 1, "{v}");
    v["result"].clone()
}

/// Runs lbctl expecting a failure; returns (exit code, stdout, stderr).
fn lbctl_fails(topo: &Topology, args: &[&str]) -> (i32, String, String) {
    let out: Output = topo.lbctl_output(args).expect("run lbctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "lbctl {} succeeded: {stdout}",
        args.join(" ")
    );
    let code = out.status.code().expect("lbctl exited, not killed");
    (code, stdout, stderr)
}

/// Asserts that `lbctl ARGS` fails with an API error `code` (exit 1) in both
/// forms: the table form on stderr, `--json` as an error envelope. Returns
/// the message.
fn assert_api_error(topo: &Topology, args: &[&str], code: &str, mentions: &str) -> String {
    let (status, stdout, stderr) = lbctl_fails(topo, args);
    eprintln!(
        "  lbctl {}: exit {status}: {}",
        args.join(" "),
        stderr.trim()
    );
    assert_eq!(status, 1, "lbctl {}: {stdout}{stderr}", args.join(" "));
    assert!(
        stderr.contains(&format!("({code})")) && stderr.contains(mentions),
        "lbctl {}: expected a {code} error mentioning {mentions:?}, got: {stderr}",
        args.join(" ")
    );
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (status, stdout, stderr) = lbctl_fails(topo, &full);
    assert_eq!(status, 1, "lbctl {}: {stdout}{stderr}", full.join(" "));
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("lbctl {} is not JSON ({e}): {stdout}", full.join(" ")));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    assert!(message.contains(mentions), "{v}");
    message
}

/// The daemon's status, from `lbctl --json status`.
fn status(topo: &Topology) -> DaemonStatus {
    serde_json::from_value(lbctl_json(topo, &["status"])).expect("a status")
}

/// The packets counted under `reason`.
fn reason(stats: &Stats, reason: &str) -> u64 {
    stats
        .reasons
        .iter()
        .find(|r: &&ReasonCount| r.reason == reason)
        .map(|r| r.packets)
        .unwrap_or_else(|| panic!("no reason {reason} in {stats:?}"))
}

/// Scrapes the metrics endpoint from inside the load balancer namespace.
fn scrape(topo: &Topology, url: &str) -> Result<String, String> {
    let testkit = topo.binaries().testkit.display().to_string();
    topo.lb_ns()
        .exec(&[&testkit, "fetch", "--url", url])
        .map_err(|e| format!("{e:#}"))
}

/// The value of the series `name{labels}` (labels given as a subset) in a
/// Prometheus text scrape.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<(&str, &str)> = label_text
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        labels
            .iter()
            .all(|want| have.contains(want))
            .then(|| value.parse().ok())?
    })
}

/// Sysctls lbd changes in the load balancer namespace, for before/after
/// comparisons.
fn lb_sysctls(topo: &Topology) -> Vec<String> {
    let mut v = vec![format!(
        "ip_local_reserved_ports={}",
        topo.lb_reserved_ports().expect("reserved ports")
    )];
    for ifname in ["eth0", "eth1"] {
        for key in ["forwarding", "accept_local"] {
            let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
            let value = topo.lb_ns().exec(&["cat", &path]).expect("sysctl");
            v.push(format!("{ifname}/{key}={}", value.trim()));
        }
    }
    v
}

/// Names in lbd's pin directory (empty if it does not exist).
fn pinned_config_map(topo: &Topology) -> aya::maps::Array<aya::maps::MapData, lb_ebpf::Config> {
    let path = topo.pin_path().join(lb_ebpf::map::CONFIG);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("LB_CONFIG is an array")
}

fn pinned_config(topo: &Topology) -> lb_ebpf::Config {
    pinned_config_map(topo)
        .get(&0, 0)
        .expect("reading LB_CONFIG")
}

fn set_pinned_config(topo: &Topology, config: lb_ebpf::Config) {
    pinned_config_map(topo)
        .set(0, config, 0)
        .expect("writing LB_CONFIG");
}

fn pins(topo: &Topology) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(topo.pin_path())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The health table of a VIP for [`config`]: the topology's fast TCP check.
fn tcp_health() -> String {
    format!(
        "kind = \"tcp\"\ninterval_ms = {HEALTH_INTERVAL_MS}\ntimeout_ms = 100\nrise = 1\nfall = 2"
    )
}

/// One `[[vip]]` of a [`config`].
struct VipConf {
    name: &'static str,
    port: u16,
    /// Lines of its `[vip.health]` table.
    health: String,
    /// `(backend index, weight)`; every backend on [`BACKEND_PORT`].
    backends: Vec<(usize, u32)>,
}

/// An lbd configuration for the topology (its pin path, NAT source and
/// socket, like [`Topology::lbd_config`]) with the given VIPs, all on the
/// topology's VIP address, and `dataplane_extra` lines in `[dataplane]`.
fn config(topo: &Topology, vips: &[VipConf], dataplane_extra: &str) -> String {
    let mut s = format!(
        "[dataplane]\n\
         interfaces = [\"eth0\", \"eth1\"]\n\
         xdp_mode = \"native\"\n\
         max_vips = 4\n\
         pin_path = \"{}\"\n\
         {dataplane_extra}\n\n\
         [nat]\n\
         source = \"{}\"\n\
         ports = \"20000-59999\"\n\n\
         [control]\n\
         socket = \"{}\"\n",
        topo.pin_path().display(),
        topo.nat_source(),
        topo.socket_path().display(),
    );
    for v in vips {
        s.push_str(&format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\n\n  [vip.health]\n",
            v.name,
            topo.vip(),
            v.port
        ));
        for line in v.health.lines() {
            s.push_str(&format!("  {line}\n"));
        }
        for &(i, w) in &v.backends {
            s.push_str(&format!(
                "\n  [[vip.backend]]\n  address = \"{}\"\n  port = {BACKEND_PORT}\n  weight = {w}\n",
                topo.backend_addr(i)
            ));
        }
    }
    s
}

/// Writes the configuration file lbd was started with.
fn rewrite_config(topo: &Topology, text: &str) {
    fs::write(topo.config_path(), text).expect("write the configuration");
}

/// Kills lbd with `sig` and waits for it to exit; returns the exit status
/// (and prints its output).
fn signal_lbd(topo: &mut Topology, sig: libc::c_int) -> std::process::ExitStatus {
    let mut lbd = topo.take_lbd().expect("lbd is running");
    lbd.signal(sig);
    let status = lbd
        .wait_timeout(Duration::from_secs(20))
        .expect("wait for lbd")
        .unwrap_or_else(|| panic!("lbd did not exit on signal {sig}: {}", lbd.output_so_far()));
    eprintln!("  lbd exited on signal {sig}: {status}");
    eprintln!("{}", lbd.output_so_far());
    status
}

// ---------------------------------------------------------------------------
// 1. TCP health checks

#[test]
fn health_tcp_down_and_up() {
    let test = "health_tcp_down_and_up";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);
        assert!(answered_by(&topo, &r, 1) > 0, "b2 got nothing: {r:?}");

        // Stop b2's server: its checks are refused, it goes down after `fall`.
        let status = topo.stop_backend_server(1).expect("stop b2's server");
        eprintln!("  b2's server stopped: {status}");
        wait_state(&topo, VIP_NAME, 1, "down", TRANSITION_TIMEOUT);
        let vips = topo.lbctl_backends();
        let web = vip(&vips, VIP_NAME);
        assert_eq!(web.healthy_backends, 2, "{web:?}");
        for i in [0, 2] {
            assert_eq!(state_in(&topo, &vips, VIP_NAME, i).as_deref(), Some("up"));
        }
        let log = topo.lbd_output();
        assert!(
            log.contains("backend health changed") && log.contains("connect refused"),
            "lbd did not log the change with its reason:\n{log}"
        );

        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client while b2 is down: {r:?}");
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, 1), 0, "b2 is down: {r:?}");
        assert!(answered_by(&topo, &r, 0) > 0 && answered_by(&topo, &r, 2) > 0);

        // Start it again: up after `rise` (1) successful check.
        topo.start_backend_server(1).expect("restart b2's server");
        wait_state(&topo, VIP_NAME, 1, "up", TRANSITION_TIMEOUT);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client after b2 came back: {r:?}");
        assert_all_ok(&topo, &r, 300);
        assert!(
            answered_by(&topo, &r, 1) > 0,
            "b2 is up again but got no connections: {r:?}"
        );

        // Health and draining are independent: a down backend that is
        // drained shows as down; once its checks pass it is drained (no new
        // connections) until enabled.
        topo.stop_backend_server(1).expect("stop b2's server");
        wait_state(&topo, VIP_NAME, 1, "down", TRANSITION_TIMEOUT);
        let b2 = topo.backend_target(1);
        let out = topo.lbctl(&["backends", "drain", VIP_NAME, &b2]);
        assert!(out.trim_end().ends_with("down"), "{out}");
        topo.start_backend_server(1).expect("restart b2's server");
        wait_state(&topo, VIP_NAME, 1, "drained", TRANSITION_TIMEOUT);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client while b2 is healthy but drained: {r:?}");
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, 1), 0, "b2 is drained: {r:?}");
        let out = topo.lbctl(&["backends", "enable", VIP_NAME, &b2]);
        assert!(out.trim_end().ends_with("up"), "{out}");
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);
        assert!(answered_by(&topo, &r, 1) > 0, "b2 is enabled: {r:?}");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 2. HTTP health checks

#[test]
fn health_http_status() {
    let test = "health_http_status";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        // An HTTP health endpoint on port 8081 of every backend, answering
        // with what its status file says.
        let dir = topo.dir().to_path_buf();
        let status_file = |i: usize| dir.join(format!("status-b{}", i + 1));
        let set_status = |i: usize, line: &str| {
            fs::write(status_file(i), format!("{line}\n")).expect("write a status file");
        };
        let testkit = topo.binaries().testkit.display().to_string();
        let mut health_servers = Vec::new();
        for i in 0..BACKENDS {
            set_status(i, "200 ok");
            let file = status_file(i).display().to_string();
            let name = topo.backend_name(i);
            let mut child = topo
                .backend_ns(i)
                .spawn_net(
                    &[
                        &testkit,
                        "serve",
                        "--http-listen",
                        "0.0.0.0:8081",
                        "--status-file",
                        &file,
                        "--name",
                        &name,
                    ],
                    true,
                )
                .expect("start an HTTP health endpoint");
            child
                .wait_for_stdout("ready", Duration::from_secs(20))
                .expect("HTTP health endpoint ready");
            health_servers.push(child);
        }
        let health = format!(
            "kind = \"http\"\nport = 8081\npath = \"/healthz\"\nexpect_status = [200]\n\
             expect_body = \"ok\"\ninterval_ms = {HEALTH_INTERVAL_MS}\ntimeout_ms = 100\n\
             rise = 1\nfall = 2"
        );
        let text = config(
            &topo,
            &[VipConf {
                name: VIP_NAME,
                port: VIP_PORT,
                health,
                backends: vec![(0, 1), (1, 1), (2, 1)],
            }],
            "",
        );
        topo.try_start_lbd_config(&text)
            .unwrap_or_else(|e| panic!("{e:#}"));
        topo.wait_backends_up(Duration::from_secs(30))
            .expect("every HTTP check passes");

        // A 500 takes b2 down.
        set_status(1, "500 broken");
        wait_state(&topo, VIP_NAME, 1, "down", TRANSITION_TIMEOUT);
        let log = topo.lbd_output();
        assert!(
            log.contains("status 500 (expected 200)"),
            "no 'status 500 (expected 200)' detail in lbd's log:\n{log}"
        );
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client while b2 answers 500: {r:?}");
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, 1), 0, "{r:?}");

        // Back to 200: up again.
        set_status(1, "200 ok");
        wait_state(&topo, VIP_NAME, 1, "up", TRANSITION_TIMEOUT);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);
        assert!(answered_by(&topo, &r, 1) > 0, "{r:?}");

        // A 200 whose body lacks the expected string fails too.
        set_status(2, "200 degraded");
        wait_state(&topo, VIP_NAME, 2, "down", TRANSITION_TIMEOUT);
        let log = topo.lbd_output();
        assert!(
            log.contains("body does not contain"),
            "no expect_body detail in lbd's log:\n{log}"
        );
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, 2), 0, "{r:?}");
        set_status(2, "200 ok");
        wait_state(&topo, VIP_NAME, 2, "up", TRANSITION_TIMEOUT);
        let vips = topo.lbctl_backends();
        assert_eq!(vip(&vips, VIP_NAME).healthy_backends, 3, "{vips:?}");
        drop(health_servers);
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 3. Checks that time out

#[test]
fn health_unreachable_times_out() {
    let test = "health_unreachable_times_out";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        // The source address of lbd's checks toward b1 is the one the load
        // balancer's kernel picks for the route; b1 gets a blackhole route to
        // it, so its SYN-ACKs to the checker vanish (no RST, no ICMP): the
        // checks can only time out. Client traffic reaches b1 from the NAT
        // source, which is another address.
        let route = topo
            .lb_ns()
            .ip(&["route", "get", &topo.backend_addr(0).to_string()])
            .expect("ip route get");
        let src = route
            .split_whitespace()
            .skip_while(|w| *w != "src")
            .nth(1)
            .unwrap_or_else(|| panic!("no src in {route:?}"))
            .to_owned();
        eprintln!("  checks leave from {src}; blackholing it in b1");
        let blackhole = format!("{src}/32");
        topo.backend_ns(0)
            .ip(&["route", "add", "blackhole", &blackhole])
            .expect("add the blackhole route");

        wait_state(&topo, VIP_NAME, 0, "down", TRANSITION_TIMEOUT);
        let log = topo.lbd_output();
        let line = log
            .lines()
            .find(|l| {
                l.contains("backend health changed")
                    && l.contains(&topo.backend_target(0))
                    && l.contains("down")
            })
            .unwrap_or_else(|| panic!("no 'down' change logged:\n{log}"));
        eprintln!("  {line}");
        assert!(
            line.contains("timeout after 100 ms"),
            "the down change does not say the checks timed out: {line}"
        );
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client while b1 is unreachable: {r:?}");
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, 0), 0, "{r:?}");

        topo.backend_ns(0)
            .ip(&["route", "del", "blackhole", &blackhole])
            .expect("remove the blackhole route");
        wait_state(&topo, VIP_NAME, 0, "up", TRANSITION_TIMEOUT);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);
        assert!(answered_by(&topo, &r, 0) > 0, "{r:?}");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 4. Run-time changes under traffic

#[test]
fn churn_never_breaks_healthy_connections() {
    let test = "churn_never_breaks_healthy_connections";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let b = |i: usize| topo.backend_target(i);

        // A steady stream of new connections while the backend set changes.
        let stream = spawn_client(
            &topo,
            &[
                "--rate",
                "300",
                "--duration-secs",
                "8",
                "--count",
                "2400",
                "--concurrency",
                "8",
                "--timeout-ms",
                "3000",
            ],
        );
        let step = Duration::from_millis(700);
        thread::sleep(step);
        let ops: [(&[&str], &str); 7] = [
            (&["backends", "drain", VIP_NAME, &b(0)], "drained"),
            (&["backends", "enable", VIP_NAME, &b(0)], "up"),
            // A backend is taken out gracefully: drained first, so that the
            // connections it has end before it is removed (removing moves
            // its remaining flows to other backends, which reset them).
            (&["backends", "drain", VIP_NAME, &b(2)], "drained"),
            (&["backends", "remove", VIP_NAME, &b(2)], "drained"),
            (&["backends", "add", VIP_NAME, &b(2)], "down"),
            (&["backends", "weight", VIP_NAME, &b(1), "3"], "up"),
            (&["backends", "weight", VIP_NAME, &b(1), "1"], "up"),
        ];
        for (args, state) in ops {
            let out = topo.lbctl(args);
            eprintln!("  lbctl {}: {}", args.join(" "), out.trim());
            assert!(out.starts_with("ok: "), "{out}");
            assert!(out.trim_end().ends_with(state), "{out}");
            if args[1] == "add" {
                // A new backend is down until its first check passes.
                wait_state(&topo, VIP_NAME, 2, "up", TRANSITION_TIMEOUT);
            }
            thread::sleep(step);
        }
        let r = finish_client(stream, Duration::from_secs(60));
        eprintln!("  stream during the churn: {r:?}");
        // The client paces itself; on a busy machine it may fall behind the
        // rate, but it must have run through the whole churn.
        assert!(
            r.attempted >= 600 && r.elapsed_ms >= 7000,
            "the stream was too thin: {r:?}"
        );
        assert_eq!(r.failed, 0, "connections failed during the churn: {r:?}");
        assert_eq!(r.slow_connects, 0, "{r:?}");
        let vips = topo.lbctl_backends();
        let web = vip(&vips, VIP_NAME);
        assert_eq!(web.backends.len(), BACKENDS, "{web:?}");
        assert!(
            web.backends
                .iter()
                .all(|b| b.state == "up" && b.weight == 1),
            "{web:?}"
        );

        // A long transfer on a backend that is then drained runs to its end
        // there, while new connections avoid that backend.
        const BYTES: u64 = 30_000_000;
        let transfer = spawn_transfer(&topo, BYTES, 12, 7);
        thread::sleep(Duration::from_millis(1000));
        let carrier = transfer_carrier(&topo);
        let out = topo.lbctl(&["backends", "drain", VIP_NAME, &b(carrier)]);
        eprintln!("  drained the carrier: {}", out.trim());
        assert_eq!(
            state_in(&topo, &topo.lbctl_backends(), VIP_NAME, carrier).as_deref(),
            Some("drained")
        );
        let bytes_at_drain = backend_counter(&topo, |b| b.bytes)[carrier];
        let flows_at_drain = backend_counter(&topo, |b| b.flows)[carrier];
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        eprintln!("  client while b{} is drained: {r:?}", carrier + 1);
        assert_all_ok(&topo, &r, 300);
        assert_eq!(answered_by(&topo, &r, carrier), 0, "{r:?}");
        assert_eq!(
            backend_counter(&topo, |b| b.flows)[carrier],
            flows_at_drain,
            "the drained backend got new flows"
        );
        let t = finish_transfer(transfer, BYTES, Duration::from_secs(120));
        let bytes_after = backend_counter(&topo, |b| b.bytes)[carrier];
        eprintln!(
            "  carrier bytes: {bytes_at_drain} at the drain, {bytes_after} at the end ({t:?})"
        );
        assert!(
            bytes_after > bytes_at_drain + 1_000_000,
            "the transfer did not keep flowing through the drained backend"
        );
        let out = topo.lbctl(&["backends", "enable", VIP_NAME, &b(carrier)]);
        assert!(out.trim_end().ends_with("up"), "{out}");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 5. lbctl

#[test]
fn lbctl_every_command_table_and_json() {
    let test = "lbctl_every_command_table_and_json";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let lbd_pid = topo.lbd().pid();
        let b = |i: usize| topo.backend_target(i);
        let vip_target = topo.vip_target();
        let r = topo.client(&["--count", "90", "--concurrency", "4"]);
        assert_all_ok(&topo, &r, 90);

        // backends (list), both spellings, both forms.
        for args in [&["backends"][..], &["backends", "list"]] {
            let table = topo.lbctl(args);
            eprintln!("{table}");
            let header = format!("VIP {VIP_NAME} {vip_target}/tcp  healthy 3/3");
            assert!(table.contains(&header), "no {header:?} in\n{table}");
            assert!(
                table.contains("BACKEND") && table.contains("FLOWS"),
                "{table}"
            );
            for i in 0..BACKENDS {
                let row: Vec<&str> = table
                    .lines()
                    .find(|l| l.trim_start().starts_with(&b(i)))
                    .unwrap_or_else(|| panic!("no row for {}:\n{table}", b(i)))
                    .split_whitespace()
                    .collect();
                assert_eq!(row.len(), 6, "{row:?}");
                assert_eq!((row[1], row[2]), ("1", "up"), "{row:?}");
            }
            let vips: Vec<VipStatus> =
                serde_json::from_value(lbctl_json(&topo, args)).expect("a list of VIPs");
            let web = vip(&vips, VIP_NAME);
            assert_eq!(
                (
                    web.address,
                    web.port,
                    web.protocol.as_str(),
                    web.on_empty.as_str()
                ),
                (topo.vip(), VIP_PORT, "tcp", "reset"),
                "{web:?}"
            );
            assert_eq!(web.healthy_backends, 3);
            assert_eq!(web.flows, 90, "{web:?}");
            assert_eq!(web.backends.iter().map(|b| b.flows).sum::<u64>(), 90);
            assert!(web.packets > 0 && web.bytes > 0, "{web:?}");
        }

        // vips
        let table = topo.lbctl(&["vips"]);
        eprintln!("{table}");
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["VIP", "ADDRESS", "EMPTY", "HEALTHY", "PACKETS", "BYTES", "FLOWS", "RING"]
        );
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row[..4],
            [VIP_NAME, vip_target.as_str(), "reset", "3/3"],
            "{table}"
        );
        assert_eq!(row[6], "90", "{table}");
        let vips: Vec<VipStatus> =
            serde_json::from_value(lbctl_json(&topo, &["vips"])).expect("a list of VIPs");
        assert_eq!(vips.len(), 1);
        assert_eq!(vip(&vips, VIP_NAME).backends.len(), BACKENDS);

        // status
        let table = topo.lbctl(&["status"]);
        eprintln!("{table}");
        let config = topo.config_path().display().to_string();
        for want in [
            format!("(pid {lbd_pid})"),
            format!("config      {config}"),
            "interfaces  eth0, eth1 (native XDP)".to_owned(),
            "data plane  loaded by this lbd".to_owned(),
            "VIPs 1, backends 3 (3 taking new flows)".to_owned(),
            "reloads 0 ok, 0 refused".to_owned(),
        ] {
            assert!(table.contains(&want), "no {want:?} in\n{table}");
        }
        let s = status(&topo);
        assert_eq!(s.pid, lbd_pid, "{s:?}");
        assert_eq!(s.config, config);
        assert_eq!(s.interfaces, ["eth0", "eth1"]);
        assert_eq!(s.xdp_mode, "native");
        assert!(!s.adopted);
        assert_eq!((s.vips, s.backends, s.backends_up), (1, 3, 3), "{s:?}");
        assert_eq!((s.reloads, s.reload_failures), (0, 0));
        assert_eq!(s.last_reload_error, None);
        assert!(!s.version.is_empty());

        // stats
        let table = topo.lbctl(&["stats"]);
        eprintln!("{table}");
        assert!(table.starts_with("flows "), "{table}");
        assert!(table.contains("sized for 262144 connections"), "{table}");
        assert!(table.contains("REASON"), "{table}");
        let stats: Stats = serde_json::from_value(lbctl_json(&topo, &["stats"])).expect("stats");
        assert_eq!(stats.max_flows, 262_144);
        // Counted from the kernel's tables (after the state lock is released).
        assert!(
            stats.flows > 0 && stats.nat_entries >= stats.flows,
            "{} flows, {} NAT entries",
            stats.flows,
            stats.nat_entries
        );
        assert_eq!(stats.reasons.len(), lb_ebpf::Reason::ALL.len());
        for r in lb_ebpf::Reason::ALL {
            let label = r.label();
            assert!(
                table
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(label)),
                "no row {label} in\n{table}"
            );
        }
        assert!(reason(&stats, "redirect_forward") > 0, "{stats:?}");
        assert!(reason(&stats, "redirect_reply") > 0, "{stats:?}");

        // drain, enable, weight, remove, add: table form ...
        let ok_line = |i: usize, weight: u32, state: &str| {
            format!("ok: {VIP_NAME} {} weight {weight} {state}", b(i))
        };
        let out = topo.lbctl(&["backends", "drain", VIP_NAME, &b(0)]);
        assert_eq!(out.trim(), ok_line(0, 1, "drained"));
        let vips = topo.lbctl_backends();
        assert_eq!(
            state_in(&topo, &vips, VIP_NAME, 0).as_deref(),
            Some("drained")
        );
        assert_eq!(vip(&vips, VIP_NAME).healthy_backends, 2);
        assert!(topo
            .lbctl(&["status"])
            .contains("VIPs 1, backends 3 (2 taking new flows)"));
        let out = topo.lbctl(&["backends", "enable", VIP_NAME, &b(0)]);
        assert_eq!(out.trim(), ok_line(0, 1, "up"));
        let out = topo.lbctl(&["backends", "weight", VIP_NAME, &b(0), "5"]);
        assert_eq!(out.trim(), ok_line(0, 5, "up"));
        let out = topo.lbctl(&["backends", "remove", VIP_NAME, &b(2)]);
        assert_eq!(out.trim(), ok_line(2, 1, "up"));
        let vips = topo.lbctl_backends();
        assert_eq!(vip(&vips, VIP_NAME).backends.len(), 2, "{vips:?}");
        assert_eq!(state_in(&topo, &vips, VIP_NAME, 2), None);
        let out = topo.lbctl(&["backends", "add", VIP_NAME, &b(2), "--weight", "2"]);
        assert_eq!(
            out.trim(),
            ok_line(2, 2, "down"),
            "a new backend starts down"
        );
        wait_state(&topo, VIP_NAME, 2, "up", TRANSITION_TIMEOUT);

        // ... and JSON.
        let check = |v: serde_json::Value, i: usize, weight: u32, state: &str| {
            assert_eq!(v["vip"], VIP_NAME, "{v}");
            assert_eq!(v["address"], topo.backend_addr(i).to_string(), "{v}");
            assert_eq!(v["port"], BACKEND_PORT, "{v}");
            assert_eq!(v["weight"], weight, "{v}");
            assert_eq!(v["state"], state, "{v}");
        };
        check(
            lbctl_json(&topo, &["backends", "drain", VIP_NAME, &b(1)]),
            1,
            1,
            "drained",
        );
        check(
            lbctl_json(&topo, &["backends", "enable", VIP_NAME, &b(1)]),
            1,
            1,
            "up",
        );
        check(
            lbctl_json(&topo, &["backends", "weight", VIP_NAME, &b(1), "4"]),
            1,
            4,
            "up",
        );
        check(
            lbctl_json(&topo, &["backends", "remove", VIP_NAME, &b(1)]),
            1,
            4,
            "up",
        );
        check(
            lbctl_json(
                &topo,
                &["backends", "add", VIP_NAME, &b(1), "--weight", "3"],
            ),
            1,
            3,
            "down",
        );
        wait_state(&topo, VIP_NAME, 1, "up", TRANSITION_TIMEOUT);
        let vips = topo.lbctl_backends();
        let weights: BTreeMap<String, u32> = vip(&vips, VIP_NAME)
            .backends
            .iter()
            .map(|b| (format!("{}:{}", b.address, b.port), b.weight))
            .collect();
        assert_eq!(
            weights,
            BTreeMap::from([(b(0), 5), (b(1), 3), (b(2), 2)]),
            "{vips:?}"
        );

        // Errors: unknown VIP, unknown backend, invalid weight, duplicates.
        // None of them changes anything.
        let before = topo.lbctl_backends();
        assert_api_error(
            &topo,
            &["backends", "drain", "nosuch", &b(0)],
            "not_found",
            "nosuch",
        );
        assert_api_error(
            &topo,
            &["backends", "add", "nosuch", "10.9.9.9:80"],
            "not_found",
            "nosuch",
        );
        assert_api_error(
            &topo,
            &["backends", "remove", VIP_NAME, "10.9.9.9:1"],
            "not_found",
            "10.9.9.9:1",
        );
        assert_api_error(
            &topo,
            &["backends", "weight", VIP_NAME, "10.9.9.9:1", "2"],
            "not_found",
            "10.9.9.9:1",
        );
        assert_api_error(
            &topo,
            &["backends", "enable", VIP_NAME, "10.9.9.9:1"],
            "not_found",
            "10.9.9.9:1",
        );
        assert_api_error(
            &topo,
            &["backends", "weight", VIP_NAME, &b(0), "0"],
            "invalid",
            "weight 0",
        );
        assert_api_error(
            &topo,
            &["backends", "weight", VIP_NAME, &b(0), "70000"],
            "invalid",
            "weight 70000",
        );
        assert_api_error(
            &topo,
            &["backends", "add", VIP_NAME, "10.9.9.9:80", "--weight", "0"],
            "invalid",
            "weight 0",
        );
        assert_api_error(
            &topo,
            &["backends", "add", VIP_NAME, "0.0.0.0:80"],
            "invalid",
            "0.0.0.0",
        );
        assert_api_error(
            &topo,
            &["backends", "add", VIP_NAME, &b(0)],
            "conflict",
            &b(0),
        );
        // Addresses lbctl cannot parse never reach lbd: a usage error (2).
        for bad in ["10.0.0.300:8080", "10.9.9.9", "nonsense", "10.9.9.9:99999"] {
            for json in [false, true] {
                let mut args = vec!["backends", "add", VIP_NAME, bad];
                if json {
                    args.insert(0, "--json");
                }
                let (code, _, stderr) = lbctl_fails(&topo, &args);
                eprintln!(
                    "  lbctl {}: exit {code}: {}",
                    args.join(" "),
                    stderr.lines().next().unwrap_or("")
                );
                assert_eq!(code, 2, "lbctl {}: {stderr}", args.join(" "));
                assert!(stderr.contains(bad), "{stderr}");
            }
        }
        let after = topo.lbctl_backends();
        let shape = |vips: &[VipStatus]| -> Vec<(String, u32, String)> {
            vip(vips, VIP_NAME)
                .backends
                .iter()
                .map(|b| {
                    (
                        format!("{}:{}", b.address, b.port),
                        b.weight,
                        b.state.to_string(),
                    )
                })
                .collect()
        };
        assert_eq!(
            shape(&before),
            shape(&after),
            "a refused command changed something"
        );

        // reload: back to the file (weights 1, b2 and b3 re-added at run time
        // with other weights count as changed).
        let out = topo.lbctl(&["reload"]);
        eprintln!("  lbctl reload: {}", out.trim());
        assert_eq!(out.trim(), "reloaded: VIPs +0 -0, backends +0 -0 ~3");
        let summary = lbctl_json(&topo, &["reload"]);
        assert_eq!(
            summary,
            serde_json::json!({"vips_added": [], "vips_removed": [], "backends_added": 0,
                               "backends_removed": 0, "backends_changed": 0}),
        );
        let vips = topo.lbctl_backends();
        assert!(
            vip(&vips, VIP_NAME)
                .backends
                .iter()
                .all(|b| b.weight == 1 && b.state == "up"),
            "{vips:?}"
        );
        let s = status(&topo);
        assert_eq!((s.reloads, s.reload_failures), (2, 0), "{s:?}");
        assert!(topo.lbctl(&["status"]).contains("reloads 2 ok, 0 refused"));

        // No lbd on the socket: exit 3, saying so.
        let nowhere = topo.dir().join("nobody.sock").display().to_string();
        for args in [&["status"][..], &["--json", "backends"]] {
            let mut full = vec!["--socket", nowhere.as_str()];
            full.extend_from_slice(args);
            let out = std::process::Command::new(&topo.binaries().lbctl)
                .args(&full)
                .output()
                .expect("run lbctl");
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "  lbctl {}: {:?}: {}",
                full.join(" "),
                out.status,
                stderr.trim()
            );
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("is lbd running"), "{stderr}");
            assert!(stderr.contains(&nowhere), "{stderr}");
        }
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 6. Reloads

#[test]
fn reload_valid_and_invalid() {
    let test = "reload_valid_and_invalid";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let web = |backends: Vec<(usize, u32)>| VipConf {
            name: VIP_NAME,
            port: VIP_PORT,
            health: tcp_health(),
            backends,
        };
        let api = || VipConf {
            name: "api",
            port: 81,
            health: tcp_health(),
            backends: vec![(0, 1), (1, 1)],
        };
        let first = config(&topo, &[web(vec![(0, 1), (1, 1)])], "");
        topo.try_start_lbd_config(&first)
            .unwrap_or_else(|e| panic!("{e:#}"));
        topo.wait_backends_up(Duration::from_secs(30))
            .expect("backends up");
        let r = topo.client(&["--count", "200", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 200);
        assert_eq!(answered_by(&topo, &r, 2), 0, "b3 is not configured yet");

        // Add b3, weigh b2 3, add a VIP on port 81: `lbctl reload`.
        let second = config(&topo, &[web(vec![(0, 1), (1, 3), (2, 1)]), api()], "");
        rewrite_config(&topo, &second);
        let out = topo.lbctl(&["reload"]);
        eprintln!("  lbctl reload: {}", out.trim());
        assert_eq!(out.trim(), "reloaded: VIPs +1 -0, backends +1 -0 ~1");
        topo.wait_backends_up(Duration::from_secs(30))
            .expect("the new backends come up");
        let vips = topo.lbctl_backends();
        assert_eq!(
            vips.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            [VIP_NAME, "api"]
        );
        let w = vip(&vips, VIP_NAME);
        let weights: Vec<(usize, u32)> = w
            .backends
            .iter()
            .map(|b| (topo.backend_index(b.address).unwrap(), b.weight))
            .collect();
        assert_eq!(weights, [(0, 1), (1, 3), (2, 1)], "{w:?}");
        let a = vip(&vips, "api");
        assert_eq!((a.port, a.backends.len()), (81, 2), "{a:?}");
        let r = topo.client(&["--count", "600", "--concurrency", "8"]);
        eprintln!("  client to :80 after the reload: {r:?}");
        assert_all_ok(&topo, &r, 600);
        let (n1, n2, n3) = (
            answered_by(&topo, &r, 0),
            answered_by(&topo, &r, 1),
            answered_by(&topo, &r, 2),
        );
        assert!(n3 > 0, "the added backend gets nothing: {r:?}");
        assert!(n2 > n1 && n2 > n3, "weight 3 does not show: {r:?}");
        let api_target = format!("{}:81", topo.vip());
        let r = client_at(
            &topo,
            &api_target,
            &["--count", "200", "--concurrency", "8"],
        );
        eprintln!("  client to :81: {r:?}");
        assert_all_ok(&topo, &r, 200);
        assert_eq!(
            answered_by(&topo, &r, 2),
            0,
            "b3 is not a backend of api: {r:?}"
        );
        assert!(answered_by(&topo, &r, 0) > 0 && answered_by(&topo, &r, 1) > 0);

        // SIGHUP: drop b3 again, b1 weight 2.
        let third = config(&topo, &[web(vec![(0, 2), (1, 1)]), api()], "");
        rewrite_config(&topo, &third);
        topo.lbd().signal(libc::SIGHUP);
        wait_until(Duration::from_secs(10), "the SIGHUP reload", || {
            status(&topo).reloads == 2
        })
        .unwrap_or_else(|e| panic!("{e:#}: {:?}", status(&topo)));
        let vips = topo.lbctl_backends();
        let w = vip(&vips, VIP_NAME);
        let weights: Vec<(usize, u32)> = w
            .backends
            .iter()
            .map(|b| (topo.backend_index(b.address).unwrap(), b.weight))
            .collect();
        assert_eq!(weights, [(0, 2), (1, 1)], "{w:?}");
        assert!(topo.lbd_output().contains("reloaded on SIGHUP"));
        let r = topo.client(&["--count", "200", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 200);
        assert_eq!(answered_by(&topo, &r, 2), 0, "b3 was removed: {r:?}");

        // A run-time change is replaced by the file at the next reload.
        topo.lbctl(&["backends", "drain", VIP_NAME, &topo.backend_target(0)]);
        topo.lbctl(&["reload"]);
        assert_eq!(
            state_in(&topo, &topo.lbctl_backends(), VIP_NAME, 0).as_deref(),
            Some("up"),
            "the reload did not restore the file's state"
        );

        // An invalid file is refused, naming the key, and changes nothing.
        let shape = |vips: &[VipStatus]| -> Vec<(String, u16, String, u32, String)> {
            vips.iter()
                .flat_map(|v| {
                    v.backends.iter().map(|b| {
                        (
                            v.name.clone(),
                            v.port,
                            format!("{}:{}", b.address, b.port),
                            b.weight,
                            b.state.to_string(),
                        )
                    })
                })
                .collect()
        };
        let good = shape(&topo.lbctl_backends());
        let b1 = format!("address = \"{}\"", topo.backend_addr(0));
        assert!(third.contains(&b1));
        let invalid = third.replacen(&b1, "address = \"10.0.0.300\"", 1);
        rewrite_config(&topo, &invalid);
        let (code, _, stderr) = lbctl_fails(&topo, &["reload"]);
        eprintln!(
            "  lbctl reload (bad address): exit {code}: {}",
            stderr.trim()
        );
        assert_eq!(code, 1);
        assert!(
            stderr.contains("vip[0].backend[0].address") && stderr.contains("10.0.0.300"),
            "the refusal does not name the key: {stderr}"
        );
        assert!(stderr.contains("(invalid)"), "{stderr}");
        let s = status(&topo);
        eprintln!("  status: {s:?}");
        assert_eq!((s.reloads, s.reload_failures), (3, 1), "{s:?}");
        let last = s.last_reload_error.clone().expect("a last reload error");
        assert!(last.contains("vip[0].backend[0].address"), "{last}");
        let table = topo.lbctl(&["status"]);
        assert!(table.contains("reloads 3 ok, 1 refused"), "{table}");
        assert!(
            table.contains("last reload refused:") && table.contains("vip[0].backend[0].address"),
            "{table}"
        );
        assert_eq!(
            shape(&topo.lbctl_backends()),
            good,
            "a refused reload changed state"
        );
        let r = topo.client(&["--count", "200", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 200);
        let r = client_at(
            &topo,
            &api_target,
            &["--count", "100", "--concurrency", "4"],
        );
        assert_all_ok(&topo, &r, 100);

        // SIGHUP with the invalid file: refused the same way.
        topo.lbd().signal(libc::SIGHUP);
        wait_until(Duration::from_secs(10), "the refused SIGHUP reload", || {
            status(&topo).reload_failures == 2
        })
        .unwrap_or_else(|e| panic!("{e:#}: {:?}", status(&topo)));
        assert_eq!(shape(&topo.lbctl_backends()), good);

        // A change that needs a restart is refused too.
        let resized = config(
            &topo,
            &[web(vec![(0, 2), (1, 1)]), api()],
            "ring_size = 1009",
        );
        rewrite_config(&topo, &resized);
        let (code, _, stderr) = lbctl_fails(&topo, &["reload"]);
        eprintln!("  lbctl reload (ring_size): exit {code}: {}", stderr.trim());
        assert_eq!(code, 1);
        assert!(
            stderr.contains("dataplane.ring_size") && stderr.contains("restart"),
            "{stderr}"
        );
        let s = status(&topo);
        assert_eq!((s.reloads, s.reload_failures), (3, 3), "{s:?}");
        assert!(s
            .last_reload_error
            .as_deref()
            .is_some_and(|e| e.contains("dataplane.ring_size")));
        assert_eq!(shape(&topo.lbctl_backends()), good);
        let r = topo.client(&["--count", "200", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 200);

        // The good file again: accepted, and the last error is cleared.
        rewrite_config(&topo, &third);
        topo.lbctl(&["reload"]);
        let s = status(&topo);
        assert_eq!((s.reloads, s.reload_failures), (4, 3), "{s:?}");
        assert_eq!(s.last_reload_error, None, "{s:?}");
        assert_eq!(shape(&topo.lbctl_backends()), good);
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 7. Restart after SIGKILL

#[test]
fn sigkill_restart_is_hitless() {
    let test = "sigkill_restart_is_hitless";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let text = fs::read_to_string(topo.config_path()).expect("read the configuration");

        // About 7 s each: 458 chunks of 64 KiB, 15 ms apart.
        const BYTES: u64 = 30_000_000;
        let transfers = [
            spawn_transfer(&topo, BYTES, 15, 1),
            spawn_transfer(&topo, BYTES, 15, 2),
        ];
        let stream = spawn_client(
            &topo,
            &[
                "--rate",
                "200",
                "--duration-secs",
                "7",
                "--count",
                "1400",
                "--concurrency",
                "8",
                "--timeout-ms",
                "3000",
            ],
        );
        thread::sleep(Duration::from_millis(1200));
        let flows_before = backend_counter(&topo, |b| b.flows);
        let bytes_before = backend_counter(&topo, |b| b.bytes);
        eprintln!("  before SIGKILL: flows {flows_before:?}, bytes {bytes_before:?}");

        let status = signal_lbd(&mut topo, libc::SIGKILL);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        for ifname in ["eth0", "eth1"] {
            let link = topo.lb_ns().ip(&["link", "show", ifname]).expect("ip link");
            assert!(
                lb_tests::netns::xdp_attached(&link),
                "XDP gone from {ifname} after SIGKILL: {link}"
            );
        }
        let pinned = pins(&topo);
        eprintln!("  pins after SIGKILL: {pinned:?}");
        for name in [
            "link_eth0",
            "link_eth1",
            lb_ebpf::map::FLOWS,
            lb_ebpf::map::VIPS,
        ] {
            assert!(
                pinned.iter().any(|p| p == name),
                "{name} not pinned: {pinned:?}"
            );
        }
        // Traffic goes on without lbd: the stream and transfers in the
        // background, and new connections made right now.
        let gap = Instant::now();
        let r = topo.client(&["--count", "100", "--concurrency", "4"]);
        eprintln!("  client with no lbd: {r:?}");
        assert_all_ok(&topo, &r, 100);
        thread::sleep(Duration::from_millis(1500).saturating_sub(gap.elapsed()));
        assert!(
            topo.lbctl_output(&["status"]).expect("lbctl").status.code() == Some(3),
            "something answers on the socket of a killed lbd"
        );

        let restarted = Instant::now();
        topo.try_start_lbd_config(&text)
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "  new lbd ready after {} ms",
            restarted.elapsed().as_millis()
        );
        let table = topo.lbctl(&["status"]);
        eprintln!("{table}");
        assert!(
            table.contains("data plane  adopted from an earlier lbd"),
            "{table}"
        );
        assert!(status_adopted(&topo));
        let vips = topo.lbctl_backends();
        assert!(
            vip(&vips, VIP_NAME)
                .backends
                .iter()
                .all(|b| b.state == "up"),
            "adopted backends are not all up: {vips:?}"
        );

        let r = finish_client(stream, Duration::from_secs(60));
        eprintln!("  stream across the restart: {r:?}");
        assert!(
            r.attempted >= 400 && r.elapsed_ms >= 6500,
            "the stream was too thin: {r:?}"
        );
        assert_eq!(r.failed, 0, "connections failed across the restart: {r:?}");
        let [t1, t2] = transfers;
        finish_transfer(t1, BYTES, Duration::from_secs(120));
        finish_transfer(t2, BYTES, Duration::from_secs(120));

        let flows_after = backend_counter(&topo, |b| b.flows);
        let bytes_after = backend_counter(&topo, |b| b.bytes);
        eprintln!("  after: flows {flows_after:?}, bytes {bytes_after:?}");
        for i in 0..BACKENDS {
            assert!(
                flows_after[i] >= flows_before[i] && bytes_after[i] >= bytes_before[i],
                "b{}'s counters went back: {flows_before:?} -> {flows_after:?}, \
                 {bytes_before:?} -> {bytes_after:?}",
                i + 1
            );
        }
        let vips = topo.lbctl_backends();
        let web = vip(&vips, VIP_NAME);
        assert!(
            web.flows >= r.ok + 2 + 100,
            "the VIP's flow counter ({}) misses flows (stream {} + 2 transfers + 100)",
            web.flows,
            r.ok
        );

        // A clean stop now removes everything.
        let status = topo.stop_lbd().expect("lbd stops on SIGTERM");
        assert!(status.success(), "lbd exited with {status}");
        assert_data_plane_removed(&topo);
        eprintln!("  sysctls after the clean stop: {:?}", lb_sysctls(&topo));
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

/// `adopted` of `lbctl --json status`.
fn status_adopted(topo: &Topology) -> bool {
    status(topo).adopted
}

// ---------------------------------------------------------------------------
// 8. SIGQUIT, then a clean stop

#[test]
fn sigquit_leaves_forwarding_then_clean_stop() {
    let test = "sigquit_leaves_forwarding_then_clean_stop";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let sysctls_before = lb_sysctls(&topo);
        topo.start_lbd([1, 1, 1]);
        let text = fs::read_to_string(topo.config_path()).expect("read the configuration");
        let sysctls_running = lb_sysctls(&topo);
        eprintln!("  sysctls before lbd: {sysctls_before:?}; running: {sysctls_running:?}");
        let r = topo.client(&["--count", "100", "--concurrency", "4"]);
        assert_all_ok(&topo, &r, 100);
        // Run-time changes live in the kernel maps: they outlive lbd.
        let (b1, b3) = (topo.backend_target(0), topo.backend_target(2));
        topo.lbctl(&["backends", "weight", VIP_NAME, &b1, "2"]);
        topo.lbctl(&["backends", "drain", VIP_NAME, &b3]);

        let status = signal_lbd(&mut topo, libc::SIGQUIT);
        assert_eq!(status.code(), Some(0), "lbd's exit on SIGQUIT: {status}");
        for ifname in ["eth0", "eth1"] {
            assert!(
                topo.lb_xdp_attached(ifname).expect("ip link"),
                "XDP detached from {ifname} on SIGQUIT"
            );
        }
        let pinned = pins(&topo);
        eprintln!("  pins after SIGQUIT: {pinned:?}");
        assert!(pinned.iter().any(|p| p == "link_eth0"), "{pinned:?}");
        // Both tables are sized from max_flows with room to spare
        // (lb_ebpf::flow_slots_for, nat_slots_for).
        let entries = |name: &str| {
            aya::maps::MapInfo::from_pin(topo.pin_path().join(name))
                .expect("pinned map info")
                .max_entries()
        };
        let flows = entries(lb_ebpf::map::FLOWS);
        assert_eq!(
            flows,
            lb_ebpf::flow_slots_for(262_144),
            "the default max_flows"
        );
        assert_eq!(entries(lb_ebpf::map::NAT), lb_ebpf::nat_slots_for(262_144));
        assert!(!topo.socket_path().exists(), "the socket outlived lbd");
        assert_eq!(
            lb_sysctls(&topo),
            sysctls_running,
            "host settings changed on SIGQUIT (the data plane still needs them)"
        );
        let r = topo.client(&["--count", "200", "--concurrency", "8"]);
        eprintln!("  client with no lbd: {r:?}");
        assert_all_ok(&topo, &r, 200);
        assert!(
            answered_by(&topo, &r, 0) > answered_by(&topo, &r, 1),
            "{r:?}"
        );
        assert_eq!(answered_by(&topo, &r, 2), 0, "b3 is drained: {r:?}");

        // A data plane left by an lbd that kept time differently (its
        // configuration has no tick length) is refused, and left running.
        let original = pinned_config(&topo);
        set_pinned_config(
            &topo,
            lb_ebpf::Config {
                ns_per_tick: 0,
                ..original
            },
        );
        let e = topo
            .try_start_lbd_config(&text)
            .expect_err("adopted a data plane with another clock");
        let e = format!("{e:#}");
        assert!(e.contains("older lbd") && e.contains("rm -r"), "{e}");
        assert!(topo.lb_xdp_attached("eth0").expect("ip link"), "detached");
        assert!(pins(&topo).iter().any(|p| p == "link_eth0"), "unpinned");
        set_pinned_config(&topo, original);

        topo.try_start_lbd_config(&text)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            status_adopted(&topo),
            "the new lbd did not adopt the data plane"
        );
        let vips = topo.lbctl_backends();
        eprintln!("  adopted: {vips:?}");
        let web = vip(&vips, VIP_NAME);
        assert!(web.flows >= 300, "counters did not carry over: {web:?}");
        let shape: Vec<(String, u32, String)> = web
            .backends
            .iter()
            .map(|b| {
                (
                    format!("{}:{}", b.address, b.port),
                    b.weight,
                    b.state.to_string(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (b1.clone(), 2, "up".to_owned()),
                (topo.backend_target(1), 1, "up".to_owned()),
                (b3.clone(), 1, "drained".to_owned()),
            ],
            "run-time changes did not survive the restart"
        );
        topo.lbctl(&["backends", "enable", VIP_NAME, &b3]);
        let r = topo.client(&["--count", "150", "--concurrency", "4"]);
        assert_all_ok(&topo, &r, 150);
        assert_eq!(r.by_backend.len(), BACKENDS, "{r:?}");

        let status = topo.stop_lbd().expect("lbd stops on SIGTERM");
        assert!(status.success(), "lbd exited with {status}");
        assert_data_plane_removed(&topo);
        let sysctls_after = lb_sysctls(&topo);
        eprintln!("  sysctls after the clean stop: {sysctls_after:?}");
        assert_eq!(
            sysctls_after[0], sysctls_before[0],
            "the NAT port reservation was not removed by the clean stop of the adopting lbd"
        );
        assert_eq!(
            sysctls_after, sysctls_before,
            "host settings were not restored by the clean stop of the adopting lbd"
        );
        // Nothing forwards any more: the host has no listener on the VIP.
        let r = topo.client(&["--count", "3", "--timeout-ms", "1500"]);
        assert_eq!((r.ok, r.failed), (0, 3), "{r:?}");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn sigterm_during_start_up_still_stops_cleanly() {
    let test = "sigterm_during_start_up_still_stops_cleanly";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let status = topo.stop_lbd().expect("lbd stops on SIGTERM");
        assert!(status.success(), "lbd exited with {status}");
        // Again, with SIGTERM while it loads, verifies and attaches.
        let config = topo.config_path();
        let mut lbd = topo.spawn_lbd(&config).expect("spawn lbd");
        wait_until(Duration::from_secs(30), "lbd to start", || {
            lbd.stderr_so_far().contains("starting")
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lbd.output_so_far()));
        lbd.signal(libc::SIGTERM);
        let status = lbd
            .wait_timeout(Duration::from_secs(30))
            .expect("wait for lbd")
            .unwrap_or_else(|| panic!("lbd kept running: {}", lbd.output_so_far()));
        assert!(
            status.success(),
            "lbd's exit on an early SIGTERM: {status}\n{}",
            lbd.output_so_far()
        );
        assert_data_plane_removed(&topo);
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn adopting_detaches_interfaces_dropped_from_the_configuration() {
    let test = "adopting_detaches_dropped_interfaces";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let text = fs::read_to_string(topo.config_path()).expect("read the configuration");
        let status = signal_lbd(&mut topo, libc::SIGQUIT);
        assert_eq!(status.code(), Some(0), "lbd's exit on SIGQUIT: {status}");
        assert!(topo.lb_xdp_attached("eth1").expect("ip link"));
        let only_eth0 = text.replace(r#"["eth0", "eth1"]"#, r#"["eth0"]"#);
        assert_ne!(only_eth0, text, "the configuration lists eth0 and eth1");
        topo.try_start_lbd_config(&only_eth0)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(status_adopted(&topo), "the new lbd did not adopt");
        assert!(topo.lb_xdp_attached("eth0").expect("ip link"), "eth0");
        assert!(
            !topo.lb_xdp_attached("eth1").expect("ip link"),
            "eth1 left attached after it was dropped from the configuration"
        );
        assert!(
            !pins(&topo).iter().any(|p| p == "link_eth1"),
            "{:?}",
            pins(&topo)
        );
        assert!(
            topo.lbd_output()
                .contains("no longer in dataplane.interfaces"),
            "{}",
            topo.lbd_output()
        );
        let status = topo.stop_lbd().expect("lbd stops on SIGTERM");
        assert!(status.success(), "lbd exited with {status}");
        assert_data_plane_removed(&topo);
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 9. Metrics

#[test]
fn metrics_endpoint() {
    let test = "metrics_endpoint";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let r = topo.client(&["--count", "300", "--concurrency", "8"]);
        assert_all_ok(&topo, &r, 300);

        let text = scrape(&topo, METRICS_URL).unwrap_or_else(|e| panic!("{e}"));
        let vip_target = topo.vip_target();
        let vip_labels = [("vip", VIP_NAME), ("address", vip_target.as_str())];
        let packets = metric(&text, "lb_vip_packets_total", &vip_labels);
        eprintln!("  lb_vip_packets_total: {packets:?}");
        assert!(packets.is_some_and(|p| p > 0.0), "{text}");
        assert_eq!(
            metric(&text, "lb_vip_flows_total", &vip_labels),
            Some(300.0)
        );
        assert_eq!(
            metric(&text, "lb_vip_healthy_backends", &vip_labels),
            Some(3.0)
        );
        for i in 0..BACKENDS {
            let target = topo.backend_target(i);
            let labels = [("vip", VIP_NAME), ("backend", target.as_str())];
            assert_eq!(metric(&text, "lb_backend_up", &labels), Some(1.0), "{text}");
            assert_eq!(metric(&text, "lb_backend_weight", &labels), Some(1.0));
            let ok = [
                ("vip", VIP_NAME),
                ("backend", target.as_str()),
                ("result", "ok"),
            ];
            assert!(
                metric(&text, "lb_backend_checks_total", &ok).is_some_and(|n| n >= 1.0),
                "{text}"
            );
        }
        for r in lb_ebpf::Reason::ALL {
            assert!(
                text.lines().any(|l| l.starts_with("lb_packets_total{")
                    && l.contains(&format!("reason=\"{}\"", r.label()))),
                "no lb_packets_total series for {}",
                r.label()
            );
        }
        let fwd = metric(
            &text,
            "lb_packets_total",
            &[("reason", "redirect_forward"), ("verdict", "redirect")],
        );
        assert!(fwd.is_some_and(|n| n > 0.0), "{fwd:?}");
        assert_eq!(
            metric(&text, "lb_flow_table_capacity", &[]),
            Some(lb_ebpf::flow_slots_for(262_144) as f64)
        );
        let entries = metric(&text, "lb_flow_table_entries", &[]);
        assert!(entries.is_some_and(|n| n > 0.0), "{entries:?}");
        let nat = metric(&text, "lb_nat_table_entries", &[]);
        assert!(nat.is_some_and(|n| n > 0.0), "{nat:?}");
        assert_eq!(metric(&text, "lb_reloads_total", &[]), Some(0.0));
        for family in ["lb_vip_packets_total", "lb_backend_up", "lb_packets_total"] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE line for {family}"
            );
        }
        // Other paths.
        let root = format!("{}/", METRICS_URL.trim_end_matches("/metrics"));
        assert!(scrape(&topo, &root).is_ok(), "GET / is not 200");
        let missing = format!("{root}nope");
        assert!(
            scrape(&topo, &missing).is_err(),
            "GET /nope is not an error"
        );

        // A backend going down shows.
        topo.stop_backend_server(0).expect("stop b1's server");
        let b1 = topo.backend_target(0);
        let labels = [("vip", VIP_NAME), ("backend", b1.as_str())];
        let mut last = String::new();
        wait_until(TRANSITION_TIMEOUT, "lb_backend_up of b1 to be 0", || {
            last = scrape(&topo, METRICS_URL).unwrap_or_else(|e| e);
            metric(&last, "lb_backend_up", &labels) == Some(0.0)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{last}"));
        let down = [
            ("vip", VIP_NAME),
            ("backend", b1.as_str()),
            ("state", "down"),
        ];
        assert_eq!(
            metric(&last, "lb_backend_state", &down),
            Some(1.0),
            "{last}"
        );
        assert_eq!(
            metric(&last, "lb_vip_healthy_backends", &vip_labels),
            Some(2.0)
        );
        let failed = [
            ("vip", VIP_NAME),
            ("backend", b1.as_str()),
            ("result", "failed"),
        ];
        assert!(metric(&last, "lb_backend_checks_total", &failed).is_some_and(|n| n >= 2.0));
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

// ---------------------------------------------------------------------------
// 10. A VIP without a healthy backend

#[test]
fn empty_vip_resets_or_drops() {
    let test = "empty_vip_resets_or_drops";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let text = fs::read_to_string(topo.config_path()).expect("read the configuration");
        for i in 0..BACKENDS {
            topo.stop_backend_server(i).expect("stop a server");
        }
        for i in 0..BACKENDS {
            wait_state(&topo, VIP_NAME, i, "down", TRANSITION_TIMEOUT);
        }
        let table = topo.lbctl(&["backends"]);
        eprintln!("{table}");
        assert!(table.contains("healthy 0/3"), "{table}");
        assert!(
            table.contains("(no healthy backend: new connections are refused with a TCP reset)"),
            "{table}"
        );

        // on_empty = "reset" (the default): refused at once.
        let stats = topo.stats().expect("stats");
        let resets = reason(&stats, "tx_reset");
        let r = topo.client(&["--count", "5", "--timeout-ms", "3000"]);
        eprintln!("  client with on_empty = reset: {r:?}");
        assert_eq!((r.attempted, r.ok, r.failed), (5, 0, 5), "{r:?}");
        assert_eq!(r.errors.get("connect_refused"), Some(&5), "{r:?}");
        assert!(
            r.elapsed_ms < 1000,
            "5 refused connections took {} ms",
            r.elapsed_ms
        );
        let stats = topo.stats().expect("stats");
        assert!(
            reason(&stats, "tx_reset") >= resets + 5,
            "tx_reset did not count the refusals: {stats:?}"
        );

        // on_empty = "drop", by reload: the connection attempt times out.
        let marker = "protocol = \"tcp\"\n";
        assert!(text.contains(marker));
        let drop_text = text.replacen(marker, "protocol = \"tcp\"\non_empty = \"drop\"\n", 1);
        rewrite_config(&topo, &drop_text);
        let out = topo.lbctl(&["reload"]);
        eprintln!("  lbctl reload: {}", out.trim());
        let vips = topo.lbctl(&["vips"]);
        assert!(
            vips.lines()
                .nth(1)
                .is_some_and(|l| l.split_whitespace().nth(2) == Some("drop")),
            "{vips}"
        );
        assert!(
            topo.lbctl(&["backends"])
                .contains("(no healthy backend: new connections are dropped)"),
            "{}",
            topo.lbctl(&["backends"])
        );
        let drops = reason(&topo.stats().expect("stats"), "drop_no_backend");
        let resets = reason(&topo.stats().expect("stats"), "tx_reset");
        let r = topo.client(&["--count", "2", "--timeout-ms", "1200"]);
        eprintln!("  client with on_empty = drop: {r:?}");
        assert_eq!((r.attempted, r.ok, r.failed), (2, 0, 2), "{r:?}");
        assert_eq!(r.errors.get("connect_timeout"), Some(&2), "{r:?}");
        assert!(r.elapsed_ms >= 2000, "{r:?}");
        let stats = topo.stats().expect("stats");
        assert!(
            reason(&stats, "drop_no_backend") >= drops + 2,
            "drop_no_backend did not count the SYNs: {stats:?}"
        );
        assert_eq!(reason(&stats, "tx_reset"), resets, "reset while dropping");

        // Servers back: the VIP serves again.
        for i in 0..BACKENDS {
            topo.start_backend_server(i).expect("start a server");
        }
        topo.wait_backends_up(Duration::from_secs(30))
            .expect("backends up again");
        let r = topo.client(&["--count", "100", "--concurrency", "4"]);
        assert_all_ok(&topo, &r, 100);
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}
