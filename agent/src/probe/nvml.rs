//! The real GPUs, through NVML (`nvml-wrapper`).
//!
//! `Device` borrows `Nvml`, so handles are never stored: every sample looks
//! each GPU up by index again. That also means a GPU that falls off the bus
//! shows up as failed reads on its index rather than as a dangling handle.
//!
//! `Nvml` itself is shared (`Arc`) with one more thread, the Xid event
//! waiter in `nvml_events`: NVML is thread-safe, and a blocking
//! `nvmlEventSetWait` must not hold up polling.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id;
use nvml_wrapper::{Device, Nvml};
use sup_proto::v1::{GpuInfo, GpuReading, RecoveryAction};
use tracing::{debug, error, info, warn};

use super::gpu_probe::{GpuProbe, ProbeError};
use super::nvml_errors::{classify, ErrorClass};
use super::signals::{GpuSignals, HealthSample};
use super::xid::XidSink;

/// NVML's own ceiling on NVLink links per GPU (NVML_NVLINK_MAX_LINKS).
const NVLINK_MAX_LINKS: u32 = 18;

/// The health counters NVML serves as "field values": read in one call per
/// GPU instead of one call each.
const HEALTH_FIELDS: [FieldId; 11] = [
    FieldId(field_id::NVML_FI_DEV_ECC_SBE_VOL_TOTAL),
    FieldId(field_id::NVML_FI_DEV_ECC_DBE_VOL_TOTAL),
    FieldId(field_id::NVML_FI_DEV_REMAPPED_COR),
    FieldId(field_id::NVML_FI_DEV_REMAPPED_UNC),
    FieldId(field_id::NVML_FI_DEV_REMAPPED_PENDING),
    FieldId(field_id::NVML_FI_DEV_REMAPPED_FAILURE),
    FieldId(field_id::NVML_FI_DEV_RETIRED_SBE),
    FieldId(field_id::NVML_FI_DEV_RETIRED_DBE),
    FieldId(field_id::NVML_FI_DEV_RETIRED_PENDING),
    FieldId(field_id::NVML_FI_DEV_NVLINK_LINK_COUNT),
    FieldId(field_id::NVML_FI_DEV_GET_GPU_RECOVERY_ACTION),
];

/// What nvml-wrapper loads when no `--nvml-lib` is given (its own default is
/// private, so this only names it in messages).
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

pub struct NvmlProbe {
    nvml: Arc<Nvml>,
    /// GPUs NVML reported at startup. Sampling walks these indices even if
    /// NVML later counts fewer, so a vanished GPU reads as all-absent
    /// instead of silently dropping out of the report.
    count: u32,
    /// Readings currently failing, by (GPU, field), so each failure is
    /// logged once when it starts and once when it clears.
    failing: HashMap<(u32, &'static str), ErrorClass>,
    /// Whether the last device count failed (logged once per outage).
    count_failing: bool,
    /// Per GPU: the NVLink links it has (found on the first health poll)
    /// and the ones seen active since the agent started.
    nvlinks: HashMap<u32, NvLinks>,
    /// Tells the Xid event thread to stop when the probe goes away.
    stop_events: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct NvLinks {
    /// Whether `present` has been worked out (it may well be empty: no
    /// NVLink on this GPU, and then there is nothing to ask each poll).
    discovered: bool,
    present: Vec<u32>,
    seen_up: BTreeSet<u32>,
}

impl Drop for NvmlProbe {
    fn drop(&mut self) {
        self.stop_events.store(true, Ordering::Relaxed);
    }
}

impl NvmlProbe {
    /// Loads NVML from `lib` (or the system library) and counts the GPUs.
    pub fn open(lib: Option<&Path>) -> Result<NvmlProbe, ProbeError> {
        let library = lib.map_or_else(|| DEFAULT_LIBRARY.to_owned(), |p| p.display().to_string());
        let nvml = match lib {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        }
        .map_err(|source| ProbeError::Init { library, source })?;
        let count = nvml.device_count().map_err(|source| ProbeError::Nvml {
            operation: "device count",
            source,
        })?;
        let driver = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        info!(driver = %driver, gpus = count, "NVML initialized");
        if count == 0 {
            warn!("NVML sees no GPUs on this node; registering with none");
        }
        Ok(NvmlProbe {
            nvml: Arc::new(nvml),
            count,
            failing: HashMap::new(),
            count_failing: false,
            nvlinks: HashMap::new(),
            stop_events: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Records what happened to each reading of one GPU.
    fn note_outcomes(&mut self, index: u32, outcomes: Vec<FieldOutcome>) {
        for (field, result) in outcomes {
            match result {
                Ok(()) => self.note_success(index, field),
                Err(err) => self.note_failure(index, field, &err),
            }
        }
    }

    fn note_failure(&mut self, index: u32, field: &'static str, err: &NvmlError) {
        let class = classify(err);
        if self.failing.insert((index, field), class) == Some(class) {
            return;
        }
        match class {
            ErrorClass::Unsupported => {
                debug!(gpu = index, field, error = %err, "reading not available")
            }
            ErrorClass::Transient => warn!(gpu = index, field, error = %err, "reading failed"),
            ErrorClass::FatalForGpu => error!(gpu = index, field, error = %err, "GPU lost"),
            ErrorClass::FatalForNvml => error!(gpu = index, field, error = %err, "NVML unusable"),
        }
    }

    fn note_success(&mut self, index: u32, field: &'static str) {
        if let Some(class) = self.failing.remove(&(index, field)) {
            if class != ErrorClass::Unsupported {
                info!(gpu = index, field, "reading recovered");
            }
        }
    }
}

impl GpuProbe for NvmlProbe {
    fn inventory(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        let mut gpus = Vec::with_capacity(self.count as usize);
        for index in 0..self.count {
            let mut info = GpuInfo {
                index,
                ..GpuInfo::default()
            };
            // A GPU that cannot be read at startup is still registered (by
            // index, with what could be read): hiding it would make the node
            // look healthy with fewer GPUs.
            match self.nvml.device_by_index(index) {
                Ok(device) => {
                    info.uuid = inventory_field(index, "uuid", device.uuid()).unwrap_or_default();
                    info.name = inventory_field(index, "name", device.name()).unwrap_or_default();
                    info.pci_bus_id =
                        inventory_field(index, "pci_bus_id", device.pci_info().map(|p| p.bus_id))
                            .unwrap_or_default();
                    info.memory_total_bytes = inventory_field(
                        index,
                        "memory_total",
                        device.memory_info().map(|m| m.total),
                    );
                }
                Err(err) => {
                    error!(gpu = index, error = %err, "cannot open GPU; registering it without details");
                }
            }
            gpus.push(info);
        }
        Ok(gpus)
    }

    fn sample(&mut self) -> Result<Vec<GpuReading>, ProbeError> {
        let mut readings = Vec::with_capacity(self.count as usize);
        for index in 0..self.count {
            let (reading, outcomes) = read_gpu(&self.nvml, index);
            self.note_outcomes(index, outcomes);
            readings.push(reading);
        }
        Ok(readings)
    }

    fn health(&mut self) -> Result<HealthSample, ProbeError> {
        let visible = match self.nvml.device_count() {
            Ok(count) => {
                if std::mem::take(&mut self.count_failing) {
                    info!("NVML device count readable again");
                }
                if count < self.count {
                    debug!(
                        visible = count,
                        inventory = self.count,
                        "NVML counts fewer GPUs than at startup"
                    );
                }
                Some(count)
            }
            Err(err) => {
                if !std::mem::replace(&mut self.count_failing, true) {
                    warn!(error = %err, "cannot count GPUs");
                }
                None
            }
        };
        let mut gpus = Vec::with_capacity(self.count as usize);
        for index in 0..self.count {
            // A GPU beyond the current count is judged missing from the
            // count alone; asking NVML about it cannot succeed.
            if visible.is_some_and(|v| index >= v) {
                gpus.push(GpuSignals::unknown(index));
                continue;
            }
            let links = self.nvlinks.entry(index).or_default();
            let (signals, outcomes) = read_health(&self.nvml, index, links);
            self.note_outcomes(index, outcomes);
            gpus.push(signals);
        }
        Ok(HealthSample {
            gpus,
            visible_gpus: visible,
        })
    }

    fn watch_xids(&mut self, sink: XidSink) -> Result<bool, ProbeError> {
        super::nvml_events::spawn(
            Arc::clone(&self.nvml),
            self.count,
            sink,
            Arc::clone(&self.stop_events),
        )
        .map_err(|e| ProbeError::ThreadGone(format!("cannot start the NVML event thread: {e}")))?;
        Ok(true)
    }
}

fn inventory_field<T>(index: u32, field: &'static str, result: Result<T, NvmlError>) -> Option<T> {
    result
        .map_err(|err| warn!(gpu = index, field, error = %err, "cannot read GPU inventory field"))
        .ok()
}

type FieldOutcome = (&'static str, Result<(), NvmlError>);

/// Reads one GPU; every field is independent, so one failing query leaves
/// only its own field absent.
fn read_gpu(nvml: &Nvml, index: u32) -> (GpuReading, Vec<FieldOutcome>) {
    let mut reading = GpuReading {
        index,
        ..GpuReading::default()
    };
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(err) => return (reading, vec![("device", Err(err))]),
    };
    let mut r = Reader {
        device: &device,
        outcomes: Vec::with_capacity(6),
        gpu_gone: false,
    };
    reading.temperature_c = r
        .read("temperature", |d| d.temperature(TemperatureSensor::Gpu))
        .map(f64::from);
    reading.power_w = r
        .read("power", Device::power_usage)
        .map(|milliwatts| f64::from(milliwatts) / 1000.0);
    if let Some(util) = r.read("utilization", Device::utilization_rates) {
        reading.utilization_gpu_pct = Some(util.gpu);
        reading.utilization_memory_pct = Some(util.memory);
    }
    reading.sm_clock_mhz = r.read("sm_clock", |d| d.clock_info(Clock::SM));
    reading.memory_clock_mhz = r.read("memory_clock", |d| d.clock_info(Clock::Memory));
    reading.memory_used_bytes = r.read("memory_used", |d| d.memory_info().map(|m| m.used));
    (reading, r.outcomes)
}

/// Reads one GPU's health signals. Every query is independent except that
/// a lost GPU stops the rest (they cannot succeed, and can be slow).
fn read_health(nvml: &Nvml, index: u32, links: &mut NvLinks) -> (GpuSignals, Vec<FieldOutcome>) {
    let mut s = GpuSignals::unknown(index);
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(err) => {
            if classify(&err) == ErrorClass::FatalForGpu {
                s.lost = Some(err.to_string());
            }
            return (s, vec![("device", Err(err))]);
        }
    };
    let mut r = Reader {
        device: &device,
        outcomes: Vec::with_capacity(16),
        gpu_gone: false,
    };

    let mut nvlink_count = None;
    if let Some(samples) = r.read("field_values", |d| d.field_values_for(&HEALTH_FIELDS)) {
        for (id, sample) in HEALTH_FIELDS.iter().zip(samples) {
            let name = field_name(id.0);
            let value = match sample.and_then(|sample| sample.value) {
                Ok(value) => value,
                Err(err) => {
                    if classify(&err) == ErrorClass::FatalForGpu {
                        r.gpu_gone = true;
                    }
                    // A driver older than a field answers "invalid
                    // argument" (or a value type the wrapper does not
                    // know): that field does not exist there.
                    let err = match err {
                        NvmlError::InvalidArg | NvmlError::UnexpectedVariant(_) => {
                            NvmlError::NotSupported
                        }
                        other => other,
                    };
                    r.outcomes.push((name, Err(err)));
                    continue;
                }
            };
            r.outcomes.push((name, Ok(())));
            let Some(v) = as_u64(&value) else { continue };
            match id.0 {
                field_id::NVML_FI_DEV_ECC_SBE_VOL_TOTAL => s.ecc_sbe_volatile = Some(v),
                field_id::NVML_FI_DEV_ECC_DBE_VOL_TOTAL => s.ecc_dbe_volatile = Some(v),
                field_id::NVML_FI_DEV_REMAPPED_COR => s.remapped_correctable = Some(v),
                field_id::NVML_FI_DEV_REMAPPED_UNC => s.remapped_uncorrectable = Some(v),
                field_id::NVML_FI_DEV_REMAPPED_PENDING => s.remap_pending = Some(v != 0),
                field_id::NVML_FI_DEV_REMAPPED_FAILURE => s.remap_failure = Some(v != 0),
                field_id::NVML_FI_DEV_RETIRED_SBE => s.retired_pages_sbe = Some(v),
                field_id::NVML_FI_DEV_RETIRED_DBE => s.retired_pages_dbe = Some(v),
                field_id::NVML_FI_DEV_RETIRED_PENDING => s.retired_pages_pending = Some(v != 0),
                field_id::NVML_FI_DEV_NVLINK_LINK_COUNT => nvlink_count = u32::try_from(v).ok(),
                field_id::NVML_FI_DEV_GET_GPU_RECOVERY_ACTION => {
                    s.recovery_action = recovery_action(v);
                    if s.recovery_action.is_none() {
                        r.outcomes
                            .push(("recovery_action_value", Err(NvmlError::NotSupported)));
                    }
                }
                _ => {}
            }
        }
    }

    s.pcie_gen = r.read("pcie_gen", Device::current_pcie_link_gen);
    s.pcie_gen_max = r.read("pcie_gen_max", Device::max_pcie_link_gen);
    s.pcie_width = r.read("pcie_width", Device::current_pcie_link_width);
    s.pcie_width_max = r.read("pcie_width_max", Device::max_pcie_link_width);
    s.throttle_reasons = r
        .read("throttle_reasons", Device::current_throttle_reasons)
        .map(|reasons| reasons.bits());
    s.utilization_gpu_pct = r
        .read("utilization", Device::utilization_rates)
        .map(|u| u.gpu);
    read_nvlinks(&mut r, &mut s, nvlink_count, links);

    if r.gpu_gone {
        s.lost = r
            .outcomes
            .iter()
            .rev()
            .find_map(|(_, result)| match result {
                Err(err) if classify(err) == ErrorClass::FatalForGpu => Some(err.to_string()),
                _ => None,
            });
    }
    (s, r.outcomes)
}

/// NVLink state per link. Which links exist is learned once: from NVML's
/// link count when it has one, else by asking every possible link. A link
/// counts as down only on a GPU whose NVLink is in use (some link up now or
/// earlier): an NVLink-capable card in a PCIe-only box has all links
/// inactive, and that is not a fault.
fn read_nvlinks(
    r: &mut Reader<'_, '_>,
    s: &mut GpuSignals,
    count: Option<u32>,
    links: &mut NvLinks,
) {
    if r.gpu_gone {
        return;
    }
    let discovering = !links.discovered;
    let candidates: Vec<u32> = if discovering {
        (0..count.unwrap_or(NVLINK_MAX_LINKS).min(NVLINK_MAX_LINKS)).collect()
    } else {
        links.present.clone()
    };
    let mut down = Vec::new();
    for link in candidates {
        match r.device.link_wrapper_for(link).is_active() {
            Ok(active) => {
                if discovering {
                    links.present.push(link);
                }
                if active {
                    links.seen_up.insert(link);
                } else {
                    down.push(link);
                }
            }
            Err(err) => match classify(&err) {
                ErrorClass::FatalForGpu => {
                    r.gpu_gone = true;
                    r.outcomes.push(("nvlink", Err(err)));
                    return;
                }
                // Past the last link, or no NVLink at all.
                ErrorClass::Unsupported => {}
                _ if matches!(err, NvmlError::InvalidArg) => {}
                _ => {
                    // Transient: discover again (from scratch) next poll.
                    if discovering {
                        links.present.clear();
                    }
                    r.outcomes.push(("nvlink", Err(err)));
                    return;
                }
            },
        }
    }
    links.discovered = true;
    if links.present.is_empty() {
        return;
    }
    r.outcomes.push(("nvlink", Ok(())));
    s.nvlink_links = u32::try_from(links.present.len()).ok();
    if !links.seen_up.is_empty() {
        s.nvlink_down = down;
    }
}

fn field_name(id: u32) -> &'static str {
    match id {
        field_id::NVML_FI_DEV_ECC_SBE_VOL_TOTAL => "ecc_sbe_volatile",
        field_id::NVML_FI_DEV_ECC_DBE_VOL_TOTAL => "ecc_dbe_volatile",
        field_id::NVML_FI_DEV_REMAPPED_COR => "remapped_correctable",
        field_id::NVML_FI_DEV_REMAPPED_UNC => "remapped_uncorrectable",
        field_id::NVML_FI_DEV_REMAPPED_PENDING => "remap_pending",
        field_id::NVML_FI_DEV_REMAPPED_FAILURE => "remap_failure",
        field_id::NVML_FI_DEV_RETIRED_SBE => "retired_pages_sbe",
        field_id::NVML_FI_DEV_RETIRED_DBE => "retired_pages_dbe",
        field_id::NVML_FI_DEV_RETIRED_PENDING => "retired_pages_pending",
        field_id::NVML_FI_DEV_NVLINK_LINK_COUNT => "nvlink_link_count",
        field_id::NVML_FI_DEV_GET_GPU_RECOVERY_ACTION => "recovery_action",
        _ => "field",
    }
}

fn as_u64(value: &SampleValue) -> Option<u64> {
    match *value {
        SampleValue::U32(v) => Some(u64::from(v)),
        SampleValue::U64(v) => Some(v),
        SampleValue::I64(v) => u64::try_from(v).ok(),
        SampleValue::F64(_) => None,
    }
}

/// `nvmlDeviceGpuRecoveryAction_t` to the wire enum. A value this agent does
/// not know (a newer driver) is left absent rather than guessed.
pub fn recovery_action(value: u64) -> Option<RecoveryAction> {
    match value {
        0 => Some(RecoveryAction::None),
        1 => Some(RecoveryAction::GpuReset),
        2 => Some(RecoveryAction::NodeReboot),
        3 => Some(RecoveryAction::DrainP2p),
        4 => Some(RecoveryAction::DrainAndReset),
        _ => None,
    }
}

struct Reader<'a, 'nvml> {
    device: &'a Device<'nvml>,
    outcomes: Vec<FieldOutcome>,
    gpu_gone: bool,
}

impl<'nvml> Reader<'_, 'nvml> {
    fn read<T>(
        &mut self,
        field: &'static str,
        query: impl FnOnce(&Device<'nvml>) -> Result<T, NvmlError>,
    ) -> Option<T> {
        if self.gpu_gone {
            return None;
        }
        match query(self.device) {
            Ok(value) => {
                self.outcomes.push((field, Ok(())));
                Some(value)
            }
            Err(err) => {
                self.gpu_gone = classify(&err) == ErrorClass::FatalForGpu;
                self.outcomes.push((field, Err(err)));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error_naming_the_path() {
        let err = NvmlProbe::open(Some(Path::new("/nonexistent.so")))
            .err()
            .expect("loading a missing library must fail");
        assert!(matches!(err, ProbeError::Init { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("/nonexistent.so"), "{message}");
        assert!(message.contains("cannot initialize NVML"), "{message}");
        assert!(message.contains("--gpu-backend sim:N"), "{message}");
    }

    #[test]
    fn a_library_that_is_not_nvml_is_refused() {
        // Any loadable library without nvmlInit_v2: libc is on every host.
        let Some(libc) = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib/libc.so.6",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists()) else {
            return;
        };
        let err = NvmlProbe::open(Some(Path::new(libc)))
            .err()
            .expect("libc is not NVML");
        assert!(err.to_string().contains(libc), "{err}");
    }

    /// Runs only where a real driver is present: `cargo test -- --ignored`.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver"]
    fn reads_real_gpus() {
        let mut probe = NvmlProbe::open(None).expect("NVML opens on a GPU host");
        let gpus = probe.inventory().expect("inventory");
        assert!(!gpus.is_empty(), "a GPU host has GPUs");
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu.index, i as u32);
            assert!(gpu.uuid.starts_with("GPU-"), "{gpu:?}");
            assert!(!gpu.name.is_empty(), "{gpu:?}");
            assert!(gpu.pci_bus_id.contains(':'), "{gpu:?}");
            assert!(
                gpu.memory_total_bytes.is_some_and(|m| m > 1 << 30),
                "{gpu:?}"
            );
        }
        let readings = probe.sample().expect("sample");
        assert_eq!(readings.len(), gpus.len());
        for r in &readings {
            let t = r.temperature_c.expect("temperature");
            assert!((5.0..110.0).contains(&t), "{r:?}");
            assert!(r.power_w.is_some_and(|p| p > 1.0 && p < 2000.0), "{r:?}");
            assert!(r.utilization_gpu_pct.is_some_and(|u| u <= 100), "{r:?}");
            assert!(r.sm_clock_mhz.is_some(), "{r:?}");
            assert!(r.memory_clock_mhz.is_some(), "{r:?}");
            assert!(r.memory_used_bytes.is_some(), "{r:?}");
        }
        println!("{gpus:#?}\n{readings:#?}");
    }
}
