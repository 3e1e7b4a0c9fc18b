//! The failover benchmark: how long traffic to a VIP stops when the master of
//! a VRRP pair loses its link, and how many open connections survive it.
//! Peers: keepalived (unicast VRRPv3, the tool lb replaces) and an lbd pair,
//! at the same advertisement intervals and priorities (101/100).
//!
//! keepalived's topology, all in namespaces made here: a client, two
//! load-balancer hosts and a switch (a bridge) joining them on one /24. Both
//! hosts run a server on the VIP's port; whichever holds the VIP answers
//! (as HAProxy on the master would: connections end on the box that fails).
//! lbd's is [`crate::pair`]: the same segment with three backends behind the
//! VIP, the VIP and the NAT source floating.
//!
//! The client holds 30 connections open through the VIP, each exchanging a
//! line every 100 ms, and starts a short TCP exchange with the VIP every
//! 10 ms; one second in, the master's interface goes down. The gap is the
//! longest time between two probes that were answered, less the probe
//! interval: zero when nothing is lost. A held connection survives if every
//! one of its exchanges succeeded, before and after the failover.

use std::{fmt::Write as _, fs, path::PathBuf, time::Duration};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    netns::{self, unique_prefix, wait_until, Child, Netns},
    pair::{self, Pair},
    topology::{default_bin_dir, default_ebpf_object, Binaries},
};

const SUBNET: &str = "10.9.0";
const VIP: &str = "10.9.0.100";
const PORT: u16 = 7000;
const PROBE_INTERVAL_MS: u64 = 10;
/// Connections held open across the failover.
const HELD: u64 = 30;
/// When the master's link goes down, after the probes start.
const FAIL_AT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// VRRP advertisement intervals to measure, in milliseconds.
    pub adverts_ms: Vec<u64>,
    /// Measurements per interval, each on a fresh topology.
    pub rounds: usize,
}

impl FailoverOptions {
    pub fn new(quick: bool) -> FailoverOptions {
        if quick {
            FailoverOptions {
                adverts_ms: vec![100],
                rounds: 1,
            }
        } else {
            FailoverOptions {
                adverts_ms: vec![1000, 100],
                rounds: 3,
            }
        }
    }
}

/// The gaps measured for one peer at one advert interval.
#[derive(Clone, Debug)]
pub struct Gaps {
    pub peer: &'static str,
    pub advert_ms: u64,
    /// One per round, in milliseconds.
    pub gaps_ms: Vec<f64>,
    /// Held connections that survived, one per round (of [`HELD`]).
    pub survived: Vec<u64>,
}

/// What one round measured.
struct Round {
    gap_ms: f64,
    survived: u64,
}

#[derive(Clone, Debug, Default)]
pub struct FailoverResults {
    pub gaps: Vec<Gaps>,
    pub keepalived_version: String,
    /// EC2 takeover times, per peer (milliseconds, one per round).
    pub ec2: Vec<(&'static str, Vec<f64>)>,
    /// lbd: from a healed VRRP partition (both were master, the loser had
    /// moved the Elastic IP) until the Elastic IP is back on the winner
    /// (milliseconds, one per round).
    pub ec2_reconcile: Vec<f64>,
}

/// The advert interval of the EC2 takeover rounds.
const EC2_ADVERT_MS: u64 = 100;

/// Probe start times (ms) and who answered (`None`: lost), in start order,
/// as `lb-testkit probe` prints them.
pub type Probes = Vec<(f64, Option<String>)>;

pub fn parse_probes(json: &str) -> Result<Probes> {
    #[derive(serde::Deserialize)]
    struct Out {
        probes: Vec<(f64, Option<String>)>,
    }
    let out: Out = serde_json::from_str(json.trim()).context("parsing lb-testkit probe output")?;
    Ok(out.probes)
}

/// What a probe run says about one failover.
#[derive(Clone, Debug, PartialEq)]
pub struct Outage {
    /// The longest time between two answered probes, less the interval.
    pub gap_ms: f64,
    /// Who answered first and last.
    pub first: String,
    pub last: String,
}

pub fn outage(probes: &Probes, interval_ms: f64) -> Result<Outage> {
    let answered: Vec<(f64, &str)> = probes
        .iter()
        .filter_map(|(t, name)| name.as_deref().map(|n| (*t, n)))
        .collect();
    ensure!(
        answered.len() >= 2,
        "only {} of {} probes were answered",
        answered.len(),
        probes.len()
    );
    let longest = answered
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0f64, f64::max);
    Ok(Outage {
        gap_ms: (longest - interval_ms).max(0.0),
        first: answered[0].1.to_owned(),
        last: answered[answered.len() - 1].1.to_owned(),
    })
}

/// keepalived's configuration for one side of the pair.
pub fn keepalived_config(me: u8, peer: u8, priority: u8, advert_ms: u64) -> String {
    format!(
        "global_defs {{\n  router_id lb{me}\n  vrrp_version 3\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {advert}\n  unicast_src_ip {SUBNET}.{me}\n  \
         unicast_peer {{\n    {SUBNET}.{peer}\n  }}\n  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  \
         }}\n}}\n",
        advert = advert_ms as f64 / 1000.0,
    )
}

/// One side of a pair: its namespace and the processes in it (stopped first).
struct Side {
    _server: Child,
    vrrp: Child,
    ns: Netns,
}

fn has_vip(ns: &Netns) -> bool {
    ns.ip(&["-br", "addr", "show", "dev", "eth0"])
        .map(|out| out.contains(&format!("{VIP}/")))
        .unwrap_or(false)
}

/// One failover of a keepalived pair at `advert_ms`.
fn keepalived_round(testkit: &str, advert_ms: u64, dir: &std::path::Path) -> Result<Round> {
    let prefix = unique_prefix("failover");
    let switch = Netns::new(&format!("{prefix}sw"))?;
    let client = Netns::new(&format!("{prefix}c"))?;
    switch.ip(&["link", "add", "br0", "type", "bridge"])?;
    switch.ip(&["link", "set", "br0", "up"])?;
    netns::veth(&client, "eth0", &switch, "pc")?;
    switch.ip(&["link", "set", "pc", "master", "br0"])?;
    netns::addr(&client, "eth0", &format!("{SUBNET}.10/24"))?;

    let mut sides = Vec::new();
    for (me, peer, priority) in [(21u8, 22u8, 101u8), (22, 21, 100)] {
        let ns = Netns::new(&format!("{prefix}l{me}"))?;
        let port = format!("p{me}");
        netns::veth(&ns, "eth0", &switch, &port)?;
        switch.ip(&["link", "set", &port, "master", "br0"])?;
        netns::addr(&ns, "eth0", &format!("{SUBNET}.{me}/24"))?;
        let conf = dir.join(format!("keepalived-{me}.conf"));
        fs::write(&conf, keepalived_config(me, peer, priority, advert_ms))?;
        let file = |name: &str| dir.join(format!("{name}-{me}.pid")).display().to_string();
        let listen = format!("0.0.0.0:{PORT}");
        let mut server = ns.spawn(&[
            testkit,
            "serve",
            "--listen",
            &listen,
            "--name",
            &format!("lb{me}"),
        ])?;
        server.wait_for_stdout("ready", Duration::from_secs(20))?;
        let conf = conf.display().to_string();
        let vrrp = ns.spawn(&[
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            &conf,
            "--pid",
            &file("keepalived"),
            "--vrrp_pid",
            &file("vrrp"),
        ])?;
        sides.push(Side {
            _server: server,
            vrrp,
            ns,
        });
    }
    let master = &sides[0].ns;
    // Both start as backups; the higher priority takes over after the
    // master-down interval (3 adverts and a skew).
    let outcome = wait_until(
        Duration::from_millis(advert_ms * 4 + 10_000),
        "the VIP on the first keepalived",
        || has_vip(master),
    )
    .and_then(|()| {
        fail_master(
            testkit,
            advert_ms,
            &client,
            &format!("{VIP}:{PORT}"),
            || master.ip(&["link", "set", "eth0", "down"]).map(|_| ()),
        )
    })
    .and_then(|(o, survived)| {
        if o.first != "lb21" || o.last != "lb22" {
            bail!(
                "no failover seen: first answer from {}, last from {}",
                o.first,
                o.last
            );
        }
        Ok(Round {
            gap_ms: o.gap_ms,
            survived,
        })
    });
    // keepalived's own account, when something went wrong.
    outcome.map_err(|e| {
        let logs: Vec<String> = sides
            .iter()
            .map(|s| {
                format!(
                    "--- keepalived in {}:\n{}{}",
                    s.ns.name(),
                    s.vrrp.stdout_so_far(),
                    s.vrrp.stderr_so_far()
                )
            })
            .collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })
}

/// Holds connections and probes `target` from `client`, runs `fail` one
/// second in, and returns what the probes saw and how many held
/// connections survived.
fn fail_master(
    testkit: &str,
    advert_ms: u64,
    client: &Netns,
    target: &str,
    fail: impl FnOnce() -> Result<()>,
) -> Result<(Outage, u64)> {
    let secs = FAIL_AT.as_secs_f64() + (advert_ms * 4) as f64 / 1000.0 + 2.0;
    let mut hold = client.spawn(&[
        testkit,
        "hold",
        "--target",
        target,
        "--connections",
        &HELD.to_string(),
        "--interval-ms",
        "100",
        "--duration-secs",
        &format!("{:.2}", secs + 2.0),
    ])?;
    hold.wait_for_stdout("ready", Duration::from_secs(30))
        .with_context(|| format!("holding connections: {}", hold.stderr_so_far()))?;
    let mut probe = client.spawn(&[
        testkit,
        "probe",
        "--target",
        target,
        "--interval-ms",
        &PROBE_INTERVAL_MS.to_string(),
        "--duration-secs",
        &format!("{secs:.2}"),
    ])?;
    std::thread::sleep(FAIL_AT);
    fail()?;
    let status = probe
        .wait_timeout(Duration::from_secs_f64(secs + 30.0))?
        .context("lb-testkit probe did not finish")?;
    ensure!(
        status.success(),
        "lb-testkit probe failed: {}",
        probe.stderr_so_far()
    );
    let o = outage(
        &parse_probes(&probe.stdout_so_far())?,
        PROBE_INTERVAL_MS as f64,
    )?;
    hold.wait_timeout(Duration::from_secs_f64(secs + 60.0))?
        .context("lb-testkit hold did not finish")?;
    let survived = parse_hold(&hold.stdout_so_far())?;
    Ok((o, survived))
}

/// The `survived` count of an `lb-testkit hold` report.
pub fn parse_hold(out: &str) -> Result<u64> {
    let line = out
        .lines()
        .last()
        .context("lb-testkit hold printed nothing")?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
    v["survived"]
        .as_u64()
        .with_context(|| format!("no survived count in {line:?}"))
}

/// One failover of an lbd pair at `advert_ms`.
fn lbd_round(advert_ms: u64) -> Result<Round> {
    let bins = Binaries::locate(&default_bin_dir(), &default_ebpf_object())?;
    let testkit = bins.testkit.display().to_string();
    let prefix = unique_prefix("lbdfail");
    let net = crate::topology::subnet_byte(&prefix);
    let mut pair = Pair::new(&prefix, net, bins)?;
    let outcome = (|| -> Result<Round> {
        pair.start_lbd(0, &pair::Side::new(101, advert_ms))?;
        pair.start_lbd(1, &pair::Side::new(100, advert_ms))?;
        let election = Duration::from_millis(advert_ms * 4 + 10_000);
        pair.wait_state(0, "master", election)?;
        pair.wait_state(1, "backup", election)?;
        // Backends up on both (their first checks pass within a second).
        wait_until(Duration::from_secs(20), "backends up on both sides", || {
            (0..2).all(|side| {
                pair.status(side)
                    .map(|s| s.backends_up as usize == crate::pair::BACKENDS)
                    .unwrap_or(false)
            })
        })?;
        let target = pair.vip_target();
        let (o, survived) = fail_master(&testkit, advert_ms, pair.client_ns(), &target, || {
            pair.fail_link(0)
        })?;
        let state = pair.vrrp_status(1)?.state;
        ensure!(state == "master", "no failover seen: side 1 is {state}");
        Ok(Round {
            gap_ms: o.gap_ms,
            survived,
        })
    })();
    if outcome.is_err() {
        eprintln!("{}", pair.diagnostics());
    }
    outcome
}

/// One EC2 takeover: the master's link goes down, and the time until EC2
/// (moto) reports the Elastic IP on the backup's network interface. lbd
/// does it with `[vrrp.ec2]`; keepalived with a `notify_master` script, the
/// glue lb replaces (a Python program making the same two calls with boto3,
/// as the AWS CLI would).
fn ec2_round(lbd: bool) -> Result<f64> {
    let bins = Binaries::locate(&default_bin_dir(), &default_ebpf_object())?;
    let prefix = unique_prefix("ec2fail");
    let net = crate::topology::subnet_byte(&prefix);
    let mut pair = Pair::new(&prefix, net, bins)?;
    let outcome = (|| -> Result<f64> {
        let moto = pair.start_moto()?;
        let sides = [
            pair::Side::new(101, EC2_ADVERT_MS),
            pair::Side::new(100, EC2_ADVERT_MS),
        ];
        let election = Duration::from_millis(EC2_ADVERT_MS * 4 + 10_000);
        if lbd {
            pair.set_lbd_env(&[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ]);
            for (side, s) in sides.iter().enumerate() {
                let text = pair.lbd_config_with(side, s, &pair.ec2_table(&moto, side));
                pair.start_lbd_config(side, &text)?;
            }
        } else {
            let python = moto.venv.join("bin/python");
            for (side, s) in sides.iter().enumerate() {
                let script = pair.dir().join(format!("notify-master-{side}.sh"));
                fs::write(
                    &script,
                    format!(
                        "#!/bin/sh\nexec {} {} {} takeover {} {} {} {}\n",
                        python.display(),
                        pair::moto_script().display(),
                        pair.moto_endpoint(),
                        moto.enis[side],
                        moto.allocation,
                        pair.vip(),
                        pair.nat_source()
                    ),
                )?;
                fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
                let mut s = s.clone();
                s.keepalived_notify = Some(script);
                pair.start_keepalived(side, &s)?;
            }
        }
        let on = |side: usize| {
            pair.moto_ec2(&moto, &["where", &moto.allocation])
                .map(|w| w["eip_interface"] == moto.enis[side].as_str())
                .unwrap_or(false)
        };
        // Settle the election first: two keepalived starting together may
        // both be master for a moment and both run their scripts, which then
        // race (the glue's own hazard). Whatever happened, the measurement
        // starts from side 0 master with the addresses on its interface.
        if lbd {
            pair.wait_state(0, "master", election)?;
            pair.wait_state(1, "backup", election)?;
        } else {
            wait_until(election, "the VIP on the first keepalived", || {
                pair.holds(0, pair.vip()) && !pair.holds(1, pair.vip())
            })?;
        }
        std::thread::sleep(Duration::from_secs(2));
        pair.moto_ec2(
            &moto,
            &[
                "takeover",
                &moto.enis[0],
                &moto.allocation,
                &pair.vip().to_string(),
                &pair.nat_source().to_string(),
            ],
        )?;
        wait_until(election, "the Elastic IP on the first master", || on(0))?;
        let python = moto.venv.join("bin/python").display().to_string();
        let script = pair::moto_script().display().to_string();
        let mut waiter = pair.switch_ns().spawn(&[
            &python,
            &script,
            "http://127.0.0.1:5000",
            "wait",
            &moto.allocation,
            &moto.enis[1],
        ])?;
        waiter.wait_for_stdout("ready", Duration::from_secs(30))?;
        pair.fail_link(0)?;
        let status = waiter
            .wait_timeout(Duration::from_secs(90))?
            .context("the Elastic IP did not move within 90 s")?;
        ensure!(
            status.success(),
            "waiting for the Elastic IP to move failed: {}",
            waiter.output_so_far()
        );
        let out = waiter.stdout_so_far();
        let line = out.lines().last().unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        v["ms"].as_f64().context("no time in the waiter's report")
    })();
    if outcome.is_err() {
        eprintln!("{}", pair.diagnostics());
    }
    outcome
}

/// How long the Elastic IP stays on the loser after a VRRP partition heals:
/// an lbd pair with `[vrrp.ec2]` at its defaults (30 s reconcile, 10 s
/// hold-down), both sides cut off from each other's advertisements until
/// the backup has become master and moved the Elastic IP to itself; then
/// the time from healing until EC2 (moto) shows it on the winner again.
fn ec2_reconcile_round() -> Result<f64> {
    let bins = Binaries::locate(&default_bin_dir(), &default_ebpf_object())?;
    let prefix = unique_prefix("ec2heal");
    let net = crate::topology::subnet_byte(&prefix);
    let mut pair = Pair::new(&prefix, net, bins)?;
    let outcome = (|| -> Result<f64> {
        let moto = pair.start_moto()?;
        let sides = [
            pair::Side::new(101, EC2_ADVERT_MS),
            pair::Side::new(100, EC2_ADVERT_MS),
        ];
        for (side, s) in sides.iter().enumerate() {
            let table = format!(
                "\n[vrrp.ec2]\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
                 elastic_ip_allocation_id = \"{}\"",
                pair.moto_endpoint(),
                moto.allocation
            );
            let text = pair.lbd_config_with(side, s, &table);
            pair.start_lbd_config(side, &text)?;
        }
        let election = Duration::from_millis(EC2_ADVERT_MS * 4 + 10_000);
        pair.wait_state(0, "master", election)?;
        pair.wait_state(1, "backup", election)?;
        let on = |side: usize| {
            pair.moto_ec2(&moto, &["where", &moto.allocation])
                .map(|w| w["eip_interface"] == moto.enis[side].as_str())
                .unwrap_or(false)
        };
        wait_until(election, "the Elastic IP on the first master", || on(0))?;
        pair.cut_vrrp_from(0, true)?;
        pair.cut_vrrp_from(1, true)?;
        pair.wait_state(1, "master", election)?;
        wait_until(
            Duration::from_secs(30),
            "the Elastic IP on the loser",
            || on(1),
        )?;
        let python = moto.venv.join("bin/python").display().to_string();
        let script = pair::moto_script().display().to_string();
        let mut waiter = pair.switch_ns().spawn(&[
            &python,
            &script,
            "http://127.0.0.1:5000",
            "wait",
            &moto.allocation,
            &moto.enis[0],
        ])?;
        waiter.wait_for_stdout("ready", Duration::from_secs(30))?;
        pair.cut_vrrp_from(0, false)?;
        pair.cut_vrrp_from(1, false)?;
        let status = waiter
            .wait_timeout(Duration::from_secs(90))?
            .context("the Elastic IP did not come back within 90 s")?;
        ensure!(
            status.success(),
            "waiting for the Elastic IP failed: {}",
            waiter.output_so_far()
        );
        let out = waiter.stdout_so_far();
        let line = out.lines().last().unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        v["ms"].as_f64().context("no time in the waiter's report")
    })();
    if outcome.is_err() {
        eprintln!("{}", pair.diagnostics());
    }
    outcome
}

fn keepalived_version() -> String {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

pub fn run(options: &FailoverOptions) -> Result<FailoverResults> {
    let testkit = default_bin_dir().join("lb-testkit");
    ensure!(
        testkit.is_file(),
        "{} is missing: run `cargo xtask build`",
        testkit.display()
    );
    let testkit = testkit.display().to_string();
    let version = keepalived_version();
    ensure!(
        !version.is_empty(),
        "keepalived is not installed (`cargo xtask bench` installs it)"
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("lb-failover-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut results = FailoverResults {
        keepalived_version: version,
        ..FailoverResults::default()
    };
    let outcome = (|| -> Result<()> {
        for &advert_ms in &options.adverts_ms {
            let mut per_peer = [
                Gaps {
                    peer: "keepalived",
                    advert_ms,
                    gaps_ms: Vec::new(),
                    survived: Vec::new(),
                },
                Gaps {
                    peer: "lbd",
                    advert_ms,
                    gaps_ms: Vec::new(),
                    survived: Vec::new(),
                },
            ];
            // Peers interleaved round by round.
            for round in 0..options.rounds {
                for g in per_peer.iter_mut() {
                    eprintln!(
                        "bench failover: {}, advert {advert_ms} ms, round {}/{}",
                        g.peer,
                        round + 1,
                        options.rounds
                    );
                    let r = if g.peer == "lbd" {
                        lbd_round(advert_ms)?
                    } else {
                        keepalived_round(&testkit, advert_ms, &dir)?
                    };
                    g.gaps_ms.push(r.gap_ms);
                    g.survived.push(r.survived);
                }
            }
            results.gaps.extend(per_peer);
        }
        let mut ec2 = [("keepalived", Vec::new()), ("lbd", Vec::new())];
        for round in 0..options.rounds {
            for (peer, times) in ec2.iter_mut() {
                eprintln!(
                    "bench failover: EC2 takeover, {peer}, round {}/{}",
                    round + 1,
                    options.rounds
                );
                times.push(ec2_round(*peer == "lbd")?);
            }
            eprintln!(
                "bench failover: EC2 reconcile after a partition, lbd, round {}/{}",
                round + 1,
                options.rounds
            );
            results.ec2_reconcile.push(ec2_reconcile_round()?);
        }
        results.ec2 = ec2.to_vec();
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    outcome.map(|()| results)
}

pub fn render(r: &FailoverResults) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Failover\n");
    let _ = writeln!(
        md,
        "Two load-balancer hosts and a client on one bridge, unicast VRRPv3 between the \
         hosts at priorities 101/100. keepalived ({}): both hosts serve the VIP's port \
         themselves and whichever holds the VIP answers, as HAProxy on the master would. \
         lbd: three backends on the same bridge behind the VIP; the VIP and the NAT source \
         float. The client holds {HELD} connections open through the VIP (a line echoed \
         every 100 ms on each) and starts a TCP exchange with the VIP every \
         {PROBE_INTERVAL_MS} ms (200 ms timeout, so an answer that needed a SYN \
         retransmission counts as lost); {:.0} s in, the master's interface goes down. \
         Gap: the longest time between two answered probes, less the interval. Survived: \
         held connections whose every exchange succeeded. Each round on a fresh topology, \
         the peers interleaved.\n",
        r.keepalived_version,
        FAIL_AT.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| peer | advert interval | gap per round (ms) | median gap | connections survived per round |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---|");
    for g in &r.gaps {
        let per_round: Vec<String> = g.gaps_ms.iter().map(|v| format!("{v:.0}")).collect();
        let survived: Vec<String> = g.survived.iter().map(|n| format!("{n}/{HELD}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} ms | {} | {} ms | {} |",
            g.peer,
            g.advert_ms,
            per_round.join(", "),
            crate::bench_e2e::median(&g.gaps_ms)
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "–".into()),
            survived.join(", ")
        );
    }
    let _ = writeln!(md);
    if !r.ec2.is_empty() {
        let _ = writeln!(md, "### EC2 takeover\n");
        let _ = writeln!(
            md,
            "The same pair with an Elastic IP, against moto's EC2 server (in a namespace on \
             the bridge): from the master's link going down to EC2 reporting the Elastic IP \
             on the backup's network interface (polled every 10 ms), advert interval \
             {EC2_ADVERT_MS} ms. lbd moves it itself (`[vrrp.ec2]`: the private addresses, \
             then the Elastic IP, then a read-back). keepalived runs a `notify_master` \
             script making the same two calls from a Python program with boto3, as the \
             usual AWS CLI script does: the glue lb replaces.\n"
        );
        let _ = writeln!(
            md,
            "Reconcile after a partition: the same lbd pair with `[vrrp.ec2]` at its defaults \
             (30 s reconcile, 10 s hold-down); both hosts stop hearing each other until the \
             backup is master and has moved the Elastic IP to itself; then the partition heals, \
             and the time until EC2 shows the Elastic IP on the winner again (it hears the \
             loser's lower priority and re-asserts). keepalived's `notify_master` runs only on a \
             transition to master, which the winner never makes: its Elastic IP stays on the \
             loser.\n"
        );
        let median = |v: &[f64]| {
            crate::bench_e2e::median(v)
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(md, "| peer | what | per round (ms) | median |");
        let _ = writeln!(md, "|---|---|---|---:|");
        for (peer, times) in &r.ec2 {
            let per_round: Vec<String> = times.iter().map(|v| format!("{v:.0}")).collect();
            let _ = writeln!(
                md,
                "| {peer} | takeover | {} | {} ms |",
                per_round.join(", "),
                median(times)
            );
        }
        if !r.ec2_reconcile.is_empty() {
            let per_round: Vec<String> =
                r.ec2_reconcile.iter().map(|v| format!("{v:.0}")).collect();
            let _ = writeln!(
                md,
                "| lbd | reconcile after a partition | {} | {} ms |",
                per_round.join(", "),
                median(&r.ec2_reconcile)
            );
        }
        let _ = writeln!(md);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(spec: &[(f64, Option<&str>)]) -> Probes {
        spec.iter()
            .map(|(t, n)| (*t, n.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn the_gap_is_the_longest_silence_less_the_interval() {
        let p = probes(&[
            (0.0, Some("a")),
            (10.0, Some("a")),
            (20.0, None),
            (30.0, None),
            (40.0, Some("b")),
            (50.0, Some("b")),
        ]);
        let o = outage(&p, 10.0).unwrap();
        assert_eq!(o.gap_ms, 20.0);
        assert_eq!((o.first.as_str(), o.last.as_str()), ("a", "b"));
        let steady = probes(&[(0.0, Some("a")), (10.0, Some("a")), (20.0, Some("a"))]);
        assert_eq!(outage(&steady, 10.0).unwrap().gap_ms, 0.0);
    }

    #[test]
    fn too_few_answers_is_an_error() {
        let p = probes(&[(0.0, Some("a")), (10.0, None)]);
        let e = outage(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("only 1 of 2"), "{e}");
    }

    #[test]
    fn probe_output_parses() {
        let p =
            parse_probes(r#"{"interval_ms":10.0,"probes":[[0.1,"lb21"],[10.2,null]]}"#).unwrap();
        assert_eq!(p, vec![(0.1, Some("lb21".to_owned())), (10.2, None)]);
    }

    #[test]
    fn keepalived_config_is_unicast_v3() {
        let c = keepalived_config(21, 22, 101, 100);
        for needle in [
            "vrrp_version 3",
            "priority 101",
            "advert_int 0.1",
            "unicast_src_ip 10.9.0.21",
            "10.9.0.22",
            "10.9.0.100/24 dev eth0",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
    }
}
