//! The control plane's model of VIPs and backends, and how it reaches the
//! kernel: ids, Maglev rings and the double-buffered ring swap. No I/O of its
//! own — everything goes through [`Maps`], so it is tested with a fake.

use std::{collections::VecDeque, net::Ipv4Addr};

use anyhow::Result;
use lb_ebpf::{Backend, VipKey, VipValue, BACKEND_F_IN_USE, IPPROTO_TCP, MAX_BACKENDS, NO_BACKEND};

use crate::{
    api::{ApiError, BackendStatus, VipStatus},
    config::{self, Config},
    dataplane::{addr_be, Maps},
    maglev::{self, RingBackend},
};

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

impl BackendEntry {
    fn identity(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

/// One VIP and the ring slot that is live in the kernel.
#[derive(Clone, Debug)]
pub struct VipEntry {
    pub id: u32,
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub live_slot: u32,
    pub backends: Vec<BackendEntry>,
}

impl VipEntry {
    fn key(&self) -> VipKey {
        VipKey {
            addr_be: addr_be(self.address),
            port_be: self.port.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
        }
    }
}

/// All VIPs, with backend id allocation.
#[derive(Debug)]
pub struct Balancer {
    ring_size: u32,
    vips: Vec<VipEntry>,
    /// Unused backend ids, least recently freed first: a removed backend's id
    /// is reused as late as possible, so replies still in flight from its
    /// connections are not counted under a new backend.
    free_ids: VecDeque<u32>,
}

impl Balancer {
    /// The model of a validated configuration; nothing is written yet.
    pub fn new(cfg: &Config) -> Balancer {
        let mut b = Balancer {
            ring_size: cfg.dataplane.ring_size,
            vips: Vec::new(),
            free_ids: (0..MAX_BACKENDS).collect(),
        };
        for (id, v) in cfg.vips.iter().enumerate() {
            let backends = v
                .backends
                .iter()
                .map(|bc| BackendEntry {
                    id: b
                        .free_ids
                        .pop_front()
                        .expect("config validation bounds the backend count"),
                    address: bc.address,
                    port: bc.port,
                    weight: bc.weight,
                })
                .collect();
            b.vips.push(VipEntry {
                id: id as u32,
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                live_slot: 0,
                backends,
            });
        }
        b
    }

    pub fn vips(&self) -> &[VipEntry] {
        &self.vips
    }

    /// Writes every backend, ring and VIP to the kernel.
    pub fn install(&mut self, maps: &mut impl Maps) -> Result<()> {
        for i in 0..self.vips.len() {
            for b in &self.vips[i].backends {
                maps.set_backend(b.id, backend_value(b, self.vips[i].id))?;
            }
            self.publish_ring(maps, i)?;
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
        maps.set_vip(
            vip.key(),
            VipValue {
                id: vip.id,
                ring_slot: slot,
                flags: 0,
                _pad: 0,
            },
        )?;
        let vip = &mut self.vips[vip_index];
        vip.live_slot = slot;
        Ok(())
    }

    fn vip_index(&self, name: &str) -> Result<usize, ApiError> {
        self.vips
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no VIP named {name:?}")))
    }

    /// Adds a backend to a VIP and publishes the new ring.
    pub fn add_backend(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
        weight: u32,
    ) -> Result<BackendEntry, ApiError> {
        let i = self.vip_index(vip)?;
        if let Some(why) = config::unicast_problem(address) {
            return Err(ApiError::invalid(format!(
                "backend address {address} {why}"
            )));
        }
        if port == 0 {
            return Err(ApiError::invalid("port 0 is not a valid backend port"));
        }
        if weight == 0 || weight > 65_535 {
            return Err(ApiError::invalid(format!(
                "weight {weight} is out of range 1..=65535"
            )));
        }
        let v = &self.vips[i];
        if v.backends
            .iter()
            .any(|b| b.address == address && b.port == port)
        {
            return Err(ApiError::conflict(format!(
                "{address}:{port} is already a backend of {vip}"
            )));
        }
        if v.backends.len() + 1 >= self.ring_size as usize {
            return Err(ApiError::invalid(format!(
                "{vip} would have more backends than its ring has entries ({})",
                self.ring_size
            )));
        }
        let id = self.free_ids.pop_front().ok_or_else(|| {
            ApiError::invalid(format!("all {MAX_BACKENDS} backend slots are in use"))
        })?;
        let entry = BackendEntry {
            id,
            address,
            port,
            weight,
        };
        let vip_id = v.id;
        let result = maps
            .reset_backend_counters(id)
            .and_then(|()| maps.set_backend(id, backend_value(&entry, vip_id)))
            .and_then(|()| {
                self.vips[i].backends.push(entry.clone());
                self.publish_ring(maps, i)
            });
        if let Err(e) = result {
            // Leave the model as the kernel has it: without the new backend.
            self.vips[i].backends.retain(|b| b.id != id);
            self.free_ids.push_front(id);
            return Err(ApiError::internal(format!("{e:#}")));
        }
        Ok(entry)
    }

    /// Removes a backend: the new ring goes live first, then the backend slot
    /// is cleared so flows still pinned to it are re-hashed at their next packet.
    pub fn remove_backend(
        &mut self,
        maps: &mut impl Maps,
        vip: &str,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<BackendEntry, ApiError> {
        let i = self.vip_index(vip)?;
        let Some(pos) = self.vips[i]
            .backends
            .iter()
            .position(|b| b.address == address && b.port == port)
        else {
            return Err(ApiError::not_found(format!(
                "{address}:{port} is not a backend of {vip}"
            )));
        };
        let entry = self.vips[i].backends.remove(pos);
        let result = self.publish_ring(maps, i).and_then(|()| {
            maps.set_backend(
                entry.id,
                Backend {
                    flags: 0,
                    ..backend_value(&entry, self.vips[i].id)
                },
            )
        });
        if let Err(e) = result {
            self.vips[i].backends.insert(pos, entry);
            return Err(ApiError::internal(format!("{e:#}")));
        }
        self.free_ids.push_back(entry.id);
        Ok(entry)
    }

    /// Every VIP with its backends and counters.
    pub fn status(&self, maps: &impl Maps) -> Result<Vec<VipStatus>> {
        self.vips
            .iter()
            .map(|v| {
                let c = maps.vip_counters(v.id)?;
                let backends = v
                    .backends
                    .iter()
                    .map(|b| {
                        let bc = maps.backend_counters(b.id)?;
                        Ok(BackendStatus {
                            address: b.address,
                            port: b.port,
                            weight: b.weight,
                            state: "active".into(),
                            packets: bc.packets,
                            bytes: bc.bytes,
                            flows: bc.flows,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(VipStatus {
                    name: v.name.clone(),
                    address: v.address,
                    port: v.port,
                    protocol: "tcp".into(),
                    packets: c.packets,
                    bytes: c.bytes,
                    flows: c.flows,
                    backends,
                })
            })
            .collect()
    }
}

fn backend_value(b: &BackendEntry, vip_id: u32) -> Backend {
    Backend {
        addr_be: addr_be(b.address),
        port_be: b.port.to_be(),
        _pad: 0,
        vip_id,
        flags: BACKEND_F_IN_USE,
    }
}

/// The Maglev ring of backend ids for a set of backends.
pub fn ring_for(backends: &[BackendEntry], ring_size: u32) -> Result<Vec<u32>> {
    let input: Vec<RingBackend> = backends
        .iter()
        .map(|b| RingBackend {
            identity: b.identity(),
            weight: b.weight,
        })
        .collect();
    let ring = maglev::build_ring(&input, ring_size)?;
    Ok(ring
        .into_iter()
        .map(|i| {
            if i == NO_BACKEND {
                NO_BACKEND
            } else {
                backends[i as usize].id
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_ebpf::Counters;
    use std::collections::HashMap;

    /// Maps kept in memory, recording the order of writes.
    #[derive(Default)]
    struct FakeMaps {
        vips: HashMap<VipKey, VipValue>,
        backends: HashMap<u32, Backend>,
        rings: HashMap<(u32, u32), Vec<u32>>,
        log: Vec<String>,
        fail_rings: bool,
    }

    impl Maps for FakeMaps {
        fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<()> {
            self.log
                .push(format!("vip {} slot {}", value.id, value.ring_slot));
            self.vips.insert(key, value);
            Ok(())
        }
        fn remove_vip(&mut self, key: VipKey) -> Result<()> {
            self.vips.remove(&key);
            Ok(())
        }
        fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
            self.log
                .push(format!("backend {id} flags {}", backend.flags));
            self.backends.insert(id, backend);
            Ok(())
        }
        fn write_ring(&mut self, vip_id: u32, slot: u32, ring: &[u32]) -> Result<()> {
            if self.fail_rings {
                anyhow::bail!("injected failure");
            }
            self.log.push(format!("ring {vip_id} slot {slot}"));
            self.rings.insert((vip_id, slot), ring.to_vec());
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
    }

    fn config() -> Config {
        Config::from_toml_str(
            r#"
            [dataplane]
            interfaces = ["eth0"]
            ring_size = 1009
            [nat]
            source = "10.0.2.10"
            [[vip]]
            name = "web"
            address = "10.0.0.100"
            port = 80
            [[vip.backend]]
            address = "10.0.2.11"
            [[vip.backend]]
            address = "10.0.2.12"
            "#,
        )
        .unwrap()
    }

    fn live_ring(maps: &FakeMaps, b: &Balancer) -> Vec<u32> {
        let v = &b.vips()[0];
        let value = maps.vips[&v.key()];
        maps.rings[&(value.id, value.ring_slot)].clone()
    }

    #[test]
    fn install_writes_backends_before_the_ring_and_the_ring_before_the_vip() {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps).unwrap();
        assert_eq!(
            maps.log,
            [
                "backend 0 flags 1",
                "backend 1 flags 1",
                "ring 0 slot 1",
                "vip 0 slot 1"
            ]
        );
        let ring = live_ring(&maps, &b);
        assert!(ring.iter().all(|id| *id == 0 || *id == 1));
    }

    #[test]
    fn each_change_fills_the_other_slot_then_flips() {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps).unwrap();
        let first = b.vips()[0].live_slot;
        b.add_backend(&mut maps, "web", "10.0.2.13".parse().unwrap(), 80, 1)
            .unwrap();
        assert_ne!(b.vips()[0].live_slot, first);
        assert!(live_ring(&maps, &b).contains(&2));
        b.remove_backend(&mut maps, "web", "10.0.2.13".parse().unwrap(), 80)
            .unwrap();
        assert_eq!(b.vips()[0].live_slot, first);
        assert!(!live_ring(&maps, &b).contains(&2));
        assert!(
            maps.log.contains(&"reset 2".to_string()),
            "a reused id starts from zero"
        );
        // The backend slot is cleared only after the ring without it is live.
        let n = maps.log.len();
        assert_eq!(
            maps.log[n - 3..],
            ["ring 0 slot 1", "vip 0 slot 1", "backend 2 flags 0"]
        );
    }

    /// The live ring as backend addresses (ids may differ between runs).
    fn ring_addresses(maps: &FakeMaps, b: &Balancer) -> Vec<Ipv4Addr> {
        let v = &b.vips()[0];
        live_ring(maps, b)
            .iter()
            .map(|id| v.backends.iter().find(|x| x.id == *id).unwrap().address)
            .collect()
    }

    #[test]
    fn ids_are_reused_last_and_rings_depend_only_on_backends() {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps).unwrap();
        let before = ring_addresses(&maps, &b);
        let addr: Ipv4Addr = "10.0.2.12".parse().unwrap();
        b.remove_backend(&mut maps, "web", addr, 80).unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == 0));
        let again = b.add_backend(&mut maps, "web", addr, 80, 1).unwrap();
        assert_eq!(
            again.id, 2,
            "the next never-used id, not the one just freed"
        );
        assert_eq!(ring_addresses(&maps, &b), before);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps).unwrap();
        let log = maps.log.len();
        let a: Ipv4Addr = "10.0.2.11".parse().unwrap();
        assert_eq!(
            b.add_backend(&mut maps, "nope", a, 80, 1).unwrap_err().code,
            "not_found"
        );
        assert_eq!(
            b.add_backend(&mut maps, "web", a, 80, 1).unwrap_err().code,
            "conflict"
        );
        assert_eq!(
            b.add_backend(&mut maps, "web", a, 81, 0).unwrap_err().code,
            "invalid"
        );
        assert_eq!(
            b.add_backend(&mut maps, "web", "0.0.0.0".parse().unwrap(), 81, 1)
                .unwrap_err()
                .code,
            "invalid"
        );
        assert_eq!(
            b.remove_backend(&mut maps, "web", a, 99).unwrap_err().code,
            "not_found"
        );
        assert_eq!(maps.log.len(), log);
        assert_eq!(b.vips()[0].backends.len(), 2);
    }

    #[test]
    fn a_failed_kernel_write_leaves_the_model_as_the_kernel_has_it() {
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&config());
        b.install(&mut maps).unwrap();
        maps.fail_rings = true;
        let err = b
            .add_backend(&mut maps, "web", "10.0.2.13".parse().unwrap(), 80, 1)
            .unwrap_err();
        assert_eq!(err.code, "internal");
        assert_eq!(b.vips()[0].backends.len(), 2);
        let err = b
            .remove_backend(&mut maps, "web", "10.0.2.11".parse().unwrap(), 80)
            .unwrap_err();
        assert_eq!(err.code, "internal");
        assert_eq!(b.vips()[0].backends.len(), 2);
    }

    #[test]
    fn an_empty_vip_gets_an_empty_ring() {
        let mut cfg = config();
        cfg.vips[0].backends.clear();
        let mut maps = FakeMaps::default();
        let mut b = Balancer::new(&cfg);
        b.install(&mut maps).unwrap();
        assert!(live_ring(&maps, &b).iter().all(|id| *id == NO_BACKEND));
    }
}
