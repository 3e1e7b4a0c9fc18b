//! A network-namespace harness for privileged tests.
//!
//! Every resource made here is owned by a guard that releases it on `Drop`,
//! so a failing assertion (a panic) still tears the topology down:
//!
//! * [`Netns`] owns a named namespace (`ip netns add`). Dropping it kills every
//!   process still inside and deletes the namespace, which also destroys the
//!   veth ends that live in it.
//! * [`Child`] owns a process started inside a namespace. Dropping it sends
//!   `SIGTERM`, then `SIGKILL` after a short grace period, and reaps it.
//!
//! Names must be unique per test and per process so tests can run in
//! parallel (within one test binary and across binaries): build them from
//! [`unique_prefix`]. Interface names are limited to 15 bytes by the kernel.
//!
//! All helpers shell out to `ip(8)` and `ethtool(8)` and need root.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The kernel's limit on interface names (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Length limit of [`unique_prefix`]'s result, so that a prefix plus a short
/// suffix still fits in an interface name (at least 6 bytes are left over).
pub const PREFIX_MAX: usize = 9;

/// How long [`Child`]'s `Drop` waits after `SIGTERM` before `SIGKILL`.
const DROP_GRACE: Duration = Duration::from_millis(1500);

/// How long [`Child::stop`] waits after `SIGTERM` before giving up.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Process-wide counter for temporary names (veth ends, output directories).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Formats `n` in lowercase base 36 (`0-9a-z`).
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A fresh, process-unique short token (pid and a counter, base 36).
fn unique_token() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}{}", base36(u64::from(std::process::id())), base36(n))
}

/// 64-bit FNV-1a, used to fingerprint test names.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Returns a short name prefix that is unique per test name and per process.
///
/// The prefix is made of up to two alphanumeric characters of `test`, two
/// base-36 characters derived from a hash of the whole test name, and the
/// process id in base 36; it is at most [`PREFIX_MAX`] (9) bytes long, which
/// leaves at least 6 bytes for a suffix in an interface name. Calling it again
/// with the same `test` in the same process returns the same prefix; two
/// different test names in one process never get the same prefix.
pub fn unique_prefix(test: &str) -> String {
    static ASSIGNED: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

    let mut guard = ASSIGNED.lock().unwrap_or_else(|e| e.into_inner());
    let assigned = guard.get_or_insert_with(HashMap::new);
    if let Some(prefix) = assigned.get(test) {
        return prefix.clone();
    }
    let head: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(2)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let pid = base36(u64::from(std::process::id()));
    let mut h = fnv1a(test.as_bytes()) % (36 * 36);
    loop {
        // Two base-36 digits, zero padded.
        let tag = format!("{:0>2}", base36(h));
        let prefix = format!("{head}{tag}{pid}");
        if !assigned.values().any(|p| *p == prefix) {
            debug_assert!(prefix.len() <= PREFIX_MAX);
            assigned.insert(test.to_owned(), prefix.clone());
            return prefix;
        }
        h = (h + 1) % (36 * 36);
    }
}

/// Renders a command line for error messages.
fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Whether `ip link show` output says an XDP program is attached: a word
/// `xdp`, `xdpdrv`, `xdpgeneric`, `xdpoffload` or `prog/xdp` (interface and
/// namespace names, which may contain "xdp" themselves, do not count).
pub fn xdp_attached(ip_link_output: &str) -> bool {
    ip_link_output.split_whitespace().any(|w| {
        matches!(
            w,
            "xdp" | "xdpdrv" | "xdpgeneric" | "xdpoffload" | "xdpmulti"
        ) || w.starts_with("prog/xdp")
    })
}

/// Runs `program args...` to completion and returns its stdout; a non-zero
/// exit becomes an error carrying the command line, stdout and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let cmd = describe(program, args);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{cmd}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}):\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            stdout.trim_end()
        );
    }
    Ok(stdout)
}

/// Polls `f` every 20 ms until it returns `true`, or fails after `timeout`
/// with an error naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`; errors (e.g. the process is gone) are ignored.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A named network namespace, deleted (with every process inside killed) on
/// drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`), first removing a stale one of
    /// the same name, and brings its loopback interface up.
    pub fn new(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') {
            bail!("invalid namespace name {name:?}");
        }
        if Path::new("/run/netns").join(name).exists() {
            // Left over from an earlier, killed run: clean it up first.
            kill_all_in(name);
            run("ip", &["netns", "del", name])
                .with_context(|| format!("removing stale namespace {name}"))?;
        }
        run("ip", &["netns", "add", name])?;
        // From here on the guard owns the namespace, so an error below still
        // deletes it.
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip netns exec NAME args...` and returns its stdout. A non-zero exit
    /// is an error carrying the command, its stderr and its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip -n NAME args...` (an `ip` command inside the namespace) and
    /// returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets sysctl `key` (e.g. `net.ipv4.ip_forward`) to `value` inside the
    /// namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// The pids of all processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        Ok(parse_pids(&run("ip", &["netns", "pids", &self.name])?))
    }

    /// Starts `args` inside the namespace (`ip netns exec NAME args...`, which
    /// execs the command in place, so the child's pid is the command's pid).
    /// Its stdout and stderr go to files in a private temporary directory;
    /// read them with [`Child::stdout_so_far`] and friends.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        Child::spawn("ip", &full)
    }

    /// The namespace's handle, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Starts `args` with only the network namespace switched
    /// (`nsenter --net=/run/netns/NAME -- args...`, which also execs in place).
    ///
    /// Unlike [`Netns::spawn`] (`ip netns exec`, which enters a private mount
    /// namespace with its own `/sys`), the process shares the caller's
    /// filesystem view, so BPF pins it makes under `/sys/fs/bpf` are visible
    /// to the test. With `own_process_group`, the process leads a new process
    /// group, so a Ctrl-C at the terminal reaches only the caller, which can
    /// then stop it in order.
    pub fn spawn_net(&self, args: &[&str], own_process_group: bool) -> Result<Child> {
        let net = format!("--net={}", self.path().display());
        let mut full = vec![net.as_str(), "--"];
        full.extend_from_slice(args);
        Child::spawn_with("nsenter", &full, |cmd| {
            if own_process_group {
                std::os::unix::process::CommandExt::process_group(cmd, 0);
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: deleting namespace {}: {e:#}", self.name);
        }
    }
}

/// Parses the output of `ip netns pids`.
fn parse_pids(out: &str) -> Vec<u32> {
    out.split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// SIGKILLs every process in namespace `name` and waits briefly for them to
/// disappear, so that the namespace can go away when deleted.
fn kill_all_in(name: &str) {
    let pids = |name: &str| {
        run("ip", &["netns", "pids", name])
            .map(|o| parse_pids(&o))
            .unwrap_or_default()
    };
    let mine = std::process::id();
    for _ in 0..3 {
        let list: Vec<u32> = pids(name).into_iter().filter(|&p| p != mine).collect();
        if list.is_empty() {
            return;
        }
        for &pid in &list {
            signal(pid, libc::SIGKILL);
        }
        // Killed processes that are our own children stay listed as zombies
        // until reaped (by their `Child` guard), so do not wait for an empty
        // list; give the kernel a moment to tear the others down.
        let _ = wait_until(Duration::from_millis(500), "processes to exit", || {
            pids(name)
                .iter()
                .all(|&p| p == mine || is_zombie(p) || !list.contains(&p))
        });
    }
}

/// Whether `pid` is a zombie (or already gone).
fn is_zombie(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// Whether a namespace called `name` exists (`/run/netns/NAME`).
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The names of all namespaces listed by `ip netns list`.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Creates a veth pair with end `a_if` in namespace `a` and end `b_if` in
/// namespace `b`, both up. The pair is created in the root namespace under
/// temporary unique names and then moved and renamed, so parallel tests never
/// collide on names. Both ends vanish when either namespace is deleted.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    for name in [a_if, b_if] {
        if name.is_empty() || name.len() > IFNAME_MAX {
            bail!("interface name {name:?} must be 1..={IFNAME_MAX} bytes");
        }
    }
    let token = unique_token();
    let tmp_a = format!("lbv{token}a");
    let tmp_b = format!("lbv{token}b");
    run(
        "ip",
        &[
            "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
        ],
    )?;
    let setup = || -> Result<()> {
        run("ip", &["link", "set", &tmp_a, "netns", a.name()])?;
        run("ip", &["link", "set", &tmp_b, "netns", b.name()])?;
        a.ip(&["link", "set", &tmp_a, "name", a_if])?;
        b.ip(&["link", "set", &tmp_b, "name", b_if])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])?;
        Ok(())
    };
    if let Err(e) = setup() {
        // Deleting either end deletes the pair; try wherever it may be now.
        let _ = run("ip", &["link", "del", &tmp_a]);
        let _ = a.ip(&["link", "del", &tmp_a]);
        let _ = a.ip(&["link", "del", a_if]);
        return Err(e.context(format!(
            "creating veth {}:{a_if} <-> {}:{b_if}",
            a.name(),
            b.name()
        )));
    }
    Ok(())
}

/// Adds address `cidr` (e.g. `10.0.0.1/24` or `fd00::1/64`) to `ifname` in
/// `ns`. IPv6 addresses are added with `nodad` so they are usable at once.
pub fn addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.ip(&args)?;
    Ok(())
}

/// Runs `ip route replace ARGS...` in `ns`, e.g.
/// `route(&ns, &["10.1.0.0/16", "via", "10.0.0.1"])` or
/// `route(&ns, &["default", "dev", "eth0"])`.
pub fn route(ns: &Netns, args: &[&str]) -> Result<()> {
    let mut full = vec!["route", "replace"];
    full.extend_from_slice(args);
    ns.ip(&full)?;
    Ok(())
}

/// Turns TX checksum offload off on `ifname` in `ns` (`ethtool -K IF tx off`).
///
/// This is required on every interface that sends into the XDP load balancer:
/// with TX checksum offload on, a veth hands the peer a `CHECKSUM_PARTIAL`
/// packet whose TCP checksum field holds only the pseudo-header sum, expecting
/// the "hardware" to finish it. XDP runs before anything completes that
/// checksum, so the load balancer would rewrite (incrementally update) an
/// unfinished checksum and forward a packet that the backend then drops as
/// corrupt. With offload off, the sender computes the full checksum in
/// software and XDP sees a valid packet.
pub fn disable_offloads(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", ifname, "tx", "off"])?;
    Ok(())
}

/// A process started in a namespace by [`Netns::spawn`] (or anywhere by
/// [`Child::spawn`]). On drop it is sent `SIGTERM`, then `SIGKILL` after a
/// short grace period, and reaped; its output directory is removed.
#[derive(Debug)]
pub struct Child {
    /// `None` once reaped by [`Child::stop`].
    proc: Option<std::process::Child>,
    pid: u32,
    cmd: String,
    dir: PathBuf,
}

impl Child {
    /// Starts `program args...` with stdin from `/dev/null` and stdout/stderr
    /// redirected to files in a fresh temporary directory.
    pub fn spawn(program: &str, args: &[&str]) -> Result<Child> {
        Child::spawn_with(program, args, |_| {})
    }

    /// Like [`Child::spawn`], letting `configure` adjust the [`Command`]
    /// (environment, process group, ...) before it starts.
    pub fn spawn_with(
        program: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Child> {
        let cmd = describe(program, args);
        let dir = std::env::temp_dir().join(format!("lb-tests-{}", unique_token()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let open = |name: &str| {
            File::create(dir.join(name)).with_context(|| format!("creating {name} for `{cmd}`"))
        };
        let (stdout, stderr) = match (open("stdout"), open("stderr")) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        configure(&mut command);
        let proc = match command.spawn() {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("spawning `{cmd}`"));
            }
        };
        Ok(Child {
            pid: proc.id(),
            proc: Some(proc),
            cmd,
            dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.cmd
    }

    /// Path of the file receiving the process's stdout.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout")
    }

    /// Path of the file receiving the process's stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr")
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        read_lossy(&self.stdout_path())
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        read_lossy(&self.stderr_path())
    }

    /// The command line, stdout and stderr so far, labelled, for printing
    /// daemon logs when a test fails.
    pub fn output_so_far(&self) -> String {
        format!(
            "--- `{}` (pid {}) stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.cmd,
            self.pid,
            self.stdout_so_far().trim_end(),
            self.stderr_so_far().trim_end()
        )
    }

    /// Waits until stdout contains `needle` (e.g. `ready`). Fails early if the
    /// process exits first, and after `timeout`; errors include the output.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.stdout_so_far().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // It may have printed the needle just before exiting.
                if self.stdout_so_far().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "process exited ({status}) before printing {needle:?}\n{}",
                    self.output_so_far()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {needle:?}\n{}",
                    self.output_so_far()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.proc.as_mut() {
            Some(p) => Ok(p.try_wait()?),
            None => bail!("process already reaped"),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends signal `sig` (e.g. `libc::SIGSTOP`) to the process if it has not
    /// been reaped yet.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            signal(self.pid, sig);
        }
    }

    /// Sends `SIGTERM` and waits up to 10 s for the process to exit. If it does
    /// not, it is killed and an error (with its output) is returned.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let Some(mut proc) = self.proc.take() else {
            bail!("process already reaped");
        };
        if let Some(status) = proc.try_wait()? {
            return Ok(status);
        }
        signal(self.pid, libc::SIGTERM);
        if let Some(status) = wait_timeout(&mut proc, STOP_TIMEOUT)? {
            return Ok(status);
        }
        let _ = proc.kill();
        let _ = proc.wait();
        bail!(
            "`{}` did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed\n{}",
            self.cmd,
            self.output_so_far()
        )
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its
    /// status, or `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        match self.proc.as_mut() {
            Some(p) => wait_timeout(p, timeout),
            None => bail!("process already reaped"),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            if let Ok(None) = proc.try_wait() {
                signal(self.pid, libc::SIGTERM);
                if !matches!(wait_timeout(&mut proc, DROP_GRACE), Ok(Some(_))) {
                    let _ = proc.kill();
                }
            }
            let _ = proc.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Polls `proc` for up to `timeout`.
fn wait_timeout(proc: &mut std::process::Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a file as (lossy) UTF-8; a missing file reads as empty.
fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(36 * 36 * 36 * 36), "10000");
        assert_eq!(base36(4_194_304).len(), 5); // pid_max
    }

    #[test]
    fn prefixes_are_short_stable_and_distinct() {
        let a = unique_prefix("alpha_test");
        let b = unique_prefix("alpha_other");
        assert_eq!(a, unique_prefix("alpha_test"));
        assert_ne!(a, b);
        assert!(a.len() <= PREFIX_MAX && b.len() <= PREFIX_MAX);
        assert!(a.starts_with("al"));
        assert!(unique_prefix("").len() <= PREFIX_MAX);
    }

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pids("12\n345\n"), vec![12, 345]);
        assert!(parse_pids("").is_empty());
    }
}
