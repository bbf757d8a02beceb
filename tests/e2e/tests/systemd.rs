//! The systemd contract of deploy/*.service, without systemd running:
//! `systemd-analyze verify` accepts both units, and supd and the agent speak
//! sd_notify the way `Type=notify` + `WatchdogSec=` expect (READY=1 once up,
//! then WATCHDOG=1 again and again from their work loops), checked through a
//! NOTIFY_SOCKET of this test's own.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sup_e2e::*;

/// The units name /usr/local/bin/..., which this machine need not have and
/// `verify` checks for; verify copies that point at the built binaries.
#[test]
fn systemd_analyze_verifies_both_units() -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!("systemd-analyze not found: install the Debian package 'systemd' (scripts/test.sh does)");
    }
    let dir = tempfile::tempdir()?;
    let bins = format!("{}/", bin_dir()?.display());
    let mut paths = Vec::new();
    for unit in ["supd.service", "sup-agent.service"] {
        let text = std::fs::read_to_string(repo_root().join("deploy").join(unit))
            .with_context(|| format!("reading deploy/{unit}"))?;
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/", &bins))?;
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings about our units (rc 0 but a line naming the file) fail too;
    // what the host's own units trigger is not ours to judge.
    let ours = dir.path().display().to_string();
    if !out.status.success() || stderr.contains(&ours) {
        bail!("systemd-analyze verify failed:\n{stderr}");
    }
    Ok(())
}

/// Datagrams received on `socket` until `want` has been seen `times` times.
fn wait_notifications(
    socket: &UnixDatagram,
    want: &str,
    times: usize,
    timeout: Duration,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen
        .iter()
        .filter(|m: &&String| m.lines().any(|l| l == want))
        .count()
        < times
    {
        if Instant::now() > deadline {
            bail!("{want} not sent {times} times within {timeout:?}; got {seen:?}");
        }
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            // A signal meant for the test process (a child exiting) may
            // interrupt the wait: wait again, the deadline still holds.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(seen)
}

#[test]
fn supd_and_the_agent_notify_ready_and_ping_the_watchdog() -> Result<()> {
    let work = tempfile::tempdir()?;
    let supd_socket_path = work.path().join("supd.notify");
    let supd_socket = UnixDatagram::bind(&supd_socket_path)?;
    supd_socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let (grpc, http) = (free_port()?, free_port()?);
    let mut cmd = Command::new(bin("supd")?);
    cmd.args(["--data-dir"])
        .arg(work.path().join("data"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .arg("--plaintext")
        .env("NOTIFY_SOCKET", &supd_socket_path)
        // 2 s: supd pings at least every second.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID");
    let _supd = Proc::spawn("supd", cmd, work.path())?;
    let got = wait_notifications(&supd_socket, "READY=1", 1, STARTUP_TIMEOUT)?;
    // READY only once the HTTP listener answers.
    let (code, _) = http_get(http, "/readyz")?;
    assert_eq!(code, 200, "{got:?}");
    // An idle supd (no agent, no request) still pings: its loop wakes for it.
    wait_notifications(&supd_socket, "WATCHDOG=1", 3, Duration::from_secs(10))?;

    let agent_socket_path = work.path().join("agent.notify");
    let agent_socket = UnixDatagram::bind(&agent_socket_path)?;
    agent_socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut cmd = Command::new(bin("sup-agent")?);
    cmd.args(["--supervisor", &format!("http://127.0.0.1:{grpc}")])
        .args([
            "--node-id",
            "notify-1",
            "--address",
            "127.0.0.1",
            "--gpu-backend",
            "sim:2",
        ])
        .arg("--state-dir")
        .arg(work.path().join("agent"))
        .env("NOTIFY_SOCKET", &agent_socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID");
    let _agent = Proc::spawn("agent", cmd, work.path())?;
    wait_notifications(&agent_socket, "READY=1", 1, STARTUP_TIMEOUT)?;
    wait_notifications(&agent_socket, "WATCHDOG=1", 3, Duration::from_secs(10))?;
    Ok(())
}
