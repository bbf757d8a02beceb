//! The scheduler task against a fake Slurm and the real actor: drains land
//! once, failures are retried with backoff, only sup's drains are resumed.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::*;
use crate::actor::Actor;
use crate::metrics::Counters;
use crate::store::MemoryStore;
use sup_core::{Engine, EngineConfig, GpuInventory, Registration};

/// Slurm as a map of nodes; `scontrol` calls are counted and the first
/// `fail_next` of them fail.
#[derive(Default)]
struct FakeSlurm {
    nodes: Mutex<BTreeMap<String, SchedulerNode>>,
    calls: Mutex<Vec<SchedulerOp>>,
    fail_next: Mutex<u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler for Arc<FakeSlurm> {
    async fn observe(&self) -> Result<Vec<SchedulerNode>, SchedulerError> {
        Ok(lock(&self.nodes).values().cloned().collect())
    }

    async fn apply(&self, op: &SchedulerOp) -> Result<(), SchedulerError> {
        lock(&self.calls).push(op.clone());
        let mut fail = lock(&self.fail_next);
        if *fail > 0 {
            *fail -= 1;
            return Err(SchedulerError {
                command: "scontrol update".to_owned(),
                detail: "Unable to contact slurm controller".to_owned(),
            });
        }
        let mut nodes = lock(&self.nodes);
        let Some(node) = nodes.get_mut(op.name()) else {
            return Err(SchedulerError {
                command: "scontrol update".to_owned(),
                detail: "Invalid node name specified".to_owned(),
            });
        };
        match op {
            SchedulerOp::Drain { reason, .. } => {
                node.flags = vec!["drain".to_owned()];
                node.reason = reason.clone();
            }
            SchedulerOp::Resume { .. } => {
                node.flags.clear();
                node.reason.clear();
            }
        }
        Ok(())
    }
}

fn registration(id: &str, session: u64) -> Registration {
    Registration {
        validates: false,
        session,
        node_id: id.into(),
        address: format!("10.0.0.{session}"),
        hostname: id.into(),
        agent_version: "0".into(),
        instance_id: format!("i-{id}"),
        gpu_backend: "sim".into(),
        gpus: vec![GpuInventory {
            index: 0,
            uuid: format!("GPU-{id}"),
            name: "H100".into(),
            pci_bus_id: "0".into(),
            memory_total_bytes: None,
        }],
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn drains_land_once_after_a_failure_and_only_sups_drains_are_resumed() {
    let (actor, handle) = Actor::new(
        Engine::new(EngineConfig::default()),
        MemoryStore::default(),
        Duration::from_secs(1),
        Arc::new(Counters::default()),
        Arc::new(AtomicBool::new(true)),
    );
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(actor.run(stop_rx.clone()));
    let mut streams = Vec::new();
    for (i, id) in ["n1", "n2"].into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        streams.push(rx);
        let session = u64::try_from(i).unwrap_or(0) + 1;
        // n2's agent says Slurm calls it gpu-b.
        let name = if id == "n2" { "gpu-b" } else { "" };
        handle
            .register_as(
                registration(id, session),
                name.to_owned(),
                tx,
                crate::actor::LivenessStamp::default(),
            )
            .await
            .expect("register");
    }
    let slurm = Arc::new(FakeSlurm::default());
    for name in ["n1", "gpu-b"] {
        lock(&slurm.nodes).insert(
            name.to_owned(),
            SchedulerNode {
                name: name.to_owned(),
                base: "idle".to_owned(),
                ..Default::default()
            },
        );
    }
    *lock(&slurm.fail_next) = 1;
    tokio::spawn(run(
        slurm.clone(),
        handle.clone(),
        true,
        Duration::from_millis(20),
        stop_rx,
    ));
    let drained =
        |s: &FakeSlurm, name: &str| lock(&s.nodes).get(name).is_some_and(|n| n.drained_by_sup());

    handle
        .cordon("n2".into(), "Xid 79".into(), "op".into(), String::new())
        .await
        .expect("cordon");
    until("the drain to land under Slurm's name", || {
        drained(&slurm, "gpu-b")
    })
    .await;
    // One failed call, one that worked after the backoff, then none: the
    // passes that follow see it drained.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = lock(&slurm.calls).clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        matches!(&calls[1], SchedulerOp::Drain { reason, .. } if reason == "sup: Xid 79"),
        "{calls:?}"
    );

    handle
        .uncordon("n2".into(), String::new(), "op".into(), String::new(), true)
        .await
        .expect("uncordon");
    until("sup's drain to be resumed", || !drained(&slurm, "gpu-b")).await;

    // Somebody else's drain: seen by sup, never resumed by it.
    if let Some(n) = lock(&slurm.nodes).get_mut("n1") {
        n.flags = vec!["drain".to_owned()];
        n.reason = "maintenance".to_owned();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = handle.snapshot().await.expect("snapshot");
        let node = snapshot.node("n1").expect("n1");
        if let Some(s) = node.slurm.as_ref().filter(|s| s.unavailable) {
            assert_eq!(
                (s.state.as_str(), s.reason.as_str()),
                ("drained", "maintenance")
            );
            break;
        }
        assert!(Instant::now() < deadline, "sup never saw the drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle
        .uncordon("n1".into(), String::new(), "op".into(), String::new(), true)
        .await
        .expect("uncordon");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        lock(&slurm.calls).len(),
        3,
        "only the resume of sup's drain"
    );
    assert_eq!(
        lock(&slurm.nodes).get("n1").map(|n| n.reason.clone()),
        Some("maintenance".to_owned())
    );
}

#[tokio::test]
async fn observe_mode_shows_slurms_drains_and_changes_nothing() {
    let (actor, handle) = Actor::new(
        Engine::new(EngineConfig::default()),
        MemoryStore::default(),
        Duration::from_secs(1),
        Arc::new(Counters::default()),
        Arc::new(AtomicBool::new(true)),
    );
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(actor.run(stop_rx.clone()));
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    handle
        .register(registration("n1", 1), tx)
        .await
        .expect("register");
    let slurm = Arc::new(FakeSlurm::default());
    lock(&slurm.nodes).insert(
        "n1".to_owned(),
        SchedulerNode {
            name: "n1".to_owned(),
            base: "idle".to_owned(),
            ..Default::default()
        },
    );
    tokio::spawn(run(
        slurm.clone(),
        handle.clone(),
        false,
        Duration::from_millis(20),
        stop_rx,
    ));
    handle
        .cordon("n1".into(), "Xid 79".into(), "op".into(), String::new())
        .await
        .expect("cordon");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = handle.snapshot().await.expect("snapshot");
        if snapshot.node("n1").expect("n1").slurm.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "sup never saw Slurm's view");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(lock(&slurm.calls).is_empty(), "observe changes nothing");
}
