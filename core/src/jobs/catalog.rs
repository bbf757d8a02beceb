//! What an agent's checkpoint catalog is believed for. Every node of a job
//! reports the checkpoints it found complete, and the newest becomes the
//! resume point of every rank of the next generation, so one compromised
//! or confused node must not be able to choose it: an entry counts only if
//! its path lies inside the job's `checkpoint_dir` and its step is one the
//! job can have reached: within a margin of the highest step it reported
//! progress for; before its first progress report, a small one; a job that
//! runs past the startup allowance without ever reporting progress gives
//! nothing to check steps against.

use crate::records::CheckpointRef;

/// How far past the highest step the job reported progress for a
/// checkpoint may be: progress reaches supd in batches and a save may be
/// catalogued before the step's report arrives; a step further ahead than
/// this is not one the job reached.
fn step_margin(best: u64) -> u64 {
    (best / 10).max(1_000)
}

/// What bounds the steps a job can have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepBound {
    /// The highest step the job reported progress for.
    Reported(u64),
    /// No progress reported yet: a step beyond the first margin is not
    /// believed yet (the next scan lists it again).
    AwaitingProgress,
    /// The job has run past the startup allowance without ever reporting
    /// progress: it does not report any, and its steps cannot be checked.
    Unchecked,
}

/// What becomes of one catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Belief {
    Believed,
    /// Never: the reason names what is wrong.
    Refused(String),
    /// Not until the job reports progress that covers it.
    NotYet(String),
}

/// What `entry` is believed for, given the job's `checkpoint_dir` and what
/// bounds its steps.
pub(crate) fn belief(dir: &str, bound: StepBound, entry: &CheckpointRef) -> Belief {
    if !inside(dir, &entry.path) {
        return Belief::Refused(format!(
            "{} is not inside the job's checkpoint_dir {dir}",
            shown(&entry.path)
        ));
    }
    if super::set_aside::is_set_aside(dir, &entry.path) {
        return Belief::Refused(format!(
            "{} was set aside: it is newer than a resume point and may be rewritten or mixed",
            shown(&entry.path)
        ));
    }
    match bound {
        StepBound::Unchecked => Belief::Believed,
        StepBound::Reported(best) => {
            let limit = best.saturating_add(step_margin(best));
            if entry.step > limit {
                Belief::Refused(format!(
                    "step {} is beyond any the job reached (its nodes agree on step {best}, at most {limit} believed)",
                    entry.step
                ))
            } else {
                Belief::Believed
            }
        }
        StepBound::AwaitingProgress => {
            let limit = step_margin(0);
            if entry.step > limit {
                Belief::NotYet(format!(
                    "step {} is not believed before the job reports progress (at most {limit} until then)",
                    entry.step
                ))
            } else {
                Belief::Believed
            }
        }
    }
}

/// Whether `path` names something below `dir` by whole components, with
/// no `.`, `..` or empty component to climb out or alias with. (Symlinks
/// are the agent's to refuse: only it can see the filesystem.)
pub(crate) fn inside(dir: &str, path: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    let Some(rest) = path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An agent-sent path, cut for an event.
pub(crate) fn shown(s: &str) -> String {
    const SHOWN: usize = 200;
    if s.len() <= SHOWN {
        return format!("'{s}'");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("'{}…' ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, path: &str) -> CheckpointRef {
        CheckpointRef {
            step,
            path: path.to_owned(),
            ..Default::default()
        }
    }

    fn refusal(dir: &str, best: Option<u64>, entry: &CheckpointRef) -> Option<String> {
        let bound = best.map_or(StepBound::Unchecked, StepBound::Reported);
        match belief(dir, bound, entry) {
            Belief::Believed => None,
            Belief::Refused(why) | Belief::NotYet(why) => Some(why),
        }
    }

    #[test]
    fn only_paths_below_the_checkpoint_dir_are_believed() {
        let dir = "/ckpt/llm/";
        assert_eq!(refusal(dir, None, &at(10, "/ckpt/llm/step-10")), None);
        assert_eq!(refusal(dir, None, &at(10, "/ckpt/llm/a/b/step-10")), None);
        for bad in [
            "/etc/passwd",
            "/ckpt/llm",
            "/ckpt/llm/",
            "/ckpt/llm-evil/step-10",
            "/ckpt/llm/../other/step-10",
            "/ckpt/llm/./step-10",
            "/ckpt/llm//step-10",
            "relative/step-10",
        ] {
            let why = refusal(dir, None, &at(10, bad)).expect(bad);
            assert!(
                why.contains("not inside the job's checkpoint_dir /ckpt/llm"),
                "{why}"
            );
        }
    }

    #[test]
    fn nothing_in_the_set_aside_directory_is_believed() {
        let why = refusal("/c", None, &at(30, "/c/.sup-set-aside/g7/step-30")).expect("refused");
        assert_eq!(
            why,
            "'/c/.sup-set-aside/g7/step-30' was set aside: it is newer than a resume point and may be rewritten or mixed"
        );
        assert_eq!(refusal("/c", None, &at(30, "/c/step-30")), None);
    }

    #[test]
    fn steps_beyond_the_reported_progress_and_its_margin_are_not() {
        let dir = "/c";
        assert_eq!(refusal(dir, Some(500), &at(1_500, "/c/s")), None);
        let why = refusal(dir, Some(500), &at(1_501, "/c/s")).expect("too far");
        assert!(
            why.starts_with(
                "step 1501 is beyond any the job reached (its nodes agree on step 500, at most 1500"
            ),
            "{why}"
        );
        assert!(refusal(dir, Some(50_000), &at(55_000, "/c/s")).is_none());
        assert!(refusal(dir, Some(u64::MAX - 1), &at(u64::MAX, "/c/s")).is_none());
        assert!(refusal(dir, Some(7), &at(u64::MAX, "/c/s")).is_some());
        // A job that never reported progress past its startup allowance:
        // only the path is checked.
        assert!(refusal(dir, None, &at(u64::MAX, "/c/s")).is_none());
    }

    #[test]
    fn before_the_first_progress_report_only_small_steps_are_believed() {
        let at_step = |step| belief("/c", StepBound::AwaitingProgress, &at(step, "/c/s"));
        assert_eq!(at_step(1_000), Belief::Believed);
        let Belief::NotYet(why) = at_step(u64::MAX) else {
            panic!("not believed yet");
        };
        assert!(
            why.starts_with(
                "step 18446744073709551615 is not believed before the job reports progress"
            ),
            "{why}"
        );
    }
}
