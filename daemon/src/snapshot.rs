//! What readers see: an immutable picture of the cluster that the state
//! actor publishes, so that status, node and event reads, `/metrics` and the
//! dashboard are served without queueing behind agents' reports.
//!
//! At 2,048 nodes building the picture takes the actor ~8 ms and rendering
//! `/metrics` from it ~80 ms. Built per read (as before), a few scrapers or
//! open dashboards took a visible share of the one task that ingests every
//! report. Now:
//!
//! - a read is served from the current snapshot while that is fresh: for
//!   [`COST_SHARE`] times as long as it took to build (so readers, however
//!   many, never take more than about 1/50 of the actor's time), at most
//!   [`MAX_AGE`]. On a small cluster that is under a millisecond: reads are
//!   as good as live;
//! - otherwise the reader asks the actor for a fresh one, and every reader
//!   that asked during the same batch gets the same one: the actor builds at
//!   most one per batch however many readers wait;
//! - a batch with an operator's command (cordon, job, drill, breaker)
//!   publishes a new snapshot before the command is answered, so a client
//!   that changed something reads its own change at once;
//! - the expensive renderings (Prometheus text, the status JSON) are made
//!   once per snapshot, off the actor, by the first reader that needs them.
//!
//! Counters (reports, store commits, Xids, ...) are not part of the
//! snapshot: `/metrics` reads them live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use sup_core::{Engine, EngineError, Millis};
use sup_proto::v1;
use tokio::sync::OnceCell;

use crate::view;

/// A snapshot answers reads for this many times its build time: readers
/// cost the actor at most ~2% of its time. On a small cluster that is well
/// under a millisecond (reads are as good as live); at 2,048 nodes (~8 ms
/// to build) about 400 ms.
pub const COST_SHARE: u32 = 50;

/// The oldest a snapshot may be and still answer a read, however long it
/// took to build: short next to how fast a person or Prometheus reads.
pub const MAX_AGE: Duration = Duration::from_secs(2);

pub struct Snapshot {
    /// When the actor built it.
    pub built_at: Millis,
    /// How long after `built_at` (or a confirmation) it answers reads.
    fresh_for_ms: i64,
    /// The newest time the actor confirmed that nothing had changed since
    /// it was built (a fresh snapshot without rebuilding one).
    confirmed_at: AtomicI64,
    pub status: v1::ClusterStatus,
    /// Index into `status.nodes` by node id.
    nodes: HashMap<String, usize>,
    /// The retained events, oldest first; shared with the previous snapshot
    /// when no event happened in between.
    events: Arc<Vec<v1::Event>>,
    rendered: OnceCell<Rendered>,
}

/// The renderings of a snapshot that several readers share.
#[derive(Default)]
pub struct Rendered {
    /// The state's metric families in OpenMetrics, without `# EOF`.
    pub metrics_openmetrics: Bytes,
    /// The same in the Prometheus text format 0.0.4.
    pub metrics_text: Bytes,
    /// `/api/v1/status`.
    pub status_json: Bytes,
}

impl Snapshot {
    /// The engine as it is now. `previous` lends its event list when no
    /// event was added or trimmed since.
    pub fn build(engine: &Engine, now: Millis, previous: Option<&Snapshot>) -> Snapshot {
        let status = view::status(engine);
        let nodes = status
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        // Events are only appended and trimmed from the front, so equal
        // first and last sequence numbers mean an equal list.
        let engine_bounds = (
            engine.events().next().map(|e| e.seq),
            engine.events().next_back().map(|e| e.seq),
        );
        let events = match previous {
            Some(p)
                if (
                    p.events.first().map(|e| e.seq),
                    p.events.last().map(|e| e.seq),
                ) == engine_bounds =>
            {
                p.events.clone()
            }
            _ => Arc::new(engine.events().map(view::event).collect()),
        };
        Snapshot {
            built_at: now,
            fresh_for_ms: 0,
            confirmed_at: AtomicI64::new(now),
            status,
            nodes,
            events,
            rendered: OnceCell::new(),
        }
    }

    /// Sets how long it answers reads from what it took to build.
    pub fn costing(mut self, build: Duration) -> Snapshot {
        let fresh_for = (build * COST_SHARE).min(MAX_AGE);
        self.fresh_for_ms = i64::try_from(fresh_for.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Whether it may answer a read at `now`. One that was cheap to build
    /// (under 20 µs: fresh for less than the clock's millisecond) never
    /// is: the reader asks the actor, as good as a live read. A clock that
    /// went back makes it stale, never fresh for longer.
    pub fn is_fresh(&self, now: Millis) -> bool {
        let age = now - self.confirmed_at.load(Ordering::Relaxed);
        (0..self.fresh_for_ms).contains(&age)
    }

    /// Marks it still current at `now` (the actor saw no change).
    pub fn confirm(&self, now: Millis) {
        self.confirmed_at.fetch_max(now, Ordering::Relaxed);
    }

    pub fn node(&self, node_id: &str) -> Result<&v1::Node, EngineError> {
        self.nodes
            .get(node_id)
            .and_then(|&i| self.status.nodes.get(i))
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))
    }

    /// Events after `after_seq`, oldest first, at most the newest `limit` of
    /// them (0: no limit).
    pub fn events(&self, after_seq: u64, limit: usize) -> &[v1::Event] {
        let start = self.events.partition_point(|e| e.seq <= after_seq);
        let matching = &self.events[start..];
        let skip = if limit == 0 {
            0
        } else {
            matching.len().saturating_sub(limit)
        };
        &matching[skip..]
    }

    /// The shared renderings, made by the first reader that needs them on a
    /// blocking thread (they take tens of milliseconds at cluster scale).
    pub async fn rendered(self: &Arc<Self>) -> Result<&Rendered, RenderError> {
        self.rendered
            .get_or_try_init(|| {
                let snapshot = self.clone();
                async move {
                    tokio::task::spawn_blocking(move || snapshot.render())
                        .await
                        .map_err(|e| RenderError(format!("the rendering task failed: {e}")))?
                }
            })
            .await
    }

    fn render(&self) -> Result<Rendered, RenderError> {
        let openmetrics = crate::metrics::render_state(&self.status)
            .map_err(|e| RenderError(format!("encoding metrics failed: {e}")))?;
        let text = crate::metrics::to_text_format(&openmetrics);
        let json = serde_json::to_vec(&sup_proto::json::StatusView::from(&self.status))
            .map_err(|e| RenderError(format!("encoding the status failed: {e}")))?;
        Ok(Rendered {
            metrics_openmetrics: Bytes::from(openmetrics),
            metrics_text: Bytes::from(text),
            status_json: Bytes::from(json),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> v1::Event {
        v1::Event {
            seq,
            ..Default::default()
        }
    }

    fn snapshot_with(events: Vec<v1::Event>, built_at: Millis) -> Snapshot {
        Snapshot {
            built_at,
            fresh_for_ms: 0,
            confirmed_at: AtomicI64::new(built_at),
            status: v1::ClusterStatus {
                nodes: vec![v1::Node {
                    id: "n1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            nodes: HashMap::from([("n1".to_owned(), 0)]),
            events: Arc::new(events),
            rendered: OnceCell::new(),
        }
    }

    #[test]
    fn events_after_a_sequence_number_newest_limit() {
        let s = snapshot_with((1..=5).map(event).collect(), 0);
        let seqs = |e: &[v1::Event]| e.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.events(0, 0)), vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs(s.events(2, 0)), vec![3, 4, 5]);
        assert_eq!(seqs(s.events(0, 2)), vec![4, 5]);
        assert_eq!(seqs(s.events(5, 0)), Vec::<u64>::new());
        assert_eq!(seqs(s.events(9, 3)), Vec::<u64>::new());
    }

    #[test]
    fn freshness_follows_the_build_cost_is_capped_and_renewed_by_confirmation() {
        // 8 ms to build: fresh for 400 ms.
        let s = snapshot_with(vec![], 1_000).costing(Duration::from_millis(8));
        assert!(s.is_fresh(1_000));
        assert!(s.is_fresh(1_399));
        assert!(!s.is_fresh(1_400));
        assert!(!s.is_fresh(999), "a clock that went back");
        s.confirm(5_000);
        assert!(s.is_fresh(5_399));
        // A confirmation never moves it back.
        s.confirm(2_000);
        assert!(s.is_fresh(5_399));

        // However slow the build, at most MAX_AGE.
        let slow = snapshot_with(vec![], 0).costing(Duration::from_secs(60));
        let max = i64::try_from(MAX_AGE.as_millis()).expect("small");
        assert!(slow.is_fresh(max - 1));
        assert!(!slow.is_fresh(max));

        // A cheap one is never served without asking: as good as live.
        let cheap = snapshot_with(vec![], 0).costing(Duration::from_micros(10));
        assert!(!cheap.is_fresh(0));
    }

    #[test]
    fn node_lookup_names_an_unknown_node() {
        let s = snapshot_with(vec![], 0);
        assert_eq!(s.node("n1").map(|n| n.id.as_str()).ok(), Some("n1"));
        assert!(matches!(s.node("n2"), Err(EngineError::UnknownNode(id)) if id == "n2"));
    }
}
