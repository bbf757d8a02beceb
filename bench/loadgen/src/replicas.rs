//! Failover of supd replicas (`--replicas N`, issue 15): a 3-member etcd
//! and N supd (store backend etcd, one prefix, each its own `--id`, data
//! dir and ports) on loopback, and the simulated agents given every
//! replica's gRPC URL: they find the leader with sup-agent's own rotation
//! (a standby binds no gRPC port, so it refuses the connection and the
//! agent tries the next URL at once; a whole round refused waits
//! sup-agent's jittered backoff).
//!
//! After every agent registered, the job runs and `--failover-settle-secs`
//! (plus a random part of the lease) passed, the leader is SIGKILLed. One
//! node of the job has been told to report an Xid 79 (a failed GPU) as soon
//! as its next session registers: a GPU that failed while its agent had no
//! supd, which the real agent reports again after every registration. From
//! the kill, measured on the load generator's clock:
//!
//! - the standby serving: its `/readyz` answers 200 (polled every 10 ms);
//! - every agent registered with the new leader (the last `Registered`);
//! - the fault sent (the faulted node registered with the new leader);
//! - the fault decided: the new leader's `node_cordoned` event for the node
//!   (supd's event time, on the same clock: both read the wall clock once
//!   and advance it by the monotonic clock);
//! - the job running again on a new generation (supd's `job_running` event:
//!   every rank of every node launched, so every agent back).
//!
//! The figure is the later of "every agent registered" and "fault decided".
//! The killed replica is then started again on its ports, as the next
//! standby, before the next run. Everything started here (supd, the etcd
//! members, the temporary dir) is killed and removed when the run ends,
//! fails, or is interrupted (Ctrl-C, SIGTERM).

use std::path::Path;
use std::process::ExitStatus;

use super::*;

/// etcd members started (3: the smallest cluster that survives losing one).
const ETCD_MEMBERS: usize = 3;
/// The prefix the replicas share in etcd.
const PREFIX: &str = "/sup-loadgen/";
/// A failover that has not finished by then is reported as a failure.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// A process started here, killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How it exited, if it did (then it is no longer running).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The last `n` lines of its log, for an error.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain HTTP/1.0 GET with short timeouts: the status and the body.
fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: loadgen\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((code, body))
}

async fn get_status(addr: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || http_status(addr, path))
        .await
        .ok()?
        .ok()
}

struct Replica {
    id: String,
    grpc: SocketAddr,
    http: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    proc: Option<Proc>,
}

impl Replica {
    fn uri(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn start(&mut self, binary: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info");
        self.proc = Some(Proc::spawn(
            &format!("supd {}", self.id),
            cmd,
            self.log_path.clone(),
        )?);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref()?.child.as_ref().map(Child::id)
    }

    /// Fails if it was started and has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "supd replica {} exited ({status}); the end of its log ({}):\n{}",
                    self.id,
                    p.log.display(),
                    p.log_tail(20)
                );
            }
        }
        Ok(())
    }

    /// Waits until `/readyz` says what `want` accepts.
    async fn wait_readyz(
        &mut self,
        what: &str,
        want: impl Fn(u16, &str) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check()?;
            if let Some((code, body)) = get_status(self.http, "/readyz").await {
                if want(code, &body) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("supd replica {} did not {what} within 60 s", self.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_leading(&mut self) -> anyhow::Result<()> {
        self.wait_readyz("lead", |code, _| code == 200).await
    }

    async fn wait_standing_by(&mut self) -> anyhow::Result<()> {
        self.wait_readyz("stand by", |code, body| {
            code == 503 && body.contains("follows the leader")
        })
        .await
    }
}

/// Everything a replicas run started. Dropped in this order: the replicas,
/// the etcd members, then the temporary dir.
struct Cluster {
    replicas: Vec<Replica>,
    etcd: Vec<Proc>,
    etcd_endpoints: Vec<String>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    async fn start(args: &Args) -> anyhow::Result<Cluster> {
        let (dir, tmp) = crate::work_dir(args)?;
        let mut cluster = Cluster {
            replicas: Vec::new(),
            etcd: Vec::new(),
            etcd_endpoints: Vec::new(),
            dir,
            _tmp: tmp,
        };
        cluster.start_etcd(args).await?;
        for i in 0..args.replicas {
            let id = ((b'a' + i as u8) as char).to_string();
            let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let rdir = cluster.dir.join(&id);
            std::fs::create_dir_all(&rdir)?;
            let config = format!(
                r#"{base}
[store]
backend = "etcd"
etcd_endpoints = [{endpoints}]
etcd_prefix = "{PREFIX}"
replica_id = "{id}"
leader_lease = "{lease}s"
"#,
                base = supd_config(args, &rdir.join("data"), grpc, http, None),
                endpoints = cluster
                    .etcd_endpoints
                    .iter()
                    .map(|e| format!("\"{e}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                lease = args.leader_lease_secs,
            );
            let config_path = rdir.join("supd.toml");
            std::fs::write(&config_path, config)?;
            let mut replica = Replica {
                id,
                grpc,
                http,
                config_path,
                log_path: rdir.join("supd.log"),
                proc: None,
            };
            replica.start(&args.supd)?;
            // The first leads; the others stand by, in order, so that the
            // agents (dialling the URLs in order) find the leader first.
            if i == 0 {
                replica.wait_leading().await?;
            } else {
                replica.wait_standing_by().await?;
            }
            cluster.replicas.push(replica);
        }
        Ok(cluster)
    }

    /// A 3-member etcd on free loopback ports, as the end-to-end tests run
    /// it (tests/e2e/src/etcd.rs); returns once every member is healthy.
    async fn start_etcd(&mut self, args: &Args) -> anyhow::Result<()> {
        let ports = (0..ETCD_MEMBERS)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<(u16, u16)>>>()?;
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("sup-loadgen-{}-{}", std::process::id(), unix_ms());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new(&args.etcd);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(self.dir.join(format!("etcd-{name}.data")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args([
                    "--heartbeat-interval",
                    &args.etcd_heartbeat_ms.to_string(),
                    "--election-timeout",
                    &args.etcd_election_ms.to_string(),
                ])
                .args(["--logger", "zap", "--log-level", "warn"]);
            self.etcd.push(
                Proc::spawn(
                    &format!("etcd {name}"),
                    cmd,
                    self.dir.join(format!("etcd-{name}.log")),
                )
                .context("starting etcd (Debian: apt-get install etcd-server)")?,
            );
            self.etcd_endpoints.push(client_url);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &mut self.etcd {
                if let Some(status) = m.exited() {
                    bail!("{} exited ({status}):\n{}", m.name, m.log_tail(20));
                }
            }
            let mut healthy = 0;
            for (client, _) in &ports {
                let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
                if let Some((200, body)) = get_status(addr, "/health").await {
                    if body.contains("\"health\":\"true\"") {
                        healthy += 1;
                    }
                }
            }
            if healthy == ports.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd: {healthy}/{} members healthy after 30 s", ports.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if a replica or etcd member that should run has exited (a
    /// leader whose lease lapsed exits on purpose: that is a finding).
    fn check(&mut self) -> anyhow::Result<()> {
        for r in &mut self.replicas {
            r.check()?;
        }
        for m in &mut self.etcd {
            if let Some(status) = m.exited() {
                bail!("{} exited ({status}):\n{}", m.name, m.log_tail(20));
            }
        }
        Ok(())
    }
}

/// What one failover showed; times from the SIGKILL, milliseconds.
struct Failover {
    killed: String,
    leader: String,
    /// The standby's `/readyz` answered 200.
    serving: f64,
    /// The last agent registered with the new leader.
    all_registered: f64,
    /// Each agent's registration with the new leader.
    per_agent: Vec<f64>,
    /// The faulted node sent its report (it registered with the new leader).
    fault_sent: Option<f64>,
    /// The new leader's `node_cordoned` event for the faulted node.
    cordoned: f64,
    /// The new leader's `job_running` event for the new generation.
    running_again: Option<f64>,
    generation: (u64, u64),
    /// Nodes the new generation holds (a fault decided before every agent
    /// is back places it on the nodes back by then, down to min_nodes).
    nodes_after: usize,
}

/// The newest event's seq (0 when none).
async fn newest_event_seq(control: &mut ControlServiceClient<Channel>) -> anyhow::Result<u64> {
    let r = control
        .list_events(v1::ListEventsRequest {
            after_seq: 0,
            limit: 1,
            from_oldest: false,
        })
        .await?
        .into_inner();
    Ok(r.events.last().map_or(0, |e| e.seq))
}

/// Every event after `*after`, a page at a time; moves `*after` on.
async fn events_after(
    control: &mut ControlServiceClient<Channel>,
    after: &mut u64,
) -> anyhow::Result<Vec<v1::Event>> {
    let mut all = Vec::new();
    loop {
        let r = control
            .list_events(v1::ListEventsRequest {
                after_seq: *after,
                limit: 0,
                from_oldest: true,
            })
            .await?
            .into_inner();
        if let Some(last) = r.events.last() {
            *after = last.seq;
        }
        all.extend(r.events);
        if r.omitted == 0 {
            return Ok(all);
        }
    }
}

/// A control client for `uri`, or `None` if it does not accept yet.
async fn try_control(uri: &str) -> Option<ControlServiceClient<Channel>> {
    let channel = Endpoint::from_shared(uri.to_owned())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    Some(ControlServiceClient::new(channel))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// One failover: the leader SIGKILLed, `victim` (told to report its fault
/// on its next registration) and every agent followed until the new leader
/// has them all and has cordoned the victim.
async fn failover(
    cluster: &mut Cluster,
    leader: usize,
    shared: &Shared,
    victim: usize,
    job: &v1::Job,
    after_seq: u64,
) -> anyhow::Result<(usize, Failover)> {
    let victim_id = node_id(victim);
    let nodes = shared.views.len();
    lock(&shared.views[victim]).fault_on_register = true;
    shared.restarting.store(true, Ordering::Relaxed);
    let t_kill = Instant::now();
    let kill_ms = unix_ms();
    if let Some(p) = cluster.replicas[leader].proc.as_mut() {
        p.kill();
    }
    let since = |t: Instant| ms(t.saturating_duration_since(t_kill));
    let mut serving: Option<(usize, f64)> = None;
    let mut all_registered: Option<f64> = None;
    let mut cordoned: Option<f64> = None;
    let mut control: Option<ControlServiceClient<Channel>> = None;
    let mut after = after_seq;
    let mut next_events = Instant::now();
    loop {
        cluster.check()?;
        let now = Instant::now();
        if serving.is_none() {
            for (i, r) in cluster.replicas.iter().enumerate() {
                if i == leader {
                    continue;
                }
                if let Some((200, _)) = get_status(r.http, "/readyz").await {
                    serving = Some((i, since(Instant::now())));
                    break;
                }
            }
        }
        if let Some((new, _)) = serving {
            if all_registered.is_none() {
                let mut back = 0;
                let mut last = t_kill;
                for v in &shared.views {
                    let v = lock(v);
                    if let Some(at) = v
                        .registered_at
                        .filter(|&at| v.registered && v.registered_url == new && at > t_kill)
                    {
                        back += 1;
                        last = last.max(at);
                    }
                }
                if back == nodes {
                    all_registered = Some(since(last));
                }
            }
            if cordoned.is_none() && now >= next_events {
                next_events = now + Duration::from_millis(100);
                if control.is_none() {
                    control = try_control(&cluster.replicas[new].uri()).await;
                }
                if let Some(c) = control.as_mut() {
                    if let Ok(events) = events_after(c, &mut after).await {
                        cordoned = events
                            .iter()
                            .find(|e| {
                                e.kind == "node_cordoned"
                                    && e.node == victim_id
                                    && e.at_unix_ms >= kill_ms
                            })
                            .map(|e| (e.at_unix_ms - kill_ms) as f64);
                    }
                }
            }
        }
        if all_registered.is_some() && cordoned.is_some() {
            break;
        }
        if t_kill.elapsed() > FAILOVER_TIMEOUT {
            let back = shared.views.iter().filter(|v| lock(v).registered).count();
            bail!(
                "failover not over {FAILOVER_TIMEOUT:?} after the kill: serving {serving:?}, \
                 {back}/{nodes} agents registered, every agent back {all_registered:?} ms, \
                 {victim_id} cordoned {cordoned:?} ms"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (new, serving) = serving.context("no replica serving")?;
    let per_agent: Vec<f64> = shared
        .views
        .iter()
        .filter_map(|v| lock(v).registered_at.map(since))
        .collect();
    let fault_sent = lock(&shared.views[victim])
        .fault_sent
        .filter(|&(at, _)| at > t_kill)
        .map(|(at, _)| since(at));
    // The job on a new generation, every rank launched (supd's event).
    let mut control = match control {
        Some(c) => c,
        None => connect_control(&cluster.replicas[new].uri(), None).await?,
    };
    let running = wait_running(&mut control, job.generation, Duration::from_secs(60)).await?;
    let tag = format!("generation {} ", running.generation);
    let mut running_again = None;
    let mut after = after_seq;
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_again.is_none() && Instant::now() < deadline {
        running_again = events_after(&mut control, &mut after)
            .await?
            .iter()
            .find(|e| e.kind == "job_running" && e.reason.contains(&tag) && e.at_unix_ms >= kill_ms)
            .map(|e| (e.at_unix_ms - kill_ms) as f64);
        if running_again.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok((
        new,
        Failover {
            killed: cluster.replicas[leader].id.clone(),
            leader: cluster.replicas[new].id.clone(),
            serving,
            all_registered: all_registered.unwrap_or(f64::NAN),
            per_agent,
            fault_sent,
            cordoned: cordoned.unwrap_or(f64::NAN),
            running_again,
            generation: (job.generation, running.generation),
            nodes_after: held_nodes(&running),
        },
    ))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let load_start = load_average();
    let mut cluster = Cluster::start(&args).await?;
    let uris: Vec<String> = cluster.replicas.iter().map(Replica::uri).collect();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    println!(
        "sup-loadgen: {} nodes × {} GPUs = {} GPUs, {} Hz, unreachable_after {} ms",
        args.nodes,
        args.gpus,
        args.nodes as u64 * u64::from(args.gpus),
        args.rate,
        args.unreachable_after_ms
    );
    println!(
        "replicas: {} supd on etcd (leader_lease {} s): {}",
        args.replicas,
        args.leader_lease_secs,
        cluster
            .replicas
            .iter()
            .map(|r| format!(
                "{} pid {} (gRPC {}, HTTP {})",
                r.id,
                r.pid().unwrap_or(0),
                r.grpc,
                r.http
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "etcd: {ETCD_MEMBERS} members ({}), --heartbeat-interval {} --election-timeout {}; \
         agents' reconnect backoff {}..{} ms; load average {load_start}",
        cluster.etcd_endpoints.join(","),
        args.etcd_heartbeat_ms,
        args.etcd_election_ms,
        args.reconnect_min_backoff_ms,
        args.reconnect_max_backoff_ms
    );

    let mut leader = 0;
    let mut control = connect_control(&uris[leader], None).await?;
    let shared = new_shared(args.nodes);
    let t_connect = Instant::now();
    let commands = spawn_agents(&args, &uris, None, &shared, period)?;
    wait_registered(&args, &shared, t_connect).await?;
    submit_bench_job(&args, &mut control, &shared, period).await?;
    if args.failover_runs > args.spares {
        println!(
            "note: {} failovers but {} spares: the faults after the spares run out shrink the job",
            args.failover_runs, args.spares
        );
    }
    let index: BTreeMap<String, usize> = (0..args.nodes).map(|i| (node_id(i), i)).collect();
    let lease = Duration::from_secs(args.leader_lease_secs);
    let mut runs = Vec::new();
    for run in 1..=args.failover_runs {
        // Steady running, then the kill anywhere in the renewal cycle.
        let settle =
            Duration::from_secs(args.failover_settle_secs) + lease.mul_f64(rand::random::<f64>());
        tokio::time::sleep(settle).await;
        cluster.check()?;
        let job = get_job(&mut control).await?;
        let victims: Vec<&String> = job.nodes.iter().skip(1).collect();
        let Some(victim) = victims.choose(&mut rand::rng()).map(|s| (*s).clone()) else {
            bail!("no node left to fault");
        };
        let vi = *index.get(&victim).context("victim not a simulated node")?;
        let after_seq = newest_event_seq(&mut control).await?;
        let load = load_average();
        let (new, f) = failover(&mut cluster, leader, &shared, vi, &job, after_seq).await?;
        println!(
            "failover {run}/{}: {} killed → {} serving {:.0} ms, all {} agents registered {:.0} ms \
             (p50 {:.0} ms), fault sent {} ms, cordoned {:.0} ms, job running again (generation {} → {}, {} nodes) {} ms; \
             figure {:.0} ms; load average {load}",
            args.failover_runs,
            f.killed,
            f.leader,
            f.serving,
            args.nodes,
            f.all_registered,
            percentile(&f.per_agent, 50.0),
            f.fault_sent.map_or("?".to_owned(), |v| format!("{v:.0}")),
            f.cordoned,
            f.generation.0,
            f.generation.1,
            f.nodes_after,
            f.running_again
                .map_or("?".to_owned(), |v| format!("{v:.0}")),
            f.all_registered.max(f.cordoned),
        );
        runs.push(f);
        // The killed replica back, as the next standby (systemd would).
        let old = leader;
        leader = new;
        control = connect_control(&uris[leader], None).await?;
        cluster.replicas[old].start(&args.supd)?;
        cluster.replicas[old].wait_standing_by().await?;
        shared.restarting.store(false, Ordering::Relaxed);
    }

    let col = |f: fn(&Failover) -> Option<f64>| -> Vec<f64> { runs.iter().filter_map(f).collect() };
    println!();
    println!(
        "== failover ({} runs: the leader SIGKILLed, {} agents given all {} URLs, leader_lease {} s) ==",
        runs.len(),
        args.nodes,
        args.replicas,
        args.leader_lease_secs
    );
    println!(
        "{}",
        summary(
            "kill → standby serving (/readyz 200)",
            &col(|f| Some(f.serving))
        )
    );
    println!(
        "{}",
        summary(
            "kill → every agent registered with the new leader",
            &col(|f| Some(f.all_registered))
        )
    );
    println!(
        "{}",
        summary(
            "kill → fault sent (node back with the new leader)",
            &col(|f| f.fault_sent)
        )
    );
    println!(
        "{}",
        summary(
            "kill → fault decided (node_cordoned, supd time)",
            &col(|f| Some(f.cordoned))
        )
    );
    println!(
        "{}",
        summary(
            "kill → every agent back and the fault decided",
            &col(|f| Some(f.all_registered.max(f.cordoned)))
        )
    );
    println!(
        "{}",
        summary(
            "kill → job running again (job_running, supd time)",
            &col(|f| f.running_again)
        )
    );
    let pooled: Vec<f64> = runs
        .iter()
        .flat_map(|f| f.per_agent.iter().copied())
        .collect();
    println!(
        "{}",
        summary("kill → each agent registered (all runs pooled)", &pooled)
    );
    println!(
        "sessions re-opened over the run                    {}",
        shared.reconnects.load(Ordering::Relaxed)
    );
    println!(
        "load average at the start / end                    {load_start} / {}",
        load_average()
    );
    shared.finished.store(true, Ordering::Relaxed);
    drop(commands);
    drop(cluster);
    Ok(())
}
