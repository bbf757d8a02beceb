//! The durable records: everything the store keeps, in one place. A field
//! added here must deserialize from records written before it (serde
//! defaults); the stored-state compatibility test
//! (`daemon/tests/stored_state_compat.rs`) loads records an earlier supd
//! wrote and fails on anything lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::jobspec::JobSpec;
use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuHealth {
    Ok,
    Degraded,
    Failed,
}

/// What kind of finding one cause of a GPU verdict is (agents send one
/// per cause): lets the engine tell a GPU that runs slow (throttled
/// clocks, a downgraded link) from one that is failing without parsing
/// the verdict's text, which is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuCauseKind {
    /// An Xid with no more specific kind.
    Xid,
    /// The driver's (or a drill's) recovery action.
    RecoveryAction,
    /// Fallen off the bus or missing from the device count.
    Lost,
    /// Uncorrectable memory errors (volatile double-bit ECC, a failed row
    /// remap): the GPU computes wrong, it does not merely slow down.
    MemoryFault,
    /// Memory being repaired under load: pending row remaps or page
    /// retirements, too many retired pages, recurring corrected errors.
    EccPressure,
    /// PCIe link below its maximum width or generation.
    PcieDowngrade,
    /// NVLink links down or NVLink error Xids.
    Nvlink,
    /// Clocks held down (thermal, power brake, hardware slowdown).
    Throttle,
}

impl GpuCauseKind {
    /// Whether the finding makes a GPU run slower while it keeps working:
    /// what corroborates a straggler. Lost GPUs, memory faults and other
    /// Xids fail or restart the job on their own path instead.
    pub fn slows_down(self) -> bool {
        matches!(
            self,
            GpuCauseKind::EccPressure
                | GpuCauseKind::PcieDowngrade
                | GpuCauseKind::Nvlink
                | GpuCauseKind::Throttle
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GpuCauseKind::Xid => "Xid",
            GpuCauseKind::RecoveryAction => "recovery action",
            GpuCauseKind::Lost => "GPU lost",
            GpuCauseKind::MemoryFault => "memory fault",
            GpuCauseKind::EccPressure => "ECC pressure",
            GpuCauseKind::PcieDowngrade => "PCIe link downgrade",
            GpuCauseKind::Nvlink => "NVLink",
            GpuCauseKind::Throttle => "throttling",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub memory_total_bytes: Option<u64>,
    pub health: GpuHealth,
    /// Why the GPU has its health (empty when ok).
    #[serde(default)]
    pub health_reason: String,
    #[serde(default)]
    pub evidence: Vec<String>,
    /// NVML's recovery action as proto enum value (0: unknown).
    #[serde(default)]
    pub recovery_action: i32,
    /// The kinds of the verdict's causes, sorted, each once (empty when ok,
    /// or from an agent that predates them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<GpuCauseKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonRecord {
    pub reason: String,
    pub by: String,
    pub at: Millis,
    /// Why the last uncordon's validation failed (the tail of its output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
}

/// A planned move off a node (`supctl drain`): its job keeps training until
/// its next complete checkpoint (newer than `after_step`) or `deadline`,
/// then moves off, and the node is cordoned with this reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub reason: String,
    pub by: String,
    pub at: Millis,
    pub deadline: Millis,
    /// The job's newest complete checkpoint when the drain began.
    pub after_step: Option<u64>,
}

/// The durable part of a node: what must survive a supervisor restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub address: String,
    pub hostname: String,
    pub agent_version: String,
    pub gpu_backend: String,
    pub instance_id: String,
    pub gpus: Vec<GpuRecord>,
    pub registered_at: Millis,
    /// Set once the node has sent its first report after its first
    /// registration; a node that never reported is still `joining`.
    pub joined: bool,
    pub cordon: Option<CordonRecord>,
    /// Why the node is suspect though its GPUs look healthy (jobs hung
    /// with it to blame, short of a cordon); cleared by an uncordon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Box<DrainRecord>>,
    /// The batch scheduler's (Slurm's) name for the node when its agent
    /// gave one that differs from the node id (see `scheduler.rs`). Boxed:
    /// rarely set, and `Change::PutNode` is sized by this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<Box<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: Millis,
    pub kind: EventKind,
    pub node: Option<String>,
    pub job: Option<String>,
    pub reason: String,
    /// On `job_running` after a recovery: milliseconds from the fault being
    /// reported to every rank of the replacement generation launched (the
    /// reason says it too, for people; metrics read this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    GpuXid,
    GpuHealthChanged,
    CorrelatedFault,
    BreakerOpened,
    BreakerReset,
    Drill,
    JobSubmitted,
    JobStarted,
    JobRunning,
    JobRestarted,
    JobPending,
    JobSucceeded,
    JobFailed,
    JobStopped,
    JobCheckpoint,
    JobPreempted,
    RankExited,
    SparesLow,
    NodeRegistered,
    NodeReconnected,
    NodeTakeover,
    NodeRejected,
    NodeDisconnected,
    NodeUnreachable,
    NodeReachable,
    NodeInventoryChanged,
    NodeCordoned,
    NodeUncordoned,
    /// An operator asked for a node to be drained (planned maintenance).
    NodeDraining,
    /// An operator removed a node from the registry.
    NodeRemoved,
    /// An uncordon is waiting for the node's validation.
    NodeValidating,
    /// The node's validation failed: it stays cordoned.
    NodeValidationFailed,
    /// What the batch scheduler (Slurm) says about a node changed in a way
    /// that matters: drained, down or failing there, sup's drain landed,
    /// or available again.
    NodeScheduler,
    PartitionSuspected,
    PartitionCleared,
    JobHung,
    JobHangPostmortem,
    JobStraggler,
    JobLossSpike,
    JobRolledBack,
    /// The first progress report of a restarted generation: training again
    /// (the end of the restart in the goodput accounting).
    JobResumed,
    /// An agent listed a checkpoint supd does not believe (outside the
    /// job's checkpoint_dir, or a step the job cannot have reached).
    CheckpointRefused,
    /// Checkpoints newer than a generation's resume point were moved out
    /// of the way before it started, so that none is rewritten in place.
    CheckpointSetAside,
    /// An agent found a checkpoint marked complete whose own metadata
    /// disagrees with its files (a shard missing or short): skipped.
    CheckpointUnverified,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GpuXid => "gpu_xid",
            EventKind::GpuHealthChanged => "gpu_health_changed",
            EventKind::CorrelatedFault => "correlated_fault",
            EventKind::BreakerOpened => "breaker_opened",
            EventKind::BreakerReset => "breaker_reset",
            EventKind::Drill => "drill",
            EventKind::JobSubmitted => "job_submitted",
            EventKind::JobStarted => "job_started",
            EventKind::JobRunning => "job_running",
            EventKind::JobRestarted => "job_restarted",
            EventKind::JobPending => "job_pending",
            EventKind::JobSucceeded => "job_succeeded",
            EventKind::JobFailed => "job_failed",
            EventKind::JobStopped => "job_stopped",
            EventKind::JobCheckpoint => "job_checkpoint",
            EventKind::JobPreempted => "job_preempted",
            EventKind::RankExited => "rank_exited",
            EventKind::SparesLow => "spares_low",
            EventKind::NodeRegistered => "node_registered",
            EventKind::NodeReconnected => "node_reconnected",
            EventKind::NodeTakeover => "node_takeover",
            EventKind::NodeRejected => "node_rejected",
            EventKind::NodeDisconnected => "node_disconnected",
            EventKind::NodeUnreachable => "node_unreachable",
            EventKind::NodeReachable => "node_reachable",
            EventKind::NodeInventoryChanged => "node_inventory_changed",
            EventKind::NodeCordoned => "node_cordoned",
            EventKind::NodeUncordoned => "node_uncordoned",
            EventKind::NodeDraining => "node_draining",
            EventKind::NodeRemoved => "node_removed",
            EventKind::NodeValidating => "node_validating",
            EventKind::NodeValidationFailed => "node_validation_failed",
            EventKind::NodeScheduler => "node_scheduler",
            EventKind::PartitionSuspected => "partition_suspected",
            EventKind::PartitionCleared => "partition_cleared",
            EventKind::JobHung => "job_hung",
            EventKind::JobHangPostmortem => "job_hang_postmortem",
            EventKind::JobStraggler => "job_straggler",
            EventKind::JobLossSpike => "job_loss_spike",
            EventKind::JobRolledBack => "job_rolled_back",
            EventKind::JobResumed => "job_resumed",
            EventKind::CheckpointRefused => "checkpoint_refused",
            EventKind::CheckpointSetAside => "checkpoint_set_aside",
            EventKind::CheckpointUnverified => "checkpoint_unverified",
        }
    }
}

/// Durable: a supd restart must not quietly close an open breaker, give
/// back the window's allowance, or forget the cordons it held back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerRecord {
    pub open: bool,
    pub reason: String,
    pub since: Millis,
    /// When each automatic cordon within the window was made (added after
    /// v1 of the stored schema: absent in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_cordons: Vec<Millis>,
    /// Cordons held back while open, by node, with their reasons: made when
    /// an operator resets the breaker (added after v1).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held_back: BTreeMap<String, String>,
}

/// What the store holds; the engine is rebuilt from it at startup. Also
/// the body of a `supd export` file (its field names are that format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub nodes: Vec<NodeRecord>,
    /// Oldest first.
    pub events: Vec<Event>,
    pub jobs: Vec<JobRecord>,
    pub breaker: Option<BreakerRecord>,
    /// Client request ids already applied (the actor's, not the engine's).
    pub requests: Vec<RequestRecord>,
    /// The generation counter (the fencing token of every assignment).
    /// `None` in stores written before it was kept: the newest job
    /// generation is the best estimate then.
    pub last_generation: Option<u64>,
}

/// A mutating control request that was applied, remembered by its client
/// request id so that a retry of it (after a timeout, across a supd
/// restart) takes effect once. Kept by the actor, not the engine: it is
/// about delivery, not about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    pub at: Millis,
    /// "cordon", "uncordon", "submit_job", "stop_job".
    pub kind: String,
    /// The node or job it was about.
    pub target: String,
    /// What supd answered the first time.
    pub message: String,
}

/// A change of durable state. The caller applies a batch atomically and
/// flushes it before it acknowledges anything that caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutNode(NodeRecord),
    /// An operator removed the node from the registry.
    DeleteNode(String),
    AppendEvent(Event),
    /// Drop every event with a sequence number up to and including this one.
    TrimEventsThrough(u64),
    PutJob(Box<JobRecord>),
    PutBreaker(BreakerRecord),
    /// The generation counter moved: agents fence by it, so it must never
    /// go back, also across a restart.
    PutLastGeneration(u64),
    /// Written by the actor in the same commit as the request's effects.
    RememberRequest(RequestRecord),
    ForgetRequest(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for enough healthy nodes.
    Pending,
    /// First launch of its ranks under way.
    Starting,
    Running,
    /// Restarted after a failure; the new generation is launching.
    Recovering,
    Succeeded,
    Failed,
    Stopped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Recovering => "recovering",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        }
    }

    /// Holds nodes and runs (or launches) ranks.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Starting | JobState::Running | JobState::Recovering
        )
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Stopped
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub step: u64,
    pub path: String,
    /// What the reporting agent checked by the layout's own metadata
    /// (shown by `supctl checkpoints`); empty when it checked nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verified: String,
}

/// The durable part of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub spec_toml: String,
    pub submitted_by: String,
    pub submitted_at: Millis,
    pub state: JobState,
    pub reason: String,
    pub generation: u64,
    /// Assigned nodes in node-rank order (rank 0 gives MASTER_ADDR).
    pub nodes: Vec<String>,
    pub restarts: u32,
    /// Newest checkpoint an agent found complete.
    pub checkpoint: Option<CheckpointRef>,
    /// Highest step any generation reached.
    pub best_step: Option<u64>,
    /// Progress when the job last restarted, for the crash-loop guard.
    pub restart_mark: (Option<u64>, Option<u64>),
    pub fruitless_restarts: u32,
    /// Loss-spike rollbacks so far (each gives the ranks a new `SUP_SEED`).
    #[serde(default)]
    pub rollbacks: u32,
    /// Planned moves off drained nodes so far (not restarts: neither the
    /// budget nor the crash-loop guard counts them).
    #[serde(default)]
    pub planned_moves: u32,
    /// After a rollback to this step, newer catalog entries are from the
    /// abandoned timeline until the job has stepped past them again.
    #[serde(default)]
    pub rollback_mark: Option<u64>,
    /// Nodes swapped out as stragglers: not placed again for this job.
    #[serde(default)]
    pub avoid_nodes: Vec<String>,
    /// Hangs attributed to each node (its ranks behind the others).
    #[serde(default)]
    pub hang_blame: BTreeMap<String, u32>,
    /// The checkpoint the current generation resumes from (`Some(None)`:
    /// from scratch), fixed when the generation starts. `checkpoint` moves
    /// on as agents find newer ones, also while the agents of a new
    /// generation are still stopping the old ranks; were assignments built
    /// from it, a node launching later would resume from another step than
    /// the others and the world could never meet. `None` only in records
    /// written before this field: `checkpoint` is used then.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_from: Option<Option<CheckpointRef>>,
    /// Live goodput accounting: where the job's wall time went (see
    /// `jobs/goodput.rs`). Records from before it start it when the engine
    /// first sees them.
    #[serde(default)]
    pub goodput: crate::Goodput,
    /// The Slurm allocation the job is bound to (`supctl job submit
    /// --slurm-job`): it runs only on those nodes, as job steps of it. Not
    /// stored when absent, so records stay as older supd wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmAllocation>,
    /// Nodes of an earlier generation that supd could not tell to stop,
    /// whose assignment lease the next generation waits out
    /// (`jobs/lease.rs`). Not stored when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_wait: Vec<String>,
    /// Why the job is restarting, while it waits out those leases (the
    /// restart event says it once the wait is over). Not stored when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_wait_cause: String,
    /// While the job runs on no node (ended, or waiting for nodes): the
    /// nodes of the last generation that ran, in node-rank order, where
    /// its ranks' logs are. Not stored when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_nodes: Vec<String>,
}

/// A running Slurm job whose nodes a sup job is bound to, as supd's edge
/// read it from Slurm at submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmAllocation {
    /// Slurm's job id (`$SLURM_JOB_ID` in the batch script).
    pub job_id: u64,
    /// The allocation's nodes, Slurm's names, in Slurm's order.
    pub nodes: Vec<String>,
    /// The Slurm job's owner (informational: the steps run as the job's
    /// user because Slurm runs them so).
    #[serde(default)]
    pub user: String,
}

/// A field that is present deserializes to `Some`, even when it is null.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<CheckpointRef>>, D::Error> {
    Option::<CheckpointRef>::deserialize(d).map(Some)
}
