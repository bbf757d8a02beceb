//! The whole agent (`sup_agent::run`) against a scripted in-process supd:
//! registration contents, telemetry flow, supd's interval, rejections,
//! dropped streams, a supd that starts late, and several supd URLs (replicas)
//! of which only one answers at a time.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sup_agent::config::Supervisors;
use sup_agent::{Config, GpuBackend, LogFormat};
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use sup_proto::v1::supervisor_message::Body as SupervisorBody;
use sup_proto::v1::{
    AgentMessage, DesiredAssignment, NodeState, Register, Registered, SupervisorMessage,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

/// What the fake supd does with session number `n` (1-based).
#[derive(Clone, Copy)]
enum Script {
    /// Accept every session and keep it open.
    AcceptAll,
    /// Reject the first `rejections` sessions with ALREADY_EXISTS, then
    /// accept; the first accepted session is closed by supd after
    /// `close_after` telemetry messages.
    RejectThenFlap { rejections: u32, close_after: usize },
}

struct FakeSupd {
    script: Script,
    sessions: AtomicU32,
    seen: mpsc::UnboundedSender<(u32, AgentMessage)>,
    /// Set to true: every open session ends with UNAVAILABLE, as when a
    /// deposed supd leader exits.
    gone: watch::Receiver<bool>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<SupervisorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for FakeSupd {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let node_id = match &first.body {
            Some(AgentBody::Register(r)) => r.node_id.clone(),
            _ => return Err(Status::invalid_argument("first message must be Register")),
        };
        let _ = self.seen.send((n, first));

        let close_after = match self.script {
            Script::AcceptAll => None,
            Script::RejectThenFlap { rejections, .. } if n <= rejections => {
                return Err(Status::already_exists(format!(
                    "node {node_id} is connected from 10.9.9.9"
                )));
            }
            Script::RejectThenFlap {
                rejections,
                close_after,
            } => (n == rejections + 1).then_some(close_after),
        };

        let (out, out_rx) = mpsc::channel(8);
        let registered = Registered {
            node_id,
            state: NodeState::Ready as i32,
            telemetry_interval_ms: 50,
            assignment_lease_ms: 0,
        };
        let assignment = DesiredAssignment {
            generation: 3,
            job: Some(sup_proto::v1::JobAssignment {
                job: "demo".into(),
                ..Default::default()
            }),
            postmortem_generation: 0,
        };
        for body in [
            SupervisorBody::Registered(registered),
            SupervisorBody::Assignment(assignment),
        ] {
            let _ = out.send(Ok(SupervisorMessage { body: Some(body) })).await;
        }
        let seen = self.seen.clone();
        let mut gone = self.gone.clone();
        tokio::spawn(async move {
            let mut telemetry = 0;
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(message)) = message else { break };
                        let _ = seen.send((n, message));
                        telemetry += 1;
                        if close_after == Some(telemetry) {
                            // Ends our half of the stream cleanly: the agent
                            // sees the stream end and must reconnect.
                            return;
                        }
                    }
                    // The Ref `wait_for` gives is not Send: only whether.
                    true = async { gone.wait_for(|gone| *gone).await.is_ok() } => {
                        let _ = out.send(Err(Status::unavailable("this supd is going away"))).await;
                        return;
                    }
                }
            }
            drop(out);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

async fn start_supd(
    listener: TcpListener,
    script: Script,
) -> (mpsc::UnboundedReceiver<(u32, AgentMessage)>, JoinHandle<()>) {
    // Its `gone` is dropped, never set: its sessions then end only as the
    // script says.
    let replica = start_replica(listener, script);
    (replica.seen, replica.server)
}

/// A fake supd that can be made to go away (see [`Replica::go_away`]).
struct Replica {
    seen: mpsc::UnboundedReceiver<(u32, AgentMessage)>,
    server: JoinHandle<()>,
    gone: watch::Sender<bool>,
}

fn start_replica(listener: TcpListener, script: Script) -> Replica {
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let (gone, gone_rx) = watch::channel(false);
    let service = FakeSupd {
        script,
        sessions: AtomicU32::new(0),
        seen,
        gone: gone_rx,
    };
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("fake supd serves");
    });
    Replica {
        seen: seen_rx,
        server,
        gone,
    }
}

impl Replica {
    /// Like a deposed leader that exits: its sessions end with UNAVAILABLE
    /// and its port refuses connections from then on.
    fn go_away(&self) {
        self.gone.send_replace(true);
        // Dropping the serving future closes the listener.
        self.server.abort();
    }
}

fn config(addr: SocketAddr, telemetry_interval: Duration) -> Config {
    Config {
        supervisor: Supervisors::parse([format!("http://{addr}")]).expect("a valid URL"),
        tls: None,
        node_id: "n1".into(),
        address: "10.0.0.1".into(),
        hostname: "host-n1".into(),
        gpu_backend: GpuBackend::Sim { gpus: 2 },
        nvml_lib: None,
        telemetry_interval,
        reconnect_min_backoff: Duration::from_millis(10),
        reconnect_max_backoff: Duration::from_millis(100),
        log_format: LogFormat::Text,
        // No job is assigned in these tests, so nothing is written there.
        state_dir: std::env::temp_dir().join("sup-agent-session-tests"),
        log_retention: Default::default(),
        allow_drills: false,
        leave_ranks_on_exit: false,
        allow_root_ranks: true,
        kernel_log: None,
        xid_rules: None,
        expected_gpus: None,
        reset_settle: Duration::from_secs(30),
        validation: None,
        slurm_node_name: None,
    }
}

struct RunningAgent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), sup_agent::AgentError>>,
}

fn start_agent(config: Config) -> RunningAgent {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sup_agent::run(config, async {
        let _ = stopped.await;
    }));
    RunningAgent { stop, task }
}

impl RunningAgent {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("agent stops promptly on shutdown")
            .expect("agent task did not panic");
        assert!(result.is_ok(), "clean shutdown returns Ok: {result:?}");
    }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<(u32, AgentMessage)>) -> (u32, AgentMessage) {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("a message from the agent in time")
        .expect("fake supd alive")
}

fn register_of(message: &AgentMessage) -> &Register {
    match &message.body {
        Some(AgentBody::Register(r)) => r,
        other => panic!("expected Register, got {other:?}"),
    }
}

#[tokio::test]
async fn registers_then_streams_telemetry_at_supds_interval() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut seen, server) = start_supd(listener, Script::AcceptAll).await;
    // The agent's own interval is a minute: five telemetry messages within
    // `WAIT` each can only come from following supd's 50ms suggestion.
    let agent = start_agent(config(addr, Duration::from_secs(60)));

    let (session, first) = next(&mut seen).await;
    assert_eq!(session, 1);
    assert_eq!(first.seq, 1);
    let register = register_of(&first);
    assert_eq!(register.node_id, "n1");
    assert_eq!(register.address, "10.0.0.1");
    assert_eq!(register.hostname, "host-n1");
    assert_eq!(register.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(register.gpu_backend, "sim");
    assert_eq!(register.instance_id.len(), 32);
    assert!(register.instance_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(register.gpus.len(), 2);
    assert_eq!(register.gpus[1].index, 1);
    assert!(register.gpus[0].uuid.starts_with("GPU-"));

    let (mut telemetry_count, mut last_seq, mut rank_status) = (0, 1, None);
    while telemetry_count < 5 || rank_status.is_none() {
        let (session, message) = next(&mut seen).await;
        assert_eq!(session, 1);
        assert!(message.seq > last_seq, "sequence numbers grow: {message:?}");
        last_seq = message.seq;
        match message.body {
            Some(AgentBody::Telemetry(telemetry)) => {
                assert_eq!(telemetry.gpus.len(), 2);
                assert!(telemetry.sampled_at_unix_ms > 0);
                assert!(telemetry.gpus.iter().all(|g| g.temperature_c.is_some()));
                telemetry_count += 1;
            }
            // The launcher's answer to the fake supd's assignment, whose
            // job has no command.
            Some(AgentBody::Ranks(status)) => rank_status = Some(status),
            // The health monitor's verdicts (all ok on simulated GPUs).
            Some(AgentBody::Health(health)) => assert_eq!(health.verdicts.len(), 2),
            other => panic!("expected Telemetry, Ranks or Health, got {other:?}"),
        }
    }
    let status = rank_status.expect("seen");
    assert_eq!((status.job.as_str(), status.generation), ("demo", 3));
    assert!(
        status.launch_error.contains("command is empty"),
        "{status:?}"
    );

    agent.shut_down().await;
    server.abort();
}

#[tokio::test]
async fn retries_through_rejections_and_dropped_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut seen, server) = start_supd(
        listener,
        Script::RejectThenFlap {
            rejections: 2,
            close_after: 2,
        },
    )
    .await;
    let agent = start_agent(config(addr, Duration::from_secs(60)));

    // Two rejected registrations, then an accepted one that supd closes.
    let mut instance_ids = Vec::new();
    for session in 1..=3 {
        let (n, message) = next(&mut seen).await;
        assert_eq!(n, session);
        assert_eq!(message.seq, 1, "each session starts its own sequence");
        instance_ids.push(register_of(&message).instance_id.clone());
    }
    // Session 3's telemetry, then the agent comes back on its own.
    let mut reconnected = false;
    for _ in 0..10 {
        let (n, message) = next(&mut seen).await;
        if n == 4 {
            assert_eq!(message.seq, 1);
            instance_ids.push(register_of(&message).instance_id.clone());
            reconnected = true;
            break;
        }
        assert_eq!(n, 3);
        assert!(
            matches!(
                message.body,
                Some(AgentBody::Telemetry(_) | AgentBody::Ranks(_) | AgentBody::Health(_))
            ),
            "{message:?}"
        );
    }
    assert!(
        reconnected,
        "agent re-registered after supd closed the stream"
    );
    assert!(
        instance_ids.windows(2).all(|w| w[0] == w[1]),
        "one process, one instance id: {instance_ids:?}"
    );

    agent.shut_down().await;
    server.abort();
}

#[tokio::test]
async fn waits_for_a_supervisor_that_starts_late() {
    // A port nothing listens on yet, and one no `bind(:0)` meanwhile can
    // draw (it lies below the ephemeral range), so it is still free when
    // the supervisor starts late.
    let port = sup_e2e::free_port().expect("a free port");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let agent = start_agent(config(addr, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !agent.task.is_finished(),
        "an unreachable supd is not a reason to exit"
    );

    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the reserved port");
    let (mut seen, server) = start_supd(listener, Script::AcceptAll).await;
    let (session, message) = next(&mut seen).await;
    assert_eq!(session, 1);
    assert_eq!(register_of(&message).node_id, "n1");

    agent.shut_down().await;
    server.abort();
}

#[tokio::test]
async fn follows_the_supervisor_that_answers_among_several_urls() {
    // A URL where nothing listens (a standby binds no gRPC port), then two
    // replicas: the first leads, the second takes over when it goes away.
    let dead: SocketAddr = ([127, 0, 0, 1], sup_e2e::free_port().expect("a free port")).into();
    let listener_a = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listener_b = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (addr_a, addr_b) = (
        listener_a.local_addr().expect("addr"),
        listener_b.local_addr().expect("addr"),
    );
    let mut a = start_replica(listener_a, Script::AcceptAll);
    let mut b = start_replica(listener_b, Script::AcceptAll);
    let mut config = config(dead, Duration::from_secs(60));
    config.supervisor =
        Supervisors::parse([format!("http://{dead},http://{addr_a},http://{addr_b}")])
            .expect("valid URLs");
    let agent = start_agent(config);

    // The dead URL refuses; the agent registers with the first live one.
    let (session, first) = next(&mut a.seen).await;
    assert_eq!(session, 1);
    let instance_id = register_of(&first).instance_id.clone();
    // The launcher's answer to A's assignment: level state, which must be
    // replayed to whichever supd the agent registers with next.
    loop {
        let (_, message) = next(&mut a.seen).await;
        if matches!(message.body, Some(AgentBody::Ranks(_))) {
            break;
        }
    }
    assert!(
        b.seen.try_recv().is_err(),
        "nothing goes to the second replica while the first answers"
    );

    a.go_away();
    let (session, message) = next(&mut b.seen).await;
    assert_eq!(session, 1);
    let register = register_of(&message);
    assert_eq!(register.node_id, "n1");
    assert_eq!(register.instance_id, instance_id, "the same agent process");
    // B offers the very assignment A did, so the launcher has nothing new
    // to say: a rank status on B is the replay of the level state.
    let mut replayed = None;
    while replayed.is_none() {
        let (session, message) = next(&mut b.seen).await;
        assert_eq!(session, 1, "one session on B");
        if let Some(AgentBody::Ranks(status)) = message.body {
            replayed = Some(status);
        }
    }
    let status = replayed.expect("seen");
    assert_eq!((status.job.as_str(), status.generation), ("demo", 3));

    agent.shut_down().await;
    b.server.abort();
}

#[tokio::test]
async fn a_probe_that_cannot_open_is_fatal_and_names_the_library() {
    let mut config = config("127.0.0.1:1".parse().expect("addr"), Duration::from_secs(1));
    config.gpu_backend = GpuBackend::Nvml;
    config.nvml_lib = Some("/nonexistent/libnvidia-ml.so.1".into());
    let result = tokio::time::timeout(WAIT, sup_agent::run(config, std::future::pending()))
        .await
        .expect("fails fast");
    let err = result.expect_err("NVML cannot load");
    assert!(
        err.to_string().contains("/nonexistent/libnvidia-ml.so.1"),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU and driver"]
async fn real_nvml_registers_and_reports() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut seen, server) = start_supd(listener, Script::AcceptAll).await;
    let mut config = config(addr, Duration::from_secs(60));
    config.gpu_backend = GpuBackend::Nvml;
    let agent = start_agent(config);

    let (_, first) = next(&mut seen).await;
    let register = register_of(&first);
    assert_eq!(register.gpu_backend, "nvml");
    assert!(!register.gpus.is_empty());
    assert!(register.gpus.iter().all(|g| g.uuid.starts_with("GPU-")));
    let (_, message) = next(&mut seen).await;
    let Some(AgentBody::Telemetry(telemetry)) = message.body else {
        panic!("expected Telemetry, got {message:?}");
    };
    assert_eq!(telemetry.gpus.len(), register.gpus.len());
    assert!(telemetry
        .gpus
        .iter()
        .all(|g| g.temperature_c.is_some() && g.power_w.is_some()));
    println!("{register:#?}\n{telemetry:#?}");

    agent.shut_down().await;
    server.abort();
}
