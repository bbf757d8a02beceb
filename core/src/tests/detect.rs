//! The engine's use of the job-level detectors: hang → restart from the
//! newest checkpoint with a post-mortem and no cordon, repeated lagging →
//! cordon, straggler → event and (by policy) a spare swap that does not
//! count as the job's failure, loss spike → rollback with a new seed, MFU.

use super::support::*;
use crate::detect::DetectConfig;
use crate::*;

fn config() -> EngineConfig {
    EngineConfig {
        unreachable_after_ms: 600_000,
        detect: DetectConfig {
            hang_factor: 2.0,
            hang_floor_ms: 1_000,
            hang_ceiling_ms: 60_000,
            checkpoint_allowance_ms: 20_000,
            warmup_steps: 5,
            hang_cordon_after: 2,
            straggler_window: 10,
            straggler_sustain: 5,
            ..DetectConfig::default()
        },
        ..Default::default()
    }
}

fn cluster(count: u32) -> Engine {
    cluster_with(config(), count)
}

fn submit(e: &mut Engine, name: &str, nodes: u32, extra: &str) {
    let spec = format!(
        "name = \"{name}\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {nodes}\ngpus_per_node = 2\n\
         checkpoint_dir = \"/ckpt/{name}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n{extra}"
    );
    super::support::submit(e, 0, &spec, "test").expect("submit");
    drain(e);
}

fn report(e: &mut Engine, name: &str, node: &str, now: Millis, p: JobProgress) -> Vec<Action> {
    let generation = job(e, name).record.generation;
    assert!(e
        .on_progress(
            now,
            node,
            session_of(node),
            JobProgress {
                job: name.to_owned(),
                generation,
                ..p
            }
        )
        .is_applied());
    drain(e)
}

fn train(step: u64, time: f64) -> JobProgress {
    JobProgress {
        step,
        min_step: Some(step),
        step_time_s: Some(time),
        phase: "train".to_owned(),
        tokens: Some(step * 1000),
        ..Default::default()
    }
}

/// Steps `from..=to` every 500 ms on every node of the job; returns the
/// time of the last report.
fn run_steps(e: &mut Engine, name: &str, from: u64, to: u64, start: Millis) -> Millis {
    let nodes = job(e, name).record.nodes.clone();
    let mut now = start;
    for step in from..=to {
        now += 500;
        for n in &nodes {
            report(e, name, n, now, train(step, 0.4));
        }
    }
    now
}

#[test]
fn a_hang_restarts_from_the_newest_checkpoint_on_time_without_cordon() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    let last = run_steps(&mut e, "llm", 1, 20, 0);
    checkpoint(&mut e, "llm", "n1", &[10, 20], last);
    // Median step 0.5 s × 2 = 1 s, at the floor: hung 1 s after the last advance.
    let deadline = e.poll_timeout().expect("a hang check is scheduled");
    assert_eq!(deadline, last + 1_000);
    e.handle_timeout(deadline - 1);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    let hung_gen = job(&e, "llm").record.generation;
    e.handle_timeout(deadline);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobHung);
    assert!(
        why.contains("no step advance for 1000 ms")
            && why.contains("last step 20")
            && why.contains("2 × median step time 0.500s")
            && why.contains("nothing cordoned"),
        "{why}"
    );
    let restarted = event(&actions, EventKind::JobRestarted);
    assert!(restarted.contains("resuming from step 20"), "{restarted}");
    assert!(!has(&actions, EventKind::NodeCordoned));
    let j = job(&e, "llm");
    assert_eq!(j.record.restarts, 1);
    assert_eq!(j.record.nodes.len(), 2, "same nodes, nothing cordoned");
    // The agents are asked for stack dumps before they stop the hung ranks.
    assert_eq!(e.desired_assignment("n1").postmortem_generation, hung_gen);

    // The stopped ranks of the hung generation bring the post-mortem.
    assert!(!e
        .on_rank_exited(
            deadline + 100,
            "n1",
            session_of("n1"),
            RankExited {
                job: "llm".into(),
                generation: hung_gen,
                rank: 1,
                local_rank: 1,
                signal: Some(15),
                log_tail: "step 20/100 loss 0.1\ntrainer: got signal 15, exiting\n".into(),
                stopped_by_agent: true,
                stack_dump: "Thread 0x7f (idle): \"MainThread\"\n    recv_exact (train.py:212)\n"
                    .into(),
                ..Default::default()
            }
        )
        .is_applied());
    let pm = event(&drain(&mut e), EventKind::JobHangPostmortem);
    assert!(
        pm.contains("rank 1")
            && pm.contains("step 20/100 loss 0.1")
            && pm.ends_with(
                "; stacks: Thread 0x7f (idle): \"MainThread\" | recv_exact (train.py:212)"
            ),
        "{pm}"
    );
}

#[test]
fn checkpoint_phases_get_their_allowance() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    let last = run_steps(&mut e, "llm", 1, 20, 0);
    let saving = JobProgress {
        phase: "checkpoint_save".into(),
        ..train(20, 0.4)
    };
    report(&mut e, "llm", "n1", last + 100, saving);
    e.handle_timeout(last + 15_000);
    assert!(
        !has(&drain(&mut e), EventKind::JobHung),
        "within the allowance"
    );
    e.handle_timeout(last + 100 + 20_000);
    let why = event(&drain(&mut e), EventKind::JobHung);
    assert!(why.contains("checkpoint_save allowance"), "{why}");
}

#[test]
fn a_node_lagging_in_repeated_hangs_is_cordoned() {
    let mut e = cluster(3);
    submit(&mut e, "llm", 2, "");
    let mut now = 0;
    for round in 0..2 {
        launch_all(&mut e, "llm", now);
        let nodes = job(&e, "llm").record.nodes.clone();
        let victim = nodes.last().cloned().expect("two nodes");
        assert_eq!(victim, "n2", "round {round}");
        for step in 1..=10 {
            now += 500;
            report(&mut e, "llm", "n1", now, train(step, 0.4));
            let lag = JobProgress {
                min_step: Some(step.min(7)),
                ..train(step, 0.4)
            };
            report(&mut e, "llm", &victim, now, lag);
        }
        now += 1_000;
        e.handle_timeout(now);
        let actions = drain(&mut e);
        let why = event(&actions, EventKind::JobHung);
        assert!(why.contains("node n2 lagging"), "{why}");
        if round == 0 {
            assert!(
                !has(&actions, EventKind::NodeCordoned),
                "one hang: suspect only"
            );
            assert!(why.contains("(1 of 2 hang(s) of this job blamed on it before a cordon: suspect, nothing cordoned yet)"), "{why}");
            let n2 = e.node("n2").expect("n2");
            assert_eq!(n2.state(), NodeState::Suspect);
            assert_eq!(
                n2.record.suspect.as_deref(),
                Some("1 hang(s) of job 'llm' blamed on it (cordoned at 2)")
            );
            assert_eq!(e.node("n1").expect("n1").state(), NodeState::Ready);
        } else {
            let c = event(&actions, EventKind::NodeCordoned);
            assert!(c.contains("2 hangs"), "{c}");
            assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n3"]);
        }
    }
    // An operator clearing the node clears its suspicion and its count.
    e.uncordon(now, "n2", "op", "swapped the NIC")
        .expect("uncordon");
    let n2 = e.node("n2").expect("n2");
    assert_eq!(
        (n2.state(), n2.record.suspect.as_deref()),
        (NodeState::Ready, None)
    );
    assert!(job(&e, "llm").record.hang_blame.is_empty());
}

#[test]
fn a_straggler_is_swapped_for_the_spare_without_counting_a_failure() {
    let mut e = cluster(3);
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n2"]);
    let mut flagged = None;
    for step in 1..=40u64 {
        let now = step as Millis * 500;
        // A single slow step on n1 is noise.
        let t1 = if step == 3 { 2.0 } else { 0.40 };
        report(&mut e, "llm", "n1", now, train(step, t1));
        let actions = report(&mut e, "llm", "n2", now, train(step, 0.60));
        if has(&actions, EventKind::JobStraggler) {
            flagged = Some((step, actions));
            break;
        }
    }
    let (step, actions) = flagged.expect("n2 flagged");
    assert!(step <= 15, "flagged at step {step}");
    let why = event(&actions, EventKind::JobStraggler);
    assert!(
        why.contains("node n2 is a straggler: 1.50×")
            && why.contains("no hardware signal")
            && why.contains("replacing it with a spare now"),
        "{why}"
    );
    let restarted = event(&actions, EventKind::JobRestarted);
    assert!(restarted.contains("replaced n2 with n3"), "{restarted}");
    let j = job(&e, "llm");
    assert_eq!(j.record.restarts, 0, "the cluster's doing, not the job's");
    assert_eq!(j.record.nodes, vec!["n1", "n3"]);
    assert!(!has(&actions, EventKind::NodeCordoned));
}

/// The two straggler windows apart: 10 slow samples uncorroborated, 3
/// corroborated. With a 10-step window a node's median counts from its
/// 5th sample, so a node slow from the start is confirmed at step 4 + window.
fn two_windows() -> Engine {
    let mut c = config();
    c.detect.straggler_sustain = 10;
    c.detect.straggler_sustain_corroborated = 3;
    cluster_with(c, 3)
}

/// `node`'s agent reports GPU 1 `health` for `reason`, with cause kinds
/// `causes` (GPU 0 ok).
fn gpu_report(
    e: &mut Engine,
    node: &str,
    now: Millis,
    health: GpuHealth,
    reason: &str,
    causes: Vec<GpuCauseKind>,
) {
    let report = HealthReport {
        verdicts: vec![
            GpuVerdict {
                index: 0,
                ..Default::default()
            },
            GpuVerdict {
                index: 1,
                health,
                reason: reason.to_owned(),
                evidence: vec![reason.to_owned()],
                causes,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert!(e
        .on_health_report(now, node, session_of(node), report)
        .is_applied());
    drain(e);
}

const THROTTLED: &str = "clocks throttled (hw_slowdown): check cooling and power";

/// n1 at 0.4 s a step, n2 at 0.6 s, from step 1, until n2 is flagged;
/// `before(step)` runs first at each step. The step and its actions.
fn until_straggler(e: &mut Engine, mut before: impl FnMut(&mut Engine, u64)) -> (u64, Vec<Action>) {
    for step in 1..=40u64 {
        before(e, step);
        let now = step as Millis * 500;
        report(e, "llm", "n1", now, train(step, 0.40));
        let actions = report(e, "llm", "n2", now, train(step, 0.60));
        if has(&actions, EventKind::JobStraggler) {
            return (step, actions);
        }
    }
    panic!("n2 never flagged");
}

#[test]
fn a_throttled_straggler_is_replaced_after_the_short_window_an_unthrottled_one_after_the_long() {
    // Throttled: GPU 1 of n2 degraded by hardware slowdown throttling.
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    gpu_report(
        &mut e,
        "n2",
        1,
        GpuHealth::Degraded,
        THROTTLED,
        vec![GpuCauseKind::Throttle],
    );
    assert_eq!(
        job(&e, "llm").record.nodes,
        vec!["n1", "n2"],
        "suspect, kept"
    );
    let (throttled_at, actions) = until_straggler(&mut e, |_, _| {});
    let why = event(&actions, EventKind::JobStraggler);
    assert!(
        why.starts_with("node n2 is a straggler: 1.50×")
            && why.contains(&format!(
                "corroborated by GPU 1 degraded (throttling): {THROTTLED}; \
                 confirmed after 3 slow samples in a row at step 7 (corroborated window); \
                 replacing it with a spare now"
            )),
        "{why}"
    );
    assert!(event(&actions, EventKind::JobRestarted).contains("replaced n2 with n3"));
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n3"]);

    // Equally slow, no hardware signal: the long window.
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    let (plain_at, actions) = until_straggler(&mut e, |_, _| {});
    let why = event(&actions, EventKind::JobStraggler);
    assert!(
        why.contains(
            "no hardware signal of a slowdown (throttling, PCIe link downgrade, NVLink, ECC pressure); \
             confirmed after 10 slow samples in a row at step 14 (uncorroborated window); \
             replacing it with a spare now"
        ),
        "{why}"
    );
    assert!(event(&actions, EventKind::JobRestarted).contains("replaced n2 with n3"));
    assert_eq!((throttled_at, plain_at), (7, 14));
}

#[test]
fn a_straggler_takes_back_a_spare_lent_to_low_priority_work() {
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    submit(&mut e, "batch", 1, "priority = \"low\"");
    assert_eq!(job(&e, "batch").record.nodes, vec!["n3"]);
    launch_all(&mut e, "llm", 0);
    launch_all(&mut e, "batch", 0);
    let (_, actions) = until_straggler(&mut e, |_, _| {});
    let why = event(&actions, EventKind::JobStraggler);
    assert!(why.ends_with("replacing it with a spare now"), "{why}");
    assert!(event(&actions, EventKind::JobRestarted).contains("replaced n2 with n3"));
    assert_eq!(
        event(&actions, EventKind::JobPreempted),
        "node n3 taken by job 'llm' (normal priority)"
    );
    // The slow node is free now: good enough for the preemptible job.
    assert_eq!(job(&e, "batch").record.nodes, vec!["n2"]);
}

#[test]
fn gpu_findings_that_are_no_slowdown_leave_the_long_window() {
    // A GPU degraded by repeated Xid 13s is a finding, but not one that
    // explains slow steps: the event lists it and the long window applies.
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "straggler_policy = \"report\"");
    launch_all(&mut e, "llm", 0);
    let xid13 = "Xid 13 (graphics engine exception) 3 times within 10m: diagnose the GPU";
    gpu_report(
        &mut e,
        "n2",
        1,
        GpuHealth::Degraded,
        xid13,
        vec![GpuCauseKind::Xid],
    );
    let (at, actions) = until_straggler(&mut e, |_, _| {});
    let why = event(&actions, EventKind::JobStraggler);
    assert_eq!(at, 14, "{why}");
    assert!(
        why.contains(&format!(
            "no hardware signal of a slowdown (throttling, PCIe link downgrade, NVLink, ECC pressure) \
             on the node; its other GPU findings do not explain slowness: GPU 1 degraded: {xid13}; \
             confirmed after 10 slow samples"
        )) && why.ends_with("reported only (policy report)"),
        "{why}"
    );

    // An agent that sends no kinds (older than them): its degraded GPU
    // cannot corroborate anything, whatever the reason says.
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    gpu_report(&mut e, "n2", 1, GpuHealth::Degraded, THROTTLED, vec![]);
    let (at, _) = until_straggler(&mut e, |_, _| {});
    assert_eq!(at, 14);
}

#[test]
fn throttling_that_clears_mid_streak_falls_back_to_the_long_window() {
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    // Throttled for the first two slow samples (steps 5 and 6), then the
    // GPU recovers: the streak goes on, now against the long window.
    let (at, actions) = until_straggler(&mut e, |e, step| match step {
        1 => gpu_report(
            e,
            "n2",
            1,
            GpuHealth::Degraded,
            THROTTLED,
            vec![GpuCauseKind::Throttle],
        ),
        7 => gpu_report(e, "n2", 3_000, GpuHealth::Ok, "", vec![]),
        _ => {}
    });
    let why = event(&actions, EventKind::JobStraggler);
    assert_eq!(at, 14, "{why}");
    assert!(
        why.contains("no hardware signal of a slowdown")
            && why.contains(
                "confirmed after 10 slow samples in a row at step 14 (uncorroborated window)"
            ),
        "{why}"
    );
    // Throttling that starts mid-streak confirms at once once the streak
    // covers the short window: 5 slow samples by step 9.
    let mut e = two_windows();
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    let (at, actions) = until_straggler(&mut e, |e, step| {
        if step == 9 {
            gpu_report(
                e,
                "n2",
                4_400,
                GpuHealth::Degraded,
                "PCIe link x8 of x16: check the slot, riser and cable",
                vec![GpuCauseKind::PcieDowngrade],
            );
        }
    });
    let why = event(&actions, EventKind::JobStraggler);
    assert_eq!(at, 9, "{why}");
    assert!(
        why.contains(
            "corroborated by GPU 1 degraded (PCIe link downgrade): PCIe link x8 of x16: \
             check the slot, riser and cable; confirmed after 5 slow samples in a row at step 9 \
             (corroborated window)"
        ),
        "{why}"
    );
}

/// The resume point of a generation's assignments.
fn resume_of(e: &Engine, node: &str) -> Option<u64> {
    e.desired_assignment(node)
        .job
        .and_then(|j| j.resume_from)
        .map(|c| c.step)
}

#[test]
fn a_checkpoint_found_while_a_generation_starts_does_not_split_its_resume_step() {
    // Seen end to end: the straggler swap restarted from step 5 while the
    // old ranks were writing step 10; the kept node's agent, still stopping
    // them, launched after the catalog with 10 came in and got step 10, the
    // spare had got 5, and the world could not meet.
    let mut e = cluster(3);
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    checkpoint(&mut e, "llm", "n1", &[5], 100);
    let mut now = 0;
    for step in 1..=40u64 {
        now = step as Millis * 500;
        report(&mut e, "llm", "n1", now, train(step, 0.40));
        if has(
            &report(&mut e, "llm", "n2", now, train(step, 0.60)),
            EventKind::JobStraggler,
        ) {
            break;
        }
    }
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n3"]);
    assert_eq!(
        (resume_of(&e, "n1"), resume_of(&e, "n3")),
        (Some(5), Some(5))
    );
    let actions = checkpoint(&mut e, "llm", "n1", &[5, 10], now + 100);
    assert!(event(&actions, EventKind::JobCheckpoint).contains("step 10"));
    assert_eq!(
        (resume_of(&e, "n1"), resume_of(&e, "n3")),
        (Some(5), Some(5)),
        "the generation keeps the resume step it started with"
    );
    // The next generation starts from the newest.
    launch_all(&mut e, "llm", now + 200);
    let generation = job(&e, "llm").record.generation;
    assert!(e
        .on_rank_exited(
            now + 300,
            "n3",
            session_of("n3"),
            RankExited {
                job: "llm".into(),
                generation,
                rank: 2,
                exit_code: Some(1),
                ..Default::default()
            }
        )
        .is_applied());
    drain(&mut e);
    assert!(job(&e, "llm").record.generation > generation);
    assert_eq!(
        (resume_of(&e, "n1"), resume_of(&e, "n3")),
        (Some(10), Some(10))
    );
}

#[test]
fn report_policy_and_no_spare_keep_the_straggler() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "straggler_policy = \"replace\"");
    launch_all(&mut e, "llm", 0);
    let mut why = None;
    for step in 1..=40u64 {
        let now = step as Millis * 500;
        report(&mut e, "llm", "n1", now, train(step, 0.40));
        let actions = report(&mut e, "llm", "n2", now, train(step, 0.60));
        if has(&actions, EventKind::JobStraggler) {
            why = Some(event(&actions, EventKind::JobStraggler));
            assert!(!has(&actions, EventKind::JobRestarted));
        }
    }
    let why = why.expect("flagged");
    assert!(why.contains("kept: no spare"), "{why}");
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n2"]);
}

#[test]
fn replace_at_checkpoint_waits_for_the_next_checkpoint() {
    let mut e = cluster(3);
    submit(
        &mut e,
        "llm",
        2,
        "straggler_policy = \"replace_at_checkpoint\"",
    );
    launch_all(&mut e, "llm", 0);
    for step in 1..=20u64 {
        let now = step as Millis * 500;
        report(&mut e, "llm", "n1", now, train(step, 0.40));
        report(&mut e, "llm", "n2", now, train(step, 0.60));
    }
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n2"], "not yet");
    let actions = checkpoint(&mut e, "llm", "n1", &[20], 10_100);
    let restarted = event(&actions, EventKind::JobRestarted);
    assert!(
        restarted.contains("replacing straggler node n2")
            && restarted.contains("resuming from step 20"),
        "{restarted}"
    );
    assert_eq!(job(&e, "llm").record.nodes, vec!["n1", "n3"]);
}

#[test]
fn a_loss_spike_rolls_back_with_a_new_seed() {
    let mut e = cluster(2);
    submit(
        &mut e,
        "llm",
        2,
        "loss_spike_rollback = true\nmax_rollbacks = 1",
    );
    launch_all(&mut e, "llm", 0);
    let loss_at = |step: u64, loss: f64| JobProgress {
        loss: Some(loss),
        ..train(step, 0.4)
    };
    let mut now = 0;
    for step in 1..=24 {
        now += 500;
        report(&mut e, "llm", "n1", now, loss_at(step, 2.0));
    }
    checkpoint(&mut e, "llm", "n1", &[10, 20], now);
    let mut actions = Vec::new();
    for step in 25..=27 {
        now += 500;
        actions.extend(report(&mut e, "llm", "n1", now, loss_at(step, 50.0)));
    }
    // The catalog lags behind: the decision waits for a current one, and
    // the spike going on meanwhile changes nothing.
    for step in 28..=31 {
        now += 200;
        actions.extend(report(&mut e, "llm", "n1", now, loss_at(step, 60.0)));
    }
    assert!(
        !has(&actions, EventKind::JobRolledBack),
        "{:#?}",
        events(&actions)
    );
    let actions = checkpoint(&mut e, "llm", "n1", &[10, 20, 25], now + 1_000);
    let why = event(&actions, EventKind::JobRolledBack);
    assert!(
        why.contains("loss spike from step 25")
            && why.contains("rolling back to checkpoint step 20")
            && why.contains("SUP_SEED=1"),
        "{why}"
    );
    let j = job(&e, "llm");
    assert_eq!(j.record.rollbacks, 1);
    assert_eq!(j.record.checkpoint.as_ref().map(|c| c.step), Some(20));
    let a = e.desired_assignment("n1");
    let env = &a.job.expect("assigned").env;
    assert_eq!(env.get("SUP_SEED").map(String::as_str), Some("1"));
    assert_eq!(env.get("SUP_LR_SCALE").map(String::as_str), Some("0.5"));

    // The abandoned timeline's step-30 counts only once the job passed it again.
    launch_all(&mut e, "llm", now);
    report(&mut e, "llm", "n1", now + 100, loss_at(21, 2.0));
    checkpoint(&mut e, "llm", "n1", &[10, 20, 30], now + 200);
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(20)
    );
    report(&mut e, "llm", "n1", now + 300, loss_at(31, 2.0));
    checkpoint(&mut e, "llm", "n1", &[10, 20, 30], now + 400);
    assert_eq!(
        job(&e, "llm").record.checkpoint.as_ref().map(|c| c.step),
        Some(30)
    );
    assert_eq!(job(&e, "llm").record.rollback_mark, None);

    // The budget is spent: the next spike is reported, not rolled back.
    let mut actions = Vec::new();
    for step in 32..=40 {
        actions.extend(report(
            &mut e,
            "llm",
            "n1",
            now + 500 + step as Millis,
            loss_at(step, 90.0),
        ));
    }
    let why = event(&actions, EventKind::JobLossSpike);
    assert!(why.contains("rollback budget of 1 used up"), "{why}");
}

#[test]
fn throughput_and_mfu_from_progress() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "model_params = 1e9");
    launch_all(&mut e, "llm", 0);
    for step in 1..=10u64 {
        let p = JobProgress {
            tokens: Some(step * 4_000),
            ..train(step, 0.4)
        };
        report(&mut e, "llm", "n1", step as Millis * 1_000, p);
    }
    let j = job(&e, "llm");
    assert_eq!(j.tokens_per_s(), Some(4_000.0));
    let mfu = e.job_mfu(j).expect("mfu");
    let expected = 6.0 * 1e9 * 4_000.0 / (4.0 * 989e12);
    assert!((mfu - expected).abs() < 1e-12, "{mfu} vs {expected}");
    // What `supctl job describe` shows (supd's view copies these).
    let node_stats = j.node_stats();
    assert_eq!(j.tokens_per_s(), Some(4_000.0));
    assert_eq!(node_stats.len(), 2);
    assert_eq!(node_stats.first().and_then(|n| n.step_time_s), Some(0.4));
    // Per node: its 2 of the 4 ranks' share, from its own reports; n2 has
    // reported nothing yet.
    assert_eq!(
        node_stats.first().and_then(|n| n.tokens_per_s),
        Some(2_000.0)
    );
    assert_eq!(node_stats.get(1).and_then(|n| n.tokens_per_s), None);
    for step in 1..=3u64 {
        let p = JobProgress {
            tokens: Some(step * 4_000),
            ..train(step, 0.4)
        };
        report(&mut e, "llm", "n2", 20_000 + step as Millis * 2_000, p);
    }
    let j = job(&e, "llm");
    assert_eq!(j.node_tokens_per_s("n2"), Some(1_000.0));
    assert_eq!(j.node_tokens_per_s("n3"), None, "not the job's");
}

#[test]
fn silence_from_an_unreachable_node_is_not_a_hang() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    let last = run_steps(&mut e, "llm", 1, 20, 0);
    // n2's agent drops its stream: its progress cannot reach supd.
    e.on_disconnected(last + 10, "n2", session_of("n2"));
    drain(&mut e);
    e.handle_timeout(last + 5_000);
    let actions = drain(&mut e);
    assert!(
        !has(&actions, EventKind::JobHung),
        "{:#?}",
        events(&actions)
    );
    assert!(e.poll_timeout().is_some(), "looked at again later");
}

#[test]
fn a_rollback_without_a_new_catalog_goes_ahead_after_the_wait() {
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "loss_spike_rollback = true");
    launch_all(&mut e, "llm", 0);
    let loss_at = |step: u64, loss: f64| JobProgress {
        loss: Some(loss),
        ..train(step, 0.4)
    };
    for step in 1..=12 {
        report(
            &mut e,
            "llm",
            "n1",
            step as Millis * 500,
            loss_at(step, 2.0),
        );
    }
    checkpoint(&mut e, "llm", "n1", &[10], 6_100);
    for step in 13..=15 {
        report(
            &mut e,
            "llm",
            "n1",
            step as Millis * 500,
            loss_at(step, 40.0),
        );
    }
    let spiked = 15 * 500;
    e.handle_timeout(spiked + 9_999);
    assert!(!has(&drain(&mut e), EventKind::JobRolledBack));
    e.handle_timeout(spiked + 10_000);
    let why = event(&drain(&mut e), EventKind::JobRolledBack);
    assert!(why.contains("rolling back to checkpoint step 10"), "{why}");
}

fn utilization(e: &mut Engine, node: &str, now: Millis, pct: [Option<u32>; 2]) {
    let readings = pct
        .iter()
        .zip(0u32..)
        .map(|(p, index)| GpuReading {
            index,
            utilization_gpu_pct: *p,
            ..GpuReading::default()
        })
        .collect();
    assert!(e
        .on_telemetry(now, node, session_of(node), readings)
        .is_applied());
}

#[test]
fn gpus_idle_at_zero_utilization_for_the_bound_hang_a_job_without_progress() {
    let mut e = cluster(3);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    assert_eq!(job(&e, "llm").record.state, JobState::Running);
    // No progress at all: the step detector never arms.
    utilization(&mut e, "n1", 1_000, [Some(0), Some(0)]);
    utilization(&mut e, "n2", 1_500, [Some(0), Some(0)]);
    drain(&mut e);
    // The idle GPUs schedule a check, which sets the exact time: the
    // ceiling (still warming up), counted from the last GPU going idle.
    let first = e.poll_timeout().expect("a check after GPUs went idle");
    assert!(first <= 1_500 + 1_000, "{first}");
    e.handle_timeout(first);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    assert_eq!(e.poll_timeout(), Some(1_500 + 60_000));
    // Readings keep coming at 0%: idle since the first one.
    utilization(&mut e, "n1", 30_000, [Some(0), Some(0)]);
    e.handle_timeout(61_499);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    e.handle_timeout(61_500);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobHung);
    assert!(
        why.contains(
            "hung: all 4 GPU(s) of the job at 0% utilization with no step advance for 60000 ms in phase train"
        ) && why.contains("the ceiling: still warming up")
            && why.contains("no node to blame, nothing cordoned"),
        "{why}"
    );
    assert!(has(&actions, EventKind::JobRestarted));
    assert!(!has(&actions, EventKind::NodeCordoned));
}

#[test]
fn one_busy_or_unreported_gpu_is_no_zero_utilization_signal() {
    for other in [Some(3), None] {
        let mut e = cluster(2);
        submit(&mut e, "llm", 2, "");
        launch_all(&mut e, "llm", 0);
        utilization(&mut e, "n1", 1_000, [Some(0), Some(0)]);
        utilization(&mut e, "n2", 1_000, [Some(0), other]);
        e.handle_timeout(1_000_000);
        assert!(
            !has(&drain(&mut e), EventKind::JobHung),
            "other GPU at {other:?}"
        );
    }
    // Steps advancing while the GPUs read 0% (a probe that lies, a CPU
    // phase): the step detector's bound counts from the last advance.
    let mut e = cluster(2);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    utilization(&mut e, "n1", 0, [Some(0), Some(0)]);
    utilization(&mut e, "n2", 0, [Some(0), Some(0)]);
    let last = run_steps(&mut e, "llm", 1, 200, 0);
    assert!(last > 60_000);
    e.handle_timeout(last + 999);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
}

#[test]
fn a_suspect_node_short_of_a_cordon_is_cleared_by_an_uncordon() {
    let mut e = cluster_with(
        EngineConfig {
            detect: DetectConfig {
                hang_cordon_after: 4,
                ..config().detect
            },
            ..config()
        },
        3,
    );
    submit(&mut e, "llm", 2, "");
    let mut now = 0;
    for round in 1..=2u32 {
        launch_all(&mut e, "llm", now);
        for step in 1..=10 {
            now += 500;
            report(&mut e, "llm", "n1", now, train(step, 0.4));
            let lag = JobProgress {
                min_step: Some(step.min(7)),
                ..train(step, 0.4)
            };
            report(&mut e, "llm", "n2", now, lag);
        }
        now += 1_000;
        e.handle_timeout(now);
        let why = event(&drain(&mut e), EventKind::JobHung);
        let n2 = e.node("n2").expect("n2");
        if round == 1 {
            assert!(why.contains("noted, nothing cordoned"), "{why}");
            assert_eq!(n2.state(), NodeState::Ready);
        } else {
            assert!(why.contains("(2 of 4 hang(s) of this job blamed on it before a cordon: suspect, nothing cordoned yet)"), "{why}");
            assert_eq!(n2.state(), NodeState::Suspect);
        }
    }
    let outcome = e
        .uncordon(now, "n2", "op", "checked the NIC")
        .expect("uncordon");
    assert!(outcome.changed, "{outcome:?}");
    assert_eq!(outcome.message, "node 'n2' is no longer suspect");
    let why = event(&drain(&mut e), EventKind::NodeUncordoned);
    assert_eq!(
        why,
        "suspect cleared by op (was: 2 hang(s) of job 'llm' blamed on it (cordoned at 4)): checked the NIC"
    );
    assert_eq!(e.node("n2").expect("n2").state(), NodeState::Ready);
    assert!(job(&e, "llm").record.hang_blame.is_empty());
    let again = e.uncordon(now, "n2", "op", "").expect("uncordon");
    assert!(!again.changed, "{again:?}");
}

#[test]
fn with_hang_cordons_off_a_blamed_node_is_neither_suspect_nor_cordoned() {
    let mut e = cluster_with(
        EngineConfig {
            detect: DetectConfig {
                hang_cordon_after: 0,
                ..config().detect
            },
            ..config()
        },
        3,
    );
    submit(&mut e, "llm", 2, "");
    let mut now = 0;
    for round in 1..=3u32 {
        launch_all(&mut e, "llm", now);
        for step in 1..=10 {
            now += 500;
            report(&mut e, "llm", "n1", now, train(step, 0.4));
            let lag = JobProgress {
                min_step: Some(step.min(7)),
                ..train(step, 0.4)
            };
            report(&mut e, "llm", "n2", now, lag);
        }
        now += 1_000;
        e.handle_timeout(now);
        let actions = drain(&mut e);
        let why = event(&actions, EventKind::JobHung);
        assert!(
            why.contains(&format!(
                "node n2 lagging: its ranks stopped advancing first (at step 7, the job reached step 10) \
                 ({round} hang(s) of this job blamed on it; nothing cordoned: detect.hang_cordon_after = 0)"
            )),
            "{why}"
        );
        assert!(!has(&actions, EventKind::NodeCordoned));
        assert_eq!(e.node("n2").expect("n2").state(), NodeState::Ready);
    }
}

/// Nodes that stay reachable through long silences (no telemetry is sent).
fn patient_cluster(startup_allowance_ms: Millis) -> Engine {
    let base = config();
    cluster_with(
        EngineConfig {
            unreachable_after_ms: 1_000 * 3_600_000,
            detect: DetectConfig {
                startup_allowance_ms,
                ..base.detect.clone()
            },
            ..base
        },
        2,
    )
}

#[test]
fn a_generation_that_never_reports_is_hung_at_startup_once_the_job_has_reported_before() {
    let allowance = 30_000;
    let mut e = patient_cluster(allowance);
    submit(&mut e, "llm", 2, "");
    launch_all(&mut e, "llm", 0);
    let last = run_steps(&mut e, "llm", 1, 20, 0);
    checkpoint(&mut e, "llm", "n1", &[10, 20], last);
    let restarted = rank_fails(&mut e, "llm", "n1", 1, last + 100);
    assert!(has(&restarted, EventKind::JobRestarted));

    // The new generation launches and then says nothing (stuck in its
    // rendezvous): hung at the startup allowance, not before.
    let launched_at = last + 5_000;
    launch_all(&mut e, "llm", launched_at);
    let deadline = launched_at + allowance;
    assert!(e.poll_timeout().is_some_and(|t| t <= deadline));
    e.handle_timeout(deadline - 1);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    e.handle_timeout(deadline);
    let actions = drain(&mut e);
    let why = event(&actions, EventKind::JobHung);
    assert!(
        why.contains("hung at startup")
            && why.contains(&format!("no progress report for {allowance} ms"))
            && why.contains("the startup allowance")
            && why.contains("nothing cordoned"),
        "{why}"
    );
    let restarted = event(&actions, EventKind::JobRestarted);
    assert!(restarted.contains("resuming from step 20"), "{restarted}");
    assert!(!has(&actions, EventKind::NodeCordoned));

    // A first report (loading the checkpoint) disarms it: the phases'
    // own bounds apply from there, and a job that trains on is not hung.
    let relaunched_at = deadline + 5_000;
    launch_all(&mut e, "llm", relaunched_at);
    report(
        &mut e,
        "llm",
        "n1",
        relaunched_at + 1_000,
        JobProgress {
            step: 20,
            phase: "checkpoint_load".to_owned(),
            ..Default::default()
        },
    );
    let trained_until = run_steps(&mut e, "llm", 21, 100, relaunched_at + 1_000);
    assert!(trained_until > relaunched_at + allowance);
    e.handle_timeout(trained_until);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    assert_eq!(job(&e, "llm").record.restarts, 2);
}

#[test]
fn a_job_that_never_reported_progress_is_never_hung_for_its_silence() {
    let mut e = patient_cluster(30_000);
    submit(&mut e, "quiet", 2, "");
    launch_all(&mut e, "quiet", 0);
    assert_eq!(job(&e, "quiet").record.state, JobState::Running);
    for hours in [1, 10, 100] {
        e.handle_timeout(hours * 3_600_000);
        assert!(!has(&drain(&mut e), EventKind::JobHung));
    }
    // Once restarted, still nothing to expect from it.
    rank_fails(&mut e, "quiet", "n2", 1, 400 * 3_600_000);
    launch_all(&mut e, "quiet", 401 * 3_600_000);
    e.handle_timeout(500 * 3_600_000);
    assert!(!has(&drain(&mut e), EventKind::JobHung));
    assert_eq!(job(&e, "quiet").record.state, JobState::Running);
}
