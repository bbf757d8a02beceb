//! Game-day drills: an operator asks for a fault on one node, the engine
//! checks that it makes sense there, records it as a drill event and sends
//! it to the node's agent, which makes the fault real (only when started
//! with --allow-drills). The recovery is whatever the real fault gets: the
//! engine does not know a drilled fault from a real one once it happens.
//!
//! GPU drills (an Xid, a recovery action) go through the agent's GPU health
//! monitor. The others act on the node's training ranks (hang, slow, crash,
//! torn checkpoint) or on the agent's link to supd (vanish, partition); for
//! those the engine fills in what it knows and the agent does not: the job
//! and generation to act on, the rank a crash kills, a slow drill's
//! stop/run cycle from the node's measured step time.

use crate::jobs::Job;
use crate::messages::{Drill, DrillFault, RecoveryAction};
use crate::{Engine, EngineError, EventKind, Millis};

/// Longest a vanish, partition or slow drill may last: a game day's fault,
/// not a way to take a node out for good.
pub const MAX_DRILL_DURATION_MS: u32 = 3_600_000;
/// Shortest: under a second nothing (liveness, straggler windows) notices.
pub const MIN_DRILL_DURATION_MS: u32 = 1_000;
/// A slow drill's factor: at least a visible slowdown, at most one that
/// still looks slow rather than hung.
pub const MIN_SLOW_FACTOR: f64 = 1.1;
pub const MAX_SLOW_FACTOR: f64 = 10.0;
/// Shortest stop or run phase of a slow drill's cycle: the agent's timer
/// and the kernel's signal delivery are not finer than this.
const MIN_CYCLE_PHASE_MS: u32 = 10;
/// Longest stop phase: past it a slow drill is a hang drill.
const MAX_STOP_MS: u32 = 600_000;

impl Engine {
    /// Operator: inject a fault on a node for a game day. Validates it,
    /// records an [`EventKind::Drill`] event naming the kind, node, job,
    /// who asked and the parameters, and sends it to the agent. Returns the
    /// message for the operator.
    pub fn drill(
        &mut self,
        now: Millis,
        node_id: &str,
        drill: Drill,
        by: &str,
    ) -> Result<String, EngineError> {
        let node = self
            .nodes
            .get(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if !node.connected() {
            return Err(EngineError::FailedPrecondition(format!(
                "node '{node_id}' has no connected agent; a drill needs one"
            )));
        }
        let Some(fault) = drill.fault else {
            return Err(EngineError::InvalidArgument(
                "a drill needs a fault (an Xid, a recovery action, hang, slow, crash, vanish, \
                 partition or torn-checkpoint)"
                    .to_owned(),
            ));
        };
        let gpu = drill.gpu_index;
        let mut sent = Drill {
            gpu_index: gpu,
            fault: Some(fault),
            by: String::new(),
            job: String::new(),
            generation: 0,
        };
        let (what, job) = match fault {
            DrillFault::Xid(_) | DrillFault::RecoveryAction(_) => {
                if !node.record.gpus.iter().any(|g| g.index == gpu) {
                    return Err(EngineError::InvalidArgument(format!(
                        "node '{node_id}' has no GPU {gpu}"
                    )));
                }
                (format!("{} on GPU {gpu} injected", gpu_fault(fault)?), None)
            }
            DrillFault::Vanish { duration_ms } => (
                format!(
                    "vanish for {}: every rank SIGKILLed and the agent silent, like a power loss",
                    duration("vanish", duration_ms)?
                ),
                self.job_of(node_id).map(|j| j.name().to_owned()),
            ),
            DrillFault::Partition { duration_ms } => (
                format!(
                    "partition for {}: the agent silent, its ranks left running",
                    duration("partition", duration_ms)?
                ),
                self.job_of(node_id).map(|j| j.name().to_owned()),
            ),
            DrillFault::Hang
            | DrillFault::Slow { .. }
            | DrillFault::Crash { .. }
            | DrillFault::TornCheckpoint { .. } => {
                let job = self.running_job_on(node_id, fault)?;
                let (name, generation) = (job.name().to_owned(), job.record.generation);
                let ranks = ranks_on(job, node_id);
                let of = format!("job {name} (generation {generation})");
                let what = match fault {
                    DrillFault::Hang => format!("hang: SIGSTOP every rank of {of} on the node"),
                    DrillFault::Slow {
                        factor,
                        duration_ms,
                        ..
                    } => {
                        let (run_ms, stop_ms, step_s) = slow_cycle(job, node_id, factor)?;
                        let text = format!(
                            "slow ×{factor} for {}: ranks of {of} stopped {stop_ms} ms of every {} ms \
                             (its median step time {step_s:.3}s)",
                            duration("slow", duration_ms)?,
                            u64::from(run_ms) + u64::from(stop_ms)
                        );
                        sent.fault = Some(DrillFault::Slow {
                            factor,
                            duration_ms,
                            run_ms,
                            stop_ms,
                        });
                        text
                    }
                    DrillFault::Crash { rank } => {
                        let rank = pick_rank(rank, &ranks, node_id, &name)?;
                        sent.fault = Some(DrillFault::Crash { rank: Some(rank) });
                        format!("crash: SIGKILL rank {rank} of {of}")
                    }
                    DrillFault::TornCheckpoint { rank } => {
                        let rank = pick_rank(rank, &ranks, node_id, &name)?;
                        let newest = job
                            .catalog
                            .iter()
                            .map(|c| c.step)
                            .max()
                            .ok_or_else(|| {
                                EngineError::FailedPrecondition(format!(
                                    "job '{name}' has no complete checkpoint yet; after a torn-checkpoint \
                                     drill it resumes from the newest one"
                                ))
                            })?;
                        sent.fault = Some(DrillFault::TornCheckpoint { rank: Some(rank) });
                        format!(
                            "torn-checkpoint: at the next checkpoint save of {of}, tear it and SIGKILL \
                             rank {rank}, like a crash during the save (newest complete checkpoint: step {newest})"
                        )
                    }
                    // Not reached: this arm matched rank drills only.
                    other => kind_name(other).to_owned(),
                };
                sent.job = name.clone();
                sent.generation = generation;
                (what, Some(name))
            }
        };
        let by = match by.trim() {
            "" => "unknown",
            by => by,
        };
        let by = crate::bounded_text("the drill's author", by)?;
        let text = format!("drill by {by}: {what}");
        self.record_job_event(now, EventKind::Drill, Some(node_id), job.as_deref(), text);
        sent.by = by;
        self.actions.push_back(crate::Action::SendDrill {
            node_id: node_id.to_owned(),
            drill: sent,
        });
        // supd cannot know whether the agent allows drills (registration
        // does not say); the agent logs a refusal.
        Ok(format!(
            "drill sent to node '{node_id}': {what} (the agent acts on it only when started with --allow-drills)"
        ))
    }

    /// The running job on `node_id`, for a drill on its ranks.
    fn running_job_on(&self, node_id: &str, fault: DrillFault) -> Result<&Job, EngineError> {
        let kind = kind_name(fault);
        let job = self.job_of(node_id).ok_or_else(|| {
            EngineError::FailedPrecondition(format!(
                "node '{node_id}' runs no job; a {kind} drill acts on a job's ranks"
            ))
        })?;
        if job.record.state != crate::JobState::Running {
            return Err(EngineError::FailedPrecondition(format!(
                "job '{}' on node '{node_id}' is {}, not running; a {kind} drill acts on running ranks",
                job.name(),
                job.record.state.as_str()
            )));
        }
        Ok(job)
    }
}

/// The drill's kind as `supctl drill` spells it.
pub fn kind_name(fault: DrillFault) -> &'static str {
    match fault {
        DrillFault::Xid(_) => "xid",
        DrillFault::RecoveryAction(_) => "recovery-action",
        DrillFault::Hang => "hang",
        DrillFault::Slow { .. } => "slow",
        DrillFault::Crash { .. } => "crash",
        DrillFault::Vanish { .. } => "vanish",
        DrillFault::Partition { .. } => "partition",
        DrillFault::TornCheckpoint { .. } => "torn-checkpoint",
    }
}

fn gpu_fault(fault: DrillFault) -> Result<String, EngineError> {
    match fault {
        DrillFault::Xid(code) if (1..=1000).contains(&code) => Ok(format!("Xid {code}")),
        DrillFault::Xid(code) => Err(EngineError::InvalidArgument(format!(
            "Xid {code} is out of range (1-1000)"
        ))),
        DrillFault::RecoveryAction(RecoveryAction::Unspecified) => {
            Err(EngineError::InvalidArgument(
                "the drill's recovery action is not a known value".to_owned(),
            ))
        }
        DrillFault::RecoveryAction(action) => Ok(format!("recovery action {}", action.as_str())),
        other => Ok(kind_name(other).to_owned()),
    }
}

/// A drill's duration, checked and formatted.
fn duration(kind: &str, ms: u32) -> Result<String, EngineError> {
    if !(MIN_DRILL_DURATION_MS..=MAX_DRILL_DURATION_MS).contains(&ms) {
        return Err(EngineError::InvalidArgument(format!(
            "a {kind} drill's duration of {} is out of range ({} to {})",
            crate::format_ms(Millis::from(ms)),
            crate::format_ms(Millis::from(MIN_DRILL_DURATION_MS)),
            crate::format_ms(Millis::from(MAX_DRILL_DURATION_MS))
        )));
    }
    Ok(crate::format_ms(Millis::from(ms)))
}

/// The global ranks of `job` on `node_id`.
fn ranks_on(job: &Job, node_id: &str) -> std::ops::Range<u32> {
    let per_node = job.record.spec.gpus_per_node;
    let node_rank = job
        .node_rank(node_id)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let first = node_rank.saturating_mul(per_node);
    first..first.saturating_add(per_node)
}

fn pick_rank(
    asked: Option<u32>,
    ranks: &std::ops::Range<u32>,
    node_id: &str,
    job: &str,
) -> Result<u32, EngineError> {
    match asked {
        None => Ok(ranks.start),
        Some(rank) if ranks.contains(&rank) => Ok(rank),
        Some(rank) => Err(EngineError::InvalidArgument(format!(
            "rank {rank} of job '{job}' does not run on node '{node_id}' (it runs ranks {}-{})",
            ranks.start,
            ranks.end.saturating_sub(1)
        ))),
    }
}

/// A slow drill's cycle: run `run_ms`, stop `stop_ms`, from the node's
/// median step time `c` (time outside collectives, what the straggler
/// detector compares). Run c/2, stop (factor − ½)·c: every step's compute
/// then spans a stop, and a step that ends at a SIGCONT starts the next one
/// early in a run phase, so the cycle locks onto the steps and each takes
/// run + stop = factor · c. A finer cycle would not do: a step that waits
/// on a clock (a GPU kernel, the example trainer's sleep) loses at most one
/// stop phase, however many phases it spans. Returns (run, stop, c).
fn slow_cycle(job: &Job, node_id: &str, factor: f64) -> Result<(u32, u32, f64), EngineError> {
    if !factor.is_finite() || !(MIN_SLOW_FACTOR..=MAX_SLOW_FACTOR).contains(&factor) {
        return Err(EngineError::InvalidArgument(format!(
            "a slow drill's factor {factor} is out of range ({MIN_SLOW_FACTOR} to {MAX_SLOW_FACTOR})"
        )));
    }
    let step_s = job
        .detect
        .stragglers
        .median_step_s(node_id)
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            EngineError::FailedPrecondition(format!(
                "no step time measured for node '{node_id}' in job '{}' yet; a slow drill scales it \
                 (wait until the job has reported a few train steps)",
                job.name()
            ))
        })?;
    let ms = |s: f64| (s * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
    let run_ms = ms(step_s / 2.0).max(MIN_CYCLE_PHASE_MS);
    let stop_ms = ms((factor - 0.5) * step_s).max(MIN_CYCLE_PHASE_MS);
    if stop_ms > MAX_STOP_MS {
        return Err(EngineError::InvalidArgument(format!(
            "a slow drill of ×{factor} on a {step_s:.3}s step would stop the ranks for {} at a time; \
             that is a hang (use a smaller factor, or the hang drill)",
            crate::format_ms(Millis::from(stop_ms))
        )));
    }
    Ok((run_ms, stop_ms, step_s))
}
