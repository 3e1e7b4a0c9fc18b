//! The control plane's model of VIPs and backends, and how it reaches the
//! kernel: ids, Maglev rings and the double-buffered ring swap. No I/O of its
//! own — everything goes through [`Maps`], so it is tested with a fake.
//!
//! A backend is in its VIP's ring when it is enabled (not drained) and healthy.
//! Its slot in the kernel's backend table says whether flows already pinned to
//! it may stay (`BACKEND_F_IN_USE`: healthy, possibly drained) or must move at
//! their next packet (down or removed). The kernel tables hold the whole
//! backend set, weights and states included, so a restarted lbd can adopt a
//! running data plane exactly ([`Balancer::adopt`]).

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::Result;
use lb_ebpf::{
    Backend, VipKey, VipValue, BACKEND_F_DOWN, BACKEND_F_DRAINED, BACKEND_F_IN_USE,
    BACKEND_F_PRESENT, IPPROTO_TCP, MAX_BACKENDS, NO_BACKEND, VIP_F_HASH_SOURCE, VIP_F_RESET_EMPTY,
};

use crate::{
    config::{self, BackendConfig, Config, HealthCheck, OnEmpty, VipHash},
    dataplane::{addr_be, addr_from_be, Journal, KernelState, Maps},
    maglev::{self, RingBackend},
};

/// Why the balancer refused a change, or could not make it. In every case
/// nothing changed: neither the model nor the kernel tables.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("no VIP named {name:?}")]
    NoVip { name: String },
    #[error("{backend} is not a backend of {vip}")]
    NoBackend { vip: String, backend: SocketAddrV4 },
    #[error("{backend} is already a backend of {vip}")]
    Duplicate { vip: String, backend: SocketAddrV4 },
    /// A value out of range, or a rule broken.
    #[error("{0}")]
    Invalid(String),
    /// Not enough free backend or VIP slots.
    #[error("{0}")]
    NoRoom(String),
    /// A reload changes settings only a restart can.
    #[error("{} changed: restart lbd to apply (nothing was changed)", .keys.join(", "))]
    RestartNeeded { keys: Vec<&'static str> },
    /// A kernel write failed; every write of the change was undone.
    #[error("{0}")]
    Kernel(String),
    /// A kernel write failed and undoing the change's writes failed too.
    #[error(
        "{failed}; undoing its {writes} kernel writes failed too ({undo}): the kernel tables \
         may differ from lbd's model until the next reload"
    )]
    KernelUndo {
        failed: Box<BalancerError>,
        writes: usize,
        undo: String,
    },
}

impl BalancerError {
    /// The VIP or backend named does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BalancerError::NoVip { .. } | BalancerError::NoBackend { .. }
        )
    }
}

/// Operator's choice for a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Enabled,
    /// No new flows; existing flows stay until they end.
    Drained,
}

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendEntry {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub admin: Admin,
    /// Health verdict (true: up).
    pub up: bool,
    pub check: HealthCheck,
}

impl BackendEntry {
    fn identity(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// Takes new flows.
    pub fn in_ring(&self) -> bool {
        self.admin == Admin::Enabled && self.up
    }

    /// Its address and port.
    pub fn socket(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    fn kernel_value(&self, vip_id: u32) -> Backend {
        let mut flags = BACKEND_F_PRESENT;
        flags |= if self.up {
            BACKEND_F_IN_USE
        } else {
            BACKEND_F_DOWN
        };
        if self.admin == Admin::Drained {
            flags |= BACKEND_F_DRAINED;
        }
        Backend {
            addr_be: addr_be(self.address),
            port_be: self.port.to_be(),
            weight: self.weight.min(u16::MAX as u32) as u16,
            vip_id,
            flags,
        }
    }
}

/// One VIP and the ring slot that is live in the kernel.
#[derive(Clone, Debug)]
pub struct VipEntry {
    pub id: u32,
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub on_empty: OnEmpty,
    /// What picks a new connection's backend.
    pub hash: VipHash,
    /// Check for backends added at run time.
    pub default_check: HealthCheck,
    pub live_slot: u32,
    pub backends: Vec<BackendEntry>,
}

impl VipEntry {
    pub fn key(&self) -> VipKey {
        vip_key(self.address, self.port)
    }

    fn value(&self, slot: u32) -> VipValue {
        VipValue {
            id: self.id,
            ring_slot: slot,
            flags: self.flags(),
            _pad: 0,
        }
    }

    /// The VIP's `VIP_F_*` flags, as the kernel has them.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.on_empty == OnEmpty::Reset {
            flags |= VIP_F_RESET_EMPTY;
        }
        if self.hash == VipHash::Source {
            flags |= VIP_F_HASH_SOURCE;
        }
        flags
    }

    fn find(&self, address: Ipv4Addr, port: u16) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.address == address && b.port == port)
    }

    pub fn healthy_backends(&self) -> usize {
        self.backends.iter().filter(|b| b.in_ring()).count()
    }

    /// The digest of the VIP's live Maglev ring ([`maglev::ring_digest`]):
    /// equal on two load balancers exactly when they build the same ring.
    pub fn ring_digest(&self, ring_size: u32) -> String {
        maglev::ring_digest(&ring_input(&self.backends), ring_size)
    }
}

pub fn vip_key(address: Ipv4Addr, port: u16) -> VipKey {
    VipKey {
        addr_be: addr_be(address),
        port_be: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadChanges {
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_changed: usize,
}

/// All VIPs, with backend and VIP id allocation.
#[derive(Clone, Debug)]
pub struct Balancer {
    ring_size: u32,
    vips: Vec<VipEntry>,
    /// Unused backend ids, least recently freed first: a removed backend's id
    /// is reused as late as possible, so replies still in flight from its
    /// connections are not counted under a new backend.
    free_ids: VecDeque<u32>,
    free_vip_ids: VecDeque<u32>,
    /// The load balancer's own NAT addresses, which no backend may have.
    nat_sources: Vec<Ipv4Addr>,
}

fn entry_from_config(id: u32, b: &BackendConfig) -> BackendEntry {
    BackendEntry {
        id,
        address: b.address,
        port: b.port,
        weight: b.weight,
        admin: Admin::Enabled,
        up: b.health.initial_up || b.health.kind == config::CheckKind::None,
        check: b.health.clone(),
    }
}

/// The configured VIP `nv` lists backend `b` (by address and port).
fn listed_in(nv: &config::Vip, b: &BackendEntry) -> bool {
    nv.backends
        .iter()
        .any(|c| c.address == b.address && c.port == b.port)
}

impl Balancer {
    fn empty(cfg: &Config) -> Balancer {
        Balancer {
            ring_size: cfg.dataplane.ring_size,
            vips: Vec::new(),
            free_ids: (0..MAX_BACKENDS).collect(),
            free_vip_ids: (0..cfg.dataplane.max_vips).collect(),
            nat_sources: vec![cfg.nat.source],
        }
    }

    fn vip_from_config(&mut self, v: &config::Vip) -> VipEntry {
        let id = self
            .free_vip_ids
            .pop_front()
            .expect("config validation bounds the VIP count");
        let backends = v
            .backends
            .iter()
            .map(|b| {
                let id = self
                    .free_ids
                    .pop_front()
                    .expect("config validation bounds the backend count");
                entry_from_config(id, b)
            })
            .collect();
        VipEntry {
            id,
            name: v.name.clone(),
            address: v.address,
            port: v.port,
            on_empty: v.on_empty,
            hash: v.hash,
            default_check: v.health.clone(),
            live_slot: 0,
            backends,
        }
    }

    /// The model of a validated configuration; nothing is written yet.
    pub fn new(cfg: &Config) -> Balancer {
        let mut b = Balancer::empty(cfg);
        for v in &cfg.vips {
            let entry = b.vip_from_config(v);
            b.vips.push(entry);
        }
        b
    }

    /// The model of a data plane left running by an earlier lbd: VIPs keep
    /// their ids and live ring slots, and backends their ids, weights and
    /// states as the kernel has them (run-time changes included), so nothing
    /// that forwards changes. VIPs of `cfg` the kernel lacks are added and
    /// kernel VIPs `cfg` lacks are removed by the `install` that follows.
    pub fn adopt(cfg: &Config, kernel: &KernelState) -> Balancer {
        let mut b = Balancer::empty(cfg);
        let mut used_ids = Vec::new();
        let mut used_vip_ids = Vec::new();
        for v in &cfg.vips {
            let key = vip_key(v.address, v.port);
            let Some((_, value)) = kernel.vips.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            used_vip_ids.push(value.id);
            let backends = kernel
                .backends
                .iter()
                .filter(|(_, kb)| kb.vip_id == value.id && kb.flags & BACKEND_F_PRESENT != 0)
                .map(|(id, kb)| {
                    used_ids.push(*id);
                    let address = addr_from_be(kb.addr_be);
                    let port = u16::from_be(kb.port_be);
                    let check = v
                        .backends
                        .iter()
                        .find(|c| c.address == address && c.port == port)
                        .map(|c| c.health.clone())
                        .unwrap_or_else(|| v.health.clone());
                    BackendEntry {
                        id: *id,
                        address,
                        port,
                        weight: u32::from(kb.weight.max(1)),
                        admin: if kb.flags & BACKEND_F_DRAINED != 0 {
                            Admin::Drained
                        } else {
                            Admin::Enabled
                        },
                        up: kb.flags & BACKEND_F_DOWN == 0,
                        check,
                    }
                })
                .collect();
            b.vips.push(VipEntry {
                id: value.id,
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                on_empty: v.on_empty,
                hash: v.hash,
                default_check: v.health.clone(),
                live_slot: value.ring_slot & 1,
                backends,
            });
        }
        // Slots the kernel has but the new model does not use (a VIP the file
        // dropped) are released by `install`; reuse them last.
        let kernel_ids: Vec<u32> = kernel.backends.iter().map(|(id, _)| *id).collect();
        b.free_ids.retain(|id| !kernel_ids.contains(id));
        b.free_ids
            .extend(kernel_ids.iter().filter(|id| !used_ids.contains(id)));
        let kernel_vip_ids: Vec<u32> = kernel.vips.iter().map(|(_, v)| v.id).collect();
        b.free_vip_ids.retain(|id| !kernel_vip_ids.contains(id));
        b.free_vip_ids.extend(
            kernel_vip_ids
                .iter()
                .filter(|id| !used_vip_ids.contains(id)),
        );
        // VIPs the kernel did not have are created fresh.
        for v in &cfg.vips {
            if !b.vips.iter().any(|e| e.name == v.name) {
                let entry = b.vip_from_config(v);
                b.vips.push(entry);
            }
        }
        b
    }

    pub fn vips(&self) -> &[VipEntry] {
        &self.vips
    }

    /// Writes every backend, ring and VIP to the kernel, and removes kernel
    /// VIPs and backend slots the model does not have (left by an earlier run).
    pub fn install(&mut self, maps: &mut impl Maps, kernel: &KernelState) -> Result<()> {
        for i in 0..self.vips.len() {
            for b in &self.vips[i].backends {
                maps.set_backend(b.id, b.kernel_value(self.vips[i].id))?;
            }
            self.publish_ring(maps, i)?;
        }
        for (key, _) in &kernel.vips {
            if !self.vips.iter().any(|v| v.key() == *key) {
                maps.remove_vip(*key)?;
            }
        }
        for (id, kb) in &kernel.backends {
            let known = self
                .vips
                .iter()
                .any(|v| v.backends.iter().any(|b| b.id == *id));
            if !known {
                maps.set_backend(*id, Backend { flags: 0, ..*kb })?;
            }
        }
        Ok(())
    }

    /// Builds the VIP's ring from its current backends, writes it into the
    /// slot the kernel is not reading, then points the VIP at it.
    fn publish_ring(&mut self, maps: &mut impl Maps, vip_index: usize) -> Result<()> {
        let vip = &self.vips[vip_index];
        let ring = ring_for(&vip.backends, self.ring_size)?;
        let slot = vip.live_slot ^ 1;
        maps.write_ring(vip.id, slot, &ring)?;
        maps.set_vip(vip.key(), vip.value(slot))?;
        self.vips[vip_index].live_slot = slot;
        Ok(())
    }

    fn vip_index(&self, name: &str) -> Result<usize, BalancerError> {
        self.vips
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| BalancerError::NoVip { name: name.into() })
    }

    fn backend_index(
        &self,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<(usize, usize), BalancerError> {
        let i = self.vip_index(vip)?;
        let j = self.vips[i]
            .find(address, port)
            .ok_or_else(|| BalancerError::NoBackend {
                vip: vip.into(),
                backend: SocketAddrV4::new(address, port),
            })?;
        Ok((i, j))
    }

    /// Runs `change` as one transaction: its kernel writes go through a
    /// [`Journal`], and if it fails, every write it made is undone and the
    /// model is put back as it was, so the kernel and the model stay equal.
    fn transaction<M: Maps, T>(
        &mut self,
        maps: &mut M,
        change: impl FnOnce(&mut Balancer, &mut Journal<'_, M>) -> Result<T, BalancerError>,
    ) -> Result<T, BalancerError> {
        let before = self.clone();
        let mut journal = Journal::new(maps);
        match change(self, &mut journal) {
            Ok(t) => Ok(t),
            Err(e) => {
                *self = before;
                let writes = journal.len();
                match journal.rollback() {
                    Ok(()) => Err(e),
                    Err(undo) => {
                        let e = BalancerError::KernelUndo {
                            failed: Box::new(e),
                            writes,
                            undo: format!("{undo:#}"),
                        };
                        tracing::error!(error = %e, "a change failed and could not be undone");
                        Err(e)
                    }
                }
            }
        }
    }

    /// Applies a change to one backend: the slot first when the backend is
    /// joining the ring (so it exists before packets can reach it), the ring
    /// first when it is leaving (so no new flow picks it after its slot says
    /// its flows must move). All or nothing.
    fn update_backend(
        &mut self,
        maps: &mut impl Maps,
        i: usize,
        j: usize,
        change: impl FnOnce(&mut BackendEntry),
    ) -> Result<(), BalancerError> {
        self.transaction(maps, |b, maps| {
            let before = b.vips[i].backends[j].clone();
            change(&mut b.vips[i].backends[j]);
            let after = b.vips[i].backends[j].clone();
            let vip_id = b.vips[i].id;
            let ring_changes = before.in_ring() != after.in_ring() || before.weight != after.weight;
            if after.in_ring() {
                maps.set_backend(after.id, after.kernel_value(vip_id))
                    .map_err(internal)?;
                if ring_changes {
                    b.publish_ring(maps, i).map_err(internal)?;
                }
            } else {
                if ring_changes {
                    b.publish_ring(maps, i).map_err(internal)?;
                }
                maps.set_backend(after.id, after.kernel_value(vip_id))
                    .map_err(internal)?;
            }
            Ok(())
        })
    }

    /// Adds a backend to a VIP (health: the VIP's check, starting in its
    /// initial state) and publishes the new ring.
    pub fn add_backend(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
        weight: u32,
    ) -> Result<BackendEntry, BalancerError> {
        let i = self.vip_index(vip)?;
        let vip_addresses: Vec<Ipv4Addr> = self.vips.iter().map(|v| v.address).collect();
        if let Some(why) =
            config::backend_address_problem(address, &vip_addresses, &self.nat_sources)
        {
            return Err(BalancerError::Invalid(format!(
                "backend address {address} {why}"
            )));
        }
        if port == 0 {
            return Err(BalancerError::Invalid(
                "port 0 is not a valid backend port".into(),
            ));
        }
        check_weight(weight)?;
        let v = &self.vips[i];
        if v.find(address, port).is_some() {
            return Err(BalancerError::Duplicate {
                vip: vip.into(),
                backend: SocketAddrV4::new(address, port),
            });
        }
        if v.backends.len() + 1 >= self.ring_size as usize {
            return Err(BalancerError::Invalid(format!(
                "{vip} would have more backends than its ring has entries ({})",
                self.ring_size
            )));
        }
        let id = *self.free_ids.front().ok_or_else(|| {
            BalancerError::Invalid(format!("all {MAX_BACKENDS} backend slots are in use"))
        })?;
        let check = v.default_check.clone();
        let entry = BackendEntry {
            id,
            address,
            port,
            weight,
            admin: Admin::Enabled,
            up: check.initial_up || check.kind == config::CheckKind::None,
            check,
        };
        let vip_id = v.id;
        self.transaction(maps, |b, maps| {
            b.free_ids.pop_front();
            maps.reset_backend_counters(id).map_err(internal)?;
            maps.set_backend(id, entry.kernel_value(vip_id))
                .map_err(internal)?;
            b.vips[i].backends.push(entry.clone());
            b.publish_ring(maps, i).map_err(internal)?;
            Ok(entry)
        })
    }

    /// Removes a backend: the new ring goes live first, then the backend slot
    /// is cleared so flows still pinned to it are re-hashed at their next packet.
    pub fn remove_backend(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<BackendEntry, BalancerError> {
        let (i, j) = self.backend_index(vip, address, port)?;
        self.transaction(maps, |b, maps| {
            let entry = b.vips[i].backends.remove(j);
            let vip_id = b.vips[i].id;
            b.publish_ring(maps, i).map_err(internal)?;
            maps.set_backend(
                entry.id,
                Backend {
                    flags: 0,
                    ..entry.kernel_value(vip_id)
                },
            )
            .map_err(internal)?;
            b.free_ids.push_back(entry.id);
            Ok(entry)
        })
    }

    /// Drains (no new flows, existing ones stay) or re-enables a backend.
    pub fn set_admin(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
        admin: Admin,
    ) -> Result<BackendEntry, BalancerError> {
        let (i, j) = self.backend_index(vip, address, port)?;
        self.update_backend(maps, i, j, |b| b.admin = admin)?;
        Ok(self.vips[i].backends[j].clone())
    }

    pub fn set_weight(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
        weight: u32,
    ) -> Result<BackendEntry, BalancerError> {
        check_weight(weight)?;
        let (i, j) = self.backend_index(vip, address, port)?;
        self.update_backend(maps, i, j, |b| b.weight = weight)?;
        Ok(self.vips[i].backends[j].clone())
    }

    /// Records a health verdict. Returns whether anything changed.
    pub fn set_health(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
        up: bool,
    ) -> Result<bool, BalancerError> {
        let (i, j) = self.backend_index(vip, address, port)?;
        if self.vips[i].backends[j].up == up {
            return Ok(false);
        }
        self.update_backend(maps, i, j, |b| b.up = up)?;
        Ok(true)
    }

    /// Refuses a reload that needs more backend or VIP ids than are free
    /// once the backends and VIPs it drops have let theirs go (run-time
    /// `lbctl` additions use ids too), before anything changes.
    fn check_reload_capacity(&self, new: &Config) -> Result<(), BalancerError> {
        let mut freed = 0usize;
        let mut needed = 0usize;
        let mut new_vips = 0usize;
        let mut gone_vips = 0usize;
        for v in &self.vips {
            match new.vips.iter().find(|n| n.name == v.name) {
                None => {
                    freed += v.backends.len();
                    gone_vips += 1;
                }
                Some(nv) => {
                    freed += v.backends.iter().filter(|b| !listed_in(nv, b)).count();
                    needed += nv
                        .backends
                        .iter()
                        .filter(|c| v.find(c.address, c.port).is_none())
                        .count();
                }
            }
        }
        for nv in &new.vips {
            if !self.vips.iter().any(|v| v.name == nv.name) {
                needed += nv.backends.len();
                new_vips += 1;
            }
        }
        let available = self.free_ids.len() + freed;
        if needed > available {
            return Err(BalancerError::NoRoom(format!(
                "the new configuration adds {needed} backends but only {available} backend \
                 slots would be free (backends added with lbctl use slots too); nothing was \
                 changed"
            )));
        }
        let vip_ids = self.free_vip_ids.len() + gone_vips;
        if new_vips > vip_ids {
            return Err(BalancerError::NoRoom(format!(
                "the new configuration adds {new_vips} VIPs but only {vip_ids} VIP slots would \
                 be free; nothing was changed"
            )));
        }
        Ok(())
    }

    /// Reconciles to a new configuration: VIPs are matched by name and
    /// backends by address and port. Kept backends keep their health state and
    /// ids (so their flows stay); admin state and weights are reset to the file.
    /// Settings that need a restart are refused before anything changes.
    /// `kernel` is the new configuration's global settings, written last.
    /// All or nothing: if any kernel write fails, every write made is
    /// undone and the model is left as it was.
    pub fn reload(
        &mut self,
        maps: &mut impl Maps,
        old: &Config,
        new: &Config,
        kernel: &lb_ebpf::Config,
    ) -> Result<ReloadChanges, BalancerError> {
        restart_only_changes(old, new)?;
        self.check_reload_capacity(new)?;
        self.transaction(maps, |b, maps| {
            let summary = b.reconcile(maps, new)?;
            maps.write_config(kernel).map_err(internal)?;
            b.nat_sources = vec![new.nat.source];
            Ok(summary)
        })
    }

    /// The writes of [`Balancer::reload`], in order.
    fn reconcile(
        &mut self,
        maps: &mut impl Maps,
        new: &Config,
    ) -> Result<ReloadChanges, BalancerError> {
        let mut summary = ReloadChanges::default();
        // VIPs that are gone.
        let gone: Vec<usize> = (0..self.vips.len())
            .filter(|&i| !new.vips.iter().any(|v| v.name == self.vips[i].name))
            .collect();
        for &i in gone.iter().rev() {
            let v = self.vips.remove(i);
            maps.remove_vip(v.key()).map_err(internal)?;
            for b in &v.backends {
                maps.set_backend(
                    b.id,
                    Backend {
                        flags: 0,
                        ..b.kernel_value(v.id)
                    },
                )
                .map_err(internal)?;
                self.free_ids.push_back(b.id);
            }
            self.free_vip_ids.push_back(v.id);
            summary.vips_removed.push(v.name);
        }
        // Backends that are gone, from every kept VIP, before anything is
        // added: they leave the ring first, then their slots, and their ids
        // are free for the additions below.
        for i in 0..self.vips.len() {
            let Some(nv) = new.vips.iter().find(|v| v.name == self.vips[i].name) else {
                continue;
            };
            let mut removed = Vec::new();
            self.vips[i].backends.retain(|b| {
                let keep = listed_in(nv, b);
                if !keep {
                    removed.push(b.clone());
                }
                keep
            });
            if removed.is_empty() {
                continue;
            }
            self.publish_ring(maps, i).map_err(internal)?;
            let vip_id = self.vips[i].id;
            for b in removed {
                maps.set_backend(
                    b.id,
                    Backend {
                        flags: 0,
                        ..b.kernel_value(vip_id)
                    },
                )
                .map_err(internal)?;
                self.free_ids.push_back(b.id);
                summary.backends_removed += 1;
            }
        }
        // Keys (address, port) that kept VIPs leave: removed at the end, and
        // only if no VIP holds them then (two VIPs may swap addresses).
        let mut left_keys = Vec::new();
        for nv in &new.vips {
            let Some(i) = self.vips.iter().position(|v| v.name == nv.name) else {
                let entry = self.vip_from_config(nv);
                maps.reset_vip_counters(entry.id).map_err(internal)?;
                self.vips.push(entry);
                let i = self.vips.len() - 1;
                for b in &self.vips[i].backends {
                    maps.reset_backend_counters(b.id).map_err(internal)?;
                    maps.set_backend(b.id, b.kernel_value(self.vips[i].id))
                        .map_err(internal)?;
                }
                self.publish_ring(maps, i).map_err(internal)?;
                summary.vips_added.push(nv.name.clone());
                continue;
            };
            let old_key = self.vips[i].key();
            {
                let v = &mut self.vips[i];
                v.address = nv.address;
                v.port = nv.port;
                v.on_empty = nv.on_empty;
                v.hash = nv.hash;
                v.default_check = nv.health.clone();
            }
            for nb in &nv.backends {
                match self.vips[i].find(nb.address, nb.port) {
                    Some(j) => {
                        let b = &mut self.vips[i].backends[j];
                        let before = b.clone();
                        b.weight = nb.weight;
                        b.admin = Admin::Enabled;
                        if b.check != nb.health {
                            b.check = nb.health.clone();
                        }
                        if *b != before {
                            summary.backends_changed += 1;
                        }
                    }
                    None => {
                        let id = self
                            .free_ids
                            .pop_front()
                            .expect("check_reload_capacity counted the ids");
                        maps.reset_backend_counters(id).map_err(internal)?;
                        self.vips[i].backends.push(entry_from_config(id, nb));
                        summary.backends_added += 1;
                    }
                }
            }
            let vip_id = self.vips[i].id;
            for b in &self.vips[i].backends {
                maps.set_backend(b.id, b.kernel_value(vip_id))
                    .map_err(internal)?;
            }
            self.publish_ring(maps, i).map_err(internal)?;
            if old_key != self.vips[i].key() {
                left_keys.push(old_key);
            }
        }
        for key in left_keys {
            if !self.vips.iter().any(|v| v.key() == key) {
                maps.remove_vip(key).map_err(internal)?;
            }
        }
        // Keep the configuration's order (lbctl lists VIPs as the file does).
        self.vips
            .sort_by_key(|v| new.vips.iter().position(|n| n.name == v.name));
        Ok(summary)
    }

    /// Health-check targets with their current state.
    pub fn health_targets(&self) -> Vec<(crate::health::Target, bool)> {
        self.vips
            .iter()
            .flat_map(|v| {
                v.backends.iter().map(|b| {
                    (
                        crate::health::Target {
                            vip: v.name.clone(),
                            address: b.address,
                            port: b.port,
                            check: b.check.clone(),
                        },
                        b.up,
                    )
                })
            })
            .collect()
    }
}

fn internal(e: anyhow::Error) -> BalancerError {
    BalancerError::Kernel(format!("{e:#}"))
}

fn check_weight(weight: u32) -> Result<(), BalancerError> {
    if weight == 0 || weight > 65_535 {
        return Err(BalancerError::Invalid(format!(
            "weight {weight} is out of range 1..=65535"
        )));
    }
    Ok(())
}

/// Settings a running lbd cannot change: they size or place the kernel
/// objects, or bind sockets.
fn restart_only_changes(old: &Config, new: &Config) -> Result<(), BalancerError> {
    let (o, n) = (&old.dataplane, &new.dataplane);
    let nat_ports = |c: &Config| (c.nat.reserve_ports, c.nat.port_min, c.nat.port_max);
    let changed: Vec<&str> = [
        (o.interfaces != n.interfaces, "dataplane.interfaces"),
        (o.xdp_mode != n.xdp_mode, "dataplane.xdp_mode"),
        (o.ring_size != n.ring_size, "dataplane.ring_size"),
        (o.max_flows != n.max_flows, "dataplane.max_flows"),
        (o.max_vips != n.max_vips, "dataplane.max_vips"),
        (o.pin_path != n.pin_path, "dataplane.pin_path"),
        (old.control != new.control, "control.socket"),
        (old.metrics != new.metrics, "metrics.listen"),
        (
            nat_ports(old) != nat_ports(new),
            "nat.ports/nat.reserve_ports",
        ),
    ]
    .into_iter()
    .filter_map(|(differs, key)| differs.then_some(key))
    .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(BalancerError::RestartNeeded { keys: changed })
}

/// What Maglev builds a VIP's ring from: its backends taking new flows,
/// in order.
fn ring_input(backends: &[BackendEntry]) -> Vec<RingBackend> {
    backends
        .iter()
        .filter(|b| b.in_ring())
        .map(|b| RingBackend {
            identity: b.identity(),
            weight: b.weight,
        })
        .collect()
}

/// The Maglev ring of backend ids for the backends of a VIP that take new flows.
pub fn ring_for(backends: &[BackendEntry], ring_size: u32) -> Result<Vec<u32>> {
    let live: Vec<&BackendEntry> = backends.iter().filter(|b| b.in_ring()).collect();
    let ring = maglev::build_ring(&ring_input(backends), ring_size)?;
    Ok(ring
        .into_iter()
        .map(|i| {
            if i == NO_BACKEND {
                NO_BACKEND
            } else {
                live[i as usize].id
            }
        })
        .collect())
}

/// Counts of ring entries per backend id (tests and diagnostics).
pub fn ring_shares(ring: &[u32]) -> HashMap<u32, usize> {
    let mut m = HashMap::new();
    for id in ring {
        *m.entry(*id).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_ebpf::Counters;

    /// The kind of refusal, as the control protocol's error code names it.
    fn code(e: &BalancerError) -> &'static str {
        match e {
            BalancerError::NoVip { .. } | BalancerError::NoBackend { .. } => "not_found",
            BalancerError::Duplicate { .. } | BalancerError::NoRoom(_) => "conflict",
            BalancerError::Invalid(_) | BalancerError::RestartNeeded { .. } => "invalid",
            BalancerError::Kernel(_) | BalancerError::KernelUndo { .. } => "internal",
        }
    }

    /// Maps kept in memory, recording the order of writes.
    #[derive(Clone, Default)]
    struct FakeMaps {
        vips: HashMap<VipKey, VipValue>,
        backends: HashMap<u32, Backend>,
        rings: HashMap<(u32, u32), Vec<u32>>,
        config: lb_ebpf::Config,
        log: Vec<String>,
        fail_rings: bool,
        /// Writes so far (every kind), and the one to fail, if any.
        writes: usize,
        fail_write: Option<usize>,
    }

    /// What the fake kernel holds, comparable (a never-written ring reads
    /// as zeroes, as an array map's would).
    #[derive(Debug, PartialEq)]
    struct Snapshot {
        vips: Vec<(VipKey, VipValue)>,
        backends: Vec<(u32, Backend)>,
        rings: Vec<((u32, u32), Vec<u32>)>,
        config: lb_ebpf::Config,
    }

    impl FakeMaps {
        fn kernel(&self) -> KernelState {
            KernelState {
                vips: self.vips.iter().map(|(k, v)| (*k, *v)).collect(),
                backends: self
                    .backends
                    .iter()
                    .filter(|(_, b)| b.flags & BACKEND_F_PRESENT != 0)
                    .map(|(i, b)| (*i, *b))
                    .collect(),
            }
        }

        fn snapshot(&self) -> Snapshot {
            let mut vips: Vec<_> = self.vips.iter().map(|(k, v)| (*k, *v)).collect();
            vips.sort_by_key(|(k, _)| (k.addr_be, k.port_be));
            let mut backends: Vec<_> = self
                .backends
                .iter()
                .filter(|(_, b)| **b != Backend::default())
                .map(|(i, b)| (*i, *b))
                .collect();
            backends.sort_by_key(|(i, _)| *i);
            let mut rings: Vec<_> = self
                .rings
                .iter()
                .filter(|(_, r)| r.iter().any(|id| *id != 0))
                .map(|(k, r)| (*k, r.clone()))
                .collect();
            rings.sort_by_key(|(k, _)| *k);
            Snapshot {
                vips,
                backends,
                rings,
                config: self.config,
            }
        }

        /// Counts a write; fails it if it is the one to fail.
        fn write(&mut self) -> Result<()> {
            let n = self.writes;
            self.writes += 1;
            if self.fail_write == Some(n) {
                anyhow::bail!("injected failure of write {n}");
            }
            Ok(())
        }
    }

    impl Maps for FakeMaps {
        fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<()> {
            self.write()?;
            self.log
                .push(format!("vip {} slot {}", value.id, value.ring_slot));
            self.vips.insert(key, value);
            Ok(())
        }
        fn remove_vip(&mut self, key: VipKey) -> Result<()> {
            self.write()?;
            self.log.push("remove vip".into());
            self.vips.remove(&key);
            Ok(())
        }
        fn vip(&self, key: VipKey) -> Result<Option<VipValue>> {
            Ok(self.vips.get(&key).copied())
        }
        fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
            self.write()?;
            self.log
                .push(format!("backend {id} flags {}", backend.flags));
            self.backends.insert(id, backend);
            Ok(())
        }
        fn backend(&self, id: u32) -> Result<Backend> {
            Ok(self.backends.get(&id).copied().unwrap_or_default())
        }
        fn write_ring(&mut self, vip_id: u32, slot: u32, ring: &[u32]) -> Result<()> {
            if self.fail_rings {
                anyhow::bail!("injected failure");
            }
            self.write()?;
            self.log.push(format!("ring {vip_id} slot {slot}"));
            self.rings.insert((vip_id, slot), ring.to_vec());
            Ok(())
        }
        fn ring(&self, vip_id: u32, slot: u32) -> Result<Vec<u32>> {
            Ok(self
                .rings
                .get(&(vip_id, slot))
                .cloned()
                .unwrap_or_else(|| vec![0; 1009]))
        }
        fn read_config(&self) -> Result<lb_ebpf::Config> {
            Ok(self.config)
        }
        fn write_config(&mut self, config: &lb_ebpf::Config) -> Result<()> {
            self.write()?;
            self.log.push("config".into());
            self.config = *config;
            Ok(())
        }
        fn vip_counters(&self, _: u32) -> Result<Counters> {
            Ok(Counters::default())
        }
        fn backend_counters(&self, _: u32) -> Result<Counters> {
            Ok(Counters::default())
        }
        fn reset_backend_counters(&mut self, id: u32) -> Result<()> {
            self.log.push(format!("reset {id}"));
            Ok(())
        }
        fn reset_vip_counters(&mut self, id: u32) -> Result<()> {
            self.log.push(format!("reset vip {id}"));
            Ok(())
        }
    }

    /// The global settings a reload to `cfg` writes (as the daemon's
    /// `kernel_config` would, with a fixed tick).
    fn kernel_cfg(cfg: &Config) -> lb_ebpf::Config {
        lb_ebpf::Config {
            nat_addr_be: addr_be(cfg.nat.source),
            ring_size: cfg.dataplane.ring_size,
            idle_timeout_ns: cfg.flows.idle_timeout_secs,
            ..Default::default()
        }
    }

    const BASE: &str = r#"
        [dataplane]
        interfaces = ["eth0"]
        ring_size = 1009
        [nat]
        source = "10.0.2.10"
        [[vip]]
        name = "web"
        address = "10.0.0.100"
        port = 80
        [vip.health]
        initial = "up"
        [[vip.backend]]
        address = "10.0.2.11"
        [[vip.backend]]
        address = "10.0.2.12"
        "#;

    fn config() -> Config {
        Config::from_toml_str(BASE).unwrap()
    }

    const UP: u32 = BACKEND_F_PRESENT | BACKEND_F_IN_USE;

    fn live_ring(maps: &FakeMaps, b: &Balancer) -> Vec<u32> {
        let v = &b.vips()[0];
        let value = maps.vips[&v.key()];
        maps.rings[&(value.id, value.ring_slot)].clone()
    }

    /// The live ring as backend addresses (ids may differ between runs).
    fn ring_addresses(maps: &FakeMaps, b: &Balancer) -> Vec<Option<Ipv4Addr>> {
        let v = &b.vips()[0];
        live_ring(maps, b)
            .iter()
            .map(|id| v.backends.iter().find(|x| x.id == *id).map(|b| b.address))
            .collect()
    }

    fn installed() -> (FakeMaps, Balancer) {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps, &KernelState::default()).unwrap();
        (maps, b)
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn install_writes_backends_before_the_ring_and_the_ring_before_the_vip() {
        let (maps, b) = installed();
        assert_eq!(
            maps.log,
            [
                format!("backend 0 flags {UP}"),
                format!("backend 1 flags {UP}"),
                "ring 0 slot 1".into(),
                "vip 0 slot 1".into()
            ]
        );
        let ring = live_ring(&maps, &b);
        assert!(ring.iter().all(|id| *id == 0 || *id == 1));
    }

    #[test]
    fn each_change_fills_the_other_slot_then_flips() {
        let (mut maps, mut b) = installed();
        let first = b.vips()[0].live_slot;
        b.add_backend(&mut maps, "web", addr("10.0.2.13"), 80, 1)
            .unwrap();
        assert_ne!(b.vips()[0].live_slot, first);
        assert!(live_ring(&maps, &b).contains(&2));
        b.remove_backend(&mut maps, "web", addr("10.0.2.13"), 80)
            .unwrap();
        assert_eq!(b.vips()[0].live_slot, first);
        assert!(!live_ring(&maps, &b).contains(&2));
        assert!(
            maps.log.contains(&"reset 2".to_string()),
            "a new backend starts from zero"
        );
        // The backend slot is cleared only after the ring without it is live.
        let n = maps.log.len();
        assert_eq!(
            maps.log[n - 3..],
            ["ring 0 slot 1", "vip 0 slot 1", "backend 2 flags 0"]
        );
    }

    #[test]
    fn ids_are_reused_last_and_rings_depend_only_on_backends() {
        let (mut maps, mut b) = installed();
        let before = ring_addresses(&maps, &b);
        b.remove_backend(&mut maps, "web", addr("10.0.2.12"), 80)
            .unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == 0));
        let again = b
            .add_backend(&mut maps, "web", addr("10.0.2.12"), 80, 1)
            .unwrap();
        assert_eq!(
            again.id, 2,
            "the next never-used id, not the one just freed"
        );
        assert_eq!(ring_addresses(&maps, &b), before);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let (mut maps, mut b) = installed();
        let log = maps.log.len();
        let a = addr("10.0.2.11");
        assert_eq!(
            code(&b.add_backend(&mut maps, "nope", a, 80, 1).unwrap_err()),
            "not_found"
        );
        assert_eq!(
            code(&b.add_backend(&mut maps, "web", a, 80, 1).unwrap_err()),
            "conflict"
        );
        assert_eq!(
            code(&b.add_backend(&mut maps, "web", a, 81, 0).unwrap_err()),
            "invalid"
        );
        assert_eq!(
            code(
                &b.add_backend(&mut maps, "web", addr("0.0.0.0"), 81, 1)
                    .unwrap_err()
            ),
            "invalid"
        );
        assert_eq!(
            code(&b.remove_backend(&mut maps, "web", a, 99).unwrap_err()),
            "not_found"
        );
        assert_eq!(
            code(&b.set_weight(&mut maps, "web", a, 80, 70_000).unwrap_err()),
            "invalid"
        );
        assert_eq!(
            code(
                &b.set_admin(&mut maps, "web", a, 99, Admin::Drained)
                    .unwrap_err()
            ),
            "not_found"
        );
        assert_eq!(maps.log.len(), log);
        assert_eq!(b.vips()[0].backends.len(), 2);
    }

    #[test]
    fn a_failed_kernel_write_leaves_the_model_as_the_kernel_has_it() {
        let (mut maps, mut b) = installed();
        maps.fail_rings = true;
        let err = b
            .add_backend(&mut maps, "web", addr("10.0.2.13"), 80, 1)
            .unwrap_err();
        assert_eq!(code(&err), "internal");
        assert_eq!(b.vips()[0].backends.len(), 2);
        let err = b
            .remove_backend(&mut maps, "web", addr("10.0.2.11"), 80)
            .unwrap_err();
        assert_eq!(code(&err), "internal");
        assert_eq!(b.vips()[0].backends.len(), 2);
        let err = b
            .set_health(&mut maps, "web", addr("10.0.2.11"), 80, false)
            .unwrap_err();
        assert_eq!(code(&err), "internal");
        assert!(b.vips()[0].backends[0].up);
    }

    /// A configuration that changes everything a reload can change: a VIP
    /// removed, one added, a backend removed, one added, a weight changed.
    const CHANGED: &str = r#"
        [dataplane]
        interfaces = ["eth0"]
        ring_size = 1009
        [nat]
        source = "10.0.2.10"
        [[vip]]
        name = "web"
        address = "10.0.0.100"
        port = 8080
        [vip.health]
        initial = "up"
        [[vip.backend]]
        address = "10.0.2.12"
        weight = 3
        [[vip.backend]]
        address = "10.0.2.13"
        [[vip]]
        name = "api"
        address = "10.0.0.101"
        port = 443
        [vip.health]
        initial = "up"
        [[vip.backend]]
        address = "10.0.2.21"
        "#;

    #[test]
    fn a_reload_failing_at_any_write_changes_nothing() {
        let (maps, b) = installed();
        let (old, new) = (config(), Config::from_toml_str(CHANGED).unwrap());
        // How many writes the whole reload makes.
        let mut probe = maps.clone();
        probe.writes = 0;
        b.clone()
            .reload(&mut probe, &old, &new, &kernel_cfg(&new))
            .unwrap();
        let total = probe.writes;
        assert!(total > 8, "{total} writes");
        for n in 0..total {
            let mut m = maps.clone();
            m.writes = 0;
            m.fail_write = Some(n);
            let mut bb = b.clone();
            let e = bb
                .reload(&mut m, &old, &new, &kernel_cfg(&new))
                .unwrap_err();
            assert_eq!(code(&e), "internal", "write {n}: {e}");
            assert!(e.to_string().contains("injected failure"), "{e}");
            assert_eq!(
                m.snapshot(),
                maps.snapshot(),
                "kernel after failing write {n}"
            );
            assert_eq!(
                format!("{bb:?}"),
                format!("{b:?}"),
                "model after failing write {n}"
            );
        }
        // And the same reload, unhindered, still goes through.
        let mut m = maps.clone();
        let mut bb = b.clone();
        bb.reload(&mut m, &old, &new, &kernel_cfg(&new)).unwrap();
        assert_eq!(bb.vips().len(), 2);
        assert_eq!(m.config, kernel_cfg(&new));
    }

    #[test]
    fn commands_failing_at_any_write_change_nothing() {
        let (maps, b) = installed();
        type Op = fn(&mut Balancer, &mut FakeMaps) -> Result<BackendEntry, BalancerError>;
        let ops: [(&str, Op); 4] = [
            ("add", |b, m| {
                b.add_backend(m, "web", Ipv4Addr::new(10, 0, 2, 13), 80, 2)
            }),
            ("remove", |b, m| {
                b.remove_backend(m, "web", Ipv4Addr::new(10, 0, 2, 11), 80)
            }),
            ("drain", |b, m| {
                b.set_admin(m, "web", Ipv4Addr::new(10, 0, 2, 11), 80, Admin::Drained)
            }),
            ("weight", |b, m| {
                b.set_weight(m, "web", Ipv4Addr::new(10, 0, 2, 12), 80, 5)
            }),
        ];
        for (name, op) in ops {
            let mut probe = maps.clone();
            probe.writes = 0;
            op(&mut b.clone(), &mut probe).unwrap();
            for n in 0..probe.writes {
                let mut m = maps.clone();
                m.writes = 0;
                m.fail_write = Some(n);
                let mut bb = b.clone();
                assert!(op(&mut bb, &mut m).is_err(), "{name}, write {n}");
                assert_eq!(m.snapshot(), maps.snapshot(), "{name}: kernel, write {n}");
                assert_eq!(
                    format!("{bb:?}"),
                    format!("{b:?}"),
                    "{name}: model, write {n}"
                );
            }
        }
    }

    #[test]
    fn backends_must_be_other_hosts() {
        let (mut maps, mut b) = installed();
        for (a, why) in [
            ("10.0.0.100", "VIP address"),
            ("10.0.2.10", "NAT source"),
            ("127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("224.0.0.5", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
        ] {
            let e = b.add_backend(&mut maps, "web", addr(a), 80, 1).unwrap_err();
            assert_eq!(code(&e), "invalid", "{a}");
            assert!(e.to_string().contains(why), "{a}: {e}");
        }
        assert_eq!(b.vips()[0].backends.len(), 2);
    }

    #[test]
    fn an_empty_vip_gets_an_empty_ring() {
        let mut cfg = config();
        cfg.vips[0].backends.clear();
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&cfg);
        b.install(&mut maps, &KernelState::default()).unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == NO_BACKEND));
        assert_eq!(maps.vips[&b.vips()[0].key()].flags, VIP_F_RESET_EMPTY);
    }

    #[test]
    fn source_affinity_is_a_vip_flag_that_a_reload_changes() {
        let mut cfg = config();
        cfg.vips[0].hash = VipHash::Source;
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&cfg);
        b.install(&mut maps, &KernelState::default()).unwrap();
        let key = b.vips()[0].key();
        assert_eq!(maps.vips[&key].flags & VIP_F_HASH_SOURCE, VIP_F_HASH_SOURCE);
        let mut back = cfg.clone();
        back.vips[0].hash = VipHash::FiveTuple;
        b.reload(&mut maps, &cfg, &back, &kernel_cfg(&back))
            .unwrap();
        assert_eq!(maps.vips[&key].flags & VIP_F_HASH_SOURCE, 0);
        assert_eq!(b.vips()[0].hash, VipHash::FiveTuple);
    }

    #[test]
    fn backends_start_down_until_proven_up_by_default() {
        let cfg =
            Config::from_toml_str(&BASE.replace("initial = \"up\"", "initial = \"down\"")).unwrap();
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&cfg);
        b.install(&mut maps, &KernelState::default()).unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == NO_BACKEND));
        assert_eq!(maps.backends[&0].flags, BACKEND_F_PRESENT | BACKEND_F_DOWN);
        assert!(b
            .set_health(&mut maps, "web", addr("10.0.2.11"), 80, true)
            .unwrap());
        assert!(live_ring(&maps, &b).iter().all(|id| *id == 0));
        assert!(!b
            .set_health(&mut maps, "web", addr("10.0.2.11"), 80, true)
            .unwrap());
    }

    #[test]
    fn down_moves_flows_but_drain_keeps_them() {
        let (mut maps, mut b) = installed();
        let a = addr("10.0.2.11");
        // Drain: out of the ring, slot still in use (flows stay).
        b.set_admin(&mut maps, "web", a, 80, Admin::Drained)
            .unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == 1));
        assert_eq!(maps.backends[&0].flags, UP | BACKEND_F_DRAINED);
        let e = &b.vips()[0].backends[0];
        assert!(e.up && e.admin == Admin::Drained && !e.in_ring());
        // Enable: back in the ring, slot written before the ring.
        maps.log.clear();
        b.set_admin(&mut maps, "web", a, 80, Admin::Enabled)
            .unwrap();
        assert!(maps.log[0].starts_with("backend 0"), "{:?}", maps.log);
        assert!(live_ring(&maps, &b).contains(&0));
        // Down: out of the ring first, then flows told to move.
        maps.log.clear();
        b.set_health(&mut maps, "web", a, 80, false).unwrap();
        assert_eq!(
            maps.log.last().unwrap(),
            &format!("backend 0 flags {}", BACKEND_F_PRESENT | BACKEND_F_DOWN)
        );
        assert!(live_ring(&maps, &b).iter().all(|id| *id == 1));
        let e = &b.vips()[0].backends[0];
        assert!(!e.up && !e.in_ring());
    }

    #[test]
    fn weights_move_ring_shares() {
        let (mut maps, mut b) = installed();
        b.set_weight(&mut maps, "web", addr("10.0.2.12"), 80, 3)
            .unwrap();
        let shares = ring_shares(&live_ring(&maps, &b));
        let (s0, s1) = (shares[&0] as f64, shares[&1] as f64);
        assert!((s1 / s0 - 3.0).abs() < 0.15, "{s0} {s1}");
        assert_eq!(maps.backends[&1].weight, 3);
    }

    #[test]
    fn adopting_the_kernel_state_changes_nothing_that_forwards() {
        let (mut maps, mut b) = installed();
        // Run-time changes the config file does not know about.
        b.add_backend(&mut maps, "web", addr("10.0.2.13"), 80, 2)
            .unwrap();
        b.set_admin(&mut maps, "web", addr("10.0.2.11"), 80, Admin::Drained)
            .unwrap();
        let ring = live_ring(&maps, &b);
        let slot = b.vips()[0].live_slot;

        let kernel = maps.kernel();
        let adopted = Balancer::adopt(&config(), &kernel);
        let v = &adopted.vips()[0];
        assert_eq!(v.live_slot, slot);
        assert_eq!(v.backends.len(), 3);
        let drained = v
            .backends
            .iter()
            .find(|x| x.address == addr("10.0.2.11"))
            .unwrap();
        assert_eq!((drained.id, drained.admin), (0, Admin::Drained));
        let added = v
            .backends
            .iter()
            .find(|x| x.address == addr("10.0.2.13"))
            .unwrap();
        assert_eq!((added.id, added.weight), (2, 2));
        // Installing the adopted model writes the same ring again.
        let mut adopted = adopted;
        adopted.install(&mut maps, &kernel).unwrap();
        assert_eq!(live_ring(&maps, &adopted), ring);
        // New ids never collide with adopted ones.
        let e = adopted
            .add_backend(&mut maps, "web", addr("10.0.2.14"), 80, 1)
            .unwrap();
        assert!(e.id > 2);
    }

    #[test]
    fn adoption_drops_vips_the_file_no_longer_has() {
        let (maps, _) = installed();
        let kernel = maps.kernel();
        let mut cfg = config();
        cfg.vips[0].name = "other".into();
        cfg.vips[0].port = 81;
        let mut maps2 = FakeMaps {
            vips: maps.vips.clone(),
            backends: maps.backends.clone(),
            ..Default::default()
        };
        let mut b = Balancer::adopt(&cfg, &kernel);
        b.install(&mut maps2, &kernel).unwrap();
        assert_eq!(maps2.vips.len(), 1);
        assert!(maps2.vips.contains_key(&b.vips()[0].key()));
        assert_eq!(
            maps2.backends[&0].flags, 0,
            "the old VIP's backends are released"
        );
    }

    #[test]
    fn reload_reconciles_and_keeps_what_stays() {
        let (mut maps, mut b) = installed();
        b.set_health(&mut maps, "web", addr("10.0.2.12"), 80, false)
            .unwrap();
        let old = config();
        let new = Config::from_toml_str(&format!(
            "{}\n[[vip.backend]]\naddress = \"10.0.2.13\"\n[[vip]]\nname = \"api\"\naddress = \"10.0.0.101\"\nport = 443\n[[vip.backend]]\naddress = \"10.0.3.1\"\n",
            BASE.replace("[[vip.backend]]\n        address = \"10.0.2.11\"\n", "")
        ))
        .unwrap();
        let summary = b.reload(&mut maps, &old, &new, &kernel_cfg(&new)).unwrap();
        assert_eq!(summary.vips_added, ["api"]);
        assert_eq!((summary.backends_added, summary.backends_removed), (1, 1));
        let web = &b.vips()[0];
        let kept = web
            .backends
            .iter()
            .find(|x| x.address == addr("10.0.2.12"))
            .unwrap();
        assert_eq!(
            (kept.id, kept.up),
            (1, false),
            "kept backends keep id and health"
        );
        assert_eq!(
            maps.backends[&0].flags, 0,
            "the removed backend's slot is released"
        );
        assert_eq!(b.vips().len(), 2);
        assert_eq!(maps.vips.len(), 2);
        // Removing the VIP again.
        let summary = b.reload(&mut maps, &new, &old, &kernel_cfg(&old)).unwrap();
        assert_eq!(summary.vips_removed, ["api"]);
        assert_eq!(maps.vips.len(), 1);
    }

    #[test]
    fn reload_refuses_restart_only_changes_without_touching_anything() {
        let (mut maps, mut b) = installed();
        let log = maps.log.len();
        let mut new = config();
        new.dataplane.ring_size = 65_537;
        new.vips[0].backends.clear();
        let e = b
            .reload(&mut maps, &config(), &new, &kernel_cfg(&new))
            .unwrap_err();
        assert!(e.to_string().contains("dataplane.ring_size"), "{e}");
        assert_eq!(maps.log.len(), log);
        assert_eq!(b.vips()[0].backends.len(), 2);
    }

    const TWO_VIPS: &str = r#"
        [dataplane]
        interfaces = ["eth0"]
        ring_size = 1009
        [nat]
        source = "10.0.2.10"
        [[vip]]
        name = "a"
        address = "10.0.0.1"
        port = 80
        [[vip.backend]]
        address = "10.0.2.11"
        [[vip]]
        name = "b"
        address = "10.0.0.2"
        port = 80
        [[vip.backend]]
        address = "10.0.2.12"
        "#;

    #[test]
    fn reload_lets_two_vips_swap_addresses() {
        let old = Config::from_toml_str(TWO_VIPS).unwrap();
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&old);
        b.install(&mut maps, &KernelState::default()).unwrap();
        let new = Config::from_toml_str(
            &TWO_VIPS
                .replace("10.0.0.1\"", "10.0.0.X\"")
                .replace("10.0.0.2\"", "10.0.0.1\"")
                .replace("10.0.0.X\"", "10.0.0.2\""),
        )
        .unwrap();
        b.reload(&mut maps, &old, &new, &kernel_cfg(&new)).unwrap();
        assert_eq!(maps.vips.len(), 2, "both VIPs are still in the kernel");
        for v in b.vips() {
            assert_eq!(
                maps.vips[&v.key()].id,
                v.id,
                "{} at its new address",
                v.name
            );
        }
        let a = &b.vips()[0];
        assert_eq!((a.name.as_str(), a.address), ("a", addr("10.0.0.2")));
    }

    #[test]
    fn reload_needing_more_backend_slots_than_are_free_changes_nothing() {
        // Two run-time additions, and (as if other VIPs held the rest) one
        // slot left free...
        let (mut maps, mut b) = installed();
        for i in 0..2 {
            let address = Ipv4Addr::from(0x0a05_0000 + i as u32);
            b.add_backend(&mut maps, "web", address, 80, 1).unwrap();
        }
        b.free_ids.truncate(1);
        // ...and the file keeps them all, adding a VIP with two backends.
        let mut old = config();
        for v in &b.vips()[0].backends {
            let known = old.vips[0]
                .backends
                .iter()
                .any(|c| c.address == v.address && c.port == v.port);
            if !known {
                let mut c = old.vips[0].backends[0].clone();
                c.address = v.address;
                old.vips[0].backends.push(c);
            }
        }
        let mut new = old.clone();
        let mut api = new.vips[0].clone();
        api.name = "api".into();
        api.address = addr("10.0.0.101");
        api.backends.truncate(2);
        new.vips.push(api);
        let log = maps.log.len();
        let before = format!("{:?}", b.vips());
        let e = b
            .reload(&mut maps, &old, &new, &kernel_cfg(&new))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("adds 2 backends but only 1 backend slots"),
            "{e}"
        );
        assert_eq!(maps.log.len(), log, "nothing written");
        assert_eq!(format!("{:?}", b.vips()), before, "model unchanged");
        // Dropping the run-time backends from the file frees their slots.
        let mut fits = config();
        fits.vips.push(new.vips[1].clone());
        b.reload(&mut maps, &old, &fits, &kernel_cfg(&fits))
            .unwrap();
        assert_eq!(b.vips().len(), 2);
        assert_eq!(maps.vips.len(), 2);
    }

    #[test]
    fn the_ring_digest_follows_the_live_set_not_its_order() {
        let entry = |addr: [u8; 4], weight: u32, up: bool| BackendEntry {
            id: u32::from(addr[3]),
            address: Ipv4Addr::from(addr),
            port: 8080,
            weight,
            admin: Admin::Enabled,
            up,
            check: crate::config::default_health(),
        };
        let vip = |backends: Vec<BackendEntry>| VipEntry {
            id: 0,
            name: "web".into(),
            address: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            on_empty: OnEmpty::Reset,
            hash: VipHash::FiveTuple,
            default_check: crate::config::default_health(),
            live_slot: 0,
            backends,
        };
        let a = vip(vec![
            entry([10, 0, 2, 11], 1, true),
            entry([10, 0, 2, 12], 1, true),
        ]);
        // Other ids and order: the same ring, the same digest.
        let mut b = vip(vec![
            entry([10, 0, 2, 12], 1, true),
            entry([10, 0, 2, 11], 1, true),
        ]);
        b.backends[0].id = 7;
        assert_eq!(a.ring_digest(65537), b.ring_digest(65537));
        assert_eq!(a.ring_digest(65537).len(), 16);
        // A weight, a down backend or the ring size: another ring.
        let heavier = vip(vec![
            entry([10, 0, 2, 11], 2, true),
            entry([10, 0, 2, 12], 1, true),
        ]);
        let down = vip(vec![
            entry([10, 0, 2, 11], 1, true),
            entry([10, 0, 2, 12], 1, false),
        ]);
        for other in [
            heavier.ring_digest(65537),
            down.ring_digest(65537),
            a.ring_digest(65521),
        ] {
            assert_ne!(a.ring_digest(65537), other);
        }
    }
}
