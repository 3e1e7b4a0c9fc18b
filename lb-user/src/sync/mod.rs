//! Flow-state sync between the two load balancers of a pair.
//!
//! Without it, a connection survives a takeover only if the new master
//! recomputes the backend and NAT port the old master chose, which fails
//! for flows whose first NAT-port candidate was busy, flows placed before a
//! backend change, and flows placed by a configuration the peer does not
//! have. With it, each lbd tells its peer about every flow its data plane
//! creates or sees close, and the peer writes them into its own flow and NAT
//! tables, *learned*, so that after a takeover the first packet of each
//! finds the same backend and NAT port. The model is Linux IPVS's sync
//! daemon (`ip_vs_sync.c`: compact fixed-size connection records batched
//! into messages) and conntrackd (a full resync when a peer (re)starts,
//! keepalives, drop-and-resync on overload), over unicast because EC2 has no
//! multicast.
//!
//! # The pieces
//!
//! - [`record`]: a flow as the pair talks about it ([`FlowRecord`]).
//! - [`wire`]: frames and records on the wire, documented byte by byte.
//! - [`auth`]: the optional HMAC-SHA256 key and per-connection keys.
//! - [`store`]: [`FlowStore`], what the channel needs from the tables, and
//!   [`MemoryStore`], an implementation in memory.
//! - [`queue`]: the bounded queue behind [`Sender`], where the data
//!   plane's events go.
//! - `session`: one connection, from either end.
//! - [`status`]: [`SyncStatus`], the numbers for `lbctl status` and the
//!   metrics.
//! - This module: [`Channel`], the listener and the dialler.
//!
//! # Connections
//!
//! Each lbd listens on `sync.listen` and accepts connections only from the
//! peer's address (anything else is closed at once and counted); it also
//! dials the peer (from its listen address, when that is not the wildcard),
//! retrying with a backoff from 100 ms doubling to 3 s. The connection an
//! lbd dials carries *its* flows to the peer (it is the *writer*); the one
//! it accepts carries the peer's flows to it (it is the *reader*). Two
//! connections, one per direction, need no rule to decide which of two
//! crossing dials survives, and a problem in one direction leaves the other
//! working.
//!
//! On every new connection both ends send a HELLO (with a fresh challenge
//! for authentication), then the writer sends a **bulk resync**: every flow
//! its tables say it owns, read in chunks of up to 1,024 from the live
//! tables, between `BULK_START` and `BULK_END`. Then it streams **events**
//! (new flows, closes) as the data plane reports them, batched into frames
//! of up to 1,024 records (a frame goes out when it is full or its oldest
//! record has waited `batch_delay`), and every `refresh_interval` a
//! **refresh**: the owned flows that had a packet since the previous walk,
//! with their current age, so the peer's copies do not expire while the
//! flows are in use here (the data plane reports no event for an
//! established packet). Events and walk chunks alternate, so a bulk resync
//! of a million flows neither delays new flows nor stalls. The reader
//! applies each record as it comes (see [`store`] for the rules) and, when a
//! bulk resync is complete and came from the same tables as the previous
//! one, forgets the learned flows it did not list.
//!
//! Each end sends a `KEEPALIVE` after `keepalive` without sending anything,
//! and closes the connection after `peer_timeout` without receiving
//! anything, or when a write does not complete in that time (the peer
//! stopped reading): a dead peer, a partition or a peer that hangs is
//! noticed in `peer_timeout`, and the next connection starts with a bulk
//! resync. So a bulk resync happens when either lbd (re)starts, after a
//! partition heals, after any broken connection, after an overload, and on
//! demand ([`Handle::resync`]; [`Handle::request_resync`] asks the peer
//! for one).
//!
//! **Overload.** The data plane's events go into a bounded queue
//! (`queue_size` records). [`Sender::push`] never waits: when the queue is
//! full the record is dropped and counted, and a bulk resync is scheduled
//! (the next complete list of owned flows includes whatever the dropped
//! records said). When no connection is up, records are not queued at all:
//! the connection's own bulk resync covers them.
//!
//! # Why TCP, not UDP
//!
//! IPVS and conntrackd send datagrams (conntrackd can also use TCP) and
//! then need their own sequence numbers, acknowledgements, resend queues
//! and loss detection, because a lost datagram is a lost flow.
//! Here a lost record costs a broken connection after a takeover, so the
//! channel must be reliable; TCP gives that, in order, with congestion and
//! flow control, and reduces every failure to one event: the connection
//! breaks, and the next one starts with a bulk resync that repairs
//! everything. Its flow control is also the overload signal: a peer that
//! cannot keep up stops reading, the sender's writes stall, its queue fills,
//! and it drops and resyncs instead of losing records silently in the
//! network. A stream also batches naturally (a bulk resync of 10,000 flows
//! is ~320 KB in 10 frames) with no datagram size limit to fit records
//! into, and a connection is the natural scope for authentication: a fresh
//! challenge per connection defeats replay with no clock or counter kept
//! across restarts. The costs: a handshake before the first record (once
//! per connection, not per record), head-of-line blocking (records must be
//! applied in order anyway: a close must not overtake its flow), and a
//! dead peer noticed by keepalives rather than by TCP itself (TCP alone
//! would take minutes).
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lb_user::sync::{Channel, MemoryStore, Settings};
//!
//! let settings = Settings::new("10.0.1.11:7112".parse()?, "10.0.1.12:7112".parse()?);
//! let channel = Channel::bind(settings, Arc::new(MemoryStore::new(1 << 20))).await?;
//! let events = channel.sender(); // to the ring-buffer reader
//! let handle = channel.handle(); // for lbctl and the metrics
//! tokio::spawn(channel.run(std::future::pending()));
//! # let _ = (events, handle);
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod queue;
pub mod record;
mod session;
pub mod status;
pub mod store;
pub mod wire;

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{watch, Notify},
    task::JoinSet,
    time::{sleep, timeout, Instant},
};

pub use auth::{Key, KeyError};
pub use queue::{Pushed, Sender};
pub use record::{FlowKey, FlowRecord, FlowState, NatKey, RecordKind};
pub use status::{BulkStatus, LinkStatus, SyncStatus};
pub use store::{Applied, FlowStore, MemoryFlow, MemoryStore};

use session::SessionError;
use status::{add, get, unix_now, Board};

/// The first pause before dialling the peer again.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest pause between two dials.
pub const RECONNECT_MAX: Duration = Duration::from_secs(3);
/// Connections from the peer being set up or served at once; more are
/// refused.
const MAX_INCOMING: usize = 4;

/// The pause before dial number `attempt` (0 for the first retry) after
/// failures in a row: 100 ms doubling, at most [`RECONNECT_MAX`].
pub fn reconnect_delay(attempt: u32) -> Duration {
    RECONNECT_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(RECONNECT_MAX)
}

/// How the channel runs (the `[sync]` configuration, validated).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to accept the peer's connection; its address is also the one
    /// the dial to the peer comes from, unless it is 0.0.0.0.
    pub listen: SocketAddrV4,
    /// The peer's sync address and port. Only connections from this
    /// address are accepted.
    pub peer: SocketAddrV4,
    /// Authenticate every frame with this key ([`Key::load`]).
    pub key: Option<Key>,
    /// Events waiting to be sent, at most.
    pub queue_size: usize,
    /// Send a keepalive after this long without sending anything.
    pub keepalive: Duration,
    /// Close the connection after this long without receiving anything.
    pub peer_timeout: Duration,
    /// Re-send the owned flows that had traffic this often.
    pub refresh_interval: Duration,
    /// Hold an event up to this long for others to share its frame.
    pub batch_delay: Duration,
}

/// Defaults of the proposed `[sync]` keys.
pub const DEFAULT_QUEUE_SIZE: usize = 65_536;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(1);
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(2);

impl Settings {
    /// The defaults, for `listen` and `peer`.
    pub fn new(listen: SocketAddrV4, peer: SocketAddrV4) -> Settings {
        Settings {
            listen,
            peer,
            key: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            keepalive: DEFAULT_KEEPALIVE,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            batch_delay: DEFAULT_BATCH_DELAY,
        }
    }

    /// Refuses settings the channel cannot run with, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.peer.ip().is_unspecified() || self.peer.port() == 0 {
            return Err(format!(
                "sync.peer: {} is not an address to connect to",
                self.peer
            ));
        }
        if self.listen.port() == 0 {
            return Err("sync.listen: a port is needed".into());
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            return Err(format!(
                "sync.queue_size: {} is not within 1..=16777216",
                self.queue_size
            ));
        }
        if self.keepalive < Duration::from_millis(10) || self.keepalive > Duration::from_secs(60) {
            return Err("sync.keepalive_ms: must be within 10..=60000".into());
        }
        if self.peer_timeout < self.keepalive * 2 || self.peer_timeout > Duration::from_secs(600) {
            return Err(
                "sync.peer_timeout_ms: must be at least twice sync.keepalive_ms, and at most 600000"
                    .into(),
            );
        }
        if self.refresh_interval < Duration::from_secs(1) {
            return Err("sync.refresh_interval_secs: must be at least 1".into());
        }
        if self.batch_delay > Duration::from_secs(1) {
            return Err("sync.batch_delay_ms: must be at most 1000".into());
        }
        Ok(())
    }
}

/// Why the channel could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Settings(String),
    #[error("sync.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddrV4,
        source: io::Error,
    },
}

/// What every task of the channel shares.
pub(crate) struct Shared {
    settings: Settings,
    store: Arc<dyn FlowStore>,
    board: Arc<Board>,
    queue: Arc<queue::Queue>,
    /// This lbd process, in HELLOs.
    instance: u64,
    /// A bulk resync to the peer was asked for.
    resync_wanted: AtomicBool,
    /// A resync request to the peer was asked for.
    request_wanted: AtomicBool,
    reader_wake: Notify,
    /// The receiver's epoch ([`store`]).
    epoch: AtomicU32,
    /// The generation of the connection from the peer that is in charge.
    active: watch::Sender<u64>,
    /// Held by the connection from the peer that applies records.
    apply_lock: tokio::sync::Mutex<()>,
    /// The peer's instance, as last heard.
    peer_instance: Mutex<Option<u64>>,
    /// The identity of the peer's tables at its last complete bulk resync.
    peer_tables: Mutex<Option<u64>>,
}

impl Shared {
    fn new(settings: Settings, store: Arc<dyn FlowStore>) -> Shared {
        let board = Arc::new(Board::default());
        Shared {
            queue: Arc::new(queue::Queue::new(settings.queue_size, board.clone())),
            settings,
            store,
            board,
            instance: u64::from_be_bytes(auth::random()),
            resync_wanted: AtomicBool::new(false),
            request_wanted: AtomicBool::new(false),
            reader_wake: Notify::new(),
            epoch: AtomicU32::new(1),
            active: watch::Sender::new(0),
            apply_lock: tokio::sync::Mutex::new(()),
            peer_instance: Mutex::new(None),
            peer_tables: Mutex::new(None),
        }
    }

    fn heard(&self, instance: u64) {
        let mut last = self.peer_instance.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| l != instance) {
            tracing::info!(peer = %self.settings.peer, "sync: the peer's lbd restarted");
        }
        *last = Some(instance);
    }

    /// The connection to the peer is up (its HELLO was `instance`), or down.
    fn sending(&self, up: bool, instance: u64) {
        if up {
            self.heard(instance);
            tracing::info!(peer = %self.settings.peer, "sync: connected; sending flows to the peer");
        }
        let mut info = self.board.info();
        info.sending.connected = up;
        info.sending.since_unix = unix_now();
        if up {
            info.sending.connections += 1;
        }
    }

    /// The connection from the peer is in charge.
    fn receiving(&self, up: bool, instance: u64) {
        if up {
            self.heard(instance);
            tracing::info!(peer = %self.settings.peer, "sync: connected; receiving flows from the peer");
        }
        let mut info = self.board.info();
        info.receiving.connected = up;
        info.receiving.since_unix = unix_now();
        if up {
            info.receiving.connections += 1;
        }
    }
}

/// The sync channel of one lbd: bound, not yet running.
pub struct Channel {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl Channel {
    /// Checks `settings` and listens on `settings.listen`.
    pub async fn bind(settings: Settings, store: Arc<dyn FlowStore>) -> Result<Channel, SyncError> {
        settings.check().map_err(SyncError::Settings)?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| SyncError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Channel::from_listener(settings, store, listener))
    }

    /// The same with a listener bound already (`settings.listen` is then
    /// only where the dial comes from).
    pub fn from_listener(
        settings: Settings,
        store: Arc<dyn FlowStore>,
        listener: TcpListener,
    ) -> Channel {
        Channel {
            shared: Arc::new(Shared::new(settings, store)),
            listener,
        }
    }

    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the data plane's events go.
    pub fn sender(&self) -> Sender {
        Sender {
            queue: self.shared.queue.clone(),
        }
    }

    /// Status and on-demand resync.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until `shutdown` completes: accepts the peer's connections,
    /// dials the peer, sends and applies flows. Dropping the future (or
    /// `shutdown`) closes both connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let sh = self.shared;
        tracing::info!(
            listen = %sh.settings.listen,
            peer = %sh.settings.peer,
            authenticated = sh.settings.key.is_some(),
            "sync: running"
        );
        tokio::select! {
            _ = shutdown => {}
            _ = accept_loop(self.listener, sh.clone()) => {}
            _ = dial_loop(sh.clone()) => {}
        }
        sh.queue.close();
        let mut info = sh.board.info();
        info.sending.connected = false;
        info.receiving.connected = false;
        info.bulk_in_progress = false;
    }
}

/// Status, and resyncs on demand. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Sends the peer a bulk resync now (after the one in progress, if
    /// any; at the next connection if none is up, as always).
    pub fn resync(&self) {
        self.shared.resync_wanted.store(true, Ordering::Relaxed);
        self.shared.queue.wake.notify_one();
    }

    /// Asks the peer to send a bulk resync (over the connection from it,
    /// once one is up).
    pub fn request_resync(&self) {
        self.shared.request_wanted.store(true, Ordering::Relaxed);
        self.shared.reader_wake.notify_one();
    }

    pub fn status(&self) -> SyncStatus {
        let sh = &self.shared;
        let c = &sh.board.counters;
        let (queue_len, lag) = sh.queue.depth();
        let info = sh.board.info();
        SyncStatus {
            listen: sh.settings.listen,
            peer: sh.settings.peer,
            authenticated: sh.settings.key.is_some(),
            sending: info.sending.clone(),
            receiving: info.receiving.clone(),
            records_sent: get(&c.records_sent),
            records_received: get(&c.records_received),
            records_applied: get(&c.records_applied),
            records_kept: get(&c.records_kept),
            records_failed: get(&c.records_failed),
            records_dropped: get(&c.records_dropped),
            records_unsent: get(&c.records_unsent),
            records_swept: get(&c.records_swept),
            bytes_sent: get(&c.bytes_sent),
            bytes_received: get(&c.bytes_received),
            frames_sent: get(&c.frames_sent),
            frames_received: get(&c.frames_received),
            queue_len: queue_len as u64,
            queue_capacity: sh.queue.capacity() as u64,
            lag_ms: lag.as_millis() as u64,
            bulk_in_progress: info.bulk_in_progress,
            bulks_sent: get(&c.bulks_sent),
            bulks_received: get(&c.bulks_received),
            last_bulk_sent: info.last_bulk_sent.clone(),
            last_bulk_received: info.last_bulk_received.clone(),
            refreshes: get(&c.refreshes),
            auth_failures: get(&c.auth_failures),
            refused_connections: get(&c.refused_connections),
            protocol_errors: get(&c.protocol_errors),
            last_problem: info.last_problem.clone(),
        }
    }
}

/// Logs a connection's end once per distinct reason in a row, so that a
/// peer that stays away writes one line, not one per retry.
#[derive(Default)]
struct Quiet {
    last: Option<String>,
}

impl Quiet {
    fn note(&mut self, direction: &str, peer: SocketAddrV4, why: &str) {
        if self.last.as_deref() != Some(why) {
            tracing::warn!(%peer, "sync: {direction}: {why}");
            self.last = Some(why.to_owned());
        }
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

async fn dial(s: &Settings) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if !s.listen.ip().is_unspecified() {
        socket.bind(SocketAddr::new(IpAddr::V4(*s.listen.ip()), 0))?;
    }
    let stream = timeout(s.peer_timeout, socket.connect(SocketAddr::V4(s.peer)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Dials the peer and sends it this host's flows, for ever.
async fn dial_loop(sh: Arc<Shared>) {
    let mut failures = 0;
    let mut quiet = Quiet::default();
    loop {
        let started = Instant::now();
        let result = match dial(&sh.settings).await {
            Ok(stream) => session::writer(stream, &sh).await,
            Err(e) => Err(SessionError::Io(e)),
        };
        let was_up = sh.board.info().sending.connected;
        sh.queue.close();
        if let Err(e) = &result {
            e.count(&sh.board);
            let why = format!("to the peer: {e}");
            if was_up {
                quiet.reset();
            }
            quiet.note("sending flows", sh.settings.peer, &why);
            let mut info = sh.board.info();
            info.sending.last_error = Some(why.clone());
            info.bulk_in_progress = false;
            drop(info);
            sh.board.problem(why);
        }
        if was_up {
            sh.sending(false, 0);
        }
        // A connection that lasted starts the backoff over.
        if was_up && started.elapsed() >= RECONNECT_MAX {
            failures = 0;
        }
        sleep(reconnect_delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// Accepts the peer's connections and applies what they carry, for ever.
async fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    let mut generation = 0u64;
    let mut refusals = crate::vrrp::refusals::LogLimit::default();
    loop {
        while sessions.try_join_next().is_some() {}
        let (stream, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "sync: accept");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from_ip = match from {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        let reason = if from_ip != *sh.settings.peer.ip() {
            Some("not_peer")
        } else if sessions.len() >= MAX_INCOMING {
            Some("too_many")
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(stream);
            add(&sh.board.counters.refused_connections, 1);
            let what = if reason == "not_peer" {
                format!(
                    "refused a connection from {from}: not the peer {}",
                    sh.settings.peer.ip()
                )
            } else {
                format!("refused a connection from {from}: {MAX_INCOMING} from the peer already")
            };
            if let crate::vrrp::refusals::Note::Log { earlier } =
                refusals.note(Instant::now(), reason, from_ip)
            {
                tracing::warn!(earlier, "sync: {what}");
            }
            sh.board.problem(what);
            continue;
        }
        let _ = stream.set_nodelay(true);
        generation += 1;
        let sh = sh.clone();
        sessions.spawn(async move {
            let result = session::reader(stream, generation, &sh).await;
            let in_charge = *sh.active.borrow() == generation;
            if let Err(e) = &result {
                e.count(&sh.board);
                if !matches!(e, SessionError::Superseded) {
                    let why = format!("from the peer {from}: {e}");
                    tracing::warn!("sync: receiving flows: {why}");
                    sh.board.info().receiving.last_error = Some(why.clone());
                    sh.board.problem(why);
                }
            }
            if in_charge {
                sh.receiving(false, 0);
            }
        });
    }
}

#[cfg(test)]
mod tests;
