//! The environment contract between the agent and training ranks.

/// Names the agent sets for every rank (torchrun's and sup's). A job's own
/// environment never overrides them, or ranks would disagree about who they
/// are: the agent drops such entries and supd rejects them at submit.
pub const AGENT_SET: [&str; 21] = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "CUDA_VISIBLE_DEVICES",
    "SUP_JOB",
    "SUP_GENERATION",
    "SUP_NODE_ID",
    "SUP_CHECKPOINT_DIR",
    "SUP_CHECKPOINT_LAYOUT",
    "SUP_RESUME_FROM",
    "SUP_RESUME_STEP",
    "SUP_PROGRESS_ADDR",
];

/// Names supd itself puts into a job's environment (loss-spike rollback), so
/// a job spec may not set them either; they reach the agent as job env.
pub const SUPERVISOR_SET: [&str; 2] = ["SUP_SEED", "SUP_LR_SCALE"];
