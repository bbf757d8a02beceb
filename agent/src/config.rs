//! The agent's configuration: command-line flags, an optional TOML file, and
//! the validated [`Config`] the rest of the crate runs on.
//!
//! Precedence, highest first: flag, environment (only where a flag names
//! one), file, built-in default.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Deserializer};

use sup_proto::transport::ClientTlsFiles;

use crate::error_text::error_chain;
use crate::health::state::DEFAULT_RESET_SETTLE;
use crate::health::Rules;
use crate::probe::kernel_log::KernelLogSpec;
use crate::probe::GpuBackend;

pub const DEFAULT_SUPERVISOR: &str = "http://127.0.0.1:7070";
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RECONNECT_MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const DEFAULT_RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// With several supd URLs (replicas) a failover leaves every agent dialling
/// two refusing replicas for the few seconds of the election: with a 10 s
/// ceiling the last of 2,048 agents came back 8-13 s after the leader was
/// killed, with 1 s within 3.3-4.9 s (BENCHMARKS.md §4). A single supd keeps
/// the longer ceiling, which spreads a restart storm of 16,384 agents.
pub const DEFAULT_REPLICAS_RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sup-agent";
/// Permissive built in, so that an agent upgraded under an existing config
/// (or started by hand for a trial) keeps running the jobs it ran; the
/// shipped deploy/sup-agent.toml turns it off, and a root agent that allows
/// it says so at startup.
pub const DEFAULT_ALLOW_ROOT_RANKS: bool = true;

/// Command-line flags. Every field is optional so that "not given" can be
/// told apart from "given the default", which the file merge needs.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "sup-agent",
    version,
    about = "sup's node agent: GPU probe and telemetry stream to supd"
)]
pub struct Cli {
    /// supd's gRPC endpoint; several, comma-separated, for supd replicas:
    /// the agent registers with whichever answers (the leader)
    /// [default: http://127.0.0.1:7070]
    #[arg(long, env = "SUP_SUPERVISOR", value_name = "URL[,URL...]")]
    pub supervisor: Option<String>,

    /// This node's id in the cluster [default: the hostname]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Address other nodes use to reach this one [default: the hostname]
    #[arg(long, value_name = "HOST")]
    pub address: Option<String>,

    /// GPU source: `nvml`, or `sim:N` for N simulated GPUs [default: nvml]
    #[arg(long, value_name = "nvml|sim:N")]
    pub gpu_backend: Option<GpuBackend>,

    /// Load this libnvidia-ml instead of the system one
    #[arg(long, value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,

    /// How often to sample the GPUs and report, e.g. `5s`, `500ms` [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub telemetry_interval: Option<Duration>,

    /// Shortest wait before reconnecting to supd [default: 200ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reconnect_min_backoff: Option<Duration>,

    /// Longest wait before reconnecting to supd [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reconnect_max_backoff: Option<Duration>,

    /// Log line format [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Where the agent keeps rank logs (`jobs/<job>/gen-<G>/rank-<R>.log`)
    /// [default: /var/lib/sup-agent]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Rank log directories (generations) kept per job, the running one
    /// included; older ones are deleted when a generation starts [default: 5]
    #[arg(long, value_name = "N")]
    pub log_generations: Option<u32>,

    /// A running rank's log longer than this is moved to `rank-<R>.log.1`
    /// and started afresh; 0: no cap [default: 268435456 (256 MiB)]
    #[arg(long, value_name = "BYTES")]
    pub rank_log_max_bytes: Option<u64>,

    /// Accept fault drills from supd (game days); without it they are refused
    #[arg(long)]
    pub allow_drills: bool,

    /// On shutdown leave the training ranks running for the next agent to
    /// re-adopt (with systemd's KillMode=process) instead of stopping them
    #[arg(long)]
    pub leave_ranks_on_exit: bool,

    /// Start the ranks of jobs that set no `user` (or set root) as root;
    /// `--allow-root-ranks=false` refuses them with a launch error
    /// [default: true, deploy/sup-agent.toml sets false]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub allow_root_ranks: Option<bool>,

    /// Also read Xids from the kernel log: `kmsg`, `file:PATH` or
    /// `cmd:COMMAND ARGS...` [default: off]
    #[arg(long, value_name = "SPEC")]
    pub kernel_log: Option<KernelLogSpec>,

    /// GPU health rules (TOML) replacing the built-in table (deploy/xid-rules.toml)
    #[arg(long, value_name = "FILE")]
    pub xid_rules: Option<PathBuf>,

    /// GPUs this node must have; fewer at startup fails the missing ones
    /// (and so cordons the node) [default: whatever is found]
    #[arg(long, value_name = "N")]
    pub expected_gpus: Option<u32>,

    /// How long a GPU whose failure latched (Xid 79, 48, ...) must answer
    /// again with recovery action NONE, with no new such Xid, before it is
    /// reported ok again after a reset [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reset_settle: Option<Duration>,

    /// Shell command run (with /bin/sh -c) before an uncordon returns this
    /// node to service, e.g. "dcgmi diag -r 2"; exit 0 passes [default: none]
    #[arg(long, value_name = "COMMAND")]
    pub validation_command: Option<String>,

    /// How long the validation command may run [default: 15m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub validation_timeout: Option<Duration>,

    /// This node's name in Slurm (its NodeName), when it is not the node
    /// id [default: the node id]
    #[arg(long, value_name = "NAME")]
    pub slurm_node_name: Option<String>,

    /// Cluster CA certificate (PEM); with --tls-cert and --tls-key, for an
    /// https:// supervisor
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// This node's certificate (PEM), from `supctl certs issue node ID`
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Name to check supd's certificate against [default: the URL's host]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// TOML file with any of the settings above (keys in snake_case)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The TOML file. Unknown keys are refused so that a typo is an error at
/// startup instead of a setting silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `"URL"`, `"URL,URL"` or `["URL", "URL"]`: each entry as written,
    /// split and checked by [`Supervisors::parse`].
    #[serde(default, deserialize_with = "de_supervisor")]
    pub supervisor: Option<Vec<String>>,
    pub node_id: Option<String>,
    pub address: Option<String>,
    #[serde(default, deserialize_with = "de_from_str")]
    pub gpu_backend: Option<GpuBackend>,
    pub nvml_lib: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_duration")]
    pub telemetry_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub reconnect_min_backoff: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub reconnect_max_backoff: Option<Duration>,
    pub log_format: Option<LogFormat>,
    pub state_dir: Option<PathBuf>,
    pub log_generations: Option<u32>,
    pub rank_log_max_bytes: Option<u64>,
    pub allow_drills: Option<bool>,
    pub leave_ranks_on_exit: Option<bool>,
    pub allow_root_ranks: Option<bool>,
    #[serde(default, deserialize_with = "de_from_str")]
    pub kernel_log: Option<KernelLogSpec>,
    pub xid_rules: Option<PathBuf>,
    pub expected_gpus: Option<u32>,
    #[serde(default, deserialize_with = "de_duration")]
    pub reset_settle: Option<Duration>,
    pub validation_command: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    pub validation_timeout: Option<Duration>,
    pub slurm_node_name: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// supd's gRPC endpoints (one per replica): all `https://` (mutual
    /// TLS, `tls` is set) or all `http://` (plaintext, `tls` is `None`).
    pub supervisor: Supervisors,
    pub tls: Option<ClientTlsFiles>,
    pub node_id: String,
    pub address: String,
    /// The machine's hostname as reported to supd; the node id when the
    /// hostname cannot be read.
    pub hostname: String,
    pub gpu_backend: GpuBackend,
    pub nvml_lib: Option<PathBuf>,
    pub telemetry_interval: Duration,
    pub reconnect_min_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    pub log_format: LogFormat,
    /// Created when the first rank starts, not at startup: a node that
    /// never runs a job needs no writable state.
    pub state_dir: PathBuf,
    /// How much rank output is kept under `state_dir`.
    pub log_retention: crate::launcher::logs::Retention,
    /// Whether drills from supd are acted on.
    pub allow_drills: bool,
    /// Whether ranks outlive the agent (re-adopted by the next one).
    pub leave_ranks_on_exit: bool,
    /// Whether a job's ranks may run as root (the job names no `user`, or
    /// names root, on an agent running as root).
    pub allow_root_ranks: bool,
    /// Second Xid source besides NVML; `None`: off.
    pub kernel_log: Option<KernelLogSpec>,
    /// GPU health rules file; `None`: the built-in table.
    pub xid_rules: Option<PathBuf>,
    /// GPUs this node must have; `None`: whatever is found.
    pub expected_gpus: Option<u32>,
    /// How long a reset GPU must look healthy before its latched failure
    /// clears.
    pub reset_settle: Duration,
    /// Run before an uncordon returns the node to service; `None`: none.
    pub validation: Option<crate::validation::Validation>,
    /// The node's name in Slurm when it differs from the node id.
    pub slurm_node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file named by `--config` (if any) and merges it under the
    /// flags.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let config = Config::merge(cli, file, read_hostname())?;
        // Checked here so that a bad rule table stops the agent at startup
        // with a configuration error, like any other bad setting.
        if let Some(path) = &config.xid_rules {
            Rules::load(Some(path)).map_err(|e| ConfigError::Invalid(error_chain(&e)))?;
        }
        Ok(config)
    }

    /// The pure part of [`Config::load`]: the hostname is an argument so
    /// that tests do not depend on the machine they run on.
    pub fn merge(
        cli: Cli,
        file: FileConfig,
        hostname: Option<String>,
    ) -> Result<Config, ConfigError> {
        let supervisor = match (cli.supervisor, file.supervisor) {
            (Some(flag), _) => Supervisors::parse([flag])?,
            (None, Some(entries)) => Supervisors::parse(entries)?,
            (None, None) => Supervisors::parse([DEFAULT_SUPERVISOR])?,
        };

        let tls = tls_files(
            &supervisor,
            cli.tls_ca.or(file.tls_ca),
            cli.tls_cert.or(file.tls_cert),
            cli.tls_key.or(file.tls_key),
            cli.tls_server_name.or(file.tls_server_name),
        )?;

        let node_id = match cli.node_id.or(file.node_id) {
            Some(id) => id,
            None => hostname.clone().ok_or_else(|| {
                ConfigError::Invalid(
                    "cannot read this machine's hostname to use as node id; pass --node-id".into(),
                )
            })?,
        };
        if node_id.trim().is_empty() {
            return Err(ConfigError::Invalid("node id must not be empty".into()));
        }
        if node_id.trim() != node_id || node_id.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(format!(
                "node id {node_id:?} must not contain leading/trailing whitespace or control characters"
            )));
        }

        let address = match cli.address.or(file.address) {
            Some(address) => address,
            None => hostname.clone().ok_or_else(|| {
                ConfigError::Invalid(
                    "cannot read this machine's hostname to use as address; pass --address".into(),
                )
            })?,
        };
        if address.trim().is_empty() {
            return Err(ConfigError::Invalid("address must not be empty".into()));
        }

        let telemetry_interval = cli
            .telemetry_interval
            .or(file.telemetry_interval)
            .unwrap_or(DEFAULT_TELEMETRY_INTERVAL);
        if telemetry_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "telemetry interval must be greater than zero".into(),
            ));
        }

        let reconnect_min_backoff = cli
            .reconnect_min_backoff
            .or(file.reconnect_min_backoff)
            .unwrap_or(DEFAULT_RECONNECT_MIN_BACKOFF);
        let reconnect_max_backoff = cli
            .reconnect_max_backoff
            .or(file.reconnect_max_backoff)
            .unwrap_or(if supervisor.urls().len() > 1 {
                DEFAULT_REPLICAS_RECONNECT_MAX_BACKOFF
            } else {
                DEFAULT_RECONNECT_MAX_BACKOFF
            });
        // A zero minimum would let a flapping supd make us spin.
        if reconnect_min_backoff.is_zero() {
            return Err(ConfigError::Invalid(
                "reconnect_min_backoff must be greater than zero".into(),
            ));
        }
        if reconnect_max_backoff < reconnect_min_backoff {
            return Err(ConfigError::Invalid(format!(
                "reconnect_max_backoff ({}) must not be less than reconnect_min_backoff ({})",
                humantime::format_duration(reconnect_max_backoff),
                humantime::format_duration(reconnect_min_backoff),
            )));
        }

        let expected_gpus = cli.expected_gpus.or(file.expected_gpus);
        if expected_gpus == Some(0) {
            return Err(ConfigError::Invalid(
                "expected_gpus must be at least 1 (leave it unset to accept any count)".into(),
            ));
        }

        let validation = validation_setting(
            cli.validation_command.or(file.validation_command),
            cli.validation_timeout.or(file.validation_timeout),
        )?;
        let reset_settle = cli
            .reset_settle
            .or(file.reset_settle)
            .unwrap_or(DEFAULT_RESET_SETTLE);
        // Zero would clear a failure on the first healthy-looking sample,
        // before the driver has had a chance to report a relapse.
        if reset_settle.is_zero() {
            return Err(ConfigError::Invalid(
                "reset_settle must be greater than zero".into(),
            ));
        }

        let state_dir = cli
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("state_dir must not be empty".into()));
        }
        let log_retention = log_retention(
            cli.log_generations.or(file.log_generations),
            cli.rank_log_max_bytes.or(file.rank_log_max_bytes),
        )?;

        let slurm_node_name = cli
            .slurm_node_name
            .or(file.slurm_node_name)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        Ok(Config {
            slurm_node_name,
            supervisor,
            tls,
            hostname: hostname.unwrap_or_else(|| node_id.clone()),
            node_id,
            address,
            gpu_backend: cli
                .gpu_backend
                .or(file.gpu_backend)
                .unwrap_or(GpuBackend::Nvml),
            nvml_lib: cli.nvml_lib.or(file.nvml_lib),
            telemetry_interval,
            reconnect_min_backoff,
            reconnect_max_backoff,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            state_dir,
            log_retention,
            allow_drills: cli.allow_drills || file.allow_drills.unwrap_or(false),
            leave_ranks_on_exit: cli.leave_ranks_on_exit
                || file.leave_ranks_on_exit.unwrap_or(false),
            allow_root_ranks: cli
                .allow_root_ranks
                .or(file.allow_root_ranks)
                .unwrap_or(DEFAULT_ALLOW_ROOT_RANKS),
            kernel_log: cli.kernel_log.or(file.kernel_log),
            xid_rules: cli.xid_rules.or(file.xid_rules),
            expected_gpus,
            reset_settle,
            validation,
        })
    }
}

/// The rank log limits, checked.
fn log_retention(
    generations: Option<u32>,
    rank_log_max_bytes: Option<u64>,
) -> Result<crate::launcher::logs::Retention, ConfigError> {
    use crate::launcher::logs::{Retention, DEFAULT_LOG_GENERATIONS, DEFAULT_RANK_LOG_MAX_BYTES};
    let generations = generations.unwrap_or(DEFAULT_LOG_GENERATIONS);
    // 0 would delete the logs of the generation being started.
    if generations == 0 {
        return Err(ConfigError::Invalid(
            "log_generations must be at least 1 (the running generation's logs are always kept)"
                .into(),
        ));
    }
    Ok(Retention {
        generations,
        rank_log_max_bytes: rank_log_max_bytes.unwrap_or(DEFAULT_RANK_LOG_MAX_BYTES),
        ..Retention::default()
    })
}

/// The validation command and its timeout, checked.
fn validation_setting(
    command: Option<String>,
    timeout: Option<Duration>,
) -> Result<Option<crate::validation::Validation>, ConfigError> {
    let timeout = timeout.unwrap_or(DEFAULT_VALIDATION_TIMEOUT);
    if timeout.is_zero() {
        return Err(ConfigError::Invalid(
            "validation_timeout must be greater than zero".into(),
        ));
    }
    match command.map(|c| c.trim().to_owned()) {
        None => Ok(None),
        Some(c) if c.is_empty() => Err(ConfigError::Invalid(
            "validation_command is empty; leave it out for no validation".into(),
        )),
        Some(c) => Ok(Some(crate::validation::Validation {
            command: c.into(),
            timeout,
        })),
    }
}

/// dcgmi diag -r 2 takes a few minutes on 8 GPUs; -r 3 up to half an hour.
const DEFAULT_VALIDATION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        // toml's message already names the offending key and shows the line.
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// supd's gRPC URLs, one per replica: never empty, normalised, no two
/// alike, all `https://` or all `http://`. Only the leader among supd
/// replicas accepts connections, so the agent tries them in turn (see
/// [`crate::rotation`]); one URL is the single-supd case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisors(Vec<String>);

impl Supervisors {
    /// Each entry is a URL or several separated by commas (the flag, the
    /// environment variable, and the file's string form); the file's list
    /// form gives one entry per element. Whitespace around a URL is ignored.
    pub fn parse<I, S>(entries: I) -> Result<Supervisors, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut urls: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.as_ref();
            if entry.trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "supervisor is empty: give at least one URL".into(),
                ));
            }
            for raw in entry.split(',') {
                if raw.trim().is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "supervisor {entry:?} has an empty URL: separate URLs with single commas"
                    )));
                }
                let url = normalize_supervisor(raw)?;
                // `http://supd:7070/` and `http://supd:7070` dial the same
                // supd: listing it twice would only make rounds longer.
                if let Some(same) = urls
                    .iter()
                    .find(|u| u.trim_end_matches('/') == url.trim_end_matches('/'))
                {
                    return Err(ConfigError::Invalid(format!(
                        "supervisor URL {url} is listed twice (as {same} too)"
                    )));
                }
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return Err(ConfigError::Invalid(
                "no supervisor URL given: set at least one".into(),
            ));
        }
        // One set of TLS settings serves every URL, so a plaintext URL
        // among TLS ones would be a silent downgrade (or a certain failure).
        let (tls, plain): (Vec<&String>, Vec<&String>) =
            urls.iter().partition(|u| u.starts_with("https://"));
        if !tls.is_empty() && !plain.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "supervisor URLs mix https:// ({}) and http:// ({}): every supd replica is \
                 reached the same way, use https:// (mutual TLS) for all",
                join(&tls),
                join(&plain)
            )));
        }
        Ok(Supervisors(urls))
    }

    /// The URLs in the order given: the order the agent tries them in.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// Whether the link is mutual TLS (every URL is `https://`).
    pub fn is_tls(&self) -> bool {
        self.0.iter().all(|u| u.starts_with("https://"))
    }

    /// "supervisor URL is" or "supervisor URLs URL, URL are": for messages.
    fn named(&self) -> String {
        match self.0.as_slice() {
            [one] => format!("supervisor {one} is"),
            many => format!("supervisor URLs {} are", many.join(", ")),
        }
    }
}

/// The comma-separated form, as the flag takes it.
impl std::fmt::Display for Supervisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

fn join(urls: &[&String]) -> String {
    urls.iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The TLS files, which an https:// supervisor needs (all three) and an
/// http:// one must not have: a half-configured TLS setup is an error, never
/// a silent fall back to plaintext. They serve every supd replica.
fn tls_files(
    supervisor: &Supervisors,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<Option<ClientTlsFiles>, ConfigError> {
    match (supervisor.is_tls(), ca, cert, key) {
        (true, Some(ca), Some(cert), Some(key)) => Ok(Some(ClientTlsFiles {
            ca,
            cert,
            key,
            server_name,
        })),
        (true, ca, cert, key) => {
            let missing: Vec<&str> = [
                ("tls_ca", ca.is_none()),
                ("tls_cert", cert.is_none()),
                ("tls_key", key.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            Err(ConfigError::Invalid(format!(
                "{} https:// but {} not set (the cluster CA, this node's certificate and its key, from `supctl certs`)",
                supervisor.named(),
                missing.join(", ")
            )))
        }
        (false, None, None, None) => {
            if server_name.is_some() {
                return Err(ConfigError::Invalid(
                    "tls_server_name is set but the supervisor URL is http:// (plaintext)".into(),
                ));
            }
            Ok(None)
        }
        (false, ..) => Err(ConfigError::Invalid(format!(
            "TLS files are set but the {} http:// (plaintext); use https://",
            supervisor.named()
        ))),
    }
}

/// Accepts `host:port` as shorthand for `http://host:port`.
fn normalize_supervisor(raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim();
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(ConfigError::Invalid(format!(
            "supervisor URL {raw:?}: use https:// (mutual TLS) or http:// (plaintext)"
        )));
    }
    match url.parse::<tonic::transport::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(url),
        Ok(_) => Err(ConfigError::Invalid(format!(
            "supervisor URL {raw:?} has no host"
        ))),
        Err(e) => Err(ConfigError::Invalid(format!(
            "supervisor URL {raw:?} is not a valid URL: {e}"
        ))),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. 5s, 500ms, 1m"))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The file's `supervisor`: a string (one URL, or several separated by
/// commas) or an array of strings.
fn de_supervisor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Urls;
    impl<'de> serde::de::Visitor<'de> for Urls {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL, URLs separated by commas, or an array of URLs")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }
    d.deserialize_any(Urls).map(Some)
}

fn de_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Reads the kernel's hostname directly: `unsafe` is denied workspace-wide,
/// so libc's gethostname is out, and this is what it returns on Linux.
fn read_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["sup-agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("flags parse")
    }

    fn host() -> Option<String> {
        Some("gpu-node-7".to_owned())
    }

    #[test]
    fn replicas_get_a_short_reconnect_ceiling_unless_one_is_set() {
        let two = "http://10.0.0.1:7070,http://10.0.0.2:7070";
        let config = Config::merge(cli(&["--supervisor", two]), FileConfig::default(), host())
            .expect("valid");
        assert_eq!(config.reconnect_max_backoff, Duration::from_secs(1));
        let config = Config::merge(
            cli(&["--supervisor", two, "--reconnect-max-backoff", "5s"]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert_eq!(config.reconnect_max_backoff, Duration::from_secs(5));
    }

    #[test]
    fn defaults_come_from_the_hostname() {
        let config = Config::merge(
            cli(&["--supervisor", "http://10.0.0.1:7070"]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert_eq!(config.node_id, "gpu-node-7");
        assert_eq!(config.address, "gpu-node-7");
        assert_eq!(config.hostname, "gpu-node-7");
        assert_eq!(config.supervisor.urls(), ["http://10.0.0.1:7070"]);
        assert_eq!(config.gpu_backend, GpuBackend::Nvml);
        assert_eq!(config.telemetry_interval, Duration::from_secs(5));
        assert_eq!(config.reconnect_min_backoff, Duration::from_millis(200));
        assert_eq!(config.reconnect_max_backoff, Duration::from_secs(10));
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.nvml_lib, None);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/sup-agent"));
        assert_eq!(config.log_retention.generations, 5);
        assert_eq!(config.log_retention.rank_log_max_bytes, 256 * 1024 * 1024);
        assert!(!config.allow_drills, "drills are off unless asked for");
        assert!(
            config.allow_root_ranks,
            "built in: permissive, with a warning"
        );
        assert_eq!(config.kernel_log, None);
        assert_eq!(config.xid_rules, None);
        assert_eq!(config.reset_settle, Duration::from_secs(30));
    }

    #[test]
    fn no_hostname_and_no_node_id_is_an_error_that_says_what_to_pass() {
        let err = Config::merge(cli(&[]), FileConfig::default(), None).expect_err("must fail");
        assert!(err.to_string().contains("--node-id"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_rejected_and_named() {
        let err = FileConfig::parse("node_id = \"a\"\ntelemetry_intervall = \"5s\"\n")
            .expect_err("unknown key must be refused");
        assert!(err.contains("telemetry_intervall"), "{err}");
    }

    #[test]
    fn mistyped_value_is_rejected_and_the_key_shown() {
        let err = FileConfig::parse("telemetry_interval = 5\n").expect_err("must fail");
        assert!(err.contains("telemetry_interval"), "{err}");
        let err = FileConfig::parse("telemetry_interval = \"5 parsecs\"\n").expect_err("must fail");
        assert!(err.contains("telemetry_interval"), "{err}");
        assert!(err.contains("invalid duration"), "{err}");
        let err = FileConfig::parse("gpu_backend = \"sim:0\"\n").expect_err("must fail");
        assert!(err.contains("gpu_backend"), "{err}");
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sup-agent.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/sup-agent.toml");
        FileConfig::parse(&text).expect("deploy/sup-agent.toml must be valid");
    }

    #[test]
    fn the_shipped_config_reads_kmsg_and_bounds_rank_logs() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sup-agent.toml");
        let text = std::fs::read_to_string(&shipped).expect("deploy/sup-agent.toml");
        let file = FileConfig::parse(&text).expect("valid");
        assert_eq!(
            file.kernel_log,
            Some(KernelLogSpec::Kmsg(PathBuf::from("/dev/kmsg")))
        );
        assert_eq!(file.log_generations, Some(5));
        assert_eq!(file.rank_log_max_bytes, Some(256 << 20));
        // Built in (no file), the kernel log stays off.
        let config = Config::merge(
            cli(&["--supervisor", "http://supd:7070"]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert_eq!(config.kernel_log, None);
    }

    #[test]
    fn every_documented_file_key_parses() {
        let file = FileConfig::parse(
            r#"
            supervisor = "http://supd:7070"
            node_id = "n1"
            address = "10.1.2.3"
            gpu_backend = "sim:4"
            nvml_lib = "/opt/nvidia/libnvidia-ml.so.1"
            telemetry_interval = "2s"
            reconnect_min_backoff = "100ms"
            reconnect_max_backoff = "30s"
            log_format = "json"
            state_dir = "/srv/sup-agent"
            log_generations = 3
            rank_log_max_bytes = 1048576
            allow_drills = true
            allow_root_ranks = false
            kernel_log = "cmd:journalctl -k -f -n 0 -o cat"
            xid_rules = "/etc/sup/xid-rules.toml"
            reset_settle = "2m"
            "#,
        )
        .expect("valid file");
        let config =
            Config::merge(cli(&["--supervisor", "http://supd:7070"]), file, host()).expect("valid");
        assert_eq!(
            config,
            Config {
                supervisor: Supervisors::parse(["http://supd:7070"]).expect("valid"),
                tls: None,
                node_id: "n1".into(),
                address: "10.1.2.3".into(),
                hostname: "gpu-node-7".into(),
                gpu_backend: GpuBackend::Sim { gpus: 4 },
                nvml_lib: Some(PathBuf::from("/opt/nvidia/libnvidia-ml.so.1")),
                telemetry_interval: Duration::from_secs(2),
                reconnect_min_backoff: Duration::from_millis(100),
                reconnect_max_backoff: Duration::from_secs(30),
                log_format: LogFormat::Json,
                state_dir: PathBuf::from("/srv/sup-agent"),
                log_retention: crate::launcher::logs::Retention {
                    generations: 3,
                    rank_log_max_bytes: 1 << 20,
                    check_interval: crate::launcher::logs::SIZE_CHECK_INTERVAL,
                },
                allow_drills: true,
                leave_ranks_on_exit: false,
                allow_root_ranks: false,
                kernel_log: Some(KernelLogSpec::Command(
                    ["journalctl", "-k", "-f", "-n", "0", "-o", "cat"]
                        .map(String::from)
                        .to_vec()
                )),
                xid_rules: Some(PathBuf::from("/etc/sup/xid-rules.toml")),
                expected_gpus: None,
                reset_settle: Duration::from_secs(120),
                validation: None,
                slurm_node_name: None,
            }
        );
    }

    #[test]
    fn log_limits_come_from_flag_or_file_and_keep_at_least_one_generation() {
        let merged = |args: &[&str], file: &str| {
            let mut all = vec!["--supervisor", "http://supd:7070"];
            all.extend_from_slice(args);
            Config::merge(cli(&all), FileConfig::parse(file).expect("file"), host())
        };
        let r = merged(&[], "log_generations = 2\nrank_log_max_bytes = 0\n")
            .expect("valid")
            .log_retention;
        assert_eq!((r.generations, r.rank_log_max_bytes), (2, 0));
        let r = merged(
            &["--log-generations", "9", "--rank-log-max-bytes", "4096"],
            "log_generations = 2\nrank_log_max_bytes = 0\n",
        )
        .expect("valid")
        .log_retention;
        assert_eq!((r.generations, r.rank_log_max_bytes), (9, 4096));
        let err = merged(&[], "log_generations = 0\n").expect_err("zero");
        assert!(
            err.to_string()
                .contains("log_generations must be at least 1"),
            "{err}"
        );
        let err = merged(&["--log-generations", "0"], "").expect_err("zero");
        assert!(
            err.to_string()
                .contains("log_generations must be at least 1"),
            "{err}"
        );
        let err = FileConfig::parse("rank_log_max_bytes = \"256MiB\"\n").expect_err("a number");
        assert!(err.contains("rank_log_max_bytes"), "{err}");
    }

    #[test]
    fn the_validation_command_and_its_timeout_are_checked() {
        let merged = |args: &[&str], file: &str| {
            let mut all = vec!["--supervisor", "http://supd:7070"];
            all.extend_from_slice(args);
            Config::merge(cli(&all), FileConfig::parse(file).expect("file"), host())
        };
        assert_eq!(merged(&[], "").expect("valid").validation, None);
        let v = merged(&[], "validation_command = \"dcgmi diag -r 2\"")
            .expect("valid")
            .validation
            .expect("set");
        assert_eq!(
            (v.command.as_ref(), v.timeout),
            ("dcgmi diag -r 2", DEFAULT_VALIDATION_TIMEOUT)
        );
        let v = merged(
            &[
                "--validation-command",
                "nccl-test",
                "--validation-timeout",
                "2m",
            ],
            "",
        )
        .expect("valid")
        .validation
        .expect("set");
        assert_eq!(v.timeout, Duration::from_secs(120));
        let err = merged(&[], "validation_command = \"  \"").expect_err("empty");
        assert!(
            err.to_string().contains("validation_command is empty"),
            "{err}"
        );
        let err = merged(&["--validation-timeout", "0s"], "").expect_err("zero");
        assert!(
            err.to_string()
                .contains("validation_timeout must be greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn allow_root_ranks_comes_from_the_flag_then_the_file() {
        let merged = |args: &[&str], file: &str| {
            let mut all = vec!["--supervisor", "http://supd:7070"];
            all.extend_from_slice(args);
            Config::merge(cli(&all), FileConfig::parse(file).expect("file"), host())
                .expect("valid")
                .allow_root_ranks
        };
        assert!(merged(&[], ""));
        assert!(!merged(&[], "allow_root_ranks = false"));
        assert!(merged(&["--allow-root-ranks"], "allow_root_ranks = false"));
        assert!(!merged(&["--allow-root-ranks=false"], ""));
        assert!(merged(
            &["--allow-root-ranks=true"],
            "allow_root_ranks = false"
        ));
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sup-agent.toml");
        let text = std::fs::read_to_string(&shipped).expect("deploy/sup-agent.toml");
        let file = FileConfig::parse(&text).expect("valid");
        assert_eq!(
            file.allow_root_ranks,
            Some(false),
            "the shipped config refuses root ranks"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\naddress = \"file-addr\"\ngpu_backend = \"sim:2\"\ntelemetry_interval = \"9s\"\nlog_format = \"json\"\n",
        )
        .expect("write config");
        let path_str = path.to_str().expect("utf-8 temp path");
        let args = cli(&[
            "--config",
            path_str,
            "--node-id",
            "from-flag",
            "--gpu-backend",
            "sim:8",
            "--telemetry-interval",
            "250ms",
        ]);
        let config = Config::load(args).expect("valid");
        assert_eq!(config.node_id, "from-flag");
        assert_eq!(config.gpu_backend, GpuBackend::Sim { gpus: 8 });
        assert_eq!(config.telemetry_interval, Duration::from_millis(250));
        // Not given as flags: the file's values stand.
        assert_eq!(config.address, "file-addr");
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn load_reports_a_missing_file_by_path() {
        let err =
            Config::load(cli(&["--config", "/nonexistent/agent.toml"])).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
    }

    #[test]
    fn gpu_health_flags() {
        let config = Config::merge(
            cli(&["--allow-drills", "--kernel-log", "kmsg"]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert!(config.allow_drills);
        assert_eq!(
            config.kernel_log,
            Some(KernelLogSpec::Kmsg(PathBuf::from("/dev/kmsg")))
        );
        let err = Cli::try_parse_from(["sup-agent", "--kernel-log", "journal"])
            .expect_err("bad spec refused");
        assert!(err.to_string().contains("kernel log source"), "{err}");
        let err = FileConfig::parse("kernel_log = \"nope\"\n").expect_err("bad spec in file");
        assert!(err.contains("kernel_log"), "{err}");

        // A rule table that does not parse stops the agent at startup.
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, "[checks]\ngpu_lots = \"fail\"\n").expect("write");
        let rules_str = rules.to_str().expect("utf-8 temp path");
        let err = Config::load(cli(&[
            "--node-id",
            "n",
            "--address",
            "a",
            "--xid-rules",
            rules_str,
        ]))
        .expect_err("bad rules refused");
        let text = err.to_string();
        assert!(
            text.contains("rules.toml") && text.contains("gpu_lots"),
            "{text}"
        );
    }

    #[test]
    fn sim_backend_flag_errors_reach_the_user() {
        let err = Cli::try_parse_from(["sup-agent", "--gpu-backend", "sim:0"])
            .expect_err("sim:0 refused");
        assert!(err.to_string().contains("at least one GPU"), "{err}");
    }

    #[test]
    fn empty_node_id_is_rejected() {
        for id in ["", "   ", " padded"] {
            let err = Config::merge(cli(&["--node-id", id]), FileConfig::default(), host())
                .expect_err("must fail");
            assert!(err.to_string().contains("node id"), "{id:?}: {err}");
        }
    }

    #[test]
    fn reset_settle_comes_from_flag_or_file_and_must_be_positive() {
        let file = FileConfig::parse("reset_settle = \"45s\"\n").expect("valid");
        let config = Config::merge(cli(&[]), file, host()).expect("valid");
        assert_eq!(config.reset_settle, Duration::from_secs(45));
        let file = FileConfig::parse("reset_settle = \"45s\"\n").expect("valid");
        let config = Config::merge(cli(&["--reset-settle", "500ms"]), file, host()).expect("valid");
        assert_eq!(config.reset_settle, Duration::from_millis(500));
        let err = Config::merge(
            cli(&["--reset-settle", "0s"]),
            FileConfig::default(),
            host(),
        )
        .expect_err("zero refused");
        assert!(err.to_string().contains("reset_settle"), "{err}");
        let err = FileConfig::parse("reset_settle = \"soon\"\n").expect_err("bad duration");
        assert!(err.contains("reset_settle"), "{err}");
    }

    #[test]
    fn zero_interval_is_rejected() {
        let err = Config::merge(
            cli(&["--telemetry-interval", "0s"]),
            FileConfig::default(),
            host(),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("telemetry interval"), "{err}");
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let err = Config::merge(
            cli(&[
                "--reconnect-min-backoff",
                "5s",
                "--reconnect-max-backoff",
                "1s",
            ]),
            FileConfig::default(),
            host(),
        )
        .expect_err("max < min");
        assert!(err.to_string().contains("reconnect_max_backoff"), "{err}");
    }

    #[test]
    fn supervisor_url_is_normalized_and_checked() {
        let ok = |s: &str| {
            Config::merge(cli(&["--supervisor", s]), FileConfig::default(), host())
                .map(|c| c.supervisor.to_string())
        };
        assert_eq!(ok("supd:7070").expect("bare host:port"), "http://supd:7070");
        assert_eq!(ok("http://[::1]:7070").expect("ipv6"), "http://[::1]:7070");
        let tls = ok("https://supd:7070").expect_err("https without files");
        assert!(
            tls.to_string()
                .contains("is https:// but tls_ca, tls_cert, tls_key not set"),
            "{tls}"
        );
        assert!(ok("ftp://supd:7070").is_err());
        assert!(ok("http://").is_err());
    }

    #[test]
    fn tls_needs_https_and_all_three_files() {
        let c = Config::merge(
            cli(&[
                "--supervisor",
                "https://supd:7070",
                "--tls-ca",
                "/pki/ca.pem",
                "--tls-cert",
                "/pki/node-n1.pem",
                "--tls-key",
                "/pki/node-n1-key.pem",
            ]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert_eq!(
            c.tls.map(|t| t.cert),
            Some(PathBuf::from("/pki/node-n1.pem"))
        );
        let half = Config::merge(
            cli(&[
                "--supervisor",
                "https://supd:7070",
                "--tls-ca",
                "/pki/ca.pem",
            ]),
            FileConfig::default(),
            host(),
        )
        .expect_err("no cert");
        assert!(
            half.to_string().contains("tls_cert, tls_key not set"),
            "{half}"
        );
        let downgrade = Config::merge(
            cli(&[
                "--supervisor",
                "http://supd:7070",
                "--tls-ca",
                "/pki/ca.pem",
            ]),
            FileConfig::default(),
            host(),
        )
        .expect_err("plaintext with TLS files");
        assert!(
            downgrade.to_string().contains("use https://"),
            "{downgrade}"
        );
    }

    #[test]
    fn several_supervisor_urls_come_from_the_flag_or_either_file_form() {
        let urls = |args: &[&str], file: &str| {
            Config::merge(cli(args), FileConfig::parse(file).expect("file"), host())
                .map(|c| c.supervisor.urls().to_vec())
        };
        let three = ["http://a:7070", "http://b:7070", "http://c:7070"];
        // Comma-separated, with spaces and shorthand, in the order given.
        assert_eq!(
            urls(&["--supervisor", "a:7070, http://b:7070 ,c:7070"], "").expect("valid"),
            three
        );
        // The file: a comma-separated string, or an array.
        assert_eq!(
            urls(&[], "supervisor = \"a:7070,b:7070,c:7070\"").expect("valid"),
            three
        );
        assert_eq!(
            urls(
                &[],
                "supervisor = [\"a:7070\", \"http://b:7070\", \"c:7070\"]"
            )
            .expect("valid"),
            three
        );
        // The flag replaces the file's list as a whole.
        assert_eq!(
            urls(
                &["--supervisor", "d:7070"],
                "supervisor = [\"a:7070\", \"b:7070\"]"
            )
            .expect("valid"),
            ["http://d:7070"]
        );
        // One URL is what it always was.
        assert_eq!(
            urls(&[], "supervisor = \"https://supd:7070\"\ntls_ca = \"/ca\"\ntls_cert = \"/c\"\ntls_key = \"/k\"")
                .expect("valid"),
            ["https://supd:7070"]
        );
        assert_eq!(urls(&[], "").expect("default"), [DEFAULT_SUPERVISOR]);
        // Shown comma-separated, as the flag takes them.
        let config = Config::merge(
            cli(&["--supervisor", "a:7070,b:7070"]),
            FileConfig::default(),
            host(),
        )
        .expect("valid");
        assert_eq!(config.supervisor.to_string(), "http://a:7070,http://b:7070");
    }

    #[test]
    fn supervisor_lists_are_refused_with_the_problem_named() {
        let refused = |args: &[&str], file: &str| {
            Config::merge(cli(args), FileConfig::parse(file).expect("file"), host())
                .expect_err("refused")
                .to_string()
        };
        let err = refused(&["--supervisor", "a:7070,,b:7070"], "");
        assert!(err.contains("has an empty URL"), "{err}");
        let err = refused(&["--supervisor", "a:7070,"], "");
        assert!(err.contains("has an empty URL"), "{err}");
        let err = refused(&["--supervisor", " "], "");
        assert!(err.contains("supervisor is empty"), "{err}");
        let err = refused(&[], "supervisor = []");
        assert!(err.contains("no supervisor URL given"), "{err}");
        let err = refused(&[], "supervisor = [\"a:7070\", \"\"]");
        assert!(err.contains("supervisor is empty"), "{err}");
        // The same supd twice, however it is written.
        let err = refused(&["--supervisor", "a:7070,http://a:7070/"], "");
        assert!(
            err.contains("http://a:7070/ is listed twice (as http://a:7070 too)"),
            "{err}"
        );
        let err = refused(&[], "supervisor = [\"http://a:7070\", \"http://a:7070\"]");
        assert!(err.contains("listed twice"), "{err}");
        // A bad URL among good ones is named.
        let err = refused(&["--supervisor", "a:7070,ftp://b:7070"], "");
        assert!(err.contains("\"ftp://b:7070\""), "{err}");
        // TLS and plaintext mixed: both sides named, whatever the files.
        let err = refused(
            &[
                "--supervisor",
                "https://a:7070,http://b:7070,https://c:7070",
                "--tls-ca",
                "/ca",
                "--tls-cert",
                "/c",
                "--tls-key",
                "/k",
            ],
            "",
        );
        assert!(
            err.contains(
                "mix https:// (https://a:7070, https://c:7070) and http:// (http://b:7070)"
            ),
            "{err}"
        );
        // Neither a number nor a table is a list of URLs.
        let err = FileConfig::parse("supervisor = 7070").expect_err("not a URL");
        assert!(
            err.contains("supervisor") && err.contains("array of URLs"),
            "{err}"
        );
        let err = FileConfig::parse("supervisor = [7070]").expect_err("not a URL");
        assert!(err.contains("supervisor"), "{err}");
    }

    #[test]
    fn tls_settings_serve_every_supervisor_url() {
        let tls = [
            "--tls-ca",
            "/pki/ca.pem",
            "--tls-cert",
            "/pki/node-n1.pem",
            "--tls-key",
            "/pki/node-n1-key.pem",
        ];
        let with = |urls: &str, extra: &[&str]| {
            let mut args = vec!["--supervisor", urls];
            args.extend_from_slice(extra);
            Config::merge(cli(&args), FileConfig::default(), host())
        };
        let c = with("https://supd-a:7070,https://supd-b:7070", &tls).expect("valid");
        assert!(c.supervisor.is_tls());
        assert_eq!(c.tls.map(|t| t.ca), Some(PathBuf::from("/pki/ca.pem")));
        let err = with("https://supd-a:7070,https://supd-b:7070", &tls[..2]).expect_err("no cert");
        assert!(
            err.to_string().contains(
                "supervisor URLs https://supd-a:7070, https://supd-b:7070 are https:// \
                 but tls_cert, tls_key not set"
            ),
            "{err}"
        );
        let err = with("http://supd-a:7070,http://supd-b:7070", &tls).expect_err("downgrade");
        assert!(
            err.to_string()
                .contains("supervisor URLs http://supd-a:7070, http://supd-b:7070 are http://"),
            "{err}"
        );
        let c = with("http://supd-a:7070,http://supd-b:7070", &[]).expect("plaintext");
        assert!(!c.supervisor.is_tls() && c.tls.is_none());
    }
}
