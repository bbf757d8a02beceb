//! When a job must restart, and how its restarts are budgeted: lost or
//! failed nodes, rank failures, the restart budget and the crash-loop
//! guard, growing back onto returned capacity, and finishing a job.

use super::Job;
use crate::records::JobState;
use crate::{Engine, EventKind, Millis};

impl Engine {
    /// Right after a checkpoint little work is lost by a restart: a shrunk
    /// job takes back capacity that returned.
    pub(crate) fn maybe_grow(&mut self, now: Millis, name: &str, step: u64) {
        if !self.config.grow_after_checkpoint {
            return;
        }
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let current = job.record.nodes.len() as u32;
        if job.record.state != JobState::Running || current >= job.record.spec.nodes {
            return;
        }
        let Some((placed, _)) = self.place(name) else {
            return;
        };
        if placed.len() as u32 > current {
            self.restart_job(
                now,
                name,
                format!(
                    "growing back from {current} to {} node(s) right after checkpoint step {step}",
                    placed.len()
                ),
                false,
            );
        }
    }

    /// Whether an active job's current nodes can still run it: a node gone,
    /// cordoned, or lost (unreachable past its grace, or while the job
    /// stopped progressing) fails it; otherwise when to look again.
    pub(crate) fn judge_nodes(&self, now: Millis, job: &Job) -> NodesCheck {
        if !job.record.state.is_active() {
            return NodesCheck::Fine { recheck_at: None };
        }
        let mut wake: Option<Millis> = None;
        let mut planned = None;
        let checkpoint = job.record.checkpoint.as_ref().map(|c| c.step);
        for id in &job.record.nodes {
            let Some(node) = self.nodes.get(id) else {
                return NodesCheck::Failed(format!("node {id} is gone from the registry"));
            };
            if let Some(c) = &node.record.cordon {
                return NodesCheck::Failed(format!("node {id} cordoned by {}: {}", c.by, c.reason));
            }
            if let Some(drain) = &node.record.drain {
                match crate::maintenance::drain_due(drain, checkpoint, now) {
                    Some(why) => {
                        planned.get_or_insert(format!("off node {id}: {why}"));
                    }
                    None => wake = Some(wake.map_or(drain.deadline, |w| w.min(drain.deadline))),
                }
            }
            // An agent that came back with fewer GPUs (one fell off the bus
            // and the driver no longer lists it) cannot run its share.
            let gpus = node.record.gpus.len();
            let needed = job.record.spec.gpus_per_node as usize;
            if gpus < needed {
                return NodesCheck::Failed(format!(
                    "node {id} has {gpus} GPU(s) now, the job needs {needed} per node"
                ));
            }
            let Some(since) = node.unreachable_since else {
                continue;
            };
            if self.partition_since.is_some() {
                // Held: the silence is probably ours. Re-evaluated when the
                // hold ends (a node reporting again reconciles).
                continue;
            }
            let silent = now - since;
            let stalled = job.last_progress_at.is_none_or(|p| p <= since);
            if silent >= self.config.lost_node_grace_ms {
                return NodesCheck::Failed(format!(
                    "node {id} lost: unreachable for {}",
                    crate::format_ms(silent + self.config.unreachable_after_ms)
                ));
            }
            if stalled && silent >= self.config.stall_confirm_ms {
                return NodesCheck::Failed(format!(
                    "node {id} lost: unreachable and the job has made no progress since"
                ));
            }
            let next = if stalled {
                since + self.config.stall_confirm_ms
            } else {
                since + self.config.lost_node_grace_ms
            };
            wake = Some(wake.map_or(next, |w: Millis| w.min(next)));
        }
        // A failure above wins (it counts); a due move is planned.
        match planned {
            Some(why) => NodesCheck::PlannedMove(why),
            None => NodesCheck::Fine { recheck_at: wake },
        }
    }

    /// Stops every rank (generation bump) and starts the job again on the
    /// nodes that can run it, from the newest verified checkpoint.
    /// `counts`: whether this restart is the job's failure (budget, crash
    /// loop) or the cluster's doing (preemption, growing back).
    pub(crate) fn restart_job(&mut self, now: Millis, name: &str, reason: String, counts: bool) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.refresh_best_step();
        if counts {
            // Detection ends here, at the decision (goodput accounting).
            self.book_fault(now, name);
            let Some(job) = self.jobs.get_mut(name) else {
                return;
            };
            job.record.restarts += 1;
            let mark = (
                job.record.checkpoint.as_ref().map(|c| c.step),
                job.record.best_step,
            );
            let progressed =
                mark.0 > job.record.restart_mark.0 || mark.1 > job.record.restart_mark.1;
            job.record.restart_mark = mark;
            if progressed {
                job.record.fruitless_restarts = 0;
            } else {
                job.record.fruitless_restarts += 1;
            }
            let spec = &job.record.spec;
            if job.record.restarts > spec.max_restarts {
                let why = format!(
                    "restart budget exhausted: {} restarts (max_restarts {}); last failure: {reason}",
                    job.record.restarts, spec.max_restarts
                );
                self.finish_job(now, name, JobState::Failed, why, EventKind::JobFailed);
                return;
            }
            if job.record.fruitless_restarts >= self.config.crash_loop_limit {
                let why = format!(
                    "crash loop: {} restarts in a row without a new checkpoint or step advance; last failure: {reason}",
                    job.record.fruitless_restarts
                );
                self.finish_job(now, name, JobState::Failed, why, EventKind::JobFailed);
                return;
            }
        }
        self.launch(now, name, Some(reason));
    }

    pub(crate) fn finish_job(
        &mut self,
        now: Millis,
        name: &str,
        state: JobState,
        why: String,
        kind: EventKind,
    ) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.record.state = state;
        job.record.reason = why.clone();
        job.record.goodput.end(now);
        if !job.record.nodes.is_empty() {
            job.set_nodes(Vec::new());
            // Releasing nodes is a new generation too: their agents must
            // stop the old ranks.
            self.next_generation();
        }
        self.record_job_event(now, kind, None, Some(name), why);
        self.persist_job(name);
    }
}

/// Whether a job's nodes can still run it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodesCheck {
    Fine {
        recheck_at: Option<Millis>,
    },
    Failed(String),
    /// A node is drained and the job's move off it is due: not a failure.
    PlannedMove(String),
}
