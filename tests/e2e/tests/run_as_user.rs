//! Ranks run as the job's user: supd + one sup-agent (as root, with
//! `allow_root_ranks = false` in its config file, as deploy/sup-agent.toml
//! ships it). A job with `user = "nobody"` runs its ranks with nobody's
//! uid, gid and groups and writes its files as nobody; a job without `user`
//! and a job naming an unknown user fail to launch, and say why.
//!
//! Switching users needs root: run as anyone else the test says so and
//! passes without checking anything (CI runs as root).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sup_e2e::*;

/// nobody's uid, gid and home from the passwd database.
fn nobody() -> Result<Option<(u32, u32, String)>> {
    let out = Command::new("getent").args(["passwd", "nobody"]).output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = line.split(':').collect();
    let [_, _, uid, gid, _, home, ..] = fields.as_slice() else {
        bail!("unexpected passwd entry {line:?}");
    };
    Ok(Some((uid.parse()?, gid.parse()?, (*home).to_owned())))
}

/// The values of a `/proc/<pid>/status` line (`Uid:`, `Gid:`, `Groups:`).
fn status_ids(pid: u32, key: &str) -> Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))?;
    line.split_whitespace()
        .map(|v| v.parse().with_context(|| format!("{key} {line:?}")))
        .collect()
}

fn environ(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect())
}

fn submit(url: &str, work: &std::path::Path, name: &str, extra: &str) -> Result<()> {
    let ckpt = work.join(format!("ckpt-{name}"));
    std::fs::create_dir_all(&ckpt)?;
    // Writable by the job's user, whoever that is.
    std::fs::set_permissions(&ckpt, std::fs::Permissions::from_mode(0o777))?;
    let command = [
        "sh".to_owned(),
        "-c".to_owned(),
        "id -u > \"$SUP_CHECKPOINT_DIR/uid-$RANK\" && exec sleep 600".to_owned(),
    ];
    let spec = format!(
        "name = \"{name}\"\ncommand = {}\nnodes = 1\ngpus_per_node = 2\nmax_restarts = 0\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n{extra}",
        toml_list(&command),
        ckpt.display()
    );
    submit_job(url, work, name, &spec)
}

/// Waits for `name` to fail and returns why.
fn failure_reason(url: &str, name: &str) -> Result<String> {
    let job = wait_for(&format!("{name} failed"), Duration::from_secs(60), || {
        let job = job_status(url, name)?;
        Ok((job["state"] == "failed").then_some(job))
    })?;
    Ok(job["reason"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn ranks_run_as_the_jobs_user_and_never_as_root_unless_allowed() -> Result<()> {
    if !running_as_root() {
        eprintln!("SKIPPED: switching the ranks' user needs root; run this test as root (CI does)");
        return Ok(());
    }
    let Some((uid, gid, home)) = nobody()? else {
        eprintln!("SKIPPED: this machine has no user nobody");
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    // The ranks (as nobody) reach their checkpoint dirs through it.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let config = format!(
        "[jobs]\nmaster_port = {}\nstop_grace = \"2s\"\n",
        free_port()?
    );
    let mut supd = Supd::new(work.path(), &config)?;
    supd.start()?;
    let url = supd.url();
    let agent_config = work.path().join("agent.toml");
    std::fs::write(&agent_config, "allow_root_ranks = false\n")?;
    let state = work.path().join("agent-1").display().to_string();
    let config_arg = agent_config.display().to_string();
    let _agent = start_agent(
        work.path(),
        &url,
        "node-1",
        "127.0.0.1",
        "sim:2",
        &["--state-dir", &state, "--config", &config_arg],
    )?;
    wait_ready_nodes(&url, 1)?;

    // No user on an agent running as root that does not allow root ranks.
    submit(&url, work.path(), "as-root", "")?;
    let why = failure_reason(&url, "as-root")?;
    assert!(
        why.contains("could not launch its ranks")
            && why.contains("refusing to run its ranks as root")
            && why.contains("sets no `user`")
            && why.contains("allow_root_ranks = false"),
        "{why}"
    );
    assert!(processes_with_env(&[("SUP_JOB", "as-root")]).is_empty());
    assert!(!work.path().join("ckpt-as-root/uid-0").exists());

    // A user this node does not have.
    submit(&url, work.path(), "ghost", "user = \"sup-no-such-user\"\n")?;
    let why = failure_reason(&url, "ghost")?;
    assert!(why.contains("unknown user \"sup-no-such-user\""), "{why}");

    // root by name is root all the same.
    submit(&url, work.path(), "named-root", "user = \"root\"\n")?;
    let why = failure_reason(&url, "named-root")?;
    assert!(
        why.contains("user \"root\"") && why.contains("uid 0 (root)"),
        "{why}"
    );

    submit(&url, work.path(), "as-nobody", "user = \"nobody\"\n")?;
    let ranks = wait_for("both ranks of as-nobody", Duration::from_secs(60), || {
        let job = job_status(&url, "as-nobody")?;
        if job["state"] == "failed" {
            bail!("as-nobody failed: {}", job["reason"]);
        }
        let ranks = processes_with_env(&[("SUP_JOB", "as-nobody")]);
        Ok((job["state"] == "running" && ranks.len() == 2).then_some(ranks))
    })?;
    for pid in ranks {
        // Real, effective, saved and filesystem ids alike.
        assert_eq!(status_ids(pid, "Uid:")?, [uid; 4], "rank {pid}");
        assert_eq!(status_ids(pid, "Gid:")?, [gid; 4], "rank {pid}");
        // nobody's groups, not the agent's (root's).
        let groups = status_ids(pid, "Groups:")?;
        assert!(
            !groups.contains(&0) && groups.contains(&gid),
            "rank {pid}: groups {groups:?}"
        );
        let env = environ(pid)?;
        for wanted in [
            "USER=nobody".to_owned(),
            "LOGNAME=nobody".to_owned(),
            format!("HOME={home}"),
        ] {
            assert!(env.contains(&wanted), "rank {pid}: no {wanted} in {env:?}");
        }
        assert!(
            env.iter().any(|v| v.starts_with("PATH=")),
            "rank {pid}: PATH kept"
        );
    }
    for rank in 0..2 {
        let file = work.path().join(format!("ckpt-as-nobody/uid-{rank}"));
        let written = wait_for(
            &format!("{} written", file.display()),
            Duration::from_secs(30),
            || {
                Ok(std::fs::read_to_string(&file)
                    .ok()
                    .filter(|t| !t.is_empty()))
            },
        )?;
        assert_eq!(written.trim(), uid.to_string(), "id -u of rank {rank}");
        assert_eq!(std::fs::metadata(&file)?.uid(), uid, "{}", file.display());
    }
    Ok(())
}

/// Whether this test runs as root (the agent it starts then does too).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
