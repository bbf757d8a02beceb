//! Generation fencing of the reports that carry a generation (rank status,
//! rank exits, progress).
//!
//! Several tasks report about ranks: the launcher (status, exits) and the
//! progress intake. Once the launcher has begun a generation, nothing about
//! an older one may reach supd after it: supd would otherwise have to trust
//! that every stale message is filtered on its side. The check and the send
//! happen under one lock, so a report that passed the check cannot be
//! overtaken by the start of a newer generation.

use std::sync::{Arc, Mutex, MutexGuard};

use sup_proto::v1::agent_message::Body as AgentBody;
use tracing::debug;

use crate::bus::Outbox;

/// The job and generation whose ranks this node runs (or last ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// `None` when the node was told to run nothing.
    pub job: Option<String>,
    pub generation: u64,
}

#[derive(Debug)]
struct State {
    running: Option<Running>,
}

/// An [`Outbox`] that refuses reports of generations older than the one
/// the launcher has begun. Cheap to clone; clones share the fence.
#[derive(Debug, Clone)]
pub struct Fence {
    outbox: Outbox,
    state: Arc<Mutex<State>>,
}

impl Fence {
    pub fn new(outbox: Outbox) -> Fence {
        Fence {
            outbox,
            state: Arc::new(Mutex::new(State { running: None })),
        }
    }

    /// Sends a message that carries no generation (catalogs, log answers).
    pub fn send(&self, body: AgentBody) -> bool {
        self.outbox.send(body)
    }

    /// Sends a report about `generation` unless a newer one has begun.
    pub fn send_for(&self, generation: u64, body: AgentBody) -> bool {
        let state = self.lock();
        let current = state.running.as_ref().map_or(0, |r| r.generation);
        if generation < current {
            debug!(
                generation,
                current, "dropping a report about a generation older than the running one"
            );
            return false;
        }
        self.outbox.send(body)
    }

    /// Makes `running` the current generation: from now on reports of older
    /// generations are dropped. A generation never goes back.
    pub fn begin(&self, running: Running) {
        let mut state = self.lock();
        let current = state.running.as_ref().map_or(0, |r| r.generation);
        if running.generation >= current {
            state.running = Some(running);
        }
    }

    /// What the launcher runs now, if it has begun anything.
    pub fn running(&self) -> Option<Running> {
        self.lock().running.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value that every holder leaves consistent, so
        // a panic elsewhere while holding it does not make it wrong.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_proto::v1::{JobProgress, RankStatus};

    #[test]
    fn reports_of_older_generations_are_dropped_once_a_newer_one_begins() {
        let (bus, mut ports) = crate::bus::bus();
        let fence = Fence::new(bus.outbox);
        let progress = |generation| {
            AgentBody::Progress(JobProgress {
                job: "j".into(),
                generation,
                ..Default::default()
            })
        };
        assert!(fence.send_for(3, progress(3)), "nothing begun yet");
        fence.begin(Running {
            job: Some("j".into()),
            generation: 5,
        });
        assert!(!fence.send_for(3, progress(3)));
        assert!(fence.send_for(5, AgentBody::Ranks(RankStatus::default())));
        // An older generation cannot take the fence back.
        fence.begin(Running {
            job: None,
            generation: 4,
        });
        assert_eq!(fence.running().map(|r| r.generation), Some(5));
        let mut sent = Vec::new();
        while let Ok(body) = ports.outbox.try_recv() {
            sent.push(body);
        }
        assert_eq!(sent.len(), 2);
    }
}
