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
    /// Telemetry reports accepted.
    pub reports: AtomicU64,
    /// Reports of any kind ignored, by why.
    pub ignored_reports: IgnoredReports,
    pub store_commits: AtomicU64,
    pub events_by_kind: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Xids by (node, GPU index, GPU UUID, Xid code).
    pub xids: Mutex<std::collections::BTreeMap<(String, u32, String, u32), u64>>,
    /// When each job's newest complete checkpoint was reported (its
    /// `job_checkpoint` event), unix ms; for seconds-since-checkpoint.
    pub last_checkpoint_at: Mutex<std::collections::BTreeMap<String, Millis>>,
    /// Detection to action: from a fault being reported to every rank of
    /// the replacement generation launched.
    pub recovery_latency: RecoveryLatency,
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
