//! `supctl drill` for every fault kind, with real processes: supd, three
//! agents started with --allow-drills (sim:2, two ranks per node) and the
//! example trainer as a 2-node job with one spare. Each test drills the
//! job's second node and checks that the drill ends in the recovery the
//! real fault gets, and that `supctl events --drills` reports the drill
//! with the events that followed it:
//!
//! - hang (SIGSTOP of the node's ranks): hung, restarted, nothing cordoned;
//! - slow (SIGSTOP/SIGCONT cycle): flagged as a straggler and swapped for
//!   the spare without counting a failure;
//! - crash (SIGKILL of one rank): the rank's exit restarts the job;
//! - vanish (ranks killed, agent silent): the node is lost, the job moves
//!   to the spare; the node comes back afterwards;
//! - partition (agent silent, ranks running): the node is lost; its agent
//!   kills the ranks when its assignment lease runs out, and only then
//!   does the job move;
//! - torn-checkpoint: the restart resumes from the checkpoint before the
//!   torn one;
//! - and an agent without --allow-drills refuses a drill.
//!
//! One cluster per test (independent), run one at a time: several clusters
//! of trainers at once on a small machine would make the timing-based
//! detectors measure the machine, not the drill.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const PARAMS: u32 = 65;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `detect`: the `[detect]` table's body.
fn supd_config(master_port: u16, detect: &str) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "3s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"
lost_node_grace = "8s"
stall_confirm = "3s"

[detect]
{detect}
"#
    )
}

/// Dropped in field order: supd (and this cluster's ranks), the agents,
/// then the directory.
struct Cluster {
    work: std::path::PathBuf,
    url: String,
    _supd: Supd,
    agents: Vec<Proc>,
    _work: tempfile::TempDir,
}

impl Cluster {
    fn start(detect: &str, agent_flags: &[&str]) -> Result<Cluster> {
        let work = tempfile::tempdir()?;
        let path = work.path().to_owned();
        let mut supd = Supd::new(&path, &supd_config(free_port()?, detect))?;
        supd.start()?;
        let url = supd.url();
        let agents = start_sim_agents(&path, 3, |_| url.clone(), agent_flags)?;
        wait_ready_nodes(&url, 3)?;
        Ok(Cluster {
            work: path,
            url,
            _supd: supd,
            agents,
            _work: work,
        })
    }

    fn ckpt_dir(&self) -> std::path::PathBuf {
        self.work.join("ckpt")
    }

    fn submit(&self, steps: u32, every: u32, extra: &str) -> Result<()> {
        std::fs::create_dir_all(self.ckpt_dir())?;
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
            command = toml_list(&trainer_command(steps, every, "0.2", PARAMS)),
            ckpt = self.ckpt_dir().display(),
        );
        submit_job(&self.url, &self.work, "llm", &spec)
    }

    fn wait_job(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_for(what, JOB_TIMEOUT, || {
            let job = job_status(&self.url, "llm")?;
            if job["state"] == "failed" {
                bail!("job failed: {job}");
            }
            Ok(ok(&job).then_some(job))
        })
    }

    /// Waits until the job trains past `step`; returns (its status, the
    /// node drilled: the job's second node, never node rank 0's).
    fn running_past(&self, step: u64) -> Result<(Value, String)> {
        let job = self.wait_job(&format!("the job past step {step}"), |j| {
            j["state"] == "running" && j["step"].as_u64().unwrap_or(0) > step
        })?;
        let victim = job["nodes"][1]
            .as_str()
            .ok_or_else(|| anyhow!("no second node in {job}"))?
            .to_owned();
        Ok((job, victim))
    }

    /// `supctl drill ARGS -o json`; its message.
    fn drill(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["drill"];
        all.extend_from_slice(args);
        all.extend(["--by", "game-day"]);
        let out = supctl_json(&self.url, &all)?;
        Ok(out["message"].as_str().unwrap_or_default().to_owned())
    }

    /// Live ranks of this cluster's job (by its checkpoint dir) matching `env`.
    fn ranks(&self, env: &[(&str, &str)]) -> Vec<u32> {
        let dir = self.ckpt_dir().display().to_string();
        let mut all = vec![("SUP_CHECKPOINT_DIR", dir.as_str())];
        all.extend_from_slice(env);
        processes_with_env(&all)
    }

    fn agent_log(&self, node: &str) -> String {
        self.agents
            .iter()
            .find(|a| a.name == format!("agent-{node}"))
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

fn gen_of(job: &Value) -> u64 {
    job["generation"].as_u64().unwrap_or(0)
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

fn wait_event(c: &Cluster, kind: &str, job: Option<&str>) -> Result<Value> {
    wait_for(&format!("a {kind} event"), JOB_TIMEOUT, || {
        Ok(events_of(&c.url, kind, job)?.into_iter().next())
    })
}

/// `supctl events --drills`: exactly one drill, on `node`, whose reason
/// has `what`, followed by an event of each of `kinds`.
fn check_report(c: &Cluster, node: &str, what: &str, kinds: &[&str]) -> Result<()> {
    let report = supctl_json(&c.url, &["events", "--drills"])?;
    let [entry] = report.as_array().map(Vec::as_slice).unwrap_or_default() else {
        bail!("expected one drill in the report: {report:#}");
    };
    let drill = &entry["drill"];
    assert_eq!(drill["kind"], "drill", "{entry:#}");
    assert_eq!(drill["node"], node, "{entry:#}");
    let why = reason(drill);
    assert!(
        why.starts_with("drill by game-day: ") && why.contains(what),
        "{why}"
    );
    let followed: Vec<&str> = entry["followed_by"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    for kind in kinds {
        assert!(
            followed.contains(kind),
            "no {kind} after the drill: {followed:?}"
        );
    }
    let text = supctl(&c.url, &["events", "--drills"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("drill by game-day"), "{text}");
    Ok(())
}

fn no_cordons(c: &Cluster) -> Result<()> {
    let cordons = events_of(&c.url, "node_cordoned", None)?;
    if !cordons.is_empty() {
        bail!("nodes were cordoned: {cordons:?}");
    }
    Ok(())
}

#[test]
fn drill_hang_freezes_the_ranks_and_the_job_is_restarted() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start(
        r#"hang_factor = 2.0
hang_floor = "1s"
warmup_steps = 5
checkpoint_allowance = "5s""#,
        &["--allow-drills"],
    )?;
    c.submit(100_000, 20, "")?;
    let (job, victim) = c.running_past(8)?;
    let generation = gen_of(&job);
    let msg = c.drill(&["hang", "--node", &victim])?;
    assert!(msg.contains("hang: SIGSTOP every rank"), "{msg}");

    let hung = reason(&wait_event(&c, "job_hung", Some("llm"))?);
    eprintln!("job_hung: {hung}");
    assert!(
        hung.starts_with(&format!("generation {generation} hung:")),
        "{hung}"
    );
    let job = c.wait_job("the job running again", |j| {
        j["state"] == "running" && gen_of(j) > generation && j["step"].as_u64().is_some()
    })?;
    assert_eq!(job["restarts"], 1, "{job}");
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    assert!(reason(&restarted[0]).starts_with("hung:"), "{restarted:?}");
    // The frozen ranks were stopped (SIGCONT after SIGTERM), not left behind.
    wait_for("the frozen ranks gone", JOB_TIMEOUT, || {
        Ok(c.ranks(&[("SUP_GENERATION", &generation.to_string())])
            .is_empty()
            .then_some(()))
    })?;
    check_report(&c, &victim, "hang", &["job_hung", "job_restarted"])?;
    no_cordons(&c)
}

#[test]
fn drill_slow_makes_a_straggler_that_is_swapped_for_the_spare() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start(
        r#"straggler_window = 10
straggler_sustain = 5"#,
        &["--allow-drills"],
    )?;
    c.submit(100_000, 50, r#"straggler_policy = "replace""#)?;
    let (_, victim) = c.running_past(3)?;
    // supd sizes the cycle from the node's measured step time: refused
    // until there is one.
    let msg = wait_for("supd to accept the slow drill", JOB_TIMEOUT, || {
        Ok(
            c.drill(&["slow", "--node", &victim, "--factor", "2", "--for", "5m"])
                .ok(),
        )
    })?;
    assert!(msg.contains("slow ×2"), "{msg}");

    let flagged = reason(&wait_event(&c, "job_straggler", Some("llm"))?);
    eprintln!("job_straggler: {flagged}");
    let factor = number_after(&flagged, "is a straggler: ")?;
    assert!(
        flagged.starts_with(&format!("node {victim} is a straggler"))
            && (1.5..3.0).contains(&factor),
        "{flagged}"
    );
    let job = c.wait_job(&format!("the job running without {victim}"), |j| {
        j["state"] == "running" && !j["nodes"].to_string().contains(&victim)
    })?;
    assert_eq!(job["restarts"], 0, "a replacement is not a failure: {job}");
    check_report(&c, &victim, "slow", &["job_straggler", "job_restarted"])?;
    no_cordons(&c)
}

#[test]
fn drill_crash_kills_a_rank_and_the_job_is_restarted() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start("", &["--allow-drills"])?;
    c.submit(100_000, 10, "")?;
    let (job, victim) = c.running_past(3)?;
    let generation = gen_of(&job);
    // A rank not on that node is refused, naming the ones that are (asked
    // first: once the real drill lands, the job is recovering and every
    // crash drill is refused for that).
    let out = supctl(
        &c.url,
        &["drill", "crash", "--node", &victim, "--rank", "0"],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rank 0") && err.contains("ranks 2-3"),
        "{err}"
    );
    let msg = c.drill(&["crash", "--node", &victim, "--rank", "3"])?;
    assert!(msg.contains("crash: SIGKILL rank 3"), "{msg}");

    let exited = reason(&wait_event(&c, "rank_exited", Some("llm"))?);
    assert!(
        exited.starts_with(&format!(
            "rank 3 (node {victim}, local rank 1) was killed by signal 9"
        )),
        "{exited}"
    );
    let job = c.wait_job("the job running again", |j| {
        j["state"] == "running" && gen_of(j) > generation && j["step"].as_u64().is_some()
    })?;
    assert_eq!(job["restarts"], 1, "{job}");
    check_report(&c, &victim, "crash", &["rank_exited", "job_restarted"])?;
    no_cordons(&c)
}

#[test]
fn drill_vanish_loses_the_node_and_the_job_moves_to_the_spare() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start("", &["--allow-drills"])?;
    c.submit(100_000, 10, "")?;
    let (job, victim) = c.running_past(3)?;
    let generation = gen_of(&job);
    let msg = c.drill(&["vanish", "--node", &victim, "--for", "15s"])?;
    assert!(msg.contains("vanish for 15s"), "{msg}");

    // Its ranks die at once, like the machine's power.
    wait_for("the vanished node's ranks gone", JOB_TIMEOUT, || {
        Ok(c.ranks(&[
            ("SUP_NODE_ID", &victim),
            ("SUP_GENERATION", &generation.to_string()),
        ])
        .is_empty()
        .then_some(()))
    })?;
    let unreachable = wait_for("the node unreachable", JOB_TIMEOUT, || {
        Ok(events_of(&c.url, "node_unreachable", None)?
            .into_iter()
            .find(|e| e["node"] == victim.as_str()))
    })?;
    eprintln!("node_unreachable: {}", reason(&unreachable));
    let job = c.wait_job(&format!("the job running without {victim}"), |j| {
        j["state"] == "running" && !j["nodes"].to_string().contains(&victim)
    })?;
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    let why = restarted.first().map(reason).unwrap_or_default();
    assert!(why.contains(&format!("node {victim} lost")), "{why}");
    // supd heard nothing of the ranks' deaths: a power loss says nothing.
    assert!(
        events_of(&c.url, "rank_exited", Some("llm"))?
            .iter()
            .all(|e| e["node"] != victim.as_str()),
        "a rank exit reached supd from the vanished node"
    );
    eprintln!("job after the vanish: {job}");
    // And then it comes back.
    wait_for(&format!("{victim} back"), JOB_TIMEOUT, || {
        let s = supctl_json(&c.url, &["status"])?;
        Ok(s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == victim.as_str()))
            .filter(|n| n["state"] == "ready")
            .map(|_| ()))
    })?;
    check_report(
        &c,
        &victim,
        "vanish",
        &["node_unreachable", "job_restarted"],
    )?;
    no_cordons(&c)
}

#[test]
fn drill_partition_ends_in_the_lease_before_the_job_moves() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start("", &["--allow-drills"])?;
    c.submit(100_000, 10, "")?;
    let (job, victim) = c.running_past(3)?;
    let generation = gen_of(&job).to_string();
    let msg = c.drill(&["partition", "--node", &victim, "--for", "20s"])?;
    assert!(msg.contains("partition for 20s"), "{msg}");

    wait_for("the node unreachable", JOB_TIMEOUT, || {
        Ok(events_of(&c.url, "node_unreachable", None)?
            .into_iter()
            .find(|e| e["node"] == victim.as_str()))
    })?;
    let job = c.wait_job(&format!("the job running without {victim}"), |j| {
        j["state"] == "running" && !j["nodes"].to_string().contains(&victim)
    })?;
    eprintln!("job after the partition: {job}");
    let restarted = events_of(&c.url, "job_restarted", Some("llm"))?;
    let why = restarted.first().map(reason).unwrap_or_default();
    assert!(why.contains(&format!("node {victim} lost")), "{why}");
    // Cut off, nothing could tell the node's ranks of the old generation to
    // stop; its agent killed them when its assignment lease ran out, and
    // supd started the job elsewhere only after that.
    assert!(
        c.ranks(&[("SUP_NODE_ID", &victim), ("SUP_GENERATION", &generation)])
            .is_empty(),
        "the partitioned node's old ranks outlived its lease"
    );
    assert!(
        c.agent_log(&victim)
            .contains("no supervisor has acknowledged this node for its assignment lease"),
        "{}",
        c.agent_log(&victim)
    );
    check_report(
        &c,
        &victim,
        "partition",
        &["node_unreachable", "job_restarted"],
    )?;
    no_cordons(&c)
}

#[test]
fn drill_torn_checkpoint_resumes_from_the_checkpoint_before() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start("", &["--allow-drills"])?;
    const EVERY: u64 = 5;
    c.submit(100_000, EVERY as u32, "")?;
    c.wait_job("two complete checkpoints", |j| {
        j["state"] == "running" && j["checkpoint"]["step"].as_u64().unwrap_or(0) >= 2 * EVERY
    })?;
    let (job, victim) = c.running_past(2 * EVERY)?;
    let generation = gen_of(&job);
    let msg = c.drill(&["torn-checkpoint", "--node", &victim])?;
    assert!(
        msg.contains("torn-checkpoint: at the next checkpoint save"),
        "{msg}"
    );

    // The agent says which step it tore.
    let torn = wait_for("the agent tearing a checkpoint", JOB_TIMEOUT, || {
        let log = c.agent_log(&victim);
        Ok(log
            .lines()
            .find(|l| l.contains("tore checkpoint step "))
            .map(str::to_owned))
    })?;
    let torn_step = number_after(&torn, "tore checkpoint step ")? as u64;
    eprintln!("agent: {torn}");
    let restarted = wait_event(&c, "job_restarted", Some("llm"))?;
    let why = reason(&restarted);
    let resumed = number_after(&why, "resuming from step ")? as u64;
    assert_eq!(
        resumed,
        torn_step - EVERY,
        "must resume from the newest complete checkpoint before the torn step {torn_step}: {why}"
    );
    let job = c.wait_job("the job running again", |j| {
        j["state"] == "running" && gen_of(j) > generation
    })?;
    assert_eq!(job["restarts"], 1, "{job}");
    check_report(
        &c,
        &victim,
        "torn-checkpoint",
        &["rank_exited", "job_restarted"],
    )?;
    no_cordons(&c)
}

#[test]
fn an_agent_without_allow_drills_refuses_them() -> Result<()> {
    let _serial = serial();
    let c = Cluster::start("", &[])?;
    c.submit(100_000, 10, "")?;
    let (job, victim) = c.running_past(3)?;
    let msg = c.drill(&["crash", "--node", &victim])?;
    assert!(
        msg.contains("only when started with --allow-drills"),
        "{msg}"
    );
    wait_for("the agent refusing the drill", JOB_TIMEOUT, || {
        Ok(c.agent_log(&victim)
            .contains("drill refused: this agent runs without --allow-drills")
            .then_some(()))
    })?;
    // Progress goes on in the same generation, nothing restarted.
    let step = job["step"].as_u64().unwrap_or(0);
    let now = c.wait_job("progress after the refused drill", |j| {
        j["step"].as_u64().unwrap_or(0) > step + 5
    })?;
    assert_eq!(gen_of(&now), gen_of(&job), "{now}");
    assert!(events_of(&c.url, "job_restarted", Some("llm"))?.is_empty());
    // Still recorded: the game day's report shows what was tried.
    check_report(&c, &victim, "crash", &[])
}
