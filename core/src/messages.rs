//! The engine's own vocabulary for what agents tell it and what it tells
//! them. These mirror the gRPC messages field for field where that is the
//! clearest shape, but they are plain Rust types: the engine never sees a
//! generated protobuf type, so a wire change is one edit in supd's
//! conversion module, not a hunt through every decision.

use std::collections::BTreeMap;

use crate::records::GpuHealth;
use crate::Millis;

/// NVML's GPU recovery action (driver 570+). The numbering is the one
/// stored in `GpuRecord::recovery_action` and used on the wire, so a code
/// read back from an old store keeps its meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RecoveryAction {
    #[default]
    Unspecified,
    None,
    GpuReset,
    NodeReboot,
    DrainP2p,
    DrainAndReset,
}

impl RecoveryAction {
    pub fn code(self) -> i32 {
        match self {
            RecoveryAction::Unspecified => 0,
            RecoveryAction::None => 1,
            RecoveryAction::GpuReset => 2,
            RecoveryAction::NodeReboot => 3,
            RecoveryAction::DrainP2p => 4,
            RecoveryAction::DrainAndReset => 5,
        }
    }

    /// `None` for a code no known driver sends.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => RecoveryAction::Unspecified,
            1 => RecoveryAction::None,
            2 => RecoveryAction::GpuReset,
            3 => RecoveryAction::NodeReboot,
            4 => RecoveryAction::DrainP2p,
            5 => RecoveryAction::DrainAndReset,
            _ => return None,
        })
    }

    /// The name operators know from the API and NVRx logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryAction::Unspecified => "RECOVERY_ACTION_UNSPECIFIED",
            RecoveryAction::None => "RECOVERY_ACTION_NONE",
            RecoveryAction::GpuReset => "RECOVERY_ACTION_GPU_RESET",
            RecoveryAction::NodeReboot => "RECOVERY_ACTION_NODE_REBOOT",
            RecoveryAction::DrainP2p => "RECOVERY_ACTION_DRAIN_P2P",
            RecoveryAction::DrainAndReset => "RECOVERY_ACTION_DRAIN_AND_RESET",
        }
    }
}

// -- from agents --------------------------------------------------------------

/// An agent introducing itself on a new stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub session: crate::SessionId,
    pub node_id: String,
    pub address: String,
    pub hostname: String,
    pub agent_version: String,
    pub instance_id: String,
    pub gpu_backend: String,
    pub gpus: Vec<GpuInventory>,
    /// The agent can validate the node before it returns to service.
    pub validates: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuInventory {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub memory_total_bytes: Option<u64>,
}

/// Latest readings of one GPU; absent readings stay `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub utilization_gpu_pct: Option<u32>,
    pub utilization_memory_pct: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    pub memory_used_bytes: Option<u64>,
}

/// The agent's verdicts on its GPUs and the Xids seen since its last one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthReport {
    /// One per GPU the agent knows, including lost ones.
    pub verdicts: Vec<GpuVerdict>,
    /// Xid events since the previous report (edge-triggered).
    pub xids: Vec<XidEvent>,
    /// GPUs NVML can see now (absent when unknown).
    pub visible_gpus: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuVerdict {
    pub index: u32,
    pub uuid: String,
    pub health: GpuHealth,
    /// One line, e.g. "Xid 79 (GPU has fallen off the bus): power-cycle the node".
    pub reason: String,
    /// The readings and events behind the verdict.
    pub evidence: Vec<String>,
    pub recovery_action: RecoveryAction,
    /// The verdict comes from an injected drill, not from the hardware.
    pub drill: bool,
    /// The kind of each cause behind the verdict (see [`GpuCauseKind`]).
    ///
    /// [`GpuCauseKind`]: crate::records::GpuCauseKind
    pub causes: Vec<crate::records::GpuCauseKind>,
}

impl Default for GpuVerdict {
    fn default() -> Self {
        GpuVerdict {
            index: 0,
            uuid: String::new(),
            health: GpuHealth::Ok,
            reason: String::new(),
            evidence: Vec::new(),
            recovery_action: RecoveryAction::Unspecified,
            drill: false,
            causes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct XidEvent {
    pub gpu_index: u32,
    pub uuid: String,
    pub xid: u32,
    pub at_unix_ms: Millis,
    /// nvml | kernel_log | drill
    pub source: String,
    pub detail: String,
    /// Xids 13, 31, 43...: usually the application's fault, not the GPU's.
    pub application: bool,
}

/// What an agent runs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankStatus {
    /// Empty when the agent runs nothing.
    pub job: String,
    pub generation: u64,
    /// Local ranks whose processes are alive.
    pub running_local_ranks: Vec<u32>,
    /// True once every rank of the assignment has been started.
    pub launched: bool,
    /// Why launching failed, if it did.
    pub launch_error: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankExited {
    pub job: String,
    pub generation: u64,
    pub rank: u32,
    pub local_rank: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Last lines of the rank's output.
    pub log_tail: String,
    /// The agent stopped it (a newer generation, or no assignment).
    pub stopped_by_agent: bool,
    /// Its stacks just before it was stopped, when its generation hung.
    pub stack_dump: String,
    /// The agent killed it when its assignment lease ran out.
    pub lease_expired: bool,
}

/// One node's view of its ranks' training progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobProgress {
    pub job: String,
    pub generation: u64,
    /// Highest step any rank of this node reported in this generation.
    pub step: u64,
    pub tokens: Option<u64>,
    pub loss: Option<f64>,
    /// Median over this node's ranks of their latest step time in seconds.
    pub step_time_s: Option<f64>,
    /// "train" unless a rank is in another phase; empty when none reported.
    pub phase: String,
    /// Lowest latest step over this node's ranks.
    pub min_step: Option<u64>,
}

/// The checkpoints an agent found complete on disk, oldest first, and
/// those it found marked complete but contradicted by their own metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointCatalog {
    pub job: String,
    pub checkpoints: Vec<Checkpoint>,
    pub unverified: Vec<UnverifiedCheckpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u64,
    pub path: String,
    /// What the agent checked by the layout's own metadata; empty from an
    /// agent that predates verification.
    pub verified: String,
}

/// A checkpoint whose completeness marker is there but whose metadata
/// disagrees with its files: never a resume point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnverifiedCheckpoint {
    pub step: u64,
    pub path: String,
    /// The file missing or short, and what the metadata needs.
    pub problem: String,
}

/// What an agent moved out of a job's checkpoint directory before a
/// generation that resumes from an older step started (see
/// `JobAssignment::set_aside_dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointsSetAside {
    pub job: String,
    pub generation: u64,
    pub resume_step: u64,
    pub entries: Vec<SetAsideEntry>,
    /// Anything else done to keep the layout consistent; empty: nothing.
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAsideEntry {
    /// `None` for a file that is not a checkpoint (Megatron's tracker).
    pub step: Option<u64>,
    pub from: String,
    pub to: String,
    /// Moved by an earlier pass for the same generation.
    pub earlier: bool,
}

// -- from operators -----------------------------------------------------------

/// A fault to inject on a node for a game day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drill {
    /// The GPU of an Xid or recovery-action drill; unused by the others.
    pub gpu_index: u32,
    pub fault: Option<DrillFault>,
    /// Who asked, for the agent's log.
    pub by: String,
    /// Drills on ranks: the job and generation the engine saw on the node,
    /// filled in by [`crate::Engine::drill`]; the agent acts only on ranks
    /// of that generation.
    pub job: String,
    pub generation: u64,
}

/// What a drill does. Durations are milliseconds. Operators give the kind
/// and its parameters; the engine fills in what it decides (the rank a
/// crash kills when none was named, a slow drill's stop/run cycle).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DrillFault {
    Xid(u32),
    RecoveryAction(RecoveryAction),
    /// SIGSTOP the job's ranks on the node.
    Hang,
    /// Duty-cycle SIGSTOP/SIGCONT so the node's steps take `factor` × as long.
    Slow {
        factor: f64,
        duration_ms: u32,
        run_ms: u32,
        stop_ms: u32,
    },
    /// SIGKILL one rank (global rank; `None`: the node's lowest).
    Crash {
        rank: Option<u32>,
    },
    /// SIGKILL every rank and go silent, like a power loss.
    Vanish {
        duration_ms: u32,
    },
    /// Go silent; the ranks keep running.
    Partition {
        duration_ms: u32,
    },
    /// Tear the newest complete checkpoint, then SIGKILL a rank.
    TornCheckpoint {
        rank: Option<u32>,
    },
}

// -- to agents ----------------------------------------------------------------

/// What a node should run now (level-triggered; the agent reconciles).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredAssignment {
    pub generation: u64,
    pub job: Option<JobAssignment>,
    /// A generation supd found hung (0: none): the agent captures stacks of
    /// its ranks before it stops them.
    pub postmortem_generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobAssignment {
    pub job: String,
    pub command: Vec<String>,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub node_rank: u32,
    pub nnodes: u32,
    pub ranks_per_node: u32,
    pub world_size: u32,
    pub master_addr: String,
    pub master_port: u32,
    /// Restarts of this job so far (TORCHELASTIC_RESTART_COUNT).
    pub restart_count: u32,
    pub max_restarts: u32,
    pub checkpoint_dir: String,
    /// dcp | megatron | orbax | marker:FILENAME
    pub checkpoint_layout: String,
    /// Absent on a fresh start.
    pub resume_from: Option<Checkpoint>,
    pub stop_grace_ms: u32,
    /// GPU indices this node's ranks use, in local-rank order.
    pub gpu_indices: Vec<u32>,
    /// Empty: none.
    pub progress_regex: String,
    /// The account the ranks run as (name or uid); empty: the agent's own.
    pub user: String,
    /// The ranks' group (name or gid); empty: the user's primary group.
    pub group: String,
    /// The Slurm allocation the ranks run in as a job step; 0: none (the
    /// agent forks them itself).
    pub slurm_job_id: u64,
    /// Where node rank 0's agent sets aside the checkpoints newer than
    /// `resume_from` before it launches; empty: nothing is set aside.
    pub set_aside_dir: String,
}
