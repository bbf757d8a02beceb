//! Keeps supd's view of a job's checkpoints current: scans the assigned
//! job's checkpoint directory every few seconds and right after a rank
//! exits, and sends the catalog when it changed.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{Checkpoint, CheckpointCatalog, DesiredAssignment, JobAssignment};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::checkpoint;
use crate::fence::Fence;

pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The directory to scan for the held assignment, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: String,
    pub dir: String,
    pub layout: String,
}

impl Target {
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
    catalog: Option<(String, Vec<Checkpoint>)>,
    error: Option<String>,
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
    pub fn refresh(&self, target: &Target) {
        let mut sent = self.lock();
        match checkpoint::scan(Path::new(&target.dir), &target.layout) {
            Ok(checkpoints) => {
                sent.error = None;
                let unchanged = sent
                    .catalog
                    .as_ref()
                    .is_some_and(|(job, list)| *job == target.job && *list == checkpoints);
                if unchanged {
                    return;
                }
                debug!(job = %target.job, count = checkpoints.len(), "checkpoint catalog changed");
                self.fence.send(AgentBody::Checkpoints(CheckpointCatalog {
                    job: target.job.clone(),
                    checkpoints: checkpoints.clone(),
                }));
                sent.catalog = Some((target.job.clone(), checkpoints));
            }
            Err(err) => {
                // Said once per distinct problem, not every few seconds.
                let text = err.to_string();
                if sent.error.as_deref() != Some(text.as_str()) {
                    warn!(job = %target.job, "checkpoint catalog: {text}");
                    sent.error = Some(text);
                }
            }
        }
    }

    /// [`Catalogs::refresh`] from async code.
    pub async fn refresh_async(self: &Arc<Self>, target: Target) {
        let this = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || this.refresh(&target)).await {
            warn!("checkpoint scan failed: {e}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sent> {
        // Plain data, consistent between statements: usable after a panic.
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Scans while an assignment with a checkpoint directory is held.
pub async fn run(
    catalogs: Arc<Catalogs>,
    mut assignment: watch::Receiver<Option<DesiredAssignment>>,
) {
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watching = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = assignment.changed(), if watching => {
                // The link is gone (the agent is ending): keep the ticks.
                watching = changed.is_ok();
            }
        }
        let target = Target::of(
            assignment
                .borrow_and_update()
                .as_ref()
                .and_then(|a| a.job.as_ref()),
        );
        if let Some(target) = target {
            catalogs.refresh_async(target).await;
        }
    }
}
