//! Keeps supd's view of a job's checkpoints current: the node that holds
//! node rank 0 of the job's generation scans the checkpoint directory every
//! few seconds (backing off while nothing changes), and any node scans
//! right after one of its ranks crashed; the catalog is sent when it
//! changed.
//!
//! One scanner per job, not one per node: every node of a 2,000-node job
//! listing the directory every 2 s is ~1,000 listings a second against one
//! Lustre/GPFS metadata server, for the same answer. The scanner moves with
//! rank 0 when a restart moves it.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{CheckpointCatalog, DesiredAssignment, JobAssignment};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::checkpoint::{self, Scan};
use crate::fence::Fence;
use crate::verify::Verifier;

pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// While nothing changes the interval doubles up to this. A checkpoint is
/// then seen at most this late, which only matters if a fault comes within
/// that time of it completing (a rank crash triggers a scan at once).
pub const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(8);

/// The directory to scan for the held assignment, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: String,
    pub dir: String,
    pub layout: String,
}

impl Target {
    /// The directory this node scans periodically: only the node of rank 0.
    pub fn scanned_here(job: Option<&JobAssignment>) -> Option<Target> {
        Target::of(job.filter(|j| j.node_rank == 0))
    }

    pub fn of(job: Option<&JobAssignment>) -> Option<Target> {
        let job = job?;
        (!job.checkpoint_dir.is_empty()).then(|| Target {
            job: job.job.clone(),
            dir: job.checkpoint_dir.clone(),
            layout: job.checkpoint_layout.clone(),
        })
    }
}

#[derive(Debug, Default)]
struct Sent {
    catalog: Option<(String, Scan)>,
    error: Option<String>,
    /// Remembers what each checkpoint's metadata says between scans.
    verifier: Verifier,
}

/// The last catalog sent, shared by the periodic scan and the launcher's
/// scan after a rank exit.
#[derive(Debug)]
pub struct Catalogs {
    fence: Fence,
    sent: Mutex<Sent>,
}

impl Catalogs {
    pub fn new(fence: Fence) -> Arc<Catalogs> {
        Arc::new(Catalogs {
            fence,
            sent: Mutex::new(Sent::default()),
        })
    }

    /// Scans `target` and sends its catalog if it differs from the last one
    /// sent. Blocks on the file system: call from a blocking thread. The
    /// scan and the send happen under one lock so that a slow scan cannot
    /// send an older view after a newer one.
    /// Returns whether the catalog changed (and was sent).
    pub fn refresh(&self, target: &Target) -> bool {
        let mut sent = self.lock();
        let sent = &mut *sent;
        match checkpoint::scan(Path::new(&target.dir), &target.layout, &mut sent.verifier) {
            Ok(scan) => {
                sent.error = None;
                let unchanged = sent
                    .catalog
                    .as_ref()
                    .is_some_and(|(job, last)| *job == target.job && *last == scan);
                if unchanged {
                    return false;
                }
                for u in &scan.unverified {
                    warn!(job = %target.job, step = u.step, path = %u.path, "checkpoint not verified: {}", u.problem);
                }
                debug!(job = %target.job, count = scan.checkpoints.len(), unverified = scan.unverified.len(), "checkpoint catalog changed");
                self.fence.send(AgentBody::Checkpoints(CheckpointCatalog {
                    job: target.job.clone(),
                    checkpoints: scan.checkpoints.clone(),
                    unverified: scan.unverified.clone(),
                }));
                sent.catalog = Some((target.job.clone(), scan));
                true
            }
            Err(err) => {
                // Said once per distinct problem, not every few seconds.
                let text = err.to_string();
                if sent.error.as_deref() != Some(text.as_str()) {
                    warn!(job = %target.job, "checkpoint catalog: {text}");
                    sent.error = Some(text);
                }
                false
            }
        }
    }

    /// Runs `f` while no scan runs: a scan that listed the directory
    /// before `f` moved checkpoints out of it cannot send that listing
    /// after what `f` sends. Blocks: call where a scan may.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let _no_scan = self.lock();
        f()
    }

    /// [`Catalogs::refresh`] from async code.
    pub async fn refresh_async(self: &Arc<Self>, target: Target) -> bool {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.refresh(&target)).await {
            Ok(changed) => changed,
            Err(e) => {
                warn!("checkpoint scan failed: {e}");
                false
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sent> {
        // Plain data, consistent between statements: usable after a panic.
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The next wait: back to the base interval after a change, else doubled
/// up to [`MAX_SCAN_INTERVAL`].
pub fn next_interval(current: Duration, changed: bool) -> Duration {
    if changed {
        SCAN_INTERVAL
    } else {
        (current * 2).min(MAX_SCAN_INTERVAL)
    }
}

/// Scans while this node holds rank 0 of an assignment with a checkpoint
/// directory.
pub async fn run(
    catalogs: Arc<Catalogs>,
    mut assignment: watch::Receiver<Option<DesiredAssignment>>,
) {
    let mut interval = SCAN_INTERVAL;
    let mut watching = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = assignment.changed(), if watching => {
                // The link is gone (the agent is ending): keep the timer.
                watching = changed.is_ok();
                // A new assignment (a new generation, maybe rank 0 here
                // now): scan at the base pace again.
                interval = SCAN_INTERVAL;
            }
        }
        let target = Target::scanned_here(
            assignment
                .borrow_and_update()
                .as_ref()
                .and_then(|a| a.job.as_ref()),
        );
        if let Some(target) = target {
            let changed = catalogs.refresh_async(target).await;
            interval = next_interval(interval, changed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(node_rank: u32) -> JobAssignment {
        JobAssignment {
            job: "llm".into(),
            node_rank,
            checkpoint_dir: "/ckpt/llm".into(),
            checkpoint_layout: "marker:COMPLETE".into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_node_of_rank_0_scans_periodically() {
        assert!(Target::scanned_here(Some(&job(0))).is_some());
        assert!(Target::scanned_here(Some(&job(1))).is_none());
        assert!(
            Target::of(Some(&job(1))).is_some(),
            "any node scans after a crash"
        );
        assert!(Target::scanned_here(None).is_none());
    }

    #[test]
    fn scans_back_off_while_nothing_changes_and_reset_on_a_change() {
        let mut i = SCAN_INTERVAL;
        let mut seen = Vec::new();
        for _ in 0..4 {
            i = next_interval(i, false);
            seen.push(i.as_secs());
        }
        assert_eq!(seen, vec![4, 8, 8, 8]);
        assert_eq!(next_interval(i, true), SCAN_INTERVAL);
    }
}
