//! The cluster's batch scheduler (Slurm) as an input and as desired state.
//!
//! Where a scheduler owns the nodes, sup mirrors node state both ways:
//! - in: the edge feeds what the scheduler says about each node
//!   ([`Engine::on_scheduler_nodes`]); a node the scheduler has drained,
//!   marked down or failing for a reason of its own takes no new work from
//!   sup and is no spare (see [`Node::held_by_scheduler`]);
//! - out: [`Engine::scheduler_plan`] says what to change in the scheduler
//!   so it agrees with sup's cordons: drain what sup cordoned, resume what
//!   only sup had drained. It is a query, not an [`crate::Action`]: it is
//!   computed from the stored cordons and the latest observation each time,
//!   so it is level-triggered and idempotent by construction. An `scontrol`
//!   that failed, a supd restart or a slurmctld that lost its state all
//!   show up as a difference at the next observation, and a drain already
//!   in place is never asked for again.
//!
//! What sup never does: set a node DOWN, undo a drain or DOWN somebody
//! else set (only a drain whose reason starts with [`SUP_REASON_PREFIX`] is
//! sup's to resume), or touch a node that is DOWN.
//!
//! The state vocabulary is Slurm's (`idle`, `allocated`, `mixed`, `down`,
//! with flags such as `DRAIN` and `FAIL`), the only scheduler supported.

use crate::records::CordonRecord;
use crate::{Engine, EventKind, Millis, Node};

/// Every drain sup sets carries a reason starting with this; a drain
/// without it is somebody else's and sup never resumes it.
pub const SUP_REASON_PREFIX: &str = "sup:";

/// Slurm truncates long reasons and shows them in narrow columns: the
/// drain reason is a pointer, the evidence stays in sup's event.
const MAX_DRAIN_REASON_CHARS: usize = 80;

/// Bound on a reason or state kept from the scheduler (outside input).
const MAX_OBSERVED_TEXT: usize = 256;

/// One node as the scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchedulerNode {
    /// The scheduler's node name (Slurm's `NodeName`).
    pub name: String,
    /// Base state, lower case: `idle`, `allocated`, `mixed`, `down`, ...
    pub base: String,
    /// State flags, lower case: `drain`, `fail`, `not_responding`, ...
    pub flags: Vec<String>,
    /// Why the node is drained or down; empty when none is set.
    pub reason: String,
}

impl SchedulerNode {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn drained(&self) -> bool {
        self.has_flag("drain")
    }

    /// DOWN (or in error): sup leaves such a node alone entirely.
    pub fn down(&self) -> bool {
        matches!(self.base.as_str(), "down" | "error" | "future")
    }

    /// Failing, or in a maintenance reservation.
    fn failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("maint")
    }

    /// Whether the scheduler would start no new work on the node.
    pub fn unavailable(&self) -> bool {
        self.drained() || self.down() || self.failing()
    }

    /// Whether the drain on the node is sup's own (its reason says so).
    pub fn drained_by_sup(&self) -> bool {
        self.drained() && self.reason.starts_with(SUP_REASON_PREFIX)
    }

    /// The state as `sinfo -N` names it: `drained` (idle and drained),
    /// `draining` (still running work), `down`, `fail`/`failing`, or the
    /// base state.
    pub fn state_name(&self) -> String {
        let busy = matches!(self.base.as_str(), "allocated" | "mixed" | "completing");
        let name = if self.down() {
            self.base.clone()
        } else if self.has_flag("fail") {
            if busy { "failing" } else { "fail" }.to_owned()
        } else if self.drained() {
            if busy { "draining" } else { "drained" }.to_owned()
        } else if self.has_flag("maint") {
            "maint".to_owned()
        } else {
            self.base.clone()
        };
        if self.has_flag("not_responding") {
            format!("{name}*")
        } else {
            name
        }
    }

    /// Clips what came from outside (the edge parses defensively too; the
    /// engine keeps only bounded text either way).
    fn bounded(mut self) -> SchedulerNode {
        self.base = clip(&self.base.to_ascii_lowercase(), MAX_OBSERVED_TEXT);
        self.reason = clip(&self.reason, MAX_OBSERVED_TEXT);
        self.flags.truncate(16);
        for f in &mut self.flags {
            *f = clip(&f.to_ascii_lowercase(), MAX_OBSERVED_TEXT);
        }
        self
    }
}

/// A change to make in the scheduler, with the reason for logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SchedulerOp {
    /// `scontrol update nodename=<name> state=drain reason=<reason>`.
    Drain {
        node_id: String,
        name: String,
        reason: String,
        why: String,
    },
    /// `scontrol update nodename=<name> state=resume`.
    Resume {
        node_id: String,
        name: String,
        why: String,
    },
}

impl SchedulerOp {
    /// The scheduler's name of the node it changes.
    pub fn name(&self) -> &str {
        match self {
            SchedulerOp::Drain { name, .. } | SchedulerOp::Resume { name, .. } => name,
        }
    }
}

/// The reason sup gives the scheduler for draining a cordoned node:
/// `sup: <cordon reason, clipped>`, on one line.
pub fn drain_reason(cordon: &CordonRecord) -> String {
    let one_line: String = cordon
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let budget = MAX_DRAIN_REASON_CHARS - SUP_REASON_PREFIX.len() - 1;
    let mut text = without_gpu_uuids(one_line.trim());
    if text.chars().count() > budget {
        text = text.chars().take(budget - 3).collect::<String>();
        text.push_str("...");
    }
    format!("{SUP_REASON_PREFIX} {text}")
}

/// What one node needs for the scheduler to agree with sup: `desired` is
/// sup's drain reason when the node is cordoned, None otherwise.
pub fn plan_node(
    node_id: &str,
    desired: Option<&str>,
    observed: &SchedulerNode,
) -> Option<SchedulerOp> {
    if observed.down() {
        // A DOWN node runs nothing new anyway, and bringing it back or
        // re-marking it is for whoever put it down.
        return None;
    }
    match desired {
        Some(reason) if !observed.drained() => Some(SchedulerOp::Drain {
            node_id: node_id.to_owned(),
            name: observed.name.clone(),
            reason: reason.to_owned(),
            why: format!(
                "node {node_id} is cordoned in sup and {} in Slurm",
                observed.state_name()
            ),
        }),
        // Drained already, by sup or by someone else: either way nothing
        // to add (and another's reason is not ours to overwrite).
        Some(_) => None,
        None if observed.drained_by_sup() => Some(SchedulerOp::Resume {
            node_id: node_id.to_owned(),
            name: observed.name.clone(),
            why: format!(
                "node {node_id} is no longer cordoned in sup; the drain is sup's own ({})",
                observed.reason
            ),
        }),
        None => None,
    }
}

impl Node {
    /// The scheduler's name for this node: the agent's override, else the
    /// node id.
    pub fn scheduler_name(&self) -> &str {
        self.record
            .scheduler_name
            .as_deref()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.record.id)
    }

    /// The scheduler would start nothing new on it (drained, down or
    /// failing there, whoever did it): sup places nothing on it and does
    /// not count it as a spare.
    pub fn held_by_scheduler(&self) -> bool {
        self.scheduler
            .as_ref()
            .is_some_and(SchedulerNode::unavailable)
    }

    /// Ready in sup and not held by the scheduler: may take new work or
    /// stand as a spare.
    pub fn takes_work(&self) -> bool {
        self.state() == crate::NodeState::Ready && !self.held_by_scheduler()
    }

    /// Held by the scheduler for a reason that is not a sup cordon: what
    /// operators are told about.
    fn held_by_others(&self) -> bool {
        self.scheduler
            .as_ref()
            .is_some_and(|s| s.unavailable() && !s.drained_by_sup())
    }
}

impl Engine {
    /// What the scheduler says about every node it knows, polled by the
    /// edge. Nodes it does not list are taken as unknown to it (no
    /// constraint). Changes that matter to placement are recorded as events
    /// with Slurm's state and reason, and reconcile.
    pub fn on_scheduler_nodes(&mut self, now: Millis, observed: Vec<SchedulerNode>) {
        let mut by_name: std::collections::HashMap<String, SchedulerNode> = observed
            .into_iter()
            .map(|n| (n.name.clone(), n.bounded()))
            .collect();
        let mut events = Vec::new();
        let mut placement_changed = false;
        for node in self.nodes.values_mut() {
            let seen = by_name.remove(node.scheduler_name());
            if seen == node.scheduler {
                continue;
            }
            let was_held = node.held_by_scheduler();
            let was_held_by_others = node.held_by_others();
            let was_sup_drain = node
                .scheduler
                .as_ref()
                .is_some_and(SchedulerNode::drained_by_sup);
            node.scheduler = seen;
            placement_changed |= was_held != node.held_by_scheduler();
            let id = node.record.id.clone();
            let name = node.scheduler_name().to_owned();
            match &node.scheduler {
                Some(s) if s.unavailable() && !s.drained_by_sup() && !was_held_by_others => {
                    events.push((
                        id,
                        format!(
                            "Slurm node {name} is {} ({}): sup places no work on it and counts it as no spare",
                            s.state_name(),
                            if s.reason.is_empty() { "no reason given" } else { &s.reason }
                        ),
                    ));
                }
                Some(s) if s.drained_by_sup() && !was_sup_drain => {
                    events.push((
                        id,
                        format!(
                            "sup's drain is in place: Slurm node {name} is {} with reason \"{}\"",
                            s.state_name(),
                            s.reason
                        ),
                    ));
                }
                Some(s) if !s.unavailable() && (was_held_by_others || was_sup_drain) => {
                    events.push((id, format!("Slurm node {name} is {} again", s.state_name())));
                }
                None if was_held => {
                    events.push((
                        id,
                        format!("Slurm no longer lists node {name}: no constraint from Slurm"),
                    ));
                }
                _ => {}
            }
        }
        for (id, reason) in events {
            self.record_event(now, EventKind::NodeScheduler, Some(&id), reason);
        }
        if placement_changed {
            self.request_reconcile(now);
        }
    }

    /// What to change in the scheduler so that it agrees with sup, given
    /// the latest observation: drain every cordoned node Slurm does not
    /// have drained (a cordon the breaker holds back is no cordon, so it is
    /// not drained either), resume every node whose drain is sup's own and
    /// that sup no longer cordons. Nodes Slurm did not list get nothing.
    pub fn scheduler_plan(&self) -> Vec<SchedulerOp> {
        self.nodes
            .values()
            .filter_map(|node| {
                let observed = node.scheduler.as_ref()?;
                let desired = node.record.cordon.as_ref().map(drain_reason);
                plan_node(&node.record.id, desired.as_deref(), observed)
            })
            .collect()
    }

    /// The scheduler's name for a node, given by its agent (empty: the
    /// node id). Persisted, so that drains land under the right name after
    /// a supd restart even before the agent is back.
    pub fn set_scheduler_name(&mut self, node_id: &str, name: &str) {
        let name = clip(name.trim(), crate::MAX_TEXT_LEN);
        let name = (!name.is_empty() && name != node_id).then(|| Box::new(name));
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        if node.record.scheduler_name == name {
            return;
        }
        node.record.scheduler_name = name;
        // A new name invalidates what was observed under the old one.
        node.scheduler = None;
        self.persist_node(node_id);
    }
}

/// Drops " (GPU-<uuid>)" from a reason: the GPU index says which GPU in
/// the few characters Slurm shows, and the event keeps the UUID.
fn without_gpu_uuids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(" (GPU-") {
        let Some(len) = rest[start..].find(')') else {
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Which nodes Slurm allocations leave a job: a job bound to an allocation
/// runs only on that allocation's nodes; a node of an allocation some
/// other unfinished sup job is bound to is never given to anyone else
/// (it is that job's spare). Built once per placement.
pub(crate) struct AllocationFilter<'a> {
    /// The job's own allocation (Slurm names); None: not bound.
    own: Option<std::collections::HashSet<&'a str>>,
    /// Slurm names bound to other unfinished jobs.
    others: std::collections::HashSet<&'a str>,
}

impl AllocationFilter<'_> {
    pub(crate) fn allows(&self, node: &Node) -> bool {
        let name = node.scheduler_name();
        match &self.own {
            Some(own) => own.contains(name),
            None => !self.others.contains(name),
        }
    }
}

impl Engine {
    pub(crate) fn allocation_filter<'a>(&'a self, job: &'a crate::Job) -> AllocationFilter<'a> {
        let own = job
            .record
            .slurm
            .as_ref()
            .map(|a| a.nodes.iter().map(String::as_str).collect());
        let others = self
            .jobs
            .values()
            .filter(|j| j.name() != job.name() && !j.record.state.is_finished())
            .filter_map(|j| j.record.slurm.as_ref())
            .flat_map(|a| a.nodes.iter().map(String::as_str))
            .collect();
        AllocationFilter { own, others }
    }

    /// Submits a job bound to a Slurm allocation that supd's edge read
    /// from Slurm: checked against what the engine knows (an allocation
    /// too small for the spec, or one another sup job is bound to, is
    /// refused with the reason), then submitted as any job.
    pub fn submit_job_in_allocation(
        &mut self,
        now: Millis,
        spec: crate::jobspec::JobSpec,
        spec_text: &str,
        by: &str,
        allocation: crate::SlurmAllocation,
    ) -> Result<String, crate::EngineError> {
        let invalid = crate::EngineError::InvalidJobSpec;
        let id = allocation.job_id;
        if allocation.nodes.is_empty() {
            return Err(invalid(format!("Slurm job {id} has no nodes")));
        }
        if (allocation.nodes.len() as u64) < u64::from(spec.min_nodes()) {
            return Err(invalid(format!(
                "Slurm job {id} has {} node(s) ({}); the job needs at least {} (min_nodes)",
                allocation.nodes.len(),
                allocation.nodes.join(","),
                spec.min_nodes()
            )));
        }
        if let Some(other) = self.jobs.values().find(|j| {
            j.name() != spec.name
                && !j.record.state.is_finished()
                && j.record.slurm.as_ref().is_some_and(|a| a.job_id == id)
        }) {
            return Err(invalid(format!(
                "Slurm job {id} is already bound to sup job '{}'",
                other.name()
            )));
        }
        let unknown: Vec<String> = allocation
            .nodes
            .iter()
            .filter(|name| !self.nodes.values().any(|n| n.scheduler_name() == *name))
            .cloned()
            .collect();
        let name = spec.name.clone();
        let message = self.submit_job(now, spec, spec_text, by)?;
        let nodes = allocation.nodes.join(",");
        let owner = allocation.user.clone();
        if let Some(job) = self.jobs.get_mut(&name) {
            job.record.slurm = Some(allocation);
        }
        let mut why = format!(
            "bound to Slurm job {id} (owner {}): placed only on its nodes {nodes}, the rest are its spares; ranks run as job steps of it",
            if owner.is_empty() { "unknown" } else { &owner }
        );
        if !unknown.is_empty() {
            why.push_str(&format!(
                "; no sup agent is registered under the Slurm name(s) {} yet",
                unknown.join(",")
            ));
        }
        self.record_job_event(now, EventKind::JobSubmitted, None, Some(&name), why);
        self.persist_job(&name);
        Ok(format!("{message} in Slurm job {id}"))
    }
}
