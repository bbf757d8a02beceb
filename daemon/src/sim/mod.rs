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
//!
//! Progress is reported as a trainer would for the engine's live goodput
//! accounting (`jobs/goodput.rs`), which the report sets beside this
//! simulator's ground truth: when training resumes, when each checkpoint
//! save starts (`checkpoint_save`) and ends (`train`), when the job is back
//! at the step it had reached before a failure, and at each failure. A
//! step here is one millisecond of compute, so a step number is a position
//! in the training run and re-done work is measured exactly.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use sup_core::{
    Action, Engine, EngineConfig, EventKind, GpuHealth, GpuInventory, JobState, Millis,
    Registration,
};

pub mod cli;
mod params;
mod trace;

pub use params::*;
pub use trace::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Failure(usize),
    /// The failure's report reaches supd (class, node, job generation then).
    Detect(FailureClass, usize, u64),
    Launch(u64),
    Resume(u64),
    Repair(FailureClass, usize),
    CheckpointTick(u64),
    /// A checkpoint save starts (true) or ends in training segment n.
    Save(u64, bool),
    /// Training segment n is back at the step reached before the failure.
    CaughtUp(u64),
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
    /// The step (compute milliseconds into the run) the current training
    /// segment started from, the highest step reached, the segment's
    /// number, and whether a save is under way.
    seg_base: u64,
    reached: u64,
    seg: u64,
    saving: bool,
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
            validates: false,
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
                // The step reached (compute done) and the newest restorable
                // checkpoint's, as positions in the run.
                let done = k * self.interval as f64 + tail.min(self.interval as f64);
                let mut position = self.seg_base + done as u64;
                if !keep_tail && position <= self.reached && elapsed > 0.0 {
                    // A failure while re-doing work: the model has no crash
                    // loops, so, as it always did, every segment that
                    // trained shows the crash-loop guard a step past the
                    // best (one millisecond: nothing to the accounting).
                    position = self.reached + 1;
                }
                let restorable_step = self.seg_base + (restorable * self.interval as f64) as u64;
                self.reached = self.reached.max(position);
                if elapsed > 0.0 {
                    // The crash-loop guard and the re-done accounting must
                    // see the step reached, as from a real trainer's
                    // per-step reports; the catalog the resume point.
                    self.report_progress(now, position);
                    if restorable >= 1.0 {
                        self.report_catalog(now, restorable_step);
                    }
                }
                self.seg_base = position;
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

    /// The job's first node, its session and the generation, when alive.
    fn reporter(&self) -> Option<(String, u64, u64)> {
        let (node, generation) = self
            .job()
            .and_then(|j| Some((j.record.nodes.first()?.clone(), j.record.generation)))?;
        let i = node_index(&node)?;
        self.alive[i].then(|| (node, self.sessions[i], generation))
    }

    /// A progress report at `step`, in the save phase while one is under way.
    fn report_progress(&mut self, now: Millis, step: u64) {
        let Some((node, session, generation)) = self.reporter() else {
            return;
        };
        let phase = if self.saving {
            "checkpoint_save"
        } else {
            "train"
        };
        self.engine.on_progress(
            now,
            &node,
            session,
            sup_core::JobProgress {
                job: JOB.to_owned(),
                generation,
                step,
                phase: phase.to_owned(),
                ..Default::default()
            },
        );
    }

    fn report_catalog(&mut self, now: Millis, step: u64) {
        let Some((node, session, _)) = self.reporter() else {
            return;
        };
        self.engine.on_checkpoint_catalog(
            now,
            &node,
            session,
            sup_core::CheckpointCatalog {
                job: JOB.to_owned(),
                checkpoints: vec![sup_core::Checkpoint {
                    step,
                    path: format!("/ckpt/step-{step}"),
                    ..Default::default()
                }],
                ..Default::default()
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
        let from = job
            .record
            .resume_from
            .clone()
            .unwrap_or_else(|| job.record.checkpoint.clone())
            .map_or(0, |c| c.step);
        if let Mode::Restarting(_) = self.mode {
            self.settle(now, false);
            self.mode = Mode::Training(now, share);
            // Training again from the checkpoint: the engine hears it (the
            // end of its restart), then each save, then the step reached
            // before the failure once it is done again.
            self.seg += 1;
            self.seg_base = from;
            self.saving = false;
            self.report_progress(now, from);
            let cycle = self.interval + self.p.checkpoint_blocking_ms(self.interval);
            self.push(now + self.interval, SimEvent::Save(self.seg, true));
            if self.reached > from {
                let redo = (self.reached - from) as Millis;
                // Compute time plus the saves that fall within it.
                let saves = (redo - 1).max(0) / self.interval;
                let at = now + redo + saves * (cycle - self.interval);
                self.push(at, SimEvent::CaughtUp(self.seg));
            }
            if share < 1.0 {
                // Shrunk: report checkpoints as they land so the engine can
                // grow the job back right after one.
                let next = now + self.interval + self.p.checkpoint_blocking_ms(self.interval);
                self.push(next, SimEvent::CheckpointTick(generation));
            }
        }
    }

    /// A save starts or ends in segment `seg`, if it is still training.
    fn save(&mut self, now: Millis, seg: u64, start: bool) {
        let Mode::Training(since, _) = self.mode else {
            return;
        };
        if seg != self.seg {
            return;
        }
        let position = self.position(now, since);
        self.saving = start;
        self.report_progress(now, position);
        let next = if start {
            now + self.p.checkpoint_blocking_ms(self.interval)
        } else {
            now + self.interval
        };
        self.push(next, SimEvent::Save(seg, !start));
    }

    /// The step reached at `now` in a training segment that (re)started at
    /// `since` from `seg_base`.
    fn position(&self, now: Millis, since: Millis) -> u64 {
        let elapsed = now - since;
        let cycle = self.interval + self.p.checkpoint_blocking_ms(self.interval);
        let k = elapsed / cycle;
        let done = k * self.interval + (elapsed - k * cycle).min(self.interval);
        self.seg_base + done.max(0) as u64
    }

    fn caught_up(&mut self, now: Millis, seg: u64) {
        let Mode::Training(since, _) = self.mode else {
            return;
        };
        if seg == self.seg {
            let position = self.position(now, since);
            self.report_progress(now, position);
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
        // (settle reports the step and the checkpoint.)
        self.settle(now, true);
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
        seg_base: 0,
        reached: 0,
        seg: 0,
        saving: false,
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
            live: None,
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
        // Progress reports (saves, catching up) decide nothing timed: no
        // sweep or timeout around them, so ~60,000 of them stay cheap.
        if let Some(Reverse((at, _, SimEvent::Save(..) | SimEvent::CaughtUp(_)))) = sim.queue.peek()
        {
            let at = *at;
            let engine_first = sim
                .engine
                .poll_timeout()
                .filter(|_| !stale_timeout && sim.engine_busy())
                .is_some_and(|t| t.max(now) < at);
            if at < p.duration_ms && !engine_first {
                now = at;
                if let Some(Reverse((_, _, event))) = sim.queue.pop() {
                    match event {
                        SimEvent::Save(seg, start) => sim.save(now, seg, start),
                        SimEvent::CaughtUp(seg) => sim.caught_up(now, seg),
                        _ => {}
                    }
                }
                continue;
            }
        }
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
                SimEvent::Save(seg, start) => sim.save(now, seg, start),
                SimEvent::CaughtUp(seg) => sim.caught_up(now, seg),
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
    report_live(&mut sim, end);
    let mut report = sim.report;
    report.failures_by_class = by_class;
    report.productive_ms = sim.productive;
    report.losses = sim.losses;
    if report.min_spares == u32::MAX {
        report.min_spares = p.spares;
    }
    report
}

/// The engine's live accounting of the job at the end of the run.
fn report_live(sim: &mut Sim<'_>, end: Millis) {
    let p = sim.p;
    sim.report.live = sim
        .job()
        .map(|j| j.record.goodput.report(end, p.job_nodes, p.gpus_per_node));
}

#[cfg(test)]
mod tests;
