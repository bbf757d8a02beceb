//! GPU health decisions: verdicts from agents become GPU health and, for a
//! failed GPU, a cordon of the whole node (a board is replaced as a unit);
//! application Xids seen on many nodes at once are called out as a
//! software fault; a circuit breaker stops automatic cordons when too many
//! nodes turn bad at once (the likelier story then is a bug in sup, the
//! driver or the fabric, and cordoning the cluster would be a disaster).

use std::collections::{BTreeMap, VecDeque};

use crate::messages::{HealthReport, XidEvent};
use crate::{Engine, EventKind, GpuHealth, Millis, ReportOutcome, SessionId};

/// Xids kept per GPU for `supctl node`.
const RECENT_XIDS: usize = 10;
/// Xid sightings remembered per guard at most (a flood from one node
/// cannot grow them).
const MAX_SIGHTINGS: usize = 16_384;

/// Recent sightings of Xids by node, for the correlation guards (the same
/// Xid on many nodes at once): bounded in age and in count.
#[derive(Debug, Default)]
pub(crate) struct XidSightings {
    recent: VecDeque<(Millis, u32, String)>,
    /// Codes already reported as correlated, with when.
    reported: BTreeMap<u32, Millis>,
}

impl XidSightings {
    /// Records that `node` saw `code`; the distinct nodes that saw it
    /// within `window`, or `None` when it was reported within the window
    /// already.
    fn see(&mut self, now: Millis, window: Millis, code: u32, node: &str) -> Option<Vec<String>> {
        self.recent.push_back((now, code, node.to_owned()));
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| now - at > window)
            || self.recent.len() > MAX_SIGHTINGS
        {
            self.recent.pop_front();
        }
        if self
            .reported
            .get(&code)
            .is_some_and(|at| now - at <= window)
        {
            return None;
        }
        let mut nodes: Vec<String> = self
            .recent
            .iter()
            .filter(|(_, c, _)| *c == code)
            .map(|(_, _, n)| n.clone())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        Some(nodes)
    }

    fn mark_reported(&mut self, code: u32, now: Millis) {
        self.reported.insert(code, now);
    }
}
/// The same Xid on the same GPU within this window is one event.
const XID_EVENT_DEDUP_MS: Millis = 10_000;

/// Xid events one node may add to the event log per minute. A failing
/// board logs a handful; a node that sends thousands (a driver bug, or a
/// compromised agent) must not push every other node's history out of the
/// bounded log. Past the budget its Xids still count (metrics, health,
/// storm guard) and one event says they are no longer logged.
const XID_EVENTS_PER_MINUTE: u32 = 60;
const XID_BUDGET_WINDOW_MS: Millis = 60_000;

/// A node's budget of Xid events in the current minute.
#[derive(Debug, Clone, Default)]
pub(crate) struct XidEventBudget {
    window_start: Millis,
    logged: u32,
    /// Xids not logged in this window (the first one raises the notice).
    suppressed: u64,
}

/// What to do with one more Xid event.
#[derive(Debug, PartialEq, Eq)]
enum XidLog {
    Log,
    /// The first one over the budget: say so, once, until the window ends.
    Notice {
        until: Millis,
    },
    Suppress,
}

impl XidEventBudget {
    fn take(&mut self, now: Millis) -> XidLog {
        if now - self.window_start >= XID_BUDGET_WINDOW_MS || now < self.window_start {
            *self = XidEventBudget {
                window_start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if self.logged < XID_EVENTS_PER_MINUTE {
            self.logged += 1;
            return XidLog::Log;
        }
        self.suppressed += 1;
        if self.suppressed == 1 {
            XidLog::Notice {
                until: self.window_start + XID_BUDGET_WINDOW_MS,
            }
        } else {
            XidLog::Suppress
        }
    }
}

/// "GPU 3 (GPU-1f2e...)"; a GPU missing since boot has no UUID.
fn gpu_name(index: u32, uuid: &str) -> String {
    if uuid.is_empty() {
        format!("GPU {index}")
    } else {
        format!("GPU {index} ({uuid})")
    }
}

fn health_name(h: GpuHealth) -> &'static str {
    match h {
        GpuHealth::Ok => "ok",
        GpuHealth::Degraded => "degraded",
        GpuHealth::Failed => "failed",
    }
}

impl Engine {
    /// A health report from an agent. Returns false when it came from a
    /// replaced stream and was ignored.
    pub fn on_health_report(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        mut report: HealthReport,
    ) -> ReportOutcome {
        let live = self.is_live_stream(node_id, session);
        if !live {
            return ReportOutcome::StaleStream;
        }
        if let Some(node) = self.nodes.get(node_id) {
            crate::agent_input::bound_health_report(&mut report, &node.record.gpus);
        }
        for xid in report.xids {
            self.observe_xid(now, node_id, xid);
        }
        let mut newly_failed = Vec::new();
        let mut changes = Vec::new();
        if let Some(node) = self.nodes.get_mut(node_id) {
            for verdict in &report.verdicts {
                let Some(gpu) = node
                    .record
                    .gpus
                    .iter_mut()
                    .find(|g| g.index == verdict.index)
                else {
                    continue;
                };
                let health = verdict.health;
                let reason = if health == GpuHealth::Ok {
                    String::new()
                } else {
                    verdict.reason.clone()
                };
                if gpu.health == health
                    && gpu.health_reason == reason
                    && gpu.evidence == verdict.evidence
                    && gpu.recovery_action == verdict.recovery_action.code()
                    && gpu.causes == verdict.causes
                {
                    continue;
                }
                let before = gpu.health;
                gpu.health = health;
                gpu.health_reason = reason.clone();
                gpu.evidence = verdict.evidence.clone();
                gpu.recovery_action = verdict.recovery_action.code();
                gpu.causes = verdict.causes.clone();
                let drill = if verdict.drill { " [drill]" } else { "" };
                if before != health {
                    let mut text = format!(
                        "{} {} → {}",
                        gpu_name(gpu.index, &gpu.uuid),
                        health_name(before),
                        health_name(health)
                    );
                    if !reason.is_empty() {
                        text.push_str(&format!(": {reason}"));
                    }
                    text.push_str(drill);
                    changes.push(text);
                }
                if health == GpuHealth::Failed && before != GpuHealth::Failed {
                    let mut why = format!("{} failed: {reason}", gpu_name(gpu.index, &gpu.uuid));
                    if !verdict.evidence.is_empty() {
                        why.push_str(&format!(" (evidence: {})", verdict.evidence.join("; ")));
                    }
                    why.push_str(drill);
                    newly_failed.push(why);
                }
            }
        }
        let changed = !changes.is_empty();
        for text in changes {
            self.record_event(now, EventKind::GpuHealthChanged, Some(node_id), text);
        }
        if changed {
            self.persist_node(node_id);
        }
        // One cordon for the board, naming the first GPU that failed.
        if let Some(reason) = newly_failed.into_iter().next() {
            self.auto_cordon(now, node_id, reason);
        }
        if changed {
            self.request_reconcile(now);
        }
        ReportOutcome::Applied
    }

    pub(crate) fn observe_xid(&mut self, now: Millis, node_id: &str, xid: XidEvent) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let recent = node.recent_xids.entry(xid.gpu_index).or_default();
        let duplicate = recent.iter().any(|x| {
            x.xid == xid.xid && (xid.at_unix_ms - x.at_unix_ms).abs() < XID_EVENT_DEDUP_MS
        });
        recent.push_back(xid.clone());
        while recent.len() > RECENT_XIDS {
            recent.pop_front();
        }
        let log = if duplicate {
            XidLog::Suppress
        } else {
            node.xid_events.take(now)
        };
        if let XidLog::Notice { until } = log {
            self.record_event(
                now,
                EventKind::GpuXid,
                Some(node_id),
                format!(
                    "more than {XID_EVENTS_PER_MINUTE} Xids from this node within a minute: further ones are not logged for {} (still counted in sup_gpu_xids_total and acted on)",
                    crate::format_ms(until - now)
                ),
            );
        }
        if log == XidLog::Log {
            let mut text = format!("Xid {} on GPU {}", xid.xid, xid.gpu_index);
            if !xid.uuid.is_empty() {
                text.push_str(&format!(" ({})", xid.uuid));
            }
            text.push_str(&format!(
                " from {}",
                if xid.source.is_empty() {
                    "agent"
                } else {
                    &xid.source
                }
            ));
            if !xid.detail.is_empty() {
                text.push_str(&format!(": {}", xid.detail));
            }
            if xid.application {
                text.push_str(" (application Xid: usually the job's fault, no cordon)");
            }
            if xid.source == "drill" {
                text.push_str(" [drill]");
            }
            self.record_event(now, EventKind::GpuXid, Some(node_id), text);
        }
        if xid.application {
            self.correlate_application_xid(now, node_id, xid.xid);
        } else if !duplicate {
            self.correlate_hardware_xid(now, node_id, xid.xid);
        }
    }

    /// The same hardware Xid on many nodes at once is a driver push or the
    /// fabric more likely than that many boards failing together: the
    /// breaker opens (cordons are held, the jobs keep their nodes), one
    /// correlated_fault event says why, and an operator decides. Runs
    /// before the report's verdicts, so the node that completes the storm
    /// is held too.
    pub(crate) fn correlate_hardware_xid(&mut self, now: Millis, node_id: &str, code: u32) {
        let window = self.config.correlation_window_ms;
        let Some(nodes) = self.hw_xids.see(now, window, code, node_id) else {
            return;
        };
        let needed = self.config.hardware_storm_nodes.max(2) as usize;
        if nodes.len() < needed {
            return;
        }
        let shown: Vec<&str> = nodes.iter().take(10).map(String::as_str).collect();
        let text = format!(
            "Xid {code} on {} nodes within {} (at least {needed} make a storm): likely a driver, firmware or fabric fault rather than that many boards; automatic cordons held until an operator resets the breaker (nodes: {}{})",
            nodes.len(),
            crate::format_ms(window),
            shown.join(", "),
            if nodes.len() > shown.len() { ", ..." } else { "" }
        );
        self.hw_xids.mark_reported(code, now);
        if self.breaker.hold(now, text.clone()) {
            self.actions
                .push_back(crate::Action::Persist(crate::Change::PutBreaker(
                    self.breaker.record().clone(),
                )));
        }
        self.record_event(now, EventKind::CorrelatedFault, None, text);
    }

    /// The same application Xid on many nodes within a short window is the
    /// job's code (or data), not the hardware.
    pub(crate) fn correlate_application_xid(&mut self, now: Millis, node_id: &str, code: u32) {
        let window = self.config.correlation_window_ms;
        let Some(nodes) = self.app_xids.see(now, window, code, node_id) else {
            return;
        };
        let total = self.nodes.len();
        let needed = ((self.config.correlation_share * total as f64).ceil() as usize).max(2);
        if nodes.len() < needed {
            return;
        }
        let text = format!(
            "Xid {code} on {} of {total} nodes within {}: likely a fault in the job's software, not the GPUs; no node cordoned (nodes: {})",
            nodes.len(),
            super::format_ms(window),
            nodes.join(", ")
        );
        self.app_xids.mark_reported(code, now);
        self.record_event(now, EventKind::CorrelatedFault, None, text);
    }
}
