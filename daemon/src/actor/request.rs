//! How the rest of supd talks to the actor: the request types and a cheap,
//! cloneable handle whose methods send one and wait for its answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify};

use sup_core::scheduler::{SchedulerNode, SchedulerOp};
use sup_core::{
    CordonOutcome, EngineError, GpuReading, Millis, NodeState, Registration, SessionId,
};
use sup_proto::v1;

use crate::convert::AgentReport;
use crate::snapshot::Snapshot;

/// Where the actor sends a connected agent's messages.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the supervisor is not serving: {0}")]
    Unavailable(String),
}

/// Fields every mutating command carries besides its target.
pub(super) struct By {
    pub by: String,
    pub reason: String,
    pub request_id: String,
}

/// Messages to one agent's stream. Boxed: a channel allocates its slots in
/// blocks of 32, and supd holds one channel per node.
pub type AgentOutbound = mpsc::Sender<Box<v1::SupervisorMessage>>;

/// What an agent's stream hands the state actor.
pub enum AgentInput {
    Telemetry(Vec<GpuReading>),
    Report(AgentReport),
}

/// Room for one agent input in the actor's queue (`agent_slot`).
pub struct AgentSlot<'a>(mpsc::Permit<'a, Request>);

impl AgentSlot<'_> {
    pub fn send(self, node_id: String, session: SessionId, input: AgentInput) {
        self.0.send(match input {
            AgentInput::Telemetry(readings) => Request::Telemetry {
                node_id,
                session,
                readings,
            },
            AgentInput::Report(body) => Request::AgentReport {
                node_id,
                session,
                body,
            },
        });
    }
}

/// When an agent's stream last delivered a message (supervisor clock, Unix
/// ms; 0: not yet), written by the stream's own task as messages arrive and
/// read by the actor before it judges liveness. Liveness thus never waits
/// in the actor's queue behind bulk work such as a registration storm.
#[derive(Debug, Clone, Default)]
pub struct LivenessStamp(Arc<std::sync::atomic::AtomicI64>);

impl LivenessStamp {
    pub fn heard_at(&self, at: Millis) {
        self.0.fetch_max(at, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_heard(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub type JobReply = oneshot::Sender<Result<(bool, String, v1::Job), ActorError>>;

pub(super) enum Request {
    Register {
        registration: Registration,
        /// The batch scheduler's name for the node ("": the node id).
        scheduler_name: String,
        outbound: AgentOutbound,
        /// Stamped by the stream's task as each message arrives (see
        /// `Actor::sync_liveness`).
        heard: LivenessStamp,
        reply: oneshot::Sender<Result<NodeState, ActorError>>,
    },
    Telemetry {
        node_id: String,
        session: SessionId,
        readings: Vec<GpuReading>,
    },
    Disconnected {
        node_id: String,
        session: SessionId,
    },
    Cordon {
        node_id: String,
        who: By,
        reply: oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>,
    },
    Uncordon {
        node_id: String,
        who: By,
        /// Return the node to service without its agent's validation.
        skip_validation: bool,
        reply: oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>,
    },
    Drain {
        node_id: String,
        who: By,
        deadline_ms: u64,
        reply: oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>,
    },
    RemoveNode {
        node_id: String,
        who: By,
        reply: oneshot::Sender<Result<(bool, String), ActorError>>,
    },
    /// A snapshot newer than the one published (see `snapshot.rs`).
    Snapshot {
        reply: oneshot::Sender<Arc<Snapshot>>,
    },
    /// Answered at once: the actor is running.
    Ping {
        reply: oneshot::Sender<()>,
    },
    /// Any other agent message (health, ranks, checkpoints, progress, logs).
    AgentReport {
        node_id: String,
        session: SessionId,
        body: AgentReport,
    },
    SubmitJob {
        spec_toml: String,
        by: String,
        request_id: String,
        /// The Slurm allocation to bind the job to, read from Slurm.
        slurm: Option<sup_core::SlurmAllocation>,
        reply: JobReply,
    },
    StopJob {
        name: String,
        who: By,
        reply: JobReply,
    },
    GetJob {
        name: String,
        reply: oneshot::Sender<Result<(v1::Job, Vec<v1::Checkpoint>), ActorError>>,
    },
    GetLogs {
        job: String,
        rank: u32,
        lines: u32,
        reply: oneshot::Sender<Result<v1::LogResponse, ActorError>>,
    },
    Drill {
        node_id: String,
        drill: sup_core::Drill,
        by: String,
        request_id: String,
        reply: oneshot::Sender<Result<String, ActorError>>,
    },
    ResetBreaker {
        who: By,
        reply: oneshot::Sender<Result<(bool, String), ActorError>>,
    },
    /// What the batch scheduler says about its nodes (see `scheduler/`);
    /// answered with what to change there so it agrees with sup.
    SchedulerNodes {
        nodes: Vec<SchedulerNode>,
        reply: oneshot::Sender<Result<Vec<SchedulerOp>, ActorError>>,
    },
}

/// A cheap, cloneable way to talk to the actor.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) tx: mpsc::Sender<Request>,
    /// The newest published snapshot: reads are served from it.
    pub(super) snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Notified when a node record changed (a cordon set or cleared among
    /// them): the scheduler edge then looks again at once instead of at
    /// its next poll.
    pub(super) scheduler_wake: Arc<Notify>,
}

fn gone() -> ActorError {
    ActorError::Unavailable("the state actor has stopped".to_owned())
}

impl SupervisorHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn register(
        &self,
        registration: Registration,
        outbound: AgentOutbound,
    ) -> Result<NodeState, ActorError> {
        self.register_as(
            registration,
            String::new(),
            outbound,
            LivenessStamp::default(),
        )
        .await
    }

    /// A registration that names the node in the batch scheduler too.
    pub async fn register_as(
        &self,
        registration: Registration,
        scheduler_name: String,
        outbound: AgentOutbound,
        heard: LivenessStamp,
    ) -> Result<NodeState, ActorError> {
        self.ask(|reply| Request::Register {
            registration,
            scheduler_name,
            outbound,
            heard,
            reply,
        })
        .await?
    }

    /// Feeds the scheduler's view of its nodes; returns what to change in
    /// the scheduler, computed after the observation is applied.
    pub async fn scheduler_nodes(
        &self,
        nodes: Vec<SchedulerNode>,
    ) -> Result<Vec<SchedulerOp>, ActorError> {
        self.ask(|reply| Request::SchedulerNodes { nodes, reply })
            .await?
    }

    /// Woken when node records change (see `scheduler_wake`).
    pub fn scheduler_wake(&self) -> Arc<Notify> {
        self.scheduler_wake.clone()
    }

    pub async fn disconnected(&self, node_id: String, session: SessionId) {
        // Nothing to do if the actor is gone: supd is stopping.
        let _ = self
            .tx
            .send(Request::Disconnected { node_id, session })
            .await;
    }

    /// `request_id`: the client's id for this command ("" for none); a
    /// retry with the same id is answered, not applied again.
    pub async fn cordon(
        &self,
        node_id: String,
        reason: String,
        by: String,
        request_id: String,
    ) -> Result<(CordonOutcome, v1::Node), ActorError> {
        self.ask(|reply| Request::Cordon {
            node_id,
            who: By {
                by,
                reason,
                request_id,
            },
            reply,
        })
        .await?
    }

    /// Validates the node first when its agent can (unless
    /// `skip_validation`): the answer then says validation started.
    pub async fn uncordon(
        &self,
        node_id: String,
        reason: String,
        by: String,
        request_id: String,
        skip_validation: bool,
    ) -> Result<(CordonOutcome, v1::Node), ActorError> {
        self.ask(|reply| Request::Uncordon {
            node_id,
            who: By {
                by,
                reason,
                request_id,
            },
            skip_validation,
            reply,
        })
        .await?
    }

    /// Drains a node: its job moves off at its next checkpoint, or after
    /// `deadline_ms`, then the node is cordoned.
    pub async fn drain(
        &self,
        node_id: String,
        reason: String,
        deadline_ms: u64,
        by: String,
        request_id: String,
    ) -> Result<(CordonOutcome, v1::Node), ActorError> {
        self.ask(|reply| Request::Drain {
            node_id,
            who: By {
                by,
                reason,
                request_id,
            },
            deadline_ms,
            reply,
        })
        .await?
    }

    pub async fn remove_node(
        &self,
        node_id: String,
        by: String,
        request_id: String,
    ) -> Result<(bool, String), ActorError> {
        self.ask(|reply| Request::RemoveNode {
            node_id,
            who: By {
                by,
                reason: String::new(),
                request_id,
            },
            reply,
        })
        .await?
    }

    /// The cluster as readers see it: the published snapshot while it is
    /// fresh, else a new one from the actor (shared with every reader that
    /// asked in the same batch).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, ActorError> {
        let current = self.snapshots.borrow().clone();
        if current.is_fresh(super::now_ms()) {
            return Ok(current);
        }
        self.ask(|reply| Request::Snapshot { reply }).await
    }

    /// Whether the actor is running and answering.
    pub async fn ping(&self) -> Result<(), ActorError> {
        self.ask(|reply| Request::Ping { reply }).await
    }

    /// Waits for room in the actor's queue. An agent stream's task waits
    /// here inside a `select!` that goes on reading (and stamping) its
    /// stream meanwhile: see `grpc.rs`. Cancel-safe (a cancelled wait only
    /// loses its place in line).
    pub async fn agent_slot(&self) -> Result<AgentSlot<'_>, ActorError> {
        self.tx.reserve().await.map(AgentSlot).map_err(|_| gone())
    }

    pub async fn agent_report(
        &self,
        node_id: String,
        session: SessionId,
        body: AgentReport,
    ) -> Result<(), ActorError> {
        self.tx
            .send(Request::AgentReport {
                node_id,
                session,
                body,
            })
            .await
            .map_err(|_| gone())
    }

    pub async fn submit_job(
        &self,
        spec_toml: String,
        by: String,
        request_id: String,
    ) -> Result<(bool, String, v1::Job), ActorError> {
        self.ask(|reply| Request::SubmitJob {
            spec_toml,
            by,
            request_id,
            slurm: None,
            reply,
        })
        .await?
    }

    /// A job bound to a Slurm allocation (read from Slurm by the edge).
    pub async fn submit_job_in_allocation(
        &self,
        spec_toml: String,
        by: String,
        request_id: String,
        allocation: sup_core::SlurmAllocation,
    ) -> Result<(bool, String, v1::Job), ActorError> {
        self.ask(|reply| Request::SubmitJob {
            spec_toml,
            by,
            request_id,
            slurm: Some(allocation),
            reply,
        })
        .await?
    }

    pub async fn stop_job(
        &self,
        name: String,
        by: String,
        reason: String,
        request_id: String,
    ) -> Result<(bool, String, v1::Job), ActorError> {
        self.ask(|reply| Request::StopJob {
            name,
            who: By {
                by,
                reason,
                request_id,
            },
            reply,
        })
        .await?
    }

    pub async fn job(&self, name: String) -> Result<(v1::Job, Vec<v1::Checkpoint>), ActorError> {
        self.ask(|reply| Request::GetJob { name, reply }).await?
    }

    /// Asks the agent that runs the rank; the answer comes over its stream.
    pub async fn logs(
        &self,
        job: String,
        rank: u32,
        lines: u32,
    ) -> Result<v1::LogResponse, ActorError> {
        self.ask(|reply| Request::GetLogs {
            job,
            rank,
            lines,
            reply,
        })
        .await?
    }

    pub async fn drill(
        &self,
        node_id: String,
        drill: sup_core::Drill,
        by: String,
        request_id: String,
    ) -> Result<String, ActorError> {
        self.ask(|reply| Request::Drill {
            node_id,
            drill,
            by,
            request_id,
            reply,
        })
        .await?
    }

    pub async fn reset_breaker(
        &self,
        by: String,
        reason: String,
        request_id: String,
    ) -> Result<(bool, String), ActorError> {
        self.ask(|reply| Request::ResetBreaker {
            who: By {
                by,
                reason,
                request_id,
            },
            reply,
        })
        .await?
    }
}
