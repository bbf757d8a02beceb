//! sup-loadgen: N simulated agents against a real supd, over loopback, through
//! the real gRPC protocol. A benchmark that prints figures, not a test that
//! asserts them (see BENCHMARKS.md for a run and its conditions).
//!
//! It starts `supd` itself (a fresh data dir, a config tuned for measuring:
//! `nodes.unreachable_after`, `nodes.telemetry_interval` from the flags, the
//! crash-loop guard and breaker widened so repeated injected faults are not
//! refused), connects `--nodes` agents (one HTTP/2 connection each, as real
//! agents have), streams telemetry at `--rate` Hz, submits one job across all
//! but `--spares` nodes, and then:
//!
//! 1. measures a steady window: reports/s accepted, supd CPU s per million
//!    reports (/proc/<pid>/stat), supd peak RSS (VmHWM);
//! 2. injects `--swap-faults` GPU failures (a failed verdict, Xid 79) while
//!    spares last, then `--shrink-faults` more with the pool empty, and per
//!    fault measures report → cordon (supd's `node_cordoned` event time, and
//!    the faulted agent seeing its assignment withdrawn) and report → every
//!    agent of the new generation launched (the agents' own `launched`
//!    reports, and supd's `job_running` event);
//! 3. checks that every report sent so far was accepted;
//! 4. unless `--restart false`, kills supd (SIGKILL, as a crash) and starts
//!    it again on the same store and ports: every agent reconnects at once
//!    with sup-agent's own jittered backoff, and the time until all are
//!    registered again is the registration-storm figure (the job must keep
//!    its generation: a restart never touches a running job);
//! 5. silences `--vanish` agents (stream kept open, nothing sent) and
//!    measures silence → `node_unreachable` event;
//! 6. counts false `node_unreachable` events over the whole run: any for a
//!    node that was never silenced (the restart's storm included).
//!
//! With `--scrapers N`, N HTTP scrapers GET `--scrape-path` (default
//! `/metrics`) from supd once a second each, staggered over the second and
//! sending Prometheus's `Accept` and `Accept-Encoding: gzip` headers, from the start of the steady window
//! to the end of the run; one more line then gives their scrapes, failures
//! (connect error, non-200 status, 30 s timeout), latency (connect to last
//! byte) and body size, to show what scraping costs the ingest path.
//!
//! With `--tls` the same run is over mutual TLS, as production runs (tls.rs):
//! certificates are generated in memory, supd serves `[grpc.tls]` and every
//! agent presents its own node's certificate. Plaintext is the default.
//!
//! With `--replicas N` it measures failover instead (replicas.rs): a
//! 3-member etcd and N supd replicas on loopback, every agent given all
//! their URLs (sup-agent's own rotation and backoff, `--reconnect-*-ms`),
//! and `--failover-runs` times the leader SIGKILLed: the time until the
//! standby serves, every agent is registered with it, and an Xid reported
//! by one node on its registration there is decided (cordoned).
//!
//! Whatever it started (supd, etcd, the temporary dir) is stopped and
//! removed when it ends, fails or is interrupted (Ctrl-C, SIGTERM).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::seq::IndexedRandom;
use sup_agent::rotation::{Failure, Rotation, Wait};
use sup_proto::v1;
use sup_proto::v1::agent_message::Body;
use sup_proto::v1::agent_service_client::AgentServiceClient;
use sup_proto::v1::control_service_client::ControlServiceClient;
use sup_proto::v1::supervisor_message::Body as SupBody;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

mod replicas;
mod tls;

#[derive(Debug, Parser)]
#[command(name = "sup-loadgen", version)]
struct Args {
    /// The supd binary to start.
    #[arg(long, default_value = "target/release/supd")]
    supd: PathBuf,
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 2048)]
    nodes: usize,
    /// GPUs per simulated node.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Telemetry reports per second per agent (1 normal, 10 stress).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Nodes left out of the job as spares.
    #[arg(long, default_value_t = 10)]
    spares: usize,
    /// Steady-state measuring window, seconds (600: the 10-minute no-drop
    /// run; drops are counted over the whole run either way).
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// Faults injected while spares last (each should be a spare swap).
    #[arg(long, default_value_t = 10)]
    swap_faults: usize,
    /// Faults injected with the spare pool empty (each should shrink).
    #[arg(long, default_value_t = 10)]
    shrink_faults: usize,
    /// Agents silenced at the end to measure unreachable detection.
    #[arg(long, default_value_t = 20)]
    vanish: usize,
    /// supd's nodes.unreachable_after for this run, milliseconds (default:
    /// the shipped default).
    #[arg(long, default_value_t = 4000)]
    unreachable_after_ms: u64,
    /// Agents connecting at once at the start (reconnects after the restart
    /// are not gated: every agent retries on its own backoff).
    #[arg(long, default_value_t = 64)]
    connect_parallel: usize,
    /// Mutual TLS, as production runs: a CA, supd's certificate and one
    /// client certificate per node are generated in memory (rcgen), supd is
    /// started with `[grpc.tls]` and every agent connects over https://.
    /// Default: plaintext, as every older figure in BENCHMARKS.md.
    #[arg(long)]
    tls: bool,
    /// Kill and restart supd after the faults and measure the reconnect storm.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    restart: bool,
    /// Keep supd's data dir and log here instead of a temporary dir.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
    /// Concurrent HTTP scrapers, each GETting --scrape-path once a second
    /// (staggered) from the start of the steady window to the end of the run.
    #[arg(long, default_value_t = 0)]
    scrapers: usize,
    /// The path the scrapers GET from supd's HTTP address.
    #[arg(long, default_value = "/metrics")]
    scrape_path: String,
    /// Run against this many supd replicas on etcd instead of one supd (at
    /// least 2; 0: one supd, the default): a 3-member etcd and the replicas
    /// are started on loopback, every agent is given all the replicas' URLs
    /// (sup-agent's rotation), and after registration the leader is
    /// SIGKILLed `--failover-runs` times (see "Failover" in the module doc).
    /// The single-supd phases (steady window, faults, restart, vanishing) are
    /// not run then.
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// With --replicas: failovers measured (the leader SIGKILLed, the killed
    /// replica started again as a standby before the next one).
    #[arg(long, default_value_t = 5)]
    failover_runs: usize,
    /// With --replicas: supd's store.leader_lease, whole seconds.
    #[arg(long, default_value_t = 3)]
    leader_lease_secs: u64,
    /// With --replicas: steady running before each kill, seconds (plus a
    /// random part of the lease, so that the kill lands anywhere in the
    /// leader's renewal cycle).
    #[arg(long, default_value_t = 5)]
    failover_settle_secs: u64,
    /// With --replicas: the etcd binary (etcd 3.4+, Debian's etcd-server).
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// With --replicas: etcd's --heartbeat-interval, milliseconds.
    #[arg(long, default_value_t = 100)]
    etcd_heartbeat_ms: u64,
    /// With --replicas: etcd's --election-timeout, milliseconds.
    #[arg(long, default_value_t = 500)]
    etcd_election_ms: u64,
    /// The simulated agents' reconnect_min_backoff, milliseconds (default:
    /// sup-agent's).
    #[arg(long, default_value_t = sup_agent::config::DEFAULT_RECONNECT_MIN_BACKOFF.as_millis() as u64)]
    reconnect_min_backoff_ms: u64,
    /// The simulated agents' reconnect_max_backoff, milliseconds (default:
    /// sup-agent's).
    #[arg(long, default_value_t = sup_agent::config::DEFAULT_RECONNECT_MAX_BACKOFF.as_millis() as u64)]
    reconnect_max_backoff_ms: u64,
}

impl Args {
    /// The simulated agents' reconnect backoff (sup-agent's own policy).
    fn backoff(&self) -> sup_agent::backoff::Backoff {
        sup_agent::backoff::Backoff::new(
            Duration::from_millis(self.reconnect_min_backoff_ms),
            Duration::from_millis(self.reconnect_max_backoff_ms),
        )
    }
}

/// What one simulated agent saw, read by the coordinator.
#[derive(Default)]
struct AgentView {
    registered: bool,
    /// When its latest session was registered.
    registered_at: Option<Instant>,
    /// Which supd URL (index) its latest session registered with.
    registered_url: usize,
    /// Send the fault report as soon as the next session registers (a GPU
    /// that failed while the agent had no supd: the real agent sends its
    /// GPU health again after every registration).
    fault_on_register: bool,
    /// Every assignment received: (generation, holds a job, node rank, when).
    assignments: Vec<(u64, bool, u32, Instant)>,
    /// When it reported every rank of a generation launched.
    launched: HashMap<u64, Instant>,
    /// When it sent its fault report.
    fault_sent: Option<(Instant, i64)>,
    /// When it went silent, and its last report before that (Unix ms).
    vanished: Option<(i64, i64)>,
}

enum AgentCommand {
    Fault,
    Vanish,
}

struct Shared {
    views: Vec<Mutex<AgentView>>,
    sent_reports: AtomicU64,
    /// Stop sending telemetry (end of run: count what arrived).
    quiet: AtomicBool,
    events: Mutex<Vec<v1::Event>>,
    failed_agents: AtomicU64,
    /// Sessions that broke and were opened again.
    reconnects: AtomicU64,
    /// supd is being restarted on purpose: broken streams are expected.
    restarting: AtomicBool,
    /// The run is over and supd is being stopped: streams breaking now are
    /// expected, not failures worth a line each.
    finished: AtomicBool,
}

/// The clock supd stamps its events with (the wall clock read once,
/// advanced by the monotonic clock), so a fault's send time and supd's
/// cordon event compare on the same clock rather than a wall clock that
/// NTP may slew between them.
fn unix_ms() -> i64 {
    sup_proto::time::now_unix_ms()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked agent task must not take the whole measurement with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || !args.rate.is_finite() {
        bail!("--rate must be positive");
    }
    if args.spares >= args.nodes {
        bail!("--spares must be less than --nodes");
    }
    if !args.scrape_path.starts_with('/')
        || args
            .scrape_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("--scrape-path must start with / and hold no spaces");
    }
    if args.replicas == 1 || args.replicas > 26 {
        bail!("--replicas takes 2 to 26 (0: one supd without etcd)");
    }
    if args.tls && args.replicas > 0 {
        // The failover harness also starts etcd; TLS there is a run of its own.
        bail!("--tls measures one supd; it does not combine with --replicas");
    }
    if args.replicas > 0 {
        if !(1..=60).contains(&args.leader_lease_secs) {
            bail!("--leader-lease-secs must be 1 to 60 (supd's store.leader_lease)");
        }
        if args.failover_runs == 0 {
            bail!("--failover-runs must be at least 1");
        }
    }
    check_fd_limit(args.nodes, args.scrapers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // On Ctrl-C or SIGTERM the run is dropped: every process it started
        // (supd, etcd members) is killed and its temporary dir removed.
        tokio::select! {
            r = async {
                if args.replicas > 0 {
                    replicas::run(args).await
                } else {
                    run(args).await
                }
            } => r,
            s = interrupted() => bail!("interrupted ({s}): stopped what this run started"),
        }
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Each agent holds one socket here and supd holds one more: both processes
/// need a descriptor limit above the node count. Raise it with `ulimit -n`
/// (scripts/bench.sh does) rather than silently running fewer agents.
/// Each scraper holds one more socket at a time, on both sides.
fn check_fd_limit(nodes: usize, scrapers: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        if soft < nodes + scrapers + 256 {
            let scrapers_too = if scrapers > 0 {
                format!(" and {scrapers} scrapers")
            } else {
                String::new()
            };
            bail!(
                "open-file limit {soft} is too low for {nodes} agents{scrapers_too}; run `ulimit -n {}` first",
                nodes + scrapers + 1024
            );
        }
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

struct Supd {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    /// With `--tls`: the certificates supd and every client use.
    pki: Option<Arc<tls::BenchPki>>,
    _dir: Option<tempfile::TempDir>,
}

impl Supd {
    /// The URL agents and the controller dial.
    fn uri(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc)
    }

    fn spawn(binary: &PathBuf, config_path: &PathBuf, log_path: &PathBuf) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        Command::new(binary)
            .arg("--config")
            .arg(config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))
    }

    /// SIGKILL (a crash, nothing flushed on the way out) and start again on
    /// the same store, config and ports.
    fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Supd::spawn(&self.binary, &self.config_path, &self.log_path)?;
        Ok(())
    }
}

impl Drop for Supd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run's directory: `--keep-dir`, or a temporary one removed with the
/// returned guard.
pub(crate) fn work_dir(args: &Args) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match &args.keep_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    })
}

fn start_supd(args: &Args) -> anyhow::Result<Supd> {
    let (dir, tmp) = work_dir(args)?;
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let pki = if args.tls {
        let ids: Vec<String> = (0..args.nodes).map(node_id).collect();
        let pki = tls::BenchPki::generate(&dir, &ids)?;
        println!(
            "tls: generated a CA, supd's certificate and {} client certificates in {:.2} s",
            pki.clients(),
            pki.generated_in.as_secs_f64()
        );
        Some(Arc::new(pki))
    } else {
        None
    };
    let config = supd_config(args, &dir.join("data"), grpc, http, pki.as_deref());
    let config_path = dir.join("supd.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.join("supd.log");
    std::fs::File::create(&log_path)?;
    let child = Supd::spawn(&args.supd, &config_path, &log_path)?;
    Ok(Supd {
        child,
        grpc,
        http,
        binary: args.supd.clone(),
        config_path,
        log_path,
        pki,
        _dir: tmp,
    })
}

/// supd's config for a run: a config tuned for measuring (see the module
/// doc), its store in `data`, listening on `grpc` and `http`; mutual TLS
/// with `pki`'s files, else plaintext.
fn supd_config(
    args: &Args,
    data: &std::path::Path,
    grpc: SocketAddr,
    http: SocketAddr,
    pki: Option<&tls::BenchPki>,
) -> String {
    let transport = match pki {
        // TOML basic strings: Debug quotes and escapes `"` and `\` the way
        // TOML reads them, so any --keep-dir path stays one string.
        Some(pki) => format!(
            "[grpc.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.ca_path.display().to_string(),
            pki.cert_path.display().to_string(),
            pki.key_path.display().to_string(),
        ),
        None => "# Loopback benchmark: plaintext, as the agents it simulates.\nplaintext = true\n"
            .to_owned(),
    };
    let interval_ms = (1000.0 / args.rate).round().max(1.0) as u64;
    // Widened guards: the benchmark injects many faults into one job on
    // purpose; the crash-loop guard and breaker would (rightly) refuse them.
    format!(
        r#"data_dir = "{data}"
log_format = "json"
[grpc]
addr = "{grpc}"
{transport}[http]
addr = "{http}"
[nodes]
unreachable_after = "{unreachable}ms"
telemetry_interval = "{interval_ms}ms"
[jobs]
crash_loop_limit = 100000
[breaker]
max_share = 1.0
min_cordons = 100000
max_cordons = 100000
[correlation]
# Every fault is an Xid 79 on another node, on purpose: not a storm here.
hardware_nodes = 100000
"#,
        data = data.display(),
        unreachable = args.unreachable_after_ms,
    )
}

/// utime + stime of a process, seconds (/proc reports USER_HZ = 100 ticks/s).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    // Fields 14 and 15 of stat(5); index 0 here is field 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// One plain HTTP/1.0 GET; enough for /metrics on loopback.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: loadgen\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// supd's accepted-report counter, and how long the scrape took (it is a
/// figure too: Prometheus scrapes this every 15-30 s).
async fn accepted_reports(http: SocketAddr) -> anyhow::Result<(u64, Duration)> {
    let t = Instant::now();
    let text = tokio::task::spawn_blocking(move || http_get(http, "/metrics")).await??;
    let took = t.elapsed();
    text.lines()
        .find_map(|l| l.strip_prefix("sup_agent_reports_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| (v as u64, took))
        .context("sup_agent_reports_total not in /metrics")
}

/// What readers cost supd's state actor so far: snapshots built for them
/// and the actor's seconds spent building them (from supd's /metrics).
async fn snapshot_cost(http: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let text = tokio::task::spawn_blocking(move || http_get(http, "/metrics")).await??;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("sup_status_snapshots_total "),
        value("sup_status_snapshot_build_seconds_total "),
    ))
}

/// The `Accept` header Prometheus sends: OpenMetrics preferred, the text
/// format as a fallback.
const SCRAPE_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
/// A scrape still going after this counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one scraper (or all of them, merged) saw.
#[derive(Default)]
struct ScrapeStats {
    /// Connect to last byte, milliseconds, for each successful scrape.
    latencies_ms: Vec<f64>,
    /// Body bytes over all successful scrapes.
    body_bytes: u64,
    failed: u64,
    first_error: Option<String>,
}

impl ScrapeStats {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: ScrapeStats) {
        self.latencies_ms.extend(other.latencies_ms);
        self.body_bytes += other.body_bytes;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One scrape: an HTTP/1.0 GET (the server closes after the response), the
/// status line checked for 200 and the body counted, not kept, up to EOF.
/// Returns the body's length.
async fn scrape_once(addr: SocketAddr, path: &str) -> anyhow::Result<u64> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    stream.set_nodelay(true)?;
    let mut stream = tokio::io::BufReader::new(stream);
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: sup-loadgen\r\nAccept: {SCRAPE_ACCEPT}\r\nAccept-Encoding: gzip\r\n\r\n"
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = Vec::new();
    stream.read_until(b'\n', &mut line).await?;
    let status = String::from_utf8_lossy(&line);
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("status line {:?}", status.trim_end());
    }
    let mut content_length = None;
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let header = String::from_utf8_lossy(&line);
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse::<u64>().ok();
            }
        }
    }
    let body = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
    if let Some(len) = content_length {
        if body != len {
            bail!("body of {body} bytes, Content-Length {len}");
        }
    }
    Ok(body)
}

/// Scraper `i` of `n`: starts `i`/`n` of a second late, then scrapes once a
/// second (a tick missed by a slow scrape is skipped, as Prometheus does)
/// until `stop`. A scrape cut short by `stop` is not counted.
async fn scraper(
    i: usize,
    n: usize,
    addr: SocketAddr,
    path: Arc<str>,
    mut stop: watch::Receiver<bool>,
    paused: Arc<AtomicBool>,
) -> ScrapeStats {
    let mut stats = ScrapeStats::default();
    let offset = Duration::from_millis((i * 1000 / n.max(1)) as u64);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = ticker.tick() => {}
        }
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        let t = Instant::now();
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = tokio::time::timeout(SCRAPE_TIMEOUT, scrape_once(addr, &path)) => r,
        };
        let took = ms(t.elapsed());
        if *stop.borrow() {
            break;
        }
        match result {
            Ok(Ok(bytes)) => {
                stats.latencies_ms.push(took);
                stats.body_bytes += bytes;
            }
            Ok(Err(e)) => stats.fail(format!("{e:#}")),
            Err(_) => stats.fail(format!("timed out after {SCRAPE_TIMEOUT:?}")),
        }
    }
    stats
}

/// The running scrapers and how to stop them.
struct Scrapers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<ScrapeStats>>,
    started: Instant,
    /// Set: the scrapers skip their ticks (the fault phase alternates, so
    /// recovery with and without them is compared within one run).
    paused: Arc<AtomicBool>,
}

fn start_scrapers(n: usize, addr: SocketAddr, path: &str) -> Scrapers {
    let (stop, rx) = watch::channel(false);
    let path: Arc<str> = Arc::from(path);
    let paused = Arc::new(AtomicBool::new(false));
    let tasks = (0..n)
        .map(|i| {
            tokio::spawn(scraper(
                i,
                n,
                addr,
                path.clone(),
                rx.clone(),
                paused.clone(),
            ))
        })
        .collect();
    Scrapers {
        stop,
        tasks,
        started: Instant::now(),
        paused,
    }
}

/// Stops the scrapers (before supd is) and merges what they saw; also
/// returns how long they ran.
async fn stop_scrapers(scrapers: Scrapers) -> anyhow::Result<(ScrapeStats, Duration)> {
    let ran = scrapers.started.elapsed();
    scrapers.stop.send_replace(true);
    let mut all = ScrapeStats::default();
    for task in scrapers.tasks {
        all.merge(task.await.context("a scraper task panicked")?);
    }
    Ok((all, ran))
}

/// How the agents reach supd, for the printed summary.
fn transport_name(tls: bool) -> &'static str {
    if tls {
        "mutual TLS (https://, one client certificate per node)"
    } else {
        "plaintext (http://)"
    }
}

fn node_id(i: usize) -> String {
    format!("sim-{i:05}")
}

fn gpu_infos(node: usize, gpus: u32) -> Vec<v1::GpuInfo> {
    (0..gpus)
        .map(|g| v1::GpuInfo {
            index: g,
            uuid: format!("GPU-{node:05}-{g}"),
            name: "Simulated H100".to_owned(),
            pci_bus_id: format!("00000000:{:02X}:00.0", g + 0x10),
            memory_total_bytes: Some(80 << 30),
        })
        .collect()
}

fn telemetry(gpus: u32, tick: u64) -> v1::Telemetry {
    v1::Telemetry {
        sampled_at_unix_ms: unix_ms(),
        gpus: (0..gpus)
            .map(|g| v1::GpuReading {
                index: g,
                temperature_c: Some(50.0 + ((tick + u64::from(g)) % 20) as f64),
                power_w: Some(400.0 + (tick % 50) as f64),
                utilization_gpu_pct: Some(95),
                utilization_memory_pct: Some(60),
                sm_clock_mhz: Some(1980),
                memory_clock_mhz: Some(2619),
                memory_used_bytes: Some(60 << 30),
            })
            .collect(),
    }
}

fn fault_report(node: usize, gpus: u32) -> v1::HealthReport {
    let now = unix_ms();
    v1::HealthReport {
        verdicts: (0..gpus)
            .map(|g| {
                let failed = g == 0;
                v1::GpuVerdict {
                    index: g,
                    uuid: format!("GPU-{node:05}-{g}"),
                    health: if failed {
                        v1::GpuHealth::Failed as i32
                    } else {
                        v1::GpuHealth::Ok as i32
                    },
                    reason: if failed {
                        "Xid 79 (GPU has fallen off the bus): power-cycle the node [loadgen]"
                            .to_owned()
                    } else {
                        String::new()
                    },
                    evidence: if failed {
                        vec!["xid 79 at load generator".to_owned()]
                    } else {
                        Vec::new()
                    },
                    recovery_action: 0,
                    drill: false,
                    causes: if failed {
                        vec![v1::GpuCauseKind::Xid as i32]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect(),
        xids: vec![v1::XidEvent {
            gpu_index: 0,
            uuid: format!("GPU-{node:05}-0"),
            xid: 79,
            at_unix_ms: now,
            source: "nvml".to_owned(),
            detail: "loadgen".to_owned(),
            application: false,
        }],
        visible_gpus: Some(gpus),
    }
}

/// One simulated agent for the whole run, like sup-agent: one connection
/// and session stream at a time, opened again with sup-agent's own
/// full-jitter backoff when it breaks (supd restarted). Given several supd
/// URLs (replicas), it moves between them with sup-agent's own rotation:
/// an attempt that never registered tries the next URL at once, a whole
/// round of them failing or a session that was up ending waits the backoff
/// first. The first connect waits at `gate`; reconnects do not. A vanished
/// agent stays silent.
#[allow(clippy::too_many_arguments)]
async fn agent(
    idx: usize,
    endpoints: Arc<[Endpoint]>,
    gate: Arc<Semaphore>,
    gpus: u32,
    period: Duration,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<AgentCommand>,
    mut backoff: sup_agent::backoff::Backoff,
) {
    let mut rotation = Rotation::new(endpoints.len());
    let mut vanished = false;
    let mut first = true;
    loop {
        let url = rotation.current();
        let endpoint = &endpoints[url];
        let connected = if first {
            let _permit = gate.acquire().await;
            endpoint.connect().await
        } else {
            endpoint.connect().await
        };
        first = false;
        let result = match connected {
            Ok(channel) => {
                session(
                    idx,
                    url,
                    channel,
                    gpus,
                    period,
                    &shared,
                    &mut commands,
                    &mut vanished,
                    &mut backoff,
                )
                .await
            }
            Err(e) => Err(anyhow::Error::new(e).context("connect")),
        };
        match result {
            // The coordinator is done.
            Ok(()) => return,
            Err(_) if shared.finished.load(Ordering::Relaxed) || vanished => return,
            Err(e) => {
                let was_registered = {
                    let mut view = lock(&shared.views[idx]);
                    std::mem::replace(&mut view.registered, false)
                };
                if was_registered {
                    rotation.registered();
                }
                // With one URL every failure waits the backoff, as always.
                let wait = rotation.failed(Failure::Outage);
                if was_registered {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                } else if !shared.restarting.load(Ordering::Relaxed) && wait == Wait::Backoff {
                    eprintln!("agent {idx}: {e:#}");
                }
                if wait == Wait::Backoff {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// One session: register, then report until the stream breaks (an error)
/// or the coordinator closes `commands` (`Ok`).
#[allow(clippy::too_many_arguments)]
async fn session(
    idx: usize,
    url: usize,
    channel: Channel,
    gpus: u32,
    period: Duration,
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<AgentCommand>,
    vanished: &mut bool,
    backoff: &mut sup_agent::backoff::Backoff,
) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    let mut seq = 0u64;
    let mut msg = |body: Body| {
        seq += 1;
        v1::AgentMessage {
            seq,
            body: Some(body),
            ..Default::default()
        }
    };
    // As the real agent: ask for assignment lease renewals with about four
    // reports per lease, so supd's acknowledgements are part of the load.
    let mut lease = sup_agent::lease::Lease::new();
    let register_sent = tokio::time::Instant::now();
    tx.send(msg(Body::Register(v1::Register {
        validates: false,
        slurm_node_name: String::new(),
        node_id: node_id(idx),
        address: format!("10.{}.{}.{}", idx >> 16 & 255, idx >> 8 & 255, idx & 255),
        hostname: node_id(idx),
        agent_version: "loadgen".to_owned(),
        instance_id: format!("loadgen-{idx}-{}", unix_ms()),
        gpu_backend: "sim".to_owned(),
        gpus: gpu_infos(idx, gpus),
    })))
    .await?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .context("opening the session")?
        .into_inner();
    // Spread the agents' reports over the period, as unsynchronised agents are.
    let offset = period.mul_f64(rand::random::<f64>());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u64;
    let mut last_report_ms = 0i64;
    // The job this agent runs now: (job, generation, node rank).
    let mut current: Option<(String, u64, u32)> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if *vanished || shared.quiet.load(Ordering::Relaxed) {
                    continue;
                }
                tick += 1;
                let mut report = msg(Body::Telemetry(telemetry(gpus, tick)));
                report.renew_lease = lease.ask(report.seq, tokio::time::Instant::now());
                tx.send(report).await?;
                last_report_ms = unix_ms();
                shared.sent_reports.fetch_add(1, Ordering::Relaxed);
                // Node rank 0 reports training progress, so a lost node is
                // judged with the job still progressing (like a real job).
                if let Some((job, generation, 0)) = &current {
                    tx.send(msg(Body::Progress(v1::JobProgress {
                        job: job.clone(),
                        generation: *generation,
                        step: tick,
                        ..Default::default()
                    })))
                    .await?;
                }
            }
            m = inbound.message() => {
                let Some(m) = m? else { bail!("supd ended the stream") };
                match m.body {
                    Some(SupBody::Registered(r)) => {
                        lease.registered(r.assignment_lease_ms, register_sent);
                        backoff.reset();
                        let fault = {
                            let mut view = lock(&shared.views[idx]);
                            view.registered = true;
                            view.registered_at = Some(Instant::now());
                            view.registered_url = url;
                            std::mem::take(&mut view.fault_on_register)
                        };
                        if fault {
                            let report = fault_report(idx, gpus);
                            lock(&shared.views[idx]).fault_sent = Some((Instant::now(), unix_ms()));
                            tx.send(msg(Body::Health(report))).await?;
                        }
                    }
                    Some(SupBody::Ack(ack)) => lease.acknowledged(ack.seq),
                    Some(SupBody::Assignment(a)) => {
                        let at = Instant::now();
                        let rank = a.job.as_ref().map_or(0, |j| j.node_rank);
                        lock(&shared.views[idx]).assignments.push((a.generation, a.job.is_some(), rank, at));
                        if *vanished {
                            continue;
                        }
                        // Like sup-agent: launch the ranks, then report them.
                        let status = match &a.job {
                            Some(j) => {
                                current = Some((j.job.clone(), a.generation, j.node_rank));
                                v1::RankStatus {
                                    job: j.job.clone(),
                                    generation: a.generation,
                                    running_local_ranks: (0..j.ranks_per_node).collect(),
                                    launched: true,
                                    launch_error: String::new(),
                                }
                            }
                            None => {
                                current = None;
                                v1::RankStatus { generation: a.generation, ..Default::default() }
                            }
                        };
                        tx.send(msg(Body::Ranks(status))).await?;
                        if a.job.is_some() {
                            lock(&shared.views[idx]).launched.insert(a.generation, Instant::now());
                        }
                    }
                    _ => {}
                }
            }
            c = commands.recv() => match c {
                Some(AgentCommand::Fault) => {
                    let report = fault_report(idx, gpus);
                    lock(&shared.views[idx]).fault_sent = Some((Instant::now(), unix_ms()));
                    tx.send(msg(Body::Health(report))).await?;
                }
                Some(AgentCommand::Vanish) => {
                    *vanished = true;
                    lock(&shared.views[idx]).vanished = Some((unix_ms(), last_report_ms));
                }
                // The coordinator is done: close the stream.
                None => return Ok(()),
            },
        }
    }
}

async fn poll_events(control: ControlServiceClient<Channel>, shared: Arc<Shared>) {
    let mut control = control;
    let mut after = 0u64;
    loop {
        // Forward from the last one seen, a page at a time: a registration
        // burst adds thousands of events between two polls.
        let mut more = false;
        if let Ok(r) = control
            .list_events(v1::ListEventsRequest {
                after_seq: after,
                limit: 0,
                from_oldest: true,
            })
            .await
        {
            let r = r.into_inner();
            if let Some(last) = r.events.last() {
                after = last.seq;
                more = r.omitted > 0;
            }
            lock(&shared.events).extend(r.events);
        }
        if !more {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    // Nearest rank: with few samples p99 is the maximum.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn summary(name: &str, samples: &[f64]) -> String {
    format!(
        "{name:<50} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   (n={})",
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0),
        samples.len()
    )
}

/// A summary that says how many of the attempts gave a sample.
fn summary_of(name: &str, samples: &[f64], attempts: usize) -> String {
    format!(
        "{} of {attempts}",
        summary(name, samples).trim_end_matches(')')
    ) + ")"
}

async fn get_job(control: &mut ControlServiceClient<Channel>) -> anyhow::Result<v1::Job> {
    Ok(control
        .get_job(v1::GetJobRequest {
            name: "bench".to_owned(),
        })
        .await?
        .into_inner())
}

/// Waits until the job runs a generation newer than `after`.
async fn wait_running(
    control: &mut ControlServiceClient<Channel>,
    after: u64,
    timeout: Duration,
) -> anyhow::Result<v1::Job> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(control).await?;
        if job.state == "running" && job.generation > after {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!(
                "job not running a generation after {after} within {timeout:?}: state {} gen {} ({})",
                job.state,
                job.generation,
                job.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client-side: when the last node of `job`'s generation reported launched
/// (`None` until all `node_count` of them have: GetJob lists at most 1,024
/// of a job's node ids, so they are counted here, not looked up).
fn all_launched_at(shared: &Shared, job: &v1::Job) -> Option<Instant> {
    let mut last: Option<Instant> = None;
    let mut launched = 0;
    for view in &shared.views {
        if let Some(&at) = lock(view).launched.get(&job.generation) {
            launched += 1;
            last = Some(last.map_or(at, |l: Instant| l.max(at)));
        }
    }
    (launched >= held_nodes(job)).then_some(last).flatten()
}

/// How many nodes `job` holds (GetJob lists at most 1,024 of their ids).
fn held_nodes(job: &v1::Job) -> usize {
    (job.node_count as usize).max(job.nodes.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a crash and restart of supd showed.
struct Storm {
    /// SIGKILL → the new supd accepting connections (its store opened).
    down: Duration,
    /// Accepting → every agent registered again: the registration storm.
    registering: Duration,
    /// The job's generation before and after, and its state after.
    generation: (u64, u64),
    state_after: String,
    /// Sessions re-opened by agents over the run.
    reconnects: u64,
    /// The new supd's CPU seconds and peak RSS (KiB) once all were back.
    cpu_s: f64,
    peak_rss_kib: u64,
}

async fn restart_storm(
    supd: &mut Supd,
    shared: &Shared,
    control: &mut ControlServiceClient<Channel>,
) -> anyhow::Result<Storm> {
    let before = get_job(control).await?;
    shared.restarting.store(true, Ordering::Relaxed);
    println!("crash: SIGKILL supd and start it again on the same store ...");
    let t_kill = Instant::now();
    supd.crash_and_restart()?;
    let pid = supd.child.id().to_string();
    let grpc = supd.grpc;
    loop {
        let up = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_ok()
        })
        .await?;
        if up {
            break;
        }
        if t_kill.elapsed() > Duration::from_secs(120) {
            bail!("the restarted supd did not listen within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t_listen = Instant::now();
    loop {
        let back = shared
            .views
            .iter()
            .filter(|v| {
                let v = lock(v);
                v.registered && v.registered_at.is_some_and(|t| t > t_kill)
            })
            .count();
        if back == shared.views.len() {
            break;
        }
        if t_listen.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {back}/{} agents registered again within 300 s of the restart",
                shared.views.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registering = t_listen.elapsed();
    let cpu_s = cpu_seconds(&pid)?;
    let peak_rss_kib = status_kib(&pid, "VmHWM:").unwrap_or(0);
    shared.restarting.store(false, Ordering::Relaxed);
    // The control channel reconnects on its own; the first calls may fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        match get_job(control).await {
            Ok(job) => break job,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Ok(Storm {
        down: t_listen - t_kill,
        registering,
        generation: (before.generation, after.generation),
        state_after: after.state,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        cpu_s,
        peak_rss_kib,
    })
}

/// The coordinator's picture of the agents, shared with every agent task.
fn new_shared(nodes: usize) -> Arc<Shared> {
    Arc::new(Shared {
        views: (0..nodes)
            .map(|_| Mutex::new(AgentView::default()))
            .collect(),
        sent_reports: AtomicU64::new(0),
        quiet: AtomicBool::new(false),
        events: Mutex::new(Vec::new()),
        failed_agents: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        restarting: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    })
}

/// Waits until a gRPC `uri` accepts a connection (supd opening its store
/// and binding), for up to 20 s. With `tls`, over https:// with that
/// identity (an operator: the controller submits the job).
async fn connect_control(
    uri: &str,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<ControlServiceClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut endpoint = Endpoint::from_shared(uri.to_owned())?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .context("the controller's TLS settings")?;
    }
    let control_channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("supd did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Ok(ControlServiceClient::new(control_channel))
}

/// Starts every simulated agent (given every supd URL in `uris`), a bounded
/// number connecting at a time, and waits until all are registered.
/// With `pki`, each agent presents its own node's certificate. Returns each
/// agent's command channel.
fn spawn_agents(
    args: &Args,
    uris: &[String],
    pki: Option<&tls::BenchPki>,
    shared: &Arc<Shared>,
    period: Duration,
) -> anyhow::Result<Vec<mpsc::UnboundedSender<AgentCommand>>> {
    let gate = Arc::new(Semaphore::new(args.connect_parallel.max(1)));
    let mut commands = Vec::with_capacity(args.nodes);
    for idx in 0..args.nodes {
        let (ctx, crx) = mpsc::unbounded_channel();
        commands.push(ctx);
        let shared = shared.clone();
        let gate = gate.clone();
        // Built once per agent and shared by its URLs: every reconnect
        // (the restart storm) then does a full handshake, as sup-agent does.
        let tls = pki.map(|pki| pki.node_config(idx)).transpose()?;
        let endpoints = uris
            .iter()
            .map(|uri| {
                let mut endpoint = Endpoint::from_shared(uri.clone())?
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10));
                if let Some(tls) = &tls {
                    endpoint = endpoint
                        .tls_config(tls.clone())
                        .with_context(|| format!("agent {idx}'s TLS settings"))?;
                }
                // As sup-agent's, with several URLs: a replica that does not
                // answer must not hold an agent up for long.
                Ok(if uris.len() > 1 {
                    endpoint.connect_timeout(Duration::from_secs(5))
                } else {
                    endpoint
                })
            })
            .collect::<anyhow::Result<Arc<[Endpoint]>>>()?;
        let gpus = args.gpus;
        tokio::spawn(agent(
            idx,
            endpoints,
            gate,
            gpus,
            period,
            shared,
            crx,
            args.backoff(),
        ));
    }
    Ok(commands)
}

/// Waits until every agent is registered; prints how long it took.
async fn wait_registered(args: &Args, shared: &Shared, t_connect: Instant) -> anyhow::Result<()> {
    loop {
        let registered = shared.views.iter().filter(|v| lock(v).registered).count();
        if registered == args.nodes {
            break;
        }
        if shared.failed_agents.load(Ordering::Relaxed) > 0 {
            bail!("some agents failed to connect; see above");
        }
        if t_connect.elapsed() > Duration::from_secs(300) {
            bail!("only {registered}/{} agents registered", args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "registered {} agents in {:.1} s",
        args.nodes,
        t_connect.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Lets every agent report (joined) and the registration burst settle,
/// then submits the job across all but `--spares` nodes and waits until
/// every agent launched it.
async fn submit_bench_job(
    args: &Args,
    control: &mut ControlServiceClient<Channel>,
    shared: &Shared,
    period: Duration,
) -> anyhow::Result<()> {
    // Let every agent report (joined) and the registration burst settle
    // before placing the job: every node ready.
    let t_settle = Instant::now();
    loop {
        tokio::time::sleep(period + Duration::from_millis(500)).await;
        // The status counts nodes by state (it lists at most 100 of them).
        let status = control
            .get_status(v1::GetStatusRequest {})
            .await?
            .into_inner();
        let ready = status.node_counts.map_or(0, |c| c.ready as usize);
        if ready == args.nodes {
            break;
        }
        if t_settle.elapsed() > Duration::from_secs(60) {
            println!(
                "note: only {ready}/{} nodes ready after 60 s; going on",
                args.nodes
            );
            break;
        }
    }

    let job_nodes = args.nodes - args.spares;
    let spec = format!(
        r#"name = "bench"
command = ["true"]
nodes = {job_nodes}
min_nodes = 1
gpus_per_node = {}
checkpoint_dir = "/tmp/sup-loadgen-ckpt"
checkpoint_layout = "dcp"
max_restarts = 100000
"#,
        args.gpus
    );
    let t_submit = Instant::now();
    control
        .submit_job(v1::SubmitJobRequest {
            spec_toml: spec,
            by: "loadgen".to_owned(),
            ..Default::default()
        })
        .await
        .context("submitting the job")?;
    let job = wait_running(control, 0, Duration::from_secs(60)).await?;
    let started = all_launched_at(shared, &job).map_or(f64::NAN, |t| ms(t - t_submit));
    println!(
        "job 'bench' on {} nodes: submit → every agent launched {:.0} ms (generation {})",
        held_nodes(&job),
        started,
        job.generation
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut supd = start_supd(&args)?;
    let pid = supd.child.id().to_string();
    let uri = supd.uri();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    println!(
        "sup-loadgen: {} nodes × {} GPUs = {} GPUs, {} Hz, supd pid {pid} (gRPC {}, {}, HTTP {}), unreachable_after {} ms",
        args.nodes,
        args.gpus,
        args.nodes as u64 * u64::from(args.gpus),
        args.rate,
        supd.grpc,
        transport_name(args.tls),
        supd.http,
        args.unreachable_after_ms
    );

    // supd takes a moment to open its store and bind.
    let pki = supd.pki.clone();
    let mut control = connect_control(&uri, pki.as_ref().map(|p| p.operator_config())).await?;

    let shared = new_shared(args.nodes);
    tokio::spawn(poll_events(control.clone(), shared.clone()));

    // Connect every agent, a bounded number at a time.
    let t_connect = Instant::now();
    let commands = spawn_agents(
        &args,
        std::slice::from_ref(&uri),
        pki.as_deref(),
        &shared,
        period,
    )?;
    wait_registered(&args, &shared, t_connect).await?;
    submit_bench_job(&args, &mut control, &shared, period).await?;

    // Steady state.
    println!("steady window: {} s ...", args.steady_secs);
    let scrapers = start_scrapers(args.scrapers, supd.http, &args.scrape_path);
    let cpu0 = cpu_seconds(&pid)?;
    let snapshots0 = snapshot_cost(supd.http).await?;
    let (acc0, scrape0) = accepted_reports(supd.http).await?;
    let sent0 = shared.sent_reports.load(Ordering::Relaxed);
    let own0 = cpu_seconds("self")?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(&pid)?;
    let snapshots1 = snapshot_cost(supd.http).await?;
    let own1 = cpu_seconds("self")?;
    let (acc1, scrape1) = accepted_reports(supd.http).await?;
    let sent1 = shared.sent_reports.load(Ordering::Relaxed);
    let accepted = acc1.saturating_sub(acc0);
    let supd_cpu = cpu1 - cpu0;
    let steady_rss = status_kib(&pid, "VmRSS:").unwrap_or(0);

    // Faults.
    let mut cordon_supd = Vec::new();
    let mut cordon_client = Vec::new();
    let mut swap_client = Vec::new();
    let mut swap_supd = Vec::new();
    let mut shrink_client = Vec::new();
    let mut shrink_supd = Vec::new();
    // With scrapers, every other fault is injected while they are paused:
    // recovery with and without them compared within one run, under the
    // same conditions (samples of the paused faults, in the same order).
    let mut quiet = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut unexpected = Vec::new();
    let index: BTreeMap<String, usize> = (0..args.nodes).map(|i| (node_id(i), i)).collect();
    let mut job = get_job(&mut control).await?;
    let total_faults = args.swap_faults + args.shrink_faults;
    if args.swap_faults > args.spares {
        println!(
            "note: {} swap faults but only {} spares; the rest will shrink",
            args.swap_faults, args.spares
        );
    }
    for n in 0..total_faults {
        // Use up leftover spares first so the shrink faults really shrink.
        if n == args.swap_faults {
            // The status lists at most 64 spare ids: repeat until none.
            loop {
                let status = control
                    .get_status(v1::GetStatusRequest {})
                    .await?
                    .into_inner();
                if status.spares.is_empty() {
                    break;
                }
                for s in status.spares {
                    control
                        .cordon(v1::CordonRequest {
                            node_id: s,
                            reason: "loadgen: empty the spare pool before shrink faults".to_owned(),
                            by: "loadgen".to_owned(),
                            ..Default::default()
                        })
                        .await?;
                }
            }
            job = get_job(&mut control).await?;
        }
        let victims: Vec<&String> = job.nodes.iter().skip(1).collect();
        let Some(victim) = victims.choose(&mut rand::rng()).map(|s| (*s).clone()) else {
            bail!("no node left to fault");
        };
        let vi = *index.get(&victim).context("victim not a simulated node")?;
        let paused = args.scrapers > 0 && n % 2 == 0;
        if args.scrapers > 0 {
            scrapers.paused.store(paused, Ordering::Relaxed);
            // A full round of scrapes (or none) before the fault.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        let before = held_nodes(&job);
        let prev_gen = job.generation;
        commands[vi]
            .send(AgentCommand::Fault)
            .map_err(|_| anyhow::anyhow!("agent {vi} is gone"))?;
        job = wait_running(&mut control, prev_gen, Duration::from_secs(30)).await?;
        let (sent_at, sent_ms) = lock(&shared.views[vi])
            .fault_sent
            .context("fault not sent")?;
        // Until the event poller has both events (reads come from a
        // snapshot up to 2 s old): a sample missing after that is counted
        // as missing (n of N).
        let running = format!("generation {} ", job.generation);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let seen = {
                let events = lock(&shared.events);
                let cordoned = events
                    .iter()
                    .any(|e| e.kind == "node_cordoned" && e.node == victim);
                let ran = events
                    .iter()
                    .any(|e| e.kind == "job_running" && e.reason.contains(&running));
                cordoned && ran
            };
            if seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A victim is in the job, so never cordoned before. supd stamps an
        // event with the start of the batch that made it, which can be a
        // few ms before the report was sent: such a cordon counts as 0 ms
        // (it used to be left out, as if it had not happened).
        if let Some(e) = lock(&shared.events)
            .iter()
            .find(|e| e.kind == "node_cordoned" && e.node == victim)
        {
            cordon_supd.push((e.at_unix_ms - sent_ms).max(0) as f64);
        }
        if let Some(&(_, _, _, at)) = lock(&shared.views[vi])
            .assignments
            .iter()
            .find(|(g, has_job, _, at)| *g > prev_gen && !has_job && *at >= sent_at)
        {
            cordon_client.push(ms(at - sent_at));
        }
        let client = all_launched_at(&shared, &job).map(|t| ms(t - sent_at));
        let server = lock(&shared.events)
            .iter()
            .rev()
            .find(|e| e.kind == "job_running" && e.reason.contains(&running))
            .and_then(|e| {
                e.reason
                    .split("every rank launched ")
                    .nth(1)
                    .and_then(|r| r.split(" ms").next())
                    .and_then(|v| v.parse::<f64>().ok())
            });
        let shrunk = held_nodes(&job) < before;
        let (c, s) = match (shrunk, paused) {
            (true, false) => (&mut shrink_client, &mut shrink_supd),
            (false, false) => (&mut swap_client, &mut swap_supd),
            (true, true) => {
                let [_, _, c, s] = &mut quiet;
                (c, s)
            }
            (false, true) => {
                let [c, s, _, _] = &mut quiet;
                (c, s)
            }
        };
        if let Some(v) = client {
            c.push(v);
        }
        if let Some(v) = server {
            s.push(v);
        }
        if shrunk != (n >= args.swap_faults) {
            unexpected.push(n);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    scrapers.paused.store(false, Ordering::Relaxed);

    // Drops: stop reporting, let the last ones land, compare totals (before
    // the restart: a crash loses what was in flight, on purpose).
    shared.quiet.store(true, Ordering::Relaxed);
    let sent_total = shared.sent_reports.load(Ordering::Relaxed);
    // Reports still in flight land within a moment; a busy machine gets
    // up to 15 s before a shortfall counts as dropped.
    let drain = Instant::now();
    let accepted_total = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (n, _) = accepted_reports(supd.http).await?;
        if n >= sent_total || drain.elapsed() > Duration::from_secs(15) {
            break n;
        }
    };
    let peak_rss = status_kib(&pid, "VmHWM:").unwrap_or(0);
    shared.quiet.store(false, Ordering::Relaxed);

    // A crash and restart of supd: every agent reconnects at once.
    let storm = if args.restart {
        Some(restart_storm(&mut supd, &shared, &mut control).await?)
    } else {
        None
    };
    let pid = supd.child.id().to_string();
    if storm.is_some() {
        // Until every restored node has reported again, the restarted supd
        // holds no silence against them (nodes.rejoin_grace): let every
        // agent report twice and one liveness check pass, so the vanished
        // agents below measure the steady-state detection.
        tokio::time::sleep(period * 2 + Duration::from_millis(args.unreachable_after_ms)).await;
    }

    // Vanished agents: silent, stream left open.
    let mut vanished = Vec::new();
    let job = get_job(&mut control).await?;
    let candidates: Vec<usize> = job
        .nodes
        .iter()
        .skip(1)
        .filter_map(|n| index.get(n).copied())
        .collect();
    let chosen: Vec<usize> = candidates
        .choose_multiple(&mut rand::rng(), args.vanish)
        .copied()
        .collect();
    for &vi in &chosen {
        let _ = commands[vi].send(AgentCommand::Vanish);
        vanished.push(vi);
        // Staggered, so the samples do not all share one liveness check.
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    tokio::time::sleep(Duration::from_millis(args.unreachable_after_ms + 3000)).await;
    let mut unreachable_since_vanish = Vec::new();
    let mut unreachable_since_report = Vec::new();
    let false_unreachable;
    {
        let events = lock(&shared.events);
        for &vi in &vanished {
            let Some((gone_ms, last_ms)) = lock(&shared.views[vi]).vanished else {
                continue;
            };
            let id = node_id(vi);
            if let Some(e) = events
                .iter()
                .find(|e| e.kind == "node_unreachable" && e.node == id && e.at_unix_ms >= gone_ms)
            {
                unreachable_since_vanish.push((e.at_unix_ms - gone_ms) as f64);
                unreachable_since_report.push((e.at_unix_ms - last_ms) as f64);
            }
        }
        let silenced: std::collections::HashSet<String> =
            vanished.iter().map(|&vi| node_id(vi)).collect();
        false_unreachable = events
            .iter()
            .filter(|e| e.kind == "node_unreachable" && !silenced.contains(&e.node))
            .count();
    }
    let peak_rss_after_restart = status_kib(&pid, "VmHWM:").unwrap_or(0);
    let (scraped, scrape_ran) = stop_scrapers(scrapers).await?;

    println!();
    println!("== steady state ({window:.0} s, {} Hz) ==", args.rate);
    println!(
        "sustained ingest                              {:.0} reports/s (sent {:.0}/s)",
        accepted as f64 / window,
        (sent1 - sent0) as f64 / window
    );
    println!(
        "supd CPU                                      {:.3} core ({:.2} CPU s per million reports)",
        supd_cpu / window,
        if accepted > 0 {
            supd_cpu / accepted as f64 * 1e6
        } else {
            f64::NAN
        }
    );
    println!(
        "supd RSS                                      {:.1} MiB steady, {:.1} MiB peak (VmHWM, whole run)",
        steady_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "/metrics scrape (whole cluster)               {:.0} ms, {:.0} ms",
        ms(scrape0),
        ms(scrape1)
    );
    let built = snapshots1.0 - snapshots0.0;
    let building = snapshots1.1 - snapshots0.1;
    println!(
        "state actor on readers' snapshots             {built:.0} built, {:.0} ms of actor time ({:.2} % of the window)",
        building * 1000.0,
        building / window * 100.0
    );
    if args.scrapers > 0 {
        let ok = scraped.latencies_ms.len();
        println!(
            "{:<45} {} scrapes in {:.0} s, {} failed, latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {:.2} MiB per scrape (as sent)",
            format!(
                "scrapers ({} × 1 Hz on {}, whole run)",
                args.scrapers, args.scrape_path
            ),
            ok as u64 + scraped.failed,
            scrape_ran.as_secs_f64(),
            scraped.failed,
            percentile(&scraped.latencies_ms, 50.0),
            percentile(&scraped.latencies_ms, 99.0),
            percentile(&scraped.latencies_ms, 100.0),
            if ok > 0 {
                scraped.body_bytes as f64 / ok as f64 / (1024.0 * 1024.0)
            } else {
                f64::NAN
            }
        );
        if let Some(e) = &scraped.first_error {
            eprintln!("scrapers: {} failed; the first: {e}", scraped.failed);
        }
    }
    println!(
        "load generator CPU                            {:.3} core",
        (own1 - own0) / window
    );
    println!(
        "reports sent / accepted (whole run)           {sent_total} / {accepted_total} ({} not accepted)",
        sent_total.saturating_sub(accepted_total)
    );
    println!(
        "reports dropped (whole run)                   {}",
        sent_total.saturating_sub(accepted_total)
    );
    println!();
    println!(
        "== faults ({} swap, {} shrink) ==",
        args.swap_faults, args.shrink_faults
    );
    println!(
        "{}",
        summary_of(
            "fault → cordon (supd event time)",
            &cordon_supd,
            args.swap_faults + args.shrink_faults
        )
    );
    println!(
        "{}",
        summary(
            "fault → cordon (agent sees assignment withdrawn)",
            &cordon_client
        )
    );
    let with = if args.scrapers > 0 {
        format!(", {} scrapers", args.scrapers)
    } else {
        String::new()
    };
    let recovery = [
        ("spare swap (agents launched", &swap_client, &quiet[0]),
        ("spare swap (supd job_running", &swap_supd, &quiet[1]),
        ("shrink (agents launched", &shrink_client, &quiet[2]),
        ("shrink (supd job_running", &shrink_supd, &quiet[3]),
    ];
    for (name, samples, paused) in recovery {
        println!("{}", summary(&format!("recovery, {name}{with})"), samples));
        if args.scrapers > 0 {
            println!(
                "{}",
                summary(&format!("recovery, {name}, scrapers paused)"), paused)
            );
        }
    }
    if !unexpected.is_empty() {
        println!("note: faults {unexpected:?} did not swap/shrink as planned");
    }
    println!();
    println!("== vanished agents ({}) ==", vanished.len());
    println!(
        "{}",
        summary(
            "silence → unreachable (since vanishing)",
            &unreachable_since_vanish
        )
    );
    println!(
        "{}",
        summary(
            "silence → unreachable (since last report)",
            &unreachable_since_report
        )
    );
    println!();
    match &storm {
        Some(storm) => {
            println!("== supd crash and restart ({} agents reconnecting at once, sup-agent's backoff) ==", args.nodes);
            println!(
                "SIGKILL → restarted supd accepting            {:.0} ms",
                ms(storm.down)
            );
            println!(
                "accepting → every agent registered again      {:.0} ms ({} sessions re-opened)",
                ms(storm.registering),
                storm.reconnects
            );
            println!(
                "restarted supd until then                     {:.1} CPU s, {:.1} MiB peak RSS",
                storm.cpu_s,
                storm.peak_rss_kib as f64 / 1024.0
            );
            println!(
                "job across the restart                        generation {} → {}, {} ({})",
                storm.generation.0,
                storm.generation.1,
                storm.state_after,
                if storm.generation.0 == storm.generation.1 && storm.state_after == "running" {
                    "untouched"
                } else {
                    "TOUCHED"
                }
            );
            println!(
                "restarted supd peak RSS (to the end)          {:.1} MiB",
                peak_rss_after_restart as f64 / 1024.0
            );
        }
        None => println!("(no restart: --restart false)"),
    }
    println!(
        "false unreachable events (whole run)          {false_unreachable} (node_unreachable for nodes never silenced)"
    );
    println!(
        "transport                                     {}",
        transport_name(args.tls)
    );
    shared.finished.store(true, Ordering::Relaxed);
    drop(commands);
    drop(supd);
    Ok(())
}
