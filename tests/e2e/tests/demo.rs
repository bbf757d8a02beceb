//! The README's first command, scripts/demo.sh, with short timings and the
//! binaries already built: it starts supd, simulated agents and the
//! example trainer as a job, prints the dashboard URL, runs its Xid 79
//! drill, and on Ctrl-C (SIGINT) stops every process it started.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};
use sup_e2e::*;

#[test]
fn the_demo_runs_drills_and_cleans_up_on_ctrl_c() -> Result<()> {
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
    let url = format!("http://127.0.0.1:{grpc}");

    let run_dir = wait_for("the demo's banner", STARTUP_TIMEOUT, || {
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
    wait_for("the drill", STARTUP_TIMEOUT, || {
        Ok(demo.log_text().contains("== drill: Xid 79").then_some(()))
    })?;
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
