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

/// A cluster of three; n3's agent has a validation command.
fn cluster_with_validation() -> Engine {
    let mut e = cluster(2);
    e.on_register(
        0,
        Registration {
            validates: true,
            session: session_of("n3"),
            node_id: "n3".to_owned(),
            address: "addr-n3".to_owned(),
            hostname: "n3".to_owned(),
            agent_version: "0".to_owned(),
            instance_id: "i-n3".to_owned(),
            gpu_backend: "sim".to_owned(),
            gpus: vec![GpuInventory {
                index: 0,
                uuid: "GPU-n3-0".to_owned(),
                name: "NVIDIA H100 80GB HBM3".to_owned(),
                pci_bus_id: String::new(),
                memory_total_bytes: None,
            }],
        },
    )
    .expect("register");
    assert!(e
        .on_telemetry(0, "n3", session_of("n3"), vec![])
        .is_applied());
    e.cordon(1_000, "n3", "HBM errors", "alice")
        .expect("cordon");
    drain(&mut e);
    e
}

fn validation_id(actions: &[Action]) -> u64 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::SendValidation { node_id, id } if node_id == "n3" => Some(*id),
            _ => None,
        })
        .expect("a validation request")
}

#[test]
fn an_uncordon_waits_for_the_validation_and_a_pass_returns_the_node() {
    let mut e = cluster_with_validation();
    let outcome = e
        .uncordon(2_000, "n3", "bob", "board replaced")
        .expect("uncordon");
    assert!(
        outcome.message.contains("is being validated"),
        "{}",
        outcome.message
    );
    let actions = drain(&mut e);
    let id = validation_id(&actions);
    assert!(has(&actions, EventKind::NodeValidating));
    assert_eq!(
        e.node("n3").expect("n3").state(),
        NodeState::Cordoned,
        "not yet"
    );
    // Asked again while it runs: nothing new.
    let again = e.uncordon(2_500, "n3", "bob", "").expect("again");
    assert!(!again.changed && again.message.contains("already being validated"));
    // A stale answer (another id) changes nothing.
    assert!(!e
        .on_validation_result(3_000, "n3", session_of("n3"), id + 7, true, "")
        .is_applied());
    assert!(e
        .on_validation_result(3_000, "n3", session_of("n3"), id, true, "all pass")
        .is_applied());
    let actions = drain(&mut e);
    assert_eq!(
        event(&actions, EventKind::NodeUncordoned),
        "uncordoned by bob after its validation passed (was cordoned by alice: HBM errors): board replaced"
    );
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Ready);
}

#[test]
fn a_failed_validation_keeps_the_node_cordoned_with_the_output_as_evidence() {
    let mut e = cluster_with_validation();
    e.uncordon(2_000, "n3", "bob", "").expect("uncordon");
    let id = validation_id(&drain(&mut e));
    let output = format!("{}GPU 0: HBM test FAILED", "noise\n".repeat(500));
    assert!(e
        .on_validation_result(3_000, "n3", session_of("n3"), id, false, &output)
        .is_applied());
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::NodeValidationFailed);
    assert!(
        why.starts_with("validation failed, the node stays cordoned: …"),
        "{why}"
    );
    assert!(why.ends_with("GPU 0: HBM test FAILED"), "{why}");
    let n = e.node("n3").expect("n3");
    assert_eq!(n.state(), NodeState::Cordoned);
    let evidence = n
        .record
        .cordon
        .as_ref()
        .and_then(|c| c.validation.clone())
        .expect("kept");
    assert!(evidence.len() <= 1024 + '…'.len_utf8() && evidence.ends_with("HBM test FAILED"));
    // --skip-validation returns it anyway.
    e.uncordon_validated(4_000, "n3", "bob", "known good", false)
        .expect("skip");
    drain(&mut e);
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Ready);
}

#[test]
fn an_unanswered_validation_fails_and_a_disconnected_agent_cannot_validate() {
    let mut e = cluster_with_validation();
    e.uncordon(2_000, "n3", "bob", "").expect("uncordon");
    drain(&mut e);
    let late = 2_000 + maintenance::VALIDATION_ANSWER_MS;
    // The node must stay reachable for this test's purpose.
    assert!(e
        .on_telemetry(late - 1, "n3", session_of("n3"), vec![])
        .is_applied());
    e.handle_timeout(late);
    let actions = drain(&mut e);
    assert!(event(&actions, EventKind::NodeValidationFailed)
        .contains("no answer from the agent within 2h"));
    e.on_disconnected(late + 1, "n3", session_of("n3"));
    drain(&mut e);
    let err = e.uncordon(late + 2, "n3", "bob", "").expect_err("no agent");
    assert!(err.to_string().contains("--skip-validation"), "{err}");
}

#[test]
fn skipping_a_running_validation_forgets_it() {
    let mut e = cluster_with_validation();
    e.uncordon(2_000, "n3", "bob", "").expect("uncordon");
    let id = validation_id(&drain(&mut e));
    e.uncordon_validated(2_500, "n3", "bob", "urgent", false)
        .expect("skip");
    drain(&mut e);
    // The late answer of the validation that was skipped changes nothing.
    assert!(!e
        .on_validation_result(3_000, "n3", session_of("n3"), id, false, "HBM test FAILED")
        .is_applied());
    assert!(!has(&drain(&mut e), EventKind::NodeValidationFailed));
    assert_eq!(e.node("n3").expect("n3").state(), NodeState::Ready);
}
