//! Goodput simulator: what sup's policies cost in training time over a
//! failure trace, with the **real policy engine** making every decision.
//!
//! The engine is pure (time is an argument), so a simulated clock drives it
//! through weeks of a cluster's life in seconds: nodes register and report,
//! one job runs across them, failures arrive as the inputs a real agent would
//! send (a failed GPU verdict, a host that goes silent, a rank that exits
//! non-zero), and the engine cordons, detects lost nodes, swaps spares,
//! shrinks, waits and restarts exactly as supd would. The simulator only adds
//! what the engine does not model: how long detection, launching and
//! re-initialisation take, checkpoint writes and the work lost since the last
//! one, and repairs returning nodes after a while. It accounts every hour of
//! the run to one cause and reports the effective training time ratio (ETTR).
//!
//! Checkpoints are reported to the engine lazily (just before a failure's
//! input, and at each checkpoint while a job runs shrunk, so it can grow back
//! on time): reporting all ~30,000 checkpoints of a 54-day run would cost
//! time and decide nothing.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use sup_core::{
    Action, Engine, EngineConfig, EventKind, GpuHealth, GpuInventory, JobState, Millis,
    Registration,
};

/// How a failure reaches sup, which decides how it is detected and handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureClass {
    /// A GPU fault the agent sees (Xid, ECC, fallen off the bus): a failed
    /// verdict, the node is cordoned, the board goes to repair.
    Gpu,
    /// The host dies or drops off the network: silence, then unreachable,
    /// then lost; it comes back after repair.
    Host,
    /// The job crashes (a bug, a dependency): a rank exits non-zero; no node
    /// is taken out.
    Software,
    /// The job hangs (NCCL watchdog): a rank exits once the watchdog fires.
    Hang,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Gpu => "gpu",
            FailureClass::Host => "host",
            FailureClass::Software => "software",
            FailureClass::Hang => "hang",
        }
    }

    fn parse(s: &str) -> Option<FailureClass> {
        match s {
            "gpu" => Some(FailureClass::Gpu),
            "host" => Some(FailureClass::Host),
            "software" => Some(FailureClass::Software),
            "hang" => Some(FailureClass::Hang),
            _ => None,
        }
    }
}

/// Llama 3's unplanned interruptions by root cause (Llama 3 paper, table 5:
/// 419 in 54 days on 16,384 H100s), with the class each maps to. The
/// published percentages are the weights; the GPU causes sum to 58.7%.
pub const LLAMA3_CAUSES: &[(&str, FailureClass, f64)] = &[
    ("faulty GPU", FailureClass::Gpu, 30.1),
    ("GPU HBM3 memory", FailureClass::Gpu, 17.2),
    ("GPU SRAM memory", FailureClass::Gpu, 4.5),
    ("GPU system processor", FailureClass::Gpu, 4.1),
    ("silent data corruption", FailureClass::Gpu, 1.4),
    ("GPU thermal interface and sensor", FailureClass::Gpu, 1.4),
    ("software bug", FailureClass::Software, 12.9),
    ("network switch/cable", FailureClass::Host, 8.4),
    ("host maintenance", FailureClass::Host, 7.6),
    ("NIC", FailureClass::Host, 1.7),
    ("NCCL watchdog timeouts", FailureClass::Hang, 1.7),
    ("SSD", FailureClass::Host, 0.7),
    ("power supply", FailureClass::Host, 0.7),
    ("server chassis", FailureClass::Host, 0.5),
    ("IO expansion board", FailureClass::Host, 0.5),
    ("dependency", FailureClass::Software, 0.5),
    ("CPU", FailureClass::Host, 0.5),
    ("system memory", FailureClass::Host, 0.5),
];

/// The GPU share the issue and the paper quote; the other causes are scaled
/// to the remaining 41.3% in their published proportions (the table's
/// percentages do not quite sum to 100).
const LLAMA3_GPU_SHARE: f64 = 0.587;

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub at_ms: Millis,
    pub class: FailureClass,
    pub cause: String,
}

/// Modelled costs and the cluster; every duration in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SimParams {
    pub job_nodes: u32,
    pub gpus_per_node: u32,
    /// Extra healthy nodes beyond the job's.
    pub spares: u32,
    /// The job's min_nodes (elastic shrink floor); = job_nodes: no shrink.
    pub min_nodes: u32,
    pub duration_ms: Millis,
    /// Failure → the agent's report reaches supd.
    pub gpu_detect_ms: Millis,
    pub software_detect_ms: Millis,
    pub hang_detect_ms: Millis,
    /// supd's nodes.unreachable_after, jobs.stall_confirm, jobs.lost_node_grace.
    pub unreachable_after_ms: Millis,
    pub stall_confirm_ms: Millis,
    pub lost_node_grace_ms: Millis,
    /// Assignment → every rank launched (agents, process start).
    pub launch_ms: Millis,
    /// Ranks launched → training again (NCCL init, checkpoint load, warm-up).
    pub reinit_ms: Millis,
    /// Time to write one checkpoint. Synchronous checkpointing (the
    /// default) blocks training for all of it: δ.
    pub checkpoint_write_ms: Millis,
    /// Asynchronous checkpointing (PyTorch DCP `async_save`, NVRx, Megatron
    /// async): training blocks only for this device-to-host snapshot, the
    /// write runs in the background, one at a time, and a checkpoint can be
    /// restored only once written. None: synchronous.
    pub checkpoint_snapshot_ms: Option<Millis>,
    /// Compute between checkpoints (τ); None: Young/Daly from the trace.
    pub checkpoint_interval_ms: Option<Millis>,
    /// The trainer's step time. sup's hang detector (the engine's rule with
    /// its default settings: no step for clamp(hang_factor × step time,
    /// floor, ceiling)) stops a hung job after that long, when sooner than
    /// NCCL's watchdog (`hang_detect_ms`). None: the watchdog only.
    pub step_time_ms: Option<Millis>,
    /// A cordoned or dead node returns after this long.
    pub repair_ms: Millis,
    pub seed: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            job_nodes: 2048,
            gpus_per_node: 8,
            spares: 0,
            min_nodes: 2048,
            duration_ms: 54 * 24 * 3_600_000,
            gpu_detect_ms: 2_000,
            software_detect_ms: 5_000,
            hang_detect_ms: 600_000,
            unreachable_after_ms: 30_000,
            stall_confirm_ms: 5_000,
            lost_node_grace_ms: 60_000,
            launch_ms: 2_000,
            reinit_ms: 60_000,
            checkpoint_write_ms: 1_000,
            checkpoint_snapshot_ms: None,
            checkpoint_interval_ms: None,
            step_time_ms: None,
            repair_ms: 24 * 3_600_000,
            seed: 1,
        }
    }
}

/// Young/Daly first-order optimum: τ = √(2·δ·MTBF).
pub fn young_daly_ms(checkpoint_write_ms: Millis, mtbf_ms: f64) -> Millis {
    (2.0 * checkpoint_write_ms as f64 * mtbf_ms).sqrt().round() as Millis
}

impl SimParams {
    /// Training time blocked per checkpoint at interval τ: the whole write
    /// (synchronous), or the snapshot plus any wait for the previous write
    /// still in flight (asynchronous, one write at a time).
    pub fn checkpoint_blocking_ms(&self, interval_ms: Millis) -> Millis {
        match self.checkpoint_snapshot_ms {
            None => self.checkpoint_write_ms,
            Some(snapshot) => snapshot + (self.checkpoint_write_ms - interval_ms).max(0),
        }
    }

    /// From the end of a checkpoint's blocking time until it can be
    /// restored: 0 when synchronous, the background write when not.
    pub fn checkpoint_lag_ms(&self) -> Millis {
        match self.checkpoint_snapshot_ms {
            None => 0,
            Some(_) => self.checkpoint_write_ms,
        }
    }

    /// The recommended interval: Young/Daly for the blocking time δ. With
    /// asynchronous checkpoints the expected loss per failure is
    /// (τ + δ)/2 + the write (the newest checkpoint may not be written yet),
    /// whose optimum is the same √(2·δ·MTBF), but never shorter than a write:
    /// below that a snapshot only waits for the previous write.
    pub fn recommended_interval_ms(&self, mtbf_ms: f64) -> Millis {
        let blocking = self
            .checkpoint_snapshot_ms
            .unwrap_or(self.checkpoint_write_ms);
        let yd = young_daly_ms(blocking, mtbf_ms);
        match self.checkpoint_snapshot_ms {
            None => yd,
            Some(_) => yd.max(self.checkpoint_write_ms),
        }
    }

    /// A hang → the job's ranks are stopped: by sup's hang detector (the
    /// engine's bound for this step time, with supd's default `[detect]`
    /// settings) or by NCCL's watchdog, whichever comes first.
    pub fn hang_detection_ms(&self) -> Millis {
        let cfg = sup_core::detect::DetectConfig::default();
        match self.step_time_ms {
            Some(step) if step > 0 && cfg.hang_enabled => {
                let bound = (cfg.hang_factor * step as f64).round() as Millis;
                bound
                    .clamp(
                        cfg.hang_floor_ms,
                        cfg.hang_ceiling_ms.max(cfg.hang_floor_ms),
                    )
                    .min(self.hang_detect_ms)
            }
            _ => self.hang_detect_ms,
        }
    }
}

/// Where the hours of a run went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Losses {
    pub detection_ms: f64,
    pub restart_ms: f64,
    pub recompute_ms: f64,
    pub waiting_ms: f64,
    pub checkpoint_ms: f64,
    /// Capacity missing while the job ran shrunk.
    pub shrunk_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub duration_ms: Millis,
    pub interval_ms: Millis,
    pub productive_ms: f64,
    pub losses: Losses,
    pub failures: usize,
    pub failures_by_class: Vec<(FailureClass, usize)>,
    pub restarts: u32,
    pub spare_swaps: u32,
    pub shrinks: u32,
    /// Times the job had to wait for capacity (pending).
    pub stalls: u32,
    pub min_spares: u32,
    /// Time with no spare left.
    pub zero_spare_ms: Millis,
    /// The job ended failed (the engine gave up), with why.
    pub gave_up: Option<String>,
}

impl SimReport {
    pub fn ettr(&self) -> f64 {
        self.productive_ms / self.duration_ms as f64
    }
}

/// splitmix64: small, seedable, and the same on every platform and rand
/// version, so a seed names one trace forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// A Poisson trace: `count` expected interruptions over `duration_ms`,
/// causes drawn from `causes` (name, class, weight).
pub fn generate_trace(
    duration_ms: Millis,
    expected: f64,
    causes: &[(String, FailureClass, f64)],
    seed: u64,
) -> Vec<Failure> {
    let mut rng = Rng::new(seed);
    let total: f64 = causes.iter().map(|c| c.2).sum();
    let mean_gap = duration_ms as f64 / expected.max(1e-9);
    let mut t = 0.0;
    let mut out = Vec::new();
    if causes.is_empty() || total <= 0.0 {
        return out;
    }
    loop {
        t += -mean_gap * (1.0 - rng.unit()).ln();
        if t >= duration_ms as f64 {
            return out;
        }
        let mut pick = rng.unit() * total;
        let mut chosen = &causes[causes.len() - 1];
        for c in causes {
            if pick < c.2 {
                chosen = c;
                break;
            }
            pick -= c.2;
        }
        out.push(Failure {
            at_ms: t as Millis,
            class: chosen.1,
            cause: chosen.0.clone(),
        });
    }
}

/// Llama 3's causes, GPU share scaled to 58.7% and the rest to 41.3%.
pub fn llama3_causes() -> Vec<(String, FailureClass, f64)> {
    let gpu: f64 = LLAMA3_CAUSES
        .iter()
        .filter(|c| c.1 == FailureClass::Gpu)
        .map(|c| c.2)
        .sum();
    let other: f64 = LLAMA3_CAUSES
        .iter()
        .filter(|c| c.1 != FailureClass::Gpu)
        .map(|c| c.2)
        .sum();
    LLAMA3_CAUSES
        .iter()
        .map(|&(name, class, w)| {
            let share = if class == FailureClass::Gpu {
                w / gpu * LLAMA3_GPU_SHARE
            } else {
                w / other * (1.0 - LLAMA3_GPU_SHARE)
            };
            (name.to_owned(), class, share)
        })
        .collect()
}

/// A trace file: one failure per line, `SECONDS CLASS [CAUSE...]`, where
/// CLASS is gpu | host | software | hang; `#` starts a comment.
pub fn parse_trace(text: &str) -> Result<Vec<Failure>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let at = parts
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| format!("line {}: expected seconds first", n + 1))?;
        let class_text = parts.next().unwrap_or("");
        let class = FailureClass::parse(class_text).ok_or_else(|| {
            format!(
                "line {}: class '{class_text}' is not one of gpu, host, software, hang",
                n + 1
            )
        })?;
        let cause = parts.collect::<Vec<_>>().join(" ");
        out.push(Failure {
            at_ms: (at * 1000.0) as Millis,
            class,
            cause: if cause.is_empty() {
                class.as_str().to_owned()
            } else {
                cause
            },
        });
    }
    out.sort_by_key(|f| f.at_ms);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Failure(usize),
    /// The failure's report reaches supd (class, node, job generation then).
    Detect(FailureClass, usize, u64),
    Launch(u64),
    Resume(u64),
    Repair(FailureClass, usize),
    CheckpointTick(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Training since, at this share of the desired capacity.
    Training(Millis, f64),
    Detecting(Millis),
    Restarting(Millis),
    Waiting(Millis),
}

const JOB: &str = "sim";

struct Sim<'a> {
    p: &'a SimParams,
    engine: Engine,
    interval: Millis,
    sessions: Vec<u64>,
    next_session: u64,
    alive: Vec<bool>,
    queue: BinaryHeap<Reverse<(Millis, u64, SimEvent)>>,
    qseq: u64,
    last_sweep: Millis,
    last_event_seq: u64,
    mode: Mode,
    losses: Losses,
    productive: f64,
    step: u64,
    report: SimReport,
    launches_scheduled: BTreeSet<u64>,
    zero_spares_since: Option<Millis>,
    /// The job's nodes before the latest restart (tells swaps apart).
    prev_nodes: BTreeSet<String>,
}

fn node_name(i: usize) -> String {
    format!("n{i:05}")
}

fn node_index(id: &str) -> Option<usize> {
    id.strip_prefix('n').and_then(|s| s.parse().ok())
}

impl Sim<'_> {
    fn push(&mut self, at: Millis, e: SimEvent) {
        self.qseq += 1;
        self.queue.push(Reverse((at, self.qseq, e)));
    }

    fn registration(&mut self, i: usize) -> Registration {
        self.next_session += 1;
        self.sessions[i] = self.next_session;
        Registration {
            session: self.next_session,
            node_id: node_name(i),
            address: format!("10.0.{}.{}", i / 256, i % 256),
            hostname: node_name(i),
            agent_version: "sim".to_owned(),
            instance_id: format!("sim-{i}-{}", self.next_session),
            gpu_backend: "sim".to_owned(),
            gpus: (0..self.p.gpus_per_node)
                .map(|g| GpuInventory {
                    index: g,
                    uuid: format!("GPU-{i}-{g}"),
                    name: "sim".to_owned(),
                    pci_bus_id: String::new(),
                    memory_total_bytes: None,
                })
                .collect(),
        }
    }

    /// Live agents report; a sweep is only needed once silence could count.
    fn sweep(&mut self, now: Millis) {
        if now - self.last_sweep < self.p.unreachable_after_ms / 2 && now != 0 {
            return;
        }
        self.last_sweep = now;
        for i in 0..self.alive.len() {
            if self.alive[i] {
                self.engine
                    .on_telemetry(now, &node_name(i), self.sessions[i], Vec::new());
            }
        }
    }

    fn job(&self) -> Option<&sup_core::Job> {
        self.engine.job(JOB).ok()
    }

    /// Drains the engine's actions and follows its decisions.
    fn after_engine(&mut self, now: Millis) {
        while let Some(action) = self.engine.poll_action() {
            if let Action::SendAssignment { assignment, .. } = action {
                if assignment.job.is_some() && self.launches_scheduled.insert(assignment.generation)
                {
                    self.push(
                        now + self.p.launch_ms,
                        SimEvent::Launch(assignment.generation),
                    );
                }
            }
        }
        let new: Vec<(EventKind, u64)> = self
            .engine
            .events()
            .rev()
            .take_while(|e| e.seq > self.last_event_seq)
            .map(|e| (e.kind, e.seq))
            .collect();
        for (kind, seq) in new.into_iter().rev() {
            self.last_event_seq = seq;
            match kind {
                EventKind::JobStarted | EventKind::JobRestarted => {
                    self.settle(now, false);
                    self.mode = Mode::Restarting(now);
                    let nodes: BTreeSet<String> = self
                        .job()
                        .map(|j| j.record.nodes.iter().cloned().collect())
                        .unwrap_or_default();
                    if kind == EventKind::JobRestarted {
                        self.report.restarts += 1;
                        if (nodes.len() as u32) < self.p.job_nodes {
                            self.report.shrinks += 1;
                        } else if !self.prev_nodes.is_empty() && nodes != self.prev_nodes {
                            self.report.spare_swaps += 1;
                        }
                    }
                    self.prev_nodes = nodes;
                    self.note_spares(now);
                }
                // The engine restates a pending job's reason as capacity
                // changes: one stall per entry into waiting.
                EventKind::JobPending if !matches!(self.mode, Mode::Waiting(_)) => {
                    self.settle(now, false);
                    self.mode = Mode::Waiting(now);
                    self.report.stalls += 1;
                }
                EventKind::JobRunning => {
                    if let Some(g) = self.job().map(|j| j.record.generation) {
                        self.push(now + self.p.reinit_ms, SimEvent::Resume(g));
                    }
                }
                EventKind::JobFailed => {
                    let why = self
                        .job()
                        .map(|j| j.record.reason.clone())
                        .unwrap_or_default();
                    self.report.gave_up.get_or_insert(why);
                }
                _ => {}
            }
        }
    }

    fn note_spares(&mut self, now: Millis) {
        let spares = self.engine.spares().count() as u32;
        self.report.min_spares = self.report.min_spares.min(spares);
        match (spares == 0, self.zero_spares_since) {
            (true, None) => self.zero_spares_since = Some(now),
            (false, Some(since)) => {
                self.report.zero_spare_ms += now - since;
                self.zero_spares_since = None;
            }
            _ => {}
        }
    }

    /// Closes the current mode's time at `now`. A training segment ends:
    /// work since its last completed checkpoint is lost unless `keep_tail`.
    fn settle(&mut self, now: Millis, keep_tail: bool) {
        match self.mode {
            Mode::Training(since, share) => {
                let elapsed = (now - since) as f64;
                let blocking = self.p.checkpoint_blocking_ms(self.interval) as f64;
                let cycle = self.interval as f64 + blocking;
                // Checkpoint j's blocking time ends at j·cycle; it can be
                // restored from a lag later (its background write, if any).
                let k = (elapsed / cycle).floor();
                let tail = elapsed - k * cycle;
                let lag = self.p.checkpoint_lag_ms() as f64;
                let restorable = if keep_tail {
                    k
                } else {
                    ((elapsed - lag) / cycle).floor().max(0.0)
                };
                let useful = restorable * self.interval as f64 + if keep_tail { tail } else { 0.0 };
                self.productive += share * useful;
                self.losses.shrunk_ms += (1.0 - share) * useful;
                self.losses.checkpoint_ms += k * blocking;
                if !keep_tail {
                    // Everything since the newest restorable checkpoint
                    // except the blocking time already counted: the tail,
                    // plus (asynchronous) the cycles whose write was still
                    // under way.
                    self.losses.recompute_ms += elapsed - useful - k * blocking;
                }
                if k >= 1.0 {
                    // Tell the engine the newest checkpoint (resume point).
                    self.step += k as u64;
                    self.report_checkpoint(now, restorable >= 1.0);
                } else if elapsed > 0.0 {
                    // Training advanced steps, even without a checkpoint: the
                    // crash-loop guard must see progress, as it would from
                    // a real trainer's per-step reports.
                    self.step += 1;
                    self.report_checkpoint(now, false);
                }
                self.mode = Mode::Training(now, share);
            }
            Mode::Detecting(since) => {
                self.losses.detection_ms += (now - since) as f64;
                self.mode = Mode::Detecting(now);
            }
            Mode::Restarting(since) => {
                self.losses.restart_ms += (now - since) as f64;
                self.mode = Mode::Restarting(now);
            }
            Mode::Waiting(since) => {
                self.losses.waiting_ms += (now - since) as f64;
                self.mode = Mode::Waiting(now);
            }
        }
    }

    fn report_checkpoint(&mut self, now: Millis, checkpoint: bool) {
        let Some((node, generation)) = self
            .job()
            .and_then(|j| Some((j.record.nodes.first()?.clone(), j.record.generation)))
        else {
            return;
        };
        let Some(i) = node_index(&node) else {
            return;
        };
        if !self.alive[i] {
            return;
        }
        let session = self.sessions[i];
        self.engine.on_progress(
            now,
            &node,
            session,
            sup_core::JobProgress {
                job: JOB.to_owned(),
                generation,
                step: self.step,
                ..Default::default()
            },
        );
        if !checkpoint {
            return;
        }
        self.engine.on_checkpoint_catalog(
            now,
            &node,
            session,
            sup_core::CheckpointCatalog {
                job: JOB.to_owned(),
                checkpoints: vec![sup_core::Checkpoint {
                    step: self.step,
                    path: format!("/ckpt/step-{}", self.step),
                }],
            },
        );
    }

    fn failure(&mut self, now: Millis, f: &Failure) {
        self.report.failures += 1;
        // A failure strikes a node of the job while it has nodes; else any
        // healthy node (it costs capacity, not work).
        let job_nodes: Vec<usize> = self
            .job()
            .filter(|j| j.record.state.is_active())
            .map(|j| {
                j.record
                    .nodes
                    .iter()
                    .filter_map(|n| node_index(n))
                    .collect()
            })
            .unwrap_or_default();
        let candidates: Vec<usize> = if job_nodes.is_empty() {
            (0..self.alive.len())
                .filter(|&i| {
                    self.alive[i]
                        && self
                            .engine
                            .node(&node_name(i))
                            .is_ok_and(|n| n.record.cordon.is_none())
                })
                .collect()
        } else {
            job_nodes.clone()
        };
        if candidates.is_empty() {
            return;
        }
        let mut rng = Rng::new(self.p.seed ^ (now as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let node = candidates[rng.below(candidates.len())];
        let generation = self.job().map_or(0, |j| j.record.generation);
        let hits_work = !job_nodes.is_empty();
        if hits_work {
            match self.mode {
                Mode::Training(..) | Mode::Restarting(_) => {
                    self.settle(now, false);
                    self.mode = Mode::Detecting(now);
                }
                Mode::Detecting(_) | Mode::Waiting(_) => {}
            }
        }
        match f.class {
            FailureClass::Gpu => {
                self.push(
                    now + self.p.gpu_detect_ms,
                    SimEvent::Detect(f.class, node, generation),
                );
                self.push(now + self.p.repair_ms, SimEvent::Repair(f.class, node));
            }
            FailureClass::Host => {
                // Silence is the report: the engine's liveness rules decide.
                self.alive[node] = false;
                self.push(now + self.p.repair_ms, SimEvent::Repair(f.class, node));
            }
            FailureClass::Software => self.push(
                now + self.p.software_detect_ms,
                SimEvent::Detect(f.class, node, generation),
            ),
            FailureClass::Hang => self.push(
                now + self.p.hang_detection_ms(),
                SimEvent::Detect(f.class, node, generation),
            ),
        }
    }

    fn detect(&mut self, now: Millis, class: FailureClass, node: usize, generation: u64) {
        if !self.alive[node] {
            return;
        }
        let id = node_name(node);
        let session = self.sessions[node];
        match class {
            FailureClass::Gpu => {
                self.engine
                    .on_health_report(now, &id, session, self.verdicts(node, true));
            }
            FailureClass::Software | FailureClass::Hang => {
                // A crash of a generation that was already replaced is moot.
                let current = self.job().is_some_and(|j| {
                    j.record.generation == generation
                        && j.record.state.is_active()
                        && j.has_node(&id)
                });
                if current {
                    self.engine.on_rank_exited(
                        now,
                        &id,
                        session,
                        sup_core::RankExited {
                            job: JOB.to_owned(),
                            generation,
                            rank: 0,
                            local_rank: 0,
                            exit_code: Some(1),
                            ..Default::default()
                        },
                    );
                }
            }
            FailureClass::Host => {}
        }
    }

    fn verdicts(&self, node: usize, failed: bool) -> sup_core::HealthReport {
        sup_core::HealthReport {
            verdicts: (0..self.p.gpus_per_node)
                .map(|g| sup_core::GpuVerdict {
                    index: g,
                    uuid: format!("GPU-{node}-{g}"),
                    health: if failed && g == 0 {
                        GpuHealth::Failed
                    } else {
                        GpuHealth::Ok
                    },
                    reason: if failed && g == 0 {
                        "simulated GPU failure".to_owned()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                })
                .collect(),
            xids: Vec::new(),
            visible_gpus: Some(self.p.gpus_per_node),
        }
    }

    fn repair(&mut self, now: Millis, class: FailureClass, node: usize) {
        let id = node_name(node);
        match class {
            FailureClass::Gpu => {
                let session = self.sessions[node];
                if self.alive[node] {
                    self.engine
                        .on_health_report(now, &id, session, self.verdicts(node, false));
                }
                let _ = self.engine.uncordon(now, &id, "sim", "board replaced");
            }
            FailureClass::Host => {
                self.alive[node] = true;
                let reg = self.registration(node);
                let _ = self.engine.on_register(now, reg);
                let session = self.sessions[node];
                self.engine.on_telemetry(now, &id, session, Vec::new());
            }
            FailureClass::Software | FailureClass::Hang => {}
        }
        self.note_spares(now);
    }

    fn launch(&mut self, now: Millis, generation: u64) {
        let Some(job) = self.job() else {
            return;
        };
        if job.record.generation != generation
            || !matches!(job.record.state, JobState::Starting | JobState::Recovering)
        {
            return;
        }
        let nodes: Vec<String> = job.record.nodes.clone();
        let ranks = self.p.gpus_per_node;
        for id in nodes {
            let Some(i) = node_index(&id) else {
                continue;
            };
            if !self.alive[i] {
                continue;
            }
            self.engine.on_rank_status(
                now,
                &id,
                self.sessions[i],
                sup_core::RankStatus {
                    job: JOB.to_owned(),
                    generation,
                    running_local_ranks: (0..ranks).collect(),
                    launched: true,
                    launch_error: String::new(),
                },
            );
        }
    }

    fn resume(&mut self, now: Millis, generation: u64) {
        let Some(job) = self.job() else {
            return;
        };
        if job.record.generation != generation || job.record.state != JobState::Running {
            return;
        }
        let share = job.record.nodes.len() as f64 / self.p.job_nodes as f64;
        if let Mode::Restarting(_) = self.mode {
            self.settle(now, false);
            self.mode = Mode::Training(now, share);
            if share < 1.0 {
                // Shrunk: report checkpoints as they land so the engine can
                // grow the job back right after one.
                let next = now + self.interval + self.p.checkpoint_blocking_ms(self.interval);
                self.push(next, SimEvent::CheckpointTick(generation));
            }
        }
    }

    fn checkpoint_tick(&mut self, now: Millis, generation: u64) {
        let current = self.job().is_some_and(|j| {
            j.record.generation == generation && j.record.state == JobState::Running
        });
        if !current || !matches!(self.mode, Mode::Training(..)) {
            return;
        }
        // Closes the segment at the checkpoint (nothing to recompute) and
        // reports it; the engine may grow the job now.
        self.settle(now, true);
        self.report_checkpoint(now, true);
        let next = now + self.interval + self.p.checkpoint_blocking_ms(self.interval);
        self.push(next, SimEvent::CheckpointTick(generation));
    }

    /// Whether the engine has something time-driven to decide: a dead node
    /// it has not handled, or a job not running. Otherwise its timeouts are
    /// liveness checks of nodes the sweeps keep fresh, and skipping them is
    /// what makes weeks simulate in seconds.
    fn engine_busy(&self) -> bool {
        // Launching: a node may die mid-launch. Pending: nothing is timed,
        // capacity returns through repairs (engine inputs of their own).
        let launching = self
            .job()
            .is_some_and(|j| matches!(j.record.state, JobState::Starting | JobState::Recovering));
        if launching {
            return true;
        }
        if self.alive.iter().all(|a| *a) {
            return false;
        }
        let Some(job) = self.job() else {
            return false;
        };
        self.alive.iter().enumerate().any(|(i, alive)| {
            !alive && {
                let id = node_name(i);
                job.has_node(&id) || self.engine.node(&id).is_ok_and(|n| !n.unreachable)
            }
        })
    }
}

/// Runs one policy over one trace.
pub fn simulate(p: &SimParams, trace: &[Failure]) -> SimReport {
    let mtbf = if trace.is_empty() {
        p.duration_ms as f64
    } else {
        p.duration_ms as f64 / trace.len() as f64
    };
    let interval = p
        .checkpoint_interval_ms
        .unwrap_or_else(|| p.recommended_interval_ms(mtbf))
        .max(1);
    let config = EngineConfig {
        unreachable_after_ms: p.unreachable_after_ms,
        stall_confirm_ms: p.stall_confirm_ms,
        lost_node_grace_ms: p.lost_node_grace_ms,
        // The simulator reads the newest events after each step; a small
        // log keeps restarts cheap.
        event_log_capacity: 1_000,
        // Progress arrives only at checkpoints here, and hangs are modelled by
        // `hang_detect_ms`: the engine's own hang detector would misfire.
        detect: sup_core::detect::DetectConfig {
            hang_enabled: false,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let total = (p.job_nodes + p.spares) as usize;
    let mut sim = Sim {
        p,
        engine: Engine::new(config),
        interval,
        sessions: vec![0; total],
        next_session: 0,
        alive: vec![true; total],
        queue: BinaryHeap::new(),
        qseq: 0,
        last_sweep: 0,
        last_event_seq: 0,
        mode: Mode::Waiting(0),
        losses: Losses::default(),
        productive: 0.0,
        step: 0,
        report: SimReport {
            duration_ms: p.duration_ms,
            interval_ms: interval,
            productive_ms: 0.0,
            losses: Losses::default(),
            failures: 0,
            failures_by_class: Vec::new(),
            restarts: 0,
            spare_swaps: 0,
            shrinks: 0,
            stalls: 0,
            min_spares: u32::MAX,
            zero_spare_ms: 0,
            gave_up: None,
        },
        launches_scheduled: BTreeSet::new(),
        zero_spares_since: None,
        prev_nodes: BTreeSet::new(),
    };
    for i in 0..total {
        let reg = sim.registration(i);
        let _ = sim.engine.on_register(0, reg);
    }
    sim.sweep(0);
    let spec = format!(
        "name = \"{JOB}\"\ncommand = [\"train\"]\nnodes = {}\nmin_nodes = {}\ngpus_per_node = {}\ncheckpoint_dir = \"/ckpt\"\ncheckpoint_layout = \"dcp\"\nmax_restarts = 1000000\n",
        p.job_nodes,
        p.min_nodes.clamp(1, p.job_nodes),
        p.gpus_per_node
    );
    let submitted = crate::jobspec::parse(&spec)
        .map_err(sup_core::EngineError::InvalidJobSpec)
        .and_then(|parsed| sim.engine.submit_job(0, parsed, &spec, "sim"));
    if let Err(e) = submitted {
        sim.report.gave_up = Some(format!("job spec rejected: {e}"));
        return sim.report;
    }
    // The first start is not a loss of the run: count from training onward.
    sim.after_engine(0);
    sim.losses = Losses::default();
    for (i, f) in trace.iter().enumerate() {
        if f.at_ms < p.duration_ms {
            sim.push(f.at_ms, SimEvent::Failure(i));
        }
    }
    let mut now = 0;
    // A timeout the engine keeps in the past after handling it is ignored
    // until the next simulated event (never loop on one instant).
    let mut stale_timeout = false;
    loop {
        let next_sim = sim.queue.peek().map(|Reverse((t, _, _))| *t);
        let next_engine = sim
            .engine
            .poll_timeout()
            .filter(|_| !stale_timeout && sim.engine_busy());
        let next = match (next_sim, next_engine) {
            (Some(a), Some(b)) => a.min(b.max(now)),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if next >= p.duration_ms {
            break;
        }
        now = next;
        sim.sweep(now);
        if next_sim == Some(now) {
            stale_timeout = false;
            let Some(Reverse((_, _, event))) = sim.queue.pop() else {
                break;
            };
            match event {
                SimEvent::Failure(i) => {
                    let f = trace[i].clone();
                    sim.failure(now, &f);
                }
                SimEvent::Detect(c, n, g) => sim.detect(now, c, n, g),
                SimEvent::Launch(g) => sim.launch(now, g),
                SimEvent::Resume(g) => sim.resume(now, g),
                SimEvent::Repair(c, n) => sim.repair(now, c, n),
                SimEvent::CheckpointTick(g) => sim.checkpoint_tick(now, g),
            }
        }
        if sim.engine.poll_timeout().is_some_and(|t| t <= now) {
            sim.engine.handle_timeout(now);
            if sim.engine.poll_timeout().is_some_and(|t| t <= now) {
                stale_timeout = true;
            }
        }
        sim.after_engine(now);
        if sim.report.gave_up.is_some() {
            break;
        }
    }
    let end = p.duration_ms;
    sim.settle(end, true);
    if let Some(since) = sim.zero_spares_since {
        sim.report.zero_spare_ms += end - since;
    }
    let mut by_class: Vec<(FailureClass, usize)> = Vec::new();
    for f in trace.iter().filter(|f| f.at_ms < p.duration_ms) {
        match by_class.iter_mut().find(|(c, _)| *c == f.class) {
            Some(e) => e.1 += 1,
            None => by_class.push((f.class, 1)),
        }
    }
    by_class.sort();
    let mut report = sim.report;
    report.failures_by_class = by_class;
    report.productive_ms = sim.productive;
    report.losses = sim.losses;
    if report.min_spares == u32::MAX {
        report.min_spares = p.spares;
    }
    report
}

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
        "{:<8} {:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6}",
        "spares",
        "interval",
        "ETTR",
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
                "{:<8} {:<14} {:>6.2}% {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>6}{}",
                spares,
                label,
                r.ettr() * 100.0,
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
    let _ = writeln!(out);
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

#[cfg(test)]
mod tests;
