//! Whether a GPU whose failure latched has since been reset and works
//! again. Pure: the samples and the time are arguments.
//!
//! A latched Xid (79, 48, ...) never clears by itself: nothing in the Xid
//! says the fault is over. What does change after a successful reset is
//! what the driver says about the GPU, so a reset counts as proven when,
//! in this order:
//!
//! 1. with the failure latched, the GPU was seen needing recovery: lost,
//!    missing from NVML's device count, or a recovery action other than
//!    NONE. A GPU that looked fine throughout proves nothing (a drill, or a
//!    driver that did not flag the fault), so its failure stands;
//! 2. then it answered again with recovery action NONE;
//! 3. and kept doing so, with no new latching Xid, for the settle period.
//!
//! Drivers without the recovery-action field never prove a reset: there
//! the failure stands until the agent restarts, as it always did.

use std::collections::BTreeMap;
use std::time::Duration;

use sup_proto::time::rfc3339_ms;
use sup_proto::v1::RecoveryAction;

use super::verdict::{describe, XidRecord};
use crate::probe::GpuSignals;

/// What one health sample says about a GPU, for telling a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Needs recovery; what was seen, for the evidence.
    Down(String),
    /// Answers, and the driver asks for no recovery action.
    Up,
    /// Cannot tell: no readings, or no recovery action to read.
    Unknown,
}

pub fn readiness(index: u32, signals: Option<&GpuSignals>, visible: Option<u32>) -> Readiness {
    let Some(visible) = visible else {
        return Readiness::Unknown;
    };
    if index >= visible {
        return Readiness::Down(format!("missing from NVML's device count ({visible})"));
    }
    let Some(s) = signals else {
        return Readiness::Unknown;
    };
    if let Some(lost) = &s.lost {
        return Readiness::Down(format!("lost (NVML: {lost})"));
    }
    match s.recovery_action {
        Some(RecoveryAction::None) => Readiness::Up,
        None | Some(RecoveryAction::Unspecified) => Readiness::Unknown,
        Some(action) => Readiness::Down(format!(
            "recovery action {}",
            action.as_str_name().trim_start_matches("RECOVERY_ACTION_")
        )),
    }
}

/// Per GPU: what has been seen of it while a failure was latched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetWatch {
    /// The latest sign that it needed recovery.
    down: Option<String>,
    /// Since when it has answered with recovery action NONE, after `down`.
    up_since: Option<i64>,
}

/// Where a GPU with a latched failure stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing latched: nothing to clear.
    NothingLatched,
    /// Never seen needing recovery since the failure latched: no reset.
    NoReset,
    /// Seen needing recovery (what was seen), and not answering with NONE.
    AwaitingRecovery(String),
    /// Answering with NONE; ok at `clears_at` unless that changes or a new
    /// latching Xid arrives.
    Settling { clears_at: i64, evidence: String },
    /// Reset and recovered: the latched Xids go; the line that says so.
    Recovered { evidence: String },
}

impl ResetWatch {
    /// Takes in one look at the GPU while a failure is latched.
    pub fn observe(&mut self, readiness: Readiness, now_ms: i64) {
        match readiness {
            Readiness::Down(seen) => {
                self.down = Some(seen);
                self.up_since = None;
            }
            Readiness::Up => {
                if self.down.is_some() && self.up_since.is_none() {
                    self.up_since = Some(now_ms);
                }
            }
            // Readings gone again: the settle starts over when they are back.
            Readiness::Unknown => self.up_since = None,
        }
    }

    pub fn decide(
        &self,
        latched: &BTreeMap<u32, XidRecord>,
        settle: Duration,
        now_ms: i64,
    ) -> Decision {
        let Some(last_xid) = latched.values().map(|r| r.at_unix_ms).max() else {
            return Decision::NothingLatched;
        };
        let Some(down) = &self.down else {
            return Decision::NoReset;
        };
        let Some(up_since) = self.up_since else {
            return Decision::AwaitingRecovery(down.clone());
        };
        // A latching Xid after the GPU came back restarts the wait; one
        // from before (a late copy) was part of what the reset undid.
        let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
        let clears_at = up_since.max(last_xid).saturating_add(settle_ms);
        if now_ms < clears_at {
            return Decision::Settling {
                clears_at,
                evidence: format!(
                    "GPU answering again with recovery action NONE since {} (was {down}): ok at {} unless a new Xid arrives",
                    rfc3339_ms(up_since),
                    rfc3339_ms(clears_at)
                ),
            };
        }
        let mut records: Vec<&XidRecord> = latched.values().collect();
        records.sort_by_key(|r| r.at_unix_ms);
        let cleared: Vec<String> = records.into_iter().map(describe).collect();
        Decision::Recovered {
            evidence: format!(
                "GPU reset and recovered at {}: was {down}, then recovery action NONE and answering since {}, no new Xid for {}; cleared {}",
                rfc3339_ms(clears_at),
                rfc3339_ms(up_since),
                humantime::format_duration(settle),
                cleared.join("; ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::XidSource;

    const NOW: i64 = 1_795_000_000_000;
    const SETTLE: Duration = Duration::from_secs(30);
    const S: i64 = 1000;

    fn answering(index: u32, action: RecoveryAction) -> GpuSignals {
        GpuSignals {
            index,
            recovery_action: Some(action),
            ..GpuSignals::default()
        }
    }

    fn lost(index: u32) -> GpuSignals {
        GpuSignals {
            index,
            lost: Some("GPU is lost".into()),
            ..GpuSignals::default()
        }
    }

    fn latched(records: &[(u32, i64)]) -> BTreeMap<u32, XidRecord> {
        records
            .iter()
            .map(|&(xid, at)| {
                (
                    xid,
                    XidRecord {
                        xid,
                        at_unix_ms: at,
                        source: XidSource::Nvml,
                        detail: String::new(),
                    },
                )
            })
            .collect()
    }

    fn look(signals: &GpuSignals) -> Readiness {
        readiness(signals.index, Some(signals), Some(8))
    }

    #[test]
    fn readiness_reads_lost_missing_and_the_recovery_action() {
        assert_eq!(
            look(&lost(3)),
            Readiness::Down("lost (NVML: GPU is lost)".into())
        );
        assert_eq!(
            readiness(7, None, Some(7)),
            Readiness::Down("missing from NVML's device count (7)".into())
        );
        assert_eq!(
            look(&answering(3, RecoveryAction::GpuReset)),
            Readiness::Down("recovery action GPU_RESET".into())
        );
        assert_eq!(
            look(&answering(3, RecoveryAction::DrainAndReset)),
            Readiness::Down("recovery action DRAIN_AND_RESET".into())
        );
        assert_eq!(look(&answering(3, RecoveryAction::None)), Readiness::Up);
        // No readings, no count, or a driver without the field: unknown.
        assert_eq!(readiness(3, None, Some(8)), Readiness::Unknown);
        assert_eq!(
            readiness(3, Some(&answering(3, RecoveryAction::None)), None),
            Readiness::Unknown
        );
        assert_eq!(look(&GpuSignals::unknown(3)), Readiness::Unknown);
    }

    #[test]
    fn nothing_latched_is_nothing_to_clear() {
        let w = ResetWatch::default();
        assert_eq!(
            w.decide(&BTreeMap::new(), SETTLE, NOW),
            Decision::NothingLatched
        );
    }

    #[test]
    fn a_gpu_never_seen_needing_recovery_was_not_reset() {
        let xids = latched(&[(48, NOW)]);
        let mut w = ResetWatch::default();
        // Healthy-looking all along (a drill, or a driver that says NONE).
        w.observe(Readiness::Up, NOW);
        assert_eq!(w.decide(&xids, SETTLE, NOW + 3600 * S), Decision::NoReset);
    }

    #[test]
    fn a_latched_failure_stays_while_the_recovery_action_is_not_none() {
        let xids = latched(&[(48, NOW)]);
        let mut w = ResetWatch::default();
        w.observe(look(&answering(2, RecoveryAction::GpuReset)), NOW + S);
        assert_eq!(
            w.decide(&xids, SETTLE, NOW + 3600 * S),
            Decision::AwaitingRecovery("recovery action GPU_RESET".into())
        );
    }

    #[test]
    fn a_latched_failure_stays_while_readings_are_absent() {
        let xids = latched(&[(79, NOW)]);
        let mut w = ResetWatch::default();
        w.observe(look(&lost(2)), NOW + S);
        assert_eq!(
            w.decide(&xids, SETTLE, NOW + 3600 * S),
            Decision::AwaitingRecovery("lost (NVML: GPU is lost)".into())
        );
        // Answering but without a recovery action to read: still unproven.
        w.observe(look(&GpuSignals::unknown(2)), NOW + 2 * S);
        w.observe(readiness(2, None, Some(8)), NOW + 3 * S);
        assert!(matches!(
            w.decide(&xids, SETTLE, NOW + 3600 * S),
            Decision::AwaitingRecovery(_)
        ));
    }

    #[test]
    fn it_clears_only_after_the_settle_with_action_none_and_readings_present() {
        let xids = latched(&[(79, NOW)]);
        let mut w = ResetWatch::default();
        w.observe(look(&lost(2)), NOW + S);
        let up = NOW + 10 * S;
        w.observe(look(&answering(2, RecoveryAction::None)), up);
        // Later identical looks do not move the start.
        w.observe(look(&answering(2, RecoveryAction::None)), up + 5 * S);
        let settling = w.decide(&xids, SETTLE, up + 29 * S);
        assert_eq!(
            settling,
            Decision::Settling {
                clears_at: up + 30 * S,
                evidence: format!(
                    "GPU answering again with recovery action NONE since {} (was lost (NVML: GPU is lost)): ok at {} unless a new Xid arrives",
                    rfc3339_ms(up),
                    rfc3339_ms(up + 30 * S)
                ),
            }
        );
        let Decision::Recovered { evidence } = w.decide(&xids, SETTLE, up + 30 * S) else {
            panic!("recovered after the settle")
        };
        assert_eq!(
            evidence,
            format!(
                "GPU reset and recovered at {}: was lost (NVML: GPU is lost), then recovery action NONE and answering since {}, no new Xid for 30s; cleared Xid 79 from nvml at {}",
                rfc3339_ms(up + 30 * S),
                rfc3339_ms(up),
                rfc3339_ms(NOW)
            )
        );
    }

    #[test]
    fn readings_lost_again_during_the_settle_start_it_over() {
        let xids = latched(&[(79, NOW)]);
        let mut w = ResetWatch::default();
        w.observe(look(&lost(2)), NOW + S);
        w.observe(look(&answering(2, RecoveryAction::None)), NOW + 2 * S);
        w.observe(look(&GpuSignals::unknown(2)), NOW + 10 * S);
        assert!(matches!(
            w.decide(&xids, SETTLE, NOW + 60 * S),
            Decision::AwaitingRecovery(_)
        ));
        w.observe(look(&answering(2, RecoveryAction::None)), NOW + 20 * S);
        assert!(matches!(
            w.decide(&xids, SETTLE, NOW + 49 * S),
            Decision::Settling { clears_at, .. } if clears_at == NOW + 50 * S
        ));
        // The driver asks for a reset again: back to waiting for one.
        w.observe(
            look(&answering(2, RecoveryAction::NodeReboot)),
            NOW + 30 * S,
        );
        assert_eq!(
            w.decide(&xids, SETTLE, NOW + 3600 * S),
            Decision::AwaitingRecovery("recovery action NODE_REBOOT".into())
        );
    }

    #[test]
    fn a_new_latching_xid_during_the_settle_restarts_the_wait() {
        let mut w = ResetWatch::default();
        w.observe(look(&lost(2)), NOW + S);
        let up = NOW + 10 * S;
        w.observe(look(&answering(2, RecoveryAction::None)), up);
        // Xid 48 twenty seconds into the settle: the wait starts again.
        let xids = latched(&[(79, NOW), (48, up + 20 * S)]);
        assert!(matches!(
            w.decide(&xids, SETTLE, up + 30 * S),
            Decision::Settling { clears_at, .. } if clears_at == up + 50 * S
        ));
        let Decision::Recovered { evidence } = w.decide(&xids, SETTLE, up + 50 * S) else {
            panic!("recovered 30s after the last Xid")
        };
        assert!(
            evidence.ends_with(&format!(
                "cleared Xid 79 from nvml at {}; Xid 48 from nvml at {}",
                rfc3339_ms(NOW),
                rfc3339_ms(up + 20 * S)
            )),
            "{evidence}"
        );
        // A late copy of an Xid from before the GPU came back does not.
        let late = latched(&[(79, up - S)]);
        assert!(matches!(
            w.decide(&late, SETTLE, up + 30 * S),
            Decision::Recovered { .. }
        ));
    }
}
