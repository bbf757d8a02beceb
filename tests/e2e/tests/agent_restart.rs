//! Restarting the agent does not restart training: with
//! `--leave-ranks-on-exit` (what deploy/sup-agent.service runs, next to
//! `KillMode=process`) an agent stopped with SIGTERM leaves its ranks
//! running, and the agent started after it re-adopts them from
//! `<state-dir>/ranks.json` and reports them as its own. The job stays
//! running in the same generation with no restart, and the ranks' progress
//! reaches supd through the new agent.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use sup_e2e::*;

/// Ranks are not this test's children once their agent is gone: kill their
/// process groups at the end, also when the test fails.
struct KillGroups(Vec<u32>);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .output();
        }
    }
}

fn sigterm(pid: u32) -> Result<()> {
    let out = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("kill -TERM {pid}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn a_restarted_agent_re_adopts_its_running_ranks() -> Result<()> {
    let work = tempfile::tempdir()?;
    let master_port = free_port()?;
    let mut supd = Supd::new(
        work.path(),
        &format!(
            "[nodes]\nunreachable_after = \"30s\"\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {master_port}\nstop_grace = \"3s\"\n"
        ),
    )?;
    supd.start()?;
    let url = supd.url();
    let state_dir = work.path().join("agent-state");
    let state_arg = state_dir.display().to_string();
    let args = ["--state-dir", state_arg.as_str(), "--leave-ranks-on-exit"];
    let mut agent = start_agent(work.path(), &url, "keep-1", "127.0.0.1", "sim:2", &args)?;

    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        "name = \"keep\"\ncommand = {}\nnodes = 1\ngpus_per_node = 2\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(100_000, 20, "0.1", 32)),
        ckpt.display()
    );
    let spec_file = work.path().join("job.toml");
    std::fs::write(&spec_file, spec)?;
    wait_for("the node ready", STARTUP_TIMEOUT, || {
        let node = supctl_json(&url, &["node", "keep-1"])?;
        Ok((node["state"] == "ready").then_some(()))
    })?;
    let out = supctl(&url, &["job", "submit", &spec_file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = wait_for("the job running and stepping", STARTUP_TIMEOUT, || {
        let job = job_status(&url, "keep")?;
        Ok((job["state"] == "running" && job["step"].as_u64().unwrap_or(0) > 0).then_some(job))
    })?;
    let generation = before["generation"].as_u64().unwrap_or(0).to_string();
    let env = [("SUP_JOB", "keep"), ("SUP_GENERATION", generation.as_str())];
    let mut ranks = wait_for("two ranks", STARTUP_TIMEOUT, || {
        let pids = processes_with_env(&env);
        Ok((pids.len() == 2).then_some(pids))
    })?;
    ranks.sort_unstable();
    let _cleanup = KillGroups(ranks.clone());

    // Stop the agent as systemd would, and wait until it is gone.
    let pid = agent
        .pid()
        .ok_or_else(|| anyhow::anyhow!("agent has no pid"))?;
    sigterm(pid)?;
    agent.wait_exit(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut alive = processes_with_env(&env);
    alive.sort_unstable();
    assert_eq!(alive, ranks, "the ranks must outlive the agent");

    let mut agent = start_agent(work.path(), &url, "keep-1", "127.0.0.1", "sim:2", &args)?;
    wait_for(
        "the re-adoption in the agent's log",
        STARTUP_TIMEOUT,
        || {
            Ok(agent
                .log_text()
                .contains("re-adopted the ranks a previous agent left running")
                .then_some(()))
        },
    )?;
    // Progress keeps arriving through the new agent, still the same
    // generation, and nothing was restarted.
    let step_then = job_status(&url, "keep")?["step"].as_u64().unwrap_or(0);
    let after = wait_for(
        "progress through the new agent",
        Duration::from_secs(30),
        || {
            let job = job_status(&url, "keep")?;
            Ok((job["step"].as_u64().unwrap_or(0) > step_then + 3).then_some(job))
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let after_wait = job_status(&url, "keep")?;
    for job in [&after, &after_wait] {
        assert_eq!(job["state"], "running", "{job}");
        assert_eq!(job["generation"], before["generation"], "{job}");
        assert_eq!(job["restarts"], before["restarts"], "{job}");
    }
    let mut still = processes_with_env(&env);
    still.sort_unstable();
    assert_eq!(still, ranks, "the same rank processes run");
    let restarted = events_of(&url, "job_restarted", Some("keep"))?;
    assert!(restarted.is_empty(), "no restart: {restarted:?}");

    // The adopted ranks are the agent's to stop: stopping the job ends them.
    assert!(
        supctl(&url, &["job", "stop", "keep", "--reason", "test done"])?
            .status
            .success()
    );
    wait_for("the adopted ranks stopped", Duration::from_secs(30), || {
        Ok(processes_with_env(&env).is_empty().then_some(()))
    })?;
    agent.kill()?;
    supd.kill()?;
    Ok(())
}
