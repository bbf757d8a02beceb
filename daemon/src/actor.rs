//! The one task that owns the policy engine and the store.
//!
//! Requests arrive on a channel and are handled in batches: the engine
//! decides, the batch's state changes are committed (and flushed) in one
//! store write, and only then are replies sent and agents told. A reply
//! therefore never acknowledges something that a crash could lose. If the
//! store cannot be written, the actor stops and supd stops serving (fail
//! closed) rather than run on state it could not persist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sup_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};

use sup_proto::v1::supervisor_message::Body as SupervisorBody;

use crate::convert::{self, AgentReport};
use crate::store::{Store, StoreError};
use crate::view;
use sup_core::{
    Action, CordonOutcome, Engine, EngineError, GpuReading, Millis, NodeState, Registration,
    RequestRecord, SessionId,
};

/// Where the actor sends a connected agent's messages.
pub type AgentOutbound = mpsc::Sender<Result<v1::SupervisorMessage, tonic::Status>>;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the supervisor is not serving: {0}")]
    Unavailable(String),
}

/// Counters the metrics endpoint reads; written by the actor, except the
/// TLS parts (the gRPC accept loop's).
#[derive(Debug, Default)]
pub struct Counters {
    pub tls_handshake_failures: crate::grpc_tls::HandshakeFailures,
    /// The gRPC port's TLS handshakes (for certificate expiry), when TLS
    /// is on.
    pub tls: std::sync::OnceLock<crate::grpc_tls::Handshakes>,
    pub reports: AtomicU64,
    pub stale_reports: AtomicU64,
    pub store_commits: AtomicU64,
    pub events_by_kind: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Xids by (node, GPU index, GPU UUID, Xid code).
    pub xids: Mutex<std::collections::BTreeMap<(String, u32, String, u32), u64>>,
    /// When each job's newest complete checkpoint was reported (its
    /// `job_checkpoint` event), unix ms; for seconds-since-checkpoint.
    pub last_checkpoint_at: Mutex<std::collections::BTreeMap<String, Millis>>,
    /// Detection to action: from a fault being reported to every rank of
    /// the replacement generation launched.
    pub recovery_latency: RecoveryLatency,
}

/// A histogram of recovery latencies in seconds (shared with each scrape's
/// registry: clones observe into the same buckets).
#[derive(Debug, Clone)]
pub struct RecoveryLatency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for RecoveryLatency {
    fn default() -> Self {
        // From "spare already warm" (sub-second) to "waited for a node".
        RecoveryLatency(prometheus_client::metrics::histogram::Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]))
    }
}

/// The recovery time in a `job_running` event's reason ("...; every rank
/// launched N ms after the fault was reported"), the format the engine
/// writes and the end-to-end tests read.
pub fn recovery_ms(reason: &str) -> Option<u64> {
    reason
        .split("every rank launched ")
        .nth(1)?
        .split(" ms after the fault")
        .next()?
        .trim()
        .parse()
        .ok()
}

pub type JobReply = oneshot::Sender<Result<(bool, String, v1::Job), ActorError>>;

enum Request {
    Register {
        registration: Registration,
        outbound: AgentOutbound,
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
        reason: String,
        by: String,
        request_id: String,
        reply: oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>,
    },
    Uncordon {
        node_id: String,
        reason: String,
        by: String,
        request_id: String,
        reply: oneshot::Sender<Result<(CordonOutcome, v1::Node), ActorError>>,
    },
    Status {
        reply: oneshot::Sender<v1::ClusterStatus>,
    },
    Node {
        node_id: String,
        reply: oneshot::Sender<Result<v1::Node, ActorError>>,
    },
    Events {
        after_seq: u64,
        limit: usize,
        reply: oneshot::Sender<Vec<v1::Event>>,
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
        reply: JobReply,
    },
    StopJob {
        name: String,
        by: String,
        reason: String,
        request_id: String,
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
        by: String,
        reason: String,
        request_id: String,
        reply: oneshot::Sender<Result<(bool, String), ActorError>>,
    },
}

/// A cheap, cloneable way to talk to the actor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Request>,
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
        self.ask(|reply| Request::Register {
            registration,
            outbound,
            reply,
        })
        .await?
    }

    pub async fn telemetry(
        &self,
        node_id: String,
        session: SessionId,
        readings: Vec<GpuReading>,
    ) -> Result<(), ActorError> {
        self.tx
            .send(Request::Telemetry {
                node_id,
                session,
                readings,
            })
            .await
            .map_err(|_| gone())
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
            reason,
            by,
            request_id,
            reply,
        })
        .await?
    }

    pub async fn uncordon(
        &self,
        node_id: String,
        reason: String,
        by: String,
        request_id: String,
    ) -> Result<(CordonOutcome, v1::Node), ActorError> {
        self.ask(|reply| Request::Uncordon {
            node_id,
            reason,
            by,
            request_id,
            reply,
        })
        .await?
    }

    pub async fn status(&self) -> Result<v1::ClusterStatus, ActorError> {
        self.ask(|reply| Request::Status { reply }).await
    }

    pub async fn node(&self, node_id: String) -> Result<v1::Node, ActorError> {
        self.ask(|reply| Request::Node { node_id, reply }).await?
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
            by,
            reason,
            request_id,
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
            by,
            reason,
            request_id,
            reply,
        })
        .await?
    }

    pub async fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<v1::Event>, ActorError> {
        self.ask(|reply| Request::Events {
            after_seq,
            limit,
            reply,
        })
        .await
    }
}

/// Sends a reply once the batch it belongs to is durable; `false` means the
/// commit failed and the reply must say so.
type Deferred = Box<dyn FnOnce(bool) + Send>;

fn defer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, ActorError>>,
    value: Result<T, ActorError>,
) -> Deferred {
    Box::new(move |committed| {
        let value = if committed {
            value
        } else {
            Err(ActorError::Unavailable(
                "the change could not be persisted".to_owned(),
            ))
        };
        let _ = reply.send(value);
    })
}

pub struct Actor<S: Store> {
    engine: Engine,
    store: S,
    rx: mpsc::Receiver<Request>,
    sessions: HashMap<String, (SessionId, AgentOutbound)>,
    telemetry_interval: Duration,
    counters: Arc<Counters>,
    ready: Arc<AtomicBool>,
    /// Log requests waiting for an agent's answer, by request id.
    pending_logs: HashMap<u64, oneshot::Sender<Result<v1::LogResponse, ActorError>>>,
    next_log_request: u64,
    /// systemd's watchdog, pinged from this loop (see [`Watchdog`]).
    watchdog: Watchdog,
    /// Client request ids already applied (see [`RequestLog`]).
    requests: RequestLog,
    /// Changes of the actor's own (remembered requests), committed with
    /// the engine's in the next `apply_actions`.
    pending_changes: Vec<sup_core::Change>,
}

/// Remembered client request ids, oldest first, bounded in count and age:
/// a retry comes within seconds or minutes, not days.
#[derive(Default)]
struct RequestLog {
    by_id: HashMap<String, RequestRecord>,
    order: std::collections::VecDeque<String>,
}

const REQUEST_LOG_MAX: usize = 10_000;
const REQUEST_LOG_MAX_AGE_MS: Millis = 24 * 3600 * 1000;
const REQUEST_ID_MAX_LEN: usize = 128;

/// The systemd watchdog (`WatchdogSec=`), pinged from the actor's loop
/// itself: the loop wakes at least every half period even when idle, and a
/// loop that is stuck (a hung store write, a runaway decision) stops the
/// pings, so systemd restarts supd. A timer task would keep pinging for a
/// dead loop. Without `WATCHDOG_USEC` (not under systemd) it does nothing.
struct Watchdog {
    period: Option<Duration>,
    next: tokio::time::Instant,
}

impl Watchdog {
    fn from_env() -> Watchdog {
        Watchdog {
            period: sd_notify::watchdog_enabled().map(|d| d / 2),
            next: tokio::time::Instant::now(),
        }
    }

    /// Resolves when the next ping is due (never without a watchdog).
    async fn due(&self) {
        match self.period {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    fn ping_if_due(&mut self) {
        let Some(period) = self.period else { return };
        let now = tokio::time::Instant::now();
        if now >= self.next {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
            self.next = now + period;
        }
    }
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
        };
        (actor, SupervisorHandle { tx })
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
                self.engine.handle_timeout(now);
            }
            let outgoing = match self.apply_actions() {
                Ok(outgoing) => outgoing,
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist state; supd stops serving");
                    self.ready.store(false, Ordering::SeqCst);
                    for d in deferred {
                        d(false);
                    }
                    return Err(e);
                }
            };
            // Replies first (an agent's Registered must precede its
            // assignment), then what the decisions tell agents: all of it
            // only after the decisions are durable.
            for d in deferred {
                d(true);
            }
            for (node_id, body) in outgoing {
                self.send_to_agent(&node_id, body);
            }
        }
        Ok(())
    }

    fn handle(&mut self, now: Millis, request: Request, deferred: &mut Vec<Deferred>) {
        match request {
            Request::Register {
                registration,
                outbound,
                reply,
            } => {
                let node_id = registration.node_id.clone();
                let session = registration.session;
                let result = self.engine.register(now, registration);
                if let Ok(state) = &result {
                    let registered = v1::SupervisorMessage {
                        body: Some(SupervisorBody::Registered(v1::Registered {
                            node_id: node_id.clone(),
                            state: view::node_state(*state) as i32,
                            telemetry_interval_ms: u32::try_from(
                                self.telemetry_interval.as_millis(),
                            )
                            .unwrap_or(u32::MAX),
                        })),
                    };
                    // Replacing the entry drops the previous stream's sender,
                    // which ends that stream (takeover).
                    self.sessions
                        .insert(node_id.clone(), (session, outbound.clone()));
                    deferred.push(Box::new(move |committed| {
                        if committed {
                            let _ = outbound.try_send(Ok(registered));
                        }
                    }));
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::Telemetry {
                node_id,
                session,
                readings,
            } => {
                if self.engine.telemetry(now, &node_id, session, readings) {
                    self.counters.reports.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.stale_reports.fetch_add(1, Ordering::Relaxed);
                }
            }
            Request::Disconnected { node_id, session } => {
                self.engine.disconnected(now, &node_id, session);
                if self
                    .sessions
                    .get(&node_id)
                    .is_some_and(|(s, _)| *s == session)
                {
                    self.sessions.remove(&node_id);
                }
            }
            Request::Cordon {
                node_id,
                reason,
                by,
                request_id,
                reply,
            } => {
                if let Some(replay) = self.replayed(&request_id, "cordon", &node_id) {
                    deferred.push(defer(reply, self.replay_node(replay, &node_id)));
                    return;
                }
                let result = self
                    .engine
                    .cordon(now, &node_id, &reason, &by)
                    .and_then(|outcome| {
                        Ok((
                            outcome,
                            view::node(&self.engine, self.engine.node(&node_id)?),
                        ))
                    });
                if let Ok((outcome, _)) = &result {
                    if outcome.changed {
                        tracing::warn!(node = %node_id, by = %by, reason = %reason, "node cordoned");
                    }
                    let message = outcome.message.clone();
                    self.remember(now, &request_id, "cordon", &node_id, &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::Uncordon {
                node_id,
                reason,
                by,
                request_id,
                reply,
            } => {
                if let Some(replay) = self.replayed(&request_id, "uncordon", &node_id) {
                    deferred.push(defer(reply, self.replay_node(replay, &node_id)));
                    return;
                }
                let result =
                    self.engine
                        .uncordon(now, &node_id, &by, &reason)
                        .and_then(|outcome| {
                            Ok((
                                outcome,
                                view::node(&self.engine, self.engine.node(&node_id)?),
                            ))
                        });
                if let Ok((outcome, _)) = &result {
                    if outcome.changed {
                        tracing::info!(node = %node_id, by = %by, "node uncordoned");
                    }
                    let message = outcome.message.clone();
                    self.remember(now, &request_id, "uncordon", &node_id, &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::Status { reply } => {
                let status = view::status(&self.engine);
                deferred.push(Box::new(move |_| {
                    let _ = reply.send(status);
                }));
            }
            Request::Node { node_id, reply } => {
                let result = self
                    .engine
                    .node(&node_id)
                    .map(|n| view::node(&self.engine, n));
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::Events {
                after_seq,
                limit,
                reply,
            } => {
                let events = view::events(&self.engine, after_seq, limit);
                deferred.push(Box::new(move |_| {
                    let _ = reply.send(events);
                }));
            }
            Request::AgentReport {
                node_id,
                session,
                body,
            } => self.agent_report(now, node_id, session, body),
            Request::SubmitJob {
                spec_toml,
                by,
                request_id,
                reply,
            } => {
                let parsed = crate::jobspec::parse(&spec_toml);
                let target = parsed.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                if let Some(replay) = self.replayed(&request_id, "submit_job", &target) {
                    deferred.push(defer(reply, self.replay_job(replay, &target)));
                    return;
                }
                let result = parsed
                    .map_err(EngineError::InvalidJobSpec)
                    .and_then(|spec| {
                        let name = spec.name.clone();
                        let message = self.engine.submit_job(now, spec, &spec_toml, &by)?;
                        Ok((true, message, view::job(self.engine.job(&name)?)))
                    });
                if let Ok((_, message, _)) = &result {
                    let message = message.clone();
                    self.remember(now, &request_id, "submit_job", &target, &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::StopJob {
                name,
                by,
                reason,
                request_id,
                reply,
            } => {
                if let Some(replay) = self.replayed(&request_id, "stop_job", &name) {
                    deferred.push(defer(reply, self.replay_job(replay, &name)));
                    return;
                }
                let result = self.engine.stop_job(now, &name, &by, &reason).and_then(
                    |(changed, message)| Ok((changed, message, view::job(self.engine.job(&name)?))),
                );
                if let Ok((_, message, _)) = &result {
                    let message = message.clone();
                    self.remember(now, &request_id, "stop_job", &name, &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::GetJob { name, reply } => {
                let result = self
                    .engine
                    .job(&name)
                    .map(|j| (view::job_in(&self.engine, j), view::checkpoints(j)));
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::GetLogs {
                job,
                rank,
                lines,
                reply,
            } => self.request_logs(job, rank, lines, reply),
            Request::Drill {
                node_id,
                drill,
                by,
                request_id,
                reply,
            } => {
                if let Some(replay) = self.replayed(&request_id, "drill", &node_id) {
                    deferred.push(defer(reply, replay));
                    return;
                }
                let result = self.engine.drill(now, &node_id, drill, &by);
                if let Ok(message) = &result {
                    let message = message.clone();
                    self.remember(now, &request_id, "drill", &node_id, &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
            Request::ResetBreaker {
                by,
                reason,
                request_id,
                reply,
            } => {
                if let Some(replay) = self.replayed(&request_id, "reset_breaker", "breaker") {
                    deferred.push(defer(reply, replay.map(|message| (false, message))));
                    return;
                }
                let result = self.engine.reset_breaker(now, &by, &reason);
                if let Ok((_, message)) = &result {
                    let message = message.clone();
                    self.remember(now, &request_id, "reset_breaker", "breaker", &message);
                }
                deferred.push(defer(reply, result.map_err(ActorError::from)));
            }
        }
    }

    fn agent_report(
        &mut self,
        now: Millis,
        node_id: String,
        session: SessionId,
        body: AgentReport,
    ) {
        let accepted = match body {
            AgentReport::Health(report) => {
                if let Ok(mut xids) = self.counters.xids.lock() {
                    for x in &report.xids {
                        *xids
                            .entry((node_id.clone(), x.gpu_index, x.uuid.clone(), x.xid))
                            .or_default() += 1;
                    }
                }
                self.engine.health(now, &node_id, session, report)
            }
            AgentReport::Ranks(status) => self.engine.rank_status(now, &node_id, session, status),
            AgentReport::RankExited(exit) => self.engine.rank_exited(now, &node_id, session, exit),
            AgentReport::Checkpoints(catalog) => {
                self.engine.checkpoints(now, &node_id, session, catalog)
            }
            AgentReport::Progress(progress) => {
                self.engine.progress(now, &node_id, session, progress)
            }
            AgentReport::LogResponse(response) => {
                if let Some(reply) = self.pending_logs.remove(&response.request_id) {
                    let _ = reply.send(Ok(response));
                }
                true
            }
        };
        if !accepted {
            self.counters.stale_reports.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn request_logs(
        &mut self,
        job: String,
        rank: u32,
        lines: u32,
        reply: oneshot::Sender<Result<v1::LogResponse, ActorError>>,
    ) {
        let (node_id, _) = match self.engine.rank_location(&job, rank) {
            Ok(location) => location,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        if !self.sessions.contains_key(&node_id) {
            let _ = reply.send(Err(ActorError::Engine(EngineError::FailedPrecondition(
                format!(
                    "node '{node_id}' running rank {rank} of job '{job}' has no connected agent"
                ),
            ))));
            return;
        }
        // Requests whose caller gave up are dropped here, so the map stays
        // small even if agents never answer.
        self.pending_logs.retain(|_, r| !r.is_closed());
        let request_id = self.next_log_request;
        self.next_log_request += 1;
        self.pending_logs.insert(request_id, reply);
        self.send_to_agent(
            &node_id,
            SupervisorBody::LogRequest(v1::LogRequest {
                request_id,
                job,
                rank,
                lines,
            }),
        );
    }

    /// Sends to a connected agent. A stream that cannot take the message is
    /// closed: the agent reconnects and gets the whole desired state again,
    /// which is better than a silently lost assignment.
    fn send_to_agent(&mut self, node_id: &str, body: SupervisorBody) {
        let Some((_, outbound)) = self.sessions.get(node_id) else {
            return;
        };
        let message = v1::SupervisorMessage { body: Some(body) };
        if outbound.try_send(Ok(message)).is_err() {
            tracing::warn!(node = %node_id, "agent stream is not draining; closing it so the agent resyncs");
            self.sessions.remove(node_id);
        }
    }

    /// Client request ids remembered by the store (at startup).
    pub fn with_requests(mut self, mut records: Vec<RequestRecord>) -> Self {
        records.sort_by_key(|r| r.at);
        for r in records {
            self.requests.order.push_back(r.id.clone());
            self.requests.by_id.insert(r.id.clone(), r);
        }
        self
    }

    /// The answer to a repeated cordon/uncordon: the node as it is now.
    fn replay_node(
        &self,
        replay: Result<String, ActorError>,
        node_id: &str,
    ) -> Result<(CordonOutcome, v1::Node), ActorError> {
        let message = replay?;
        let node = self.engine.node(node_id)?;
        Ok((
            CordonOutcome {
                changed: false,
                message,
            },
            view::node(&self.engine, node),
        ))
    }

    /// The answer to a repeated job submit/stop: the job as it is now.
    fn replay_job(
        &self,
        replay: Result<String, ActorError>,
        name: &str,
    ) -> Result<(bool, String, v1::Job), ActorError> {
        let message = replay?;
        let job = self.engine.job(name)?;
        Ok((false, message, view::job(job)))
    }

    /// A retry of a request already applied: Some(message) to answer with,
    /// or an error when the id was used for a different command.
    fn replayed(
        &self,
        request_id: &str,
        kind: &str,
        target: &str,
    ) -> Option<Result<String, ActorError>> {
        if request_id.is_empty() {
            return None;
        }
        if request_id.len() > REQUEST_ID_MAX_LEN {
            return Some(Err(ActorError::Engine(EngineError::FailedPrecondition(
                format!("request id longer than {REQUEST_ID_MAX_LEN} bytes"),
            ))));
        }
        let r = self.requests.by_id.get(request_id)?;
        if r.kind != kind || r.target != target {
            return Some(Err(ActorError::Engine(EngineError::FailedPrecondition(
                format!(
                    "request id '{request_id}' was already used for {} of '{}'",
                    r.kind, r.target
                ),
            ))));
        }
        tracing::info!(
            request_id,
            kind,
            target,
            "repeated request answered, not applied again"
        );
        Some(Ok(format!(
            "already applied (request {request_id}): {}",
            r.message
        )))
    }

    /// Remembers an applied request, durably in the same commit as its
    /// effects: a crash cannot leave the effect without the id or the id
    /// without the effect.
    fn remember(&mut self, now: Millis, request_id: &str, kind: &str, target: &str, message: &str) {
        if request_id.is_empty() {
            return;
        }
        use sup_core::Change;
        while let Some(oldest) = self.requests.order.front() {
            let expired = self
                .requests
                .by_id
                .get(oldest)
                .is_none_or(|r| now - r.at > REQUEST_LOG_MAX_AGE_MS);
            if !expired && self.requests.order.len() < REQUEST_LOG_MAX {
                break;
            }
            if let Some(id) = self.requests.order.pop_front() {
                self.requests.by_id.remove(&id);
                self.pending_changes.push(Change::ForgetRequest(id));
            }
        }
        let record = RequestRecord {
            id: request_id.to_owned(),
            at: now,
            kind: kind.to_owned(),
            target: target.to_owned(),
            message: message.to_owned(),
        };
        self.requests.order.push_back(record.id.clone());
        self.requests
            .by_id
            .insert(record.id.clone(), record.clone());
        self.pending_changes.push(Change::RememberRequest(record));
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
                Action::SendDrill { node_id, drill } => outgoing.push((
                    node_id,
                    SupervisorBody::Drill(convert::drill_to_wire(drill)),
                )),
                Action::Persist(change) => changes.push(change),
                Action::CloseSession {
                    node_id,
                    session,
                    reason,
                } => {
                    tracing::info!(node = %node_id, session, %reason, "closing agent stream");
                    if self
                        .sessions
                        .get(&node_id)
                        .is_some_and(|(s, _)| *s == session)
                    {
                        self.sessions.remove(&node_id);
                    }
                }
            }
        }
        if changes.is_empty() {
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
                if let Some(ms) = recovery_ms(&e.reason) {
                    // Milliseconds to seconds; precision loss is irrelevant.
                    #[allow(clippy::cast_precision_loss)]
                    self.counters.recovery_latency.0.observe(ms as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use sup_core::{EngineConfig, GpuInventory};

    fn registration(session: SessionId) -> Registration {
        Registration {
            session,
            node_id: "n1".into(),
            address: "10.0.0.1".into(),
            hostname: "h".into(),
            agent_version: "0".into(),
            instance_id: "i".into(),
            gpu_backend: "sim".into(),
            gpus: vec![GpuInventory {
                index: 0,
                uuid: "GPU-0".into(),
                name: "H100".into(),
                pci_bus_id: "0".into(),
                memory_total_bytes: None,
            }],
        }
    }

    struct Running {
        handle: SupervisorHandle,
        task: tokio::task::JoinHandle<Result<(), StoreError>>,
        ready: Arc<AtomicBool>,
        _stop: watch::Sender<bool>,
    }

    fn start(store: MemoryStore) -> Running {
        let ready = Arc::new(AtomicBool::new(true));
        let (actor, handle) = Actor::new(
            Engine::new(EngineConfig::default()),
            store,
            Duration::from_secs(1),
            Arc::new(Counters::default()),
            ready.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(actor.run(stop_rx));
        Running {
            handle,
            task,
            ready,
            _stop: stop,
        }
    }

    #[test]
    fn recovery_time_is_read_from_the_job_running_reason() {
        assert_eq!(
            recovery_ms("generation 2 running on 2 node(s), world size 2; every rank launched 61 ms after the fault was reported"),
            Some(61)
        );
        assert_eq!(recovery_ms("generation 1 running on 2 node(s)"), None);
    }

    #[tokio::test]
    async fn registration_is_acknowledged_on_the_stream_after_commit() {
        let running = start(MemoryStore::default());
        let handle = &running.handle;
        let (tx, mut rx) = mpsc::channel(4);
        let state = handle
            .register(registration(1), tx)
            .await
            .expect("register");
        assert_eq!(state, NodeState::Joining);
        let msg = rx.recv().await.expect("message").expect("ok");
        assert!(matches!(
            msg.body,
            Some(v1::supervisor_message::Body::Registered(r)) if r.node_id == "n1" && r.telemetry_interval_ms == 1000
        ));
        let status = handle.status().await.expect("status");
        assert_eq!(status.nodes.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_the_request_and_stops_serving() {
        let store = MemoryStore {
            fail_writes: true,
            ..Default::default()
        };
        let running = start(store);
        let Running {
            handle,
            task,
            ready,
            _stop,
        } = running;
        let (tx, _rx) = mpsc::channel(4);
        let err = handle
            .register(registration(1), tx)
            .await
            .expect_err("must not be acknowledged");
        assert!(matches!(err, ActorError::Unavailable(_)), "{err}");
        assert!(task.await.expect("join").is_err());
        assert!(!ready.load(Ordering::SeqCst));
        assert!(matches!(
            handle.status().await,
            Err(ActorError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_retried_drill_or_breaker_reset_takes_effect_once() {
        let running = start(MemoryStore::default());
        let handle = &running.handle;
        let (tx, _rx) = mpsc::channel(16);
        handle
            .register(registration(1), tx)
            .await
            .expect("register");
        let drill = sup_core::Drill {
            gpu_index: 0,
            fault: Some(sup_core::DrillFault::Xid(79)),
            by: "alice".into(),
        };
        let first = handle
            .drill("n1".into(), drill.clone(), "alice".into(), "req-1".into())
            .await
            .expect("drill");
        let again = handle
            .drill("n1".into(), drill, "alice".into(), "req-1".into())
            .await
            .expect("replayed drill");
        assert_eq!(
            again,
            format!("already applied (request req-1): {first}"),
            "the retry is answered with what happened"
        );
        let drills = handle
            .events(0, 1000)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.reason.starts_with("drill by alice"))
            .count();
        assert_eq!(drills, 1, "one drill injected for two deliveries");

        let reused = handle
            .reset_breaker("alice".into(), "test".into(), "req-1".into())
            .await
            .expect_err("an id used for a drill cannot reset the breaker");
        assert!(
            reused.to_string().contains("already used for drill"),
            "{reused}"
        );
        let (_, message) = handle
            .reset_breaker("alice".into(), "test".into(), "req-2".into())
            .await
            .expect("reset");
        let (changed, replayed) = handle
            .reset_breaker("alice".into(), "test".into(), "req-2".into())
            .await
            .expect("replayed reset");
        assert!(!changed);
        assert_eq!(
            replayed,
            format!("already applied (request req-2): {message}")
        );
    }

    #[tokio::test]
    async fn takeover_ends_the_old_stream() {
        let running = start(MemoryStore::default());
        let handle = &running.handle;
        let (tx1, mut rx1) = mpsc::channel(4);
        handle.register(registration(1), tx1).await.expect("first");
        let _ = rx1.recv().await;
        let (tx2, _rx2) = mpsc::channel(4);
        let mut second = registration(2);
        second.instance_id = "restarted".into();
        handle.register(second, tx2).await.expect("takeover");
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while rx1.recv().await.is_some() {}
        })
        .await;
        assert!(drained.is_ok(), "old stream must end");
    }
}
