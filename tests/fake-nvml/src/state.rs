//! The fake driver's state: what the JSON file says (see README.md), with
//! healthy defaults for everything it leaves out, and the bookkeeping that
//! lives only in the process (init count, Xids already delivered).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

/// How long a state-file check is trusted before the file is stat'ed again.
/// Keeps the fake's own cost out of the agent's per-poll numbers while still
/// noticing a rewrite well within any test's patience.
const RECHECK_AFTER: Duration = Duration::from_millis(20);

pub const DEFAULT_GPU_COUNT: u32 = 8;

/// The state file, as written by a test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileState {
    pub driver_version: String,
    /// GPUs present; `gpus` entries describe the first ones, the rest get
    /// defaults. Defaults to `gpus.len()`, or 8 when `gpus` is empty too.
    pub gpu_count: Option<u32>,
    /// What nvmlDeviceGetCount reports now (a GPU that dropped off the bus
    /// entirely); defaults to the GPU count.
    pub visible_gpus: Option<u32>,
    pub gpus: Vec<GpuSpec>,
    /// Feature names that are "not supported" on every GPU.
    pub not_supported: Vec<String>,
    /// Xid events to deliver through nvmlEventSetWait, each once.
    pub xids: Vec<XidSpec>,
    /// When set, nvmlInit fails with this NVML error ("driver_not_loaded",
    /// "no_permission", "unknown", "lib_rm_version_mismatch").
    pub init_error: Option<String>,
}

impl Default for FileState {
    fn default() -> Self {
        FileState {
            driver_version: "570.124.06".to_owned(),
            gpu_count: None,
            visible_gpus: None,
            gpus: Vec::new(),
            not_supported: Vec::new(),
            xids: Vec::new(),
            init_error: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuSpec {
    pub uuid: Option<String>,
    pub name: String,
    pub pci_bus_id: Option<String>,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub temperature_c: u32,
    pub power_mw: u32,
    pub utilization_gpu_pct: u32,
    pub utilization_memory_pct: u32,
    pub sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
    pub ecc_sbe_volatile: u64,
    pub ecc_dbe_volatile: u64,
    pub remapped_correctable: u32,
    pub remapped_uncorrectable: u32,
    pub remap_pending: bool,
    pub remap_failure: bool,
    pub retired_sbe: u32,
    pub retired_dbe: u32,
    pub retired_pending: bool,
    pub pcie_gen: u32,
    pub pcie_gen_max: u32,
    pub pcie_width: u32,
    pub pcie_width_max: u32,
    /// NVLink links the GPU has (0 for a PCIe card without NVLink).
    pub nvlink_links: u32,
    /// Links among them that are inactive.
    pub nvlink_down: Vec<u32>,
    /// nvmlClocksThrottleReason* bits.
    pub throttle_reasons: u64,
    /// none | gpu_reset | node_reboot | drain_p2p | drain_and_reset
    pub recovery_action: String,
    /// Every call on this GPU answers NVML_ERROR_GPU_IS_LOST.
    pub lost: bool,
    /// Feature names that are "not supported" on this GPU.
    pub not_supported: Vec<String>,
}

impl Default for GpuSpec {
    /// A healthy, busy H100 SXM.
    fn default() -> Self {
        GpuSpec {
            uuid: None,
            name: "NVIDIA H100 80GB HBM3".to_owned(),
            pci_bus_id: None,
            memory_total_bytes: 85_520_809_984,
            memory_used_bytes: 61_203_283_968,
            temperature_c: 52,
            power_mw: 512_000,
            utilization_gpu_pct: 97,
            utilization_memory_pct: 41,
            sm_clock_mhz: 1980,
            memory_clock_mhz: 2619,
            ecc_sbe_volatile: 0,
            ecc_dbe_volatile: 0,
            remapped_correctable: 0,
            remapped_uncorrectable: 0,
            remap_pending: false,
            remap_failure: false,
            retired_sbe: 0,
            retired_dbe: 0,
            retired_pending: false,
            pcie_gen: 5,
            pcie_gen_max: 5,
            pcie_width: 16,
            pcie_width_max: 16,
            nvlink_links: 18,
            nvlink_down: Vec::new(),
            throttle_reasons: 0,
            recovery_action: "none".to_owned(),
            lost: false,
            not_supported: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XidSpec {
    /// Unique per event: an id already delivered is never delivered again,
    /// so a test appends events to the list instead of replacing it.
    pub id: u64,
    pub gpu: u32,
    pub xid: u64,
}

/// Feature names a state file may list under `not_supported`.
pub const FEATURES: &[&str] = &[
    "temperature",
    "power",
    "utilization",
    "clocks",
    "memory",
    "ecc",
    "remapping",
    "retired_pages",
    "pcie",
    "nvlink",
    "throttle",
    "recovery_action",
    "events",
    "field_values",
];

/// One GPU as the fake serves it: the spec with its identity filled in.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub uuid: String,
    pub pci_bus_id: String,
    pub spec: GpuSpec,
    /// Global and per-GPU `not_supported`, merged.
    pub unsupported: HashSet<String>,
}

impl Gpu {
    pub fn supports(&self, feature: &str) -> bool {
        !self.unsupported.contains(feature)
    }
}

/// The parsed file, expanded to one `Gpu` per index.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub driver_version: String,
    pub gpus: Vec<Gpu>,
    pub visible: u32,
    pub xids: Vec<XidSpec>,
    pub init_error: Option<String>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Result<Snapshot, String> {
        let file: FileState = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Snapshot::from_file(file)
    }

    pub fn from_file(file: FileState) -> Result<Snapshot, String> {
        let count = file.gpu_count.unwrap_or(match file.gpus.len() {
            0 => DEFAULT_GPU_COUNT,
            n => u32::try_from(n).map_err(|_| "too many GPUs".to_owned())?,
        });
        if (count as usize) < file.gpus.len() {
            return Err(format!(
                "gpu_count {count} is less than the {} entries in gpus",
                file.gpus.len()
            ));
        }
        for name in file
            .not_supported
            .iter()
            .chain(file.gpus.iter().flat_map(|g| g.not_supported.iter()))
        {
            if !FEATURES.contains(&name.as_str()) {
                return Err(format!(
                    "unknown feature {name:?} in not_supported (known: {})",
                    FEATURES.join(", ")
                ));
            }
        }
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let spec = file.gpus.get(index as usize).cloned().unwrap_or_default();
            if recovery_action_code(&spec.recovery_action).is_none() {
                return Err(format!(
                    "GPU {index}: unknown recovery_action {:?} (none, gpu_reset, node_reboot, drain_p2p, drain_and_reset)",
                    spec.recovery_action
                ));
            }
            let unsupported = file
                .not_supported
                .iter()
                .chain(spec.not_supported.iter())
                .cloned()
                .collect();
            gpus.push(Gpu {
                uuid: spec.uuid.clone().unwrap_or_else(|| default_uuid(index)),
                pci_bus_id: spec
                    .pci_bus_id
                    .clone()
                    .unwrap_or_else(|| default_bus_id(index)),
                spec,
                unsupported,
            });
        }
        for xid in &file.xids {
            if xid.gpu >= count {
                return Err(format!(
                    "xid event {} names GPU {}, but there are only {count}",
                    xid.id, xid.gpu
                ));
            }
        }
        Ok(Snapshot {
            driver_version: file.driver_version,
            visible: file.visible_gpus.unwrap_or(count).min(count),
            gpus,
            xids: file.xids,
            init_error: file.init_error,
        })
    }
}

pub fn recovery_action_code(name: &str) -> Option<u32> {
    // nvmlDeviceGpuRecoveryAction_t
    match name {
        "none" => Some(0),
        "gpu_reset" => Some(1),
        "node_reboot" => Some(2),
        "drain_p2p" => Some(3),
        "drain_and_reset" => Some(4),
        _ => None,
    }
}

/// Distinct, stable, and in NVIDIA's 8-4-4-4-12 shape.
pub fn default_uuid(index: u32) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012x}")
}

/// Buses spread as on an HGX board, as the agent's simulator does.
pub fn default_bus_id(index: u32) -> String {
    let domain = index / 8;
    let bus = 0x18 + (index % 8) * 0x11;
    format!("{domain:08X}:{bus:02X}:00.0")
}

/// The live state: the file, re-read when it changes, and what only the
/// process knows.
#[derive(Debug)]
pub struct Runtime {
    path: Option<PathBuf>,
    stamp: Option<(SystemTime, u64, u64)>,
    checked: Option<Instant>,
    pub snapshot: Snapshot,
    pub init_count: u32,
    pub delivered: HashSet<u64>,
}

impl Runtime {
    /// Reads `FAKE_NVML_STATE` (8 healthy GPUs when unset or empty).
    pub fn from_env() -> Result<Runtime, String> {
        let path = std::env::var_os("FAKE_NVML_STATE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let mut runtime = Runtime {
            path,
            stamp: None,
            checked: None,
            snapshot: Snapshot::from_file(FileState::default())?,
            init_count: 0,
            delivered: HashSet::new(),
        };
        runtime.reload(true)?;
        Ok(runtime)
    }

    /// Re-reads the file if it changed since the last look. A file that is
    /// unreadable or invalid now keeps the previous state (and says so on
    /// stderr), unless `strict`, which is for init.
    pub fn refresh(&mut self) {
        if self.checked.is_some_and(|at| at.elapsed() < RECHECK_AFTER) {
            return;
        }
        if let Err(err) = self.reload(false) {
            eprintln!("fake-nvml: keeping the previous state: {err}");
        }
    }

    fn reload(&mut self, strict: bool) -> Result<(), String> {
        self.checked = Some(Instant::now());
        let Some(path) = &self.path else {
            return Ok(());
        };
        let meta =
            std::fs::metadata(path).map_err(|e| format!("state file {}: {e}", path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        if !strict && self.stamp == Some(stamp) {
            return Ok(());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("state file {}: {e}", path.display()))?;
        let snapshot =
            Snapshot::parse(&text).map_err(|e| format!("state file {}: {e}", path.display()))?;
        self.snapshot = snapshot;
        self.stamp = Some(stamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_eight_healthy_gpus() {
        let s = Snapshot::parse("{}").expect("valid");
        assert_eq!(s.gpus.len(), 8);
        assert_eq!(s.visible, 8);
        assert_eq!(s.gpus[0].uuid, "GPU-fa4e0000-0000-4000-8000-000000000000");
        assert_eq!(s.gpus[7].pci_bus_id, "00000000:8F:00.0");
        assert!(s.gpus.iter().all(|g| !g.spec.lost));
    }

    #[test]
    fn entries_override_the_first_gpus_and_the_rest_default() {
        let s = Snapshot::parse(
            r#"{"gpu_count": 4, "visible_gpus": 3, "not_supported": ["nvlink"],
                "gpus": [{"pcie_width": 8, "not_supported": ["recovery_action"]}]}"#,
        )
        .expect("valid");
        assert_eq!(s.gpus.len(), 4);
        assert_eq!(s.visible, 3);
        assert_eq!(s.gpus[0].spec.pcie_width, 8);
        assert_eq!(s.gpus[1].spec.pcie_width, 16);
        assert!(!s.gpus[0].supports("recovery_action"));
        assert!(s.gpus[1].supports("recovery_action"));
        assert!(!s.gpus[3].supports("nvlink"));
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        for (text, needle) in [
            (r#"{"gpu_cont": 8}"#, "gpu_cont"),
            (r#"{"gpus": [{"lsot": true}]}"#, "lsot"),
            (r#"{"not_supported": ["nvlnk"]}"#, "nvlnk"),
            (r#"{"gpus": [{"recovery_action": "reboot"}]}"#, "reboot"),
            (r#"{"xids": [{"id": 1, "gpu": 9, "xid": 79}]}"#, "GPU 9"),
            (r#"{"gpu_count": 1, "gpus": [{}, {}]}"#, "gpu_count"),
        ] {
            let err = Snapshot::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
