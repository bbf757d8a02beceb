//! Recovery paths with real processes (issue #19, part 4): real supd, real
//! agents (simulated GPUs, or the fake NVML library where a GPU has to
//! fail) and the example trainer, a fault injected, and the outcome read
//! only through the public surface: `supctl -o json` (status, events), the
//! streamed output of `supctl status --watch` and `supctl events --follow`,
//! and the logs the agents keep of each rank
//! (`<state dir>/jobs/<job>/gen-<G>/rank-<R>.log`).
//!
//! - Grow-back: a 3-node job (min 2) shrinks to 2 nodes when one is
//!   cordoned; `supctl uncordon` runs the node's validation gate, and once
//!   the node is back the job grows to 3 nodes at its next checkpoint — one
//!   newer than any before the uncordon — and every rank of the grown
//!   generation resumes from exactly that checkpoint, without the growth
//!   counting as a restart.
//! - Crash loop: a rank that crashes at the same step in every generation
//!   ends the job `failed`, the reason naming the crash loop (long before
//!   its restart budget), with no node cordoned and the spare never used:
//!   still ready, still a spare, no rank ever launched on it.
//! - Breaker: a storm of GPU failures (Xid 79 on four nodes, fake NVML)
//!   cordons as many as the breaker allows, opens it, and holds the rest
//!   back (the nodes stay uncordoned); `supctl breaker reset` applies each
//!   held cordon exactly once, and a second reset changes nothing.
//! - Rollback env: after a loss spike with rollback on, every rank of the
//!   rolled-back generation logs the `SUP_SEED` and `SUP_LR_SCALE` it was
//!   given, resumes from the rollback's checkpoint and trains past the
//!   spike's step without the spike (the trainer spikes only without a
//!   seed); the spiking generation's ranks had neither. (detection.rs
//!   checks supd's side: the event, the target, the job finishing.)
//! - `supctl status --watch` and `supctl events --follow` as child
//!   processes on a pipe: each streams a cordon and a job start as they
//!   happen, `--watch` as plain successive frames (no terminal escape
//!   codes on a pipe), and both end at once on Ctrl-C (SIGINT).
//!
//! The tests run in parallel, and other test binaries run jobs called
//! "llm" too: a rank is only ever identified by this cluster's checkpoint
//! dir or this cluster's agents' state dirs, and each cluster kills its
//! ranks when it ends (see [`Cluster`]).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sup_e2e::*;

/// Generous: two cores, shared with the other tests' ranks.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const PARAMS: u32 = 65;

/// supd's config: `jobs` goes into the `[jobs]` table, `tables` after it.
fn supd_config(master_port: u16, jobs: &str, tables: &str) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "10s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"
{jobs}

{tables}
"#
    )
}

/// Dropped in field order: supd (and this cluster's ranks, see
/// [`kill_ranks_under`]), the agents, whose logs are printed as they go,
/// then the directory.
struct Cluster {
    work: PathBuf,
    url: String,
    _supd: Supd,
    _agents: Vec<Proc>,
    _work: tempfile::TempDir,
}

impl Cluster {
    /// supd and `nodes` simulated agents (`node-1` ..), all ready.
    fn start(nodes: usize, jobs: &str, tables: &str, agent_args: &[&str]) -> Result<Cluster> {
        let work = tempfile::tempdir()?;
        let path = work.path().to_owned();
        let mut supd = Supd::new(&path, &supd_config(free_port()?, jobs, tables))?;
        supd.start()?;
        let url = supd.url();
        let agents = start_sim_agents(&path, nodes, |_| url.clone(), agent_args)?;
        wait_ready_nodes(&url, nodes)?;
        Ok(Cluster {
            work: path,
            url,
            _supd: supd,
            _agents: agents,
            _work: work,
        })
    }

    /// Where this cluster's job checkpoints: unique to the test, and in
    /// every rank's `SUP_CHECKPOINT_DIR`.
    fn ckpt_dir(&self) -> PathBuf {
        self.work.join("ckpt")
    }

    /// Submits job "llm" running the example trainer, one rank per node.
    fn submit(&self, nodes: u32, command: &[String], extra: &str) -> Result<()> {
        let ckpt = self.ckpt_dir();
        std::fs::create_dir_all(&ckpt)?;
        let spec = format!(
            r#"name = "llm"
command = {command}
nodes = {nodes}
gpus_per_node = 1
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
{extra}
"#,
            command = toml_list(command),
            ckpt = ckpt.display(),
        );
        submit_job(&self.url, &self.work, "llm", &spec)
    }

    fn job(&self) -> Result<Value> {
        job_status(&self.url, "llm")
    }

    /// Waits for job "llm" to satisfy `ok`; a failed job is an error.
    fn wait_job(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_for(what, JOB_TIMEOUT, || {
            let job = self.job()?;
            if job["state"] == "failed" {
                bail!("job failed: {job}");
            }
            Ok(ok(&job).then_some(job))
        })
    }

    fn events(&self, kind: &str) -> Result<Vec<Value>> {
        events_of(&self.url, kind, None)
    }

    fn node(&self, id: &str) -> Result<Value> {
        supctl_json(&self.url, &["node", id])
    }

    /// Live ranks of this cluster's job: identified by its checkpoint dir,
    /// never by the job's name alone.
    fn ranks(&self) -> Vec<u32> {
        let dir = self.ckpt_dir().display().to_string();
        processes_with_env(&[("SUP_CHECKPOINT_DIR", dir.as_str()), ("SUP_JOB", "llm")])
    }

    /// The logs this cluster's agents keep of the ranks of `generation`
    /// of job "llm", by global rank (`<state dir>/jobs/llm/gen-G/rank-R.log`).
    fn rank_logs(&self, generation: u64) -> Result<Vec<(u32, String)>> {
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(&self.work)? {
            let dir = entry?
                .path()
                .join("jobs/llm")
                .join(format!("gen-{generation}"));
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files {
                let path = file?.path();
                let Some(rank) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("rank-"))
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                logs.push((rank, text));
            }
        }
        logs.sort_by_key(|(rank, _)| *rank);
        Ok(logs)
    }
}

fn generation(job: &Value) -> u64 {
    job["generation"].as_u64().unwrap_or(0)
}

fn reason(event: &Value) -> String {
    event["reason"].as_str().unwrap_or_default().to_owned()
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().unwrap_or(0)
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Result<f64> {
    text.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.trim_end_matches('.').parse().ok())
        .ok_or_else(|| anyhow!("no number after {prefix:?} in {text}"))
}

/// `(step, loss)` of every `step N/M loss L ...` line the trainer printed.
fn losses(log: &str) -> Vec<(u64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let (step, rest) = rest.split_once('/')?;
            let loss = rest.split(" loss ").nth(1)?.split_whitespace().next()?;
            Some((step.parse().ok()?, loss.parse().ok()?))
        })
        .collect()
}

fn no_cordons(c: &Cluster) -> Result<()> {
    let cordons = c.events("node_cordoned")?;
    if !cordons.is_empty() {
        bail!("nodes were cordoned: {cordons:?}");
    }
    let status = supctl_json(&c.url, &["status"])?;
    let cordoned: Vec<&Value> = status["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["cordon"] != Value::Null).collect())
        .unwrap_or_default();
    if !cordoned.is_empty() {
        bail!("cordoned nodes: {cordoned:?}");
    }
    Ok(())
}

#[test]
fn a_shrunk_job_grows_back_at_its_next_checkpoint_after_an_uncordon() -> Result<()> {
    // Every agent validates before an uncordon returns its node: the
    // grow-back has to wait for that gate, as in production.
    let c = Cluster::start(3, "", "", &["--validation-command", "echo GPUs pass"])?;
    const EVERY: u64 = 10;
    c.submit(
        3,
        // Long enough to outlive the test: it ends when the test does.
        &trainer_command(100_000, EVERY as u32, "0.1", PARAMS),
        "min_nodes = 2\nmax_restarts = 10",
    )?;
    let job = c.wait_job("the job on 3 nodes with a checkpoint", |j| {
        j["state"] == "running" && nodes_of(j).len() == 3 && j["checkpoint"]["step"].is_u64()
    })?;
    let victim = nodes_of(&job)[2].clone();

    // A cordon: the job restarts on the 2 nodes left, there being no spare.
    let out = supctl(&c.url, &["cordon", &victim, "--reason", "bad board"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shrunk = c.wait_job("the job shrunk to 2 nodes", |j| {
        j["state"] == "running" && generation(j) > generation(&job) && nodes_of(j).len() == 2
    })?;
    assert!(!nodes_of(&shrunk).contains(&victim), "{shrunk}");
    let restarted = c.events("job_restarted")?;
    let why = restarted.last().map(reason).unwrap_or_default();
    assert!(
        why.contains(&format!("node {victim} cordoned")) && why.contains("shrunk from 3 to 2"),
        "{why}"
    );
    let restarts = shrunk["restarts"].clone();

    // The newest checkpoint before the node comes back: growing back must
    // wait for a newer one.
    let before = c.job()?["checkpoint"]["step"]
        .as_u64()
        .ok_or_else(|| anyhow!("no checkpoint"))?;
    let out = supctl(&c.url, &["uncordon", &victim, "--reason", "board replaced"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("is being validated"), "{text}");

    let grown = c.wait_job("the job grown back to 3 nodes", |j| {
        j["state"] == "running" && generation(j) > generation(&shrunk) && nodes_of(j).len() == 3
    })?;
    assert!(nodes_of(&grown).contains(&victim), "{grown}");
    assert_eq!(
        grown["restarts"], restarts,
        "growing back is not a failure: {grown}"
    );
    let grow = c
        .events("job_restarted")?
        .into_iter()
        .last()
        .ok_or_else(|| anyhow!("no job_restarted event"))?;
    let why = reason(&grow);
    eprintln!("grow-back: {why}");
    assert!(why.starts_with("growing back from 2 to 3 node(s)"), "{why}");
    let step = number_after(&why, "right after checkpoint step ")? as u64;
    assert!(
        step > before && step.is_multiple_of(EVERY),
        "grew at checkpoint {step}, not one newer than {before}: {why}"
    );
    assert!(
        why.contains(&format!("resuming from step {step} ")),
        "resumes from that checkpoint: {why}"
    );
    assert!(
        why.contains(&format!("adding {victim}")) && why.contains("grown from 2 to 3"),
        "{why}"
    );

    // In that order: the node validated and back, then the checkpoint,
    // then the growth.
    let uncordoned = c
        .events("node_uncordoned")?
        .into_iter()
        .find(|e| e["node"] == victim.as_str())
        .ok_or_else(|| anyhow!("no node_uncordoned event for {victim}"))?;
    assert!(
        reason(&uncordoned).contains("after its validation passed"),
        "{uncordoned}"
    );
    let checkpoint = c
        .events("job_checkpoint")?
        .into_iter()
        .find(|e| reason(e).starts_with(&format!("newest complete checkpoint: step {step} ")))
        .ok_or_else(|| anyhow!("no job_checkpoint event for step {step}"))?;
    assert!(
        seq(&uncordoned) < seq(&checkpoint) && seq(&checkpoint) < seq(&grow),
        "uncordon {uncordoned}\ncheckpoint {checkpoint}\ngrowth {grow}"
    );

    // What the ranks did: all three of the grown generation resumed from
    // exactly that checkpoint, in a world of 3.
    let gen = generation(&grown);
    let resumed = format!(" at step {step}");
    let logs = wait_for("the grown generation's ranks resumed", JOB_TIMEOUT, || {
        let logs = c.rank_logs(gen)?;
        Ok((logs.len() == 3
            && logs
                .iter()
                .all(|(_, l)| l.lines().any(|l| l.contains("resumed from"))))
        .then_some(logs))
    })?;
    for (rank, log) in &logs {
        let line = log
            .lines()
            .find(|l| l.contains("resumed from"))
            .unwrap_or_default();
        assert!(
            line.starts_with(&format!("trainer[{rank}/3]: job llm generation {gen} "))
                && line.ends_with(&resumed),
            "rank {rank}: {line}"
        );
    }
    Ok(())
}

#[test]
fn a_rank_crashing_every_generation_fails_the_job_as_a_crash_loop_and_keeps_the_spare() -> Result<()>
{
    let c = Cluster::start(3, "crash_loop_limit = 3", "", &[])?;
    c.submit(
        2,
        &trainer_command(100_000, 2, "0.1", PARAMS),
        // A budget far above the crash-loop limit: the loop guard must end
        // it, not the budget.
        r#"max_restarts = 20
[env]
SUP_TRAINER_CRASH_AT_STEP = "5"
SUP_TRAINER_CRASH_RANK = "1""#,
    )?;
    // The spare: the node the first generation did not take.
    let job = wait_for("the job placed", JOB_TIMEOUT, || {
        let job = c.job()?;
        Ok((nodes_of(&job).len() == 2).then_some(job))
    })?;
    let status = supctl_json(&c.url, &["status"])?;
    let spare = status["spares"][0]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no spare in {status}"))?;
    assert!(!nodes_of(&job).contains(&spare), "{job}");

    let failed = wait_for("the job failed", JOB_TIMEOUT, || {
        let job = c.job()?;
        if job["state"] == "succeeded" {
            bail!("the crashing job succeeded: {job}");
        }
        Ok((job["state"] == "failed").then_some(job))
    })?;
    let why = failed["reason"].as_str().unwrap_or_default();
    eprintln!("failed: {why}");
    assert!(
        why.starts_with("crash loop: 3 restarts in a row without a new checkpoint or step advance"),
        "{why}"
    );
    assert!(
        why.contains("rank 1 ") && why.contains("exited with code 17"),
        "names the crashing rank: {why}"
    );
    let restarts = failed["restarts"].as_u64().unwrap_or(0);
    assert!(restarts < 20, "the budget was not what ended it: {failed}");
    let job_failed = c.events("job_failed")?;
    assert_eq!(job_failed.len(), 1, "{job_failed:?}");
    assert_eq!(reason(&job_failed[0]), why);
    // Every generation crashed the same way, the last one included.
    let crashes = events_of(&c.url, "rank_exited", Some("llm"))?
        .into_iter()
        .filter(|e| reason(e).contains("exited with code 17"))
        .count() as u64;
    assert_eq!(crashes, restarts, "one crash per generation");

    // The spare was never swapped in: the job restarted in place each
    // time, no rank of it ever ran on the spare, and it is still a ready
    // spare with nothing cordoned anywhere.
    for restart in c.events("job_restarted")? {
        let why = reason(&restart);
        assert!(!why.contains("replaced") && !why.contains(&spare), "{why}");
    }
    assert!(
        !c.work
            .join(format!("agent-{}", spare.trim_start_matches("node-")))
            .join("jobs")
            .exists(),
        "a rank was launched on the spare {spare}"
    );
    no_cordons(&c)?;
    let status = supctl_json(&c.url, &["status"])?;
    let spares: Vec<&str> = status["spares"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(spares.contains(&spare.as_str()), "{status}");
    assert_eq!(c.node(&spare)?["state"], "ready");
    wait_for("the failed job's ranks stopped", JOB_TIMEOUT, || {
        Ok(c.ranks().is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_storm_of_gpu_failures_opens_the_breaker_and_a_reset_applies_each_held_cordon_once(
) -> Result<()> {
    // Two automatic cordons per window, whatever the cluster's size; the
    // correlation guard (the same hardware Xid on many nodes) is set out of
    // reach, so what opens the breaker here is the count alone.
    let config = supd_config(
        free_port()?,
        "",
        r#"[breaker]
window = "10m"
max_share = 0.0
min_cordons = 2
max_cordons = 2

[correlation]
window = "1m"
hardware_nodes = 100
"#,
    );
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), &config)?;
    supd.start()?;
    let url = supd.url();
    let ids = ["node-a", "node-b", "node-c", "node-d"];
    let mut agents = Vec::new();
    let mut gpus = Vec::new();
    for id in ids {
        let fake = FakeGpus::new(work.path(), id, &json!({ "gpu_count": 2 }))?;
        agents.push(start_fake_nvml_agent(work.path(), &url, id, &fake, &[])?);
        gpus.push(fake);
    }
    wait_ready_nodes(&url, ids.len())?;
    let node = |id: &str| supctl_json(&url, &["node", id]);
    let xid_79 = json!({ "gpu_count": 2, "xids": [{ "id": 1, "gpu": 1, "xid": 79 }] });
    let held_text = "automatic cordon held back (breaker open)";
    let node_events = |id: &str, needle: &str| -> Result<usize> {
        Ok(events_of(&url, "node_cordoned", None)?
            .iter()
            .filter(|e| e["node"] == id && reason(e).contains(needle))
            .count())
    };

    // The first two failures are cordoned, one at a time.
    for (id, fake) in ids.iter().zip(&gpus).take(2) {
        fake.set(&xid_79)?;
        wait_for(&format!("{id} cordoned"), JOB_TIMEOUT, || {
            Ok((node(id)?["state"] == "cordoned").then_some(()))
        })?;
    }
    // The third opens the breaker and is held back, as is the fourth.
    for (id, fake) in ids.iter().zip(&gpus).skip(2) {
        fake.set(&xid_79)?;
        wait_for(&format!("{id}'s cordon held back"), JOB_TIMEOUT, || {
            Ok((node_events(id, held_text)? == 1).then_some(()))
        })?;
    }
    let status = supctl_json(&url, &["status"])?;
    assert_eq!(status["breaker"]["state"], "open", "{status}");
    let why = status["breaker"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("3 automatic cordons within 10m would exceed the limit of 2")
            && why.contains("supctl breaker reset"),
        "{why}"
    );
    let opened = events_of(&url, "breaker_opened", None)?;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["node"], "node-c");
    for id in &ids[2..] {
        let n = node(id)?;
        assert_eq!(n["cordon"], Value::Null, "held, not applied: {n}");
        assert_ne!(n["state"], "cordoned", "{n}");
        assert_eq!(n["gpus"][1]["health"], "failed", "{n}");
    }

    let out = supctl(&url, &["breaker", "reset", "--reason", "storm understood"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reset applies the held cordons before it answers.
    let status = supctl_json(&url, &["status"])?;
    assert_eq!(status["breaker"]["state"], "closed", "{status}");
    for id in ids {
        let n = node(id)?;
        assert_eq!(n["state"], "cordoned", "{n}");
        assert_eq!(n["cordon"]["by"], "sup", "{n}");
        let reason = n["cordon"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("Xid 79"), "{n}");
    }
    // A second reset finds it closed and applies nothing again.
    let again = supctl_json(&url, &["breaker", "reset"])?;
    assert_eq!(again["changed"], false, "{again}");
    for id in ids {
        assert_eq!(node_events(id, "cordoned by sup: ")?, 1, "{id}");
        let held = if ["node-c", "node-d"].contains(&id) {
            1
        } else {
            0
        };
        assert_eq!(node_events(id, held_text)?, held, "{id}");
    }
    let cordons = events_of(&url, "node_cordoned", None)?;
    assert_eq!(cordons.len(), 6, "4 cordons and 2 held back: {cordons:#?}");
    assert_eq!(events_of(&url, "breaker_reset", None)?.len(), 1);
    let applied_after_reset = |id: &str| -> Result<bool> {
        let reset = seq(&events_of(&url, "breaker_reset", None)?[0]);
        Ok(events_of(&url, "node_cordoned", None)?
            .iter()
            .any(|e| e["node"] == id && seq(e) > reset && reason(e).contains("cordoned by sup")))
    };
    assert!(applied_after_reset("node-c")? && applied_after_reset("node-d")?);
    Ok(())
}

#[test]
fn the_ranks_of_a_rolled_back_generation_get_a_new_seed_and_a_scaled_learning_rate() -> Result<()> {
    let c = Cluster::start(2, "", "[detect]\nstraggler_policy = \"report\"", &[])?;
    const SPIKE: u64 = 22;
    c.submit(
        2,
        &trainer_command(40, 5, "0.1", PARAMS),
        &format!(
            r#"loss_spike_rollback = true
rollback_lr_scale = 0.25
[env]
SUP_EXAMPLE_LOSS_SPIKE_AT_STEP = "{SPIKE}""#
        ),
    )?;
    let started = wait_for("the job started", JOB_TIMEOUT, || {
        Ok(c.events("job_started")?.into_iter().next())
    })?;
    let spiking = number_after(&reason(&started), "generation ")? as u64;
    let rolled = wait_for("the rollback", JOB_TIMEOUT, || {
        Ok(c.events("job_rolled_back")?.into_iter().next())
    })?;
    let rolled = reason(&rolled);
    eprintln!("job_rolled_back: {rolled}");
    let target = number_after(&rolled, "rolling back to checkpoint step ")? as u64;
    assert!(
        rolled.contains("with SUP_SEED=1 and SUP_LR_SCALE=0.25"),
        "{rolled}"
    );
    c.wait_job("the job succeeded", |j| j["state"] == "succeeded")?;
    let restart = c
        .events("job_restarted")?
        .into_iter()
        .find(|e| reason(e).starts_with("loss spike from step"))
        .ok_or_else(|| anyhow!("no restart for the rollback"))?;
    let rolled_back = number_after(&reason(&restart), "; generation ")? as u64;
    assert!(
        reason(&restart).contains(&format!("resuming from step {target} ")),
        "{restart}"
    );

    // What the ranks were given: every rank of the rolled-back generation
    // logs its seed and learning-rate scale and resumed from the target.
    let logs = c.rank_logs(rolled_back)?;
    assert_eq!(logs.len(), 2, "two ranks: {logs:?}");
    for (rank, log) in &logs {
        assert!(
            log.lines()
                .any(|l| l == format!("trainer[{rank}/2]: rollback: SUP_SEED=1 SUP_LR_SCALE=0.25")),
            "rank {rank} of generation {rolled_back}:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("resumed from") && l.ends_with(&format!(" at step {target}"))),
            "rank {rank} of generation {rolled_back}:\n{log}"
        );
        // The new seed took effect: past the spike's step, no spike.
        let trained = losses(log);
        assert!(
            trained.iter().any(|(s, _)| *s > SPIKE),
            "rank {rank} trained past step {SPIKE}:\n{log}"
        );
        for (step, loss) in trained {
            assert!(step > target, "rank {rank} restarted at {step}:\n{log}");
            assert!(loss < 10.0, "rank {rank} step {step} loss {loss}:\n{log}");
        }
    }
    // ... which the generation that spiked had not been given.
    let logs = c.rank_logs(spiking)?;
    assert_eq!(logs.len(), 2, "two ranks: {logs:?}");
    for (rank, log) in &logs {
        assert!(
            !log.contains("rollback:"),
            "rank {rank} of generation {spiking}:\n{log}"
        );
        assert!(
            losses(log)
                .iter()
                .any(|(s, loss)| *s >= SPIKE && *loss >= 10.0),
            "rank {rank} of generation {spiking} saw the spike:\n{log}"
        );
    }
    Ok(())
}

/// A supctl that keeps running (`--watch`, `--follow`), its stdout a pipe
/// read as it comes. Killed when dropped.
struct Streaming {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: PathBuf,
}

impl Streaming {
    fn spawn(url: &str, args: &[&str], stderr: PathBuf) -> Result<Streaming> {
        let mut child = Command::new(bin("supctl")?)
            .arg("--supervisor")
            .arg(url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr)?))
            .spawn()
            .context("starting supctl")?;
        let mut pipe = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(Streaming {
            child,
            out,
            reader: Some(reader),
            stderr,
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    fn wait_output(&self, what: &str, ok: impl Fn(&str) -> bool) -> Result<()> {
        wait_for(what, JOB_TIMEOUT, || {
            let text = self.text();
            if ok(&text) {
                return Ok(Some(()));
            }
            bail!("not yet; output so far:\n{text}")
        })
    }

    /// Ctrl-C, as an operator ends it: it must end promptly, by the
    /// signal (no handler: nothing to clean up) or exiting 0/130, with
    /// nothing on stderr.
    fn interrupt(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        assert!(status.success());
        let mut exited = None;
        wait_for("supctl ended by Ctrl-C", Duration::from_secs(20), || {
            exited = self.child.try_wait()?;
            Ok(exited.map(|_| ()))
        })?;
        let status = exited.ok_or_else(|| anyhow!("no exit status"))?;
        assert!(
            status.signal() == Some(2) || matches!(status.code(), Some(0 | 130)),
            "{status}"
        );
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = std::fs::read_to_string(&self.stderr)?;
        assert!(stderr.is_empty(), "supctl's stderr: {stderr}");
        Ok(())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frames of `supctl status --watch` output on a pipe: each begins
/// with its `Every ...` header line.
fn frames(text: &str) -> Vec<&str> {
    text.split("Every 500ms: supctl status")
        .skip(1)
        .collect::<Vec<_>>()
}

/// The table row whose first column is `first`, split into columns.
fn row<'a>(frame: &'a str, first: &str) -> Option<Vec<&'a str>> {
    frame
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first))
}

#[test]
fn status_watch_and_events_follow_stream_changes_to_a_pipe_and_stop_on_ctrl_c() -> Result<()> {
    let c = Cluster::start(2, "", "", &[])?;
    let mut watch = Streaming::spawn(
        &c.url,
        &["status", "--watch", "500ms"],
        c.work.join("watch.stderr"),
    )?;
    let mut follow = Streaming::spawn(
        &c.url,
        &["events", "--follow"],
        c.work.join("follow.stderr"),
    )?;
    // Both are live before the change: a frame of the calm cluster, and
    // the log so far (the nodes that registered).
    watch.wait_output("a frame with node-2 ready", |t| {
        frames(t)
            .iter()
            .any(|f| row(f, "node-2").is_some_and(|r| r.get(1) == Some(&"ready")))
    })?;
    follow.wait_output("the events so far", |t| t.contains("node-2"))?;

    let out = supctl(&c.url, &["cordon", "node-2", "--reason", "watched"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.submit(1, &trainer_command(100_000, 10, "0.1", PARAMS), "")?;

    watch.wait_output("a frame with node-2 cordoned and the job running", |t| {
        frames(t).iter().any(|f| {
            row(f, "node-2").is_some_and(|r| r.get(1) == Some(&"cordoned"))
                && row(f, "node-1").is_some_and(|r| r.contains(&"llm"))
                && row(f, "llm").is_some_and(|r| r.get(1) == Some(&"running"))
        })
    })?;
    follow.wait_output("the cordon and the job's start", |t| {
        let has = |kind: &str, subject: &str| {
            t.lines()
                .any(|l| l.contains(&format!(" {kind} ")) && l.contains(subject))
        };
        has("node_cordoned", "node-2") && has("job_started", "llm")
    })?;

    watch.interrupt()?;
    follow.interrupt()?;
    // On a pipe, --watch prints plain successive frames: no screen
    // clearing or cursor codes for a reader (a log file, grep) to trip on.
    let text = watch.text();
    assert!(!text.contains('\x1b'), "escape codes on a pipe: {text:?}");
    assert!(frames(&text).len() >= 2, "{text}");
    assert!(
        text.starts_with("Every 500ms: supctl status"),
        "each frame starts with its header: {text}"
    );
    // --follow printed its table header once, then rows only.
    let follow_text = follow.text();
    assert_eq!(
        follow_text.lines().filter(|l| l.starts_with("SEQ")).count(),
        1,
        "{follow_text}"
    );
    Ok(())
}
