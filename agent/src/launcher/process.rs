//! One rank process: started in a process group of its own, its output in a
//! log file, its end reported to the launcher loop.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{chdir, setgid, setgroups, setuid, Gid, Pid, Uid};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::env::is_reserved;
use super::identity::RankUser;

/// Everything needed to start one rank.
#[derive(Debug)]
pub struct RankSpec<'a> {
    pub generation: u64,
    pub rank: u32,
    pub local_rank: u32,
    pub command: &'a [String],
    /// Empty: the agent's working directory.
    pub workdir: &'a str,
    pub env: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// The account to start it as; `None`: the agent's own.
    pub user: Option<&'a RankUser>,
}

/// A started rank. Its process group id is its pid.
#[derive(Debug)]
pub struct RankProcess {
    pub rank: u32,
    pub local_rank: u32,
    pub pid: Pid,
    pub log_path: PathBuf,
    /// The agent has asked it to stop.
    pub stopping: bool,
}

/// A rank's leader process has ended and been reaped.
#[derive(Debug)]
pub struct Exit {
    pub generation: u64,
    pub local_rank: u32,
    pub pid: Pid,
    pub status: Result<ExitStatus, String>,
}

impl Exit {
    pub fn exit_code(&self) -> Option<i32> {
        self.status.as_ref().ok().and_then(ExitStatus::code)
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.as_ref().ok().and_then(ExitStatus::signal)
    }

    pub fn describe(&self) -> String {
        match (&self.status, self.exit_code(), self.signal()) {
            (Err(e), _, _) => format!("unknown status ({e})"),
            (_, Some(code), _) => format!("exit code {code}"),
            (_, _, Some(signal)) => match Signal::try_from(signal) {
                Ok(name) => format!("signal {signal} ({name})"),
                Err(_) => format!("signal {signal}"),
            },
            (Ok(status), None, None) => status.to_string(),
        }
    }
}

/// Starts a rank; its exit will arrive on `exits`. The error names what
/// could not be done, for `RankStatus.launch_error`.
pub fn spawn(
    spec: RankSpec<'_>,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<RankProcess, String> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| {
            format!(
                "rank {}: cannot open log file {}: {e}",
                spec.rank,
                spec.log_path.display()
            )
        })?;
    let log_err = log.try_clone().map_err(|e| {
        format!(
            "rank {}: cannot share log file {}: {e}",
            spec.rank,
            spec.log_path.display()
        )
    })?;
    let Some((program, args)) = spec.command.split_first() else {
        return Err(format!("rank {}: the command is empty", spec.rank));
    };

    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own group, so that stopping it reaches every process it
        // started, and a signal to the agent's group does not reach it.
        .process_group(0);
    match spec.user.filter(|u| u.switch) {
        Some(user) => {
            let workdir = (!spec.workdir.is_empty())
                .then(|| CString::new(spec.workdir))
                .transpose()
                .map_err(|_| format!("rank {}: the workdir contains a NUL byte", spec.rank))?;
            switch_user(&mut command, user, workdir);
        }
        None if !spec.workdir.is_empty() => {
            command.current_dir(spec.workdir);
        }
        None => {}
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_reserved) {
            command.env_remove(name);
        }
    }
    command.envs(&spec.env);

    let mut child = command.spawn().map_err(|e| {
        let place = if spec.workdir.is_empty() {
            String::new()
        } else {
            format!(" in {}", spec.workdir)
        };
        let who = spec.user.map_or_else(String::new, |u| {
            format!(" as user {} (uid {}, gid {})", u.name, u.uid, u.gid)
        });
        format!(
            "rank {}: cannot start {program:?}{place}{who}: {e}",
            spec.rank
        )
    })?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| format!("rank {}: started but has no process id", spec.rank))?;

    let (generation, local_rank) = (spec.generation, spec.local_rank);
    tokio::spawn(async move {
        let status = child.wait().await.map_err(|e| e.to_string());
        // The loop may be gone when the agent shuts down; nobody to tell.
        let _ = exits.send(Exit {
            generation,
            local_rank,
            pid,
            status,
        });
    });
    Ok(RankProcess {
        rank: spec.rank,
        local_rank: spec.local_rank,
        pid,
        log_path: spec.log_path,
        stopping: false,
    })
}

/// Makes the child (srun, for a Slurm job step) run as `user`.
pub(super) fn run_as(command: &mut Command, user: &RankUser) {
    switch_user(command, user, None);
}

/// Makes the child take `user`'s identity, supplementary groups included,
/// before it executes the rank's program, then enter `workdir` as that user.
///
/// Not `CommandExt::uid`/`gid`: std sets those before any `pre_exec` hook
/// and clears the supplementary groups when it does, and std's way to set
/// them is unstable. So all three are set here, in the order that works
/// (groups and gid while still root, uid last), and the working directory
/// after them, so that a directory the user may not enter fails the launch
/// instead of being entered with root's rights.
#[allow(unsafe_code)]
fn switch_user(command: &mut Command, user: &RankUser, workdir: Option<CString>) {
    let groups: Vec<Gid> = user.groups.iter().copied().map(Gid::from_raw).collect();
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    // SAFETY: the hook runs in the forked child of a multi-threaded
    // process, where only async-signal-safe calls are allowed. It makes
    // four system calls through nix's thin wrappers (setgroups, setgid,
    // setuid, chdir on a C string prepared in the parent), reads only data
    // moved into it before the fork, and allocates nothing: an error
    // becomes an `io::Error` from its errno, which is stored inline.
    unsafe {
        command.pre_exec(move || {
            setgroups(&groups)?;
            setgid(gid)?;
            setuid(uid)?;
            if let Some(dir) = &workdir {
                chdir(dir.as_c_str())?;
            }
            Ok(())
        });
    }
}

/// Signals a rank's whole process group. A group that is already gone is
/// not an error: the rank's exit is on its way.
pub fn signal_group(pid: Pid, signal: Signal) -> Result<(), Errno> {
    match killpg(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}
