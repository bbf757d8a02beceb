//! The simulator against closed forms on cases simple enough to have one.

use super::*;
use sup_core::Bucket;

const H: Millis = 3_600_000;

fn small(job_nodes: u32, spares: u32) -> SimParams {
    SimParams {
        job_nodes,
        gpus_per_node: 8,
        spares,
        min_nodes: job_nodes,
        duration_ms: 100 * H,
        gpu_detect_ms: 2_000,
        software_detect_ms: 5_000,
        hang_detect_ms: 600_000,
        unreachable_after_ms: 30_000,
        stall_confirm_ms: 5_000,
        lost_node_grace_ms: 60_000,
        launch_ms: 2_000,
        reinit_ms: 60_000,
        checkpoint_write_ms: 10_000,
        checkpoint_snapshot_ms: None,
        checkpoint_interval_ms: Some(H),
        step_time_ms: None,
        repair_ms: 24 * H,
        seed: 7,
    }
}

fn software_at(hours: &[f64]) -> Vec<Failure> {
    hours
        .iter()
        .map(|h| Failure {
            at_ms: (h * H as f64) as Millis,
            class: FailureClass::Software,
            cause: "bug".to_owned(),
        })
        .collect()
}

#[test]
fn no_failures_costs_the_start_and_the_checkpoints() {
    let p = small(4, 0);
    let r = simulate(&p, &[]);
    // Training from launch + reinit; each cycle is τ of work and δ of write.
    let start = (p.launch_ms + p.reinit_ms) as f64;
    let cycle = (H + p.checkpoint_write_ms) as f64;
    let span = p.duration_ms as f64 - start;
    let k = (span / cycle).floor();
    let expected = k * H as f64 + (span - k * cycle);
    assert!(
        (r.productive_ms - expected).abs() < 1.0,
        "{} vs {expected}",
        r.productive_ms
    );
    assert_eq!(r.restarts, 0);
    assert!((r.losses.checkpoint_ms - k * p.checkpoint_write_ms as f64).abs() < 1.0);
}

#[test]
fn deterministic_software_failures_match_the_hand_count() {
    let p = small(4, 0);
    // Failures 30 min into a cycle: each loses detection, restart and the
    // 30 min since the last checkpoint (plus what of it was written).
    let start = (p.launch_ms + p.reinit_ms) as f64;
    let cycle = (H + p.checkpoint_write_ms) as f64;
    let trace = software_at(&[10.0, 40.0, 70.0]);
    let r = simulate(&p, &trace);
    assert_eq!(r.restarts, 3);
    assert_eq!(r.spare_swaps, 0);
    assert!((r.losses.detection_ms - 3.0 * p.software_detect_ms as f64).abs() < 1.0);
    let restart = (p.launch_ms + p.reinit_ms) as f64;
    // The first start counts as restart time too (the run begins with it).
    assert!(
        (r.losses.restart_ms - 4.0 * restart).abs() < 1.0,
        "{:?}",
        r.losses
    );
    // Recompute: the phase of each failure within its checkpoint cycle.
    let mut seg_start = start;
    let mut recompute = 0.0;
    for h in [10.0, 40.0, 70.0] {
        let t = h * H as f64;
        let elapsed = t - seg_start;
        recompute += elapsed - (elapsed / cycle).floor() * cycle;
        seg_start = t + p.software_detect_ms as f64 + restart;
    }
    assert!(
        (r.losses.recompute_ms - recompute).abs() < 1.0,
        "{} vs {recompute}",
        r.losses.recompute_ms
    );
    let total = r.productive_ms
        + r.losses.detection_ms
        + r.losses.restart_ms
        + r.losses.recompute_ms
        + r.losses.waiting_ms
        + r.losses.checkpoint_ms
        + r.losses.shrunk_ms;
    assert!(
        (total - p.duration_ms as f64).abs() < 1.0,
        "hours leak: {total}"
    );
}

/// One failure type, no spares, Poisson failures: ETTR against the renewal
/// closed form E[useful per segment] / E[segment + downtime] with
/// E[useful] = τ·e^(−λc)/(1 − e^(−λc)), c = τ + δ.
#[test]
fn poisson_software_failures_match_the_closed_form() {
    let mut p = small(2, 0);
    p.duration_ms = 20_000 * H;
    p.checkpoint_interval_ms = Some(H / 2);
    let mtbf = 3.0 * H as f64;
    let expected_failures = p.duration_ms as f64 / mtbf;
    let causes = vec![("bug".to_owned(), FailureClass::Software, 1.0)];
    let trace = generate_trace(p.duration_ms, expected_failures, &causes, 42);
    let r = simulate(&p, &trace);
    let lambda = 1.0 / mtbf;
    let tau = p.checkpoint_interval_ms.unwrap_or(H) as f64;
    let c = tau + p.checkpoint_write_ms as f64;
    let useful = tau * (-lambda * c).exp() / (1.0 - (-lambda * c).exp());
    let down = (p.software_detect_ms + p.launch_ms + p.reinit_ms) as f64;
    let expected = useful / (mtbf + down);
    let ettr = r.ettr();
    assert!(
        (ettr - expected).abs() < 0.005,
        "ETTR {ettr:.4} vs closed form {expected:.4} ({} failures)",
        trace.len()
    );
}

/// Asynchronous checkpoints, one failure type, Poisson failures: the same
/// renewal form with c = τ + snapshot, where a checkpoint counts only once
/// its background write W is done: E[useful] = τ·e^(−λW)·e^(−λc)/(1 − e^(−λc)).
#[test]
fn poisson_failures_with_asynchronous_checkpoints_match_the_closed_form() {
    let mut p = small(2, 0);
    p.duration_ms = 20_000 * H;
    p.checkpoint_interval_ms = Some(H / 2);
    p.checkpoint_snapshot_ms = Some(2_000);
    p.checkpoint_write_ms = 20 * 60_000;
    let mtbf = 3.0 * H as f64;
    let causes = vec![("bug".to_owned(), FailureClass::Software, 1.0)];
    let trace = generate_trace(p.duration_ms, p.duration_ms as f64 / mtbf, &causes, 42);
    let r = simulate(&p, &trace);
    let lambda = 1.0 / mtbf;
    let tau = (H / 2) as f64;
    let c = tau + 2_000.0;
    let w = p.checkpoint_write_ms as f64;
    let useful = tau * (-lambda * w).exp() * (-lambda * c).exp() / (1.0 - (-lambda * c).exp());
    let down = (p.software_detect_ms + p.launch_ms + p.reinit_ms) as f64;
    let expected = useful / (mtbf + down);
    let ettr = r.ettr();
    assert!(
        (ettr - expected).abs() < 0.005,
        "ETTR {ettr:.4} vs closed form {expected:.4} ({} failures)",
        trace.len()
    );
    // The same run, synchronous with the whole write blocking, is worse:
    // 20 min of every 50 blocked.
    let sync = simulate(
        &SimParams {
            checkpoint_snapshot_ms: None,
            ..p.clone()
        },
        &trace,
    );
    assert!(sync.ettr() < ettr - 0.1, "{} vs {ettr}", sync.ettr());
}

#[test]
fn an_asynchronous_checkpoint_still_being_written_cannot_be_restored() {
    let mut p = small(4, 0);
    p.checkpoint_snapshot_ms = Some(10_000);
    p.checkpoint_write_ms = 10 * 60_000;
    let start = (p.launch_ms + p.reinit_ms) as f64;
    let c = (H + 10_000) as f64;
    let down = (p.software_detect_ms + p.launch_ms + p.reinit_ms) as f64;
    // 5 min into checkpoint 2's write: back to checkpoint 1, an hour and
    // 5 min lost. Then, next segment, 20 min after checkpoint 1 was
    // snapshotted (written 10 min ago): 20 min lost.
    let t1 = start + 2.0 * c + 300_000.0;
    let t2 = t1 + down + c + 1_200_000.0;
    let trace: Vec<Failure> = [t1, t2]
        .iter()
        .map(|&t| Failure {
            at_ms: t as Millis,
            class: FailureClass::Software,
            cause: "bug".to_owned(),
        })
        .collect();
    let r = simulate(&p, &trace);
    assert_eq!(r.restarts, 2, "{r:?}");
    let expected = (H + 300_000 + 1_200_000) as f64;
    assert!(
        (r.losses.recompute_ms - expected).abs() < 1.0,
        "{} vs {expected}",
        r.losses.recompute_ms
    );
    // Only the snapshots block: 2 + 1 before the failures.
    let snapshots = 3.0 * 10_000.0;
    assert!(
        r.losses.checkpoint_ms >= snapshots,
        "{}",
        r.losses.checkpoint_ms
    );
    let total = r.productive_ms
        + r.losses.detection_ms
        + r.losses.restart_ms
        + r.losses.recompute_ms
        + r.losses.waiting_ms
        + r.losses.checkpoint_ms
        + r.losses.shrunk_ms;
    assert!(
        (total - p.duration_ms as f64).abs() < 1.0,
        "hours leak: {total}"
    );
}

#[test]
fn asynchronous_blocking_and_the_recommended_interval() {
    let mut p = small(4, 0);
    p.checkpoint_write_ms = 60_000;
    assert_eq!(p.checkpoint_blocking_ms(H), 60_000, "synchronous");
    assert_eq!(p.checkpoint_lag_ms(), 0);
    assert_eq!(
        p.recommended_interval_ms(10_000_000.0),
        young_daly_ms(60_000, 10_000_000.0)
    );
    p.checkpoint_snapshot_ms = Some(500);
    assert_eq!(p.checkpoint_blocking_ms(H), 500);
    assert_eq!(p.checkpoint_lag_ms(), 60_000);
    // A snapshot waits for the previous write when the interval is shorter.
    assert_eq!(p.checkpoint_blocking_ms(20_000), 500 + 40_000);
    // √(2 · 0.5 s · 10,000 s) = 100 s ≥ the write: Young/Daly for δ = 0.5 s.
    assert_eq!(p.recommended_interval_ms(10_000_000.0), 100_000);
    // √(2 · 0.5 s · 1,000 s) ≈ 32 s < the 60 s write: the write.
    assert_eq!(p.recommended_interval_ms(1_000_000.0), 60_000);
}

/// A hang is stopped by sup's own detector (the engine's default rule:
/// 10 × step time, within 30 s..10 min) or NCCL's watchdog, whichever first.
#[test]
fn hangs_are_caught_by_sups_detector_or_the_watchdog() {
    let mut p = small(4, 0);
    p.duration_ms = 20 * H;
    assert_eq!(p.hang_detection_ms(), 600_000, "watchdog only");
    for (step, expected) in [(6_000, 60_000), (100, 30_000), (120_000, 600_000)] {
        p.step_time_ms = Some(step);
        assert_eq!(p.hang_detection_ms(), expected, "step {step} ms");
    }
    p.hang_detect_ms = 45_000;
    p.step_time_ms = Some(6_000);
    assert_eq!(p.hang_detection_ms(), 45_000, "the watchdog first");
    p.hang_detect_ms = 600_000;
    let trace = vec![Failure {
        at_ms: 5 * H,
        class: FailureClass::Hang,
        cause: "NCCL watchdog timeouts".to_owned(),
    }];
    let r = simulate(&p, &trace);
    assert_eq!(r.restarts, 1, "{r:?}");
    assert!((r.losses.detection_ms - 60_000.0).abs() < 1.0, "{r:?}");
}

#[test]
fn gpu_failures_with_enough_spares_swap_without_stalls() {
    let mut p = small(8, 3);
    p.duration_ms = 50 * H;
    let trace: Vec<Failure> = [5.0, 15.0, 25.0]
        .iter()
        .map(|h| Failure {
            at_ms: (h * H as f64) as Millis,
            class: FailureClass::Gpu,
            cause: "faulty GPU".to_owned(),
        })
        .collect();
    let r = simulate(&p, &trace);
    assert_eq!(r.restarts, 3, "{r:?}");
    assert_eq!(r.spare_swaps, 3, "{r:?}");
    assert_eq!(r.stalls, 0);
    assert_eq!(r.shrinks, 0);
    assert_eq!(r.min_spares, 0);
    // Detection is the agent's delay: supd cordons and restarts at once.
    assert!((r.losses.detection_ms - 3.0 * p.gpu_detect_ms as f64).abs() < 1.0);
}

#[test]
fn gpu_failure_without_spares_waits_for_the_repair() {
    let mut p = small(4, 0);
    p.duration_ms = 60 * H;
    p.repair_ms = 10 * H;
    let trace = vec![Failure {
        at_ms: 5 * H,
        class: FailureClass::Gpu,
        cause: "faulty GPU".to_owned(),
    }];
    let r = simulate(&p, &trace);
    assert_eq!(r.stalls, 1, "{r:?}");
    // Waiting from the cordon until the board returns.
    let expected = (p.repair_ms - p.gpu_detect_ms) as f64;
    assert!(
        (r.losses.waiting_ms - expected).abs() < 1.0,
        "{} vs {expected}",
        r.losses.waiting_ms
    );
}

#[test]
fn a_silent_host_is_found_by_the_engines_liveness_rules() {
    let mut p = small(4, 1);
    p.duration_ms = 20 * H;
    let trace = vec![Failure {
        at_ms: 5 * H,
        class: FailureClass::Host,
        cause: "power supply".to_owned(),
    }];
    let r = simulate(&p, &trace);
    assert_eq!(r.spare_swaps, 1, "{r:?}");
    // Unreachable after the limit (checked on the engine's own schedule),
    // lost once the stalled job confirms it.
    let d = r.losses.detection_ms;
    let floor = (p.unreachable_after_ms + p.stall_confirm_ms) as f64;
    assert!(d >= floor && d <= floor + 2_000.0, "detection {d} ms");
}

#[test]
fn young_daly_is_the_square_root_rule() {
    assert_eq!(young_daly_ms(30_000, 11_135_000.0), 817_374);
}

#[test]
fn llama3_causes_put_58_7_percent_on_gpus() {
    let causes = llama3_causes();
    let total: f64 = causes.iter().map(|c| c.2).sum();
    let gpu: f64 = causes
        .iter()
        .filter(|c| c.1 == FailureClass::Gpu)
        .map(|c| c.2)
        .sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!((gpu - 0.587).abs() < 1e-9);
}

#[test]
fn trace_files_parse_and_reject_unknown_classes() {
    let t = parse_trace("# at class cause\n3600 gpu HBM3\n60 host\n").unwrap_or_default();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].at_ms, 60_000);
    assert_eq!(t[0].class, FailureClass::Host);
    assert_eq!(t[1].cause, "HBM3");
    assert!(parse_trace("10 cosmic-ray").is_err());
}

/// The engine's live goodput accounting, fed only what a real supd hears
/// (progress with its phase, checkpoints, exits, verdicts, silence),
/// agrees with the simulator's ground truth on the Llama 3 trace.
#[test]
fn sim_live_accounting_matches_the_ground_truth_on_the_llama3_trace() {
    let p = SimParams {
        spares: 20,
        step_time_ms: Some(6_000),
        ..SimParams::default()
    };
    let trace = generate_trace(p.duration_ms, 419.0, &llama3_causes(), 1);
    let r = simulate(&p, &trace);
    let live = r.live.clone().expect("the engine accounted the job");
    let truth = r.ettr();
    let ettr = live.ettr.expect("an ETTR");
    eprintln!(
        "ground truth ETTR {:.4}%, live {:.4}%; truth losses {:?}; live seconds {:?}",
        truth * 100.0,
        ettr * 100.0,
        r.losses,
        live.seconds
    );
    assert!(
        r.restarts > 300,
        "the trace restarted the job: {}",
        r.restarts
    );
    assert!(
        (ettr - truth).abs() < 0.005,
        "live ETTR {ettr:.4} vs ground truth {truth:.4}"
    );
    // Every millisecond of the run is booked once.
    assert!((live.wall_s * 1000.0 - p.duration_ms as f64).abs() < 1.0);
    // The causes agree too, not just their sum: within 5% of each loss.
    let pairs = [
        (Bucket::Restart, r.losses.restart_ms),
        (Bucket::Redone, r.losses.recompute_ms),
        (Bucket::CheckpointSave, r.losses.checkpoint_ms),
    ];
    for (bucket, truth_ms) in pairs {
        let live_ms = live.seconds_in(bucket) * 1000.0;
        assert!(
            (live_ms - truth_ms).abs() <= 0.05 * truth_ms,
            "{}: live {live_ms:.0} ms vs ground truth {truth_ms:.0} ms",
            bucket.as_str()
        );
    }
}
