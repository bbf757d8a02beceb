//! Progress from log lines, for training scripts that cannot be changed to
//! report it: a job's `progress_regex` (job spec field) is matched on every
//! line its ranks print, and its named groups become a progress report:
//!
//! | group       | value                                   |
//! |-------------|-----------------------------------------|
//! | `step`      | completed steps (unsigned integer)      |
//! | `tokens`    | the job's cumulative tokens (integer)   |
//! | `loss`      | the loss (number; `nan`/`inf`: none)    |
//! | `step_time` | seconds per step (number, optional)     |
//! | `phase`     | `train`, `checkpoint_save`, `checkpoint_load` or `eval` (optional) |
//!
//! At least one of `step`, `tokens` and `loss` must be in the pattern, and
//! no other named group may be (a typo such as `steps` would otherwise
//! silently report nothing). Lines that do not match, or match with no
//! group taking part, are ignored; a match whose value does not parse is
//! malformed (counted, never fatal).
//!
//! supd checks the pattern when the job is submitted and the agent compiles
//! it again when it launches ranks: both use this module, so a pattern supd
//! accepted is one the agent can run.

use regex::{Regex, RegexBuilder};

/// The job spec field, named in every error.
pub const FIELD: &str = "progress_regex";
/// Longest pattern accepted.
pub const MAX_PATTERN_BYTES: usize = 4096;
/// Bound on the compiled program, so a pattern cannot make agents allocate
/// without limit (`a{1000}{1000}` and the like).
const COMPILED_SIZE_LIMIT: usize = 1 << 20;
/// Groups that carry a value.
pub const VALUE_GROUPS: [&str; 3] = ["step", "tokens", "loss"];
/// Every group a pattern may name.
pub const GROUPS: [&str; 5] = ["step", "tokens", "loss", "step_time", "phase"];
/// Phases a `phase` group may capture.
pub const PHASES: [&str; 4] = ["train", "checkpoint_save", "checkpoint_load", "eval"];

/// A checked, compiled `progress_regex`.
#[derive(Debug, Clone)]
pub struct ProgressPattern {
    regex: Regex,
}

/// What one log line reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogProgress {
    pub step: Option<u64>,
    pub tokens: Option<u64>,
    pub loss: Option<f64>,
    pub step_time_s: Option<f64>,
    pub phase: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LineMatch {
    /// Not a progress line.
    NoMatch,
    Progress(LogProgress),
    /// It matched but a value does not parse: why.
    Malformed(String),
}

impl ProgressPattern {
    /// Compiles and checks `pattern`; the error starts with the field name.
    pub fn new(pattern: &str) -> Result<ProgressPattern, String> {
        if pattern.trim().is_empty() {
            return Err(format!(
                "{FIELD}: is empty (leave it out to take progress from SUP_PROGRESS_ADDR only)"
            ));
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("{FIELD}: is longer than {MAX_PATTERN_BYTES} bytes"));
        }
        let regex = RegexBuilder::new(pattern)
            .size_limit(COMPILED_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                format!(
                    "{FIELD}: invalid regular expression: {}",
                    e.to_string().trim_end().replace('\n', " ")
                )
            })?;
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        if let Some(unknown) = names.iter().find(|n| !GROUPS.contains(n)) {
            return Err(format!(
                "{FIELD}: unknown named group '{unknown}' (known: {})",
                GROUPS.join(", ")
            ));
        }
        if !names.iter().any(|n| VALUE_GROUPS.contains(n)) {
            return Err(format!(
                "{FIELD}: needs at least one of the named groups step, tokens and loss, \
                 like (?P<step>\\d+)"
            ));
        }
        Ok(ProgressPattern { regex })
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }

    /// Matches one log line (without its newline).
    pub fn match_line(&self, line: &str) -> LineMatch {
        let Some(caps) = self.regex.captures(line) else {
            return LineMatch::NoMatch;
        };
        let text = |name: &str| caps.name(name).map(|m| m.as_str().trim());
        let mut out = LogProgress::default();
        let mut any = false;
        if let Some(v) = text("step") {
            any = true;
            match v.parse() {
                Ok(n) => out.step = Some(n),
                Err(_) => return malformed("step", v, "an unsigned integer"),
            }
        }
        if let Some(v) = text("tokens") {
            any = true;
            match v.parse() {
                Ok(n) => out.tokens = Some(n),
                Err(_) => return malformed("tokens", v, "an unsigned integer"),
            }
        }
        if let Some(v) = text("loss") {
            any = true;
            match v.parse::<f64>() {
                // A diverged loss is still a report: of the step, without a loss.
                Ok(x) => out.loss = x.is_finite().then_some(x),
                Err(_) => return malformed("loss", v, "a number"),
            }
        }
        if !any {
            return LineMatch::NoMatch;
        }
        if let Some(v) = text("step_time") {
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => out.step_time_s = Some(x),
                _ => return malformed("step_time", v, "a non-negative number of seconds"),
            }
        }
        if let Some(v) = text("phase") {
            if !PHASES.contains(&v) {
                return malformed(
                    "phase",
                    v,
                    "one of train, checkpoint_save, checkpoint_load, eval",
                );
            }
            out.phase = Some(v.to_owned());
        }
        LineMatch::Progress(out)
    }
}

fn malformed(group: &str, value: &str, expected: &str) -> LineMatch {
    let shown: String = value.chars().take(40).collect();
    LineMatch::Malformed(format!("group {group} captured {shown:?}, not {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAINER: &str = r"^step (?P<step>\S+)/\d+ loss (?P<loss>\S+) tokens (?P<tokens>\S+) step_time (?P<step_time>[\d.]+)s";

    fn progress(m: LineMatch) -> LogProgress {
        match m {
            LineMatch::Progress(p) => p,
            other => panic!("not progress: {other:?}"),
        }
    }

    #[test]
    fn the_example_trainers_lines_report_step_tokens_loss_and_time() {
        let p = ProgressPattern::new(TRAINER).expect("valid");
        let got = progress(p.match_line("step 12/100 loss 0.512345 tokens 3072 step_time 0.204s"));
        assert_eq!(
            got,
            LogProgress {
                step: Some(12),
                tokens: Some(3072),
                loss: Some(0.512345),
                step_time_s: Some(0.204),
                phase: None,
            }
        );
        assert_eq!(
            p.match_line("trainer: saved step-10 (0.01s)"),
            LineMatch::NoMatch
        );
        assert_eq!(p.match_line(""), LineMatch::NoMatch);
    }

    #[test]
    fn unparsable_values_are_malformed_and_a_diverged_loss_is_no_loss() {
        let p = ProgressPattern::new(TRAINER).expect("valid");
        for (line, group) in [
            ("step x/100 loss 1 tokens 3 step_time 0.1s", "step"),
            ("step -1/100 loss 1 tokens 3 step_time 0.1s", "step"),
            ("step 1/100 loss one tokens 3 step_time 0.1s", "loss"),
            ("step 1/100 loss 1 tokens 3.5 step_time 0.1s", "tokens"),
            ("step 1/100 loss 1 tokens 3 step_time 1.2.3s", "step_time"),
        ] {
            match p.match_line(line) {
                LineMatch::Malformed(why) => {
                    assert!(why.starts_with(&format!("group {group} ")), "{line}: {why}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        let nan = progress(p.match_line("step 3/100 loss nan tokens 9 step_time 0.1s"));
        assert_eq!((nan.step, nan.loss), (Some(3), None));
    }

    #[test]
    fn optional_groups_and_phase() {
        let p = ProgressPattern::new(r"(?:it (?P<step>\d+))?.*?(?:\[(?P<phase>\w+)\])?$")
            .expect("valid");
        assert_eq!(
            p.match_line("nothing here"),
            LineMatch::NoMatch,
            "no group took part"
        );
        let got = progress(p.match_line("it 7 [checkpoint_save]"));
        assert_eq!(
            (got.step, got.phase.as_deref()),
            (Some(7), Some("checkpoint_save"))
        );
        assert!(matches!(
            p.match_line("it 7 [lunch]"),
            LineMatch::Malformed(why) if why.contains("group phase")
        ));
    }

    #[test]
    fn bad_patterns_are_rejected_naming_the_field() {
        for (pattern, why) in [
            ("", "is empty"),
            ("step (?P<step>\\d+", "invalid regular expression"),
            ("step (\\d+)", "needs at least one of"),
            ("(?P<phase>\\w+)", "needs at least one of"),
            ("step (?P<steps>\\d+)", "unknown named group 'steps'"),
            (
                "(?P<step>\\d+)(?:a{1000}){1000}",
                "invalid regular expression",
            ),
        ] {
            let err = ProgressPattern::new(pattern).expect_err(pattern);
            assert!(
                err.starts_with("progress_regex: ") && err.contains(why),
                "{pattern}: {err}"
            );
        }
        let long = format!("(?P<step>\\d+){}", "x".repeat(MAX_PATTERN_BYTES));
        assert!(ProgressPattern::new(&long)
            .expect_err("long")
            .contains("longer than"));
        assert_eq!(
            ProgressPattern::new(TRAINER).expect("valid").as_str(),
            TRAINER
        );
    }
}
