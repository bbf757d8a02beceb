//! Stragglers corroborated by hardware, end to end (issue #19, part 2):
//! real supd, three sup-agents on the real NVML code path (the fake NVML
//! library, tests/fake-nvml) and the example trainer as a 2-node job with
//! one spare, `node-2` made 1.5× slower by `SUP_EXAMPLE_SLOW_NODE`.
//!
//! Two runs, equally slow, the replace policy on:
//!
//! - node-2's GPU 0 reports hardware-slowdown throttling
//!   (`throttle_reasons` 0x8): the agent's verdict carries the kind
//!   "throttle", and supd confirms the straggler after the short
//!   (corroborated) window;
//! - no hardware signal: only after the long (uncorroborated) window.
//!
//! Both are replaced by the spare; the throttled one at an earlier step
//! (read from each `job_straggler` event, "confirmed after N slow samples
//! in a row at step S (... window)"), and each event names its evidence.
//! Outcomes are read only through `supctl -o json` (status, events).
//!
//! The windows are far apart (3 vs 30 samples) on purpose: the throttle is
//! set once the job runs on node-2 (a node with a degraded GPU is not
//! placed, so it cannot be throttled first), and its verdict must reach
//! supd before the long window would have confirmed the node anyway. The
//! streak counts either way, so a verdict that arrives after the third
//! slow sample confirms the node at once; the comparison holds as long as
//! it arrives within the 30 samples (about 9 s at 0.3 s a step).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use sup_e2e::*;

/// Generous: two cores, shared with the other tests' ranks.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const PARAMS: u32 = 65;
const UNCORROBORATED: u32 = 30;
const CORROBORATED: u32 = 3;

fn supd_config(master_port: u16) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "10s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"

[detect]
straggler_window = 10
straggler_sustain = {UNCORROBORATED}
straggler_sustain_corroborated = {CORROBORATED}
"#
    )
}

/// Two healthy fake GPUs.
fn healthy() -> Value {
    json!({ "gpu_count": 2 })
}

/// GPU 0 held down by hardware slowdown (NVML clock event reason 0x8).
fn throttled() -> Value {
    json!({ "gpu_count": 2, "gpus": [{ "throttle_reasons": 8 }] })
}

/// Dropped in field order: supd (and this cluster's ranks, see
/// [`kill_ranks_under`]), the agents, whose logs are printed as they go,
/// then the directory.
struct Cluster {
    work: PathBuf,
    url: String,
    _supd: Supd,
    _agents: Vec<Proc>,
    gpus: Vec<(String, FakeGpus)>,
    _work: tempfile::TempDir,
}

impl Cluster {
    /// supd and fake-NVML agents node-1..=node-3, all ready.
    fn start() -> Result<Cluster> {
        let work = tempfile::tempdir()?;
        let path = work.path().to_owned();
        let mut supd = Supd::new(&path, &supd_config(free_port()?))?;
        supd.start()?;
        let url = supd.url();
        let mut agents = Vec::new();
        let mut gpus = Vec::new();
        for i in 1..=3 {
            let id = format!("node-{i}");
            let state = path.join(format!("agent-{i}")).display().to_string();
            let fake = FakeGpus::new(&path, &id, &healthy())?;
            // Sampled twice a second, so a throttle shows within the short
            // window (the default is every 5 s).
            agents.push(start_fake_nvml_agent(
                &path,
                &url,
                &id,
                &fake,
                &["--state-dir", &state, "--telemetry-interval", "500ms"],
            )?);
            gpus.push((id, fake));
        }
        wait_ready_nodes(&url, 3)?;
        Ok(Cluster {
            work: path,
            url,
            _supd: supd,
            _agents: agents,
            gpus,
            _work: work,
        })
    }

    fn set_gpus(&self, node: &str, state: &Value) -> Result<()> {
        let (_, fake) = self
            .gpus
            .iter()
            .find(|(id, _)| id == node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        fake.set(state)
    }

    /// Job "llm": 2 nodes, one rank each, node-2 1.5× slower, replaced
    /// when it straggles.
    fn submit(&self) -> Result<()> {
        let ckpt = self.work.join("ckpt");
        std::fs::create_dir_all(&ckpt)?;
        let spec = format!(
            r#"name = "llm"
command = {command}
nodes = 2
gpus_per_node = 1
checkpoint_dir = "{ckpt}"
checkpoint_layout = "marker:COMPLETE"
max_restarts = 5
straggler_policy = "replace"
[env]
SUP_EXAMPLE_SLOW_NODE = "node-2"
SUP_EXAMPLE_SLOWDOWN = "1.5"
"#,
            command = toml_list(&trainer_command(400, 10, "0.2", PARAMS)),
            ckpt = ckpt.display(),
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

    fn wait_gpu(&self, node: &str, gpu: usize, health: &str) -> Result<Value> {
        wait_for(&format!("{node} GPU {gpu} {health}"), JOB_TIMEOUT, || {
            let status = supctl_json(&self.url, &["status"])?;
            let n = status["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["id"] == node))
                .ok_or_else(|| anyhow!("node {node} missing from {status}"))?;
            Ok((n["gpus"][gpu]["health"] == health).then(|| n.clone()))
        })
    }

    /// The job's first `job_straggler` event's reason.
    fn wait_straggler(&self) -> Result<String> {
        let event = wait_for("a job_straggler event", JOB_TIMEOUT, || {
            Ok(events_of(&self.url, "job_straggler", Some("llm"))?
                .into_iter()
                .next())
        })?;
        Ok(event["reason"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until node-2 has been swapped for the spare, node-3, without
    /// the swap counting as the job's failure.
    fn wait_replaced(&self) -> Result<()> {
        let job = self.wait_job("job running without node-2", |j| {
            let nodes = j["nodes"].to_string();
            j["state"] == "running" && !nodes.contains("node-2") && nodes.contains("node-3")
        })?;
        assert_eq!(
            job["restarts"], 0,
            "a replacement is not the job's failure: {job}"
        );
        let restarted = events_of(&self.url, "job_restarted", Some("llm"))?;
        let why = restarted
            .last()
            .and_then(|e| e["reason"].as_str())
            .unwrap_or_default();
        assert!(
            why.contains("replacing straggler node node-2")
                && why.contains("replaced node-2 with node-3"),
            "{why}"
        );
        Ok(())
    }
}

/// One run: the job on node-1 and node-2, node-2 throttled or not; the
/// straggler event's reason and the step at which it confirmed node-2.
fn run(throttle: bool) -> Result<(String, u64)> {
    let c = Cluster::start()?;
    c.submit()?;
    let job = c.wait_job("job running on node-2", |j| {
        j["state"] == "running" && j["nodes"].to_string().contains("node-2")
    })?;
    assert!(
        job["nodes"].to_string().contains("node-1"),
        "node-3 is the spare: {job}"
    );
    if throttle {
        c.set_gpus("node-2", &throttled())?;
        let n = c.wait_gpu("node-2", 0, "degraded")?;
        eprintln!("node-2 throttled: {}", n["gpus"][0]);
    }
    let why = c.wait_straggler()?;
    eprintln!("job_straggler (throttled: {throttle}): {why}");
    assert!(
        why.starts_with("node node-2 is a straggler")
            && why.contains("replacing it with a spare now"),
        "{why}"
    );
    let step = number_after(&why, "slow samples in a row at step ")?;
    c.wait_replaced()?;
    if !throttle {
        // Nothing but the slowness: every GPU of the cluster stayed ok.
        let status = supctl_json(&c.url, &["status"])?;
        let bad: Vec<&Value> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|n| n["gpus"].as_array().into_iter().flatten())
            .filter(|g| g["health"] != "ok")
            .collect();
        assert!(bad.is_empty(), "unhealthy GPUs: {bad:?}");
    }
    Ok((why, step))
}

#[test]
fn a_throttled_straggler_is_replaced_in_fewer_steps_than_an_uncorroborated_one() -> Result<()> {
    let (throttled_why, throttled_at) = run(true)?;
    assert!(
        throttled_why.contains(
            "corroborated by GPU 0 degraded (throttling): clocks throttled (hw_slowdown): check cooling and power; confirmed after"
        ) && throttled_why.contains("(corroborated window)"),
        "{throttled_why}"
    );
    let slow_samples = number_after(&throttled_why, "confirmed after ")?;
    assert!(
        (u64::from(CORROBORATED)..u64::from(UNCORROBORATED)).contains(&slow_samples),
        "{throttled_why}"
    );

    let (plain_why, plain_at) = run(false)?;
    assert!(
        plain_why.contains(&format!(
            "no hardware signal of a slowdown (throttling, PCIe link downgrade, NVLink, ECC pressure); \
             confirmed after {UNCORROBORATED} slow samples in a row at step {plain_at} (uncorroborated window)"
        )),
        "{plain_why}"
    );
    eprintln!(
        "replaced at step {throttled_at} (throttled) vs step {plain_at} (no hardware signal)"
    );
    assert!(
        throttled_at < plain_at,
        "the throttled node was confirmed at step {throttled_at}, the uncorroborated one at \
         {plain_at}:\n{throttled_why}\n{plain_why}"
    );
    Ok(())
}
