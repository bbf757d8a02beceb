//! The rank launcher with real processes: assignments go in through the
//! bus as the link would deliver them, reports come out of the outbox.
//!
//! The rank is a small Python script that records what it sees (its
//! environment, pid, process group, a child it starts) in files, so the
//! tests can check the environment contract and that no process of a
//! stopped generation survives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sup_agent::bus::{self, LinkPorts};
use sup_agent::launcher::{Launcher, Settings};
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{
    Checkpoint, DesiredAssignment, JobAssignment, LogRequest, LogResponse, RankExited, RankStatus,
};

/// Generous: CI machines are small and busy.
const WAIT: Duration = Duration::from_secs(60);

const RANK_SCRIPT: &str = r#"
import json, os, signal, socket, subprocess, sys, time

out = os.environ["OUT"]
tag = "g%s-r%s" % (os.environ["SUP_GENERATION"], os.environ["RANK"])
mode = os.environ.get("MODE", "sleep")
if mode == "trap":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = None
if mode != "exit":
    # Shares the rank's process group: stopping the rank must reach it.
    child = subprocess.Popen(["sleep", "1000"])
info = {
    "env": dict(os.environ),
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "child": child.pid if child else None,
}
with open(os.path.join(out, tag + ".tmp"), "w") as f:
    json.dump(info, f)
os.rename(os.path.join(out, tag + ".tmp"), os.path.join(out, tag + ".json"))
print("hello from rank %s" % os.environ["RANK"])
print("a line on stderr", file=sys.stderr)
if os.environ.get("SUP_PROGRESS_ADDR"):
    host, port = os.environ["SUP_PROGRESS_ADDR"].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"not json\n")
        s.sendall(json.dumps({"rank": int(os.environ["RANK"]), "step": 7, "loss": 0.5}).encode() + b"\n")
if mode == "exit":
    sys.exit(int(os.environ["EXIT_CODE"]))
time.sleep(1000)
"#;

struct Harness {
    dir: tempfile::TempDir,
    ports: LinkPorts,
    launcher: Launcher,
    /// Every message taken from the outbox, in order.
    seen: Vec<AgentBody>,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with_state_dir(None).await
    }

    async fn with_state_dir(state_dir: Option<PathBuf>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("out")).expect("out dir");
        std::fs::write(dir.path().join("rank.py"), RANK_SCRIPT).expect("script");
        let (bus, ports) = bus::bus();
        let settings = Settings {
            state_dir: state_dir.unwrap_or_else(|| dir.path().join("state")),
            node_id: "node-b".into(),
            leave_ranks_on_exit: false,
            allow_root_ranks: true,
            logs: Default::default(),
            slurm_node_name: None,
        };
        let launcher = Launcher::start(
            settings,
            bus.outbox,
            bus.assignment,
            bus.lease,
            bus.log_requests,
        )
        .await;
        Harness {
            dir,
            ports,
            launcher,
            seen: Vec::new(),
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A two-rank job on node rank 1 of 2.
    fn job(&self, mode: &str) -> JobAssignment {
        let mut env = BTreeMap::new();
        env.insert("OUT".to_owned(), self.out().display().to_string());
        env.insert("MODE".to_owned(), mode.to_owned());
        JobAssignment {
            job: "train".into(),
            command: vec![
                "python3".into(),
                self.dir.path().join("rank.py").display().to_string(),
            ],
            workdir: self.dir.path().display().to_string(),
            env: env.into_iter().collect(),
            node_rank: 1,
            nnodes: 2,
            ranks_per_node: 2,
            world_size: 4,
            master_addr: "10.0.0.1".into(),
            master_port: 29500,
            restart_count: 1,
            max_restarts: 5,
            stop_grace_ms: 5_000,
            ..Default::default()
        }
    }

    fn assign(&self, generation: u64, job: Option<JobAssignment>) {
        self.ports.assignment.send_replace(Some(DesiredAssignment {
            generation,
            job,
            ..Default::default()
        }));
    }

    /// Waits for the first message (after those already seen) that `pick`
    /// accepts.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&AgentBody) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = tokio::time::timeout_at(deadline, self.ports.outbox.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; seen: {:#?}", self.seen))
                .expect("outbox open");
            let picked = pick(&body);
            self.seen.push(body);
            if let Some(found) = picked {
                return found;
            }
        }
    }

    /// Like [`Harness::expect`], but also accepts a message already seen.
    async fn find<T>(&mut self, what: &str, mut pick: impl FnMut(&AgentBody) -> Option<T>) -> T {
        if let Some(found) = self.seen.iter().find_map(&mut pick) {
            return found;
        }
        self.expect(what, pick).await
    }

    async fn status(&mut self, what: &str, want: impl Fn(&RankStatus) -> bool) -> RankStatus {
        self.expect(what, |b| match b {
            AgentBody::Ranks(s) if want(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// The exits of `count` ranks of `generation`.
    async fn exits(&mut self, generation: u64, count: usize) -> Vec<RankExited> {
        let mut exits = Vec::new();
        while exits.len() < count {
            let exit = self
                .expect(
                    &format!("exit of a rank of generation {generation}"),
                    |b| match b {
                        AgentBody::RankExited(e) if e.generation == generation => Some(e.clone()),
                        _ => None,
                    },
                )
                .await;
            exits.push(exit);
        }
        exits.sort_by_key(|e| e.rank);
        exits
    }

    /// What rank `rank` of `generation` recorded once it had started.
    async fn rank_info(&self, generation: u64, rank: u32) -> serde_json::Value {
        let path = self.out().join(format!("g{generation}-r{rank}.json"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return serde_json::from_str(&text).expect("rank info is JSON");
            }
            assert!(
                Instant::now() < deadline,
                "rank {rank} of generation {generation} did not start; seen: {:#?}",
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pids of rank `rank` of `generation` and of the child it started.
    async fn pids(&self, generation: u64, rank: u32) -> Vec<i32> {
        let info = self.rank_info(generation, rank).await;
        ["pid", "child"]
            .iter()
            .filter_map(|k| info[k].as_i64())
            .map(|p| i32::try_from(p).expect("pid"))
            .collect()
    }
}

impl Drop for Harness {
    /// Whatever happened, no rank started by a test outlives it.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.out()) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(info) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(pgid) = info["pgid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Running, as opposed to gone or a zombie waiting for its parent.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesized command name.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}

async fn assert_gone(pids: &[i32]) {
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "processes still alive: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env_of<'a>(info: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    info["env"][key].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_get_the_contract_env_logs_and_their_exits_are_reported() {
    let mut h = Harness::new().await;
    let ckpt = h.dir.path().join("ckpt");
    std::fs::create_dir_all(ckpt.join("step-10")).expect("mkdir");
    std::fs::write(ckpt.join("step-10/COMPLETE"), "").expect("marker");
    std::fs::create_dir_all(ckpt.join("step-20")).expect("torn save");

    let mut job = h.job("exit");
    job.env.insert("EXIT_CODE".into(), "3".into());
    job.env.insert("RANK".into(), "99".into());
    job.env.insert("NCCL_DEBUG".into(), "INFO".into());
    job.gpu_indices = vec![6, 4];
    job.checkpoint_dir = ckpt.display().to_string();
    job.checkpoint_layout = "marker:COMPLETE".into();
    job.resume_from = Some(Checkpoint {
        step: 10,
        path: ckpt.join("step-10").display().to_string(),
        ..Default::default()
    });
    h.assign(5, Some(job));

    let launched = h
        .status("generation 5 launched", |s| s.generation == 5)
        .await;
    assert_eq!(launched.job, "train");
    assert!(launched.launched, "{launched:?}");
    assert_eq!(launched.launch_error, "");

    let exits = h.exits(5, 2).await;
    for (exit, rank) in exits.iter().zip([2, 3]) {
        assert_eq!(exit.job, "train");
        assert_eq!(exit.rank, rank);
        assert_eq!(exit.local_rank, rank - 2);
        assert_eq!(exit.exit_code, Some(3));
        assert_eq!(exit.signal, None);
        assert!(!exit.stopped_by_agent);
        assert!(
            exit.log_tail.contains(&format!("hello from rank {rank}"))
                && exit.log_tail.contains("a line on stderr"),
            "{:?}",
            exit.log_tail
        );
    }
    h.status("no rank left", |s| {
        s.generation == 5 && s.running_local_ranks.is_empty()
    })
    .await;

    let progress_addr = h.launcher.progress_addr().expect("intake up").to_string();
    for (rank, local, gpu) in [(2, 0, "6"), (3, 1, "4")] {
        let info = h.rank_info(5, rank).await;
        let rank_s = rank.to_string();
        let local_s = local.to_string();
        for (key, want) in [
            ("RANK", rank_s.as_str()),
            ("LOCAL_RANK", local_s.as_str()),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("GROUP_RANK", "1"),
            ("ROLE_RANK", rank_s.as_str()),
            ("ROLE_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RESTART_COUNT", "1"),
            ("TORCHELASTIC_MAX_RESTARTS", "5"),
            ("TORCHELASTIC_RUN_ID", "train"),
            ("CUDA_VISIBLE_DEVICES", gpu),
            ("SUP_JOB", "train"),
            ("SUP_GENERATION", "5"),
            ("SUP_NODE_ID", "node-b"),
            ("SUP_CHECKPOINT_LAYOUT", "marker:COMPLETE"),
            ("SUP_RESUME_STEP", "10"),
            ("SUP_PROGRESS_ADDR", progress_addr.as_str()),
            ("NCCL_DEBUG", "INFO"),
        ] {
            assert_eq!(env_of(&info, key), Some(want), "{key} of rank {rank}");
        }
        assert_eq!(
            env_of(&info, "SUP_RESUME_FROM"),
            Some(ckpt.join("step-10").display().to_string().as_str())
        );
        assert_eq!(info["pid"], info["pgid"], "rank {rank} leads its own group");
        let log =
            std::fs::read_to_string(h.state().join(format!("jobs/train/gen-5/rank-{rank}.log")))
                .expect("rank log");
        assert!(log.contains(&format!("hello from rank {rank}")), "{log}");
    }

    let catalog = h
        .find("a checkpoint catalog", |b| match b {
            AgentBody::Checkpoints(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(catalog.job, "train");
    assert_eq!(
        catalog.checkpoints,
        [Checkpoint {
            step: 10,
            path: ckpt.join("step-10").display().to_string(),
            verified: "marker COMPLETE present (this layout has no metadata to check)".to_owned(),
        }],
        "the torn step-20 is not offered"
    );

    let progress = h
        .find("progress", |b| match b {
            AgentBody::Progress(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (progress.job.as_str(), progress.generation, progress.step),
        ("train", 5, 7)
    );
    assert_eq!(progress.loss, Some(0.5));

    h.ports
        .log_requests
        .send(LogRequest {
            request_id: 77,
            job: "train".into(),
            rank: 3,
            lines: 1,
        })
        .await
        .expect("request queued");
    let response: LogResponse = h
        .expect("the log response", |b| match b {
            AgentBody::LogResponse(r) if r.request_id == 77 => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(response.error, "");
    assert_eq!(response.text.lines().count(), 1, "{:?}", response.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_replaces_the_old_one_and_none_stops_everything() {
    let mut h = Harness::new().await;
    h.assign(1, Some(h.job("sleep")));
    h.status("generation 1 running", |s| {
        s.generation == 1 && s.running_local_ranks == [0, 1]
    })
    .await;
    let mut old = h.pids(1, 2).await;
    old.extend(h.pids(1, 3).await);
    assert_eq!(old.len(), 4, "two ranks and their children");

    h.assign(2, Some(h.job("sleep")));
    let exits = h.exits(1, 2).await;
    for exit in &exits {
        assert!(exit.stopped_by_agent, "{exit:?}");
        assert_eq!(exit.signal, Some(15), "Python dies of SIGTERM: {exit:?}");
    }
    let status = h
        .status("generation 2 running", |s| {
            s.generation == 2 && s.running_local_ranks == [0, 1]
        })
        .await;
    assert!(status.launched);
    assert_gone(&old).await;
    let mut new = h.pids(2, 2).await;
    new.extend(h.pids(2, 3).await);

    // Fencing: nothing about generation 1 after generation 2's first status.
    let first_g2 = h
        .seen
        .iter()
        .position(|b| matches!(b, AgentBody::Ranks(s) if s.generation == 2))
        .expect("seen");
    for body in &h.seen[first_g2..] {
        let stale = match body {
            AgentBody::Ranks(s) => s.generation < 2,
            AgentBody::RankExited(e) => e.generation < 2,
            AgentBody::Progress(p) => p.generation < 2,
            _ => false,
        };
        assert!(
            !stale,
            "report about generation 1 after generation 2 began: {body:?}"
        );
    }

    // The same generation again changes nothing.
    h.assign(2, Some(h.job("sleep")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        new.iter().all(|&p| alive(p)),
        "ranks of generation 2 keep running"
    );

    h.assign(3, None);
    let exits = h.exits(2, 2).await;
    assert!(exits.iter().all(|e| e.stopped_by_agent));
    let idle = h.status("nothing running", |s| s.generation == 3).await;
    assert_eq!(idle.job, "");
    assert!(idle.running_local_ranks.is_empty());
    assert_gone(&new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_are_killed_when_the_assignment_lease_runs_out_and_renewals_postpone_it() {
    let mut h = Harness::new().await;
    // "trap" ignores SIGTERM: only a SIGKILL, without the 5 s grace, ends
    // it within the test's bound below.
    h.assign(4, Some(h.job("trap")));
    h.status("generation 4 running", |s| {
        s.generation == 4 && s.running_local_ranks == [0, 1]
    })
    .await;
    let mut pids = h.pids(4, 2).await;
    pids.extend(h.pids(4, 3).await);
    // A lease that keeps being renewed never fires.
    let start = tokio::time::Instant::now();
    for i in 1..=6 {
        h.ports
            .lease
            .send_replace(Some(start + Duration::from_millis(400 * i + 400)));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        pids.iter().all(|p| alive(*p)),
        "renewed in time: still running"
    );
    // Then no supervisor answers any more.
    let ran_out = Instant::now();
    let exits = h.exits(4, 2).await;
    assert!(
        ran_out.elapsed() < Duration::from_secs(4),
        "killed at once, not after the stop grace: {:?}",
        ran_out.elapsed()
    );
    for exit in &exits {
        assert!(exit.lease_expired, "{exit:?}");
        assert!(!exit.stopped_by_agent, "supd did not ask for it: {exit:?}");
        assert_eq!(exit.signal, Some(9), "{exit:?}");
    }
    assert_gone(&pids).await;
    // The same generation is not started again by the launcher; a new one
    // from supd is.
    h.assign(5, Some(h.job("sleep")));
    h.status("generation 5 running", |s| {
        s.generation == 5 && s.running_local_ranks == [0, 1]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut h = Harness::new().await;
    let mut job = h.job("trap");
    job.stop_grace_ms = 500;
    h.assign(1, Some(job));
    h.status("generation 1 running", |s| {
        s.generation == 1 && s.running_local_ranks.len() == 2
    })
    .await;
    let mut pids = h.pids(1, 2).await;
    pids.extend(h.pids(1, 3).await);

    let asked = Instant::now();
    h.assign(2, None);
    let exits = h.exits(1, 2).await;
    let took = asked.elapsed();
    for exit in &exits {
        assert_eq!(exit.signal, Some(9), "{exit:?}");
        assert!(exit.stopped_by_agent);
    }
    assert!(
        took >= Duration::from_millis(500),
        "killed after {took:?}, before the grace period"
    );
    assert_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_ranks() {
    let mut h = Harness::new().await;
    h.assign(4, Some(h.job("sleep")));
    h.status("running", |s| s.running_local_ranks.len() == 2)
        .await;
    let mut pids = h.pids(4, 2).await;
    pids.extend(h.pids(4, 3).await);
    tokio::time::timeout(WAIT, h.launcher.shutdown())
        .await
        .expect("shutdown finishes");
    let exits = h.exits(4, 2).await;
    assert!(exits.iter().all(|e| e.stopped_by_agent));
    assert_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failures_are_reported_not_fatal() {
    let mut h = Harness::new().await;
    let mut job = h.job("sleep");
    job.command = vec!["/nonexistent/trainer".into()];
    h.assign(1, Some(job));
    let failed = h.status("a launch error", |s| s.generation == 1).await;
    assert!(!failed.launched);
    assert!(
        failed
            .launch_error
            .contains("rank 2: cannot start \"/nonexistent/trainer\""),
        "{failed:?}"
    );

    let mut job = h.job("sleep");
    job.ranks_per_node = 0;
    h.assign(2, Some(job));
    let failed = h.status("a launch error", |s| s.generation == 2).await;
    assert!(
        failed.launch_error.contains("ranks_per_node is 0"),
        "{failed:?}"
    );

    // Still working: the next assignment runs.
    let mut job = h.job("exit");
    job.env.insert("EXIT_CODE".into(), "0".into());
    h.assign(3, Some(job));
    let exits = h.exits(3, 2).await;
    assert!(exits.iter().all(|e| e.exit_code == Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_dir_is_a_launch_error_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").expect("write");
    let mut h = Harness::with_state_dir(Some(not_a_dir.clone())).await;
    h.assign(1, Some(h.job("sleep")));
    let failed = h.status("a launch error", |s| s.generation == 1).await;
    assert!(
        failed.launch_error.contains("cannot create log directory")
            && failed
                .launch_error
                .contains(&not_a_dir.display().to_string()),
        "{failed:?}"
    );
    assert!(!Path::new(&h.out()).join("g1-r2.json").exists());
}
