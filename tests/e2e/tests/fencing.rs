//! Fencing with real processes: an agent frozen with SIGSTOP while its node
//! is replaced comes back to find its generation gone. Its stale ranks are
//! killed, its old-generation reports change nothing, and no rank of an old
//! generation runs once it has reconnected.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::*;

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

#[test]
fn a_frozen_agent_is_fenced_when_it_returns() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = format!(
        r#"[nodes]
unreachable_after = "4s"
telemetry_interval = "500ms"
[jobs]
master_port = {}
stop_grace = "2s"
lost_node_grace = "6s"
stall_confirm = "2s"
"#,
        free_port()?
    );
    let mut supd = Supd::new(work.path(), &config)?;
    supd.start()?;
    let url = supd.url();
    let agents = start_sim_agents(work.path(), 3, |_| url.clone(), &[])?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        "name = \"fence\"\ncommand = {}\nnodes = 2\nmin_nodes = 2\ngpus_per_node = 2\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(100_000, 10, "0.2", 32)),
        ckpt.display()
    );
    let file = work.path().join("job.toml");
    std::fs::write(&file, spec)?;
    assert!(
        supctl(&url, &["job", "submit", &file.display().to_string()])?
            .status
            .success()
    );

    let job = wait_for("job running", Duration::from_secs(120), || {
        let job = job_status(&url, "fence")?;
        Ok((job["state"] == "running").then_some(job))
    })?;
    let old_generation = job["generation"]
        .as_u64()
        .ok_or_else(|| anyhow!("generation"))?;
    let frozen_node = job["nodes"][1]
        .as_str()
        .ok_or_else(|| anyhow!("nodes"))?
        .to_owned();
    let index: usize = frozen_node.trim_start_matches("node-").parse::<usize>()? - 1;
    let frozen_pid = agents[index].pid().ok_or_else(|| anyhow!("agent pid"))?;
    let old_gen_text = old_generation.to_string();
    let stale_env = [
        ("SUP_JOB", "fence"),
        ("SUP_GENERATION", old_gen_text.as_str()),
        ("SUP_NODE_ID", frozen_node.as_str()),
    ];
    assert!(
        !processes_with_env(&stale_env).is_empty(),
        "the frozen node runs ranks"
    );

    signal(frozen_pid, "-STOP")?;
    let job = wait_for("the node replaced", Duration::from_secs(120), || {
        let job = job_status(&url, "fence")?;
        let replaced = job["generation"].as_u64() > Some(old_generation)
            && job["nodes"]
                .as_array()
                .is_some_and(|n| !n.iter().any(|v| v == frozen_node.as_str()))
            && job["state"] == "running";
        Ok(replaced.then_some(job))
    });
    // Thaw before any assertion can fail, so cleanup is not stuck.
    signal(frozen_pid, "-CONT")?;
    let job = job?;
    let new_generation = job["generation"].as_u64().unwrap_or(0);
    let restarts = job["restarts"].clone();

    wait_for(
        "the frozen agent reconnected",
        Duration::from_secs(60),
        || {
            let s = supctl_json(&url, &["status"])?;
            let back = s["nodes"].as_array().is_some_and(|n| {
                n.iter().any(|x| {
                    x["id"] == frozen_node.as_str()
                        && x["connected"] == true
                        && x["state"] != "unreachable"
                })
            });
            Ok(back.then_some(()))
        },
    )?;
    wait_for("stale ranks gone", Duration::from_secs(30), || {
        Ok(processes_with_env(&stale_env).is_empty().then_some(()))
    })?;
    // And they stay gone; the job is not disturbed by the returning agent.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        processes_with_env(&stale_env).is_empty(),
        "an old-generation rank survived"
    );
    let job: Value = job_status(&url, "fence")?;
    assert_eq!(job["generation"].as_u64(), Some(new_generation), "{job}");
    assert_eq!(job["restarts"], restarts, "{job}");
    assert_eq!(job["state"], "running", "{job}");
    let node = supctl_json(&url, &["node", &frozen_node])?;
    assert_eq!(
        node["job"],
        Value::Null,
        "the returned node holds no job: {node}"
    );
    assert!(
        processes_with_env(&[("SUP_JOB", "fence"), ("SUP_NODE_ID", frozen_node.as_str())])
            .is_empty()
    );
    assert!(supctl(&url, &["job", "stop", "fence"])?.status.success());
    Ok(())
}
