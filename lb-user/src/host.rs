//! Host settings lbd needs while it runs, restored when it stops.
//!
//! - The NAT port range goes into `net.ipv4.ip_local_reserved_ports`, so the
//!   host's own sockets are never given a port the load balancer uses.
//! - Each attached interface gets `forwarding=1` (`bpf_fib_lookup` refuses to
//!   route packets arriving on an interface that does not forward, and packets
//!   handed to the kernel to resolve a neighbour are forwarded by it) and
//!   `accept_local=1` (those packets carry a source address of this host).

use std::{fs, path::PathBuf};

use crate::config::Config;

/// What went wrong with a host setting. Each message says what lbd was
/// doing and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// A port set that is not in `ip_local_reserved_ports` syntax.
    #[error("{0}")]
    PortSet(String),
    #[error("interface {0} has no IPv4 settings (/proc/sys/net/ipv4/conf/{0} is missing)")]
    NoIpv4(String),
    #[error(
        "{ifname} (ENA) has MTU {mtu}; native XDP on ENA needs an MTU of at most \
         {ENA_XDP_MAX_MTU} (ip link set dev {ifname} mtu {ENA_XDP_MAX_MTU}), or set \
         dataplane.xdp_mode = \"generic\""
    )]
    EnaMtu { ifname: String, mtu: u32 },
    #[error(
        "{BPFFS} is not a BPF filesystem and mounting one failed: {0} (mount it with: \
         mount -t bpf bpf {BPFFS})"
    )]
    BpfFs(std::io::Error),
    #[error(
        "the coarse monotonic clock's resolution is {0} ns, not a kernel tick (1 ms to {max} ms \
         expected): cannot tell time in the data plane",
        max = MAX_TICK_NS / 1_000_000
    )]
    Tick(i64),
}

type Result<T, E = HostError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |error| HostError::Io { what, error }
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Values lbd changed, with what they were before. lbd keeps them in its
/// state directory ([`crate::state`]) while the data plane runs, so that an
/// lbd that adopts a running data plane restores the host's original
/// values, not the ones the previous lbd had set, when it finally stops
/// cleanly.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HostSettings {
    saved: Vec<(PathBuf, String)>,
    /// The reserved ports lbd added (those of the NAT range that were not
    /// reserved already), as inclusive ranges: taken out again on restore,
    /// leaving everything else as it is.
    #[serde(default)]
    reserved_added: Vec<(u16, u16)>,
}

fn read(path: &PathBuf) -> Result<String> {
    Ok(fs::read_to_string(path)
        .map_err(io(format!("reading {}", path.display())))?
        .trim()
        .to_string())
}

impl HostSettings {
    fn set(&mut self, path: PathBuf, value: String) -> Result<()> {
        let old = read(&path)?;
        if old == value {
            return Ok(());
        }
        fs::write(&path, format!("{value}\n"))
            .map_err(io(format!("writing {value:?} to {}", path.display())))?;
        // An adopted record already holds the original of this one.
        if !self.saved.iter().any(|(p, _)| *p == path) {
            self.saved.push((path, old));
        }
        Ok(())
    }

    /// Applies the settings `cfg` needs. `previous`: what the lbd whose data
    /// plane this one adopts had recorded (the host's originals). On error,
    /// whatever was already changed is restored before returning.
    pub fn apply(cfg: &Config, previous: Option<HostSettings>) -> Result<HostSettings> {
        let mut s = previous.unwrap_or_default();
        if let Err(e) = s.apply_all(cfg) {
            s.restore();
            return Err(e);
        }
        Ok(s)
    }

    fn apply_all(&mut self, cfg: &Config) -> Result<()> {
        if cfg.nat.reserve_ports {
            let path = PathBuf::from(RESERVED_PORTS);
            let old = read(&path)?;
            let mut ports = PortSet::parse(&old).map_err(|e| {
                HostError::PortSet(format!("reading {RESERVED_PORTS} ({old:?}): {e}"))
            })?;
            // Ports already reserved (by the admin, or by the lbd whose data
            // plane this one adopts) are not ours to release later.
            let added = ports.insert_range(cfg.nat.port_min, cfg.nat.port_max);
            if !added.is_empty() {
                let new = ports.to_string();
                fs::write(&path, format!("{new}\n"))
                    .map_err(io(format!("writing {new:?} to {RESERVED_PORTS}")))?;
                self.reserved_added.extend(added);
            }
        }
        for ifname in &cfg.dataplane.interfaces {
            let dir = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{ifname}"));
            if !dir.is_dir() {
                return Err(HostError::NoIpv4(ifname.clone()));
            }
            self.set(dir.join("forwarding"), "1".into())?;
            self.set(dir.join("accept_local"), "1".into())?;
        }
        Ok(())
    }

    /// Leaves every setting as it is (the data plane keeps running; the
    /// record stays in the state directory for the lbd that adopts it).
    pub fn forget(&mut self) {
        self.saved.clear();
        self.reserved_added.clear();
    }

    /// Puts back every value changed, newest first, and takes the NAT range
    /// out of the reserved ports (leaving other entries alone).
    pub fn restore(&mut self) {
        let added = std::mem::take(&mut self.reserved_added);
        if !added.is_empty() {
            let result = read(&PathBuf::from(RESERVED_PORTS)).and_then(|now| {
                let mut ports = PortSet::parse(&now)?;
                for (lo, hi) in added {
                    ports.remove_range(lo, hi);
                }
                fs::write(RESERVED_PORTS, format!("{ports}\n"))
                    .map_err(io("writing ip_local_reserved_ports"))
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not release the NAT port range");
            }
        }
        while let Some((path, old)) = self.saved.pop() {
            // A newline, so that an empty value is written at all: procfs
            // ignores a zero-length write.
            if let Err(e) = fs::write(&path, format!("{old}\n")) {
                tracing::warn!(path = %path.display(), error = %e, "could not restore a host setting");
            }
        }
    }
}

/// A set of TCP/UDP ports, read and written in the kernel's
/// `ip_local_reserved_ports` syntax (`8080,20000-30000`). The kernel merges
/// and reorders ranges when it reads the value back, so the set is what
/// counts, not the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(Vec<bool>);

impl PortSet {
    pub fn parse(text: &str) -> Result<PortSet> {
        let mut set = PortSet(vec![false; 65_536]);
        for part in text
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let num = |s: &str| -> Result<u16> {
                s.trim().parse().map_err(|_| {
                    HostError::PortSet(format!("{part:?} is not a port or a port range"))
                })
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if lo > hi {
                return Err(HostError::PortSet(format!(
                    "{part:?} is not a port range (its start is past its end)"
                )));
            }
            set.insert_range(lo, hi);
        }
        Ok(set)
    }

    /// Adds `lo..=hi`; returns the ranges that were not in the set before.
    pub fn insert_range(&mut self, lo: u16, hi: u16) -> Vec<(u16, u16)> {
        let mut added = PortSet(vec![false; 65_536]);
        for p in lo..=hi {
            let slot = &mut self.0[usize::from(p)];
            if !*slot {
                *slot = true;
                added.0[usize::from(p)] = true;
            }
        }
        added.ranges()
    }

    pub fn remove_range(&mut self, lo: u16, hi: u16) {
        for p in lo..=hi {
            self.0[usize::from(p)] = false;
        }
    }

    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut start = None;
        for (p, &on) in self.0.iter().enumerate() {
            match (on, start) {
                (true, None) => start = Some(p),
                (false, Some(s)) => {
                    out.push((s as u16, (p - 1) as u16));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s as u16, u16::MAX));
        }
        out
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .ranges()
            .into_iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Refuses native mode where it cannot work, with the reason (ENA's XDP MTU limit).
pub fn check_native_xdp(ifname: &str) -> Result<()> {
    let sys = PathBuf::from(format!("/sys/class/net/{ifname}"));
    let driver = fs::read_link(sys.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    if driver.as_deref() == Some("ena") {
        let mtu: u32 = read(&sys.join("mtu"))?.parse().unwrap_or(0);
        if mtu > ENA_XDP_MAX_MTU {
            return Err(HostError::EnaMtu {
                ifname: ifname.into(),
                mtu,
            });
        }
    }
    Ok(())
}

/// The largest MTU the ENA driver accepts with an XDP program attached.
pub const ENA_XDP_MAX_MTU: u32 = 3498;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure /sys/fs/bpf is a BPF filesystem, mounting one if it is not
/// (inside `ip netns exec`, for instance, /sys is remounted without it).
pub fn ensure_bpffs() -> Result<()> {
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: `path` is NUL-terminated and `st` is a writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    if rc == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(io(format!("creating {BPFFS}")))?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(HostError::BpfFs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted the BPF filesystem on {BPFFS}");
    Ok(())
}

/// Nanoseconds per kernel tick (10^9 / `CONFIG_HZ`), which the XDP program
/// needs to tell time from `jiffies` (see `lb_ebpf::Config::ns_per_tick`).
/// The resolution of `CLOCK_MONOTONIC_COARSE` is exactly that: the coarse
/// clocks advance once per tick. No privilege, no file, no waiting.
pub fn ns_per_tick() -> Result<u32> {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return Err(io(
            "clock_getres(CLOCK_MONOTONIC_COARSE) for the kernel's tick length",
        )(std::io::Error::last_os_error()));
    }
    // time_t and c_long are narrower than i64 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let (secs, nanos) = (res.tv_sec as i64, res.tv_nsec as i64);
    tick_from_resolution(secs, nanos)
}

/// Longest plausible tick: 10 ms is `CONFIG_HZ=100`, the lowest Linux offers
/// today; anything from 1 ms to this is accepted.
const MAX_TICK_NS: i64 = 50_000_000;

pub fn tick_from_resolution(secs: i64, nanos: i64) -> Result<u32> {
    let ns = secs.saturating_mul(1_000_000_000).saturating_add(nanos);
    if !(1_000_000..=MAX_TICK_NS).contains(&ns) {
        return Err(HostError::Tick(ns));
    }
    Ok(ns as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_between_one_and_fifty_milliseconds() {
        assert_eq!(tick_from_resolution(0, 4_000_000).unwrap(), 4_000_000);
        assert_eq!(tick_from_resolution(0, 1_000_000).unwrap(), 1_000_000);
        assert_eq!(tick_from_resolution(0, 3_333_333).unwrap(), 3_333_333);
        for (s, n) in [
            (0, 1),
            (0, 999_999),
            (0, 50_000_001),
            (1, 0),
            (0, 0),
            (0, -5),
        ] {
            let e = tick_from_resolution(s, n).unwrap_err().to_string();
            assert!(e.contains("not a kernel tick"), "{e}");
        }
    }

    #[test]
    fn reserved_ports_are_a_set() {
        let mut set = PortSet::parse("8080, 20000-30000,19000-19999\n").unwrap();
        assert_eq!(set.to_string(), "8080,19000-30000");
        // Only what was not reserved yet is lbd's to release later.
        let added = set.insert_range(25000, 40000);
        assert_eq!(added, [(30001, 40000)]);
        assert_eq!(set.to_string(), "8080,19000-40000");
        for (lo, hi) in added {
            set.remove_range(lo, hi);
        }
        assert_eq!(set.to_string(), "8080,19000-30000");
        assert_eq!(PortSet::parse("").unwrap().to_string(), "");
        assert_eq!(PortSet::parse("65535").unwrap().ranges(), [(65535, 65535)]);
        for bad in ["x", "5-3", "70000", "1-"] {
            assert!(PortSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_kernel_has_a_tick() {
        let ns = ns_per_tick().unwrap();
        assert!((1_000_000..=10_000_000).contains(&ns), "{ns}");
    }
}
