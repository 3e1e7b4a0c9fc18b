//! The VRRPv3 state machine of one virtual router (RFC 5798, section 6.4),
//! without I/O: it is told the time, the timer's expiry and the
//! advertisements heard, and answers with what to do. The caller owns the
//! socket, the addresses and the clock.

use std::{net::Ipv4Addr, time::Duration};

use tokio::time::Instant;

/// The fixed parameters of the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// This router's priority, 1 to 254.
    pub priority: u8,
    /// Advertisement_Interval, in centiseconds.
    pub interval_cs: u16,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// How long a backup lets a lower-priority master be, after starting or
    /// after first hearing it, before preempting (keepalived's
    /// `preempt_delay`): a host that comes back does not take the addresses
    /// back at once.
    pub preempt_delay: Duration,
    /// The address advertisements are sent from (breaks priority ties).
    pub me: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Backup,
    Master,
    /// Gave up mastership on the way out.
    Stopped,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Master => "master",
            Role::Stopped => "stopped",
        }
    }
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority to every peer.
    Advertise(u8),
    /// Add the floating addresses and announce them (gratuitous ARP).
    TakeOver,
    /// Remove the floating addresses.
    Release,
    /// A master heard a lower-priority advertisement: the peer was master,
    /// perhaps for a moment, and may have moved the addresses (on EC2);
    /// make sure they are still here.
    Reassert,
}

pub struct Machine {
    p: Params,
    role: Role,
    /// Master_Adver_Interval: the interval the current master advertises.
    master_interval_cs: u16,
    /// When the Master_Down_Timer (backup) or Adver_Timer (master) fires.
    deadline: Instant,
    /// Who is master, as far as this router knows.
    master: Option<Ipv4Addr>,
    /// The floating addresses are on this host.
    holding: bool,
    /// When this router started (the preempt delay runs from there).
    started: Instant,
    /// Since when a backup has been hearing a lower-priority master.
    lower_since: Option<Instant>,
    /// Preemption is held off (this host could not do the job: its EC2
    /// preflight failed).
    preempt_held: bool,
}

/// The largest advertisement interval a backup adopts from a master, as a
/// multiple of its own. RFC 5798 has a backup take the master's interval as
/// it is; a single advertisement with the largest one (40.95 s), spoofed
/// from the peer's address, would then keep a backup waiting two minutes
/// for a master that is not there. Bounded, it waits at most
/// 3 × (3 × its own interval) and a skew. Both hosts of a pair must
/// therefore advertise within a factor of 3 of each other (the same
/// interval on both is the norm).
pub const MAX_LEARNED_INTERVAL_FACTOR: u16 = 3;

fn cs(n: u32) -> Duration {
    Duration::from_millis(u64::from(n) * 10)
}

impl Machine {
    /// A router starting as backup (RFC 5798 6.4.1 for priority < 255).
    /// `holding`: the floating addresses are already here, left by an
    /// earlier lbd that was master and exited keeping them (a restart): then
    /// its master-down timer is already out, so it resumes as master at once
    /// rather than leave the peer to take over meanwhile. An advertisement
    /// already waiting from a master that wins is heard first, and the
    /// addresses go.
    pub fn new(p: Params, now: Instant, holding: bool) -> Machine {
        let mut m = Machine {
            master_interval_cs: p.interval_cs,
            p,
            role: Role::Backup,
            deadline: now,
            master: None,
            holding,
            started: now,
            lower_since: None,
            preempt_held: false,
        };
        if !holding {
            m.deadline = now + m.master_down();
        }
        m
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    /// The priority advertised now.
    pub fn priority(&self) -> u8 {
        self.p.priority
    }

    /// Tracking changed the priority. A master says so at once, so that a
    /// backup that now has the higher priority starts preempting it.
    pub fn set_priority(&mut self, priority: u8, now: Instant) -> Vec<Action> {
        if priority == self.p.priority || priority == 0 {
            return Vec::new();
        }
        self.p.priority = priority;
        if self.role == Role::Master {
            self.deadline = now + self.interval();
            vec![Action::Advertise(priority)]
        } else {
            Vec::new()
        }
    }

    /// Holds preemption off (`true`) or allows it again.
    pub fn hold_preemption(&mut self, held: bool) {
        self.preempt_held = held;
    }

    /// Whether a backup hearing a lower-priority master at `now` preempts
    /// it: preemption is on, not held off, and the preempt delay has passed
    /// since the start and since that master was first heard.
    fn preempts(&mut self, now: Instant) -> bool {
        if !self.p.preempt || self.preempt_held {
            return false;
        }
        let since = *self.lower_since.get_or_insert(now);
        let from = since.max(self.started);
        now >= from + self.p.preempt_delay
    }

    /// The floating addresses are (or should be) on this host.
    pub fn holding(&self) -> bool {
        self.holding
    }

    pub fn master_interval_cs(&self) -> u16 {
        self.master_interval_cs
    }

    /// Master_Adver_Interval := the master's interval, bounded by
    /// [`MAX_LEARNED_INTERVAL_FACTOR`] times ours.
    fn learn_interval(&mut self, interval_cs: u16) {
        let max = self
            .p
            .interval_cs
            .saturating_mul(MAX_LEARNED_INTERVAL_FACTOR);
        self.master_interval_cs = interval_cs.min(max);
    }

    /// Skew_Time: ((256 - Priority) * Master_Adver_Interval) / 256.
    fn skew(&self) -> Duration {
        cs((256 - u32::from(self.p.priority)) * u32::from(self.master_interval_cs) / 256)
    }

    /// Master_Down_Interval: 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down(&self) -> Duration {
        cs(3 * u32::from(self.master_interval_cs)) + self.skew()
    }

    fn interval(&self) -> Duration {
        cs(self.p.interval_cs.into())
    }

    /// The timer fired (call when `now >= deadline()`).
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.role {
            Role::Backup => {
                self.role = Role::Master;
                self.master = Some(self.p.me);
                self.holding = true;
                self.deadline = now + self.interval();
                vec![Action::Advertise(self.p.priority), Action::TakeOver]
            }
            Role::Master => {
                self.deadline = now + self.interval();
                vec![Action::Advertise(self.p.priority)]
            }
            Role::Stopped => Vec::new(),
        }
    }

    /// A valid advertisement for this virtual router arrived.
    pub fn on_advert(
        &mut self,
        now: Instant,
        from: Ipv4Addr,
        priority: u8,
        interval_cs: u16,
    ) -> Vec<Action> {
        match self.role {
            Role::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after the skew only.
                    self.deadline = now + self.skew();
                    self.master = None;
                    return Vec::new();
                }
                let lower = priority < self.p.priority;
                if !lower {
                    self.lower_since = None;
                }
                if !lower || !self.preempts(now) {
                    self.learn_interval(interval_cs);
                    self.deadline = now + self.master_down();
                    self.master = Some(from);
                    if self.holding {
                        self.holding = false;
                        return vec![Action::Release];
                    }
                }
                // Else a lower-priority master: let the timer run out and
                // preempt it.
                Vec::new()
            }
            Role::Master => {
                if priority == 0 {
                    // A peer gave up: make sure everybody hears the master.
                    self.deadline = now + self.interval();
                    return vec![Action::Advertise(self.p.priority)];
                }
                let wins = priority > self.p.priority
                    || (priority == self.p.priority && u32::from(from) > u32::from(self.p.me));
                if wins {
                    self.lower_since = None;
                    self.role = Role::Backup;
                    self.learn_interval(interval_cs);
                    self.deadline = now + self.master_down();
                    self.master = Some(from);
                    self.holding = false;
                    // One last advertisement of our lower priority as we
                    // step down: the winner may not have heard us while we
                    // were master (a healed partition), and a lower priority
                    // is what tells it that we may have moved the addresses
                    // (lbd re-asserts them; keepalived runs
                    // notify_master_rx_lower_pri).
                    vec![Action::Advertise(self.p.priority), Action::Release]
                } else {
                    // Two masters (a healed partition, or a backup that
                    // was master for a moment): ours wins, say so now
                    // rather than at the next interval, and make sure the
                    // addresses are still here.
                    self.deadline = now + self.interval();
                    vec![Action::Advertise(self.p.priority), Action::Reassert]
                }
            }
            Role::Stopped => Vec::new(),
        }
    }

    /// Leaving: a master advertises priority 0 so a backup takes over after
    /// its skew time instead of the whole master-down interval.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let was = self.role;
        self.role = Role::Stopped;
        self.master = None;
        if was == Role::Master {
            self.holding = false;
            vec![Action::Advertise(0), Action::Release]
        } else if self.holding {
            self.holding = false;
            vec![Action::Release]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 22);

    fn params(priority: u8) -> Params {
        Params {
            priority,
            interval_cs: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            me: ME,
        }
    }

    #[test]
    fn a_backup_hearing_nothing_takes_over_after_the_master_down_interval() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        // 3 s + (256 - 100) * 1 s / 256 = 3.609 s (centisecond steps).
        assert_eq!(m.deadline() - t0, Duration::from_millis(3600));
        let at = m.deadline();
        assert_eq!(
            m.on_timer(at),
            vec![Action::Advertise(100), Action::TakeOver]
        );
        assert_eq!(m.role(), Role::Master);
        assert_eq!(m.deadline() - at, Duration::from_secs(1));
        assert_eq!(m.on_timer(m.deadline()), vec![Action::Advertise(100)]);
    }

    #[test]
    fn a_higher_or_equal_master_keeps_a_backup_waiting() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        let t1 = t0 + Duration::from_secs(2);
        // It advertises every 10 cs: the backup adopts that interval.
        assert!(m.on_advert(t1, PEER, 101, 10).is_empty());
        assert_eq!(m.master(), Some(PEER));
        assert_eq!(m.deadline() - t1, Duration::from_millis(300 + 60));
        assert_eq!(m.role(), Role::Backup);
    }

    #[test]
    fn the_interval_learned_from_a_master_is_bounded() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        // The largest interval there is (40.95 s), from the peer's address.
        assert!(m.on_advert(t0, PEER, 101, 4095).is_empty());
        assert_eq!(m.master_interval_cs(), 300);
        // 3 × 3 s + a skew of (256 - 100) × 3 s / 256, not two minutes.
        assert_eq!(m.deadline() - t0, Duration::from_millis(9000 + 1820));
        // Within the bound it is taken as it is.
        m.on_advert(t0, PEER, 101, 250);
        assert_eq!(m.master_interval_cs(), 250);
    }

    #[test]
    fn a_lower_master_is_preempted_unless_preempt_is_off() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(150), t0, false);
        let before = m.deadline();
        m.on_advert(t0 + Duration::from_secs(1), PEER, 100, 100);
        assert_eq!(m.deadline(), before, "ignored: the timer runs out");
        let mut p = params(150);
        p.preempt = false;
        let mut m = Machine::new(p, t0, false);
        m.on_advert(t0 + Duration::from_secs(1), PEER, 100, 100);
        assert!(m.deadline() > before, "accepted without preemption");
    }

    #[test]
    fn priority_zero_cuts_the_wait_to_the_skew() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        m.on_advert(t0, PEER, 101, 100);
        let t1 = t0 + Duration::from_millis(500);
        m.on_advert(t1, PEER, 0, 100);
        assert_eq!(m.deadline() - t1, Duration::from_millis(600));
    }

    #[test]
    fn a_master_yields_to_a_higher_priority_or_a_higher_address() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        m.on_timer(m.deadline());
        // Lower: answered at once, kept, and the addresses re-asserted.
        assert_eq!(
            m.on_advert(t0, PEER, 99, 100),
            vec![Action::Advertise(100), Action::Reassert]
        );
        assert_eq!(m.role(), Role::Master);
        // Equal priority, higher address: yields, saying so once.
        assert_eq!(
            m.on_advert(t0, PEER, 100, 100),
            vec![Action::Advertise(100), Action::Release]
        );
        assert_eq!(m.role(), Role::Backup);
        // Equal priority, lower address: keeps it.
        let mut m = Machine::new(params(100), t0, false);
        m.on_timer(m.deadline());
        let lower = Ipv4Addr::new(10, 0, 0, 20);
        assert_eq!(
            m.on_advert(t0, lower, 100, 100),
            vec![Action::Advertise(100), Action::Reassert]
        );
    }

    #[test]
    fn leftover_addresses_go_when_a_master_is_heard() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, true);
        assert_eq!(m.on_advert(t0, PEER, 120, 100), vec![Action::Release]);
        assert!(m.on_advert(t0, PEER, 120, 100).is_empty());
    }

    #[test]
    fn a_restart_holding_the_addresses_resumes_as_master_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, true);
        assert_eq!(m.deadline(), t0);
        assert_eq!(
            m.on_timer(t0),
            vec![Action::Advertise(100), Action::TakeOver]
        );
        assert_eq!(m.role(), Role::Master);
    }

    #[test]
    fn a_lowered_priority_is_advertised_at_once_and_lets_the_peer_preempt() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(150), t0, false);
        m.on_timer(m.deadline());
        assert_eq!(m.set_priority(100, t0), vec![Action::Advertise(100)]);
        assert!(m.set_priority(100, t0).is_empty(), "no change, no advert");
        // The peer (120) now wins and takes over: this master yields.
        assert_eq!(
            m.on_advert(t0, PEER, 120, 100),
            vec![Action::Advertise(100), Action::Release]
        );
        // A backup only remembers it (it changes its skew).
        assert!(m.set_priority(150, t0).is_empty());
        assert_eq!(m.priority(), 150);
    }

    #[test]
    fn the_preempt_delay_runs_from_the_start_and_from_hearing_a_lower_master() {
        let t0 = Instant::now();
        let mut p = params(150);
        p.preempt_delay = Duration::from_secs(10);
        let mut m = Machine::new(p, t0, false);
        let s = Duration::from_secs;
        // A lower master heard from the start: accepted for 10 s.
        for t in [1, 4, 7, 9] {
            m.on_advert(t0 + s(t), PEER, 100, 100);
            assert_eq!(m.master(), Some(PEER));
            assert!(m.deadline() > t0 + s(t), "the timer is reset at {t} s");
        }
        let before = m.deadline();
        m.on_advert(t0 + s(11), PEER, 100, 100);
        assert_eq!(
            m.deadline(),
            before,
            "after 10 s the timer runs out: preempt"
        );
        let at = m.deadline();
        assert_eq!(
            m.on_timer(at),
            vec![Action::Advertise(150), Action::TakeOver]
        );

        // A higher master, then a lower one late in life: the delay runs
        // from when the lower one is first heard.
        let mut p = params(150);
        p.preempt_delay = Duration::from_secs(10);
        let mut m = Machine::new(p, t0, false);
        m.on_advert(t0 + s(20), PEER, 200, 100);
        m.on_advert(t0 + s(30), PEER, 100, 100);
        m.on_advert(t0 + s(39), PEER, 100, 100);
        assert!(m.deadline() > t0 + s(39), "still within the delay");
        let before = m.deadline();
        m.on_advert(t0 + s(40), PEER, 100, 100);
        assert_eq!(m.deadline(), before, "the delay has passed");
    }

    #[test]
    fn held_preemption_lets_a_lower_master_be() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(150), t0, false);
        m.hold_preemption(true);
        m.on_advert(t0 + Duration::from_secs(1), PEER, 100, 100);
        assert_eq!(
            m.master(),
            Some(PEER),
            "accepted: this host could not do the job"
        );
        m.hold_preemption(false);
        let before = m.deadline();
        m.on_advert(t0 + Duration::from_secs(2), PEER, 100, 100);
        assert_eq!(m.deadline(), before, "preempts again");
    }

    #[test]
    fn shutting_down_a_master_advertises_priority_zero() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(100), t0, false);
        assert!(m.shutdown().is_empty());
        let mut m = Machine::new(params(100), t0, false);
        m.on_timer(m.deadline());
        assert_eq!(m.shutdown(), vec![Action::Advertise(0), Action::Release]);
        assert_eq!(m.role(), Role::Stopped);
        assert!(m.on_timer(t0).is_empty());
    }
}
