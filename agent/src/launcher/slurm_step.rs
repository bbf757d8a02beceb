//! Ranks as a Slurm job step: for a job bound to a Slurm allocation
//! (`JobAssignment.slurm_job_id`), this node's ranks of a generation are
//! one step of that allocation, started with
//!
//! ```text
//! srun --jobid=<allocation> --nodelist=<this node's Slurm name> --nodes=1
//!      --ntasks=<ranks per node> --overlap --kill-on-bad-exit=1
//!      --job-name=sup:<job>:g<generation> [--chdir=<workdir>] --export=ALL
//!      --label /bin/sh -c <WRAPPER> sup-rank <command...>
//! ```
//!
//! One step per node per generation: the agent stays in charge of its
//! node's ranks (a node's step is started, stopped and reported alone, as
//! its forked ranks were), and Slurm runs them as the job's user, in the
//! job's cgroup, counted in its accounting and listed by `squeue --steps`.
//!
//! The rank environment is the agent's (see [`super::env`]), computed for
//! local rank 0 and exported to the step; what differs per task (`RANK`,
//! `ROLE_RANK`, `LOCAL_RANK`, `CUDA_VISIBLE_DEVICES`) the [`WRAPPER`]
//! derives from Slurm's `SLURM_LOCALID` and `SUP_SLURM_*` variables before
//! it executes the command.
//!
//! The tasks' output comes back through srun, each line labelled with its
//! task id (`--label`), and the agent appends it to each rank's usual log
//! file. The tasks never open the logs themselves: they run as the job's
//! user, and the agent's state directory is not theirs to write (systemd
//! makes it 0750, root's).
//!
//! The agent follows the step through its `srun`: SIGTERM to srun is
//! forwarded by Slurm to every task (the stop grace as before); srun's exit
//! (the highest exit code of its tasks) is each local rank's exit, and
//! `--kill-on-bad-exit` ends the other tasks when one fails, as a world
//! with a dead rank cannot go on. After the grace period and SIGKILL, the
//! step is also cancelled with `scancel`, found by its name, so tasks cannot
//! outlive a killed srun.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::unistd::Pid;
use sup_proto::v1::JobAssignment;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::env::is_reserved;
use super::identity::RankUser;
use super::process::{Exit, RankProcess};

/// Sets what differs per task from Slurm's task id, then runs the rank's
/// command with its output appended to its log. `$0` is `sup-rank`, the
/// command follows.
pub const WRAPPER: &str = r#"l=${SLURM_LOCALID:?not started by srun: SLURM_LOCALID is not set}
r=$((SUP_SLURM_RANK_BASE + l))
export RANK=$r ROLE_RANK=$r LOCAL_RANK=$l
i=0
for g in $SUP_SLURM_GPUS; do
  if [ "$i" -eq "$l" ]; then export CUDA_VISIBLE_DEVICES="$g"; fi
  i=$((i + 1))
done
unset SUP_SLURM_RANK_BASE SUP_SLURM_GPUS
exec "$@" 2>&1
"#;

/// The step's name: what `scancel` finds it by, and what operators see in
/// `squeue --steps`.
pub fn step_name(job: &str, generation: u64, node_name: &str) -> String {
    format!("sup:{job}:g{generation}:{node_name}")
}

/// The srun command line for this node's step of `job` at `generation`.
pub fn srun_args(job: &JobAssignment, node_name: &str, generation: u64) -> Vec<String> {
    let mut args = vec![
        format!("--jobid={}", job.slurm_job_id),
        format!("--nodelist={node_name}"),
        "--nodes=1".to_owned(),
        format!("--ntasks={}", job.ranks_per_node),
        // Steps of one allocation may share its CPUs: the old generation's
        // step may still be ending, and the batch script holds one.
        "--overlap".to_owned(),
        "--kill-on-bad-exit=1".to_owned(),
        format!("--job-name={}", step_name(&job.job, generation, node_name)),
        "--export=ALL".to_owned(),
        "--quiet".to_owned(),
        // Every output line prefixed with its task id: how the agent
        // sorts them into the ranks' logs.
        "--label".to_owned(),
    ];
    if !job.workdir.is_empty() {
        args.push(format!("--chdir={}", job.workdir));
    }
    args.extend(["/bin/sh".to_owned(), "-c".to_owned(), WRAPPER.to_owned()]);
    args.push("sup-rank".to_owned());
    args.extend(job.command.iter().cloned());
    args
}

/// The step's environment from the per-local-rank environments the agent
/// computed (`envs[l]` for local rank `l`): local rank 0's, plus what the
/// [`WRAPPER`] needs to give each task its own.
pub fn step_env(envs: &[BTreeMap<String, String>], rank_base: u64) -> BTreeMap<String, String> {
    let mut env = envs.first().cloned().unwrap_or_default();
    let gpus: Vec<String> = envs
        .iter()
        .enumerate()
        .map(|(l, e)| {
            e.get("CUDA_VISIBLE_DEVICES")
                .filter(|g| !g.is_empty())
                .cloned()
                .unwrap_or_else(|| l.to_string())
        })
        .collect();
    env.insert("SUP_SLURM_RANK_BASE".to_owned(), rank_base.to_string());
    env.insert("SUP_SLURM_GPUS".to_owned(), gpus.join(" "));
    env
}

/// One local rank of the step: its global rank and log file.
#[derive(Debug)]
pub struct StepRank {
    pub rank: u32,
    pub local_rank: u32,
    pub log_path: PathBuf,
}

/// Starts this node's step. Every local rank is tracked under srun's pid;
/// srun's end is reported as each one's exit.
pub fn spawn(
    job: &JobAssignment,
    node_name: &str,
    generation: u64,
    env: BTreeMap<String, String>,
    ranks: Vec<StepRank>,
    user: Option<&RankUser>,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<Vec<RankProcess>, String> {
    let Some(first) = ranks.first() else {
        return Err(format!("job {}: no ranks to start", job.job));
    };
    // The agent writes the logs (see the module's comment); srun's own
    // messages (a refused step, Slurm's errors) go to the first rank's log,
    // where its exit report will show them.
    let mut logs = BTreeMap::new();
    for r in &ranks {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log_path)
            .map_err(|e| {
                format!(
                    "rank {}: cannot open log file {}: {e}",
                    r.rank,
                    r.log_path.display()
                )
            })?;
        logs.insert(r.local_rank, file);
    }
    let err = OpenOptions::new()
        .append(true)
        .open(&first.log_path)
        .map_err(|e| format!("cannot open {}: {e}", first.log_path.display()))?;
    let args = srun_args(job, node_name, generation);
    let mut command = Command::new("srun");
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .process_group(0);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_reserved) {
            command.env_remove(name);
        }
    }
    command.envs(&env);
    if let Some(u) = user.filter(|u| u.switch) {
        // srun itself runs as the job's user: Slurm adds a step to a job
        // only for its owner (or root) and runs the tasks as the caller.
        super::process::run_as(&mut command, u);
    }
    let mut child = command.spawn().map_err(|e| {
        format!(
            "job {}: cannot start srun for Slurm job {} on {node_name}: {e}",
            job.job, job.slurm_job_id
        )
    })?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| format!("job {}: srun started but has no process id", job.job))?;
    info!(job = %job.job, generation, slurm_job = job.slurm_job_id, node = node_name, %pid, tasks = ranks.len(), "Slurm job step started");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(sort_output(out, logs));
    }
    let locals: Vec<u32> = ranks.iter().map(|r| r.local_rank).collect();
    tokio::spawn(async move {
        let status = child.wait().await.map_err(|e| e.to_string());
        for local_rank in locals {
            let _ = exits.send(Exit {
                generation,
                local_rank,
                pid,
                status: status.clone(),
            });
        }
    });
    Ok(ranks
        .into_iter()
        .map(|r| RankProcess {
            rank: r.rank,
            local_rank: r.local_rank,
            pid,
            log_path: r.log_path,
            stopping: false,
        })
        .collect())
}

/// A line longer than this is written out in pieces, so a task that never
/// ends its line cannot grow the agent's memory.
const MAX_LINE: usize = 64 * 1024;

/// Appends each `--label`led line of srun's output to its task's log,
/// without the label. Lines whose label names no task of this node (srun
/// prints none such; a future format might) go to the first log.
async fn sort_output(out: impl AsyncRead + Unpin, mut logs: BTreeMap<u32, std::fs::File>) {
    let mut reader = BufReader::new(out);
    let mut line = Vec::with_capacity(256);
    // The task of a line still being read when it hit MAX_LINE: the rest
    // has no label of its own.
    let mut continuing: Option<u32> = None;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                warn!("reading the Slurm step's output: {e}");
                return;
            }
        }
        let (task, text) = match continuing {
            Some(t) => (Some(t), &line[..]),
            None => split_label(&line),
        };
        continuing = if line.ends_with(b"\n") { None } else { task };
        let log = task
            .and_then(|t| logs.get(&t).map(|_| t))
            .or_else(|| logs.keys().next().copied())
            .and_then(|t| logs.get_mut(&t));
        if let Some(log) = log {
            if let Err(e) = log.write_all(text) {
                warn!("writing a rank's log: {e}");
            }
        }
    }
}

/// `" 1: text"` → (Some(1), "text"); a line with no label is kept whole.
pub fn split_label(line: &[u8]) -> (Option<u32>, &[u8]) {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return (None, line);
    };
    let task = std::str::from_utf8(&line[..colon])
        .ok()
        .and_then(|l| l.trim().parse().ok());
    match task {
        Some(t) => {
            let rest = &line[colon + 1..];
            (Some(t), rest.strip_prefix(b" ").unwrap_or(rest))
        }
        None => (None, line),
    }
}

/// How long scancel and squeue may take.
const SLURM_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Cancels the step of `job` at `generation` (SIGKILL to its tasks),
/// found by name with `squeue --steps`. Off the launcher's loop.
pub fn cancel(slurm_job_id: u64, job: &str, generation: u64, node_name: &str) {
    let name = step_name(job, generation, node_name);
    tokio::spawn(async move {
        let listed = tokio::time::timeout(
            SLURM_COMMAND_TIMEOUT,
            Command::new("squeue")
                .args(["-h", "-s", "-j", &slurm_job_id.to_string(), "-o", "%i %j"])
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let out = match listed {
            Ok(Ok(out)) if out.status.success() => out.stdout,
            Ok(Ok(out)) => {
                warn!(slurm_job_id, step = %name, "squeue --steps failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                return;
            }
            Ok(Err(e)) => {
                warn!(slurm_job_id, step = %name, "cannot run squeue: {e}");
                return;
            }
            Err(_) => {
                warn!(slurm_job_id, step = %name, "squeue did not answer");
                return;
            }
        };
        for step in steps_named(&out, &name) {
            let cancelled = tokio::time::timeout(
                SLURM_COMMAND_TIMEOUT,
                Command::new("scancel")
                    .args(["--signal=KILL", &step])
                    .kill_on_drop(true)
                    .status(),
            )
            .await;
            match cancelled {
                Ok(Ok(s)) if s.success() => info!(step = %step, "Slurm job step cancelled"),
                other => warn!(step = %step, ?other, "cannot cancel the Slurm job step"),
            }
        }
    });
}

/// Step ids (`JOB.STEP`) named `name` in `squeue -h -s -o "%i %j"` output.
pub fn steps_named(out: &[u8], name: &str) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(id, n)| n.trim() == name && id.contains('.'))
        .map(|(id, _)| id.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobAssignment {
        JobAssignment {
            job: "llm".into(),
            command: vec!["python3".into(), "train.py".into(), "--lr".into()],
            node_rank: 1,
            ranks_per_node: 2,
            world_size: 4,
            slurm_job_id: 42,
            ..Default::default()
        }
    }

    #[test]
    fn srun_starts_one_step_of_the_allocation_on_this_node() {
        let mut j = job();
        let args = srun_args(&j, "gpu-7", 9);
        assert_eq!(
            &args[..10],
            [
                "--jobid=42",
                "--nodelist=gpu-7",
                "--nodes=1",
                "--ntasks=2",
                "--overlap",
                "--kill-on-bad-exit=1",
                "--job-name=sup:llm:g9:gpu-7",
                "--export=ALL",
                "--quiet",
                "--label",
            ]
        );
        assert_eq!(&args[10..12], ["/bin/sh", "-c"]);
        assert_eq!(args[12], WRAPPER);
        assert_eq!(&args[13..], ["sup-rank", "python3", "train.py", "--lr"]);
        j.workdir = "/work dir".into();
        assert!(srun_args(&j, "gpu-7", 9).contains(&"--chdir=/work dir".to_owned()));
    }

    #[test]
    fn the_step_env_carries_what_the_wrapper_needs() {
        let envs: Vec<BTreeMap<String, String>> = [("2", "0"), ("5", "1")]
            .iter()
            .map(|(gpu, local)| {
                [
                    ("CUDA_VISIBLE_DEVICES", *gpu),
                    ("LOCAL_RANK", *local),
                    ("WORLD_SIZE", "4"),
                ]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
            })
            .collect();
        let env = step_env(&envs, 2);
        assert_eq!(env["SUP_SLURM_RANK_BASE"], "2");
        assert_eq!(env["SUP_SLURM_GPUS"], "2 5");
        assert_eq!(env["WORLD_SIZE"], "4");
    }

    /// The wrapper itself, run by sh as srun's task 1 would run it.
    #[test]
    fn the_wrapper_gives_each_task_its_rank_and_gpu() {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", WRAPPER, "sup-rank", "sh", "-c"])
            .arg("echo RANK=$RANK LOCAL_RANK=$LOCAL_RANK ROLE_RANK=$ROLE_RANK CUDA=$CUDA_VISIBLE_DEVICES BASE=${SUP_SLURM_RANK_BASE:-unset} args=$0")
            .arg("x")
            .env("SLURM_LOCALID", "1")
            .env("SUP_SLURM_RANK_BASE", "6")
            .env("SUP_SLURM_GPUS", "3 7")
            .env("CUDA_VISIBLE_DEVICES", "3")
            .output()
            .expect("sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "RANK=7 LOCAL_RANK=1 ROLE_RANK=7 CUDA=7 BASE=unset args=x"
        );
        // Outside srun it refuses, saying why.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", WRAPPER, "sup-rank", "true"])
            .env_remove("SLURM_LOCALID")
            .output()
            .expect("sh");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not started by srun"));
    }

    #[test]
    fn labelled_lines_are_split_into_task_and_text() {
        assert_eq!(
            split_label(b" 1: step 3 loss=0.5\n"),
            (Some(1), &b"step 3 loss=0.5\n"[..])
        );
        assert_eq!(split_label(b"12: x: y\n"), (Some(12), &b"x: y\n"[..]));
        assert_eq!(
            split_label(b"no label here\n"),
            (None, &b"no label here\n"[..])
        );
        assert_eq!(
            split_label(b"error: srun: x\n"),
            (None, &b"error: srun: x\n"[..])
        );
    }

    /// srun's labelled output lands in each rank's own log, unlabelled.
    #[tokio::test]
    async fn the_step_output_is_sorted_into_the_rank_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join(name))
                .expect("log")
        };
        let logs = BTreeMap::from([(0, open("rank-2.log")), (1, open("rank-3.log"))]);
        let long = "y".repeat(MAX_LINE + 10);
        let out = format!("0: a\n1: b\n0: c\nunlabelled\n1: {long}\n");
        sort_output(out.as_bytes(), logs).await;
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read");
        assert_eq!(read("rank-2.log"), "a\nc\nunlabelled\n");
        let r3 = read("rank-3.log");
        assert!(r3.starts_with("b\nyyy"), "{}", &r3[..10]);
        assert_eq!(
            r3.len(),
            "b\n".len() + long.len() + 1,
            "a long line is kept whole, in pieces"
        );
    }

    #[test]
    fn steps_are_found_by_name() {
        let out = b"42.0 sup:llm:g8\n42.1 sup:llm:g9\n42.batch batch\n42.2 sup:llm:g9\n";
        assert_eq!(steps_named(out, "sup:llm:g9"), vec!["42.1", "42.2"]);
        assert!(steps_named(b"garbage", "x").is_empty());
    }
}
