//! A real PyTorch job under sup (issue #18): the shipped example
//! `examples/pytorch/train_fsdp.py` — an FSDP2-sharded model and AdamW,
//! checkpoints saved with torch.distributed.checkpoint (DCP) — run by real
//! agents (sim:2, so two ranks per node) on CPU with gloo, a tiny model, and
//! real faults:
//!
//! - Elastic: 3 nodes (6 ranks); a drill Xid 79 cordons one, the job
//!   shrinks to 2 nodes (4 ranks) and DCP reshards the 6-rank checkpoint on
//!   load; the node's board is "replaced" (its agent restarted, the node
//!   uncordoned) and the job grows back to 6 ranks right after its next
//!   checkpoint, resharding 4 → 6. Every resume loaded exactly what was
//!   saved (a digest of the whole model and optimizer state, and the loss,
//!   equal to the saving generation's), the steps continue without a gap,
//!   every step trained on the same samples as a fault-free run, with the
//!   same loss, and the final parameters equal the fault-free run's to
//!   1e-8. (The model is float64: in float32 the sums of a reduction over
//!   6, 4 or 1 ranks differ in the last bits, and Adam's normalisation
//!   amplifies that into differences of 1e-2 in some parameters after 24
//!   steps, which no tolerance could tell from a real fault. In float64
//!   they stay below 1e-11.)
//! - Torn, damaged and rewritten DCP saves: a rank REALLY killed inside
//!   `dcp.save` (it stops after writing its shard, the others wait in DCP's
//!   gather, so the coordinator never writes `.metadata`) leaves a torn
//!   step with shard files and no `.metadata`; a shard of the step before,
//!   truncated after its save, makes it unverified (a
//!   `checkpoint_unverified` event naming the file, left out of `supctl
//!   checkpoints`). The restart resumes from the newest complete and
//!   verified step, and sets both newer steps aside before its ranks start,
//!   so the damaged step's `.metadata` is gone before the resumed
//!   generation rewrites that step. A second real kill inside that rewrite
//!   resumes from the older step again, never from the rewrite's mixed
//!   files, and the step saved whole afterwards is bit-identical to the
//!   original save.
//! - Loss spike: with `loss_spike_rollback`, a spike (the script reports 10×
//!   its loss from a step on while `SUP_SEED` is unset) rolls the job back
//!   to the checkpoint before it; the rolled-back generation gets `SUP_SEED`
//!   and `SUP_LR_SCALE`, trains with the scaled learning rate (applied
//!   after the optimizer state is loaded) and a new data order, without the
//!   spike.
//!
//! What the ranks did is read from `--record-dir`: rank 0 appends one JSON
//! object per line (start, resumed, step, saved, final) and writes the
//! final parameters (float64) to `final.bin`. Faults land where intended
//! through the example's `--test-control` file: `hold N` keeps the ranks
//! after step N (the agent lists checkpoints every 2 to 8 s, so a test
//! waits for a listing instead of racing it), `pause-in-save N R` stops
//! rank R inside `dcp.save` of step N until the test kills it.
//!
//! Needs `SUP_TEST_PYTHON` (scripts/test.sh sets it; see
//! [`sup_e2e::ml_python`]); without it each test says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use sup_e2e::*;

/// Generous: two cores shared by two tests' ranks, each importing torch.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const JOB: &str = "fsdp";
const GLOBAL_BATCH: u64 = 12;
const LR: f64 = 0.01;
/// Final parameters and losses against the fault-free run (float64).
const TOLERANCE: f64 = 1e-8;

/// The example's arguments for a tiny model. 12 sequences a step: whole
/// shares on 1, 2, 4 and 6 ranks.
fn train_command(
    python: &Path,
    steps: u64,
    every: u64,
    record: &Path,
    extra: &[&str],
) -> Vec<String> {
    let script = repo_root().join("examples/pytorch/train_fsdp.py");
    let mut cmd: Vec<String> = vec![python.display().to_string(), script.display().to_string()];
    let lr = LR.to_string();
    let steps = steps.to_string();
    let every = every.to_string();
    let batch = GLOBAL_BATCH.to_string();
    let record = record.display().to_string();
    cmd.extend(
        [
            "--steps",
            &steps,
            "--checkpoint-every",
            &every,
            "--global-batch",
            &batch,
            "--seq-len",
            "16",
            "--vocab",
            "64",
            "--dim",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--lr",
            &lr,
            "--dtype",
            "float64",
            "--record-dir",
            &record,
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned()),
    );
    cmd
}

/// supd, `nodes` simulated agents (`node-1` ..) with drills allowed, and
/// the job's directories. Dropped in field order: supd (and every rank of
/// this cluster, see [`kill_ranks_under`]), the agents, then the directory.
struct Cluster {
    _supd: Supd,
    agents: Vec<Proc>,
    url: String,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(nodes: usize) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().to_owned();
        // A job held at a step by the test (see `Cluster::control`) must
        // not look hung: holds last seconds, the hang floor is 2 minutes.
        let config = format!(
            "[nodes]\nunreachable_after = \"10s\"\ntelemetry_interval = \"500ms\"\n\
             [jobs]\nmaster_port = {}\nstop_grace = \"3s\"\n\
             [detect]\nhang_floor = \"2m\"\n",
            free_port()?
        );
        let mut supd = Supd::new(&work, &config)?;
        supd.start()?;
        let url = supd.url();
        let agents = start_sim_agents(&work, nodes, |_| url.clone(), &["--allow-drills"])?;
        wait_ready_nodes(&url, nodes)?;
        std::fs::create_dir_all(work.join("ckpt"))?;
        Ok(Cluster {
            _supd: supd,
            agents,
            url,
            work,
            _dir: dir,
        })
    }

    fn ckpt(&self) -> PathBuf {
        self.work.join("ckpt")
    }

    fn record_dir(&self) -> PathBuf {
        self.work.join("record")
    }

    /// The example's `--test-control` file.
    fn control_file(&self) -> PathBuf {
        self.work.join("test-control")
    }

    /// Tells the ranks what to do next (`hold N`, `pause-in-save N R`, or
    /// nothing): they read the file before each step and each save.
    fn control(&self, command: &str) -> Result<()> {
        let file = self.control_file();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, command)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    /// Submits the job: `nodes` nodes of 2 ranks, DCP checkpoints, and
    /// `extra` spec lines (top-level keys).
    fn submit(&self, nodes: u32, min_nodes: u32, command: &[String], extra: &str) -> Result<()> {
        let spec = format!(
            r#"name = "{JOB}"
command = {command}
nodes = {nodes}
min_nodes = {min_nodes}
gpus_per_node = 2
checkpoint_dir = "{ckpt}"
checkpoint_layout = "dcp"
max_restarts = 10
{extra}
[env]
# torchrun sets this for more than one rank per node; sup's agent does not.
# Without it 6 ranks on 2 cores each start a thread per core and a step
# takes twice as long.
OMP_NUM_THREADS = "1"
"#,
            command = toml_list(command),
            ckpt = self.ckpt().display(),
        );
        submit_job(&self.url, &self.work, JOB, &spec)
    }

    fn wait_job(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_for(what, JOB_TIMEOUT, || {
            let job = job_status(&self.url, JOB)?;
            if job["state"] == "failed" {
                bail!("job failed: {job}");
            }
            Ok(ok(&job).then_some(job))
        })
    }

    fn events(&self, kind: &str) -> Result<Vec<Value>> {
        events_of(&self.url, kind, Some(JOB))
    }

    /// The `n`-th (from 0) `job_restarted` event, once there is one.
    fn restart(&self, n: usize) -> Result<Value> {
        wait_for(&format!("restart #{}", n + 1), JOB_TIMEOUT, || {
            Ok(self.events("job_restarted")?.into_iter().nth(n))
        })
    }

    /// The `checkpoint_set_aside` event of `generation`.
    fn set_aside(&self, generation: u64) -> Result<String> {
        let before = format!("before generation {generation} started");
        wait_for(
            &format!("the checkpoint_set_aside event of generation {generation}"),
            JOB_TIMEOUT,
            || {
                Ok(self
                    .events("checkpoint_set_aside")?
                    .iter()
                    .map(reason)
                    .find(|r| r.contains(&before)))
            },
        )
    }

    /// `supctl checkpoints` as (step, path, verified).
    fn checkpoints(&self) -> Result<Vec<(u64, String, String)>> {
        let listed = supctl_json(&self.url, &["checkpoints", JOB])?;
        listed
            .as_array()
            .ok_or_else(|| anyhow!("supctl checkpoints: not a list: {listed}"))?
            .iter()
            .map(|c| {
                Ok((
                    c["step"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("no step in {c}"))?,
                    c["path"]
                        .as_str()
                        .ok_or_else(|| anyhow!("no path in {c}"))?
                        .to_owned(),
                    c["verified"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }

    fn drill(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["drill"];
        all.extend_from_slice(args);
        all.extend(["--by", "e2e"]);
        let out = supctl_json(&self.url, &all)?;
        Ok(out["message"].as_str().unwrap_or_default().to_owned())
    }
}

fn reason(event: &Value) -> String {
    event["reason"].as_str().unwrap_or_default().to_owned()
}

fn generation(job: &Value) -> u64 {
    job["generation"].as_u64().unwrap_or(0)
}

fn u64_of(v: &Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .ok_or_else(|| anyhow!("no integer {key:?} in {v}"))
}

fn f64_of(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| anyhow!("no number {key:?} in {v}"))
}

/// `record.jsonl` of a record dir, one object a line.
fn read_record(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join("record.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: {line}", path.display(), i + 1))
        })
        .collect()
}

/// Waits until the record has a `step` line of `generation` at `step`.
fn wait_step_recorded(record: &Path, generation: u64, step: u64) -> Result<()> {
    wait_for(
        &format!("generation {generation} to record step {step}"),
        JOB_TIMEOUT,
        || {
            // A line being appended may be read half-written: an error here
            // is retried.
            let rec = read_record(record)?;
            Ok(record_at(&rec, "step", generation, step)
                .is_ok()
                .then_some(()))
        },
    )
}

fn records<'a>(rec: &'a [Value], event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    rec.iter().filter(move |r| r["event"] == event)
}

/// The record of `event` at `step` by `generation`.
fn record_at<'a>(rec: &'a [Value], event: &str, generation: u64, step: u64) -> Result<&'a Value> {
    rec.iter()
        .find(|r| r["event"] == event && r["generation"] == generation && r["step"] == step)
        .ok_or_else(|| anyhow!("no {event:?} record of generation {generation} at step {step}"))
}

/// One generation as its rank 0 recorded it.
#[derive(Debug)]
struct Gen {
    generation: u64,
    world: u64,
    resumed: Option<u64>,
    /// The steps it trained, in order.
    steps: Vec<u64>,
}

/// Checks every resume in `rec` and returns the generations in order:
/// - a generation that resumed was told `SUP_RESUME_FROM=<ckpt>/step-N`
///   and loaded exactly what an earlier generation had saved at step N:
///   the same digest of the whole (unsharded) model and optimizer state,
///   whatever the world sizes, and the same loss — the loss that
///   generation trained step N to;
/// - every generation's steps follow its resume point without a gap.
fn check_resumes(rec: &[Value], ckpt: &Path) -> Result<Vec<Gen>> {
    let mut gens: Vec<Gen> = Vec::new();
    for (i, r) in rec.iter().enumerate() {
        let generation = u64_of(r, "generation")?;
        match r["event"].as_str().unwrap_or_default() {
            "start" => gens.push(Gen {
                generation,
                world: u64_of(r, "world")?,
                resumed: None,
                steps: Vec::new(),
            }),
            "resumed" => {
                let step = u64_of(r, "step")?;
                let path = ckpt.join(format!("step-{step}")).display().to_string();
                ensure!(r["path"] == path.as_str(), "resumed from {r}, not {path}");
                let saved = rec[..i]
                    .iter()
                    .rev()
                    .find(|s| s["event"] == "saved" && s["step"] == step)
                    .ok_or_else(|| anyhow!("{r}: no generation saved step {step} before"))?;
                ensure!(
                    saved["generation"] != generation,
                    "{r} resumed from its own save {saved}"
                );
                ensure!(
                    r["digest"] == saved["digest"] && r["digest"].is_string(),
                    "loaded state differs from the saved state:\nloaded {r}\nsaved  {saved}"
                );
                ensure!(
                    r["loss"] == saved["loss"],
                    "loaded loss differs from the saved one:\nloaded {r}\nsaved  {saved}"
                );
                let trained = record_at(rec, "step", u64_of(saved, "generation")?, step)?;
                ensure!(r["loss"] == trained["loss"], "{r}\n{trained}");
                let gen = gens
                    .iter_mut()
                    .find(|g| g.generation == generation)
                    .ok_or_else(|| anyhow!("{r} without its start record"))?;
                gen.resumed = Some(step);
            }
            "step" => {
                let step = u64_of(r, "step")?;
                let gen = gens
                    .iter_mut()
                    .find(|g| g.generation == generation)
                    .ok_or_else(|| anyhow!("{r} without its start record"))?;
                let expected = gen
                    .steps
                    .last()
                    .map_or(gen.resumed.unwrap_or(0) + 1, |s| s + 1);
                ensure!(
                    step == expected,
                    "generation {generation} trained step {step} after {:?} (resumed at {:?})",
                    gen.steps.last(),
                    gen.resumed
                );
                ensure!(
                    u64_of(r, "world")? == gen.world,
                    "{r}: world size changed mid-generation"
                );
                gen.steps.push(step);
            }
            _ => {}
        }
    }
    for r in records(rec, "start") {
        let generation = u64_of(r, "generation")?;
        let gen = gens
            .iter()
            .find(|g| g.generation == generation)
            .ok_or_else(|| anyhow!("{r}"))?;
        let told = r["resume_from"].as_str().map(str::to_owned);
        let want = gen
            .resumed
            .map(|s| ckpt.join(format!("step-{s}")).display().to_string());
        ensure!(told == want, "SUP_RESUME_FROM {told:?}, resumed {want:?}");
    }
    Ok(gens)
}

/// Every step `rec` trained, against the fault-free run: the same global
/// samples (ids and contents, in order) and the same loss to [`TOLERANCE`].
fn check_steps_match(rec: &[Value], reference: &[Value]) -> Result<()> {
    let mut n = 0;
    for r in records(rec, "step") {
        let step = u64_of(r, "step")?;
        let want = reference
            .iter()
            .find(|x| x["event"] == "step" && x["step"] == step)
            .ok_or_else(|| anyhow!("the fault-free run has no step {step}"))?;
        let first = (step - 1) * GLOBAL_BATCH;
        ensure!(
            r["samples"] == serde_json::json!([first, first + GLOBAL_BATCH - 1, GLOBAL_BATCH]),
            "step {step} trained on samples {} (first, last, count)",
            r["samples"]
        );
        ensure!(
            r["data"] == want["data"],
            "step {step}: data {} where the fault-free run had {}",
            r["data"],
            want["data"]
        );
        let (got, expected) = (f64_of(r, "loss")?, f64_of(want, "loss")?);
        ensure!(
            (got - expected).abs() <= TOLERANCE,
            "step {step} (generation {}, world {}): loss {got} where the fault-free run had {expected}",
            r["generation"],
            r["world"]
        );
        n += 1;
    }
    ensure!(n > 0, "no steps recorded");
    Ok(())
}

/// `final.bin`: the parameters as float64, little-endian, by name.
fn final_params(dir: &Path) -> Result<Vec<f64>> {
    let path = dir.join("final.bin");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        !bytes.is_empty() && bytes.len() % 8 == 0,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// The same training without sup and without faults, as one plain process
/// (world size 1): its record dir.
fn fault_free_run(python: &Path, work: &Path, steps: u64, every: u64) -> Result<PathBuf> {
    let dir = work.join("fault-free");
    let cmd = train_command(python, steps, every, &dir, &[]);
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .env("SUP_CHECKPOINT_DIR", work.join("fault-free-ckpt"))
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port()?.to_string())
        .env("RANK", "0")
        .env("LOCAL_RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("OMP_NUM_THREADS", "1");
    let mut run = Proc::spawn("fault-free-run", command, work)?;
    let status = run.wait_exit(JOB_TIMEOUT)?;
    ensure!(status.success(), "the fault-free run failed with {status}");
    Ok(dir)
}

/// The pid of global rank `rank` of `generation` of this cluster's job.
fn rank_pid(c: &Cluster, rank: u32, generation: u64) -> Result<u32> {
    let ckpt = c.ckpt().display().to_string();
    let (rank, generation) = (rank.to_string(), generation.to_string());
    let pids = processes_with_env(&[
        ("SUP_CHECKPOINT_DIR", &ckpt),
        ("RANK", &rank),
        ("SUP_GENERATION", &generation),
    ]);
    match pids[..] {
        [pid] => Ok(pid),
        _ => bail!("rank {rank} of generation {generation}: processes {pids:?}"),
    }
}

fn sigkill(pid: u32) -> Result<()> {
    let out = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "kill -KILL {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len())
}

#[test]
fn fsdp2_job_shrinks_on_a_node_failure_grows_back_and_matches_a_fault_free_run() -> Result<()> {
    let Some(python) = ml_python()? else {
        return Ok(());
    };
    const STEPS: u64 = 20;
    const EVERY: u64 = 4;
    let mut c = Cluster::start(3)?;
    let record = c.record_dir();
    let control = c.control_file().display().to_string();
    // The agent that lists checkpoints scans every 2 to 8 s: the job is
    // held at steps the test chooses so that each fault lands where
    // intended, whatever the machine's pace.
    c.control("hold 10")?;
    let command = train_command(
        &python,
        STEPS,
        EVERY,
        &record,
        &["--test-control", &control],
    );
    c.submit(3, 2, &command, "")?;
    let job = c.wait_job("6 ranks with checkpoint 8 listed", |j| {
        j["state"] == "running" && j["checkpoint"]["step"] == 8
    })?;
    assert_eq!(job["world_size"], 6, "{job}");
    wait_step_recorded(&record, generation(&job), 10)?;
    let nodes = nodes_of(&job);
    let victim = nodes
        .get(2)
        .cloned()
        .ok_or_else(|| anyhow!("3 nodes expected: {job}"))?;

    // A node failure: Xid 79 on one of its GPUs cordons the node; with no
    // spare the job shrinks to the 2 nodes left, resharding step 8 from 6
    // ranks to 4 on load. It trains steps 9 and 10 again, and is held
    // there (the same "hold 10") until the node is back.
    let msg = c.drill(&["xid", "--node", &victim, "--gpu", "1", "--xid", "79"])?;
    assert!(msg.contains("Xid 79"), "{msg}");
    let shrink = reason(&c.restart(0)?);
    eprintln!("shrink: {shrink}");
    assert!(
        shrink.contains(&format!("node {victim} cordoned by sup"))
            && shrink.contains("Xid 79")
            && shrink.contains("world size 4")
            && shrink.contains("shrunk from 3 to 2 node(s)"),
        "{shrink}"
    );
    assert_eq!(number_after(&shrink, "resuming from step ")?, 8, "{shrink}");
    let g2 = number_after(&shrink, "; generation ")?;

    // The board is replaced: the node's agent starts afresh (a drill's
    // failed GPU stays failed until then) and an operator uncordons it.
    let index = c
        .agents
        .iter()
        .position(|a| a.name == format!("agent-{victim}"))
        .ok_or_else(|| anyhow!("no agent for {victim}"))?;
    c.agents[index].kill()?;
    let state = c.work.join(format!(
        "agent-{}",
        victim.strip_prefix("node-").unwrap_or_default()
    ));
    let mut agent = Command::new(bin("sup-agent")?);
    agent
        .args(["--supervisor", &c.url, "--node-id", &victim])
        .args(["--address", "127.0.0.1", "--gpu-backend", "sim:2"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--allow-drills");
    let replaced = Proc::spawn(&format!("agent-{victim}-replaced"), agent, &c.work)?;
    c.agents.push(replaced);
    wait_for("the replaced board's agent", JOB_TIMEOUT, || {
        let node = supctl_json(&c.url, &["node", &victim])?;
        let healthy = node["gpus"]
            .as_array()
            .is_some_and(|g| g.len() == 2 && g.iter().all(|g| g["health"] == "ok"));
        Ok((node["connected"] == true && healthy).then_some(()))
    })?;
    let out = supctl(
        &c.url,
        &[
            "uncordon",
            &victim,
            "--skip-validation",
            "--reason",
            "board replaced",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the node back, the 4 ranks train on, save step 12 and are held
    // there: the job grows back right after checkpoint 12, resharding it
    // from 4 ranks to 6.
    c.control("hold 12")?;
    let grown = c.wait_job("the job grown back to 3 nodes", |j| {
        j["state"] == "running" && generation(j) > g2 && nodes_of(j).len() == 3
    })?;
    assert!(nodes_of(&grown).contains(&victim), "{grown}");
    assert_eq!(grown["world_size"], 6, "{grown}");
    c.control("")?;
    let grow = reason(&c.restart(1)?);
    eprintln!("grow: {grow}");
    assert!(
        grow.starts_with("growing back from 2 to 3 node(s) right after checkpoint step 12;")
            && grow.contains(&format!("adding {victim}")),
        "{grow}"
    );
    assert_eq!(number_after(&grow, "resuming from step ")?, 12, "{grow}");
    let g3 = number_after(&grow, "; generation ")?;

    let done = c.wait_job("job succeeded", |j| j["state"] == "succeeded")?;
    assert_eq!(done["restarts"], 1, "growing back is no failure: {done}");
    // Rank 0's own log (README "Rank logs") says where it resumed from:
    // SUP_RESUME_FROM. The job has ended: `supctl logs` asks the node that
    // ran rank 0 last.
    let out = supctl(&c.url, &["logs", JOB, "--rank", "0", "--lines", "1000"])?;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "supctl logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = format!(
        "resumed from {} at step 12 (generation {g3})",
        c.ckpt().join("step-12").display()
    );
    assert!(log.contains(&said), "{said}\nin supctl logs:\n{log}");
    let ckpt = c.ckpt();
    let listed = c.checkpoints()?;
    assert!(
        listed.iter().any(|(step, _, _)| *step == STEPS),
        "{listed:?}"
    );
    for (step, path, verified) in &listed {
        assert_eq!(
            *path,
            ckpt.join(format!("step-{step}")).display().to_string()
        );
        assert!(
            verified.starts_with("dcp .metadata: ") && verified.contains("storage files"),
            "step {step}: verified {verified:?}"
        );
    }

    // What the ranks did: three generations of 6, 4 and 6 ranks, each
    // resume loading exactly what was saved, no step skipped or repeated.
    let rec = read_record(&record)?;
    let gens = check_resumes(&rec, &ckpt)?;
    let shape: Vec<(u64, u64, Option<u64>, Vec<u64>)> = gens
        .iter()
        .map(|g| (g.generation, g.world, g.resumed, g.steps.clone()))
        .collect();
    let g1 = generation(&job);
    assert_eq!(
        shape,
        [
            (g1, 6, None, (1..=10).collect()),
            (g2, 4, Some(8), (9..=12).collect()),
            (g3, 6, Some(12), (13..=STEPS).collect()),
        ],
    );

    // Against a fault-free run on one rank: the same samples, the same
    // losses, the same final parameters, to float64 rounding.
    let reference = fault_free_run(&python, &c.work, STEPS, EVERY)?;
    check_steps_match(&rec, &read_record(&reference)?)?;
    let got = final_params(&record)?;
    let want = final_params(&reference)?;
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "final parameters: {} values, largest difference from the fault-free run {worst:e}",
        got.len()
    );
    assert!(
        worst <= TOLERANCE,
        "final parameters differ from the fault-free run by up to {worst:e}"
    );
    Ok(())
}

/// `<control file>.paused` once a rank stopped inside `dcp.save` for
/// `generation`: (step, rank, pid).
fn paused_in_save(c: &Cluster, generation: u64) -> Result<(u64, u64, u32)> {
    let marker = c.control_file().with_file_name("test-control.paused");
    wait_for(
        &format!("a rank of generation {generation} paused inside dcp.save"),
        JOB_TIMEOUT,
        || {
            let Ok(text) = std::fs::read_to_string(&marker) else {
                return Ok(None);
            };
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: {text}", marker.display()))?;
            if v["generation"] != generation {
                return Ok(None);
            }
            let pid = u32::try_from(u64_of(&v, "pid")?)?;
            Ok(Some((u64_of(&v, "step")?, u64_of(&v, "rank")?, pid)))
        },
    )
}

/// The `rank_exited` event of rank 3 killed while it waited inside the
/// save of `step` (the reason ends with the rank's last log line).
fn killed_in_save(c: &Cluster, step: u64) -> Result<String> {
    let last_line = format!("killed by signal 9: pausing inside dcp.save of step {step} ");
    wait_for(
        &format!("rank 3's exit inside the save of step {step}"),
        JOB_TIMEOUT,
        || {
            Ok(c.events("rank_exited")?
                .iter()
                .map(reason)
                .find(|r| r.starts_with("rank 3 (node ") && r.contains(&last_line)))
        },
    )
}

#[test]
fn torn_and_damaged_dcp_saves_are_never_resumed_nor_their_rewrites_mixed() -> Result<()> {
    let Some(python) = ml_python()? else {
        return Ok(());
    };
    const STEPS: u64 = 16;
    const EVERY: u64 = 2;
    let c = Cluster::start(2)?;
    let ckpt = c.ckpt();
    let record = c.record_dir();
    let control = c.control_file().display().to_string();
    // Rank 3 (node rank 1) will stop inside dcp.save of step 10, its
    // shard written; ranks 0-2 wait in DCP's gather of the write results,
    // so the coordinator never writes .metadata.
    c.control("pause-in-save 10 3")?;
    let command = train_command(
        &python,
        STEPS,
        EVERY,
        &record,
        &["--test-control", &control],
    );
    c.submit(2, 2, &command, "")?;
    let g1 = generation(&c.wait_job("the first generation", |j| generation(j) > 0)?);
    let (step, rank, pid) = paused_in_save(&c, g1)?;
    assert_eq!((step, rank), (10, 3));
    assert_eq!(rank_pid(&c, 3, g1)?, pid, "the paused process is rank 3");

    // Step 10 is torn: every rank's shard, no .metadata.
    let step10 = ckpt.join("step-10");
    let shards: Vec<String> = (0..4).map(|r| format!("__{r}_0.distcp")).collect();
    wait_for("every shard of step 10 written", JOB_TIMEOUT, || {
        let names = file_names(&step10)?;
        Ok(shards.iter().all(|s| names.contains(s)).then_some(()))
    })?;
    assert_eq!(file_names(&step10)?, shards, "torn: shards, no .metadata");

    // Step 8 was saved whole and verified; then one of its shards is cut
    // short on disk.
    let step8 = ckpt.join("step-8");
    let verified = wait_for("step 8 listed", JOB_TIMEOUT, || {
        Ok(c.checkpoints()?
            .into_iter()
            .find(|(step, _, _)| *step == 8)
            .map(|(_, _, verified)| verified))
    })?;
    assert!(
        verified.starts_with("dcp .metadata: 4 storage files"),
        "{verified}"
    );
    let shard = step8.join("__1_0.distcp");
    let full = file_len(&shard)?;
    let cut = full / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)?
        .set_len(cut)?;
    let unverified = wait_for("step 8 unverified", JOB_TIMEOUT, || {
        Ok(c.events("checkpoint_unverified")?
            .iter()
            .map(reason)
            .find(|r| r.contains(&format!("checkpoint step 8 ('{}')", step8.display()))))
    })?;
    eprintln!("checkpoint_unverified: {unverified}");
    assert!(
        unverified.contains(&format!(
            "marked complete but not verified: __1_0.distcp is {cut} bytes, .metadata needs at least "
        )) && unverified.contains("it is not a resume point")
            && unverified.contains(&format!(
                "the job's newest checkpoint was step 8, it is step 6 ('{}') again",
                ckpt.join("step-6").display()
            )),
        "{unverified}"
    );
    let listed = c.checkpoints()?;
    let steps: Vec<u64> = listed.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(steps, [2, 4, 6], "{listed:?}");

    // The first fault: rank 3 really killed inside dcp.save. Armed first:
    // the next generation's rank 3 stops inside its save of step 8.
    c.control("pause-in-save 8 3")?;
    sigkill(pid)?;
    let first = reason(&c.restart(0)?);
    eprintln!("first restart: {first}");
    killed_in_save(&c, 10)?;
    assert_eq!(number_after(&first, "resuming from step ")?, 6, "{first}");
    let g2 = number_after(&first, "; generation ")?;
    // Both newer steps set aside before the generation started: the torn
    // one as the kill left it, the damaged one with its .metadata.
    let said = c.set_aside(g2)?;
    eprintln!("checkpoint_set_aside: {said}");
    let aside = ckpt.join(".sup-set-aside").join(format!("g{g2}"));
    for step in [8, 10] {
        let name = format!("step-{step}");
        let moved = format!(
            "step {step} {} → {}",
            ckpt.join(&name).display(),
            aside.join(&name).display()
        );
        assert!(said.contains(&moved), "{moved}\nin: {said}");
    }
    assert_eq!(file_names(&aside.join("step-10"))?, shards);
    assert!(aside.join("step-8/.metadata").is_file());
    assert_eq!(file_len(&aside.join("step-8/__1_0.distcp"))?, cut);

    // The second fault, inside the resumed generation's rewrite of step 8:
    // the directory holds only that generation's files, no .metadata (the
    // old one was set aside, so the example never had to remove it).
    let (step, rank, pid) = paused_in_save(&c, g2)?;
    assert_eq!((step, rank), (8, 3));
    assert_eq!(rank_pid(&c, 3, g2)?, pid);
    let names = file_names(&step8)?;
    assert!(
        !names.is_empty() && names.iter().all(|n| shards.contains(n)),
        "step 8 being rewritten: {names:?}"
    );
    assert_eq!(
        file_len(&step8.join("__3_0.distcp"))?,
        file_len(&aside.join("step-8/__3_0.distcp"))?
    );
    let rec = read_record(&record)?;
    assert_eq!(records(&rec, "stale_metadata_removed").count(), 0);
    c.control("")?;
    sigkill(pid)?;
    let second = reason(&c.restart(1)?);
    eprintln!("second restart: {second}");
    killed_in_save(&c, 8)?;
    assert_eq!(number_after(&second, "resuming from step ")?, 6, "{second}");
    let g3 = number_after(&second, "; generation ")?;
    let said = c.set_aside(g3)?;
    eprintln!("checkpoint_set_aside: {said}");
    let aside3 = ckpt.join(".sup-set-aside").join(format!("g{g3}"));
    assert!(
        said.contains(&format!(
            "step 8 {} → {}",
            step8.display(),
            aside3.join("step-8").display()
        )),
        "{said}"
    );
    assert!(!aside3.join("step-8/.metadata").exists());

    c.wait_job("job succeeded", |j| j["state"] == "succeeded")?;
    for event in c.events("job_restarted")? {
        assert!(!reason(&event).contains(".sup-set-aside"), "{event}");
    }
    let listed = c.checkpoints()?;
    let steps: Vec<u64> = listed.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        steps,
        (1..=STEPS / EVERY).map(|i| i * EVERY).collect::<Vec<_>>()
    );
    for (step, path, verified) in &listed {
        assert_eq!(
            *path,
            ckpt.join(format!("step-{step}")).display().to_string()
        );
        assert!(
            verified.starts_with("dcp .metadata: 4 storage files"),
            "{verified}"
        );
    }

    // What the ranks did: both resumes loaded exactly the state saved at
    // step 6, and the steps retrained from there are bit-identical to the
    // first run's (same world size): step 8, saved whole at last, holds
    // exactly what the first save of step 8 held.
    let rec = read_record(&record)?;
    let gens = check_resumes(&rec, &ckpt)?;
    let shape: Vec<(u64, u64, Option<u64>, Vec<u64>)> = gens
        .iter()
        .map(|g| (g.generation, g.world, g.resumed, g.steps.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            (g1, 4, None, (1..=10).collect()),
            (g2, 4, Some(6), vec![7, 8]),
            (g3, 4, Some(6), (7..=STEPS).collect()),
        ]
    );
    for step in 7..=10 {
        let first = record_at(&rec, "step", g1, step)?;
        let again = record_at(&rec, "step", g3, step)?;
        assert_eq!(first["loss"], again["loss"], "step {step}");
        assert_eq!(first["data"], again["data"], "step {step}");
    }
    assert_eq!(
        record_at(&rec, "saved", g3, 8)?["digest"],
        record_at(&rec, "saved", g1, 8)?["digest"]
    );
    assert_eq!(records(&rec, "stale_metadata_removed").count(), 0);
    Ok(())
}

#[test]
fn a_loss_spike_rolls_back_with_sup_seed_and_sup_lr_scale_honoured() -> Result<()> {
    let Some(python) = ml_python()? else {
        return Ok(());
    };
    const STEPS: u64 = 20;
    const EVERY: u64 = 4;
    // The spike starts at 13, after 12 normal steps: supd's loss average
    // needs 5 samples, and it sees a step's report only if no newer one
    // came within 100 ms (reports are coalesced), so it sees the spike
    // start at 13 to 16.
    const SPIKE: u64 = 13;
    let c = Cluster::start(1)?;
    let ckpt = c.ckpt();
    let record = c.record_dir();
    let control = c.control_file().display().to_string();
    // Held at 12 until supd lists checkpoint 12: the rollback's target
    // must not depend on the agent's scan (every 2 to 8 s) coming within
    // the 10 s supd waits for it. Then held at 16 (spiking from 13), so it
    // cannot finish before supd has decided.
    c.control("hold 12")?;
    let spike = SPIKE.to_string();
    let command = train_command(
        &python,
        STEPS,
        EVERY,
        &record,
        &["--test-control", &control, "--spike-at", &spike],
    );
    c.submit(
        1,
        1,
        &command,
        "loss_spike_rollback = true\nloss_spike_factor = 3.0\nloss_spike_steps = 2\nrollback_lr_scale = 0.5",
    )?;
    c.wait_job("checkpoint 12 listed", |j| j["checkpoint"]["step"] == 12)?;
    c.control("hold 16")?;
    let rolled = wait_for("the rollback", JOB_TIMEOUT, || {
        Ok(c.events("job_rolled_back")?.first().map(reason))
    })?;
    c.control("")?;
    eprintln!("rollback: {rolled}");
    let seen_from = number_after(&rolled, "loss spike from step ")?;
    assert!((SPIKE..=16).contains(&seen_from), "{rolled}");
    assert!(
        rolled.contains(&format!(
            "rolling back to checkpoint step 12 ({}) with SUP_SEED=1 and SUP_LR_SCALE=0.5",
            ckpt.join("step-12").display()
        )),
        "{rolled}"
    );
    let restart = reason(&c.restart(0)?);
    assert_eq!(
        number_after(&restart, "resuming from step ")?,
        12,
        "{restart}"
    );
    let g2 = number_after(&restart, "; generation ")?;
    c.wait_job("job succeeded", |j| j["state"] == "succeeded")?;

    let rec = read_record(&record)?;
    let gens = check_resumes(&rec, &ckpt)?;
    let shape: Vec<(u64, u64, Option<u64>, Vec<u64>)> = gens
        .iter()
        .map(|g| (g.generation, g.world, g.resumed, g.steps.clone()))
        .collect();
    let g1 = gens.first().map(|g| g.generation).unwrap_or_default();
    // The spiking generation trained on until supd decided: to step 16 at
    // most (held there), and past the first two spiking steps.
    let spiked_to = gens
        .first()
        .and_then(|g| g.steps.last().copied())
        .unwrap_or_default();
    assert!((SPIKE + 1..=16).contains(&spiked_to), "{gens:?}");
    assert_eq!(
        shape,
        [
            (g1, 2, None, (1..=spiked_to).collect()),
            (g2, 2, Some(12), (13..=STEPS).collect()),
        ]
    );
    // The rolled-back generation was given SUP_SEED and SUP_LR_SCALE and
    // used them: the learning rate in its optimizer after the load is the
    // scaled one (the checkpoint's optimizer state holds the old one), and
    // its data differ from the spiking generation's at the same steps.
    let start = |generation: u64| {
        records(&rec, "start")
            .find(|r| r["generation"] == generation)
            .ok_or_else(|| anyhow!("no start record of generation {generation}"))
    };
    assert_eq!(start(g1)?["sup_seed"], Value::Null);
    assert_eq!(f64_of(start(g1)?, "lr")?, LR);
    assert_eq!(start(g2)?["sup_seed"], "1");
    assert_eq!(start(g2)?["sup_lr_scale"], "0.5");
    let resumed = record_at(&rec, "resumed", g2, 12)?;
    assert_eq!(f64_of(resumed, "lr")?, LR * 0.5, "{resumed}");
    for step in SPIKE..=spiked_to {
        let spiked = record_at(&rec, "step", g1, step)?;
        assert!(
            (f64_of(spiked, "reported")? - 10.0 * f64_of(spiked, "loss")?).abs() < 1e-9,
            "{spiked}"
        );
        let after = record_at(&rec, "step", g2, step)?;
        assert_eq!(after["samples"], spiked["samples"]);
        assert_ne!(
            after["data"], spiked["data"],
            "a new data order from SUP_SEED"
        );
    }
    for r in records(&rec, "step").filter(|r| r["generation"] == g2) {
        assert_eq!(r["reported"], r["loss"], "no spike after the rollback: {r}");
    }
    Ok(())
}
