//! Engine state rendered as the wire types that supctl and the HTTP API show.

use sup_proto::v1;

use crate::convert;
use sup_core::{CheckpointRef, Engine, Event, GpuHealth, Job, Node, NodeState};

pub fn node_state(state: NodeState) -> v1::NodeState {
    match state {
        NodeState::Joining => v1::NodeState::Joining,
        NodeState::Ready => v1::NodeState::Ready,
        NodeState::Suspect => v1::NodeState::Suspect,
        NodeState::Unreachable => v1::NodeState::Unreachable,
        NodeState::Cordoned => v1::NodeState::Cordoned,
        NodeState::Draining => v1::NodeState::Draining,
    }
}

fn gpu_health(health: GpuHealth) -> v1::GpuHealth {
    match health {
        GpuHealth::Ok => v1::GpuHealth::Ok,
        GpuHealth::Degraded => v1::GpuHealth::Degraded,
        GpuHealth::Failed => v1::GpuHealth::Failed,
    }
}

pub fn node(engine: &Engine, node: &Node) -> v1::Node {
    let r = &node.record;
    v1::Node {
        id: r.id.clone(),
        address: r.address.clone(),
        state: node_state(node.state()) as i32,
        job: engine
            .job_of(&r.id)
            .map(|j| j.name().to_owned())
            .unwrap_or_default(),
        gpus: r
            .gpus
            .iter()
            .map(|g| v1::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                health: gpu_health(g.health) as i32,
                pci_bus_id: g.pci_bus_id.clone(),
                memory_total_bytes: g.memory_total_bytes,
                reading: node.readings.get(&g.index).map(|x| v1::GpuReading {
                    index: x.index,
                    temperature_c: x.temperature_c,
                    power_w: x.power_w,
                    utilization_gpu_pct: x.utilization_gpu_pct,
                    utilization_memory_pct: x.utilization_memory_pct,
                    sm_clock_mhz: x.sm_clock_mhz,
                    memory_clock_mhz: x.memory_clock_mhz,
                    memory_used_bytes: x.memory_used_bytes,
                }),
                health_reason: g.health_reason.clone(),
                evidence: g.evidence.clone(),
                recent_xids: node
                    .recent_xids
                    .get(&g.index)
                    .map(|x| x.iter().map(convert::xid_event_to_wire).collect())
                    .unwrap_or_default(),
                recovery_action: g.recovery_action,
            })
            .collect(),
        cordon: r.cordon.as_ref().map(|c| v1::Cordon {
            reason: c.reason.clone(),
            by: c.by.clone(),
            at_unix_ms: c.at,
            validation: c.validation.clone().unwrap_or_default(),
        }),
        hostname: r.hostname.clone(),
        agent_version: r.agent_version.clone(),
        registered_at_unix_ms: r.registered_at,
        last_seen_unix_ms: node.last_seen,
        connected: node.connected(),
        gpu_backend: r.gpu_backend.clone(),
        slurm: node.scheduler.as_ref().map(|s| v1::SlurmNode {
            name: s.name.clone(),
            state: s.state_name(),
            reason: s.reason.clone(),
            unavailable: s.unavailable(),
            drained_by_sup: s.drained_by_sup(),
        }),
        drain: r.drain.as_ref().map(|d| v1::Drain {
            reason: d.reason.clone(),
            by: d.by.clone(),
            at_unix_ms: d.at,
            deadline_unix_ms: d.deadline,
            after_step: d.after_step,
        }),
    }
}

/// Jobs, spares and breaker; the nodes are made one by one
/// (`crate::cluster::Cluster::build`).
pub fn status_without_nodes(engine: &Engine) -> v1::ClusterStatus {
    let breaker = engine.breaker();
    let pool = engine.spare_pool();
    v1::ClusterStatus {
        jobs: engine.jobs().map(|j| job_in(engine, j)).collect(),
        spares: pool
            .free
            .iter()
            .chain(pool.lent.iter().map(|(node, _)| node))
            .cloned()
            .collect(),
        breaker: Some(v1::Breaker {
            open: breaker.open,
            reason: breaker.reason.clone(),
            since_unix_ms: breaker.since,
        }),
        spares_target: pool.target,
        spares_lent: pool.lent.into_iter().map(|(node, _)| node).collect(),
        // Counts and caps belong to the answers made from the whole
        // picture (crate::pages::status_summary).
        ..Default::default()
    }
}

pub fn job(j: &Job) -> v1::Job {
    let r = &j.record;
    v1::Job {
        name: r.spec.name.clone(),
        state: r.state.as_str().to_owned(),
        generation: r.generation,
        world_size: j.world_size(),
        nodes: r.nodes.clone(),
        step: j.step,
        checkpoint: r.checkpoint.as_ref().map(checkpoint),
        restarts: r.restarts,
        reason: r.reason.clone(),
        spec_toml: r.spec_toml.clone(),
        desired_nodes: r.spec.nodes,
        min_nodes: r.spec.min_nodes(),
        priority: r.spec.priority.as_str().to_owned(),
        submitted_at_unix_ms: r.submitted_at,
        tokens_per_s: j.tokens_per_s(),
        mfu: None,
        node_stats: j
            .node_stats()
            .into_iter()
            .map(|n| v1::JobNodeStats {
                node: n.node,
                step_time_s: n.step_time_s,
                slowdown: n.slowdown,
                straggler: n.straggler,
                tokens_per_s: n.tokens_per_s,
            })
            .collect(),
        rollbacks: r.rollbacks,
        goodput: Some(goodput(j, crate::actor::now_ms())),
        node_count: u32::try_from(r.nodes.len()).unwrap_or(u32::MAX),
    }
}

/// The job's goodput booking read at `now` (the engine has no clock).
pub fn goodput(j: &Job, now: sup_core::Millis) -> v1::JobGoodput {
    use sup_core::Bucket;
    let spec = &j.record.spec;
    let g = j.record.goodput.report(now, spec.nodes, spec.gpus_per_node);
    let s = |b: Bucket| g.seconds_in(b);
    v1::JobGoodput {
        bucket: g.bucket.as_str().to_owned(),
        wall_s: g.wall_s,
        productive_s: s(Bucket::Productive),
        redone_s: s(Bucket::Redone),
        detection_s: s(Bucket::Detection),
        restart_s: s(Bucket::Restart),
        checkpoint_save_s: s(Bucket::CheckpointSave),
        waiting_s: s(Bucket::Waiting),
        stopped_s: s(Bucket::Stopped),
        ettr: g.ettr,
        gpus: spec.nodes.saturating_mul(spec.gpus_per_node),
        failures: g.failures,
        failures_per_node_hour: g.failures_per_node_hour,
        checkpoint_cost_s: g.checkpoint_cost_s,
        checkpoint_interval_s: g.checkpoint_interval_s,
        checkpoint_interval_steps: g.checkpoint_interval_steps,
        recommended_checkpoint_interval_s: g.recommended_interval_s,
        recommended_gain: g.recommended_gain,
        lost_seconds_closed: Bucket::ALL
            .into_iter()
            .filter(|b| *b != Bucket::Productive)
            .map(|b| {
                let ms = j.record.goodput.ms(b);
                (b.as_str().to_owned(), ms as f64 / 1000.0)
            })
            .collect(),
    }
}

/// A job with its MFU, which needs the GPU models of its nodes.
pub fn job_in(engine: &Engine, j: &Job) -> v1::Job {
    let mut view = job(j);
    view.mfu = engine.job_mfu(j);
    view
}

pub fn checkpoints(j: &Job) -> Vec<v1::Checkpoint> {
    // Before any agent reported this run (e.g. right after a restart of
    // supd), the newest known one is still worth showing.
    let list = if j.catalog.is_empty() {
        j.record.checkpoint.as_slice()
    } else {
        j.catalog.as_slice()
    };
    list.iter().map(checkpoint).collect()
}

pub fn checkpoint(c: &CheckpointRef) -> v1::Checkpoint {
    v1::Checkpoint {
        step: c.step,
        path: c.path.clone(),
        verified: c.verified.clone(),
    }
}

pub fn event(e: &Event) -> v1::Event {
    v1::Event {
        seq: e.seq,
        at_unix_ms: e.at,
        kind: e.kind.as_str().to_owned(),
        node: e.node.clone().unwrap_or_default(),
        job: e.job.clone().unwrap_or_default(),
        reason: e.reason.clone(),
    }
}

/// Events after `after_seq`, oldest first, at most the newest `limit` of
/// them (0: no limit).
pub fn events(engine: &Engine, after_seq: u64, limit: usize) -> Vec<v1::Event> {
    let matching: Vec<&Event> = engine.events().filter(|e| e.seq > after_seq).collect();
    let skip = if limit == 0 {
        0
    } else {
        matching.len().saturating_sub(limit)
    };
    matching.into_iter().skip(skip).map(event).collect()
}
