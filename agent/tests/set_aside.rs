//! The launcher sets aside the checkpoints newer than a generation's resume
//! point before the ranks of node rank 0 start, reports it before the
//! generation's status, and refuses the launch when it cannot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sup_agent::bus::{self, LinkPorts};
use sup_agent::launcher::{Launcher, Settings};
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{Checkpoint, DesiredAssignment, JobAssignment};

const WAIT: Duration = Duration::from_secs(60);

struct Node {
    dir: tempfile::TempDir,
    ports: LinkPorts,
    launcher: Launcher,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bus, ports) = bus::bus();
        let settings = Settings {
            state_dir: dir.path().join("state"),
            node_id: "node-a".into(),
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
        Node {
            dir,
            ports,
            launcher,
        }
    }

    fn ckpt(&self) -> PathBuf {
        self.dir.path().join("ckpt")
    }

    fn file(&self, rel: &str) {
        let path = self.ckpt().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "x").expect("write");
    }

    /// One rank that lists the checkpoint directory as it starts.
    fn job(&self, node_rank: u32, set_aside_dir: &Path) -> JobAssignment {
        let mut env = BTreeMap::new();
        env.insert(
            "SEEN".to_owned(),
            self.dir.path().join("seen").display().to_string(),
        );
        JobAssignment {
            job: "train".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "ls \"$SUP_CHECKPOINT_DIR\" > \"$SEEN.tmp\" && mv \"$SEEN.tmp\" \"$SEEN\"; exec sleep 1000".into(),
            ],
            workdir: self.dir.path().display().to_string(),
            env: env.into_iter().collect(),
            node_rank,
            nnodes: 2,
            ranks_per_node: 1,
            world_size: 2,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            restart_count: 1,
            max_restarts: 5,
            stop_grace_ms: 2_000,
            checkpoint_dir: self.ckpt().display().to_string(),
            checkpoint_layout: "marker:COMPLETE".into(),
            resume_from: Some(Checkpoint {
                step: 20,
                path: self.ckpt().join("step-20").display().to_string(), ..Default::default() }),
            set_aside_dir: set_aside_dir.display().to_string(),
            ..Default::default()
        }
    }

    fn assign(&self, generation: u64, job: JobAssignment) {
        self.ports.assignment.send_replace(Some(DesiredAssignment {
            generation,
            job: Some(job),
            ..Default::default()
        }));
    }

    /// Messages up to and including the generation's first status.
    async fn until_status(&mut self, generation: u64) -> Vec<AgentBody> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = tokio::time::timeout_at(deadline, self.ports.outbox.recv())
                .await
                .unwrap_or_else(|_| panic!("no status of generation {generation}: {seen:#?}"))
                .expect("outbox open");
            let last = matches!(&body, AgentBody::Ranks(s) if s.generation == generation);
            seen.push(body);
            if last {
                return seen;
            }
        }
    }

    async fn seen_by_rank(&self) -> String {
        let path = self.dir.path().join("seen");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "the rank never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rank_0_sets_newer_checkpoints_aside_before_its_ranks_start() {
    let mut node = Node::start().await;
    for rel in [
        "step-10/COMPLETE",
        "step-20/COMPLETE",
        "step-30/COMPLETE",
        "step-40/shard-0.bin",
    ] {
        node.file(rel);
    }
    let dest = node.ckpt().join(".sup-set-aside/g5");
    node.assign(5, node.job(0, &dest));
    let seen = node.until_status(5).await;
    let report = seen
        .iter()
        .find_map(|b| match b {
            AgentBody::CheckpointsSetAside(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no set-aside report before the status: {seen:#?}"));
    assert_eq!((report.job.as_str(), report.generation), ("train", 5));
    assert_eq!(report.resume_step, 20);
    let moved: Vec<(Option<u64>, String)> = report
        .entries
        .iter()
        .map(|e| (e.step, e.to.clone()))
        .collect();
    assert_eq!(
        moved,
        vec![
            (Some(30), dest.join("step-30").display().to_string()),
            (Some(40), dest.join("step-40").display().to_string()),
        ]
    );
    let AgentBody::Ranks(status) = seen.last().expect("status") else {
        panic!("the last message is the status");
    };
    assert!(status.launch_error.is_empty(), "{status:?}");
    // The rank saw the directory without them.
    let listed = node.seen_by_rank().await;
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed, vec!["step-10", "step-20"]);
    assert!(dest.join("step-30/COMPLETE").is_file());
    node.launcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_node_ranks_leave_the_directory_alone() {
    let mut node = Node::start().await;
    node.file("step-20/COMPLETE");
    node.file("step-30/COMPLETE");
    let dest = node.ckpt().join(".sup-set-aside/g6");
    node.assign(6, node.job(1, &dest));
    let seen = node.until_status(6).await;
    assert!(
        !seen
            .iter()
            .any(|b| matches!(b, AgentBody::CheckpointsSetAside(_))),
        "{seen:#?}"
    );
    assert!(node.ckpt().join("step-30/COMPLETE").is_file());
    assert!(!dest.exists());
    node.launcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_that_fails_refuses_the_launch_and_says_why() {
    let mut node = Node::start().await;
    node.file("step-20/COMPLETE");
    node.file("step-30/COMPLETE");
    // A file where the generation's directory must be created.
    std::fs::create_dir_all(node.ckpt().join(".sup-set-aside")).expect("mkdir");
    std::fs::write(node.ckpt().join(".sup-set-aside/g7"), "in the way").expect("write");
    let dest = node.ckpt().join(".sup-set-aside/g7");
    node.assign(7, node.job(0, &dest));
    let seen = node.until_status(7).await;
    let AgentBody::Ranks(status) = seen.last().expect("status") else {
        panic!("the last message is the status");
    };
    assert!(!status.launched, "{status:?}");
    assert!(
        status.launch_error.starts_with(
            "cannot set aside the checkpoints newer than the resume point (step 20) before launching, so the generation does not start: cannot list "
        ),
        "{}",
        status.launch_error
    );
    assert!(status.running_local_ranks.is_empty(), "{status:?}");
    assert!(node.ckpt().join("step-30/COMPLETE").is_file());
    assert!(!node.dir.path().join("seen").exists(), "no rank ran");
    node.launcher.shutdown().await;
}
