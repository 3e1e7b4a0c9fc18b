//! A load-balancer pair on one L2 segment, for the high-availability tests
//! and the failover benchmark.
//!
//! ```text
//!                         {p}s: bridge br0
//!   {p}c  client  10.X.0.10  --- c  ]
//!   {p}l1 lbd #1  10.X.0.21  --- l1 ]   (xdp-pass on l1 and l2)
//!   {p}l2 lbd #2  10.X.0.22  --- l2 ]
//!   {p}b1..b3     10.X.0.31-33 - b1..b3 ]  lb-testkit serve :8080
//! ```
//!
//! The VIP 10.X.0.100:80 and the NAT source 10.X.0.101 belong to neither
//! host: they float with VRRP mastership (`vrrp.addresses`). Each lbd runs
//! its XDP program natively on its one interface and sends with `XDP_TX`
//! back out of it, which is why the switch ports facing the load balancers
//! carry `lb-testkit xdp-pass` (see the veth pitfall in topology.rs).
//! Clients and backends are on the segment itself, so the gratuitous ARP
//! of a new master is all it takes to move their traffic.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_user::api::{DaemonStatus, Request, VipStatus, VrrpStatus};

use crate::{
    addr, disable_offloads,
    topology::{control_request, remove_lb_state, toml_str, Binaries},
    veth, wait_until, Child, Netns,
};

pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
pub const BACKENDS: usize = 3;
pub const ROUTER_ID: u8 = 51;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What one side's lbd runs with.
#[derive(Clone, Debug)]
pub struct Side {
    pub priority: u8,
    pub advert_ms: u64,
    pub preempt: bool,
    /// Float `nat.source` with the VIP (what lets connections survive).
    pub float_nat: bool,
    /// The VRRP version keepalived speaks on this side (lbd speaks 3).
    pub keepalived_version: u8,
    /// keepalived's `notify_master` script on this side, if any.
    pub keepalived_notify: Option<PathBuf>,
}

impl Side {
    pub fn new(priority: u8, advert_ms: u64) -> Side {
        Side {
            priority,
            advert_ms,
            preempt: true,
            float_nat: true,
            keepalived_version: 3,
            keepalived_notify: None,
        }
    }
}

pub struct Pair {
    prefix: String,
    net: u8,
    bins: Binaries,
    dir: PathBuf,
    /// The lbd (or keepalived) of each side.
    vrrp: [Option<Child>; 2],
    procs: Vec<Child>,
    /// switch, client, l1, l2, b1..b3.
    namespaces: Vec<Netns>,
    /// Extra environment for lbd (the EC2 credentials of the tests).
    lbd_env: Vec<(String, String)>,
}

const NS_SWITCH: usize = 0;
const NS_CLIENT: usize = 1;
const NS_LB: usize = 2;
const NS_BACKEND0: usize = 4;

impl Pair {
    /// Builds the namespaces, links, helpers and backend servers; no lbd yet.
    pub fn new(prefix: &str, net: u8, bins: Binaries) -> Result<Pair> {
        let dir = std::env::temp_dir().join(format!("lb-pair-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut p = Pair {
            prefix: prefix.to_owned(),
            net,
            bins,
            dir,
            vrrp: [None, None],
            procs: Vec::new(),
            namespaces: Vec::new(),
            lbd_env: Vec::new(),
        };
        p.build()
            .with_context(|| format!("building pair {prefix} (10.{net}.0.0/24)"))?;
        Ok(p)
    }

    /// [`Pair::new`] for a test; panics on failure.
    pub fn for_test(test: &str) -> Pair {
        let prefix = crate::unique_prefix(test);
        let net = crate::topology::subnet_byte(&prefix);
        Pair::new(&prefix, net, Binaries::from_env())
            .unwrap_or_else(|e| panic!("pair for {test}: {e:#}"))
    }

    fn build(&mut self) -> Result<()> {
        let p = self.prefix.clone();
        for suffix in ["s", "c", "l1", "l2", "b1", "b2", "b3"] {
            self.namespaces.push(Netns::new(&format!("{p}{suffix}"))?);
        }
        for side in 0..2 {
            remove_lb_state(&self.pin_path(side), &self.socket_path(side), false);
        }
        let s = &self.namespaces[NS_SWITCH];
        s.ip(&["link", "add", "br0", "type", "bridge"])?;
        s.ip(&["link", "set", "br0", "up"])?;
        let hosts: Vec<(usize, &str, Ipv4Addr)> = vec![
            (NS_CLIENT, "c", self.client_addr()),
            (NS_LB, "l1", self.lb_addr(0)),
            (NS_LB + 1, "l2", self.lb_addr(1)),
            (NS_BACKEND0, "b1", self.backend_addr(0)),
            (NS_BACKEND0 + 1, "b2", self.backend_addr(1)),
            (NS_BACKEND0 + 2, "b3", self.backend_addr(2)),
        ];
        for (ns, port, address) in hosts {
            let host = &self.namespaces[ns];
            veth(host, "eth0", s, port)?;
            s.ip(&["link", "set", port, "master", "br0"])?;
            addr(host, "eth0", &format!("{address}/24"))?;
            if ns == NS_CLIENT || ns >= NS_BACKEND0 {
                // They send into the load balancers' XDP programs.
                disable_offloads(host, "eth0")?;
            }
        }
        let testkit = self.bins.testkit.display().to_string();
        let object = self.bins.object.display().to_string();
        let mut started = vec![self.namespaces[NS_SWITCH].spawn_net(
            &[&testkit, "xdp-pass", "--object", &object, "l1", "l2"],
            true,
        )?];
        for i in 0..BACKENDS {
            let listen = format!("0.0.0.0:{BACKEND_PORT}");
            let name = format!("b{}", i + 1);
            started.push(self.namespaces[NS_BACKEND0 + i].spawn_net(
                &[&testkit, "serve", "--listen", &listen, "--name", &name],
                true,
            )?);
        }
        for mut child in started {
            child.wait_for_stdout("ready", Duration::from_secs(20))?;
            self.procs.push(child);
        }
        Ok(())
    }

    // -- names and addresses ------------------------------------------------

    pub fn client_ns(&self) -> &Netns {
        &self.namespaces[NS_CLIENT]
    }

    /// The switch namespace: the bridge, and room for a service both load
    /// balancers reach (see [`Pair::service_addr`]).
    pub fn switch_ns(&self) -> &Netns {
        &self.namespaces[NS_SWITCH]
    }

    /// An address for a service in the switch namespace (on `br0`, added by
    /// the caller): 10.X.0.5.
    pub fn service_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 5)
    }

    /// Environment variables for every lbd started from now on (added to,
    /// or replacing, those set before).
    pub fn set_lbd_env(&mut self, env: &[(&str, &str)]) {
        for (k, v) in env {
            self.lbd_env.retain(|(key, _)| key != k);
            self.lbd_env.push((k.to_string(), v.to_string()));
        }
    }

    /// The namespace of side 0 or 1.
    pub fn lb_ns(&self, side: usize) -> &Netns {
        &self.namespaces[NS_LB + side]
    }

    pub fn backend_ns(&self, i: usize) -> &Netns {
        &self.namespaces[NS_BACKEND0 + i]
    }

    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 10)
    }

    /// Side 0 is 10.X.0.21, side 1 10.X.0.22.
    pub fn lb_addr(&self, side: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 21 + side as u8)
    }

    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 31 + i as u8)
    }

    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 100)
    }

    pub fn nat_source(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 101)
    }

    pub fn vip_target(&self) -> String {
        format!("{}:{VIP_PORT}", self.vip())
    }

    pub fn pin_path(&self, side: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/lb-{}-{}", self.prefix, side + 1))
    }

    /// lbd's `control.socket` on `side`, in the pair's private directory.
    pub fn socket_path(&self, side: usize) -> PathBuf {
        self.dir.join(format!("lbd{}.sock", side + 1))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    // -- lbd ----------------------------------------------------------------

    /// The floating addresses of `s`: the VIP, and the NAT source if it floats.
    pub fn floating(&self, s: &Side) -> Vec<Ipv4Addr> {
        let mut a = vec![self.vip()];
        if s.float_nat {
            a.push(self.nat_source());
        }
        a
    }

    /// lbd's configuration for `side`.
    pub fn lbd_config(&self, side: usize, s: &Side) -> String {
        self.lbd_config_with(side, s, "")
    }

    /// [`Pair::lbd_config`] with `vrrp_extra` appended to `[vrrp]` (a
    /// `[vrrp.ec2]` table, say).
    pub fn lbd_config_with(&self, side: usize, s: &Side, vrrp_extra: &str) -> String {
        let mut c = String::new();
        let addresses: Vec<String> = self
            .floating(s)
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let _ = writeln!(
            c,
            "# side {side} of pair {p}\n\
             [dataplane]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\nmax_vips = 4\n\
             pin_path = {pin}\n\n\
             [nat]\nsource = \"{nat}\"\nports = \"20000-59999\"\n\n\
             [control]\nsocket = {socket}\n\n\
             [metrics]\nlisten = \"off\"\n\n\
             [vrrp]\ninterface = \"eth0\"\nrouter_id = {ROUTER_ID}\npriority = {prio}\n\
             advert_interval_ms = {adv}\npreempt = {preempt}\npeers = [\"{peer}\"]\n\
             addresses = [{addresses}]\n{vrrp_extra}\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = {VIP_PORT}\n\
             \x20 [vip.health]\n  kind = \"tcp\"\n  interval_ms = 200\n  timeout_ms = 100\n  \
             rise = 1\n  fall = 2",
            p = self.prefix,
            pin = toml_str(&self.pin_path(side).display().to_string()),
            nat = self.nat_source(),
            socket = toml_str(&self.socket_path(side).display().to_string()),
            prio = s.priority,
            adv = s.advert_ms,
            preempt = s.preempt,
            peer = self.lb_addr(1 - side),
            addresses = addresses.join(", "),
            vip = self.vip(),
        );
        for i in 0..BACKENDS {
            let _ = writeln!(
                c,
                "\n  [[vip.backend]]\n  address = \"{}\"\n  port = {BACKEND_PORT}",
                self.backend_addr(i)
            );
        }
        c
    }

    /// Writes `text` as side `side`'s configuration and returns its path.
    pub fn write_config(&self, side: usize, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("lb{}.toml", side + 1));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts lbd on `side` with [`Pair::lbd_config`] and waits for it to be
    /// ready (backends are checked within a second after).
    pub fn start_lbd(&mut self, side: usize, s: &Side) -> Result<()> {
        let text = self.lbd_config(side, s);
        self.start_lbd_config(side, &text)
    }

    pub fn start_lbd_config(&mut self, side: usize, text: &str) -> Result<()> {
        if self.vrrp[side].is_some() {
            bail!("side {side} is already running");
        }
        let config = self.write_config(side, text)?;
        let lbd = self.bins.lbd.display().to_string();
        let config = config.display().to_string();
        let net = format!("--net={}", self.lb_ns(side).path().display());
        let env = self.lbd_env.clone();
        let mut child =
            Child::spawn_with("nsenter", &[&net, "--", &lbd, "--config", &config], |cmd| {
                std::os::unix::process::CommandExt::process_group(cmd, 0);
                cmd.envs(env);
            })?;
        child
            .wait_for_stdout("lbd: ready", READY_TIMEOUT)
            .with_context(|| format!("starting lbd on side {side}"))?;
        self.vrrp[side] = Some(child);
        Ok(())
    }

    /// keepalived on `side` instead of lbd, floating the same addresses.
    pub fn start_keepalived(&mut self, side: usize, s: &Side) -> Result<()> {
        if self.vrrp[side].is_some() {
            bail!("side {side} is already running");
        }
        let addresses: String = self
            .floating(s)
            .iter()
            .map(|a| format!("    {a}/32 dev eth0\n"))
            .collect();
        let conf = format!(
            "global_defs {{\n  router_id lb{n}\n  vrrp_version {version}\n  script_user root\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {ROUTER_ID}\n  \
             priority {prio}\n  advert_int {adv}\n{nopreempt}  unicast_src_ip {me}\n  \
             unicast_peer {{\n    {peer}\n  }}\n  virtual_ipaddress {{\n{addresses}  }}\n{notify}}}\n",
            n = side + 1,
            version = s.keepalived_version,
            prio = s.priority,
            adv = s.advert_ms as f64 / 1000.0,
            nopreempt = if s.preempt { "" } else { "  nopreempt\n" },
            me = self.lb_addr(side),
            peer = self.lb_addr(1 - side),
            notify = s
                .keepalived_notify
                .as_ref()
                .map(|p| format!("  notify_master \"{}\"\n", p.display()))
                .unwrap_or_default(),
        );
        let path = self.dir.join(format!("keepalived{}.conf", side + 1));
        fs::write(&path, conf)?;
        let file = |name: &str| {
            self.dir
                .join(format!("{name}{}.pid", side + 1))
                .display()
                .to_string()
        };
        let child = self.lb_ns(side).spawn(&[
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            &path.display().to_string(),
            "--pid",
            &file("keepalived"),
            "--vrrp_pid",
            &file("vrrp"),
        ])?;
        self.vrrp[side] = Some(child);
        Ok(())
    }

    /// The process on `side` (lbd or keepalived), if running.
    pub fn process(&mut self, side: usize) -> Option<&mut Child> {
        self.vrrp[side].as_mut()
    }

    /// Takes the process of `side` out of the pair (to stop it in a
    /// particular way).
    pub fn take_process(&mut self, side: usize) -> Option<Child> {
        self.vrrp[side].take()
    }

    /// `lbctl status` of `side`, as data.
    pub fn status(&self, side: usize) -> Result<DaemonStatus> {
        let v = control_request(&self.socket_path(side), Request::Status)?;
        Ok(serde_json::from_value(v)?)
    }

    /// `lbctl vips` of `side`, as data.
    pub fn vips(&self, side: usize) -> Result<Vec<VipStatus>> {
        let v = control_request(&self.socket_path(side), Request::Vips)?;
        Ok(serde_json::from_value(v)?)
    }

    pub fn vrrp_status(&self, side: usize) -> Result<VrrpStatus> {
        self.status(side)?
            .vrrp
            .context("lbd reports no VRRP instance")
    }

    /// `lbctl status` of `side`, as text.
    pub fn lbctl_status(&self, side: usize) -> Result<String> {
        let socket = self.socket_path(side).display().to_string();
        let out = std::process::Command::new(&self.bins.lbctl)
            .args(["--socket", &socket, "status"])
            .output()?;
        if !out.status.success() {
            bail!(
                "lbctl status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until lbd on `side` reports VRRP state `state`.
    pub fn wait_state(&self, side: usize, state: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, &format!("side {side} to be {state}"), || {
            self.vrrp_status(side)
                .map(|v| v.state == state)
                .unwrap_or(false)
        })
    }

    /// Whether `address` is on side `side`'s interface.
    pub fn holds(&self, side: usize, address: Ipv4Addr) -> bool {
        self.lb_ns(side)
            .ip(&["-br", "-4", "addr", "show", "dev", "eth0"])
            .map(|out| {
                out.split_whitespace()
                    .any(|w| w.split('/').next() == Some(address.to_string().as_str()))
            })
            .unwrap_or(false)
    }

    /// Cuts (or restores) what side `side` sends to its peer: a permanent
    /// neighbour entry for the peer's address with a MAC nobody has. Only
    /// VRRP goes from one load balancer to the other; the EC2 API, the
    /// backends and the clients are untouched. (A blackhole route would not
    /// do: the VRRP socket is bound to its interface, and Linux sends a
    /// bound socket's packets on-link when the route lookup fails.)
    pub fn cut_vrrp_from(&self, side: usize, cut: bool) -> Result<()> {
        let peer = self.lb_addr(1 - side).to_string();
        let ns = self.lb_ns(side);
        if cut {
            ns.ip(&[
                "neigh",
                "replace",
                &peer,
                "lladdr",
                "02:00:5e:00:00:99",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        } else {
            ns.ip(&["neigh", "del", &peer, "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Takes side `side`'s link down (the failure the failover tests model).
    pub fn fail_link(&self, side: usize) -> Result<()> {
        self.lb_ns(side).ip(&["link", "set", "eth0", "down"])?;
        Ok(())
    }

    // -- the EC2 API (moto) -------------------------------------------------

    /// The EC2 API endpoint both sides reach: moto in the switch namespace.
    pub fn moto_endpoint(&self) -> String {
        format!("http://{}:5000", self.service_addr())
    }

    /// Starts moto's EC2 server in the switch namespace (on
    /// [`Pair::service_addr`], added to the bridge), creates two instances
    /// whose first ENIs have the sides' addresses (and whose MACs the sides'
    /// `eth0` take), a second ENI for each (on a new `eth1` of each side, in
    /// 10.X.1.0/24), an Elastic IP and a route table with /32 routes to the
    /// VIP and the NAT source (to side 0), then an IMDSv2 server in each
    /// side's namespace (127.0.0.1:1338) that follows moto's state. Every
    /// lbd started afterwards finds it through
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` and has test credentials.
    pub fn start_moto(&mut self) -> Result<Moto> {
        let venv = moto_venv()?;
        let service = self.service_addr();
        self.switch_ns()
            .ip(&["addr", "add", &format!("{service}/24"), "dev", "br0"])?;
        let server = venv.join("bin/moto_server").display().to_string();
        // moto's recorder writes to its working directory unless told:
        // one file per pair.
        let recording = format!(
            "MOTO_RECORDER_FILEPATH={}",
            self.dir.join("moto_recording").display()
        );
        let child = self.switch_ns().spawn_net(
            &["env", &recording, &server, "-H", "0.0.0.0", "-p", "5000"],
            true,
        )?;
        let (a1, a2) = (self.lb_addr(0).to_string(), self.lb_addr(1).to_string());
        let (vip, nat) = (self.vip().to_string(), self.nat_source().to_string());
        let mut ids = Err(anyhow::anyhow!("not tried"));
        let answered = wait_until(Duration::from_secs(30), "moto to answer", || {
            ids = moto_ec2(self, &venv, &["instances", &a1, &a2, &vip, &nat]);
            ids.is_ok()
        });
        let ids = match (answered, ids) {
            (Ok(()), Ok(ids)) => ids,
            (_, Err(e)) | (Err(e), _) => return Err(e.context("setting moto up")),
        };
        let pair_of = |key: &str| -> Result<[String; 2]> {
            let one = |i: usize| -> Result<String> {
                Ok(ids[key][i]
                    .as_str()
                    .with_context(|| format!("moto_ec2.py instances: no {key}[{i}]"))?
                    .to_owned())
            };
            Ok([one(0)?, one(1)?])
        };
        let text = |key: &str| -> Result<String> {
            Ok(ids[key]
                .as_str()
                .with_context(|| format!("moto_ec2.py instances: no {key}"))?
                .to_owned())
        };
        let macs = pair_of("macs")?;
        let macs1 = pair_of("macs1")?;
        let instances = pair_of("instances")?;
        let script = imds_script().display().to_string();
        let python = venv.join("bin/python").display().to_string();
        let mut imds = Vec::new();
        for side in 0..2 {
            let ns = self.lb_ns(side);
            ns.ip(&["link", "set", "dev", "eth0", "address", &macs[side]])?;
            ns.ip(&[
                "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
            ])?;
            ns.ip(&["link", "set", "dev", "eth1", "address", &macs1[side]])?;
            for ifname in ["eth1", "eth1p"] {
                ns.ip(&["link", "set", ifname, "up"])?;
            }
            addr(ns, "eth1", &format!("10.{}.1.{}/24", self.net, 21 + side))?;
            let endpoint = self.moto_endpoint();
            let mut server = ns.spawn(&[
                &python,
                &script,
                "--listen",
                IMDS_LISTEN,
                "--moto",
                &endpoint,
                "--instance",
                &instances[side],
            ])?;
            server
                .wait_for_stdout("ready", Duration::from_secs(30))
                .with_context(|| format!("the IMDS server of side {side}"))?;
            imds.push(server);
        }
        self.set_lbd_env(&[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                &format!("http://{IMDS_LISTEN}/"),
            ),
        ]);
        Ok(Moto {
            enis: pair_of("enis")?,
            enis1: pair_of("enis1")?,
            macs,
            instances,
            allocation: text("allocation_id")?,
            route_table: text("route_table")?,
            venv,
            imds,
            _server: child,
        })
    }

    /// Runs `tests/ec2/moto_ec2.py` against moto (see [`Pair::start_moto`]).
    pub fn moto_ec2(&self, moto: &Moto, args: &[&str]) -> Result<serde_json::Value> {
        moto_ec2(self, &moto.venv, args)
    }

    /// The `[vrrp.ec2]` table of side `side`, for [`Pair::lbd_config_with`]:
    /// the ENI named, the Elastic IP, moto as the endpoint, and a reconcile
    /// every 2 s with a 1 s hold-down (test scale).
    pub fn ec2_table(&self, moto: &Moto, side: usize) -> String {
        format!(
            "{}\nnetwork_interface_id = \"{}\"\nelastic_ip_allocation_id = \"{}\"",
            self.ec2_table_with(""),
            moto.enis[side],
            moto.allocation,
        )
    }

    /// A `[vrrp.ec2]` table with the endpoint, region and test-scale
    /// intervals, and `extra` keys (the rest is found from instance metadata).
    pub fn ec2_table_with(&self, extra: &str) -> String {
        format!(
            "\n[vrrp.ec2]\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             reconcile_interval_ms = {EC2_RECONCILE_MS}\nhold_down_ms = 1000\n{extra}",
            self.moto_endpoint()
        )
    }

    /// Starts `lb-testkit` in the client namespace.
    pub fn spawn_client(&self, args: &[&str]) -> Result<Child> {
        let testkit = self.bins.testkit.display().to_string();
        let mut full = vec![testkit.as_str()];
        full.extend_from_slice(args);
        self.client_ns().spawn(&full)
    }

    pub fn diagnostics(&self) -> String {
        let mut s = format!("===== diagnostics of pair {} =====\n", self.prefix);
        for side in 0..2 {
            match &self.vrrp[side] {
                Some(c) => {
                    let _ = writeln!(
                        s,
                        "--- side {side}: {}\n{}{}",
                        c.command(),
                        c.stdout_so_far(),
                        c.stderr_so_far()
                    );
                }
                None => {
                    let _ = writeln!(s, "--- side {side}: not running");
                }
            }
            if self.socket_path(side).exists() {
                let _ = writeln!(
                    s,
                    "{}",
                    self.lbctl_status(side)
                        .unwrap_or_else(|e| format!("lbctl status: {e:#}"))
                );
            }
            let _ = writeln!(
                s,
                "{}{}",
                self.lb_ns(side)
                    .ip(&["-br", "addr"])
                    .unwrap_or_else(|e| format!("{e:#}")),
                self.lb_ns(side)
                    .ip(&["neigh"])
                    .unwrap_or_else(|e| format!("{e:#}"))
            );
        }
        let _ = writeln!(
            s,
            "--- client neighbours\n{}",
            self.client_ns()
                .ip(&["neigh"])
                .unwrap_or_else(|e| format!("{e:#}"))
        );
        s.push_str("===== end of diagnostics =====");
        s
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.vrrp = [None, None];
        self.procs.clear();
        self.namespaces.clear();
        for side in 0..2 {
            remove_lb_state(&self.pin_path(side), &self.socket_path(side), true);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The reconcile interval of the tests' `[vrrp.ec2]` tables.
pub const EC2_RECONCILE_MS: u64 = 2000;

/// Where each side's IMDSv2 server listens, inside the side's namespace.
const IMDS_LISTEN: &str = "127.0.0.1:1338";

/// moto's EC2 server, running for a [`Pair`], with what was created in it.
pub struct Moto {
    /// The virtual environment moto (and boto3) live in.
    pub venv: PathBuf,
    /// The instance of each side.
    pub instances: [String; 2],
    /// The network interface of each side's `eth0`, and its MAC.
    pub enis: [String; 2],
    pub macs: [String; 2],
    /// The network interface of each side's `eth1` (10.X.1.0/24).
    pub enis1: [String; 2],
    /// The Elastic IP's allocation id.
    pub allocation: String,
    /// A route table with /32 routes to the VIP and the NAT source.
    pub route_table: String,
    /// The IMDSv2 server of each side.
    pub imds: Vec<Child>,
    _server: Child,
}

/// `tests/ec2/moto_ec2.py`, shipped with the test kit.
pub fn moto_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2/moto_ec2.py")
}

/// `tests/ec2/imds_server.py`: the tests' IMDSv2 server.
pub fn imds_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2/imds_server.py")
}

/// moto's virtual environment: `$LB_MOTO_VENV` (set by `cargo xtask test`
/// and `bench`), else where they install it.
pub fn moto_venv() -> Result<PathBuf> {
    let venv = std::env::var_os("LB_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/lb/moto-5.2.5")
        });
    if !venv.join("bin/moto_server").is_file() {
        bail!(
            "moto is missing from {}: `cargo xtask test` (or `bench`) installs it",
            venv.display()
        );
    }
    Ok(venv)
}

fn moto_ec2(pair: &Pair, venv: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let python = venv.join("bin/python").display().to_string();
    let script = moto_script().display().to_string();
    let endpoint = "http://127.0.0.1:5000";
    let mut full = vec![python.as_str(), script.as_str(), endpoint];
    full.extend_from_slice(args);
    let out = pair.switch_ns().exec(&full)?;
    serde_json::from_str(out.trim()).with_context(|| format!("moto_ec2.py said {out:?}"))
}
