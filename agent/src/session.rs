//! The link to supd: connect, register, stream telemetry, follow the desired
//! assignment; on any failure wait and do it all again, at the next supd URL
//! when there are several (replicas: see [`crate::rotation`]).
//!
//! The agent never gives up on supd. A supervisor restart or a network
//! partition must not take a node (and the training ranks it will run) down
//! with it, so every failure here ends in a retry, never in an exit.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::time::Duration;

use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::agent_service_client::AgentServiceClient;
use sup_proto::v1::supervisor_message::Body as SupervisorBody;
use sup_proto::v1::{
    AgentMessage, DesiredAssignment, NodeState, Register, Registered, SupervisorMessage, Telemetry,
};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::bus::{LevelState, LinkPorts};
use crate::config::Config;
use crate::error_text::{append_causes, error_chain as chain};
use crate::lease::Lease;
use crate::probe::ProbeError;
use crate::rotation::{Failure, Rotation, Wait};
use crate::sampler::Sampler;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From opening the stream to supd's `Registered`. A supd that accepts
/// connections but never answers must not hold the agent forever.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
// HTTP/2 pings notice a dead peer (a node cut off without a FIN) long
// before TCP would.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_SUGGESTED_INTERVAL: Duration = Duration::from_millis(10);
/// Outbound messages waiting for the transport. Telemetry is latest-wins, so
/// when this is full a sample is dropped instead of queued behind stale ones.
const OUTBOUND_CAPACITY: usize = 128;
/// While the leader only bridges, the other supd URLs are asked at most
/// this often whether one serves, and each gets this long to say so.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[source] tonic::transport::Error),
    #[error("{0}")]
    Transport(#[source] sup_proto::transport::TransportError),
    #[error("{}", describe_status(.0))]
    Rpc(#[source] tonic::Status),
    #[error("no answer within {} while {what}", humantime::format_duration(*.after))]
    Timeout { after: Duration, what: &'static str },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("supervisor closed the stream")]
    Closed,
    #[error("the GPU probe thread stopped")]
    ProbeStopped,
    /// The supd of this session only bridges the lease (it cannot renew its
    /// term) and the one at `to` serves: it leads now.
    #[error("this supd cannot renew its term and only bridges the assignment lease; {url} serves: moving there")]
    Moved { to: usize, url: String },
    /// A vanish or partition drill: no word to supd until then.
    #[error("silent towards supd for {} (a drill)", humantime::format_duration(round_ms(.until.saturating_duration_since(Instant::now()))))]
    Silenced { until: Instant },
}

impl SessionError {
    /// Errors that no retry can fix without an operator: the node id is
    /// taken, or supd refuses who we are. Still retried (the other agent may
    /// go away, supd may be reconfigured), but logged as errors.
    fn is_rejection(&self) -> bool {
        matches!(
            self,
            SessionError::Rpc(status) if matches!(
                status.code(),
                Code::AlreadyExists
                    | Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::FailedPrecondition
            )
        )
    }
}

/// One agent's link to supd, carried across reconnects.
pub struct Link {
    /// One per supd URL, in the configured order.
    endpoints: Vec<(String, Endpoint)>,
    /// Which of them to dial next.
    rotation: Rotation,
    register: Register,
    /// The configured interval; supd's suggestion overrides it per session.
    interval: Duration,
    backoff: Backoff,
    sampler: Sampler,
    /// The latest desired assignment accepted; kept across reconnects so a
    /// stale one replayed by a lagging supd is still recognized as stale.
    assignment: Option<DesiredAssignment>,
    registrations: u64,
    ports: LinkPorts,
    level: LevelState,
    /// The assignment lease; its end goes to the launcher (`ports.lease`).
    lease: Lease,
}

impl Link {
    pub fn new(
        config: &Config,
        register: Register,
        sampler: Sampler,
        ports: LinkPorts,
    ) -> Result<Link, SessionError> {
        let endpoints = config
            .supervisor
            .urls()
            .iter()
            .map(|url| {
                let endpoint = sup_proto::transport::endpoint(url, config.tls.as_ref())
                    .map_err(SessionError::Transport)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true);
                // No `Endpoint::timeout`: it would cut the long-lived stream.
                Ok((url.clone(), endpoint))
            })
            .collect::<Result<Vec<_>, SessionError>>()?;
        Ok(Link {
            rotation: Rotation::new(endpoints.len()),
            endpoints,
            register,
            interval: config.telemetry_interval,
            backoff: Backoff::new(config.reconnect_min_backoff, config.reconnect_max_backoff),
            sampler,
            assignment: None,
            registrations: 0,
            ports,
            level: LevelState::default(),
            lease: Lease::new(),
        })
    }

    /// The latest desired assignment supd sent, if any.
    pub fn assignment(&self) -> Option<&DesiredAssignment> {
        self.assignment.as_ref()
    }

    /// The supd URL of the current (or next) session.
    fn url(&self) -> &str {
        &self.current().0
    }

    /// The URL and endpoint the rotation points at. `Supervisors` is never
    /// empty and the rotation spans exactly these endpoints, so the index
    /// is always in range.
    fn current(&self) -> &(String, Endpoint) {
        &self.endpoints[self.rotation.current()]
    }

    /// Runs sessions back to back for ever. Returns only if the probe thread
    /// dies, which no reconnect can fix.
    pub async fn run(&mut self) -> ProbeError {
        loop {
            let err = match self.session().await {
                Ok(never) => match never {},
                Err(SessionError::ProbeStopped) => {
                    return ProbeError::ThreadGone("it exited while the agent was running".into())
                }
                // Not a failure: no backoff, and back as soon as it ends, to
                // the same URL (the drill silenced the agent; the supd it
                // talked to did nothing wrong).
                Err(err @ SessionError::Silenced { until }) => {
                    self.rotation.interrupted();
                    warn!(supervisor = %self.url(), "{err}");
                    sleep_until(until).await;
                    info!(supervisor = %self.url(), "the drill's silence is over; reconnecting");
                    continue;
                }
                // Not a failure either: straight to the replica that serves.
                Err(err @ SessionError::Moved { to, .. }) => {
                    warn!(supervisor = %self.url(), "{err}");
                    self.rotation.moved_to(to);
                    continue;
                }
                Err(err) => err,
            };
            let failed_at = self.url().to_owned();
            let failure = if err.is_rejection() {
                Failure::Rejected
            } else {
                Failure::Outage
            };
            let wait = self.rotation.failed(failure);
            if wait == Wait::AtOnce {
                warn!(supervisor = %failed_at, next = %self.url(),
                    "supervisor session failed: {err}; trying the next supd URL");
                continue;
            }
            let delay = self.backoff.next_delay();
            let retry_in = humantime::format_duration(round_ms(delay)).to_string();
            if failure == Failure::Rejected {
                error!(supervisor = %failed_at, node_id = %self.register.node_id, %retry_in,
                    "supervisor rejected this agent: {err}");
            } else if self.endpoints.len() == 1 {
                warn!(supervisor = %failed_at, %retry_in, "supervisor session failed: {err}");
            } else {
                warn!(supervisor = %failed_at, next = %self.url(), %retry_in,
                    "supervisor session failed: {err}");
            }
            sleep(delay).await;
        }
    }

    /// One connection, from dial to failure.
    async fn session(&mut self) -> Result<Infallible, SessionError> {
        if let Some(until) = *self.ports.silence.borrow_and_update() {
            if until > Instant::now() {
                return Err(SessionError::Silenced { until });
            }
        }
        let channel = self
            .current()
            .1
            .connect()
            .await
            .map_err(SessionError::Connect)?;
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let mut seq = 1;
        // The lease a supervisor grants by its answer counts from here.
        let register_sent = Instant::now();
        outbound
            .try_send(AgentMessage {
                seq,
                renew_lease: false,
                body: Some(AgentBody::Register(self.register.clone())),
            })
            .map_err(|_| SessionError::Closed)?;

        let (mut inbound, registered) = timeout(REGISTER_TIMEOUT, register(channel, outbound_rx))
            .await
            .map_err(|_| SessionError::Timeout {
                after: REGISTER_TIMEOUT,
                what: "registering",
            })??;
        self.backoff.reset();
        self.rotation.registered();
        let interval = self.on_registered(&registered);
        self.lease
            .registered(registered.assignment_lease_ms, register_sent);
        self.publish_lease();

        // Telemetry goes out as each sample lands. If the probe stalls (a
        // wedged NVML call), the latest sample is re-sent anyway so supd
        // still hears from the node; its old `sampled_at` shows the stall.
        let heartbeat_after = interval + interval / 2;
        let mut latest = self.sampler.subscribe();
        self.send_telemetry(&outbound, &mut seq, latest.borrow_and_update().clone())?;
        for body in self.level.replay() {
            send_body(&outbound, &mut seq, body)?;
        }
        let heartbeat = sleep(heartbeat_after);
        tokio::pin!(heartbeat);
        // Answers of the probe for a replica that serves (`probe_others`).
        let (probed_tx, mut probed) = mpsc::channel::<Option<(usize, String)>>(1);
        let mut probing = false;
        let mut next_probe = Instant::now();
        loop {
            tokio::select! {
                changed = latest.changed() => {
                    changed.map_err(|_| SessionError::ProbeStopped)?;
                    self.send_telemetry(&outbound, &mut seq, latest.borrow_and_update().clone())?;
                    heartbeat.as_mut().reset(Instant::now() + heartbeat_after);
                }
                () = &mut heartbeat => {
                    debug!("no new GPU sample in time; re-sending the latest");
                    let sample = latest.borrow().clone();
                    self.send_telemetry(&outbound, &mut seq, sample)?;
                    heartbeat.as_mut().reset(Instant::now() + heartbeat_after);
                }
                Some(body) = self.ports.outbox.recv() => {
                    self.level.remember(&body);
                    send_body(&outbound, &mut seq, body)?;
                }
                // Returning drops the stream and its connection: supd hears
                // nothing more from this node until the silence ends.
                Ok(()) = self.ports.silence.changed() => {
                    if let Some(until) = *self.ports.silence.borrow_and_update() {
                        return Err(SessionError::Silenced { until });
                    }
                }
                message = inbound.message() => match message.map_err(SessionError::Rpc)? {
                    Some(message) => {
                        let bridging = matches!(&message.body, Some(SupervisorBody::Ack(ack)) if ack.bridging);
                        self.on_message(message);
                        if bridging && !probing && self.endpoints.len() > 1 && Instant::now() >= next_probe {
                            probing = true;
                            next_probe = Instant::now() + PROBE_EVERY;
                            self.probe_others(probed_tx.clone());
                        }
                    }
                    None => return Err(SessionError::Closed),
                },
                Some(found) = probed.recv() => {
                    probing = false;
                    if let Some((to, url)) = found {
                        return Err(SessionError::Moved { to, url });
                    }
                }
            }
        }
    }

    /// Logs the registration and settles the telemetry interval for this
    /// session.
    fn on_registered(&mut self, registered: &Registered) -> Duration {
        self.registrations += 1;
        let interval = match registered.telemetry_interval_ms {
            0 => self.interval,
            // A floor, so a misconfigured supd cannot make every node spin
            // on NVML.
            ms => Duration::from_millis(u64::from(ms)).max(MIN_SUGGESTED_INTERVAL),
        };
        self.sampler.set_interval(interval);
        info!(
            supervisor = %self.url(),
            node_id = %self.register.node_id,
            state = node_state_name(registered.state),
            gpus = self.register.gpus.len(),
            telemetry_interval = %humantime::format_duration(interval),
            "{}",
            if self.registrations == 1 { "registered with supervisor" } else { "re-registered with supervisor" },
        );
        interval
    }

    /// Telemetry is latest-wins: dropped, not queued, when the transport
    /// is full. It carries the lease renewal requests, since it is what
    /// every node sends steadily.
    fn send_telemetry(
        &mut self,
        outbound: &mpsc::Sender<AgentMessage>,
        seq: &mut u64,
        telemetry: Telemetry,
    ) -> Result<(), SessionError> {
        let next = *seq + 1;
        let permit = match outbound.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => {
                debug!("supervisor is not keeping up; dropping a telemetry sample");
                return Ok(());
            }
            // The transport dropped our stream; the inbound side usually
            // has the reason, but the session is over either way.
            Err(mpsc::error::TrySendError::Closed(())) => return Err(SessionError::Closed),
        };
        permit.send(AgentMessage {
            seq: next,
            renew_lease: self.lease.ask(next, Instant::now()),
            body: Some(AgentBody::Telemetry(telemetry)),
        });
        *seq = next;
        Ok(())
    }

    /// The leader of this session bridges: it cannot renew its term, so it
    /// acts on nothing, and another replica may lead already (this one is
    /// cut off from etcd) or none can (etcd lost its quorum). Asks the
    /// other URLs, off the session's loop, whether one serves the agent
    /// service: only a leader binds gRPC, so one that does leads now. None
    /// does: stay, and keep the lease this supd still renews.
    fn probe_others(&self, answer: mpsc::Sender<Option<(usize, String)>>) {
        let current = self.rotation.current();
        let others: Vec<(usize, String, Endpoint)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != current)
            .map(|(i, (url, endpoint))| (i, url.clone(), endpoint.clone()))
            .collect();
        tokio::spawn(async move {
            let mut found = None;
            for (i, url, endpoint) in others {
                match timeout(PROBE_TIMEOUT, serves(endpoint)).await {
                    Ok(Ok(true)) => {
                        found = Some((i, url));
                        break;
                    }
                    Ok(Ok(false)) => {
                        debug!(supervisor = %url, "another supd answers but does not serve agents")
                    }
                    Ok(Err(e)) => debug!(supervisor = %url, "another supd does not serve: {e}"),
                    Err(_) => debug!(supervisor = %url, "another supd did not answer in time"),
                }
            }
            // The session may be over: then nobody listens, which is fine.
            let _ = answer.send(found).await;
        });
    }

    fn publish_lease(&self) {
        let end = self.lease.end();
        self.ports.lease.send_if_modified(|published| {
            let changed = *published != end;
            *published = end;
            changed
        });
    }

    fn on_message(&mut self, message: SupervisorMessage) {
        match message.body {
            Some(SupervisorBody::Assignment(offered)) => {
                match judge_assignment(self.assignment.as_ref(), &offered) {
                    Verdict::Accept => {
                        info!(
                            job = offered.job.as_ref().map_or("(none)", |j| j.job.as_str()),
                            generation = offered.generation,
                            "desired assignment"
                        );
                        self.ports.assignment.send_replace(Some(offered.clone()));
                        self.assignment = Some(offered);
                    }
                    Verdict::Same => debug!(
                        generation = offered.generation,
                        "desired assignment unchanged"
                    ),
                    Verdict::Stale { held } => warn!(
                        held_generation = held,
                        offered_generation = offered.generation,
                        "ignoring a desired assignment older than the one held"
                    ),
                }
            }
            Some(SupervisorBody::Drill(drill)) => {
                if self.ports.drills.try_send(drill).is_err() {
                    warn!("drill dropped: the GPU health monitor is not taking drills");
                }
            }
            Some(SupervisorBody::LogRequest(request)) => {
                if self.ports.log_requests.try_send(request).is_err() {
                    warn!("log request dropped: the rank launcher is not answering");
                }
            }
            Some(SupervisorBody::Validate(request)) => {
                if self.ports.validations.try_send(request).is_err() {
                    warn!("validation request dropped: too many waiting");
                }
            }
            Some(SupervisorBody::Ack(ack)) => {
                self.lease.acknowledged(ack.seq);
                self.publish_lease();
            }
            Some(SupervisorBody::Registered(_)) => {
                warn!("supervisor sent Registered again mid-session; ignoring it");
            }
            // A newer supd may send kinds this agent does not know yet.
            None => debug!("ignoring a supervisor message of an unknown kind"),
        }
    }
}

/// Whether the supd at `endpoint` serves the agent service (gRPC health).
async fn serves(endpoint: Endpoint) -> Result<bool, String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: sup_proto::v1::agent_service_server::SERVICE_NAME.to_owned(),
        })
        .await
        .map_err(|status| describe_status(&status))?;
    Ok(answer.into_inner().status == ServingStatus::Serving as i32)
}

/// Opens the stream (whose first queued message is `Register`) and waits for
/// supd's answer, which must be `Registered`.
async fn register(
    channel: Channel,
    outbound: mpsc::Receiver<AgentMessage>,
) -> Result<(tonic::Streaming<SupervisorMessage>, Registered), SessionError> {
    let mut client = AgentServiceClient::new(channel);
    let mut inbound = client
        .session(ReceiverStream::new(outbound))
        .await
        .map_err(SessionError::Rpc)?
        .into_inner();
    match inbound.message().await.map_err(SessionError::Rpc)? {
        Some(SupervisorMessage {
            body: Some(SupervisorBody::Registered(registered)),
        }) => Ok((inbound, registered)),
        Some(other) => Err(SessionError::Protocol(format!(
            "expected Registered as the supervisor's first message, got {}",
            match other.body {
                Some(SupervisorBody::Ack(_)) => "Ack",
                Some(SupervisorBody::Assignment(_)) => "DesiredAssignment",
                Some(SupervisorBody::Registered(_)) => "Registered",
                Some(SupervisorBody::Drill(_)) => "Drill",
                Some(SupervisorBody::LogRequest(_)) => "LogRequest",
                Some(SupervisorBody::Validate(_)) => "Validate",
                None => "a message of an unknown kind",
            }
        ))),
        None => Err(SessionError::Closed),
    }
}

/// Sends a message that must not be dropped silently (unlike telemetry,
/// which is latest-wins): waits for room is not possible in the select loop,
/// so a full transport queue ends the session and the level state is
/// replayed on the next one.
fn send_body(
    outbound: &mpsc::Sender<AgentMessage>,
    seq: &mut u64,
    body: AgentBody,
) -> Result<(), SessionError> {
    *seq += 1;
    outbound
        .try_send(AgentMessage {
            seq: *seq,
            renew_lease: false,
            body: Some(body),
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SessionError::Protocol("the stream to supd is not draining".to_owned())
            }
            mpsc::error::TrySendError::Closed(_) => SessionError::Closed,
        })
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Same,
    Stale { held: u64 },
}

/// Generation fencing: an assignment older than the one held is a message
/// from before a restart of the job and must not be acted on.
pub fn judge_assignment(held: Option<&DesiredAssignment>, offered: &DesiredAssignment) -> Verdict {
    match held {
        Some(held) if offered.generation < held.generation => Verdict::Stale {
            held: held.generation,
        },
        Some(held) if held == offered => Verdict::Same,
        _ => Verdict::Accept,
    }
}

fn node_state_name(state: i32) -> String {
    NodeState::try_from(state).map_or_else(
        |_| format!("unknown({state})"),
        |s| {
            s.as_str_name()
                .trim_start_matches("NODE_STATE_")
                .to_ascii_lowercase()
        },
    )
}

fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("supervisor answered {:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    append_causes(&mut text, status.source());
    text
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(generation: u64, job: &str) -> DesiredAssignment {
        DesiredAssignment {
            generation,
            job: (!job.is_empty()).then(|| sup_proto::v1::JobAssignment {
                job: job.to_owned(),
                ..Default::default()
            }),
            postmortem_generation: 0,
        }
    }

    #[test]
    fn assignments_are_fenced_by_generation() {
        let held = assignment(5, "llama");
        assert_eq!(judge_assignment(None, &assignment(0, "")), Verdict::Accept);
        assert_eq!(
            judge_assignment(Some(&held), &assignment(6, "llama")),
            Verdict::Accept
        );
        assert_eq!(
            judge_assignment(Some(&held), &assignment(5, "llama")),
            Verdict::Same
        );
        assert_eq!(
            judge_assignment(Some(&held), &assignment(4, "llama")),
            Verdict::Stale { held: 5 }
        );
        // Same generation, different content: supd's latest word wins.
        assert_eq!(
            judge_assignment(Some(&held), &assignment(5, "")),
            Verdict::Accept
        );
    }

    #[test]
    fn node_state_names_are_short() {
        assert_eq!(node_state_name(NodeState::Ready as i32), "ready");
        assert_eq!(node_state_name(NodeState::Cordoned as i32), "cordoned");
        assert_eq!(node_state_name(99), "unknown(99)");
    }

    #[test]
    fn rejections_are_told_apart_from_outages() {
        let taken = SessionError::Rpc(tonic::Status::already_exists(
            "node n1 is connected from 10.0.0.9",
        ));
        assert!(taken.is_rejection());
        assert_eq!(
            taken.to_string(),
            "supervisor answered AlreadyExists: node n1 is connected from 10.0.0.9"
        );
        assert!(!SessionError::Rpc(tonic::Status::unavailable("restarting")).is_rejection());
        assert!(!SessionError::Closed.is_rejection());
    }
}
