//! Which GPU source the agent reads: the real GPUs through NVML, or N
//! simulated ones. Chosen by `--gpu-backend` / `gpu_backend` (parsed here,
//! so that flag and file accept exactly the same spellings) and acted on by
//! [`crate::probe::open`].

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    Nvml,
    Sim { gpus: u32 },
}

impl GpuBackend {
    /// The name sent to supd in `Register.gpu_backend`.
    pub fn wire_name(&self) -> &'static str {
        match self {
            GpuBackend::Nvml => "nvml",
            GpuBackend::Sim { .. } => "sim",
        }
    }
}

impl fmt::Display for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuBackend::Nvml => f.write_str("nvml"),
            GpuBackend::Sim { gpus } => write!(f, "sim:{gpus}"),
        }
    }
}

impl FromStr for GpuBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "nvml" {
            return Ok(GpuBackend::Nvml);
        }
        let Some(count) = s.strip_prefix("sim:") else {
            return Err(format!(
                "invalid GPU backend {s:?}: expected `nvml` or `sim:N` (N simulated GPUs, e.g. sim:8)"
            ));
        };
        match count.parse::<u32>() {
            Ok(0) => Err(format!(
                "invalid GPU backend {s:?}: a simulated node needs at least one GPU"
            )),
            Ok(gpus) => Ok(GpuBackend::Sim { gpus }),
            Err(_) => Err(format!(
                "invalid GPU backend {s:?}: {count:?} is not a GPU count (expected e.g. sim:8)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_backend_parsing() {
        assert_eq!("nvml".parse::<GpuBackend>(), Ok(GpuBackend::Nvml));
        assert_eq!(
            "sim:8".parse::<GpuBackend>(),
            Ok(GpuBackend::Sim { gpus: 8 })
        );
        assert_eq!(
            "sim:1".parse::<GpuBackend>(),
            Ok(GpuBackend::Sim { gpus: 1 })
        );
        let zero = "sim:0".parse::<GpuBackend>().expect_err("zero GPUs");
        assert!(zero.contains("at least one GPU"), "{zero}");
        for bad in ["sim", "sim:", "sim:-1", "sim:eight", "cuda", "", "sim:8x"] {
            let err = bad.parse::<GpuBackend>().expect_err(bad);
            assert!(err.contains("invalid GPU backend"), "{bad}: {err}");
        }
        assert_eq!(GpuBackend::Sim { gpus: 8 }.to_string(), "sim:8");
        assert_eq!(GpuBackend::Sim { gpus: 8 }.wire_name(), "sim");
        assert_eq!(GpuBackend::Nvml.wire_name(), "nvml");
    }
}
