//! Remedies short of a crash: a straggler swapped for a spare, a loss
//! spike rolled back to an earlier checkpoint, a hung generation restarted
//! (and the node it hangs on blamed, then cordoned).

use std::collections::BTreeMap;

use super::*;
use crate::detect::{self, LossSpike, Straggler, StragglerPolicy};
use crate::records::{CheckpointRef, JobState};
use crate::{Engine, EventKind, Millis, NodeState};

impl Engine {
    /// What to do about a node the detector flagged slow, and why: the
    /// factor and the statistics, the hardware evidence that decided which
    /// window confirmed it, then the job's policy, which needs a spare to
    /// act.
    pub(crate) fn judge_straggler(&self, job: &Job, s: &Straggler) -> StragglerRemedy {
        let policy = job
            .record
            .spec
            .straggler_policy
            .unwrap_or(self.config.detect.straggler_policy);
        // `s.corroborated` was decided from this same state (the detector
        // is fed `has_slowdown_signal` on the report that flags the node),
        // so the text names the evidence that chose the window.
        let corroboration = match (s.corroborated, self.slowdown_evidence(&s.node)) {
            (true, Some(evidence)) => format!("corroborated by {evidence}"),
            (true, None) => "corroborated by a hardware signal on the node".to_owned(),
            (false, _) => {
                let mut text = format!("no hardware signal of a slowdown ({SLOWDOWN_SIGNALS})");
                if let Some(other) = self.hardware_evidence(&s.node) {
                    text.push_str(&format!(
                        " on the node; its other GPU findings do not explain slowness: {other}"
                    ));
                }
                text
            }
        };
        let corroboration = format!("{corroboration}; {}", s.confirmation());
        let spare = self.has_spare_for(job.name());
        let (action, text) = match policy {
            StragglerPolicy::Report => (
                StragglerAction::Keep,
                "reported only (policy report)".to_owned(),
            ),
            StragglerPolicy::Replace if spare => (
                StragglerAction::ReplaceNow,
                "replacing it with a spare now".to_owned(),
            ),
            StragglerPolicy::ReplaceAtCheckpoint if spare => (
                StragglerAction::ReplaceAtCheckpoint,
                "replacing it with a spare right after the next checkpoint".to_owned(),
            ),
            _ => (
                StragglerAction::Keep,
                format!(
                    "kept: no spare to replace it with (policy {})",
                    policy.as_str()
                ),
            ),
        };
        StragglerRemedy {
            action,
            reason: format!(
                "node {} is a straggler: {:.2}× slower than the job's other nodes; {}; {corroboration}; {text}",
                s.node, s.slowdown, s.evidence
            ),
        }
    }

    /// A node flagged slow: judged, recorded, then acted on.
    pub(crate) fn on_straggler(&mut self, now: Millis, name: &str, s: Straggler) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let StragglerRemedy { action, reason } = self.judge_straggler(job, &s);
        self.record_job_event(
            now,
            EventKind::JobStraggler,
            Some(&s.node),
            Some(name),
            reason,
        );
        match action {
            StragglerAction::Keep => {}
            StragglerAction::ReplaceNow => self.replace_straggler(now, name, &s.node),
            StragglerAction::ReplaceAtCheckpoint => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.detect.pending_replace = Some(s.node.clone());
                }
            }
        }
    }

    /// Swaps a slow node for a spare through the restart path; the
    /// cluster's doing, so it does not count against the job's budget.
    pub(crate) fn replace_straggler(&mut self, now: Millis, name: &str, node: &str) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        if !job.record.avoid_nodes.iter().any(|n| n == node) {
            job.record.avoid_nodes.push(node.to_owned());
        }
        job.detect.pending_replace = None;
        self.restart_job(
            now,
            name,
            format!("replacing straggler node {node} with a spare"),
            false,
        );
        self.request_reconcile(now);
    }

    /// Whether a spare (free, or lent to low-priority work) could take a
    /// straggler's place.
    pub(crate) fn has_spare_for(&self, name: &str) -> bool {
        let Some(job) = self.jobs.get(name) else {
            return false;
        };
        let gpus = job.record.spec.gpus_per_node as usize;
        let normal = job.record.spec.priority == crate::jobspec::Priority::Normal;
        let holders = self.holders();
        self.nodes.values().any(|n| {
            n.state() == NodeState::Ready
                && !n.held_by_scheduler()
                && n.connected()
                && n.record.gpus.len() >= gpus
                && !job.record.avoid_nodes.contains(&n.record.id)
                // A spare lent to low-priority work is taken back for a
                // normal job, as placement does (the reserve is for this).
                && holders.get(n.record.id.as_str()).is_none_or(|(j, _)| {
                    normal && j.record.spec.priority == crate::jobspec::Priority::Low
                })
        })
    }

    /// Loss above k × its moving average for m steps: back to the newest
    /// checkpoint from before the spike, with a new seed and a scaled
    /// learning rate, within the job's rollback budget.
    ///
    /// The agents' checkpoint catalog lags by up to a scan interval, and
    /// the checkpoint saved just before the spike is the one worth rolling
    /// back to: with rollbacks left, the decision waits for the next catalog
    /// report (at most `ROLLBACK_CATALOG_WAIT_MS`) while training goes on.
    pub(crate) fn on_loss_spike(&mut self, now: Millis, name: &str, spike: LossSpike) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        if job.detect.pending_rollback.is_some() {
            // The same spike, still going: the first one's rollback is due.
            return;
        }
        if job.record.rollbacks < job.record.spec.max_rollbacks() {
            let at = now + ROLLBACK_CATALOG_WAIT_MS;
            job.detect.pending_rollback = Some((spike, at));
            self.schedule_job_check(at);
            return;
        }
        self.roll_back(now, name, spike);
    }

    /// Whether a pending loss-spike rollback is due: once the catalog is
    /// current (a report arrived after the spike) or the wait is over.
    pub(crate) fn judge_rollback(&self, now: Millis, job: &Job) -> RollbackCheck {
        match &job.detect.pending_rollback {
            None => RollbackCheck::NotPending,
            Some((spike, at)) if job.detect.rollback_catalog_fresh || now >= *at => {
                RollbackCheck::Due(spike.clone())
            }
            Some((_, at)) => RollbackCheck::WaitUntil(*at),
        }
    }

    /// Where a loss spike takes the job: the newest complete checkpoint
    /// from before it, within the rollback budget; or why nowhere.
    pub(crate) fn judge_spike(&self, job: &Job, spike: &LossSpike) -> Rollback {
        let spec = &job.record.spec;
        let what = format!(
            "loss spike from step {}: {:.4} > {} × moving average {:.4} for {} steps",
            spike.step,
            spike.loss,
            spec.loss_spike_factor(),
            spike.average,
            spec.loss_spike_steps()
        );
        let target = job
            .catalog
            .iter()
            .chain(job.record.checkpoint.iter())
            .filter(|c| c.step < spike.step)
            .max_by_key(|c| c.step)
            .cloned();
        let budget = spec.max_rollbacks();
        match target {
            _ if job.record.rollbacks >= budget => Rollback {
                reason: format!("{what}; not rolled back: rollback budget of {budget} used up"),
                target: None,
            },
            None => Rollback {
                reason: format!(
                    "{what}; not rolled back: no complete checkpoint from before the spike"
                ),
                target: None,
            },
            Some(t) => Rollback {
                reason: format!(
                    "{what}; rolling back to checkpoint step {} ({}) with SUP_SEED={} and SUP_LR_SCALE={} (rollback {} of {budget})",
                    t.step,
                    t.path,
                    job.record.rollbacks + 1,
                    spec.lr_scale_after(job.record.rollbacks + 1),
                    job.record.rollbacks + 1
                ),
                target: Some(t),
            },
        }
    }

    /// Acts on a loss spike: an event either way, and with a target a
    /// counted restart from it (a diverging job that keeps rolling back
    /// must still end).
    pub(crate) fn roll_back(&mut self, now: Millis, name: &str, spike: LossSpike) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.detect.pending_rollback = None;
        job.detect.rollback_catalog_fresh = false;
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let Rollback { reason, target } = self.judge_spike(job, &spike);
        let kind = if target.is_some() {
            EventKind::JobRolledBack
        } else {
            EventKind::JobLossSpike
        };
        self.record_job_event(now, kind, None, Some(name), reason.clone());
        let Some(target) = target else {
            return;
        };
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.record.rollbacks += 1;
        job.record.rollback_mark = Some(target.step);
        job.record.checkpoint = Some(target);
        self.restart_job(now, name, reason, true);
    }

    /// Hung: no step advance within the adaptive bound (or every GPU of the
    /// job idle), with the node to blame if its ranks lag behind.
    pub(crate) fn judge_hang(&self, now: Millis, job: &Job) -> HangCheck {
        let cfg = &self.config.detect;
        if job.record.state != JobState::Running {
            return HangCheck::NotHung { recheck_at: None };
        }
        let reason = match job.detect.hang.check(now, cfg) {
            Some(reason) => reason,
            None => match self.idle_gpu_hang(now, job) {
                Ok(reason) => reason,
                Err(idle_deadline) => {
                    let step_deadline = job.detect.hang.deadline(cfg);
                    return HangCheck::NotHung {
                        recheck_at: step_deadline.into_iter().chain(idle_deadline).min(),
                    };
                }
            },
        };
        // Silence from a node supd cannot hear is the lost-node logic's to
        // judge (with its grace and the partition guard): no progress may
        // simply not have reached us. Look again later.
        let unheard = job.record.nodes.iter().find(|id| {
            self.nodes
                .get(*id)
                .is_none_or(|n| n.unreachable || !n.connected())
        });
        if unheard.is_some() {
            return HangCheck::NotHung {
                recheck_at: Some(now + cfg.hang_floor_ms.max(1_000)),
            };
        }
        let hardware: BTreeMap<String, String> = job
            .record
            .nodes
            .iter()
            .filter_map(|n| Some((n.clone(), self.hardware_evidence(n)?)))
            .collect();
        let attribution = detect::attribute_hang(
            &job.record.nodes,
            &job.detect.node_min_step,
            job.step,
            &hardware,
        );
        let limit = cfg.hang_cordon_after;
        let blamed = attribution.node.map(|node| {
            let count = job.record.hang_blame.get(&node).copied().unwrap_or(0) + 1;
            let consequence = if limit == 0 {
                BlameConsequence::Noted
            } else if count >= limit {
                BlameConsequence::Cordon
            } else if count * 2 >= limit {
                BlameConsequence::Suspect
            } else {
                BlameConsequence::Noted
            };
            Blame {
                node,
                count,
                consequence,
            }
        });
        HangCheck::Hung(Hang {
            generation: job.record.generation,
            reason,
            attribution: attribution.why,
            blamed,
        })
    }

    /// Acts on a hang: records it (and the blame), makes the blamed node
    /// suspect or cordons it at the limit, and restarts from the newest
    /// checkpoint (counted).
    pub(crate) fn act_on_hang(&mut self, now: Millis, name: &str, hang: Hang) {
        let limit = self.config.detect.hang_cordon_after;
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.detect.hung_generation = Some(hang.generation);
        let why = &hang.attribution;
        let blame = match &hang.blamed {
            None => format!("{why}, nothing cordoned"),
            Some(b) => {
                job.record.hang_blame.insert(b.node.clone(), b.count);
                let count = b.count;
                if limit == 0 {
                    format!(
                        "{why} ({count} hang(s) of this job blamed on it; nothing cordoned: detect.hang_cordon_after = 0)"
                    )
                } else {
                    let state = match b.consequence {
                        BlameConsequence::Cordon => "cordoning it",
                        BlameConsequence::Suspect => "suspect, nothing cordoned yet",
                        BlameConsequence::Noted => "noted, nothing cordoned",
                    };
                    format!(
                        "{why} ({count} of {limit} hang(s) of this job blamed on it before a cordon: {state})"
                    )
                }
            }
        };
        self.record_job_event(
            now,
            EventKind::JobHung,
            None,
            Some(name),
            format!(
                "generation {} {}; {blame}; restarting from the newest checkpoint",
                hang.generation, hang.reason
            ),
        );
        match hang.blamed {
            Some(Blame {
                node,
                count,
                consequence: BlameConsequence::Suspect,
            }) => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.record.suspect = Some(format!(
                        "{count} hang(s) of job '{name}' blamed on it (cordoned at {limit})"
                    ));
                    self.persist_node(&node);
                }
            }
            Some(Blame {
                node,
                count,
                consequence: BlameConsequence::Cordon,
            }) => self.auto_cordon(
                now,
                &node,
                format!("{count} hangs of job '{name}' blamed on this node (limit {limit})"),
            ),
            _ => {}
        }
        self.restart_job(now, name, hang.reason, true);
    }

    /// An operator cleared the node: hangs blamed on it start counting
    /// again from zero.
    pub(crate) fn forget_hang_blame(&mut self, node_id: &str) {
        let names: Vec<String> = self
            .jobs
            .iter_mut()
            .filter_map(|(name, j)| j.record.hang_blame.remove(node_id).map(|_| name.clone()))
            .collect();
        for name in names {
            self.persist_job(&name);
        }
    }

    /// Whether a GPU of the node shows a finding that slows it down (see
    /// [`GpuCauseKind::slows_down`]): what shortens a straggler's
    /// confirmation window. Asked on every progress report, so no text.
    ///
    /// [`GpuCauseKind::slows_down`]: crate::GpuCauseKind::slows_down
    pub(crate) fn has_slowdown_signal(&self, node_id: &str) -> bool {
        self.nodes.get(node_id).is_some_and(|n| {
            n.record.gpus.iter().any(|g| {
                g.health != crate::GpuHealth::Ok && g.causes.iter().any(|c| c.slows_down())
            })
        })
    }

    /// The GPUs behind [`Engine::has_slowdown_signal`], with the kinds of
    /// finding that count and the verdict's reason, e.g. "GPU 3 degraded
    /// (throttling): clocks throttled (hw_slowdown): check cooling and
    /// power".
    pub(crate) fn slowdown_evidence(&self, node_id: &str) -> Option<String> {
        let node = self.nodes.get(node_id)?;
        let found: Vec<String> = node
            .record
            .gpus
            .iter()
            .filter(|g| g.health != crate::GpuHealth::Ok)
            .filter_map(|g| {
                let kinds: Vec<&str> = g
                    .causes
                    .iter()
                    .filter(|c| c.slows_down())
                    .map(|c| c.as_str())
                    .collect();
                if kinds.is_empty() {
                    return None;
                }
                let health = format!("{:?}", g.health).to_lowercase();
                Some(format!(
                    "GPU {} {health} ({}): {}",
                    g.index,
                    kinds.join(", "),
                    g.health_reason
                ))
            })
            .collect();
        (!found.is_empty()).then(|| found.join("; "))
    }

    /// Hardware signals on a node (GPUs not healthy, with their reasons),
    /// if any: what blames it for a hang, and what a straggler event lists
    /// when none of it is a slowdown.
    pub(crate) fn hardware_evidence(&self, node_id: &str) -> Option<String> {
        let node = self.nodes.get(node_id)?;
        let bad: Vec<String> = node
            .record
            .gpus
            .iter()
            .filter(|g| g.health != crate::GpuHealth::Ok)
            .map(|g| {
                let health = format!("{:?}", g.health).to_lowercase();
                format!("GPU {} {health}: {}", g.index, g.health_reason)
            })
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    }
}

/// The kinds of GPU finding that corroborate a straggler, for its event.
const SLOWDOWN_SIGNALS: &str = "throttling, PCIe link downgrade, NVLink, ECC pressure";

/// Whether a loss-spike rollback waits, is due, or there is none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RollbackCheck {
    NotPending,
    WaitUntil(Millis),
    Due(LossSpike),
}

/// A loss spike's consequence: where to roll back to (none: only recorded),
/// and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rollback {
    pub reason: String,
    pub target: Option<CheckpointRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HangCheck {
    NotHung { recheck_at: Option<Millis> },
    Hung(Hang),
}

/// A hung generation, judged: what the detector saw, and whom to blame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hang {
    pub generation: u64,
    /// "no step advance for ..." (or all GPUs idle), with the bound.
    pub reason: String,
    /// Why a node is (or none is) to blame.
    pub attribution: String,
    pub blamed: Option<Blame>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Blame {
    pub node: String,
    /// Hangs of this job blamed on the node, this one included.
    pub count: u32,
    pub consequence: BlameConsequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlameConsequence {
    Noted,
    Suspect,
    Cordon,
}

/// A straggler's remedy, judged: what to do, and the event's reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StragglerRemedy {
    pub action: StragglerAction,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StragglerAction {
    /// Report only (the policy, or no spare to swap in).
    Keep,
    ReplaceNow,
    /// Swap right after the next checkpoint, when little work is lost.
    ReplaceAtCheckpoint,
}
