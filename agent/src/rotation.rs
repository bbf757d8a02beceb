//! Which supd URL the agent dials next, and whether it waits first.
//!
//! Among supd replicas only the leader accepts connections: a standby
//! refuses them and a deposed leader exits. So when a session fails the
//! agent moves on to the next URL of its list (round-robin), because the
//! leader may now be elsewhere:
//!
//! - An attempt that never registered (connection refused or timed out,
//!   UNAVAILABLE, no `Registered`) moves on at once: a standby's refusal
//!   costs a round trip, and waiting would only delay finding the leader.
//! - When a whole round of URLs has failed that way, nobody is leading right
//!   now (an election is under way, or supd is down): the agent waits the
//!   jittered exponential backoff ([`crate::backoff`]) before the next
//!   round, exactly as it waits between attempts on a single supd, so a
//!   cluster of agents spreads out over an election as it does over a supd
//!   restart.
//! - A session that had registered and then ended moves on after the
//!   backoff, which the registration reset to its minimum: the wait a single
//!   supd has always had before the first reconnect. Moving on at once here
//!   could spin: two URLs of one flapping supd (two names for it) would each
//!   register and drop in turn with no wait at all.
//!
//! So every dial either follows a backoff or follows an attempt that never
//! registered, and an agent dials each URL at most once between two
//! backoffs. With one URL every failure ends a round: the agent behaves as
//! it always has.
//!
//! A leader that cannot renew its term only bridges the agents' leases and
//! says so on each acknowledgement; the session then asks the other URLs
//! whether one serves and, if one does, moves there at once
//! ([`Rotation::moved_to`]).
//!
//! A supd that answers and refuses this agent (node id taken, certificate
//! not allowed) is the leader: the others are standbys that would refuse the
//! connection. The agent stays on that URL and waits the backoff.

/// How a session ended, as far as choosing the next URL goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nobody answered as leader there: the connection was refused or timed
    /// out, supd said UNAVAILABLE, or the stream ended.
    Outage,
    /// supd answered and refused this agent.
    Rejected,
}

/// What to wait before dialling [`Rotation::current`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: the next URL of this round.
    AtOnce,
    /// The jittered backoff: a round ended, a session that was up ended, or
    /// supd refused the agent.
    Backoff,
}

/// The position in the list of supd URLs, carried across sessions.
#[derive(Debug, Clone)]
pub struct Rotation {
    len: usize,
    current: usize,
    /// Attempts in a row that never registered, since the last backoff.
    failed_in_round: usize,
    /// The session at `current` registered and has not failed yet.
    registered: bool,
}

impl Rotation {
    /// A rotation over `len` URLs (at least one), starting with the first.
    pub fn new(len: usize) -> Rotation {
        Rotation {
            len: len.max(1),
            current: 0,
            failed_in_round: 0,
            registered: false,
        }
    }

    /// The index of the URL to dial next.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The session at [`Rotation::current`] registered.
    pub fn registered(&mut self) {
        self.registered = true;
    }

    /// The session at [`Rotation::current`] ended by the agent's own doing
    /// (a drill's silence): the next attempt goes to the same URL, as a
    /// fresh one.
    pub fn interrupted(&mut self) {
        self.registered = false;
    }

    /// The session at [`Rotation::current`] ended because the replica at
    /// `to` leads now: dial it next, at once, as a fresh round.
    pub fn moved_to(&mut self, to: usize) {
        self.current = to % self.len;
        self.registered = false;
        self.failed_in_round = 0;
    }

    /// The session at [`Rotation::current`] ended: moves on as the policy
    /// says and tells what to wait before the next dial.
    pub fn failed(&mut self, failure: Failure) -> Wait {
        let was_up = std::mem::take(&mut self.registered);
        if failure == Failure::Rejected {
            self.failed_in_round = 0;
            return Wait::Backoff;
        }
        self.current = (self.current + 1) % self.len;
        if was_up {
            // A new round starts at the next URL, after the backoff.
            self.failed_in_round = 0;
            return Wait::Backoff;
        }
        self.failed_in_round += 1;
        if self.failed_in_round >= self.len {
            self.failed_in_round = 0;
            Wait::Backoff
        } else {
            Wait::AtOnce
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (URL dialled, wait after it failed) for a run of attempts that never
    /// register.
    fn run(rotation: &mut Rotation, failures: &[Failure]) -> Vec<(usize, Wait)> {
        failures
            .iter()
            .map(|f| {
                let at = rotation.current();
                (at, rotation.failed(*f))
            })
            .collect()
    }

    #[test]
    fn one_url_waits_the_backoff_after_every_failure_as_before() {
        let mut r = Rotation::new(1);
        let steps = run(
            &mut r,
            &[Failure::Outage, Failure::Rejected, Failure::Outage],
        );
        assert_eq!(
            steps,
            [(0, Wait::Backoff), (0, Wait::Backoff), (0, Wait::Backoff)]
        );
        r.registered();
        assert_eq!(r.failed(Failure::Outage), Wait::Backoff);
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(Failure::Outage), Wait::Backoff);
    }

    #[test]
    fn outages_go_round_robin_and_a_whole_round_waits_the_backoff() {
        let mut r = Rotation::new(3);
        let steps = run(&mut r, &[Failure::Outage; 7]);
        assert_eq!(
            steps,
            [
                (0, Wait::AtOnce),
                (1, Wait::AtOnce),
                (2, Wait::Backoff),
                (0, Wait::AtOnce),
                (1, Wait::AtOnce),
                (2, Wait::Backoff),
                (0, Wait::AtOnce),
            ]
        );
        assert_eq!(r.current(), 1);
    }

    #[test]
    fn a_session_that_was_up_moves_on_after_the_backoff_and_starts_a_round() {
        let mut r = Rotation::new(3);
        // The first URL is dead; the second one registers.
        assert_eq!(r.failed(Failure::Outage), Wait::AtOnce);
        assert_eq!(r.current(), 1);
        r.registered();
        // The leader goes away later: the backoff (at its minimum), then a
        // whole new round from the third URL.
        assert_eq!(r.failed(Failure::Outage), Wait::Backoff);
        assert_eq!(r.current(), 2);
        let steps = run(&mut r, &[Failure::Outage; 4]);
        assert_eq!(
            steps,
            [
                (2, Wait::AtOnce),
                (0, Wait::AtOnce),
                (1, Wait::Backoff),
                (2, Wait::AtOnce)
            ]
        );
    }

    #[test]
    fn sessions_that_register_and_drop_never_go_without_a_wait() {
        // Two names for one flapping supd: each registers, then drops.
        let mut r = Rotation::new(2);
        for _ in 0..4 {
            r.registered();
            assert_eq!(r.failed(Failure::Outage), Wait::Backoff);
        }
    }

    #[test]
    fn a_session_the_agent_interrupted_leaves_the_round_as_it_was() {
        let mut r = Rotation::new(2);
        r.registered();
        r.interrupted();
        assert_eq!(r.current(), 0, "back to the same URL");
        // The attempt after the silence never registers: on at once.
        assert_eq!(r.failed(Failure::Outage), Wait::AtOnce);
    }

    #[test]
    fn a_rejection_stays_on_the_leader_and_waits_the_backoff() {
        let mut r = Rotation::new(2);
        assert_eq!(r.failed(Failure::Outage), Wait::AtOnce);
        assert_eq!(r.current(), 1);
        assert_eq!(r.failed(Failure::Rejected), Wait::Backoff);
        assert_eq!(r.current(), 1, "the URL that answered is the leader");
        // It also starts the round over: one outage after it moves on at
        // once.
        assert_eq!(r.failed(Failure::Outage), Wait::AtOnce);
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn moving_to_the_replica_that_serves_starts_a_round_there() {
        let mut r = Rotation::new(3);
        r.registered();
        r.moved_to(2);
        assert_eq!(r.current(), 2);
        // Gone again before it registered: on at once, a whole round.
        let steps = run(&mut r, &[Failure::Outage; 3]);
        assert_eq!(
            steps,
            [(2, Wait::AtOnce), (0, Wait::AtOnce), (1, Wait::Backoff)]
        );
    }

    #[test]
    fn an_empty_list_is_treated_as_one_url() {
        let mut r = Rotation::new(0);
        assert_eq!(r.failed(Failure::Outage), Wait::Backoff);
        assert_eq!(r.current(), 0);
    }
}
