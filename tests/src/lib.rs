//! lb's privileged test kit.
//!
//! * [`netns`] (re-exported at the crate root): namespaces, veth pairs and
//!   processes as drop guards, so topologies are torn down even when a test
//!   panics.
//! * The `lb-testkit` binary ([`testkit_bin`]): a TCP `serve`r that names
//!   itself or echoes, a load-generating `client`, a verified long `transfer`,
//!   and `xdp-pass`, which attaches lb's pass-everything XDP program to veth
//!   peers. Its subcommands print JSON reports, parsed here by
//!   [`parse_client_report`] and [`parse_transfer_report`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod bench;
pub mod bench_e2e;
pub mod bench_failover;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod pair;
pub mod topology;
pub mod xdp_fixture;

pub use netns::{
    addr, disable_offloads, netns_exists, netns_list, route, run, unique_prefix, veth, wait_until,
    Child, Netns, IFNAME_MAX, PREFIX_MAX,
};

/// Connect times of the successful connections, in milliseconds (nearest-rank
/// percentiles; all zero when nothing connected).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// The JSON report printed by `lb-testkit client`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Connections attempted (at most `--count`).
    pub attempted: u64,
    /// Connections that received a backend name.
    pub ok: u64,
    /// `attempted - ok`.
    pub failed: u64,
    /// Failures by kind, e.g. `connect_refused`, `connect_timeout`,
    /// `read_timeout`, `read_reset`, `read_eof`, `bad_reply`.
    pub errors: BTreeMap<String, u64>,
    /// Successful connections by the backend name that answered.
    pub by_backend: BTreeMap<String, u64>,
    /// Connect-time distribution of the connections that were established.
    pub connect_ms: ConnectMs,
    /// Connects that took at least [`SLOW_CONNECT_MS`] (a SYN retransmit).
    pub slow_connects: u64,
    /// Wall time of the whole run.
    pub elapsed_ms: u64,
}

/// Connects at least this slow (ms) count as `slow_connects`: the first SYN
/// retransmission happens after 1 s, so such a connect lost a SYN or SYN-ACK.
pub const SLOW_CONNECT_MS: f64 = 900.0;

/// The JSON report printed by `lb-testkit transfer`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// Payload bytes written (after the `ECHO` line).
    pub sent: u64,
    /// Echoed bytes read back (all verified, up to the first mismatch).
    pub received: u64,
    /// Whether every byte came back intact and the connection closed cleanly.
    pub ok: bool,
    /// Wall time of the transfer.
    pub elapsed_ms: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Extracts the JSON object from a subcommand's stdout: the last line that
/// starts with `{` (so stray log lines before it are tolerated).
fn json_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .unwrap_or(output.trim())
}

/// Parses the stdout of `lb-testkit client`. Panics (this is a test helper)
/// with the offending text if it is not a client report.
pub fn parse_client_report(json: &str) -> ClientReport {
    try_parse_client_report(json).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Like [`parse_client_report`], returning an error instead of panicking.
pub fn try_parse_client_report(json: &str) -> anyhow::Result<ClientReport> {
    serde_json::from_str(json_line(json))
        .map_err(|e| anyhow::anyhow!("bad client report ({e}): {json:?}"))
}

/// Parses the stdout of `lb-testkit transfer`. Panics (this is a test helper)
/// with the offending text if it is not a transfer report.
pub fn parse_transfer_report(json: &str) -> TransferReport {
    try_parse_transfer_report(json).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Like [`parse_transfer_report`], returning an error instead of panicking.
pub fn try_parse_transfer_report(json: &str) -> anyhow::Result<TransferReport> {
    serde_json::from_str(json_line(json))
        .map_err(|e| anyhow::anyhow!("bad transfer report ({e}): {json:?}"))
}

/// Path of the `lb-testkit` binary.
///
/// `env!("CARGO_BIN_EXE_lb-testkit")` only exists when compiling this
/// package's integration tests, so this uses `$LB_TESTKIT` if set, and
/// otherwise `lb-testkit` in the parent of the running executable's directory
/// (test executables live in `target/<profile>/deps/`, binaries in
/// `target/<profile>/`).
pub fn testkit_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_TESTKIT") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    dir.parent().unwrap_or(dir).join("lb-testkit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_report_round_trips_and_skips_noise() {
        let mut r = ClientReport {
            attempted: 3,
            ok: 2,
            failed: 1,
            slow_connects: 1,
            elapsed_ms: 12,
            ..Default::default()
        };
        r.errors.insert("connect_timeout".into(), 1);
        r.by_backend.insert("be1".into(), 2);
        r.connect_ms.max = 1000.5;
        let text = format!("some log line\n{}\n", serde_json::to_string(&r).unwrap());
        assert_eq!(parse_client_report(&text), r);
    }

    #[test]
    fn transfer_report_parses() {
        let t = parse_transfer_report(
            r#"{"sent":5,"received":5,"ok":true,"elapsed_ms":1,"error":null}"#,
        );
        assert!(t.ok && t.error.is_none() && t.sent == 5);
        assert!(try_parse_transfer_report("nope").is_err());
    }
}
