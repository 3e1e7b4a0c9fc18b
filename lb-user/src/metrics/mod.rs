//! The Prometheus endpoint: no registry, no global state.
//!
//! The daemon fills a plain [`Snapshot`] from its model and the kernel
//! counters; [`render`] turns it into the text exposition format 0.0.4 and
//! [`serve`] answers `GET /metrics` with it, calling the snapshot closure once
//! per scrape. Every metric is listed in `docs/metrics.md`.
//!
//! - this module: the [`Snapshot`] types;
//! - [`mod@render`]: the text format;
//! - [`mod@serve`]: the HTTP endpoint.

mod render;
mod serve;

pub use render::{render, verdict, BACKEND_STATES, CONTENT_TYPE};
pub use serve::serve;

/// Everything one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub vips: Vec<VipMetrics>,
    /// `(reason label, packets, bytes, is_drop)` for every verdict reason,
    /// e.g. from `lb_ebpf::Reason::ALL`.
    pub reasons: Vec<(&'static str, u64, u64, bool)>,
    /// `(event label, count)` for every event, e.g. from
    /// `lb_ebpf::Event::ALL`.
    pub events: Vec<(&'static str, u64)>,
    /// Flows tracked (flow table entries not expired).
    pub flows: u64,
    /// NAT (reverse) table entries not expired.
    pub nat_entries: u64,
    /// Ways of the flow table (`lb_ebpf::flow_slots_for(max_flows)`).
    pub flow_capacity: u64,
    /// When lbd started, in seconds since the Unix epoch.
    pub up_since_unix: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    /// The VRRP instance, when configured.
    pub vrrp: Option<VrrpMetrics>,
}

/// The VRRP instance's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VrrpMetrics {
    pub master: bool,
    /// The priority advertised now (lowered by tracked problems).
    pub priority: u8,
    pub holding: bool,
    pub transitions: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub adverts_invalid: u64,
    /// Refused packets by reason.
    pub refused: Vec<(String, u64)>,
    /// `(takeovers done, failed attempts)` of the EC2 takeover, if configured.
    pub ec2: Option<(u64, u64)>,
    /// Preflight and reconcile of the EC2 side, if configured.
    pub ec2_state: Option<Ec2Metrics>,
}

/// The EC2 side's checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ec2Metrics {
    /// 1 passed, 0 failed; `None` while pending.
    pub preflight_ok: Option<bool>,
    /// The last reconcile found everything in place (master).
    pub held: bool,
    /// Things of the pair's on this backup's ENIs.
    pub stranded: u64,
    pub drifts: u64,
    pub repairs: u64,
}

/// One VIP and its backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VipMetrics {
    pub name: String,
    /// `"10.0.0.1:80"`.
    pub address: String,
    pub healthy_backends: u32,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    /// The live ring's digest (`VipStatus::ring_digest`).
    pub ring_digest: String,
    pub backends: Vec<BackendMetrics>,
}

/// One backend of a VIP.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendMetrics {
    /// `"10.0.2.11:8080"`.
    pub address: String,
    pub weight: u32,
    /// `"up"`, `"down"` or `"drained"`.
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    /// Duration of the last health check, if there was one.
    pub check_latency_seconds: Option<f64>,
    pub checks_ok: u64,
    pub checks_failed: u64,
}
