//! Scheduling and recovery decisions: spare swap, shrink, waiting, grow
//! back, crash loop, restart budget, preemption, fencing, lost nodes and
//! the partition guard. Time is explicit everywhere.

use super::support::*;
use crate::*;

fn progress(e: &mut Engine, name: &str, node: &str, step: u64, now: Millis) -> bool {
    let generation = job(e, name).record.generation;
    e.on_progress(
        now,
        node,
        session_of(node),
        JobProgress {
            job: name.to_owned(),
            generation,
            step,
            ..Default::default()
        },
    )
    .is_applied()
}

#[test]
fn a_job_starts_on_nodes_in_stable_order_with_the_torchrun_contract() {
    let mut e = cluster(5);
    submit(&mut e, 1_000, &spec("llm", 4, 2, ""), "alice").expect("submit");
    let actions = drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.state, JobState::Starting);
    assert_eq!(j.record.nodes, ["n1", "n2", "n3", "n4"]);
    assert_eq!(j.world_size(), 8);
    assert!(
        event(&actions, EventKind::JobStarted).contains("generation 1 on 4 node(s), world size 8")
    );
    let sent = assignments(&actions);
    let a3 = sent["n3"].job.as_ref().expect("n3 runs the job");
    assert_eq!(sent["n3"].generation, 1);
    assert_eq!(
        (a3.node_rank, a3.nnodes, a3.ranks_per_node, a3.world_size),
        (2, 4, 2, 8)
    );
    assert_eq!(a3.master_addr, "addr-n1", "node rank 0 gives MASTER_ADDR");
    assert_eq!(a3.master_port, 29_500);
    assert_eq!(a3.gpu_indices, [0, 1]);
    assert!(a3.resume_from.is_none());
    assert!(sent["n5"].job.is_none(), "the spare runs nothing");
    assert_eq!(
        e.spares().map(|n| n.record.id.as_str()).collect::<Vec<_>>(),
        ["n5"]
    );

    let actions = launch_all(&mut e, "llm", 1_250);
    assert_eq!(job(&e, "llm").record.state, JobState::Running);
    assert!(event(&actions, EventKind::JobRunning)
        .contains("every rank launched 250 ms after it was placed"));
}

/// A node's ranks use its lowest GPU indices whatever order it lists its
/// GPUs in, and reconcile (which compares what each node was sent with
/// what it should run, in place) does not send an unchanged assignment.
#[test]
fn a_node_listing_its_gpus_out_of_order_runs_on_the_lowest_and_is_not_told_again() {
    let mut e = cluster(1);
    register_gpus(&mut e, "n2", session_of("n2"), &[3, 1, 2, 0], 0);
    submit(&mut e, 1_000, &spec("llm", 2, 2, ""), "alice").expect("submit");
    let sent = assignments(&drain(&mut e));
    let a2 = sent["n2"].job.as_ref().expect("n2 runs the job");
    assert_eq!(a2.gpu_indices, [0, 1], "the two lowest indices, in order");

    // Every input reconciles; nothing changed, so nothing is sent again.
    assert!(e
        .on_telemetry(2_000, "n2", session_of("n2"), vec![])
        .is_applied());
    assert!(e
        .on_telemetry(2_000, "n1", session_of("n1"), vec![])
        .is_applied());
    e.handle_timeout(2_000);
    let again = assignments(&drain(&mut e));
    assert!(again.is_empty(), "told again: {again:?}");
}

#[test]
fn a_failed_node_is_swapped_for_a_spare_then_the_job_shrinks_and_resumes_from_the_newest_checkpoint(
) {
    let mut e = cluster_with(
        EngineConfig {
            spares_target: 1,
            ..config()
        },
        5,
    );
    submit(&mut e, 0, &spec("llm", 4, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 10);
    checkpoint(&mut e, "llm", "n1", &[10, 20], 20);

    // n2 is cordoned: the spare n5 takes its place, same world size.
    e.cordon(30, "n2", "xid 79", "sup").expect("cordon");
    let actions = drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.nodes, ["n1", "n3", "n4", "n5"]);
    assert_eq!(j.record.state, JobState::Recovering);
    assert_eq!(j.record.generation, 2);
    assert_eq!(j.record.restarts, 1);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(why.starts_with("node n2 cordoned by sup: xid 79"), "{why}");
    assert!(why.contains("replaced n2 with n5"), "{why}");
    assert!(
        why.contains("resuming from step 20 (/ckpt/llm/step-20)"),
        "{why}"
    );
    let sent = assignments(&actions);
    assert_eq!(sent["n2"].job, None, "the cordoned node runs nothing");
    assert!(sent["n2"].generation >= 2, "and must fence generation 1");
    let resume = sent["n5"]
        .job
        .as_ref()
        .and_then(|a| a.resume_from.clone())
        .expect("resume");
    assert_eq!(resume.step, 20);
    assert_eq!(sent["n1"].generation, 2);
    assert!(events(&actions)
        .iter()
        .any(|(k, r)| *k == EventKind::SparesLow
            && r == "spare pool at 0 node(s), below its target of 1"));
    launch_all(&mut e, "llm", 40);

    // n3 fails with no spare left: shrink to 3 nodes.
    e.cordon(50, "n3", "row remap failure", "sup")
        .expect("cordon");
    let actions = drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.nodes, ["n1", "n4", "n5"]);
    assert_eq!(j.world_size(), 6);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(why.contains("shrunk from 4 to 3 node(s)"), "{why}");
    assert!(why.contains("world size 6"), "{why}");
}

#[test]
fn with_no_valid_world_size_the_job_waits_pending_with_a_reason() {
    let mut e = cluster(3);
    // 2 GPUs per node, multiple of 8: needs 4 nodes; only 3 exist.
    submit(
        &mut e,
        0,
        &spec("big", 4, 4, "world_size_multiple = 8\n"),
        "alice",
    )
    .expect("submit");
    let actions = drain(&mut e);
    let j = job(&e, "big");
    assert_eq!(j.record.state, JobState::Pending);
    assert!(j.record.nodes.is_empty());
    let why = event(&actions, EventKind::JobPending);
    assert!(
        why.starts_with("waiting for capacity: needs at least 4 node(s) with 2 GPU(s) each and a world size that is a multiple of 8, 3 available"),
        "{why}"
    );
    assert!(assignments(&actions).values().all(|a| a.job.is_none()));

    // Capacity arrives: the job starts by itself.
    register(&mut e, "n4", 4, 2, 100);
    let actions = drain(&mut e);
    assert_eq!(job(&e, "big").record.state, JobState::Starting);
    assert_eq!(assignments(&actions).len(), 4);
}

#[test]
fn a_shrunk_job_grows_back_right_after_its_next_checkpoint() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 3, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1);
    e.cordon(2, "n3", "bad", "op").expect("cordon");
    drain(&mut e);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2"]);
    launch_all(&mut e, "llm", 3);

    // Capacity returns; nothing happens until a checkpoint makes the
    // restart cheap.
    e.uncordon(4, "n3", "op", "fixed").expect("uncordon");
    assert!(assignments(&drain(&mut e))
        .values()
        .all(|a| a.generation != 3 || a.job.is_none()));
    assert_eq!(job(&e, "llm").record.nodes.len(), 2);
    let actions = checkpoint(&mut e, "llm", "n1", &[50], 5);
    let j = job(&e, "llm");
    assert_eq!(j.record.nodes, ["n1", "n2", "n3"]);
    assert_eq!(j.record.restarts, 1, "growing back is not a failure");
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("growing back from 2 to 3 node(s) right after checkpoint step 50"),
        "{why}"
    );
    assert!(why.contains("resuming from step 50"), "{why}");
}

#[test]
fn restarts_without_progress_fail_the_job_as_a_crash_loop_and_keep_the_spares() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("flaky", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    for i in 0..2 {
        launch_all(&mut e, "flaky", 10 * i);
        rank_fails(&mut e, "flaky", "n1", 1, 10 * i + 5);
        assert_eq!(job(&e, "flaky").record.state, JobState::Recovering);
    }
    launch_all(&mut e, "flaky", 30);
    let actions = rank_fails(&mut e, "flaky", "n1", 1, 35);
    let j = job(&e, "flaky");
    assert_eq!(j.record.state, JobState::Failed);
    assert!(j.record.nodes.is_empty());
    let why = event(&actions, EventKind::JobFailed);
    assert!(
        why.starts_with("crash loop: 3 restarts in a row without a new checkpoint or step advance; last failure: rank 0 (node n1, local rank 0) exited with code 1: RuntimeError: boom"),
        "{why}"
    );
    assert!(assignments(&actions).values().all(|a| a.job.is_none()));
    assert_eq!(e.spares().count(), 3);
}

#[test]
fn progress_between_failures_is_not_a_crash_loop_but_the_restart_budget_still_ends_it() {
    let mut e = cluster(2);
    submit(
        &mut e,
        0,
        &spec("long", 2, 2, "max_restarts = 2\n"),
        "alice",
    )
    .expect("submit");
    drain(&mut e);
    for i in 0..2u64 {
        launch_all(&mut e, "long", i as i64 * 100);
        assert!(progress(
            &mut e,
            "long",
            "n1",
            (i + 1) * 10,
            i as i64 * 100 + 50
        ));
        rank_fails(&mut e, "long", "n2", 137, i as i64 * 100 + 60);
        assert_eq!(job(&e, "long").record.state, JobState::Recovering);
    }
    launch_all(&mut e, "long", 300);
    assert!(progress(&mut e, "long", "n1", 30, 350));
    let actions = rank_fails(&mut e, "long", "n2", 137, 360);
    let j = job(&e, "long");
    assert_eq!(j.record.state, JobState::Failed);
    let why = event(&actions, EventKind::JobFailed);
    assert!(
        why.starts_with("restart budget exhausted: 3 restarts (max_restarts 2)"),
        "{why}"
    );
}

#[test]
fn a_normal_job_preempts_a_low_priority_job_on_the_spares() {
    let mut e = cluster(4);
    submit(&mut e, 0, &spec("prod", 2, 2, ""), "alice").expect("submit");
    submit(
        &mut e,
        1,
        &spec("batch", 2, 1, "priority = \"low\"\n"),
        "bob",
    )
    .expect("submit");
    drain(&mut e);
    assert_eq!(job(&e, "prod").record.nodes, ["n1", "n2"]);
    assert_eq!(job(&e, "batch").record.nodes, ["n3", "n4"]);
    assert_eq!(
        e.spares().count(),
        2,
        "nodes of a preemptible job count as spares"
    );
    launch_all(&mut e, "prod", 2);
    launch_all(&mut e, "batch", 2);

    e.cordon(10, "n1", "xid 48", "sup").expect("cordon");
    let actions = drain(&mut e);
    assert_eq!(job(&e, "prod").record.nodes, ["n2", "n3"]);
    assert_eq!(
        job(&e, "batch").record.nodes,
        ["n4"],
        "shrunk to its minimum"
    );
    assert_eq!(
        job(&e, "batch").record.restarts,
        0,
        "preemption is not its failure"
    );
    assert!(event(&actions, EventKind::JobPreempted).contains("node n3 taken by job 'prod'"));
    let sent = assignments(&actions);
    assert_eq!(
        sent["n3"].job.as_ref().map(|a| a.job.as_str()),
        Some("prod")
    );
}

#[test]
fn reports_from_an_old_generation_are_ignored() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1);
    e.cordon(2, "n2", "bad", "op").expect("cordon");
    drain(&mut e);
    let generation = job(&e, "llm").record.generation;
    assert_eq!(generation, 2);
    // A rank of generation 1 on n1 dies late: nothing happens.
    assert!(!e
        .on_rank_exited(
            3,
            "n1",
            1,
            RankExited {
                job: "llm".into(),
                generation: 1,
                exit_code: Some(1),
                ..Default::default()
            }
        )
        .is_applied());
    assert!(!e
        .on_progress(
            3,
            "n1",
            1,
            JobProgress {
                job: "llm".into(),
                generation: 1,
                step: 999,
                ..Default::default()
            }
        )
        .is_applied());
    assert!(drain(&mut e).is_empty());
    assert_eq!(job(&e, "llm").record.restarts, 1);
    assert_eq!(job(&e, "llm").record.best_step, None);
}

#[test]
fn an_unreachable_node_is_replaced_only_when_the_job_stalls_or_the_grace_passes() {
    let mut e = cluster(4);
    submit(&mut e, 0, &spec("llm", 3, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    // Everyone but n2 keeps reporting.
    for t in [10_000, 20_000, 30_000] {
        for n in ["n1", "n3", "n4"] {
            assert!(e.on_telemetry(t, n, session_of(n), vec![]).is_applied());
        }
    }
    e.handle_timeout(GRACE);
    drain(&mut e);
    assert_eq!(e.node("n2").expect("n2").state(), NodeState::Unreachable);
    // The job still progresses (a partition of supd from n2 alone): wait.
    assert!(progress(&mut e, "llm", "n1", 5, GRACE + 1_000));
    e.handle_timeout(GRACE + 10_000);
    assert!(events(&drain(&mut e))
        .iter()
        .all(|(k, _)| *k != EventKind::JobRestarted));
    assert_eq!(job(&e, "llm").record.generation, 1);
    // Past the lost-node grace it is replaced regardless.
    for n in ["n1", "n3", "n4"] {
        assert!(e
            .on_telemetry(GRACE + 55_000, n, session_of(n), vec![])
            .is_applied());
    }
    e.handle_timeout(GRACE + 60_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(why.starts_with("node n2 lost: unreachable for"), "{why}");
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n3", "n4"]);
}

#[test]
fn an_unreachable_node_of_a_stalled_job_is_replaced_after_the_short_confirmation() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    assert!(e.on_telemetry(20_000, "n1", 1, vec![]).is_applied());
    assert!(e.on_telemetry(20_000, "n3", 3, vec![]).is_applied());
    e.handle_timeout(GRACE);
    drain(&mut e);
    assert_eq!(
        e.poll_timeout(),
        Some(GRACE + 5_000),
        "wakes for the confirmation"
    );
    e.handle_timeout(GRACE + 5_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("node n2 lost: unreachable and the job has made no progress since"),
        "{why}"
    );
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n3"]);
}

#[test]
fn every_rank_exiting_zero_is_success_and_frees_the_nodes() {
    let mut e = cluster(2);
    submit(&mut e, 0, &spec("done", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "done", 0);
    let generation = job(&e, "done").record.generation;
    for n in ["n1", "n2"] {
        for local in 0..2 {
            e.on_rank_exited(
                5,
                n,
                session_of(n),
                RankExited {
                    job: "done".into(),
                    generation,
                    local_rank: local,
                    exit_code: Some(0),
                    ..Default::default()
                },
            );
        }
    }
    let actions = drain(&mut e);
    assert_eq!(job(&e, "done").record.state, JobState::Succeeded);
    assert_eq!(
        event(&actions, EventKind::JobSucceeded),
        "every rank of generation 1 exited 0"
    );
    assert!(assignments(&actions).values().all(|a| a.job.is_none()));
}

#[test]
fn bad_specs_and_duplicates_are_rejected_and_change_nothing() {
    let mut e = cluster(2);
    let err = submit(&mut e, 0, &spec("x", 2, 3, ""), "alice").expect_err("min_nodes > nodes");
    assert!(err.to_string().contains("min_nodes"), "{err}");
    submit(&mut e, 0, &spec("x", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    assert_eq!(
        submit(&mut e, 1, &spec("x", 2, 2, ""), "alice"),
        Err(EngineError::DuplicateJob("x".into()))
    );
    assert!(drain(&mut e).is_empty());
    let (changed, _) = e.stop_job(2, "x", "alice", "done for today").expect("stop");
    assert!(changed);
    assert_eq!(
        job(&e, "x").record.reason,
        "stopped by alice: done for today"
    );
    assert!(e.stop_job(3, "nope", "alice", "").is_err());
}

#[test]
fn restore_keeps_jobs_and_generations_only_grow() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    e.cordon(1, "n1", "bad", "op").expect("cordon");
    drain(&mut e);
    let persisted = Persisted {
        nodes: e.nodes().map(|n| n.record.clone()).collect(),
        events: e.events().cloned().collect(),
        jobs: e.jobs().map(|j| j.record.clone()).collect(),
        breaker: None,
        ..Default::default()
    };
    let mut r = Engine::restore(config(), persisted, 100);
    assert_eq!(job(&r, "llm").record.nodes, ["n2", "n3"]);
    assert_eq!(job(&r, "llm").record.generation, 2);
    // The agents reconnect: each is told the same generation again (no
    // restart of a healthy job), and a new decision gets a higher one.
    register(&mut r, "n2", 12, 2, 101);
    let sent = assignments(&drain(&mut r));
    assert_eq!(sent["n2"].generation, 2);
    register(&mut r, "n3", 13, 2, 101);
    drain(&mut r);
    assert_eq!(job(&r, "llm").record.restarts, 1);
    r.cordon(102, "n3", "bad", "op").expect("cordon");
    let sent = assignments(&drain(&mut r));
    assert_eq!(job(&r, "llm").record.state, JobState::Pending);
    assert!(
        sent["n2"].generation > 2 && sent["n2"].job.is_none(),
        "{sent:?}"
    );
}

// -- partition guard --------------------------------------------------------

#[test]
fn most_nodes_unreachable_at_once_holds_restarts_and_raises_an_alert() {
    // 6 nodes, threshold max(3, ceil(0.5 × 6)) = 3.
    let mut e = cluster(6);
    submit(&mut e, 0, &spec("llm", 4, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2", "n3", "n4"]);
    // Only n6 still reaches supd: five nodes go silent together.
    assert!(e.on_telemetry(20_000, "n6", 6, vec![]).is_applied());
    e.handle_timeout(GRACE);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::PartitionSuspected);
    assert!(
        why.starts_with("5 of 6 nodes turned unreachable within 1m (threshold 3): suspecting supd's own network"),
        "{why}"
    );
    assert_eq!(e.partition_suspected_since(), Some(GRACE));
    // The job made no progress since (it cannot: its reports go through the
    // silent agents), and the lost-node grace passes too: still no restart,
    // no cordon, no assignment change.
    for t in [GRACE + 5_000, GRACE + 70_000, GRACE + 600_000] {
        assert!(e.on_telemetry(t, "n6", 6, vec![]).is_applied());
        e.handle_timeout(t);
        let actions = drain(&mut e);
        let kinds: Vec<EventKind> = events(&actions).into_iter().map(|(k, _)| k).collect();
        assert!(
            !kinds.contains(&EventKind::JobRestarted) && !kinds.contains(&EventKind::NodeCordoned),
            "held at {t}: {kinds:?}"
        );
        assert!(
            assignments(&actions).is_empty(),
            "no assignment change at {t}"
        );
    }
    assert_eq!(job(&e, "llm").record.generation, 1);
    assert!(e.nodes().all(|n| n.record.cordon.is_none()));

    // Nodes re-confirm: the hold ends once fewer than 3 are unreachable.
    let back = GRACE + 601_000;
    for n in ["n1", "n2"] {
        assert!(e.on_telemetry(back, n, session_of(n), vec![]).is_applied());
    }
    assert!(
        e.partition_suspected_since().is_some(),
        "3 still unreachable: still held"
    );
    assert!(e.on_telemetry(back, "n3", 3, vec![]).is_applied());
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::PartitionCleared);
    assert!(
        why.starts_with("nodes re-confirmed after 10m 1s: 2 of 6 still unreachable (threshold 3)"),
        "{why}"
    );
    assert_eq!(e.partition_suspected_since(), None);
    // n4 (in the job) still silent: it gets a fresh grace from now, not an
    // instant restart for the time the partition lasted.
    assert!(events(&actions)
        .iter()
        .all(|(k, _)| *k != EventKind::JobRestarted));
    assert_eq!(job(&e, "llm").record.generation, 1);
    // Normal lost-node handling resumes: the job stalls, n4 is replaced
    // after the short confirmation.
    for n in ["n1", "n2", "n3", "n6"] {
        assert!(e
            .on_telemetry(back + 4_000, n, session_of(n), vec![])
            .is_applied());
    }
    e.handle_timeout(back + 5_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("node n4 lost: unreachable and the job has made no progress since"),
        "{why}"
    );
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2", "n3", "n6"]);
}

#[test]
fn a_few_nodes_unreachable_is_not_a_partition() {
    let mut e = cluster(6);
    submit(&mut e, 0, &spec("llm", 4, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    // Two of six go silent: below the threshold of 3.
    for n in ["n1", "n3", "n4", "n6"] {
        assert!(e
            .on_telemetry(20_000, n, session_of(n), vec![])
            .is_applied());
    }
    e.handle_timeout(GRACE);
    let actions = drain(&mut e);
    assert!(events(&actions)
        .iter()
        .all(|(k, _)| *k != EventKind::PartitionSuspected));
    assert_eq!(e.partition_suspected_since(), None);
    // The stalled job's lost node is replaced as usual.
    e.handle_timeout(GRACE + 5_000);
    let why = event(&drain(&mut e), EventKind::JobRestarted);
    assert!(why.starts_with("node n2 lost"), "{why}");
}

#[test]
fn nodes_lost_one_by_one_over_a_long_time_are_not_a_partition() {
    let mut e = Engine::new(EngineConfig {
        partition_window_ms: 10_000,
        ..config()
    });
    for i in 1..=4u32 {
        register(&mut e, &format!("n{i}"), SessionId::from(i), 2, 0);
    }
    drain(&mut e);
    // n1 silent from 0, n2 from 20 s, n3 from 40 s: never 3 within 10 s.
    for t in [10_000, 20_000, 30_000, 40_000, 50_000, 60_000] {
        for n in ["n2", "n3", "n4"] {
            if (n == "n2" && t > 20_000) || (n == "n3" && t > 40_000) {
                continue;
            }
            assert!(e.on_telemetry(t, n, session_of(n), vec![]).is_applied());
        }
        e.handle_timeout(t + GRACE - 10_000);
    }
    e.handle_timeout(40_000 + GRACE);
    let actions = drain(&mut e);
    assert_eq!(e.nodes().filter(|n| n.unreachable).count(), 3);
    assert!(events(&actions)
        .iter()
        .all(|(k, _)| *k != EventKind::PartitionSuspected));
    assert_eq!(e.partition_suspected_since(), None);
}

#[test]
fn during_a_partition_hold_an_operator_cordon_still_replaces_the_node() {
    let mut e = cluster(6);
    submit(&mut e, 0, &spec("llm", 2, 1, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 0);
    assert!(e.on_telemetry(20_000, "n6", 6, vec![]).is_applied());
    assert!(e.on_telemetry(20_000, "n5", 5, vec![]).is_applied());
    e.handle_timeout(GRACE);
    let actions = drain(&mut e);
    event(&actions, EventKind::PartitionSuspected);
    // The operator knows n2 is really gone (its rack lost power).
    e.cordon(GRACE + 1_000, "n2", "rack 7 lost power", "bob")
        .expect("cordon");
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.starts_with("node n2 cordoned by bob: rack 7 lost power"),
        "{why}"
    );
    assert!(
        e.partition_suspected_since().is_some(),
        "the hold stays for the others"
    );
}

#[test]
fn the_recovery_time_is_a_field_of_the_job_running_event_and_said_in_its_reason() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    let first = launch_all(&mut e, "llm", 1_000);
    let running = first
        .iter()
        .find_map(|a| match a {
            Action::Persist(Change::AppendEvent(ev)) if ev.kind == EventKind::JobRunning => {
                Some(ev.clone())
            }
            _ => None,
        })
        .expect("first generation running");
    // A first start is no recovery: said, not counted as one.
    assert_eq!(running.recovery_ms, None);
    assert!(
        running
            .reason
            .contains("every rank launched 1000 ms after it was placed"),
        "{}",
        running.reason
    );
    let node = job(&e, "llm").record.nodes[0].clone();
    e.cordon(10_000, &node, "Xid 79", "sup").expect("cordon");
    drain(&mut e);
    let actions = launch_all(&mut e, "llm", 10_061);
    let running = actions
        .iter()
        .find_map(|a| match a {
            Action::Persist(Change::AppendEvent(ev)) if ev.kind == EventKind::JobRunning => {
                Some(ev.clone())
            }
            _ => None,
        })
        .expect("replacement generation running");
    assert_eq!(running.recovery_ms, Some(61));
    assert!(
        running
            .reason
            .contains("every rank launched 61 ms after the fault was reported"),
        "{}",
        running.reason
    );
}

/// What a store would hold after `actions`: enough of it to restore.
#[test]
fn a_restart_continues_the_generation_counter_agents_fence_by() {
    let mut e = cluster(2);
    let mut store = Persisted::default();
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    stored(&drain(&mut e), &mut store);
    stored(&launch_all(&mut e, "llm", 1_000), &mut store);
    e.stop_job(2_000, "llm", "alice", "done").expect("stop");
    let actions = drain(&mut e);
    stored(&actions, &mut store);
    // Releasing the nodes took a generation no job record keeps: the
    // agents were told "nothing" at it, and hold it.
    let held = assignments(&actions)
        .values()
        .map(|a| a.generation)
        .max()
        .expect("the nodes are told to stop");
    assert!(held > job(&e, "llm").record.generation);

    let mut r = Engine::restore(config(), store, 4_000);
    assert_eq!(r.last_generation(), held);
    // The agents reconnect to the new supd; the job is submitted again.
    register(&mut r, "n1", 11, 2, 4_500);
    register(&mut r, "n2", 12, 2, 4_500);
    drain(&mut r);
    submit(&mut r, 6_000, &spec("llm", 2, 2, ""), "alice").expect("resubmit");
    let actions = drain(&mut r);
    let started = assignments(&actions)
        .values()
        .map(|a| a.generation)
        .min()
        .expect("the job starts");
    assert!(
        started > held,
        "generation {started} after the restart would be dropped by agents that hold {held}"
    );
}

#[test]
fn a_node_back_with_fewer_gpus_than_its_job_needs_is_replaced() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    let first = job(&e, "llm").record.nodes[0].clone();
    // The agent restarts; the driver lists one GPU of two.
    register(&mut e, &first, 99, 1, 2_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.contains(&format!(
            "node {first} has 1 GPU(s) now, the job needs 2 per node"
        )),
        "{why}"
    );
    assert!(!job(&e, "llm").record.nodes.contains(&first));
}

/// Cordons `node` (at 6 s) and gives the resume step of every assignment
/// of the generation that follows (none: the test fails).
fn resume_steps_after_cordoning(e: &mut Engine, node: &str) -> Vec<Option<u64>> {
    e.cordon(6_000, node, "maintenance", "op").expect("cordon");
    let actions = drain(e);
    let resume: Vec<Option<u64>> = assignments(&actions)
        .values()
        .filter_map(|a| a.job.as_ref())
        .map(|j| j.resume_from.as_ref().map(|c| c.step))
        .collect();
    assert!(!resume.is_empty(), "no generation followed the cordon");
    resume
}

#[test]
fn a_node_cannot_choose_the_resume_point_with_a_path_outside_the_dir_or_an_absurd_step() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    progress(&mut e, "llm", "n1", 120, 2_000);
    checkpoint(&mut e, "llm", "n1", &[100], 3_000);
    // n2 lists two entries supd must not believe, and a true one.
    let hostile = CheckpointCatalog {
        job: "llm".to_owned(),
        checkpoints: vec![
            Checkpoint {
                step: 110,
                path: "/ckpt/llm/../other/step-110".to_owned(),
                ..Default::default()
            },
            Checkpoint {
                step: u64::MAX,
                path: "/ckpt/llm/step-huge".to_owned(),
                ..Default::default()
            },
            Checkpoint {
                step: 100,
                path: "/ckpt/llm/step-100".to_owned(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert!(e
        .on_checkpoint_catalog(4_000, "n2", session_of("n2"), hostile.clone())
        .is_applied());
    let actions = drain(&mut e);
    let refused: Vec<String> = events(&actions)
        .into_iter()
        .filter(|(k, _)| *k == EventKind::CheckpointRefused)
        .map(|(_, why)| why)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].starts_with("node n2 listed a checkpoint that is not believed: '/ckpt/llm/../other/step-110' is not inside"), "{}", refused[0]);
    assert!(
        refused[1].contains(
            "step 18446744073709551615 is beyond any the job reached (its nodes agree on step 120"
        ),
        "{}",
        refused[1]
    );
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(100)
    );
    // Listed again: refused again, said once.
    e.on_checkpoint_catalog(5_000, "n2", session_of("n2"), hostile);
    assert!(!has(&drain(&mut e), EventKind::CheckpointRefused));
    // The next generation resumes from the true newest checkpoint.
    let resume = resume_steps_after_cordoning(&mut e, "n1");
    assert!(resume.iter().all(|r| *r == Some(100)), "{resume:?}");
}

#[test]
fn an_unverified_checkpoint_is_said_once_per_path_naming_the_file_and_the_previous_one_resumes() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    progress(&mut e, "llm", "n1", 120, 2_000);
    let catalog = CheckpointCatalog {
        job: "llm".to_owned(),
        checkpoints: vec![Checkpoint {
            step: 100,
            path: "/ckpt/llm/step-100".to_owned(),
            verified: "dcp .metadata: 2 storage files, every extent present".to_owned(),
        }],
        unverified: vec![
            UnverifiedCheckpoint {
                step: 110,
                path: "/ckpt/llm/step-110".to_owned(),
                problem: "__1_0.distcp is 100 bytes, .metadata needs 43157".to_owned(),
            },
            // Not the job's directory: not the job's to report on.
            UnverifiedCheckpoint {
                step: 110,
                path: "/elsewhere/step-110".to_owned(),
                problem: "made up".to_owned(),
            },
        ],
    };
    // Both nodes of the job scan the same directory and say the same.
    for (now, node) in [(3_000, "n1"), (3_500, "n2"), (4_000, "n1")] {
        assert!(e
            .on_checkpoint_catalog(now, node, session_of(node), catalog.clone())
            .is_applied());
    }
    let actions = drain(&mut e);
    let said: Vec<String> = events(&actions)
        .into_iter()
        .filter(|(k, _)| *k == EventKind::CheckpointUnverified)
        .map(|(_, why)| why)
        .collect();
    assert_eq!(
        said,
        [
            "node n1 found checkpoint step 110 ('/ckpt/llm/step-110') marked complete but not \
          verified: __1_0.distcp is 100 bytes, .metadata needs 43157; it is not a resume point"
        ]
    );
    let chosen = job(&e, "llm")
        .record
        .checkpoint
        .clone()
        .expect("a checkpoint");
    assert_eq!(chosen.step, 100);
    assert_eq!(
        chosen.verified,
        "dcp .metadata: 2 storage files, every extent present"
    );
    let resume = resume_steps_after_cordoning(&mut e, "n1");
    assert!(resume.iter().all(|r| *r == Some(100)), "{resume:?}");
}

#[test]
fn the_newest_checkpoint_found_damaged_after_it_was_listed_is_no_longer_the_resume_point() {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    progress(&mut e, "llm", "n1", 120, 2_000);
    checkpoint(&mut e, "llm", "n1", &[50, 100], 3_000);
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(100)
    );
    drain(&mut e);
    // A shard of step 100 is cut short: the next scan lists only step 50.
    let catalog = CheckpointCatalog {
        job: "llm".to_owned(),
        checkpoints: vec![Checkpoint {
            step: 50,
            path: "/ckpt/llm/step-50".to_owned(),
            ..Default::default()
        }],
        unverified: vec![UnverifiedCheckpoint {
            step: 100,
            path: "/ckpt/llm/step-100".to_owned(),
            problem: "__0_0.distcp is 1 bytes, .metadata needs at least 9".to_owned(),
        }],
    };
    assert!(e
        .on_checkpoint_catalog(4_000, "n1", session_of("n1"), catalog)
        .is_applied());
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::CheckpointUnverified);
    assert!(
        why.ends_with(
            "; the job's newest checkpoint was step 100, it is step 50 ('/ckpt/llm/step-50') again"
        ),
        "{why}"
    );
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(50)
    );
    let resume = resume_steps_after_cordoning(&mut e, "n1");
    assert!(resume.iter().all(|r| *r == Some(50)), "{resume:?}");
}

#[test]
fn one_node_reporting_an_absurd_step_cannot_vouch_for_its_own_checkpoint() {
    let mut e = cluster(4);
    submit(&mut e, 0, &spec("llm", 3, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    let nodes = job(&e, "llm").record.nodes.clone();
    let (honest, evil) = (&nodes[..2], &nodes[2]);
    for n in honest {
        assert!(progress(&mut e, "llm", n, 120, 2_000));
    }
    assert!(progress(&mut e, "llm", evil, 1_000_000_000_000_000, 2_000));
    assert_eq!(job(&e, "llm").agreed_step(), Some(120));
    let actions = checkpoint(&mut e, "llm", evil, &[1_000_000_000_000_000], 3_000);
    let why = event(&actions, EventKind::CheckpointRefused);
    assert!(
        why.contains("is beyond any the job reached (its nodes agree on step 120"),
        "{why}"
    );
    assert_eq!(job(&e, "llm").record.checkpoint, None);
    assert_eq!(job(&e, "llm").record.best_step, Some(120));
}

#[test]
fn a_job_larger_than_the_clusters_max_nodes_is_refused_naming_the_key() {
    let mut config = config();
    config.max_job_nodes = 4;
    let mut e = cluster_with(config, 2);
    let err = submit(&mut e, 0, &spec("big", 5, 1, ""), "alice").expect_err("refused");
    assert!(
        err.to_string()
            .contains("nodes: 5 is more than this cluster's jobs.max_nodes (4)"),
        "{err}"
    );
    submit(&mut e, 0, &spec("fits", 4, 1, ""), "alice").expect("4 nodes may be asked for");
}

#[test]
fn the_jobs_user_and_group_reach_every_node_it_runs_on() {
    let mut e = cluster(2);
    submit(
        &mut e,
        1_000,
        &spec("as-user", 2, 2, "user = \"trainer\"\ngroup = \"ml\"\n"),
        "alice",
    )
    .expect("submit");
    let sent = assignments(&drain(&mut e));
    for node in ["n1", "n2"] {
        let a = sent[node].job.as_ref().expect("assigned");
        assert_eq!(
            (a.job.as_str(), a.user.as_str(), a.group.as_str()),
            ("as-user", "trainer", "ml"),
            "{node}"
        );
    }
    let invalid = submit(
        &mut e,
        1_000,
        &spec("bad", 1, 1, "group = \"ml\"\n"),
        "alice",
    )
    .expect_err("a group alone is refused");
    assert!(
        invalid.to_string().contains("group: needs user"),
        "{invalid}"
    );
}

#[test]
fn logs_of_a_job_on_no_node_are_asked_of_the_nodes_that_ran_it_last() {
    let mut e = cluster(2);
    submit(&mut e, 0, &spec("never", 3, 3, ""), "alice").expect("submit");
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    let err = e.rank_location("never", 0).expect_err("never placed");
    assert_eq!(
        err.to_string(),
        "job 'never' has not run on any node yet (pending): it has no rank logs"
    );
    assert_eq!(e.rank_location("llm", 3), Ok(("n2".to_owned(), 1)));

    // Waiting for nodes: asked of the nodes of the generation that ran.
    e.cordon(1_000, "n2", "Xid 79", "alice").expect("cordon");
    drain(&mut e);
    let waiting = &job(&e, "llm").record;
    assert!(waiting.nodes.is_empty(), "{waiting:?}");
    assert_eq!(waiting.last_nodes, ["n1", "n2"]);
    assert_eq!(e.rank_location("llm", 3), Ok(("n2".to_owned(), 1)));
    // Placed again: current nodes only.
    e.uncordon_validated(2_000, "n2", "alice", "replaced", false)
        .expect("uncordon");
    e.handle_timeout(3_000);
    drain(&mut e);
    let placed = &job(&e, "llm").record;
    assert_eq!(placed.nodes.len(), 2, "{placed:?}");
    assert!(placed.last_nodes.is_empty(), "{placed:?}");

    // Ended: its last generation's nodes, in node-rank order, are stored
    // with the job.
    let ran = placed.nodes.clone();
    e.stop_job(200_000, "llm", "alice", "done").expect("stop");
    drain(&mut e);
    let stopped = &job(&e, "llm").record;
    assert!(stopped.nodes.is_empty());
    assert_eq!(stopped.last_nodes, ran);
    assert_eq!(e.rank_location("llm", 0), Ok((ran[0].clone(), 0)));
    assert_eq!(e.rank_location("llm", 3), Ok((ran[1].clone(), 1)));
    let err = e.rank_location("llm", 4).expect_err("out of range");
    assert_eq!(
        err.to_string(),
        "job 'llm' has no rank 4 (its last world size is 4)"
    );
}
