//! The read-only dashboard at `/`: one HTML page, its CSS and JavaScript
//! embedded in the binary (no front-end build step), fed by a server-sent
//! event stream at `/api/v1/stream`.
//!
//! The stream is built for 2,000 nodes: each connection remembers what it
//! last sent and, once a second, sends only the nodes whose compact summary
//! changed (the page then touches only those nodes' DOM), the job list when
//! it changed, and the events it has not sent yet. A page that reconnects
//! gets a full snapshot first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use serde::Serialize;
use sup_proto::json::{gpu_health_name, node_state_name, EventView, JobView};
use sup_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::actor::SupervisorHandle;
use crate::cluster::Cluster;

const INDEX_HTML: &str = include_str!("index.html");
const APP_CSS: &str = include_str!("app.css");
const APP_JS: &str = include_str!("app.js");

/// How often each stream looks at the cluster. A second is what a person
/// notices; the diff keeps the bytes small when nothing changed.
const TICK: Duration = Duration::from_secs(1);
/// Events sent in the first message of a stream (the page shows the newest).
const INITIAL_EVENTS: usize = 200;
/// Nodes per `nodes` message: the first snapshot of 16,384 nodes would be
/// one ~2.5 MB message; in parts of this many (~150 KB) no message grows
/// with the cluster, and the page lays the grid out once, after the last.
pub const NODES_PER_MESSAGE: usize = 1000;

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

pub async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

/// What the page needs of one node: small, so that a changed node costs
/// about a hundred bytes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSummary {
    pub id: String,
    pub state: &'static str,
    /// The node holds no job and is healthy: counted in the spare pool.
    pub spare: bool,
    pub connected: bool,
    pub job: Option<String>,
    /// One letter per GPU, in index order: `o` ok, `d` degraded, `f` failed.
    pub gpus: String,
    /// "GPU 3: reason" for each GPU that is not ok.
    pub problems: Vec<String>,
    pub cordon: Option<String>,
    /// "drained: maintenance" when Slurm starts no work on the node.
    pub slurm: Option<String>,
}

pub fn summarize(node: &v1::Node, spare: bool) -> NodeSummary {
    let mut gpus: Vec<&v1::Gpu> = node.gpus.iter().collect();
    gpus.sort_by_key(|g| g.index);
    NodeSummary {
        id: node.id.clone(),
        state: node_state_name(node.state),
        spare,
        connected: node.connected,
        job: (!node.job.is_empty()).then(|| node.job.clone()),
        gpus: gpus
            .iter()
            .map(|g| match gpu_health_name(g.health) {
                "failed" => 'f',
                "degraded" => 'd',
                _ => 'o',
            })
            .collect(),
        problems: gpus
            .iter()
            .filter(|g| gpu_health_name(g.health) != "ok")
            .map(|g| {
                let reason = if g.health_reason.is_empty() {
                    "no reason given"
                } else {
                    g.health_reason.as_str()
                };
                format!("GPU {}: {reason}", g.index)
            })
            .collect(),
        cordon: node
            .cordon
            .as_ref()
            .map(|c| format!("{} (by {})", c.reason, c.by)),
        slurm: node.slurm.as_ref().filter(|s| s.unavailable).map(|s| {
            if s.reason.is_empty() {
                s.state.clone()
            } else {
                format!("{}: {}", s.state, s.reason)
            }
        }),
    }
}

#[derive(Debug, Serialize)]
struct NodesDelta<'a> {
    /// A full snapshot: the page drops every node it has first.
    full: bool,
    upsert: &'a [&'a NodeSummary],
    remove: Vec<String>,
    /// More parts of this update follow (see [`NODES_PER_MESSAGE`]).
    more: bool,
}

#[derive(Debug, Serialize, PartialEq)]
struct Summary {
    spares: usize,
    spares_target: u32,
    /// Spares lent to low-priority work (counted in `spares`).
    spares_lent: usize,
    breaker_open: bool,
    breaker_reason: Option<String>,
    nodes: usize,
}

/// Per-connection memory of what was sent, so that each tick sends a diff.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The first message (a full snapshot) has been made.
    started: bool,
    nodes: HashMap<String, NodeSummary>,
    jobs: Option<String>,
    summary: Option<String>,
    last_seq: Option<u64>,
}

impl StreamState {
    /// The SSE messages (event name, JSON data) that bring a page that has
    /// seen what this state remembers up to `status`.
    pub fn diff(&mut self, cluster: &Cluster) -> Vec<(&'static str, String)> {
        let status = &cluster.status;
        let mut out = Vec::new();
        let full = !self.started;
        self.started = true;
        let spares: std::collections::HashSet<&str> =
            status.spares.iter().map(String::as_str).collect();
        let mut fresh: HashMap<String, NodeSummary> = HashMap::with_capacity(cluster.nodes.len());
        for node in cluster.fixed_nodes() {
            let s = summarize(node, spares.contains(node.id.as_str()));
            fresh.insert(s.id.clone(), s);
        }
        let mut upsert: Vec<&NodeSummary> = fresh
            .values()
            .filter(|s| self.nodes.get(&s.id) != Some(*s))
            .collect();
        upsert.sort_by(|a, b| a.id.cmp(&b.id));
        let remove: Vec<String> = self
            .nodes
            .keys()
            .filter(|id| !fresh.contains_key(*id))
            .cloned()
            .collect();
        if full || !upsert.is_empty() || !remove.is_empty() {
            let parts: Vec<&[&NodeSummary]> = if upsert.is_empty() {
                vec![&[]]
            } else {
                upsert.chunks(NODES_PER_MESSAGE).collect()
            };
            let last = parts.len() - 1;
            let mut remove = Some(remove);
            for (i, part) in parts.into_iter().enumerate() {
                let delta = NodesDelta {
                    full: full && i == 0,
                    upsert: part,
                    remove: remove.take().unwrap_or_default(),
                    more: i < last,
                };
                if let Ok(json) = serde_json::to_string(&delta) {
                    out.push(("nodes", json));
                }
            }
        }
        self.nodes = fresh;

        // As the status shows them: a job of 16,320 nodes is ~1.7 MB of
        // JSON in full (its node ids and stats), sent again every second
        // while it trains; the page needs its counts, not every id.
        let jobs: Vec<JobView> = status
            .jobs
            .iter()
            .map(|j| JobView::from(&crate::pages::job_summary(j)))
            .collect();
        if let Ok(json) = serde_json::to_string(&jobs) {
            if self.jobs.as_deref() != Some(json.as_str()) {
                self.jobs = Some(json.clone());
                out.push(("jobs", json));
            }
        }

        let breaker = status.breaker.as_ref();
        let summary = Summary {
            spares: status.spares.len(),
            spares_target: status.spares_target,
            spares_lent: status.spares_lent.len(),
            breaker_open: breaker.is_some_and(|b| b.open),
            breaker_reason: breaker
                .filter(|b| b.open)
                .map(|b| b.reason.clone())
                .filter(|r| !r.is_empty()),
            nodes: cluster.nodes.len(),
        };
        if let Ok(json) = serde_json::to_string(&summary) {
            if self.summary.as_deref() != Some(json.as_str()) {
                self.summary = Some(json.clone());
                out.push(("summary", json));
            }
        }
        out
    }
}

/// `/api/v1/stream`: server-sent events `nodes`, `jobs`, `summary` and
/// `events` (see [`StreamState::diff`]); one task per connection, ended
/// when the page goes away.
pub async fn stream(State(handle): State<SupervisorHandle>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        let mut state = StreamState::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                break;
            }
            let Ok(snapshot) = handle.snapshot().await else {
                // The actor stopped: supd is shutting down or failed.
                break;
            };
            let mut messages = state.diff(&snapshot.cluster);
            let (after, limit) = match state.last_seq {
                Some(seq) => (seq, 0),
                None => (0, INITIAL_EVENTS),
            };
            {
                let events = snapshot.events(after, limit);
                if let Some(last) = events.last() {
                    state.last_seq = Some(last.seq);
                } else if state.last_seq.is_none() {
                    state.last_seq = Some(0);
                }
                if !events.is_empty() {
                    let views: Vec<EventView> = events.iter().map(EventView::from).collect();
                    if let Ok(json) = serde_json::to_string(&views) {
                        messages.push(("events", json));
                    }
                }
            }
            for (name, data) in messages {
                if tx
                    .send(Ok(Event::default().event(name).data(data)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: v1::NodeState) -> v1::Node {
        v1::Node {
            id: id.into(),
            state: state as i32,
            gpus: (0..2)
                .map(|i| v1::Gpu {
                    index: i,
                    health: v1::GpuHealth::Ok as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_slurm_holds_says_so_with_slurms_reason() {
        let mut n = node("a", v1::NodeState::Ready);
        assert_eq!(summarize(&n, false).slurm, None);
        n.slurm = Some(v1::SlurmNode {
            name: "a".into(),
            state: "drained".into(),
            reason: "maintenance".into(),
            unavailable: true,
            drained_by_sup: false,
        });
        assert_eq!(
            summarize(&n, false).slurm.as_deref(),
            Some("drained: maintenance")
        );
    }

    #[test]
    fn sends_a_snapshot_then_only_what_changed() {
        let mut status = v1::ClusterStatus {
            nodes: vec![
                node("a", v1::NodeState::Ready),
                node("b", v1::NodeState::Ready),
            ],
            ..Default::default()
        };
        let mut s = StreamState::default();
        let first = s.diff(&Cluster::from_status(status.clone()));
        let nodes = &first.iter().find(|(n, _)| *n == "nodes").expect("nodes").1;
        assert!(nodes.contains("\"full\":true"), "{nodes}");
        assert!(nodes.contains("\"id\":\"a\"") && nodes.contains("\"id\":\"b\""));

        assert!(
            s.diff(&Cluster::from_status(status.clone())).is_empty(),
            "nothing changed, nothing sent"
        );

        status.nodes[1].state = v1::NodeState::Cordoned as i32;
        status.nodes[1].cordon = Some(v1::Cordon {
            validation: String::new(),
            reason: "HBM".into(),
            by: "ops".into(),
            ..Default::default()
        });
        status.nodes[1].gpus[1].health = v1::GpuHealth::Failed as i32;
        let third = s.diff(&Cluster::from_status(status.clone()));
        assert_eq!(third.len(), 1, "{third:?}");
        let nodes = &third[0].1;
        assert!(!nodes.contains("\"id\":\"a\""), "a did not change: {nodes}");
        assert!(nodes.contains("\"state\":\"cordoned\""), "{nodes}");
        assert!(nodes.contains("\"gpus\":\"of\""), "{nodes}");
        assert!(nodes.contains("HBM (by ops)"), "{nodes}");

        status.nodes.remove(0);
        let fourth = s.diff(&Cluster::from_status(status.clone()));
        assert!(fourth[0].1.contains("\"remove\":[\"a\"]"), "{fourth:?}");

        let mut empty = StreamState::default();
        let none = v1::ClusterStatus::default();
        assert_eq!(
            empty.diff(&Cluster::from_status(none.clone())).len(),
            3,
            "nodes, jobs, summary: even of nothing"
        );
        assert!(
            empty.diff(&Cluster::from_status(none.clone())).is_empty(),
            "then nothing"
        );
    }

    #[test]
    fn a_big_snapshot_comes_in_parts_of_bounded_size() {
        let status = v1::ClusterStatus {
            nodes: (0..2500)
                .map(|i| node(&format!("gpu-node-{i:05}"), v1::NodeState::Ready))
                .collect(),
            ..Default::default()
        };
        let mut s = StreamState::default();
        let parts: Vec<serde_json::Value> = s
            .diff(&Cluster::from_status(status.clone()))
            .into_iter()
            .filter(|(name, _)| *name == "nodes")
            .map(|(_, json)| serde_json::from_str(&json).expect("json"))
            .collect();
        assert_eq!(parts.len(), 3);
        let flags: Vec<(bool, bool, usize)> = parts
            .iter()
            .map(|p| {
                (
                    p["full"] == true,
                    p["more"] == true,
                    p["upsert"].as_array().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(
            flags,
            [
                (true, true, NODES_PER_MESSAGE),
                (false, true, NODES_PER_MESSAGE),
                (false, false, 500)
            ]
        );
        // A quiet second: nothing; one change: one part, the last.
        assert!(s.diff(&Cluster::from_status(status.clone())).is_empty());
    }

    #[test]
    fn a_job_on_sixteen_thousand_nodes_is_sent_as_counts_not_every_id() {
        let status = v1::ClusterStatus {
            jobs: vec![v1::Job {
                name: "bench".into(),
                state: "running".into(),
                nodes: (0..16_320).map(|i| format!("sim-{i:05}")).collect(),
                node_stats: (0..16_320)
                    .map(|i| v1::JobNodeStats {
                        node: format!("sim-{i:05}"),
                        step_time_s: Some(1.0),
                        slowdown: Some(1.0),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut s = StreamState::default();
        let messages = s.diff(&Cluster::from_status(status.clone()));
        let jobs = &messages.iter().find(|(n, _)| *n == "jobs").expect("jobs").1;
        assert!(jobs.len() < 16 * 1024, "{} bytes", jobs.len());
        let v: serde_json::Value = serde_json::from_str(jobs).expect("json");
        assert_eq!(v[0]["node_count"], 16_320);
    }

    /// The reason for the diff: at 2,000 eight-GPU nodes a quiet second
    /// sends nothing and one changed node sends a few hundred bytes, while
    /// the snapshot a page gets once is a few hundred kilobytes.
    #[test]
    fn two_thousand_nodes_cost_nothing_when_quiet() {
        let mut status = v1::ClusterStatus {
            nodes: (0..2000)
                .map(|i| {
                    let mut n = node(&format!("gpu-node-{i:04}"), v1::NodeState::Ready);
                    n.gpus = (0..8)
                        .map(|g| v1::Gpu {
                            index: g,
                            health: v1::GpuHealth::Ok as i32,
                            ..Default::default()
                        })
                        .collect();
                    n
                })
                .collect(),
            ..Default::default()
        };
        let mut s = StreamState::default();
        let first: usize = s
            .diff(&Cluster::from_status(status.clone()))
            .iter()
            .map(|(_, d)| d.len())
            .sum();
        assert!(first < 400_000, "snapshot {first} bytes");
        assert!(s.diff(&Cluster::from_status(status.clone())).is_empty());
        status.nodes[1234].gpus[5].health = v1::GpuHealth::Degraded as i32;
        status.nodes[1234].state = v1::NodeState::Suspect as i32;
        let one: usize = s
            .diff(&Cluster::from_status(status.clone()))
            .iter()
            .map(|(_, d)| d.len())
            .sum();
        assert!(one < 400, "one changed node: {one} bytes");
    }
}
