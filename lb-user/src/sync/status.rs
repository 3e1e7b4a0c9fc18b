//! What the sync channel has done, for `lbctl status` and the metrics.

use std::{
    net::SocketAddrV4,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The sync channel as `lbctl status` shows it. Counts are since lbd
/// started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Where this lbd listens for the peer.
    pub listen: SocketAddrV4,
    /// The peer's sync address.
    pub peer: SocketAddrV4,
    /// Frames are authenticated (a key is configured).
    pub authenticated: bool,
    /// The connection that carries this host's flows to the peer.
    pub sending: LinkStatus,
    /// The connection that carries the peer's flows here.
    pub receiving: LinkStatus,
    /// Records sent to the peer: events, refreshes and bulk resyncs.
    pub records_sent: u64,
    /// Records received from the peer.
    pub records_received: u64,
    /// Records written to the tables (learned or refreshed).
    pub records_applied: u64,
    /// Records not written because this host's copy of the flow is owned
    /// and has more recent traffic.
    pub records_kept: u64,
    /// Records not written for want of room, or because their NAT entry
    /// belongs to a more recent flow here.
    pub records_failed: u64,
    /// Events dropped because the queue to the peer was full (each drop
    /// schedules a bulk resync).
    pub records_dropped: u64,
    /// Events not queued because no connection to the peer was up (the
    /// bulk resync that starts each connection covers them).
    pub records_unsent: u64,
    /// Learned flows forgotten after a bulk resync did not list them.
    pub records_swept: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Events waiting to be sent, and the queue's size.
    pub queue_len: u64,
    pub queue_capacity: u64,
    /// Age of the oldest event waiting to be sent (0 when none waits).
    pub lag_ms: u64,
    /// A bulk resync to the peer is being sent.
    pub bulk_in_progress: bool,
    pub bulks_sent: u64,
    pub bulks_received: u64,
    pub last_bulk_sent: Option<BulkStatus>,
    pub last_bulk_received: Option<BulkStatus>,
    /// Refresh walks completed (owned flows with recent traffic re-sent).
    pub refreshes: u64,
    /// Frames refused for a missing or wrong tag, or a key on one side only.
    pub auth_failures: u64,
    /// Connections refused because they came from another address than the
    /// peer's (or too many at once from it).
    pub refused_connections: u64,
    /// Connections closed for a malformed frame or a protocol violation.
    pub protocol_errors: u64,
    /// The latest problem, in words.
    pub last_problem: Option<String>,
}

/// One direction's connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub connected: bool,
    /// When it last connected or disconnected (Unix seconds; 0: never).
    pub since_unix: u64,
    /// Connections made (handshake completed).
    pub connections: u64,
    /// Why the last connection ended or could not be made.
    pub last_error: Option<String>,
}

/// One complete bulk resync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkStatus {
    /// When it ended (Unix seconds).
    pub at_unix: u64,
    pub records: u64,
    pub duration_ms: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The counters, updated by every task of the channel.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records_sent: AtomicU64,
    pub records_received: AtomicU64,
    pub records_applied: AtomicU64,
    pub records_kept: AtomicU64,
    pub records_failed: AtomicU64,
    pub records_dropped: AtomicU64,
    pub records_unsent: AtomicU64,
    pub records_swept: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bulks_sent: AtomicU64,
    pub bulks_received: AtomicU64,
    pub refreshes: AtomicU64,
    pub auth_failures: AtomicU64,
    pub refused_connections: AtomicU64,
    pub protocol_errors: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The parts of the status that are not counters.
#[derive(Debug, Default)]
pub(crate) struct Info {
    pub sending: LinkStatus,
    pub receiving: LinkStatus,
    pub bulk_in_progress: bool,
    pub last_bulk_sent: Option<BulkStatus>,
    pub last_bulk_received: Option<BulkStatus>,
    pub last_problem: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Board {
    pub counters: Counters,
    pub info: Mutex<Info>,
}

impl Board {
    pub fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn problem(&self, what: String) {
        self.info().last_problem = Some(what);
    }
}
