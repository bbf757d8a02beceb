//! Simulated GPUs for demos, tests and scale runs on machines without any.
//!
//! Everything is derived from the node id: the same node gets the same GPU
//! UUIDs after a restart (as real hardware would), and two simulated nodes
//! never share one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sup_proto::v1::{GpuInfo, GpuReading, RecoveryAction};

use super::gpu_probe::{GpuProbe, ProbeError};
use super::signals::{GpuSignals, HealthSample};

pub const SIM_GPU_NAME: &str = "Simulated H100 80GB HBM3";
pub const SIM_MEMORY_BYTES: u64 = 80 * 1024 * 1024 * 1024;

// H100 SXM figures, so dashboards and thresholds see familiar numbers.
const MAX_SM_CLOCK_MHZ: u32 = 1980;
const MEMORY_CLOCK_MHZ: u32 = 2619;
const IDLE_POWER_W: f64 = 90.0;
const MAX_POWER_W: f64 = 700.0;

pub struct SimProbe {
    inventory: Vec<GpuInfo>,
    /// Each GPU's load in [0, 1]; it drifts a little every sample and all
    /// readings follow it, so they move together like a real GPU's do.
    load: Vec<f64>,
    rng: StdRng,
}

impl SimProbe {
    pub fn new(node_id: &str, gpus: u32) -> SimProbe {
        let mut rng = StdRng::seed_from_u64(fnv1a(FNV_OFFSET, node_id.as_bytes()));
        let inventory = (0..gpus)
            .map(|index| GpuInfo {
                index,
                uuid: sim_uuid(node_id, index),
                name: SIM_GPU_NAME.to_owned(),
                pci_bus_id: sim_pci_bus_id(index),
                memory_total_bytes: Some(SIM_MEMORY_BYTES),
            })
            .collect();
        let load = (0..gpus).map(|_| rng.random_range(0.6..0.95)).collect();
        SimProbe {
            inventory,
            load,
            rng,
        }
    }
}

impl GpuProbe for SimProbe {
    fn inventory(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        Ok(self.inventory.clone())
    }

    fn sample(&mut self) -> Result<Vec<GpuReading>, ProbeError> {
        let rng = &mut self.rng;
        let readings = self
            .load
            .iter_mut()
            .zip(0u32..)
            .map(|(load, index)| {
                *load = (*load + rng.random_range(-0.05..0.05)).clamp(0.5, 1.0);
                let l = *load;
                let noise =
                    |rng: &mut StdRng, amplitude: f64| rng.random_range(-amplitude..amplitude);
                GpuReading {
                    index,
                    temperature_c: Some((32.0 + 33.0 * l + noise(rng, 2.0)).clamp(30.0, 70.0)),
                    power_w: Some(
                        (IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * l + noise(rng, 15.0))
                            .clamp(IDLE_POWER_W, MAX_POWER_W),
                    ),
                    utilization_gpu_pct: Some(percent(l * 100.0 + noise(rng, 3.0))),
                    utilization_memory_pct: Some(percent(l * 55.0 + noise(rng, 3.0))),
                    sm_clock_mhz: Some(MAX_SM_CLOCK_MHZ - rng.random_range(0..=225)),
                    memory_clock_mhz: Some(MEMORY_CLOCK_MHZ),
                    memory_used_bytes: Some((SIM_MEMORY_BYTES as f64 * (0.55 + 0.35 * l)) as u64),
                }
            })
            .collect();
        Ok(readings)
    }

    /// Every GPU healthy, with every signal an H100 SXM has present (page
    /// retirement is pre-Ampere, so absent): faults come only from drills,
    /// which the health monitor injects downstream of the probe.
    fn health(&mut self) -> Result<HealthSample, ProbeError> {
        let gpus = self
            .load
            .iter()
            .zip(0u32..)
            .map(|(load, index)| GpuSignals {
                index,
                lost: None,
                recovery_action: Some(RecoveryAction::None),
                ecc_sbe_volatile: Some(0),
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
                throttle_reasons: Some(0),
                utilization_gpu_pct: Some(percent(load * 100.0)),
            })
            .collect();
        Ok(HealthSample {
            gpus,
            visible_gpus: u32::try_from(self.load.len()).ok(),
        })
    }
}

fn percent(value: f64) -> u32 {
    value.round().clamp(0.0, 100.0) as u32
}

/// `GPU-` and 128 bits in NVIDIA's 8-4-4-4-12 shape.
fn sim_uuid(node_id: &str, index: u32) -> String {
    let mut key = node_id.as_bytes().to_vec();
    // The separator keeps ("ab", 1) and ("a", ...) from hashing alike.
    key.push(0);
    key.extend_from_slice(&index.to_le_bytes());
    let hi = fnv1a(FNV_OFFSET, &key);
    let lo = fnv1a(hi ^ FNV_OFFSET.rotate_left(32), &key);
    let hex = format!("{hi:016x}{lo:016x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Eight GPUs per PCI domain on buses spread as on an HGX board, so ids
/// stay distinct however many GPUs are simulated.
fn sim_pci_bus_id(index: u32) -> String {
    let domain = index / 8;
    let bus = 0x18 + (index % 8) * 0x11;
    format!("{domain:08X}:{bus:02X}:00.0")
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a: stable across Rust versions and platforms, unlike std's
/// `DefaultHasher`, and UUIDs must not change when the agent is rebuilt.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn is_uuid_shape(s: &str) -> bool {
        let Some(rest) = s.strip_prefix("GPU-") else {
            return false;
        };
        let groups: Vec<&str> = rest.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups.iter().all(|g| {
                g.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            })
    }

    #[test]
    fn inventory_shape() {
        let probe = SimProbe::new("node-a", 8);
        let gpus = probe.inventory().expect("sim inventory");
        assert_eq!(gpus.len(), 8);
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu.index, i as u32);
            assert!(is_uuid_shape(&gpu.uuid), "{}", gpu.uuid);
            assert_eq!(gpu.name, "Simulated H100 80GB HBM3");
            assert_eq!(gpu.memory_total_bytes, Some(80 << 30));
            assert_eq!(
                gpu.pci_bus_id.len(),
                "00000000:18:00.0".len(),
                "{}",
                gpu.pci_bus_id
            );
            assert!(gpu.pci_bus_id.starts_with("00000000:") && gpu.pci_bus_id.ends_with(":00.0"));
        }
        assert_eq!(gpus[0].pci_bus_id, "00000000:18:00.0");
        assert_eq!(gpus[7].pci_bus_id, "00000000:8F:00.0");
        let uuids: HashSet<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids.len(), 8, "UUIDs must be distinct");
    }

    #[test]
    fn large_simulated_nodes_keep_ids_distinct() {
        let gpus = SimProbe::new("big", 64).inventory().expect("inventory");
        let buses: HashSet<&str> = gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        let uuids: HashSet<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(buses.len(), 64);
        assert_eq!(uuids.len(), 64);
        assert_eq!(gpus[8].pci_bus_id, "00000001:18:00.0");
    }

    #[test]
    fn uuids_are_deterministic_per_node_and_distinct_across_nodes() {
        let a1 = SimProbe::new("node-a", 8).inventory().expect("inventory");
        let a2 = SimProbe::new("node-a", 8).inventory().expect("inventory");
        let b = SimProbe::new("node-b", 8).inventory().expect("inventory");
        assert_eq!(a1, a2);
        let a: HashSet<String> = a1.into_iter().map(|g| g.uuid).collect();
        assert!(b.iter().all(|g| !a.contains(&g.uuid)));
        // Pinned: a rebuild must not change the identity of simulated GPUs.
        assert_eq!(
            sim_uuid("node-a", 0),
            "GPU-eea175b0-d883-ff19-bc1a-2feaa6e22091"
        );
        assert_ne!(sim_uuid("ab", 1), sim_uuid("a", 1));
    }

    #[test]
    fn readings_are_plausible_complete_and_vary() {
        let mut probe = SimProbe::new("node-a", 8);
        let mut temperatures = HashSet::new();
        for _ in 0..200 {
            let readings = probe.sample().expect("sim sample");
            assert_eq!(readings.len(), 8);
            for (i, r) in readings.iter().enumerate() {
                assert_eq!(r.index, i as u32);
                let t = r.temperature_c.expect("temperature");
                assert!((30.0..=70.0).contains(&t), "temperature {t}");
                let p = r.power_w.expect("power");
                assert!((IDLE_POWER_W..=MAX_POWER_W).contains(&p), "power {p}");
                assert!(r.utilization_gpu_pct.expect("util") <= 100);
                assert!(r.utilization_memory_pct.expect("mem util") <= 100);
                let sm = r.sm_clock_mhz.expect("sm clock");
                assert!((1755..=1980).contains(&sm), "sm clock {sm}");
                assert_eq!(r.memory_clock_mhz, Some(MEMORY_CLOCK_MHZ));
                assert!(r.memory_used_bytes.expect("memory used") <= SIM_MEMORY_BYTES);
                temperatures.insert(t.to_bits());
            }
        }
        assert!(
            temperatures.len() > 100,
            "readings should vary, got {}",
            temperatures.len()
        );
    }

    #[test]
    fn health_is_complete_and_healthy() {
        let mut probe = SimProbe::new("node-a", 8);
        let health = probe.health().expect("sim health");
        assert_eq!(health.visible_gpus, Some(8));
        assert_eq!(health.gpus.len(), 8);
        for (i, g) in health.gpus.iter().enumerate() {
            assert_eq!(g.index, i as u32);
            assert_eq!(g.lost, None);
            assert_eq!(g.recovery_action, Some(RecoveryAction::None));
            assert_eq!(g.ecc_dbe_volatile, Some(0));
            assert_eq!(g.remap_failure, Some(false));
            assert_eq!(g.pcie_width, g.pcie_width_max);
            assert!(g.nvlink_down.is_empty());
            assert_eq!(g.throttle_reasons, Some(0));
        }
    }

    #[test]
    fn readings_are_deterministic_for_a_node() {
        let mut a = SimProbe::new("node-a", 4);
        let mut b = SimProbe::new("node-a", 4);
        for _ in 0..10 {
            assert_eq!(a.sample().expect("a"), b.sample().expect("b"));
        }
    }
}
