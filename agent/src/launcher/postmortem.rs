//! What the agent captures of a hung generation's ranks before it stops
//! them (supd names the generation in `DesiredAssignment.postmortem_generation`):
//! with `py-spy` on PATH, `py-spy dump --pid <pid>` of each rank, all at
//! once and each bounded by [`DUMP_TIMEOUT`], so a post-mortem delays the
//! restart by a few seconds at most. The dumps travel in the ranks'
//! `RankExited.stack_dump`; the last log lines go in `log_tail` as for any
//! exit. Without py-spy nothing is run and nothing is waited for.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::unistd::Pid;

pub const PY_SPY: &str = "py-spy";
/// Per rank; they run in parallel.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Output kept per rank.
const MAX_DUMP_BYTES: usize = 16 * 1024;

/// `py-spy` in the directories of `path` (a `PATH` value), if executable.
pub fn find_py_spy(path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(PY_SPY))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `program dump --pid <pid>` for every (rank, pid), in parallel: rank →
/// its stacks, or why there are none.
pub async fn dump_stacks(
    program: &Path,
    ranks: &[(u32, Pid)],
    timeout: Duration,
) -> BTreeMap<u32, String> {
    let mut set = tokio::task::JoinSet::new();
    for &(rank, pid) in ranks {
        let program = program.to_owned();
        set.spawn(async move { (rank, dump_one(&program, pid, timeout).await) });
    }
    let mut dumps = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        if let Ok((rank, dump)) = done {
            dumps.insert(rank, dump);
        }
    }
    dumps
}

async fn dump_one(program: &Path, pid: Pid, timeout: Duration) -> String {
    let child = tokio::process::Command::new(program)
        .args(["dump", "--pid", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return format!("(cannot run {}: {e})", program.display()),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => format!(
            "({} dump timed out after {})",
            PY_SPY,
            humantime::format_duration(timeout)
        ),
        Ok(Err(e)) => format!("({PY_SPY} dump failed: {e})"),
        Ok(Ok(out)) if !out.status.success() => format!(
            "({PY_SPY} dump failed with {}: {})",
            out.status,
            clip(&String::from_utf8_lossy(&out.stderr)).trim()
        ),
        Ok(Ok(out)) => clip(&String::from_utf8_lossy(&out.stdout)),
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_DUMP_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_DUMP_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn py_spy_is_found_only_when_executable_on_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = tempfile::tempdir().expect("tempdir");
        let path = std::env::join_paths([empty.path(), dir.path()]).expect("path");
        assert_eq!(find_py_spy(Some(&path)), None);
        std::fs::write(dir.path().join(PY_SPY), "not executable").expect("write");
        assert_eq!(find_py_spy(Some(&path)), None);
        let fake = script(dir.path(), PY_SPY, "exit 0");
        assert_eq!(find_py_spy(Some(&path)), Some(fake));
        assert_eq!(find_py_spy(None), None);
    }

    #[tokio::test]
    async fn each_rank_gets_its_dump_and_a_stuck_dump_is_cut_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fake py-spy: prints its arguments like a stack; pid 2 hangs.
        let fake = script(
            dir.path(),
            PY_SPY,
            "if [ \"$3\" = 2 ]; then sleep 30; fi\n\
             if [ \"$3\" = 3 ]; then echo 'Permission denied' >&2; exit 1; fi\n\
             echo \"Thread 0x1 (idle): MainThread (args $*)\"\n\
             echo '    all_reduce (train.py:140)'",
        );
        let started = std::time::Instant::now();
        let dumps = dump_stacks(
            &fake,
            &[
                (0, Pid::from_raw(1)),
                (1, Pid::from_raw(2)),
                (2, Pid::from_raw(3)),
            ],
            Duration::from_millis(500),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bounded, in parallel"
        );
        assert_eq!(
            dumps.get(&0).map(String::as_str),
            Some("Thread 0x1 (idle): MainThread (args dump --pid 1)\n    all_reduce (train.py:140)\n")
        );
        assert_eq!(
            dumps.get(&1).map(String::as_str),
            Some("(py-spy dump timed out after 500ms)")
        );
        let failed = dumps.get(&2).cloned().unwrap_or_default();
        assert!(
            failed.starts_with("(py-spy dump failed with exit status: 1: Permission denied"),
            "{failed}"
        );
        let missing = dump_stacks(
            Path::new("/nonexistent/py-spy"),
            &[(0, Pid::from_raw(1))],
            DUMP_TIMEOUT,
        )
        .await;
        assert!(
            missing[&0].starts_with("(cannot run /nonexistent/py-spy"),
            "{missing:?}"
        );
    }
}
