//! Engine state rendered as the wire types that supctl and the HTTP API show.

use sup_proto::v1;

use crate::engine::{Engine, Event, GpuHealth, Node, NodeState};

pub fn node_state(state: NodeState) -> v1::NodeState {
    match state {
        NodeState::Joining => v1::NodeState::Joining,
        NodeState::Ready => v1::NodeState::Ready,
        NodeState::Suspect => v1::NodeState::Suspect,
        NodeState::Unreachable => v1::NodeState::Unreachable,
        NodeState::Cordoned => v1::NodeState::Cordoned,
    }
}

fn gpu_health(health: GpuHealth) -> v1::GpuHealth {
    match health {
        GpuHealth::Ok => v1::GpuHealth::Ok,
        GpuHealth::Degraded => v1::GpuHealth::Degraded,
        GpuHealth::Failed => v1::GpuHealth::Failed,
    }
}

pub fn node(node: &Node) -> v1::Node {
    let r = &node.record;
    v1::Node {
        id: r.id.clone(),
        address: r.address.clone(),
        state: node_state(node.state()) as i32,
        job: String::new(),
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
                ..Default::default()
            })
            .collect(),
        cordon: r.cordon.as_ref().map(|c| v1::Cordon {
            reason: c.reason.clone(),
            by: c.by.clone(),
            at_unix_ms: c.at,
        }),
        hostname: r.hostname.clone(),
        agent_version: r.agent_version.clone(),
        registered_at_unix_ms: r.registered_at,
        last_seen_unix_ms: node.last_seen,
        connected: node.connected(),
        gpu_backend: r.gpu_backend.clone(),
    }
}

pub fn status(engine: &Engine) -> v1::ClusterStatus {
    v1::ClusterStatus {
        nodes: engine.nodes().map(node).collect(),
        jobs: Vec::new(),
        spares: engine.spares().map(|n| n.record.id.clone()).collect(),
        ..Default::default()
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
