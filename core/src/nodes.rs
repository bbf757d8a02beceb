//! Nodes: registration (and duplicate ids), liveness, the partition guard,
//! and operator cordons. A node is taken out of service as a whole: its
//! GPUs share one board.

use std::collections::{BTreeMap, VecDeque};

use crate::messages::{GpuReading, Registration, XidEvent};
use crate::records::{CordonRecord, GpuHealth, GpuRecord, NodeRecord};
use crate::{
    bounded_text, format_ms, required_text, Action, Change, CordonOutcome, DesiredAssignment,
    Engine, EngineError, EventKind, Millis, ReportOutcome, SessionId, MAX_TEXT_LEN,
};

/// Registrations within `unreachable_after` that make a storm (or 1 % of
/// the nodes, if more): a few agents restarting is not one.
const STORM_MIN_REGISTRATIONS: usize = 64;

/// Node state as operators see it; derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Joining,
    Ready,
    Suspect,
    Unreachable,
    Cordoned,
    /// Being drained: runs its job until the next checkpoint, takes no new work.
    Draining,
}

/// A node as the engine sees it: the durable record plus what is only true
/// while this supervisor runs.
#[derive(Debug, Clone)]
pub struct Node {
    pub record: NodeRecord,
    /// The live agent stream, if any.
    pub session: Option<SessionId>,
    /// Last report, or supervisor start for nodes restored from the store
    /// (so a restart grants every node a full grace period).
    pub last_seen: Millis,
    pub unreachable: bool,
    /// When the node turned unreachable (lost-node decisions measure from it).
    pub unreachable_since: Option<Millis>,
    pub readings: BTreeMap<u32, GpuReading>,
    /// Since when each GPU reports 0% utilization (absent: above 0% or not
    /// reported), for the zero-utilization hang signal (see `gpu_idle`).
    pub gpu_idle_since: BTreeMap<u32, Millis>,
    /// Most recent Xids per GPU index, newest last.
    pub recent_xids: BTreeMap<u32, VecDeque<XidEvent>>,
    /// What was last sent to the agent; None forces a resend.
    pub(crate) sent_assignment: Option<DesiredAssignment>,
    /// Instance id of the last agent rejected as a duplicate, so a retrying
    /// impostor records one event, not one per retry.
    pub(crate) last_rejected_instance: Option<String>,
    /// How many Xid events the node may still add to the event log.
    pub(crate) xid_events: crate::health::XidEventBudget,
    /// Its agent can validate the node (said at registration).
    pub(crate) validates: bool,
    /// An uncordon waiting for the agent's validation (lost with a supd
    /// restart: the node then stays cordoned, as before the uncordon).
    pub(crate) validation: Option<crate::maintenance::PendingValidation>,
    /// Restored from the store at this start (see `check_liveness`).
    pub(crate) restored: bool,
    /// Restored and no report since: the rejoin window stays open while
    /// any node is.
    pub(crate) awaiting_rejoin: bool,
    /// What the batch scheduler last said about the node (None: no
    /// scheduler, or it does not list the node). Not stored: re-observed
    /// within a poll after a restart.
    pub scheduler: Option<crate::scheduler::SchedulerNode>,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Unreachable => "unreachable",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
        }
    }
}

impl Node {
    /// Whether `session` is this node's live agent stream: reports from any
    /// other (a replaced stream) are stale.
    pub fn streams_on(&self, session: SessionId) -> bool {
        self.session == Some(session)
    }

    pub fn state(&self) -> NodeState {
        if self.record.cordon.is_some() {
            NodeState::Cordoned
        } else if self.unreachable {
            NodeState::Unreachable
        } else if self.record.drain.is_some() {
            NodeState::Draining
        } else if self.record.gpus.iter().any(|g| g.health != GpuHealth::Ok)
            || self.record.suspect.is_some()
        {
            NodeState::Suspect
        } else if !self.record.joined {
            NodeState::Joining
        } else {
            NodeState::Ready
        }
    }

    pub fn connected(&self) -> bool {
        self.session.is_some()
    }

    pub(crate) fn new(record: NodeRecord, session: Option<SessionId>, now: Millis) -> Node {
        Node {
            record,
            session,
            last_seen: now,
            unreachable: false,
            unreachable_since: None,
            readings: BTreeMap::new(),
            gpu_idle_since: BTreeMap::new(),
            recent_xids: BTreeMap::new(),
            sent_assignment: None,
            last_rejected_instance: None,
            xid_events: Default::default(),
            validates: false,
            validation: None,
            restored: false,
            awaiting_rejoin: false,
            scheduler: None,
        }
    }
}

impl Engine {
    /// Since when a partition of supd's own network is suspected, if it is.
    pub fn partition_suspected_since(&self) -> Option<Millis> {
        self.partition_since
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, id: &str) -> Result<&Node, EngineError> {
        self.nodes
            .get(id)
            .ok_or_else(|| EngineError::UnknownNode(id.to_owned()))
    }

    /// An agent opened a stream and introduced itself.
    ///
    /// Duplicate ids: while a node has a live stream, a registration from a
    /// *different address* is rejected (two machines claim one id). One from
    /// the same address, or from the same agent instance, takes over: that is
    /// an agent that restarted or reconnected before its old stream was
    /// noticed as dead, and waiting for the old stream to time out would only
    /// delay it.
    pub fn on_register(
        &mut self,
        now: Millis,
        reg: Registration,
    ) -> Result<NodeState, EngineError> {
        validate_registration(&reg)?;
        self.note_registration(now);
        let node_id = reg.node_id.clone();
        let gpus: Vec<GpuRecord> = reg
            .gpus
            .iter()
            .map(|g| GpuRecord {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                memory_total_bytes: g.memory_total_bytes,
                health: GpuHealth::Ok,
                health_reason: String::new(),
                evidence: Vec::new(),
                recovery_action: 0,
                causes: Vec::new(),
            })
            .collect();

        let mut events: Vec<(EventKind, String)> = Vec::new();
        match self.nodes.get_mut(&node_id) {
            None => {
                events.push((
                    EventKind::NodeRegistered,
                    format!(
                        "first registration from {} with {} GPU(s) ({} backend)",
                        reg.address,
                        gpus.len(),
                        reg.gpu_backend
                    ),
                ));
                let node = Node::new(
                    NodeRecord {
                        id: node_id.clone(),
                        address: reg.address.clone(),
                        hostname: reg.hostname.clone(),
                        agent_version: reg.agent_version.clone(),
                        gpu_backend: reg.gpu_backend.clone(),
                        instance_id: reg.instance_id.clone(),
                        gpus,
                        registered_at: now,
                        joined: false,
                        cordon: None,
                        suspect: None,
                        drain: None,
                        scheduler_name: None,
                    },
                    Some(reg.session),
                    now,
                );
                self.nodes.insert(node_id.clone(), node);
            }
            Some(node) => {
                if let Some(old_session) = node.session {
                    let same_agent = node.record.instance_id == reg.instance_id;
                    let same_address = node.record.address == reg.address;
                    if !same_agent && !same_address {
                        let err = EngineError::DuplicateNodeId {
                            node_id: node_id.clone(),
                            connected_from: node.record.address.clone(),
                        };
                        if node.last_rejected_instance.as_deref() != Some(&reg.instance_id) {
                            node.last_rejected_instance = Some(reg.instance_id.clone());
                            let reason = format!(
                                "registration from {} rejected: the node is connected from {}",
                                reg.address, node.record.address
                            );
                            self.record_event(now, EventKind::NodeRejected, Some(&node_id), reason);
                        }
                        return Err(err);
                    }
                    let why = if same_agent {
                        "the same agent reconnected before its old stream closed"
                    } else {
                        "a new agent instance on the same address (agent restarted)"
                    };
                    self.actions.push_back(Action::CloseSession {
                        node_id: node_id.clone(),
                        session: old_session,
                        reason: format!("replaced by a newer stream: {why}"),
                    });
                    events.push((EventKind::NodeTakeover, format!("stream replaced: {why}")));
                } else {
                    events.push((
                        EventKind::NodeReconnected,
                        format!("agent reconnected from {}", reg.address),
                    ));
                }
                if node.record.address != reg.address {
                    events.push((
                        EventKind::NodeReconnected,
                        format!(
                            "address changed from {} to {}",
                            node.record.address, reg.address
                        ),
                    ));
                }
                if let Some(change) = describe_inventory_change(&node.record.gpus, &gpus) {
                    events.push((EventKind::NodeInventoryChanged, change));
                }
                // Health verdicts belong to the GPU, not to the stream: keep
                // them for GPUs that are still there under the same UUID.
                let gpus = gpus
                    .into_iter()
                    .map(|mut g| {
                        if let Some(old) = node.record.gpus.iter().find(|o| o.uuid == g.uuid) {
                            g.health = old.health;
                            g.health_reason = old.health_reason.clone();
                            g.evidence = old.evidence.clone();
                            g.recovery_action = old.recovery_action;
                            g.causes = old.causes.clone();
                        }
                        g
                    })
                    .collect();
                let record = &mut node.record;
                record.address = reg.address.clone();
                record.hostname = reg.hostname.clone();
                record.agent_version = reg.agent_version.clone();
                record.gpu_backend = reg.gpu_backend.clone();
                record.instance_id = reg.instance_id.clone();
                record.gpus = gpus;
                node.session = Some(reg.session);
                node.last_seen = now;
                node.last_rejected_instance = None;
                node.readings.clear();
                // A new stream knows nothing: send the assignment again.
                node.sent_assignment = None;
                if node.unreachable {
                    node.unreachable = false;
                    node.unreachable_since = None;
                    events.push((
                        EventKind::NodeReachable,
                        "agent registered again after being unreachable".to_owned(),
                    ));
                }
            }
        }
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.validates = reg.validates;
        }
        for (kind, reason) in events {
            self.record_event(now, kind, Some(&node_id), reason);
        }
        self.persist_node(&node_id);
        self.schedule_liveness_check(now + self.config.unreachable_after_ms);
        self.check_partition_cleared(now);
        self.request_reconcile(now);
        self.node(&node_id).map(Node::state)
    }

    /// The node's agent was heard from at `at` on `session`: any message,
    /// stamped where it arrived, before it queued for the engine. Liveness
    /// must not wait behind bulk work (a registration storm, a slow commit):
    /// a node whose reports are queued is not silent. Only `last_seen`
    /// moves; the reports themselves still do everything else, and an
    /// unreachable node comes back only with a report.
    pub fn on_heard(&mut self, now: Millis, node_id: &str, session: SessionId, at: Millis) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        if node.session == Some(session) && !node.unreachable {
            node.last_seen = node.last_seen.max(at.min(now));
        }
    }

    /// A telemetry report. Reports from a stream that is no longer the node's
    /// current one are ignored (returns false): they come from an agent that
    /// has been replaced.
    pub fn on_telemetry(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        mut readings: Vec<GpuReading>,
    ) -> ReportOutcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return ReportOutcome::StaleStream;
        };
        if node.session != Some(session) {
            return ReportOutcome::StaleStream;
        }
        crate::agent_input::bound_readings(&mut readings, &node.record.gpus);
        node.last_seen = now;
        // Back for good once it reports: the registration alone may have
        // been answered seconds before its first report got through a
        // reconnect storm. The last one back ends the rejoin window, which
        // the next liveness check notices.
        let rejoined = std::mem::replace(&mut node.awaiting_rejoin, false);
        let mut turned_idle = false;
        for r in readings {
            if r.utilization_gpu_pct == Some(0) {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    node.gpu_idle_since.entry(r.index)
                {
                    e.insert(now);
                    turned_idle = true;
                }
            } else {
                node.gpu_idle_since.remove(&r.index);
            }
            node.readings.insert(r.index, r);
        }
        let mut persist = false;
        if !node.record.joined {
            node.record.joined = true;
            persist = true;
        }
        let came_back = node.unreachable;
        if came_back {
            node.unreachable = false;
            node.unreachable_since = None;
            self.record_event(
                now,
                EventKind::NodeReachable,
                Some(node_id),
                "reports resumed".to_owned(),
            );
            self.check_partition_cleared(now);
        }
        if persist {
            self.persist_node(node_id);
        }
        if persist {
            // New capacity.
            self.request_reconcile(now);
        } else if came_back {
            // Returning capacity: reconcile at a timeout due now, so the
            // caller does it once per batch. Reconciling per report made a
            // burst of returning nodes (after a stall) quadratic, which kept
            // supd too busy to read reports and turned more nodes
            // unreachable.
            self.schedule_job_check(now);
        }
        if rejoined {
            self.schedule_liveness_check(now + self.config.unreachable_after_ms);
        }
        if turned_idle {
            // A job whose GPUs all went idle may hang on that alone: a job
            // check, no sooner than any hang bound, sets the exact time.
            self.schedule_job_check(now + self.config.detect.hang_floor_ms);
        }
        ReportOutcome::Applied
    }

    /// An agent stream ended (closed by the agent, or broken).
    pub fn on_disconnected(&mut self, now: Millis, node_id: &str, session: SessionId) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        if node.session != Some(session) {
            return;
        }
        node.session = None;
        let grace = self.config.unreachable_after_ms;
        self.record_event(
            now,
            EventKind::NodeDisconnected,
            Some(node_id),
            format!(
                "agent stream closed; unreachable if it does not return within {}",
                format_ms(grace)
            ),
        );
    }

    /// Cordon a node: take it (all of its GPUs) out of service. Idempotent:
    /// a node already cordoned keeps its original cordon, whose reason and
    /// time are the evidence of what happened first.
    pub fn cordon(
        &mut self,
        now: Millis,
        node_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<CordonOutcome, EngineError> {
        let reason = required_text("cordon reason", reason)?;
        let by = required_text("cordon 'by'", by)?;
        let node = self
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if let Some(existing) = &node.record.cordon {
            return Ok(CordonOutcome {
                changed: false,
                message: format!(
                    "node '{node_id}' is already cordoned by {}: {}",
                    existing.by, existing.reason
                ),
            });
        }
        node.record.cordon = Some(CordonRecord {
            validation: None,
            reason: reason.clone(),
            by: by.clone(),
            at: now,
        });
        self.record_event(
            now,
            EventKind::NodeCordoned,
            Some(node_id),
            format!("cordoned by {by}: {reason}"),
        );
        self.persist_node(node_id);
        self.request_reconcile(now);
        Ok(CordonOutcome {
            changed: true,
            message: format!("node '{node_id}' cordoned: {reason}"),
        })
    }

    pub fn uncordon(
        &mut self,
        now: Millis,
        node_id: &str,
        by: &str,
        reason: &str,
    ) -> Result<CordonOutcome, EngineError> {
        self.uncordon_validated(now, node_id, by, reason, true)
    }

    /// An uncordon. With `validate`, a cordoned node whose agent has a
    /// validation command is validated first and returns to service only
    /// if that passes (see `maintenance.rs`).
    pub fn uncordon_validated(
        &mut self,
        now: Millis,
        node_id: &str,
        by: &str,
        reason: &str,
        validate: bool,
    ) -> Result<CordonOutcome, EngineError> {
        let by = required_text("uncordon 'by'", by)?;
        let note = bounded_text("uncordon reason", reason)?;
        if validate {
            if let Some(outcome) = self.start_validation(now, node_id, &by, &note)? {
                return Ok(outcome);
            }
        }
        self.return_to_service(now, node_id, &by, &note, "")
    }

    /// Clears a cordon (or a drain, or suspicion) now. `how` is appended
    /// to the event ("after validation passed: ...").
    pub(crate) fn return_to_service(
        &mut self,
        now: Millis,
        node_id: &str,
        by: &str,
        note: &str,
        how: &str,
    ) -> Result<CordonOutcome, EngineError> {
        let by = by.to_owned();
        let note = note.to_owned();
        if let Some(node) = self.nodes.get_mut(node_id) {
            // Returned now (e.g. --skip-validation): a validation still
            // running has nothing left to decide.
            node.validation = None;
        }
        let node = self
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))?;
        if node.record.cordon.is_none() {
            if let Some(drain) = node.record.drain.take() {
                let mut why = format!(
                    "drain cancelled by {by} (was drained by {}: {})",
                    drain.by, drain.reason
                );
                if !note.is_empty() {
                    why.push_str(&format!(": {note}"));
                }
                self.record_event(now, EventKind::NodeUncordoned, Some(node_id), why);
                self.persist_node(node_id);
                self.request_reconcile(now);
                return Ok(CordonOutcome {
                    changed: true,
                    message: format!("node '{node_id}' is no longer draining"),
                });
            }
        }
        let suspect = node.record.suspect.take();
        let Some(previous) = node.record.cordon.take() else {
            let Some(suspect) = suspect else {
                return Ok(CordonOutcome {
                    changed: false,
                    message: format!("node '{node_id}' is not cordoned"),
                });
            };
            let mut why = format!("suspect cleared by {by} (was: {suspect})");
            if !note.is_empty() {
                why.push_str(&format!(": {note}"));
            }
            self.forget_hang_blame(node_id);
            self.record_event(now, EventKind::NodeUncordoned, Some(node_id), why);
            self.persist_node(node_id);
            self.request_reconcile(now);
            return Ok(CordonOutcome {
                changed: true,
                message: format!("node '{node_id}' is no longer suspect"),
            });
        };
        self.forget_hang_blame(node_id);
        let mut why = format!(
            "uncordoned by {by}{how} (was cordoned by {}: {})",
            previous.by, previous.reason
        );
        if !note.is_empty() {
            why.push_str(&format!(": {note}"));
        }
        self.record_event(now, EventKind::NodeUncordoned, Some(node_id), why);
        self.persist_node(node_id);
        self.request_reconcile(now);
        Ok(CordonOutcome {
            changed: true,
            message: format!("node '{node_id}' uncordoned"),
        })
    }

    /// How many nodes must go silent together before supd blames its own
    /// network rather than the nodes.
    /// Nodes silent past `unreachable_after_ms` turn unreachable, and many
    /// at once raise the partition guard.
    pub(crate) fn check_liveness(&mut self, now: Millis) {
        // A registration storm (every agent of a cluster connecting at
        // once) saturates supd and can hold a node's next report back for
        // seconds: while one lasts, silence is judged by the rejoin grace.
        let limit = if now < self.storm_until {
            self.config
                .unreachable_after_ms
                .max(self.config.rejoin_grace_ms)
        } else {
            self.config.unreachable_after_ms
        };
        let rejoining =
            now < self.rejoin_deadline && self.nodes.values().any(|n| n.awaiting_rejoin);
        if !rejoining {
            // Over for good: the storm ended early, or the grace did.
            self.rejoin_deadline = self.rejoin_deadline.min(now);
        }
        let mut newly_unreachable = Vec::new();
        let mut next: Option<Millis> = None;
        for node in self.nodes.values_mut() {
            if node.unreachable {
                continue;
            }
            let mut deadline = node.last_seen + limit;
            if rejoining && node.restored {
                // Every agent reconnects to a restarted supervisor at
                // once: until the storm is over (all restored nodes have
                // reported) or the rejoin grace ends, silence is not held
                // against a node restored from the store. A node's reports
                // can stall for seconds in such a storm after its first.
                deadline = deadline.max(self.rejoin_deadline);
            }
            if deadline <= now {
                node.unreachable = true;
                node.unreachable_since = Some(now);
                newly_unreachable.push((node.record.id.clone(), now - node.last_seen));
            } else {
                next = Some(next.map_or(deadline, |n: Millis| n.min(deadline)));
            }
        }
        if now < self.storm_until {
            // The usual limit applies again when the storm is over.
            next = Some(next.map_or(self.storm_until, |n| n.min(self.storm_until)));
        }
        self.next_liveness_check = next;
        for (id, silent_for) in newly_unreachable {
            self.record_event(
                now,
                EventKind::NodeUnreachable,
                Some(&id),
                format!(
                    "no report for {} (limit {})",
                    format_ms(silent_for),
                    format_ms(limit)
                ),
            );
        }
        self.check_partition_suspected(now);
    }

    /// Counts a registration; enough of them within `unreachable_after`
    /// make a storm, which lasts until that long after the last of them.
    fn note_registration(&mut self, now: Millis) {
        let window = self.config.unreachable_after_ms;
        self.recent_registrations.push_back(now);
        while self
            .recent_registrations
            .front()
            .is_some_and(|&at| at <= now - window)
        {
            self.recent_registrations.pop_front();
        }
        let threshold = STORM_MIN_REGISTRATIONS.max(self.nodes.len() / 100);
        if self.recent_registrations.len() >= threshold {
            self.storm_until = now + window;
            // The usual limit applies again right after.
            self.schedule_liveness_check(self.storm_until);
        }
    }

    pub(crate) fn partition_threshold(&self) -> usize {
        let total = self.nodes.len() as f64;
        let share = (self.config.partition_share * total).ceil() as usize;
        share.max(self.config.partition_min_nodes as usize).max(1)
    }

    /// Many nodes unreachable at once is more likely our own network than
    /// that many machines failing together; restarting jobs (or cordoning)
    /// on that evidence would take down healthy work cluster-wide.
    pub(crate) fn check_partition_suspected(&mut self, now: Millis) {
        if self.partition_since.is_some() {
            return;
        }
        let window_start = now - self.config.partition_window_ms;
        let recent = self
            .nodes
            .values()
            .filter(|n| n.unreachable_since.is_some_and(|t| t >= window_start))
            .count();
        let threshold = self.partition_threshold();
        if recent < threshold {
            return;
        }
        self.partition_since = Some(now);
        let total = self.nodes.len();
        self.record_event(
            now,
            EventKind::PartitionSuspected,
            None,
            format!(
                "{recent} of {total} nodes turned unreachable within {} (threshold {threshold}): \
                 suspecting supd's own network; lost-node restarts are held until nodes re-confirm",
                format_ms(self.config.partition_window_ms)
            ),
        );
    }

    /// Ends the hold once enough nodes have reported again. Nodes still
    /// unreachable then get a fresh grace period from now: while we could not
    /// trust our own network we could not tell how long they were really gone.
    pub(crate) fn check_partition_cleared(&mut self, now: Millis) {
        let Some(since) = self.partition_since else {
            return;
        };
        let unreachable = self.nodes.values().filter(|n| n.unreachable).count();
        let threshold = self.partition_threshold();
        if unreachable >= threshold {
            return;
        }
        self.partition_since = None;
        for node in self.nodes.values_mut() {
            if node.unreachable {
                node.unreachable_since = Some(now);
            }
        }
        let total = self.nodes.len();
        self.record_event(
            now,
            EventKind::PartitionCleared,
            None,
            format!(
                "nodes re-confirmed after {}: {unreachable} of {total} still unreachable (threshold {threshold}); \
                 lost-node decisions resume, with a fresh grace for the rest",
                format_ms(now - since)
            ),
        );
    }

    /// Whether `session` is the live agent stream of `node_id`.
    pub(crate) fn is_live_stream(&self, node_id: &str, session: SessionId) -> bool {
        self.nodes
            .get(node_id)
            .is_some_and(|n| n.streams_on(session))
    }

    pub(crate) fn persist_node(&mut self, node_id: &str) {
        if let Some(node) = self.nodes.get(node_id) {
            self.actions
                .push_back(Action::Persist(Change::PutNode(node.record.clone())));
        }
    }
}

const MAX_NODE_ID_LEN: usize = 128;

fn validate_registration(reg: &Registration) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::InvalidRegistration(m));
    if reg.node_id.is_empty() {
        return invalid("node id is empty".to_owned());
    }
    if reg.node_id.len() > MAX_NODE_ID_LEN {
        return invalid(format!("node id is longer than {MAX_NODE_ID_LEN} bytes"));
    }
    if let Some(c) = reg
        .node_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return invalid(format!(
            "node id '{}' contains {c:?}; use letters, digits, '.', '-' and '_'",
            reg.node_id
        ));
    }
    if reg.address.trim().is_empty() {
        return invalid("address is empty".to_owned());
    }
    for field in [
        &reg.address,
        &reg.hostname,
        &reg.agent_version,
        &reg.instance_id,
        &reg.gpu_backend,
    ] {
        if field.len() > MAX_TEXT_LEN {
            return invalid(format!("a field is longer than {MAX_TEXT_LEN} bytes"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &reg.gpus {
        if !seen.insert(g.index) {
            return invalid(format!("GPU index {} appears twice", g.index));
        }
    }
    Ok(())
}

fn describe_inventory_change(old: &[GpuRecord], new: &[GpuRecord]) -> Option<String> {
    let gone: Vec<String> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.uuid == o.uuid))
        .map(|o| format!("{} ({})", o.index, o.uuid))
        .collect();
    let added: Vec<String> = new
        .iter()
        .filter(|n| !old.iter().any(|o| o.uuid == n.uuid))
        .map(|n| format!("{} ({})", n.index, n.uuid))
        .collect();
    if gone.is_empty() && added.is_empty() {
        return None;
    }
    let mut parts = vec![format!("{} GPU(s), was {}", new.len(), old.len())];
    if !gone.is_empty() {
        parts.push(format!("gone: {}", gone.join(", ")));
    }
    if !added.is_empty() {
        parts.push(format!("new: {}", added.join(", ")));
    }
    Some(parts.join("; "))
}
