//! No mixed checkpoints after a resume from an older step: real supd, two
//! agents (sim:2, --allow-drills) and the example trainer as a 2-node job.
//!
//! A torn-checkpoint drill tears step T right after its save and kills a
//! rank. The next generation resumes from T - 5, so before its ranks start
//! node rank 0's agent sets step T aside into
//! `<ckpt>/.sup-set-aside/g<generation>/`: the `checkpoint_set_aside` event
//! says what moved where, the files are there as the drill left them, and
//! only then does the generation write step T again (its own metadata,
//! after the event). A second fault, with a complete-looking step-5000
//! directory made by hand (never believed by supd: a save no scan has
//! listed yet), resumes from a checkpoint the resumed generation wrote
//! whole and sets step-5000 aside intact. Nothing set aside is ever a
//! resume point, and the job ends bit-identical to a fault-free run.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::*;

const STEPS: u32 = 90;
const EVERY: u64 = 5;
const PARAMS: u32 = 64;
const JOB_TIMEOUT: Duration = Duration::from_secs(180);
/// A step the job never reaches, so only the hand-made directory has it.
const HAND_MADE: u64 = 5000;

fn reason(event: &Value) -> String {
    event["reason"].as_str().unwrap_or_default().to_owned()
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().unwrap_or(0)
}

fn job_of(url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    wait_for(what, JOB_TIMEOUT, || {
        let job = job_status(url, "llm")?;
        if job["state"] == "failed" {
            bail!("job failed: {job}");
        }
        Ok(ok(&job).then_some(job))
    })
}

/// The `n`-th (from 0) `job_restarted` event of the job.
fn restart(url: &str, n: usize) -> Result<Value> {
    wait_for(&format!("restart #{}", n + 1), JOB_TIMEOUT, || {
        Ok(events_of(url, "job_restarted", Some("llm"))?
            .into_iter()
            .nth(n))
    })
}

/// The `checkpoint_set_aside` event of `generation`.
fn set_aside_event(url: &str, generation: u64) -> Result<Value> {
    let before = format!("before generation {generation} started");
    wait_for(
        &format!("the checkpoint_set_aside event of generation {generation}"),
        JOB_TIMEOUT,
        || {
            Ok(events_of(url, "checkpoint_set_aside", Some("llm"))?
                .into_iter()
                .find(|e| reason(e).contains(&before)))
        },
    )
}

fn drill(url: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["drill"];
    all.extend_from_slice(args);
    all.extend(["--by", "e2e"]);
    let out = supctl_json(url, &all)?;
    Ok(out["message"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn newer_checkpoints_are_set_aside_before_a_resumed_generation_rewrites_them() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = format!(
        "[nodes]\nunreachable_after = \"10s\"\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {}\nstop_grace = \"3s\"\n",
        free_port()?
    );
    let mut supd = Supd::new(work.path(), &config)?;
    supd.start()?;
    let url = supd.url();
    let agents = start_sim_agents(work.path(), 2, |_| url.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&url, 2)?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        r#"name = "llm"
command = {command}
nodes = 2
min_nodes = 2
gpus_per_node = 2
max_restarts = 5
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
"#,
        command = toml_list(&trainer_command(STEPS, EVERY as u32, "0.2", PARAMS)),
        ckpt = ckpt.display()
    );
    submit_job(&url, work.path(), "llm", &spec)?;

    let job = job_of(&url, "two complete checkpoints", |j| {
        j["state"] == "running" && j["checkpoint"]["step"].as_u64().unwrap_or(0) >= 2 * EVERY
    })?;
    let first_generation = job["generation"].as_u64().unwrap_or(0);
    let victim = job["nodes"][1]
        .as_str()
        .ok_or_else(|| anyhow!("no second node in {job}"))?
        .to_owned();
    let msg = drill(&url, &["torn-checkpoint", "--node", &victim])?;
    assert!(msg.contains("torn-checkpoint"), "{msg}");
    let agent_log = |node: &str| {
        agents
            .iter()
            .find(|a| a.name == format!("agent-{node}"))
            .map(Proc::log_text)
            .unwrap_or_default()
    };
    let tore = wait_for("the agent tearing a checkpoint", JOB_TIMEOUT, || {
        Ok(agent_log(&victim)
            .lines()
            .find(|l| l.contains("tore checkpoint step "))
            .map(str::to_owned))
    })?;
    let torn = number_after(&tore, "tore checkpoint step ")?;

    // The restart resumes from the checkpoint before the torn one.
    let restarted = restart(&url, 0)?;
    let why = reason(&restarted);
    let resumed = number_after(&why, "resuming from step ")?;
    assert_eq!(resumed, torn - EVERY, "{why}");
    let generation = number_after(&why, "; generation ")?;
    assert!(generation > first_generation, "{why}");

    // Node rank 0 of the new generation set the torn step aside before its
    // ranks started, and said where.
    let set_aside = set_aside_event(&url, generation)?;
    let said = reason(&set_aside);
    eprintln!("checkpoint_set_aside: {said}");
    let job = job_status(&url, "llm")?;
    let rank0 = job["nodes"][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(set_aside["node"], rank0.as_str(), "{set_aside} {job}");
    let into = ckpt.join(".sup-set-aside").join(format!("g{generation}"));
    let name = format!("step-{torn}");
    assert_eq!(
        said,
        format!(
            "node {rank0} set aside 1 path(s) newer than the resume point, step {resumed}, before generation {generation} started, into {}: step {torn} {} → {}",
            into.display(),
            ckpt.join(&name).display(),
            into.join(&name).display()
        )
    );
    // Moved, not deleted: the torn save as the drill left it.
    assert!(into.join(&name).is_dir());
    assert!(!into.join(&name).join("COMPLETE").exists());

    // Only then was step T written again, whole, by the resumed generation
    // (the set-aside copy is the old generation's torn save, untouched by
    // the new one). The scanner may skip a save: any newer checkpoint
    // counts.
    let rewritten = wait_for("a checkpoint at or past T again", JOB_TIMEOUT, || {
        Ok(events_of(&url, "job_checkpoint", Some("llm"))?
            .into_iter()
            .filter(|e| seq(e) > seq(&restarted))
            .find(|e| number_after(&reason(e), "step ").is_ok_and(|s| s >= torn)))
    })?;
    assert!(
        seq(&rewritten) > seq(&set_aside) && seq(&set_aside) > seq(&restarted),
        "restart {restarted}\nset aside {set_aside}\nrewritten {rewritten}"
    );
    let generation_of = |dir: &std::path::Path| -> Result<Value> {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("metadata.json"))
                .with_context(|| format!("{}/metadata.json", dir.display()))?,
        )?;
        Ok(meta["generation"].clone())
    };
    assert_eq!(generation_of(&ckpt.join(&name))?, generation);
    assert!(ckpt.join(&name).join("COMPLETE").is_file());
    assert_eq!(generation_of(&into.join(&name))?, first_generation);

    // A second fault once the resumed generation has saved past T, with a
    // complete-looking directory at a step beyond any the job reached: no
    // scan makes it a resume point (supd does not believe it), like a save
    // not listed yet.
    job_of(&url, "a checkpoint past the torn step", |j| {
        j["state"] == "running" && j["checkpoint"]["step"].as_u64().unwrap_or(0) > torn
    })?;
    let hand_made = ckpt.join(format!("step-{HAND_MADE}"));
    std::fs::create_dir_all(&hand_made)?;
    std::fs::write(hand_made.join("metadata.json"), "{\"hand\": \"made\"}\n")?;
    std::fs::write(hand_made.join("COMPLETE"), "")?;
    let msg = drill(&url, &["crash", "--node", &victim])?;
    assert!(msg.contains("crash"), "{msg}");
    let second = reason(&restart(&url, 1)?);
    let resumed_again = number_after(&second, "resuming from step ")?;
    assert!(
        resumed_again > torn && resumed_again < HAND_MADE,
        "{second}"
    );
    assert!(!second.contains(".sup-set-aside"), "{second}");
    let second_generation = number_after(&second, "; generation ")?;
    let said = reason(&set_aside_event(&url, second_generation)?);
    eprintln!("checkpoint_set_aside: {said}");
    let into = ckpt
        .join(".sup-set-aside")
        .join(format!("g{second_generation}"));
    let name = format!("step-{HAND_MADE}");
    let moved = format!(
        "step {HAND_MADE} {} → {}",
        hand_made.display(),
        into.join(&name).display()
    );
    assert!(
        said.contains(&format!("newer than the resume point, step {resumed_again}, before generation {second_generation} started")) && said.contains(&moved),
        "{moved}\nin: {said}"
    );
    assert_eq!(
        std::fs::read_to_string(into.join(&name).join("metadata.json"))?,
        "{\"hand\": \"made\"}\n"
    );
    assert!(into.join(&name).join("COMPLETE").is_file());
    assert!(!hand_made.exists());

    let done = job_of(&url, "job succeeded", |j| j["state"] == "succeeded")?;
    assert_ne!(done["checkpoint"]["step"], HAND_MADE, "{done}");
    for event in events_of(&url, "job_restarted", Some("llm"))? {
        assert!(!reason(&event).contains(".sup-set-aside"), "{event}");
    }
    let listed = supctl_json(&url, &["checkpoints", "llm"])?;
    let paths: Vec<&str> = listed
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["path"].as_str()).collect())
        .unwrap_or_default();
    assert!(!paths.is_empty(), "{listed}");
    assert!(
        paths.iter().all(|p| !p.contains(".sup-set-aside")),
        "{listed}"
    );

    // Bit-identical to a fault-free run: nothing mixed was ever loaded.
    let reference = work.path().join("reference");
    std::fs::create_dir_all(&reference)?;
    let cmd = trainer_command(STEPS, EVERY as u32, "0", PARAMS);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SUP_CHECKPOINT_DIR", &reference)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port()?.to_string())
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .output()?;
    if !out.status.success() {
        bail!("reference run: {}", String::from_utf8_lossy(&out.stderr));
    }
    let got = std::fs::read(ckpt.join("final.bin")).context("final.bin")?;
    let want = std::fs::read(reference.join("final.bin")).context("reference final.bin")?;
    assert!(
        got == want,
        "final parameters differ from the fault-free run"
    );
    drop(agents);
    Ok(())
}
