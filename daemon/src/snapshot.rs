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
//!   [`MAX_AGE`]. A snapshot built in under a millisecond (a cluster of up
//!   to a few hundred nodes) is never reused without asking: reads are live;
//! - otherwise the reader asks the actor for a fresh one, and every reader
//!   that asked during the same batch gets the same one: the actor builds at
//!   most one per batch however many readers wait;
//! - a batch with an operator's command (cordon, job, drill, breaker)
//!   publishes a new snapshot before the command is answered, so a client
//!   that changed something reads its own change at once;
//! - the expensive renderings (Prometheus text, the status JSON) are made
//!   off the actor by the first reader that needs them, and shared with the
//!   next snapshots while they are young for what they cost (see
//!   [`Rendering`]).
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

use crate::cluster::{Cluster, NodeEntry};
use crate::view;

/// A snapshot answers reads for this many times its build time: readers
/// cost the actor at most ~2% of its time. At 2,048 nodes (~8 ms to build)
/// that is about 400 ms.
pub const COST_SHARE: u32 = 50;

/// The oldest a snapshot may be and still answer a read, however long it
/// took to build: short next to how fast a person or Prometheus reads.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// A snapshot (or rendering) that took less than this is never reused
/// without asking: below a few hundred nodes reads are live.
pub const MIN_COST_TO_SHARE: Duration = Duration::from_millis(1);

/// How long something that took `cost` to make answers reads.
fn fresh_for_ms(cost: Duration) -> i64 {
    if cost < MIN_COST_TO_SHARE {
        return 0;
    }
    let fresh_for = (cost * COST_SHARE).min(MAX_AGE);
    i64::try_from(fresh_for.as_millis()).unwrap_or(i64::MAX)
}

pub struct Snapshot {
    /// When the actor built it.
    pub built_at: Millis,
    /// How long after `built_at` (or a confirmation) it answers reads.
    fresh_for_ms: i64,
    /// The newest time the actor confirmed that nothing had changed since
    /// it was built (a fresh snapshot without rebuilding one).
    confirmed_at: AtomicI64,
    /// The whole cluster, every node and job: what `/metrics` and the
    /// dashboard stream read. Read answers take [`Snapshot::summary`] or a
    /// page of it (see `crate::pages`).
    pub cluster: Cluster,
    /// The bounded status answer, made from `cluster` by the first reader.
    summary: std::sync::OnceLock<v1::ClusterStatus>,
    /// Index into `cluster.nodes` by node id.
    nodes: HashMap<String, usize>,
    /// The retained events, oldest first; shared with the previous snapshot
    /// when no event happened in between.
    events: Arc<Vec<v1::Event>>,
    /// The state's metric families in OpenMetrics, without `# EOF`.
    metrics_openmetrics: Shared,
    /// The same in the Prometheus text format 0.0.4.
    metrics_text: Shared,
    /// Both gzipped, for scrapers that accept it (Prometheus does).
    metrics_openmetrics_gzip: Shared,
    metrics_text_gzip: Shared,
    /// `/api/v1/status`.
    status_json: Shared,
}

/// One rendering of a snapshot (tens of milliseconds and megabytes at
/// cluster scale), made by the first reader that needs it and then shared:
/// by every reader of the snapshot, and by later snapshots while it is
/// younger than [`COST_SHARE`] times what it took to make (at most
/// [`MAX_AGE`]), so that however many scrapers there are, rendering takes
/// at most ~2% of a core.
pub struct Rendering {
    pub bytes: Bytes,
    made_at: Millis,
    fresh_for_ms: i64,
}

impl Rendering {
    fn is_fresh(&self, now: Millis) -> bool {
        (0..self.fresh_for_ms).contains(&(now - self.made_at))
    }
}

#[derive(Default)]
struct Shared {
    own: OnceCell<Arc<Rendering>>,
    /// The previous snapshot's rendering, while it was fresh.
    inherited: Option<Arc<Rendering>>,
}

impl Shared {
    fn after(previous: &Shared, now: Millis) -> Shared {
        Shared {
            own: OnceCell::new(),
            inherited: previous
                .own
                .get()
                .or(previous.inherited.as_ref())
                .filter(|r| r.is_fresh(now))
                .cloned(),
        }
    }
}

/// Which rendering.
#[derive(Debug, Clone, Copy)]
enum Kind {
    MetricsOpenMetrics,
    MetricsText,
    MetricsOpenMetricsGzip,
    MetricsTextGzip,
    StatusJson,
}

impl Snapshot {
    /// The engine as it is now. `previous` lends its event list when no
    /// event was added or trimmed since.
    pub fn build(engine: &Engine, now: Millis, previous: Option<&Snapshot>) -> Snapshot {
        let cluster = Cluster::build(engine, previous.map(|p| &p.cluster));
        let nodes = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id().to_owned(), i))
            .collect();
        // Events are only appended and trimmed from the front, so equal
        // first and last sequence numbers mean an equal list.
        let engine_bounds = (
            engine.events().next().map(|e| e.seq),
            engine.events().next_back().map(|e| e.seq),
        );
        let shared = |pick: fn(&Snapshot) -> &Shared| {
            previous.map_or_else(Shared::default, |p| Shared::after(pick(p), now))
        };
        let (metrics_openmetrics, metrics_text, status_json) = (
            shared(|p| &p.metrics_openmetrics),
            shared(|p| &p.metrics_text),
            shared(|p| &p.status_json),
        );
        let (metrics_openmetrics_gzip, metrics_text_gzip) = (
            shared(|p| &p.metrics_openmetrics_gzip),
            shared(|p| &p.metrics_text_gzip),
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
            cluster,
            summary: std::sync::OnceLock::new(),
            nodes,
            events,
            metrics_openmetrics,
            metrics_text,
            metrics_openmetrics_gzip,
            metrics_text_gzip,
            status_json,
        }
    }

    /// Sets how long it answers reads from what it took to build.
    pub fn costing(mut self, build: Duration) -> Snapshot {
        self.fresh_for_ms = fresh_for_ms(build);
        self
    }

    /// Whether it may answer a read at `now`. One that was cheap to build
    /// (under [`MIN_COST_TO_SHARE`]) never is: the reader asks the actor, as
    /// good as a live read. A clock that went back makes it stale, never
    /// fresh for longer.
    pub fn is_fresh(&self, now: Millis) -> bool {
        let age = now - self.confirmed_at.load(Ordering::Relaxed);
        (0..self.fresh_for_ms).contains(&age)
    }

    /// Marks it still current at `now` (the actor saw no change).
    pub fn confirm(&self, now: Millis) {
        self.confirmed_at.fetch_max(now, Ordering::Relaxed);
    }

    pub fn node(&self, node_id: &str) -> Result<v1::Node, EngineError> {
        self.nodes
            .get(node_id)
            .and_then(|&i| self.cluster.nodes.get(i))
            .map(NodeEntry::to_node)
            .ok_or_else(|| EngineError::UnknownNode(node_id.to_owned()))
    }

    /// `GetStatus` and `/api/v1/status`: bounded whatever the cluster's
    /// size; made once per snapshot, off the actor.
    pub fn summary(&self) -> &v1::ClusterStatus {
        self.summary
            .get_or_init(|| crate::pages::status_summary(&self.cluster))
    }

    /// Every retained event, oldest first.
    pub fn kept_events(&self) -> &[v1::Event] {
        &self.events
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

    /// The state's metric families in OpenMetrics (no `# EOF`).
    pub async fn metrics_openmetrics(self: &Arc<Self>) -> Result<Bytes, RenderError> {
        self.rendering(Kind::MetricsOpenMetrics, None).await
    }

    /// The state's metric families in the text format 0.0.4, converted
    /// from the OpenMetrics rendering.
    pub async fn metrics_text(self: &Arc<Self>) -> Result<Bytes, RenderError> {
        if let Some(fresh) = self.inherited(Kind::MetricsText) {
            return Ok(fresh);
        }
        let openmetrics = self.metrics_openmetrics().await?;
        self.rendering(Kind::MetricsText, Some(openmetrics)).await
    }

    /// The state's metric families, in OpenMetrics or the text format,
    /// as one gzip member: the response appends the counters as another
    /// (a gzip stream may hold several members; Prometheus reads them all).
    pub async fn metrics_gzip(self: &Arc<Self>, openmetrics: bool) -> Result<Bytes, RenderError> {
        let kind = if openmetrics {
            Kind::MetricsOpenMetricsGzip
        } else {
            Kind::MetricsTextGzip
        };
        if let Some(fresh) = self.inherited(kind) {
            return Ok(fresh);
        }
        let plain = if openmetrics {
            self.metrics_openmetrics().await?
        } else {
            self.metrics_text().await?
        };
        self.rendering(kind, Some(plain)).await
    }

    /// `/api/v1/status`.
    pub async fn status_json(self: &Arc<Self>) -> Result<Bytes, RenderError> {
        self.rendering(Kind::StatusJson, None).await
    }

    fn shared(&self, kind: Kind) -> &Shared {
        match kind {
            Kind::MetricsOpenMetrics => &self.metrics_openmetrics,
            Kind::MetricsText => &self.metrics_text,
            Kind::MetricsOpenMetricsGzip => &self.metrics_openmetrics_gzip,
            Kind::MetricsTextGzip => &self.metrics_text_gzip,
            Kind::StatusJson => &self.status_json,
        }
    }

    /// The previous snapshots' rendering of `kind`, while fresh.
    fn inherited(&self, kind: Kind) -> Option<Bytes> {
        self.shared(kind)
            .inherited
            .as_ref()
            .filter(|r| r.is_fresh(sup_proto::time::now_unix_ms()))
            .map(|r| r.bytes.clone())
    }

    async fn rendering(
        self: &Arc<Self>,
        kind: Kind,
        input: Option<Bytes>,
    ) -> Result<Bytes, RenderError> {
        if let Some(fresh) = self.inherited(kind) {
            return Ok(fresh);
        }
        let own = self
            .shared(kind)
            .own
            .get_or_try_init(|| {
                let snapshot = self.clone();
                async move {
                    tokio::task::spawn_blocking(move || snapshot.render(kind, input))
                        .await
                        .map_err(|e| RenderError(format!("the rendering task failed: {e}")))?
                }
            })
            .await?;
        Ok(own.bytes.clone())
    }

    /// Renders `kind` on a blocking thread, timed for its freshness.
    /// `input`: the rendering it is made from (text and gzip ones).
    fn render(&self, kind: Kind, input: Option<Bytes>) -> Result<Arc<Rendering>, RenderError> {
        let started = std::time::Instant::now();
        let input = input.unwrap_or_default();
        let bytes = match kind {
            Kind::MetricsOpenMetrics => crate::metrics::render_state(&self.cluster)
                .map(Bytes::from)
                .map_err(|e| RenderError(format!("encoding metrics failed: {e}")))?,
            Kind::MetricsText => {
                let text = std::str::from_utf8(&input)
                    .map_err(|e| RenderError(format!("metrics are not UTF-8: {e}")))?;
                Bytes::from(crate::metrics::to_text_format(text))
            }
            Kind::MetricsOpenMetricsGzip | Kind::MetricsTextGzip => Bytes::from(
                gzip(&input)
                    .map_err(|e| RenderError(format!("compressing metrics failed: {e}")))?,
            ),
            Kind::StatusJson => {
                serde_json::to_vec(&sup_proto::json::StatusView::from(self.summary()))
                    .map(Bytes::from)
                    .map_err(|e| RenderError(format!("encoding the status failed: {e}")))?
            }
        };
        Ok(Arc::new(Rendering {
            bytes,
            made_at: sup_proto::time::now_unix_ms(),
            fresh_for_ms: fresh_for_ms(started.elapsed()),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

/// One gzip member of `bytes`, at a fast level: repetitive exposition text
/// shrinks ~10x either way, and the time is the scrapers' latency.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(bytes)?;
    encoder.finish()
}

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
            cluster: Cluster::from_status(v1::ClusterStatus {
                nodes: vec![v1::Node {
                    id: "n1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            summary: std::sync::OnceLock::new(),
            nodes: HashMap::from([("n1".to_owned(), 0)]),
            events: Arc::new(events),
            metrics_openmetrics: Shared::default(),
            metrics_text: Shared::default(),
            metrics_openmetrics_gzip: Shared::default(),
            metrics_text_gzip: Shared::default(),
            status_json: Shared::default(),
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
        let cheap = snapshot_with(vec![], 0).costing(Duration::from_micros(900));
        assert!(!cheap.is_fresh(0));
    }

    #[test]
    fn a_young_rendering_is_shared_with_later_snapshots_and_an_old_one_is_not() {
        let made = Arc::new(Rendering {
            bytes: Bytes::from_static(b"sup_nodes 1\n"),
            made_at: 1_000,
            fresh_for_ms: 400,
        });
        let first = Shared {
            own: OnceCell::new_with(Some(made)),
            inherited: None,
        };
        let second = Shared::after(&first, 1_200);
        assert!(second.inherited.is_some(), "young: shared");
        assert!(
            Shared::after(&second, 1_399).inherited.is_some(),
            "passed on while young"
        );
        assert!(Shared::after(&second, 1_400).inherited.is_none(), "too old");
        assert!(
            Shared::after(&first, 999).inherited.is_none(),
            "clock went back"
        );
    }

    #[test]
    fn gzip_members_concatenate_into_one_stream() {
        use std::io::Read;
        let mut body = gzip(b"sup_nodes 1\n").expect("gzip");
        body.extend(gzip(b"# EOF\n").expect("gzip"));
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(body.as_slice())
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, "sup_nodes 1\n# EOF\n");
    }

    #[test]
    fn node_lookup_names_an_unknown_node() {
        let s = snapshot_with(vec![], 0);
        assert_eq!(s.node("n1").map(|n| n.id).ok().as_deref(), Some("n1"));
        assert!(matches!(s.node("n2"), Err(EngineError::UnknownNode(id)) if id == "n2"));
    }
}
