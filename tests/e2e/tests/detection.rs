//! Job-level detection with real processes: supd, three agents (sim:2, two
//! ranks per node) and the example trainer as a 2-node job with one spare.
//!
//! - A rank frozen with SIGSTOP: the job is detected hung within 2 × the
//!   median step time + 1 s of its last progress and restarted from the
//!   newest checkpoint, with the ranks' last log lines as a post-mortem and
//!   no node cordoned.
//! - One node 1.5× slower (SUP_EXAMPLE_SLOW_NODE): flagged as a straggler
//!   and, with the replace policy, swapped for the spare without counting a
//!   failure.
//! - A loss spike with rollback on: back to the checkpoint before the spike
//!   with a new SUP_SEED, and the job finishes.
//! - A script that only prints: progress from its log lines through the
//!   job's `progress_regex`.
//! - A generation whose ranks never meet (something else holds the master
//!   port): hung at startup after `startup_allowance`, restarted, and
//!   training once the port is free.
//!
//! The tests run in parallel (and other test binaries run the same job
//! name): a rank is only ever picked by its cluster's own checkpoint dir,
//! and each cluster kills its ranks when it ends (see [`Cluster`]).

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(90);
const PARAMS: u32 = 65;

/// `detect` is the `[detect]` table's body.
fn supd_config(master_port: u16, detect: &str) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "10s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"

[detect]
{detect}
"#
    )
}

/// Dropped in field order: supd (and this cluster's ranks, see
/// [`kill_ranks_under`]), the agents, whose logs are printed as they go,
/// then the directory.
struct Cluster {
    work: std::path::PathBuf,
    url: String,
    /// `jobs.master_port`: where the job's rank 0 listens for its peers.
    master_port: u16,
    supd: Supd,
    _agents: Vec<Proc>,
    _work: tempfile::TempDir,
}

impl Cluster {
    /// Where this cluster's job checkpoints: a directory unique to the
    /// test, and in every rank's `SUP_CHECKPOINT_DIR`.
    fn ckpt_dir(&self) -> String {
        self.work.join("ckpt").display().to_string()
    }

    /// Live ranks of this cluster's job matching `env` as well. Every test
    /// here runs a job called "llm" (concurrently, and other test binaries
    /// leave ranks of theirs behind too), so a rank is only ever identified
    /// together with this cluster's checkpoint dir.
    fn ranks(&self, env: &[(&str, &str)]) -> Vec<u32> {
        let dir = self.ckpt_dir();
        let mut all = vec![("SUP_CHECKPOINT_DIR", dir.as_str())];
        all.extend_from_slice(env);
        processes_with_env(&all)
    }
}

fn cluster(detect: &str) -> Result<Cluster> {
    let work = tempfile::tempdir()?;
    let path = work.path().to_owned();
    let master_port = free_port()?;
    let mut supd = Supd::new(&path, &supd_config(master_port, detect))?;
    supd.start()?;
    let url = supd.url();
    let agents = start_sim_agents(&path, 3, |_| url.clone(), &[])?;
    wait_ready_nodes(&url, 3)?;
    Ok(Cluster {
        work: path,
        url,
        master_port,
        supd,
        _agents: agents,
        _work: work,
    })
}

fn submit(c: &Cluster, steps: u32, every: u32, step_time: &str, extra: &str) -> Result<()> {
    let ckpt = c.work.join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        r#"name = "llm"
command = {command}
nodes = 2
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 5
{extra}
"#,
        command = toml_list(&trainer_command(steps, every, step_time, PARAMS)),
        ckpt = ckpt.display(),
    );
    let file = c.work.join("job.toml");
    std::fs::write(&file, spec)?;
    let out = supctl(&c.url, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn wait_job(c: &Cluster, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    wait_for(what, JOB_TIMEOUT, || {
        let job = job_status(&c.url, "llm")?;
        if job["state"] == "failed" {
            bail!("job failed: {job}");
        }
        Ok(ok(&job).then_some(job))
    })
}

fn wait_event(c: &Cluster, kind: &str) -> Result<Value> {
    wait_for(&format!("a {kind} event"), JOB_TIMEOUT, || {
        Ok(events_of(&c.url, kind, Some("llm"))?.into_iter().next())
    })
}

fn reason(event: &Value) -> String {
    event["reason"].as_str().unwrap_or_default().to_owned()
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Result<f64> {
    text.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.trim_end_matches('.').parse().ok())
        .ok_or_else(|| anyhow!("no number after {prefix:?} in {text}"))
}

fn no_cordons(c: &Cluster) -> Result<()> {
    let cordons = events_of(&c.url, "node_cordoned", None)?;
    if !cordons.is_empty() {
        bail!("nodes were cordoned: {cordons:?}");
    }
    let status = supctl_json(&c.url, &["status"])?;
    let cordoned: Vec<&Value> = status["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["state"] == "cordoned").collect())
        .unwrap_or_default();
    if !cordoned.is_empty() {
        bail!("cordoned nodes: {cordoned:?}");
    }
    Ok(())
}

/// /metrics, validated by promtool (the test command installs it).
fn promtool_checked_metrics(c: &Cluster) -> Result<String> {
    let (code, body) = http_get(c.supd.http_port, "/metrics")?;
    assert_eq!(code, 200);
    promtool_check(&body)?;
    Ok(body)
}

#[test]
fn a_frozen_rank_is_detected_hung_on_time_and_restarted_from_the_newest_checkpoint() -> Result<()> {
    let c = cluster(
        r#"hang_factor = 2.0
hang_floor = "1s"
warmup_steps = 5
checkpoint_allowance = "20s""#,
    )?;
    const EVERY: u64 = 20;
    submit(&c, 200, EVERY as u32, "0.2", "")?;
    // Warmed up (past a checkpoint, enough steps for the median), and in
    // the train phase until well after the SIGSTOP, however long it takes
    // under load to get from this status read to it: a rank frozen while
    // its peers save, or before every rank reported a train step after the
    // save (step S + 1, which step S + 2 anywhere implies), would get the
    // checkpoint allowance. A window missed waits for the next one.
    let job = wait_job(&c, "job running early between two checkpoints", |j| {
        let step = j["step"].as_u64().unwrap_or(0);
        j["state"] == "running"
            && step > EVERY
            && (2..=EVERY / 2).contains(&(step % EVERY))
            && j["checkpoint"]["step"].as_u64() == Some(step / EVERY * EVERY)
    })?;
    let generation = job["generation"].as_u64().unwrap_or(0).to_string();
    let pids = c.ranks(&[
        ("SUP_JOB", "llm"),
        ("SUP_GENERATION", &generation),
        ("RANK", "1"),
    ]);
    let [pid] = pids[..] else {
        bail!("expected one rank 1 of generation {generation}, found pids {pids:?}");
    };
    let frozen_node = std::fs::read(format!("/proc/{pid}/environ"))?
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"SUP_NODE_ID=").map(<[u8]>::to_vec))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .ok_or_else(|| anyhow!("no SUP_NODE_ID in the environment of pid {pid}"))?;
    let out = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("kill -STOP {pid}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let hung = reason(&wait_event(&c, "job_hung")?);
    // The first hang must be the frozen rank's, not a false alarm before it.
    assert!(
        hung.starts_with(&format!("generation {generation} hung:")),
        "{hung}"
    );
    let silent_ms = number_after(&hung, "no step advance for ")?;
    let median_s = number_after(&hung, "median step time ")?;
    eprintln!("job_hung: {hung}");
    assert!(hung.contains("in phase train"), "{hung}");
    assert!(
        silent_ms <= 2_000.0 * median_s + 1_000.0,
        "detected {silent_ms} ms after the last progress, median step {median_s}s: {hung}"
    );
    assert!(hung.contains("nothing cordoned"), "{hung}");
    // Whether the frozen rank's last report got out decides whether its node
    // shows as lagging; if any node is blamed, it is that one.
    if hung.contains(" lagging") {
        assert!(
            hung.contains(&format!("node {frozen_node} lagging")),
            "{hung}"
        );
    }
    let last_step = number_after(&hung, "last step ")? as u64;

    let job = wait_job(&c, "the job running again", |j| {
        j["state"] == "running" && j["generation"].as_u64().unwrap_or(0).to_string() != generation
    })?;
    assert_eq!(job["restarts"], 1, "{job}");
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    let why = restarted.last().map(reason).unwrap_or_default();
    assert!(why.starts_with("hung: no step advance"), "{why}");
    let resumed = number_after(&why, "resuming from step ")? as u64;
    // The newest checkpoint at the time: the last multiple of EVERY reached.
    assert_eq!(resumed, last_step / EVERY * EVERY, "{why}");
    // The frozen rank's peers were stopped; their last lines are the post-mortem.
    let pm = reason(&wait_event(&c, "job_hang_postmortem")?);
    assert!(pm.contains("step "), "{pm}");
    no_cordons(&c)?;
    Ok(())
}

#[test]
fn a_slow_node_is_flagged_as_straggler_and_swapped_for_the_spare() -> Result<()> {
    let c = cluster(
        r#"straggler_window = 10
straggler_sustain = 5"#,
    )?;
    submit(
        &c,
        50,
        5,
        "0.2",
        r#"straggler_policy = "replace"
[env]
SUP_EXAMPLE_SLOW_NODE = "node-2"
SUP_EXAMPLE_SLOWDOWN = "1.5""#,
    )?;
    let job = wait_job(&c, "job running", |j| j["state"] == "running")?;
    let nodes = job["nodes"].to_string();
    assert!(
        nodes.contains("node-2"),
        "the slow node runs the job: {job}"
    );

    let flagged = reason(&wait_event(&c, "job_straggler")?);
    let factor = number_after(&flagged, "is a straggler: ")?;
    eprintln!("job_straggler: {flagged}");
    assert!(
        flagged.starts_with("node node-2 is a straggler") && (1.3..1.8).contains(&factor),
        "{flagged}"
    );
    assert!(
        flagged.contains("replacing it with a spare now"),
        "{flagged}"
    );
    let job = wait_job(&c, "job running without node-2", |j| {
        j["state"] == "running" && !j["nodes"].to_string().contains("node-2")
    })?;
    assert!(job["nodes"].to_string().contains("node-3"), "{job}");
    assert_eq!(
        job["restarts"], 0,
        "a replacement is not the job's failure: {job}"
    );
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    let why = restarted.last().map(reason).unwrap_or_default();
    assert!(
        why.contains("replacing straggler node node-2")
            && why.contains("replaced node-2 with node-3"),
        "{why}"
    );
    let done = wait_job(&c, "job succeeded", |j| j["state"] == "succeeded")?;
    assert_eq!(
        done["restarts"],
        0,
        "{done}\nrestarts: {:#?}\nrank exits: {:#?}",
        events_of(&c.url, "job_restarted", Some("llm"))?,
        events_of(&c.url, "rank_exited", Some("llm"))?
    );
    assert_eq!(events_of(&c.url, "job_straggler", Some("llm"))?.len(), 1);
    no_cordons(&c)?;
    Ok(())
}

#[test]
fn a_loss_spike_rolls_back_with_a_new_seed_and_the_job_finishes() -> Result<()> {
    let c = cluster(r#"straggler_policy = "report""#)?;
    submit(
        &c,
        40,
        5,
        "0.1",
        r#"loss_spike_rollback = true
model_params = 1e6
gpu_peak_flops = 1e9
[env]
SUP_EXAMPLE_LOSS_SPIKE_AT_STEP = "22""#,
    )?;
    // Throughput and MFU are live while it runs.
    let running = wait_job(&c, "tokens/s and MFU measured", |j| {
        j["state"] == "running"
            && j["tokens_per_s"].as_f64().is_some()
            && j["mfu"].as_f64().is_some()
    })?;
    assert!(
        running["tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{running}"
    );
    let metrics = promtool_checked_metrics(&c)?;
    for name in [
        "sup_job_tokens_per_second{job=\"llm\"}",
        "sup_job_mfu_ratio{job=\"llm\"}",
        "sup_job_node_step_time_seconds{",
        "sup_job_node_straggler{",
        "sup_job_node_tokens_per_second{",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }

    let rolled = reason(&wait_event(&c, "job_rolled_back")?);
    assert!(rolled.contains("loss spike from step 2"), "{rolled}");
    let target = number_after(&rolled, "rolling back to checkpoint step ")? as u64;
    eprintln!("job_rolled_back: {rolled}");
    // The newest checkpoint before the spike (20), or one older if the
    // agents' catalog was slow beyond supd's wait for it.
    assert!(
        (15..22).contains(&target) && target.is_multiple_of(5),
        "{rolled}"
    );
    assert!(rolled.contains("SUP_SEED=1"), "{rolled}");
    let done = wait_job(&c, "job succeeded", |j| j["state"] == "succeeded")?;
    assert_eq!(done["rollbacks"], 1, "{done}");
    assert!(
        events_of(&c.url, "job_loss_spike", Some("llm"))?.is_empty(),
        "the new seed avoided the spike"
    );
    let (code, metrics) = http_get(c.supd.http_port, "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("sup_job_rollbacks{job=\"llm\"} 1"),
        "{metrics}"
    );
    no_cordons(&c)?;
    Ok(())
}

#[test]
fn progress_comes_from_log_lines_with_a_progress_regex() -> Result<()> {
    let c = cluster("")?;
    let ckpt = c.ckpt_dir();
    std::fs::create_dir_all(&ckpt)?;
    // A script that knows nothing of sup: it only prints, with a line the
    // pattern matches but cannot parse, which is counted and skipped.
    let script = "echo 'it x loss nan'; i=0; while [ $i -lt 600 ]; do i=$((i+1)); \
                  echo \"it $i loss 0.$i tokens $((i*64))\"; echo 'other output'; sleep 0.05; done";
    let spec = |pattern: &str| {
        format!(
            r#"name = "llm"
command = ["sh", "-c", {script:?}]
nodes = 2
gpus_per_node = 1
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
progress_regex = '{pattern}'
"#
        )
    };
    let file = c.work.join("job.toml");
    std::fs::write(&file, spec(r"it (?P<step>\d+"))?;
    let out = supctl(&c.url, &["job", "submit", &file.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("progress_regex: invalid regular expression"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        spec(r"^it (?P<step>\S+) loss (?P<loss>\S+) tokens (?P<tokens>\d+)"),
    )?;
    let out = supctl(&c.url, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let job = wait_job(&c, "steps, loss and tokens/s from the log lines", |j| {
        j["state"] == "running"
            && j["step"].as_u64().unwrap_or(0) >= 20
            && j["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0)
    })?;
    eprintln!("job from log lines: {job}");
    let step = job["step"].as_u64().unwrap_or(0);
    assert!(step <= 600, "{job}");
    Ok(())
}

#[test]
fn a_generation_stuck_in_its_rendezvous_is_hung_at_startup_and_restarted() -> Result<()> {
    let c = cluster(r#"startup_allowance = "5s""#)?;
    // Something else holds the master port: rank 0 cannot listen, the ranks
    // never meet and nothing is reported, like a communicator that never
    // forms. The job's progress_regex says it reports progress, so its
    // silence counts from the start.
    let blocker = std::net::TcpListener::bind(("::", c.master_port))
        .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", c.master_port)))?;
    submit(
        &c,
        200,
        10,
        "0.2",
        r"progress_regex = '^step (?P<step>\d+)/\d+ loss (?P<loss>\S+) tokens (?P<tokens>\d+)'",
    )?;
    let hung = reason(&wait_event(&c, "job_hung")?);
    drop(blocker);
    eprintln!("job_hung: {hung}");
    assert!(hung.contains("hung at startup"), "{hung}");
    assert!(hung.contains("nothing cordoned"), "{hung}");
    let silent_ms = number_after(&hung, "no progress report for ")?;
    assert!(silent_ms >= 5_000.0, "{hung}");
    let job = wait_job(&c, "the job training once the port is free", |j| {
        j["state"] == "running" && j["step"].as_u64().unwrap_or(0) >= 5
    })?;
    assert!(job["restarts"].as_u64().unwrap_or(0) >= 1, "{job}");
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    let why = restarted.first().map(reason).unwrap_or_default();
    assert!(why.starts_with("hung at startup"), "{why}");
    no_cordons(&c)?;
    Ok(())
}
