//! lbctl: operate a running lbd through its control socket.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use lb_user::api::{
    self, DaemonStatus, Request, RequestEnvelope, ResponseEnvelope, Stats, VipStatus,
};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Operate a running lbd")]
struct Cli {
    /// lbd's control socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/lb/lbd.sock",
        env = "LBCTL_SOCKET"
    )]
    socket: PathBuf,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, add or remove backends (default: list).
    Backends {
        #[command(subcommand)]
        action: Option<BackendsAction>,
    },
    /// VIPs with their healthy-backend counts and counters.
    Vips,
    /// The daemon: version, uptime, configuration, interfaces, reloads.
    Status,
    /// Packets and bytes per verdict reason, and flow-table occupancy.
    Stats,
    /// Re-read the configuration file and reconcile to it (like SIGHUP). An
    /// invalid file is refused and nothing changes. Run-time changes made with
    /// lbctl are replaced by what the file says.
    Reload,
}

#[derive(Subcommand)]
enum BackendsAction {
    /// Every VIP's backends with weight, state and counters.
    List,
    /// Add a backend to a VIP: `lbctl backends add web 10.0.2.14:8080 --weight 2`.
    Add {
        vip: String,
        backend: SocketAddrV4,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend from a VIP; its flows move to the others at their next packet.
    Remove { vip: String, backend: SocketAddrV4 },
    /// Stop giving a backend new flows; its open flows stay until they end.
    Drain { vip: String, backend: SocketAddrV4 },
    /// Undo a drain.
    Enable { vip: String, backend: SocketAddrV4 },
    /// Change a backend's weight (1-65535).
    Weight {
        vip: String,
        backend: SocketAddrV4,
        weight: u32,
    },
}

fn call(socket: &PathBuf, request: Request) -> Result<ResponseEnvelope, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach lbd at {}: {e} (is lbd running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(&RequestEnvelope {
        version: api::VERSION,
        request,
    })
    .expect("requests serialise");
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("sending to lbd: {e}"))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("reading lbd's answer: {e}"))?;
    serde_json::from_str(&reply).map_err(|e| format!("lbd's answer is not valid: {e}: {reply:?}"))
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        n.to_string()
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn print_backends(vips: &[VipStatus]) {
    if vips.is_empty() {
        println!("no VIPs configured");
    }
    for v in vips {
        println!(
            "VIP {} {}:{}/{}  healthy {}/{}  packets {}  bytes {}  flows {}",
            v.name,
            v.address,
            v.port,
            v.protocol,
            v.healthy_backends,
            v.backends.len(),
            human(v.packets),
            human(v.bytes),
            human(v.flows)
        );
        if v.healthy_backends == 0 {
            let what = if v.on_empty == api::OnEmpty::Reset {
                "refused with a TCP reset"
            } else {
                "dropped"
            };
            println!("  (no healthy backend: new connections are {what})");
        }
        if v.backends.is_empty() {
            continue;
        }
        println!(
            "  {:<21} {:>6}  {:<8} {:>10} {:>10} {:>8}",
            "BACKEND", "WEIGHT", "STATE", "PACKETS", "BYTES", "FLOWS"
        );
        for b in &v.backends {
            println!(
                "  {:<21} {:>6}  {:<8} {:>10} {:>10} {:>8}",
                format!("{}:{}", b.address, b.port),
                b.weight,
                b.state,
                human(b.packets),
                human(b.bytes),
                human(b.flows)
            );
        }
    }
}

fn print_stats(s: &Stats) {
    println!(
        "flows {}   nat entries {}   (not expired; tables sized for {} connections)",
        s.flows, s.nat_entries, s.max_flows
    );
    println!("{:<22} {:>12} {:>12}", "REASON", "PACKETS", "BYTES");
    for r in &s.reasons {
        println!(
            "{:<22} {:>12} {:>12}",
            r.reason,
            human(r.packets),
            human(r.bytes)
        );
    }
    if !s.events.is_empty() {
        println!("{:<22} {:>12}", "EVENT", "COUNT");
        for e in &s.events {
            println!("{:<22} {:>12}", e.event, human(e.count));
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Command::Backends { action } => match action {
            None | Some(BackendsAction::List) => Request::BackendsList,
            Some(BackendsAction::Add {
                vip,
                backend,
                weight,
            }) => Request::BackendsAdd {
                vip: vip.clone(),
                address: *backend.ip(),
                port: backend.port(),
                weight: *weight,
            },
            Some(BackendsAction::Remove { vip, backend }) => Request::BackendsRemove {
                vip: vip.clone(),
                address: *backend.ip(),
                port: backend.port(),
            },
            Some(BackendsAction::Drain { vip, backend }) => Request::BackendsDrain {
                vip: vip.clone(),
                address: *backend.ip(),
                port: backend.port(),
            },
            Some(BackendsAction::Enable { vip, backend }) => Request::BackendsEnable {
                vip: vip.clone(),
                address: *backend.ip(),
                port: backend.port(),
            },
            Some(BackendsAction::Weight {
                vip,
                backend,
                weight,
            }) => Request::BackendsWeight {
                vip: vip.clone(),
                address: *backend.ip(),
                port: backend.port(),
                weight: *weight,
            },
        },
        Command::Vips => Request::Vips,
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Reload => Request::Reload,
    };
    let kind = request.clone();
    let reply = match call(&cli.socket, request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return ExitCode::from(3);
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("serialises")
        );
        return if reply.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if !reply.ok {
        let e = reply
            .error
            .unwrap_or_else(|| api::ApiError::internal("no error detail"));
        eprintln!("lbctl: {} ({})", e.message, e.code);
        return ExitCode::FAILURE;
    }
    let result = reply.result.unwrap_or_default();
    let printed = match kind {
        Request::BackendsList => decode(result, |v: Vec<VipStatus>| print_backends(&v)),
        Request::Vips => decode(result, |v: Vec<VipStatus>| print_vips(&v)),
        Request::Stats => decode(result, |s: Stats| print_stats(&s)),
        Request::Status => decode(result, |s: DaemonStatus| print_status(&s)),
        Request::Reload => decode(result, |s: api::ReloadSummary| {
            println!(
                "reloaded: VIPs +{} -{}, backends +{} -{} ~{}",
                s.vips_added.len(),
                s.vips_removed.len(),
                s.backends_added,
                s.backends_removed,
                s.backends_changed
            )
        }),
        _ => decode(result, |b: api::BackendChange| {
            println!(
                "ok: {} {}:{} weight {} {}",
                b.vip, b.address, b.port, b.weight, b.state
            )
        }),
    };
    if printed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value, print: impl FnOnce(T)) -> bool {
    match serde_json::from_value::<T>(v) {
        Ok(t) => {
            print(t);
            true
        }
        Err(e) => {
            eprintln!("lbctl: unexpected answer from lbd: {e}");
            false
        }
    }
}

fn print_vips(vips: &[VipStatus]) {
    println!(
        "{:<16} {:<21} {:<6} {:>9} {:>10} {:>10} {:>8}  {:<16}",
        "VIP", "ADDRESS", "EMPTY", "HEALTHY", "PACKETS", "BYTES", "FLOWS", "RING"
    );
    for v in vips {
        println!(
            "{:<16} {:<21} {:<6} {:>9} {:>10} {:>10} {:>8}  {:<16}",
            v.name,
            format!("{}:{}", v.address, v.port),
            v.on_empty,
            format!("{}/{}", v.healthy_backends, v.backends.len()),
            human(v.packets),
            human(v.bytes),
            human(v.flows),
            v.ring_digest
        );
    }
}

fn print_status(s: &DaemonStatus) {
    println!("lbd {} (pid {}), up {} s", s.version, s.pid, s.uptime_secs);
    println!("config      {}", s.config);
    println!(
        "interfaces  {} ({} XDP)",
        s.interfaces.join(", "),
        s.xdp_mode
    );
    println!(
        "data plane  {}",
        if s.adopted {
            "adopted from an earlier lbd"
        } else {
            "loaded by this lbd"
        }
    );
    println!(
        "VIPs {}, backends {} ({} taking new flows)",
        s.vips, s.backends, s.backends_up
    );
    println!("reloads {} ok, {} refused", s.reloads, s.reload_failures);
    if let Some(e) = &s.last_reload_error {
        println!("last reload refused: {e}");
    }
    match &s.vrrp {
        Some(v) => print_vrrp(v),
        None => println!("vrrp        not configured (single load balancer)"),
    }
}

fn addresses(list: &[std::net::Ipv4Addr]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_vrrp(v: &lb_user::api::VrrpStatus) {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(v.since_unix))
        .unwrap_or(0);
    let master = match (v.state.as_str(), v.master) {
        ("master", _) => "this host".to_owned(),
        (_, Some(m)) => format!("{m} (advertising every {} ms)", v.master_advert_interval_ms),
        (_, None) => "none heard yet".to_owned(),
    };
    println!(
        "vrrp        {} for {since} s ({} transitions); router {} on {}, priority {}, every {} ms{}",
        v.state.as_str().to_uppercase(),
        v.transitions,
        v.router_id,
        v.interface,
        v.priority,
        v.advert_interval_ms,
        if v.preempt { "" } else { ", no preemption" }
    );
    println!("  master    {master}");
    if v.effective_priority != v.priority && v.effective_priority != 0 {
        println!(
            "  priority  {} advertised, lowered from {} by: {}",
            v.effective_priority,
            v.priority,
            v.problems.join("; ")
        );
    }
    let placed: Vec<String> = v
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| match v.address_interfaces.get(i) {
            Some(ifname) if *ifname != v.interface => format!("{a} on {ifname}"),
            _ => a.to_string(),
        })
        .collect();
    println!(
        "  addresses {} ({})",
        if placed.is_empty() {
            "none".to_owned()
        } else {
            placed.join(", ")
        },
        if v.holding {
            "held here"
        } else {
            "not held here"
        }
    );
    println!("  peers     {} from {}", addresses(&v.peers), v.source);
    println!(
        "  adverts   {} sent, {} received, {} refused",
        v.adverts_sent, v.adverts_received, v.adverts_invalid
    );
    if let Some(p) = &v.last_problem {
        println!("  last problem: {p}");
    }
    if let Some(e) = &v.ec2 {
        let eni = if e.network_interfaces.len() > 1 {
            e.network_interfaces.join(", ")
        } else if e.network_interface_id.is_empty() {
            "this instance's ENI".to_owned()
        } else {
            e.network_interface_id.clone()
        };
        let what = match (e.mode.as_str(), &e.elastic_ip_allocation_id) {
            ("route_table", _) => format!("routes to {eni}"),
            ("elastic_ip", Some(a)) => format!("{a} to {eni}"),
            (_, Some(a)) => format!("{a} and private addresses to {eni}"),
            (_, None) => format!("private addresses to {eni}"),
        };
        let detail = match e.state {
            api::Ec2State::Done => format!(
                "done in {} ms after {} attempt(s){}",
                e.took_ms.unwrap_or(0),
                e.attempts,
                e.public_ip
                    .as_deref()
                    .map(|p| format!(", Elastic IP {p} verified here"))
                    .unwrap_or_default()
            ),
            api::Ec2State::Idle => "not master yet".to_owned(),
            other => format!("{other}, attempt {}", e.attempts),
        };
        println!("  ec2       {what}: {detail}");
        if let Some(i) = &e.instance_id {
            println!(
                "            instance {i}{}, mode {}",
                e.availability_zone
                    .as_deref()
                    .map(|z| format!(" in {z}"))
                    .unwrap_or_default(),
                e.mode
            );
        }
        let failed: Vec<&api::Ec2Check> = e.preflight_checks.iter().filter(|c| !c.ok).collect();
        println!(
            "            preflight {}{}",
            e.preflight,
            if e.preflight_checks.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} of {} checks passed)",
                    e.preflight_checks.len() - failed.len(),
                    e.preflight_checks.len()
                )
            }
        );
        for c in failed {
            println!("              {}: {}", c.name, c.detail);
        }
        if e.reconcile != api::ReconcileState::None {
            println!(
                "            reconcile {}: {} drift(s), {} repair(s)",
                e.reconcile, e.drifts, e.repairs
            );
        }
        if !e.stranded.is_empty() {
            println!(
                "            STRANDED on this backup: {}",
                e.stranded.join("; ")
            );
        }
        if let Some(d) = &e.last_drift {
            println!("            last drift: {d}");
        }
        println!(
            "            {} takeover(s), {} failed attempt(s)",
            e.takeovers, e.failures
        );
        if let Some(err) = &e.last_error {
            println!("            last error: {err}");
        }
        if let Some(w) = &e.warning {
            println!("            warning: {w}");
        }
    }
}
