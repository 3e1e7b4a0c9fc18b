//! Self-test of the test kit: namespaces, veth, and the `lb-testkit` server,
//! client and transfer over a plain veth link (no load balancer). Needs root.

use std::time::Duration;

use lb_tests::{
    addr, disable_offloads, harness::assert_cleaned_up, netns_exists, parse_client_report,
    parse_transfer_report, unique_prefix, veth, wait_until, Child, Netns,
};

/// The `lb-testkit` binary cargo built for these tests.
const BIN: &str = env!("CARGO_BIN_EXE_lb-testkit");

/// Two namespaces joined by a veth: `srv` (`s0`, 10.200.X.1/24) and `cli`
/// (`c0`, 10.200.X.2/24), X derived from the pid and a per-test offset.
struct Pair {
    srv: Netns,
    cli: Netns,
    srv_ip: String,
}

fn pair(test: &str, offset: u32) -> Pair {
    let prefix = unique_prefix(test);
    let srv = Netns::new(&format!("{prefix}-s")).expect("server namespace");
    let cli = Netns::new(&format!("{prefix}-c")).expect("client namespace");
    veth(&srv, "s0", &cli, "c0").expect("veth");
    let x = (std::process::id() + offset) % 250 + 1;
    let srv_ip = format!("10.200.{x}.1");
    addr(&srv, "s0", &format!("{srv_ip}/24")).expect("server address");
    addr(&cli, "c0", &format!("10.200.{x}.2/24")).expect("client address");
    disable_offloads(&cli, "c0").expect("ethtool");
    disable_offloads(&srv, "s0").expect("ethtool");
    Pair { srv, cli, srv_ip }
}

/// Starts `lb-testkit serve` in `ns` and waits for it to be ready.
fn serve(ns: &Netns, listen: &[String], name: &str) -> Child {
    let mut args = vec![BIN, "serve", "--name", name];
    for l in listen {
        args.extend(["--listen", l.as_str()]);
    }
    let mut child = ns.spawn(&args).expect("spawn server");
    child
        .wait_for_stdout("ready", Duration::from_secs(10))
        .expect("server ready");
    child
}

#[test]
fn client_and_transfer_over_veth() {
    let prefix = unique_prefix("client_and_transfer_over_veth");
    {
        let p = pair("client_and_transfer_over_veth", 0);
        let target = format!("{}:8080", p.srv_ip);
        let server = serve(&p.srv, std::slice::from_ref(&target), "be1");

        let out = p
            .cli
            .exec(&[
                BIN,
                "client",
                "--target",
                &target,
                "--count",
                "200",
                "--concurrency",
                "8",
            ])
            .expect("client");
        let r = parse_client_report(&out);
        println!("client: {out}");
        assert_eq!(r.attempted, 200, "{out}\n{}", server.output_so_far());
        assert_eq!(r.ok, 200, "{out}\n{}", server.output_so_far());
        assert_eq!(r.failed, 0);
        assert!(r.errors.is_empty(), "{out}");
        assert_eq!(r.by_backend.get("be1"), Some(&200), "{out}");
        assert!(r.connect_ms.max > 0.0 && r.connect_ms.p50 <= r.connect_ms.p99);

        let out = p
            .cli
            .exec(&[BIN, "transfer", "--target", &target, "--bytes", "4000000"])
            .expect("transfer");
        println!("transfer: {out}");
        let t = parse_transfer_report(&out);
        assert!(t.ok, "{out}");
        assert_eq!((t.sent, t.received), (4_000_000, 4_000_000));
        assert!(t.error.is_none());

        let status = server.stop().expect("server stops on SIGTERM");
        assert!(status.success(), "server exit: {status}");
    }
    assert_cleaned_up(&prefix);
}

#[test]
fn rate_duration_errors_and_pacing() {
    let test = "rate_duration_errors_and_pacing";
    let prefix = unique_prefix(test);
    {
        let p = pair(test, 100);
        let a = format!("{}:7001", p.srv_ip);
        let b = format!("{}:7002", p.srv_ip);
        let server = serve(&p.srv, &[a.clone(), b.clone()], "multi");
        let client = |args: &[&str]| {
            let mut full = vec![BIN, "client"];
            full.extend_from_slice(args);
            let out = p.cli.exec(&full).expect("client");
            println!("client {args:?}: {out}");
            parse_client_report(&out)
        };

        // 50 connections at 100/s take about half a second.
        let r = client(&[
            "--target",
            &b,
            "--count",
            "50",
            "--concurrency",
            "4",
            "--rate",
            "100",
        ]);
        assert_eq!(r.ok, 50);
        assert_eq!(r.by_backend.get("multi"), Some(&50));
        assert!((450..3000).contains(&r.elapsed_ms), "{r:?}");

        // The duration bounds a run whose count is out of reach.
        let r = client(&[
            "--target",
            &a,
            "--count",
            "1000000",
            "--concurrency",
            "4",
            "--rate",
            "200",
            "--duration-secs",
            "1",
        ]);
        assert!((150..=201).contains(&r.attempted), "{r:?}");
        assert_eq!(r.ok, r.attempted);
        assert!(r.elapsed_ms < 3000, "{r:?}");

        // Nobody listens on this port: every connect is refused.
        let closed = format!("{}:7999", p.srv_ip);
        let r = client(&["--target", &closed, "--count", "5", "--concurrency", "2"]);
        assert_eq!((r.attempted, r.ok, r.failed), (5, 0, 5));
        assert_eq!(r.errors.get("connect_refused"), Some(&5), "{r:?}");

        // A paced transfer takes at least (chunks - 1) * pace.
        let out = p
            .cli
            .exec(&[
                BIN,
                "transfer",
                "--target",
                &a,
                "--bytes",
                "100000",
                "--chunk",
                "10000",
                "--pace-ms",
                "50",
            ])
            .expect("paced transfer");
        let t = parse_transfer_report(&out);
        assert!(t.ok && t.received == 100_000, "{out}");
        assert!(t.elapsed_ms >= 450, "{out}");

        // A failing transfer exits non-zero and says why.
        let err = p
            .cli
            .exec(&[BIN, "transfer", "--target", &closed, "--bytes", "10"])
            .expect_err("transfer to a closed port fails");
        assert!(format!("{err:#}").contains("\"ok\":false"), "{err:#}");

        drop(server);
    }
    assert_cleaned_up(&prefix);
}

#[test]
fn namespaces_are_cleaned_up_on_panic() {
    let prefix = unique_prefix("namespaces_are_cleaned_up_on_panic");
    let name = format!("{prefix}-p");
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new(&name).expect("namespace");
        // A process that would outlive the test if nobody killed it.
        let _sleeper = ns.spawn(&["sleep", "600"]).expect("spawn sleep");
        let _detached = ns.exec(&["sh", "-c", "sleep 600 >/dev/null 2>&1 &"]);
        wait_until(Duration::from_secs(5), "sleepers in the namespace", || {
            ns.pids().map(|p| p.len() >= 2).unwrap_or(false)
        })
        .expect("sleepers");
        assert!(netns_exists(&name));
        panic!("deliberate failure");
    });
    assert!(result.is_err());
    assert!(!netns_exists(&name), "namespace {name} survived a panic");
    assert_cleaned_up(&prefix);
}

#[test]
fn stale_namespace_is_replaced() {
    let prefix = unique_prefix("stale_namespace_is_replaced");
    let name = format!("{prefix}-x");
    lb_tests::run("ip", &["netns", "add", &name]).expect("stale namespace");
    {
        let ns = Netns::new(&name).expect("replaces the stale namespace");
        let lo = ns.ip(&["-br", "link", "show", "lo"]).expect("lo");
        assert!(lo.contains("UP") || lo.contains("UNKNOWN"), "{lo}");
    }
    assert_cleaned_up(&prefix);
}
