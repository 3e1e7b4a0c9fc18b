//! All-or-nothing changes to the kernel tables.
//!
//! A reload, or one `lbctl` command, writes several map entries: backend
//! slots, rings, VIP entries, the global settings. If one write fails
//! midway (the kernel refuses an update), the kernel must not be left half
//! reconciled. [`Journal`] wraps [`Maps`]: before each write it reads what
//! the write replaces, and [`Journal::rollback`] writes those values back,
//! newest first. Counter resets are not undone: they only ever touch ids
//! being handed out, whose counts nobody reads any more.

use anyhow::{Context, Result};
use lb_ebpf::{Backend, Config, Counters, VipKey, VipValue};

use super::Maps;

/// A write and what it replaced.
#[derive(Debug)]
enum Undo {
    /// The VIP's entry before (`None`: it had none).
    Vip(VipKey, Option<VipValue>),
    Backend(u32, Backend),
    Ring {
        vip_id: u32,
        slot: u32,
        ring: Vec<u32>,
    },
    Config(Box<Config>),
}

/// [`Maps`] that remembers, for every write, what it replaced.
pub struct Journal<'a, M: Maps> {
    maps: &'a mut M,
    undo: Vec<Undo>,
}

impl<'a, M: Maps> Journal<'a, M> {
    pub fn new(maps: &'a mut M) -> Journal<'a, M> {
        Journal {
            maps,
            undo: Vec::new(),
        }
    }

    /// Writes made so far.
    pub fn len(&self) -> usize {
        self.undo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Puts back everything written through this journal, newest first.
    /// Every undo is tried; the first failure is returned.
    pub fn rollback(self) -> Result<()> {
        let mut first = None;
        for u in self.undo.into_iter().rev() {
            let r = match u {
                Undo::Vip(key, Some(v)) => self.maps.set_vip(key, v),
                Undo::Vip(key, None) => self.maps.remove_vip(key),
                Undo::Backend(id, b) => self.maps.set_backend(id, b),
                Undo::Ring { vip_id, slot, ring } => self.maps.write_ring(vip_id, slot, &ring),
                Undo::Config(c) => self.maps.write_config(&c),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.context("undoing a failed change")),
            None => Ok(()),
        }
    }
}

impl<M: Maps> Maps for Journal<'_, M> {
    fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<()> {
        let old = self
            .maps
            .vip(key)
            .context("reading a VIP before changing it")?;
        self.maps.set_vip(key, value)?;
        self.undo.push(Undo::Vip(key, old));
        Ok(())
    }

    fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        let old = self
            .maps
            .vip(key)
            .context("reading a VIP before removing it")?;
        self.maps.remove_vip(key)?;
        self.undo.push(Undo::Vip(key, old));
        Ok(())
    }

    fn vip(&self, key: VipKey) -> Result<Option<VipValue>> {
        self.maps.vip(key)
    }

    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        let old = self
            .maps
            .backend(id)
            .context("reading a backend slot before changing it")?;
        self.maps.set_backend(id, backend)?;
        self.undo.push(Undo::Backend(id, old));
        Ok(())
    }

    fn backend(&self, id: u32) -> Result<Backend> {
        self.maps.backend(id)
    }

    fn write_ring(&mut self, vip_id: u32, slot: u32, ring: &[u32]) -> Result<()> {
        let old = self
            .maps
            .ring(vip_id, slot)
            .context("reading a ring before rewriting it")?;
        self.maps.write_ring(vip_id, slot, ring)?;
        self.undo.push(Undo::Ring {
            vip_id,
            slot,
            ring: old,
        });
        Ok(())
    }

    fn ring(&self, vip_id: u32, slot: u32) -> Result<Vec<u32>> {
        self.maps.ring(vip_id, slot)
    }

    fn read_config(&self) -> Result<Config> {
        self.maps.read_config()
    }

    fn write_config(&mut self, config: &Config) -> Result<()> {
        let old = self
            .maps
            .read_config()
            .context("reading the settings before changing them")?;
        self.maps.write_config(config)?;
        self.undo.push(Undo::Config(Box::new(old)));
        Ok(())
    }

    fn vip_counters(&self, vip_id: u32) -> Result<Counters> {
        self.maps.vip_counters(vip_id)
    }

    fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        self.maps.backend_counters(backend_id)
    }

    fn reset_backend_counters(&mut self, backend_id: u32) -> Result<()> {
        self.maps.reset_backend_counters(backend_id)
    }

    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()> {
        self.maps.reset_vip_counters(vip_id)
    }
}
