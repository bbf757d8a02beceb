//! A real JAX job with real Orbax checkpoints under real supd and agents
//! (issue 18): `examples/jax/train_orbax.py`, one JAX process per rank
//! (`jax.distributed` on CPU, gloo collectives, 2 CPU devices a process),
//! its train state sharded over a mesh of every device, saved by Orbax's
//! `CheckpointManager` into `<checkpoint_dir>/<step>/`.
//!
//! - A GPU fault (an Xid 79 drill) cordons a node and the job shrinks from
//!   4 processes (8 devices) to 2 (4 devices): the next generation restores
//!   the newest checkpoint supd had, resharded onto half the devices, with
//!   the very values that were saved, and trains to the end on the same
//!   losses as a fault-free run.
//! - A save torn by SIGKILL of the JAX process that commits it (rank 0,
//!   Orbax's primary host), stopped inside the save after every process
//!   wrote its arrays and before the commit: with Orbax's default atomicity
//!   (a `<step>.orbax-checkpoint-tmp` directory that is never renamed) and
//!   with the commit-file variant (`<step>/` written in place, no
//!   `commit_success.txt`). The torn step is never chosen: the next
//!   generation resumes from the newest committed one, which it finds
//!   exactly as it was saved, and the torn save is set aside.
//!
//! Needs the Python environment of scripts/python-env.sh
//! (`SUP_TEST_PYTHON`); skipped without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::*;

const STEPS: u64 = 60;
const EVERY: u64 = 5;
/// Paces the job so that faults land mid-training on a busy 2-core machine.
const STEP_TIME: &str = "0.2";
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// The step whose save is torn in the torn-save tests.
const TORN: u64 = 10;

fn script() -> PathBuf {
    repo_root().join("examples/jax/train_orbax.py")
}

struct Job {
    url: String,
    ckpt: PathBuf,
    record: PathBuf,
}

fn supd_config() -> Result<String> {
    Ok(format!(
        "[nodes]\nunreachable_after = \"10s\"\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {}\nstop_grace = \"3s\"\n",
        free_port()?
    ))
}

/// The job spec: `nodes` nodes of 2 ranks, each rank a JAX process with 2
/// CPU devices.
fn job_spec(python: &Path, job: &Job, nodes: u32, min_nodes: u32, extra_args: &[String]) -> String {
    let mut command = vec![
        python.display().to_string(),
        script().display().to_string(),
        "--steps".to_owned(),
        STEPS.to_string(),
        "--checkpoint-every".to_owned(),
        EVERY.to_string(),
        "--step-time".to_owned(),
        STEP_TIME.to_owned(),
        "--devices-per-process".to_owned(),
        "2".to_owned(),
        "--record-dir".to_owned(),
        job.record.display().to_string(),
    ];
    command.extend_from_slice(extra_args);
    format!(
        r#"name = "jax"
command = {command}
nodes = {nodes}
min_nodes = {min_nodes}
gpus_per_node = 2
max_restarts = 5
checkpoint_dir = "{ckpt}"
checkpoint_layout = "orbax"
"#,
        command = toml_list(&command),
        ckpt = job.ckpt.display(),
    )
}

fn reason(event: &Value) -> String {
    event["reason"].as_str().unwrap_or_default().to_owned()
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().unwrap_or(0)
}

/// Waits until the job passes `ok`; a failed job ends the wait at once.
fn job_where(url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    let job = wait_for(what, JOB_TIMEOUT, || {
        let job = job_status(url, "jax")?;
        Ok((job["state"] == "failed" || ok(&job)).then_some(job))
    })?;
    if job["state"] == "failed" && !ok(&job) {
        bail!("job failed while waiting for {what}: {job}");
    }
    Ok(job)
}

/// The first `job_restarted` event of the job.
fn first_restart(url: &str) -> Result<Value> {
    wait_for("the job's restart", JOB_TIMEOUT, || {
        Ok(events_of(url, "job_restarted", Some("jax"))?
            .into_iter()
            .next())
    })
}

/// The lines of the record rank 0 of every generation appended.
fn record(dir: &Path) -> Result<Vec<Value>> {
    let file = dir.join("record.jsonl");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("a line of record.jsonl: {l}")))
        .collect()
}

fn events<'a>(record: &'a [Value], event: &str) -> impl Iterator<Item = &'a Value> {
    let event = event.to_owned();
    record.iter().filter(move |e| e["event"] == event.as_str())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A step directory Orbax committed: its `_CHECKPOINT_METADATA` has a
/// commit time, and (Orbax 0.12: with either atomicity) the step-level
/// `commit_success.txt` is there.
fn assert_committed(dir: &Path) -> Result<()> {
    let meta = read_json(&dir.join("_CHECKPOINT_METADATA"))?;
    assert!(
        meta["commit_timestamp_nsecs"].is_u64(),
        "{} is committed: {meta}",
        dir.display()
    );
    assert!(
        dir.join("commit_success.txt").is_file(),
        "{}/commit_success.txt",
        dir.display()
    );
    Ok(())
}

/// What `supctl checkpoints` lists: every one a committed step directory of
/// the job (never a torn or set-aside one), verified by its metadata.
fn listed_checkpoints(url: &str, job: &Job) -> Result<Vec<u64>> {
    let listed = supctl_json(url, &["checkpoints", "jax"])?;
    let listed = listed
        .as_array()
        .ok_or_else(|| anyhow!("supctl checkpoints -o json: not a list: {listed}"))?;
    let mut steps = Vec::new();
    for c in listed {
        let step = c["step"]
            .as_u64()
            .ok_or_else(|| anyhow!("no step in {c}"))?;
        let path = c["path"].as_str().unwrap_or_default();
        assert_eq!(
            Path::new(path),
            job.ckpt.join(step.to_string()),
            "listed checkpoint {c}"
        );
        assert_committed(Path::new(path))?;
        let verified = c["verified"].as_str().unwrap_or_default();
        assert!(
            verified.contains("orbax _CHECKPOINT_METADATA") && verified.contains("state"),
            "verified by its _CHECKPOINT_METADATA: {c}"
        );
        steps.push(step);
    }
    Ok(steps)
}

/// The same training without sup or faults, one process with 2 devices:
/// the loss of every step.
fn reference_losses(python: &Path, work: &Path) -> Result<Vec<(u64, f64)>> {
    let dir = work.join("reference");
    let out = Command::new(python)
        .arg(script())
        .args(["--steps", &STEPS.to_string(), "--checkpoint-every", "0"])
        .args(["--devices-per-process", "2", "--record-dir"])
        .arg(&dir)
        .env("SUP_CHECKPOINT_DIR", dir.join("ckpt"))
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env_remove("XLA_FLAGS")
        .output()
        .context("running the reference job")?;
    if !out.status.success() {
        bail!(
            "reference run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(losses(&record(&dir)?, None))
}

/// (step, loss) of the `step` lines, of one generation or all.
fn losses(record: &[Value], generation: Option<u64>) -> Vec<(u64, f64)> {
    events(record, "step")
        .filter(|e| generation.is_none_or(|g| e["generation"] == g))
        .filter_map(|e| Some((e["step"].as_u64()?, e["loss"].as_f64()?)))
        .collect()
}

/// Every step of `got` has the reference's loss (float32 sums over a
/// different number of devices differ in their last bits).
fn assert_losses_match(got: &[(u64, f64)], want: &[(u64, f64)]) {
    for (step, loss) in got {
        let reference = want
            .iter()
            .find(|(s, _)| s == step)
            .map(|(_, l)| *l)
            .unwrap_or(f64::NAN);
        assert!(
            (loss - reference).abs() <= 1e-4 * reference.abs().max(1e-3),
            "step {step}: loss {loss}, fault-free run {reference}"
        );
    }
}

/// The generation's `saved` digest of `step`.
fn saved_digest(record: &[Value], generation: u64, step: u64) -> Result<String> {
    events(record, "saved")
        .find(|e| e["generation"] == generation && e["step"] == step)
        .and_then(|e| e["digest"].as_str().map(str::to_owned))
        .ok_or_else(|| anyhow!("generation {generation} recorded no save of step {step}"))
}

fn start_generation(record: &[Value], generation: u64) -> Result<&Value> {
    events(record, "start")
        .find(|e| e["generation"] == generation)
        .ok_or_else(|| anyhow!("no start of generation {generation} in the record"))
}

/// What the restarted generation did: it restored `resumed` from
/// `<ckpt>/<resumed>` with exactly the values generation `before` saved
/// there, then trained every step after it to the end.
fn assert_resumed_and_finished(
    record: &[Value],
    job: &Job,
    before: u64,
    generation: u64,
    resumed: u64,
) -> Result<()> {
    let restored = events(record, "resumed")
        .find(|e| e["generation"] == generation)
        .ok_or_else(|| anyhow!("generation {generation} recorded no restore"))?;
    assert_eq!(restored["step"], resumed, "{restored}");
    assert_eq!(
        restored["path"].as_str().map(PathBuf::from),
        Some(job.ckpt.join(resumed.to_string())),
        "{restored}"
    );
    assert_eq!(
        restored["digest"].as_str(),
        Some(saved_digest(record, before, resumed)?.as_str()),
        "the restored train state is the one generation {before} saved at step {resumed}"
    );
    let steps: Vec<u64> = losses(record, Some(generation))
        .iter()
        .map(|(s, _)| *s)
        .collect();
    let expected: Vec<u64> = (resumed + 1..=STEPS).collect();
    assert_eq!(
        steps, expected,
        "generation {generation} trained on from {resumed}"
    );
    let finals: Vec<&Value> = events(record, "final").collect();
    assert_eq!(finals.len(), 1, "one generation finished: {finals:?}");
    assert_eq!(finals[0]["generation"], generation);
    assert_eq!(finals[0]["step"], STEPS);
    Ok(())
}

/// Every step directory after `resumed` in the checkpoint directory was
/// written by `generation`, never left over from before the restart.
fn assert_rewritten_after(job: &Job, resumed: u64, generation: u64) -> Result<()> {
    for entry in std::fs::read_dir(&job.ckpt)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(step) = name.parse::<u64>() else {
            assert!(
                name.starts_with('.'),
                "nothing but step directories and hidden ones in {}: {name}",
                job.ckpt.display()
            );
            continue;
        };
        let dir = entry.path();
        assert_committed(&dir)?;
        let meta = read_json(&dir.join("meta/metadata"))?;
        if step > resumed {
            assert_eq!(meta["generation"], generation, "{}: {meta}", dir.display());
        }
    }
    Ok(())
}

fn setup(work: &Path) -> Result<(Supd, Job)> {
    let mut supd = Supd::new(work, &supd_config()?)?;
    supd.start()?;
    let job = Job {
        url: supd.url(),
        ckpt: work.join("ckpt"),
        record: work.join("record"),
    };
    std::fs::create_dir_all(&job.ckpt)?;
    Ok((supd, job))
}

#[test]
fn a_jax_job_restores_its_orbax_checkpoint_resharded_onto_fewer_devices() -> Result<()> {
    let Some(python) = ml_python()? else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let (_supd, job) = setup(work.path())?;
    let url = job.url.clone();
    let _agents = start_sim_agents(work.path(), 2, |_| url.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&url, 2)?;
    submit_job(
        &url,
        work.path(),
        "jax",
        &job_spec(&python, &job, 2, 1, &[]),
    )?;

    // Two nodes, 4 JAX processes, 8 devices, and two checkpoints supd knows.
    let running = job_where(&url, "2 nodes running with a checkpoint ≥ 10", |j| {
        j["state"] == "running" && j["checkpoint"]["step"].as_u64().unwrap_or(0) >= 2 * EVERY
    })?;
    assert_eq!(running["world_size"], 4, "{running}");
    let first = running["generation"].as_u64().unwrap_or(0);
    let known = running["checkpoint"]["step"].as_u64().unwrap_or(0);
    let victim = running["nodes"][1]
        .as_str()
        .ok_or_else(|| anyhow!("no second node in {running}"))?
        .to_owned();

    // The GPU falls off the bus: the node is cordoned and, with no spare,
    // the job shrinks to the other node.
    let out = supctl_json(
        &url,
        &[
            "drill", "xid", "--node", &victim, "--gpu", "1", "--xid", "79", "--by", "e2e",
        ],
    )?;
    assert!(
        out["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Xid 79"),
        "{out}"
    );
    let restarted = first_restart(&url)?;
    let why = reason(&restarted);
    assert!(
        why.contains(&format!("node {victim} cordoned")) && why.contains("Xid 79"),
        "{why}"
    );
    let resumed = number_after(&why, "resuming from step ")?;
    let generation = number_after(&why, "; generation ")?;
    assert!(generation > first, "{why}");
    // The newest checkpoint supd had when it decided: the last one it was
    // told of before the restart.
    let newest_known = events_of(&url, "job_checkpoint", Some("jax"))?
        .iter()
        .filter(|e| seq(e) < seq(&restarted))
        .filter_map(|e| number_after(&reason(e), "step ").ok())
        .max();
    assert_eq!(newest_known, Some(resumed), "{why}");
    assert!(resumed >= known && resumed % EVERY == 0, "{why}");
    assert!(
        why.contains(&job.ckpt.join(resumed.to_string()).display().to_string()),
        "{why}"
    );

    // Shrunk to the other node: 2 ranks. (From the events: the generation
    // may well be over before a status poll sees it running.)
    assert!(
        why.contains(&format!("without {victim}")) && why.contains("shrunk from 2 to 1 node(s)"),
        "{why}"
    );
    let running_event = wait_for("the shrunk generation running", JOB_TIMEOUT, || {
        Ok(events_of(&url, "job_running", Some("jax"))?
            .into_iter()
            .map(|e| reason(&e))
            .find(|r| r.starts_with(&format!("generation {generation} "))))
    })?;
    assert!(
        running_event.contains("running on 1 node(s), world size 2"),
        "{running_event}"
    );

    let done = job_where(&url, "the job succeeded", |j| j["state"] == "succeeded")?;
    assert_eq!(done["restarts"], 1, "{done}");

    // What the ranks did: 8 devices, then 4; the restored values are the
    // saved ones; training went on from there to the end.
    let record = record(&job.record)?;
    let before = start_generation(&record, first)?;
    assert_eq!(
        (&before["processes"], &before["devices"]),
        (&Value::from(4), &Value::from(8)),
        "{before}"
    );
    let after = start_generation(&record, generation)?;
    assert_eq!(
        (&after["processes"], &after["devices"]),
        (&Value::from(2), &Value::from(4)),
        "{after}"
    );
    assert_eq!(
        after["resume_from"].as_str().map(PathBuf::from),
        Some(job.ckpt.join(resumed.to_string())),
        "{after}"
    );
    assert_resumed_and_finished(&record, &job, first, generation, resumed)?;
    // The checkpoint itself says who wrote it: 8 devices.
    let meta = read_json(&job.ckpt.join(resumed.to_string()).join("meta/metadata"))?;
    assert_eq!(
        (&meta["devices"], &meta["generation"]),
        (&Value::from(8), &Value::from(first)),
        "{meta}"
    );
    assert_rewritten_after(&job, resumed, generation)?;

    // Same data by step, same losses as a run that never failed (to float32
    // noise: 8 and 4 devices sum in different orders).
    let reference = reference_losses(&python, work.path())?;
    assert_eq!(reference.len() as u64, STEPS);
    assert_losses_match(&losses(&record, None), &reference);

    // supd lists the checkpoints as saved: committed, verified, up to the
    // last one.
    let steps = wait_for("the last checkpoint listed", JOB_TIMEOUT, || {
        let steps = listed_checkpoints(&url, &job)?;
        Ok((steps.last() == Some(&STEPS)).then_some(steps))
    })?;
    assert!(steps.contains(&resumed), "{steps:?}");
    assert!(
        steps.iter().all(|s| s % EVERY == 0),
        "only the job's own steps: {steps:?}"
    );
    assert_eq!(
        events_of(&url, "checkpoint_unverified", Some("jax"))?,
        Vec::<Value>::new()
    );
    Ok(())
}

/// Rank 0 stops inside the save of step [`TORN`], right before Orbax
/// commits it, and is SIGKILLed there; `atomicity` is the script's
/// `--atomicity`.
fn torn_save(atomicity: &str) -> Result<()> {
    let Some(python) = ml_python()? else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let (_supd, job) = setup(work.path())?;
    let url = job.url.clone();
    let _agents = start_sim_agents(work.path(), 2, |_| url.clone(), &[])?;
    wait_ready_nodes(&url, 2)?;
    let pause = work.path().join("pause");
    std::fs::write(&pause, format!("{TORN}\n"))?;
    let args = [
        "--atomicity".to_owned(),
        atomicity.to_owned(),
        "--pause-in-save-file".to_owned(),
        pause.display().to_string(),
    ];
    submit_job(
        &url,
        work.path(),
        "jax",
        &job_spec(&python, &job, 2, 2, &args),
    )?;

    // Rank 0 is inside the save of step 10, every process's arrays written,
    // the commit not done.
    let paused = pause.with_file_name("pause.paused");
    let paused = wait_for("rank 0 paused inside the save", JOB_TIMEOUT, || {
        if paused.exists() {
            return Ok(Some(Ok(read_json(&paused)?)));
        }
        let job = job_status(&url, "jax")?;
        Ok((job["state"] == "failed" || job["restarts"] != 0).then(|| {
            Err(anyhow!(
                "the job failed or restarted before the pause: {job}"
            ))
        }))
    })??;
    let pid = paused["pid"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pid in {paused}"))?;
    assert_eq!(paused["step"], TORN, "{paused}");
    let ckpt = job.ckpt.display().to_string();
    let ranks0 = processes_with_env(&[("SUP_CHECKPOINT_DIR", &ckpt), ("RANK", "0")]);
    assert!(
        ranks0.iter().any(|p| u64::from(*p) == pid),
        "pid {pid} is rank 0 of the job: {ranks0:?}"
    );
    let writing = PathBuf::from(paused["writing"].as_str().unwrap_or_default());
    let step_dir = job.ckpt.join(TORN.to_string());
    match atomicity {
        // Orbax 0.12 names it `<step>.orbax-checkpoint-tmp` (older ones
        // added `-<timestamp>`).
        "auto" => {
            assert_eq!(
                writing,
                job.ckpt.join(format!("{TORN}.orbax-checkpoint-tmp"))
            );
            assert!(!step_dir.exists(), "not renamed yet");
        }
        _ => assert_eq!(writing, step_dir, "written in place"),
    }
    let meta = read_json(&writing.join("_CHECKPOINT_METADATA"))?;
    assert!(meta["commit_timestamp_nsecs"].is_null(), "{meta}");
    assert!(!writing.join("commit_success.txt").exists());
    assert!(writing.join("state/manifest.ocdbt").is_file());

    let before = job_where(&url, "step 5 listed", |j| {
        j["checkpoint"]["step"].as_u64().unwrap_or(0) >= EVERY
    })?;
    let first = before["generation"].as_u64().unwrap_or(0);
    // Killed mid-save, like an OOM kill or a lost node.
    let out = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()?;
    assert!(out.status.success(), "kill: {out:?}");

    let restarted = first_restart(&url)?;
    let why = reason(&restarted);
    let resumed = number_after(&why, "resuming from step ")?;
    let generation = number_after(&why, "; generation ")?;
    assert_eq!(
        resumed,
        TORN - EVERY,
        "the torn step {TORN} is never resumed from: {why}\n{}",
        describe(&job.ckpt)
    );
    assert!(generation > first, "{why}");

    let done = job_where(&url, "the job succeeded", |j| j["state"] == "succeeded")?;
    assert_eq!(done["restarts"], 1, "{done}");
    let record = record(&job.record)?;
    assert_resumed_and_finished(&record, &job, first, generation, resumed)?;
    assert_rewritten_after(&job, resumed, generation)?;
    let steps = wait_for("the last checkpoint listed", JOB_TIMEOUT, || {
        let steps = listed_checkpoints(&url, &job)?;
        Ok((steps.last() == Some(&STEPS)).then_some(steps))
    })?;
    assert!(steps.contains(&TORN), "step {TORN} saved again: {steps:?}");

    // Set aside, as the kill left it, before the next generation started.
    let name = writing
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = job
        .ckpt
        .join(".sup-set-aside")
        .join(format!("g{generation}"))
        .join(&name);
    assert!(
        aside.join("state/manifest.ocdbt").is_file() && !aside.join("commit_success.txt").exists(),
        "the torn save set aside into {}; events: {:?}\n{}",
        aside.display(),
        events_of(&url, "checkpoint_set_aside", Some("jax"))?,
        describe(&job.ckpt)
    );
    Ok(())
}

/// The directory's entries two levels down, for failure messages.
fn describe(dir: &Path) -> String {
    let mut out = Vec::new();
    let mut walk = vec![(dir.to_owned(), 0)];
    while let Some((d, depth)) = walk.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if depth < 2 && p.is_dir() {
                walk.push((p, depth + 1));
            }
        }
    }
    out.sort();
    out.join("\n")
}

#[test]
fn an_orbax_save_torn_by_sigkill_before_its_rename_is_never_resumed() -> Result<()> {
    torn_save("auto")
}

#[test]
fn an_orbax_save_torn_by_sigkill_before_its_commit_file_is_never_resumed() -> Result<()> {
    torn_save("commit_file")
}
