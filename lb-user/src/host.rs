//! Host settings lbd needs while it runs, restored when it stops.
//!
//! - The NAT port range goes into `net.ipv4.ip_local_reserved_ports`, so the
//!   host's own sockets are never given a port the load balancer uses.
//! - Each attached interface gets `forwarding=1` (`bpf_fib_lookup` refuses to
//!   route packets arriving on an interface that does not forward, and packets
//!   handed to the kernel to resolve a neighbour are forwarded by it) and
//!   `accept_local=1` (those packets carry a source address of this host).

use std::{fs, path::PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::Config;

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Values lbd changed, with what they were before. Kept in a small state
/// file (next to the control socket) too, so that an lbd that adopts a
/// running data plane restores the host's original values, not the ones the
/// previous lbd had set, when it finally stops cleanly.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HostSettings {
    saved: Vec<(PathBuf, String)>,
    /// The NAT range lbd reserved (taken out again on restore, leaving any
    /// other entries alone).
    reserved: Option<String>,
    #[serde(skip)]
    state_file: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Where the original host settings are kept while lbd (or the data plane
/// it leaves behind) runs.
pub fn state_file(cfg: &Config) -> PathBuf {
    cfg.control.socket.with_extension("host-settings.json")
}

impl HostSettings {
    fn set(&mut self, path: PathBuf, value: String) -> Result<()> {
        let old = read(&path)?;
        if old == value {
            return Ok(());
        }
        fs::write(&path, format!("{value}\n"))
            .with_context(|| format!("writing {value:?} to {}", path.display()))?;
        // An adopted state file already holds the original of this one.
        if !self.saved.iter().any(|(p, _)| *p == path) {
            self.saved.push((path, old));
        }
        Ok(())
    }

    /// Applies the settings `cfg` needs. With `adopted`, the originals are
    /// read from the state file the previous lbd left. On error, whatever
    /// was already changed is restored before returning.
    pub fn apply(cfg: &Config, adopted: bool) -> Result<HostSettings> {
        let file = state_file(cfg);
        let mut s = HostSettings::default();
        if adopted {
            match fs::read(&file) {
                Ok(bytes) => match serde_json::from_slice::<HostSettings>(&bytes) {
                    Ok(prev) => s = prev,
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable host-settings file")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
                    file = %file.display(),
                    "adopting without the previous lbd's host-settings file: the values found now will be restored at a clean stop"
                ),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot read the host-settings file")
                }
            }
        }
        s.state_file = Some(file);
        if let Err(e) = s.apply_all(cfg).and_then(|()| s.save()) {
            s.restore();
            return Err(e);
        }
        Ok(s)
    }

    fn save(&self) -> Result<()> {
        let Some(file) = &self.state_file else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_vec(self).expect("host settings serialise");
        fs::write(file, json).with_context(|| format!("writing {}", file.display()))
    }

    fn apply_all(&mut self, cfg: &Config) -> Result<()> {
        if cfg.nat.reserve_ports {
            let path = PathBuf::from(RESERVED_PORTS);
            let old = read(&path)?;
            let range = format!("{}-{}", cfg.nat.port_min, cfg.nat.port_max);
            // An lbd that exited leaving the data plane running left it there.
            if !old.split(',').any(|r| r == range) {
                let new = if old.is_empty() {
                    range.clone()
                } else {
                    format!("{old},{range}")
                };
                fs::write(&path, format!("{new}\n"))
                    .with_context(|| format!("writing {new:?} to {RESERVED_PORTS}"))?;
            }
            self.reserved = Some(range);
        }
        for ifname in &cfg.dataplane.interfaces {
            let dir = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{ifname}"));
            if !dir.is_dir() {
                bail!(
                    "interface {ifname} has no IPv4 settings ({} is missing)",
                    dir.display()
                );
            }
            self.set(dir.join("forwarding"), "1".into())?;
            self.set(dir.join("accept_local"), "1".into())?;
        }
        Ok(())
    }

    /// Leaves every setting as it is (the data plane keeps running), and the
    /// state file for the lbd that adopts it.
    pub fn forget(&mut self) {
        self.saved.clear();
        self.reserved = None;
        self.state_file = None;
    }

    /// Puts back every value changed, newest first, takes the NAT range out
    /// of the reserved ports (leaving other entries alone), and removes the
    /// state file.
    pub fn restore(&mut self) {
        if let Some(range) = self.reserved.take() {
            let result = read(&PathBuf::from(RESERVED_PORTS)).and_then(|now| {
                let rest: Vec<&str> = now
                    .split(',')
                    .filter(|r| *r != range && !r.is_empty())
                    .collect();
                fs::write(RESERVED_PORTS, format!("{}\n", rest.join(",")))
                    .context("writing ip_local_reserved_ports")
            });
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "could not release the NAT port range");
            }
        }
        while let Some((path, old)) = self.saved.pop() {
            // A newline, so that an empty value is written at all: procfs
            // ignores a zero-length write.
            if let Err(e) = fs::write(&path, format!("{old}\n")) {
                tracing::warn!(path = %path.display(), error = %e, "could not restore a host setting");
            }
        }
        if let Some(file) = self.state_file.take() {
            let _ = fs::remove_file(file);
        }
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
            bail!(
                "{ifname} (ENA) has MTU {mtu}; native XDP on ENA needs an MTU of at most \
                 {ENA_XDP_MAX_MTU} (ip link set dev {ifname} mtu {ENA_XDP_MAX_MTU}), \
                 or set dataplane.xdp_mode = \"generic\""
            );
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
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
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
        bail!(
            "{BPFFS} is not a BPF filesystem and mounting one failed: {} \
             (mount it with: mount -t bpf bpf {BPFFS})",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted the BPF filesystem on {BPFFS}");
    Ok(())
}

/// Nanoseconds per kernel tick (10^9 / `CONFIG_HZ`), which the XDP program
/// needs to tell time from `jiffies` (see `lb_ebpf::Config::ns_per_tick`).
/// Read from the kernel's build configuration when it is installed, else
/// measured from `/proc/timer_list`; found once per process.
pub fn ns_per_tick() -> Result<u32> {
    static TICK: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    TICK.get_or_init(|| {
        find_hz()
            .map(|hz| 1_000_000_000 / hz)
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// The tick rates Linux can be built with.
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

fn find_hz() -> Result<u32> {
    let release = read(&PathBuf::from("/proc/sys/kernel/osrelease"))?;
    if let Ok(text) = fs::read_to_string(format!("/boot/config-{release}")) {
        if let Some(hz) = hz_from_kconfig(&text) {
            return Ok(hz);
        }
    }
    measure_hz().context("finding the kernel's tick rate (CONFIG_HZ)")
}

/// `CONFIG_HZ=<n>` from a kernel build configuration.
pub fn hz_from_kconfig(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| HZ_CHOICES.contains(hz))
}

/// The global `jiffies` counter as `/proc/timer_list` shows it.
fn jiffies() -> Result<u64> {
    let text = fs::read_to_string("/proc/timer_list").context("reading /proc/timer_list")?;
    text.lines()
        .find_map(|l| l.strip_prefix("jiffies: "))
        .and_then(|v| v.trim().parse().ok())
        .context("/proc/timer_list has no `jiffies:` line")
}

/// Counts ticks over a quarter of a second and picks the standard rate it
/// matches.
fn measure_hz() -> Result<u32> {
    let window = std::time::Duration::from_millis(250);
    let (j0, t0) = (jiffies()?, std::time::Instant::now());
    std::thread::sleep(window);
    let (j1, elapsed) = (jiffies()?, t0.elapsed());
    hz_from_rate(j1.saturating_sub(j0) as f64 / elapsed.as_secs_f64())
}

/// The standard tick rate within 10% of `rate`.
pub fn hz_from_rate(rate: f64) -> Result<u32> {
    HZ_CHOICES
        .into_iter()
        .find(|&hz| (rate - hz as f64).abs() <= hz as f64 * 0.1)
        .with_context(|| {
            format!("the kernel ticked {rate:.0} times a second, which is no standard CONFIG_HZ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_comes_from_the_kernel_config() {
        let text = "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n";
        assert_eq!(hz_from_kconfig(text), Some(250));
        assert_eq!(hz_from_kconfig("CONFIG_HZ=123\n"), None);
        assert_eq!(hz_from_kconfig("CONFIG_HZ_1000=y\n"), None);
    }

    #[test]
    fn a_measured_rate_rounds_to_a_standard_hz() {
        assert_eq!(hz_from_rate(251.3).unwrap(), 250);
        assert_eq!(hz_from_rate(296.0).unwrap(), 300);
        assert_eq!(hz_from_rate(97.0).unwrap(), 100);
        assert_eq!(hz_from_rate(1004.0).unwrap(), 1000);
        let e = hz_from_rate(500.0).unwrap_err().to_string();
        assert!(e.contains("500") && e.contains("CONFIG_HZ"), "{e}");
    }

    #[test]
    fn this_kernel_has_a_tick() {
        let ns = ns_per_tick().unwrap();
        assert!(HZ_CHOICES.iter().any(|hz| 1_000_000_000 / hz == ns), "{ns}");
    }
}
