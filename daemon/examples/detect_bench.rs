//! Detection delay and false alarms of the job-level detectors over long
//! simulated runs (the same code supd runs: `sup_core::detect`).
//!
//!     cargo run --release -p supd --example detect_bench [-- --seed N]
//!
//! Step times are log-normal around their median (σ = 5 %, plus a 1 % chance
//! of a 3× hiccup: a GC pause, a slow write), all nodes of a job stepping
//! together. Numbers, not assertions: the unit tests assert the bounds.

use sup_core::detect::{DetectConfig, HangDetector, LossSpikeDetector, StragglerDetector};
use sup_core::Millis;

struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64(), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A step-time multiplier: log-normal σ, and rare hiccups.
    fn step(&mut self, sigma: f64) -> f64 {
        let hiccup = if self.next_f64() < 0.01 { 3.0 } else { 1.0 };
        (sigma * self.normal()).exp() * hiccup
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn node_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn stragglers(rng: &mut Rng, cfg: &DetectConfig) {
    println!(
        "== straggler detector (threshold {:.0}%, window {}, sustain {}) ==",
        cfg.straggler_threshold * 100.0,
        cfg.straggler_window,
        cfg.straggler_sustain
    );
    let nodes = node_ids(8);
    for sigma in [0.02, 0.05] {
        // False alarms: long clean runs.
        let (runs, steps) = (20, 10_000u64);
        let mut alarms = 0;
        for _ in 0..runs {
            let mut d = StragglerDetector::default();
            for step in 1..=steps {
                for n in &nodes {
                    if d.observe(cfg, n, step, 0.5 * rng.step(sigma), false)
                        .is_some()
                    {
                        alarms += 1;
                    }
                }
            }
        }
        println!(
            "  jitter σ={:>2.0}%: false alarms {alarms} in {} node-steps ({runs} runs × {steps} steps × 8 nodes)",
            sigma * 100.0,
            runs as u64 * steps * nodes.len() as u64
        );
        // Delay: one node turns slow at step 500.
        for factor in [1.10, 1.20, 1.50] {
            let mut delays = Vec::new();
            let mut missed = 0;
            let mut wrong = 0;
            for _ in 0..200 {
                let mut d = StragglerDetector::default();
                let mut found = None;
                for step in 1..=800u64 {
                    for n in &nodes {
                        let slow = if n == "node-3" && step > 500 {
                            factor
                        } else {
                            1.0
                        };
                        if let Some(s) =
                            d.observe(cfg, n, step, 0.5 * slow * rng.step(sigma), false)
                        {
                            if s.node == "node-3" && step > 500 {
                                found.get_or_insert(step - 500);
                            } else {
                                wrong += 1;
                            }
                        }
                    }
                    if found.is_some() {
                        break;
                    }
                }
                match found {
                    Some(delay) => delays.push(delay),
                    None => missed += 1,
                }
            }
            println!(
                "    {factor:.2}× slower: flagged after median {} / p95 {} / max {} steps; missed {missed} of 200, wrong node {wrong}",
                percentile(&mut delays, 0.5),
                percentile(&mut delays, 0.95),
                delays.iter().max().copied().unwrap_or(0),
            );
        }
    }
}

fn hangs(rng: &mut Rng, name: &str, cfg: &DetectConfig) {
    println!(
        "== hang detector, {name} (k={}, floor {} ms, ceiling {} ms) ==",
        cfg.hang_factor, cfg.hang_floor_ms, cfg.hang_ceiling_ms
    );
    for median_ms in [200.0, 1_000.0, 5_000.0] {
        let mut false_alarms = 0;
        let mut delays = Vec::new();
        let mut within = 0;
        let runs = 20;
        for _ in 0..runs {
            let mut h = HangDetector::new();
            let mut now: Millis = 0;
            for step in 0..5_000u64 {
                let dt = (median_ms * rng.step(0.05)) as Millis;
                // Would the detector have fired before this step arrived?
                if let Some(deadline) = h.deadline(cfg) {
                    if deadline <= now + dt {
                        false_alarms += 1;
                    }
                }
                now += dt;
                h.observe(now, step, "train");
            }
            // Frozen after the last step: when is it noticed?
            let deadline = h.deadline(cfg).unwrap_or(now);
            let delay = (deadline - now) as u64;
            let median = h.median_step_s().unwrap_or(0.0);
            if (delay as f64) <= 2_000.0 * median + 1_000.0 {
                within += 1;
            }
            delays.push(delay);
        }
        println!(
            "  median step {median_ms:>5.0} ms: detected {} ms after the last progress (max {}); within 2×median+1s in {within}/{runs}; \
             false alarms {false_alarms} in {} steps",
            percentile(&mut delays, 0.5),
            delays.iter().max().copied().unwrap_or(0),
            runs * 5_000,
        );
    }
}

fn loss_spikes(rng: &mut Rng) {
    let (factor, steps) = (3.0, 3);
    println!("== loss-spike detector (factor {factor}, {steps} steps) ==");
    let mut false_alarms = 0;
    let total = 20 * 10_000;
    let mut delays = Vec::new();
    for _ in 0..20 {
        let mut d = LossSpikeDetector::default();
        for step in 1..=10_000u64 {
            // A decaying loss with 30% noise per step.
            let loss = 2.0 * (-(step as f64) / 3_000.0).exp() * (0.3 * rng.normal()).exp() + 0.1;
            if d.observe(step, loss, factor, steps).is_some() {
                false_alarms += 1;
            }
        }
        // A 10× spike from step 10,001 on.
        for step in 10_001..=10_100u64 {
            if d.observe(step, 10.0 * (0.3 * rng.normal()).exp(), factor, steps)
                .is_some()
            {
                delays.push(step - 10_000);
                break;
            }
        }
    }
    println!(
        "  false alarms {false_alarms} in {total} noisy steps; a 10× spike rolled back after median {} / max {} steps",
        percentile(&mut delays, 0.5),
        delays.iter().max().copied().unwrap_or(0)
    );
}

fn main() {
    let seed = std::env::args()
        .skip_while(|a| a != "--seed")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let mut rng = Rng(seed);
    let defaults = DetectConfig::default();
    let start = std::time::Instant::now();
    stragglers(&mut rng, &defaults);
    hangs(&mut rng, "defaults", &defaults);
    let tight = DetectConfig {
        hang_factor: 2.0,
        hang_floor_ms: 1_000,
        ..DetectConfig::default()
    };
    hangs(&mut rng, "the e2e test's tight setting", &tight);
    loss_spikes(&mut rng);
    println!("(seed {seed}; {:.1} s)", start.elapsed().as_secs_f64());
}
