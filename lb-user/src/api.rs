//! The control-socket protocol shared by `lbd` and `lbctl`.
//!
//! One JSON object per line over a Unix stream socket. Every request and
//! response carries `version`; a response is either `{"ok": true, "result": ...}`
//! or `{"ok": false, "error": {"code": ..., "message": ...}}` — the daemon never
//! answers a bad request by dropping the connection.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Version of this protocol. A daemon refuses requests of another version
/// with the error code `version`.
pub const VERSION: u32 = 1;

/// The longest request line lbd reads, newline excluded (a request is a few
/// hundred bytes). A longer one is answered with `bad_request` and the
/// connection is closed.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Every VIP with its backends and counters.
    BackendsList,
    /// Add a backend to a VIP.
    BackendsAdd {
        vip: String,
        address: Ipv4Addr,
        port: u16,
        #[serde(default = "one")]
        weight: u32,
    },
    /// Remove a backend from a VIP.
    BackendsRemove {
        vip: String,
        address: Ipv4Addr,
        port: u16,
    },
    /// Stop sending new flows to a backend; its open flows stay.
    BackendsDrain {
        vip: String,
        address: Ipv4Addr,
        port: u16,
    },
    /// Undo a drain.
    BackendsEnable {
        vip: String,
        address: Ipv4Addr,
        port: u16,
    },
    /// Change a backend's weight.
    BackendsWeight {
        vip: String,
        address: Ipv4Addr,
        port: u16,
        weight: u32,
    },
    /// VIPs with their state.
    Vips,
    /// The daemon: version, uptime, config file, interfaces, reloads.
    Status,
    /// Re-read the configuration file and reconcile to it.
    Reload,
    /// Per-reason counters and table occupancy.
    Stats,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// Declares a fieldless enum of the protocol, serialised as its name on
/// the wire (snake_case), with that name as its `Display` and `as_str`.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with the name on the wire (scripts and tests think in
        /// those).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

wire_enum! {
    /// What kind of refusal an error is: stable, for scripts.
    ErrorCode {
        /// A value out of range or a rule broken.
        Invalid = "invalid",
        /// No such VIP or backend.
        NotFound = "not_found",
        /// Already there, or not enough free slots.
        Conflict = "conflict",
        /// Another protocol version.
        Version = "version",
        /// Not a request at all: not JSON, not UTF-8, too long, unknown command.
        BadRequest = "bad_request",
        /// A kernel operation failed (and was undone).
        Internal = "internal",
    }
}

wire_enum! {
    /// A backend's state: whether it takes new flows, and why not.
    BackendState {
        /// Healthy and enabled: in the ring.
        Up = "up",
        /// Health checks say down: out of the ring, its flows move.
        Down = "down",
        /// Drained by the operator: out of the ring, its flows stay.
        Drained = "drained",
    }
}

wire_enum! {
    /// A VIP's transport protocol.
    Protocol {
        Tcp = "tcp",
    }
}

wire_enum! {
    /// What a VIP with no backend taking new flows does with a new connection.
    OnEmpty {
        Reset = "reset",
        Drop = "drop",
    }
}

wire_enum! {
    /// How the XDP program is attached.
    XdpMode {
        Native = "native",
        Generic = "generic",
    }
}

wire_enum! {
    /// A VRRP instance's role.
    VrrpState {
        Backup = "backup",
        Master = "master",
        /// Gave up mastership on the way out.
        Stopped = "stopped",
    }
}

wire_enum! {
    /// Where a takeover through the EC2 API stands.
    Ec2State {
        /// Never master.
        Idle = "idle",
        Moving = "moving",
        Retrying = "retrying",
        /// Moved and verified.
        Done = "done",
        /// No longer master while it was moving.
        Stopped = "stopped",
        /// Failed for good (a permanent error).
        Failed = "failed",
    }
}

wire_enum! {
    /// How the pair's addresses move on EC2 (`vrrp.ec2.mode`).
    Ec2Mode {
        SecondaryAddresses = "secondary_addresses",
        RouteTable = "route_table",
        ElasticIp = "elastic_ip",
    }
}

wire_enum! {
    /// The EC2 side's start-up checks.
    PreflightState {
        Pending = "pending",
        Passed = "passed",
        Failed = "failed",
    }
}

wire_enum! {
    /// What the last EC2 reconcile found.
    ReconcileState {
        /// No reconcile yet.
        None = "",
        Held = "held",
        Drifted = "drifted",
        Repaired = "repaired",
        Clear = "clear",
        Stranded = "stranded",
    }
}

wire_enum! {
    /// What kind of failure an EC2 error was.
    ErrorClass {
        Permanent = "permanent",
        Throttled = "throttled",
        Transient = "transient",
        Timeout = "timeout",
    }
}

// Not derived: wire_enum! declares the enums of the protocol, most of which
// have no default.
#[allow(clippy::derivable_impls)]
impl Default for Ec2Mode {
    fn default() -> Self {
        Ec2Mode::SecondaryAddresses
    }
}

// Not derived: wire_enum! declares the enums of the protocol, most of which
// have no default.
#[allow(clippy::derivable_impls)]
impl Default for PreflightState {
    fn default() -> Self {
        PreflightState::Pending
    }
}

// Not derived: wire_enum! declares the enums of the protocol, most of which
// have no default.
#[allow(clippy::derivable_impls)]
impl Default for ReconcileState {
    fn default() -> Self {
        ReconcileState::None
    }
}

/// A structured error: a stable `code` for scripts, a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// Values quoted in `message` are cut to a readable length
    /// ([`crate::text::clip`]): they may come from a client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: crate::text::clip(&message.into()),
        }
    }
    pub fn invalid(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Invalid, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Conflict, m)
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, m)
    }
    pub fn version(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Version, m)
    }
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, m)
    }
}

/// What a command that changed one backend answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChange {
    pub vip: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_changed: usize,
}

/// The answer to each request, by kind (each serialises as its content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `backends_list`, `vips`.
    Vips(Vec<VipStatus>),
    /// The backend commands.
    Backend(BackendChange),
    Status(Box<DaemonStatus>),
    Stats(Stats),
    Reload(ReloadSummary),
}

/// A backend as `lbctl backends` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

/// A VIP with its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// What new connections get with no healthy backend.
    pub on_empty: OnEmpty,
    pub healthy_backends: u32,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    /// A digest of the live Maglev ring: the two load balancers of a pair
    /// must show the same one for a VIP, or they send a flow to different
    /// backends (see `VipEntry::ring_digest`).
    #[serde(default)]
    pub ring_digest: String,
    pub backends: Vec<BackendStatus>,
}

/// One verdict reason's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// How often one event (`lb_ebpf::Event`) happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCount {
    pub event: String,
    pub count: u64,
}

/// Answer to [`Request::Stats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub reasons: Vec<ReasonCount>,
    /// Things done to packets besides their verdicts (MSS clamped, ...).
    #[serde(default)]
    pub events: Vec<EventCount>,
    pub flows: u64,
    pub nat_entries: u64,
    pub max_flows: u64,
}

/// Answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: String,
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// The data plane was adopted from an earlier lbd (hitless restart).
    pub adopted: bool,
    pub vips: u32,
    pub backends: u32,
    pub backends_up: u32,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<String>,
    /// The VRRP instance, when `[vrrp]` is configured.
    #[serde(default)]
    pub vrrp: Option<VrrpStatus>,
}

/// The VRRP instance as `lbctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub interface: String,
    pub router_id: u8,
    /// The configured priority.
    pub priority: u8,
    /// The priority advertised now: lowered by each tracked problem.
    #[serde(default)]
    pub effective_priority: u8,
    /// What lowers it: interfaces down, VIPs without a usable backend.
    #[serde(default)]
    pub problems: Vec<String>,
    /// This host's advertisement interval.
    pub advert_interval_ms: u64,
    /// The interval of the master heard last (this host's own when master).
    #[serde(default)]
    pub master_advert_interval_ms: u64,
    pub preempt: bool,
    /// The address advertisements are sent from.
    pub source: Ipv4Addr,
    pub peers: Vec<Ipv4Addr>,
    /// The floating addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// The interface each of `addresses` lives on.
    #[serde(default)]
    pub address_interfaces: Vec<String>,
    pub state: VrrpState,
    /// The master, as far as this host knows (itself when master).
    pub master: Option<Ipv4Addr>,
    /// When the state last changed (or the instance started).
    pub since_unix: u64,
    pub transitions: u64,
    /// The floating addresses are on this host.
    pub holding: bool,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Packets refused: malformed, wrong version or TTL, bad checksum, or
    /// from an address not in `vrrp.peers`.
    pub adverts_invalid: u64,
    /// The same, by reason (`ttl`, `checksum`, `not_peer`, ...).
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// The last problem seen (a send that failed, an invalid packet).
    pub last_problem: Option<String>,
    /// The EC2 takeover, when `[vrrp.ec2]` is configured.
    #[serde(default)]
    pub ec2: Option<Ec2Status>,
}

/// The EC2 side of the takeovers of this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Status {
    pub network_interface_id: String,
    pub elastic_ip_allocation_id: Option<String>,
    pub state: Ec2State,
    /// Attempts of the current (or last) takeover.
    pub attempts: u64,
    /// Failed attempts, over the daemon's life.
    pub failures: u64,
    /// Takeovers that completed and were verified.
    pub takeovers: u64,
    pub last_error: Option<String>,
    /// When the last takeover completed.
    pub done_unix: Option<u64>,
    /// How long it took, from becoming master to verified.
    pub took_ms: Option<u64>,
    /// The Elastic IP's public address, as EC2 reported it.
    pub public_ip: Option<String>,
    #[serde(default)]
    pub mode: Ec2Mode,
    /// This instance, from instance metadata.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Every ENI the addresses go to (one per interface they live on).
    #[serde(default)]
    pub network_interfaces: Vec<String>,
    /// The start-up checks.
    #[serde(default)]
    pub preflight: PreflightState,
    #[serde(default)]
    pub preflight_checks: Vec<Ec2Check>,
    /// The last reconcile: held, drifted or repaired (master); clear or
    /// stranded (backup); "" before the first.
    #[serde(default)]
    pub reconcile: ReconcileState,
    /// Reconciles that found something out of place (master).
    #[serde(default)]
    pub drifts: u64,
    /// Repairs made and verified (master).
    #[serde(default)]
    pub repairs: u64,
    /// What the last drift was.
    #[serde(default)]
    pub last_drift: Option<String>,
    #[serde(default)]
    pub last_reconcile_unix: Option<u64>,
    /// What of the pair's sits on this backup's ENIs (it should not).
    #[serde(default)]
    pub stranded: Vec<String>,
    /// A discrepancy EC2 keeps showing after a repair (reported, not
    /// repaired again).
    #[serde(default)]
    pub warning: Option<String>,
    /// The last error's class (`permanent`, `throttled`, `transient`,
    /// `timeout`), AWS error code and request id.
    #[serde(default)]
    pub last_error_class: Option<ErrorClass>,
    #[serde(default)]
    pub last_error_code: Option<String>,
    #[serde(default)]
    pub last_request_id: Option<String>,
    /// From becoming master until the moved private addresses showed in
    /// instance metadata.
    #[serde(default)]
    pub imds_ms: Option<u64>,
}

/// One start-up check of the EC2 side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Parses a request line; a failure is an error response, not a hang-up.
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ApiError::bad_request(format!("not JSON: {e}")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == VERSION as u64 => {}
        Some(v) => {
            return Err(ApiError::version(format!(
                "protocol version {v} is not supported; this lbd speaks {VERSION}"
            )))
        }
        None => return Err(ApiError::bad_request("missing \"version\"")),
    }
    serde_json::from_value::<RequestEnvelope>(value)
        .map(|e| e.request)
        .map_err(|e| ApiError::bad_request(format!("{e}")))
}

/// Serialises a response line (without the newline).
pub fn response_line(result: Result<Response, ApiError>) -> String {
    let env = match result {
        Ok(r) => ResponseEnvelope {
            version: VERSION,
            ok: true,
            result: Some(serde_json::to_value(r).expect("responses serialise")),
            error: None,
        },
        Err(e) => ResponseEnvelope {
            version: VERSION,
            ok: false,
            result: None,
            error: Some(e),
        },
    };
    serde_json::to_string(&env).expect("responses serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::BackendsList,
            Request::Stats,
            Request::BackendsAdd {
                vip: "web".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 80,
                weight: 3,
            },
            Request::BackendsRemove {
                vip: "web".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 80,
            },
            Request::BackendsDrain {
                vip: "web".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 80,
            },
            Request::BackendsEnable {
                vip: "web".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 80,
            },
            Request::BackendsWeight {
                vip: "web".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 80,
                weight: 5,
            },
            Request::Vips,
            Request::Status,
            Request::Reload,
        ] {
            let line = serde_json::to_string(&RequestEnvelope {
                version: VERSION,
                request: r.clone(),
            })
            .unwrap();
            assert_eq!(parse_request(&line).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_get_structured_errors() {
        assert_eq!(parse_request("{").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse_request(r#"{"cmd":"stats"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(r#"{"version":99,"cmd":"stats"}"#)
                .unwrap_err()
                .code,
            ErrorCode::Version
        );
        let e = parse_request(r#"{"version":1,"cmd":"explode"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("explode"), "{e}");
        let line = response_line(Err(ApiError::not_found("no VIP named \"x\"")));
        let env: ResponseEnvelope = serde_json::from_str(&line).unwrap();
        assert!(!env.ok);
        assert_eq!(env.error.unwrap().code, ErrorCode::NotFound);
    }

    #[test]
    fn enums_are_their_snake_case_names_on_the_wire() {
        fn json(v: impl serde::Serialize) -> String {
            serde_json::to_string(&v).unwrap()
        }
        assert_eq!(json(ErrorCode::NotFound), "\"not_found\"");
        assert_eq!(json(ErrorCode::BadRequest), "\"bad_request\"");
        assert_eq!(json(BackendState::Drained), "\"drained\"");
        assert_eq!(json(OnEmpty::Reset), "\"reset\"");
        assert_eq!(json(XdpMode::Generic), "\"generic\"");
        assert_eq!(ErrorCode::Internal.to_string(), "internal");
        let e: ErrorCode = serde_json::from_str("\"conflict\"").unwrap();
        assert_eq!(e, ErrorCode::Conflict);
    }

    #[test]
    fn weight_defaults_to_one() {
        let r = parse_request(
            r#"{"version":1,"cmd":"backends_add","vip":"w","address":"10.0.0.1","port":80}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::BackendsAdd { weight: 1, .. }));
    }
}

/// Fuzz-style tests: any request line gets a request or a structured
/// error, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON objects that look like requests: known and unknown commands,
    /// fields of every type.
    fn requestish() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::json!([1, "x"])),
            Just(serde_json::json!({"a": 1})),
        ];
        let cmd = prop_oneof![
            Just("backends_list".to_owned()),
            Just("backends_add".to_owned()),
            Just("backends_weight".to_owned()),
            Just("status".to_owned()),
            "[a-z_]{0,12}",
        ];
        let field = prop_oneof![
            Just("vip"),
            Just("address"),
            Just("port"),
            Just("weight"),
            Just("version"),
            Just("extra"),
        ];
        (
            cmd,
            prop_oneof![Just(Some(1u64)), any::<Option<u64>>()],
            proptest::collection::vec((field, value), 0..6),
        )
            .prop_map(|(cmd, version, fields)| {
                let mut m = serde_json::Map::new();
                m.insert("cmd".into(), cmd.into());
                if let Some(v) = version {
                    m.insert("version".into(), v.into());
                }
                for (k, v) in fields {
                    m.insert(k.into(), v);
                }
                serde_json::Value::Object(m).to_string()
            })
    }

    fn check(line: &str) {
        if let Err(e) = parse_request(line) {
            assert!(e.message.chars().count() < 1200);
            // The answer is one line of JSON.
            let out = response_line(Err(e));
            assert!(!out.contains('\n'));
            serde_json::from_str::<ResponseEnvelope>(&out).unwrap();
        }
    }

    proptest! {
        #[test]
        fn fuzz_control_any_line(line in "\\PC{0,300}") {
            check(&line);
        }

        #[test]
        fn fuzz_control_requestish_lines(line in requestish()) {
            check(&line);
        }
    }
}
