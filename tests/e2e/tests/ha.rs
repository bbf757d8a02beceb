//! supd replicas on a real 3-member etcd (issue 15: leader election and
//! fencing): one leads, the other stands by (health only, `/readyz` 503
//! naming the leader, no gRPC). Killed with SIGKILL, the leader is replaced
//! within its lease; agents given both URLs follow it and the running job
//! is not restarted. Paused (SIGSTOP) past its lease and resumed, a
//! leader can neither write nor act: a job submitted and a cordon asked of
//! it while it was paused never land, and it steps down (exits, for systemd to restart it
//! as a standby). Cut off from etcd (a proxy between them stops forwarding)
//! but not from its agents, a leader only bridges their leases: they find
//! the replica that leads meanwhile and move to it, long before the bridge
//! is over, and the job runs on.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::etcd::EtcdCluster;
use sup_e2e::*;

const PREFIX: &str = "/sup-ha/";
const LEASE: &str = "2s";

fn config(etcd: &EtcdCluster, master_port: u16) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "20s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "3s"

[store]
backend = "etcd"
etcd_endpoints = {}
etcd_prefix = "{PREFIX}"
leader_lease = "{LEASE}"
"#,
        toml_list(&etcd.endpoints())
    )
}

/// A replica named `id`, in its own directory (logs, data dir).
fn replica(work: &std::path::Path, id: &str, config: &str) -> Result<Supd> {
    let dir = work.join(id);
    std::fs::create_dir_all(&dir)?;
    let mut supd = Supd::new(&dir, config)?;
    supd.env.push(("SUPD_ID".to_owned(), id.to_owned()));
    Ok(supd)
}

/// Kills, when dropped (last: declare it first), every rank the test's
/// agents started: they run in process groups of their own and outlive
/// their agents.
struct RanksUnder(std::path::PathBuf);

impl Drop for RanksUnder {
    fn drop(&mut self) {
        kill_ranks_under(&self.0);
    }
}

/// A 3-member etcd, replica a leading and b standing by.
struct Replicas {
    etcd: EtcdCluster,
    a: Supd,
    b: Supd,
}

fn replicas(work: &std::path::Path) -> Result<Replicas> {
    let etcd = EtcdCluster::start(work, 3)?;
    let cfg = config(&etcd, free_port()?);
    let mut a = replica(work, "a", &cfg)?;
    a.start()?;
    let mut b = replica(work, "b", &cfg)?;
    b.start_standby()?;
    Ok(Replicas { etcd, a, b })
}

fn signal(supd: &Supd, sig: &str) -> Result<()> {
    let pid = supd
        .proc
        .as_ref()
        .and_then(Proc::pid)
        .ok_or_else(|| anyhow!("supd is not running"))?;
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// The status and `Location` of an HTTP GET (redirects not followed).
fn redirect(port: u16, path: &str) -> Result<(u16, Option<String>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let location = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.trim().to_owned())
    });
    Ok((code, location))
}

fn readyz(supd: &Supd) -> Result<(u16, String)> {
    http_get(supd.http_port, "/readyz")
}

fn wait_leader(supd: &Supd, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    wait_for("the standby to lead", within, || {
        Ok(matches!(readyz(supd), Ok((200, _))).then_some(()))
    })?;
    Ok(started.elapsed())
}

fn submit(url: &str, work: &std::path::Path, name: &str, nodes: u32) -> Result<Output> {
    let ckpt = work.join(format!("ckpt-{name}"));
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        r#"name = "{name}"
command = {command}
nodes = {nodes}
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
"#,
        command = toml_list(&trainer_command(100_000, 50, "0.05", 16)),
        ckpt = ckpt.display(),
    );
    let file = work.join(format!("{name}.toml"));
    std::fs::write(&file, spec)?;
    supctl(url, &["job", "submit", &file.display().to_string()])
}

#[test]
fn a_paused_leader_cannot_write_or_act_after_its_lease_and_steps_down() -> Result<()> {
    let work = tempfile::tempdir()?;
    let _ranks = RanksUnder(work.path().to_owned());
    let Replicas { etcd, mut a, b } = replicas(work.path())?;
    let (code, body) = readyz(&b)?;
    assert_eq!(code, 503);
    assert!(
        body.contains("replica b follows the leader a") && body.contains(&a.url()),
        "{body}"
    );
    let (code, _) = http_get(b.http_port, "/healthz")?;
    assert_eq!(code, 200, "a standby is alive");
    // The dashboard and the API from the standby's address: the leader's.
    assert_eq!(
        redirect(b.http_port, "/api/v1/nodes?limit=5")?,
        (
            307,
            Some(format!(
                "http://127.0.0.1:{}/api/v1/nodes?limit=5",
                a.http_port
            ))
        )
    );
    assert!(
        supctl(&b.url(), &["status"])?.status.code() == Some(3),
        "a standby does not serve gRPC: supctl cannot reach it"
    );

    let both = format!("{},{}", a.url(), b.url());
    let _agents = start_sim_agents(work.path(), 1, |_| both.clone(), &[])?;
    wait_ready_nodes(&a.url(), 1)?;

    // Paused past its lease: b leads.
    signal(&a, "-STOP")?;
    let took = wait_leader(&b, Duration::from_secs(30))?;
    eprintln!("b leads {took:?} after a was paused (lease {LEASE})");
    // While a is paused, a job is submitted to it: the request waits in
    // a's socket; a, resumed, must not write it.
    let url_a = a.url();
    let work_dir = work.path().to_owned();
    let submitted = std::thread::spawn(move || submit(&url_a, &work_dir, "while-paused", 1));
    let url_a = a.url();
    let cordoned = std::thread::spawn(move || {
        supctl(
            &url_a,
            &["cordon", "node-1", "--reason", "decided while paused"],
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    signal(&a, "-CONT")?;
    for (what, thread) in [("submit", submitted), ("cordon", cordoned)] {
        let out = thread
            .join()
            .map_err(|_| anyhow!("the {what} thread panicked"))??;
        assert!(
            !out.status.success(),
            "a deposed leader must not acknowledge a {what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // It steps down: it exits, saying why.
    let status = a
        .proc
        .as_mut()
        .ok_or_else(|| anyhow!("a is not running"))?
        .wait_exit(Duration::from_secs(30))
        .context("a must step down")?;
    assert!(!status.success());
    let log = a.log_text();
    assert!(
        log.contains("this replica is no longer the leader")
            || log.contains("this supd replica was deposed"),
        "{log}"
    );
    let status = supctl_json(&b.url(), &["status"])?;
    assert_eq!(
        status["supervisor"],
        serde_json::json!({"id": "b", "role": "leader", "leader": "b", "store": "etcd"})
    );
    // Nothing a decided while deposed landed.
    let jobs = supctl_json(&b.url(), &["jobs"])?;
    assert_eq!(jobs, Value::Array(Vec::new()), "{jobs}");
    let keys = etcd.keys(PREFIX)?;
    assert!(!keys.iter().any(|k| k.contains("while-paused")), "{keys:?}");
    let node = etcd
        .get(&format!("{PREFIX}nodes/node-1"))?
        .ok_or_else(|| anyhow!("node-1 not in etcd"))?;
    assert!(!node.contains("decided while paused"), "{node}");
    assert_eq!(node_state(&b.url(), "node-1")?, "ready");
    // Restarted, a stands by behind b.
    a.start_standby()?;
    let (_, body) = readyz(&a)?;
    assert!(body.contains("follows the leader b"), "{body}");
    Ok(())
}

/// A 3-node job "llm" submitted through `url`, once it trains.
fn run_job(url: &str, work: &std::path::Path) -> Result<Value> {
    let out = submit(url, work, "llm", 3)?;
    if !out.status.success() {
        bail!("submit: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_for("the job running", Duration::from_secs(120), || {
        let job = job_status(url, "llm")?;
        Ok((job["state"] == "running" && job["step"].as_u64().unwrap_or(0) > 0).then_some(job))
    })
}

fn node_state(url: &str, id: &str) -> Result<String> {
    let nodes = supctl_json(url, &["nodes", "--all"])?;
    nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .and_then(|n| n["state"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("node {id} not in {nodes}"))
}

#[test]
fn the_leader_killed_the_standby_leads_agents_follow_and_the_job_runs_on() -> Result<()> {
    let work = tempfile::tempdir()?;
    let _ranks = RanksUnder(work.path().to_owned());
    let Replicas {
        etcd: _etcd,
        mut a,
        b,
    } = replicas(work.path())?;
    let both = format!("{},{}", a.url(), b.url());
    let _agents = start_sim_agents(work.path(), 5, |_| both.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&both, 5)?;

    // A job on three nodes, an operator's cordon on a fourth, the fifth
    // free for the drill.
    let running = run_job(&both, work.path())?;
    let generation = running["generation"].clone();
    let nodes = nodes_of(&running);
    let mut free = (1..=5)
        .map(|i| format!("node-{i}"))
        .filter(|n| !nodes.contains(n));
    let (cordoned, drilled) = match (free.next(), free.next()) {
        (Some(c), Some(d)) => (c, d),
        _ => bail!("the job holds more than three nodes: {running}"),
    };
    let out = supctl(
        &both,
        &[
            "cordon",
            &cordoned,
            "--reason",
            "e2e: acknowledged before the failover",
        ],
    )?;
    if !out.status.success() {
        bail!("cordon: {}", String::from_utf8_lossy(&out.stderr));
    }

    // The leader dies. The drill goes to whichever replica answers: the
    // new leader, once it serves.
    a.kill()?;
    let killed = Instant::now();
    wait_for(
        "a drill accepted by the new leader",
        Duration::from_secs(60),
        || {
            let out = supctl(
                &b.url(),
                &[
                    "drill", "xid", "--node", &drilled, "--gpu", "0", "--xid", "79",
                ],
            )?;
            Ok(out.status.success().then_some(()))
        },
    )?;
    let serving = killed.elapsed();
    wait_for("the drilled node cordoned", Duration::from_secs(60), || {
        Ok((node_state(&b.url(), &drilled)? == "cordoned").then_some(()))
    })?;
    eprintln!(
        "failover: the standby served {serving:?} and had cordoned the drilled node {:?} after the leader's SIGKILL (lease {LEASE})",
        killed.elapsed()
    );
    // Every agent follows the new leader; the job was not touched.
    wait_for(
        "all five agents connected to b",
        Duration::from_secs(60),
        || {
            let nodes = supctl_json(&b.url(), &["nodes", "--all"])?;
            let connected = nodes["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count());
            Ok((connected == 5).then_some(()))
        },
    )?;
    let job = job_status(&b.url(), "llm")?;
    assert_eq!(
        job["generation"], generation,
        "no restart by the failover: {job}"
    );
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(node_state(&b.url(), &cordoned)?, "cordoned");
    let restarts = events_of(&b.url(), "job_restarted", Some("llm"))?;
    assert!(restarts.is_empty(), "{restarts:?}");
    Ok(())
}

#[test]
fn losing_etcd_quorum_stops_supd_acting_without_touching_the_job_until_quorum_returns() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let _ranks = RanksUnder(work.path().to_owned());
    let Replicas {
        mut etcd,
        mut a,
        mut b,
    } = replicas(work.path())?;
    let both = format!("{},{}", a.url(), b.url());
    let _agents = start_sim_agents(work.path(), 3, |_| both.clone(), &[])?;
    wait_ready_nodes(&both, 3)?;
    let running = run_job(&both, work.path())?;
    let ckpt = format!("{}", work.path().join("ckpt-llm").display());
    let ranks = processes_with_env(&[("SUP_CHECKPOINT_DIR", ckpt.as_str())]);
    assert_eq!(ranks.len(), 6, "3 nodes × 2 ranks: {ranks:?}");

    // Two of three members gone: no quorum. The leader cannot renew its
    // lease: it stops acting at once, but keeps renewing the agents'
    // assignment leases (store.lease_bridge, 60 s by default), so training
    // goes on; both replicas say why nothing acts.
    let leader = etcd.leader()?;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    etcd.kill(others[0])?;
    etcd.kill(leader)?;
    let lost = Instant::now();
    for replica in [&a, &b] {
        let body = wait_for("/readyz naming etcd", Duration::from_secs(90), || {
            let (code, body) = readyz(replica)?;
            Ok((code == 503 && body.contains("cannot reach etcd")).then_some(body))
        })?;
        eprintln!("{}: {}", replica.url(), body.trim());
    }
    // Longer than the assignment lease (15 s): only the bridge keeps the
    // ranks alive now.
    while lost.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let alive: Vec<u32> = ranks
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert_eq!(alive, ranks, "no rank may die of a control-plane outage");
    assert!(
        a.proc
            .as_mut()
            .ok_or_else(|| anyhow!("a"))?
            .exited()?
            .is_none(),
        "the leader bridges the outage instead of exiting:\n{}",
        a.log_text()
    );

    // Quorum back: a replica leads again (a, whose etcd lease etcd kept
    // through the outage, or b after a learns it is gone and steps down),
    // the agents follow, and the job is the same generation, never
    // restarted.
    etcd.restart(leader)?;
    etcd.restart(others[0])?;
    let a_proc = a.proc.as_mut().ok_or_else(|| anyhow!("a"))?;
    let a_exited = wait_for(
        "a acting again or stepped down",
        Duration::from_secs(90),
        || {
            if a_proc.exited()?.is_some() {
                return Ok(Some(true));
            }
            Ok(matches!(http_get(a.http_port, "/readyz"), Ok((200, _))).then_some(false))
        },
    )?;
    if a_exited {
        // Restarted as systemd would: it may win the election itself.
        a.start_replica()?;
    }
    let serving = wait_for("a replica leading again", Duration::from_secs(90), || {
        for replica in [&a, &b] {
            if matches!(readyz(replica), Ok((200, _))) {
                return Ok(Some(replica.url()));
            }
        }
        Ok(None)
    })?;
    wait_for("the agents back", Duration::from_secs(60), || {
        let nodes = supctl_json(&serving, &["nodes", "--all"])?;
        let connected = nodes["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count());
        Ok((connected == 3).then_some(()))
    })?;
    let job = job_status(&serving, "llm")?;
    assert_eq!(job["generation"], running["generation"], "{job}");
    assert_eq!(job["state"], "running", "{job}");
    assert!(events_of(&serving, "job_restarted", Some("llm"))?.is_empty());
    let _ = b.kill();
    Ok(())
}

#[test]
fn a_leader_cut_off_from_etcd_hands_its_agents_to_the_replica_that_leads() -> Result<()> {
    let work = tempfile::tempdir()?;
    let _ranks = RanksUnder(work.path().to_owned());
    let etcd = EtcdCluster::start(work.path(), 1)?;
    let etcd_port: u16 = etcd.endpoints()[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {:?}", etcd.endpoints()))?;
    // a reaches etcd only through the proxy; b directly. a's bridge is long
    // (120 s) so that the agents' move can only be their own doing.
    let proxy = FaultProxy::start(etcd_port)?;
    let direct = config(&etcd, free_port()?);
    let via_proxy = direct.replace(&toml_list(&etcd.endpoints()), &toml_list(&[proxy.url()]))
        + "lease_bridge = \"120s\"\n";
    assert!(via_proxy.contains(&proxy.url()), "{via_proxy}");
    let mut a = replica(work.path(), "a", &via_proxy)?;
    a.start()?;
    let mut b = replica(work.path(), "b", &direct)?;
    b.start_standby()?;
    let both = format!("{},{}", a.url(), b.url());
    let agents = start_sim_agents(work.path(), 3, |_| both.clone(), &[])?;
    wait_ready_nodes(&a.url(), 3)?;
    let running = run_job(&a.url(), work.path())?;
    let ckpt = format!("{}", work.path().join("ckpt-llm").display());
    let ranks = processes_with_env(&[("SUP_CHECKPOINT_DIR", ckpt.as_str())]);
    assert_eq!(ranks.len(), 6, "3 nodes × 2 ranks: {ranks:?}");

    // The cut: a's requests to etcd go unanswered; the agents still reach a.
    proxy.pause();
    proxy.cut();
    let cut = Instant::now();
    let body = wait_for("a not acting", Duration::from_secs(60), || {
        let (code, body) = readyz(&a)?;
        Ok((code == 503 && body.contains("not acting")).then_some(body))
    })?;
    eprintln!("a: {}", body.trim());
    // Its agent service says so, for the agents of any replica that look
    // for the one that leads.
    wait_for(
        "a's agent service NOT_SERVING",
        Duration::from_secs(10),
        || Ok((grpc_health_of(a.grpc_port, "sup.v1.AgentService")? == "NOT_SERVING").then_some(())),
    )?;
    let led = wait_leader(&b, Duration::from_secs(60))?;
    let moved = wait_for(
        "all three agents connected to b",
        Duration::from_secs(90),
        || {
            let nodes = supctl_json(&b.url(), &["nodes", "--all"])?;
            let connected = nodes["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count());
            Ok((connected == 3).then(|| cut.elapsed()))
        },
    )?;
    eprintln!(
        "after a was cut off from etcd: b led at {led:?}, every agent had moved to b at {moved:?} \
         (a's bridge: 120 s; assignment lease 15 s)"
    );
    // a still bridges: the agents left it because b serves, not because a
    // stepped down.
    assert!(
        a.proc
            .as_mut()
            .ok_or_else(|| anyhow!("a"))?
            .exited()?
            .is_none(),
        "a must still be bridging:\n{}",
        a.log_text()
    );
    for agent in &agents {
        let log = agent.log_text();
        assert!(log.contains("only bridges the assignment lease"), "{log}");
    }
    let job = job_status(&b.url(), "llm")?;
    assert_eq!(job["generation"], running["generation"], "{job}");
    assert_eq!(job["state"], "running", "{job}");
    assert!(events_of(&b.url(), "job_restarted", Some("llm"))?.is_empty());
    let alive: Vec<u32> = ranks
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert_eq!(alive, ranks, "no rank may die of the move");
    Ok(())
}
