//! Job-level detectors: hangs, stragglers and loss spikes, plus the
//! throughput window behind tokens/s and MFU. Pure like the rest of the
//! engine: every input carries its time (supd's receive time, never a
//! rank's clock, which is not comparable across nodes), and each detector
//! answers with a decision the engine turns into events and restarts.
//!
//! The statistics are robust on purpose: medians (and the median absolute
//! deviation, for evidence) over sliding windows, so one slow step, one
//! garbage-collection pause or one slow checkpoint write is noise, not a
//! decision.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::Millis;

/// What to do with a node flagged as a straggler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StragglerPolicy {
    /// An event only.
    #[default]
    Report,
    /// Swap the node for a spare at once (a restart from the newest
    /// checkpoint that does not count against the job's budget).
    Replace,
    /// Swap it right after the job's next checkpoint, losing no work.
    ReplaceAtCheckpoint,
}

impl StragglerPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            StragglerPolicy::Report => "report",
            StragglerPolicy::Replace => "replace",
            StragglerPolicy::ReplaceAtCheckpoint => "replace_at_checkpoint",
        }
    }
}

/// Detector settings (supd's `[detect]` table).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// Whether hangs are detected at all (a simulator that reports progress
    /// only at checkpoints models hang detection itself).
    pub hang_enabled: bool,
    /// Hung after no step advance for clamp(hang_factor × median step
    /// time, hang_floor, hang_ceiling) in the `train` phase.
    pub hang_factor: f64,
    pub hang_floor_ms: Millis,
    pub hang_ceiling_ms: Millis,
    /// Allowance for the checkpoint_save / checkpoint_load / eval phases.
    pub checkpoint_allowance_ms: Millis,
    /// From a generation running (every rank launched) to its first
    /// progress report, for jobs known to report progress: rendezvous,
    /// communicator setup (NCCL init), checkpoint loading before the
    /// trainer says so.
    pub startup_allowance_ms: Millis,
    /// Step-time samples needed before the adaptive bound applies; before
    /// that the ceiling does.
    pub warmup_steps: usize,
    /// Hangs attributed to one node (its ranks lagging behind the others)
    /// after which the node is cordoned; from half of it on it is reported
    /// as suspect in the hang events.
    pub hang_cordon_after: u32,
    /// A node is slow when its median step time is this fraction above the
    /// median of the other nodes (0.07 = 7 % slower).
    pub straggler_threshold: f64,
    /// Samples per node in the sliding window.
    pub straggler_window: usize,
    /// Consecutive slow evaluations (one per new sample) before flagging a
    /// node with no hardware signal of a slowdown: the uncorroborated
    /// window, long because a node slow for no visible reason may be
    /// noise (a noisy neighbour, data loading, the network).
    pub straggler_sustain: u32,
    /// The same for a node whose GPUs show a hardware signal of a slowdown
    /// (throttling, a PCIe link downgrade, NVLink trouble, ECC pressure)
    /// when the sample is taken: the corroborated window, short because
    /// the hardware already explains the slowness. At most
    /// `straggler_sustain` (clamped to it, and to at least 1).
    pub straggler_sustain_corroborated: u32,
    /// Policy for jobs whose spec names none.
    pub straggler_policy: StragglerPolicy,
    /// Window over which tokens/s is measured.
    pub throughput_window_ms: Millis,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            hang_enabled: true,
            hang_factor: 10.0,
            hang_floor_ms: 30_000,
            hang_ceiling_ms: 600_000,
            checkpoint_allowance_ms: 900_000,
            // torchrun's rendezvous join timeout.
            startup_allowance_ms: 600_000,
            warmup_steps: 10,
            hang_cordon_after: 3,
            straggler_threshold: 0.07,
            straggler_window: 20,
            straggler_sustain: 10,
            straggler_sustain_corroborated: 3,
            straggler_policy: StragglerPolicy::Report,
            throughput_window_ms: 30_000,
        }
    }
}

impl DetectConfig {
    /// Consecutive slow samples that confirm a straggler, by whether the
    /// node's hardware corroborates the slowness.
    pub fn straggler_confirm_after(&self, corroborated: bool) -> u32 {
        let uncorroborated = self.straggler_sustain.max(1);
        if corroborated {
            self.straggler_sustain_corroborated.clamp(1, uncorroborated)
        } else {
            uncorroborated
        }
    }
}

/// A bounded window of samples with robust statistics.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: VecDeque<f64>,
    cap: usize,
}

impl Window {
    pub fn new(cap: usize) -> Window {
        Window {
            samples: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn median(&self) -> Option<f64> {
        median(self.samples.iter().copied().collect())
    }

    /// Median absolute deviation.
    pub fn mad(&self) -> Option<f64> {
        let m = self.median()?;
        median(self.samples.iter().map(|v| (v - m).abs()).collect())
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// -- hangs -------------------------------------------------------------------

/// The phase of a generation whose ranks run but have not reported yet.
pub const STARTUP: &str = "startup";

/// Watches a job's step advances as supd receives them.
#[derive(Debug, Clone)]
pub struct HangDetector {
    /// Seconds per step between consecutive advances in the train phase.
    step_times: Window,
    last_step: Option<u64>,
    /// When the step last advanced or the phase last changed.
    last_advance_at: Option<Millis>,
    phase: String,
}

impl HangDetector {
    pub fn new() -> HangDetector {
        HangDetector {
            step_times: Window::new(64),
            last_step: None,
            last_advance_at: None,
            phase: String::new(),
        }
    }

    /// A new generation starts: nothing has advanced yet. The step-time
    /// history is kept: the model and its speed did not change.
    pub fn reset(&mut self) {
        self.last_step = None;
        self.last_advance_at = None;
        self.phase.clear();
    }

    /// Every rank of a new generation was launched at `now`: from here the
    /// first progress report must come within the startup allowance. Only
    /// for jobs known to report progress: for the others, silence is normal.
    pub fn arm_startup(&mut self, now: Millis) {
        self.last_step = None;
        self.last_advance_at = Some(now);
        self.phase = STARTUP.to_owned();
    }

    /// The job's highest step and phase after a report received at `now`.
    /// Returns true when this counts as progress.
    pub fn observe(&mut self, now: Millis, step: u64, phase: &str) -> bool {
        let phase = if phase.is_empty() { "train" } else { phase };
        let advanced = self.last_step.is_none_or(|s| step > s);
        let phase_changed = self.phase != phase;
        if advanced {
            // Only intervals wholly inside `train` measure the step time: a
            // checkpoint pause would inflate the median.
            if let (Some(prev), Some(at)) = (self.last_step, self.last_advance_at) {
                if !phase_changed && self.phase == "train" && now > at {
                    let per_step = (now - at) as f64 / 1000.0 / (step - prev) as f64;
                    self.step_times.push(per_step);
                }
            }
            self.last_step = Some(step);
        }
        if advanced || phase_changed {
            self.phase = phase.to_owned();
            self.last_advance_at = Some(now);
            return true;
        }
        false
    }

    pub fn median_step_s(&self) -> Option<f64> {
        self.step_times.median()
    }

    pub fn last_advance_at(&self) -> Option<Millis> {
        self.last_advance_at
    }

    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// How long the job may go without progress, and why that long.
    pub fn bound(&self, cfg: &DetectConfig) -> (Millis, String) {
        if self.phase == STARTUP {
            return (
                cfg.startup_allowance_ms,
                "the startup allowance (no progress report from this generation yet)".to_owned(),
            );
        }
        if self.phase != "train" && !self.phase.is_empty() {
            return (
                cfg.checkpoint_allowance_ms,
                format!("the {} allowance", self.phase),
            );
        }
        match self.step_times.median() {
            Some(m) if self.step_times.len() >= cfg.warmup_steps => {
                let raw = (cfg.hang_factor * m * 1000.0).round() as Millis;
                let bound = raw.clamp(
                    cfg.hang_floor_ms,
                    cfg.hang_ceiling_ms.max(cfg.hang_floor_ms),
                );
                (
                    bound,
                    format!(
                        "{} × median step time {:.3}s, clamped to [{}, {}]",
                        cfg.hang_factor,
                        m,
                        super::format_ms(cfg.hang_floor_ms),
                        super::format_ms(cfg.hang_ceiling_ms)
                    ),
                )
            }
            _ => (
                cfg.hang_ceiling_ms,
                format!(
                    "the ceiling: still warming up ({} of {} step-time samples)",
                    self.step_times.len(),
                    cfg.warmup_steps
                ),
            ),
        }
    }

    /// When the job counts as hung if nothing advances before then.
    pub fn deadline(&self, cfg: &DetectConfig) -> Option<Millis> {
        if !cfg.hang_enabled {
            return None;
        }
        Some(self.last_advance_at? + self.bound(cfg).0)
    }

    /// A reason when the job is hung at `now`.
    pub fn check(&self, now: Millis, cfg: &DetectConfig) -> Option<String> {
        if !cfg.hang_enabled {
            return None;
        }
        let at = self.last_advance_at?;
        let (bound, why) = self.bound(cfg);
        let silent = now - at;
        (silent >= bound).then(|| {
            if self.phase == STARTUP {
                return format!(
                    "hung at startup: no progress report for {silent} ms since every rank was launched \
                     (stuck in rendezvous or communicator setup?; bound {bound} ms = {why})"
                );
            }
            format!(
                "hung: no step advance for {silent} ms in phase {} (last step {}; bound {bound} ms = {why})",
                if self.phase.is_empty() { "train" } else { &self.phase },
                self.last_step.map_or("none".to_owned(), |s| s.to_string()),
            )
        })
    }
}

impl Default for HangDetector {
    fn default() -> Self {
        HangDetector::new()
    }
}

/// The node a hang is blamed on, if one can be, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct HangAttribution {
    pub node: Option<String>,
    pub why: String,
}

/// Who hung the job. The node whose ranks stopped advancing first (the one
/// node whose slowest rank is behind every other node's) is blamed; if the
/// lag cannot single one out, the one node among the candidates with
/// hardware evidence is. Otherwise nobody: a hang with every rank at the
/// same step and no hardware evidence (a software bug, a data loader, a
/// deadlock) says nothing about the machines.
///
/// `min_step`: each node's lowest latest rank step; `job_step`: the job's
/// highest; `hardware`: evidence text per node (only nodes with some).
pub fn attribute_hang(
    nodes: &[String],
    min_step: &BTreeMap<String, u64>,
    job_step: Option<u64>,
    hardware: &BTreeMap<String, String>,
) -> HangAttribution {
    let lowest = nodes.iter().filter_map(|n| min_step.get(n)).min().copied();
    let behind: Vec<&String> = match (lowest, job_step) {
        (Some(low), Some(max)) if low < max => nodes
            .iter()
            .filter(|n| min_step.get(*n) == Some(&low))
            .collect(),
        _ => Vec::new(),
    };
    let evidence = |n: &str| {
        hardware
            .get(n)
            .map(|h| format!("; hardware evidence: {h}"))
            .unwrap_or_default()
    };
    if let ([node], Some(low), Some(max)) = (behind.as_slice(), lowest, job_step) {
        return HangAttribution {
            node: Some((*node).clone()),
            why: format!(
                "node {node} lagging: its ranks stopped advancing first (at step {low}, the job reached step {max}){}",
                evidence(node)
            ),
        };
    }
    let pool: Vec<&String> = if behind.is_empty() {
        nodes.iter().collect()
    } else {
        behind.clone()
    };
    let with_hardware: Vec<&String> = pool
        .iter()
        .copied()
        .filter(|n| hardware.contains_key(*n))
        .collect();
    if let [node] = with_hardware.as_slice() {
        return HangAttribution {
            node: Some((*node).clone()),
            why: format!(
                "node {node} blamed on hardware evidence: {}",
                hardware.get(*node).map_or("", String::as_str)
            ),
        };
    }
    let listed = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let why = if behind.len() > 1 {
        format!(
            "the ranks of nodes {} stopped at the same step {}: no single node to blame",
            listed(&behind),
            lowest.unwrap_or_default()
        )
    } else if with_hardware.len() > 1 {
        format!(
            "hardware evidence on several nodes ({}): no single node to blame",
            listed(&with_hardware)
        )
    } else if job_step.is_none() {
        "no rank has reported a step and no node shows hardware evidence: no node to blame"
            .to_owned()
    } else {
        "every node's ranks stopped at the same step and no node shows hardware evidence: \
         no node to blame"
            .to_owned()
    };
    HangAttribution { node: None, why }
}

// -- stragglers --------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct NodeSeries {
    window: Window,
    last_step: Option<u64>,
    streak: u32,
    flagged: bool,
    slowdown: Option<f64>,
}

/// A node just flagged as a straggler.
#[derive(Debug, Clone, PartialEq)]
pub struct Straggler {
    pub node: String,
    /// Node median ÷ median of the other nodes' medians.
    pub slowdown: f64,
    /// The step-time statistics behind it.
    pub evidence: String,
    /// The step of the sample that confirmed it.
    pub step: u64,
    /// Slow samples in a row when it was confirmed.
    pub slow_samples: u32,
    /// Whether the node's hardware corroborated the slowness at that
    /// sample, so the short window applied.
    pub corroborated: bool,
}

impl Straggler {
    /// Which window confirmed the node, e.g. "confirmed after 3 slow
    /// samples in a row at step 17 (corroborated window)".
    pub fn confirmation(&self) -> String {
        format!(
            "confirmed after {} slow samples in a row at step {} ({} window)",
            self.slow_samples,
            self.step,
            if self.corroborated {
                "corroborated"
            } else {
                "uncorroborated"
            }
        )
    }
}

/// Per node step times against the other nodes of the same job.
#[derive(Debug, Clone, Default)]
pub struct StragglerDetector {
    nodes: BTreeMap<String, NodeSeries>,
}

impl StragglerDetector {
    /// Keeps only the nodes of the current generation.
    pub fn retain(&mut self, nodes: &[String]) {
        self.nodes.retain(|n, _| nodes.contains(n));
        for s in self.nodes.values_mut() {
            s.last_step = None;
        }
    }

    /// One report of `node`'s step time at `step`; `corroborated`: whether
    /// the node's GPUs show a hardware signal of a slowdown right now.
    /// Returns the node when this sample makes it a straggler (once; it
    /// stays flagged until it leaves the job).
    ///
    /// The streak of slow samples counts whatever the hardware says (a slow
    /// sample is slow either way); the window it must reach is the one for
    /// this sample's corroboration. So evidence that appears mid-streak
    /// confirms at once if the streak already covers the short window, and
    /// a node whose evidence disappears mid-streak falls back to the long
    /// window, counted from the streak's start.
    pub fn observe(
        &mut self,
        cfg: &DetectConfig,
        node: &str,
        step: u64,
        step_time_s: f64,
        corroborated: bool,
    ) -> Option<Straggler> {
        let cap = cfg.straggler_window.max(2);
        let series = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeSeries {
                window: Window::new(cap),
                ..NodeSeries::default()
            });
        // Reports are coalesced: the same step twice is one sample.
        if series.last_step.is_some_and(|s| step <= s) {
            return None;
        }
        series.last_step = Some(step);
        series.window.push(step_time_s);
        let min_samples = cap / 2;
        if series.window.len() < min_samples {
            return None;
        }
        let mine = series.window.median()?;
        let others = median(
            self.nodes
                .iter()
                .filter(|(id, s)| id.as_str() != node && s.window.len() >= min_samples)
                .filter_map(|(_, s)| s.window.median())
                .collect(),
        );
        let series = self.nodes.get_mut(node)?;
        let Some(reference) = others.filter(|r| *r > 0.0) else {
            series.slowdown = None;
            return None;
        };
        let slowdown = mine / reference;
        series.slowdown = Some(slowdown);
        if slowdown >= 1.0 + cfg.straggler_threshold {
            series.streak += 1;
        } else {
            series.streak = 0;
        }
        if series.flagged || series.streak < cfg.straggler_confirm_after(corroborated) {
            return None;
        }
        series.flagged = true;
        let mad = series.window.mad().unwrap_or(0.0);
        Some(Straggler {
            node: node.to_owned(),
            slowdown,
            evidence: format!(
                "median step time {mine:.3}s (MAD {mad:.3}s) over its last {} steps vs {reference:.3}s \
                 on the other nodes, above the {:.0}% threshold",
                series.window.len(),
                cfg.straggler_threshold * 100.0,
            ),
            step,
            slow_samples: series.streak,
            corroborated,
        })
    }

    pub fn median_step_s(&self, node: &str) -> Option<f64> {
        self.nodes.get(node)?.window.median()
    }

    pub fn slowdown(&self, node: &str) -> Option<f64> {
        self.nodes.get(node)?.slowdown
    }

    pub fn is_flagged(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|s| s.flagged)
    }
}

// -- loss spikes -------------------------------------------------------------

/// Loss above `factor` × its moving average for `steps` new steps in a row.
#[derive(Debug, Clone, Default)]
pub struct LossSpikeDetector {
    average: Option<f64>,
    samples: u32,
    last_step: Option<u64>,
    streak: u32,
    spike_start: Option<u64>,
}

/// A spike that lasted long enough.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpike {
    /// First step of the spike.
    pub step: u64,
    pub loss: f64,
    pub average: f64,
}

/// Samples before the average is trusted.
const LOSS_WARMUP: u32 = 5;
/// Weight of a new sample in the moving average.
const LOSS_EMA_ALPHA: f64 = 0.1;

impl LossSpikeDetector {
    /// A new generation resumes from a checkpoint: steps go back, so the
    /// step guard starts over; the average (the loss level) is kept.
    pub fn reset(&mut self) {
        self.last_step = None;
        self.streak = 0;
        self.spike_start = None;
    }

    pub fn observe(&mut self, step: u64, loss: f64, factor: f64, steps: u32) -> Option<LossSpike> {
        if !loss.is_finite() || self.last_step.is_some_and(|s| step <= s) {
            return None;
        }
        self.last_step = Some(step);
        let Some(avg) = self.average.filter(|_| self.samples >= LOSS_WARMUP) else {
            self.average = Some(
                self.average
                    .map_or(loss, |a| a + LOSS_EMA_ALPHA * (loss - a)),
            );
            self.samples += 1;
            return None;
        };
        if loss > factor * avg {
            // Spike samples stay out of the average, or a long spike would
            // become the new normal.
            self.streak += 1;
            let start = *self.spike_start.get_or_insert(step);
            if self.streak >= steps.max(1) {
                self.streak = 0;
                self.spike_start = None;
                return Some(LossSpike {
                    step: start,
                    loss,
                    average: avg,
                });
            }
            return None;
        }
        self.streak = 0;
        self.spike_start = None;
        self.average = Some(avg + LOSS_EMA_ALPHA * (loss - avg));
        self.samples += 1;
        None
    }
}

// -- throughput --------------------------------------------------------------

/// Tokens/s over a sliding window of (supd time, cumulative tokens).
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    samples: VecDeque<(Millis, u64)>,
}

impl Throughput {
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    pub fn observe(&mut self, now: Millis, tokens: u64, window_ms: Millis) {
        if self.samples.back().is_some_and(|(_, t)| tokens < *t) {
            // A resume went back: rates across it mean nothing.
            self.samples.clear();
        }
        if self.samples.back().is_some_and(|(_, t)| *t == tokens) {
            return;
        }
        self.samples.push_back((now, tokens));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(at, _)| now - at > window_ms)
        {
            self.samples.pop_front();
        }
    }

    pub fn tokens_per_s(&self) -> Option<f64> {
        let (t0, k0) = self.samples.front()?;
        let (t1, k1) = self.samples.back()?;
        (t1 > t0).then(|| (k1 - k0) as f64 / ((t1 - t0) as f64 / 1000.0))
    }
}

/// Dense bf16 peak FLOP/s per GPU by model name (matched as a substring of
/// the NVML name, most specific first).
pub const PEAK_FLOPS: &[(&str, f64)] = &[
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("B100", 1.75e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("L40S", 362e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("V100", 125e12),
];

pub fn peak_flops_for(gpu_name: &str) -> Option<f64> {
    // GH200 and GB200 contain H200 / B200 less specifically; check the
    // longer names first by table order, but GH200 sits after H200 there,
    // which is fine: both are 989e12.
    PEAK_FLOPS
        .iter()
        .find(|(name, _)| gpu_name.contains(name))
        .map(|(_, f)| *f)
}

/// MFU = 6 · N · tokens/s ÷ (GPUs × peak FLOP/s).
pub fn mfu(params: f64, tokens_per_s: f64, gpus: u32, peak: f64) -> Option<f64> {
    let denom = f64::from(gpus) * peak;
    (denom > 0.0 && params > 0.0).then(|| 6.0 * params * tokens_per_s / denom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator (splitmix64), so tests need no crate.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed)
        }
        pub(crate) fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
        /// ±`amp` uniform jitter around 1.
        pub(crate) fn jitter(&mut self, amp: f64) -> f64 {
            1.0 + amp * (2.0 * self.next_f64() - 1.0)
        }
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn medians_and_mad() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let mut w = Window::new(3);
        for v in [1.0, 100.0, 2.0, 3.0, f64::NAN, -1.0] {
            w.push(v);
        }
        assert_eq!(
            w.len(),
            3,
            "NaN and negatives are dropped, the oldest falls out"
        );
        assert_eq!(w.median(), Some(3.0));
        assert_eq!(w.mad(), Some(1.0));
    }

    #[test]
    fn a_node_ten_percent_slower_is_flagged_within_30_steps() {
        let cfg = DetectConfig::default();
        let ids = nodes(4);
        let mut rng = Rng::new(7);
        let mut d = StragglerDetector::default();
        // 500 clean steps, then node-2 turns 10% slower.
        let mut flagged_at = None;
        for step in 1..=700u64 {
            for id in &ids {
                let slow = if id == "node-2" && step > 500 {
                    1.10
                } else {
                    1.0
                };
                if let Some(s) = d.observe(&cfg, id, step, 0.5 * slow * rng.jitter(0.05), false) {
                    assert_eq!(s.node, "node-2", "{s:?}");
                    assert!(s.slowdown > 1.05 && s.slowdown < 1.16, "{s:?}");
                    assert!(s.evidence.contains("median step time"), "{}", s.evidence);
                    flagged_at.get_or_insert(step);
                }
            }
        }
        let at = flagged_at.expect("flagged");
        assert!(
            at > 500 && at <= 530,
            "flagged {} steps after the slowdown",
            at - 500
        );
        assert!(d.is_flagged("node-2") && !d.is_flagged("node-0"));
    }

    /// Steps 1..=`steps` on nodes "a" (1.0 s) and "b" (1.5 s), "b"
    /// corroborated at the steps `hw` says; the straggler, if flagged.
    fn slow_b(cfg: &DetectConfig, steps: u64, hw: impl Fn(u64) -> bool) -> Option<Straggler> {
        let mut d = StragglerDetector::default();
        for step in 1..=steps {
            assert_eq!(d.observe(cfg, "a", step, 1.0, false), None);
            if let Some(s) = d.observe(cfg, "b", step, 1.5, hw(step)) {
                return Some(s);
            }
        }
        None
    }

    fn two_windows() -> DetectConfig {
        // Window 10: a node's median counts from its 5th sample, so with
        // both nodes slow from the start b's streak is step − 4.
        DetectConfig {
            straggler_window: 10,
            straggler_sustain: 10,
            straggler_sustain_corroborated: 3,
            ..DetectConfig::default()
        }
    }

    #[test]
    fn a_corroborated_node_is_confirmed_after_the_short_window_an_uncorroborated_one_after_the_long(
    ) {
        let cfg = two_windows();
        let hw = slow_b(&cfg, 100, |_| true).expect("flagged");
        assert_eq!(
            (hw.step, hw.slow_samples, hw.corroborated),
            (7, 3, true),
            "{hw:?}"
        );
        assert_eq!(
            hw.confirmation(),
            "confirmed after 3 slow samples in a row at step 7 (corroborated window)"
        );
        let plain = slow_b(&cfg, 100, |_| false).expect("flagged");
        assert_eq!(
            (plain.step, plain.slow_samples, plain.corroborated),
            (14, 10, false),
            "{plain:?}"
        );
        assert!(
            plain.confirmation().ends_with("(uncorroborated window)"),
            "{}",
            plain.confirmation()
        );
        // Same data either way: only the window differs.
        assert_eq!(hw.slowdown, plain.slowdown);
        assert!(
            !hw.evidence.contains("in a row"),
            "the confirmation says that: {}",
            hw.evidence
        );
    }

    #[test]
    fn evidence_that_clears_mid_streak_falls_back_to_the_long_window() {
        let cfg = two_windows();
        // Corroborated for the first two slow samples (steps 5 and 6) only:
        // the short window is never reached while it holds, and once it is
        // gone the long one applies, counted from the streak's start.
        let s = slow_b(&cfg, 100, |step| step <= 6).expect("flagged");
        assert_eq!((s.step, s.slow_samples, s.corroborated), (14, 10, false));
        // Evidence that appears mid-streak confirms at once: the streak
        // (5 slow samples at step 9) already covers the short window.
        let s = slow_b(&cfg, 100, |step| step >= 9).expect("flagged");
        assert_eq!((s.step, s.slow_samples, s.corroborated), (9, 5, true));
    }

    #[test]
    fn hardware_evidence_alone_makes_no_straggler() {
        let cfg = DetectConfig::default();
        let ids = nodes(4);
        let mut rng = Rng::new(17);
        let mut d = StragglerDetector::default();
        for step in 1..=10_000u64 {
            for id in &ids {
                // node-1's GPUs throttle all along, but it keeps pace.
                let s = d.observe(
                    &cfg,
                    id,
                    step,
                    0.5 * rng.jitter(0.05),
                    id.as_str() == "node-1",
                );
                assert_eq!(s, None, "false alarm at step {step}");
            }
        }
    }

    #[test]
    fn the_corroborated_window_is_clamped_to_the_uncorroborated_one() {
        let cfg = |sustain, corroborated| DetectConfig {
            straggler_sustain: sustain,
            straggler_sustain_corroborated: corroborated,
            ..DetectConfig::default()
        };
        assert_eq!(cfg(10, 3).straggler_confirm_after(true), 3);
        assert_eq!(cfg(10, 3).straggler_confirm_after(false), 10);
        assert_eq!(cfg(2, 5).straggler_confirm_after(true), 2);
        assert_eq!(cfg(10, 0).straggler_confirm_after(true), 1);
        assert_eq!(cfg(0, 0).straggler_confirm_after(false), 1);
    }

    #[test]
    fn ten_thousand_clean_jittery_steps_raise_no_straggler() {
        let cfg = DetectConfig::default();
        for (seed, n) in [(1, 2), (2, 4), (3, 8)] {
            let ids = nodes(n);
            let mut rng = Rng::new(seed);
            let mut d = StragglerDetector::default();
            for step in 1..=10_000u64 {
                for id in &ids {
                    // ±5% jitter plus a rare 3× hiccup (a GC pause, a slow write).
                    let hiccup = if rng.next_f64() < 0.01 { 3.0 } else { 1.0 };
                    let s = d.observe(&cfg, id, step, 0.5 * rng.jitter(0.05) * hiccup, false);
                    assert_eq!(s, None, "false alarm at step {step} with {n} nodes");
                }
            }
        }
    }

    #[test]
    fn hang_bound_is_adaptive_clamped_and_phase_aware() {
        let cfg = DetectConfig {
            hang_factor: 2.0,
            hang_floor_ms: 1_000,
            hang_ceiling_ms: 60_000,
            checkpoint_allowance_ms: 30_000,
            warmup_steps: 5,
            ..DetectConfig::default()
        };
        let mut h = HangDetector::new();
        assert_eq!(h.check(1_000_000, &cfg), None, "nothing reported yet");
        h.observe(0, 0, "train");
        assert_eq!(h.bound(&cfg).0, 60_000, "warming up: the ceiling");
        let mut now = 0;
        for step in 1..=20 {
            now += 2_000;
            h.observe(now, step, "train");
        }
        assert_eq!(h.median_step_s(), Some(2.0));
        assert_eq!(h.bound(&cfg).0, 4_000);
        assert_eq!(h.check(now + 3_999, &cfg), None);
        let why = h.check(now + 4_000, &cfg).expect("hung");
        assert!(
            why.contains("no step advance for 4000 ms") && why.contains("last step 20"),
            "{why}"
        );
        // The same step again is no progress; a checkpoint phase is, and gets its allowance.
        assert!(!h.observe(now + 100, 20, "train"));
        assert!(h.observe(now + 200, 20, "checkpoint_save"));
        assert_eq!(h.check(now + 20_000, &cfg), None);
        assert!(h
            .check(now + 30_200, &cfg)
            .expect("hung")
            .contains("checkpoint_save allowance"));
        // The checkpoint pause did not enter the median.
        h.observe(now + 25_000, 21, "train");
        assert_eq!(h.median_step_s(), Some(2.0));
        // Fast steps hit the floor.
        let mut fast = HangDetector::new();
        for step in 0..20 {
            fast.observe(step * 100, step as u64, "train");
        }
        assert_eq!(fast.bound(&cfg).0, 1_000);
    }

    #[test]
    fn hang_detection_delay_on_jittery_series() {
        let cfg = DetectConfig {
            hang_factor: 2.0,
            hang_floor_ms: 1_000,
            ..DetectConfig::default()
        };
        let mut rng = Rng::new(11);
        let mut h = HangDetector::new();
        let mut now: Millis = 0;
        for step in 0..10_000u64 {
            now += (400.0 * rng.jitter(0.2)) as Millis;
            h.observe(now, step, "train");
            // Check in between steps: never hung while steps keep coming.
            assert_eq!(h.check(now + 399, &cfg), None, "false hang at step {step}");
        }
        let median = h.median_step_s().expect("median");
        let deadline = h.deadline(&cfg).expect("deadline");
        assert!(deadline - now <= (2.0 * median * 1000.0) as Millis + 1_000);
        assert!(h.check(deadline, &cfg).is_some());
    }

    #[test]
    fn a_hang_is_blamed_on_one_node_or_on_nobody() {
        let ids = nodes(3);
        let steps = |v: [u64; 3]| -> BTreeMap<String, u64> { ids.iter().cloned().zip(v).collect() };
        let hw = |n: &[&str]| -> BTreeMap<String, String> {
            n.iter()
                .map(|id| {
                    (
                        (*id).to_owned(),
                        "GPU 1 degraded: PCIe x8 of x16".to_owned(),
                    )
                })
                .collect()
        };
        // Every rank at the same step, no hardware evidence: nobody.
        let a = attribute_hang(&ids, &steps([9, 9, 9]), Some(9), &hw(&[]));
        assert_eq!(a.node, None);
        assert!(a.why.contains("no node to blame"), "{}", a.why);
        // One node's ranks stopped first: that node.
        let a = attribute_hang(&ids, &steps([9, 7, 8]), Some(9), &hw(&[]));
        assert_eq!(a.node.as_deref(), Some("node-1"));
        assert!(
            a.why.starts_with(
                "node node-1 lagging: its ranks stopped advancing first (at step 7, the job reached step 9)"
            ),
            "{}",
            a.why
        );
        // Two nodes equally behind: not one node's doing ...
        let a = attribute_hang(&ids, &steps([7, 7, 9]), Some(9), &hw(&[]));
        assert_eq!(a.node, None);
        assert!(
            a.why
                .contains("the ranks of nodes node-0, node-1 stopped at the same step 7"),
            "{}",
            a.why
        );
        // ... unless one of them has hardware evidence.
        let a = attribute_hang(&ids, &steps([7, 7, 9]), Some(9), &hw(&["node-0", "node-2"]));
        assert_eq!(a.node.as_deref(), Some("node-0"));
        assert!(
            a.why
                .contains("hardware evidence: GPU 1 degraded: PCIe x8 of x16"),
            "{}",
            a.why
        );
        // No lag: the one node with hardware evidence, or nobody if several.
        let a = attribute_hang(&ids, &steps([9, 9, 9]), Some(9), &hw(&["node-2"]));
        assert_eq!(a.node.as_deref(), Some("node-2"));
        let a = attribute_hang(&ids, &steps([9, 9, 9]), Some(9), &hw(&["node-1", "node-2"]));
        assert_eq!(a.node, None);
        assert!(
            a.why.contains("hardware evidence on several nodes"),
            "{}",
            a.why
        );
        // No reports at all: nobody.
        let a = attribute_hang(&ids, &BTreeMap::new(), None, &hw(&[]));
        assert_eq!(a.node, None);
    }

    #[test]
    fn loss_spike_needs_m_steps_and_keeps_its_start() {
        let mut d = LossSpikeDetector::default();
        for step in 1..=20 {
            assert_eq!(d.observe(step, 2.0, 3.0, 3), None);
        }
        // One outlier is noise.
        assert_eq!(d.observe(21, 9.0, 3.0, 3), None);
        assert_eq!(d.observe(22, 2.0, 3.0, 3), None);
        assert_eq!(d.observe(23, 9.0, 3.0, 3), None);
        assert_eq!(d.observe(24, 9.5, 3.0, 3), None);
        assert_eq!(
            d.observe(24, 9.5, 3.0, 3),
            None,
            "a repeated step is one sample"
        );
        let spike = d.observe(25, 10.0, 3.0, 3).expect("spike");
        assert_eq!(spike.step, 23);
        assert!((spike.average - 2.0).abs() < 1e-9);
        let mut rng = Rng::new(5);
        let mut clean = LossSpikeDetector::default();
        for step in 1..=10_000 {
            let loss = 2.0 * rng.jitter(0.3) * (1.0 - step as f64 / 20_000.0);
            assert_eq!(
                clean.observe(step, loss, 3.0, 3),
                None,
                "false spike at {step}"
            );
        }
    }

    #[test]
    fn throughput_and_mfu() {
        let mut t = Throughput::default();
        assert_eq!(t.tokens_per_s(), None);
        t.observe(0, 0, 10_000);
        t.observe(1_000, 1_000, 10_000);
        t.observe(2_000, 3_000, 10_000);
        assert_eq!(t.tokens_per_s(), Some(1_500.0));
        t.observe(3_000, 10, 10_000);
        assert_eq!(t.tokens_per_s(), None, "a resume went back");
        assert_eq!(peak_flops_for("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_flops_for("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_flops_for("NVIDIA B200"), Some(2.25e15));
        assert_eq!(peak_flops_for("Simulated GPU"), None);
        let m = mfu(7e9, 1e5, 16, 989e12).expect("mfu");
        assert!((m - 6.0 * 7e9 * 1e5 / (16.0 * 989e12)).abs() < 1e-12);
        assert_eq!(mfu(0.0, 1e5, 16, 989e12), None);
    }
}
