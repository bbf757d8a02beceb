//! Drills: what the engine checks before it sends one, what it fills in
//! (the job and generation, a crash's rank, a slow drill's cycle), and the
//! drill event a game day's report is read back from.

use super::support::*;
use crate::*;

fn sent(actions: &[Action]) -> Drill {
    actions
        .iter()
        .find_map(|a| match a {
            Action::SendDrill { drill, .. } => Some(drill.clone()),
            _ => None,
        })
        .expect("a drill sent")
}

fn drill(fault: DrillFault) -> Drill {
    Drill {
        fault: Some(fault),
        ..Default::default()
    }
}

/// Three nodes; job "llm" on two of them (2 GPUs each), running.
fn running() -> Engine {
    let mut e = cluster(3);
    submit(
        &mut e,
        0,
        "name = \"llm\"\ncommand = [\"python3\", \"train.py\"]\nnodes = 2\ngpus_per_node = 2\n\
         checkpoint_dir = \"/ckpt/llm\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        "test",
    )
    .expect("submit");
    drain(&mut e);
    launch_all(&mut e, "llm", 1);
    e
}

fn second_node(e: &Engine) -> String {
    job(e, "llm").record.nodes[1].clone()
}

/// `node` reports train steps 1..=n with `step_time_s`.
fn steps(e: &mut Engine, node: &str, n: u64, step_time_s: f64) {
    let generation = job(e, "llm").record.generation;
    for step in 1..=n {
        let p = JobProgress {
            job: "llm".to_owned(),
            generation,
            step,
            min_step: Some(step),
            step_time_s: Some(step_time_s),
            phase: "train".to_owned(),
            ..Default::default()
        };
        assert!(e
            .on_progress(10 + step as Millis, node, session_of(node), p)
            .is_applied());
    }
    drain(e);
}

#[test]
fn rank_drills_name_the_job_generation_and_rank_and_are_recorded() {
    let mut e = running();
    let node = second_node(&e);
    let generation = job(&e, "llm").record.generation;
    let msg = e
        .drill(
            100,
            &node,
            drill(DrillFault::Crash { rank: None }),
            " alice ",
        )
        .expect("crash");
    assert!(msg.contains("crash: SIGKILL rank 2 of job llm"), "{msg}");
    assert!(msg.contains("--allow-drills"), "{msg}");
    let actions = drain(&mut e);
    let d = sent(&actions);
    assert_eq!(d.fault, Some(DrillFault::Crash { rank: Some(2) }));
    assert_eq!(
        (d.job.as_str(), d.generation, d.by.as_str()),
        ("llm", generation, "alice")
    );
    assert_eq!(
        event(&actions, EventKind::Drill),
        format!("drill by alice: crash: SIGKILL rank 2 of job llm (generation {generation})")
    );
    // The event is about the node and the job, for `events --drills`.
    let ev = e.events().last().expect("an event").clone();
    assert_eq!(ev.node.as_deref(), Some(node.as_str()));
    assert_eq!(ev.job.as_deref(), Some("llm"));

    e.drill(101, &node, drill(DrillFault::Hang), "bob")
        .expect("hang");
    assert!(event(&drain(&mut e), EventKind::Drill).starts_with("drill by bob: hang: SIGSTOP"));
}

#[test]
fn rank_drills_are_refused_where_there_is_nothing_to_act_on() {
    let mut e = running();
    let node = second_node(&e);
    let spare = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| !job(&e, "llm").has_node(n))
        .expect("a spare");
    let err = e
        .drill(100, spare, drill(DrillFault::Hang), "a")
        .expect_err("no job there");
    assert!(err.to_string().contains("runs no job"), "{err}");
    let err = e
        .drill(100, &node, drill(DrillFault::Crash { rank: Some(0) }), "a")
        .expect_err("not its rank");
    assert!(
        err.to_string().contains("rank 0") && err.to_string().contains("ranks 2-3"),
        "{err}"
    );
    let err = e
        .drill(
            100,
            &node,
            drill(DrillFault::TornCheckpoint { rank: None }),
            "a",
        )
        .expect_err("no checkpoint yet");
    assert!(err.to_string().contains("no complete checkpoint"), "{err}");
    checkpoint(&mut e, "llm", &node, &[10], 100);
    e.drill(
        101,
        &node,
        drill(DrillFault::TornCheckpoint { rank: Some(3) }),
        "a",
    )
    .expect("torn");
    assert_eq!(
        sent(&drain(&mut e)).fault,
        Some(DrillFault::TornCheckpoint { rank: Some(3) })
    );
    // Nothing is recorded for a refused drill.
    let drills = e.events().filter(|ev| ev.kind == EventKind::Drill).count();
    assert_eq!(drills, 1);
}

#[test]
fn link_drill_durations_are_bounded_with_the_bad_value_named() {
    let mut e = running();
    for (fault, bad) in [
        (DrillFault::Vanish { duration_ms: 500 }, "500ms"),
        (
            DrillFault::Partition {
                duration_ms: 7_200_000,
            },
            "2h",
        ),
    ] {
        let err = e.drill(100, "n1", drill(fault), "a").expect_err("bounded");
        assert!(
            matches!(err, EngineError::InvalidArgument(_)) && err.to_string().contains(bad),
            "{err}"
        );
    }
    let msg = e
        .drill(
            100,
            "n3",
            drill(DrillFault::Partition {
                duration_ms: 30_000,
            }),
            "a",
        )
        .expect("a partition needs no job");
    assert!(msg.contains("partition for 30s"), "{msg}");
    e.on_disconnected(101, "n3", session_of("n3"));
    let err = e
        .drill(
            102,
            "n3",
            drill(DrillFault::Vanish {
                duration_ms: 30_000,
            }),
            "a",
        )
        .expect_err("not connected");
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
}

#[test]
fn a_slow_drill_is_sized_from_the_nodes_step_time() {
    let mut e = running();
    let node = second_node(&e);
    let slow = |factor| {
        drill(DrillFault::Slow {
            factor,
            duration_ms: 60_000,
            run_ms: 0,
            stop_ms: 0,
        })
    };
    let err = e
        .drill(100, &node, slow(2.0), "a")
        .expect_err("no step time yet");
    assert!(err.to_string().contains("no step time measured"), "{err}");
    steps(&mut e, &node, 12, 0.2);
    for bad in [1.0, 11.0, f64::NAN] {
        let err = e.drill(100, &node, slow(bad), "a").expect_err("factor");
        assert!(err.to_string().contains(&format!("factor {bad}")), "{err}");
    }
    let msg = e.drill(200, &node, slow(2.0), "a").expect("slow");
    assert!(msg.contains("slow ×2 for 1m"), "{msg}");
    // Run half a step, stop (factor − ½) steps: each step spans a stop.
    assert_eq!(
        sent(&drain(&mut e)).fault,
        Some(DrillFault::Slow {
            factor: 2.0,
            duration_ms: 60_000,
            run_ms: 100,
            stop_ms: 300,
        })
    );
}

#[test]
fn gpu_drills_keep_their_checks() {
    let mut e = running();
    let err = e
        .drill(1, "n1", drill(DrillFault::Xid(0)), "a")
        .expect_err("xid range");
    assert!(err.to_string().contains("Xid 0 is out of range"), "{err}");
    let err = e
        .drill(1, "n1", Drill::default(), "a")
        .expect_err("no fault");
    assert!(err.to_string().contains("needs a fault"), "{err}");
}
