//! What the health monitor remembers between reports, per GPU: the latest
//! polled signals, recent Xids (for repetition and for merging the kernel
//! log's copy of an NVML event), the Xids whose single occurrence stands
//! (until a reset is proven, see `reset`), and drill overrides. Pure: time
//! is an argument; the monitor owns the clock and the channels.

use std::collections::BTreeMap;
use std::time::Duration;

use sup_proto::v1::{GpuInfo, GpuVerdict, RecoveryAction, XidEvent};

use super::reset::{readiness, Decision, Readiness, ResetWatch};
use super::rules::Rules;
use super::verdict::{judge, GpuFacts, XidRecord};
use crate::probe::{HealthSample, XidObservation, XidSource};

/// Recent Xids kept per GPU at most, whatever the windows say: an Xid storm
/// must not grow memory without bound.
const MAX_RECENT_PER_GPU: usize = 512;

/// How long a reset GPU must answer with recovery action NONE, with no new
/// latching Xid, before its latched failure clears (`reset_settle`).
pub const DEFAULT_RESET_SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct GpuHistory {
    /// Oldest first.
    recent: Vec<XidRecord>,
    latched: BTreeMap<u32, XidRecord>,
    drill_recovery: Option<RecoveryAction>,
    /// What has been seen of the GPU while `latched` was not empty.
    reset: ResetWatch,
    /// The evidence line of the last reset that cleared `latched`, shown
    /// until a new Xid latches.
    recovered: Option<String>,
}

/// What became of an observed Xid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidOutcome {
    /// New: counted and reported.
    Accepted,
    /// The other source's report of an Xid already counted.
    Merged,
    /// No such GPU in the inventory.
    UnknownGpu,
}

#[derive(Debug)]
pub struct HealthState {
    rules: Rules,
    inventory: Vec<GpuInfo>,
    gpus: Vec<GpuHistory>,
    sample: HealthSample,
    /// Xids accepted since the last report.
    news: Vec<XidEvent>,
    reset_settle: Duration,
}

impl HealthState {
    pub fn new(rules: Rules, inventory: Vec<GpuInfo>) -> HealthState {
        let gpus = inventory.iter().map(|_| GpuHistory::default()).collect();
        HealthState {
            rules,
            inventory,
            gpus,
            sample: HealthSample::default(),
            news: Vec::new(),
            reset_settle: DEFAULT_RESET_SETTLE,
        }
    }

    pub fn with_reset_settle(mut self, settle: Duration) -> HealthState {
        self.reset_settle = settle;
        self
    }

    pub fn gpu_count(&self) -> usize {
        self.inventory.len()
    }

    /// A new health sample, taken (or at least received) at `now_ms`.
    pub fn observe_sample(&mut self, sample: HealthSample, now_ms: i64) {
        self.sample = sample;
        for (gpu, history) in self.inventory.iter().zip(&mut self.gpus) {
            if history.latched.is_empty() {
                continue;
            }
            let signals = self.sample.gpus.iter().find(|s| s.index == gpu.index);
            history.reset.observe(
                readiness(gpu.index, signals, self.sample.visible_gpus),
                now_ms,
            );
        }
    }

    pub fn visible_gpus(&self) -> Option<u32> {
        self.sample.visible_gpus
    }

    pub fn observe_xid(&mut self, obs: XidObservation) -> XidOutcome {
        let Some(history) = self.gpus.get_mut(obs.gpu_index as usize) else {
            return XidOutcome::UnknownGpu;
        };
        // NVML and the kernel log usually both see an Xid. Drills are never
        // merged: a game day may inject what the hardware also reported.
        let merge_ms = i64::try_from(self.rules.merge_window.as_millis()).unwrap_or(i64::MAX);
        let duplicate = obs.source != XidSource::Drill
            && history.recent.iter().any(|r| {
                r.xid == obs.xid
                    && r.source != obs.source
                    && r.source != XidSource::Drill
                    && (r.at_unix_ms - obs.at_unix_ms).abs() <= merge_ms
            });
        if duplicate {
            return XidOutcome::Merged;
        }
        let record = XidRecord {
            xid: obs.xid,
            at_unix_ms: obs.at_unix_ms,
            source: obs.source,
            detail: obs.detail,
        };
        let action = self
            .rules
            .xid(obs.xid)
            .map_or(self.rules.unknown_xid, |r| r.action);
        if action.severity().is_some() {
            history.latched.insert(obs.xid, record.clone());
            history.recovered = None;
            // The sample may already show the GPU down (lost before its Xid
            // came in) and, unchanged, will not be observed again.
            let signals = self.sample.gpus.iter().find(|s| s.index == obs.gpu_index);
            if let down @ Readiness::Down(_) =
                readiness(obs.gpu_index, signals, self.sample.visible_gpus)
            {
                history.reset.observe(down, obs.at_unix_ms);
            }
        }
        if history.recent.len() >= MAX_RECENT_PER_GPU {
            history.recent.remove(0);
        }
        history.recent.push(record.clone());
        self.news.push(XidEvent {
            gpu_index: obs.gpu_index,
            uuid: self
                .inventory
                .get(obs.gpu_index as usize)
                .map(|g| g.uuid.clone())
                .unwrap_or_default(),
            xid: record.xid,
            at_unix_ms: record.at_unix_ms,
            source: record.source.wire_name().to_owned(),
            detail: record.detail,
            application: self.rules.is_application(record.xid),
        });
        XidOutcome::Accepted
    }

    /// A drill's recovery action on `gpu`, standing in for the driver's
    /// until the agent restarts (or a drill sets NONE).
    pub fn drill_recovery_action(&mut self, gpu: u32, action: RecoveryAction) -> bool {
        match self.gpus.get_mut(gpu as usize) {
            Some(history) => {
                history.drill_recovery = Some(action);
                true
            }
            None => false,
        }
    }

    /// Forgets Xids older than any rule looks back. Latched Xids stay (their
    /// `hold` is judged at verdict time).
    pub fn prune(&mut self, now_ms: i64) {
        let keep_ms = i64::try_from(self.rules.longest_window().as_millis()).unwrap_or(i64::MAX);
        for history in &mut self.gpus {
            history
                .recent
                .retain(|r| now_ms.saturating_sub(r.at_unix_ms) <= keep_ms);
        }
    }

    /// Clears the latched Xids of every GPU proven reset and recovered by
    /// `now_ms`. Returns those GPUs with the evidence line, for the log.
    pub fn apply_resets(&mut self, now_ms: i64) -> Vec<(u32, String)> {
        let mut recovered = Vec::new();
        for (gpu, history) in self.inventory.iter().zip(&mut self.gpus) {
            if let Decision::Recovered { evidence } =
                history
                    .reset
                    .decide(&history.latched, self.reset_settle, now_ms)
            {
                history.latched.clear();
                history.reset = ResetWatch::default();
                history.recovered = Some(evidence.clone());
                recovered.push((gpu.index, evidence));
            }
        }
        recovered
    }

    /// Xids accepted since the last call, oldest first.
    pub fn take_news(&mut self) -> Vec<XidEvent> {
        std::mem::take(&mut self.news)
    }

    pub fn has_news(&self) -> bool {
        !self.news.is_empty()
    }

    pub fn news_len(&self) -> usize {
        self.news.len()
    }

    /// A verdict for every inventoried GPU, lost and missing ones included.
    pub fn verdicts(&self, now_ms: i64) -> Vec<GpuVerdict> {
        let inventory = u32::try_from(self.inventory.len()).unwrap_or(u32::MAX);
        self.inventory
            .iter()
            .zip(&self.gpus)
            .map(|(gpu, history)| {
                let reset_note =
                    match history
                        .reset
                        .decide(&history.latched, self.reset_settle, now_ms)
                    {
                        Decision::Settling { evidence, .. } => Some(evidence),
                        _ => history.recovered.clone(),
                    };
                judge(
                    &self.rules,
                    &GpuFacts {
                        index: gpu.index,
                        uuid: &gpu.uuid,
                        signals: self.sample.gpus.iter().find(|s| s.index == gpu.index),
                        visible: self.sample.visible_gpus,
                        inventory,
                        recent: &history.recent,
                        latched: &history.latched,
                        drill_recovery: history.drill_recovery,
                        reset_note: reset_note.as_deref(),
                    },
                    now_ms,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_proto::v1::GpuHealth;

    const NOW: i64 = 1_795_000_000_000;

    fn state(gpus: u32) -> HealthState {
        let inventory = (0..gpus)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{index}"),
                ..GpuInfo::default()
            })
            .collect();
        HealthState::new(Rules::defaults(), inventory)
    }

    fn obs(gpu: u32, xid: u32, at: i64, source: XidSource) -> XidObservation {
        XidObservation {
            gpu_index: gpu,
            xid,
            at_unix_ms: at,
            source,
            detail: String::new(),
        }
    }

    #[test]
    fn the_kernel_logs_copy_of_an_nvml_xid_is_merged_either_way_round() {
        let mut s = state(2);
        assert_eq!(
            s.observe_xid(obs(0, 79, NOW, XidSource::Nvml)),
            XidOutcome::Accepted
        );
        assert_eq!(
            s.observe_xid(obs(0, 79, NOW + 300, XidSource::KernelLog)),
            XidOutcome::Merged
        );
        assert_eq!(
            s.observe_xid(obs(1, 13, NOW, XidSource::KernelLog)),
            XidOutcome::Accepted
        );
        assert_eq!(
            s.observe_xid(obs(1, 13, NOW - 200, XidSource::Nvml)),
            XidOutcome::Merged
        );
        // Same source again: a real repeat.
        assert_eq!(
            s.observe_xid(obs(1, 13, NOW + 100, XidSource::KernelLog)),
            XidOutcome::Accepted
        );
        // Other source but long after: a new event.
        assert_eq!(
            s.observe_xid(obs(0, 79, NOW + 60_000, XidSource::KernelLog)),
            XidOutcome::Accepted
        );
        // Drills are never merged.
        assert_eq!(
            s.observe_xid(obs(0, 79, NOW + 60_001, XidSource::Drill)),
            XidOutcome::Accepted
        );
        assert_eq!(
            s.observe_xid(obs(5, 79, NOW, XidSource::Nvml)),
            XidOutcome::UnknownGpu
        );
        let news = s.take_news();
        assert_eq!(news.len(), 5);
        assert_eq!(news[0].uuid, "GPU-0");
        assert_eq!(news[0].source, "nvml");
        assert!(!news[0].application);
        assert_eq!(news[1].source, "kernel_log");
        assert!(news[1].application, "Xid 13 is an application Xid");
        assert_eq!(news[4].source, "drill");
        assert!(s.take_news().is_empty(), "news are taken once");
    }

    #[test]
    fn verdicts_cover_every_gpu_and_follow_xids_and_samples() {
        let mut s = state(8);
        let v = s.verdicts(NOW);
        assert_eq!(v.len(), 8);
        assert!(v.iter().all(|v| v.health == GpuHealth::Ok as i32));

        s.observe_xid(obs(3, 79, NOW, XidSource::Nvml));
        let v = s.verdicts(NOW + 1000);
        assert_eq!(v[3].health, GpuHealth::Failed as i32);
        assert_eq!(v[3].uuid, "GPU-3");
        assert!(v
            .iter()
            .filter(|v| v.index != 3)
            .all(|v| v.health == GpuHealth::Ok as i32));

        // A failure from one Xid stands however long ago it was.
        s.prune(NOW + 48 * 3600 * 1000);
        let v = s.verdicts(NOW + 48 * 3600 * 1000);
        assert_eq!(v[3].health, GpuHealth::Failed as i32);

        s.observe_sample(
            HealthSample {
                gpus: Vec::new(),
                visible_gpus: Some(7),
            },
            NOW,
        );
        let v = s.verdicts(NOW);
        assert_eq!(v[7].health, GpuHealth::Failed as i32);
        assert_eq!(s.visible_gpus(), Some(7));
    }

    #[test]
    fn a_gpu_missing_at_boot_is_failed_when_the_count_is_expected() {
        let found: Vec<GpuInfo> = (0..7)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{index}"),
                ..GpuInfo::default()
            })
            .collect();
        let padded = crate::probe::with_expected_count(found.clone(), Some(8));
        assert_eq!(padded.len(), 8);
        assert_eq!(padded[7].name, crate::probe::MISSING_GPU_NAME);
        let mut s = HealthState::new(Rules::defaults(), padded);
        s.observe_sample(
            HealthSample {
                gpus: Vec::new(),
                visible_gpus: Some(7),
            },
            NOW,
        );
        let v = s.verdicts(NOW);
        assert_eq!(v[7].health, GpuHealth::Failed as i32);
        assert!(
            v[7].reason.contains("NVML sees 7 of the 8 GPUs"),
            "{}",
            v[7].reason
        );
        assert!(v[..7].iter().all(|v| v.health == GpuHealth::Ok as i32));
        // Without the setting, or with as many as expected, nothing changes.
        assert_eq!(
            crate::probe::with_expected_count(found.clone(), None),
            found
        );
        assert_eq!(
            crate::probe::with_expected_count(found.clone(), Some(7)),
            found
        );
        assert_eq!(
            crate::probe::with_expected_count(found.clone(), Some(4)),
            found
        );
    }

    #[test]
    fn repeats_age_out_after_pruning() {
        let mut s = state(1);
        for i in 0..3 {
            s.observe_xid(obs(0, 13, NOW + i * 1000, XidSource::Nvml));
        }
        assert_eq!(s.verdicts(NOW + 3000)[0].health, GpuHealth::Degraded as i32);
        let later = NOW + 11 * 60 * 1000;
        assert_eq!(s.verdicts(later)[0].health, GpuHealth::Ok as i32);
        s.prune(NOW + 25 * 3600 * 1000);
        assert_eq!(
            s.verdicts(NOW + 25 * 3600 * 1000)[0].health,
            GpuHealth::Ok as i32
        );
    }

    #[test]
    fn recent_history_is_bounded() {
        let mut s = state(1);
        for i in 0..(MAX_RECENT_PER_GPU as i64 + 100) {
            s.observe_xid(obs(0, 13, NOW + i, XidSource::Nvml));
        }
        assert_eq!(s.gpus[0].recent.len(), MAX_RECENT_PER_GPU);
    }

    #[test]
    fn drill_recovery_action_applies_to_known_gpus_only() {
        let mut s = state(2);
        assert!(s.drill_recovery_action(1, RecoveryAction::GpuReset));
        assert!(!s.drill_recovery_action(2, RecoveryAction::GpuReset));
        let v = s.verdicts(NOW);
        assert_eq!(v[1].health, GpuHealth::Failed as i32);
        assert!(v[1].drill);
        assert!(s.drill_recovery_action(1, RecoveryAction::None));
        assert_eq!(s.verdicts(NOW)[1].health, GpuHealth::Ok as i32);
    }

    fn answering(index: u32, action: RecoveryAction) -> crate::probe::GpuSignals {
        crate::probe::GpuSignals {
            index,
            recovery_action: Some(action),
            ..crate::probe::GpuSignals::default()
        }
    }

    /// Two GPUs; GPU 1 as given, GPU 0 healthy.
    fn sample(gpu1: crate::probe::GpuSignals) -> HealthSample {
        HealthSample {
            gpus: vec![answering(0, RecoveryAction::None), gpu1],
            visible_gpus: Some(2),
        }
    }

    fn lost(index: u32) -> crate::probe::GpuSignals {
        crate::probe::GpuSignals {
            index,
            lost: Some("GPU is lost".into()),
            ..crate::probe::GpuSignals::default()
        }
    }

    const S: i64 = 1000;

    #[test]
    fn a_reset_gpu_clears_after_the_settle_and_a_new_xid_latches_again() {
        let mut s = state(2).with_reset_settle(std::time::Duration::from_secs(30));
        s.observe_sample(sample(answering(1, RecoveryAction::None)), NOW);
        s.observe_xid(obs(1, 48, NOW, XidSource::Nvml));
        s.observe_sample(sample(answering(1, RecoveryAction::GpuReset)), NOW + S);
        assert!(s.apply_resets(NOW + 3600 * S).is_empty());
        assert_eq!(
            s.verdicts(NOW + 3600 * S)[1].health,
            GpuHealth::Failed as i32
        );

        // Reset at +1h: settling, still failed, the evidence says until when.
        let up = NOW + 3600 * S;
        s.observe_sample(sample(answering(1, RecoveryAction::None)), up);
        assert!(s.apply_resets(up + 29 * S).is_empty());
        let v = &s.verdicts(up + 29 * S)[1];
        assert_eq!(v.health, GpuHealth::Failed as i32);
        assert!(
            v.evidence
                .last()
                .is_some_and(|e| e.starts_with("GPU answering again with recovery action NONE")),
            "{v:?}"
        );

        let cleared = s.apply_resets(up + 30 * S);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].0, 1);
        assert!(
            cleared[0].1.starts_with("GPU reset and recovered at ")
                && cleared[0].1.contains("was recovery action GPU_RESET"),
            "{cleared:?}"
        );
        let v = &s.verdicts(up + 31 * S)[1];
        assert_eq!(v.health, GpuHealth::Ok as i32);
        assert_eq!(v.reason, "");
        assert_eq!(v.evidence, vec![cleared[0].1.clone()]);
        assert!(s.apply_resets(up + 60 * S).is_empty(), "cleared once");
        // GPU 0 had nothing latched and nothing to say.
        assert!(s.verdicts(up + 31 * S)[0].evidence.is_empty());

        // A new Xid after the recovery fails it again, without the old note.
        s.observe_xid(obs(1, 79, up + 100 * S, XidSource::Nvml));
        let v = &s.verdicts(up + 101 * S)[1];
        assert_eq!(v.health, GpuHealth::Failed as i32);
        assert_eq!(v.evidence.len(), 1, "{v:?}");
        assert!(v.evidence[0].starts_with("Xid 79"), "{v:?}");
    }

    #[test]
    fn a_gpu_lost_before_its_xid_arrived_counts_as_seen_down() {
        let mut s = state(2).with_reset_settle(std::time::Duration::from_secs(30));
        // The poll sees the GPU lost first; the sample does not change
        // again when the Xid comes in.
        s.observe_sample(sample(lost(1)), NOW);
        s.observe_xid(obs(1, 79, NOW + S, XidSource::Nvml));
        s.observe_sample(sample(answering(1, RecoveryAction::None)), NOW + 60 * S);
        assert!(s.apply_resets(NOW + 89 * S).is_empty());
        assert_eq!(s.apply_resets(NOW + 90 * S).len(), 1);
        assert_eq!(s.verdicts(NOW + 90 * S)[1].health, GpuHealth::Ok as i32);
    }

    #[test]
    fn a_latched_failure_without_a_reset_stands() {
        let mut s = state(2).with_reset_settle(std::time::Duration::from_secs(30));
        s.observe_sample(sample(answering(1, RecoveryAction::None)), NOW);
        // A drill (or a driver that flags nothing): the GPU never looks down.
        s.observe_xid(obs(1, 79, NOW, XidSource::Drill));
        s.observe_sample(sample(answering(1, RecoveryAction::None)), NOW + S);
        assert!(s.apply_resets(NOW + 3600 * S).is_empty());
        assert_eq!(
            s.verdicts(NOW + 3600 * S)[1].health,
            GpuHealth::Failed as i32
        );
        // A driver without the recovery action field never proves a reset.
        let mut s = state(2);
        s.observe_xid(obs(1, 79, NOW, XidSource::Nvml));
        s.observe_sample(sample(lost(1)), NOW + S);
        s.observe_sample(sample(crate::probe::GpuSignals::unknown(1)), NOW + 2 * S);
        assert!(s.apply_resets(NOW + 3600 * S).is_empty());
        assert_eq!(
            s.verdicts(NOW + 3600 * S)[1].health,
            GpuHealth::Failed as i32
        );
    }
}
