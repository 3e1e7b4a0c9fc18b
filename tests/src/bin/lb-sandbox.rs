//! `lb-sandbox`: lb running for real in network namespaces, with live
//! counters. This is what `cargo xtask run` without arguments starts.
//!
//! It builds the test topology (`lb_tests::topology`) under the fixed prefix
//! `lbsbx` (replacing a stale one), starts `lbd` with three equally weighted
//! backends, sends bounded batches of short connections from the client
//! namespace to the VIP and prints per-backend counters every second, until
//! Ctrl-C (SIGINT/SIGTERM) or `--duration` has passed. Then it stops `lbd`
//! and removes everything it made.
//!
//! With `--pair`, it builds an HA pair instead (`lb_tests::pair`: two lbds
//! speaking VRRP on one bridge with the client and the backends), and every
//! `--failover-every` seconds takes the master's link down or brings it back,
//! printing who is master and how long the takeover took, while the client
//! keeps connecting and a set of long connections keeps exchanging data.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_tests::{
    netns_exists,
    pair::{Pair, Side},
    topology::{default_bin_dir, default_ebpf_object, Binaries, Topology, BACKENDS, VIP_NAME},
};
use lb_user::api::VipStatus;

/// Name prefix of the sandbox's namespaces.
const PREFIX: &str = "lbsbx";
/// The sandbox uses 10.123.1.0/24 (client side) and 10.123.2.0/24 (backends).
const NET: u8 = 123;

#[derive(Parser, Debug)]
#[command(
    name = "lb-sandbox",
    about = "Run lb in network namespaces with a client, three backends and live counters"
)]
struct Args {
    /// Directory holding lbd, lbctl and lb-testkit (default: $LB_BIN_DIR, or
    /// this program's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The XDP object, for the pass programs on the veth peers (default:
    /// $LB_EBPF_OBJECT, or where `cargo xtask build` puts it).
    #[arg(long)]
    object: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// New client connections per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// An HA pair of lbds speaking VRRP, failing over now and then.
    #[arg(long)]
    pair: bool,
    /// With --pair: seconds between link failures and repairs.
    #[arg(long, default_value_t = 10.0)]
    failover_every: f64,
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the sigaction struct is fully initialised.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("sigaction: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-sandbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lb-testkit client` options for one second's batch of connections.
fn batch_args<'a>(rate: &'a str, count: &'a str) -> [&'a str; 10] {
    [
        "--rate",
        rate,
        "--duration-secs",
        "1",
        "--count",
        count,
        "--concurrency",
        "8",
        "--timeout-ms",
        "2000",
    ]
}

/// What the client batches have seen so far.
#[derive(Default)]
struct Traffic {
    batches: u64,
    attempted: u64,
    ok: u64,
    failed: u64,
    slow: u64,
    last_error: Option<String>,
}

fn run(args: &Args) -> Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be positive");
    }
    install_signal_handlers()?;
    let bin_dir = args.bin_dir.clone().unwrap_or_else(default_bin_dir);
    let object = args.object.clone().unwrap_or_else(default_ebpf_object);
    let bins = Binaries::locate(&bin_dir, &object)?;
    if args.pair {
        return pair_sandbox(args, bins, &bin_dir);
    }

    println!("lb-sandbox: building namespaces {PREFIX}c, {PREFIX}l, {PREFIX}s, {PREFIX}b1..b3 ...");
    let mut topo = Topology::new(PREFIX, NET, bins)?;
    topo.try_start_lbd([1; BACKENDS])?;
    let lbd_log = topo.lbd().stderr_path();
    banner(&topo, &bin_dir, args, &lbd_log);

    let outcome = live(&topo, args);

    println!("lb-sandbox: stopping lbd ...");
    let stopped = topo.stop_lbd();
    let names = topo.namespace_names();
    let pins = topo.pin_path();
    let socket = topo.socket_path();
    drop(topo);
    let left: Vec<&String> = names.iter().filter(|n| netns_exists(n)).collect();
    if !left.is_empty() || pins.exists() || socket.exists() {
        bail!(
            "cleanup incomplete: namespaces {left:?}, pins present: {}, socket present: {}",
            pins.exists(),
            socket.exists()
        );
    }
    println!(
        "lb-sandbox: cleaned up: lbd stopped, namespaces {} removed, {} and {} gone",
        names.join(" "),
        pins.display(),
        socket.display()
    );
    let status = stopped.context("stopping lbd")?;
    if !status.success() {
        bail!("lbd exited with {status}");
    }
    outcome
}

fn banner(topo: &Topology, bin_dir: &std::path::Path, args: &Args, lbd_log: &std::path::Path) {
    let bin = bin_dir.display();
    let socket = topo.socket_path();
    let socket = socket.display();
    let pins = topo.pin_path();
    let p = topo.prefix();
    println!();
    println!("lb-sandbox: lb is running in network namespaces");
    println!(
        "  client   {p}c   {} -> VIP {VIP_NAME} {}",
        topo.client_addr(),
        topo.vip_target()
    );
    println!(
        "  lb       {p}l   lbd, native XDP on eth0 (clients) and eth1 (backends), NAT source {}",
        topo.nat_source()
    );
    println!(
        "           pins {}, control socket {socket}",
        pins.display()
    );
    println!("           lbd's log: {}", lbd_log.display());
    for i in 0..BACKENDS {
        println!(
            "  backend {}  {p}b{}  {} (answers `{}`), weight 1",
            i + 1,
            i + 1,
            topo.backend_target(i),
            topo.backend_name(i)
        );
    }
    println!("  switch   {p}s   bridge br0 joining the backends and lb's eth1");
    println!(
        "  traffic  {} new connections/s from the client, in 1 s batches",
        args.rate
    );
    println!();
    println!("Poke it by hand (as root, from another terminal):");
    println!(
        "  ip netns exec {p}c {bin}/lb-testkit client --target {} --count 10",
        topo.vip_target()
    );
    println!("  {bin}/lbctl --socket {socket} backends");
    println!("  {bin}/lbctl --socket {socket} stats");
    println!(
        "  {bin}/lbctl --socket {socket} backends remove {VIP_NAME} {}",
        topo.backend_target(1)
    );
    println!(
        "  {bin}/lbctl --socket {socket} backends add {VIP_NAME} {} --weight 1",
        topo.backend_target(1)
    );
    println!("  bpftool map dump pinned {}/LB_REASONS", pins.display());
    match args.duration {
        Some(d) => println!("Stops after {d} s or on Ctrl-C, and then removes everything."),
        None => println!("Stop with Ctrl-C: lbd is stopped and everything removed."),
    }
    println!();
}

/// Sends traffic and prints counters until stopped or out of time.
fn live(topo: &Topology, args: &Args) -> Result<()> {
    let traffic = Mutex::new(Traffic::default());
    let finished = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let rate = format!("{}", args.rate);
    let count = format!("{}", args.rate.ceil().max(1.0) as u64);
    let tty = std::io::stdout().is_terminal();

    let result = thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            while !STOP.load(Ordering::SeqCst) && !finished.load(Ordering::SeqCst) {
                let r = topo.try_client(&batch_args(&rate, &count));
                let mut t = traffic.lock().expect("traffic lock");
                match r {
                    Ok(r) => {
                        t.batches += 1;
                        t.attempted += r.attempted;
                        t.ok += r.ok;
                        t.failed += r.failed;
                        t.slow += r.slow_connects;
                        if r.failed > 0 {
                            t.last_error = Some(format!("{:?}", r.errors));
                        }
                    }
                    Err(e) => {
                        t.last_error = Some(format!("{e:#}"));
                        drop(t);
                        thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        });

        let mut previous: Option<(Instant, Vec<u64>)> = None;
        let mut printed = 0usize;
        let mut result = Ok(());
        loop {
            thread::sleep(Duration::from_millis(1000));
            let stop = STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
            match topo.backend_status() {
                Ok(vips) => {
                    let text = table(topo, &vips, start, &mut previous, &traffic);
                    let mut out = std::io::stdout().lock();
                    if tty && printed > 0 {
                        // Redraw in place: up to the first line of the last table.
                        let _ = write!(out, "\x1b[{printed}F\x1b[J");
                    }
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                    printed = text.lines().count();
                }
                Err(e) => {
                    result = Err(e.context("reading lbd's counters"));
                    break;
                }
            }
            if stop {
                break;
            }
        }
        finished.store(true, Ordering::SeqCst);
        result
    });

    let t = traffic.lock().expect("traffic lock");
    let why = if STOP.load(Ordering::SeqCst) {
        "interrupted"
    } else {
        "time is up"
    };
    println!(
        "lb-sandbox: {why} after {:.1} s: {} connections in {} batches, {} ok, {} failed, {} slow connects",
        start.elapsed().as_secs_f64(),
        t.attempted,
        t.batches,
        t.ok,
        t.failed,
        t.slow
    );
    if let Some(e) = &t.last_error {
        println!("lb-sandbox: last client error: {e}");
    }
    result
}

/// The live table: one line for the VIP and the traffic so far, one row per
/// backend (`NAME BACKEND WEIGHT PACKETS BYTES FLOWS FLOWS/S`).
fn table(
    topo: &Topology,
    vips: &[VipStatus],
    start: Instant,
    previous: &mut Option<(Instant, Vec<u64>)>,
    traffic: &Mutex<Traffic>,
) -> String {
    let now = Instant::now();
    let (ok, failed) = {
        let t = traffic.lock().expect("traffic lock");
        (t.ok, t.failed)
    };
    let mut s = String::new();
    let Some(v) = vips.iter().find(|v| v.name == VIP_NAME) else {
        return format!("no VIP {VIP_NAME} configured\n");
    };
    s.push_str(&format!(
        "t={:>4.0}s  VIP {} {}:{}  packets {}  bytes {}  flows {}  | client connections: ok {ok}, failed {failed}\n",
        start.elapsed().as_secs_f64(),
        v.name,
        v.address,
        v.port,
        v.packets,
        v.bytes,
        v.flows
    ));
    s.push_str(&format!(
        "  {:<4} {:<21} {:>6} {:>10} {:>12} {:>8} {:>8}\n",
        "NAME", "BACKEND", "WEIGHT", "PACKETS", "BYTES", "FLOWS", "FLOWS/S"
    ));
    let flows: Vec<u64> = v.backends.iter().map(|b| b.flows).collect();
    for (j, b) in v.backends.iter().enumerate() {
        let name = topo
            .backend_index(b.address)
            .map(|i| topo.backend_name(i))
            .unwrap_or_else(|| "?".into());
        let per_sec = match previous {
            Some((t, prev)) if prev.len() == flows.len() => {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                format!("{:.0}", flows[j].saturating_sub(prev[j]) as f64 / dt)
            }
            _ => "-".into(),
        };
        s.push_str(&format!(
            "  {:<4} {:<21} {:>6} {:>10} {:>12} {:>8} {:>8}\n",
            name,
            format!("{}:{}", b.address, b.port),
            b.weight,
            b.packets,
            b.bytes,
            b.flows,
            per_sec
        ));
    }
    if v.backends.is_empty() {
        s.push_str("  (no backends: new connections are dropped)\n");
    }
    *previous = Some((now, flows));
    s
}

/// Name prefix and subnet of the pair sandbox.
const PAIR_PREFIX: &str = "lbhasb";
const PAIR_NET: u8 = 124;
/// Connections the pair sandbox holds open across its failovers.
const PAIR_HELD: &str = "20";

/// `--pair`: an HA pair that fails over every `--failover-every` seconds.
fn pair_sandbox(args: &Args, bins: Binaries, bin_dir: &std::path::Path) -> Result<()> {
    if !(args.failover_every.is_finite() && args.failover_every >= 2.0) {
        bail!("--failover-every must be at least 2 seconds");
    }
    println!("lb-sandbox: building namespaces {PAIR_PREFIX}c, l1, l2, s, b1..b3 ...");
    let mut pair = Pair::new(PAIR_PREFIX, PAIR_NET, bins)?;
    pair.start_lbd(0, &Side::new(150, 100))?;
    pair.start_lbd(1, &Side::new(100, 100))?;
    pair.wait_state(0, "master", Duration::from_secs(30))?;
    let bin = bin_dir.display();
    println!();
    println!("lb-sandbox: an lbd pair is running in network namespaces");
    println!(
        "  client  {PAIR_PREFIX}c   {} -> VIP {}",
        pair.client_addr(),
        pair.vip_target()
    );
    for side in 0..2 {
        println!(
            "  lb{}     {PAIR_PREFIX}l{}  {}, priority {}, control socket {}",
            side + 1,
            side + 1,
            pair.lb_addr(side),
            if side == 0 { 150 } else { 100 },
            pair.socket_path(side).display()
        );
    }
    println!(
        "          VRRP every 100 ms; floating: the VIP {} and the NAT source {}",
        pair.vip(),
        pair.nat_source()
    );
    println!(
        "  backends {PAIR_PREFIX}b1..b3 {}, {}, {} :8080",
        pair.backend_addr(0),
        pair.backend_addr(1),
        pair.backend_addr(2)
    );
    println!(
        "Every {} s the master's link goes down (or comes back up). Watch it by hand with:",
        args.failover_every
    );
    println!(
        "  {bin}/lbctl --socket {} status",
        pair.socket_path(1).display()
    );
    println!();

    let start = Instant::now();
    let deadline = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let target = pair.vip_target();
    let rate = format!("{}", args.rate);
    let count = format!("{}", args.rate.ceil().max(1.0) as u64);
    // The held connections last as long as the run (lb-testkit caps a hold
    // at 120 s; the sandbox starts another when one ends).
    let hold = |secs: f64| {
        pair.spawn_client(&[
            "hold",
            "--target",
            &target,
            "--connections",
            PAIR_HELD,
            "--duration-secs",
            &format!("{secs}"),
        ])
    };
    let mut held = Some(hold(args.duration.unwrap_or(120.0).min(120.0))?);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut next_flip = start + Duration::from_secs_f64(args.failover_every);
    let mut failed_side: Option<usize> = None;
    let mut result = Ok(());
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        // One second of new connections.
        let mut batch = vec!["client", "--target", &target];
        batch.extend(batch_args(&rate, &count));
        match pair.spawn_client(&batch) {
            Ok(mut c) => {
                let _ = c.wait_timeout(Duration::from_secs(10));
                if let Ok(r) = lb_tests::try_parse_client_report(&c.stdout_so_far()) {
                    ok += r.ok;
                    failed += r.failed;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let states: Vec<String> = (0..2)
            .map(|side| match pair.vrrp_status(side) {
                Ok(v) => format!(
                    "lb{} {} (prio {})",
                    side + 1,
                    v.state.as_str().to_uppercase(),
                    v.effective_priority
                ),
                Err(_) => format!("lb{} unreachable", side + 1),
            })
            .collect();
        let master = (0..2).find(|&side| {
            pair.vrrp_status(side)
                .map(|v| v.state == "master")
                .unwrap_or(false)
                && failed_side != Some(side)
        });
        println!(
            "t={:>4.0}s  {}  | new connections: ok {ok}, failed {failed}",
            start.elapsed().as_secs_f64(),
            states.join("  ")
        );
        if Instant::now() >= next_flip {
            next_flip = Instant::now() + Duration::from_secs_f64(args.failover_every);
            match failed_side.take() {
                Some(side) => {
                    println!("lb-sandbox: bringing lb{}'s link back up", side + 1);
                    let _ = pair.lb_ns(side).ip(&["link", "set", "eth0", "up"]);
                }
                None => {
                    let side = master.unwrap_or(0);
                    println!("lb-sandbox: taking lb{}'s link down", side + 1);
                    let down = Instant::now();
                    let _ = pair.fail_link(side);
                    failed_side = Some(side);
                    let other = 1 - side;
                    match pair.wait_state(other, "master", Duration::from_secs(10)) {
                        Ok(()) => println!(
                            "lb-sandbox: lb{} is master {} ms later",
                            other + 1,
                            down.elapsed().as_millis()
                        ),
                        Err(e) => println!("lb-sandbox: {e:#}"),
                    }
                }
            }
        }
        if let Some(h) = held.as_mut() {
            if !h.is_running() {
                let report = h.stdout_so_far();
                println!(
                    "lb-sandbox: held connections: {}",
                    report.lines().last().unwrap_or("no report")
                );
                held = None;
                let left = deadline.map_or(120.0, |d| {
                    d.saturating_duration_since(Instant::now()).as_secs_f64()
                });
                if left >= 10.0 {
                    held = Some(hold(left.min(120.0))?);
                }
            }
        }
    }
    if let Some(mut h) = held.take() {
        // Its exchanges end with the run (or it is stopped, on Ctrl-C).
        if !STOP.load(Ordering::SeqCst) && h.wait_timeout(Duration::from_secs(30)).is_ok() {
            println!(
                "lb-sandbox: held connections: {}",
                h.stdout_so_far().lines().last().unwrap_or("no report")
            );
        }
    }
    println!("lb-sandbox: stopping both lbds and removing the namespaces ...");
    drop(pair);
    println!("lb-sandbox: cleaned up");
    result
}
