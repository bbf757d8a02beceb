//! Bounds on what an agent sends, applied before the engine looks at it.
//!
//! An agent's reports are untrusted: a compromised or buggy node may send
//! anything the wire types allow. Everything about a GPU must name one the
//! node registered (so per-GPU state cannot grow with made-up indexes);
//! text is cut to a length that is fine to store, log and show; numbers
//! that cannot be measurements (NaN, infinities, negative times) are
//! dropped as if not reported. What was dropped is counted, so the caller
//! can say so.

use crate::messages::{GpuReading, HealthReport, JobProgress};
use crate::records::GpuRecord;

/// Xids taken from one health report; agents send what they saw since the
/// previous one (about a second), so more is a flood, not a GPU.
pub const MAX_XIDS_PER_REPORT: usize = 256;
/// A verdict's reason, an Xid's detail, one piece of evidence.
pub const MAX_AGENT_TEXT: usize = 512;
/// Pieces of evidence kept per verdict.
pub const MAX_EVIDENCE: usize = 16;
/// An Xid's source ("nvml", "kernel_log", "drill").
const MAX_SOURCE: usize = 32;
/// A rank's phase ("train", "checkpoint", ...).
const MAX_PHASE: usize = 32;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut with "…".
pub fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

fn registered(gpus: &[GpuRecord], index: u32) -> Option<&GpuRecord> {
    gpus.iter().find(|g| g.index == index)
}

/// Keeps the Xids and verdicts of GPUs the node registered (an Xid that
/// names a UUID must name that GPU's), at most [`MAX_XIDS_PER_REPORT`]
/// Xids, with bounded text. Returns how many Xids were dropped.
pub fn bound_health_report(report: &mut HealthReport, gpus: &[GpuRecord]) -> usize {
    let before = report.xids.len();
    report.xids.retain(|x| {
        registered(gpus, x.gpu_index).is_some_and(|g| x.uuid.is_empty() || x.uuid == g.uuid)
    });
    report.xids.truncate(MAX_XIDS_PER_REPORT);
    for x in &mut report.xids {
        clip(&mut x.source, MAX_SOURCE);
        clip(&mut x.detail, MAX_AGENT_TEXT);
    }
    report
        .verdicts
        .retain(|v| registered(gpus, v.index).is_some());
    for v in &mut report.verdicts {
        clip(&mut v.reason, MAX_AGENT_TEXT);
        v.evidence.truncate(MAX_EVIDENCE);
        for e in &mut v.evidence {
            clip(e, MAX_AGENT_TEXT);
        }
        // A set: the kinds are few, so a flood of repeats shrinks to them,
        // and the order is fixed so an unchanged verdict compares equal.
        v.causes.sort_unstable();
        v.causes.dedup();
        if v.health == crate::GpuHealth::Ok {
            // Causes are what made a GPU unhealthy: an ok GPU has none,
            // whatever the agent says, so none can corroborate anything.
            v.causes.clear();
        }
    }
    before - report.xids.len()
}

/// Keeps readings of registered GPUs whose values can be measurements.
pub fn bound_readings(readings: &mut Vec<GpuReading>, gpus: &[GpuRecord]) {
    readings.retain(|r| registered(gpus, r.index).is_some());
    readings.dedup_by_key(|r| r.index);
    for r in readings {
        r.temperature_c = r.temperature_c.filter(|v| v.is_finite());
        r.power_w = r.power_w.filter(|v| v.is_finite() && *v >= 0.0);
        r.utilization_gpu_pct = r.utilization_gpu_pct.filter(|v| *v <= 100);
        r.utilization_memory_pct = r.utilization_memory_pct.filter(|v| *v <= 100);
    }
}

/// Drops values that cannot be measurements and bounds the phase name.
pub fn bound_progress(progress: &mut JobProgress) {
    progress.loss = progress.loss.filter(|v| v.is_finite());
    progress.step_time_s = progress.step_time_s.filter(|v| v.is_finite() && *v >= 0.0);
    if progress.phase.len() > MAX_PHASE
        || !progress
            .phase
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        // Not a phase any trainer reports: counted as training, the
        // default, so it cannot hold the job in a long-deadline phase.
        progress.phase.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{GpuVerdict, XidEvent};

    fn gpus() -> Vec<GpuRecord> {
        (0..2)
            .map(|i| GpuRecord {
                index: i,
                uuid: format!("GPU-{i}"),
                name: "H100".to_owned(),
                pci_bus_id: String::new(),
                memory_total_bytes: None,
                health: crate::GpuHealth::Ok,
                health_reason: String::new(),
                evidence: Vec::new(),
                recovery_action: 0,
                causes: Vec::new(),
            })
            .collect()
    }

    fn xid(index: u32, uuid: &str, code: u32) -> XidEvent {
        XidEvent {
            gpu_index: index,
            uuid: uuid.to_owned(),
            xid: code,
            ..Default::default()
        }
    }

    #[test]
    fn only_xids_of_registered_gpus_with_their_uuid_are_kept_and_bounded() {
        let mut report = HealthReport {
            xids: vec![
                xid(0, "GPU-0", 79),
                xid(1, "", 48),
                xid(7, "GPU-7", 79),
                xid(1, "GPU-0", 79),
            ],
            ..Default::default()
        };
        assert_eq!(bound_health_report(&mut report, &gpus()), 2);
        let kept: Vec<(u32, u32)> = report.xids.iter().map(|x| (x.gpu_index, x.xid)).collect();
        assert_eq!(kept, vec![(0, 79), (1, 48)]);

        let mut flood = HealthReport {
            xids: (0..10_000).map(|c| xid(0, "GPU-0", c)).collect(),
            ..Default::default()
        };
        assert_eq!(
            bound_health_report(&mut flood, &gpus()),
            10_000 - MAX_XIDS_PER_REPORT
        );
        assert_eq!(flood.xids.len(), MAX_XIDS_PER_REPORT);
    }

    #[test]
    fn verdict_text_is_clipped_and_unknown_gpus_dropped() {
        let mut report = HealthReport {
            verdicts: vec![
                GpuVerdict {
                    index: 0,
                    reason: "é".repeat(1000),
                    evidence: vec!["x".repeat(5000); 100],
                    ..Default::default()
                },
                GpuVerdict {
                    index: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        bound_health_report(&mut report, &gpus());
        assert_eq!(report.verdicts.len(), 1);
        let v = &report.verdicts[0];
        assert!(v.reason.len() <= MAX_AGENT_TEXT && v.reason.ends_with('…'));
        assert_eq!(v.evidence.len(), MAX_EVIDENCE);
        assert!(v.evidence.iter().all(|e| e.len() <= MAX_AGENT_TEXT));
    }

    #[test]
    fn verdict_causes_become_a_set_and_an_ok_gpu_has_none() {
        use crate::records::GpuCauseKind::{Nvlink, Throttle};
        let mut report = HealthReport {
            verdicts: vec![
                GpuVerdict {
                    index: 0,
                    health: crate::GpuHealth::Degraded,
                    causes: [Throttle, Nvlink].repeat(10_000),
                    ..Default::default()
                },
                GpuVerdict {
                    index: 1,
                    health: crate::GpuHealth::Ok,
                    causes: vec![Throttle],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        bound_health_report(&mut report, &gpus());
        assert_eq!(report.verdicts[0].causes, vec![Nvlink, Throttle]);
        assert!(report.verdicts[1].causes.is_empty());
    }

    #[test]
    fn readings_of_unknown_gpus_and_impossible_values_are_dropped() {
        let mut readings = vec![
            GpuReading {
                index: 0,
                temperature_c: Some(f64::NAN),
                power_w: Some(-5.0),
                utilization_gpu_pct: Some(400),
                ..Default::default()
            },
            GpuReading {
                index: 12_345,
                ..Default::default()
            },
        ];
        bound_readings(&mut readings, &gpus());
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].temperature_c, None);
        assert_eq!(readings[0].power_w, None);
        assert_eq!(readings[0].utilization_gpu_pct, None);
    }

    #[test]
    fn progress_values_that_cannot_be_measurements_are_dropped() {
        let mut p = JobProgress {
            loss: Some(f64::INFINITY),
            step_time_s: Some(-1.0),
            phase: "checkpoint\n; rm -rf".to_owned(),
            ..Default::default()
        };
        bound_progress(&mut p);
        assert_eq!((p.loss, p.step_time_s, p.phase.as_str()), (None, None, ""));
        let mut ok = JobProgress {
            loss: Some(2.5),
            step_time_s: Some(0.4),
            phase: "checkpoint".to_owned(),
            ..Default::default()
        };
        bound_progress(&mut ok);
        assert_eq!(
            (ok.loss, ok.step_time_s, ok.phase.as_str()),
            (Some(2.5), Some(0.4), "checkpoint")
        );
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        let mut s = "ab€cd".to_owned();
        clip(&mut s, 5);
        assert!(s.len() <= 5 && s.ends_with('…'), "{s}");
        let mut short = "fine".to_owned();
        clip(&mut short, 5);
        assert_eq!(short, "fine");
    }
}
