//! One GPU's verdict from its facts: a pure function of the rule table, the
//! latest polled signals, the Xid history and the time. No I/O, no clock:
//! `now` is an argument, so every rule is unit-tested with exact times.
//!
//! Every cause carries its own reason (one line, what to do) and evidence
//! (the reading or event behind it). The verdict is the worst cause; its
//! reason is that cause's, and the evidence lists them all.

use std::collections::BTreeMap;
use std::time::Duration;

use sup_proto::time::rfc3339_ms;
use sup_proto::v1::{GpuCauseKind as CauseKind, GpuHealth, GpuVerdict, RecoveryAction};

use super::rules::{Action, Rules, Severity};
use crate::probe::{GpuSignals, XidSource};

/// One Xid as remembered for judging: an [`XidObservation`] without the
/// GPU index (it is kept per GPU). Defined here, with the facts the verdict
/// reads, so that the state that collects these depends on the verdict and
/// not the other way round.
///
/// [`XidObservation`]: crate::probe::XidObservation
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidRecord {
    pub xid: u32,
    pub at_unix_ms: i64,
    pub source: XidSource,
    pub detail: String,
}

/// Everything known about one GPU.
#[derive(Debug, Clone, Copy)]
pub struct GpuFacts<'a> {
    pub index: u32,
    pub uuid: &'a str,
    /// The latest polled signals, if any were taken.
    pub signals: Option<&'a GpuSignals>,
    /// GPUs the driver counts now, and how many the agent registered.
    pub visible: Option<u32>,
    pub inventory: u32,
    /// Recent Xids on this GPU, oldest first.
    pub recent: &'a [XidRecord],
    /// The latest occurrence of each Xid whose single occurrence degrades
    /// or fails the GPU.
    pub latched: &'a BTreeMap<u32, XidRecord>,
    /// A recovery action injected by a drill; overrides the driver's.
    pub drill_recovery: Option<RecoveryAction>,
    /// Where a reset of this GPU stands (settling, or recovered), last in
    /// the evidence: a reset clears causes, so it is never a cause itself.
    pub reset_note: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cause {
    severity: Severity,
    /// Sent along so supd can judge what the finding means for the job
    /// (a throttled GPU slows it down, a lost one stops it) without
    /// parsing the reason.
    kind: CauseKind,
    reason: String,
    evidence: String,
    drill: bool,
}

pub fn judge(rules: &Rules, gpu: &GpuFacts<'_>, now_ms: i64) -> GpuVerdict {
    let mut causes = Vec::new();
    let recovery = recovery_causes(rules, gpu, &mut causes);
    xid_causes(rules, gpu, now_ms, &mut causes);
    presence_causes(rules, gpu, &mut causes);
    if let Some(s) = gpu.signals {
        memory_causes(rules, s, &mut causes);
        link_causes(rules, s, &mut causes);
    }

    // Worst first; within a severity, the order above (the driver's own
    // word, then events, then polled readings) decides the reason.
    causes.sort_by_key(|c| std::cmp::Reverse(c.severity));
    let health = match causes.first().map(|c| c.severity) {
        None => GpuHealth::Ok,
        Some(Severity::Degraded) => GpuHealth::Degraded,
        Some(Severity::Failed) => GpuHealth::Failed,
    };
    let top: Vec<&Cause> = causes
        .iter()
        .take_while(|c| Some(c.severity) == causes.first().map(|c| c.severity))
        .collect();
    let reason = match top.as_slice() {
        [] => String::new(),
        [only] => only.reason.clone(),
        [first, rest @ ..] => format!("{} (+{} more)", first.reason, rest.len()),
    };
    let drill = !top.is_empty() && top.iter().all(|c| c.drill);
    let kinds: Vec<i32> = causes.iter().map(|c| c.kind as i32).collect();
    GpuVerdict {
        index: gpu.index,
        uuid: gpu.uuid.to_owned(),
        health: health as i32,
        reason,
        evidence: causes
            .into_iter()
            .map(|c| c.evidence)
            .chain(gpu.reset_note.map(str::to_owned))
            .collect(),
        recovery_action: recovery.map_or(RecoveryAction::Unspecified, |(a, _)| a) as i32,
        drill,
        causes: kinds,
    }
}

/// The kind of an Xid cause. NVIDIA's Xid catalog fixes what these codes
/// are about (not site policy, which the rule table holds), and NVLink or
/// ECC trouble slows a job down rather than stopping it.
fn xid_kind(code: u32) -> CauseKind {
    match code {
        74 | 144..=150 => CauseKind::Nvlink,
        // Row remap recorded, high single-bit rate, contained ECC error.
        63 | 92 | 94 => CauseKind::EccPressure,
        _ => CauseKind::Xid,
    }
}

fn push(
    causes: &mut Vec<Cause>,
    kind: CauseKind,
    action: Action,
    reason: String,
    evidence: String,
    drill: bool,
) {
    if let Some(severity) = action.severity() {
        causes.push(Cause {
            severity,
            kind,
            reason,
            evidence,
            drill,
        });
    }
}

/// The driver's recovery action, or a drill's in its place. Returns the
/// action in force and whether it is a drill's.
fn recovery_causes(
    rules: &Rules,
    gpu: &GpuFacts<'_>,
    causes: &mut Vec<Cause>,
) -> Option<(RecoveryAction, bool)> {
    let (action, drill) = match gpu.drill_recovery {
        Some(action) => (action, true),
        None => (gpu.signals.and_then(|s| s.recovery_action)?, false),
    };
    let r = &rules.recovery_action;
    let (rule, name, advice) = match action {
        RecoveryAction::GpuReset => (r.gpu_reset, "GPU_RESET", "reset the GPU"),
        RecoveryAction::NodeReboot => (r.node_reboot, "NODE_REBOOT", "reboot the node"),
        RecoveryAction::DrainP2p => (
            r.drain_p2p,
            "DRAIN_P2P",
            "drain peer-to-peer traffic, then reset the GPU",
        ),
        RecoveryAction::DrainAndReset => (
            r.drain_and_reset,
            "DRAIN_AND_RESET",
            "drain the GPU, then reset it",
        ),
        RecoveryAction::None | RecoveryAction::Unspecified => return Some((action, drill)),
    };
    let from = if drill { "drill" } else { "driver" };
    push(
        causes,
        CauseKind::RecoveryAction,
        rule,
        format!("recovery action {name} ({from}): {advice}"),
        format!("GPU recovery action {name} reported by the {from}"),
        drill,
    );
    Some((action, drill))
}

pub(super) fn describe(record: &XidRecord) -> String {
    let mut text = format!(
        "Xid {} from {} at {}",
        record.xid,
        record.source.wire_name(),
        rfc3339_ms(record.at_unix_ms)
    );
    if !record.detail.is_empty() {
        text.push_str(": ");
        text.push_str(&record.detail);
    }
    text
}

fn xid_causes(rules: &Rules, gpu: &GpuFacts<'_>, now_ms: i64, causes: &mut Vec<Cause>) {
    // Single occurrences that stand on their own, most recent first.
    let mut latched: Vec<&XidRecord> = gpu.latched.values().collect();
    latched.sort_by_key(|r| std::cmp::Reverse(r.at_unix_ms));
    for record in latched {
        let (action, reason, hold) = match rules.xid(record.xid) {
            Some(rule) => (
                rule.action,
                format!("Xid {} ({}): {}", record.xid, rule.meaning, rule.advice),
                rule.hold,
            ),
            None => (
                rules.unknown_xid,
                format!("Xid {} (not in the rule table)", record.xid),
                None,
            ),
        };
        if hold.is_some_and(|hold| !within(record.at_unix_ms, now_ms, hold)) {
            continue;
        }
        push(
            causes,
            xid_kind(record.xid),
            action,
            reason,
            describe(record),
            record.source == XidSource::Drill,
        );
    }

    // Repetition: the same Xid often enough within its window.
    let mut codes: Vec<u32> = gpu.recent.iter().map(|r| r.xid).collect();
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let Some(rule) = rules.xid(code) else {
            continue;
        };
        let Some(repeat) = &rule.repeat else { continue };
        let hits: Vec<&XidRecord> = gpu
            .recent
            .iter()
            .filter(|r| r.xid == code && within(r.at_unix_ms, now_ms, repeat.within))
            .collect();
        let (Ok(n), Some(last)) = (u32::try_from(hits.len()), hits.last()) else {
            continue;
        };
        if n < repeat.count {
            continue;
        }
        let window = humantime::format_duration(repeat.within);
        push(
            causes,
            xid_kind(code),
            repeat.action,
            format!(
                "Xid {code} ({}) {n} times within {window}: {}",
                rule.meaning, repeat.advice
            ),
            format!(
                "Xid {code} {n} times within {window}, last: {}",
                describe(last)
            ),
            hits.iter().all(|r| r.source == XidSource::Drill),
        );
    }
}

fn within(at_ms: i64, now_ms: i64, window: Duration) -> bool {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(at_ms) <= window_ms
}

fn presence_causes(rules: &Rules, gpu: &GpuFacts<'_>, causes: &mut Vec<Cause>) {
    if let Some(visible) = gpu.visible {
        if gpu.index >= visible {
            push(
                causes,
                CauseKind::Lost,
                rules.checks.gpu_missing,
                format!(
                    "GPU missing: NVML sees {visible} of the {} GPUs registered: power-cycle the node",
                    gpu.inventory
                ),
                format!(
                    "NVML device count {visible}, {} at agent start",
                    gpu.inventory
                ),
                false,
            );
            return;
        }
    }
    if let Some(lost) = gpu.signals.and_then(|s| s.lost.as_deref()) {
        push(
            causes,
            CauseKind::Lost,
            rules.checks.gpu_lost,
            format!("GPU lost (NVML: {lost}): power-cycle the node"),
            format!("NVML: {lost}"),
            false,
        );
    }
}

fn memory_causes(rules: &Rules, s: &GpuSignals, causes: &mut Vec<Cause>) {
    let c = &rules.checks;
    if let Some(dbe) = s.ecc_dbe_volatile.filter(|&n| n > 0) {
        push(
            causes,
            CauseKind::MemoryFault,
            c.ecc_dbe_volatile,
            format!("{dbe} volatile double-bit ECC error(s): reset the GPU"),
            format!("ECC double-bit errors since driver load: {dbe}"),
            false,
        );
    }
    if s.remap_failure == Some(true) {
        push(
            causes,
            CauseKind::MemoryFault,
            c.row_remap_failure,
            "row remapping failed: reset the GPU; replacement candidate".to_owned(),
            format!(
                "row remap failure; rows remapped: {} uncorrectable, {} correctable",
                count_text(s.remapped_uncorrectable),
                count_text(s.remapped_correctable)
            ),
            false,
        );
    }
    if s.remap_pending == Some(true) {
        push(
            causes,
            CauseKind::EccPressure,
            c.row_remap_pending,
            "row remap pending: reset the GPU to apply it".to_owned(),
            "row remap pending".to_owned(),
            false,
        );
    }
    if s.retired_pages_pending == Some(true) {
        push(
            causes,
            CauseKind::EccPressure,
            c.retired_pages_pending,
            "page retirement pending: reset the GPU to apply it".to_owned(),
            "retired pages pending".to_owned(),
            false,
        );
    }
    let retired = match (s.retired_pages_sbe, s.retired_pages_dbe) {
        (None, None) => None,
        (sbe, dbe) => Some(sbe.unwrap_or(0) + dbe.unwrap_or(0)),
    };
    if let Some(retired) = retired.filter(|&n| n >= c.retired_pages_limit) {
        push(
            causes,
            CauseKind::EccPressure,
            c.retired_pages_over_limit,
            format!(
                "{retired} retired pages (limit {}): replace the GPU",
                c.retired_pages_limit
            ),
            format!(
                "retired pages: {} single-bit, {} double-bit",
                count_text(s.retired_pages_sbe),
                count_text(s.retired_pages_dbe)
            ),
            false,
        );
    }
}

fn count_text(n: Option<u64>) -> String {
    n.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}

fn link_causes(rules: &Rules, s: &GpuSignals, causes: &mut Vec<Cause>) {
    let c = &rules.checks;
    if let (Some(width), Some(max)) = (s.pcie_width, s.pcie_width_max) {
        if width < max {
            push(
                causes,
                CauseKind::PcieDowngrade,
                c.pcie_width_below_max,
                format!("PCIe link x{width} of x{max}: check the slot, riser and cable"),
                format!("PCIe link width x{width}, maximum x{max}"),
                false,
            );
        }
    }
    if let (Some(gen), Some(max), Some(util)) = (s.pcie_gen, s.pcie_gen_max, s.utilization_gpu_pct)
    {
        if gen < max && util >= c.pcie_gen_min_utilization_pct {
            push(
                causes,
                CauseKind::PcieDowngrade,
                c.pcie_gen_below_max,
                format!("PCIe link gen {gen} of {max} under load: check the slot, riser and cable"),
                format!("PCIe link gen {gen}, maximum {max}, GPU utilization {util}%"),
                false,
            );
        }
    }
    if !s.nvlink_down.is_empty() {
        let links: Vec<String> = s.nvlink_down.iter().map(u32::to_string).collect();
        let of = s
            .nvlink_links
            .map_or_else(String::new, |n| format!(" of {n}"));
        push(
            causes,
            CauseKind::Nvlink,
            c.nvlink_down,
            format!(
                "NVLink link(s) {} down{of}: check the NVLink fabric",
                links.join(", ")
            ),
            format!("NVLink links inactive: {}{of}", links.join(", ")),
            false,
        );
    }
    if let Some(bits) = s.throttle_reasons {
        let active: Vec<&str> = c
            .throttle_reasons
            .iter()
            .filter(|(_, bit)| bits & bit != 0)
            .map(|(name, _)| *name)
            .collect();
        if !active.is_empty() {
            push(
                causes,
                CauseKind::Throttle,
                c.throttle,
                format!(
                    "clocks throttled ({}): check cooling and power",
                    active.join(", ")
                ),
                format!("clock throttle reasons 0x{bits:x}: {}", active.join(", ")),
                false,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000;
    const MIN: i64 = 60_000;

    fn healthy(index: u32) -> GpuSignals {
        GpuSignals {
            index,
            lost: None,
            recovery_action: Some(RecoveryAction::None),
            ecc_sbe_volatile: Some(3),
            ecc_dbe_volatile: Some(0),
            remapped_correctable: Some(0),
            remapped_uncorrectable: Some(0),
            remap_pending: Some(false),
            remap_failure: Some(false),
            retired_pages_sbe: None,
            retired_pages_dbe: None,
            retired_pages_pending: None,
            pcie_gen: Some(5),
            pcie_gen_max: Some(5),
            pcie_width: Some(16),
            pcie_width_max: Some(16),
            nvlink_links: Some(18),
            nvlink_down: Vec::new(),
            throttle_reasons: Some(0x4), // at its power cap: normal
            utilization_gpu_pct: Some(95),
        }
    }

    fn xid(code: u32, at: i64, source: XidSource) -> XidRecord {
        XidRecord {
            xid: code,
            at_unix_ms: at,
            source,
            detail: String::new(),
        }
    }

    struct Case {
        signals: Option<GpuSignals>,
        visible: Option<u32>,
        recent: Vec<XidRecord>,
        latched: BTreeMap<u32, XidRecord>,
        drill_recovery: Option<RecoveryAction>,
        reset_note: Option<&'static str>,
    }

    impl Case {
        fn new() -> Case {
            Case {
                signals: Some(healthy(2)),
                visible: Some(8),
                recent: Vec::new(),
                latched: BTreeMap::new(),
                drill_recovery: None,
                reset_note: None,
            }
        }

        fn signals(mut self, f: impl FnOnce(&mut GpuSignals)) -> Case {
            if let Some(s) = self.signals.as_mut() {
                f(s);
            }
            self
        }

        /// An Xid as the state module would record it.
        fn xid(mut self, record: XidRecord) -> Case {
            let rules = Rules::defaults();
            let action = rules
                .xid(record.xid)
                .map_or(rules.unknown_xid, |r| r.action);
            if action.severity().is_some() {
                self.latched.insert(record.xid, record.clone());
            }
            self.recent.push(record);
            self
        }

        fn judge(&self) -> GpuVerdict {
            judge(
                &Rules::defaults(),
                &GpuFacts {
                    index: 2,
                    uuid: "GPU-2",
                    signals: self.signals.as_ref(),
                    visible: self.visible,
                    inventory: 8,
                    recent: &self.recent,
                    latched: &self.latched,
                    drill_recovery: self.drill_recovery,
                    reset_note: self.reset_note,
                },
                NOW,
            )
        }
    }

    fn health(v: &GpuVerdict) -> GpuHealth {
        GpuHealth::try_from(v.health).expect("valid health")
    }

    #[test]
    fn a_healthy_gpu_is_ok_with_no_reason() {
        let v = Case::new().judge();
        assert_eq!(health(&v), GpuHealth::Ok);
        assert_eq!(v.reason, "");
        assert!(v.evidence.is_empty());
        assert_eq!(v.recovery_action, RecoveryAction::None as i32);
        assert_eq!(v.index, 2);
        assert_eq!(v.uuid, "GPU-2");
        assert!(!v.drill);
    }

    #[test]
    fn no_signals_at_all_is_ok_and_recovery_action_unspecified() {
        let mut case = Case::new();
        case.signals = None;
        let v = case.judge();
        assert_eq!(health(&v), GpuHealth::Ok);
        assert_eq!(v.recovery_action, RecoveryAction::Unspecified as i32);
    }

    #[test]
    fn xid_79_fails_the_gpu_and_names_itself() {
        let v = Case::new()
            .xid(xid(79, NOW - 5_000, XidSource::Nvml))
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert_eq!(
            v.reason,
            "Xid 79 (GPU has fallen off the bus): power-cycle the node"
        );
        assert_eq!(v.evidence.len(), 1);
        assert!(
            v.evidence[0].starts_with("Xid 79 from nvml at 2026-"),
            "{:?}",
            v.evidence
        );
    }

    #[test]
    fn a_single_application_xid_is_not_a_hardware_verdict() {
        for code in [13, 31, 43, 45] {
            let v = Case::new()
                .xid(xid(code, NOW, XidSource::KernelLog))
                .judge();
            assert_eq!(health(&v), GpuHealth::Ok, "Xid {code}: {v:?}");
        }
    }

    #[test]
    fn repeated_xid_13_degrades_within_the_window_only() {
        let twice = Case::new()
            .xid(xid(13, NOW - 2 * MIN, XidSource::Nvml))
            .xid(xid(13, NOW - MIN, XidSource::Nvml));
        assert_eq!(health(&twice.judge()), GpuHealth::Ok);
        let thrice = twice.xid(xid(13, NOW, XidSource::Nvml));
        let v = thrice.judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
        assert_eq!(
            v.reason,
            "Xid 13 (graphics engine exception / MMU fault) 3 times within 10m: repeated on one GPU: diagnose the GPU"
        );
        // Spread over more than the window: no escalation.
        let spread = Case::new()
            .xid(xid(13, NOW - 30 * MIN, XidSource::Nvml))
            .xid(xid(13, NOW - 15 * MIN, XidSource::Nvml))
            .xid(xid(13, NOW, XidSource::Nvml));
        assert_eq!(health(&spread.judge()), GpuHealth::Ok);
    }

    #[test]
    fn xid_74_degrades_once_and_fails_when_repeated() {
        let once = Case::new().xid(xid(74, NOW - 10 * MIN, XidSource::Nvml));
        assert_eq!(health(&once.judge()), GpuHealth::Degraded);
        let v = once.xid(xid(74, NOW, XidSource::Nvml)).judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(
            v.reason
                .starts_with("Xid 74 (NVLink error) 2 times within 1h"),
            "{}",
            v.reason
        );
        // The single-occurrence degrade is still evidence.
        assert_eq!(v.evidence.len(), 2, "{:?}", v.evidence);
    }

    #[test]
    fn recovery_actions_follow_the_table_and_lead_the_reason() {
        for (action, expected) in [
            (RecoveryAction::GpuReset, GpuHealth::Failed),
            (RecoveryAction::NodeReboot, GpuHealth::Failed),
            (RecoveryAction::DrainAndReset, GpuHealth::Failed),
            (RecoveryAction::DrainP2p, GpuHealth::Degraded),
            (RecoveryAction::None, GpuHealth::Ok),
        ] {
            let v = Case::new()
                .signals(|s| s.recovery_action = Some(action))
                .judge();
            assert_eq!(health(&v), expected, "{action:?}");
            assert_eq!(v.recovery_action, action as i32);
        }
        let v = Case::new()
            .signals(|s| s.recovery_action = Some(RecoveryAction::NodeReboot))
            .xid(xid(48, NOW, XidSource::Nvml))
            .judge();
        assert_eq!(
            v.reason,
            "recovery action NODE_REBOOT (driver): reboot the node (+1 more)"
        );
        assert!(!v.drill);
    }

    #[test]
    fn memory_faults() {
        let v = Case::new()
            .signals(|s| s.remap_failure = Some(true))
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(v.reason.starts_with("row remapping failed"), "{}", v.reason);
        let v = Case::new()
            .signals(|s| s.remap_pending = Some(true))
            .judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
        let v = Case::new()
            .signals(|s| s.ecc_dbe_volatile = Some(2))
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert_eq!(
            v.reason,
            "2 volatile double-bit ECC error(s): reset the GPU"
        );
        let v = Case::new()
            .signals(|s| {
                s.retired_pages_sbe = Some(50);
                s.retired_pages_dbe = Some(10);
            })
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        let v = Case::new()
            .signals(|s| s.retired_pages_pending = Some(true))
            .judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
    }

    #[test]
    fn lost_and_missing_gpus_fail() {
        let v = Case::new()
            .signals(|s| s.lost = Some("GPU is lost".into()))
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert_eq!(
            v.reason,
            "GPU lost (NVML: GPU is lost): power-cycle the node"
        );
        let mut case = Case::new();
        case.visible = Some(2);
        let v = case.judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(
            v.reason.starts_with("GPU missing: NVML sees 2 of the 8"),
            "{}",
            v.reason
        );
        // Unknown count: nothing is assumed missing.
        case.visible = None;
        assert_eq!(health(&case.judge()), GpuHealth::Ok);
    }

    #[test]
    fn link_problems_degrade() {
        let v = Case::new().signals(|s| s.pcie_width = Some(8)).judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
        assert_eq!(
            v.reason,
            "PCIe link x8 of x16: check the slot, riser and cable"
        );
        // A slow link on an idle GPU is power saving, not a fault.
        let idle = Case::new().signals(|s| {
            s.pcie_gen = Some(1);
            s.utilization_gpu_pct = Some(0);
        });
        assert_eq!(health(&idle.judge()), GpuHealth::Ok);
        let busy = Case::new().signals(|s| s.pcie_gen = Some(3));
        assert_eq!(health(&busy.judge()), GpuHealth::Degraded);
        let v = Case::new().signals(|s| s.nvlink_down = vec![3, 7]).judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
        assert_eq!(
            v.reason,
            "NVLink link(s) 3, 7 down of 18: check the NVLink fabric"
        );
        let v = Case::new()
            .signals(|s| s.throttle_reasons = Some(0x8 | 0x40))
            .judge();
        assert_eq!(health(&v), GpuHealth::Degraded);
        assert_eq!(
            v.reason,
            "clocks throttled (hw_slowdown, hw_thermal_slowdown): check cooling and power"
        );
    }

    #[test]
    fn each_cause_carries_its_kind_in_the_evidence_order() {
        let kinds = |v: &GpuVerdict| -> Vec<CauseKind> {
            v.causes
                .iter()
                .map(|&k| CauseKind::try_from(k).expect("a known kind"))
                .collect()
        };
        assert!(Case::new().judge().causes.is_empty(), "healthy: no causes");
        let v = Case::new()
            .signals(|s| s.throttle_reasons = Some(0x8))
            .judge();
        assert_eq!(kinds(&v), vec![CauseKind::Throttle]);
        let v = Case::new()
            .signals(|s| {
                s.pcie_width = Some(4);
                s.remap_failure = Some(true);
                s.nvlink_down = vec![1];
                s.remap_pending = Some(true);
            })
            .judge();
        assert_eq!(
            kinds(&v),
            vec![
                CauseKind::MemoryFault,
                CauseKind::EccPressure,
                CauseKind::PcieDowngrade,
                CauseKind::Nvlink
            ],
            "worst first, like the evidence: {:?}",
            v.evidence
        );
        assert_eq!(v.causes.len(), v.evidence.len());
        // Xids by what they are about.
        let v = Case::new().xid(xid(74, NOW - MIN, XidSource::Nvml)).judge();
        assert_eq!(kinds(&v), vec![CauseKind::Nvlink]);
        let v = Case::new().xid(xid(79, NOW - MIN, XidSource::Nvml)).judge();
        assert_eq!(kinds(&v), vec![CauseKind::Xid]);
        // Sw power cap alone is not a cause, so no kind either.
        let v = Case::new()
            .signals(|s| s.throttle_reasons = Some(0x4))
            .judge();
        assert!(v.causes.is_empty());
    }

    #[test]
    fn failure_outranks_degradation_and_evidence_lists_all() {
        let v = Case::new()
            .signals(|s| {
                s.pcie_width = Some(4);
                s.remap_failure = Some(true);
            })
            .judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(v.reason.starts_with("row remapping failed"), "{}", v.reason);
        assert_eq!(v.evidence.len(), 2);
        assert!(
            v.evidence[1].starts_with("PCIe link width x4"),
            "{:?}",
            v.evidence
        );
    }

    #[test]
    fn drills_are_marked_and_override_the_drivers_recovery_action() {
        let mut case = Case::new();
        case.drill_recovery = Some(RecoveryAction::NodeReboot);
        let v = case.judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert_eq!(
            v.reason,
            "recovery action NODE_REBOOT (drill): reboot the node"
        );
        assert_eq!(v.recovery_action, RecoveryAction::NodeReboot as i32);
        assert!(v.drill);

        let v = Case::new().xid(xid(79, NOW, XidSource::Drill)).judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(v.drill);
        assert!(
            v.evidence[0].starts_with("Xid 79 from drill"),
            "{:?}",
            v.evidence
        );

        // A real failure next to a drill: not a drill verdict.
        let v = Case::new()
            .xid(xid(79, NOW, XidSource::Drill))
            .signals(|s| s.remap_failure = Some(true))
            .judge();
        assert!(!v.drill);
    }

    #[test]
    fn a_reset_note_is_the_last_evidence_and_never_a_cause() {
        let mut case = Case::new();
        case.reset_note = Some("GPU reset and recovered at T");
        let v = case.judge();
        assert_eq!(health(&v), GpuHealth::Ok);
        assert_eq!(v.reason, "");
        assert_eq!(v.evidence, vec!["GPU reset and recovered at T".to_owned()]);
        let mut case = Case::new().xid(xid(79, NOW, XidSource::Nvml));
        case.reset_note = Some("GPU answering again");
        let v = case.judge();
        assert_eq!(health(&v), GpuHealth::Failed);
        assert!(v.reason.starts_with("Xid 79"), "{}", v.reason);
        assert_eq!(v.evidence.len(), 2, "{:?}", v.evidence);
        assert_eq!(v.evidence[1], "GPU answering again");
    }

    #[test]
    fn a_hold_expires_a_single_occurrence() {
        let mut rules = Rules::defaults();
        if let Some(rule) = rules.xids.get_mut(&48) {
            rule.hold = Some(Duration::from_secs(3600));
        }
        let case = Case::new().xid(xid(48, NOW - 2 * 3600 * 1000, XidSource::Nvml));
        let facts = GpuFacts {
            index: 2,
            uuid: "GPU-2",
            signals: case.signals.as_ref(),
            visible: case.visible,
            inventory: 8,
            recent: &case.recent,
            latched: &case.latched,
            drill_recovery: None,
            reset_note: None,
        };
        assert_eq!(judge(&rules, &facts, NOW).health, GpuHealth::Ok as i32);
        assert_eq!(
            judge(&Rules::defaults(), &facts, NOW).health,
            GpuHealth::Failed as i32
        );
    }
}
