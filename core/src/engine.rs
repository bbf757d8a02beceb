//! The engine: the state it owns, how callers drive it (inputs with the
//! time, then `poll_action` and `poll_timeout`), and the event log every
//! decision is recorded in.

use std::collections::{BTreeMap, VecDeque};

use crate::breaker::Breaker;
use crate::config::EngineConfig;
use crate::health::XidSightings;
use crate::messages::{DesiredAssignment, Drill};
use crate::records::{Change, Event, EventKind, JobState, Persisted};
use crate::{jobs, Millis, Node, SessionId};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Persist(Change),
    /// End an agent stream, with the reason to log (a newer stream took over).
    CloseSession {
        node_id: String,
        session: SessionId,
        reason: String,
    },
    /// Tell a connected agent what it should run now (level-triggered).
    SendAssignment {
        node_id: String,
        assignment: DesiredAssignment,
    },
    SendDrill {
        node_id: String,
        drill: Drill,
    },
    /// Ask a node's agent to run its validation command (an uncordon
    /// waits for the answer).
    SendValidation {
        node_id: String,
        id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown node '{0}'")]
    UnknownNode(String),
    #[error("unknown job '{0}'")]
    UnknownJob(String),
    #[error("invalid job spec: {0}")]
    InvalidJobSpec(String),
    #[error("job '{0}' already exists and is not finished; stop it first or pick another name")]
    DuplicateJob(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("node id '{node_id}' is already connected from {connected_from}; stop that agent or give this one another --node-id")]
    DuplicateNodeId {
        node_id: String,
        connected_from: String,
    },
    #[error("invalid registration: {0}")]
    InvalidRegistration(String),
    #[error("{0}")]
    InvalidArgument(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CordonOutcome {
    pub changed: bool,
    pub message: String,
}

#[derive(Debug)]
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) jobs: BTreeMap<String, jobs::Job>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) next_event_seq: u64,
    pub(crate) actions: VecDeque<Action>,
    /// Earliest time a node may turn unreachable. May be early (then the
    /// check finds nothing and computes the next one), never late.
    pub(crate) next_liveness_check: Option<Millis>,
    /// Other time-driven work (lost nodes, breaker window).
    pub(crate) next_job_check: Option<Millis>,
    /// Every job generation comes from this one counter, so generations
    /// only grow, across jobs too: an agent can fence any older assignment.
    pub(crate) last_generation: u64,
    /// Ids of validation requests (in memory: an answer after a supd
    /// restart matches nothing and is ignored).
    pub(crate) next_validation_id: u64,
    /// An input asked for a reconcile, to run at this time (the newest
    /// input's) before the next action is handed out.
    pub(crate) reconcile_requested: Option<Millis>,

    pub(crate) breaker: Breaker,
    /// Application Xids across nodes (the job's software at fault).
    pub(crate) app_xids: XidSightings,
    /// Hardware Xids across nodes (a driver push or the fabric at fault).
    pub(crate) hw_xids: XidSightings,
    pub(crate) spares_were_low: bool,
    /// Since when supd suspects its own network (see
    /// `EngineConfig::partition_window_ms`); lost-node restarts wait.
    pub(crate) partition_since: Option<Millis>,
    /// Until when nodes restored from the store may stay silent: every
    /// agent reconnects to a restarted supervisor at once, and a storm of
    /// thousands must not turn healthy nodes unreachable. Brought forward
    /// to the moment every restored node has reported again.
    pub(crate) rejoin_deadline: Millis,
    /// Registration times within the last `unreachable_after` (see
    /// `note_registration`), and until when a registration storm lasts.
    pub(crate) recent_registrations: VecDeque<Millis>,
    pub(crate) storm_until: Millis,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine::restore(config, Persisted::default(), 0)
    }

    /// Rebuilds the engine from the store. Every restored node counts as seen
    /// at `now`: a supervisor restart must not turn healthy nodes unreachable.
    pub fn restore(config: EngineConfig, persisted: Persisted, now: Millis) -> Self {
        let next_event_seq = persisted.events.last().map_or(1, |e| e.seq + 1);
        let nodes: BTreeMap<String, Node> = persisted
            .nodes
            .into_iter()
            .map(|record| {
                let mut node = Node::new(record, None, now);
                node.restored = true;
                node.awaiting_rejoin = true;
                (node.record.id.clone(), node)
            })
            .collect();
        let rejoin_deadline = now + config.rejoin_grace_ms.max(config.unreachable_after_ms);
        let next_liveness_check = (!nodes.is_empty()).then_some(now + config.unreachable_after_ms);
        // Releasing nodes (a job finishing, or waiting for nodes) takes
        // generations no job record keeps, and a job submitted again under
        // its name starts its record at 0: the stored counter is the truth,
        // the records only a floor for stores written before it was kept.
        let last_generation = persisted
            .jobs
            .iter()
            .map(|j| j.generation)
            .chain(persisted.last_generation)
            .max()
            .unwrap_or(0);
        let jobs = persisted
            .jobs
            .into_iter()
            .map(|mut record| {
                // A record from before the goodput accounting starts it now,
                // in the bucket its state implies.
                let bucket = match record.state {
                    JobState::Pending => crate::Bucket::Waiting,
                    JobState::Running => crate::Bucket::Productive,
                    s if s.is_finished() => crate::Bucket::Stopped,
                    _ => crate::Bucket::Restart,
                };
                record.goodput.ensure_started(now, bucket);
                if record.state.is_finished() {
                    record.goodput.end(now);
                }
                (record.spec.name.clone(), jobs::Job::restored(record))
            })
            .collect();
        Engine {
            config,
            nodes,
            jobs,
            events: persisted.events.into(),
            next_event_seq,
            actions: VecDeque::new(),
            next_liveness_check,
            next_job_check: None,
            last_generation,
            reconcile_requested: None,
            next_validation_id: 0,
            breaker: Breaker::restored(persisted.breaker.unwrap_or_default()),
            app_xids: XidSightings::default(),
            hw_xids: XidSightings::default(),
            spares_were_low: false,
            partition_since: None,
            rejoin_deadline,
            recent_registrations: VecDeque::new(),
            storm_until: Millis::MIN,
        }
    }

    /// The newest generation handed out: the fencing counter behind every
    /// assignment, which only grows.
    pub fn last_generation(&self) -> u64 {
        self.last_generation
    }

    /// Takes the next generation, durably: agents drop any assignment whose
    /// generation is not newer than one they hold, so after a restart the
    /// counter must continue, not start again from the jobs' records.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.actions
            .push_back(Action::Persist(Change::PutLastGeneration(
                self.last_generation,
            )));
        self.last_generation
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Events oldest first.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> + ExactSizeIterator {
        self.events.iter()
    }

    /// What the engine decided, oldest first. The first call after inputs
    /// judges and acts on them (one reconcile for the whole batch), so a caller that feeds a batch of inputs
    /// and then drains the actions gets every consequence of the batch.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(at) = self.reconcile_requested {
            self.reconcile(at);
        }
        self.actions.pop_front()
    }

    /// Time-driven decisions: nodes silent too long become unreachable
    /// (silence alone does not cordon: a link flap must not take a node and
    /// its job out of service), then reconcile.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.check_liveness(now);
        self.reconcile(now);
    }

    /// Inputs call this instead of reconciling themselves: the work is done
    /// once per batch, by [`Engine::poll_action`] or [`Engine::handle_timeout`],
    /// at the newest time an input asked at.
    pub(crate) fn request_reconcile(&mut self, now: Millis) {
        self.reconcile_requested = Some(self.reconcile_requested.map_or(now, |at| at.max(now)));
    }

    /// Level-triggered: judge every job and act on each judgement (fail
    /// over, roll back, restart a hang), start pending jobs, then tell every
    /// connected agent what it should run. Runs once per batch of inputs;
    /// what it does itself asks for no second run.
    pub fn reconcile(&mut self, now: Millis) {
        self.next_job_check = None;
        self.expire_breaker_window(now);
        let names = self.jobs_by_priority();
        for name in &names {
            let Some(job) = self.jobs.get(name) else {
                continue;
            };
            let judgement = self.judge_job(now, job);
            self.act_on(now, name, judgement);
        }
        for name in &names {
            if self
                .jobs
                .get(name)
                .is_some_and(|j| j.record.state == JobState::Pending)
            {
                self.launch(now, name, None);
            }
        }
        self.finish_drains(now);
        self.expire_validations(now);
        self.sync_assignments();
        self.check_spares(now);
        self.reconcile_requested = None;
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        match (self.next_liveness_check, self.next_job_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn schedule_liveness_check(&mut self, at: Millis) {
        self.next_liveness_check = Some(self.next_liveness_check.map_or(at, |n| n.min(at)));
    }

    pub(crate) fn schedule_job_check(&mut self, at: Millis) {
        self.next_job_check = Some(self.next_job_check.map_or(at, |n| n.min(at)));
    }

    pub(crate) fn record_event(
        &mut self,
        now: Millis,
        kind: EventKind,
        node: Option<&str>,
        reason: String,
    ) {
        self.record_job_event(now, kind, node, None, reason);
    }

    pub(crate) fn record_job_event(
        &mut self,
        now: Millis,
        kind: EventKind,
        node: Option<&str>,
        job: Option<&str>,
        reason: String,
    ) {
        self.push_event(Event {
            seq: self.next_event_seq,
            at: now,
            kind,
            node: node.map(str::to_owned),
            job: job.map(str::to_owned),
            reason,
            recovery_ms: None,
        });
    }

    /// Appends an event (its `seq` is assigned here) and trims the log.
    pub(crate) fn push_event(&mut self, mut event: Event) {
        event.seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.events.push_back(event.clone());
        self.actions
            .push_back(Action::Persist(Change::AppendEvent(event)));
        let mut trimmed = None;
        while self.events.len() > self.config.event_log_capacity.max(1) {
            trimmed = self.events.pop_front().map(|e| e.seq);
        }
        if let Some(seq) = trimmed {
            self.actions
                .push_back(Action::Persist(Change::TrimEventsThrough(seq)));
        }
    }
}

/// What became of an agent's report: applied, or why it was ignored (each
/// reason is counted apart, so an operator can tell a replaced stream from
/// an agent still talking about an old generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Applied,
    /// From an agent stream that has since been replaced, or a node that
    /// is not registered.
    StaleStream,
    /// About a job generation the node no longer runs: an older
    /// generation, a finished job, or a job the node is not part of.
    StaleGeneration,
    /// A rank the agent stopped itself (a newer generation, or no
    /// assignment): expected, and used only for a hang's post-mortem.
    StoppedByAgent,
}

impl ReportOutcome {
    pub fn is_applied(self) -> bool {
        self == ReportOutcome::Applied
    }

    /// The `reason` label of `sup_agent_stale_reports_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportOutcome::Applied => "applied",
            ReportOutcome::StaleStream => "stale_stream",
            ReportOutcome::StaleGeneration => "stale_generation",
            ReportOutcome::StoppedByAgent => "stopped_by_agent",
        }
    }
}
