//! The assignment lease with real network separation: a node cut off from
//! supd (a route in its own network namespace) while its ranks still reach
//! their peers and the checkpoint directory. Its agent kills its ranks when
//! its lease runs out; supd starts the replacement generation only after
//! that, and says so; at no moment do ranks of two generations of the job
//! run, and every checkpoint written after the cut is one generation's.
//!
//! Needs root (namespaces, veth); skipped with a message otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::*;

const LEASE_S: u64 = 15;
/// `sup_core::LEASE_MARGIN_MS`.
const MARGIN: Duration = Duration::from_secs(2);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace joined to this one by a veth pair, removed (with the
/// pair) when dropped. The host side has two addresses: `.1` for supd and
/// `.3` for the ranks' peers, so a route can cut one and not the other.
struct Node {
    name: String,
    subnet: String,
    /// The host's end of the veth pair.
    host_link: String,
}

impl Node {
    fn create() -> Result<Node> {
        let id = std::process::id();
        let name = format!("sup-lease-{id}");
        let subnet = format!("10.231.{}", id % 250 + 1);
        let (host, peer) = (
            format!("vlh{}", id % 100_000),
            format!("vln{}", id % 100_000),
        );
        // The guard exists before the first command, so a failure midway
        // still removes what was made.
        let node = Node {
            name,
            subnet,
            host_link: host.clone(),
        };
        ip(&["netns", "add", &node.name])?;
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &node.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", node.subnet),
            "dev",
            &host,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.3/24", node.subnet),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", node.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&[
            "addr",
            "add",
            &format!("{}.2/24", node.subnet),
            "dev",
            &peer,
        ])?;
        inside(&["link", "set", &peer, "up"])?;
        // The agent's progress intake and its ranks use loopback.
        inside(&["link", "set", "lo", "up"])?;
        Ok(node)
    }

    fn supd_addr(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn peers_addr(&self) -> String {
        format!("{}.3", self.subnet)
    }

    fn own_addr(&self) -> String {
        format!("{}.2", self.subnet)
    }

    /// From here on nothing passes between the namespace and supd's
    /// address, either way; its peers' address still answers. Inside the
    /// namespace: a route drops what it sends to supd, and a rule what it
    /// receives from supd, placed before the lookup of local addresses
    /// (which moves from preference 0 to 20 for it).
    fn cut_from_supd(&self) -> Result<()> {
        let (supd, own) = (
            format!("{}/32", self.supd_addr()),
            format!("{}/32", self.own_addr()),
        );
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", self.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["route", "add", "blackhole", &supd])?;
        inside(&[
            "rule",
            "add",
            "pref",
            "10",
            "from",
            &supd,
            "to",
            &own,
            "blackhole",
        ])?;
        inside(&["rule", "add", "pref", "20", "lookup", "local"])?;
        inside(&["rule", "del", "pref", "0"])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The pair goes with either end, but the namespace's end only
        // once the kernel has torn the namespace down, which can lag.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn can_make_namespaces() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && Command::new("ip").arg("-V").output().is_ok()
}

/// The job's live ranks: (pid, generation, node).
fn job_ranks() -> Vec<(u32, u64, String)> {
    processes_with_env(&[("SUP_JOB", "cut")])
        .into_iter()
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let var = |name: &str| {
                environ
                    .split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(format!("{name}=").as_bytes()))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            Some((
                pid,
                var("SUP_GENERATION")?.parse().ok()?,
                var("SUP_NODE_ID")?,
            ))
        })
        .collect()
}

/// Every complete checkpoint's shards match its metadata (one save by one
/// generation wrote them all); returns (step, generation) of each.
fn checkpoints(dir: &Path) -> Result<Vec<(u64, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.join("COMPLETE").is_file() {
            continue;
        }
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("metadata.json"))?)?;
        let step = meta["step"]
            .as_u64()
            .ok_or_else(|| anyhow!("no step in {}", path.display()))?;
        let generation = meta["generation"].as_u64().unwrap_or(0);
        for shard in meta["shards"].as_array().into_iter().flatten() {
            let file = shard["file"]
                .as_str()
                .ok_or_else(|| anyhow!("shard file"))?;
            let bytes = std::fs::read(path.join(file))?;
            let digest = sha256_hex(&bytes)?;
            if shard["sha256"].as_str() != Some(digest.as_str()) {
                bail!(
                    "{} in {} is not the file its metadata names: mixed generations",
                    file,
                    path.display()
                );
            }
        }
        found.push((step, generation));
    }
    found.sort();
    Ok(found)
}

/// Every rank log under an agent's state dir, for a failure message.
fn rank_logs(state_dir: &Path) -> String {
    let mut text = String::new();
    let mut dirs = vec![state_dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(15).collect();
                text.push_str(&format!("----- {} -----\n", path.display()));
                for line in tail.iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    text
}

fn sha256_hex(bytes: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("sha256sum stdin"))?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn a_node_cut_off_from_supd_stops_its_ranks_at_its_lease_before_the_job_starts_again() -> Result<()>
{
    if !can_make_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 for network namespaces (CI runs as root)");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let node = Node::create()?;
    // The job keeps progressing after the cut (its ranks reach their
    // peers), so supd replaces the node after lost_node_grace, before the
    // lease has run out: the lease is what holds the next generation.
    let config = format!(
        r#"[nodes]
unreachable_after = "3s"
telemetry_interval = "1s"
[jobs]
master_port = {}
stop_grace = "2s"
lost_node_grace = "4s"
assignment_lease = "{LEASE_S}s"
"#,
        free_port()?
    );
    let mut supd = Supd::new(work.path(), &config)?;
    supd.grpc_host = node.supd_addr();
    supd.start()?;
    let url = supd.url();
    let state = |i: u32| work.path().join(format!("agent-{i}")).display().to_string();
    // node-1 holds rank 0 (its address is the peers' one), node-2 is the
    // namespace, node-3 the spare.
    let mut agents = vec![start_agent(
        work.path(),
        &url,
        "node-1",
        &node.peers_addr(),
        "sim:1",
        &["--state-dir", &state(1)],
    )?];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name])
        .arg(bin("sup-agent")?)
        .args([
            "--supervisor",
            &url,
            "--node-id",
            "node-2",
            "--address",
            &node.own_addr(),
        ])
        .args(["--gpu-backend", "sim:1", "--state-dir", &state(2)]);
    agents.push(Proc::spawn("agent-node-2", cmd, work.path())?);
    wait_ready_nodes(&url, 2)?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    submit_job(
        &url,
        work.path(),
        "cut",
        &format!(
            "name = \"cut\"\ncommand = {}\nnodes = 2\nmin_nodes = 2\ngpus_per_node = 1\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
            toml_list(&trainer_command(100_000, 5, "0.1", 64)),
            ckpt.display()
        ),
    )?;
    let job = wait_for(
        "the job running with a checkpoint",
        Duration::from_secs(120),
        || {
            let job = job_status(&url, "cut")?;
            Ok((job["state"] == "running" && !job["checkpoint"].is_null()).then_some(job))
        },
    )?;
    let old = job["generation"]
        .as_u64()
        .ok_or_else(|| anyhow!("generation"))?;
    assert_eq!(nodes_of(&job), ["node-1", "node-2"]);
    // The spare joins now, so the job started on node-1 and node-2.
    agents.push(start_agent(
        work.path(),
        &url,
        "node-3",
        &node.peers_addr(),
        "sim:1",
        &["--state-dir", &state(3)],
    )?);
    wait_for("node-3 ready", STARTUP_TIMEOUT, || {
        let node = supctl_json(&url, &["node", "node-3"])?;
        Ok((node["state"] == "ready").then_some(()))
    })?;
    assert!(
        job_ranks()
            .iter()
            .any(|(_, g, n)| *g == old && n == "node-2"),
        "node-2 runs ranks of generation {old}"
    );

    node.cut_from_supd()?;
    let cut = Instant::now();
    let step_at_cut = job_status(&url, "cut")?["step"].as_u64().unwrap_or(0);

    // Watch, every 50 ms, for node-2's ranks to die and for the first rank
    // of any newer generation, and that the two never overlap.
    let mut node2_gone: Option<Duration> = None;
    let mut new_seen: Option<(Duration, u64)> = None;
    let deadline = cut + Duration::from_secs(120);
    while new_seen.is_none() {
        if Instant::now() > deadline {
            bail!(
                "no new generation within 120 s of the cut; supd log:\n{}",
                supd.log_text()
            );
        }
        let ranks = job_ranks();
        let node2_alive = ranks.iter().any(|(_, _, n)| n == "node-2");
        if !node2_alive && node2_gone.is_none() {
            node2_gone = Some(cut.elapsed());
        }
        if let Some((_, g, _)) = ranks.iter().find(|(_, g, _)| *g > old) {
            if node2_alive {
                bail!("generation {g} started while node-2 still ran generation {old}'s ranks");
            }
            new_seen = Some((cut.elapsed(), *g));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let node2_gone = node2_gone.ok_or_else(|| anyhow!("node-2's ranks never stopped"))?;
    let (new_at, new_generation) = new_seen.ok_or_else(|| anyhow!("no new generation"))?;
    println!(
        "cut at 0 s: node-2's ranks killed by their lease after {:.1} s (lease {LEASE_S} s); \
         generation {new_generation} first seen after {:.1} s",
        node2_gone.as_secs_f64(),
        new_at.as_secs_f64()
    );
    assert!(
        node2_gone <= Duration::from_secs(LEASE_S) + MARGIN,
        "node-2's ranks outlived its lease plus the margin supd counts on: {node2_gone:?}"
    );
    let agent2 = agents[1].log_text();
    assert!(
        agent2.contains("no supervisor has acknowledged this node for its assignment lease"),
        "{agent2}\n{}",
        rank_logs(&work.path().join("agent-2"))
    );

    // supd's side, in its events: it waited for the lease, said why, and
    // started the next generation once it ran out.
    let job = wait_for("the job running again", Duration::from_secs(120), || {
        let job = job_status(&url, "cut")?;
        Ok((job["state"] == "running" && job["generation"].as_u64() > Some(old)).then_some(job))
    })?;
    assert!(!nodes_of(&job).contains(&"node-2".to_owned()), "{job}");
    let pending = events_of(&url, "job_pending", Some("cut"))?;
    let waited = pending
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .find(|r| r.contains("for the assignment lease of node node-2"))
        .ok_or_else(|| anyhow!("no job_pending event names node-2's lease: {pending:?}"))?;
    assert!(
        waited.starts_with("node node-2 lost: unreachable for"),
        "{waited}"
    );
    let restarted = events_of(&url, "job_restarted", Some("cut"))?;
    let reason = restarted
        .last()
        .and_then(|e| e["reason"].as_str())
        .ok_or_else(|| anyhow!("no job_restarted event"))?;
    assert!(
        reason.starts_with("node node-2 lost: unreachable for")
            && reason.contains("; the assignment lease of node-2 ran out (the previous generation's ranks there are gone)"),
        "{reason}"
    );

    // Every complete checkpoint in the directory is one generation's whole
    // save (its shards are the files its metadata names), those of the new
    // generation included.
    wait_for(
        "a checkpoint of the new generation",
        Duration::from_secs(120),
        || {
            Ok(checkpoints(&ckpt)?
                .iter()
                .any(|(_, g)| *g >= new_generation)
                .then_some(()))
        },
    )?;
    drop(agents);
    kill_ranks_under(work.path());
    let saved = checkpoints(&ckpt)?;
    assert!(
        saved
            .iter()
            .any(|(step, g)| *g == old && *step > step_at_cut),
        "the old generation saved after the cut (it still reached its peers): {saved:?}"
    );
    Ok(())
}
