//! The assignment lease, on the link's side: when it runs out.
//!
//! supd hands out a lease at registration (`Registered.assignment_lease_ms`,
//! its `jobs.assignment_lease`). The lease runs until the send time of the
//! newest message a supervisor acknowledged, plus its length: the Register
//! (acknowledged by `Registered`), then telemetry that asks for a renewal
//! (`renew_lease`, about four times per lease) and comes back as an `Ack`.
//! Counting from the send time, on this node's clock, is what makes it
//! safe: supd received that message later, so by its own clock the lease
//! has surely run out `lease + margin` after it last heard from the node,
//! and only then does it start the job's next generation elsewhere
//! (core: `jobs/lease.rs`). The launcher kills the ranks when it runs out
//! (see `launcher`), whatever the reason no supervisor answers.
//!
//! The link publishes the end to the launcher as a `watch` of
//! `Option<Instant>`: `None` while no supervisor has given a lease (none
//! yet, or one with leases off).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Renewals asked for in a session and not answered yet, oldest first.
/// Answers come in order, so a few are plenty.
const PENDING_CAP: usize = 8;
/// How many renewals to ask for per lease: one lost or late answer still
/// leaves three quarters of it.
const RENEWALS_PER_LEASE: u32 = 4;

pub type LeaseEnd = Option<Instant>;

pub struct Lease {
    length: Option<Duration>,
    /// (seq, send time) of renewal requests in the current session.
    pending: VecDeque<(u64, Instant)>,
    last_request: Option<Instant>,
    end: LeaseEnd,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    pub fn new() -> Lease {
        Lease {
            length: None,
            pending: VecDeque::new(),
            last_request: None,
            end: None,
        }
    }

    /// When the lease runs out; `None`: no lease.
    pub fn end(&self) -> LeaseEnd {
        self.end
    }

    /// A supervisor answered the Register sent at `sent` with this lease
    /// (0: none). Requests of an earlier session can no longer be answered.
    pub fn registered(&mut self, lease_ms: u32, sent: Instant) {
        self.pending.clear();
        self.last_request = None;
        if lease_ms == 0 {
            self.length = None;
            self.end = None;
            return;
        }
        let length = Duration::from_millis(u64::from(lease_ms));
        self.length = Some(length);
        self.extend_to(sent + length);
    }

    /// Whether the message about to be sent as `seq` at `now` should ask
    /// for a renewal; if so it is remembered.
    pub fn ask(&mut self, seq: u64, now: Instant) -> bool {
        let Some(length) = self.length else {
            return false;
        };
        if self
            .last_request
            .is_some_and(|at| now < at + length / RENEWALS_PER_LEASE)
        {
            return false;
        }
        if self.pending.len() == PENDING_CAP {
            self.pending.pop_front();
        }
        self.pending.push_back((seq, now));
        self.last_request = Some(now);
        true
    }

    /// A supervisor acknowledged `seq`.
    pub fn acknowledged(&mut self, seq: u64) {
        let Some(length) = self.length else {
            return;
        };
        let Some(&(_, sent)) = self.pending.iter().find(|(s, _)| *s == seq) else {
            return;
        };
        self.pending.retain(|(s, _)| *s > seq);
        self.extend_to(sent + length);
    }

    /// The lease's length, if one was given.
    pub fn length(&self) -> Option<Duration> {
        self.length
    }

    fn extend_to(&mut self, until: Instant) {
        self.end = Some(self.end.map_or(until, |end| end.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_send_time_of_what_was_acknowledged() {
        let mut lease = Lease::new();
        let t0 = Instant::now();
        lease.registered(8_000, t0);
        assert_eq!(lease.end(), Some(t0 + Duration::from_secs(8)));
        // Asked at most every quarter lease.
        assert!(lease.ask(2, t0 + Duration::from_secs(1)));
        assert!(!lease.ask(3, t0 + Duration::from_millis(2_999)));
        assert!(lease.ask(4, t0 + Duration::from_secs(3)));
        // Answers: the later request's send time counts; an unknown seq
        // changes nothing; an older answer never shortens it.
        lease.acknowledged(4);
        assert_eq!(lease.end(), Some(t0 + Duration::from_secs(11)));
        lease.acknowledged(99);
        lease.acknowledged(2);
        assert_eq!(lease.end(), Some(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_supervisor_without_leases_gives_none_and_asks_nothing() {
        let mut lease = Lease::new();
        let t0 = Instant::now();
        lease.registered(5_000, t0);
        lease.registered(0, t0 + Duration::from_secs(1));
        assert_eq!(lease.end(), None);
        assert!(!lease.ask(2, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn answers_from_an_earlier_session_do_not_count() {
        let mut lease = Lease::new();
        let t0 = Instant::now();
        lease.registered(8_000, t0);
        assert!(lease.ask(5, t0 + Duration::from_secs(2)));
        // The stream broke; the next session registers at 4 s and its own
        // seq 5 is some other message.
        lease.registered(8_000, t0 + Duration::from_secs(4));
        lease.acknowledged(5);
        assert_eq!(lease.end(), Some(t0 + Duration::from_secs(12)));
    }
}
