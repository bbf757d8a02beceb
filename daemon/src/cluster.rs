//! The whole cluster as a snapshot holds it for readers: every node and
//! job, in wire types, built by the state actor (see `crate::snapshot`).
//!
//! A node is kept in two parts. What every report changes (the GPU
//! readings, the time of the last report) is copied into each snapshot;
//! everything else (ids, GPUs and their health, state, cordon, job, ...)
//! changes only on events, and is shared with the previous snapshot while
//! it is equal. At 16,384 eight-GPU nodes whole nodes were ~70 MiB per
//! snapshot, held twice while the next one was built; the readings are
//! ~8 MiB. A whole node is put back together only for what a reader is
//! sent (a page, one node, the status's few nodes).

use std::sync::Arc;

use sup_core::Engine;
use sup_proto::v1;

use crate::view;

/// Every node and job.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Every node, in id order (the engine's).
    pub nodes: Vec<NodeEntry>,
    /// Jobs, spares and breaker. Its `nodes` is always empty: they are
    /// [`Cluster::nodes`].
    pub status: v1::ClusterStatus,
}

impl Cluster {
    /// The engine as it is now; nodes whose event-driven part equals the
    /// one in `previous` share it.
    pub fn build(engine: &Engine, previous: Option<&Cluster>) -> Cluster {
        // Both lists are in id order (the engine keeps its nodes in a
        // BTreeMap): one walk pairs each node with its previous entry.
        let mut before = previous.map_or(&[][..], |p| &p.nodes[..]).iter().peekable();
        let nodes = engine
            .nodes()
            .map(|n| {
                let node = view::node(engine, n);
                while before.next_if(|b| b.id() < node.id.as_str()).is_some() {}
                let same = before.next_if(|b| b.id() == node.id.as_str());
                NodeEntry::new(node, same)
            })
            .collect();
        Cluster {
            nodes,
            status: view::status_without_nodes(engine),
        }
    }

    /// A whole status split as a snapshot holds it (tests, and callers that
    /// already have one).
    pub fn from_status(mut status: v1::ClusterStatus) -> Cluster {
        let nodes = std::mem::take(&mut status.nodes)
            .into_iter()
            .map(|n| NodeEntry::new(n, None))
            .collect();
        Cluster { nodes, status }
    }

    /// The event-driven part of every node (no readings, no last report
    /// time): what counts, filters and the dashboard read.
    pub fn fixed_nodes(&self) -> impl Iterator<Item = &v1::Node> + '_ {
        self.nodes.iter().map(NodeEntry::fixed)
    }
}

/// One node, split by how often its parts change.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// The node without its readings and with `last_seen_unix_ms` 0.
    fixed: Arc<v1::Node>,
    /// `fixed.gpus[i]`'s reading.
    readings: Box<[Option<v1::GpuReading>]>,
    last_seen_unix_ms: i64,
}

impl NodeEntry {
    /// Splits `node`; `before` (the same node in the previous snapshot)
    /// lends its event-driven part when that is unchanged.
    pub fn new(mut node: v1::Node, before: Option<&NodeEntry>) -> NodeEntry {
        let readings = node.gpus.iter_mut().map(|g| g.reading.take()).collect();
        let last_seen_unix_ms = std::mem::take(&mut node.last_seen_unix_ms);
        let fixed = match before {
            Some(b) if *b.fixed == node => b.fixed.clone(),
            _ => Arc::new(node),
        };
        NodeEntry {
            fixed,
            readings,
            last_seen_unix_ms,
        }
    }

    pub fn id(&self) -> &str {
        &self.fixed.id
    }

    /// The node without its readings and last report time.
    pub fn fixed(&self) -> &v1::Node {
        &self.fixed
    }

    /// The whole node, as readers are sent it.
    pub fn to_node(&self) -> v1::Node {
        let mut node = (*self.fixed).clone();
        for (gpu, reading) in node.gpus.iter_mut().zip(self.readings.iter()) {
            gpu.reading = *reading;
        }
        node.last_seen_unix_ms = self.last_seen_unix_ms;
        node
    }

    /// Each GPU with a reading, and the reading.
    pub fn readings(&self) -> impl Iterator<Item = (&v1::Gpu, &v1::GpuReading)> + '_ {
        self.fixed
            .gpus
            .iter()
            .zip(self.readings.iter())
            .filter_map(|(g, r)| r.as_ref().map(|r| (g, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, temperature: f64, last_seen: i64) -> v1::Node {
        v1::Node {
            id: id.into(),
            hostname: format!("{id}.example"),
            last_seen_unix_ms: last_seen,
            gpus: (0..2)
                .map(|i| v1::Gpu {
                    index: i,
                    uuid: format!("GPU-{id}-{i}"),
                    reading: Some(v1::GpuReading {
                        index: i,
                        temperature_c: Some(temperature + f64::from(i)),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn register(e: &mut Engine, i: u64) {
        use sup_core::{GpuInventory, Registration};
        e.on_register(
            1_000,
            Registration {
                validates: false,
                session: i,
                node_id: format!("node-{i:02}"),
                address: format!("10.0.0.{i}:7070"),
                hostname: format!("host-{i:02}"),
                agent_version: "0.1.0".into(),
                instance_id: format!("i-{i}"),
                gpu_backend: "sim".into(),
                gpus: (0..2)
                    .map(|g| GpuInventory {
                        index: g,
                        uuid: format!("GPU-{i}-{g}"),
                        name: "Simulated".into(),
                        pci_bus_id: String::new(),
                        memory_total_bytes: None,
                    })
                    .collect(),
            },
        )
        .expect("register");
    }

    fn report(e: &mut Engine, i: u64, at: i64, temperature: f64) {
        let readings = (0..2)
            .map(|g| sup_core::GpuReading {
                index: g,
                temperature_c: Some(temperature),
                ..Default::default()
            })
            .collect();
        assert!(e
            .on_telemetry(at, &format!("node-{i:02}"), i, readings)
            .is_applied());
    }

    #[test]
    fn each_node_finds_its_previous_entry_also_when_nodes_come_and_go() {
        let mut e = Engine::new(sup_core::EngineConfig::default());
        for i in [2, 4, 6] {
            register(&mut e, i);
            // The first report makes a joining node ready: an event.
            report(&mut e, i, 1_500, 40.0);
        }
        let first = Cluster::build(&e, None);
        for i in [2, 4, 6] {
            report(&mut e, i, 2_000, 50.0);
        }
        // A node that sorts before, between and after the others.
        for i in [1, 5, 9] {
            register(&mut e, i);
        }
        let second = Cluster::build(&e, Some(&first));
        let ids: Vec<&str> = second.nodes.iter().map(NodeEntry::id).collect();
        assert_eq!(
            ids,
            ["node-01", "node-02", "node-04", "node-05", "node-06", "node-09"]
        );
        for entry in &second.nodes {
            let before = first.nodes.iter().find(|b| b.id() == entry.id());
            assert_eq!(
                before.is_some_and(|b| Arc::ptr_eq(&b.fixed, &entry.fixed)),
                before.is_some(),
                "{}: shared exactly when it was there before",
                entry.id()
            );
        }
        let node_04 = second.nodes[2].to_node();
        assert_eq!(node_04.last_seen_unix_ms, 2_000);
        assert!(node_04
            .gpus
            .iter()
            .all(|g| g.reading.is_some_and(|r| r.temperature_c == Some(50.0))));
    }

    #[test]
    fn a_node_is_whole_again_as_readers_get_it() {
        let whole = node("n1", 40.0, 1_000);
        let entry = NodeEntry::new(whole.clone(), None);
        assert_eq!(entry.to_node(), whole);
        assert!(entry.fixed().gpus.iter().all(|g| g.reading.is_none()));
        assert_eq!(entry.fixed().last_seen_unix_ms, 0);
        let temps: Vec<_> = entry
            .readings()
            .map(|(g, r)| (g.index, r.temperature_c))
            .collect();
        assert_eq!(temps, vec![(0, Some(40.0)), (1, Some(41.0))]);
    }

    #[test]
    fn new_readings_share_the_unchanged_part_and_an_event_does_not() {
        let first = NodeEntry::new(node("n1", 40.0, 1_000), None);
        let next = NodeEntry::new(node("n1", 55.0, 2_000), Some(&first));
        assert!(
            Arc::ptr_eq(&first.fixed, &next.fixed),
            "only readings changed"
        );
        assert_eq!(next.to_node(), node("n1", 55.0, 2_000));

        let mut cordoned = node("n1", 55.0, 3_000);
        cordoned.state = v1::NodeState::Cordoned as i32;
        let after = NodeEntry::new(cordoned.clone(), Some(&next));
        assert!(!Arc::ptr_eq(&next.fixed, &after.fixed), "the state changed");
        assert_eq!(after.to_node(), cordoned);
    }
}
