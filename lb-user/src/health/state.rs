//! The rise/fall state machine of one backend: pure, no I/O, no time.

/// Up or down, and the run of results that contradict that state.
///
/// An up backend goes down after `fall` failed checks in a row; a down
/// backend comes up after `rise` successful checks in a row. A result that
/// agrees with the current state resets the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    up: bool,
    rise: u32,
    fall: u32,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Health {
    /// A state machine starting up or down. `rise` and `fall` of 0 are
    /// treated as 1.
    pub fn new(initial_up: bool, rise: u32, fall: u32) -> Health {
        Health {
            up: initial_up,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
        }
    }

    /// The current state.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results so far against the current state (successes while
    /// down, failures while up).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Records one check result; returns the new state if it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` ('+' success, '-' failure) and returns the transitions
    /// as a string of the same length: 'U' up, 'D' down, '.' none.
    fn run(h: &mut Health, results: &str) -> String {
        results
            .chars()
            .map(|c| match h.observe(c == '+') {
                Some(true) => 'U',
                Some(false) => 'D',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn starting_down_needs_rise_successes() {
        let mut h = Health::new(false, 2, 3);
        assert!(!h.is_up());
        assert_eq!(run(&mut h, "-+"), "..");
        assert_eq!(h.streak(), 1);
        assert_eq!(run(&mut h, "+"), "U");
        assert!(h.is_up());
        assert_eq!(h.streak(), 0);
    }

    #[test]
    fn starting_up_needs_fall_failures() {
        let mut h = Health::new(true, 2, 3);
        assert!(h.is_up());
        assert_eq!(run(&mut h, "++--"), "....");
        assert_eq!(h.streak(), 2);
        assert_eq!(run(&mut h, "-"), "D");
        assert!(!h.is_up());
    }

    #[test]
    fn a_contrary_result_resets_the_count() {
        let mut h = Health::new(false, 3, 3);
        assert_eq!(run(&mut h, "++-++-++"), "........");
        assert!(!h.is_up());
        assert_eq!(run(&mut h, "+"), "U");
        assert_eq!(run(&mut h, "--+--+--"), "........");
        assert!(h.is_up());
        assert_eq!(run(&mut h, "-"), "D");
    }

    #[test]
    fn results_agreeing_with_the_state_change_nothing() {
        let mut h = Health::new(true, 2, 2);
        assert_eq!(run(&mut h, "+++++"), ".....");
        let mut h = Health::new(false, 2, 2);
        assert_eq!(run(&mut h, "-----"), ".....");
    }

    #[test]
    fn counting_restarts_after_a_transition() {
        let mut h = Health::new(false, 2, 2);
        assert_eq!(run(&mut h, "++"), ".U");
        // The successes that brought it up do not count toward anything.
        assert_eq!(run(&mut h, "-"), ".");
        assert_eq!(run(&mut h, "-"), "D");
        assert_eq!(run(&mut h, "+"), ".");
        assert_eq!(run(&mut h, "+"), "U");
    }

    #[test]
    fn flapping_with_rise_and_fall_one_follows_every_result() {
        let mut h = Health::new(false, 1, 1);
        assert_eq!(run(&mut h, "+-+-++--"), "UDUDU.D.");
    }

    #[test]
    fn flapping_never_reaches_rise_or_fall_of_two() {
        let mut h = Health::new(false, 2, 2);
        assert_eq!(run(&mut h, "+-+-+-+-"), "........");
        assert!(!h.is_up());
        let mut h = Health::new(true, 2, 2);
        assert_eq!(run(&mut h, "-+-+-+-+"), "........");
        assert!(h.is_up());
    }

    #[test]
    fn asymmetric_rise_and_fall() {
        let mut h = Health::new(false, 1, 5);
        assert_eq!(run(&mut h, "+"), "U");
        assert_eq!(run(&mut h, "----+"), ".....");
        assert_eq!(run(&mut h, "-----"), "....D");
        assert_eq!(run(&mut h, "+"), "U");
    }

    #[test]
    fn zero_rise_and_fall_act_as_one() {
        let mut h = Health::new(true, 0, 0);
        assert_eq!(run(&mut h, "-+"), "DU");
    }
}
