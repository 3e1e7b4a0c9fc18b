//! lbctl: operate a running lbd through its control socket.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use lb_user::api::{self, Request, RequestEnvelope, ResponseEnvelope, Stats, VipStatus};

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
    /// Packets and bytes per verdict reason, and flow-table occupancy.
    Stats,
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
            "VIP {} {}:{}/{}  packets {}  bytes {}  flows {}",
            v.name,
            v.address,
            v.port,
            v.protocol,
            human(v.packets),
            human(v.bytes),
            human(v.flows)
        );
        if v.backends.is_empty() {
            println!("  (no backends: new connections are dropped)");
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
        "flows {} / {}   nat entries {}",
        s.flows, s.max_flows, s.nat_entries
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
                address: backend.ip().to_string(),
                port: backend.port(),
                weight: *weight,
            },
            Some(BackendsAction::Remove { vip, backend }) => Request::BackendsRemove {
                vip: vip.clone(),
                address: backend.ip().to_string(),
                port: backend.port(),
            },
        },
        Command::Stats => Request::Stats,
    };
    let list = matches!(request, Request::BackendsList);
    let stats = matches!(request, Request::Stats);
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
    if list {
        match serde_json::from_value::<Vec<VipStatus>>(result) {
            Ok(v) => print_backends(&v),
            Err(e) => {
                eprintln!("lbctl: unexpected answer: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if stats {
        match serde_json::from_value::<Stats>(result) {
            Ok(s) => print_stats(&s),
            Err(e) => {
                eprintln!("lbctl: unexpected answer: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("ok: {result}");
    }
    ExitCode::SUCCESS
}
