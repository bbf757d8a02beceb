//! The batch scheduler edge: a task that polls the scheduler's view of its
//! nodes, hands it to the actor, and applies what the engine says must
//! change there (`sup_core::scheduler`).
//!
//! Two schedulers: none (`[slurm] mode = "off"`: no task runs, supd never
//! calls anything) and Slurm (`slurm.rs`). The loop never blocks the actor:
//! the actor only answers an observation with the engine's plan and
//! notifies (without waiting) when node records change; every call to the
//! scheduler is made here, with a timeout. Errors are logged with the
//! command and its stderr and retried with backoff.
//!
//! Level-triggered: each pass observes first and then applies the plan the
//! engine computed from that observation, so a drain that already landed is
//! never asked for again, and one that failed (or was lost with a supd or
//! slurmctld restart) is asked for at the next pass.

mod slurm;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use sup_core::scheduler::{SchedulerNode, SchedulerOp};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::actor::SupervisorHandle;
use crate::config::{SlurmConfig, SlurmMode};
pub use slurm::Slurm;

/// How often the scheduler is polled when nothing wakes the task sooner.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// At most one pass per this, however often node records change (a storm
/// of changes must not become a storm of `sinfo` calls).
const MIN_PASS_GAP: Duration = Duration::from_millis(100);
/// Retry bounds after a failed call.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A scheduler's failed call: the command and what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct SchedulerError {
    pub command: String,
    pub detail: String,
}

/// What supd needs from a batch scheduler.
pub trait Scheduler: Send + Sync + 'static {
    /// Every node the scheduler knows, with its state and reason.
    fn observe(&self) -> impl Future<Output = Result<Vec<SchedulerNode>, SchedulerError>> + Send;
    /// Drains or resumes one node.
    fn apply(&self, op: &SchedulerOp) -> impl Future<Output = Result<(), SchedulerError>> + Send;
}

/// Starts the scheduler task the configuration asks for; None for none.
pub fn spawn(
    config: &SlurmConfig,
    handle: SupervisorHandle,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let enforce = match config.mode {
        SlurmMode::Off => return None,
        SlurmMode::Observe => false,
        SlurmMode::Enforce => true,
    };
    let slurm = Slurm::from_env();
    tracing::info!(
        mode = ?config.mode,
        slurm_conf = %slurm.conf_description(),
        "mirroring node state with Slurm"
    );
    Some(tokio::spawn(run(
        slurm,
        handle,
        enforce,
        POLL_INTERVAL,
        shutdown,
    )))
}

/// Exponential backoff after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(5);
    (BACKOFF_MIN * factor).min(BACKOFF_MAX)
}

/// A change that failed, and when it may be tried again.
struct Retry {
    op: SchedulerOp,
    failures: u32,
    at: Instant,
}

/// The task: observe, let the engine decide, apply; until shutdown.
pub async fn run<S: Scheduler>(
    scheduler: S,
    handle: SupervisorHandle,
    enforce: bool,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = handle.scheduler_wake();
    let mut observe_failures = 0u32;
    let mut retries: HashMap<String, Retry> = HashMap::new();
    // Observe mode: what would have been done, logged once each.
    let mut reported: HashSet<SchedulerOp> = HashSet::new();
    loop {
        let started = Instant::now();
        let wait = match scheduler.observe().await {
            Ok(nodes) => {
                if observe_failures > 0 {
                    tracing::info!(failures = observe_failures, "the scheduler answers again");
                }
                observe_failures = 0;
                match handle.scheduler_nodes(nodes).await {
                    Ok(plan) if enforce => apply(&scheduler, plan, &mut retries).await,
                    Ok(plan) => {
                        reported.retain(|op| plan.contains(op));
                        for op in plan {
                            if reported.insert(op.clone()) {
                                tracing::info!(?op, "observe mode: would change Slurm");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand the scheduler's view to the actor")
                    }
                }
                interval
            }
            Err(e) => {
                observe_failures += 1;
                let retry_in = backoff(observe_failures);
                tracing::warn!(
                    command = %e.command,
                    error = %e.detail,
                    failures = observe_failures,
                    retry_in = %humantime::format_duration(retry_in),
                    "cannot read the scheduler's node states"
                );
                retry_in
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(wait) => {}
            // Only while the scheduler answers: a woken retry would defeat
            // the backoff.
            () = wake.notified(), if observe_failures == 0 => {
                tokio::time::sleep_until(started + MIN_PASS_GAP).await;
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Applies the plan; a change that failed waits out its backoff (unless
/// the plan asks for something else for that node by then).
async fn apply<S: Scheduler>(
    scheduler: &S,
    plan: Vec<SchedulerOp>,
    retries: &mut HashMap<String, Retry>,
) {
    let wanted: HashSet<&str> = plan.iter().map(SchedulerOp::name).collect();
    retries.retain(|name, _| wanted.contains(name.as_str()));
    let now = Instant::now();
    for op in plan {
        if retries
            .get(op.name())
            .is_some_and(|r| r.op == op && r.at > now)
        {
            continue;
        }
        match scheduler.apply(&op).await {
            Ok(()) => {
                retries.remove(op.name());
                match &op {
                    SchedulerOp::Drain {
                        name, reason, why, ..
                    } => tracing::info!(node = %name, %reason, %why, "drained in Slurm"),
                    SchedulerOp::Resume { name, why, .. } => {
                        tracing::info!(node = %name, %why, "resumed in Slurm")
                    }
                }
            }
            Err(e) => {
                let failures = retries
                    .get(op.name())
                    .filter(|r| r.op == op)
                    .map_or(1, |r| r.failures + 1);
                let retry_in = backoff(failures);
                tracing::warn!(
                    command = %e.command,
                    error = %e.detail,
                    failures,
                    retry_in = %humantime::format_duration(retry_in),
                    "cannot change the node in Slurm"
                );
                retries.insert(
                    op.name().to_owned(),
                    Retry {
                        op,
                        failures,
                        at: Instant::now() + retry_in,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
