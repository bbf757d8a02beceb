//! A save that dies half-way leaves a torn checkpoint (shards written, no
//! COMPLETE marker). The restart must resume from the one before it, and
//! the job must still end bit-identical to a fault-free run.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sup_e2e::*;

const STEPS: u32 = 30;
const EVERY: u32 = 5;
const PARAMS: u32 = 64;

#[test]
fn a_torn_newest_checkpoint_is_never_resumed() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = format!(
        "[nodes]\nunreachable_after = \"10s\"\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {}\nstop_grace = \"3s\"\n",
        free_port()?
    );
    let mut supd = Supd::new(work.path(), &config)?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), 2, |_| url.clone(), &[])?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    // Rank 0 dies after writing its shard of step 15, before the marker,
    // in the first generation only.
    let spec = format!(
        r#"name = "torn"
command = {command}
nodes = 2
min_nodes = 2
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
[env]
SUP_TRAINER_CRASH_DURING_SAVE = "15"
SUP_TRAINER_CRASH_GENERATION = "1"
"#,
        command = toml_list(&trainer_command(STEPS, EVERY, "0.1", PARAMS)),
        ckpt = ckpt.display()
    );
    let file = work.path().join("job.toml");
    std::fs::write(&file, spec)?;
    let out = supctl(&url, &["job", "submit", &file.display().to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let restarted = wait_for(
        "the restart after the torn save",
        Duration::from_secs(180),
        || {
            let ev = events_of(&url, "job_restarted", Some("torn"))?;
            Ok(ev.first().cloned())
        },
    )?;
    let why = restarted["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("resuming from step 10"),
        "must skip the torn step 15: {why}"
    );
    // Newer than the resume point: set aside before the next generation
    // started, as it was left.
    let generation = why
        .split("; generation ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .ok_or_else(|| anyhow!("no generation in {why}"))?;
    let torn = ckpt.join(format!(".sup-set-aside/g{generation}/step-15"));
    wait_for("step-15 set aside", Duration::from_secs(60), || {
        Ok(torn.exists().then_some(()))
    })?;
    assert!(!torn.join("COMPLETE").exists(), "step-15 is torn");

    wait_for("job succeeded", Duration::from_secs(180), || {
        let job = job_status(&url, "torn")?;
        if job["state"] == "failed" {
            bail!("job failed: {job}");
        }
        Ok((job["state"] == "succeeded").then_some(()))
    })?;

    let reference = work.path().join("reference");
    std::fs::create_dir_all(&reference)?;
    let cmd = trainer_command(STEPS, EVERY, "0", PARAMS);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SUP_CHECKPOINT_DIR", &reference)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port()?.to_string())
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "reference run: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let got = std::fs::read(ckpt.join("final.bin")).context("final.bin")?;
    let want = std::fs::read(reference.join("final.bin")).context("reference final.bin")?;
    assert!(
        got == want,
        "final parameters differ from the fault-free run"
    );
    Ok(())
}
