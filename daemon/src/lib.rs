//! supd, the central supervisor.
//!
//! Layout: [`engine`] decides (pure, no I/O, no clock); [`actor`] owns the
//! engine and the [`store`] and turns decisions into durable state and
//! messages; [`grpc`] and [`http`] are the edges. `main.rs` only parses
//! arguments and calls [`run`].

pub mod actor;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod grpc;
pub mod grpc_tls;
pub mod http;
pub mod http_auth;
pub mod http_server;
pub mod jobspec;
pub mod memory;
pub mod metrics;
pub mod pages;
pub mod scheduler;
pub mod sim;
pub mod snapshot;
pub mod standby;
pub mod store;
pub mod view;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use sup_proto::v1::agent_service_server::AgentServiceServer;
use sup_proto::v1::control_service_server::ControlServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::actor::Actor;
use crate::config::{Config, LogFormat};
use crate::metrics::Counters;
use crate::store::{Store, StoreError};
use sup_core::Engine;

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// How long open HTTP requests may finish after shutdown begins.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

fn http_limits(config: &Config) -> http_server::Limits {
    http_server::Limits {
        header_read_timeout: config.http.header_read_timeout,
        max_connections: config.http.max_connections,
    }
}

/// The gRPC server with its limits, and the TLS handshakes of its listener:
/// mutual TLS unless plaintext was asked for explicitly (config validation
/// refuses neither); plaintext is logged as a warning at every start.
fn grpc_server(
    config: &Config,
) -> anyhow::Result<(
    tonic::transport::Server,
    auth::Transport,
    Option<grpc_tls::Handshakes>,
)> {
    use sup_proto::transport::read_pem;
    let g = &config.grpc;
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(g.keepalive_interval))
        .http2_keepalive_timeout(Some(g.keepalive_timeout))
        .max_concurrent_streams(Some(g.max_concurrent_streams))
        .concurrency_limit_per_connection(g.concurrency_per_connection)
        .timeout(g.request_timeout)
        .tcp_nodelay(true);
    match &g.tls {
        Some(tls) => {
            let ca = read_pem(&tls.ca, "cluster CA certificate", "CERTIFICATE")?;
            let cert = read_pem(&tls.cert, "supd certificate", "CERTIFICATE")?;
            let key = read_pem(&tls.key, "supd key", "PRIVATE KEY")?;
            let handshakes = grpc_tls::Handshakes::new(
                &ca,
                &cert,
                &key,
                tls.crl.as_deref(),
                tls.handshake_timeout,
            )
            .with_context(|| {
                format!(
                    "cannot set up TLS with {}, {} and {}",
                    tls.ca.display(),
                    tls.cert.display(),
                    tls.key.display()
                )
            })?;
            tracing::info!(
                ca = %tls.ca.display(),
                cert = %tls.cert.display(),
                crl = %tls.crl.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
                revoked = handshakes.revoked_count(),
                "gRPC uses mutual TLS"
            );
            Ok((builder, auth::Transport::MutualTls, Some(handshakes)))
        }
        None => {
            tracing::warn!(
                addr = %g.addr,
                "gRPC is PLAINTEXT (grpc.plaintext = true): no authentication, anyone who reaches \
                 this port can register as any node and change anything; use [grpc.tls] in production"
            );
            Ok((builder, auth::Transport::Plaintext, None))
        }
    }
}

/// Serves `router` on `listener` until `stop` changes: through supd's own
/// TLS handshakes ([`grpc_tls`]) when configured, plaintext otherwise.
fn spawn_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<grpc_tls::Handshakes>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let signal = async move {
        let _ = stop.changed().await;
    };
    if let Some(handshakes) = &tls {
        let _ = counters.tls.set(handshakes.clone());
    }
    match tls {
        Some(handshakes) => tokio::spawn(router.serve_with_incoming_shutdown(
            grpc_tls::incoming(
                listener,
                handshakes,
                counters.tls_handshake_failures.clone(),
            ),
            signal,
        )),
        None => tokio::spawn(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal),
        ),
    }
}

/// Runs supd until `shutdown` resolves (or the state store fails).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    // With etcd, this replica serves only as the elected leader; its term
    // (shared with the store's keep-alive) is watched below.
    let mut leadership = None;
    let store = match config.store.backend {
        config::StoreBackend::Sled => store::open(&config),
        config::StoreBackend::Etcd => {
            match standby::until_leader(&config, shutdown.as_mut()).await? {
                standby::Outcome::Leader(leader) => {
                    leadership = leader.leadership().cloned();
                    Ok(leader as Box<dyn Store>)
                }
                standby::Outcome::Refused(e) => Err(e),
                standby::Outcome::Stopped => return Ok(()),
            }
        }
    };
    let opened = store.and_then(|store| {
        let persisted = store.load()?;
        Ok((store, persisted))
    });
    let (store, mut persisted) = match opened {
        Ok(opened) => opened,
        // etcd not answering says nothing about the state: exit, so that
        // systemd starts supd again and it reads the state once it can.
        Err(e @ StoreError::Unreachable { .. }) => {
            return Err(anyhow::Error::new(e).context("supd did not start"))
        }
        Err(e) => return refuse_to_serve(&config, anyhow::Error::new(e), shutdown).await,
    };
    tracing::info!(
        store = %store::describe(&config),
        data_dir = %config.data_dir.display(),
        nodes = persisted.nodes.len(),
        events = persisted.events.len(),
        "state loaded"
    );
    let requests = std::mem::take(&mut persisted.requests);
    let engine = Engine::restore(config.engine(), persisted, actor::now_ms());

    let grpc_listener = bind_grpc(config.grpc.addr)
        .with_context(|| format!("cannot bind the gRPC address {}", config.grpc.addr))?;
    let http_listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot bind the HTTP address {}", config.http.addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    // TLS files and the API token are read before anything runs, so a bad
    // path stops supd at once with the file named.
    let (mut grpc_builder, transport, tls) = grpc_server(&config)?;
    let api_token = match &config.http.api_token_file {
        Some(path) => Some(http_auth::ApiToken::read(path)?),
        None => None,
    };

    let counters = Arc::new(Counters::default());
    let _ = counters.supervisor.set(sup_proto::v1::Supervisor {
        id: config.store.replica_id.clone(),
        role: "leader".to_owned(),
        leader: config.store.replica_id.clone(),
        store: config.store.backend.as_str().to_owned(),
    });
    let ready = Arc::new(AtomicBool::new(false));
    let (actor, handle) = Actor::new(
        engine,
        store,
        config.nodes.telemetry_interval,
        counters.clone(),
        ready.clone(),
    );
    let actor = actor.with_requests(requests);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut actor_task = tokio::spawn(actor.run(stop_rx.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let max_message = config.grpc.max_message_bytes;
    let agent_service = AgentServiceServer::new(
        grpc::AgentApi::new(handle.clone(), config.grpc.register_timeout, transport)
            .with_leadership(leadership.clone(), config.store.lease_bridge),
    )
    .max_decoding_message_size(max_message);
    let control_service = ControlServiceServer::new(
        grpc::ControlApi::new(handle.clone(), transport).with_slurm(config.slurm.mode),
    )
    .max_decoding_message_size(max_message);
    health_reporter
        .set_serving::<AgentServiceServer<grpc::AgentApi>>()
        .await;
    health_reporter
        .set_serving::<ControlServiceServer<grpc::ControlApi>>()
        .await;

    let router = grpc_builder
        .add_service(health_service)
        .add_service(agent_service)
        .add_service(control_service);
    let mut grpc_task = spawn_grpc(
        router,
        grpc_listener,
        tls,
        counters.clone(),
        stop_rx.clone(),
    );

    let counters_for_lease = counters.clone();
    let http_app = http::router(http::HttpState {
        handle: handle.clone(),
        ready: ready.clone(),
        counters,
        api_token,
    });
    let mut http_task = tokio::spawn(http_server::serve(
        http_listener,
        http_app,
        http_limits(&config),
        stop_rx.clone(),
        HTTP_DRAIN,
    ));
    // Not awaited at shutdown: it holds nothing that needs a clean stop
    // (a command in flight is killed with it).
    let _scheduler_task = scheduler::spawn(&config.slurm, handle.clone(), stop_rx.clone());

    ready.store(true, Ordering::SeqCst);
    tracing::info!(%grpc_addr, %http_addr, "supd listening");
    // systemd (Type=notify): ready once the store is open, the actor runs
    // and both listeners are bound. A no-op outside systemd.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd that supd is ready");
    }

    let deposed = standby::deposed(
        leadership,
        config.store.lease_bridge,
        counters_for_lease,
        health_reporter.clone(),
    );
    tokio::pin!(deposed);
    let outcome: anyhow::Result<()> = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        why = &mut deposed => Err(anyhow::anyhow!(
            "this replica is no longer the leader ({why}): stepping down; \
             restarted (systemd: Restart=always), it stands by for the next election"
        )),
        r = &mut actor_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the state store failed")),
            Err(e) => Err(anyhow::anyhow!("the state actor crashed: {e}")),
        },
        r = &mut grpc_task => Err(anyhow::anyhow!("the gRPC server stopped: {r:?}")),
        r = &mut http_task => Err(anyhow::anyhow!("the HTTP server stopped: {r:?}")),
    };
    ready.store(false, Ordering::SeqCst);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    health_reporter
        .set_not_serving::<AgentServiceServer<grpc::AgentApi>>()
        .await;
    let _ = stop_tx.send(true);
    // Agent streams end with the server; give in-flight replies a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await;
    if !actor_task.is_finished() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), actor_task).await;
    }
    outcome
}

/// Connections the kernel may hold for the gRPC listener before supd
/// accepts them. After a supd restart every agent reconnects within a
/// second or two; with tokio's default (1,024) the rest overflowed the
/// queue, their SYNs were dropped and they retried after TCP's 1, 3, 7 s
/// and then on their own backoff: a 16,384-node storm's tail. The kernel
/// caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4; the
/// README says to raise it on large clusters).
pub const GRPC_LISTEN_BACKLOG: u32 = 65_535;

/// The gRPC listener, with [`GRPC_LISTEN_BACKLOG`].
fn bind_grpc(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind: a restarted supd rebinds while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(GRPC_LISTEN_BACKLOG)
}

/// The store could not be opened or does not decode. supd fails closed: it
/// serves nothing from it and writes nothing to it, but keeps both ports up
/// so that orchestrators and operators see *why* (`/readyz` answers 503 with
/// the error, the gRPC health service says NOT_SERVING for every service)
/// instead of a crash loop. Returns the error once `shutdown` resolves.
async fn refuse_to_serve(
    config: &Config,
    error: anyhow::Error,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tonic_health::ServingStatus;
    let why = format!("{error:#}");
    tracing::error!(error = %why, "not serving: the state store is unusable");
    eprintln!("supd: not serving: {why}");

    let grpc_listener = bind_grpc(config.grpc.addr)
        .with_context(|| format!("cannot bind the gRPC address {}", config.grpc.addr))?;
    let http_listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot bind the HTTP address {}", config.http.addr))?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        <AgentServiceServer<grpc::AgentApi> as tonic::server::NamedService>::NAME,
        <ControlServiceServer<grpc::ControlApi> as tonic::server::NamedService>::NAME,
    ] {
        health_reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut grpc_builder, _, tls) = grpc_server(config)?;
    let grpc_task = spawn_grpc(
        grpc_builder.add_service(health_service),
        grpc_listener,
        tls,
        Arc::new(Counters::default()),
        stop_rx.clone(),
    );
    let http_app = http::refusing_router(
        watch::channel(http::NotServing {
            why: why.clone(),
            leader_http: None,
        })
        .1,
    );
    let http_task = tokio::spawn(http_server::serve(
        http_listener,
        http_app,
        http_limits(config),
        stop_rx,
        HTTP_DRAIN,
    ));
    tracing::info!(
        grpc_addr = %config.grpc.addr,
        http_addr = %config.http.addr,
        "supd listening, NOT SERVING (health only)"
    );
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await;
    Err(error.context("supd did not serve"))
}
