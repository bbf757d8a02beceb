//! Failure traces: the classes of failure sup tells apart, Llama 3's
//! published causes, a seeded Poisson trace generator and the trace file
//! format.

use sup_core::Millis;

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

    pub(super) fn parse(s: &str) -> Option<FailureClass> {
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
    pub(super) fn below(&mut self, n: usize) -> usize {
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
