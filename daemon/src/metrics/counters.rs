//! What supd counts as it runs, for `/metrics`: written by the actor (and
//! the gRPC accept loop for TLS), read at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sup_core::{Millis, ReportOutcome};

use crate::grpc_tls::{HandshakeFailures, Handshakes};

/// Counters the metrics endpoint reads; written by the actor, except the
/// TLS parts (the gRPC accept loop's).
#[derive(Debug, Default)]
pub struct Counters {
    pub tls_handshake_failures: Arc<HandshakeFailures>,
    /// The gRPC port's TLS handshakes (for certificate expiry), when TLS
    /// is on.
    pub tls: std::sync::OnceLock<Handshakes>,
    /// Which replica this is, for the status (set once at start).
    pub supervisor: std::sync::OnceLock<sup_proto::v1::Supervisor>,
    /// Why this leader does not act now (its term cannot be renewed), for
    /// `/readyz`; None while it acts.
    pub not_acting: Mutex<Option<String>>,
    /// Telemetry reports accepted.
    pub reports: AtomicU64,
    /// Reports of any kind ignored, by why.
    pub ignored_reports: IgnoredReports,
    pub store_commits: AtomicU64,
    pub events_by_kind: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Xids by (node, GPU index, GPU UUID, Xid code), bounded.
    pub xids: Mutex<XidCounts>,
    /// When each job's newest complete checkpoint was reported (its
    /// `job_checkpoint` event), unix ms; for seconds-since-checkpoint.
    pub last_checkpoint_at: Mutex<std::collections::BTreeMap<String, Millis>>,
    /// Detection to action: from a fault being reported to every rank of
    /// the replacement generation launched.
    pub recovery_latency: RecoveryLatency,
    /// Snapshots built for readers, and the actor's time spent on them
    /// (microseconds): what reads cost the ingest path.
    pub snapshots_built: AtomicU64,
    pub snapshot_build_us: AtomicU64,
    /// Checkpoint catalogs applied, by node (one scanner per job: the node
    /// of rank 0). Registered nodes only; forgotten with the node.
    pub catalogs: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A histogram of recovery latencies in seconds (shared with each scrape's
/// registry: clones observe into the same buckets).
#[derive(Debug, Clone)]
pub struct RecoveryLatency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for RecoveryLatency {
    fn default() -> Self {
        // From "spare already warm" (sub-second) to "waited for a node".
        RecoveryLatency(prometheus_client::metrics::histogram::Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]))
    }
}

/// Agent reports ignored, one counter per [`ReportOutcome`] that is not
/// `Applied`.
#[derive(Debug, Default)]
pub struct IgnoredReports {
    stale_stream: AtomicU64,
    stale_generation: AtomicU64,
    stopped_by_agent: AtomicU64,
}

impl IgnoredReports {
    /// Counts `outcome` if it was not applied.
    pub fn count(&self, outcome: ReportOutcome) {
        let counter = match outcome {
            ReportOutcome::Applied => return,
            ReportOutcome::StaleStream => &self.stale_stream,
            ReportOutcome::StaleGeneration => &self.stale_generation,
            ReportOutcome::StoppedByAgent => &self.stopped_by_agent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (reason label, count) for every reason, zeros included.
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        [
            (ReportOutcome::StaleStream, &self.stale_stream),
            (ReportOutcome::StaleGeneration, &self.stale_generation),
            (ReportOutcome::StoppedByAgent, &self.stopped_by_agent),
        ]
        .map(|(outcome, counter)| (outcome.as_str(), counter.load(Ordering::Relaxed)))
    }
}

/// Xid counts for `sup_gpu_xids_total`: keyed by what the node registered
/// (index and UUID), never by what a report claims, and capped in series,
/// so one bad node cannot grow supd's memory or the scrape.
#[derive(Debug, Default)]
pub struct XidCounts {
    counts: std::collections::BTreeMap<(String, u32, String, u32), u64>,
    /// Distinct Xid codes counted per (node, GPU index).
    codes_per_gpu: std::collections::BTreeMap<(String, u32), usize>,
    /// Xids not counted because a series cap was reached.
    dropped: u64,
}

/// Series of `sup_gpu_xids_total` at most: 16,384 GPUs with a handful of
/// distinct Xids each.
pub const MAX_XID_SERIES: usize = 65_536;

/// Distinct Xid codes counted per GPU: a failing GPU shows a few; a node
/// that reports hundreds (a compromised agent) must not use up the
/// cluster's series.
pub const MAX_XID_CODES_PER_GPU: usize = 32;

impl XidCounts {
    /// Counts one Xid of `node`'s GPU `index` (UUID as registered).
    pub fn count(&mut self, node: &str, index: u32, uuid: &str, xid: u32) {
        let key = (node.to_owned(), index, uuid.to_owned(), xid);
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
            return;
        }
        let codes = self
            .codes_per_gpu
            .entry((node.to_owned(), index))
            .or_default();
        if self.counts.len() < MAX_XID_SERIES && *codes < MAX_XID_CODES_PER_GPU {
            *codes += 1;
            self.counts.insert(key, 1);
        } else {
            self.dropped += 1;
        }
    }

    /// Forgets a removed node's series.
    pub fn remove_node(&mut self, node: &str) {
        self.counts.retain(|(n, _, _, _), _| n != node);
        self.codes_per_gpu.retain(|(n, _), _| n != node);
    }

    /// (node, GPU index, UUID, Xid) and count, for the exposition.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, u32, String, u32), &u64)> {
        self.counts.iter()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xid_series_are_capped_and_what_is_left_out_is_counted() {
        let mut x = XidCounts::default();
        let per_node = 8 * MAX_XID_CODES_PER_GPU as u32;
        let nodes = MAX_XID_SERIES as u32 / per_node + 1;
        for n in 0..nodes {
            for i in 0..per_node {
                x.count(&format!("n{n}"), i % 8, "GPU", i);
            }
        }
        x.count("n0", 0, "GPU", 0);
        assert_eq!(x.iter().count(), MAX_XID_SERIES);
        assert_eq!(x.dropped(), u64::from(per_node));
        assert_eq!(
            x.iter().find(|(k, _)| k.3 == 0).map(|(_, n)| *n),
            Some(2),
            "an existing series still counts past the cap"
        );
    }

    #[test]
    fn one_gpu_counts_a_bounded_number_of_distinct_codes() {
        let mut x = XidCounts::default();
        for code in 0..1_000 {
            x.count("n1", 0, "GPU-0", code);
        }
        x.count("n1", 1, "GPU-1", 79);
        assert_eq!(x.iter().count(), MAX_XID_CODES_PER_GPU + 1);
        assert_eq!(x.dropped(), 1_000 - MAX_XID_CODES_PER_GPU as u64);
    }
}
