//! What the VRRP instance and its EC2 side report about themselves: the
//! domain's own record, kept current by the tasks that run them and read
//! by the daemon, which turns it into the control protocol's
//! `api::VrrpStatus` in one place (`daemon/control.rs`).

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{ec2::error::ErrorClass, machine::Role};
use crate::config::Ec2Mode;

/// The VRRP instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub interface: String,
    pub router_id: u8,
    /// The configured priority.
    pub priority: u8,
    /// The priority advertised now: lowered by each tracked problem.
    pub effective_priority: u8,
    /// What lowers it: interfaces down, VIPs without a usable backend.
    pub problems: Vec<String>,
    pub advert_interval_ms: u64,
    /// The interval of the master heard last (this host's own when master).
    pub master_advert_interval_ms: u64,
    pub preempt: bool,
    /// The address advertisements are sent from.
    pub source: Ipv4Addr,
    pub peers: Vec<Ipv4Addr>,
    /// The floating addresses, and the interface each lives on.
    pub addresses: Vec<Ipv4Addr>,
    pub address_interfaces: Vec<String>,
    pub role: Role,
    /// The master, as far as this host knows (itself when master).
    pub master: Option<Ipv4Addr>,
    /// When the role last changed (or the instance started).
    pub since_unix: u64,
    pub transitions: u64,
    /// The floating addresses are on this host.
    pub holding: bool,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Packets refused, in all and by reason.
    pub adverts_invalid: u64,
    pub refused: BTreeMap<String, u64>,
    /// The last problem seen (a send that failed, an invalid packet).
    pub last_problem: Option<String>,
    /// The EC2 side, with `[vrrp.ec2]`.
    pub ec2: Option<Ec2Status>,
}

/// Where a takeover through the EC2 API stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Takeover {
    /// Never master.
    #[default]
    Idle,
    Moving,
    /// An attempt failed for a reason that may pass; trying again.
    Retrying,
    /// Moved and verified.
    Done,
    /// No longer master while it was moving.
    Stopped,
    /// An attempt failed for good (a permanent error).
    Failed,
}

/// The start-up checks of the EC2 side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preflight {
    #[default]
    Pending,
    Passed,
    Failed,
}

/// What the last reconcile found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// Master: everything in place.
    Held,
    /// Master: something out of place, not repaired yet.
    Drifted,
    /// Master: repaired and verified.
    Repaired,
    /// Backup: nothing of the pair's on this host's ENIs.
    Clear,
    /// Backup: some of the pair's addresses sit on this host's ENIs.
    Stranded,
}

/// One start-up check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The EC2 side of the takeovers of this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ec2Status {
    pub network_interface_id: String,
    pub elastic_ip_allocation_id: Option<String>,
    pub state: Takeover,
    /// Attempts of the current (or last) takeover.
    pub attempts: u64,
    /// Failed attempts, over the daemon's life.
    pub failures: u64,
    /// Takeovers that completed and were verified.
    pub takeovers: u64,
    pub last_error: Option<String>,
    pub done_unix: Option<u64>,
    pub took_ms: Option<u64>,
    pub public_ip: Option<String>,
    pub mode: Ec2Mode,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub network_interfaces: Vec<String>,
    pub preflight: Preflight,
    pub preflight_checks: Vec<Check>,
    /// The last reconcile; `None` before the first.
    pub reconcile: Option<Reconcile>,
    pub drifts: u64,
    pub repairs: u64,
    pub last_drift: Option<String>,
    pub last_reconcile_unix: Option<u64>,
    pub stranded: Vec<String>,
    pub warning: Option<String>,
    pub last_error_class: Option<ErrorClass>,
    pub last_error_code: Option<String>,
    pub last_request_id: Option<String>,
    pub imds_ms: Option<u64>,
}
