//! Where GPU facts come from: the [`GpuProbe`] trait and its two
//! implementations, real NVML and a simulator for demos and scale tests,
//! plus the Xid event readers that feed the health monitor.
//!
//! Probes speak the wire types (`GpuInfo`, `GpuReading`) directly: they hold
//! exactly what is sent, with every reading optional, so there is no second
//! model to keep in step with the proto.
//!
//! - [`backend`]: which source to open (`--gpu-backend nvml|sim:N`).
//! - [`gpu_probe`]: the [`GpuProbe`] trait and [`ProbeError`].
//! - [`nvml`], [`sim`]: the two implementations; `nvml_events` is NVML's
//!   Xid event thread, `nvml_errors` how both treat an NVML error.
//! - [`signals`]: polled health facts; [`xid`]: Xid events and the queue
//!   every Xid source delivers to.
//! - [`kernel_log`]: the second Xid source, the driver's kernel log lines.
//!
//! Dependencies point one way: the files above use one another (never this
//! one), and this one only re-exports them and picks a probe ([`open`]).

pub mod backend;
pub mod gpu_probe;
pub mod kernel_log;
pub mod nvml;
mod nvml_errors;
mod nvml_events;
pub mod signals;
pub mod sim;
pub mod xid;

use std::path::PathBuf;

use sup_proto::v1::GpuInfo;

pub use self::backend::GpuBackend;
pub use self::gpu_probe::{GpuProbe, ProbeError};
pub use self::nvml::NvmlProbe;
pub use self::signals::{GpuSignals, HealthSample};
pub use self::sim::SimProbe;
pub use self::xid::{XidObservation, XidSink, XidSource};

/// The inventory padded to `expected` GPUs. A node that boots with a GPU
/// already gone (off the bus before the driver loaded) would otherwise
/// register as a healthy smaller node; padded, its missing GPUs are judged
/// missing from the count like GPUs lost at run time, and the node is
/// failed and cordoned. Placeholders have no UUID and are named "missing".
pub fn with_expected_count(mut gpus: Vec<GpuInfo>, expected: Option<u32>) -> Vec<GpuInfo> {
    let Some(expected) = expected else {
        return gpus;
    };
    let found = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
    if found > expected {
        tracing::warn!(
            found,
            expected,
            "more GPUs than expected_gpus; is the setting out of date?"
        );
    } else if found < expected {
        tracing::error!(
            found,
            expected,
            "fewer GPUs than expected_gpus at startup: the missing ones are reported failed"
        );
        gpus.extend((found..expected).map(|index| GpuInfo {
            index,
            name: MISSING_GPU_NAME.to_owned(),
            ..GpuInfo::default()
        }));
    }
    gpus
}

pub const MISSING_GPU_NAME: &str = "missing";

/// Opens the probe `backend` names. `node_id` seeds the simulator so that
/// simulated GPU UUIDs are stable for a node across restarts.
pub fn open(
    backend: GpuBackend,
    nvml_lib: Option<PathBuf>,
    node_id: &str,
) -> Result<Box<dyn GpuProbe>, ProbeError> {
    match backend {
        GpuBackend::Nvml => Ok(Box::new(NvmlProbe::open(nvml_lib.as_deref())?)),
        GpuBackend::Sim { gpus } => Ok(Box::new(SimProbe::new(node_id, gpus))),
    }
}
