//! Helpers shared by the engine's test modules (`jobs_tests`,
//! `detect_tests`): a cluster of registered nodes `n1..=nK` (session k, so
//! [`session_of`] finds it from the id), draining and reading the actions,
//! and the reports agents send about a job.

use std::collections::BTreeMap;

use crate::jobs::Job;
use crate::*;

pub(super) fn register(e: &mut Engine, id: &str, session: SessionId, gpus: u32, now: Millis) {
    register_gpus(e, id, session, &(0..gpus).collect::<Vec<_>>(), now);
}

/// [`register`] with the GPU indices the node lists, in its order.
pub(super) fn register_gpus(
    e: &mut Engine,
    id: &str,
    session: SessionId,
    gpus: &[u32],
    now: Millis,
) {
    e.on_register(
        now,
        Registration {
            validates: false,
            session,
            node_id: id.to_owned(),
            address: format!("addr-{id}"),
            hostname: id.to_owned(),
            agent_version: "0".to_owned(),
            instance_id: format!("i-{id}"),
            gpu_backend: "sim".to_owned(),
            gpus: gpus
                .iter()
                .map(|&i| GpuInventory {
                    index: i,
                    uuid: format!("GPU-{id}-{i}"),
                    name: "NVIDIA H100 80GB HBM3".to_owned(),
                    pci_bus_id: String::new(),
                    memory_total_bytes: None,
                })
                .collect(),
        },
    )
    .expect("register");
    assert!(e.on_telemetry(now, id, session, vec![]).is_applied());
}

/// How long a silent node stays reachable in the jobs and health tests.
pub(super) const GRACE: Millis = 30_000;

/// The jobs and health tests' engine: no spare reserve (the reserve tests ask for one).
pub(super) fn config() -> EngineConfig {
    EngineConfig {
        unreachable_after_ms: GRACE,
        event_log_capacity: 10_000,
        spares_target: 0,
        ..Default::default()
    }
}

/// Nodes n1..=n`count`, sessions 1..=count, 2 GPUs each, with [`config`].
pub(super) fn cluster(count: u32) -> Engine {
    cluster_with(config(), count)
}

/// Nodes n1..=n`count`, sessions 1..=count, 2 GPUs each, all ready.
pub(super) fn cluster_with(config: EngineConfig, count: u32) -> Engine {
    let mut e = Engine::new(config);
    for i in 1..=count {
        register(&mut e, &format!("n{i}"), SessionId::from(i), 2, 0);
    }
    drain(&mut e);
    e
}

pub(super) fn session_of(id: &str) -> SessionId {
    id.trim_start_matches('n').parse().expect("node id n<k>")
}

pub(super) fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

pub(super) fn events(actions: &[Action]) -> Vec<(EventKind, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(Change::AppendEvent(ev)) => Some((ev.kind, ev.reason.clone())),
            _ => None,
        })
        .collect()
}

/// The reason of the first `kind` event; panics with every event if none.
pub(super) fn event(actions: &[Action], kind: EventKind) -> String {
    events(actions)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no {kind:?} event in {:#?}", events(actions)))
}

pub(super) fn has(actions: &[Action], kind: EventKind) -> bool {
    events(actions).iter().any(|(k, _)| *k == kind)
}

pub(super) fn assignments(actions: &[Action]) -> BTreeMap<String, DesiredAssignment> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendAssignment {
                node_id,
                assignment,
            } => Some((node_id.clone(), assignment.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn job<'a>(e: &'a Engine, name: &str) -> &'a Job {
    e.job(name).expect("job")
}

/// Every node of the job reports its ranks launched.
pub(super) fn launch_all(e: &mut Engine, name: &str, now: Millis) -> Vec<Action> {
    let (generation, nodes) = {
        let j = job(e, name);
        (j.record.generation, j.record.nodes.clone())
    };
    for n in &nodes {
        assert!(e
            .on_rank_status(
                now,
                n,
                session_of(n),
                RankStatus {
                    job: name.to_owned(),
                    generation,
                    running_local_ranks: vec![0, 1],
                    launched: true,
                    launch_error: String::new(),
                }
            )
            .is_applied());
    }
    drain(e)
}

/// `node` reports the complete checkpoints at `steps`.
pub(super) fn checkpoint(
    e: &mut Engine,
    name: &str,
    node: &str,
    steps: &[u64],
    now: Millis,
) -> Vec<Action> {
    assert!(e
        .on_checkpoint_catalog(
            now,
            node,
            session_of(node),
            CheckpointCatalog {
                job: name.to_owned(),
                checkpoints: steps
                    .iter()
                    .map(|s| Checkpoint {
                        step: *s,
                        path: format!("/ckpt/{name}/step-{s}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        )
        .is_applied());
    drain(e)
}

/// Rank 0 on `node` exits with `code` (a crash, to the engine).
pub(super) fn rank_fails(
    e: &mut Engine,
    name: &str,
    node: &str,
    code: i32,
    now: Millis,
) -> Vec<Action> {
    let generation = job(e, name).record.generation;
    assert!(e
        .on_rank_exited(
            now,
            node,
            session_of(node),
            RankExited {
                job: name.to_owned(),
                generation,
                rank: 0,
                local_rank: 0,
                exit_code: Some(code),
                signal: None,
                log_tail: "Traceback\nRuntimeError: boom\n".to_owned(),
                stopped_by_agent: false,
                stack_dump: String::new(),
                lease_expired: false,
            }
        )
        .is_applied());
    drain(e)
}

/// Submits a job from its TOML text, as supd's edge does (without the
/// wire-contract checks, which live in supd).
pub(super) fn submit(
    e: &mut Engine,
    now: Millis,
    text: &str,
    by: &str,
) -> Result<String, EngineError> {
    let spec: crate::jobspec::JobSpec =
        toml::from_str(text).map_err(|err| EngineError::InvalidJobSpec(err.to_string()))?;
    e.submit_job(now, spec, text, by)
}

/// A job spec: `nodes` wanted, at least `min`, 2 GPUs per node, marker
/// checkpoints in /ckpt/NAME; `extra` TOML lines appended.
pub(super) fn spec(name: &str, nodes: u32, min: u32, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {nodes}\nmin_nodes = {min}\ngpus_per_node = 2\ncheckpoint_dir = \"/ckpt/{name}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n{extra}"
    )
}

/// Applies the persist actions to `into`, as a store would.
pub(super) fn stored(actions: &[Action], into: &mut Persisted) {
    for a in actions {
        match a {
            Action::Persist(Change::PutNode(n)) => {
                into.nodes.retain(|x| x.id != n.id);
                into.nodes.push(n.clone());
            }
            Action::Persist(Change::PutJob(j)) => {
                into.jobs.retain(|x| x.spec.name != j.spec.name);
                into.jobs.push((**j).clone());
            }
            Action::Persist(Change::PutBreaker(b)) => into.breaker = Some(b.clone()),
            Action::Persist(Change::PutLastGeneration(g)) => into.last_generation = Some(*g),
            _ => {}
        }
    }
}
