//! The rule table that turns Xids and polled signals into verdicts: parsed
//! from TOML, validated, with the shipped defaults (`deploy/xid-rules.toml`)
//! compiled in. The file documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The shipped defaults, per DESIGN.md §3.
pub const DEFAULT_RULES: &str = include_str!("../../../deploy/xid-rules.toml");

/// What one rule does to a GPU's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Ignore,
    App,
    Watch,
    Degrade,
    Fail,
}

impl Action {
    /// The health an action imposes, if any.
    pub fn severity(self) -> Option<Severity> {
        match self {
            Action::Degrade => Some(Severity::Degraded),
            Action::Fail => Some(Severity::Failed),
            Action::Ignore | Action::App | Action::Watch => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Ignore => "ignore",
            Action::App => "app",
            Action::Watch => "watch",
            Action::Degrade => "degrade",
            Action::Fail => "fail",
        })
    }
}

/// A verdict worse than ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Degraded,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XidRule {
    pub meaning: String,
    pub action: Action,
    pub advice: String,
    pub application: bool,
    /// How long a degrade/fail from one occurrence stands; `None`: for the
    /// agent's lifetime.
    pub hold: Option<Duration>,
    pub repeat: Option<Repeat>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Repeat {
    pub count: u32,
    pub within: Duration,
    pub action: Action,
    pub advice: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryRules {
    pub gpu_reset: Action,
    pub node_reboot: Action,
    pub drain_p2p: Action,
    pub drain_and_reset: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    pub gpu_lost: Action,
    pub gpu_missing: Action,
    pub ecc_dbe_volatile: Action,
    pub row_remap_failure: Action,
    pub row_remap_pending: Action,
    pub retired_pages_pending: Action,
    pub retired_pages_limit: u64,
    pub retired_pages_over_limit: Action,
    pub pcie_width_below_max: Action,
    pub pcie_gen_below_max: Action,
    pub pcie_gen_min_utilization_pct: u32,
    pub nvlink_down: Action,
    pub throttle: Action,
    /// Names and bits of the throttle reasons that count.
    pub throttle_reasons: Vec<(&'static str, u64)>,
}

/// The validated table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub unknown_xid: Action,
    pub merge_window: Duration,
    pub xids: BTreeMap<u32, XidRule>,
    pub recovery_action: RecoveryRules,
    pub checks: Checks,
}

/// NVML's clock event (throttle) reasons, by the names the file uses.
pub const THROTTLE_REASONS: &[(&str, u64)] = &[
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
];

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read GPU health rules {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid GPU health rules {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Rules {
    /// The compiled-in defaults.
    pub fn defaults() -> Rules {
        // Covered by a unit test, so this cannot fail in a built agent.
        #[allow(clippy::expect_used)]
        Rules::parse(DEFAULT_RULES).expect("the shipped deploy/xid-rules.toml is valid")
    }

    /// The file at `path`, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Rules, RulesError> {
        let Some(path) = path else {
            return Ok(Rules::defaults());
        };
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Rules::parse(&text).map_err(|message| RulesError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Rules, String> {
        // toml's message names the offending key and shows the line.
        let file: RulesFile =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        file.validate()
    }

    pub fn xid(&self, code: u32) -> Option<&XidRule> {
        self.xids.get(&code)
    }

    /// Whether an Xid is the application's fault rather than the GPU's.
    pub fn is_application(&self, code: u32) -> bool {
        self.xid(code).is_some_and(|r| r.application)
    }

    /// The longest time any rule looks back: how much Xid history to keep.
    pub fn longest_window(&self) -> Duration {
        self.xids
            .values()
            .filter_map(|r| r.repeat.as_ref().map(|rep| rep.within))
            .chain(std::iter::once(self.merge_window))
            .max()
            .unwrap_or(self.merge_window)
    }
}

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default = "default_unknown_xid")]
    unknown_xid: Action,
    #[serde(default)]
    merge_window: Option<String>,
    #[serde(default)]
    recovery_action: RecoveryFile,
    #[serde(default)]
    checks: ChecksFile,
    #[serde(default)]
    xid: Vec<XidRuleFile>,
}

fn default_unknown_xid() -> Action {
    Action::Watch
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryFile {
    gpu_reset: Option<Action>,
    node_reboot: Option<Action>,
    drain_p2p: Option<Action>,
    drain_and_reset: Option<Action>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksFile {
    gpu_lost: Option<Action>,
    gpu_missing: Option<Action>,
    ecc_dbe_volatile: Option<Action>,
    row_remap_failure: Option<Action>,
    row_remap_pending: Option<Action>,
    retired_pages_pending: Option<Action>,
    retired_pages_limit: Option<u64>,
    retired_pages_over_limit: Option<Action>,
    pcie_width_below_max: Option<Action>,
    pcie_gen_below_max: Option<Action>,
    pcie_gen_min_utilization_pct: Option<u32>,
    nvlink_down: Option<Action>,
    throttle: Option<Action>,
    throttle_reasons: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XidRuleFile {
    codes: Vec<u32>,
    meaning: String,
    action: Action,
    #[serde(default)]
    advice: String,
    application: Option<bool>,
    hold: Option<String>,
    repeat: Option<RepeatFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepeatFile {
    count: u32,
    within: String,
    action: Action,
    #[serde(default)]
    advice: String,
}

fn duration(what: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{what}: invalid duration {text:?} ({e}); expected e.g. 10s, 10m, 1h")
    })?;
    if d.is_zero() {
        return Err(format!("{what}: must be greater than zero"));
    }
    Ok(d)
}

/// Checks take a verdict action; "app" is for Xids only.
fn check_action(name: &str, action: Option<Action>, default: Action) -> Result<Action, String> {
    match action.unwrap_or(default) {
        Action::App => Err(format!(
            "checks.{name}: \"app\" applies to Xids only; use ignore, watch, degrade or fail"
        )),
        action => Ok(action),
    }
}

impl RulesFile {
    fn validate(self) -> Result<Rules, String> {
        let merge_window = match &self.merge_window {
            Some(text) => duration("merge_window", text)?,
            None => Duration::from_secs(10),
        };
        let r = &self.recovery_action;
        let recovery_action = RecoveryRules {
            gpu_reset: check_action("recovery_action.gpu_reset", r.gpu_reset, Action::Fail)?,
            node_reboot: check_action("recovery_action.node_reboot", r.node_reboot, Action::Fail)?,
            drain_p2p: check_action("recovery_action.drain_p2p", r.drain_p2p, Action::Degrade)?,
            drain_and_reset: check_action(
                "recovery_action.drain_and_reset",
                r.drain_and_reset,
                Action::Fail,
            )?,
        };
        let c = &self.checks;
        let throttle_reasons = match &c.throttle_reasons {
            None => [
                "hw_slowdown",
                "hw_thermal_slowdown",
                "hw_power_brake_slowdown",
                "sw_thermal_slowdown",
            ]
            .iter()
            .filter_map(|name| THROTTLE_REASONS.iter().find(|(n, _)| n == name).copied())
            .collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    THROTTLE_REASONS
                        .iter()
                        .find(|(n, _)| n == name)
                        .copied()
                        .ok_or_else(|| {
                            format!(
                                "checks.throttle_reasons: unknown reason {name:?} (known: {})",
                                THROTTLE_REASONS
                                    .iter()
                                    .map(|(n, _)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let pcie_gen_min_utilization_pct = c.pcie_gen_min_utilization_pct.unwrap_or(50);
        if pcie_gen_min_utilization_pct > 100 {
            return Err(format!(
                "checks.pcie_gen_min_utilization_pct: {pcie_gen_min_utilization_pct} is not a percentage"
            ));
        }
        let checks = Checks {
            gpu_lost: check_action("gpu_lost", c.gpu_lost, Action::Fail)?,
            gpu_missing: check_action("gpu_missing", c.gpu_missing, Action::Fail)?,
            ecc_dbe_volatile: check_action("ecc_dbe_volatile", c.ecc_dbe_volatile, Action::Fail)?,
            row_remap_failure: check_action(
                "row_remap_failure",
                c.row_remap_failure,
                Action::Fail,
            )?,
            row_remap_pending: check_action(
                "row_remap_pending",
                c.row_remap_pending,
                Action::Degrade,
            )?,
            retired_pages_pending: check_action(
                "retired_pages_pending",
                c.retired_pages_pending,
                Action::Degrade,
            )?,
            retired_pages_limit: c.retired_pages_limit.unwrap_or(60),
            retired_pages_over_limit: check_action(
                "retired_pages_over_limit",
                c.retired_pages_over_limit,
                Action::Fail,
            )?,
            pcie_width_below_max: check_action(
                "pcie_width_below_max",
                c.pcie_width_below_max,
                Action::Degrade,
            )?,
            pcie_gen_below_max: check_action(
                "pcie_gen_below_max",
                c.pcie_gen_below_max,
                Action::Degrade,
            )?,
            pcie_gen_min_utilization_pct,
            nvlink_down: check_action("nvlink_down", c.nvlink_down, Action::Degrade)?,
            throttle: check_action("throttle", c.throttle, Action::Degrade)?,
            throttle_reasons,
        };

        let mut xids = BTreeMap::new();
        for (n, rule) in self.xid.into_iter().enumerate() {
            let at = format!("xid rule {} (codes {:?})", n + 1, rule.codes);
            if rule.codes.is_empty() {
                return Err(format!("{at}: codes must name at least one Xid"));
            }
            if rule.meaning.trim().is_empty() {
                return Err(format!("{at}: meaning must not be empty"));
            }
            let hold = rule
                .hold
                .as_deref()
                .map(|text| duration(&format!("{at}: hold"), text))
                .transpose()?;
            let repeat = match rule.repeat {
                None => None,
                Some(rep) => {
                    if rep.count < 2 {
                        return Err(format!(
                            "{at}: repeat.count must be at least 2 (one occurrence is `action`)"
                        ));
                    }
                    Some(Repeat {
                        count: rep.count,
                        within: duration(&format!("{at}: repeat.within"), &rep.within)?,
                        action: rep.action,
                        advice: rep.advice,
                    })
                }
            };
            let compiled = XidRule {
                meaning: rule.meaning,
                action: rule.action,
                advice: rule.advice,
                application: rule.application.unwrap_or(rule.action == Action::App),
                hold,
                repeat,
            };
            for code in rule.codes {
                if xids.insert(code, compiled.clone()).is_some() {
                    return Err(format!("{at}: Xid {code} already has a rule"));
                }
            }
        }
        Ok(Rules {
            unknown_xid: self.unknown_xid,
            merge_window,
            xids,
            recovery_action,
            checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_parse_and_follow_the_design_table() {
        let rules = Rules::parse(DEFAULT_RULES).expect("deploy/xid-rules.toml is valid");
        let action = |code| rules.xid(code).map(|r| r.action);
        for code in [13, 31, 43, 45] {
            assert_eq!(action(code), Some(Action::App), "Xid {code}");
            assert!(rules.is_application(code), "Xid {code}");
        }
        for code in [
            48, 64, 79, 95, 46, 62, 109, 110, 119, 120, 136, 140, 143, 155, 158,
        ] {
            assert_eq!(action(code), Some(Action::Fail), "Xid {code}");
            assert!(!rules.is_application(code), "Xid {code}");
        }
        assert_eq!(action(63), Some(Action::Watch));
        assert_eq!(action(92), Some(Action::Watch));
        assert_eq!(action(154), Some(Action::Watch));
        assert_eq!(action(74), Some(Action::Degrade));
        let repeat13 = rules
            .xid(13)
            .and_then(|r| r.repeat.clone())
            .expect("13 repeats");
        assert_eq!(repeat13.action, Action::Degrade);
        let repeat74 = rules
            .xid(74)
            .and_then(|r| r.repeat.clone())
            .expect("74 repeats");
        assert_eq!(repeat74.action, Action::Fail);
        assert_eq!(rules.unknown_xid, Action::Watch);
        assert_eq!(rules.recovery_action.node_reboot, Action::Fail);
        assert_eq!(rules.recovery_action.drain_p2p, Action::Degrade);
        assert_eq!(rules.checks.row_remap_pending, Action::Degrade);
        assert_eq!(rules.longest_window(), Duration::from_secs(24 * 3600));
        assert_eq!(rules, Rules::defaults());
    }

    #[test]
    fn an_empty_file_keeps_check_defaults_and_has_no_xid_rules() {
        let rules = Rules::parse("").expect("valid");
        assert!(rules.xids.is_empty());
        assert_eq!(rules.checks, Rules::defaults().checks);
        assert_eq!(rules.recovery_action, Rules::defaults().recovery_action);
    }

    #[test]
    fn mistakes_are_refused_and_named() {
        for (text, needle) in [
            ("unknown_xd = \"watch\"", "unknown_xd"),
            ("[checks]\necc_dbe = \"fail\"", "ecc_dbe"),
            ("[checks]\nthrottle = \"explode\"", "explode"),
            ("[checks]\ngpu_lost = \"app\"", "Xids only"),
            ("[checks]\nthrottle_reasons = [\"too_hot\"]", "too_hot"),
            ("[[xid]]\ncodes = [79]\nmeaning = \"x\"\naction = \"fail\"\nadvise = \"y\"", "advise"),
            (
                "[[xid]]\ncodes = [79]\nmeaning = \"x\"\naction = \"fail\"\n[[xid]]\ncodes = [79]\nmeaning = \"y\"\naction = \"watch\"",
                "Xid 79 already has a rule",
            ),
            (
                "[[xid]]\ncodes = [13]\nmeaning = \"x\"\naction = \"app\"\nrepeat = { count = 1, within = \"1m\", action = \"fail\" }",
                "at least 2",
            ),
            (
                "[[xid]]\ncodes = [13]\nmeaning = \"x\"\naction = \"app\"\nrepeat = { count = 3, within = \"soon\", action = \"fail\" }",
                "invalid duration",
            ),
            ("[[xid]]\ncodes = []\nmeaning = \"x\"\naction = \"fail\"", "at least one"),
            ("merge_window = \"0s\"", "greater than zero"),
        ] {
            let err = Rules::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let err = Rules::load(Some(Path::new("/nonexistent/rules.toml"))).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/rules.toml"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "unknown_xid = \"fial\"").expect("write");
        let err = Rules::load(Some(&path)).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("rules.toml") && text.contains("fial"),
            "{text}"
        );
    }

    #[test]
    fn application_flag_can_be_set_apart_from_the_action() {
        let rules = Rules::parse(
            "[[xid]]\ncodes = [94]\nmeaning = \"contained ECC\"\naction = \"watch\"\napplication = true",
        )
        .expect("valid");
        assert!(rules.is_application(94));
    }
}
