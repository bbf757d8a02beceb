//! Planned maintenance with real processes: supd, four agents (sim:2) and the
//! example trainer as a 2-node job. `supctl drain` on one of its nodes: the
//! job keeps training until its next complete checkpoint, then moves onto a
//! spare resuming from exactly that checkpoint, without counting a restart,
//! and the node ends cordoned with the reason. Then `supctl node remove`:
//! refused for a node that holds the job, done for the drained node and for
//! an unreachable one, which leave `supctl nodes` and `/metrics`.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn supd_config(master_port: u16) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "3s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "3s"
"#
    )
}

fn job_spec(ckpt: &std::path::Path) -> String {
    format!(
        r#"name = "llm"
command = {command}
nodes = 2
min_nodes = 1
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 10
"#,
        // Long enough to outlive the test: it ends when the test does.
        command = toml_list(&trainer_command(100_000, 10, "0.1", 257)),
        ckpt = ckpt.display(),
    )
}

/// The agent process of `node-I` (start_sim_agents numbers them from 1).
fn agent_of<'a>(agents: &'a mut [Proc], node: &str) -> Result<&'a mut Proc> {
    let index: usize = node
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| anyhow!("unexpected node id {node}"))?;
    agents
        .get_mut(index.wrapping_sub(1))
        .ok_or_else(|| anyhow!("no agent for {node}"))
}

fn node_json(url: &str, id: &str) -> Result<Value> {
    supctl_json(url, &["node", id])
}

#[test]
fn a_drain_moves_the_job_at_its_next_checkpoint_and_removed_nodes_leave() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &supd_config(free_port()?))?;
    supd.start()?;
    let url = supd.url();
    let mut agents = start_sim_agents(work.path(), 4, |_| url.clone(), &[])?;
    wait_ready_nodes(&url, 4)?;

    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    submit_job(&url, work.path(), "llm", &job_spec(&ckpt))?;
    let job = wait_for("the job running with a checkpoint", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok(
            (job["state"] == "running" && job["checkpoint"]["step"].as_u64().is_some())
                .then_some(job),
        )
    })?;
    let generation = job["generation"].as_u64().unwrap_or(0);
    let victim = nodes_of(&job)
        .get(1)
        .cloned()
        .ok_or_else(|| anyhow!("no second node in {job}"))?;

    // Drain: the node is marked, the job keeps its generation for now.
    let out = supctl(&url, &["drain", &victim, "--reason", "bios update"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("moves off at its next complete checkpoint"),
        "{text}"
    );
    let node = node_json(&url, &victim)?;
    let after_step = node["drain"]["after_step"]
        .as_u64()
        .ok_or_else(|| anyhow!("no drain.after_step in {node}"))?;
    assert!(
        node["state"] == "draining" || node["state"] == "cordoned",
        "{node}"
    );

    // The move: a new generation, from the first checkpoint after the drain.
    let job = wait_for("the job moved off the drained node", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok(
            (job["state"] == "running" && job["generation"].as_u64() > Some(generation))
                .then_some(job),
        )
    })?;
    assert!(!nodes_of(&job).contains(&victim), "{job}");
    assert_eq!(nodes_of(&job).len(), 2, "a spare took its place: {job}");
    assert_eq!(job["restarts"], 0, "a planned move is not a restart: {job}");
    let restarted = events_of(&url, "job_restarted", Some("llm"))?;
    let why = restarted
        .last()
        .and_then(|e| e["reason"].as_str())
        .ok_or_else(|| anyhow!("no job_restarted event"))?
        .to_owned();
    let step: u64 = why
        .split("at its new checkpoint, step ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("not a planned move: {why}"))?;
    assert!(step > after_step, "{why}");
    assert!(
        why.contains(&format!("resuming from step {step} ")),
        "resumes from exactly that checkpoint: {why}"
    );
    let node = node_json(&url, &victim)?;
    assert_eq!(node["state"], "cordoned", "{node}");
    assert_eq!(node["cordon"]["reason"], "drained: bios update", "{node}");

    // Removal: refused while a node holds the job (exit status 5) ...
    let busy = nodes_of(&job)[0].clone();
    let out = supctl(&url, &["node", "remove", &busy])?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds job 'llm'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and while its agent runs (it would join again at once) ...
    let out = supctl(&url, &["node", "remove", &victim])?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop sup-agent on it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... done for the drained (cordoned) node once its agent is stopped ...
    agent_of(&mut agents, &victim)?.kill()?;
    wait_for("the drained node's agent disconnected", JOB_TIMEOUT, || {
        Ok((node_json(&url, &victim)?["connected"] == false).then_some(()))
    })?;
    let out = supctl(&url, &["node", "remove", &victim])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and for an unreachable one: the remaining spare's agent stops.
    let status = supctl_json(&url, &["status"])?;
    let spare = status["spares"][0]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no spare in {status}"))?;
    agent_of(&mut agents, &spare)?.kill()?;
    wait_for("the stopped agent's node unreachable", JOB_TIMEOUT, || {
        Ok((node_json(&url, &spare)?["state"] == "unreachable").then_some(()))
    })?;
    let out = supctl(&url, &["node", "remove", &spare])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nodes = supctl_json(&url, &["nodes", "--all"])?;
    let listed: Vec<&str> = nodes["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "{nodes}");
    assert!(!listed.contains(&victim.as_str()) && !listed.contains(&spare.as_str()));
    let (code, metrics) = http_get(supd.http_port, "/metrics")?;
    assert_eq!(code, 200);
    for gone in [&victim, &spare] {
        assert!(
            !metrics.contains(&format!("node=\"{gone}\"")),
            "{gone} still has series"
        );
    }
    let counted: f64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("sup_nodes{"))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted, 2.0,
        "the cluster's node count (the breaker's denominator)"
    );
    let removed = events_of(&url, "node_removed", None)?;
    assert_eq!(removed.len(), 2, "{removed:?}");
    Ok(())
}

/// `sup_checkpoint_catalogs_total` by node: which agents report catalogs.
fn catalogs_by_node(http_port: u16) -> Result<Vec<(String, f64)>> {
    let (code, text) = http_get(http_port, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("sup_checkpoint_catalogs_total{node=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter_map(|(node, v)| Some((node.to_owned(), v.trim().parse().ok()?)))
        .collect())
}

#[test]
fn one_agent_scans_a_jobs_checkpoints_and_the_scanner_moves_with_rank_0() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &supd_config(free_port()?))?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), 4, |_| url.clone(), &[])?;
    wait_ready_nodes(&url, 4)?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    submit_job(
        &url,
        work.path(),
        "llm",
        &job_spec(&ckpt).replace("nodes = 2", "nodes = 3"),
    )?;
    // A few checkpoints: each one a new catalog, from the scanner only.
    let job = wait_for("three checkpoints", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok(
            (job["state"] == "running" && job["checkpoint"]["step"].as_u64() >= Some(30))
                .then_some(job),
        )
    })?;
    let nodes = nodes_of(&job);
    assert_eq!(nodes.len(), 3, "{job}");
    let reporting = catalogs_by_node(supd.http_port)?;
    assert_eq!(
        reporting
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec![nodes[0].as_str()],
        "only the node of rank 0 reports catalogs: {reporting:?}"
    );

    // Cordon rank 0's node: the restart moves rank 0, and the scanner
    // with it.
    let generation = job["generation"].as_u64().unwrap_or(0);
    let out = supctl(&url, &["cordon", &nodes[0], "--reason", "move rank 0"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = job["checkpoint"]["step"].as_u64().unwrap_or(0);
    let job = wait_for("a checkpoint of the next generation", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok((job["state"] == "running"
            && job["generation"].as_u64() > Some(generation)
            && job["checkpoint"]["step"].as_u64() > Some(before))
        .then_some(job))
    })?;
    let new_rank0 = nodes_of(&job)
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("no nodes in {job}"))?;
    assert_ne!(new_rank0, nodes[0]);
    let reporting = catalogs_by_node(supd.http_port)?;
    let names: Vec<&str> = reporting.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&new_rank0.as_str()), "{reporting:?}");
    assert!(
        names.iter().all(|n| *n == nodes[0] || *n == new_rank0),
        "only the old and the new rank 0 ever reported: {reporting:?}"
    );
    Ok(())
}

#[test]
fn an_uncordon_validates_the_node_first_and_a_failure_keeps_it_cordoned() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &supd_config(free_port()?))?;
    supd.start()?;
    let url = supd.url();
    let agent = |id: &str, command: &str| {
        let state = work.path().join(id).display().to_string();
        start_agent(
            work.path(),
            &url,
            id,
            "127.0.0.1",
            "sim:2",
            &["--state-dir", &state, "--validation-command", command],
        )
    };
    let _bad = agent(
        "node-bad",
        "echo 'running diagnostics'; echo 'GPU 1: memory test FAILED' >&2; exit 3",
    )?;
    let _good = agent("node-good", "echo 'all GPUs pass'")?;
    wait_ready_nodes(&url, 2)?;
    for node in ["node-bad", "node-good"] {
        let out = supctl(&url, &["cordon", node, "--reason", "board replaced"])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = supctl(&url, &["uncordon", node, "--reason", "repaired"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("is being validated"), "{text}");
    }
    wait_for("node-good back in service", JOB_TIMEOUT, || {
        Ok((node_json(&url, "node-good")?["state"] == "ready").then_some(()))
    })?;
    let failed = wait_for("node-bad's validation failed", JOB_TIMEOUT, || {
        let events = events_of(&url, "node_validation_failed", None)?;
        Ok(events.into_iter().find(|e| e["node"] == "node-bad"))
    })?;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("GPU 1: memory test FAILED"), "{reason}");
    let node = node_json(&url, "node-bad")?;
    assert_eq!(node["state"], "cordoned", "{node}");
    let evidence = node["cordon"]["validation"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("memory test FAILED") && evidence.contains("exit status: 3"),
        "{node}"
    );
    let uncordoned = events_of(&url, "node_uncordoned", None)?;
    assert!(
        uncordoned.iter().any(|e| e["node"] == "node-good"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("after its validation passed"))),
        "{uncordoned:?}"
    );
    // An operator can still return it without validation.
    let out = supctl(&url, &["uncordon", "node-bad", "--skip-validation"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node_json(&url, "node-bad")?["state"], "ready");
    Ok(())
}
