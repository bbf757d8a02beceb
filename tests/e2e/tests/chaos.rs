//! Chaos with real processes: supd SIGKILLed mid-job and during a burst of
//! changes, agents cut off from supd by a fault-injecting proxy (one briefly,
//! most of them at once), and a corrupted store. Every test prints what it
//! injected and what it checked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::Value;
use sup_e2e::*;

/// The tests in this file run one at a time: each starts a cluster of real
/// processes and the timing-based ones must not starve each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `nodes_extra`: more keys for the [nodes] table.
fn config(nodes_extra: &str) -> Result<String> {
    config_with(nodes_extra, "")
}

fn config_with(nodes_extra: &str, jobs_extra: &str) -> Result<String> {
    Ok(format!(
        r#"[nodes]
unreachable_after = "3s"
telemetry_interval = "500ms"
{nodes_extra}
[jobs]
master_port = {}
stop_grace = "2s"
lost_node_grace = "20s"
stall_confirm = "6s"
{jobs_extra}
"#,
        free_port()?
    ))
}

fn submit_trainer(work: &std::path::Path, url: &str, name: &str, nodes: u32) -> Result<()> {
    let ckpt = work.join(format!("ckpt-{name}"));
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        "name = \"{name}\"\ncommand = {}\nnodes = {nodes}\nmin_nodes = {nodes}\ngpus_per_node = 2\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(100_000, 10, "0.1", 32)),
        ckpt.display()
    );
    let file = work.join(format!("{name}.toml"));
    std::fs::write(&file, spec)?;
    let out = supctl(url, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        return Err(anyhow!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Waits until the job runs and reports a step; returns its status.
fn wait_running(url: &str, name: &str) -> Result<Value> {
    wait_for("job running with progress", Duration::from_secs(90), || {
        let job = job_status(url, name)?;
        Ok((job["state"] == "running" && job["step"].as_u64().is_some()).then_some(job))
    })
}

/// Pids of every rank of `job` at `generation`, sorted.
fn ranks(job: &str, generation: u64) -> Vec<u32> {
    let mut pids = processes_with_env(&[
        ("SUP_JOB", job),
        ("SUP_GENERATION", &generation.to_string()),
    ]);
    pids.sort_unstable();
    pids
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn gen_of(job: &Value) -> u64 {
    job["generation"].as_u64().unwrap_or(0)
}

fn step_of(job: &Value) -> u64 {
    job["step"].as_u64().unwrap_or(0)
}

fn kinds_after(url: &str, seq: u64) -> Result<Vec<(String, Value)>> {
    let all = supctl_json(url, &["events"])?;
    Ok(all
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["seq"].as_u64().is_some_and(|s| s > seq))
                .map(|e| (e["kind"].as_str().unwrap_or("").to_owned(), e.clone()))
                .collect()
        })
        .unwrap_or_default())
}

fn last_seq(url: &str) -> Result<u64> {
    let all = supctl_json(url, &["events"])?;
    Ok(all
        .as_array()
        .and_then(|a| a.iter().filter_map(|e| e["seq"].as_u64()).max())
        .unwrap_or(0))
}

#[test]
fn supd_sigkill_mid_job_leaves_the_job_running_untouched() -> Result<()> {
    let _serial = serial();
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &config("")?)?;
    supd.start()?;
    let url = supd.url();
    let mut agents = start_sim_agents(work.path(), 2, |_| url.clone(), &[])?;
    submit_trainer(work.path(), &url, "steady", 2)?;
    let job = wait_running(&url, "steady")?;
    let generation = gen_of(&job);
    let pids = ranks("steady", generation);
    assert_eq!(pids.len(), 4, "2 nodes x 2 ranks: {pids:?}");
    let seq = last_seq(&url)?;

    println!("inject: SIGKILL supd while job 'steady' runs (generation {generation}, step {}, rank pids {pids:?}); down for 5 s", step_of(&job));
    supd.kill()?;
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        pids.iter().all(|p| alive(*p)),
        "ranks keep running while supd is down"
    );
    for a in agents.iter_mut() {
        assert!(a.exited()?.is_none(), "{} exited", a.name);
    }
    supd.start()?;
    wait_for("agents back", STARTUP_TIMEOUT, || {
        let s = supctl_json(&url, &["status"])?;
        let n = s["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|x| x["connected"] == true).count());
        Ok((n == Some(2)).then_some(()))
    })?;
    // Past the stall confirmation and well into the job: still untouched.
    let before = step_of(&job_status(&url, "steady")?);
    std::thread::sleep(Duration::from_secs(8));
    let after = job_status(&url, "steady")?;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(gen_of(&after), generation, "no restart: {after}");
    assert_eq!(after["restarts"], job["restarts"], "{after}");
    assert_eq!(ranks("steady", generation), pids, "same rank processes");
    assert!(
        step_of(&after) > before,
        "the job keeps progressing: {after}"
    );
    let evs = kinds_after(&url, seq)?;
    for bad in [
        "job_restarted",
        "job_started",
        "node_cordoned",
        "job_failed",
    ] {
        assert!(
            !evs.iter().any(|(k, _)| k == bad),
            "no {bad} after the restart: {evs:?}"
        );
    }
    println!(
        "checked: after restart generation {generation} unchanged, same 4 rank pids, restarts {}, step {} -> {}, no job_restarted/job_started/node_cordoned/job_failed events",
        after["restarts"],
        before,
        step_of(&after)
    );
    assert!(supctl(&url, &["job", "stop", "steady"])?.status.success());
    Ok(())
}

#[test]
fn repeated_supd_sigkill_during_a_burst_loses_no_acknowledged_change() -> Result<()> {
    let _serial = serial();
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &config("")?)?;
    supd.start()?;
    let url = supd.url();
    const NODES: usize = 6;
    let mut agents = Vec::new();
    for i in 0..NODES {
        agents.push(start_agent(
            work.path(),
            &url,
            &format!("burst-{i}"),
            "127.0.0.1",
            "sim:1",
            &[],
        )?);
    }
    wait_for("nodes registered", STARTUP_TIMEOUT, || {
        let s = supctl_json(&url, &["status"])?;
        Ok((s["nodes"].as_array().map(Vec::len) == Some(NODES)).then_some(()))
    })?;

    // A writer thread: cordons and job submits as fast as supctl goes,
    // recording the ones supctl saw acknowledged (exit 0).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = url.clone();
        let work = work.path().to_owned();
        std::thread::spawn(move || -> Result<(Vec<String>, Vec<String>, usize)> {
            let mut cordoned = Vec::new();
            let mut jobs = Vec::new();
            let mut failed = 0;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if i.is_multiple_of(2) && cordoned.len() < NODES {
                    let node = format!("burst-{}", cordoned.len());
                    let reason = format!("burst cordon {i}");
                    let out = supctl(&url, &["cordon", &node, "--reason", &reason])?;
                    if out.status.success() {
                        cordoned.push(node);
                    } else {
                        failed += 1;
                    }
                } else {
                    // Needs more nodes than exist: stays pending, durable.
                    let name = format!("burst-job-{i}");
                    let spec = format!(
                        "name = \"{name}\"\ncommand = [\"true\"]\nnodes = 50\nmin_nodes = 50\ngpus_per_node = 1\ncheckpoint_dir = \"/tmp\"\ncheckpoint_layout = \"marker:COMPLETE\"\n"
                    );
                    let file = work.join(format!("{name}.toml"));
                    std::fs::write(&file, spec)?;
                    let out = supctl(&url, &["job", "submit", &file.display().to_string()])?;
                    if out.status.success() {
                        jobs.push(name);
                    } else {
                        failed += 1;
                    }
                }
                i += 1;
            }
            Ok((cordoned, jobs, failed))
        })
    };
    let kills = 4;
    for k in 1..=kills {
        std::thread::sleep(Duration::from_millis(700 + 300 * k));
        println!("inject: SIGKILL supd #{k} during the burst");
        supd.kill()?;
        std::thread::sleep(Duration::from_millis(300));
        supd.start()?;
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (cordoned, jobs, failed) = writer
        .join()
        .map_err(|_| anyhow!("the writer thread panicked"))??;
    println!(
        "burst: {} cordons and {} job submits acknowledged, {failed} refused or failed while supd was down",
        cordoned.len(),
        jobs.len()
    );
    println!("inject: a final SIGKILL and restart");
    supd.kill()?;
    supd.start()?;

    let status = supctl_json(&url, &["status"])?;
    let nodes: BTreeMap<String, Value> = status["nodes"]
        .as_array()
        .ok_or_else(|| anyhow!("nodes"))?
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or("").to_owned(), n.clone()))
        .collect();
    for node in &cordoned {
        assert!(
            nodes.get(node).is_some_and(|n| !n["cordon"].is_null()),
            "acknowledged cordon of {node} lost: {status}"
        );
    }
    // One by one: `supctl jobs` lists at most the status's 100 jobs, and a
    // burst acknowledges more.
    for job in &jobs {
        let shown = supctl_json(&url, &["job", "describe", job]);
        assert!(
            shown.as_ref().is_ok_and(|j| j["name"] == job.as_str()),
            "acknowledged job {job} lost: {shown:?}"
        );
    }
    assert!(
        !cordoned.is_empty() && !jobs.is_empty(),
        "the burst did something"
    );
    println!(
        "checked: after {} SIGKILLs all {} acknowledged cordons and all {} acknowledged jobs are present",
        kills + 1,
        cordoned.len(),
        jobs.len()
    );
    Ok(())
}

#[test]
fn an_agent_cut_off_shorter_than_the_grace_changes_nothing() -> Result<()> {
    let _serial = serial();
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &config("")?)?;
    supd.start()?;
    let url = supd.url();
    let proxy = FaultProxy::start(supd.grpc_port)?;
    let s1 = work.path().join("agent-1");
    let s2 = work.path().join("agent-2");
    let _a1 = start_agent(
        work.path(),
        &url,
        "node-1",
        "127.0.0.1",
        "sim:2",
        &["--state-dir", &s1.display().to_string()],
    )?;
    let _a2 = start_agent(
        work.path(),
        &proxy.url(),
        "node-2",
        "127.0.0.1",
        "sim:2",
        &["--state-dir", &s2.display().to_string()],
    )?;
    submit_trainer(work.path(), &url, "flaky-link", 2)?;
    let job = wait_running(&url, "flaky-link")?;
    let generation = gen_of(&job);
    let pids = ranks("flaky-link", generation);
    let seq = last_seq(&url)?;

    println!("inject: cut node-2 off from supd (proxy paused) for 9 s; unreachable_after 3 s, lost_node_grace 20 s, the job keeps progressing on node-1's reports");
    proxy.pause();
    let unreachable = wait_for("node-2 unreachable", Duration::from_secs(15), || {
        let n = supctl_json(&url, &["node", "node-2"])?;
        Ok((n["state"] == "unreachable").then_some(()))
    });
    let start = Instant::now();
    let step_at_cut = step_of(&job_status(&url, "flaky-link")?);
    std::thread::sleep(Duration::from_secs(9).saturating_sub(start.elapsed()));
    let during = job_status(&url, "flaky-link")?;
    proxy.resume();
    unreachable?;
    assert!(
        step_of(&during) > step_at_cut,
        "progress during the cut: {during}"
    );
    assert_eq!(gen_of(&during), generation, "{during}");
    wait_for("node-2 reachable again", Duration::from_secs(30), || {
        let n = supctl_json(&url, &["node", "node-2"])?;
        Ok((n["state"] != "unreachable").then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let after = job_status(&url, "flaky-link")?;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(gen_of(&after), generation, "{after}");
    assert_eq!(after["restarts"], job["restarts"], "{after}");
    assert_eq!(ranks("flaky-link", generation), pids, "same rank processes");
    let evs = kinds_after(&url, seq)?;
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"node_unreachable"), "{kinds:?}");
    for bad in ["job_restarted", "node_cordoned", "partition_suspected"] {
        assert!(!kinds.contains(&bad), "no {bad}: {kinds:?}");
    }
    println!(
        "checked: node-2 went unreachable and came back; job generation {generation} unchanged, restarts {}, same {} rank pids, step {} -> {}; events after the cut: {kinds:?}",
        after["restarts"],
        pids.len(),
        step_at_cut,
        step_of(&after)
    );
    assert!(supctl(&url, &["job", "stop", "flaky-link"])?
        .status
        .success());
    Ok(())
}

#[test]
fn supd_cut_off_from_most_agents_holds_everything_and_alerts() -> Result<()> {
    let _serial = serial();
    let work = tempfile::tempdir()?;
    // The cut (30 s) outlasts the default assignment lease (15 s), after
    // which the cut-off agents would kill their ranks whatever supd holds
    // (they cannot tell a partition of supd from their own); this test is
    // about the guard, so the lease is longer than the cut.
    let mut supd = Supd::new(
        work.path(),
        &config_with(
            "partition_window = \"10s\"\npartition_share = 0.5\npartition_min_nodes = 3",
            "assignment_lease = \"60s\"",
        )?,
    )?;
    supd.start()?;
    let url = supd.url();
    let proxy = FaultProxy::start(supd.grpc_port)?;
    // node-1..4 reach supd through the proxy; node-5 directly.
    let _agents = start_sim_agents(
        work.path(),
        5,
        |i| if i == 5 { url.clone() } else { proxy.url() },
        &[],
    )?;
    submit_trainer(work.path(), &url, "big", 3)?;
    let job = wait_running(&url, "big")?;
    let generation = gen_of(&job);
    let pids = ranks("big", generation);
    let seq = last_seq(&url)?;

    println!("inject: cut supd off from 4 of 5 agents at once (proxy paused) for 30 s, past stall_confirm (6 s) and lost_node_grace (20 s)");
    proxy.pause();
    let alert = wait_for("partition alert", Duration::from_secs(20), || {
        Ok(kinds_after(&url, seq)?
            .into_iter()
            .find(|(k, _)| k == "partition_suspected")
            .map(|(_, e)| e))
    });
    if alert.is_ok() {
        std::thread::sleep(Duration::from_secs(24));
    }
    let during = supctl_json(&url, &["status"]);
    let job_during = job_status(&url, "big");
    proxy.resume();
    let alert = alert?;
    println!("alert: {}", alert["reason"]);
    let during = during?;
    let job_during = job_during?;
    let unreachable = during["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|x| x["state"] == "unreachable").count());
    assert_eq!(unreachable, Some(4), "{during}");
    assert_eq!(gen_of(&job_during), generation, "held: {job_during}");
    assert!(
        during["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|x| x["cordon"].is_null())),
        "no cordon: {during}"
    );

    let cleared = wait_for("partition cleared", Duration::from_secs(40), || {
        Ok(kinds_after(&url, seq)?
            .into_iter()
            .find(|(k, _)| k == "partition_cleared")
            .map(|(_, e)| e))
    })?;
    println!("cleared: {}", cleared["reason"]);
    wait_for("all nodes reachable", Duration::from_secs(40), || {
        let s = supctl_json(&url, &["status"])?;
        Ok(s["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|x| x["state"] != "unreachable"))
            .then_some(()))
    })?;
    // Normal operation resumes: the job runs on, still the same generation.
    let before = step_of(&job_status(&url, "big")?);
    let after = wait_for(
        "progress after the partition",
        Duration::from_secs(30),
        || {
            let j = job_status(&url, "big")?;
            Ok((step_of(&j) > before).then_some(j))
        },
    )?;
    assert_eq!(gen_of(&after), generation, "{after}");
    assert_eq!(after["restarts"], job["restarts"], "{after}");
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(ranks("big", generation), pids, "same rank processes");
    let kinds: Vec<String> = kinds_after(&url, seq)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for bad in ["job_restarted", "node_cordoned", "breaker_opened"] {
        assert!(!kinds.iter().any(|k| k == bad), "no {bad}: {kinds:?}");
    }
    println!(
        "checked: 4 nodes unreachable for 30 s, no cordon, no job restart (generation {generation}, same {} rank pids), partition_suspected then partition_cleared, progress resumed ({} -> {})",
        pids.len(),
        before,
        step_of(&after)
    );
    assert!(supctl(&url, &["job", "stop", "big"])?.status.success());
    Ok(())
}

/// Hash-free byte snapshot of a directory tree: path -> contents.
fn snapshot(dir: &std::path::Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.display().to_string(), std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

#[test]
fn a_corrupt_or_truncated_store_is_refused_without_touching_it() -> Result<()> {
    let _serial = serial();
    for damage in ["garbage", "truncated"] {
        let work = tempfile::tempdir()?;
        let mut supd = Supd::new(work.path(), &config("")?)?;
        supd.start()?;
        let url = supd.url();
        let _agent = start_agent(work.path(), &url, "node-1", "127.0.0.1", "sim:1", &[])?;
        wait_for("node registered", STARTUP_TIMEOUT, || {
            let s = supctl_json(&url, &["status"])?;
            Ok((s["nodes"].as_array().map(Vec::len) == Some(1)).then_some(()))
        })?;
        assert!(
            supctl(&url, &["cordon", "node-1", "--reason", "before damage"])?
                .status
                .success()
        );
        supd.kill()?;
        drop(_agent);

        let db = supd.data_dir.join("state").join("db");
        let bytes = std::fs::read(&db)?;
        let damaged = match damage {
            "garbage" => {
                let mut b = bytes.clone();
                for (i, x) in b.iter_mut().enumerate() {
                    *x ^= (i as u8).wrapping_mul(31) | 1;
                }
                b
            }
            _ => bytes[..bytes.len() / 3].to_vec(),
        };
        std::fs::write(&db, &damaged)?;
        let before = snapshot(&supd.data_dir)?;
        println!(
            "inject: {damage} store ({} of {} bytes of {} kept/overwritten)",
            damaged.len(),
            bytes.len(),
            db.display()
        );

        // Started by hand: the harness waits for /readyz, which must fail.
        let mut cmd = std::process::Command::new(bin("supd")?);
        cmd.arg("--config")
            .arg(&supd.config)
            .arg("--data-dir")
            .arg(&supd.data_dir)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", supd.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", supd.http_port))
            .arg("--plaintext");
        let mut proc = Proc::spawn(&format!("supd-{damage}"), cmd, work.path())?;
        let (code, body) = wait_for("/readyz answers", STARTUP_TIMEOUT, || {
            if let Some(status) = proc.exited()? {
                return Err(anyhow!("supd exited with {status}:\n{}", proc.log_text()));
            }
            Ok(http_get(supd.http_port, "/readyz").ok())
        })?;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("state store"), "names the problem: {body}");
        let (hcode, _) = http_get(supd.http_port, "/healthz")?;
        assert_eq!(hcode, 200, "alive, just not ready");
        let (scode, _) = http_get(supd.http_port, "/api/v1/status")?;
        assert_eq!(scode, 503, "serves no state");
        // gRPC: the health service says NOT_SERVING; status calls fail.
        let out = supctl(&url, &["status"])?;
        assert!(!out.status.success(), "supctl status must fail");
        let health = grpc_health(supd.grpc_port)?;
        assert_eq!(health, "NOT_SERVING");
        std::thread::sleep(Duration::from_secs(1));
        assert!(proc.exited()?.is_none(), "no exit, no panic");
        let log = proc.log_text();
        assert!(!log.contains("panicked"), "{log}");
        proc.kill()?;
        assert!(
            snapshot(&supd.data_dir)? == before,
            "the data dir is untouched"
        );
        println!(
            "checked: /readyz 503 ({}), /healthz 200, /api 503, gRPC health {health}, supctl status exit {:?}, no panic, data dir byte-identical",
            body.trim(),
            out.status.code()
        );
    }
    Ok(())
}

/// Runs supctl with a fixed request id, as a retry of the same command.
fn supctl_with_id(url: &str, id: &str, args: &[&str]) -> Result<std::process::Output> {
    let out = std::process::Command::new(bin("supctl")?)
        .arg("--supervisor")
        .arg(url)
        .args(args)
        .env("SUP_REQUEST_ID", id)
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok(out)
}

#[test]
fn the_same_command_delivered_twice_takes_effect_once() -> Result<()> {
    let _serial = serial();
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &config("")?)?;
    supd.start()?;
    let url = supd.url();
    let _agent = start_agent(work.path(), &url, "node-1", "127.0.0.1", "sim:1", &[])?;
    wait_for("node registered", STARTUP_TIMEOUT, || {
        let s = supctl_json(&url, &["status"])?;
        Ok((s["nodes"].as_array().map(Vec::len) == Some(1)).then_some(()))
    })?;
    let spec = work.path().join("once.toml");
    std::fs::write(
        &spec,
        "name = \"once\"\ncommand = [\"true\"]\nnodes = 50\nmin_nodes = 50\ngpus_per_node = 1\ncheckpoint_dir = \"/tmp\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
    )?;
    let spec = spec.display().to_string();

    // 1. A job submit delivered twice: the retry is answered, not refused
    //    as a duplicate, and there is one job.
    println!("inject: 'job submit' sent twice with request id req-submit-1");
    let first = supctl_with_id(&url, "req-submit-1", &["job", "submit", &spec])?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = supctl_with_id(&url, "req-submit-1", &["job", "submit", &spec])?;
    assert!(
        second.status.success(),
        "a retry is not a duplicate: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    // A different invocation (new id) is a real duplicate.
    let other = supctl(&url, &["job", "submit", &spec])?;
    assert_eq!(
        other.status.code(),
        Some(5),
        "a new submit of the same job is refused"
    );
    assert_eq!(events_of(&url, "job_submitted", Some("once"))?.len(), 1);

    // 2. An uncordon retried after someone cordoned again must not undo the
    //    newer cordon — also across a supd SIGKILL + restart.
    assert!(supctl(&url, &["cordon", "node-1", "--reason", "first"])?
        .status
        .success());
    let un = supctl_with_id(&url, "req-uncordon-1", &["uncordon", "node-1"])?;
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    assert!(supctl(
        &url,
        &["cordon", "node-1", "--reason", "second, by someone else"]
    )?
    .status
    .success());
    println!("inject: SIGKILL + restart supd, then the uncordon (request id req-uncordon-1) delivered again");
    supd.kill()?;
    supd.start()?;
    let again = supctl_with_id(
        &url,
        "req-uncordon-1",
        &["uncordon", "node-1", "-o", "json"],
    )?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let node = supctl_json(&url, &["node", "node-1"])?;
    assert_eq!(
        node["cordon"]["reason"], "second, by someone else",
        "the repeated uncordon did not act again: {node}"
    );
    let resubmit = supctl_with_id(&url, "req-submit-1", &["job", "submit", &spec])?;
    assert!(resubmit.status.success(), "remembered across the restart");
    assert_eq!(events_of(&url, "job_submitted", Some("once"))?.len(), 1);
    assert_eq!(events_of(&url, "node_uncordoned", None)?.len(), 1);

    // 3. The same id for a different command is refused, naming the reuse.
    let misuse = supctl_with_id(&url, "req-submit-1", &["cordon", "node-1", "--reason", "x"])?;
    assert!(!misuse.status.success());
    let stderr = String::from_utf8_lossy(&misuse.stderr);
    assert!(stderr.contains("already used for submit_job"), "{stderr}");
    println!(
        "checked: 1 job_submitted event for 2+1 deliveries of req-submit-1 (also after restart), a new id is a duplicate (exit 5), 1 node_uncordoned for 2 deliveries of req-uncordon-1 across a restart and the newer cordon kept, reused id refused: {}",
        stderr.trim()
    );
    Ok(())
}
