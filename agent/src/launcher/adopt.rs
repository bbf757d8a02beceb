//! Re-adoption of running ranks after an agent restart.
//!
//! Under systemd the agent runs with `KillMode=process` and
//! `--leave-ranks-on-exit`: stopping or upgrading the agent leaves the
//! training ranks running. So that a new agent can take them back, the
//! launcher keeps `<state-dir>/ranks.json` up to date: the job, the
//! generation, the progress port the ranks were given, and for each rank
//! its pid (= its process group) and the kernel's start time of that pid,
//! which tells a live rank from a recycled pid.
//!
//! On start the launcher reads the file. When supd's first desired
//! assignment names the same job and generation, the ranks still alive are
//! adopted: they are reported in the node's rank status as the agent's own,
//! and stopping them works as for any rank (signals to their groups). When
//! the assignment differs, they are adopted only to be stopped before the
//! new generation starts, so two generations never run side by side.
//!
//! An adopted rank is not the new agent's child, so it cannot be waited
//! for: [`watch`] polls `/proc/<pid>/stat` and reports the exit with an
//! unknown status (the old parent's successor, init, reaps it and the
//! status is gone). supd treats an exit without a code like a failure of
//! that rank; a job whose ranks exit normally while an agent is restarting
//! is therefore restarted once more from its checkpoint (documented).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use super::process::Exit;

const FILE: &str = "ranks.json";
/// How often an adopted rank is checked for life: fast enough that supd
/// hears of a dead rank about as soon as from a child.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    pub rank: u32,
    pub local_rank: u32,
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat when the rank was recorded.
    pub start_time: u64,
    pub log_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub job: String,
    pub generation: u64,
    pub progress_port: Option<u16>,
    pub ranks: Vec<RankRecord>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Replaces the file atomically (a crash leaves the old or the new one).
pub fn save(state_dir: &Path, state: &StateFile) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path(state_dir))
}

pub fn remove(state_dir: &Path) {
    match std::fs::remove_file(path(state_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}", path(state_dir).display()),
    }
}

/// The file, if there is a readable one. A damaged file is ignored (and
/// said so): the worst case is ranks that are not adopted, which supd then
/// sees as lost and restarts.
pub fn load(state_dir: &Path) -> Option<StateFile> {
    let file = path(state_dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("cannot read {}: {e}; not re-adopting ranks", file.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(state) => Some(state),
        Err(e) => {
            warn!(
                "{} does not parse ({e}); not re-adopting ranks",
                file.display()
            );
            None
        }
    }
}

/// The start time of a live (not zombie) process; `None` when it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after the last ')' are plain.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (the state), so field 22 is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `record` still names the process it was written for.
pub fn alive(record: &RankRecord) -> bool {
    start_time(record.pid) == Some(record.start_time)
}

/// Reports the end of an adopted rank on `exits`, as a child's would be.
pub fn watch(record: &RankRecord, generation: u64, exits: mpsc::UnboundedSender<Exit>) {
    let record = record.clone();
    tokio::spawn(async move {
        while alive(&record) {
            if exits.is_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = exits.send(Exit {
            generation,
            local_rank: record.local_rank,
            pid: Pid::from_raw(record.pid),
            status: Err(
                "adopted after an agent restart: not its child, exit status unknown".to_owned(),
            ),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_liveness() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), None);
        let me = i32::try_from(std::process::id()).expect("pid");
        let state = StateFile {
            job: "j".into(),
            generation: 3,
            progress_port: Some(4242),
            ranks: vec![RankRecord {
                rank: 0,
                local_rank: 0,
                pid: me,
                start_time: start_time(me).expect("own start time"),
                log_path: dir.path().join("rank-0.log"),
            }],
        };
        save(dir.path(), &state).expect("save");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded, state);
        assert!(alive(&loaded.ranks[0]));
        let recycled = RankRecord {
            start_time: loaded.ranks[0].start_time + 1,
            ..loaded.ranks[0].clone()
        };
        assert!(
            !alive(&recycled),
            "a pid with another start time is not the rank"
        );
        remove(dir.path());
        assert_eq!(load(dir.path()), None);
    }

    #[test]
    fn a_damaged_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path()), b"{not json").expect("write");
        assert_eq!(load(dir.path()), None);
    }
}
