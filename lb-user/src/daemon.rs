//! The whole daemon in one place: bring-up order, the control socket, shutdown.
//!
//! Bring-up: load (and pin) the object, apply host settings, write the global
//! config, backends, rings and VIPs, then attach to the interfaces — the
//! program only sees traffic once its tables are complete. Any failure undoes
//! what was done so far. Shutdown undoes all of it in reverse.

use std::{
    future::Future,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use lb_ebpf::Reason;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::{
    api::{self, ApiError, ReasonCount, Request, Stats},
    balancer::Balancer,
    config::{Config, XdpMode},
    dataplane::{addr_be, Dataplane, LoadOptions},
    host::{self, HostSettings},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The kernel's view of the global settings.
pub fn kernel_config(cfg: &Config) -> lb_ebpf::Config {
    lb_ebpf::Config {
        nat_addr_be: addr_be(cfg.nat.source),
        nat_port_min: cfg.nat.port_min,
        nat_port_max: cfg.nat.port_max,
        ring_size: cfg.dataplane.ring_size,
        _pad: 0,
        idle_timeout_ns: cfg.flows.idle_timeout_secs * NS_PER_SEC,
        closed_timeout_ns: cfg.flows.closed_timeout_secs * NS_PER_SEC,
        port_hold_ns: cfg.nat.port_hold_secs * NS_PER_SEC,
    }
}

pub fn load_options(cfg: &Config) -> LoadOptions {
    LoadOptions {
        ring_size: cfg.dataplane.ring_size,
        max_vips: cfg.dataplane.max_vips,
        max_flows: cfg.dataplane.max_flows,
    }
}

/// What the control socket operates on.
pub struct State {
    pub cfg: Config,
    pub balancer: Balancer,
    pub dataplane: Dataplane,
}

/// A running load balancer: tables installed, program attached.
pub struct Running {
    state: Arc<Mutex<State>>,
    host: HostSettings,
}

/// Brings the data plane up as configured.
pub fn start(cfg: Config, object: &[u8]) -> Result<Running> {
    let native = cfg.dataplane.xdp_mode == XdpMode::Native;
    if native {
        for ifname in &cfg.dataplane.interfaces {
            host::check_native_xdp(ifname)?;
        }
    }
    let mut dataplane =
        Dataplane::load(object, &load_options(&cfg), Some(&cfg.dataplane.pin_path))?;
    let mut host = match HostSettings::apply(&cfg) {
        Ok(h) => h,
        Err(e) => {
            let _ = dataplane.unpin();
            return Err(e);
        }
    };
    let mut balancer = Balancer::new(&cfg);
    let up = (|| -> Result<()> {
        dataplane.set_config(&kernel_config(&cfg))?;
        balancer.install(&mut dataplane)?;
        for ifname in &cfg.dataplane.interfaces {
            dataplane.attach(ifname, !native)?;
        }
        Ok(())
    })();
    if let Err(e) = up {
        let _ = dataplane.detach_all();
        host.restore();
        let _ = dataplane.unpin();
        return Err(e);
    }
    Ok(Running {
        state: Arc::new(Mutex::new(State {
            cfg,
            balancer,
            dataplane,
        })),
        host,
    })
}

impl Running {
    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// Detaches, restores host settings and removes the pins.
    pub fn stop(mut self) -> Result<()> {
        let mut st = self.state.lock().expect("state lock");
        let detached = st.dataplane.detach_all();
        self.host.restore();
        let unpinned = st.dataplane.unpin();
        detached?;
        unpinned
    }
}

/// Runs until `shutdown` resolves: serves the control socket, then stops.
pub async fn run(cfg: Config, object: &[u8], shutdown: impl Future<Output = ()>) -> Result<()> {
    let socket = cfg.control.socket.clone();
    let listener = bind_control(&socket)?;
    let running = match start(cfg, object) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    {
        let st = running.state.lock().expect("state lock");
        let vips = st.balancer.vips().len();
        tracing::info!(
            vips,
            interfaces = ?st.dataplane.attached(),
            mode = %st.cfg.dataplane.xdp_mode,
            socket = %socket.display(),
            "lbd ready"
        );
    }
    println!("lbd: ready");
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve_control(listener, running.state(), stop_rx));
    shutdown.await;
    tracing::info!("shutting down: detaching and removing pins");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(&socket);
    running.stop()
}

/// Binds the control socket, root-only. A live daemon already on it is an error;
/// a stale socket file is replaced.
fn bind_control(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another lbd is already serving {}", path.display());
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

async fn serve_control(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, state: Arc<Mutex<State>>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let state = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let request = api::parse_request(&line)?;
            let mut st = state
                .lock()
                .map_err(|_| ApiError::internal("state lock poisoned"))?;
            handle(&mut st, request)
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("request handler failed: {e}"))));
        let mut out = api::response_line(result);
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn parse_addr(s: &str) -> Result<std::net::Ipv4Addr, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(format!("{s:?} is not an IPv4 address")))
}

/// Executes one control request.
pub fn handle(st: &mut State, request: Request) -> Result<serde_json::Value, ApiError> {
    let internal = |e: anyhow::Error| ApiError::internal(format!("{e:#}"));
    match request {
        Request::BackendsList => to_value(st.balancer.status(&st.dataplane).map_err(internal)?),
        Request::BackendsAdd {
            vip,
            address,
            port,
            weight,
        } => {
            let addr = parse_addr(&address)?;
            let b = st
                .balancer
                .add_backend(&mut st.dataplane, &vip, addr, port, weight)?;
            tracing::info!(vip, backend = %format!("{}:{}", b.address, b.port), weight, "backend added");
            to_value(
                serde_json::json!({"vip": vip, "address": b.address, "port": b.port, "weight": b.weight}),
            )
        }
        Request::BackendsRemove { vip, address, port } => {
            let addr = parse_addr(&address)?;
            let b = st
                .balancer
                .remove_backend(&mut st.dataplane, &vip, addr, port)?;
            tracing::info!(vip, backend = %format!("{}:{}", b.address, b.port), "backend removed");
            to_value(serde_json::json!({"vip": vip, "address": b.address, "port": b.port}))
        }
        Request::Stats => {
            let counters = st.dataplane.reason_counters().map_err(internal)?;
            let reasons = Reason::ALL
                .iter()
                .zip(counters)
                .map(|(r, c)| ReasonCount {
                    reason: r.label().into(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect();
            to_value(Stats {
                reasons,
                flows: st.dataplane.flow_count() as u64,
                nat_entries: st.dataplane.nat_count() as u64,
                max_flows: st.cfg.dataplane.max_flows as u64,
            })
        }
    }
}

/// Where lbd finds the XDP object when none is embedded.
pub fn default_object_path() -> Option<PathBuf> {
    std::env::var_os("LB_EBPF_OBJECT").map(PathBuf::from)
}
