//! Refused VRRP packets: counted by reason, logged sparingly.
//!
//! Anything on the link can send IP protocol 112 to a load balancer, in
//! floods, from any number of spoofed sources. Each refusal is counted (the
//! counts are in `lbctl status` and the metrics), but a log line is written
//! at most once per reason and source per [`WINDOW`], the next one saying how
//! many were left unsaid, and for at most [`MAX_SOURCES`] reason-and-source
//! pairs at a time: the rest are summed up in one line per window.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use tokio::time::Instant;

/// How long a reason and source stay quiet after a line about them.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Reason-and-source pairs followed one by one; beyond that, one summary.
pub const MAX_SOURCES: usize = 16;

/// What to do with one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// Log it, saying that `earlier` more went unlogged since the last line
    /// about this reason and source.
    Log { earlier: u64 },
    /// Counted only.
    Quiet,
}

/// A line owed for refusals that went unlogged: `count` of `reason` from
/// `from` (`None`: from sources beyond [`MAX_SOURCES`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    pub reason: &'static str,
    pub from: Option<Ipv4Addr>,
    pub count: u64,
}

#[derive(Debug)]
struct Slot {
    logged_at: Instant,
    quiet: u64,
}

/// The rate limit on log lines about refused packets.
#[derive(Debug, Default)]
pub struct LogLimit {
    slots: HashMap<(&'static str, Ipv4Addr), Slot>,
    /// Refusals from pairs beyond MAX_SOURCES, by reason, since `others_at`.
    others: HashMap<&'static str, u64>,
    others_at: Option<Instant>,
}

impl LogLimit {
    /// One refusal of `reason` from `from`, at `now`.
    pub fn note(&mut self, now: Instant, reason: &'static str, from: Ipv4Addr) -> Note {
        if let Some(slot) = self.slots.get_mut(&(reason, from)) {
            if now.duration_since(slot.logged_at) < WINDOW {
                slot.quiet += 1;
                return Note::Quiet;
            }
            let earlier = std::mem::take(&mut slot.quiet);
            slot.logged_at = now;
            return Note::Log { earlier };
        }
        if self.slots.len() >= MAX_SOURCES {
            *self.others.entry(reason).or_default() += 1;
            self.others_at.get_or_insert(now);
            return Note::Quiet;
        }
        self.slots.insert(
            (reason, from),
            Slot {
                logged_at: now,
                quiet: 0,
            },
        );
        Note::Log { earlier: 0 }
    }

    /// The lines owed for windows that have ended: refusals counted but
    /// not logged. Pairs whose window ended are forgotten, making room.
    pub fn flush(&mut self, now: Instant) -> Vec<Owed> {
        let mut owed = Vec::new();
        self.slots.retain(|(reason, from), slot| {
            if now.duration_since(slot.logged_at) < WINDOW {
                return true;
            }
            if slot.quiet > 0 {
                owed.push(Owed {
                    reason,
                    from: Some(*from),
                    count: slot.quiet,
                });
            }
            false
        });
        if self
            .others_at
            .is_some_and(|at| now.duration_since(at) >= WINDOW)
        {
            let mut others: Vec<_> = self.others.drain().collect();
            others.sort();
            owed.extend(others.into_iter().map(|(reason, count)| Owed {
                reason,
                from: None,
                count,
            }));
            self.others_at = None;
        }
        owed.sort_by_key(|o| (o.reason, o.from.is_none(), o.from));
        owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + i)
    }

    #[test]
    fn one_line_per_reason_and_source_per_window() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.note(t0, "ttl", addr(1)), Note::Log { earlier: 0 });
        for i in 1..100 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(l.note(at, "ttl", addr(1)), Note::Quiet);
        }
        // Another reason from the same source is its own line.
        assert_eq!(l.note(t0, "checksum", addr(1)), Note::Log { earlier: 0 });
        let later = t0 + WINDOW;
        assert_eq!(l.note(later, "ttl", addr(1)), Note::Log { earlier: 99 });
        assert!(l.flush(later).iter().all(|o| o.reason != "ttl"));
    }

    #[test]
    fn a_flood_from_many_sources_writes_a_bounded_number_of_lines() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        let mut lines = 0;
        for i in 0..20_000u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 20);
            if let Note::Log { .. } = l.note(at, "not_peer", addr(i % 2000)) {
                lines += 1;
            }
        }
        assert_eq!(lines, MAX_SOURCES);
        // After the window: what was left unsaid, in a bounded number of lines.
        let owed = l.flush(t0 + Duration::from_secs(11));
        assert_eq!(owed.len(), MAX_SOURCES + 1, "{owed:?}");
        let total: u64 = owed.iter().map(|o| o.count).sum();
        assert_eq!(total + lines as u64, 20_000);
        assert_eq!(owed.last().unwrap().from, None);
        assert!(l.flush(t0 + Duration::from_secs(30)).is_empty());
        // Room again for new sources.
        assert_eq!(
            l.note(t0 + Duration::from_secs(30), "ttl", addr(5)),
            Note::Log { earlier: 0 }
        );
    }
}
