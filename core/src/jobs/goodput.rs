//! Live goodput accounting: every millisecond of a job's wall time, from
//! submission to its end, booked to exactly one bucket.
//!
//! A small state machine: the job is always in one [`Bucket`], since a
//! time. The engine moves it at its inputs (with their `now`); each move
//! closes the open interval into the bucket it was in. A read
//! ([`Goodput::as_of`]) closes it on a copy, so the buckets always sum to
//! the wall time.
//!
//! The buckets and what moves the job between them:
//! - `waiting`: pending, no nodes (submission, or a restart that found no
//!   capacity);
//! - `restart`: from a decision to (re)start — a placement — to the first
//!   progress report of the new generation in a training or saving phase.
//!   The first start counts here too (it is the same work: launch, init,
//!   load). A job that has never shown it reports progress (no progress
//!   seen, no `progress_regex`) leaves it when every rank is launched:
//!   without reports nothing better is known;
//! - `productive`: training steps past the highest step reached before the
//!   latest fault;
//! - `redone`: training steps at or below that step (a report of step s
//!   means s is done and s + 1 is under way, so the job re-does work while
//!   s < that step);
//! - `checkpoint_save`: while the job's phase (the slowest node's) is a
//!   checkpoint save (`checkpoint_save`, `checkpoint`, `save`);
//! - `detection`: from the fault to the decision to restart, booked when
//!   the decision is made by moving the tail of the open interval (from
//!   the fault time on) out of the bucket it was in. What the fault time is
//!   depends on the path (see `Engine::fault_time`): the last step advance
//!   for a hang, the report itself for a rank exit or a launch error, the
//!   cordon's time for a cordoned node, the last time a lost node was
//!   heard; never before the job's last progress (work reported after the
//!   evidence was done), never before the open interval (closed intervals
//!   are not re-booked);
//! - `stopped`: the job ended (succeeded, failed, stopped). The wall time
//!   ends there, so nothing accrues in it after the end; it is the
//!   terminal state, booked so that a finished job still reads one bucket.
//!
//! Persistence: the booked totals and the open bucket with its start are
//! part of the job record, written with every persisted change of the job.
//! After a supd restart the record's open interval simply continues: the
//! time supd was down is booked to the bucket the job was in when it was
//! last persisted — its agents kept running its ranks meanwhile, and the
//! first report after the restart moves it on. Progress-driven moves
//! (train ↔ save ↔ re-done) are not persisted on their own (they come with
//! every checkpoint, which is persisted anyway), so a crash can lose at
//! most the moves since the job's last persisted change. Records from
//! before this accounting start it when the engine first touches them.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// Where a job's time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Productive,
    Redone,
    Detection,
    Restart,
    CheckpointSave,
    #[default]
    Waiting,
    Stopped,
}

impl Bucket {
    pub const ALL: [Bucket; 7] = [
        Bucket::Productive,
        Bucket::Redone,
        Bucket::Detection,
        Bucket::Restart,
        Bucket::CheckpointSave,
        Bucket::Waiting,
        Bucket::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Productive => "productive",
            Bucket::Redone => "redone",
            Bucket::Detection => "detection",
            Bucket::Restart => "restart",
            Bucket::CheckpointSave => "checkpoint_save",
            Bucket::Waiting => "waiting",
            Bucket::Stopped => "stopped",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether a progress phase is a checkpoint save (the trainer's names, and
/// the obvious short ones).
pub fn is_save_phase(phase: &str) -> bool {
    matches!(phase, "checkpoint_save" | "checkpoint" | "save")
}

/// Whether a progress phase is still part of a (re)start: loading, or the
/// engine's own startup marker. Restart ends at the first report past it.
pub fn is_start_phase(phase: &str) -> bool {
    matches!(phase, "checkpoint_load" | "load" | crate::detect::STARTUP)
}

/// A job's goodput booking, persisted in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodput {
    /// When the wall time started (the submission); None in a record from
    /// before this accounting until the engine first touches it.
    #[serde(default)]
    pub started_at: Option<Millis>,
    /// When the job ended (its wall time stops there).
    #[serde(default)]
    pub ended_at: Option<Millis>,
    /// Closed milliseconds per bucket, in [`Bucket::ALL`] order.
    #[serde(default)]
    pub booked: [Millis; 7],
    /// The bucket the job is in, and since when (the open interval).
    #[serde(default)]
    pub bucket: Bucket,
    #[serde(default)]
    pub since: Millis,
    /// Steps below this are re-done work: the highest step reached before
    /// the latest fault. Cleared once the job passes it.
    #[serde(default)]
    pub redo_until: Option<u64>,
    /// Failures booked (restarts that were the job's failure).
    #[serde(default)]
    pub failures: u32,
    /// Checkpoint saves seen end, and their milliseconds (mean cost).
    #[serde(default)]
    pub saves: u32,
    #[serde(default)]
    pub save_ms: Millis,
    /// Checkpoints seen complete: how many, the first and the newest
    /// (step, when), for the job's actual interval.
    #[serde(default)]
    pub checkpoints: u32,
    #[serde(default)]
    pub first_checkpoint: Option<(u64, Millis)>,
    #[serde(default)]
    pub last_checkpoint: Option<(u64, Millis)>,
}

impl Goodput {
    /// A job submitted at `now`: waiting for nodes.
    pub fn submitted(now: Millis) -> Goodput {
        Goodput {
            started_at: Some(now),
            since: now,
            ..Goodput::default()
        }
    }

    /// Starts the accounting of a record written before it existed.
    pub fn ensure_started(&mut self, now: Millis, bucket: Bucket) {
        if self.started_at.is_none() {
            self.started_at = Some(now);
            self.since = now;
            self.bucket = bucket;
        }
    }

    /// Books the open interval up to `until` (never backwards) into the
    /// current bucket and restarts it there.
    fn close(&mut self, until: Millis) {
        if self.ended_at.is_some() {
            return;
        }
        let until = until.max(self.since);
        self.booked[self.bucket.index()] += until - self.since;
        self.since = until;
    }

    /// Moves the job into `bucket` at `now`; whether it moved.
    pub fn enter(&mut self, now: Millis, bucket: Bucket) -> bool {
        if self.ended_at.is_some() || self.bucket == bucket {
            return false;
        }
        let was = self.bucket;
        let since = self.since;
        self.close(now);
        if was == Bucket::CheckpointSave {
            self.saves += 1;
            self.save_ms += now.max(since) - since;
        }
        self.bucket = bucket;
        true
    }

    /// A decision to restart at `now` because of a fault at `fault_at`: the
    /// time from the fault on is detection. The bucket stays until the
    /// restart is placed ([`Goodput::enter`]).
    pub fn fault(&mut self, now: Millis, fault_at: Millis) {
        if self.ended_at.is_some() {
            return;
        }
        let at = fault_at.clamp(self.since, now.max(self.since));
        self.close(at);
        self.booked[Bucket::Detection.index()] += now.max(at) - at;
        self.since = now.max(at);
        self.failures += 1;
    }

    /// A restart placed: the highest step reached so far must be re-done.
    pub fn note_resume(&mut self, reached: Option<u64>) {
        if let Some(step) = reached {
            self.redo_until = Some(self.redo_until.map_or(step, |r| r.max(step)));
        }
    }

    /// A progress report at `now`: the job's highest step and its phase.
    /// Returns whether the job left `restart` (the first progress of a new
    /// generation).
    pub fn progress(&mut self, now: Millis, step: u64, phase: &str) -> bool {
        if self.ended_at.is_some() || matches!(self.bucket, Bucket::Waiting | Bucket::Stopped) {
            return false;
        }
        let phase = if phase.is_empty() { "train" } else { phase };
        if self.bucket == Bucket::Restart && is_start_phase(phase) {
            return false;
        }
        let resumed = matches!(self.bucket, Bucket::Restart | Bucket::Detection);
        let next = if is_save_phase(phase) {
            Bucket::CheckpointSave
        } else if self.redo_until.is_some_and(|h| step < h) {
            Bucket::Redone
        } else {
            self.redo_until = None;
            Bucket::Productive
        };
        self.enter(now, next);
        resumed
    }

    /// A newer complete checkpoint seen at `now`.
    pub fn checkpoint(&mut self, now: Millis, step: u64) {
        if self.last_checkpoint.is_some_and(|(s, _)| step <= s) {
            return;
        }
        self.checkpoints += 1;
        self.first_checkpoint.get_or_insert((step, now));
        self.last_checkpoint = Some((step, now));
    }

    /// The job ended at `now`: its wall time stops.
    pub fn end(&mut self, now: Millis) {
        self.enter(now, Bucket::Stopped);
        self.close(now);
        self.ended_at.get_or_insert(now);
    }

    /// The booking read at `now`: the open interval closed on a copy.
    pub fn as_of(&self, now: Millis) -> Goodput {
        let mut g = self.clone();
        g.close(now);
        g
    }

    pub fn ms(&self, bucket: Bucket) -> Millis {
        self.booked[bucket.index()]
    }

    /// Submission to the end (or to the booking's latest close).
    pub fn wall_ms(&self) -> Millis {
        self.booked.iter().sum()
    }

    /// What operators read: figures derived from the booking at `now` for
    /// a job of `nodes` × `gpus_per_node`.
    pub fn report(&self, now: Millis, nodes: u32, gpus_per_node: u32) -> GoodputReport {
        let g = self.as_of(now);
        let wall = g.wall_ms();
        let s = |b: Bucket| g.ms(b) as f64 / 1000.0;
        let gpus = f64::from(nodes) * f64::from(gpus_per_node);
        let ettr = (wall > 0).then(|| g.ms(Bucket::Productive) as f64 / wall as f64);
        // Node-hours exposed to failure: the time the job held nodes.
        let held_ms = wall - g.ms(Bucket::Waiting) - g.ms(Bucket::Stopped);
        let node_hours = held_ms as f64 / 3_600_000.0 * f64::from(nodes);
        let failures_per_node_hour = (node_hours > 0.0).then(|| f64::from(g.failures) / node_hours);
        let mtbf_ms = (g.failures > 0).then(|| held_ms as f64 / f64::from(g.failures));
        let checkpoint_cost_ms = (g.saves > 0).then(|| g.save_ms as f64 / f64::from(g.saves));
        let interval = match (g.first_checkpoint, g.last_checkpoint) {
            (Some((s0, t0)), Some((s1, t1))) if g.checkpoints > 1 && t1 > t0 => {
                let n = f64::from(g.checkpoints - 1);
                Some(((t1 - t0) as f64 / n, (s1.saturating_sub(s0)) as f64 / n))
            }
            _ => None,
        };
        let recommended_ms = match (checkpoint_cost_ms, mtbf_ms) {
            (Some(cost), Some(mtbf)) if cost > 0.0 => {
                Some(young_daly_ms(cost.round() as Millis, mtbf) as f64)
            }
            _ => None,
        };
        // First-order waste of checkpointing every τ of compute with cost δ
        // and MTBF M: δ/τ (saving) + τ/(2M) (re-done work per failure).
        // The gain is the waste at the actual interval minus at the
        // recommended one; the actual τ is the time between checkpoints
        // less one save.
        let gain = match (interval, recommended_ms, checkpoint_cost_ms, mtbf_ms) {
            (Some((every, _)), Some(rec), Some(cost), Some(mtbf)) => {
                let tau = (every - cost).max(1.0);
                let waste = |t: f64| cost / t + t / (2.0 * mtbf);
                Some((waste(tau) - waste(rec.max(1.0))).max(0.0))
            }
            _ => None,
        };
        GoodputReport {
            bucket: g.bucket,
            seconds: Bucket::ALL.map(|b| (b, s(b))),
            wall_s: wall as f64 / 1000.0,
            ettr,
            lost_gpu_seconds: Bucket::ALL
                .into_iter()
                .filter(|b| *b != Bucket::Productive)
                .map(|b| (b, s(b) * gpus))
                .collect(),
            failures: g.failures,
            failures_per_node_hour,
            checkpoint_cost_s: checkpoint_cost_ms.map(|m| m / 1000.0),
            checkpoint_interval_s: interval.map(|(ms, _)| ms / 1000.0),
            checkpoint_interval_steps: interval.map(|(_, steps)| steps),
            recommended_interval_s: recommended_ms.map(|m| m / 1000.0),
            recommended_gain: gain,
        }
    }
}

// -- the engine's side: when a fault happened ------------------------------

impl crate::Engine {
    /// When the fault behind a counted restart of `job` happened, as the
    /// engine can know it (see the module's notes): the last step advance
    /// for a hang; else the earliest evidence on the job's nodes (a
    /// cordon's time, the last time a lost node was heard, a node gone from
    /// the registry: now); else the decision itself (a rank's exit, a
    /// launch error, a loss spike: the report is the fault). Never before
    /// the job's last progress report, never after `now`.
    pub(crate) fn fault_time(&self, now: Millis, job: &super::Job) -> Millis {
        if job.detect.hung_generation == Some(job.record.generation) {
            return job.detect.hang.last_advance_at().unwrap_or(now).min(now);
        }
        let evidence = job
            .record
            .nodes
            .iter()
            .filter_map(|id| match self.nodes.get(id) {
                None => Some(now),
                Some(n) => match &n.record.cordon {
                    Some(c) => Some(c.at),
                    None => n.unreachable_since.map(|_| n.last_seen),
                },
            })
            .min()
            .unwrap_or(now);
        evidence
            .max(job.last_progress_at.unwrap_or(evidence))
            .min(now)
    }

    /// Books a counted restart's detection time (fault → this decision).
    pub(crate) fn book_fault(&mut self, now: Millis, name: &str) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let at = self.fault_time(now, job);
        if let Some(job) = self.jobs.get_mut(name) {
            job.record.goodput.fault(now, at);
        }
    }
}

/// A job's goodput as read at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct GoodputReport {
    /// The bucket the job is in now.
    pub bucket: Bucket,
    /// Seconds per bucket, in [`Bucket::ALL`] order; they sum to `wall_s`.
    pub seconds: [(Bucket, f64); 7],
    pub wall_s: f64,
    /// productive / wall (ETTR); None before any wall time.
    pub ettr: Option<f64>,
    /// Seconds × the job's GPUs for each bucket but `productive`.
    pub lost_gpu_seconds: Vec<(Bucket, f64)>,
    pub failures: u32,
    /// Failures per node-hour the job held nodes.
    pub failures_per_node_hour: Option<f64>,
    /// Mean checkpoint save stall (from the save-phase reports).
    pub checkpoint_cost_s: Option<f64>,
    /// The job's actual interval between complete checkpoints, in time and
    /// in steps.
    pub checkpoint_interval_s: Option<f64>,
    pub checkpoint_interval_steps: Option<f64>,
    /// Young/Daly √(2·δ·MTBF) from the measured cost and failure rate.
    pub recommended_interval_s: Option<f64>,
    /// ETTR the recommended interval would gain (a fraction; first order:
    /// δ/τ + τ/(2·MTBF) at the actual τ minus at the recommended one).
    pub recommended_gain: Option<f64>,
}

impl GoodputReport {
    pub fn seconds_in(&self, bucket: Bucket) -> f64 {
        self.seconds
            .iter()
            .find(|(b, _)| *b == bucket)
            .map_or(0.0, |(_, s)| *s)
    }
}

/// Young/Daly first-order optimum checkpoint interval: τ = √(2·δ·MTBF).
/// The one formula both the live accounting and `supd simulate` use.
pub fn young_daly_ms(checkpoint_write_ms: Millis, mtbf_ms: f64) -> Millis {
    (2.0 * checkpoint_write_ms as f64 * mtbf_ms).sqrt().round() as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_is_wall(g: &Goodput, now: Millis) {
        let r = g.as_of(now);
        let start = g.started_at.unwrap_or(0);
        let end = g.ended_at.unwrap_or(now).min(now);
        assert_eq!(r.wall_ms(), end - start, "{r:?}");
    }

    #[test]
    fn goodput_submission_waits_then_restart_then_training() {
        let mut g = Goodput::submitted(1_000);
        assert_eq!(g.bucket, Bucket::Waiting);
        sum_is_wall(&g, 1_500);
        assert!(g.enter(3_000, Bucket::Restart));
        assert!(g.progress(10_000, 1, "train"));
        assert_eq!(g.bucket, Bucket::Productive);
        let r = g.as_of(20_000);
        assert_eq!(r.ms(Bucket::Waiting), 2_000);
        assert_eq!(r.ms(Bucket::Restart), 7_000);
        assert_eq!(r.ms(Bucket::Productive), 10_000);
        sum_is_wall(&g, 20_000);
    }

    #[test]
    fn goodput_loading_is_still_restart() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        assert!(!g.progress(5_000, 0, "checkpoint_load"));
        assert_eq!(g.bucket, Bucket::Restart);
        assert!(g.progress(8_000, 1, ""));
        assert_eq!(g.as_of(8_000).ms(Bucket::Restart), 8_000);
    }

    #[test]
    fn goodput_restart_in_the_middle_books_detection_from_the_fault() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(10_000, 1, "train");
        g.progress(50_000, 40, "train");
        // Hung after the report at 50 s; decided at 80 s.
        g.fault(80_000, 50_000);
        g.note_resume(Some(40));
        g.enter(80_000, Bucket::Restart);
        assert!(g.progress(95_000, 21, "train"));
        let r = g.as_of(100_000);
        assert_eq!(r.ms(Bucket::Productive), 40_000);
        assert_eq!(r.ms(Bucket::Detection), 30_000);
        assert_eq!(r.ms(Bucket::Restart), 10_000 + 15_000);
        assert_eq!(r.ms(Bucket::Redone), 5_000);
        assert_eq!(r.failures, 1);
        sum_is_wall(&g, 100_000);
    }

    #[test]
    fn goodput_redone_until_the_step_reached_before_the_fault() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(1_000, 100, "train");
        g.fault(2_000, 2_000);
        g.note_resume(Some(100));
        g.enter(2_000, Bucket::Restart);
        // Resumed from step 60: steps 61..=100 are done again.
        g.progress(3_000, 60, "train");
        assert_eq!(g.bucket, Bucket::Redone);
        g.progress(4_000, 99, "train");
        assert_eq!(g.bucket, Bucket::Redone);
        g.progress(5_000, 100, "train");
        assert_eq!(g.bucket, Bucket::Productive);
        assert_eq!(g.redo_until, None);
        let r = g.as_of(6_000);
        assert_eq!(r.ms(Bucket::Redone), 2_000);
        assert_eq!(r.ms(Bucket::Productive), 1_000 + 1_000);
        sum_is_wall(&g, 6_000);
    }

    #[test]
    fn goodput_a_fault_before_the_open_interval_is_not_rebooked() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(1_000, 1, "train");
        g.progress(5_000, 2, "checkpoint_save");
        // Evidence older than the save's start: only the open interval
        // moves to detection.
        g.fault(7_000, 3_000);
        let r = g.as_of(7_000);
        assert_eq!(r.ms(Bucket::Productive), 4_000);
        assert_eq!(r.ms(Bucket::Detection), 2_000);
        // A fault "in the future" books nothing.
        g.fault(8_000, 9_000);
        assert_eq!(g.as_of(8_000).ms(Bucket::Detection), 2_000);
        sum_is_wall(&g, 9_000);
    }

    #[test]
    fn goodput_checkpoint_stalls_and_their_mean_cost() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(0, 1, "train");
        for k in 0..3 {
            let t = 10_000 + k * 12_000;
            g.progress(t, 10 * (k as u64 + 1), "checkpoint_save");
            // A second report in the same phase does not restart it.
            g.progress(t + 1_000, 10 * (k as u64 + 1), "checkpoint_save");
            g.progress(t + 2_000, 10 * (k as u64 + 1) + 1, "train");
            g.checkpoint(t + 2_000, 10 * (k as u64 + 1));
        }
        let r = g.report(46_000, 2, 8);
        assert_eq!(g.saves, 3);
        assert_eq!(r.checkpoint_cost_s, Some(2.0));
        assert_eq!(r.seconds_in(Bucket::CheckpointSave), 6.0);
        assert_eq!(r.checkpoint_interval_s, Some(12.0));
        assert_eq!(r.checkpoint_interval_steps, Some(10.0));
        assert_eq!(r.lost_gpu_seconds.len(), 6);
        let save_gpu_s = r
            .lost_gpu_seconds
            .iter()
            .find(|(b, _)| *b == Bucket::CheckpointSave)
            .map(|(_, s)| *s);
        assert_eq!(save_gpu_s, Some(6.0 * 16.0));
        sum_is_wall(&g, 46_000);
    }

    #[test]
    fn goodput_pending_after_a_fault_waits() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(1_000, 1, "train");
        g.fault(5_000, 5_000);
        g.enter(5_000, Bucket::Waiting);
        // Progress from a generation that is gone cannot move it.
        assert!(!g.progress(6_000, 2, "train"));
        g.enter(65_000, Bucket::Restart);
        let r = g.as_of(70_000);
        assert_eq!(r.ms(Bucket::Waiting), 60_000);
        assert_eq!(r.ms(Bucket::Restart), 1_000 + 5_000);
        sum_is_wall(&g, 70_000);
    }

    #[test]
    fn goodput_stopped_ends_the_wall_time() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(1_000, 1, "train");
        g.end(10_000);
        assert_eq!(g.bucket, Bucket::Stopped);
        let later = g.as_of(1_000_000);
        assert_eq!(later.wall_ms(), 10_000);
        assert_eq!(later.ms(Bucket::Productive), 9_000);
        // Nothing moves an ended job.
        assert!(!g.enter(2_000_000, Bucket::Productive));
        g.fault(2_000_000, 0);
        assert_eq!(g.as_of(3_000_000).wall_ms(), 10_000);
        assert_eq!(g.failures, 0);
    }

    #[test]
    fn goodput_survives_a_reload_and_books_the_downtime_to_its_bucket() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(2_000, 1, "train");
        let stored = serde_json::to_string(&g).expect("serialises");
        // supd down from 5 s to 65 s: the record continues where it was.
        let mut back: Goodput = serde_json::from_str(&stored).expect("parses");
        assert_eq!(back, g);
        back.progress(65_000, 600, "train");
        let r = back.as_of(70_000);
        assert_eq!(r.ms(Bucket::Productive), 68_000);
        sum_is_wall(&back, 70_000);
        // A record from before the accounting starts it at first touch.
        let mut old: Goodput = serde_json::from_str("{}").expect("defaults");
        old.ensure_started(100_000, Bucket::Productive);
        assert_eq!(old.as_of(101_000).ms(Bucket::Productive), 1_000);
    }

    #[test]
    fn goodput_recommendation_is_young_daly_with_its_gain() {
        let mut g = Goodput::submitted(0);
        g.enter(0, Bucket::Restart);
        g.progress(0, 0, "train");
        // Checkpoint every 101 s (100 s compute + 1 s save), for 10 h.
        let mut t = 0;
        let mut step = 0;
        while t < 36_000_000 {
            t += 100_000;
            step += 100;
            g.progress(t, step, "checkpoint_save");
            t += 1_000;
            g.progress(t, step + 1, "train");
            g.checkpoint(t, step);
        }
        // Two failures, decided at once (a rank exit).
        g.fault(t, t);
        g.enter(t, Bucket::Restart);
        g.progress(t, step, "train");
        g.fault(t, t);
        g.enter(t, Bucket::Restart);
        g.progress(t, step, "train");
        let r = g.report(t, 4, 8);
        let held = t as f64;
        let mtbf = held / 2.0;
        assert_eq!(
            r.recommended_interval_s,
            Some(young_daly_ms(1_000, mtbf) as f64 / 1000.0)
        );
        assert_eq!(r.failures_per_node_hour, Some(2.0 / (held / 3.6e6 * 4.0)));
        let gain = r.recommended_gain.expect("a gain");
        let rec = young_daly_ms(1_000, mtbf) as f64;
        let expected =
            (1_000.0 / 100_000.0 + 100_000.0 / (2.0 * mtbf)) - (1_000.0 / rec + rec / (2.0 * mtbf));
        assert!((gain - expected).abs() < 1e-9, "{gain} vs {expected}");
        assert!(gain > 0.0);
    }

    #[test]
    fn goodput_young_daly_is_the_square_root_rule() {
        assert_eq!(young_daly_ms(10_000, 3_600_000.0), 268_328);
    }
}
