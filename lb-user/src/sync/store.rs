//! The boundary between the sync channel and the flow and NAT tables.
//!
//! The channel needs three things from the tables, named by [`FlowStore`]:
//! write a flow learned from the peer, list the flows this host owns, and
//! forget learned flows a bulk resync did not mention. The XDP program's
//! events reach the channel the other way, through a [`super::Sender`].
//!
//! # Owned and learned
//!
//! A flow is **owned** by a host when that host's data plane made it (it saw
//! the flow's first packet) or has forwarded a packet of it since it was
//! learned. A flow is **learned** when lbd wrote it from a peer's record and
//! no packet of it has reached this host's data plane since. The data plane
//! forwards a learned flow exactly like an owned one (that is the point: after
//! a takeover the first packet finds its backend and NAT port); that packet
//! makes it owned. Only owned flows are sent to the peer, so a flow never
//! echoes back to where it came from.
//!
//! # Ages and expiry
//!
//! Records carry the age of the flow's last packet, never a time. The store
//! turns an age into its own clock (for the XDP tables: the program's clock,
//! `jiffies` × `ns_per_tick`, as in `lb_ebpf::prog::CLOCK`) as
//! `last_seen = now - age`, and the learned flow then expires by the same
//! rules as an owned one (`lb_ebpf::entry_expired`: idle timeout, closed
//! timeout, NAT port hold), so both hosts forget it at about the same time.
//! The owner reports traffic on a flow at least every refresh interval (a
//! *refresh*, [`super::Settings::refresh_interval`]); a store may add up to
//! that interval to a learned flow's life to cover the delay.
//!
//! # Which copy wins
//!
//! A record replaces the local copy of its flow unless the local copy is
//! owned and its last packet is at least as recent as the record's: the
//! host that saw the latest packet of a flow is the one forwarding it. The
//! same rule settles a NAT entry (backend, NAT address and port) that another
//! flow holds: a learned or older holder gives way, an owned holder with more
//! recent traffic keeps it and the record is [`Applied::Conflict`].
//!
//! # Epochs and sweeps
//!
//! Every record is applied with the receiver's current *epoch*, a number
//! from 1 (never 0) that grows by one at each bulk resync received (after
//! 2^32 - 1 of them it starts again at 1, and that sweep spares the older
//! flows: they expire). When a bulk resync has been received completely, learned flows
//! stamped with an older epoch were neither in the peer's list of owned
//! flows nor sent since the list began: the peer no longer has them (their
//! close was lost with a dropped record, or they expired or were displaced
//! there). The channel then calls [`FlowStore::sweep_learned`] with that
//! resync's epoch, but only if the peer's tables are the ones its previous
//! complete resync came from ([`FlowStore::tables_id`] is the same): tables
//! created anew (the peer rebooted, or its lbd stopped cleanly and started
//! again) list none of the flows this host may now be the only one to know,
//! for instance those it took over and that have been idle since. Learned
//! flows left unswept expire like any other. Owned flows are never swept.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use tokio::time::Instant;

use super::record::{FlowKey, FlowRecord, FlowState, NatKey, RecordKind};

/// What applying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A learned flow was written where there was none (or where the local
    /// copy was older).
    Learned,
    /// A learned flow was brought up to date.
    Refreshed,
    /// The local copy is owned and has traffic at least as recent: kept, the
    /// record ignored.
    Kept,
    /// No room in the tables for it (its flow bucket, or every NAT way, full
    /// of live entries).
    Full,
    /// Its NAT entry (backend, NAT address and port) belongs to another
    /// owned flow with more recent traffic.
    Conflict,
}

/// The flow and NAT tables as the sync channel sees them.
///
/// Calls come from the channel's tasks, one at a time for each kind of call
/// (applies from the receiving connection, walks from the sending one), but
/// an apply and a walk may run at the same time. Each call must return in
/// bounded time (at most a few milliseconds): [`FlowStore::owned`] bounds
/// its own work; [`FlowStore::sweep_learned`] is called off the async
/// runtime and may take longer.
pub trait FlowStore: Send + Sync + 'static {
    /// Writes the flow `record` describes, and its NAT entry, as learned,
    /// stamped with `epoch`, unless the local copy wins (see the module
    /// documentation). `record.kind` is `Close` when the peer saw the
    /// connection end: the flow is written (or kept) with the closed state
    /// given, so that the closed timeout and the NAT port hold apply here
    /// too; a close of an unknown flow creates it, closed.
    fn apply(&self, record: &FlowRecord, epoch: u32) -> Applied;

    /// Lists owned flows, as [`RecordKind::Update`] records with their age
    /// now, from position `cursor` (0 to begin) into `out`: at most `max`
    /// records, and only flows whose last packet is at most `max_age_ms`
    /// old if that is given. Returns the position to continue from, or
    /// `None` when the walk has reached the end. May return fewer records
    /// than `max`, even none, to bound its work. A flow present for the
    /// whole walk is listed exactly once; one created or deleted during it
    /// may or may not be.
    fn owned(
        &self,
        cursor: u64,
        max: usize,
        max_age_ms: Option<u32>,
        out: &mut Vec<FlowRecord>,
    ) -> Option<u64>;

    /// Forgets every learned flow (and its NAT entry) last applied with an
    /// epoch older than `epoch`; returns how many.
    fn sweep_learned(&self, epoch: u32) -> u64;

    /// The identity of these tables: the same for as long as they live
    /// (across lbd restarts that adopt them), different once they are
    /// created anew, also across reboots. For the XDP tables, for example,
    /// the boot id hashed with the flow map's kernel id, or a random number
    /// kept in a pinned map.
    fn tables_id(&self) -> u64;
}

/// A flow in [`MemoryStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFlow {
    pub backend: std::net::SocketAddrV4,
    pub nat: std::net::SocketAddrV4,
    pub state: FlowState,
    /// Milliseconds on the store's clock.
    pub last_seen_ms: u64,
    /// The epoch it was learned with, or `None` if owned.
    pub learned: Option<u32>,
}

#[derive(Debug, Default)]
struct Tables {
    /// Walk order: a position per flow, new flows at the end.
    slots: BTreeMap<u64, FlowKey>,
    flows: HashMap<FlowKey, (u64, MemoryFlow)>,
    nat: HashMap<NatKey, FlowKey>,
    next_slot: u64,
}

impl Tables {
    fn remove(&mut self, key: &FlowKey) -> Option<MemoryFlow> {
        let (slot, flow) = self.flows.remove(key)?;
        self.slots.remove(&slot);
        if self.nat.get(&(flow.backend, flow.nat)) == Some(key) {
            self.nat.remove(&(flow.backend, flow.nat));
        }
        Some(flow)
    }

    fn insert(&mut self, key: FlowKey, flow: MemoryFlow) {
        let slot = match self.flows.get(&key) {
            Some((slot, old)) => {
                let old_nat = (old.backend, old.nat);
                if self.nat.get(&old_nat) == Some(&key) {
                    self.nat.remove(&old_nat);
                }
                *slot
            }
            None => {
                self.next_slot += 1;
                self.slots.insert(self.next_slot, key);
                self.next_slot
            }
        };
        self.nat.insert((flow.backend, flow.nat), key);
        self.flows.insert(key, (slot, flow));
    }
}

/// Flow tables in memory, with the semantics [`FlowStore`] asks of the real
/// ones: what the channel's tests run against, and a reference for the XDP
/// tables' implementation. Its "data plane" side ([`MemoryStore::open`],
/// [`MemoryStore::touch`], [`MemoryStore::close`]) stands for packets
/// forwarded by this host. Flows do not expire on their own.
#[derive(Debug)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    id: u64,
    capacity: usize,
    start: Instant,
    /// Most records a walk call looks at (the bound on its work).
    walk_budget: usize,
}

impl MemoryStore {
    /// A store for at most `capacity` flows.
    pub fn new(capacity: usize) -> MemoryStore {
        MemoryStore {
            tables: Mutex::new(Tables::default()),
            id: u64::from_be_bytes(super::auth::random()),
            capacity,
            start: Instant::now(),
            walk_budget: 4096,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A packet of a new flow forwarded here: the flow is owned, seen now.
    /// Returns the record the data plane's event would carry.
    pub fn open(
        &self,
        client: std::net::SocketAddrV4,
        vip: std::net::SocketAddrV4,
        backend: std::net::SocketAddrV4,
        nat: std::net::SocketAddrV4,
    ) -> FlowRecord {
        let state = FlowState {
            established: true,
            ..FlowState::default()
        };
        let flow = MemoryFlow {
            backend,
            nat,
            state,
            last_seen_ms: self.now_ms(),
            learned: None,
        };
        let mut t = self.lock();
        if let Some(other) = t.nat.get(&(backend, nat)).copied() {
            if other != (client, vip) {
                t.remove(&other);
            }
        }
        t.insert((client, vip), flow);
        FlowRecord {
            kind: RecordKind::Update,
            client,
            vip,
            backend,
            nat,
            age_ms: 0,
            state,
        }
    }

    /// A packet of an existing flow forwarded here: seen now, and owned.
    /// False if there is no such flow.
    pub fn touch(&self, key: &FlowKey) -> bool {
        let now = self.now_ms();
        let mut t = self.lock();
        match t.flows.get_mut(key) {
            Some((_, f)) => {
                f.last_seen_ms = now;
                f.learned = None;
                true
            }
            None => false,
        }
    }

    /// A FIN or RST forwarded here: the flow's state becomes `state`.
    /// Returns the close record the data plane's event would carry.
    pub fn close(&self, key: &FlowKey, state: FlowState) -> Option<FlowRecord> {
        let now = self.now_ms();
        let mut t = self.lock();
        let (_, f) = t.flows.get_mut(key)?;
        f.state = state;
        f.last_seen_ms = now;
        f.learned = None;
        Some(FlowRecord {
            kind: RecordKind::Close,
            client: key.0,
            vip: key.1,
            backend: f.backend,
            nat: f.nat,
            age_ms: 0,
            state,
        })
    }

    /// The flow `key` expired or was displaced: forgotten, with no event.
    pub fn remove(&self, key: &FlowKey) -> bool {
        self.lock().remove(key).is_some()
    }

    /// The flow `key`, if present.
    pub fn get(&self, key: &FlowKey) -> Option<MemoryFlow> {
        self.lock().flows.get(key).map(|(_, f)| *f)
    }

    /// Which flow holds the NAT entry `nat`.
    pub fn nat_holder(&self, nat: &NatKey) -> Option<FlowKey> {
        self.lock().nat.get(nat).copied()
    }

    /// (owned, learned) flows.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        let learned = t
            .flows
            .values()
            .filter(|(_, f)| f.learned.is_some())
            .count();
        (t.flows.len() - learned, learned)
    }

    /// Every flow, learned or owned.
    pub fn all(&self) -> Vec<(FlowKey, MemoryFlow)> {
        self.lock()
            .flows
            .iter()
            .map(|(k, (_, f))| (*k, *f))
            .collect()
    }
}

impl FlowStore for MemoryStore {
    fn apply(&self, r: &FlowRecord, epoch: u32) -> Applied {
        let now = self.now_ms();
        let seen = now.saturating_sub(u64::from(r.age_ms));
        let key = r.key();
        let mut t = self.lock();
        let existing = t.flows.get(&key).map(|(_, f)| *f);
        if let Some(f) = existing {
            if f.learned.is_none() && f.last_seen_ms >= seen {
                return Applied::Kept;
            }
        }
        if let Some(holder) = t.nat.get(&r.nat_key()).copied() {
            if holder != key {
                let (_, h) = t.flows[&holder];
                if h.learned.is_none() && h.last_seen_ms >= seen {
                    return Applied::Conflict;
                }
                t.remove(&holder);
            }
        }
        if existing.is_none() && t.flows.len() >= self.capacity {
            return Applied::Full;
        }
        t.insert(
            key,
            MemoryFlow {
                backend: r.backend,
                nat: r.nat,
                state: r.state,
                last_seen_ms: seen,
                learned: Some(epoch),
            },
        );
        match existing {
            Some(f) if f.learned.is_some() => Applied::Refreshed,
            _ => Applied::Learned,
        }
    }

    fn owned(
        &self,
        cursor: u64,
        max: usize,
        max_age_ms: Option<u32>,
        out: &mut Vec<FlowRecord>,
    ) -> Option<u64> {
        let now = self.now_ms();
        let t = self.lock();
        let mut listed = 0;
        for (looked, (&slot, key)) in t.slots.range(cursor..).enumerate() {
            if looked == self.walk_budget || listed == max {
                return Some(slot);
            }
            let (_, f) = &t.flows[key];
            if f.learned.is_some() {
                continue;
            }
            let age = now.saturating_sub(f.last_seen_ms).min(u64::from(u32::MAX)) as u32;
            if max_age_ms.is_some_and(|m| age > m) {
                continue;
            }
            out.push(FlowRecord {
                kind: RecordKind::Update,
                client: key.0,
                vip: key.1,
                backend: f.backend,
                nat: f.nat,
                age_ms: age,
                state: f.state,
            });
            listed += 1;
        }
        None
    }

    fn sweep_learned(&self, epoch: u32) -> u64 {
        let mut t = self.lock();
        let stale: Vec<FlowKey> = t
            .flows
            .iter()
            .filter(|(_, (_, f))| f.learned.is_some_and(|e| e < epoch))
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            t.remove(k);
        }
        stale.len() as u64
    }

    fn tables_id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn record(client: &str, nat: &str, age_ms: u32) -> FlowRecord {
        FlowRecord {
            kind: RecordKind::Update,
            client: a(client),
            vip: a("10.0.1.100:80"),
            backend: a("10.0.2.11:8080"),
            nat: a(nat),
            age_ms,
            state: FlowState::default(),
        }
    }

    fn walk(s: &MemoryStore, max_age_ms: Option<u32>) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        let mut cursor = Some(0);
        while let Some(c) = cursor {
            cursor = s.owned(c, 7, max_age_ms, &mut out);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn learned_flows_follow_the_newest_copy() {
        let s = MemoryStore::new(100);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        let r = record("192.0.2.1:1000", "10.0.1.101:20000", 500);
        assert_eq!(s.apply(&r, 1), Applied::Learned);
        assert_eq!(s.get(&r.key()).unwrap().last_seen_ms, 9_500);
        assert_eq!(s.apply(&r, 1), Applied::Refreshed);
        // Traffic here makes it owned; an older record no longer wins.
        assert!(s.touch(&r.key()));
        assert_eq!(s.apply(&r, 2), Applied::Kept);
        assert_eq!(s.get(&r.key()).unwrap().learned, None);
        // A record newer than our last packet does (the peer forwards it now).
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let newer = record("192.0.2.1:1000", "10.0.1.101:20000", 10);
        assert_eq!(s.apply(&newer, 2), Applied::Learned);
        assert_eq!(s.get(&r.key()).unwrap().learned, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn nat_entries_follow_the_same_rule() {
        let s = MemoryStore::new(100);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        let mine = s.open(
            a("192.0.2.9:9"),
            a("10.0.1.100:80"),
            a("10.0.2.11:8080"),
            a("10.0.1.101:20000"),
        );
        // The peer's flow on the same NAT tuple, older than ours: conflict.
        let theirs = record("192.0.2.1:1000", "10.0.1.101:20000", 100);
        assert_eq!(s.apply(&theirs, 1), Applied::Conflict);
        assert_eq!(s.nat_holder(&mine.nat_key()), Some(mine.key()));
        // Once ours is older than theirs, theirs takes the entry.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(s.apply(&theirs, 1), Applied::Learned);
        assert_eq!(s.nat_holder(&mine.nat_key()), Some(theirs.key()));
        assert!(s.get(&mine.key()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn walks_list_owned_flows_once_with_their_age() {
        let s = MemoryStore::new(1000);
        for i in 0..100u16 {
            s.open(
                SocketAddrV4::new([192, 0, 2, 1].into(), 1000 + i),
                a("10.0.1.100:80"),
                a("10.0.2.11:8080"),
                SocketAddrV4::new([10, 0, 1, 101].into(), 20000 + i),
            );
        }
        s.apply(&record("192.0.2.2:5", "10.0.1.101:30000", 0), 1);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        for i in 0..10u16 {
            s.touch(&(
                SocketAddrV4::new([192, 0, 2, 1].into(), 1000 + i),
                a("10.0.1.100:80"),
            ));
        }
        let all = walk(&s, None);
        assert_eq!(all.len(), 100, "owned only");
        let mut keys: Vec<_> = all.iter().map(|r| r.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 100);
        assert_eq!(all.iter().filter(|r| r.age_ms == 5000).count(), 90);
        assert_eq!(walk(&s, Some(1000)).len(), 10, "recent only");
    }

    #[test]
    fn sweeps_forget_only_older_learned_flows() {
        let s = MemoryStore::new(3);
        s.open(
            a("192.0.2.9:9"),
            a("10.0.1.100:80"),
            a("10.0.2.11:8080"),
            a("10.0.1.101:20000"),
        );
        assert_eq!(
            s.apply(&record("192.0.2.1:1", "10.0.1.101:20001", 0), 1),
            Applied::Learned
        );
        assert_eq!(
            s.apply(&record("192.0.2.1:2", "10.0.1.101:20002", 0), 2),
            Applied::Learned
        );
        assert_eq!(
            s.apply(&record("192.0.2.1:3", "10.0.1.101:20003", 0), 2),
            Applied::Full
        );
        assert_eq!(s.sweep_learned(2), 1);
        assert_eq!(s.counts(), (1, 1));
        assert_eq!(s.sweep_learned(9), 1);
        assert_eq!(s.counts(), (1, 0));
    }
}
