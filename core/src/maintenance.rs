//! Planned maintenance: draining a node at its job's next checkpoint,
//! validating a repaired node before it returns to service, and removing a
//! node from the registry.
//!
//! A cordon is immediate: the job restarts now, from its last checkpoint,
//! and the restart counts against its budget. A drain is the planned
//! version: the node takes no new work, its job keeps training until its
//! next complete checkpoint appears (or the drain's deadline passes), then
//! moves off — spare swap or shrink, resuming from that checkpoint — and
//! only then is the node cordoned. A planned move is not a failure: neither
//! `restarts` nor the crash-loop guard moves.

use crate::records::{CordonRecord, DrainRecord};
use crate::{
    required_text, Change, CordonOutcome, Engine, EngineError, EventKind, Millis, NodeState,
};

/// The longest drain deadline accepted.
pub const MAX_DRAIN_DEADLINE_MS: Millis = 7 * 24 * 3_600_000;

/// A validation that has not answered in this long failed (the agent
/// enforces its own, shorter, timeout on the command; this covers an agent
/// that restarted or hung meanwhile).
pub const VALIDATION_ANSWER_MS: Millis = 2 * 3_600_000;

/// How much of a failed validation's output is kept as evidence.
const VALIDATION_OUTPUT_BYTES: usize = 1024;

/// An uncordon waiting for the node's agent to validate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingValidation {
    pub id: u64,
    pub by: String,
    pub note: String,
    pub at: Millis,
}

/// Why a job must move off a draining node now, if it must.
pub(crate) fn drain_due(
    drain: &DrainRecord,
    checkpoint: Option<u64>,
    now: Millis,
) -> Option<String> {
    let newer = checkpoint.is_some_and(|step| drain.after_step.is_none_or(|after| step > after));
    let who = format!("drained by {}: {}", drain.by, drain.reason);
    if newer {
        let step = checkpoint.unwrap_or_default();
        Some(format!(
            "planned move ({who}) at its new checkpoint, step {step}"
        ))
    } else if now >= drain.deadline {
        Some(format!(
            "planned move ({who}): the drain deadline passed before a new checkpoint"
        ))
    } else {
        None
    }
}

impl Engine {
    /// Drains `node_id`: cordoned at once if it holds no job, else once its
    /// job moved off at the next checkpoint (or at `deadline_ms` from now).
    pub fn drain(
        &mut self,
        now: Millis,
        node_id: &str,
        reason: &str,
        by: &str,
        deadline_ms: Millis,
    ) -> Result<CordonOutcome, EngineError> {
        let reason = required_text("drain reason", reason)?;
        let by = required_text("drain 'by'", by)?;
        if !(1..=MAX_DRAIN_DEADLINE_MS).contains(&deadline_ms) {
            return Err(EngineError::InvalidArgument(format!(
                "drain deadline must be between 1 ms and {}",
                crate::format_ms(MAX_DRAIN_DEADLINE_MS)
            )));
        }
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if let Some(c) = &node.record.cordon {
            return Ok(CordonOutcome {
                changed: false,
                message: format!(
                    "node '{node_id}' is already cordoned by {}: {}",
                    c.by, c.reason
                ),
            });
        }
        if let Some(d) = &node.record.drain {
            return Ok(CordonOutcome {
                changed: false,
                message: format!(
                    "node '{node_id}' is already being drained by {}: {}",
                    d.by, d.reason
                ),
            });
        }
        let job = self.job_of(node_id).map(|j| {
            (
                j.name().to_owned(),
                j.record.checkpoint.as_ref().map(|c| c.step),
            )
        });
        let deadline = now + deadline_ms;
        let drain = DrainRecord {
            reason: reason.clone(),
            by: by.clone(),
            at: now,
            deadline,
            after_step: job.as_ref().and_then(|(_, step)| *step),
        };
        let message = match &job {
            None => format!("node '{node_id}' holds no job: cordoned now"),
            Some((name, step)) => format!(
                "node '{node_id}' is draining: job '{name}' moves off at its next complete checkpoint{}, at the latest in {}",
                step.map(|s| format!(" (after step {s})")).unwrap_or_default(),
                crate::format_ms(deadline_ms)
            ),
        };
        self.record_job_event(
            now,
            EventKind::NodeDraining,
            Some(node_id),
            job.as_ref().map(|(name, _)| name.as_str()),
            format!("drain by {by}: {reason}; {message}"),
        );
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.record.drain = Some(Box::new(drain));
        }
        self.persist_node(node_id);
        self.schedule_job_check(deadline);
        self.request_reconcile(now);
        Ok(CordonOutcome {
            changed: true,
            message,
        })
    }

    /// Starts the validation an uncordon asks for, if the node is cordoned
    /// and its agent has a validation command: `None` when there is
    /// nothing to validate (the uncordon then applies at once).
    pub(crate) fn start_validation(
        &mut self,
        now: Millis,
        node_id: &str,
        by: &str,
        note: &str,
    ) -> Result<Option<CordonOutcome>, EngineError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if node.record.cordon.is_none() || !node.validates {
            return Ok(None);
        }
        if let Some(p) = &node.validation {
            return Ok(Some(CordonOutcome {
                changed: false,
                message: format!(
                    "node '{node_id}' is already being validated (uncordon by {})",
                    p.by
                ),
            }));
        }
        if !node.connected() || node.unreachable {
            return Err(EngineError::FailedPrecondition(format!(
                "node '{node_id}' validates before returning to service, but its agent is not connected; start it, or uncordon with --skip-validation"
            )));
        }
        self.next_validation_id += 1;
        let id = self.next_validation_id;
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.validation = Some(PendingValidation {
                id,
                by: by.to_owned(),
                note: note.to_owned(),
                at: now,
            });
            if let Some(c) = node.record.cordon.as_mut() {
                c.validation = Some("running".to_owned());
            }
        }
        self.actions.push_back(crate::Action::SendValidation {
            node_id: node_id.to_owned(),
            id,
        });
        self.record_event(
            now,
            EventKind::NodeValidating,
            Some(node_id),
            format!("uncordon by {by}: validating the node before it returns to service"),
        );
        self.persist_node(node_id);
        self.schedule_job_check(now + VALIDATION_ANSWER_MS);
        Ok(Some(CordonOutcome {
            changed: true,
            message: format!(
                "node '{node_id}' is being validated; it returns to service if the validation passes (supctl node {node_id} shows the outcome)"
            ),
        }))
    }

    /// The agent's answer to a validation: the node returns to service if
    /// it passed, else stays cordoned with the output as evidence.
    pub fn on_validation_result(
        &mut self,
        now: Millis,
        node_id: &str,
        session: crate::SessionId,
        id: u64,
        passed: bool,
        output: &str,
    ) -> crate::ReportOutcome {
        if !self.is_live_stream(node_id, session) {
            return crate::ReportOutcome::StaleStream;
        }
        let Some(node) = self.nodes.get_mut(node_id) else {
            return crate::ReportOutcome::StaleStream;
        };
        if node.validation.as_ref().is_none_or(|p| p.id != id) {
            // An answer to a validation that was given up or replaced.
            return crate::ReportOutcome::StaleGeneration;
        }
        let Some(pending) = node.validation.take() else {
            return crate::ReportOutcome::StaleGeneration;
        };
        if passed {
            let _ = self.return_to_service(
                now,
                node_id,
                &pending.by,
                &pending.note,
                " after its validation passed",
            );
        } else {
            self.fail_validation(now, node_id, output);
        }
        crate::ReportOutcome::Applied
    }

    /// Keeps the node cordoned with why its validation failed.
    fn fail_validation(&mut self, now: Millis, node_id: &str, output: &str) {
        let mut tail = output.trim().to_owned();
        if tail.len() > VALIDATION_OUTPUT_BYTES {
            let mut start = tail.len() - VALIDATION_OUTPUT_BYTES;
            while !tail.is_char_boundary(start) {
                start += 1;
            }
            tail = format!("…{}", &tail[start..]);
        }
        if tail.is_empty() {
            tail = "(no output)".to_owned();
        }
        if let Some(c) = self
            .nodes
            .get_mut(node_id)
            .and_then(|n| n.record.cordon.as_mut())
        {
            c.validation = Some(tail.clone());
        }
        self.record_event(
            now,
            EventKind::NodeValidationFailed,
            Some(node_id),
            format!("validation failed, the node stays cordoned: {tail}"),
        );
        self.persist_node(node_id);
    }

    /// Validations that went unanswered too long fail. Part of reconcile.
    pub(crate) fn expire_validations(&mut self, now: Millis) {
        let late: Vec<String> = self
            .nodes
            .values()
            .filter(|n| {
                n.validation
                    .as_ref()
                    .is_some_and(|p| now - p.at >= VALIDATION_ANSWER_MS)
            })
            .map(|n| n.record.id.clone())
            .collect();
        for id in late {
            if let Some(node) = self.nodes.get_mut(&id) {
                node.validation = None;
            }
            self.fail_validation(
                now,
                &id,
                &format!(
                    "no answer from the agent within {}",
                    crate::format_ms(VALIDATION_ANSWER_MS)
                ),
            );
        }
    }

    /// Cordons every draining node that no longer holds a job (its job moved
    /// off, finished or was stopped). Part of reconcile: level-triggered.
    pub(crate) fn finish_drains(&mut self, now: Millis) {
        // Every reconcile asks; the holder map costs a pass over every job's
        // nodes, so build it only when some node drains.
        if !self.nodes.values().any(|n| n.record.drain.is_some()) {
            return;
        }
        let holders = self.holders();
        let done: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.record.drain.is_some() && !holders.contains_key(n.record.id.as_str()))
            .map(|n| n.record.id.clone())
            .collect();
        drop(holders);
        for id in done {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let Some(drain) = node.record.drain.take() else {
                continue;
            };
            let reason = format!("drained: {}", drain.reason);
            node.record.cordon = Some(CordonRecord {
                validation: None,
                reason: reason.clone(),
                by: drain.by.clone(),
                at: now,
            });
            self.record_event(
                now,
                EventKind::NodeCordoned,
                Some(&id),
                format!("cordoned by {}: {reason}", drain.by),
            );
            self.persist_node(&id);
        }
    }

    /// Removes a node from the registry (an RMA'd or renamed host): only a
    /// cordoned or unreachable node that holds no job and whose agent is
    /// gone or silent. If its agent comes back, it joins afresh.
    pub fn remove_node(
        &mut self,
        now: Millis,
        node_id: &str,
        by: &str,
    ) -> Result<CordonOutcome, EngineError> {
        let by = required_text("remove 'by'", by)?;
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if let Some(job) = self.job_of(node_id) {
            return Err(EngineError::InvalidArgument(format!(
                "node '{node_id}' holds job '{}': drain or cordon it and wait for the job to move off first",
                job.name()
            )));
        }
        let state = node.state();
        if node.connected() && !node.unreachable {
            // Removed now, the running agent would register again at once
            // as a new, uncordoned node.
            return Err(EngineError::InvalidArgument(format!(
                "node '{node_id}' has a connected agent: stop sup-agent on it first (it would join again at once as a new node)"
            )));
        }
        if !matches!(state, NodeState::Cordoned | NodeState::Unreachable) {
            return Err(EngineError::InvalidArgument(format!(
                "node '{node_id}' is {}: only a cordoned or unreachable node can be removed (cordon it first)",
                state.as_str()
            )));
        }
        self.nodes.remove(node_id);
        self.actions
            .push_back(crate::Action::Persist(Change::DeleteNode(
                node_id.to_owned(),
            )));
        self.record_event(
            now,
            EventKind::NodeRemoved,
            Some(node_id),
            format!("removed by {by} (was {})", state.as_str()),
        );
        self.request_reconcile(now);
        Ok(CordonOutcome {
            changed: true,
            message: format!("node '{node_id}' removed"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(after_step: Option<u64>, deadline: Millis) -> DrainRecord {
        DrainRecord {
            reason: "bios update".into(),
            by: "alice".into(),
            at: 0,
            deadline,
            after_step,
        }
    }

    #[test]
    fn a_drain_is_due_at_a_newer_checkpoint_or_the_deadline() {
        let d = drain(Some(100), 10_000);
        assert_eq!(drain_due(&d, Some(100), 5_000), None, "same checkpoint");
        assert_eq!(drain_due(&d, None, 5_000), None);
        let why = drain_due(&d, Some(150), 5_000).expect("new checkpoint");
        assert_eq!(
            why,
            "planned move (drained by alice: bios update) at its new checkpoint, step 150"
        );
        let late = drain_due(&d, Some(100), 10_000).expect("deadline");
        assert!(
            late.ends_with("the drain deadline passed before a new checkpoint"),
            "{late}"
        );
        // A job with no checkpoint yet moves at its first one.
        assert!(drain_due(&drain(None, 10_000), Some(1), 0).is_some());
    }
}
