//! The zero-utilization hang signal: a job whose ranks are alive but whose
//! GPUs all report 0% utilization, with no step advance, for the hang
//! bound is hung, also when it reports no progress at all (a script
//! without the progress intake or a `progress_regex`: the step-based
//! detector never arms for it). Only GPUs whose probe reports utilization
//! count: one GPU without the reading, or above 0%, and there is no signal.
//!
//! Per GPU, supd keeps since when it reports 0% (in [`super::Node`], updated
//! with each telemetry report); the job's GPUs are idle since the latest of
//! those. The bound and the phase allowance are the step detector's.

use crate::jobs::Job;
use crate::records::JobState;
use crate::{Engine, Millis};

impl Engine {
    /// Since when every GPU the job's ranks use has reported 0%
    /// utilization, if every one of them does.
    pub(crate) fn job_gpus_idle_since(&self, job: &Job) -> Option<Millis> {
        let mut since: Option<Millis> = None;
        let mut gpus = 0usize;
        for node_id in &job.record.nodes {
            let node = self.nodes.get(node_id)?;
            for index in self.gpu_indices_for(node_id, job.record.spec.gpus_per_node) {
                let at = *node.gpu_idle_since.get(&index)?;
                since = Some(since.map_or(at, |s| s.max(at)));
                gpus += 1;
            }
        }
        since.filter(|_| gpus > 0)
    }

    /// For a running job: a hung reason when its GPUs have been idle with
    /// no step advance for the hang bound, else when that would be (if
    /// they are idle now).
    pub(crate) fn idle_gpu_hang(&self, now: Millis, job: &Job) -> Result<String, Option<Millis>> {
        let cfg = &self.config.detect;
        if !cfg.hang_enabled || job.record.state != JobState::Running {
            return Err(None);
        }
        let Some(idle) = self.job_gpus_idle_since(job) else {
            return Err(None);
        };
        // Idle before the ranks ran, or before the last step advance, is
        // not idle with a stuck job: count from the later of them.
        let from = [job.detect.running_since, job.detect.hang.last_advance_at()]
            .into_iter()
            .flatten()
            .fold(idle, Millis::max);
        let (bound, why) = job.detect.hang.bound(cfg);
        if now < from + bound {
            return Err(Some(from + bound));
        }
        let phase = match job.detect.hang.phase() {
            "" => "train",
            p => p,
        };
        let gpus = job.record.nodes.len() * job.record.spec.gpus_per_node as usize;
        Ok(format!(
            "hung: all {gpus} GPU(s) of the job at 0% utilization with no step advance for {} ms in phase {phase} \
             (ranks alive; last step {}; bound {bound} ms = {why})",
            now - from,
            job.step.map_or("none".to_owned(), |s| s.to_string()),
        ))
    }
}
