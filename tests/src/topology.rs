//! The load-balancer topology of the end-to-end tests and of `lb-sandbox`.
//!
//! ```text
//!  {p}c (client)          {p}l (lbd, XDP on eth0+eth1)      {p}s (bridge br0)     {p}b1..b3
//!  eth0 10.X.1.2 ------- eth0 10.X.1.1, VIP 10.X.1.100/32
//!                         eth1 10.X.2.1, NAT 10.X.2.10 ------- lb  ]
//!                                                              b1  ]-- br0  ---- eth0 10.X.2.11
//!                                                              b2  ]             eth0 10.X.2.12
//!                                                              b3  ]             eth0 10.X.2.13
//! ```
//!
//! * The client reaches the VIP (a /32 on the load balancer's `eth0`, like a
//!   cloud secondary address) through its default route via 10.X.1.1.
//! * Backends run `lb-testkit serve` on port 8080 and route back via 10.X.2.1;
//!   the load balancer's replies from them come to the NAT source 10.X.2.10.
//! * The client's `eth0` and the switch port facing the load balancer (`lb`)
//!   run `lb-testkit xdp-pass`: a veth only delivers frames that its peer sent
//!   with `XDP_TX`/`XDP_REDIRECT` when it has an XDP program itself.
//! * TX checksum offload is off on every interface that sends into the XDP
//!   program (see [`crate::disable_offloads`]).
//!
//! [`Topology`] owns every namespace and process and removes them on drop,
//! also when a test panics (it then first prints diagnostics: lbd's output,
//! `lbctl stats`, link counters and neighbour tables). lbd runs in the load
//! balancer namespace through `nsenter --net` so its pins under
//! `/sys/fs/bpf` are visible here.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::Ipv4Addr,
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use lb_user::api::{self, Request, RequestEnvelope, ResponseEnvelope, Stats, VipStatus};

use crate::{
    addr, disable_offloads, route, try_parse_client_report, veth, Child, ClientReport, Netns,
};

/// Number of backends.
pub const BACKENDS: usize = 3;
/// Name of the one VIP.
pub const VIP_NAME: &str = "web";
/// Port of the VIP.
pub const VIP_PORT: u16 = 80;
/// Port the backends listen on.
pub const BACKEND_PORT: u16 = 8080;
/// `nat.ports` of the generated configuration.
pub const NAT_PORTS: &str = "20000-59999";

/// How long lbd may take to print `lbd: ready`.
/// Health-check interval of the topology's main VIP (fast, for tests).
pub const HEALTH_INTERVAL_MS: u64 = 200;
const LBD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long helpers (servers, xdp-pass) may take to print `ready`.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding `lbd`, `lbctl`, `lb-testkit` and `lb-sandbox`:
/// `$LB_BIN_DIR`, else the directory of the running executable (or its parent
/// when that is cargo's `deps/`, where test executables live).
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The lb XDP object (for `lb-testkit xdp-pass`): `$LB_EBPF_OBJECT`, else
/// where `cargo xtask build` puts it.
pub fn default_ebpf_object() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_EBPF_OBJECT") {
        return PathBuf::from(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/bpfel-unknown-none/release/lb-ebpf")
}

/// The programs and the object a [`Topology`] runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub lbd: PathBuf,
    pub lbctl: PathBuf,
    pub testkit: PathBuf,
    pub object: PathBuf,
}

impl Binaries {
    /// The binaries in `bin_dir` and the given object; an error naming what is
    /// missing (and how to build it) if any of them does not exist.
    pub fn locate(bin_dir: &Path, object: &Path) -> Result<Binaries> {
        let b = Binaries {
            lbd: bin_dir.join("lbd"),
            lbctl: bin_dir.join("lbctl"),
            testkit: bin_dir.join("lb-testkit"),
            object: object.to_path_buf(),
        };
        for p in [&b.lbd, &b.lbctl, &b.testkit, &b.object] {
            if !p.is_file() {
                bail!(
                    "{} is missing: run `cargo xtask build` first (binaries are taken from \
                     $LB_BIN_DIR, the XDP object from $LB_EBPF_OBJECT)",
                    p.display()
                );
            }
        }
        Ok(b)
    }

    /// [`Binaries::locate`] with [`default_bin_dir`] and
    /// [`default_ebpf_object`]. Panics if anything is missing: a test must never
    /// pass by skipping.
    pub fn from_env() -> Binaries {
        Binaries::locate(&default_bin_dir(), &default_ebpf_object())
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A subnet byte in `100..=250` derived from `seed` (e.g. a test's prefix), so
/// that concurrent topologies use different addresses (namespaces keep them
/// apart anyway; distinct subnets keep diagnostics unambiguous).
pub fn subnet_byte(seed: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes().chain(std::process::id().to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    100 + (h % 151) as u8
}

/// Quotes a string for TOML.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs a command to completion in its own process group (so a terminal's
/// Ctrl-C reaches only our process) and returns its output.
fn output_of(program: &Path, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .with_context(|| format!("running {} {}", program.display(), args.join(" ")))
}

fn describe_output(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// One request over lbd's control socket, the way `lbctl` does it.
pub fn control_request(socket: &Path, request: Request) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to lbd at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(&RequestEnvelope {
        version: api::VERSION,
        request,
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    let env: ResponseEnvelope = serde_json::from_str(&reply)
        .with_context(|| format!("lbd's answer is not a response: {reply:?}"))?;
    if !env.ok {
        let e = env
            .error
            .unwrap_or_else(|| api::ApiError::internal("no detail"));
        bail!("lbd refused the request: {} ({})", e.message, e.code);
    }
    env.result.context("lbd's answer has no result")
}

/// What [`Topology::with_options`] builds besides the network itself.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Run `lb-testkit serve` on port [`BACKEND_PORT`] in every backend (the
    /// default). Without it the port is free for another server, e.g. the
    /// nginx instances of the end-to-end benchmark.
    pub testkit_servers: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            testkit_servers: true,
        }
    }
}

/// A VIP besides [`VIP_NAME`], for [`Topology::lbd_config_with`]: on the same
/// address, with its own port and backends.
#[derive(Clone, Debug)]
pub struct ExtraVip {
    pub name: String,
    pub port: u16,
    /// `(backend index (0-based), port, weight)` of each backend.
    pub backends: Vec<(usize, u16, u32)>,
}

/// The network of the test, see the module documentation.
pub struct Topology {
    prefix: String,
    net: u8,
    bins: Binaries,
    /// Private directory for configuration files.
    dir: PathBuf,
    /// The running lbd, if any.
    lbd: Option<Child>,
    /// Whether lbd was ever started (so drop checks for left-over pins).
    lbd_started: bool,
    /// Servers and xdp-pass holders.
    procs: Vec<Child>,
    /// client, lb, switch, b1, b2, b3 (possibly fewer while building).
    namespaces: Vec<Netns>,
}

const NS_CLIENT: usize = 0;
const NS_LB: usize = 1;
const NS_SWITCH: usize = 2;
const NS_BACKEND0: usize = 3;

impl Topology {
    /// Builds the whole topology (namespaces, links, addresses, XDP pass
    /// programs on the veth peers, backend servers) for `prefix`, using the
    /// subnets 10.`net`.1.0/24 and 10.`net`.2.0/24. Namespaces of an earlier
    /// run with the same prefix are replaced, and its pin directory and
    /// control socket removed. lbd is not started: see [`Topology::start_lbd`].
    pub fn new(prefix: &str, net: u8, bins: Binaries) -> Result<Topology> {
        Topology::with_options(prefix, net, bins, TopologyOptions::default())
    }

    /// [`Topology::new`] with [`TopologyOptions`].
    pub fn with_options(
        prefix: &str,
        net: u8,
        bins: Binaries,
        options: TopologyOptions,
    ) -> Result<Topology> {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("prefix {prefix:?} must be non-empty and alphanumeric");
        }
        if !(1..=254).contains(&net) {
            bail!("subnet byte {net} is out of range");
        }
        let dir = std::env::temp_dir().join(format!("lb-topology-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, drop cleans up whatever was built.
        let mut t = Topology {
            prefix: prefix.to_owned(),
            net,
            bins,
            dir,
            lbd: None,
            lbd_started: false,
            procs: Vec::new(),
            namespaces: Vec::new(),
        };
        t.build(&options)
            .with_context(|| format!("building topology {prefix} (10.{net}.0.0/16)"))?;
        Ok(t)
    }

    /// [`Topology::new`] for a test: prefix from [`crate::unique_prefix`],
    /// subnet from [`subnet_byte`], binaries from [`Binaries::from_env`].
    /// Panics on failure.
    pub fn for_test(test: &str) -> Topology {
        let prefix = crate::unique_prefix(test);
        let net = subnet_byte(&prefix);
        Topology::new(&prefix, net, Binaries::from_env())
            .unwrap_or_else(|e| panic!("topology for {test}: {e:#}"))
    }

    fn build(&mut self, options: &TopologyOptions) -> Result<()> {
        let p = self.prefix.clone();
        for suffix in ["c", "l", "s", "b1", "b2", "b3"] {
            self.namespaces.push(Netns::new(&format!("{p}{suffix}"))?);
        }
        // Earlier runs with this prefix may have left pins or a socket behind
        // (their processes were killed with the stale namespaces just now).
        remove_lb_state(&self.pin_path(), &self.socket_path(), false);

        let (c, l, s) = (self.client_ns(), self.lb_ns(), self.switch_ns());
        veth(c, "eth0", l, "eth0")?;
        veth(l, "eth1", s, "lb")?;
        s.ip(&["link", "add", "br0", "type", "bridge"])?;
        s.ip(&["link", "set", "br0", "up"])?;
        s.ip(&["link", "set", "lb", "master", "br0"])?;
        for i in 0..BACKENDS {
            let b = self.backend_ns(i);
            let port = self.backend_name(i);
            veth(b, "eth0", s, &port)?;
            s.ip(&["link", "set", &port, "master", "br0"])?;
            addr(b, "eth0", &format!("{}/24", self.backend_addr(i)))?;
            route(b, &["default", "via", &self.lb_backend_side().to_string()])?;
            disable_offloads(b, "eth0")?;
        }
        let n = self.net;
        addr(c, "eth0", &format!("10.{n}.1.2/24"))?;
        route(c, &["default", "via", &format!("10.{n}.1.1")])?;
        disable_offloads(c, "eth0")?;
        addr(l, "eth0", &format!("10.{n}.1.1/24"))?;
        addr(l, "eth0", &format!("{}/32", self.vip()))?;
        addr(l, "eth1", &format!("{}/24", self.lb_backend_side()))?;
        addr(l, "eth1", &format!("{}/24", self.nat_source()))?;

        // Start every helper, then wait for all of them.
        let object = self.bins.object.display().to_string();
        let testkit = self.bins.testkit.display().to_string();
        let mut started = Vec::new();
        for (ns, ifname) in [(NS_CLIENT, "eth0"), (NS_SWITCH, "lb")] {
            started.push(
                self.namespaces[ns]
                    .spawn_net(&[&testkit, "xdp-pass", "--object", &object, ifname], true)?,
            );
        }
        for i in (0..BACKENDS).filter(|_| options.testkit_servers) {
            let listen = format!("0.0.0.0:{BACKEND_PORT}");
            let name = self.backend_name(i);
            started.push(self.namespaces[NS_BACKEND0 + i].spawn_net(
                &[&testkit, "serve", "--listen", &listen, "--name", &name],
                true,
            )?);
        }
        for mut child in started {
            child.wait_for_stdout("ready", HELPER_READY_TIMEOUT)?;
            self.procs.push(child);
        }
        Ok(())
    }

    // -- names and addresses ------------------------------------------------

    /// The name prefix of every namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `X` of 10.X.1.0/24 and 10.X.2.0/24.
    pub fn net(&self) -> u8 {
        self.net
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    pub fn client_ns(&self) -> &Netns {
        &self.namespaces[NS_CLIENT]
    }

    pub fn lb_ns(&self) -> &Netns {
        &self.namespaces[NS_LB]
    }

    pub fn switch_ns(&self) -> &Netns {
        &self.namespaces[NS_SWITCH]
    }

    /// Namespace of backend `i` (0-based; `b1` is 0).
    pub fn backend_ns(&self, i: usize) -> &Netns {
        &self.namespaces[NS_BACKEND0 + i]
    }

    /// Names of all namespaces.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }

    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 100)
    }

    /// `VIP:80`, the client's target.
    pub fn vip_target(&self) -> String {
        format!("{}:{VIP_PORT}", self.vip())
    }

    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 2)
    }

    /// The load balancer's own address on the backend side (their gateway).
    pub fn lb_backend_side(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 1)
    }

    pub fn nat_source(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 10)
    }

    /// Address of backend `i` (0-based): 10.X.2.11, .12, .13.
    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 11 + i as u8)
    }

    /// `ADDR:8080` of backend `i`.
    pub fn backend_target(&self, i: usize) -> String {
        format!("{}:{BACKEND_PORT}", self.backend_addr(i))
    }

    /// The name backend `i` answers with: `b1`, `b2`, `b3`.
    pub fn backend_name(&self, i: usize) -> String {
        format!("b{}", i + 1)
    }

    /// Which backend (0-based) has this address, if any.
    pub fn backend_index(&self, address: Ipv4Addr) -> Option<usize> {
        (0..BACKENDS).find(|&i| self.backend_addr(i) == address)
    }

    /// lbd's `dataplane.pin_path`: `/sys/fs/bpf/lb-PREFIX`.
    pub fn pin_path(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/lb-{}", self.prefix))
    }

    /// lbd's `control.socket`: `lbd.sock` in the topology's private
    /// directory (lbd refuses a socket in a directory others can write,
    /// such as `/tmp` itself).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("lbd.sock")
    }

    // -- lbd ----------------------------------------------------------------

    /// lbd's configuration for this topology, the backends weighted `weights`.
    pub fn lbd_config(&self, weights: [u32; BACKENDS]) -> String {
        self.lbd_config_with(weights, &[])
    }

    /// [`Topology::lbd_config`] plus the VIPs `extra` (at most 3).
    pub fn lbd_config_with(&self, weights: [u32; BACKENDS], extra: &[ExtraVip]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# lbd configuration of test topology {}\n\
             [dataplane]\n\
             interfaces = [\"eth0\", \"eth1\"]\n\
             xdp_mode = \"native\"\n\
             max_vips = 4\n\
             pin_path = {}\n\n\
             [nat]\n\
             source = \"{}\"\n\
             ports = \"{NAT_PORTS}\"\n\n\
             [control]\n\
             socket = {}\n\n\
             [[vip]]\n\
             name = \"{VIP_NAME}\"\n\
             address = \"{}\"\n\
             port = {VIP_PORT}\n\
             protocol = \"tcp\"\n\
             \x20 [vip.health]\n\
             \x20 kind = \"tcp\"\n\
             \x20 interval_ms = {HEALTH_INTERVAL_MS}\n\
             \x20 timeout_ms = 100\n\
             \x20 rise = 1\n\
             \x20 fall = 2",
            self.prefix,
            toml_str(&self.pin_path().display().to_string()),
            self.nat_source(),
            toml_str(&self.socket_path().display().to_string()),
            self.vip(),
        );
        for (i, w) in weights.iter().enumerate() {
            let _ = writeln!(
                s,
                "\n  [[vip.backend]]\n  address = \"{}\"\n  port = {BACKEND_PORT}\n  weight = {w}",
                self.backend_addr(i)
            );
        }
        for vip in extra {
            let _ = writeln!(
                s,
                "\n[[vip]]\nname = {}\naddress = \"{}\"\nport = {}\nprotocol = \"tcp\"\n  [vip.health]\n  kind = \"none\"",
                toml_str(&vip.name),
                self.vip(),
                vip.port
            );
            for &(i, port, w) in &vip.backends {
                let _ = writeln!(
                    s,
                    "\n  [[vip.backend]]\n  address = \"{}\"\n  port = {port}\n  weight = {w}",
                    self.backend_addr(i)
                );
            }
        }
        s
    }

    /// The topology's private directory (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `text` to `name` in the topology's private directory.
    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts lbd in the load balancer namespace with `config` and returns it
    /// without waiting for anything (for tests of failing start-ups). The
    /// topology remembers that lbd ran, so drop removes a pin directory or
    /// socket it may leave behind.
    pub fn spawn_lbd(&mut self, config: &Path) -> Result<Child> {
        self.lbd_started = true;
        let lbd = self.bins.lbd.display().to_string();
        let config = config.display().to_string();
        self.namespaces[NS_LB].spawn_net(&[&lbd, "--config", &config], true)
    }

    /// Writes the configuration for `weights`, starts lbd with it and waits
    /// for `lbd: ready`. The topology keeps the process (see [`Topology::lbd`],
    /// [`Topology::stop_lbd`]) so that its output can be shown if a test fails.
    pub fn try_start_lbd(&mut self, weights: [u32; BACKENDS]) -> Result<()> {
        self.try_start_lbd_with(weights, &[])
    }

    /// [`Topology::try_start_lbd`] with the VIPs `extra` too (see
    /// [`Topology::lbd_config_with`]).
    pub fn try_start_lbd_with(
        &mut self,
        weights: [u32; BACKENDS],
        extra: &[ExtraVip],
    ) -> Result<()> {
        if self.lbd.is_some() {
            bail!("lbd is already running");
        }
        let config = self.write_file("lb.toml", &self.lbd_config_with(weights, extra))?;
        let mut child = self.spawn_lbd(&config)?;
        child
            .wait_for_stdout("lbd: ready", LBD_READY_TIMEOUT)
            .context("starting lbd")?;
        self.lbd = Some(child);
        // Backends start down until their first health check passes.
        self.wait_backends_up(LBD_READY_TIMEOUT)
    }

    /// The configuration file [`Topology::try_start_lbd_config`] (and
    /// [`Topology::try_start_lbd_with`]) start lbd with: `lb.toml` in the
    /// topology's directory. Rewrite it and reload to change the configuration.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    /// Writes `text` to [`Topology::config_path`], starts lbd with it and waits
    /// for `lbd: ready` (not for backends to come up: see
    /// [`Topology::wait_backends_up`]). The topology keeps the process, as
    /// [`Topology::try_start_lbd`] does.
    pub fn try_start_lbd_config(&mut self, text: &str) -> Result<()> {
        if self.lbd.is_some() {
            bail!("lbd is already running");
        }
        let config = self.write_file("lb.toml", text)?;
        let mut child = self.spawn_lbd(&config)?;
        child
            .wait_for_stdout("lbd: ready", LBD_READY_TIMEOUT)
            .context("starting lbd")?;
        self.lbd = Some(child);
        Ok(())
    }

    /// Stops backend `i`'s `lb-testkit serve` on [`BACKEND_PORT`] (SIGTERM),
    /// so that its health checks fail. See [`Topology::start_backend_server`].
    pub fn stop_backend_server(&mut self, i: usize) -> Result<ExitStatus> {
        let name = self.backend_name(i);
        let pos = self
            .procs
            .iter()
            .position(|c| is_server_of(c.command(), &name))
            .with_context(|| format!("no server of {name} is running"))?;
        self.procs.remove(pos).stop()
    }

    /// Starts backend `i`'s `lb-testkit serve` on [`BACKEND_PORT`] again (after
    /// [`Topology::stop_backend_server`]) and waits until it listens.
    pub fn start_backend_server(&mut self, i: usize) -> Result<()> {
        let name = self.backend_name(i);
        if self.procs.iter().any(|c| is_server_of(c.command(), &name)) {
            bail!("the server of {name} is already running");
        }
        let testkit = self.bins.testkit.display().to_string();
        let listen = format!("0.0.0.0:{BACKEND_PORT}");
        let mut child = self.namespaces[NS_BACKEND0 + i].spawn_net(
            &[&testkit, "serve", "--listen", &listen, "--name", &name],
            true,
        )?;
        child.wait_for_stdout("ready", HELPER_READY_TIMEOUT)?;
        self.procs.push(child);
        Ok(())
    }

    /// Waits until every backend of every VIP is up (health checks passed).
    pub fn wait_backends_up(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        crate::netns::wait_until(timeout, "all backends up", || match self.backend_status() {
            Ok(vips) => {
                last = format!("{vips:?}");
                vips.iter()
                    .all(|v| v.backends.iter().all(|b| b.state == "up"))
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        })
        .with_context(|| format!("backends not up: {last}"))
    }

    /// [`Topology::try_start_lbd`], panicking on failure.
    pub fn start_lbd(&mut self, weights: [u32; BACKENDS]) -> &mut Child {
        if let Err(e) = self.try_start_lbd(weights) {
            panic!("{e:#}");
        }
        self.lbd()
    }

    /// The running lbd. Panics if it was not started.
    pub fn lbd(&mut self) -> &mut Child {
        self.lbd.as_mut().expect("lbd is not running")
    }

    /// Hands the lbd process over to the caller (e.g. to [`Child::stop`] it).
    pub fn take_lbd(&mut self) -> Option<Child> {
        self.lbd.take()
    }

    /// Stops lbd with SIGTERM and returns its exit status.
    pub fn stop_lbd(&mut self) -> Result<ExitStatus> {
        self.lbd.take().context("lbd is not running")?.stop()
    }

    /// lbd's stdout and stderr so far (empty if it is not running).
    pub fn lbd_output(&self) -> String {
        self.lbd
            .as_ref()
            .map(Child::output_so_far)
            .unwrap_or_default()
    }

    // -- lbctl and the control socket ----------------------------------------

    /// Runs `lbctl --socket SOCKET args...` and returns its output, whatever
    /// its exit status.
    pub fn lbctl_output(&self, args: &[&str]) -> Result<Output> {
        let socket = self.socket_path().display().to_string();
        let mut full = vec!["--socket", socket.as_str()];
        full.extend_from_slice(args);
        output_of(&self.bins.lbctl, &full)
    }

    /// Runs lbctl and returns its stdout; an error if it exits non-zero.
    pub fn try_lbctl(&self, args: &[&str]) -> Result<String> {
        let out = self.lbctl_output(args)?;
        if !out.status.success() {
            bail!("lbctl {} failed: {}", args.join(" "), describe_output(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Topology::try_lbctl`], panicking on failure.
    pub fn lbctl(&self, args: &[&str]) -> String {
        self.try_lbctl(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `lbctl --json backends list`, parsed.
    pub fn lbctl_backends(&self) -> Vec<VipStatus> {
        let out = self.lbctl(&["--json", "backends", "list"]);
        let env: ResponseEnvelope = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("lbctl --json backends: {e}: {out}"));
        assert!(env.ok, "lbctl --json backends: {out}");
        serde_json::from_value(env.result.expect("result"))
            .unwrap_or_else(|e| panic!("lbctl --json backends result: {e}: {out}"))
    }

    /// One request straight over the control socket.
    pub fn control(&self, request: Request) -> Result<serde_json::Value> {
        control_request(&self.socket_path(), request)
    }

    /// Every VIP with its backends and counters, over the control socket.
    pub fn backend_status(&self) -> Result<Vec<VipStatus>> {
        Ok(serde_json::from_value(
            self.control(Request::BackendsList)?,
        )?)
    }

    /// Per-reason counters, over the control socket.
    pub fn stats(&self) -> Result<Stats> {
        Ok(serde_json::from_value(self.control(Request::Stats)?)?)
    }

    /// Packets counted under `reason` (e.g. `redirect_forward`).
    pub fn reason_packets(&self, reason: &str) -> Result<u64> {
        let stats = self.stats()?;
        stats
            .reasons
            .iter()
            .find(|r| r.reason == reason)
            .map(|r| r.packets)
            .ok_or_else(|| anyhow!("no reason {reason:?} in {stats:?}"))
    }

    // -- traffic --------------------------------------------------------------

    /// Runs `lb-testkit client --target VIP:80 args...` in the client
    /// namespace and returns its report.
    pub fn try_client(&self, args: &[&str]) -> Result<ClientReport> {
        let testkit = self.bins.testkit.display().to_string();
        let target = self.vip_target();
        let mut full = vec![
            "netns",
            "exec",
            self.client_ns().name(),
            testkit.as_str(),
            "client",
            "--target",
            target.as_str(),
        ];
        full.extend_from_slice(args);
        let out = output_of(Path::new("ip"), &full)?;
        if !out.status.success() {
            bail!(
                "lb-testkit client {} failed: {}",
                args.join(" "),
                describe_output(&out)
            );
        }
        try_parse_client_report(&String::from_utf8_lossy(&out.stdout))
    }

    /// [`Topology::try_client`], panicking on failure.
    pub fn client(&self, args: &[&str]) -> ClientReport {
        self.try_client(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `lb-testkit ARGS...` in the client namespace (e.g. a `transfer`).
    pub fn spawn_testkit_in_client(&self, args: &[&str]) -> Result<Child> {
        let testkit = self.bins.testkit.display().to_string();
        let mut full = vec![testkit.as_str()];
        full.extend_from_slice(args);
        self.client_ns().spawn_net(&full, true)
    }

    // -- inspection -----------------------------------------------------------

    /// Whether an XDP program is attached to `ifname` in the load balancer
    /// namespace (`ip link show` mentions `xdp`).
    pub fn lb_xdp_attached(&self, ifname: &str) -> Result<bool> {
        Ok(crate::netns::xdp_attached(
            &self.lb_ns().ip(&["link", "show", ifname])?,
        ))
    }

    /// `net.ipv4.ip_local_reserved_ports` of the load balancer namespace.
    pub fn lb_reserved_ports(&self) -> Result<String> {
        Ok(self
            .lb_ns()
            .exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])?
            .trim()
            .to_owned())
    }

    /// Everything useful for understanding a failure: lbd's output, its
    /// counters, links, neighbours.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("===== diagnostics of topology {} =====\n", self.prefix);
        if self.lbd.is_some() {
            let _ = writeln!(s, "{}", self.lbd_output());
        } else {
            let _ = writeln!(s, "(lbd is not running)");
        }
        if self.socket_path().exists() {
            for args in [&["stats"][..], &["backends"][..]] {
                let text = match self.lbctl_output(args) {
                    Ok(out) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => format!("{e:#}\n"),
                };
                let _ = write!(s, "--- lbctl {} ---\n{text}", args.join(" "));
            }
        }
        if self.namespaces.len() > NS_SWITCH {
            let cmds: [(&Netns, &[&str]); 5] = [
                (self.lb_ns(), &["-s", "link"]),
                (self.lb_ns(), &["neigh"]),
                (self.client_ns(), &["neigh"]),
                (self.client_ns(), &["-s", "link", "show", "eth0"]),
                (self.switch_ns(), &["-s", "link"]),
            ];
            for (ns, args) in cmds {
                let text = ns.ip(args).unwrap_or_else(|e| format!("{e:#}\n"));
                let _ = write!(s, "--- ip -n {} {} ---\n{text}", ns.name(), args.join(" "));
            }
        }
        s.push_str("===== end of diagnostics =====");
        s
    }
}

/// Whether `command` (a [`Child::command`]) is the `lb-testkit serve` of the
/// backend called `name`, listening on [`BACKEND_PORT`].
fn is_server_of(command: &str, name: &str) -> bool {
    let words: Vec<&str> = command.split(' ').collect();
    let listen = format!("0.0.0.0:{BACKEND_PORT}");
    words.contains(&"serve")
        && words.windows(2).any(|w| w == ["--name", name])
        && words.windows(2).any(|w| w == ["--listen", listen.as_str()])
}

/// Removes lbd's pin directory and control socket if they exist; with
/// `report`, says so (they should have been removed by lbd itself).
pub(crate) fn remove_lb_state(pin_path: &Path, socket: &Path, report: bool) {
    // lbd's state directory for the data plane (its lock and record).
    let state = Path::new(lb_user::state::STATE_ROOT).join(lb_user::state::dir_name(pin_path));
    if state.exists() {
        if report {
            eprintln!("topology cleanup: removing {} left by lbd", state.display());
        }
        if let Err(e) = fs::remove_dir_all(&state) {
            eprintln!("warning: removing {}: {e}", state.display());
        }
    }
    if pin_path.exists() {
        if report {
            eprintln!(
                "topology cleanup: removing {} left by lbd",
                pin_path.display()
            );
        }
        if let Err(e) = fs::remove_dir_all(pin_path) {
            eprintln!("warning: removing {}: {e}", pin_path.display());
        }
    }
    for file in [socket.to_path_buf()] {
        match fs::remove_file(&file) {
            Ok(()) if report => {
                eprintln!("topology cleanup: removed {} left by lbd", file.display())
            }
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: removing {}: {e}", file.display()),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // lbd first (SIGTERM: it detaches and unpins), then the helpers, then
        // the namespaces (which kills anything still inside).
        self.lbd = None;
        self.procs.clear();
        self.namespaces.clear();
        if self.lbd_started {
            remove_lb_state(&self.pin_path(), &self.socket_path(), true);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> Topology {
        Topology {
            prefix: "ab12cd".into(),
            net: 123,
            bins: Binaries {
                lbd: "/x/lbd".into(),
                lbctl: "/x/lbctl".into(),
                testkit: "/x/lb-testkit".into(),
                object: "/x/lb-ebpf".into(),
            },
            dir: std::env::temp_dir().join("lb-topology-unit-test-unused"),
            lbd: None,
            lbd_started: false,
            procs: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    #[test]
    fn config_is_valid_and_weighted() {
        let t = fake();
        let text = t.lbd_config([1, 2, 3]);
        let cfg =
            lb_user::config::Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.vips.len(), 1);
        let v = &cfg.vips[0];
        assert_eq!(v.name, VIP_NAME);
        assert_eq!(v.address, Ipv4Addr::new(10, 123, 1, 100));
        let weights: Vec<u32> = v.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 2, 3]);
        assert_eq!(cfg.nat.source, Ipv4Addr::new(10, 123, 2, 10));
        assert_eq!(
            cfg.control.socket,
            std::env::temp_dir().join("lb-topology-unit-test-unused/lbd.sock")
        );
        assert_eq!(cfg.dataplane.pin_path, Path::new("/sys/fs/bpf/lb-ab12cd"));
    }

    #[test]
    fn extra_vips_are_valid() {
        let t = fake();
        let extra = ExtraVip {
            name: "iperf".into(),
            port: 5201,
            backends: vec![(0, 5201, 1)],
        };
        let text = t.lbd_config_with([1, 1, 1], &[extra]);
        let cfg =
            lb_user::config::Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.vips.len(), 2);
        assert_eq!(cfg.vips[0].backends.len(), BACKENDS);
        let v = &cfg.vips[1];
        assert_eq!((v.name.as_str(), v.port), ("iperf", 5201));
        assert_eq!(v.address, t.vip());
        assert_eq!(v.backends.len(), 1);
        assert_eq!(v.backends[0].address, t.backend_addr(0));
        assert_eq!(v.backends[0].port, 5201);
    }

    #[test]
    fn subnet_bytes_stay_in_range() {
        for seed in ["", "a", "sh0a1b2", "lbsbx", "zzzzzzzzz"] {
            assert!((100..=250).contains(&subnet_byte(seed)));
        }
    }

    #[test]
    fn backend_servers_are_found_by_name() {
        let cmd =
            "nsenter --net=/run/netns/xb2 -- /x/lb-testkit serve --listen 0.0.0.0:8080 --name b2";
        assert!(is_server_of(cmd, "b2"));
        assert!(!is_server_of(cmd, "b1"));
        assert!(!is_server_of(&cmd.replace("b2", "b22"), "b2"));
        let health = "/x/lb-testkit serve --http-listen 0.0.0.0:8081 --name b2";
        assert!(!is_server_of(health, "b2"));
        let xdp = "/x/lb-testkit xdp-pass --object /x/lb-ebpf lb";
        assert!(!is_server_of(xdp, "b2"));
    }
}
