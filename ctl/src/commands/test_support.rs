//! Proto values the commands' tests build their views from.

use sup_proto::v1;

pub(crate) const NOW: i64 = 1_800_000_000_000;

pub(crate) fn gpus(healths: &[v1::GpuHealth]) -> Vec<v1::Gpu> {
    healths
        .iter()
        .enumerate()
        .map(|(i, h)| v1::Gpu {
            index: u32::try_from(i).unwrap(),
            uuid: format!("GPU-{i}"),
            name: "NVIDIA H100".into(),
            health: *h as i32,
            ..Default::default()
        })
        .collect()
}

pub(crate) fn node(id: &str, state: v1::NodeState) -> v1::Node {
    v1::Node {
        id: id.into(),
        address: format!("10.0.0.{}", id.len()),
        state: state as i32,
        gpus: gpus(&[v1::GpuHealth::Ok; 8]),
        last_seen_unix_ms: NOW - 3_000,
        connected: true,
        ..Default::default()
    }
}

pub(crate) fn cordon(reason: &str) -> Option<v1::Cordon> {
    Some(v1::Cordon {
        validation: String::new(),
        reason: reason.into(),
        by: "alice".into(),
        at_unix_ms: NOW - 300_000,
    })
}

pub(crate) fn cluster() -> v1::ClusterStatus {
    let mut busy = node("gpu-node-001", v1::NodeState::Ready);
    busy.job = "llama-70b".into();
    let mut cordoned = node("gpu-node-002", v1::NodeState::Cordoned);
    cordoned.cordon = cordon("xid 79: GPU fell off the bus");
    let mut suspect = node("gpu-node-003", v1::NodeState::Suspect);
    suspect.gpus = gpus(&[v1::GpuHealth::Ok, v1::GpuHealth::Failed]);
    let mut gone = node("gpu-node-004", v1::NodeState::Unreachable);
    gone.connected = false;
    gone.last_seen_unix_ms = NOW - 150_000;
    v1::ClusterStatus {
        nodes: vec![
            busy,
            node("gpu-node-005", v1::NodeState::Ready),
            cordoned,
            suspect,
            gone,
        ],
        jobs: vec![v1::Job {
            name: "llama-70b".into(),
            ..Default::default()
        }],
        spares: vec!["gpu-node-005".into()],
        ..Default::default()
    }
}

/// The cells of the table row that starts with `first`.
pub(crate) fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{text}"));
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

pub(crate) fn job(name: &str, state: &str) -> v1::Job {
    v1::Job {
        name: name.into(),
        state: state.into(),
        generation: 3,
        world_size: 8,
        nodes: vec!["gpu-node-001".into(), "gpu-node-005".into()],
        step: Some(1200),
        checkpoint: Some(v1::Checkpoint {
            step: 1000,
            path: "/mnt/ckpt/llm/step-1000".into(),
            ..Default::default()
        }),
        restarts: 2,
        desired_nodes: 4,
        min_nodes: 2,
        priority: "normal".into(),
        submitted_at_unix_ms: NOW - 600_000,
        tokens_per_s: Some(12_345.0),
        mfu: Some(0.415),
        ..Default::default()
    }
}

/// The lines under "Needs attention:".
pub(crate) fn attention(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| *l != "Needs attention:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

pub(crate) fn troubled_cluster() -> v1::ClusterStatus {
    let mut s = cluster();
    let mut failed = job("llm-70b-finetune", "failed");
    failed.reason = "restart budget exhausted (20 restarts)".into();
    let mut recovering = job("llm-7b", "recovering");
    recovering.reason = "node gpu-node-002 cordoned: xid 79".into();
    let pending = job("eval", "pending");
    s.jobs = vec![
        job("llama-70b", "running"),
        pending,
        recovering,
        failed,
        job("done", "succeeded"),
    ];
    s.spares_target = 2;
    s.breaker = Some(v1::Breaker {
        open: true,
        reason: "4 of 5 nodes in 60s".into(),
        since_unix_ms: NOW - 120_000,
    });
    s
}

pub(crate) fn xid(gpu: u32, code: u32, ago_ms: i64, source: &str) -> v1::XidEvent {
    v1::XidEvent {
        gpu_index: gpu,
        xid: code,
        at_unix_ms: NOW - ago_ms,
        source: source.into(),
        ..Default::default()
    }
}
