//! The channel end to end: sessions over in-memory pipes with the clock
//! paused (timers), and pairs of channels over real loopback TCP sockets.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
    time::{sleep, Instant},
};

use super::{
    session::{self, SessionError},
    status::get,
    wire::{self, Hello, Message, Role},
    *,
};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Flow `i` of host `host`: distinct clients, and NAT tuples (backend,
/// NAT port) distinct for the first 30,000 flows of hosts 1 and 2.
fn flow(host: u8, i: u32) -> (SocketAddrV4, SocketAddrV4, SocketAddrV4, SocketAddrV4) {
    let b = i.to_be_bytes();
    (
        addr(Ipv4Addr::new(192, host, b[2], b[3]), 1024 + b[1] as u16),
        addr(Ipv4Addr::new(10, 0, 1, 100), 80),
        addr(Ipv4Addr::new(10, 0, 2, 10 + (i % 3) as u8), 8080),
        addr(
            Ipv4Addr::new(10, 0, 1, 101),
            1 + ((u32::from(host) * 30_000 + i) % 65_000) as u16,
        ),
    )
}

/// Opens flows `range` of `host` in `store` (traffic through this host),
/// returning the records its data plane would report.
fn open(store: &MemoryStore, host: u8, range: std::ops::Range<u32>) -> Vec<FlowRecord> {
    range
        .map(|i| {
            let (c, v, b, n) = flow(host, i);
            store.open(c, v, b, n)
        })
        .collect()
}

fn settings(listen: SocketAddrV4, peer: SocketAddrV4) -> Settings {
    Settings {
        keepalive: Duration::from_millis(250),
        peer_timeout: Duration::from_secs(2),
        batch_delay: Duration::from_millis(1),
        ..Settings::new(listen, peer)
    }
}

fn key(text: &str) -> Key {
    Key::from_bytes(text.as_bytes().to_vec()).unwrap()
}

/// Waits (real time, up to 30 s) for `what` to hold.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if std::env::var_os("LB_SYNC_DEBUG").is_some() {
            eprintln!("waiting for {what}");
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Learned flows in `store` equal to `expected` (the owner's records).
fn holds_learned(store: &MemoryStore, expected: &[FlowRecord]) -> bool {
    expected.iter().all(|r| {
        store.get(&r.key()).is_some_and(|f| {
            f.learned.is_some() && f.backend == r.backend && f.nat == r.nat && f.state == r.state
        })
    })
}

/// One lbd's sync channel, running.
struct Host {
    store: Arc<MemoryStore>,
    sender: Sender,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Host {
    fn start(settings: Settings, listener: TcpListener, store: Arc<MemoryStore>) -> Host {
        let channel = Channel::from_listener(settings, store.clone(), listener);
        let (stop, stopped) = oneshot::channel();
        Host {
            store,
            sender: channel.sender(),
            handle: channel.handle(),
            stop: Some(stop),
            task: tokio::spawn(channel.run(async {
                let _ = stopped.await;
            })),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }

    fn status(&self) -> SyncStatus {
        self.handle.status()
    }
}

async fn listener(ip: Ipv4Addr, port: u16) -> TcpListener {
    TcpListener::bind(addr(ip, port)).await.unwrap()
}

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_exchanges_10000_flows_and_resyncs_after_each_side_restarts() {
    let (la, lb) = (listener(LOCAL, 0).await, listener(LOCAL, 0).await);
    let (pa, pb) = (port(&la), port(&lb));
    let sa = Settings {
        key: Some(key("a key both hosts share, 32 bytes")),
        ..settings(addr(LOCAL, pa), addr(LOCAL, pb))
    };
    let sb = Settings {
        key: Some(key("a key both hosts share, 32 bytes")),
        ..settings(addr(LOCAL, pb), addr(LOCAL, pa))
    };
    let store_a = Arc::new(MemoryStore::new(1 << 20));
    let mut flows_a = open(&store_a, 1, 0..10_000);
    let store_b = Arc::new(MemoryStore::new(1 << 20));
    let flows_b = open(&store_b, 2, 0..100);

    let a = Host::start(sa.clone(), la, store_a.clone());
    let b = Host::start(sb.clone(), lb, store_b.clone());
    until("B to learn A's 10,000 flows", || {
        holds_learned(&store_b, &flows_a)
    })
    .await;
    until("A to learn B's 100 flows", || {
        holds_learned(&store_a, &flows_b)
    })
    .await;
    until("both bulk resyncs to end", || {
        a.status().bulks_received == 1 && b.status().bulks_received == 1
    })
    .await;
    assert_eq!(store_b.counts(), (100, 10_000));
    assert_eq!(store_a.counts(), (10_000, 100));
    let st = a.status();
    assert!(
        st.authenticated && st.sending.connected && st.receiving.connected,
        "{st:?}"
    );
    assert_eq!(st.last_bulk_sent.as_ref().unwrap().records, 10_000);
    assert_eq!(
        b.status().last_bulk_received.as_ref().unwrap().records,
        10_000
    );
    assert_eq!(b.status().records_applied, 10_000);

    // Events: 500 new flows and 100 closes reach B as they happen.
    let fresh = open(&store_a, 1, 10_000..10_500);
    for r in &fresh {
        assert_eq!(a.sender.push(*r), Pushed::Queued);
    }
    flows_a.extend(fresh);
    let closed = FlowState {
        established: true,
        fin_client: true,
        fin_backend: true,
        rst: false,
        backend_first: true,
    };
    for r in flows_a.iter_mut().take(100) {
        *r = store_a.close(&r.key(), closed).unwrap();
        a.sender.push(*r);
    }
    until("B to learn the new flows and the closes", || {
        holds_learned(&store_b, &flows_a)
    })
    .await;
    assert_eq!(a.status().bulks_sent, 1, "events, no further bulk resync");

    // B restarts with empty tables (but for its own flows): A's connection
    // breaks, A dials again and sends everything.
    b.stop().await;
    let store_b = Arc::new(MemoryStore::new(1 << 20));
    open(&store_b, 2, 0..100);
    let b = Host::start(sb.clone(), listener(LOCAL, pb).await, store_b.clone());
    until("the restarted B to learn all 10,500", || {
        holds_learned(&store_b, &flows_a)
    })
    .await;
    assert_eq!(store_b.counts(), (100, 10_500));
    until("A to have sent its second bulk resync", || {
        a.status().bulks_sent == 2
    })
    .await;
    assert!(a.status().sending.connections >= 2);

    // A's lbd restarts, adopting its tables, in which 5,500 flows expired
    // meanwhile (no event): B forgets them after A's bulk resync.
    a.stop().await;
    for r in &flows_a[5_000..] {
        assert!(store_a.remove(&r.key()));
    }
    let a = Host::start(sa.clone(), listener(LOCAL, pa).await, store_a.clone());
    let kept = &flows_a[..5_000];
    until("B to hold exactly A's 5,000 flows", || {
        store_b.counts() == (100, 5_000) && holds_learned(&store_b, kept)
    })
    .await;
    until("the sweep to be counted", || {
        b.status().records_swept == 5_500
    })
    .await;

    // A reboots: new, empty tables. B keeps what it learned (it may be the
    // only copy left, of connections it took over say), to expire by age.
    a.stop().await;
    let store_a = Arc::new(MemoryStore::new(1 << 20));
    let a = Host::start(sa, listener(LOCAL, pa).await, store_a.clone());
    until("B to receive A's empty list", || {
        b.status().bulks_received == 3
    })
    .await;
    assert_eq!(store_b.counts(), (100, 5_000));
    assert_eq!(b.status().records_swept, 5_500);
    until("the rebooted A to learn B's flows", || {
        holds_learned(&store_a, &flows_b)
    })
    .await;
    let st = b.status();
    assert_eq!(st.auth_failures, 0);
    assert_eq!(st.protocol_errors, 0);
    a.stop().await;
    b.stop().await;
}

/// A TCP relay that can break its connections, freeze them (hold them
/// open and pass nothing on), or refuse new ones.
struct Relay {
    addr: SocketAddrV4,
    mode: watch::Sender<u32>,
    accepting: Arc<std::sync::atomic::AtomicBool>,
    made: Arc<std::sync::atomic::AtomicU32>,
    task: JoinHandle<()>,
}

const RELAY_PASS: u32 = 0;

impl Relay {
    async fn start(to: SocketAddrV4) -> Relay {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let l = listener(LOCAL, 0).await;
        let addr = addr(LOCAL, port(&l));
        let (mode, _) = watch::channel(RELAY_PASS);
        let modes = mode.clone();
        let accepting = Arc::new(AtomicBool::new(true));
        let made = Arc::new(AtomicU32::new(0));
        let (acc, count) = (accepting.clone(), made.clone());
        let task = tokio::spawn(async move {
            loop {
                let (a, _) = l.accept().await.unwrap();
                if !acc.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(b) = TcpStream::connect(to).await else {
                    continue;
                };
                let generation = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(relay_pair(a, b, modes.subscribe(), generation));
            }
        });
        Relay {
            addr,
            mode,
            accepting,
            made,
            task,
        }
    }

    /// Ends (`cut`) or freezes every connection made so far.
    fn set(&self, cut: bool) {
        let through = self.made.load(std::sync::atomic::Ordering::SeqCst);
        self.mode.send_replace(through * 2 + u32::from(cut));
    }

    /// Takes new connections (and relays them) or drops them at once.
    fn accept(&self, yes: bool) {
        self.accepting
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies both ways until the mode says this pair (`generation`) is cut
/// (the sockets are dropped) or frozen (kept, nothing copied).
async fn relay_pair(a: TcpStream, b: TcpStream, mut mode: watch::Receiver<u32>, generation: u32) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let copy = async {
        let one = tokio::io::copy(&mut ar, &mut bw);
        let two = tokio::io::copy(&mut br, &mut aw);
        let _ = tokio::join!(one, two);
    };
    let affected = |m: u32| m != RELAY_PASS && generation <= m / 2;
    let decided = async {
        loop {
            if affected(*mode.borrow_and_update()) {
                return *mode.borrow() % 2 == 1;
            }
            if mode.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = copy => return,
        cut = decided => if cut { return },
    }
    // Frozen: hold the sockets, pass nothing, for a long while.
    sleep(Duration::from_secs(60)).await;
    drop((ar, aw, br, bw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_silent_connections_are_replaced_and_resynced() {
    let (la, lb) = (listener(LOCAL, 0).await, listener(LOCAL, 0).await);
    let (pa, pb) = (port(&la), port(&lb));
    let relay = Relay::start(addr(LOCAL, pb)).await;
    let store_a = Arc::new(MemoryStore::new(1 << 16));
    let mut flows = open(&store_a, 1, 0..2_000);
    // A reaches B through the relay; B reaches A directly.
    let a = Host::start(settings(addr(LOCAL, pa), relay.addr), la, store_a);
    let b = Host::start(
        settings(addr(LOCAL, pb), addr(LOCAL, pa)),
        lb,
        Arc::new(MemoryStore::new(1 << 16)),
    );
    until("B to learn 2,000 flows", || holds_learned(&b.store, &flows)).await;

    // Connection 1 breaks, and the relay refuses new ones for a while.
    // Flows opened meanwhile are not queued (no peer); the next
    // connection's bulk resync carries them.
    relay.accept(false);
    relay.set(true);
    until("A to notice", || !a.status().sending.connected).await;
    for r in open(&a.store, 1, 2_000..2_500) {
        assert_eq!(a.sender.push(r), Pushed::NoPeer);
        flows.push(r);
    }
    relay.accept(true);
    until("B to learn the flows of the outage", || {
        holds_learned(&b.store, &flows)
    })
    .await;
    until("A's second bulk resync to end", || {
        a.status().bulks_sent == 2
    })
    .await;
    assert_eq!(a.status().records_unsent, 500);

    // Connection 2 goes silent: A notices after peer_timeout, dials again,
    // and the new connection replaces the frozen one on B.
    let receiving_before = b.status().receiving.connections;
    relay.set(false);
    for r in open(&a.store, 1, 2_500..3_000) {
        a.sender.push(r);
        flows.push(r);
    }
    until("B to learn the flows sent into the silence", || {
        holds_learned(&b.store, &flows)
    })
    .await;
    let st = a.status();
    assert!(st.sending.connections >= 3, "{st:?}");
    let why = st.sending.last_error.unwrap();
    assert!(
        why.contains("nothing from the peer for 2000 ms") || why.contains("has not read"),
        "{why}"
    );
    assert!(b.status().receiving.connections > receiving_before);
    assert_eq!(b.store.counts(), (0, 3_000));

    // Resync on demand, both ways.
    until("the bulk resyncs so far to be received", || {
        let st = a.status();
        !st.bulk_in_progress && b.status().bulks_received == st.bulks_sent
    })
    .await;
    let sent = a.status().bulks_sent;
    a.handle.resync();
    until("A to send a bulk resync on demand", || {
        a.status().bulks_sent == sent + 1
    })
    .await;
    b.handle.request_resync();
    until("A to send one at B's request", || {
        a.status().bulks_sent == sent + 2
    })
    .await;
    until("B to have received both", || {
        b.status().bulks_received == sent + 2
    })
    .await;
    relay.task.abort();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn overload_drops_and_counts_and_then_resyncs() {
    let (la, lb) = (listener(LOCAL, 0).await, listener(LOCAL, 0).await);
    let (pa, pb) = (port(&la), port(&lb));
    let a = Host::start(
        Settings {
            queue_size: 64,
            ..settings(addr(LOCAL, pa), addr(LOCAL, pb))
        },
        la,
        Arc::new(MemoryStore::new(1 << 16)),
    );
    let b = Host::start(
        settings(addr(LOCAL, pb), addr(LOCAL, pa)),
        lb,
        Arc::new(MemoryStore::new(1 << 16)),
    );
    until("the first bulk resync", || b.status().bulks_received == 1).await;
    // A burst far beyond the queue, faster than anything can drain it (this
    // runtime has one thread: the writer cannot run during the loop). The
    // producer never waits.
    let started = std::time::Instant::now();
    let flows = open(&a.store, 1, 0..5_000);
    let pushed: Vec<Pushed> = flows.iter().map(|r| a.sender.push(*r)).collect();
    let took = started.elapsed();
    assert_eq!(pushed.iter().filter(|p| **p == Pushed::Queued).count(), 64);
    assert_eq!(
        pushed.iter().filter(|p| **p == Pushed::Dropped).count(),
        4_936
    );
    let st = a.status();
    assert_eq!(st.records_dropped, 4_936);
    assert_eq!((st.queue_len, st.queue_capacity), (64, 64));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The drop schedules a bulk resync, which carries every flow.
    until("B to learn all 5,000 flows", || {
        holds_learned(&b.store, &flows)
    })
    .await;
    until("the second bulk resync to end", || {
        a.status().bulks_sent == 2
    })
    .await;
    assert_eq!(a.status().queue_len, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn only_the_peer_may_connect() {
    let (la, lb) = (listener(LOCAL, 0).await, listener(LOCAL, 0).await);
    let (pa, pb) = (port(&la), port(&lb));
    // B's peer is 127.0.0.1; a connection from 127.0.0.2 is refused.
    let b = Host::start(
        settings(addr(LOCAL, pb), addr(LOCAL, pa)),
        lb,
        Arc::new(MemoryStore::new(16)),
    );
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(addr(Ipv4Addr::new(127, 0, 0, 2), 0).into())
        .unwrap();
    let mut stranger = socket.connect(addr(LOCAL, pb).into()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stranger.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a HELLO");
    until("the refusal to be counted", || {
        b.status().refused_connections == 1
    })
    .await;
    let st = b.status();
    assert!(!st.receiving.connected);
    assert!(st.last_problem.unwrap().contains("not the peer 127.0.0.1"));

    // A, dialling from 127.0.0.3, is not B's peer either.
    let a = Host::start(
        settings(addr(Ipv4Addr::new(127, 0, 0, 3), pa), addr(LOCAL, pb)),
        la,
        Arc::new(MemoryStore::new(16)),
    );
    until("A's dials to be refused", || {
        b.status().refused_connections >= 2
    })
    .await;
    assert!(!a.status().sending.connected);
    assert_eq!(b.status().records_received, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_wrong_key_or_a_key_on_one_side_only_is_refused() {
    for (ka, kb, what_a, what_b) in [
        (
            Some("the key of host A, 32 bytes long"),
            Some("the key of host B, 32 bytes long"),
            "bad tag",
            "bad tag",
        ),
        (
            Some("the key of host A, 32 bytes long"),
            None,
            "the peer has no sync key and this lbd has one",
            "the peer has a sync key and this lbd has none",
        ),
    ] {
        let (la, lb) = (listener(LOCAL, 0).await, listener(LOCAL, 0).await);
        let (pa, pb) = (port(&la), port(&lb));
        let a = Host::start(
            Settings {
                key: ka.map(key),
                ..settings(addr(LOCAL, pa), addr(LOCAL, pb))
            },
            la,
            Arc::new(MemoryStore::new(16)),
        );
        let b = Host::start(
            Settings {
                key: kb.map(key),
                ..settings(addr(LOCAL, pb), addr(LOCAL, pa))
            },
            lb,
            Arc::new(MemoryStore::new(16)),
        );
        open(&a.store, 1, 0..10);
        open(&b.store, 2, 0..10);
        until("failures on both sides", || {
            a.status().auth_failures >= 2 && b.status().auth_failures >= 2
        })
        .await;
        for (h, what) in [(&a, what_a), (&b, what_b)] {
            let st = h.status();
            assert_eq!(st.records_received, 0);
            assert!(!st.receiving.connected);
            let why = st.receiving.last_error.unwrap();
            assert!(why.contains(what), "{why}");
        }
        assert_eq!(a.store.counts(), (10, 0));
        a.stop().await;
        b.stop().await;
    }
}

/// Plays the writer by hand on `stream`: HELLO, then `frames` (made by
/// `make` with the connection's key). Returns everything it sent.
async fn hand_writer(
    stream: &mut TcpStream,
    k: &Key,
    make: impl Fn(&auth::DirectionKey) -> Vec<u8>,
) -> Vec<u8> {
    let mut theirs = vec![0u8; wire::HEADER_LEN + wire::HELLO_LEN];
    stream.read_exact(&mut theirs).await.unwrap();
    let mut mine = Vec::new();
    wire::encode(
        &Message::Hello(Hello {
            challenge: auth::random(),
            instance: 7,
            keepalive_ms: 100,
            role: Role::Writer,
            auth: true,
        }),
        0,
        None,
        &mut mine,
    );
    let (w, _) = k.session(&theirs, &mine);
    mine.extend(make(&w));
    stream.write_all(&mine).await.unwrap();
    mine
}

#[tokio::test]
async fn a_replayed_connection_is_refused() {
    let k = key("a key both hosts share, 32 bytes");
    let lb = listener(LOCAL, 0).await;
    let pb = port(&lb);
    let b = Host::start(
        Settings {
            key: Some(k.clone()),
            ..settings(addr(LOCAL, pb), addr(LOCAL, 9))
        },
        lb,
        Arc::new(MemoryStore::new(16)),
    );
    let records: Vec<FlowRecord> = (0..3)
        .map(|i| {
            let (c, v, bk, n) = flow(1, i);
            FlowRecord {
                kind: RecordKind::Update,
                client: c,
                vip: v,
                backend: bk,
                nat: n,
                age_ms: 0,
                state: FlowState::default(),
            }
        })
        .collect();
    // A genuine connection: B applies the records.
    let mut first = TcpStream::connect(addr(LOCAL, pb)).await.unwrap();
    let captured = hand_writer(&mut first, &k, |w| {
        let mut out = Vec::new();
        wire::encode(&Message::BulkStart { tables: 1 }, 1, Some(w), &mut out);
        wire::encode(&Message::Bulk(records.clone()), 2, Some(w), &mut out);
        wire::encode(&Message::BulkEnd { records: 3 }, 3, Some(w), &mut out);
        out
    })
    .await;
    until("B to apply the genuine frames", || {
        b.status().records_applied == 3
    })
    .await;
    drop(first);
    until("B to see it close", || !b.status().receiving.connected).await;
    // The same bytes again, on a new connection: B's new challenge makes
    // every tag wrong.
    let mut second = TcpStream::connect(addr(LOCAL, pb)).await.unwrap();
    let mut hello = vec![0u8; wire::HEADER_LEN + wire::HELLO_LEN];
    second.read_exact(&mut hello).await.unwrap();
    second.write_all(&captured).await.unwrap();
    until("the replay to fail", || b.status().auth_failures == 1).await;
    let st = b.status();
    assert_eq!((st.records_received, st.bulks_received), (3, 1));
    assert!(st.receiving.last_error.unwrap().contains("bad tag"));
    b.stop().await;
}

// ---- Timers, with the clock paused, over in-memory pipes ----

fn shared(settings: Settings, store: Arc<MemoryStore>) -> Arc<Shared> {
    Arc::new(Shared::new(settings, store))
}

fn paused_settings() -> Settings {
    Settings {
        keepalive: Duration::from_secs(1),
        peer_timeout: Duration::from_secs(3),
        refresh_interval: Duration::from_secs(30),
        batch_delay: Duration::from_millis(2),
        ..Settings::new(addr(LOCAL, 1), addr(LOCAL, 2))
    }
}

type Ended = JoinHandle<Result<(), SessionError>>;

/// A writer and a reader session connected by a pipe.
fn pair(a: &Arc<Shared>, b: &Arc<Shared>) -> (Ended, Ended) {
    let (x, y) = tokio::io::duplex(1 << 16);
    let (a, b) = (a.clone(), b.clone());
    (
        tokio::spawn(async move { session::writer(x, &a).await }),
        tokio::spawn(async move { session::reader(y, 1, &b).await }),
    )
}

#[tokio::test(start_paused = true)]
async fn keepalives_hold_a_quiet_connection_for_an_hour() {
    let a = shared(paused_settings(), Arc::new(MemoryStore::new(16)));
    let b = shared(paused_settings(), Arc::new(MemoryStore::new(16)));
    let (w, r) = pair(&a, &b);
    sleep(Duration::from_secs(3600)).await;
    assert!(!w.is_finished() && !r.is_finished());
    // About one keepalive a second each way (plus the HELLO, the empty
    // bulk resync and the refreshes, which send nothing: no flows).
    for s in [&a, &b] {
        let frames = get(&s.board.counters.frames_sent);
        assert!((3590..=3610).contains(&frames), "{frames}");
    }
    let refreshes = get(&a.board.counters.refreshes);
    assert!((119..=120).contains(&refreshes), "{refreshes}");
    w.abort();
    r.abort();
}

/// Plays the reader by hand: HELLO, then reads everything and says nothing
/// (or reads nothing at all).
async fn hand_reader(mut y: DuplexStream, read: bool) {
    let mut theirs = vec![0u8; wire::HEADER_LEN + wire::HELLO_LEN];
    y.read_exact(&mut theirs).await.unwrap();
    let mut mine = Vec::new();
    wire::encode(
        &Message::Hello(Hello {
            challenge: [0; 32],
            instance: 1,
            keepalive_ms: 1000,
            role: Role::Reader,
            auth: false,
        }),
        0,
        None,
        &mut mine,
    );
    y.write_all(&mine).await.unwrap();
    if read {
        let mut sink = vec![0u8; 1 << 16];
        while y.read(&mut sink).await.unwrap_or(0) > 0 {}
    } else {
        std::future::pending::<()>().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_stuck_peer_is_noticed_in_peer_timeout() {
    // Silent: reads, never answers.
    let a = shared(paused_settings(), Arc::new(MemoryStore::new(16)));
    let (x, y) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(hand_reader(y, true));
    let start = Instant::now();
    let e = session::writer(x, &a).await.unwrap_err();
    assert!(
        e.to_string().contains("nothing from the peer for 3000 ms"),
        "{e}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    peer.abort();

    // Stuck: stops reading while a bulk resync of 10,000 flows (320 KB)
    // fills the pipe.
    let store = Arc::new(MemoryStore::new(1 << 16));
    open(&store, 1, 0..10_000);
    let a = shared(paused_settings(), store);
    let (x, y) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(hand_reader(y, false));
    let start = Instant::now();
    let e = session::writer(x, &a).await.unwrap_err();
    assert!(
        e.to_string().contains("the peer has not read for 3000 ms"),
        "{e}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    peer.abort();

    // The reader's side: a writer that says HELLO and nothing more.
    let b = shared(paused_settings(), Arc::new(MemoryStore::new(16)));
    let (x, mut y) = tokio::io::duplex(1 << 16);
    let reader = {
        let b = b.clone();
        tokio::spawn(async move { session::reader(x, 1, &b).await })
    };
    let mut theirs = vec![0u8; wire::HEADER_LEN + wire::HELLO_LEN];
    y.read_exact(&mut theirs).await.unwrap();
    let mut mine = Vec::new();
    wire::encode(
        &Message::Hello(Hello {
            challenge: [0; 32],
            instance: 1,
            keepalive_ms: 1000,
            role: Role::Writer,
            auth: false,
        }),
        0,
        None,
        &mut mine,
    );
    y.write_all(&mine).await.unwrap();
    let start = Instant::now();
    let e = reader.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("nothing from the peer"), "{e}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn events_share_frames_within_the_batch_delay() {
    let a = shared(paused_settings(), Arc::new(MemoryStore::new(16)));
    let store_b = Arc::new(MemoryStore::new(1 << 12));
    let b = shared(paused_settings(), store_b.clone());
    let (w, r) = pair(&a, &b);
    sleep(Duration::from_millis(100)).await;
    let frames = get(&a.board.counters.frames_sent);
    // Three events within 2 ms share one frame; one 10 ms later has its own.
    let records: Vec<FlowRecord> = (0..4)
        .map(|i| {
            let (c, v, bk, n) = flow(1, i);
            FlowRecord {
                kind: RecordKind::Update,
                client: c,
                vip: v,
                backend: bk,
                nat: n,
                age_ms: 0,
                state: FlowState::default(),
            }
        })
        .collect();
    a.queue.push(records[0]);
    sleep(Duration::from_millis(1)).await;
    a.queue.push(records[1]);
    a.queue.push(records[2]);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(get(&a.board.counters.frames_sent), frames + 1);
    assert_eq!(get(&b.board.counters.records_applied), 3);
    a.queue.push(records[3]);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(get(&a.board.counters.frames_sent), frames + 2);
    assert!(holds_learned(&store_b, &records));
    w.abort();
    r.abort();
}

#[tokio::test(start_paused = true)]
async fn refreshes_resend_only_flows_with_recent_traffic() {
    let store_a = Arc::new(MemoryStore::new(1 << 12));
    let store_b = Arc::new(MemoryStore::new(1 << 12));
    let flows = open(&store_a, 1, 0..1_000);
    // The flows' last packets are 5 s older than the first bulk resync.
    sleep(Duration::from_secs(5)).await;
    let a = shared(paused_settings(), store_a.clone());
    let b = shared(paused_settings(), store_b.clone());
    let (w, r) = pair(&a, &b);
    sleep(Duration::from_secs(1)).await;
    assert!(holds_learned(&store_b, &flows));
    let sent = get(&a.board.counters.records_sent);
    assert_eq!(sent, 1_000);
    // 100 flows carry traffic every 10 s; the rest are idle.
    for _ in 0..6 {
        sleep(Duration::from_secs(10)).await;
        for r in &flows[..100] {
            store_a.touch(&r.key());
        }
    }
    // Two refreshes (at 30 s and 60 s), each with the 100 busy flows only.
    assert_eq!(get(&a.board.counters.refreshes), 2);
    assert_eq!(get(&a.board.counters.records_sent), sent + 200);
    // B's copies of busy flows are recent; of idle flows, as old as on A.
    let busy = store_b.get(&flows[0].key()).unwrap();
    let idle = store_b.get(&flows[500].key()).unwrap();
    let a_idle = store_a.get(&flows[500].key()).unwrap();
    assert!(busy.last_seen_ms >= 55_000, "{busy:?}");
    assert!(
        idle.last_seen_ms.abs_diff(a_idle.last_seen_ms) <= 1,
        "{idle:?} {a_idle:?}"
    );
    w.abort();
    r.abort();
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_to_its_ceiling() {
    let delays: Vec<u64> = (0..8)
        .map(|i| reconnect_delay(i).as_millis() as u64)
        .collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3000, 3000, 3000]);
    assert_eq!(reconnect_delay(u32::MAX), RECONNECT_MAX);
}

#[test]
fn settings_are_checked() {
    let ok = Settings::new(addr(LOCAL, 7112), addr(Ipv4Addr::new(10, 0, 0, 2), 7112));
    ok.check().unwrap();
    let bad = |f: fn(&mut Settings), what: &str| {
        let mut s = ok.clone();
        f(&mut s);
        let e = s.check().unwrap_err();
        assert!(e.contains(what), "{e}");
    };
    bad(|s| s.peer = addr(Ipv4Addr::UNSPECIFIED, 7112), "sync.peer");
    bad(|s| s.listen = addr(LOCAL, 0), "sync.listen");
    bad(|s| s.queue_size = 0, "sync.queue_size");
    bad(|s| s.keepalive = Duration::ZERO, "sync.keepalive_ms");
    bad(|s| s.peer_timeout = s.keepalive, "sync.peer_timeout_ms");
    bad(
        |s| s.refresh_interval = Duration::ZERO,
        "sync.refresh_interval_secs",
    );
    bad(
        |s| s.batch_delay = Duration::from_secs(5),
        "sync.batch_delay_ms",
    );
}
