//! Judge, then act. Reconcile asks one question of each job — what, if
//! anything, is wrong with it now — and the answer is a value with its
//! reason, computed from `&self`. Only then does separate code act on it,
//! so a judgement can be tested, logged or (later) shown before it runs,
//! and no decision re-enters reconcile. (A straggler is judged the same
//! way, by `judge_straggler`, when the detector flags it on a progress
//! report.)

use super::remedies::{Hang, HangCheck, RollbackCheck};
use super::restart::NodesCheck;
use super::Job;
use crate::detect::LossSpike;
use crate::{Engine, Millis};

/// What reconcile concluded about one job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Judgement {
    /// Nothing to do now; look again at `recheck_at` if set.
    Fine { recheck_at: Option<Millis> },
    /// Its nodes can no longer run it: a counted restart.
    NodesFailed(String),
    /// A drained node's move is due: a restart that is not counted.
    PlannedMove(String),
    /// A loss-spike rollback is due.
    RollBack(LossSpike),
    /// A rollback fell due while the job held no nodes: the spike was in
    /// a generation that is gone, so there is nothing to roll back.
    DropRollback,
    /// The current generation hung.
    Hung(Hang),
}

impl Engine {
    /// Node failures first (a lost node explains a hang), then a due
    /// rollback (it restarts the job anyway), then a hang.
    pub(crate) fn judge_job(&self, now: Millis, job: &Job) -> Judgement {
        let mut recheck_at = match self.judge_nodes(now, job) {
            NodesCheck::Failed(reason) => return Judgement::NodesFailed(reason),
            NodesCheck::PlannedMove(reason) => return Judgement::PlannedMove(reason),
            NodesCheck::Fine { recheck_at } => recheck_at,
        };
        match self.judge_rollback(now, job) {
            RollbackCheck::Due(_) if !job.record.state.is_active() => {
                return Judgement::DropRollback
            }
            RollbackCheck::Due(spike) => return Judgement::RollBack(spike),
            RollbackCheck::WaitUntil(at) => recheck_at = earliest(recheck_at, Some(at)),
            RollbackCheck::NotPending => {}
        }
        match self.judge_hang(now, job) {
            HangCheck::Hung(hang) => Judgement::Hung(hang),
            HangCheck::NotHung { recheck_at: at } => Judgement::Fine {
                recheck_at: earliest(recheck_at, at),
            },
        }
    }

    /// Carries out a judgement.
    pub(crate) fn act_on(&mut self, now: Millis, name: &str, judgement: Judgement) {
        match judgement {
            Judgement::Fine { recheck_at } => {
                if let Some(at) = recheck_at {
                    self.schedule_job_check(at);
                }
            }
            Judgement::NodesFailed(reason) => self.restart_job(now, name, reason, true),
            Judgement::PlannedMove(reason) => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.record.planned_moves += 1;
                }
                self.restart_job(now, name, reason, false);
            }
            Judgement::RollBack(spike) => self.roll_back(now, name, spike),
            Judgement::DropRollback => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.detect.pending_rollback = None;
                    job.detect.rollback_catalog_fresh = false;
                }
            }
            Judgement::Hung(hang) => self.act_on_hang(now, name, hang),
        }
    }
}

fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
