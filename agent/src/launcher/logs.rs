//! Where ranks' output goes, and reading its tail back (for rank exits and
//! `supctl logs`).
//!
//! Layout: `<state_dir>/jobs/<job>/gen-<G>/rank-<R>.log`, R the global rank,
//! so the log of a rank can be found without knowing which node rank this
//! node had in each generation.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sup_proto::v1::{LogRequest, LogResponse};

pub const DEFAULT_LINES: usize = 100;
pub const MAX_LINES: usize = 10_000;
/// A log response travels in one gRPC message; past this, fewer lines
/// than asked are returned.
pub const MAX_BYTES: u64 = 1 << 20;

pub fn generation_dir(state_dir: &Path, job: &str, generation: u64) -> PathBuf {
    state_dir
        .join("jobs")
        .join(job)
        .join(format!("gen-{generation}"))
}

pub fn rank_log(state_dir: &Path, job: &str, generation: u64, rank: u32) -> PathBuf {
    generation_dir(state_dir, job, generation).join(format!("rank-{rank}.log"))
}

/// The last `lines` lines of the file, reading at most its last
/// `max_bytes`. The first line is dropped when the read began inside it.
pub fn tail(path: &Path, lines: usize, max_bytes: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let kept = &all[all.len().saturating_sub(lines)..];
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
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
