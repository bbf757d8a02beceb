//! The drill executor: turns supd's drills into real faults on this node,
//! only when the agent runs with --allow-drills (otherwise each is refused
//! and logged). GPU drills (an Xid, a recovery action) go on to the GPU
//! health monitor, which injects them as if NVML had reported them; the
//! others are made here:
//!
//! - hang: SIGSTOP the process group of every rank of the job on the node;
//!   the ranks stay stopped until the agent stops them (SIGTERM, SIGCONT,
//!   SIGKILL; see the launcher), as a rank stuck in the kernel would.
//! - slow: SIGSTOP for `stop_ms`, SIGCONT for `run_ms`, again, for the
//!   drill's duration (supd sizes the cycle from the node's step time).
//! - crash: SIGKILL one rank's process group.
//! - vanish: the link goes silent (drops its stream, no reconnect) for the
//!   duration, then every rank is SIGKILLed: a power loss, of which supd
//!   hears nothing until the node is back.
//! - partition: the link goes silent for the duration; the ranks run on.
//! - torn-checkpoint: at the job's next save (a step directory newer than
//!   the newest complete checkpoint appears), freeze the node's ranks so the
//!   save cannot finish, tear that directory (see [`checkpoint::tear`]) and
//!   SIGKILL one rank: a crash during a save. The launcher scans the
//!   checkpoints before it reports the exit, so supd, which never learned
//!   of the torn one, restarts from the newest complete checkpoint. (Tearing
//!   one supd already knows complete would be another fault: supd keeps
//!   the newest it has seen complete and would resume from it.)
//!
//! Drills on ranks name the job and generation supd saw on the node; one
//! that arrives after the node moved on to another does nothing.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sup_proto::v1::drill::Fault;
use sup_proto::v1::{DesiredAssignment, Drill};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

use crate::bus::Silence;
use crate::checkpoint;
use crate::launcher::process::signal_group;
use crate::launcher::RankSet;

/// Bounds on what a drill asks for, whatever supd sent (it bounds them too;
/// this agent does not trust a newer or broken supd to).
const MAX_SILENCE: Duration = Duration::from_secs(3600);
const MAX_SLOW: Duration = Duration::from_secs(3600);
const MIN_PHASE: Duration = Duration::from_millis(10);
const MAX_STOP: Duration = Duration::from_secs(600);
/// Between the link going silent and a vanish drill's SIGKILLs: the link
/// task wakes on the silence at once; this keeps the ranks' exits from
/// racing it to supd (after a power loss supd hears none).
const SILENCE_SETTLE: Duration = Duration::from_millis(200);

/// What the executor needs from the rest of the agent.
pub struct Inputs {
    pub drills: mpsc::Receiver<Drill>,
    /// Where GPU drills go: the GPU health monitor.
    pub gpu_drills: mpsc::Sender<Drill>,
    pub ranks: watch::Receiver<RankSet>,
    pub assignment: watch::Receiver<Option<DesiredAssignment>>,
    pub silence: watch::Sender<Silence>,
}

/// Runs until the drill queue closes (the agent ends).
pub async fn run(allow_drills: bool, mut inputs: Inputs) {
    let mut slow: Option<JoinHandle<()>> = None;
    while let Some(drill) = inputs.drills.recv().await {
        let by = if drill.by.is_empty() {
            "unknown".to_owned()
        } else {
            drill.by.clone()
        };
        match &drill.fault {
            Some(Fault::Xid(_) | Fault::RecoveryAction(_)) | None => {
                if inputs.gpu_drills.try_send(drill).is_err() {
                    warn!("drill dropped: the GPU health monitor is not taking drills");
                }
                continue;
            }
            Some(_) if !allow_drills => {
                warn!(
                    kind = kind(&drill),
                    by, "drill refused: this agent runs without --allow-drills"
                );
                continue;
            }
            Some(_) => {}
        }
        let kind = kind(&drill);
        match drill.fault {
            Some(Fault::Vanish(v)) => {
                let d = bounded(v.duration_ms, MAX_SILENCE);
                warn!(by, duration = %humantime::format_duration(d), "drill: vanishing like a power loss (no word to supd, every rank SIGKILLed)");
                go_silent(&inputs.silence, d);
                sleep(SILENCE_SETTLE).await;
                let set = inputs.ranks.borrow().clone();
                for (rank, pid) in &set.ranks {
                    kill(*rank, *pid, Signal::SIGKILL);
                }
            }
            Some(Fault::Partition(p)) => {
                let d = bounded(p.duration_ms, MAX_SILENCE);
                warn!(by, duration = %humantime::format_duration(d), "drill: partitioned from supd (no word to supd; the ranks keep running)");
                go_silent(&inputs.silence, d);
            }
            Some(Fault::Hang(_)) => {
                let Some(set) = targeted(&inputs.ranks, &drill, kind) else {
                    continue;
                };
                warn!(by, job = %set.job, generation = set.generation, ranks = ?rank_ids(&set), "drill: freezing the ranks (SIGSTOP)");
                for (rank, pid) in &set.ranks {
                    kill(*rank, *pid, Signal::SIGSTOP);
                }
            }
            Some(Fault::Slow(s)) => {
                if slow.as_ref().is_some_and(|t| !t.is_finished()) {
                    warn!(
                        by,
                        "slow drill ignored: one is already running on this node"
                    );
                    continue;
                }
                if targeted(&inputs.ranks, &drill, kind).is_none() {
                    continue;
                }
                let cycle = Cycle {
                    run: Duration::from_millis(u64::from(s.run_ms)).clamp(MIN_PHASE, MAX_STOP),
                    stop: Duration::from_millis(u64::from(s.stop_ms)).clamp(MIN_PHASE, MAX_STOP),
                    until: Instant::now() + bounded(s.duration_ms, MAX_SLOW),
                };
                warn!(by, factor = s.factor, run = ?cycle.run, stop = ?cycle.stop,
                    duration = %humantime::format_duration(bounded(s.duration_ms, MAX_SLOW)),
                    "drill: slowing the ranks down (SIGSTOP/SIGCONT duty cycle)");
                slow = Some(tokio::spawn(duty_cycle(
                    inputs.ranks.clone(),
                    drill.job.clone(),
                    drill.generation,
                    cycle,
                )));
            }
            Some(Fault::Crash(c)) => {
                let Some(set) = targeted(&inputs.ranks, &drill, kind) else {
                    continue;
                };
                crash(&set, c.rank, &by);
            }
            Some(Fault::TornCheckpoint(t)) => {
                let Some(set) = targeted(&inputs.ranks, &drill, kind) else {
                    continue;
                };
                let target = inputs
                    .assignment
                    .borrow()
                    .as_ref()
                    .and_then(|a| a.job.as_ref())
                    .filter(|j| j.job == drill.job && !j.checkpoint_dir.is_empty())
                    .map(|j| {
                        (
                            PathBuf::from(&j.checkpoint_dir),
                            j.checkpoint_layout.clone(),
                        )
                    });
                let Some((dir, layout)) = target else {
                    warn!(by, job = %drill.job, "torn-checkpoint drill ignored: the job has no checkpoint_dir here");
                    continue;
                };
                warn!(by, job = %set.job, generation = set.generation, "drill: waiting for the job's next checkpoint save to tear it");
                tokio::spawn(torn_save(
                    inputs.ranks.clone(),
                    set,
                    dir,
                    layout,
                    t.rank,
                    by,
                ));
            }
            Some(Fault::Xid(_) | Fault::RecoveryAction(_)) | None => {}
        }
    }
}

/// The drill's kind as `supctl drill` spells it.
pub fn kind(drill: &Drill) -> &'static str {
    match drill.fault {
        Some(Fault::Xid(_)) => "xid",
        Some(Fault::RecoveryAction(_)) => "recovery-action",
        Some(Fault::Hang(_)) => "hang",
        Some(Fault::Slow(_)) => "slow",
        Some(Fault::Crash(_)) => "crash",
        Some(Fault::Vanish(_)) => "vanish",
        Some(Fault::Partition(_)) => "partition",
        Some(Fault::TornCheckpoint(_)) => "torn-checkpoint",
        None => "unknown",
    }
}

/// A zero duration (an older supd's, or a malformed one) would be no drill.
fn bounded(ms: u32, max: Duration) -> Duration {
    Duration::from_millis(u64::from(ms)).clamp(Duration::from_secs(1), max)
}

fn go_silent(silence: &watch::Sender<Silence>, d: Duration) {
    silence.send_replace(Some(Instant::now() + d));
}

/// The live ranks if they are the drill's job and generation.
fn targeted(ranks: &watch::Receiver<RankSet>, drill: &Drill, kind: &str) -> Option<RankSet> {
    let set = ranks.borrow().clone();
    if set.job != drill.job || set.generation != drill.generation || set.ranks.is_empty() {
        warn!(
            kind,
            drill_job = %drill.job,
            drill_generation = drill.generation,
            job = %set.job,
            generation = set.generation,
            ranks = set.ranks.len(),
            "drill ignored: its job and generation do not run here (any more)"
        );
        return None;
    }
    if set.stopping {
        warn!(kind, job = %set.job, "drill ignored: the agent is stopping these ranks");
        return None;
    }
    Some(set)
}

fn rank_ids(set: &RankSet) -> Vec<u32> {
    set.ranks.iter().map(|(r, _)| *r).collect()
}

fn kill(rank: u32, pid: Pid, signal: Signal) {
    if let Err(e) = signal_group(pid, signal) {
        warn!(rank, %pid, "drill: cannot send {signal}: {e}");
    }
}

/// SIGKILL `rank` (the lowest rank here when `None`).
fn crash(set: &RankSet, rank: Option<u32>, by: &str) {
    let found = match rank {
        Some(r) => set.ranks.iter().find(|(x, _)| *x == r),
        None => set.ranks.iter().min_by_key(|(x, _)| *x),
    };
    match found {
        Some((rank, pid)) => {
            warn!(by, job = %set.job, generation = set.generation, rank, %pid, "drill: killing a rank (SIGKILL)");
            kill(*rank, *pid, Signal::SIGKILL);
        }
        None => {
            warn!(by, job = %set.job, rank = ?rank, ranks = ?rank_ids(set), "crash drill ignored: no such rank here")
        }
    }
}

/// How often a torn-checkpoint drill looks for the next complete save, and
/// for how long: it must tear it before supd's scanner (every 2 s or more)
/// lists it, and a job saves at least this often if the drill is to catch
/// one.
const SAVE_POLL: Duration = Duration::from_millis(5);
const SAVE_WAIT: Duration = Duration::from_secs(1800);

/// Waits for the next checkpoint save of `set`'s generation, then tears it
/// and crashes `rank`.
async fn torn_save(
    ranks: watch::Receiver<RankSet>,
    set: RankSet,
    dir: PathBuf,
    layout: String,
    rank: Option<u32>,
    by: String,
) {
    let scan_dir = dir.clone();
    let scan_layout = layout.clone();
    let known = tokio::task::spawn_blocking(move || {
        checkpoint::complete(&scan_dir, &scan_layout)
            .ok()
            .and_then(|(_, l)| l.last().map(|(step, _)| *step))
            .unwrap_or(0)
    })
    .await
    .unwrap_or(0);
    let deadline = Instant::now() + SAVE_WAIT;
    loop {
        let still = {
            let now = ranks.borrow();
            now.job == set.job && now.generation == set.generation && !now.stopping
        };
        if !still || Instant::now() > deadline {
            warn!(by, job = %set.job, generation = set.generation, "torn-checkpoint drill did nothing: no save began while the generation ran");
            return;
        }
        // The save is torn the moment it is complete, not while it is in
        // progress: a writer on another node (rank 0 writes the completion
        // marker) would finish a half-torn save behind our back, and a save
        // takes milliseconds. Done within one poll of completing, long
        // before supd's scanner (every 2 s or more) can have listed it.
        let (d, l) = (dir.clone(), layout.clone());
        let saved = tokio::task::spawn_blocking(move || {
            checkpoint::complete(&d, &l)
                .ok()
                .and_then(|(_, listed)| listed.last().cloned())
                .filter(|(step, _)| *step > known)
        })
        .await
        .ok()
        .flatten();
        if let Some((step, path)) = saved {
            // Frozen, this node's ranks cannot start the next save before
            // the crash.
            for (r, pid) in &set.ranks {
                kill(*r, *pid, Signal::SIGSTOP);
            }
            let (d, l) = (dir.clone(), layout.clone());
            let torn = tokio::task::spawn_blocking(move || checkpoint::tear(&d, &l, step, &path))
                .await
                .unwrap_or_else(|e| Err(format!("the tearing task failed: {e}")));
            match torn {
                Ok(what) => warn!(by, job = %set.job, "drill: {what}"),
                // The crash still comes: a crash during a save is the
                // drill; the save may have been torn by it anyway.
                Err(e) => warn!(by, job = %set.job, "torn-checkpoint drill: {e}"),
            }
            crash(&set, rank, &by);
            return;
        }
        sleep(SAVE_POLL).await;
    }
}

#[derive(Debug, Clone, Copy)]
struct Cycle {
    run: Duration,
    stop: Duration,
    until: Instant,
}

/// Stops and continues the job's ranks until the cycle's end, or until the
/// generation stops running here (then the launcher owns them: it
/// continues stopped ranks itself when it stops them).
async fn duty_cycle(ranks: watch::Receiver<RankSet>, job: String, generation: u64, c: Cycle) {
    let current = || {
        let set = ranks.borrow().clone();
        (set.job == job && set.generation == generation && !set.stopping && !set.ranks.is_empty())
            .then_some(set)
    };
    let mut cycles = 0u64;
    while Instant::now() < c.until {
        let Some(set) = current() else {
            info!(%job, generation, cycles, "slow drill over: the generation no longer runs here");
            return;
        };
        for (rank, pid) in &set.ranks {
            kill(*rank, *pid, Signal::SIGSTOP);
        }
        sleep(c.stop).await;
        // The same ranks as stopped, whatever changed meanwhile: none may
        // be left stopped by this drill.
        for (rank, pid) in &set.ranks {
            kill(*rank, *pid, Signal::SIGCONT);
        }
        cycles += 1;
        sleep(c.run).await;
    }
    info!(%job, generation, cycles, "slow drill over: its duration has passed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_proto::v1::{CrashDrill, HangDrill, PartitionDrill};

    struct Harness {
        drills: mpsc::Sender<Drill>,
        gpu: mpsc::Receiver<Drill>,
        /// Kept so the executor's view of the ranks stays open.
        _ranks: watch::Sender<RankSet>,
        silence: watch::Receiver<Silence>,
        child: std::process::Child,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// An executor with one "rank": a `sleep` in a process group of its own.
    fn start(allow: bool) -> Harness {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let (drills, drills_rx) = mpsc::channel(8);
        let (gpu_tx, gpu) = mpsc::channel(8);
        let (ranks, ranks_rx) = watch::channel(RankSet {
            job: "llm".into(),
            generation: 7,
            stopping: false,
            ranks: vec![(2, pid)],
        });
        let (silence_tx, silence) = watch::channel(None);
        let (_assign_tx, assignment) = watch::channel(None);
        tokio::spawn(run(
            allow,
            Inputs {
                drills: drills_rx,
                gpu_drills: gpu_tx,
                ranks: ranks_rx,
                assignment,
                silence: silence_tx,
            },
        ));
        Harness {
            drills,
            gpu,
            _ranks: ranks,
            silence,
            child,
        }
    }

    fn drill(fault: Fault, generation: u64) -> Drill {
        Drill {
            fault: Some(fault),
            by: "test".into(),
            job: "llm".into(),
            generation,
            ..Default::default()
        }
    }

    /// The process state letter from /proc (R, S, T, Z...).
    fn state(pid: u32) -> char {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().chars().next())
            })
            .flatten()
            .unwrap_or('?')
    }

    async fn wait_state(pid: u32, want: char) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while state(pid) != want {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("pid {pid} never reached state {want}"));
    }

    #[tokio::test]
    async fn rank_drills_are_refused_without_allow_drills_and_gpu_drills_pass_on() {
        let mut h = start(false);
        let pid = h.child.id();
        h.drills
            .send(drill(Fault::Crash(CrashDrill { rank: Some(2) }), 7))
            .await
            .expect("send");
        h.drills
            .send(drill(
                Fault::Partition(PartitionDrill { duration_ms: 5_000 }),
                0,
            ))
            .await
            .expect("send");
        h.drills.send(drill(Fault::Xid(79), 0)).await.expect("send");
        // The GPU drill was queued after the refused ones: once it is
        // through, they were handled.
        let gpu = tokio::time::timeout(Duration::from_secs(10), h.gpu.recv())
            .await
            .expect("in time")
            .expect("a GPU drill");
        assert_eq!(gpu.fault, Some(Fault::Xid(79)));
        assert!(
            h.child.try_wait().expect("try_wait").is_none(),
            "not killed"
        );
        assert!(h.silence.borrow().is_none(), "not silenced");
        assert_ne!(state(pid), 'T');
    }

    #[tokio::test]
    async fn hang_stops_and_crash_kills_only_the_targeted_generation() {
        let mut h = start(true);
        let pid = h.child.id();
        // Another generation's drill does nothing.
        h.drills
            .send(drill(Fault::Hang(HangDrill {}), 6))
            .await
            .expect("send");
        h.drills
            .send(drill(Fault::Hang(HangDrill {}), 7))
            .await
            .expect("send");
        wait_state(pid, 'T').await;
        // Let the stopped rank go again for the crash (SIGKILL works
        // either way).
        let _ = signal_group(Pid::from_raw(pid as i32), Signal::SIGCONT);
        h.drills
            .send(drill(Fault::Crash(CrashDrill { rank: Some(2) }), 7))
            .await
            .expect("send");
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(s) = h.child.try_wait().expect("try_wait") {
                    return s;
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("killed in time");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[tokio::test]
    async fn partition_silences_the_link_for_its_duration() {
        let mut h = start(true);
        let before = Instant::now();
        h.drills
            .send(drill(
                Fault::Partition(PartitionDrill { duration_ms: 5_000 }),
                0,
            ))
            .await
            .expect("send");
        tokio::time::timeout(Duration::from_secs(10), h.silence.changed())
            .await
            .expect("in time")
            .expect("changed");
        let until = h.silence.borrow().expect("silent");
        let d = until - before;
        assert!(
            d >= Duration::from_millis(4_900) && d <= Duration::from_secs(6),
            "{d:?}"
        );
        assert!(
            h.child.try_wait().expect("try_wait").is_none(),
            "ranks run on"
        );
    }
}
