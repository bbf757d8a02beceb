//! The circuit breaker: automatic cordons are rationed per window, and when
//! too many nodes turn bad at once they stop until an operator resets the
//! breaker (the likelier story then is a bug in sup, the driver or the
//! fabric, and cordoning the cluster would be a disaster).

use crate::records::{Breaker, CordonRecord};
use crate::{Engine, EngineError, EventKind, Millis};

impl Engine {
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
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
        self.expire_breaker_window(now);
        let allowed = self.cordon_allowance();
        if self.breaker.open || self.recent_auto_cordons.len() >= allowed {
            if !self.breaker.open {
                let total = self.nodes.len();
                self.breaker = Breaker {
                    open: true,
                    reason: format!(
                        "{} automatic cordons within {} would exceed the limit of {allowed} ({:.0}% of {total} nodes, at least {}); automatic cordons stopped until an operator resets the breaker (supctl breaker reset)",
                        self.recent_auto_cordons.len() + 1,
                        super::format_ms(self.config.breaker_window_ms),
                        self.config.breaker_max_share * 100.0,
                        self.config.breaker_min_cordons
                    ),
                    since: now,
                };
                let text = self.breaker.reason.clone();
                self.record_event(now, EventKind::BreakerOpened, Some(node_id), text);
                self.actions
                    .push_back(super::Action::Persist(super::Change::PutBreaker(
                        self.breaker.clone(),
                    )));
            }
            self.record_event(
                now,
                EventKind::NodeCordoned,
                Some(node_id),
                format!("automatic cordon held back (breaker open): {reason}"),
            );
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.deferred_cordon = Some(reason);
            }
            return;
        }
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.deferred_cordon = None;
            node.record.cordon = Some(CordonRecord {
                reason: reason.clone(),
                by: "sup".to_owned(),
                at: now,
            });
        }
        self.recent_auto_cordons.push_back(now);
        self.record_event(
            now,
            EventKind::NodeCordoned,
            Some(node_id),
            format!("cordoned by sup: {reason}"),
        );
        self.persist_node(node_id);
    }

    pub(crate) fn cordon_allowance(&self) -> usize {
        let share = (self.config.breaker_max_share * self.nodes.len() as f64).ceil() as usize;
        share.max(self.config.breaker_min_cordons as usize)
    }

    pub(crate) fn expire_breaker_window(&mut self, now: Millis) {
        let window = self.config.breaker_window_ms;
        while self
            .recent_auto_cordons
            .front()
            .is_some_and(|at| now - at > window)
        {
            self.recent_auto_cordons.pop_front();
        }
    }

    /// Operator: close the breaker. Cordons held back while it was open are
    /// made now (and may open it again if the failures are still there).
    pub fn reset_breaker(
        &mut self,
        now: Millis,
        by: &str,
        reason: &str,
    ) -> Result<(bool, String), EngineError> {
        if !self.breaker.open {
            return Ok((false, "the breaker is closed".to_owned()));
        }
        let by = if by.trim().is_empty() {
            "unknown"
        } else {
            by.trim()
        };
        let mut text = format!(
            "breaker reset by {by} (was open since it said: {})",
            self.breaker.reason
        );
        if !reason.trim().is_empty() {
            text.push_str(&format!("; {}", reason.trim()));
        }
        self.breaker = Breaker::default();
        self.recent_auto_cordons.clear();
        self.actions
            .push_back(super::Action::Persist(super::Change::PutBreaker(
                self.breaker.clone(),
            )));
        self.record_event(now, EventKind::BreakerReset, None, text);
        let deferred: Vec<(String, String)> = self
            .nodes
            .values()
            .filter_map(|n| n.deferred_cordon.clone().map(|r| (n.record.id.clone(), r)))
            .collect();
        for (id, reason) in deferred {
            self.auto_cordon(now, &id, reason);
        }
        self.request_reconcile(now);
        Ok((true, "breaker reset: automatic cordons resume".to_owned()))
    }
}
