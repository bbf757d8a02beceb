//! The assignment lease: a job's next generation never starts while a node
//! supd cannot reach may still run the previous one.

use super::support::*;
use crate::*;

const UNREACHABLE: Millis = 4_000;
const LEASE: Millis = 15_000;

/// 4 s to unreachable, a 15 s lease, the defaults otherwise: n1..n3, a
/// 2-node job on n1 and n2 that started at 0 and reports progress.
fn running(lease: Millis) -> Engine {
    running_into(lease, &mut Persisted::default())
}

/// [`running`], keeping what the engine persisted in `store`.
fn running_into(lease: Millis, store: &mut Persisted) -> Engine {
    let mut e = Engine::new(EngineConfig {
        unreachable_after_ms: UNREACHABLE,
        assignment_lease_ms: lease,
        ..config()
    });
    for i in 1..=3u32 {
        register(&mut e, &format!("n{i}"), SessionId::from(i), 2, 0);
    }
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    stored(&drain(&mut e), store);
    stored(&launch_all(&mut e, "llm", 0), store);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2"]);
    e
}

/// n2 goes silent after 0; n1 and n3 keep reporting every second until
/// `until`; the engine's timers run as supd's would.
fn n2_silent_until(e: &mut Engine, from: Millis, until: Millis) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut t = from;
    while t <= until {
        for n in ["n1", "n3"] {
            assert!(e.on_telemetry(t, n, session_of(n), vec![]).is_applied());
        }
        while let Some(at) = e.poll_timeout().filter(|at| *at <= t) {
            e.handle_timeout(at);
        }
        actions.extend(drain(e));
        t += 1_000;
    }
    actions
}

#[test]
fn a_lost_nodes_job_starts_again_only_after_its_lease_has_surely_run_out() {
    let mut e = running(LEASE);
    let gen_before = job(&e, "llm").record.generation;
    // Unreachable at 4 s, stalled: lost at 9 s. The decision is made, and
    // n1 is told to stop at once, but the next generation waits.
    let actions = n2_silent_until(&mut e, 1_000, 9_000);
    let why = event(&actions, EventKind::JobPending);
    assert!(
        why.starts_with("node n2 lost: unreachable and the job has made no progress since; the next generation waits 8s for the assignment lease of node n2 (last heard 9s ago)"),
        "{why}"
    );
    assert!(
        why.contains("surely gone 17s after it was last heard"),
        "{why}"
    );
    assert!(!has(&actions, EventKind::JobRestarted));
    let j = job(&e, "llm");
    assert_eq!(j.record.state, JobState::Pending);
    assert!(j.record.nodes.is_empty());
    assert_eq!(j.record.lease_wait, ["n2"]);
    assert!(
        assignments(&actions)
            .get("n1")
            .is_some_and(|a| a.job.is_none() && a.generation > gen_before),
        "the reachable node stops its ranks now"
    );
    assert!(e.poll_timeout().is_some_and(|t| t <= 17_000));

    // 17 s after n2 was last heard: its agent has killed its ranks.
    let actions = n2_silent_until(&mut e, 10_000, 16_000);
    assert!(!has(&actions, EventKind::JobRestarted), "not before 17 s");
    let actions = n2_silent_until(&mut e, 17_000, 17_000);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("node n2 lost: unreachable and the job has made no progress since; the assignment lease of n2 ran out (the previous generation's ranks there are gone); generation"),
        "{why}"
    );
    let j = job(&e, "llm");
    assert_eq!(j.record.nodes, ["n1", "n3"]);
    assert!(j.record.lease_wait.is_empty());
    assert_eq!(j.record.restarts, 1, "the loss counts once");
}

#[test]
fn without_a_lease_the_lost_nodes_job_restarts_at_the_decision() {
    let mut e = running(0);
    let actions = n2_silent_until(&mut e, 1_000, 9_000);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(why.starts_with("node n2 lost"), "{why}");
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n3"]);
}

#[test]
fn a_node_back_before_its_lease_ran_out_is_told_and_the_wait_ends() {
    let mut e = running(LEASE);
    n2_silent_until(&mut e, 1_000, 9_000);
    assert_eq!(job(&e, "llm").record.state, JobState::Pending);
    // n2 reports again at 12 s: it gets the withdrawal like any node.
    assert!(e
        .on_telemetry(12_000, "n2", session_of("n2"), vec![])
        .is_applied());
    e.handle_timeout(12_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.contains("; n2 reachable again (told to stop the previous generation)"),
        "{why}"
    );
    assert_eq!(
        job(&e, "llm").record.nodes,
        ["n1", "n3"],
        "the node that went silent is the last choice"
    );
    assert!(job(&e, "llm").record.lease_wait.is_empty());
}

#[test]
fn a_restart_for_another_reason_waits_for_an_unreachable_node_of_the_job() {
    // A 3-node job on n1..n3 and a spare n4; n3 is unreachable (not yet
    // lost) when rank 0 on n1 crashes.
    let mut e = cluster_with(
        EngineConfig {
            unreachable_after_ms: UNREACHABLE,
            assignment_lease_ms: LEASE,
            lost_node_grace_ms: 60_000,
            ..config()
        },
        4,
    );
    submit(&mut e, 0, &spec("llm", 3, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    for t in [1_000, 2_000, 3_000, 4_000, 5_000] {
        for n in ["n1", "n2", "n4"] {
            assert!(e.on_telemetry(t, n, session_of(n), vec![]).is_applied());
        }
        assert!(progress_at(&mut e, "n1", t));
        e.handle_timeout(t);
        drain(&mut e);
    }
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Unreachable);
    let actions = rank_fails(&mut e, "llm", "n1", 1, 6_000);
    let why = event(&actions, EventKind::JobPending);
    assert!(
        why.contains("the next generation waits 11s for the assignment lease of node n3"),
        "{why}"
    );
    assert!(
        why.starts_with("rank 0 (node n1, local rank 0) exited with code 1"),
        "{why}"
    );
}

#[test]
fn the_wait_survives_a_supd_restart_counting_from_the_restart() {
    let mut store = Persisted::default();
    let mut e = running_into(LEASE, &mut store);
    let actions = n2_silent_until(&mut e, 1_000, 9_000);
    stored(&actions, &mut store);
    assert_eq!(store.jobs[0].lease_wait, ["n2"]);
    // supd restarts at 10 s. The old one may have acknowledged n2 just
    // before it died, so n2 counts as heard at the restart.
    let mut r = Engine::restore(e.config().clone(), store, 10_000);
    register(&mut r, "n1", 11, 2, 10_500);
    register(&mut r, "n3", 13, 2, 10_500);
    r.handle_timeout(11_000);
    let actions = drain(&mut r);
    assert!(
        !has(&actions, EventKind::JobRestarted),
        "{:?}",
        events(&actions)
    );
    assert_eq!(job(&r, "llm").record.state, JobState::Pending);
    r.handle_timeout(27_000);
    let actions = drain(&mut r);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("node n2 lost: unreachable and the job has made no progress since; the assignment lease of n2 ran out"),
        "{why}"
    );
}

#[test]
fn after_a_takeover_a_node_not_heard_since_waits_out_the_old_leaders_bridge_too() {
    let mut store = Persisted::default();
    let mut e = running_into(LEASE, &mut store);
    stored(&n2_silent_until(&mut e, 1_000, 9_000), &mut store);
    // A new leader takes over at 10 s; the old one may have renewed n2's
    // lease for up to 60 s after it lost its term.
    let config = EngineConfig {
        takeover_hold_ms: 60_000,
        ..e.config().clone()
    };
    let mut r = Engine::restore(config, store, 10_000);
    register(&mut r, "n1", 11, 2, 10_500);
    register(&mut r, "n3", 13, 2, 10_500);
    let mut restarted_at = None;
    let mut t = 11_000;
    while restarted_at.is_none() && t <= 120_000 {
        for (n, session) in [("n1", 11), ("n3", 13)] {
            assert!(r.on_telemetry(t, n, session, vec![]).is_applied());
        }
        r.handle_timeout(t);
        if has(&drain(&mut r), EventKind::JobRestarted) {
            restarted_at = Some(t);
        }
        t += 1_000;
    }
    // 10 s + 60 s (bridge) + 15 s (lease) + 2 s (margin).
    assert_eq!(restarted_at, Some(87_000));
}

#[test]
fn ranks_killed_by_their_lease_restart_the_job_without_spending_its_budget() {
    let mut e = running(LEASE);
    let generation = job(&e, "llm").record.generation;
    assert!(e
        .on_rank_exited(
            5_000,
            "n2",
            session_of("n2"),
            RankExited {
                job: "llm".to_owned(),
                generation,
                rank: 2,
                local_rank: 0,
                signal: Some(9),
                lease_expired: true,
                ..Default::default()
            },
        )
        .is_applied());
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("rank 2 (node n2, local rank 0) killed by its agent: no supervisor acknowledged the node for its assignment lease (15s)"),
        "{why}"
    );
    assert_eq!(job(&e, "llm").record.restarts, 0);
}

fn progress_at(e: &mut Engine, node: &str, now: Millis) -> bool {
    let generation = job(e, "llm").record.generation;
    e.on_progress(
        now,
        node,
        session_of(node),
        JobProgress {
            job: "llm".to_owned(),
            generation,
            step: u64::try_from(now / 1_000).unwrap_or(0),
            ..Default::default()
        },
    )
    .is_applied()
}
