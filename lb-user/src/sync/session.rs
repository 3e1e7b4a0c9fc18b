//! One connection, from either end: the HELLO exchange, then the writer
//! sending flows or the reader applying them. Generic over the byte stream,
//! so that tests can run both ends over an in-memory pipe with the clock
//! paused.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    sync::mpsc,
    time::{sleep_until, timeout, Instant},
};

use super::{
    auth::{random, DirectionKey},
    record::FlowRecord,
    status::{add, unix_now, Board, BulkStatus},
    store::Applied,
    wire::{self, Header, Hello, Message, Role, WireError, HEADER_LEN, MAX_RECORDS},
    Shared,
};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The two ends disagree about authentication.
    #[error("{0}")]
    AuthMismatch(&'static str),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Timeout(String),
    #[error("replaced by a newer connection from the peer")]
    Superseded,
}

impl SessionError {
    /// Counts the error where it belongs.
    pub fn count(&self, board: &Board) {
        match self {
            SessionError::Wire(e) if e.is_auth() => add(&board.counters.auth_failures, 1),
            SessionError::AuthMismatch(_) => add(&board.counters.auth_failures, 1),
            SessionError::Wire(_) | SessionError::Protocol(_) => {
                add(&board.counters.protocol_errors, 1)
            }
            _ => {}
        }
    }
}

/// Reads one frame's bytes into `buf` (cleared first) and returns its
/// checked header. EOF before the first byte is [`SessionError::Closed`].
async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Header, SessionError> {
    buf.clear();
    buf.resize(HEADER_LEN, 0);
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut buf[got..]).await? {
            0 if got == 0 => return Err(SessionError::Closed),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a frame",
                )
                .into())
            }
            n => got += n,
        }
    }
    let raw: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("HEADER_LEN bytes");
    let header = Header::parse(&raw)?;
    buf.resize(HEADER_LEN + header.rest_len(), 0);
    r.read_exact(&mut buf[HEADER_LEN..]).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of a frame",
            )
        } else {
            e
        }
    })?;
    Ok(header)
}

/// Checks and decodes the frame in `buf`.
fn open(
    buf: &[u8],
    header: &Header,
    expected: u32,
    key: Option<&DirectionKey>,
) -> Result<Message, WireError> {
    let raw: &[u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("HEADER_LEN bytes");
    wire::open(raw, header, &buf[HEADER_LEN..], expected, key)
}

/// The sending half of a connection: numbers, tags and writes frames.
struct FrameOut<W> {
    w: W,
    sequence: u32,
    key: Option<DirectionKey>,
    buf: Vec<u8>,
    board: Arc<Board>,
    /// A write that takes longer means the peer stopped reading.
    stall: Duration,
    /// When the last frame went out.
    last: Instant,
}

impl<W: AsyncWrite + Unpin> FrameOut<W> {
    async fn send(&mut self, msg: &Message) -> Result<(), SessionError> {
        self.buf.clear();
        wire::encode(msg, self.sequence, self.key.as_ref(), &mut self.buf);
        self.sequence = self.sequence.checked_add(1).ok_or_else(|| {
            SessionError::Protocol("frame numbers exhausted; reconnecting".into())
        })?;
        match timeout(self.stall, self.w.write_all(&self.buf)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(SessionError::Timeout(format!(
                    "the peer has not read for {} ms",
                    self.stall.as_millis()
                )))
            }
        }
        self.last = Instant::now();
        add(&self.board.counters.bytes_sent, self.buf.len() as u64);
        add(&self.board.counters.frames_sent, 1);
        Ok(())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Incoming = mpsc::Receiver<Result<Message, SessionError>>;

/// Reads frames (from number 1 on) in a task of its own, so that the
/// session can wait for them beside its timers without losing a partly
/// read frame. The task ends after passing on the first error.
fn spawn_reader<R>(
    mut r: R,
    key: Option<DirectionKey>,
    board: Arc<Board>,
) -> (Incoming, AbortOnDrop)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut expected: u32 = 1;
        loop {
            let got = read_raw(&mut r, &mut buf).await.and_then(|header| {
                add(&board.counters.bytes_received, buf.len() as u64);
                Ok(open(&buf, &header, expected, key.as_ref())?)
            });
            let failed = got.is_err();
            if got.is_ok() {
                add(&board.counters.frames_received, 1);
                expected = expected.wrapping_add(1);
            }
            if tx.send(got).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// Both ends send a HELLO and read the other's. Returns the peer's HELLO
/// and the direction keys (the one this end sends with, the one it
/// receives with), if there is a key.
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    role: Role,
    sh: &Shared,
) -> Result<(Hello, Option<(DirectionKey, DirectionKey)>), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let s = &sh.settings;
    let mine = Hello {
        challenge: random(),
        instance: sh.instance,
        keepalive_ms: s.keepalive.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
        role,
        auth: s.key.is_some(),
    };
    let mut my_raw = Vec::new();
    wire::encode(&Message::Hello(mine), 0, None, &mut my_raw);
    let their_raw = async {
        wr.write_all(&my_raw).await?;
        let mut buf = Vec::new();
        let header = read_raw(rd, &mut buf).await?;
        Ok::<_, SessionError>((header, buf))
    };
    let (header, their_raw) = timeout(s.peer_timeout, their_raw).await.map_err(|_| {
        SessionError::Timeout(format!(
            "no HELLO from the peer within {} ms",
            s.peer_timeout.as_millis()
        ))
    })??;
    let theirs = match open(&their_raw, &header, 0, None)? {
        Message::Hello(h) => h,
        m => {
            return Err(SessionError::Protocol(format!(
                "{} before the HELLO",
                m.kind().name()
            )))
        }
    };
    add(&sh.board.counters.bytes_sent, my_raw.len() as u64);
    add(&sh.board.counters.frames_sent, 1);
    add(&sh.board.counters.bytes_received, their_raw.len() as u64);
    add(&sh.board.counters.frames_received, 1);
    if theirs.role == role {
        return Err(SessionError::Protocol(format!(
            "the peer says it is the {} too",
            if role == Role::Writer {
                "writer (dialler)"
            } else {
                "reader (acceptor)"
            }
        )));
    }
    match (mine.auth, theirs.auth) {
        (true, false) => {
            return Err(SessionError::AuthMismatch(
                "the peer has no sync key and this lbd has one (sync.key_file on one host only?)",
            ))
        }
        (false, true) => {
            return Err(SessionError::AuthMismatch(
                "the peer has a sync key and this lbd has none (sync.key_file on one host only?)",
            ))
        }
        _ => {}
    }
    let keys = s.key.as_ref().map(|k| match role {
        Role::Writer => k.session(&their_raw, &my_raw),
        Role::Reader => {
            let (w, r) = k.session(&my_raw, &their_raw);
            (r, w)
        }
    });
    Ok((theirs, keys))
}

fn split_keys(
    keys: Option<(DirectionKey, DirectionKey)>,
) -> (Option<DirectionKey>, Option<DirectionKey>) {
    match keys {
        Some((send, recv)) => (Some(send), Some(recv)),
        None => (None, None),
    }
}

/// A walk over the owned flows in progress: a bulk resync, or a refresh.
struct Walk {
    bulk: bool,
    cursor: u64,
    started: Instant,
    /// When the walk before this one started: a refresh lists flows with a
    /// packet since then.
    since: Instant,
    records: u64,
    announced: bool,
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// The writer's end: sends a bulk resync, then events as they are queued,
/// refreshes and keepalives, until the connection fails.
pub(crate) async fn writer<T>(stream: T, sh: &Shared) -> Result<(), SessionError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let s = &sh.settings;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let (theirs, keys) = handshake(&mut rd, &mut wr, Role::Writer, sh).await?;
    let (send_key, recv_key) = split_keys(keys);
    let (mut rx, _reader) = spawn_reader(rd, recv_key, sh.board.clone());
    let mut out = FrameOut {
        w: wr,
        sequence: 1,
        key: send_key,
        buf: Vec::with_capacity(wire::MAX_FRAME),
        board: sh.board.clone(),
        stall: s.peer_timeout,
        last: Instant::now(),
    };
    sh.queue.open();
    sh.sending(true, theirs.instance);
    let start = Instant::now();
    let mut last_rx = start;
    let mut walk = None;
    let mut bulk_wanted = true;
    let mut previous_walk = start;
    let mut next_refresh = start + s.refresh_interval;
    loop {
        // What the reader said.
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    last_rx = Instant::now();
                    bulk_wanted |= from_reader(m?)?;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(SessionError::Closed),
            }
        }
        // Checked here too: a long bulk resync does not wait below.
        if Instant::now() >= last_rx + s.peer_timeout {
            return Err(silent(s.peer_timeout));
        }
        bulk_wanted |= sh.queue.take_overflow();
        bulk_wanted |= sh.resync_wanted.swap(false, Ordering::Relaxed);
        // A bulk resync replaces a refresh in progress; one asked for during
        // a bulk resync follows it.
        if bulk_wanted && !walk.as_ref().is_some_and(|w: &Walk| w.bulk) {
            let now = Instant::now();
            walk = Some(Walk {
                bulk: true,
                cursor: 0,
                started: now,
                since: previous_walk,
                records: 0,
                announced: false,
            });
            bulk_wanted = false;
        }

        // Events first, one frame, then one step of a walk, so that
        // neither starves the other.
        let mut sent_events = false;
        let mut due = None;
        match sh.queue.take(MAX_RECORDS, s.batch_delay, walk.is_some()) {
            Ok(records) => {
                let n = records.len() as u64;
                out.send(&Message::Records(records)).await?;
                add(&sh.board.counters.records_sent, n);
                sent_events = true;
            }
            Err(d) => due = d,
        }
        if let Some(w) = walk.as_mut() {
            if !w.announced {
                if w.bulk {
                    out.send(&Message::BulkStart {
                        tables: sh.store.tables_id(),
                    })
                    .await?;
                    sh.board.info().bulk_in_progress = true;
                }
                w.announced = true;
            }
            let mut records = Vec::new();
            let max_age = (!w.bulk).then(|| millis(w.since.elapsed()).saturating_add(1000));
            let next = sh.store.owned(w.cursor, MAX_RECORDS, max_age, &mut records);
            if !records.is_empty() {
                let n = records.len() as u64;
                out.send(&if w.bulk {
                    Message::Bulk(records)
                } else {
                    Message::Records(records)
                })
                .await?;
                w.records += n;
                add(&sh.board.counters.records_sent, n);
            }
            match next {
                Some(cursor) => w.cursor = cursor,
                None => {
                    if w.bulk {
                        out.send(&Message::BulkEnd { records: w.records }).await?;
                        add(&sh.board.counters.bulks_sent, 1);
                        let mut info = sh.board.info();
                        info.bulk_in_progress = false;
                        info.last_bulk_sent = Some(BulkStatus {
                            at_unix: unix_now(),
                            records: w.records,
                            duration_ms: w.started.elapsed().as_millis() as u64,
                        });
                        drop(info);
                        tracing::info!(
                            records = w.records,
                            ms = w.started.elapsed().as_millis() as u64,
                            "sync: bulk resync sent"
                        );
                    } else {
                        add(&sh.board.counters.refreshes, 1);
                    }
                    previous_walk = w.started;
                    next_refresh = w.started + s.refresh_interval;
                    walk = None;
                }
            }
            tokio::task::yield_now().await;
            continue;
        }
        if sent_events {
            continue;
        }

        let now = Instant::now();
        if now >= next_refresh {
            walk = Some(Walk {
                bulk: false,
                cursor: 0,
                started: now,
                since: previous_walk,
                records: 0,
                announced: false,
            });
            continue;
        }
        if now >= out.last + s.keepalive {
            out.send(&Message::Keepalive).await?;
        }
        let mut deadline = (out.last + s.keepalive)
            .min(last_rx + s.peer_timeout)
            .min(next_refresh);
        if let Some(due) = due {
            deadline = deadline.min(due);
        }
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    last_rx = Instant::now();
                    bulk_wanted |= from_reader(m?)?;
                }
                None => return Err(SessionError::Closed),
            },
            _ = sh.queue.wake.notified() => {}
            _ = sleep_until(deadline) => {}
        }
    }
}

fn silent(after: Duration) -> SessionError {
    SessionError::Timeout(format!(
        "nothing from the peer for {} ms",
        after.as_millis()
    ))
}

/// A frame from the reader: whether it asks for a bulk resync.
fn from_reader(m: Message) -> Result<bool, SessionError> {
    match m {
        Message::Keepalive => Ok(false),
        Message::ResyncRequest => {
            tracing::info!("sync: the peer asked for a bulk resync");
            Ok(true)
        }
        m => Err(SessionError::Protocol(format!(
            "{} from the reader",
            m.kind().name()
        ))),
    }
}

/// A bulk resync being received.
struct BulkIn {
    epoch: u32,
    /// The identity of the writer's tables.
    tables: u64,
    records: u64,
    started: Instant,
}

/// The reader's end: applies the writer's records, answers with
/// keepalives, and asks for a bulk resync when told to. `generation`
/// numbers the connection: once its first frame has passed the checks it
/// replaces any older connection from the peer.
pub(crate) async fn reader<T>(stream: T, generation: u64, sh: &Shared) -> Result<(), SessionError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let s = &sh.settings;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let (theirs, keys) = handshake(&mut rd, &mut wr, Role::Reader, sh).await?;
    let (send_key, recv_key) = split_keys(keys);
    let (mut rx, _reader) = spawn_reader(rd, recv_key, sh.board.clone());
    let mut out = FrameOut {
        w: wr,
        sequence: 1,
        key: send_key,
        buf: Vec::new(),
        board: sh.board.clone(),
        stall: s.peer_timeout,
        last: Instant::now(),
    };
    // The first frame proves the peer has the key before this connection
    // replaces a working one.
    let first = match timeout(s.peer_timeout, rx.recv()).await {
        Err(_) => return Err(silent(s.peer_timeout)),
        Ok(None) => return Err(SessionError::Closed),
        Ok(Some(m)) => m?,
    };
    let mut active = sh.active.subscribe();
    sh.active.send_replace(generation);
    let _applying = sh.apply_lock.lock().await;
    if *active.borrow_and_update() != generation {
        return Err(SessionError::Superseded);
    }
    sh.receiving(true, theirs.instance);
    let mut bulk = None;
    let mut last_rx = Instant::now();
    apply(first, &mut bulk, sh).await?;
    loop {
        if sh.request_wanted.swap(false, Ordering::Relaxed) {
            out.send(&Message::ResyncRequest).await?;
        }
        let now = Instant::now();
        if now >= out.last + s.keepalive {
            out.send(&Message::Keepalive).await?;
        }
        if now >= last_rx + s.peer_timeout {
            return Err(silent(s.peer_timeout));
        }
        let deadline = (out.last + s.keepalive).min(last_rx + s.peer_timeout);
        tokio::select! {
            m = rx.recv() => {
                let m = m.ok_or(SessionError::Closed)??;
                last_rx = Instant::now();
                apply(m, &mut bulk, sh).await?;
            }
            _ = sh.reader_wake.notified() => {}
            changed = active.changed() => {
                if changed.is_err() || *active.borrow_and_update() != generation {
                    return Err(SessionError::Superseded);
                }
            }
            _ = sleep_until(deadline) => {}
        }
    }
}

/// Applies one frame from the writer.
async fn apply(m: Message, bulk: &mut Option<BulkIn>, sh: &Shared) -> Result<(), SessionError> {
    let c = &sh.board.counters;
    match m {
        Message::Records(records) => apply_records(&records, sh),
        Message::Bulk(records) => {
            let b = bulk.as_mut().ok_or_else(|| {
                SessionError::Protocol("BULK records outside a bulk resync".into())
            })?;
            b.records += records.len() as u64;
            apply_records(&records, sh);
        }
        Message::BulkStart { tables } => {
            if bulk.is_some() {
                return Err(SessionError::Protocol(
                    "BULK_START inside a bulk resync".into(),
                ));
            }
            // Never 0 (a store may use 0 for "owned"). Only the connection
            // holding the apply lock gets here.
            let epoch = sh.epoch.load(Ordering::Relaxed).checked_add(1).unwrap_or(1);
            sh.epoch.store(epoch, Ordering::Relaxed);
            *bulk = Some(BulkIn {
                epoch,
                tables,
                records: 0,
                started: Instant::now(),
            });
        }
        Message::BulkEnd { records } => {
            let b = bulk
                .take()
                .ok_or_else(|| SessionError::Protocol("BULK_END without BULK_START".into()))?;
            if b.records != records {
                return Err(SessionError::Protocol(format!(
                    "BULK_END says {records} records; {} came",
                    b.records
                )));
            }
            // Learned flows the list left out are forgotten only if the
            // writer's tables are those of its previous complete list: new
            // tables (a reboot, a clean restart) list nothing of the
            // flows this host may now be the only one to know.
            let same_tables = sh
                .peer_tables
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(b.tables)
                == Some(b.tables);
            let swept = if same_tables {
                let store = sh.store.clone();
                tokio::task::spawn_blocking(move || store.sweep_learned(b.epoch))
                    .await
                    .unwrap_or(0)
            } else {
                0
            };
            add(&c.records_swept, swept);
            add(&c.bulks_received, 1);
            sh.board.info().last_bulk_received = Some(BulkStatus {
                at_unix: unix_now(),
                records,
                duration_ms: b.started.elapsed().as_millis() as u64,
            });
            tracing::info!(records, swept, same_tables, "sync: bulk resync received");
        }
        Message::Keepalive => {}
        m @ (Message::Hello(_) | Message::ResyncRequest) => {
            return Err(SessionError::Protocol(format!(
                "{} from the writer",
                m.kind().name()
            )))
        }
    }
    Ok(())
}

fn apply_records(records: &[FlowRecord], sh: &Shared) {
    let c = &sh.board.counters;
    let epoch = sh.epoch.load(Ordering::Relaxed);
    let (mut applied, mut kept, mut failed) = (0, 0, 0);
    for r in records {
        match sh.store.apply(r, epoch) {
            Applied::Learned | Applied::Refreshed => applied += 1,
            Applied::Kept => kept += 1,
            Applied::Full | Applied::Conflict => failed += 1,
        }
    }
    add(&c.records_received, records.len() as u64);
    add(&c.records_applied, applied);
    add(&c.records_kept, kept);
    add(&c.records_failed, failed);
}
