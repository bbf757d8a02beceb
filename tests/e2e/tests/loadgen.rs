//! Smoke run of the load generator: 50 simulated agents against a real supd
//! for a few seconds, faults, a supd crash and restart and vanished agents
//! included. It checks that the benchmark runs, loses no report, leaves the
//! job alone across the restart and flaps no node, not how fast anything is
//! (the figures are in BENCHMARKS.md, from a full run). Once in plaintext
//! and once with `--tls`: mutual TLS, one client certificate per agent.

use std::process::Command;

use anyhow::{Context, Result};
use sup_e2e::bin;

#[test]
fn loadgen_smoke_runs_and_drops_no_report() -> Result<()> {
    let stdout = smoke(&[])?;
    assert!(
        stdout.contains("\ntransport                                     plaintext"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn loadgen_smoke_over_mutual_tls() -> Result<()> {
    let stdout = smoke(&["--tls"])?;
    // Every agent registered under its own certificate's identity: supd
    // would have refused one presenting another node's.
    assert!(
        stdout.contains("\ntransport                                     mutual TLS"),
        "{stdout}"
    );
    assert!(stdout.contains("and 51 client certificates in"), "{stdout}");
    Ok(())
}

/// One short run with `extra` flags; checks what holds for every transport
/// and returns what it printed.
fn smoke(extra: &[&str]) -> Result<String> {
    let out = Command::new(bin("sup-loadgen")?)
        .args(["--supd"])
        .arg(bin("supd")?)
        .args([
            "--nodes",
            "50",
            "--spares",
            "2",
            "--steady-secs",
            "3",
            "--swap-faults",
            "2",
            "--shrink-faults",
            "2",
            "--vanish",
            "3",
        ])
        .args(extra)
        .output()
        .context("running sup-loadgen")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sup-loadgen failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("(0 not accepted)"), "{stdout}");
    for figure in [
        "sustained ingest",
        "fault → cordon (supd event time)",
        "recovery, spare swap (agents launched)",
        "recovery, shrink (agents launched)",
        "silence → unreachable (since vanishing)",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(figure))
            .with_context(|| format!("no '{figure}' line in:\n{stdout}"))?;
        assert!(!line.contains("NaN"), "no samples for {figure}:\n{stdout}");
    }
    // supd killed and restarted under the agents: the job untouched, and no
    // node that kept reporting was ever called unreachable (storm included).
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no '{prefix}' line in:\n{stdout}"))
    };
    assert!(
        line("job across the restart")?.contains("(untouched)"),
        "{stdout}"
    );
    let false_unreachable = line("false unreachable events (whole run)")?;
    assert!(
        false_unreachable.split_whitespace().nth(5) == Some("0"),
        "{stdout}"
    );
    Ok(stdout.into_owned())
}
