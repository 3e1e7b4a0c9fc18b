//! Health checks of backends: the checkers, the rise/fall state machine and
//! the [`HealthMonitor`] that runs one task per backend and reports results
//! and state changes on a channel.
//!
//! The monitor decides nothing about traffic: the daemon receives
//! [`HealthEvent::Changed`] and takes a down backend out of its VIP's ring
//! (and puts it back when it comes up). See `docs/health-checks.md`.
//!
//! - [`state`]: [`Health`], rise/fall counting.
//! - [`tcp`], [`http`], [`exec`]: one check of each kind, each returning a
//!   [`CheckOutcome`]; [`check_once`] picks the right one for a target.

pub mod exec;
pub mod http;
pub mod state;
pub mod tcp;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle, time::Instant};

use crate::config::{BackendKey, CheckKind, HealthCheck};

pub use state::Health;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// From the start of the check to its verdict (a timeout included).
    pub latency: Duration,
    /// What happened, for logs and `lbctl`: `connected`, `connect refused`,
    /// `status 500 (expected 200)`, `timeout after 1000 ms`, `exit 1: ...`.
    pub detail: String,
}

impl CheckOutcome {
    fn new(ok: bool, start: Instant, detail: String) -> CheckOutcome {
        CheckOutcome {
            ok,
            latency: start.elapsed(),
            detail,
        }
    }
}

/// One backend of one VIP, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The VIP's name.
    pub vip: String,
    pub address: Ipv4Addr,
    /// The backend's service port. It identifies the backend (with `vip` and
    /// `address`); the port probed is `check.port` if set, else this one.
    pub port: u16,
    pub check: HealthCheck,
}

impl Target {
    pub fn key(&self) -> BackendKey {
        BackendKey::new(self.vip.clone(), self.address, self.port)
    }
}

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// A check finished (sent for every check, before any `Changed` it causes).
    Checked {
        key: BackendKey,
        outcome: CheckOutcome,
    },
    /// The backend went up or down.
    Changed {
        key: BackendKey,
        up: bool,
        /// The last check's detail and the run that caused the change, e.g.
        /// `connect refused (3 consecutive failures)`.
        detail: String,
    },
}

/// Runs one check of `target` now (any kind; `none` succeeds at once).
pub async fn check_once(target: &Target) -> CheckOutcome {
    let check = &target.check;
    let port = check.check_port(target.port);
    let addr = SocketAddrV4::new(target.address, port);
    match &check.kind {
        CheckKind::None => CheckOutcome {
            ok: true,
            latency: Duration::ZERO,
            detail: "no check (kind none)".into(),
        },
        CheckKind::Tcp => tcp::check(addr, check.timeout).await,
        CheckKind::Http {
            path,
            host,
            expect_status,
            expect_body,
        } => {
            let host = host
                .clone()
                .unwrap_or_else(|| default_host(target.address, port));
            let req = http::HttpCheck {
                host: &host,
                path,
                expect_status,
                expect_body: expect_body.as_deref(),
            };
            http::check(addr, &req, check.timeout).await
        }
        CheckKind::Exec { command } => {
            let values = exec::Placeholders {
                address: target.address,
                port,
                vip: &target.vip,
            };
            exec::check(command, &values, check.timeout).await
        }
    }
}

/// The `Host` header when none is configured: the address, with the port
/// unless it is 80.
pub fn default_host(address: Ipv4Addr, port: u16) -> String {
    if port == 80 {
        address.to_string()
    } else {
        format!("{address}:{port}")
    }
}

/// One running target.
struct Task {
    check: HealthCheck,
    /// The state of the last `Changed` sent (or the starting state).
    up: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// One task per target, checking it forever and reporting on a channel.
///
/// Must be used within a Tokio runtime (tasks are spawned on the current one).
/// Dropping the monitor stops every task.
pub struct HealthMonitor {
    tx: UnboundedSender<HealthEvent>,
    tasks: HashMap<BackendKey, Task>,
}

impl HealthMonitor {
    /// A monitor with no targets, reporting on `tx`. Tasks stop by themselves
    /// when the receiver is dropped.
    pub fn new(tx: UnboundedSender<HealthEvent>) -> HealthMonitor {
        HealthMonitor {
            tx,
            tasks: HashMap::new(),
        }
    }

    /// Makes the set of monitored targets exactly `targets` (identified by
    /// VIP name, address and port; a repeated one counts once, the last):
    ///
    /// - a new target is checked starting from the given state;
    /// - a target no longer listed is stopped;
    /// - a target whose check changed is restarted with the new check, keeping
    ///   the state the monitor has for it (the one of the last `Changed` it
    ///   sent, which may still be in the channel), not the one given;
    /// - an unchanged target is left alone (its counts and timing go on).
    ///
    /// Events of stopped or restarted tasks already in the channel are not
    /// recalled: a receiver should ignore events about backends it no longer
    /// has, and may confirm a `Changed` with [`HealthMonitor::state`].
    pub fn set_targets(&mut self, targets: Vec<(Target, bool)>) {
        let wanted: HashMap<BackendKey, (Target, bool)> = targets
            .into_iter()
            .map(|(t, up)| (t.key(), (t, up)))
            .collect();
        self.tasks.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.handle.abort();
            }
            keep
        });
        for (key, (target, up)) in wanted {
            let up = match self.tasks.get(&key) {
                Some(task) if task.check == target.check => continue,
                Some(task) => {
                    task.handle.abort();
                    task.up.load(Ordering::SeqCst)
                }
                None => up,
            };
            let task = self.spawn(target, up);
            self.tasks.insert(key, task);
        }
    }

    fn spawn(&self, target: Target, up: bool) -> Task {
        let state = Arc::new(AtomicBool::new(up));
        Task {
            check: target.check.clone(),
            up: state.clone(),
            handle: tokio::spawn(run(target, state, self.tx.clone())),
        }
    }

    /// The monitor's current state of a target: up, down, or `None` if it is
    /// not monitored.
    pub fn state(&self, key: &BackendKey) -> Option<bool> {
        self.tasks.get(key).map(|t| t.up.load(Ordering::SeqCst))
    }

    /// Number of monitored targets.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task (a running exec check is killed). Idempotent.
    pub fn shutdown(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.handle.abort();
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("targets", &self.tasks.len())
            .finish()
    }
}

/// The life of one target's task.
async fn run(target: Target, state: Arc<AtomicBool>, tx: UnboundedSender<HealthEvent>) {
    let check = &target.check;
    let initial_up = state.load(Ordering::SeqCst);
    let changed = |up: bool, detail: String| HealthEvent::Changed {
        key: target.key(),
        up,
        detail,
    };

    if check.kind == CheckKind::None {
        if !initial_up {
            state.store(true, Ordering::SeqCst);
            let _ = tx.send(changed(true, "no health check (kind none)".into()));
        }
        return;
    }

    // Seeded from lbd's process-wide generator, itself seeded at random:
    // targets started together do not check in lock-step.
    let mut rng = fastrand::Rng::new();
    let mut health = Health::new(initial_up, check.rise, check.fall);
    // Spread the first checks of many targets over one interval.
    tokio::time::sleep(check.interval.mul_f64(rng.f64())).await;
    loop {
        let started = Instant::now();
        let outcome = check_once(&target).await;
        let transition = health.observe(outcome.ok);
        let detail = outcome.detail.clone();
        let checked = HealthEvent::Checked {
            key: target.key(),
            outcome,
        };
        if tx.send(checked).is_err() {
            return;
        }
        if let Some(up) = transition {
            // Stored before sending, with no await in between, so `state`
            // always matches the last `Changed` sent.
            state.store(up, Ordering::SeqCst);
            let run = match (up, if up { check.rise } else { check.fall }) {
                (true, 1) => "1 success".to_string(),
                (true, n) => format!("{n} consecutive successes"),
                (false, 1) => "1 failure".to_string(),
                (false, n) => format!("{n} consecutive failures"),
            };
            if tx.send(changed(up, format!("{detail} ({run})"))).is_err() {
                return;
            }
        }
        let wait = jittered(check.interval, check.jitter_pct, &mut rng);
        tokio::time::sleep_until(started + wait).await;
    }
}

/// `interval` ± up to `jitter_pct` percent, uniformly.
fn jittered(interval: Duration, jitter_pct: u32, rng: &mut fastrand::Rng) -> Duration {
    if jitter_pct == 0 {
        return interval;
    }
    let spread = f64::from(jitter_pct.min(100)) / 100.0;
    interval.mul_f64(1.0 + spread * (2.0 * rng.f64() - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_health;
    use tokio::{net::TcpListener, sync::mpsc};

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn fast_tcp() -> HealthCheck {
        HealthCheck {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            rise: 2,
            fall: 2,
            jitter_pct: 0,
            ..default_health()
        }
    }

    fn target(vip: &str, port: u16, check: HealthCheck) -> Target {
        Target {
            vip: vip.into(),
            address: LOCAL,
            port,
            check,
        }
    }

    /// The next `Changed` event (skipping `Checked`), within `secs`.
    async fn next_change(
        rx: &mut mpsc::UnboundedReceiver<HealthEvent>,
        secs: u64,
    ) -> (String, u16, bool, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => panic!("no Changed event within {secs} s"),
                Ok(None) => panic!("channel closed"),
                Ok(Some(HealthEvent::Changed { key, up, detail })) => {
                    return (key.vip, key.backend.port(), up, detail)
                }
                Ok(Some(HealthEvent::Checked { .. })) => {}
            }
        }
    }

    /// Accepts (and drops) connections until aborted.
    fn serve(listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        })
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut rng = fastrand::Rng::with_seed(42);
        let interval = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..1000)
            .map(|_| jittered(interval, 10, &mut rng))
            .collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(900) && *w <= Duration::from_millis(1100)));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(950)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(1050)));
        assert_eq!(jittered(interval, 0, &mut rng), interval);
        // Two generators started together draw different waits.
        let (mut a, mut b) = (fastrand::Rng::new(), fastrand::Rng::new());
        assert_ne!(
            jittered(interval, 10, &mut a),
            jittered(interval, 10, &mut b)
        );
    }

    #[test]
    fn default_host_names_the_port_unless_80() {
        assert_eq!(default_host(Ipv4Addr::new(10, 0, 2, 11), 80), "10.0.2.11");
        assert_eq!(
            default_host(Ipv4Addr::new(10, 0, 2, 11), 8080),
            "10.0.2.11:8080"
        );
    }

    #[tokio::test]
    async fn check_once_uses_the_check_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = serve(listener);
        let mut check = fast_tcp();
        check.port = Some(port);
        // The service port (1) is closed; the check port is open.
        let out = check_once(&target("web", 1, check)).await;
        assert!(out.ok, "{out:?}");
        let out = check_once(&target("web", 1, fast_tcp())).await;
        assert!(!out.ok);
    }

    #[tokio::test]
    async fn backend_goes_down_after_fall_and_up_after_rise() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = serve(listener);

        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        let started = Instant::now();
        monitor.set_targets(vec![(target("web", port, fast_tcp()), false)]);
        assert_eq!(
            monitor.state(&BackendKey::new("web", LOCAL, port)),
            Some(false)
        );

        let (vip, p, up, detail) = next_change(&mut rx, 5).await;
        assert_eq!((vip.as_str(), p, up), ("web", port, true));
        assert_eq!(detail, "connected (2 consecutive successes)");
        assert_eq!(
            monitor.state(&BackendKey::new("web", LOCAL, port)),
            Some(true)
        );

        // Stop listening: down after two failures.
        server.abort();
        let _ = server.await;
        let (_, _, up, detail) = next_change(&mut rx, 5).await;
        assert!(!up);
        assert_eq!(detail, "connect refused (2 consecutive failures)");
        assert_eq!(
            monitor.state(&BackendKey::new("web", LOCAL, port)),
            Some(false)
        );

        // Listen again on the same port: up after two successes.
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let _server = serve(listener);
        let (_, _, up, _) = next_change(&mut rx, 5).await;
        assert!(up);
        // Three transitions at 50 ms intervals take well under a second
        // (generous bound: the machine may be busy).
        assert!(started.elapsed() < Duration::from_secs(5));
        monitor.shutdown();
        assert!(monitor.is_empty());
    }

    #[tokio::test]
    async fn checked_events_report_every_check() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        let mut check = fast_tcp();
        check.fall = 3;
        monitor.set_targets(vec![(target("web", port, check), true)]);
        let mut events = Vec::new();
        while events.len() < 4 {
            events.push(
                tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // Three failed checks, then the change they cause.
        for e in &events[..3] {
            match e {
                HealthEvent::Checked { outcome, key } => {
                    assert_eq!(key.backend.port(), port);
                    assert!(!outcome.ok);
                    assert_eq!(outcome.detail, "connect refused");
                }
                other => panic!("expected Checked, got {other:?}"),
            }
        }
        assert!(matches!(&events[3], HealthEvent::Changed { up: false, .. }));
    }

    #[tokio::test]
    async fn kind_none_is_up_at_once_and_then_idle() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        let none = HealthCheck {
            kind: CheckKind::None,
            ..fast_tcp()
        };
        monitor.set_targets(vec![
            (target("a", 1, none.clone()), false),
            (target("b", 2, none.clone()), true),
        ]);
        let (vip, port, up, detail) = next_change(&mut rx, 1).await;
        assert_eq!((vip.as_str(), port, up), ("a", 1, true));
        assert_eq!(detail, "no health check (kind none)");
        // Nothing for b (already up), and no checks at all.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(monitor.state(&BackendKey::new("a", LOCAL, 1)), Some(true));
        assert_eq!(monitor.state(&BackendKey::new("b", LOCAL, 2)), Some(true));
    }

    #[tokio::test]
    async fn set_targets_reconciles() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        let none = HealthCheck {
            kind: CheckKind::None,
            ..fast_tcp()
        };
        monitor.set_targets(vec![
            (target("a", 1, none.clone()), false),
            (target("b", 2, none.clone()), false),
        ]);
        let mut ups = vec![
            next_change(&mut rx, 1).await.0,
            next_change(&mut rx, 1).await.0,
        ];
        ups.sort();
        assert_eq!(ups, ["a", "b"]);
        assert_eq!(monitor.len(), 2);

        // Unchanged a (even if told it is down: its task is left alone),
        // b removed, c added.
        monitor.set_targets(vec![
            (target("a", 1, none.clone()), false),
            (target("c", 3, none.clone()), false),
        ]);
        assert_eq!(next_change(&mut rx, 1).await.0, "c");
        assert_eq!(monitor.len(), 2);
        assert_eq!(monitor.state(&BackendKey::new("b", LOCAL, 2)), None);
        assert_eq!(monitor.state(&BackendKey::new("a", LOCAL, 1)), Some(true));

        // a's check changes: restarted, keeping its state (up), so no event,
        // although the caller passes false.
        let other = HealthCheck {
            interval: Duration::from_millis(60),
            ..none.clone()
        };
        monitor.set_targets(vec![
            (target("a", 1, other.clone()), false),
            (target("c", 3, none.clone()), true),
        ]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(monitor.state(&BackendKey::new("a", LOCAL, 1)), Some(true));
        assert_eq!(monitor.tasks[&BackendKey::new("a", LOCAL, 1)].check, other);

        // A failing real check for a, starting from the kept state (up):
        // it has to fall.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut failing = fast_tcp();
        failing.port = Some(port);
        monitor.set_targets(vec![(target("a", 1, failing), false)]);
        let (vip, _, up, _) = next_change(&mut rx, 5).await;
        assert_eq!((vip.as_str(), up), ("a", false));
        assert_eq!(monitor.len(), 1);
    }

    #[tokio::test]
    async fn tasks_stop_when_the_receiver_is_gone() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        monitor.set_targets(vec![(target("web", 1, fast_tcp()), true)]);
        drop(rx);
        let key = BackendKey::new("web", LOCAL, 1);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !monitor.tasks[&key].handle.is_finished() {
            assert!(Instant::now() < deadline, "task still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn first_check_comes_within_one_interval() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = HealthMonitor::new(tx);
        let check = HealthCheck {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(100),
            ..fast_tcp()
        };
        let started = Instant::now();
        monitor.set_targets(vec![(target("web", 1, check), false)]);
        let event = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a check within one interval")
            .unwrap();
        assert!(matches!(event, HealthEvent::Checked { .. }), "{event:?}");
        assert!(started.elapsed() < Duration::from_millis(1000));
    }
}
