//! Progress from the ranks' own output, for jobs with a `progress_regex`
//! (see `sup_proto::progress_regex`): the ranks' log files are followed
//! like `tail -f` and every matching line is counted by the progress intake
//! as a report of that rank, exactly like a JSON line on
//! `SUP_PROGRESS_ADDR`. Lines that do not match are ignored; a match whose
//! values do not parse is counted as malformed. Nothing here can fail a
//! rank: a log that cannot be read only means no progress from it.
//!
//! Ranks write to their log files directly (they must outlive the agent,
//! see `adopt`), so the agent reads the files rather than their output.

use std::path::PathBuf;
use std::time::Duration;

use sup_proto::progress_regex::{LineMatch, ProgressPattern};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::fence::Fence;
use crate::progress::{Intake, ProgressLine, MAX_LINE_BYTES, REPORT_INTERVAL};

/// How often the logs are read: as often as reports go to supd, so a
/// matched line costs no more latency than a JSON report.
pub const POLL_INTERVAL: Duration = REPORT_INTERVAL;
/// Read per log and poll at most, so a rank printing without pause cannot
/// hold the agent; the rest is read at the next poll.
const MAX_READ_PER_POLL: u64 = 1 << 20;
/// A log longer than this when first opened (ranks re-adopted after an
/// agent restart) is read from this far before its end: old progress is
/// no news, and catching up on gigabytes would delay the new.
const START_WITHIN: u64 = 64 * 1024;

/// Splits a byte stream into lines (without `\n` or a final `\r`), never
/// holding more than `max` bytes of one: a longer line is skipped.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// Inside a line that was already too long.
    skipping: bool,
    max: usize,
}

/// One complete line, or a line that was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    TooLong,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            ..LineSplitter::default()
        }
    }

    /// The next bytes start inside a line: drop up to the first newline.
    pub fn resync(&mut self) {
        self.pending.clear();
        self.skipping = true;
    }

    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (chunk, rest, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.pending.len() + chunk.len() > self.max {
                    self.pending.clear();
                    self.skipping = true;
                    out.push(Line::TooLong);
                } else {
                    self.pending.extend_from_slice(chunk);
                }
            }
            if done {
                if !std::mem::take(&mut self.skipping) {
                    let line = std::mem::take(&mut self.pending);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    out.push(Line::Text(String::from_utf8_lossy(line).into_owned()));
                }
                self.pending.clear();
            }
        }
        out
    }
}

/// One rank's log being followed.
#[derive(Debug)]
struct RankLog {
    rank: u32,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    lines: LineSplitter,
    warned: bool,
}

/// Follows the logs of one generation's ranks until dropped.
#[derive(Debug)]
pub struct Follower {
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Starts following `logs` (global rank, log file) of `job` at
    /// `generation`.
    pub fn start(
        pattern: ProgressPattern,
        job: &str,
        generation: u64,
        logs: Vec<(u32, PathBuf)>,
        intake: Intake,
        fence: Fence,
    ) -> Follower {
        debug!(
            job,
            generation,
            pattern = pattern.as_str(),
            "following rank logs for progress"
        );
        let logs = logs
            .into_iter()
            .map(|(rank, path)| RankLog {
                rank,
                path,
                file: None,
                lines: LineSplitter::new(MAX_LINE_BYTES),
                warned: false,
            })
            .collect();
        let job = job.to_owned();
        let task = tokio::spawn(follow(pattern, job, generation, logs, intake, fence));
        Follower { task }
    }
}

async fn follow(
    pattern: ProgressPattern,
    job: String,
    generation: u64,
    mut logs: Vec<RankLog>,
    intake: Intake,
    fence: Fence,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    loop {
        tick.tick().await;
        for log in &mut logs {
            buf.clear();
            if let Err(e) = read_new(log, &mut buf).await {
                debug!(job, rank = log.rank, path = %log.path.display(), "cannot read the rank log: {e}");
                log.file = None;
            }
            if buf.is_empty() {
                continue;
            }
            let running = fence.running();
            for line in log.lines.push(&buf) {
                let problem = match line {
                    Line::TooLong => {
                        intake.count_oversized();
                        format!("a line over {MAX_LINE_BYTES} bytes")
                    }
                    Line::Text(text) => match pattern.match_line(&text) {
                        LineMatch::NoMatch => continue,
                        LineMatch::Progress(p) => {
                            let report = ProgressLine {
                                rank: log.rank,
                                step: p.step,
                                tokens: p.tokens,
                                loss: p.loss,
                                step_time_s: p.step_time_s,
                                compute_time_s: None,
                                phase: p.phase,
                                generation: Some(generation),
                            };
                            intake.record(running.as_ref(), generation, &report);
                            continue;
                        }
                        LineMatch::Malformed(why) => {
                            intake.count_malformed();
                            why
                        }
                    },
                };
                // Once per rank: a pattern that mismatches a log format
                // would otherwise flood the agent's log at the step rate.
                if !log.warned {
                    warn!(job, rank = log.rank, "progress_regex: skipped {problem} (further ones of this rank are counted silently)");
                    log.warned = true;
                }
            }
        }
    }
}

/// Appends what was written to the log since the last read (at most
/// [`MAX_READ_PER_POLL`]) to `buf`; opens the file on first use.
async fn read_new(log: &mut RankLog, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if log.file.is_none() {
        let mut file = match tokio::fs::File::open(&log.path).await {
            Ok(file) => file,
            // Not created yet (or gone): nothing to read now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let len = file.metadata().await?.len();
        if len > START_WITHIN {
            file.seek(std::io::SeekFrom::Start(len - START_WITHIN))
                .await?;
            log.lines.resync();
        }
        log.file = Some(file);
    }
    if let Some(file) = log.file.as_mut() {
        let before = buf.len();
        (&mut *file)
            .take(MAX_READ_PER_POLL)
            .read_to_end(buf)
            .await?;
        // Nothing new and the file is shorter than where this read is: it
        // was truncated (the size cap, `logs::cap_size`). The rank writes on
        // from offset 0, maybe mid-line, and what it wrote since the last
        // read went with the rotated copy.
        if buf.len() == before {
            let position = file.stream_position().await?;
            if file.metadata().await?.len() < position {
                file.seek(std::io::SeekFrom::Start(0)).await?;
                log.lines.resync();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::Running;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn lines_split_across_reads_and_long_lines_are_skipped() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab"), vec![]);
        assert_eq!(
            s.push(b"c\r\nde\n"),
            vec![Line::Text("abc".into()), Line::Text("de".into())]
        );
        assert_eq!(s.push(b"123456789"), vec![Line::TooLong]);
        assert_eq!(s.push(b"more\nok\n"), vec![Line::Text("ok".into())]);
        assert_eq!(s.push(b"\n"), vec![Line::Text(String::new())]);
        // Joining mid-line: the fragment is dropped, not counted.
        s.resync();
        assert_eq!(
            s.push(b"tail of a line\nnext\n"),
            vec![Line::Text("next".into())]
        );
    }

    #[tokio::test]
    async fn a_long_log_found_on_start_is_read_from_near_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bus, mut ports) = crate::bus::bus();
        let fence = Fence::new(bus.outbox);
        fence.begin(Running {
            job: Some("llm".into()),
            generation: 2,
        });
        let intake = Intake::start(fence.clone()).await.expect("listen");
        let path = dir.path().join("rank-0.log");
        // Old lines the pattern cannot parse, then well over START_WITHIN
        // of good ones: only the good ones near the end are read.
        let mut text = "step x/9 loss 1 tokens 1\n".repeat(100);
        let mut step = 0;
        while text.len() < 3 * START_WITHIN as usize {
            step += 1;
            text.push_str(&format!("step {step}/99999 loss 0.5 tokens {step}\n"));
        }
        std::fs::write(&path, text).expect("write");
        let pattern =
            ProgressPattern::new(r"^step (?P<step>\S+)/\d+ loss (?P<loss>\S+)").expect("valid");
        let _follower = Follower::start(pattern, "llm", 2, vec![(0, path)], intake.clone(), fence);
        let report = ports.next_progress().await;
        assert_eq!(report.step, step);
        assert_eq!(intake.rejected(), (0, 0, 0), "the old lines were not read");
    }

    #[tokio::test]
    async fn a_log_truncated_by_the_size_cap_is_followed_from_its_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bus, mut ports) = crate::bus::bus();
        let fence = Fence::new(bus.outbox);
        fence.begin(Running {
            job: Some("llm".into()),
            generation: 3,
        });
        let intake = Intake::start(fence.clone()).await.expect("listen");
        let path = dir.path().join("rank-0.log");
        // Appending, as a rank's output is.
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .expect("create");
        let pattern = ProgressPattern::new(r"^step (?P<step>\d+) ").expect("valid");
        let _follower = Follower::start(pattern, "llm", 3, vec![(0, path.clone())], intake, fence);
        log.write_all(b"step 1 of a long run with a long line to make the file longer\n")
            .await
            .expect("write");
        log.flush().await.expect("flush");
        assert_eq!(ports.next_progress().await.step, 1);
        let capped = crate::launcher::logs::cap_size(&path, 10).expect("cap");
        assert!(
            matches!(capped, crate::launcher::logs::Capped::Rotated { .. }),
            "{capped:?}"
        );
        // The rank goes on mid-line (its line was cut by the rotation),
        // then writes whole lines; those are followed.
        log.write_all(b"rest of a line\nstep 2 after the rotation\n")
            .await
            .expect("write");
        log.flush().await.expect("flush");
        assert_eq!(ports.next_progress().await.step, 2);
    }

    #[tokio::test]
    async fn matching_log_lines_are_reported_and_bad_ones_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bus, mut ports) = crate::bus::bus();
        let fence = Fence::new(bus.outbox);
        fence.begin(Running {
            job: Some("llm".into()),
            generation: 4,
        });
        let intake = Intake::start(fence.clone()).await.expect("listen");
        let pattern = ProgressPattern::new(
            r"^step (?P<step>\S+)/\d+ loss (?P<loss>\S+) tokens (?P<tokens>\d+)",
        )
        .expect("valid");
        let path = dir.path().join("rank-2.log");
        let mut log = tokio::fs::File::create(&path).await.expect("create");
        let _follower = Follower::start(
            pattern,
            "llm",
            4,
            vec![(2, path.clone()), (3, dir.path().join("not-yet.log"))],
            intake.clone(),
            fence,
        );
        log.write_all(
            b"rendezvous done\nstep 7/100 loss 0.5 tokens 700\nstep x/100 loss 1 tokens 1\nstep 8/100 lo",
        )
        .await
        .expect("write");
        log.flush().await.expect("flush");
        let report = ports.next_progress().await;
        assert_eq!(
            (report.job.as_str(), report.generation, report.step),
            ("llm", 4, 7)
        );
        assert_eq!((report.tokens, report.loss), (Some(700), Some(0.5)));
        assert_eq!(intake.rejected(), (1, 0, 0), "the unparsable step");
        // The rest of a line written in two parts.
        log.write_all(b"ss 0.25 tokens 800\n").await.expect("write");
        log.flush().await.expect("flush");
        let report = ports.next_progress().await;
        assert_eq!((report.step, report.loss), (8, Some(0.25)));
    }
}
