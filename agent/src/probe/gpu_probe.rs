//! The [`GpuProbe`] trait every GPU source implements (NVML, the
//! simulator), and the [`ProbeError`] its methods return. In a file of its
//! own so that the implementations depend on it, and the probe module's
//! front (`mod.rs`, which picks an implementation) depends on them, never
//! the other way round.

use sup_proto::v1::{GpuInfo, GpuReading};

use super::signals::HealthSample;
use super::xid::XidSink;

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
