//! What the simulator models (costs, the cluster, detection delays) and
//! what it reports (where the hours went, ETTR).

use sup_core::Millis;

use super::trace::FailureClass;

/// Modelled costs and the cluster; every duration in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SimParams {
    pub job_nodes: u32,
    pub gpus_per_node: u32,
    /// Extra healthy nodes beyond the job's.
    pub spares: u32,
    /// The job's min_nodes (elastic shrink floor); = job_nodes: no shrink.
    pub min_nodes: u32,
    pub duration_ms: Millis,
    /// Failure → the agent's report reaches supd.
    pub gpu_detect_ms: Millis,
    pub software_detect_ms: Millis,
    pub hang_detect_ms: Millis,
    /// supd's nodes.unreachable_after, jobs.stall_confirm, jobs.lost_node_grace.
    pub unreachable_after_ms: Millis,
    pub stall_confirm_ms: Millis,
    pub lost_node_grace_ms: Millis,
    /// Assignment → every rank launched (agents, process start).
    pub launch_ms: Millis,
    /// Ranks launched → training again (NCCL init, checkpoint load, warm-up).
    pub reinit_ms: Millis,
    /// Time to write one checkpoint. Synchronous checkpointing (the
    /// default) blocks training for all of it: δ.
    pub checkpoint_write_ms: Millis,
    /// Asynchronous checkpointing (PyTorch DCP `async_save`, NVRx, Megatron
    /// async): training blocks only for this device-to-host snapshot, the
    /// write runs in the background, one at a time, and a checkpoint can be
    /// restored only once written. None: synchronous.
    pub checkpoint_snapshot_ms: Option<Millis>,
    /// Compute between checkpoints (τ); None: Young/Daly from the trace.
    pub checkpoint_interval_ms: Option<Millis>,
    /// The trainer's step time. sup's hang detector (the engine's rule with
    /// its default settings: no step for clamp(hang_factor × step time,
    /// floor, ceiling)) stops a hung job after that long, when sooner than
    /// NCCL's watchdog (`hang_detect_ms`). None: the watchdog only.
    pub step_time_ms: Option<Millis>,
    /// A cordoned or dead node returns after this long.
    pub repair_ms: Millis,
    pub seed: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            job_nodes: 2048,
            gpus_per_node: 8,
            spares: 0,
            min_nodes: 2048,
            duration_ms: 54 * 24 * 3_600_000,
            gpu_detect_ms: 2_000,
            software_detect_ms: 5_000,
            hang_detect_ms: 600_000,
            unreachable_after_ms: 30_000,
            stall_confirm_ms: 5_000,
            lost_node_grace_ms: 60_000,
            launch_ms: 2_000,
            reinit_ms: 60_000,
            checkpoint_write_ms: 1_000,
            checkpoint_snapshot_ms: None,
            checkpoint_interval_ms: None,
            step_time_ms: None,
            repair_ms: 24 * 3_600_000,
            seed: 1,
        }
    }
}

/// Young/Daly first-order optimum τ = √(2·δ·MTBF): the engine's, so the
/// simulator and the live accounting recommend by one formula.
pub use sup_core::young_daly_ms;

impl SimParams {
    /// Training time blocked per checkpoint at interval τ: the whole write
    /// (synchronous), or the snapshot plus any wait for the previous write
    /// still in flight (asynchronous, one write at a time).
    pub fn checkpoint_blocking_ms(&self, interval_ms: Millis) -> Millis {
        match self.checkpoint_snapshot_ms {
            None => self.checkpoint_write_ms,
            Some(snapshot) => snapshot + (self.checkpoint_write_ms - interval_ms).max(0),
        }
    }

    /// From the end of a checkpoint's blocking time until it can be
    /// restored: 0 when synchronous, the background write when not.
    pub fn checkpoint_lag_ms(&self) -> Millis {
        match self.checkpoint_snapshot_ms {
            None => 0,
            Some(_) => self.checkpoint_write_ms,
        }
    }

    /// The recommended interval: Young/Daly for the blocking time δ. With
    /// asynchronous checkpoints the expected loss per failure is
    /// (τ + δ)/2 + the write (the newest checkpoint may not be written yet),
    /// whose optimum is the same √(2·δ·MTBF), but never shorter than a write:
    /// below that a snapshot only waits for the previous write.
    pub fn recommended_interval_ms(&self, mtbf_ms: f64) -> Millis {
        let blocking = self
            .checkpoint_snapshot_ms
            .unwrap_or(self.checkpoint_write_ms);
        let yd = young_daly_ms(blocking, mtbf_ms);
        match self.checkpoint_snapshot_ms {
            None => yd,
            Some(_) => yd.max(self.checkpoint_write_ms),
        }
    }

    /// A hang → the job's ranks are stopped: by sup's hang detector (the
    /// engine's bound for this step time, with supd's default `[detect]`
    /// settings) or by NCCL's watchdog, whichever comes first.
    pub fn hang_detection_ms(&self) -> Millis {
        let cfg = sup_core::detect::DetectConfig::default();
        match self.step_time_ms {
            Some(step) if step > 0 && cfg.hang_enabled => {
                let bound = (cfg.hang_factor * step as f64).round() as Millis;
                bound
                    .clamp(
                        cfg.hang_floor_ms,
                        cfg.hang_ceiling_ms.max(cfg.hang_floor_ms),
                    )
                    .min(self.hang_detect_ms)
            }
            _ => self.hang_detect_ms,
        }
    }
}

/// Where the hours of a run went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Losses {
    pub detection_ms: f64,
    pub restart_ms: f64,
    pub recompute_ms: f64,
    pub waiting_ms: f64,
    pub checkpoint_ms: f64,
    /// Capacity missing while the job ran shrunk.
    pub shrunk_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub duration_ms: Millis,
    pub interval_ms: Millis,
    pub productive_ms: f64,
    pub losses: Losses,
    pub failures: usize,
    pub failures_by_class: Vec<(FailureClass, usize)>,
    pub restarts: u32,
    pub spare_swaps: u32,
    pub shrinks: u32,
    /// Times the job had to wait for capacity (pending).
    pub stalls: u32,
    pub min_spares: u32,
    /// Time with no spare left.
    pub zero_spare_ms: Millis,
    /// The job ended failed (the engine gave up), with why.
    pub gave_up: Option<String>,
    /// The engine's own live goodput accounting of the simulated job at the
    /// end of the run, to compare with this report's ground truth.
    pub live: Option<sup_core::GoodputReport>,
}

impl SimReport {
    pub fn ettr(&self) -> f64 {
        self.productive_ms / self.duration_ms as f64
    }

    /// ETTR by the engine's live accounting (productive / wall).
    pub fn live_ettr(&self) -> Option<f64> {
        self.live.as_ref().and_then(|l| l.ettr)
    }
}
