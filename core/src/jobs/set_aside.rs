//! Checkpoints newer than a generation's resume point are set aside before
//! its ranks start.
//!
//! A generation that resumes from step N writes the steps after N again, in
//! place. A directory of such a step that already exists (a torn save, or a
//! complete one no scan had listed yet) would be rewritten file by file,
//! and until the layout's final write (DCP's `.metadata` rename) the old
//! completeness marker makes the half-rewritten directory look complete: a
//! second fault in that window would resume from mixed files. So the
//! engine names, per generation, a hidden directory inside the job's
//! `checkpoint_dir`; the agent of node rank 0 renames every newer
//! checkpoint into it before it launches (the agent knows the layouts and
//! does the I/O), and reports what it moved. Exactly one party renames:
//! node rank 0 hosts rank 0 and the rendezvous (`MASTER_ADDR`), so no rank
//! of the generation trains, nor saves, before that agent has finished.
//!
//! Here: where they go, which paths are never believed as checkpoints, and
//! what supd forgets when told what moved.

use std::collections::BTreeSet;

use super::catalog;
use crate::agent_input::clip;
use crate::messages::CheckpointsSetAside;
use crate::records::CheckpointRef;
use crate::{Engine, EventKind, Millis, ReportOutcome, SessionId};

/// The directory inside a job's `checkpoint_dir` that holds what was set
/// aside, one `g<generation>` directory per generation. Hidden: every
/// layout's scanner skips names that start with a dot, and neither DCP,
/// Megatron's tracker nor Orbax's step names can match it.
pub const SET_ASIDE_DIR: &str = ".sup-set-aside";

/// Entries of a report shown in its event; the rest are counted.
const MAX_LISTED: usize = 16;
/// An agent-sent path or detail, cut for the event.
const MAX_SHOWN: usize = 256;

/// Where generation `generation` of a job with `checkpoint_dir` sets aside
/// the checkpoints newer than `resume`. `None` without a resume point (a
/// fresh start writes every step again from the first, and a first start
/// must leave an existing directory as the job's owner left it) or without
/// a directory.
pub(crate) fn set_aside_dir(
    checkpoint_dir: &str,
    generation: u64,
    resume: Option<&CheckpointRef>,
) -> Option<String> {
    resume?;
    let dir = checkpoint_dir.trim_end_matches('/');
    if dir.is_empty() && !checkpoint_dir.starts_with('/') {
        return None;
    }
    Some(format!("{dir}/{SET_ASIDE_DIR}/g{generation}"))
}

/// Whether `path` lies in the set-aside directory of `checkpoint_dir`:
/// what is there is never a checkpoint to resume from, whatever an agent
/// lists.
pub(crate) fn is_set_aside(checkpoint_dir: &str, path: &str) -> bool {
    let dir = checkpoint_dir.trim_end_matches('/');
    path.strip_prefix(dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| rest.split('/').next() == Some(SET_ASIDE_DIR))
}

/// The paths supd must forget: those of `report` that lie inside the job's
/// `checkpoint_dir` (outside it the job never had a checkpoint to forget).
fn moved_paths(checkpoint_dir: &str, report: &CheckpointsSetAside) -> BTreeSet<String> {
    report
        .entries
        .iter()
        .filter(|e| catalog::inside(checkpoint_dir, &e.from))
        .map(|e| e.from.clone())
        .collect()
}

/// What the job's newest checkpoint becomes once `moved` are gone: the
/// generation's resume point when the newest is one of them (a newer one
/// listed after the restart was decided), else unchanged (`None`).
fn newest_after(
    newest: Option<&CheckpointRef>,
    resume: Option<&CheckpointRef>,
    moved: &BTreeSet<String>,
) -> Option<Option<CheckpointRef>> {
    let newest = newest?;
    moved
        .contains(&newest.path)
        .then(|| resume.filter(|r| !moved.contains(&r.path)).cloned())
}

fn shown(text: &str) -> String {
    let mut text = text.to_owned();
    clip(&mut text, MAX_SHOWN);
    text
}

/// The event's reason.
fn describe(
    node_id: &str,
    report: &CheckpointsSetAside,
    into: Option<&str>,
    newest: Option<(&CheckpointRef, Option<&CheckpointRef>)>,
) -> String {
    let moved = report.entries.iter().filter(|e| !e.earlier).count();
    let earlier = report.entries.len() - moved;
    let mut why = format!(
        "node {node_id} set aside {moved} path(s) newer than the resume point, step {}, before generation {} started",
        report.resume_step, report.generation
    );
    if earlier > 0 {
        why.push_str(&format!(
            " ({earlier} more set aside by an earlier pass for this generation)"
        ));
    }
    if let Some(into) = into {
        why.push_str(&format!(", into {into}"));
    }
    let listed: Vec<String> = report
        .entries
        .iter()
        .take(MAX_LISTED)
        .map(|e| {
            let step = e.step.map(|s| format!("step {s} ")).unwrap_or_default();
            let when = if e.earlier { " (earlier pass)" } else { "" };
            format!("{step}{} → {}{when}", shown(&e.from), shown(&e.to))
        })
        .collect();
    why.push_str(": ");
    why.push_str(&listed.join("; "));
    if report.entries.len() > MAX_LISTED {
        why.push_str(&format!("; and {} more", report.entries.len() - MAX_LISTED));
    }
    if !report.detail.is_empty() {
        why.push_str(&format!("; {}", shown(&report.detail)));
    }
    if let Some((was, now)) = newest {
        let now = now.map_or_else(|| "none".to_owned(), |c| format!("step {}", c.step));
        why.push_str(&format!(
            "; the job's newest checkpoint is {now} again (step {} was set aside)",
            was.step
        ));
    }
    why
}

impl Engine {
    /// An agent set aside checkpoints newer than the current generation's
    /// resume point: they are no longer where the catalog saw them, so
    /// they are forgotten (were the newest one kept, the next generation
    /// would be told to resume from a path that is gone), and an event
    /// says what moved where.
    pub fn on_checkpoints_set_aside(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        report: CheckpointsSetAside,
    ) -> ReportOutcome {
        let outcome = self.current_report(node_id, session, &report.job, report.generation);
        if !outcome.is_applied() {
            return outcome;
        }
        if report.entries.is_empty() {
            return ReportOutcome::Applied;
        }
        let Some(job) = self.jobs.get_mut(&report.job) else {
            return ReportOutcome::StaleGeneration;
        };
        let dir = job.record.spec.checkpoint_dir.clone();
        let moved = moved_paths(&dir, &report);
        job.catalog.retain(|c| !moved.contains(&c.path));
        let resume = match &job.record.resume_from {
            Some(fixed) => fixed.clone(),
            None => None,
        };
        let was = job.record.checkpoint.clone();
        let replaced = newest_after(was.as_ref(), resume.as_ref(), &moved);
        if let Some(newest) = &replaced {
            job.record.checkpoint = newest.clone();
        }
        let into = set_aside_dir(&dir, report.generation, resume.as_ref());
        let newest = match (&replaced, &was) {
            (Some(now), Some(was)) => Some((was, now.as_ref())),
            _ => None,
        };
        let why = describe(node_id, &report, into.as_deref(), newest);
        let name = report.job.clone();
        self.record_job_event(
            now,
            EventKind::CheckpointSetAside,
            Some(node_id),
            Some(&name),
            why,
        );
        if replaced.is_some() {
            self.persist_job(&name);
        }
        ReportOutcome::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::SetAsideEntry;

    fn at(step: u64, path: &str) -> CheckpointRef {
        CheckpointRef {
            step,
            path: path.to_owned(),
            ..Default::default()
        }
    }

    fn entry(step: Option<u64>, from: &str, to: &str, earlier: bool) -> SetAsideEntry {
        SetAsideEntry {
            step,
            from: from.to_owned(),
            to: to.to_owned(),
            earlier,
        }
    }

    #[test]
    fn each_generation_that_resumes_gets_its_own_hidden_directory() {
        let resume = at(20, "/ckpt/llm/step-20");
        assert_eq!(
            set_aside_dir("/ckpt/llm", 7, Some(&resume)).as_deref(),
            Some("/ckpt/llm/.sup-set-aside/g7")
        );
        assert_eq!(
            set_aside_dir("/ckpt/llm/", 8, Some(&resume)).as_deref(),
            Some("/ckpt/llm/.sup-set-aside/g8")
        );
        assert_eq!(
            set_aside_dir("/", 3, Some(&resume)).as_deref(),
            Some("/.sup-set-aside/g3")
        );
        // A fresh start has no resume point to be newer than.
        assert_eq!(set_aside_dir("/ckpt/llm", 7, None), None);
        assert_eq!(set_aside_dir("", 7, Some(&resume)), None);
    }

    #[test]
    fn paths_in_the_set_aside_directory_are_recognised_by_whole_components() {
        let dir = "/ckpt/llm/";
        assert!(is_set_aside(dir, "/ckpt/llm/.sup-set-aside/g7/step-30"));
        assert!(is_set_aside(dir, "/ckpt/llm/.sup-set-aside"));
        assert!(!is_set_aside(dir, "/ckpt/llm/step-30"));
        assert!(!is_set_aside(dir, "/ckpt/llm/.sup-set-aside-not/step-30"));
        assert!(!is_set_aside(dir, "/ckpt/llm/a/.sup-set-aside/step-30"));
        assert!(!is_set_aside(dir, "/ckpt/other/.sup-set-aside/g1/step-3"));
    }

    #[test]
    fn the_newest_checkpoint_goes_back_to_the_resume_point_only_if_it_moved() {
        let resume = at(20, "/c/step-20");
        let newer = at(30, "/c/step-30");
        let moved: BTreeSet<String> = ["/c/step-30".to_owned()].into();
        assert_eq!(
            newest_after(Some(&newer), Some(&resume), &moved),
            Some(Some(resume.clone()))
        );
        assert_eq!(newest_after(Some(&resume), Some(&resume), &moved), None);
        assert_eq!(newest_after(None, Some(&resume), &moved), None);
        // A report that claims the resume point itself moved leaves none.
        let both: BTreeSet<String> = ["/c/step-30".to_owned(), "/c/step-20".to_owned()].into();
        assert_eq!(newest_after(Some(&newer), Some(&resume), &both), Some(None));
    }

    #[test]
    fn only_paths_inside_the_checkpoint_dir_are_forgotten() {
        let report = CheckpointsSetAside {
            entries: vec![
                entry(
                    Some(30),
                    "/c/step-30",
                    "/c/.sup-set-aside/g2/step-30",
                    false,
                ),
                entry(Some(40), "/elsewhere/step-40", "/x", false),
                entry(Some(50), "/c/../d/step-50", "/x", false),
            ],
            ..Default::default()
        };
        let moved = moved_paths("/c", &report);
        assert_eq!(moved, ["/c/step-30".to_owned()].into());
    }

    #[test]
    fn the_event_says_what_moved_where_and_what_the_newest_checkpoint_is_now() {
        let report = CheckpointsSetAside {
            job: "llm".into(),
            generation: 9,
            resume_step: 20,
            entries: vec![
                entry(Some(25), "/c/step-25", "/c/.sup-set-aside/g9/step-25", true),
                entry(
                    Some(30),
                    "/c/step-30",
                    "/c/.sup-set-aside/g9/step-30",
                    false,
                ),
                entry(
                    None,
                    "/c/latest_checkpointed_iteration.txt",
                    "/c/.sup-set-aside/g9/latest_checkpointed_iteration.txt",
                    false,
                ),
            ],
            detail: "wrote /c/latest_checkpointed_iteration.txt naming iteration 20".into(),
        };
        let was = at(30, "/c/step-30");
        let now = at(20, "/c/step-20");
        let why = describe(
            "node-1",
            &report,
            Some("/c/.sup-set-aside/g9"),
            Some((&was, Some(&now))),
        );
        assert_eq!(
            why,
            "node node-1 set aside 2 path(s) newer than the resume point, step 20, before generation 9 started \
             (1 more set aside by an earlier pass for this generation), into /c/.sup-set-aside/g9: \
             step 25 /c/step-25 → /c/.sup-set-aside/g9/step-25 (earlier pass); \
             step 30 /c/step-30 → /c/.sup-set-aside/g9/step-30; \
             /c/latest_checkpointed_iteration.txt → /c/.sup-set-aside/g9/latest_checkpointed_iteration.txt; \
             wrote /c/latest_checkpointed_iteration.txt naming iteration 20; \
             the job's newest checkpoint is step 20 again (step 30 was set aside)"
        );
    }

    #[test]
    fn a_flood_of_entries_is_listed_in_part_and_counted() {
        let report = CheckpointsSetAside {
            resume_step: 1,
            generation: 2,
            entries: (0..10_000)
                .map(|i| entry(Some(i + 2), &"x".repeat(5_000), "/y", false))
                .collect(),
            ..Default::default()
        };
        let why = describe("n", &report, None, None);
        assert!(why.ends_with(&format!("; and {} more", 10_000 - MAX_LISTED)));
        assert!(
            why.len() < (MAX_LISTED + 1) * (MAX_SHOWN + 64),
            "{}",
            why.len()
        );
    }
}
