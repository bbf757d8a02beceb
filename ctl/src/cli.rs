//! Command-line arguments. Validation that needs no server happens here, so
//! bad input is a usage error (exit 2) before any connection is made.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sup_proto::v1;

use crate::error::EXIT_STATUS_HELP;

pub const DEFAULT_SUPERVISOR: &str = "http://127.0.0.1:7070";

const ABOUT: &str = "Operator CLI for sup, the fault-tolerance supervisor for GPU training";

// The exit-status section goes in `after_long_help` (from error.rs, where the
// codes are defined) so `--help` reads like a man page: options, then codes.
const LONG_ABOUT: &str = "\
Operator CLI for sup, the fault-tolerance supervisor for multi-node GPU training.

Talks to supd's control API over gRPC. Tables are for people; use `-o json`
in scripts (the JSON shapes are the same as supd's HTTP API).";

#[derive(Debug, Parser)]
#[command(name = "supctl", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXIT_STATUS_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// supd's gRPC address (`http://HOST:PORT`; a bare `HOST:PORT` means
    /// http). For supd replicas, their URLs separated by commas: each request
    /// goes to the first that answers (the leader)
    #[arg(
        long,
        global = true,
        env = "SUP_SUPERVISOR",
        value_name = "URL[,URL...]",
        default_value = DEFAULT_SUPERVISOR,
        value_parser = parse_supervisors
    )]
    pub supervisor: Supervisors,

    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Limit for connecting and for each request (e.g. 500ms, 10s, 1m)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Cluster CA certificate (PEM), for an https:// supervisor
    #[arg(long, global = true, env = "SUP_TLS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// This operator's certificate (PEM), from `supctl certs issue operator NAME`
    #[arg(long, global = true, env = "SUP_TLS_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// The key of --cert (PEM)
    #[arg(long, global = true, env = "SUP_TLS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Name to check supd's certificate against [default: the URL's host]
    #[arg(long, global = true, env = "SUP_TLS_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
}

/// `--watch`: redraw, like watch(1), until interrupted.
#[derive(Debug, Clone, Args)]
pub struct Watch {
    /// Redraw every INTERVAL until interrupted (`-w` alone: every 2s; not on
    /// a terminal: each frame after the last, plain text; with -o json: one
    /// JSON document per line each time)
    #[arg(short, long, value_name = "INTERVAL", num_args = 0..=1, require_equals = false, default_missing_value = "2s", value_parser = parse_timeout)]
    pub watch: Option<Duration>,
}

/// `supctl nodes`: which nodes, and how many of them.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeListArgs {
    /// Only nodes in these states (comma-separated or repeated): joining, ready, suspect,
    /// unreachable, cordoned, draining
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_node_state)]
    pub state: Vec<v1::NodeState>,
    /// Only the nodes that hold this job
    #[arg(long, value_name = "JOB", value_parser = non_empty)]
    pub job: Option<String>,
    /// Show at most N nodes [default: one page, 100]; 0: every node (as --all)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Go on from where the last listing stopped: the token it printed (with the same --state
    /// and --job)
    #[arg(long = "continue", value_name = "TOKEN", value_parser = non_empty)]
    pub continue_token: Option<String>,
    /// Every matching node, fetched from supd a page at a time
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
}

/// `supctl jobs`: which jobs, how many, from where.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct JobListArgs {
    /// Only jobs in these states (comma-separated or repeated): pending, starting, running,
    /// recovering, succeeded, failed, stopped
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_job_state)]
    pub state: Vec<String>,
    /// Show at most N jobs [default: one page, 100]; 0: every job (as --all)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Go on from where the last listing stopped: the token it printed (with the same --state)
    #[arg(long = "continue", value_name = "TOKEN", value_parser = non_empty)]
    pub continue_token: Option<String>,
    /// Every matching job, fetched from supd a page at a time
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables
    Table,
    /// JSON with the same shapes as supd's HTTP API
    Json,
}

/// `supctl node NODE` shows a node; `supctl node remove NODE` removes one.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// Node id
    #[arg(value_parser = non_empty, required = true)]
    pub id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node from the registry (an RMA'd or renamed host): only one that is cordoned or
    /// unreachable and holds no job (else exit status 5). If its agent comes back, it joins
    /// afresh
    Remove {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Who removes it [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster overview: what needs attention, then jobs and nodes
    Status {
        #[command(flatten)]
        watch: Watch,
    },
    /// List nodes by id, a page at a time (--limit, --continue, --all), filtered by --state and
    /// --job
    Nodes {
        #[command(flatten)]
        list: NodeListArgs,
        #[command(flatten)]
        watch: Watch,
    },
    /// Show one node with its GPUs (`node NODE`), or remove one (`node remove NODE`)
    Node(NodeArgs),
    /// Take a node out of service now: no new work is placed on it and its job restarts at once
    /// from its last checkpoint, counted as a failure (for planned maintenance use `drain`)
    Cordon {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Why; recorded with the cordon and shown to other operators
        #[arg(long, value_parser = non_empty)]
        reason: String,
        /// Who cordons [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Planned maintenance: the node takes no new work, its job keeps training until its next
    /// complete checkpoint, then moves off (spare or shrink, resuming from that checkpoint, not
    /// counted as a failure); then the node is cordoned with the reason
    Drain {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Why; recorded with the drain and the cordon that ends it
        #[arg(long, value_parser = non_empty)]
        reason: String,
        /// Move the job off anyway if no new checkpoint appeared by then
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_timeout)]
        deadline: Duration,
        /// Who drains [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Return a cordoned node to service (after its agent's validation, when it has one), or
    /// cancel a drain
    Uncordon {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Return it now, without running the agent's validation command
        #[arg(long)]
        skip_validation: bool,
        /// Why (recorded in the event log)
        #[arg(long, value_parser = non_empty)]
        reason: Option<String>,
        /// Who uncordons [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Show the event log, oldest first
    Events {
        /// Show only the newest N events (with --after: the oldest N after SEQ) [default: 1000]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Read forward: only events with a sequence number greater than SEQ, the oldest first (a
        /// cut answer says which SEQ continues it)
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Every event the supervisor keeps (or every one after --after), fetched a page at a
        /// time
        #[arg(long, conflicts_with = "limit")]
        all: bool,
        /// Keep printing new events as they are recorded, until interrupted
        /// (with -o json: one JSON object per line)
        #[arg(short, long)]
        follow: bool,
        /// A game day's report: only drill events (--limit: the newest N
        /// drills), each with the events that followed it about its node or
        /// its job, up to the next drill there
        #[arg(long, conflicts_with = "follow")]
        drills: bool,
    },
    /// List jobs
    Jobs {
        #[command(flatten)]
        list: JobListArgs,
        #[command(flatten)]
        watch: Watch,
    },
    /// Submit, stop or describe one job
    #[command(subcommand)]
    Job(JobCommand),
    /// List a job's complete checkpoints, oldest first
    Checkpoints {
        /// Job name
        #[arg(value_name = "JOB", value_parser = non_empty)]
        job: String,
    },
    /// Show the tail of one rank's output
    Logs {
        /// Job name
        #[arg(value_name = "JOB", value_parser = non_empty)]
        job: String,
        /// Global rank whose output to show
        #[arg(long, value_name = "R")]
        rank: u32,
        /// How many of the last lines to show
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        lines: u32,
    },
    /// Inject a fault on a node for a game day
    ///
    /// supd records the drill in the event log and passes it to the node's
    /// agent, which makes the fault real: GPU faults go to its detector as if
    /// NVML had reported them (the verdict, cordon and events are marked as a
    /// drill); hang, slow, crash, vanish, partition and torn-checkpoint act on
    /// the node's ranks or its link to supd, and end in the same recovery as
    /// the real fault. Agents accept drills only when started with
    /// --allow-drills. `supctl events --drills` lists them with what followed.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// The circuit breaker that stops automatic cordons
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// Create the cluster CA and issue certificates (offline; no supd needed)
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print a shell completion script to stdout
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

const COMPLETIONS_HELP: &str = "\
Examples:
  supctl completions bash > /etc/bash_completion.d/supctl
  supctl completions zsh > \"${fpath[1]}/_supctl\"
  supctl completions fish > ~/.config/fish/completions/supctl.fish";

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA in DIR, plus certificates for supd and for the
    /// nodes and operators named
    #[command(after_help = CERTS_HELP)]
    Init {
        /// Directory for the CA and certificates (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// DNS name or IP address agents and supctl use for supd (repeat)
        /// [default: localhost, 127.0.0.1, ::1]
        #[arg(long = "supd-name", value_name = "NAME")]
        supd_names: Vec<String>,
        /// Issue a node certificate for this node id (repeat)
        #[arg(long = "node", value_name = "ID")]
        nodes: Vec<String>,
        /// Issue an operator certificate for this person or tool (repeat)
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
        /// Issue a read-only certificate (dashboards, scripts) (repeat)
        #[arg(long = "viewer", value_name = "NAME")]
        viewers: Vec<String>,
        /// Days the CA is valid
        #[arg(long, value_name = "DAYS", default_value_t = 3650)]
        ca_days: u32,
        /// Days each other certificate is valid
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        days: u32,
    },
    /// Issue one more certificate from the CA in DIR
    #[command(after_help = CERTS_HELP)]
    Issue {
        /// Directory holding ca.pem and ca-key.pem
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// supd, node, operator or viewer
        #[arg(value_name = "ROLE")]
        role: String,
        /// The node id, operator or viewer name; for supd, its DNS names or
        /// IP addresses
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Days the certificate is valid
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        days: u32,
    },
    /// List the certificates in DIR: identity, expiry, revoked or not
    /// (soonest expiry first)
    List {
        /// Directory holding the CA and certificates
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Revoke a certificate issued from the CA in DIR: adds it to DIR/crl.pem,
    /// which supd (grpc.tls.crl) re-reads within seconds, refusing the
    /// certificate and cutting its live connections
    #[command(after_help = CERTS_HELP)]
    Revoke {
        /// Directory holding ca.pem, ca-key.pem and the certificate
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// node, operator or viewer
        #[arg(value_name = "ROLE")]
        role: String,
        /// The node id, operator or viewer name
        #[arg(value_name = "NAME")]
        name: String,
    },
}

const CERTS_HELP: &str = "\
Files (in DIR): ca.pem, ca-key.pem (keep it off the nodes), crl.pem (the
revocation list, for supd), supd.pem, supd-key.pem, node-ID.pem,
node-ID-key.pem, operator-NAME.pem, ...
Keys are written mode 0600; existing certificates and keys are never replaced.

Examples:
  supctl certs init --dir /etc/sup/pki --supd-name supd.cluster.example --node gpu-001 --operator alice
  supctl certs issue --dir /etc/sup/pki node gpu-002
  supctl certs revoke --dir /etc/sup/pki node gpu-002    # then copy crl.pem to supd
  supctl certs list --dir /etc/sup/pki                   # what expires when, what is revoked
  supctl --supervisor https://supd.cluster.example:7070 --ca ca.pem --cert operator-alice.pem --key operator-alice-key.pem status";

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job from its TOML spec (supd validates it)
    Submit {
        /// The job spec file; `-` reads it from standard input
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Who submits [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
        /// Bind the job to this running Slurm job's allocation (in a batch
        /// script: "$SLURM_JOB_ID"): placed only on its nodes, the rest are
        /// its spares, its ranks run as job steps of it
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        slurm_job: Option<u64>,
    },
    /// Wait until a job ends; exit status 0 only if it succeeded (for batch scripts)
    Wait {
        /// Job name
        #[arg(value_parser = non_empty)]
        name: String,
    },
    /// Stop a job: its ranks get SIGTERM, then SIGKILL after the grace period
    Stop {
        /// Job name
        #[arg(value_parser = non_empty)]
        name: String,
        /// Why (recorded in the event log)
        #[arg(long, value_parser = non_empty)]
        reason: Option<String>,
        /// Who stops it [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Show one job: state, nodes in rank order, newest checkpoint, spec
    Describe {
        /// Job name
        #[arg(value_parser = non_empty)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Report an Xid on one GPU as if NVML had seen it
    Xid {
        #[command(flatten)]
        target: DrillTarget,
        /// The Xid code, e.g. 79 (GPU has fallen off the bus)
        #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u32).range(1..))]
        xid: u32,
    },
    /// Report a GPU recovery action as if NVML had returned it
    RecoveryAction {
        #[command(flatten)]
        target: DrillTarget,
        /// The recovery action the GPU asks for
        #[arg(long, value_enum)]
        action: RecoveryActionArg,
    },
    /// Freeze every rank of the node's job (SIGSTOP): a hang, until the
    /// hang detector restarts the job
    Hang {
        #[command(flatten)]
        target: DrillNode,
    },
    /// Make the node's ranks take FACTOR times as long per step (a
    /// SIGSTOP/SIGCONT cycle sized from the node's step time): a straggler
    Slow {
        #[command(flatten)]
        target: DrillNode,
        /// How many times slower, 1.1 to 10
        #[arg(long, value_name = "F")]
        factor: f64,
        /// How long, e.g. 2m (1s to 1h)
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_timeout)]
        duration: Duration,
    },
    /// Kill one rank (SIGKILL): a rank crash
    Crash {
        #[command(flatten)]
        target: DrillNode,
        /// Global rank to kill [default: the node's lowest]
        #[arg(long, value_name = "R")]
        rank: Option<u32>,
    },
    /// Kill every rank and cut the agent off from supd for DURATION: a
    /// power loss; the node then comes back
    Vanish {
        #[command(flatten)]
        target: DrillNode,
        /// How long the node stays away, e.g. 1m (1s to 1h)
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_timeout)]
        duration: Duration,
    },
    /// Cut the agent off from supd for DURATION, its ranks running on: a
    /// network partition
    Partition {
        #[command(flatten)]
        target: DrillNode,
        /// How long, e.g. 1m (1s to 1h)
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_timeout)]
        duration: Duration,
    },
    /// Tear the job's newest complete checkpoint, then kill a rank: a crash
    /// during a save
    TornCheckpoint {
        #[command(flatten)]
        target: DrillNode,
        /// Global rank to kill [default: the node's lowest]
        #[arg(long, value_name = "R")]
        rank: Option<u32>,
    },
}

/// The node of a drill that is not about one GPU.
#[derive(Debug, Clone, Args)]
pub struct DrillNode {
    /// Node id
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub node: String,
    /// Who runs the drill [default: $SUP_USER, else $USER, else "operator"]
    #[arg(long, value_name = "NAME", value_parser = non_empty)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DrillTarget {
    /// Node id
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub node: String,
    /// GPU index on that node
    #[arg(long, value_name = "N")]
    pub gpu: u32,
    /// Who runs the drill [default: $SUP_USER, else $USER, else "operator"]
    #[arg(long, value_name = "NAME", value_parser = non_empty)]
    pub by: Option<String>,
}

/// NVML's GPU recovery actions, spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecoveryActionArg {
    None,
    GpuReset,
    NodeReboot,
    DrainP2p,
    DrainAndReset,
}

impl From<RecoveryActionArg> for v1::RecoveryAction {
    fn from(a: RecoveryActionArg) -> Self {
        match a {
            RecoveryActionArg::None => v1::RecoveryAction::None,
            RecoveryActionArg::GpuReset => v1::RecoveryAction::GpuReset,
            RecoveryActionArg::NodeReboot => v1::RecoveryAction::NodeReboot,
            RecoveryActionArg::DrainP2p => v1::RecoveryAction::DrainP2p,
            RecoveryActionArg::DrainAndReset => v1::RecoveryAction::DrainAndReset,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close the breaker so automatic cordons resume
    Reset {
        /// Why (recorded in the event log)
        #[arg(long, value_parser = non_empty)]
        reason: Option<String>,
        /// Who resets it [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
}

/// The shells supctl writes completions for. Our own list rather than
/// clap_complete's, so `--help` offers only the shells we document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// `--by` when not given. A function of the environment lookup so it can be
/// tested without touching the process environment.
pub fn default_operator(env: impl Fn(&str) -> Option<String>) -> String {
    ["SUP_USER", "USER"]
        .iter()
        .filter_map(|key| env(key))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

fn non_empty(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(trimmed.to_owned())
    }
}

fn parse_node_state(s: &str) -> Result<v1::NodeState, String> {
    sup_proto::json::node_state_from_name(s)
}

fn parse_job_state(s: &str) -> Result<String, String> {
    sup_proto::json::job_state_from_name(s).map(str::to_owned)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

/// supd's gRPC URLs, one per replica, in the order supctl tries them: never
/// empty, normalised, no two alike, all `https://` or all `http://` (one set
/// of TLS flags serves them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisors(Vec<String>);

impl Supervisors {
    pub fn urls(&self) -> &[String] {
        &self.0
    }
}

/// The comma-separated form, as `--supervisor` takes it.
impl std::fmt::Display for Supervisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

fn parse_supervisors(s: &str) -> Result<Supervisors, String> {
    let pieces: Vec<&str> = s.split(',').collect();
    let several = pieces.len() > 1;
    let mut urls: Vec<String> = Vec::new();
    for piece in pieces {
        if piece.trim().is_empty() {
            return Err(if several {
                "empty URL in the list; separate URLs with single commas".to_owned()
            } else {
                "must not be empty; expected http://HOST:PORT".to_owned()
            });
        }
        // One URL: the error as it always was. In a list: which one.
        let url = parse_supervisor_url(piece).map_err(|e| {
            if several {
                format!("{:?}: {e}", piece.trim())
            } else {
                e
            }
        })?;
        if urls.contains(&url) {
            return Err(format!("{url} is listed twice"));
        }
        urls.push(url);
    }
    let (tls, plain): (Vec<&str>, Vec<&str>) = urls
        .iter()
        .map(String::as_str)
        .partition(|u| u.starts_with("https://"));
    if !tls.is_empty() && !plain.is_empty() {
        return Err(format!(
            "mixes https:// ({}) and http:// ({}); every supd replica is reached the same way, \
             with the same --ca/--cert/--key: use https:// for all",
            tls.join(", "),
            plain.join(", ")
        ));
    }
    Ok(Supervisors(urls))
}

fn parse_supervisor_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = match s.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.trim_end_matches('/')),
        None => format!("http://{}", s.trim_end_matches('/')),
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("expected an http:// or https:// URL".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host; expected http://HOST:PORT".to_owned());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("supctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["status", "-o", "json", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn cordon_requires_a_non_empty_reason() {
        let missing = parse(&["cordon", "n1"]).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let blank = parse(&["cordon", "n1", "--reason", "  "]).unwrap_err();
        assert_eq!(blank.kind(), ErrorKind::ValueValidation);
        assert_eq!(blank.exit_code(), 2);
    }

    #[test]
    fn supervisor_url_is_normalised_and_checked() {
        let cli = parse(&["--supervisor", "10.0.0.5:7070", "nodes"]).unwrap();
        assert_eq!(cli.global.supervisor.urls(), ["http://10.0.0.5:7070"]);
        let cli = parse(&["--supervisor", "http://sup:7070/", "nodes"]).unwrap();
        assert_eq!(cli.global.supervisor.urls(), ["http://sup:7070"]);
        assert!(parse(&["--supervisor", "ftp://sup", "nodes"]).is_err());
        assert!(parse(&["--supervisor", "http://", "nodes"]).is_err());
        assert!(parse(&["--supervisor", "", "nodes"]).is_err());
        let cli = parse(&["nodes"]).unwrap();
        assert_eq!(cli.global.supervisor.urls(), [DEFAULT_SUPERVISOR]);
    }

    #[test]
    fn several_supervisor_urls_are_kept_in_order() {
        let cli = parse(&[
            "--supervisor",
            "supd-a:7070, http://supd-b:7070/ ,supd-c:7070",
            "status",
        ])
        .unwrap();
        assert_eq!(
            cli.global.supervisor.urls(),
            [
                "http://supd-a:7070",
                "http://supd-b:7070",
                "http://supd-c:7070"
            ]
        );
        assert_eq!(
            cli.global.supervisor.to_string(),
            "http://supd-a:7070,http://supd-b:7070,http://supd-c:7070"
        );
        let cli = parse(&[
            "--supervisor",
            "https://supd-a:7070,https://supd-b:7070",
            "status",
        ])
        .unwrap();
        assert_eq!(cli.global.supervisor.urls().len(), 2);
    }

    #[test]
    fn supervisor_lists_are_refused_with_the_problem_named() {
        let refused = |list: &str| {
            let err = parse(&["--supervisor", list, "status"]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{list}: {err}");
            assert_eq!(err.exit_code(), 2);
            err.to_string()
        };
        let err = refused("supd-a:7070,,supd-b:7070");
        assert!(err.contains("empty URL in the list"), "{err}");
        let err = refused("supd-a:7070,");
        assert!(err.contains("empty URL in the list"), "{err}");
        let err = refused("supd-a:7070,http://supd-a:7070/");
        assert!(err.contains("http://supd-a:7070 is listed twice"), "{err}");
        let err = refused("supd-a:7070,ftp://supd-b");
        assert!(
            err.contains("\"ftp://supd-b\": expected an http:// or https:// URL"),
            "{err}"
        );
        let err = refused("https://supd-a:7070,supd-b:7070");
        assert!(
            err.contains("mixes https:// (https://supd-a:7070) and http:// (http://supd-b:7070)"),
            "{err}"
        );
    }

    #[test]
    fn timeout_must_be_a_positive_duration() {
        assert!(parse(&["--timeout", "0s", "status"]).is_err());
        assert!(parse(&["--timeout", "ten", "status"]).is_err());
        let cli = parse(&["--timeout", "250ms", "status"]).unwrap();
        assert_eq!(cli.global.timeout, Duration::from_millis(250));
    }

    #[test]
    fn watch_takes_an_optional_interval_and_events_follow() {
        let watch = |args: &[&str]| match parse(args).unwrap().command {
            Command::Status { watch }
            | Command::Nodes { watch, .. }
            | Command::Jobs { watch, .. } => watch.watch,
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(watch(&["status"]), None);
        assert_eq!(watch(&["status", "--watch"]), Some(Duration::from_secs(2)));
        assert_eq!(watch(&["nodes", "-w", "5s"]), Some(Duration::from_secs(5)));
        assert_eq!(watch(&["jobs", "--watch=1s"]), Some(Duration::from_secs(1)));
        assert!(parse(&["status", "--watch", "0s"]).is_err());
        assert!(matches!(
            parse(&["events", "--follow"]).unwrap().command,
            Command::Events { follow: true, .. }
        ));
    }

    #[test]
    fn events_limit_must_be_positive() {
        assert!(parse(&["events", "--limit", "0"]).is_err());
        let cli = parse(&["events", "--limit", "5", "--after", "7"]).unwrap();
        match cli.command {
            Command::Events {
                limit,
                after,
                follow,
                ..
            } => {
                assert_eq!(limit, Some(5));
                assert_eq!(after, Some(7));
                assert!(!follow);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["events", "--all", "--limit", "5"]).is_err());
    }

    #[test]
    fn nodes_take_states_a_job_a_limit_and_a_continue_token() {
        let list = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Nodes { list, .. }) => Ok(list),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e),
        };
        let l = list(&[
            "nodes",
            "--state",
            "cordoned,unreachable",
            "--state",
            "suspect",
            "--job",
            "llm",
            "--limit",
            "50",
            "--continue",
            "AQ",
        ])
        .unwrap();
        assert_eq!(
            l.state,
            [
                v1::NodeState::Cordoned,
                v1::NodeState::Unreachable,
                v1::NodeState::Suspect
            ]
        );
        assert_eq!(
            (l.job.as_deref(), l.limit, l.continue_token.as_deref()),
            (Some("llm"), Some(50), Some("AQ"))
        );
        assert!(list(&["nodes", "--all"]).unwrap().all);
        let bad = list(&["nodes", "--state", "cordon"]).unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::ValueValidation);
        assert!(
            bad.to_string().contains("unknown node state 'cordon'"),
            "{bad}"
        );
        assert!(list(&["nodes", "--all", "--limit", "5"]).is_err());
        assert!(list(&["nodes", "--continue", " "]).is_err());
    }

    #[test]
    fn operator_falls_back_from_sup_user_to_user_to_a_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            default_operator(env(&[("SUP_USER", "alice"), ("USER", "bob")])),
            "alice"
        );
        assert_eq!(
            default_operator(env(&[("SUP_USER", ""), ("USER", "bob")])),
            "bob"
        );
        assert_eq!(default_operator(env(&[])), "operator");
    }

    #[test]
    fn job_commands_parse_with_defaults() {
        let cli = parse(&["job", "submit", "-"]).unwrap();
        match cli.command {
            Command::Job(JobCommand::Submit {
                file,
                by,
                slurm_job,
            }) => {
                assert_eq!(file, PathBuf::from("-"));
                assert_eq!(by, None);
                assert_eq!(slurm_job, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["job", "stop", "llm", "--reason", " done "]).unwrap();
        match cli.command {
            Command::Job(JobCommand::Stop { name, reason, by }) => {
                assert_eq!(name, "llm");
                assert_eq!(reason.as_deref(), Some("done"));
                assert_eq!(by, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(
            parse(&["job"]).unwrap_err().kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(
            parse(&["job", "describe"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn logs_need_a_rank_and_default_to_100_lines() {
        assert_eq!(
            parse(&["logs", "llm"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        match parse(&["logs", "llm", "--rank", "7"]).unwrap().command {
            Command::Logs { job, rank, lines } => {
                assert_eq!((job.as_str(), rank, lines), ("llm", 7, 100));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["logs", "llm", "--rank", "7", "--lines", "0"]).is_err());
    }

    #[test]
    fn drills_take_node_gpu_and_a_fault() {
        let cli = parse(&["drill", "xid", "--node", "n1", "--gpu", "3", "--xid", "79"]).unwrap();
        match cli.command {
            Command::Drill(DrillCommand::Xid { target, xid }) => {
                assert_eq!((target.node.as_str(), target.gpu, xid), ("n1", 3, 79));
            }
            other => panic!("parsed as {other:?}"),
        }
        for (name, action) in [
            ("none", v1::RecoveryAction::None),
            ("gpu-reset", v1::RecoveryAction::GpuReset),
            ("node-reboot", v1::RecoveryAction::NodeReboot),
            ("drain-p2p", v1::RecoveryAction::DrainP2p),
            ("drain-and-reset", v1::RecoveryAction::DrainAndReset),
        ] {
            let args = [
                "drill",
                "recovery-action",
                "--node",
                "n1",
                "--gpu",
                "0",
                "--action",
                name,
            ];
            match parse(&args).unwrap().command {
                Command::Drill(DrillCommand::RecoveryAction { action: a, .. }) => {
                    assert_eq!(v1::RecoveryAction::from(a), action, "{name}");
                }
                other => panic!("parsed as {other:?}"),
            }
        }
        let bad = parse(&[
            "drill",
            "recovery-action",
            "--node",
            "n1",
            "--gpu",
            "0",
            "--action",
            "reboot",
        ])
        .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::InvalidValue);
        assert!(parse(&["drill", "xid", "--node", "n1", "--gpu", "0", "--xid", "0"]).is_err());
        assert!(parse(&["drill", "xid", "--node", "", "--gpu", "0", "--xid", "79"]).is_err());
    }

    #[test]
    fn completions_offer_bash_zsh_and_fish() {
        for (name, shell) in [
            ("bash", clap_complete::Shell::Bash),
            ("zsh", clap_complete::Shell::Zsh),
            ("fish", clap_complete::Shell::Fish),
        ] {
            match parse(&["completions", name]).unwrap().command {
                Command::Completions { shell: s } => {
                    assert_eq!(clap_complete::Shell::from(s), shell)
                }
                other => panic!("parsed as {other:?}"),
            }
        }
        assert!(parse(&["completions", "powershell"]).is_err());
    }

    #[test]
    fn long_help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("3  cannot reach the supervisor"), "{help}");
    }
}
