//! Loading, pinning and attaching the XDP program, and typed access to its
//! maps. The balancer logic talks to the maps through the [`Maps`] trait so it
//! can be tested without a kernel.

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_ebpf::{map, prog, Backend, Config, Counters, Flow, FlowKey, NatEntry, VipKey, VipValue};

mod table;
use table::{Slot as _, TableView};

mod journal;
mod settings;
pub use journal::Journal;
pub use settings::{kernel_config, load_options, vip_filter, KernelState};

/// What the balancer needs from the kernel side. Every write has a read
/// that gives back what it replaces, so that a change made of several
/// writes can be undone whole ([`Journal`]).
pub trait Maps {
    fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<()>;
    fn remove_vip(&mut self, key: VipKey) -> Result<()>;
    /// The VIP's entry, if the kernel has one.
    fn vip(&self, key: VipKey) -> Result<Option<VipValue>>;
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    fn backend(&self, id: u32) -> Result<Backend>;
    /// Writes one ring slot of a VIP (`ring.len()` is the ring size).
    fn write_ring(&mut self, vip_id: u32, slot: u32, ring: &[u32]) -> Result<()>;
    /// Reads one ring slot of a VIP back.
    fn ring(&self, vip_id: u32, slot: u32) -> Result<Vec<u32>>;
    /// The global settings the program runs with ([`map::CONFIG`]).
    fn read_config(&self) -> Result<Config>;
    fn write_config(&mut self, config: &Config) -> Result<()>;
    fn vip_counters(&self, vip_id: u32) -> Result<Counters>;
    fn backend_counters(&self, backend_id: u32) -> Result<Counters>;
    /// Zeroes a backend's counters (its id is being given to a new backend).
    fn reset_backend_counters(&mut self, backend_id: u32) -> Result<()>;
    /// Zeroes a VIP's counters (its id is being given to a new VIP).
    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()>;
}

/// Sizes chosen at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub ring_size: u32,
    pub max_vips: u32,
    pub max_flows: u32,
}

/// The loaded object and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipValue>,
    backends: Array<MapData, Backend>,
    /// Owns `LB_RINGS`' fd; rings are written through `ring_memory`.
    _rings: Array<MapData, u32>,
    config: Array<MapData, Config>,
    tx_ports: DevMapHash<MapData>,
    vip_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, Counters>,
    events: PerCpuArray<MapData, u64>,
    flows: Array<MapData, Flow>,
    nat: Array<MapData, NatEntry>,
    ring_size: u32,
    /// Where the maps, program and links are pinned (None: nothing pinned).
    pin_dir: Option<PathBuf>,
    /// The maps were already pinned by an earlier lbd and have been reopened.
    adopted: bool,
    /// Attached interfaces, with their links when pinned.
    attached: Vec<(String, Option<FdLink>)>,
    /// The program's aya-log records (rare events: failed map updates,
    /// refused redirects), until the daemon takes it.
    logger: Option<KernelLogger>,
    /// `LB_RINGS` mapped into this process.
    ring_memory: RingMemory,
    /// Directories `load` created for the pins (the pin directory and any
    /// missing parents), outermost first.
    created_dirs: Vec<PathBuf>,
}

/// The memory-mapped ring array (`BPF_F_MMAPABLE`). The kernel stores array
/// values 8-byte aligned, so each `u32` entry takes 8 bytes of the mapping.
struct RingMemory {
    ptr: *mut u32,
    entries: usize,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only written through
// `&mut Dataplane`; the kernel side synchronises through the VIP flip.
unsafe impl Send for RingMemory {}

/// Bytes per element of a kernel `ARRAY` of `u32` (values are 8-byte aligned).
const ARRAY_STRIDE: usize = 8;

impl RingMemory {
    fn map(data: &MapData) -> Result<RingMemory> {
        let entries = data.info()?.max_entries() as usize;
        let (ptr, len) = table::map_shared(data, map::RINGS, entries * ARRAY_STRIDE, true)?;
        Ok(RingMemory {
            ptr: ptr.cast(),
            entries,
            len,
        })
    }

    fn read(&self, offset: usize, len: usize) -> Result<Vec<u32>> {
        if offset + len > self.entries {
            bail!("ring read beyond {} entries", self.entries);
        }
        let words = ARRAY_STRIDE / 4;
        Ok((0..len)
            // SAFETY: bounds checked above, as in `write`.
            .map(|i| unsafe { self.ptr.add((offset + i) * words).read() })
            .collect())
    }

    fn write(&mut self, offset: usize, ring: &[u32]) -> Result<()> {
        if offset + ring.len() > self.entries {
            bail!("ring write beyond {} entries", self.entries);
        }
        let words = ARRAY_STRIDE / 4;
        for (i, id) in ring.iter().enumerate() {
            // SAFETY: bounds checked above; the mapping holds `entries`
            // elements of ARRAY_STRIDE bytes, and nothing else in this
            // process aliases it.
            unsafe { self.ptr.add((offset + i) * words).write(*id) };
        }
        Ok(())
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Reader of the XDP program's log records, forwarding them to `log` (and so
/// to `tracing`).
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

fn remove_stale_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "replaced a pin left by an earlier run");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Refuses to reuse pinned maps sized for another configuration.
fn check_pinned_sizes(dir: &Path, opts: &LoadOptions, rings: u32) -> Result<()> {
    for name in [map::FLOWS, map::NAT] {
        let path = dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ty = info.map_type()?;
        if ty != aya::maps::MapType::Array {
            bail!(
                "the data plane pinned in {} was made by an older lbd ({name} is a {ty:?}; this \
                 lbd keeps its tables in arrays and would misread it). Stop it cleanly with the \
                 lbd that started it (SIGTERM), or detach it and remove the pins (`rm -r {}`), \
                 then start again",
                dir.display(),
                dir.display()
            );
        }
    }
    for (name, want, key) in [
        (
            map::FLOWS,
            lb_ebpf::flow_slots_for(opts.max_flows),
            "dataplane.max_flows",
        ),
        (
            map::NAT,
            lb_ebpf::nat_slots_for(opts.max_flows),
            "dataplane.max_flows",
        ),
        (
            map::RINGS,
            rings,
            "dataplane.ring_size / dataplane.max_vips",
        ),
    ] {
        let path = dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if info.max_entries() != want {
            bail!(
                "the data plane pinned in {} was created with other sizes ({name}: {} entries, \
                 this configuration needs {want}; see {key}). Stop the running data plane \
                 cleanly first (SIGTERM to lbd, or remove {}) to start with new sizes",
                dir.display(),
                info.max_entries(),
                dir.display()
            );
        }
    }
    // Maps whose layout the program and lbd's types assume: pinned by an lbd
    // of another layout (an older `Config`, fewer reasons), they would fail
    // the verifier with a dump, or be misread.
    for (name, value_size, entries) in [
        (map::CONFIG, std::mem::size_of::<Config>(), 1),
        (
            map::REASONS,
            std::mem::size_of::<Counters>(),
            lb_ebpf::REASON_COUNT,
        ),
        (
            map::EVENTS,
            std::mem::size_of::<u64>(),
            lb_ebpf::EVENT_COUNT,
        ),
    ] {
        let path = dir.join(name);
        if name == map::EVENTS && !path.exists() {
            // New in this version: created next to the adopted maps.
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if info.value_size() as usize != value_size || info.max_entries() != entries {
            bail!(
                "the data plane pinned in {} was made by another version of lbd ({name} holds \
                 {} values of {} bytes, this lbd's {entries} of {value_size}). Stop it \
                 cleanly with the lbd that started it (SIGTERM), or detach it and remove the \
                 pins (`rm -r {}`), then start again",
                dir.display(),
                info.max_entries(),
                info.value_size(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Loads `p`, trying again when the verifier gave up with EAGAIN: it does
/// when a signal (or other task work) is pending for the loading thread, as
/// it may be in a busy process. libbpf retries the same way.
pub fn load_retrying(p: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut attempts = 0;
    loop {
        match p.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 30 =>
            {
                // On a busy host the verifier of a large program can be
                // interrupted several times in a row; back off a little.
                attempts += 1;
                tracing::debug!(attempts, "the verifier was interrupted; loading again");
                std::thread::sleep(std::time::Duration::from_millis(10 * attempts as u64));
            }
            other => return other,
        }
    }
}

fn sum(values: aya::maps::PerCpuValues<Counters>) -> Counters {
    let mut total = Counters::default();
    for v in values.iter() {
        total.add(v);
    }
    total
}

/// See [`Dataplane::table_counter`].
pub struct TableCounter {
    flows: TableView<Flow>,
    nat: TableView<NatEntry>,
    config: Config,
    now: u64,
}

impl TableCounter {
    /// Flows tracked: flow table entries not expired.
    pub fn flows(&self) -> usize {
        self.flows.count(|f| {
            f.occupied()
                && !lb_ebpf::entry_expired(&self.config, &f.close, f.last_seen_ns, self.now)
        })
    }

    /// NAT table entries not expired.
    pub fn nat_entries(&self) -> usize {
        self.nat.count(|e| {
            e.occupied()
                && !lb_ebpf::entry_expired(&self.config, &e.close, e.last_seen_ns, self.now)
        })
    }
}

impl Dataplane {
    /// Loads the object (programs are verified and loaded, nothing attached).
    ///
    /// With `pin_dir`, every map lives pinned there: maps an earlier lbd left
    /// pinned are reopened with their contents (a hitless restart, see
    /// [`Dataplane::adopted`]), others are created and pinned. The program is
    /// pinned there too, for inspection.
    pub fn load(object: &[u8], opts: &LoadOptions, pin_dir: Option<&Path>) -> Result<Dataplane> {
        let rings = opts
            .max_vips
            .checked_mul(2 * opts.ring_size)
            .context("max_vips * 2 * ring_size overflows")?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::FLOWS, lb_ebpf::flow_slots_for(opts.max_flows))
            .map_max_entries(map::NAT, lb_ebpf::nat_slots_for(opts.max_flows))
            .map_max_entries(map::RINGS, rings);
        let mut adopted = false;
        let mut created = Vec::new();
        if let Some(dir) = pin_dir {
            created = crate::state::create_dirs(dir, 0o700)
                .with_context(|| format!("creating {}", dir.display()))?;
            // Pins another user could have placed are not adopted.
            if let Err(e) = crate::state::check_trusted_dir(dir) {
                crate::state::remove_created_dirs(&created);
                return Err(e).context("dataplane.pin_path");
            }
            adopted = dir.join(map::VIPS).exists();
            if adopted {
                check_pinned_sizes(dir, opts, rings)?;
            }
            for name in map::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut loaded = Self::finish_load(loader, object, opts, pin_dir, adopted);
        match &mut loaded {
            Ok(dp) => dp.created_dirs = created,
            Err(_) if !adopted => {
                // The maps this attempt created and pinned would otherwise pass
                // for a running data plane at the next start.
                if let Some(dir) = pin_dir {
                    for name in map::ALL.iter().chain([&prog::LB]) {
                        let _ = fs::remove_file(dir.join(name));
                    }
                    let _ = fs::remove_dir(dir);
                }
                crate::state::remove_created_dirs(&created);
            }
            Err(_) => {}
        }
        loaded
    }

    fn finish_load(
        mut loader: EbpfLoader<'_>,
        object: &[u8],
        opts: &LoadOptions,
        pin_dir: Option<&Path>,
        adopted: bool,
    ) -> Result<Dataplane> {
        let mut ebpf = loader
            .load(object)
            .context("loading the XDP object into the kernel (are you root, with CAP_BPF and CAP_NET_ADMIN?)")?;
        for name in prog::ALL {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the XDP object has no program {name}"))?
                .try_into()?;
            load_retrying(p).with_context(|| format!("the kernel refused program {name}"))?;
        }
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "kernel-side log records will not be shown");
                None
            }
        };
        if let Some(dir) = pin_dir {
            let path = dir.join(prog::LB);
            remove_stale_pin(&path)?;
            let p: &mut Xdp = ebpf
                .program_mut(prog::LB)
                .expect("loaded above")
                .try_into()?;
            p.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
        };
        let vips = take(map::VIPS)?.try_into()?;
        let backends = take(map::BACKENDS)?.try_into()?;
        let rings: Array<MapData, u32> = take(map::RINGS)?.try_into()?;
        let ring_memory = RingMemory::map(aya::maps::IterableMap::map(&rings))?;
        let flows = take(map::FLOWS)?.try_into()?;
        let nat = take(map::NAT)?.try_into()?;
        let config = take(map::CONFIG)?.try_into()?;
        let tx_ports = take(map::TX_PORTS)?.try_into()?;
        let vip_stats = take(map::VIP_STATS)?.try_into()?;
        let backend_stats = take(map::BACKEND_STATS)?.try_into()?;
        let reasons = take(map::REASONS)?.try_into()?;
        let events = take(map::EVENTS)?.try_into()?;
        // Written and read by the program only.
        let _backend_hops = take(map::BACKEND_HOPS)?;
        Ok(Dataplane {
            ebpf,
            vips,
            backends,
            _rings: rings,
            config,
            tx_ports,
            vip_stats,
            backend_stats,
            reasons,
            events,
            flows,
            nat,
            ring_size: opts.ring_size,
            pin_dir: pin_dir.map(Path::to_path_buf),
            adopted,
            attached: Vec::new(),
            logger,
            ring_memory,
            created_dirs: Vec::new(),
        })
    }

    /// The directories this load created for the pins, outermost first
    /// (removed, when empty, at a clean stop: see [`crate::state`]).
    pub fn created_dirs(&self) -> &[PathBuf] {
        &self.created_dirs
    }

    /// The reader of the program's log records (once).
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// The maps were left pinned by an earlier lbd and reopened with their
    /// contents: flows, NAT entries, rings and counters carry on.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The VIPs and (present) backend slots the kernel has, for adoption.
    pub fn kernel_state(&self) -> Result<KernelState> {
        let mut state = KernelState::default();
        for item in self.vips.iter() {
            state.vips.push(item?);
        }
        for id in 0..lb_ebpf::MAX_BACKENDS {
            let b = self.backends.get(&id, 0)?;
            if b.flags & lb_ebpf::BACKEND_F_PRESENT != 0 {
                state.backends.push((id, b));
            }
        }
        Ok(state)
    }

    /// The load-balancer program (for `BPF_PROG_TEST_RUN` in tests).
    pub fn program(&self) -> &Xdp {
        self.program_named(prog::LB)
    }

    /// Any of the object's programs (`lb_ebpf::prog::*`), loaded but not attached.
    pub fn program_named(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    /// Attaches the load balancer to `interface`, native mode unless `generic`.
    ///
    /// When pinning, the XDP link is pinned as `link_<interface>` so it (and
    /// forwarding) outlives this process; a link an earlier lbd pinned is
    /// taken over and gets this program atomically, without a gap.
    pub fn attach(&mut self, interface: &str, generic: bool) -> Result<()> {
        let ifindex = ifindex(interface)?;
        let mode = if generic {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        let link_path = self
            .pin_dir
            .as_ref()
            .map(|d| d.join(format!("link_{interface}")));
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog::LB)
            .expect("checked at load")
            .try_into()?;
        let link = match &link_path {
            Some(path) if path.exists() => {
                let pinned = PinnedLink::from_pin(path)
                    .with_context(|| format!("opening the pinned link {}", path.display()))?;
                let old: XdpLink = FdLink::from(pinned)
                    .try_into()
                    .context("the pinned link is not an XDP link")?;
                let id = p
                    .attach_to_link(old)
                    .with_context(|| format!("replacing the program on {interface}"))?;
                Some(FdLink::try_from(p.take_link(id)?)?)
            }
            _ => {
                let id = match p.attach_to_if_index(ifindex, mode) {
                    Ok(id) => id,
                    Err(e) if generic => {
                        bail!("attaching XDP (generic mode) to {interface} failed: {e}")
                    }
                    Err(e) => bail!(
                        "attaching XDP in native mode to {interface} failed: {e}\n  \
                         the driver may lack native XDP support, or the MTU may exceed its XDP limit \
                         (ENA: at most 3498 bytes, and it needs free queues for XDP_TX);\n  \
                         set dataplane.xdp_mode = \"generic\" to run in generic mode instead"
                    ),
                };
                match &link_path {
                    Some(path) => {
                        let fd = FdLink::try_from(p.take_link(id)?).context(
                            "this kernel attached XDP without a bpf_link, which cannot be pinned",
                        )?;
                        let pinned = fd
                            .pin(path)
                            .with_context(|| format!("pinning {}", path.display()))?;
                        Some(FdLink::from(pinned))
                    }
                    None => None,
                }
            }
        };
        self.add_tx_port(ifindex)
            .with_context(|| format!("adding {interface} to {}", map::TX_PORTS))?;
        self.attached.push((interface.to_string(), link));
        Ok(())
    }

    /// Lets the program `XDP_REDIRECT` to `ifindex` (done by `attach`).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .context("updating the devmap")
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> Vec<String> {
        self.attached.iter().map(|(i, _)| i.clone()).collect()
    }

    /// Detaches the program from interfaces an earlier lbd attached it to
    /// that are not in `keep` (removed from the configuration since):
    /// removing a link's pin destroys it. Returns their names.
    pub fn detach_others(&mut self, keep: &[String]) -> Result<Vec<String>> {
        let Some(dir) = &self.pin_dir else {
            return Ok(Vec::new());
        };
        let mut gone = Vec::new();
        let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(ifname) = name.strip_prefix("link_") else {
                continue;
            };
            if keep.iter().any(|k| k == ifname) {
                continue;
            }
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            gone.push(ifname.to_owned());
        }
        Ok(gone)
    }

    /// A clean stop: detaches from every interface and removes every pin.
    /// Afterwards this value only holds file descriptors of objects that are
    /// gone once it is dropped.
    pub fn shutdown(&mut self) -> Result<()> {
        let mut first_error = None;
        for (ifname, link) in self.attached.drain(..) {
            if let (Some(dir), Some(link)) = (&self.pin_dir, link) {
                // Without its pin, dropping the last fd destroys the link.
                let path = dir.join(format!("link_{ifname}"));
                if let Err(e) = fs::remove_file(&path) {
                    first_error.get_or_insert(anyhow!("removing {}: {e}", path.display()));
                }
                drop(link);
            }
        }
        if let Ok(p) = self
            .ebpf
            .program_mut(prog::LB)
            .expect("checked at load")
            .try_into()
        {
            let p: &mut Xdp = p;
            // Drops the links this program still owns (unpinned attachments).
            let _ = p.unload();
        }
        // Links pinned by an earlier lbd on interfaces not attached by this
        // one (normally none: adoption detaches them).
        if let Err(e) = self.detach_others(&[]) {
            first_error.get_or_insert(e);
        }
        if let Some(dir) = self.pin_dir.take() {
            let dir = &dir;
            let mut names: Vec<&str> = map::ALL.to_vec();
            names.push(prog::LB);
            for name in names {
                let path = dir.join(name);
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        first_error.get_or_insert(anyhow!("removing {}: {e}", path.display()));
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Exits leaving the data plane running: pinned links keep the program
    /// attached and pinned maps keep their contents for the next lbd.
    pub fn release(self) {
        drop(self);
    }

    /// The global settings the program runs with now.
    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&0, 0)
            .with_context(|| format!("reading {}", map::CONFIG))
    }

    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .with_context(|| format!("writing {}", map::CONFIG))
    }

    /// Counters per verdict reason, summed over CPUs, indexed by `Reason as usize`.
    pub fn reason_counters(&self) -> Result<Vec<Counters>> {
        (0..lb_ebpf::REASON_COUNT)
            .map(|i| Ok(sum(self.reasons.get(&i, 0)?)))
            .collect()
    }

    /// Counters per event, summed over CPUs, indexed by `Event as usize`.
    pub fn event_counters(&self) -> Result<Vec<u64>> {
        (0..lb_ebpf::EVENT_COUNT)
            .map(|i| Ok(self.events.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// Flows tracked, expired ones left out (walks the table: for status,
    /// not hot paths).
    pub fn flow_count(&self) -> usize {
        self.table_counter().map(|c| c.flows()).unwrap_or(0)
    }

    /// NAT entries not expired.
    pub fn nat_count(&self) -> usize {
        self.table_counter().map(|c| c.nat_entries()).unwrap_or(0)
    }

    /// Views of their own on the flow and NAT tables, for counting their
    /// live entries (a walk of up to millions of slots) without holding
    /// whatever guards this `Dataplane`. Entries are judged at the time this
    /// is called, by the running configuration's timeouts.
    pub fn table_counter(&self) -> Result<TableCounter> {
        use aya::maps::IterableMap;
        Ok(TableCounter {
            flows: TableView::map(IterableMap::map(&self.flows), map::FLOWS)?,
            nat: TableView::map(IterableMap::map(&self.nat), map::NAT)?,
            config: self.config()?,
            now: self.now()?,
        })
    }

    /// The program's time, which the tables' entries are stamped with
    /// (`jiffies` × `ns_per_tick`), read by running `prog::CLOCK`.
    pub fn now(&self) -> Result<u64> {
        use aya::programs::TestRun as _;
        let mut out = [0u8; 64];
        let r = self
            .program_named(prog::CLOCK)
            .test_run(aya::programs::TestRunOptions {
                data_in: Some(&[0u8; 64]),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .context("running the clock program")?;
        const XDP_PASS: u32 = 2;
        if r.return_value != XDP_PASS {
            bail!("the clock program failed ({})", r.return_value);
        }
        Ok(u64::from_ne_bytes(out[..8].try_into().expect("8 bytes")))
    }

    /// Where a client-side tuple's flow entry is, if it has one.
    fn flow_index(&self, key: &FlowKey) -> Option<u32> {
        let buckets = self.flows.len() / lb_ebpf::FLOW_WAYS;
        let base = lb_ebpf::flow_bucket(key, buckets) * lb_ebpf::FLOW_WAYS;
        (base..base + lb_ebpf::FLOW_WAYS)
            .find(|&i| self.flows.get(&i, 0).is_ok_and(|f| f.key == *key))
    }

    /// Looks up a flow by its client-side 5-tuple (tests and debugging).
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(&self.flow_index(key)?, 0).ok()
    }

    /// Overwrites the flow entry of `key` (tests reproducing a state, and
    /// debugging); its `key` and `gen` are kept.
    pub fn put_flow(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        let i = self
            .flow_index(key)
            .with_context(|| format!("no entry for {key:?} in {}", map::FLOWS))?;
        let old = self.flows.get(&i, 0)?;
        let new = Flow {
            gen: old.gen,
            key: old.key,
            ..*flow
        };
        self.flows
            .set(i, new, 0)
            .with_context(|| format!("writing {}", map::FLOWS))
    }

    /// Looks up a NAT entry by its backend-side 5-tuple (backend -> NAT
    /// address and port).
    pub fn nat_entry(&self, key: &FlowKey) -> Option<NatEntry> {
        let buckets = self.nat.len() / lb_ebpf::NAT_WAYS;
        let base = lb_ebpf::nat_bucket(key.src_addr_be, key.src_port_be, key.dst_port_be, buckets)
            * lb_ebpf::NAT_WAYS;
        (base..base + lb_ebpf::NAT_WAYS)
            .filter_map(|i| self.nat.get(&i, 0).ok())
            .find(|e| {
                e.backend_addr_be == key.src_addr_be
                    && e.backend_port_be == key.src_port_be
                    && e.nat_port_be == key.dst_port_be
            })
    }

    /// Kernel memory charged to the flow and NAT tables, in bytes (from
    /// `/proc/self/fdinfo`, which reports what the map allocated).
    pub fn flow_table_memory(&self) -> Result<u64> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let mut total = 0;
        for data in [IterableMap::map(&self.flows), IterableMap::map(&self.nat)] {
            let fd = data.fd().as_fd().as_raw_fd();
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            let memlock = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .context("no memlock in fdinfo")?;
            total += memlock.trim().parse::<u64>()?;
        }
        Ok(total)
    }
}

impl Maps for Dataplane {
    fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<()> {
        self.vips
            .insert(key, value, 0)
            .with_context(|| format!("writing {}", map::VIPS))
    }

    fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        self.vips
            .remove(&key)
            .with_context(|| format!("removing from {}", map::VIPS))
    }

    fn vip(&self, key: VipKey) -> Result<Option<VipValue>> {
        match self.vips.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", map::VIPS)),
        }
    }

    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .with_context(|| format!("writing {}[{id}]", map::BACKENDS))
    }

    fn backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(&id, 0)
            .with_context(|| format!("reading {}[{id}]", map::BACKENDS))
    }

    fn ring(&self, vip_id: u32, slot: u32) -> Result<Vec<u32>> {
        let base = (vip_id * 2 + slot) as usize * self.ring_size as usize;
        self.ring_memory.read(base, self.ring_size as usize)
    }

    fn read_config(&self) -> Result<Config> {
        self.config()
    }

    fn write_config(&mut self, config: &Config) -> Result<()> {
        self.set_config(config)
    }

    fn write_ring(&mut self, vip_id: u32, slot: u32, ring: &[u32]) -> Result<()> {
        if ring.len() != self.ring_size as usize {
            bail!(
                "ring of {} entries, expected {}",
                ring.len(),
                self.ring_size
            );
        }
        let base = (vip_id * 2 + slot) as usize * self.ring_size as usize;
        self.ring_memory.write(base, ring)
    }

    fn vip_counters(&self, vip_id: u32) -> Result<Counters> {
        Ok(sum(self.vip_stats.get(&vip_id, 0)?))
    }

    fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        Ok(sum(self.backend_stats.get(&backend_id, 0)?))
    }

    fn reset_backend_counters(&mut self, backend_id: u32) -> Result<()> {
        self.backend_stats
            .set(backend_id, zeroed_per_cpu()?, 0)
            .with_context(|| format!("resetting {}[{backend_id}]", map::BACKEND_STATS))
    }

    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()> {
        self.vip_stats
            .set(vip_id, zeroed_per_cpu()?, 0)
            .with_context(|| format!("resetting {}[{vip_id}]", map::VIP_STATS))
    }
}

fn zeroed_per_cpu() -> Result<aya::maps::PerCpuValues<Counters>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(aya::maps::PerCpuValues::try_from(vec![
        Counters::default();
        cpus
    ])?)
}

/// The interface index of `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(idx)
}

/// Network-order u32 of an address, as the XDP program compares it.
pub fn addr_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Address from its network-order u32.
pub fn addr_from_be(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}
