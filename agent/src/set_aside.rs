//! Setting aside the checkpoints newer than a generation's resume point,
//! before its ranks start.
//!
//! A generation that resumes from step N writes the steps after N again, in
//! place. Were a directory of such a step already there (a torn save, or a
//! complete one no scan had listed yet), its old completeness marker (DCP's
//! `.metadata`, a tracker, a marker file) would make it look complete while
//! its shards are being rewritten, and a second fault in that window would
//! resume from mixed files. So supd names a directory per generation
//! (`<checkpoint_dir>/.sup-set-aside/g<generation>`, in the assignment's
//! `set_aside_dir`) and the agent of node rank 0 renames every newer step
//! into it before it launches its ranks: node rank 0 hosts rank 0 and the
//! rendezvous, so no rank of the generation can train, let alone save,
//! before this is done, and one party renames (a node rank that moves to
//! another node moves the duty with it). Renamed, never deleted: an
//! operator may still want a complete one.
//!
//! What is newer is decided per layout by the names its scanner reads
//! ([`crate::checkpoint`]), torn or in-progress forms included (an Orbax
//! `<step>.orbax-checkpoint-tmp-<ts>` directory, a DCP directory without
//! `.metadata`). Megatron's tracker, when it names a moved iteration, is
//! set aside too and written again naming the resume point: Megatron
//! follows it when it loads. Hidden names are never touched (the
//! set-aside directory itself is one), nor the resume point, nor anything
//! older.
//!
//! Idempotent: an agent restarted before it launched finds what the
//! previous one moved in the generation's directory (reported as moved by
//! an earlier pass) and moves what is left. A second launch of the same
//! generation (its ranks died with the agent) moves what they wrote past
//! the resume point too, since it will be written again; names taken in
//! the directory get a `~<n>` suffix.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sup_proto::v1::{Checkpoint, CheckpointsSetAside, SetAsideEntry};
use tracing::warn;

use crate::checkpoint::{
    orbax_step, trailing_number, Layout, MEGATRON_DIGITS, MEGATRON_PREFIX, MEGATRON_TRACKER,
    ORBAX_TMP,
};

/// What was set aside (by this pass or an earlier one for the same
/// generation), and anything else done to keep the layout consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    pub entries: Vec<SetAsideEntry>,
    /// Empty: nothing else.
    pub detail: String,
}

/// A rename (or a listing it needed) failed: what was done before it, and
/// the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub done: Done,
    pub error: String,
}

/// The step `layout` gives a directory named `name`, in any of the forms
/// its saves take on the way to complete; `None` when it is not one.
pub fn step_of(layout: &Layout, name: &str) -> Option<u64> {
    if name.starts_with('.') {
        return None;
    }
    match layout {
        Layout::Dcp | Layout::Marker(_) => trailing_number(name),
        Layout::Megatron => {
            let digits = name.strip_prefix(MEGATRON_PREFIX)?;
            if digits.len() < MEGATRON_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        }
        Layout::Orbax => match name.split_once(ORBAX_TMP) {
            Some((step_name, _)) => orbax_step(step_name),
            None => orbax_step(name),
        },
    }
}

/// Of `entries` (name, whether a directory) in a checkpoint directory, the
/// directories `layout` gives a step above `resume_step`, never the one
/// named `resume_name`; by step, then name.
pub fn newer_than(
    layout: &Layout,
    entries: &[(String, bool)],
    resume_step: u64,
    resume_name: Option<&str>,
) -> Vec<(String, u64)> {
    let mut newer: Vec<(String, u64)> = entries
        .iter()
        .filter(|(name, is_dir)| *is_dir && Some(name.as_str()) != resume_name)
        .filter_map(|(name, _)| Some((name.clone(), step_of(layout, name)?)))
        .filter(|(_, step)| *step > resume_step)
        .collect();
    newer.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    newer
}

/// Whether Megatron's tracker, reading `text`, names an iteration above
/// `resume_step` (then Megatron would load it, or fail to once it is set
/// aside). A tracker that does not parse is left as it is: the scanner
/// already does not trust it.
pub fn tracker_is_newer(text: &str, resume_step: u64) -> bool {
    text.trim()
        .parse::<u64>()
        .is_ok_and(|iteration| iteration > resume_step)
}

/// `name`, or `name~2`, `name~3`, ... whichever `taken` does not hold.
pub fn free_name(name: &str, taken: &BTreeSet<String>) -> String {
    if !taken.contains(name) {
        return name.to_owned();
    }
    (2u64..)
        .map(|n| format!("{name}~{n}"))
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or_else(|| name.to_owned())
}

/// The name an entry of the set-aside directory had where it came from.
fn original_name(name: &str) -> &str {
    match name.rsplit_once('~') {
        Some((original, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => original,
        _ => name,
    }
}

/// `set_aside` must be a directory below `checkpoint_dir` whose first
/// component there is hidden, so that no layout's scanner reads it; an
/// assignment that names anything else is refused.
pub fn check_destination(checkpoint_dir: &Path, set_aside: &Path) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "refusing set_aside_dir {}: {why}",
            set_aside.display()
        ))
    };
    let Ok(rest) = set_aside.strip_prefix(checkpoint_dir) else {
        return refuse(&format!(
            "not inside the checkpoint directory {}",
            checkpoint_dir.display()
        ));
    };
    let components: Vec<Component<'_>> = rest.components().collect();
    if components.is_empty() || !components.iter().all(|c| matches!(c, Component::Normal(_))) {
        return refuse("not a plain directory below the checkpoint directory");
    }
    let hidden = matches!(components[0], Component::Normal(first) if first.to_string_lossy().starts_with('.'));
    if !hidden {
        return refuse("not under a hidden directory, where a scanner could list it");
    }
    Ok(())
}

/// The entries of `dir` that are not hidden and have UTF-8 names, with
/// whether each is a directory (following symlinks, as the scanner does).
fn listing(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.path().is_dir();
        out.push((name, is_dir));
    }
    Ok(out)
}

/// Names already in `dir` (none when it does not exist).
fn names_in(dir: &Path) -> io::Result<BTreeSet<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

fn shown(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Moves every checkpoint in `checkpoint_dir` newer than `resume` (by the
/// rules of `layout`) into `set_aside` (see the module's documentation).
/// Blocks on the file system.
pub fn set_aside(
    checkpoint_dir: &Path,
    layout: &str,
    resume: &Checkpoint,
    set_aside: &Path,
) -> Result<Done, Failed> {
    let mut done = Done::default();
    let fail = |done: Done, error: String| Failed { done, error };
    let layout: Layout = match layout.parse() {
        Ok(layout) => layout,
        Err(e) => return Err(fail(done, e.to_string())),
    };
    if let Err(e) = check_destination(checkpoint_dir, set_aside) {
        return Err(fail(done, e));
    }
    let mut taken = match names_in(set_aside) {
        Ok(taken) => taken,
        Err(e) => {
            let error = format!("cannot list {}: {e}", set_aside.display());
            return Err(fail(done, error));
        }
    };
    for name in &taken {
        let original = original_name(name);
        done.entries.push(SetAsideEntry {
            step: step_of(&layout, original),
            from: shown(&checkpoint_dir.join(original)),
            to: shown(&set_aside.join(name)),
            earlier: true,
        });
    }
    let entries = match listing(checkpoint_dir) {
        Ok(entries) => entries,
        // Nothing was ever saved there: nothing to be newer.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(e) => {
            let error = format!("cannot list {}: {e}", checkpoint_dir.display());
            return Err(fail(done, error));
        }
    };
    let resume_name = Path::new(&resume.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let newer = newer_than(&layout, &entries, resume.step, resume_name.as_deref());
    let tracker = checkpoint_dir.join(MEGATRON_TRACKER);
    let tracker_newer = layout == Layout::Megatron
        && fs::read_to_string(&tracker).is_ok_and(|t| tracker_is_newer(&t, resume.step));
    if newer.is_empty() && !tracker_newer {
        return Ok(done);
    }
    if let Err(e) = create_owned_like(checkpoint_dir, set_aside) {
        let error = format!("cannot create {}: {e}", set_aside.display());
        return Err(fail(done, error));
    }
    let mut moves: Vec<(String, Option<u64>)> =
        newer.into_iter().map(|(n, s)| (n, Some(s))).collect();
    if tracker_newer {
        moves.push((MEGATRON_TRACKER.to_owned(), None));
    }
    for (name, step) in moves {
        let from = checkpoint_dir.join(&name);
        let to_name = free_name(&name, &taken);
        let to = set_aside.join(&to_name);
        if let Err(e) = fs::rename(&from, &to) {
            let what = step.map_or_else(|| "the tracker".to_owned(), |s| format!("step {s}"));
            let error = format!(
                "cannot set aside {} ({what}, newer than the resume point step {}) to {}: {e}",
                from.display(),
                resume.step,
                to.display()
            );
            return Err(fail(done, error));
        }
        taken.insert(to_name);
        done.entries.push(SetAsideEntry {
            step,
            from: shown(&from),
            to: shown(&to),
            earlier: false,
        });
    }
    if tracker_newer {
        if let Err(e) = write_atomic(&tracker, format!("{}\n", resume.step).as_bytes()) {
            let error = format!(
                "set aside {} but cannot write it again naming iteration {}: {e}",
                tracker.display(),
                resume.step
            );
            return Err(fail(done, error));
        }
        done.detail = format!(
            "wrote {} naming iteration {} (the resume point)",
            tracker.display(),
            resume.step
        );
    }
    // The renames survive a power loss only once the directories are on
    // disk; a failure here leaves them done in memory, which is no reason
    // to refuse the launch.
    for dir in [checkpoint_dir, set_aside] {
        if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
            warn!("cannot fsync {}: {e}", dir.display());
        }
    }
    Ok(done)
}

/// Creates `dir` and the missing directories above it, owned like `owner`
/// when the agent runs as root: the job's user may then clean them up.
fn create_owned_like(owner: &Path, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.exists()) {
        missing.push(d.to_owned());
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let meta = fs::metadata(owner)?;
    for d in missing {
        if let Err(e) = std::os::unix::fs::chown(&d, Some(meta.uid()), Some(meta.gid())) {
            warn!("cannot give {} to uid {}: {e}", d.display(), meta.uid());
        }
    }
    Ok(())
}

/// Whole file or nothing, as Megatron writes it.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.sup-{}", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// The report for supd.
pub fn report(job: &str, generation: u64, resume_step: u64, done: &Done) -> CheckpointsSetAside {
    CheckpointsSetAside {
        job: job.to_owned(),
        generation,
        resume_step,
        entries: done.entries.clone(),
        detail: done.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect()
    }

    fn layout(s: &str) -> Layout {
        s.parse().expect("layout")
    }

    #[test]
    fn every_layout_names_its_newer_steps_in_progress_or_complete() {
        let dcp = names(&[
            ("step-10", true),
            ("step-20", true),
            ("step-30", true),
            ("checkpoint-40", true),
            ("step-50.tmp", true),
            ("final.bin", false),
            ("step-99", false),
            (".sup-set-aside", true),
        ]);
        for l in ["dcp", "marker:COMPLETE"] {
            assert_eq!(
                newer_than(&layout(l), &dcp, 20, Some("step-20")),
                vec![("step-30".to_owned(), 30), ("checkpoint-40".to_owned(), 40)],
                "{l}"
            );
        }
        let megatron = names(&[
            ("iter_0000010", true),
            ("iter_0000020", true),
            ("iter_0000030", true),
            ("iter_30", true),
            ("release", true),
            ("latest_checkpointed_iteration.txt", false),
        ]);
        assert_eq!(
            newer_than(&layout("megatron"), &megatron, 20, Some("iter_0000020")),
            vec![("iter_0000030".to_owned(), 30)]
        );
        let orbax = names(&[
            ("10", true),
            ("20", true),
            ("30", true),
            ("40.orbax-checkpoint-tmp-1712345678", true),
            ("checkpoint_50", true),
            ("checkpoint_60.orbax-checkpoint-tmp-1", true),
            ("latest", false),
        ]);
        assert_eq!(
            newer_than(&layout("orbax"), &orbax, 20, Some("20")),
            vec![
                ("30".to_owned(), 30),
                ("40.orbax-checkpoint-tmp-1712345678".to_owned(), 40),
                ("checkpoint_50".to_owned(), 50),
                ("checkpoint_60.orbax-checkpoint-tmp-1".to_owned(), 60),
            ]
        );
    }

    #[test]
    fn the_resume_point_and_older_steps_are_never_chosen() {
        let entries = names(&[("step-20", true), ("step_20", true), ("step-5", true)]);
        assert!(newer_than(&layout("dcp"), &entries, 20, Some("step-20")).is_empty());
        // Even a resume path whose name claims a newer step stays.
        let odd = names(&[("step-99", true)]);
        assert!(newer_than(&layout("dcp"), &odd, 20, Some("step-99")).is_empty());
    }

    #[test]
    fn taken_names_get_a_numbered_suffix_and_come_back_to_their_original() {
        let taken: BTreeSet<String> = ["step-30".to_owned(), "step-30~2".to_owned()].into();
        assert_eq!(free_name("step-40", &taken), "step-40");
        assert_eq!(free_name("step-30", &taken), "step-30~3");
        assert_eq!(original_name("step-30~3"), "step-30");
        assert_eq!(original_name("step-30"), "step-30");
        assert_eq!(original_name("odd~name"), "odd~name");
    }

    #[test]
    fn only_a_hidden_directory_inside_the_checkpoint_dir_is_a_destination() {
        let ckpt = Path::new("/ckpt/llm");
        assert!(check_destination(ckpt, Path::new("/ckpt/llm/.sup-set-aside/g7")).is_ok());
        for bad in [
            "/ckpt/llm/set-aside/g7",
            "/ckpt/llm",
            "/ckpt/other/.sup-set-aside/g7",
            "/ckpt/llm/.sup-set-aside/../step-7",
            "relative/.sup-set-aside",
        ] {
            let err = check_destination(ckpt, Path::new(bad)).expect_err(bad);
            assert!(err.starts_with("refusing set_aside_dir "), "{err}");
        }
    }

    #[test]
    fn a_tracker_is_newer_only_when_it_names_a_later_iteration() {
        assert!(tracker_is_newer("30\n", 20));
        assert!(!tracker_is_newer("20", 20));
        assert!(!tracker_is_newer("", 20));
        assert!(!tracker_is_newer("release", 20));
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new(files: &[&str]) -> Dir {
            let dir = Dir(tempfile::tempdir().expect("tempdir"));
            for rel in files {
                dir.write(rel, "x");
            }
            dir
        }

        fn write(&self, rel: &str, content: &str) {
            let path = self.0.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.path().join(rel)
        }

        fn ckpt(&self, step: u64, rel: &str) -> Checkpoint {
            Checkpoint {
                step,
                path: shown(&self.path(rel)),
                ..Default::default()
            }
        }

        fn run(&self, layout: &str, resume: &Checkpoint, generation: u64) -> Result<Done, Failed> {
            let dest = self.path(&format!(".sup-set-aside/g{generation}"));
            set_aside(self.0.path(), layout, resume, &dest)
        }

        fn moved(done: &Done) -> Vec<(Option<u64>, String, bool)> {
            done.entries
                .iter()
                .map(|e| {
                    let to = e.to.rsplit('/').next().unwrap_or_default().to_owned();
                    (e.step, to, e.earlier)
                })
                .collect()
        }
    }

    #[test]
    fn newer_steps_move_into_the_generations_directory_and_the_scan_no_longer_lists_them() {
        let d = Dir::new(&[
            "step-10/shard-0.bin",
            "step-10/COMPLETE",
            "step-20/shard-0.bin",
            "step-20/COMPLETE",
            // Complete, never seen by supd.
            "step-30/shard-0.bin",
            "step-30/COMPLETE",
            // Torn.
            "step-40/shard-0.bin",
            "final.bin",
        ]);
        let resume = d.ckpt(20, "step-20");
        let done = d.run("marker:COMPLETE", &resume, 7).expect("set aside");
        assert_eq!(
            Dir::moved(&done),
            vec![
                (Some(30), "step-30".to_owned(), false),
                (Some(40), "step-40".to_owned(), false)
            ]
        );
        assert_eq!(done.entries[0].from, shown(&d.path("step-30")));
        assert!(d.path(".sup-set-aside/g7/step-30/COMPLETE").is_file());
        assert!(d.path(".sup-set-aside/g7/step-40/shard-0.bin").is_file());
        assert!(d.path("step-20/COMPLETE").is_file() && d.path("step-10").is_dir());
        assert!(d.path("final.bin").is_file());
        let listed: Vec<u64> = crate::checkpoint::complete(d.0.path(), "marker:COMPLETE")
            .expect("scan")
            .1
            .iter()
            .map(|(step, _)| *step)
            .collect();
        assert_eq!(
            listed,
            vec![10, 20],
            "nothing under the set-aside directory"
        );

        // Again (an agent restarted before it launched): nothing more to
        // move, and what the first pass moved is reported as earlier.
        let again = d.run("marker:COMPLETE", &resume, 7).expect("again");
        assert_eq!(
            Dir::moved(&again),
            vec![
                (Some(30), "step-30".to_owned(), true),
                (Some(40), "step-40".to_owned(), true)
            ]
        );
        assert_eq!(again.entries[0].from, shown(&d.path("step-30")));

        // The generation's ranks died with the agent after writing step 30
        // again; launched once more, it moves that one beside the first.
        d.write("step-30/COMPLETE", "");
        let third = d.run("marker:COMPLETE", &resume, 7).expect("third");
        assert!(
            Dir::moved(&third).contains(&(Some(30), "step-30~2".to_owned(), false)),
            "{third:?}"
        );
        assert!(d.path(".sup-set-aside/g7/step-30~2/COMPLETE").is_file());
    }

    #[test]
    fn nothing_newer_creates_nothing() {
        let d = Dir::new(&["step-10/.metadata", "step-20/.metadata"]);
        let done = d.run("dcp", &d.ckpt(20, "step-20"), 3).expect("ok");
        assert_eq!(done, Done::default());
        assert!(!d.path(".sup-set-aside").exists());
        let missing = Dir::new(&[]);
        let resume = missing.ckpt(20, "gone/step-20");
        let dest = missing.path("gone/.sup-set-aside/g1");
        let done = set_aside(&missing.path("gone"), "dcp", &resume, &dest).expect("no dir");
        assert_eq!(done, Done::default());
    }

    #[test]
    fn megatron_sets_its_tracker_aside_and_names_the_resume_point_again() {
        let d = Dir::new(&[
            "iter_0000010/mp_rank_00/model_optim_rng.pt",
            "iter_0000020/mp_rank_00/model_optim_rng.pt",
            "iter_0000030/mp_rank_00/model_optim_rng.pt",
        ]);
        d.write(MEGATRON_TRACKER, "30\n");
        let done = d
            .run("megatron", &d.ckpt(20, "iter_0000020"), 4)
            .expect("set aside");
        assert_eq!(
            Dir::moved(&done),
            vec![
                (Some(30), "iter_0000030".to_owned(), false),
                (None, MEGATRON_TRACKER.to_owned(), false)
            ]
        );
        assert_eq!(
            fs::read_to_string(d.path(MEGATRON_TRACKER)).expect("tracker"),
            "20\n"
        );
        assert_eq!(
            fs::read_to_string(d.path(&format!(".sup-set-aside/g4/{MEGATRON_TRACKER}")))
                .expect("old tracker"),
            "30\n"
        );
        assert!(
            done.detail.contains("naming iteration 20"),
            "{}",
            done.detail
        );
        let listed: Vec<u64> = crate::checkpoint::complete(d.0.path(), "megatron")
            .expect("scan")
            .1
            .iter()
            .map(|(step, _)| *step)
            .collect();
        assert_eq!(listed, vec![10, 20]);
    }

    #[test]
    fn orbax_and_dcp_leave_their_resume_point_listed() {
        let orbax = Dir::new(&[
            "10/default/array",
            "20/default/array",
            "30/default/array",
            "40.orbax-checkpoint-tmp-99/default/array",
        ]);
        let done = orbax.run("orbax", &orbax.ckpt(20, "20"), 2).expect("orbax");
        assert_eq!(done.entries.len(), 2, "{done:?}");
        let listed: Vec<u64> = crate::checkpoint::complete(orbax.0.path(), "orbax")
            .expect("scan")
            .1
            .iter()
            .map(|(step, _)| *step)
            .collect();
        assert_eq!(listed, vec![10, 20]);

        let dcp = Dir::new(&[
            "step-20/__0_0.distcp",
            "step-20/.metadata",
            "step-30/__0_0.distcp",
            "step-30/.metadata",
        ]);
        let done = dcp.run("dcp", &dcp.ckpt(20, "step-20"), 2).expect("dcp");
        assert_eq!(
            Dir::moved(&done),
            vec![(Some(30), "step-30".to_owned(), false)]
        );
        assert!(dcp.path(".sup-set-aside/g2/step-30/.metadata").is_file());
    }

    #[test]
    fn a_failed_rename_fails_with_what_was_done_and_why() {
        let d = Dir::new(&["step-20/COMPLETE", "step-30/COMPLETE"]);
        // A file where the generation's directory must go.
        d.write(".sup-set-aside/g5", "not a directory");
        let err = d
            .run("marker:COMPLETE", &d.ckpt(20, "step-20"), 5)
            .expect_err("cannot create");
        assert!(err.error.contains("g5"), "{}", err.error);
        assert!(d.path("step-30/COMPLETE").is_file(), "nothing moved");

        // A destination outside the checkpoint directory is refused.
        let outside = d.path("../elsewhere");
        let err = set_aside(
            d.0.path(),
            "marker:COMPLETE",
            &d.ckpt(20, "step-20"),
            &outside,
        )
        .expect_err("outside");
        assert!(
            err.error.starts_with("refusing set_aside_dir"),
            "{}",
            err.error
        );
        assert!(d.path("step-30").is_dir());
    }

    #[test]
    fn a_rename_refused_by_the_file_system_names_the_step_and_the_error() {
        // The longest name a directory entry may have, step 30; its twin is
        // already set aside, so this one would need a longer name.
        let long = format!("step-{}30", "0".repeat(248));
        let d = Dir::new(&["step-20/COMPLETE", "step-25/COMPLETE"]);
        d.write(&format!("{long}/COMPLETE"), "");
        d.write(&format!(".sup-set-aside/g6/{long}/COMPLETE"), "");
        let err = d
            .run("marker:COMPLETE", &d.ckpt(20, "step-20"), 6)
            .expect_err("name too long");
        assert!(
            err.error.starts_with(&format!(
                "cannot set aside {} (step 30, newer than the resume point step 20) to ",
                d.path(&long).display()
            )),
            "{}",
            err.error
        );
        assert!(err.error.contains("name too long"), "{}", err.error);
        // Step 25 went first and is reported; the failed one stays.
        assert_eq!(
            Dir::moved(&err.done),
            vec![
                (Some(30), long.clone(), true),
                (Some(25), "step-25".to_owned(), false)
            ]
        );
        assert!(d.path(&long).join("COMPLETE").is_file());
    }
}
