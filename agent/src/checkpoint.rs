//! The checkpoint catalog: which checkpoints in a job's directory are
//! complete, by the rules of the layout that wrote them (DESIGN.md §5).
//!
//! A torn checkpoint (a crash mid-save) must never be offered for resume,
//! so every rule errs on the side of "incomplete": a directory whose state
//! cannot be read is left out.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sup_proto::v1::{Checkpoint, UnverifiedCheckpoint};

use crate::verify::{Verdict, Verifier};

/// DCP's coordinator writes this last, by rename.
const DCP_METADATA: &str = ".metadata";
pub(crate) const MEGATRON_TRACKER: &str = "latest_checkpointed_iteration.txt";
pub(crate) const MEGATRON_PREFIX: &str = "iter_";
pub(crate) const MEGATRON_DIGITS: usize = 7;
/// Orbax's temporary step directory: `<step>.orbax-checkpoint-tmp` (0.12),
/// `<step>.orbax-checkpoint-tmp-<ts>` (older).
pub(crate) const ORBAX_TMP: &str = ".orbax-checkpoint-tmp";
const ORBAX_COMMIT: &str = "commit_success.txt";
/// Orbax 0.5 and later: the step's metadata, written when a save starts
/// (`commit_timestamp_nsecs` null) and again when it commits.
pub(crate) const ORBAX_METADATA: &str = "_CHECKPOINT_METADATA";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// PyTorch Distributed Checkpoint.
    Dcp,
    Megatron,
    Orbax,
    /// A directory is complete once this file is in it.
    Marker(String),
}

impl FromStr for Layout {
    type Err = CatalogError;

    fn from_str(s: &str) -> Result<Layout, CatalogError> {
        let bad = |why: &str| CatalogError::Layout {
            layout: s.to_owned(),
            why: why.to_owned(),
        };
        match s {
            "dcp" => Ok(Layout::Dcp),
            "megatron" => Ok(Layout::Megatron),
            "orbax" => Ok(Layout::Orbax),
            _ => match s.strip_prefix("marker:") {
                Some("") => Err(bad("the marker file name is empty")),
                Some(name) if name.contains('/') || name == "." || name == ".." => {
                    Err(bad("the marker must be a file name, not a path"))
                }
                Some(name) => Ok(Layout::Marker(name.to_owned())),
                None => Err(bad("expected dcp, megatron, orbax or marker:FILENAME")),
            },
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Dcp => f.write_str("dcp"),
            Layout::Megatron => f.write_str("megatron"),
            Layout::Orbax => f.write_str("orbax"),
            Layout::Marker(name) => write!(f, "marker:{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unknown checkpoint layout {layout:?}: {why}")]
    Layout { layout: String, why: String },
    #[error("cannot read checkpoint directory {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a scan of a checkpoint directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete and verified by the layout's own metadata, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// Complete by the layout's marker, but contradicted by its metadata
    /// (a shard missing or short): never a resume point.
    pub unverified: Vec<UnverifiedCheckpoint>,
}

/// The checkpoints in `dir`, complete by the layout's rules and then
/// verified by its metadata (see [`crate::verify`]), oldest first.
///
/// A directory that does not exist yet holds no checkpoints: a job's first
/// run creates it with its first save.
pub fn scan(dir: &Path, layout: &str, verifier: &mut Verifier) -> Result<Scan, CatalogError> {
    let (layout, found) = complete(dir, layout)?;
    let mut scan = Scan::default();
    for (step, path) in &found {
        let shown = path.to_string_lossy().into_owned();
        match verifier.verify(&layout, path) {
            Verdict::Verified(verified) => scan.checkpoints.push(Checkpoint {
                step: *step,
                path: shown,
                verified,
            }),
            Verdict::Unverified(problem) => scan.unverified.push(UnverifiedCheckpoint {
                step: *step,
                path: shown,
                problem,
            }),
        }
    }
    let listed: Vec<PathBuf> = found.into_iter().map(|(_, path)| path).collect();
    verifier.retain(&listed);
    Ok(scan)
}

/// The checkpoints in `dir` that are complete by the layout's rules (its
/// marker, tracker or rename), oldest first, not yet verified.
pub fn complete(dir: &Path, layout: &str) -> Result<(Layout, Vec<(u64, PathBuf)>), CatalogError> {
    let layout: Layout = layout.parse()?;
    let entries = match subdirs(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((layout, Vec::new())),
        Err(source) => {
            return Err(CatalogError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut found: Vec<(u64, PathBuf)> = match &layout {
        Layout::Dcp => entries
            .into_iter()
            .filter_map(|(name, path)| Some((trailing_number(&name)?, path)))
            .filter(|(_, path)| path.join(DCP_METADATA).is_file())
            .collect(),
        Layout::Marker(marker) => entries
            .into_iter()
            .filter_map(|(name, path)| Some((trailing_number(&name)?, path)))
            .filter(|(_, path)| path.join(marker).is_file())
            .collect(),
        Layout::Megatron => megatron(dir, entries),
        Layout::Orbax => orbax(entries),
    };
    found.sort();
    Ok((layout, found))
}

/// Megatron writes `iter_NNNNNNN/` and, after every rank has finished,
/// the tracker naming it. The tracker is not written atomically, so it is
/// trusted only when it parses and names a directory that exists. With a
/// trusted tracker, directories up to it are complete and newer ones are a
/// save in progress. Without one, the newest directory may be the save
/// that tore it and is left out, unless it is in the `torch_dist` format,
/// whose `.metadata` proves it complete.
fn megatron(dir: &Path, entries: Vec<(String, PathBuf)>) -> Vec<(u64, PathBuf)> {
    let iters: Vec<(u64, PathBuf)> = entries
        .into_iter()
        .filter_map(|(name, path)| {
            let digits = name.strip_prefix(MEGATRON_PREFIX)?;
            if digits.len() < MEGATRON_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits.parse().ok()?, path))
        })
        .filter(|(_, path)| megatron_dir_complete(path))
        .collect();
    let tracker = fs::read_to_string(dir.join(MEGATRON_TRACKER))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|iteration| iters.iter().any(|(step, _)| step == iteration));
    match tracker {
        Some(latest) => iters
            .into_iter()
            .filter(|(step, _)| *step <= latest)
            .collect(),
        None => {
            let newest = iters.iter().map(|(step, _)| *step).max();
            iters
                .into_iter()
                .filter(|(step, path)| Some(*step) != newest || path.join(DCP_METADATA).is_file())
                .collect()
        }
    }
}

/// An `iter_` directory's own evidence: it has content, and in the
/// `torch_dist` format (DCP shards) its `.metadata` is there.
fn megatron_dir_complete(path: &Path) -> bool {
    let Ok(entries) = fs::read_dir(path) else {
        return false;
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let distributed = names.iter().any(|n| n.ends_with(".distcp"));
    !names.is_empty() && (!distributed || names.iter().any(|n| n == DCP_METADATA))
}

/// Orbax saves into `<step>.orbax-checkpoint-tmp-<ts>` and renames it to
/// `<step>` when done, except on object stores, where a rename is not
/// atomic and `commit_success.txt` marks the end instead. Once any step
/// shows that marker the store is taken to be one of those, and a step
/// without it is incomplete.
fn orbax(entries: Vec<(String, PathBuf)>) -> Vec<(u64, PathBuf)> {
    let steps: Vec<(u64, PathBuf)> = entries
        .into_iter()
        .filter(|(name, _)| !name.contains(ORBAX_TMP))
        .filter_map(|(name, path)| Some((orbax_step(&name)?, path)))
        .filter(|(_, path)| !orbax_save_in_progress(path))
        .collect();
    let committed: Vec<bool> = steps
        .iter()
        .map(|(_, path)| orbax_committed(path))
        .collect();
    let markers_in_use = committed.iter().any(|c| *c);
    steps
        .into_iter()
        .zip(committed)
        .filter(|(_, committed)| !markers_in_use || *committed)
        .map(|(step, _)| step)
        .collect()
}

/// A step whose `_CHECKPOINT_METADATA` says it has not committed yet
/// (`"commit_timestamp_nsecs": null`): a save in progress, or torn — the
/// only sign of it in the commit-file variant when no step before it
/// committed (a torn first save).
fn orbax_save_in_progress(step_dir: &Path) -> bool {
    fs::read(step_dir.join(ORBAX_METADATA))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| {
            v.get("commit_timestamp_nsecs")
                .is_some_and(serde_json::Value::is_null)
        })
}

/// `<step>`, or `<prefix>_<step>` (Orbax's `step_prefix` option).
pub(crate) fn orbax_step(name: &str) -> Option<u64> {
    let digits = match name.rsplit_once('_') {
        Some((prefix, digits)) if !prefix.is_empty() => digits,
        _ => name,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The marker in the step directory or in one of its item directories.
fn orbax_committed(step_dir: &Path) -> bool {
    if step_dir.join(ORBAX_COMMIT).is_file() {
        return true;
    }
    // Orbax 0.5 and later commit each item (its own marker) before the
    // step: only the step's marker counts. Before, an item's did.
    if step_dir.join(ORBAX_METADATA).is_file() {
        return false;
    }
    subdirs(step_dir).is_ok_and(|items| {
        items
            .iter()
            .any(|(_, item)| item.join(ORBAX_COMMIT).is_file())
    })
}

/// The trailing decimal number of a directory name: `step-200`, `step_200`,
/// `checkpoint-200` and `200` are all step 200. A name with anything after
/// the number (`step-200.tmp`) has none, which keeps temporary directories
/// out.
pub fn trailing_number(name: &str) -> Option<u64> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    name[name.len() - digits..].parse().ok()
}

/// The visible subdirectories of `dir` (following symlinks), with their
/// names. Hidden ones are scratch space by convention; names that are not
/// UTF-8 cannot be reported and are skipped.
fn subdirs(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        out.push((name, path));
    }
    Ok(out)
}

/// Tears the newest complete checkpoint in `dir` (see [`tear`]).
pub fn tear_newest(dir: &Path, layout: &str) -> Result<String, String> {
    let (_, listed) = complete(dir, layout).map_err(|e| e.to_string())?;
    let (step, path) = listed
        .last()
        .ok_or_else(|| format!("no complete checkpoint in {}", dir.display()))?;
    tear(dir, layout, *step, path)
}

/// Tears the checkpoint of `step` at `path` in `dir`, for a
/// torn-checkpoint drill: truncates its largest data file to half (a shard
/// cut short) and removes what makes the layout call it complete, so that
/// it looks like a save that died half-way and [`scan`] leaves it out.
/// Returns what was done, for the log; an error when the scan still lists
/// it afterwards.
pub fn tear(dir: &Path, layout: &str, step: u64, path: &Path) -> Result<String, String> {
    let parsed: Layout = layout.parse().map_err(|e: CatalogError| e.to_string())?;
    let path = path.to_owned();
    let mut done = Vec::new();
    if let Some((file, len)) = largest_data_file(&path) {
        let file_handle = fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        file_handle
            .set_len(len / 2)
            .map_err(|e| format!("cannot truncate {}: {e}", file.display()))?;
        done.push(format!(
            "truncated {} from {len} to {} bytes",
            file.display(),
            len / 2
        ));
    }
    let remove = |file: PathBuf, done: &mut Vec<String>| -> Result<(), String> {
        match fs::remove_file(&file) {
            Ok(()) => {
                done.push(format!("removed {}", file.display()));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", file.display())),
        }
    };
    match &parsed {
        Layout::Marker(marker) => remove(path.join(marker), &mut done)?,
        Layout::Dcp => remove(path.join(DCP_METADATA), &mut done)?,
        // Without a tracker the newest iteration counts only with a
        // `.metadata`; without both it is a save in progress.
        Layout::Megatron => {
            remove(dir.join(MEGATRON_TRACKER), &mut done)?;
            remove(path.join(DCP_METADATA), &mut done)?;
        }
        Layout::Orbax if orbax_committed(&path) => {
            remove(path.join(ORBAX_COMMIT), &mut done)?;
            for (_, item) in subdirs(&path).unwrap_or_default() {
                remove(item.join(ORBAX_COMMIT), &mut done)?;
            }
        }
        // Renamed back to what Orbax saves into before its final rename.
        Layout::Orbax if !path.to_string_lossy().contains(ORBAX_TMP) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = path.with_file_name(format!("{name}{ORBAX_TMP}"));
            fs::rename(&path, &tmp).map_err(|e| {
                format!("cannot rename {} to {}: {e}", path.display(), tmp.display())
            })?;
            done.push(format!("renamed {} to {}", path.display(), tmp.display()));
        }
        Layout::Orbax => {}
    }
    let still = complete(dir, layout)
        .map_err(|e| e.to_string())?
        .1
        .iter()
        .any(|(s, _)| *s == step);
    if still {
        return Err(format!(
            "step {step} is still complete by the {parsed} rules after: {}",
            done.join("; ")
        ));
    }
    Ok(format!("tore checkpoint step {step}: {}", done.join("; ")))
}

/// The largest file of a checkpoint that holds data rather than metadata
/// (no JSON, nothing hidden, not a completion marker), looking one level
/// into item directories; any file when there is no such one.
fn largest_data_file(path: &Path) -> Option<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut collect = |dir: &Path| {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if let Ok(meta) = fs::symlink_metadata(&p) {
                if meta.is_file() && meta.len() > 0 {
                    files.push((p, meta.len()));
                }
            }
        }
    };
    collect(path);
    for (_, item) in subdirs(path).unwrap_or_default() {
        collect(&item);
    }
    let is_data = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        !name.starts_with('.') && !name.ends_with(".json") && !name.ends_with(".txt")
    };
    let pick = |only_data: bool| {
        files
            .iter()
            .filter(|(p, _)| !only_data || is_data(p))
            .max_by_key(|(_, len)| *len)
            .cloned()
    };
    pick(true).or_else(|| pick(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn file(&self, rel: &str, content: &str) -> &Self {
            let path = self.dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
            self
        }

        fn dir(&self, rel: &str) -> &Self {
            fs::create_dir_all(self.dir.path().join(rel)).expect("mkdir");
            self
        }

        fn scan(&self, layout: &str) -> Vec<(u64, String)> {
            complete(self.dir.path(), layout)
                .expect("scan")
                .1
                .into_iter()
                .map(|(step, path)| {
                    let rel = path
                        .strip_prefix(self.dir.path())
                        .expect("inside the fixture")
                        .to_string_lossy()
                        .into_owned();
                    (step, rel)
                })
                .collect()
        }
    }

    fn steps(list: &[(u64, String)]) -> Vec<u64> {
        list.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn trailing_numbers() {
        for (name, step) in [
            ("step-200", Some(200)),
            ("step_200", Some(200)),
            ("checkpoint-200", Some(200)),
            ("200", Some(200)),
            ("global_step7", Some(7)),
            ("step-200.tmp", None),
            ("latest", None),
            ("", None),
            ("99999999999999999999999", None),
        ] {
            assert_eq!(trailing_number(name), step, "{name}");
        }
    }

    #[test]
    fn dcp_needs_its_metadata() {
        let f = Fixture::new();
        f.file("step-100/__0_0.distcp", "x")
            .file("step-100/__1_0.distcp", "x")
            .file("step-100/.metadata", "m")
            .file("checkpoint-300/__0_0.distcp", "x")
            .file("checkpoint-300/.metadata", "m")
            // Torn: shards written, the metadata never.
            .file("step_400/__0_0.distcp", "x")
            .file("step_400/__1_0.distcp", "x")
            // In progress under a temporary name, and stray files.
            .file("step-500.tmp/.metadata", "m")
            .file("notes.txt", "hello")
            .file("20/.metadata", "m");
        let found = f.scan("dcp");
        assert_eq!(
            found,
            vec![
                (20, "20".to_owned()),
                (100, "step-100".to_owned()),
                (300, "checkpoint-300".to_owned())
            ]
        );
    }

    #[test]
    fn a_scan_lists_verified_checkpoints_and_reports_a_truncated_shard() {
        const METADATA: &[u8] = include_bytes!("verify/testdata/dcp-torch-2.15-2ranks.metadata");
        let f = Fixture::new();
        for (step, short) in [(10, 43_157), (20, 43_000)] {
            let dir = f.dir.path().join(format!("step-{step}"));
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join(".metadata"), METADATA).expect("metadata");
            for (name, len) in [("__0_0.distcp", 20_076), ("__1_0.distcp", short)] {
                fs::File::create(dir.join(name))
                    .and_then(|file| file.set_len(len))
                    .expect("shard");
            }
        }
        let mut verifier = Verifier::default();
        let found = scan(f.dir.path(), "dcp", &mut verifier).expect("scan");
        let at = |step: u64| {
            f.dir
                .path()
                .join(format!("step-{step}"))
                .display()
                .to_string()
        };
        assert_eq!(found.checkpoints.len(), 1, "{found:?}");
        assert_eq!(found.checkpoints[0].step, 10);
        assert_eq!(found.checkpoints[0].path, at(10));
        assert!(
            found.checkpoints[0]
                .verified
                .starts_with("dcp .metadata: 2 storage files"),
            "{found:?}"
        );
        assert_eq!(
            found.unverified,
            [UnverifiedCheckpoint {
                step: 20,
                path: at(20),
                problem: "__1_0.distcp is 43000 bytes, .metadata needs at least 43157".to_owned(),
            }]
        );
    }

    #[test]
    fn missing_directory_holds_nothing_but_an_unreadable_one_is_an_error() {
        let f = Fixture::new();
        assert!(complete(&f.dir.path().join("not-yet"), "dcp")
            .expect("missing dir")
            .1
            .is_empty());
        f.file("plain-file", "x");
        let err = complete(&f.dir.path().join("plain-file"), "dcp").expect_err("a file");
        assert!(err.to_string().contains("plain-file"), "{err}");
    }

    #[test]
    fn layouts_are_parsed_with_clear_errors() {
        assert_eq!("dcp".parse::<Layout>().expect("dcp"), Layout::Dcp);
        assert_eq!(
            "marker:COMPLETE".parse::<Layout>().expect("marker"),
            Layout::Marker("COMPLETE".into())
        );
        for (bad, why) in [
            ("zarr", "expected dcp, megatron"),
            ("marker:", "empty"),
            ("marker:a/b", "not a path"),
            ("", "expected dcp"),
        ] {
            let err = complete(Path::new("/nonexistent"), bad).expect_err(bad);
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        assert_eq!(Layout::Marker("OK".into()).to_string(), "marker:OK");
    }

    fn megatron_fixture() -> Fixture {
        let f = Fixture::new();
        f.file("iter_0000100/mp_rank_00/model_optim_rng.pt", "x")
            .file("iter_0000200/mp_rank_00/model_optim_rng.pt", "x")
            .file("iter_0000300/mp_rank_00/model_optim_rng.pt", "x")
            .file("release/mp_rank_00/model_optim_rng.pt", "x");
        f
    }

    #[test]
    fn megatron_with_a_valid_tracker_counts_up_to_it() {
        let f = megatron_fixture();
        f.file(MEGATRON_TRACKER, "300\n");
        assert_eq!(steps(&f.scan("megatron")), [100, 200, 300]);
        // A save of 400 in progress: the tracker still says 300.
        f.file("iter_0000400/mp_rank_00/model_optim_rng.pt", "partial");
        assert_eq!(steps(&f.scan("megatron")), [100, 200, 300]);
        assert_eq!(f.scan("megatron")[2].1, "iter_0000300");
    }

    #[test]
    fn megatron_with_an_empty_tracker_drops_the_newest() {
        let f = megatron_fixture();
        f.file(MEGATRON_TRACKER, "");
        assert_eq!(steps(&f.scan("megatron")), [100, 200]);
    }

    #[test]
    fn megatron_with_a_truncated_or_garbage_tracker_drops_the_newest() {
        let f = megatron_fixture();
        // "300" cut after one digit names iter_0000003, which does not exist.
        f.file(MEGATRON_TRACKER, "3");
        assert_eq!(steps(&f.scan("megatron")), [100, 200]);
        f.file(MEGATRON_TRACKER, "\u{0}\u{0}garbage");
        assert_eq!(steps(&f.scan("megatron")), [100, 200]);
        // No tracker at all.
        fs::remove_file(f.dir.path().join(MEGATRON_TRACKER)).expect("rm");
        assert_eq!(steps(&f.scan("megatron")), [100, 200]);
    }

    #[test]
    fn megatron_torch_dist_dirs_prove_themselves() {
        let f = Fixture::new();
        f.file("iter_0000100/__0_0.distcp", "x")
            .file("iter_0000100/.metadata", "m")
            .file("iter_0000200/__0_0.distcp", "x")
            .file("iter_0000200/.metadata", "m")
            // Torn dist save, even below the tracker: no metadata.
            .file("iter_0000150/__0_0.distcp", "x")
            .dir("iter_0000050")
            .file(MEGATRON_TRACKER, "");
        assert_eq!(steps(&f.scan("megatron")), [100, 200]);
    }

    #[test]
    fn orbax_skips_tmp_dirs() {
        let f = Fixture::new();
        f.file("100/default/array", "x")
            .file("200/default/array", "x")
            .file("300.orbax-checkpoint-tmp-1712345678/default/array", "x")
            // Orbax 0.12's name has no timestamp.
            .file("350.orbax-checkpoint-tmp/default/array", "x")
            .file("checkpoint_400/default/array", "x")
            .file("latest", "x");
        assert_eq!(steps(&f.scan("orbax")), [100, 200, 400]);
    }

    /// What orbax-checkpoint 0.12.8 leaves of a save killed before its
    /// commit file (the `commit_success.txt` variant): the step directory,
    /// every item with its own marker, the step's metadata with a null
    /// commit time, no step marker.
    #[test]
    fn orbax_item_markers_and_an_uncommitted_metadata_do_not_make_a_step_complete() {
        let committed =
            r#"{"item_handlers": {"state": "x"}, "commit_timestamp_nsecs": 1796409898480710173}"#;
        let started = r#"{"item_handlers": {"state": "x"}, "commit_timestamp_nsecs": null}"#;
        let f = Fixture::new();
        // A torn first save: nothing committed before it.
        f.file("5/_CHECKPOINT_METADATA", started)
            .file("5/state/manifest.ocdbt", "x")
            .file("5/state/commit_success.txt", "");
        assert_eq!(steps(&f.scan("orbax")), [] as [u64; 0]);
        f.file("10/_CHECKPOINT_METADATA", committed)
            .file("10/commit_success.txt", "")
            .file("10/state/manifest.ocdbt", "x")
            .file("10/state/commit_success.txt", "")
            // Torn after its items committed, with a committed step before.
            .file("15/_CHECKPOINT_METADATA", started)
            .file("15/state/manifest.ocdbt", "x")
            .file("15/state/commit_success.txt", "");
        assert_eq!(steps(&f.scan("orbax")), [10]);
        // Its commit done (metadata rewritten, the step's marker): complete.
        f.file("15/_CHECKPOINT_METADATA", committed)
            .file("15/commit_success.txt", "");
        assert_eq!(steps(&f.scan("orbax")), [10, 15]);
    }

    #[test]
    fn orbax_commit_marker_applies_to_every_step_once_seen() {
        let f = Fixture::new();
        f.file("100/default/array", "x")
            .file("100/commit_success.txt", "")
            .file("200/default/array", "x")
            .file("200/default/commit_success.txt", "")
            // Written, never committed.
            .file("300/default/array", "x");
        assert_eq!(steps(&f.scan("orbax")), [100, 200]);
    }

    #[test]
    fn marker_layout_needs_the_named_file() {
        let f = Fixture::new();
        f.file("step-10/shard-0.bin", "x")
            .file("step-10/COMPLETE", "")
            .file("step-20/shard-0.bin", "x")
            .file("step-20/COMPLETE", "")
            // Killed mid-save: shards and metadata, no marker.
            .file("step-30/shard-0.bin", "x")
            .file("step-30/meta.json", "{}")
            .file("final.bin", "x");
        assert_eq!(
            f.scan("marker:COMPLETE"),
            vec![(10, "step-10".to_owned()), (20, "step-20".to_owned())]
        );
        assert!(f.scan("marker:DONE").is_empty());
    }

    #[test]
    fn a_torn_checkpoint_is_no_longer_listed_by_any_layout() {
        let cases: [(&str, &[(&str, &str)]); 4] = [
            (
                "marker:COMPLETE",
                &[
                    ("step-5/shard-0.bin", "0123456789"),
                    ("step-5/COMPLETE", ""),
                    ("step-10/shard-0.bin", "0123456789"),
                    ("step-10/COMPLETE", ""),
                ],
            ),
            (
                "dcp",
                &[
                    ("step-5/__0_0.distcp", "0123456789"),
                    ("step-5/.metadata", "m"),
                    ("step-10/__0_0.distcp", "0123456789"),
                    ("step-10/.metadata", "m"),
                ],
            ),
            (
                "megatron",
                &[
                    ("iter_0000005/model.pt", "0123456789"),
                    ("iter_0000010/model.pt", "0123456789"),
                    ("latest_checkpointed_iteration.txt", "10"),
                ],
            ),
            (
                "orbax",
                &[
                    ("5/state/data", "0123456789"),
                    ("10/state/data", "0123456789"),
                ],
            ),
        ];
        for (layout, files) in cases {
            let f = Fixture::new();
            for (rel, content) in files {
                f.file(rel, content);
            }
            assert_eq!(steps(&f.scan(layout)), vec![5, 10], "{layout}");
            let what = tear_newest(f.dir.path(), layout).expect(layout);
            assert!(
                what.starts_with("tore checkpoint step 10: truncated "),
                "{layout}: {what}"
            );
            assert_eq!(steps(&f.scan(layout)), vec![5], "{layout}: {what}");
        }
        let empty = Fixture::new();
        assert!(tear_newest(empty.dir.path(), "dcp").is_err());
    }
}
