//! The one task that owns the policy engine and the store.
//!
//! Requests arrive on a channel and are handled in batches: the engine
//! decides, the batch's state changes are committed (and flushed) in one
//! store write, and only then are replies sent and agents told. A reply
//! therefore never acknowledges something that a crash could lose. If the
//! store cannot be written, the actor stops and supd stops serving (fail
//! closed) rather than run on state it could not persist.

mod agents;
mod commands;
mod idempotent;
mod request;
#[cfg(test)]
mod tests;
mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sup_proto::v1;
use sup_proto::v1::supervisor_message::Body as SupervisorBody;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use sup_core::{Action, Engine, Millis, SessionId};

use crate::convert;
use crate::metrics::Counters;
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreError};
use idempotent::RequestLog;
use request::Request;
pub use request::{
    ActorError, AgentInput, AgentOutbound, AgentSlot, JobReply, LivenessStamp, SupervisorHandle,
};
use watchdog::Watchdog;

/// A reply, sent once the batch it belongs to has been reconciled and made
/// durable: it gets the engine as it is then (`None`: the commit failed and
/// the reply must say so), so what it shows includes every consequence of
/// the batch.
type Deferred = Box<dyn FnOnce(Option<&Engine>) + Send>;

/// A reply whose value is known now.
fn defer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, ActorError>>,
    value: Result<T, ActorError>,
) -> Deferred {
    defer_with(reply, move |_| value)
}

/// A reply built from the engine after the batch.
fn defer_with<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, ActorError>>,
    build: impl FnOnce(&Engine) -> Result<T, ActorError> + Send + 'static,
) -> Deferred {
    Box::new(move |engine| {
        let value = match engine {
            Some(engine) => build(engine),
            None => Err(ActorError::Unavailable(
                "the change could not be persisted".to_owned(),
            )),
        };
        let _ = reply.send(value);
    })
}

pub struct Actor<S: Store> {
    engine: Engine,
    store: S,
    rx: mpsc::Receiver<Request>,
    sessions: HashMap<String, AgentSession>,
    telemetry_interval: Duration,
    counters: Arc<Counters>,
    ready: Arc<AtomicBool>,
    /// Log requests waiting for an agent's answer, by request id.
    pending_logs: HashMap<u64, oneshot::Sender<Result<v1::LogResponse, ActorError>>>,
    next_log_request: u64,
    /// systemd's watchdog, pinged from this loop.
    watchdog: Watchdog,
    /// Client request ids already applied (see `idempotent.rs`).
    requests: RequestLog,
    /// Changes of the actor's own (remembered requests), committed with
    /// the engine's in the next `apply_actions`.
    pending_changes: Vec<sup_core::Change>,
    /// What readers are served from (see `snapshot.rs`).
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// Something happened since the published snapshot was built.
    changed_since_snapshot: bool,
    /// This batch holds an operator's command: publish before answering it.
    publish_now: bool,
    /// Readers waiting for a newer snapshot than the published one.
    snapshot_waiters: Vec<oneshot::Sender<Arc<Snapshot>>>,
    /// Tells the scheduler edge that node records changed (never awaited:
    /// a slow or down Slurm cannot hold the actor up).
    scheduler_wake: Arc<Notify>,
    /// A write or an action was refused because this replica's term could
    /// not be renewed: from then on nothing it decides is written or sent,
    /// even if etcd answers again (its state has moved past the store's).
    /// It stays up, so that agents' assignment leases are still renewed,
    /// until it steps down (`standby::deposed`).
    frozen: bool,
}

/// A registered agent's live stream: where to send, and when it was last
/// heard from.
struct AgentSession {
    session: SessionId,
    outbound: AgentOutbound,
    heard: LivenessStamp,
}

/// Requests handled per batch before the batch is committed.
const MAX_BATCH: usize = 1024;

pub fn now_ms() -> Millis {
    sup_proto::time::now_unix_ms()
}

impl<S: Store> Actor<S> {
    pub fn new(
        engine: Engine,
        store: S,
        telemetry_interval: Duration,
        counters: Arc<Counters>,
        ready: Arc<AtomicBool>,
    ) -> (Self, SupervisorHandle) {
        let (tx, rx) = mpsc::channel(8192);
        let (snapshots, snapshot_rx) =
            watch::channel(Arc::new(build_snapshot(&engine, None, &counters)));
        let scheduler_wake = Arc::new(Notify::new());
        let actor = Actor {
            engine,
            store,
            rx,
            sessions: HashMap::new(),
            telemetry_interval,
            counters,
            ready,
            pending_logs: HashMap::new(),
            next_log_request: 1,
            watchdog: Watchdog::from_env(),
            requests: RequestLog::default(),
            pending_changes: Vec::new(),
            snapshots,
            changed_since_snapshot: false,
            publish_now: false,
            snapshot_waiters: Vec::new(),
            scheduler_wake: scheduler_wake.clone(),
            frozen: false,
        };
        (
            actor,
            SupervisorHandle {
                tx,
                snapshots: snapshot_rx,
                scheduler_wake,
            },
        )
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        loop {
            let wake = self.engine.poll_timeout();
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                msg = self.rx.recv() => match msg {
                    Some(m) => Some(m),
                    None => break,
                },
                _ = sleep_until(wake) => None,
                () = self.watchdog.due() => None,
            };
            self.watchdog.ping_if_due();
            let now = now_ms();
            let mut deferred: Vec<Deferred> = Vec::new();
            if let Some(request) = first {
                self.handle(now, request, &mut deferred);
                for _ in 1..MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(request) => self.handle(now, request, &mut deferred),
                        Err(_) => break,
                    }
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.sync_liveness(now);
                self.engine.handle_timeout(now);
                self.changed_since_snapshot = true;
            }
            if self.frozen {
                while self.engine.poll_action().is_some() {}
                self.pending_changes.clear();
                for d in deferred {
                    d(None);
                }
                continue;
            }
            let outgoing = match self.apply_actions() {
                Ok(outgoing) => outgoing,
                Err(StoreError::Deposed(why)) => {
                    tracing::warn!(
                        "not acting: {why}; nothing this replica decides is written or sent any \
                         more (it steps down once etcd answers, or when store.lease_bridge is over)"
                    );
                    self.frozen = true;
                    self.ready.store(false, Ordering::SeqCst);
                    for d in deferred {
                        d(None);
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist state; supd stops serving");
                    self.ready.store(false, Ordering::SeqCst);
                    for d in deferred {
                        d(None);
                    }
                    return Err(e);
                }
            };
            self.publish_snapshot();
            // Replies first (an agent's Registered must precede its
            // assignment), then what the decisions tell agents: all of it
            // only after the decisions are durable.
            for d in deferred {
                d(Some(&self.engine));
            }
            for (node_id, body) in outgoing {
                self.send_to_agent(&node_id, body);
            }
        }
        Ok(())
    }

    /// Routes one request; agents' in `agents.rs`, operators' in
    /// `commands.rs`. Replies wait in `deferred` for the batch's commit.
    fn handle(&mut self, now: Millis, request: Request, deferred: &mut Vec<Deferred>) {
        match &request {
            Request::Snapshot { .. } | Request::Ping { .. } | Request::GetJob { .. } => {}
            Request::Cordon { .. }
            | Request::Uncordon { .. }
            | Request::Drain { .. }
            | Request::RemoveNode { .. }
            | Request::SubmitJob { .. }
            | Request::StopJob { .. }
            | Request::Drill { .. }
            | Request::ResetBreaker { .. } => {
                self.changed_since_snapshot = true;
                self.publish_now = true;
            }
            _ => self.changed_since_snapshot = true,
        }
        match request {
            Request::Register {
                registration,
                scheduler_name,
                outbound,
                heard,
                reply,
            } => self.register(
                now,
                registration,
                &scheduler_name,
                AgentSession {
                    session: 0,
                    outbound,
                    heard,
                },
                reply,
                deferred,
            ),
            Request::Telemetry {
                node_id,
                session,
                readings,
            } => self.telemetry(now, &node_id, session, readings),
            Request::Disconnected { node_id, session } => self.disconnected(now, &node_id, session),
            Request::AgentReport {
                node_id,
                session,
                body,
            } => self.agent_report(now, &node_id, session, body),
            Request::GetLogs {
                job,
                rank,
                lines,
                reply,
            } => self.request_logs(job, rank, lines, reply),
            Request::Cordon {
                node_id,
                who,
                reply,
            } => deferred.push(self.cordon(now, node_id, who, reply)),
            Request::Uncordon {
                node_id,
                who,
                skip_validation,
                reply,
            } => deferred.push(self.uncordon(now, node_id, who, skip_validation, reply)),
            Request::Drain {
                node_id,
                who,
                deadline_ms,
                reply,
            } => deferred.push(self.drain(now, node_id, who, deadline_ms, reply)),
            Request::RemoveNode {
                node_id,
                who,
                reply,
            } => deferred.push(self.remove_node(now, node_id, who, reply)),
            Request::SubmitJob {
                spec_toml,
                by,
                request_id,
                slurm,
                reply,
            } => deferred.push(self.submit_job(now, spec_toml, by, request_id, slurm, reply)),
            Request::StopJob { name, who, reply } => {
                deferred.push(self.stop_job(now, name, who, reply))
            }
            Request::Drill {
                node_id,
                drill,
                by,
                request_id,
                reply,
            } => deferred.push(self.drill(now, node_id, drill, by, request_id, reply)),
            Request::ResetBreaker { who, reply } => {
                deferred.push(self.reset_breaker(now, who, reply))
            }
            Request::Snapshot { reply } => self.snapshot_waiters.push(reply),
            Request::Ping { reply } => {
                let _ = reply.send(());
            }
            Request::GetJob { name, reply } => deferred.push(self.get_job(&name, reply)),
            Request::SchedulerNodes { nodes, reply } => {
                self.engine.on_scheduler_nodes(now, nodes);
                deferred.push(defer_with(reply, |engine| Ok(engine.scheduler_plan())));
            }
        }
    }

    /// Publishes a new snapshot if a reader waits for one or an operator's
    /// command must read its own change; one build per batch at most, and
    /// none when nothing changed since the last.
    fn publish_snapshot(&mut self) {
        if !self.publish_now && self.snapshot_waiters.is_empty() {
            return;
        }
        if self.changed_since_snapshot {
            let fresh =
                build_snapshot(&self.engine, Some(&self.snapshots.borrow()), &self.counters);
            self.snapshots.send_replace(Arc::new(fresh));
            self.changed_since_snapshot = false;
        } else {
            self.snapshots.borrow().confirm(now_ms());
        }
        self.publish_now = false;
        let current = self.snapshots.borrow().clone();
        for waiter in self.snapshot_waiters.drain(..) {
            let _ = waiter.send(current.clone());
        }
    }

    /// Hands the engine when each live stream was last heard from, so its
    /// liveness check judges silence by what arrived, not by what it has
    /// worked through so far.
    fn sync_liveness(&mut self, now: Millis) {
        for (node_id, agent) in &self.sessions {
            let at = agent.heard.last_heard();
            if at > 0 {
                self.engine.on_heard(now, node_id, agent.session, at);
            }
        }
    }

    /// Client request ids remembered by the store (at startup).
    pub fn with_requests(mut self, records: Vec<sup_core::RequestRecord>) -> Self {
        self.requests = RequestLog::restored(records);
        self
    }

    /// Sends to a connected agent. A stream that cannot take the message is
    /// closed: the agent reconnects and gets the whole desired state again,
    /// which is better than a silently lost assignment.
    fn send_to_agent(&mut self, node_id: &str, body: SupervisorBody) {
        let Some(agent) = self.sessions.get(node_id) else {
            return;
        };
        let message = v1::SupervisorMessage { body: Some(body) };
        if agent.outbound.try_send(Box::new(message)).is_err() {
            tracing::warn!(node = %node_id, "agent stream is not draining; closing it so the agent resyncs");
            self.sessions.remove(node_id);
        }
    }

    fn apply_actions(&mut self) -> Result<Vec<(String, SupervisorBody)>, StoreError> {
        let mut changes = std::mem::take(&mut self.pending_changes);
        let mut outgoing = Vec::new();
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::SendAssignment {
                    node_id,
                    assignment,
                } => outgoing.push((
                    node_id,
                    SupervisorBody::Assignment(convert::assignment_to_wire(assignment)),
                )),
                Action::SendValidation { node_id, id } => {
                    outgoing.push((node_id, SupervisorBody::Validate(v1::Validate { id })))
                }
                Action::SendDrill { node_id, drill } => outgoing.push((
                    node_id,
                    SupervisorBody::Drill(convert::drill_to_wire(drill)),
                )),
                Action::Persist(change) => {
                    if matches!(
                        change,
                        sup_core::Change::PutNode(_) | sup_core::Change::DeleteNode(_)
                    ) {
                        // A cordon may have been set or cleared: the
                        // scheduler edge reconciles now, not at its next poll.
                        self.scheduler_wake.notify_one();
                    }
                    changes.push(change)
                }
                Action::CloseSession {
                    node_id,
                    session,
                    reason,
                } => {
                    tracing::info!(node = %node_id, session, %reason, "closing agent stream");
                    if self
                        .sessions
                        .get(&node_id)
                        .is_some_and(|a| a.session == session)
                    {
                        self.sessions.remove(&node_id);
                    }
                }
            }
        }
        if changes.is_empty() {
            // Nothing to write, so no transaction fences these messages:
            // the leader lease does.
            if !outgoing.is_empty() {
                self.store.fenced()?;
            }
            return Ok(outgoing);
        }
        self.store.commit(&changes)?;
        self.counters.store_commits.fetch_add(1, Ordering::Relaxed);
        let mut by_kind = self
            .counters
            .events_by_kind
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for change in &changes {
            if let sup_core::Change::AppendEvent(e) = change {
                *by_kind.entry(e.kind.as_str()).or_default() += 1;
                self.observe(e);
                tracing::info!(
                    kind = e.kind.as_str(),
                    node = e.node.as_deref().unwrap_or(""),
                    reason = %e.reason,
                    "event"
                );
            }
        }
        Ok(outgoing)
    }
}

impl<S: Store> Actor<S> {
    /// Metrics that come from events: checkpoint times, recovery latency.
    fn observe(&self, e: &sup_core::Event) {
        match (e.kind.as_str(), e.job.as_ref()) {
            ("job_checkpoint", Some(job)) => {
                self.counters
                    .last_checkpoint_at
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(job.clone(), e.at);
            }
            ("job_running", Some(_)) => {
                if let Some(ms) = e.recovery_ms {
                    // Milliseconds to seconds; precision loss is irrelevant.
                    #[allow(clippy::cast_precision_loss)]
                    self.counters.recovery_latency.0.observe(ms as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
}

/// A snapshot of the engine now, fresh for as long as its cost allows.
fn build_snapshot(engine: &Engine, previous: Option<&Snapshot>, counters: &Counters) -> Snapshot {
    let started = std::time::Instant::now();
    let mut snapshot = Snapshot::build(engine, now_ms(), previous);
    snapshot.cluster.status.supervisor = counters.supervisor.get().cloned();
    let took = started.elapsed();
    counters.snapshots_built.fetch_add(1, Ordering::Relaxed);
    counters.snapshot_build_us.fetch_add(
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    snapshot.costing(took)
}

async fn sleep_until(wake: Option<Millis>) {
    match wake {
        Some(at) => {
            let wait = u64::try_from(at - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}
