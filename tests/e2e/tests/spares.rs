//! The spare reserve with real processes: supd with `jobs.spares_target = 1`,
//! four agents (sim:2, drills allowed) and the example trainer.
//!
//! - A normal job asking for all four nodes (`min_nodes = 4`) waits
//!   `pending`, its reason naming the reserve, and no rank of it starts.
//! - With `min_nodes = 3` it runs on three nodes; the fourth stays a spare.
//! - A low-priority job runs on that spare (`spares_lent` in the status).
//! - A GPU of the normal job falls off the bus (an Xid 79 drill through the
//!   agent's health monitor): the node is cordoned, the low-priority job is
//!   preempted in the same decision (its ranks stop), and the normal job
//!   resumes on the spare from its newest checkpoint.
//! - The failed node is uncordoned: it refills the reserve, so the
//!   low-priority job starts again there and the normal job does not grow
//!   into it.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

fn supd_config(master_port: u16) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "5s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"
spares_target = 1
"#
    )
}

fn job_spec(name: &str, ckpt: &std::path::Path, nodes: u32, min_nodes: u32, extra: &str) -> String {
    format!(
        r#"name = "{name}"
command = {command}
nodes = {nodes}
min_nodes = {min_nodes}
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 10
{extra}
"#,
        // Long enough to outlive the test: it ends when the test does.
        command = toml_list(&trainer_command(100_000, 10, "0.1", 129)),
        ckpt = ckpt.display(),
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an event's RFC 3339 `at`.
fn at_ms(event: &Value) -> Result<i128> {
    let at = event["at"]
        .as_str()
        .ok_or_else(|| anyhow!("event without at: {event}"))?;
    let t = humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
        .map_err(|e| anyhow!("event time {at:?}: {e}"))?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow!("event time {at:?}: {e}"))?;
    Ok(since.as_millis() as i128)
}

/// The one event of `kind` about `node` (and `job`, when given).
fn event_on(url: &str, kind: &str, node: &str, job: Option<&str>) -> Result<Value> {
    events_of(url, kind, job)?
        .into_iter()
        .rfind(|e| e["node"] == node)
        .ok_or_else(|| anyhow!("no {kind} event on {node}"))
}

/// Live ranks of `job` writing under `ckpt`, on `node` when given.
fn ranks(job: &str, ckpt: &std::path::Path, node: Option<&str>) -> Vec<u32> {
    let dir = ckpt.display().to_string();
    let mut env = vec![("SUP_JOB", job), ("SUP_CHECKPOINT_DIR", dir.as_str())];
    if let Some(node) = node {
        env.push(("SUP_NODE_ID", node));
    }
    processes_with_env(&env)
}

#[test]
fn the_reserve_keeps_a_spare_lends_it_to_low_priority_work_and_takes_it_back() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &supd_config(free_port()?))?;
    supd.start()?;
    let url = supd.url();
    let mut agents = start_sim_agents(work.path(), 4, |_| url.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&url, 4)?;

    // All four nodes wanted, none may be left: the reserve keeps one.
    let wide_ckpt = work.path().join("ckpt-wide");
    std::fs::create_dir_all(&wide_ckpt)?;
    submit_job(
        &url,
        work.path(),
        "wide",
        &job_spec("wide", &wide_ckpt, 4, 4, ""),
    )?;
    let wide = wait_for("the wide job pending", JOB_TIMEOUT, || {
        let job = job_status(&url, "wide")?;
        Ok((job["state"] == "pending").then_some(job))
    })?;
    let why = wide["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("3 available; 1 more kept free as the spare reserve (jobs.spares_target = 1"),
        "{wide}"
    );
    assert!(strings(&wide["nodes"]).is_empty(), "{wide}");
    // Still waiting once every agent has reported again since.
    let pending_at = at_ms(
        events_of(&url, "job_pending", Some("wide"))?
            .last()
            .ok_or_else(|| anyhow!("no job_pending event"))?,
    )?;
    wait_for(
        "every node reporting after the decision",
        JOB_TIMEOUT,
        || {
            let status = supctl_json(&url, &["status"])?;
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            let fresh = nodes.iter().all(|n| {
                n["last_seen"]
                    .as_str()
                    .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .is_some_and(|d| d.as_millis() as i128 > pending_at + 1_000)
            });
            Ok(fresh.then_some(()))
        },
    )?;
    assert_eq!(job_status(&url, "wide")?["state"], "pending");
    assert!(ranks("wide", &wide_ckpt, None).is_empty());
    let out = supctl(
        &url,
        &["job", "stop", "wide", "--reason", "resubmitting smaller"],
    )?;
    if !out.status.success() {
        bail!("job stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Three of four: it runs beside the reserve.
    let ckpt = work.path().join("ckpt-llm");
    std::fs::create_dir_all(&ckpt)?;
    submit_job(&url, work.path(), "llm", &job_spec("llm", &ckpt, 4, 3, ""))?;
    let llm = wait_for("llm running with a checkpoint", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok(
            (job["state"] == "running" && job["checkpoint"]["step"].as_u64().is_some())
                .then_some(job),
        )
    })?;
    let llm_nodes = strings(&llm["nodes"]);
    assert_eq!(llm_nodes.len(), 3, "{llm}");
    let status = supctl_json(&url, &["status"])?;
    let spares = strings(&status["spares"]);
    assert_eq!(spares.len(), 1, "{status}");
    let spare = spares[0].clone();
    assert!(!llm_nodes.contains(&spare));
    assert_eq!(status["spares_target"], 1);
    assert!(strings(&status["spares_lent"]).is_empty(), "{status}");

    // Low-priority work may borrow the reserve.
    let batch_ckpt = work.path().join("ckpt-batch");
    std::fs::create_dir_all(&batch_ckpt)?;
    submit_job(
        &url,
        work.path(),
        "batch",
        &job_spec("batch", &batch_ckpt, 1, 1, "priority = \"low\""),
    )?;
    let batch = wait_for("batch running on the spare", JOB_TIMEOUT, || {
        let job = job_status(&url, "batch")?;
        Ok(
            (job["state"] == "running" && !ranks("batch", &batch_ckpt, None).is_empty())
                .then_some(job),
        )
    })?;
    assert_eq!(
        strings(&batch["nodes"]),
        std::slice::from_ref(&spare),
        "{batch}"
    );
    let status = supctl_json(&url, &["status"])?;
    assert_eq!(
        strings(&status["spares"]),
        std::slice::from_ref(&spare),
        "{status}"
    );
    assert_eq!(
        strings(&status["spares_lent"]),
        std::slice::from_ref(&spare),
        "{status}"
    );
    let text = supctl(&url, &["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("spares 1/target 1 (1 lent to low-priority work)"),
        "{text}"
    );

    // A GPU of the normal job falls off the bus.
    let llm = job_status(&url, "llm")?;
    let generation = llm["generation"].as_u64().unwrap_or(0);
    let step_before = llm["checkpoint"]["step"].as_u64().unwrap_or(0);
    let victim = llm_nodes[1].clone();
    let out = supctl(
        &url,
        &[
            "drill", "xid", "--node", &victim, "--gpu", "0", "--xid", "79",
        ],
    )?;
    if !out.status.success() {
        bail!("drill: {}", String::from_utf8_lossy(&out.stderr));
    }
    let llm = wait_for("llm running on the spare", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok((job["state"] == "running"
            && job["generation"].as_u64() > Some(generation)
            && strings(&job["nodes"]).contains(&spare))
        .then_some(job))
    })?;
    assert!(!strings(&llm["nodes"]).contains(&victim), "{llm}");
    assert_eq!(strings(&llm["nodes"]).len(), 3, "{llm}");

    // Preempted in the same decision that cordoned the node.
    let drill = event_on(&url, "drill", &victim, None)?;
    let cordoned = event_on(&url, "node_cordoned", &victim, None)?;
    let preempted = event_on(&url, "job_preempted", &spare, Some("batch"))?;
    let after_cordon = at_ms(&preempted)? - at_ms(&cordoned)?;
    let after_drill = at_ms(&preempted)? - at_ms(&drill)?;
    println!(
        "preemption: {after_cordon} ms after the cordon, {after_drill} ms after the drill was issued"
    );
    assert!(
        (0..=2_000).contains(&after_cordon),
        "preempted {after_cordon} ms after the cordon: {cordoned} / {preempted}"
    );
    assert!(
        preempted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("taken by job 'llm'")),
        "{preempted}"
    );
    let restarted = events_of(&url, "job_restarted", Some("llm"))?;
    let why = restarted
        .last()
        .and_then(|e| e["reason"].as_str())
        .ok_or_else(|| anyhow!("no job_restarted event"))?;
    assert!(
        why.contains(&format!("replaced {victim} with {spare}")),
        "{why}"
    );
    let resumed: u64 = why
        .split("resuming from step ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no resume step in {why}"))?;
    assert!(resumed >= step_before, "{why}");
    // The ranks say so too: the low job's are gone from the spare, the
    // normal job's run there.
    wait_for("batch's ranks stopped", JOB_TIMEOUT, || {
        Ok(ranks("batch", &batch_ckpt, None).is_empty().then_some(()))
    })?;
    wait_for("llm's ranks on the spare", JOB_TIMEOUT, || {
        Ok((!ranks("llm", &ckpt, Some(&spare)).is_empty()).then_some(()))
    })?;
    let batch = job_status(&url, "batch")?;
    assert_eq!(batch["state"], "pending", "{batch}");
    assert_eq!(
        batch["restarts"], 0,
        "preemption is not its failure: {batch}"
    );

    // The failed node is repaired (power-cycled: its agent starts afresh
    // with healthy GPUs) and comes back: the reserve again, lent to batch.
    let index: usize = victim
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| anyhow!("unexpected node id {victim}"))?;
    let agent = agents
        .get_mut(index.wrapping_sub(1))
        .ok_or_else(|| anyhow!("no agent for {victim}"))?;
    agent.kill()?;
    let state = work.path().join(format!("agent-{index}"));
    let state = state.display().to_string();
    *agent = start_agent(
        work.path(),
        &url,
        &victim,
        "127.0.0.1",
        "sim:2",
        &["--state-dir", &state, "--allow-drills"],
    )?;
    wait_for(
        "the repaired node reporting healthy GPUs",
        JOB_TIMEOUT,
        || {
            let node = supctl_json(&url, &["node", &victim])?;
            let healthy = node["connected"] == true
                && node["gpus"]
                    .as_array()
                    .is_some_and(|g| !g.is_empty() && g.iter().all(|g| g["health"] == "ok"));
            Ok(healthy.then_some(()))
        },
    )?;
    let out = supctl(
        &url,
        &[
            "uncordon",
            &victim,
            "--skip-validation",
            "--reason",
            "reseated",
        ],
    )?;
    if !out.status.success() {
        bail!("uncordon: {}", String::from_utf8_lossy(&out.stderr));
    }
    let batch = wait_for("batch running again", JOB_TIMEOUT, || {
        let job = job_status(&url, "batch")?;
        Ok(
            (job["state"] == "running" && !ranks("batch", &batch_ckpt, None).is_empty())
                .then_some(job),
        )
    })?;
    assert_eq!(
        strings(&batch["nodes"]),
        std::slice::from_ref(&victim),
        "{batch}"
    );
    let status = supctl_json(&url, &["status"])?;
    assert_eq!(
        strings(&status["spares_lent"]),
        std::slice::from_ref(&victim),
        "{status}"
    );
    // At llm's next checkpoint it could grow back, but not into the reserve.
    let step = job_status(&url, "llm")?["checkpoint"]["step"]
        .as_u64()
        .unwrap_or(0);
    let llm = wait_for("llm's next checkpoint", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok((job["checkpoint"]["step"].as_u64() > Some(step)).then_some(job))
    })?;
    assert_eq!(strings(&llm["nodes"]).len(), 3, "{llm}");
    assert_eq!(job_status(&url, "batch")?["state"], "running");
    Ok(())
}
