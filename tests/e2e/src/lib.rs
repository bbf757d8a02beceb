//! Harness for end-to-end tests: runs the real `supd`, `sup-agent` and
//! `supctl` binaries as processes on loopback, each with its own ports and
//! directories, and kills every process it started when dropped (also when
//! a test fails).
//!
//! The binaries are taken from the target directory the tests were built
//! in (`cargo build --workspace --bins` first), or from `SUP_BIN_DIR`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// A real Slurm (slurmctld + slurmds) for the Slurm tests.
pub mod slurm;

/// A real etcd cluster for the etcd store's tests.
pub mod etcd;

/// Generous: CI machines are shared and noisy.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SUP_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().context("locating the test binary")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    Ok(dir.to_owned())
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` before the end-to-end tests (or set SUP_BIN_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// A port for a listener a test starts a moment later: free now, never
/// handed out twice in this test process, and taken from below the kernel's
/// ephemeral range. A port from `bind(:0)` would be free only until the next
/// connection or `bind(:0)` anyone makes meanwhile (an agent's progress
/// intake, a client socket) happens to draw it; below the ephemeral range
/// the kernel never hands a port out by itself. Free means bindable on
/// 127.0.0.1 and, where the host has IPv6, on `[::]`, where the example
/// trainer's rank 0 listens (dual-stack) for its peers.
pub fn free_port() -> Result<u16> {
    const LOWEST: u16 = 10_000;
    static CURSOR: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < LOWEST + 1_000 {
        // A host with an unusually wide ephemeral range: no quiet range left.
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
        return Ok(listener.local_addr()?.port());
    }
    let span = ephemeral_low - LOWEST;
    let mut cursor = CURSOR.lock().unwrap_or_else(|p| p.into_inner());
    // Each test binary starts elsewhere in the range, so one that runs after
    // another does not walk over the ports its predecessor's leftovers hold.
    let mut next = cursor.unwrap_or_else(|| {
        let seed = std::process::id().wrapping_mul(7_919);
        LOWEST + u16::try_from(seed % u32::from(span)).unwrap_or(0)
    });
    let ipv6 = TcpListener::bind("[::]:0").is_ok();
    for _ in 0..span {
        let port = next;
        next = if next + 1 >= ephemeral_low {
            LOWEST
        } else {
            next + 1
        };
        let v4 = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if v4 && (!ipv6 || TcpListener::bind(("::", port)).is_ok()) {
            *cursor = Some(next);
            return Ok(port);
        }
    }
    bail!("no free TCP port between {LOWEST} and {ephemeral_low}")
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, like a crash or an OOM kill: no chance to clean up.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
            child.wait()?;
        }
        Ok(())
    }

    /// Some(exit status) once the process has ended.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} was already killed", self.name),
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Always: libtest keeps a test's output to itself unless the test
        // fails, and a test that fails by returning an error (most do, through
        // `?`) is not panicking here, yet needs the logs just as much.
        {
            eprintln!("----- {} log ({}) -----", self.name, self.log.display());
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `f` until it returns Ok(Some(_)) or the timeout passes; the last
/// error or `what` explains a timeout.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `spec` to `<dir>/<name>.toml` and submits it with supctl; an error
/// carries supctl's stderr.
pub fn submit_job(supervisor: &str, dir: &Path, name: &str, spec: &str) -> Result<()> {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, spec)?;
    let out = supctl(supervisor, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "submitting {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A process's resident memory from /proc, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// A minimal HTTP/1.1 GET (no client library needed for loopback tests).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    http_get_with(port, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from :{port}{path}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status code in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        body = rest.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

/// One supd process with fixed ports, so it can be killed and restarted on
/// the same data dir and the same addresses. Dropped, it also kills the
/// training ranks of every job whose checkpoints are under its work dir
/// (each test's jobs are), so no test leaves ranks running.
pub struct Supd {
    pub grpc_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log_dir: PathBuf,
    pub proc: Option<Proc>,
    /// Start with --plaintext (the default for tests). A test that sets it
    /// to false puts a [grpc.tls] table in the config and uses https.
    pub plaintext: bool,
    /// Extra environment for supd (e.g. SLURM_CONF for the test's Slurm).
    pub env: Vec<(String, String)>,
    /// The address gRPC listens on (HTTP stays on loopback): an address
    /// of a veth the test made, for agents in network namespaces.
    pub grpc_host: String,
    starts: usize,
}

impl Supd {
    /// `config_toml` is written to a file and passed with --config.
    pub fn new(work: &Path, config_toml: &str) -> Result<Supd> {
        let config = work.join("supd.toml");
        std::fs::write(&config, config_toml)?;
        Ok(Supd {
            grpc_port: free_port()?,
            http_port: free_port()?,
            data_dir: work.join("supd-data"),
            config,
            log_dir: work.to_owned(),
            proc: None,
            plaintext: true,
            env: Vec::new(),
            grpc_host: "127.0.0.1".to_owned(),
            starts: 0,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.plaintext { "http" } else { "https" };
        format!("{scheme}://{}:{}", self.grpc_host, self.grpc_port)
    }

    pub fn start(&mut self) -> Result<()> {
        self.spawn()?;
        let port = self.http_port;
        wait_for("supd /readyz", STARTUP_TIMEOUT, || {
            self.still_running()?;
            Ok(matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(()))
        })
    }

    /// Starts a replica that stands by for leadership (etcd): up once it
    /// answers `/healthz` while `/readyz` says it is a standby.
    pub fn start_standby(&mut self) -> Result<()> {
        self.spawn()?;
        let port = self.http_port;
        wait_for("supd standing by", STARTUP_TIMEOUT, || {
            self.still_running()?;
            Ok(
                matches!(http_get(port, "/readyz"), Ok((503, body)) if body.contains("standby"))
                    .then_some(()),
            )
        })
    }

    /// Starts a replica that may win the election or stand by, whichever
    /// happens first (a replica restarted while another campaigns).
    pub fn start_replica(&mut self) -> Result<()> {
        self.spawn()?;
        let port = self.http_port;
        wait_for("supd leading or standing by", STARTUP_TIMEOUT, || {
            self.still_running()?;
            Ok(match http_get(port, "/readyz") {
                Ok((200, _)) => Some(()),
                Ok((503, body)) if body.contains("standby") => Some(()),
                _ => None,
            })
        })
    }

    fn still_running(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.exited()? {
                bail!("supd exited early with {status}:\n{}", p.log_text());
            }
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(bin("supd")?);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("{}:{}", self.grpc_host, self.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--log-format")
            .arg("json");
        if self.plaintext {
            cmd.arg("--plaintext");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(&format!("supd-{}", self.starts), cmd, &self.log_dir)?;
        self.proc = Some(proc);
        Ok(())
    }

    pub fn kill(&mut self) -> Result<()> {
        match self.proc.as_mut() {
            Some(p) => p.kill(),
            None => Ok(()),
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

impl Drop for Supd {
    fn drop(&mut self) {
        // supd first, so no new generation is launched meanwhile.
        let _ = self.kill();
        kill_ranks_under(&self.log_dir);
    }
}

pub fn start_agent(
    work: &Path,
    supervisor: &str,
    node_id: &str,
    address: &str,
    backend: &str,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = Command::new(bin("sup-agent")?);
    cmd.arg("--supervisor")
        .arg(supervisor)
        .arg("--node-id")
        .arg(node_id)
        .arg("--address")
        .arg(address)
        .arg("--gpu-backend")
        .arg(backend)
        .args(extra);
    Proc::spawn(&format!("agent-{node_id}"), cmd, work)
}

/// Starts agents `node-1` ..= `node-N`, each with two simulated GPUs,
/// address 127.0.0.1 and its state in `work/agent-<i>`. `supervisor(i)` is
/// the URL agent `i` dials (supd's, or a fault proxy in front of it).
pub fn start_sim_agents(
    work: &Path,
    count: usize,
    supervisor: impl Fn(usize) -> String,
    extra: &[&str],
) -> Result<Vec<Proc>> {
    (1..=count)
        .map(|i| {
            let state = work.join(format!("agent-{i}")).display().to_string();
            let mut args = vec!["--state-dir", state.as_str()];
            args.extend_from_slice(extra);
            start_agent(
                work,
                &supervisor(i),
                &format!("node-{i}"),
                "127.0.0.1",
                "sim:2",
                &args,
            )
        })
        .collect()
}

/// Waits until supd counts `count` ready nodes (the status counts every
/// node by state; its node list is capped).
pub fn wait_ready_nodes(url: &str, count: usize) -> Result<()> {
    wait_for(&format!("{count} ready nodes"), STARTUP_TIMEOUT, || {
        let s = supctl_json(url, &["status"])?;
        let ready = s["node_counts"]["ready"].as_u64().unwrap_or(0);
        Ok((ready == count as u64).then_some(()))
    })
}

/// Validates a `/metrics` body with `promtool check metrics`, the reference
/// validator (Debian package `prometheus`; the test command installs it).
pub fn promtool_check(body: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow!("promtool not runnable ({e}); install the 'prometheus' package (scripts/test.sh does)")
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("promtool stdin"))?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics failed:\n{}{}\n--- metrics ---\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs supctl to completion.
pub fn supctl(supervisor: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(bin("supctl")?)
        .arg("--supervisor")
        .arg(supervisor)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running supctl")?;
    Ok(out)
}

/// Runs `supctl ARGS -o json`, requires exit 0 and parses stdout.
pub fn supctl_json(supervisor: &str, args: &[&str]) -> Result<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = supctl(supervisor, &all)?;
    if !out.status.success() {
        bail!(
            "supctl {} failed with {}: {}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "supctl {} printed invalid JSON: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The repository root (for examples/ and deploy/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The example trainer's command line, for job specs.
pub fn trainer_command(
    steps: u32,
    checkpoint_every: u32,
    step_time: &str,
    params: u32,
) -> Vec<String> {
    let script = repo_root().join("examples/trainer/train.py");
    vec![
        "python3".to_owned(),
        script.display().to_string(),
        "--steps".to_owned(),
        steps.to_string(),
        "--checkpoint-every".to_owned(),
        checkpoint_every.to_string(),
        "--step-time".to_owned(),
        step_time.to_owned(),
        "--params".to_owned(),
        params.to_string(),
    ]
}

/// TOML for a string list.
pub fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The job named `name` from `supctl status -o json`.
pub fn job_status(supervisor: &str, name: &str) -> Result<Value> {
    let status = supctl_json(supervisor, &["status"])?;
    status["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["name"] == name))
        .cloned()
        .ok_or_else(|| anyhow!("job {name} not in status: {status}"))
}

/// Events of one kind (optionally about one job), oldest first.
pub fn events_of(supervisor: &str, kind: &str, job: Option<&str>) -> Result<Vec<Value>> {
    // Every kept event: without --all, supctl shows the newest 1,000.
    let all = supctl_json(supervisor, &["events", "--all"])?;
    Ok(all
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind && job.is_none_or(|j| e["job"] == j))
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

/// Processes (other than zombies) whose environment has every `KEY=VALUE`
/// in `env`: how tests find training ranks of a given job and generation.
pub fn processes_with_env(env: &[(&str, &str)]) -> Vec<u32> {
    let wanted: Vec<Vec<u8>> = env
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    processes_where(|vars| wanted.iter().all(|w| vars.contains(&w.as_slice())))
}

/// Live (not zombie) processes whose environment passes `keep`.
fn processes_where(keep: impl Fn(&[&[u8]]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 3 is the state; Z is a zombie waiting to be reaped.
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            !zombie && keep(&vars)
        })
        .collect()
}

/// SIGKILLs every training rank whose `SUP_CHECKPOINT_DIR` lies under
/// `dir`. Ranks run in process groups of their own (so a restarted agent can
/// re-adopt them), so killing an agent — as the chaos tests do on purpose —
/// leaves them behind; this is how a test cleans up what its agents started.
pub fn kill_ranks_under(dir: &Path) {
    let prefix = format!("SUP_CHECKPOINT_DIR={}", dir.display()).into_bytes();
    for pid in processes_where(|vars| vars.iter().any(|v| v.starts_with(&prefix))) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output();
    }
}

/// The fake NVML library (tests/fake-nvml), built next to the binaries.
pub fn fake_nvml_lib() -> Result<PathBuf> {
    let path = bin_dir()?.join("libfake_nvml.so");
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build -p fake-nvml` (scripts/test.sh does) before the GPU fault tests",
            path.display()
        );
    }
    Ok(path)
}

/// One node's fake GPUs: the state file its fake NVML library reads (format
/// in tests/fake-nvml/README.md).
pub struct FakeGpus {
    pub path: PathBuf,
}

impl FakeGpus {
    /// Writes `state` to `<work>/<node_id>-nvml.json`.
    pub fn new(work: &Path, node_id: &str, state: &Value) -> Result<FakeGpus> {
        let gpus = FakeGpus {
            path: work.join(format!("{node_id}-nvml.json")),
        };
        gpus.set(state)?;
        Ok(gpus)
    }

    /// Replaces the state atomically: the library may read at any moment.
    pub fn set(&self, state: &Value) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}

/// A sup-agent on the real NVML code path, loading the fake library with
/// `gpus` as its driver state.
pub fn start_fake_nvml_agent(
    work: &Path,
    supervisor: &str,
    node_id: &str,
    gpus: &FakeGpus,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = Command::new(bin("sup-agent")?);
    cmd.arg("--supervisor")
        .arg(supervisor)
        .arg("--node-id")
        .arg(node_id)
        .arg("--address")
        .arg("127.0.0.1")
        .arg("--gpu-backend")
        .arg("nvml")
        .arg("--nvml-lib")
        .arg(fake_nvml_lib()?)
        .env("FAKE_NVML_STATE", &gpus.path)
        .args(extra);
    Proc::spawn(&format!("agent-{node_id}"), cmd, work)
}

/// A fault-injecting TCP proxy on loopback, put between agents and supd to
/// cut them off without touching either process. Thread-based, no runtime.
///
/// - [`FaultProxy::pause`] stops forwarding in both directions and holds new
///   connections: to both ends it looks like packets being dropped (TCP
///   keeps the connection; bytes queue in the kernel). [`FaultProxy::resume`]
///   lets them through again, like a network that heals.
/// - [`FaultProxy::cut`] closes every connection it carries (a reset).
pub struct FaultProxy {
    pub port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    paused: std::sync::atomic::AtomicBool,
    /// Bumped by `cut`: connections of an older epoch close themselves.
    epoch: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    /// Connections accepted so far.
    accepted: std::sync::atomic::AtomicU64,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Result<FaultProxy> {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault proxy")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = std::sync::Arc::new(ProxyShared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        s.accepted.fetch_add(1, Ordering::SeqCst);
                        let s = s.clone();
                        std::thread::spawn(move || proxy_connection(client, target, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(FaultProxy { port, shared })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pause(&self) {
        self.shared
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.shared
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.shared
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn accepted(&self) -> u64 {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.paused.store(false, Ordering::SeqCst);
    }
}

fn proxy_connection(client: TcpStream, target: u16, s: &std::sync::Arc<ProxyShared>) {
    use std::sync::atomic::Ordering;
    let epoch = s.epoch.load(Ordering::SeqCst);
    let alive = |s: &ProxyShared| s.epoch.load(Ordering::SeqCst) == epoch;
    // A connection made while paused is held, not refused: a dropped SYN
    // looks the same to the client.
    while s.paused.load(Ordering::SeqCst) {
        if !alive(s) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let pairs = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    let mut threads = Vec::new();
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let s = s.clone();
        threads.push(std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if s.epoch.load(Ordering::SeqCst) != epoch {
                    break;
                }
                if s.paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// The overall status from supd's gRPC health service ("SERVING",
/// "NOT_SERVING", ...).
pub fn grpc_health(port: u16) -> Result<String> {
    grpc_health_of(port, "")
}

/// The status of one gRPC service (e.g. "sup.v1.AgentService") from supd's
/// health service.
pub fn grpc_health_of(port: u16, service: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(reply.into_inner().status().as_str_name().to_owned())
    })
}

/// The Python with PyTorch, JAX and Orbax installed that the real-library
/// tests run their jobs with: `SUP_TEST_PYTHON`, which the README's test
/// command sets (scripts/python-env.sh builds and caches the environment).
/// `None` when it is unset: a developer running `cargo test` alone has not
/// installed 6 GiB of libraries, and such a test says it was skipped. Set
/// but not runnable is an error, never a skip.
pub fn ml_python() -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os("SUP_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED: SUP_TEST_PYTHON is not set; run scripts/test.sh, or \
             SUP_TEST_PYTHON=$(scripts/python-env.sh)/bin/python cargo test ..."
        );
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let out = Command::new(&path)
        .args(["-c", "import torch, jax, orbax.checkpoint"])
        .output()
        .with_context(|| format!("SUP_TEST_PYTHON={} is not runnable", path.display()))?;
    if !out.status.success() {
        bail!(
            "SUP_TEST_PYTHON={} cannot import torch, jax and orbax: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Some(path))
}

/// The whole number right after `prefix` in `text` (an event's reason,
/// a log line).
pub fn number_after(text: &str, prefix: &str) -> Result<u64> {
    text.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no number after {prefix:?} in {text}"))
}

/// The node ids of a job as `supctl -o json` shows it (`"nodes"`).
pub fn nodes_of(job: &Value) -> Vec<String> {
    job["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
