//! Live goodput accounting end to end: a job with a known fault schedule —
//! one hang (a rank frozen with SIGSTOP) and one drilled Xid 79 — and the
//! seconds `supctl job describe -o json` books per cause against the
//! schedule as supd's own events time it (not the test's sleeps): the hang's
//! "no step advance for X ms" is its detection, each `job_resumed` says how
//! long after its (re)start decision training resumed. The buckets must sum
//! to the wall time.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sup_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(120);

struct Cluster {
    work: std::path::PathBuf,
    url: String,
    http_port: u16,
    _supd: Supd,
    _agents: Vec<Proc>,
    _work: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_ranks_under(&self.work);
    }
}

fn cluster() -> Result<Cluster> {
    let work = tempfile::tempdir()?;
    let path = work.path().to_owned();
    let master_port = free_port()?;
    let config = format!(
        r#"
[nodes]
unreachable_after = "10s"
telemetry_interval = "500ms"

[jobs]
master_port = {master_port}
stop_grace = "2s"

[detect]
hang_factor = 2.0
hang_floor = "1s"
warmup_steps = 5
checkpoint_allowance = "20s"
"#
    );
    let mut supd = Supd::new(&path, &config)?;
    supd.start()?;
    let url = supd.url();
    // Two nodes for the job and one spare for the Xid's replacement.
    let agents = start_sim_agents(&path, 3, |_| url.clone(), &["--allow-drills"])?;
    wait_ready_nodes(&url, 3)?;
    Ok(Cluster {
        work: path,
        url,
        http_port: supd.http_port,
        _supd: supd,
        _agents: agents,
        _work: work,
    })
}

fn number_after(text: &str, prefix: &str) -> Result<f64> {
    text.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.trim_end_matches('.').parse().ok())
        .ok_or_else(|| anyhow!("no number after {prefix:?} in {text}"))
}

fn reason(e: &Value) -> String {
    e["reason"].as_str().unwrap_or_default().to_owned()
}

fn describe(c: &Cluster) -> Result<Value> {
    supctl_json(&c.url, &["job", "describe", "llm"])
}

/// Waits for the job to train in generation > `after` past step `past`.
fn wait_training(c: &Cluster, after: u64, past: u64) -> Result<Value> {
    wait_for("the job training", TIMEOUT, || {
        let j = job_status(&c.url, "llm")?;
        if j["state"] == "failed" {
            bail!("job failed: {j}");
        }
        let ok = j["state"] == "running"
            && j["generation"].as_u64().unwrap_or(0) > after
            && j["step"].as_u64().unwrap_or(0) > past
            && j["goodput"]["bucket"] != "restart";
        Ok(ok.then_some(j))
    })
}

#[test]
fn booked_seconds_match_a_hang_and_an_xid_and_sum_to_the_wall_time() -> Result<()> {
    let c = cluster()?;
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
"#,
        command = toml_list(&trainer_command(400, 20, "0.2", 65)),
        ckpt = ckpt.display(),
    );
    submit_job(&c.url, &c.work, "llm", &spec)?;

    // 1. A hang: rank 1 frozen between two checkpoints (not while saving,
    //    which has its own allowance).
    let job = wait_for("the job between two checkpoints", TIMEOUT, || {
        let j = job_status(&c.url, "llm")?;
        let step = j["step"].as_u64().unwrap_or(0);
        Ok((j["state"] == "running" && step > 20 && (2..=10).contains(&(step % 20))).then_some(j))
    })?;
    let generation = job["generation"].as_u64().unwrap_or(0);
    let dir = ckpt.display().to_string();
    let g = generation.to_string();
    let pids = processes_with_env(&[
        ("SUP_CHECKPOINT_DIR", dir.as_str()),
        ("SUP_GENERATION", g.as_str()),
        ("RANK", "1"),
    ]);
    let [pid] = pids[..] else {
        bail!("expected one rank 1 of generation {generation}, found {pids:?}");
    };
    let out = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("kill -STOP {pid}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let hung = wait_for("a job_hung event", TIMEOUT, || {
        Ok(events_of(&c.url, "job_hung", Some("llm"))?
            .into_iter()
            .next())
    })?;
    let hang_detection_s = number_after(&reason(&hung), "no step advance for ")? / 1000.0;

    // 2. An Xid 79 (fallen off the bus) on a node of the new generation.
    let job = wait_training(&c, generation, 0)?;
    let generation = job["generation"].as_u64().unwrap_or(0);
    let node = job["nodes"][0]
        .as_str()
        .ok_or_else(|| anyhow!("no node in {job}"))?
        .to_owned();
    let out = supctl(
        &c.url,
        &["drill", "xid", "--node", &node, "--gpu", "0", "--xid", "79"],
    )?;
    if !out.status.success() {
        bail!("drill xid: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_training(&c, generation, 0)?;

    // Read the booking and supd's events of the same run.
    let described = describe(&c)?;
    let gp = &described["goodput"];
    let secs = |b: &str| gp["seconds"][b].as_f64().unwrap_or(f64::NAN);
    let wall = gp["wall_s"].as_f64().unwrap_or(f64::NAN);
    eprintln!("goodput: {gp:#}");
    let sum: f64 = gp["seconds"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(f64::NAN);
    assert!(
        (sum - wall).abs() <= 0.002,
        "buckets {sum} s vs wall {wall} s"
    );
    assert_eq!(gp["failures"], 2, "{gp}");

    // Restart: every (re)start decision → training again, as supd timed it.
    // The first start: the job had not shown it reports progress, so its
    // restart ends when every rank launched (`job_running`); the hang's
    // and the Xid's restarts end at their first progress (`job_resumed`).
    let running = events_of(&c.url, "job_running", Some("llm"))?;
    let first = running.first().map(reason).unwrap_or_default();
    let mut restart_s = number_after(&first, "launched ")? / 1000.0;
    let resumed = events_of(&c.url, "job_resumed", Some("llm"))?;
    assert_eq!(resumed.len(), 2, "{resumed:#?}");
    for e in &resumed {
        restart_s += number_after(&reason(e), ", ")? / 1000.0;
    }
    let near = |what: &str, booked: f64, schedule: f64| {
        assert!(
            (booked - schedule).abs() <= 0.05 * schedule.max(1.0),
            "{what}: booked {booked:.3} s, schedule {schedule:.3} s; {gp:#}"
        );
    };
    near("restart", secs("restart"), restart_s);
    // Detection: the hang's silence up to the decision; the Xid's cordon
    // and its restart come within the same moment (a few ms).
    near("detection", secs("detection"), hang_detection_s);
    // Nothing waited for nodes (the spare took the Xid's place), nothing
    // stopped; the rest trained (new steps, re-done steps, saves).
    assert_eq!(secs("waiting"), 0.0, "{gp}");
    assert_eq!(secs("stopped"), 0.0, "{gp}");
    assert!(
        secs("redone") > 0.0,
        "the hang's restart re-did steps: {gp}"
    );
    assert!(secs("checkpoint_save") > 0.0, "{gp}");
    assert!(secs("productive") > 0.0, "{gp}");

    check_goodput_metrics(&c, gp)?;
    Ok(())
}

/// `/metrics` while the job runs, after its two failures: the four goodput
/// families are there for it (a lost-seconds counter per cause it lost
/// time to) and `promtool check metrics` accepts the whole body.
fn check_goodput_metrics(c: &Cluster, gp: &Value) -> Result<()> {
    const FAMILIES: [&str; 4] = [
        "sup_job_goodput_ratio{job=\"llm\"}",
        "sup_fleet_goodput_ratio ",
        "sup_job_lost_seconds_total{",
        "sup_job_recommended_checkpoint_interval_seconds{job=\"llm\"}",
    ];
    let body = wait_for("the goodput families in /metrics", TIMEOUT, || {
        let (code, body) = http_get(c.http_port, "/metrics")?;
        Ok((code == 200 && FAMILIES.iter().all(|f| body.contains(f))).then_some(body))
    })
    .with_context(|| format!("the job's goodput: {gp:#}"))?;
    promtool_check(&body)?;
    for family in [
        "sup_job_goodput_ratio",
        "sup_fleet_goodput_ratio",
        "sup_job_lost_seconds_total",
        "sup_job_recommended_checkpoint_interval_seconds",
    ] {
        // A counter's TYPE line names it with or without `_total`.
        let base = family.trim_end_matches("_total");
        assert!(
            body.contains(&format!("# TYPE {family} "))
                || body.contains(&format!("# TYPE {base} ")),
            "no TYPE line for {family}:\n{body}"
        );
    }
    // The detection and restart it booked are lost seconds by cause.
    for cause in ["detection", "restart"] {
        let series = format!("sup_job_lost_seconds_total{{job=\"llm\",cause=\"{cause}\"}}");
        let alt = format!("sup_job_lost_seconds_total{{cause=\"{cause}\",job=\"llm\"}}");
        assert!(
            body.contains(&series) || body.contains(&alt),
            "no {series}:\n{body}"
        );
    }
    let ratio = body
        .lines()
        .find_map(|l| l.strip_prefix("sup_job_goodput_ratio{job=\"llm\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no sup_job_goodput_ratio value for llm"))?;
    assert!(ratio > 0.0 && ratio <= 1.0, "ETTR {ratio}");
    Ok(())
}
