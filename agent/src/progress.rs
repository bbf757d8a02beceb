//! Progress intake: ranks report their training progress to the agent over
//! a local TCP socket, whose `host:port` they find in `SUP_PROGRESS_ADDR`.
//!
//! The protocol, a contract with training scripts: one JSON object per
//! line, `{"rank": 0, "step": 120, "tokens": 491520, "loss": 2.31,
//! "step_time_s": 0.41, "phase": "train", "generation": 7}`. Only `rank` is
//! required; unknown fields are ignored. `generation` (the rank's
//! `SUP_GENERATION`) is optional: without it, a line belongs to the
//! generation that was running when its connection was accepted. Ranks
//! should send it: a line written by a rank of an old generation just
//! before it was killed, and read only after the next generation started,
//! can be told apart only by it. Lines of any generation other than the
//! running one are ignored. Malformed lines and lines over 64 KiB are
//! counted and skipped; they never close the connection.
//!
//! Per (job, generation) the agent keeps the highest step and the tokens and
//! loss that came with it (or with a later report without a step), and per
//! rank its latest step, phase and step time (`compute_time_s` when the rank
//! sends it: its time outside collectives, which is what tells a slow node
//! from the ones waiting for it in the all-reduce). It sends `JobProgress`
//! within `REPORT_INTERVAL` of a change, coalescing everything in between:
//! supd's hang detector measures from when it receives progress, so a late
//! report would be a late (or a false) alarm, while one message per node per
//! 100 ms stays cheap whatever the step rate.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::JobProgress;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::fence::{Fence, Running};

pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// A node runs a handful of ranks; more connections than this is a leak
/// or an attack, and further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProgressLine {
    pub rank: u32,
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub step_time_s: Option<f64>,
    /// The part of the step spent outside collectives (optional).
    #[serde(default)]
    pub compute_time_s: Option<f64>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub generation: Option<u64>,
}

/// `Ok(None)` for a blank line (keep-alives are harmless).
pub fn parse_line(line: &[u8]) -> Result<Option<ProgressLine>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(first) = line.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(None);
    };
    // serde would also take a struct from a JSON array.
    if *first != b'{' {
        return Err("not a progress report: expected a JSON object".to_owned());
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| format!("not a progress report: {e}"))
}

#[derive(Debug, Default, Clone)]
struct RankState {
    step: Option<u64>,
    time_s: Option<f64>,
    phase: Option<String>,
}

/// The progress of the running generation, and what was thrown away.
#[derive(Debug, Default)]
pub struct Tally {
    key: Option<(String, u64)>,
    step: Option<u64>,
    tokens: Option<u64>,
    loss: Option<f64>,
    ranks: BTreeMap<u32, RankState>,
    /// (phase, min step) last sent.
    sent_shape: (String, Option<u64>),
    changed: bool,
    pub malformed: u64,
    pub oversized: u64,
    /// Lines about a generation other than the running one.
    pub stale: u64,
}

impl Tally {
    /// Counts one report. `connection_generation` is the generation running
    /// when the report's connection was accepted.
    pub fn record(
        &mut self,
        running: Option<&Running>,
        connection_generation: Option<u64>,
        line: &ProgressLine,
    ) {
        let Some((job, current)) = running.and_then(|r| Some((r.job.as_ref()?, r.generation)))
        else {
            self.stale += 1;
            return;
        };
        let generation = line.generation.or(connection_generation).unwrap_or(current);
        if generation != current {
            self.stale += 1;
            return;
        }
        if self
            .key
            .as_ref()
            .is_none_or(|(j, g)| j != job || *g != current)
        {
            *self = Tally {
                key: Some((job.clone(), current)),
                malformed: self.malformed,
                oversized: self.oversized,
                stale: self.stale,
                ..Tally::default()
            };
        }
        let rank = self.ranks.entry(line.rank).or_default();
        if line.step.is_some_and(|s| rank.step.is_none_or(|r| s >= r)) {
            rank.step = line.step;
        }
        if let Some(t) = line
            .compute_time_s
            .or(line.step_time_s)
            .filter(|t| t.is_finite() && *t >= 0.0)
        {
            rank.time_s = Some(t);
        }
        if line.phase.is_some() {
            rank.phase = line.phase.clone();
        }
        if self.shape() != self.sent_shape {
            self.changed = true;
        }
        // A rank lagging behind must not take tokens and loss back.
        let behind = matches!((line.step, self.step), (Some(s), Some(max)) if s < max);
        if behind {
            return;
        }
        let before = (self.step, self.tokens, self.loss);
        self.step = line.step.or(self.step);
        self.tokens = line.tokens.or(self.tokens);
        self.loss = line.loss.or(self.loss);
        if (self.step, self.tokens, self.loss) != before {
            self.changed = true;
        }
    }

    /// The node's phase (the first rank not in `train`, since one rank
    /// saving holds every other in the next collective) and the lowest
    /// latest step of its ranks.
    fn shape(&self) -> (String, Option<u64>) {
        let phase = self
            .ranks
            .values()
            .filter_map(|r| r.phase.as_deref())
            .find(|p| *p != "train")
            .or_else(|| {
                self.ranks
                    .values()
                    .any(|r| r.phase.is_some())
                    .then_some("train")
            })
            .unwrap_or_default()
            .to_owned();
        let min_step = self.ranks.values().filter_map(|r| r.step).min();
        (phase, min_step)
    }

    /// The report to send, if anything changed since the last one.
    pub fn take_report(&mut self) -> Option<JobProgress> {
        let (job, generation) = self.key.clone()?;
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let shape = self.shape();
        self.sent_shape = shape.clone();
        let mut times: Vec<f64> = self.ranks.values().filter_map(|r| r.time_s).collect();
        times.sort_by(f64::total_cmp);
        let step_time_s = (!times.is_empty()).then(|| {
            let n = times.len();
            if n % 2 == 1 {
                times[n / 2]
            } else {
                (times[n / 2 - 1] + times[n / 2]) / 2.0
            }
        });
        Some(JobProgress {
            job,
            generation,
            step: self.step.unwrap_or(0),
            tokens: self.tokens,
            loss: self.loss,
            step_time_s,
            phase: shape.0,
            min_step: shape.1,
        })
    }
}

/// A running intake.
#[derive(Debug, Clone)]
pub struct Intake {
    addr: SocketAddr,
    tally: Arc<Mutex<Tally>>,
}

impl Intake {
    /// Listens on an ephemeral loopback port and starts reporting.
    pub async fn start(fence: Fence) -> std::io::Result<Intake> {
        Intake::start_on(fence, 0).await
    }

    /// Listens on loopback `port` (0: any) and starts reporting. A restarted
    /// agent asks for the port its predecessor gave the ranks it re-adopts
    /// (their `SUP_PROGRESS_ADDR` cannot change); if that port is taken it
    /// falls back to any, and those ranks' progress is lost, not training.
    pub async fn start_on(fence: Fence, port: u16) -> std::io::Result<Intake> {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(listener) => listener,
            Err(e) if port != 0 => {
                tracing::warn!(
                    port,
                    "cannot listen on the previous progress port ({e}); using another"
                );
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?
            }
            Err(e) => return Err(e),
        };
        let addr = listener.local_addr()?;
        let intake = Intake {
            addr,
            tally: Arc::new(Mutex::new(Tally::default())),
        };
        tokio::spawn(accept_loop(listener, intake.clone(), fence.clone()));
        tokio::spawn(report_loop(intake.clone(), fence));
        Ok(intake)
    }

    /// `host:port`, for `SUP_PROGRESS_ADDR`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts a report that came from elsewhere than a connection: a rank's
    /// log line matched by the job's `progress_regex` (see
    /// [`crate::launcher::follow`]), about `generation`.
    pub fn record(&self, running: Option<&Running>, generation: u64, line: &ProgressLine) {
        lock(&self.tally).record(running, Some(generation), line);
    }

    /// Counts a line that could not be read as a report.
    pub fn count_malformed(&self) {
        lock(&self.tally).malformed += 1;
    }

    /// Counts a line over [`MAX_LINE_BYTES`].
    pub fn count_oversized(&self) {
        lock(&self.tally).oversized += 1;
    }

    /// (malformed, oversized, stale) lines so far.
    pub fn rejected(&self) -> (u64, u64, u64) {
        let tally = lock(&self.tally);
        (tally.malformed, tally.oversized, tally.stale)
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    // Counters and a latest value: consistent between statements.
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, intake: Intake, fence: Fence) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let generation = fence.running().map(|r| r.generation);
                let (intake, fence) = (intake.clone(), fence.clone());
                tokio::spawn(async move {
                    serve(stream, &intake, &fence, generation).await;
                    debug!(%peer, "progress connection closed");
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: wait instead of spinning.
                warn!("progress intake cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, intake: &Intake, fence: &Fence, generation: Option<u64>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut warned = false;
    loop {
        let read = match read_line(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(read) => read,
            Err(e) => {
                debug!("progress connection failed: {e}");
                return;
            }
        };
        let problem = match read {
            LineRead::Eof => return,
            LineRead::TooLong => {
                lock(&intake.tally).oversized += 1;
                format!("a line over {MAX_LINE_BYTES} bytes")
            }
            LineRead::Line => match parse_line(&line) {
                Ok(None) => continue,
                Ok(Some(report)) => {
                    let running = fence.running();
                    lock(&intake.tally).record(running.as_ref(), generation, &report);
                    continue;
                }
                Err(e) => {
                    lock(&intake.tally).malformed += 1;
                    e
                }
            },
        };
        // Once per connection: a broken reporter would otherwise flood the
        // agent's log at its step rate.
        if !warned {
            warn!("progress intake skipped {problem} (further ones on this connection are counted silently)");
            warned = true;
        }
    }
}

async fn report_loop(intake: Intake, fence: Fence) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let report = lock(&intake.tally).take_report();
        if let Some(report) = report {
            fence.send_for(report.generation, AgentBody::Progress(report));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (without the newline), never
/// holding more than `max` bytes of it: the rest of an oversized line is
/// skipped as it arrives. A last line without a newline still counts.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => LineRead::TooLong,
                (false, true) => LineRead::Eof,
                (false, false) => LineRead::Line,
            });
        }
        let (chunk, consumed, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(consumed);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn running(job: &str, generation: u64) -> Running {
        Running {
            job: Some(job.to_owned()),
            generation,
        }
    }

    fn line(text: &str) -> ProgressLine {
        parse_line(text.as_bytes())
            .expect("valid")
            .expect("not blank")
    }

    #[test]
    fn lines_parse_with_optional_fields() {
        assert_eq!(
            line(
                r#"{"rank": 3, "step": 10, "tokens": 4096, "loss": 2.5, "step_time_s": 0.2, "phase": "train", "generation": 7, "extra": true}"#
            ),
            ProgressLine {
                rank: 3,
                step: Some(10),
                tokens: Some(4096),
                loss: Some(2.5),
                step_time_s: Some(0.2),
                compute_time_s: None,
                phase: Some("train".into()),
                generation: Some(7),
            }
        );
        assert_eq!(line("{\"rank\": 0}\r").step, None);
        assert_eq!(parse_line(b"   ").expect("blank"), None);
        for bad in [
            "not json",
            "{}",
            r#"{"step": 1}"#,
            r#"{"rank": -1}"#,
            r#"{"rank": 0, "step": "ten"}"#,
            r#"{"rank": 0, "step": -5}"#,
            r#"{"rank": 0, "loss": NaN}"#,
            "[1, 2]",
        ] {
            let err = parse_line(bad.as_bytes()).expect_err(bad);
            assert!(err.contains("not a progress report"), "{bad}: {err}");
        }
    }

    #[test]
    fn tally_keeps_the_max_step_of_the_running_generation() {
        let mut tally = Tally::default();
        let g7 = running("llm", 7);
        assert_eq!(tally.take_report(), None);
        tally.record(
            Some(&g7),
            Some(7),
            &line(r#"{"rank":0,"step":10,"tokens":100,"loss":3.0}"#),
        );
        tally.record(
            Some(&g7),
            Some(7),
            &line(r#"{"rank":1,"step":9,"tokens":90,"loss":9.0}"#),
        );
        let report = tally.take_report().expect("changed");
        assert_eq!(
            report,
            JobProgress {
                job: "llm".into(),
                generation: 7,
                step: 10,
                tokens: Some(100),
                loss: Some(3.0),
                min_step: Some(9),
                ..JobProgress::default()
            }
        );
        assert_eq!(tally.take_report(), None, "nothing new");
        // The lagging rank catching up is news (min_step), once.
        tally.record(
            Some(&g7),
            Some(7),
            &line(r#"{"rank":1,"step":10,"tokens":100,"loss":3.0}"#),
        );
        assert_eq!(tally.take_report().and_then(|r| r.min_step), Some(10));
        tally.record(
            Some(&g7),
            Some(7),
            &line(r#"{"rank":1,"step":10,"tokens":100,"loss":3.0}"#),
        );
        assert_eq!(tally.take_report(), None);
        // A line naming an old generation, or on a connection of one.
        tally.record(
            Some(&g7),
            Some(7),
            &line(r#"{"rank":0,"step":99,"generation":6}"#),
        );
        tally.record(Some(&g7), Some(6), &line(r#"{"rank":0,"step":99}"#));
        assert_eq!(tally.stale, 2);
        assert_eq!(tally.take_report(), None);
        // The explicit field wins over the connection's generation.
        tally.record(
            Some(&g7),
            Some(6),
            &line(r#"{"rank":0,"step":11,"generation":7}"#),
        );
        assert_eq!(tally.take_report().map(|r| r.step), Some(11));
    }

    #[test]
    fn tally_reports_the_node_phase_and_median_rank_time() {
        let mut tally = Tally::default();
        let g = running("llm", 2);
        for (rank, t) in [(0, 0.30), (1, 0.10), (2, 0.20)] {
            tally.record(
                Some(&g),
                None,
                &line(&format!(
                    r#"{{"rank":{rank},"step":5,"step_time_s":0.5,"compute_time_s":{t},"phase":"train"}}"#
                )),
            );
        }
        let report = tally.take_report().expect("report");
        assert_eq!(
            report.step_time_s,
            Some(0.20),
            "compute time wins, median of ranks"
        );
        assert_eq!(report.phase, "train");
        // One rank saving puts the node in checkpoint_save, even at the same step.
        tally.record(
            Some(&g),
            None,
            &line(r#"{"rank":1,"step":5,"phase":"checkpoint_save"}"#),
        );
        assert_eq!(
            tally.take_report().map(|r| r.phase),
            Some("checkpoint_save".to_owned())
        );
        assert_eq!(tally.take_report(), None);
    }

    #[test]
    fn tally_starts_over_with_a_new_generation_and_ignores_idle_nodes() {
        let mut tally = Tally::default();
        tally.record(
            Some(&running("llm", 7)),
            None,
            &line(r#"{"rank":0,"step":500}"#),
        );
        tally.record(
            Some(&running("llm", 9)),
            None,
            &line(r#"{"rank":0,"step":400}"#),
        );
        let report = tally.take_report().expect("report");
        assert_eq!((report.generation, report.step), (9, 400));
        let idle = Running {
            job: None,
            generation: 10,
        };
        tally.record(Some(&idle), None, &line(r#"{"rank":0,"step":1}"#));
        tally.record(None, None, &line(r#"{"rank":0,"step":1}"#));
        assert_eq!(tally.stale, 2);
    }

    #[tokio::test]
    async fn bad_lines_are_counted_and_the_connection_survives() {
        let (bus, mut ports) = crate::bus::bus();
        let fence = Fence::new(bus.outbox);
        fence.begin(running("llm", 3));
        let intake = Intake::start(fence).await.expect("listen");
        let mut stream = TcpStream::connect(intake.addr()).await.expect("connect");
        let mut text = Vec::new();
        text.extend_from_slice(b"garbage\n");
        text.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        text.extend_from_slice(b"\n{\"rank\":0,\"step\":42,\"loss\":1.5}\n");
        stream.write_all(&text).await.expect("write");
        stream.shutdown().await.expect("shutdown");
        let report = ports.next_progress().await;
        assert_eq!(
            (report.job.as_str(), report.generation, report.step),
            ("llm", 3, 42)
        );
        assert_eq!(report.loss, Some(1.5));
        assert_eq!(intake.rejected(), (1, 1, 0));
    }
}
