//! The EC2 side of a pair: EC2 routes an address to an instance because the
//! API says so (gratuitous ARP means nothing there), so a new master moves
//! the floating addresses and the Elastic IP to its own network interfaces
//! through the EC2 API, and keeps them there.
//!
//! One task per VRRP instance ([`Ec2::start`]) does, in turn:
//! - **discovery** from instance metadata ([`imds`]): the instance, its
//!   region, the ENI of each interface a floating address lives on;
//! - **preflight** on both hosts ([`preflight`]): credentials, the ENIs are
//!   this instance's, addresses in their subnets, the Elastic IP and route
//!   tables exist, the mutating calls are allowed (DryRun);
//! - **takeover** on becoming master and **reconcile** every
//!   `reconcile_interval_ms` while master: describe, compare with what this
//!   host should hold ([`plan`]), change only what differs, read back until
//!   EC2 shows it; a master that hears a lower-priority advertisement (a
//!   backup that was master for a moment) reconciles at once. Repairs of
//!   drift are held down (`hold_down_ms`, doubling while drift returns), so
//!   two masters in a real partition cannot ping-pong the Elastic IP;
//! - while **backup**, a check that nothing of the pair's sits on this
//!   host's ENIs, reported loudly when it does.
//!
//! Errors carry their class ([`error`]): permanent ones stop the step and are
//! reported with the AWS error code and request id; throttling, 5xx and
//! timeouts are retried with backoff and jitter; each call has its own
//! timeout ([`client`]).

pub mod client;
pub mod error;
pub mod imds;
pub mod plan;
pub mod preflight;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
    time::Instant,
};

pub use error::{Ec2Error, ErrorClass};

use super::status::{Check, Ec2Status, Preflight, Reconcile, Status as VrrpStatus, Takeover};
use crate::config;
use client::Api;
use imds::Discovery;
use plan::{Desired, Observed, Step};

/// Pauses between failed passes: 0.5 s doubling up to 8 s (with jitter).
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(8);
/// How long EC2 may take to show a change (it applies remaps
/// asynchronously), and how often we look meanwhile.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
const VERIFY_POLL: Duration = Duration::from_millis(250);
/// How long the moved addresses may take to show in instance metadata.
const IMDS_TIMEOUT: Duration = Duration::from_secs(30);
/// A master reconciles at most this often on lower-priority adverts (a peer
/// that cannot hear it advertises as master every interval), and once more
/// [`REASSERT_FOLLOW_UP`] after (the peer's calls may still be on their way).
const REASSERT_GAP: Duration = Duration::from_secs(5);
const REASSERT_FOLLOW_UP: Duration = Duration::from_secs(3);
/// The hold-down doubles with each repair in a row, up to this factor.
const HOLD_DOWN_MAX_FACTOR: u32 = 8;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The EC2 side of one VRRP instance: a handle on its task.
pub struct Ec2 {
    runner: Option<Runner>,
    role: watch::Sender<bool>,
    placements: watch::Sender<Vec<(Ipv4Addr, String)>>,
    reassert: Arc<Notify>,
    nudge: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Ec2 {
    /// `placements`: the floating addresses and their interfaces;
    /// `vrrp_interface`: the interface of `network_interface_id`.
    pub fn new(
        cfg: &config::Ec2,
        vrrp_interface: &str,
        placements: Vec<(Ipv4Addr, String)>,
        status: Arc<Mutex<VrrpStatus>>,
    ) -> Ec2 {
        let (role_tx, role_rx) = watch::channel(false);
        let (placements_tx, placements_rx) = watch::channel(placements);
        let reassert = Arc::new(Notify::new());
        let nudge = Arc::new(Notify::new());
        Ec2 {
            runner: Some(Runner {
                cfg: cfg.clone(),
                vrrp_interface: vrrp_interface.to_owned(),
                status,
                role: role_rx,
                placements: placements_rx,
                reassert: reassert.clone(),
                nudge: nudge.clone(),
                discovery: None,
                api: None,
                preflight_done: false,
                took_over: false,
                master_since: None,
                last_move: None,
                repairs_in_a_row: 0,
                accepted_private: None,
                failed_passes: 0,
            }),
            role: role_tx,
            placements: placements_tx,
            reassert,
            nudge,
            task: None,
        }
    }

    /// Notified when this host is backup and EC2 shows some of the pair's
    /// addresses on its own ENIs: the VRRP side then sends one
    /// advertisement of its (lower) priority, which makes the master
    /// re-assert them (keepalived's master runs notify_master_rx_lower_pri).
    /// After a healed partition the loser may step down without the winner
    /// ever hearing it; this is how the winner learns.
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// Starts the task (discovery and preflight begin at once).
    pub fn start(&mut self) {
        if let Some(r) = self.runner.take() {
            self.task = Some(tokio::spawn(r.run()));
        }
    }

    /// This host became master (`true`) or stopped being master: a takeover
    /// starts, or one in progress is abandoned (the new master makes its own).
    pub fn set_master(&self, master: bool) {
        self.role.send_replace(master);
    }

    /// A master heard a lower-priority advertisement: the peer was master,
    /// perhaps for a moment, and may have moved the addresses.
    pub fn reassert(&self) {
        self.reassert.notify_one();
    }

    /// A reload changed the floating addresses.
    pub fn set_placements(&self, placements: Vec<(Ipv4Addr, String)>) {
        self.placements.send_replace(placements);
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Ec2 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status of the EC2 side before anything has happened.
pub fn initial_status(cfg: &config::Ec2) -> Ec2Status {
    Ec2Status {
        network_interface_id: cfg.network_interface_id.clone().unwrap_or_default(),
        elastic_ip_allocation_id: cfg.elastic_ip_allocation_id.clone(),
        state: Takeover::Idle,
        mode: cfg.mode,
        preflight: Preflight::Pending,
        ..Ec2Status::default()
    }
}

/// Checks an identifier of the EC2 API (`eni-0123abcd`) for its shape; the
/// error says what is wrong (the caller names the key).
pub fn check_id(value: &str, prefix: &str) -> Result<(), String> {
    let Some(rest) = value.strip_prefix(prefix) else {
        return Err(format!("{value:?} does not start with {prefix:?}"));
    };
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{value:?} is not an EC2 id ({prefix} and hexadecimal digits)"
        ));
    }
    Ok(())
}

/// How long after its last repair a master waits before the next one:
/// `base_ms`, doubling with each repair in a row, up to
/// [`HOLD_DOWN_MAX_FACTOR`] times.
pub fn hold_down(base_ms: u64, repairs_in_a_row: u32) -> Duration {
    let factor = (1u32 << repairs_in_a_row.saturating_sub(1).min(3)).min(HOLD_DOWN_MAX_FACTOR);
    Duration::from_millis(base_ms) * factor
}

/// What a pass found to do next.
enum Next {
    /// The regular interval.
    Interval,
    /// Sooner or later than that: a hold-down running out, a retry.
    At(Instant),
}

struct Runner {
    cfg: config::Ec2,
    vrrp_interface: String,
    status: Arc<Mutex<VrrpStatus>>,
    role: watch::Receiver<bool>,
    placements: watch::Receiver<Vec<(Ipv4Addr, String)>>,
    reassert: Arc<Notify>,
    nudge: Arc<Notify>,
    discovery: Option<Result<Discovery, Ec2Error>>,
    api: Option<Api>,
    preflight_done: bool,
    /// The takeover of the current mastership is done.
    took_over: bool,
    master_since: Option<Instant>,
    /// When this host last repaired drift through the API.
    last_move: Option<Instant>,
    repairs_in_a_row: u32,
    /// The private address EC2 keeps reporting for the Elastic IP after we
    /// asked for another one.
    accepted_private: Option<Ipv4Addr>,
    failed_passes: u32,
}

impl Runner {
    fn update(&self, f: impl FnOnce(&mut Ec2Status)) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = st.ec2.as_mut() {
            f(e);
        }
    }

    fn interval(&self) -> Duration {
        let base = Duration::from_millis(self.cfg.reconcile_interval_ms);
        // ±10 % so that the two hosts do not describe in step.
        base.mul_f64(0.9 + 0.2 * fastrand::f64())
    }

    async fn run(mut self) {
        let mut next = Instant::now();
        let mut follow_up: Option<Instant> = None;
        let mut last_reassert: Option<Instant> = None;
        let mut was_master = false;
        loop {
            let master = *self.role.borrow_and_update();
            if master != was_master {
                self.role_changed(master);
                was_master = master;
                next = Instant::now();
            }
            if let Some(f) = follow_up {
                if f < next {
                    next = f;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = self.role.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = self.reassert.notified() => {
                    let now = Instant::now();
                    if master && last_reassert.is_none_or(|t| now >= t + REASSERT_GAP) {
                        last_reassert = Some(now);
                        tracing::info!("ec2: a lower-priority peer advertised: checking that the addresses are still here");
                        next = now;
                        follow_up = Some(now + REASSERT_FOLLOW_UP);
                    }
                    continue;
                }
                changed = self.placements.changed() => {
                    if changed.is_ok() {
                        // New floating addresses: find their interfaces'
                        // ENIs; a master moves them as in a takeover.
                        self.discovery = None;
                        if master {
                            self.took_over = false;
                        }
                        next = Instant::now();
                    }
                    continue;
                }
            }
            if follow_up.is_some_and(|f| f <= Instant::now()) {
                follow_up = None;
            }
            // A pass, abandoned if the role changes meanwhile.
            let mut role = self.role.clone();
            let outcome = tokio::select! {
                r = self.pass(master) => Some(r),
                _ = role.changed() => None,
            };
            let now = Instant::now();
            next = match outcome {
                None => now,
                Some(Ok(Next::Interval)) => {
                    self.failed_passes = 0;
                    now + self.interval()
                }
                Some(Ok(Next::At(t))) => {
                    self.failed_passes = 0;
                    t
                }
                Some(Err(e)) => {
                    self.failed_passes += 1;
                    self.failed(master, &e);
                    if e.class().retryable() {
                        now + error::backoff(self.failed_passes, e.class(), FIRST_RETRY, LAST_RETRY)
                    } else {
                        now + self.interval()
                    }
                }
            };
        }
    }

    fn role_changed(&mut self, master: bool) {
        if master {
            self.took_over = false;
            self.master_since = Some(Instant::now());
            self.update(|e| {
                e.state = Takeover::Moving;
                e.attempts = 0;
            });
        } else {
            let took_over = self.took_over;
            self.master_since = None;
            self.update(|e| {
                if !took_over && matches!(e.state, Takeover::Moving | Takeover::Retrying) {
                    e.state = Takeover::Stopped;
                }
            });
        }
    }

    fn failed(&self, master: bool, e: &Ec2Error) {
        let text = e.to_string();
        let class = e.class();
        tracing::warn!(error = %text, class = %class, master, "ec2: a pass failed");
        let taking_over = master && !self.took_over;
        self.update(|s| {
            s.last_error = Some(text.clone());
            s.last_error_class = Some(class);
            s.last_error_code = e.code().map(str::to_owned);
            s.last_request_id = e.request_id().map(str::to_owned);
            if taking_over {
                s.failures += 1;
                s.state = if class.retryable() {
                    Takeover::Retrying
                } else {
                    Takeover::Failed
                };
            }
        });
    }

    async fn pass(&mut self, master: bool) -> Result<Next, Ec2Error> {
        if master && !self.took_over {
            self.update(|e| e.attempts += 1);
            self.master_pass(true).await
        } else if !self.preflight_done {
            self.preflight_pass().await?;
            Ok(Next::At(Instant::now()))
        } else if master {
            self.master_pass(false).await
        } else {
            self.backup_pass().await
        }
    }

    /// Discovery (again, if it failed) and the API client.
    async fn setup(&mut self) -> Result<(), Ec2Error> {
        let rediscover = match &self.discovery {
            None => true,
            Some(Err(e)) => e.class().retryable(),
            Some(Ok(_)) => false,
        };
        if rediscover {
            let placements = self.placements.borrow().clone();
            let mut names: Vec<String> = vec![self.vrrp_interface.clone()];
            for (_, i) in &placements {
                if !names.contains(i) {
                    names.push(i.clone());
                }
            }
            let mut interfaces = Vec::new();
            let mut local_error = None;
            for n in &names {
                match super::link::Interface::lookup(n) {
                    Ok(i) => interfaces.push((n.clone(), i.mac)),
                    Err(e) => local_error = Some(format!("{n}: {e:#}")),
                }
            }
            let found = match local_error {
                Some(e) => Err(Ec2Error::Setup(e)),
                None => imds::discover(&imds::client(), &interfaces).await,
            };
            match &found {
                Ok(d) => {
                    let enis: Vec<String> = d.nics.iter().map(|n| n.interface_id.clone()).collect();
                    tracing::info!(
                        instance = %d.instance_id,
                        zone = %d.availability_zone,
                        enis = %enis.join(", "),
                        "ec2: instance metadata read"
                    );
                    let vrrp_eni = d
                        .nic(&self.vrrp_interface)
                        .map(|n| n.interface_id.clone())
                        .unwrap_or_default();
                    let (id, zone) = (d.instance_id.clone(), d.availability_zone.clone());
                    self.update(|s| {
                        s.instance_id = Some(id);
                        s.availability_zone = Some(zone);
                        s.network_interface_id = vrrp_eni;
                        s.network_interfaces = enis;
                    });
                }
                Err(e) => tracing::warn!(error = %e, "ec2: instance metadata could not be read"),
            }
            self.discovery = Some(found);
        }
        if self.api.is_none() {
            let region = self
                .discovery
                .as_ref()
                .and_then(|d| d.as_ref().ok())
                .map(|d| d.region.clone());
            self.api = Some(Api::connect(&self.cfg, region).await?);
        }
        Ok(())
    }

    /// The ENI of each interface: discovered, else the configured one.
    fn enis(&self) -> plan::Enis {
        let mut m = BTreeMap::new();
        match &self.discovery {
            Some(Ok(d)) => {
                for n in &d.nics {
                    m.insert(n.ifname.clone(), n.interface_id.clone());
                }
            }
            _ => {
                if let Some(e) = &self.cfg.network_interface_id {
                    m.insert(self.vrrp_interface.clone(), e.clone());
                }
            }
        }
        m
    }

    fn desired(&self) -> Result<Desired, String> {
        plan::desired(
            &self.cfg,
            &self.placements.borrow(),
            &self.vrrp_interface,
            &self.enis(),
        )
    }

    fn desired_or_error(&self) -> Result<Desired, Ec2Error> {
        self.desired().map_err(|ifname| match &self.discovery {
            Some(Err(e)) => e.clone(),
            _ => Ec2Error::Mismatch(format!(
                "the ENI of interface {ifname} is not known (instance metadata does not list it)"
            )),
        })
    }

    async fn preflight_pass(&mut self) -> Result<(), Ec2Error> {
        if let Err(e) = self.setup().await {
            // Without a client nothing else can be checked.
            let check = Check {
                name: "setup".into(),
                ok: false,
                detail: e.to_string(),
            };
            let retry = e.class().retryable();
            self.update(|s| {
                s.preflight = if retry {
                    Preflight::Pending
                } else {
                    Preflight::Failed
                };
                s.preflight_checks = vec![check];
            });
            if !retry {
                self.preflight_done = true;
            }
            return Err(e);
        }
        let desired = self.desired();
        let discovery = self
            .discovery
            .clone()
            .unwrap_or_else(|| Err(Ec2Error::Setup("not read".into())));
        let api = self.api.as_ref().expect("set up");
        let report = preflight::run(
            api,
            &preflight::Inputs {
                cfg: &self.cfg,
                vrrp_interface: &self.vrrp_interface,
                discovery: &discovery,
                desired: &desired,
            },
        )
        .await;
        let state = if report.failed {
            Preflight::Failed
        } else if report.incomplete {
            Preflight::Pending
        } else {
            Preflight::Passed
        };
        match report.first_failure() {
            Some(f) if report.failed => {
                tracing::error!(first = %f, "ec2: preflight failed: this host cannot take over until it is fixed")
            }
            Some(f) => tracing::warn!(first = %f, "ec2: preflight incomplete; trying again"),
            None => tracing::info!("ec2: preflight passed"),
        }
        let checks = report.checks.clone();
        self.update(|s| {
            s.preflight = state;
            s.preflight_checks = checks;
        });
        self.preflight_done = !report.incomplete;
        if report.incomplete {
            return Err(Ec2Error::NotApplied(
                report.first_failure().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    async fn observe(&self, d: &Desired) -> Result<Observed, Ec2Error> {
        let api = self.api.as_ref().expect("set up");
        let mut address_enis: Vec<String> = Vec::new();
        for (_, e) in &d.addresses {
            if !address_enis.contains(e) {
                address_enis.push(e.clone());
            }
        }
        let tables = d.route_tables();
        let (enis, eip, routes) = tokio::join!(
            api.describe_enis(&address_enis),
            async {
                match &d.elastic_ip {
                    Some(e) => api.describe_elastic_ip(&e.allocation).await.map(Some),
                    None => Ok(None),
                }
            },
            api.describe_routes(&tables),
        );
        let mut o = Observed {
            elastic_ip: eip?,
            ..Observed::default()
        };
        for e in enis? {
            o.eni_addresses.insert(e.id, e.addresses);
        }
        for (t, a, target) in routes? {
            o.routes.insert((t, a), target);
        }
        Ok(o)
    }

    async fn apply(&self, steps: &[Step]) -> Result<(), Ec2Error> {
        let api = self.api.as_ref().expect("set up");
        for s in steps {
            match s {
                Step::Assign { eni, addresses } => api.assign(eni, addresses).await?,
                Step::Associate(e) => api.associate(e, false).await?,
                Step::ReplaceRoute {
                    table,
                    destination,
                    eni,
                } => api.replace_route(table, *destination, eni, false).await?,
                Step::CreateRoute {
                    table,
                    destination,
                    eni,
                } => api.create_route(table, *destination, eni, false).await?,
            }
            tracing::info!(step = ?s, "ec2: {}", s.operation());
        }
        Ok(())
    }

    /// Reads back until EC2 shows everything of `d`. A private address of
    /// the Elastic IP that stays different while its ENI is right is final:
    /// it is accepted and reported, not asked for again.
    async fn verify(&mut self, d: &Desired) -> Result<Observed, Ec2Error> {
        let deadline = Instant::now() + VERIFY_TIMEOUT;
        loop {
            let o = self.observe(d).await?;
            let (steps, why) = plan::diff(d, &o, self.accepted_private);
            if steps.is_empty() {
                return Ok(o);
            }
            let only_private = steps.len() == 1
                && matches!(&steps[0], Step::Associate(want)
                    if o.elastic_ip.as_ref().and_then(|e| e.eni.as_deref()) == Some(want.eni.as_str()));
            if only_private {
                let seen = o.elastic_ip.as_ref().and_then(|e| e.private);
                let warning = format!(
                    "EC2 reports the Elastic IP mapped to {}, although AssociateAddress asked \
                     for {}; not asked again (each remap is billed)",
                    seen.map(|a| a.to_string()).unwrap_or_default(),
                    d.elastic_ip
                        .as_ref()
                        .and_then(|e| e.private)
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                );
                tracing::warn!(warning = %warning, "ec2");
                self.accepted_private = seen;
                self.update(|s| s.warning = Some(warning));
                return Ok(o);
            }
            if Instant::now() >= deadline {
                return Err(Ec2Error::NotApplied(format!(
                    "EC2 does not show the change {} s later: {}",
                    VERIFY_TIMEOUT.as_secs(),
                    why.join("; ")
                )));
            }
            tokio::time::sleep(VERIFY_POLL).await;
        }
    }

    async fn master_pass(&mut self, takeover: bool) -> Result<Next, Ec2Error> {
        self.setup().await?;
        let d = self.desired_or_error()?;
        let o = self.observe(&d).await?;
        let (steps, why) = plan::diff(&d, &o, self.accepted_private);
        let now = Instant::now();
        let mut next = Next::Interval;
        if !steps.is_empty() {
            if !takeover {
                let what = why.join("; ");
                tracing::warn!(drift = %what, "ec2: drift: EC2 does not show what this master holds");
                self.update(|s| {
                    s.drifts += 1;
                    s.last_drift = Some(what.clone());
                    s.reconcile = Some(Reconcile::Drifted);
                    s.last_reconcile_unix = Some(unix_now());
                });
                let hold = hold_down(self.cfg.hold_down_ms, self.repairs_in_a_row);
                if let Some(t) = self.last_move.filter(|t| now < *t + hold) {
                    tracing::info!(repair_in = ?(t + hold - now), "ec2: repair held down");
                    return Ok(Next::At(t + hold));
                }
            }
            self.apply(&steps).await?;
            if !takeover {
                // Repairs hold each other down, longer while they keep
                // coming (verified or not: a peer that keeps taking the
                // addresses back is the case this is for); a takeover is
                // never held (failover speed), nor does it hold the next
                // repair (a peer's flap right after it is repaired at once).
                self.last_move = Some(Instant::now());
                self.repairs_in_a_row += 1;
            }
        }
        let o = if steps.is_empty() {
            o
        } else {
            self.verify(&d).await?
        };
        let public = o.elastic_ip.as_ref().and_then(|e| e.public.clone());
        let moved = !steps.is_empty();
        if takeover {
            self.took_over = true;
            let took = self.master_since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(
                private = ?d.addresses,
                routes = ?d.routes,
                elastic_ip = ?public,
                took = ?took,
                changed = moved,
                "ec2: addresses on this instance and verified"
            );
            self.update(|s| {
                s.state = Takeover::Done;
                s.done_unix = Some(unix_now());
                s.took_ms = Some(took.as_millis() as u64);
                s.public_ip = public.clone();
                s.takeovers += 1;
                s.reconcile = Some(Reconcile::Held);
                s.last_reconcile_unix = Some(unix_now());
            });
            if moved && !d.addresses.is_empty() {
                self.await_metadata(&d).await;
            }
        } else if moved {
            tracing::warn!("ec2: drift repaired and verified");
            self.update(|s| {
                s.repairs += 1;
                s.reconcile = Some(Reconcile::Repaired);
                s.public_ip = public.clone();
                s.last_reconcile_unix = Some(unix_now());
            });
            next = Next::At(Instant::now() + self.interval());
        } else {
            self.repairs_in_a_row = 0;
            self.update(|s| {
                s.reconcile = Some(Reconcile::Held);
                s.stranded.clear();
                s.public_ip = public.clone();
                s.last_reconcile_unix = Some(unix_now());
            });
        }
        Ok(next)
    }

    /// Waits until instance metadata lists the moved private addresses for
    /// their ENIs, and reports how long that took from becoming master.
    async fn await_metadata(&mut self, d: &Desired) {
        let Some(Ok(disc)) = &self.discovery else {
            return;
        };
        let client = imds::client();
        let deadline = Instant::now() + IMDS_TIMEOUT;
        let mut missing: Vec<(Ipv4Addr, String)> = Vec::new();
        loop {
            missing.clear();
            for (a, eni) in &d.addresses {
                let Some(nic) = disc.nics.iter().find(|n| &n.interface_id == eni) else {
                    continue;
                };
                match imds::local_ipv4s(&client, &nic.mac).await {
                    Ok(v) if v.contains(a) => {}
                    _ => missing.push((*a, nic.ifname.clone())),
                }
            }
            if missing.is_empty() {
                let ms = self
                    .master_since
                    .map(|t| t.elapsed().as_millis() as u64)
                    .unwrap_or(0);
                tracing::info!(ms, "ec2: the moved addresses show in instance metadata");
                self.update(|s| s.imds_ms = Some(ms));
                return;
            }
            if Instant::now() >= deadline {
                let text = format!(
                    "instance metadata does not list {} {} s after the takeover",
                    missing
                        .iter()
                        .map(|(a, i)| format!("{a} (on {i})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    IMDS_TIMEOUT.as_secs()
                );
                tracing::warn!(problem = %text, "ec2");
                self.update(|s| s.warning = Some(text));
                return;
            }
            tokio::time::sleep(VERIFY_POLL).await;
        }
    }

    async fn backup_pass(&mut self) -> Result<Next, Ec2Error> {
        self.setup().await?;
        let d = self.desired_or_error()?;
        let o = self.observe(&d).await?;
        let here = plan::stranded(&d, &o);
        let before = {
            let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.ec2
                .as_ref()
                .map(|e| e.stranded.clone())
                .unwrap_or_default()
        };
        if !here.is_empty() && here != before {
            tracing::error!(
                here = %here.join("; "),
                "ec2: this host is backup, but EC2 has the pair's addresses on its ENIs: traffic \
                 goes through this host until the master reconciles"
            );
        } else if here.is_empty() && !before.is_empty() {
            tracing::info!("ec2: nothing of the pair's is on this backup's ENIs any more");
        }
        if !here.is_empty() {
            self.nudge.notify_one();
        }
        self.update(|s| {
            s.reconcile = Some(if here.is_empty() {
                Reconcile::Clear
            } else {
                Reconcile::Stranded
            });
            s.stranded = here;
            s.last_reconcile_unix = Some(unix_now());
        });
        Ok(Next::Interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ec2Mode;

    #[test]
    fn ids_are_checked_for_shape() {
        assert!(check_id("eni-0a1b2c", "eni-").is_ok());
        assert!(check_id("eni-", "eni-").is_err());
        assert!(check_id("eipalloc-12", "eni-").is_err());
        assert!(check_id("eni-xyz", "eni-").is_err());
    }

    #[test]
    fn the_hold_down_doubles_while_repairs_keep_coming() {
        let ms = |n| hold_down(10_000, n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(9)],
            [10_000, 10_000, 20_000, 40_000, 80_000, 80_000]
        );
        assert_eq!(hold_down(0, 5), Duration::ZERO);
    }

    #[test]
    fn the_initial_status_names_the_mode() {
        let cfg = config::Ec2 {
            mode: Ec2Mode::RouteTable,
            network_interface_id: None,
            private_addresses: None,
            elastic_ip_allocation_id: None,
            elastic_ip_private_address: None,
            region: None,
            endpoint: None,
            route_tables: vec!["rtb-1".into()],
            reconcile_interval_ms: 30_000,
            hold_down_ms: 10_000,
        };
        let s = initial_status(&cfg);
        assert_eq!((s.mode, s.state), (Ec2Mode::RouteTable, Takeover::Idle));
        assert_eq!(s.preflight, Preflight::Pending);
    }
}
