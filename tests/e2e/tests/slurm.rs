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

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sup_e2e::slurm::{SlurmCluster, TestUser};
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

/// `squeue --steps` of one Slurm job: (step id, name, nodes, user).
fn steps_of(slurm: &SlurmCluster, job_id: &str) -> Result<Vec<(String, String, String, String)>> {
    let out = slurm.command_out("squeue", &["-h", "-s", "-j", job_id, "-o", "%i|%j|%N|%u"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 4).then(|| (f[0].into(), f[1].into(), f[2].into(), f[3].into()))
        })
        .collect())
}

/// `Key=Value` from `scontrol show ...` output.
fn field(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// Issue 14, item 2: a batch job with 3 nodes runs a sup job on 2 of them
/// with the third as its spare; the ranks are Slurm job steps, running as
/// the (non-root) user who submitted the batch job; an Xid drill
/// moves the job to the spare from the newest complete checkpoint; the job
/// succeeds, `supctl job wait` returns 0 and the allocation ends.
#[test]
fn a_batch_job_runs_its_ranks_as_slurm_steps_and_moves_to_its_spare_on_an_xid() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    // Dropped last: its processes are gone by then.
    let user = TestUser::ensure("sup-e2e-batch")?;
    let work = tempfile::tempdir()?;
    // The user's files live in a dir of theirs, which they must reach.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let home = work.path().join("batch-user");
    user.own_dir(&home)?;
    let slurm = SlurmCluster::start(work.path(), &NODES)?;
    let conf = slurm.conf.display().to_string();
    let mut supd = Supd::new(
        work.path(),
        "[grpc]\nplaintext = true\n[slurm]\nmode = \"enforce\"\n",
    )?;
    supd.env.push(("SLURM_CONF".to_owned(), conf.clone()));
    supd.start()?;
    let url = supd.url();
    let mut agents = Vec::new();
    for name in NODES {
        let state = work.path().join(format!("agent-{name}"));
        let mut cmd = std::process::Command::new(bin("sup-agent")?);
        cmd.args([
            "--supervisor",
            &url,
            "--node-id",
            name,
            "--address",
            "127.0.0.1",
        ])
        .args(["--gpu-backend", "sim:2", "--allow-drills"])
        .args(["--slurm-node-name", name])
        .arg("--state-dir")
        .arg(&state)
        .env("SLURM_CONF", &conf);
        agents.push(Proc::spawn(&format!("agent-{name}"), cmd, work.path())?);
    }
    wait_ready_nodes(&url, NODES.len())?;

    // The batch script of the README's template, submitted by the user.
    let ckpt = home.join("ckpt");
    user.own_dir(&ckpt)?;
    const EVERY: u64 = 10;
    let spec = format!(
        "name = \"train\"\ncommand = {}\nnodes = 2\ngpus_per_node = 1\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(160, EVERY as u32, "0.1", 32)),
        ckpt.display()
    );
    let spec_file = home.join("job.toml");
    std::fs::write(&spec_file, spec)?;
    let supctl_bin = bin("supctl")?.display().to_string();
    let script = home.join("batch.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n{supctl_bin} --supervisor {url} job submit --slurm-job \"$SLURM_JOB_ID\" {}\nexec {supctl_bin} --supervisor {url} job wait train\n",
            spec_file.display()
        ),
    )?;
    let batch_out = home.join("batch.out");
    let submitted = slurm.command_as(
        &user,
        "sbatch",
        &[
            "--parsable",
            "--no-kill",
            "-N",
            "3",
            "-o",
            &batch_out.display().to_string(),
            &script.display().to_string(),
        ],
    )?;
    let job_id = submitted.trim().split(';').next().unwrap_or("").to_owned();
    eprintln!("sbatch: Slurm job {job_id}");

    // Placed on two of the allocation's nodes (by id: sup-a, sup-b), the
    // third its spare.
    let job = wait_for("the job running", Duration::from_secs(60), || {
        let job = job_status(&url, "train").ok();
        Ok(job.filter(|j| j["state"] == "running"))
    })
    .with_context(|| std::fs::read_to_string(&batch_out).unwrap_or_default())?;
    assert_eq!(job["nodes"], serde_json::json!(["sup-a", "sup-b"]), "{job}");

    // From Slurm: one step per node of the sup job, named for it.
    let steps = wait_for(
        "two steps in squeue --steps",
        Duration::from_secs(20),
        || {
            let steps = steps_of(&slurm, &job_id)?;
            let ours: Vec<_> = steps
                .into_iter()
                .filter(|s| s.1.starts_with("sup:train:"))
                .collect();
            Ok((ours.len() == 2).then_some(ours))
        },
    )?;
    eprintln!("steps: {steps:?}");
    let mut on: Vec<&str> = steps.iter().map(|s| s.2.as_str()).collect();
    on.sort_unstable();
    assert_eq!(on, ["sup-a", "sup-b"]);
    let slurm_job = slurm.scontrol(&["show", "job", &job_id])?;
    let job_user = field(&slurm_job, "UserId").context("job UserId")?;
    let job_uid: u32 = job_user
        .split_once('(')
        .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        .context("job uid")?;
    assert_eq!(job_uid, user.uid, "the batch job is the user's: {job_user}");
    for (step, _, _, user) in &steps {
        let shown = slurm.scontrol(&["show", "step", step])?;
        // `scontrol show step` gives the bare uid, `show job` `name(uid)`.
        assert_eq!(
            field(&shown, "UserId"),
            Some(job_uid.to_string()),
            "{shown}"
        );
        assert_eq!(
            job_user.split('(').next(),
            Some(user.as_str()),
            "squeue's user of step {step}"
        );
    }
    // From /proc: the ranks are the trainer processes inside those steps,
    // running as the batch job's user.
    let ranks = processes_with_env(&[("SUP_JOB", "train"), ("SLURM_JOB_ID", &job_id)]);
    let ranks: Vec<u32> = ranks
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("train.py"))
        })
        .collect();
    assert_eq!(ranks.len(), 2, "one rank per node: {ranks:?}");
    for pid in &ranks {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .context("Uid in /proc status")?;
        assert_eq!(uid, job_uid, "rank {pid} runs as the batch job's user");
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.split('\0').any(|v| v.starts_with("SLURM_STEP_ID=")),
            "pid {pid}"
        );
        assert!(
            environ.split('\0').any(|v| v == "WORLD_SIZE=2"),
            "pid {pid}"
        );
    }
    eprintln!("ranks {ranks:?} run as uid {job_uid} ({job_user}) in Slurm job {job_id}");

    // A complete checkpoint, then an Xid on a job node.
    wait_for("a complete checkpoint", Duration::from_secs(60), || {
        let j = job_status(&url, "train")?;
        Ok((j["checkpoint"]["step"].as_u64().unwrap_or(0) >= EVERY).then_some(()))
    })?;
    let out = supctl(
        &url,
        &[
            "drill", "xid", "--node", "sup-a", "--gpu", "0", "--xid", "79", "--by", "game-day",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (reason, _) = wait_sup_drain(&slurm, "sup-a", Duration::from_secs(10))?;
    eprintln!("sup-a drained in Slurm: {reason}");
    let restarted = wait_for("the job on the spare", Duration::from_secs(60), || {
        let j = job_status(&url, "train")?;
        Ok(
            (j["nodes"] == serde_json::json!(["sup-b", "sup-c"]) && j["state"] == "running")
                .then_some(j),
        )
    })?;
    eprintln!("restarted: {restarted}");
    let restart = events_of(&url, "job_restarted", Some("train"))?;
    let why = restart
        .last()
        .and_then(|e| e["reason"].as_str())
        .context("a restart event")?
        .to_owned();
    assert!(why.contains("replaced sup-a with sup-c"), "{why}");
    assert!(why.contains("resuming from step"), "{why}");
    let new_steps = wait_for("a step on the spare", Duration::from_secs(20), || {
        let steps = steps_of(&slurm, &job_id)?;
        Ok(steps
            .iter()
            .any(|s| s.2 == "sup-c" && s.1.starts_with("sup:train:"))
            .then_some(steps))
    })?;
    eprintln!("steps after the move: {new_steps:?}");
    // The ranks' output reached their logs (written by the agent: the
    // user's tasks cannot write into its state dir), unlabelled.
    let logged = wait_for(
        "rank 1's output in its log",
        Duration::from_secs(30),
        || {
            let out = supctl(&url, &["logs", "train", "--rank", "1", "--lines", "50"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text.lines().any(|l| l.starts_with("step ")).then_some(text))
        },
    )?;
    assert!(
        !logged.lines().any(|l| l.starts_with("1: ")),
        "srun's labels are stripped: {logged}"
    );
    assert!(
        !new_steps
            .iter()
            .any(|s| s.2 == "sup-a" && s.1.starts_with("sup:train:")),
        "the old generation's step on sup-a is gone (the batch script's step stays): {new_steps:?}"
    );

    // The job succeeds; `job wait` returns 0; the batch job and its
    // allocation end.
    wait_for("the job to succeed", Duration::from_secs(120), || {
        let j = job_status(&url, "train")?;
        if matches!(j["state"].as_str(), Some("failed" | "stopped")) {
            bail!("job ended {}: {}", j["state"], j["reason"]);
        }
        Ok((j["state"] == "succeeded").then_some(()))
    })?;
    let (state, shown) = wait_for("the allocation to end", Duration::from_secs(30), || {
        let shown = slurm.scontrol(&["show", "job", &job_id])?;
        Ok(field(&shown, "JobState")
            .filter(|s| s != "RUNNING" && s != "COMPLETING")
            .map(|s| (s, shown)))
    })?;
    assert_eq!(state, "COMPLETED", "{shown}");
    assert_eq!(field(&shown, "ExitCode").as_deref(), Some("0:0"), "{shown}");
    let out = std::fs::read_to_string(&batch_out)?;
    assert!(out.contains("job train succeeded"), "{out}");
    assert!(steps_of(&slurm, &job_id)?.is_empty());
    eprintln!("done in {:?}", started.elapsed());
    kill_ranks_under(work.path());
    drop(agents);
    drop(supd);
    Ok(())
}

fn wait_sup_drain(slurm: &SlurmCluster, node: &str, timeout: Duration) -> Result<(String, String)> {
    wait_for("the sup drain in Slurm", timeout, || {
        Ok(slurm
            .reason_of(node)?
            .filter(|(reason, _)| reason.starts_with("sup:")))
    })
}
