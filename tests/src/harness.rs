//! Shared by the end-to-end test files: one test at a time per file, with
//! its duration printed, and the usual assertion on a client report.

use std::{
    path::Path,
    sync::{Mutex, MutexGuard},
    thread,
    time::Instant,
};

use std::time::Duration;

use crate::{topology::Topology, Child, ClientReport, TransferReport};

/// Serialises the tests of one test binary even when the harness runs them
/// in parallel (`cargo xtask test` does not pass `--test-threads=1`): they
/// measure rates, shares, connect times, health transitions and restarts,
/// which concurrent load on a small machine would distort.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds [`SERIAL`] for the test's lifetime and prints how long the test took
/// when it ends (passing or not).
pub struct Timing {
    name: &'static str,
    start: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl Timing {
    pub fn start(name: &'static str) -> Timing {
        // A failed test poisons the lock; the next one may still run.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("=== {name}: starting");
        Timing {
            name,
            start: Instant::now(),
            _serial: serial,
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        let outcome = if thread::panicking() {
            "FAILED"
        } else {
            "passed"
        };
        eprintln!(
            "=== {}: {outcome} in {:.1} s",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Asserts that all `n` connections of `r` succeeded and were answered by
/// the topology's backends only.
pub fn assert_all_ok(topo: &Topology, r: &ClientReport, n: u64) {
    assert_eq!(r.attempted, n, "not every connection was attempted: {r:?}");
    assert_eq!(r.failed, 0, "failed connections: {r:?}");
    assert_eq!(r.ok, n, "{r:?}");
    let names: Vec<String> = (0..crate::topology::BACKENDS)
        .map(|i| topo.backend_name(i))
        .collect();
    for name in r.by_backend.keys() {
        assert!(
            names.contains(name),
            "answer from unknown backend {name:?}: {r:?}"
        );
    }
    assert_eq!(r.by_backend.values().sum::<u64>(), n, "{r:?}");
}

/// Asserts that a stopped lbd left nothing of the data plane: no XDP on the
/// load balancer's interfaces, no pin directory, no control socket.
pub fn assert_data_plane_removed(topo: &Topology) {
    for ifname in ["eth0", "eth1"] {
        let link = topo.lb_ns().ip(&["link", "show", ifname]).expect("ip link");
        assert!(
            !crate::netns::xdp_attached(&link),
            "XDP still attached to {ifname}: {link}"
        );
    }
    let pins: Vec<String> = std::fs::read_dir(topo.pin_path())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !topo.pin_path().exists(),
        "{} still exists: {pins:?}",
        topo.pin_path().display()
    );
    assert!(!topo.socket_path().exists(), "control socket still exists");
}

/// Asserts that nothing of a test whose names start with `prefix` is left:
/// no namespace, no pin directory `lb-PREFIX*` under /sys/fs/bpf, no
/// state directory of lbd's for it, no topology directory in /tmp.
pub fn assert_cleaned_up(prefix: &str) {
    let left: Vec<String> = crate::netns_list()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let ours = |dir: &str, start: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(start))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pins = ours("/sys/fs/bpf", &format!("lb-{prefix}"));
    assert!(pins.is_empty(), "pins left behind in /sys/fs/bpf: {pins:?}");
    let state = ours(
        lb_user::state::STATE_ROOT,
        &lb_user::state::dir_name(Path::new(&format!("/sys/fs/bpf/lb-{prefix}"))),
    );
    assert!(state.is_empty(), "lbd state left behind: {state:?}");
    let tmp = std::env::temp_dir();
    let dirs: Vec<String> = ["lb-topology-", "lb-pair-"]
        .iter()
        .flat_map(|p| ours(&tmp.to_string_lossy(), &format!("{p}{prefix}")))
        .collect();
    assert!(dirs.is_empty(), "test directories left behind: {dirs:?}");
}

/// Waits for a transfer and asserts that all `bytes` came back intact.
pub fn finish_transfer(mut child: Child, bytes: u64, timeout: Duration) -> TransferReport {
    let status = child
        .wait_timeout(timeout)
        .expect("wait for the transfer")
        .unwrap_or_else(|| {
            panic!(
                "transfer still running after {timeout:?}: {}",
                child.output_so_far()
            )
        });
    let out = child.stdout_so_far();
    eprintln!("  transfer: {}", out.trim());
    let t = crate::parse_transfer_report(&out);
    assert!(
        status.success() && t.ok,
        "transfer failed ({status}): {}",
        child.output_so_far()
    );
    assert_eq!((t.sent, t.received), (bytes, bytes), "{t:?}");
    t
}
