//! Checkpoints newer than a generation's resume point: where the engine
//! tells node rank 0 to set them aside, and what it forgets once told.

use super::support::*;
use crate::*;

const SPEC: &str = "name = \"llm\"\ncommand = [\"python3\", \"train.py\"]\nnodes = 2\nmin_nodes = 2\ngpus_per_node = 2\ncheckpoint_dir = \"/ckpt/llm\"\ncheckpoint_layout = \"marker:COMPLETE\"\n";

fn progress(e: &mut Engine, node: &str, step: u64, now: Millis) {
    let generation = job(e, "llm").record.generation;
    assert!(e
        .on_progress(
            now,
            node,
            session_of(node),
            JobProgress {
                job: "llm".to_owned(),
                generation,
                step,
                ..Default::default()
            },
        )
        .is_applied());
}

fn set_aside_dirs(actions: &[Action]) -> Vec<(Option<u64>, String)> {
    assignments(actions)
        .values()
        .filter_map(|a| a.job.as_ref())
        .map(|j| {
            (
                j.resume_from.as_ref().map(|c| c.step),
                j.set_aside_dir.clone(),
            )
        })
        .collect()
}

fn report(generation: u64, entries: &[(u64, bool)]) -> CheckpointsSetAside {
    CheckpointsSetAside {
        job: "llm".to_owned(),
        generation,
        resume_step: 20,
        entries: entries
            .iter()
            .map(|&(step, earlier)| SetAsideEntry {
                step: Some(step),
                from: format!("/ckpt/llm/step-{step}"),
                to: format!("/ckpt/llm/.sup-set-aside/g{generation}/step-{step}"),
                earlier,
            })
            .collect(),
        detail: String::new(),
    }
}

#[test]
fn a_resumed_generation_sets_aside_what_is_newer_and_supd_forgets_it() {
    let mut e = cluster(2);
    submit(&mut e, 0, SPEC, "alice").expect("submit");
    let first = drain(&mut e);
    // A first start resumes from nothing: nothing is set aside.
    let dirs = set_aside_dirs(&first);
    assert_eq!(dirs.len(), 2);
    assert!(dirs.iter().all(|d| *d == (None, String::new())), "{dirs:?}");
    launch_all(&mut e, "llm", 1_000);
    progress(&mut e, "n1", 31, 2_000);
    checkpoint(&mut e, "llm", "n1", &[10, 20], 3_000);

    let actions = rank_fails(&mut e, "llm", "n2", 1, 4_000);
    let generation = job(&e, "llm").record.generation;
    let dirs = set_aside_dirs(&actions);
    assert_eq!(dirs.len(), 2);
    let want = (Some(20), format!("/ckpt/llm/.sup-set-aside/g{generation}"));
    assert!(dirs.iter().all(|d| *d == want), "{dirs:?}");

    // Step 30 was completed by the old ranks just before they stopped and
    // is listed only now: the job's newest, but not its resume point.
    checkpoint(&mut e, "llm", "n1", &[10, 20, 30], 4_500);
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(30)
    );

    // Node rank 0 moved it (and an earlier pass of a restarted agent moved
    // step 25) before launching.
    let rank0 = job(&e, "llm").record.nodes[0].clone();
    assert_eq!(
        e.on_checkpoints_set_aside(
            5_000,
            &rank0,
            session_of(&rank0),
            report(generation, &[(25, true), (30, false)])
        ),
        ReportOutcome::Applied
    );
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::CheckpointSetAside);
    assert_eq!(
        why,
        format!(
            "node {rank0} set aside 1 path(s) newer than the resume point, step 20, before generation {generation} started \
             (1 more set aside by an earlier pass for this generation), into /ckpt/llm/.sup-set-aside/g{generation}: \
             step 25 /ckpt/llm/step-25 → /ckpt/llm/.sup-set-aside/g{generation}/step-25 (earlier pass); \
             step 30 /ckpt/llm/step-30 → /ckpt/llm/.sup-set-aside/g{generation}/step-30; \
             the job's newest checkpoint is step 20 again (step 30 was set aside)"
        )
    );
    let j = job(&e, "llm");
    assert_eq!(j.record.checkpoint.as_ref().map(|c| c.step), Some(20));
    let listed: Vec<u64> = j.catalog.iter().map(|c| c.step).collect();
    assert_eq!(listed, vec![10, 20]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Persist(Change::PutJob(r)) if r.checkpoint.as_ref().is_some_and(|c| c.step == 20))),
        "the step back is durable"
    );

    // The next failure resumes from step 20, not from the path now gone.
    launch_all(&mut e, "llm", 6_000);
    let actions = rank_fails(&mut e, "llm", "n2", 1, 7_000);
    let dirs = set_aside_dirs(&actions);
    assert!(dirs.iter().all(|d| d.0 == Some(20)), "{dirs:?}");

    // A report of an older generation changes nothing.
    assert_eq!(
        e.on_checkpoints_set_aside(
            8_000,
            &rank0,
            session_of(&rank0),
            report(generation, &[(20, false)])
        ),
        ReportOutcome::StaleGeneration
    );
    assert!(!has(&drain(&mut e), EventKind::CheckpointSetAside));
}

#[test]
fn a_set_aside_checkpoint_listed_by_an_agent_is_never_believed() {
    let mut e = cluster(2);
    submit(&mut e, 0, SPEC, "alice").expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1_000);
    progress(&mut e, "n1", 31, 2_000);
    assert!(e
        .on_checkpoint_catalog(
            3_000,
            "n1",
            session_of("n1"),
            CheckpointCatalog {
                job: "llm".to_owned(),
                checkpoints: vec![Checkpoint {
                    step: 30,
                    path: "/ckpt/llm/.sup-set-aside/g1/step-30".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .is_applied());
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::CheckpointRefused);
    assert!(why.contains("was set aside"), "{why}");
    assert_eq!(job(&e, "llm").record.checkpoint, None);
}
