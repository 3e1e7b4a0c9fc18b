//! Configuration: the TOML file of `lbd`, parsed into validated, typed values.
//!
//! Parsing happens in two steps. The text is first deserialized into private
//! "raw" structs that keep addresses, enums and port ranges as strings and
//! every key optional, so that a bad value or a missing key can be reported in
//! our own words, naming the key (`vip[2].backend[0].weight`). The raw values
//! are then converted into the public types, and [`Config::validate`] checks
//! the ranges and the rules that span several keys. `validate` works on a
//! [`Config`] built in code too.
//!
//! Every table uses `deny_unknown_fields`, so a misspelt key is an error and
//! not a silently ignored line. Indexes in key paths are 0-based, in the order
//! of the `[[vip]]` and `[[vip.backend]]` tables in the file.
//!
//! The reference for the format is `docs/configuration.md`; a complete example
//! is `examples/lb.toml`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// ---------------------------------------------------------------------------
// Defaults and limits
// ---------------------------------------------------------------------------

const DEFAULT_RING_SIZE: u32 = lb_ebpf::DEFAULT_RING_SIZE;
const RING_SIZE_MIN: u32 = 3;
const RING_SIZE_MAX: u32 = 655_373;
const DEFAULT_MAX_FLOWS: u32 = lb_ebpf::DEFAULT_MAX_FLOWS;
const MAX_FLOWS_MIN: u32 = 1024;
const MAX_FLOWS_MAX: u32 = 16_777_216;
const DEFAULT_MAX_VIPS: u32 = 16;
const BPFFS: &str = "/sys/fs/bpf";
const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
/// Linux's smallest MSS (`TCP_MIN_MSS`).
const MSS_CLAMP_MIN: u16 = 88;
/// The largest MSS an IPv4 packet can carry (65535 - 40).
const MSS_CLAMP_MAX: u16 = 65_495;
/// IPv6's minimum MTU: below it, practically nothing on the Internet.
const DEFAULT_PMTU_FLOOR: u16 = 1280;
/// IPv4's minimum MTU (RFC 791): a floor this low relays every message.
const PMTU_FLOOR_MIN: u16 = 68;

const DEFAULT_NAT_PORT_MIN: u16 = 20_000;
const DEFAULT_NAT_PORT_MAX: u16 = 59_999;
const NAT_PORT_LOWEST: u32 = 1024;
const NAT_PORTS_MIN_COUNT: u32 = 64;
const DEFAULT_PORT_HOLD_SECS: u64 = 120;

const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
const DEFAULT_CLOSED_TIMEOUT_SECS: u64 = 10;
/// Upper bound of every `*_secs` key: far beyond any sensible value, and small
/// enough that the dataplane's nanosecond values cannot overflow.
const SECS_MAX: u64 = u32::MAX as u64;

const DEFAULT_SOCKET: &str = "/run/lb/lbd.sock";
/// `sizeof(sockaddr_un.sun_path) - 1` on Linux.
const SOCKET_PATH_MAX: usize = 107;

/// `IFNAMSIZ - 1`.
const IFNAME_MAX: usize = 15;
const VIP_NAME_MAX: usize = 32;
const WEIGHT_MAX: u32 = 65_535;
const DEFAULT_WEIGHT: u32 = 1;

const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9650));

const DEFAULT_VRRP_PRIORITY: u8 = 100;
const DEFAULT_VRRP_INTERVAL_MS: u64 = 1_000;
/// VRRPv3 carries the interval in 12 bits of centiseconds.
const VRRP_INTERVAL_MS_MIN: u64 = 10;
const VRRP_INTERVAL_MS_MAX: u64 = 40_950;
const VRRP_PEERS_MAX: usize = 16;
/// Addresses in one advertisement (its count field is a byte).
const VRRP_ADDRESSES_MAX: usize = 255;
const DEFAULT_VRRP_TRACK_WEIGHT: u8 = 50;
const VRRP_PREEMPT_DELAY_MS_MAX: u64 = 3_600_000;
const DEFAULT_EC2_RECONCILE_MS: u64 = 30_000;
const EC2_RECONCILE_MS_MIN: u64 = 1_000;
const EC2_RECONCILE_MS_MAX: u64 = 3_600_000;
const DEFAULT_EC2_HOLD_DOWN_MS: u64 = 10_000;
const EC2_HOLD_DOWN_MS_MAX: u64 = 3_600_000;
const EC2_ROUTE_TABLES_MAX: usize = 16;

pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 2_000;
const CHECK_INTERVAL_MS_MIN: u64 = 100;
const CHECK_INTERVAL_MS_MAX: u64 = 3_600_000;
/// The default timeout, or `interval_ms` when that is smaller.
const DEFAULT_CHECK_TIMEOUT_MS: u64 = 1_000;
const CHECK_TIMEOUT_MS_MIN: u64 = 10;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const RISE_FALL_MAX: u32 = 100;
const DEFAULT_JITTER_PCT: u32 = 10;
const JITTER_PCT_MAX: u32 = 50;
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_EXPECT_STATUS: u16 = 200;
const HTTP_STATUS_MIN: u16 = 100;
const HTTP_STATUS_MAX: u16 = 599;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub nat: Nat,
    pub flows: Flows,
    pub control: Control,
    pub metrics: Metrics,
    /// `[vrrp]`, when this load balancer is one of a pair.
    pub vrrp: Option<Vrrp>,
    /// The `[[vip]]` tables, in file order.
    pub vips: Vec<Vip>,
}

/// `[dataplane]`: where and how the XDP program runs, and its map sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    /// Interfaces the XDP program is attached to (clients and backends).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Maglev lookup-table size per VIP; prime.
    pub ring_size: u32,
    /// Capacity of the flow table (and of the NAT table).
    pub max_flows: u32,
    /// How many VIPs the maps are sized for.
    pub max_vips: u32,
    /// bpffs directory where the program and maps are pinned while lbd runs.
    pub pin_path: PathBuf,
    /// How SYNs and SYN-ACKs have their MSS option clamped.
    pub mss_clamp: MssClamp,
    /// The smallest next-hop MTU of a client-side ICMP "fragmentation
    /// needed" that is carried to a backend.
    pub pmtu_floor: u16,
}

/// `dataplane.mss_clamp`: what the XDP program does to the MSS option of the
/// SYNs and SYN-ACKs it forwards (docs/dataplane.md, "MSS clamp").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MssClamp {
    /// At most the smaller MTU of the interfaces the packet crosses, less 40.
    #[default]
    Auto,
    /// At most this MSS, whatever the interfaces.
    Fixed(u16),
    /// Left alone.
    Off,
}

impl MssClamp {
    /// The value of `lb_ebpf::Config::mss_clamp`.
    pub fn kernel_value(self) -> u16 {
        match self {
            MssClamp::Auto => lb_ebpf::MSS_CLAMP_AUTO,
            MssClamp::Fixed(mss) => mss,
            MssClamp::Off => lb_ebpf::MSS_CLAMP_OFF,
        }
    }
}

impl std::fmt::Display for MssClamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MssClamp::Auto => f.write_str("auto"),
            MssClamp::Fixed(mss) => write!(f, "{mss}"),
            MssClamp::Off => f.write_str("off"),
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    #[default]
    Native,
    /// In the generic network stack (`XDP_FLAGS_SKB_MODE`); works everywhere, slower.
    Generic,
}

impl XdpMode {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[nat]`: the source address and ports the load balancer uses toward backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub source: Ipv4Addr,
    /// First NAT port (inclusive).
    pub port_min: u16,
    /// Last NAT port (inclusive).
    pub port_max: u16,
    /// Add the range to `net.ipv4.ip_local_reserved_ports` while lbd runs.
    pub reserve_ports: bool,
    /// How long a NAT port stays with its client after the flow's last packet.
    pub port_hold_secs: u64,
}

impl Nat {
    /// Whether `port` is in the NAT port range.
    pub fn contains_port(&self, port: u16) -> bool {
        (self.port_min..=self.port_max).contains(&port)
    }

    /// Number of ports in the range (0 if `port_min > port_max`).
    pub fn port_count(&self) -> u32 {
        (u32::from(self.port_max) + 1).saturating_sub(u32::from(self.port_min))
    }
}

/// `[flows]`: flow-table timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flows {
    /// A flow without packets for this long is removed.
    pub idle_timeout_secs: u64,
    /// A flow that saw a RST or a FIN from both sides is removed after this long.
    pub closed_timeout_secs: u64,
}

impl Default for Flows {
    fn default() -> Self {
        Flows {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            closed_timeout_secs: DEFAULT_CLOSED_TIMEOUT_SECS,
        }
    }
}

/// `[control]`: lbd's control socket (used by `lbctl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Where lbd serves `/metrics` over HTTP; `None` (`listen = "off"`)
    /// disables the endpoint.
    pub listen: Option<SocketAddr>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: Some(DEFAULT_METRICS_LISTEN),
        }
    }
}

/// `[vrrp]`: unicast VRRPv3 with the other load balancer of a pair
/// (docs/high-availability.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vrrp {
    /// Where advertisements go out and the floating addresses live.
    pub interface: String,
    /// The virtual router id (VRID), 1 to 255; the same on both sides.
    pub router_id: u8,
    /// 1 to 254; the higher one is master.
    pub priority: u8,
    /// The advertisement interval, in centiseconds (the protocol's unit).
    pub interval_cs: u16,
    /// A higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// How long a backup waits, after starting or after first hearing a
    /// lower-priority master, before it preempts that master.
    pub preempt_delay_ms: u64,
    /// The address advertisements are sent from; `None`: the interface's
    /// first address that does not float.
    pub source: Option<Ipv4Addr>,
    /// The other side(s), sent every advertisement by unicast.
    pub peers: Vec<Ipv4Addr>,
    /// The floating addresses; `None`: every VIP's address.
    pub addresses: Option<Vec<Ipv4Addr>>,
    /// Floating addresses that live on another interface than `interface`
    /// (`"ADDRESS dev IFNAME"` in `addresses`).
    pub address_interfaces: Vec<(Ipv4Addr, String)>,
    /// `[vrrp.ec2]`: move the addresses through the EC2 API on takeover.
    pub ec2: Option<Ec2>,
    /// Lower the priority while a VIP has no backend taking new flows.
    pub track_backends: bool,
    /// Lower the priority while one of these interfaces is down; `None`:
    /// `dataplane.interfaces`.
    pub track_interfaces: Option<Vec<String>>,
    /// How much each problem takes off the priority.
    pub track_weight: u8,
}

impl Vrrp {
    /// The priority advertised with `problems` tracked problems (never
    /// below 1: 0 means "leaving").
    pub fn effective_priority(&self, problems: usize) -> u8 {
        let cut = u32::from(self.track_weight).saturating_mul(problems as u32);
        u32::from(self.priority).saturating_sub(cut).max(1) as u8
    }
}

/// `[vrrp.ec2] mode`: what moves on EC2 (docs/ec2.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ec2Mode {
    /// The floating addresses are secondary private addresses of the ENIs
    /// (one subnet, so one availability zone); the Elastic IP follows.
    #[default]
    SecondaryAddresses,
    /// The floating addresses are /32 routes in VPC route tables, pointed
    /// at this instance's ENI (across availability zones).
    RouteTable,
    /// Only the Elastic IP moves; each host keeps its own addresses, and
    /// open connections do not survive a takeover.
    ElasticIp,
}

impl Ec2Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Ec2Mode::SecondaryAddresses => "secondary_addresses",
            Ec2Mode::RouteTable => "route_table",
            Ec2Mode::ElasticIp => "elastic_ip",
        }
    }
}

/// `[vrrp.ec2]`: what a new master moves to itself through the EC2 API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2 {
    /// What moves.
    pub mode: Ec2Mode,
    /// The ENI of `vrrp.interface` (`eni-...`); `None`: found from instance
    /// metadata. When given, it must be this instance's.
    pub network_interface_id: Option<String>,
    /// Secondary private addresses to move here; `None`: the floating
    /// addresses.
    pub private_addresses: Option<Vec<Ipv4Addr>>,
    /// The Elastic IP to re-associate (`eipalloc-...`).
    pub elastic_ip_allocation_id: Option<String>,
    /// The private address the Elastic IP maps to; `None`: the first of
    /// the private addresses (or the interface's primary when there are none).
    pub elastic_ip_private_address: Option<Ipv4Addr>,
    /// The AWS region; `None`: from the environment (`AWS_REGION`, profile,
    /// instance metadata).
    pub region: Option<String>,
    /// Another EC2 endpoint (a VPC endpoint, or an emulator in tests).
    pub endpoint: Option<String>,
    /// `route_table` mode: the route tables whose /32 routes move.
    pub route_tables: Vec<String>,
    /// How often a master checks and repairs what EC2 says, and a backup
    /// checks that nothing of the pair's sits on its own ENI.
    pub reconcile_interval_ms: u64,
    /// The least time between two repairs of drift (doubling while drift
    /// keeps coming back).
    pub hold_down_ms: u64,
}

/// One `[[vip]]`: a virtual service and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// Unique name, 1..=32 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// What a new connection gets while the VIP has no healthy backend.
    pub on_empty: OnEmpty,
    /// What picks a new connection's backend.
    pub hash: VipHash,
    /// The VIP's `[vip.health]`: the check of its backends that do not
    /// override it, and the one to use for backends added at run time.
    /// Each backend's own, resolved check is [`BackendConfig::health`].
    pub health: HealthCheck,
    /// The `[[vip.backend]]` tables, in file order. May be empty: new
    /// connections are then refused as `on_empty` says.
    pub backends: Vec<BackendConfig>,
}

impl Vip {
    /// A VIP with defaults for everything but its identity, and no backends.
    pub fn new(name: impl Into<String>, address: Ipv4Addr, port: u16) -> Vip {
        Vip {
            name: name.into(),
            address,
            port,
            protocol: Protocol::Tcp,
            on_empty: OnEmpty::default(),
            hash: VipHash::default(),
            health: default_health(),
            backends: Vec::new(),
        }
    }

    /// The port traffic is sent to on backend `b`: its own port, or the VIP's
    /// port when `b.port` is 0 (possible only in a `Config` built in code; the
    /// file parser fills in the VIP's port itself).
    pub fn backend_port(&self, b: &BackendConfig) -> u16 {
        if b.port == 0 {
            self.port
        } else {
            b.port
        }
    }
}

/// Transport protocol of a VIP. Only TCP is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
}

impl Protocol {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
        }
    }

    /// The IP protocol number.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => lb_ebpf::IPPROTO_TCP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a VIP does with a new connection while it has no healthy backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnEmpty {
    /// Answer the SYN with a TCP RST: clients fail fast.
    #[default]
    Reset,
    /// Drop the packet: clients retransmit and time out.
    Drop,
}

impl OnEmpty {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnEmpty::Reset => "reset",
            OnEmpty::Drop => "drop",
        }
    }
}

/// What a VIP's new connections are hashed on to pick their backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VipHash {
    /// The 5-tuple: connections spread over the backends one by one.
    #[default]
    FiveTuple,
    /// The client address only (source affinity): all connections from one
    /// client address go to the same backend.
    Source,
}

impl VipHash {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            VipHash::FiveTuple => "5-tuple",
            VipHash::Source => "source",
        }
    }
}

impl std::fmt::Display for VipHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for OnEmpty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[vip.backend]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    /// See [`Vip::backend_port`].
    pub port: u16,
    /// Relative share of new flows, 1..=65535.
    pub weight: u32,
    /// The backend's health check: its `health` table merged over the VIP's
    /// `[vip.health]`.
    pub health: HealthCheck,
}

impl BackendConfig {
    /// A backend with the default health check ([`default_health`]).
    pub fn new(address: Ipv4Addr, port: u16, weight: u32) -> BackendConfig {
        BackendConfig {
            address,
            port,
            weight,
            health: default_health(),
        }
    }
}

/// A resolved health check: how and how often a backend is probed, and how
/// many results in a row change its state. See `docs/health-checks.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Time between the starts of two checks (before jitter), 100 ms..=1 h.
    pub interval: Duration,
    /// How long one check may take, 10 ms..=`interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up, 1..=100.
    pub rise: u32,
    /// Consecutive failures that take an up backend down, 1..=100.
    pub fall: u32,
    /// Each wait is `interval` ± this percentage, chosen at random, 0..=50.
    pub jitter_pct: u32,
    /// The state before the first verdict.
    pub initial_up: bool,
    /// The port to probe; `None` means the backend's service port.
    pub port: Option<u16>,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// No check: the backend is always up.
    None,
    /// A TCP connection must be established.
    Tcp,
    /// An HTTP/1.1 `GET` must be answered with an expected status (and body).
    Http {
        /// Request target; starts with `/`.
        path: String,
        /// `Host` header; `None` means the backend's address (with `:port`
        /// unless the port is 80).
        host: Option<String>,
        /// Accepted status codes, non-empty, each 100..=599.
        expect_status: Vec<u16>,
        /// A substring the body must contain.
        expect_body: Option<String>,
    },
    /// A command must exit with status 0.
    Exec {
        /// argv; the first element is an absolute path. `{address}`, `{port}`
        /// and `{vip}` are replaced in every element.
        command: Vec<String>,
    },
}

impl CheckKind {
    /// The spelling of the kind in the configuration file.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Exec { .. } => "exec",
        }
    }
}

/// The check used when none is configured: TCP connect every 2 s (± 10 %),
/// 1 s timeout, up after 2 successes, down after 3 failures, down at first.
pub fn default_health() -> HealthCheck {
    HealthCheck {
        kind: CheckKind::Tcp,
        interval: Duration::from_millis(DEFAULT_CHECK_INTERVAL_MS),
        timeout: Duration::from_millis(DEFAULT_CHECK_TIMEOUT_MS),
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
        jitter_pct: DEFAULT_JITTER_PCT,
        initial_up: false,
        port: None,
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        default_health()
    }
}

impl HealthCheck {
    /// The port probed on a backend whose service port is `backend_port`.
    pub fn check_port(&self, backend_port: u16) -> u16 {
        self.port.unwrap_or(backend_port)
    }
}

/// The identity of a backend of a VIP: the VIP's name and the backend's
/// address and port (VIPs are matched by name, backends by address and
/// port, in reloads, `lbctl` and health checks alike).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub vip: String,
    pub backend: std::net::SocketAddrV4,
}

impl BackendKey {
    pub fn new(vip: impl Into<String>, address: Ipv4Addr, port: u16) -> BackendKey {
        BackendKey {
            vip: vip.into(),
            backend: std::net::SocketAddrV4::new(address, port),
        }
    }
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.vip, self.backend)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The path is not a regular file (a FIFO, a device, a directory...).
    #[error("{} is not a regular file but {what}", .path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{} is {size} bytes long; a configuration may have at most {max} bytes", .path.display(), max = MAX_CONFIG_BYTES)]
    TooLarge { path: PathBuf, size: u64 },
    /// Another user could change the file: lbd runs as root, and health
    /// checks of kind `exec` run the commands it names.
    #[error(
        "{} {why}: lbd runs as root and runs the commands the file names (exec health \
         checks), so only root may be able to change it (chown root, chmod go-w)",
        .path.display()
    )]
    Unsafe { path: PathBuf, why: String },
    /// The text is not valid TOML, a key is unknown, or a value has the wrong type.
    #[error("{}", parse_display(*.line, *.column, .table.as_deref(), .message))]
    Parse {
        /// 1-based line of the error, when toml reported a position.
        line: Option<usize>,
        /// 1-based column (in characters) of the error.
        column: Option<usize>,
        /// The table the error is in (`dataplane`, `vip[1].backend[0]`), as
        /// far as it could be told from the table headers above the error.
        table: Option<String>,
        /// toml's message, on one line.
        message: String,
    },
    /// A value is out of range or breaks a rule.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// An error in a file: [`Config::from_file`] wraps `Parse` and `Invalid`
    /// errors in this to name the file.
    #[error("{}: {error}", .path.display())]
    File {
        path: PathBuf,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The key an `Invalid` error is about (also inside `File`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::File { error, .. } => error.key(),
            _ => None,
        }
    }
}

fn parse_display(
    line: Option<usize>,
    column: Option<usize>,
    table: Option<&str>,
    message: &str,
) -> String {
    let mut s = String::new();
    match (line, column) {
        (Some(l), Some(c)) => {
            let _ = write!(s, "line {l}, column {c}");
        }
        (Some(l), None) => {
            let _ = write!(s, "line {l}");
        }
        _ => s.push_str("TOML error"),
    }
    if let Some(t) = table {
        let _ = write!(s, " (in [{t}])");
    }
    let _ = write!(s, ": {message}");
    s
}

/// An `Invalid` error. Values quoted in `message` are cut to a readable
/// length ([`crate::text::clip`]): they may be megabytes of anything.
fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: crate::text::clip(&key.into()),
        message: crate::text::clip(&message.into()),
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// The largest configuration file lbd reads (a large one is tens of KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What a file type is, for an error message.
fn file_kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

/// The text of the configuration file at `path`, read as
/// [`Config::from_file`] says.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO with no writer must not wait for one.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.file_type().is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
            what: file_kind(meta.file_type()),
        });
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why: format!("is owned by uid {}", meta.uid()),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "is writable by {} (mode {:o})",
                if meta.mode() & 0o002 != 0 {
                    "everybody"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777
            ),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        // It grew while being read.
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

impl Config {
    /// Reads and parses `path`. Errors name the file. Only a regular file
    /// of at most [`MAX_CONFIG_BYTES`] that only root (or lbd's own user)
    /// can change is read: a FIFO or a device is refused without waiting on
    /// it, and nothing past the limit is read.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path)?;
        Config::from_toml_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// Parses and validates a configuration.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(s).map_err(|e| parse_error(s, &e))?;
        let config = raw.into_config()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every range and cross-key rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.dataplane.check()?;
        self.nat.check()?;
        self.flows.check()?;
        self.control.check()?;
        self.metrics.check()?;
        self.check_vips()?;
        if let Some(v) = &self.vrrp {
            v.check()?;
            self.check_vrrp_addresses(v)?;
            if let Some(e) = &v.ec2 {
                e.check(&self.vrrp_addresses())?;
                self.check_ec2_nat_source(e)?;
            }
        }
        Ok(())
    }

    /// The interfaces whose state lowers the VRRP priority.
    pub fn vrrp_tracked_interfaces(&self) -> Vec<String> {
        match &self.vrrp {
            Some(v) => v
                .track_interfaces
                .clone()
                .unwrap_or_else(|| self.dataplane.interfaces.clone()),
            None => Vec::new(),
        }
    }

    /// The addresses that float with mastership: `vrrp.addresses`, or every
    /// VIP's address (each once, in file order). Empty without `[vrrp]`.
    pub fn vrrp_addresses(&self) -> Vec<Ipv4Addr> {
        let Some(v) = &self.vrrp else {
            return Vec::new();
        };
        match &v.addresses {
            Some(a) => a.clone(),
            None => {
                let mut out: Vec<Ipv4Addr> = Vec::new();
                for vip in &self.vips {
                    if !out.contains(&vip.address) {
                        out.push(vip.address);
                    }
                }
                out
            }
        }
    }

    /// Each floating address with the interface it lives on (`vrrp.interface`
    /// unless `addresses` says `dev IFNAME`).
    pub fn vrrp_placements(&self) -> Vec<(Ipv4Addr, String)> {
        let Some(v) = &self.vrrp else {
            return Vec::new();
        };
        self.vrrp_addresses()
            .into_iter()
            .map(|a| {
                let ifname = v
                    .address_interfaces
                    .iter()
                    .find(|(b, _)| *b == a)
                    .map(|(_, i)| i.clone())
                    .unwrap_or_else(|| v.interface.clone());
                (a, ifname)
            })
            .collect()
    }

    /// With `[vrrp.ec2]`, connections survive a takeover only if the
    /// backends' replies (to `nat.source`) follow the VIP: `nat.source`
    /// must float, unless `mode = "elastic_ip"` says that this pair does
    /// not keep connections.
    fn check_ec2_nat_source(&self, e: &Ec2) -> Result<(), ConfigError> {
        if e.mode == Ec2Mode::ElasticIp || self.vrrp_addresses().contains(&self.nat.source) {
            return Ok(());
        }
        Err(invalid(
            "vrrp.addresses",
            format!(
                "nat.source ({}) does not float, so after a takeover every backend reply goes \
                 to the old host; add it to vrrp.addresses (with \"dev IFNAME\" if it lives on \
                 another interface), or set vrrp.ec2.mode = \"elastic_ip\" for a pair that \
                 does not keep connections across a takeover",
                self.nat.source
            ),
        ))
    }

    fn check_vrrp_addresses(&self, v: &Vrrp) -> Result<(), ConfigError> {
        let floating = self.vrrp_addresses();
        if floating.len() > VRRP_ADDRESSES_MAX {
            return Err(invalid(
                "vrrp.addresses",
                format!(
                    "{} floating addresses; one advertisement carries at most \
                     {VRRP_ADDRESSES_MAX}",
                    floating.len()
                ),
            ));
        }
        for (i, a) in floating.iter().enumerate() {
            let key = if v.addresses.is_some() {
                format!("vrrp.addresses[{i}]")
            } else {
                "vrrp.addresses".to_owned()
            };
            if v.peers.contains(a) {
                return Err(invalid(
                    key,
                    format!("{a} is also in vrrp.peers; a peer's own address cannot float"),
                ));
            }
            if Some(*a) == v.source {
                return Err(invalid(
                    key,
                    format!(
                        "{a} is vrrp.source, the address advertisements are sent from; it \
                         cannot also float"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_vips(&self) -> Result<(), ConfigError> {
        let max_vips = self.dataplane.max_vips;
        if self.vips.len() > max_vips as usize {
            return Err(invalid(
                "vip",
                format!(
                    "{} VIPs are configured but dataplane.max_vips is {max_vips}",
                    self.vips.len()
                ),
            ));
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut services: HashMap<(Ipv4Addr, u16, Protocol), usize> = HashMap::new();
        let mut total_backends = 0usize;
        for (i, vip) in self.vips.iter().enumerate() {
            let key = format!("vip[{i}]");
            vip.check(&key)?;

            if let Some(first) = names.insert(&vip.name, i) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is already the name of vip[{first}]", vip.name),
                ));
            }
            let service = (vip.address, vip.port, vip.protocol);
            if let Some(first) = services.insert(service, i) {
                return Err(invalid(
                    key,
                    format!(
                        "{}:{}/{} is already served by vip[{first}] ({:?})",
                        vip.address, vip.port, vip.protocol, self.vips[first].name
                    ),
                ));
            }

            let ring_size = self.dataplane.ring_size;
            if vip.backends.len() >= ring_size as usize {
                return Err(invalid(
                    "dataplane.ring_size",
                    format!(
                        "{ring_size} is not greater than the {} backends of {key} ({:?}); \
                         the Maglev ring of a VIP needs more slots than it has backends",
                        vip.backends.len(),
                        vip.name
                    ),
                ));
            }

            if vip.address == self.nat.source && self.nat.contains_port(vip.port) {
                return Err(invalid(
                    format!("{key}.port"),
                    format!(
                        "{} is inside the NAT port range {}-{} while the VIP address is \
                         nat.source ({}): replies from backends to the NAT ports would be \
                         mistaken for client traffic to this VIP; move the VIP port or the \
                         NAT range",
                        vip.port, self.nat.port_min, self.nat.port_max, self.nat.source
                    ),
                ));
            }

            total_backends += vip.backends.len();
        }

        let vip_addresses: Vec<Ipv4Addr> = self.vips.iter().map(|v| v.address).collect();
        for (i, vip) in self.vips.iter().enumerate() {
            for (j, b) in vip.backends.iter().enumerate() {
                if let Some(why) =
                    backend_address_problem(b.address, &vip_addresses, &[self.nat.source])
                {
                    return Err(invalid(
                        format!("vip[{i}].backend[{j}].address"),
                        format!("{} {why}", b.address),
                    ));
                }
            }
        }

        if total_backends > lb_ebpf::MAX_BACKENDS as usize {
            return Err(invalid(
                "vip",
                format!(
                    "{total_backends} backends in total over all VIPs; at most {} are supported",
                    lb_ebpf::MAX_BACKENDS
                ),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Per-table checks (shared by the parser and `validate`)
// ---------------------------------------------------------------------------

impl Dataplane {
    fn check(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(invalid(
                "dataplane.interfaces",
                "must list at least one interface",
            ));
        }
        if self.interfaces.len() > lb_ebpf::MAX_TX_PORTS as usize {
            return Err(invalid(
                "dataplane.interfaces",
                format!(
                    "{} interfaces listed; at most {} are supported",
                    self.interfaces.len(),
                    lb_ebpf::MAX_TX_PORTS
                ),
            ));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            let key = format!("dataplane.interfaces[{i}]");
            check_ifname(&key, name)?;
            if let Some(first) = self.interfaces[..i].iter().position(|n| n == name) {
                return Err(invalid(
                    key,
                    format!("{name:?} is already listed as dataplane.interfaces[{first}]"),
                ));
            }
        }

        check_range(
            "dataplane.ring_size",
            self.ring_size.into(),
            RING_SIZE_MIN.into(),
            RING_SIZE_MAX.into(),
        )?;
        if !crate::maglev::is_prime(self.ring_size) {
            return Err(invalid(
                "dataplane.ring_size",
                format!(
                    "{} is not a prime number (Maglev needs a prime ring size, e.g. 65537)",
                    self.ring_size
                ),
            ));
        }
        check_range(
            "dataplane.max_flows",
            self.max_flows.into(),
            MAX_FLOWS_MIN.into(),
            MAX_FLOWS_MAX.into(),
        )?;
        check_range(
            "dataplane.max_vips",
            self.max_vips.into(),
            1,
            lb_ebpf::MAX_VIPS.into(),
        )?;
        if let MssClamp::Fixed(mss) = self.mss_clamp {
            check_range(
                "dataplane.mss_clamp",
                mss.into(),
                MSS_CLAMP_MIN.into(),
                MSS_CLAMP_MAX.into(),
            )?;
        }
        check_range(
            "dataplane.pmtu_floor",
            self.pmtu_floor.into(),
            PMTU_FLOOR_MIN.into(),
            u16::MAX.into(),
        )?;
        check_pin_path("dataplane.pin_path", &self.pin_path)
    }
}

impl Nat {
    fn check(&self) -> Result<(), ConfigError> {
        check_unicast("nat.source", self.source)?;
        check_port_range(self.port_min.into(), self.port_max.into())?;
        check_range(
            "nat.port_hold_secs",
            self.port_hold_secs.into(),
            0,
            SECS_MAX.into(),
        )
    }
}

impl Flows {
    fn check(&self) -> Result<(), ConfigError> {
        check_range(
            "flows.idle_timeout_secs",
            self.idle_timeout_secs.into(),
            1,
            SECS_MAX.into(),
        )?;
        check_range(
            "flows.closed_timeout_secs",
            self.closed_timeout_secs.into(),
            1,
            SECS_MAX.into(),
        )?;
        if self.closed_timeout_secs > self.idle_timeout_secs {
            return Err(invalid(
                "flows.closed_timeout_secs",
                format!(
                    "{} is greater than flows.idle_timeout_secs ({})",
                    self.closed_timeout_secs, self.idle_timeout_secs
                ),
            ));
        }
        Ok(())
    }
}

impl Control {
    fn check(&self) -> Result<(), ConfigError> {
        let key = "control.socket";
        check_absolute(key, &self.socket)?;
        if self.socket.file_name().is_none() || self.socket.as_os_str().as_bytes().ends_with(b"/") {
            return Err(invalid(
                key,
                format!("{:?} does not name a file", self.socket),
            ));
        }
        let len = self.socket.as_os_str().len();
        if len > SOCKET_PATH_MAX {
            return Err(invalid(
                key,
                format!(
                    "{:?} is {len} bytes long; a unix socket path can have at most \
                     {SOCKET_PATH_MAX}",
                    self.socket
                ),
            ));
        }
        Ok(())
    }
}

impl Metrics {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.listen {
            check_metrics_listen("metrics.listen", addr)?;
        }
        Ok(())
    }
}

impl Vrrp {
    fn check(&self) -> Result<(), ConfigError> {
        check_ifname("vrrp.interface", &self.interface)?;
        check_range("vrrp.router_id", self.router_id.into(), 1, 255)?;
        check_range("vrrp.priority", self.priority.into(), 1, 254)?;
        check_range(
            "vrrp.advert_interval_ms",
            (u64::from(self.interval_cs) * 10).into(),
            VRRP_INTERVAL_MS_MIN.into(),
            VRRP_INTERVAL_MS_MAX.into(),
        )?;
        if let Some(s) = self.source {
            check_unicast("vrrp.source", s)?;
        }
        if self.peers.is_empty() {
            return Err(invalid(
                "vrrp.peers",
                "must list the other load balancer's address (VRRP runs by unicast: EC2 \
                 has no multicast)",
            ));
        }
        if self.peers.len() > VRRP_PEERS_MAX {
            return Err(invalid(
                "vrrp.peers",
                format!(
                    "{} peers listed; at most {VRRP_PEERS_MAX}",
                    self.peers.len()
                ),
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let key = format!("vrrp.peers[{i}]");
            check_unicast(&key, *p)?;
            if Some(*p) == self.source {
                return Err(invalid(
                    key,
                    format!("{p} is vrrp.source, this host's own address"),
                ));
            }
            if let Some(first) = self.peers[..i].iter().position(|q| q == p) {
                return Err(invalid(
                    key,
                    format!("{p} is already listed as vrrp.peers[{first}]"),
                ));
            }
        }
        check_range("vrrp.track_weight", self.track_weight.into(), 1, 253)?;
        check_range(
            "vrrp.preempt_delay_ms",
            self.preempt_delay_ms.into(),
            0,
            VRRP_PREEMPT_DELAY_MS_MAX.into(),
        )?;
        if let Some(names) = &self.track_interfaces {
            for (i, name) in names.iter().enumerate() {
                let key = format!("vrrp.track_interfaces[{i}]");
                check_ifname(&key, name)?;
                if let Some(first) = names[..i].iter().position(|n| n == name) {
                    return Err(invalid(
                        key,
                        format!("{name:?} is already listed as vrrp.track_interfaces[{first}]"),
                    ));
                }
            }
        }
        if let Some(addresses) = &self.addresses {
            if addresses.is_empty() {
                return Err(invalid(
                    "vrrp.addresses",
                    "is empty: nothing would move to the new master; leave the key out to \
                     float every VIP's address",
                ));
            }
            for (i, a) in addresses.iter().enumerate() {
                let key = format!("vrrp.addresses[{i}]");
                check_unicast(&key, *a)?;
                if let Some(first) = addresses[..i].iter().position(|b| b == a) {
                    return Err(invalid(
                        key,
                        format!("{a} is already listed as vrrp.addresses[{first}]"),
                    ));
                }
                if let Some((_, ifname)) = self.address_interfaces.iter().find(|(b, _)| b == a) {
                    check_ifname(&key, ifname)?;
                }
            }
        }
        Ok(())
    }
}

impl Ec2 {
    fn check(&self, floating: &[Ipv4Addr]) -> Result<(), ConfigError> {
        let id = |key: &str, value: &str, prefix: &str| {
            crate::vrrp::ec2::check_id(value, prefix).map_err(|message| invalid(key, message))
        };
        if let Some(eni) = &self.network_interface_id {
            id("vrrp.ec2.network_interface_id", eni, "eni-")?;
        }
        if let Some(a) = &self.elastic_ip_allocation_id {
            id("vrrp.ec2.elastic_ip_allocation_id", a, "eipalloc-")?;
        }
        check_range(
            "vrrp.ec2.reconcile_interval_ms",
            self.reconcile_interval_ms.into(),
            EC2_RECONCILE_MS_MIN.into(),
            EC2_RECONCILE_MS_MAX.into(),
        )?;
        check_range(
            "vrrp.ec2.hold_down_ms",
            self.hold_down_ms.into(),
            0,
            EC2_HOLD_DOWN_MS_MAX.into(),
        )?;
        if self.route_tables.len() > EC2_ROUTE_TABLES_MAX {
            return Err(invalid(
                "vrrp.ec2.route_tables",
                format!(
                    "{} route tables listed; at most {EC2_ROUTE_TABLES_MAX}",
                    self.route_tables.len()
                ),
            ));
        }
        for (i, t) in self.route_tables.iter().enumerate() {
            let key = format!("vrrp.ec2.route_tables[{i}]");
            id(&key, t, "rtb-")?;
            if let Some(first) = self.route_tables[..i].iter().position(|u| u == t) {
                return Err(invalid(
                    key,
                    format!("{t:?} is already listed as vrrp.ec2.route_tables[{first}]"),
                ));
            }
        }
        let mode = self.mode.as_str();
        match self.mode {
            Ec2Mode::SecondaryAddresses => {
                if !self.route_tables.is_empty() {
                    return Err(invalid(
                        "vrrp.ec2.route_tables",
                        "is only used with mode = \"route_table\"",
                    ));
                }
            }
            Ec2Mode::RouteTable => {
                if self.route_tables.is_empty() {
                    return Err(invalid(
                        "vrrp.ec2.route_tables",
                        "is required with mode = \"route_table\": the route tables whose /32 \
                         routes to the floating addresses move to the master",
                    ));
                }
                for (key, set) in [
                    (
                        "vrrp.ec2.private_addresses",
                        self.private_addresses.is_some(),
                    ),
                    (
                        "vrrp.ec2.elastic_ip_allocation_id",
                        self.elastic_ip_allocation_id.is_some(),
                    ),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            format!(
                                "is not used with mode = \"{mode}\": the floating addresses are \
                                 routes there, outside the VPC's subnets, and an Elastic IP maps \
                                 only to an address of a subnet (use mode = \"elastic_ip\" on \
                                 another pair for public clients)"
                            ),
                        ));
                    }
                }
            }
            Ec2Mode::ElasticIp => {
                if self.elastic_ip_allocation_id.is_none() {
                    return Err(invalid(
                        "vrrp.ec2.elastic_ip_allocation_id",
                        "is required with mode = \"elastic_ip\": the Elastic IP is all that \
                         moves",
                    ));
                }
                if self.private_addresses.is_some() || !self.route_tables.is_empty() {
                    return Err(invalid(
                        if self.private_addresses.is_some() {
                            "vrrp.ec2.private_addresses"
                        } else {
                            "vrrp.ec2.route_tables"
                        },
                        format!("is not used with mode = \"{mode}\": only the Elastic IP moves"),
                    ));
                }
            }
        }
        if let Some(list) = &self.private_addresses {
            for (i, a) in list.iter().enumerate() {
                if let Some(first) = list[..i].iter().position(|b| b == a) {
                    return Err(invalid(
                        format!("vrrp.ec2.private_addresses[{i}]"),
                        format!("{a} is already listed as vrrp.ec2.private_addresses[{first}]"),
                    ));
                }
            }
        }
        let private = self
            .private_addresses
            .clone()
            .unwrap_or_else(|| floating.to_vec());
        if let Some(a) = self.elastic_ip_private_address {
            if self.mode == Ec2Mode::ElasticIp {
                // This host's own address, which does not move.
            } else if self.elastic_ip_allocation_id.is_none() {
                return Err(invalid(
                    "vrrp.ec2.elastic_ip_private_address",
                    "is set without vrrp.ec2.elastic_ip_allocation_id",
                ));
            }
            if !private.contains(&a) {
                return Err(invalid(
                    "vrrp.ec2.elastic_ip_private_address",
                    format!(
                        "{a} is not among the private addresses moved to this instance \
                         (vrrp.ec2.private_addresses, by default vrrp.addresses); the Elastic \
                         IP can only map to an address of the interface"
                    ),
                ));
            }
        }
        if let Some(r) = &self.region {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(invalid(
                    "vrrp.ec2.region",
                    format!("{r:?} is not a region name (like \"eu-west-1\")"),
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://"))
                || e.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "vrrp.ec2.endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        Ok(())
    }
}

fn check_metrics_listen(key: &str, addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.port() == 0 {
        return Err(invalid(
            key,
            format!("{addr}: port 0 is not allowed; Prometheus needs a fixed port"),
        ));
    }
    Ok(())
}

impl HealthCheck {
    /// Checks every range and rule; `key` is the table (`vip[0].health`,
    /// `vip[0].backend[1].health`), errors name `key.<field>`.
    pub fn check(&self, key: &str) -> Result<(), ConfigError> {
        let ms = |d: Duration| d.as_millis().min(i128::MAX as u128) as i128;
        check_range(
            &format!("{key}.interval_ms"),
            ms(self.interval),
            CHECK_INTERVAL_MS_MIN.into(),
            CHECK_INTERVAL_MS_MAX.into(),
        )?;
        check_range(
            &format!("{key}.timeout_ms"),
            ms(self.timeout),
            CHECK_TIMEOUT_MS_MIN.into(),
            CHECK_INTERVAL_MS_MAX.into(),
        )?;
        if self.timeout > self.interval {
            return Err(invalid(
                format!("{key}.timeout_ms"),
                format!(
                    "{} is greater than interval_ms ({})",
                    ms(self.timeout),
                    ms(self.interval)
                ),
            ));
        }
        check_range(
            &format!("{key}.rise"),
            self.rise.into(),
            1,
            RISE_FALL_MAX.into(),
        )?;
        check_range(
            &format!("{key}.fall"),
            self.fall.into(),
            1,
            RISE_FALL_MAX.into(),
        )?;
        check_range(
            &format!("{key}.jitter_pct"),
            self.jitter_pct.into(),
            0,
            JITTER_PCT_MAX.into(),
        )?;
        if let Some(port) = self.port {
            check_range(&format!("{key}.port"), port.into(), 1, 65_535)?;
        }
        match &self.kind {
            CheckKind::None | CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                path,
                host,
                expect_status,
                expect_body,
            } => {
                check_http_path(&format!("{key}.path"), path)?;
                if let Some(host) = host {
                    check_http_host(&format!("{key}.host"), host)?;
                }
                if expect_status.is_empty() {
                    return Err(invalid(
                        format!("{key}.expect_status"),
                        "must list at least one status code",
                    ));
                }
                for (i, code) in expect_status.iter().enumerate() {
                    check_range(
                        &format!("{key}.expect_status[{i}]"),
                        (*code).into(),
                        HTTP_STATUS_MIN.into(),
                        HTTP_STATUS_MAX.into(),
                    )?;
                }
                if let Some(body) = expect_body {
                    check_expect_body(&format!("{key}.expect_body"), body)?;
                }
                Ok(())
            }
            CheckKind::Exec { command } => check_command(&format!("{key}.command"), command),
        }
    }
}

/// A request target: sent verbatim in the request line.
fn check_http_path(key: &str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid(key, format!("{path:?} must start with '/'")));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == ' ' || *c == '#')
    {
        return Err(invalid(
            key,
            format!(
                "{path:?} contains {c:?}; spaces, '#', control and non-ASCII characters \
                 must be percent-encoded"
            ),
        ));
    }
    // What the HTTP client can send: not `<`, `>` or `` ` ``, nor `"` in the query.
    if let Err(e) = path.parse::<hyper::Uri>() {
        return Err(invalid(
            key,
            format!("{path:?} is not a valid request target ({e}); percent-encode it"),
        ));
    }
    Ok(())
}

/// A `Host` header value.
fn check_http_host(key: &str, host: &str) -> Result<(), ConfigError> {
    if host.is_empty() {
        return Err(invalid(
            key,
            "is empty; leave the key out to send the backend's address",
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || c.is_ascii_whitespace())
    {
        return Err(invalid(
            key,
            format!("{host:?} contains {c:?}, which a Host header cannot carry"),
        ));
    }
    Ok(())
}

fn check_expect_body(key: &str, body: &str) -> Result<(), ConfigError> {
    if body.is_empty() {
        return Err(invalid(
            key,
            "is empty; leave the key out to accept any body",
        ));
    }
    Ok(())
}

fn check_command(key: &str, command: &[String]) -> Result<(), ConfigError> {
    let Some(program) = command.first() else {
        return Err(invalid(
            key,
            "is empty; it must list the program and its arguments",
        ));
    };
    if !Path::new(program).is_absolute() {
        return Err(invalid(
            format!("{key}[0]"),
            format!("{program:?} is not an absolute path (commands are not searched in PATH)"),
        ));
    }
    for (i, arg) in command.iter().enumerate() {
        if arg.contains('\0') {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("{arg:?} contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

impl Vip {
    /// Checks the VIP's own keys and its backends; `key` is `vip[i]`.
    fn check(&self, key: &str) -> Result<(), ConfigError> {
        check_vip_name(&format!("{key}.name"), &self.name)?;
        check_unicast(&format!("{key}.address"), self.address)?;
        check_range(&format!("{key}.port"), self.port.into(), 1, 65_535)?;
        self.health.check(&format!("{key}.health"))?;

        let mut seen: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
        for (j, b) in self.backends.iter().enumerate() {
            let bkey = format!("{key}.backend[{j}]");
            check_unicast(&format!("{bkey}.address"), b.address)?;
            check_range(
                &format!("{bkey}.weight"),
                b.weight.into(),
                1,
                WEIGHT_MAX.into(),
            )?;
            b.health.check(&format!("{bkey}.health"))?;
            let port = self.backend_port(b);
            if let Some(first) = seen.insert((b.address, port), j) {
                return Err(invalid(
                    bkey,
                    format!(
                        "{}:{port} is already listed as {key}.backend[{first}]",
                        b.address
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_range(key: &str, value: i128, min: i128, max: i128) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range (allowed: {min}..={max})"),
        ));
    }
    Ok(())
}

/// Linux's `dev_valid_name()`.
fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        Err(invalid(
            key,
            format!("{name:?} is not a valid interface name: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return bad(format!(
            "it is {} bytes long, at most {IFNAME_MAX} are allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not allowed".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad(format!("it contains {c:?}"));
    }
    Ok(())
}

fn check_vip_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let len = name.chars().count();
    if len == 0 || len > VIP_NAME_MAX {
        return Err(invalid(
            key,
            format!("{name:?} must be 1 to {VIP_NAME_MAX} characters long"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
    {
        return Err(invalid(
            key,
            format!("{name:?} contains {c:?}; allowed are A-Z, a-z, 0-9, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

/// Why `addr` cannot be a VIP, NAT, backend or peer address, if it cannot:
/// it is no single host another machine can reach.
pub fn unicast_problem(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("is the unspecified address")
    } else if addr.octets()[0] == 0 {
        Some("is in 0.0.0.0/8 (\"this network\"), never a destination")
    } else if addr.is_loopback() {
        Some("is a loopback address (127.0.0.0/8), which never leaves its host")
    } else if addr.is_broadcast() {
        Some("is the broadcast address")
    } else if addr.is_multicast() {
        Some("is a multicast address")
    } else if addr.octets()[0] >= 240 {
        Some("is in the reserved range 240.0.0.0/4")
    } else {
        None
    }
}

/// Why `addr` cannot be a backend, beyond [`unicast_problem`]: it is the
/// address of a VIP (packets would loop through the load balancer) or a NAT
/// source address (this host's own).
pub fn backend_address_problem(
    addr: Ipv4Addr,
    vip_addresses: &[Ipv4Addr],
    nat_sources: &[Ipv4Addr],
) -> Option<String> {
    if let Some(why) = unicast_problem(addr) {
        return Some(format!("{why}; a backend needs a unicast address"));
    }
    if vip_addresses.contains(&addr) {
        return Some(
            "is a VIP address; a backend must be another host, or its packets would come \
             back to the load balancer"
                .into(),
        );
    }
    if nat_sources.contains(&addr) {
        return Some(
            "is the NAT source address (nat.source), the load balancer's own; a backend \
             must be another host"
                .into(),
        );
    }
    None
}

fn check_unicast(key: &str, addr: Ipv4Addr) -> Result<(), ConfigError> {
    match unicast_problem(addr) {
        None => Ok(()),
        Some(why) => Err(invalid(
            key,
            format!("{addr} {why}; a unicast address is needed"),
        )),
    }
}

/// The NAT port range rules, on values that may not fit a `u16` yet.
fn check_port_range(min: u32, max: u32) -> Result<(), ConfigError> {
    let key = "nat.ports";
    let why = if min < NAT_PORT_LOWEST {
        format!("MIN must be at least {NAT_PORT_LOWEST} (lower ports are privileged)")
    } else if max > 65_535 {
        "MAX must be at most 65535".to_string()
    } else if min > max {
        "MIN is greater than MAX".to_string()
    } else if max - min + 1 < NAT_PORTS_MIN_COUNT {
        format!(
            "the range has {} ports, at least {NAT_PORTS_MIN_COUNT} are needed",
            max - min + 1
        )
    } else {
        return Ok(());
    };
    Err(invalid(key, format!("\"{min}-{max}\": {why}")))
}

fn check_absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(invalid(key, format!("{path:?} is not an absolute path")));
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(key, format!("{path:?} contains a NUL byte")));
    }
    Ok(())
}

fn check_pin_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    check_absolute(key, path)?;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(key, format!("{path:?} must not contain \"..\"")));
    }
    if !path.starts_with(BPFFS) || path == Path::new(BPFFS) {
        return Err(invalid(
            key,
            format!("{path:?} is not a directory under {BPFFS} (the BPF filesystem)"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// TOML errors
// ---------------------------------------------------------------------------

fn parse_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = crate::text::clip(&message);
    let offset = e.span().map(|s| s.start.min(src.len()));
    let (line, column, table) = match offset {
        Some(off) => {
            // Back up to a char boundary so slicing cannot panic.
            let mut off = off;
            while !src.is_char_boundary(off) {
                off -= 1;
            }
            let before = &src[..off];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            let column = before[line_start..].chars().count() + 1;
            (Some(line), Some(column), table_at(src, off))
        }
        None => (None, None, None),
    };
    ConfigError::Parse {
        line,
        column,
        table,
        message,
    }
}

/// The table that byte `offset` of `src` is in, judging by the table headers
/// above it: `dataplane`, `vip[1]`, `vip[1].backend[0]`. A best effort for
/// messages only (a header-like line inside a multi-line string fools it).
fn table_at(src: &str, offset: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut vip: Option<usize> = None;
    let mut backend: Option<usize> = None;
    let mut line_start = 0;
    for line in src.split_inclusive('\n') {
        if line_start > offset {
            break;
        }
        line_start += line.len();
        let Some((name, is_array)) = table_header(line) else {
            continue;
        };
        table = Some(match (name.as_str(), is_array) {
            ("vip", true) => {
                let i = vip.map_or(0, |i| i + 1);
                vip = Some(i);
                backend = None;
                format!("vip[{i}]")
            }
            ("vip.backend", true) => {
                let j = backend.map_or(0, |j| j + 1);
                backend = Some(j);
                format!("vip[{}].backend[{j}]", vip.unwrap_or(0))
            }
            ("vip.health", false) => format!("vip[{}].health", vip.unwrap_or(0)),
            ("vip.backend.health", false) => format!(
                "vip[{}].backend[{}].health",
                vip.unwrap_or(0),
                backend.unwrap_or(0)
            ),
            _ => name,
        });
    }
    table
}

/// `[name]` -> `(name, false)`, `[[name]]` -> `(name, true)`; spaces removed.
fn table_header(line: &str) -> Option<(String, bool)> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (inner, is_array) = if let Some(rest) = line.strip_prefix("[[") {
        (rest.strip_suffix("]]")?, true)
    } else {
        (line.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let name: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    if name.is_empty() || name.contains(['[', ']', ',']) {
        return None;
    }
    Some((name, is_array))
}

// ---------------------------------------------------------------------------
// Raw (file) structure
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dataplane: Option<RawDataplane>,
    nat: Option<RawNat>,
    #[serde(default)]
    flows: RawFlows,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    metrics: RawMetrics,
    vrrp: Option<RawVrrp>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVrrp {
    interface: Option<String>,
    router_id: Option<i64>,
    priority: Option<i64>,
    advert_interval_ms: Option<i64>,
    preempt: Option<bool>,
    preempt_delay_ms: Option<i64>,
    source: Option<String>,
    peers: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    track_backends: Option<bool>,
    track_interfaces: Option<Vec<String>>,
    track_weight: Option<i64>,
    ec2: Option<RawEc2>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEc2 {
    mode: Option<String>,
    network_interface_id: Option<String>,
    route_tables: Option<Vec<String>>,
    reconcile_interval_ms: Option<i64>,
    hold_down_ms: Option<i64>,
    private_addresses: Option<Vec<String>>,
    elastic_ip_allocation_id: Option<String>,
    elastic_ip_private_address: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
}

impl RawEc2 {
    fn into_ec2(self) -> Result<Ec2, ConfigError> {
        let mode = match self.mode.as_deref() {
            None | Some("secondary_addresses") => Ec2Mode::SecondaryAddresses,
            Some("route_table") => Ec2Mode::RouteTable,
            Some("elastic_ip") => Ec2Mode::ElasticIp,
            Some(other) => {
                return Err(invalid(
                    "vrrp.ec2.mode",
                    format!(
                        "{other:?} is not a mode; use \"secondary_addresses\", \
                         \"route_table\" or \"elastic_ip\""
                    ),
                ))
            }
        };
        let private_addresses = self
            .private_addresses
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, a)| ipv4(&format!("vrrp.ec2.private_addresses[{i}]"), a))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let elastic_ip_private_address = self
            .elastic_ip_private_address
            .map(|a| ipv4("vrrp.ec2.elastic_ip_private_address", &a))
            .transpose()?;
        Ok(Ec2 {
            mode,
            network_interface_id: self.network_interface_id,
            private_addresses,
            elastic_ip_allocation_id: self.elastic_ip_allocation_id,
            elastic_ip_private_address,
            region: self.region,
            endpoint: self.endpoint,
            route_tables: self.route_tables.unwrap_or_default(),
            reconcile_interval_ms: match self.reconcile_interval_ms {
                None => DEFAULT_EC2_RECONCILE_MS,
                Some(v) => int(
                    "vrrp.ec2.reconcile_interval_ms",
                    v,
                    EC2_RECONCILE_MS_MIN as i64,
                    EC2_RECONCILE_MS_MAX as i64,
                )?,
            },
            hold_down_ms: match self.hold_down_ms {
                None => DEFAULT_EC2_HOLD_DOWN_MS,
                Some(v) => int("vrrp.ec2.hold_down_ms", v, 0, EC2_HOLD_DOWN_MS_MAX as i64)?,
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    ring_size: Option<i64>,
    max_flows: Option<i64>,
    max_vips: Option<i64>,
    pin_path: Option<String>,
    mss_clamp: Option<toml::Value>,
    pmtu_floor: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    source: Option<String>,
    ports: Option<String>,
    reserve_ports: Option<bool>,
    port_hold_secs: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    idle_timeout_secs: Option<i64>,
    closed_timeout_secs: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    on_empty: Option<String>,
    hash: Option<String>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    health: Option<RawHealth>,
}

/// A `[vip.health]` table or a backend's `health` table: every key optional,
/// since a backend's table only overrides what it names.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<String>,
    interval_ms: Option<i64>,
    timeout_ms: Option<i64>,
    rise: Option<i64>,
    fall: Option<i64>,
    jitter_pct: Option<i64>,
    initial: Option<String>,
    port: Option<i64>,
    // kind = "http"
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<Vec<i64>>,
    expect_body: Option<String>,
    // kind = "exec"
    command: Option<Vec<String>>,
}

fn required<T>(key: &str, value: Option<T>) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(key, "is required but missing"))
}

/// Range-checks a TOML integer and narrows it.
fn int<T: TryFrom<i64>>(key: &str, value: i64, min: i64, max: i64) -> Result<T, ConfigError> {
    check_range(key, value.into(), min.into(), max.into())?;
    T::try_from(value).map_err(|_| invalid(key, format!("{value} is out of range")))
}

fn ipv4(key: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    let addr: Ipv4Addr = s
        .parse()
        .map_err(|_| invalid(key, format!("{s:?} is not an IPv4 address")))?;
    check_unicast(key, addr)?;
    Ok(addr)
}

fn port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let key = "nat.ports";
    let (min, max) = s.split_once('-').ok_or_else(|| {
        invalid(
            key,
            format!("{s:?} is not a port range; expected \"MIN-MAX\", e.g. \"20000-59999\""),
        )
    })?;
    let number = |part: &str| -> Result<u32, ConfigError> {
        part.trim().parse().map_err(|_| {
            invalid(
                key,
                format!("{s:?}: {:?} is not a port number", part.trim()),
            )
        })
    };
    let (min, max) = (number(min)?, number(max)?);
    check_port_range(min, max)?;
    // In range after the check.
    Ok((min as u16, max as u16))
}

impl RawConfig {
    fn into_config(self) -> Result<Config, ConfigError> {
        let dataplane = required("dataplane", self.dataplane)?.into_dataplane()?;
        let nat = required("nat", self.nat)?.into_nat()?;
        let flows = self.flows.into_flows()?;
        let control = self.control.into_control();
        let metrics = self.metrics.into_metrics()?;
        let vrrp = self.vrrp.map(RawVrrp::into_vrrp).transpose()?;
        let vips = self
            .vip
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.into_vip(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            dataplane,
            nat,
            flows,
            control,
            metrics,
            vrrp,
            vips,
        })
    }
}

impl RawVrrp {
    fn into_vrrp(self) -> Result<Vrrp, ConfigError> {
        let interface = required("vrrp.interface", self.interface)?;
        let router_id = int(
            "vrrp.router_id",
            required("vrrp.router_id", self.router_id)?,
            1,
            255,
        )?;
        let priority = match self.priority {
            None => DEFAULT_VRRP_PRIORITY,
            Some(v) => int("vrrp.priority", v, 1, 254)?,
        };
        let interval_ms: u64 = match self.advert_interval_ms {
            None => DEFAULT_VRRP_INTERVAL_MS,
            Some(v) => int(
                "vrrp.advert_interval_ms",
                v,
                VRRP_INTERVAL_MS_MIN as i64,
                VRRP_INTERVAL_MS_MAX as i64,
            )?,
        };
        if !interval_ms.is_multiple_of(10) {
            return Err(invalid(
                "vrrp.advert_interval_ms",
                format!(
                    "{interval_ms} is not a multiple of 10 (VRRP counts the interval in \
                     centiseconds)"
                ),
            ));
        }
        let source = self.source.map(|s| ipv4("vrrp.source", &s)).transpose()?;
        let peers = required("vrrp.peers", self.peers)?
            .iter()
            .enumerate()
            .map(|(i, p)| ipv4(&format!("vrrp.peers[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut address_interfaces = Vec::new();
        let addresses = self
            .addresses
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, entry)| {
                        let key = format!("vrrp.addresses[{i}]");
                        let words: Vec<&str> = entry.split_whitespace().collect();
                        match words.as_slice() {
                            [a] => ipv4(&key, a),
                            [a, "dev", ifname] => {
                                let a = ipv4(&key, a)?;
                                address_interfaces.push((a, (*ifname).to_owned()));
                                Ok(a)
                            }
                            _ => Err(invalid(
                                key,
                                format!(
                                    "{entry:?} is neither \"ADDRESS\" nor \"ADDRESS dev \
                                     INTERFACE\""
                                ),
                            )),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Vrrp {
            interface,
            router_id,
            priority,
            interval_cs: (interval_ms / 10) as u16,
            preempt: self.preempt.unwrap_or(true),
            preempt_delay_ms: match self.preempt_delay_ms {
                None => 0,
                Some(v) => int(
                    "vrrp.preempt_delay_ms",
                    v,
                    0,
                    VRRP_PREEMPT_DELAY_MS_MAX as i64,
                )?,
            },
            source,
            peers,
            addresses,
            address_interfaces,
            ec2: self.ec2.map(RawEc2::into_ec2).transpose()?,
            track_backends: self.track_backends.unwrap_or(true),
            track_interfaces: self.track_interfaces,
            track_weight: match self.track_weight {
                None => DEFAULT_VRRP_TRACK_WEIGHT,
                Some(v) => int("vrrp.track_weight", v, 1, 253)?,
            },
        })
    }
}

impl RawDataplane {
    fn into_dataplane(self) -> Result<Dataplane, ConfigError> {
        let interfaces = required("dataplane.interfaces", self.interfaces)?;
        let xdp_mode = match self.xdp_mode.as_deref() {
            None | Some("native") => XdpMode::Native,
            Some("generic") => XdpMode::Generic,
            Some(other) => {
                return Err(invalid(
                    "dataplane.xdp_mode",
                    format!("{other:?} is not a mode; use \"native\" or \"generic\""),
                ))
            }
        };
        let ring_size = match self.ring_size {
            None => DEFAULT_RING_SIZE,
            Some(v) => int(
                "dataplane.ring_size",
                v,
                RING_SIZE_MIN.into(),
                RING_SIZE_MAX.into(),
            )?,
        };
        let max_flows = match self.max_flows {
            None => DEFAULT_MAX_FLOWS,
            Some(v) => int(
                "dataplane.max_flows",
                v,
                MAX_FLOWS_MIN.into(),
                MAX_FLOWS_MAX.into(),
            )?,
        };
        let max_vips = match self.max_vips {
            None => DEFAULT_MAX_VIPS,
            Some(v) => int("dataplane.max_vips", v, 1, lb_ebpf::MAX_VIPS.into())?,
        };
        let pin_path = PathBuf::from(self.pin_path.as_deref().unwrap_or(DEFAULT_PIN_PATH));
        let key = "dataplane.mss_clamp";
        let mss_clamp = match self.mss_clamp {
            None => MssClamp::Auto,
            Some(toml::Value::String(s)) if s == "auto" => MssClamp::Auto,
            Some(toml::Value::String(s)) if s == "off" => MssClamp::Off,
            Some(toml::Value::Integer(v)) => {
                MssClamp::Fixed(int(key, v, MSS_CLAMP_MIN.into(), MSS_CLAMP_MAX.into())?)
            }
            Some(other) => {
                return Err(invalid(
                    key,
                    format!(
                        "{other} is not a clamp; use \"auto\", \"off\" or an MSS from \
                         {MSS_CLAMP_MIN} to {MSS_CLAMP_MAX}"
                    ),
                ))
            }
        };
        let pmtu_floor = match self.pmtu_floor {
            None => DEFAULT_PMTU_FLOOR,
            Some(v) => int(
                "dataplane.pmtu_floor",
                v,
                PMTU_FLOOR_MIN.into(),
                u16::MAX.into(),
            )?,
        };
        Ok(Dataplane {
            interfaces,
            xdp_mode,
            ring_size,
            max_flows,
            max_vips,
            pin_path,
            mss_clamp,
            pmtu_floor,
        })
    }
}

impl RawNat {
    fn into_nat(self) -> Result<Nat, ConfigError> {
        let source = ipv4("nat.source", &required("nat.source", self.source)?)?;
        let (port_min, port_max) = match self.ports.as_deref() {
            None => (DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_PORT_MAX),
            Some(s) => port_range(s)?,
        };
        let port_hold_secs = match self.port_hold_secs {
            None => DEFAULT_PORT_HOLD_SECS,
            Some(v) => int("nat.port_hold_secs", v, 0, SECS_MAX as i64)?,
        };
        Ok(Nat {
            source,
            port_min,
            port_max,
            reserve_ports: self.reserve_ports.unwrap_or(true),
            port_hold_secs,
        })
    }
}

impl RawFlows {
    fn into_flows(self) -> Result<Flows, ConfigError> {
        let idle_timeout_secs = match self.idle_timeout_secs {
            None => DEFAULT_IDLE_TIMEOUT_SECS,
            Some(v) => int("flows.idle_timeout_secs", v, 1, SECS_MAX as i64)?,
        };
        let closed_timeout_secs = match self.closed_timeout_secs {
            None => DEFAULT_CLOSED_TIMEOUT_SECS,
            Some(v) => int("flows.closed_timeout_secs", v, 1, SECS_MAX as i64)?,
        };
        Ok(Flows {
            idle_timeout_secs,
            closed_timeout_secs,
        })
    }
}

impl RawControl {
    fn into_control(self) -> Control {
        Control {
            socket: PathBuf::from(self.socket.as_deref().unwrap_or(DEFAULT_SOCKET)),
        }
    }
}

impl RawMetrics {
    fn into_metrics(self) -> Result<Metrics, ConfigError> {
        let key = "metrics.listen";
        let listen = match self.listen.as_deref() {
            None => Some(DEFAULT_METRICS_LISTEN),
            Some("off") => None,
            Some(s) => {
                let addr: SocketAddr = s.parse().map_err(|_| {
                    invalid(
                        key,
                        format!(
                            "{s:?} is neither \"ADDRESS:PORT\" (e.g. \"127.0.0.1:9650\", \
                             \"[::1]:9650\") nor \"off\""
                        ),
                    )
                })?;
                check_metrics_listen(key, addr)?;
                Some(addr)
            }
        };
        Ok(Metrics { listen })
    }
}

/// The kinds of check, as read from a table (before their keys are gathered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    None,
    Tcp,
    Http,
    Exec,
}

impl RawKind {
    fn parse(key: &str, s: &str) -> Result<RawKind, ConfigError> {
        Ok(match s {
            "none" => RawKind::None,
            "tcp" => RawKind::Tcp,
            "http" => RawKind::Http,
            "exec" => RawKind::Exec,
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "{other:?} is not a kind of check; use \"tcp\", \"http\", \"exec\" \
                         or \"none\""
                    ),
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            RawKind::None => "none",
            RawKind::Tcp => "tcp",
            RawKind::Http => "http",
            RawKind::Exec => "exec",
        }
    }
}

/// One health table and its key path (`vip[0].health`).
struct HealthLayer<'a> {
    key: String,
    raw: &'a RawHealth,
}

/// Resolves health tables into one check. `layers` go from the most specific
/// (a backend's `health`) to the least (the VIP's `[vip.health]`); a key is
/// taken from the first layer that sets it. Keys of one kind (`path`,
/// `command`, ...) are only inherited from a layer of the resolved kind: a
/// backend that switches its VIP's `http` check to `tcp` drops the `path`.
fn resolve_health(layers: &[HealthLayer<'_>]) -> Result<HealthCheck, ConfigError> {
    let field = |i: usize, name: &str| format!("{}.{name}", layers[i].key);

    // The kind each layer is read as: its own, or the one it inherits.
    let mut kinds = vec![RawKind::Tcp; layers.len()];
    let mut inherited = RawKind::Tcp;
    for i in (0..layers.len()).rev() {
        if let Some(k) = &layers[i].raw.kind {
            inherited = RawKind::parse(&field(i, "kind"), k)?;
        }
        kinds[i] = inherited;
    }
    let kind = kinds.first().copied().unwrap_or(RawKind::Tcp);

    // Keys that the layer's kind does not use are errors.
    for (i, (layer, k)) in layers.iter().zip(&kinds).enumerate() {
        let r = layer.raw;
        let misplaced = [
            ("path", r.path.is_some(), RawKind::Http),
            ("host", r.host.is_some(), RawKind::Http),
            ("expect_status", r.expect_status.is_some(), RawKind::Http),
            ("expect_body", r.expect_body.is_some(), RawKind::Http),
            ("command", r.command.is_some(), RawKind::Exec),
        ]
        .into_iter()
        .find(|(_, set, wants)| *set && wants != k);
        if let Some((name, _, wants)) = misplaced {
            return Err(invalid(
                field(i, name),
                format!(
                    "is only used when kind is \"{}\", and the kind here is \"{}\"",
                    wants.as_str(),
                    k.as_str()
                ),
            ));
        }
    }

    /// The first layer (index, value) that sets a key.
    fn pick<'a, T: ?Sized>(
        layers: &[HealthLayer<'a>],
        get: impl Fn(&'a RawHealth) -> Option<&'a T>,
    ) -> Option<(usize, &'a T)> {
        layers
            .iter()
            .enumerate()
            .find_map(|(i, l)| get(l.raw).map(|v| (i, v)))
    }
    // The same, among the layers of the resolved kind.
    let pick_kind = |get: &dyn Fn(&RawHealth) -> bool| -> Option<usize> {
        (0..layers.len()).find(|&i| kinds[i] == kind && get(layers[i].raw))
    };

    let interval_ms: u64 = match pick(layers, |r| r.interval_ms.as_ref()) {
        None => DEFAULT_CHECK_INTERVAL_MS,
        Some((i, &v)) => int(
            &field(i, "interval_ms"),
            v,
            CHECK_INTERVAL_MS_MIN as i64,
            CHECK_INTERVAL_MS_MAX as i64,
        )?,
    };
    let timeout_ms: u64 = match pick(layers, |r| r.timeout_ms.as_ref()) {
        None => DEFAULT_CHECK_TIMEOUT_MS.min(interval_ms),
        Some((t, &v)) => {
            let timeout: u64 = int(
                &field(t, "timeout_ms"),
                v,
                CHECK_TIMEOUT_MS_MIN as i64,
                CHECK_INTERVAL_MS_MAX as i64,
            )?;
            if timeout > interval_ms {
                // Blame the key of the more specific table: that is where the
                // two stopped fitting together.
                let interval_at = pick(layers, |r| r.interval_ms.as_ref()).map(|(i, _)| i);
                return Err(match interval_at {
                    Some(i) if i < t => invalid(
                        field(i, "interval_ms"),
                        format!(
                            "{interval_ms} is less than timeout_ms ({timeout}, from {})",
                            field(t, "timeout_ms")
                        ),
                    ),
                    Some(_) => invalid(
                        field(t, "timeout_ms"),
                        format!("{timeout} is greater than interval_ms ({interval_ms})"),
                    ),
                    None => invalid(
                        field(t, "timeout_ms"),
                        format!(
                            "{timeout} is greater than interval_ms ({interval_ms}, the default)"
                        ),
                    ),
                });
            }
            timeout
        }
    };
    let count =
        |name: &str, get: fn(&RawHealth) -> Option<&i64>, default: u32, min: i64, max: i64| {
            match pick(layers, get) {
                None => Ok(default),
                Some((i, &v)) => int::<u32>(&field(i, name), v, min, max),
            }
        };
    let rise = count(
        "rise",
        |r| r.rise.as_ref(),
        DEFAULT_RISE,
        1,
        RISE_FALL_MAX.into(),
    )?;
    let fall = count(
        "fall",
        |r| r.fall.as_ref(),
        DEFAULT_FALL,
        1,
        RISE_FALL_MAX.into(),
    )?;
    let jitter_pct = count(
        "jitter_pct",
        |r| r.jitter_pct.as_ref(),
        DEFAULT_JITTER_PCT,
        0,
        JITTER_PCT_MAX.into(),
    )?;
    let initial_up = match pick(layers, |r| r.initial.as_deref()) {
        None | Some((_, "down")) => false,
        Some((_, "up")) => true,
        Some((i, other)) => {
            return Err(invalid(
                field(i, "initial"),
                format!("{other:?} is not a state; use \"down\" or \"up\""),
            ))
        }
    };
    let port = match pick(layers, |r| r.port.as_ref()) {
        None => None,
        Some((i, &v)) => Some(int::<u16>(&field(i, "port"), v, 1, 65_535)?),
    };

    let kind = match kind {
        RawKind::None => CheckKind::None,
        RawKind::Tcp => CheckKind::Tcp,
        RawKind::Http => {
            let path = match pick_kind(&|r| r.path.is_some()) {
                None => DEFAULT_HTTP_PATH.to_string(),
                Some(i) => {
                    let path = layers[i].raw.path.clone().unwrap_or_default();
                    check_http_path(&field(i, "path"), &path)?;
                    path
                }
            };
            let host = match pick_kind(&|r| r.host.is_some()) {
                None => None,
                Some(i) => {
                    let host = layers[i].raw.host.clone().unwrap_or_default();
                    check_http_host(&field(i, "host"), &host)?;
                    Some(host)
                }
            };
            let expect_status = match pick_kind(&|r| r.expect_status.is_some()) {
                None => vec![DEFAULT_EXPECT_STATUS],
                Some(i) => {
                    let key = field(i, "expect_status");
                    let codes = layers[i].raw.expect_status.as_deref().unwrap_or_default();
                    if codes.is_empty() {
                        return Err(invalid(key, "must list at least one status code"));
                    }
                    codes
                        .iter()
                        .enumerate()
                        .map(|(j, &c)| {
                            int::<u16>(
                                &format!("{key}[{j}]"),
                                c,
                                HTTP_STATUS_MIN.into(),
                                HTTP_STATUS_MAX.into(),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
            };
            let expect_body = match pick_kind(&|r| r.expect_body.is_some()) {
                None => None,
                Some(i) => {
                    let body = layers[i].raw.expect_body.clone().unwrap_or_default();
                    check_expect_body(&field(i, "expect_body"), &body)?;
                    Some(body)
                }
            };
            CheckKind::Http {
                path,
                host,
                expect_status,
                expect_body,
            }
        }
        RawKind::Exec => {
            let Some(i) = pick_kind(&|r| r.command.is_some()) else {
                return Err(invalid(
                    field(0, "command"),
                    "is required when kind is \"exec\"",
                ));
            };
            let command = layers[i].raw.command.clone().unwrap_or_default();
            check_command(&field(i, "command"), &command)?;
            CheckKind::Exec { command }
        }
    };

    Ok(HealthCheck {
        kind,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        jitter_pct,
        initial_up,
        port,
    })
}

impl RawVip {
    fn into_vip(self, i: usize) -> Result<Vip, ConfigError> {
        let key = format!("vip[{i}]");
        let name = required(&format!("{key}.name"), self.name)?;
        let address = required(&format!("{key}.address"), self.address)?;
        let address = ipv4(&format!("{key}.address"), &address)?;
        let port = required(&format!("{key}.port"), self.port)?;
        let port: u16 = int(&format!("{key}.port"), port, 1, 65_535)?;
        let protocol = match self.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.protocol"),
                    format!("{other:?}: only tcp is supported"),
                ))
            }
        };
        let on_empty = match self.on_empty.as_deref() {
            None | Some("reset") => OnEmpty::Reset,
            Some("drop") => OnEmpty::Drop,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.on_empty"),
                    format!("{other:?} is not an action; use \"reset\" or \"drop\""),
                ))
            }
        };
        let hash = match self.hash.as_deref() {
            None | Some("5-tuple") => VipHash::FiveTuple,
            Some("source") => VipHash::Source,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.hash"),
                    format!("{other:?} is not a hash; use \"5-tuple\" or \"source\""),
                ))
            }
        };
        let vip_health_raw = self.health.unwrap_or_default();
        let vip_layer = HealthLayer {
            key: format!("{key}.health"),
            raw: &vip_health_raw,
        };
        let health = resolve_health(std::slice::from_ref(&vip_layer))?;
        let backends = self
            .backend
            .into_iter()
            .enumerate()
            .map(|(j, b)| b.into_backend(&format!("{key}.backend[{j}]"), port, &vip_layer))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vip {
            name,
            address,
            port,
            protocol,
            on_empty,
            hash,
            health,
            backends,
        })
    }
}

impl RawBackend {
    fn into_backend(
        self,
        key: &str,
        vip_port: u16,
        vip_health: &HealthLayer<'_>,
    ) -> Result<BackendConfig, ConfigError> {
        let address = required(&format!("{key}.address"), self.address)?;
        let address = ipv4(&format!("{key}.address"), &address)?;
        let port = match self.port {
            None => vip_port,
            Some(v) => int(&format!("{key}.port"), v, 1, 65_535)?,
        };
        let weight = match self.weight {
            None => DEFAULT_WEIGHT,
            Some(v) => int(&format!("{key}.weight"), v, 1, WEIGHT_MAX.into())?,
        };
        let own = self.health.unwrap_or_default();
        let health = resolve_health(&[
            HealthLayer {
                key: format!("{key}.health"),
                raw: &own,
            },
            HealthLayer {
                key: vip_health.key.clone(),
                raw: vip_health.raw,
            },
        ])?;
        Ok(BackendConfig {
            address,
            port,
            weight,
            health,
        })
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
xdp_mode = "generic"
ring_size = 251
max_flows = 4096
max_vips = 8
pin_path = "/sys/fs/bpf/lb-test"
mss_clamp = 1400
pmtu_floor = 1200

[nat]
source = "10.0.1.10"
ports = "30000-30999"
reserve_ports = false
port_hold_secs = 60

[flows]
idle_timeout_secs = 600
closed_timeout_secs = 5

[control]
socket = "/run/lb-test/lbd.sock"

[metrics]
listen = "10.0.1.10:9100"

[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
on_empty = "drop"
hash = "source"

  [vip.health]
  kind = "tcp"
  interval_ms = 5000
  timeout_ms = 500
  rise = 3
  fall = 4
  jitter_pct = 20
  initial = "up"

  [[vip.backend]]
  address = "10.0.2.11"
  port = 8080
  weight = 3

  [[vip.backend]]
  address = "10.0.2.12"
  health = { kind = "http", path = "/healthz", host = "web.example", expect_status = [200, 204], expect_body = "ok", port = 9000 }

[[vip]]
name = "api.v2"
address = "10.0.0.101"
port = 443
"#;

    /// A minimal file with extra lines in `[dataplane]` and `[nat]`, then `rest`.
    fn doc(dataplane: &str, nat: &str, rest: &str) -> String {
        format!(
            "[dataplane]\ninterfaces = [\"eth0\"]\n{dataplane}\n\
             [nat]\nsource = \"10.0.1.10\"\n{nat}\n{rest}"
        )
    }

    /// One VIP `web` 10.0.0.100:80 with the given extra lines and one backend.
    fn one_vip(vip_extra: &str, backend_extra: &str) -> String {
        doc(
            "",
            "",
            &format!(
                "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n{vip_extra}\n\
                 [[vip.backend]]\naddress = \"10.0.2.11\"\n{backend_extra}\n"
            ),
        )
    }

    fn err(s: &str) -> String {
        match Config::from_toml_str(s) {
            Ok(c) => panic!("accepted: {c:?}\n--- input ---\n{s}"),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn assert_err(s: &str, expected: &[&str]) {
        let e = err(s);
        for part in expected {
            assert!(
                e.contains(part),
                "error {e:?} does not contain {part:?}\n--- input ---\n{s}"
            );
        }
    }

    fn minimal() -> Config {
        Config::from_toml_str(&doc("", "", "")).unwrap()
    }

    /// A scratch directory of this test process, root-only.
    fn scratch(name: &str) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("lb-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    #[test]
    fn only_a_small_regular_file_only_root_can_change_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("files");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, doc("", "", "")).unwrap();
        Config::from_file(&ok).unwrap();

        let e = Config::from_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a regular file but a character device"),
            "{e}"
        );
        let e = Config::from_file(&dir).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = Config::from_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let big = dir.join("big.toml");
        let mut text = doc("", "", "");
        text.push_str(&"# padding padding padding\n".repeat(50_000));
        std::fs::write(&big, &text).unwrap();
        let e = Config::from_file(&big).unwrap_err().to_string();
        assert!(e.contains("at most 1048576 bytes"), "{e}");

        for (mode, who) in [(0o666, "everybody"), (0o664, "its group")] {
            std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Config::from_file(&ok).unwrap_err().to_string();
            assert!(e.contains(&format!("writable by {who}")), "{e}");
            assert!(e.contains("chmod go-w"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn huge_values_are_not_echoed_whole() {
        let huge = "9".repeat(10_000_000);
        for text in [
            one_vip("", &format!("port = {huge}")),
            doc(
                "",
                "",
                &format!("[[vip]]\nname = \"w\"\naddress = \"{huge}\"\nport = 80\n"),
            ),
            doc(
                "",
                "",
                &format!("[[vip]]\nname = \"{huge}\"\naddress = \"10.0.0.1\"\nport = 80\n"),
            ),
            doc(&format!("{huge} = 1"), "", ""),
            doc("", &format!("ports = \"{huge}\""), ""),
        ] {
            let e = err(&text);
            assert!(e.len() < 1500, "{} bytes: {}", e.len(), &e[..200]);
        }
    }

    #[test]
    fn backends_must_be_other_unicast_hosts() {
        for (addr, why) in [
            ("10.0.0.100", "is a VIP address"),
            ("10.0.0.101", "is a VIP address"),
            ("10.0.1.10", "is the NAT source address"),
            ("127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.9.9.9", "0.0.0.0/8"),
            ("239.1.1.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("250.1.1.1", "reserved"),
        ] {
            let text = doc(
                "",
                "",
                &format!(
                    "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n\
                     [[vip.backend]]\naddress = \"10.0.2.11\"\n\
                     [[vip.backend]]\naddress = \"{addr}\"\n\
                     [[vip]]\nname = \"api\"\naddress = \"10.0.0.101\"\nport = 80\n"
                ),
            );
            assert_err(&text, &["vip[0].backend[1].address", why]);
        }
        for (key, line) in [
            ("vip[0].address", "127.0.0.5"),
            ("vip[0].address", "0.0.0.0"),
        ] {
            assert_err(
                &doc(
                    "",
                    "",
                    &format!("[[vip]]\nname = \"w\"\naddress = \"{line}\"\nport = 80\n"),
                ),
                &[key],
            );
        }
        assert_err(
            &doc("", "", "").replace("10.0.1.10", "127.0.0.1"),
            &["nat.source", "loopback"],
        );
    }

    #[test]
    fn full_file_parses_every_value() {
        let c = Config::from_toml_str(FULL).unwrap();
        let web_check = HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(5000),
            timeout: Duration::from_millis(500),
            rise: 3,
            fall: 4,
            jitter_pct: 20,
            initial_up: true,
            port: None,
        };
        assert_eq!(
            c,
            Config {
                dataplane: Dataplane {
                    interfaces: vec!["eth0".into(), "eth1".into()],
                    xdp_mode: XdpMode::Generic,
                    ring_size: 251,
                    max_flows: 4096,
                    max_vips: 8,
                    pin_path: "/sys/fs/bpf/lb-test".into(),
                    mss_clamp: MssClamp::Fixed(1400),
                    pmtu_floor: 1200,
                },
                nat: Nat {
                    source: Ipv4Addr::new(10, 0, 1, 10),
                    port_min: 30000,
                    port_max: 30999,
                    reserve_ports: false,
                    port_hold_secs: 60,
                },
                flows: Flows {
                    idle_timeout_secs: 600,
                    closed_timeout_secs: 5,
                },
                control: Control {
                    socket: "/run/lb-test/lbd.sock".into(),
                },
                metrics: Metrics {
                    listen: Some("10.0.1.10:9100".parse().unwrap()),
                },
                vrrp: None,
                vips: vec![
                    Vip {
                        name: "web".into(),
                        address: Ipv4Addr::new(10, 0, 0, 100),
                        port: 80,
                        protocol: Protocol::Tcp,
                        on_empty: OnEmpty::Drop,
                        hash: VipHash::Source,
                        health: web_check.clone(),
                        backends: vec![
                            BackendConfig {
                                address: Ipv4Addr::new(10, 0, 2, 11),
                                port: 8080,
                                weight: 3,
                                health: web_check.clone(),
                            },
                            BackendConfig {
                                address: Ipv4Addr::new(10, 0, 2, 12),
                                port: 80,
                                weight: 1,
                                health: HealthCheck {
                                    kind: CheckKind::Http {
                                        path: "/healthz".into(),
                                        host: Some("web.example".into()),
                                        expect_status: vec![200, 204],
                                        expect_body: Some("ok".into()),
                                    },
                                    port: Some(9000),
                                    ..web_check.clone()
                                },
                            },
                        ],
                    },
                    Vip {
                        name: "api.v2".into(),
                        address: Ipv4Addr::new(10, 0, 0, 101),
                        port: 443,
                        protocol: Protocol::Tcp,
                        on_empty: OnEmpty::Reset,
                        hash: VipHash::FiveTuple,
                        health: default_health(),
                        backends: vec![],
                    },
                ],
            }
        );
        assert_eq!(c.validate().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = minimal();
        assert_eq!(
            c,
            Config {
                dataplane: Dataplane {
                    interfaces: vec!["eth0".into()],
                    xdp_mode: XdpMode::Native,
                    ring_size: 65537,
                    max_flows: 262_144,
                    max_vips: 16,
                    pin_path: "/sys/fs/bpf/lb".into(),
                    mss_clamp: MssClamp::Auto,
                    pmtu_floor: 1280,
                },
                nat: Nat {
                    source: Ipv4Addr::new(10, 0, 1, 10),
                    port_min: 20000,
                    port_max: 59999,
                    reserve_ports: true,
                    port_hold_secs: 120,
                },
                flows: Flows {
                    idle_timeout_secs: 300,
                    closed_timeout_secs: 10,
                },
                control: Control {
                    socket: "/run/lb/lbd.sock".into(),
                },
                metrics: Metrics {
                    listen: Some("127.0.0.1:9650".parse().unwrap()),
                },
                vrrp: None,
                vips: vec![],
            }
        );
        assert_eq!(c.flows, Flows::default());
        assert_eq!(c.control, Control::default());
        assert_eq!(c.metrics, Metrics::default());
        assert_eq!(c.nat.port_count(), 40000);
    }

    #[test]
    fn example_file_is_valid() {
        let c = Config::from_toml_str(include_str!("../../examples/lb.toml"))
            .unwrap_or_else(|e| panic!("examples/lb.toml: {e}"));
        assert_eq!(c.dataplane.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.nat.source, Ipv4Addr::new(10, 0, 2, 10));
        assert_eq!(c.vips.len(), 1);
        let v = c.vrrp.as_ref().expect("the example shows [vrrp]");
        assert_eq!((v.router_id, v.priority), (51, 100));
        assert_eq!(
            c.vrrp_placements(),
            vec![
                (Ipv4Addr::new(10, 0, 0, 100), "eth0".to_owned()),
                (Ipv4Addr::new(10, 0, 2, 10), "eth1".to_owned())
            ]
        );
        let web = &c.vips[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.address, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(web.port, 80);
        let backends: Vec<_> = web
            .backends
            .iter()
            .map(|b| (b.address, web.backend_port(b), b.weight))
            .collect();
        assert_eq!(
            backends,
            [11, 12, 13].map(|h| (Ipv4Addr::new(10, 0, 2, h), 8080, 1))
        );
        // The example shows every default.
        let m = minimal();
        assert_eq!(c.dataplane.xdp_mode, m.dataplane.xdp_mode);
        assert_eq!(c.dataplane.ring_size, m.dataplane.ring_size);
        assert_eq!(c.dataplane.max_flows, m.dataplane.max_flows);
        assert_eq!(c.dataplane.max_vips, m.dataplane.max_vips);
        assert_eq!(c.dataplane.pin_path, m.dataplane.pin_path);
        assert_eq!(
            (c.nat.port_min, c.nat.port_max, c.nat.reserve_ports),
            (m.nat.port_min, m.nat.port_max, m.nat.reserve_ports)
        );
        assert_eq!(c.nat.port_hold_secs, m.nat.port_hold_secs);
        assert_eq!(c.flows, m.flows);
        assert_eq!(c.control, m.control);
        assert_eq!(c.metrics, m.metrics);
        assert_eq!(web.on_empty, OnEmpty::Reset);
        assert_eq!(web.health, default_health());
        // A TCP default, and one backend overriding it with an HTTP check.
        let checks: Vec<_> = web.backends.iter().map(|b| &b.health).collect();
        assert_eq!(checks[0], &default_health());
        assert_eq!(checks[2], &default_health());
        assert_eq!(
            checks[1],
            &HealthCheck {
                kind: CheckKind::Http {
                    path: "/healthz".into(),
                    host: None,
                    expect_status: vec![200],
                    expect_body: Some("ok".into()),
                },
                ..default_health()
            }
        );
    }

    #[test]
    fn zero_vips_accepted() {
        assert!(minimal().vips.is_empty());
    }

    #[test]
    fn vip_without_backends_accepted() {
        let s = doc(
            "",
            "",
            "[[vip]]\nname = \"empty\"\naddress = \"10.0.0.100\"\nport = 80\n",
        );
        let c = Config::from_toml_str(&s).unwrap();
        assert!(c.vips[0].backends.is_empty());
    }

    // --- required keys ---

    #[test]
    fn required_keys() {
        assert_err(
            "[nat]\nsource = \"10.0.1.10\"\n",
            &["dataplane: is required"],
        );
        assert_err(
            "[dataplane]\ninterfaces = [\"eth0\"]\n",
            &["nat: is required"],
        );
        assert_err(
            "[dataplane]\n[nat]\nsource = \"10.0.1.10\"\n",
            &["dataplane.interfaces: is required"],
        );
        assert_err(
            "[dataplane]\ninterfaces = [\"eth0\"]\n[nat]\n",
            &["nat.source: is required"],
        );
        let vip = |body: &str| doc("", "", &format!("[[vip]]\n{body}\n"));
        assert_err(
            &vip("address = \"10.0.0.1\"\nport = 80"),
            &["vip[0].name: is required"],
        );
        assert_err(
            &vip("name = \"a\"\nport = 80"),
            &["vip[0].address: is required"],
        );
        assert_err(
            &vip("name = \"a\"\naddress = \"10.0.0.1\""),
            &["vip[0].port: is required"],
        );
        assert_err(
            &one_vip("", "").replace("address = \"10.0.2.11\"", ""),
            &["vip[0].backend[0].address: is required"],
        );
    }

    // --- syntax, unknown keys, types ---

    #[test]
    fn unknown_key_rejected() {
        assert_err(
            &doc("pin_paht = \"/sys/fs/bpf/x\"", "", ""),
            &["unknown field `pin_paht`", "line 3", "in [dataplane]"],
        );
        assert_err(
            &one_vip("", "wieght = 2"),
            &["unknown field `wieght`", "in [vip[0].backend[0]]"],
        );
        assert_err(
            &doc("", "", "[metrics]\nport = 1\n"),
            &["unknown field `port`", "in [metrics]"],
        );
        assert_err(
            &doc("", "", "[metric]\nlisten = \"off\"\n"),
            &["unknown field `metric`"],
        );
        assert_err(
            &doc("", "", "[[vips]]\nname = \"x\"\n"),
            &["unknown field `vips`"],
        );
    }

    #[test]
    fn bad_syntax_names_line() {
        let e = err("[dataplane]\ninterfaces = [\"eth0\"]\n\n[nat\nsource = \"10.0.1.10\"\n");
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }

    #[test]
    fn wrong_type_names_line() {
        assert_err(
            &doc(
                "",
                "",
                "[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = \"80\"\n",
            ),
            &["line 10", "in [vip[0]]", "invalid type"],
        );
        assert_err(
            &doc("", "reserve_ports = \"yes\"", ""),
            &["in [nat]", "invalid type"],
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, doc("ring_size = 100", "", "")).unwrap();
        let e = Config::from_file(&path).unwrap_err();
        assert_eq!(e.key(), Some("dataplane.ring_size"));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}: dataplane.ring_size:", path.display())),
            "{msg}"
        );

        let missing = dir.join("missing.toml");
        let e = Config::from_file(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("missing.toml"), "{e}");

        std::fs::write(&path, doc("", "", "")).unwrap();
        assert_eq!(Config::from_file(&path).unwrap(), minimal());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // --- [dataplane] ---

    #[test]
    fn interfaces_rules() {
        let with = |list: &str| {
            format!("[dataplane]\ninterfaces = {list}\n[nat]\nsource = \"10.0.1.10\"\n")
        };
        assert_err(
            &with("[]"),
            &["dataplane.interfaces: must list at least one"],
        );
        assert_err(
            &with("[\"eth0\", \"\"]"),
            &["dataplane.interfaces[1]: \"\" is not a valid interface name"],
        );
        assert_err(
            &with("[\"abcdefghijklmnop\"]"),
            &["dataplane.interfaces[0]:", "16 bytes long"],
        );
        assert_err(&with("[\"eth/0\"]"), &["dataplane.interfaces[0]:", "'/'"]);
        assert_err(&with("[\"eth 0\"]"), &["dataplane.interfaces[0]:", "' '"]);
        assert_err(
            &with("[\"..\"]"),
            &["dataplane.interfaces[0]:", "not allowed"],
        );
        assert_err(
            &with("[\".\"]"),
            &["dataplane.interfaces[0]:", "not allowed"],
        );
        assert_err(
            &with("[\"eth0\", \"eth1\", \"eth0\"]"),
            &["dataplane.interfaces[2]: \"eth0\" is already listed as dataplane.interfaces[0]"],
        );
        // 15 bytes is fine.
        Config::from_toml_str(&with("[\"abcdefghijklmno\"]")).unwrap();
    }

    #[test]
    fn xdp_mode_rules() {
        assert_err(
            &doc("xdp_mode = \"skb\"", "", ""),
            &["dataplane.xdp_mode: \"skb\" is not a mode"],
        );
    }

    #[test]
    fn ring_size_rules() {
        assert_err(
            &doc("ring_size = 65536", "", ""),
            &["dataplane.ring_size: 65536 is not a prime"],
        );
        assert_err(
            &doc("ring_size = 2", "", ""),
            &["dataplane.ring_size: 2 is out of range", "3..=655373"],
        );
        assert_err(
            &doc("ring_size = 655377", "", ""),
            &["dataplane.ring_size: 655377 is out of range"],
        );
        assert_err(
            &doc("ring_size = -1", "", ""),
            &["dataplane.ring_size: -1 is out of range"],
        );
        let c = Config::from_toml_str(&doc("ring_size = 655373", "", "")).unwrap();
        assert_eq!(c.dataplane.ring_size, 655_373);
        let c = Config::from_toml_str(&doc("ring_size = 3", "", "")).unwrap();
        assert_eq!(c.dataplane.ring_size, 3);
    }

    #[test]
    fn ring_size_must_exceed_backends_of_every_vip() {
        let backends = |n: u8| -> String {
            (0..n)
                .map(|h| format!("[[vip.backend]]\naddress = \"10.0.2.{}\"\n", h + 1))
                .collect()
        };
        let vip = |n: u8| {
            doc(
                "ring_size = 5",
                "",
                &format!(
                    "[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 80\n\
                     [[vip]]\nname = \"b\"\naddress = \"10.0.0.2\"\nport = 80\n{}",
                    backends(n)
                ),
            )
        };
        Config::from_toml_str(&vip(4)).unwrap();
        assert_err(
            &vip(5),
            &["dataplane.ring_size: 5 is not greater than the 5 backends of vip[1]"],
        );
    }

    #[test]
    fn max_flows_rules() {
        assert_err(
            &doc("max_flows = 1023", "", ""),
            &[
                "dataplane.max_flows: 1023 is out of range",
                "1024..=16777216",
            ],
        );
        assert_err(
            &doc("max_flows = 16777217", "", ""),
            &["dataplane.max_flows: 16777217 is out of range"],
        );
        Config::from_toml_str(&doc("max_flows = 1024", "", "")).unwrap();
        Config::from_toml_str(&doc("max_flows = 16777216", "", "")).unwrap();
    }

    #[test]
    fn max_vips_rules() {
        assert_err(
            &doc("max_vips = 0", "", ""),
            &["dataplane.max_vips: 0 is out of range", "1..=64"],
        );
        assert_err(
            &doc("max_vips = 65", "", ""),
            &["dataplane.max_vips: 65 is out of range"],
        );
        Config::from_toml_str(&doc("max_vips = 64", "", "")).unwrap();
    }

    #[test]
    fn vip_count_limited_by_max_vips() {
        let vips: String = (1..=3)
            .map(|i| format!("[[vip]]\nname = \"v{i}\"\naddress = \"10.0.0.{i}\"\nport = 80\n"))
            .collect();
        Config::from_toml_str(&doc("max_vips = 3", "", &vips)).unwrap();
        assert_err(
            &doc("max_vips = 2", "", &vips),
            &["vip: 3 VIPs are configured but dataplane.max_vips is 2"],
        );
    }

    #[test]
    fn pin_path_rules() {
        assert_err(
            &doc("pin_path = \"lb\"", "", ""),
            &["dataplane.pin_path: \"lb\" is not an absolute path"],
        );
        assert_err(
            &doc("pin_path = \"/tmp/lb\"", "", ""),
            &["dataplane.pin_path: \"/tmp/lb\" is not a directory under /sys/fs/bpf"],
        );
        assert_err(
            &doc("pin_path = \"/sys/fs/bpf\"", "", ""),
            &["dataplane.pin_path:", "under /sys/fs/bpf"],
        );
        assert_err(
            &doc("pin_path = \"/sys/fs/bpfx/lb\"", "", ""),
            &["dataplane.pin_path:", "under /sys/fs/bpf"],
        );
        assert_err(
            &doc("pin_path = \"/sys/fs/bpf/../lb\"", "", ""),
            &["dataplane.pin_path:", "\"..\""],
        );
        let c = Config::from_toml_str(&doc("pin_path = \"/sys/fs/bpf/a/b\"", "", "")).unwrap();
        assert_eq!(c.dataplane.pin_path, Path::new("/sys/fs/bpf/a/b"));
    }

    // --- [nat] ---

    #[test]
    fn nat_source_rules() {
        let with = |addr: &str| {
            format!("[dataplane]\ninterfaces = [\"eth0\"]\n[nat]\nsource = \"{addr}\"\n")
        };
        assert_err(
            &with("10.0.1.300"),
            &["nat.source: \"10.0.1.300\" is not an IPv4 address"],
        );
        assert_err(
            &with("::1"),
            &["nat.source: \"::1\" is not an IPv4 address"],
        );
        assert_err(
            &with("0.0.0.0"),
            &["nat.source: 0.0.0.0 is the unspecified address"],
        );
        assert_err(
            &with("224.0.0.1"),
            &["nat.source: 224.0.0.1 is a multicast address"],
        );
        assert_err(
            &with("255.255.255.255"),
            &["nat.source: 255.255.255.255 is the broadcast address"],
        );
    }

    #[test]
    fn nat_ports_rules() {
        let ports = |p: &str| doc("", &format!("ports = \"{p}\""), "");
        assert_err(
            &ports("20000"),
            &["nat.ports: \"20000\" is not a port range"],
        );
        assert_err(&ports("a-b"), &["nat.ports:", "\"a\" is not a port number"]);
        assert_err(
            &ports("1000-2000"),
            &["nat.ports: \"1000-2000\": MIN must be at least 1024"],
        );
        assert_err(
            &ports("2000-70000"),
            &["nat.ports:", "MAX must be at most 65535"],
        );
        assert_err(
            &ports("3000-2000"),
            &["nat.ports:", "MIN is greater than MAX"],
        );
        assert_err(
            &ports("2000-2062"),
            &["nat.ports:", "63 ports, at least 64"],
        );
        let c = Config::from_toml_str(&ports("1024-1087")).unwrap();
        assert_eq!((c.nat.port_min, c.nat.port_max), (1024, 1087));
        let c = Config::from_toml_str(&ports(" 65472 - 65535 ")).unwrap();
        assert_eq!((c.nat.port_min, c.nat.port_max), (65472, 65535));
        assert_err(&doc("", "ports = 20000", ""), &["in [nat]", "invalid type"]);
    }

    #[test]
    fn nat_port_hold_rules() {
        assert_err(
            &doc("", "port_hold_secs = -1", ""),
            &["nat.port_hold_secs: -1 is out of range (allowed: 0..="],
        );
        let c = Config::from_toml_str(&doc("", "port_hold_secs = 0", "")).unwrap();
        assert_eq!(c.nat.port_hold_secs, 0);
        assert_err(
            &doc("", "port_hold_secs = 4294967296", ""),
            &["nat.port_hold_secs: 4294967296 is out of range"],
        );
    }

    #[test]
    fn nat_source_equal_to_vip_address() {
        let s = |port: u16| {
            doc(
                "",
                "ports = \"20000-29999\"",
                &format!("[[vip]]\nname = \"a\"\naddress = \"10.0.1.10\"\nport = {port}\n"),
            )
        };
        assert_err(
            &s(20000),
            &[
                "vip[0].port: 20000 is inside the NAT port range",
                "mistaken",
            ],
        );
        assert_err(&s(29999), &["vip[0].port: 29999 is inside"]);
        Config::from_toml_str(&s(19999)).unwrap();
        Config::from_toml_str(&s(30000)).unwrap();
        Config::from_toml_str(&s(80)).unwrap();
    }

    // --- [flows], [control] ---

    #[test]
    fn flows_rules() {
        let flows = |body: &str| doc("", "", &format!("[flows]\n{body}\n"));
        assert_err(
            &flows("idle_timeout_secs = 0"),
            &["flows.idle_timeout_secs: 0 is out of range (allowed: 1..=4294967295)"],
        );
        assert_err(
            &flows("closed_timeout_secs = 0"),
            &["flows.closed_timeout_secs: 0 is out of range"],
        );
        assert_err(
            &flows("idle_timeout_secs = 5"),
            &["flows.closed_timeout_secs: 10 is greater than flows.idle_timeout_secs (5)"],
        );
        let c = Config::from_toml_str(&flows("idle_timeout_secs = 7\nclosed_timeout_secs = 7"))
            .unwrap();
        assert_eq!(c.flows.closed_timeout_secs, 7);
    }

    #[test]
    fn control_socket_rules() {
        let socket = |p: &str| doc("", "", &format!("[control]\nsocket = \"{p}\"\n"));
        assert_err(
            &socket("lbd.sock"),
            &["control.socket: \"lbd.sock\" is not an absolute path"],
        );
        assert_err(
            &socket("/"),
            &["control.socket: \"/\" does not name a file"],
        );
        let long = format!("/{}", "x".repeat(107));
        assert_err(&socket(&long), &["control.socket:", "108 bytes long"]);
        Config::from_toml_str(&socket(&long[..107])).unwrap();
    }

    // --- [[vip]] ---

    #[test]
    fn vip_name_rules() {
        let named = |n: &str| {
            doc(
                "",
                "",
                &format!("[[vip]]\nname = \"{n}\"\naddress = \"10.0.0.1\"\nport = 80\n"),
            )
        };
        assert_err(
            &named(""),
            &["vip[0].name: \"\" must be 1 to 32 characters"],
        );
        assert_err(&named(&"a".repeat(33)), &["vip[0].name:", "1 to 32"]);
        assert_err(&named("we b"), &["vip[0].name: \"we b\" contains ' '"]);
        assert_err(&named("web/1"), &["vip[0].name:", "'/'"]);
        Config::from_toml_str(&named(&"a".repeat(32))).unwrap();
        Config::from_toml_str(&named("A-z_0.9")).unwrap();
    }

    #[test]
    fn vip_names_unique() {
        let s = doc(
            "",
            "",
            "[[vip]]\nname = \"web\"\naddress = \"10.0.0.1\"\nport = 80\n\
             [[vip]]\nname = \"web\"\naddress = \"10.0.0.2\"\nport = 80\n",
        );
        assert_err(&s, &["vip[1].name: \"web\" is already the name of vip[0]"]);
    }

    #[test]
    fn vip_address_rules() {
        assert_err(
            &one_vip("", "").replace("10.0.0.100", "10.0.0.300"),
            &["vip[0].address: \"10.0.0.300\" is not an IPv4 address"],
        );
        assert_err(
            &one_vip("", "").replace("10.0.0.100", "0.0.0.0"),
            &["vip[0].address: 0.0.0.0 is the unspecified address"],
        );
        assert_err(
            &one_vip("", "").replace("10.0.0.100", "239.1.1.1"),
            &["vip[0].address: 239.1.1.1 is a multicast address"],
        );
        assert_err(
            &one_vip("", "").replace("10.0.0.100", "255.255.255.255"),
            &["vip[0].address: 255.255.255.255 is the broadcast address"],
        );
    }

    #[test]
    fn vip_port_rules() {
        let port = |p: &str| one_vip("", "").replace("port = 80", &format!("port = {p}"));
        assert_err(&port("0"), &["vip[0].port: 0 is out of range", "1..=65535"]);
        assert_err(&port("65536"), &["vip[0].port: 65536 is out of range"]);
        Config::from_toml_str(&port("65535")).unwrap();
    }

    #[test]
    fn vip_protocol_rules() {
        assert_err(
            &one_vip("protocol = \"udp\"", ""),
            &["vip[0].protocol: \"udp\": only tcp is supported"],
        );
        let c = Config::from_toml_str(&one_vip("protocol = \"tcp\"", "")).unwrap();
        assert_eq!(c.vips[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn vip_services_unique() {
        let s = doc(
            "",
            "",
            "[[vip]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 80\n\
             [[vip]]\nname = \"b\"\naddress = \"10.0.0.1\"\nport = 81\n\
             [[vip]]\nname = \"c\"\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n",
        );
        assert_err(
            &s,
            &["vip[2]: 10.0.0.1:80/tcp is already served by vip[0] (\"a\")"],
        );
    }

    // --- [[vip.backend]] ---

    #[test]
    fn backend_address_rules() {
        assert_err(
            &one_vip("", "").replace("10.0.2.11", "10.0.0.300"),
            &["vip[0].backend[0].address: \"10.0.0.300\" is not an IPv4 address"],
        );
        assert_err(
            &one_vip("", "").replace("10.0.2.11", "0.0.0.0"),
            &["vip[0].backend[0].address: 0.0.0.0 is the unspecified address"],
        );
        assert_err(
            &one_vip("", "").replace("10.0.2.11", "224.0.0.5"),
            &["vip[0].backend[0].address: 224.0.0.5 is a multicast address"],
        );
    }

    #[test]
    fn backend_port_rules() {
        assert_err(
            &one_vip("", "port = 0"),
            &["vip[0].backend[0].port: 0 is out of range"],
        );
        assert_err(
            &one_vip("", "port = 65536"),
            &["vip[0].backend[0].port: 65536 is out of range"],
        );
        let c = Config::from_toml_str(&one_vip("", "port = 8080")).unwrap();
        assert_eq!(c.vips[0].backends[0].port, 8080);
        let c = Config::from_toml_str(&one_vip("", "")).unwrap();
        assert_eq!(c.vips[0].backends[0].port, 80);
    }

    #[test]
    fn backend_weight_rules() {
        assert_err(
            &one_vip("", "weight = 0"),
            &["vip[0].backend[0].weight: 0 is out of range", "1..=65535"],
        );
        assert_err(
            &one_vip("", "weight = 65536"),
            &["vip[0].backend[0].weight: 65536 is out of range"],
        );
        let c = Config::from_toml_str(&one_vip("", "weight = 65535")).unwrap();
        assert_eq!(c.vips[0].backends[0].weight, 65535);
    }

    #[test]
    fn backends_unique_within_vip() {
        let s = one_vip("", "port = 80")
            + "[[vip.backend]]\naddress = \"10.0.2.12\"\n\
               [[vip.backend]]\naddress = \"10.0.2.11\"\n";
        assert_err(
            &s,
            &["vip[0].backend[2]: 10.0.2.11:80 is already listed as vip[0].backend[0]"],
        );
        // Same address, other port: fine.
        let s = one_vip("", "") + "[[vip.backend]]\naddress = \"10.0.2.11\"\nport = 81\n";
        Config::from_toml_str(&s).unwrap();
        // The same backend under two VIPs: fine.
        let s = one_vip("", "")
            + "[[vip]]\nname = \"b\"\naddress = \"10.0.0.101\"\nport = 80\n\
               [[vip.backend]]\naddress = \"10.0.2.11\"\n";
        Config::from_toml_str(&s).unwrap();
    }

    #[test]
    fn total_backends_limited() {
        let mut c = minimal();
        let per_vip = 1000u32;
        for v in 0..5u32 {
            let backends = (0..per_vip)
                .map(|b| BackendConfig::new(Ipv4Addr::from(0x0a01_0000 + b + 1), 8080, 1))
                .collect();
            c.vips.push(Vip {
                backends,
                ..Vip::new(format!("v{v}"), Ipv4Addr::from(0x0a00_0000 + v + 1), 80)
            });
        }
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("vip"));
        assert!(e.to_string().contains("5000 backends in total"), "{e}");
        c.vips[4].backends.truncate(96);
        c.validate().unwrap();
    }

    // --- [metrics] ---

    #[test]
    fn metrics_listen_rules() {
        let listen = |v: &str| doc("", "", &format!("[metrics]\nlisten = \"{v}\"\n"));
        let c = Config::from_toml_str(&listen("off")).unwrap();
        assert_eq!(c.metrics.listen, None);
        let c = Config::from_toml_str(&listen("0.0.0.0:9100")).unwrap();
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9100".parse().unwrap()));
        let c = Config::from_toml_str(&listen("[::1]:9650")).unwrap();
        assert_eq!(c.metrics.listen, Some("[::1]:9650".parse().unwrap()));
        let c = Config::from_toml_str(&doc("", "", "[metrics]\n")).unwrap();
        assert_eq!(c.metrics, Metrics::default());
        assert_err(
            &listen("localhost:9650"),
            &["metrics.listen: \"localhost:9650\" is neither"],
        );
        assert_err(&listen("127.0.0.1"), &["metrics.listen: \"127.0.0.1\""]);
        assert_err(&listen("Off"), &["metrics.listen:"]);
        assert_err(&listen("127.0.0.1:0"), &["metrics.listen:", "port 0"]);
        assert_err(
            &doc("", "", "[metrics]\nlisten = 9650\n"),
            &["in [metrics]", "invalid type"],
        );

        let mut c = minimal();
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(c.validate().unwrap_err().key(), Some("metrics.listen"));
        c.metrics.listen = None;
        c.validate().unwrap();
    }

    // --- on_empty ---

    #[test]
    fn on_empty_rules() {
        let c = Config::from_toml_str(&one_vip("", "")).unwrap();
        assert_eq!(c.vips[0].on_empty, OnEmpty::Reset);
        let c = Config::from_toml_str(&one_vip("on_empty = \"drop\"", "")).unwrap();
        assert_eq!(c.vips[0].on_empty, OnEmpty::Drop);
        assert_eq!(c.vips[0].on_empty.to_string(), "drop");
        let c = Config::from_toml_str(&one_vip("on_empty = \"reset\"", "")).unwrap();
        assert_eq!(c.vips[0].on_empty, OnEmpty::Reset);
        assert_err(
            &one_vip("on_empty = \"rst\"", ""),
            &["vip[0].on_empty: \"rst\" is not an action; use \"reset\" or \"drop\""],
        );
    }

    // --- hash, mss_clamp, pmtu_floor ---

    #[test]
    fn hash_rules() {
        let c = Config::from_toml_str(&one_vip("", "")).unwrap();
        assert_eq!(c.vips[0].hash, VipHash::FiveTuple);
        let c = Config::from_toml_str(&one_vip("hash = \"source\"", "")).unwrap();
        assert_eq!(c.vips[0].hash, VipHash::Source);
        assert_eq!(c.vips[0].hash.to_string(), "source");
        let c = Config::from_toml_str(&one_vip("hash = \"5-tuple\"", "")).unwrap();
        assert_eq!(c.vips[0].hash, VipHash::FiveTuple);
        assert_err(
            &one_vip("hash = \"src\"", ""),
            &["vip[0].hash: \"src\" is not a hash; use \"5-tuple\" or \"source\""],
        );
    }

    #[test]
    fn mss_clamp_rules() {
        let clamp = |line: &str| {
            Config::from_toml_str(&doc(line, "", ""))
                .map(|c| c.dataplane.mss_clamp)
                .map_err(|e| e.to_string())
        };
        assert_eq!(clamp(""), Ok(MssClamp::Auto));
        assert_eq!(clamp("mss_clamp = \"auto\""), Ok(MssClamp::Auto));
        assert_eq!(clamp("mss_clamp = \"off\""), Ok(MssClamp::Off));
        assert_eq!(clamp("mss_clamp = 1360"), Ok(MssClamp::Fixed(1360)));
        assert_eq!(clamp("mss_clamp = 88"), Ok(MssClamp::Fixed(88)));
        assert_eq!(clamp("mss_clamp = 65495"), Ok(MssClamp::Fixed(65495)));
        assert_eq!(MssClamp::Auto.kernel_value(), lb_ebpf::MSS_CLAMP_AUTO);
        assert_eq!(MssClamp::Off.kernel_value(), lb_ebpf::MSS_CLAMP_OFF);
        assert_eq!(MssClamp::Fixed(1360).kernel_value(), 1360);
        assert_err(
            &doc("mss_clamp = 87", "", ""),
            &["dataplane.mss_clamp: 87 is out of range (allowed: 88..=65495)"],
        );
        assert_err(
            &doc("mss_clamp = 65496", "", ""),
            &["dataplane.mss_clamp: 65496 is out of range"],
        );
        assert_err(
            &doc("mss_clamp = \"on\"", "", ""),
            &["dataplane.mss_clamp: \"on\" is not a clamp; use \"auto\", \"off\" or an MSS from 88 to 65495"],
        );
        assert_err(
            &doc("mss_clamp = true", "", ""),
            &["dataplane.mss_clamp: true is not a clamp"],
        );
        let mut c = minimal();
        c.dataplane.mss_clamp = MssClamp::Fixed(10);
        assert_eq!(c.validate().unwrap_err().key(), Some("dataplane.mss_clamp"));
    }

    #[test]
    fn pmtu_floor_rules() {
        let floor = |line: &str| {
            Config::from_toml_str(&doc(line, "", ""))
                .map(|c| c.dataplane.pmtu_floor)
                .map_err(|e| e.to_string())
        };
        assert_eq!(floor(""), Ok(1280));
        assert_eq!(floor("pmtu_floor = 68"), Ok(68));
        assert_eq!(floor("pmtu_floor = 65535"), Ok(65535));
        assert_err(
            &doc("pmtu_floor = 67", "", ""),
            &["dataplane.pmtu_floor: 67 is out of range (allowed: 68..=65535)"],
        );
        let mut c = minimal();
        c.dataplane.pmtu_floor = 0;
        assert_eq!(
            c.validate().unwrap_err().key(),
            Some("dataplane.pmtu_floor")
        );
    }

    // --- health checks ---

    /// One VIP with `[vip.health]` holding `vip_health` (no table if empty)
    /// and one backend whose `health` inline table holds `backend_health`
    /// (none if empty).
    fn with_health(vip_health: &str, backend_health: &str) -> String {
        let vip = if vip_health.is_empty() {
            String::new()
        } else {
            format!("[vip.health]\n{vip_health}\n")
        };
        let backend = if backend_health.is_empty() {
            String::new()
        } else {
            format!("health = {{ {backend_health} }}\n")
        };
        doc(
            "",
            "",
            &format!(
                "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n{vip}\
                 [[vip.backend]]\naddress = \"10.0.2.11\"\n{backend}"
            ),
        )
    }

    /// The VIP's check and its backend's.
    fn checks(vip_health: &str, backend_health: &str) -> (HealthCheck, HealthCheck) {
        let s = with_health(vip_health, backend_health);
        let c = Config::from_toml_str(&s).unwrap_or_else(|e| panic!("{e}\n--- input ---\n{s}"));
        (
            c.vips[0].health.clone(),
            c.vips[0].backends[0].health.clone(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_health_values() {
        let d = default_health();
        assert_eq!(
            d,
            HealthCheck {
                kind: CheckKind::Tcp,
                interval: ms(2000),
                timeout: ms(1000),
                rise: 2,
                fall: 3,
                jitter_pct: 10,
                initial_up: false,
                port: None,
            }
        );
        assert_eq!(HealthCheck::default(), d);
        assert_eq!(d.check_port(8080), 8080);
        assert_eq!(
            HealthCheck {
                port: Some(9000),
                ..d.clone()
            }
            .check_port(8080),
            9000
        );
        d.check("x").unwrap();

        let b = BackendConfig::new(Ipv4Addr::new(10, 0, 2, 11), 8080, 2);
        assert_eq!((b.port, b.weight, &b.health), (8080, 2, &d));
        let v = Vip::new("web", Ipv4Addr::new(10, 0, 0, 100), 80);
        assert_eq!(v.on_empty, OnEmpty::Reset);
        assert_eq!(v.protocol, Protocol::Tcp);
        assert_eq!(v.health, d);
        assert!(v.backends.is_empty());
    }

    #[test]
    fn no_health_table_means_the_default_tcp_check() {
        let (vip, backend) = checks("", "");
        assert_eq!(vip, default_health());
        assert_eq!(backend, default_health());
        // An empty table is the same.
        let s = with_health("", "").replace("port = 80\n", "port = 80\n[vip.health]\n");
        let c = Config::from_toml_str(&s).unwrap();
        assert_eq!(c.vips[0].backends[0].health, default_health());
    }

    #[test]
    fn health_table_sets_every_general_key() {
        let (vip, backend) = checks(
            "kind = \"tcp\"\ninterval_ms = 100\ntimeout_ms = 10\nrise = 100\nfall = 1\n\
             jitter_pct = 50\ninitial = \"up\"\nport = 65535",
            "",
        );
        let expected = HealthCheck {
            kind: CheckKind::Tcp,
            interval: ms(100),
            timeout: ms(10),
            rise: 100,
            fall: 1,
            jitter_pct: 50,
            initial_up: true,
            port: Some(65535),
        };
        assert_eq!(vip, expected);
        assert_eq!(backend, expected);
        let (vip, _) = checks(
            "interval_ms = 3600000\ntimeout_ms = 3600000\njitter_pct = 0",
            "",
        );
        assert_eq!(
            (vip.interval, vip.timeout, vip.jitter_pct),
            (ms(3_600_000), ms(3_600_000), 0)
        );
        let (vip, _) = checks("initial = \"down\"", "");
        assert!(!vip.initial_up);
    }

    #[test]
    fn default_timeout_is_capped_by_the_interval() {
        let (vip, _) = checks("interval_ms = 500", "");
        assert_eq!((vip.interval, vip.timeout), (ms(500), ms(500)));
        let (vip, _) = checks("interval_ms = 5000", "");
        assert_eq!(vip.timeout, ms(1000));
        // An inherited interval caps the backend's default timeout too.
        let (_, b) = checks("interval_ms = 300", "rise = 1");
        assert_eq!((b.interval, b.timeout, b.rise), (ms(300), ms(300), 1));
    }

    #[test]
    fn health_ranges() {
        let bad = |vip_health: &str, expected: &str| {
            assert_err(&with_health(vip_health, ""), &[expected]);
        };
        bad(
            "interval_ms = 99",
            "vip[0].health.interval_ms: 99 is out of range (allowed: 100..=3600000)",
        );
        bad(
            "interval_ms = 3600001",
            "vip[0].health.interval_ms: 3600001 is out of range",
        );
        bad(
            "timeout_ms = 9",
            "vip[0].health.timeout_ms: 9 is out of range (allowed: 10..=",
        );
        bad(
            "interval_ms = 1000\ntimeout_ms = 1001",
            "vip[0].health.timeout_ms: 1001 is greater than interval_ms (1000)",
        );
        bad(
            "timeout_ms = 3000",
            "vip[0].health.timeout_ms: 3000 is greater than interval_ms (2000, the default)",
        );
        bad(
            "rise = 0",
            "vip[0].health.rise: 0 is out of range (allowed: 1..=100)",
        );
        bad("rise = 101", "vip[0].health.rise: 101 is out of range");
        bad(
            "fall = 0",
            "vip[0].health.fall: 0 is out of range (allowed: 1..=100)",
        );
        bad("fall = -3", "vip[0].health.fall: -3 is out of range");
        bad(
            "jitter_pct = 51",
            "vip[0].health.jitter_pct: 51 is out of range (allowed: 0..=50)",
        );
        bad(
            "jitter_pct = -1",
            "vip[0].health.jitter_pct: -1 is out of range",
        );
        bad(
            "port = 0",
            "vip[0].health.port: 0 is out of range (allowed: 1..=65535)",
        );
        bad("port = 65536", "vip[0].health.port: 65536 is out of range");
        bad(
            "initial = \"maybe\"",
            "vip[0].health.initial: \"maybe\" is not a state; use \"down\" or \"up\"",
        );
        bad(
            "kind = \"icmp\"",
            "vip[0].health.kind: \"icmp\" is not a kind of check; use \"tcp\", \"http\", \"exec\" or \"none\"",
        );
    }

    #[test]
    fn health_parse_errors_name_the_table() {
        assert_err(
            &with_health("intervl_ms = 100", ""),
            &["unknown field `intervl_ms`", "in [vip[0].health]"],
        );
        assert_err(
            &with_health("rise = \"2\"", ""),
            &["in [vip[0].health]", "invalid type"],
        );
        assert_err(
            &with_health("", "rize = 2"),
            &["unknown field `rize`", "in [vip[0].backend[0]]"],
        );
        let s = one_vip("", "") + "[vip.backend.health]\nkind = \"tcp\"\nfal = 3\n";
        assert_err(
            &s,
            &["unknown field `fal`", "in [vip[0].backend[0].health]"],
        );
        // The sub-table form works like the inline one.
        let s = one_vip("", "") + "[vip.backend.health]\nkind = \"none\"\n";
        let c = Config::from_toml_str(&s).unwrap();
        assert_eq!(c.vips[0].backends[0].health.kind, CheckKind::None);
    }

    #[test]
    fn keys_of_another_kind_are_errors() {
        let cases = [
            ("path = \"/\"", "vip[0].health.path: is only used when kind is \"http\", and the kind here is \"tcp\""),
            ("kind = \"tcp\"\nhost = \"x\"", "vip[0].health.host: is only used when kind is \"http\""),
            ("kind = \"none\"\nexpect_status = [200]", "vip[0].health.expect_status: is only used when kind is \"http\", and the kind here is \"none\""),
            ("kind = \"exec\"\ncommand = [\"/bin/true\"]\nexpect_body = \"ok\"", "vip[0].health.expect_body: is only used when kind is \"http\", and the kind here is \"exec\""),
            ("kind = \"http\"\ncommand = [\"/bin/true\"]", "vip[0].health.command: is only used when kind is \"exec\", and the kind here is \"http\""),
        ];
        for (vip_health, expected) in cases {
            assert_err(&with_health(vip_health, ""), &[expected]);
        }
        // In a backend's table, against the kind it inherits or sets.
        assert_err(
            &with_health("", "path = \"/x\""),
            &["vip[0].backend[0].health.path: is only used when kind is \"http\", and the kind here is \"tcp\""],
        );
        assert_err(
            &with_health("kind = \"http\"", "kind = \"tcp\", path = \"/x\""),
            &["vip[0].backend[0].health.path: is only used when kind is \"http\""],
        );
        assert_err(
            &with_health(
                "kind = \"exec\"\ncommand = [\"/bin/true\"]",
                "kind = \"http\", command = [\"/bin/true\"]",
            ),
            &["vip[0].backend[0].health.command: is only used when kind is \"exec\""],
        );
    }

    #[test]
    fn http_check_keys() {
        let (vip, backend) = checks("kind = \"http\"", "");
        let defaults = CheckKind::Http {
            path: "/".into(),
            host: None,
            expect_status: vec![200],
            expect_body: None,
        };
        assert_eq!(vip.kind, defaults);
        assert_eq!(backend.kind, defaults);
        assert_eq!(vip.kind.name(), "http");

        let (vip, _) = checks(
            "kind = \"http\"\npath = \"/health?x=1&y=%20\"\nhost = \"www.example:8080\"\n\
             expect_status = [200, 301, 599, 100]\nexpect_body = \"UP\"",
            "",
        );
        assert_eq!(
            vip.kind,
            CheckKind::Http {
                path: "/health?x=1&y=%20".into(),
                host: Some("www.example:8080".into()),
                expect_status: vec![200, 301, 599, 100],
                expect_body: Some("UP".into()),
            }
        );

        let bad = |vip_health: &str, expected: &str| {
            assert_err(
                &with_health(&format!("kind = \"http\"\n{vip_health}"), ""),
                &[expected],
            );
        };
        bad(
            "path = \"healthz\"",
            "vip[0].health.path: \"healthz\" must start with '/'",
        );
        bad(
            "path = \"\"",
            "vip[0].health.path: \"\" must start with '/'",
        );
        bad(
            "path = \"/a b\"",
            "vip[0].health.path: \"/a b\" contains ' '",
        );
        bad("path = \"/a\\r\\nX: y\"", "vip[0].health.path:");
        bad("path = \"/é\"", "vip[0].health.path:");
        bad(
            "path = \"/a#b\"",
            "vip[0].health.path: \"/a#b\" contains '#'",
        );
        bad(
            "path = \"/a<b\"",
            "vip[0].health.path: \"/a<b\" is not a valid request target",
        );
        bad(
            "path = \"/a?q=\\\"x\\\"\"",
            "vip[0].health.path: \"/a?q=\\\"x\\\"\" is not a valid request target",
        );
        bad("host = \"\"", "vip[0].health.host: is empty");
        bad("host = \"a b\"", "vip[0].health.host: \"a b\" contains ' '");
        bad("host = \"a\\nb\"", "vip[0].health.host:");
        bad(
            "expect_status = []",
            "vip[0].health.expect_status: must list at least one status code",
        );
        bad(
            "expect_status = [99]",
            "vip[0].health.expect_status[0]: 99 is out of range (allowed: 100..=599)",
        );
        bad(
            "expect_status = [200, 600]",
            "vip[0].health.expect_status[1]: 600 is out of range",
        );
        bad("expect_status = 200", "invalid type");
        bad("expect_body = \"\"", "vip[0].health.expect_body: is empty");
    }

    #[test]
    fn exec_check_keys() {
        let (vip, backend) = checks(
            "kind = \"exec\"\ncommand = [\"/usr/lib/lb/check\", \"{address}\", \"{port}\", \"{vip}\"]",
            "",
        );
        let expected = CheckKind::Exec {
            command: vec![
                "/usr/lib/lb/check".into(),
                "{address}".into(),
                "{port}".into(),
                "{vip}".into(),
            ],
        };
        assert_eq!(vip.kind, expected);
        assert_eq!(backend.kind, expected);

        assert_err(
            &with_health("kind = \"exec\"", ""),
            &["vip[0].health.command: is required when kind is \"exec\""],
        );
        assert_err(
            &with_health("", "kind = \"exec\""),
            &["vip[0].backend[0].health.command: is required when kind is \"exec\""],
        );
        assert_err(
            &with_health("kind = \"exec\"\ncommand = []", ""),
            &["vip[0].health.command: is empty"],
        );
        assert_err(
            &with_health("kind = \"exec\"\ncommand = [\"check.sh\"]", ""),
            &["vip[0].health.command[0]: \"check.sh\" is not an absolute path"],
        );
        assert_err(
            &with_health(
                "kind = \"exec\"\ncommand = [\"/bin/check\", \"a\\u0000b\"]",
                "",
            ),
            &["vip[0].health.command[1]:", "NUL"],
        );
    }

    #[test]
    fn backend_overrides_merge_over_the_vip_check() {
        let vip_http =
            "kind = \"http\"\npath = \"/a\"\nexpect_status = [204]\ninterval_ms = 1000\n\
                        timeout_ms = 300\nrise = 4";
        // Only a general key: the rest, kind-specific keys included, inherited.
        let (vip, b) = checks(vip_http, "rise = 5, port = 9000");
        assert_eq!(b.kind, vip.kind);
        assert_eq!(
            (b.rise, b.port, b.interval, b.timeout),
            (5, Some(9000), ms(1000), ms(300))
        );
        assert_eq!(vip.port, None);

        // A kind-specific key of the same kind: replaced, the others kept.
        let (_, b) = checks(vip_http, "path = \"/b\"");
        assert_eq!(
            b.kind,
            CheckKind::Http {
                path: "/b".into(),
                host: None,
                expect_status: vec![204],
                expect_body: None,
            }
        );
        let (_, b) = checks(vip_http, "kind = \"http\", expect_body = \"ok\"");
        assert_eq!(
            b.kind,
            CheckKind::Http {
                path: "/a".into(),
                host: None,
                expect_status: vec![204],
                expect_body: Some("ok".into()),
            }
        );

        // Another kind: the VIP's http keys are not inherited, timing is.
        let (_, b) = checks(vip_http, "kind = \"tcp\"");
        assert_eq!((b.kind, b.rise, b.interval), (CheckKind::Tcp, 4, ms(1000)));
        let (_, b) = checks(vip_http, "kind = \"none\"");
        assert_eq!(b.kind, CheckKind::None);

        // http over a tcp VIP: http defaults, VIP timing.
        let (_, b) = checks("interval_ms = 700", "kind = \"http\", path = \"/h\"");
        assert_eq!(
            b.kind,
            CheckKind::Http {
                path: "/h".into(),
                host: None,
                expect_status: vec![200],
                expect_body: None,
            }
        );
        assert_eq!((b.interval, b.timeout), (ms(700), ms(700)));

        // exec over an exec VIP inherits the command.
        let (vip, b) = checks(
            "kind = \"exec\"\ncommand = [\"/bin/true\"]",
            "timeout_ms = 50",
        );
        assert_eq!((&b.kind, b.timeout), (&vip.kind, ms(50)));
    }

    #[test]
    fn backend_override_errors_name_the_backend_key() {
        assert_err(
            &with_health("", "rise = 0"),
            &["vip[0].backend[0].health.rise: 0 is out of range"],
        );
        assert_err(
            &with_health("", "initial = \"on\""),
            &["vip[0].backend[0].health.initial: \"on\" is not a state"],
        );
        // The table that made interval and timeout disagree is blamed.
        assert_err(
            &with_health("timeout_ms = 1000", "interval_ms = 500"),
            &["vip[0].backend[0].health.interval_ms: 500 is less than timeout_ms (1000, from vip[0].health.timeout_ms)"],
        );
        assert_err(
            &with_health("interval_ms = 500", "timeout_ms = 600"),
            &["vip[0].backend[0].health.timeout_ms: 600 is greater than interval_ms (500)"],
        );
        // The second backend, in a second VIP.
        let s = one_vip("", "")
            + "[[vip]]\nname = \"b\"\naddress = \"10.0.0.101\"\nport = 80\n\
               [[vip.backend]]\naddress = \"10.0.2.11\"\n\
               [[vip.backend]]\naddress = \"10.0.2.12\"\nhealth = { jitter_pct = 60 }\n";
        assert_err(
            &s,
            &["vip[1].backend[1].health.jitter_pct: 60 is out of range"],
        );
    }

    #[test]
    fn validate_health_built_in_code() {
        let mut c = minimal();
        c.vips.push(Vip {
            backends: vec![BackendConfig::new(Ipv4Addr::new(10, 0, 2, 11), 80, 1)],
            ..Vip::new("web", Ipv4Addr::new(10, 0, 0, 100), 80)
        });
        c.validate().unwrap();

        let set = |f: &dyn Fn(&mut HealthCheck)| {
            let mut c = c.clone();
            f(&mut c.vips[0].backends[0].health);
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            set(&|h| h.interval = ms(50)),
            "vip[0].backend[0].health.interval_ms: 50 is out of range (allowed: 100..=3600000)"
        );
        assert_eq!(
            set(&|h| h.timeout = ms(2500)),
            "vip[0].backend[0].health.timeout_ms: 2500 is greater than interval_ms (2000)"
        );
        assert_eq!(
            set(&|h| h.timeout = Duration::ZERO),
            "vip[0].backend[0].health.timeout_ms: 0 is out of range (allowed: 10..=3600000)"
        );
        assert!(set(&|h| h.rise = 0).starts_with("vip[0].backend[0].health.rise:"));
        assert!(set(&|h| h.fall = 101).starts_with("vip[0].backend[0].health.fall:"));
        assert!(set(&|h| h.jitter_pct = 51).starts_with("vip[0].backend[0].health.jitter_pct:"));
        assert!(set(&|h| h.port = Some(0)).starts_with("vip[0].backend[0].health.port:"));
        assert!(set(&|h| {
            h.kind = CheckKind::Exec {
                command: vec!["check".into()],
            }
        })
        .starts_with("vip[0].backend[0].health.command[0]: \"check\" is not an absolute path"));
        assert!(set(&|h| h.kind = CheckKind::Exec { command: vec![] })
            .starts_with("vip[0].backend[0].health.command: is empty"));
        let http = |path: &str, status: Vec<u16>| CheckKind::Http {
            path: path.into(),
            host: None,
            expect_status: status,
            expect_body: None,
        };
        assert!(
            set(&|h| h.kind = http("x", vec![200])).starts_with("vip[0].backend[0].health.path:")
        );
        assert!(set(&|h| h.kind = http("/", vec![]))
            .starts_with("vip[0].backend[0].health.expect_status: must list"));
        assert!(set(&|h| h.kind = http("/", vec![200, 1000]))
            .starts_with("vip[0].backend[0].health.expect_status[1]: 1000 is out of range"));

        // The VIP's own (default) check is validated too.
        let mut c2 = c.clone();
        c2.vips[0].health.rise = 0;
        assert_eq!(c2.validate().unwrap_err().key(), Some("vip[0].health.rise"));
    }

    // --- validate() on a Config built in code ---

    #[test]
    fn validate_config_built_in_code() {
        let mut c = minimal();
        c.validate().unwrap();

        c.nat.port_min = 30000;
        c.nat.port_max = 20000;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("nat.ports: \"30000-20000\": MIN is greater"),
            "{e}"
        );

        let mut c = minimal();
        c.vips.push(Vip {
            backends: vec![
                BackendConfig::new(Ipv4Addr::new(10, 0, 2, 11), 0, 1),
                BackendConfig::new(Ipv4Addr::new(10, 0, 2, 11), 80, 1),
            ],
            ..Vip::new("web", Ipv4Addr::new(10, 0, 0, 100), 80)
        });
        // Port 0 means the VIP's port, so both backends are 10.0.2.11:80.
        assert_eq!(c.vips[0].backend_port(&c.vips[0].backends[0]), 80);
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("vip[0].backend[1]"));

        c.vips[0].backends[1].port = 8080;
        c.validate().unwrap();
        c.vips[0].backends[1].weight = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "vip[0].backend[1].weight: 0 is out of range (allowed: 1..=65535)"
        );

        let mut c = minimal();
        c.dataplane.ring_size = 65535;
        assert_eq!(c.validate().unwrap_err().key(), Some("dataplane.ring_size"));
        let mut c = minimal();
        c.dataplane.interfaces.clear();
        assert_eq!(
            c.validate().unwrap_err().key(),
            Some("dataplane.interfaces")
        );
        let mut c = minimal();
        c.vips.push(Vip::new("v", Ipv4Addr::new(10, 0, 0, 1), 0));
        assert_eq!(c.validate().unwrap_err().key(), Some("vip[0].port"));
    }

    /// [`one_vip`] with a `[vrrp]` table of the given extra lines.
    fn with_vrrp(extra: &str) -> String {
        one_vip("", "")
            + &format!(
                "\n[vrrp]\ninterface = \"eth0\"\nrouter_id = 51\npeers = [\"10.0.1.12\"]\n{extra}\n"
            )
    }

    #[test]
    fn vrrp_defaults_float_every_vip_address() {
        let c = Config::from_toml_str(&with_vrrp("")).unwrap();
        let v = c.vrrp.as_ref().unwrap();
        assert_eq!(
            (v.priority, v.interval_cs, v.preempt, v.source),
            (100, 100, true, None)
        );
        assert_eq!(c.vrrp_addresses(), vec![Ipv4Addr::new(10, 0, 0, 100)]);
        let c = Config::from_toml_str(&with_vrrp(
            "priority = 150\nadvert_interval_ms = 100\npreempt = false\n\
             source = \"10.0.1.11\"\naddresses = [\"10.0.0.100\", \"10.0.1.10\"]",
        ))
        .unwrap();
        let v = c.vrrp.as_ref().unwrap();
        assert_eq!((v.priority, v.interval_cs, v.preempt), (150, 10, false));
        assert_eq!(v.source, Some(Ipv4Addr::new(10, 0, 1, 11)));
        assert_eq!(
            c.vrrp_addresses(),
            vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 1, 10)]
        );
        assert!(minimal().vrrp_addresses().is_empty());
    }

    #[test]
    fn vrrp_mistakes_name_the_key() {
        assert_err(&with_vrrp("priority = 255"), &["vrrp.priority", "1..=254"]);
        assert_err(
            &with_vrrp("advert_interval_ms = 15"),
            &["vrrp.advert_interval_ms", "multiple of 10"],
        );
        assert_err(
            &with_vrrp("advert_interval_ms = 50000"),
            &["vrrp.advert_interval_ms", "10..=40950"],
        );
        assert_err(
            &with_vrrp("source = \"10.0.1.12\""),
            &["vrrp.peers[0]", "vrrp.source"],
        );
        assert_err(
            &with_vrrp("addresses = [\"10.0.1.12\"]"),
            &["vrrp.addresses[0]", "vrrp.peers"],
        );
        assert_err(&with_vrrp("addresses = []"), &["vrrp.addresses", "empty"]);
        assert_err(
            &with_vrrp("addresses = [\"10.0.0.100\", \"10.0.0.100\"]"),
            &["vrrp.addresses[1]", "already listed"],
        );
        assert_err(&with_vrrp("prio = 1"), &["unknown field `prio`"]);
        assert_err(
            &(one_vip("", "") + "\n[vrrp]\ninterface = \"eth0\"\nrouter_id = 51\n"),
            &["vrrp.peers", "required"],
        );
        assert_err(
            &(one_vip("", "")
                + "\n[vrrp]\ninterface = \"eth0\"\nrouter_id = 0\npeers = [\"10.0.1.12\"]\n"),
            &["vrrp.router_id", "1..=255"],
        );
        assert_err(
            &(one_vip("", "") + "\n[vrrp]\ninterface = \"eth0\"\nrouter_id = 5\npeers = []\n"),
            &["vrrp.peers", "unicast"],
        );
        assert_err(
            &with_vrrp("peers = [\"224.0.0.18\"]").replace("peers = [\"10.0.1.12\"]\n", ""),
            &["vrrp.peers[0]"],
        );
    }

    #[test]
    fn vrrp_ec2_is_checked() {
        // nat.source (10.0.1.10) floats with the VIP.
        let floating = "addresses = [\"10.0.0.100\", \"10.0.1.10\"]\n";
        let ok = with_vrrp(&format!(
            "{floating}[vrrp.ec2]\n\
             network_interface_id = \"eni-0a1b\"\nelastic_ip_allocation_id = \"eipalloc-99\"\n\
             region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:5000\""
        ));
        let c = Config::from_toml_str(&ok).unwrap();
        let e = c.vrrp.as_ref().unwrap().ec2.as_ref().unwrap();
        assert_eq!(e.network_interface_id.as_deref(), Some("eni-0a1b"));
        assert_eq!(e.private_addresses, None);
        assert_eq!(e.mode, Ec2Mode::SecondaryAddresses);
        assert_eq!((e.reconcile_interval_ms, e.hold_down_ms), (30_000, 10_000));
        let table = |extra: &str| with_vrrp(&format!("{floating}[vrrp.ec2]\n{extra}"));
        // The interface is found from instance metadata when left out.
        let found = Config::from_toml_str(&table("region = \"eu-west-1\"")).unwrap();
        assert_eq!(found.vrrp.unwrap().ec2.unwrap().network_interface_id, None);
        assert_err(
            &table("network_interface_id = \"i-0abc\""),
            &["vrrp.ec2.network_interface_id", "eni-"],
        );
        assert_err(
            &table("elastic_ip_allocation_id = \"eipalloc-xyz\""),
            &["vrrp.ec2.elastic_ip_allocation_id", "hexadecimal"],
        );
        assert_err(
            &table("elastic_ip_allocation_id = \"eipalloc-1\"\nelastic_ip_private_address = \"10.0.0.7\""),
            &["vrrp.ec2.elastic_ip_private_address", "not among"],
        );
        assert_err(
            &table("elastic_ip_private_address = \"10.0.0.100\""),
            &["vrrp.ec2.elastic_ip_private_address", "without"],
        );
        assert_err(&table("region = \"EU West\""), &["vrrp.ec2.region"]);
        assert_err(&table("endpoint = \"ftp://x\""), &["vrrp.ec2.endpoint"]);
        assert_err(
            &table("private_addresses = [\"10.0.0.100\", \"10.0.0.100\"]"),
            &["vrrp.ec2.private_addresses[1]", "already listed"],
        );
        assert_err(
            &table("access_key = \"AKIA\""),
            &["unknown field `access_key`"],
        );
        assert_err(&table("mode = \"eip\""), &["vrrp.ec2.mode", "not a mode"]);
        assert_err(
            &table("reconcile_interval_ms = 10"),
            &["vrrp.ec2.reconcile_interval_ms"],
        );
        assert_err(&table("hold_down_ms = -1"), &["vrrp.ec2.hold_down_ms"]);
    }

    #[test]
    fn vrrp_ec2_modes_are_checked() {
        let floating = "addresses = [\"10.0.0.100\", \"10.0.1.10\"]\n";
        let table = |extra: &str| with_vrrp(&format!("{floating}[vrrp.ec2]\n{extra}"));
        let c = Config::from_toml_str(&table(
            "mode = \"route_table\"\nroute_tables = [\"rtb-0a\", \"rtb-0b\"]",
        ))
        .unwrap();
        let e = c.vrrp.unwrap().ec2.unwrap();
        assert_eq!(e.mode, Ec2Mode::RouteTable);
        assert_eq!(e.route_tables, vec!["rtb-0a", "rtb-0b"]);
        assert_err(
            &table("mode = \"route_table\""),
            &["vrrp.ec2.route_tables", "required"],
        );
        assert_err(
            &table("mode = \"route_table\"\nroute_tables = [\"rtb-0a\", \"rtb-0a\"]"),
            &["vrrp.ec2.route_tables[1]", "already listed"],
        );
        assert_err(
            &table("mode = \"route_table\"\nroute_tables = [\"igw-0a\"]"),
            &["vrrp.ec2.route_tables[0]", "rtb-"],
        );
        assert_err(
            &table("mode = \"route_table\"\nroute_tables = [\"rtb-0a\"]\nelastic_ip_allocation_id = \"eipalloc-1\""),
            &["vrrp.ec2.elastic_ip_allocation_id", "not used"],
        );
        assert_err(
            &table("route_tables = [\"rtb-0a\"]"),
            &["vrrp.ec2.route_tables", "only used"],
        );
        assert_err(
            &table("mode = \"elastic_ip\""),
            &["vrrp.ec2.elastic_ip_allocation_id", "required"],
        );
        assert_err(
            &table("mode = \"elastic_ip\"\nelastic_ip_allocation_id = \"eipalloc-1\"\nprivate_addresses = []"),
            &["vrrp.ec2.private_addresses", "not used"],
        );
    }

    #[test]
    fn with_ec2_nat_source_must_float_unless_only_the_elastic_ip_moves() {
        // The default floating set is the VIPs: nat.source (10.0.1.10) stays.
        let e = err(&with_vrrp(
            "[vrrp.ec2]\nelastic_ip_allocation_id = \"eipalloc-1\"",
        ));
        assert!(
            e.contains("vrrp.addresses") && e.contains("nat.source (10.0.1.10) does not float"),
            "{e}"
        );
        // Elastic-IP-only mode says the pair does not keep connections.
        let c = Config::from_toml_str(&with_vrrp(
            "[vrrp.ec2]\nmode = \"elastic_ip\"\nelastic_ip_allocation_id = \"eipalloc-1\"",
        ))
        .unwrap();
        assert_eq!(c.vrrp.unwrap().ec2.unwrap().mode, Ec2Mode::ElasticIp);
        // Without [vrrp.ec2] it is the operator's choice, as before.
        assert!(Config::from_toml_str(&with_vrrp("")).is_ok());
    }

    #[test]
    fn vrrp_preempt_delay() {
        let c = Config::from_toml_str(&with_vrrp("preempt_delay_ms = 5000")).unwrap();
        assert_eq!(c.vrrp.unwrap().preempt_delay_ms, 5000);
        assert_eq!(
            Config::from_toml_str(&with_vrrp(""))
                .unwrap()
                .vrrp
                .unwrap()
                .preempt_delay_ms,
            0
        );
        assert_err(
            &with_vrrp("preempt_delay_ms = 3600001"),
            &["vrrp.preempt_delay_ms"],
        );
    }

    #[test]
    fn a_floating_address_may_live_on_another_interface() {
        let c = Config::from_toml_str(&with_vrrp(
            "addresses = [\"10.0.0.100\", \"10.0.2.10 dev eth1\"]",
        ))
        .unwrap();
        assert_eq!(
            c.vrrp_addresses(),
            vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 2, 10)]
        );
        assert_eq!(
            c.vrrp_placements(),
            vec![
                (Ipv4Addr::new(10, 0, 0, 100), "eth0".to_owned()),
                (Ipv4Addr::new(10, 0, 2, 10), "eth1".to_owned())
            ]
        );
        assert_err(
            &with_vrrp("addresses = [\"10.0.2.10 on eth1\"]"),
            &["vrrp.addresses[0]", "ADDRESS dev INTERFACE"],
        );
        assert_err(
            &with_vrrp("addresses = [\"10.0.2.10 dev a/b\"]"),
            &["vrrp.addresses[0]", "not a valid interface name"],
        );
    }

    #[test]
    fn vrrp_tracking_defaults_and_limits() {
        let c = Config::from_toml_str(&with_vrrp("")).unwrap();
        let v = c.vrrp.as_ref().unwrap();
        assert!(v.track_backends);
        assert_eq!(v.track_weight, 50);
        assert_eq!(c.vrrp_tracked_interfaces(), vec!["eth0".to_owned()]);
        assert_eq!(v.effective_priority(0), 100);
        assert_eq!(v.effective_priority(1), 50);
        assert_eq!(v.effective_priority(3), 1, "never 0: that means leaving");
        let c = Config::from_toml_str(&with_vrrp(
            "track_backends = false\ntrack_interfaces = []\ntrack_weight = 10",
        ))
        .unwrap();
        assert!(c.vrrp_tracked_interfaces().is_empty());
        assert_eq!(c.vrrp.as_ref().unwrap().effective_priority(2), 80);
        assert_err(
            &with_vrrp("track_weight = 0"),
            &["vrrp.track_weight", "1..=253"],
        );
        assert_err(
            &with_vrrp("track_interfaces = [\"eth1\", \"eth1\"]"),
            &["vrrp.track_interfaces[1]", "already listed"],
        );
        assert_err(
            &with_vrrp("track_interfaces = [\"a/b\"]"),
            &["vrrp.track_interfaces[0]"],
        );
    }
}

/// Fuzz-style tests: any text is a configuration or an error that names
/// what is wrong, never a panic, and never an error of unbounded size.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../examples/lb.toml");

    /// The example file with some lines dropped, repeated or replaced.
    fn mangled() -> impl Strategy<Value = String> {
        let lines: Vec<String> = EXAMPLE.lines().map(str::to_owned).collect();
        let n = lines.len();
        proptest::collection::vec((0..n, 0u8..4, "[ -~]{0,40}"), 1..8).prop_map(move |edits| {
            let mut out = lines.clone();
            for (i, what, text) in edits {
                let i = i % out.len().max(1);
                match what {
                    0 => {
                        out.remove(i);
                    }
                    1 => {
                        let l = out[i].clone();
                        out.insert(i, l);
                    }
                    2 => out[i] = text,
                    _ => {
                        // Keep the key, change the value.
                        if let Some((k, _)) = out[i].split_once('=') {
                            out[i] = format!("{k}= {text}");
                        }
                    }
                }
                if out.is_empty() {
                    break;
                }
            }
            out.join("\n")
        })
    }

    fn check(text: &str) {
        if let Err(e) = Config::from_toml_str(text) {
            let m = e.to_string();
            assert!(!m.is_empty());
            assert!(m.chars().count() < 1200, "{m}");
        }
    }

    proptest! {
        #[test]
        fn fuzz_config_any_text(text in "\\PC{0,400}") {
            check(&text);
        }

        #[test]
        fn fuzz_config_mangled_example(text in mangled()) {
            check(&text);
        }
    }
}
