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
    /// A normal job that may take nodes from the spare reserve
    /// (`jobs.spares_target`) for its first start or to grow. Not stored
    /// when false, so records stay as older supd wrote them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_reserved_spares: bool,
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
    /// The account the ranks run as on every node (a name, or a numeric
    /// uid), resolved by each agent. Absent: the agent's own user, which an
    /// agent running as root refuses unless it allows root ranks.
    /// Not stored when absent, so records stay as older supd wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The ranks' group (name or numeric gid); default: the user's primary
    /// group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
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
fn is_false(b: &bool) -> bool {
    !*b
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

    /// The largest valid node count not above `available`. Computed, not
    /// searched: `n × gpus_per_node` is a multiple of `world_size_multiple`
    /// exactly when `n` is a multiple of `world_size_multiple / gcd(...)`,
    /// so the answer costs the same at 4 nodes and at 40 million.
    pub fn best_node_count(&self, available: u32) -> Option<u32> {
        let step = self.node_step();
        let hi = u64::from(self.nodes.min(available));
        let best = hi - hi % step;
        (best >= u64::from(self.min_nodes()) && best > 0)
            .then(|| u32::try_from(best).ok())
            .flatten()
    }

    /// Node counts must be multiples of this for the world size to be a
    /// multiple of `world_size_multiple`.
    fn node_step(&self) -> u64 {
        let m = u64::from(self.world_size_multiple.max(1));
        m / gcd(u64::from(self.gpus_per_node.max(1)), m)
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
                shown(&self.name)
            ));
        }
        if self.name == "." || self.name == ".." {
            // The agents keep each job's logs in a directory named after it.
            return Err(format!(
                "name: '{}' is not a usable name (it is a directory of its own)",
                self.name
            ));
        }
        self.check_sizes()?;
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
        if self.nodes > MAX_NODES {
            return Err(format!(
                "nodes: {} is more than the {MAX_NODES} a job may ask for",
                self.nodes
            ));
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
            // A few sizes say what went wrong; the message stays short
            // whatever the range.
            let (min, max) = (self.min_nodes(), self.nodes);
            let mut sizes: Vec<String> = (min..=max)
                .take(SIZES_SHOWN)
                .map(|n| (u64::from(n) * u64::from(self.gpus_per_node)).to_string())
                .collect();
            let count = u64::from(max - min) + 1;
            if count > SIZES_SHOWN as u64 {
                sizes.push(format!("… {count} in all"));
            }
            return Err(format!(
                "world_size_multiple: {} divides none of the possible world sizes ({}) from min_nodes {min} to nodes {max} at gpus_per_node {}",
                self.world_size_multiple,
                sizes.join(", "),
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
                shown(&self.checkpoint_dir)
            ));
        }
        match self.checkpoint_layout.as_str() {
            "dcp" | "megatron" | "orbax" => {}
            other => match other.strip_prefix("marker:") {
                Some(file) if !file.is_empty() && !file.contains('/') => {}
                _ => {
                    return Err(format!(
                    "checkpoint_layout: '{}' is not one of dcp, megatron, orbax, marker:FILENAME",
                    shown(other)
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
        for (field, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(name) = value {
                check_account_name(field, name)?;
            }
        }
        if self.group.is_some() && self.user.is_none() {
            return Err(
                "group: needs user (a group alone would still run the ranks as the agent's user)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The longest user or group name accepted: useradd's and groupadd's limit.
pub const MAX_ACCOUNT_NAME: usize = 32;

/// A user or group name as POSIX's portable character set allows it (letters,
/// digits, '.', '_', '-', not starting with '-'), or a numeric id. The
/// agents resolve it on each node; this only keeps out what no node could.
fn check_account_name(field: &str, name: &str) -> Result<(), String> {
    let portable = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > MAX_ACCOUNT_NAME || !portable || name.starts_with('-') {
        return Err(format!(
            "{field}: '{}' must be a name of 1-{MAX_ACCOUNT_NAME} letters, digits, '.', '_' and '-' (not starting with '-'), or a numeric id",
            shown(name)
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) && name.parse::<u32>().is_err() {
        return Err(format!("{field}: {name} is not a valid numeric id"));
    }
    Ok(())
}

/// The most nodes one job may ask for: beyond any cluster this is built for
/// (16,384 nodes), and small enough that nothing sized by it is a risk.
pub const MAX_NODES: u32 = 65_536;
/// World sizes listed in an error before the rest is counted.
const SIZES_SHOWN: usize = 8;
const MAX_RESTARTS: u32 = 1_000_000;
const MAX_ARGS: usize = 1_024;
const MAX_ENV: usize = 1_024;
/// Paths, arguments, variables, patterns: a generous page each.
const MAX_FIELD_BYTES: usize = 4_096;

impl JobSpec {
    /// Bounds on what a spec may carry, so a spec costs supd and every
    /// agent a bounded amount whatever an operator pastes.
    fn check_sizes(&self) -> Result<(), String> {
        if self.command.len() > MAX_ARGS {
            return Err(format!(
                "command: {} arguments, at most {MAX_ARGS}",
                self.command.len()
            ));
        }
        if let Some(i) = self.command.iter().position(|a| a.len() > MAX_FIELD_BYTES) {
            return Err(format!(
                "command: argument {i} is longer than {MAX_FIELD_BYTES} bytes"
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!(
                "env: {} variables, at most {MAX_ENV}",
                self.env.len()
            ));
        }
        if let Some((k, _)) = self
            .env
            .iter()
            .find(|(k, v)| k.len() > MAX_FIELD_BYTES || v.len() > MAX_FIELD_BYTES)
        {
            return Err(format!(
                "env: {} (name or value) is longer than {MAX_FIELD_BYTES} bytes",
                shown(k)
            ));
        }
        for (field, value) in [
            ("checkpoint_dir", Some(&self.checkpoint_dir)),
            ("checkpoint_layout", Some(&self.checkpoint_layout)),
            ("workdir", self.workdir.as_ref()),
            ("progress_regex", self.progress_regex.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_FIELD_BYTES) {
                return Err(format!("{field}: longer than {MAX_FIELD_BYTES} bytes"));
            }
        }
        if self.max_restarts > MAX_RESTARTS {
            return Err(format!(
                "max_restarts: {} is more than {MAX_RESTARTS}",
                self.max_restarts
            ));
        }
        Ok(())
    }
}

/// Operator text echoed in an error, cut so the error stays one short line.
fn shown(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: u32, min: u32, gpus: u32, multiple: u32) -> JobSpec {
        let text = format!(
            "name = \"x\"\ncommand = [\"t\"]\nnodes = {nodes}\nmin_nodes = {min}\ngpus_per_node = {gpus}\nworld_size_multiple = {multiple}\ncheckpoint_dir = \"/c\"\n"
        );
        toml::from_str(&text).expect("spec")
    }

    #[test]
    fn the_best_node_count_is_computed_as_the_search_found_it() {
        for nodes in 1..=24 {
            for min in 1..=nodes {
                for gpus in [1, 2, 3, 4, 8] {
                    for multiple in [1, 2, 3, 4, 6, 8, 16, 24] {
                        let s = spec(nodes, min, gpus, multiple);
                        for available in 0..=26 {
                            let searched = (min..=nodes.min(available))
                                .rev()
                                .find(|&n| s.valid_node_count(n));
                            assert_eq!(
                                s.best_node_count(available),
                                searched,
                                "nodes {nodes} min {min} gpus {gpus} multiple {multiple} available {available}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_spec_that_would_cost_gigabytes_is_refused_at_once_in_a_short_message() {
        // The 177-byte spec of issue 16, and the same within the node cap.
        let huge = spec(40_000_000, 1, 1, 4_294_967_291);
        let e = huge.validate().expect_err("refused");
        assert!(
            e.starts_with("nodes: 40000000 is more than the 65536"),
            "{e}"
        );
        let capped = spec(MAX_NODES, 1, 1, 4_294_967_291);
        let e = capped.validate().expect_err("refused");
        assert!(
            e.starts_with("world_size_multiple: 4294967291 divides none"),
            "{e}"
        );
        assert!(e.contains("… 65536 in all"), "{e}");
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
    }

    #[test]
    fn user_and_group_must_be_names_or_ids_and_group_needs_user() {
        let with = |user: Option<&str>, group: Option<&str>| {
            let mut s = spec(2, 1, 1, 1);
            s.user = user.map(str::to_owned);
            s.group = group.map(str::to_owned);
            s.validate()
        };
        for ok in ["nobody", "svc-train_01", "a.b", "1000", "Alice"] {
            with(Some(ok), None).unwrap_or_else(|e| panic!("{ok}: {e}"));
            with(Some("nobody"), Some(ok)).unwrap_or_else(|e| panic!("group {ok}: {e}"));
        }
        with(None, None).expect("no user: the agent decides");
        for bad in [
            "",
            "-rf",
            "a b",
            "root:root",
            "../x",
            "n\u{0}",
            "ünï",
            "99999999999",
            &"u".repeat(33),
        ] {
            let e = with(Some(bad), None).expect_err(bad);
            assert!(e.starts_with("user: "), "{bad}: {e}");
            let e = with(Some("nobody"), Some(bad)).expect_err(bad);
            assert!(e.starts_with("group: "), "{bad}: {e}");
        }
        let e = with(None, Some("video")).expect_err("group alone");
        assert!(e.starts_with("group: needs user"), "{e}");
    }

    #[test]
    fn a_spec_without_user_serialises_as_before() {
        // Stored job records must not change for jobs that set neither.
        let plain = serde_json::to_value(spec(2, 1, 1, 1)).expect("json");
        assert!(plain.get("user").is_none() && plain.get("group").is_none());
        let mut s = spec(2, 1, 1, 1);
        s.user = Some("nobody".into());
        let back: JobSpec =
            serde_json::from_value(serde_json::to_value(&s).expect("json")).expect("back");
        assert_eq!(back.user.as_deref(), Some("nobody"));
        assert_eq!(back.group, None);
    }

    #[test]
    fn dot_names_and_oversized_fields_are_refused_by_name() {
        let mut s = spec(2, 1, 1, 1);
        s.name = "..".into();
        assert!(s.validate().expect_err("..").starts_with("name: '..'"));
        s.name = "x".repeat(5_000);
        let e = s.validate().expect_err("long name");
        assert!(e.starts_with("name: ") && e.len() < 250, "{e}");
        let mut s = spec(2, 1, 1, 1);
        s.command = vec!["a".repeat(5_000)];
        assert!(s
            .validate()
            .expect_err("arg")
            .starts_with("command: argument 0"));
        let mut s = spec(2, 1, 1, 1);
        s.env.insert("K".into(), "v".repeat(5_000));
        assert!(s.validate().expect_err("env").starts_with("env: K"));
        let mut s = spec(2, 1, 1, 1);
        s.max_restarts = u32::MAX;
        assert!(s
            .validate()
            .expect_err("restarts")
            .starts_with("max_restarts"));
    }
}
