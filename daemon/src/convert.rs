//! The one place where wire types meet the engine's: agent messages and
//! operator requests become `sup_core` inputs, engine outputs become the
//! messages agents receive. Nothing is decided here; a value the engine
//! could not represent (an unknown enum code) maps to the variant that
//! makes the engine refuse it with its usual message.

use sup_core::{
    Checkpoint, CheckpointCatalog, CheckpointsSetAside, DesiredAssignment, Drill, DrillFault,
    GpuCauseKind, GpuHealth, GpuInventory, GpuReading, GpuVerdict, HealthReport, JobAssignment,
    JobProgress, RankExited, RankStatus, RecoveryAction, Registration, SessionId, SetAsideEntry,
    UnverifiedCheckpoint, XidEvent,
};
use sup_proto::v1;

/// An agent's report other than its registration and telemetry, in the
/// engine's terms (log responses are the actor's business, not the
/// engine's, and keep their wire type).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentReport {
    Health(HealthReport),
    Ranks(RankStatus),
    RankExited(RankExited),
    Checkpoints(CheckpointCatalog),
    CheckpointsSetAside(CheckpointsSetAside),
    Progress(JobProgress),
    LogResponse(v1::LogResponse),
    ValidationResult(v1::ValidationResult),
}

/// The report a stream message carries; `None` for the messages that are
/// not reports (Register, Telemetry), which the stream handles itself.
pub fn agent_report(body: v1::agent_message::Body) -> Option<AgentReport> {
    use v1::agent_message::Body;
    Some(match body {
        Body::Health(h) => AgentReport::Health(health_report(h)),
        Body::Ranks(r) => AgentReport::Ranks(rank_status(r)),
        Body::RankExited(e) => AgentReport::RankExited(rank_exited(e)),
        Body::Checkpoints(c) => AgentReport::Checkpoints(CheckpointCatalog {
            job: c.job,
            checkpoints: c.checkpoints.into_iter().map(checkpoint).collect(),
            unverified: c
                .unverified
                .into_iter()
                .map(|u| UnverifiedCheckpoint {
                    step: u.step,
                    path: u.path,
                    problem: u.problem,
                })
                .collect(),
        }),
        Body::CheckpointsSetAside(r) => AgentReport::CheckpointsSetAside(CheckpointsSetAside {
            job: r.job,
            generation: r.generation,
            resume_step: r.resume_step,
            entries: r
                .entries
                .into_iter()
                .map(|e| SetAsideEntry {
                    step: e.step,
                    from: e.from,
                    to: e.to,
                    earlier: e.earlier,
                })
                .collect(),
            detail: r.detail,
        }),
        Body::Progress(p) => AgentReport::Progress(JobProgress {
            job: p.job,
            generation: p.generation,
            step: p.step,
            tokens: p.tokens,
            loss: p.loss,
            step_time_s: p.step_time_s,
            phase: p.phase,
            min_step: p.min_step,
        }),
        Body::LogResponse(r) => AgentReport::LogResponse(r),
        Body::ValidationResult(r) => AgentReport::ValidationResult(r),
        Body::Register(_) | Body::Telemetry(_) => return None,
    })
}

pub fn registration(session: SessionId, r: v1::Register) -> Registration {
    Registration {
        validates: r.validates,
        session,
        node_id: r.node_id,
        address: r.address,
        hostname: r.hostname,
        agent_version: r.agent_version,
        instance_id: r.instance_id,
        gpu_backend: r.gpu_backend,
        gpus: r
            .gpus
            .into_iter()
            .map(|g| GpuInventory {
                index: g.index,
                uuid: g.uuid,
                name: g.name,
                pci_bus_id: g.pci_bus_id,
                memory_total_bytes: g.memory_total_bytes,
            })
            .collect(),
    }
}

pub fn readings(t: v1::Telemetry) -> Vec<GpuReading> {
    t.gpus
        .into_iter()
        .map(|g| GpuReading {
            index: g.index,
            temperature_c: g.temperature_c,
            power_w: g.power_w,
            utilization_gpu_pct: g.utilization_gpu_pct,
            utilization_memory_pct: g.utilization_memory_pct,
            sm_clock_mhz: g.sm_clock_mhz,
            memory_clock_mhz: g.memory_clock_mhz,
            memory_used_bytes: g.memory_used_bytes,
        })
        .collect()
}

/// Unknown or unspecified health reads as ok: only an explicit verdict
/// moves a GPU (as before the engine had its own types).
pub fn gpu_health(code: i32) -> GpuHealth {
    match v1::GpuHealth::try_from(code) {
        Ok(v1::GpuHealth::Failed) => GpuHealth::Failed,
        Ok(v1::GpuHealth::Degraded) => GpuHealth::Degraded,
        _ => GpuHealth::Ok,
    }
}

pub fn gpu_health_to_wire(health: GpuHealth) -> v1::GpuHealth {
    match health {
        GpuHealth::Ok => v1::GpuHealth::Ok,
        GpuHealth::Degraded => v1::GpuHealth::Degraded,
        GpuHealth::Failed => v1::GpuHealth::Failed,
    }
}

/// An unknown code is `Unspecified`: the engine refuses a drill with it
/// and records no recovery action from a verdict with it.
pub fn recovery_action(code: i32) -> RecoveryAction {
    RecoveryAction::from_code(code).unwrap_or(RecoveryAction::Unspecified)
}

/// An unknown or unspecified kind (a newer agent's) is dropped: it cannot
/// be judged, and dropping it errs toward not corroborating a straggler.
pub fn gpu_cause_kind(code: i32) -> Option<GpuCauseKind> {
    Some(match v1::GpuCauseKind::try_from(code).ok()? {
        v1::GpuCauseKind::Unspecified => return None,
        v1::GpuCauseKind::Xid => GpuCauseKind::Xid,
        v1::GpuCauseKind::RecoveryAction => GpuCauseKind::RecoveryAction,
        v1::GpuCauseKind::Lost => GpuCauseKind::Lost,
        v1::GpuCauseKind::MemoryFault => GpuCauseKind::MemoryFault,
        v1::GpuCauseKind::EccPressure => GpuCauseKind::EccPressure,
        v1::GpuCauseKind::PcieDowngrade => GpuCauseKind::PcieDowngrade,
        v1::GpuCauseKind::Nvlink => GpuCauseKind::Nvlink,
        v1::GpuCauseKind::Throttle => GpuCauseKind::Throttle,
    })
}

pub fn health_report(h: v1::HealthReport) -> HealthReport {
    HealthReport {
        verdicts: h
            .verdicts
            .into_iter()
            .map(|v| GpuVerdict {
                index: v.index,
                uuid: v.uuid,
                health: gpu_health(v.health),
                reason: v.reason,
                evidence: v.evidence,
                recovery_action: recovery_action(v.recovery_action),
                drill: v.drill,
                causes: v.causes.into_iter().filter_map(gpu_cause_kind).collect(),
            })
            .collect(),
        xids: h.xids.into_iter().map(xid_event).collect(),
        visible_gpus: h.visible_gpus,
    }
}

pub fn xid_event(x: v1::XidEvent) -> XidEvent {
    XidEvent {
        gpu_index: x.gpu_index,
        uuid: x.uuid,
        xid: x.xid,
        at_unix_ms: x.at_unix_ms,
        source: x.source,
        detail: x.detail,
        application: x.application,
    }
}

pub fn xid_event_to_wire(x: &XidEvent) -> v1::XidEvent {
    v1::XidEvent {
        gpu_index: x.gpu_index,
        uuid: x.uuid.clone(),
        xid: x.xid,
        at_unix_ms: x.at_unix_ms,
        source: x.source.clone(),
        detail: x.detail.clone(),
        application: x.application,
    }
}

fn rank_status(r: v1::RankStatus) -> RankStatus {
    RankStatus {
        job: r.job,
        generation: r.generation,
        running_local_ranks: r.running_local_ranks,
        launched: r.launched,
        launch_error: r.launch_error,
    }
}

fn rank_exited(e: v1::RankExited) -> RankExited {
    RankExited {
        job: e.job,
        generation: e.generation,
        rank: e.rank,
        local_rank: e.local_rank,
        exit_code: e.exit_code,
        signal: e.signal,
        log_tail: e.log_tail,
        stopped_by_agent: e.stopped_by_agent,
        stack_dump: e.stack_dump,
        lease_expired: e.lease_expired,
    }
}

fn checkpoint(c: v1::Checkpoint) -> Checkpoint {
    Checkpoint {
        step: c.step,
        path: c.path,
        verified: c.verified,
    }
}

fn checkpoint_to_wire(c: Checkpoint) -> v1::Checkpoint {
    v1::Checkpoint {
        step: c.step,
        path: c.path,
        verified: c.verified,
    }
}

/// An operator's drill. The job and generation, and what the engine decides
/// (a slow drill's cycle), are not taken from the client: the engine fills
/// them in. Durations beyond `u32` milliseconds cannot be sent.
pub fn drill(d: v1::Drill) -> Drill {
    use v1::drill::Fault;
    Drill {
        gpu_index: d.gpu_index,
        fault: d.fault.map(|f| match f {
            Fault::Xid(code) => DrillFault::Xid(code),
            Fault::RecoveryAction(code) => DrillFault::RecoveryAction(recovery_action(code)),
            Fault::Hang(_) => DrillFault::Hang,
            Fault::Slow(s) => DrillFault::Slow {
                factor: s.factor,
                duration_ms: s.duration_ms,
                run_ms: 0,
                stop_ms: 0,
            },
            Fault::Crash(c) => DrillFault::Crash { rank: c.rank },
            Fault::Vanish(v) => DrillFault::Vanish {
                duration_ms: v.duration_ms,
            },
            Fault::Partition(p) => DrillFault::Partition {
                duration_ms: p.duration_ms,
            },
            Fault::TornCheckpoint(t) => DrillFault::TornCheckpoint { rank: t.rank },
        }),
        by: d.by,
        job: String::new(),
        generation: 0,
    }
}

pub fn drill_to_wire(d: Drill) -> v1::Drill {
    use v1::drill::Fault;
    v1::Drill {
        gpu_index: d.gpu_index,
        fault: d.fault.map(|f| match f {
            DrillFault::Xid(code) => Fault::Xid(code),
            DrillFault::RecoveryAction(a) => Fault::RecoveryAction(a.code()),
            DrillFault::Hang => Fault::Hang(v1::HangDrill {}),
            DrillFault::Slow {
                factor,
                duration_ms,
                run_ms,
                stop_ms,
            } => Fault::Slow(v1::SlowDrill {
                factor,
                duration_ms,
                run_ms,
                stop_ms,
            }),
            DrillFault::Crash { rank } => Fault::Crash(v1::CrashDrill { rank }),
            DrillFault::Vanish { duration_ms } => Fault::Vanish(v1::VanishDrill { duration_ms }),
            DrillFault::Partition { duration_ms } => {
                Fault::Partition(v1::PartitionDrill { duration_ms })
            }
            DrillFault::TornCheckpoint { rank } => {
                Fault::TornCheckpoint(v1::TornCheckpointDrill { rank })
            }
        }),
        by: d.by,
        job: d.job,
        generation: d.generation,
    }
}

pub fn assignment_to_wire(a: DesiredAssignment) -> v1::DesiredAssignment {
    v1::DesiredAssignment {
        generation: a.generation,
        job: a.job.map(job_assignment_to_wire),
        postmortem_generation: a.postmortem_generation,
    }
}

fn job_assignment_to_wire(j: JobAssignment) -> v1::JobAssignment {
    v1::JobAssignment {
        job: j.job,
        command: j.command,
        workdir: j.workdir,
        env: j.env.into_iter().collect(),
        node_rank: j.node_rank,
        nnodes: j.nnodes,
        ranks_per_node: j.ranks_per_node,
        world_size: j.world_size,
        master_addr: j.master_addr,
        master_port: j.master_port,
        restart_count: j.restart_count,
        max_restarts: j.max_restarts,
        checkpoint_dir: j.checkpoint_dir,
        checkpoint_layout: j.checkpoint_layout,
        resume_from: j.resume_from.map(checkpoint_to_wire),
        stop_grace_ms: j.stop_grace_ms,
        gpu_indices: j.gpu_indices,
        progress_regex: j.progress_regex,
        user: j.user,
        group: j.group,
        slurm_job_id: j.slurm_job_id,
        set_aside_dir: j.set_aside_dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recovery_action_code_round_trips() {
        for wire in [
            v1::RecoveryAction::Unspecified,
            v1::RecoveryAction::None,
            v1::RecoveryAction::GpuReset,
            v1::RecoveryAction::NodeReboot,
            v1::RecoveryAction::DrainP2p,
            v1::RecoveryAction::DrainAndReset,
        ] {
            let engine = recovery_action(wire as i32);
            assert_eq!(engine.code(), wire as i32);
            assert_eq!(engine.as_str(), wire.as_str_name());
        }
        assert_eq!(recovery_action(99), RecoveryAction::Unspecified);
    }

    #[test]
    fn every_gpu_health_round_trips() {
        for h in [GpuHealth::Ok, GpuHealth::Degraded, GpuHealth::Failed] {
            assert_eq!(gpu_health(gpu_health_to_wire(h) as i32), h);
        }
        assert_eq!(gpu_health(0), GpuHealth::Ok);
    }

    #[test]
    fn every_gpu_cause_kind_converts_and_unknown_ones_are_dropped() {
        let mut seen = Vec::new();
        for code in 1..=8 {
            seen.push(gpu_cause_kind(code).expect("a known kind"));
        }
        seen.dedup();
        assert_eq!(seen.len(), 8, "each wire kind is its own: {seen:?}");
        assert_eq!(gpu_cause_kind(0), None);
        assert_eq!(gpu_cause_kind(99), None);
        assert_eq!(
            gpu_cause_kind(v1::GpuCauseKind::Throttle as i32),
            Some(GpuCauseKind::Throttle)
        );
    }
}
