//! JSON views of the control API: the documented, stable shapes printed by
//! `supctl ... -o json` and served at `/api/v1/...`. Field names here are a
//! contract that scripts depend on; add fields, never rename them.

use serde::Serialize;

use crate::time::rfc3339_ms;
use crate::v1;

/// Bounded whatever the cluster's size: every list is capped (see
/// `ClusterStatus` in sup.proto), with a count of what it left out.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// At most 100: those that need attention first; `nodes_omitted` more.
    pub nodes: Vec<NodeView>,
    pub jobs: Vec<JobView>,
    /// Healthy nodes no normal job holds (free or lent): at most 64 ids.
    pub spares: Vec<String>,
    pub spares_target: u32,
    /// The spares running low-priority work, taken back when a normal job
    /// needs a spare: at most 64 ids.
    pub spares_lent: Vec<String>,
    pub breaker: BreakerView,
    /// Every node, by state.
    pub node_counts: NodeCountsView,
    pub nodes_omitted: u32,
    pub jobs_omitted: u32,
    /// All spares, listed in `spares` or not.
    pub spare_count: u32,
    pub spares_lent_count: u32,
    /// The supd replica that answered; null from a supd before replicas.
    pub supervisor: Option<SupervisorView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SupervisorView {
    pub id: String,
    /// "leader" (only the leader serves the API).
    pub role: String,
    pub leader: String,
    /// "sled" or "etcd".
    pub store: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeCountsView {
    pub total: u32,
    pub joining: u32,
    pub ready: u32,
    pub suspect: u32,
    pub unreachable: u32,
    pub cordoned: u32,
    pub draining: u32,
    /// Held by Slurm for a reason of its own: sup places no work there.
    pub slurm_unavailable: u32,
}

impl From<&v1::NodeCounts> for NodeCountsView {
    fn from(c: &v1::NodeCounts) -> Self {
        NodeCountsView {
            total: c.total,
            joining: c.joining,
            ready: c.ready,
            suspect: c.suspect,
            unreachable: c.unreachable,
            cordoned: c.cordoned,
            draining: c.draining,
            slurm_unavailable: c.slurm_unavailable,
        }
    }
}

/// One page of `ListNodes`: `supctl nodes -o json` and `/api/v1/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeListView {
    pub nodes: Vec<NodeView>,
    /// Pass back (`--continue`, `continue=`) for the next page; null on the
    /// last one.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    /// Matching nodes after this page.
    pub remaining: u32,
}

impl From<&v1::ListNodesResponse> for NodeListView {
    fn from(r: &v1::ListNodesResponse) -> Self {
        NodeListView {
            nodes: r.nodes.iter().map(NodeView::from).collect(),
            continue_token: non_empty(&r.next_continue_token),
            remaining: r.remaining,
        }
    }
}

/// One page of `ListJobs`: `/api/v1/jobs` (`supctl jobs -o json` prints
/// just the jobs, as an array).
#[derive(Debug, Clone, Serialize)]
pub struct JobListView {
    pub jobs: Vec<JobView>,
    /// Pass back (`--continue`, `continue=`) for the next page; null on the
    /// last one.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    /// Matching jobs after this page.
    pub remaining: u32,
}

impl From<&v1::ListJobsResponse> for JobListView {
    fn from(r: &v1::ListJobsResponse) -> Self {
        JobListView {
            jobs: r.jobs.iter().map(JobView::from).collect(),
            continue_token: non_empty(&r.next_continue_token),
            remaining: r.remaining,
        }
    }
}

/// Every node of `nodes` counted by state. A status from a supd that sends
/// no counts (one from before paging) listed every node, so counting them
/// is exact there.
pub fn count_nodes<'a>(nodes: impl IntoIterator<Item = &'a v1::Node>) -> v1::NodeCounts {
    let mut c = v1::NodeCounts::default();
    for n in nodes {
        c.total += 1;
        match v1::NodeState::try_from(n.state) {
            Ok(v1::NodeState::Joining) => c.joining += 1,
            Ok(v1::NodeState::Ready) => c.ready += 1,
            Ok(v1::NodeState::Suspect) => c.suspect += 1,
            Ok(v1::NodeState::Unreachable) => c.unreachable += 1,
            Ok(v1::NodeState::Cordoned) => c.cordoned += 1,
            Ok(v1::NodeState::Draining) => c.draining += 1,
            Ok(v1::NodeState::Unspecified) | Err(_) => {}
        }
        if n.slurm.as_ref().is_some_and(|s| s.unavailable) {
            c.slurm_unavailable += 1;
        }
    }
    c
}

/// The status's node counts: sent by supd, else counted from its nodes.
pub fn node_counts(s: &v1::ClusterStatus) -> v1::NodeCounts {
    s.node_counts.unwrap_or_else(|| count_nodes(&s.nodes))
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    /// "closed" (automatic cordons allowed) or "open" (stopped until reset).
    pub state: &'static str,
    pub reason: Option<String>,
    pub since: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub name: String,
    /// pending | starting | running | recovering | succeeded | failed | stopped
    pub state: String,
    pub generation: u64,
    pub world_size: u32,
    /// Assigned node ids in node-rank order.
    pub nodes: Vec<String>,
    pub step: Option<u64>,
    pub checkpoint: Option<CheckpointView>,
    pub restarts: u32,
    pub reason: Option<String>,
    pub desired_nodes: u32,
    pub min_nodes: u32,
    pub priority: String,
    pub submitted_at: Option<String>,
    /// The whole job's tokens per second over the recent window.
    pub tokens_per_s: Option<f64>,
    /// Model FLOPs utilization, 0-1 (needs the spec's `model_params`).
    pub mfu: Option<f64>,
    /// Per node: median step time, slowdown against the other nodes and
    /// whether it is flagged as a straggler.
    pub node_stats: Vec<JobNodeStatsView>,
    pub rollbacks: u32,
    /// Live goodput accounting (README "Goodput").
    pub goodput: Option<GoodputView>,
    /// Nodes the job holds; in a status `nodes` lists at most 32 of them.
    pub node_count: u32,
}

/// Where a job's wall time went: seconds per bucket (summing to `wall_s`),
/// ETTR, lost GPU-hours by cause and the checkpoint interval advice.
#[derive(Debug, Clone, Serialize)]
pub struct GoodputView {
    /// The bucket the job is in now.
    pub bucket: String,
    pub wall_s: f64,
    /// productive, redone, detection, restart, checkpoint_save, waiting,
    /// stopped.
    pub seconds: std::collections::BTreeMap<String, f64>,
    /// productive / wall.
    pub ettr: Option<f64>,
    /// Every bucket but productive: seconds × the job's GPUs / 3600.
    pub lost_gpu_hours: std::collections::BTreeMap<String, f64>,
    pub gpus: u32,
    pub failures: u32,
    pub failures_per_node_hour: Option<f64>,
    pub checkpoint_cost_s: Option<f64>,
    pub checkpoint_interval_s: Option<f64>,
    pub checkpoint_interval_steps: Option<f64>,
    pub recommended_checkpoint_interval_s: Option<f64>,
    /// ETTR the recommended interval would gain, in percentage points.
    pub recommended_gain_pp: Option<f64>,
}

impl From<&v1::JobGoodput> for GoodputView {
    fn from(g: &v1::JobGoodput) -> Self {
        let seconds: std::collections::BTreeMap<String, f64> = [
            ("productive", g.productive_s),
            ("redone", g.redone_s),
            ("detection", g.detection_s),
            ("restart", g.restart_s),
            ("checkpoint_save", g.checkpoint_save_s),
            ("waiting", g.waiting_s),
            ("stopped", g.stopped_s),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let lost_gpu_hours = seconds
            .iter()
            .filter(|(k, _)| k.as_str() != "productive")
            .map(|(k, v)| (k.clone(), v * f64::from(g.gpus) / 3600.0))
            .collect();
        GoodputView {
            bucket: g.bucket.clone(),
            wall_s: g.wall_s,
            seconds,
            ettr: g.ettr,
            lost_gpu_hours,
            gpus: g.gpus,
            failures: g.failures,
            failures_per_node_hour: g.failures_per_node_hour,
            checkpoint_cost_s: g.checkpoint_cost_s,
            checkpoint_interval_s: g.checkpoint_interval_s,
            checkpoint_interval_steps: g.checkpoint_interval_steps,
            recommended_checkpoint_interval_s: g.recommended_checkpoint_interval_s,
            recommended_gain_pp: g.recommended_gain.map(|x| x * 100.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobNodeStatsView {
    pub node: String,
    pub step_time_s: Option<f64>,
    pub slowdown: Option<f64>,
    pub straggler: bool,
    pub tokens_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointView {
    pub path: String,
    pub step: u64,
    /// What the agent checked by the layout's own metadata before listing
    /// it; null from an agent that predates verification.
    pub verified: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct XidView {
    pub xid: u32,
    pub at: String,
    pub source: String,
    pub detail: Option<String>,
    pub application: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: String,
    pub address: String,
    /// joining | ready | suspect | unreachable | cordoned | draining
    pub state: &'static str,
    pub job: Option<String>,
    pub gpus: Vec<GpuView>,
    pub cordon: Option<CordonView>,
    /// Set while the node is being drained.
    pub drain: Option<DrainView>,
    pub hostname: String,
    pub connected: bool,
    pub agent_version: String,
    pub gpu_backend: String,
    pub registered_at: Option<String>,
    pub last_seen: Option<String>,
    /// What Slurm says about the node; null when supd does not watch Slurm
    /// or Slurm does not list the node.
    pub slurm: Option<SlurmView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlurmView {
    /// Slurm's node name.
    pub name: String,
    /// As `sinfo -N` names it: idle, allocated, mixed, drained, draining,
    /// down, fail, failing, ...
    pub state: String,
    /// Slurm's reason for a drain or DOWN; null when none.
    pub reason: Option<String>,
    /// Slurm starts no new work on it: sup places nothing there either.
    pub unavailable: bool,
    /// The drain is sup's own (its reason starts with "sup:").
    pub drained_by_sup: bool,
}

impl From<&v1::SlurmNode> for SlurmView {
    fn from(s: &v1::SlurmNode) -> Self {
        SlurmView {
            name: s.name.clone(),
            state: s.state.clone(),
            reason: non_empty(&s.reason),
            unavailable: s.unavailable,
            drained_by_sup: s.drained_by_sup,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuView {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// ok | degraded | failed
    pub health: &'static str,
    pub pci_bus_id: String,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub utilization_gpu_pct: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    /// Why the GPU has its health; null when ok.
    pub health_reason: Option<String>,
    pub evidence: Vec<String>,
    /// none | gpu_reset | node_reboot | drain_p2p | drain_and_reset; null when unknown.
    pub recovery_action: Option<&'static str>,
    /// Most recent Xids, newest last.
    pub recent_xids: Vec<XidView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CordonView {
    pub reason: String,
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// An uncordon's validation: "running", or why the last one failed
    /// (the tail of its output); null when none ran.
    pub validation: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainView {
    pub reason: String,
    pub by: String,
    /// RFC 3339, UTC.
    pub at: Option<String>,
    /// When the job moves off even without a new checkpoint; RFC 3339, UTC.
    pub deadline: Option<String>,
    /// The job's newest complete checkpoint when the drain began.
    pub after_step: Option<u64>,
}

impl From<&v1::Drain> for DrainView {
    fn from(d: &v1::Drain) -> Self {
        DrainView {
            reason: d.reason.clone(),
            by: d.by.clone(),
            at: timestamp(d.at_unix_ms),
            deadline: timestamp(d.deadline_unix_ms),
            after_step: d.after_step,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    pub kind: String,
    pub node: Option<String>,
    pub job: Option<String>,
    pub reason: Option<String>,
}

/// The names `node_state_name` gives, the ones a state filter takes.
pub const NODE_STATE_NAMES: [&str; 6] = [
    "joining",
    "ready",
    "suspect",
    "unreachable",
    "cordoned",
    "draining",
];

/// A job's states, the ones a job state filter takes.
pub const JOB_STATE_NAMES: [&str; 7] = [
    "pending",
    "starting",
    "running",
    "recovering",
    "succeeded",
    "failed",
    "stopped",
];

/// A job state name, trimmed, or an error that names it and the choices.
pub fn job_state_from_name(name: &str) -> Result<&'static str, String> {
    let name = name.trim();
    JOB_STATE_NAMES
        .iter()
        .find(|s| **s == name)
        .copied()
        .ok_or_else(|| {
            format!(
                "unknown job state '{name}'; use one of {}",
                JOB_STATE_NAMES.join(", ")
            )
        })
}

/// A node state from its name, or an error that names it and the choices.
pub fn node_state_from_name(name: &str) -> Result<v1::NodeState, String> {
    match name.trim() {
        "joining" => Ok(v1::NodeState::Joining),
        "ready" => Ok(v1::NodeState::Ready),
        "suspect" => Ok(v1::NodeState::Suspect),
        "unreachable" => Ok(v1::NodeState::Unreachable),
        "cordoned" => Ok(v1::NodeState::Cordoned),
        "draining" => Ok(v1::NodeState::Draining),
        other => Err(format!(
            "unknown node state '{other}'; use one of {}",
            NODE_STATE_NAMES.join(", ")
        )),
    }
}

pub fn node_state_name(state: i32) -> &'static str {
    match v1::NodeState::try_from(state) {
        Ok(v1::NodeState::Joining) => "joining",
        Ok(v1::NodeState::Ready) => "ready",
        Ok(v1::NodeState::Suspect) => "suspect",
        Ok(v1::NodeState::Unreachable) => "unreachable",
        Ok(v1::NodeState::Cordoned) => "cordoned",
        Ok(v1::NodeState::Draining) => "draining",
        Ok(v1::NodeState::Unspecified) | Err(_) => "unknown",
    }
}

pub fn gpu_health_name(health: i32) -> &'static str {
    match v1::GpuHealth::try_from(health) {
        Ok(v1::GpuHealth::Ok) => "ok",
        Ok(v1::GpuHealth::Degraded) => "degraded",
        Ok(v1::GpuHealth::Failed) => "failed",
        Ok(v1::GpuHealth::Unspecified) | Err(_) => "unknown",
    }
}

pub fn recovery_action_name(action: i32) -> Option<&'static str> {
    match v1::RecoveryAction::try_from(action) {
        Ok(v1::RecoveryAction::None) => Some("none"),
        Ok(v1::RecoveryAction::GpuReset) => Some("gpu_reset"),
        Ok(v1::RecoveryAction::NodeReboot) => Some("node_reboot"),
        Ok(v1::RecoveryAction::DrainP2p) => Some("drain_p2p"),
        Ok(v1::RecoveryAction::DrainAndReset) => Some("drain_and_reset"),
        Ok(v1::RecoveryAction::Unspecified) | Err(_) => None,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn timestamp(ms: i64) -> Option<String> {
    (ms > 0).then(|| rfc3339_ms(ms))
}

impl From<&v1::ClusterStatus> for StatusView {
    fn from(s: &v1::ClusterStatus) -> Self {
        let spare_count = u32::try_from(s.spares.len()).unwrap_or(u32::MAX);
        let lent_count = u32::try_from(s.spares_lent.len()).unwrap_or(u32::MAX);
        StatusView {
            node_counts: NodeCountsView::from(&node_counts(s)),
            nodes_omitted: s.nodes_omitted,
            jobs_omitted: s.jobs_omitted,
            // Zero from a supd that listed every spare: the list is the count.
            spare_count: s.spare_count.max(spare_count),
            spares_lent_count: s.spares_lent_count.max(lent_count),
            nodes: s.nodes.iter().map(NodeView::from).collect(),
            jobs: s.jobs.iter().map(JobView::from).collect(),
            spares: s.spares.clone(),
            spares_target: s.spares_target,
            spares_lent: s.spares_lent.clone(),
            supervisor: s.supervisor.as_ref().map(|v| SupervisorView {
                id: v.id.clone(),
                role: v.role.clone(),
                leader: v.leader.clone(),
                store: v.store.clone(),
            }),
            breaker: match &s.breaker {
                Some(b) if b.open => BreakerView {
                    state: "open",
                    reason: non_empty(&b.reason),
                    since: timestamp(b.since_unix_ms),
                },
                _ => BreakerView {
                    state: "closed",
                    reason: None,
                    since: None,
                },
            },
        }
    }
}

impl From<&v1::Job> for JobView {
    fn from(j: &v1::Job) -> Self {
        JobView {
            name: j.name.clone(),
            state: j.state.clone(),
            generation: j.generation,
            world_size: j.world_size,
            nodes: j.nodes.clone(),
            step: j.step,
            checkpoint: j.checkpoint.as_ref().map(CheckpointView::from),
            restarts: j.restarts,
            reason: non_empty(&j.reason),
            desired_nodes: j.desired_nodes,
            min_nodes: j.min_nodes,
            priority: j.priority.clone(),
            submitted_at: timestamp(j.submitted_at_unix_ms),
            tokens_per_s: j.tokens_per_s,
            mfu: j.mfu,
            node_stats: j
                .node_stats
                .iter()
                .map(|n| JobNodeStatsView {
                    node: n.node.clone(),
                    step_time_s: n.step_time_s,
                    slowdown: n.slowdown,
                    straggler: n.straggler,
                    tokens_per_s: n.tokens_per_s,
                })
                .collect(),
            rollbacks: j.rollbacks,
            goodput: j.goodput.as_ref().map(GoodputView::from),
            // Zero from a supd that always listed every node.
            node_count: j
                .node_count
                .max(u32::try_from(j.nodes.len()).unwrap_or(u32::MAX)),
        }
    }
}

impl From<&v1::Checkpoint> for CheckpointView {
    fn from(c: &v1::Checkpoint) -> Self {
        CheckpointView {
            path: c.path.clone(),
            step: c.step,
            verified: (!c.verified.is_empty()).then(|| c.verified.clone()),
        }
    }
}

impl From<&v1::XidEvent> for XidView {
    fn from(x: &v1::XidEvent) -> Self {
        XidView {
            xid: x.xid,
            at: rfc3339_ms(x.at_unix_ms),
            source: x.source.clone(),
            detail: non_empty(&x.detail),
            application: x.application,
        }
    }
}

impl From<&v1::Node> for NodeView {
    fn from(n: &v1::Node) -> Self {
        NodeView {
            id: n.id.clone(),
            address: n.address.clone(),
            state: node_state_name(n.state),
            job: non_empty(&n.job),
            gpus: n.gpus.iter().map(GpuView::from).collect(),
            cordon: n.cordon.as_ref().map(CordonView::from),
            drain: n.drain.as_ref().map(DrainView::from),
            hostname: n.hostname.clone(),
            connected: n.connected,
            agent_version: n.agent_version.clone(),
            gpu_backend: n.gpu_backend.clone(),
            registered_at: timestamp(n.registered_at_unix_ms),
            last_seen: timestamp(n.last_seen_unix_ms),
            slurm: n.slurm.as_ref().map(SlurmView::from),
        }
    }
}

impl From<&v1::Gpu> for GpuView {
    fn from(g: &v1::Gpu) -> Self {
        let r = g.reading.as_ref();
        GpuView {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            health: gpu_health_name(g.health),
            pci_bus_id: g.pci_bus_id.clone(),
            memory_total_bytes: g.memory_total_bytes,
            temperature_c: r.and_then(|r| r.temperature_c),
            power_w: r.and_then(|r| r.power_w),
            utilization_gpu_pct: r.and_then(|r| r.utilization_gpu_pct),
            sm_clock_mhz: r.and_then(|r| r.sm_clock_mhz),
            health_reason: non_empty(&g.health_reason),
            evidence: g.evidence.clone(),
            recovery_action: recovery_action_name(g.recovery_action),
            recent_xids: g.recent_xids.iter().map(XidView::from).collect(),
        }
    }
}

impl From<&v1::Cordon> for CordonView {
    fn from(c: &v1::Cordon) -> Self {
        CordonView {
            reason: c.reason.clone(),
            by: c.by.clone(),
            at: rfc3339_ms(c.at_unix_ms),
            validation: non_empty(&c.validation),
        }
    }
}

impl From<&v1::Event> for EventView {
    fn from(e: &v1::Event) -> Self {
        EventView {
            seq: e.seq,
            at: rfc3339_ms(e.at_unix_ms),
            kind: e.kind.clone(),
            node: non_empty(&e.node),
            job: non_empty(&e.job),
            reason: non_empty(&e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_view_matches_the_documented_contract() {
        let node = v1::Node {
            id: "n1".into(),
            address: "10.0.0.1".into(),
            state: v1::NodeState::Cordoned as i32,
            gpus: vec![v1::Gpu {
                index: 0,
                uuid: "GPU-1".into(),
                name: "H100".into(),
                health: v1::GpuHealth::Ok as i32,
                ..Default::default()
            }],
            cordon: Some(v1::Cordon {
                validation: String::new(),
                reason: "xid 79".into(),
                by: "alice".into(),
                at_unix_ms: 1000,
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(NodeView::from(&node)).expect("serialize");
        assert_eq!(v["id"], "n1");
        assert_eq!(v["state"], "cordoned");
        assert_eq!(v["job"], serde_json::Value::Null);
        assert_eq!(v["gpus"][0]["health"], "ok");
        assert_eq!(v["gpus"][0]["temperature_c"], serde_json::Value::Null);
        assert_eq!(v["cordon"]["by"], "alice");
        assert_eq!(v["cordon"]["at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["slurm"], serde_json::Value::Null);
    }

    #[test]
    fn node_view_shows_slurms_state_and_reason() {
        let node = v1::Node {
            id: "n1".into(),
            slurm: Some(v1::SlurmNode {
                name: "gpu-a01".into(),
                state: "drained".into(),
                reason: "maintenance".into(),
                unavailable: true,
                drained_by_sup: false,
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(NodeView::from(&node)).expect("serialize");
        assert_eq!(v["slurm"]["name"], "gpu-a01");
        assert_eq!(v["slurm"]["state"], "drained");
        assert_eq!(v["slurm"]["reason"], "maintenance");
        assert_eq!(v["slurm"]["unavailable"], true);
        assert_eq!(v["slurm"]["drained_by_sup"], false);
    }

    #[test]
    fn event_view_uses_null_for_not_applicable() {
        let e = v1::Event {
            seq: 3,
            at_unix_ms: 0,
            kind: "node_registered".into(),
            node: "n1".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(EventView::from(&e)).expect("serialize");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["job"], serde_json::Value::Null);
        assert_eq!(v["reason"], serde_json::Value::Null);
    }
}
