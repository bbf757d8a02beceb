//! sup-agent: one per GPU node. It reads the node's GPUs (NVML, or a
//! simulator), registers the node with supd and streams telemetry to it,
//! reconnecting for as long as it runs.
//!
//! The binary only parses flags and sets up logging; everything else is
//! here, behind [`run`], so tests can run a whole agent in-process.

pub mod backoff;
pub mod bus;
pub mod checkpoint;
pub mod config;
pub mod drills;
pub mod error_text;
pub mod fence;
pub mod health;
pub mod launcher;
pub mod lease;
pub mod probe;
pub mod progress;
pub mod rotation;
pub mod sampler;
pub mod session;
pub mod set_aside;
pub mod shutdown;
pub mod validation;
pub mod verify;

use std::future::Future;

use sup_proto::v1::Register;
use tracing::{info, warn};

pub use crate::config::{Cli, Config, LogFormat};
pub use crate::error_text::{append_causes, error_chain};
pub use crate::probe::GpuBackend;
use crate::probe::{ProbeError, XidSink};
use crate::sampler::Sampler;
use crate::session::{Link, SessionError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Rules(#[from] health::RulesError),
    #[error("supervisor URL {supervisor}: {source}")]
    Supervisor {
        supervisor: String,
        #[source]
        source: SessionError,
    },
}

/// Runs the agent until `shutdown` completes, then returns `Ok`.
///
/// Fails only when the GPUs cannot be read (the probe does not open at
/// startup, or its thread dies later). An unreachable or refusing supd is
/// never an error: it is retried for as long as the agent runs.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // Watched from the very start: opening NVML can hang on a sick node, and
    // a stop request must still be honoured then.
    tokio::pin!(shutdown);
    let instance_id = format!("{:032x}", rand::random::<u128>());
    info!(
        node_id = %config.node_id,
        address = %config.address,
        supervisor = %config.supervisor,
        gpu_backend = %config.gpu_backend,
        instance_id = %instance_id,
        version = env!("CARGO_PKG_VERSION"),
        "sup-agent starting"
    );

    if config.tls.is_none() {
        tracing::warn!(
            supervisor = %config.supervisor,
            "the link to supd is PLAINTEXT (http://): unauthenticated and unencrypted; \
             use https:// with tls_ca/tls_cert/tls_key in production"
        );
    }
    if config.allow_root_ranks && nix::unistd::geteuid().is_root() {
        warn!(
            "jobs that set no `user` run their ranks as root on this node: set `user` in job specs \
             and allow_root_ranks = false (as deploy/sup-agent.toml does) to refuse them"
        );
    }
    let rules = health::Rules::load(config.xid_rules.as_deref())?;

    let (backend, nvml_lib, node_id) = (
        config.gpu_backend,
        config.nvml_lib.clone(),
        config.node_id.clone(),
    );
    // Every Xid source (NVML's event thread, the kernel log) feeds the
    // health monitor through this one queue.
    let (xid_sink, xid_events) = XidSink::channel();
    let start = Sampler::start_with_xids(
        move || probe::open(backend, nvml_lib, &node_id),
        config.telemetry_interval,
        Some(xid_sink.clone()),
    );
    let (sampler, gpus) = tokio::select! {
        () = &mut shutdown => {
            info!("shutting down before the GPU probe opened");
            return Ok(());
        }
        started = start => started?,
    };
    info!(gpus = gpus.len(), "GPU inventory taken");
    let gpus = probe::with_expected_count(gpus, config.expected_gpus);
    let inventory = gpus.clone();
    let (health_samples, sample_trigger) = (sampler.subscribe_health(), sampler.trigger());

    let register = Register {
        node_id: config.node_id.clone(),
        address: config.address.clone(),
        hostname: config.hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance_id,
        gpu_backend: config.gpu_backend.wire_name().to_owned(),
        gpus,
        validates: config.validation.is_some(),
        slurm_node_name: config.slurm_node_name.clone().unwrap_or_default(),
    };
    let (bus, ports) = bus::bus();
    let mut link =
        Link::new(&config, register, sampler, ports).map_err(|source| AgentError::Supervisor {
            supervisor: config.supervisor.to_string(),
            source,
        })?;
    let bus::Bus {
        outbox,
        assignment,
        lease,
        drills,
        log_requests,
        validations,
        silence,
    } = bus;
    // GPU drills reach the health monitor through the drill executor,
    // which makes every other kind itself (see [`drills`]).
    let (gpu_drills, gpu_drills_rx) = tokio::sync::mpsc::channel(16);
    // Validation before an uncordon returns the node to service.
    tokio::spawn(validation::run(
        config.validation.clone(),
        validations,
        outbox.clone(),
    ));
    // GPU health monitor: Xids, verdicts, drills. [health wiring]
    if let Some(spec) = config.kernel_log.clone() {
        if let Err(err) = probe::kernel_log::spawn(spec, &inventory, xid_sink.clone()) {
            warn!(error = %err, "cannot start the kernel log reader; Xids come from NVML only");
        }
    }
    drop(xid_sink);
    info!(
        allow_drills = config.allow_drills,
        reset_settle = %humantime::format_duration(config.reset_settle),
        xid_rules = %config.xid_rules.as_deref().map_or_else(|| "built-in".to_owned(), |p| p.display().to_string()),
        "GPU health monitor starting"
    );
    tokio::spawn(health::monitor::run(
        health::HealthState::new(rules, inventory).with_reset_settle(config.reset_settle),
        config.allow_drills,
        outbox.clone(),
        health::Inputs {
            samples: health_samples,
            xids: xid_events,
            drills: gpu_drills_rx,
            trigger: Some(sample_trigger),
        },
    ));
    // Rank launcher, checkpoint scanner, progress intake. [launcher wiring]
    let mut launcher = launcher::Launcher::start(
        launcher::Settings {
            state_dir: config.state_dir.clone(),
            node_id: config.node_id.clone(),
            leave_ranks_on_exit: config.leave_ranks_on_exit,
            allow_root_ranks: config.allow_root_ranks,
            logs: config.log_retention,
            slurm_node_name: config.slurm_node_name.clone(),
        },
        outbox,
        assignment.clone(),
        lease,
        log_requests,
    )
    .await;
    tokio::spawn(drills::run(
        config.allow_drills,
        drills::Inputs {
            drills,
            gpu_drills,
            ranks: launcher.ranks(),
            assignment,
            silence,
        },
    ));

    // systemd (Type=notify): the GPUs are read and every loop runs.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("cannot tell systemd that the agent is ready: {e}");
    }
    let run_link = link.run();
    tokio::pin!(run_link);
    let outcome = tokio::select! {
        () = &mut shutdown => {
            info!("shutting down");
            Ok(())
        }
        err = &mut run_link => Err(err.into()),
    };
    // Ranks do not outlive their agent: nothing would fence them, and a
    // restarted agent would start a second copy. The link stays up while
    // they stop so that their exits reach supd. Unless the agent is told to
    // leave them (systemd, KillMode=process): then the next agent re-adopts
    // them from the state file, and fences them if supd moved on.
    if config.leave_ranks_on_exit {
        launcher.detach().await;
    } else if outcome.is_ok() {
        tokio::select! {
            () = launcher.shutdown() => {}
            _ = &mut run_link => launcher.shutdown().await,
        }
    } else {
        launcher.shutdown().await;
    }
    outcome
}
