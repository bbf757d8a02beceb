//! The job spec as the engine holds it: what `supctl job submit FILE` sends,
//! parsed and checked at supd's edge (`daemon/src/jobspec.rs`) before the
//! engine sees it. Field names are a contract (README). Every rejection
//! names the field at fault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::detect::StragglerPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Normal,
    /// Preemptible: may run on spare nodes, shrunk or stopped when a normal
    /// job needs them.
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Desired number of nodes.
    pub nodes: u32,
    /// Below this the job waits instead of running. Default: `nodes`.
    #[serde(default)]
    pub min_nodes: Option<u32>,
    /// Ranks launched per node.
    #[serde(default = "default_gpus_per_node")]
    pub gpus_per_node: u32,
    /// Valid world sizes are multiples of this (e.g. tensor × pipeline
    /// parallel degree).
    #[serde(default = "one")]
    pub world_size_multiple: u32,
    pub checkpoint_dir: String,
    /// dcp | megatron | orbax | marker:FILENAME
    #[serde(default = "default_layout")]
    pub checkpoint_layout: String,
    #[serde(default = "default_priority")]
    pub priority: Priority,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Model parameters N, for MFU = 6·N·tokens/s ÷ (GPUs × peak FLOP/s).
    #[serde(default)]
    pub model_params: Option<f64>,
    /// Peak FLOP/s of one GPU; default: from the GPU model's name.
    #[serde(default)]
    pub gpu_peak_flops: Option<f64>,
    /// report | replace | replace_at_checkpoint; default: supd's
    /// `detect.straggler_policy`.
    #[serde(default)]
    pub straggler_policy: Option<StragglerPolicy>,
    /// Roll back to the checkpoint before a loss spike (opt-in).
    #[serde(default)]
    pub loss_spike_rollback: bool,
    /// A spike: loss above factor × its moving average ...
    #[serde(default)]
    pub loss_spike_factor: Option<f64>,
    /// ... for this many steps in a row.
    #[serde(default)]
    pub loss_spike_steps: Option<u32>,
    /// Rollbacks allowed before spikes are only reported.
    #[serde(default)]
    pub max_rollbacks: Option<u32>,
    /// Each rollback multiplies the learning-rate scale (`SUP_LR_SCALE`)
    /// by this.
    #[serde(default)]
    pub rollback_lr_scale: Option<f64>,
    /// Progress from the ranks' log lines: a regular expression with named
    /// groups `step`, `tokens`, `loss` (and optionally `step_time`,
    /// `phase`), matched by the agents.
    #[serde(default)]
    pub progress_regex: Option<String>,
}

fn default_gpus_per_node() -> u32 {
    8
}
fn one() -> u32 {
    1
}
fn default_layout() -> String {
    "dcp".to_owned()
}
fn default_priority() -> Priority {
    Priority::Normal
}
fn default_max_restarts() -> u32 {
    20
}

impl JobSpec {
    pub fn loss_spike_factor(&self) -> f64 {
        self.loss_spike_factor.unwrap_or(3.0)
    }

    pub fn loss_spike_steps(&self) -> u32 {
        self.loss_spike_steps.unwrap_or(3)
    }

    pub fn max_rollbacks(&self) -> u32 {
        self.max_rollbacks.unwrap_or(3)
    }

    /// `SUP_LR_SCALE` after `rollbacks` rollbacks.
    pub fn lr_scale_after(&self, rollbacks: u32) -> f64 {
        self.rollback_lr_scale
            .unwrap_or(0.5)
            .powi(i32::try_from(rollbacks).unwrap_or(i32::MAX))
    }

    pub fn min_nodes(&self) -> u32 {
        self.min_nodes.unwrap_or(self.nodes)
    }

    /// Whether `nodes` nodes make a world size the job can run at.
    pub fn valid_node_count(&self, nodes: u32) -> bool {
        nodes >= self.min_nodes()
            && nodes <= self.nodes
            && (u64::from(nodes) * u64::from(self.gpus_per_node))
                % u64::from(self.world_size_multiple)
                == 0
    }

    /// The largest valid node count not above `available`.
    pub fn best_node_count(&self, available: u32) -> Option<u32> {
        (self.min_nodes()..=self.nodes.min(available))
            .rev()
            .find(|&n| self.valid_node_count(n))
    }

    /// The rules a spec must meet whatever the edge it came through; the
    /// error names the field. supd's edge adds the checks that need the wire
    /// contract (reserved rank environment, the progress pattern compiling).
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 63
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "name: '{}' must be 1-63 characters of letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        match self.command.first() {
            None => return Err("command: must name a program to run".to_owned()),
            Some(p) if p.trim().is_empty() => {
                return Err("command: the program (first element) is empty".to_owned())
            }
            _ => {}
        }
        if self.nodes == 0 {
            return Err("nodes: must be at least 1".to_owned());
        }
        if let Some(min) = self.min_nodes {
            if min == 0 {
                return Err("min_nodes: must be at least 1".to_owned());
            }
            if min > self.nodes {
                return Err(format!(
                    "min_nodes: {min} is more than nodes ({})",
                    self.nodes
                ));
            }
        }
        if self.gpus_per_node == 0 || self.gpus_per_node > 64 {
            return Err("gpus_per_node: must be between 1 and 64".to_owned());
        }
        if self.world_size_multiple == 0 {
            return Err("world_size_multiple: must be at least 1".to_owned());
        }
        if self.best_node_count(self.nodes).is_none() {
            let sizes: Vec<String> = (self.min_nodes()..=self.nodes)
                .map(|n| (n * self.gpus_per_node).to_string())
                .collect();
            return Err(format!(
                "world_size_multiple: {} divides none of the possible world sizes ({}) from min_nodes {} to nodes {} at gpus_per_node {}",
                self.world_size_multiple,
                sizes.join(", "),
                self.min_nodes(),
                self.nodes,
                self.gpus_per_node
            ));
        }
        for (field, value) in [
            ("model_params", self.model_params),
            ("gpu_peak_flops", self.gpu_peak_flops),
            ("rollback_lr_scale", self.rollback_lr_scale),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                return Err(format!("{field}: must be a positive number"));
            }
        }
        if self
            .loss_spike_factor
            .is_some_and(|v| !v.is_finite() || v <= 1.0)
        {
            return Err("loss_spike_factor: must be a number above 1".to_owned());
        }
        if self.loss_spike_steps == Some(0) {
            return Err("loss_spike_steps: must be at least 1".to_owned());
        }
        if !self.checkpoint_dir.starts_with('/') {
            return Err(format!(
                "checkpoint_dir: '{}' must be an absolute path (ranks and agents resolve it on every node)",
                self.checkpoint_dir
            ));
        }
        match self.checkpoint_layout.as_str() {
            "dcp" | "megatron" | "orbax" => {}
            other => match other.strip_prefix("marker:") {
                Some(file) if !file.is_empty() && !file.contains('/') => {}
                _ => {
                    return Err(format!(
                        "checkpoint_layout: '{other}' is not one of dcp, megatron, orbax, marker:FILENAME"
                    ))
                }
            },
        }
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') {
                return Err(format!("workdir: '{dir}' must be an absolute path"));
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("env: '{key}' is not a valid variable name"));
            }
        }
        Ok(())
    }
}
