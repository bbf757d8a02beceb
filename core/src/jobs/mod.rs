//! Jobs: a job's in-memory state beside its record, submit and stop, and
//! the lookups the rest of the engine and supd's views use. The decisions
//! about a running job live in the files beside this one.

mod assignments;
mod catalog;
pub mod goodput;
mod gpu_idle;
mod judgement;
mod lease;
mod placement;
pub use placement::SparePool;
mod remedies;
mod reports;
mod restart;
mod set_aside;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::detect::{
    self, HangDetector, LossSpike, LossSpikeDetector, StragglerDetector, Throughput,
};
use crate::jobspec::JobSpec;
use crate::records::{CheckpointRef, JobRecord, JobState};
use crate::{Action, Change, Engine, EngineError, EventKind, Millis};

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
    /// Each node's latest (highest-rank) step in this generation, for the
    /// job's agreed step (see [`Job::agreed_step`]).
    node_step: BTreeMap<String, u64>,
    /// A straggler to swap out right after the next checkpoint.
    pending_replace: Option<String>,
    /// A loss spike waiting for a current checkpoint catalog, and until when.
    pending_rollback: Option<(LossSpike, Millis)>,
    /// A checkpoint catalog arrived while a rollback was pending: the
    /// rollback can pick its target now.
    rollback_catalog_fresh: bool,
    /// When the best step was last re-derived from the agreed step.
    best_step_checked_at: Option<Millis>,
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
    /// When the current generation was placed, and whether a failure
    /// caused it (only then is the launch time a recovery time).
    fault_at: Option<(Millis, bool)>,
    /// The complete checkpoints last reported, oldest first.
    pub catalog: Vec<CheckpointRef>,
    pub detect: JobDetect,
    /// Catalog entries already refused (node, path), so a node that keeps
    /// listing one raises one event, not one per scan. Bounded.
    refused_checkpoints: BTreeSet<(String, String)>,
    /// Paths of checkpoints some node found unverified, so the job's nodes,
    /// all scanning the same directory, raise one event per checkpoint.
    /// Bounded like `refused_checkpoints`.
    unverified_checkpoints: BTreeSet<String>,
    /// `record.nodes` indexed: node id → node rank. Every report about a
    /// job checks membership, and a scan of a 2,048-node list per report
    /// is quadratic per restart. Kept in step by [`Job::set_nodes`].
    members: HashMap<String, usize>,
}

impl Job {
    pub(crate) fn restored(record: JobRecord) -> Job {
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
            refused_checkpoints: BTreeSet::new(),
            unverified_checkpoints: BTreeSet::new(),
            members,
        }
    }

    /// Replaces the nodes of the current generation (in node-rank order)
    /// and their index. Every change of `record.nodes` goes through here.
    /// Released nodes are remembered as `last_nodes`: the last ranks' logs
    /// stay there after the job ends.
    pub(crate) fn set_nodes(&mut self, nodes: Vec<String>) {
        self.members = index_nodes(&nodes);
        let released = std::mem::replace(&mut self.record.nodes, nodes);
        if !self.record.nodes.is_empty() {
            self.record.last_nodes.clear();
        } else if !released.is_empty() {
            self.record.last_nodes = released;
        }
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

    /// The step the generation's reporting nodes agree it reached: the
    /// lower median of their latest steps. The catalog bound and the best
    /// step (the crash-loop guard) rest on it, so one node — a compromised
    /// one — cannot vouch for a step the others never reached, unless it is
    /// the only one that reports. (`step`, shown to people and watched for
    /// hangs, is the highest any node reported.)
    pub fn agreed_step(&self) -> Option<u64> {
        let mut steps: Vec<u64> = self.detect.node_step.values().copied().collect();
        if steps.is_empty() {
            return None;
        }
        let middle = (steps.len() - 1) / 2;
        Some(*steps.select_nth_unstable(middle).1)
    }

    /// Raises the best step to the agreed step; whether it rose.
    pub(crate) fn refresh_best_step(&mut self) -> bool {
        match self.agreed_step() {
            Some(agreed) if self.record.best_step.is_none_or(|b| agreed > b) => {
                self.record.best_step = Some(agreed);
                true
            }
            _ => false,
        }
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
    pub(crate) fn holders(&self) -> HashMap<&str, (&Job, usize)> {
        holders_of(&self.jobs)
    }

    /// Which node runs global rank `rank` of a job, and its local rank; for
    /// a job that runs on no node now (ended, or waiting for nodes), which
    /// node ran it last: its log stays there.
    pub fn rank_location(&self, job: &str, rank: u32) -> Result<(String, u32), EngineError> {
        let job = self.job(job)?;
        let (nodes, now_or_last) = if !job.record.nodes.is_empty() {
            (&job.record.nodes, "")
        } else if !job.record.last_nodes.is_empty() {
            (&job.record.last_nodes, "last ")
        } else {
            return Err(EngineError::InvalidArgument(format!(
                "job '{}' has not run on any node yet ({}): it has no rank logs",
                job.name(),
                job.record.state.as_str(),
            )));
        };
        let per_node = job.record.spec.gpus_per_node;
        let node = nodes.get((rank / per_node) as usize).ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "job '{}' has no rank {rank} (its {now_or_last}world size is {})",
                job.name(),
                nodes.len() as u64 * u64::from(per_node)
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
        if spec.nodes > self.config.max_job_nodes {
            return Err(EngineError::InvalidJobSpec(format!(
                "nodes: {} is more than this cluster's jobs.max_nodes ({})",
                spec.nodes, self.config.max_job_nodes
            )));
        }
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
            planned_moves: 0,
            rollback_mark: None,
            avoid_nodes: Vec::new(),
            hang_blame: BTreeMap::new(),
            resume_from: None,
            goodput: crate::Goodput::submitted(now),
            slurm: None,
            lease_wait: Vec::new(),
            lease_wait_cause: String::new(),
            last_nodes: Vec::new(),
        };
        self.jobs.insert(name.clone(), Job::restored(record));
        self.record_job_event(now, EventKind::JobSubmitted, None, Some(&name), summary);
        self.persist_job(&name);
        self.request_reconcile(now);
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
        self.request_reconcile(now);
        Ok((true, format!("job '{name}' stopped")))
    }

    // -- agent reports ------------------------------------------------------

    // -- decisions ----------------------------------------------------------

    pub(crate) fn persist_job(&mut self, name: &str) {
        if let Some(job) = self.jobs.get(name) {
            self.actions
                .push_back(Action::Persist(Change::PutJob(Box::new(
                    job.record.clone(),
                ))));
        }
    }
}

/// Best-step advances are persisted at most this often.
const BEST_STEP_CHECK_MS: Millis = 1_000;

/// How long a loss-spike rollback waits for a current checkpoint catalog:
/// longer than the agents' longest scan interval (8 s, `MAX_SCAN_INTERVAL`
/// in the agent's scanner, reached while nothing changes), so that a
/// checkpoint written just before the spike is listed by then. 5 s missed
/// it (seen with a real PyTorch job: "no complete checkpoint from before
/// the spike" with three on disk).
const ROLLBACK_CATALOG_WAIT_MS: Millis = 10_000;

/// Bytes of a rank's stack dump kept in a hang post-mortem event.
const POSTMORTEM_STACK_BYTES: usize = 4096;
/// Log lines of each rank kept in a hang post-mortem event.
const POSTMORTEM_LINES: usize = 8;

/// Node ids for a reason: the first few and how many more, so that a
/// generation change on thousands of nodes still reads as one line.
fn join(ids: &[&String]) -> String {
    const SHOWN: usize = 8;
    let mut out = ids
        .iter()
        .take(SHOWN)
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        out.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    out
}

/// [`Engine::holders`] of a job table, for a caller that holds other parts
/// of the engine mutably.
pub(crate) fn holders_of(jobs: &BTreeMap<String, Job>) -> HashMap<&str, (&Job, usize)> {
    let active = || jobs.values().filter(|j| j.record.state.is_active());
    let mut map = HashMap::with_capacity(active().map(|j| j.record.nodes.len()).sum());
    for j in active() {
        for (rank, n) in j.record.nodes.iter().enumerate() {
            map.entry(n.as_str()).or_insert((j, rank));
        }
    }
    map
}
