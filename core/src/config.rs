//! The engine's settings: thresholds and windows, all in engine time
//! (milliseconds). supd fills them from its TOML file.

use crate::detect;
use crate::Millis;

/// Added to the assignment lease before a node's silence proves its ranks
/// gone: the agent's timer firing late on a loaded node, SIGKILL reaching
/// every rank, and the two monotonic clocks' drift (parts per million).
pub const LEASE_MARGIN_MS: Millis = 2_000;

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// A node that has sent nothing for this long is unreachable.
    pub unreachable_after_ms: Millis,
    /// After a (re)start, nodes restored from the store have this long to
    /// register again before their silence counts (never less than
    /// `unreachable_after_ms`).
    pub rejoin_grace_ms: Millis,
    /// How many events the log keeps; older ones are dropped.
    pub event_log_capacity: usize,
    /// MASTER_PORT given to every job's ranks.
    pub master_port: u32,
    /// How long ranks get between SIGTERM and SIGKILL.
    pub stop_grace_ms: u32,
    /// The spare reserve: healthy nodes placement keeps free of normal
    /// work (`jobs/placement.rs`); a warning event when fewer remain.
    pub spares_target: u32,
    /// An assigned node unreachable this long is lost, job progress or not.
    pub lost_node_grace_ms: Millis,
    /// An assigned node unreachable this long while its job has made no
    /// progress since it went silent is lost (corroborated).
    pub stall_confirm_ms: Millis,
    /// The assignment lease (0: none), which supd hands every agent at
    /// registration. An agent kills the ranks of its assignment when no
    /// supervisor has acknowledged anything it sent for this long, so ranks
    /// on a node that cannot be told to stop are surely gone
    /// `assignment_lease_ms + LEASE_MARGIN_MS` after the node was last
    /// heard; a job whose previous generation ran there starts again only
    /// then (`jobs/lease.rs`).
    pub assignment_lease_ms: Millis,
    /// How long after this engine was restored another supervisor may
    /// still have renewed assignment leases: a leader that could no longer
    /// renew its own term keeps renewing agents' leases (not acting) for
    /// this long, so an etcd outage does not stop training. A node that has
    /// not reported since the restore counts as heard this long after it.
    /// 0 where no other supervisor exists (sled).
    pub takeover_hold_ms: Millis,
    /// Restarts in a row with no new checkpoint and no step advance after
    /// which a job fails as a crash loop.
    pub crash_loop_limit: u32,
    /// Restart a shrunk job onto returned capacity right after its next
    /// checkpoint (instead of waiting for the next failure).
    pub grow_after_checkpoint: bool,
    /// The most nodes a job may ask for (at most [`crate::jobspec::MAX_NODES`]).
    pub max_job_nodes: u32,
    /// Circuit breaker: automatic cordons allowed within `breaker_window_ms`
    /// are max(breaker_min_cordons, ceil(breaker_max_share × nodes)).
    pub breaker_window_ms: Millis,
    pub breaker_max_share: f64,
    pub breaker_min_cordons: u32,
    /// ... and never more than this many, however big the cluster.
    pub breaker_max_cordons: u32,
    /// The same application Xid on at least this share of nodes (and at
    /// least 2) within the window is a correlated, likely-software fault.
    pub correlation_window_ms: Millis,
    pub correlation_share: f64,
    /// The same hardware (non-application) Xid on at least this many nodes
    /// within the correlation window is a correlated fault: automatic
    /// cordons are held until an operator resets the breaker.
    pub hardware_storm_nodes: u32,
    /// Partition guard: when at least max(partition_min_nodes,
    /// ceil(partition_share × nodes)) nodes turn unreachable within
    /// `partition_window_ms`, the likelier cause is supd's own network, so
    /// lost-node restarts are held (with an alert) until nodes re-confirm.
    pub partition_window_ms: Millis,
    pub partition_share: f64,
    pub partition_min_nodes: u32,
    /// Hang, straggler and loss-spike detectors.
    pub detect: detect::DetectConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            unreachable_after_ms: 4_000,
            rejoin_grace_ms: 30_000,
            event_log_capacity: 10_000,
            master_port: 29_500,
            stop_grace_ms: 10_000,
            spares_target: 0,
            lost_node_grace_ms: 60_000,
            stall_confirm_ms: 5_000,
            assignment_lease_ms: 15_000,
            takeover_hold_ms: 0,
            crash_loop_limit: 3,
            grow_after_checkpoint: true,
            max_job_nodes: crate::jobspec::MAX_NODES,
            breaker_window_ms: 600_000,
            breaker_max_share: 0.1,
            breaker_min_cordons: 3,
            breaker_max_cordons: 10,
            correlation_window_ms: 60_000,
            correlation_share: 0.5,
            hardware_storm_nodes: 5,
            partition_window_ms: 60_000,
            partition_share: 0.5,
            partition_min_nodes: 3,
            detect: detect::DetectConfig::default(),
        }
    }
}
