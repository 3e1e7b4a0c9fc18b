//! The bounded queue between the data plane's events and the connection
//! to the peer.
//!
//! The producer (the reader of the XDP program's ring buffer) never waits:
//! [`Sender::push`] takes a lock for a few instructions and returns. When
//! the queue is full the record is dropped, counted, and a bulk resync is
//! scheduled, which re-sends every owned flow as it is then; when no
//! connection is up the record is not queued at all (the bulk resync that
//! starts the next connection covers it).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{
    record::FlowRecord,
    status::{add, Board},
};

/// What became of a pushed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the peer.
    Queued,
    /// The queue was full: dropped, counted, and a bulk resync scheduled.
    Dropped,
    /// No connection to the peer: not queued (the next connection starts
    /// with a bulk resync).
    NoPeer,
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<(Instant, FlowRecord)>,
    /// A connection is up and takes records.
    open: bool,
    /// Records were dropped since the writer last looked.
    overflowed: bool,
}

/// The queue, shared by the producers and the writer.
#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Wakes the writer: records queued, or a resync asked for.
    pub wake: Notify,
    board: Arc<Board>,
}

impl Queue {
    pub fn new(capacity: usize, board: Arc<Board>) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            board,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn push(&self, record: FlowRecord) -> Pushed {
        let mut q = self.lock();
        if !q.open {
            drop(q);
            add(&self.board.counters.records_unsent, 1);
            return Pushed::NoPeer;
        }
        if q.records.len() >= self.capacity {
            let first = !q.overflowed;
            q.overflowed = true;
            drop(q);
            add(&self.board.counters.records_dropped, 1);
            if first {
                self.wake.notify_one();
            }
            return Pushed::Dropped;
        }
        let was_empty = q.records.is_empty();
        q.records.push_back((Instant::now(), record));
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// A connection is up: take records from now on.
    pub fn open(&self) {
        let mut q = self.lock();
        q.open = true;
        q.overflowed = false;
    }

    /// The connection is down: discard what waits and take nothing more.
    /// The discarded records count as unsent.
    pub fn close(&self) {
        let mut q = self.lock();
        let n = q.records.len() as u64;
        q.records.clear();
        q.open = false;
        q.overflowed = false;
        drop(q);
        add(&self.board.counters.records_unsent, n);
    }

    /// Whether records were dropped since the last call.
    pub fn take_overflow(&self) -> bool {
        std::mem::take(&mut self.lock().overflowed)
    }

    /// Up to `max` records, oldest first, if a batch is due: `max` of them
    /// wait, or the oldest has waited `delay`, or `now_anyway`. Otherwise
    /// the time the oldest becomes due, if any waits.
    pub fn take(
        &self,
        max: usize,
        delay: Duration,
        now_anyway: bool,
    ) -> Result<Vec<FlowRecord>, Option<Instant>> {
        let mut q = self.lock();
        let Some(&(oldest, _)) = q.records.front() else {
            return Err(None);
        };
        let due = oldest + delay;
        if q.records.len() < max && !now_anyway && Instant::now() < due {
            return Err(Some(due));
        }
        let n = q.records.len().min(max);
        Ok(q.records.drain(..n).map(|(_, r)| r).collect())
    }

    /// (records waiting, age of the oldest).
    pub fn depth(&self) -> (usize, Duration) {
        let q = self.lock();
        let lag = q
            .records
            .front()
            .map(|(at, _)| at.elapsed())
            .unwrap_or_default();
        (q.records.len(), lag)
    }
}

/// Where the data plane's events go: the handle the ring-buffer reader
/// holds. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct Sender {
    pub(crate) queue: Arc<Queue>,
}

impl Sender {
    /// Queues `record` for the peer (a new flow, or a close), unless the
    /// queue is full or no connection is up.
    pub fn push(&self, record: FlowRecord) -> Pushed {
        self.queue.push(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::record::{FlowState, RecordKind};

    fn record(i: u16) -> FlowRecord {
        FlowRecord {
            kind: RecordKind::Update,
            client: std::net::SocketAddrV4::new([192, 0, 2, 1].into(), i.max(1)),
            vip: "10.0.1.100:80".parse().unwrap(),
            backend: "10.0.2.11:8080".parse().unwrap(),
            nat: "10.0.1.101:20000".parse().unwrap(),
            age_ms: 0,
            state: FlowState::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_drops_and_counts_closed_discards_and_batches_wait() {
        let board = Arc::new(Board::default());
        let q = Queue::new(3, board.clone());
        assert_eq!(q.push(record(1)), Pushed::NoPeer);
        q.open();
        for i in 0..3 {
            assert_eq!(q.push(record(i)), Pushed::Queued);
        }
        assert_eq!(q.push(record(9)), Pushed::Dropped);
        assert_eq!(q.push(record(9)), Pushed::Dropped);
        assert_eq!(crate::sync::status::get(&board.counters.records_dropped), 2);
        assert!(q.take_overflow());
        assert!(!q.take_overflow());
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(q.depth(), (3, Duration::from_millis(40)));
        // A batch of 2 is due at once; the last one waits for its delay.
        assert_eq!(q.take(2, Duration::from_secs(1), false).unwrap().len(), 2);
        let due = q
            .take(2, Duration::from_secs(1), false)
            .unwrap_err()
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(Instant::now() >= due);
        assert_eq!(q.take(2, Duration::from_secs(1), false).unwrap().len(), 1);
        assert_eq!(q.take(2, Duration::ZERO, true), Err(None));
        q.push(record(4));
        q.close();
        assert_eq!(q.depth().0, 0);
        assert_eq!(crate::sync::status::get(&board.counters.records_unsent), 2);
        assert_eq!(q.push(record(5)), Pushed::NoPeer);
    }
}
