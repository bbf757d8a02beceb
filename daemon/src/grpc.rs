//! The gRPC edge: agent streams and the operator control API, translated to
//! actor requests. No decisions are made here.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sup_proto::v1;
use sup_proto::v1::agent_service_server::AgentService;
use sup_proto::v1::control_service_server::ControlService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::actor::{ActorError, AgentInput, SupervisorHandle};
use crate::auth::{self, Transport};
use crate::convert;
use crate::store::Leadership;
use sup_core::EngineError;

pub fn status_of(e: ActorError) -> Status {
    match e {
        ActorError::Engine(e) => match e {
            EngineError::UnknownNode(_) => Status::not_found(e.to_string()),
            EngineError::DuplicateNodeId { .. } => Status::already_exists(e.to_string()),
            EngineError::UnknownJob(_) => Status::not_found(e.to_string()),
            EngineError::DuplicateJob(_) => Status::already_exists(e.to_string()),
            EngineError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            EngineError::InvalidRegistration(_)
            | EngineError::InvalidArgument(_)
            | EngineError::InvalidJobSpec(_) => Status::invalid_argument(e.to_string()),
        },
        ActorError::Unavailable(m) => Status::unavailable(m),
    }
}

pub struct AgentApi {
    handle: SupervisorHandle,
    next_session: Arc<AtomicU64>,
    register_timeout: Duration,
    transport: Transport,
    /// This replica's term (etcd); None: a single supd, always leader.
    leadership: Option<Leadership>,
    /// `store.lease_bridge`.
    bridge: Duration,
}

impl AgentApi {
    pub fn new(handle: SupervisorHandle, register_timeout: Duration, transport: Transport) -> Self {
        AgentApi {
            handle,
            next_session: Arc::new(AtomicU64::new(1)),
            register_timeout,
            transport,
            leadership: None,
            bridge: Duration::ZERO,
        }
    }

    /// Lease renewals are acknowledged only while this term holds, or is
    /// unrenewed for at most `bridge` (see `Leadership::may_renew_assignments`).
    pub fn with_leadership(mut self, leadership: Option<Leadership>, bridge: Duration) -> Self {
        self.leadership = leadership;
        self.bridge = bridge;
        self
    }
}

/// Acknowledges a message that asked for a lease renewal, if this replica
/// may: while it leads, or for `bridge` after its term could no longer be
/// renewed, never once etcd said the term is gone. A new leader counts on
/// exactly that (engine: `takeover_hold_ms`). Done here, as the message is
/// read, not in the actor: the renewal proves this supd reads the node's
/// stream; the lease's end is counted from the agent's send time, which
/// precedes supd's `last_seen` of the node (stamped just before).
fn acknowledge_renewal(
    outbound: &mpsc::Sender<Box<v1::SupervisorMessage>>,
    leadership: Option<&Leadership>,
    bridge: Duration,
    seq: u64,
) {
    if leadership.is_some_and(|l| !l.may_renew_assignments(bridge)) {
        return;
    }
    let bridging = leadership.is_some_and(|l| !l.holds());
    // A full queue (the agent not reading) drops it: the agent asks again
    // with a later message, several times per lease.
    let _ = outbound.try_send(Box::new(v1::SupervisorMessage {
        body: Some(v1::supervisor_message::Body::Ack(v1::Ack { seq, bridging })),
    }));
}

/// Messages read from one agent stream ahead of the state actor (see the
/// session task): 32 s of reports at the default 1 s interval.
const AGENT_LOOKAHEAD: usize = 32;

type OutboundStream =
    Pin<Box<dyn Stream<Item = Result<v1::SupervisorMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = OutboundStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let caller = auth::caller(self.transport, &request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.register_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "expected a Register message within {}",
                    humantime::format_duration(self.register_timeout)
                ))
            })??;
        let register = match first.and_then(|m| m.body) {
            Some(v1::agent_message::Body::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ))
            }
        };
        // The stream carries this node's reports from here on, so checking
        // the Register binds every later message to the certificate too.
        if let Err(denied) = caller.check_node(&register.node_id) {
            tracing::warn!(node = %register.node_id, %peer, reason = %denied.message(), "agent session refused");
            return Err(denied);
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let node_id = register.node_id.clone();
        let slurm_node_name = register.slurm_node_name.clone();
        let (tx, rx) = mpsc::channel(64);
        let acks = tx.clone();
        let leadership = self.leadership.clone();
        let bridge = self.bridge;
        let heard = crate::actor::LivenessStamp::default();
        match self
            .handle
            .register_as(
                convert::registration(session, register),
                slurm_node_name,
                tx,
                heard.clone(),
            )
            .await
        {
            Ok(state) => {
                tracing::info!(node = %node_id, %peer, session, ?state, "agent registered")
            }
            Err(e) => {
                tracing::warn!(node = %node_id, %peer, error = %e, "agent registration refused");
                return Err(status_of(e));
            }
        }

        let handle = self.handle.clone();
        tokio::spawn(async move {
            // Messages read from the stream wait here for room in the
            // actor's queue, so the stream is read (and its liveness
            // stamped) while the actor works through a burst, up to
            // AGENT_LOOKAHEAD of them; then the stream waits (HTTP/2 flow
            // control), nothing is dropped.
            let mut pending: VecDeque<AgentInput> = VecDeque::new();
            let mut open = true;
            loop {
                tokio::select! {
                    message = inbound.message(), if open && pending.len() < AGENT_LOOKAHEAD => {
                        match message {
                            Ok(Some(msg)) => {
                                heard.heard_at(crate::actor::now_ms());
                                if msg.renew_lease {
                                    acknowledge_renewal(&acks, leadership.as_ref(), bridge, msg.seq);
                                }
                                match msg.body {
                                    Some(v1::agent_message::Body::Telemetry(t)) => {
                                        pending.push_back(AgentInput::Telemetry(convert::readings(t)));
                                    }
                                    Some(v1::agent_message::Body::Register(_)) => {
                                        tracing::warn!(node = %node_id, "second Register on one stream; closing it");
                                        open = false;
                                    }
                                    Some(other) => {
                                        if let Some(report) = convert::agent_report(other) {
                                            pending.push_back(AgentInput::Report(report));
                                        }
                                    }
                                    None => {}
                                }
                            }
                            Ok(None) => open = false,
                            Err(e) => {
                                tracing::debug!(node = %node_id, error = %e, "agent stream broke");
                                open = false;
                            }
                        }
                    }
                    slot = handle.agent_slot(), if !pending.is_empty() => {
                        let Ok(slot) = slot else { break };
                        if let Some(input) = pending.pop_front() {
                            slot.send(node_id.clone(), session, input);
                        }
                    }
                    // The stream ended and everything read from it is handed on.
                    else => break,
                }
            }
            handle.disconnected(node_id, session).await;
        });
        let outbound =
            ReceiverStream::new(rx).map(|message: Box<v1::SupervisorMessage>| Ok(*message));
        Ok(Response::new(Box::pin(outbound)))
    }
}

pub struct ControlApi {
    handle: SupervisorHandle,
    transport: Transport,
    /// `[slurm] mode`: jobs bound to a Slurm allocation need Slurm on.
    slurm: crate::config::SlurmMode,
}

impl ControlApi {
    pub fn new(handle: SupervisorHandle, transport: Transport) -> Self {
        ControlApi {
            handle,
            transport,
            slurm: crate::config::SlurmMode::Off,
        }
    }

    /// With `[slurm] mode` other than off, `--slurm-job` submissions are
    /// checked against Slurm and accepted.
    pub fn with_slurm(mut self, mode: crate::config::SlurmMode) -> Self {
        self.slurm = mode;
        self
    }

    /// Any authenticated caller may read.
    fn reader<T>(&self, request: &Request<T>) -> Result<(), Status> {
        auth::caller(self.transport, request).map(|_| ())
    }

    /// The author to record for a change, if the caller may make it.
    fn author<T>(&self, request: &Request<T>, claimed_by: &str) -> Result<String, Status> {
        auth::caller(self.transport, request)?.change_author(claimed_by)
    }
}

const LOG_TIMEOUT: Duration = Duration::from_secs(10);

fn job_response(
    result: Result<(bool, String, v1::Job), ActorError>,
) -> Result<Response<v1::JobResponse>, Status> {
    let (changed, message, job) = result.map_err(status_of)?;
    Ok(Response::new(v1::JobResponse {
        job: Some(job),
        changed,
        message,
    }))
}

fn cordon_response(
    result: Result<(sup_core::CordonOutcome, v1::Node), ActorError>,
) -> Result<Response<v1::CordonResponse>, Status> {
    let (outcome, node) = result.map_err(status_of)?;
    Ok(Response::new(v1::CordonResponse {
        node: Some(node),
        changed: outcome.changed,
        message: outcome.message,
    }))
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        self.reader(&request)?;
        let snapshot = self.handle.snapshot().await.map_err(status_of)?;
        Ok(Response::new(snapshot.summary().clone()))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.reader(&request)?;
        let r = request.into_inner();
        let query = crate::pages::NodeQuery::parse(&r.states, &r.job, r.limit, &r.continue_token)
            .map_err(Status::invalid_argument)?;
        let snapshot = self.handle.snapshot().await.map_err(status_of)?;
        let job = query.filter.job();
        // A mistyped job name would otherwise look like a job on no nodes.
        if !job.is_empty() && !snapshot.cluster.status.jobs.iter().any(|j| j.name == job) {
            return Err(status_of(ActorError::Engine(EngineError::UnknownJob(
                job.to_owned(),
            ))));
        }
        let page = crate::pages::page(
            &snapshot.cluster.nodes,
            &query,
            crate::pages::proto_len,
            crate::pages::PAGE_BYTES,
        );
        Ok(Response::new(v1::ListNodesResponse {
            nodes: page.nodes,
            next_continue_token: page.next.unwrap_or_default(),
            remaining: u32::try_from(page.remaining).unwrap_or(u32::MAX),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        self.reader(&request)?;
        let r = request.into_inner();
        let query = crate::pages::JobQuery::parse(&r.states, r.limit, &r.continue_token)
            .map_err(Status::invalid_argument)?;
        let snapshot = self.handle.snapshot().await.map_err(status_of)?;
        let page = crate::pages::job_page(
            &snapshot.cluster.status.jobs,
            &query,
            crate::pages::proto_len,
            crate::pages::PAGE_BYTES,
        );
        Ok(Response::new(v1::ListJobsResponse {
            jobs: page.jobs,
            next_continue_token: page.next.unwrap_or_default(),
            remaining: u32::try_from(page.remaining).unwrap_or(u32::MAX),
        }))
    }

    async fn get_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        self.reader(&request)?;
        let snapshot = self.handle.snapshot().await.map_err(status_of)?;
        let node = snapshot
            .node(&request.into_inner().node_id)
            .map_err(|e| status_of(e.into()))?;
        Ok(Response::new(node.clone()))
    }

    async fn cordon(
        &self,
        request: Request<v1::CordonRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        cordon_response(
            self.handle
                .cordon(r.node_id, r.reason, by, r.request_id)
                .await,
        )
    }

    async fn uncordon(
        &self,
        request: Request<v1::UncordonRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        cordon_response(
            self.handle
                .uncordon(r.node_id, r.reason, by, r.request_id, r.skip_validation)
                .await,
        )
    }

    async fn drain(
        &self,
        request: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        cordon_response(
            self.handle
                .drain(r.node_id, r.reason, r.deadline_ms, by, r.request_id)
                .await,
        )
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        let (changed, message) = self
            .handle
            .remove_node(r.node_id, by, r.request_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::CordonResponse {
            node: None,
            changed,
            message,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        if r.slurm_job_id == 0 {
            return job_response(self.handle.submit_job(r.spec_toml, by, r.request_id).await);
        }
        if self.slurm == crate::config::SlurmMode::Off {
            return Err(Status::failed_precondition(format!(
                "cannot bind the job to Slurm job {}: supd runs with [slurm] mode = \"off\" (set \"observe\" or \"enforce\" in supd.toml)",
                r.slurm_job_id
            )));
        }
        // Asked here, off the actor: a slow Slurm delays only this request.
        let allocation = crate::scheduler::Slurm::from_env()
            .allocation(r.slurm_job_id)
            .await
            .map_err(Status::failed_precondition)?;
        job_response(
            self.handle
                .submit_job_in_allocation(r.spec_toml, by, r.request_id, allocation)
                .await,
        )
    }

    async fn stop_job(
        &self,
        request: Request<v1::StopJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        job_response(
            self.handle
                .stop_job(r.name, by, r.reason, r.request_id)
                .await,
        )
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        self.reader(&request)?;
        let (job, _) = self
            .handle
            .job(request.into_inner().name)
            .await
            .map_err(status_of)?;
        // Bounded: a job of 16,384 nodes is ~2.6 MB whole.
        Ok(Response::new(crate::pages::job_answer(&job)))
    }

    async fn list_checkpoints(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        self.reader(&request)?;
        let (_, checkpoints) = self
            .handle
            .job(request.into_inner().name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::ListCheckpointsResponse { checkpoints }))
    }

    async fn get_logs(
        &self,
        request: Request<v1::GetLogsRequest>,
    ) -> Result<Response<v1::LogResponse>, Status> {
        self.reader(&request)?;
        let r = request.into_inner();
        let answer = tokio::time::timeout(LOG_TIMEOUT, self.handle.logs(r.job, r.rank, r.lines))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the agent did not answer within {}",
                    humantime::format_duration(LOG_TIMEOUT)
                ))
            })?;
        Ok(Response::new(answer.map_err(status_of)?))
    }

    async fn start_drill(
        &self,
        request: Request<v1::DrillRequest>,
    ) -> Result<Response<v1::DrillResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        let mut drill = r
            .drill
            .ok_or_else(|| Status::invalid_argument("the request has no drill"))?;
        drill.by = by.clone();
        let message = self
            .handle
            .drill(r.node_id, convert::drill(drill), by, r.request_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::DrillResponse { message }))
    }

    async fn reset_breaker(
        &self,
        request: Request<v1::ResetBreakerRequest>,
    ) -> Result<Response<v1::ResetBreakerResponse>, Status> {
        let by = self.author(&request, &request.get_ref().by)?;
        let r = request.into_inner();
        let (changed, message) = self
            .handle
            .reset_breaker(by, r.reason, r.request_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::ResetBreakerResponse { changed, message }))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.reader(&request)?;
        let r = request.into_inner();
        let snapshot = self.handle.snapshot().await.map_err(status_of)?;
        let page = crate::pages::events_page(
            snapshot.kept_events(),
            r.after_seq,
            r.limit,
            r.from_oldest,
            crate::pages::proto_len,
            crate::pages::PAGE_BYTES,
        );
        Ok(Response::new(v1::ListEventsResponse {
            events: page.events.to_vec(),
            omitted: u32::try_from(page.omitted).unwrap_or(u32::MAX),
        }))
    }
}
