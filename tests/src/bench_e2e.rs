//! The end-to-end section of `cargo xtask bench`: real TCP traffic from the
//! client namespace through the load balancer namespace to three nginx
//! backends, for lbd and for the tools it replaces, each as a ratio to going
//! direct to a backend in the same run.
//!
//! The peers, all in one [`Topology`] (built without `lb-testkit serve`, so
//! nginx can have the backends' port 8080):
//!
//! * **direct**: the client talks to backend 1 (10.X.2.11) itself; the load
//!   balancer namespace only routes (its XDP program passes the packets).
//! * **lbd**: the topology's lbd, VIP `web` :80 → the 3 backends :8080
//!   (weights 1:1:1), and VIP `iperf` :5201 → backend 1 :5201.
//! * **HAProxy** in TCP mode in the load balancer namespace, on the VIP
//!   address: :81 → the 3 backends (round robin), :5202 → backend 1 :5201.
//! * **nftables** NAT in the load balancer namespace: :82 DNATed to a random
//!   backend (`numgen random mod 3`), :5203 to backend 1 :5201, SNAT to an
//!   address of the load balancer used by nothing else (10.X.2.20). The
//!   table exists only while nftables is measured, so conntrack does not tax
//!   the other peers.
//!
//! Each round measures every metric for every peer back to back (peers
//! interleaved, in an order rotated per round); the report gives medians over
//! the rounds and the median of the per-round ratios to direct.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::{
    bench::{bar_chart, fmt_num},
    topology::{Binaries, ExtraVip, Topology, TopologyOptions, BACKENDS, BACKEND_PORT, VIP_PORT},
    Child, ClientReport, ConnectMs, Netns,
};

/// Port of iperf3's server in backend 1 (and of lbd's iperf VIP).
pub const IPERF_PORT: u16 = 5201;
/// HAProxy's ports on the VIP address: web, iperf3.
pub const HAPROXY_PORTS: (u16, u16) = (81, 5202);
/// nftables' DNAT ports on the VIP address: web, iperf3.
pub const NFT_PORTS: (u16, u16) = (82, 5203);
/// Name of the nftables table (in the load balancer namespace only).
const NFT_TABLE: &str = "lbbench";
/// Last byte of the address nftables SNATs to (10.X.2.20), added to the load
/// balancer's `eth1` for it alone. Sharing HAProxy's source address would
/// make the backends drop SYNs: a tuple still in `TIME_WAIT` from one peer,
/// reused by the other with an older TCP timestamp, fails the PAWS check.
const NFT_SNAT_HOST: u8 = 20;
/// wrk's threads and connections.
pub const WRK_THREADS: u32 = 2;
pub const WRK_CONNECTIONS: u32 = 32;
/// Workers of the fixed-rate latency client.
const LATENCY_WORKERS: u32 = 32;
/// How long a load run may overrun its nominal duration before it is killed.
const RUN_GRACE: Duration = Duration::from_secs(30);
/// How long servers may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// How much to measure.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// Rounds; every peer is measured once per metric per round.
    pub rounds: usize,
    /// Duration of each wrk, iperf3 and latency run, in seconds.
    pub secs: u64,
    /// Requests per second of the fixed-rate latency run.
    pub rate: f64,
    /// A keep-alive wrk run of this many seconds per peer before round 1
    /// (0: none).
    pub warmup_secs: u64,
}

impl E2eOptions {
    /// The full run (4 rounds of 5 s runs: with the order rotated per round,
    /// each peer runs once in each position) or, with `quick`, a smoke run
    /// (1 round of 1 s runs).
    pub fn new(quick: bool) -> E2eOptions {
        if quick {
            E2eOptions {
                rounds: 1,
                secs: 1,
                rate: 1000.0,
                warmup_secs: 0,
            }
        } else {
            E2eOptions {
                rounds: 4,
                secs: 5,
                rate: 1000.0,
                warmup_secs: 1,
            }
        }
    }
}

/// What the client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    Direct,
    Lbd,
    Haproxy,
    Nftables,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Direct, Peer::Lbd, Peer::Haproxy, Peer::Nftables];

    pub fn label(self) -> &'static str {
        match self {
            Peer::Direct => "direct (backend 1)",
            Peer::Lbd => "lbd (XDP)",
            Peer::Haproxy => "HAProxy (tcp mode)",
            Peer::Nftables => "nftables NAT",
        }
    }

    /// A short name for chart labels.
    pub fn short(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Lbd => "lbd",
            Peer::Haproxy => "HAProxy",
            Peer::Nftables => "nftables",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One metric for every peer and round.
#[derive(Clone, Debug)]
pub struct Series {
    /// E.g. `keep-alive requests/s`.
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// `values[peer][round]`; `None` where the run failed.
    pub values: [Vec<Option<f64>>; 4],
}

impl Series {
    fn new(name: &'static str, unit: &'static str, higher_is_better: bool) -> Series {
        Series {
            name,
            unit,
            higher_is_better,
            values: Default::default(),
        }
    }

    fn push(&mut self, peer: Peer, round: usize, value: Option<f64>) {
        let v = &mut self.values[peer.index()];
        if v.len() <= round {
            v.resize(round + 1, None);
        }
        v[round] = value;
    }

    /// The peer's measured values (failed rounds left out).
    pub fn samples(&self, peer: Peer) -> Vec<f64> {
        self.values[peer.index()]
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Median over the rounds.
    pub fn median(&self, peer: Peer) -> Option<f64> {
        median(&self.samples(peer))
    }

    /// Per-round ratios to direct (rounds where both were measured).
    pub fn ratios(&self, peer: Peer) -> Vec<f64> {
        let direct = &self.values[Peer::Direct.index()];
        self.values[peer.index()]
            .iter()
            .zip(direct)
            .filter_map(|(v, d)| match (v, d) {
                (Some(v), Some(d)) if *d > 0.0 => Some(v / d),
                _ => None,
            })
            .collect()
    }

    /// Median of the per-round ratios to direct.
    pub fn ratio(&self, peer: Peer) -> Option<f64> {
        median(&self.ratios(peer))
    }
}

/// Median (mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Everything the end-to-end benchmark found.
#[derive(Clone, Debug)]
pub struct E2eResults {
    pub options: E2eOptions,
    pub keepalive: Series,
    pub newconn: Series,
    pub throughput: Series,
    pub latency_p50: Series,
    pub latency_p99: Series,
    /// Every failed run, failed request, socket error or non-2xx answer.
    pub failures: Vec<String>,
    /// lbd's reason counters, summed over lbd's runs only (deltas).
    pub lbd_reasons: Vec<(String, u64)>,
    /// Answers per backend name in the latency runs, per peer.
    pub spread: BTreeMap<Peer, BTreeMap<String, u64>>,
    /// Versions of the peers' programs.
    pub versions: Vec<String>,
    /// Wall time of the whole section.
    pub elapsed: Duration,
}

impl E2eResults {
    /// The metrics with a ratio where higher is better.
    pub fn rates(&self) -> [&Series; 3] {
        [&self.keepalive, &self.newconn, &self.throughput]
    }
}

/// Set by SIGINT/SIGTERM while [`run`] runs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM while it lives, so that an interrupted run
/// unwinds through the drop guards (lbd, servers, nftables table,
/// namespaces) instead of dying with them in place; restores the default
/// actions on drop.
struct StopSignals;

impl StopSignals {
    fn install() -> Result<StopSignals> {
        STOP.store(false, Ordering::SeqCst);
        set_stop_handlers(on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t)?;
        Ok(StopSignals)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        let _ = set_stop_handlers(libc::SIG_DFL);
    }
}

fn set_stop_handlers(handler: libc::sighandler_t) -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is fully initialised.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
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

/// An error if SIGINT or SIGTERM arrived.
fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Waits for `child` up to `limit` (or until SIGINT/SIGTERM): its exit
/// status, or `None` if it is still running (dropping it then kills it).
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.wait_timeout(Duration::from_millis(100))? {
            return Ok(Some(status));
        }
        check_stop()?;
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Runs the end-to-end benchmark in a fresh topology (namespaces, lbd, nginx,
/// iperf3, HAProxy) and tears everything down afterwards, also when it fails
/// or is interrupted by SIGINT/SIGTERM.
pub fn run(options: &E2eOptions) -> Result<E2eResults> {
    let _signals = StopSignals::install()?;
    let start = Instant::now();
    let prefix = crate::unique_prefix("e2ebench");
    let net = crate::topology::subnet_byte(&prefix);
    let bins = Binaries::locate(
        &crate::topology::default_bin_dir(),
        &crate::topology::default_ebpf_object(),
    )?;
    let topo = Topology::with_options(
        &prefix,
        net,
        bins,
        TopologyOptions {
            testkit_servers: false,
        },
    )?;
    let mut bench = Bench::new(topo, options.clone());
    let result = bench.setup().and_then(|()| bench.measure());
    if result.is_err() && !STOP.load(Ordering::SeqCst) {
        eprintln!("{}", bench.diagnostics());
    }
    result?;
    let Bench {
        topo,
        options,
        series,
        failures,
        lbd_reasons,
        spread,
        servers,
        ..
    } = bench;
    // Servers first, then lbd and the namespaces.
    drop(servers);
    drop(topo);
    let [keepalive, newconn, throughput, latency_p50, latency_p99] = series;
    Ok(E2eResults {
        options,
        keepalive,
        newconn,
        throughput,
        latency_p50,
        latency_p99,
        failures,
        lbd_reasons: lbd_reasons.into_iter().filter(|(_, v)| *v > 0).collect(),
        spread,
        versions: versions(),
        elapsed: start.elapsed(),
    })
}

/// The state of a run.
struct Bench {
    /// nginx ×3, iperf3, HAProxy (dropped before the topology).
    servers: Vec<Child>,
    topo: Topology,
    options: E2eOptions,
    /// keep-alive, new connections, throughput, p50, p99.
    series: [Series; 5],
    failures: Vec<String>,
    lbd_reasons: BTreeMap<String, u64>,
    spread: BTreeMap<Peer, BTreeMap<String, u64>>,
}

/// The nftables table in a namespace, deleted on drop.
struct NftTable {
    /// The namespace's name.
    ns: String,
}

impl NftTable {
    fn add(ns: &Netns, rules: &Path) -> Result<NftTable> {
        let rules = rules.display().to_string();
        ns.exec(&["nft", "-f", &rules])
            .context("adding the nftables NAT table")?;
        Ok(NftTable {
            ns: ns.name().to_owned(),
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let args = [
            "netns", "exec", &self.ns, "nft", "delete", "table", "ip", NFT_TABLE,
        ];
        if let Err(e) = crate::run("ip", &args) {
            eprintln!("warning: deleting nftables table {NFT_TABLE}: {e:#}");
        }
    }
}

/// What wrk reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub socket_errors_text: String,
    pub non_2xx: u64,
}

/// Parses wrk's text output.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_rate = false;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().context("wrk's Requests/sec")?;
            seen_rate = true;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.socket_errors_text = v.trim().to_owned();
            r.socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().context("wrk's non-2xx count")?;
        } else if let Some((n, rest)) = line.split_once(" requests in ") {
            if rest.contains(" read") {
                r.requests = n.trim().parse().unwrap_or(0);
            }
        }
    }
    if !seen_rate {
        bail!("no Requests/sec in wrk's output:\n{out}");
    }
    Ok(r)
}

/// The Gbit/s received (`end.sum_received.bits_per_second`) from iperf3's
/// JSON output, or its error.
pub fn parse_iperf3(out: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(out)
        .map_err(|e| anyhow!("iperf3's output is not JSON ({e}): {out}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .ok_or_else(|| anyhow!("no end.sum_received.bits_per_second in iperf3's output"))?;
    Ok(bps / 1e9)
}

/// `lb-testkit client --http`'s report: the usual fields plus the HTTP ones.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpClientReport {
    #[serde(flatten)]
    pub base: ClientReport,
    #[serde(default)]
    pub request_ms: ConnectMs,
    #[serde(default)]
    pub by_status: BTreeMap<String, u64>,
}

/// Runs `args` in `ns` (`ip netns exec`), killing it if it outlives `limit`;
/// returns its stdout if it exits 0.
fn run_bounded(ns: &Netns, args: &[&str], limit: Duration) -> Result<String> {
    let mut child = ns.spawn(args)?;
    match wait_bounded(&mut child, limit)? {
        Some(status) if status.success() => Ok(child.stdout_so_far()),
        Some(status) => bail!("`{}` failed ({status})\n{}", args.join(" "), {
            child.output_so_far()
        }),
        // Dropping the child kills it.
        None => bail!(
            "`{}` still ran after {limit:?}; killed\n{}",
            args.join(" "),
            child.output_so_far()
        ),
    }
}

/// Whether something in `ns` listens on TCP `port`.
fn listening(ns: &Netns, port: u16) -> bool {
    ns.exec(&["ss", "-Hltn", &format!("sport = :{port}")])
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false)
}

impl Bench {
    fn new(topo: Topology, options: E2eOptions) -> Bench {
        Bench {
            topo,
            options,
            servers: Vec::new(),
            series: [
                Series::new("keep-alive requests/s", "req/s", true),
                Series::new("new connections/s", "conn/s", true),
                Series::new("throughput (iperf3)", "Gbit/s", true),
                Series::new("latency p50 at a fixed rate", "ms", false),
                Series::new("latency p99 at a fixed rate", "ms", false),
            ],
            failures: Vec::new(),
            lbd_reasons: BTreeMap::new(),
            spread: BTreeMap::new(),
        }
    }

    /// Starts nginx, iperf3, lbd and HAProxy and checks every peer answers.
    fn setup(&mut self) -> Result<()> {
        let dir = self.topo.dir().to_path_buf();
        let dir_s = dir.display().to_string();
        for i in 0..BACKENDS {
            let name = self.topo.backend_name(i);
            let conf = self
                .topo
                .write_file(&format!("nginx-{name}.conf"), &nginx_config(&dir, &name))?;
            let conf = conf.display().to_string();
            let startup_log = format!("{dir_s}/nginx-{name}.startup.log");
            let child = self.topo.backend_ns(i).spawn(&[
                "nginx",
                "-p",
                &dir_s,
                "-e",
                &startup_log,
                "-c",
                &conf,
            ])?;
            self.servers.push(child);
        }
        let port = IPERF_PORT.to_string();
        let child = self
            .topo
            .backend_ns(0)
            .spawn(&["iperf3", "-s", "-p", &port])?;
        self.servers.push(child);

        self.topo
            .try_start_lbd_with(
                [1; BACKENDS],
                &[ExtraVip {
                    name: "iperf".into(),
                    port: IPERF_PORT,
                    backends: vec![(0, IPERF_PORT, 1)],
                }],
            )
            .context("starting lbd")?;

        let cfg = self
            .topo
            .write_file("haproxy.cfg", &haproxy_config(&self.topo))?;
        let cfg = cfg.display().to_string();
        let child = self.topo.lb_ns().spawn(&["haproxy", "-db", "-f", &cfg])?;
        self.servers.push(child);

        let checks: Vec<(Option<usize>, u16)> = (0..BACKENDS)
            .map(|i| (Some(i), BACKEND_PORT))
            .chain([
                (Some(0), IPERF_PORT),
                (None, HAPROXY_PORTS.0),
                (None, HAPROXY_PORTS.1),
            ])
            .collect();
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        for (backend, port) in checks {
            let ns = match backend {
                Some(i) => self.topo.backend_ns(i),
                None => self.topo.lb_ns(),
            };
            while !listening(ns, port) {
                check_stop()?;
                for child in &mut self.servers {
                    if !child.is_running() {
                        bail!("a server exited:\n{}", child.output_so_far());
                    }
                }
                if Instant::now() >= deadline {
                    bail!(
                        "nothing listens on :{port} in {} after {LISTEN_TIMEOUT:?}",
                        ns.name()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let snat = format!("{}/24", nft_snat_addr(&self.topo));
        crate::addr(self.topo.lb_ns(), "eth1", &snat)?;
        self.topo.write_file("nft.rules", &nft_rules(&self.topo))?;

        // Every peer answers, and lbd's and nftables' reach all backends.
        for peer in Peer::ALL {
            let _nft = self.nft_if(peer)?;
            let r = self.http_client(peer, &["--count", "30", "--concurrency", "1"])?;
            if r.base.failed > 0 || r.base.ok == 0 {
                bail!(
                    "{} does not answer HTTP requests: {:?}",
                    peer.label(),
                    r.base
                );
            }
            let want = if peer == Peer::Direct { 1 } else { BACKENDS };
            if r.base.by_backend.len() != want {
                bail!(
                    "{}: answers came from {:?}, expected {want} backend(s)",
                    peer.label(),
                    r.base.by_backend
                );
            }
        }
        Ok(())
    }

    /// The nftables table while `peer` is nftables.
    fn nft_if(&self, peer: Peer) -> Result<Option<NftTable>> {
        if peer != Peer::Nftables {
            return Ok(None);
        }
        let rules = self.topo.dir().join("nft.rules");
        NftTable::add(self.topo.lb_ns(), &rules).map(Some)
    }

    /// The web target of `peer`.
    fn web_target(&self, peer: Peer) -> String {
        let vip = self.topo.vip();
        match peer {
            Peer::Direct => self.topo.backend_target(0),
            Peer::Lbd => format!("{vip}:{VIP_PORT}"),
            Peer::Haproxy => format!("{vip}:{}", HAPROXY_PORTS.0),
            Peer::Nftables => format!("{vip}:{}", NFT_PORTS.0),
        }
    }

    /// The iperf3 address and port of `peer`.
    fn iperf_target(&self, peer: Peer) -> (String, u16) {
        let vip = self.topo.vip().to_string();
        match peer {
            Peer::Direct => (self.topo.backend_addr(0).to_string(), IPERF_PORT),
            Peer::Lbd => (vip, IPERF_PORT),
            Peer::Haproxy => (vip, HAPROXY_PORTS.1),
            Peer::Nftables => (vip, NFT_PORTS.1),
        }
    }

    fn limit(&self) -> Duration {
        Duration::from_secs(self.options.secs) + RUN_GRACE
    }

    /// `lb-testkit client --http --target WEB(peer) args...` in the client
    /// namespace.
    fn http_client(&self, peer: Peer, args: &[&str]) -> Result<HttpClientReport> {
        let testkit = self.topo.binaries().testkit.display().to_string();
        let target = self.web_target(peer);
        let mut full = vec![
            testkit.as_str(),
            "client",
            "--http",
            "--target",
            &target,
            "--timeout-ms",
            "3000",
        ];
        full.extend_from_slice(args);
        let out = run_bounded(self.topo.client_ns(), &full, self.limit())?;
        let line = out
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or(&out);
        serde_json::from_str(line).map_err(|e| anyhow!("bad client report ({e}): {out}"))
    }

    fn wrk(&self, peer: Peer, secs: u64, close: bool) -> Result<WrkResult> {
        let url = format!("http://{}/", self.web_target(peer));
        let (t, c, d) = (
            format!("-t{WRK_THREADS}"),
            format!("-c{WRK_CONNECTIONS}"),
            format!("-d{secs}s"),
        );
        let mut args = vec!["wrk", &t, &c, &d];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        parse_wrk(&run_bounded(self.topo.client_ns(), &args, self.limit())?)
    }

    fn iperf(&self, peer: Peer) -> Result<f64> {
        let (addr, port) = self.iperf_target(peer);
        let (port, secs) = (port.to_string(), self.options.secs.to_string());
        let args = [
            "iperf3",
            "-c",
            &addr,
            "-p",
            &port,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        let mut child = self.topo.client_ns().spawn(&args)?;
        let status = wait_bounded(&mut child, self.limit())?;
        let out = child.stdout_so_far();
        match status {
            // iperf3 -J reports its errors in the JSON too (and exits 1).
            Some(_) => parse_iperf3(&out)
                .with_context(|| format!("`{}`: {}", args.join(" "), child.stderr_so_far())),
            None => bail!(
                "`{}` still ran after {:?}; killed",
                args.join(" "),
                self.limit()
            ),
        }
    }

    /// Records a failure.
    fn fail(&mut self, peer: Peer, what: &str, round: usize, detail: String) {
        let text = format!("round {}, {}, {what}: {detail}", round + 1, peer.label());
        eprintln!("bench e2e: {text}");
        self.failures.push(text);
    }

    /// One measurement of metric `metric` (0..4) for `peer`; failures are
    /// recorded, not returned.
    fn measure_peer(&mut self, peer: Peer, metric: usize, round: usize) {
        let secs = self.options.secs;
        match metric {
            0 | 1 => {
                let close = metric == 1;
                let what = if close {
                    "new connections"
                } else {
                    "keep-alive"
                };
                match self.wrk(peer, secs, close) {
                    Ok(r) => {
                        if r.socket_errors > 0 {
                            let t = format!("wrk socket errors: {}", r.socket_errors_text);
                            self.fail(peer, what, round, t);
                        }
                        if r.non_2xx > 0 {
                            let t = format!("{} non-2xx answers of {}", r.non_2xx, r.requests);
                            self.fail(peer, what, round, t);
                        }
                        self.series[metric].push(peer, round, Some(r.requests_per_sec));
                    }
                    Err(e) => {
                        self.fail(peer, what, round, format!("{e:#}"));
                        self.series[metric].push(peer, round, None);
                    }
                }
            }
            2 => match self.iperf(peer) {
                Ok(gbit) => self.series[2].push(peer, round, Some(gbit)),
                Err(e) => {
                    self.fail(peer, "iperf3", round, format!("{e:#}"));
                    self.series[2].push(peer, round, None);
                }
            },
            _ => {
                let rate = self.options.rate;
                let count = ((rate * secs as f64).ceil() as u64).to_string();
                let (rate_s, secs_s, workers) = (
                    rate.to_string(),
                    secs.to_string(),
                    LATENCY_WORKERS.to_string(),
                );
                let args = [
                    "--rate",
                    rate_s.as_str(),
                    "--duration-secs",
                    &secs_s,
                    "--count",
                    &count,
                    "--concurrency",
                    &workers,
                ];
                match self.http_client(peer, &args) {
                    Ok(r) => {
                        if r.base.failed > 0 {
                            let t = format!(
                                "{} of {} requests failed: {:?}",
                                r.base.failed, r.base.attempted, r.base.errors
                            );
                            self.fail(peer, "latency", round, t);
                        }
                        if r.base.slow_connects > 0 {
                            let t = format!(
                                "{} connects took ≥ 900 ms (SYN retransmitted)",
                                r.base.slow_connects
                            );
                            self.fail(peer, "latency", round, t);
                        }
                        let spread = self.spread.entry(peer).or_default();
                        for (name, n) in &r.base.by_backend {
                            *spread.entry(name.clone()).or_default() += n;
                        }
                        let ok = r.base.ok > 0;
                        self.series[3].push(peer, round, ok.then_some(r.request_ms.p50));
                        self.series[4].push(peer, round, ok.then_some(r.request_ms.p99));
                    }
                    Err(e) => {
                        self.fail(peer, "latency", round, format!("{e:#}"));
                        self.series[3].push(peer, round, None);
                        self.series[4].push(peer, round, None);
                    }
                }
            }
        }
    }

    /// lbd's reason counters (packets) now.
    fn lbd_counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .topo
            .stats()?
            .reasons
            .into_iter()
            .map(|r| (r.reason, r.packets))
            .collect())
    }

    /// lbd's log lines about backends changing health state.
    fn health_changes(&self) -> Vec<String> {
        self.topo
            .lbd_output()
            .lines()
            .filter(|l| l.contains("backend health changed"))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    fn measure(&mut self) -> Result<()> {
        let health_before = self.health_changes().len();
        if self.options.warmup_secs > 0 {
            eprintln!("bench e2e: warm-up");
            for peer in Peer::ALL {
                check_stop()?;
                let nft = self.nft_if(peer)?;
                let r = self.wrk(peer, self.options.warmup_secs, false);
                drop(nft);
                r.with_context(|| format!("warm-up of {}", peer.label()))?;
            }
        }
        const METRICS: [&str; 4] = ["keep-alive", "new connections", "iperf3", "latency"];
        for round in 0..self.options.rounds {
            let mut order = Peer::ALL.to_vec();
            order.rotate_left(round % Peer::ALL.len());
            for (metric, name) in METRICS.iter().enumerate() {
                eprintln!(
                    "bench e2e: round {}/{}, {name}",
                    round + 1,
                    self.options.rounds
                );
                for &peer in &order {
                    let before = if peer == Peer::Lbd {
                        Some(self.lbd_counters()?)
                    } else {
                        None
                    };
                    check_stop()?;
                    let nft = self.nft_if(peer)?;
                    self.measure_peer(peer, metric, round);
                    drop(nft);
                    check_stop()?;
                    if let Some(before) = before {
                        for (reason, after) in self.lbd_counters()? {
                            let d = after.saturating_sub(before.get(&reason).copied().unwrap_or(0));
                            *self.lbd_reasons.entry(reason).or_default() += d;
                        }
                    }
                }
            }
        }
        // Health checks that failed under load would have taken backends
        // out of lbd's rings mid-run.
        for line in self.health_changes().into_iter().skip(health_before) {
            self.failures.push(format!("lbd: {line}"));
        }
        Ok(())
    }

    fn diagnostics(&self) -> String {
        let mut s = self.topo.diagnostics();
        for child in &self.servers {
            let _ = write!(s, "\n{}", child.output_so_far());
        }
        s
    }
}

/// nginx for backend `name`: one worker, answering every request with its
/// name; its files in `dir`.
pub fn nginx_config(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "# nginx of backend {name} for lb's end-to-end benchmark
worker_processes 1;
daemon off;
pid {d}/nginx-{name}.pid;
error_log {d}/nginx-{name}.error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/nginx-{name}-body;
    proxy_temp_path {d}/nginx-{name}-proxy;
    fastcgi_temp_path {d}/nginx-{name}-fastcgi;
    uwsgi_temp_path {d}/nginx-{name}-uwsgi;
    scgi_temp_path {d}/nginx-{name}-scgi;
    server {{
        listen 0.0.0.0:{BACKEND_PORT} backlog=4096;
        default_type text/plain;
        location / {{
            return 200 \"{name}\\n\";
        }}
    }}
}}
"
    )
}

/// HAProxy in TCP mode on the VIP address of `topo`.
pub fn haproxy_config(topo: &Topology) -> String {
    let vip = topo.vip();
    let mut s = format!(
        "# HAProxy (tcp mode) for lb's end-to-end benchmark
global
    nbthread 2
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend web
    bind {vip}:{}
    default_backend web

backend web
    balance roundrobin
",
        HAPROXY_PORTS.0
    );
    for i in 0..BACKENDS {
        let _ = writeln!(
            s,
            "    server {} {}",
            topo.backend_name(i),
            topo.backend_target(i)
        );
    }
    let _ = write!(
        s,
        "
frontend iperf
    bind {vip}:{}
    default_backend iperf

backend iperf
    server b1 {}:{IPERF_PORT}
",
        HAPROXY_PORTS.1,
        topo.backend_addr(0)
    );
    s
}

/// The address nftables SNATs to (on the load balancer's `eth1`).
pub fn nft_snat_addr(topo: &Topology) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, topo.net(), 2, NFT_SNAT_HOST)
}

/// The nftables NAT table: DNAT of the VIP's ports 82 and 5203, SNAT of that
/// traffic to an address of the load balancer's own, 10.X.2.20. (Not lbd's
/// NAT address: replies to it in lbd's NAT port range belong to the XDP
/// program. Not HAProxy's either, see [`NFT_SNAT_HOST`].)
pub fn nft_rules(topo: &Topology) -> String {
    let vip = topo.vip();
    let backends: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{i} : {}", topo.backend_addr(i)))
        .collect();
    format!(
        "table ip {NFT_TABLE} {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {vip} tcp dport {} dnat to numgen random mod {BACKENDS} map {{ {} }} : {BACKEND_PORT}
        ip daddr {vip} tcp dport {} dnat to {}:{IPERF_PORT}
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr {}/24 ct status dnat snat to {}
    }}
}}
",
        NFT_PORTS.0,
        backends.join(", "),
        NFT_PORTS.1,
        topo.backend_addr(0),
        topo.backend_addr(0),
        nft_snat_addr(topo),
    )
}

/// First lines of the peers' `--version` outputs.
fn versions() -> Vec<String> {
    let cmds: [(&str, &str); 5] = [
        ("nginx", "-v"),
        ("haproxy", "-v"),
        ("nft", "--version"),
        ("wrk", "--version"),
        ("iperf3", "--version"),
    ];
    cmds.iter()
        .filter_map(|(prog, arg)| {
            let out = Command::new(prog).arg(arg).output().ok()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The report

/// The targets of the issue: lbd's minimum ratio to direct per rate metric.
pub const TARGETS: [(&str, f64); 3] = [
    ("keep-alive requests/s", 0.98),
    ("new connections/s", 0.95),
    ("throughput (iperf3)", 0.9),
];

fn ratio_text(r: Option<f64>) -> String {
    r.map(|r| format!("{:.2}×", r))
        .unwrap_or_else(|| "n/a".into())
}

fn value_text(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "n/a".into())
}

/// The Markdown section and the SVG charts (file name, content).
pub fn render(r: &E2eResults) -> (String, Vec<(String, String)>) {
    let o = &r.options;
    let mut md = String::new();
    let mut svgs = Vec::new();
    let _ = writeln!(
        md,
        "## End to end: client → load balancer → 3 backends, in namespaces\n"
    );
    let _ = writeln!(
        md,
        "Each peer is measured in the same run; every ratio is to **direct** (the \
         client talking to backend 1 itself, routed through the load balancer \
         namespace's kernel). {} round(s); in each round every metric is measured \
         for every peer back to back, in an order rotated per round. Values are \
         medians over the rounds; ratios are medians of the per-round ratios \
         (min–max in brackets when there are several rounds). Section time: {:.0} s.\n",
        o.rounds,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "Method:\n");
    let _ = writeln!(
        md,
        "- Backends: nginx, one worker each, answering `GET /` with its name; \
         `iperf3 -s` in backend 1. TX checksum offload is off on the client's and \
         the backends' interfaces (as in all lb topologies), so there is no TSO."
    );
    let _ = writeln!(
        md,
        "- keep-alive requests/s: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s`; \
         new connections/s: the same with `-H \"Connection: close\"`; throughput: \
         `iperf3 -t {}` (received bits/s, one stream); latency: `lb-testkit client \
         --http` at a fixed {} requests/s for {} s, a new connection per request, \
         time from connect to the end of the response.",
        o.secs,
        o.secs,
        fmt_num(o.rate),
        o.secs
    );
    let _ = writeln!(
        md,
        "- lbd: VIP :{VIP_PORT} → the 3 backends :8080 (weights 1:1:1), VIP \
         :{IPERF_PORT} → backend 1. HAProxy: TCP mode, `nbthread 2`, round robin, \
         on the VIP address :{} / :{}. nftables: DNAT `numgen random mod 3` on \
         :{} / :{}, SNAT to an address of the load balancer used by nothing \
         else; the table exists only while nftables is measured (so conntrack is \
         off for the others). Each peer has its own source address toward the \
         backends (the backends' `TIME_WAIT` tuples of one peer would otherwise \
         fail the PAWS check for another's SYNs).",
        HAPROXY_PORTS.0, HAPROXY_PORTS.1, NFT_PORTS.0, NFT_PORTS.1
    );
    let _ = writeln!(
        md,
        "- **Asymmetry:** direct uses one backend (one nginx worker), the load \
         balancers spread requests over three. On this machine everything (load \
         generator, load balancer, servers) shares the same {} CPUs, so three \
         nginx workers do not triple the capacity, but they do change the \
         picture: a load balancer's ratio can exceed 1×.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if !r.versions.is_empty() {
        let _ = writeln!(md, "- Versions: {}.", r.versions.join("; "));
    }
    md.push('\n');

    // Summary table of ratios.
    let _ = writeln!(md, "### Ratios to direct\n");
    let _ = writeln!(
        md,
        "| metric | lbd | HAProxy | nftables | lbd target |\n|---|---:|---:|---:|---|"
    );
    let all = [
        &r.keepalive,
        &r.newconn,
        &r.throughput,
        &r.latency_p50,
        &r.latency_p99,
    ];
    for s in all {
        let target = TARGETS
            .iter()
            .find(|(n, _)| *n == s.name)
            .map(|(_, t)| {
                let met = s.ratio(Peer::Lbd).is_some_and(|v| v >= *t);
                format!("≥ {t:.2}× ({})", if met { "met" } else { "**missed**" })
            })
            .unwrap_or_else(|| "(lower is better)".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {target} |",
            s.name,
            ratio_text(s.ratio(Peer::Lbd)),
            ratio_text(s.ratio(Peer::Haproxy)),
            ratio_text(s.ratio(Peer::Nftables)),
        );
    }
    let mut bars = Vec::new();
    for s in r.rates() {
        for peer in [Peer::Lbd, Peer::Haproxy, Peer::Nftables] {
            if let Some(v) = s.ratio(peer) {
                bars.push((format!("{} · {}", peer.short(), s.name), v));
            }
        }
    }
    svgs.push((
        "e2e-ratios.svg".to_owned(),
        bar_chart("End to end: ratio to direct (higher is better)", "×", &bars),
    ));
    let _ = writeln!(md, "\n![ratios to direct](e2e-ratios.svg)\n");

    // One table per metric.
    for (s, file) in [
        (&r.keepalive, Some("e2e-keepalive.svg")),
        (&r.newconn, Some("e2e-newconn.svg")),
        (&r.throughput, Some("e2e-throughput.svg")),
        (&r.latency_p50, None),
        (&r.latency_p99, None),
    ] {
        let _ = writeln!(md, "### {}\n", s.name);
        let _ = writeln!(
            md,
            "| peer | median {} | per round | ratio to direct |\n|---|---:|---|---:|",
            s.unit
        );
        for peer in Peer::ALL {
            let rounds: Vec<String> = s.values[peer.index()]
                .iter()
                .map(|v| value_text(*v))
                .collect();
            let ratios = s.ratios(peer);
            let mut ratio = ratio_text(s.ratio(peer));
            if ratios.len() > 1 {
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(0.0, f64::max);
                let _ = write!(ratio, " ({lo:.2}–{hi:.2})");
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} |",
                peer.label(),
                value_text(s.median(peer)),
                rounds.join(", ")
            );
        }
        if let Some(file) = file {
            let bars: Vec<(String, f64)> = Peer::ALL
                .iter()
                .filter_map(|&p| Some((p.label().to_owned(), s.median(p)?)))
                .collect();
            svgs.push((
                file.to_owned(),
                bar_chart(&format!("{} (median)", s.name), s.unit, &bars),
            ));
            let _ = writeln!(md, "\n![{}]({file})", s.name);
        }
        md.push('\n');
    }
    let bars: Vec<(String, f64)> = Peer::ALL
        .iter()
        .flat_map(|&p| {
            [(&r.latency_p50, "p50"), (&r.latency_p99, "p99")]
                .into_iter()
                .filter_map(move |(s, q)| Some((format!("{} {q}", p.short()), s.median(p)?)))
        })
        .collect();
    svgs.push((
        "e2e-latency.svg".to_owned(),
        bar_chart(
            &format!(
                "Request latency at {} req/s, new connection each (median of rounds)",
                fmt_num(o.rate)
            ),
            "ms",
            &bars,
        ),
    ));
    let _ = writeln!(md, "![latency](e2e-latency.svg)\n");

    // Spread over the backends.
    let _ = writeln!(
        md,
        "Answers per backend in the latency runs: {}.\n",
        r.spread
            .iter()
            .map(|(p, m)| {
                let per: Vec<String> = m.iter().map(|(b, n)| format!("{b} {n}")).collect();
                format!("{} {}", p.short(), per.join(" / "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Failures.
    let _ = writeln!(md, "### Failures\n");
    if r.failures.is_empty() {
        let _ = writeln!(
            md,
            "None: no failed run, no failed request, no socket error, no non-2xx \
             answer, no connect needing a SYN retransmission.\n"
        );
    } else {
        for f in &r.failures {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }

    // lbd's counters.
    let _ = writeln!(md, "### lbd's reason counters during its runs\n");
    let _ = writeln!(md, "| reason | packets |\n|---|---:|");
    for (reason, n) in &r.lbd_reasons {
        let _ = writeln!(md, "| {reason} | {n} |");
    }
    let suspicious: Vec<&(String, u64)> = r
        .lbd_reasons
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") || k == "pass_no_neigh" || k == "pass_fib_other")
        .collect();
    if suspicious.is_empty() {
        let _ = writeln!(
            md,
            "\nNo drops, and no packet fell back to the kernel for a missing \
             neighbour or route (`pass_no_neigh`, `pass_fib_other`).\n"
        );
    } else {
        let list: Vec<String> = suspicious
            .iter()
            .map(|(k, n)| format!("`{k}` {n}"))
            .collect();
        let _ = writeln!(
            md,
            "\nWorth a look: {} (expected ~0 in steady state).",
            list.join(", ")
        );
        let lbd_failed = r.failures.iter().any(|f| f.contains(Peer::Lbd.label()));
        if lbd_failed && suspicious.iter().any(|(k, _)| k == "drop_nat_miss") {
            let _ = writeln!(
                md,
                "`drop_nat_miss` means replies from a backend that lbd could not map \
                 back to a client. Together with lbd's failed requests above it points \
                 at replies of new connections being dropped: a lost SYN-ACK makes \
                 the client retransmit its SYN after 1 s, then 3 s."
            );
        }
        md.push('\n');
    }

    // Interpretation.
    let _ = writeln!(md, "### Reading the numbers\n");
    for (name, target) in TARGETS {
        let Some(s) = r.rates().into_iter().find(|s| s.name == name) else {
            continue;
        };
        let lbd = s.ratio(Peer::Lbd);
        let verdict = match lbd {
            Some(v) if v >= target => "meets",
            Some(_) => "misses",
            None => "could not be checked against",
        };
        let mut line = format!(
            "- {name}: lbd {} {verdict} the target ≥ {target:.2}×",
            ratio_text(lbd)
        );
        for peer in [Peer::Haproxy, Peer::Nftables] {
            if let (Some(l), Some(p)) = (lbd, s.ratio(peer)) {
                let cmp = if l > p * 1.02 {
                    "above"
                } else if l < p * 0.98 {
                    "below"
                } else {
                    "about level with"
                };
                let _ = write!(line, "; {cmp} {} ({})", peer.short(), ratio_text(Some(p)));
            }
        }
        let spread = s.ratios(Peer::Lbd);
        if spread.len() > 1 {
            let lo = spread.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = spread.iter().copied().fold(0.0, f64::max);
            let _ = write!(line, "; lbd's per-round ratios {lo:.2}–{hi:.2}");
            if lo < target {
                let _ = write!(line, ", so not every round met the target");
            }
        }
        let _ = writeln!(md, "{line}.");
    }
    let _ = writeln!(
        md,
        "- Ratios above 1× (keep-alive above all) come from the asymmetry: the \
         load balancers have three nginx workers behind them, direct has one. The \
         targets are therefore easier to meet here than against a direct run over \
         three backends; the comparison between lbd, HAProxy and nftables is fair, \
         as all three spread over the same three backends."
    );
    let _ = writeln!(
        md,
        "- Latency: lbd's p50/p99 are {} / {} of direct's (HAProxy {} / {}, \
         nftables {} / {}).",
        ratio_text(r.latency_p50.ratio(Peer::Lbd)),
        ratio_text(r.latency_p99.ratio(Peer::Lbd)),
        ratio_text(r.latency_p50.ratio(Peer::Haproxy)),
        ratio_text(r.latency_p99.ratio(Peer::Haproxy)),
        ratio_text(r.latency_p50.ratio(Peer::Nftables)),
        ratio_text(r.latency_p99.ratio(Peer::Nftables)),
    );
    let _ = writeln!(
        md,
        "- These are namespace-and-veth numbers on a small shared VM: the client, \
         the load balancer and the servers compete for the same CPUs, so a load \
         balancer that costs CPU also slows the load generator and the servers. \
         They compare the peers with each other on this machine; they do not \
         predict absolute numbers on EC2.\n"
    );
    (md, svgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 5s test @ http://10.1.1.100/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   700.00us  200.00us   5.00ms   90.00%
    Req/Sec    23.00k     1.00k   25.00k    70.00%
  230123 requests in 5.00s, 33.00MB read
  Socket errors: connect 0, read 12, write 1, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec:  46024.60
Transfer/sec:      6.60MB
";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 230_123);
        assert_eq!(r.socket_errors, 13);
        assert_eq!(r.non_2xx, 5);
        assert!((r.requests_per_sec - 46_024.6).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn iperf3_json_parses() {
        let ok = r#"{"start":{},"end":{"sum_received":{"bits_per_second":16000000000.0}}}"#;
        assert!((parse_iperf3(ok).unwrap() - 16.0).abs() < 1e-9);
        let err = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
        assert!(parse_iperf3(err)
            .unwrap_err()
            .to_string()
            .contains("unable"));
        assert!(parse_iperf3("x").is_err());
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let mut s = Series::new("m", "u", true);
        for (round, (d, l)) in [(10.0, 9.0), (20.0, 20.0), (10.0, 12.0)].iter().enumerate() {
            s.push(Peer::Direct, round, Some(*d));
            s.push(Peer::Lbd, round, Some(*l));
        }
        s.push(Peer::Haproxy, 1, Some(5.0));
        assert_eq!(s.ratios(Peer::Lbd), vec![0.9, 1.0, 1.2]);
        assert_eq!(s.ratio(Peer::Lbd), Some(1.0));
        assert_eq!(s.ratio(Peer::Haproxy), Some(0.25));
        assert_eq!(s.ratio(Peer::Nftables), None);
        assert_eq!(s.median(Peer::Direct), Some(10.0));
    }

    #[test]
    fn http_report_keeps_the_client_fields() {
        let json = r#"{"attempted":3,"ok":3,"failed":0,"errors":{},"by_backend":{"b1":3},
            "connect_ms":{"p50":0.1,"p99":0.2,"max":0.3},"slow_connects":0,"elapsed_ms":5,
            "request_ms":{"p50":0.4,"p99":0.5,"max":0.6},"by_status":{"200":3}}"#;
        let r: HttpClientReport = serde_json::from_str(json).unwrap();
        assert_eq!(r.base.ok, 3);
        assert_eq!(r.base.by_backend["b1"], 3);
        assert_eq!(r.request_ms.p99, 0.5);
        assert_eq!(r.by_status["200"], 3);
    }

    #[test]
    fn report_renders_with_missing_values() {
        let mut r = E2eResults {
            options: E2eOptions::new(true),
            keepalive: Series::new("keep-alive requests/s", "req/s", true),
            newconn: Series::new("new connections/s", "conn/s", true),
            throughput: Series::new("throughput (iperf3)", "Gbit/s", true),
            latency_p50: Series::new("latency p50 at a fixed rate", "ms", false),
            latency_p99: Series::new("latency p99 at a fixed rate", "ms", false),
            failures: vec!["round 1, lbd (XDP), iperf3: boom".into()],
            lbd_reasons: vec![("redirect_forward".into(), 10), ("drop_nat_miss".into(), 1)],
            spread: BTreeMap::new(),
            versions: vec![],
            elapsed: Duration::from_secs(3),
        };
        for peer in Peer::ALL {
            r.keepalive.push(peer, 0, Some(100.0));
        }
        r.throughput.push(Peer::Lbd, 0, None);
        let (md, svgs) = render(&r);
        assert!(md.contains("| keep-alive requests/s | 1.00× | 1.00× | 1.00× | ≥ 0.98× (met) |"));
        assert!(md.contains("**missed**"));
        assert!(md.contains("boom"));
        assert!(md.contains("`drop_nat_miss` 1"));
        assert!(svgs.iter().any(|(n, _)| n == "e2e-ratios.svg"));
        for (_, svg) in &svgs {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        }
    }
}
