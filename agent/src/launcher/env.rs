//! The environment of a rank: a contract with training scripts.
//!
//! It is torchrun-compatible, so a PyTorch script that runs under torchrun
//! runs under sup unchanged, plus sup's own `SUP_*` variables (DESIGN.md §5).
//! Everything here is pure so the contract is pinned by unit tests.

use std::collections::BTreeMap;

use sup_proto::v1::JobAssignment;

/// The variables the agent sets: torchrun's, the GPU a rank may see, and
/// sup's own (the resume pair is reserved even when not set).
const RESERVED: [&str; 21] = sup_proto::rank_env::AGENT_SET;

/// Defaults a job's `env` may override: a Python rank writing to a log file
/// would otherwise buffer its output, and the tail reported when it crashes
/// would miss the lines that explain why.
const OVERRIDABLE_DEFAULTS: [(&str, &str); 1] = [("PYTHONUNBUFFERED", "1")];

/// Names the agent owns. A job's `env` cannot set them (the agent's values
/// win) and they are not inherited from the agent's own environment: a
/// rank's place in the job and its fencing token must come from the
/// assignment alone, or a typo in a job spec could make two ranks both
/// rank 0, or a rank believe it resumes when it does not. Other `SUP_*`
/// names are the job's to use (the example trainer's fault injection
/// takes `SUP_TRAINER_*` from the job's env).
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// What a rank's environment needs from the agent besides the assignment.
#[derive(Debug, Clone, Copy)]
pub struct NodeContext<'a> {
    pub node_id: &'a str,
    /// `host:port` of the progress intake; absent when it could not start.
    pub progress_addr: Option<&'a str>,
}

/// Checks what [`rank_env`] and the launcher rely on, so that a bad
/// assignment becomes a launch error naming the problem.
pub fn check_job(job: &JobAssignment) -> Result<(), String> {
    let name = &job.job;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        // It names the job's log directory.
        return Err(format!(
            "job name {name:?} cannot be used as a directory name"
        ));
    }
    if job.command.first().is_none_or(String::is_empty) {
        return Err(format!("job {name}: the command is empty"));
    }
    if job.command.iter().any(|arg| arg.contains('\0')) {
        return Err(format!("job {name}: the command contains a NUL byte"));
    }
    if job.ranks_per_node == 0 {
        return Err(format!("job {name}: ranks_per_node is 0"));
    }
    if !job.gpu_indices.is_empty() && job.gpu_indices.len() < job.ranks_per_node as usize {
        return Err(format!(
            "job {name}: {} GPU indices for {} ranks per node",
            job.gpu_indices.len(),
            job.ranks_per_node
        ));
    }
    let last_rank = u64::from(job.node_rank) * u64::from(job.ranks_per_node)
        + u64::from(job.ranks_per_node - 1);
    if last_rank >= u64::from(job.world_size) {
        return Err(format!(
            "job {name}: node rank {} with {} ranks per node needs a world size above {last_rank}, but it is {}",
            job.node_rank, job.ranks_per_node, job.world_size
        ));
    }
    for (key, value) in &job.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!(
                "job {name}: {key:?} is not a valid environment variable name"
            ));
        }
        if value.contains('\0') {
            return Err(format!(
                "job {name}: the value of environment variable {key} contains a NUL byte"
            ));
        }
    }
    Ok(())
}

/// The job's `env` keys that the agent overrides, for a warning.
pub fn overridden_keys(job: &JobAssignment) -> Vec<&str> {
    job.env
        .keys()
        .map(String::as_str)
        .filter(|k| is_reserved(k))
        .collect()
}

/// The environment of local rank `local_rank` of `job` at `generation`, on
/// top of the agent's own (from which the reserved names are removed).
/// Expects a job that passed [`check_job`].
pub fn rank_env(
    node: NodeContext<'_>,
    generation: u64,
    job: &JobAssignment,
    local_rank: u32,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = OVERRIDABLE_DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // As torchrun does: several ranks on a node each starting one OpenMP
    // thread per core oversubscribe it (on CPU, 6 ranks of a PyTorch job
    // here ran at half speed). The job's env, or the agent's own, may say
    // otherwise.
    if job.ranks_per_node > 1 && std::env::var_os("OMP_NUM_THREADS").is_none() {
        env.insert("OMP_NUM_THREADS".to_owned(), "1".to_owned());
    }
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Reserved names are inserted last: they win over the job's env.
    env.retain(|k, _| !is_reserved(k));

    let rank = u64::from(job.node_rank) * u64::from(job.ranks_per_node) + u64::from(local_rank);
    let gpu = job
        .gpu_indices
        .get(local_rank as usize)
        .copied()
        .unwrap_or(local_rank);
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("RANK", rank.to_string());
    set("LOCAL_RANK", local_rank.to_string());
    set("WORLD_SIZE", job.world_size.to_string());
    set("LOCAL_WORLD_SIZE", job.ranks_per_node.to_string());
    set("GROUP_RANK", job.node_rank.to_string());
    set("ROLE_RANK", rank.to_string());
    set("ROLE_WORLD_SIZE", job.world_size.to_string());
    set("MASTER_ADDR", job.master_addr.clone());
    set("MASTER_PORT", job.master_port.to_string());
    set("TORCHELASTIC_RESTART_COUNT", job.restart_count.to_string());
    set("TORCHELASTIC_MAX_RESTARTS", job.max_restarts.to_string());
    set("TORCHELASTIC_RUN_ID", job.job.clone());
    set("CUDA_VISIBLE_DEVICES", gpu.to_string());
    set("SUP_JOB", job.job.clone());
    set("SUP_GENERATION", generation.to_string());
    set("SUP_NODE_ID", node.node_id.to_owned());
    set("SUP_CHECKPOINT_DIR", job.checkpoint_dir.clone());
    set("SUP_CHECKPOINT_LAYOUT", job.checkpoint_layout.clone());
    if let Some(resume) = &job.resume_from {
        set("SUP_RESUME_FROM", resume.path.clone());
        set("SUP_RESUME_STEP", resume.step.to_string());
    }
    if let Some(addr) = node.progress_addr {
        set("SUP_PROGRESS_ADDR", addr.to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_proto::v1::Checkpoint;

    fn job() -> JobAssignment {
        JobAssignment {
            job: "llm".into(),
            command: vec!["python3".into(), "train.py".into()],
            node_rank: 2,
            nnodes: 4,
            ranks_per_node: 8,
            world_size: 32,
            master_addr: "10.0.0.1".into(),
            master_port: 29500,
            restart_count: 3,
            max_restarts: 20,
            checkpoint_dir: "/ckpt/llm".into(),
            checkpoint_layout: "dcp".into(),
            ..Default::default()
        }
    }

    fn node() -> NodeContext<'static> {
        NodeContext {
            node_id: "gpu-7",
            progress_addr: Some("127.0.0.1:4000"),
        }
    }

    fn get<'a>(env: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
        env.get(key).map(String::as_str)
    }

    #[test]
    fn the_whole_contract_for_a_fresh_start() {
        let env = rank_env(node(), 42, &job(), 5);
        let expected: BTreeMap<String, String> = [
            ("RANK", "21"),
            ("LOCAL_RANK", "5"),
            ("WORLD_SIZE", "32"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("GROUP_RANK", "2"),
            ("ROLE_RANK", "21"),
            ("ROLE_WORLD_SIZE", "32"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RESTART_COUNT", "3"),
            ("TORCHELASTIC_MAX_RESTARTS", "20"),
            ("TORCHELASTIC_RUN_ID", "llm"),
            ("CUDA_VISIBLE_DEVICES", "5"),
            ("SUP_JOB", "llm"),
            ("SUP_GENERATION", "42"),
            ("SUP_NODE_ID", "gpu-7"),
            ("SUP_CHECKPOINT_DIR", "/ckpt/llm"),
            ("SUP_CHECKPOINT_LAYOUT", "dcp"),
            ("SUP_PROGRESS_ADDR", "127.0.0.1:4000"),
            ("PYTHONUNBUFFERED", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut expected = expected;
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            // 8 ranks on the node: one OpenMP thread each, as torchrun.
            expected.insert("OMP_NUM_THREADS".into(), "1".into());
        }
        assert_eq!(env, expected);
    }

    #[test]
    fn one_openmp_thread_per_rank_unless_the_job_or_a_single_rank_says_otherwise() {
        if std::env::var_os("OMP_NUM_THREADS").is_some() {
            return; // the agent's own setting wins; nothing to see here
        }
        let mut single = job();
        single.ranks_per_node = 1;
        assert_eq!(
            get(&rank_env(node(), 1, &single, 0), "OMP_NUM_THREADS"),
            None
        );
        let mut chosen = job();
        chosen.env.insert("OMP_NUM_THREADS".into(), "4".into());
        assert_eq!(
            get(&rank_env(node(), 1, &chosen, 0), "OMP_NUM_THREADS"),
            Some("4")
        );
        assert_eq!(
            get(&rank_env(node(), 1, &job(), 0), "OMP_NUM_THREADS"),
            Some("1")
        );
    }

    #[test]
    fn resume_and_gpu_indices() {
        let mut job = job();
        job.resume_from = Some(Checkpoint {
            step: 1200,
            path: "/ckpt/llm/step-1200".into(),
            ..Default::default()
        });
        job.gpu_indices = vec![7, 6, 5, 4, 3, 2, 1, 0];
        let env = rank_env(node(), 1, &job, 1);
        assert_eq!(get(&env, "SUP_RESUME_FROM"), Some("/ckpt/llm/step-1200"));
        assert_eq!(get(&env, "SUP_RESUME_STEP"), Some("1200"));
        assert_eq!(get(&env, "CUDA_VISIBLE_DEVICES"), Some("6"));
    }

    #[test]
    fn no_progress_address_means_no_variable() {
        let env = rank_env(
            NodeContext {
                node_id: "n",
                progress_addr: None,
            },
            1,
            &job(),
            0,
        );
        assert_eq!(get(&env, "SUP_PROGRESS_ADDR"), None);
        assert_eq!(get(&env, "SUP_RESUME_FROM"), None);
    }

    #[test]
    fn job_env_is_added_but_cannot_override_reserved_names() {
        let mut job = job();
        for (k, v) in [
            ("NCCL_DEBUG", "INFO"),
            ("PYTHONUNBUFFERED", "0"),
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("SUP_GENERATION", "999"),
            ("SUP_RESUME_FROM", "/elsewhere"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SUP_TRAINER_CRASH_AT_STEP", "13"),
        ] {
            job.env.insert(k.into(), v.into());
        }
        let env = rank_env(node(), 42, &job, 5);
        assert_eq!(get(&env, "NCCL_DEBUG"), Some("INFO"));
        assert_eq!(get(&env, "PYTHONUNBUFFERED"), Some("0"), "a default only");
        assert_eq!(get(&env, "RANK"), Some("21"));
        assert_eq!(get(&env, "WORLD_SIZE"), Some("32"));
        assert_eq!(get(&env, "SUP_GENERATION"), Some("42"));
        assert_eq!(get(&env, "SUP_RESUME_FROM"), None, "not resuming");
        assert_eq!(get(&env, "CUDA_VISIBLE_DEVICES"), Some("5"));
        assert_eq!(get(&env, "SUP_TRAINER_CRASH_AT_STEP"), Some("13"));
        let mut overridden = overridden_keys(&job);
        overridden.sort_unstable();
        assert_eq!(
            overridden,
            [
                "CUDA_VISIBLE_DEVICES",
                "RANK",
                "SUP_GENERATION",
                "SUP_RESUME_FROM",
                "WORLD_SIZE"
            ]
        );
    }

    #[test]
    fn bad_assignments_are_named() {
        let bad = |edit: fn(&mut JobAssignment), needle: &str| {
            let mut job = job();
            edit(&mut job);
            let err = check_job(&job).expect_err(needle);
            assert!(err.contains(needle), "{err} (wanted {needle})");
        };
        check_job(&job()).expect("valid");
        bad(|j| j.command.clear(), "command is empty");
        bad(|j| j.command = vec![String::new()], "command is empty");
        bad(|j| j.ranks_per_node = 0, "ranks_per_node is 0");
        bad(|j| j.gpu_indices = vec![0, 1], "2 GPU indices for 8 ranks");
        bad(|j| j.world_size = 16, "world size above 23");
        bad(|j| j.job = "../etc".into(), "directory name");
        bad(|j| j.job = String::new(), "directory name");
        bad(
            |j| {
                j.env.insert("A=B".into(), "x".into());
            },
            "\"A=B\" is not a valid",
        );
    }
}
