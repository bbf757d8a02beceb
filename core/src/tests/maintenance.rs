//! Planned maintenance: a drain moves the job off at its next checkpoint
//! without counting a restart, then cordons the node; removal takes only
//! idle cordoned or unreachable nodes.

use super::support::*;
use crate::*;

fn spec(name: &str, nodes: u32) -> String {
    format!(
        "name = \"{name}\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {nodes}\nmin_nodes = 1\ngpus_per_node = 2\ncheckpoint_dir = \"/ckpt/{name}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n"
    )
}

const HOUR: Millis = 3_600_000;

/// A 2-node job running on 3 nodes with a checkpoint at step 100.
fn running_job() -> (Engine, String) {
    let mut e = cluster(3);
    submit(&mut e, 0, &spec("llm", 2), "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    checkpoint(&mut e, "llm", "n1", &[100], 2_000);
    let node = job(&e, "llm").record.nodes[1].clone();
    (e, node)
}

#[test]
fn a_drained_node_keeps_its_job_until_the_next_checkpoint_then_moves_it_uncounted() {
    let (mut e, node) = running_job();
    let generation = job(&e, "llm").record.generation;
    let outcome = e
        .drain(3_000, &node, "bios update", "alice", HOUR)
        .expect("drain");
    assert!(outcome.changed);
    assert!(
        outcome
            .message
            .contains("moves off at its next complete checkpoint (after step 100)"),
        "{}",
        outcome.message
    );
    let actions = drain(&mut e);
    assert!(event(&actions, EventKind::NodeDraining).starts_with("drain by alice: bios update"));
    assert_eq!(e.node(&node).expect("node").state(), NodeState::Draining);
    assert_eq!(
        job(&e, "llm").record.generation,
        generation,
        "still training"
    );

    // The same checkpoint listed again changes nothing.
    let actions = checkpoint(&mut e, "llm", "n1", &[100], 4_000);
    assert!(!has(&actions, EventKind::JobRestarted));

    // The next complete checkpoint: the job moves off, from that checkpoint.
    let actions = checkpoint(&mut e, "llm", "n1", &[100, 200], 5_000);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.contains(&format!("off node {node}: planned move (drained by alice: bios update) at its new checkpoint, step 200")),
        "{why}"
    );
    let resumes: Vec<Option<u64>> = assignments(&actions)
        .values()
        .filter_map(|a| a.job.as_ref())
        .map(|j| j.resume_from.as_ref().map(|c| c.step))
        .collect();
    assert!(
        !resumes.is_empty() && resumes.iter().all(|r| *r == Some(200)),
        "{resumes:?}"
    );
    let j = job(&e, "llm");
    assert!(j.record.generation > generation);
    assert!(!j.record.nodes.contains(&node), "moved off {node}");
    assert_eq!(j.record.restarts, 0, "a planned move is not a restart");
    assert_eq!(j.record.fruitless_restarts, 0);
    assert_eq!(j.record.planned_moves, 1);
    // And the node ends cordoned, with the reason and who.
    let n = e.node(&node).expect("node");
    assert_eq!(n.state(), NodeState::Cordoned);
    let cordon = n.record.cordon.as_ref().expect("cordoned");
    assert_eq!(
        (cordon.by.as_str(), cordon.reason.as_str()),
        ("alice", "drained: bios update")
    );
    assert!(n.record.drain.is_none());
}

#[test]
fn a_drain_without_a_new_checkpoint_moves_at_its_deadline() {
    let (mut e, node) = running_job();
    e.drain(3_000, &node, "rack move", "bob", 10_000)
        .expect("drain");
    drain(&mut e);
    assert!(e.poll_timeout().is_some_and(|t| t <= 13_000));
    e.handle_timeout(13_000);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobRestarted);
    assert!(
        why.contains("the drain deadline passed before a new checkpoint; generation"),
        "{why}"
    );
    assert!(
        why.ends_with("resuming from step 100 (/ckpt/llm/step-100)"),
        "{why}"
    );
    assert_eq!(job(&e, "llm").record.restarts, 0);
    assert_eq!(e.node(&node).expect("node").state(), NodeState::Cordoned);
}

#[test]
fn an_idle_node_is_cordoned_at_once_and_a_drain_can_be_cancelled() {
    let (mut e, node) = running_job();
    let idle = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| !job(&e, "llm").record.nodes.iter().any(|m| m == n))
        .expect("a spare");
    let outcome = e
        .drain(3_000, idle, "disk swap", "alice", HOUR)
        .expect("drain");
    assert!(
        outcome.message.contains("holds no job: cordoned now"),
        "{}",
        outcome.message
    );
    drain(&mut e);
    assert_eq!(e.node(idle).expect("node").state(), NodeState::Cordoned);

    e.drain(4_000, &node, "maybe", "alice", HOUR)
        .expect("drain");
    drain(&mut e);
    let outcome = e
        .uncordon(5_000, &node, "alice", "not today")
        .expect("cancel");
    assert_eq!(
        outcome.message,
        format!("node '{node}' is no longer draining")
    );
    drain(&mut e);
    assert_eq!(e.node(&node).expect("node").state(), NodeState::Ready);
    // A checkpoint after the cancel moves nothing.
    let actions = checkpoint(&mut e, "llm", "n1", &[100, 200], 6_000);
    assert!(!has(&actions, EventKind::JobRestarted));
}

#[test]
fn only_an_idle_cordoned_or_unreachable_node_can_be_removed() {
    let (mut e, node) = running_job();
    let err = e
        .remove_node(3_000, &node, "alice")
        .expect_err("holds a job");
    assert!(err.to_string().contains("holds job 'llm'"), "{err}");
    let idle = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| !job(&e, "llm").record.nodes.iter().any(|m| m == n))
        .expect("a spare")
        .to_owned();
    let err = e.remove_node(3_000, &idle, "alice").expect_err("connected");
    assert!(
        err.to_string()
            .contains("has a connected agent: stop sup-agent on it first"),
        "{err}"
    );
    e.on_disconnected(3_500, &idle, session_of(&idle));
    let err = e.remove_node(3_600, &idle, "alice").expect_err("ready");
    assert!(
        err.to_string()
            .contains("is ready: only a cordoned or unreachable node"),
        "{err}"
    );
    e.cordon(4_000, &idle, "RMA", "alice").expect("cordon");
    drain(&mut e);
    e.remove_node(5_000, &idle, "alice").expect("remove");
    let actions = drain(&mut e);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Persist(Change::DeleteNode(id)) if *id == idle)));
    assert_eq!(
        event(&actions, EventKind::NodeRemoved),
        "removed by alice (was cordoned)"
    );
    assert!(e.node(&idle).is_err());
    assert!(matches!(
        e.remove_node(6_000, &idle, "alice"),
        Err(EngineError::UnknownNode(_))
    ));
}
