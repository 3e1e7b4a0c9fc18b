//! lbd: the load-balancer daemon.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use lb_user::{config::Config, daemon};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "lbd", version, about = "XDP load balancer daemon")]
struct Args {
    /// Configuration file (TOML, see docs/configuration.md).
    #[arg(short, long, default_value = "/etc/lb/lb.toml")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 if valid, 2 with the reason if not.
    #[arg(long)]
    check: bool,
    /// XDP object to load instead of the one built into lbd.
    #[arg(long, env = "LB_EBPF_OBJECT")]
    bpf_object: Option<PathBuf>,
}

fn object(args: &Args) -> Result<Vec<u8>> {
    if let Some(p) = &args.bpf_object {
        return std::fs::read(p).with_context(|| format!("reading the XDP object {}", p.display()));
    }
    lb_user::embedded_object()
        .map(<[u8]>::to_vec)
        .context("this lbd was built without the XDP object: build it with `cargo xtask build`, or pass --bpf-object")
}

/// SIGTERM and SIGINT stop cleanly; SIGQUIT leaves the data plane forwarding
/// for the next lbd (restart, upgrade). The handlers are installed here, at
/// once, so a signal that arrives while lbd is still starting is not lost
/// (nor fatal): it is acted on as soon as start-up is done.
fn shutdown_signal() -> impl std::future::Future<Output = daemon::Exit> {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    async move {
        tokio::select! {
            _ = term.recv() => daemon::Exit::Clean,
            _ = int.recv() => daemon::Exit::Clean,
            _ = quit.recv() => daemon::Exit::KeepForwarding,
        }
    }
}

/// SIGHUP: reload the configuration file.
fn reload_signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lbd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Not a property of the file alone, but a configuration error all the
    // same: refused at --check time too.
    if let Err(e) = lb_user::state::check_socket_dir(&cfg.control.socket) {
        eprintln!(
            "lbd: invalid configuration: {}: control.socket: {e}; put the socket in a \
             directory only root can write (the default is /run/lb/lbd.sock)",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    if args.check {
        let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
        println!(
            "{}: OK ({} VIPs, {} backends)",
            args.config.display(),
            cfg.vips.len(),
            backends
        );
        return ExitCode::SUCCESS;
    }
    let result = object(&args).and_then(|obj| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")?;
        rt.block_on(async {
            let shutdown = shutdown_signal();
            let reloads = reload_signals();
            daemon::run(cfg, args.config.clone(), &obj, shutdown, reloads).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
