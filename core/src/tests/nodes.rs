//! Decisions and their reasons, driven with explicit time.

use crate::*;

const GRACE: Millis = 30_000;

fn engine() -> Engine {
    Engine::new(EngineConfig {
        unreachable_after_ms: GRACE,
        event_log_capacity: 100,
        ..Default::default()
    })
}

fn reg(node: &str, session: SessionId, address: &str, instance: &str, gpus: u32) -> Registration {
    Registration {
        validates: false,
        session,
        node_id: node.to_owned(),
        address: address.to_owned(),
        hostname: format!("host-{node}"),
        agent_version: "0.1.0".to_owned(),
        instance_id: instance.to_owned(),
        gpu_backend: "sim".to_owned(),
        gpus: (0..gpus)
            .map(|i| GpuInventory {
                index: i,
                uuid: format!("GPU-{node}-{i}"),
                name: "H100".to_owned(),
                pci_bus_id: format!("00000000:{:02X}:00.0", i + 1),
                memory_total_bytes: Some(80 << 30),
            })
            .collect(),
    }
}

fn drain(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

fn events_of(actions: &[Action]) -> Vec<(EventKind, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(Change::AppendEvent(e)) => Some((e.kind, e.reason.clone())),
            _ => None,
        })
        .collect()
}

fn persisted_node(actions: &[Action], id: &str) -> Option<NodeRecord> {
    actions.iter().rev().find_map(|a| match a {
        Action::Persist(Change::PutNode(n)) if n.id == id => Some(n.clone()),
        _ => None,
    })
}

fn joined(engine: &mut Engine, node: &str, session: SessionId, now: Millis) {
    engine
        .on_register(
            now,
            reg(
                node,
                session,
                &format!("10.0.0.{session}"),
                &format!("i{session}"),
                8,
            ),
        )
        .expect("register");
    assert!(engine.on_telemetry(now, node, session, vec![]).is_applied());
    drain(engine);
}

#[test]
fn first_registration_joins_then_first_report_makes_it_ready() {
    let mut e = engine();
    let state = e
        .on_register(1_000, reg("n1", 1, "10.0.0.1", "a", 8))
        .expect("register");
    assert_eq!(state, NodeState::Joining);
    let actions = drain(&mut e);
    let events = events_of(&actions);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, EventKind::NodeRegistered);
    assert_eq!(
        events[0].1,
        "first registration from 10.0.0.1 with 8 GPU(s) (sim backend)"
    );
    let record = persisted_node(&actions, "n1").expect("node persisted before ack");
    assert_eq!(record.gpus.len(), 8);
    assert!(!record.joined);

    assert!(e.on_telemetry(2_000, "n1", 1, vec![]).is_applied());
    assert_eq!(e.node("n1").expect("node").state(), NodeState::Ready);
    let actions = drain(&mut e);
    assert!(
        persisted_node(&actions, "n1")
            .expect("joined persisted")
            .joined
    );
    assert_eq!(e.spares().count(), 1);

    // Later reports change nothing durable: no store write per report.
    assert!(e.on_telemetry(3_000, "n1", 1, vec![]).is_applied());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn duplicate_id_from_another_address_is_rejected_and_registry_unchanged() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 1_000);
    let before = e.node("n1").expect("node").record.clone();

    let err = e
        .on_register(2_000, reg("n1", 2, "10.9.9.9", "impostor", 4))
        .expect_err("duplicate must be rejected");
    assert_eq!(
        err,
        EngineError::DuplicateNodeId {
            node_id: "n1".into(),
            connected_from: "10.0.0.1".into()
        }
    );
    assert_eq!(e.node("n1").expect("node").record, before);
    assert_eq!(e.node("n1").expect("node").session, Some(1));
    let actions = drain(&mut e);
    assert!(persisted_node(&actions, "n1").is_none());
    let events = events_of(&actions);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, EventKind::NodeRejected);
    assert!(events[0].1.contains("10.9.9.9"), "{}", events[0].1);

    // The impostor retrying is still rejected but does not flood the log.
    assert!(e
        .on_register(3_000, reg("n1", 3, "10.9.9.9", "impostor", 4))
        .is_err());
    assert!(events_of(&drain(&mut e)).is_empty());
}

#[test]
fn restarted_agent_on_same_address_takes_over_and_old_stream_is_fenced() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 1_000);
    let state = e
        .on_register(2_000, reg("n1", 2, "10.0.0.1", "new-instance", 8))
        .expect("takeover");
    assert_eq!(state, NodeState::Ready, "a reconnect does not re-join");
    let actions = drain(&mut e);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::CloseSession { node_id, session: 1, reason } if node_id == "n1" && reason.contains("agent restarted")
    )));
    assert_eq!(events_of(&actions)[0].0, EventKind::NodeTakeover);

    // Reports and the disconnect of the replaced stream are ignored.
    assert!(!e.on_telemetry(3_000, "n1", 1, vec![]).is_applied());
    e.on_disconnected(3_000, "n1", 1);
    assert!(e.node("n1").expect("node").connected());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn silence_past_the_grace_period_marks_unreachable_with_reason_never_cordons() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    joined(&mut e, "n2", 2, 0);
    assert_eq!(e.poll_timeout(), Some(GRACE));

    // n2 keeps reporting; n1 goes silent.
    assert!(e.on_telemetry(20_000, "n2", 2, vec![]).is_applied());
    e.handle_timeout(GRACE);
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Unreachable);
    assert_eq!(e.node("n2").expect("n2").state(), NodeState::Ready);
    assert!(e.node("n1").expect("n1").record.cordon.is_none());
    let events = events_of(&drain(&mut e));
    assert_eq!(
        events,
        vec![(
            EventKind::NodeUnreachable,
            "no report for 30s (limit 30s)".to_owned()
        )]
    );
    assert_eq!(
        e.poll_timeout(),
        Some(20_000 + GRACE),
        "next check is n2's deadline"
    );

    // A report from the same stream brings it back.
    assert!(e.on_telemetry(40_000, "n1", 1, vec![]).is_applied());
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
    assert_eq!(
        events_of(&drain(&mut e)),
        vec![(EventKind::NodeReachable, "reports resumed".to_owned())]
    );
}

#[test]
fn early_timeout_is_harmless() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    e.handle_timeout(GRACE - 1);
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.poll_timeout(), Some(GRACE));
}

#[test]
fn cordon_records_reason_by_and_time_and_is_idempotent() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    let out = e.cordon(5_000, "n1", " bad HBM ", "alice").expect("cordon");
    assert!(out.changed);
    assert_eq!(out.message, "node 'n1' cordoned: bad HBM");
    let actions = drain(&mut e);
    let record = persisted_node(&actions, "n1").expect("cordon persisted");
    assert_eq!(
        record.cordon,
        Some(CordonRecord {
            validation: None,
            reason: "bad HBM".into(),
            by: "alice".into(),
            at: 5_000
        })
    );
    assert_eq!(
        events_of(&actions),
        vec![(
            EventKind::NodeCordoned,
            "cordoned by alice: bad HBM".to_owned()
        )]
    );
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Cordoned);
    assert_eq!(e.spares().count(), 0, "a cordoned node is no spare");

    let again = e.cordon(6_000, "n1", "other", "bob").expect("repeat");
    assert!(!again.changed);
    assert_eq!(
        again.message,
        "node 'n1' is already cordoned by alice: bad HBM"
    );
    assert!(
        drain(&mut e).is_empty(),
        "a repeated cordon changes nothing"
    );
    assert_eq!(
        e.node("n1")
            .expect("n1")
            .record
            .cordon
            .as_ref()
            .map(|c| c.at),
        Some(5_000)
    );
}

#[test]
fn uncordon_restores_state_and_says_what_was_lifted() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    e.cordon(1, "n1", "xid 79", "sup").expect("cordon");
    drain(&mut e);
    let out = e
        .uncordon(2, "n1", "bob", "board replaced")
        .expect("uncordon");
    assert!(out.changed);
    assert_eq!(
        events_of(&drain(&mut e)),
        vec![(
            EventKind::NodeUncordoned,
            "uncordoned by bob (was cordoned by sup: xid 79): board replaced".to_owned()
        )]
    );
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
    let again = e.uncordon(3, "n1", "bob", "").expect("repeat");
    assert!(!again.changed);
    assert_eq!(again.message, "node 'n1' is not cordoned");
}

#[test]
fn bad_commands_are_rejected_and_change_nothing() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    assert_eq!(
        e.cordon(1, "ghost", "r", "alice"),
        Err(EngineError::UnknownNode("ghost".into()))
    );
    assert_eq!(
        e.uncordon(1, "ghost", "alice", ""),
        Err(EngineError::UnknownNode("ghost".into()))
    );
    assert_eq!(
        e.cordon(1, "n1", "   ", "alice"),
        Err(EngineError::InvalidArgument(
            "cordon reason must not be empty".into()
        ))
    );
    assert!(matches!(
        e.cordon(1, "n1", &"x".repeat(5000), "alice"),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
}

#[test]
fn invalid_registrations_are_rejected_with_the_reason() {
    let mut e = engine();
    let mut bad = reg("n1", 1, "10.0.0.1", "a", 2);
    bad.node_id = "no/slashes".into();
    assert!(matches!(
        e.on_register(0, bad),
        Err(EngineError::InvalidRegistration(m)) if m.contains("'/'")
    ));
    let mut dup = reg("n1", 1, "10.0.0.1", "a", 2);
    dup.gpus[1].index = 0;
    assert_eq!(
        e.on_register(0, dup),
        Err(EngineError::InvalidRegistration(
            "GPU index 0 appears twice".into()
        ))
    );
    let mut empty = reg("n1", 1, "", "a", 2);
    empty.address = " ".into();
    assert!(e.on_register(0, empty).is_err());
    assert_eq!(e.nodes().count(), 0);
    assert!(drain(&mut e).is_empty());
}

#[test]
fn restore_keeps_cordons_and_grants_a_full_grace_period() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    joined(&mut e, "n2", 2, 0);
    e.cordon(7, "n1", "xid 79", "alice").expect("cordon");
    let actions = drain(&mut e);
    let _ = actions;

    let persisted = Persisted {
        nodes: e.nodes().map(|n| n.record.clone()).collect(),
        events: e.events().cloned().collect(),
        ..Default::default()
    };
    let restart_at = 1_000_000;
    let mut r = Engine::restore(e.config.clone(), persisted, restart_at);
    let n1 = r.node("n1").expect("n1");
    assert_eq!(n1.state(), NodeState::Cordoned);
    assert_eq!(n1.record.cordon.as_ref().map(|c| c.at), Some(7));
    assert!(!n1.connected());
    assert_eq!(r.node("n2").expect("n2").state(), NodeState::Ready);
    assert_eq!(r.poll_timeout(), Some(restart_at + GRACE));
    r.handle_timeout(restart_at + GRACE - 1);
    assert!(
        drain(&mut r).is_empty(),
        "no node is unreachable within grace"
    );

    // Event numbering continues after the restored log.
    let last = r.events().last().map(|e| e.seq).expect("events restored");
    r.on_register(restart_at + 1, reg("n2", 9, "10.0.0.2", "i2", 8))
        .expect("reconnect");
    let events: Vec<Event> = drain(&mut r)
        .into_iter()
        .filter_map(|a| match a {
            Action::Persist(Change::AppendEvent(e)) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events[0].seq, last + 1);
    assert_eq!(events[0].kind, EventKind::NodeReconnected);
}

#[test]
fn inventory_change_is_reported_and_health_follows_the_gpu_uuid() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    e.on_disconnected(1, "n1", 1);
    drain(&mut e);
    e.on_register(2, reg("n1", 2, "10.0.0.1", "i1", 7))
        .expect("reconnect");
    let events = events_of(&drain(&mut e));
    assert_eq!(events[0].0, EventKind::NodeReconnected);
    assert_eq!(
        events[1],
        (
            EventKind::NodeInventoryChanged,
            "7 GPU(s), was 8; gone: 7 (GPU-n1-7)".to_owned()
        )
    );
}

#[test]
fn event_log_is_bounded_and_trims_the_store() {
    let mut e = Engine::new(EngineConfig {
        unreachable_after_ms: GRACE,
        event_log_capacity: 3,
        ..Default::default()
    });
    joined(&mut e, "n1", 1, 0);
    for i in 0..5 {
        e.cordon(i, "n1", "r", "a").expect("cordon");
        e.uncordon(i, "n1", "a", "").expect("uncordon");
    }
    let actions = drain(&mut e);
    assert_eq!(e.events().len(), 3);
    let first_kept = e.events().next().map(|ev| ev.seq).expect("kept");
    let trims: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(Change::TrimEventsThrough(s)) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(trims.last(), Some(&(first_kept - 1)));
}

#[test]
fn a_node_heard_from_stays_reachable_while_its_reports_wait_in_line() {
    let mut e = engine();
    joined(&mut e, "n1", 1, 0);
    drain(&mut e);
    // Its stream delivered messages until GRACE - 1s (stamped as they
    // arrived); the engine has handled none of them yet.
    e.on_heard(GRACE, "n1", 1, GRACE - 1_000);
    // A stamp from a replaced stream moves nothing; one from the future
    // counts as now.
    e.on_heard(GRACE, "n1", 7, GRACE);
    e.on_heard(GRACE - 500, "n1", 1, 10 * GRACE);
    e.handle_timeout(GRACE);
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.poll_timeout(), Some(2 * GRACE - 500));
    e.handle_timeout(2 * GRACE - 500);
    assert_eq!(e.node("n1").expect("n1").state(), NodeState::Unreachable);
}

/// Three nodes restored at `t` after a restart, with a 4 s limit and a
/// 30 s rejoin grace.
fn restarted_with_three_nodes(t: Millis) -> Engine {
    let config = EngineConfig {
        unreachable_after_ms: 4_000,
        rejoin_grace_ms: 30_000,
        event_log_capacity: 100,
        ..Default::default()
    };
    let mut e = Engine::new(config.clone());
    for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        joined(&mut e, id, i as SessionId + 1, 0);
    }
    let persisted = Persisted {
        nodes: e.nodes().map(|n| n.record.clone()).collect(),
        ..Default::default()
    };
    Engine::restore(config, persisted, t)
}

fn state_of(e: &Engine, id: &str) -> NodeState {
    e.node(id).expect("node").state()
}

#[test]
fn silence_is_not_held_against_restored_nodes_while_the_reconnect_storm_lasts() {
    let t = 1_000_000;
    let mut r = restarted_with_three_nodes(t);
    // n1 registers again but its first report is slow; n2 registers,
    // reports twice, then its reports stall in the storm; n3 is gone.
    r.on_register(t + 1_000, reg("n1", 11, "10.0.0.1", "i11", 8))
        .expect("n1 back");
    r.on_register(t + 1_500, reg("n2", 12, "10.0.0.2", "i12", 8))
        .expect("n2 back");
    assert!(r.on_telemetry(t + 2_000, "n2", 12, vec![]).is_applied());
    assert!(r.on_telemetry(t + 9_000, "n2", 12, vec![]).is_applied());
    drain(&mut r);

    r.handle_timeout(t + 13_000);
    for id in ["n1", "n2", "n3"] {
        assert_eq!(state_of(&r, id), NodeState::Ready, "{id}: storm not over");
    }
    assert!(r.on_telemetry(t + 28_000, "n1", 11, vec![]).is_applied());
    drain(&mut r);
    // The grace ends with n3 still missing: n3 and the stalled n2 are
    // unreachable; n1 reported 2 s ago.
    r.handle_timeout(t + 30_000);
    assert_eq!(state_of(&r, "n3"), NodeState::Unreachable);
    assert_eq!(state_of(&r, "n2"), NodeState::Unreachable);
    assert_eq!(state_of(&r, "n1"), NodeState::Ready);
    r.handle_timeout(t + 32_000);
    assert_eq!(state_of(&r, "n1"), NodeState::Unreachable);
}

#[test]
fn the_rejoin_window_closes_once_every_restored_node_has_reported() {
    let t = 1_000_000;
    let mut r = restarted_with_three_nodes(t);
    for (session, id) in [(11, "n1"), (12, "n2"), (13, "n3")] {
        r.on_register(
            t + 1_000,
            reg(id, session, "10.0.0.9", &format!("i{session}"), 8),
        )
        .expect("back");
        assert!(r.on_telemetry(t + 2_000, id, session, vec![]).is_applied());
    }
    r.handle_timeout(t + 4_000);
    assert_eq!(state_of(&r, "n2"), NodeState::Ready);
    assert!(r.on_telemetry(t + 5_000, "n1", 11, vec![]).is_applied());
    assert!(r.on_telemetry(t + 5_000, "n3", 13, vec![]).is_applied());
    drain(&mut r);
    // The storm is over: n2, silent since t + 2 s, is judged by the 4 s
    // limit, at a check the reports scheduled.
    assert_eq!(r.poll_timeout(), Some(t + 6_000));
    r.handle_timeout(t + 6_000);
    assert_eq!(state_of(&r, "n2"), NodeState::Unreachable);
    assert_eq!(state_of(&r, "n1"), NodeState::Ready);
}

#[test]
fn during_a_registration_storm_silence_is_judged_by_the_rejoin_grace() {
    let mut e = Engine::new(EngineConfig {
        unreachable_after_ms: 4_000,
        rejoin_grace_ms: 30_000,
        event_log_capacity: 100,
        ..Default::default()
    });
    // 70 agents connect within 0.7 s: a storm (64 within 4 s).
    for i in 0..70u64 {
        let id = format!("n{i}");
        let at = i as Millis * 10;
        joined(&mut e, &id, i + 1, at);
    }
    drain(&mut e);
    // n0's reports stall; the others report again.
    for i in 1..70u64 {
        assert!(e
            .on_telemetry(4_600, &format!("n{i}"), i + 1, vec![])
            .is_applied());
    }
    e.handle_timeout(4_500);
    assert_eq!(
        state_of(&e, "n0"),
        NodeState::Ready,
        "silent 4.5 s in a storm"
    );
    // The storm is over 4 s after its last registration (at 0.69 s): the
    // usual limit again, at a check scheduled for then.
    assert_eq!(e.poll_timeout(), Some(4_690));
    e.handle_timeout(4_690);
    assert_eq!(state_of(&e, "n0"), NodeState::Unreachable);
    assert_eq!(state_of(&e, "n1"), NodeState::Ready);
}

#[test]
fn a_few_agents_reconnecting_are_no_storm() {
    let mut e = Engine::new(EngineConfig {
        unreachable_after_ms: 4_000,
        event_log_capacity: 100,
        ..Default::default()
    });
    for i in 0..10u64 {
        joined(&mut e, &format!("n{i}"), i + 1, 0);
    }
    drain(&mut e);
    e.handle_timeout(4_000);
    assert_eq!(state_of(&e, "n0"), NodeState::Unreachable);
}
