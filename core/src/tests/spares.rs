//! The spare reserve: `spares_target` healthy nodes kept free of normal
//! work, lent to low-priority jobs and taken back the moment a normal job
//! needs a spare.

use super::support::*;
use crate::*;

fn spec(name: &str, nodes: u32, min: u32, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {nodes}\nmin_nodes = {min}\ngpus_per_node = 2\ncheckpoint_dir = \"/ckpt/{name}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n{extra}"
    )
}

/// Nodes n1..=n`count` with a reserve of `target` spares.
fn reserved(count: u32, target: u32) -> Engine {
    cluster_with(
        EngineConfig {
            spares_target: target,
            ..config()
        },
        count,
    )
}

fn low(name: &str, nodes: u32) -> String {
    spec(name, nodes, 1, "priority = \"low\"\n")
}

#[test]
fn a_job_that_needs_the_reserve_to_start_waits_and_says_so() {
    let mut e = reserved(4, 1);
    submit(&mut e, 0, &spec("llm", 4, 4, ""), "alice").expect("submit");
    let actions = drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.state, JobState::Pending);
    assert!(j.record.nodes.is_empty());
    let why = event(&actions, EventKind::JobPending);
    assert_eq!(
        why,
        "waiting for capacity: needs at least 4 node(s) with 2 GPU(s) each, 3 available; \
         1 more kept free as the spare reserve (jobs.spares_target = 1; a spec with \
         use_reserved_spares = true may use it)"
    );
    assert_eq!(j.record.reason, why);
    assert_eq!(e.spare_pool().free.len(), 4);
}

#[test]
fn a_job_that_fits_beside_the_reserve_starts_and_leaves_it_free() {
    let mut e = reserved(4, 1);
    submit(&mut e, 0, &spec("llm", 4, 3, ""), "alice").expect("submit");
    let actions = drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.nodes, ["n1", "n2", "n3"]);
    assert!(event(&actions, EventKind::JobStarted).contains("generation 1 on 3 node(s)"));
    let pool = e.spare_pool();
    assert_eq!(
        (pool.target, pool.free, pool.lent),
        (1, vec!["n4".to_owned()], vec![])
    );
    assert!(!has(&actions, EventKind::SparesLow));
}

#[test]
fn a_spec_may_opt_into_the_reserve() {
    let mut e = reserved(4, 1);
    submit(
        &mut e,
        0,
        &spec("llm", 4, 4, "use_reserved_spares = true\n"),
        "alice",
    )
    .expect("submit");
    let actions = drain(&mut e);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2", "n3", "n4"]);
    assert_eq!(
        event(&actions, EventKind::SparesLow),
        "spare pool at 0 node(s), below its target of 1"
    );
}

#[test]
fn low_priority_work_borrows_the_reserve_and_gives_it_back_when_a_normal_job_loses_a_node() {
    let mut e = reserved(4, 1);
    submit(&mut e, 0, &spec("llm", 4, 3, ""), "alice").expect("submit");
    drain(&mut e);
    submit(&mut e, 1, &low("batch", 1), "bob").expect("submit");
    drain(&mut e);
    assert_eq!(
        job(&e, "batch").record.nodes,
        ["n4"],
        "low work may use the reserve"
    );
    let pool = e.spare_pool();
    assert!(pool.free.is_empty());
    assert_eq!(pool.lent, [("n4".to_owned(), "batch".to_owned())]);
    launch_all(&mut e, "llm", 2);
    launch_all(&mut e, "batch", 2);
    checkpoint(&mut e, "llm", "n1", &[10], 3);

    // A node of the normal job fails: the spare is taken back at once, in
    // the same decision.
    e.cordon(10, "n2", "xid 79", "sup").expect("cordon");
    let actions = drain(&mut e);
    let llm = job(&e, "llm");
    assert_eq!(llm.record.nodes, ["n1", "n3", "n4"]);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(why.contains("replaced n2 with n4"), "{why}");
    assert!(why.contains("resuming from step 10"), "{why}");
    assert_eq!(
        event(&actions, EventKind::JobPreempted),
        "node n4 taken by job 'llm' (normal priority)"
    );
    let batch = job(&e, "batch");
    assert_eq!(batch.record.state, JobState::Pending);
    let why = event(&actions, EventKind::JobPending);
    assert!(
        why.ends_with("; after: preempted: node n4 is needed by job 'llm'"),
        "{why}"
    );
    assert_eq!(batch.record.restarts, 0, "preemption is not its failure");
    let sent = assignments(&actions);
    assert_eq!(sent["n4"].job.as_ref().map(|a| a.job.as_str()), Some("llm"));
    launch_all(&mut e, "llm", 20);

    // The node comes back: it refills the reserve, so the low job runs on
    // it again and the normal job does not grow into it.
    e.uncordon(30, "n2", "op", "reseated").expect("uncordon");
    drain(&mut e);
    assert_eq!(job(&e, "batch").record.nodes, ["n2"]);
    assert_eq!(e.spare_pool().lent, [("n2".to_owned(), "batch".to_owned())]);
    checkpoint(&mut e, "llm", "n1", &[10, 20], 40);
    assert_eq!(
        job(&e, "llm").record.nodes,
        ["n1", "n3", "n4"],
        "growing back may not take the reserve"
    );
}

#[test]
fn growing_back_uses_capacity_beyond_the_reserve() {
    let mut e = reserved(5, 1);
    submit(&mut e, 0, &spec("llm", 4, 3, ""), "alice").expect("submit");
    drain(&mut e);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n2", "n3", "n4"]);
    launch_all(&mut e, "llm", 1);
    // Two nodes fail: one spare replaces one, the job shrinks to 3.
    e.cordon(10, "n2", "xid 79", "sup").expect("cordon");
    drain(&mut e);
    launch_all(&mut e, "llm", 11);
    e.cordon(12, "n3", "xid 79", "sup").expect("cordon");
    drain(&mut e);
    assert_eq!(job(&e, "llm").record.nodes, ["n1", "n4", "n5"]);
    launch_all(&mut e, "llm", 13);

    // One returns: it is the reserve. A second returns: the job grows.
    e.uncordon(20, "n2", "op", "fixed").expect("uncordon");
    drain(&mut e);
    checkpoint(&mut e, "llm", "n1", &[30], 21);
    assert_eq!(job(&e, "llm").record.nodes.len(), 3);
    e.uncordon(22, "n3", "op", "fixed").expect("uncordon");
    drain(&mut e);
    let actions = checkpoint(&mut e, "llm", "n1", &[30, 40], 23);
    assert_eq!(job(&e, "llm").record.nodes.len(), 4);
    assert!(event(&actions, EventKind::JobRestarted).starts_with("growing back from 3 to 4"));
    assert_eq!(e.spare_pool().free.len(), 1, "the reserve is still there");
}

#[test]
fn a_job_that_lost_every_node_may_use_the_reserve_to_reach_its_minimum() {
    let mut e = reserved(3, 1);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1);
    // Both nodes fail in one batch: one spare is not enough, it waits.
    e.cordon(10, "n1", "xid 79", "sup").expect("cordon");
    e.cordon(10, "n2", "xid 79", "sup").expect("cordon");
    drain(&mut e);
    assert_eq!(job(&e, "llm").record.state, JobState::Pending);
    // One returns: with the spare, it reaches min_nodes again.
    e.uncordon(20, "n1", "op", "fixed").expect("uncordon");
    drain(&mut e);
    let j = job(&e, "llm");
    assert_eq!(j.record.state, JobState::Recovering);
    assert_eq!(j.record.nodes.len(), 2);
}

#[test]
fn a_drained_node_moves_its_job_onto_the_reserve() {
    let mut e = reserved(3, 1);
    submit(&mut e, 0, &spec("llm", 2, 2, ""), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1);
    e.drain(2, "n1", "firmware", "op", 3_600_000)
        .expect("drain");
    drain(&mut e);
    checkpoint(&mut e, "llm", "n2", &[10], 3);
    assert_eq!(job(&e, "llm").record.nodes, ["n2", "n3"]);
}
