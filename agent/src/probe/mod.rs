//! Where GPU facts come from: the [`GpuProbe`] trait and its two
//! implementations, real NVML and a simulator for demos and scale tests.
//!
//! Probes speak the wire types (`GpuInfo`, `GpuReading`) directly: they hold
//! exactly what is sent, with every reading optional, so there is no second
//! model to keep in step with the proto.

pub mod nvml;
mod nvml_events;
pub mod signals;
pub mod sim;

use std::path::PathBuf;

use sup_proto::v1::{GpuInfo, GpuReading};

use crate::config::GpuBackend;

pub use self::nvml::NvmlProbe;
pub use self::signals::{GpuSignals, HealthSample, XidObservation, XidSink, XidSource};
pub use self::sim::SimProbe;

/// One source of GPU inventory and telemetry for this node.
///
/// Implementations may block (NVML calls can take a while on a sick GPU), so
/// the agent only calls them from its dedicated probe thread.
pub trait GpuProbe {
    /// The GPUs present, ordered by index. Taken once at startup; it is what
    /// the agent registers with.
    fn inventory(&self) -> Result<Vec<GpuInfo>, ProbeError>;

    /// One reading per inventoried GPU. A reading that could not be taken is
    /// `None` in its field (never zero); an error here means the probe as a
    /// whole could not sample.
    fn sample(&mut self) -> Result<Vec<GpuReading>, ProbeError>;

    /// Health signals for every inventoried GPU (ECC, row remapping, PCIe,
    /// NVLink, throttling, recovery action, lost GPUs). Polled on the same
    /// schedule as [`GpuProbe::sample`]. The default knows nothing: every
    /// signal absent, which judges as healthy-by-lack-of-evidence.
    fn health(&mut self) -> Result<HealthSample, ProbeError> {
        Ok(HealthSample::default())
    }

    /// Starts delivering Xid events to `sink` as they happen (NVML's event
    /// set, on a thread of the probe's own). Returns false when this
    /// backend has no event source of its own.
    fn watch_xids(&mut self, sink: XidSink) -> Result<bool, ProbeError> {
        let _ = sink;
        Ok(false)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot initialize NVML from {library}: {source} (is the NVIDIA driver installed? \
         use --nvml-lib PATH to name the library, or --gpu-backend sim:N to simulate GPUs)"
    )]
    Init {
        /// The path given with `--nvml-lib`, or the default library name.
        library: String,
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    #[error("NVML {operation} failed: {source}")]
    Nvml {
        operation: &'static str,
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    #[error("GPU probe thread stopped: {0}")]
    ThreadGone(String),
}

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
