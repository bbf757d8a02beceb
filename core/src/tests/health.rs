//! GPU health decisions: a failed GPU cordons its whole node, a degraded
//! one makes it suspect, a correlated application Xid cordons nothing, the
//! breaker holds automatic cordons until an operator resets it, and drills.

use super::support::*;
use crate::*;

fn verdict(index: u32, health: GpuHealth, reason: &str) -> GpuVerdict {
    GpuVerdict {
        index,
        uuid: String::new(),
        health,
        reason: reason.to_owned(),
        evidence: vec!["nvml: xid event".to_owned()],
        recovery_action: RecoveryAction::Unspecified,
        drill: false,
        causes: Vec::new(),
    }
}

fn xid(index: u32, code: u32, application: bool, at: Millis) -> XidEvent {
    XidEvent {
        gpu_index: index,
        uuid: String::new(),
        xid: code,
        at_unix_ms: at,
        source: "nvml".to_owned(),
        detail: String::new(),
        application,
    }
}

fn report(
    e: &mut Engine,
    node: &str,
    now: Millis,
    verdicts: Vec<GpuVerdict>,
    xids: Vec<XidEvent>,
) -> Vec<Action> {
    assert!(e
        .on_health_report(
            now,
            node,
            session_of(node),
            HealthReport {
                verdicts,
                xids,
                visible_gpus: None
            }
        )
        .is_applied());
    drain(e)
}

#[test]
fn a_failed_gpu_cordons_its_whole_node_naming_the_gpu_and_the_xid() {
    let mut e = cluster(3);
    let actions = report(
        &mut e,
        "n2",
        5,
        vec![
            verdict(0, GpuHealth::Ok, ""),
            verdict(
                1,
                GpuHealth::Failed,
                "Xid 79 (GPU has fallen off the bus): power-cycle the node",
            ),
        ],
        vec![xid(1, 79, false, 5)],
    );
    let n2 = e.node("n2").expect("n2");
    assert_eq!(n2.state(), NodeState::Cordoned);
    let cordon = n2.record.cordon.as_ref().expect("cordoned");
    assert_eq!(cordon.by, "sup");
    assert_eq!(
        cordon.reason,
        "GPU 1 (GPU-n2-1) failed: Xid 79 (GPU has fallen off the bus): power-cycle the node (evidence: nvml: xid event)"
    );
    assert!(event(&actions, EventKind::GpuXid).starts_with("Xid 79 on GPU 1 from nvml"));
    assert!(
        event(&actions, EventKind::GpuHealthChanged).starts_with("GPU 1 (GPU-n2-1) ok → failed")
    );
}

#[test]
fn a_degraded_gpu_makes_the_node_suspect_without_a_cordon() {
    let mut e = cluster(2);
    report(
        &mut e,
        "n1",
        5,
        vec![verdict(0, GpuHealth::Degraded, "PCIe x8 of x16")],
        vec![],
    );
    let n1 = e.node("n1").expect("n1");
    assert_eq!(n1.state(), NodeState::Suspect);
    assert!(n1.record.cordon.is_none());
    assert_eq!(e.spares().count(), 1, "a suspect node is no spare");
}

#[test]
fn the_same_application_xid_on_many_nodes_is_a_software_fault_and_cordons_nothing() {
    let mut e = cluster(4);
    let one = report(&mut e, "n1", 1, vec![], vec![xid(0, 13, true, 1)]);
    assert!(events(&one)
        .iter()
        .all(|(k, _)| *k != EventKind::CorrelatedFault));
    // Half of the nodes (the default share) within the window.
    let actions = report(&mut e, "n2", 2, vec![], vec![xid(0, 13, true, 2)]);
    let why = event(&actions, EventKind::CorrelatedFault);
    assert!(why.starts_with("Xid 13 on 2 of 4 nodes within 1m"), "{why}");
    // Reported once per window, not once per node.
    let more = report(&mut e, "n3", 3, vec![], vec![xid(1, 13, true, 3)]);
    assert!(events(&more)
        .iter()
        .all(|(k, _)| *k != EventKind::CorrelatedFault));
    assert!(why.contains("no node cordoned"), "{why}");
    assert!(e.nodes().all(|n| n.record.cordon.is_none()));
}

#[test]
fn the_breaker_stops_automatic_cordons_and_an_operator_reset_applies_the_held_ones() {
    let mut e = Engine::new(EngineConfig {
        breaker_min_cordons: 2,
        breaker_max_share: 0.0,
        ..config()
    });
    for i in 1..=5 {
        register(&mut e, &format!("n{i}"), i, 2, 0);
    }
    drain(&mut e);
    let fail = |e: &mut Engine, n: &str, t| {
        report(
            e,
            n,
            t,
            vec![verdict(0, GpuHealth::Failed, "Xid 48")],
            vec![],
        )
    };
    fail(&mut e, "n1", 1);
    fail(&mut e, "n2", 2);
    let actions = fail(&mut e, "n3", 3);
    assert!(e.breaker().open);
    assert!(event(&actions, EventKind::BreakerOpened)
        .starts_with("3 automatic cordons within 10m would exceed the limit of 2"));
    assert!(
        e.node("n3").expect("n3").record.cordon.is_none(),
        "held back"
    );
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Suspect);

    // Operators can still cordon by hand.
    e.cordon(4, "n4", "manual", "op").expect("cordon");
    let (changed, _) = e.reset_breaker(5, "op", "driver fixed").expect("reset");
    assert!(changed);
    let actions = drain(&mut e);
    assert!(!e.breaker().open);
    assert!(event(&actions, EventKind::BreakerReset).starts_with("breaker reset by op"));
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Cordoned);
}

#[test]
fn drills_need_a_connected_node_and_a_real_gpu() {
    let mut e = cluster(2);
    let drill = |gpu, code| Drill {
        gpu_index: gpu,
        fault: Some(DrillFault::Xid(code)),
        ..Default::default()
    };
    let msg = e.drill(1, "n1", drill(0, 79), "alice").expect("drill");
    assert!(msg.contains("Xid 79 on GPU 0"), "{msg}");
    let actions = drain(&mut e);
    assert!(actions.iter().any(|a| matches!(a, Action::SendDrill { node_id, drill } if node_id == "n1" && drill.by == "alice")));
    assert_eq!(
        event(&actions, EventKind::Drill),
        "drill by alice: Xid 79 on GPU 0 injected"
    );
    assert!(matches!(
        e.drill(1, "n1", drill(7, 79), "a"),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        e.drill(1, "zz", drill(0, 79), "a"),
        Err(EngineError::UnknownNode(_))
    ));
    e.on_disconnected(2, "n2", 2);
    assert!(matches!(
        e.drill(3, "n2", drill(0, 79), "a"),
        Err(EngineError::FailedPrecondition(_))
    ));
}

/// Automatic cordons among `actions` ("cordoned by sup: ...").
fn auto_cordons(actions: &[Action]) -> usize {
    events(actions)
        .iter()
        .filter(|(k, why)| *k == EventKind::NodeCordoned && why.starts_with("cordoned by sup:"))
        .count()
}

#[test]
fn the_default_breaker_stops_a_storm_on_2000_nodes_after_at_most_10_cordons() {
    let mut e = cluster_with(EngineConfig::default(), 2_000);
    let mut cordoned = 0;
    for i in 1..=200 {
        // ECC failures, no Xid: only the breaker stands in the way.
        let actions = report(
            &mut e,
            &format!("n{i}"),
            i64::from(i) * 100,
            vec![verdict(0, GpuHealth::Failed, "uncorrectable ECC errors")],
            vec![],
        );
        cordoned += auto_cordons(&actions);
    }
    assert_eq!(cordoned, 10, "10 is the default cap");
    assert!(e.breaker().open);
    assert!(
        e.breaker().reason.contains("would exceed the limit of 10"),
        "{}",
        e.breaker().reason
    );
}

#[test]
fn the_same_hardware_xid_on_50_nodes_within_a_minute_is_held_as_one_correlated_fault() {
    let mut e = cluster_with(EngineConfig::default(), 100);
    let mut actions = Vec::new();
    for i in 1..=50 {
        let at = i64::from(i) * 1_000;
        actions.extend(report(
            &mut e,
            &format!("n{i}"),
            at,
            vec![verdict(
                0,
                GpuHealth::Failed,
                "Xid 79 (GPU has fallen off the bus)",
            )],
            vec![xid(0, 79, false, at)],
        ));
    }
    let correlated: Vec<(EventKind, String)> = events(&actions)
        .into_iter()
        .filter(|(k, _)| *k == EventKind::CorrelatedFault)
        .collect();
    assert_eq!(correlated.len(), 1, "{correlated:?}");
    assert!(
        correlated[0]
            .1
            .starts_with("Xid 79 on 5 nodes within 1m (at least 5 make a storm)"),
        "{}",
        correlated[0].1
    );
    // The four before the storm was seen were cordoned; the rest are held
    // for an operator, and their jobs keep their nodes.
    assert_eq!(auto_cordons(&actions), 4);
    assert!(e.breaker().open);
    assert!(e.breaker().reason.starts_with("Xid 79 on 5 nodes"));
    let held = events(&actions)
        .iter()
        .filter(|(k, why)| {
            *k == EventKind::NodeCordoned && why.starts_with("automatic cordon held back")
        })
        .count();
    assert_eq!(held, 46);
}

#[test]
fn a_node_flooding_xids_cannot_push_other_nodes_out_of_the_event_log() {
    let mut config = config();
    config.event_log_capacity = 500;
    let mut e = cluster_with(config, 2);
    e.cordon(1, "n1", "kept in the log", "alice")
        .expect("cordon");
    drain(&mut e);
    // 100 reports of 100 distinct (GPU, code) Xids each, within a minute;
    // application Xids so no cordon or storm guard gets in the way.
    for r in 0..100u32 {
        let xids = (0..100u32)
            .map(|i| xid(i % 8, 1_000 + r * 100 + i, true, 10 + Millis::from(r)))
            .collect();
        report(&mut e, "n2", 10 + Millis::from(r), vec![], xids);
    }
    let from_n2: Vec<&Event> = e
        .events()
        .filter(|ev| ev.kind == EventKind::GpuXid && ev.node.as_deref() == Some("n2"))
        .collect();
    // The budget, plus the one notice.
    assert_eq!(from_n2.len(), 61, "{:#?}", from_n2.last());
    assert!(
        from_n2[60].reason.contains("not logged for"),
        "{}",
        from_n2[60].reason
    );
    assert!(
        e.events()
            .any(|ev| ev.kind == EventKind::NodeCordoned && ev.reason.contains("kept in the log")),
        "the operator's cordon is still in the log"
    );
    // A minute later the node's Xids are logged again.
    report(&mut e, "n2", 60_010, vec![], vec![xid(0, 79, true, 60_010)]);
    assert!(e
        .events()
        .last()
        .is_some_and(|ev| ev.reason.starts_with("Xid 79 on GPU 0")));
}

#[test]
fn xids_and_verdicts_for_gpus_the_node_never_registered_change_nothing() {
    let mut e = cluster(2);
    let actions = report(
        &mut e,
        "n2",
        5,
        vec![verdict(99, GpuHealth::Failed, "made up")],
        (0..1000).map(|i| xid(100 + i, 79, false, 5)).collect(),
    );
    assert!(events(&actions).is_empty(), "{:?}", events(&actions));
    let node = e.node("n2").expect("n2");
    assert!(node.recent_xids.is_empty());
    assert_eq!(node.state(), NodeState::Ready);
}
