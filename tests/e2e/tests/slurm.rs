//! Node state mirrored both ways with a real Slurm (issue 14): a real
//! slurmctld and three slurmds on this machine (Debian's slurm-wlm; the test
//! command installs it), supd with `[slurm] mode = "enforce"` and SLURM_CONF
//! pointing at the test's slurm.conf, and sup agents registered under the
//! Slurm node names. Every check goes through Slurm's own commands (`sinfo`,
//! `sinfo -R`, slurmctld's log) and `supctl -o json`.
//!
//! The tests run one at a time: each starts a Slurm, supd and three agents,
//! and the drain latency they print should measure sup, not a crowded
//! machine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sup_e2e::slurm::SlurmCluster;
use sup_e2e::*;

const NODES: [&str; 3] = ["sup-a", "sup-b", "sup-c"];

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

struct Cluster {
    // Dropped in this order: agents, supd, then Slurm.
    agents: Vec<Proc>,
    supd: Supd,
    slurm: SlurmCluster,
    url: String,
    work: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let work = tempfile::tempdir()?;
        let slurm = SlurmCluster::start(work.path(), &NODES)?;
        let mut supd = Supd::new(
            work.path(),
            "[grpc]\nplaintext = true\n[slurm]\nmode = \"enforce\"\n",
        )?;
        supd.env
            .push(("SLURM_CONF".to_owned(), slurm.conf.display().to_string()));
        supd.start()?;
        let url = supd.url();
        let agents = NODES
            .iter()
            .map(|name| {
                let state = work.path().join(format!("agent-{name}"));
                let state = state.display().to_string();
                start_agent(
                    work.path(),
                    &url,
                    name,
                    "127.0.0.1",
                    "sim:2",
                    &["--state-dir", &state, "--allow-drills"],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        wait_ready_nodes(&url, NODES.len())?;
        Ok(Cluster {
            agents,
            supd,
            slurm,
            url,
            work,
        })
    }

    fn node(&self, id: &str) -> Result<Value> {
        supctl_json(&self.url, &["node", id])
    }

    fn ok(&self, args: &[&str]) -> Result<()> {
        let out = supctl(&self.url, args)?;
        if !out.status.success() {
            bail!(
                "supctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits for `sinfo -R` to show `node` drained by sup; returns the
    /// reason and when it was first seen.
    fn wait_sup_drain(&self, node: &str, timeout: Duration) -> Result<(String, i64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((reason, _)) = self.slurm.reason_of(node)? {
                if reason.starts_with("sup:") {
                    return Ok((reason, now_ms()));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "sinfo -R never showed {node} drained by sup:\n{}",
                    self.slurm.sinfo(&["-R"])?
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn at_ms(event: &Value) -> Result<i64> {
    let at = event["at"].as_str().context("event without at")?;
    let t = humantime::parse_rfc3339(at).with_context(|| format!("event time {at}"))?;
    Ok(i64::try_from(
        t.duration_since(std::time::UNIX_EPOCH)?.as_millis(),
    )?)
}

fn cordon_event(url: &str, node: &str) -> Result<Value> {
    wait_for("the cordon event", Duration::from_secs(10), || {
        Ok(events_of(url, "node_cordoned", None)?
            .into_iter()
            .find(|e| {
                e["node"] == node
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("cordoned by"))
            }))
    })
}

#[test]
fn an_xid_79_drains_the_node_in_slurm_within_2s_and_uncordon_resumes_it() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start()?;
    c.ok(&[
        "drill", "xid", "--node", "sup-a", "--gpu", "0", "--xid", "79", "--by", "game-day",
    ])?;
    let cordoned = cordon_event(&c.url, "sup-a")?;
    let (reason, seen_at) = c.wait_sup_drain("sup-a", Duration::from_secs(10))?;
    let latency = seen_at - at_ms(&cordoned)?;
    eprintln!("sup-a drained in Slurm {latency} ms after the cordon: {reason:?}");
    assert!(latency <= 2000, "drain took {latency} ms");
    assert!(reason.starts_with("sup: "), "{reason}");
    assert_eq!(c.slurm.state_of("sup-a")?, "drained");
    let node = c.node("sup-a")?;
    assert_eq!(node["state"], "cordoned", "{node}");
    wait_for("sup to see its drain", Duration::from_secs(5), || {
        let node = c.node("sup-a")?;
        Ok((node["slurm"]["drained_by_sup"] == true).then_some(()))
    })?;

    c.ok(&["uncordon", "sup-a", "--skip-validation"])?;
    wait_for("sup-a idle in Slurm", Duration::from_secs(5), || {
        Ok((c.slurm.state_of("sup-a")? == "idle").then_some(()))
    })?;
    assert_eq!(c.slurm.reason_of("sup-a")?, None);
    Ok(())
}

#[test]
fn a_drain_by_someone_else_is_seen_kept_from_placement_and_not_resumed() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start()?;
    c.slurm.scontrol(&[
        "update",
        "nodename=sup-b",
        "state=drain",
        "reason=maintenance",
    ])?;
    let started = Instant::now();
    let node = wait_for(
        "sup to see sup-b drained by Slurm",
        Duration::from_secs(5),
        || {
            let node = c.node("sup-b")?;
            Ok((node["slurm"]["unavailable"] == true).then_some(node))
        },
    )?;
    eprintln!("seen by sup after {:?}", started.elapsed());
    assert_eq!(node["slurm"]["state"], "drained", "{node}");
    assert_eq!(node["slurm"]["reason"], "maintenance", "{node}");
    assert_eq!(node["slurm"]["drained_by_sup"], false, "{node}");
    let text = supctl(&c.url, &["node", "sup-b"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("maintenance"), "{text}");
    let text = supctl(&c.url, &["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains("sup-b")
            && l.contains("slurm drained")
            && l.contains("maintenance")),
        "{text}"
    );
    let status = supctl_json(&c.url, &["status"])?;
    assert!(
        !status["spares"].to_string().contains("sup-b"),
        "not a spare: {}",
        status["spares"]
    );

    // A 2-node job would take sup-a and sup-b (placement goes by id); it
    // gets sup-a and sup-c.
    let ckpt = c.work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        "name = \"train\"\ncommand = {}\nnodes = 2\ngpus_per_node = 2\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(100_000, 20, "0.1", 32)),
        ckpt.display()
    );
    submit_job(&c.url, c.work.path(), "train", &spec)?;
    let job = wait_for("the job running", Duration::from_secs(60), || {
        let job = job_status(&c.url, "train")?;
        Ok((job["state"] == "running").then_some(job))
    })?;
    assert_eq!(job["nodes"], serde_json::json!(["sup-a", "sup-c"]), "{job}");

    // sup's uncordon is no resume of another's drain.
    c.ok(&["uncordon", "sup-b", "--skip-validation"])?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.slurm.reason_of("sup-b")?,
        Some(("maintenance".to_owned(), "drained".to_owned()))
    );
    c.ok(&["job", "stop", "train"])?;
    kill_ranks_under(c.work.path());
    let _ = &c.agents;
    Ok(())
}

#[test]
fn a_drain_not_applied_when_supd_died_lands_after_the_restart_once() -> Result<()> {
    let _serial = serial();
    let mut c = Cluster::start()?;
    // slurmctld is down when the cordon happens: the drain cannot land.
    c.slurm.stop_ctld()?;
    c.ok(&["cordon", "sup-c", "--reason", "bad board"])?;
    std::thread::sleep(Duration::from_secs(1));
    c.supd.kill()?;
    c.slurm.start_ctld()?;
    assert_eq!(c.slurm.reason_of("sup-c")?, None, "not drained yet");
    c.supd.start()?;
    let (reason, _) = c.wait_sup_drain("sup-c", Duration::from_secs(15))?;
    assert_eq!(reason, "sup: bad board");
    // Once: the passes after it see the drain in place.
    std::thread::sleep(Duration::from_secs(3));
    let log = c.slurm.ctld_log();
    let set = log
        .lines()
        .filter(|l| l.contains("update_node: node sup-c reason set to: sup: bad board"))
        .count();
    assert_eq!(set, 1, "{log}");
    Ok(())
}
