//! The real GPUs, through NVML (`nvml-wrapper`).
//!
//! `Device` borrows `Nvml`, so handles are never stored: every sample looks
//! each GPU up by index again. That also means a GPU that falls off the bus
//! shows up as failed reads on its index rather than as a dangling handle.

use std::collections::HashMap;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use sup_proto::v1::{GpuInfo, GpuReading};
use tracing::{debug, error, info, warn};

use super::{GpuProbe, ProbeError};

/// What nvml-wrapper loads when no `--nvml-lib` is given (its own default is
/// private, so this only names it in messages).
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// How an NVML error on one reading should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// This GPU or driver cannot give the reading (not supported, no
    /// permission, symbol missing in an older driver). The field is absent
    /// and will stay so: not worth a warning on every sample.
    Unsupported,
    /// May well succeed on the next sample.
    Transient,
    /// The GPU is gone or needs a reset. Stop querying it for this sample:
    /// calls on a lost GPU can be slow and they cannot succeed.
    FatalForGpu,
    /// NVML itself is unusable (driver unloaded, library/kernel mismatch).
    FatalForNvml,
}

pub fn classify(err: &NvmlError) -> ErrorClass {
    match err {
        NvmlError::NotSupported
        | NvmlError::NoPermission
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::NotFound
        | NvmlError::NoData
        | NvmlError::VgpuEccNotSupported => ErrorClass::Unsupported,
        NvmlError::GpuLost | NvmlError::ResetRequired => ErrorClass::FatalForGpu,
        NvmlError::Uninitialized
        | NvmlError::DriverNotLoaded
        | NvmlError::LibRmVersionMismatch
        | NvmlError::LibraryNotFound
        | NvmlError::LibloadingError(_) => ErrorClass::FatalForNvml,
        // Unknown, Timeout, IrqIssue, InUse and the wrapper's own decoding
        // errors: nothing says the next try will fail too.
        _ => ErrorClass::Transient,
    }
}

pub struct NvmlProbe {
    nvml: Nvml,
    /// GPUs NVML reported at startup. Sampling walks these indices even if
    /// NVML later counts fewer, so a vanished GPU reads as all-absent
    /// instead of silently dropping out of the report.
    count: u32,
    /// Readings currently failing, by (GPU, field), so each failure is
    /// logged once when it starts and once when it clears.
    failing: HashMap<(u32, &'static str), ErrorClass>,
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
            nvml,
            count,
            failing: HashMap::new(),
        })
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
            for (field, result) in outcomes {
                match result {
                    Ok(()) => self.note_success(index, field),
                    Err(err) => self.note_failure(index, field, &err),
                }
            }
            readings.push(reading);
        }
        Ok(readings)
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

    #[test]
    fn classification() {
        assert_eq!(classify(&NvmlError::GpuLost), ErrorClass::FatalForGpu);
        assert_eq!(classify(&NvmlError::ResetRequired), ErrorClass::FatalForGpu);
        assert_eq!(classify(&NvmlError::NotSupported), ErrorClass::Unsupported);
        assert_eq!(classify(&NvmlError::NoPermission), ErrorClass::Unsupported);
        assert_eq!(
            classify(&NvmlError::FunctionNotFound),
            ErrorClass::Unsupported
        );
        assert_eq!(
            classify(&NvmlError::FailedToLoadSymbol(
                "nvmlDeviceGetPowerUsage".into()
            )),
            ErrorClass::Unsupported
        );
        assert_eq!(classify(&NvmlError::Unknown), ErrorClass::Transient);
        assert_eq!(classify(&NvmlError::Timeout), ErrorClass::Transient);
        assert_eq!(classify(&NvmlError::InUse), ErrorClass::Transient);
        assert_eq!(
            classify(&NvmlError::DriverNotLoaded),
            ErrorClass::FatalForNvml
        );
        assert_eq!(
            classify(&NvmlError::Uninitialized),
            ErrorClass::FatalForNvml
        );
        assert_eq!(
            classify(&NvmlError::LibRmVersionMismatch),
            ErrorClass::FatalForNvml
        );
    }
}
