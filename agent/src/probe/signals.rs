//! What probes report about GPU health, for the health monitor to judge:
//! polled signals per GPU. (Xid events, which arrive as they happen rather
//! than on the poll, are in `xid`.)
//!
//! These are raw facts, not verdicts: "PCIe x8 of x16", not "degraded". The
//! rule table in `crate::health` turns them into verdicts. As with
//! telemetry, a signal the probe could not read is `None`, never zero or
//! false, so "no errors" is never confused with "could not ask".

use sup_proto::v1::RecoveryAction;

/// One polled look at every inventoried GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthSample {
    /// One entry per inventoried GPU, by index.
    pub gpus: Vec<GpuSignals>,
    /// GPUs the driver counts now; `None` when it could not say.
    pub visible_gpus: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSignals {
    pub index: u32,
    /// Set when the driver reports the GPU lost or needing a reset; the
    /// driver's own words, for the evidence.
    pub lost: Option<String>,
    /// The driver's GPU recovery action (driver 570+); `None` on drivers
    /// that do not have the field.
    pub recovery_action: Option<RecoveryAction>,
    /// Volatile (since driver load) ECC error counts.
    pub ecc_sbe_volatile: Option<u64>,
    pub ecc_dbe_volatile: Option<u64>,
    /// Row remapping (Ampere and newer).
    pub remapped_correctable: Option<u64>,
    pub remapped_uncorrectable: Option<u64>,
    pub remap_pending: Option<bool>,
    pub remap_failure: Option<bool>,
    /// Page retirement (before Ampere).
    pub retired_pages_sbe: Option<u64>,
    pub retired_pages_dbe: Option<u64>,
    pub retired_pages_pending: Option<bool>,
    pub pcie_gen: Option<u32>,
    pub pcie_gen_max: Option<u32>,
    pub pcie_width: Option<u32>,
    pub pcie_width_max: Option<u32>,
    /// NVLink links the GPU has; `None` without NVLink or when unreadable.
    pub nvlink_links: Option<u32>,
    /// Links (by number) that should be up and are not.
    pub nvlink_down: Vec<u32>,
    /// `nvmlClocksThrottleReason*` bits.
    pub throttle_reasons: Option<u64>,
    /// Taken alongside, because some checks only make sense under load.
    pub utilization_gpu_pct: Option<u32>,
}

impl GpuSignals {
    /// A GPU known only by index: every reading absent.
    pub fn unknown(index: u32) -> GpuSignals {
        GpuSignals {
            index,
            ..GpuSignals::default()
        }
    }
}
