//! What agents send: registrations (with the stream to answer on),
//! telemetry, reports, disconnects and log answers. Each report's outcome
//! is counted by what happened to it.

use std::sync::atomic::Ordering;

use sup_core::{
    EngineError, GpuReading, Millis, NodeState, Registration, ReportOutcome, SessionId,
};
use sup_proto::v1;
use sup_proto::v1::supervisor_message::Body as SupervisorBody;
use tokio::sync::oneshot;

use super::{defer, Actor, ActorError, AgentSession, Deferred};
use crate::convert::AgentReport;
use crate::store::Store;
use crate::view;

impl<S: Store> Actor<S> {
    /// A registered agent's stream is remembered at once (a takeover drops
    /// the old stream's sender, ending it); its `Registered` is sent only
    /// after the batch is durable, before any assignment.
    pub(super) fn register(
        &mut self,
        now: Millis,
        registration: Registration,
        scheduler_name: &str,
        mut agent: AgentSession,
        reply: oneshot::Sender<Result<NodeState, ActorError>>,
        deferred: &mut Vec<Deferred>,
    ) {
        let node_id = registration.node_id.clone();
        let session = registration.session;
        let result = self.engine.on_register(now, registration);
        if let Ok(state) = &result {
            self.engine.set_scheduler_name(&node_id, scheduler_name);
            let registered = v1::SupervisorMessage {
                body: Some(SupervisorBody::Registered(v1::Registered {
                    node_id: node_id.clone(),
                    state: view::node_state(*state) as i32,
                    telemetry_interval_ms: u32::try_from(self.telemetry_interval.as_millis())
                        .unwrap_or(u32::MAX),
                    assignment_lease_ms: u32::try_from(self.engine.config().assignment_lease_ms)
                        .unwrap_or(u32::MAX),
                })),
            };
            agent.session = session;
            let outbound = agent.outbound.clone();
            self.sessions.insert(node_id.clone(), agent);
            deferred.push(Box::new(move |engine| {
                if engine.is_some() {
                    let _ = outbound.try_send(Box::new(registered));
                }
            }));
        }
        deferred.push(defer(reply, result.map_err(ActorError::from)));
    }

    pub(super) fn telemetry(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        readings: Vec<GpuReading>,
    ) {
        let outcome = self.engine.on_telemetry(now, node_id, session, readings);
        if outcome.is_applied() {
            self.counters.reports.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.ignored_reports.count(outcome);
    }

    pub(super) fn disconnected(&mut self, now: Millis, node_id: &str, session: SessionId) {
        self.engine.on_disconnected(now, node_id, session);
        if self
            .sessions
            .get(node_id)
            .is_some_and(|a| a.session == session)
        {
            self.sessions.remove(node_id);
        }
    }

    pub(super) fn agent_report(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        body: AgentReport,
    ) {
        let outcome = match body {
            AgentReport::Health(mut report) => {
                // The engine's own bounds, applied here first so that the
                // metric counts exactly the Xids the engine takes.
                if let Ok(node) = self.engine.node(node_id) {
                    sup_core::agent_input::bound_health_report(&mut report, &node.record.gpus);
                }
                let xids: Vec<(u32, String, u32)> = report
                    .xids
                    .iter()
                    .map(|x| (x.gpu_index, x.uuid.clone(), x.xid))
                    .collect();
                let outcome = self.engine.on_health_report(now, node_id, session, report);
                if outcome.is_applied() {
                    self.count_xids(node_id, &xids);
                }
                outcome
            }
            AgentReport::Ranks(status) => self.engine.on_rank_status(now, node_id, session, status),
            AgentReport::RankExited(exit) => {
                self.engine.on_rank_exited(now, node_id, session, exit)
            }
            AgentReport::Checkpoints(catalog) => {
                let outcome = self
                    .engine
                    .on_checkpoint_catalog(now, node_id, session, catalog);
                if outcome.is_applied() {
                    *self
                        .counters
                        .catalogs
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .entry(node_id.to_owned())
                        .or_default() += 1;
                }
                outcome
            }
            AgentReport::Progress(progress) => {
                self.engine.on_progress(now, node_id, session, progress)
            }
            AgentReport::CheckpointsSetAside(report) => self
                .engine
                .on_checkpoints_set_aside(now, node_id, session, report),
            AgentReport::ValidationResult(r) => self
                .engine
                .on_validation_result(now, node_id, session, r.id, r.passed, &r.output),
            AgentReport::LogResponse(response) => {
                if let Some(reply) = self.pending_logs.remove(&response.request_id) {
                    let _ = reply.send(Ok(response));
                }
                ReportOutcome::Applied
            }
        };
        self.counters.ignored_reports.count(outcome);
    }

    /// Counts a report's Xids, after it was applied, only for GPUs the node
    /// registered (a report naming another index or UUID counts nothing),
    /// labelled with the UUID the node registered.
    fn count_xids(&self, node_id: &str, xids: &[(u32, String, u32)]) {
        let Ok(node) = self.engine.node(node_id) else {
            return;
        };
        let mut counts = self
            .counters
            .xids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (index, uuid, code) in xids {
            let registered = node
                .record
                .gpus
                .iter()
                .find(|g| g.index == *index && (uuid.is_empty() || g.uuid == *uuid));
            if let Some(gpu) = registered {
                counts.count(node_id, gpu.index, &gpu.uuid, *code);
            }
        }
    }

    pub(super) fn request_logs(
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
                    "node '{node_id}', where the log of rank {rank} of job '{job}' is, has no connected agent"
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
}
