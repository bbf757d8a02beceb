//! The hang post-mortem through the real launcher: when supd names the
//! running generation as hung, the agent dumps each rank's stacks with
//! `py-spy` (here a fake one on PATH) before stopping them, and the dumps
//! come back in the ranks' exit reports; a plain generation switch takes
//! none. Its own test binary: it changes PATH for the whole process.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sup_agent::bus;
use sup_agent::launcher::{Launcher, Settings};
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{DesiredAssignment, JobAssignment, RankExited};

/// Generous: CI machines are small and busy.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_generations_ranks_are_stack_dumped_before_they_are_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let fake = bin.join("py-spy");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         # Only a live rank can be dumped: the agent must call before SIGTERM.\n\
         kill -0 \"$3\" || exit 3\n\
         echo \"Process $3: python3 train.py\"\n\
         echo 'Thread 0x7f (idle): \"MainThread\"'\n\
         echo '    recv_exact (train.py:212)'\n",
    )
    .expect("fake py-spy");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.clone()];
    dirs.extend(std::env::split_paths(&path));
    // This binary's only test: nothing else reads the environment meanwhile.
    std::env::set_var("PATH", std::env::join_paths(dirs).expect("PATH"));

    let (bus, ports) = bus::bus();
    let settings = Settings {
        state_dir: dir.path().join("state"),
        node_id: "node-a".into(),
        leave_ranks_on_exit: false,
        allow_root_ranks: true,
        logs: Default::default(),
        slurm_node_name: None,
    };
    let mut launcher = Launcher::start(
        settings,
        bus.outbox,
        bus.assignment,
        bus.lease,
        bus.log_requests,
    )
    .await;
    let job = JobAssignment {
        job: "train".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo step 3 of rank $RANK; exec sleep 1000".into(),
        ],
        node_rank: 0,
        nnodes: 1,
        ranks_per_node: 2,
        world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: 29500,
        stop_grace_ms: 5_000,
        ..Default::default()
    };
    let assign = |generation, postmortem_generation| {
        ports.assignment.send_replace(Some(DesiredAssignment {
            generation,
            job: Some(job.clone()),
            postmortem_generation,
        }));
    };
    let mut outbox = ports.outbox;
    let started = |generation: u64| {
        let state = dir.path().join("state");
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            for rank in 0..2 {
                let log = sup_agent::launcher::logs::rank_log(&state, "train", generation, rank);
                while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("step 3")) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rank {rank} did not start"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };

    // A plain switch (a peer failed elsewhere): no dumps.
    assign(1, 0);
    started(1).await;
    assign(2, 0);
    for e in exits_of(&mut outbox, 1).await {
        assert!(e.stopped_by_agent, "{e:?}");
        assert_eq!(e.stack_dump, "", "{e:?}");
    }
    // Generation 2 hung: dumped while alive, then stopped.
    started(2).await;
    assign(3, 2);
    let exits = exits_of(&mut outbox, 2).await;
    for e in &exits {
        assert!(e.stopped_by_agent, "{e:?}");
        assert!(
            e.stack_dump.starts_with("Process ")
                && e.stack_dump.contains("recv_exact (train.py:212)"),
            "rank {}: {:?}",
            e.rank,
            e.stack_dump
        );
        assert!(
            e.log_tail.contains(&format!("step 3 of rank {}", e.rank)),
            "{e:?}"
        );
    }
    assert_ne!(
        exits[0].stack_dump, exits[1].stack_dump,
        "one dump per rank pid"
    );
    launcher.shutdown().await;
}

/// The exit reports of the two ranks of `generation`, by rank.
async fn exits_of(
    outbox: &mut tokio::sync::mpsc::Receiver<AgentBody>,
    generation: u64,
) -> Vec<RankExited> {
    let mut exits: Vec<RankExited> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while exits.len() < 2 {
        let body = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no exits of generation {generation}; got {exits:?}"))
            .expect("outbox open");
        match body {
            AgentBody::RankExited(e) if e.generation == generation => exits.push(e),
            AgentBody::Ranks(s) if s.generation == generation && !s.launch_error.is_empty() => {
                panic!("launch failed: {s:?}")
            }
            _ => {}
        }
    }
    exits.sort_by_key(|e| e.rank);
    exits
}
