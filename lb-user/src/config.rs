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
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

/// One `[[vip]]`: a virtual service and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// Unique name, 1..=32 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// The `[[vip.backend]]` tables, in file order. May be empty: the VIP's
    /// traffic is then dropped (and counted).
    pub backends: Vec<BackendConfig>,
}

impl Vip {
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

/// One `[[vip.backend]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    /// See [`Vip::backend_port`].
    pub port: u16,
    /// Relative share of new flows, 1..=65535.
    pub weight: u32,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

impl Config {
    /// Reads and parses `path`. Errors name the file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
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
        self.check_vips()
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

impl Vip {
    /// Checks the VIP's own keys and its backends; `key` is `vip[i]`.
    fn check(&self, key: &str) -> Result<(), ConfigError> {
        check_vip_name(&format!("{key}.name"), &self.name)?;
        check_unicast(&format!("{key}.address"), self.address)?;
        check_range(&format!("{key}.port"), self.port.into(), 1, 65_535)?;

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

/// Why `addr` cannot be a VIP, NAT or backend address, if it cannot.
pub fn unicast_problem(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("is the unspecified address")
    } else if addr.is_broadcast() {
        Some("is the broadcast address")
    } else if addr.is_multicast() {
        Some("is a multicast address")
    } else {
        None
    }
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
    vip: Vec<RawVip>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
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
            vips,
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
        Ok(Dataplane {
            interfaces,
            xdp_mode,
            ring_size,
            max_flows,
            max_vips,
            pin_path,
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
        let backends = self
            .backend
            .into_iter()
            .enumerate()
            .map(|(j, b)| b.into_backend(&format!("{key}.backend[{j}]"), port))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vip {
            name,
            address,
            port,
            protocol,
            backends,
        })
    }
}

impl RawBackend {
    fn into_backend(self, key: &str, vip_port: u16) -> Result<BackendConfig, ConfigError> {
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
        Ok(BackendConfig {
            address,
            port,
            weight,
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

[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"

  [[vip.backend]]
  address = "10.0.2.11"
  port = 8080
  weight = 3

  [[vip.backend]]
  address = "10.0.2.12"

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

    #[test]
    fn full_file_parses_every_value() {
        let c = Config::from_toml_str(FULL).unwrap();
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
                vips: vec![
                    Vip {
                        name: "web".into(),
                        address: Ipv4Addr::new(10, 0, 0, 100),
                        port: 80,
                        protocol: Protocol::Tcp,
                        backends: vec![
                            BackendConfig {
                                address: Ipv4Addr::new(10, 0, 2, 11),
                                port: 8080,
                                weight: 3,
                            },
                            BackendConfig {
                                address: Ipv4Addr::new(10, 0, 2, 12),
                                port: 80,
                                weight: 1,
                            },
                        ],
                    },
                    Vip {
                        name: "api.v2".into(),
                        address: Ipv4Addr::new(10, 0, 0, 101),
                        port: 443,
                        protocol: Protocol::Tcp,
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
                vips: vec![],
            }
        );
        assert_eq!(c.flows, Flows::default());
        assert_eq!(c.control, Control::default());
        assert_eq!(c.nat.port_count(), 40000);
    }

    #[test]
    fn example_file_is_valid() {
        let c = Config::from_toml_str(include_str!("../../examples/lb.toml"))
            .unwrap_or_else(|e| panic!("examples/lb.toml: {e}"));
        assert_eq!(c.dataplane.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.nat.source, Ipv4Addr::new(10, 0, 2, 10));
        assert_eq!(c.vips.len(), 1);
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
            &["unknown field `metrics`"],
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
                .map(|b| BackendConfig {
                    address: Ipv4Addr::from(0x0a01_0000 + b + 1),
                    port: 8080,
                    weight: 1,
                })
                .collect();
            c.vips.push(Vip {
                name: format!("v{v}"),
                address: Ipv4Addr::from(0x0a00_0000 + v + 1),
                port: 80,
                protocol: Protocol::Tcp,
                backends,
            });
        }
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("vip"));
        assert!(e.to_string().contains("5000 backends in total"), "{e}");
        c.vips[4].backends.truncate(96);
        c.validate().unwrap();
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
            name: "web".into(),
            address: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            protocol: Protocol::Tcp,
            backends: vec![
                BackendConfig {
                    address: Ipv4Addr::new(10, 0, 2, 11),
                    port: 0,
                    weight: 1,
                },
                BackendConfig {
                    address: Ipv4Addr::new(10, 0, 2, 11),
                    port: 80,
                    weight: 1,
                },
            ],
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
        c.vips.push(Vip {
            name: "v".into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            port: 0,
            protocol: Protocol::Tcp,
            backends: vec![],
        });
        assert_eq!(c.validate().unwrap_err().key(), Some("vip[0].port"));
    }
}
