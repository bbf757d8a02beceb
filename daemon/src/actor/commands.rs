//! Operators' commands (each applied once per request id, answered after
//! the batch is reconciled and durable) and reads.

use sup_core::{CordonOutcome, Drill, EngineError, Millis};
use sup_proto::v1;
use tokio::sync::oneshot;

use super::idempotent::{Applied, Command};
use super::request::By;
use super::{defer, defer_with, Actor, ActorError, Deferred, JobReply};
use crate::store::Store;
use crate::view;

type NodeReply = oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>;

impl<S: Store> Actor<S> {
    pub(super) fn cordon(
        &mut self,
        now: Millis,
        node_id: String,
        who: By,
        reply: NodeReply,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "cordon",
            target: &node_id,
        };
        let applied = self.requests.once(now, command, &mut self.engine, &mut self.pending_changes, |engine| {
            let outcome = engine.cordon(now, &node_id, &who.reason, &who.by)?;
            if outcome.changed {
                tracing::warn!(node = %node_id, by = %who.by, reason = %who.reason, "node cordoned");
            }
            Ok((outcome.changed, outcome.message))
        });
        node_reply(reply, node_id, applied)
    }

    pub(super) fn uncordon(
        &mut self,
        now: Millis,
        node_id: String,
        who: By,
        skip_validation: bool,
        reply: NodeReply,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "uncordon",
            target: &node_id,
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| {
                let outcome = engine.uncordon_validated(
                    now,
                    &node_id,
                    &who.by,
                    &who.reason,
                    !skip_validation,
                )?;
                if outcome.changed {
                    tracing::info!(node = %node_id, by = %who.by, "node uncordoned");
                }
                Ok((outcome.changed, outcome.message))
            },
        );
        node_reply(reply, node_id, applied)
    }

    pub(super) fn drain(
        &mut self,
        now: Millis,
        node_id: String,
        who: By,
        deadline_ms: u64,
        reply: NodeReply,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "drain",
            target: &node_id,
        };
        let deadline = Millis::try_from(deadline_ms).unwrap_or(Millis::MAX);
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| {
                let outcome = engine.drain(now, &node_id, &who.reason, &who.by, deadline)?;
                if outcome.changed {
                    tracing::warn!(node = %node_id, by = %who.by, reason = %who.reason, "node draining");
                }
                Ok((outcome.changed, outcome.message))
            },
        );
        node_reply(reply, node_id, applied)
    }

    /// Removes a node; its Xid series go with it.
    pub(super) fn remove_node(
        &mut self,
        now: Millis,
        node_id: String,
        who: By,
        reply: oneshot::Sender<Result<(bool, String), ActorError>>,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "remove_node",
            target: &node_id,
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| {
                let outcome = engine.remove_node(now, &node_id, &who.by)?;
                Ok((outcome.changed, outcome.message))
            },
        );
        if applied.as_ref().is_ok_and(|(changed, _)| *changed) {
            tracing::warn!(node = %node_id, by = %who.by, "node removed");
            self.counters
                .xids
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove_node(&node_id);
            self.counters
                .catalogs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&node_id);
            // Its agent, if connected, is told nothing more; a later
            // registration is a fresh join.
            self.sessions.remove(&node_id);
        }
        defer(reply, applied)
    }

    /// The spec is parsed here, at the edge, into the engine's type; a spec
    /// that does not parse has no job name, so its request id is kept
    /// under an empty target.
    pub(super) fn submit_job(
        &mut self,
        now: Millis,
        spec_text: String,
        by: String,
        request_id: String,
        slurm: Option<sup_core::SlurmAllocation>,
        reply: JobReply,
    ) -> Deferred {
        let parsed = crate::jobspec::parse(&spec_text);
        let name = parsed.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let command = Command {
            id: &request_id,
            kind: "submit_job",
            target: &name,
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| {
                let spec = parsed.map_err(EngineError::InvalidJobSpec)?;
                let said = match slurm {
                    Some(allocation) => {
                        engine.submit_job_in_allocation(now, spec, &spec_text, &by, allocation)?
                    }
                    None => engine.submit_job(now, spec, &spec_text, &by)?,
                };
                Ok((true, said))
            },
        );
        job_reply(reply, name, applied)
    }

    pub(super) fn stop_job(
        &mut self,
        now: Millis,
        name: String,
        who: By,
        reply: JobReply,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "stop_job",
            target: &name,
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| engine.stop_job(now, &name, &who.by, &who.reason),
        );
        job_reply(reply, name, applied)
    }

    pub(super) fn drill(
        &mut self,
        now: Millis,
        node_id: String,
        drill: Drill,
        by: String,
        request_id: String,
        reply: oneshot::Sender<Result<String, ActorError>>,
    ) -> Deferred {
        let command = Command {
            id: &request_id,
            kind: "drill",
            target: &node_id,
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| Ok((true, engine.drill(now, &node_id, drill, &by)?)),
        );
        defer(reply, applied.map(|(_, message)| message))
    }

    pub(super) fn reset_breaker(
        &mut self,
        now: Millis,
        who: By,
        reply: oneshot::Sender<Result<(bool, String), ActorError>>,
    ) -> Deferred {
        let command = Command {
            id: &who.request_id,
            kind: "reset_breaker",
            target: "breaker",
        };
        let applied = self.requests.once(
            now,
            command,
            &mut self.engine,
            &mut self.pending_changes,
            |engine| engine.reset_breaker(now, &who.by, &who.reason),
        );
        defer(reply, applied)
    }

    pub(super) fn get_job(
        &self,
        name: &str,
        reply: oneshot::Sender<Result<(v1::Job, Vec<v1::Checkpoint>), ActorError>>,
    ) -> Deferred {
        let result = self
            .engine
            .job(name)
            .map(|j| (view::job_in(&self.engine, j), view::checkpoints(j)));
        defer(reply, result.map_err(ActorError::from))
    }
}

/// A cordon's answer: the outcome and the node as it is after the batch.
fn node_reply(reply: NodeReply, node_id: String, applied: Applied) -> Deferred {
    defer_with(reply, move |engine| {
        let (changed, message) = applied?;
        let node = view::node(engine, engine.node(&node_id)?);
        Ok((CordonOutcome { changed, message }, node))
    })
}

/// A job command's answer: the outcome and the job as it is after the batch.
fn job_reply(reply: JobReply, name: String, applied: Applied) -> Deferred {
    defer_with(reply, move |engine| {
        let (changed, message) = applied?;
        Ok((changed, message, view::job(engine.job(&name)?)))
    })
}
