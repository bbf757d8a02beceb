//! The health monitor task: takes polled health samples, Xid events (NVML
//! thread, kernel log) and drills, keeps the [`HealthState`], and sends a
//! `HealthReport` to supd whenever a verdict changes or an Xid arrives —
//! at once, not at the next poll.
//!
//! A report carries the verdict of every GPU (level-triggered: the link
//! re-sends the latest after every registration) and the Xids accepted
//! since the previous report (edge-triggered: each Xid is sent once).

use std::time::Duration;

use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::drill::Fault;
use sup_proto::v1::{Drill, GpuHealth, GpuVerdict, HealthReport, RecoveryAction};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::state::{HealthState, XidOutcome};
use crate::bus::Outbox;
use crate::probe::{HealthSample, XidObservation, XidSource};
use crate::sampler::SampleTrigger;

/// How often verdicts are re-judged without new input, so that repetition
/// windows, holds and reset settles expire on time.
const REJUDGE_EVERY: Duration = Duration::from_secs(1);
/// Xids carried by one report at most; the rest follow in the next one
/// straight away.
const MAX_XIDS_PER_REPORT: usize = 256;

/// What the monitor listens to.
pub struct Inputs {
    pub samples: watch::Receiver<HealthSample>,
    pub xids: mpsc::Receiver<XidObservation>,
    pub drills: mpsc::Receiver<Drill>,
    /// Asked for a fresh sample after an Xid: the GPU's state (lost,
    /// recovery action) usually changes with it.
    pub trigger: Option<SampleTrigger>,
}

/// Runs until every input has closed (the agent is stopping).
pub async fn run(mut state: HealthState, allow_drills: bool, outbox: Outbox, mut inputs: Inputs) {
    state.observe_sample(inputs.samples.borrow_and_update().clone(), now_ms());
    let mut reporter = Reporter { outbox, last: None };
    reporter.report(&mut state, now_ms());

    let mut rejudge = tokio::time::interval(REJUDGE_EVERY);
    rejudge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut samples_open, mut xids_open, mut drills_open) = (true, true, true);
    while samples_open || xids_open || drills_open {
        tokio::select! {
            changed = inputs.samples.changed(), if samples_open => match changed {
                Ok(()) => {
                    let sample = inputs.samples.borrow_and_update().clone();
                    state.observe_sample(sample, now_ms());
                }
                Err(_) => samples_open = false,
            },
            xid = inputs.xids.recv(), if xids_open => match xid {
                Some(obs) => {
                    on_xid(&mut state, obs);
                    // One report for a burst: take what is already queued.
                    while state.news_len() < MAX_XIDS_PER_REPORT {
                        match inputs.xids.try_recv() {
                            Ok(obs) => on_xid(&mut state, obs),
                            Err(_) => break,
                        }
                    }
                    if let Some(trigger) = &inputs.trigger {
                        trigger.sample_now();
                    }
                }
                None => xids_open = false,
            },
            drill = inputs.drills.recv(), if drills_open => match drill {
                Some(drill) => on_drill(&mut state, allow_drills, &drill),
                None => drills_open = false,
            },
            _ = rejudge.tick() => state.prune(now_ms()),
        }
        let now = now_ms();
        for (gpu, evidence) in state.apply_resets(now) {
            info!(gpu, %evidence, "GPU reset and recovered: its latched failure is cleared");
        }
        reporter.report(&mut state, now);
    }
    debug!("GPU health monitor stopped: all inputs closed");
}

fn now_ms() -> i64 {
    sup_proto::time::now_unix_ms()
}

fn on_xid(state: &mut HealthState, obs: XidObservation) {
    let (gpu, xid, source) = (obs.gpu_index, obs.xid, obs.source.wire_name());
    match state.observe_xid(obs) {
        XidOutcome::Accepted => warn!(gpu, xid, source, "Xid event"),
        XidOutcome::Merged => debug!(gpu, xid, source, "Xid already seen from the other source"),
        XidOutcome::UnknownGpu => warn!(
            gpu,
            xid, source, "Xid for a GPU not in the inventory; ignoring it"
        ),
    }
}

/// Applies a drill as if the hardware had reported it, when drills are
/// allowed on this node.
pub fn on_drill(state: &mut HealthState, allow_drills: bool, drill: &Drill) {
    let by = if drill.by.is_empty() {
        "unknown"
    } else {
        drill.by.as_str()
    };
    let gpu = drill.gpu_index;
    if !allow_drills {
        warn!(
            gpu,
            by, "drill refused: this agent runs without --allow-drills"
        );
        return;
    }
    match drill.fault {
        Some(Fault::Xid(xid)) => {
            warn!(gpu, xid, by, "drill: injecting an Xid");
            let outcome = state.observe_xid(XidObservation {
                gpu_index: gpu,
                xid,
                at_unix_ms: now_ms(),
                source: XidSource::Drill,
                detail: format!("drill by {by}"),
            });
            if outcome == XidOutcome::UnknownGpu {
                warn!(
                    gpu,
                    gpus = state.gpu_count(),
                    "drill names a GPU this node does not have; ignored"
                );
            }
        }
        Some(Fault::RecoveryAction(raw)) => match RecoveryAction::try_from(raw) {
            Ok(action) if action != RecoveryAction::Unspecified => {
                warn!(
                    gpu,
                    action = action.as_str_name(),
                    by,
                    "drill: injecting a recovery action"
                );
                if !state.drill_recovery_action(gpu, action) {
                    warn!(
                        gpu,
                        gpus = state.gpu_count(),
                        "drill names a GPU this node does not have; ignored"
                    );
                }
            }
            _ => warn!(
                gpu,
                value = raw,
                by,
                "drill with an invalid recovery action; ignored"
            ),
        },
        None => warn!(gpu, by, "drill without a fault (a newer supd?); ignored"),
        // Rank and link drills are the drill executor's (crate::drills),
        // which never forwards them here.
        Some(_) => warn!(
            gpu,
            by, "not a GPU drill; ignored by the GPU health monitor"
        ),
    }
}

struct Reporter {
    outbox: Outbox,
    last: Option<(Vec<GpuVerdict>, Option<u32>)>,
}

impl Reporter {
    /// Sends a report if a verdict or the visible count changed, or there
    /// are new Xids.
    fn report(&mut self, state: &mut HealthState, now_ms: i64) {
        let verdicts = state.verdicts(now_ms);
        let visible = state.visible_gpus();
        let changed = self
            .last
            .as_ref()
            .is_none_or(|(v, n)| *v != verdicts || *n != visible);
        if !changed && !state.has_news() {
            return;
        }
        log_changes(self.last.as_ref().map(|(v, _)| v.as_slice()), &verdicts);
        let report = HealthReport {
            verdicts: verdicts.clone(),
            xids: state.take_news(),
            visible_gpus: visible,
        };
        // A full or closed outbox loses the Xids in this report; the verdicts
        // are level state and reach supd with the next report or replay.
        self.outbox.send(AgentBody::Health(report));
        self.last = Some((verdicts, visible));
    }
}

fn log_changes(before: Option<&[GpuVerdict]>, after: &[GpuVerdict]) {
    for verdict in after {
        let old = before.and_then(|b| b.iter().find(|v| v.index == verdict.index));
        if old.is_some_and(|o| o.health == verdict.health && o.reason == verdict.reason) {
            continue;
        }
        let health = GpuHealth::try_from(verdict.health).unwrap_or(GpuHealth::Unspecified);
        let name = health
            .as_str_name()
            .trim_start_matches("GPU_HEALTH_")
            .to_ascii_lowercase();
        match health {
            GpuHealth::Ok if old.is_none() => {}
            GpuHealth::Ok => info!(gpu = verdict.index, health = %name, "GPU healthy again"),
            _ => warn!(
                gpu = verdict.index,
                health = %name,
                reason = %verdict.reason,
                drill = verdict.drill,
                "GPU health changed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus;
    use crate::health::rules::Rules;
    use crate::probe::GpuSignals;
    use sup_proto::v1::GpuInfo;

    fn inventory(n: u32) -> Vec<GpuInfo> {
        (0..n)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{index}"),
                ..GpuInfo::default()
            })
            .collect()
    }

    struct Harness {
        samples: watch::Sender<HealthSample>,
        xids: mpsc::Sender<XidObservation>,
        drills: mpsc::Sender<Drill>,
        reports: mpsc::Receiver<AgentBody>,
        _ports: bus::Bus,
    }

    fn start(allow_drills: bool) -> Harness {
        start_with(
            HealthState::new(Rules::defaults(), inventory(4)),
            allow_drills,
        )
    }

    fn start_with(state: HealthState, allow_drills: bool) -> Harness {
        let (bus, ports) = bus::bus();
        let (samples, samples_rx) = watch::channel(HealthSample::default());
        let (xids, xids_rx) = mpsc::channel(16);
        let (drills, drills_rx) = mpsc::channel(16);
        tokio::spawn(run(
            state,
            allow_drills,
            bus.outbox.clone(),
            Inputs {
                samples: samples_rx,
                xids: xids_rx,
                drills: drills_rx,
                trigger: None,
            },
        ));
        Harness {
            samples,
            xids,
            drills,
            reports: ports.outbox,
            _ports: bus,
        }
    }

    async fn next_report(h: &mut Harness) -> HealthReport {
        match tokio::time::timeout(Duration::from_secs(5), h.reports.recv()).await {
            Ok(Some(AgentBody::Health(report))) => report,
            other => panic!("expected a health report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reports_at_start_on_xids_and_on_changes_only() {
        let mut h = start(false);
        let first = next_report(&mut h).await;
        assert_eq!(first.verdicts.len(), 4);
        assert!(first.xids.is_empty());

        h.xids
            .send(XidObservation {
                gpu_index: 2,
                xid: 79,
                at_unix_ms: now_ms(),
                source: XidSource::Nvml,
                detail: String::new(),
            })
            .await
            .expect("monitor alive");
        let report = next_report(&mut h).await;
        assert_eq!(report.xids.len(), 1);
        assert_eq!(report.xids[0].xid, 79);
        assert_eq!(report.xids[0].uuid, "GPU-2");
        assert_eq!(report.verdicts[2].health, GpuHealth::Failed as i32);

        // An identical sample changes nothing: no report.
        h.samples.send_replace(HealthSample::default());
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), h.reports.recv())
                .await
                .is_err(),
            "no report without a change"
        );

        // A GPU drops out of the count: a report with the new verdict.
        h.samples.send_replace(HealthSample {
            gpus: Vec::new(),
            visible_gpus: Some(3),
        });
        let report = next_report(&mut h).await;
        assert_eq!(report.visible_gpus, Some(3));
        assert_eq!(report.verdicts[3].health, GpuHealth::Failed as i32);
        assert!(report.xids.is_empty());
    }

    #[tokio::test]
    async fn drills_are_refused_unless_allowed() {
        let mut h = start(false);
        next_report(&mut h).await;
        h.drills
            .send(Drill {
                gpu_index: 0,
                fault: Some(Fault::Xid(79)),
                by: "test".into(),
                ..Default::default()
            })
            .await
            .expect("monitor alive");
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), h.reports.recv())
                .await
                .is_err(),
            "a refused drill changes nothing"
        );
    }

    #[tokio::test]
    async fn allowed_drills_act_like_the_hardware_and_are_marked() {
        let mut h = start(true);
        next_report(&mut h).await;
        h.drills
            .send(Drill {
                gpu_index: 1,
                fault: Some(Fault::Xid(79)),
                by: "game-day".into(),
                ..Default::default()
            })
            .await
            .expect("monitor alive");
        let report = next_report(&mut h).await;
        assert_eq!(report.xids.len(), 1);
        assert_eq!(report.xids[0].source, "drill");
        assert_eq!(report.xids[0].detail, "drill by game-day");
        let v = &report.verdicts[1];
        assert_eq!(v.health, GpuHealth::Failed as i32);
        assert!(v.drill);
        assert!(v.reason.starts_with("Xid 79"), "{}", v.reason);

        h.drills
            .send(Drill {
                gpu_index: 3,
                fault: Some(Fault::RecoveryAction(RecoveryAction::DrainP2p as i32)),
                by: "game-day".into(),
                ..Default::default()
            })
            .await
            .expect("monitor alive");
        let report = next_report(&mut h).await;
        let v = &report.verdicts[3];
        assert_eq!(v.health, GpuHealth::Degraded as i32);
        assert_eq!(v.recovery_action, RecoveryAction::DrainP2p as i32);
        assert!(v.drill);
    }

    fn sample(gpu2: GpuSignals) -> HealthSample {
        let mut gpus: Vec<GpuSignals> = (0..4)
            .map(|index| GpuSignals {
                index,
                recovery_action: Some(RecoveryAction::None),
                ..GpuSignals::default()
            })
            .collect();
        gpus[2] = gpu2;
        HealthSample {
            gpus,
            visible_gpus: Some(4),
        }
    }

    async fn report_where(h: &mut Harness, check: impl Fn(&GpuVerdict) -> bool) -> GpuVerdict {
        loop {
            let report = next_report(h).await;
            if check(&report.verdicts[2]) {
                return report.verdicts[2].clone();
            }
        }
    }

    #[tokio::test]
    async fn a_reset_gpu_is_reported_ok_once_the_settle_has_passed() {
        let state = HealthState::new(Rules::defaults(), inventory(4))
            .with_reset_settle(Duration::from_millis(300));
        let mut h = start_with(state, false);
        next_report(&mut h).await;
        h.xids
            .send(XidObservation {
                gpu_index: 2,
                xid: 79,
                at_unix_ms: now_ms(),
                source: XidSource::Nvml,
                detail: String::new(),
            })
            .await
            .expect("monitor alive");
        h.samples.send_replace(sample(GpuSignals {
            index: 2,
            lost: Some("GPU is lost".into()),
            ..GpuSignals::default()
        }));
        report_where(&mut h, |v| {
            v.evidence.iter().any(|e| e == "NVML: GPU is lost")
        })
        .await;
        h.samples.send_replace(sample(GpuSignals {
            index: 2,
            recovery_action: Some(RecoveryAction::None),
            ..GpuSignals::default()
        }));
        // Nothing else arrives: the monitor's own tick clears it.
        let v = report_where(&mut h, |v| v.health == GpuHealth::Ok as i32).await;
        assert_eq!(v.reason, "");
        assert!(
            v.evidence[0].starts_with("GPU reset and recovered at ")
                && v.evidence[0].contains("was lost (NVML: GPU is lost)"),
            "{v:?}"
        );
    }
}
