//! The README's first command, scripts/demo.sh, with short timings and the
//! binaries already built: it starts supd, simulated agents and the
//! example trainer as a job, prints the dashboard URL, runs its Xid 79
//! drill, and on Ctrl-C (SIGINT) stops every process it started.
//!
//! The drill does what the demo tells people to watch, read from the
//! demo's supd (`supctl -o json`) and its agents' rank logs: the drilled
//! node is cordoned by sup as a whole board (one GPU failed, the other
//! fine), the spare takes its place in a job of the same size, and the
//! job resumes from the newest checkpoint sup knew of when it restarted.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::Value;
use sup_e2e::*;

/// Generous: two cores, and the demo's ranks are real processes.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(120);

/// The strings of a JSON array (node ids).
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn reason(event: &Value) -> &str {
    event["reason"].as_str().unwrap_or_default()
}

/// The logs the demo's agents keep of the ranks of `generation` of its
/// job (`<run dir>/agent-N/jobs/demo-llm/gen-G/rank-R.log`).
fn rank_logs(run_dir: &Path, generation: u64) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            std::fs::read_dir(
                e.path()
                    .join("jobs/demo-llm")
                    .join(format!("gen-{generation}")),
            )
            .ok()
        })
        .flatten()
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .collect()
}

#[test]
fn the_demos_drill_cordons_the_board_swaps_in_the_spare_and_resumes_and_ctrl_c_cleans_up(
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let (grpc, http) = (free_port()?, free_port()?);
    // SIGINT back to its default first: a test run started in the
    // background of a non-interactive shell (as CI runners and nohup do)
    // inherits it ignored, and bash cannot trap a signal ignored on entry,
    // so the demo could not see the Ctrl-C this test sends.
    let mut cmd = Command::new("env");
    cmd.args(["--default-signal=INT", "bash"])
        .arg(repo_root().join("scripts/demo.sh"))
        .env("BIN", bin_dir()?)
        .env("NO_BUILD", "1")
        .env("AGENTS", "3")
        .env("GPUS", "2")
        .env("RANKS_PER_NODE", "1")
        .env("DRILL_AFTER", "6")
        .env("GRPC_PORT", grpc.to_string())
        .env("HTTP_PORT", http.to_string())
        .env("TMPDIR", work.path());
    // Its own process group, so that the test's Ctrl-C reaches the whole
    // foreground group as a terminal's does (bash acts on a SIGINT that
    // arrives while a child runs only when that child got it too: a SIGINT
    // to bash alone during the drill's supctl call was ignored).
    cmd.process_group(0);
    let mut demo = Proc::spawn("demo", cmd, work.path())?;
    let _group = KillGroup(
        demo.pid().ok_or_else(|| anyhow!("no pid"))?,
        work.path().to_owned(),
    );
    let url = format!("http://127.0.0.1:{grpc}");

    // The demo waits up to 20 s for supd and 30 s for the agents (polling
    // with supctl) before its banner: on a loaded 2-core machine more than
    // STARTUP_TIMEOUT in all.
    let run_dir = wait_for("the demo's banner", OUTCOME_TIMEOUT, || {
        if let Some(status) = demo.exited()? {
            return Err(anyhow!(
                "the demo exited with {status}:\n{}",
                demo.log_text()
            ));
        }
        let text = demo.log_text();
        Ok(text
            .contains(&format!("Dashboard:  http://127.0.0.1:{http}/"))
            .then(|| {
                text.lines()
                    .find_map(|l| l.split("Logs and state: ").nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .flatten())
    })?;
    wait_for("the demo job running", STARTUP_TIMEOUT, || {
        Ok((job_status(&url, "demo-llm")?["state"] == "running").then_some(()))
    })?;
    let victim = wait_for("the drill", OUTCOME_TIMEOUT, || {
        if let Some(status) = demo.exited()? {
            return Err(anyhow!(
                "the demo exited with {status}:\n{}",
                demo.log_text()
            ));
        }
        Ok(demo.log_text().lines().find_map(|l| {
            l.strip_prefix("== drill: Xid 79 on ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        }))
    })?;

    // The board: cordoned by sup for the Xid, as a whole, though only one
    // of its GPUs failed.
    let node = wait_for("the drilled node cordoned", OUTCOME_TIMEOUT, || {
        let node = supctl_json(&url, &["node", &victim])?;
        Ok((node["state"] == "cordoned").then_some(node))
    })?;
    let cordon = node["cordon"]["reason"].as_str().unwrap_or_default();
    assert_eq!(node["cordon"]["by"], "sup", "{node}");
    assert!(
        cordon.contains("GPU 0") && cordon.contains("Xid 79"),
        "{node}"
    );
    assert_eq!(node["gpus"][0]["health"], "failed", "{node}");
    assert_eq!(node["gpus"][1]["health"], "ok", "{node}");

    // The spare swapped in: the job, the same size, on every node but the
    // drilled one.
    let job = wait_for(
        "the job running without the drilled node",
        OUTCOME_TIMEOUT,
        || {
            let job = job_status(&url, "demo-llm")?;
            Ok((job["state"] == "running" && !ids(&job["nodes"]).contains(&victim)).then_some(job))
        },
    )?;
    let status = supctl_json(&url, &["status"])?;
    let mut others: Vec<String> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
        .filter(|id| *id != victim)
        .collect();
    others.sort();
    let mut nodes = ids(&job["nodes"]);
    nodes.sort();
    assert_eq!(nodes, others, "{job}");
    let events = supctl_json(&url, &["events"])?;
    let events = events.as_array().cloned().unwrap_or_default();
    let restart = events
        .iter()
        .find(|e| {
            e["kind"] == "job_restarted"
                && e["job"] == "demo-llm"
                && reason(e).contains(&format!("replaced {victim} with "))
        })
        .ok_or_else(|| anyhow!("no restart replacing {victim}: {events:#?}"))?;
    let why = reason(restart);
    eprintln!("demo restart: {why}");
    assert!(
        why.starts_with(&format!("node {victim} cordoned by sup: GPU 0")),
        "{why}"
    );
    let spare = why
        .split(&format!("replaced {victim} with "))
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_default();
    assert!(others.iter().any(|id| id == spare), "{why}");

    // From the newest checkpoint: the last one sup announced before the
    // restart (the demo drills only once there is one), and every rank of
    // the new generation resumed there.
    let step = number_after(why, "resuming from step ")?;
    let newest = events
        .iter()
        .rfind(|e| {
            e["kind"] == "job_checkpoint"
                && e["job"] == "demo-llm"
                && e["seq"].as_u64() < restart["seq"].as_u64()
        })
        .map(|e| number_after(reason(e), "newest complete checkpoint: step "))
        .transpose()?;
    assert_eq!(newest, Some(step), "{why}");
    let generation = number_after(why, "; generation ")?;
    let resumed = format!(" at step {step}");
    wait_for(
        "the new generation's ranks resumed",
        OUTCOME_TIMEOUT,
        || {
            let logs = rank_logs(Path::new(&run_dir), generation);
            Ok((logs.len() == 2
                && logs.iter().all(|l| {
                    l.lines()
                        .any(|l| l.contains("resumed from") && l.ends_with(&resumed))
                }))
            .then_some(()))
        },
    )?;
    let marker = [("SUP_DEMO_RUN", run_dir.as_str())];
    assert!(
        processes_with_env(&marker).len() >= 5,
        "supd, three agents and ranks carry the marker"
    );

    let pid = demo.pid().ok_or_else(|| anyhow!("no pid"))?;
    Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()?;
    demo.wait_exit(Duration::from_secs(40))?;
    assert!(
        demo.log_text().contains("demo stopped"),
        "{}",
        demo.log_text()
    );
    // Cleaning up says nothing alarming (processes that end while the
    // cleanup reads /proc used to print one error line each).
    let log = demo.log_text();
    assert!(
        !log.contains("/environ"),
        "the cleanup printed errors:\n{log}"
    );
    let left = processes_with_env(&marker);
    assert!(left.is_empty(), "processes of the demo left: {left:?}");
    Ok(())
}

/// SIGKILLs the demo's process group, then the ranks under its work dir
/// (they run in process groups of their own), when the test ends, however
/// it ends: a failed test must not leave supd, its agents and their ranks
/// behind (the demo cleans up only on its own Ctrl-C). Harmless once it has.
struct KillGroup(u32, std::path::PathBuf);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .status();
        kill_ranks_under(&self.1);
    }
}
