//! The circuit breaker: automatic cordons are rationed per window, and when
//! too many nodes turn bad at once they stop until an operator resets the
//! breaker (the likelier story then is a bug in sup, the driver or the
//! fabric, and cordoning the cluster would be a disaster).
//!
//! [`Breaker`] owns everything about it — the durable open/closed record,
//! the window of recent automatic cordons and the cordons held back while
//! open — and answers one question: may this node be cordoned now, or why
//! not.

use crate::records::{BreakerRecord, CordonRecord};
use crate::{Action, Change, Engine, EngineError, EventKind, Millis};

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    /// All of its state, durable: open or not, the window's recent
    /// automatic cordons, the cordons held back.
    record: BreakerRecord,
}

/// The breaker's answer to an automatic cordon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// Go ahead; it is counted in the window.
    Allowed,
    /// Held back until a reset. `opened` carries the breaker's reason when
    /// this very cordon opened it.
    HeldBack { opened: Option<String> },
}

/// How many automatic cordons a window allows.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub window_ms: Millis,
    pub max_share: f64,
    pub min_cordons: u32,
    /// The cap whatever the share says (`usize::MAX`-like when unset).
    pub max_cordons: u32,
    /// Nodes in the cluster (the share's denominator).
    pub nodes: usize,
}

impl Limit {
    /// min(max_cordons, max(min_cordons, ceil(max_share × nodes))).
    pub fn allowance(&self) -> usize {
        let share = (self.max_share * self.nodes as f64).ceil() as usize;
        share
            .max(self.min_cordons as usize)
            .min(self.max_cordons as usize)
    }
}

impl Breaker {
    pub fn restored(mut record: BreakerRecord) -> Breaker {
        record.recent_cordons.sort_unstable();
        Breaker { record }
    }

    pub fn record(&self) -> &BreakerRecord {
        &self.record
    }

    /// Forgets automatic cordons older than the window.
    pub fn expire(&mut self, now: Millis, window_ms: Millis) {
        let recent = &mut self.record.recent_cordons;
        let expired = recent
            .iter()
            .take_while(|at| now - **at > window_ms)
            .count();
        recent.drain(..expired);
    }

    /// May `node` be cordoned automatically now? An allowed cordon is
    /// counted; one past the limit opens the breaker and is held back, as
    /// is every one while it is open.
    pub fn ask(&mut self, now: Millis, node: &str, reason: &str, limit: Limit) -> Allowance {
        self.expire(now, limit.window_ms);
        let allowed = limit.allowance();
        if !self.record.open && self.record.recent_cordons.len() < allowed {
            self.record.held_back.remove(node);
            self.record.recent_cordons.push(now);
            return Allowance::Allowed;
        }
        let opened = (!self.record.open).then(|| {
            self.record.open = true;
            self.record.reason = format!(
                    "{} automatic cordons within {} would exceed the limit of {allowed} ({:.0}% of {} nodes, at least {}, at most {}); automatic cordons stopped until an operator resets the breaker (supctl breaker reset)",
                    self.record.recent_cordons.len() + 1,
                    crate::format_ms(limit.window_ms),
                    limit.max_share * 100.0,
                    limit.nodes,
                    limit.min_cordons,
                    limit.max_cordons
                );
            self.record.since = now;
            self.record.reason.clone()
        });
        self.record
            .held_back
            .insert(node.to_owned(), reason.to_owned());
        Allowance::HeldBack { opened }
    }

    /// Opens the breaker for a reason of its own (a correlated hardware
    /// fault); false if it was open already.
    pub fn hold(&mut self, now: Millis, reason: String) -> bool {
        if self.record.open {
            return false;
        }
        self.record.open = true;
        self.record.reason = reason;
        self.record.since = now;
        true
    }

    /// Closes the breaker and empties its window; returns the cordons held
    /// back (node, reason), to be asked for again.
    pub fn reset(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.record)
            .held_back
            .into_iter()
            .collect()
    }
}

impl Engine {
    pub fn breaker(&self) -> &BreakerRecord {
        self.breaker.record()
    }

    fn breaker_limit(&self) -> Limit {
        Limit {
            window_ms: self.config.breaker_window_ms,
            max_share: self.config.breaker_max_share,
            min_cordons: self.config.breaker_min_cordons,
            max_cordons: self.config.breaker_max_cordons,
            nodes: self.nodes.len(),
        }
    }

    /// Cordons a node on the engine's own authority, unless the breaker
    /// says too many nodes have gone that way recently.
    pub(crate) fn auto_cordon(&mut self, now: Millis, node_id: &str, reason: String) {
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        if node.record.cordon.is_some() {
            return;
        }
        let limit = self.breaker_limit();
        let allowance = self.breaker.ask(now, node_id, &reason, limit);
        // The window and the held-back cordons are durable too: a restart
        // must neither give back the allowance nor drop a held cordon.
        self.actions.push_back(Action::Persist(Change::PutBreaker(
            self.breaker.record().clone(),
        )));
        match allowance {
            Allowance::HeldBack { opened } => {
                if let Some(text) = opened {
                    self.record_event(now, EventKind::BreakerOpened, Some(node_id), text);
                }
                self.record_event(
                    now,
                    EventKind::NodeCordoned,
                    Some(node_id),
                    format!("automatic cordon held back (breaker open): {reason}"),
                );
            }
            Allowance::Allowed => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.record.cordon = Some(CordonRecord {
                        validation: None,
                        reason: reason.clone(),
                        by: "sup".to_owned(),
                        at: now,
                    });
                }
                self.record_event(
                    now,
                    EventKind::NodeCordoned,
                    Some(node_id),
                    format!("cordoned by sup: {reason}"),
                );
                self.persist_node(node_id);
            }
        }
    }

    pub(crate) fn expire_breaker_window(&mut self, now: Millis) {
        self.breaker.expire(now, self.config.breaker_window_ms);
    }

    /// Operator: close the breaker. Cordons held back while it was open are
    /// made now (and may open it again if the failures are still there).
    pub fn reset_breaker(
        &mut self,
        now: Millis,
        by: &str,
        reason: &str,
    ) -> Result<(bool, String), EngineError> {
        if !self.breaker.record().open {
            return Ok((false, "the breaker is closed".to_owned()));
        }
        let by = if by.trim().is_empty() {
            "unknown"
        } else {
            by.trim()
        };
        let mut text = format!(
            "breaker reset by {by} (was open since it said: {})",
            self.breaker.record().reason
        );
        if !reason.trim().is_empty() {
            text.push_str(&format!("; {}", reason.trim()));
        }
        let held_back = self.breaker.reset();
        self.actions.push_back(Action::Persist(Change::PutBreaker(
            self.breaker.record().clone(),
        )));
        self.record_event(now, EventKind::BreakerReset, None, text);
        for (id, reason) in held_back {
            self.auto_cordon(now, &id, reason);
        }
        self.request_reconcile(now);
        Ok((true, "breaker reset: automatic cordons resume".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(nodes: usize) -> Limit {
        Limit {
            window_ms: 600_000,
            max_share: 0.1,
            min_cordons: 3,
            max_cordons: 10,
            nodes,
        }
    }

    #[test]
    fn the_allowance_is_a_share_of_the_cluster_with_a_floor() {
        assert_eq!(limit(10).allowance(), 3);
        assert_eq!(limit(50).allowance(), 5);
        assert_eq!(limit(100).allowance(), 10);
        // The cap: a storm on a big cluster stops after a handful.
        assert_eq!(limit(2_000).allowance(), 10);
    }

    #[test]
    fn past_the_allowance_it_opens_once_and_holds_every_cordon_back() {
        let mut b = Breaker::default();
        for (i, node) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(
                b.ask(i as Millis, node, "Xid 79", limit(10)),
                Allowance::Allowed
            );
        }
        let Allowance::HeldBack { opened: Some(why) } = b.ask(3, "d", "Xid 79", limit(10)) else {
            panic!("the fourth cordon must open the breaker");
        };
        assert!(
            why.starts_with("4 automatic cordons within 10m would exceed the limit of 3"),
            "{why}"
        );
        assert_eq!(
            b.ask(4, "e", "Xid 48", limit(10)),
            Allowance::HeldBack { opened: None },
            "already open: held back, not opened again"
        );
        assert!(b.record().open);
        let held = b.reset();
        assert_eq!(
            held,
            vec![
                ("d".to_owned(), "Xid 79".to_owned()),
                ("e".to_owned(), "Xid 48".to_owned())
            ]
        );
        assert!(!b.record().open);
        assert_eq!(b.ask(5, "d", "Xid 79", limit(10)), Allowance::Allowed);
    }

    #[test]
    fn cordons_older_than_the_window_no_longer_count() {
        let mut b = Breaker::default();
        for i in 0..3 {
            assert_eq!(b.ask(i, "n", "r", limit(10)), Allowance::Allowed);
        }
        assert_eq!(b.ask(600_003, "n", "r", limit(10)), Allowance::Allowed);
    }
}
