//! Jobs: placement on nodes, generations, failure handling, elastic restart
//! (spare swap, shrink, grow back), the restart budget and the crash-loop
//! guard. Still the pure engine: no I/O, time is an argument.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::detect::{
    self, HangDetector, LossSpike, LossSpikeDetector, Straggler, StragglerDetector,
    StragglerPolicy, Throughput,
};
use crate::jobspec::{JobSpec, Priority};
use crate::messages::{
    Checkpoint, CheckpointCatalog, DesiredAssignment, JobAssignment, JobProgress, RankExited,
    RankStatus,
};
use crate::records::{CheckpointRef, JobRecord, JobState};
use crate::{Action, Change, Engine, EngineError, EventKind, Millis, NodeState, SessionId};

/// The detectors' state for a job; in memory only (a supd restart
/// re-learns step times within a window).
#[derive(Debug, Clone, Default)]
pub struct JobDetect {
    pub hang: HangDetector,
    pub stragglers: StragglerDetector,
    pub loss: LossSpikeDetector,
    pub throughput: Throughput,
    /// Latest phase of each node of the generation whose ranks are not in
    /// `train` (a node back in `train` is removed), and lowest rank step per
    /// node. Sparse, so the job's phase needs no scan of every node's entry
    /// on every report.
    node_phase: BTreeMap<String, String>,
    node_min_step: BTreeMap<String, u64>,
    /// A straggler to swap out right after the next checkpoint.
    pending_replace: Option<String>,
    /// A loss spike waiting for a current checkpoint catalog, and until when.
    pending_rollback: Option<(LossSpike, Millis)>,
    /// When a best-step advance was last persisted.
    best_step_persisted_at: Option<Millis>,
    /// The generation stopped as hung: its ranks' stop reports carry the
    /// post-mortem.
    hung_generation: Option<u64>,
    /// When the current generation started running (every rank launched).
    pub running_since: Option<Millis>,
    /// The job's tokens as each node reports them, for per-node tokens/s.
    node_throughput: BTreeMap<String, Throughput>,
}

/// A job as the engine sees it: the record plus what only holds for the
/// current generation while this supervisor runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub record: JobRecord,
    /// Nodes that reported every rank of the current generation launched.
    launched: BTreeSet<String>,
    /// (node, local rank) of ranks that exited 0 in the current generation.
    exited_ok: BTreeSet<(String, u32)>,
    /// Step of the current generation.
    pub step: Option<u64>,
    pub tokens: Option<u64>,
    pub loss: Option<f64>,
    last_progress_at: Option<Millis>,
    /// When the fault behind the current generation was reported.
    fault_at: Option<Millis>,
    /// The complete checkpoints last reported, oldest first.
    pub catalog: Vec<CheckpointRef>,
    pub detect: JobDetect,
    /// `record.nodes` indexed: node id → node rank. Every report about a
    /// job checks membership, and a scan of a 2,048-node list per report
    /// is quadratic per restart. Kept in step by [`Job::set_nodes`].
    members: HashMap<String, usize>,
}

impl Job {
    pub(super) fn restored(record: JobRecord) -> Job {
        let members = index_nodes(&record.nodes);
        Job {
            record,
            launched: BTreeSet::new(),
            exited_ok: BTreeSet::new(),
            step: None,
            tokens: None,
            loss: None,
            last_progress_at: None,
            fault_at: None,
            catalog: Vec::new(),
            detect: JobDetect::default(),
            members,
        }
    }

    /// Replaces the nodes of the current generation (in node-rank order)
    /// and their index. Every change of `record.nodes` goes through here.
    fn set_nodes(&mut self, nodes: Vec<String>) {
        self.members = index_nodes(&nodes);
        self.record.nodes = nodes;
    }

    /// The node's rank in the current generation, if the job holds it
    /// (whatever the job's state). O(1).
    pub fn node_rank(&self, node_id: &str) -> Option<usize> {
        if self.members.len() == self.record.nodes.len() {
            // Checked against the list, so a stale index can never claim a
            // node the job does not hold.
            return self
                .members
                .get(node_id)
                .copied()
                .filter(|&r| self.record.nodes.get(r).is_some_and(|n| n == node_id));
        }
        // `record.nodes` was changed without `set_nodes`: the list is the
        // truth.
        self.record.nodes.iter().position(|n| n == node_id)
    }

    /// Whether the current generation runs on `node_id`.
    pub fn has_node(&self, node_id: &str) -> bool {
        self.node_rank(node_id).is_some()
    }

    pub fn world_size(&self) -> u32 {
        u32::try_from(self.record.nodes.len()).unwrap_or(u32::MAX) * self.record.spec.gpus_per_node
    }

    pub fn name(&self) -> &str {
        &self.record.spec.name
    }

    /// Tokens per second of the running generation, when measurable.
    pub fn tokens_per_s(&self) -> Option<f64> {
        if !self.record.state.is_active() {
            return None;
        }
        self.detect.throughput.tokens_per_s()
    }

    /// Tokens per second processed on `node`: its ranks' share of the
    /// global batch times the job's tokens/s, measured over the window from
    /// the node's own reports (a node whose reports stall shows it first).
    pub fn node_tokens_per_s(&self, node: &str) -> Option<f64> {
        if !self.record.state.is_active() {
            return None;
        }
        let world = self.world_size();
        if world == 0 || !self.has_node(node) {
            return None;
        }
        let share = f64::from(self.record.spec.gpus_per_node) / f64::from(world);
        Some(self.detect.node_throughput.get(node)?.tokens_per_s()? * share)
    }

    /// What the detectors know of each node of the job, in node-rank order.
    pub fn node_stats(&self) -> Vec<NodeStats> {
        self.record
            .nodes
            .iter()
            .map(|n| NodeStats {
                node: n.clone(),
                step_time_s: self.detect.stragglers.median_step_s(n),
                slowdown: self.detect.stragglers.slowdown(n),
                straggler: self.detect.stragglers.is_flagged(n),
                tokens_per_s: self.node_tokens_per_s(n),
            })
            .collect()
    }
}

/// One node of a job as the detectors see it (`supctl job describe`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStats {
    pub node: String,
    /// Median of its recent step times.
    pub step_time_s: Option<f64>,
    /// Its step time over the job's median.
    pub slowdown: Option<f64>,
    pub straggler: bool,
    pub tokens_per_s: Option<f64>,
}

/// Node id → first rank (a list has no duplicates; the first wins anyway,
/// as a scan would find it).
fn index_nodes(nodes: &[String]) -> HashMap<String, usize> {
    let mut index = HashMap::with_capacity(nodes.len());
    for (rank, n) in nodes.iter().enumerate() {
        index.entry(n.clone()).or_insert(rank);
    }
    index
}

/// Chosen nodes in node-rank order, and the (preempted job, node) pairs
/// that placement takes from preemptible jobs.
type Placement = (Vec<String>, Vec<(String, String)>);

impl Engine {
    /// MFU = 6·N·tokens/s ÷ (GPUs × peak FLOP/s): N from the spec's
    /// `model_params`, peak from `gpu_peak_flops` or the first node's GPU
    /// model; None when either is unknown.
    pub fn job_mfu(&self, job: &Job) -> Option<f64> {
        let params = job.record.spec.model_params?;
        let tps = job.tokens_per_s()?;
        let peak = job.record.spec.gpu_peak_flops.or_else(|| {
            let node = self.nodes.get(job.record.nodes.first()?)?;
            detect::peak_flops_for(&node.record.gpus.first()?.name)
        })?;
        detect::mfu(params, tps, job.world_size(), peak)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn job(&self, name: &str) -> Result<&Job, EngineError> {
        self.jobs
            .get(name)
            .ok_or_else(|| EngineError::UnknownJob(name.to_owned()))
    }

    /// The active job holding `node_id`, if any.
    pub fn job_of(&self, node_id: &str) -> Option<&Job> {
        self.jobs
            .values()
            .find(|j| j.record.state.is_active() && j.has_node(node_id))
    }

    /// The active job holding each node, with the node's rank in it (the
    /// first job in name order, as [`Engine::job_of`] finds it). Built once
    /// per pass: calling `job_of` per node scans every job's node list,
    /// which is quadratic at cluster scale.
    pub(super) fn holders(&self) -> HashMap<&str, (&Job, usize)> {
        let mut map = HashMap::new();
        for j in self.jobs.values().filter(|j| j.record.state.is_active()) {
            for (rank, n) in j.record.nodes.iter().enumerate() {
                map.entry(n.as_str()).or_insert((j, rank));
            }
        }
        map
    }

    /// Which node runs global rank `rank` of a job, and its local rank.
    pub fn rank_location(&self, job: &str, rank: u32) -> Result<(String, u32), EngineError> {
        let job = self.job(job)?;
        let per_node = job.record.spec.gpus_per_node;
        let node = job
            .record
            .nodes
            .get((rank / per_node) as usize)
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "job '{}' has no rank {rank} (world size {})",
                    job.name(),
                    job.world_size()
                ))
            })?;
        Ok((node.clone(), rank % per_node))
    }

    // -- operator inputs ----------------------------------------------------

    /// A job spec parsed at the edge; `spec_text` is what the client sent,
    /// kept for `supctl job describe`.
    pub fn submit_job(
        &mut self,
        now: Millis,
        spec: JobSpec,
        spec_text: &str,
        by: &str,
    ) -> Result<String, EngineError> {
        // The edge checked it; an engine that holds a job it cannot place
        // by its own rules would be wrong forever, so the rules are checked
        // here too (cheap, and the engine trusts no caller).
        spec.validate().map_err(EngineError::InvalidJobSpec)?;
        let by = if by.trim().is_empty() {
            "unknown"
        } else {
            by.trim()
        };
        if let Some(existing) = self.jobs.get(&spec.name) {
            if !existing.record.state.is_finished() {
                return Err(EngineError::DuplicateJob(spec.name));
            }
        }
        let name = spec.name.clone();
        let summary = format!(
            "submitted by {by}: {} node(s) (min {}) × {} GPU(s), {} priority, checkpoints in {} ({})",
            spec.nodes,
            spec.min_nodes(),
            spec.gpus_per_node,
            spec.priority.as_str(),
            spec.checkpoint_dir,
            spec.checkpoint_layout
        );
        let record = JobRecord {
            spec,
            spec_toml: spec_text.to_owned(),
            submitted_by: by.to_owned(),
            submitted_at: now,
            state: JobState::Pending,
            reason: "waiting to be placed".to_owned(),
            generation: 0,
            nodes: Vec::new(),
            restarts: 0,
            checkpoint: None,
            best_step: None,
            restart_mark: (None, None),
            fruitless_restarts: 0,
            rollbacks: 0,
            rollback_mark: None,
            avoid_nodes: Vec::new(),
            hang_blame: BTreeMap::new(),
            resume_from: None,
        };
        self.jobs.insert(name.clone(), Job::restored(record));
        self.record_job_event(now, EventKind::JobSubmitted, None, Some(&name), summary);
        self.persist_job(&name);
        self.reconcile(now);
        Ok(format!("job '{name}' submitted"))
    }

    pub fn stop_job(
        &mut self,
        now: Millis,
        name: &str,
        by: &str,
        reason: &str,
    ) -> Result<(bool, String), EngineError> {
        let job = self.job(name)?;
        if job.record.state.is_finished() {
            return Ok((
                false,
                format!("job '{name}' is already {}", job.record.state.as_str()),
            ));
        }
        let mut why = format!("stopped by {}", if by.is_empty() { "unknown" } else { by });
        if !reason.trim().is_empty() {
            why.push_str(&format!(": {}", reason.trim()));
        }
        self.finish_job(now, name, JobState::Stopped, why, EventKind::JobStopped);
        self.reconcile(now);
        Ok((true, format!("job '{name}' stopped")))
    }

    // -- agent reports ------------------------------------------------------

    /// Whether a report about `job` at `generation` from `node_id` on
    /// `session` belongs to the job's current generation. Anything else is
    /// from before a restart (or a replaced agent) and must be ignored.
    fn current_report(
        &self,
        node_id: &str,
        session: SessionId,
        job: &str,
        generation: u64,
    ) -> bool {
        let live = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.session == Some(session));
        live && self.jobs.get(job).is_some_and(|j| {
            j.record.state.is_active() && j.record.generation == generation && j.has_node(node_id)
        })
    }

    /// Returns false when the report was stale and ignored.
    pub fn rank_status(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        status: RankStatus,
    ) -> bool {
        if !self.current_report(node_id, session, &status.job, status.generation) {
            return false;
        }
        let name = status.job.clone();
        if !status.launch_error.is_empty() {
            self.restart_job(
                now,
                &name,
                format!(
                    "node {node_id} could not launch its ranks: {}",
                    status.launch_error
                ),
                true,
            );
            self.reconcile(now);
            return true;
        }
        if !status.launched {
            return true;
        }
        let Some(job) = self.jobs.get_mut(&name) else {
            return true;
        };
        job.launched.insert(node_id.to_owned());
        // `launched` only holds nodes of this generation: compare sizes
        // first so 2,048 reports do not each walk the whole node list.
        let all = job.launched.len() >= job.record.nodes.len()
            && job.record.nodes.iter().all(|n| job.launched.contains(n));
        if all && matches!(job.record.state, JobState::Starting | JobState::Recovering) {
            job.record.state = JobState::Running;
            job.detect.running_since = Some(now);
            // A job that has shown it reports progress and now says nothing
            // at all is stuck before its first step (a rendezvous that never
            // completes, a communicator that never forms).
            let reports_progress =
                job.record.best_step.is_some() || job.record.spec.progress_regex.is_some();
            let startup_deadline = (reports_progress && self.config.detect.hang_enabled)
                .then(|| {
                    job.detect.hang.arm_startup(now);
                    job.detect.hang.deadline(&self.config.detect)
                })
                .flatten();
            job.record.reason = String::new();
            let mut why = format!(
                "generation {} running on {} node(s), world size {}",
                job.record.generation,
                job.record.nodes.len(),
                job.world_size()
            );
            if let Some(at) = job.fault_at.take() {
                why.push_str(&format!(
                    "; every rank launched {} ms after the fault was reported",
                    now - at
                ));
            }
            self.record_job_event(now, EventKind::JobRunning, None, Some(&name), why);
            self.persist_job(&name);
            if let Some(at) = startup_deadline {
                self.schedule_job_check(at);
            }
        }
        true
    }

    pub fn rank_exited(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        exit: RankExited,
    ) -> bool {
        if exit.stopped_by_agent {
            self.hang_postmortem(now, node_id, session, &exit);
            return false;
        }
        if !self.current_report(node_id, session, &exit.job, exit.generation) {
            return false;
        }
        let name = exit.job.clone();
        let how = match (exit.exit_code, exit.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended".to_owned(),
        };
        let last_line = exit
            .log_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        let what = format!(
            "rank {} (node {node_id}, local rank {}) {how}{last_line}",
            exit.rank, exit.local_rank
        );
        self.record_job_event(
            now,
            EventKind::RankExited,
            Some(node_id),
            Some(&name),
            what.clone(),
        );
        if exit.exit_code == Some(0) {
            let Some(job) = self.jobs.get_mut(&name) else {
                return true;
            };
            job.exited_ok.insert((node_id.to_owned(), exit.local_rank));
            if job.exited_ok.len() as u64 >= u64::from(job.world_size()) {
                let why = format!(
                    "every rank of generation {} exited 0",
                    job.record.generation
                );
                self.finish_job(
                    now,
                    &name,
                    JobState::Succeeded,
                    why,
                    EventKind::JobSucceeded,
                );
            }
        } else {
            self.restart_job(now, &name, what, true);
        }
        self.reconcile(now);
        true
    }

    pub fn progress(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        progress: JobProgress,
    ) -> bool {
        if !self.current_report(node_id, session, &progress.job, progress.generation) {
            return false;
        }
        let cfg = self.config.detect.clone();
        let Some(job) = self.jobs.get_mut(&progress.job) else {
            return false;
        };
        let before = job.step;
        job.step = Some(job.step.map_or(progress.step, |s| s.max(progress.step)));
        job.tokens = progress.tokens.or(job.tokens);
        job.loss = progress.loss.or(job.loss);
        job.last_progress_at = Some(now);
        let step = job.step.unwrap_or(progress.step);

        let d = &mut job.detect;
        let node_phase = if progress.phase.is_empty() {
            "train"
        } else {
            progress.phase.as_str()
        };
        if node_phase == "train" {
            d.node_phase.remove(node_id);
        } else if d.node_phase.get(node_id).map(String::as_str) != Some(node_phase) {
            d.node_phase
                .insert(node_id.to_owned(), node_phase.to_owned());
        }
        if let Some(min) = progress.min_step {
            match d.node_min_step.get_mut(node_id) {
                Some(m) => *m = min,
                None => {
                    d.node_min_step.insert(node_id.to_owned(), min);
                }
            }
        }
        // One node saving a checkpoint holds every rank in the collective
        // that follows: the job is in the slowest phase any node is in (the
        // first one not in `train`, in node order).
        let job_phase = d.node_phase.values().next().map_or("train", String::as_str);
        let deadline = d
            .hang
            .observe(now, step, job_phase)
            .then(|| d.hang.deadline(&cfg))
            .flatten();
        if let Some(tokens) = job.tokens {
            d.throughput.observe(now, tokens, cfg.throughput_window_ms);
        }
        if let Some(tokens) = progress.tokens {
            match d.node_throughput.get_mut(node_id) {
                Some(t) => t.observe(now, tokens, cfg.throughput_window_ms),
                None => {
                    let mut t = Throughput::default();
                    t.observe(now, tokens, cfg.throughput_window_ms);
                    d.node_throughput.insert(node_id.to_owned(), t);
                }
            }
        }
        let straggler = match progress.step_time_s {
            Some(t) if node_phase == "train" => {
                d.stragglers.observe(&cfg, node_id, progress.step, t)
            }
            _ => None,
        };
        let spec = &job.record.spec;
        let spike = match (progress.loss, spec.loss_spike_rollback) {
            (Some(loss), true) if before.is_none_or(|b| step > b) => d.loss.observe(
                step,
                loss,
                spec.loss_spike_factor(),
                spec.loss_spike_steps(),
            ),
            _ => None,
        };
        let name = progress.job.clone();
        if job.record.best_step.is_none_or(|b| progress.step > b) {
            job.record.best_step = Some(progress.step);
            // Agents report up to 10× a second; the store needs the best
            // step only for the crash-loop guard, so once a second is plenty
            // (any other change of the job persists it too).
            if job
                .detect
                .best_step_persisted_at
                .is_none_or(|at| now - at >= BEST_STEP_PERSIST_MS)
            {
                job.detect.best_step_persisted_at = Some(now);
                self.persist_job(&name);
            }
        }
        if let Some(at) = deadline {
            self.schedule_job_check(at);
        }
        if let Some(s) = straggler {
            self.on_straggler(now, &name, s);
        }
        if let Some(s) = spike {
            self.on_loss_spike(now, &name, s);
        }
        true
    }

    /// A node flagged slow: an event naming it, the factor and the
    /// evidence (hardware signals when the node has any), then the policy.
    fn on_straggler(&mut self, now: Millis, name: &str, s: Straggler) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let policy = job
            .record
            .spec
            .straggler_policy
            .unwrap_or(self.config.detect.straggler_policy);
        let corroboration = match self.hardware_evidence(&s.node) {
            Some(evidence) => format!("corroborated by {evidence}"),
            None => "no hardware signal (throttling, PCIe) on the node".to_owned(),
        };
        let spare = self.has_spare_for(name);
        let action = match policy {
            StragglerPolicy::Report => "reported only (policy report)".to_owned(),
            StragglerPolicy::Replace if spare => "replacing it with a spare now".to_owned(),
            StragglerPolicy::ReplaceAtCheckpoint if spare => {
                "replacing it with a spare right after the next checkpoint".to_owned()
            }
            _ => format!(
                "kept: no spare to replace it with (policy {})",
                policy.as_str()
            ),
        };
        self.record_job_event(
            now,
            EventKind::JobStraggler,
            Some(&s.node),
            Some(name),
            format!(
                "node {} is a straggler: {:.2}× slower than the job's other nodes; {}; {corroboration}; {action}",
                s.node, s.slowdown, s.evidence
            ),
        );
        if !spare {
            return;
        }
        match policy {
            StragglerPolicy::Report => {}
            StragglerPolicy::Replace => self.replace_straggler(now, name, &s.node),
            StragglerPolicy::ReplaceAtCheckpoint => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.detect.pending_replace = Some(s.node.clone());
                }
            }
        }
    }

    /// Swaps a slow node for a spare through the restart path; the
    /// cluster's doing, so it does not count against the job's budget.
    fn replace_straggler(&mut self, now: Millis, name: &str, node: &str) {
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
        self.reconcile(now);
    }

    /// Whether a healthy free node could take a straggler's place.
    fn has_spare_for(&self, name: &str) -> bool {
        let Some(job) = self.jobs.get(name) else {
            return false;
        };
        let gpus = job.record.spec.gpus_per_node as usize;
        self.nodes.values().any(|n| {
            n.state() == NodeState::Ready
                && n.connected()
                && n.record.gpus.len() >= gpus
                && !job.record.avoid_nodes.contains(&n.record.id)
                && self.job_of(&n.record.id).is_none()
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
    fn on_loss_spike(&mut self, now: Millis, name: &str, spike: LossSpike) {
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

    /// Runs a pending rollback once the catalog is current or the wait is over.
    fn check_pending_rollback(&mut self, now: Millis, name: &str, catalog_fresh: bool) -> bool {
        let Some(job) = self.jobs.get_mut(name) else {
            return false;
        };
        match job.detect.pending_rollback {
            Some((_, at)) if catalog_fresh || now >= at => {}
            Some((_, at)) => {
                self.schedule_job_check(at);
                return false;
            }
            None => return false,
        }
        let Some((spike, _)) = job.detect.pending_rollback.take() else {
            return false;
        };
        if !job.record.state.is_active() {
            return false;
        }
        self.roll_back(now, name, spike);
        true
    }

    fn roll_back(&mut self, now: Millis, name: &str, spike: LossSpike) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
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
        let (event, target) = match target {
            _ if job.record.rollbacks >= budget => (
                format!("{what}; not rolled back: rollback budget of {budget} used up"),
                None,
            ),
            None => (
                format!("{what}; not rolled back: no complete checkpoint from before the spike"),
                None,
            ),
            Some(t) => (
                format!(
                    "{what}; rolling back to checkpoint step {} ({}) with SUP_SEED={} and SUP_LR_SCALE={} (rollback {} of {budget})",
                    t.step,
                    t.path,
                    job.record.rollbacks + 1,
                    spec.lr_scale_after(job.record.rollbacks + 1),
                    job.record.rollbacks + 1
                ),
                Some(t),
            ),
        };
        let kind = if target.is_some() {
            EventKind::JobRolledBack
        } else {
            EventKind::JobLossSpike
        };
        self.record_job_event(now, kind, None, Some(name), event.clone());
        let Some(target) = target else {
            return;
        };
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.record.rollbacks += 1;
        job.record.rollback_mark = Some(target.step);
        job.record.checkpoint = Some(target);
        // Counted: a diverging job that keeps rolling back must still end.
        self.restart_job(now, name, event, true);
        self.reconcile(now);
    }

    /// Hung: no step advance within the adaptive bound. Records the hang
    /// (blaming nodes whose ranks lag behind, if any), cordons a node that
    /// hangs jobs again and again, and restarts from the newest checkpoint.
    fn check_hang(&mut self, now: Millis, name: &str) -> bool {
        let cfg = &self.config.detect;
        let Some(job) = self.jobs.get(name) else {
            return false;
        };
        if job.record.state != JobState::Running {
            return false;
        }
        let reason = match job.detect.hang.check(now, cfg) {
            Some(reason) => reason,
            None => match self.idle_gpu_hang(now, job) {
                Ok(reason) => reason,
                Err(idle_deadline) => {
                    let step_deadline = job.detect.hang.deadline(cfg);
                    if let Some(at) = step_deadline.into_iter().chain(idle_deadline).min() {
                        self.schedule_job_check(at);
                    }
                    return false;
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
            let retry = now + cfg.hang_floor_ms.max(1_000);
            self.schedule_job_check(retry);
            return false;
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
        let generation = job.record.generation;
        let mut cordon = Vec::new();
        let mut suspect = None;
        let Some(job) = self.jobs.get_mut(name) else {
            return false;
        };
        job.detect.hung_generation = Some(generation);
        let blame = match &attribution.node {
            None => format!("{}, nothing cordoned", attribution.why),
            Some(n) => {
                let count = job.record.hang_blame.entry(n.clone()).or_insert(0);
                *count += 1;
                if limit == 0 {
                    format!(
                        "{} ({count} hang(s) of this job blamed on it; nothing cordoned: detect.hang_cordon_after = 0)",
                        attribution.why
                    )
                } else {
                    let state = if *count >= limit {
                        cordon.push((n.clone(), *count));
                        "cordoning it"
                    } else if *count * 2 >= limit {
                        suspect = Some((n.clone(), *count));
                        "suspect, nothing cordoned yet"
                    } else {
                        "noted, nothing cordoned"
                    };
                    format!(
                        "{} ({count} of {limit} hang(s) of this job blamed on it before a cordon: {state})",
                        attribution.why
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
                "generation {generation} {reason}; {blame}; restarting from the newest checkpoint"
            ),
        );
        if let Some((node, count)) = suspect {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.record.suspect = Some(format!(
                    "{count} hang(s) of job '{name}' blamed on it (cordoned at {limit})"
                ));
                self.persist_node(&node);
            }
        }
        for (node, count) in cordon {
            self.auto_cordon(
                now,
                &node,
                format!("{count} hangs of job '{name}' blamed on this node (limit {limit})"),
            );
        }
        self.restart_job(now, name, reason, true);
        true
    }

    /// An operator cleared the node: hangs blamed on it start counting
    /// again from zero.
    pub(super) fn forget_hang_blame(&mut self, node_id: &str) {
        let names: Vec<String> = self
            .jobs
            .iter_mut()
            .filter_map(|(name, j)| j.record.hang_blame.remove(node_id).map(|_| name.clone()))
            .collect();
        for name in names {
            self.persist_job(&name);
        }
    }

    /// Hardware signals on a node (GPUs not healthy, with their reasons),
    /// if any: what corroborates calling it a straggler or blaming it for a
    /// hang.
    fn hardware_evidence(&self, node_id: &str) -> Option<String> {
        let node = self.nodes.get(node_id)?;
        let bad: Vec<String> = node
            .record
            .gpus
            .iter()
            .filter(|g| g.health != super::GpuHealth::Ok)
            .map(|g| {
                let health = format!("{:?}", g.health).to_lowercase();
                format!("GPU {} {health}: {}", g.index, g.health_reason)
            })
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    }

    /// The last log lines of each rank stopped because its generation hung.
    fn hang_postmortem(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        exit: &RankExited,
    ) {
        let live = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.session == Some(session));
        let hung = self
            .jobs
            .get(&exit.job)
            .is_some_and(|j| j.detect.hung_generation == Some(exit.generation));
        if !live || !hung {
            return;
        }
        let lines: Vec<&str> = exit
            .log_tail
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(POSTMORTEM_LINES)..].join(" | ");
        let stacks = if exit.stack_dump.trim().is_empty() {
            String::new()
        } else {
            let dump: Vec<&str> = exit
                .stack_dump
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let mut dump = dump.join(" | ");
            if dump.len() > POSTMORTEM_STACK_BYTES {
                let mut end = POSTMORTEM_STACK_BYTES;
                while !dump.is_char_boundary(end) {
                    end -= 1;
                }
                dump.truncate(end);
                dump.push_str(" …");
            }
            format!("; stacks: {dump}")
        };
        self.record_job_event(
            now,
            EventKind::JobHangPostmortem,
            Some(node_id),
            Some(&exit.job),
            format!(
                "generation {} rank {} (local rank {}) before it was stopped: {}",
                exit.generation,
                exit.rank,
                exit.local_rank,
                if tail.is_empty() {
                    "(empty log)"
                } else {
                    &tail
                }
            ) + &stacks,
        );
    }

    /// A catalog of complete checkpoints from any node of the job (the
    /// directory is shared, any of them sees the truth).
    pub fn checkpoints(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        catalog: CheckpointCatalog,
    ) -> bool {
        let live = self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.session == Some(session));
        let Some(job) = self.jobs.get_mut(&catalog.job) else {
            return false;
        };
        if !live || !job.has_node(node_id) {
            return false;
        }
        job.catalog = catalog
            .checkpoints
            .iter()
            .map(|c| CheckpointRef {
                step: c.step,
                path: c.path.clone(),
            })
            .collect();
        job.catalog.sort_by_key(|c| c.step);
        let name = catalog.job.clone();
        if self.check_pending_rollback(now, &name, true) {
            return true;
        }
        let Some(job) = self.jobs.get_mut(&catalog.job) else {
            return false;
        };
        // After a rollback the directory still holds the abandoned
        // timeline's newer checkpoints under the same names: one counts
        // again only once this generation stepped past it (and so rewrote it).
        let mark = job.record.rollback_mark;
        let current = job.step;
        let Some(newest) = job
            .catalog
            .iter()
            .rev()
            .find(|c| mark.is_none_or(|m| c.step <= m || current.is_some_and(|s| s > c.step)))
            .cloned()
        else {
            return true;
        };
        if job
            .record
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.step >= newest.step)
        {
            return true;
        }
        job.record.checkpoint = Some(newest.clone());
        if job.record.rollback_mark.is_some_and(|m| newest.step > m) {
            job.record.rollback_mark = None;
        }
        let pending_replace = job.detect.pending_replace.take();
        self.record_job_event(
            now,
            EventKind::JobCheckpoint,
            None,
            Some(&name),
            format!(
                "newest complete checkpoint: step {} ({})",
                newest.step, newest.path
            ),
        );
        self.persist_job(&name);
        if let Some(node) = pending_replace {
            if self.has_spare_for(&name) {
                self.replace_straggler(now, &name, &node);
                return true;
            }
        }
        self.maybe_grow(now, &name, newest.step);
        self.reconcile(now);
        true
    }

    // -- decisions ----------------------------------------------------------

    /// Right after a checkpoint little work is lost by a restart: a shrunk
    /// job takes back capacity that returned.
    fn maybe_grow(&mut self, now: Millis, name: &str, step: u64) {
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

    /// Why an active job's current node set can no longer run, if it can't.
    fn job_failure(&mut self, now: Millis, name: &str) -> Option<String> {
        let job = self.jobs.get(name)?;
        if !job.record.state.is_active() {
            return None;
        }
        let mut wake: Option<Millis> = None;
        let mut failure = None;
        for id in &job.record.nodes {
            let Some(node) = self.nodes.get(id) else {
                failure = Some(format!("node {id} is gone from the registry"));
                break;
            };
            if let Some(c) = &node.record.cordon {
                failure = Some(format!("node {id} cordoned by {}: {}", c.by, c.reason));
                break;
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
                failure = Some(format!(
                    "node {id} lost: unreachable for {}",
                    super::format_ms(silent + self.config.unreachable_after_ms)
                ));
                break;
            }
            if stalled && silent >= self.config.stall_confirm_ms {
                failure = Some(format!(
                    "node {id} lost: unreachable and the job has made no progress since"
                ));
                break;
            }
            let next = if stalled {
                since + self.config.stall_confirm_ms
            } else {
                since + self.config.lost_node_grace_ms
            };
            wake = Some(wake.map_or(next, |w: Millis| w.min(next)));
        }
        if failure.is_none() {
            if let Some(at) = wake {
                self.schedule_job_check(at);
            }
        }
        failure
    }

    /// Stops every rank (generation bump) and starts the job again on the
    /// nodes that can run it, from the newest verified checkpoint.
    /// `counts`: whether this restart is the job's failure (budget, crash
    /// loop) or the cluster's doing (preemption, growing back).
    pub(super) fn restart_job(&mut self, now: Millis, name: &str, reason: String, counts: bool) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        if counts {
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

    /// Places the job and sends its new generation, or parks it as pending.
    /// `failure`: the reason for a restart; None for a first start.
    fn launch(&mut self, now: Millis, name: &str, failure: Option<String>) {
        let placement = self.place(name);
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let spec = job.record.spec.clone();
        let previous = job.record.nodes.clone();
        let Some((nodes, preempted)) = placement else {
            let available = self.placeable_count(name);
            let why = format!(
                "waiting for capacity: needs at least {} node(s) with {} GPU(s) each{}, {} available{}",
                spec.min_nodes(),
                spec.gpus_per_node,
                if spec.world_size_multiple > 1 {
                    format!(" and a world size that is a multiple of {}", spec.world_size_multiple)
                } else {
                    String::new()
                },
                available,
                failure.as_deref().map(|f| format!("; after: {f}")).unwrap_or_default()
            );
            let had_nodes = !previous.is_empty();
            let changed = job.record.state != JobState::Pending || job.record.reason != why;
            if had_nodes {
                self.last_generation += 1;
            }
            if let Some(job) = self.jobs.get_mut(name) {
                job.record.state = JobState::Pending;
                job.set_nodes(Vec::new());
                job.record.reason = why.clone();
            }
            if changed {
                self.record_job_event(now, EventKind::JobPending, None, Some(name), why);
                self.persist_job(name);
            }
            return;
        };

        self.last_generation += 1;
        let generation = self.last_generation;
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        let first = failure.is_none() && job.record.generation == 0;
        job.record.generation = generation;
        job.set_nodes(nodes.clone());
        job.record.resume_from = Some(job.record.checkpoint.clone());
        job.record.state = if first {
            JobState::Starting
        } else {
            JobState::Recovering
        };
        job.launched.clear();
        job.exited_ok.clear();
        job.step = None;
        job.last_progress_at = None;
        job.fault_at = Some(now);
        job.detect.hang.reset();
        job.detect.loss.reset();
        job.detect.throughput.reset();
        job.detect.node_throughput.clear();
        job.detect.stragglers.retain(&nodes);
        job.detect.node_phase.clear();
        job.detect.node_min_step.clear();
        let mut why = match &failure {
            Some(f) => f.clone(),
            None if job.record.restarts == 0 && previous.is_empty() => "first start".to_owned(),
            None => "capacity available".to_owned(),
        };
        why.push_str(&format!(
            "; generation {generation} on {} node(s), world size {}",
            nodes.len(),
            job.world_size()
        ));
        let gone: Vec<&String> = previous.iter().filter(|n| !nodes.contains(n)).collect();
        let added: Vec<&String> = nodes.iter().filter(|n| !previous.contains(n)).collect();
        match (gone.is_empty(), added.is_empty()) {
            (false, false) => {
                why.push_str(&format!("; replaced {} with {}", join(&gone), join(&added)))
            }
            (false, true) => why.push_str(&format!("; without {}", join(&gone))),
            (true, false) if !previous.is_empty() => {
                why.push_str(&format!("; adding {}", join(&added)))
            }
            _ => {}
        }
        if nodes.len() < previous.len() {
            why.push_str(&format!(
                "; shrunk from {} to {} node(s)",
                previous.len(),
                nodes.len()
            ));
        } else if !previous.is_empty() && nodes.len() > previous.len() {
            why.push_str(&format!(
                "; grown from {} to {} node(s)",
                previous.len(),
                nodes.len()
            ));
        }
        match &job.record.checkpoint {
            Some(c) => why.push_str(&format!("; resuming from step {} ({})", c.step, c.path)),
            None => why.push_str("; no checkpoint yet, starting from scratch"),
        }
        job.record.reason = if first { String::new() } else { why.clone() };
        let kind = if first {
            EventKind::JobStarted
        } else {
            EventKind::JobRestarted
        };
        self.record_job_event(now, kind, None, Some(name), why);
        self.persist_job(name);

        // The preempted jobs restart after this job holds its nodes, so
        // their placement cannot pick those nodes again.
        for (victim, node) in &preempted {
            self.record_job_event(
                now,
                EventKind::JobPreempted,
                Some(node),
                Some(victim),
                format!(
                    "node {node} taken by job '{name}' ({} priority)",
                    spec.priority.as_str()
                ),
            );
            self.restart_job(
                now,
                victim,
                format!("preempted: node {node} is needed by job '{name}'"),
                false,
            );
        }
    }

    /// Nodes this job could run on: its current healthy nodes first (stable
    /// ranks), then free healthy nodes, then nodes of preemptible jobs (for
    /// normal-priority jobs only). Returns the chosen nodes and the
    /// (job, node) pairs it would preempt, or None when no valid world size
    /// fits.
    fn place(&self, name: &str) -> Option<Placement> {
        let job = self.jobs.get(name)?;
        let spec = &job.record.spec;
        let fits = |id: &String, allow_suspect: bool| {
            !job.record.avoid_nodes.contains(id)
                && self.nodes.get(id).is_some_and(|n| {
                    let state = n.state();
                    let healthy =
                        state == NodeState::Ready || (allow_suspect && state == NodeState::Suspect);
                    healthy && n.connected() && n.record.gpus.len() >= spec.gpus_per_node as usize
                })
        };
        // How many active jobs hold each node, and the first of them
        // (what `job_of` returns), counted once instead of per node.
        let mut holding: HashMap<&str, (usize, &Job)> = HashMap::new();
        for j in self.jobs.values().filter(|j| j.record.state.is_active()) {
            for n in &j.record.nodes {
                let e = holding.entry(n.as_str()).or_insert((0, j));
                if e.0 == 0 || e.1.name() != j.name() {
                    e.0 += 1;
                }
            }
        }
        let held_by_other = |id: &String| {
            holding
                .get(id.as_str())
                .is_some_and(|(count, first)| *count > 1 || first.name() != name)
        };
        let mut candidates: Vec<String> = job
            .record
            .nodes
            .iter()
            .filter(|id| fits(id, true) && !held_by_other(id))
            .cloned()
            .collect();
        let mut preemptible = Vec::new();
        let current: HashSet<String> = candidates.iter().cloned().collect();
        for id in self.nodes.keys() {
            if current.contains(id) || !fits(id, false) {
                continue;
            }
            let held = holding.get(id.as_str());
            if held.is_some_and(|(count, _)| *count > 1) {
                // Being handed over between two jobs right now.
                continue;
            }
            match held.map(|(_, j)| *j) {
                None => candidates.push(id.clone()),
                Some(other)
                    if other.name() != name
                        && spec.priority == Priority::Normal
                        && other.record.spec.priority == Priority::Low =>
                {
                    preemptible.push((other.name().to_owned(), id.clone()));
                }
                Some(_) => {}
            }
        }
        let free = candidates.len();
        let total = free + preemptible.len();
        let count = spec.best_node_count(u32::try_from(total).unwrap_or(u32::MAX))? as usize;
        candidates.truncate(count);
        let mut taken = Vec::new();
        for (victim, node) in preemptible.into_iter().take(count.saturating_sub(free)) {
            candidates.push(node.clone());
            taken.push((victim, node));
        }
        Some((candidates, taken))
    }

    fn placeable_count(&self, name: &str) -> usize {
        self.nodes
            .values()
            .filter(|n| {
                n.state() == NodeState::Ready
                    && n.connected()
                    && self.job_of(&n.record.id).is_none_or(|j| j.name() == name)
            })
            .count()
    }

    fn finish_job(
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
        if !job.record.nodes.is_empty() {
            job.set_nodes(Vec::new());
            // Releasing nodes is a new generation too: their agents must
            // stop the old ranks.
            self.last_generation += 1;
        }
        self.record_job_event(now, kind, None, Some(name), why);
        self.persist_job(name);
    }

    /// Level-triggered scheduling: fail over broken jobs, start pending
    /// ones, then tell every connected agent what it should run.
    pub(super) fn reconcile(&mut self, now: Millis) {
        self.next_job_check = None;
        self.expire_breaker_window(now);
        let names = self.jobs_by_priority();
        for name in &names {
            if let Some(reason) = self.job_failure(now, name) {
                self.restart_job(now, name, reason, true);
            } else if !self.check_pending_rollback(now, name, false) {
                self.check_hang(now, name);
            }
        }
        for name in &names {
            if self
                .jobs
                .get(name)
                .is_some_and(|j| j.record.state == JobState::Pending)
            {
                self.launch(now, name, None);
            }
        }
        self.sync_assignments();
        self.check_spares(now);
    }

    /// Normal before low priority, then oldest submission first.
    fn jobs_by_priority(&self) -> Vec<String> {
        let mut jobs: Vec<&Job> = self.jobs.values().collect();
        jobs.sort_by_key(|j| {
            (
                j.record.spec.priority == Priority::Low,
                j.record.submitted_at,
                j.name().to_owned(),
            )
        });
        jobs.into_iter().map(|j| j.name().to_owned()).collect()
    }

    pub fn desired_assignment(&self, node_id: &str) -> DesiredAssignment {
        let holder = self.job_of(node_id).map(|job| {
            let rank = job.node_rank(node_id);
            (job, rank.unwrap_or(0))
        });
        self.desired_for(node_id, holder)
    }

    /// The assignment for a node whose holder (job, node rank) is known.
    fn desired_for(&self, node_id: &str, holder: Option<(&Job, usize)>) -> DesiredAssignment {
        match holder {
            Some((job, node_rank)) => DesiredAssignment {
                generation: job.record.generation,
                job: Some(self.job_assignment(job, node_id, node_rank)),
                // The job's nodes stop the hung generation's ranks when
                // they switch to this one: the post-mortem comes first.
                postmortem_generation: job.detect.hung_generation.unwrap_or(0),
            },
            None => DesiredAssignment {
                generation: self.last_generation,
                job: None,
                postmortem_generation: 0,
            },
        }
    }

    /// The GPUs a node's ranks use, in local-rank order.
    pub(super) fn gpu_indices_for(&self, node_id: &str, per_node: u32) -> Vec<u32> {
        let mut gpu_indices: Vec<u32> = self
            .nodes
            .get(node_id)
            .map(|n| n.record.gpus.iter().map(|g| g.index).collect())
            .unwrap_or_default();
        gpu_indices.sort_unstable();
        gpu_indices.truncate(per_node as usize);
        gpu_indices
    }

    fn job_assignment(&self, job: &Job, node_id: &str, node_rank: usize) -> JobAssignment {
        let spec = &job.record.spec;
        let master_addr = job
            .record
            .nodes
            .first()
            .and_then(|id| self.nodes.get(id))
            .map(|n| n.record.address.clone())
            .unwrap_or_default();
        let gpu_indices = self.gpu_indices_for(node_id, spec.gpus_per_node);
        JobAssignment {
            job: spec.name.clone(),
            command: spec.command.clone(),
            workdir: spec.workdir.clone().unwrap_or_default(),
            env: {
                let mut env = spec.env.clone();
                if job.record.rollbacks > 0 {
                    // A new seed changes the data order past the spike; a
                    // smaller learning rate makes it less likely to recur.
                    env.insert("SUP_SEED".to_owned(), job.record.rollbacks.to_string());
                    env.insert(
                        "SUP_LR_SCALE".to_owned(),
                        spec.lr_scale_after(job.record.rollbacks).to_string(),
                    );
                }
                env
            },
            node_rank: u32::try_from(node_rank).unwrap_or(u32::MAX),
            nnodes: u32::try_from(job.record.nodes.len()).unwrap_or(u32::MAX),
            ranks_per_node: spec.gpus_per_node,
            world_size: job.world_size(),
            master_addr,
            master_port: self.config.master_port,
            restart_count: job.record.restarts,
            max_restarts: spec.max_restarts,
            checkpoint_dir: spec.checkpoint_dir.clone(),
            checkpoint_layout: spec.checkpoint_layout.clone(),
            resume_from: match &job.record.resume_from {
                Some(fixed) => fixed.as_ref(),
                None => job.record.checkpoint.as_ref(),
            }
            .map(|c| Checkpoint {
                step: c.step,
                path: c.path.clone(),
            }),
            stop_grace_ms: self.config.stop_grace_ms,
            gpu_indices,
            progress_regex: spec.progress_regex.clone().unwrap_or_default(),
        }
    }

    fn sync_assignments(&mut self) {
        // Reconcile runs on every returning node, so this must stay cheap at
        // 2,048 nodes: one template per job (all but the node's rank and
        // GPUs), compared in place with what each node was last sent; a full
        // assignment (strings, env map) is built only for nodes that need one.
        type Holder = Option<(String, u32, Vec<u32>)>;
        let (plan, templates) = {
            let holders = self.holders();
            let mut templates: HashMap<String, DesiredAssignment> = HashMap::new();
            let plan: Vec<(String, Holder)> = self
                .nodes
                .values()
                .filter(|n| n.connected())
                .map(|n| {
                    let id = n.record.id.as_str();
                    let holder = holders.get(id).map(|&(job, rank)| {
                        templates
                            .entry(job.name().to_owned())
                            .or_insert_with(|| self.desired_for("", Some((job, 0))));
                        let gpus = self.gpu_indices_for(id, job.record.spec.gpus_per_node);
                        (
                            job.name().to_owned(),
                            u32::try_from(rank).unwrap_or(u32::MAX),
                            gpus,
                        )
                    });
                    (id.to_owned(), holder)
                })
                .collect();
            (plan, templates)
        };
        let last_generation = self.last_generation;
        let mut stale: Vec<(String, Option<(String, usize)>)> = Vec::new();
        for (id, holder) in plan {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let up_to_date = match (&holder, node.sent_assignment.as_mut()) {
                (Some((job, rank, gpus)), Some(sent)) => templates
                    .get(job)
                    .is_some_and(|t| matches_template(sent, t, *rank, gpus)),
                (None, Some(sent)) => sent.job.is_none() && sent.generation == last_generation,
                (_, None) => false,
            };
            if !up_to_date {
                stale.push((id, holder.map(|(job, rank, _)| (job, rank as usize))));
            }
        }
        for (id, holder) in stale {
            let desired = {
                let holder = holder
                    .as_ref()
                    .and_then(|(job, rank)| self.jobs.get(job).map(|j| (j, *rank)));
                self.desired_for(&id, holder)
            };
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            if node.sent_assignment.as_ref() != Some(&desired) {
                node.sent_assignment = Some(desired.clone());
                self.actions.push_back(Action::SendAssignment {
                    node_id: id,
                    assignment: desired,
                });
            }
        }
    }

    fn check_spares(&mut self, now: Millis) {
        let target = self.config.spares_target;
        if target == 0 {
            return;
        }
        let spares = self.spares().count() as u32;
        let low = spares < target;
        if low && !self.spares_were_low {
            self.record_event(
                now,
                EventKind::SparesLow,
                None,
                format!("spare pool at {spares} node(s), below its target of {target}"),
            );
        }
        self.spares_were_low = low;
    }

    pub(super) fn persist_job(&mut self, name: &str) {
        if let Some(job) = self.jobs.get(name) {
            self.actions
                .push_back(Action::Persist(Change::PutJob(Box::new(
                    job.record.clone(),
                ))));
        }
    }
}

/// Best-step advances are persisted at most this often.
const BEST_STEP_PERSIST_MS: Millis = 1_000;

/// How long a loss-spike rollback waits for a current checkpoint catalog
/// (agents rescan every 2 s).
const ROLLBACK_CATALOG_WAIT_MS: Millis = 5_000;

/// Bytes of a rank's stack dump kept in a hang post-mortem event.
const POSTMORTEM_STACK_BYTES: usize = 4096;
/// Log lines of each rank kept in a hang post-mortem event.
const POSTMORTEM_LINES: usize = 8;

/// Whether `sent` is the job's `template` for a node at `rank` with `gpus`.
/// The per-node fields are swapped out for the comparison and put back, so
/// the full derived equality decides (new proto fields included) without
/// cloning the assignment.
fn matches_template(
    sent: &mut DesiredAssignment,
    template: &DesiredAssignment,
    rank: u32,
    gpus: &[u32],
) -> bool {
    let Some(job) = sent.job.as_mut() else {
        return false;
    };
    if sent.generation != template.generation || job.node_rank != rank || job.gpu_indices != gpus {
        return false;
    }
    let template_rank = template.job.as_ref().map_or(0, |t| t.node_rank);
    let saved_gpus = std::mem::take(&mut job.gpu_indices);
    job.node_rank = template_rank;
    let same = *sent == *template;
    if let Some(job) = sent.job.as_mut() {
        job.node_rank = rank;
        job.gpu_indices = saved_gpus;
    }
    same
}

fn join(ids: &[&String]) -> String {
    ids.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
