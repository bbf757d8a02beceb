//! How the agent's parts (GPU health, rank launcher, checkpoint scanner,
//! progress intake) talk to supd without knowing about sessions.
//!
//! Parts send messages through an [`Outbox`]; the link forwards them over
//! whichever stream is up. Level-triggered kinds (health verdicts, rank
//! status, checkpoint catalogs, progress) are remembered by the link and
//! sent again after every (re)registration, so a supd that restarted learns
//! the current truth without the parts doing anything. Edge events (rank
//! exits, Xids) produced while supd is away wait in the outbox, up to its
//! capacity.
//!
//! What supd asks for arrives the other way: the desired assignment as a
//! `watch` (only the latest matters), drills and log requests as queues.
//!
//! One control goes from the parts to the link: [`Silence`], which a
//! vanish or partition drill sets to make the link drop its stream and say
//! nothing to supd until then.

use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{DesiredAssignment, Drill, LogRequest, Validate};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::lease::LeaseEnd;

/// Until when the link must stay silent towards supd (a drill); `None`:
/// talk normally.
pub type Silence = Option<Instant>;

/// Messages waiting for a stream to supd.
const OUTBOX_CAPACITY: usize = 1024;
const INBOX_CAPACITY: usize = 64;

#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<AgentBody>,
}

impl Outbox {
    /// Queues a message for supd. Never blocks: when the outbox is full
    /// (supd away for long) the message is dropped and false returned;
    /// level-triggered state is re-sent at the next registration anyway.
    pub fn send(&self, body: AgentBody) -> bool {
        match self.tx.try_send(body) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("outbox to supd is full; dropping a message");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The parts' side of the bus.
pub struct Bus {
    pub outbox: Outbox,
    /// The latest desired assignment that passed generation fencing.
    pub assignment: watch::Receiver<Option<DesiredAssignment>>,
    /// When the assignment lease runs out (see [`crate::lease`]).
    pub lease: watch::Receiver<LeaseEnd>,
    pub drills: mpsc::Receiver<Drill>,
    pub log_requests: mpsc::Receiver<LogRequest>,
    pub validations: mpsc::Receiver<Validate>,
    /// Asks the link to go silent (see [`Silence`]).
    pub silence: watch::Sender<Silence>,
}

/// The link's side of the bus.
pub struct LinkPorts {
    pub outbox: mpsc::Receiver<AgentBody>,
    pub assignment: watch::Sender<Option<DesiredAssignment>>,
    pub lease: watch::Sender<LeaseEnd>,
    pub drills: mpsc::Sender<Drill>,
    pub log_requests: mpsc::Sender<LogRequest>,
    pub validations: mpsc::Sender<Validate>,
    pub silence: watch::Receiver<Silence>,
}

#[cfg(test)]
impl LinkPorts {
    /// The next progress report the parts send, skipping anything else;
    /// fails the test after 30 s.
    pub async fn next_progress(&mut self) -> sup_proto::v1::JobProgress {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                if let Some(AgentBody::Progress(p)) = self.outbox.recv().await {
                    return p;
                }
            }
        })
        .await
        .expect("a progress report within 30 s")
    }
}

pub fn bus() -> (Bus, LinkPorts) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (assign_tx, assign_rx) = watch::channel(None);
    let (drill_tx, drill_rx) = mpsc::channel(INBOX_CAPACITY);
    let (log_tx, log_rx) = mpsc::channel(INBOX_CAPACITY);
    let (validate_tx, validate_rx) = mpsc::channel(INBOX_CAPACITY);
    let (silence_tx, silence_rx) = watch::channel(None);
    let (lease_tx, lease_rx) = watch::channel(None);
    (
        Bus {
            outbox: Outbox { tx: out_tx },
            assignment: assign_rx,
            lease: lease_rx,
            drills: drill_rx,
            log_requests: log_rx,
            validations: validate_rx,
            silence: silence_tx,
        },
        LinkPorts {
            outbox: out_rx,
            assignment: assign_tx,
            lease: lease_tx,
            drills: drill_tx,
            log_requests: log_tx,
            validations: validate_tx,
            silence: silence_rx,
        },
    )
}

/// The level-triggered messages the link re-sends after registering: the
/// latest of each kind (per job where a node can hold several).
#[derive(Debug, Default)]
pub struct LevelState {
    health: Option<AgentBody>,
    ranks: Option<AgentBody>,
    checkpoints: std::collections::BTreeMap<String, AgentBody>,
    progress: Option<AgentBody>,
}

impl LevelState {
    /// Remembers `body` if it is level-triggered.
    pub fn remember(&mut self, body: &AgentBody) {
        match body {
            AgentBody::Health(report) => {
                // The Xids in it were news once; a replay must not count
                // them again.
                let mut verdicts_only = report.clone();
                verdicts_only.xids.clear();
                self.health = Some(AgentBody::Health(verdicts_only));
            }
            AgentBody::Ranks(status) => {
                // A replay must not send progress of an older generation
                // after the newer generation's status (generation fencing).
                if generation(self.progress.as_ref()).is_some_and(|g| g < status.generation) {
                    self.progress = None;
                }
                self.ranks = Some(body.clone());
            }
            AgentBody::Checkpoints(catalog) => {
                self.checkpoints.insert(catalog.job.clone(), body.clone());
            }
            AgentBody::Progress(progress)
                if generation(self.ranks.as_ref()).is_none_or(|g| progress.generation >= g) =>
            {
                self.progress = Some(body.clone());
            }
            _ => {}
        }
    }

    /// What to send after a registration, in a sensible order.
    pub fn replay(&self) -> Vec<AgentBody> {
        self.health
            .iter()
            .chain(self.ranks.iter())
            .chain(self.checkpoints.values())
            .chain(self.progress.iter())
            .cloned()
            .collect()
    }
}

/// The generation a rank status or progress report is about.
fn generation(body: Option<&AgentBody>) -> Option<u64> {
    match body? {
        AgentBody::Ranks(status) => Some(status.generation),
        AgentBody::Progress(progress) => Some(progress.generation),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_proto::v1::{GpuVerdict, HealthReport, RankExited, XidEvent};

    #[test]
    fn replay_never_sends_progress_of_a_generation_older_than_the_rank_status() {
        use sup_proto::v1::{JobProgress, RankStatus};
        let progress = |generation| {
            AgentBody::Progress(JobProgress {
                generation,
                ..Default::default()
            })
        };
        let ranks = |generation| {
            AgentBody::Ranks(RankStatus {
                generation,
                ..Default::default()
            })
        };
        let mut level = LevelState::default();
        level.remember(&ranks(1));
        level.remember(&progress(1));
        level.remember(&ranks(2));
        assert_eq!(level.replay(), vec![ranks(2)]);
        level.remember(&progress(1));
        assert_eq!(level.replay(), vec![ranks(2)], "late progress of gen 1");
        level.remember(&progress(2));
        assert_eq!(level.replay(), vec![ranks(2), progress(2)]);
    }

    #[test]
    fn replay_keeps_latest_level_state_and_drops_edge_events() {
        let mut level = LevelState::default();
        level.remember(&AgentBody::Health(HealthReport {
            verdicts: vec![GpuVerdict::default()],
            xids: vec![XidEvent {
                xid: 79,
                ..Default::default()
            }],
            visible_gpus: Some(8),
        }));
        level.remember(&AgentBody::RankExited(RankExited::default()));
        let replay = level.replay();
        assert_eq!(replay.len(), 1);
        match &replay[0] {
            AgentBody::Health(h) => {
                assert!(h.xids.is_empty(), "Xids are not replayed");
                assert_eq!(h.verdicts.len(), 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
