//! What an agent's checkpoint catalog is believed for. Every node of a job
//! reports the checkpoints it found complete, and the newest becomes the
//! resume point of every rank of the next generation, so one compromised
//! or confused node must not be able to choose it: an entry counts only if
//! its path lies inside the job's `checkpoint_dir` and its step is one the
//! job can have reached.

use crate::records::CheckpointRef;

/// How far past the highest step the job reported progress for a
/// checkpoint may be: progress reaches supd in batches and a save may be
/// catalogued before the step's report arrives; a step further ahead than
/// this is not one the job reached.
fn step_margin(best: u64) -> u64 {
    (best / 10).max(1_000)
}

/// Why `entry` is not believed, if it is not. `best_step` is the highest
/// step the job reported progress for (`None`: it never did, so steps
/// cannot be checked and only the path is).
pub(crate) fn refusal(dir: &str, best_step: Option<u64>, entry: &CheckpointRef) -> Option<String> {
    if !inside(dir, &entry.path) {
        return Some(format!(
            "{} is not inside the job's checkpoint_dir {dir}",
            shown(&entry.path)
        ));
    }
    let best = best_step?;
    let limit = best.saturating_add(step_margin(best));
    (entry.step > limit).then(|| {
        format!(
            "step {} is beyond any the job reached (highest reported {best}, at most {limit} believed)",
            entry.step
        )
    })
}

/// Whether `path` names something below `dir` by whole components, with
/// no `.`, `..` or empty component to climb out or alias with. (Symlinks
/// are the agent's to refuse: only it can see the filesystem.)
fn inside(dir: &str, path: &str) -> bool {
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
fn shown(s: &str) -> String {
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
    fn steps_beyond_the_reported_progress_and_its_margin_are_not() {
        let dir = "/c";
        assert_eq!(refusal(dir, Some(500), &at(1_500, "/c/s")), None);
        let why = refusal(dir, Some(500), &at(1_501, "/c/s")).expect("too far");
        assert!(
            why.starts_with(
                "step 1501 is beyond any the job reached (highest reported 500, at most 1500"
            ),
            "{why}"
        );
        assert!(refusal(dir, Some(50_000), &at(55_000, "/c/s")).is_none());
        assert!(refusal(dir, Some(u64::MAX - 1), &at(u64::MAX, "/c/s")).is_none());
        assert!(refusal(dir, Some(7), &at(u64::MAX, "/c/s")).is_some());
        // A job that never reported progress: only the path is checked.
        assert!(refusal(dir, None, &at(u64::MAX, "/c/s")).is_none());
    }
}
