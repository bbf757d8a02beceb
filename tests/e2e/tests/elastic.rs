//! The heart of sup, with real processes: supd, five agents (sim:2, so two
//! ranks per node) and the example trainer as a 4-node job with one spare.
//! A node fails: the spare takes its place and the job resumes from the
//! newest checkpoint at the same world size. A second node fails with no
//! spare left: the job shrinks to 3 nodes and resumes. It finishes with
//! parameters bit-identical to a fault-free run.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(240);
const STEPS: u32 = 60;
const CHECKPOINT_EVERY: u32 = 5;
const PARAMS: u32 = 257;

fn supd_config(master_port: u16) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "10s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "3s"
spares_target = 1
"#
    )
}

fn job_spec(name: &str, ckpt: &std::path::Path, nodes: u32, min_nodes: u32, env: &str) -> String {
    format!(
        r#"name = "{name}"
command = {command}
nodes = {nodes}
min_nodes = {min_nodes}
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 10
[env]
{env}
"#,
        command = toml_list(&trainer_command(STEPS, CHECKPOINT_EVERY, "0.15", PARAMS)),
        ckpt = ckpt.display(),
    )
}

fn submit(url: &str, work: &std::path::Path, spec: &str) -> Result<()> {
    let file = work.join("job.toml");
    std::fs::write(&file, spec)?;
    let out = supctl(url, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits until the job is running a generation newer than `after` and has
/// a checkpoint at or past `min_checkpoint`.
fn wait_running(url: &str, name: &str, after: u64, min_checkpoint: u64) -> Result<Value> {
    wait_for(
        &format!("job {name} running past generation {after} with a checkpoint ≥ {min_checkpoint}"),
        JOB_TIMEOUT,
        || {
            let job = job_status(url, name)?;
            if job["state"] == "failed" {
                bail!("job failed: {job}");
            }
            let generation = job["generation"].as_u64().unwrap_or(0);
            let ckpt = job["checkpoint"]["step"].as_u64().unwrap_or(0);
            Ok(
                (job["state"] == "running" && generation > after && ckpt >= min_checkpoint)
                    .then_some(job),
            )
        },
    )
}

fn recovery_ms(url: &str, name: &str, generation: u64) -> Result<u64> {
    let running = events_of(url, "job_running", Some(name))?;
    let reason = running
        .iter()
        .rev()
        .filter_map(|e| e["reason"].as_str())
        .find(|r| r.starts_with(&format!("generation {generation} ")))
        .ok_or_else(|| anyhow!("no job_running event for generation {generation}: {running:?}"))?;
    let ms = reason
        .split("every rank launched ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no recovery time in {reason}"))?;
    Ok(ms)
}

/// The same training, fault-free, as one plain process (world size 1):
/// the trainer's results do not depend on world size or restarts.
fn reference_final(work: &std::path::Path) -> Result<Vec<u8>> {
    let ckpt = work.join("reference");
    std::fs::create_dir_all(&ckpt)?;
    let cmd = trainer_command(STEPS, CHECKPOINT_EVERY, "0", PARAMS);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SUP_CHECKPOINT_DIR", &ckpt)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port()?.to_string())
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("LOCAL_RANK", "0")
        .output()
        .context("running the reference trainer")?;
    if !out.status.success() {
        bail!(
            "reference run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::read(ckpt.join("final.bin")).context("reading the reference final.bin")
}

#[test]
fn failure_swaps_in_the_spare_then_shrinks_and_the_result_is_bit_identical() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &supd_config(free_port()?))?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), 5, |_| url.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&url, 5)?;

    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    submit(&url, work.path(), &job_spec("llm", &ckpt, 4, 2, ""))?;
    let job = wait_running(&url, "llm", 0, 10)?;
    let nodes: Vec<String> = job["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nodes.len(), 4, "{job}");
    assert_eq!(job["world_size"], 8);
    let spare = supctl_json(&url, &["status"])?["spares"][0]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no spare"))?;

    // The ranks' output is one command away.
    let out = supctl(&url, &["logs", "llm", "--rank", "3", "--lines", "5"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("step "),
        "supctl logs: {text}"
    );

    // First failure, a drill Xid 79 (GPU fallen off the bus) on an assigned
    // node: the node is cordoned and the spare takes its place, same world
    // size.
    let generation = job["generation"].as_u64().unwrap_or(0);
    let ckpt_before = job["checkpoint"]["step"].as_u64().unwrap_or(0);
    let victim = &nodes[1];
    let out = supctl(
        &url,
        &[
            "drill", "xid", "--node", victim, "--gpu", "1", "--xid", "79",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = wait_running(&url, "llm", generation, ckpt_before)?;
    let now_nodes: Vec<&str> = job["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(now_nodes.len(), 4, "{job}");
    assert!(!now_nodes.contains(&victim.as_str()), "{job}");
    assert!(
        now_nodes.contains(&spare.as_str()),
        "the spare joined: {job}"
    );
    assert_eq!(job["world_size"], 8);
    let gen2 = job["generation"].as_u64().unwrap_or(0);
    let restart = events_of(&url, "job_restarted", Some("llm"))?;
    let why = restart
        .last()
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains(&format!("node {victim} cordoned by sup")),
        "{why}"
    );
    assert!(why.contains("Xid 79"), "{why}");
    assert!(
        why.contains(&format!("replaced {victim} with {spare}")),
        "{why}"
    );
    assert!(why.contains("resuming from step"), "{why}");
    let first_recovery = recovery_ms(&url, "llm", gen2)?;

    // Second failure, no spare left: shrink to 3 nodes.
    let ckpt_before = job["checkpoint"]["step"].as_u64().unwrap_or(0);
    let victim2 = now_nodes[2].to_owned();
    let out = supctl(
        &url,
        &[
            "cordon",
            &victim2,
            "--reason",
            "e2e: second failure",
            "--by",
            "e2e",
        ],
    )?;
    assert!(out.status.success());
    let job = wait_running(&url, "llm", gen2, ckpt_before)?;
    assert_eq!(job["nodes"].as_array().map(Vec::len), Some(3), "{job}");
    assert_eq!(job["world_size"], 6);
    let gen3 = job["generation"].as_u64().unwrap_or(0);
    let second_recovery = recovery_ms(&url, "llm", gen3)?;

    let job = wait_for("job succeeded", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        if job["state"] == "failed" {
            bail!("job failed: {job}");
        }
        Ok((job["state"] == "succeeded").then_some(job))
    })?;
    assert_eq!(job["restarts"], 2, "{job}");

    let got = std::fs::read(ckpt.join("final.bin")).context("final.bin after the faulty run")?;
    let want = reference_final(work.path())?;
    assert!(
        got == want,
        "final parameters differ from the fault-free run"
    );

    println!(
        "control-plane recovery (fault reported → every rank of the new generation launched): spare swap {first_recovery} ms, shrink {second_recovery} ms"
    );
    Ok(())
}
