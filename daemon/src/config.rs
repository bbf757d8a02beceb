//! supd's configuration: a TOML file (unknown keys are errors) with command
//! line flags on top. Every default is written here and in
//! `deploy/supd.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub nodes: NodesConfig,
    pub events: EventsConfig,
    pub jobs: JobsConfig,
    pub breaker: BreakerConfig,
    pub correlation: CorrelationConfig,
    pub detect: DetectConfig,
    pub slurm: SlurmConfig,
    pub store: StoreConfig,
}

/// Where supd keeps its durable state (`[store]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// etcd's client URLs (`http://HOST:PORT`, or `https://` with
    /// `[store.etcd_tls]`), for `backend = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// Mutual TLS to etcd (`https://` endpoints): the CA that signed the
    /// members' certificates, and supd's client certificate and key.
    pub etcd_tls: Option<EtcdTls>,
    /// Every key supd writes lies under this prefix, so several clusters
    /// can share one etcd. Must end with `/`.
    pub etcd_prefix: String,
    /// This replica's name in the leader election (`--id`; default: the
    /// host name).
    pub replica_id: String,
    /// The leader's etcd lease: a leader that stops renewing it (killed,
    /// paused, cut off from etcd) is replaced this long after its last
    /// renewal at most, and acts no more after 90% of it on its own clock.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// A leader that can no longer renew its term (etcd unreachable, or
    /// without quorum) stops acting at once but keeps renewing the agents'
    /// assignment leases this long, so an etcd outage shorter than this plus
    /// `jobs.assignment_lease` stops no training. In exchange a new leader
    /// waits this long (plus the assignment lease) before it replaces a node
    /// that has not reported to it. "0s": step down at once.
    #[serde(with = "humantime_serde")]
    pub lease_bridge: Duration,
}

/// `[store.etcd_tls]`: how supd proves itself to etcd and checks etcd's
/// members (etcd's `--client-cert-auth`, `--trusted-ca-file`). Read when the
/// store is opened: a renewed certificate takes a restart of supd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' server certificates.
    pub ca: PathBuf,
    /// supd's client certificate (extended key usage: client auth), signed
    /// by a CA etcd's `--trusted-ca-file` names.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the members' certificates are checked against; default:
    /// each endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl EtcdTls {
    pub fn files(&self) -> sup_proto::transport::ClientTlsFiles {
        sup_proto::transport::ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
        }
    }
}

pub const DEFAULT_ETCD_PREFIX: &str = "/sup/";
/// Short enough for failover within ~5 s; long enough that a busy leader
/// (a keep-alive every third of it) does not lose it to one slow renewal.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(3);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sled,
            etcd_endpoints: Vec::new(),
            etcd_tls: None,
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            replica_id: String::new(),
            leader_lease: DEFAULT_LEADER_LEASE,
            lease_bridge: Duration::from_secs(60),
        }
    }
}

/// The host name, for the default replica id.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "supd".to_owned())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded (sled) in `data_dir`: one supd, nothing else to run.
    #[default]
    Sled,
    /// An etcd cluster (v3 API), the base for supd replicas.
    Etcd,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sled => "sled",
            StoreBackend::Etcd => "etcd",
        }
    }
}

/// Node state mirrored with Slurm (`[slurm]`). Slurm's own client
/// configuration is found the usual way: `SLURM_CONF` in supd's
/// environment, else `/etc/slurm/slurm.conf`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub mode: SlurmMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlurmMode {
    /// No Slurm: supd never runs sinfo or scontrol.
    #[default]
    Off,
    /// Show Slurm's node states and keep its drained/down nodes out of
    /// placement, change nothing in Slurm.
    Observe,
    /// Observe, and drain sup's cordoned nodes in Slurm (resuming only
    /// sup's own drains).
    Enforce,
}

/// Job-level detectors: hangs, stragglers, throughput (`[detect]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Detect hangs at all.
    pub hang_detection: bool,
    /// Hung after no step advance for clamp(hang_factor × median step time,
    /// hang_floor, hang_ceiling) while in the train phase.
    pub hang_factor: f64,
    #[serde(with = "humantime_serde")]
    pub hang_floor: Duration,
    #[serde(with = "humantime_serde")]
    pub hang_ceiling: Duration,
    /// Allowance of the checkpoint_save, checkpoint_load and eval phases.
    #[serde(with = "humantime_serde")]
    pub checkpoint_allowance: Duration,
    /// From every rank launched to the generation's first progress report,
    /// for jobs that have reported progress before (or parse it from logs).
    #[serde(with = "humantime_serde")]
    pub startup_allowance: Duration,
    /// Step-time samples before the adaptive bound applies (the ceiling
    /// does until then).
    pub warmup_steps: usize,
    /// Hangs with a node's ranks lagging after which that node is cordoned
    /// (0: never).
    pub hang_cordon_after: u32,
    /// A node this fraction slower than the median of the others ...
    pub straggler_threshold: f64,
    /// ... over a window of this many steps ...
    pub straggler_window: usize,
    /// ... for this many new samples in a row is a straggler (the
    /// uncorroborated window: no hardware signal of a slowdown) ...
    pub straggler_sustain: u32,
    /// ... or this many when its GPUs show one (throttling, PCIe link
    /// downgrade, NVLink, ECC pressure): the corroborated window.
    pub straggler_sustain_corroborated: u32,
    /// report | replace | replace_at_checkpoint (a job spec may override).
    pub straggler_policy: sup_core::detect::StragglerPolicy,
    /// Window over which tokens/s is measured.
    #[serde(with = "humantime_serde")]
    pub throughput_window: Duration,
}

impl Default for DetectConfig {
    fn default() -> Self {
        let d = sup_core::detect::DetectConfig::default();
        let dur = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        DetectConfig {
            hang_detection: d.hang_enabled,
            hang_factor: d.hang_factor,
            hang_floor: dur(d.hang_floor_ms),
            hang_ceiling: dur(d.hang_ceiling_ms),
            checkpoint_allowance: dur(d.checkpoint_allowance_ms),
            startup_allowance: dur(d.startup_allowance_ms),
            warmup_steps: d.warmup_steps,
            hang_cordon_after: d.hang_cordon_after,
            straggler_threshold: d.straggler_threshold,
            straggler_window: d.straggler_window,
            straggler_sustain: d.straggler_sustain,
            straggler_sustain_corroborated: d.straggler_sustain_corroborated,
            straggler_policy: d.straggler_policy,
            throughput_window: dur(d.throughput_window_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// MASTER_PORT for every job's ranks (rank 0 listens on it).
    pub master_port: u16,
    /// SIGTERM → SIGKILL grace when stopping ranks.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// The spare reserve: healthy nodes kept free of normal work (lent to
    /// low-priority jobs); an event when fewer remain.
    pub spares_target: u32,
    /// An assigned node unreachable this long is replaced, progress or not.
    #[serde(with = "humantime_serde")]
    pub lost_node_grace: Duration,
    /// An assigned node unreachable this long while its job made no progress
    /// since is replaced (silence corroborated by a stalled job).
    #[serde(with = "humantime_serde")]
    pub stall_confirm: Duration,
    /// The assignment lease handed to every agent ("0s": none). An agent
    /// that no supervisor has acknowledged for this long kills its ranks; a
    /// job whose previous generation ran on a node supd cannot reach starts
    /// again only this long (plus 2 s) after that node was last heard. Must
    /// outlast a supervisor restart or failover (README: "Assignment
    /// lease"), or every job stops when the control plane blinks.
    #[serde(with = "humantime_serde")]
    pub assignment_lease: Duration,
    /// Restarts in a row without a new checkpoint or step advance before a
    /// job is failed as a crash loop.
    pub crash_loop_limit: u32,
    /// Grow a shrunk job back onto returned capacity right after its next
    /// checkpoint instead of at its next failure.
    pub grow_after_checkpoint: bool,
    /// The most nodes a job may ask for: a typo'd `nodes = 40000000` is
    /// refused naming this limit rather than waiting forever for capacity.
    pub max_nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Automatic cordons are counted over this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Share of all nodes that may be cordoned automatically in the window.
    pub max_share: f64,
    /// ... but never fewer than this many.
    pub min_cordons: u32,
    /// ... and never more than this many, whatever the cluster's size: a
    /// storm on a 2,000-node cluster stops after a handful, not 200.
    pub max_cordons: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    /// Application Xids are correlated across nodes over this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Share of nodes (at least 2) with the same application Xid that makes
    /// it a correlated, likely-software fault.
    pub share: f64,
    /// Nodes reporting the same hardware Xid (79, 48, ...) within the
    /// window that make it a correlated fault (a driver push, the fabric):
    /// automatic cordons are held until an operator resets the breaker.
    pub hardware_nodes: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            master_port: 29_500,
            stop_grace: Duration::from_secs(10),
            spares_target: 0,
            lost_node_grace: Duration::from_secs(60),
            stall_confirm: Duration::from_secs(5),
            assignment_lease: Duration::from_secs(15),
            crash_loop_limit: 3,
            grow_after_checkpoint: true,
            max_nodes: sup_core::jobspec::MAX_NODES,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(600),
            max_share: 0.1,
            min_cordons: 3,
            max_cordons: 10,
        }
    }
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            window: Duration::from_secs(60),
            share: 0.5,
            hardware_nodes: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
    /// Largest message accepted from an agent or supctl.
    pub max_message_bytes: usize,
    /// HTTP/2 streams per connection (an agent needs one).
    pub max_concurrent_streams: u32,
    /// Concurrent requests handled per connection.
    pub concurrency_per_connection: usize,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// An agent must send its Register message within this time.
    #[serde(with = "humantime_serde")]
    pub register_timeout: Duration,
    /// Deadline for each unary call (status, cordon, ...); a client's own
    /// shorter `grpc-timeout` wins. Agent sessions are streams and are kept
    /// alive by keepalives instead.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Mutual TLS: supd's certificate and key and the cluster CA that signs
    /// every client (create them with `supctl certs init`).
    pub tls: Option<TlsFiles>,
    /// Serve without TLS. Only for a loopback trial or a test: anyone who
    /// reaches the port can then register as any node and change anything.
    pub plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA; clients must present a certificate it signed.
    pub ca: PathBuf,
    /// supd's certificate (PEM), valid for the names agents dial.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client must finish the TLS handshake within this time.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The cluster CA's certificate revocation list (PEM, from `supctl
    /// certs revoke`). Re-read when it changes: a revoked certificate is
    /// refused at the next handshake and its live connections are cut.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The dashboard, /metrics and /api are read-only and unauthenticated:
    /// keep this on loopback (the default) or a management network.
    pub addr: SocketAddr,
    /// A client must send a request's headers within this time, so a
    /// half-sent request cannot hold a connection open.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// When set, the JSON API (`/api/v1/...`) answers only requests with
    /// `Authorization: Bearer <the token in this file>` (see `http_auth.rs`).
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesConfig {
    /// A node silent this long is unreachable (not failed: silence alone
    /// never cordons).
    #[serde(with = "humantime_serde")]
    pub unreachable_after: Duration,
    /// The silence limit while agents reconnect en masse: after supd
    /// starts (until every restored node has reported again) and during a
    /// registration storm. A storm of thousands saturates supd and must not
    /// turn healthy nodes unreachable.
    #[serde(with = "humantime_serde")]
    pub rejoin_grace: Duration,
    /// Telemetry interval suggested to agents at registration.
    #[serde(with = "humantime_serde")]
    pub telemetry_interval: Duration,
    /// Partition guard: this many nodes (max of the share and the minimum)
    /// turning unreachable within the window makes supd suspect its own
    /// network: lost-node restarts are held and an alert event is raised.
    #[serde(with = "humantime_serde")]
    pub partition_window: Duration,
    pub partition_share: f64,
    pub partition_min_nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept in the log (and the store); older ones are dropped.
    pub capacity: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 64,
            concurrency_per_connection: 64,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            register_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls: None,
            plaintext: false,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7080)),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            api_token_file: None,
        }
    }
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            unreachable_after: Duration::from_secs(4),
            rejoin_grace: Duration::from_secs(30),
            telemetry_interval: Duration::from_secs(1),
            partition_window: Duration::from_secs(60),
            partition_share: 0.5,
            partition_min_nodes: 3,
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { capacity: 10_000 }
    }
}

/// The file as written; everything optional so flags can fill the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    grpc: GrpcConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    nodes: NodesConfig,
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    jobs: JobsConfig,
    #[serde(default)]
    breaker: BreakerConfig,
    #[serde(default)]
    correlation: CorrelationConfig,
    #[serde(default)]
    detect: DetectConfig,
    #[serde(default)]
    slurm: SlurmConfig,
    #[serde(default)]
    store: StoreConfig,
}

/// Values given on the command line (or their environment variables); each
/// one that is set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    /// `--plaintext`: serve gRPC without TLS (sets grpc.plaintext).
    pub plaintext: bool,
    /// `--store-backend` (store.backend).
    pub store_backend: Option<StoreBackend>,
    /// `--etcd-endpoints URL,URL,...` (store.etcd_endpoints).
    pub etcd_endpoints: Option<Vec<String>>,
    /// `--id NAME` (store.replica_id).
    pub replica_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        let mut config = Config {
            data_dir: parsed
                .data_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/sup")),
            log_format: parsed.log_format.unwrap_or(LogFormat::Text),
            grpc: parsed.grpc,
            http: parsed.http,
            nodes: parsed.nodes,
            events: parsed.events,
            jobs: parsed.jobs,
            breaker: parsed.breaker,
            correlation: parsed.correlation,
            detect: parsed.detect,
            slurm: parsed.slurm,
            store: parsed.store,
        };
        if let Some(v) = overrides.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = overrides.grpc_addr {
            config.grpc.addr = v;
        }
        if let Some(v) = overrides.http_addr {
            config.http.addr = v;
        }
        if let Some(v) = overrides.log_format {
            config.log_format = v;
        }
        if overrides.plaintext {
            config.grpc.plaintext = true;
        }
        if let Some(v) = overrides.store_backend {
            config.store.backend = v;
        }
        if let Some(v) = overrides.etcd_endpoints {
            config.store.etcd_endpoints = v;
        }
        if let Some(v) = overrides.replica_id {
            config.store.replica_id = v;
        }
        if config.store.replica_id.is_empty() {
            config.store.replica_id = host_name();
        }
        config.validate()?;
        Ok(config)
    }

    /// The policy engine's settings.
    pub fn engine(&self) -> sup_core::EngineConfig {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        sup_core::EngineConfig {
            unreachable_after_ms: ms(self.nodes.unreachable_after),
            rejoin_grace_ms: ms(self.nodes.rejoin_grace),
            event_log_capacity: self.events.capacity,
            master_port: u32::from(self.jobs.master_port),
            stop_grace_ms: u32::try_from(self.jobs.stop_grace.as_millis()).unwrap_or(u32::MAX),
            spares_target: self.jobs.spares_target,
            lost_node_grace_ms: ms(self.jobs.lost_node_grace),
            stall_confirm_ms: ms(self.jobs.stall_confirm),
            assignment_lease_ms: ms(self.jobs.assignment_lease),
            // Only replicas can renew leases after losing their term.
            takeover_hold_ms: match self.store.backend {
                StoreBackend::Sled => 0,
                StoreBackend::Etcd => ms(self.store.lease_bridge),
            },
            crash_loop_limit: self.jobs.crash_loop_limit,
            grow_after_checkpoint: self.jobs.grow_after_checkpoint,
            max_job_nodes: self.jobs.max_nodes,
            breaker_window_ms: ms(self.breaker.window),
            breaker_max_share: self.breaker.max_share,
            breaker_min_cordons: self.breaker.min_cordons,
            breaker_max_cordons: self.breaker.max_cordons,
            correlation_window_ms: ms(self.correlation.window),
            correlation_share: self.correlation.share,
            hardware_storm_nodes: self.correlation.hardware_nodes,
            partition_window_ms: ms(self.nodes.partition_window),
            partition_share: self.nodes.partition_share,
            partition_min_nodes: self.nodes.partition_min_nodes,
            detect: sup_core::detect::DetectConfig {
                hang_enabled: self.detect.hang_detection,
                hang_factor: self.detect.hang_factor,
                hang_floor_ms: ms(self.detect.hang_floor),
                hang_ceiling_ms: ms(self.detect.hang_ceiling),
                checkpoint_allowance_ms: ms(self.detect.checkpoint_allowance),
                startup_allowance_ms: ms(self.detect.startup_allowance),
                warmup_steps: self.detect.warmup_steps,
                hang_cordon_after: self.detect.hang_cordon_after,
                straggler_threshold: self.detect.straggler_threshold,
                straggler_window: self.detect.straggler_window,
                straggler_sustain: self.detect.straggler_sustain,
                straggler_sustain_corroborated: self.detect.straggler_sustain_corroborated,
                straggler_policy: self.detect.straggler_policy,
                throughput_window_ms: ms(self.detect.throughput_window),
            },
        }
    }

    fn parse_file(text: &str) -> Result<FileConfig, String> {
        // toml's message names the offending key and its line.
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir must not be empty");
        }
        if self.nodes.unreachable_after.is_zero() {
            return invalid("nodes.unreachable_after must be greater than zero");
        }
        if self.nodes.telemetry_interval.is_zero() {
            return invalid("nodes.telemetry_interval must be greater than zero");
        }
        // An agent whose sampler stalls re-sends its last sample after 1.5
        // intervals: two intervals must fit in the silence limit.
        if self.nodes.telemetry_interval * 2 > self.nodes.unreachable_after {
            return invalid(
                "nodes.telemetry_interval must be at most half of nodes.unreachable_after, or nodes would flap",
            );
        }
        if !(0.0..=1.0).contains(&self.nodes.partition_share) {
            return invalid("nodes.partition_share must be between 0 and 1");
        }
        let d = &self.detect;
        if !d.hang_factor.is_finite() || d.hang_factor <= 0.0 {
            return invalid("detect.hang_factor must be a positive number");
        }
        if d.hang_floor.is_zero() || d.hang_ceiling < d.hang_floor {
            return invalid("detect.hang_floor must be above zero and at most detect.hang_ceiling");
        }
        if d.checkpoint_allowance.is_zero() || d.throughput_window.is_zero() {
            return invalid(
                "detect.checkpoint_allowance and detect.throughput_window must be above zero",
            );
        }
        if !d.straggler_threshold.is_finite() || d.straggler_threshold <= 0.0 {
            return invalid(
                "detect.straggler_threshold must be a positive fraction (0.07 = 7% slower)",
            );
        }
        if d.straggler_window < 2 || d.straggler_sustain == 0 {
            return invalid("detect.straggler_window must be at least 2 and detect.straggler_sustain at least 1");
        }
        if d.straggler_sustain_corroborated == 0
            || d.straggler_sustain_corroborated > d.straggler_sustain
        {
            return Err(ConfigError::Invalid(format!(
                "detect.straggler_sustain_corroborated must be at least 1 and at most \
                 detect.straggler_sustain ({}): hardware evidence shortens the window, never \
                 lengthens it (got {})",
                d.straggler_sustain, d.straggler_sustain_corroborated
            )));
        }
        if !(0.0..=1.0).contains(&self.breaker.max_share) {
            return invalid("breaker.max_share must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.correlation.share) {
            return invalid("correlation.share must be between 0 and 1");
        }
        let lease = self.jobs.assignment_lease;
        if !lease.is_zero() {
            // Renewals ride on telemetry (about four per lease): a lease of
            // a few intervals would run out on one delayed report.
            let floor = (self.nodes.telemetry_interval * 3).max(Duration::from_secs(2));
            if lease < floor || lease > Duration::from_secs(3_600) {
                return Err(ConfigError::Invalid(format!(
                    "jobs.assignment_lease must be \"0s\" (no lease) or between {} (three telemetry \
                     intervals, at least 2s) and 1h (got {})",
                    humantime::format_duration(floor),
                    humantime::format_duration(lease)
                )));
            }
        }
        if self.jobs.crash_loop_limit == 0 {
            return invalid("jobs.crash_loop_limit must be at least 1");
        }
        if self.events.capacity == 0 {
            return invalid("events.capacity must be at least 1");
        }
        if self.grpc.max_message_bytes < 1024 {
            return invalid("grpc.max_message_bytes must be at least 1024");
        }
        match (&self.grpc.tls, self.grpc.plaintext) {
            (None, false) => {
                return invalid(
                    "no transport security: set [grpc.tls] ca, cert and key (create them with `supctl certs init`), \
                     or set grpc.plaintext = true (or --plaintext) for a loopback trial",
                )
            }
            (Some(_), true) => {
                return invalid("grpc.plaintext = true and [grpc.tls] are both set; choose one")
            }
            (Some(tls), false) if tls.handshake_timeout.is_zero() => {
                return invalid("grpc.tls.handshake_timeout must be greater than zero")
            }
            _ => {}
        }
        if self.grpc.request_timeout.is_zero() || self.http.header_read_timeout.is_zero() {
            return invalid(
                "grpc.request_timeout and http.header_read_timeout must be greater than zero",
            );
        }
        if !(1..=sup_core::jobspec::MAX_NODES).contains(&self.jobs.max_nodes) {
            return invalid(&format!(
                "jobs.max_nodes must be between 1 and {}",
                sup_core::jobspec::MAX_NODES
            ));
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections must be at least 1");
        }
        if self.grpc.max_concurrent_streams == 0 || self.grpc.concurrency_per_connection == 0 {
            return invalid("grpc.max_concurrent_streams and grpc.concurrency_per_connection must be at least 1");
        }
        self.store.validate()
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        match self.backend {
            StoreBackend::Sled => {
                if !self.etcd_endpoints.is_empty()
                    || self.etcd_prefix != DEFAULT_ETCD_PREFIX
                    || self.etcd_tls.is_some()
                {
                    return invalid(
                        "store.etcd_endpoints, store.etcd_prefix or [store.etcd_tls] are set but store.backend is \"sled\": \
                         set store.backend = \"etcd\" (or --store-backend etcd), or remove them"
                            .to_owned(),
                    );
                }
                Ok(())
            }
            StoreBackend::Etcd => {
                if self.etcd_endpoints.is_empty() {
                    return invalid(
                        "store.backend = \"etcd\" needs store.etcd_endpoints (or --etcd-endpoints URL,URL,...): \
                         the client URLs of the etcd members, e.g. [\"http://10.0.0.1:2379\"]"
                            .to_owned(),
                    );
                }
                for (i, url) in self.etcd_endpoints.iter().enumerate() {
                    check_etcd_endpoint(url).map_err(|why| {
                        ConfigError::Invalid(format!("store.etcd_endpoints: '{url}' {why}"))
                    })?;
                    if self.etcd_endpoints[..i].contains(url) {
                        return invalid(format!("store.etcd_endpoints lists '{url}' twice"));
                    }
                }
                self.check_etcd_tls()?;
                if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.leader_lease)
                    || self.leader_lease.subsec_nanos() != 0
                {
                    return invalid(format!(
                        "store.leader_lease must be whole seconds between 1s and 60s \
                         (etcd's leases are; got {})",
                        humantime::format_duration(self.leader_lease)
                    ));
                }
                if self.lease_bridge > Duration::from_secs(600) {
                    return invalid(format!(
                        "store.lease_bridge must be at most 10m (got {}): a new leader waits that \
                         long before it replaces a node it has not heard from",
                        humantime::format_duration(self.lease_bridge)
                    ));
                }
                let id = &self.replica_id;
                if id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return invalid(format!(
                        "store.replica_id (--id) must be at most 128 characters without spaces or control characters (got {id:?})"
                    ));
                }
                let p = &self.etcd_prefix;
                if p.is_empty() || !p.ends_with('/') {
                    return invalid(format!(
                        "store.etcd_prefix must end with '/' (got '{p}'): \
                         a prefix '/sup' would also cover another cluster's '/sup2/...'"
                    ));
                }
                if p.chars().any(char::is_control) {
                    return invalid(format!(
                        "store.etcd_prefix must not contain control characters (got {p:?})"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The endpoints' scheme and `[store.etcd_tls]` agree: all `https://`
    /// with it, all `http://` without (never a silent plaintext fallback).
    fn check_etcd_tls(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let (secure, plain): (Vec<&String>, Vec<&String>) = self
            .etcd_endpoints
            .iter()
            .partition(|url| url.starts_with("https://"));
        match (secure.first(), plain.first(), &self.etcd_tls) {
            (Some(s), Some(p), _) => invalid(format!(
                "store.etcd_endpoints mix https:// ('{s}') and http:// ('{p}'): \
                 the members of one etcd cluster serve clients one way"
            )),
            (Some(s), None, None) => invalid(format!(
                "store.etcd_endpoints: '{s}' is https:// but [store.etcd_tls] is not set: \
                 give ca (the CA of etcd's server certificates), cert and key (supd's client certificate)"
            )),
            (None, Some(p), Some(_)) => invalid(format!(
                "[store.etcd_tls] is set but store.etcd_endpoints are http:// ('{p}'): \
                 use https:// URLs, or remove [store.etcd_tls]"
            )),
            _ => match &self.etcd_tls {
                Some(EtcdTls {
                    server_name: Some(name),
                    ..
                }) if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                    invalid(format!(
                        "store.etcd_tls.server_name must be a host name (got {name:?})"
                    ))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Why `url` is not an etcd client URL supd can use (`http://HOST:PORT` or
/// `https://HOST:PORT`).
fn check_etcd_endpoint(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("is not a URL ({e}); expected http://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("is not an http:// or https:// URL; expected http://HOST:PORT".to_owned()),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "has no host; expected http://HOST:PORT".to_owned())?;
    if authority.host().is_empty() || authority.port_u16().is_none() {
        return Err(
            "has no port; expected http://HOST:PORT (etcd's client port is usually 2379)"
                .to_owned(),
        );
    }
    if authority.as_str().contains('@') {
        return Err("carries credentials, which supd does not support".to_owned());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("has a path; expected http://HOST:PORT".to_owned());
    }
    Ok(())
}

/// `serde(with)` for durations written as humantime strings ("30s", "1m 30s").
mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration '{s}': {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Most tests are about other settings: serve plaintext, explicitly.
    fn plain() -> Overrides {
        Overrides {
            plaintext: true,
            ..Overrides::default()
        }
    }

    #[test]
    fn transport_security_must_be_chosen_explicitly() {
        let msg = Config::load(None, Overrides::default())
            .expect_err("neither TLS nor plaintext")
            .to_string();
        assert!(
            msg.contains("no transport security: set [grpc.tls]"),
            "{msg}"
        );
        assert!(msg.contains("supctl certs init"), "{msg}");
        let f = file("[grpc]\nplaintext = true\n");
        assert!(Config::load(Some(f.path()), Overrides::default()).is_ok());
        let f = file("[grpc.tls]\nca = \"/pki/ca.pem\"\ncert = \"/pki/supd.pem\"\nkey = \"/pki/supd-key.pem\"\n");
        let config = Config::load(Some(f.path()), Overrides::default()).expect("TLS");
        let tls = config.grpc.tls.expect("tls");
        assert_eq!(tls.cert, PathBuf::from("/pki/supd.pem"));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("both")
            .to_string();
        assert!(msg.contains("choose one"), "{msg}");
        let f = file("[grpc.tls]\nca = \"/pki/ca.pem\"\ncert = \"/pki/supd.pem\"\n");
        let msg = Config::load(Some(f.path()), Overrides::default())
            .expect_err("no key")
            .to_string();
        assert!(msg.contains("key"), "{msg}");
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let f = file("data_dir = \"/tmp/x\"\n[nodes]\nunreachable_afterr = \"5s\"\n");
        let err = Config::load(Some(f.path()), plain()).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("unreachable_afterr"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let f = file("grpc_adr = \"127.0.0.1:1\"\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("grpc_adr"), "{msg}");
    }

    #[test]
    fn slurm_mode_is_off_unless_set_and_only_takes_the_contract_names() {
        let config = Config::load(None, plain()).expect("defaults");
        assert_eq!(config.slurm.mode, SlurmMode::Off);
        let f = file("[slurm]\nmode = \"enforce\"\n");
        let config = Config::load(Some(f.path()), plain()).expect("enforce");
        assert_eq!(config.slurm.mode, SlurmMode::Enforce);
        let f = file("[slurm]\nmode = \"observe\"\n");
        let config = Config::load(Some(f.path()), plain()).expect("observe");
        assert_eq!(config.slurm.mode, SlurmMode::Observe);
        let f = file("[slurm]\nmode = \"on\"\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("unknown mode")
            .to_string();
        assert!(msg.contains("unknown variant `on`"), "{msg}");
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            "data_dir = \"/from/file\"\n[grpc]\naddr = \"127.0.0.1:1111\"\n[nodes]\nunreachable_after = \"45s\"\n",
        );
        let config = Config::load(
            Some(f.path()),
            Overrides {
                data_dir: Some("/from/flag".into()),
                grpc_addr: None,
                http_addr: Some("127.0.0.1:2222".parse().expect("addr")),
                log_format: Some(LogFormat::Json),
                plaintext: true,
                ..Overrides::default()
            },
        )
        .expect("load");
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.grpc.addr.port(), 1111);
        assert_eq!(config.http.addr.port(), 2222);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.nodes.unreachable_after, Duration::from_secs(45));
        assert_eq!(config.events.capacity, 10_000, "unset keys keep defaults");
    }

    #[test]
    fn bad_duration_and_inconsistent_values_are_rejected() {
        let f = file("[nodes]\nunreachable_after = \"soon\"\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("bad duration")
            .to_string();
        assert!(msg.contains("invalid duration 'soon'"), "{msg}");

        let f = file("[nodes]\nunreachable_after = \"5s\"\ntelemetry_interval = \"10s\"\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("interval above limit")
            .to_string();
        assert!(
            msg.contains("telemetry_interval must be at most half"),
            "{msg}"
        );
    }

    #[test]
    fn the_sample_config_spells_out_the_liveness_defaults() {
        let n = NodesConfig::default();
        // The bound: a silent node is unreachable within 5 s.
        assert!(n.unreachable_after <= Duration::from_secs(5));
        assert!(n.telemetry_interval * 2 <= n.unreachable_after);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sample = std::fs::read_to_string(root.join("deploy/supd.toml")).expect("sample config");
        for (key, value) in [
            ("unreachable_after", n.unreachable_after),
            ("rejoin_grace", n.rejoin_grace),
            ("telemetry_interval", n.telemetry_interval),
        ] {
            let line = format!("{key} = \"{}\"", humantime::format_duration(value));
            assert!(sample.contains(&line), "deploy/supd.toml lacks {line:?}");
        }
        let engine = Config::load(None, plain()).expect("defaults").engine();
        assert_eq!(engine.unreachable_after_ms, 4_000);
        assert_eq!(engine.rejoin_grace_ms, 30_000);
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/supd.toml");
        let config = Config::load(Some(&path), Overrides::default())
            .expect("deploy/supd.toml must be valid");
        assert!(
            config.grpc.tls.is_some() && !config.grpc.plaintext,
            "the shipped config uses TLS"
        );
    }

    #[test]
    fn straggler_windows_default_as_documented_and_are_checked() {
        let d = sup_core::detect::DetectConfig::default();
        assert_eq!(
            (d.straggler_sustain, d.straggler_sustain_corroborated),
            (10, 3)
        );
        // The sample config spells the defaults out, and the README names
        // both windows with them.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sample = std::fs::read_to_string(root.join("deploy/supd.toml")).expect("sample config");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        for line in [
            format!("straggler_sustain = {}", d.straggler_sustain),
            format!(
                "straggler_sustain_corroborated = {}",
                d.straggler_sustain_corroborated
            ),
        ] {
            assert!(sample.contains(&line), "deploy/supd.toml lacks {line:?}");
        }
        for text in [
            format!(
                "`detect.straggler_sustain` (default {})",
                d.straggler_sustain
            ),
            format!(
                "`detect.straggler_sustain_corroborated` (default {})",
                d.straggler_sustain_corroborated
            ),
        ] {
            assert!(readme.contains(&text), "README.md lacks {text:?}");
        }
        let f = file("[detect]\nstraggler_sustain = 20\nstraggler_sustain_corroborated = 4\n");
        let e = Config::load(Some(f.path()), plain())
            .expect("valid")
            .engine()
            .detect;
        assert_eq!(
            (e.straggler_sustain, e.straggler_sustain_corroborated),
            (20, 4)
        );
        for bad in [
            "[detect]\nstraggler_sustain_corroborated = 0\n",
            "[detect]\nstraggler_sustain = 5\nstraggler_sustain_corroborated = 6\n",
        ] {
            let f = file(bad);
            let msg = Config::load(Some(f.path()), plain())
                .expect_err(bad)
                .to_string();
            assert!(
                msg.contains("detect.straggler_sustain_corroborated")
                    && msg.contains("at most detect.straggler_sustain"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn replicas_are_named_and_their_lease_bounded() {
        let etcd = "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
        let f = file(&format!(
            "{etcd}leader_lease = \"7s\"\nreplica_id = \"supd-a\"\n"
        ));
        let config = Config::load(Some(f.path()), plain()).expect("valid");
        assert_eq!(config.store.leader_lease, Duration::from_secs(7));
        assert_eq!(config.store.replica_id, "supd-a");
        let flagged = Overrides {
            replica_id: Some("supd-b".into()),
            ..plain()
        };
        let config = Config::load(Some(f.path()), flagged).expect("valid");
        assert_eq!(config.store.replica_id, "supd-b", "--id wins over the file");
        for (extra, named) in [
            (
                "leader_lease = \"500ms\"\n",
                "store.leader_lease must be whole seconds between 1s and 60s",
            ),
            (
                "leader_lease = \"2m\"\n",
                "store.leader_lease must be whole seconds between 1s and 60s",
            ),
            (
                "leader_lease = \"2500ms\"\n",
                "store.leader_lease must be whole seconds",
            ),
            ("replica_id = \"has space\"\n", "store.replica_id (--id)"),
        ] {
            let f = file(&format!("{etcd}{extra}"));
            let msg = Config::load(Some(f.path()), plain())
                .expect_err(extra)
                .to_string();
            assert!(msg.contains(named), "{extra}: {msg}");
        }
    }

    #[test]
    fn the_store_is_sled_unless_etcd_is_chosen() {
        let config = Config::load(None, plain()).expect("defaults");
        assert_eq!(
            config.store,
            StoreConfig {
                replica_id: host_name(),
                ..StoreConfig::default()
            }
        );
        assert_eq!(config.store.leader_lease, Duration::from_secs(3));
        assert_eq!(config.store.backend, StoreBackend::Sled);
        assert_eq!(config.store.etcd_prefix, "/sup/");
        // Naming etcd's settings without choosing etcd is a mistake worth
        // hearing about: the operator believes the state is replicated.
        let f = file("[store]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("endpoints with sled")
            .to_string();
        assert!(msg.contains("store.backend is \"sled\""), "{msg}");
        let f = file("[store]\nbackend = \"zookeeper\"\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("unknown backend")
            .to_string();
        assert!(msg.contains("unknown variant `zookeeper`"), "{msg}");
        let f = file("[store]\nbackend = \"etcd\"\netcd_endpoint = []\n");
        let msg = Config::load(Some(f.path()), plain())
            .expect_err("unknown key")
            .to_string();
        assert!(msg.contains("etcd_endpoint"), "{msg}");
    }

    #[test]
    fn etcd_settings_come_from_the_file_or_the_flags_and_bad_ones_are_named() {
        let f = file(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379\", \"http://etcd-2:2379\"]\netcd_prefix = \"/prod-a/\"\n",
        );
        let config = Config::load(Some(f.path()), plain()).expect("valid");
        assert_eq!(config.store.backend, StoreBackend::Etcd);
        assert_eq!(
            config.store.etcd_endpoints,
            vec!["http://10.0.0.1:2379", "http://etcd-2:2379"]
        );
        assert_eq!(config.store.etcd_prefix, "/prod-a/");
        // Flags win over the file, and choose etcd on their own.
        let config = Config::load(
            None,
            Overrides {
                store_backend: Some(StoreBackend::Etcd),
                etcd_endpoints: Some(vec!["http://127.0.0.1:22379".into()]),
                ..plain()
            },
        )
        .expect("flags");
        assert_eq!(config.store.backend, StoreBackend::Etcd);
        assert_eq!(config.store.etcd_endpoints, vec!["http://127.0.0.1:22379"]);
        let config = Config::load(
            Some(f.path()),
            Overrides {
                store_backend: Some(StoreBackend::Sled),
                etcd_endpoints: Some(Vec::new()),
                ..plain()
            },
        );
        assert!(
            config.is_err(),
            "sled from a flag with the file's etcd_prefix still set is refused"
        );

        for (store, named) in [
            ("backend = \"etcd\"\n", "needs store.etcd_endpoints"),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"127.0.0.1:2379\"]\n",
                "'127.0.0.1:2379'",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"https://10.0.0.1:2379\"]\n",
                "'https://10.0.0.1:2379' is https:// but [store.etcd_tls] is not set",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"https://a:1\", \"http://b:1\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
                "mix https:// ('https://a:1') and http:// ('http://b:1')",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://a:1\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
                "[store.etcd_tls] is set but store.etcd_endpoints are http:// ('http://a:1')",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"https://a:1\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\n",
                "missing field `key`",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"https://a:1\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nserver_name = \"\"\n",
                "store.etcd_tls.server_name must be a host name",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1\"]\n",
                "'http://10.0.0.1' has no port",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379/v3\"]\n",
                "'http://10.0.0.1:2379/v3' has a path",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://a:1\", \"http://a:1\"]\n",
                "lists 'http://a:1' twice",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://a:1\"]\netcd_prefix = \"/sup\"\n",
                "store.etcd_prefix must end with '/' (got '/sup')",
            ),
            (
                "backend = \"etcd\"\netcd_endpoints = [\"http://a:1\"]\netcd_prefix = \"\"\n",
                "store.etcd_prefix must end with '/'",
            ),
        ] {
            let f = file(&format!("[store]\n{store}"));
            let msg = Config::load(Some(f.path()), plain())
                .expect_err(store)
                .to_string();
            assert!(msg.contains(named), "{store}: {msg}");
        }
    }

    #[test]
    fn detect_table_maps_to_the_engine_and_is_checked() {
        let f = file(
            "[detect]\nhang_factor = 2.0\nhang_floor = \"1s\"\nstraggler_policy = \"replace_at_checkpoint\"\n",
        );
        let config = Config::load(Some(f.path()), plain()).expect("valid");
        let d = config.engine().detect;
        assert_eq!((d.hang_factor, d.hang_floor_ms), (2.0, 1_000));
        assert_eq!(
            d.straggler_policy,
            sup_core::detect::StragglerPolicy::ReplaceAtCheckpoint
        );
        assert_eq!(d.hang_ceiling_ms, 600_000, "the rest keeps its defaults");
        for (bad, key) in [
            ("[detect]\nhang_floor = \"20m\"\n", "detect.hang_floor"),
            (
                "[detect]\nstraggler_threshold = 0.0\n",
                "detect.straggler_threshold",
            ),
            (
                "[detect]\nstraggler_window = 1\n",
                "detect.straggler_window",
            ),
            (
                "[detect]\nstraggler_policy = \"evict\"\n",
                "straggler_policy",
            ),
            ("[detect]\nhang_factr = 2.0\n", "hang_factr"),
        ] {
            let f = file(bad);
            let msg = Config::load(Some(f.path()), plain())
                .expect_err(bad)
                .to_string();
            assert!(msg.contains(key), "{bad}: {msg}");
        }
    }
}
