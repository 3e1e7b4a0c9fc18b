//! High availability: unicast VRRPv3 (RFC 5798) between the two load
//! balancers of a pair, interoperable with keepalived (`vrrp_version 3`,
//! `unicast_peer`).
//!
//! The master holds the floating addresses (the VIPs and, for connections to
//! survive a takeover, `nat.source`): it adds them to `vrrp.interface` and
//! announces them with gratuitous ARP. The backup waits; when the master's
//! advertisements stop for the master-down interval (three intervals and a
//! skew that favours higher priorities) it takes the addresses over. Both
//! run the same XDP program with the same Maglev rings, so the new master
//! sends every packet of an old connection to the backend the old master
//! chose, from the same NAT address and port (docs/high-availability.md).
//!
//! [`packet`] is the wire format, [`machine`] the state machine without I/O,
//! [`link`] the host side and every socket (advertisements, addresses,
//! gratuitous ARP); this module runs them.

pub mod ec2;
pub mod link;
pub mod machine;
pub mod packet;
pub mod refusals;
pub mod status;

use std::{
    collections::HashMap,
    io,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use tokio::{sync::watch, time::Instant};

use crate::config;
use link::{Announcer, Interface, VrrpSocket};
use machine::{Action, Machine, Params, Role};
use packet::Advert;
pub use status::Status as VrrpStatus;

/// Gratuitous ARP goes out at takeover and again this long after it (a
/// neighbour may miss one, and a switch may learn late).
const GARP_REPEATS: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// An interface floating addresses live on, with its ARP socket.
struct Link {
    iface: Interface,
    announcer: Announcer,
}

impl Link {
    fn open(ifname: &str) -> Result<Link> {
        let iface = Interface::lookup(ifname)?;
        let announcer = Announcer::new(&iface)
            .with_context(|| format!("opening a packet socket on {ifname} for ARP"))?;
        Ok(Link { iface, announcer })
    }
}

/// How the instance leaves when lbd stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// A clean stop: a master advertises priority 0 (the peer takes over
    /// after its skew time) and removes the floating addresses.
    GiveUp,
    /// lbd exits for a restart, leaving the data plane forwarding: the
    /// addresses stay and no advertisement is sent. The next lbd finds them
    /// and resumes as master at once (unless a winning master is heard).
    Keep,
}

/// An open VRRP instance, ready to run.
pub struct Vrrp {
    cfg: config::Vrrp,
    source: Ipv4Addr,
    iface: Interface,
    socket: VrrpSocket,
    /// Each floating address and the interface it lives on.
    placements: Vec<(Ipv4Addr, String)>,
    /// The floating addresses alone, in order (what advertisements carry).
    addresses: Vec<Ipv4Addr>,
    /// The interfaces floating addresses live on, by name.
    links: HashMap<String, Link>,
    status: Arc<Mutex<VrrpStatus>>,
    /// The EC2 side (`[vrrp.ec2]`): moves the addresses through the API.
    ec2: Option<ec2::Ec2>,
    /// Whether lbd adds and removes the floating addresses on the host
    /// (not with `[vrrp.ec2] mode = "elastic_ip"`, where they are each
    /// host's own and only the Elastic IP moves).
    local_addresses: bool,
    /// Interfaces whose state lowers the priority.
    tracked: Vec<String>,
    /// How often refused packets are logged.
    refusals: refusals::LogLimit,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Vrrp {
    /// Checks the interfaces and opens the sockets; nothing on the host
    /// changes yet. `placements`: the floating addresses and their
    /// interfaces (see [`config::Config::vrrp_placements`]); `tracked`: the
    /// interfaces whose state lowers the priority.
    pub fn open(
        cfg: &config::Vrrp,
        placements: Vec<(Ipv4Addr, String)>,
        tracked: Vec<String>,
    ) -> Result<Vrrp> {
        let iface = Interface::lookup(&cfg.interface).map_err(|e| {
            // Lookup errors about a missing interface name the key already.
            if e.to_string().starts_with("vrrp.interface") {
                e
            } else {
                e.context("vrrp.interface")
            }
        })?;
        let addresses: Vec<Ipv4Addr> = placements.iter().map(|(a, _)| *a).collect();
        let mut links = HashMap::new();
        for (a, ifname) in &placements {
            if !links.contains_key(ifname) {
                let link = Link::open(ifname)
                    .with_context(|| format!("vrrp.addresses: the interface of {a}"))?;
                links.insert(ifname.clone(), link);
            }
        }
        let present = iface.addresses()?;
        let source = match cfg.source {
            Some(s) => {
                if !present.contains(&s) {
                    bail!(
                        "vrrp.source: {s} is not an address of {} (it has {})",
                        iface.name,
                        list(&present)
                    );
                }
                s
            }
            None => match present.iter().find(|a| !addresses.contains(a)) {
                Some(a) => *a,
                None => bail!(
                    "vrrp.interface: {} has no IPv4 address of its own to send \
                     advertisements from; give it one, or set vrrp.source",
                    iface.name
                ),
            },
        };
        if let Some(a) = addresses.iter().find(|a| **a == source) {
            bail!(
                "vrrp: {a} is the address advertisements are sent from, so it cannot also \
                 float between the pair; use another address for the VIP or nat.source"
            );
        }
        let socket = VrrpSocket::open(&iface, source)?;
        let local_addresses = cfg
            .ec2
            .as_ref()
            .is_none_or(|e| e.mode != config::Ec2Mode::ElasticIp);
        let status = VrrpStatus {
            interface: iface.name.clone(),
            router_id: cfg.router_id,
            priority: cfg.priority,
            effective_priority: cfg.priority,
            problems: Vec::new(),
            advert_interval_ms: u64::from(cfg.interval_cs) * 10,
            master_advert_interval_ms: u64::from(cfg.interval_cs) * 10,
            preempt: cfg.preempt,
            source,
            peers: cfg.peers.clone(),
            addresses: addresses.clone(),
            address_interfaces: placements.iter().map(|(_, i)| i.clone()).collect(),
            role: Role::Backup,
            master: None,
            since_unix: unix_now(),
            transitions: 0,
            holding: false,
            adverts_sent: 0,
            adverts_received: 0,
            adverts_invalid: 0,
            refused: Default::default(),
            last_problem: None,
            ec2: cfg.ec2.as_ref().map(ec2::initial_status),
        };
        let status = Arc::new(Mutex::new(status));
        let ec2 = cfg
            .ec2
            .as_ref()
            .map(|c| ec2::Ec2::new(c, &cfg.interface, placements.clone(), status.clone()));
        Ok(Vrrp {
            cfg: cfg.clone(),
            source,
            iface,
            socket,
            placements,
            addresses,
            links,
            status,
            ec2,
            local_addresses,
            tracked,
            refusals: refusals::LogLimit::default(),
        })
    }

    /// What `lbctl status` shows, kept up to date while the instance runs.
    pub fn status(&self) -> Arc<Mutex<VrrpStatus>> {
        self.status.clone()
    }

    fn update(&self, f: impl FnOnce(&mut VrrpStatus)) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st);
    }

    /// A problem worth one log line and a mention in `lbctl status`; the
    /// same problem again is only logged at debug level.
    fn problem(&self, what: String) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.last_problem.as_deref() != Some(what.as_str()) {
            tracing::warn!(problem = %what, "vrrp");
            st.last_problem = Some(what);
        } else {
            tracing::debug!(problem = %what, "vrrp");
        }
    }

    fn advertise(&self, priority: u8) {
        let advert = Advert {
            vrid: self.cfg.router_id,
            priority,
            interval_cs: self.cfg.interval_cs,
            addresses: self.addresses.clone(),
        };
        for peer in &self.cfg.peers {
            let m = advert.encode(self.source, *peer);
            match self.socket.send_to(&m, *peer) {
                Ok(()) => self.update(|s| s.adverts_sent += 1),
                Err(e) => self.problem(format!("sending an advertisement to {peer}: {e}")),
            }
        }
    }

    /// Adds (`add`) or removes floating address `a` on `ifname`, and
    /// announces an added one.
    fn place(&self, a: Ipv4Addr, ifname: &str, add: bool) {
        let Some(link) = self.links.get(ifname) else {
            self.problem(format!("{a}: interface {ifname} is not open"));
            return;
        };
        if let Err(e) = link::set_address(link.iface.index, a, add) {
            let (verb, prep) = if add {
                ("adding", "to")
            } else {
                ("removing", "from")
            };
            self.problem(format!("{verb} {a}/32 {prep} {ifname}: {e}"));
        } else if add {
            self.announce_one(a, ifname);
        }
    }

    fn announce_one(&self, a: Ipv4Addr, ifname: &str) {
        if let Some(link) = self.links.get(ifname) {
            if let Err(e) = link.announcer.announce(a) {
                self.problem(format!("gratuitous ARP for {a} on {ifname}: {e}"));
            }
        }
    }

    fn take_over(&self) {
        if !self.local_addresses {
            return;
        }
        for (a, ifname) in &self.placements {
            self.place(*a, ifname, true);
        }
    }

    fn announce(&self) {
        if !self.local_addresses {
            return;
        }
        for (a, ifname) in &self.placements {
            self.announce_one(*a, ifname);
        }
    }

    fn release(&self) {
        if !self.local_addresses {
            return;
        }
        for (a, ifname) in &self.placements {
            self.place(*a, ifname, false);
        }
    }

    /// Carries out the machine's actions; returns whether a takeover
    /// happened (gratuitous ARP is then repeated).
    fn act(&mut self, actions: Vec<Action>) -> bool {
        let mut took_over = false;
        for a in actions {
            match a {
                Action::Advertise(p) => self.advertise(p),
                Action::TakeOver => {
                    self.take_over();
                    if let Some(e) = &self.ec2 {
                        e.set_master(true);
                    }
                    took_over = true;
                }
                Action::Release => {
                    // A takeover still in progress on EC2 is abandoned: the
                    // new master moves the addresses itself.
                    if let Some(e) = &self.ec2 {
                        e.set_master(false);
                    }
                    self.release();
                }
                Action::Reassert => {
                    if let Some(e) = &self.ec2 {
                        e.reassert();
                    }
                }
            }
        }
        took_over
    }

    /// The advertisements waiting on the socket, each checked against the
    /// instance: `(sender, priority, interval)` of the valid ones.
    fn receive(&mut self) -> io::Result<Vec<(Ipv4Addr, u8, u16)>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let Some(datagram) = self.socket.recv(&mut buf)? else {
                return Ok(out);
            };
            let r = match packet::parse(datagram) {
                Ok(r) => r,
                Err(e) => {
                    let from = packet::source(datagram).unwrap_or(Ipv4Addr::UNSPECIFIED);
                    self.refuse(e.label(), from, format!("an invalid VRRP packet: {e}"));
                    continue;
                }
            };
            if r.advert.vrid != self.cfg.router_id {
                // Another virtual router sharing the link: not ours.
                continue;
            }
            if !self.cfg.peers.contains(&r.from) {
                self.refuse(
                    "not_peer",
                    r.from,
                    format!(
                        "an advertisement for router {} from {}, which is not in vrrp.peers",
                        r.advert.vrid, r.from
                    ),
                );
                continue;
            }
            if r.advert.addresses != self.addresses && self.local_addresses {
                // RFC 5798 7.1: log and carry on.
                self.problem(format!(
                    "{} advertises the addresses [{}], this host floats [{}]",
                    r.from,
                    list(&r.advert.addresses),
                    list(&self.addresses)
                ));
            }
            self.update(|s| s.adverts_received += 1);
            out.push((r.from, r.advert.priority, r.advert.interval_cs));
        }
    }

    /// A packet refused: counted by reason, logged within the rate limit
    /// ([`refusals`]).
    fn refuse(&mut self, reason: &'static str, from: Ipv4Addr, what: String) {
        self.update(|s| {
            s.adverts_invalid += 1;
            *s.refused.entry(reason.to_owned()).or_default() += 1;
        });
        match self.refusals.note(Instant::now(), reason, from) {
            refusals::Note::Log { earlier: 0 } => {
                tracing::warn!(reason, %from, "vrrp: refused {what}")
            }
            refusals::Note::Log { earlier } => tracing::warn!(
                reason,
                %from,
                earlier,
                "vrrp: refused {what} ({earlier} more like it since the last line)"
            ),
            refusals::Note::Quiet => {}
        }
        self.update(|s| s.last_problem = Some(what));
    }

    /// Logs the refusals that went unlogged in windows that have ended.
    fn flush_refusals(&mut self) {
        for owed in self.refusals.flush(Instant::now()) {
            match owed.from {
                Some(from) => tracing::warn!(
                    reason = owed.reason,
                    %from,
                    count = owed.count,
                    "vrrp: refused {} more packets ({}) from {from}",
                    owed.count,
                    owed.reason
                ),
                None => tracing::warn!(
                    reason = owed.reason,
                    count = owed.count,
                    "vrrp: refused {} more packets ({}) from other sources",
                    owed.count,
                    owed.reason
                ),
            }
        }
    }

    /// The tracked problems now: interfaces down, then `vips` (the VIPs
    /// without a usable backend, as the daemon reports them) if tracked.
    fn problems(&self, vips: &[String]) -> Vec<String> {
        let mut out: Vec<String> = self.ec2_preflight_failure().into_iter().collect();
        out.extend(
            self.tracked
                .iter()
                .filter(|name| !link::is_running(name))
                .map(|name| format!("interface {name} is down")),
        );
        if self.cfg.track_backends {
            out.extend(vips.iter().cloned());
        }
        out
    }

    /// A failed EC2 preflight: this host could not take over on EC2, so it
    /// advertises a lower priority and does not preempt a working master.
    fn ec2_preflight_failure(&self) -> Option<String> {
        let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let e = st.ec2.as_ref()?;
        if e.preflight != status::Preflight::Failed {
            return None;
        }
        let first = e
            .preflight_checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        Some(format!("the EC2 preflight failed ({first})"))
    }

    /// Re-reads the tracked problems and moves the priority accordingly.
    fn track(&mut self, m: &mut Machine, vips: &[String]) {
        let problems = self.problems(vips);
        m.hold_preemption(self.ec2_preflight_failure().is_some());
        let priority = self.cfg.effective_priority(problems.len());
        if priority != m.priority() {
            if problems.is_empty() {
                tracing::info!(
                    priority,
                    "vrrp: priority restored: nothing tracked is wrong"
                );
            } else {
                tracing::warn!(
                    priority,
                    configured = self.cfg.priority,
                    problems = %problems.join("; "),
                    "vrrp: priority lowered"
                );
            }
            let actions = m.set_priority(priority, Instant::now());
            self.act(actions);
        }
        self.update(|s| {
            s.effective_priority = priority;
            s.problems = problems;
        });
    }

    /// Runs the instance until `leave` says how to stop. `addresses` brings
    /// the floating addresses after a reload; `vip_problems` the VIPs that
    /// have no backend taking new flows (for `track_backends`).
    pub async fn run(
        mut self,
        mut addresses: watch::Receiver<Vec<(Ipv4Addr, String)>>,
        mut vip_problems: watch::Receiver<Vec<String>>,
        mut leave: watch::Receiver<Option<Leave>>,
    ) {
        if let Some(e) = self.ec2.as_mut() {
            e.start();
        }
        let ec2_nudge = self.ec2.as_ref().map(|e| e.nudge()).unwrap_or_default();
        let holding = self.local_addresses
            && self.placements.iter().any(|(a, ifname)| {
                link::addresses_of(ifname)
                    .map(|present| present.contains(a))
                    .unwrap_or(false)
            });
        if holding {
            tracing::info!(
                addresses = %list(&self.addresses),
                "vrrp: floating addresses already here (an earlier lbd kept them): resuming as master"
            );
        }
        let params = Params {
            priority: self.cfg.priority,
            interval_cs: self.cfg.interval_cs,
            preempt: self.cfg.preempt,
            preempt_delay: Duration::from_millis(self.cfg.preempt_delay_ms),
            me: self.source,
        };
        let mut m = Machine::new(params, Instant::now(), holding);
        tracing::info!(
            interface = %self.iface.name,
            router_id = self.cfg.router_id,
            priority = self.cfg.priority,
            source = %self.source,
            peers = %list(&self.cfg.peers),
            "vrrp: backup, waiting {:?} for a master", m.master_down()
        );
        let fd = match self.socket.readiness() {
            Ok(fd) => fd,
            Err(e) => {
                self.problem(format!("cannot poll the VRRP socket: {e}"));
                return;
            }
        };
        let mut garps: Vec<Instant> = Vec::new();
        let mut addresses_open = true;
        let mut problems_open = true;
        let mut vips = vip_problems.borrow_and_update().clone();
        self.track(&mut m, &vips);
        // Interfaces are looked at once per advertisement interval.
        let mut track_tick =
            tokio::time::interval(Duration::from_millis(u64::from(self.cfg.interval_cs) * 10));
        track_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish(&m);
        loop {
            let before = m.role();
            let next_garp = garps.first().copied();
            let mut took_over = false;
            tokio::select! {
                _ = tokio::time::sleep_until(m.deadline()) => {
                    took_over = self.act(m.on_timer(Instant::now()));
                }
                ready = fd.readable() => {
                    let mut guard = match ready {
                        Ok(g) => g,
                        Err(e) => {
                            self.problem(format!("polling the VRRP socket: {e}"));
                            return;
                        }
                    };
                    match self.receive() {
                        Ok(adverts) => {
                            for (from, priority, interval_cs) in adverts {
                                let now = Instant::now();
                                took_over |= self.act(m.on_advert(now, from, priority, interval_cs));
                            }
                        }
                        Err(e) => self.problem(format!("receiving VRRP: {e}")),
                    }
                    guard.clear_ready();
                }
                _ = async { tokio::time::sleep_until(next_garp.unwrap_or_else(Instant::now)).await },
                    if next_garp.is_some() => {
                    garps.remove(0);
                    if m.role() == Role::Master {
                        self.announce();
                    }
                }
                _ = track_tick.tick() => {
                    self.track(&mut m, &vips);
                    self.flush_refusals();
                }
                _ = ec2_nudge.notified(), if self.ec2.is_some() => {
                    // This backup holds some of the pair's addresses on EC2
                    // (it was master for a while): one advertisement of its
                    // lower priority tells the master to re-assert them.
                    if m.role() == Role::Backup {
                        self.advertise(m.priority());
                    }
                }
                changed = vip_problems.changed(), if problems_open => {
                    if changed.is_err() {
                        problems_open = false;
                        continue;
                    }
                    vips = vip_problems.borrow_and_update().clone();
                    self.track(&mut m, &vips);
                }
                changed = addresses.changed(), if addresses_open => {
                    if changed.is_err() {
                        // lbd is going away; `leave` says how.
                        addresses_open = false;
                        continue;
                    }
                    let new = addresses.borrow_and_update().clone();
                    self.readdress(new, m.role() == Role::Master);
                }
                _ = leave.changed() => {
                    let how = (*leave.borrow()).unwrap_or(Leave::GiveUp);
                    match how {
                        Leave::GiveUp => {
                            let was = m.role();
                            self.act(m.shutdown());
                            if was == Role::Master {
                                tracing::info!("vrrp: gave up mastership (advertised priority 0) and removed the floating addresses");
                            }
                        }
                        Leave::Keep => tracing::info!(
                            role = m.role().as_str(),
                            "vrrp: stopping without a word to the peer; floating addresses left as they are"
                        ),
                    }
                    if let Some(e) = self.ec2.as_mut() {
                        e.stop();
                    }
                    self.publish(&m);
                    return;
                }
            }
            if took_over {
                let now = Instant::now();
                garps = GARP_REPEATS.iter().map(|d| now + *d).collect();
            }
            if m.role() != before {
                match m.role() {
                    Role::Master => tracing::info!(
                        addresses = %list(&self.addresses),
                        "vrrp: became master: floating addresses added and announced"
                    ),
                    _ => tracing::info!(
                        master = ?m.master(),
                        "vrrp: became backup: floating addresses removed"
                    ),
                }
                self.update(|s| {
                    s.transitions += 1;
                    s.since_unix = unix_now();
                });
            }
            self.publish(&m);
        }
    }

    /// A reload changed the floating addresses: a master adds the new ones
    /// and removes the ones gone.
    fn readdress(&mut self, new: Vec<(Ipv4Addr, String)>, master: bool) {
        if new == self.placements {
            return;
        }
        for (a, ifname) in &new {
            if !self.links.contains_key(ifname) {
                match Link::open(ifname) {
                    Ok(link) => {
                        self.links.insert(ifname.clone(), link);
                    }
                    Err(e) => self.problem(format!("{a}: {e:#}")),
                }
            }
        }
        let old = std::mem::replace(&mut self.placements, new);
        if master && self.local_addresses {
            for (a, ifname) in old.iter().filter(|p| !self.placements.contains(p)) {
                self.place(*a, ifname, false);
            }
            for (a, ifname) in self.placements.iter().filter(|p| !old.contains(p)) {
                self.place(*a, ifname, true);
            }
        }
        self.addresses = self.placements.iter().map(|(a, _)| *a).collect();
        if let Some(e) = &self.ec2 {
            e.set_placements(self.placements.clone());
        }
        tracing::info!(addresses = %list(&self.addresses), "vrrp: floating addresses changed");
    }

    fn publish(&self, m: &Machine) {
        let addresses = self.addresses.clone();
        let interfaces: Vec<String> = self.placements.iter().map(|(_, i)| i.clone()).collect();
        let holding = m.holding();
        self.update(|s| {
            s.role = m.role();
            s.master = m.master();
            s.holding = holding;
            s.addresses = addresses;
            s.address_interfaces = interfaces;
            s.master_advert_interval_ms = u64::from(m.master_interval_cs()) * 10;
        });
    }
}

fn list(addrs: &[Ipv4Addr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
