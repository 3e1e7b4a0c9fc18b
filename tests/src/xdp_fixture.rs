//! A load balancer in a private network namespace, driven through
//! `BPF_PROG_TEST_RUN`: the real XDP object with its maps filled by the real
//! control-plane code, veths with addresses and static neighbours so that
//! `bpf_fib_lookup` gives deterministic answers. Used by the packet tests and
//! by the per-packet benchmark.

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd, path::PathBuf};

use aya::programs::{TestRun, TestRunOptions};
use lb_ebpf::{hash::flow_hash, ring_hash, Reason, IPPROTO_TCP, SEED_NAT_PORT};
use lb_user::{
    balancer::{ring_for, Balancer},
    config::Config,
    dataplane::{addr_be, Dataplane},
    dataplane::{kernel_config, load_options},
};

use crate::{
    netns::{unique_prefix, Netns},
    packet::Mac,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 1, 2];
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
pub const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 50);
pub const NAT: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 10);
pub const WEB: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 100);
pub const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 101);
pub const NONEIGH_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 102);
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 103);
pub const SINGLE_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 104);
pub const RESET_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 105);
/// A VIP with source affinity (`hash = "source"`), over web's backends.
pub const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 106);
/// Index of [`STICKY_VIP`] among the fixture's VIPs.
pub const STICKY: usize = 6;
pub const RING: u32 = 1009;

pub const CONFIG: &str = r#"
[dataplane]
interfaces = ["lbt0", "lbt1"]
ring_size = 1009
max_flows = 131072
[nat]
source = "10.1.2.10"
ports = "20000-59999"
[metrics]
listen = "off"
[[vip]]
name = "web"
address = "10.1.1.100"
port = 80
  [vip.health]
  kind = "none"
  [[vip.backend]]
  address = "10.1.2.11"
  port = 8080
  [[vip.backend]]
  address = "10.1.2.12"
  port = 8080
  [[vip.backend]]
  address = "10.1.2.13"
  port = 8080
[[vip]]
name = "local"
address = "10.1.1.101"
port = 80
  [vip.health]
  kind = "none"
  [[vip.backend]]
  address = "10.1.1.50"
  port = 8080
  [[vip.backend]]
  address = "10.1.1.51"
  port = 8080
  [[vip.backend]]
  address = "10.1.1.52"
  port = 8080
[[vip]]
name = "noneigh"
address = "10.1.1.102"
port = 80
  [vip.health]
  kind = "none"
  [[vip.backend]]
  address = "10.1.2.99"
  port = 8080
[[vip]]
name = "empty"
address = "10.1.1.103"
port = 80
on_empty = "drop"
[[vip]]
name = "single"
address = "10.1.1.104"
port = 80
  [vip.health]
  kind = "none"
  [[vip.backend]]
  address = "10.1.2.11"
  port = 9090
[[vip]]
name = "refuse"
address = "10.1.1.105"
port = 80
on_empty = "reset"
[[vip]]
name = "sticky"
address = "10.1.1.106"
port = 80
hash = "source"
  [vip.health]
  kind = "none"
  [[vip.backend]]
  address = "10.1.2.11"
  port = 8080
  [[vip.backend]]
  address = "10.1.2.12"
  port = 8080
  [[vip.backend]]
  address = "10.1.2.13"
  port = 8080
"#;

pub fn backend_mac(addr: Ipv4Addr) -> Mac {
    let o = addr.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

pub fn object() -> Vec<u8> {
    let path = std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf/bpfel-unknown-none/release/lb-ebpf")
        });
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the XDP object {} is missing ({e}); build it with `cargo xtask build-ebpf` \
             (or run everything with `cargo xtask test`)",
            path.display()
        )
    })
}

pub struct Fixture {
    pub dp: Dataplane,
    pub balancer: Balancer,
    pub lbt0: u32,
    pub lbt1: u32,
    pub mac0: Mac,
    pub mac1: Mac,
    // Dropped last: the namespace outlives the program runs.
    _ns: Netns,
}

fn mac_of(ns: &Netns, ifname: &str) -> Mac {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

fn ifindex_of(ns: &Netns, ifname: &str) -> u32 {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifindex"].as_u64().unwrap() as u32
}

/// Moves the calling thread (this test's) into `ns`, where the program's
/// `bpf_fib_lookup` will consult routes and neighbours.
pub fn enter(ns: &Netns) {
    enter_handle(&File::open(format!("/run/netns/{}", ns.name())).unwrap());
}

/// Moves the calling thread into the namespace `f` refers to.
pub fn enter_handle(f: &File) {
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

pub fn fixture(test: &str, tweak: impl FnOnce(&mut lb_ebpf::Config)) -> Fixture {
    let ns = Netns::new(&format!("{}pk", unique_prefix(test))).unwrap();
    for (a, b) in [("lbt0", "lbt0p"), ("lbt1", "lbt1p")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    ns.ip(&["addr", "add", "10.1.1.1/24", "dev", "lbt0"])
        .unwrap();
    ns.ip(&["addr", "add", "10.1.2.1/24", "dev", "lbt1"])
        .unwrap();
    ns.ip(&["addr", "add", "10.1.2.10/24", "dev", "lbt1"])
        .unwrap();
    let neighbours = [
        (CLIENT, "lbt0"),
        (CLIENT2, "lbt0"),
        (LOCAL_BACKEND, "lbt0"),
        (Ipv4Addr::new(10, 1, 1, 51), "lbt0"),
        (Ipv4Addr::new(10, 1, 1, 52), "lbt0"),
        (Ipv4Addr::new(10, 1, 2, 11), "lbt1"),
        (Ipv4Addr::new(10, 1, 2, 12), "lbt1"),
        (Ipv4Addr::new(10, 1, 2, 13), "lbt1"),
    ];
    for (addr, dev) in neighbours {
        let mac = backend_mac(addr)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    ns.sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
    // Devmap entries and test runs resolve ifindexes in the caller's namespace.
    enter(&ns);

    let cfg = Config::from_toml_str(CONFIG).unwrap();
    let mut dp = Dataplane::load(&object(), &load_options(&cfg), None).unwrap();
    let mut kcfg = kernel_config(&cfg, lb_user::host::ns_per_tick().unwrap());
    tweak(&mut kcfg);
    dp.set_config(&kcfg).unwrap();
    let mut balancer = Balancer::new(&cfg);
    balancer.install(&mut dp, &Default::default()).unwrap();
    let (lbt0, lbt1) = (ifindex_of(&ns, "lbt0"), ifindex_of(&ns, "lbt1"));
    dp.add_tx_port(lbt0).unwrap();
    dp.add_tx_port(lbt1).unwrap();
    let (mac0, mac1) = (mac_of(&ns, "lbt0"), mac_of(&ns, "lbt1"));
    Fixture {
        dp,
        balancer,
        lbt0,
        lbt1,
        mac0,
        mac1,
        _ns: ns,
    }
}

/// What one program run did.
pub struct Outcome {
    pub action: u32,
    pub reason: Reason,
    pub out: Vec<u8>,
    /// Run time the kernel measured.
    pub duration: std::time::Duration,
}

impl Fixture {
    pub fn try_run(&self, frame: &[u8], ingress: u32) -> std::io::Result<Outcome> {
        let before = self.dp.reason_counters().unwrap();
        let mut out = vec![0u8; frame.len() + 512];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let result = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map_err(std::io::Error::other)?;
        out.truncate(result.data_size_out as usize);
        let after = self.dp.reason_counters().unwrap();
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter(|(_, (b, a))| a.packets != b.packets)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one reason counter moves per packet: {moved:?}"
        );
        let reason = moved[0];
        let (b, a) = (&before[reason as usize], &after[reason as usize]);
        assert_eq!(a.packets - b.packets, 1);
        assert_eq!(
            a.bytes - b.bytes,
            frame.len() as u64,
            "{reason:?} counts the frame's bytes"
        );
        assert_ne!(result.return_value, XDP_ABORTED, "XDP_ABORTED ({reason:?})");
        Ok(Outcome {
            action: result.return_value,
            reason,
            out,
            duration: result.duration,
        })
    }

    pub fn run(&self, frame: &[u8], ingress: u32) -> Outcome {
        self.try_run(frame, ingress).expect("BPF_PROG_TEST_RUN")
    }

    /// The fixture's namespace (to change its links, e.g. an MTU).
    pub fn netns(&self) -> &Netns {
        &self._ns
    }

    /// How often `event` happened so far.
    pub fn event_count(&self, event: lb_ebpf::Event) -> u64 {
        self.dp.event_counters().unwrap()[event as usize]
    }

    /// A handle on the fixture's namespace, for threads of a test that run
    /// the program themselves: they must [`enter_handle`] it first.
    pub fn netns_handle(&self) -> File {
        File::open(format!("/run/netns/{}", self._ns.name())).unwrap()
    }

    /// The backend the userspace ring says a client tuple goes to.
    pub fn expected_backend(
        &self,
        vip: usize,
        client: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
    ) -> (Ipv4Addr, u16) {
        self.backend_picker(vip)(client, dst)
    }

    /// [`Fixture::expected_backend`] for many tuples: the ring is built once.
    pub fn backend_picker(
        &self,
        vip: usize,
    ) -> impl Fn((Ipv4Addr, u16), (Ipv4Addr, u16)) -> (Ipv4Addr, u16) + '_ {
        let v = &self.balancer.vips()[vip];
        let ring = ring_for(&v.backends, RING).unwrap();
        move |client, dst| Self::pick(v, &ring, client, dst)
    }

    fn pick(
        v: &lb_user::balancer::VipEntry,
        ring: &[u32],
        client: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
    ) -> (Ipv4Addr, u16) {
        let h = ring_hash(
            addr_be(client.0),
            addr_be(dst.0),
            client.1.to_be(),
            dst.1.to_be(),
            v.flags(),
        );
        let id = ring[(h % RING) as usize];
        let b = v.backends.iter().find(|b| b.id == id).unwrap();
        (b.address, b.port)
    }
}

/// The first NAT port candidate for a client tuple (with the default range).
pub fn expected_nat_port(client: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> u16 {
    let h = flow_hash(
        addr_be(client.0),
        addr_be(dst.0),
        client.1.to_be(),
        dst.1.to_be(),
        IPPROTO_TCP,
        SEED_NAT_PORT,
    );
    (20000 + h % 40000) as u16
}
