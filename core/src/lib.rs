//! sup's policy engine: every decision supd makes, with no I/O, no clock and
//! no wire types.
//!
//! Shaped after raft-rs / quinn-proto ("sans-IO"): callers feed it inputs with
//! the current time (`on_register`, `on_health_report`, `cordon`, ...,
//! `handle_timeout`), then drain what it decided with
//! [`Engine::poll_action`] and ask when to wake it next with
//! [`Engine::poll_timeout`]. Every state change is an [`Action::Persist`]
//! that the caller must make durable before it acknowledges anything, and
//! every decision is recorded as an [`Event`] with a human-readable reason.
//!
//! Time is wall-clock Unix milliseconds ([`Millis`]) because the timestamps it
//! stamps (cordon `at`, events) are shown to people and survive restarts.
//!
//! Where each concept lives:
//! - [`records`]: the durable records, the whole stored schema;
//! - [`messages`]: what agents and operators send in, and assignments out;
//! - [`config`]: thresholds and windows;
//! - [`agent_input`]: bounds on what agents send (registered GPUs only,
//!   clipped text, no impossible numbers), applied before anything else;
//! - [`engine`]: the state, the driving API, the event log, reconcile;
//! - `nodes`: registration, liveness, the partition guard, cordons;
//! - [`maintenance`]: draining a node at its job's next checkpoint,
//!   removing a node;
//! - `health`: GPU verdicts, Xids, the correlated-fault guards (application
//!   Xids, hardware Xid storms);
//! - [`drills`]: game-day faults an operator asks for (GPU, ranks, link);
//! - `breaker`: rationing automatic cordons;
//! - [`scheduler`]: node state mirrored with the batch scheduler (Slurm):
//!   its drains seen, sup's cordons drained there;
//! - [`detect`]: hang, straggler and loss-spike detectors (pure statistics);
//! - `jobs`: submit and stop, then `jobs/judgement` (judge, then act),
//!   `jobs/reports` (agent reports), `jobs/catalog` (which listed
//!   checkpoints are believed), `jobs/remedies` (straggler, rollback,
//!   hang), `jobs/goodput` (live goodput accounting), `jobs/restart` (budget,
//!   crash loop, grow back), `jobs/placement` (spares, preemption) and
//!   `jobs/assignments` (what each node runs);
//! - [`jobspec`]: the job spec.

pub mod agent_input;
mod breaker;
pub mod config;
pub mod detect;
pub mod drills;
pub mod engine;
mod health;
mod jobs;
pub mod jobspec;
pub mod maintenance;
pub mod messages;
mod nodes;
pub mod records;
pub mod scheduler;

pub use config::{EngineConfig, LEASE_MARGIN_MS};
pub use engine::{Action, CordonOutcome, Engine, EngineError, ReportOutcome};
pub use jobs::goodput::{young_daly_ms, Bucket, Goodput, GoodputReport};
pub use jobs::{Job, NodeStats, SparePool};
pub use messages::*;
pub use nodes::{Node, NodeState};
pub use records::*;

/// Wall-clock time, Unix milliseconds.
pub type Millis = i64;

/// Identifies one agent stream; a new stream gets a new id, so reports from a
/// stream that has been replaced can be told apart and ignored.
pub type SessionId = u64;

/// Operator-supplied text (reasons, names) is bounded: it is stored, logged
/// and sent to every dashboard.
const MAX_TEXT_LEN: usize = 1024;

fn required_text(what: &str, value: &str) -> Result<String, EngineError> {
    let v = bounded_text(what, value)?;
    if v.is_empty() {
        return Err(EngineError::InvalidArgument(format!(
            "{what} must not be empty"
        )));
    }
    Ok(v)
}

fn bounded_text(what: &str, value: &str) -> Result<String, EngineError> {
    let v = value.trim();
    if v.len() > MAX_TEXT_LEN {
        return Err(EngineError::InvalidArgument(format!(
            "{what} is longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(v.to_owned())
}

pub(crate) fn format_ms(ms: Millis) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    // Whole seconds read better in reasons; sub-second limits only in tests.
    let d = if ms >= 1000 {
        std::time::Duration::from_secs(ms / 1000)
    } else {
        std::time::Duration::from_millis(ms)
    };
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;
