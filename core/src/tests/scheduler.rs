//! Node state mirrored with the batch scheduler (Slurm): its drains seen
//! by sup, sup's cordons as drains there, and what sup never touches.

use super::support::*;
use crate::scheduler::{drain_reason, plan_node, SchedulerNode, SchedulerOp};
use crate::*;

fn slurm(name: &str, base: &str, flags: &[&str], reason: &str) -> SchedulerNode {
    SchedulerNode {
        name: name.to_owned(),
        base: base.to_owned(),
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        reason: reason.to_owned(),
    }
}

fn idle(name: &str) -> SchedulerNode {
    slurm(name, "idle", &[], "")
}

/// Every node n1..=n`count` idle in Slurm, except those given.
fn observe(e: &mut Engine, now: Millis, count: u32, special: &[SchedulerNode]) -> Vec<Action> {
    let nodes = (1..=count)
        .map(|i| {
            let name = format!("n{i}");
            special
                .iter()
                .find(|s| s.name == name)
                .cloned()
                .unwrap_or_else(|| idle(&name))
        })
        .collect();
    e.on_scheduler_nodes(now, nodes);
    drain(e)
}

fn spec(name: &str, nodes: u32) -> String {
    format!(
        "name = \"{name}\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {nodes}\nmin_nodes = {nodes}\ngpus_per_node = 2\ncheckpoint_dir = \"/ckpt/{name}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n"
    )
}

#[test]
fn a_cordon_is_drained_once_and_an_uncordon_resumes_only_sups_own_drain() {
    let mut e = cluster(3);
    observe(&mut e, 1, 3, &[]);
    assert!(e.scheduler_plan().is_empty(), "nothing cordoned");

    e.cordon(2, "n2", "GPU 0: Xid 79 (fallen off the bus)", "sup")
        .expect("cordon");
    drain(&mut e);
    let plan = e.scheduler_plan();
    let [SchedulerOp::Drain {
        node_id,
        name,
        reason,
        why,
    }] = plan.as_slice()
    else {
        panic!("one drain expected: {plan:?}");
    };
    assert_eq!((node_id.as_str(), name.as_str()), ("n2", "n2"));
    assert_eq!(reason, "sup: GPU 0: Xid 79 (fallen off the bus)");
    assert_eq!(why, "node n2 is cordoned in sup and idle in Slurm");

    // The drain landed: asked for once, never again.
    let landed = slurm("n2", "idle", &["drain"], reason);
    let actions = observe(&mut e, 3, 3, std::slice::from_ref(&landed));
    assert!(event(&actions, EventKind::NodeScheduler)
        .starts_with("sup's drain is in place: Slurm node n2 is drained with reason \"sup: GPU 0"));
    assert!(e.scheduler_plan().is_empty());

    e.uncordon_validated(4, "n2", "op", "", false)
        .expect("uncordon");
    drain(&mut e);
    assert!(
        matches!(e.scheduler_plan().as_slice(), [SchedulerOp::Resume { name, .. }] if name == "n2")
    );
    let actions = observe(&mut e, 5, 3, &[]);
    assert_eq!(
        event(&actions, EventKind::NodeScheduler),
        "Slurm node n2 is idle again"
    );
    assert!(e.scheduler_plan().is_empty());
}

#[test]
fn a_drain_by_someone_else_is_shown_kept_from_placement_and_never_resumed() {
    let mut e = cluster(3);
    let maintenance = slurm("n1", "idle", &["drain"], "maintenance");
    let actions = observe(&mut e, 1, 3, std::slice::from_ref(&maintenance));
    assert_eq!(
        event(&actions, EventKind::NodeScheduler),
        "Slurm node n1 is drained (maintenance): sup places no work on it and counts it as no spare"
    );
    let n1 = e.node("n1").expect("n1");
    assert!(n1.held_by_scheduler());
    assert_eq!(n1.state(), NodeState::Ready, "sup's own view is unchanged");
    assert!(!e.spares().any(|n| n.record.id == "n1"));
    assert!(!e.spare_pool().free.contains(&"n1".to_owned()));

    // A 2-node job lands on the two nodes Slurm lets it use.
    submit(&mut e, 2, &spec("train", 2), "op").expect("submit");
    drain(&mut e);
    assert_eq!(job(&e, "train").record.nodes, vec!["n2", "n3"]);

    // Seen again unchanged: no second event.
    assert!(!has(
        &observe(&mut e, 3, 3, std::slice::from_ref(&maintenance)),
        EventKind::NodeScheduler
    ));
    // An uncordon in sup leaves another's drain alone, and so does a cordon
    // (already drained: nothing to add, and the reason is not ours).
    e.uncordon_validated(4, "n1", "op", "", false)
        .expect("uncordon");
    assert!(e.scheduler_plan().is_empty());
    e.cordon(5, "n1", "bad", "op").expect("cordon");
    assert!(e.scheduler_plan().is_empty());
}

#[test]
fn a_job_waits_while_slurm_holds_the_nodes_it_needs_and_starts_when_released() {
    let mut e = cluster(2);
    observe(&mut e, 1, 2, &[slurm("n2", "down", &[], "Not responding")]);
    submit(&mut e, 2, &spec("train", 2), "op").expect("submit");
    drain(&mut e);
    assert_eq!(job(&e, "train").record.state, JobState::Pending);
    let actions = observe(&mut e, 3, 2, &[]);
    assert!(event(&actions, EventKind::NodeScheduler).contains("is idle again"));
    assert_eq!(job(&e, "train").record.nodes, vec!["n1", "n2"]);
}

#[test]
fn sup_never_touches_a_down_node_nor_sets_down() {
    let down = slurm("n1", "down", &["drain"], "sup: old");
    assert_eq!(
        plan_node("n1", None, &down),
        None,
        "no resume of a DOWN node"
    );
    assert_eq!(plan_node("n1", Some("sup: x"), &down), None);
    let failing = slurm("n1", "allocated", &["fail"], "bad dimm");
    assert!(
        matches!(
            plan_node("n1", Some("sup: x"), &failing),
            Some(SchedulerOp::Drain { .. })
        ),
        "a failing node not drained yet is drained"
    );
    // Someone else's drain that happens to be on a node sup no longer cordons.
    let other = slurm("n1", "mixed", &["drain"], "supervisor said so");
    assert_eq!(plan_node("n1", None, &other), None);
    assert_eq!(other.state_name(), "draining");
}

#[test]
fn a_cordon_held_back_by_the_open_breaker_is_not_drained_either() {
    let mut e = Engine::new(EngineConfig {
        breaker_min_cordons: 1,
        breaker_max_share: 0.0,
        ..config()
    });
    for i in 1..=3 {
        register(&mut e, &format!("n{i}"), i, 2, 0);
    }
    drain(&mut e);
    observe(&mut e, 1, 3, &[]);
    for (n, t) in [("n1", 2), ("n2", 3)] {
        assert!(e
            .on_health_report(
                t,
                n,
                session_of(n),
                HealthReport {
                    verdicts: vec![GpuVerdict {
                        index: 0,
                        uuid: String::new(),
                        health: GpuHealth::Failed,
                        reason: "Xid 79".to_owned(),
                        evidence: vec![],
                        recovery_action: RecoveryAction::Unspecified,
                        drill: false,
                        causes: Vec::new(),
                    }],
                    xids: vec![],
                    visible_gpus: None,
                },
            )
            .is_applied());
        drain(&mut e);
    }
    assert!(e.breaker().open);
    let plan = e.scheduler_plan();
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(plan[0].name(), "n1", "n2's cordon is held back: {plan:?}");
}

#[test]
fn slurm_names_map_to_node_ids_by_the_agents_override() {
    let mut e = cluster(2);
    e.set_scheduler_name("n1", "gpu-a01");
    assert!(matches!(
        drain(&mut e).as_slice(),
        [Action::Persist(Change::PutNode(r))] if r.scheduler_name.as_deref().map(String::as_str) == Some("gpu-a01")
    ));
    e.on_scheduler_nodes(
        1,
        vec![
            slurm("gpu-a01", "idle", &["drain"], "maintenance"),
            idle("n2"),
        ],
    );
    drain(&mut e);
    assert!(e.node("n1").expect("n1").held_by_scheduler());
    e.cordon(2, "n2", "bad", "op").expect("cordon");
    assert_eq!(e.scheduler_plan()[0].name(), "n2", "same name by default");
}

#[test]
fn the_drain_reason_is_short_one_line_and_marked_as_sups() {
    let cordon = |reason: &str| CordonRecord {
        reason: reason.to_owned(),
        by: "sup".to_owned(),
        at: 0,
        validation: None,
    };
    assert_eq!(drain_reason(&cordon("bad\nnode")), "sup: bad node");
    assert_eq!(
        drain_reason(&cordon(
            "GPU 0 (GPU-ebeec9fa-b967-bedf-de87-e96a3596af31) failed: Xid 79 (fallen off the bus)"
        )),
        "sup: GPU 0 failed: Xid 79 (fallen off the bus)"
    );
    let long = drain_reason(&cordon(&"é".repeat(500)));
    assert!(long.starts_with("sup: éé") && long.ends_with("..."));
    assert_eq!(long.chars().count(), 80);
}

fn allocation(id: u64, nodes: &[&str]) -> SlurmAllocation {
    SlurmAllocation {
        job_id: id,
        nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        user: "alice".to_owned(),
    }
}

fn submit_in(
    e: &mut Engine,
    now: Millis,
    text: &str,
    alloc: SlurmAllocation,
) -> Result<String, EngineError> {
    let spec: crate::jobspec::JobSpec =
        toml::from_str(text).map_err(|err| EngineError::InvalidJobSpec(err.to_string()))?;
    e.submit_job_in_allocation(now, spec, text, "op", alloc)
}

#[test]
fn a_job_in_a_slurm_allocation_runs_only_there_and_keeps_the_rest_as_its_spares() {
    let mut e = cluster(5);
    observe(&mut e, 1, 5, &[]);
    // Placement goes by id: unbound, it would take n1 and n2.
    let said = submit_in(
        &mut e,
        2,
        &spec("train", 2),
        allocation(77, &["n3", "n4", "n5"]),
    )
    .expect("submit");
    assert!(said.ends_with("in Slurm job 77"), "{said}");
    let actions = drain(&mut e);
    assert_eq!(job(&e, "train").record.nodes, vec!["n3", "n4"]);
    let sent = assignments(&actions);
    assert_eq!(
        sent["n3"].job.as_ref().map(|j| j.slurm_job_id),
        Some(77),
        "the agent is told to start a step of the allocation"
    );
    // Another job never gets the allocation's spare n5, however it fits.
    submit(&mut e, 3, &spec("other", 3), "op").expect("submit");
    drain(&mut e);
    assert_eq!(job(&e, "other").record.state, JobState::Pending);
    // A second sup job cannot bind the same Slurm job.
    let err = submit_in(&mut e, 4, &spec("again", 1), allocation(77, &["n5"]))
        .expect_err("bound already");
    assert!(
        err.to_string().contains("already bound to sup job 'train'"),
        "{err}"
    );

    // n3 fails: the job moves to its spare n5, not to the free n1.
    e.cordon(5, "n3", "GPU 0: Xid 79", "sup").expect("cordon");
    drain(&mut e);
    assert_eq!(job(&e, "train").record.nodes, vec!["n4", "n5"]);
    // Another failure: the allocation has nothing left: it shrinks or
    // waits (min_nodes = 2 here: waits), never spills onto n1/n2.
    e.cordon(6, "n4", "GPU 1: Xid 79", "sup").expect("cordon");
    drain(&mut e);
    let j = job(&e, "train");
    assert_eq!(j.record.state, JobState::Pending, "{}", j.record.reason);
    assert!(j.record.nodes.is_empty());
}

#[test]
fn an_allocation_smaller_than_the_job_is_refused_with_its_size() {
    let mut e = cluster(3);
    let err =
        submit_in(&mut e, 1, &spec("train", 2), allocation(9, &["n1"])).expect_err("too small");
    assert!(
        err.to_string()
            .contains("Slurm job 9 has 1 node(s) (n1); the job needs at least 2"),
        "{err}"
    );
    assert!(e.job("train").is_err());
}
