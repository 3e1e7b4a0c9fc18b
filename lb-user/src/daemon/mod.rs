//! The whole daemon in one place: bring-up, the tasks it runs, shutdown.
//!
//! Bring-up: load the object (reopening the maps an earlier lbd left pinned,
//! if any), apply host settings, write the global config, backends, rings and
//! VIPs, then attach to the interfaces — the program only sees traffic once
//! its tables are complete. Any failure undoes what this run did.
//!
//! Then, until told to stop: the control socket, health checks feeding the
//! balancer, SIGHUP reloads, and the metrics endpoint.
//!
//! Stopping: SIGTERM or SIGINT is a clean stop (detach, unpin, restore host
//! settings); SIGQUIT exits leaving the data plane forwarding, for a restart
//! or upgrade that the next lbd adopts without disturbing a flow.

use std::{
    collections::HashMap,
    future::Future,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use lb_ebpf::{Event, Reason};
use tokio::sync::{mpsc, watch};

mod control;
pub use control::handle;

use crate::{
    balancer::{Balancer, BalancerError, ReloadChanges},
    config::{BackendKey, Config, ConfigError, XdpMode},
    dataplane::{kernel_config, load_options, Dataplane, KernelState},
    health::{HealthEvent, HealthMonitor},
    host::{self, HostSettings},
    metrics,
    state::{self, StateDir},
    vrrp::{
        machine::Role,
        status::{Preflight, Reconcile},
        Leave, Vrrp,
    },
};

/// What lbd keeps in its state directory while the data plane runs
/// ([`crate::state`]): read back by the lbd that adopts the data plane, so
/// that a clean stop, whichever lbd makes it, undoes exactly what the first
/// one changed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The host's original settings.
    host: HostSettings,
    /// Directories lbd created (for the pins, the control socket),
    /// outermost first: removed at a clean stop if they are empty.
    #[serde(default)]
    created_dirs: Vec<PathBuf>,
}

/// The record's file name in the state directory.
const RECORD: &str = "state.json";

/// How lbd should leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Detach, unpin, restore host settings.
    Clean,
    /// Leave the data plane forwarding for the next lbd to adopt.
    KeepForwarding,
}

/// Health-check results per backend, for metrics and lbctl.
#[derive(Clone, Debug, Default)]
pub struct CheckStats {
    pub ok: u64,
    pub failed: u64,
    pub last_latency: Option<Duration>,
    pub last_detail: String,
}

/// Everything the control socket, health events and metrics operate on.
pub struct State {
    pub cfg: Config,
    pub config_path: PathBuf,
    pub balancer: Balancer,
    pub dataplane: Dataplane,
    pub monitor: HealthMonitor,
    pub checks: HashMap<BackendKey, CheckStats>,
    pub started: Instant,
    pub started_unix: u64,
    /// The kernel's tick, for `LB_CONFIG` (see `host::ns_per_tick`).
    pub ns_per_tick: u32,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<String>,
    /// The VRRP instance's status, when `[vrrp]` is configured.
    pub vrrp: Option<Arc<Mutex<crate::vrrp::VrrpStatus>>>,
    /// Tells the VRRP instance the floating addresses after a reload.
    pub vrrp_addresses: Option<watch::Sender<Vec<(Ipv4Addr, String)>>>,
    /// Tells the VRRP instance which VIPs have no usable backend.
    pub vrrp_vip_problems: Option<watch::Sender<Vec<String>>>,
}

/// A running load balancer: tables installed, program attached.
pub struct Running {
    state: Arc<Mutex<State>>,
    host: HostSettings,
    /// lbd's state directory, locked by this process.
    state_dir: StateDir,
    /// Directories lbd created, as in the record.
    created_dirs: Vec<PathBuf>,
    health_rx: Option<mpsc::UnboundedReceiver<HealthEvent>>,
    /// The VRRP instance, opened but not yet running, with the receivers of
    /// its floating addresses and of the VIPs' problems.
    vrrp: Option<VrrpStart>,
}

type VrrpStart = (
    Vrrp,
    watch::Receiver<Vec<(Ipv4Addr, String)>>,
    watch::Receiver<Vec<String>>,
);

/// Brings the data plane up as configured (adopting a running one if the
/// pins of an earlier lbd are there). `state_dir` is the data plane's state
/// directory, locked; `created_dirs` the directories this lbd made already
/// (for the control socket). Must run inside a tokio runtime (health checks
/// are spawned).
pub fn start(
    cfg: Config,
    config_path: PathBuf,
    object: &[u8],
    state_dir: StateDir,
    mut created_dirs: Vec<PathBuf>,
) -> Result<Running> {
    let native = cfg.dataplane.xdp_mode == XdpMode::Native;
    if native {
        for ifname in &cfg.dataplane.interfaces {
            host::check_native_xdp(ifname)?;
        }
    }
    host::ensure_bpffs()?;
    // Everything that can be refused is checked before the host or the maps
    // change.
    let ns_per_tick = host::ns_per_tick()?;
    let kernel_cfg = kernel_config(&cfg, ns_per_tick);
    let vrrp = match &cfg.vrrp {
        Some(v) => Some(Vrrp::open(
            v,
            cfg.vrrp_placements(),
            cfg.vrrp_tracked_interfaces(),
        )?),
        None => None,
    };
    let mut dataplane =
        Dataplane::load(object, &load_options(&cfg), Some(&cfg.dataplane.pin_path))?;
    let adopted = dataplane.adopted();
    created_dirs.extend(dataplane.created_dirs().iter().cloned());
    let previous = if adopted {
        let read = check_adoptable(&dataplane, &cfg).and_then(|()| {
            state_dir
                .read::<Record>(RECORD)
                .context("reading the record of the lbd whose data plane this one adopts")
        });
        match read {
            Ok(Some(r)) => Some(r),
            Ok(None) => {
                tracing::warn!(
                    dir = %state_dir.path().display(),
                    "adopting without the previous lbd's record: the host settings found now will be restored at a clean stop"
                );
                None
            }
            Err(e) => {
                abandon(dataplane, adopted, &state_dir, &created_dirs);
                return Err(e);
            }
        }
    } else {
        None
    };
    let previous = previous.map(|r| {
        // Ours are made already; the earlier lbd's come first.
        let mut dirs = r.created_dirs;
        dirs.extend(
            created_dirs
                .drain(..)
                .filter(|d| !dirs.contains(d))
                .collect::<Vec<_>>(),
        );
        created_dirs = dirs;
        r.host
    });
    let host = match HostSettings::apply(&cfg, previous) {
        Ok(h) => h,
        Err(e) => {
            abandon(dataplane, adopted, &state_dir, &created_dirs);
            return Err(e.into());
        }
    };
    let record = Record { host, created_dirs };
    if let Err(e) = state_dir.write(RECORD, &record) {
        let Record {
            host: mut h,
            created_dirs,
        } = record;
        h.restore();
        abandon(dataplane, adopted, &state_dir, &created_dirs);
        return Err(e.into());
    }
    let Record {
        mut host,
        created_dirs,
    } = record;
    let mut balancer = None;
    let up = (|| -> Result<()> {
        dataplane.set_config(&kernel_cfg)?;
        let kernel = if adopted {
            dataplane.kernel_state()?
        } else {
            KernelState::default()
        };
        let mut b = if adopted {
            Balancer::adopt(&cfg, &kernel)
        } else {
            Balancer::new(&cfg)
        };
        b.install(&mut dataplane, &kernel)?;
        balancer = Some(b);
        for ifname in &cfg.dataplane.interfaces {
            dataplane.attach(ifname, !native)?;
        }
        if adopted {
            for ifname in dataplane.detach_others(&cfg.dataplane.interfaces)? {
                tracing::info!(interface = %ifname, "detached: no longer in dataplane.interfaces");
            }
        }
        Ok(())
    })();
    if let Err(e) = up {
        if adopted {
            // The data plane goes on forwarding, and needs the host as it is.
            host.forget();
        } else {
            host.restore();
        }
        abandon(dataplane, adopted, &state_dir, &created_dirs);
        return Err(e);
    }
    let balancer = balancer.expect("set when bring-up succeeds");
    if adopted {
        tracing::info!("adopted the running data plane: flows, rings and counters carry on");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let vrrp_status = vrrp.as_ref().map(Vrrp::status);
    let (vrrp_tx, problems_tx, vrrp) = match vrrp {
        Some(v) => {
            let (tx, rx) = watch::channel(cfg.vrrp_placements());
            let (ptx, prx) = watch::channel(vip_problems(&balancer));
            (Some(tx), Some(ptx), Some((v, rx, prx)))
        }
        None => (None, None, None),
    };
    let mut monitor = HealthMonitor::new(tx);
    monitor.set_targets(balancer.health_targets());
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Running {
        state: Arc::new(Mutex::new(State {
            cfg,
            config_path,
            balancer,
            dataplane,
            monitor,
            checks: HashMap::new(),
            started: Instant::now(),
            started_unix,
            ns_per_tick,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
            vrrp: vrrp_status,
            vrrp_addresses: vrrp_tx,
            vrrp_vip_problems: problems_tx,
        })),
        host,
        state_dir,
        created_dirs,
        health_rx: Some(rx),
        vrrp,
    })
}

/// Refuses to adopt a data plane whose entries this lbd would misread.
fn check_adoptable(dataplane: &Dataplane, cfg: &Config) -> Result<()> {
    let running = dataplane.config()?;
    if running.nat_addr_be != 0 && running.ns_per_tick == 0 {
        anyhow::bail!(
            "the data plane pinned under {} was started by an older lbd that kept time with \
             bpf_ktime_get_coarse_ns; this lbd keeps time in kernel ticks and would misread the \
             age of every flow. Stop it cleanly with the lbd that started it (SIGTERM), or \
             detach it and remove the pins (`rm -r {}`), then start again",
            cfg.dataplane.pin_path.display(),
            cfg.dataplane.pin_path.display()
        );
    }
    Ok(())
}

/// The daemon's state, even after a panic while it was held (a request
/// handler's bug, say): health verdicts, commands and the clean stop must go
/// on working rather than all panic in turn on the poisoned lock.
fn lock_state<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|poisoned| {
        tracing::error!("a task panicked while holding the daemon state; carrying on");
        state.clear_poison();
        poisoned.into_inner()
    })
}

/// Undoes a failed bring-up: a fresh data plane is removed, with the
/// record and the directories made for it; an adopted one is left as it was
/// found, still forwarding, with the record that goes with it.
fn abandon(mut dataplane: Dataplane, adopted: bool, state_dir: &StateDir, created: &[PathBuf]) {
    if adopted {
        dataplane.release();
        return;
    }
    if let Err(e) = dataplane.shutdown() {
        tracing::warn!(error = %format!("{e:#}"), "cleaning up after a failed start");
    }
    state_dir.remove(RECORD);
    state::remove_created_dirs(created);
}

impl Running {
    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// Stops as asked. Works through the lock, so a request or scrape still
    /// holding the state cannot prevent a clean stop.
    pub fn stop(mut self, exit: Exit) -> Result<()> {
        // A panicked request handler must not leave the data plane behind.
        let mut st = lock_state(&self.state);
        st.monitor.shutdown();
        match exit {
            Exit::Clean => {
                let result = st.dataplane.shutdown();
                self.host.restore();
                drop(st);
                // Everything else lbd made, now that the pins are gone: its
                // state directory, then the directories it created.
                self.state_dir.discard();
                state::remove_created_dirs(&self.created_dirs);
                result
            }
            Exit::KeepForwarding => {
                // Host settings stay too: the data plane still needs them.
                // The pins keep maps and links alive once this process is gone.
                self.host.forget();
                Ok(())
            }
        }
    }
}

/// Runs until `shutdown` resolves: serves the control socket, health checks,
/// reloads and metrics, then stops as `shutdown` says.
pub async fn run(
    cfg: Config,
    config_path: PathBuf,
    object: &[u8],
    shutdown: impl Future<Output = Exit>,
    mut reload_signal: mpsc::UnboundedReceiver<()>,
) -> Result<()> {
    // The stop signals are already handled (lbd installs their handlers
    // first): one that arrives from here on stops lbd cleanly once it is up.
    tracing::info!(config = %config_path.display(), "starting");
    let socket = cfg.control.socket.clone();
    // Before anything is adopted or changed: one lbd per data plane.
    let state_dir = StateDir::lock(Path::new(state::STATE_ROOT), &cfg.dataplane.pin_path)?;
    state_dir.claim(&socket)?;
    let (listener, socket_dirs) = control::bind(&socket)?;
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                state::remove_created_dirs(&socket_dirs);
                return Err(anyhow::Error::new(e).context(format!(
                    "binding the metrics endpoint {addr} (metrics.listen)"
                )));
            }
        },
        None => None,
    };
    let mut running = match start(cfg, config_path, object, state_dir, socket_dirs.clone()) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            state::remove_created_dirs(&socket_dirs);
            return Err(e);
        }
    };
    {
        let st = lock_state(&running.state);
        tracing::info!(
            vips = st.balancer.vips().len(),
            interfaces = ?st.dataplane.attached(),
            mode = %st.cfg.dataplane.xdp_mode,
            adopted = st.dataplane.adopted(),
            socket = %socket.display(),
            metrics = ?st.cfg.metrics.listen,
            "lbd ready"
        );
    }
    println!("lbd: ready");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(control::serve(
        listener,
        running.state(),
        stop_rx.clone(),
    )));
    let kernel_logger = lock_state(&running.state).dataplane.take_logger();
    if let Some(logger) = kernel_logger {
        // SAFETY: the logger owns its ring buffer's fd, which stays open and
        // the same for as long as the logger lives inside the AsyncFd.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        match registered {
            Ok(mut fd) => tasks.push(tokio::spawn(async move {
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            })),
            Err(e) => {
                tracing::warn!(error = %e.to_string(), "kernel-side log records will not be shown")
            }
        }
    }
    let (leave_tx, leave_rx) = watch::channel(None);
    let vrrp_task = running
        .vrrp
        .take()
        .map(|(v, addresses, problems)| tokio::spawn(v.run(addresses, problems, leave_rx)));
    let health_rx = running.health_rx.take().expect("taken once");
    tasks.push(tokio::spawn(apply_health(health_rx, running.state())));
    if let Some(l) = metrics_listener {
        let state = running.state();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(metrics::serve(
            l,
            move || snapshot_counting_tables(&state),
            async move {
                let _ = stop.changed().await;
            },
        )));
    }
    let reload_state = running.state();
    let reloads = tokio::spawn(async move {
        while reload_signal.recv().await.is_some() {
            let state = reload_state.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut st = lock_state(&state);
                match reload(&mut st) {
                    Ok(s) => tracing::info!(summary = ?s, "reloaded on SIGHUP"),
                    Err(e) => tracing::error!(error = %e, "reload on SIGHUP refused; running state unchanged"),
                }
                publish_vip_problems(&st);
            })
            .await;
        }
    });
    let exit = shutdown.await;
    match exit {
        Exit::Clean => tracing::info!("stopping: detaching and removing pins"),
        Exit::KeepForwarding => {
            tracing::info!("exiting, leaving the data plane forwarding for the next lbd")
        }
    }
    if let Some(task) = vrrp_task {
        // First, so a clean stop hands the addresses to the peer while this
        // host still forwards.
        let _ = leave_tx.send(Some(match exit {
            Exit::Clean => Leave::GiveUp,
            Exit::KeepForwarding => Leave::Keep,
        }));
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("vrrp did not stop within 5 s");
        }
    }
    let _ = stop_tx.send(true);
    reloads.abort();
    let _ = reloads.await;
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&socket);
    running.stop(exit)
}

/// Applies health verdicts to the balancer as they arrive.
async fn apply_health(mut rx: mpsc::UnboundedReceiver<HealthEvent>, state: Arc<Mutex<State>>) {
    while let Some(event) = rx.recv().await {
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut st = lock_state(&state);
            let st = &mut *st;
            match event {
                HealthEvent::Checked { key, outcome } => {
                    let c = st.checks.entry(key).or_default();
                    if outcome.ok {
                        c.ok += 1;
                    } else {
                        c.failed += 1;
                    }
                    c.last_latency = Some(outcome.latency);
                    c.last_detail = outcome.detail;
                }
                // A verdict from a task a reload has since replaced: the
                // monitor's current state for the target is what counts.
                HealthEvent::Changed { key, up, .. } if st.monitor.state(&key) != Some(up) => {}
                HealthEvent::Changed { key, up, detail } => match st.balancer.set_health(
                    &mut st.dataplane,
                    &key.vip,
                    *key.backend.ip(),
                    key.backend.port(),
                    up,
                ) {
                    Ok(true) => tracing::info!(
                        vip = key.vip,
                        backend = %key.backend,
                        state = if up { "up" } else { "down" },
                        detail,
                        "backend health changed"
                    ),
                    Ok(false) => {}
                    // A target removed by a reload racing its last verdict.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::error!(error = %e, "applying a health verdict failed"),
                },
            }
            publish_vip_problems(st);
        })
        .await;
    }
}

/// Why a reload was refused or failed; in every case nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "[vrrp] changed: only vrrp.addresses (and the VIPs) can change on a reload; \
         restart lbd for the rest (the peer takes over meanwhile)"
    )]
    Vrrp,
    #[error("{0}")]
    Balancer(#[from] BalancerError),
}

/// Re-reads the configuration file and reconciles to it. An invalid file or
/// a change that needs a restart is refused with nothing changed.
pub fn reload(st: &mut State) -> Result<ReloadChanges, ReloadError> {
    let result = (|| -> Result<ReloadChanges, ReloadError> {
        let new = Config::from_file(&st.config_path)?;
        vrrp_reloadable(&st.cfg, &new)?;
        let kernel = kernel_config(&new, st.ns_per_tick);
        let summary = st
            .balancer
            .reload(&mut st.dataplane, &st.cfg, &new, &kernel)?;
        st.monitor.set_targets(st.balancer.health_targets());
        if let Some(tx) = &st.vrrp_addresses {
            let _ = tx.send(new.vrrp_placements());
        }
        st.cfg = new;
        Ok(summary)
    })();
    match &result {
        Ok(_) => {
            st.reloads += 1;
            st.last_reload_error = None;
        }
        Err(e) => {
            st.reload_failures += 1;
            st.last_reload_error = Some(crate::text::clip(&e.to_string()));
        }
    }
    result
}

/// A reload may change the floating addresses (directly or through the
/// VIPs); anything else in `[vrrp]` needs a restart.
fn vrrp_reloadable(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let without_addresses = |c: &Config| {
        c.vrrp.clone().map(|mut v| {
            v.addresses = None;
            v.address_interfaces.clear();
            v
        })
    };
    if without_addresses(old) != without_addresses(new) {
        return Err(ReloadError::Vrrp);
    }
    Ok(())
}

/// The numbers the metrics endpoint shows.
/// [`snapshot`], with the flow and NAT tables counted after the state lock
/// is released: a walk of a big table takes a while, and health verdicts
/// and lbctl commands must not wait for it.
fn snapshot_counting_tables(state: &Mutex<State>) -> metrics::Snapshot {
    let (mut snap, counter) = {
        let st = lock_state(state);
        (snapshot(&st), st.dataplane.table_counter())
    };
    match counter {
        Ok(c) => {
            snap.flows = c.flows() as u64;
            snap.nat_entries = c.nat_entries() as u64;
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot count the flow tables"),
    }
    snap
}

/// The metrics, but for the table sizes (0 here; see
/// [`snapshot_counting_tables`]).
pub fn snapshot(st: &State) -> metrics::Snapshot {
    let counters = st.dataplane.reason_counters().unwrap_or_default();
    let reasons = Reason::ALL
        .iter()
        .zip(counters.iter())
        .map(|(r, c)| (r.label(), c.packets, c.bytes, r.is_drop()))
        .collect();
    let vips = control::vip_statuses(&st.balancer, &st.dataplane, st.cfg.dataplane.ring_size)
        .unwrap_or_default()
        .into_iter()
        .map(|v| metrics::VipMetrics {
            name: v.name.clone(),
            address: format!("{}:{}", v.address, v.port),
            healthy_backends: v.healthy_backends,
            ring_digest: v.ring_digest.clone(),
            packets: v.packets,
            bytes: v.bytes,
            flows: v.flows,
            backends: v
                .backends
                .iter()
                .map(|b| {
                    let c = st
                        .checks
                        .get(&BackendKey::new(v.name.clone(), b.address, b.port))
                        .cloned()
                        .unwrap_or_default();
                    metrics::BackendMetrics {
                        address: format!("{}:{}", b.address, b.port),
                        weight: b.weight,
                        state: b.state.as_str().to_owned(),
                        packets: b.packets,
                        bytes: b.bytes,
                        flows: b.flows,
                        check_latency_seconds: c.last_latency.map(|d| d.as_secs_f64()),
                        checks_ok: c.ok,
                        checks_failed: c.failed,
                    }
                })
                .collect(),
        })
        .collect();
    let events = Event::ALL
        .iter()
        .zip(st.dataplane.event_counters().unwrap_or_default())
        .map(|(e, n)| (e.label(), n))
        .collect();
    metrics::Snapshot {
        vips,
        reasons,
        events,
        flows: 0,
        nat_entries: 0,
        flow_capacity: lb_ebpf::flow_slots_for(st.cfg.dataplane.max_flows) as u64,
        up_since_unix: st.started_unix,
        reloads: st.reloads,
        reload_failures: st.reload_failures,
        vrrp: st.vrrp.as_ref().map(|v| {
            let v = v.lock().unwrap_or_else(|p| p.into_inner());
            metrics::VrrpMetrics {
                master: v.role == Role::Master,
                priority: v.effective_priority,
                holding: v.holding,
                transitions: v.transitions,
                adverts_sent: v.adverts_sent,
                adverts_received: v.adverts_received,
                adverts_invalid: v.adverts_invalid,
                refused: v.refused.iter().map(|(r, n)| (r.clone(), *n)).collect(),
                ec2: v.ec2.as_ref().map(|e| (e.takeovers, e.failures)),
                ec2_state: v.ec2.as_ref().map(|e| metrics::Ec2Metrics {
                    preflight_ok: match e.preflight {
                        Preflight::Passed => Some(true),
                        Preflight::Failed => Some(false),
                        Preflight::Pending => None,
                    },
                    held: v.role == Role::Master && e.reconcile == Some(Reconcile::Held),
                    stranded: e.stranded.len() as u64,
                    drifts: e.drifts,
                    repairs: e.repairs,
                }),
            }
        }),
    }
}

/// The VIPs that have backends but none taking new flows: what
/// `vrrp.track_backends` lowers the priority for.
fn vip_problems(balancer: &Balancer) -> Vec<String> {
    balancer
        .vips()
        .iter()
        .filter(|v| !v.backends.is_empty() && !v.backends.iter().any(|b| b.in_ring()))
        .map(|v| format!("VIP {} has no backend taking new flows", v.name))
        .collect()
}

/// Tells the VRRP instance (if any) the VIPs' problems, when they changed.
fn publish_vip_problems(st: &State) {
    if let Some(tx) = &st.vrrp_vip_problems {
        let now = vip_problems(&st.balancer);
        tx.send_if_modified(|cur| {
            if *cur == now {
                false
            } else {
                *cur = now;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_lock_outlives_a_panic_while_held() {
        let state = Arc::new(Mutex::new(1u32));
        let s = state.clone();
        let panicked = std::thread::spawn(move || {
            let _held = s.lock().unwrap();
            panic!("a request handler's bug");
        })
        .join();
        assert!(panicked.is_err() && state.is_poisoned());
        *lock_state(&state) += 1;
        assert!(!state.is_poisoned(), "cleared once recovered");
        assert_eq!(*lock_state(&state), 2);
    }
}
