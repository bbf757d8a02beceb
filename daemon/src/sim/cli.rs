//! `supd simulate`: several policies over one trace, rendered as text.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use sup_core::Millis;

use super::*;

// ---------------------------------------------------------------------------
// `supd simulate`
// ---------------------------------------------------------------------------

/// Goodput simulator: runs the real policy engine over a failure trace and
/// prints ETTR, lost hours by cause and spare-pool use, for several policies.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Nodes the job wants.
    #[arg(long, default_value_t = 2048)]
    pub nodes: u32,
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: u32,
    /// Spare-node counts to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,20")]
    pub spares: Vec<u32>,
    /// Elastic floor as a share of --nodes (1.0: never shrink, wait instead).
    #[arg(long, default_value_t = 1.0)]
    pub min_share: f64,
    /// Run length.
    #[arg(long, default_value = "54days", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Expected unplanned interruptions over the run (Llama 3: 419).
    #[arg(long, default_value_t = 419.0)]
    pub interruptions: f64,
    /// Failure trace file instead (`SECONDS CLASS [CAUSE]` per line).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Time to write one checkpoint; training blocks for all of it (δ)
    /// unless --checkpoint-snapshot is given.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub checkpoint_write: Duration,
    /// Asynchronous checkpointing (DCP async_save, NVRx): training blocks
    /// only for this device-to-host snapshot (δ); the write runs in the
    /// background and a checkpoint can be restored once it is written.
    /// Default: synchronous.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub checkpoint_snapshot: Option<Duration>,
    /// Fixed checkpoint intervals to compare with Young/Daly.
    #[arg(long, value_delimiter = ',', default_value = "1h", value_parser = humantime::parse_duration)]
    pub fixed_intervals: Vec<Duration>,
    /// Ranks launched → training again (NCCL init, checkpoint load).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub reinit: Duration,
    /// Assignment → every rank launched.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub launch: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub gpu_detect: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub software_detect: Duration,
    /// Hang → a rank exits (NCCL's watchdog default is 10 minutes).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub hang_detect: Duration,
    /// The trainer's step time, for sup's own hang detector: no step for
    /// clamp(10 × step time, 30 s, 10 min) (supd's default [detect]) stops a
    /// hung job, when sooner than --hang-detect. 0: NCCL's watchdog only.
    /// Default: Llama 3 405B (table 4: 16M tokens per step at 400 TFLOP/s
    /// per GPU on 16,384 GPUs ≈ 6.2 s).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub step_time: Duration,
    /// supd's nodes.unreachable_after.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub unreachable_after: Duration,
    /// supd's jobs.stall_confirm.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub stall_confirm: Duration,
    /// A failed board or host returns to service after this long.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub repair: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn ms_of(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn hours(ms: f64) -> f64 {
    ms / 3_600_000.0
}

/// Runs the comparison and renders it as text.
pub fn run_cli(args: &SimArgs) -> Result<String, String> {
    if args.nodes == 0 || args.gpus_per_node == 0 {
        return Err("--nodes and --gpus-per-node must be positive".to_owned());
    }
    if !(0.0..=1.0).contains(&args.min_share) {
        return Err("--min-share must be within 0..=1".to_owned());
    }
    let duration_ms = ms_of(args.duration);
    let trace = match &args.trace {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_trace(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => generate_trace(duration_ms, args.interruptions, &llama3_causes(), args.seed),
    };
    let base = SimParams {
        job_nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        spares: 0,
        min_nodes: ((args.nodes as f64 * args.min_share).ceil() as u32).clamp(1, args.nodes),
        duration_ms,
        gpu_detect_ms: ms_of(args.gpu_detect),
        software_detect_ms: ms_of(args.software_detect),
        hang_detect_ms: ms_of(args.hang_detect),
        unreachable_after_ms: ms_of(args.unreachable_after),
        stall_confirm_ms: ms_of(args.stall_confirm),
        lost_node_grace_ms: 60_000,
        launch_ms: ms_of(args.launch),
        reinit_ms: ms_of(args.reinit),
        checkpoint_write_ms: ms_of(args.checkpoint_write),
        checkpoint_snapshot_ms: args.checkpoint_snapshot.map(ms_of),
        checkpoint_interval_ms: None,
        step_time_ms: Some(ms_of(args.step_time)).filter(|&s| s > 0),
        repair_ms: ms_of(args.repair),
        seed: args.seed,
    };
    let mtbf = duration_ms as f64 / trace.len().max(1) as f64;
    let yd = base.recommended_interval_ms(mtbf);
    let blocking = Duration::from_millis(
        base.checkpoint_snapshot_ms
            .unwrap_or(base.checkpoint_write_ms)
            .max(0) as u64,
    );
    let mut out = String::new();
    let mut by_class: Vec<(FailureClass, usize)> = Vec::new();
    for f in &trace {
        match by_class.iter_mut().find(|(c, _)| *c == f.class) {
            Some(e) => e.1 += 1,
            None => by_class.push((f.class, 1)),
        }
    }
    by_class.sort();
    let _ = writeln!(
        out,
        "trace: {} interruptions in {} ({}), job MTBF {:.2} h; {}",
        trace.len(),
        humantime::format_duration(args.duration),
        by_class
            .iter()
            .map(|(c, n)| format!("{} {n}", c.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        hours(mtbf),
        match &args.trace {
            Some(p) => format!("from {}", p.display()),
            None => format!("generated (Llama 3 causes, seed {})", args.seed),
        }
    );
    let _ = writeln!(
        out,
        "job: {} nodes × {} GPUs (min {}); costs: reinit {}, launch {}, {}, repair {}; detection: gpu {}, software {}, hang {}, host {} + {}",
        args.nodes,
        args.gpus_per_node,
        base.min_nodes,
        humantime::format_duration(args.reinit),
        humantime::format_duration(args.launch),
        match args.checkpoint_snapshot {
            Some(snapshot) => format!(
                "checkpoint async: snapshot {} blocks, write {} in the background",
                humantime::format_duration(snapshot),
                humantime::format_duration(args.checkpoint_write)
            ),
            None => format!(
                "checkpoint write {} (blocking)",
                humantime::format_duration(args.checkpoint_write)
            ),
        },
        humantime::format_duration(args.repair),
        humantime::format_duration(args.gpu_detect),
        humantime::format_duration(args.software_detect),
        match base.step_time_ms {
            Some(step) => format!(
                "{} (sup's hang detector at step time {}; NCCL watchdog {})",
                humantime::format_duration(Duration::from_millis(
                    base.hang_detection_ms().max(0) as u64
                )),
                humantime::format_duration(Duration::from_millis(step.max(0) as u64)),
                humantime::format_duration(args.hang_detect)
            ),
            None => format!(
                "{} (NCCL watchdog)",
                humantime::format_duration(args.hang_detect)
            ),
        },
        humantime::format_duration(args.unreachable_after),
        humantime::format_duration(args.stall_confirm),
    );
    let _ = writeln!(
        out,
        "Young/Daly interval √(2·δ·MTBF) for δ = {} blocked per checkpoint: {}\n",
        humantime::format_duration(blocking),
        humantime::format_duration(Duration::from_secs((yd / 1000).max(1) as u64))
    );
    let _ = writeln!(
        out,
        "{:<8} {:<14} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6}",
        "spares",
        "interval",
        "ETTR",
        "live",
        "detect h",
        "restart h",
        "recomp h",
        "wait h",
        "ckpt h",
        "shrunk h",
        "swaps",
        "shrink",
        "stalls",
        "min sp"
    );
    let mut intervals: Vec<(String, Option<Millis>)> = vec![(
        format!(
            "Y/D {}",
            humantime::format_duration(Duration::from_secs((yd / 1000).max(1) as u64))
        ),
        None,
    )];
    for d in &args.fixed_intervals {
        intervals.push((
            format!("fixed {}", humantime::format_duration(*d)),
            Some(ms_of(*d)),
        ));
    }
    let mut best: Option<(u32, f64)> = None;
    for &spares in &args.spares {
        for (label, interval) in &intervals {
            let p = SimParams {
                spares,
                checkpoint_interval_ms: *interval,
                ..base.clone()
            };
            let r = simulate(&p, &trace);
            let l = &r.losses;
            let _ = writeln!(
                out,
                "{:<8} {:<14} {:>6.2}% {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>6}{}",
                spares,
                label,
                r.ettr() * 100.0,
                r.live_ettr()
                    .map_or("-".to_owned(), |e| format!("{:.2}%", e * 100.0)),
                hours(l.detection_ms),
                hours(l.restart_ms),
                hours(l.recompute_ms),
                hours(l.waiting_ms),
                hours(l.checkpoint_ms),
                hours(l.shrunk_ms),
                r.spare_swaps,
                r.shrinks,
                r.stalls,
                r.min_spares,
                r.gave_up
                    .as_deref()
                    .map(|g| format!("  gave up: {g}"))
                    .unwrap_or_default()
            );
            if interval.is_none() && r.stalls == 0 && r.shrinks == 0 && best.is_none() {
                best = Some((spares, r.ettr()));
            }
        }
    }
    let _ = writeln!(
        out,
        "\nETTR: this simulator's ground truth; live: the engine's own goodput accounting of the same run (what `supctl job describe` shows for a real job)"
    );
    match best {
        Some((spares, ettr)) => {
            let _ = writeln!(
                out,
                "recommendation: checkpoint every {} (Young/Daly for δ = {}, MTBF {:.2} h) and keep {spares} spare node(s) ({:.2}% of the job): no stall or shrink for lack of spares on this trace, ETTR {:.2}%",
                humantime::format_duration(Duration::from_secs((yd / 1000).max(1) as u64)),
                humantime::format_duration(blocking),
                hours(mtbf),
                spares as f64 / args.nodes as f64 * 100.0,
                ettr * 100.0
            );
        }
        None => {
            let _ = writeln!(
                out,
                "recommendation: checkpoint every {} (Young/Daly); none of the spare counts tried avoided stalls on this trace: try more (--spares)",
                humantime::format_duration(Duration::from_secs((yd / 1000).max(1) as u64))
            );
        }
    }
    Ok(out)
}
