//! Where ranks' output goes, and reading its tail back (for rank exits and
//! `supctl logs`).
//!
//! Layout: `<state_dir>/jobs/<job>/gen-<G>/rank-<R>.log`, R the global rank,
//! so the log of a rank can be found without knowing which node rank this
//! node had in each generation.
//!
//! Bounded on disk ([`Retention`]): a launch first deletes the job's
//! generation directories beyond the newest few ([`prune_generations`]),
//! and a running rank's log that grows past a size is rotated into
//! `rank-<R>.log.1` ([`cap_size`]); [`tail`] reads across that rotation.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sup_proto::v1::{LogRequest, LogResponse};
use tokio::sync::watch;
use tracing::{info, warn};

pub const DEFAULT_LINES: usize = 100;
pub const MAX_LINES: usize = 10_000;
/// A log response travels in one gRPC message; past this, fewer lines
/// than asked are returned.
pub const MAX_BYTES: u64 = 1 << 20;

/// Generation directories kept per job, the running one included.
pub const DEFAULT_LOG_GENERATIONS: u32 = 5;
/// 256 MiB: days of a chatty rank's output, and with the rotated copy at
/// most about 512 MiB per rank on disk.
pub const DEFAULT_RANK_LOG_MAX_BYTES: u64 = 256 << 20;
/// How often the running ranks' logs are measured against the cap: a rank
/// can overshoot it by what it writes in this time.
pub const SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How much of the ranks' output the agent keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Generation directories kept per job, the running one included; at
    /// least 1.
    pub generations: u32,
    /// A running rank's log longer than this is rotated (see
    /// [`cap_size`]); 0: never.
    pub rank_log_max_bytes: u64,
    /// How often the running ranks' logs are measured.
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            generations: DEFAULT_LOG_GENERATIONS,
            rank_log_max_bytes: DEFAULT_RANK_LOG_MAX_BYTES,
            check_interval: SIZE_CHECK_INTERVAL,
        }
    }
}

pub fn generation_dir(state_dir: &Path, job: &str, generation: u64) -> PathBuf {
    state_dir
        .join("jobs")
        .join(job)
        .join(format!("gen-{generation}"))
}

pub fn rank_log(state_dir: &Path, job: &str, generation: u64, rank: u32) -> PathBuf {
    generation_dir(state_dir, job, generation).join(format!("rank-{rank}.log"))
}

/// Where [`cap_size`] moves a log's older output: `rank-<R>.log.1`.
pub fn rotated_log(path: &Path) -> PathBuf {
    with_suffix(path, ".1")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The last `lines` lines of the log, reading at most its last
/// `max_bytes`. The first line is dropped when the read began inside it.
/// When the log holds fewer lines (it was just rotated), the rest come
/// from the end of its rotated copy, within the same `max_bytes`.
pub fn tail(path: &Path, lines: usize, max_bytes: u64) -> io::Result<String> {
    let (mut bytes, mut cut) = read_end(&mut File::open(path)?, max_bytes)?;
    let room = max_bytes.saturating_sub(bytes.len() as u64);
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    if !cut && room > 0 && newlines < lines {
        match File::open(rotated_log(path)) {
            // The rotation cut anywhere: the copy's last line and the log's
            // first are one line, joined again here.
            Ok(mut older) => {
                let (mut joined, older_cut) = read_end(&mut older, room)?;
                joined.append(&mut bytes);
                bytes = joined;
                cut = older_cut;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if cut && !all.is_empty() {
        all.remove(0);
    }
    let kept = &all[all.len().saturating_sub(lines)..];
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// The last `max_bytes` of `file`, and whether that is not all of it.
fn read_end(file: &mut File, max_bytes: u64) -> io::Result<(Vec<u8>, bool)> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    Ok((bytes, start > 0))
}

/// `gen-<N>` exactly (not `gen-05`, not `gen-x`): only the names
/// [`generation_dir`] makes are the agent's to delete.
fn parse_generation(name: &str) -> Option<u64> {
    let generation: u64 = name.strip_prefix("gen-")?.parse().ok()?;
    (format!("gen-{generation}") == name).then_some(generation)
}

/// The generation directories (by name) of a job that go when `running`
/// starts: all but the newest `keep`, `running` counted among them and
/// always kept, even where older-looking than the rest (numbers left by a
/// supd whose state was wiped). Newest first.
pub fn generations_to_prune<'a>(
    names: impl IntoIterator<Item = &'a str>,
    running: u64,
    keep: u32,
) -> Vec<u64> {
    let mut others: Vec<u64> = names
        .into_iter()
        .filter_map(parse_generation)
        .filter(|&g| g != running)
        .collect();
    others.sort_unstable_by(|a, b| b.cmp(a));
    others.dedup();
    let kept = usize::try_from(keep.max(1) - 1).unwrap_or(usize::MAX);
    others.split_off(kept.min(others.len()))
}

/// Deletes the generation directories of `job` that
/// [`generations_to_prune`] picks, with everything in them (rank logs and
/// their rotated copies); returns the generations removed. A directory
/// that cannot be deleted is logged and skipped: it must not stop a launch.
pub fn prune_generations(state_dir: &Path, job: &str, running: u64, keep: u32) -> Vec<u64> {
    let job_dir = state_dir.join("jobs").join(job);
    let entries = match fs::read_dir(&job_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(
                job,
                "cannot list {} to remove old rank logs: {e}",
                job_dir.display()
            );
            return Vec::new();
        }
    };
    // Directories only, and not through links: a file or a link that
    // happens to be named gen-N is not the agent's.
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut removed = Vec::new();
    for generation in generations_to_prune(names.iter().map(String::as_str), running, keep) {
        let dir = generation_dir(state_dir, job, generation);
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(generation),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                job,
                generation,
                "cannot remove old rank logs {}: {e}",
                dir.display()
            ),
        }
    }
    removed
}

/// What [`cap_size`] did.
#[derive(Debug)]
pub enum Capped {
    /// Within the cap (or no such file).
    No,
    /// The output moved to [`rotated_log`]; the log is empty again.
    Rotated { bytes: u64 },
    /// The copy failed (a full disk, typically): the log was emptied all
    /// the same, its output lost, because the cap is what keeps the disk
    /// from filling.
    Dropped { bytes: u64, error: io::Error },
}

/// Keeps the rank log at `path` within `max_bytes` (0: no cap): when it is
/// longer, its content is copied to [`rotated_log`] (replacing the copy
/// before) and the log is truncated to empty.
///
/// Copy-and-truncate, because the rank writes the file itself: its output
/// cannot pass through the agent, since ranks outlive agent restarts (see
/// `adopt`), and renaming the file would only rename where the rank keeps
/// writing. The rank's descriptor is in append mode (see
/// `process::spawn`), so after the truncation it writes at the new end,
/// offset 0, leaving no hole. What the rank writes between the copy's last
/// read and the truncation (microseconds) is lost.
pub fn cap_size(path: &Path, max_bytes: u64) -> io::Result<Capped> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Capped::No),
        Err(e) => return Err(e),
    };
    if max_bytes == 0 || len <= max_bytes {
        return Ok(Capped::No);
    }
    // Opened before the copy, so that nothing stands between the copy
    // reaching the end and the truncation.
    let log = OpenOptions::new().write(true).open(path)?;
    let partial = with_suffix(path, ".1.partial");
    let copied = copy_to(path, &partial).and_then(|bytes| {
        fs::rename(&partial, rotated_log(path))?;
        Ok(bytes)
    });
    log.set_len(0)?;
    match copied {
        Ok(bytes) => Ok(Capped::Rotated { bytes }),
        Err(error) => {
            let _ = fs::remove_file(&partial);
            Ok(Capped::Dropped { bytes: len, error })
        }
    }
}

/// Copies `from` to its end, including what is written while copying.
fn copy_to(from: &Path, to: &Path) -> io::Result<u64> {
    let mut source = File::open(from)?;
    let mut copy = File::create(to)?;
    io::copy(&mut source, &mut copy)
}

/// Keeps the logs in `paths` (the running ranks', as the launcher
/// publishes them) within `max_bytes` with [`cap_size`], measuring every
/// `interval`, until aborted.
pub async fn cap_sizes(
    mut paths: watch::Receiver<Vec<PathBuf>>,
    max_bytes: u64,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A log that cannot be measured is reported once, not every interval.
    let mut warned: HashSet<PathBuf> = HashSet::new();
    loop {
        tick.tick().await;
        let current = paths.borrow_and_update().clone();
        if current.is_empty() {
            continue;
        }
        // Copying up to the cap takes a while: off the runtime's threads,
        // and awaited, so that checks never overlap.
        let checked = tokio::task::spawn_blocking(move || {
            current
                .into_iter()
                .map(|path| {
                    let result = cap_size(&path, max_bytes);
                    (path, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (path, result) in checked.unwrap_or_default() {
            match result {
                Ok(Capped::No) => {}
                Ok(Capped::Rotated { bytes }) => {
                    info!(path = %path.display(), bytes, max_bytes, "rank log over its size cap: rotated to .1");
                }
                Ok(Capped::Dropped { bytes, error }) => {
                    warn!(path = %path.display(), bytes, max_bytes, "rank log over its size cap and it could not be copied ({error}): emptied, its output is lost");
                }
                Err(e) => {
                    if warned.insert(path.clone()) {
                        warn!(path = %path.display(), "cannot keep the rank log within its size cap: {e}");
                    }
                }
            }
        }
    }
}

/// Answers `supctl logs`: the tail of the rank's log in the newest
/// generation of the job that ran on this node.
pub fn answer(state_dir: &Path, request: &LogRequest) -> LogResponse {
    let mut response = LogResponse {
        request_id: request.request_id,
        ..Default::default()
    };
    match read_request(state_dir, request) {
        Ok(text) => response.text = text,
        Err(error) => response.error = error,
    }
    response
}

fn read_request(state_dir: &Path, request: &LogRequest) -> Result<String, String> {
    let job = &request.job;
    if job.is_empty() || job == "." || job == ".." || job.contains('/') {
        return Err(format!("{job:?} is not a job name"));
    }
    let lines = match request.lines {
        0 => DEFAULT_LINES,
        n => (n as usize).min(MAX_LINES),
    };
    let job_dir = state_dir.join("jobs").join(job);
    let entries = match fs::read_dir(&job_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("job {job} has no logs on this node"))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", job_dir.display())),
    };
    let mut generations: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("gen-")?.parse().ok())
        .collect();
    generations.sort_unstable_by(|a, b| b.cmp(a));
    let rank = request.rank;
    let Some(path) = generations
        .into_iter()
        .map(|g| rank_log(state_dir, job, g, rank))
        .find(|path| path.is_file())
    else {
        return Err(format!("rank {rank} of job {job} has no log on this node"));
    };
    tail(&path, lines, MAX_BYTES).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn tail_takes_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write(&path, "a\nb\nc\nd\n");
        assert_eq!(tail(&path, 2, MAX_BYTES).expect("tail"), "c\nd\n");
        assert_eq!(tail(&path, 10, MAX_BYTES).expect("tail"), "a\nb\nc\nd\n");
        // No final newline: the last line still counts.
        write(&path, "a\nb\npartial");
        assert_eq!(tail(&path, 1, MAX_BYTES).expect("tail"), "partial\n");
        // A read that starts mid-line drops that fragment.
        write(&path, "first line\nsecond\nthird\n");
        assert_eq!(tail(&path, 10, 12).expect("tail"), "third\n");
        write(&path, "");
        assert_eq!(tail(&path, 10, MAX_BYTES).expect("tail"), "");
    }

    #[test]
    fn pruning_keeps_the_newest_generations_and_always_the_running_one() {
        let names = ["gen-1", "gen-7", "gen-3", "gen-12", "gen-9", "gen-10"];
        // Five kept, the running 12 among them: 10, 9, 7, 3 stay.
        assert_eq!(generations_to_prune(names, 12, 5), vec![1]);
        assert_eq!(generations_to_prune(names, 12, 3), vec![7, 3, 1]);
        // Only the running one.
        assert_eq!(generations_to_prune(names, 12, 1), vec![10, 9, 7, 3, 1]);
        // The running generation's directory does not exist yet: the same.
        let without = ["gen-1", "gen-7", "gen-3", "gen-9", "gen-10"];
        assert_eq!(generations_to_prune(without, 12, 3), vec![7, 3, 1]);
        // Never the running one, even where newer numbers are on disk
        // (supd's state was wiped and generations began again at 1).
        assert_eq!(generations_to_prune(names, 2, 2), vec![10, 9, 7, 3, 1]);
        assert_eq!(generations_to_prune(names, 7, 1), vec![12, 10, 9, 3, 1]);
        // Fewer than K: nothing goes.
        assert_eq!(generations_to_prune(names, 12, 6), Vec::<u64>::new());
        assert_eq!(generations_to_prune(names, 12, 50), Vec::<u64>::new());
        assert_eq!(generations_to_prune([], 1, 1), Vec::<u64>::new());
        // K = 0 is refused by the configuration; here it means 1.
        assert_eq!(generations_to_prune(["gen-1", "gen-2"], 2, 0), vec![1]);
    }

    #[test]
    fn pruning_leaves_names_that_are_not_generation_directories_alone() {
        let names = [
            "gen-1",
            "gen-2",
            "gen-3",
            "gen-x",
            "gen-",
            "gen--1",
            "gen-02",
            "gen-+4",
            "notes",
            "gen-1.bak",
            "GEN-0",
        ];
        assert_eq!(generations_to_prune(names, 3, 1), vec![2, 1]);
    }

    #[test]
    fn pruning_deletes_old_generation_directories_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        for generation in [1, 2, 3, 5, 6] {
            write(&rank_log(state, "llm", generation, 0), "out\n");
            write(
                &rotated_log(&rank_log(state, "llm", generation, 0)),
                "older\n",
            );
        }
        write(&rank_log(state, "other", 1, 0), "another job\n");
        let jobs = state.join("jobs/llm");
        write(&jobs.join("gen-notes/keep.txt"), "not ours\n");
        // A file and a link named like generations are not directories.
        write(&jobs.join("gen-0"), "a file\n");
        std::os::unix::fs::symlink(state.join("jobs/other/gen-1"), jobs.join("gen-4"))
            .expect("symlink");

        let removed = prune_generations(state, "llm", 7, 3);
        assert_eq!(removed, vec![3, 2, 1]);
        let mut left: Vec<String> = fs::read_dir(&jobs)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["gen-0", "gen-4", "gen-5", "gen-6", "gen-notes"]);
        assert!(
            rank_log(state, "other", 1, 0).is_file(),
            "not through the link"
        );
        assert!(rotated_log(&rank_log(state, "llm", 6, 0)).is_file());
        assert!(
            rank_log(state, "other", 1, 0).is_file(),
            "other jobs untouched"
        );
        // A job with no directory yet.
        assert_eq!(prune_generations(state, "new", 1, 1), Vec::<u64>::new());
    }

    #[test]
    fn a_log_over_its_cap_is_rotated_and_its_tail_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rank-0.log");
        // Within the cap (or absent): untouched.
        assert!(matches!(cap_size(&path, 10), Ok(Capped::No)));
        write(&path, "one\ntwo\nthr");
        assert!(matches!(cap_size(&path, 100), Ok(Capped::No)));
        assert!(matches!(cap_size(&path, 0), Ok(Capped::No)), "0: no cap");
        // The rank holds the log open in append mode, as process::spawn
        // opens it, and keeps writing across the rotation.
        let mut rank = OpenOptions::new().append(true).open(&path).expect("open");
        let capped = cap_size(&path, 5).expect("cap");
        assert!(
            matches!(capped, Capped::Rotated { bytes: 11 }),
            "{capped:?}"
        );
        assert_eq!(
            fs::read_to_string(rotated_log(&path)).expect("read"),
            "one\ntwo\nthr"
        );
        assert_eq!(fs::metadata(&path).expect("stat").len(), 0);
        use std::io::Write;
        rank.write_all(b"ee\nfour\n").expect("write");
        // Written at the new end: no hole of zeros where the old output was.
        assert_eq!(fs::read_to_string(&path).expect("read"), "ee\nfour\n");
        // The tail joins the line the rotation cut, and takes from the
        // copy only what the log is short of.
        assert_eq!(
            tail(&path, 3, MAX_BYTES).expect("tail"),
            "two\nthree\nfour\n"
        );
        assert_eq!(tail(&path, 1, MAX_BYTES).expect("tail"), "four\n");
        assert_eq!(
            tail(&path, 10, MAX_BYTES).expect("tail"),
            "one\ntwo\nthree\nfour\n"
        );
        // Still within max_bytes, across both files.
        assert_eq!(tail(&path, 10, 12).expect("tail"), "three\nfour\n");
        // A second rotation replaces the first copy.
        rank.write_all(b"five\n").expect("write");
        assert!(matches!(
            cap_size(&path, 5),
            Ok(Capped::Rotated { bytes: 13 })
        ));
        assert_eq!(
            fs::read_to_string(rotated_log(&path)).expect("read"),
            "ee\nfour\nfive\n"
        );
        assert!(!with_suffix(&path, ".1.partial").exists());
    }

    #[test]
    fn requests_read_the_newest_generation_of_the_rank() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        write(&rank_log(state, "llm", 3, 5), "old\n");
        write(&rank_log(state, "llm", 12, 5), "new 1\nnew 2\n");
        // Generation 20 ran elsewhere for rank 5: only rank 0 is here.
        write(&rank_log(state, "llm", 20, 0), "other\n");
        let ask = |rank, lines| {
            answer(
                state,
                &LogRequest {
                    request_id: 9,
                    job: "llm".into(),
                    rank,
                    lines,
                },
            )
        };
        let response = ask(5, 1);
        assert_eq!(response.request_id, 9);
        assert_eq!(response.text, "new 2\n");
        assert_eq!(response.error, "");
        assert_eq!(ask(5, 0).text, "new 1\nnew 2\n");
        let missing = ask(6, 0);
        assert!(missing.error.contains("rank 6 of job llm"), "{missing:?}");
        let no_job = answer(
            state,
            &LogRequest {
                job: "other".into(),
                ..Default::default()
            },
        );
        assert!(no_job.error.contains("job other has no logs"), "{no_job:?}");
        let bad = answer(
            state,
            &LogRequest {
                job: "../x".into(),
                ..Default::default()
            },
        );
        assert!(bad.error.contains("not a job name"), "{bad:?}");
    }
}
