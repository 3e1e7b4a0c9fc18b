//! Benchmarks behind `cargo xtask bench`: measurements, and a Markdown report
//! with SVG plots. Every comparison is a ratio measured in the same run.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_ebpf::prog;
use lb_user::{
    balancer::Balancer,
    config::Config,
    dataplane::Dataplane,
    dataplane::{kernel_config, load_options},
    maglev::{build_ring, RingBackend},
};

use crate::{
    packet::{Frame, ACK, SYN},
    xdp_fixture::{self, fixture, Fixture, CLIENT, NAT, WEB, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// Order statistics of a set of samples, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p99: f64,
}

impl Spread {
    pub fn of(samples: &mut [f64]) -> Spread {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Spread {
            min: samples[0],
            p25: at(0.25),
            median: at(0.5),
            p99: at(0.99),
        }
    }
}

/// One measured path of the XDP program.
#[derive(Clone, Debug)]
pub struct PacketCost {
    pub case: &'static str,
    pub program: &'static str,
    pub verdict: &'static str,
    pub ns: Spread,
}

/// Runs `prog` once on `frame` (repeat=1: with more repeats the kernel would
/// re-run the program on the frame it already rewrote) and returns the action
/// and the time the kernel measured.
fn time_once(fx: &Fixture, program: &str, frame: &[u8], ingress: u32) -> Result<(u32, Duration)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let r = fx
        .dp
        .program_named(program)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration))
}

/// One path to measure: its program, expected verdict and frame source.
struct Case<'a> {
    name: &'static str,
    program: &'static str,
    want: (u32, &'static str),
    frame_for: Box<dyn FnMut(usize) -> (Vec<u8>, u32) + 'a>,
    samples: Vec<f64>,
}

/// Runs every case `samples` times, interleaved in rounds so that drift and
/// bursts of noise on a shared machine fall on all cases alike.
fn measure_interleaved(fx: &Fixture, samples: usize, cases: &mut [Case<'_>]) -> Result<()> {
    const ROUNDS: usize = 20;
    let per_round = samples.div_ceil(ROUNDS);
    let mut i = 0;
    for _ in 0..ROUNDS {
        for c in cases.iter_mut() {
            for k in 0..per_round {
                let (frame, ingress) = (c.frame_for)(i + k);
                let (action, d) = time_once(fx, c.program, &frame, ingress)?;
                ensure!(
                    action == c.want.0,
                    "{}: verdict {action}, expected {} ({})",
                    c.name,
                    c.want.0,
                    c.want.1
                );
                c.samples.push(d.as_nanos() as f64);
            }
        }
        i += per_round;
    }
    Ok(())
}

/// Per-packet cost of each path through the program, and of the floor program.
/// Runs in its own thread, which enters the fixture's network namespace.
pub fn packet_costs(samples: usize) -> Result<Vec<PacketCost>> {
    std::thread::spawn(move || packet_costs_here(samples))
        .join()
        .map_err(|_| anyhow::anyhow!("the per-packet benchmark panicked"))?
}

fn packet_costs_here(samples: usize) -> Result<Vec<PacketCost>> {
    let fx = fixture("bench", |_| {});
    let vip = (WEB, 80);
    let (lbt0, lbt1) = (fx.lbt0, fx.lbt1);

    // Established: one flow, its packets over and over; and its replies.
    let client = (CLIENT, 19_999);
    let first = fx.run(&Frame::tcp(client, vip, SYN).build(), lbt0);
    let rewritten = crate::packet::parse_tcp(&first.out);
    let mut est = Frame::tcp(client, vip, ACK);
    est.payload = vec![0x55; 64];
    let est = est.build();
    let mut reply = Frame::tcp(
        (rewritten.dst, rewritten.dport),
        (NAT, rewritten.sport),
        ACK,
    );
    reply.payload = vec![0xaa; 64];
    let reply = reply.build();
    // The same through a VIP whose backend is on the ingress interface
    // (XDP_TX, like a one-armed load balancer).
    let local_vip = (xdp_fixture::LOCAL_VIP, 80);
    fx.run(&Frame::tcp(client, local_vip, SYN).build(), lbt0);
    let mut est_tx = Frame::tcp(client, local_vip, ACK);
    est_tx.payload = vec![0x55; 64];
    let est_tx = est_tx.build();
    let other = Frame::tcp(client, (WEB, 8443), SYN).build();
    // The load balancer's own address (say, SSH to it).
    let host = Frame::tcp(client, (Ipv4Addr::new(10, 1, 1, 1), 22), ACK).build();
    let syn = Frame::tcp(client, vip, SYN).build();
    let syn_again = Frame::tcp((CLIENT, 19_998), local_vip, SYN).build();

    let redirect = (XDP_REDIRECT, "XDP_REDIRECT");
    let mut cases = vec![
        // New flows: a different client port (and address every 40,000) each time.
        Case {
            name: "new flow (SYN)",
            program: prog::LB,
            want: redirect,
            frame_for: Box::new(|i| {
                let addr = Ipv4Addr::from(u32::from(CLIENT) + (i / 40_000) as u32 * 256);
                let port = 20_000 + (i % 40_000) as u16;
                (Frame::tcp((addr, port), vip, SYN).build(), lbt0)
            }),
            samples: Vec::new(),
        },
        Case {
            name: "new flow (SYN), XDP_TX",
            program: prog::LB,
            want: (XDP_TX, "XDP_TX"),
            frame_for: Box::new(|i| {
                let addr = Ipv4Addr::from(u32::from(CLIENT) + 1 + (i / 40_000) as u32 * 256);
                let port = 20_000 + (i % 40_000) as u16;
                (Frame::tcp((addr, port), local_vip, SYN).build(), lbt0)
            }),
            samples: Vec::new(),
        },
        // One SYN over and over: every call takes the whole new-flow path
        // (ring, NAT claim, both table writes), with the tables' lines in
        // cache — how the reference's figure was taken.
        Case {
            name: "new flow (SYN), XDP_TX, one tuple repeated",
            program: prog::LB,
            want: (XDP_TX, "XDP_TX"),
            frame_for: Box::new(|_| (syn_again.clone(), lbt0)),
            samples: Vec::new(),
        },
        Case {
            name: "established, XDP_TX",
            program: prog::LB,
            want: (XDP_TX, "XDP_TX"),
            frame_for: Box::new(|_| (est_tx.clone(), lbt0)),
            samples: Vec::new(),
        },
        Case {
            name: "established",
            program: prog::LB,
            want: redirect,
            frame_for: Box::new(|_| (est.clone(), lbt0)),
            samples: Vec::new(),
        },
        Case {
            name: "reply from backend",
            program: prog::LB,
            want: redirect,
            frame_for: Box::new(|_| (reply.clone(), lbt1)),
            samples: Vec::new(),
        },
        Case {
            name: "other address (pass)",
            program: prog::LB,
            want: (XDP_PASS, "XDP_PASS"),
            frame_for: Box::new(|_| (host.clone(), lbt0)),
            samples: Vec::new(),
        },
        Case {
            name: "VIP address, other port (pass)",
            program: prog::LB,
            want: (XDP_PASS, "XDP_PASS"),
            frame_for: Box::new(|_| (other.clone(), lbt0)),
            samples: Vec::new(),
        },
        // The floor: parse, swap MACs, XDP_TX.
        Case {
            name: "floor (parse, swap MACs, XDP_TX)",
            program: prog::FLOOR,
            want: (XDP_TX, "XDP_TX"),
            frame_for: Box::new(|_| (syn.clone(), lbt0)),
            samples: Vec::new(),
        },
    ];
    measure_interleaved(&fx, samples, &mut cases)?;
    Ok(cases
        .into_iter()
        .map(|mut c| PacketCost {
            case: c.name,
            program: c.program,
            verdict: c.want.1,
            ns: Spread::of(&mut c.samples),
        })
        .collect())
}

/// Maglev ring build time.
#[derive(Clone, Debug)]
pub struct RingBuild {
    pub backends: usize,
    pub ring_size: u32,
    pub ms: Spread,
}

pub fn ring_builds(rounds: usize) -> Result<Vec<RingBuild>> {
    let mut out = Vec::new();
    for ring_size in [65_537u32, 655_373] {
        for backends in [3usize, 100, 1_000, 10_000] {
            if backends >= ring_size as usize {
                continue;
            }
            let set: Vec<RingBackend> = (0..backends)
                .map(|i| RingBackend {
                    identity: format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255),
                    weight: 1,
                })
                .collect();
            let mut ms = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                let ring = build_ring(&set, ring_size)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(ring.len(), ring_size as usize);
            }
            out.push(RingBuild {
                backends,
                ring_size,
                ms: Spread::of(&mut ms),
            });
        }
    }
    Ok(out)
}

/// Control-plane figures measured against the real kernel maps.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// From a health verdict "down" to its VIP's new ring live in the kernel
    /// (build + write + flip).
    pub change_to_kernel_ms: Spread,
    pub ring_size: u32,
    /// Kernel memory of the flow and NAT tables sized for one million flows.
    pub million_flows_bytes: u64,
}

pub fn control_plane(rounds: usize) -> Result<ControlPlane> {
    let cfg = Config::from_toml_str(xdp_fixture::CONFIG)?;
    let mut cfg65k = cfg.clone();
    cfg65k.dataplane.ring_size = 65_537;
    let mut dp = Dataplane::load(&xdp_fixture::object(), &load_options(&cfg65k), None)?;
    dp.set_config(&kernel_config(&cfg65k, lb_user::host::ns_per_tick()?))?;
    let mut balancer = Balancer::new(&cfg65k);
    balancer.install(&mut dp, &Default::default())?;
    let b = balancer.vips()[0].backends[2].clone();
    let mut ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        // The path a health verdict takes in lbd (daemon.rs): the backend
        // goes down, its VIP's ring is rebuilt, written and flipped live.
        let changed = balancer
            .set_health(&mut dp, "web", b.address, b.port, false)
            .map_err(anyhow::Error::from)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(changed, "the health verdict changed nothing");
        balancer
            .set_health(&mut dp, "web", b.address, b.port, true)
            .map_err(anyhow::Error::from)?;
    }
    drop(dp);

    let mut big = cfg;
    big.dataplane.max_flows = 1 << 20;
    let dp = Dataplane::load(&xdp_fixture::object(), &load_options(&big), None)?;
    Ok(ControlPlane {
        change_to_kernel_ms: Spread::of(&mut ms),
        ring_size: 65_537,
        million_flows_bytes: dp.flow_table_memory()?,
    })
}

/// A horizontal bar chart as a standalone SVG.
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let width = 760.0;
    let label_w = 300.0;
    let bar_h = 26.0;
    let top = 40.0;
    let height = top + bars.len() as f64 * (bar_h + 10.0) + 20.0;
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + 10.0);
        let w = (width - label_w - 120.0) * v / max;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + bar_h * 0.7,
            xml(label)
        );
        let _ = write!(
            s,
            r##"<rect x="{label_w}" y="{y}" width="{w:.1}" height="{bar_h}" fill="#4878a8"/>"##
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}">{} {}</text>"#,
            label_w + w + 6.0,
            y + bar_h * 0.7,
            fmt_num(*v),
            xml(unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A number with sensible precision for a report.
pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_order_statistics() {
        let mut v: Vec<f64> = (1..=101).map(f64::from).collect();
        v.reverse();
        let s = Spread::of(&mut v);
        assert_eq!((s.min, s.p25, s.median, s.p99), (1.0, 26.0, 51.0, 100.0));
    }

    #[test]
    fn chart_is_well_formed_svg() {
        let svg = bar_chart("a <b>", "ns", &[("x".into(), 1.0), ("y & z".into(), 2.5)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("y &amp; z"));
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
