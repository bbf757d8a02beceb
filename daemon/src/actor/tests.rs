//! The actor end to end on an in-memory store: acknowledgements after
//! commit, fail-closed on a failed commit, request ids, takeovers.

use super::*;
use crate::store::MemoryStore;
use sup_core::{EngineConfig, GpuInventory, NodeState, Registration};

fn registration(session: SessionId) -> Registration {
    Registration {
        validates: false,
        session,
        node_id: "n1".into(),
        address: "10.0.0.1".into(),
        hostname: "h".into(),
        agent_version: "0".into(),
        instance_id: "i".into(),
        gpu_backend: "sim".into(),
        gpus: vec![GpuInventory {
            index: 0,
            uuid: "GPU-0".into(),
            name: "H100".into(),
            pci_bus_id: "0".into(),
            memory_total_bytes: None,
        }],
    }
}

struct Running {
    handle: SupervisorHandle,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    ready: Arc<AtomicBool>,
    counters: Arc<Counters>,
    _stop: watch::Sender<bool>,
}

fn start(store: MemoryStore) -> Running {
    let ready = Arc::new(AtomicBool::new(true));
    let counters = Arc::new(Counters::default());
    let (actor, handle) = Actor::new(
        Engine::new(EngineConfig::default()),
        store,
        Duration::from_secs(1),
        counters.clone(),
        ready.clone(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(actor.run(stop_rx));
    Running {
        handle,
        task,
        ready,
        counters,
        _stop: stop,
    }
}

#[tokio::test]
async fn registration_is_acknowledged_on_the_stream_after_commit() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let (tx, mut rx) = mpsc::channel(4);
    let state = handle
        .register(registration(1), tx)
        .await
        .expect("register");
    assert_eq!(state, NodeState::Joining);
    let msg = *rx.recv().await.expect("message");
    assert!(matches!(
        msg.body,
        Some(v1::supervisor_message::Body::Registered(r)) if r.node_id == "n1" && r.telemetry_interval_ms == 1000
    ));
    let snapshot = handle.snapshot().await.expect("status");
    assert_eq!(snapshot.cluster.nodes.len(), 1);
}

#[tokio::test]
async fn a_failed_commit_fails_the_request_and_stops_serving() {
    let store = MemoryStore {
        fail_writes: true,
        ..Default::default()
    };
    let running = start(store);
    let Running {
        handle,
        task,
        ready,
        _stop,
        ..
    } = running;
    let (tx, _rx) = mpsc::channel(4);
    let err = handle
        .register(registration(1), tx)
        .await
        .expect_err("must not be acknowledged");
    assert!(matches!(err, ActorError::Unavailable(_)), "{err}");
    assert!(task.await.expect("join").is_err());
    assert!(!ready.load(Ordering::SeqCst));
    assert!(matches!(
        handle.ping().await,
        Err(ActorError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_retried_drill_or_breaker_reset_takes_effect_once() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let (tx, _rx) = mpsc::channel(16);
    handle
        .register(registration(1), tx)
        .await
        .expect("register");
    let drill = sup_core::Drill {
        gpu_index: 0,
        fault: Some(sup_core::DrillFault::Xid(79)),
        by: "alice".into(),
        ..Default::default()
    };
    let first = handle
        .drill("n1".into(), drill.clone(), "alice".into(), "req-1".into())
        .await
        .expect("drill");
    let again = handle
        .drill("n1".into(), drill, "alice".into(), "req-1".into())
        .await
        .expect("replayed drill");
    assert_eq!(
        again,
        format!("already applied (request req-1): {first}"),
        "the retry is answered with what happened"
    );
    let drills = handle
        .snapshot()
        .await
        .expect("events")
        .events(0, 1000)
        .iter()
        .filter(|e| e.reason.starts_with("drill by alice"))
        .count();
    assert_eq!(drills, 1, "one drill injected for two deliveries");

    let reused = handle
        .reset_breaker("alice".into(), "test".into(), "req-1".into())
        .await
        .expect_err("an id used for a drill cannot reset the breaker");
    assert!(
        reused.to_string().contains("already used for drill"),
        "{reused}"
    );
    let (_, message) = handle
        .reset_breaker("alice".into(), "test".into(), "req-2".into())
        .await
        .expect("reset");
    let (changed, replayed) = handle
        .reset_breaker("alice".into(), "test".into(), "req-2".into())
        .await
        .expect("replayed reset");
    assert!(!changed);
    assert_eq!(
        replayed,
        format!("already applied (request req-2): {message}")
    );
}

#[tokio::test]
async fn takeover_ends_the_old_stream() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let (tx1, mut rx1) = mpsc::channel(4);
    handle.register(registration(1), tx1).await.expect("first");
    let _ = rx1.recv().await;
    let (tx2, _rx2) = mpsc::channel(4);
    let mut second = registration(2);
    second.instance_id = "restarted".into();
    handle.register(second, tx2).await.expect("takeover");
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while rx1.recv().await.is_some() {}
    })
    .await;
    assert!(drained.is_ok(), "old stream must end");
}

#[tokio::test]
async fn xids_are_counted_once_after_the_report_is_applied_and_only_for_registered_gpus() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let (tx, _rx) = mpsc::channel(16);
    handle
        .register(registration(1), tx)
        .await
        .expect("register");
    let xid = |gpu_index: u32, uuid: &str, xid: u32| sup_core::XidEvent {
        gpu_index,
        uuid: uuid.into(),
        xid,
        source: "nvml".into(),
        ..Default::default()
    };
    let report = |xids| {
        crate::convert::AgentReport::Health(sup_core::HealthReport {
            xids,
            ..Default::default()
        })
    };
    // Registered GPU 0 (GPU-0), twice; a forged index; a forged UUID; and
    // the same from a replaced stream.
    handle
        .agent_report(
            "n1".into(),
            1,
            report(vec![
                xid(0, "GPU-0", 79),
                xid(0, "", 79),
                xid(5, "GPU-5", 79),
                xid(0, "GPU-forged", 48),
            ]),
        )
        .await
        .expect("report");
    handle
        .agent_report("n1".into(), 999, report(vec![xid(0, "GPU-0", 79)]))
        .await
        .expect("stale report");
    // A read after the reports: the actor handles requests in order.
    handle.ping().await.expect("ping");
    let counts = running.counters.xids.lock().expect("xids");
    let seen: Vec<_> = counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
    assert_eq!(
        seen,
        vec![(("n1".to_owned(), 0, "GPU-0".to_owned(), 79), 2)]
    );
    assert_eq!(counts.dropped(), 0);
}

#[tokio::test]
async fn readers_share_one_snapshot_per_batch_and_none_when_nothing_changed() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let built = || running.counters.snapshots_built.load(Ordering::Relaxed);
    let (tx, _rx) = mpsc::channel(16);
    handle
        .register(registration(1), tx)
        .await
        .expect("register");
    let before = built();
    // On this single-threaded runtime the ten requests are all queued
    // before the actor runs: one batch, one snapshot for all of them.
    let reads = futures_util::future::join_all((0..10).map(|_| handle.snapshot())).await;
    for read in reads {
        assert_eq!(read.expect("read").cluster.nodes.len(), 1);
    }
    assert_eq!(built(), before + 1, "one build for ten readers");
    // Nothing changed since: confirmed, not rebuilt.
    handle.snapshot().await.expect("read");
    handle.snapshot().await.expect("read");
    assert_eq!(built(), before + 1, "no rebuild without a change");
}

#[tokio::test]
async fn an_operator_reads_their_own_change_at_once() {
    let running = start(MemoryStore::default());
    let handle = &running.handle;
    let (tx, _rx) = mpsc::channel(16);
    handle
        .register(registration(1), tx)
        .await
        .expect("register");
    handle.snapshot().await.expect("read");
    handle
        .cordon("n1".into(), "bad fan".into(), "alice".into(), String::new())
        .await
        .expect("cordon");
    // Published before the cordon was answered: the current snapshot shows
    // it whether or not it is still fresh.
    let published = handle.snapshots.borrow().clone();
    let node = published.node("n1").expect("n1");
    assert_eq!(node.state, v1::NodeState::Cordoned as i32);
    assert!(published
        .events(0, 0)
        .iter()
        .any(|e| e.kind == "node_cordoned"));
}
