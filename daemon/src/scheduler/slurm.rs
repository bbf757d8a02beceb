//! Slurm through its standard client commands: `sinfo --json` to observe
//! (machine-readable, self-describing, and present in 22.05 where
//! `scontrol --json` is not; a reason containing `|` or spaces cannot break
//! it as it would a `sinfo -o` format), `scontrol update` to drain or
//! resume. Not slurmrestd: it is an optional daemon many sites do not run,
//! while the client commands are on every node that can talk to Slurm.
//!
//! The commands find Slurm the usual way (`SLURM_CONF`, inherited from
//! supd's environment, else `/etc/slurm/slurm.conf`). Their output is
//! outside input: bounded in size, parsed leniently (unknown fields and
//! both the 22.05 string and the newer list form of `state`).

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use sup_core::scheduler::{SchedulerNode, SchedulerOp};
use sup_core::SlurmAllocation;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{Scheduler, SchedulerError};

/// One call to sinfo or scontrol may take this long (a slurmctld that is
/// down makes them retry for a while).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// `sinfo --json` is about 1.5 KB a node: room for well over 20,000.
const MAX_STDOUT: u64 = 64 << 20;
const MAX_STDERR: u64 = 16 << 10;
/// More nodes than any Slurm cluster has: the rest is ignored.
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone)]
pub struct Slurm {
    sinfo: String,
    scontrol: String,
}

impl Slurm {
    /// The commands from `PATH`.
    pub fn from_env() -> Slurm {
        Slurm {
            sinfo: "sinfo".to_owned(),
            scontrol: "scontrol".to_owned(),
        }
    }

    /// Which slurm.conf the commands will read, for the startup log.
    pub fn conf_description(&self) -> String {
        match std::env::var_os("SLURM_CONF") {
            Some(path) => format!("{} (SLURM_CONF)", path.to_string_lossy()),
            None => "/etc/slurm/slurm.conf (default)".to_owned(),
        }
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, SchedulerError> {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .map(|a| {
                if a.contains(' ') {
                    format!("{a:?}")
                } else {
                    a.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let fail = |detail: String| SchedulerError {
            command: command.clone(),
            detail,
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out call must not leave the command behind.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(fail("no pipes to the command".to_owned()));
        };
        let finished = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = stdout.take(MAX_STDOUT);
            let mut stderr = stderr.take(MAX_STDERR);
            let (read_out, read_err) =
                tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            read_out.map_err(|e| fail(format!("reading its output: {e}")))?;
            read_err.map_err(|e| fail(format!("reading its errors: {e}")))?;
            if out.len() as u64 >= MAX_STDOUT {
                // It would block writing the rest: stop it, refuse the lot.
                let _ = child.start_kill();
                return Err(fail(format!("more than {MAX_STDOUT} bytes of output")));
            }
            let status = child
                .wait()
                .await
                .map_err(|e| fail(format!("waiting for it: {e}")))?;
            Ok::<_, SchedulerError>((status, out, err))
        };
        let (status, out, err) = tokio::time::timeout(COMMAND_TIMEOUT, finished)
            .await
            .map_err(|_| {
                fail(format!(
                    "no answer within {}",
                    humantime::format_duration(COMMAND_TIMEOUT)
                ))
            })??;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err);
            return Err(fail(format!("{status}: {}", stderr.trim())));
        }
        Ok(out)
    }
}

impl Scheduler for Slurm {
    async fn observe(&self) -> Result<Vec<SchedulerNode>, SchedulerError> {
        let out = self.run(&self.sinfo, &["--json"]).await?;
        parse_sinfo_json(&out).map_err(|detail| SchedulerError {
            command: format!("{} --json", self.sinfo),
            detail,
        })
    }

    async fn apply(&self, op: &SchedulerOp) -> Result<(), SchedulerError> {
        let node = format!("nodename={}", op.name());
        match op {
            SchedulerOp::Drain { reason, .. } => {
                let reason = format!("reason={reason}");
                self.run(&self.scontrol, &["update", &node, "state=drain", &reason])
                    .await?;
            }
            SchedulerOp::Resume { .. } => {
                self.run(&self.scontrol, &["update", &node, "state=resume"])
                    .await?;
            }
        }
        Ok(())
    }
}

impl Slurm {
    /// The running Slurm job `job_id` whose allocation a sup job is to be
    /// bound to (`supctl job submit --slurm-job`), read with `squeue` and
    /// `scontrol show hostnames`. The error names the problem for the
    /// operator: no such job, not running, no nodes, Slurm unreachable.
    pub async fn allocation(&self, job_id: u64) -> Result<SlurmAllocation, String> {
        let id = job_id.to_string();
        let out = self
            .run("squeue", &["-h", "-j", &id, "-o", "%T|%u|%N"])
            .await
            .map_err(|e| {
                if e.detail.contains("Invalid job id") {
                    format!("Slurm job {job_id} does not exist (squeue: invalid job id)")
                } else {
                    format!(
                        "cannot ask Slurm about job {job_id}: {}: {}",
                        e.command, e.detail
                    )
                }
            })?;
        let (state, user, nodelist) = parse_squeue_job(job_id, &out)?;
        if state != "RUNNING" {
            return Err(format!(
                "Slurm job {job_id} is {state}, not RUNNING: bind a job from inside its running allocation (the batch script)"
            ));
        }
        let out = self
            .run(&self.scontrol, &["show", "hostnames", &nodelist])
            .await
            .map_err(|e| {
                format!(
                    "cannot expand Slurm job {job_id}'s node list {nodelist:?}: {}: {}",
                    e.command, e.detail
                )
            })?;
        let nodes = parse_hostnames(&out);
        if nodes.is_empty() {
            return Err(format!("Slurm job {job_id} has no nodes ({nodelist:?})"));
        }
        Ok(SlurmAllocation {
            job_id,
            nodes,
            user,
        })
    }
}

/// `squeue -h -j ID -o "%T|%u|%N"`: (state, user, node list). Nothing
/// listed: the job has ended and left the queue.
pub fn parse_squeue_job(job_id: u64, out: &[u8]) -> Result<(String, String, String), String> {
    let text = String::from_utf8_lossy(out);
    let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err(format!(
            "Slurm job {job_id} is not in Slurm's queue (it has ended, or never existed)"
        ));
    };
    let mut fields = line.splitn(3, '|');
    match (fields.next(), fields.next(), fields.next()) {
        (Some(state), Some(user), Some(nodes)) if !state.is_empty() => Ok((
            clip(state.trim(), 64),
            clip(user.trim(), 256),
            clip(nodes.trim(), 64 << 10),
        )),
        _ => Err(format!(
            "cannot read squeue's line about Slurm job {job_id}: {:?}",
            clip(line, 256)
        )),
    }
}

/// `scontrol show hostnames`: one name a line.
pub fn parse_hostnames(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().any(char::is_whitespace))
        .take(MAX_NODES)
        .map(|l| clip(l, 256))
        .collect()
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[derive(Deserialize)]
struct SinfoJson {
    #[serde(default)]
    errors: Vec<serde_json::Value>,
    #[serde(default)]
    nodes: Vec<SinfoNode>,
}

#[derive(Deserialize)]
struct SinfoNode {
    #[serde(default)]
    name: String,
    /// 22.05: "idle"; later releases: ["IDLE", "DRAIN"].
    #[serde(default)]
    state: StateField,
    /// 22.05 only: ["DRAIN", ...].
    #[serde(default)]
    state_flags: Vec<String>,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StateField {
    One(String),
    Many(Vec<String>),
}

impl Default for StateField {
    fn default() -> Self {
        StateField::One("unknown".to_owned())
    }
}

/// Base states as Slurm spells them (a list form puts one of these first
/// and flags after it).
const BASE_STATES: &[&str] = &[
    "unknown",
    "down",
    "idle",
    "allocated",
    "error",
    "mixed",
    "future",
];

/// `sinfo --json` to the engine's view of each node.
pub fn parse_sinfo_json(out: &[u8]) -> Result<Vec<SchedulerNode>, String> {
    let parsed: SinfoJson =
        serde_json::from_slice(out).map_err(|e| format!("unreadable JSON: {e}"))?;
    if let Some(first) = parsed.errors.first() {
        let text = first.to_string();
        return Err(format!(
            "sinfo reported {} error(s), first: {}",
            parsed.errors.len(),
            text.chars().take(512).collect::<String>()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut nodes = Vec::new();
    for n in parsed.nodes.into_iter().take(MAX_NODES) {
        if n.name.is_empty() || !seen.insert(n.name.clone()) {
            // Listed once per partition by some releases: the first will do.
            continue;
        }
        let (base, mut flags) = match n.state {
            StateField::One(s) => (s.to_ascii_lowercase(), Vec::new()),
            StateField::Many(list) => {
                let lower: Vec<String> = list.iter().map(|s| s.to_ascii_lowercase()).collect();
                let base = lower
                    .iter()
                    .find(|s| BASE_STATES.contains(&s.as_str()))
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_owned());
                let flags = lower.into_iter().filter(|s| *s != base).collect();
                (base, flags)
            }
        };
        flags.extend(n.state_flags.iter().map(|f| f.to_ascii_lowercase()));
        nodes.push(SchedulerNode {
            name: n.name,
            base,
            flags,
            reason: n.reason,
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from Debian's slurm-wlm 22.05.8 `sinfo --json`.
    const SINFO_22_05: &str = r#"{
      "meta": {"plugin": {"type": "openapi/v0.0.38"}, "Slurm": {"release": "22.05.8"}},
      "errors": [],
      "nodes": [
        {"name": "d1", "hostname": "localhost", "state": "idle", "state_flags": ["DRAIN"],
         "reason": "maintenance | x", "reason_set_by_user": "root", "cpus": 1},
        {"name": "d2", "state": "down", "state_flags": [], "reason": "broken"},
        {"name": "d3", "state": "mixed", "state_flags": ["DRAIN", "NOT_RESPONDING"],
         "reason": "sup: Xid 79"},
        {"name": "d4", "state": "idle", "state_flags": [], "reason": ""}
      ]
    }"#;

    #[test]
    fn sinfo_22_05_json_gives_state_flags_and_reason() {
        let nodes = parse_sinfo_json(SINFO_22_05.as_bytes()).expect("parse");
        let names: Vec<_> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.state_name(), n.unavailable()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("d1", "drained".to_owned(), true),
                ("d2", "down".to_owned(), true),
                ("d3", "draining*".to_owned(), true),
                ("d4", "idle".to_owned(), false),
            ]
        );
        assert_eq!(nodes[0].reason, "maintenance | x");
        assert!(!nodes[0].drained_by_sup());
        assert!(nodes[2].drained_by_sup());
    }

    #[test]
    fn the_newer_list_form_of_state_is_read_too() {
        let json = r#"{"nodes": [{"name": "a", "state": ["IDLE", "DRAIN"], "reason": "r"},
                                 {"name": "b", "state": ["MIXED"]}]}"#;
        let nodes = parse_sinfo_json(json.as_bytes()).expect("parse");
        assert_eq!(nodes[0].base, "idle");
        assert_eq!(nodes[0].flags, vec!["drain"]);
        assert_eq!(nodes[0].state_name(), "drained");
        assert_eq!(nodes[1].state_name(), "mixed");
    }

    #[test]
    fn squeue_and_hostnames_give_the_allocation() {
        let (state, user, nodes) =
            parse_squeue_job(12, b"RUNNING|alice|sup-[a-c]\n").expect("parse");
        assert_eq!(
            (state.as_str(), user.as_str(), nodes.as_str()),
            ("RUNNING", "alice", "sup-[a-c]")
        );
        assert!(parse_squeue_job(12, b"")
            .expect_err("gone")
            .contains("not in Slurm's queue"));
        assert!(parse_squeue_job(12, b"garbage")
            .expect_err("bad")
            .contains("cannot read squeue's line"));
        assert_eq!(
            parse_hostnames(b"sup-a\nsup-b\n\nsup-c\n"),
            vec!["sup-a", "sup-b", "sup-c"]
        );
    }

    #[test]
    fn bad_output_is_an_error_not_an_empty_cluster() {
        assert!(
            parse_sinfo_json(b"sinfo: error: slurm_load_node: Unable to contact")
                .expect_err("not JSON")
                .contains("unreadable JSON")
        );
        let err = parse_sinfo_json(br#"{"errors": [{"error": "timeout"}], "nodes": []}"#)
            .expect_err("errors");
        assert!(err.contains("timeout"), "{err}");
        // Nameless and repeated entries are dropped, unknown fields ignored.
        let nodes = parse_sinfo_json(
            br#"{"nodes": [{"state": "idle"}, {"name": "a", "x": 1}, {"name": "a", "state": "down"}]}"#,
        )
        .expect("parse");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].base, "unknown");
    }
}
